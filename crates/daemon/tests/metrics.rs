//! Per-sandbox health metrics (seed 001 `getSandboxMetrics`) and the platform's Prometheus
//! endpoint, against the real daemon sampling real gVisor sandboxes every second.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{call, Daemon};
use serde_json::{json, Value};

/// A loopback port free right now (for `--prometheus-listen`).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(prom_port: u16) -> Daemon {
    Daemon::start_with(&[
        "--metrics-interval-secs=1",
        &format!("--prometheus-listen=127.0.0.1:{prom_port}"),
    ])
}

fn metrics_url(d: &Daemon, id: &str, query: &str) -> String {
    format!(
        "{}/{id}/metrics{query}",
        d.sandboxes_url("default", "default")
    )
}

/// The points of one series, by metric key.
fn points(resp: &Value, metric: &str) -> Vec<(f64, f64)> {
    let s = resp["series"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["metric"] == metric)
        .unwrap_or_else(|| panic!("no series {metric} in {resp}"));
    s["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_f64().unwrap(), p[1].as_f64().unwrap()))
        .collect()
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn rfc3339(unix: f64) -> String {
    chrono::DateTime::from_timestamp(unix as i64, 0)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Per-second series of the last `secs` seconds.
fn recent(d: &Daemon, id: &str, secs: u64) -> Value {
    let now = unix_now();
    let q = format!(
        "?from={}&to={}&step=1s",
        rfc3339(now - secs as f64),
        rfc3339(now + 1.0)
    );
    let r = call(&d.key, "GET", &metrics_url(d, id, &q), None);
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(r.body["step"], "1s");
    r.body
}

fn max_of(p: &[(f64, f64)]) -> f64 {
    p.iter().map(|x| x.1).fold(f64::MIN, f64::max)
}

/// Waits until `pred` holds on the last `secs` seconds of series.
fn wait_for(d: &Daemon, id: &str, secs: u64, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = recent(d, id, secs);
        if pred(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what} never seen: {v}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn series_show_a_cpu_burner_a_memory_allocator_disk_network_and_lifecycle() {
    let prom = free_port();
    let d = start(prom);
    let sb = d.create(
        json!({"name": "burner", "sandbox_template_id": "sb-debian-12-python",
        "resources": {"cpu": 1, "memory_gb": 1}}),
    );
    let id = sb["id"].as_str().unwrap();

    // Idle baseline.
    std::thread::sleep(Duration::from_secs(3));
    let idle = recent(&d, id, 3);
    let base_mem = max_of(&points(&idle, "memory_usage_bytes"));
    assert!(base_mem > 0.0, "{idle}");
    let idle_cpu = max_of(&points(&idle, "cpu_usage_cores"));
    assert!(idle_cpu < 0.5, "idle sandbox uses {idle_cpu} cores");

    // A CPU burner for 6 s: the per-second series peaks near one core (its quota). On a
    // loaded host the burner may get less; it reports the share it got (CPU time / wall time,
    // as gVisor accounts it), and the series must agree with that.
    let (exit, out, err) = d.exec(
        id,
        "python3",
        &[
            "-c",
            "import time\nt, c = time.time(), time.process_time()\n\
             while time.time() - t < 6: pass\n\
             print((time.process_time() - c) / (time.time() - t))",
        ],
    );
    assert_eq!(exit["exit_code"], 0, "{err}");
    let got: f64 = out.trim().parse().unwrap();
    let want = got.min(1.0) * 0.7;
    let v = wait_for(&d, id, 8, "cpu near 1", |v| {
        points(v, "cpu_usage_cores")
            .iter()
            .filter(|p| p.1 >= want)
            .count()
            >= 3
    });
    let cpu = points(&v, "cpu_usage_cores");
    let peak = max_of(&cpu);
    eprintln!("cpu_usage_cores over the burn (burner measured {got:.2} cores): {cpu:?}");
    assert!(got > 0.3, "the burner hardly ran ({got}); host too loaded");
    assert!(peak <= 1.3, "quota is 1 core, series says {cpu:?}");

    // A 300 MiB allocation held for 4 s: memory grows past it.
    let alloc = 300u64 << 20;
    let (exit, _, err) = d.exec(
        id,
        "python3",
        &[
            "-c",
            "import time\nb = b'x' * (300 << 20)\ntime.sleep(4)\nprint(len(b))",
        ],
    );
    assert_eq!(exit["exit_code"], 0, "{err}");
    let v = wait_for(&d, id, 8, "memory growth", |v| {
        max_of(&points(v, "memory_usage_bytes")) >= base_mem + alloc as f64
    });
    let mem = points(&v, "memory_usage_bytes");
    eprintln!("memory_usage_bytes: base {base_mem}, during {mem:?}");
    let limit = max_of(&points(&v, "memory_limit_bytes"));
    assert!(limit >= (1u64 << 30) as f64, "memory limit {limit}");
    assert!(max_of(&points(&v, "pids")) >= 1.0);

    // 64 MiB written in the sandbox shows in the layer's qgroup after btrfs commits.
    let (exit, _, _) = d.exec(
        id,
        "dd if=/dev/urandom of=/workspace/blob bs=1M count=64 2>/dev/null && sync",
        &[],
    );
    assert_eq!(exit["exit_code"], 0);
    let st = Command::new("btrfs")
        .args(["filesystem", "sync"])
        .arg(d.data_dir.join("vol"))
        .status()
        .unwrap();
    assert!(st.success());
    let v = wait_for(&d, id, 3, "disk usage", |v| {
        max_of(&points(v, "disk_usage_bytes")) >= (64u64 << 20) as f64
    });
    assert_eq!(
        max_of(&points(&v, "disk_limit_bytes")),
        (10u64 << 30) as f64,
        "disk_gb 10"
    );
    // The daemon talks to the agent over the veth: both directions counted.
    assert!(max_of(&points(&v, "network_rx_bytes")) > 0.0, "{v}");
    assert!(max_of(&points(&v, "network_tx_bytes")) > 0.0, "{v}");
    assert_eq!(max_of(&points(&v, "phase")), 1.0, "Ready");
    assert_eq!(max_of(&points(&v, "restarts")), 0.0);
    assert_eq!(max_of(&points(&v, "oom_kills")), 0.0);

    // A process over the sandbox's memory: the agent's watchdog kills it (the sandbox lives
    // on), and oom_kills counts it.
    let (exit, _, err) = d.exec(
        id,
        "python3",
        &[
            "-c",
            "b = bytearray(1536 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1",
        ],
    );
    assert_eq!(
        (exit["exit_code"].as_i64(), exit["oom_killed"].as_bool()),
        (Some(137), Some(true)),
        "{err}"
    );
    // The sampler asks the agent at most every 10 s.
    let v = wait_for(&d, id, 15, "the kill counted", |v| {
        points(v, "oom_kills").last().map(|p| p.1) == Some(1.0)
    });
    assert_eq!(max_of(&points(&v, "phase")), 1.0, "still Ready");

    // NeevCloud's default egress is deny-all: a connection attempt is dropped at the host and
    // counted. The address is in this daemon's test range (its egress ceiling); nothing is there.
    let target = format!("198.18.{}.9", d.octet);
    let v = wait_for(&d, id, 3, "egress denials", |v| {
        let _ = d.exec(
            id,
            "python3",
            &[
                "-c",
                "import sys, socket\ntry: socket.create_connection((sys.argv[1], 80), timeout=1)\nexcept OSError: pass",
                &target,
            ],
        );
        max_of(&points(v, "egress_denied_total")) > 0.0
    });
    assert!(max_of(&points(&v, "egress_denied_total")) > 0.0, "{v}");

    // Pause and resume: the phase series shows Paused (4) then Ready (1), restarts counts 1.
    let base = format!("{}/{id}", d.sandboxes_url("default", "default"));
    let r = call(
        &d.key,
        "POST",
        &format!("{base}/pause"),
        Some(json!({"preserve_memory": false})),
    );
    assert_eq!(r.status, 200, "{}", r.raw);
    std::thread::sleep(Duration::from_secs(3));
    let r = call(&d.key, "POST", &format!("{base}/resume"), None);
    assert_eq!(r.status, 200, "{}", r.raw);
    let v = wait_for(&d, id, 30, "restart counted", |v| {
        points(v, "restarts").last().map(|p| p.1) == Some(1.0)
            && points(v, "phase").last().map(|p| p.1) == Some(1.0)
    });
    let phases: Vec<f64> = points(&v, "phase").iter().map(|p| p.1).collect();
    assert!(phases.contains(&4.0), "no Paused sample: {phases:?}");
    // While paused there was no container: no CPU or memory points for those seconds.
    let paused_at: Vec<f64> = points(&v, "phase")
        .iter()
        .filter(|p| p.1 == 4.0)
        .map(|p| p.0)
        .collect();
    assert!(points(&v, "memory_usage_bytes")
        .iter()
        .all(|p| !paused_at.contains(&p.0)));

    // A snapshot and an in-place rollback to it: a second restart, and snapshot operations
    // on the Prometheus endpoint.
    let snap = call(
        &d.key,
        "POST",
        &format!("{base}/snapshots"),
        Some(json!({"name": "m1", "include_memory": false})),
    );
    assert_eq!(snap.status, 202, "{}", snap.raw);
    let r = call(
        &d.key,
        "POST",
        &format!("{base}/rollback"),
        Some(json!({"snapshot_id": snap.body["id"]})),
    );
    assert_eq!(r.status, 200, "{}", r.raw);
    wait_for(&d, id, 10, "second restart", |v| {
        points(v, "restarts").last().map(|p| p.1) == Some(2.0)
    });
    // Restore as a new sandbox: a snapshot operation too, though its route is plain create.
    let r = call(
        &d.key,
        "POST",
        &d.sandboxes_url("default", "default"),
        Some(json!({"name": "restored", "from_snapshot": snap.body["id"]})),
    );
    assert_eq!(r.status, 201, "{}", r.raw);
    assert_eq!(d.delete(r.body["id"].as_str().unwrap()).status, 204);

    // The platform's Prometheus endpoint saw these requests and this sandbox.
    let text = common::agent()
        .get(&format!("http://127.0.0.1:{prom}/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    let route = "/api/v1beta1/orgs/{org_id}/projects/{project_id}/sandboxes/{sandbox_id}/metrics";
    assert!(
        text.contains(&format!(
            "sandboxd_http_requests_total{{route=\"{route}\",method=\"GET\",status=\"200\"}}"
        )),
        "{text}"
    );
    assert!(
        text.contains("sandboxd_http_request_duration_seconds_bucket{route=\"/api/v1beta1/orgs/{org_id}/projects/{project_id}/sandboxes\",method=\"POST\",status=\"201\",le=\"+Inf\"} 2\n"),
        "{text}"
    );
    assert!(
        text.contains("sandboxd_sandboxes{phase=\"Ready\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("sandboxd_sandboxes{phase=\"Paused\"} 0\n"),
        "{text}"
    );
    for op in ["capture", "rollback", "restore"] {
        assert!(
            text.contains(&format!(
                "sandboxd_snapshot_operations_total{{op=\"{op}\",outcome=\"ok\"}} 1\n"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "sandboxd_snapshot_operation_duration_seconds_count{{op=\"{op}\"}} 1\n"
            )),
            "{text}"
        );
    }
    for l in [
        "sandboxd_store_bytes{store=\"meta\"}",
        "sandboxd_store_bytes{store=\"metrics\"}",
        "sandboxd_store_bytes{store=\"volume\"}",
        "sandboxd_store_bytes{store=\"snapshots\"}",
        "sandboxd_metrics_sampler_cpu_seconds_total",
        "sandboxd_metrics_sample_pass_duration_seconds_count",
        "sandboxd_metrics_sampled_sandboxes ",
    ] {
        assert!(text.contains(l), "{l} missing:\n{text}");
    }
    // No raw ids in labels: the label set stays bounded.
    assert!(!text.contains(id), "{text}");

    // Deleted: 404, and its samples go at the next prune.
    assert_eq!(d.delete(id).status, 204);
    let r = call(&d.key, "GET", &metrics_url(&d, id, ""), None);
    assert_eq!(r.status, 404, "{}", r.raw);
}

#[test]
fn metrics_requests_are_validated_scoped_and_clamped() {
    let d = start(free_port());
    let sb = d.create(json!({"name": "quiet", "sandbox_template_id": "sb-busybox"}));
    let id = sb["id"].as_str().unwrap();
    std::thread::sleep(Duration::from_secs(2));

    // Defaults: the last hour at 60 s; every catalogue series present.
    let r = call(&d.key, "GET", &metrics_url(&d, id, ""), None);
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(r.body["sandbox_id"], id);
    assert_eq!(r.body["step"], "60s");
    let from = chrono::DateTime::parse_from_rfc3339(r.body["from"].as_str().unwrap()).unwrap();
    let to = chrono::DateTime::parse_from_rfc3339(r.body["to"].as_str().unwrap()).unwrap();
    assert_eq!((to - from).num_seconds(), 3600, "{}", r.body);
    assert!(r.body["to"].as_str().unwrap().ends_with('Z'));
    let keys: Vec<&str> = r.body["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["metric"].as_str().unwrap())
        .collect();
    for k in [
        "cpu_usage_cores",
        "memory_usage_bytes",
        "memory_limit_bytes",
        "disk_usage_bytes",
        "disk_limit_bytes",
        "pids",
        "network_rx_bytes",
        "network_tx_bytes",
        "phase",
        "restarts",
        "oom_kills",
        "egress_denied_total",
    ] {
        assert!(keys.contains(&k), "{k} missing: {keys:?}");
    }
    assert!(!points(&r.body, "memory_usage_bytes").is_empty());
    for s in r.body["series"].as_array().unwrap() {
        assert!(s["unit"].is_string(), "{s}");
    }

    // Step clamped: never finer than the sampling interval, never more than 1000 points.
    let r = call(
        &d.key,
        "GET",
        &metrics_url(
            &d,
            id,
            "?from=2026-01-01T00:00:00Z&to=2026-01-01T00:10:00Z&step=1ms",
        ),
        None,
    );
    assert_eq!((r.status, r.body["step"].as_str()), (200, Some("1s")));
    // The default hour at 1 s would be 3600 points: 4 s.
    let r = call(&d.key, "GET", &metrics_url(&d, id, "?step=1s"), None);
    assert_eq!((r.status, r.body["step"].as_str()), (200, Some("4s")));
    let r = call(
        &d.key,
        "GET",
        &metrics_url(
            &d,
            id,
            "?from=2026-01-01T00:00:00Z&to=2026-01-31T00:00:00Z&step=1s",
        ),
        None,
    );
    assert_eq!((r.status, r.body["step"].as_str()), (200, Some("2592s")));
    // A window with no samples: every series empty.
    assert!(
        r.body["series"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["points"] == json!([])),
        "{}",
        r.body
    );
    // Offsets are accepted ('+' percent-encoded) and echoed in UTC.
    let r = call(
        &d.key,
        "GET",
        &metrics_url(
            &d,
            id,
            "?from=2026-01-01T01:00:00%2B01:00&to=2026-01-01T00:30:00Z&step=5m",
        ),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(r.body["from"], "2026-01-01T00:00:00.000Z");
    assert_eq!(r.body["step"], "300s");

    // Bad and inverted ranges: 400 naming the parameter, in the API's error shape.
    for (q, field) in [
        ("?from=yesterday", "from"),
        ("?to=2026-13-01T00:00:00Z", "to"),
        ("?step=fast", "step"),
        ("?step=0s", "step"),
        ("?step=-5m", "step"),
        ("?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z", "from"),
        ("?from=2026-01-01T00:00:00Z&to=2026-01-01T00:00:00Z", "from"),
    ] {
        let r = call(&d.key, "GET", &metrics_url(&d, id, q), None);
        assert_eq!(r.status, 400, "{q}: {}", r.raw);
        assert_eq!(r.body["code"], "validation_error", "{q}");
        assert_eq!(r.body["field"], field, "{q}: {}", r.raw);
        assert!(r.body["error"].is_string(), "{q}");
    }

    // Unknown sandbox: 404. Another org: 403. No key: 401.
    let r = call(
        &d.key,
        "GET",
        &metrics_url(&d, "00000000-0000-4000-8000-000000000000", ""),
        None,
    );
    assert_eq!(r.status, 404, "{}", r.raw);
    let other = d.create_key("acme", None);
    let r = call(&other, "GET", &metrics_url(&d, id, ""), None);
    assert_eq!(r.status, 403, "{}", r.raw);
    let r = call(
        &other,
        "GET",
        &format!("{}/{id}/metrics", d.sandboxes_url("acme", "default")),
        None,
    );
    assert_eq!(
        r.status, 404,
        "another org's sandbox is not visible: {}",
        r.raw
    );
    let r = common::call_raw(None, "GET", &metrics_url(&d, id, ""), b"");
    assert_eq!(r.status, 401, "{}", r.raw);
}

#[test]
fn samples_and_lifecycle_counts_survive_a_daemon_restart() {
    let mut d = start(free_port());
    let sb = d.create(json!({"name": "steady", "sandbox_template_id": "sb-busybox"}));
    let id = sb["id"].as_str().unwrap().to_string();
    let base = format!("{}/{id}", d.sandboxes_url("default", "default"));
    let r = call(
        &d.key,
        "POST",
        &format!("{base}/pause"),
        Some(json!({"preserve_memory": false})),
    );
    assert_eq!(r.status, 200, "{}", r.raw);
    let r = call(&d.key, "POST", &format!("{base}/resume"), None);
    assert_eq!(r.status, 200, "{}", r.raw);
    wait_for(&d, &id, 10, "restart counted", |v| {
        points(v, "restarts").last().map(|p| p.1) == Some(1.0)
    });
    let before = recent(&d, &id, 60);
    let first = points(&before, "memory_usage_bytes")[0].0;

    d.kill9();
    d.spawn();
    // New samples after the restart; the old ones are still there; the count carried over.
    let restarted_at = unix_now();
    let v = wait_for(&d, &id, 60, "samples after restart", |v| {
        points(v, "memory_usage_bytes")
            .iter()
            .any(|p| p.0 > restarted_at + 1.0)
    });
    assert_eq!(points(&v, "memory_usage_bytes")[0].0, first, "{v}");
    let restarts = points(&v, "restarts");
    assert!(restarts.iter().all(|p| p.1 <= 1.0), "{restarts:?}");
    assert_eq!(restarts.last().unwrap().1, 1.0, "{restarts:?}");
}

#[test]
fn prometheus_refuses_a_public_address_without_the_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_sandboxd"))
        .args([
            "serve",
            "--listen=127.0.0.1:0",
            "--data-dir=/nonexistent-sandboxd-test",
            "--prometheus-listen=0.0.0.0:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--prometheus-public"), "{err}");
    assert!(!std::path::Path::new("/nonexistent-sandboxd-test").exists());
}

/// A value of an unlabelled series in Prometheus text.
fn prom_value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{name} missing:\n{text}"))
        .parse()
        .unwrap()
}

/// The sampler's cost, measured on its own thread (`getrusage(RUSAGE_THREAD)`) while it
/// samples N real sandboxes every second, extrapolated to 100 sandboxes every 10 s.
/// `SANDBOXD_METRICS_BENCH_SANDBOXES` (default 20), `SANDBOXD_METRICS_BENCH_SECS` (default 60).
/// Run: `cargo test -p sandboxd --test metrics -- --ignored --nocapture sampler_overhead`.
#[test]
#[ignore = "benchmark: creates many sandboxes; run by hand"]
fn sampler_overhead() {
    let n: usize = std::env::var("SANDBOXD_METRICS_BENCH_SANDBOXES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let secs: u64 = std::env::var("SANDBOXD_METRICS_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let prom = free_port();
    // Admission would stop at 8 vCPU per core; this bench wants many idle sandboxes.
    let d = Daemon::start_with(&[
        "--metrics-interval-secs=1",
        &format!("--prometheus-listen=127.0.0.1:{prom}"),
        "--node-cpu-millis=1000000",
    ]);
    for i in 0..n {
        d.create(json!({"name": format!("b{i}"), "sandbox_template_id": "sb-busybox"}));
    }
    let scrape = || {
        common::agent()
            .get(&format!("http://127.0.0.1:{prom}/metrics"))
            .call()
            .unwrap()
            .into_string()
            .unwrap()
    };
    std::thread::sleep(Duration::from_secs(3));
    let t0 = scrape();
    std::thread::sleep(Duration::from_secs(secs));
    let t1 = scrape();
    assert_eq!(
        prom_value(&t1, "sandboxd_metrics_sampled_sandboxes") as usize,
        n
    );
    let cpu = prom_value(&t1, "sandboxd_metrics_sampler_cpu_seconds_total")
        - prom_value(&t0, "sandboxd_metrics_sampler_cpu_seconds_total");
    let passes = prom_value(&t1, "sandboxd_metrics_sample_pass_duration_seconds_count")
        - prom_value(&t0, "sandboxd_metrics_sample_pass_duration_seconds_count");
    let wall = prom_value(&t1, "sandboxd_metrics_sample_pass_duration_seconds_sum")
        - prom_value(&t0, "sandboxd_metrics_sample_pass_duration_seconds_sum");
    let per_sample = cpu / (passes * n as f64);
    // 100 sandboxes every 10 s: 10 sandbox-samples per second.
    let share_100 = per_sample * 100.0 / 10.0 * 100.0;
    eprintln!(
        "sampler: {n} sandboxes, {passes} passes in {secs} s; thread CPU {cpu:.4} s; \
         {:.1} µs CPU per sandbox-sample; mean pass wall {:.2} ms; \
         100 sandboxes at 10 s: {share_100:.3} % of one core",
        per_sample * 1e6,
        wall / passes * 1e3
    );
    assert!(
        share_100 < 2.0,
        "sampling 100 sandboxes would cost {share_100} % of a core"
    );
}
