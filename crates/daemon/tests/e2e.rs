//! End-to-end tier: real gVisor sandboxes behind the real daemon, driven over HTTP.

mod common;

use std::time::Duration;

use common::{call, call_raw, dp, exec_as, Daemon, COUNTER};
use serde_json::{json, Value};

#[test]
fn both_templates_run_code_read_write_files_and_delete_cleanly() {
    let d = Daemon::start();
    let bb = d.create(json!({"name": "bb", "sandbox_template_id": "sb-busybox"}));
    let deb = d.create(json!({"name": "deb", "sandbox_template_id": "sb-debian-12-python",
        "env": [{"name": "GREETING", "value": "hello"}], "resources": {"cpu": 1.5, "memory_gb": 2}}));
    let (bb_id, deb_id) = (bb["id"].as_str().unwrap(), deb["id"].as_str().unwrap());
    assert_eq!(
        deb["resources"],
        json!({"cpu": 1.5, "memory_gb": 2, "disk_gb": 10})
    );
    assert_eq!(deb["connect_url"], d.url);

    let (exit, out, _) = d.exec(
        deb_id,
        "python3",
        &["-c", "import os; print(6*7, os.environ['GREETING'])"],
    );
    assert_eq!(exit["exit_code"], 0);
    assert_eq!(out, "42 hello\n");
    let (exit, out, err) = d.exec(bb_id, "echo out; echo err >&2; exit 3", &[]);
    assert_eq!(
        (exit["exit_code"].as_i64(), out.as_str(), err.as_str()),
        (Some(3), "out\n", "err\n")
    );
    let (_, out, _) = d.exec(bb_id, "hostname", &[]);
    assert_eq!(out, "bb\n");

    // Files through the data plane; the sandbox sees them, and its writes land on the host.
    let w = common::agent()
        .post(&format!("{}/v1/files/write?path=dir/note.txt", d.url))
        .set("Authorization", &format!("Bearer {}", d.key))
        .set("X-Sandbox-Id", deb_id)
        .send_bytes(b"file body\n")
        .unwrap();
    assert_eq!(w.into_json::<Value>().unwrap()["bytes_written"], 10);
    let (_, out, _) = d.exec(
        deb_id,
        "cat /workspace/dir/note.txt && echo made-inside > /workspace/inside.txt",
        &[],
    );
    assert_eq!(out, "file body\n");
    let r = common::agent()
        .post(&format!("{}/v1/files/read", d.url))
        .set("Authorization", &format!("Bearer {}", d.key))
        .set("X-Sandbox-Id", deb_id)
        .send_json(json!({"path": "inside.txt", "cwd": null}))
        .unwrap();
    assert_eq!(r.into_string().unwrap(), "made-inside\n");
    let upper = d
        .data_dir
        .join("vol")
        .join(deb_id)
        .join("upper/workspace/inside.txt");
    assert_eq!(std::fs::read_to_string(upper).unwrap(), "made-inside\n");
    let l = dp(
        &d.url,
        &d.key,
        deb_id,
        "/v1/files/list",
        json!({"path": "dir", "cwd": null, "recursive": false, "max_count": null}),
    );
    assert_eq!(l.body["entries"][0]["name"], "note.txt");
    assert_eq!(l.body["entries"][0]["size"], 10);
    let missing = dp(
        &d.url,
        &d.key,
        deb_id,
        "/v1/files/read",
        json!({"path": "nope.txt", "cwd": null}),
    );
    assert_eq!(
        (missing.status, missing.body["reason_code"].as_str()),
        (404, Some("not_found"))
    );

    let list = call(&d.key, "GET", &d.sandboxes_url("default", "default"), None);
    assert_eq!(list.body["total"], 2);
    for id in [bb_id, deb_id] {
        assert_eq!(d.delete(id).status, 204);
        let gone = call(
            &d.key,
            "GET",
            &format!("{}/{id}", d.sandboxes_url("default", "default")),
            None,
        );
        assert_eq!(gone.status, 404);
    }
    assert_eq!(d.host_objects(&[bb_id, deb_id]), Vec::<String>::new());
}

#[test]
fn a_process_over_the_memory_limit_is_killed_and_reported() {
    let d = Daemon::start();
    let sb = d.create(json!({"name": "mem", "sandbox_template_id": "sb-debian-12-python", "resources": {"memory_gb": 1}}));
    let id = sb["id"].as_str().unwrap();
    let hog = "b = bytearray(1536 * 1024 * 1024)\nfor i in range(0, len(b), 4096): b[i] = 1\nprint('survived')";
    let (exit, out, err) = d.exec(id, "python3", &["-c", hog]);
    assert_eq!(exit["exit_code"], 137, "{exit} {err}");
    assert_eq!(exit["oom_killed"], true);
    assert!(!out.contains("survived"));
    assert!(err.contains("out of memory"), "{err}");
    // The sandbox itself lives on, and a process within the limit runs.
    let (exit, out, _) = d.exec(
        id,
        "python3",
        &[
            "-c",
            "b = bytearray(256 * 1024 * 1024); print(len(b) >> 20)",
        ],
    );
    assert_eq!(
        (exit["exit_code"].as_i64(), out.as_str()),
        (Some(0), "256\n")
    );
    let got = call(
        &d.key,
        "GET",
        &format!("{}/{id}", d.sandboxes_url("default", "default")),
        None,
    );
    assert_eq!(got.body["phase"], "Ready");
}

#[test]
fn keys_of_another_org_get_403_and_cannot_list() {
    let d = Daemon::start();
    let b_key = d.create_key("org-b", None);
    let a_sb = d.create(json!({"name": "mine", "sandbox_template_id": "sb-busybox"}));
    let a_id = a_sb["id"].as_str().unwrap();

    let a_list = d.sandboxes_url("default", "default");
    assert_eq!(call(&b_key, "GET", &a_list, None).status, 403);
    assert_eq!(
        call(&b_key, "GET", &format!("{a_list}/{a_id}"), None).status,
        403
    );
    assert_eq!(
        call(&b_key, "DELETE", &format!("{a_list}/{a_id}"), None).status,
        403
    );
    let r = call(
        &b_key,
        "POST",
        &a_list,
        Some(json!({"name": "intruder", "sandbox_template_id": "sb-busybox"})),
    );
    assert_eq!(
        (r.status, r.body["code"].as_str()),
        (403, Some("forbidden"))
    );
    let r = dp(
        &d.url,
        &b_key,
        a_id,
        "/v1/exec",
        json!({"command": "id", "args": []}),
    );
    assert_eq!(
        (r.status, r.body["reason_code"].as_str()),
        (403, Some("permission_denied"))
    );
    // Its own org lists nothing of org A.
    let own = call(&b_key, "GET", &d.sandboxes_url("org-b", "default"), None);
    assert_eq!((own.status, own.body["total"].as_i64()), (200, Some(0)));
    // A project-bound key of the same org is held to its project.
    let p_key = d.create_key("default", Some("other"));
    assert_eq!(call(&p_key, "GET", &a_list, None).status, 403);
    // No key, or a wrong one: 401.
    assert_eq!(call_raw(None, "GET", &a_list, b"").status, 401);
    assert_eq!(call("sbx_nope_nope", "GET", &a_list, None).status, 401);
    let mut forged = d.key.clone();
    forged.pop();
    forged.push(if d.key.ends_with('0') { '1' } else { '0' });
    assert_eq!(call(&forged, "GET", &a_list, None).status, 401);
    // Owner still has it.
    assert_eq!(
        call(&d.key, "GET", &format!("{a_list}/{a_id}"), None).status,
        200
    );
    // The key never reaches the log.
    assert!(!d.log().contains(&d.key) && !d.log().contains(&b_key));
}

#[test]
fn malformed_requests_get_documented_errors_and_the_daemon_keeps_serving() {
    let d = Daemon::start();
    let url = d.sandboxes_url("default", "default");
    let big = format!("{{\"name\": \"{}\"}}", "a".repeat(2 * 1024 * 1024));
    /// (what, url, body, expected status, expected field)
    type Case<'a> = (&'a str, String, Vec<u8>, u16, Option<&'a str>);
    let cases: Vec<Case> = vec![
        ("bad json", url.clone(), b"{not json".to_vec(), 400, None),
        ("empty body", url.clone(), b"".to_vec(), 400, None),
        ("json array", url.clone(), b"[]".to_vec(), 400, None),
        (
            "uppercase name",
            url.clone(),
            br#"{"name":"Bad"}"#.to_vec(),
            400,
            Some("name"),
        ),
        (
            "underscore name",
            url.clone(),
            br#"{"name":"a_b"}"#.to_vec(),
            400,
            Some("name"),
        ),
        (
            "leading dash",
            url.clone(),
            br#"{"name":"-ab"}"#.to_vec(),
            400,
            Some("name"),
        ),
        (
            "name too long",
            url.clone(),
            format!("{{\"name\":\"{}\"}}", "a".repeat(64)).into_bytes(),
            400,
            Some("name"),
        ),
        (
            "name wrong type",
            url.clone(),
            br#"{"name":5}"#.to_vec(),
            400,
            Some("name"),
        ),
        (
            "cpu too small",
            url.clone(),
            br#"{"name":"x","resources":{"cpu":0.25}}"#.to_vec(),
            400,
            Some("resources.cpu"),
        ),
        (
            "cpu not a multiple",
            url.clone(),
            br#"{"name":"x","resources":{"cpu":1.3}}"#.to_vec(),
            400,
            Some("resources.cpu"),
        ),
        (
            "cpu too big",
            url.clone(),
            br#"{"name":"x","resources":{"cpu":9}}"#.to_vec(),
            400,
            Some("resources.cpu"),
        ),
        (
            "memory zero",
            url.clone(),
            br#"{"name":"x","resources":{"memory_gb":0}}"#.to_vec(),
            400,
            Some("resources.memory_gb"),
        ),
        (
            "memory 17",
            url.clone(),
            br#"{"name":"x","resources":{"memory_gb":17}}"#.to_vec(),
            400,
            Some("resources.memory_gb"),
        ),
        (
            "memory fractional",
            url.clone(),
            br#"{"name":"x","resources":{"memory_gb":1.5}}"#.to_vec(),
            400,
            Some("resources.memory_gb"),
        ),
        (
            "disk not multiple of 10",
            url.clone(),
            br#"{"name":"x","resources":{"disk_gb":15}}"#.to_vec(),
            400,
            Some("resources.disk_gb"),
        ),
        (
            "disk too big",
            url.clone(),
            br#"{"name":"x","resources":{"disk_gb":110}}"#.to_vec(),
            400,
            Some("resources.disk_gb"),
        ),
        (
            "unknown resource",
            url.clone(),
            br#"{"name":"x","resources":{"gpus":1}}"#.to_vec(),
            400,
            Some("resources.gpus"),
        ),
        (
            "unknown template",
            url.clone(),
            br#"{"name":"x","sandbox_template_id":"sb-nope"}"#.to_vec(),
            400,
            Some("sandbox_template_id"),
        ),
        (
            "template bad pattern",
            url.clone(),
            br#"{"name":"x","sandbox_template_id":"ubuntu"}"#.to_vec(),
            400,
            Some("sandbox_template_id"),
        ),
        (
            "env not a list",
            url.clone(),
            br#"{"name":"x","env":{"A":"1"}}"#.to_vec(),
            400,
            Some("env"),
        ),
        (
            "env bad name",
            url.clone(),
            br#"{"name":"x","env":[{"name":"1A","value":"v"}]}"#.to_vec(),
            400,
            Some("env[0].name"),
        ),
        (
            "from_snapshot not uuid",
            url.clone(),
            br#"{"name":"x","from_snapshot":"abc"}"#.to_vec(),
            400,
            Some("from_snapshot"),
        ),
        (
            "egress unknown field",
            url.clone(),
            br#"{"name":"x","egress":{"mode":"deny_all","extra":1}}"#.to_vec(),
            400,
            Some("egress.extra"),
        ),
        (
            "egress bad mode",
            url.clone(),
            br#"{"name":"x","egress":{"mode":"open"}}"#.to_vec(),
            400,
            Some("egress.mode"),
        ),
        (
            "egress bad host",
            url.clone(),
            br#"{"name":"x","egress":{"mode":"allow_list","allow":[{"host":"not a host"}]}}"#
                .to_vec(),
            400,
            Some("egress.allow[0].host"),
        ),
        (
            "wrong region",
            url.clone(),
            br#"{"name":"x","region":"mars-1"}"#.to_vec(),
            400,
            Some("region"),
        ),
        ("huge body", url.clone(), big.into_bytes(), 413, None),
    ];
    assert!(cases.len() >= 20);
    for (what, u, body, status, field) in &cases {
        let r = call_raw(Some(&d.key), "POST", u, body);
        assert_eq!(r.status, *status, "{what}: {}", r.raw);
        assert!(
            r.body["error"].is_string() && r.body["code"].is_string(),
            "{what}: not the error shape: {}",
            r.raw
        );
        if let Some(f) = field {
            assert_eq!(r.body["field"].as_str(), Some(*f), "{what}: {}", r.raw);
        }
    }
    let get_cases: Vec<(String, u16)> = vec![
        (format!("{url}?page=0"), 400),
        (format!("{url}?limit=101"), 400),
        (format!("{url}?limit=abc"), 400),
        (format!("{url}/not_a_uuid!"), 400),
        (format!("{url}/6f1c2e1e-0000-4000-8000-000000000000"), 404),
        (format!("{}/api/v1beta1/nope", d.url), 404),
        (
            format!("{}/api/v1beta1/sandbox-templates/sb-nope", d.url),
            404,
        ),
    ];
    for (u, status) in &get_cases {
        let r = call(&d.key, "GET", u, None);
        assert_eq!(r.status, *status, "{u}: {}", r.raw);
        assert!(r.body["error"].is_string(), "{u}: {}", r.raw);
    }
    let r = call(&d.key, "PUT", &url, None);
    assert_eq!(r.status, 405);
    // Duplicate names conflict (an identical create by the same key is a retry instead, see
    // `a_retried_create_returns_the_sandbox_already_made`); the daemon is still healthy after
    // all of the above.
    d.create(json!({"name": "dup", "sandbox_template_id": "sb-busybox"}));
    let r = call(
        &d.key,
        "POST",
        &url,
        Some(json!({"name": "dup", "sandbox_template_id": "sb-debian-12-python"})),
    );
    assert_eq!((r.status, r.body["code"].as_str()), (409, Some("conflict")));
    // Data-plane input errors come in the data-plane shape.
    let r = dp(
        &d.url,
        &d.key,
        "not-a-uuid",
        "/v1/exec",
        json!({"command": "true"}),
    );
    assert_eq!(
        (r.status, r.body["reason_code"].as_str()),
        (400, Some("invalid_argument"))
    );
    let r = dp(
        &d.url,
        &d.key,
        "6f1c2e1e-0000-4000-8000-000000000000",
        "/v1/exec",
        json!({"command": "true"}),
    );
    assert_eq!(
        (r.status, r.body["reason_code"].as_str()),
        (404, Some("not_found"))
    );
}

#[test]
fn sigkill_restart_readopts_running_sandboxes_and_leaks_nothing() {
    let mut d = Daemon::start();
    let ids: Vec<String> = (0..3)
        .map(|i| {
            d.create(json!({"name": format!("s{i}"), "sandbox_template_id": "sb-busybox"}))["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    // A process started before the crash keeps running across it.
    let (exit, _, _) = d.exec(&ids[0], "echo before > /tmp/mark", &[]);
    assert_eq!(exit["exit_code"], 0);
    d.kill9();
    d.spawn();
    let list = call(&d.key, "GET", &d.sandboxes_url("default", "default"), None);
    assert_eq!(list.body["total"], 3, "{}", list.raw);
    for sb in list.body["items"].as_array().unwrap() {
        assert_eq!(sb["phase"], "Ready", "{sb}");
        let id = sb["id"].as_str().unwrap();
        let (exit, out, _) = exec_as(&d.url, &d.key, id, "echo alive", &[]);
        assert_eq!(
            (exit["exit_code"].as_i64(), out.as_str()),
            (Some(0), "alive\n")
        );
    }
    let (_, out, _) = d.exec(&ids[0], "cat /tmp/mark", &[]);
    assert_eq!(out, "before\n");

    // A sandbox that dies while the daemon is down is reported, and its host objects freed.
    d.kill9();
    let short: String = ids[2].chars().filter(|c| *c != '-').take(12).collect();
    let procs =
        std::fs::read_to_string(format!("/sys/fs/cgroup/pids/sandboxd/{short}/cgroup.procs"))
            .unwrap();
    for pid in procs.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
        // SAFETY: kill(2) on a pid read from the sandbox's cgroup.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    d.spawn();
    let dead = call(
        &d.key,
        "GET",
        &format!("{}/{}", d.sandboxes_url("default", "default"), ids[2]),
        None,
    );
    assert_eq!(dead.body["phase"], "NotReady", "{}", dead.raw);
    assert!(dead.body["status_message"]
        .as_str()
        .unwrap()
        .contains("stopped"));
    assert_eq!(d.host_objects(&[&ids[2]]), Vec::<String>::new());
    for id in &ids {
        assert_eq!(d.delete(id).status, 204);
    }
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    assert_eq!(d.host_objects(&refs), Vec::<String>::new());
}

#[test]
fn templates_are_listed_and_keepalive_timeout_audit_work() {
    let d = Daemon::start();
    let t = call(
        &d.key,
        "GET",
        &format!("{}/api/v1beta1/sandbox-templates", d.url),
        None,
    );
    let ids: Vec<&str> = t.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"sb-busybox") && ids.contains(&"sb-debian-12-python"),
        "{ids:?}"
    );
    assert!(t.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["status"] == "active"));
    let sb = d.create(json!({"name": "k", "sandbox_template_id": "sb-busybox"}));
    let id = sb["id"].as_str().unwrap();
    let base = format!("{}/{id}", d.sandboxes_url("default", "default"));
    assert_eq!(
        call(&d.key, "POST", &format!("{base}/keepalive"), None).status,
        200
    );
    let r = call(
        &d.key,
        "PUT",
        &format!("{base}/timeout"),
        Some(json!({"idle_timeout_seconds": 600})),
    );
    assert_eq!(r.body["idle_timeout_seconds"], 600);
    d.exec(id, "true", &[]);
    let a = call(&d.key, "GET", &format!("{base}/audit"), None);
    let recs = a.body["records"].as_array().unwrap();
    assert!(
        recs.iter()
            .any(|r| r["tool"] == "exec" && r["outcome"] == "success"),
        "{}",
        a.raw
    );
    // The name works in place of the id, as the SDK allows.
    assert_eq!(
        call(
            &d.key,
            "GET",
            &format!("{}/k", d.sandboxes_url("default", "default")),
            None
        )
        .body["id"],
        id
    );
}

fn start_counter(d: &Daemon, id: &str) {
    let r = dp(
        &d.url,
        &d.key,
        id,
        "/v1/processes/start",
        json!({"program": "python3", "args": ["-c", COUNTER]}),
    );
    assert_eq!(r.status, 200, "{}", r.raw);
}

#[test]
fn pause_with_memory_resumes_processes_and_without_keeps_only_files() {
    let d = Daemon::start();
    let sb = d.create(json!({"name": "p", "sandbox_template_id": "sb-debian-12-python"}));
    let id = sb["id"].as_str().unwrap();
    let base = format!("{}/{id}", d.sandboxes_url("default", "default"));
    start_counter(&d, id);
    std::thread::sleep(Duration::from_millis(600));
    let before = d.read_counter(id);
    assert!(before > 0);

    let p = call(&d.key, "POST", &format!("{base}/pause"), Some(json!({})));
    assert_eq!(
        (
            p.status,
            p.body["phase"].as_str(),
            p.body["replicas"].as_i64()
        ),
        (200, Some("Paused"), Some(0)),
        "{}",
        p.raw
    );
    assert!(p.body["connect_url"].is_null());
    // Nothing runs while paused: no container, no memory held, and exec is refused.
    let short: String = id.chars().filter(|c| *c != '-').take(12).collect();
    assert!(!std::path::Path::new(&format!("/sys/fs/cgroup/memory/sandboxd/{short}")).exists());
    let r = dp(&d.url, &d.key, id, "/v1/exec", json!({"command": "true"}));
    assert_eq!(
        (r.status, r.body["reason_code"].as_str()),
        (409, Some("failed_precondition"))
    );
    let again = call(&d.key, "POST", &format!("{base}/pause"), None);
    assert_eq!(again.status, 409);
    // The counter rewrites its file (truncate, then write): a pause can catch it in between,
    // and then the file stays empty until the resume. The value read before is a lower bound.
    let paused_at = try_read_file_on_host(&d, id).unwrap_or(before);

    let r = call(&d.key, "POST", &format!("{base}/resume"), None);
    assert_eq!(
        (r.status, r.body["phase"].as_str()),
        (200, Some("Ready")),
        "{}",
        r.raw
    );
    std::thread::sleep(Duration::from_millis(300));
    let after = d.read_counter(id);
    // The process came back with its memory: it continues from where it was, not from 1.
    assert!(
        after > paused_at,
        "counter went from {paused_at} to {after}"
    );
    assert!(
        after < paused_at + 200,
        "counter restarted? {paused_at} -> {after}"
    );

    // Without memory: the files stay, the process does not.
    let p = call(
        &d.key,
        "POST",
        &format!("{base}/pause"),
        Some(json!({"preserve_memory": false})),
    );
    assert_eq!(p.status, 200, "{}", p.raw);
    let r = call(&d.key, "POST", &format!("{base}/resume"), None);
    assert_eq!(r.status, 200, "{}", r.raw);
    let frozen = d.read_counter(id);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        d.read_counter(id),
        frozen,
        "no counter process after a cold resume"
    );
    let list = dp(&d.url, &d.key, id, "/v1/processes/list", json!({}));
    let procs = list.body["processes"].as_array().unwrap();
    assert!(
        procs
            .iter()
            .all(|p| p["name"] != "python3" && p["state"] == "exited"),
        "{}",
        list.raw
    );
}

fn try_read_file_on_host(d: &Daemon, id: &str) -> Option<u64> {
    let p = d.data_dir.join("vol").join(id).join("upper/workspace/n");
    (0..50).find_map(|_| {
        let n = std::fs::read_to_string(&p).ok()?.trim().parse().ok();
        if n.is_none() {
            std::thread::sleep(Duration::from_millis(10));
        }
        n
    })
}

fn read_file_on_host(d: &Daemon, id: &str) -> u64 {
    // The counter rewrites the file (truncate, then write): retry over an empty read.
    let p = d.data_dir.join("vol").join(id).join("upper/workspace/n");
    for _ in 0..100 {
        if let Ok(n) = std::fs::read_to_string(&p)
            .unwrap_or_default()
            .trim()
            .parse()
        {
            return n;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("no counter value at {}", p.display());
}

#[test]
fn memory_snapshots_restore_as_new_fork_and_roll_back() {
    let d = Daemon::start();
    let sb = d.create(json!({"name": "origin", "sandbox_template_id": "sb-debian-12-python"}));
    let id = sb["id"].as_str().unwrap();
    let root = d.sandboxes_url("default", "default");
    let p = format!("{}/api/v1beta1/orgs/default/projects/default", d.url);
    start_counter(&d, id);
    d.exec(id, "echo v1 > /workspace/file", &[]);
    std::thread::sleep(Duration::from_millis(500));

    let s = call(
        &d.key,
        "POST",
        &format!("{root}/{id}/snapshots"),
        Some(json!({"name": "snap-1", "include_memory": true})),
    );
    assert_eq!(
        (s.status, s.body["status"].as_str()),
        (202, Some("Ready")),
        "{}",
        s.raw
    );
    let snap_id = s.body["id"].as_str().unwrap().to_string();
    assert!(s.body["size_bytes"].as_u64().unwrap() > 0);
    let at_snapshot = read_file_on_host(&d, id);
    // Names are unique per project.
    let dup = call(
        &d.key,
        "POST",
        &format!("{root}/{id}/snapshots"),
        Some(json!({"name": "snap-1"})),
    );
    assert_eq!(dup.status, 409, "{}", dup.raw);
    let bad = call(
        &d.key,
        "POST",
        &format!("{root}/{id}/snapshots"),
        Some(json!({"name": "Bad_Name"})),
    );
    assert_eq!(
        (bad.status, bad.body["field"].as_str()),
        (400, Some("name"))
    );

    // Restore as a new sandbox: same memory (the count continues from the snapshot), new identity.
    let r = call(
        &d.key,
        "POST",
        &root,
        Some(json!({"name": "restored", "from_snapshot": snap_id})),
    );
    assert_eq!(
        (r.status, r.body["phase"].as_str()),
        (201, Some("Ready")),
        "{}",
        r.raw
    );
    let rid = r.body["id"].as_str().unwrap().to_string();
    assert_ne!(rid, id);
    std::thread::sleep(Duration::from_millis(300));
    let n = d.read_counter(&rid);
    assert!(
        n > at_snapshot && n < at_snapshot + 100,
        "restored counter {n}, snapshot at {at_snapshot}"
    );
    let (_, host, _) = d.exec(&rid, "hostname", &[]);
    assert_eq!(host, "restored\n");

    // Fork: both copies continue independently.
    let f = call(
        &d.key,
        "POST",
        &format!("{root}/{id}/fork"),
        Some(json!({"name": "forked"})),
    );
    assert_eq!(f.status, 201, "{}", f.raw);
    let fid = f.body["id"].as_str().unwrap().to_string();
    d.exec(&fid, "echo fork-only > /workspace/file", &[]);
    let (_, orig_file, _) = d.exec(id, "cat /workspace/file", &[]);
    assert_eq!(orig_file, "v1\n");
    let (a1, b1) = (d.read_counter(id), d.read_counter(&fid));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        d.read_counter(id) > a1 && d.read_counter(&fid) > b1,
        "both keep counting"
    );
    let fork_twice = call(
        &d.key,
        "POST",
        &format!("{root}/{id}/fork"),
        Some(json!({"name": "forked"})),
    );
    assert_eq!(fork_twice.status, 409);

    // In-place restore: back to the snapshot's files and count; id and name stay.
    d.exec(id, "echo v2 > /workspace/file", &[]);
    std::thread::sleep(Duration::from_millis(500));
    let rb = call(
        &d.key,
        "POST",
        &format!("{root}/{id}/rollback"),
        Some(json!({"snapshot_id": snap_id})),
    );
    assert_eq!(
        (rb.status, rb.body["id"].as_str()),
        (200, Some(id)),
        "{}",
        rb.raw
    );
    let (_, file, _) = d.exec(id, "cat /workspace/file", &[]);
    assert_eq!(file, "v1\n");
    let n = d.read_counter(id);
    assert!(
        n < at_snapshot + 100,
        "rolled back counter {n}, snapshot at {at_snapshot}"
    );

    // Listing and deletion: deleting the snapshot leaves sandboxes restored from it running.
    let l = call(&d.key, "GET", &format!("{p}/snapshots"), None);
    assert!(l.body["total"].as_u64().unwrap() >= 2, "{}", l.raw);
    assert_eq!(
        call(&d.key, "DELETE", &format!("{p}/snapshots/{snap_id}"), None).status,
        204
    );
    assert_eq!(
        call(&d.key, "GET", &format!("{p}/snapshots/{snap_id}"), None).status,
        404
    );
    let again = call(
        &d.key,
        "POST",
        &root,
        Some(json!({"name": "too-late", "from_snapshot": snap_id})),
    );
    assert_eq!(again.status, 404);
    assert!(d.read_counter(&rid) > 0);
    // A sandbox can be deleted without affecting its snapshots.
    let keep = call(
        &d.key,
        "POST",
        &format!("{root}/{id}/snapshots"),
        Some(json!({"name": "keep"})),
    );
    assert_eq!(keep.body["status"], "Ready");
    assert_eq!(d.delete(id).status, 204);
    let k = call(
        &d.key,
        "POST",
        &root,
        Some(json!({"name": "from-keep", "from_snapshot": keep.body["id"]})),
    );
    assert_eq!(k.status, 201, "{}", k.raw);
    let (_, file, _) = d.exec(k.body["id"].as_str().unwrap(), "cat /workspace/file", &[]);
    assert_eq!(file, "v1\n");
}

#[test]
fn snapshot_failure_modes_expiry_concurrency_and_not_ready() {
    let mut d = Daemon::start_with(&["--snapshot-reaper-secs=1"]);
    let sb = d.create(json!({"name": "s", "sandbox_template_id": "sb-busybox"}));
    let id = sb["id"].as_str().unwrap().to_string();
    let root = d.sandboxes_url("default", "default");
    let p = format!("{}/api/v1beta1/orgs/default/projects/default", d.url);

    // Expired: a 1 s retention restores as 404 once past, and the reaper removes it.
    let s = call(
        &d.key,
        "POST",
        &format!("{root}/{id}/snapshots"),
        Some(json!({"retain_for": "1s"})),
    );
    assert_eq!(s.status, 202, "{}", s.raw);
    assert!(s.body["expires_at"].is_string());
    let sid = s.body["id"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        call(&d.key, "GET", &format!("{p}/snapshots/{sid}"), None).status,
        404
    );
    let r = call(
        &d.key,
        "POST",
        &root,
        Some(json!({"name": "late", "from_snapshot": sid})),
    );
    assert_eq!(r.status, 404, "{}", r.raw);
    let bad = call(
        &d.key,
        "POST",
        &format!("{root}/{id}/snapshots"),
        Some(json!({"retain_for": "soon"})),
    );
    assert_eq!(
        (bad.status, bad.body["field"].as_str()),
        (400, Some("retain_for"))
    );

    // Concurrent: while one capture (with memory) is in flight, a second is refused with 409.
    let (url, key, sid2) = (root.clone(), d.key.clone(), id.clone());
    let first = std::thread::spawn(move || {
        call(
            &key,
            "POST",
            &format!("{url}/{sid2}/snapshots"),
            Some(json!({"include_memory": true})),
        )
    });
    let mut saw_conflict = false;
    for _ in 0..200 {
        if first.is_finished() {
            break;
        }
        let r = call(
            &d.key,
            "POST",
            &format!("{root}/{id}/snapshots"),
            Some(json!({})),
        );
        if r.status == 409 {
            saw_conflict = true;
            assert!(
                // Refused either by the one-operation-at-a-time rule or because the
                // sandbox is mid-capture (Snapshotting): both name the conflict.
                r.raw.contains("in progress") || r.raw.contains("snapshotting"),
                "{}",
                r.raw
            );
            break;
        }
        assert_eq!(r.status, 202, "{}", r.raw);
    }
    // Whichever of the two racing requests lost got the 409; the other captured.
    let f = first.join().unwrap();
    assert!(f.status == 202 || f.status == 409, "{}", f.raw);
    assert!(
        saw_conflict || f.status == 409,
        "no concurrent request was refused"
    );

    // Only a Ready sandbox can be snapshotted: a paused one is a 409 naming its state.
    assert_eq!(
        call(
            &d.key,
            "POST",
            &format!("{root}/{id}/pause"),
            Some(json!({}))
        )
        .status,
        200
    );
    let r = call(
        &d.key,
        "POST",
        &format!("{root}/{id}/snapshots"),
        Some(json!({})),
    );
    assert_eq!(r.status, 409);
    assert!(r.raw.contains("paused"), "{}", r.raw);

    // A capture cut by a daemon crash is Failed after restart, never Ready, and not restorable.
    d.kill9();
    let meta = d.data_dir.join("meta.db");
    let fake = uuid_like();
    let rec = format!(
        r#"{{"id":"{fake}","tenant":{{"org":"default","project":"default"}},"sandbox_id":"{id}","name":null,"status":"Running","include_memory":true,"error_message":null,"size_bytes":null,"paused_ms":null,"template_id":"sb-busybox","image":"x","resources":{{"cpu_millis":1000,"memory_mib":1024,"disk_mib":10240}},"env":[],"region":"local","created_by":null,"created_at":"2026-01-01T00:00:00Z","updated_at":"2026-01-01T00:00:00Z","expires_at":null}}"#
    );
    let sql = format!(
        "INSERT INTO snapshots (id, org, project, sandbox_id, name, created_at, record) VALUES ('{fake}','default','default','{id}',NULL,'2026-01-01T00:00:00Z','{rec}');"
    );
    let out = std::process::Command::new("sqlite3")
        .arg(&meta)
        .arg(sql)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.spawn();
    let root = d.sandboxes_url("default", "default");
    let p = format!("{}/api/v1beta1/orgs/default/projects/default", d.url);
    let g = call(&d.key, "GET", &format!("{p}/snapshots/{fake}"), None);
    assert_eq!(
        (g.status, g.body["status"].as_str()),
        (200, Some("Failed")),
        "{}",
        g.raw
    );
    assert!(g.body["error_message"].is_string());
    let r = call(
        &d.key,
        "POST",
        &root,
        Some(json!({"name": "from-failed", "from_snapshot": fake})),
    );
    assert_eq!(r.status, 409, "{}", r.raw);
    assert!(r.raw.contains("Failed"));
}

fn uuid_like() -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "{:08x}-0000-4000-8000-{:012x}",
        (n >> 32) as u32,
        n as u64 & 0xffff_ffff_ffff
    )
}

/// NeevCloud preview ports: expose (idempotent; a new slug rotates the URL), list, revoke;
/// the preview URL needs no key; the agent's port is reserved; a taken slug is a 409.
#[test]
fn exposed_ports_serve_a_preview_url_until_revoked() {
    let d = Daemon::start();
    let sb = d.create(json!({"name": "web", "sandbox_template_id": "sb-debian-12-python"}));
    let id = sb["id"].as_str().unwrap();
    common::serve_srv(&d, id, "mkdir -p /srv && echo hello-port > /srv/hi.txt");
    let ports = format!("{}/{id}/ports", d.sandboxes_url("default", "default"));

    for (body, field) in [
        (json!({}), "port"),
        (json!({"port": 0}), "port"),
        (json!({"port": 7777}), "port"),
        (json!({"port": "80"}), "port"),
        (json!({"port": 8000, "slug": "Bad_Slug!"}), "slug"),
        (json!({"port": 8000, "slug": "short"}), "slug"),
    ] {
        let r = call(&d.key, "POST", &ports, Some(body.clone()));
        assert_eq!(
            (r.status, r.body["field"].as_str()),
            (400, Some(field)),
            "{body}: {}",
            r.raw
        );
    }

    let r = call(&d.key, "POST", &ports, Some(json!({"port": 8000})));
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(r.body["port"], 8000);
    let url = r.body["preview_url"].as_str().unwrap().to_string();
    assert!(url.contains(r.body["slug"].as_str().unwrap()), "{}", r.raw);
    // Exposing it again changes nothing.
    let again = call(&d.key, "POST", &ports, Some(json!({"port": 8000})));
    assert_eq!(again.body["preview_url"], url.as_str());
    let listed = call(&d.key, "GET", &ports, None);
    assert_eq!(
        listed.body["ports"].as_array().unwrap().len(),
        1,
        "{}",
        listed.raw
    );
    assert_eq!(listed.body["ports"][0]["preview_url"], url.as_str());

    let got = common::get_public_ok(&format!("{url}hi.txt"));
    assert_eq!(got, (200, "hello-port\n".to_string()), "{}", d.log());

    // A chosen slug rotates the URL; the old one stops at once. A slug in use is a 409.
    let r = call(
        &d.key,
        "POST",
        &ports,
        Some(json!({"port": 8000, "slug": "my-preview-1234"})),
    );
    assert_eq!(r.status, 200, "{}", r.raw);
    let rotated = r.body["preview_url"].as_str().unwrap().to_string();
    assert!(rotated.ends_with("/p/my-preview-1234/"), "{rotated}");
    assert_eq!(common::get_public(&format!("{url}hi.txt")).0, 404);
    assert_eq!(common::get_public(&format!("{rotated}hi.txt")).0, 200);
    let r = call(
        &d.key,
        "POST",
        &ports,
        Some(json!({"port": 8001, "slug": "my-preview-1234"})),
    );
    assert_eq!(r.status, 409, "{}", r.raw);

    // An upgrade (as WebSocket does) becomes a byte tunnel: a server answering 101, then
    // echoing in upper case.
    let upgrade_server = r#"import socket, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 8002)); s.listen()
def h(c):
    buf = b''
    while b'\r\n\r\n' not in buf:
        d = c.recv(4096)
        if not d: return
        buf += d
    c.sendall(b'HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n')
    while True:
        d = c.recv(4096)
        if not d: break
        c.sendall(d.upper())
while True:
    c, _ = s.accept(); threading.Thread(target=h, args=(c,)).start()
"#;
    let r = dp(
        &d.url,
        &d.key,
        id,
        "/v1/processes/start",
        json!({"program": "python3", "args": ["-c", upgrade_server]}),
    );
    assert_eq!(r.status, 200, "{}", r.raw);
    let r = call(&d.key, "POST", &ports, Some(json!({"port": 8002})));
    let tunnel = r.body["preview_url"].as_str().unwrap().to_string();
    let path = tunnel
        .split_once("/p/")
        .map(|(_, p)| format!("/p/{p}"))
        .unwrap();
    let addr = d.url.trim_start_matches("http://").to_string();
    let mut answer = String::new();
    for _ in 0..50 {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(&addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            c,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"
        )
        .unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && c.read(&mut b).unwrap_or(0) == 1 {
            head.push(b[0]);
        }
        if !head.starts_with(b"HTTP/1.1 101") {
            answer = String::from_utf8_lossy(&head).into_owned();
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        c.write_all(b"ping over the tunnel").unwrap();
        let mut got = [0u8; 20];
        c.read_exact(&mut got).unwrap();
        answer = String::from_utf8_lossy(&got).into_owned();
        break;
    }
    assert_eq!(answer, "PING OVER THE TUNNEL", "{}", d.log());

    // Another org sees nothing; revoking is immediate and idempotent.
    let other = d.create_key("acme", None);
    let r = call(
        &other,
        "GET",
        &format!(
            "{}/api/v1beta1/orgs/acme/projects/default/sandboxes/{id}/ports",
            d.url
        ),
        None,
    );
    assert_eq!(r.status, 404, "{}", r.raw);
    for _ in 0..2 {
        let r = call(&d.key, "DELETE", &format!("{ports}/8000"), None);
        assert_eq!(r.status, 204, "{}", r.raw);
    }
    assert_eq!(common::get_public(&format!("{rotated}hi.txt")).0, 404);
    let listed = call(&d.key, "GET", &ports, None);
    assert_eq!(
        listed.body["ports"].as_array().unwrap().len(),
        1,
        "only 8002 left"
    );
    assert_eq!(listed.body["ports"][0]["port"], 8002);
    let r = call(&d.key, "DELETE", &format!("{ports}/8002"), None);
    assert_eq!(r.status, 204, "{}", r.raw);
    let listed = call(&d.key, "GET", &ports, None);
    assert_eq!(listed.body, json!({"ports": []}));
}

/// GET `path` from the daemon with a given `Host` header; returns (status, body).
fn get_with_host(d: &Daemon, host: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let addr = d.url.trim_start_matches("http://");
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        c,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    c.read_to_string(&mut raw).unwrap();
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// With `--preview-domain`, preview URLs are `<slug>.<domain>`: requests for such a host go
/// to the sandbox port, with their whole path; the API keeps answering on its own host.
#[test]
fn preview_urls_on_a_wildcard_domain() {
    let d = Daemon::start_with(&["--preview-domain=Preview.Test."]);
    let sb = d.create(json!({"name": "web2", "sandbox_template_id": "sb-debian-12-python"}));
    let id = sb["id"].as_str().unwrap();
    common::serve_srv(&d, id, "mkdir -p /srv/sub && echo deep > /srv/sub/x.txt");
    let ports = format!("{}/{id}/ports", d.sandboxes_url("default", "default"));
    let r = call(
        &d.key,
        "POST",
        &ports,
        Some(json!({"port": 8000, "slug": "wild-card-1"})),
    );
    assert_eq!(r.status, 200, "{}", r.raw);
    let port = d.url.rsplit_once(':').unwrap().1;
    assert_eq!(
        r.body["preview_url"],
        format!("http://wild-card-1.preview.test:{port}/").as_str()
    );
    let host = format!("wild-card-1.preview.test:{port}");
    let mut got = (0, String::new());
    for _ in 0..50 {
        got = get_with_host(&d, &host, "/sub/x.txt");
        if got.0 == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(got, (200, "deep\n".to_string()), "{}", d.log());
    assert_eq!(
        get_with_host(&d, &format!("other-slug-9.preview.test:{port}"), "/").0,
        404
    );
    // The API on its own host is untouched.
    assert_eq!(
        get_with_host(&d, &format!("127.0.0.1:{port}"), "/healthz"),
        (200, "ok\n".to_string())
    );
}

/// neevai retries a create whose answer it did not get in time: the same key sending the same
/// create again gets the sandbox it already made (201, same id), not a 409 for its own name;
/// another key, or another sizing, still gets the 409.
#[test]
fn a_retried_create_returns_the_sandbox_already_made() {
    let d = Daemon::start();
    let body = json!({"name": "retried", "sandbox_template_id": "sb-busybox"});
    let first = d.create(body.clone());
    let url = d.sandboxes_url("default", "default");
    let again = call(&d.key, "POST", &url, Some(body.clone()));
    assert_eq!(again.status, 201, "{}", again.raw);
    assert_eq!(again.body["id"], first["id"]);
    let other = json!({"name": "retried", "sandbox_template_id": "sb-debian-12-python"});
    assert_eq!(call(&d.key, "POST", &url, Some(other)).status, 409);
    let bigger = json!({"name": "retried", "sandbox_template_id": "sb-busybox",
                        "resources": {"memory_gb": 2}});
    assert_eq!(call(&d.key, "POST", &url, Some(bigger)).status, 409);
    let key2 = d.create_key("default", Some("default"));
    assert_eq!(call(&key2, "POST", &url, Some(body)).status, 409);
    let list = call(&d.key, "GET", &url, None);
    assert_eq!(
        list.body["items"].as_array().unwrap().len(),
        1,
        "{}",
        list.raw
    );
}
