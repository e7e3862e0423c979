//! Scheduled snapshots (`snapshot_mode: automatic`) and the snapshot storage report.
//!
//! The scheduler checks every few seconds which schedules fired since its previous check. A
//! sandbox that is not running, or has an operation (such as another snapshot) in flight, skips
//! that tick: missed runs are never queued.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sandboxd_core::cron::Schedule;
use sandboxd_core::{Principal, Sandbox, SandboxState, Snapshot, SnapshotStatus, Tenant};
use tracing::{info, warn};

use crate::{CreateSnapshot, Engine, EngineError};

/// The caller recorded as `created_by` of automatic snapshots.
pub const SCHEDULER: &str = "scheduler";

/// What one tick decided for one sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    /// The schedule did not fire in this window.
    Idle,
    /// It fired, but the sandbox was not running or was busy: skipped, not queued.
    Skipped,
    /// It fired and a capture was taken (it may have ended `Failed`).
    Taken,
}

/// Whether `sb`'s schedule fired in `(after, until]`.
pub fn fired(sb: &Sandbox, after: DateTime<Utc>, until: DateTime<Utc>) -> bool {
    sb.snapshot_frequency
        .as_deref()
        .and_then(|f| Schedule::parse(f).ok())
        .is_some_and(|s| s.fires_between(after, until))
}

/// The name of an automatic snapshot: `auto-<sandbox id prefix>-<yyyymmdd-hhmm>`.
pub fn auto_name(sb: &Sandbox, at: DateTime<Utc>) -> String {
    format!("auto-{}-{}", &sb.id.short()[..8], at.format("%Y%m%d-%H%M"))
}

/// Storage a snapshot has held so far, in byte-hours.
pub fn byte_hours(s: &Snapshot, until: DateTime<Utc>) -> f64 {
    let bytes = s.size_bytes.unwrap_or(0) as f64;
    let secs = (until - s.created_at).num_milliseconds().max(0) as f64 / 1000.0;
    bytes * secs / 3600.0
}

/// A tenant's snapshot storage: what is held now, and what has been held over time.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotUsage {
    pub snapshots: u64,
    pub bytes: u64,
    /// Live snapshots' byte-hours so far plus those of deleted ones.
    pub byte_hours: f64,
    pub as_of: DateTime<Utc>,
}

impl Engine {
    /// Runs the snapshot scheduler until the process ends.
    pub async fn schedule_snapshots(self: Arc<Self>, every: Duration) {
        let mut last = Utc::now();
        loop {
            tokio::time::sleep(every).await;
            let now = Utc::now();
            if let Err(e) = self.schedule_tick(last, now).await {
                warn!(error = %e, "snapshot scheduler");
            }
            last = now;
        }
    }

    /// One pass: starts a capture for every running sandbox whose schedule fired in
    /// `(after, until]`; returns what it decided per sandbox.
    pub async fn schedule_tick(
        &self,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<Vec<(sandboxd_core::SandboxId, Tick)>, EngineError> {
        let mut out = Vec::new();
        for sb in self.meta.all_sandboxes()? {
            if sb.snapshot_frequency.is_none() {
                continue;
            }
            if !fired(&sb, after, until) {
                out.push((sb.id, Tick::Idle));
                continue;
            }
            if sb.state != SandboxState::Running {
                info!(sandbox_id = %sb.id, state = sb.state.as_str(), "scheduled snapshot skipped: sandbox not ready");
                out.push((sb.id, Tick::Skipped));
                continue;
            }
            let Ok(_busy) = self.begin(sb.id) else {
                info!(sandbox_id = %sb.id, "scheduled snapshot skipped: an operation is in flight");
                out.push((sb.id, Tick::Skipped));
                continue;
            };
            // Captures run one after another: a filesystem-only capture pauses its sandbox
            // for milliseconds, and the next tick waits for this one.
            let id = sb.id;
            match self.scheduled_capture(sb, until).await {
                Ok(s) => {
                    info!(sandbox_id = %id, snapshot_id = %s.id, status = s.status.as_str(), "scheduled snapshot")
                }
                Err(e) => warn!(sandbox_id = %id, error = %e, "scheduled snapshot"),
            }
            out.push((id, Tick::Taken));
        }
        Ok(out)
    }

    async fn scheduled_capture(
        &self,
        mut sb: Sandbox,
        at: DateTime<Utc>,
    ) -> Result<Snapshot, EngineError> {
        let principal = Principal {
            key_id: SCHEDULER.into(),
            org: sb.tenant.org.clone(),
            project: Some(sb.tenant.project.clone()),
        };
        let req = CreateSnapshot {
            name: Some(auto_name(&sb, at)),
            include_memory: false,
            retain_for: None,
        };
        self.capture_locked(&principal, &mut sb, req).await
    }

    /// The tenant's snapshot storage report.
    pub fn snapshot_usage(&self, tenant: &Tenant) -> Result<SnapshotUsage, EngineError> {
        let now = Utc::now();
        let mut usage = SnapshotUsage {
            snapshots: 0,
            bytes: 0,
            byte_hours: self.meta.retired_snapshot_byte_hours(tenant)?,
            as_of: now,
        };
        for s in self.meta.all_snapshots()? {
            if &s.tenant != tenant || s.status != SnapshotStatus::Ready {
                continue;
            }
            usage.snapshots += 1;
            usage.bytes += s.size_bytes.unwrap_or(0);
            usage.byte_hours += byte_hours(&s, now);
        }
        Ok(usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use sandboxd_core::{Resources, SandboxId};

    fn sandbox(freq: Option<&str>) -> Sandbox {
        let now = Utc::now();
        Sandbox {
            id: SandboxId::new(),
            tenant: Tenant {
                org: "o".into(),
                project: "p".into(),
            },
            name: "s".into(),
            region: "local".into(),
            template_id: "sb-busybox".into(),
            image: "busybox".into(),
            command: vec![],
            env: vec![],
            resources: Resources::default(),
            state: SandboxState::Running,
            status_message: None,
            net: None,
            egress: None,
            created_by: None,
            created_at: now,
            updated_at: now,
            timeout_secs: None,
            last_activity_at: now,
            windows: Default::default(),
            paused_image: None,
            snapshot_frequency: freq.map(str::to_string),
            lifetime: Default::default(),
            network_policy: None,
            health: Default::default(),
        }
    }

    #[test]
    fn only_automatic_sandboxes_fire_and_names_are_valid() {
        let a = Utc.with_ymd_and_hms(2026, 11, 30, 9, 59, 58).unwrap();
        let b = Utc.with_ymd_and_hms(2026, 11, 30, 10, 0, 3).unwrap();
        assert!(fired(&sandbox(Some("0 * * * *")), a, b));
        assert!(!fired(&sandbox(Some("30 * * * *")), a, b));
        assert!(!fired(&sandbox(None), a, b));
        let name = auto_name(&sandbox(None), b);
        assert!(sandboxd_core::snapshot::valid_name(&name), "{name}");
        assert!(name.ends_with("-20261130-1000"));
    }

    #[test]
    fn byte_hours_grow_with_size_and_time() {
        let sb = sandbox(None);
        let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let s = Snapshot {
            id: uuid::Uuid::new_v4(),
            tenant: sb.tenant.clone(),
            sandbox_id: sb.id,
            name: None,
            status: SnapshotStatus::Ready,
            include_memory: false,
            error_message: None,
            size_bytes: Some(1 << 30),
            added_bytes: None,
            paused_ms: None,
            template_id: sb.template_id.clone(),
            image: sb.image.clone(),
            resources: sb.resources,
            env: vec![],
            region: "local".into(),
            created_by: None,
            created_at: t0,
            updated_at: t0,
            expires_at: None,
            network_policy: None,
            egress: None,
        };
        assert_eq!(byte_hours(&s, t0), 0.0);
        assert_eq!(
            byte_hours(&s, t0 + chrono::Duration::minutes(90)),
            1.5 * (1u64 << 30) as f64
        );
    }
}
