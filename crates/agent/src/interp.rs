//! Code-interpreter contexts: each is a live Python process running the driver in
//! `interp/kernel.py` (IPython's shell when the template has it). Requests go to its stdin
//! as JSON lines and its events come back as JSON lines; a cell is interrupted with SIGINT
//! (KeyboardInterrupt in the cell, the context survives). The processes are ordinary
//! processes of the sandbox, so contexts survive snapshot, fork and pause/resume with it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::proto::ContextInfo;

/// The driver's source, run as `python3 -u -c <source>`.
const KERNEL: &str = include_str!("interp/kernel.py");
/// Contexts per sandbox.
pub const MAX_CONTEXTS: usize = 32;
/// How long a new context may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// After SIGINT, how long a cell may take to stop before its context is killed.
const INTERRUPT_GRACE: Duration = Duration::from_secs(3);
/// Id of the context used when a request names none.
pub const DEFAULT_CONTEXT: &str = "default";

#[derive(Debug)]
pub struct InterpError {
    pub code: &'static str,
    pub message: String,
}

impl InterpError {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        InterpError {
            code,
            message: message.into(),
        }
    }
}

struct Running {
    child: Child,
    stdin: std::process::ChildStdin,
    events: Receiver<Value>,
    next_id: u64,
}

pub struct Context {
    info: Mutex<ContextInfo>,
    /// Held while a cell runs: one cell at a time per context.
    run: Mutex<Option<Running>>,
    pid: u32,
}

impl Context {
    pub fn info(&self) -> ContextInfo {
        self.info.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn kill(&self) {
        let mut run = self.run.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mut r) = run.take() {
            // The driver leads its own process group: whatever the cells started dies too.
            // SAFETY: kill has no memory-safety preconditions; a negative id names a group.
            unsafe { libc::kill(-(r.child.id() as i32), libc::SIGKILL) };
            let _ = r.child.kill();
        }
        self.info.lock().unwrap_or_else(|p| p.into_inner()).alive = false;
    }

    /// Runs one cell, handing each event (`stdout`, `stderr`, `result`, `error`) to `emit` as
    /// it comes; returns the final `done` event. On `timeout` the cell gets SIGINT.
    pub fn execute(
        &self,
        code: &str,
        env: Option<&HashMap<String, String>>,
        timeout: Duration,
        emit: &mut dyn FnMut(&Value) -> bool,
    ) -> Result<Value, InterpError> {
        let mut guard = self.run.lock().unwrap_or_else(|p| p.into_inner());
        let Some(run) = guard.as_mut() else {
            return Err(InterpError::new(
                "gone",
                "this context's interpreter has exited; create a new context",
            ));
        };
        run.next_id += 1;
        let id = run.next_id;
        // Events of an earlier cell (one that was abandoned) are dropped by id below.
        let req = serde_json::json!({"id": id, "code": code, "env": env});
        let mut line = serde_json::to_vec(&req).expect("request serializes");
        line.push(b'\n');
        if run
            .stdin
            .write_all(&line)
            .and_then(|_| run.stdin.flush())
            .is_err()
        {
            drop(guard);
            self.kill();
            return Err(InterpError::new("gone", "the interpreter has exited"));
        }
        let mut deadline = Instant::now() + timeout;
        let mut interrupted = false;
        let mut listening = true;
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            match run.events.recv_timeout(wait) {
                Ok(ev) => {
                    if ev.get("id").and_then(Value::as_u64) != Some(id) {
                        continue;
                    }
                    if ev.get("type").and_then(Value::as_str) == Some("done") {
                        self.info
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .executions += 1;
                        let mut done = ev;
                        done["timed_out"] = Value::Bool(interrupted);
                        return Ok(done);
                    }
                    if listening && !emit(&ev) {
                        // The client left: stop the cell, keep the context.
                        listening = false;
                        if !interrupted {
                            interrupted = true;
                            // SAFETY: kill has no memory-safety preconditions.
                            unsafe { libc::kill(run.child.id() as i32, libc::SIGINT) };
                            deadline = Instant::now() + INTERRUPT_GRACE;
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) if !interrupted => {
                    interrupted = true;
                    // SAFETY: kill has no memory-safety preconditions.
                    unsafe { libc::kill(run.child.id() as i32, libc::SIGINT) };
                    deadline = Instant::now() + INTERRUPT_GRACE;
                }
                Err(_) => {
                    drop(guard);
                    self.kill();
                    return Err(InterpError::new(
                        "gone",
                        "the interpreter did not stop after an interrupt and was killed; create a new context",
                    ));
                }
            }
        }
    }
}

#[derive(Default)]
pub struct Contexts {
    map: Mutex<HashMap<String, Arc<Context>>>,
    /// Serializes creation of the default context.
    creating: Mutex<()>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Contexts {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Context>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, id: &str) -> Option<Arc<Context>> {
        self.lock().get(id).cloned()
    }

    pub fn list(&self) -> Vec<ContextInfo> {
        let all: Vec<Arc<Context>> = self.lock().values().cloned().collect();
        let mut v: Vec<ContextInfo> = all.iter().map(|c| c.info()).collect();
        v.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        v
    }

    pub fn remove(&self, id: &str) -> bool {
        match self.lock().remove(id) {
            Some(c) => {
                c.kill();
                true
            }
            None => false,
        }
    }

    /// The named context, or the default one (created on first use).
    pub fn get_or_default(&self, id: Option<&str>) -> Result<Arc<Context>, InterpError> {
        match id {
            Some(id) if id != DEFAULT_CONTEXT => self
                .get(id)
                .ok_or_else(|| InterpError::new("not_found", format!("context {id} not found"))),
            _ => {
                let _one = self.creating.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(c) = self.get(DEFAULT_CONTEXT).filter(|c| c.info().alive) {
                    return Ok(c);
                }
                self.lock().remove(DEFAULT_CONTEXT);
                self.create(Some(DEFAULT_CONTEXT.into()), "python", None)
            }
        }
    }

    pub fn create(
        &self,
        id: Option<String>,
        language: &str,
        cwd: Option<String>,
    ) -> Result<Arc<Context>, InterpError> {
        if language != "python" {
            return Err(InterpError::new(
                "invalid",
                format!("language {language:?} is not available here (supported: python)"),
            ));
        }
        let id = id.unwrap_or_else(|| {
            let mut b = [0u8; 8];
            if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
                let _ = std::io::Read::read_exact(&mut f, &mut b);
            }
            format!("ctx-{:016x}", u64::from_ne_bytes(b))
        });
        {
            let map = self.lock();
            if map.contains_key(&id) {
                return Err(InterpError::new(
                    "exists",
                    format!("context {id} already exists"),
                ));
            }
            if map.len() >= MAX_CONTEXTS {
                return Err(InterpError::new(
                    "limit",
                    format!("at most {MAX_CONTEXTS} contexts per sandbox; delete one first"),
                ));
            }
        }
        let cwd = cwd
            .filter(|c| !c.is_empty())
            .unwrap_or_else(crate::server::default_cwd);
        if !std::path::Path::new(&cwd).is_dir() {
            return Err(InterpError::new(
                "not_found",
                format!("working directory {cwd} does not exist"),
            ));
        }
        let path_var = std::env::var("PATH")
            .unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin".into());
        let python = crate::server::resolve("python3", &path_var, &cwd).ok_or_else(|| {
            InterpError::new(
                "unavailable",
                "the code interpreter needs python3, which this sandbox's template does not have",
            )
        })?;
        let mut child = Command::new(python)
            .args(["-u", "-c", KERNEL])
            .current_dir(&cwd)
            .env("PYTHONUNBUFFERED", "1")
            .env("MPLBACKEND", "Agg")
            .env("HOME", "/root")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| InterpError::new("io", format!("cannot start python3: {e}")))?;
        let pid = child.id();
        let stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = sync_channel::<Value>(256);
        thread::spawn(move || {
            for line in BufRead::split(BufReader::new(stdout), b'\n') {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_slice::<Value>(&line) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        // The driver says it is ready before it takes requests.
        let ready = rx.recv_timeout(READY_TIMEOUT);
        match ready {
            Ok(v) if v.get("type").and_then(Value::as_str) == Some("ready") => {}
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(InterpError::new(
                    "io",
                    "the python interpreter did not start",
                ));
            }
        }
        let ctx = Arc::new(Context {
            info: Mutex::new(ContextInfo {
                id: id.clone(),
                language: language.into(),
                cwd,
                created_at_ms: now_ms(),
                executions: 0,
                alive: true,
            }),
            run: Mutex::new(Some(Running {
                child,
                stdin,
                events: rx,
                next_id: 0,
            })),
            pid,
        });
        let mut map = self.lock();
        if map.contains_key(&id) {
            drop(map);
            ctx.kill();
            return Err(InterpError::new(
                "exists",
                format!("context {id} already exists"),
            ));
        }
        map.insert(id, Arc::clone(&ctx));
        Ok(ctx)
    }
}

impl Context {
    /// The interpreter's process id inside the sandbox.
    pub fn pid(&self) -> u32 {
        self.pid
    }
}
