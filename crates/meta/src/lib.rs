//! Where sandboxd keeps what it knows: API keys and sandbox records.
//!
//! [`MetaStore`] is the seam; [`SqliteStore`] is the embedded default. Calls are synchronous and
//! short (single-row reads and writes); the engine calls them directly.

mod sqlite;

use chrono::{DateTime, Utc};
use sandboxd_core::{PreviewUrl, Sandbox, SandboxId, Snapshot, Tenant};
use thiserror::Error;

pub use sqlite::SqliteStore;

#[derive(Debug, Error)]
pub enum MetaError {
    /// A uniqueness rule was broken; the message names what clashed.
    #[error("{0}")]
    Conflict(String),
    /// No free network slot is left on this node.
    #[error("no free network slot")]
    SlotsExhausted,
    #[error("stored record is unreadable")]
    Corrupt(#[source] serde_json::Error),
    #[error("database error")]
    Sqlite(#[from] rusqlite::Error),
}

/// An API key as stored: the secret itself is never kept, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: String,
    pub org: String,
    pub project: Option<String>,
    pub secret_sha256: String,
    pub created_at: DateTime<Utc>,
}

/// One page of a listing plus the total across all pages.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub total: u64,
}

pub trait MetaStore: Send + Sync {
    fn insert_key(&self, key: &KeyRecord) -> Result<(), MetaError>;
    fn get_key(&self, id: &str) -> Result<Option<KeyRecord>, MetaError>;
    fn count_keys(&self) -> Result<u64, MetaError>;

    /// Inserts a new sandbox, giving it the lowest free network slot. Fails with `Conflict` if
    /// the name is taken in its tenant.
    fn insert_sandbox(&self, sandbox: &mut Sandbox) -> Result<(), MetaError>;
    fn update_sandbox(&self, sandbox: &Sandbox) -> Result<(), MetaError>;
    /// Sets only `last_activity_at` (data-plane activity), leaving the rest of the record as is.
    fn touch_sandbox(
        &self,
        id: SandboxId,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), MetaError>;
    fn get_sandbox(&self, id: SandboxId) -> Result<Option<Sandbox>, MetaError>;
    /// Sandboxes of one tenant, oldest first.
    fn list_sandboxes(
        &self,
        tenant: &Tenant,
        offset: u64,
        limit: u64,
    ) -> Result<Page<Sandbox>, MetaError>;
    fn count_sandboxes_in_org(&self, org: &str) -> Result<u64, MetaError>;
    /// Every sandbox on the node, for reconciliation and sampling.
    fn all_sandboxes(&self) -> Result<Vec<Sandbox>, MetaError>;
    fn delete_sandbox(&self, id: SandboxId) -> Result<(), MetaError>;

    /// Inserts a snapshot; a name already used in its tenant is a `Conflict`.
    fn insert_snapshot(&self, snapshot: &Snapshot) -> Result<(), MetaError>;
    fn update_snapshot(&self, snapshot: &Snapshot) -> Result<(), MetaError>;
    fn get_snapshot(&self, id: uuid::Uuid) -> Result<Option<Snapshot>, MetaError>;
    /// Snapshots of one tenant (of one sandbox if given), oldest first.
    fn list_snapshots(
        &self,
        tenant: &Tenant,
        sandbox: Option<SandboxId>,
        offset: u64,
        limit: u64,
    ) -> Result<Page<Snapshot>, MetaError>;
    fn all_snapshots(&self) -> Result<Vec<Snapshot>, MetaError>;
    fn delete_snapshot(&self, id: uuid::Uuid) -> Result<(), MetaError>;
    /// Deletes a snapshot and adds the storage it held (`byte_hours`) to its tenant's usage,
    /// in one transaction.
    fn retire_snapshot(&self, snapshot: &Snapshot, byte_hours: f64) -> Result<(), MetaError>;
    /// Storage held by a tenant's deleted snapshots over their lives, in byte-hours.
    fn retired_snapshot_byte_hours(&self, tenant: &Tenant) -> Result<f64, MetaError>;

    // Preview URLs. Deleting a sandbox deletes its URLs.
    fn insert_preview(&self, url: &PreviewUrl) -> Result<(), MetaError>;
    fn preview_by_token(&self, token_sha256: &str) -> Result<Option<PreviewUrl>, MetaError>;
    fn get_preview(&self, id: &str) -> Result<Option<PreviewUrl>, MetaError>;
    fn delete_preview(&self, id: &str) -> Result<(), MetaError>;
    fn previews_of_sandbox(&self, sandbox: SandboxId) -> Result<Vec<PreviewUrl>, MetaError>;
    /// Deletes URLs past their expiry; returns how many.
    fn delete_expired_previews(&self, now: chrono::DateTime<chrono::Utc>)
        -> Result<u64, MetaError>;

    // SSH access credentials. Deleting a sandbox deletes its credentials.
    /// Inserts or replaces (a regenerated password) a credential.
    fn put_ssh_access(&self, access: &sandboxd_core::SshAccess) -> Result<(), MetaError>;
    fn get_ssh_access(&self, id: &str) -> Result<Option<sandboxd_core::SshAccess>, MetaError>;
    fn delete_ssh_access(&self, id: &str) -> Result<(), MetaError>;
}
