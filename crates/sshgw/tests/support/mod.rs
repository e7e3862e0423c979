//! A test [`Backend`] that runs sessions as local processes, and helpers to drive the real
//! OpenSSH client against a gateway on loopback.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sandboxd_sshgw::{Backend, BackendError, Input, Output, SessionIo, SessionKind, Target};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::process::Command;
use tokio::sync::mpsc;

pub const USER: &str = "acc-alice";
pub const PASSWORD: &str = "s3cret-pw";
pub const SFTP_SERVER: &str = "/usr/lib/openssh/sftp-server";

#[derive(Default)]
pub struct LocalBackend {
    pub password_checks: AtomicUsize,
    pub auth_failures: AtomicUsize,
    pub opened: std::sync::Mutex<Vec<SessionKind>>,
    pub revoked: AtomicBool,
}

pub fn target() -> Target {
    Target {
        sandbox: "sb-test".into(),
        principal: "access:alice".into(),
    }
}

#[async_trait::async_trait]
impl Backend for LocalBackend {
    async fn check_password(
        &self,
        user: &str,
        password: &str,
        _peer: SocketAddr,
    ) -> Result<Option<Target>, BackendError> {
        self.password_checks.fetch_add(1, Ordering::SeqCst);
        Ok((user == USER && password == PASSWORD).then(target))
    }

    async fn still_valid(&self, _target: &Target, _user: &str) -> bool {
        !self.revoked.load(Ordering::SeqCst)
    }

    async fn open(&self, _target: &Target, kind: SessionKind) -> Result<SessionIo, BackendError> {
        self.opened.lock().unwrap().push(kind.clone());
        let (program, args, env, pty): (&str, Vec<String>, Vec<(String, String)>, _) = match kind {
            SessionKind::Shell {
                term,
                cols,
                rows,
                env,
            } => ("sh", vec!["-i".into()], env, term.map(|t| (t, cols, rows))),
            SessionKind::Exec { command, pty, env } => ("sh", vec!["-c".into(), command], env, pty),
            SessionKind::Subsystem { name } if name == "sftp" => {
                (SFTP_SERVER, vec![], vec![], None)
            }
            SessionKind::Subsystem { name } => {
                return Err(BackendError::Unavailable(format!("no subsystem {name}")))
            }
        };
        let mut cmd = Command::new(program);
        cmd.args(&args).envs(env).kill_on_drop(true);
        let (input_tx, input_rx) = mpsc::channel(16);
        let (output_tx, output_rx) = mpsc::channel(16);
        match pty {
            None => spawn_piped(cmd, input_rx, output_tx),
            Some((term, cols, rows)) => spawn_pty(cmd, &term, cols, rows, input_rx, output_tx),
        }
        .map_err(|e| BackendError::Internal(Box::new(e)))?;
        Ok(SessionIo {
            input: input_tx,
            output: output_rx,
        })
    }

    fn auth_failed(&self, _user: &str, _peer: SocketAddr, _reason: &str) {
        self.auth_failures.fetch_add(1, Ordering::SeqCst);
    }
}

fn exit_of(status: std::io::Result<ExitStatus>) -> Output {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(s) => Output::Exit {
            code: s.code(),
            signal: s.signal().map(|n| {
                nix::sys::signal::Signal::try_from(n)
                    .map(|s| s.as_str().trim_start_matches("SIG").to_owned())
                    .unwrap_or_else(|_| n.to_string())
            }),
        },
        Err(_) => Output::Exit {
            code: Some(255),
            signal: None,
        },
    }
}

fn signal(pid: Option<u32>, name: &str) {
    let Some(pid) = pid else { return };
    if let Ok(sig) = format!("SIG{name}").parse::<nix::sys::signal::Signal>() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
    }
}

async fn pump_out(
    mut r: impl AsyncRead + Unpin,
    tx: mpsc::Sender<Output>,
    wrap: fn(Vec<u8>) -> Output,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send(wrap(buf[..n].to_vec())).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Drives `child`: input to `stdin`, signals; returns when the gateway dropped the input or
/// the child exited (then the child is reaped by the caller).
async fn pump_in(
    mut stdin: Option<impl AsyncWrite + Unpin>,
    mut input_rx: mpsc::Receiver<Input>,
    pid: Option<u32>,
    resize: impl Fn(u16, u16),
) -> bool {
    while let Some(item) = input_rx.recv().await {
        match item {
            Input::Data(d) => {
                if let Some(w) = stdin.as_mut() {
                    if w.write_all(&d).await.is_err() {
                        stdin = None;
                    }
                }
            }
            Input::Eof => stdin = None,
            Input::Resize { cols, rows } => resize(cols, rows),
            Input::Signal(name) => signal(pid, &name),
        }
    }
    false
}

fn spawn_piped(
    mut cmd: Command,
    input_rx: mpsc::Receiver<Input>,
    output_tx: mpsc::Sender<Output>,
) -> std::io::Result<()> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let stdin = child.stdin.take();
    let out = tokio::spawn(pump_out(
        child.stdout.take().unwrap(),
        output_tx.clone(),
        Output::Stdout,
    ));
    let err = tokio::spawn(pump_out(
        child.stderr.take().unwrap(),
        output_tx.clone(),
        Output::Stderr,
    ));
    let pid = child.id();
    tokio::spawn(async move {
        let status = tokio::select! {
            _ = pump_in(stdin, input_rx, pid, |_, _| {}) => {
                // Channel closed by the client: end the process.
                let _ = child.start_kill();
                child.wait().await
            }
            status = child.wait() => status,
        };
        let _ = out.await;
        let _ = err.await;
        let _ = output_tx.send(exit_of(status)).await;
    });
    Ok(())
}

fn set_size(fd: &OwnedFd, cols: u16, rows: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer, which outlives the call; the fd
    // is an open PTY master.
    unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
}

fn spawn_pty(
    mut cmd: Command,
    term: &str,
    cols: u16,
    rows: u16,
    input_rx: mpsc::Receiver<Input>,
    output_tx: mpsc::Sender<Output>,
) -> std::io::Result<()> {
    let pty = nix::pty::openpty(None, None).map_err(std::io::Error::from)?;
    let master = pty.master;
    let slave = pty.slave;
    set_size(&master, cols, rows);
    cmd.env("TERM", term)
        .stdin(Stdio::from(slave.try_clone()?))
        .stdout(Stdio::from(slave.try_clone()?))
        .stderr(Stdio::from(slave));
    // SAFETY: runs in the forked child before exec and only calls async-signal-safe
    // functions (setsid, ioctl).
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    drop(cmd); // closes our copies of the slave
    let reader = tokio::fs::File::from_std(std::fs::File::from(master.try_clone()?));
    let writer = tokio::fs::File::from_std(std::fs::File::from(master.try_clone()?));
    let out = tokio::spawn(pump_out(reader, output_tx.clone(), Output::Stdout));
    let pid = child.id();
    tokio::spawn(async move {
        let status = tokio::select! {
            _ = pump_in(Some(writer), input_rx, pid, |c, r| set_size(&master, c, r)) => {
                let _ = child.start_kill();
                child.wait().await
            }
            status = child.wait() => status,
        };
        // The master reads EIO once the child and its descendants have closed the slave.
        let _ = tokio::time::timeout(Duration::from_secs(2), out).await;
        let _ = output_tx.send(exit_of(status)).await;
    });
    Ok(())
}

/// A fresh scratch directory.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sshgw-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Common OpenSSH client options: loopback, no config, no host key checks, no agent.
pub fn ssh_opts(port: u16) -> Vec<String> {
    [
        "-F",
        "/dev/null",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "IdentityAgent=none",
        "-o",
        "ConnectTimeout=10",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(["-o".to_string(), format!("Port={port}")])
    .collect()
}

pub fn password_opts() -> Vec<String> {
    [
        "-o",
        "PreferredAuthentications=password",
        "-o",
        "PubkeyAuthentication=no",
        "-o",
        "NumberOfPasswordPrompts=1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

pub struct Run {
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: String,
    pub elapsed: Duration,
}

/// Runs `program args` with `stdin` fed, under a timeout.
pub async fn run(program: &str, args: &[String], stdin: Option<Vec<u8>>) -> Run {
    let start = std::time::Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    if let Some(data) = stdin {
        let mut w = child.stdin.take().unwrap();
        tokio::spawn(async move {
            let _ = w.write_all(&data).await;
        });
    }
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} timed out"))
        .unwrap();
    Run {
        code: out.status.code(),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: start.elapsed(),
    }
}

/// `sshpass -p PASSWORD ssh OPTS USER@127.0.0.1 COMMAND`.
pub async fn ssh_password(
    port: u16,
    user: &str,
    password: &str,
    extra: &[&str],
    command: &str,
    stdin: Option<Vec<u8>>,
) -> Run {
    let mut args = vec!["-p".to_string(), password.to_string(), "ssh".to_string()];
    args.extend(ssh_opts(port));
    args.extend(password_opts());
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(format!("{user}@127.0.0.1"));
    args.push(command.to_string());
    run("sshpass", &args, stdin).await
}

/// Whether the OpenSSH tools are here. Missing tools fail the test unless
/// `SANDBOXD_SKIP_OPENSSH_TESTS=1` is set: CI must install them.
pub fn have_tools() -> bool {
    let ok = ["ssh", "scp", "sftp", "sshpass"]
        .iter()
        .all(|t| which(t).is_some())
        && std::path::Path::new(SFTP_SERVER).exists();
    if !ok {
        let msg = format!(
            "needs ssh, scp, sftp, sshpass and {SFTP_SERVER} \
             (apt-get install openssh-client sshpass openssh-sftp-server)"
        );
        if std::env::var_os("SANDBOXD_SKIP_OPENSSH_TESTS").is_some_and(|v| v == "1") {
            eprintln!("skipping: {msg}");
        } else {
            panic!("{msg}; set SANDBOXD_SKIP_OPENSSH_TESTS=1 to skip");
        }
    }
    ok
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
    })
}

pub fn backend() -> Arc<LocalBackend> {
    Arc::new(LocalBackend::default())
}
