//! The metrics sampler: every interval, one row per sandbox into `metrics.db` — host readings
//! of running sandboxes (cgroup v1 CPU/memory/pids/OOM counters, the layer's btrfs qgroup, the
//! host veth's byte counters) plus the lifecycle series of every sandbox. Runs on its own
//! thread; its own CPU time is exported (`sandboxd_metrics_sampler_cpu_seconds_total`) so its
//! cost is measured where it runs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sandboxd_core::SandboxId;
use sandboxd_engine::Engine;
use sandboxd_metrics::sample::{HostReading, Tracker};
use sandboxd_metrics::{Hub, Metric};
use tracing::warn;

/// How long the sampler waits for a sandbox's agent to answer its `Ping`.
const AGENT_TIMEOUT: Duration = Duration::from_millis(200);
/// How often the sampler asks each agent for its watchdog's OOM kills.
const AGENT_EVERY: Duration = Duration::from_secs(10);

pub struct Sampler {
    engine: Arc<Engine>,
    hub: Arc<Hub>,
    trackers: HashMap<SandboxId, Tracker>,
    /// When each sandbox's agent was last asked for its watchdog count.
    agent_asked: HashMap<SandboxId, Instant>,
    passes: u64,
}

fn reading(u: &sandboxd_runtime::Usage) -> HostReading {
    HostReading {
        cpu_ns: u.cpu_usage_ns,
        memory_bytes: u.memory_bytes,
        memory_limit_bytes: u.memory_limit_bytes,
        disk_bytes: u.disk_bytes,
        disk_limit_bytes: u.disk_limit_bytes,
        pids: u.pids,
        net_rx_bytes: u.net_rx_bytes,
        net_tx_bytes: u.net_tx_bytes,
        cgroup_oom_kills: u.oom_kills,
        agent_oom_kills: None,
        egress_denied: 0,
    }
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// CPU time this thread has used, in seconds.
fn thread_cpu_secs() -> f64 {
    // SAFETY: getrusage writes one `rusage` into the zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_THREAD with a valid, exclusive pointer to `ru`.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

impl Sampler {
    pub fn new(engine: Arc<Engine>, hub: Arc<Hub>) -> Self {
        Sampler {
            engine,
            hub,
            trackers: HashMap::new(),
            agent_asked: HashMap::new(),
            passes: 0,
        }
    }

    /// Samples every sandbox once at `now_ms`; returns how many rows were written.
    pub fn pass(&mut self, now_ms: i64) -> anyhow::Result<usize> {
        let observed = self
            .engine
            .observed_sandboxes()
            .map_err(|e| anyhow::anyhow!("list sandboxes: {e}"))?;
        let mut rows = Vec::with_capacity(observed.len());
        let running: Vec<_> = observed
            .iter()
            .filter(|o| o.state.expects_container())
            .map(|o| o.id)
            .collect();
        let denied: HashMap<_, _> = running
            .iter()
            .copied()
            .zip(self.engine.egress_denied_many(&running))
            .collect();
        for o in &observed {
            let id = o.id.to_string();
            let store = &self.hub.store;
            let t = self.trackers.entry(o.id).or_insert_with(|| {
                Tracker::resume(
                    store.last(&id, Metric::Restarts).ok().flatten(),
                    store.last(&id, Metric::OomKills).ok().flatten(),
                )
            });
            let host = if o.state.expects_container() {
                self.engine.host_usage(o.id).ok().map(|u| {
                    // The agent is asked at most every AGENT_EVERY (a TCP round trip into the
                    // sandbox); in between, and when it does not answer, its last count holds.
                    let due = self
                        .agent_asked
                        .get(&o.id)
                        .is_none_or(|at| at.elapsed() >= AGENT_EVERY);
                    let agent = if due {
                        self.agent_asked.insert(o.id, Instant::now());
                        o.net
                            .and_then(|n| self.engine.agent_oom_kills(n, AGENT_TIMEOUT))
                    } else {
                        None
                    };
                    HostReading {
                        egress_denied: denied.get(&o.id).copied().unwrap_or(0),
                        agent_oom_kills: agent,
                        ..reading(&u)
                    }
                })
            } else {
                None
            };
            let s = t.sample(
                now_ms,
                o.state,
                host.as_ref(),
                o.lifecycle.restarts,
                o.lifecycle.oom_deaths,
            );
            rows.push((id, s));
        }
        self.trackers
            .retain(|id, _| observed.iter().any(|o| o.id == *id));
        self.agent_asked
            .retain(|id, _| observed.iter().any(|o| o.id == *id));
        self.hub.store.record(now_ms, &rows)?;
        self.passes += 1;
        let every = (300 / self.hub.interval.as_secs().max(1)).max(1);
        if (self.passes - 1).is_multiple_of(every) {
            let before = now_ms - self.hub.retention.as_millis() as i64;
            let keep: Vec<String> = observed.iter().map(|o| o.id.to_string()).collect();
            self.hub.store.prune(before, &keep)?;
        }
        Ok(rows.len())
    }

    /// Samples forever, every `hub.interval`, on a thread of its own.
    pub fn spawn(mut self) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("metrics-sampler".into())
            .spawn(move || {
                let every = self.hub.interval.max(Duration::from_millis(100));
                let mut next = Instant::now();
                let mut cpu_seen = thread_cpu_secs();
                loop {
                    let started = Instant::now();
                    let now_ms = unix_ms();
                    match self.pass(now_ms) {
                        Ok(n) => {
                            let r = &self.hub.registry;
                            r.observe(
                                "sandboxd_metrics_sample_pass_duration_seconds",
                                "Wall time of one sampling pass over every sandbox.",
                                &[],
                                started.elapsed().as_secs_f64(),
                            );
                            r.set_gauges(
                                "sandboxd_metrics_sampled_sandboxes",
                                "Sandboxes in the last sampling pass.",
                                &[(&[], n as f64)],
                            );
                        }
                        Err(e) => warn!(error = %e, detail = ?e, "metrics sampling pass failed"),
                    }
                    let cpu = thread_cpu_secs();
                    self.hub.registry.inc(
                        "sandboxd_metrics_sampler_cpu_seconds_total",
                        "CPU time (user + system) the sampler thread has used.",
                        &[],
                        cpu - cpu_seen,
                    );
                    cpu_seen = cpu;
                    next += every;
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    } else {
                        next = now;
                    }
                }
            })
    }
}
