//! Host keys: the node's own (a file) and one per sandbox (derived, never stored).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use russh::keys::ssh_key::private::{Ed25519Keypair, Ed25519PrivateKey};
use russh::keys::ssh_key::LineEnding;
use russh::keys::PrivateKey;

/// Domain separation for [`derive_host_key`]; bump the version to rotate every derived key.
const HOST_KEY_CONTEXT: &[u8] = b"sandboxd-sshgw per-sandbox host key v1";

/// Errors of host key handling.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("host key file {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("host key file {path} is not a valid OpenSSH private key")]
    Decode {
        path: PathBuf,
        #[source]
        source: russh::keys::Error,
    },
    #[error("cannot encode host key")]
    Encode(#[source] russh::keys::ssh_key::Error),
}

/// A per-sandbox ed25519 host key: the seed is BLAKE3 keyed by `node_secret` over a context
/// string and the sandbox id. A restarted sandbox keeps its key; a fork (new id) gets a new one;
/// without the node secret the key cannot be computed.
pub fn derive_host_key(node_secret: &[u8; 32], sandbox: &str) -> PrivateKey {
    let mut hasher = blake3::Hasher::new_keyed(node_secret);
    hasher.update(HOST_KEY_CONTEXT);
    hasher.update(&[0]);
    hasher.update(sandbox.as_bytes());
    let seed: [u8; Ed25519PrivateKey::BYTE_SIZE] = *hasher.finalize().as_bytes();
    PrivateKey::from(Ed25519Keypair::from_seed(&seed))
}

/// Loads the node's host key from `path`, or creates a new ed25519 key there (mode 0600,
/// OpenSSH format, written to a temporary name and renamed into place).
pub fn load_or_create_host_key(path: &Path) -> Result<PrivateKey, KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    match std::fs::metadata(path) {
        Ok(meta) => {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "host key file is readable by group or others");
            }
            return russh::keys::load_secret_key(path, None).map_err(|source| KeyError::Decode {
                path: path.to_owned(),
                source,
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }

    let mut seed = [0u8; Ed25519PrivateKey::BYTE_SIZE];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut seed);
    let key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    let text = key.to_openssh(LineEnding::LF).map_err(KeyError::Encode)?;

    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    tracing::info!(
        path = %path.display(),
        fingerprint = %key.public_key().fingerprint(Default::default()),
        "created node SSH host key"
    );
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_keys_are_stable_and_distinct() {
        let secret = [7u8; 32];
        let a1 = derive_host_key(&secret, "sb-a");
        let a2 = derive_host_key(&secret, "sb-a");
        let b = derive_host_key(&secret, "sb-b");
        let other = derive_host_key(&[8u8; 32], "sb-a");
        assert_eq!(a1.public_key(), a2.public_key());
        assert_ne!(a1.public_key(), b.public_key());
        assert_ne!(a1.public_key(), other.public_key());
        assert_eq!(a1.algorithm(), russh::keys::Algorithm::Ed25519);
    }

    #[test]
    fn node_key_is_created_once_with_mode_0600() {
        let dir = std::env::temp_dir().join(format!("sshgw-keytest-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("sub/host_ed25519");
        let k1 = load_or_create_host_key(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let k2 = load_or_create_host_key(&path).unwrap();
        assert_eq!(k1.public_key(), k2.public_key());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
