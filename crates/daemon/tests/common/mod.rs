//! Black-box harness: starts the real `sandboxd` on port 0 with a fresh data dir and talks to
//! it over HTTP. Needs root, runsc, the templates and the static agent (`scripts/build`).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

/// Octets handed out so far; the first is `SANDBOXD_TEST_OCTET_BASE` (default 240), so two test
/// runs on one host can use disjoint subnets.
static NEXT_OCTET: AtomicU8 = AtomicU8::new(0);

fn next_octet() -> u8 {
    let base: u8 = std::env::var("SANDBOXD_TEST_OCTET_BASE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(240);
    base.wrapping_add(NEXT_OCTET.fetch_add(1, Ordering::SeqCst))
}

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

pub fn agent_binary() -> PathBuf {
    let p = std::env::var("SANDBOXD_TEST_AGENT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace().join("target/release/sandboxd-agent"));
    assert!(
        p.is_file(),
        "static agent missing at {} (run scripts/build)",
        p.display()
    );
    p
}

pub fn templates_dir() -> PathBuf {
    let p = std::env::var("SANDBOXD_TEST_TEMPLATES")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("/var/lib/sandboxd/templates"));
    for t in ["sb-busybox", "sb-debian-12-python"] {
        assert!(
            p.join(t).join(".sbx-template-ok").is_file(),
            "template {t} missing under {} (run scripts/build-templates)",
            p.display()
        );
    }
    p
}

/// A Python HTTP server of `/srv` on port 8000 (argv for `python3`). Not `python3 -m
/// http.server`: its bind looks up the host's FQDN, which waits for DNS first.
#[allow(dead_code)]
pub const HTTP_SERVER: [&str; 2] = [
    "-c",
    "import functools, http.server as h, socketserver as s\ns.ThreadingTCPServer.allow_reuse_address = True\ns.ThreadingTCPServer(('0.0.0.0', 8000), functools.partial(h.SimpleHTTPRequestHandler, directory='/srv')).serve_forever()",
];

/// Runs `setup` (a shell line, e.g. writing files under /srv) in the sandbox, then starts
/// [`HTTP_SERVER`] there in the background.
#[allow(dead_code)]
pub fn serve_srv(d: &Daemon, id: &str, setup: &str) {
    let (exit, out, err) = d.exec(id, "sh", &["-c", setup]);
    assert_eq!(exit["exit_code"], 0, "{setup}: {out}{err}");
    let r = dp(
        &d.url,
        &d.key,
        id,
        "/v1/processes/start",
        serde_json::json!({"program": "python3", "args": HTTP_SERVER}),
    );
    assert_eq!(r.status, 200, "{}", r.raw);
}

/// [`get_public`] until it answers 200 (the server may still be starting), for up to 10 s;
/// returns the last answer.
#[allow(dead_code)]
pub fn get_public_ok(url: &str) -> (u16, String) {
    let mut got = (0, String::new());
    for _ in 0..50 {
        got = get_public(url);
        if got.0 == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    got
}

/// GET without any key (preview URLs are public); returns (status, body).
#[allow(dead_code)]
pub fn get_public(url: &str) -> (u16, String) {
    match agent().get(url).call() {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(s, r)) => (s, r.into_string().unwrap_or_default()),
        Err(e) => panic!("GET {url}: {e}"),
    }
}

/// A Python process counting in memory: `n` lives only in the process, a file mirrors it.
#[allow(dead_code)]
pub const COUNTER: &str = "import time\nn = 0\nwhile True:\n    n += 1\n    open('/workspace/n', 'w').write(str(n))\n    time.sleep(0.05)\n";

pub struct Daemon {
    pub child: Option<Child>,
    pub data_dir: PathBuf,
    pub url: String,
    pub key: String,
    pub octet: u8,
    extra: Vec<String>,
    /// Extra environment for the next `spawn` (e.g. `SANDBOXD_FAULT`).
    pub env: Vec<(String, String)>,
}

impl Daemon {
    pub fn start() -> Daemon {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Daemon {
        let octet = next_octet();
        let data_dir =
            std::env::temp_dir().join(format!("sandboxd-test-{}-{octet}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data_dir);
        std::fs::create_dir_all(&data_dir).unwrap();
        let mut d = Daemon {
            child: None,
            data_dir,
            url: String::new(),
            key: String::new(),
            octet,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
        };
        d.spawn();
        d.key = std::fs::read_to_string(d.data_dir.join("admin.key"))
            .unwrap()
            .trim()
            .to_string();
        d
    }

    /// Starts (or restarts) the server process on the same data dir.
    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.join("daemon.log"))
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_sandboxd"))
            .arg("serve")
            .arg("--listen=127.0.0.1:0")
            .arg(format!("--data-dir={}", self.data_dir.display()))
            .arg(format!("--templates-dir={}", templates_dir().display()))
            .arg(format!("--agent-binary={}", agent_binary().display()))
            .arg(format!("--subnet-octet={}", self.octet))
            .arg("--no-template-build")
            // Test runs own their octets: veths an interrupted earlier run left behind go.
            .arg("--reclaim-subnet")
            // Test sandboxes may reach only the addresses of this daemon's test namespaces
            // (tests/egress.rs builds its "internet" in 198.18.<octet>.0/24).
            .arg(format!("--egress-ceiling=198.18.{}.0/24", self.octet))
            .args(
                self.extra
                    .iter()
                    .map(|a| a.replace("{octet}", &self.octet.to_string())),
            )
            .env("SANDBOXD_LOG", "info")
            .env_remove("SANDBOXD_ADMIN_KEY")
            .env_remove("SANDBOXD_FAULT")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start sandboxd");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.to_string());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("daemon did not start; log:\n{}", self.log()));
        self.url = format!("http://{addr}");
        self.child = Some(child);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("daemon.log")).unwrap_or_default()
    }

    /// Waits up to `limit` for the server process to exit on its own; true if it did.
    pub fn wait_exit(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while let Some(c) = self.child.as_mut() {
            if c.try_wait().unwrap().is_some() {
                self.child = None;
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub fn create_key(&self, org: &str, project: Option<&str>) -> String {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sandboxd"));
        cmd.args(["keys", "create", "--org", org])
            .arg(format!("--data-dir={}", self.data_dir.display()));
        if let Some(p) = project {
            cmd.args(["--project", p]);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// The NeevCloud project URL of default/default.
    pub fn project_url(&self) -> String {
        format!("{}/api/v1beta1/orgs/default/projects/default", self.url)
    }

    /// The in-memory count of a [`COUNTER`] process, read from the file it mirrors (which it
    /// truncates and rewrites: an empty read is retried, for up to 10 s while it starts).
    pub fn read_counter(&self, id: &str) -> u64 {
        let mut last = (String::new(), String::new());
        for _ in 0..200 {
            let (_, out, err) = self.exec(id, "cat /workspace/n", &[]);
            if let Ok(n) = out.trim().parse() {
                return n;
            }
            last = (out, err);
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("counter in {id}: {last:?}")
    }

    pub fn sandboxes_url(&self, org: &str, project: &str) -> String {
        format!(
            "{}/api/v1beta1/orgs/{org}/projects/{project}/sandboxes",
            self.url
        )
    }

    /// Creates a sandbox in default/default and returns its record.
    pub fn create(&self, body: Value) -> Value {
        let r = call(
            &self.key,
            "POST",
            &self.sandboxes_url("default", "default"),
            Some(body),
        );
        assert_eq!(r.status, 201, "create: {}\n{}", r.body, self.log());
        assert_eq!(r.body["phase"], "Ready", "{}", r.body);
        r.body
    }

    pub fn delete(&self, id: &str) -> Resp {
        call(
            &self.key,
            "DELETE",
            &format!("{}/{id}", self.sandboxes_url("default", "default")),
            None,
        )
    }

    /// Runs a command through the data plane; returns (exit frame, stdout, stderr).
    pub fn exec(&self, id: &str, command: &str, args: &[&str]) -> (Value, String, String) {
        exec_as(&self.url, &self.key, id, command, args)
    }

    /// Every host object of this daemon's sandboxes: mounts under the data dir, netns and
    /// cgroups named after sandboxes, sandbox directories.
    pub fn host_objects(&self, ids: &[&str]) -> Vec<String> {
        let mut found = Vec::new();
        let dd = self.data_dir.display().to_string();
        for l in std::fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .lines()
        {
            if l.split(' ')
                .nth(1)
                .is_some_and(|m| m.starts_with(&dd) && ids.iter().any(|id| m.contains(id)))
            {
                found.push(format!("mount {l}"));
            }
        }
        for id in ids {
            let short: String = id.chars().filter(|c| *c != '-').take(12).collect();
            for p in [
                format!("/var/run/netns/sbx-{short}"),
                format!("/sys/fs/cgroup/memory/sandboxd/{short}"),
                format!("/sys/fs/cgroup/pids/sandboxd/{short}"),
                format!("/sys/class/net/s-{short}"),
                format!("{dd}/sandboxes/{id}"),
                format!("{dd}/vol/{id}"),
            ] {
                if Path::new(&p).exists() {
                    found.push(p);
                }
            }
        }
        found
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Delete whatever sandboxes are left, then stop.
        if self.child.is_some() {
            let list = call(
                &self.key,
                "GET",
                &format!("{}?limit=100", self.sandboxes_url("default", "default")),
                None,
            );
            if let Some(items) = list.body["items"].as_array() {
                for sb in items {
                    let _ = self.delete(sb["id"].as_str().unwrap_or_default());
                }
            }
        }
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub body: Value,
    pub raw: String,
}

pub fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(120))
        .build()
}

fn finish(r: Result<ureq::Response, ureq::Error>) -> Resp {
    let resp = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("transport error: {e}"),
    };
    let status = resp.status();
    let raw = resp.into_string().unwrap_or_default();
    let body = serde_json::from_str(&raw).unwrap_or(Value::Null);
    Resp { status, body, raw }
}

/// Like [`call`], but a transport error (the server died mid-request) is an `Err`.
pub fn try_call(key: &str, method: &str, url: &str, body: Option<Value>) -> Result<Resp, String> {
    let req = agent()
        .request(method, url)
        .set("Authorization", &format!("Bearer {key}"));
    match match body {
        Some(b) => req.send_json(b),
        None => req.call(),
    } {
        Err(ureq::Error::Transport(t)) => Err(t.to_string()),
        other => Ok(finish(other)),
    }
}

pub fn call(key: &str, method: &str, url: &str, body: Option<Value>) -> Resp {
    let req = agent()
        .request(method, url)
        .set("Authorization", &format!("Bearer {key}"));
    finish(match body {
        Some(b) => req.send_json(b),
        None => req.call(),
    })
}

/// Sends raw bytes (for malformed-input tests).
pub fn call_raw(key: Option<&str>, method: &str, url: &str, body: &[u8]) -> Resp {
    let mut req = agent()
        .request(method, url)
        .set("Content-Type", "application/json");
    if let Some(k) = key {
        req = req.set("Authorization", &format!("Bearer {k}"));
    }
    finish(req.send_bytes(body))
}

pub fn dp(url: &str, key: &str, id: &str, path: &str, body: Value) -> Resp {
    finish(
        agent()
            .post(&format!("{url}{path}"))
            .set("Authorization", &format!("Bearer {key}"))
            .set("X-Sandbox-Id", id)
            .send_json(body),
    )
}

pub fn exec_as(
    url: &str,
    key: &str,
    id: &str,
    command: &str,
    args: &[&str],
) -> (Value, String, String) {
    let r = dp(
        url,
        key,
        id,
        "/v1/exec",
        json!({"command": command, "args": args, "cwd": null, "env": null, "timeout_ms": null, "stdin": null}),
    );
    assert_eq!(r.status, 200, "exec: {}", r.raw);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut exit = Value::Null;
    let b64 = base64::engine::general_purpose::STANDARD;
    for line in r.raw.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).unwrap();
        match v["type"].as_str().unwrap() {
            "stdout" => out.extend(b64.decode(v["data"].as_str().unwrap()).unwrap()),
            "stderr" => err.extend(b64.decode(v["data"].as_str().unwrap()).unwrap()),
            _ => exit = v,
        }
    }
    (
        exit,
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}
