//! A bounded, in-memory trail of data-plane calls per sandbox (what ran, when, how it ended).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use sandboxd_core::SandboxId;

const PER_SANDBOX: usize = 1000;

#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    pub seq: u64,
    pub at: DateTime<Utc>,
    /// The data-plane tool: `exec`, `processes.start`, `files.write`, ...
    pub tool: String,
    /// The command line or file path; never file contents or env values.
    pub target: Option<String>,
    pub success: bool,
    pub reason_code: Option<String>,
    pub duration_ms: u64,
}

#[derive(Default)]
pub(crate) struct AuditLog {
    inner: Mutex<HashMap<SandboxId, (u64, VecDeque<AuditRecord>)>>,
}

impl AuditLog {
    pub fn record(&self, id: SandboxId, mut rec: AuditRecord) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (seq, q) = map.entry(id).or_default();
        *seq += 1;
        rec.seq = *seq;
        if q.len() == PER_SANDBOX {
            q.pop_front();
        }
        q.push_back(rec);
    }

    pub fn list(
        &self,
        id: SandboxId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        after_seq: u64,
        limit: usize,
    ) -> Vec<AuditRecord> {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&id)
            .map(|(_, q)| {
                q.iter()
                    .filter(|r| r.at >= from && r.at <= to && r.seq > after_seq)
                    .take(limit)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn forget(&self, id: SandboxId) {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }
}
