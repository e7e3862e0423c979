//! Stop and start, run-time limits (pause or delete at the deadline), auto-resume, and the
//! lookups the Leap0 dialect needs (snapshots by name).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use sandboxd_core::state::Op;
use sandboxd_core::{
    CoreError, Lifetime, Principal, Sandbox, SandboxId, SandboxState, Snapshot, Tenant,
    TimeoutAction,
};
use tracing::{info, instrument, warn};

use crate::{Engine, EngineError};

impl Engine {
    /// Stops a sandbox: its processes and memory are dropped, its writable disk is kept.
    /// A paused sandbox is stopped by dropping its saved memory.
    #[instrument(skip_all, fields(sandbox_id = %id))]
    pub async fn stop_sandbox(
        &self,
        tenant: &Tenant,
        id: SandboxId,
    ) -> Result<Sandbox, EngineError> {
        let mut sb = self.get_sandbox(tenant, id)?;
        sb.state.check(Op::Stop)?;
        let _busy = self.begin(id)?;
        if sb.state == SandboxState::Paused {
            if let Some(img) = sb.paused_image.take() {
                let _ = std::fs::remove_dir_all(img);
            }
            sb.state = SandboxState::Stopped;
            self.save(&mut sb)?;
            return Ok(sb);
        }
        sb.state = SandboxState::Stopping;
        self.save(&mut sb)?;
        let sid = id.to_string();
        match self
            .blocking(move |rt| rt.capture(&sid, None, None, false))
            .await
        {
            Ok(_) => {
                sb.state = SandboxState::Stopped;
                sb.status_message = None;
                self.save(&mut sb)?;
                info!("sandbox stopped");
                Ok(sb)
            }
            Err(e) => Err(self.settle_failure(
                &mut sb,
                e,
                SandboxState::Running,
                "stop failed; the sandbox kept running",
            )),
        }
    }

    /// Starts a stopped sandbox: a fresh boot of its template on its saved writable disk.
    pub async fn start_sandbox(
        &self,
        tenant: &Tenant,
        id: SandboxId,
    ) -> Result<Sandbox, EngineError> {
        let sb = self.get_sandbox(tenant, id)?;
        if sb.state != SandboxState::Stopped {
            return Err(CoreError::Conflict(format!(
                "cannot start a sandbox that is {} (only a stopped one)",
                sb.state.as_str()
            ))
            .into());
        }
        self.admit_on_node(&sb.resources)?;
        self.resume_sandbox(tenant, id).await
    }

    /// Sets a sandbox's run-time limit (the clock restarts now) and, if given, its network
    /// policy.
    pub fn set_lifetime(
        &self,
        tenant: &Tenant,
        id: SandboxId,
        timeout_secs: Option<u64>,
        auto_pause: bool,
        network_policy: Option<Option<serde_json::Value>>,
    ) -> Result<Sandbox, EngineError> {
        let mut sb = self.get_sandbox(tenant, id)?;
        sb.lifetime = Lifetime::new(timeout_secs, auto_pause, Utc::now());
        if let Some(p) = network_policy {
            sb.network_policy = p;
        }
        self.save(&mut sb)?;
        Ok(sb)
    }

    /// The sandbox a data-plane call addresses, running: a paused sandbox is resumed first
    /// (auto-resume). Concurrent callers wait for the one resume in flight.
    pub async fn running_sandbox(
        &self,
        principal: &Principal,
        id: SandboxId,
    ) -> Result<Sandbox, EngineError> {
        let deadline = tokio::time::Instant::now() + self.cfg.agent_ready_timeout * 3;
        loop {
            let sb = self.sandbox_for(principal, id)?;
            match sb.state {
                SandboxState::Paused => match self
                    .admit_on_node(&sb.resources)
                    .map(|()| self.resume_sandbox(&sb.tenant, id))?
                    .await
                {
                    Ok(sb) => {
                        info!(sandbox_id = %id, "auto-resumed for a request");
                        return Ok(sb);
                    }
                    Err(EngineError::Core(CoreError::Conflict(_))) => {}
                    Err(e) => return Err(e),
                },
                SandboxState::Resuming | SandboxState::Pausing | SandboxState::Starting => {}
                st => {
                    st.check(Op::Exec)?;
                    return Ok(sb);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(CoreError::Conflict(format!(
                    "sandbox is still {}; try again",
                    self.sandbox_for(principal, id)?.state.as_str()
                ))
                .into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A snapshot of the tenant by name (or by id).
    pub fn find_snapshot(
        &self,
        tenant: &Tenant,
        name_or_id: &str,
    ) -> Result<Snapshot, EngineError> {
        if let Ok(id) = uuid::Uuid::parse_str(name_or_id) {
            if let Ok(s) = self.get_snapshot(tenant, id) {
                return Ok(s);
            }
        }
        self.list_snapshots(tenant, None, 0, u64::MAX >> 1)?
            .items
            .into_iter()
            .find(|s| s.name.as_deref() == Some(name_or_id))
            .ok_or_else(|| CoreError::not_found("snapshot", name_or_id.to_string()).into())
    }

    /// One pass of the lifetime enforcer: every running sandbox past its deadline is paused
    /// (`auto_pause`) or deleted. A sandbox whose action failed waits in `retry` (doubling
    /// waits, at most a minute) so a broken one is not retried and logged every pass.
    /// Returns what it did.
    pub async fn enforce_lifetimes(&self, retry: &mut Retry) -> Vec<(SandboxId, TimeoutAction)> {
        let now = Utc::now();
        let Ok(all) = self.meta.all_sandboxes() else {
            return vec![];
        };
        retry.forget_except(&all);
        let mut done = Vec::new();
        for sb in all.into_iter().filter(|s| s.state == SandboxState::Running) {
            let Some(action) = sb.lifetime.due(now) else {
                continue;
            };
            if !retry.ready(sb.id) {
                continue;
            }
            let result = match action {
                TimeoutAction::Pause => self
                    .pause_sandbox(&sb.tenant, sb.id, true)
                    .await
                    .map(|_| ()),
                TimeoutAction::Delete => self.delete_sandbox(&sb.tenant, sb.id).await,
            };
            match result {
                Ok(()) => {
                    info!(sandbox_id = %sb.id, ?action, "sandbox reached its timeout");
                    done.push((sb.id, action));
                }
                // Busy with another operation: try again on the next pass.
                Err(EngineError::Core(CoreError::Conflict(_))) => {}
                Err(e) => {
                    let wait = retry.failed(sb.id);
                    warn!(sandbox_id = %sb.id, error = %e, retry_in_s = wait.as_secs(), "timeout action failed");
                }
            }
        }
        done
    }

    /// Runs [`Engine::enforce_lifetimes`] every `every` until the process ends.
    pub async fn watch_lifetimes(self: Arc<Self>, every: Duration) {
        let mut retry = Retry::default();
        loop {
            tokio::time::sleep(every).await;
            self.enforce_lifetimes(&mut retry).await;
        }
    }
}

/// Back-off for sandboxes whose timeout action failed.
#[derive(Debug, Default)]
pub struct Retry {
    failed: HashMap<SandboxId, (u32, Instant)>,
}

impl Retry {
    const MAX_WAIT: Duration = Duration::from_secs(60);

    /// Whether the sandbox may be acted on now.
    pub fn ready(&self, id: SandboxId) -> bool {
        self.failed
            .get(&id)
            .is_none_or(|(_, next)| Instant::now() >= *next)
    }

    /// Records a failure; returns how long until the next try (1 s, 2 s, 4 s, ... 60 s).
    pub fn failed(&mut self, id: SandboxId) -> Duration {
        let e = self.failed.entry(id).or_insert((0, Instant::now()));
        e.0 = e.0.saturating_add(1);
        let wait = Duration::from_secs(1u64 << (e.0 - 1).min(6)).min(Self::MAX_WAIT);
        e.1 = Instant::now() + wait;
        wait
    }

    /// Drops entries of sandboxes that are gone.
    fn forget_except(&mut self, live: &[Sandbox]) {
        self.failed.retain(|id, _| live.iter().any(|s| s.id == *id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_and_cap() {
        let mut r = Retry::default();
        let id = SandboxId::new();
        assert!(r.ready(id));
        assert_eq!(r.failed(id), Duration::from_secs(1));
        assert!(!r.ready(id));
        assert_eq!(r.failed(id), Duration::from_secs(2));
        for _ in 0..10 {
            r.failed(id);
        }
        assert_eq!(r.failed(id), Duration::from_secs(60));
        r.forget_except(&[]);
        assert!(r.ready(id));
    }
}
