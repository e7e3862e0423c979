//! Runs sandboxes. [`Runtime`] is the seam the engine uses; [`gvisor::Gvisor`] is the
//! implementation: runsc with the systrap platform, an overlayfs rootfs per sandbox, a network
//! namespace with a veth pair, and cgroup v1 limits.
//!
//! Calls block (they run host commands); the engine calls them from blocking threads.

pub mod cgroup;
pub mod fsutil;
pub mod gvisor;
pub mod netns;
mod oci;
mod overlay;
mod owners;
pub mod qgroup;
pub mod reaper;
mod sys;
pub mod volume;

use std::path::{Path, PathBuf};

use sandboxd_core::{NetSlot, Resources};
use thiserror::Error;

pub use gvisor::{Gvisor, GvisorConfig};

/// Waits for a memory image directory (see [`Runtime::restore_new_when`]).
pub type ImageWait = Box<dyn FnOnce() -> Result<PathBuf, RuntimeError> + Send>;

#[derive(Debug, Error)]
pub enum RuntimeError {
    /// A host command failed; `detail` is its trimmed stderr, for the log only.
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("template {0} is not installed")]
    MissingTemplate(String),
    #[error("sandbox did not become ready: {0}")]
    NotReady(String),
}

impl From<sandboxd_egress::PolicyError> for RuntimeError {
    fn from(e: sandboxd_egress::PolicyError) -> Self {
        RuntimeError::Command {
            what: "egress policy".into(),
            detail: e.0,
        }
    }
}

impl RuntimeError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RuntimeError {
        let what = what.into();
        move |source| RuntimeError::Io { what, source }
    }
}

/// What the runtime needs to start one sandbox.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    /// The sandbox's full id (a UUID string); host objects use its first 12 hex chars.
    pub id: String,
    pub hostname: String,
    /// The read-only template root filesystem (overlay lower dir).
    pub template_rootfs: PathBuf,
    pub env: Vec<(String, String)>,
    pub resources: Resources,
    pub net: NetSlot,
    /// What the sandbox may reach; enforced at the host side of its veth before it starts.
    pub egress: sandboxd_egress::Policy,
}

/// Whether a sandbox's container is alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerStatus {
    Running,
    /// The container exists but its processes are gone (or it was never started).
    Stopped,
    /// No trace of the container.
    Missing,
}

/// Host-side usage figures of one sandbox.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    pub cpu_usage_ns: u64,
    pub memory_bytes: u64,
    pub memory_limit_bytes: u64,
    pub pids: u64,
    pub oom_kills: u64,
    /// Bytes the writable layer references (its btrfs qgroup).
    pub disk_bytes: u64,
    /// The layer's quota (0: none known).
    pub disk_limit_bytes: u64,
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
}

/// Timings of a capture, for the snapshot record and the benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CaptureStats {
    /// How long the sandbox's processes were frozen.
    pub paused_ms: u64,
    /// Of that, the gVisor checkpoint (0 without memory).
    pub checkpoint_ms: u64,
}

pub trait Runtime: Send + Sync {
    fn name(&self) -> &'static str;
    /// Prepares the host side (rootfs, network, cgroups) and starts the sandbox's init (the
    /// agent). Returns when the container runs; the agent may need a few ms more to listen.
    fn create(&self, spec: &SandboxSpec) -> Result<(), RuntimeError>;
    /// Stops the sandbox and removes every host object it had. Idempotent.
    fn destroy(&self, id: &str, net: Option<NetSlot>) -> Result<(), RuntimeError>;
    fn status(&self, id: &str) -> Result<ContainerStatus, RuntimeError>;
    /// A cheap liveness check (no runsc call): does the sandbox still have processes?
    fn alive(&self, id: &str) -> bool;
    /// Removes every host object (container, mount, netns, cgroup, directory) that belongs to
    /// none of the sandboxes in `keep`; returns what it removed. Used after a crash.
    fn sweep(&self, keep: &[String]) -> Result<Vec<String>, RuntimeError>;
    fn usage(&self, id: &str) -> Result<Usage, RuntimeError>;
    /// Freezes the sandbox, writes a memory checkpoint to `image_dir` (if given) and a
    /// read-only copy of its writable layer to `layer_dest`, at one instant. With
    /// `keep_running` the sandbox then continues; without, its container is stopped (its layer
    /// and network stay, for `resume`). On failure a running sandbox is left running and no
    /// partial image is left behind.
    fn capture(
        &self,
        id: &str,
        image_dir: Option<&Path>,
        layer_dest: Option<&Path>,
        keep_running: bool,
    ) -> Result<CaptureStats, RuntimeError>;
    /// Starts a sandbox again on its own layer and network: from `image_dir` (memory and
    /// processes) if given, else a cold boot with its files.
    fn resume(&self, spec: &SandboxSpec, image_dir: Option<&Path>) -> Result<(), RuntimeError>;
    /// Creates sandbox `spec` from a captured layer (copy-on-write) and, if given, a memory
    /// image. The new sandbox has its own id, network and cgroup.
    fn restore_new(
        &self,
        spec: &SandboxSpec,
        layer_src: &Path,
        image_dir: Option<&Path>,
    ) -> Result<(), RuntimeError> {
        let image = image_dir.map(Path::to_owned);
        self.restore_new_when(
            spec,
            layer_src,
            image.map(|p| Box::new(move || Ok(p)) as ImageWait),
        )
    }
    /// [`Runtime::restore_new`] with a memory image that is waited for only once the host
    /// side (layer, network, bundle) is ready, so that it can be produced meanwhile. If the
    /// wait fails, everything set up is removed and its error returned.
    fn restore_new_when(
        &self,
        spec: &SandboxSpec,
        layer_src: &Path,
        image: Option<ImageWait>,
    ) -> Result<(), RuntimeError>;
    /// Replaces a sandbox's layer with a captured one and restarts it in place (same id and
    /// network) from `image_dir` if given.
    fn rollback(
        &self,
        spec: &SandboxSpec,
        layer_src: &Path,
        image_dir: Option<&Path>,
    ) -> Result<(), RuntimeError>;
    /// Where a capture named `name` keeps its layer (on the volume) and memory image.
    fn capture_paths(&self, name: &str) -> (PathBuf, PathBuf);
    /// Deletes a captured layer.
    fn drop_layer(&self, layer: &Path) -> Result<(), RuntimeError>;
    /// Releases node-wide resources (the volume) if no sandbox uses them any more.
    fn close_if_idle(&self) -> Result<(), RuntimeError>;
    /// Replaces a sandbox's egress policy in one transaction; the sandbox keeps running.
    fn set_egress(
        &self,
        id: &str,
        net: NetSlot,
        policy: &sandboxd_egress::Policy,
    ) -> Result<(), RuntimeError>;
    /// Packets the sandbox sent that its egress policy dropped.
    fn egress_denied(&self, id: &str) -> u64;
    /// Removes the host-wide objects (processes, nft objects, netns, veth, cgroups) of
    /// sandboxes whose owning data dir no longer exists; returns their short ids.
    fn sweep_orphans(&self) -> Vec<String> {
        Vec::new()
    }
    /// Removes the remains of a container that died on its own (`runsc delete --force`),
    /// keeping its writable layer and network, so that `resume` can boot it again on its files.
    fn discard_dead(&self, id: &str) -> Result<(), RuntimeError>;
    /// Resizes a running sandbox's CPU and memory limits in place.
    fn resize(&self, id: &str, resources: &sandboxd_core::Resources) -> Result<(), RuntimeError>;
    /// [`Runtime::egress_denied`] of many sandboxes at once (the metrics sampler's pass).
    fn egress_denied_many(&self, ids: &[String]) -> Vec<u64> {
        ids.iter().map(|id| self.egress_denied(id)).collect()
    }
}
