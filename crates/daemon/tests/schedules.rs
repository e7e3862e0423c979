//! Scheduled snapshots (seed 004 `snapshot_mode: automatic`) and the snapshot usage report,
//! against a real daemon with real gVisor sandboxes. Needs root (see `common`).

mod common;

use std::time::{Duration, Instant};

use common::{call, Daemon};
use serde_json::{json, Value};

fn snapshots_of(d: &Daemon, id: &str) -> Vec<Value> {
    let r = call(
        &d.key,
        "GET",
        &format!("{}/{id}/snapshots", d.sandboxes_url("default", "default")),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.raw);
    r.body["items"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("no list in {}", r.raw))
}

/// The current wall-clock minute, as a count since the epoch.
fn minute_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 60
}

fn usage(d: &Daemon) -> Value {
    let r = call(
        &d.key,
        "GET",
        &format!("{}/api/v1beta1/orgs/default/projects/default/usage", d.url),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.raw);
    r.body["snapshots"].clone()
}

#[test]
fn automatic_snapshots_fire_on_schedule_skip_paused_sandboxes_and_count_in_usage() {
    let d = Daemon::start_with(&["--snapshot-schedule-secs=1"]);
    let root = d.sandboxes_url("default", "default");

    // The schedule is validated at create: required when automatic, refused otherwise.
    for (body, field) in [
        (json!({"snapshot_mode": "automatic"}), "snapshot_frequency"),
        (
            json!({"snapshot_mode": "automatic", "snapshot_frequency": "*/5 * * *"}),
            "snapshot_frequency",
        ),
        (
            json!({"snapshot_mode": "automatic", "snapshot_frequency": "61 * * * *"}),
            "snapshot_frequency",
        ),
        (
            json!({"snapshot_frequency": "* * * * *"}),
            "snapshot_frequency",
        ),
        (json!({"snapshot_mode": "hourly"}), "snapshot_mode"),
    ] {
        let mut b = body.clone();
        b["sandbox_template_id"] = json!("sb-busybox");
        let r = call(&d.key, "POST", &root, Some(b));
        assert_eq!(
            (r.status, r.body["field"].as_str()),
            (400, Some(field)),
            "{body}: {}",
            r.raw
        );
    }

    let auto = |name: &str| {
        d.create(json!({"name": name, "sandbox_template_id": "sb-busybox",
                        "snapshot_mode": "automatic", "snapshot_frequency": "* * * * *"}))
    };
    let a = auto("auto-a");
    assert_eq!(a["snapshot_mode"], "automatic");
    assert_eq!(a["snapshot_frequency"], "* * * * *");
    let a = a["id"].as_str().unwrap().to_string();
    let b = auto("auto-b")["id"].as_str().unwrap().to_string();
    let m = d.create(json!({"name": "manual", "sandbox_template_id": "sb-busybox"}));
    assert_eq!(m["snapshot_mode"], "manual");
    let m = m["id"].as_str().unwrap().to_string();
    // /tmp too: it must be part of the layer, not a tmpfs of the sandbox's own.
    d.exec(
        &a,
        "sh",
        &["-c", "echo scheduled > /root/f; echo tmp > /tmp/g"],
    );

    // B is paused (files only): its ticks are skipped.
    let p = call(
        &d.key,
        "POST",
        &format!("{root}/{b}/pause"),
        Some(json!({"preserve_memory": false})),
    );
    assert_eq!(p.status, 200, "{}", p.raw);

    // Every minute fires; wait for A's first automatic snapshot.
    let deadline = Instant::now() + Duration::from_secs(90);
    let first = loop {
        let snaps = snapshots_of(&d, &a);
        if let Some(s) = snaps.iter().find(|s| s["status"] == "Ready") {
            break s.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no automatic snapshot in 90 s: {snaps:?}\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let fired_minute = minute_now();
    assert!(
        first["name"].as_str().unwrap().starts_with("auto-"),
        "{first}"
    );
    assert_eq!(first["created_by"], "scheduler");
    assert_eq!(first["include_memory"], false);
    assert!(
        snapshots_of(&d, &b).is_empty(),
        "a paused sandbox's tick must be skipped"
    );
    assert!(
        snapshots_of(&d, &m).is_empty(),
        "a manual sandbox is never snapshotted"
    );

    // The skipped tick is not queued: resumed, B gets nothing until the next firing.
    let r = call(
        &d.key,
        "POST",
        &format!("{root}/{b}/resume"),
        Some(json!({})),
    );
    assert_eq!(r.status, 200, "{}", r.raw);
    std::thread::sleep(Duration::from_secs(3));
    if minute_now() == fired_minute {
        assert!(snapshots_of(&d, &b).is_empty(), "a missed run was queued");
    }

    // The automatic snapshot restores like any other.
    let r = call(
        &d.key,
        "POST",
        &root,
        Some(json!({"name": "from-auto", "from_snapshot": first["id"]})),
    );
    assert_eq!(r.status, 201, "{}", r.raw);
    let (_, out, _) = d.exec(
        r.body["id"].as_str().unwrap(),
        "cat",
        &["/root/f", "/tmp/g"],
    );
    assert_eq!(out, "scheduled\ntmp\n");

    // Usage: held bytes follow live snapshots; byte-hours only grow, deletions included.
    let u1 = usage(&d);
    assert!(u1["count"].as_u64().unwrap() >= 1, "{u1}");
    assert!(u1["storage_bytes"].as_u64().unwrap() > 0, "{u1}");
    let s = call(
        &d.key,
        "POST",
        &format!("{root}/{m}/snapshots"),
        Some(json!({"name": "manual-one"})),
    );
    assert_eq!(s.status, 202, "{}", s.raw);
    let u2 = usage(&d);
    assert_eq!(
        u2["count"].as_u64().unwrap(),
        u1["count"].as_u64().unwrap() + 1,
        "{u2}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let del = call(
        &d.key,
        "DELETE",
        &format!(
            "{}/api/v1beta1/orgs/default/projects/default/snapshots/{}",
            d.url,
            s.body["id"].as_str().unwrap()
        ),
        None,
    );
    assert_eq!(del.status, 204, "{}", del.raw);
    let u3 = usage(&d);
    assert!(
        u3["storage_byte_hours"].as_f64().unwrap() >= u2["storage_byte_hours"].as_f64().unwrap(),
        "{u2} {u3}"
    );
    assert!(
        u3["storage_bytes"].as_u64().unwrap() < u2["storage_bytes"].as_u64().unwrap() + 1,
        "{u3}"
    );

    // Another tenant's key cannot read this project's usage.
    let other = d.create_key("other-org", None);
    let r = call(
        &other,
        "GET",
        &format!("{}/api/v1beta1/orgs/default/projects/default/usage", d.url),
        None,
    );
    assert_eq!(r.status, 403, "{}", r.raw);
}
