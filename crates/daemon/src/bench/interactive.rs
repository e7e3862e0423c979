//! `sandboxd bench --suite interactive`: what a person or an agent at a terminal feels, each
//! against a baseline measured in the same run. See docs/benchmarks.md, section "Interactive
//! sessions".
//!
//! Setup (not timed): one Debian sandbox (`sb-debian-12-python`) of a daemon started with
//! `--sandbox-domain sbx.localhost --ssh-listen 127.0.0.1:0`, and one raw runsc container of
//! the same template running `sleep`.
//!
//! - **Keystroke echo**: one byte through `GET /v1/pty?program=cat` (a WebSocket) until the
//!   terminal echoes it, against `runsc exec <raw> cat` with plain pipes.
//! - **Interpreter `1+1`**: the code interpreter's `POST /execute` on a keep-alive connection
//!   (Host `<id>.sbx.localhost`), against `python3 -c 'print(1+1)'` through `POST /v1/exec`.
//! - **SSH session setup**: `sshpass -e ssh … <credential>@127.0.0.1 true` through the gateway
//!   (password auth), against OpenSSH's own sshd on loopback (key auth).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest as _;
use tungstenite::{Message, WebSocket};

use super::daemon::{read_json, Daemon};
use super::procs::{self, check_interrupted};
use super::report::{summarize, Row, Target};
use super::{ms, progress, row, BenchArgs, Ctx};

/// Domain for sandbox hosts: `<sandbox-id>.sbx.localhost` is the code interpreter, on any
/// listener of the daemon (the Host header decides).
const SANDBOX_DOMAIN: &str = "sbx.localhost";
/// Rounds per metric that are not counted.
const WARMUP: usize = 2;
/// The longest a single step may take before the bench gives up.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// ssh client options on both sides. The key exchange is pinned to what the gateway (russh)
/// negotiates anyway: OpenSSH 9.2 prefers sntrup761x25519, which costs ~180 ms more per login
/// on this host and would make the baseline measure a different key exchange.
const SSH_OPTS: &[&str] = &[
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "LogLevel=ERROR",
    "-o",
    "KexAlgorithms=curve25519-sha256",
];
const SSHD: &str = "/usr/sbin/sshd";

/// The `serve` flags this suite's daemon needs on top of the default ones.
pub fn daemon_args() -> Vec<String> {
    vec![
        format!("--sandbox-domain={SANDBOX_DOMAIN}"),
        "--ssh-listen=127.0.0.1:0".into(),
    ]
}

/// What the suite hands back to `bench::run` for printing.
pub struct Report {
    pub rows: Vec<Row>,
    pub targets: Vec<Target>,
    pub extra: Value,
}

pub fn measure(
    a: &BenchArgs,
    ctx: &mut Ctx,
    template_dir: &Path,
    agent: &Path,
) -> anyhow::Result<Report> {
    super::start_both(a, ctx, template_dir, agent)?;
    let n = a.runs() as usize;
    let work = ctx.work.clone();
    let errlog = work.join("interactive.err");

    progress("setup: one sandbox and one raw runsc container");
    let d = ctx.daemon.as_mut().expect("daemon");
    let ssh_addr = d
        .ssh_addr
        .clone()
        .context("the daemon did not print `ssh on ADDR` (--ssh-listen)")?;
    let id = d.create("bench-interactive", &ctx.template)?;
    let r = ctx.raw.as_mut().expect("raw");
    let rid = r.prepare()?;
    r.run(&rid)?;
    let d = ctx.daemon.as_ref().expect("daemon");
    // The raw containers' runsc globals (Raw::cmd): `--root=<work>/raw/runsc`.
    let raw_runsc = RawRunsc {
        runsc: ctx.runsc.clone(),
        root: work.join("raw").join("runsc"),
        id: rid,
    };

    // 1: keystroke echo.
    progress(&format!(
        "keystroke echo, {n} keystrokes per side (+{WARMUP} warm-up)"
    ));
    let mut pty = Pty::open(d, &id)?;
    let mut cat = PipeCat::start(&raw_runsc, &work.join("cat.err"))?;
    let (mut key_s, mut key_r) = (Vec::new(), Vec::new());
    for i in 0..(n + WARMUP) {
        check_interrupted()?;
        let c = b'a' + (i % 26) as u8;
        let (s, r) = if i % 2 == 0 {
            (pty.keystroke(c)?, cat.roundtrip(c)?)
        } else {
            let r = cat.roundtrip(c)?;
            (pty.keystroke(c)?, r)
        };
        if i >= WARMUP {
            key_s.push(ms(s));
            key_r.push(ms(r));
        }
    }
    pty.close();
    drop(cat);

    // 2: interpreter 1+1.
    progress(&format!(
        "interpreter 1+1, {n} cells and {n} python3 execs (+{WARMUP} warm-up)"
    ));
    let interp = Interpreter::new(d, &id)?;
    let exec = ExecPython::new(d, &id);
    let (mut int_s, mut int_r) = (Vec::new(), Vec::new());
    for i in 0..(n + WARMUP) {
        check_interrupted()?;
        let (s, r) = if i % 2 == 0 {
            (interp.one_plus_one()?, exec.run()?)
        } else {
            let r = exec.run()?;
            (interp.one_plus_one()?, r)
        };
        if i >= WARMUP {
            int_s.push(ms(s));
            int_r.push(ms(r));
        }
    }

    // 3: SSH session setup.
    progress(&format!(
        "ssh session setup, {n} logins per side (+{WARMUP} warm-up)"
    ));
    let cred = ssh_access(d, &id)?;
    let sshd = Sshd::start(&work.join("sshd"))?;
    let gw_port = ssh_addr
        .rsplit_once(':')
        .map(|(_, p)| p.to_string())
        .context("ssh address without a port")?;
    let (mut ssh_s, mut ssh_r) = (Vec::new(), Vec::new());
    for i in 0..(n + WARMUP) {
        check_interrupted()?;
        let (s, r) = if i % 2 == 0 {
            (cred.ssh_true(&gw_port, &errlog)?, sshd.ssh_true(&errlog)?)
        } else {
            let r = sshd.ssh_true(&errlog)?;
            (cred.ssh_true(&gw_port, &errlog)?, r)
        };
        if i >= WARMUP {
            ssh_s.push(ms(s));
            ssh_r.push(ms(r));
        }
    }
    drop(sshd);

    let rows = vec![
        row(
            "pty_keystroke_echo",
            "pty keystroke echo (WebSocket /v1/pty, cat in a tty)",
            "ms",
            summarize(&key_s),
            "runsc exec cat over pipes (runsc's own stdio forwarding)",
            summarize(&key_r),
        ),
        row(
            "interpreter_1plus1",
            "interpreter 1+1 (POST /execute, keep-alive)",
            "ms",
            summarize(&int_s),
            "python3 -c 'print(1+1)' via POST /v1/exec (keep-alive): what the interpreter replaces",
            summarize(&int_r),
        ),
        row(
            "ssh_session_setup",
            "ssh login + `true` via the gateway (password, sshpass)",
            "ms",
            summarize(&ssh_s),
            "OpenSSH sshd on loopback, key auth: ssh root@127.0.0.1 true",
            summarize(&ssh_r),
        ),
    ];
    let interp_row = &rows[1];
    let targets = vec![Target {
        key: "interpreter_1plus1_median_le_5ms",
        text: "interpreter 1+1 median <= 5 ms".into(),
        value: format!(
            "{:.1} ms (python3 -c via /v1/exec: {:.1} ms)",
            interp_row.sandboxd.median, interp_row.runsc.median
        ),
        met: interp_row.sandboxd.median <= 5.0,
    }];
    let extra = json!({
        "daemon_extra_args": daemon_args(),
        "pty": "GET /v1/pty?program=cat&cols=80&rows=24; one byte up (binary frame) until its tty echo comes back; then CR, and cat's line is read (not timed)",
        "interpreter": "POST /execute {\"code\":\"1+1\",\"context_id\"} with Host <id>.sbx.localhost on 127.0.0.1, one context, keep-alive; items[0].text == \"2\" checked",
        "exec_baseline": "POST /v1/exec {\"command\":\"python3\",\"args\":[\"-c\",\"print(1+1)\"]} until the exit frame, keep-alive; stdout \"2\\n\" checked",
        "ssh_gateway": format!("sshpass -e ssh {} -o PreferredAuthentications=password -p PORT <credential-id>@127.0.0.1 true", SSH_OPTS.join(" ")),
        "ssh_baseline": format!("ssh -i KEY {} -o IdentitiesOnly=yes -o PreferredAuthentications=publickey -p PORT root@127.0.0.1 true, against /usr/sbin/sshd -D -e -f CFG (UsePAM no, SetEnv SHLVL=1 so that bash -c skips root's ~/.bashrc)", SSH_OPTS.join(" ")),
        "warmup_rounds": WARMUP,
    });
    Ok(Report {
        rows,
        targets,
        extra,
    })
}

/// A terminal running `cat` in the sandbox, over the data plane's WebSocket.
struct Pty {
    ws: WebSocket<TcpStream>,
}

impl Pty {
    fn open(d: &Daemon, id: &str) -> anyhow::Result<Pty> {
        let hostport = d
            .url()
            .strip_prefix("http://")
            .context("daemon URL is not http://")?;
        let mut req =
            format!("ws://{hostport}/v1/pty?program=cat&cols=80&rows=24").into_client_request()?;
        req.headers_mut().insert("Authorization", d.auth().parse()?);
        req.headers_mut().insert("X-Sandbox-Id", id.parse()?);
        let stream = TcpStream::connect(hostport)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(STEP_TIMEOUT))?;
        let (mut ws, _) = tungstenite::client(req, stream)
            .map_err(|e| anyhow!("pty: WebSocket handshake: {e}"))?;
        match ws.read()? {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(t.as_str())
                    .with_context(|| format!("pty: first frame {t:?}"))?;
                if v["type"] != "session" {
                    bail!("pty: expected the session frame, got {v}");
                }
            }
            m => bail!("pty: expected the session frame, got {m:?}"),
        }
        Ok(Pty { ws })
    }

    /// Appends terminal output to `buf` until `done(buf)`.
    fn read_until(
        &mut self,
        buf: &mut Vec<u8>,
        done: impl Fn(&[u8]) -> bool,
    ) -> anyhow::Result<()> {
        while !done(buf) {
            match self.ws.read().context("pty: read")? {
                Message::Binary(b) => buf.extend_from_slice(&b),
                Message::Text(t) => bail!("pty: unexpected frame {t}"),
                Message::Close(c) => bail!("pty: closed by the server: {c:?}"),
                _ => {}
            }
        }
        Ok(())
    }

    /// Types `c`; returns the time until the terminal's echo of it arrived. Then ends the line
    /// and reads what `cat` prints (not timed), so that every keystroke starts on an empty line.
    fn keystroke(&mut self, c: u8) -> anyhow::Result<Duration> {
        let mut buf = Vec::new();
        let t = Instant::now();
        self.ws.send(Message::binary(vec![c]))?;
        self.read_until(&mut buf, |b| !b.is_empty())?;
        let took = t.elapsed();
        if buf[0] != c {
            bail!(
                "pty: expected the echo of {:?}, got {:?}",
                c as char,
                String::from_utf8_lossy(&buf)
            );
        }
        // The echo of CR is CR LF; cat then prints the line, `c` CR LF.
        self.ws.send(Message::binary(b"\r".to_vec()))?;
        let tail = [b'\r', b'\n', c, b'\r', b'\n'];
        self.read_until(&mut buf, |b| b.ends_with(&tail))?;
        Ok(took)
    }

    /// Sends end of input (cat exits) and closes the socket; errors do not matter here.
    fn close(mut self) {
        let _ = self
            .ws
            .send(Message::text(json!({"type": "eof"}).to_string()));
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match self.ws.read() {
                Ok(Message::Text(t)) if t.as_str().contains("\"exit\"") => break,
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let _ = self.ws.close(None);
        let _ = self.ws.flush();
    }
}

/// How to run runsc against the raw container (the flags of `Raw::cmd`).
struct RawRunsc {
    runsc: PathBuf,
    root: PathBuf,
    id: String,
}

/// `runsc exec <raw> /bin/cat` with stdin and stdout as pipes. Dropping it closes stdin (cat
/// exits) and waits for runsc, killing it after a few seconds.
struct PipeCat {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: ChildStdout,
}

impl PipeCat {
    fn start(r: &RawRunsc, errlog: &Path) -> anyhow::Result<PipeCat> {
        let err = std::fs::File::create(errlog)?;
        let mut c = Command::new(&r.runsc);
        c.arg(format!("--root={}", r.root.display()))
            .args(["--platform=systrap", "--network=none", "--overlay2=none"])
            .args(["exec", &r.id, "/bin/cat"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(err);
        let mut child = procs::spawn(&mut c)?;
        let stdin = child.stdin.take().context("cat stdin")?;
        let stdout = child.stdout.take().context("cat stdout")?;
        Ok(PipeCat {
            child,
            stdin: Some(stdin),
            stdout,
        })
    }

    /// Writes `c`; returns the time until cat wrote it back.
    fn roundtrip(&mut self, c: u8) -> anyhow::Result<Duration> {
        let stdin = self.stdin.as_mut().context("cat stdin closed")?;
        let t = Instant::now();
        stdin.write_all(&[c])?;
        wait_readable(&self.stdout, STEP_TIMEOUT).context("runsc exec cat")?;
        let mut b = [0u8; 1];
        self.stdout
            .read_exact(&mut b)
            .context("runsc exec cat: read")?;
        let took = t.elapsed();
        if b[0] != c {
            bail!(
                "runsc exec cat: wrote {:?}, read {:?}",
                c as char,
                b[0] as char
            );
        }
        Ok(took)
    }
}

impl Drop for PipeCat {
    fn drop(&mut self) {
        self.stdin.take();
        procs::wait(&self.child, Duration::from_secs(10));
    }
}

/// Waits until `fd` has data (or EOF), failing after `timeout`.
fn wait_readable(fd: &impl AsRawFd, timeout: Duration) -> anyhow::Result<()> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    loop {
        // SAFETY: `p` is one valid pollfd that outlives the call; the count is 1.
        let r = unsafe { libc::poll(&mut p, 1, ms) };
        if r > 0 {
            return Ok(());
        }
        if r == 0 {
            bail!("no output within {} s", timeout.as_secs());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e.into());
        }
    }
}

/// The sandbox's code interpreter: one context, one keep-alive connection.
struct Interpreter {
    http: ureq::Agent,
    base: String,
    host: String,
    auth: String,
    context: String,
}

impl Interpreter {
    fn new(d: &Daemon, id: &str) -> anyhow::Result<Interpreter> {
        let mut i = Interpreter {
            http: ureq::AgentBuilder::new().timeout(STEP_TIMEOUT).build(),
            base: d.url().to_string(),
            host: format!("{id}.{SANDBOX_DOMAIN}"),
            auth: d.auth(),
            context: String::new(),
        };
        let (status, body) = read_json(i.post("contexts").send_json(json!({})))?;
        if status != 201 {
            bail!("interpreter: POST /contexts: HTTP {status}: {body}");
        }
        i.context = body["id"]
            .as_str()
            .context("interpreter: context without an id")?
            .to_string();
        Ok(i)
    }

    fn post(&self, path: &str) -> ureq::Request {
        // ureq 2 sends an explicitly set Host header as is (and pools by the URL's host).
        self.http
            .post(&format!("{}/{path}", self.base))
            .set("Host", &self.host)
            .set("Authorization", &self.auth)
    }

    /// `POST /execute {"code":"1+1"}` until the whole JSON answer is read; checks it says 2.
    fn one_plus_one(&self) -> anyhow::Result<Duration> {
        let t = Instant::now();
        let r = self
            .post("execute")
            .send_json(json!({"code": "1+1", "context_id": self.context}));
        let (status, body) = read_json(r)?;
        let took = t.elapsed();
        if status != 200 || body["items"][0]["text"] != "2" {
            bail!("interpreter: POST /execute 1+1: HTTP {status}: {body}");
        }
        Ok(took)
    }
}

/// `python3 -c 'print(1+1)'` through the data plane's exec, on a keep-alive connection.
struct ExecPython {
    http: ureq::Agent,
    url: String,
    auth: String,
    id: String,
}

impl ExecPython {
    fn new(d: &Daemon, id: &str) -> ExecPython {
        ExecPython {
            http: ureq::AgentBuilder::new().timeout(STEP_TIMEOUT).build(),
            url: format!("{}/v1/exec", d.url()),
            auth: d.auth(),
            id: id.to_string(),
        }
    }

    /// Until the exit frame; checks exit code 0 and stdout `2\n`.
    fn run(&self) -> anyhow::Result<Duration> {
        use base64::Engine as _;
        let t = Instant::now();
        let r = self
            .http
            .post(&self.url)
            .set("Authorization", &self.auth)
            .set("X-Sandbox-Id", &self.id)
            .send_json(json!({"command": "python3", "args": ["-c", "print(1+1)"]}));
        let resp = match r {
            Ok(r) => r,
            Err(ureq::Error::Status(s, r)) => {
                bail!(
                    "exec python3: HTTP {s}: {}",
                    r.into_string().unwrap_or_default()
                )
            }
            Err(e) => bail!("exec python3: {e}"),
        };
        let mut reader = BufReader::new(resp.into_reader());
        let mut out = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                bail!("exec python3: stream ended without an exit frame");
            }
            if line.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(line.trim())
                .with_context(|| format!("exec frame {line:?}"))?;
            match v["type"].as_str() {
                Some("stdout") => out.extend(
                    base64::engine::general_purpose::STANDARD
                        .decode(v["data"].as_str().unwrap_or_default())?,
                ),
                Some("exit") => {
                    let took = t.elapsed();
                    if v["exit_code"] != 0 || out != b"2\n" {
                        bail!(
                            "exec python3: {v}, stdout {:?}",
                            String::from_utf8_lossy(&out)
                        );
                    }
                    // Drain the rest so the connection goes back to the pool.
                    let _ = std::io::copy(&mut reader, &mut std::io::sink());
                    return Ok(took);
                }
                Some("error") => bail!("exec python3: {v}"),
                _ => {}
            }
        }
    }
}

/// A Leap0 SSH credential (user = its id).
struct SshCredential {
    user: String,
    password: String,
}

/// `POST /v1/sandbox/{id}/ssh/access`.
fn ssh_access(d: &Daemon, id: &str) -> anyhow::Result<SshCredential> {
    let r = ureq::AgentBuilder::new()
        .timeout(STEP_TIMEOUT)
        .build()
        .post(&format!("{}/v1/sandbox/{id}/ssh/access", d.url()))
        .set("Authorization", &d.auth())
        .call();
    let (status, body) = read_json(r)?;
    if status != 201 {
        bail!("POST ssh/access: HTTP {status}: {body}");
    }
    Ok(SshCredential {
        user: body["id"]
            .as_str()
            .context("ssh/access: no id")?
            .to_string(),
        password: body["password"]
            .as_str()
            .context("ssh/access: no password")?
            .to_string(),
    })
}

impl SshCredential {
    /// `sshpass -e ssh … -p PORT <user>@127.0.0.1 true` to completion.
    fn ssh_true(&self, port: &str, errlog: &Path) -> anyhow::Result<Duration> {
        let mut c = Command::new("sshpass");
        c.arg("-e")
            .arg("ssh")
            .args(SSH_OPTS)
            .args(["-o", "PreferredAuthentications=password"])
            .args(["-p", port])
            .arg(format!("{}@127.0.0.1", self.user))
            .arg("true")
            .env("SSHPASS", &self.password);
        let t = Instant::now();
        procs::run_quiet("ssh through the gateway", &mut c, errlog)?;
        Ok(t.elapsed())
    }
}

/// OpenSSH's sshd on a free loopback port, with a temporary host key and one authorized client
/// key. Dropping it stops sshd.
struct Sshd {
    child: Option<Child>,
    port: u16,
    client_key: PathBuf,
}

impl Sshd {
    fn start(dir: &Path) -> anyhow::Result<Sshd> {
        if !Path::new(SSHD).is_file() {
            bail!(
                "{SSHD} is missing (apt-get install -y --no-install-recommends openssh-server; \
                 then make sure no system sshd was started)"
            );
        }
        std::fs::create_dir_all(dir)?;
        let errlog = dir.join("keygen.err");
        let host_key = dir.join("host_key");
        let client_key = dir.join("client_key");
        for k in [&host_key, &client_key] {
            procs::run_quiet(
                "ssh-keygen",
                Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                    .arg(k),
                &errlog,
            )?;
        }
        let authorized = dir.join("authorized_keys");
        std::fs::copy(client_key.with_extension("pub"), &authorized)?;
        // `SetEnv SHLVL=1`: Debian's bash sources ~/.bashrc when run by sshd as a top-level
        // shell; this host's root .bashrc (pyenv init, ~150 ms) is not sshd's cost. The gateway
        // side runs `/bin/sh -c true`, with no rc file either.
        // sshd's privilege separation directory (the package creates it at boot only).
        std::fs::create_dir_all("/run/sshd")?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let cfg = dir.join("sshd_config");
        std::fs::write(
            &cfg,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPermitRootLogin prohibit-password\n\
                 AuthorizedKeysFile {}\nPidFile none\nUsePAM no\nStrictModes no\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nSetEnv SHLVL=1\n",
                host_key.display(),
                authorized.display()
            ),
        )?;
        let log = std::fs::File::create(dir.join("sshd.log"))?;
        let mut c = Command::new(SSHD);
        c.args(["-D", "-e", "-f"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let sshd = Sshd {
            child: Some(procs::spawn(&mut c)?),
            port,
            client_key,
        };
        // Up when it sends its banner.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                let mut b = [0u8; 4];
                if s.read_exact(&mut b).is_ok() && &b == b"SSH-" {
                    return Ok(sshd);
                }
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default();
                bail!("sshd did not come up on 127.0.0.1:{port}: {}", log.trim());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `ssh -i KEY … -p PORT root@127.0.0.1 true` to completion.
    fn ssh_true(&self, errlog: &Path) -> anyhow::Result<Duration> {
        let mut c = Command::new("ssh");
        c.arg("-i")
            .arg(&self.client_key)
            .args(SSH_OPTS)
            .args([
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "PreferredAuthentications=publickey",
            ])
            .args(["-o", "BatchMode=yes", "-p", &self.port.to_string()])
            .args(["root@127.0.0.1", "true"]);
        let t = Instant::now();
        procs::run_quiet("ssh to the loopback sshd", &mut c, errlog)?;
        Ok(t.elapsed())
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        if let Some(c) = self.child.take() {
            procs::terminate(&c, Duration::from_secs(5));
        }
    }
}
