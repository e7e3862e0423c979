//! Preview URLs: a temporary public URL for one port of a sandbox (Leap0's "presigned URL").
//!
//! Creating one returns a random token once; only its SHA-256 is stored. A request that
//! presents the token is proxied to the sandbox's address on that port over its veth (a
//! connection the host opens, which the sandbox's egress policy does not govern). A URL
//! stops working when it expires, is deleted, or its sandbox is deleted; while the sandbox is
//! not running it answers 503.

use std::net::SocketAddr;

use chrono::Utc;
use rand::RngCore;
use sandboxd_core::preview::{DEFAULT_TTL_SECS, MAX_TTL_SECS};
use sandboxd_core::{CoreError, PreviewUrl, SandboxId, SandboxState, Tenant};
use sha2::{Digest, Sha256};

use crate::{Engine, EngineError};

/// A new preview URL and its token (shown once).
#[derive(Debug, Clone)]
pub struct IssuedPreview {
    pub url: PreviewUrl,
    pub token: String,
}

/// Where a token leads, for the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreviewTarget {
    /// Proxy to this address.
    Open(SocketAddr),
    /// The sandbox exists but runs no container now.
    NotRunning,
}

fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Tokens are 32 lowercase hex characters (128 random bits): one DNS label.
fn valid_token(t: &str) -> bool {
    t.len() == 32
        && t.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Engine {
    /// Issues a preview URL for `port` of a sandbox, valid `ttl_secs` (default 3600).
    pub fn create_preview(
        &self,
        tenant: &Tenant,
        sandbox: SandboxId,
        port: i64,
        ttl_secs: Option<i64>,
    ) -> Result<IssuedPreview, EngineError> {
        let port = u16::try_from(port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| CoreError::invalid("port", "must be from 1 to 65535"))?;
        let ttl = ttl_secs.unwrap_or(DEFAULT_TTL_SECS);
        if !(1..=MAX_TTL_SECS).contains(&ttl) {
            return Err(CoreError::invalid(
                "expires_in",
                format!("must be from 1 to {MAX_TTL_SECS} seconds"),
            )
            .into());
        }
        self.get_sandbox(tenant, sandbox)?;
        let mut raw = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut raw);
        let token = hex::encode(raw);
        let mut id = [0u8; 8];
        rand::thread_rng().fill_bytes(&mut id);
        let now = Utc::now();
        let url = PreviewUrl {
            id: format!("psu-{}", hex::encode(id)),
            tenant: tenant.clone(),
            sandbox_id: sandbox,
            port,
            token_sha256: digest(&token),
            expires_at: now + chrono::Duration::seconds(ttl),
            created_at: now,
        };
        self.meta.insert_preview(&url)?;
        Ok(IssuedPreview { url, token })
    }

    /// Revokes a preview URL of a sandbox of `tenant`.
    pub fn delete_preview(
        &self,
        tenant: &Tenant,
        sandbox: SandboxId,
        id: &str,
    ) -> Result<(), EngineError> {
        self.get_sandbox(tenant, sandbox)?;
        match self.meta.get_preview(id)? {
            Some(u) if &u.tenant == tenant && u.sandbox_id == sandbox => {
                self.meta.delete_preview(id)?;
                Ok(())
            }
            _ => Err(CoreError::not_found("presigned url", id.to_string()).into()),
        }
    }

    /// Where a presented token leads; `None` for an unknown, expired or revoked token.
    pub fn resolve_preview(&self, token: &str) -> Result<Option<PreviewTarget>, EngineError> {
        if !valid_token(token) {
            return Ok(None);
        }
        let Some(url) = self.meta.preview_by_token(&digest(token))? else {
            return Ok(None);
        };
        if url.expires_at <= Utc::now() {
            self.meta.delete_preview(&url.id)?;
            return Ok(None);
        }
        let Some(sb) = self.meta.get_sandbox(url.sandbox_id)? else {
            return Ok(None);
        };
        Ok(Some(match (sb.state, sb.net) {
            (SandboxState::Running, Some(net)) => {
                // Traffic to a preview counts as activity for the idle timeout (at most one
                // write a second per sandbox).
                let now = Utc::now();
                if now - sb.last_activity_at > chrono::Duration::seconds(1) {
                    self.meta.touch_sandbox(sb.id, now)?;
                }
                PreviewTarget::Open(SocketAddr::new(net.sandbox_ip().into(), url.port))
            }
            _ => PreviewTarget::NotRunning,
        }))
    }

    /// Deletes expired preview URLs (run by the snapshot reaper's timer).
    pub fn reap_previews(&self) -> Result<u64, EngineError> {
        Ok(self.meta.delete_expired_previews(Utc::now())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_one_dns_label_of_hex() {
        assert!(valid_token("0123456789abcdef0123456789abcdef"));
        for bad in [
            "",
            "0123456789ABCDEF0123456789abcdef",
            "0123456789abcdef0123456789abcde",
            "0123456789abcdef0123456789abcdeg",
            "../../etc/passwd0123456789abcdef",
        ] {
            assert!(!valid_token(bad), "{bad}");
        }
        assert_ne!(digest("a"), digest("b"));
        assert_eq!(digest("a").len(), 64);
    }
}
