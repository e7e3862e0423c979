//! `sbx metrics`: the current value and a sparkline of every series of a sandbox.

use serde_json::Value;

const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// The newest `width` values as bars scaled between their min and max (a flat series is all
/// low bars).
pub fn sparkline(values: &[f64], width: usize) -> String {
    let tail = &values[values.len().saturating_sub(width)..];
    let (lo, hi) = tail
        .iter()
        .fold((f64::MAX, f64::MIN), |(l, h), v| (l.min(*v), h.max(*v)));
    tail.iter()
        .map(|v| {
            if hi <= lo {
                BARS[0]
            } else {
                let i = ((v - lo) / (hi - lo) * (BARS.len() - 1) as f64).round() as usize;
                BARS[i.min(BARS.len() - 1)]
            }
        })
        .collect()
}

/// A value in its unit, for people.
pub fn human(metric: &str, unit: &str, v: f64) -> String {
    match unit {
        "bytes" => {
            let mut x = v;
            for u in ["B", "KiB", "MiB", "GiB", "TiB"] {
                if x.abs() < 1024.0 || u == "TiB" {
                    return if u == "B" {
                        format!("{x:.0} B")
                    } else {
                        format!("{x:.1} {u}")
                    };
                }
                x /= 1024.0;
            }
            unreachable!()
        }
        "cores" => format!("{v:.2} cores"),
        "state" if metric == "phase" => match v as i64 {
            0 => "Pending",
            1 => "Ready",
            2 => "NotReady",
            4 => "Paused",
            5 => "Pausing",
            6 => "Resuming",
            _ => "Unknown",
        }
        .to_string(),
        _ => format!("{v}"),
    }
}

/// The text view of a `SandboxMetricsResponse`.
pub fn render(resp: &Value, width: usize) -> String {
    let mut out = format!(
        "sandbox {}  from {}  to {}  step {}\n",
        resp["sandbox_id"].as_str().unwrap_or("?"),
        resp["from"].as_str().unwrap_or("?"),
        resp["to"].as_str().unwrap_or("?"),
        resp["step"].as_str().unwrap_or("?"),
    );
    let empty = Vec::new();
    for s in resp["series"].as_array().unwrap_or(&empty) {
        let metric = s["metric"].as_str().unwrap_or("?");
        let unit = s["unit"].as_str().unwrap_or("");
        let vals: Vec<f64> = s["points"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .filter_map(|p| p.get(1).and_then(Value::as_f64))
            .collect();
        let (now, spark) = match vals.last() {
            Some(v) => (human(metric, unit, *v), sparkline(&vals, width)),
            None => ("-".to_string(), "(no samples)".to_string()),
        };
        out.push_str(&format!("{metric:<20} {now:>14}  {spark}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sparklines_scale_and_keep_the_tail() {
        assert_eq!(
            sparkline(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], 8),
            "▁▂▃▄▅▆▇█"
        );
        assert_eq!(sparkline(&[5.0, 5.0, 5.0], 8), "▁▁▁");
        assert_eq!(sparkline(&[100.0, 0.0, 1.0], 2), "▁█");
        assert_eq!(sparkline(&[], 8), "");
    }

    #[test]
    fn humanizes_units() {
        assert_eq!(human("memory_usage_bytes", "bytes", 512.0), "512 B");
        assert_eq!(
            human("memory_usage_bytes", "bytes", 3.5 * 1048576.0),
            "3.5 MiB"
        );
        assert_eq!(human("cpu_usage_cores", "cores", 0.987), "0.99 cores");
        assert_eq!(human("phase", "state", 4.0), "Paused");
        assert_eq!(human("restarts", "count", 2.0), "2");
    }

    #[test]
    fn renders_each_series() {
        let resp = json!({"sandbox_id": "abc", "from": "f", "to": "t", "step": "60s", "series": [
            {"metric": "cpu_usage_cores", "unit": "cores", "points": [[0, 0.0], [60, 1.0]]},
            {"metric": "pids", "unit": "count", "points": []},
        ]});
        let t = render(&resp, 40);
        assert!(
            t.starts_with("sandbox abc  from f  to t  step 60s\n"),
            "{t}"
        );
        assert!(
            t.contains("cpu_usage_cores          1.00 cores  ▁█\n"),
            "{t}"
        );
        assert!(
            t.contains("pids                              -  (no samples)\n"),
            "{t}"
        );
    }
}
