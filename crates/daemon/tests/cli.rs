//! The `sbx` CLI against a real daemon: sandboxes, snapshots, fork, restore, pause, resume.
//! Uses the newest `sbx` binary of this workspace (release or debug).

mod common;

use std::process::Command;

use common::{workspace, Daemon};

fn sbx_binary() -> std::path::PathBuf {
    let ws = workspace();
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| ws.join("target"));
    ["release", "debug"]
        .iter()
        .map(|p| target.join(p).join("sbx"))
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .max()
        .map(|(_, p)| p)
        .expect("sbx binary (cargo build -p sbx)")
}

/// Runs `sbx ARGS` against `d`; returns (exit code, stdout, stderr).
fn sbx(d: &Daemon, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(sbx_binary())
        .args(args)
        .env("SBX_URL", &d.url)
        .env("SBX_API_KEY", &d.key)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `sbx ARGS` must succeed; returns its trimmed stdout.
fn ok(d: &Daemon, args: &[&str]) -> String {
    let (code, out, err) = sbx(d, args);
    assert_eq!(code, 0, "sbx {args:?}: {out}{err}");
    out.trim().to_string()
}

#[test]
fn cli_drives_snapshots_fork_restore_pause_and_resume() {
    let d = Daemon::start();
    let id = ok(
        &d,
        &["create", "--name", "cli-a", "--template", "sb-busybox"],
    );
    ok(
        &d,
        &["exec", "cli-a", "--", "sh", "-c", "echo one > /root/f"],
    );
    let (code, _, _) = sbx(&d, &["exec", "cli-a", "--", "sh", "-c", "exit 3"]);
    assert_eq!(code, 3, "exec passes the exit code through");

    // Snapshot create / ls.
    let snap = ok(
        &d,
        &["snapshot", "create", "cli-a", "--name", "first", "--memory"],
    );
    assert_eq!(snap.len(), 36, "prints the snapshot id: {snap}");
    let ls = ok(&d, &["snapshot", "ls", "cli-a"]);
    assert!(
        ls.contains(&snap) && ls.contains("first") && ls.contains("Ready"),
        "{ls}"
    );
    assert!(ok(&d, &["snapshot", "ls"]).contains(&snap));

    // Changes after the snapshot, then fork, restore as new, roll back in place.
    ok(
        &d,
        &["exec", "cli-a", "--", "sh", "-c", "echo two > /root/f"],
    );
    let fork = ok(&d, &["fork", "cli-a", "--name", "cli-fork"]);
    assert_ne!(fork, id);
    assert_eq!(ok(&d, &["exec", "cli-fork", "--", "cat", "/root/f"]), "two");
    let restored = ok(&d, &["restore", &snap, "--name", "cli-restored"]);
    assert_ne!(restored, id);
    assert_eq!(
        ok(&d, &["exec", "cli-restored", "--", "cat", "/root/f"]),
        "one"
    );
    assert_eq!(ok(&d, &["restore", &snap, "--into", "cli-a"]), id);
    assert_eq!(ok(&d, &["exec", "cli-a", "--", "cat", "/root/f"]), "one");

    // Pause and resume, with and without memory.
    ok(&d, &["pause", "cli-a"]);
    let (code, _, err) = sbx(&d, &["exec", "cli-a", "--", "true"]);
    assert_ne!(code, 0, "a paused sandbox runs nothing");
    assert!(
        err.contains("not running") || err.contains("paused"),
        "{err}"
    );
    ok(&d, &["resume", "cli-a"]);
    assert_eq!(ok(&d, &["exec", "cli-a", "--", "cat", "/root/f"]), "one");
    ok(&d, &["pause", "cli-a", "--no-memory"]);
    ok(&d, &["resume", "cli-a"]);
    assert_eq!(ok(&d, &["exec", "cli-a", "--", "cat", "/root/f"]), "one");

    // Published ports: expose prints the preview URL, ports lists it, unexpose ends it.
    let url = ok(&d, &["expose", "cli-a", "8000", "--slug", "cli-preview-1"]);
    assert!(url.ends_with("/p/cli-preview-1/"), "{url}");
    let listed = ok(&d, &["ports", "cli-a"]);
    assert!(listed.contains("8000") && listed.contains(&url), "{listed}");
    let (code, _, err) = sbx(&d, &["expose", "cli-a", "7777"]);
    assert_ne!(code, 0);
    assert!(err.contains("reserved"), "{err}");
    ok(&d, &["unexpose", "cli-a", "8000"]);
    assert!(!ok(&d, &["ports", "cli-a"]).contains(&url));

    // Errors are readable and exit non-zero.
    let (code, _, err) = sbx(&d, &["snapshot", "create", "cli-a", "--name", "Bad_Name"]);
    assert_ne!(code, 0);
    assert!(err.contains("name"), "{err}");

    // Remove the snapshot, then the sandboxes.
    assert_eq!(ok(&d, &["snapshot", "rm", &snap]), snap);
    assert!(!ok(&d, &["snapshot", "ls"]).contains(&snap));
    let rm = ok(&d, &["rm", "cli-a", "cli-fork", "cli-restored"]);
    assert_eq!(rm.lines().count(), 3, "{rm}");
    assert!(!ok(&d, &["ls"]).contains("cli-"));
}
