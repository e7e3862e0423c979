//! Preview URLs (Leap0 "presigned URLs"): a temporary public URL for one port of a sandbox.
//! The token is shown once; only its SHA-256 is kept.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{SandboxId, Tenant};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreviewUrl {
    /// `psu-<hex>`.
    pub id: String,
    pub tenant: Tenant,
    pub sandbox_id: SandboxId,
    pub port: u16,
    /// Lowercase hex SHA-256 of the token.
    pub token_sha256: String,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    /// A NeevCloud port exposure: its slug is its token, kept so that the URL can be listed
    /// again (the NeevCloud API returns it on every call). `None` for a Leap0 presigned URL,
    /// whose token is shown once.
    #[serde(default)]
    pub slug: Option<String>,
}

/// Default lifetime of a preview URL (Leap0: `expires_in` defaults to 3600 s).
pub const DEFAULT_TTL_SECS: i64 = 3600;
/// A port exposure lasts until it is revoked or its sandbox deleted.
pub const EXPOSURE_TTL_DAYS: i64 = 365 * 100;

/// Longest lifetime accepted: 7 days.
pub const MAX_TTL_SECS: i64 = 7 * 24 * 3600;
