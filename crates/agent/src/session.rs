//! Sessions: a process on a pseudo-terminal (or on pipes) that clients attach to as a byte
//! stream. A pty session keeps a bounded scrollback, so a client can detach and reattach by id
//! without losing the screen; several clients may be attached at once. Output is handed to each
//! attached client through a bounded queue and the reader blocks when one is full, so a flood
//! (`yes`) is slowed to the client's pace instead of growing memory.

use std::collections::{HashMap, VecDeque};
use std::ffi::CStr;
use std::fs::File;
use std::io::{BufRead, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use crate::proto::{frame, SessionInfo, SessionSpec};

/// Output a pty session keeps for clients that attach later.
const SCROLLBACK_BYTES: usize = 256 * 1024;
/// Output a pipe session holds while no client is attached (it is opened attached).
const PIPE_BACKLOG_BYTES: usize = 4 * 1024 * 1024;
/// Frames queued per attached client before the session's reader waits for it.
const CLIENT_QUEUE: usize = 64;
/// Sessions per sandbox (running or ended).
pub const MAX_SESSIONS: usize = 64;
/// How long after the process exits its output may still arrive (a background child holding
/// the terminal open does not hold the exit back longer).
const DRAIN_GRACE: Duration = Duration::from_millis(200);

#[derive(Debug)]
pub struct SessionError {
    pub code: &'static str,
    pub message: String,
}

impl SessionError {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        SessionError {
            code,
            message: message.into(),
        }
    }
}

/// What an attached client receives.
pub enum Event {
    Data(u8, Vec<u8>),
    Exit(frame::Exit),
}

struct State {
    os_pid: Option<i32>,
    /// pty master, or the stdin pipe of a pipe session.
    input: Option<File>,
    master_fd: Option<i32>,
    backlog: VecDeque<(u8, Vec<u8>)>,
    backlog_bytes: usize,
    clients: Vec<(u64, SyncSender<Event>)>,
    next_client: u64,
    exit: Option<frame::Exit>,
    readers_open: u8,
    finished: bool,
    cols: u16,
    rows: u16,
}

pub struct Session {
    id: String,
    argv: Vec<String>,
    program: String,
    cwd: String,
    env: Vec<(String, String)>,
    full_env: Vec<(String, String)>,
    pty: bool,
    lazy: bool,
    kill_on_detach: bool,
    created_at_ms: u64,
    state: Mutex<State>,
    changed: Condvar,
}

/// The client's end of an attachment: events to forward, and its id to detach with.
pub struct Attachment {
    pub session: Arc<Session>,
    pub client: u64,
    pub events: Receiver<Event>,
}

impl Session {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn info(&self) -> SessionInfo {
        let st = self.lock();
        SessionInfo {
            id: self.id.clone(),
            argv: self.argv.clone(),
            cwd: self.cwd.clone(),
            env: self.env.clone(),
            pty: self.pty,
            cols: st.cols,
            rows: st.rows,
            lazy: self.lazy,
            started: st.os_pid.is_some(),
            running: st.os_pid.is_some() && st.exit.is_none(),
            exit_code: st.exit.map(|e| e.exit_code),
            signal: st.exit.and_then(|e| e.signal),
            attached: st.clients.len() as u32,
            created_at_ms: self.created_at_ms,
        }
    }

    fn ended(&self) -> bool {
        self.lock().exit.is_some()
    }

    /// Writes client input to the terminal or the stdin pipe.
    pub fn write_input(&self, data: &[u8]) -> std::io::Result<()> {
        let file = {
            let st = self.lock();
            match &st.input {
                Some(f) => f.try_clone()?,
                None => return Ok(()),
            }
        };
        (&file).write_all(data)
    }

    /// Closes a pipe session's stdin; a pty gets ^D.
    pub fn eof(&self) {
        if self.pty {
            let _ = self.write_input(&[4]);
        } else {
            self.lock().input = None;
        }
    }

    pub fn resize(&self, cols: u16, rows: u16) -> Result<(), SessionError> {
        if cols == 0 || rows == 0 {
            return Err(SessionError::new(
                "invalid",
                "cols and rows must be at least 1",
            ));
        }
        let mut st = self.lock();
        st.cols = cols;
        st.rows = rows;
        if let Some(fd) = st.master_fd {
            set_size(fd, cols, rows)
                .map_err(|e| SessionError::new("io", format!("resize failed: {e}")))?;
        }
        Ok(())
    }

    /// Signals a session. On a terminal, INT, QUIT and TSTP are typed (^C, ^\\, ^Z) so that the
    /// line discipline signals the foreground job as a real terminal does (gVisor answers no
    /// TIOCGPGRP on the master side); any other signal goes to every process of the session.
    /// A pipe session's process group gets the signal.
    pub fn signal(&self, sig: i32) -> bool {
        let (pid, master) = {
            let st = self.lock();
            let Some(pid) = st.os_pid else { return false };
            if st.exit.is_some() {
                return false;
            }
            (pid, st.input.as_ref().and_then(|f| f.try_clone().ok()))
        };
        if self.pty {
            let key = match sig {
                libc::SIGINT => Some(3u8),
                libc::SIGQUIT => Some(0x1c),
                libc::SIGTSTP => Some(0x1a),
                _ => None,
            };
            if let (Some(k), Some(m)) = (key, master.as_ref()) {
                if (&*m).write_all(&[k]).is_ok() {
                    return true;
                }
            }
            for p in session_members(pid) {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(p, sig) };
            }
        }
        // SAFETY: kill has no memory-safety preconditions; a negative id names a process group.
        unsafe {
            libc::kill(-pid, sig);
        }
        true
    }

    fn detach(&self, client: u64) {
        let last = {
            let mut st = self.lock();
            st.clients.retain(|(c, _)| *c != client);
            st.clients.is_empty()
        };
        if last && self.kill_on_detach {
            self.signal(libc::SIGHUP);
            self.signal(libc::SIGKILL);
        }
    }

    /// Called by a reader thread with a chunk of output.
    fn output(&self, kind: u8, data: Vec<u8>) {
        let clients: Vec<(u64, SyncSender<Event>)> = {
            let mut st = self.lock();
            let keep = if self.pty {
                SCROLLBACK_BYTES
            } else {
                PIPE_BACKLOG_BYTES
            };
            if self.pty || st.clients.is_empty() {
                st.backlog_bytes += data.len();
                st.backlog.push_back((kind, data.clone()));
                while st.backlog_bytes > keep {
                    let Some((_, old)) = st.backlog.pop_front() else {
                        break;
                    };
                    st.backlog_bytes -= old.len();
                }
            }
            st.clients.clone()
        };
        let mut gone = Vec::new();
        for (c, tx) in clients {
            // Blocks while this client's queue is full: backpressure down to the process.
            if tx.send(Event::Data(kind, data.clone())).is_err() {
                gone.push(c);
            }
        }
        if !gone.is_empty() {
            self.lock().clients.retain(|(c, _)| !gone.contains(c));
        }
    }

    fn reader_done(&self) {
        let mut st = self.lock();
        st.readers_open = st.readers_open.saturating_sub(1);
        drop(st);
        self.changed.notify_all();
    }

    /// The reaper saw the process end.
    pub fn exited(self: &Arc<Self>, status: libc::c_int) {
        let exit = if libc::WIFSIGNALED(status) {
            let sig = libc::WTERMSIG(status);
            frame::Exit {
                exit_code: 128 + sig,
                signal: Some(sig),
            }
        } else {
            frame::Exit {
                exit_code: libc::WEXITSTATUS(status),
                signal: None,
            }
        };
        self.lock().exit = Some(exit);
        self.changed.notify_all();
        let s = Arc::clone(self);
        thread::spawn(move || s.finish());
    }

    /// Once the output is drained (or the grace passed), tells every client the exit status.
    fn finish(&self) {
        let mut st = self.lock();
        let deadline = std::time::Instant::now() + DRAIN_GRACE;
        while st.readers_open > 0 {
            let now = std::time::Instant::now();
            if now >= deadline {
                break;
            }
            st = self
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        st.finished = true;
        st.input = None;
        st.master_fd = None;
        let exit = st.exit.expect("finish runs after exit");
        let clients = std::mem::take(&mut st.clients);
        drop(st);
        for (_, tx) in clients {
            let _ = tx.send(Event::Exit(exit));
        }
    }

    /// Registers a client: it first gets the kept output, then live output, then the exit.
    fn attach(self: &Arc<Self>) -> Attachment {
        let (tx, rx) = sync_channel(CLIENT_QUEUE);
        let mut st = self.lock();
        let client = st.next_client;
        st.next_client += 1;
        // The kept output goes in one go (the queue may be shorter than the backlog).
        let mut kept: HashMap<u8, Vec<u8>> = HashMap::new();
        let backlog: Vec<(u8, Vec<u8>)> = if self.pty {
            st.backlog.iter().cloned().collect()
        } else {
            st.backlog_bytes = 0;
            st.backlog.drain(..).collect()
        };
        for (k, d) in backlog {
            kept.entry(k).or_default().extend_from_slice(&d);
        }
        let mut pending: Vec<Event> = kept
            .into_iter()
            .filter(|(_, d)| !d.is_empty())
            .map(|(k, d)| Event::Data(k, d))
            .collect();
        pending.sort_by_key(|e| match e {
            Event::Data(k, _) => *k,
            Event::Exit(_) => u8::MAX,
        });
        if st.finished {
            pending.push(Event::Exit(st.exit.expect("finished implies exit")));
        } else {
            st.clients.push((client, tx.clone()));
        }
        // At most one event per stream plus the exit: the fresh queue has room, so this never
        // blocks, and it happens under the lock, before any live output.
        for e in pending {
            let _ = tx.try_send(e);
        }
        drop(st);
        Attachment {
            session: Arc::clone(self),
            client,
            events: rx,
        }
    }
}

/// The sandbox's sessions.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Arc<Session>>>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

impl Sessions {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        self.lock().get(id).cloned()
    }

    pub fn list(&self) -> Vec<SessionInfo> {
        let all: Vec<Arc<Session>> = self.lock().values().cloned().collect();
        let mut items: Vec<SessionInfo> = all.iter().map(|s| s.info()).collect();
        items.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
        items
    }

    pub fn remove(&self, id: &str) -> Option<Arc<Session>> {
        self.lock().remove(id)
    }

    /// Validates `spec` and registers a session; the process is not started yet.
    pub fn create(&self, spec: SessionSpec) -> Result<Arc<Session>, SessionError> {
        let id = match spec.id {
            Some(id) => {
                if !valid_id(&id) {
                    return Err(SessionError::new(
                        "invalid",
                        "session id must be 1-128 characters of letters, digits, '-', '_', '.', ':'",
                    ));
                }
                id
            }
            None => format!("pty-{:016x}", rand_u64()),
        };
        let cwd = match &spec.cwd {
            Some(c) if !c.is_empty() => c.clone(),
            _ => crate::server::default_cwd(),
        };
        if !Path::new(&cwd).is_dir() {
            return Err(SessionError::new(
                "not_found",
                format!("working directory {cwd} does not exist"),
            ));
        }
        let argv = match spec.argv {
            Some(a) if !a.is_empty() && !a[0].is_empty() => a,
            Some(_) => return Err(SessionError::new("invalid", "argv must not be empty")),
            None => login_shell(),
        };
        let mut full_env: Vec<(String, String)> = std::env::vars().collect();
        let mut defaults = vec![
            ("HOME".to_string(), home_dir()),
            ("LANG".to_string(), "C.UTF-8".to_string()),
        ];
        if spec.pty {
            defaults.push((
                "TERM".to_string(),
                spec.term.clone().unwrap_or_else(|| "xterm-256color".into()),
            ));
        }
        for (k, v) in defaults.into_iter().chain(spec.env.iter().cloned()) {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return Err(SessionError::new(
                    "invalid",
                    format!("environment variable name {k:?} is not valid"),
                ));
            }
            full_env.retain(|(ek, _)| *ek != k);
            full_env.push((k, v));
        }
        let path_var = full_env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin".into());
        let program = crate::server::resolve(&argv[0], &path_var, &cwd).ok_or_else(|| {
            SessionError::new("not_found", format!("{}: command not found", argv[0]))
        })?;
        let cols = spec.cols.filter(|c| *c > 0).unwrap_or(80);
        let rows = spec.rows.filter(|r| *r > 0).unwrap_or(24);
        let session = Arc::new(Session {
            id: id.clone(),
            argv,
            program,
            cwd,
            env: spec.env,
            full_env,
            pty: spec.pty,
            lazy: spec.lazy,
            kill_on_detach: spec.kill_on_detach,
            created_at_ms: now_ms(),
            state: Mutex::new(State {
                os_pid: None,
                input: None,
                master_fd: None,
                backlog: VecDeque::new(),
                backlog_bytes: 0,
                clients: Vec::new(),
                next_client: 0,
                exit: None,
                readers_open: 0,
                finished: false,
                cols,
                rows,
            }),
            changed: Condvar::new(),
        });
        let mut map = self.lock();
        if map.contains_key(&id) {
            return Err(SessionError::new(
                "exists",
                format!("session {id} already exists"),
            ));
        }
        if map.len() >= MAX_SESSIONS {
            // Forget the oldest ended session to make room, if any.
            let oldest = map
                .values()
                .filter(|s| s.ended())
                .min_by_key(|s| s.created_at_ms)
                .map(|s| s.id.clone());
            match oldest {
                Some(o) => {
                    map.remove(&o);
                }
                None => {
                    return Err(SessionError::new(
                        "limit",
                        format!("at most {MAX_SESSIONS} sessions per sandbox"),
                    ))
                }
            }
        }
        map.insert(id, Arc::clone(&session));
        Ok(session)
    }
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    if let Ok(mut f) = File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    u64::from_ne_bytes(b) ^ now_ms()
}

fn home_dir() -> String {
    if Path::new("/root").is_dir() {
        "/root".into()
    } else {
        "/".into()
    }
}

fn login_shell() -> Vec<String> {
    for sh in ["/bin/bash", "/bin/sh"] {
        if Path::new(sh).exists() {
            return vec![sh.into(), "-l".into()];
        }
    }
    vec!["sh".into()]
}

/// Processes whose session id is `sid` (from `/proc/<pid>/stat`).
fn session_members(sid: i32) -> Vec<i32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|st| {
                    let rest = st.get(st.rfind(')')? + 1..)?.to_string();
                    rest.split_whitespace().nth(3)?.parse::<i32>().ok()
                })
                == Some(sid)
        })
        .collect()
}

fn set_size(fd: i32, cols: u16, rows: u16) -> std::io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from the pointer, which outlives the call.
    if unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Opens a pseudo-terminal pair: (master, slave).
fn open_pty() -> std::io::Result<(OwnedFd, OwnedFd)> {
    // SAFETY: posix_openpt has no pointer arguments.
    let m = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    if m < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: m was just returned by posix_openpt and is owned by nothing else.
    let master = unsafe { OwnedFd::from_raw_fd(m) };
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: grantpt/unlockpt take a valid fd; ptsname_r writes at most name.len() bytes
    // (NUL included) into the buffer, which outlives the call.
    unsafe {
        if libc::grantpt(m) != 0 || libc::unlockpt(m) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let rc = libc::ptsname_r(m, name.as_mut_ptr(), name.len());
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
    }
    // SAFETY: ptsname_r succeeded, so `name` holds a NUL-terminated path.
    let path = unsafe { CStr::from_ptr(name.as_ptr()) };
    // SAFETY: path is a valid C string; the flags are plain values.
    let s = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if s < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: s was just opened and is owned by nothing else.
    Ok((master, unsafe { OwnedFd::from_raw_fd(s) }))
}

/// What the agent's reaper needs to learn about a started session process.
pub struct Started {
    pub os_pid: i32,
}

impl Session {
    /// Starts the process (once). The caller holds the agent's process-table lock, so the
    /// reaper cannot reap the child before it is registered.
    pub fn start(self: &Arc<Self>) -> Result<Option<Started>, SessionError> {
        let mut st = self.lock();
        if st.os_pid.is_some() {
            return Ok(None);
        }
        let mut cmd = Command::new(&self.program);
        cmd.arg0(&self.argv[0])
            .args(&self.argv[1..])
            .env_clear()
            .envs(self.full_env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.cwd);
        let fail = |e: std::io::Error| {
            SessionError::new("invalid", format!("cannot start {}: {e}", self.argv[0]))
        };
        let mut readers: Vec<(u8, File)> = Vec::new();
        if self.pty {
            let (master, slave) = open_pty().map_err(fail)?;
            set_size(master.as_raw_fd(), st.cols, st.rows).map_err(fail)?;
            let slave = File::from(slave);
            cmd.stdin(Stdio::from(slave.try_clone().map_err(fail)?))
                .stdout(Stdio::from(slave.try_clone().map_err(fail)?))
                .stderr(Stdio::from(slave));
            // SAFETY: the closure runs in the forked child before exec and calls only
            // async-signal-safe functions (setsid, ioctl) on fd 0, the terminal.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::setsid() < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    if libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let child = cmd.spawn().map_err(fail)?;
            drop(cmd); // closes our copies of the slave
            let master = File::from(master);
            st.master_fd = Some(master.as_raw_fd());
            readers.push((frame::STDOUT, master.try_clone().map_err(fail)?));
            st.input = Some(master);
            st.os_pid = Some(child.id() as i32);
        } else {
            cmd.stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .process_group(0);
            let mut child = cmd.spawn().map_err(fail)?;
            drop(cmd);
            st.input = child.stdin.take().map(|s| File::from(OwnedFd::from(s)));
            if let Some(o) = child.stdout.take() {
                readers.push((frame::STDOUT, File::from(OwnedFd::from(o))));
            }
            if let Some(e) = child.stderr.take() {
                readers.push((frame::STDERR, File::from(OwnedFd::from(e))));
            }
            st.os_pid = Some(child.id() as i32);
        }
        st.readers_open = readers.len() as u8;
        let os_pid = st.os_pid.expect("set above");
        drop(st);
        for (kind, mut f) in readers {
            let s = Arc::clone(self);
            thread::spawn(move || {
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match f.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => s.output(kind, buf[..n].to_vec()),
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        // EIO: every holder of the terminal's slave side is gone.
                        Err(_) => break,
                    }
                }
                s.reader_done();
            });
        }
        Ok(Some(Started { os_pid }))
    }

    /// Attaches a client to this session; the caller starts a lazy session first.
    pub fn attach_client(self: &Arc<Self>) -> Attachment {
        self.attach()
    }
}

/// Serves an attached connection: `events` go out as frames on `out`, frames read from `input`
/// go to the session. Returns when the client leaves or the session's exit was sent.
pub fn pump(att: Attachment, input: &mut dyn BufRead, out: std::net::TcpStream) {
    let Attachment {
        session,
        client,
        events,
    } = att;
    let guard = Detach {
        session: Arc::clone(&session),
        client,
    };
    let writer_out = match out.try_clone() {
        Ok(o) => o,
        Err(_) => return,
    };
    let writer = thread::spawn(move || {
        let mut w = std::io::BufWriter::new(writer_out);
        while let Ok(ev) = events.recv() {
            let res = match ev {
                Event::Data(kind, data) => data
                    .chunks(frame::MAX_PAYLOAD)
                    .try_for_each(|c| w.write_all(&frame::encode(kind, c))),
                Event::Exit(exit) => {
                    let body = serde_json::to_vec(&exit).expect("exit serializes");
                    let _ = w.write_all(&frame::encode(frame::EXIT, &body));
                    let _ = w.flush();
                    let _ = w.get_ref().shutdown(std::net::Shutdown::Write);
                    return;
                }
            };
            // Flush when nothing else is queued right now: batches floods, keeps echo fast.
            if res.is_err() || w.flush().is_err() {
                let _ = w.get_ref().shutdown(std::net::Shutdown::Both);
                return;
            }
        }
    });
    loop {
        let mut head = [0u8; 5];
        if input.read_exact(&mut head).is_err() {
            break;
        }
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len > frame::MAX_PAYLOAD {
            break;
        }
        let mut payload = vec![0u8; len];
        if input.read_exact(&mut payload).is_err() {
            break;
        }
        match head[0] {
            frame::INPUT => {
                if session.write_input(&payload).is_err() {
                    // The process is gone; keep reading until the client leaves.
                }
            }
            frame::EOF => session.eof(),
            frame::RESIZE if len == 4 => {
                let cols = u16::from_be_bytes([payload[0], payload[1]]);
                let rows = u16::from_be_bytes([payload[2], payload[3]]);
                let _ = session.resize(cols, rows);
            }
            frame::SIGNAL if len == 4 => {
                let sig = i32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                session.signal(sig);
            }
            _ => break,
        }
    }
    drop(guard);
    let _ = out.shutdown(std::net::Shutdown::Both);
    let _ = writer.join();
}

struct Detach {
    session: Arc<Session>,
    client: u64,
}

impl Drop for Detach {
    fn drop(&mut self) {
        self.session.detach(self.client);
    }
}
