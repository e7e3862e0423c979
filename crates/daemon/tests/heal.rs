//! Self-healing: a sandbox whose gVisor processes are killed from outside comes back by
//! itself on its files (processes gone), with `last_crash` recorded; one that keeps crashing
//! is left stopped with the reason, and can still be resumed by its user.

mod common;

use std::time::{Duration, Instant};

use common::{call, Daemon};
use serde_json::{json, Value};

/// Kills every process of the sandbox's cgroup (the gVisor sandbox, gofer and friends).
fn crash(id: &str) {
    let short: String = id.chars().filter(|c| *c != '-').take(12).collect();
    let procs = format!("/sys/fs/cgroup/pids/sandboxd/{short}/cgroup.procs");
    let pids = std::fs::read_to_string(&procs).unwrap_or_default();
    assert!(!pids.trim().is_empty(), "no processes in {procs}");
    for pid in pids.split_whitespace() {
        let pid: i32 = pid.parse().unwrap();
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

fn get(d: &Daemon, id: &str) -> Value {
    let r = call(
        &d.key,
        "GET",
        &format!("{}/{id}", d.sandboxes_url("default", "default")),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.raw);
    r.body
}

fn wait_for(d: &Daemon, id: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = get(d, id);
        if ok(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {v}\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_crashed_sandbox_comes_back_on_its_files_and_a_crash_loop_stops() {
    let d = Daemon::start();
    let sb = d.create(json!({"name": "heal", "sandbox_template_id": "sb-busybox"}));
    let id = sb["id"].as_str().unwrap();
    assert!(sb["last_crash"].is_null());
    let (exit, _, _) = d.exec(id, "sh", &["-c", "echo kept > /root/f; sleep 1000 &"]);
    assert_eq!(exit["exit_code"], 0);

    crash(id);
    let t0 = Instant::now();
    let v = wait_for(&d, id, "a restart after the crash", |v| {
        v["phase"] == "Ready" && !v["last_crash"].is_null()
    });
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t0.elapsed()
    );
    assert_eq!(v["last_crash"]["reason"], "Crashed", "{v}");
    assert_eq!(v["last_crash"]["storage_reset"], false);
    assert_eq!(v["restarts"], 1, "{v}");
    // Files kept, processes gone.
    let (_, out, _) = d.exec(id, "cat", &["/root/f"]);
    assert_eq!(out, "kept\n");
    let (_, ps, _) = d.exec(id, "ps", &[]);
    assert!(!ps.contains("sleep 1000"), "{ps}");
    // The audit trail says what happened.
    let audit = call(
        &d.key,
        "GET",
        &format!("{}/{id}/audit", d.sandboxes_url("default", "default")),
        None,
    );
    let tools: Vec<String> = audit.body["items"]
        .as_array()
        .or(audit.body["records"].as_array())
        .map(|a| {
            a.iter()
                .filter_map(|r| r["tool"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        tools.iter().any(|t| t == "sandbox.crash") && tools.iter().any(|t| t == "sandbox.restart"),
        "{}",
        audit.raw
    );

    // Three more crashes within the window: it stays stopped with the reason.
    for n in 2..=4 {
        wait_for(&d, id, "running again", |v| v["phase"] == "Ready");
        crash(id);
        if n < 4 {
            wait_for(&d, id, "the next restart", |v| {
                v["phase"] == "Ready" && v["restarts"] == n
            });
        }
    }
    let v = wait_for(&d, id, "giving up", |v| {
        v["status_message"]
            .as_str()
            .is_some_and(|m| m.contains("not restarted"))
    });
    assert_eq!(v["phase"], "Paused", "{v}");
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        get(&d, id)["phase"],
        "Paused",
        "no restart behind the user's back"
    );
    // The user can still bring it back; the files are there.
    let r = call(
        &d.key,
        "POST",
        &format!("{}/{id}/resume", d.sandboxes_url("default", "default")),
        Some(json!({})),
    );
    assert!(r.status < 300, "{}", r.raw);
    wait_for(&d, id, "resumed by the user", |v| v["phase"] == "Ready");
    let (_, out, _) = d.exec(id, "cat", &["/root/f"]);
    assert_eq!(out, "kept\n");
    assert_eq!(d.delete(id).status, 204);
}

#[test]
fn a_paused_sandbox_is_never_restarted_behind_the_users_back() {
    let d = Daemon::start();
    let sb = d.create(json!({"name": "paused", "sandbox_template_id": "sb-busybox"}));
    let id = sb["id"].as_str().unwrap();
    let r = call(
        &d.key,
        "POST",
        &format!("{}/{id}/pause", d.sandboxes_url("default", "default")),
        Some(json!({})),
    );
    assert!(r.status < 300, "{}", r.raw);
    std::thread::sleep(Duration::from_secs(5));
    let v = get(&d, id);
    assert_eq!(v["phase"], "Paused");
    assert!(v["last_crash"].is_null(), "{v}");
    assert_eq!(d.delete(id).status, 204);
}
