//! Snapshots: a sandbox's files, and optionally its memory, captured at one instant.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{EnvVar, Resources, SandboxId, Tenant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotStatus {
    Pending,
    Running,
    Ready,
    Failed,
}

impl SnapshotStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotStatus::Pending => "Pending",
            SnapshotStatus::Running => "Running",
            SnapshotStatus::Ready => "Ready",
            SnapshotStatus::Failed => "Failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub id: Uuid,
    pub tenant: Tenant,
    pub sandbox_id: SandboxId,
    pub name: Option<String>,
    pub status: SnapshotStatus,
    pub include_memory: bool,
    pub error_message: Option<String>,
    /// Bytes of the captured layer plus the memory image.
    pub size_bytes: Option<u64>,
    /// Bytes the snapshot added to storage: its memory image's chunks that the store did
    /// not already hold (`None` until the image is stored); a layer, being a
    /// copy-on-write snapshot, adds none when taken.
    #[serde(default)]
    pub added_bytes: Option<u64>,
    /// How long the sandbox was frozen for the capture.
    pub paused_ms: Option<u64>,
    /// What a restore needs to rebuild the sandbox the same way.
    pub template_id: String,
    pub image: String,
    pub resources: Resources,
    pub env: Vec<EnvVar>,
    pub region: String,
    pub created_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    /// The source sandbox's network policy, reused by restores that do not override it.
    #[serde(default)]
    pub network_policy: Option<serde_json::Value>,
    /// The source sandbox's NeevCloud `egress`, reused by restores and forks.
    #[serde(default)]
    pub egress: Option<serde_json::Value>,
}

/// Snapshot names: `^[a-z0-9-]{1,40}$`.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 40
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Parses a retention duration: `"0"` = none, else a sum of `<n>h`, `<n>m`, `<n>s` (`"720h"`).
pub fn parse_retention(s: &str) -> Option<Option<chrono::Duration>> {
    if s == "0" {
        return Some(None);
    }
    let mut total: i64 = 0;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: i64 = num.parse().ok()?;
        num.clear();
        total = total.checked_add(match c {
            'h' => n.checked_mul(3600)?,
            'm' => n.checked_mul(60)?,
            's' => n,
            'd' => n.checked_mul(86400)?,
            _ => return None,
        })?;
    }
    if !num.is_empty() || total <= 0 {
        return None;
    }
    Some(Some(chrono::Duration::seconds(total)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("nightly-1"));
        assert!(!valid_name(""));
        assert!(!valid_name("Upper"));
        assert!(!valid_name(&"a".repeat(41)));
        assert!(!valid_name("a_b"));
    }

    #[test]
    fn retention() {
        assert_eq!(parse_retention("0"), Some(None));
        assert_eq!(
            parse_retention("720h"),
            Some(Some(chrono::Duration::hours(720)))
        );
        assert_eq!(
            parse_retention("1h30m"),
            Some(Some(chrono::Duration::minutes(90)))
        );
        for bad in ["", "h", "10", "10x", "-1h", "0h"] {
            assert_eq!(parse_retention(bad), None, "{bad}");
        }
    }
}
