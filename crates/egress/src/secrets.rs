//! Transform secrets (the values of `inject_headers`), sealed at rest: ChaCha20-Poly1305 under
//! a node key (`<data-dir>/egress-secrets.key`, 0600), one file per secret in
//! `<data-dir>/egress-secrets/`. Records and snapshots hold only references
//! (`sandboxd-secret:<id>`); the proxy opens them in memory when it applies a transform.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;
use secrecy::SecretString;
use serde_json::Value;

pub const PREFIX: &str = "sandboxd-secret:";

pub struct SecretStore {
    cipher: ChaCha20Poly1305,
    dir: PathBuf,
}

fn write_0600(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    std::io::Write::write_all(&mut f, bytes)
}

impl SecretStore {
    pub fn open(data_dir: &Path) -> std::io::Result<SecretStore> {
        let key_path = data_dir.join("egress-secrets.key");
        let key = match std::fs::read(&key_path) {
            Ok(k) if k.len() == 32 => k,
            Ok(_) => {
                return Err(std::io::Error::other(format!(
                    "{} is not a 32-byte key",
                    key_path.display()
                )))
            }
            Err(_) => {
                let mut k = vec![0u8; 32];
                rand::thread_rng().fill_bytes(&mut k);
                write_0600(&key_path, &k)?;
                k
            }
        };
        let dir = data_dir.join("egress-secrets");
        std::fs::create_dir_all(&dir)?;
        Ok(SecretStore {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&key)),
            dir,
        })
    }

    /// Seals `secret`; returns its reference id.
    pub fn seal(&self, secret: &str) -> std::io::Result<String> {
        let mut id = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut id);
        let id = hex::encode(id);
        let mut nonce = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut nonce);
        let ct = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), secret.as_bytes())
            .map_err(|_| std::io::Error::other("seal"))?;
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&ct);
        write_0600(&self.dir.join(&id), &blob)?;
        Ok(id)
    }

    /// Opens sealed secret `id` (hex), in memory only.
    pub fn open_secret(&self, id: &str) -> Option<SecretString> {
        if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let blob = std::fs::read(self.dir.join(id)).ok()?;
        if blob.len() < 12 {
            return None;
        }
        let pt = self
            .cipher
            .decrypt(Nonce::from_slice(&blob[..12]), &blob[12..])
            .ok()?;
        String::from_utf8(pt).ok().map(SecretString::from)
    }

    /// Replaces every `inject_headers` value of a Leap0 `network_policy` that is not yet a
    /// reference with a reference to its sealed copy.
    pub fn seal_policy(&self, policy: &mut Value) -> std::io::Result<()> {
        let Some(ts) = policy.get_mut("transforms").and_then(Value::as_array_mut) else {
            return Ok(());
        };
        for t in ts {
            let Some(h) = t.get_mut("inject_headers").and_then(Value::as_object_mut) else {
                continue;
            };
            for v in h.values_mut() {
                if let Some(s) = v.as_str() {
                    if !s.starts_with(PREFIX) {
                        *v = Value::String(format!("{PREFIX}{}", self.seal(s)?));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use serde_json::json;

    #[test]
    fn seal_and_open() {
        let dir = std::env::temp_dir().join(format!("sbx-sec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let s = SecretStore::open(&dir).unwrap();
        let mut p = json!({"mode": "custom", "transforms": [{"domain": "a.test",
            "inject_headers": {"Authorization": "Bearer s3cret-value"}}]});
        s.seal_policy(&mut p).unwrap();
        let r = p["transforms"][0]["inject_headers"]["Authorization"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(r.starts_with(PREFIX));
        assert!(!p.to_string().contains("s3cret"));
        let again = SecretStore::open(&dir).unwrap();
        assert_eq!(
            again
                .open_secret(r.strip_prefix(PREFIX).unwrap())
                .unwrap()
                .expose_secret(),
            "Bearer s3cret-value"
        );
        for f in std::fs::read_dir(dir.join("egress-secrets")).unwrap() {
            let b = std::fs::read(f.unwrap().path()).unwrap();
            assert!(!b.windows(6).any(|w| w == b"s3cret"));
        }
        assert!(again.open_secret("../x").is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
