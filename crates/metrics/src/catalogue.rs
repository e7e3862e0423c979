//! The v1 catalogue of per-sandbox series. Keys are stable: clients select on them.

use sandboxd_core::SandboxState;

/// How the samples in one bucket of a query become one point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agg {
    /// Mean of the samples (gauges that move: CPU, memory, pids).
    Avg,
    /// The bucket's last sample (cumulative counters, limits, states).
    Last,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    CpuUsageCores,
    MemoryUsageBytes,
    MemoryLimitBytes,
    DiskUsageBytes,
    DiskLimitBytes,
    Pids,
    NetworkRxBytes,
    NetworkTxBytes,
    Phase,
    Restarts,
    OomKills,
    EgressDeniedTotal,
}

/// One row of samples, indexed by `Metric as usize`; `None` where the metric had no value
/// (a paused sandbox has a phase but no CPU).
pub type Sample = [Option<f64>; Metric::COUNT];

impl Metric {
    pub const COUNT: usize = 12;
    pub const ALL: [Metric; Metric::COUNT] = [
        Metric::CpuUsageCores,
        Metric::MemoryUsageBytes,
        Metric::MemoryLimitBytes,
        Metric::DiskUsageBytes,
        Metric::DiskLimitBytes,
        Metric::Pids,
        Metric::NetworkRxBytes,
        Metric::NetworkTxBytes,
        Metric::Phase,
        Metric::Restarts,
        Metric::OomKills,
        Metric::EgressDeniedTotal,
    ];

    /// The stable key (also the store's column name).
    pub fn key(self) -> &'static str {
        match self {
            Metric::CpuUsageCores => "cpu_usage_cores",
            Metric::MemoryUsageBytes => "memory_usage_bytes",
            Metric::MemoryLimitBytes => "memory_limit_bytes",
            Metric::DiskUsageBytes => "disk_usage_bytes",
            Metric::DiskLimitBytes => "disk_limit_bytes",
            Metric::Pids => "pids",
            Metric::NetworkRxBytes => "network_rx_bytes",
            Metric::NetworkTxBytes => "network_tx_bytes",
            Metric::Phase => "phase",
            Metric::Restarts => "restarts",
            Metric::OomKills => "oom_kills",
            Metric::EgressDeniedTotal => "egress_denied_total",
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Metric::CpuUsageCores => "cores",
            Metric::MemoryUsageBytes
            | Metric::MemoryLimitBytes
            | Metric::DiskUsageBytes
            | Metric::DiskLimitBytes
            | Metric::NetworkRxBytes
            | Metric::NetworkTxBytes => "bytes",
            Metric::Pids | Metric::Restarts | Metric::OomKills | Metric::EgressDeniedTotal => {
                "count"
            }
            Metric::Phase => "state",
        }
    }

    pub fn agg(self) -> Agg {
        match self {
            Metric::CpuUsageCores | Metric::MemoryUsageBytes | Metric::Pids => Agg::Avg,
            _ => Agg::Last,
        }
    }
}

/// Codes of the `phase` series, by NeevCloud phase.
pub const PHASES: [(&str, f64); 7] = [
    ("Pending", 0.0),
    ("Ready", 1.0),
    ("NotReady", 2.0),
    ("Unknown", 3.0),
    ("Paused", 4.0),
    ("Pausing", 5.0),
    ("Resuming", 6.0),
];

/// The NeevCloud phase a state shows as (as the API renders it).
pub fn phase_name(s: SandboxState) -> &'static str {
    match s {
        SandboxState::Starting => "Pending",
        SandboxState::Running | SandboxState::Snapshotting => "Ready",
        SandboxState::Pausing => "Pausing",
        SandboxState::Paused | SandboxState::Stopped => "Paused",
        SandboxState::Resuming => "Resuming",
        SandboxState::Stopping | SandboxState::Failed | SandboxState::Deleting => "NotReady",
    }
}

/// The value the `phase` series records for a state.
pub fn phase_code(s: SandboxState) -> f64 {
    let name = phase_name(s);
    PHASES
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(3.0, |(_, c)| *c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_is_consistent() {
        for (i, m) in Metric::ALL.iter().enumerate() {
            assert_eq!(*m as usize, i, "{m:?} out of order");
            assert!(m.key().chars().all(|c| c.is_ascii_lowercase() || c == '_'));
        }
        let mut keys: Vec<_> = Metric::ALL.iter().map(|m| m.key()).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), Metric::COUNT);
    }

    #[test]
    fn phases_have_codes() {
        assert_eq!(phase_code(SandboxState::Running), 1.0);
        assert_eq!(phase_code(SandboxState::Paused), 4.0);
        assert_eq!(phase_code(SandboxState::Failed), 2.0);
        assert_eq!(phase_code(SandboxState::Starting), 0.0);
    }
}
