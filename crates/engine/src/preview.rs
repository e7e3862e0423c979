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

/// A token is one DNS label: 8 to 63 of `[a-z0-9-]`, starting and ending with a letter or
/// digit. Generated ones are 32 hex characters (128 random bits); a NeevCloud slug is the
/// client's choice within these rules.
fn valid_token(t: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    (8..=63).contains(&t.len())
        && t.bytes().all(|b| alnum(b) || b == b'-')
        && t.bytes().next().is_some_and(alnum)
        && t.bytes().last().is_some_and(alnum)
}

fn random_token() -> String {
    let mut raw = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut raw);
    hex::encode(raw)
}

/// A TCP port number, 1..65535.
fn port_number(port: i64) -> Result<u16, CoreError> {
    u16::try_from(port)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| CoreError::invalid("port", "must be from 1 to 65535"))
}

/// A port a client may publish: 1..65535 except the agent's (publishing it would hand the
/// sandbox's control channel to anyone with the URL).
fn public_port(port: i64) -> Result<u16, CoreError> {
    let p = port_number(port)?;
    if p == sandboxd_agent::proto::AGENT_PORT {
        return Err(CoreError::invalid(
            "port",
            format!("port {p} is reserved by the platform"),
        ));
    }
    Ok(p)
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
        let port = public_port(port)?;
        let ttl = ttl_secs.unwrap_or(DEFAULT_TTL_SECS);
        if !(1..=MAX_TTL_SECS).contains(&ttl) {
            return Err(CoreError::invalid(
                "expires_in",
                format!("must be from 1 to {MAX_TTL_SECS} seconds"),
            )
            .into());
        }
        self.get_sandbox(tenant, sandbox)?;
        let token = random_token();
        let url = self.insert_preview(
            tenant,
            sandbox,
            port,
            &token,
            chrono::Duration::seconds(ttl),
            None,
        )?;
        Ok(IssuedPreview { url, token })
    }

    fn insert_preview(
        &self,
        tenant: &Tenant,
        sandbox: SandboxId,
        port: u16,
        token: &str,
        ttl: chrono::Duration,
        slug: Option<String>,
    ) -> Result<PreviewUrl, EngineError> {
        if self.meta.preview_by_token(&digest(token))?.is_some() {
            return Err(CoreError::Conflict("this slug is taken".into()).into());
        }
        let mut id = [0u8; 8];
        rand::thread_rng().fill_bytes(&mut id);
        let now = Utc::now();
        let url = PreviewUrl {
            id: format!("psu-{}", hex::encode(id)),
            tenant: tenant.clone(),
            sandbox_id: sandbox,
            port,
            token_sha256: digest(token),
            expires_at: now + ttl,
            created_at: now,
            slug,
        };
        self.meta.insert_preview(&url)?;
        Ok(url)
    }

    /// NeevCloud: exposes `port` at a preview URL gated by `slug` (random if absent) until it
    /// is revoked. An exposed port keeps its URL, unless another slug is asked for: then the
    /// URL rotates (the old one stops working).
    pub fn expose_port(
        &self,
        tenant: &Tenant,
        sandbox: SandboxId,
        port: i64,
        slug: Option<&str>,
    ) -> Result<PreviewUrl, EngineError> {
        let port = public_port(port)?;
        if let Some(s) = slug {
            if !valid_token(s) {
                return Err(CoreError::invalid(
                    "slug",
                    "must be 8 to 63 of a-z, 0-9 and '-', starting and ending with a letter or digit",
                )
                .into());
            }
        }
        self.get_sandbox(tenant, sandbox)?;
        let current = self
            .exposures(sandbox)?
            .into_iter()
            .find(|u| u.port == port);
        if let Some(cur) = current {
            if slug.is_none_or(|s| cur.slug.as_deref() == Some(s)) {
                return Ok(cur);
            }
            self.meta.delete_preview(&cur.id)?;
        }
        let token = slug.map_or_else(random_token, str::to_string);
        self.insert_preview(
            tenant,
            sandbox,
            port,
            &token,
            chrono::Duration::days(sandboxd_core::preview::EXPOSURE_TTL_DAYS),
            Some(token.clone()),
        )
    }

    /// NeevCloud: the exposed ports of a sandbox, by port.
    pub fn list_ports(
        &self,
        tenant: &Tenant,
        sandbox: SandboxId,
    ) -> Result<Vec<PreviewUrl>, EngineError> {
        self.get_sandbox(tenant, sandbox)?;
        let mut v = self.exposures(sandbox)?;
        v.sort_by_key(|u| u.port);
        Ok(v)
    }

    /// NeevCloud: stops serving a port; revoking a port that is not exposed changes nothing.
    pub fn revoke_port(
        &self,
        tenant: &Tenant,
        sandbox: SandboxId,
        port: i64,
    ) -> Result<(), EngineError> {
        let port = port_number(port)?;
        self.get_sandbox(tenant, sandbox)?;
        for u in self
            .exposures(sandbox)?
            .into_iter()
            .filter(|u| u.port == port)
        {
            self.meta.delete_preview(&u.id)?;
        }
        Ok(())
    }

    fn exposures(&self, sandbox: SandboxId) -> Result<Vec<PreviewUrl>, EngineError> {
        Ok(self
            .meta
            .previews_of_sandbox(sandbox)?
            .into_iter()
            .filter(|u| u.slug.is_some())
            .collect())
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

/// The public URL of a preview token: `<public_url>/p/<token>/`, or with a preview domain
/// `<scheme>://<token>.<domain>[:<public_url's port>]/`.
pub fn url_for(public_url: &str, preview_domain: Option<&str>, token: &str) -> String {
    let base = public_url.trim_end_matches('/');
    match preview_domain {
        Some(domain) => {
            let (scheme, rest) = base.split_once("://").unwrap_or(("http", base));
            let authority = rest.split('/').next().unwrap_or(rest);
            let port = authority
                .rsplit_once(':')
                .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
                .map(|(_, p)| format!(":{p}"))
                .unwrap_or_default();
            format!("{scheme}://{token}.{domain}{port}/")
        }
        None => format!("{base}/p/{token}/"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_one_dns_label() {
        assert!(valid_token(&random_token()));
        assert!(valid_token("my-app-preview"));
        for bad in [
            "",
            "short",
            "0123456789ABCDEF0123456789abcdef",
            "-leading-dash",
            "trailing-dash-",
            "has_underscore",
            "../../etc/passwd0123456789abcdef",
            &"a".repeat(64),
        ] {
            assert!(!valid_token(bad), "{bad}");
        }
        assert_eq!(
            public_port(7777).unwrap_err().to_string(),
            "port: port 7777 is reserved by the platform"
        );
        assert!(public_port(0).is_err() && public_port(65536).is_err());
        assert_eq!(public_port(8080).unwrap(), 8080);
        assert_ne!(digest("a"), digest("b"));
        assert_eq!(digest("a").len(), 64);
    }
}
