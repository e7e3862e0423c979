//! Reads a sandbox's cgroup v1 counters (runsc creates the groups from the OCI spec).

use std::path::PathBuf;

const ROOT: &str = "/sys/fs/cgroup";

fn file(controller: &str, cgroup: &str, name: &str) -> PathBuf {
    PathBuf::from(ROOT)
        .join(controller)
        .join(cgroup.trim_start_matches('/'))
        .join(name)
}

fn read_u64(controller: &str, cgroup: &str, name: &str) -> Option<u64> {
    std::fs::read_to_string(file(controller, cgroup, name))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// CPU time used, in ns (cpuacct.usage).
pub fn cpu_usage_ns(cgroup: &str) -> u64 {
    read_u64("cpuacct", cgroup, "cpuacct.usage").unwrap_or(0)
}

pub fn memory_bytes(cgroup: &str) -> u64 {
    read_u64("memory", cgroup, "memory.usage_in_bytes").unwrap_or(0)
}

pub fn memory_limit_bytes(cgroup: &str) -> u64 {
    read_u64("memory", cgroup, "memory.limit_in_bytes").unwrap_or(0)
}

pub fn pids(cgroup: &str) -> u64 {
    read_u64("pids", cgroup, "pids.current").unwrap_or(0)
}

/// OOM kills in the group (the `oom_kill` line of memory.oom_control).
pub fn oom_kills(cgroup: &str) -> u64 {
    std::fs::read_to_string(file("memory", cgroup, "memory.oom_control"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("oom_kill ")
                    .and_then(|v| v.trim().parse().ok())
            })
        })
        .unwrap_or(0)
}

/// Whether the group exists in any v1 controller.
pub fn exists(cgroup: &str) -> bool {
    ["memory", "cpu", "pids"]
        .iter()
        .any(|c| file(c, cgroup, "").exists())
}

/// Removes the group from each controller (only succeeds once it is empty).
pub fn remove(cgroup: &str) {
    for c in [
        "memory", "cpu", "cpuacct", "pids", "freezer", "cpuset", "blkio", "devices",
    ] {
        let _ = std::fs::remove_dir(file(c, cgroup, ""));
    }
}

/// Sets a running sandbox's CPU quota (thousandths of a core, period 100 ms) and memory
/// limit. A memory limit below what the group uses now is refused by the kernel (EBUSY).
pub fn set_limits(cgroup: &str, cpu_millis: u32, memory_bytes: u64) -> std::io::Result<()> {
    let period: u64 = 100_000;
    let quota = u64::from(cpu_millis) * period / 1000;
    std::fs::write(file("cpu", cgroup, "cpu.cfs_period_us"), period.to_string())?;
    std::fs::write(file("cpu", cgroup, "cpu.cfs_quota_us"), quota.to_string())?;
    std::fs::write(
        file("memory", cgroup, "memory.limit_in_bytes"),
        memory_bytes.to_string(),
    )
}
