//! `sandboxd bench`: starts its own daemon (this executable, a fresh data dir under /tmp) and
//! measures create-to-first-exec, exec round trip, delete and idle memory, each against raw
//! runsc run in the same command. Prints a table, then the same data as one JSON object.
//! `--suite snapshots` measures snapshots, restore, fork, pause/resume and snapshot storage
//! instead (bench/snapshots.rs); `--suite interactive` a keystroke through a terminal, a code
//! interpreter cell and an SSH login (bench/interactive.rs). See docs/benchmarks.md.

mod daemon;
mod interactive;
mod procs;
mod raw;
mod report;
mod snapshots;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use serde_json::json;

use daemon::{short_of, Daemon, DaemonOpts};
use procs::check_interrupted;
use raw::Raw;
use report::{summarize, Row, Summary, Target};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// What to measure: the sandbox lifecycle (default), snapshots (fork, pause/resume), or
    /// interactive sessions (terminal, code interpreter, SSH).
    #[arg(long, value_enum, default_value_t = Suite::Lifecycle)]
    pub suite: Suite,
    /// Runs per latency metric (exec round trip uses 5x this many). Default: 20 for the
    /// lifecycle suite, 10 for the snapshots suite, 30 for the interactive suite.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub runs: Option<u32>,
    /// Template to create sandboxes from (default sb-busybox; the snapshots and interactive
    /// suites need sb-debian-12-python, their default).
    #[arg(long, value_parser = ["sb-busybox", "sb-debian-12-python"])]
    pub template: Option<String>,
    /// Snapshots suite: what the python process writes into its 256 MiB (random bytes, or
    /// one byte per page).
    #[arg(long, value_enum, default_value_t = snapshots::MemoryFill::Random)]
    pub memory_fill: snapshots::MemoryFill,
    /// Also write the JSON result to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Idle sandboxes (and raw containers) started for the memory measurement.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub idle: u32,
    /// Where the built templates live.
    #[arg(long, default_value = "/var/lib/sandboxd/templates")]
    pub templates_dir: PathBuf,
    /// The static agent (default: `sandboxd-agent` beside this executable).
    #[arg(long)]
    pub agent_binary: Option<PathBuf>,
    #[arg(long, default_value = "runsc")]
    pub runsc: PathBuf,
    /// Second octet of the bench daemon's sandbox subnet (must differ from other daemons').
    #[arg(long, default_value_t = 250)]
    pub subnet_octet: u8,
    /// Do not make the bench a child subreaper: the raw baseline's orphaned runsc processes
    /// are then reaped by PID 1, which on some hosts makes `runsc delete` wait for it.
    #[arg(long)]
    pub no_subreaper: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Suite {
    /// create-to-first-exec, exec round trip, delete, idle memory.
    Lifecycle,
    /// snapshot with memory, restore-as-new, fork, pause/resume, filesystem-only snapshot,
    /// snapshot storage.
    Snapshots,
    /// keystroke echo through a terminal, code interpreter `1+1`, SSH login.
    Interactive,
}

impl BenchArgs {
    pub fn runs(&self) -> u32 {
        self.runs.unwrap_or(match self.suite {
            Suite::Lifecycle => 20,
            Suite::Snapshots => 10,
            Suite::Interactive => 30,
        })
    }

    pub fn template(&self) -> &str {
        self.template.as_deref().unwrap_or(match self.suite {
            Suite::Lifecycle => "sb-busybox",
            Suite::Snapshots | Suite::Interactive => "sb-debian-12-python",
        })
    }
}

/// What a suite measured, for printing.
enum Outcome {
    Lifecycle(Vec<Row>),
    Snapshots(snapshots::Report),
    Interactive(interactive::Report),
}

const EXECS_PER_RUN: usize = 5;
const IDLE_WAIT: Duration = Duration::from_secs(2);
const MIB: f64 = 1024.0 * 1024.0;

struct Ctx {
    work: PathBuf,
    runsc: PathBuf,
    template: String,
    daemon: Option<Daemon>,
    raw: Option<Raw>,
    /// Mounts to undo after the raw containers are gone.
    mounts: Vec<PathBuf>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn progress(msg: &str) {
    eprintln!("bench: {msg}");
}

pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("sandboxd bench must run as root (it runs runsc, netns and cgroups)");
    }
    if a.suite != Suite::Lifecycle && a.template() != "sb-debian-12-python" {
        bail!("this suite needs --template sb-debian-12-python (it runs python3)");
    }
    let template_dir = a.templates_dir.join(a.template());
    raw::check_template(&template_dir)?;
    let agent = match &a.agent_binary {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("sandboxd-agent"),
    };
    if !agent.is_file() {
        bail!(
            "no agent binary at {} (build the static one with scripts/build, or pass --agent-binary)",
            agent.display()
        );
    }
    procs::init(!a.no_subreaper)?;
    let runsc_version = procs::run_output(
        "runsc --version",
        std::process::Command::new(&a.runsc).arg("--version"),
    )
    .map(|s| s.lines().next().unwrap_or_default().to_string())
    .context("runsc not found (pass --runsc)")?;

    let work = std::env::temp_dir().join(format!("sandboxd-bench-{}", std::process::id()));
    if work.exists() {
        std::fs::remove_dir_all(&work)?;
    }
    std::fs::create_dir_all(&work)?;
    let mut ctx = Ctx {
        work: work.clone(),
        runsc: a.runsc.clone(),
        template: a.template().to_string(),
        daemon: None,
        raw: None,
        mounts: Vec::new(),
    };
    let loadavg_start = loadavg();
    let started = Instant::now();
    let result = match a.suite {
        Suite::Lifecycle => measure(&a, &mut ctx, &template_dir, &agent).map(Outcome::Lifecycle),
        Suite::Snapshots => {
            snapshots::measure(&a, &mut ctx, &template_dir, &agent).map(Outcome::Snapshots)
        }
        Suite::Interactive => {
            interactive::measure(&a, &mut ctx, &template_dir, &agent).map(Outcome::Interactive)
        }
    };
    if result.is_err() && !procs::interrupted() {
        if let Some(d) = &ctx.daemon {
            eprintln!("bench: daemon log (tail):\n{}", d.log_tail(30));
        }
    }
    let leftovers = cleanup(&mut ctx);
    let outcome = result?;
    if !leftovers.is_empty() {
        bail!("could not delete: {}", leftovers.join(", "));
    }
    let wall = started.elapsed();
    let rows = match outcome {
        Outcome::Lifecycle(rows) => rows,
        Outcome::Interactive(rep) => {
            let out = suite_json(
                &a,
                "sandboxd bench --suite interactive",
                machine_json(&runsc_version, &loadavg_start, !a.no_subreaper),
                wall,
                (&rep.rows, &rep.targets, &rep.extra),
            );
            println!(
                "sandboxd bench --suite interactive: template {}, N={}, {} CPUs, {runsc_version}, systrap, {:.0} s, load {} -> {}",
                a.template(),
                a.runs(),
                out["machine"]["cpus"],
                wall.as_secs_f64(),
                loadavg_start,
                out["machine"]["loadavg_end"].as_str().unwrap_or_default(),
            );
            println!();
            println!("{}", report::table(&rep.rows));
            println!();
            println!("(the runsc columns hold each row's baseline, measured in the same run)");
            println!("{}", report::targets_text(&rep.targets));
            println!();
            return emit(&out, a.json.as_deref());
        }
        Outcome::Snapshots(rep) => {
            let out = suite_json(
                &a,
                "sandboxd bench --suite snapshots",
                machine_json(&runsc_version, &loadavg_start, !a.no_subreaper),
                wall,
                (&rep.rows, &rep.targets, &rep.extra),
            );
            snapshots::print(&out, &rep, wall.as_secs_f64());
            return emit(&out, a.json.as_deref());
        }
    };

    let by = |k: &str| rows.iter().find(|r| r.key == k).expect("row");
    let c2e = by("create_to_first_exec");
    let exec = by("exec_round_trip");
    let exec_bare = by("exec_round_trip_vs_bare_runsc");
    let exec_fresh = by("exec_round_trip_new_connection");
    let mem = by("idle_memory");
    let cpu = by("idle_cpu");
    let wrapper_ms = exec.runsc.median - exec_bare.runsc.median;
    let targets = vec![
        Target {
            key: "create_to_first_exec_median_le_400ms",
            text: "create-to-first-exec median <= 400 ms".into(),
            value: format!("{:.0} ms", c2e.sandboxd.median),
            met: c2e.sandboxd.median <= 400.0,
        },
        Target {
            key: "exec_round_trip_median_le_5ms",
            text: "exec round trip median <= 5 ms".into(),
            value: format!(
                "{:.1} ms keep-alive, {:.1} ms on a new connection each",
                exec.sandboxd.median, exec_fresh.sandboxd.median
            ),
            met: exec.sandboxd.median <= 5.0,
        },
        Target {
            key: "exec_10x_faster_than_runsc_exec",
            text: "exec >= 10x faster than runsc exec".into(),
            value: format!(
                "{:.1}x vs runsc exec in its netns wrapper, {:.1}x vs bare runsc exec",
                exec.runsc.median / exec.sandboxd.median,
                exec_bare.runsc.median / exec.sandboxd.median
            ),
            met: exec.runsc.median / exec.sandboxd.median >= 10.0
                && exec_bare.runsc.median / exec.sandboxd.median >= 10.0,
        },
        Target {
            key: "idle_memory_median_le_64mib",
            text: "idle memory median <= 64 MiB per sandbox".into(),
            value: format!("{:.1} MiB", mem.sandboxd.median),
            met: mem.sandboxd.median <= 64.0,
        },
        Target {
            key: "idle_cpu_le_1_1x_raw_runsc",
            text: "idle CPU per sandbox <= 1.1x a raw runsc sleep container".into(),
            value: format!(
                "{:.2} % vs {:.2} % of a core ({:.2}x)",
                cpu.sandboxd.median,
                cpu.runsc.median,
                cpu.sandboxd.median / cpu.runsc.median.max(1e-9)
            ),
            met: cpu.sandboxd.median <= 1.1 * cpu.runsc.median,
        },
    ];

    let out = json!({
        "benchmark": "sandboxd bench",
        "template": a.template(),
        "runs": a.runs(),
        "exec_runs": a.runs() as usize * EXECS_PER_RUN,
        "idle_sandboxes": a.idle,
        "exec_command": "argv [\"/bin/true\", \"x\"] (no shell) on both sides",
        "machine": machine_json(&runsc_version, &loadavg_start, !a.no_subreaper),
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "wall_seconds": (wall.as_secs_f64() * 10.0).round() / 10.0,
        "rows": rows.iter().map(report::row_json).collect::<Vec<_>>(),
        "runsc_exec_wrapper_overhead_ms": (wrapper_ms * 1000.0).round() / 1000.0,
        "targets": report::targets_json(&targets),
    });
    println!(
        "sandboxd bench: template {}, N={} ({} execs), {} idle sandboxes, {} CPUs, {runsc_version}, systrap, {:.0} s",
        a.template(),
        a.runs(),
        a.runs() as usize * EXECS_PER_RUN,
        a.idle,
        out["machine"]["cpus"],
        wall.as_secs_f64()
    );
    println!();
    println!("{}", report::table(&rows));
    println!();
    println!(
        "runsc exec wrapper overhead (nsenter+unshare+sh+mount): {wrapper_ms:.1} ms (median wrapped - median bare)"
    );
    println!("{}", report::targets_text(&targets));
    println!();
    emit(&out, a.json.as_deref())
}

/// The JSON of a suite's report: header, rows, targets, and the suite's extra fields.
fn suite_json(
    a: &BenchArgs,
    benchmark: &str,
    machine: serde_json::Value,
    wall: Duration,
    (rows, targets, extra): (&[Row], &[Target], &serde_json::Value),
) -> serde_json::Value {
    let mut out = json!({
        "benchmark": benchmark,
        "template": a.template(),
        "runs": a.runs(),
        "machine": machine,
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "wall_seconds": (wall.as_secs_f64() * 10.0).round() / 10.0,
        "rows": rows.iter().map(report::row_json).collect::<Vec<_>>(),
        "targets": report::targets_json(targets),
    });
    if let (Some(o), Some(x)) = (out.as_object_mut(), extra.as_object()) {
        o.extend(x.clone());
    }
    out
}

/// The JSON line on stdout, and pretty-printed to `--json FILE`.
fn emit(out: &serde_json::Value, file: Option<&Path>) -> anyhow::Result<()> {
    let line = serde_json::to_string(out)?;
    println!("{line}");
    if let Some(p) = file {
        std::fs::write(p, serde_json::to_string_pretty(out)? + "\n")
            .with_context(|| format!("write {}", p.display()))?;
    }
    Ok(())
}

fn machine_json(runsc_version: &str, loadavg_start: &str, subreaper: bool) -> serde_json::Value {
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "runsc_version": runsc_version,
        "platform": "systrap",
        "loadavg_start": loadavg_start,
        "loadavg_end": loadavg(),
        "bench_is_subreaper": subreaper,
    })
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Starts the bench's own daemon and the raw runsc side, both owned by `ctx` for cleanup.
fn start_both(
    a: &BenchArgs,
    ctx: &mut Ctx,
    template_dir: &Path,
    agent: &Path,
) -> anyhow::Result<()> {
    progress("starting the daemon");
    let extra_args = match a.suite {
        Suite::Interactive => interactive::daemon_args(),
        Suite::Lifecycle | Suite::Snapshots => Vec::new(),
    };
    ctx.daemon = Some(Daemon::start(&DaemonOpts {
        data_dir: &ctx.work.join("daemon"),
        templates_dir: &a.templates_dir,
        agent_binary: agent,
        runsc: &a.runsc,
        subnet_octet: a.subnet_octet,
        extra_args: &extra_args,
    })?);
    ctx.raw = Some(Raw::new(&a.runsc, &ctx.work.join("raw"), template_dir)?);
    Ok(())
}

fn measure(
    a: &BenchArgs,
    ctx: &mut Ctx,
    template_dir: &Path,
    agent: &Path,
) -> anyhow::Result<Vec<Row>> {
    start_both(a, ctx, template_dir, agent)?;
    let n = a.runs() as usize;

    // 1 + 3: create-to-first-exec and delete; sides alternate which goes first.
    progress(&format!(
        "create-to-first-exec and delete, {n} runs (+1 warm-up)"
    ));
    let mut s = Lifecycle::default();
    let mut r = Lifecycle::default();
    for i in 0..=n {
        check_interrupted()?;
        let (mut s1, mut r1) = (Lifecycle::default(), Lifecycle::default());
        if i % 2 == 0 {
            sandboxd_cycle(ctx, &format!("bench-c2e-{i}"), &mut s1)?;
            raw_cycle(ctx, &mut r1)?;
        } else {
            raw_cycle(ctx, &mut r1)?;
            sandboxd_cycle(ctx, &format!("bench-c2e-{i}"), &mut s1)?;
        }
        if i > 0 {
            s.extend(s1);
            r.extend(r1);
        }
    }

    // 2: exec round trip on one running sandbox.
    let execs = n * EXECS_PER_RUN;
    progress(&format!(
        "exec round trip, {execs} execs per method (+2 warm-up rounds)"
    ));
    let d = ctx.daemon.as_mut().expect("daemon");
    let id = d.create("bench-exec", &ctx.template)?;
    let short = short_of(&id);
    let data_dir = d.data_dir.clone();
    let errlog = ctx.work.join("exec.err");
    let (mut api, mut api_fresh) = (Vec::new(), Vec::new());
    let (mut wrapped, mut bare) = (Vec::new(), Vec::new());
    for round in 0..(n + 2) {
        check_interrupted()?;
        let keep = round >= 2;
        let d = ctx.daemon.as_ref().expect("daemon");
        for _ in 0..EXECS_PER_RUN {
            let t = Instant::now();
            let at = d.exec_true(&id, false)?;
            if keep {
                api.push(ms(at - t));
            }
        }
        for _ in 0..EXECS_PER_RUN {
            let t = Instant::now();
            let at = d.exec_true(&id, true)?;
            if keep {
                api_fresh.push(ms(at - t));
            }
        }
        for _ in 0..EXECS_PER_RUN {
            let x = raw::daemon_exec_wrapped(&ctx.runsc, &data_dir, &id, &short, &errlog)?;
            if keep {
                wrapped.push(ms(x));
            }
        }
        for _ in 0..EXECS_PER_RUN {
            let x = raw::daemon_exec_bare(&ctx.runsc, &data_dir, &id, &errlog)?;
            if keep {
                bare.push(ms(x));
            }
        }
    }
    ctx.daemon.as_mut().expect("daemon").delete(&id)?;

    // 4: idle memory.
    let k = a.idle as usize;
    progress(&format!(
        "idle memory, {k} sandboxes then {k} raw containers"
    ));
    let (mem_s, rss_s, cpu_s) = idle_sandboxd(ctx, k)?;
    let (mem_r, rss_r, cpu_r) = idle_raw(ctx, k)?;

    let su = |v: &[f64]| summarize(v);
    let runs_label =
        "runsc run --detach + runsc exec (bundle on the template, read-only, --network=none)";
    Ok(vec![
        row("create_to_first_exec", "create -> first exec", "ms", su(&s.c2e), runs_label, su(&r.c2e)),
        row("create", "  create (POST -> 201 Ready)", "ms", su(&s.create), "runsc run --detach", su(&r.create)),
        row("first_exec", "  first exec after create", "ms", su(&s.first), "first runsc exec", su(&r.first)),
        row("exec_round_trip", "exec round trip (keep-alive), vs runsc exec in netns wrapper", "ms", su(&api),
            "runsc exec in the sandbox's netns: nsenter + unshare -m + sh + mount tmpfs + runsc exec", su(&wrapped)),
        row("exec_round_trip_vs_bare_runsc", "exec round trip (keep-alive), vs bare runsc exec", "ms", su(&api),
            "runsc exec from the host netns, no wrapper", su(&bare)),
        row("exec_round_trip_new_connection", "exec round trip, new TCP conn each, vs bare runsc exec", "ms",
            su(&api_fresh), "runsc exec from the host netns, no wrapper", su(&bare)),
        row("delete", "delete", "ms", su(&s.delete), "runsc delete --force", su(&r.delete)),
        row("idle_memory", "idle memory/sandbox (usage_in_bytes)", "MiB", su(&mem_s),
            "raw runsc container running sleep, same cgroup v1 file", su(&mem_r)),
        row("idle_rss", "idle rss/sandbox (memory.stat total_rss)", "MiB", su(&rss_s),
            "raw runsc container running sleep, same cgroup v1 file", su(&rss_r)),
        row("idle_cpu", "idle CPU/sandbox over 20 s (cpuacct.usage)", "% core", su(&cpu_s),
            "raw runsc container running sleep, same cgroup v1 file", su(&cpu_r)),
    ])
}

fn row(
    key: &'static str,
    label: &'static str,
    unit: &'static str,
    sandboxd: Summary,
    runsc_label: &'static str,
    runsc: Summary,
) -> Row {
    Row {
        key,
        label,
        unit,
        sandboxd,
        runsc_label,
        runsc,
    }
}

#[derive(Default)]
struct Lifecycle {
    c2e: Vec<f64>,
    create: Vec<f64>,
    first: Vec<f64>,
    delete: Vec<f64>,
}

impl Lifecycle {
    fn extend(&mut self, o: Lifecycle) {
        self.c2e.extend(o.c2e);
        self.create.extend(o.create);
        self.first.extend(o.first);
        self.delete.extend(o.delete);
    }
}

/// POST create, first exec, DELETE.
fn sandboxd_cycle(ctx: &mut Ctx, name: &str, out: &mut Lifecycle) -> anyhow::Result<()> {
    let d = ctx.daemon.as_mut().expect("daemon");
    let t0 = Instant::now();
    let id = d.create(name, &ctx.template)?;
    let t1 = Instant::now();
    let at = d.exec_true(&id, false)?;
    out.c2e.push(ms(at - t0));
    out.create.push(ms(t1 - t0));
    out.first.push(ms(at - t1));
    out.delete.push(ms(d.delete(&id)?));
    Ok(())
}

/// runsc run --detach, runsc exec, runsc delete --force.
fn raw_cycle(ctx: &mut Ctx, out: &mut Lifecycle) -> anyhow::Result<()> {
    let r = ctx.raw.as_mut().expect("raw");
    let id = r.prepare()?;
    let t0 = Instant::now();
    let run = r.run(&id)?;
    let exec = r.exec_true(&id)?;
    out.c2e.push(ms(t0.elapsed()));
    out.create.push(ms(run));
    out.first.push(ms(exec));
    out.delete.push(ms(r.delete(&id)?));
    Ok(())
}

/// Memory (usage, rss) in MiB of `k` idle sandboxes, `IDLE_WAIT` after the last one started.
/// Idle CPU of cgroups over [`IDLE_CPU_WINDOW`], in % of one core each (cpuacct.usage).
fn idle_cpu(cgroups: &[String]) -> anyhow::Result<Vec<f64>> {
    let read = |cg: &str| -> anyhow::Result<u64> {
        let p = Path::new("/sys/fs/cgroup/cpuacct")
            .join(cg.trim_start_matches('/'))
            .join("cpuacct.usage");
        Ok(std::fs::read_to_string(&p)
            .with_context(|| format!("read {}", p.display()))?
            .trim()
            .parse()?)
    };
    let before = cgroups
        .iter()
        .map(|c| read(c))
        .collect::<anyhow::Result<Vec<u64>>>()?;
    let t = Instant::now();
    std::thread::sleep(IDLE_CPU_WINDOW);
    let secs = t.elapsed().as_secs_f64();
    cgroups
        .iter()
        .zip(before)
        .map(|(c, b)| Ok((read(c)?.saturating_sub(b)) as f64 / 1e9 / secs * 100.0))
        .collect()
}

/// How long idle CPU is measured.
const IDLE_CPU_WINDOW: Duration = Duration::from_secs(20);

type Idle = (Vec<f64>, Vec<f64>, Vec<f64>);

fn idle_sandboxd(ctx: &mut Ctx, k: usize) -> anyhow::Result<Idle> {
    let d = ctx.daemon.as_mut().expect("daemon");
    let mut ids = Vec::new();
    for i in 0..k {
        check_interrupted()?;
        ids.push(d.create(&format!("bench-idle-{i}"), &ctx.template)?);
    }
    std::thread::sleep(IDLE_WAIT);
    let (mut mem, mut rss) = (Vec::new(), Vec::new());
    for id in &ids {
        let (u, r) = raw::memory_usage(&format!("sandboxd/{}", short_of(id)))?;
        mem.push(u as f64 / MIB);
        rss.push(r as f64 / MIB);
    }
    let cgs: Vec<String> = ids
        .iter()
        .map(|id| format!("sandboxd/{}", short_of(id)))
        .collect();
    let cpu = idle_cpu(&cgs)?;
    for id in &ids {
        d.delete(id)?;
    }
    Ok((mem, rss, cpu))
}

fn idle_raw(ctx: &mut Ctx, k: usize) -> anyhow::Result<Idle> {
    let r = ctx.raw.as_mut().expect("raw");
    let mut ids = Vec::new();
    for _ in 0..k {
        check_interrupted()?;
        let id = r.prepare()?;
        r.run(&id)?;
        ids.push(id);
    }
    std::thread::sleep(IDLE_WAIT);
    let (mut mem, mut rss) = (Vec::new(), Vec::new());
    for id in &ids {
        let (u, x) = r.memory_usage(id)?;
        mem.push(u as f64 / MIB);
        rss.push(x as f64 / MIB);
    }
    let cgs: Vec<String> = ids.iter().map(|id| r.cgroup(id)).collect();
    let cpu = idle_cpu(&cgs)?;
    for id in &ids {
        r.delete(id)?;
    }
    Ok((mem, rss, cpu))
}

/// Deletes every sandbox and raw container, stops the daemon and removes the work dir (unless
/// something is still mounted under it). Returns what could not be deleted.
fn cleanup(ctx: &mut Ctx) -> Vec<String> {
    progress("cleaning up");
    let mut left = Vec::new();
    if let Some(r) = ctx.raw.as_mut() {
        left.extend(r.cleanup());
    }
    // Through procs: its reaper thread owns waitpid, so Command::status would not see the exit.
    let errlog = ctx.work.join("umount.err");
    for m in ctx.mounts.drain(..).rev() {
        let mut c = std::process::Command::new("umount");
        c.arg(&m);
        if let Err(e) = procs::run_quiet("umount", &mut c, &errlog) {
            eprintln!("bench: could not unmount {}: {e:#}", m.display());
        }
    }
    if let Some(d) = ctx.daemon.as_mut() {
        left.extend(d.shutdown());
    }
    let prefix = format!("{}/", ctx.work.display());
    let mounted = std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(1).is_some_and(|m| m.starts_with(&prefix)));
    if mounted {
        eprintln!(
            "bench: something is still mounted under {}; leaving it in place",
            ctx.work.display()
        );
    } else if let Err(e) = std::fs::remove_dir_all(&ctx.work) {
        eprintln!("bench: remove {}: {e}", ctx.work.display());
    }
    left
}
