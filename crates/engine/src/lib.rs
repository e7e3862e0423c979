//! The actions of sandboxd. Both API dialects call these; nothing here knows about HTTP.
//!
//! The engine owns the metadata store, the runtime and the template catalogue, keeps one
//! lifecycle operation in flight per sandbox, and reaches the agent inside each sandbox for
//! processes and files.

pub mod agent_client;
mod archive;
mod audit;
pub mod egress;
pub mod files;
pub mod keys;
mod lifetime;
mod observe;
pub mod preview;
mod sandboxes;
pub mod schedule;
mod snapshots;
pub mod ssh;
pub mod templates;
pub mod update;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sandboxd_core::{CoreError, SandboxId};
use sandboxd_meta::{MetaError, MetaStore};
use sandboxd_runtime::{Runtime, RuntimeError};
use thiserror::Error;

pub use agent_client::AgentError;
pub use audit::{program_of, AuditPage, AuditRecord};
pub use egress::EgressUpdate;
pub use lifetime::Retry;
pub use observe::{Lifecycle, Observed};
pub use sandboxes::{CreateSandbox, TimeoutUpdate};
pub use snapshots::CreateSnapshot;
pub use templates::{Template, TemplateStatus, Templates};

#[derive(Debug, Error)]
pub enum EngineError {
    /// A client-facing error: validation, not found, conflict, quota.
    #[error(transparent)]
    Core(#[from] CoreError),
    #[error("metadata store")]
    Meta(#[source] MetaError),
    #[error("runtime")]
    Runtime(#[from] RuntimeError),
    #[error("sandbox agent")]
    Agent(#[from] AgentError),
    #[error("{0}")]
    BadKey(String),
}

impl From<MetaError> for EngineError {
    fn from(e: MetaError) -> Self {
        match e {
            MetaError::Conflict(m) => EngineError::Core(CoreError::Conflict(m)),
            MetaError::SlotsExhausted => EngineError::Core(CoreError::Unavailable(
                "no network capacity left on this node".into(),
            )),
            other => EngineError::Meta(other),
        }
    }
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The region this node serves; sandboxes default to it.
    pub region: String,
    /// Most sandboxes one org may hold at once (429 past it).
    pub max_sandboxes_per_org: u64,
    /// Memory (MiB) the node may promise to sandboxes in total (503 past it).
    pub node_memory_mib: u64,
    /// CPU (thousandths of a core) the node may promise to sandboxes in total (503 past it).
    pub node_cpu_millis: u64,
    /// How long a new sandbox's agent may take to answer.
    pub agent_ready_timeout: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            region: "local".into(),
            max_sandboxes_per_org: 100,
            node_memory_mib: 64 * 1024,
            node_cpu_millis: u64::MAX,
            agent_ready_timeout: Duration::from_secs(20),
        }
    }
}

pub struct Engine {
    pub cfg: EngineConfig,
    meta: Arc<dyn MetaStore>,
    runtime: Arc<dyn Runtime>,
    pub templates: Templates,
    busy: Mutex<HashSet<SandboxId>>,
    audit: audit::AuditLog,
    snapshot_locks: SnapshotLocks,
    lifecycle: observe::LifecycleCounts,
    /// Where transform secrets are sealed; records keep only references.
    egress_secrets: Option<Arc<sandboxd_egress::secrets::SecretStore>>,
    /// Where memory images go once captured (none: they stay plain files).
    archive: Option<archive::Archive>,
    /// Idle agent connections for code-interpreter calls.
    agent_pool: agent_client::Pool,
}

/// Restores of a snapshot hold it shared; deleting it waits for them.
#[derive(Default)]
pub(crate) struct SnapshotLocks {
    map: Mutex<std::collections::HashMap<uuid::Uuid, Arc<tokio::sync::RwLock<()>>>>,
}

impl SnapshotLocks {
    fn get(&self, id: uuid::Uuid) -> Arc<tokio::sync::RwLock<()>> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id)
            .or_default()
            .clone()
    }
    pub async fn read(&self, id: uuid::Uuid) -> tokio::sync::OwnedRwLockReadGuard<()> {
        self.get(id).read_owned().await
    }
    pub async fn write(&self, id: uuid::Uuid) -> tokio::sync::OwnedRwLockWriteGuard<()> {
        self.get(id).write_owned().await
    }
}

/// Marks a sandbox busy with a lifecycle operation until dropped.
pub(crate) struct Busy<'a> {
    engine: &'a Engine,
    id: SandboxId,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.engine
            .busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

impl Engine {
    pub fn new(
        cfg: EngineConfig,
        meta: Arc<dyn MetaStore>,
        runtime: Arc<dyn Runtime>,
        templates: Templates,
    ) -> Self {
        Engine {
            cfg,
            meta,
            runtime,
            templates,
            busy: Mutex::new(HashSet::new()),
            audit: audit::AuditLog::default(),
            snapshot_locks: SnapshotLocks::default(),
            lifecycle: observe::LifecycleCounts::default(),
            egress_secrets: None,
            archive: None,
            agent_pool: Default::default(),
        }
    }

    /// Seals transform secrets in `store` before any record holds them.
    pub fn with_egress_secrets(
        mut self,
        store: Arc<sandboxd_egress::secrets::SecretStore>,
    ) -> Self {
        self.egress_secrets = Some(store);
        self
    }

    pub fn meta(&self) -> &dyn MetaStore {
        self.meta.as_ref()
    }

    pub(crate) fn begin(&self, id: SandboxId) -> Result<Busy<'_>, CoreError> {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        if !busy.insert(id) {
            return Err(CoreError::Conflict(
                "another operation on this sandbox is in progress".into(),
            ));
        }
        Ok(Busy { engine: self, id })
    }
}

pub(crate) fn agent_addr(slot: sandboxd_core::NetSlot) -> SocketAddr {
    SocketAddr::new(slot.sandbox_ip().into(), sandboxd_agent::proto::AGENT_PORT)
}
