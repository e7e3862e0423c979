//! SSH access credentials (Leap0 `ssh/access`): a random password per credential, shown once,
//! kept as its SHA-256; the credential id is the SSH user name on the node's SSH gateway.

use chrono::{DateTime, Utc};
use rand::Rng;
use sandboxd_core::{CoreError, SandboxId, SshAccess, Tenant};

use crate::keys::{digest, same};
use crate::{Engine, EngineError};

/// How long a credential is valid.
pub const ACCESS_TTL_HOURS: i64 = 24;

fn new_password() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut rng = rand::thread_rng();
    (0..24)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

fn new_id() -> String {
    let mut raw = [0u8; 8];
    rand::thread_rng().fill(&mut raw);
    format!("ssh{}", hex::encode(raw))
}

/// A credential and its password, which exists only in this value.
pub struct IssuedSsh {
    pub access: SshAccess,
    pub password: String,
}

impl Engine {
    fn ssh_of(
        &self,
        tenant: &Tenant,
        sandbox: SandboxId,
        id: &str,
    ) -> Result<SshAccess, EngineError> {
        self.get_sandbox(tenant, sandbox)?;
        match self.meta.get_ssh_access(id)? {
            Some(a) if a.sandbox_id == sandbox && &a.tenant == tenant => Ok(a),
            _ => Err(CoreError::not_found("ssh access", id.to_string()).into()),
        }
    }

    pub fn create_ssh_access(
        &self,
        tenant: &Tenant,
        sandbox: SandboxId,
    ) -> Result<IssuedSsh, EngineError> {
        self.get_sandbox(tenant, sandbox)?;
        let now = Utc::now();
        let password = new_password();
        let access = SshAccess {
            id: new_id(),
            tenant: tenant.clone(),
            sandbox_id: sandbox,
            password_sha256: digest(&password),
            expires_at: now + chrono::Duration::hours(ACCESS_TTL_HOURS),
            created_at: now,
            updated_at: now,
        };
        self.meta.put_ssh_access(&access)?;
        self.audit_event(
            sandbox,
            "ssh.create_access",
            None,
            Some(access.id.clone()),
            None,
            0,
        );
        Ok(IssuedSsh { access, password })
    }

    /// A new password (and expiry) for a credential; the old password stops working at once.
    pub fn regen_ssh_access(
        &self,
        tenant: &Tenant,
        sandbox: SandboxId,
        id: &str,
    ) -> Result<IssuedSsh, EngineError> {
        let mut access = self.ssh_of(tenant, sandbox, id)?;
        let now = Utc::now();
        let password = new_password();
        access.password_sha256 = digest(&password);
        access.expires_at = now + chrono::Duration::hours(ACCESS_TTL_HOURS);
        access.updated_at = now;
        self.meta.put_ssh_access(&access)?;
        self.audit_event(
            sandbox,
            "ssh.regen_access",
            None,
            Some(id.to_string()),
            None,
            0,
        );
        Ok(IssuedSsh { access, password })
    }

    pub fn delete_ssh_access(
        &self,
        tenant: &Tenant,
        sandbox: SandboxId,
        id: &str,
    ) -> Result<(), EngineError> {
        self.ssh_of(tenant, sandbox, id)?;
        self.meta.delete_ssh_access(id)?;
        self.audit_event(
            sandbox,
            "ssh.delete_access",
            None,
            Some(id.to_string()),
            None,
            0,
        );
        Ok(())
    }

    /// Whether `password` is the credential's current one and it has not expired.
    pub fn validate_ssh_access(
        &self,
        tenant: &Tenant,
        sandbox: SandboxId,
        id: &str,
        password: &str,
    ) -> Result<bool, EngineError> {
        let a = self.ssh_of(tenant, sandbox, id)?;
        Ok(live(&a, Utc::now()) && same(&a.password_sha256, &digest(password)))
    }

    /// An SSH login: the credential when `user`/`password` match a live one.
    pub fn ssh_login(&self, user: &str, password: &str) -> Result<Option<SshAccess>, EngineError> {
        let Some(a) = self.meta.get_ssh_access(user)? else {
            // Hash anyway: an unknown user costs the same as a wrong password.
            let _ = same(&digest(password), &digest(user));
            return Ok(None);
        };
        Ok((live(&a, Utc::now()) && same(&a.password_sha256, &digest(password))).then_some(a))
    }

    /// The sandbox a user name (credential id) belongs to, for auditing failed logins.
    pub fn ssh_login_target(&self, user: &str) -> Result<Option<SandboxId>, EngineError> {
        Ok(self.meta.get_ssh_access(user)?.map(|a| a.sandbox_id))
    }

    /// Whether the credential still exists and has not expired (checked at each channel open).
    pub fn ssh_access_live(&self, id: &str) -> bool {
        matches!(self.meta.get_ssh_access(id), Ok(Some(a)) if live(&a, Utc::now()))
    }
}

fn live(a: &SshAccess, now: DateTime<Utc>) -> bool {
    a.expires_at > now
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_long_random_and_compared_whole() {
        let a = new_password();
        let b = new_password();
        assert_eq!(a.len(), 24);
        assert_ne!(a, b);
        assert!(same(&digest(&a), &digest(&a)));
        assert!(!same(&digest(&a), &digest(&b)));
        assert!(!same("abc", "abcd"));
        assert!(new_id().starts_with("ssh"));
    }
}
