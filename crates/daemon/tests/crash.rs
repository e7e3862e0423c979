//! Crash safety: the daemon is killed (SIGKILL, by fault injection: `SANDBOXD_FAULT`) at every
//! step of snapshot, restore, fork, pause, resume and in-place rollback. After a restart:
//! every snapshot is `Ready` (with its data) or `Failed` (with none), the source sandbox is
//! running or cleanly paused and works again, and no temporary data is left behind.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{call, try_call, Daemon};
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Snapshot,
    Restore,
    Fork,
    Pause,
    Resume,
    Rollback,
}

const CASES: &[(Op, &str)] = &[
    (Op::Snapshot, "capture.recorded"),
    (Op::Snapshot, "runtime.capture.paused"),
    (Op::Snapshot, "runtime.capture.checkpointed"),
    (Op::Snapshot, "runtime.capture.layered"),
    (Op::Snapshot, "capture.captured"),
    (Op::Restore, "restore.recorded"),
    (Op::Restore, "restore.launched"),
    (Op::Fork, "runtime.capture.layered"),
    (Op::Fork, "restore.launched"),
    (Op::Pause, "pause.recorded"),
    (Op::Pause, "runtime.capture.paused"),
    (Op::Pause, "runtime.capture.checkpointed"),
    (Op::Pause, "pause.captured"),
    (Op::Resume, "resume.recorded"),
    (Op::Resume, "resume.launched"),
    (Op::Rollback, "rollback.recorded"),
    (Op::Rollback, "runtime.rollback.stopped"),
    (Op::Rollback, "runtime.rollback.cloned"),
    (Op::Rollback, "rollback.launched"),
];

fn project(d: &Daemon) -> String {
    d.project_url()
}

fn get_sandbox(d: &Daemon, id: &str) -> Value {
    let r = call(
        &d.key,
        "GET",
        &format!("{}/{id}", d.sandboxes_url("default", "default")),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.raw);
    r.body
}

fn post(d: &Daemon, path: &str, body: Value) -> common::Resp {
    call(&d.key, "POST", &format!("{}{path}", project(d)), Some(body))
}

/// Every snapshot is Ready with its captured layer on disk, or Failed with nothing on disk.
fn check_snapshots(d: &Daemon, case: &str) {
    let r = call(
        &d.key,
        "GET",
        &format!("{}/snapshots?limit=100", project(d)),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.raw);
    for s in r.body["items"].as_array().unwrap() {
        let id = s["id"].as_str().unwrap();
        let layer = d.data_dir.join("vol/.layers").join(format!("snap-{id}"));
        let image = d.data_dir.join("images").join(format!("snap-{id}"));
        match s["status"].as_str().unwrap() {
            "Ready" => assert!(layer.is_dir(), "{case}: Ready snapshot {id} has no layer"),
            "Failed" => {
                assert!(s["error_message"].is_string(), "{case}: {s}");
                assert!(
                    !layer.exists() && !image.exists(),
                    "{case}: Failed snapshot {id} left data"
                );
            }
            other => panic!("{case}: snapshot {id} is {other} after restart"),
        }
    }
}

/// No pause image lies around unless its sandbox is paused with memory.
fn check_no_stray_images(d: &Daemon, case: &str) {
    let Ok(rd) = std::fs::read_dir(d.data_dir.join("images")) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(id) = name.strip_prefix("pause-") {
            let sb = get_sandbox(d, id);
            assert_eq!(sb["phase"], "Paused", "{case}: stray {name}");
        }
    }
}

fn cat(d: &Daemon, id: &str) -> String {
    let (exit, out, err) = d.exec(id, "cat", &["/root/f"]);
    assert_eq!(exit["exit_code"], 0, "cat: {out}{err}");
    out
}

/// The source is running or paused; a paused one resumes. Either way it then runs commands.
fn check_source(d: &Daemon, id: &str, case: &str) {
    let sb = get_sandbox(d, id);
    match sb["phase"].as_str().unwrap() {
        "Ready" => {}
        "Paused" => {
            let r = post(d, &format!("/sandboxes/{id}/resume"), json!({}));
            assert_eq!(r.status, 200, "{case}: resume after restart: {}", r.raw);
        }
        other => panic!("{case}: source sandbox is {other}: {sb}\n{}", d.log()),
    }
    let f = cat(d, id);
    assert!(f == "v1\n" || f == "v2\n", "{case}: files are {f:?}");
}

/// Removes every sandbox but the source (restores and forks the case made, Ready or Failed).
fn delete_others(d: &Daemon, keep: &str) {
    let r = call(
        &d.key,
        "GET",
        &format!("{}?limit=100", d.sandboxes_url("default", "default")),
        None,
    );
    for sb in r.body["items"].as_array().unwrap() {
        let id = sb["id"].as_str().unwrap();
        if id != keep {
            assert_eq!(d.delete(id).status, 204, "delete {sb}");
        }
    }
}

#[test]
fn a_crash_at_any_step_leaves_ready_or_failed_snapshots_and_a_working_sandbox() {
    let mut d = Daemon::start();
    let src = d.create(json!({"name": "src", "sandbox_template_id": "sb-busybox"}));
    let src = src["id"].as_str().unwrap().to_string();
    d.exec(&src, "sh", &["-c", "echo v1 > /root/f"]);
    let base = post(
        &d,
        &format!("/sandboxes/{src}/snapshots"),
        json!({"name": "base", "include_memory": true}),
    );
    assert_eq!(base.body["status"], "Ready", "{}", base.raw);
    let base = base.body["id"].as_str().unwrap().to_string();
    d.exec(&src, "sh", &["-c", "echo v2 > /root/f"]);

    for (i, (op, point)) in CASES.iter().enumerate() {
        let case = format!("{op:?} at {point}");
        if *op == Op::Resume {
            let r = post(
                &d,
                &format!("/sandboxes/{src}/pause"),
                json!({"preserve_memory": true}),
            );
            assert_eq!(r.status, 200, "{case}: pause first: {}", r.raw);
        }
        d.kill9();
        d.env = vec![("SANDBOXD_FAULT".into(), point.to_string())];
        d.spawn();
        let (path, body) = match op {
            Op::Snapshot => (
                format!("/sandboxes/{src}/snapshots"),
                json!({"include_memory": true}),
            ),
            Op::Restore => (
                "/sandboxes".to_string(),
                json!({"name": format!("restored-{i}"), "from_snapshot": base}),
            ),
            Op::Fork => (
                format!("/sandboxes/{src}/fork"),
                json!({"name": format!("fork-{i}")}),
            ),
            Op::Pause => (
                format!("/sandboxes/{src}/pause"),
                json!({"preserve_memory": true}),
            ),
            Op::Resume => (format!("/sandboxes/{src}/resume"), json!({})),
            Op::Rollback => (
                format!("/sandboxes/{src}/restore"),
                json!({"snapshot_id": base}),
            ),
        };
        let r = try_call(
            &d.key,
            "POST",
            &format!("{}{path}", project(&d)),
            Some(body),
        );
        assert!(
            r.is_err(),
            "{case}: the request finished, the fault point was never reached: {r:?}"
        );
        assert!(
            d.wait_exit(Duration::from_secs(30)),
            "{case}: the daemon did not die"
        );
        d.env.clear();
        d.spawn();

        check_snapshots(&d, &case);
        check_no_stray_images(&d, &case);
        check_source(&d, &src, &case);
        delete_others(&d, &src);
    }

    // The base snapshot survived every crash and still restores, memory and files.
    let r = post(
        &d,
        "/sandboxes",
        json!({"name": "final", "from_snapshot": base}),
    );
    assert_eq!(r.status, 201, "{}", r.raw);
    assert_eq!(cat(&d, r.body["id"].as_str().unwrap()), "v1\n");
    assert!(Path::new(&d.data_dir).join("meta.db").is_file());
}

/// Seed 004: "deletion is final but waits for in-flight restores to complete first"; sandboxes
/// restored from a snapshot keep running after it is deleted; restoring it again is a 404.
#[test]
fn deleting_a_snapshot_waits_for_an_in_flight_restore() {
    let d = Daemon::start();
    let src = d.create(json!({"name": "origin", "sandbox_template_id": "sb-busybox"}));
    let src = src["id"].as_str().unwrap().to_string();
    d.exec(&src, "sh", &["-c", "echo v1 > /root/f"]);
    let snap = post(
        &d,
        &format!("/sandboxes/{src}/snapshots"),
        json!({"include_memory": true}),
    );
    assert_eq!(snap.body["status"], "Ready", "{}", snap.raw);
    let snap = snap.body["id"].as_str().unwrap().to_string();

    let (url, key, s) = (project(&d), d.key.clone(), snap.clone());
    let restore = std::thread::spawn(move || {
        let r = call(
            &key,
            "POST",
            &format!("{url}/sandboxes"),
            Some(json!({"name": "in-flight", "from_snapshot": s})),
        );
        (r, std::time::Instant::now())
    });
    std::thread::sleep(Duration::from_millis(40));
    let del = call(
        &d.key,
        "DELETE",
        &format!("{}/snapshots/{snap}", project(&d)),
        None,
    );
    let deleted_at = std::time::Instant::now();
    assert_eq!(del.status, 204, "{}", del.raw);
    let (r, restored_at) = restore.join().unwrap();
    if r.status == 201 {
        // The restore won the race: the delete waited for it, and the new sandbox is whole.
        eprintln!("the restore was in flight; the delete waited for it");
        assert!(deleted_at >= restored_at, "the delete did not wait");
        let id = r.body["id"].as_str().unwrap();
        assert_eq!(cat(&d, id), "v1\n");
    } else {
        // The delete won: the restore failed with a clear error, not a half-made sandbox.
        eprintln!("the delete came first; the restore failed cleanly");
        assert!(r.status == 404 || r.status == 409, "{}", r.raw);
        assert!(r.raw.contains("snapshot"), "{}", r.raw);
        let list = call(&d.key, "GET", &d.sandboxes_url("default", "default"), None);
        assert!(!list.raw.contains("in-flight"), "{}", list.raw);
    }
    // Deleted means gone for good.
    let again = post(
        &d,
        "/sandboxes",
        json!({"name": "too-late", "from_snapshot": snap}),
    );
    assert_eq!(again.status, 404, "{}", again.raw);
    // The source is unaffected.
    assert_eq!(cat(&d, &src), "v1\n");
}
