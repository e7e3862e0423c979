//! API keys: `sbx_<id>_<secret>`. Only the SHA-256 of the secret is stored.

use chrono::Utc;
use rand::RngCore;
use sandboxd_core::Principal;
use sandboxd_meta::{KeyRecord, MetaStore};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::EngineError;

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

pub(crate) fn digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Constant-time comparison of two equal-length hex digests.
pub(crate) fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Splits `sbx_<id>_<secret>`.
fn parse(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix("sbx_")?;
    let (id, secret) = rest.split_once('_')?;
    (!id.is_empty() && !secret.is_empty()).then_some((id, secret))
}

/// Creates a key for `org` (and `project`), returning the full token once.
pub fn create(
    meta: &dyn MetaStore,
    org: &str,
    project: Option<&str>,
) -> Result<SecretString, EngineError> {
    let id = random_hex(8);
    let secret = random_hex(24);
    meta.insert_key(&KeyRecord {
        id: id.clone(),
        org: org.to_string(),
        project: project.map(str::to_string),
        secret_sha256: digest(&secret),
        created_at: Utc::now(),
    })?;
    Ok(SecretString::from(format!("sbx_{id}_{secret}")))
}

/// Stores a caller-chosen token (e.g. `SANDBOXD_ADMIN_KEY`) if it is not stored yet.
pub fn import(
    meta: &dyn MetaStore,
    token: &SecretString,
    org: &str,
    project: Option<&str>,
) -> Result<(), EngineError> {
    let (id, secret) = parse(token.expose_secret())
        .ok_or_else(|| EngineError::BadKey("key must look like sbx_<id>_<secret>".into()))?;
    if meta.get_key(id)?.is_some() {
        return Ok(());
    }
    meta.insert_key(&KeyRecord {
        id: id.to_string(),
        org: org.to_string(),
        project: project.map(str::to_string),
        secret_sha256: digest(secret),
        created_at: Utc::now(),
    })?;
    Ok(())
}

/// Resolves a bearer token to its principal, or `None` if it is not a valid key.
pub fn verify(meta: &dyn MetaStore, token: &str) -> Result<Option<Principal>, EngineError> {
    let Some((id, secret)) = parse(token) else {
        return Ok(None);
    };
    let Some(rec) = meta.get_key(id)? else {
        return Ok(None);
    };
    if !same(&rec.secret_sha256, &digest(secret)) {
        return Ok(None);
    }
    Ok(Some(Principal {
        key_id: rec.id,
        org: rec.org,
        project: rec.project,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandboxd_meta::SqliteStore;

    #[test]
    fn created_keys_verify_and_wrong_secrets_do_not() {
        let meta = SqliteStore::in_memory().unwrap();
        let token = create(&meta, "o", Some("p")).unwrap();
        let p = verify(&meta, token.expose_secret()).unwrap().unwrap();
        assert_eq!((p.org.as_str(), p.project.as_deref()), ("o", Some("p")));
        let mut bad = token.expose_secret().to_string();
        bad.pop();
        bad.push('x');
        assert!(verify(&meta, &bad).unwrap().is_none());
        assert!(verify(&meta, "garbage").unwrap().is_none());
        assert!(verify(&meta, "sbx_nope_nope").unwrap().is_none());
    }

    #[test]
    fn secrets_are_not_stored() {
        let meta = SqliteStore::in_memory().unwrap();
        let token = create(&meta, "o", None).unwrap();
        let (id, secret) = parse(token.expose_secret()).unwrap();
        let rec = meta.get_key(id).unwrap().unwrap();
        assert_ne!(rec.secret_sha256, secret);
        assert!(!rec.secret_sha256.contains(secret));
    }

    #[test]
    fn import_is_idempotent() {
        let meta = SqliteStore::in_memory().unwrap();
        let t = SecretString::from("sbx_admin_s3cret".to_string());
        import(&meta, &t, "default", Some("default")).unwrap();
        import(&meta, &t, "default", Some("default")).unwrap();
        assert_eq!(meta.count_keys().unwrap(), 1);
        assert!(verify(&meta, "sbx_admin_s3cret").unwrap().is_some());
    }
}
