//! Leap0 v1 dialect, black-box against the real daemon: a table of bad requests, the org
//! limit (429), node capacity (503), and one sandbox seen through both dialects.

mod common;

use common::{call, call_raw, get_public, Daemon};
use serde_json::{json, Value};

fn l0(d: &Daemon, method: &str, path: &str, body: Option<Value>) -> common::Resp {
    call(&d.key, method, &format!("{}{path}", d.url), body)
}

fn create(d: &Daemon, body: Value) -> Value {
    let r = l0(d, "POST", "/v1/sandbox", Some(body));
    assert_eq!(r.status, 201, "create: {}\n{}", r.raw, d.log());
    assert_eq!(r.body["state"], "running", "{}", r.raw);
    r.body
}

#[test]
fn bad_requests_get_leap0_errors_naming_the_field() {
    let d = Daemon::start();
    let sb = create(&d, json!({"template_name": "sb-busybox"}));
    let id = sb["id"].as_str().unwrap();
    let snap = l0(
        &d,
        "POST",
        &format!("/v1/sandbox/{id}/snapshot/create"),
        Some(json!({"name": "taken"})),
    );
    assert_eq!(snap.status, 201, "{}", snap.raw);

    let bb = |extra: Value| {
        let mut b = json!({"template_name": "sb-busybox"});
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    };
    let sbp = |p: &str| format!("/v1/sandbox/{id}{p}");
    // (method, path, body, status, field)
    let cases: Vec<(&str, String, Value, u16, &str)> = vec![
        (
            "POST",
            "/v1/sandbox".into(),
            bb(json!({"timeout": 0})),
            400,
            "timeout",
        ),
        (
            "POST",
            "/v1/sandbox".into(),
            bb(json!({"timeout": 28_801})),
            400,
            "timeout",
        ),
        (
            "POST",
            "/v1/sandbox".into(),
            bb(json!({"timeout_min": 0})),
            400,
            "timeout_min",
        ),
        (
            "POST",
            "/v1/sandbox".into(),
            bb(json!({"timeout_min": 481})),
            400,
            "timeout_min",
        ),
        (
            "POST",
            "/v1/sandbox".into(),
            bb(json!({"timeout": 60, "timeout_min": 1})),
            400,
            "timeout_min",
        ),
        (
            "POST",
            "/v1/sandbox".into(),
            bb(json!({"timeout": "300"})),
            400,
            "timeout",
        ),
        (
            "POST",
            "/v1/sandbox".into(),
            bb(json!({"vcpu": "two"})),
            400,
            "vcpu",
        ),
        (
            "POST",
            "/v1/sandbox".into(),
            bb(json!({"vcpu": 9})),
            400,
            "vcpu",
        ),
        (
            "POST",
            "/v1/sandbox".into(),
            bb(json!({"memory": 1023})),
            400,
            "memory",
        ),
        (
            "POST",
            "/v1/sandbox".into(),
            bb(json!({"memory_mib": 256})),
            400,
            "memory_mib",
        ),
        (
            "POST",
            "/v1/sandbox".into(),
            bb(json!({"memory": 1024, "memory_mib": 1024})),
            400,
            "memory_mib",
        ),
        (
            "POST",
            "/v1/sandbox".into(),
            bb(json!({"auto_pause": "yes"})),
            400,
            "auto_pause",
        ),
        (
            "POST",
            "/v1/sandbox".into(),
            bb(json!({"env_vars": {"1BAD": "x"}})),
            400,
            "env_vars.1BAD",
        ),
        (
            "POST",
            "/v1/sandbox".into(),
            bb(json!({"bogus": 1})),
            400,
            "bogus",
        ),
        (
            "POST",
            "/v1/sandbox".into(),
            json!({"template_name": 5}),
            400,
            "template_name",
        ),
        (
            "POST",
            "/v1/sandbox".into(),
            json!({"template_name": "system/nope:1"}),
            400,
            "template_name",
        ),
        (
            "POST",
            "/v1/sandbox".into(),
            bb(json!({"network_policy": {"mode": "open"}})),
            400,
            "network_policy.mode",
        ),
        (
            "POST",
            "/v1/sandbox".into(),
            bb(json!({"network_policy": {"mode": "custom",
            "allow_domains": vec!["example.com"; 51]}})),
            400,
            "network_policy.allow_domains",
        ),
        (
            "POST",
            "/v1/sandbox".into(),
            bb(json!({"network_policy": {"mode": "custom",
            "allow_domains": ["ok.example.com", "no_underscores.example.com"]}})),
            400,
            "network_policy.allow_domains[1]",
        ),
        (
            "POST",
            "/v1/sandbox".into(),
            bb(json!({"network_policy": {"mode": "custom",
            "allow_cidrs": ["10.0.0.0/33"]}})),
            400,
            "network_policy.allow_cidrs[0]",
        ),
        (
            "POST",
            "/v1/sandbox".into(),
            bb(json!({"network_policy": {"mode": "custom",
            "allow_cidrs": ["10.0.0.0/8", "300.1.1.1/32"]}})),
            400,
            "network_policy.allow_cidrs[1]",
        ),
        (
            "POST",
            "/v1/sandbox".into(),
            bb(json!({"network_policy": {"mode": "custom",
            "allow_cidrs": vec!["10.0.0.0/8"; 11]}})),
            400,
            "network_policy.allow_cidrs",
        ),
        (
            "POST",
            "/v1/sandbox".into(),
            bb(json!({"network_policy": {"mode": "custom",
            "transforms": vec![json!({"domain": "api.example.com"}); 21]}})),
            400,
            "network_policy.transforms",
        ),
        (
            "POST",
            "/v1/sandbox".into(),
            bb(json!({"network_policy": {"mode": "deny-all",
            "allow_domains": ["example.com"]}})),
            400,
            "network_policy.allow_domains",
        ),
        (
            "POST",
            "/v1/sandbox".into(),
            bb(json!({"mounts": [{"type": "object-storage"}]})),
            400,
            "mounts",
        ),
        (
            "POST",
            sbp("/snapshot/create"),
            json!({"name": "bad name!"}),
            400,
            "name",
        ),
        (
            "POST",
            sbp("/snapshot/create"),
            json!({"name": ""}),
            400,
            "name",
        ),
        (
            "POST",
            sbp("/snapshot/create"),
            json!({"name": "x".repeat(65)}),
            400,
            "name",
        ),
        (
            "POST",
            sbp("/snapshot/create"),
            json!({"name": "-leading-dash"}),
            400,
            "name",
        ),
        (
            "POST",
            sbp("/snapshot/create"),
            json!({"name": "taken"}),
            409,
            "",
        ),
        (
            "POST",
            sbp("/snapshot/create"),
            json!({"kill_sandbox_after": "no"}),
            400,
            "kill_sandbox_after",
        ),
        (
            "POST",
            "/v1/snapshot/restore".into(),
            json!({"snapshot_name": "never-made"}),
            404,
            "",
        ),
        (
            "POST",
            "/v1/snapshot/resume".into(),
            json!({"snapshot_name": "taken", "timeout_min": 481}),
            400,
            "timeout_min",
        ),
        (
            "POST",
            "/v1/snapshot/resume".into(),
            json!({"snapshot_name": "taken", "timeout_min": 0}),
            400,
            "timeout_min",
        ),
        (
            "POST",
            "/v1/snapshot/restore".into(),
            json!({"snapshot_name": 7}),
            400,
            "snapshot_name",
        ),
        (
            "POST",
            "/v1/snapshot/restore".into(),
            json!({}),
            400,
            "snapshot_name",
        ),
        (
            "POST",
            "/v1/snapshot/restore".into(),
            json!({"snapshot_name": "taken",
            "network_policy": {"mode": "custom", "allow_cidrs": ["nope"]}}),
            400,
            "network_policy.allow_cidrs[0]",
        ),
        (
            "DELETE",
            "/v1/snapshot/never-made".into(),
            Value::Null,
            404,
            "",
        ),
        (
            "POST",
            sbp("/process/execute"),
            json!({"command": ""}),
            400,
            "command",
        ),
        (
            "POST",
            sbp("/process/execute"),
            json!({"command": "true", "timeout": 0}),
            400,
            "timeout",
        ),
        (
            "POST",
            sbp("/process/execute"),
            json!({"cmd": "true"}),
            400,
            "cmd",
        ),
        (
            "POST",
            sbp("/filesystem/read-file"),
            json!({"path": "/nope"}),
            404,
            "",
        ),
        (
            "POST",
            sbp("/filesystem/read-file"),
            json!({"path": "/etc/hostname", "head": 1, "tail": 1}),
            400,
            "tail",
        ),
        (
            "POST",
            sbp("/filesystem/mkdir"),
            json!({"path": "/tmp/x", "permissions": "999"}),
            400,
            "permissions",
        ),
        (
            "POST",
            sbp("/filesystem/edit-file"),
            json!({"path": "/etc/hostname", "edits": []}),
            400,
            "edits",
        ),
        (
            "POST",
            sbp("/filesystem/tree"),
            json!({"path": "/", "max_depth": 0}),
            400,
            "max_depth",
        ),
        (
            "GET",
            format!("/v1/sandbox/{}", uuid_like()),
            Value::Null,
            404,
            "",
        ),
        (
            "GET",
            "/v1/sandbox/not-a-sandbox".into(),
            Value::Null,
            404,
            "",
        ),
        (
            "GET",
            "/v1/sandboxes?page-size=101".into(),
            Value::Null,
            400,
            "page-size",
        ),
        (
            "GET",
            "/v1/sandboxes?state=bogus".into(),
            Value::Null,
            400,
            "state",
        ),
        (
            "GET",
            "/v1/snapshots?order-by=up".into(),
            Value::Null,
            400,
            "order-by",
        ),
    ];
    assert!(cases.len() >= 15);
    for (method, path, body, status, field) in cases {
        let r = l0(&d, method, &path, (!body.is_null()).then_some(body.clone()));
        assert_eq!(r.status, status, "{method} {path} {body}: {}", r.raw);
        assert!(
            r.body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{method} {path}: {}",
            r.raw
        );
        if status == 400 {
            assert_eq!(
                r.body["errors"][0]["field"], field,
                "{method} {path} {body}: {}",
                r.raw
            );
            assert!(r.body["errors"][0]["error"].is_string(), "{}", r.raw);
        }
    }

    // Malformed JSON, and no key at all.
    let r = call_raw(
        Some(&d.key),
        "POST",
        &format!("{}/v1/sandbox", d.url),
        b"{nope",
    );
    assert_eq!(r.status, 400, "{}", r.raw);
    assert_eq!(r.body["errors"][0]["field"], "body");
    let r = call_raw(None, "GET", &format!("{}/v1/sandboxes", d.url), b"");
    assert_eq!(r.status, 401);
    assert!(r.body["message"].is_string());
    let r = call("not-a-key", "GET", &format!("{}/v1/sandboxes", d.url), None);
    assert_eq!(r.status, 401);
    // Nothing was created by the bad requests.
    let list = l0(&d, "GET", "/v1/sandboxes", None);
    assert_eq!(list.body["total_items"], 1, "{}", list.raw);
}

fn uuid_like() -> String {
    "00000000-0000-4000-8000-000000000000".into()
}

#[test]
fn org_sandbox_limit_is_429() {
    let d = Daemon::start_with(&["--max-sandboxes-per-org=1"]);
    let sb = create(&d, json!({"template_name": "sb-busybox", "memory": 512}));
    let id = sb["id"].as_str().unwrap();
    let r = l0(
        &d,
        "POST",
        "/v1/sandbox",
        Some(json!({"template_name": "sb-busybox", "memory": 512})),
    );
    assert_eq!(r.status, 429, "{}", r.raw);
    assert!(r.body["message"].as_str().unwrap().contains("limit"));
    // A restore is a new sandbox: the same limit.
    let s = l0(
        &d,
        "POST",
        &format!("/v1/sandbox/{id}/snapshot/create"),
        Some(json!({"name": "one"})),
    );
    assert_eq!(s.status, 201, "{}", s.raw);
    let r = l0(
        &d,
        "POST",
        "/v1/snapshot/restore",
        Some(json!({"snapshot_name": "one"})),
    );
    assert_eq!(r.status, 429, "{}", r.raw);
    // The NeevCloud dialect counts the same sandboxes.
    let r = call(
        &d.key,
        "POST",
        &d.sandboxes_url("default", "default"),
        Some(json!({"name": "n", "sandbox_template_id": "sb-busybox"})),
    );
    assert_eq!(r.status, 429, "{}", r.raw);
    assert_eq!(
        l0(&d, "DELETE", &format!("/v1/sandbox/{id}"), None).status,
        204
    );
    let r = l0(
        &d,
        "POST",
        "/v1/snapshot/restore",
        Some(json!({"snapshot_name": "one"})),
    );
    assert_eq!(r.status, 201, "{}", r.raw);
}

#[test]
fn node_capacity_is_503() {
    let d = Daemon::start_with(&["--node-memory-mib=1024", "--node-cpu-millis=2000"]);
    let r = l0(
        &d,
        "POST",
        "/v1/sandbox",
        Some(json!({"template_name": "sb-busybox", "memory": 2048})),
    );
    assert_eq!(r.status, 503, "{}", r.raw);
    assert!(r.body["message"].as_str().unwrap().contains("capacity"));
    let r = l0(
        &d,
        "POST",
        "/v1/sandbox",
        Some(json!({"template_name": "sb-busybox", "vcpu": 3, "memory": 512})),
    );
    assert_eq!(r.status, 503, "{}", r.raw);
    let first = create(
        &d,
        json!({"template_name": "sb-busybox", "memory": 768, "vcpu": 1}),
    );
    let r = l0(
        &d,
        "POST",
        "/v1/sandbox",
        Some(json!({"template_name": "sb-busybox", "memory": 512})),
    );
    assert_eq!(r.status, 503, "memory is committed: {}", r.raw);
    // A stopped sandbox holds no memory; starting it again must fit.
    let id = first["id"].as_str().unwrap();
    let r = l0(&d, "POST", &format!("/v1/sandbox/{id}/stop"), None);
    assert_eq!(r.status, 200, "{}", r.raw);
    let other = create(&d, json!({"template_name": "sb-busybox", "memory": 512}));
    let r = l0(&d, "POST", &format!("/v1/sandbox/{id}/start"), None);
    assert_eq!(r.status, 503, "{}", r.raw);
    let oid = other["id"].as_str().unwrap();
    assert_eq!(
        l0(&d, "DELETE", &format!("/v1/sandbox/{oid}/"), None).status,
        204
    );
    let r = l0(&d, "POST", &format!("/v1/sandbox/{id}/start"), None);
    assert_eq!(r.status, 200, "{}", r.raw);
    assert_eq!(r.body["state"], "running");
}

#[test]
fn one_sandbox_through_both_dialects() {
    let d = Daemon::start();
    // Created in NeevCloud, snapshotted in Leap0.
    let n = d.create(json!({"name": "from-neev", "sandbox_template_id": "sb-busybox"}));
    let nid = n["id"].as_str().unwrap();
    let (_, out, _) = d.exec(nid, "echo neev > /workspace/f", &[]);
    assert_eq!(out, "");
    let seen = l0(&d, "GET", &format!("/v1/sandbox/{nid}/"), None);
    assert_eq!(seen.status, 200, "{}", seen.raw);
    assert_eq!(seen.body["state"], "running");
    assert_eq!(seen.body["template_id"], "sb-busybox");
    assert_eq!(seen.body["name"], "from-neev");
    let snap = l0(
        &d,
        "POST",
        &format!("/v1/sandbox/{nid}/snapshot/create"),
        Some(json!({"name": "cross"})),
    );
    assert_eq!(snap.status, 201, "{}", snap.raw);
    let sid = snap.body["id"].as_str().unwrap();
    let got = call(
        &d.key,
        "GET",
        &format!(
            "{}/api/v1beta1/orgs/default/projects/default/snapshots/{sid}",
            d.url
        ),
        None,
    );
    assert_eq!(got.status, 200, "{}", got.raw);
    assert_eq!(got.body["sandbox_id"], nid);
    assert_eq!(got.body["name"], "cross");

    // Paused in NeevCloud: Leap0 sees `paused`; a Leap0 request resumes it.
    let p = call(
        &d.key,
        "POST",
        &format!("{}/{nid}/pause", d.sandboxes_url("default", "default")),
        Some(json!({})),
    );
    assert_eq!(p.status, 200, "{}", p.raw);
    assert_eq!(
        l0(&d, "GET", &format!("/v1/sandbox/{nid}"), None).body["state"],
        "paused"
    );
    let r = l0(
        &d,
        "POST",
        &format!("/v1/sandbox/{nid}/process/execute"),
        Some(json!({"command": "cat /workspace/f"})),
    );
    assert_eq!(r.body["stdout"], "neev\n", "{}", r.raw);
    let nv = call(
        &d.key,
        "GET",
        &format!("{}/{nid}", d.sandboxes_url("default", "default")),
        None,
    );
    assert_eq!(nv.body["phase"], "Ready", "{}", nv.raw);

    // Created in Leap0, restored from a Leap0 snapshot in NeevCloud, listed in both.
    let l = create(
        &d,
        json!({"template_name": "sb-busybox", "timeout_min": 30}),
    );
    let lid = l["id"].as_str().unwrap();
    let nv = call(
        &d.key,
        "GET",
        &format!("{}/{lid}", d.sandboxes_url("default", "default")),
        None,
    );
    assert_eq!(nv.status, 200, "{}", nv.raw);
    assert_eq!(nv.body["phase"], "Ready");
    let restored = d.create(json!({"name": "restored", "restore": sid}));
    let rid = restored["id"].as_str().unwrap();
    let (_, out, _) = d.exec(rid, "cat /workspace/f", &[]);
    assert_eq!(out, "neev\n");
    let list = l0(&d, "GET", "/v1/sandboxes?page-size=100", None);
    let ids: Vec<&str> = list.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    for id in [nid, lid, rid] {
        assert!(ids.contains(&id), "{id} missing from {}", list.raw);
    }
    let neev_list = call(
        &d.key,
        "GET",
        &format!("{}?limit=100", d.sandboxes_url("default", "default")),
        None,
    );
    assert_eq!(neev_list.body["total"], 3, "{}", neev_list.raw);

    // Deleted in Leap0: gone in NeevCloud; the snapshot is listed by both until deleted.
    assert_eq!(
        l0(&d, "DELETE", &format!("/v1/sandbox/{nid}"), None).status,
        204
    );
    let gone = call(
        &d.key,
        "GET",
        &format!("{}/{nid}", d.sandboxes_url("default", "default")),
        None,
    );
    assert_eq!(gone.status, 404);
    let snaps = l0(&d, "GET", "/v1/snapshots?query=cross", None);
    assert_eq!(snaps.body["total_items"], 1, "{}", snaps.raw);
    assert_eq!(
        l0(&d, "DELETE", &format!("/v1/snapshot/{sid}"), None).status,
        204
    );
    let got = call(
        &d.key,
        "GET",
        &format!(
            "{}/api/v1beta1/orgs/default/projects/default/snapshots/{sid}",
            d.url
        ),
        None,
    );
    assert_eq!(got.status, 404);
}

#[test]
fn another_orgs_key_sees_nothing() {
    let d = Daemon::start();
    let sb = create(&d, json!({"template_name": "sb-busybox"}));
    let id = sb["id"].as_str().unwrap();
    let s = l0(
        &d,
        "POST",
        &format!("/v1/sandbox/{id}/snapshot/create"),
        Some(json!({"name": "mine"})),
    );
    assert_eq!(s.status, 201, "{}", s.raw);
    let other = d.create_key("acme", None);
    let as_other = |method: &str, path: &str, body: Option<Value>| {
        call(&other, method, &format!("{}{path}", d.url), body)
    };
    assert_eq!(
        as_other("GET", "/v1/sandboxes", None).body["total_items"],
        0
    );
    assert_eq!(
        as_other("GET", "/v1/snapshots", None).body["total_items"],
        0
    );
    for (method, path, body) in [
        ("GET", format!("/v1/sandbox/{id}"), None),
        ("DELETE", format!("/v1/sandbox/{id}/"), None),
        ("POST", format!("/v1/sandbox/{id}/pause"), None),
        ("POST", format!("/v1/sandbox/{id}/stop"), None),
        (
            "POST",
            format!("/v1/sandbox/{id}/process/execute"),
            Some(json!({"command": "true"})),
        ),
        (
            "POST",
            format!("/v1/sandbox/{id}/filesystem/ls"),
            Some(json!({"path": "/"})),
        ),
        (
            "POST",
            format!("/v1/sandbox/{id}/snapshot/create"),
            Some(json!({})),
        ),
        (
            "POST",
            "/v1/snapshot/restore".to_string(),
            Some(json!({"snapshot_name": "mine"})),
        ),
        ("DELETE", "/v1/snapshot/mine".to_string(), None),
    ] {
        let r = as_other(method, &path, body);
        assert_eq!(r.status, 404, "{method} {path}: {}", r.raw);
    }
    // Still there for its owner.
    assert_eq!(
        l0(&d, "GET", &format!("/v1/sandbox/{id}"), None).status,
        200
    );
    assert_eq!(l0(&d, "GET", "/v1/snapshots", None).body["total_items"], 1);
}

#[test]
fn presigned_urls_expose_a_sandbox_port_until_revoked_or_expired() {
    let d = Daemon::start();
    let sb = create(&d, json!({"template_name": "sb-debian-12-python"}));
    let id = sb["id"].as_str().unwrap();
    common::serve_srv(&d, id, "mkdir -p /srv && echo hello-preview > /srv/hi.txt");

    // Bad requests name the field.
    for (body, field) in [
        (json!({}), "port"),
        (json!({"port": 0}), "port"),
        (json!({"port": 70000}), "port"),
        (json!({"port": 7777}), "port"),
        (json!({"port": "8000"}), "port"),
        (json!({"port": 8000, "expires_in": 0}), "expires_in"),
        (json!({"port": 8000, "expires_in": 99999999}), "expires_in"),
    ] {
        let r = l0(
            &d,
            "POST",
            &format!("/v1/sandbox/{id}/presigned-url"),
            Some(body.clone()),
        );
        assert_eq!(r.status, 400, "{body}: {}", r.raw);
        assert_eq!(r.body["errors"][0]["field"], field, "{body}: {}", r.raw);
    }

    let r = l0(
        &d,
        "POST",
        &format!("/v1/sandbox/{id}/presigned-url"),
        Some(json!({"port": 8000, "expires_in": 60})),
    );
    assert_eq!(r.status, 201, "{}", r.raw);
    for k in [
        "id",
        "token",
        "url",
        "sandbox_id",
        "port",
        "expires_at",
        "created_at",
    ] {
        assert!(!r.body[k].is_null(), "{k}: {}", r.raw);
    }
    assert_eq!(r.body["port"], 8000);
    assert_eq!(r.body["sandbox_id"], id);
    let url = r.body["url"].as_str().unwrap().to_string();
    let pid = r.body["id"].as_str().unwrap().to_string();
    assert!(url.contains(r.body["token"].as_str().unwrap()), "{url}");

    // No key needed: the token is the credential. The server may still be starting.
    let got = common::get_public_ok(&format!("{url}hi.txt"));
    assert_eq!(got, (200, "hello-preview\n".to_string()), "{}", d.log());
    let (status, listing) = get_public(&format!("{url}?x=1"));
    assert_eq!(status, 200);
    assert!(listing.contains("hi.txt"), "{listing}");
    // A port nothing listens on is a 502; a wrong token a 404.
    let r = l0(
        &d,
        "POST",
        &format!("/v1/sandbox/{id}/presigned-url"),
        Some(json!({"port": 8001})),
    );
    assert_eq!(get_public(r.body["url"].as_str().unwrap()).0, 502);
    let forged = format!("{}/p/{}/hi.txt", d.url, "0".repeat(32));
    assert_eq!(get_public(&forged).0, 404);

    // Another org cannot revoke it; the owner can, at once.
    let other = d.create_key("acme", None);
    let r = call(
        &other,
        "DELETE",
        &format!("{}/v1/sandbox/{id}/presigned-url/{pid}", d.url),
        None,
    );
    assert_eq!(r.status, 404, "{}", r.raw);
    assert_eq!(get_public(&format!("{url}hi.txt")).0, 200);
    let r = l0(
        &d,
        "DELETE",
        &format!("/v1/sandbox/{id}/presigned-url/{pid}"),
        None,
    );
    assert_eq!(r.status, 204, "{}", r.raw);
    assert_eq!(get_public(&format!("{url}hi.txt")).0, 404);
    let r = l0(
        &d,
        "DELETE",
        &format!("/v1/sandbox/{id}/presigned-url/{pid}"),
        None,
    );
    assert_eq!(r.status, 404, "{}", r.raw);

    // Expiry.
    let r = l0(
        &d,
        "POST",
        &format!("/v1/sandbox/{id}/presigned-url"),
        Some(json!({"port": 8000, "expires_in": 1})),
    );
    let short = r.body["url"].as_str().unwrap().to_string();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(get_public(&format!("{short}hi.txt")).0, 404);

    // Deleting the sandbox ends its URLs.
    let r = l0(
        &d,
        "POST",
        &format!("/v1/sandbox/{id}/presigned-url"),
        Some(json!({"port": 8000})),
    );
    let last = r.body["url"].as_str().unwrap().to_string();
    assert_eq!(get_public(&format!("{last}hi.txt")).0, 200);
    let r = l0(&d, "DELETE", &format!("/v1/sandbox/{id}"), None);
    assert!(r.status == 200 || r.status == 204, "{}", r.raw);
    assert_eq!(get_public(&format!("{last}hi.txt")).0, 404);
}

/// An error answered before a large request body was read closes the connection *and says
/// so*: a pooled client must not send its next request into a connection the server dropped.
#[test]
fn early_errors_on_large_bodies_say_connection_close() {
    use std::io::{BufRead, BufReader, Read, Write};
    let d = Daemon::start();
    let addr = d.url.trim_start_matches("http://").to_string();
    let body = vec![b'x'; 300 * 1024];
    for (path, auth) in [("/v1/no-such-route", true), ("/v1/sandbox", false)] {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
        if auth {
            head.push_str(&format!("Authorization: Bearer {}\r\n", d.key));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).unwrap();
        // The server may answer (and stop reading) before the whole body is sent.
        let _ = s.write_all(&body);
        let mut r = BufReader::new(s);
        let mut status = String::new();
        r.read_line(&mut status).unwrap();
        assert!(
            status.starts_with("HTTP/1.1 4"),
            "{path}: unexpected status line {status:?}"
        );
        let mut close = false;
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            if line.trim().is_empty() {
                break;
            }
            let l = line.to_ascii_lowercase();
            close |= l.starts_with("connection:") && l.contains("close");
        }
        assert!(close, "{path}: an early error must carry Connection: close");
        let mut rest = Vec::new();
        let _ = r.read_to_end(&mut rest);
    }
    // A keep-alive error with a small body that was read still closes (harmless), and a fresh
    // connection works.
    let ok = call(&d.key, "GET", &format!("{}/v1/sandboxes", d.url), None);
    assert_eq!(ok.status, 200, "{}", ok.raw);
}

/// A client that trickles a request head loses its connection after the head deadline, and
/// past the connection cap new connections wait until one is free.
#[test]
fn slow_heads_are_cut_and_connections_are_capped() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let d = Daemon::start_with(&["--header-read-timeout-secs=1", "--max-connections=2"]);
    let addr = d.url.trim_start_matches("http://").to_string();

    let mut slow = std::net::TcpStream::connect(&addr).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 512];
    let n = slow.read(&mut buf).unwrap_or(0);
    let answer = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(
        n == 0 || answer.starts_with("HTTP/1.1 408"),
        "a trickled head must be cut: {answer:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    drop(slow);

    // Two connections busy (a head in progress each), the third waits for a slot.
    let mut a = std::net::TcpStream::connect(&addr).unwrap();
    a.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
    let mut b = std::net::TcpStream::connect(&addr).unwrap();
    b.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let mut c = std::net::TcpStream::connect(&addr).unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    c.set_read_timeout(Some(Duration::from_millis(400)))
        .unwrap();
    let waited = c.read(&mut buf);
    assert!(
        matches!(&waited, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "the third connection must wait while two are served: {waited:?}"
    );
    // The head deadline frees the two slots; then the third is served.
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = c.read(&mut buf).unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    drop((a, b));
}
