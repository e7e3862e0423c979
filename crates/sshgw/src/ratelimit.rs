//! Rate limiting of failed password logins per (peer IP, user).
//!
//! The first [`FREE_FAILURES`] failures cost nothing; from then on every failure locks the pair
//! out for a delay that doubles each time (1 s, 2 s, 4 s, ... capped at [`MAX_DELAY`]). While
//! locked out, attempts are rejected without asking the backend. A success clears the pair;
//! a pair that has been quiet for [`FORGET_AFTER`] is forgotten.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures allowed before the first lockout.
pub const FREE_FAILURES: u32 = 3;
/// Longest lockout.
pub const MAX_DELAY: Duration = Duration::from_secs(60);
/// A pair with no failure for this long starts afresh.
pub const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Above this many tracked pairs, stale ones are swept on the next failure.
const SWEEP_ABOVE: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last_failure: Instant,
    locked_until: Option<Instant>,
}

/// Tracks failures; shared by all connections of one [`crate::Gateway`].
#[derive(Debug, Default)]
pub struct AuthLimiter {
    entries: Mutex<HashMap<(IpAddr, String), Entry>>,
}

impl AuthLimiter {
    pub fn new() -> Self {
        Self::default()
    }

    /// `Some(remaining)` when the pair is locked out at `now`.
    pub fn locked(&self, ip: IpAddr, user: &str, now: Instant) -> Option<Duration> {
        let entries = self.lock();
        let entry = entries.get(&(ip, user.to_owned()))?;
        let until = entry.locked_until?;
        (until > now).then(|| until - now)
    }

    /// Records a failed attempt; returns the lockout it starts, if any.
    pub fn failed(&self, ip: IpAddr, user: &str, now: Instant) -> Option<Duration> {
        let mut entries = self.lock();
        if entries.len() > SWEEP_ABOVE {
            entries.retain(|_, e| now.saturating_duration_since(e.last_failure) < FORGET_AFTER);
        }
        let entry = entries.entry((ip, user.to_owned())).or_insert(Entry {
            failures: 0,
            last_failure: now,
            locked_until: None,
        });
        if now.saturating_duration_since(entry.last_failure) >= FORGET_AFTER {
            entry.failures = 0;
        }
        entry.failures = entry.failures.saturating_add(1);
        entry.last_failure = now;
        let delay = delay_after(entry.failures);
        entry.locked_until = delay.map(|d| now + d);
        delay
    }

    /// A successful login clears the pair.
    pub fn succeeded(&self, ip: IpAddr, user: &str) {
        self.lock().remove(&(ip, user.to_owned()));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(IpAddr, String), Entry>> {
        // A panic while holding this lock cannot leave the map inconsistent; keep serving.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The lockout after the `failures`-th consecutive failure.
fn delay_after(failures: u32) -> Option<Duration> {
    let over = failures.checked_sub(FREE_FAILURES)?;
    let secs = 1u64.checked_shl(over.min(16)).unwrap_or(u64::MAX);
    Some(Duration::from_secs(secs).min(MAX_DELAY))
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn delays_double_and_cap() {
        assert_eq!(delay_after(1), None);
        assert_eq!(delay_after(2), None);
        assert_eq!(delay_after(3), Some(Duration::from_secs(1)));
        assert_eq!(delay_after(4), Some(Duration::from_secs(2)));
        assert_eq!(delay_after(5), Some(Duration::from_secs(4)));
        assert_eq!(delay_after(9), Some(Duration::from_secs(60)));
        assert_eq!(delay_after(u32::MAX), Some(MAX_DELAY));
    }

    #[test]
    fn locks_after_three_failures_per_pair() {
        let l = AuthLimiter::new();
        let t0 = Instant::now();
        assert_eq!(l.failed(IP, "a", t0), None);
        assert_eq!(l.failed(IP, "a", t0), None);
        assert!(l.locked(IP, "a", t0).is_none());
        assert_eq!(l.failed(IP, "a", t0), Some(Duration::from_secs(1)));
        assert!(l.locked(IP, "a", t0).is_some());
        assert!(l.locked(IP, "b", t0).is_none(), "other user unaffected");
        let t1 = t0 + Duration::from_millis(1100);
        assert!(l.locked(IP, "a", t1).is_none(), "lock expires");
        assert_eq!(l.failed(IP, "a", t1), Some(Duration::from_secs(2)));
        l.succeeded(IP, "a");
        assert!(l.locked(IP, "a", t1).is_none());
        assert_eq!(l.failed(IP, "a", t1), None);
    }

    #[test]
    fn quiet_pairs_are_forgotten() {
        let l = AuthLimiter::new();
        let t0 = Instant::now();
        for _ in 0..3 {
            l.failed(IP, "a", t0);
        }
        let later = t0 + FORGET_AFTER;
        assert_eq!(l.failed(IP, "a", later), None);
    }
}
