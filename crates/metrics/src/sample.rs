//! From raw host readings to a row of samples. Counters the host resets (a new cgroup after a
//! resume) never make a negative rate; lifecycle counts carry a base over daemon restarts.

use sandboxd_core::SandboxState;

use crate::catalogue::{phase_code, Metric, Sample};

/// What the host says about one running sandbox at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HostReading {
    /// Cumulative CPU time of its cgroup (cpuacct.usage), ns.
    pub cpu_ns: u64,
    pub memory_bytes: u64,
    pub memory_limit_bytes: u64,
    pub disk_bytes: u64,
    /// 0: unknown.
    pub disk_limit_bytes: u64,
    pub pids: u64,
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
    /// OOM kills in its current cgroup.
    pub cgroup_oom_kills: u64,
    /// Connections and packets its egress policy refused (firewall drops + proxy refusals).
    pub egress_denied: u64,
}

/// Per-sandbox state between samples.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    /// The previous CPU reading: (ns, unix ms).
    prev_cpu: Option<(u64, i64)>,
    /// Lifecycle counts recorded before this process started (from the store).
    pub restarts_base: f64,
    pub oom_base: f64,
}

impl Tracker {
    /// A tracker resuming counts from the last stored values.
    pub fn resume(restarts: Option<f64>, oom_kills: Option<f64>) -> Self {
        Tracker {
            prev_cpu: None,
            restarts_base: restarts.unwrap_or(0.0),
            oom_base: oom_kills.unwrap_or(0.0),
        }
    }

    /// One row at `now_ms`. `host` is `None` when the sandbox has no running container.
    /// `restarts` and `oom_deaths` are the engine's counts since this process started.
    pub fn sample(
        &mut self,
        now_ms: i64,
        state: SandboxState,
        host: Option<&HostReading>,
        restarts: u64,
        oom_deaths: u64,
    ) -> Sample {
        let mut s: Sample = [None; Metric::COUNT];
        s[Metric::Phase as usize] = Some(phase_code(state));
        s[Metric::Restarts as usize] = Some(self.restarts_base + restarts as f64);
        let live_ooms = host.map_or(0, |h| h.cgroup_oom_kills);
        s[Metric::OomKills as usize] = Some(self.oom_base + (oom_deaths + live_ooms) as f64);
        let Some(h) = host else {
            self.prev_cpu = None;
            return s;
        };
        s[Metric::CpuUsageCores as usize] = match self.prev_cpu {
            Some((ns, at)) if h.cpu_ns >= ns && now_ms > at => {
                Some((h.cpu_ns - ns) as f64 / ((now_ms - at) as f64 * 1e6))
            }
            _ => None,
        };
        self.prev_cpu = Some((h.cpu_ns, now_ms));
        s[Metric::MemoryUsageBytes as usize] = Some(h.memory_bytes as f64);
        s[Metric::MemoryLimitBytes as usize] = Some(h.memory_limit_bytes as f64);
        s[Metric::DiskUsageBytes as usize] = Some(h.disk_bytes as f64);
        s[Metric::DiskLimitBytes as usize] =
            (h.disk_limit_bytes > 0).then_some(h.disk_limit_bytes as f64);
        s[Metric::Pids as usize] = Some(h.pids as f64);
        s[Metric::NetworkRxBytes as usize] = Some(h.net_rx_bytes as f64);
        s[Metric::NetworkTxBytes as usize] = Some(h.net_tx_bytes as f64);
        s[Metric::EgressDeniedTotal as usize] = Some(h.egress_denied as f64);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(cpu_ns: u64) -> HostReading {
        HostReading {
            cpu_ns,
            memory_bytes: 100,
            ..Default::default()
        }
    }

    #[test]
    fn cpu_rate_is_cores() {
        let mut t = Tracker::default();
        let s = t.sample(1_000, SandboxState::Running, Some(&at(0)), 0, 0);
        assert_eq!(
            s[Metric::CpuUsageCores as usize],
            None,
            "no rate from one reading"
        );
        // 1.5 s of CPU in 1 s of wall time: 1.5 cores.
        let s = t.sample(2_000, SandboxState::Running, Some(&at(1_500_000_000)), 0, 0);
        assert_eq!(s[Metric::CpuUsageCores as usize], Some(1.5));
        assert_eq!(s[Metric::MemoryUsageBytes as usize], Some(100.0));
        assert_eq!(s[Metric::DiskLimitBytes as usize], None);
    }

    #[test]
    fn a_reset_counter_gives_no_rate() {
        let mut t = Tracker::default();
        t.sample(1_000, SandboxState::Running, Some(&at(5_000_000_000)), 0, 0);
        let s = t.sample(2_000, SandboxState::Running, Some(&at(10)), 0, 0);
        assert_eq!(s[Metric::CpuUsageCores as usize], None);
        let s = t.sample(3_000, SandboxState::Running, Some(&at(500_000_010)), 0, 0);
        assert_eq!(s[Metric::CpuUsageCores as usize], Some(0.5));
    }

    #[test]
    fn paused_sandboxes_have_only_lifecycle() {
        let mut t = Tracker::resume(Some(2.0), Some(1.0));
        let s = t.sample(1_000, SandboxState::Paused, None, 1, 0);
        assert_eq!(s[Metric::Phase as usize], Some(4.0));
        assert_eq!(s[Metric::Restarts as usize], Some(3.0));
        assert_eq!(s[Metric::OomKills as usize], Some(1.0));
        assert_eq!(s[Metric::CpuUsageCores as usize], None);
        assert_eq!(s[Metric::MemoryUsageBytes as usize], None);
    }

    #[test]
    fn oom_kills_add_the_live_cgroup() {
        let mut t = Tracker::default();
        let h = HostReading {
            cgroup_oom_kills: 2,
            ..Default::default()
        };
        let s = t.sample(1_000, SandboxState::Running, Some(&h), 0, 1);
        assert_eq!(s[Metric::OomKills as usize], Some(3.0));
    }
}
