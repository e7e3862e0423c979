//! SSH access credentials (Leap0 `ssh/access`): the id is the SSH user name, the password is
//! shown once and only its SHA-256 is kept.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{SandboxId, Tenant};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SshAccess {
    /// `ssh-<hex>`; the user name to log in with.
    pub id: String,
    pub tenant: Tenant,
    pub sandbox_id: SandboxId,
    /// Lowercase hex SHA-256 of the password.
    pub password_sha256: String,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}
