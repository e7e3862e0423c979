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
    /// Processes its agent's memory watchdog killed (since the agent started); `None` when
    /// the agent was not asked or did not answer (the last count holds).
    pub agent_oom_kills: Option<u64>,
    /// Connections and packets its egress policy refused (firewall drops + proxy refusals).
    pub egress_denied: u64,
}

/// A counter the host may reset (a new cgroup, a new agent) made monotonic: when a reading
/// falls below the previous one, the previous total is carried into the base.
#[derive(Debug, Clone, Copy, Default)]
struct Monotonic {
    base: u64,
    prev: Option<u64>,
}

impl Monotonic {
    fn update(&mut self, live: u64) -> u64 {
        if let Some(p) = self.prev {
            if live < p {
                self.base += p;
            }
        }
        self.prev = Some(live);
        self.base + live
    }

    fn value(&self) -> u64 {
        self.base + self.prev.unwrap_or(0)
    }
}

/// Per-sandbox state between samples.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    /// The previous CPU reading: (ns, unix ms).
    prev_cpu: Option<(u64, i64)>,
    /// Lifecycle counts recorded before this process started (from the store).
    pub restarts_base: f64,
    pub oom_base: f64,
    /// The stored OOM count already includes the live counters of the container this
    /// process finds running: taken out at its first reading.
    oom_base_has_live: bool,
    cgroup_ooms: Monotonic,
    agent_ooms: Monotonic,
}

impl Tracker {
    /// A tracker resuming counts from the last stored values.
    pub fn resume(restarts: Option<f64>, oom_kills: Option<f64>) -> Self {
        Tracker {
            restarts_base: restarts.unwrap_or(0.0),
            oom_base: oom_kills.unwrap_or(0.0),
            oom_base_has_live: oom_kills.is_some(),
            ..Tracker::default()
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
        // OOM kills: the kernel's in the sandbox's cgroup, the agent watchdog's, and deaths of
        // the whole sandbox; each counter kept monotonic over resets.
        if let Some(h) = host {
            if std::mem::take(&mut self.oom_base_has_live) {
                let live = (h.cgroup_oom_kills + h.agent_oom_kills.unwrap_or(0)) as f64;
                self.oom_base = (self.oom_base - live).max(0.0);
            }
            self.cgroup_ooms.update(h.cgroup_oom_kills);
            if let Some(a) = h.agent_oom_kills {
                self.agent_ooms.update(a);
            }
        }
        let live_ooms = self.cgroup_ooms.value() + self.agent_ooms.value();
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
    fn oom_kills_stay_monotonic_over_resets_and_restarts() {
        let h = |cg, ag| HostReading {
            cgroup_oom_kills: cg,
            agent_oom_kills: Some(ag),
            ..Default::default()
        };
        let oom = |s: Sample| s[Metric::OomKills as usize].unwrap();
        let mut t = Tracker::default();
        assert_eq!(
            oom(t.sample(1, SandboxState::Running, Some(&h(1, 2)), 0, 0)),
            3.0
        );
        // Paused: no reading; the count holds.
        assert_eq!(oom(t.sample(2, SandboxState::Paused, None, 0, 0)), 3.0);
        // Resumed with memory: a new cgroup (0), the same agent (2, then 3).
        assert_eq!(
            oom(t.sample(3, SandboxState::Running, Some(&h(0, 2)), 1, 0)),
            3.0
        );
        assert_eq!(
            oom(t.sample(4, SandboxState::Running, Some(&h(0, 3)), 1, 0)),
            4.0
        );
        // Cold start: both reset.
        assert_eq!(
            oom(t.sample(5, SandboxState::Running, Some(&h(0, 0)), 2, 0)),
            4.0
        );
        assert_eq!(
            oom(t.sample(6, SandboxState::Running, Some(&h(1, 0)), 2, 1)),
            6.0
        );

        // A daemon restart finds the same container: the stored 6 already counts its 1 + 0.
        let mut t = Tracker::resume(Some(0.0), Some(6.0));
        assert_eq!(
            oom(t.sample(7, SandboxState::Running, Some(&h(1, 0)), 0, 0)),
            6.0
        );
        assert_eq!(
            oom(t.sample(8, SandboxState::Running, Some(&h(1, 1)), 0, 0)),
            7.0
        );
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
