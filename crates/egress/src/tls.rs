//! TLS for transforms: the node CA (installed into every sandbox's trust store) that signs a
//! leaf certificate per intercepted name, and the verified client side upstream.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

pub struct Ca {
    key: KeyPair,
    cert: rcgen::Certificate,
    /// The CA certificate, PEM, as installed into sandboxes.
    pub pem: String,
    leaves: Mutex<HashMap<String, Arc<ServerConfig>>>,
}

fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "sandboxd egress CA");
    dn.push(DnType::OrganizationName, "sandboxd");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.serial_number = Some(SerialNumber::from(1u64));
    p.not_before = rcgen::date_time_ymd(2024, 1, 1);
    p.not_after = rcgen::date_time_ymd(2044, 1, 1);
    p
}

impl Ca {
    /// The node CA whose key is `<dir>/egress-ca.key` (0600), created on first use. The
    /// certificate is rebuilt from the key with fixed parameters, so it is the same at every
    /// start.
    pub fn load_or_create(dir: &Path) -> Result<Ca, String> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = dir.join("egress-ca.key");
        let key = match std::fs::read_to_string(&path) {
            Ok(pem) => KeyPair::from_pem(&pem).map_err(|e| format!("{}: {e}", path.display()))?,
            Err(_) => {
                let key = KeyPair::generate().map_err(|e| e.to_string())?;
                let mut f = std::fs::OpenOptions::new()
                    .create_new(true)
                    .write(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                std::io::Write::write_all(&mut f, key.serialize_pem().as_bytes())
                    .map_err(|e| e.to_string())?;
                key
            }
        };
        let cert = ca_params().self_signed(&key).map_err(|e| e.to_string())?;
        let pem = cert.pem();
        let _ = std::fs::write(dir.join("egress-ca.pem"), &pem);
        Ok(Ca {
            key,
            cert,
            pem,
            leaves: Mutex::new(HashMap::new()),
        })
    }

    /// A server config presenting a certificate for `name` signed by the node CA.
    pub fn server_config(&self, name: &str) -> Result<Arc<ServerConfig>, String> {
        if let Some(c) = self
            .leaves
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return Ok(c.clone());
        }
        let mut cfg = self.issue(&[name.to_string()])?;
        // Header transforms are applied to HTTP/1.1; clients that offer h2 fall back to it.
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let cfg = Arc::new(cfg);
        self.leaves
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), cfg.clone());
        Ok(cfg)
    }
}

impl Ca {
    /// A server config presenting one certificate for all of `names` (e.g. `*.sbx.example`),
    /// signed by the node CA.
    pub fn issue(&self, names: &[String]) -> Result<ServerConfig, String> {
        let key = KeyPair::generate().map_err(|e| e.to_string())?;
        let mut params = CertificateParams::new(names.to_vec()).map_err(|e| e.to_string())?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        let leaf = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(|e| e.to_string())?;
        let chain = vec![leaf.der().clone()];
        let pk = PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| e.to_string())?;
        ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, pk)
            .map_err(|e| e.to_string())
    }
}

/// A server config from an operator's PEM certificate chain and key.
pub fn server_config_from_pem(cert: &Path, key: &Path) -> Result<ServerConfig, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificates", cert.display()));
    }
    let pk = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, pk)
        .map_err(|e| e.to_string())
}

/// A client config trusting the PEM bundle at `bundle` (upstream servers are verified).
pub fn client_config(bundle: &Path) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    for c in
        CertificateDer::pem_file_iter(bundle).map_err(|e| format!("{}: {e}", bundle.display()))?
    {
        let c = c.map_err(|e| format!("{}: {e}", bundle.display()))?;
        let _ = roots.add(c);
    }
    if roots.is_empty() {
        return Err(format!("{}: no certificates", bundle.display()));
    }
    let mut cfg = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Rewrites an HTTP/1.x request head: drops `strip` headers and those `inject` sets, adds
/// `inject`, and asks for `Connection: close` (one request per connection, so every request
/// passes through here). `None` if `head` is not an HTTP/1.x request head.
pub fn rewrite_head(
    head: &[u8],
    inject: &[(String, secrecy::SecretString)],
    strip: &[String],
) -> Option<Vec<u8>> {
    use secrecy::ExposeSecret;
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let request = lines.next()?;
    if !request.ends_with("HTTP/1.1") && !request.ends_with("HTTP/1.0") {
        return None;
    }
    let mut out = format!("{request}\r\n");
    for l in lines.filter(|l| !l.is_empty()) {
        let name = l.split(':').next().unwrap_or_default().trim();
        let drop = strip.iter().any(|s| s.eq_ignore_ascii_case(name))
            || inject.iter().any(|(k, _)| k.eq_ignore_ascii_case(name))
            || ["connection", "keep-alive", "proxy-connection"]
                .iter()
                .any(|s| s.eq_ignore_ascii_case(name));
        if !drop {
            out.push_str(l);
            out.push_str("\r\n");
        }
    }
    let mut bytes = out.into_bytes();
    for (k, v) in inject {
        bytes.extend_from_slice(k.as_bytes());
        bytes.extend_from_slice(b": ");
        bytes.extend_from_slice(v.expose_secret().as_bytes());
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(b"Connection: close\r\n\r\n");
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_rewritten() {
        let h = b"GET /x HTTP/1.1\r\nHost: a.test\r\nAuthorization: Bearer fake\r\nX-Drop: 1\r\nConnection: keep-alive\r\n\r\n";
        let out = rewrite_head(
            &h[..h.len() - 4],
            &[("Authorization".into(), "Bearer s3cret".to_string().into())],
            &["x-drop".into()],
        )
        .unwrap();
        let s = String::from_utf8(out).unwrap();
        assert_eq!(
            s,
            "GET /x HTTP/1.1\r\nHost: a.test\r\nAuthorization: Bearer s3cret\r\nConnection: close\r\n\r\n"
        );
        assert!(rewrite_head(b"\x16\x03\x01", &[], &[]).is_none());
    }

    #[test]
    fn ca_signs_leaves() {
        let dir = std::env::temp_dir().join(format!("sbx-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let a = Ca::load_or_create(&dir).unwrap();
        let b = Ca::load_or_create(&dir).unwrap();
        assert_eq!(
            a.key.public_key_der(),
            b.key.public_key_der(),
            "same CA key across restarts"
        );
        assert!(a.server_config("api.example.com").is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
