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

/// What an idle sandbox turns into (NeevCloud `on_idle`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnIdle {
    #[default]
    Pause,
    Delete,
}

/// The NeevCloud timeout windows besides the idle timeout itself (`Sandbox::timeout_secs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Windows {
    /// Seconds from creation after which the sandbox is deleted.
    pub max_lifetime_secs: Option<u64>,
    /// Seconds a paused sandbox is kept before it is deleted.
    pub paused_retention_secs: Option<u64>,
    pub on_idle: OnIdle,
}

fn after(t: DateTime<Utc>, secs: u64) -> Option<DateTime<Utc>> {
    t.checked_add_signed(Duration::seconds(i64::try_from(secs).ok()?))
}

impl Windows {
    /// When a running sandbox idle since `last_activity` with idle timeout `idle_secs` expires.
    pub fn idle_expires_at(
        idle_secs: Option<u64>,
        last_activity: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        after(last_activity, idle_secs.filter(|s| *s > 0)?)
    }

    /// When a sandbox created at `created` is deleted whatever it does (`max_lifetime_secs`);
    /// `None` without a lifetime limit.
    pub fn hard_expires_at(&self, created: DateTime<Utc>) -> Option<DateTime<Utc>> {
        after(created, self.max_lifetime_secs.filter(|s| *s > 0)?)
    }

    /// The action due at `now` for a sandbox that is running (`running`) or paused (since
    /// `paused_since`), created at `created`, idle since `last_activity`.
    pub fn due(
        &self,
        running: bool,
        idle_secs: Option<u64>,
        created: DateTime<Utc>,
        last_activity: DateTime<Utc>,
        paused_since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Option<TimeoutAction> {
        if self
            .max_lifetime_secs
            .and_then(|s| after(created, s))
            .is_some_and(|t| now >= t)
        {
            return Some(TimeoutAction::Delete);
        }
        if running {
            let idle = Self::idle_expires_at(idle_secs, last_activity)?;
            (now >= idle).then_some(match self.on_idle {
                OnIdle::Pause => TimeoutAction::Pause,
                OnIdle::Delete => TimeoutAction::Delete,
            })
        } else {
            let end = after(paused_since, self.paused_retention_secs?)?;
            (now >= end).then_some(TimeoutAction::Delete)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hard_expiry_is_creation_plus_lifetime() {
        let created = Utc::now();
        let w = Windows {
            max_lifetime_secs: Some(90),
            ..Default::default()
        };
        assert_eq!(
            w.hard_expires_at(created),
            Some(created + Duration::seconds(90))
        );
        assert_eq!(Windows::default().hard_expires_at(created), None);
        let off = Windows {
            max_lifetime_secs: Some(0),
            ..Default::default()
        };
        assert_eq!(off.hard_expires_at(created), None);
    }

    #[test]
    fn neevcloud_windows() {
        let t0 = Utc::now();
        let s = |n: i64| t0 + Duration::seconds(n);
        let w = Windows::default();
        // Idle: pause by default, delete when asked; nothing without a timeout.
        assert_eq!(w.due(true, Some(10), t0, t0, t0, s(9)), None);
        assert_eq!(
            w.due(true, Some(10), t0, t0, t0, s(10)),
            Some(TimeoutAction::Pause)
        );
        assert_eq!(w.due(true, None, t0, t0, t0, s(1000)), None);
        assert_eq!(w.due(true, Some(0), t0, t0, t0, s(1000)), None);
        let del = Windows {
            on_idle: OnIdle::Delete,
            ..w
        };
        assert_eq!(del.due(true, Some(10), t0, s(5), t0, s(14)), None);
        assert_eq!(
            del.due(true, Some(10), t0, s(5), t0, s(15)),
            Some(TimeoutAction::Delete)
        );
        // Max lifetime deletes, running or paused; paused retention deletes paused ones.
        let life = Windows {
            max_lifetime_secs: Some(60),
            ..w
        };
        assert_eq!(
            life.due(false, None, t0, t0, t0, s(60)),
            Some(TimeoutAction::Delete)
        );
        let keep = Windows {
            paused_retention_secs: Some(30),
            ..w
        };
        assert_eq!(keep.due(false, Some(1), t0, t0, s(10), s(39)), None);
        assert_eq!(
            keep.due(false, Some(1), t0, t0, s(10), s(40)),
            Some(TimeoutAction::Delete)
        );
        assert_eq!(keep.due(true, None, t0, t0, s(10), s(40)), None);
    }

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
