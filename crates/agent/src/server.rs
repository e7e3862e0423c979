//! The agent's process table, reaper, file operations and TCP server.

use std::collections::HashMap;
use std::ffi::CString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use crate::proto::{FileInfo, ProcInfo, Reply, Request, StartSpec, MAX_REQUEST_BYTES};
use crate::session::{Session, SessionError, Sessions};

/// Output kept per process; past it, output is read and dropped.
const MAX_OUTPUT_BYTES: usize = 32 * 1024 * 1024;
/// Exited processes remembered for `get`/`logs`.
const MAX_EXITED: usize = 512;
/// How long after exit we wait for pipes held open by a background grandchild.
const PIPE_GRACE: Duration = Duration::from_millis(100);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct Chunk {
    seq: u64,
    stream: &'static str,
    data: Vec<u8>,
}

struct Proc {
    info: ProcInfo,
    os_pid: i32,
    chunks: Vec<Chunk>,
    out_bytes: usize,
    next_seq: u64,
    open_pipes: u8,
    exited_at: Option<Instant>,
    stdin: Option<std::fs::File>,
}

impl Proc {
    /// All output is in and the exit status known (or the pipes outlived the grace period).
    fn finished(&self) -> bool {
        match self.exited_at {
            Some(t) => self.open_pipes == 0 || t.elapsed() >= PIPE_GRACE,
            None => false,
        }
    }
}

#[derive(Default)]
struct Table {
    procs: HashMap<u32, Proc>,
    by_os_pid: HashMap<i32, u32>,
    next_pid: u32,
    live_children: usize,
    /// Session processes by host-visible pid, for the reaper.
    session_pids: HashMap<i32, Arc<Session>>,
}

/// Shared agent state: the process table and one condition variable for every change in it.
#[derive(Default)]
pub struct Agent {
    table: Mutex<Table>,
    changed: Condvar,
    /// Process groups the memory watchdog killed.
    oom_kills: std::sync::atomic::AtomicU64,
    sessions: Sessions,
    contexts: crate::interp::Contexts,
    uploads: crate::upload::Uploads,
    /// The memory watchdog's limit in bytes (0: the watchdog idles).
    memory_limit: std::sync::atomic::AtomicU64,
}

impl Agent {
    pub fn new() -> Arc<Agent> {
        Arc::new(Agent::default())
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reaps every child (ours and orphans re-parented to us as init) and records exits.
    pub fn run_reaper(self: &Arc<Self>) {
        loop {
            // SAFETY: an all-zero siginfo_t is a valid value for waitid to fill in.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: waitid writes only into `info`, which outlives the call. WNOWAIT leaves
            // the child waitable so that we decide who reaps it under the table lock.
            let rc =
                unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) };
            if rc != 0 {
                // No children: wait until a spawn tells us there is one.
                let table = self.lock();
                if table.live_children == 0 {
                    let _ = self.changed.wait_timeout(table, Duration::from_millis(200));
                } else {
                    drop(table);
                    thread::sleep(Duration::from_millis(1));
                }
                continue;
            }
            // SAFETY: waitid succeeded with WEXITED, so si_pid is set.
            let os_pid = unsafe { info.si_pid() };
            // Taking the lock waits out any spawn in progress, so a child of ours is registered.
            let mut table = self.lock();
            let mut status: libc::c_int = 0;
            // SAFETY: reaps exactly the child waitid reported; `status` outlives the call.
            let reaped = unsafe { libc::waitpid(os_pid, &mut status, libc::WNOHANG) };
            if reaped != os_pid {
                continue;
            }
            let Some(pid) = table.by_os_pid.remove(&os_pid) else {
                if let Some(session) = table.session_pids.remove(&os_pid) {
                    table.live_children = table.live_children.saturating_sub(1);
                    drop(table);
                    session.exited(status);
                }
                continue; // otherwise an orphan re-parented to init
            };
            table.live_children = table.live_children.saturating_sub(1);
            if let Some(p) = table.procs.get_mut(&pid) {
                p.info.running = false;
                if libc::WIFEXITED(status) {
                    p.info.exit_code = Some(libc::WEXITSTATUS(status));
                } else if libc::WIFSIGNALED(status) {
                    let sig = libc::WTERMSIG(status);
                    p.info.signal = Some(sig);
                    p.info.exit_code = Some(128 + sig);
                }
                p.info.ended_at_ms = Some(now_ms());
                p.exited_at = Some(Instant::now());
                p.stdin = None;
            }
            evict_exited(&mut table);
            drop(table);
            self.changed.notify_all();
        }
    }

    fn start(self: &Arc<Self>, spec: StartSpec) -> Result<ProcInfo, StartError> {
        if spec.argv.is_empty() || spec.argv[0].is_empty() {
            return Err(StartError::new("invalid", "argv must not be empty"));
        }
        let cwd = match &spec.cwd {
            Some(c) if !c.is_empty() => c.clone(),
            _ => default_cwd(),
        };
        if !Path::new(&cwd).is_dir() {
            return Err(StartError::new(
                "not_found",
                format!("working directory {cwd} does not exist"),
            ));
        }
        let path_var = spec
            .env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var("PATH").ok())
            .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin".into());
        let program = resolve(&spec.argv[0], &path_var, &cwd).ok_or_else(|| {
            StartError::new("not_found", format!("{}: command not found", spec.argv[0]))
        })?;
        let stdin_data = match &spec.stdin_data {
            Some(d) => Some(
                B64.decode(d)
                    .map_err(|_| StartError::new("invalid", "stdin_data is not base64"))?,
            ),
            None => None,
        };

        let to_c = |s: &str, what: &str| {
            CString::new(s)
                .map_err(|_| StartError::new("invalid", format!("{what} contains a NUL byte")))
        };
        let program_c = to_c(&program, "program")?;
        let cwd_c = to_c(&cwd, "cwd")?;
        let argv_c = spec
            .argv
            .iter()
            .map(|a| to_c(a, "argv"))
            .collect::<Result<Vec<_>, _>>()?;
        let mut env: Vec<(String, String)> = std::env::vars().collect();
        for (k, v) in &spec.env {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }
        let envp_c = env
            .iter()
            .map(|(k, v)| to_c(&format!("{k}={v}"), "env"))
            .collect::<Result<Vec<_>, _>>()?;

        let mut table = self.lock();
        let child = crate::spawn::spawn(
            &program_c,
            &argv_c,
            &envp_c,
            &cwd_c,
            spec.stdin || stdin_data.is_some(),
        )
        .map_err(|e| StartError::new("invalid", format!("cannot start {}: {e}", spec.argv[0])))?;
        table.next_pid += 1;
        let pid = table.next_pid;
        let os_pid = child.pid;
        let info = ProcInfo {
            pid,
            argv: spec.argv.clone(),
            cwd,
            tag: spec.tag.clone(),
            running: true,
            exit_code: None,
            signal: None,
            oom_killed: false,
            started_at_ms: now_ms(),
            ended_at_ms: None,
        };
        let mut stdin = child.stdin;
        if let Some(data) = stdin_data {
            if spec.stdin {
                if let Some(pipe) = stdin.as_mut() {
                    let _ = pipe.write_all(&data);
                }
            } else if let Some(mut pipe) = stdin.take() {
                // Written from a thread so a large input cannot block the table lock; the pipe
                // closes when the thread ends.
                thread::spawn(move || {
                    let _ = pipe.write_all(&data);
                });
            }
        }
        table.procs.insert(
            pid,
            Proc {
                info: info.clone(),
                os_pid,
                chunks: Vec::new(),
                out_bytes: 0,
                next_seq: 0,
                open_pipes: 2,
                exited_at: None,
                stdin: if spec.stdin { stdin } else { None },
            },
        );
        table.by_os_pid.insert(os_pid, pid);
        table.live_children += 1;
        drop(table);
        self.changed.notify_all();

        for (stream, pipe) in [("stdout", child.stdout), ("stderr", child.stderr)] {
            let agent = Arc::clone(self);
            thread::spawn(move || agent.pump(pid, stream, Box::new(pipe)));
        }
        Ok(info)
    }

    fn pump(&self, pid: u32, stream: &'static str, mut pipe: Box<dyn Read + Send>) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match pipe.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut table = self.lock();
            if let Some(p) = table.procs.get_mut(&pid) {
                if p.out_bytes < MAX_OUTPUT_BYTES {
                    let seq = p.next_seq;
                    p.next_seq += 1;
                    p.out_bytes += n;
                    p.chunks.push(Chunk {
                        seq,
                        stream,
                        data: buf[..n].to_vec(),
                    });
                }
            }
            drop(table);
            self.changed.notify_all();
        }
        let mut table = self.lock();
        if let Some(p) = table.procs.get_mut(&pid) {
            p.open_pipes = p.open_pipes.saturating_sub(1);
        }
        drop(table);
        self.changed.notify_all();
    }

    /// Waits until `pid` finished or `deadline` passed; returns whether it finished.
    fn wait_finished(&self, pid: u32, deadline: Option<Instant>) -> bool {
        let mut table = self.lock();
        loop {
            let Some(p) = table.procs.get(&pid) else {
                return true;
            };
            if p.finished() {
                return true;
            }
            let mut wait = if p.exited_at.is_some() {
                PIPE_GRACE
            } else {
                Duration::from_secs(1)
            };
            if let Some(d) = deadline {
                let now = Instant::now();
                if now >= d {
                    return false;
                }
                wait = wait.min(d - now);
            }
            table = self
                .changed
                .wait_timeout(table, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn exec(self: &Arc<Self>, spec: StartSpec, timeout_ms: Option<u64>) -> Reply {
        let info = match self.start(spec) {
            Ok(i) => i,
            Err(e) => return e.into(),
        };
        let deadline = timeout_ms.map(|t| Instant::now() + Duration::from_millis(t));
        let finished = self.wait_finished(info.pid, deadline);
        if !finished {
            self.signal(info.pid, libc::SIGKILL);
            self.wait_finished(info.pid, Some(Instant::now() + Duration::from_secs(5)));
        }
        let mut table = self.lock();
        let Some(p) = table.procs.remove(&info.pid) else {
            return Reply::error("io", "process vanished");
        };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        for c in &p.chunks {
            if c.stream == "stdout" {
                out.extend_from_slice(&c.data);
            } else {
                err.extend_from_slice(&c.data);
            }
        }
        Reply::Exec {
            info: p.info,
            stdout: B64.encode(out),
            stderr: B64.encode(err),
            timed_out: !finished,
        }
    }

    /// Sets the memory watchdog's limit (0: off); `run_memory_watchdog` picks it up.
    pub fn set_memory_limit(&self, bytes: u64) {
        self.memory_limit
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// Keeps the sandbox under its memory limit ([`Agent::set_memory_limit`]) of resident
    /// memory: when the processes' total goes over, the largest process group is killed and
    /// its process marked `oom_killed`, with a line on its stderr. The runtime's cgroup limit
    /// sits above this one, as a backstop that would take the whole sandbox down.
    ///
    /// Each tick first reads one cheap total (`/proc/meminfo`: the whole sandbox under gVisor)
    /// and walks `/proc` only when that total comes near the limit; far below it, ticks are
    /// further apart (see [`crate::memory::plan`]).
    pub fn run_memory_watchdog(self: &Arc<Self>) {
        let own = std::process::id() as i32;
        let mut last_victim = None;
        let mut meminfo = crate::memory::Meminfo::open();
        let mut next = crate::memory::FAST;
        loop {
            thread::sleep(next);
            let limit = self.memory_limit.load(std::sync::atomic::Ordering::Relaxed);
            if limit == 0 {
                next = crate::memory::OFF;
                continue;
            }
            let plan = crate::memory::plan(meminfo.as_mut().and_then(|m| m.used()), limit);
            next = plan.next;
            if !plan.scan {
                continue;
            }
            let usage = crate::memory::scan();
            let total: u64 = usage.iter().map(|p| p.rss).sum();
            if total <= limit {
                continue;
            }
            // Group by process group; the agent's own group is never a victim.
            let mut groups: HashMap<i32, u64> = HashMap::new();
            for p in usage.iter().filter(|p| p.pgid != own && p.pid != own) {
                *groups.entry(p.pgid).or_default() += p.rss;
            }
            let Some((&victim, &rss)) = groups.iter().max_by_key(|(_, r)| **r) else {
                continue;
            };
            let mut table = self.lock();
            let managed = table
                .procs
                .values_mut()
                .find(|p| p.os_pid == victim && p.info.running);
            if let Some(p) = managed {
                p.info.oom_killed = true;
                let msg = format!(
                    "sandbox: process killed: out of memory (sandbox limit {} MiB, this process used {} MiB)\n",
                    limit >> 20,
                    rss >> 20
                );
                let seq = p.next_seq;
                p.next_seq += 1;
                p.chunks.push(Chunk {
                    seq,
                    stream: "stderr",
                    data: msg.into_bytes(),
                });
            }
            drop(table);
            // A group still dying is picked again at the next scan: count it once.
            if last_victim != Some(victim) {
                last_victim = Some(victim);
                self.oom_kills
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            // SAFETY: kill has no memory-safety preconditions; -victim names a process group.
            unsafe {
                libc::kill(-victim, libc::SIGKILL);
                libc::kill(victim, libc::SIGKILL);
            }
            self.changed.notify_all();
        }
    }

    fn signal(&self, pid: u32, sig: i32) -> bool {
        let table = self.lock();
        match table.procs.get(&pid) {
            Some(p) if p.info.running => {
                // SAFETY: kill has no memory-safety preconditions; a negative pid addresses the
                // process group the child leads (it was started with process_group(0)).
                unsafe {
                    libc::kill(-p.os_pid, sig);
                    libc::kill(p.os_pid, sig);
                }
                true
            }
            _ => false,
        }
    }

    fn info(&self, pid: u32) -> Option<ProcInfo> {
        self.lock().procs.get(&pid).map(|p| p.info.clone())
    }

    fn stream_logs(
        &self,
        pid: u32,
        follow: bool,
        from_seq: Option<u64>,
        out: &mut dyn Write,
    ) -> std::io::Result<()> {
        let mut next = from_seq.unwrap_or(0);
        let mut table = self.lock();
        loop {
            let Some(p) = table.procs.get(&pid) else {
                return write_reply(
                    out,
                    &Reply::error("not_found", format!("process {pid} not found")),
                );
            };
            let fresh: Vec<Reply> = p
                .chunks
                .iter()
                .filter(|c| c.seq >= next)
                .map(|c| Reply::Output {
                    seq: c.seq,
                    stream: c.stream.to_string(),
                    data: B64.encode(&c.data),
                })
                .collect();
            next = p.next_seq;
            let done = p.finished();
            let info = p.info.clone();
            drop(table);
            for r in &fresh {
                write_reply(out, r)?;
            }
            if done {
                write_reply(out, &Reply::Exit(info))?;
                return write_reply(out, &Reply::End);
            }
            if !follow {
                return write_reply(out, &Reply::End);
            }
            out.flush()?;
            table = self.lock();
            let pending = table
                .procs
                .get(&pid)
                .map(|p| p.next_seq == next && !p.finished())
                .unwrap_or(false);
            if pending {
                table = self
                    .changed
                    .wait_timeout(table, PIPE_GRACE)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        }
    }

    fn handle(self: &Arc<Self>, req: Request, out: &mut dyn Write) -> std::io::Result<()> {
        let reply = match req {
            Request::Ping => Reply::Pong {
                version: env!("CARGO_PKG_VERSION").to_string(),
                oom_kills: self.oom_kills.load(std::sync::atomic::Ordering::Relaxed),
            },
            Request::Start(spec) => match self.start(spec) {
                Ok(i) => Reply::Started(i),
                Err(e) => e.into(),
            },
            Request::Exec { spec, timeout_ms } => self.exec(spec, timeout_ms),
            Request::StartFollow(spec) => match self.start(spec) {
                Ok(info) => {
                    write_reply(out, &Reply::Started(info.clone()))?;
                    return self.stream_logs(info.pid, true, None, out);
                }
                Err(e) => e.into(),
            },
            Request::Get { pid } => match self.info(pid) {
                Some(i) => Reply::Proc(i),
                None => Reply::error("not_found", format!("process {pid} not found")),
            },
            Request::List => {
                let mut items: Vec<ProcInfo> =
                    self.lock().procs.values().map(|p| p.info.clone()).collect();
                items.sort_by_key(|i| i.pid);
                Reply::Procs { items }
            }
            Request::Kill { pid, signal } => {
                if self.info(pid).is_none() {
                    Reply::error("not_found", format!("process {pid} not found"))
                } else {
                    let killed = self.signal(pid, signal.unwrap_or(libc::SIGKILL));
                    Reply::Killed {
                        count: u32::from(killed),
                    }
                }
            }
            Request::KillAll { signal } => {
                let pids: Vec<u32> = self
                    .lock()
                    .procs
                    .values()
                    .filter(|p| p.info.running)
                    .map(|p| p.info.pid)
                    .collect();
                let count = pids
                    .into_iter()
                    .filter(|&p| self.signal(p, signal.unwrap_or(libc::SIGKILL)))
                    .count() as u32;
                Reply::Killed { count }
            }
            Request::Stdin { pid, data, eof } => self.write_stdin(pid, &data, eof),
            Request::Logs {
                pid,
                follow,
                from_seq,
            } => {
                return self.stream_logs(pid, follow, from_seq, out);
            }
            Request::ReadFile {
                path,
                offset,
                length,
            } => read_file(&path, offset, length),
            Request::WriteFile {
                path,
                data,
                mode,
                append,
                make_parents,
            } => write_file(&path, &data, mode, append, make_parents),
            Request::ListDir { path, depth } => list_dir(&path, depth.unwrap_or(1)),
            Request::Stat { path } => match stat(Path::new(&path)) {
                Ok(i) => Reply::Stat(i),
                Err(e) => io_error(&path, e),
            },
            Request::Mkdir {
                path,
                parents,
                mode,
            } => mkdir(&path, parents, mode),
            Request::Remove { path, recursive } => remove(&path, recursive),
            Request::Rename { from, to } => match std::fs::rename(&from, &to) {
                Ok(()) => Reply::Ok,
                Err(e) => io_error(&from, e),
            },
            Request::Copy {
                from,
                to,
                recursive,
            } => match copy(Path::new(&from), Path::new(&to), recursive) {
                Ok(()) => Reply::Ok,
                Err(e) => io_error(&from, e),
            },
            Request::Reidentify { hostname } => reidentify(&hostname),
            Request::UploadCreate {
                temp,
                target,
                total,
            } => self.uploads.create(&temp, &target, total),
            Request::UploadWrite {
                temp,
                target,
                offset,
                total,
                data,
            } => match B64.decode(&data) {
                Ok(bytes) => self.uploads.write(&temp, &target, offset, total, &bytes),
                Err(_) => Reply::error("invalid", "data is not base64"),
            },
            Request::SetMemoryLimit { bytes } => {
                if bytes == 0 {
                    Reply::error("invalid", "the memory limit must be positive")
                } else {
                    self.set_memory_limit(bytes);
                    Reply::Ok
                }
            }
            Request::SessionCreate(spec) => match self.create_session(spec) {
                Ok(s) => Reply::Session(s.info()),
                Err(e) => e.into(),
            },
            Request::SessionList => Reply::Sessions {
                items: self.sessions.list(),
            },
            Request::SessionGet { id } => match self.sessions.get(&id) {
                Some(s) => Reply::Session(s.info()),
                None => session_not_found(&id),
            },
            Request::SessionResize { id, cols, rows } => match self.sessions.get(&id) {
                Some(s) => match s.resize(cols, rows) {
                    Ok(()) => Reply::Session(s.info()),
                    Err(e) => e.into(),
                },
                None => session_not_found(&id),
            },
            Request::SessionKill { id, signal, remove } => {
                let found = if remove {
                    self.sessions.remove(&id)
                } else {
                    self.sessions.get(&id)
                };
                match found {
                    Some(s) => Reply::Killed {
                        count: u32::from(s.signal(signal.unwrap_or(libc::SIGKILL))),
                    },
                    None => session_not_found(&id),
                }
            }
            Request::InterpCreate { id, language, cwd } => {
                match self
                    .contexts
                    .create(id, language.as_deref().unwrap_or("python"), cwd)
                {
                    Ok(c) => Reply::Context(c.info()),
                    Err(e) => Reply::error(e.code, e.message),
                }
            }
            Request::InterpList => Reply::Contexts {
                items: self.contexts.list(),
            },
            Request::InterpGet { id } => match self.contexts.get(&id) {
                Some(c) => Reply::Context(c.info()),
                None => Reply::error("not_found", format!("context {id} not found")),
            },
            Request::InterpDelete { id } => {
                if self.contexts.remove(&id) {
                    Reply::Ok
                } else {
                    Reply::error("not_found", format!("context {id} not found"))
                }
            }
            Request::InterpExecute {
                context,
                language,
                code,
                env,
                timeout_ms,
            } => {
                if let Some(l) = language.as_deref().filter(|l| *l != "python") {
                    Reply::error(
                        "invalid",
                        format!("language {l:?} is not available here (supported: python)"),
                    )
                } else {
                    match self.contexts.get_or_default(context.as_deref()) {
                        Err(e) => Reply::error(e.code, e.message),
                        Ok(ctx) => {
                            let timeout =
                                Duration::from_millis(timeout_ms.unwrap_or(30_000).max(1));
                            let mut emit = |ev: &serde_json::Value| {
                                write_reply(out, &Reply::InterpEvent { event: ev.clone() })
                                    .and_then(|_| out.flush())
                                    .is_ok()
                            };
                            match ctx.execute(&code, env.as_ref(), timeout, &mut emit) {
                                Ok(done) => Reply::InterpDone { event: done },
                                Err(e) => Reply::error(e.code, e.message),
                            }
                        }
                    }
                }
            }
            // Served by `serve_conn`, which hands the connection over to the session.
            Request::SessionOpen(_) | Request::SessionAttach { .. } => Reply::error(
                "invalid",
                "sessions are attached on a connection of their own",
            ),
            Request::Watch { .. } => {
                Reply::error("invalid", "a watch is served on a connection of its own")
            }
        };
        write_reply(out, &reply)
    }

    /// Registers a session and, unless it is lazy, starts its process.
    fn create_session(
        &self,
        spec: crate::proto::SessionSpec,
    ) -> Result<Arc<Session>, SessionError> {
        let lazy = spec.lazy;
        let s = self.sessions.create(spec)?;
        if !lazy {
            if let Err(e) = self.start_session(&s) {
                self.sessions.remove(s.id());
                return Err(e);
            }
        }
        Ok(s)
    }

    /// Starts a session's process under the table lock, so the reaper knows it.
    fn start_session(&self, s: &Arc<Session>) -> Result<(), SessionError> {
        let mut table = self.lock();
        if let Some(started) = s.start()? {
            table.session_pids.insert(started.os_pid, Arc::clone(s));
            table.live_children += 1;
            drop(table);
            self.changed.notify_all();
        }
        Ok(())
    }

    /// `SessionOpen` / `SessionAttach`: replies on `out`, then pumps frames until either side
    /// ends. Returns false when the connection is finished.
    fn attach_session(
        self: &Arc<Self>,
        req: Request,
        input: &mut dyn BufRead,
        stream: &TcpStream,
    ) -> std::io::Result<()> {
        let mut out = stream.try_clone()?;
        let session = match req {
            Request::SessionOpen(spec) => self.create_session(spec),
            Request::SessionAttach { id } => match self.sessions.get(&id) {
                Some(s) => self.start_session(&s).map(|()| s),
                None => Err(SessionError {
                    code: "not_found",
                    message: format!("session {id} not found"),
                }),
            },
            _ => unreachable!("only session requests are attached"),
        };
        let session = match session {
            Ok(s) => s,
            Err(e) => return write_reply(&mut out, &e.into()),
        };
        let att = session.attach_client();
        write_reply(&mut out, &Reply::Session(session.info()))?;
        crate::session::pump(att, input, out);
        Ok(())
    }

    fn write_stdin(&self, pid: u32, data: &str, eof: bool) -> Reply {
        let Ok(bytes) = B64.decode(data) else {
            return Reply::error("invalid", "data is not base64");
        };
        let mut table = self.lock();
        let Some(p) = table.procs.get_mut(&pid) else {
            return Reply::error("not_found", format!("process {pid} not found"));
        };
        let Some(pipe) = p.stdin.as_mut() else {
            return Reply::error("invalid", "process stdin is closed");
        };
        if let Err(e) = pipe.write_all(&bytes) {
            return Reply::error("io", format!("stdin write failed: {e}"));
        }
        if eof {
            p.stdin = None;
        }
        Reply::Ok
    }
}

/// Why a process could not be started; becomes a `Reply::Error`.
#[derive(Debug)]
struct StartError {
    code: &'static str,
    message: String,
}

impl StartError {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        StartError {
            code,
            message: message.into(),
        }
    }
}

impl From<SessionError> for Reply {
    fn from(e: SessionError) -> Reply {
        Reply::error(e.code, e.message)
    }
}

fn session_not_found(id: &str) -> Reply {
    Reply::error("not_found", format!("session {id} not found"))
}

impl From<StartError> for Reply {
    fn from(e: StartError) -> Reply {
        Reply::error(e.code, e.message)
    }
}

fn evict_exited(table: &mut Table) {
    let mut exited: Vec<(u64, u32)> = table
        .procs
        .values()
        .filter(|p| !p.info.running)
        .map(|p| (p.info.ended_at_ms.unwrap_or(0), p.info.pid))
        .collect();
    if exited.len() <= MAX_EXITED {
        return;
    }
    exited.sort();
    for (_, pid) in exited.iter().take(exited.len() - MAX_EXITED) {
        table.procs.remove(pid);
    }
}

/// The directory processes start in and relative file paths resolve against.
pub const WORKSPACE: &str = "/workspace";

pub(crate) fn default_cwd() -> String {
    if Path::new(WORKSPACE).is_dir() {
        WORKSPACE.into()
    } else if Path::new("/root").is_dir() {
        "/root".into()
    } else {
        "/".into()
    }
}

pub(crate) fn resolve(prog: &str, path_var: &str, cwd: &str) -> Option<String> {
    let is_exec = |p: &Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if prog.contains('/') {
        let p = Path::new(cwd).join(prog);
        return is_exec(&p).then(|| p.to_string_lossy().into_owned());
    }
    path_var
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(prog))
        .find(|p| is_exec(p))
        .map(|p| p.to_string_lossy().into_owned())
}

fn write_reply(out: &mut dyn Write, reply: &Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(reply).expect("reply serializes");
    line.push(b'\n');
    out.write_all(&line)
}

fn io_error(path: &str, e: std::io::Error) -> Reply {
    use std::io::ErrorKind::*;
    let code = match e.kind() {
        NotFound => "not_found",
        AlreadyExists => "exists",
        PermissionDenied => "permission",
        NotADirectory => "not_dir",
        IsADirectory => "is_dir",
        DirectoryNotEmpty => "not_empty",
        InvalidInput | InvalidData => "invalid",
        _ => "io",
    };
    Reply::error(code, format!("{path}: {e}"))
}

fn kind_of(ft: std::fs::FileType) -> &'static str {
    if ft.is_symlink() {
        "symlink"
    } else if ft.is_dir() {
        "dir"
    } else if ft.is_file() {
        "file"
    } else {
        "other"
    }
}

/// `lstat` of `path` as a [`FileInfo`].
pub(crate) fn stat_path(path: &Path) -> std::io::Result<FileInfo> {
    stat(path)
}

fn stat(path: &Path) -> std::io::Result<FileInfo> {
    let md = std::fs::symlink_metadata(path)?;
    let symlink_target = if md.file_type().is_symlink() {
        std::fs::read_link(path)
            .ok()
            .map(|t| t.to_string_lossy().into_owned())
    } else {
        None
    };
    Ok(FileInfo {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "/".into()),
        path: path.to_string_lossy().into_owned(),
        kind: kind_of(md.file_type()).into(),
        size: md.len(),
        mode: md.mode() & 0o7777,
        modified_ms: (md.mtime().max(0) as u64) * 1000
            + (md.mtime_nsec().max(0) as u64) / 1_000_000,
        symlink_target,
        uid: md.uid(),
        gid: md.gid(),
    })
}

fn read_file(path: &str, offset: Option<u64>, length: Option<u64>) -> Reply {
    let result = (|| -> std::io::Result<(Vec<u8>, u64)> {
        use std::io::Seek;
        let mut f = std::fs::File::open(path)?;
        let md = f.metadata()?;
        if md.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::IsADirectory,
                "is a directory",
            ));
        }
        let size = md.len();
        if let Some(o) = offset {
            f.seek(std::io::SeekFrom::Start(o))?;
        }
        let cap = (MAX_REQUEST_BYTES / 2) as u64;
        let want = length.unwrap_or(u64::MAX).min(cap);
        let mut data = Vec::new();
        f.take(want).read_to_end(&mut data)?;
        Ok((data, size))
    })();
    match result {
        Ok((data, size)) => Reply::File {
            data: B64.encode(data),
            size,
        },
        Err(e) => io_error(path, e),
    }
}

fn write_file(
    path: &str,
    data: &str,
    mode: Option<u32>,
    append: bool,
    make_parents: bool,
) -> Reply {
    let Ok(bytes) = B64.decode(data) else {
        return Reply::error("invalid", "data is not base64");
    };
    let result = (|| -> std::io::Result<()> {
        let p = Path::new(path);
        if make_parents {
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent)?;
            }
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(p)?;
        f.write_all(&bytes)?;
        if let Some(m) = mode {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m))?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => Reply::Ok,
        Err(e) => io_error(path, e),
    }
}

fn list_dir(path: &str, depth: u32) -> Reply {
    fn walk(dir: &Path, depth: u32, out: &mut Vec<FileInfo>) -> std::io::Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)?.filter_map(Result::ok).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let Ok(info) = stat(&p) else { continue };
            let is_dir = info.kind == "dir";
            out.push(info);
            if is_dir && depth > 1 && out.len() < 100_000 {
                let _ = walk(&p, depth - 1, out);
            }
        }
        Ok(())
    }
    let mut items = Vec::new();
    match walk(Path::new(path), depth.max(1), &mut items) {
        Ok(()) => Reply::Entries { items },
        Err(e) => io_error(path, e),
    }
}

fn mkdir(path: &str, parents: bool, mode: Option<u32>) -> Reply {
    let r = if parents {
        std::fs::create_dir_all(path)
    } else {
        std::fs::create_dir(path)
    };
    let r = r.and_then(|()| match mode {
        Some(m) => std::fs::set_permissions(path, std::fs::Permissions::from_mode(m)),
        None => Ok(()),
    });
    match r {
        Ok(()) => Reply::Ok,
        Err(e) => io_error(path, e),
    }
}

fn remove(path: &str, recursive: bool) -> Reply {
    let r = match std::fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => {
            if recursive {
                std::fs::remove_dir_all(path)
            } else {
                std::fs::remove_dir(path)
            }
        }
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    };
    match r {
        Ok(()) => Reply::Ok,
        Err(e) => io_error(path, e),
    }
}

fn copy(from: &Path, to: &Path, recursive: bool) -> std::io::Result<()> {
    let md = std::fs::symlink_metadata(from)?;
    if md.is_dir() {
        if !recursive {
            return Err(std::io::Error::new(
                std::io::ErrorKind::IsADirectory,
                "is a directory (use recursive)",
            ));
        }
        std::fs::create_dir_all(to)?;
        for e in std::fs::read_dir(from)? {
            let e = e?;
            copy(&e.path(), &to.join(e.file_name()), true)?;
        }
        Ok(())
    } else if md.file_type().is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(from)?, to)
    } else {
        std::fs::copy(from, to).map(|_| ())
    }
}

fn reidentify(hostname: &str) -> Reply {
    // SAFETY: sethostname reads exactly `len` bytes from the pointer, which is valid for them.
    let rc = unsafe { libc::sethostname(hostname.as_ptr().cast(), hostname.len()) };
    if rc != 0 {
        return Reply::error(
            "io",
            format!("sethostname: {}", std::io::Error::last_os_error()),
        );
    }
    let _ = std::fs::write("/etc/hostname", format!("{hostname}\n"));
    Reply::Ok
}

fn serve_conn(agent: Arc<Agent>, stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half.take(u64::MAX));
    let mut writer = std::io::BufWriter::new(stream);
    loop {
        let mut line = Vec::new();
        let limited = (&mut reader)
            .take(MAX_REQUEST_BYTES as u64 + 1)
            .read_until(b'\n', &mut line);
        match limited {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.len() > MAX_REQUEST_BYTES {
            let _ = write_reply(&mut writer, &Reply::error("invalid", "request too large"));
            let _ = writer.flush();
            return;
        }
        let res = match serde_json::from_slice::<Request>(&line) {
            Ok(req @ (Request::SessionOpen(_) | Request::SessionAttach { .. })) => {
                if writer.flush().is_err() {
                    return;
                }
                let _ = agent.attach_session(req, &mut reader, writer.get_ref());
                return;
            }
            Ok(Request::Watch {
                path,
                recursive,
                timeout_ms,
            }) => {
                if writer.flush().is_err() {
                    return;
                }
                crate::watch::serve(&path, recursive, timeout_ms, writer.get_ref());
                return;
            }
            Ok(req) => agent.handle(req, &mut writer),
            Err(e) => write_reply(
                &mut writer,
                &Reply::error("invalid", format!("bad request: {e}")),
            ),
        };
        if res.is_err() || writer.flush().is_err() {
            return;
        }
    }
}

/// Serves requests on `listener` forever, a thread per connection.
pub fn serve(agent: Arc<Agent>, listener: TcpListener) {
    for stream in listener.incoming().flatten() {
        let agent = Arc::clone(&agent);
        thread::spawn(move || serve_conn(agent, stream));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(agent: &Arc<Agent>, req: Request) -> Vec<Reply> {
        let mut out = Vec::new();
        agent.handle(req, &mut out).unwrap();
        out.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    }

    /// One agent per test process: its reaper waits for any child, as init does.
    fn agent() -> Arc<Agent> {
        static AGENT: std::sync::OnceLock<Arc<Agent>> = std::sync::OnceLock::new();
        AGENT
            .get_or_init(|| {
                let a = Agent::new();
                let r = Arc::clone(&a);
                thread::spawn(move || r.run_reaper());
                a
            })
            .clone()
    }

    /// A client of a session connection: reads frames until `want` shows up in the output.
    struct Client {
        reader: BufReader<TcpStream>,
        writer: TcpStream,
        output: Vec<u8>,
    }

    impl Client {
        fn open(req: &Request) -> (Client, Reply) {
            static ADDR: std::sync::OnceLock<std::net::SocketAddr> = std::sync::OnceLock::new();
            let addr = *ADDR.get_or_init(|| {
                let l = TcpListener::bind("127.0.0.1:0").unwrap();
                let a = l.local_addr().unwrap();
                let ag = agent();
                thread::spawn(move || serve(ag, l));
                a
            });
            let mut writer = TcpStream::connect(addr).unwrap();
            writer
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut line = serde_json::to_vec(req).unwrap();
            line.push(b'\n');
            writer.write_all(&line).unwrap();
            let mut reader = BufReader::new(writer.try_clone().unwrap());
            let mut first = Vec::new();
            reader.read_until(b'\n', &mut first).unwrap();
            let reply = serde_json::from_slice(&first).unwrap();
            (
                Client {
                    reader,
                    writer,
                    output: Vec::new(),
                },
                reply,
            )
        }

        fn send(&mut self, kind: u8, payload: &[u8]) {
            self.writer
                .write_all(&crate::proto::frame::encode(kind, payload))
                .unwrap();
        }

        /// Reads frames until the output holds `want`; returns an exit status if one came.
        fn until(&mut self, want: &str) -> Option<crate::proto::frame::Exit> {
            loop {
                if String::from_utf8_lossy(&self.output).contains(want) {
                    return None;
                }
                let mut head = [0u8; 5];
                self.reader.read_exact(&mut head).unwrap();
                let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
                let mut p = vec![0u8; len];
                self.reader.read_exact(&mut p).unwrap();
                if head[0] == crate::proto::frame::EXIT {
                    return Some(serde_json::from_slice(&p).unwrap());
                }
                self.output.extend_from_slice(&p);
            }
        }
    }

    fn pty_spec(id: &str) -> crate::proto::SessionSpec {
        crate::proto::SessionSpec {
            id: Some(id.into()),
            argv: Some(vec!["sh".into()]),
            pty: true,
            cols: Some(100),
            rows: Some(30),
            env: vec![("PS1".into(), "$ ".into())],
            ..Default::default()
        }
    }

    #[test]
    fn pty_session_sizes_resizes_reattaches_and_exits() {
        use crate::proto::frame;
        let (mut c, reply) = Client::open(&Request::SessionOpen(pty_spec("t1")));
        assert!(matches!(reply, Reply::Session(ref i) if i.id == "t1" && i.running));
        c.send(frame::INPUT, b"stty size; echo mark-$((6*7))\n");
        assert!(c.until("mark-42").is_none());
        assert!(String::from_utf8_lossy(&c.output).contains("30 100"));
        c.send(frame::RESIZE, &[0, 120, 0, 40]);
        c.send(frame::INPUT, b"stty size; echo again-$((1+1))\n");
        c.until("again-2");
        assert!(String::from_utf8_lossy(&c.output).contains("40 120"));
        drop(c);
        // Reattach: the scrollback shows what came before.
        let (mut c2, reply) = Client::open(&Request::SessionAttach { id: "t1".into() });
        assert!(matches!(reply, Reply::Session(ref i) if i.cols == 120 && i.rows == 40));
        c2.until("mark-42");
        c2.send(frame::INPUT, b"exit 3\n");
        let exit = c2.until("\u{0}never").expect("exit frame");
        assert_eq!(exit.exit_code, 3);
        let listed = call(&agent(), Request::SessionGet { id: "t1".into() });
        assert!(matches!(&listed[0], Reply::Session(i) if !i.running && i.exit_code == Some(3)));
        let dup = call(&agent(), Request::SessionCreate(pty_spec("t1")));
        assert!(matches!(&dup[0], Reply::Error { code, .. } if code == "exists"));
    }

    #[test]
    fn pipe_session_keeps_streams_apart_and_closes_stdin() {
        use crate::proto::frame;
        let spec = crate::proto::SessionSpec {
            argv: Some(vec![
                "sh".into(),
                "-c".into(),
                "cat; echo err >&2; exit 5".into(),
            ]),
            kill_on_detach: true,
            ..Default::default()
        };
        let (mut c, _) = Client::open(&Request::SessionOpen(spec));
        c.send(frame::INPUT, b"\x00\xffbinary\n");
        c.send(frame::EOF, b"");
        let mut out = Vec::new();
        let mut err = Vec::new();
        let exit = loop {
            let mut head = [0u8; 5];
            c.reader.read_exact(&mut head).unwrap();
            let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            let mut p = vec![0u8; len];
            c.reader.read_exact(&mut p).unwrap();
            match head[0] {
                frame::STDOUT => out.extend(p),
                frame::STDERR => err.extend(p),
                _ => break serde_json::from_slice::<frame::Exit>(&p).unwrap(),
            }
        };
        assert_eq!(out, b"\x00\xffbinary\n");
        assert_eq!(err, b"err\n");
        assert_eq!(exit.exit_code, 5);
    }

    #[test]
    fn pty_signal_interrupts_the_foreground_job() {
        use crate::proto::frame;
        let (mut c, _) = Client::open(&Request::SessionOpen(pty_spec("t-int")));
        c.send(frame::INPUT, b"sleep 30; echo after-$((2+3))\n");
        thread::sleep(Duration::from_millis(300));
        c.send(frame::SIGNAL, &libc::SIGINT.to_be_bytes());
        c.send(frame::INPUT, b"echo alive-$((3+4))\n");
        c.until("alive-7");
        assert!(!String::from_utf8_lossy(&c.output).contains("after-5"));
        call(
            &agent(),
            Request::SessionKill {
                id: "t-int".into(),
                signal: None,
                remove: true,
            },
        );
    }

    fn sh(script: &str) -> StartSpec {
        StartSpec {
            argv: vec!["sh".into(), "-c".into(), script.into()],
            ..Default::default()
        }
    }

    #[test]
    fn exec_returns_output_and_exit_code() {
        let a = agent();
        let r = call(
            &a,
            Request::Exec {
                spec: sh("echo out; echo err >&2; exit 3"),
                timeout_ms: Some(10_000),
            },
        );
        match &r[0] {
            Reply::Exec {
                info,
                stdout,
                stderr,
                timed_out,
            } => {
                assert_eq!(info.exit_code, Some(3));
                assert_eq!(B64.decode(stdout).unwrap(), b"out\n");
                assert_eq!(B64.decode(stderr).unwrap(), b"err\n");
                assert!(!timed_out);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn exec_times_out_and_kills() {
        let a = agent();
        let r = call(
            &a,
            Request::Exec {
                spec: sh("sleep 30"),
                timeout_ms: Some(200),
            },
        );
        match &r[0] {
            Reply::Exec {
                info, timed_out, ..
            } => {
                assert!(timed_out);
                assert_eq!(info.signal, Some(libc::SIGKILL));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_command_is_not_found() {
        let a = agent();
        let r = call(
            &a,
            Request::Exec {
                spec: StartSpec {
                    argv: vec!["no-such-cmd-xyz".into()],
                    ..Default::default()
                },
                timeout_ms: None,
            },
        );
        assert!(
            matches!(&r[0], Reply::Error { code, .. } if code == "not_found"),
            "{r:?}"
        );
    }

    #[test]
    fn follow_logs_streams_until_exit() {
        let a = agent();
        let Reply::Started(info) =
            call(&a, Request::Start(sh("echo a; sleep 0.2; echo b; exit 7"))).remove(0)
        else {
            panic!()
        };
        let events = call(
            &a,
            Request::Logs {
                pid: info.pid,
                follow: true,
                from_seq: None,
            },
        );
        let text: Vec<u8> = events
            .iter()
            .filter_map(|e| match e {
                Reply::Output { data, .. } => Some(B64.decode(data).unwrap()),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(text, b"a\nb\n");
        assert!(matches!(&events[events.len() - 2], Reply::Exit(i) if i.exit_code == Some(7)));
        assert_eq!(events.last(), Some(&Reply::End));
    }

    #[test]
    fn kill_stops_a_running_process() {
        let a = agent();
        let Reply::Started(info) = call(&a, Request::Start(sh("sleep 30"))).remove(0) else {
            panic!()
        };
        assert_eq!(
            call(
                &a,
                Request::Kill {
                    pid: info.pid,
                    signal: None
                }
            )[0],
            Reply::Killed { count: 1 }
        );
        assert!(a.wait_finished(info.pid, Some(Instant::now() + Duration::from_secs(5))));
        let Reply::Proc(i) = call(&a, Request::Get { pid: info.pid }).remove(0) else {
            panic!()
        };
        assert!(!i.running);
        assert_eq!(i.signal, Some(libc::SIGKILL));
    }

    #[test]
    fn files_round_trip() {
        let dir = std::env::temp_dir().join(format!("agent-test-{}", std::process::id()));
        let f = dir.join("a/b/c.txt");
        let fs = f.to_string_lossy().to_string();
        assert_eq!(
            call(
                &agent(),
                Request::WriteFile {
                    path: fs.clone(),
                    data: B64.encode("hello"),
                    mode: Some(0o600),
                    append: false,
                    make_parents: true
                }
            )[0],
            Reply::Ok
        );
        let r = read_file(&fs, None, None);
        assert_eq!(
            r,
            Reply::File {
                data: B64.encode("hello"),
                size: 5
            }
        );
        let Reply::Stat(st) = call(&agent(), Request::Stat { path: fs.clone() }).remove(0) else {
            panic!()
        };
        assert_eq!((st.kind.as_str(), st.size, st.mode), ("file", 5, 0o600));
        let Reply::Entries { items } = list_dir(&dir.to_string_lossy(), 3) else {
            panic!()
        };
        assert_eq!(
            items.iter().map(|i| i.name.as_str()).collect::<Vec<_>>(),
            ["a", "b", "c.txt"]
        );
        assert!(matches!(
            remove(&dir.to_string_lossy(), false),
            Reply::Error { .. }
        ));
        assert_eq!(remove(&dir.to_string_lossy(), true), Reply::Ok);
        assert!(
            matches!(read_file(&fs, None, None), Reply::Error { code, .. } if code == "not_found")
        );
    }
}
