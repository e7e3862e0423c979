//! A sandbox's lifetime limit: how long it may run, and what happens when that time is up.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

/// The run-time limit of a sandbox (the Leap0 `timeout`). The clock starts when the sandbox
/// starts running and restarts at every resume or start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lifetime {
    /// Seconds the sandbox may run; `None` = no limit.
    pub timeout_secs: Option<u64>,
    /// When the current run began.
    pub started_at: Option<DateTime<Utc>>,
    /// At the deadline: pause (keeping memory and files) instead of deleting.
    pub auto_pause: bool,
}

/// What the engine does to a sandbox whose time is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutAction {
    Pause,
    Delete,
}

impl Lifetime {
    pub fn new(timeout_secs: Option<u64>, auto_pause: bool, now: DateTime<Utc>) -> Self {
        Lifetime {
            timeout_secs,
            started_at: Some(now),
            auto_pause,
        }
    }

    /// When the current run ends, if it is limited.
    pub fn deadline(&self) -> Option<DateTime<Utc>> {
        let secs = i64::try_from(self.timeout_secs?).ok()?;
        self.started_at?.checked_add_signed(Duration::seconds(secs))
    }

    /// The action due at `now`, if the deadline has passed.
    pub fn due(&self, now: DateTime<Utc>) -> Option<TimeoutAction> {
        let deadline = self.deadline()?;
        (now >= deadline).then_some(if self.auto_pause {
            TimeoutAction::Pause
        } else {
            TimeoutAction::Delete
        })
    }

    /// Restarts the clock (a resume or start).
    pub fn restart(&mut self, now: DateTime<Utc>) {
        if self.timeout_secs.is_some() {
            self.started_at = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_is_never_due() {
        let now = Utc::now();
        assert_eq!(Lifetime::default().due(now), None);
        assert_eq!(Lifetime::new(None, true, now).deadline(), None);
    }

    #[test]
    fn due_at_the_deadline_with_the_right_action() {
        let t0 = Utc::now();
        let l = Lifetime::new(Some(60), false, t0);
        assert_eq!(l.deadline(), Some(t0 + Duration::seconds(60)));
        assert_eq!(l.due(t0 + Duration::seconds(59)), None);
        assert_eq!(
            l.due(t0 + Duration::seconds(60)),
            Some(TimeoutAction::Delete)
        );
        let p = Lifetime::new(Some(60), true, t0);
        assert_eq!(
            p.due(t0 + Duration::seconds(61)),
            Some(TimeoutAction::Pause)
        );
    }

    #[test]
    fn restart_moves_the_deadline() {
        let t0 = Utc::now();
        let mut l = Lifetime::new(Some(10), true, t0);
        let t1 = t0 + Duration::seconds(30);
        assert!(l.due(t1).is_some());
        l.restart(t1);
        assert_eq!(l.due(t1), None);
        assert_eq!(l.deadline(), Some(t1 + Duration::seconds(10)));
        let mut none = Lifetime::default();
        none.restart(t1);
        assert_eq!(none.started_at, None);
    }

    #[test]
    fn huge_timeouts_do_not_overflow() {
        let l = Lifetime::new(Some(u64::MAX), false, Utc::now());
        assert_eq!(l.deadline(), None);
        assert_eq!(l.due(Utc::now()), None);
    }
}
