//! A bounded, in-memory trail of data-plane calls per sandbox (what ran, when, how it ended).
//! Read newest first; a record names the program that ran, never its arguments.

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
    /// The program a process call ran, without its arguments (they may hold secrets).
    pub command: Option<String>,
    /// The file path of a file call; never file contents, arguments or env values.
    pub target: Option<String>,
    pub success: bool,
    pub reason_code: Option<String>,
    pub duration_ms: u64,
}

/// How long records are kept (and the window a trail can answer for).
pub const RETENTION: chrono::Duration = chrono::Duration::days(1);

/// One sandbox's trail: the last sequence number given and the records kept, oldest first.
#[derive(Default)]
struct Trail {
    seq: u64,
    records: VecDeque<AuditRecord>,
    /// When the newest record that had to make room was taken (the trail starts after it).
    evicted_until: Option<DateTime<Utc>>,
}

/// A page of a trail.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditPage {
    /// Newest first.
    pub records: Vec<AuditRecord>,
    /// Pass as `before_seq` for the next (older) page; `None` on the last page.
    pub next_before: Option<u64>,
    /// The requested window starts before the trail does (retention or eviction).
    pub window_truncated: bool,
}

#[derive(Default)]
pub(crate) struct AuditLog {
    inner: Mutex<HashMap<SandboxId, Trail>>,
}

impl AuditLog {
    pub fn record(&self, id: SandboxId, mut rec: AuditRecord) {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let t = map.entry(id).or_default();
        t.seq += 1;
        rec.seq = t.seq;
        let horizon = rec.at - RETENTION;
        while t.records.front().is_some_and(|r| r.at < horizon) {
            t.records.pop_front();
        }
        if t.records.len() == PER_SANDBOX {
            t.evicted_until = t.records.pop_front().map(|r| r.at);
        }
        t.records.push_back(rec);
    }

    /// Records in `[from, to]` older than `before_seq` (if given), newest first, at most `limit`.
    pub fn list(
        &self,
        id: SandboxId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        before_seq: Option<u64>,
        limit: usize,
        now: DateTime<Utc>,
    ) -> AuditPage {
        let map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let trail = map.get(&id);
        // A window of exactly the retention period (the default) is not cut short by the
        // moments between its computation and this one.
        let retained = now - RETENTION - chrono::Duration::minutes(1);
        let starts = trail
            .and_then(|t| t.evicted_until)
            .map_or(retained, |e| e.max(retained));
        let mut records: Vec<AuditRecord> = trail
            .map(|t| {
                t.records
                    .iter()
                    .rev()
                    .filter(|r| r.at >= from && r.at <= to)
                    .filter(|r| before_seq.is_none_or(|b| r.seq < b))
                    .take(limit + 1)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let more = records.len() > limit;
        records.truncate(limit);
        AuditPage {
            next_before: if more {
                records.last().map(|r| r.seq)
            } else {
                None
            },
            records,
            window_truncated: from < starts,
        }
    }

    pub fn forget(&self, id: SandboxId) {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }
}

/// The program a process request runs, for the audit trail: `argv[0]`, or for a shell line
/// (`/bin/sh -c LINE`) the first word of the line. Never an argument.
pub fn program_of(argv: &[String]) -> Option<String> {
    match argv {
        [sh, c, line] if sh.ends_with("/sh") && c == "-c" => {
            line.split_whitespace().next().map(str::to_string)
        }
        [program, ..] => Some(program.clone()),
        [] => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(at: DateTime<Utc>) -> AuditRecord {
        AuditRecord {
            seq: 0,
            at,
            tool: "exec".into(),
            command: Some("echo".into()),
            target: None,
            success: true,
            reason_code: None,
            duration_ms: 1,
        }
    }

    #[test]
    fn newest_first_with_cursor_to_older_records() {
        let log = AuditLog::default();
        let id = SandboxId::new();
        let now = Utc::now();
        for i in 0..5 {
            log.record(id, rec(now - chrono::Duration::seconds(10 - i)));
        }
        let far = now - chrono::Duration::hours(1);
        let p1 = log.list(id, far, now, None, 2, now);
        assert_eq!(p1.records.iter().map(|r| r.seq).collect::<Vec<_>>(), [5, 4]);
        assert_eq!(p1.next_before, Some(4));
        assert!(!p1.window_truncated);
        let p2 = log.list(id, far, now, p1.next_before, 2, now);
        assert_eq!(p2.records.iter().map(|r| r.seq).collect::<Vec<_>>(), [3, 2]);
        let p3 = log.list(id, far, now, p2.next_before, 2, now);
        assert_eq!(p3.records.iter().map(|r| r.seq).collect::<Vec<_>>(), [1]);
        assert_eq!(p3.next_before, None);
        // A window reaching past retention is truncated; limits are not.
        let week = log.list(id, now - chrono::Duration::days(7), now, None, 1, now);
        assert!(week.window_truncated);
    }

    #[test]
    fn programs_never_carry_arguments() {
        let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(program_of(&v(&["echo", "secret"])), Some("echo".into()));
        assert_eq!(
            program_of(&v(&["/bin/sh", "-c", "curl -H 'x: secret' y"])),
            Some("curl".into())
        );
        assert_eq!(program_of(&[]), None);
    }
}
