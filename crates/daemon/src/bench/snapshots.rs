//! `sandboxd bench --suite snapshots`: snapshots with memory, restore-as-new, fork, pause and
//! resume, filesystem-only snapshots and snapshot storage, each against raw runsc (or btrfs)
//! driven by hand in the same run. See docs/benchmarks.md, section "Snapshots".
//!
//! Setup (not timed): one Debian sandbox (`sb-debian-12-python`, memory_gb 2) running a python3
//! process that holds 256 MiB of touched memory, with 100 MiB of new files in 5,000 files under
//! /workspace/data; and a raw runsc container built the same way (a writable overlay of the
//! template, the same python process as its init, the same files written by `runsc exec`).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::ValueEnum;
use serde_json::{json, Value};

use super::daemon::{short_of, Daemon};
use super::procs::{self, check_interrupted};
use super::raw;
use super::report::{self, summarize, Row, Target};
use super::{ms, progress, BenchArgs, Ctx};

const MIB: f64 = 1024.0 * 1024.0;
/// The python process's buffer.
const HOG_MIB: usize = 256;
/// 5,000 files of 20,972 bytes: 104,860,000 bytes = 100.0 MiB.
const FILES: usize = 5000;
const FILE_BYTES: usize = 20_972;
/// Between two of the ten storage snapshots, 50 of those files (1,048,600 bytes) are rewritten.
const CHANGE_FILES: usize = 50;
const STORAGE_SNAPSHOTS: usize = 10;
/// Where the files go inside the sandbox (the writable layer, not a tmpfs).
const DATA_DIR: &str = "/workspace/data";
const READY: &str = "/workspace/hog.ready";

/// What the python process writes into its 256 MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MemoryFill {
    /// Random bytes: nothing to gain from compressing the checkpoint (the worst case).
    Random,
    /// One byte per 4 KiB page: every page touched, the rest zero (compresses very well).
    Pages,
}

fn hog_script(fill: MemoryFill) -> String {
    let touch = match fill {
        MemoryFill::Random => {
            "for o in range(0, n, 1 << 20):\n    b[o:o + (1 << 20)] = os.urandom(1 << 20)\n"
        }
        MemoryFill::Pages => "for o in range(0, n, 4096):\n    b[o] = 1\n",
    };
    format!(
        "import os, time\nn = {HOG_MIB} << 20\nb = bytearray(n)\n{touch}\
         os.makedirs('/workspace', exist_ok=True)\n\
         open('{READY}', 'w').write(str(os.getpid()))\n\
         while True:\n    time.sleep(3600)\n"
    )
}

/// Waits for the python process, then writes the 5,000 files.
fn writer_script() -> String {
    format!(
        "import os, time\n\
         while not os.path.exists('{READY}'):\n    time.sleep(0.05)\n\
         os.makedirs('{DATA_DIR}', exist_ok=True)\n\
         for i in range({FILES}):\n    \
             with open('{DATA_DIR}/f%04d' % i, 'wb') as f:\n        f.write(os.urandom({FILE_BYTES}))\n\
         print(open('{READY}').read())\n"
    )
}

/// Rewrites files `k*50 .. k*50+50` in place (1 MiB of new data).
fn change_script(k: usize) -> String {
    let start = (k * CHANGE_FILES) % FILES;
    format!(
        "import os\n\
         for i in range({start}, {end}):\n    \
             with open('{DATA_DIR}/f%04d' % i, 'r+b') as f:\n        f.write(os.urandom({FILE_BYTES}))\n",
        end = start + CHANGE_FILES
    )
}

/// What the suite hands back to `bench::run` for printing.
pub struct Report {
    pub rows: Vec<Row>,
    pub targets: Vec<Target>,
    pub extra: Value,
    pub text: String,
}

#[derive(Default)]
struct Samples {
    snap: Vec<f64>,
    snap_paused: Vec<f64>,
    same_ckpt: Vec<f64>,
    same_ckpt_plain: Vec<f64>,
    restore_exec: Vec<f64>,
    restore: Vec<f64>,
    raw_restore_exec: Vec<f64>,
    raw_restore: Vec<f64>,
    raw_restore_plain_exec: Vec<f64>,
    fork: Vec<f64>,
    fork_exec: Vec<f64>,
    raw_fork: Vec<f64>,
    raw_fork_exec: Vec<f64>,
    pause: Vec<f64>,
    resume: Vec<f64>,
    resume_exec: Vec<f64>,
    raw_pause: Vec<f64>,
    raw_resume: Vec<f64>,
    raw_resume_exec: Vec<f64>,
    fs_snap: Vec<f64>,
    btrfs_snap: Vec<f64>,
}

pub fn measure(
    a: &BenchArgs,
    ctx: &mut Ctx,
    template_dir: &Path,
    agent: &Path,
) -> anyhow::Result<Report> {
    super::start_both(a, ctx, template_dir, agent)?;
    let n = a.runs() as usize;
    let work = ctx.work.clone();
    let hog = hog_script(a.memory_fill);
    let writer = writer_script();

    // Setup: the sandbox.
    progress(&format!(
        "setup: Debian sandbox, python3 holding {HOG_MIB} MiB ({:?} fill), {FILES} files / 100 MiB",
        a.memory_fill
    ));
    let t_setup = Instant::now();
    let d = ctx.daemon.as_mut().expect("daemon");
    let src = d.create_with(json!({
        "name": "bench-snap-src",
        "sandbox_template_id": ctx.template,
        "resources": {"memory_gb": 2},
    }))?;
    d.start_process(&src, "python3", &["-c", &hog])?;
    let hog_pid = d
        .exec_argv(&src, "python3", &["-c", &writer])?
        .trim()
        .to_string();
    let src_short = short_of(&src);
    let subvol = d.subvolume(&src);
    let data_dir = d.data_dir.clone();
    let vol = data_dir.join("vol");
    let (src_mem, _) = raw::memory_usage(&format!("sandboxd/{src_short}"))?;

    // Setup: the raw container, on a writable overlay of the template.
    let raw_root = overlay_mount(&work.join("rawfs"), template_dir)?;
    ctx.mounts.push(raw_root.clone());
    let hog_argv = vec!["/usr/bin/python3".to_string(), "-c".into(), hog.clone()];
    let r = ctx.raw.as_mut().expect("raw");
    let rid = r.prepare_custom(&raw_root, &hog_argv)?;
    r.run(&rid)?;
    r.exec_argv(&rid, &["/usr/bin/python3", "-c", &writer])?;
    let (raw_mem, _) = r.memory_usage(&rid)?;
    progress(&format!(
        "setup took {:.0} s; memory cgroup usage: sandbox {:.0} MiB, raw container {:.0} MiB",
        t_setup.elapsed().as_secs_f64(),
        src_mem as f64 / MIB,
        raw_mem as f64 / MIB
    ));

    let errlog = work.join("snap.err");
    let mut s = Samples::default();
    let mut keep_snap: Option<String> = None;
    let mut sizes = json!({});
    let mut checks = json!({});

    // The raw container's images for the restore baseline (not timed): one with runsc's
    // default compression, one without.
    let keep_img = work.join("raw-img");
    let keep_img_plain = work.join("raw-img-plain");
    {
        let r = ctx.raw.as_mut().expect("raw");
        r.checkpoint(&rid, &keep_img, true, &[])?;
        r.checkpoint(&rid, &keep_img_plain, true, &["--compression=none"])?;
        sizes["raw_image_allocated_bytes"] = json!(alloc_bytes(&keep_img));
        sizes["raw_image_uncompressed_allocated_bytes"] = json!(alloc_bytes(&keep_img_plain));
    }

    // 1: snapshot with memory, against runsc checkpoint of the same sandbox.
    progress(&format!(
        "snapshot with memory, {n} runs (+1 warm-up), against runsc checkpoint of the same sandbox"
    ));
    for i in 0..=n {
        check_interrupted()?;
        let keep = i > 0;
        for step in [i % 3, (i + 1) % 3, (i + 2) % 3] {
            if step == 0 {
                let d = ctx.daemon.as_mut().expect("daemon");
                let t = Instant::now();
                let snap = d.snapshot(&src, true)?;
                let took = ms(t.elapsed());
                let sid = snap["id"].as_str().context("snapshot id")?.to_string();
                if keep {
                    s.snap.push(took);
                    s.snap_paused
                        .push(snap["paused_ms"].as_f64().context("paused_ms")?);
                }
                if keep_snap.is_none() {
                    sizes["snapshot_size_bytes_reported"] = snap["size_bytes"].clone();
                    sizes["snapshot_image_allocated_bytes"] = json!(alloc_bytes(&d.image_of(&sid)));
                    keep_snap = Some(sid);
                } else {
                    d.delete_snapshot(&sid)?;
                }
            } else {
                let plain = step == 2;
                let img = work.join("same-img");
                let extra: &[&str] = if plain { &["--compression=none"] } else { &[] };
                let took = raw::daemon_checkpoint_wrapped(
                    &a.runsc, &data_dir, &src, &src_short, &img, extra, &errlog,
                )?;
                if i == 0 {
                    let k = if plain {
                        "same_sandbox_image_uncompressed_allocated_bytes"
                    } else {
                        "same_sandbox_image_allocated_bytes"
                    };
                    sizes[k] = json!(alloc_bytes(&img));
                }
                if keep {
                    if plain {
                        s.same_ckpt_plain.push(ms(took));
                    } else {
                        s.same_ckpt.push(ms(took));
                    }
                }
                std::fs::remove_dir_all(&img)?;
            }
        }
    }
    let keep_snap = keep_snap.context("no snapshot")?;
    // Restores below read the image from the store (verified), as a restore of any snapshot
    // but a just-taken one does: wait for the archiver to have moved it there.
    {
        let d = ctx.daemon.as_mut().expect("daemon");
        let kept = d.wait_archived(&keep_snap)?;
        sizes["snapshot_added_bytes_reported"] = kept["added_bytes"].clone();
        sizes["snapshot_stored_bytes"] =
            json!(stored_image_bytes(d, std::slice::from_ref(&keep_snap))?);
    }

    // 2: restore-as-new to first exec.
    progress(&format!(
        "restore-as-new -> first exec, {n} runs (+1 warm-up), against runsc restore + exec"
    ));
    for i in 0..=n {
        check_interrupted()?;
        let keep = i > 0;
        for step in [i % 3, (i + 1) % 3, (i + 2) % 3] {
            if step == 0 {
                let d = ctx.daemon.as_mut().expect("daemon");
                let t = Instant::now();
                let nid = d.create_with(
                    json!({"name": format!("bench-restore-{i}"), "from_snapshot": keep_snap}),
                )?;
                let t1 = Instant::now();
                let at = d.exec_true(&nid, false)?;
                if keep {
                    s.restore_exec.push(ms(at - t));
                    s.restore.push(ms(t1 - t));
                } else {
                    checks["restored_sandbox_python"] = hog_check(d, &nid, &hog_pid);
                }
                d.delete(&nid)?;
            } else {
                let plain = step == 2;
                let r = ctx.raw.as_mut().expect("raw");
                let nid = r.prepare_custom(&raw_root, &hog_argv)?;
                let t = Instant::now();
                let took = r.restore(&nid, if plain { &keep_img_plain } else { &keep_img })?;
                r.exec_true(&nid)?;
                if keep {
                    if plain {
                        s.raw_restore_plain_exec.push(ms(t.elapsed()));
                    } else {
                        s.raw_restore_exec.push(ms(t.elapsed()));
                        s.raw_restore.push(ms(took));
                    }
                }
                r.delete(&nid)?;
            }
        }
    }

    // 3: fork.
    progress(&format!(
        "fork, {n} runs, against runsc checkpoint --leave-running + restore"
    ));
    for i in 0..n {
        check_interrupted()?;
        for step in [i % 2, (i + 1) % 2] {
            if step == 0 {
                let d = ctx.daemon.as_mut().expect("daemon");
                let t = Instant::now();
                let fid = d.fork(&src, &format!("bench-fork-{i}"))?;
                let t1 = Instant::now();
                let at = d.exec_true(&fid, false)?;
                s.fork.push(ms(t1 - t));
                s.fork_exec.push(ms(at - t));
                if i == 0 {
                    checks["forked_sandbox_python"] = hog_check(d, &fid, &hog_pid);
                }
                d.delete(&fid)?;
                for sid in d.list_snapshots(Some(&src))? {
                    if sid != keep_snap {
                        d.delete_snapshot(&sid)?;
                    }
                }
            } else {
                let r = ctx.raw.as_mut().expect("raw");
                let nid = r.prepare_custom(&raw_root, &hog_argv)?;
                let img = work.join("fork-img");
                let t = Instant::now();
                r.checkpoint(&rid, &img, true, &[])?;
                r.restore(&nid, &img)?;
                let t1 = Instant::now();
                r.exec_true(&nid)?;
                s.raw_fork.push(ms(t1 - t));
                s.raw_fork_exec.push(ms(t.elapsed()));
                r.delete(&nid)?;
                std::fs::remove_dir_all(&img)?;
            }
        }
    }

    // 4: pause and resume.
    progress(&format!(
        "pause and resume, {n} runs, against runsc checkpoint + delete, restore"
    ));
    for i in 0..n {
        check_interrupted()?;
        for step in [i % 2, (i + 1) % 2] {
            if step == 0 {
                let d = ctx.daemon.as_mut().expect("daemon");
                let t = Instant::now();
                d.action(&src, "pause", json!({"preserve_memory": true}))?;
                let paused = ms(t.elapsed());
                let t = Instant::now();
                d.action(&src, "resume", json!({}))?;
                let resumed = ms(t.elapsed());
                let at = d.exec_true(&src, false)?;
                s.pause.push(paused);
                s.resume.push(resumed);
                s.resume_exec.push(ms(at - t));
                if i == 0 {
                    checks["resumed_sandbox_python"] = hog_check(d, &src, &hog_pid);
                }
            } else {
                let r = ctx.raw.as_mut().expect("raw");
                let img = work.join("pause-img");
                let t = Instant::now();
                r.checkpoint(&rid, &img, false, &[])?;
                r.delete_keep_bundle(&rid)?;
                let paused = ms(t.elapsed());
                let t = Instant::now();
                let resumed = ms(r.restore(&rid, &img)?);
                r.exec_true(&rid)?;
                s.raw_pause.push(paused);
                s.raw_resume.push(resumed);
                s.raw_resume_exec.push(ms(t.elapsed()));
                std::fs::remove_dir_all(&img)?;
            }
        }
    }

    // 5: filesystem-only snapshot.
    progress(&format!(
        "filesystem-only snapshot, {n} runs, against btrfs subvolume snapshot"
    ));
    let raw_layer = vol.join(".layers").join("bench-raw-fs");
    for i in 0..n {
        check_interrupted()?;
        for step in [i % 2, (i + 1) % 2] {
            if step == 0 {
                let d = ctx.daemon.as_mut().expect("daemon");
                let t = Instant::now();
                let snap = d.snapshot(&src, false)?;
                let took = ms(t.elapsed());
                s.fs_snap.push(took);
                sizes["fs_snapshot_size_bytes_reported"] = snap["size_bytes"].clone();
                d.delete_snapshot(snap["id"].as_str().context("snapshot id")?)?;
            } else {
                let mut c = Command::new("btrfs");
                c.args(["-q", "subvolume", "snapshot", "-r"])
                    .arg(&subvol)
                    .arg(&raw_layer);
                let t = Instant::now();
                procs::run_quiet("btrfs subvolume snapshot", &mut c, &errlog)?;
                s.btrfs_snap.push(ms(t.elapsed()));
                let mut c = Command::new("btrfs");
                c.args(["-q", "subvolume", "delete"]).arg(&raw_layer);
                procs::run_quiet("btrfs subvolume delete", &mut c, &errlog)?;
            }
        }
    }

    // 6: storage of ten snapshots with 1 MiB of changes between them.
    let d = ctx.daemon.as_mut().expect("daemon");
    d.delete_snapshot(&keep_snap)?;
    for sid in d.list_snapshots(None)? {
        d.delete_snapshot(&sid)?;
    }
    std::fs::remove_dir_all(&keep_img)?;
    std::fs::remove_dir_all(&keep_img_plain)?;
    let mut storage = json!({});
    for memory in [false, true] {
        check_interrupted()?;
        progress(&format!(
            "storage: {STORAGE_SNAPSHOTS} snapshots ({}), 1 MiB rewritten between them",
            if memory {
                "with memory"
            } else {
                "filesystem only"
            }
        ));
        let d = ctx.daemon.as_mut().expect("daemon");
        storage[if memory {
            "with_memory"
        } else {
            "filesystem_only"
        }] = storage_run(d, &src, &vol, memory, &errlog)?;
    }

    let su = |v: &[f64]| summarize(v);
    let rows = vec![
        row("snapshot_with_memory", "snapshot with memory (POST -> 202 Ready)", su(&s.snap),
            "runsc checkpoint --leave-running of the same sandbox (its netns wrapper, the daemon's flags)", su(&s.same_ckpt)),
        row("snapshot_with_memory_vs_uncompressed", "  the same, vs an uncompressed runsc checkpoint", su(&s.snap),
            "runsc checkpoint --leave-running --compression=none of the same sandbox", su(&s.same_ckpt_plain)),
        row("snapshot_paused_ms", "  sandbox frozen (paused_ms of the record)", su(&s.snap_paused),
            "runsc checkpoint --leave-running of the same sandbox", su(&s.same_ckpt)),
        row("restore_as_new_to_first_exec", "restore-as-new -> first exec (image read back from the store, verified)", su(&s.restore_exec),
            "runsc restore --detach of a new container from the raw container's image + runsc exec", su(&s.raw_restore_exec)),
        row("restore_as_new_to_first_exec_vs_uncompressed", "  the same, vs restore from an uncompressed image", su(&s.restore_exec),
            "runsc restore --detach from an uncompressed image (--compression=none) + runsc exec", su(&s.raw_restore_plain_exec)),
        row("restore_as_new", "  restore-as-new (POST -> 201 Ready)", su(&s.restore),
            "runsc restore --detach of a new container from the raw container's image", su(&s.raw_restore)),
        row("fork", "fork (POST -> 201)", su(&s.fork),
            "runsc checkpoint --leave-running + runsc restore --detach of a new container (raw container)", su(&s.raw_fork)),
        row("fork_to_first_exec", "  fork -> first exec in the fork", su(&s.fork_exec),
            "the same + runsc exec", su(&s.raw_fork_exec)),
        row("pause", "pause with memory (POST -> 200)", su(&s.pause),
            "runsc checkpoint + runsc delete --force (raw container)", su(&s.raw_pause)),
        row("resume", "resume (POST -> 200)", su(&s.resume),
            "runsc restore --detach, same id (raw container)", su(&s.raw_resume)),
        row("resume_to_first_exec", "  resume -> first exec", su(&s.resume_exec),
            "runsc restore --detach + runsc exec", su(&s.raw_resume_exec)),
        row("fs_snapshot", "filesystem-only snapshot, 100 MiB / 5,000 files (POST -> 202 Ready)", su(&s.fs_snap),
            "btrfs subvolume snapshot -r of the same sandbox's layer", su(&s.btrfs_snap)),
    ];

    let by = |k: &str| rows.iter().find(|r| r.key == k).expect("row");
    let t = |key: &'static str, text: &str, row: &str, limit: f64| {
        let r = by(row);
        Target {
            key,
            text: text.into(),
            value: format!(
                "{:.0} ms (p95 {:.0} ms; raw runsc {:.0} ms)",
                r.sandboxd.median, r.sandboxd.p95, r.runsc.median
            ),
            met: r.sandboxd.median <= limit,
        }
    };
    let ratio_of = |k: &str| {
        storage[k]["ratio_ten_over_one"]
            .as_f64()
            .unwrap_or(f64::NAN)
    };
    let storage_target = |key: &'static str, text: &str, k: &str| Target {
        key,
        text: text.into(),
        value: format!(
            "{:.2}x ({:.1} MiB held by ten, one full {:.1} MiB)",
            ratio_of(k),
            storage[k]["ten_held_bytes"].as_f64().unwrap_or(f64::NAN) / MIB,
            storage[k]["one_full_bytes"].as_f64().unwrap_or(f64::NAN) / MIB
        ),
        met: ratio_of(k) <= 1.2,
    };
    let targets = vec![
        t(
            "snapshot_with_memory_le_1500ms",
            "snapshot with memory median <= 1.5 s",
            "snapshot_with_memory",
            1500.0,
        ),
        t(
            "restore_to_first_exec_le_1000ms",
            "restore-as-new to first exec median <= 1 s",
            "restore_as_new_to_first_exec",
            1000.0,
        ),
        t("fork_le_1500ms", "fork median <= 1.5 s", "fork", 1500.0),
        t("pause_le_1500ms", "pause median <= 1.5 s", "pause", 1500.0),
        t("resume_le_1000ms", "resume median <= 1 s", "resume", 1000.0),
        t(
            "fs_snapshot_le_500ms",
            "filesystem-only snapshot (100 MiB / 5,000 files) median <= 0.5 s",
            "fs_snapshot",
            500.0,
        ),
        storage_target(
            "ten_snapshots_with_memory_le_1_2x",
            "ten snapshots with memory (1 MiB changed between) store <= 1.2x one full snapshot",
            "with_memory",
        ),
        storage_target(
            "ten_fs_snapshots_le_1_2x",
            "ten filesystem-only snapshots (1 MiB changed between) store <= 1.2x one full snapshot",
            "filesystem_only",
        ),
    ];

    let log = std::fs::read_to_string(data_dir.join("daemon.log")).unwrap_or_default();
    let breakdown = daemon_breakdown(&log);
    let text = storage_table(&storage);
    let extra = json!({
        "setup": {
            "template": ctx.template,
            "resources": {"memory_gb": 2},
            "python_memory_mib": HOG_MIB,
            "memory_fill": format!("{:?}", a.memory_fill).to_lowercase(),
            "files": FILES,
            "file_bytes": FILE_BYTES,
            "files_total_bytes": FILES * FILE_BYTES,
            "cgroup_memory_usage_mib": {
                "sandbox": (src_mem as f64 / MIB).round(),
                "raw_container": (raw_mem as f64 / MIB).round(),
            },
        },
        "sizes": sizes,
        "checks": checks,
        "daemon_log_breakdown_ms": breakdown,
        "storage": storage,
    });
    Ok(Report {
        rows,
        targets,
        extra,
        text,
    })
}

fn row(
    key: &'static str,
    label: &'static str,
    sandboxd: report::Summary,
    runsc_label: &'static str,
    runsc: report::Summary,
) -> Row {
    Row {
        key,
        label,
        unit: "ms",
        sandboxd,
        runsc_label,
        runsc,
    }
}

/// The python process's VmRSS inside a sandbox (it must be alive, with its memory back).
fn hog_check(d: &Daemon, id: &str, pid: &str) -> Value {
    match d.exec_argv(id, "cat", &[&format!("/proc/{pid}/status")]) {
        Ok(out) => {
            let rss = out
                .lines()
                .find(|l| l.starts_with("VmRSS:"))
                .unwrap_or("VmRSS: ?")
                .to_string();
            json!({"pid": pid, "alive": true, "rss": rss.trim_start_matches("VmRSS:").trim()})
        }
        Err(e) => json!({"pid": pid, "alive": false, "error": format!("{e:#}")}),
    }
}

/// Ten snapshots of `src` (with or without memory), 1 MiB of files rewritten between two.
/// Measures what they hold on disk, counted once, against one full snapshot.
fn storage_run(
    d: &mut Daemon,
    src: &str,
    vol: &Path,
    memory: bool,
    errlog: &Path,
) -> anyhow::Result<Value> {
    let layers = vol.join(".layers");
    // Wait until the subvolumes of deleted snapshots are really gone.
    let mut c = Command::new("btrfs");
    c.args(["subvolume", "sync"]).arg(vol);
    procs::run_quiet("btrfs subvolume sync", &mut c, errlog)?;
    let before = btrfs_df(vol, errlog)?;
    let mut sids = Vec::new();
    let mut paused = Vec::new();
    for k in 0..STORAGE_SNAPSHOTS {
        if k > 0 {
            d.exec_argv(src, "python3", &["-c", &change_script(k)])?;
        }
        let snap = d.snapshot(src, memory)?;
        paused.push(snap["paused_ms"].as_f64().unwrap_or(f64::NAN));
        sids.push(snap["id"].as_str().context("snapshot id")?.to_string());
    }
    // The images move into the store in the background; count them once they are there.
    let mut added = Vec::new();
    for sid in &sids {
        if memory {
            added.push(d.wait_archived(sid)?["added_bytes"].clone());
        }
    }
    let after = btrfs_df(vol, errlog)?;
    let present: Vec<String> = std::fs::read_dir(&layers)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if present.len() != STORAGE_SNAPSHOTS {
        bail!(
            "expected exactly the {STORAGE_SNAPSHOTS} storage layers in {}, found {present:?}",
            layers.display()
        );
    }
    // The set: every extent any of the ten references, counted once.
    let set = btrfs_du(&layers, errlog)?;
    let first = btrfs_du(&d.layer_of(&sids[0]), errlog)?;
    // Memory images: the distinct chunks (and manifests) the ten reference in the store,
    // counted once, plus any image not yet moved there (none, after the wait).
    let plain: u64 = sids.iter().map(|s| alloc_bytes(&d.image_of(s))).sum();
    let (images_total, first_image) = if memory {
        (
            stored_image_bytes(d, &sids)? + plain,
            stored_image_bytes(d, &sids[..1])?,
        )
    } else {
        (plain, 0)
    };
    let images = [first_image];
    let ten_layers = set.exclusive + set.set_shared;
    let ten_held = ten_layers + images_total;
    let one_full = first.total + images[0];
    for sid in &sids {
        d.delete_snapshot(sid)?;
    }
    Ok(json!({
        "snapshots": STORAGE_SNAPSHOTS,
        "include_memory": memory,
        "changed_between_bytes": CHANGE_FILES * FILE_BYTES,
        "one_full_bytes": one_full,
        "one_full_layer_bytes": first.total,
        "one_full_image_bytes": images[0],
        "ten_held_bytes": ten_held,
        "ten_layers_held_bytes": ten_layers,
        "ten_layers_sum_of_totals_bytes": set.total,
        "ten_images_bytes": images_total,
        "ratio_ten_over_one": if one_full > 0 { ((ten_held as f64 / one_full as f64) * 1000.0).round() / 1000.0 } else { f64::NAN },
        "volume_data_used_added_bytes": after.0 as i64 - before.0 as i64,
        "volume_metadata_used_added_bytes": after.1 as i64 - before.1 as i64,
        "added_on_disk_bytes": after.0 as i64 - before.0 as i64 + images_total as i64,
        "paused_ms": paused,
        "added_bytes_reported": added,
    }))
}

/// Medians of the timings the daemon logs (all captures, warm-ups and storage runs included):
/// how much of a capture is `runsc checkpoint`, how long restores and resumes take inside it.
fn daemon_breakdown(log: &str) -> Value {
    let field = |line: &str, name: &str| -> Option<f64> {
        let at = line.find(&format!(" {name}="))? + name.len() + 2;
        line[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    let med = |v: Vec<f64>| -> Value {
        let s = summarize(&v);
        json!({"n": s.n, "median": if s.n > 0 { json!(s.median) } else { Value::Null }})
    };
    let pick = |msg: &str, name: &str, cond: &dyn Fn(&str) -> bool| -> Vec<f64> {
        log.lines()
            .filter(|l| l.contains(msg) && cond(l))
            .filter_map(|l| field(l, name))
            .collect()
    };
    let any = |_: &str| true;
    let mem = |l: &str| field(l, "checkpoint_ms").is_some_and(|c| c > 0.0);
    let nomem = |l: &str| field(l, "checkpoint_ms") == Some(0.0);
    json!({
        "snapshot_with_memory_paused": med(pick("snapshot ready", "paused_ms", &mem)),
        "snapshot_with_memory_checkpoint": med(pick("snapshot ready", "checkpoint_ms", &mem)),
        "snapshot_fs_only_paused": med(pick("snapshot ready", "paused_ms", &nomem)),
        "pause_paused": med(pick("sandbox paused", "paused_ms", &any)),
        "pause_checkpoint": med(pick("sandbox paused", "checkpoint_ms", &any)),
        "restore_as_new_in_engine": med(pick("restored as new sandbox", "ms", &any)),
        "resume_in_engine": med(pick("sandbox resumed", "ms", &any)),
    })
}

fn storage_table(st: &Value) -> String {
    let mib = |v: &Value| {
        v.as_f64()
            .map(|x| format!("{:.1}", x / MIB))
            .unwrap_or("-".into())
    };
    let mut lines = vec![
        "| storage (ten snapshots, 1 MiB rewritten between) | one full snapshot (MiB) | ten held, counted once (MiB) | ratio | of which layers (MiB) | of which memory images (MiB) | added on disk (MiB) |".to_string(),
        "|---|---|---|---|---|---|---|".to_string(),
    ];
    for (k, label) in [
        ("filesystem_only", "filesystem only"),
        ("with_memory", "with memory"),
    ] {
        let s = &st[k];
        lines.push(format!(
            "| {label} | {} | {} | {:.2} | {} | {} | {} |",
            mib(&s["one_full_bytes"]),
            mib(&s["ten_held_bytes"]),
            s["ratio_ten_over_one"].as_f64().unwrap_or(f64::NAN),
            mib(&s["ten_layers_held_bytes"]),
            mib(&s["ten_images_bytes"]),
            mib(&s["added_on_disk_bytes"]),
        ));
    }
    lines.join("\n")
}

struct Du {
    total: u64,
    exclusive: u64,
    set_shared: u64,
}

/// `btrfs filesystem du -s --raw <path>`: Total (every file's bytes), Exclusive (referenced
/// by nothing else) and Set shared (shared extents, counted once within the path).
fn btrfs_du(path: &Path, errlog: &Path) -> anyhow::Result<Du> {
    let out = procs::run_output(
        "btrfs filesystem du",
        Command::new("btrfs")
            .args(["filesystem", "du", "-s", "--raw"])
            .arg(path)
            .stderr(std::fs::File::create(errlog)?),
    )?;
    let line = out
        .lines()
        .last()
        .with_context(|| format!("btrfs filesystem du {}: no output", path.display()))?;
    let f: Vec<&str> = line.split_whitespace().collect();
    let num = |i: usize| -> u64 { f.get(i).and_then(|x| x.parse().ok()).unwrap_or(0) };
    Ok(Du {
        total: num(0),
        exclusive: num(1),
        set_shared: num(2),
    })
}

/// (data used, metadata used) bytes of the volume from `btrfs filesystem df -b`.
fn btrfs_df(vol: &Path, errlog: &Path) -> anyhow::Result<(u64, u64)> {
    let mut c = Command::new("btrfs");
    c.args(["filesystem", "sync"]).arg(vol);
    procs::run_quiet("btrfs filesystem sync", &mut c, errlog)?;
    let out = procs::run_output(
        "btrfs filesystem df",
        Command::new("btrfs")
            .args(["filesystem", "df", "-b"])
            .arg(vol),
    )?;
    let used = |prefix: &str| -> u64 {
        out.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit("used=").next())
            .filter_map(|v| v.trim().parse::<u64>().ok())
            .sum()
    };
    Ok((used("Data"), used("Metadata")))
}

/// Bytes allocated on disk (st_blocks × 512) by everything under `p`.
/// Bytes the store holds for these snapshots' memory images: their manifests and every
/// distinct chunk they reference, counted once, as allocated on disk.
fn stored_image_bytes(d: &Daemon, sids: &[String]) -> anyhow::Result<u64> {
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    for sid in sids {
        let path = d.manifest_of(sid);
        total += alloc_bytes(&path);
        let m: Value = serde_json::from_slice(
            &std::fs::read(&path).with_context(|| format!("read {}", path.display()))?,
        )?;
        for e in m["memory"]["entries"].as_array().into_iter().flatten() {
            for h in e["chunks"].as_array().into_iter().flatten() {
                let h = h.as_str().context("chunk hash")?;
                if seen.insert(h.to_string()) {
                    total += alloc_bytes(&d.blob_path(h));
                }
            }
        }
    }
    Ok(total)
}

fn alloc_bytes(p: &Path) -> u64 {
    let Ok(md) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    let mut n = md.blocks() * 512;
    if md.is_dir() {
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                n += alloc_bytes(&e.path());
            }
        }
    }
    n
}

/// A writable overlay of the template at `<base>/merged` (upper and work dirs beside it).
fn overlay_mount(base: &Path, template: &Path) -> anyhow::Result<PathBuf> {
    let (upper, wd, merged) = (base.join("upper"), base.join("work"), base.join("merged"));
    for p in [&upper, &wd, &merged] {
        std::fs::create_dir_all(p)?;
    }
    let mut c = Command::new("mount");
    c.args(["-t", "overlay", "overlay", "-o"])
        .arg(format!(
            "lowerdir={},upperdir={},workdir={}",
            template.display(),
            upper.display(),
            wd.display()
        ))
        .arg(&merged);
    procs::run_quiet("mount overlay", &mut c, &base.join("mount.err"))?;
    Ok(merged)
}

/// Prints the suite's table, storage table and targets, then the JSON line.
pub fn print(out: &Value, rep: &Report, wall_s: f64) {
    println!(
        "sandboxd bench --suite snapshots: template {}, N={}, {} CPUs, {}, systrap, {:.0} s, load {} -> {}",
        out["template"].as_str().unwrap_or_default(),
        out["runs"],
        out["machine"]["cpus"],
        out["machine"]["runsc_version"].as_str().unwrap_or_default(),
        wall_s,
        out["machine"]["loadavg_start"].as_str().unwrap_or_default(),
        out["machine"]["loadavg_end"].as_str().unwrap_or_default(),
    );
    println!();
    println!("{}", report::table(&rep.rows));
    println!();
    println!("{}", rep.text);
    println!();
    println!("{}", report::targets_text(&rep.targets));
    println!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_add_up() {
        assert_eq!(FILES * FILE_BYTES, 104_860_000);
        assert!((FILES * FILE_BYTES) as f64 / MIB >= 100.0);
        assert!((CHANGE_FILES * FILE_BYTES) as f64 >= MIB);
        assert!(change_script(9).contains("range(450, 500)"));
        assert!(hog_script(MemoryFill::Random).contains("256 << 20"));
    }
}
