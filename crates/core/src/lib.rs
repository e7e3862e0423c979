//! Domain types of sandboxd: sandboxes, their resources and lifecycle, tenants and templates.
//!
//! Nothing here knows about HTTP, SQLite or gVisor; the API front-ends translate requests into
//! these types and the engine acts on them.

pub mod cron;
pub mod error;
pub mod fault;
pub mod lifetime;
pub mod preview;
pub mod resources;
pub mod sandbox;
pub mod snapshot;
pub mod ssh;
pub mod state;
pub mod tenant;
pub mod validate;

pub use error::CoreError;
pub use lifetime::{Lifetime, OnIdle, TimeoutAction, Windows};
pub use preview::PreviewUrl;
pub use resources::Resources;
pub use sandbox::{EnvVar, Health, LastCrash, NetSlot, Sandbox, SandboxId};
pub use snapshot::{Snapshot, SnapshotStatus};
pub use ssh::SshAccess;
pub use state::SandboxState;
pub use tenant::{Principal, Tenant};
