//! The baseline: runsc driven directly, without sandboxd.
//!
//! Raw containers get an OCI bundle from `runsc spec`, edited so the root is the template dir
//! itself (read-only, no overlay), the process is `/bin/sleep 1000`, and the cgroup is
//! `/<cg_parent>/<id>`. They run with `--network=none`, so no netns, veth or wrapper is
//! involved. Global flags otherwise match the daemon's: `--platform=systrap --overlay2=none`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::procs;

pub struct Raw {
    runsc: PathBuf,
    /// runsc `--root` for the baseline containers.
    root: PathBuf,
    dir: PathBuf,
    /// cgroup parent (relative to each v1 controller), e.g. `sandboxd-bench-1234`.
    pub cg_parent: String,
    spec: Value,
    errlog: PathBuf,
    /// Containers run and not deleted yet.
    live: BTreeSet<String>,
    seq: u32,
}

impl Raw {
    pub fn new(runsc: &Path, dir: &Path, template: &Path) -> anyhow::Result<Raw> {
        let root = dir.join("runsc");
        let spec_dir = dir.join("spec");
        std::fs::create_dir_all(&root)?;
        std::fs::create_dir_all(&spec_dir)?;
        let errlog = dir.join("runsc.err");
        procs::run_quiet(
            "runsc spec",
            Command::new(runsc)
                .arg("spec")
                .arg(format!("--bundle={}", spec_dir.display())),
            &errlog,
        )?;
        let spec: Value = serde_json::from_slice(
            &std::fs::read(spec_dir.join("config.json")).context("read runsc spec output")?,
        )?;
        let sleep = ["bin/sleep", "usr/bin/sleep"]
            .iter()
            .find(|p| template.join(p).symlink_metadata().is_ok())
            .with_context(|| format!("no sleep binary in {}", template.display()))?;
        let mut spec = spec;
        spec["process"]["args"] = json!([format!("/{sleep}"), "1000"]);
        spec["process"]["terminal"] = json!(false);
        spec["root"] = json!({"path": template, "readonly": true});
        Ok(Raw {
            runsc: runsc.to_path_buf(),
            root,
            dir: dir.to_path_buf(),
            cg_parent: format!("sandboxd-bench-{}", std::process::id()),
            spec,
            errlog,
            live: BTreeSet::new(),
            seq: 0,
        })
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.runsc);
        c.arg(format!("--root={}", self.root.display()))
            .arg("--platform=systrap")
            .arg("--network=none")
            .arg("--overlay2=none");
        c
    }

    /// Writes the bundle of a new container (not timed) and returns its id.
    pub fn prepare(&mut self) -> anyhow::Result<String> {
        self.seq += 1;
        let id = format!("bench-raw-{}-{}", std::process::id(), self.seq);
        let bundle = self.dir.join(&id);
        std::fs::create_dir_all(&bundle)?;
        let mut spec = self.spec.clone();
        spec["linux"]["cgroupsPath"] = json!(format!("/{}/{id}", self.cg_parent));
        std::fs::write(bundle.join("config.json"), serde_json::to_vec(&spec)?)?;
        Ok(id)
    }

    /// `runsc run --detach` (stdio on /dev/null, as the recipe requires).
    pub fn run(&mut self, id: &str) -> anyhow::Result<Duration> {
        let bundle = self.dir.join(id);
        let mut c = self.cmd();
        c.arg("run")
            .arg("--detach")
            .arg(format!("--bundle={}", bundle.display()))
            .arg(id);
        self.live.insert(id.to_string());
        let t = Instant::now();
        procs::run_quiet("runsc run", &mut c, &self.errlog)?;
        Ok(t.elapsed())
    }

    /// Writes the bundle of a new container whose root is `root`, writable (not timed), that
    /// runs `args`. Returns its id.
    pub fn prepare_custom(&mut self, root: &Path, args: &[String]) -> anyhow::Result<String> {
        let id = self.prepare()?;
        let mut spec = self.spec.clone();
        spec["linux"]["cgroupsPath"] = json!(format!("/{}/{id}", self.cg_parent));
        spec["root"] = json!({"path": root, "readonly": false});
        spec["process"]["args"] = json!(args);
        std::fs::write(
            self.dir.join(&id).join("config.json"),
            serde_json::to_vec(&spec)?,
        )?;
        Ok(id)
    }

    /// `runsc checkpoint --image-path=<image> [extra] [--leave-running] <id>`. Without
    /// `leave_running` the container stops; it must then be deleted ([`Raw::delete`]) before
    /// its id can be restored.
    pub fn checkpoint(
        &self,
        id: &str,
        image: &Path,
        leave_running: bool,
        extra: &[&str],
    ) -> anyhow::Result<Duration> {
        let mut c = self.cmd();
        c.arg("checkpoint")
            .arg(format!("--image-path={}", image.display()))
            .args(extra);
        if leave_running {
            c.arg("--leave-running");
        }
        c.arg(id);
        let t = Instant::now();
        procs::run_quiet("runsc checkpoint", &mut c, &self.errlog)?;
        Ok(t.elapsed())
    }

    /// `runsc restore --detach --image-path=<image>` of container `id` (its bundle must have
    /// been written by [`Raw::prepare_custom`]).
    pub fn restore(&mut self, id: &str, image: &Path) -> anyhow::Result<Duration> {
        let bundle = self.dir.join(id);
        let mut c = self.cmd();
        c.arg("restore")
            .arg("--detach")
            .arg(format!("--image-path={}", image.display()))
            .arg(format!("--bundle={}", bundle.display()))
            .arg(id);
        self.live.insert(id.to_string());
        let t = Instant::now();
        procs::run_quiet("runsc restore", &mut c, &self.errlog)?;
        Ok(t.elapsed())
    }

    /// `runsc exec <id> <argv...>` to completion.
    pub fn exec_argv(&self, id: &str, argv: &[&str]) -> anyhow::Result<Duration> {
        let mut c = self.cmd();
        c.arg("exec").arg(id).args(argv);
        let t = Instant::now();
        procs::run_quiet("runsc exec", &mut c, &self.errlog)?;
        Ok(t.elapsed())
    }

    /// `runsc delete --force`, keeping the bundle (for a later restore under the same id).
    pub fn delete_keep_bundle(&mut self, id: &str) -> anyhow::Result<Duration> {
        let mut c = self.cmd();
        c.args(["delete", "--force", id]);
        let t = Instant::now();
        procs::run_quiet("runsc delete", &mut c, &self.errlog)?;
        self.live.remove(id);
        Ok(t.elapsed())
    }

    /// `runsc exec <id> /bin/true x`.
    pub fn exec_true(&self, id: &str) -> anyhow::Result<Duration> {
        self.exec_argv(id, &["/bin/true", "x"])
    }

    /// `runsc delete --force`, and the container's bundle.
    pub fn delete(&mut self, id: &str) -> anyhow::Result<Duration> {
        let took = self.delete_keep_bundle(id)?;
        let _ = std::fs::remove_dir_all(self.dir.join(id));
        Ok(took)
    }

    /// The container's memory cgroup usage in bytes.
    /// The container's cgroup path (below the controller's root).
    pub fn cgroup(&self, id: &str) -> String {
        format!("{}/{id}", self.cg_parent)
    }

    pub fn memory_usage(&self, id: &str) -> anyhow::Result<(u64, u64)> {
        memory_usage(&format!("{}/{id}", self.cg_parent))
    }

    /// Deletes what is left and removes the cgroup parent. Returns ids it could not delete.
    pub fn cleanup(&mut self) -> Vec<String> {
        let mut failed = Vec::new();
        for id in self.live.clone() {
            if let Err(e) = self.delete(&id) {
                eprintln!("bench: cleanup: {e:#}");
                failed.push(id);
            }
        }
        if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
            for ctl in rd.flatten() {
                let parent = ctl.path().join(&self.cg_parent);
                if let Ok(kids) = std::fs::read_dir(&parent) {
                    for k in kids.flatten() {
                        if k.path().is_dir() {
                            let _ = std::fs::remove_dir(k.path());
                        }
                    }
                }
                let _ = std::fs::remove_dir(&parent);
            }
        }
        failed
    }
}

/// `memory.usage_in_bytes` and the rss (`total_rss` of memory.stat) of a v1 memory cgroup.
pub fn memory_usage(cgroup: &str) -> anyhow::Result<(u64, u64)> {
    let dir = Path::new("/sys/fs/cgroup/memory").join(cgroup.trim_start_matches('/'));
    let usage: u64 = std::fs::read_to_string(dir.join("memory.usage_in_bytes"))
        .with_context(|| format!("read {}/memory.usage_in_bytes", dir.display()))?
        .trim()
        .parse()?;
    let stat = std::fs::read_to_string(dir.join("memory.stat")).unwrap_or_default();
    let rss = stat
        .lines()
        .find_map(|l| l.strip_prefix("total_rss "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    Ok((usage, rss))
}

/// `runsc exec` against a sandbox of the daemon, the way the daemon itself must call runsc:
/// inside the sandbox's netns, in a private mount namespace with a tmpfs over
/// `/proc/sys/net/core` (nsenter + unshare + sh, as in docs/runsc-recipe.md).
pub fn daemon_exec_wrapped(
    runsc: &Path,
    data_dir: &Path,
    id: &str,
    short: &str,
    errlog: &Path,
) -> anyhow::Result<Duration> {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/var/run/netns/sbx-{short}"))
        .args(["unshare", "-m", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs none /proc/sys/net/core && exec \"$@\"")
        .arg("sh")
        .arg(runsc)
        .args(daemon_globals(data_dir))
        .args(["exec", id, "/bin/true", "x"]);
    let t = Instant::now();
    procs::run_quiet("wrapped runsc exec", &mut c, errlog)?;
    Ok(t.elapsed())
}

/// The same `runsc exec`, bare: from the host netns, no wrapper (exec does not need it).
pub fn daemon_exec_bare(
    runsc: &Path,
    data_dir: &Path,
    id: &str,
    errlog: &Path,
) -> anyhow::Result<Duration> {
    let mut c = Command::new(runsc);
    c.args(daemon_globals(data_dir))
        .args(["exec", id, "/bin/true", "x"]);
    let t = Instant::now();
    procs::run_quiet("runsc exec", &mut c, errlog)?;
    Ok(t.elapsed())
}

/// `runsc checkpoint --leave-running` of a sandbox of the daemon, called as the daemon calls
/// runsc: in the sandbox's netns wrapper, with the daemon's global flags (incl.
/// `--net-disconnect-ok`).
pub fn daemon_checkpoint_wrapped(
    runsc: &Path,
    data_dir: &Path,
    id: &str,
    short: &str,
    image: &Path,
    extra: &[&str],
    errlog: &Path,
) -> anyhow::Result<Duration> {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/var/run/netns/sbx-{short}"))
        .args(["unshare", "-m", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs none /proc/sys/net/core && exec \"$@\"")
        .arg("sh")
        .arg(runsc)
        .args(daemon_globals(data_dir))
        .arg("--net-disconnect-ok")
        .arg("checkpoint")
        .arg("--leave-running")
        .arg(format!("--image-path={}", image.display()))
        .args(extra)
        .arg(id);
    let t = Instant::now();
    procs::run_quiet("wrapped runsc checkpoint", &mut c, errlog)?;
    Ok(t.elapsed())
}

fn daemon_globals(data_dir: &Path) -> Vec<String> {
    vec![
        format!("--root={}", data_dir.join("runsc").display()),
        "--platform=systrap".into(),
        "--network=sandbox".into(),
        "--overlay2=none".into(),
    ]
}

/// Fails unless the template has been built.
pub fn check_template(dir: &Path) -> anyhow::Result<()> {
    if !dir.join(".sbx-template-ok").is_file() {
        bail!(
            "template {} is missing or unbuilt (run scripts/build-templates)",
            dir.display()
        );
    }
    Ok(())
}
