//! The daemon under test: a `sandboxd serve` child on 127.0.0.1:0 with its own data dir, and
//! the HTTP calls the bench times (create, exec, delete). It remembers every sandbox it created
//! so that [`Daemon::shutdown`] can delete them, even after an error.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::procs;

pub struct DaemonOpts<'a> {
    pub data_dir: &'a Path,
    pub templates_dir: &'a Path,
    pub agent_binary: &'a Path,
    pub runsc: &'a Path,
    pub subnet_octet: u8,
    /// More `serve` flags (e.g. `--ssh-listen=127.0.0.1:0`); empty for the default daemon.
    pub extra_args: &'a [String],
}

pub struct Daemon {
    child: Option<Child>,
    pub data_dir: PathBuf,
    url: String,
    key: String,
    /// The SSH gateway's address (`ssh on ADDR`), when started with `--ssh-listen`.
    pub ssh_addr: Option<String>,
    http: ureq::Agent,
    /// Sandboxes created and not (known to be) deleted yet.
    live: BTreeSet<String>,
    /// Snapshots created and not (known to be) deleted yet.
    snaps: BTreeSet<String>,
}

/// The 12-hex-char name a sandbox's host objects carry (netns `sbx-<short>`, cgroup).
pub use sandboxd_runtime::gvisor::short_of;

impl Daemon {
    pub fn start(o: &DaemonOpts) -> anyhow::Result<Daemon> {
        std::fs::create_dir_all(o.data_dir)?;
        let log_path = o.data_dir.join("daemon.log");
        let log = std::fs::File::create(&log_path)?;
        let exe = std::env::current_exe().context("current_exe")?;
        let mut cmd = Command::new(exe);
        cmd.arg("serve")
            .arg("--listen=127.0.0.1:0")
            .arg(format!("--data-dir={}", o.data_dir.display()))
            .arg(format!("--templates-dir={}", o.templates_dir.display()))
            .arg(format!("--agent-binary={}", o.agent_binary.display()))
            .arg(format!("--runsc={}", o.runsc.display()))
            .arg(format!("--subnet-octet={}", o.subnet_octet))
            .arg("--no-template-build")
            .arg("--reclaim-subnet")
            .args(o.extra_args)
            .env_remove("SANDBOXD_ADMIN_KEY")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        let mut child = procs::spawn(&mut cmd)?;
        let stdout = child.stdout.take().context("daemon stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // `ssh on ADDR` (with --ssh-listen) comes before `listening on ADDR`.
                if let Some(addr) = line.strip_prefix("ssh on ") {
                    let _ = tx.send((false, addr.to_string()));
                } else if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send((true, addr.to_string()));
                }
            }
        });
        let mut d = Daemon {
            child: Some(child),
            data_dir: o.data_dir.to_path_buf(),
            url: String::new(),
            key: String::new(),
            ssh_addr: None,
            http: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(120))
                .build(),
            live: BTreeSet::new(),
            snaps: BTreeSet::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok((true, addr)) => {
                    d.url = format!("http://{addr}");
                    break;
                }
                Ok((false, addr)) => d.ssh_addr = Some(addr),
                Err(_) => {
                    d.stop();
                    bail!("the daemon did not start; log:\n{}", d.log_tail(40));
                }
            }
        }
        d.key = std::fs::read_to_string(o.data_dir.join("admin.key"))
            .context("read admin.key")?
            .trim()
            .to_string();
        Ok(d)
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.data_dir.join("daemon.log")).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn sandboxes_url(&self) -> String {
        format!(
            "{}/api/v1beta1/orgs/default/projects/default/sandboxes",
            self.url
        )
    }

    /// `Authorization` header value.
    pub fn auth(&self) -> String {
        format!("Bearer {}", self.key)
    }

    /// `http://127.0.0.1:PORT`, the API and data plane.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// POST create; returns the sandbox id once the 201 (phase Ready) has been read.
    pub fn create(&mut self, name: &str, template: &str) -> anyhow::Result<String> {
        let r = self
            .http
            .post(&self.sandboxes_url())
            .set("Authorization", &self.auth())
            .send_json(json!({"name": name, "sandbox_template_id": template}));
        let (status, body) = read_json(r)?;
        if let Some(id) = body["id"].as_str() {
            self.live.insert(id.to_string());
        }
        if status != 201 || body["phase"] != "Ready" {
            bail!("create {name}: HTTP {status}: {body}");
        }
        Ok(body["id"].as_str().context("create: no id")?.to_string())
    }

    /// Runs `/bin/true x` (argv form, no shell) through the data plane. Returns the instant
    /// the exit frame arrived; fails unless it says exit code 0. With `fresh`, the request
    /// goes over a new TCP connection instead of the pooled keep-alive one.
    pub fn exec_true(&self, id: &str, fresh: bool) -> anyhow::Result<Instant> {
        let fresh_agent;
        let http = if fresh {
            fresh_agent = ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(120))
                .max_idle_connections(0)
                .build();
            &fresh_agent
        } else {
            &self.http
        };
        let r = http
            .post(&format!("{}/v1/exec", self.url))
            .set("Authorization", &self.auth())
            .set("X-Sandbox-Id", id)
            .send_json(json!({"command": "/bin/true", "args": ["x"]}));
        let resp = match r {
            Ok(r) => r,
            Err(ureq::Error::Status(s, r)) => {
                bail!("exec: HTTP {s}: {}", r.into_string().unwrap_or_default())
            }
            Err(e) => bail!("exec: {e}"),
        };
        let mut reader = BufReader::new(resp.into_reader());
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                bail!("exec: stream ended without an exit frame");
            }
            if line.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(line.trim())
                .with_context(|| format!("exec frame {line:?}"))?;
            if v["type"] == "exit" {
                let at = Instant::now();
                if v["exit_code"] != 0 {
                    bail!("exec: {v}");
                }
                // Drain the rest so the connection goes back to the pool.
                let _ = std::io::copy(&mut reader, &mut std::io::sink());
                return Ok(at);
            }
            if v["type"] == "error" {
                bail!("exec: {v}");
            }
        }
    }

    /// DELETE; returns how long the call took (until the 204).
    pub fn delete(&mut self, id: &str) -> anyhow::Result<Duration> {
        let t = Instant::now();
        let r = self
            .http
            .delete(&format!("{}/{id}", self.sandboxes_url()))
            .set("Authorization", &self.auth())
            .call();
        let (status, body) = read_json(r)?;
        let took = t.elapsed();
        if status == 204 || status == 404 {
            self.live.remove(id);
        }
        if status != 204 {
            bail!("delete {id}: HTTP {status}: {body}");
        }
        Ok(took)
    }

    fn project_url(&self) -> String {
        format!("{}/api/v1beta1/orgs/default/projects/default", self.url)
    }

    /// POST `body` to `{P}/{path}`; returns the status and the JSON body.
    pub fn post(&self, path: &str, body: Value) -> anyhow::Result<(u16, Value)> {
        let r = self
            .http
            .post(&format!("{}/{path}", self.project_url()))
            .set("Authorization", &self.auth())
            .send_json(body);
        read_json(r)
    }

    /// POST create with a full request body (e.g. `from_snapshot`); returns the id once the
    /// 201 (phase Ready) has been read.
    pub fn create_with(&mut self, body: Value) -> anyhow::Result<String> {
        let (status, resp) = self.post("sandboxes", body.clone())?;
        if let Some(id) = resp["id"].as_str() {
            self.live.insert(id.to_string());
        }
        if status != 201 || resp["phase"] != "Ready" {
            bail!("create {body}: HTTP {status}: {resp}");
        }
        Ok(resp["id"].as_str().context("create: no id")?.to_string())
    }

    /// POST `{P}/sandboxes/{id}/snapshots`; returns the record, which must be `Ready`.
    pub fn snapshot(&mut self, id: &str, include_memory: bool) -> anyhow::Result<Value> {
        let (status, snap) = self.post(
            &format!("sandboxes/{id}/snapshots"),
            json!({"include_memory": include_memory}),
        )?;
        if let Some(sid) = snap["id"].as_str() {
            self.snaps.insert(sid.to_string());
        }
        if status != 202 || snap["status"] != "Ready" {
            bail!("snapshot of {id}: HTTP {status}: {snap}");
        }
        Ok(snap)
    }

    /// Ids of the snapshots the project holds (of sandbox `id` if given).
    pub fn list_snapshots(&self, id: Option<&str>) -> anyhow::Result<Vec<String>> {
        let path = match id {
            Some(id) => format!("sandboxes/{id}/snapshots"),
            None => "snapshots".to_string(),
        };
        let mut out = Vec::new();
        for page in 1..=100 {
            let r = self
                .http
                .get(&format!(
                    "{}/{path}?limit=100&page={page}",
                    self.project_url()
                ))
                .set("Authorization", &self.auth())
                .call();
            let (status, body) = read_json(r)?;
            if status != 200 {
                bail!("list snapshots: HTTP {status}: {body}");
            }
            let items = body["items"].as_array().cloned().unwrap_or_default();
            out.extend(
                items
                    .iter()
                    .filter_map(|s| s["id"].as_str().map(str::to_string)),
            );
            if items.len() < 100 {
                break;
            }
        }
        Ok(out)
    }

    /// DELETE `{P}/snapshots/{sid}` (a 404 counts as deleted).
    pub fn delete_snapshot(&mut self, sid: &str) -> anyhow::Result<()> {
        let r = self
            .http
            .delete(&format!("{}/snapshots/{sid}", self.project_url()))
            .set("Authorization", &self.auth())
            .call();
        let (status, body) = read_json(r)?;
        if status == 204 || status == 404 {
            self.snaps.remove(sid);
            return Ok(());
        }
        bail!("delete snapshot {sid}: HTTP {status}: {body}")
    }

    /// POST `{P}/sandboxes/{id}/fork`; returns the new sandbox's id after the 201.
    pub fn fork(&mut self, id: &str, name: &str) -> anyhow::Result<String> {
        let (status, resp) = self.post(&format!("sandboxes/{id}/fork"), json!({"name": name}))?;
        if let Some(nid) = resp["id"].as_str() {
            self.live.insert(nid.to_string());
        }
        if status != 201 {
            bail!("fork {id}: HTTP {status}: {resp}");
        }
        Ok(resp["id"].as_str().context("fork: no id")?.to_string())
    }

    /// POST `{P}/sandboxes/{id}/{action}` (pause, resume) expecting a 200.
    pub fn action(&self, id: &str, action: &str, body: Value) -> anyhow::Result<Value> {
        let (status, resp) = self.post(&format!("sandboxes/{id}/{action}"), body)?;
        if status != 200 {
            bail!("{action} {id}: HTTP {status}: {resp}");
        }
        Ok(resp)
    }

    /// Starts a background process through the data plane (`/v1/processes/start`).
    pub fn start_process(&self, id: &str, program: &str, args: &[&str]) -> anyhow::Result<()> {
        let r = self
            .http
            .post(&format!("{}/v1/processes/start", self.url))
            .set("Authorization", &self.auth())
            .set("X-Sandbox-Id", id)
            .send_json(json!({"program": program, "args": args}));
        let (status, body) = read_json(r)?;
        if status != 200 {
            bail!("start {program}: HTTP {status}: {body}");
        }
        Ok(())
    }

    /// Runs argv through `/v1/exec` and waits for the exit frame; fails unless it exits 0.
    /// Returns stdout.
    pub fn exec_argv(&self, id: &str, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let r = self
            .http
            .post(&format!("{}/v1/exec", self.url))
            .set("Authorization", &self.auth())
            .set("X-Sandbox-Id", id)
            .send_json(json!({"command": program, "args": args}));
        let resp = match r {
            Ok(r) => r,
            Err(ureq::Error::Status(s, r)) => {
                bail!("exec: HTTP {s}: {}", r.into_string().unwrap_or_default())
            }
            Err(e) => bail!("exec: {e}"),
        };
        use base64::Engine as _;
        let b64 = |v: &Value| {
            let d = base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap_or_default())
                .unwrap_or_default();
            String::from_utf8_lossy(&d).into_owned()
        };
        let (mut out, mut err) = (String::new(), String::new());
        for line in BufReader::new(resp.into_reader()).lines() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(line.trim())
                .with_context(|| format!("exec frame {line:?}"))?;
            match v["type"].as_str() {
                Some("stdout") => out.push_str(&b64(&v["data"])),
                Some("stderr") => err.push_str(&b64(&v["data"])),
                Some("exit") => {
                    if v["exit_code"] != 0 {
                        bail!("exec {program}: {v}; stderr: {err}");
                    }
                    return Ok(out);
                }
                Some("error") => bail!("exec {program}: {v}"),
                _ => {}
            }
        }
        bail!("exec {program}: stream ended without an exit frame")
    }

    /// A sandbox's writable layer (its btrfs subvolume) on the daemon's volume.
    pub fn subvolume(&self, id: &str) -> PathBuf {
        self.data_dir.join("vol").join(id)
    }

    /// Where the daemon keeps captured layers (`<vol>/.layers/snap-<id>`).
    pub fn layer_of(&self, snap: &str) -> PathBuf {
        self.data_dir
            .join("vol")
            .join(".layers")
            .join(format!("snap-{snap}"))
    }

    /// Waits until the archiver has moved the snapshot's memory image into the store (its
    /// `added_bytes` is known and the plain image is gone); returns the record.
    pub fn wait_archived(&self, sid: &str) -> anyhow::Result<Value> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let r = self
                .http
                .get(&format!("{}/snapshots/{sid}", self.project_url()))
                .set("Authorization", &self.auth())
                .call();
            let (status, snap) = read_json(r)?;
            if status != 200 {
                bail!("get snapshot {sid}: HTTP {status}: {snap}");
            }
            if snap["added_bytes"].is_u64() && !self.image_of(sid).exists() {
                return Ok(snap);
            }
            if std::time::Instant::now() > deadline {
                bail!("snapshot {sid} was not stored within 120 s: {snap}");
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// The manifest of a stored snapshot (`<data>/store/manifests/snap-<id>.json`).
    pub fn manifest_of(&self, snap: &str) -> PathBuf {
        self.data_dir
            .join("store")
            .join("manifests")
            .join(format!("snap-{snap}.json"))
    }

    /// Where a stored chunk lives.
    pub fn blob_path(&self, hash: &str) -> PathBuf {
        self.data_dir
            .join("store")
            .join("blobs")
            .join(hash.get(..2).unwrap_or(""))
            .join(hash)
    }

    /// Where the daemon keeps a snapshot's checkpoint image (`<data>/images/snap-<id>`)
    /// until the archiver has moved it into the store.
    pub fn image_of(&self, snap: &str) -> PathBuf {
        self.data_dir.join("images").join(format!("snap-{snap}"))
    }

    fn list_ids(&self) -> Vec<String> {
        let r = self
            .http
            .get(&format!("{}?limit=100", self.sandboxes_url()))
            .set("Authorization", &self.auth())
            .call();
        match read_json(r) {
            Ok((200, body)) => body["items"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s["id"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// Deletes every sandbox this daemon holds (the ones we know of and any the list shows),
    /// then stops the daemon. Returns the ids it could not delete.
    pub fn shutdown(&mut self) -> Vec<String> {
        let mut failed = Vec::new();
        if self.child.is_some() && !self.url.is_empty() {
            let mut snaps: BTreeSet<String> = self.snaps.clone();
            snaps.extend(self.list_snapshots(None).unwrap_or_default());
            for sid in snaps {
                if let Err(e) = self.delete_snapshot(&sid) {
                    eprintln!("bench: cleanup: {e:#}");
                    failed.push(format!("snapshot {sid}"));
                }
            }
            let mut ids: BTreeSet<String> = self.live.clone();
            ids.extend(self.list_ids());
            for id in ids {
                if let Err(e) = self.delete(&id) {
                    eprintln!("bench: cleanup: {e:#}");
                    failed.push(id);
                }
            }
        }
        self.stop();
        failed
    }

    fn stop(&mut self) {
        if let Some(c) = self.child.take() {
            procs::terminate(&c, Duration::from_secs(15));
        }
    }
}

pub(super) fn read_json(r: Result<ureq::Response, ureq::Error>) -> anyhow::Result<(u16, Value)> {
    let resp = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => return Err(anyhow::anyhow!("HTTP transport: {e}")),
    };
    let status = resp.status();
    let mut raw = String::new();
    resp.into_reader().read_to_string(&mut raw)?;
    Ok((
        status,
        serde_json::from_str(&raw).unwrap_or(Value::String(raw)),
    ))
}
