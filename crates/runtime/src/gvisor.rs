//! The gVisor runtime: runsc (systrap platform) with an overlayfs rootfs, a netns and cgroups.
//!
//! Every runsc call runs inside the sandbox's netns (runsc's control socket is abstract, so it
//! is only reachable from there) and in a private mount namespace with a tmpfs over
//! `/proc/sys/net/core`, which keeps runsc's root-netns check from refusing to start.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use sandboxd_core::{fault, NetSlot};
use tracing::{debug, warn};

use crate::overlay::{self, Layout};
use crate::sys::run;
use crate::volume::Volume;
use crate::{
    cgroup, netns, oci, CaptureStats, ContainerStatus, Runtime, RuntimeError, SandboxSpec, Usage,
};

#[derive(Debug, Clone)]
pub struct GvisorConfig {
    /// Per-sandbox directories live in `<data_dir>/sandboxes`, runsc state in `<data_dir>/runsc`.
    pub data_dir: PathBuf,
    /// The static agent binary bind-mounted into every sandbox.
    pub agent_binary: PathBuf,
    pub runsc: PathBuf,
    pub platform: String,
    /// `runsc checkpoint --compression`: `none` (default: on this host compression costs ~1.8 s
    /// per 256 MiB for a 1.7 % smaller image of random memory) or `flate-best-speed`.
    pub checkpoint_compression: String,
    /// Destinations any sandbox of this node may ever reach (`0.0.0.0/0` = no ceiling).
    pub egress_ceiling: Vec<sandboxd_egress::Net4>,
    /// The node's DNS resolver and egress proxy (domain rules), if it runs them.
    pub egress_node: Option<std::sync::Arc<sandboxd_egress::Node>>,
}

pub struct Gvisor {
    cfg: GvisorConfig,
    volume: Volume,
}

/// The 12-hex-char name host objects of sandbox `id` carry.
pub fn short_of(id: &str) -> String {
    id.chars().filter(|c| *c != '-').take(12).collect()
}

impl Gvisor {
    pub fn new(cfg: GvisorConfig) -> Result<Self, RuntimeError> {
        for d in [cfg.data_dir.join("sandboxes"), cfg.data_dir.join("runsc")] {
            std::fs::create_dir_all(&d)
                .map_err(RuntimeError::io(format!("create {}", d.display())))?;
        }
        if !cfg.agent_binary.is_file() {
            return Err(RuntimeError::Io {
                what: format!("agent binary {}", cfg.agent_binary.display()),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        let volume = Volume::open(&cfg.data_dir)?;
        Ok(Gvisor { cfg, volume })
    }

    fn layout(&self, id: &str) -> Layout {
        Layout {
            dir: self.cfg.data_dir.join("sandboxes").join(id),
            layer: self.volume.subvolume(id),
        }
    }

    fn state_root(&self) -> PathBuf {
        self.cfg.data_dir.join("runsc")
    }

    /// A runsc command that will run inside netns `short`. The returned `File` keeps the netns
    /// fd open; it must live until the command is spawned.
    fn runsc(&self, short: &str) -> Result<(Command, File), RuntimeError> {
        let ns = File::open(netns::netns_path(short)).map_err(RuntimeError::io("open netns"))?;
        let fd = ns.as_raw_fd();
        let mut cmd = Command::new(&self.cfg.runsc);
        cmd.arg(format!("--root={}", self.state_root().display()))
            .arg(format!("--platform={}", self.cfg.platform))
            .arg("--network=sandbox")
            .arg("--overlay2=none")
            .arg("--net-disconnect-ok");
        let root = CString::new("/").expect("static string");
        let target = CString::new("/proc/sys/net/core").expect("static string");
        let fstype = CString::new("tmpfs").expect("static string");
        // SAFETY: the closure runs between fork and exec and only makes raw syscalls (setns,
        // unshare, mount) on data prepared before the fork; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0
                    || libc::unshare(libc::CLONE_NEWNS) != 0
                    || libc::mount(
                        std::ptr::null(),
                        root.as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    ) != 0
                    || libc::mount(
                        fstype.as_ptr(),
                        target.as_ptr(),
                        fstype.as_ptr(),
                        0,
                        std::ptr::null(),
                    ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok((cmd, ns))
    }

    fn apply_egress(
        &self,
        short: &str,
        net: NetSlot,
        policy: &sandboxd_egress::Policy,
    ) -> Result<(), RuntimeError> {
        let subnet = sandboxd_egress::Net4::new(net.host_ip(), 16);
        if let Some(n) = &self.cfg.egress_node {
            n.register(net.sandbox_ip(), short, policy, subnet);
        }
        let at = sandboxd_egress::nft::Attach {
            short,
            sandbox_ip: net.sandbox_ip(),
            subnet,
            node: self
                .cfg
                .egress_node
                .as_ref()
                .map(|n| (n.dns_port, n.proxy_port)),
        };
        sandboxd_egress::nft::apply(at, policy, &self.cfg.egress_ceiling)?;
        Ok(())
    }

    fn runsc_run(&self, what: &str, short: &str, args: &[&str]) -> Result<String, RuntimeError> {
        let (mut cmd, _ns) = self.runsc(short)?;
        cmd.args(args);
        let out = run(what, &mut cmd, None)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn start_container(
        &self,
        spec: &SandboxSpec,
        short: &str,
        layout: &Layout,
    ) -> Result<(), RuntimeError> {
        self.write_bundle(spec, short, layout)?;
        self.launch(spec, short, layout, None)
    }

    fn write_bundle(
        &self,
        spec: &SandboxSpec,
        short: &str,
        layout: &Layout,
    ) -> Result<(), RuntimeError> {
        let rootfs = layout.rootfs();
        let agent_dir = rootfs.join(".sbx");
        if !agent_dir.join("agent").exists() {
            std::fs::create_dir_all(&agent_dir)
                .map_err(RuntimeError::io("create agent mount point"))?;
            File::create(agent_dir.join("agent"))
                .map_err(RuntimeError::io("create agent mount point"))?;
        }
        let config = oci::config(
            spec,
            short,
            &rootfs,
            &self.cfg.agent_binary,
            &netns::netns_path(short),
        );
        std::fs::write(
            layout.bundle().join("config.json"),
            serde_json::to_vec_pretty(&config).expect("json"),
        )
        .map_err(RuntimeError::io("write OCI config"))?;
        // The sandbox's DNS is the host side of its veth (redirected to the node's resolver).
        let etc = rootfs.join("etc");
        if etc.is_dir() {
            let _ = std::fs::remove_file(etc.join("resolv.conf"));
            std::fs::write(
                etc.join("resolv.conf"),
                format!("nameserver {}\n", spec.net.host_ip()),
            )
            .map_err(RuntimeError::io("write resolv.conf"))?;
        }
        // The node CA that signs what the egress proxy presents for transformed names.
        if let Some(pem) = self.cfg.egress_node.as_ref().and_then(|n| n.ca_pem()) {
            install_ca(&rootfs, pem)?;
        }
        Ok(())
    }

    /// `runsc run`, or `runsc restore` from `image` when given, detached.
    fn launch(
        &self,
        spec: &SandboxSpec,
        short: &str,
        layout: &Layout,
        image: Option<&Path>,
    ) -> Result<(), RuntimeError> {
        let log_path = layout.dir.join("runsc.log");
        let log = File::create(&log_path).map_err(RuntimeError::io("create runsc log"))?;
        let (mut cmd, _ns) = self.runsc(short)?;
        match image {
            Some(img) => cmd
                .arg("restore")
                .arg(format!("--image-path={}", img.display())),
            None => cmd.arg("run"),
        };
        cmd.arg("--detach")
            .arg(format!("--bundle={}", layout.bundle().display()))
            .arg(&spec.id)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(RuntimeError::io("dup log"))?)
            .stderr(log);
        let status = cmd.status().map_err(RuntimeError::io("spawn runsc run"))?;
        if !status.success() {
            let detail = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(RuntimeError::Command {
                what: if image.is_some() {
                    "runsc restore"
                } else {
                    "runsc run"
                }
                .into(),
                detail: detail
                    .trim()
                    .chars()
                    .rev()
                    .take(2000)
                    .collect::<String>()
                    .chars()
                    .rev()
                    .collect(),
            });
        }
        Ok(())
    }
}

/// Adds `pem` to the sandbox's trust store (Debian layout; the bundle is created if the image
/// has none). Written to the writable layer; idempotent.
fn install_ca(rootfs: &Path, pem: &str) -> Result<(), RuntimeError> {
    let local = rootfs.join("usr/local/share/ca-certificates");
    if rootfs.join("usr").is_dir() {
        std::fs::create_dir_all(&local).map_err(RuntimeError::io("create ca dir"))?;
        std::fs::write(local.join("sandboxd-egress.crt"), pem)
            .map_err(RuntimeError::io("write CA"))?;
    }
    let certs = rootfs.join("etc/ssl/certs");
    if !certs.is_dir() {
        std::fs::create_dir_all(&certs).map_err(RuntimeError::io("create cert dir"))?;
    }
    let bundle = certs.join("ca-certificates.crt");
    let current = std::fs::read_to_string(&bundle).unwrap_or_default();
    if !current.contains(pem.trim()) {
        let mut all = current;
        if !all.is_empty() && !all.ends_with('\n') {
            all.push('\n');
        }
        all.push_str(pem);
        std::fs::write(&bundle, all).map_err(RuntimeError::io("write CA bundle"))?;
    }
    Ok(())
}

impl Runtime for Gvisor {
    fn name(&self) -> &'static str {
        "gvisor"
    }

    fn create(&self, spec: &SandboxSpec) -> Result<(), RuntimeError> {
        let short = short_of(&spec.id);
        if !spec.template_rootfs.is_dir() {
            return Err(RuntimeError::MissingTemplate(
                spec.template_rootfs.display().to_string(),
            ));
        }
        let layout = self.layout(&spec.id);
        let t0 = std::time::Instant::now();
        let result = self
            .volume
            .create(&spec.id, spec.resources.disk_bytes())
            .and_then(|_| overlay::mount_rootfs(&layout, &spec.template_rootfs))
            .and_then(|()| {
                debug!(sandbox_id = %spec.id, us = t0.elapsed().as_micros() as u64, "rootfs mounted");
                crate::owners::record(&short, &self.cfg.data_dir);
                netns::create(&short, spec.net)
            })
            .and_then(|()| self.apply_egress(&short, spec.net, &spec.egress))
            .and_then(|()| {
                debug!(sandbox_id = %spec.id, us = t0.elapsed().as_micros() as u64, "netns ready");
                self.start_container(spec, &short, &layout)
            });
        debug!(sandbox_id = %spec.id, us = t0.elapsed().as_micros() as u64, "runsc run returned");
        if let Err(e) = &result {
            warn!(sandbox_id = %spec.id, error = %e, "create failed; cleaning up");
            let _ = self.destroy(&spec.id, Some(spec.net));
        }
        result
    }

    fn destroy(&self, id: &str, net: Option<NetSlot>) -> Result<(), RuntimeError> {
        let short = short_of(id);
        let layout = self.layout(id);
        if netns::exists(&short) {
            if let Err(e) = self.runsc_run("runsc delete", &short, &["delete", "--force", id]) {
                debug!(sandbox_id = id, error = %e, "runsc delete");
            }
        }
        // A container whose netns is gone can still have state; delete it from the root netns.
        if self
            .state_root()
            .join(format!("{id}_sandbox:{id}.state"))
            .exists()
            || self.state_root().join(id).exists()
        {
            let mut cmd = Command::new(&self.cfg.runsc);
            cmd.arg(format!("--root={}", self.state_root().display()))
                .args(["delete", "--force", id]);
            let _ = run("runsc delete", &mut cmd, None);
        }
        overlay::unmount_rootfs(&layout)?;
        sandboxd_egress::nft::remove(&short, net.map(NetSlot::sandbox_ip));
        if let (Some(n), Some(net)) = (&self.cfg.egress_node, net) {
            n.unregister(net.sandbox_ip());
        }
        netns::destroy(&short)?;
        cgroup::remove(&oci::cgroup_path(&short));
        crate::owners::forget(&short);
        self.volume.delete(id)?;
        if layout.dir.exists() {
            std::fs::remove_dir_all(&layout.dir).map_err(RuntimeError::io("remove sandbox dir"))?;
        }
        Ok(())
    }

    fn status(&self, id: &str) -> Result<ContainerStatus, RuntimeError> {
        let short = short_of(id);
        if !netns::exists(&short) {
            return Ok(if self.layout(id).dir.exists() {
                ContainerStatus::Stopped
            } else {
                ContainerStatus::Missing
            });
        }
        match self.runsc_run("runsc state", &short, &["state", id]) {
            Ok(out) => {
                let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
                Ok(match v.get("status").and_then(|s| s.as_str()) {
                    Some("running") => ContainerStatus::Running,
                    // Only a capture freezes a container, and it always thaws it again unless
                    // the daemon died in between: thaw it now.
                    Some("paused") => {
                        warn!(
                            sandbox_id = id,
                            "container left frozen by an interrupted capture; resuming it"
                        );
                        match self.runsc_run("runsc resume", &short, &["resume", id]) {
                            Ok(_) => ContainerStatus::Running,
                            Err(_) => ContainerStatus::Stopped,
                        }
                    }
                    _ => ContainerStatus::Stopped,
                })
            }
            Err(_) => Ok(ContainerStatus::Stopped),
        }
    }

    /// Only this data dir's sandboxes are swept: a sandbox's directory is made before any
    /// other host object and removed after all of them, so it marks everything it owns (other
    /// daemons on the same host keep theirs).
    fn capture(
        &self,
        id: &str,
        image_dir: Option<&Path>,
        layer_dest: Option<&Path>,
        keep_running: bool,
    ) -> Result<CaptureStats, RuntimeError> {
        let short = short_of(id);
        let t0 = Instant::now();
        self.runsc_run("runsc pause", &short, &["pause", id])?;
        fault::point("runtime.capture.paused");
        let result = (|| {
            let mut checkpoint_ms = 0;
            if let Some(img) = image_dir {
                let t = Instant::now();
                let path = format!("--image-path={}", img.display());
                let compression = format!("--compression={}", self.cfg.checkpoint_compression);
                let mut args = vec!["checkpoint", path.as_str(), compression.as_str()];
                if keep_running {
                    args.push("--leave-running");
                }
                args.push(id);
                if let Err(e) = self.runsc_run("runsc checkpoint", &short, &args) {
                    let _ = std::fs::remove_dir_all(img);
                    return Err(e);
                }
                checkpoint_ms = t.elapsed().as_millis() as u64;
                fault::point("runtime.capture.checkpointed");
            }
            if let Some(dest) = layer_dest {
                self.volume.capture(id, dest)?;
                fault::point("runtime.capture.layered");
            }
            Ok(checkpoint_ms)
        })();
        let checkpoint_ms = match result {
            Ok(ms) => ms,
            Err(e) => {
                // Leave the sandbox as it was: running.
                let _ = self.runsc_run("runsc resume", &short, &["resume", id]);
                return Err(e);
            }
        };
        if keep_running {
            self.runsc_run("runsc resume", &short, &["resume", id])?;
        } else {
            self.runsc_run("runsc delete", &short, &["delete", "--force", id])?;
        }
        Ok(CaptureStats {
            paused_ms: t0.elapsed().as_millis() as u64,
            checkpoint_ms,
        })
    }

    fn resume(&self, spec: &SandboxSpec, image_dir: Option<&Path>) -> Result<(), RuntimeError> {
        let short = short_of(&spec.id);
        let layout = self.layout(&spec.id);
        overlay::mount_rootfs(&layout, &spec.template_rootfs)?;
        if !netns::exists(&short) {
            crate::owners::record(&short, &self.cfg.data_dir);
            netns::create(&short, spec.net)?;
        } else {
            // A container left from a failed attempt would block the id.
            let _ = self.runsc_run("runsc delete", &short, &["delete", "--force", &spec.id]);
            netns::readdress(&short, spec.net)?;
        }
        self.apply_egress(&short, spec.net, &spec.egress)?;
        self.write_bundle(spec, &short, &layout)?;
        self.launch(spec, &short, &layout, image_dir)
    }

    fn restore_new_when(
        &self,
        spec: &SandboxSpec,
        layer_src: &Path,
        image: Option<crate::ImageWait>,
    ) -> Result<(), RuntimeError> {
        let short = short_of(&spec.id);
        let layout = self.layout(&spec.id);
        let result = self
            .volume
            .clone_layer(layer_src, &spec.id, spec.resources.disk_bytes())
            .and_then(|()| overlay::mount_rootfs(&layout, &spec.template_rootfs))
            .and_then(|()| {
                crate::owners::record(&short, &self.cfg.data_dir);
                netns::create(&short, spec.net)
            })
            .and_then(|()| self.apply_egress(&short, spec.net, &spec.egress))
            .and_then(|()| self.write_bundle(spec, &short, &layout))
            .and_then(|()| image.map(|wait| wait()).transpose())
            .and_then(|image_dir| self.launch(spec, &short, &layout, image_dir.as_deref()));
        if let Err(e) = &result {
            warn!(sandbox_id = %spec.id, error = %e, "restore failed; cleaning up");
            let _ = self.destroy(&spec.id, Some(spec.net));
        }
        result
    }

    fn rollback(
        &self,
        spec: &SandboxSpec,
        layer_src: &Path,
        image_dir: Option<&Path>,
    ) -> Result<(), RuntimeError> {
        let short = short_of(&spec.id);
        let layout = self.layout(&spec.id);
        if netns::exists(&short) {
            let _ = self.runsc_run("runsc delete", &short, &["delete", "--force", &spec.id]);
        }
        overlay::unmount_rootfs(&layout)?;
        fault::point("runtime.rollback.stopped");
        self.volume
            .clone_layer(layer_src, &spec.id, spec.resources.disk_bytes())?;
        fault::point("runtime.rollback.cloned");
        self.resume(spec, image_dir)
    }

    fn capture_paths(&self, name: &str) -> (PathBuf, PathBuf) {
        (
            self.volume.layer_path(name),
            self.cfg.data_dir.join("images").join(name),
        )
    }

    fn drop_layer(&self, layer: &Path) -> Result<(), RuntimeError> {
        self.volume.delete_layer(layer)
    }

    fn close_if_idle(&self) -> Result<(), RuntimeError> {
        if self.volume.ids().is_empty() {
            self.volume.close()?;
        }
        Ok(())
    }

    fn set_egress(
        &self,
        id: &str,
        net: NetSlot,
        policy: &sandboxd_egress::Policy,
    ) -> Result<(), RuntimeError> {
        self.apply_egress(&short_of(id), net, policy)
    }

    fn sweep_orphans(&self) -> Vec<String> {
        let mut removed = Vec::new();
        for short in crate::owners::orphans() {
            tracing::warn!(%short, "removing the host objects of a sandbox whose data dir is gone");
            let cg = oci::cgroup_path(&short);
            // Its gVisor processes first, so nothing holds the netns or the cgroup.
            for _ in 0..3 {
                let procs =
                    std::fs::read_to_string(format!("/sys/fs/cgroup/pids{cg}/cgroup.procs"))
                        .unwrap_or_default();
                if procs.trim().is_empty() {
                    break;
                }
                for pid in procs
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                {
                    // SAFETY: kill has no memory-safety preconditions.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            sandboxd_egress::nft::remove(&short, None);
            let _ = netns::destroy(&short);
            cgroup::remove(&cg);
            crate::owners::forget(&short);
            removed.push(short);
        }
        removed
    }

    fn discard_dead(&self, id: &str) -> Result<(), RuntimeError> {
        let short = short_of(id);
        // A container whose sandbox process died may still be listed: delete it, like the
        // last step of a stop.
        let _ = self.runsc_run("runsc kill", &short, &["kill", "--all", id, "KILL"]);
        self.runsc_run("runsc delete", &short, &["delete", "--force", id])
            .map(|_| ())
    }

    fn resize(&self, id: &str, r: &sandboxd_core::Resources) -> Result<(), RuntimeError> {
        let cg = oci::cgroup_path(&short_of(id));
        cgroup::set_limits(
            &cg,
            r.cpu_millis,
            oci::cgroup_memory_limit(r.memory_bytes()),
        )
        .map_err(RuntimeError::io(format!("resize cgroup {cg}")))
    }

    fn egress_denied(&self, id: &str) -> u64 {
        let short = short_of(id);
        sandboxd_egress::nft::denied_total(&short)
            + self
                .cfg
                .egress_node
                .as_ref()
                .map_or(0, |n| n.denied(&short))
    }

    fn egress_denied_many(&self, ids: &[String]) -> Vec<u64> {
        // One `nft` call for the whole table instead of one per sandbox.
        let counters = sandboxd_egress::nft::denied_all();
        ids.iter()
            .map(|id| {
                let short = short_of(id);
                counters.get(&short).copied().unwrap_or(0)
                    + self
                        .cfg
                        .egress_node
                        .as_ref()
                        .map_or(0, |n| n.denied(&short))
            })
            .collect()
    }

    fn alive(&self, id: &str) -> bool {
        cgroup::pids(&oci::cgroup_path(&short_of(id))) > 0
    }

    fn sweep(&self, keep: &[String]) -> Result<Vec<String>, RuntimeError> {
        let mut removed = Vec::new();
        let dirs: Vec<String> = std::fs::read_dir(self.cfg.data_dir.join("sandboxes"))
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let mut all = dirs;
        for id in self.volume.ids() {
            if !all.contains(&id) {
                all.push(id);
            }
        }
        for id in all {
            if !keep.contains(&id) {
                self.destroy(&id, None)?;
                removed.push(id);
            }
        }
        Ok(removed)
    }

    fn usage(&self, id: &str) -> Result<Usage, RuntimeError> {
        let short = short_of(id);
        let cg = oci::cgroup_path(&short);
        let (rx, tx) = netns::counters(&short);
        let disk = self.volume.usage(id);
        Ok(Usage {
            cpu_usage_ns: cgroup::cpu_usage_ns(&cg),
            memory_bytes: cgroup::memory_bytes(&cg),
            memory_limit_bytes: cgroup::memory_limit_bytes(&cg),
            pids: cgroup::pids(&cg),
            oom_kills: cgroup::oom_kills(&cg),
            disk_bytes: disk.map_or(0, |d| d.referenced),
            disk_limit_bytes: disk.and_then(|d| d.limit).unwrap_or(0),
            net_rx_bytes: rx,
            net_tx_bytes: tx,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ids_drop_dashes() {
        assert_eq!(
            short_of("0f8fad5b-d9cb-469f-a165-70867728950e"),
            "0f8fad5bd9cb"
        );
    }
}
