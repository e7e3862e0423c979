//! The content-addressed snapshot store under the daemon: memory images move into it after
//! the capture, chunks are shared between snapshots, restores read them back verified, a
//! corrupt chunk fails a restore cleanly, deleted snapshots free their chunks, and a crash at
//! any step of archiving loses nothing.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{call, dp, try_call, Daemon};
use serde_json::{json, Value};

fn project(d: &Daemon) -> String {
    d.project_url()
}

fn get_snapshot(d: &Daemon, id: &str) -> Value {
    let r = call(
        &d.key,
        "GET",
        &format!("{}/snapshots/{id}", project(d)),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.raw);
    r.body
}

fn plain_image(d: &Daemon, snap: &str) -> PathBuf {
    d.data_dir.join("images").join(format!("snap-{snap}"))
}

fn manifest(d: &Daemon, snap: &str) -> PathBuf {
    d.data_dir
        .join("store/manifests")
        .join(format!("snap-{snap}.json"))
}

/// Waits until the archiver has stored the snapshot's memory image; returns the record.
fn wait_archived(d: &Daemon, snap: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let s = get_snapshot(d, snap);
        if s["added_bytes"].is_u64() && !plain_image(d, snap).exists() {
            assert!(manifest(d, snap).is_file(), "archived without a manifest");
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "snapshot {snap} was never archived: {s}\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn snapshot(d: &Daemon, sandbox: &str, name: &str) -> String {
    let s = call(
        &d.key,
        "POST",
        &format!("{}/sandboxes/{sandbox}/snapshots", project(d)),
        Some(json!({"name": name, "include_memory": true})),
    );
    assert_eq!(
        (s.status, s.body["status"].as_str()),
        (202, Some("Ready")),
        "{}",
        s.raw
    );
    s.body["id"].as_str().unwrap().to_string()
}

fn blobs(d: &Daemon) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in std::fs::read_dir(d.data_dir.join("store/blobs"))
        .unwrap()
        .flatten()
    {
        for f in std::fs::read_dir(dir.path()).unwrap().flatten() {
            out.push(f.path());
        }
    }
    out
}

fn leftovers(images: &Path) -> Vec<String> {
    std::fs::read_dir(images)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.') || n.contains(".tmp-"))
                .collect()
        })
        .unwrap_or_default()
}

fn sandbox_names(d: &Daemon) -> Vec<String> {
    let r = call(
        &d.key,
        "GET",
        &format!("{}?limit=100", d.sandboxes_url("default", "default")),
        None,
    );
    r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

/// A counter beside 48 MiB of random bytes: most of the memory stays the same between two
/// snapshots, as with any agent holding data.
const COUNTER: &str = "import os, time\nhold = bytearray(os.urandom(48 << 20))\nn = 0\nwhile True:\n    n += 1\n    open('/workspace/n', 'w').write(str(n))\n    time.sleep(0.05)\n";

#[test]
fn memory_images_are_stored_once_restored_verified_and_collected() {
    let d = Daemon::start();
    let sb = d.create(json!({"name": "origin", "sandbox_template_id": "sb-debian-12-python"}));
    let id = sb["id"].as_str().unwrap().to_string();
    let r = dp(
        &d.url,
        &d.key,
        &id,
        "/v1/processes/start",
        json!({"program": "python3", "args": ["-c", COUNTER]}),
    );
    assert_eq!(r.status, 200, "{}", r.raw);
    d.exec(&id, "echo v1 > /workspace/file", &[]);
    d.read_counter(&id);

    // The first snapshot's image goes into the store whole; the plain copy goes away.
    let a = snapshot(&d, &id, "a");
    let at_a = d.read_counter(&id);
    assert!(at_a > 0);
    let sa = wait_archived(&d, &a);
    let (size_a, added_a) = (
        sa["size_bytes"].as_u64().unwrap(),
        sa["added_bytes"].as_u64().unwrap(),
    );
    assert!(added_a > 1 << 20 && added_a <= size_a, "{sa}");

    // A second one of the same sandbox shares almost every chunk with the first.
    d.exec(&id, "echo v2 > /workspace/file", &[]);
    let b = snapshot(&d, &id, "b");
    let sb_ = wait_archived(&d, &b);
    let added_b = sb_["added_bytes"].as_u64().unwrap();
    assert!(
        added_b * 4 < added_a,
        "second snapshot added {added_b} bytes, the first {added_a}"
    );
    let stored: u64 = blobs(&d)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(
        stored < added_a + added_a / 2,
        "two images hold {stored} bytes in the store, one added {added_a}"
    );

    // Restore-as-new from the store: memory (the count goes on from snapshot a) and files.
    let r = call(
        &d.key,
        "POST",
        &d.sandboxes_url("default", "default"),
        Some(json!({"name": "from-a", "from_snapshot": a})),
    );
    assert_eq!(r.status, 201, "{}", r.raw);
    let ra = r.body["id"].as_str().unwrap().to_string();
    let n = d.read_counter(&ra);
    assert!(
        n >= at_a.saturating_sub(20) && n < at_a + 100,
        "{n} vs {at_a}"
    );
    let (_, f, _) = d.exec(&ra, "cat /workspace/file", &[]);
    assert_eq!(f, "v1\n");
    assert!(d.log().contains("memory image materialized from the store"));

    // Corrupt one chunk that only snapshot a holds: its restores fail with a clear error and
    // change nothing; snapshot b still restores.
    let ma: Value = serde_json::from_slice(&std::fs::read(manifest(&d, &a)).unwrap()).unwrap();
    let mb: Value = serde_json::from_slice(&std::fs::read(manifest(&d, &b)).unwrap()).unwrap();
    let chunks = |m: &Value| -> Vec<String> {
        m["memory"]["entries"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|e| e["chunks"].as_array().cloned().unwrap_or_default())
            .map(|h| h.as_str().unwrap().to_string())
            .collect()
    };
    let in_b = chunks(&mb);
    let victim = chunks(&ma)
        .into_iter()
        .find(|h| !in_b.contains(h))
        .expect("a chunk only a holds");
    let path = d
        .data_dir
        .join("store/blobs")
        .join(&victim[..2])
        .join(&victim);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[17] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();

    let names_before = sandbox_names(&d);
    let r = call(
        &d.key,
        "POST",
        &d.sandboxes_url("default", "default"),
        Some(json!({"name": "from-corrupt", "from_snapshot": a})),
    );
    assert_eq!(r.status, 500, "{}", r.raw);
    let msg = r.body["message"].as_str().unwrap_or(&r.raw).to_string();
    assert!(
        msg.contains("failed verification") && msg.contains(&victim) && msg.contains("corrupt"),
        "{}",
        r.raw
    );
    assert_eq!(sandbox_names(&d), names_before, "no sandbox was created");
    assert!(leftovers(&d.data_dir.join("images")).is_empty());

    // In place: the origin keeps running, untouched.
    let before = d.read_counter(&id);
    let r = call(
        &d.key,
        "POST",
        &format!("{}/sandboxes/{id}/restore", project(&d)),
        Some(json!({"snapshot_id": a})),
    );
    assert_eq!(r.status, 500, "{}", r.raw);
    assert!(r.raw.contains("failed verification"), "{}", r.raw);
    std::thread::sleep(Duration::from_millis(300));
    assert!(d.read_counter(&id) > before, "the origin stopped counting");
    let (_, f, _) = d.exec(&id, "cat /workspace/file", &[]);
    assert_eq!(f, "v2\n");
    let r = call(
        &d.key,
        "POST",
        &format!("{}/sandboxes/{id}/restore", project(&d)),
        Some(json!({"snapshot_id": b})),
    );
    assert_eq!(r.status, 200, "{}", r.raw);
    let (_, f, _) = d.exec(&id, "cat /workspace/file", &[]);
    assert_eq!(f, "v2\n");

    // Deleting both snapshots frees every chunk; the sandbox restored from a runs on.
    for s in [&a, &b] {
        let r = call(
            &d.key,
            "DELETE",
            &format!("{}/snapshots/{s}", project(&d)),
            None,
        );
        assert_eq!(r.status, 204, "{}", r.raw);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !blobs(&d).is_empty() {
        assert!(Instant::now() < deadline, "chunks left: {:?}", blobs(&d));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!manifest(&d, &a).exists() && !manifest(&d, &b).exists());
    let before = d.read_counter(&ra);
    std::thread::sleep(Duration::from_millis(300));
    assert!(d.read_counter(&ra) > before);
}

#[test]
fn a_crash_at_any_step_of_archiving_loses_nothing() {
    let mut d = Daemon::start();
    let sb = d.create(json!({"name": "src", "sandbox_template_id": "sb-busybox"}));
    let src = sb["id"].as_str().unwrap().to_string();
    for (i, point) in ["archive.stored", "archive.committed", "archive.moved"]
        .iter()
        .enumerate()
    {
        d.exec(&src, "sh", &["-c", &format!("echo v{i} > /root/f")]);
        d.kill9();
        d.env = vec![("SANDBOXD_FAULT".into(), point.to_string())];
        d.spawn();
        // The capture finishes; the archiver then dies at the point (maybe before the
        // response is out).
        let _ = try_call(
            &d.key,
            "POST",
            &format!("{}/sandboxes/{src}/snapshots", project(&d)),
            Some(json!({"name": format!("s{i}"), "include_memory": true})),
        );
        assert!(
            d.wait_exit(Duration::from_secs(60)),
            "{point}: the daemon did not die"
        );
        d.env.clear();
        d.spawn();

        let r = call(
            &d.key,
            "GET",
            &format!("{}/sandboxes/{src}/snapshots?limit=100", project(&d)),
            None,
        );
        let snap = r.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == format!("s{i}"))
            .unwrap_or_else(|| panic!("{point}: no snapshot s{i}: {}", r.raw))
            .clone();
        assert_eq!(snap["status"], "Ready", "{point}: {snap}");
        let id = snap["id"].as_str().unwrap().to_string();
        wait_archived(&d, &id);
        assert!(
            leftovers(&d.data_dir.join("images")).is_empty(),
            "{point}: {:?}",
            leftovers(&d.data_dir.join("images"))
        );
        let r = call(
            &d.key,
            "POST",
            &d.sandboxes_url("default", "default"),
            Some(json!({"name": format!("r{i}"), "from_snapshot": id})),
        );
        assert_eq!(r.status, 201, "{point}: {}", r.raw);
        let rid = r.body["id"].as_str().unwrap().to_string();
        let (_, out, _) = d.exec(&rid, "cat", &["/root/f"]);
        assert_eq!(out, format!("v{i}\n"), "{point}");
        assert_eq!(d.delete(&rid).status, 204);
    }
    // Every manifest belongs to a Ready snapshot; no temp files in the store.
    let manifests: Vec<String> = std::fs::read_dir(d.data_dir.join("store/manifests"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(manifests.len(), 3, "{manifests:?}");
    assert!(blobs(&d).iter().all(|p| !p
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with(".tmp-")));
}
