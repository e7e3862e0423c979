//! Query windows over the raw samples: `step` as a duration, clamped to what the data can
//! answer, and downsampling of raw rows to one point per step-aligned bucket.

use crate::catalogue::{Agg, Metric, Sample};

/// Most points one series carries; a wider window gets a coarser step.
pub const MAX_POINTS: u64 = 1000;
/// The coarsest step a query gets (unless the window needs coarser for `MAX_POINTS`).
pub const MAX_STEP_SECS: u64 = 86_400;
/// The step when the query names none.
pub const DEFAULT_STEP_SECS: u64 = 60;

/// Parses a duration like `60s`, `5m`, `1h30m`, `1d`, `500ms` or a bare number of seconds.
/// Returns whole seconds (sub-second parts round up); zero and negatives are errors.
pub fn parse_step(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("must be a duration such as 60s or 5m".into());
    }
    if let Ok(n) = s.parse::<u64>() {
        return if n == 0 {
            Err("must be positive".into())
        } else {
            Ok(n)
        };
    }
    let mut total_ms: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return Err("must be a duration such as 60s or 5m".into());
        }
        let n: u128 = rest[..digits]
            .parse()
            .map_err(|_| "number too large".to_string())?;
        rest = &rest[digits..];
        let unit_len = rest.chars().take_while(|c| c.is_ascii_alphabetic()).count();
        let ms_per = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => return Err("every number needs a unit (ms, s, m, h, d)".into()),
            u => return Err(format!("unknown unit {u:?} (use ms, s, m, h, d)")),
        };
        rest = &rest[unit_len..];
        total_ms = total_ms
            .checked_add(n.checked_mul(ms_per).ok_or("number too large")?)
            .ok_or("number too large")?;
    }
    if total_ms == 0 {
        return Err("must be positive".into());
    }
    u64::try_from(total_ms.div_ceil(1000)).map_err(|_| "number too large".into())
}

/// Renders a step the way the response reports it (`60s`).
pub fn format_step(secs: u64) -> String {
    format!("{secs}s")
}

/// The step a query over `range_secs` really gets: at least the sampling interval, coarse
/// enough for at most [`MAX_POINTS`] buckets, at most [`MAX_STEP_SECS`] otherwise.
pub fn clamp_step(requested: u64, range_secs: u64, min_step: u64) -> u64 {
    let lo = min_step.max(1).max(range_secs.div_ceil(MAX_POINTS));
    requested.clamp(lo, lo.max(MAX_STEP_SECS))
}

/// One series of a response.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub metric: Metric,
    /// `[unix_seconds, value]`, oldest first; a bucket without samples has no point.
    pub points: Vec<[f64; 2]>,
}

/// Downsamples `rows` (oldest first, unix ms) to buckets of `step` seconds aligned to the
/// epoch, keeping rows in `[from_s, to_s]`. Every catalogue metric gets a series, empty if it
/// had no samples. A point is stamped with its bucket's start.
pub fn downsample(rows: &[(i64, Sample)], from_s: i64, to_s: i64, step: u64) -> Vec<Series> {
    let step = step.max(1) as i64;
    Metric::ALL
        .iter()
        .map(|&m| {
            let i = m as usize;
            let mut points: Vec<[f64; 2]> = Vec::new();
            // Current bucket: (start, sum, count, last).
            let mut cur: Option<(i64, f64, u32, f64)> = None;
            let flush = |c: (i64, f64, u32, f64), pts: &mut Vec<[f64; 2]>| {
                let v = match m.agg() {
                    Agg::Avg => c.1 / f64::from(c.2),
                    Agg::Last => c.3,
                };
                pts.push([c.0 as f64, v]);
            };
            for (ts_ms, s) in rows {
                let t = ts_ms.div_euclid(1000);
                if t < from_s || t > to_s {
                    continue;
                }
                let Some(v) = s[i] else { continue };
                let b = t.div_euclid(step) * step;
                match &mut cur {
                    Some(c) if c.0 == b => {
                        c.1 += v;
                        c.2 += 1;
                        c.3 = v;
                    }
                    _ => {
                        if let Some(c) = cur.take() {
                            flush(c, &mut points);
                        }
                        cur = Some((b, v, 1, v));
                    }
                }
            }
            if let Some(c) = cur {
                flush(c, &mut points);
            }
            Series { metric: m, points }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        assert_eq!(parse_step("60s"), Ok(60));
        assert_eq!(parse_step("5m"), Ok(300));
        assert_eq!(parse_step("1h30m"), Ok(5400));
        assert_eq!(parse_step("1d"), Ok(86_400));
        assert_eq!(parse_step("90"), Ok(90));
        assert_eq!(parse_step("1500ms"), Ok(2));
        assert_eq!(parse_step("1ms"), Ok(1));
        for bad in [
            "",
            "0",
            "0s",
            "-5s",
            "s",
            "5x",
            "1.5s",
            "5 m",
            "1h5",
            "99999999999999999999999h",
        ] {
            assert!(parse_step(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn clamps_steps() {
        // Finer than sampling: raised to the interval.
        assert_eq!(clamp_step(1, 3600, 10), 10);
        // One hour at 60 s: as asked.
        assert_eq!(clamp_step(60, 3600, 10), 60);
        // 30 days at 10 s would be 259200 points: raised to fit MAX_POINTS.
        assert_eq!(clamp_step(10, 30 * 86_400, 10), 2592);
        // Coarser than a day: lowered.
        assert_eq!(clamp_step(7 * 86_400, 3600, 10), MAX_STEP_SECS);
    }

    fn rows(vals: &[(i64, f64)]) -> Vec<(i64, Sample)> {
        vals.iter()
            .map(|&(t, v)| {
                let mut s: Sample = [None; Metric::COUNT];
                s[Metric::CpuUsageCores as usize] = Some(v);
                s[Metric::NetworkRxBytes as usize] = Some(v * 100.0);
                (t, s)
            })
            .collect()
    }

    #[test]
    fn downsamples_by_metric_aggregation() {
        let r = rows(&[(1_000, 1.0), (5_000, 3.0), (10_000, 5.0), (25_000, 7.0)]);
        let out = downsample(&r, 0, 100, 10);
        assert_eq!(out.len(), Metric::COUNT);
        let cpu = &out[Metric::CpuUsageCores as usize];
        assert_eq!(cpu.points, vec![[0.0, 2.0], [10.0, 5.0], [20.0, 7.0]]);
        let rx = &out[Metric::NetworkRxBytes as usize];
        assert_eq!(rx.points, vec![[0.0, 300.0], [10.0, 500.0], [20.0, 700.0]]);
        assert!(out[Metric::MemoryUsageBytes as usize].points.is_empty());
    }

    #[test]
    fn keeps_the_window() {
        let r = rows(&[(1_000, 1.0), (5_000, 3.0), (9_999, 5.0)]);
        let out = downsample(&r, 2, 8, 1);
        assert_eq!(out[0].points, vec![[5.0, 3.0]]);
        assert!(downsample(&[], 0, 10, 1)
            .iter()
            .all(|s| s.points.is_empty()));
    }
}
