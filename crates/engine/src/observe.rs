//! What the metrics sampler reads from the engine: the sandboxes with their state, their host
//! usage, and lifecycle events the engine itself sees (restarts, OOM deaths).

use std::collections::HashMap;
use std::sync::Mutex;

use sandboxd_agent::proto::{Reply, Request};
use sandboxd_core::{SandboxId, SandboxState};
use sandboxd_runtime::Usage;

use crate::{Engine, EngineError};

/// Lifecycle events of one sandbox seen by this engine since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lifecycle {
    /// Times its container was started again (resume, rollback).
    pub restarts: u64,
    /// Times the kernel's OOM killer took its sandbox down (seen by the watcher).
    pub oom_deaths: u64,
}

#[derive(Default)]
pub(crate) struct LifecycleCounts(Mutex<HashMap<SandboxId, Lifecycle>>);

impl LifecycleCounts {
    fn with(&self, id: SandboxId, f: impl FnOnce(&mut Lifecycle)) {
        f(self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(id)
            .or_default());
    }
    pub(crate) fn restarted(&self, id: SandboxId) {
        self.with(id, |l| l.restarts += 1);
    }
    pub(crate) fn oom_death(&self, id: SandboxId) {
        self.with(id, |l| l.oom_deaths += 1);
    }
    pub(crate) fn forget(&self, id: SandboxId) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    }
    fn get(&self, id: SandboxId) -> Lifecycle {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .copied()
            .unwrap_or_default()
    }
}

/// One sandbox as the sampler sees it.
#[derive(Debug, Clone)]
pub struct Observed {
    pub id: SandboxId,
    pub state: SandboxState,
    pub lifecycle: Lifecycle,
    /// Its network slot, if it holds one (where its agent answers).
    pub net: Option<sandboxd_core::NetSlot>,
}

impl Engine {
    /// Every sandbox on this node with its state and lifecycle counts.
    pub fn observed_sandboxes(&self) -> Result<Vec<Observed>, EngineError> {
        Ok(self
            .meta
            .all_sandboxes()?
            .into_iter()
            .map(|sb| Observed {
                id: sb.id,
                state: sb.state,
                lifecycle: self.lifecycle.get(sb.id),
                net: sb.net,
            })
            .collect())
    }

    /// Host usage of a sandbox's container (cgroup counters, layer qgroup, veth counters).
    /// Blocking: file reads only, no commands.
    pub fn host_usage(&self, id: SandboxId) -> Result<Usage, EngineError> {
        Ok(self.runtime.usage(&id.to_string())?)
    }

    /// Processes the agent's memory watchdog killed in this sandbox since the agent started
    /// (it carries over a pause/resume with memory; a cold start resets it). Blocking: one
    /// `Ping` over TCP, at most ~`timeout` twice. `None` if the agent does not answer.
    pub fn agent_oom_kills(
        &self,
        net: sandboxd_core::NetSlot,
        timeout: std::time::Duration,
    ) -> Option<u64> {
        use std::io::{BufRead, Write};
        let mut s = std::net::TcpStream::connect_timeout(&crate::agent_addr(net), timeout).ok()?;
        s.set_read_timeout(Some(timeout)).ok()?;
        let _ = s.set_nodelay(true);
        let mut line = serde_json::to_vec(&Request::Ping).ok()?;
        line.push(b'\n');
        s.write_all(&line).ok()?;
        let mut reply = Vec::new();
        std::io::BufReader::new(s)
            .read_until(b'\n', &mut reply)
            .ok()?;
        match serde_json::from_slice(&reply).ok()? {
            Reply::Pong { oom_kills, .. } => Some(oom_kills),
            _ => None,
        }
    }
}
