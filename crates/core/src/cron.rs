//! Five-field cron expressions (`minute hour day-of-month month day-of-week`) for scheduled
//! snapshots. Each field takes `*`, numbers, ranges `a-b`, lists `a,b` and steps `*/n`, `a-b/n`.
//! Day-of-week is 0–7 (0 and 7 are Sunday). As in Vixie cron, when both day fields are
//! restricted a time matches if either does.

use chrono::{DateTime, Datelike, Duration, Timelike, Utc};

/// A parsed schedule: one bit per allowed value of each field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    days_restricted: bool,
    weekdays_restricted: bool,
}

/// What is wrong with an expression, for a 400 naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CronError(String);

fn field(text: &str, name: &str, lo: u32, hi: u32) -> Result<(u64, bool), CronError> {
    let bad = |why: &str| CronError(format!("{name} field {text:?}: {why}"));
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s.parse().map_err(|_| bad("step is not a number"))?;
                if step == 0 {
                    return Err(bad("step must be at least 1"));
                }
                (r, step)
            }
            None => (part, 1),
        };
        let (a, b) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            let a: u32 = a.parse().map_err(|_| bad("not a number"))?;
            let b: u32 = b.parse().map_err(|_| bad("not a number"))?;
            (a, b)
        } else {
            let a: u32 = range.parse().map_err(|_| bad("not a number"))?;
            // `5/15` means 5, 20, 35, 50 as in Vixie cron.
            (a, if part.contains('/') { hi } else { a })
        };
        if a < lo || b > hi || a > b {
            return Err(bad(&format!("values must be within {lo}-{hi}")));
        }
        let mut v = a;
        while v <= b {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, text != "*"))
}

impl Schedule {
    pub fn parse(expr: &str) -> Result<Schedule, CronError> {
        let f: Vec<&str> = expr.split_whitespace().collect();
        if f.len() != 5 {
            return Err(CronError(format!(
                "must have 5 fields (minute hour day-of-month month day-of-week), got {}",
                f.len()
            )));
        }
        let (minutes, _) = field(f[0], "minute", 0, 59)?;
        let (hours, _) = field(f[1], "hour", 0, 23)?;
        let (days, days_restricted) = field(f[2], "day-of-month", 1, 31)?;
        let (months, _) = field(f[3], "month", 1, 12)?;
        let (mut weekdays, weekdays_restricted) = field(f[4], "day-of-week", 0, 7)?;
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1;
        }
        Ok(Schedule {
            minutes,
            hours,
            days,
            months,
            weekdays,
            days_restricted,
            weekdays_restricted,
        })
    }

    /// Whether the minute containing `t` is a firing time.
    pub fn matches(&self, t: DateTime<Utc>) -> bool {
        let has = |bits: u64, v: u32| bits & (1 << v) != 0;
        let dom = has(self.days, t.day());
        let dow = has(self.weekdays, t.weekday().num_days_from_sunday());
        let day = match (self.days_restricted, self.weekdays_restricted) {
            (true, true) => dom || dow,
            (true, false) => dom,
            (false, true) => dow,
            (false, false) => true,
        };
        has(self.minutes, t.minute())
            && has(self.hours, t.hour())
            && has(self.months, t.month())
            && day
    }

    /// Whether a firing minute starts in `(after, until]`. A scheduler that checks every few
    /// seconds with `after` = its previous check fires at most once per check, so missed runs
    /// are skipped, not queued.
    pub fn fires_between(&self, after: DateTime<Utc>, until: DateTime<Utc>) -> bool {
        let start_of = |t: DateTime<Utc>| {
            t.with_second(0)
                .and_then(|t| t.with_nanosecond(0))
                .expect("valid time")
        };
        // The first minute boundary strictly after `after`.
        let mut m = start_of(after) + Duration::minutes(1);
        // Bound the walk: a day of minutes is plenty for a check loop of seconds.
        let mut steps = 0;
        while m <= until && steps < 24 * 60 {
            if self.matches(m) {
                return true;
            }
            m += Duration::minutes(1);
            steps += 1;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    #[test]
    fn every_two_hours_on_the_hour() {
        let s = Schedule::parse("0 */2 * * *").unwrap();
        assert!(s.matches(at(2026, 11, 30, 10, 0, 0)));
        assert!(!s.matches(at(2026, 11, 30, 11, 0, 0)));
        assert!(!s.matches(at(2026, 11, 30, 10, 1, 0)));
    }

    #[test]
    fn lists_ranges_steps_and_sunday_as_7() {
        let s = Schedule::parse("5,10-12 9-17/4 * 1-6 7").unwrap();
        // 2026-11-29 is a Sunday, but November is outside 1-6.
        assert!(!s.matches(at(2026, 11, 29, 9, 5, 0)));
        // 2026-03-01 is a Sunday.
        assert!(s.matches(at(2026, 3, 1, 13, 11, 0)));
        assert!(!s.matches(at(2026, 3, 1, 14, 11, 0)));
        assert!(!s.matches(at(2026, 3, 2, 13, 11, 0)));
    }

    #[test]
    fn restricted_day_fields_match_either() {
        // The 1st of the month, or any Monday.
        let s = Schedule::parse("0 0 1 * 1").unwrap();
        assert!(s.matches(at(2026, 12, 1, 0, 0, 0))); // a Tuesday, but the 1st
        assert!(s.matches(at(2026, 11, 30, 0, 0, 0))); // a Monday
        assert!(!s.matches(at(2026, 12, 2, 0, 0, 0)));
    }

    #[test]
    fn bad_expressions_say_which_field() {
        for (e, want) in [
            ("* * * *", "5 fields"),
            ("60 * * * *", "minute"),
            ("* 24 * * *", "hour"),
            ("* * 0 * *", "day-of-month"),
            ("* * * 13 *", "month"),
            ("* * * * 8", "day-of-week"),
            ("*/0 * * * *", "step"),
            ("a * * * *", "minute"),
            ("5-1 * * * *", "minute"),
            ("@hourly", "5 fields"),
        ] {
            let err = Schedule::parse(e).unwrap_err().to_string();
            assert!(err.contains(want), "{e}: {err}");
        }
    }

    #[test]
    fn fires_once_per_window_and_skips_missed_runs() {
        let s = Schedule::parse("*/5 * * * *").unwrap();
        assert!(s.fires_between(at(2026, 1, 1, 0, 4, 50), at(2026, 1, 1, 0, 5, 1)));
        assert!(!s.fires_between(at(2026, 1, 1, 0, 5, 1), at(2026, 1, 1, 0, 5, 59)));
        // The boundary itself belongs to the window that ends on it, not the next one.
        assert!(s.fires_between(at(2026, 1, 1, 0, 9, 0), at(2026, 1, 1, 0, 10, 0)));
        assert!(!s.fires_between(at(2026, 1, 1, 0, 10, 0), at(2026, 1, 1, 0, 10, 30)));
        // A long gap (the daemon was down) is still one firing.
        assert!(s.fires_between(at(2026, 1, 1, 0, 0, 30), at(2026, 1, 1, 3, 0, 30)));
    }
}
