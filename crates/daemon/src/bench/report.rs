//! Summaries (median, p95) and the two outputs: a text table and one JSON object.

use serde_json::{json, Value};

/// Median and p95 (nearest rank) of a sample.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub p95: f64,
    pub min: f64,
    pub max: f64,
}

pub fn summarize(xs: &[f64]) -> Summary {
    let mut v: Vec<f64> = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return Summary {
            n,
            median: f64::NAN,
            p95: f64::NAN,
            min: f64::NAN,
            max: f64::NAN,
        };
    }
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    let rank = ((0.95 * n as f64).ceil() as usize).clamp(1, n);
    Summary {
        n,
        median,
        p95: v[rank - 1],
        min: v[0],
        max: v[n - 1],
    }
}

/// One table row: the sandboxd measurement against its runsc baseline.
pub struct Row {
    pub key: &'static str,
    pub label: &'static str,
    pub unit: &'static str,
    pub sandboxd: Summary,
    pub runsc_label: &'static str,
    pub runsc: Summary,
}

impl Row {
    pub fn ratio(&self) -> f64 {
        self.sandboxd.median / self.runsc.median
    }
}

fn num(x: f64) -> Value {
    if x.is_finite() {
        json!((x * 1000.0).round() / 1000.0)
    } else {
        Value::Null
    }
}

fn summary_json(s: &Summary) -> Value {
    json!({"n": s.n, "median": num(s.median), "p95": num(s.p95), "min": num(s.min), "max": num(s.max)})
}

pub fn row_json(r: &Row) -> Value {
    json!({
        "metric": r.key,
        "label": r.label,
        "unit": r.unit,
        "sandboxd": summary_json(&r.sandboxd),
        "runsc_baseline": r.runsc_label,
        "runsc": summary_json(&r.runsc),
        "ratio_sandboxd_over_runsc": num(r.ratio()),
    })
}

fn fmt(x: f64) -> String {
    if !x.is_finite() {
        "-".into()
    } else if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// A Markdown table (it also reads well as plain text).
pub fn table(rows: &[Row]) -> String {
    let mut lines = vec![
        "| metric | n | sandboxd median | p95 | runsc median | p95 | ratio (sandboxd/runsc) |"
            .to_string(),
        "|---|---|---|---|---|---|---|".to_string(),
    ];
    for r in rows {
        let n = if r.sandboxd.n == r.runsc.n {
            r.sandboxd.n.to_string()
        } else {
            format!("{}/{}", r.sandboxd.n, r.runsc.n)
        };
        lines.push(format!(
            "| {} ({}) | {} | {} | {} | {} | {} | {:.2} |",
            r.label,
            r.unit,
            n,
            fmt(r.sandboxd.median),
            fmt(r.sandboxd.p95),
            fmt(r.runsc.median),
            fmt(r.runsc.p95),
            r.ratio()
        ));
    }
    lines.join("\n")
}

/// One project target and whether the run met it.
pub struct Target {
    pub key: &'static str,
    pub text: String,
    pub value: String,
    pub met: bool,
}

pub fn targets_text(ts: &[Target]) -> String {
    ts.iter()
        .map(|t| {
            format!(
                "{} {}: {}",
                if t.met { "MET   " } else { "MISSED" },
                t.text,
                t.value
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn targets_json(ts: &[Target]) -> Value {
    Value::Array(
        ts.iter()
            .map(|t| json!({"target": t.key, "text": t.text, "measured": t.value, "met": t.met}))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_p95() {
        let s = summarize(&[5.0, 1.0, 3.0, 2.0, 4.0]);
        assert_eq!(s.median, 3.0);
        assert_eq!(s.p95, 5.0);
        let xs: Vec<f64> = (1..=20).map(f64::from).collect();
        let s = summarize(&xs);
        assert_eq!(s.median, 10.5);
        assert_eq!(s.p95, 19.0);
        assert_eq!(s.n, 20);
        assert!(summarize(&[]).median.is_nan());
    }
}
