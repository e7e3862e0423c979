//! A daemon killed and its data dir deleted with sandboxes running leaves host-wide objects
//! behind (nft chain and sets in the shared table, netns, veth, cgroups, gVisor processes);
//! the next daemon to start on the host removes them, and nothing of another live daemon.

mod common;

use std::path::Path;
use std::process::Command;

use common::Daemon;
use serde_json::json;

fn short(id: &str) -> String {
    id.chars().filter(|c| *c != '-').take(12).collect()
}

/// What of sandbox `short` exists on the host: (netns, veth, nft chain, cgroup).
fn objects(short: &str) -> (bool, bool, bool, bool) {
    let nft = Command::new("nft")
        .args(["list", "table", "inet", "sandboxd"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("chain eg-{short}")))
        .unwrap_or(false);
    (
        Path::new(&format!("/run/netns/sbx-{short}")).exists(),
        Path::new(&format!("/sys/class/net/s-{short}")).exists(),
        nft,
        Path::new(&format!("/sys/fs/cgroup/pids/sandboxd/{short}")).exists(),
    )
}

/// Unmounts everything below `dir`, deepest first, then removes it.
fn remove_data_dir(dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = format!("{}/", dir.display());
    let mut under: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| m.starts_with(&prefix))
        .collect();
    under.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in under {
        let _ = Command::new("umount").args(["-l", m]).status();
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn the_next_daemon_removes_what_a_vanished_daemon_left_and_nothing_else() {
    let mut gone = Daemon::start();
    let live = Daemon::start();
    let a = gone.create(json!({"name": "orphan", "sandbox_template_id": "sb-busybox"}));
    let b = live.create(json!({"name": "alive", "sandbox_template_id": "sb-busybox"}));
    let (sa, sb) = (
        short(a["id"].as_str().unwrap()),
        short(b["id"].as_str().unwrap()),
    );
    assert_eq!(objects(&sa), (true, true, true, true));
    assert_eq!(objects(&sb), (true, true, true, true));

    // The first daemon dies and its data dir goes with it; its sandbox keeps running.
    gone.kill9();
    remove_data_dir(&gone.data_dir);
    assert!(objects(&sa).0, "the orphan's netns outlives its daemon");

    // A third daemon starts: it removes the orphan's objects, not the live daemon's.
    let third = Daemon::start();
    assert_eq!(
        objects(&sa),
        (false, false, false, false),
        "orphan left\n{}",
        third.log()
    );
    assert_eq!(objects(&sb), (true, true, true, true), "{}", third.log());
    let (exit, out, _) = live.exec(b["id"].as_str().unwrap(), "echo", &["still-here"]);
    assert_eq!(
        (exit["exit_code"].as_i64(), out.as_str()),
        (Some(0), "still-here\n")
    );
}
