//! The OCI bundle config for a sandbox: the agent as init, the overlay rootfs, cgroup limits.

use std::path::Path;

use serde_json::{json, Value};

use crate::SandboxSpec;

/// Where the agent binary appears inside every sandbox (bind-mounted read-only).
pub const AGENT_PATH_IN_SANDBOX: &str = "/.sbx/agent";

const CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SYS_CHROOT",
    "CAP_MKNOD",
    "CAP_AUDIT_WRITE",
    "CAP_SETFCAP",
    "CAP_SYS_ADMIN",
];

/// The cgroup limit: the sandbox's memory plus headroom for gVisor itself. The agent keeps
/// the sandbox's processes under the sandbox's limit by killing the largest; the cgroup only
/// bites (taking the whole sandbox down) if that is outrun.
pub(crate) fn cgroup_memory_limit(sandbox_bytes: u64) -> u64 {
    sandbox_bytes + (sandbox_bytes / 4).max(256 << 20)
}

pub(crate) fn cgroup_path(short: &str) -> String {
    format!("/sandboxd/{short}")
}

pub(crate) fn config(
    spec: &SandboxSpec,
    short: &str,
    rootfs: &Path,
    agent: &Path,
    netns: &str,
) -> Value {
    let mut env: Vec<String> = vec![
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        "HOME=/root".into(),
        "LANG=C.UTF-8".into(),
    ];
    for (k, v) in &spec.env {
        env.retain(|e| !e.starts_with(&format!("{k}=")));
        env.push(format!("{k}={v}"));
    }
    let r = &spec.resources;
    let period: u64 = 100_000;
    let quota = u64::from(r.cpu_millis) * period / 1000;
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": [AGENT_PATH_IN_SANDBOX, "--memory-limit", r.memory_bytes().to_string()],
            "env": env,
            "cwd": "/",
            "capabilities": {
                "bounding": CAPS, "effective": CAPS, "permitted": CAPS
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1048576u64, "soft": 1048576u64}],
            "noNewPrivileges": false
        },
        "root": {"path": rootfs, "readonly": false},
        "hostname": spec.hostname,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": AGENT_PATH_IN_SANDBOX, "type": "bind", "source": agent, "options": ["rbind", "ro"]}
        ],
        "linux": {
            "cgroupsPath": cgroup_path(short),
            "resources": {
                "memory": {"limit": cgroup_memory_limit(r.memory_bytes())},
                "cpu": {"quota": quota, "period": period},
                "pids": {"limit": 4096}
            },
            "namespaces": [
                {"type": "pid"},
                {"type": "ipc"},
                {"type": "uts"},
                {"type": "mount"},
                {"type": "network", "path": netns}
            ]
        }
    })
}
