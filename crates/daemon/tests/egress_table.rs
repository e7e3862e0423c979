//! The shared nftables table deleted under the daemons' feet (what a daemon of an older
//! version does at its start). In a test binary of its own: deleting the table breaks the
//! agent connections in flight of every daemon on the host (their packets are no longer
//! tracked as established), so nothing else may run beside it.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::Daemon;
use serde_json::json;

fn short(id: &str) -> String {
    id.chars().filter(|c| *c != '-').take(12).collect()
}

fn nft(args: &[&str]) -> String {
    let out = Command::new("nft").args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Each daemon hears of it from `nft monitor` and re-installs its base and every policy at
/// once (the fallback check runs only every 30 s), also when another daemon has already put
/// the base back.
#[test]
fn a_deleted_shared_table_is_reinstalled_at_once() {
    let d = Daemon::start();
    let other = Daemon::start();
    let target = format!("198.18.{}.2", d.octet);
    let sb = d.create(json!({"sandbox_template_id": "sb-busybox",
        "egress": {"mode": "allow_list", "allow": [{"host": target, "ports": [8080], "protocol": "TCP"}]}}));
    let id = short(sb["id"].as_str().unwrap());
    let osb = other.create(json!({"sandbox_template_id": "sb-busybox"}));
    let oid = short(osb["id"].as_str().unwrap());
    let policy = nft(&["list", "set", "inet", "sandboxd", &format!("eg-{id}-p")]);
    assert!(
        policy.contains(&format!("{target} . tcp . 8080")),
        "{policy}"
    );

    let st = Command::new("nft")
        .args(["delete", "table", "inet", "sandboxd"])
        .status()
        .unwrap();
    assert!(st.success());
    let t = Instant::now();
    loop {
        let map = nft(&["list", "map", "inet", "sandboxd", "egress_fwd"]);
        if map.contains(&format!("s-{id}")) && map.contains(&format!("s-{oid}")) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the policies were not re-installed\n{}\n{}",
            d.log(),
            other.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("re-installed {:?} after the table was deleted", t.elapsed());
    assert!(d.log().contains("re-installing"), "{}", d.log());
    assert!(other.log().contains("re-installing"), "{}", other.log());
    // The policy itself is back, not only the base; new agent connections work.
    let policy = nft(&["list", "set", "inet", "sandboxd", &format!("eg-{id}-p")]);
    assert!(
        policy.contains(&format!("{target} . tcp . 8080")),
        "{policy}"
    );
    let (exit, out, _) = d.exec(sb["id"].as_str().unwrap(), "echo", &["still here"]);
    assert_eq!(
        (exit["exit_code"].as_i64(), out.as_str()),
        (Some(0), "still here\n")
    );
}
