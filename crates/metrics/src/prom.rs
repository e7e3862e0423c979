//! A small Prometheus registry: counters, gauges and histograms with labels, rendered in the
//! text exposition format (version 0.0.4). Label sets are the callers' to keep bounded (route
//! templates, not raw paths).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

/// Upper bounds (seconds) of latency histograms.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

type Labels = Vec<(String, String)>;

#[derive(Debug, Clone)]
enum Value {
    Counter(f64),
    Gauge(f64),
    Histogram {
        /// Per bucket (not cumulative); the last is +Inf.
        counts: Vec<u64>,
        sum: f64,
        count: u64,
    },
}

#[derive(Debug)]
struct Family {
    help: &'static str,
    kind: &'static str,
    series: BTreeMap<Labels, Value>,
}

#[derive(Default)]
pub struct Registry {
    families: Mutex<BTreeMap<&'static str, Family>>,
}

fn labels(l: &[(&str, &str)]) -> Labels {
    l.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Registry {
    fn with(
        &self,
        name: &'static str,
        help: &'static str,
        kind: &'static str,
        f: impl FnOnce(&mut Family),
    ) {
        let mut fams = self.families.lock().unwrap_or_else(|p| p.into_inner());
        let fam = fams.entry(name).or_insert_with(|| Family {
            help,
            kind,
            series: BTreeMap::new(),
        });
        f(fam);
    }

    /// Adds `by` to a counter.
    pub fn inc(&self, name: &'static str, help: &'static str, l: &[(&str, &str)], by: f64) {
        self.with(name, help, "counter", |f| {
            if let Value::Counter(c) = f.series.entry(labels(l)).or_insert(Value::Counter(0.0)) {
                *c += by;
            }
        });
    }

    /// Records one observation in a latency histogram ([`LATENCY_BUCKETS`]).
    pub fn observe(&self, name: &'static str, help: &'static str, l: &[(&str, &str)], v: f64) {
        self.with(name, help, "histogram", |f| {
            let e = f.series.entry(labels(l)).or_insert(Value::Histogram {
                counts: vec![0; LATENCY_BUCKETS.len() + 1],
                sum: 0.0,
                count: 0,
            });
            if let Value::Histogram { counts, sum, count } = e {
                let i = LATENCY_BUCKETS
                    .iter()
                    .position(|b| v <= *b)
                    .unwrap_or(LATENCY_BUCKETS.len());
                counts[i] += 1;
                *sum += v;
                *count += 1;
            }
        });
    }

    /// Replaces every series of a gauge family (values read at scrape time).
    pub fn set_gauges(
        &self,
        name: &'static str,
        help: &'static str,
        values: &[(&[(&str, &str)], f64)],
    ) {
        self.with(name, help, "gauge", |f| {
            f.series = values
                .iter()
                .map(|(l, v)| (labels(l), Value::Gauge(*v)))
                .collect();
        });
    }

    /// The whole registry in the text exposition format.
    pub fn render(&self) -> String {
        let fams = self.families.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        for (name, f) in fams.iter() {
            let _ = writeln!(out, "# HELP {name} {}", f.help);
            let _ = writeln!(out, "# TYPE {name} {}", f.kind);
            for (l, v) in &f.series {
                match v {
                    Value::Counter(x) | Value::Gauge(x) => {
                        let _ = writeln!(out, "{name}{} {}", fmt_labels(l, None), num(*x));
                    }
                    Value::Histogram { counts, sum, count } => {
                        let mut cum = 0;
                        for (i, c) in counts.iter().enumerate() {
                            cum += c;
                            let le = LATENCY_BUCKETS
                                .get(i)
                                .map_or("+Inf".to_string(), |b| num(*b));
                            let _ =
                                writeln!(out, "{name}_bucket{} {cum}", fmt_labels(l, Some(&le)));
                        }
                        let _ = writeln!(out, "{name}_sum{} {}", fmt_labels(l, None), num(*sum));
                        let _ = writeln!(out, "{name}_count{} {count}", fmt_labels(l, None));
                    }
                }
            }
        }
        out
    }
}

fn num(x: f64) -> String {
    if x.is_finite() && x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn fmt_labels(l: &Labels, le: Option<&str>) -> String {
    let mut parts: Vec<String> = l
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges() {
        let r = Registry::default();
        r.inc(
            "req_total",
            "Requests.",
            &[("route", "/a"), ("status", "200")],
            1.0,
        );
        r.inc(
            "req_total",
            "Requests.",
            &[("route", "/a"), ("status", "200")],
            1.0,
        );
        r.inc(
            "req_total",
            "Requests.",
            &[("route", "/\"b\"\n"), ("status", "404")],
            1.0,
        );
        r.observe("lat_seconds", "Latency.", &[("route", "/a")], 0.003);
        r.observe("lat_seconds", "Latency.", &[("route", "/a")], 100.0);
        r.set_gauges("up", "Up.", &[(&[("phase", "Ready")], 2.0), (&[], 0.5)]);
        let t = r.render();
        assert!(t.contains("# TYPE req_total counter\n"), "{t}");
        assert!(
            t.contains("req_total{route=\"/a\",status=\"200\"} 2\n"),
            "{t}"
        );
        assert!(
            t.contains("req_total{route=\"/\\\"b\\\"\\n\",status=\"404\"} 1\n"),
            "{t}"
        );
        assert!(
            t.contains("lat_seconds_bucket{route=\"/a\",le=\"0.001\"} 0\n"),
            "{t}"
        );
        assert!(
            t.contains("lat_seconds_bucket{route=\"/a\",le=\"0.005\"} 1\n"),
            "{t}"
        );
        assert!(
            t.contains("lat_seconds_bucket{route=\"/a\",le=\"60\"} 1\n"),
            "{t}"
        );
        assert!(
            t.contains("lat_seconds_bucket{route=\"/a\",le=\"+Inf\"} 2\n"),
            "{t}"
        );
        assert!(t.contains("lat_seconds_sum{route=\"/a\"} 100.003\n"), "{t}");
        assert!(t.contains("lat_seconds_count{route=\"/a\"} 2\n"), "{t}");
        assert!(
            t.contains("up{phase=\"Ready\"} 2\nup 0.5\n")
                || t.contains("up 0.5\nup{phase=\"Ready\"} 2\n"),
            "{t}"
        );
        // Gauges are replaced, not accumulated.
        r.set_gauges("up", "Up.", &[(&[("phase", "Paused")], 1.0)]);
        let t = r.render();
        assert!(!t.contains("phase=\"Ready\""), "{t}");
        assert!(t.contains("up{phase=\"Paused\"} 1\n"), "{t}");
    }
}
