//! The sandbox record as the engine keeps it.

use std::fmt;
use std::net::Ipv4Addr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{Resources, SandboxState, Tenant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(transparent)]
pub struct SandboxId(pub Uuid);

impl SandboxId {
    pub fn new() -> Self {
        SandboxId(Uuid::new_v4())
    }

    pub fn parse(s: &str) -> Option<Self> {
        Uuid::parse_str(s).ok().map(SandboxId)
    }

    /// A short stable name for host objects (netns, veth, cgroup): 12 hex chars.
    pub fn short(&self) -> String {
        self.0.simple().to_string()[..12].to_string()
    }
}

impl Default for SandboxId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for SandboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvVar {
    pub name: String,
    pub value: String,
}

/// A sandbox's slot in the node's address plan: slot `n` owns the /30 `10.B.0.0 + 4n`, with
/// the host side at `.1` and the sandbox at `.2`. `B` is the node's subnet octet (default 200;
/// two daemons on one host must use different ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NetSlot(pub u32);

static SUBNET_OCTET: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(200);

impl NetSlot {
    /// Slots available in one 10.B.0.0/16.
    pub const COUNT: u32 = 1 << 14;

    /// Sets this process's subnet `10.<octet>.0.0/16`; call once at start.
    pub fn set_subnet_octet(octet: u8) {
        SUBNET_OCTET.store(octet, std::sync::atomic::Ordering::Relaxed);
    }

    fn base(self) -> u32 {
        let octet = SUBNET_OCTET.load(std::sync::atomic::Ordering::Relaxed);
        u32::from(Ipv4Addr::new(10, octet, 0, 0)) + self.0 * 4
    }
    pub fn host_ip(self) -> Ipv4Addr {
        Ipv4Addr::from(self.base() + 1)
    }
    pub fn sandbox_ip(self) -> Ipv4Addr {
        Ipv4Addr::from(self.base() + 2)
    }
}

/// Everything the engine knows about one sandbox.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sandbox {
    pub id: SandboxId,
    pub tenant: Tenant,
    pub name: String,
    pub region: String,
    pub template_id: String,
    /// The image the template provides, as shown to clients.
    pub image: String,
    pub command: Vec<String>,
    pub env: Vec<EnvVar>,
    pub resources: Resources,
    pub state: SandboxState,
    /// Why the sandbox is `Failed`, or the last operation's error.
    pub status_message: Option<String>,
    pub net: Option<NetSlot>,
    /// The NeevCloud `egress` object as given at create, stored verbatim.
    pub egress: Option<serde_json::Value>,
    pub created_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Idle timeout in seconds, after which the sandbox is stopped; `None` = never.
    pub timeout_secs: Option<u64>,
    pub last_activity_at: DateTime<Utc>,
    /// NeevCloud `max_lifetime_seconds`, `paused_retention_seconds`, `on_idle`.
    #[serde(default)]
    pub windows: crate::Windows,
    /// While paused with memory: the checkpoint image resume restores from.
    #[serde(default)]
    pub paused_image: Option<String>,
    /// `snapshot_mode: automatic`: the five-field cron expression snapshots are taken on.
    #[serde(default)]
    pub snapshot_frequency: Option<String>,
    /// Run-time limit and what happens at it (Leap0 `timeout`, `auto_pause`).
    #[serde(default)]
    pub lifetime: crate::Lifetime,
    /// The Leap0 `network_policy` as given, validated and stored verbatim; enforcing it is
    /// the egress engine's job.
    #[serde(default)]
    pub network_policy: Option<serde_json::Value>,
    /// Unexpected stops and the recovery from them.
    #[serde(default)]
    pub health: Health,
}

/// A sandbox's crash history: the daemon restarts a sandbox whose container died without
/// being asked to, up to a few times in a window.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// The most recent unexpected stop; kept after the sandbox recovers.
    pub last_crash: Option<LastCrash>,
    /// When the recent unexpected stops happened (the restart window's).
    pub crashes: Vec<DateTime<Utc>>,
    /// Restarts after crashes, over the sandbox's life.
    pub restarts: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastCrash {
    pub at: DateTime<Utc>,
    /// `OOMKilled` or `Crashed`.
    pub reason: String,
    /// The sandbox came back with an empty filesystem (never: restarts keep the layer).
    pub storage_reset: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_disjoint_slash30s() {
        assert_eq!(NetSlot(0).host_ip(), Ipv4Addr::new(10, 200, 0, 1));
        assert_eq!(NetSlot(0).sandbox_ip(), Ipv4Addr::new(10, 200, 0, 2));
        assert_eq!(NetSlot(1).host_ip(), Ipv4Addr::new(10, 200, 0, 5));
        assert_eq!(NetSlot(64).sandbox_ip(), Ipv4Addr::new(10, 200, 1, 2));
        assert_eq!(
            NetSlot(NetSlot::COUNT - 1).sandbox_ip(),
            Ipv4Addr::new(10, 200, 255, 254)
        );
    }

    #[test]
    fn short_id_is_12_hex() {
        let id = SandboxId::new();
        assert_eq!(id.short().len(), 12);
        assert!(id.short().chars().all(|c| c.is_ascii_hexdigit()));
    }
}
