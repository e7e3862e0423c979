//! `sbx`: the sandboxd command-line client.
//!
//! Commands are subcommands of [`Cmd`]; each handler gets a [`Ctx`] (API client + output mode)
//! and returns the process exit status. New command groups (snapshots, fork, pause, ...) add a
//! variant and a handler in the same shape.

mod client;
mod exec;
mod metrics;
mod shell;
mod snapshot;
mod table;
mod tty;

use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Map, Value};

use client::{str_field, Client};

const DEFAULT_KEY_FILE: &str = "/var/lib/sandboxd/admin.key";
const POLL_EVERY: Duration = Duration::from_millis(100);
const READY_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Parser, Debug)]
#[command(name = "sbx", version, about = "Command-line client for sandboxd")]
struct Cli {
    /// Server base URL
    #[arg(
        long,
        env = "SBX_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    url: String,
    /// API key (else the file named by SBX_API_KEY_FILE, else /var/lib/sandboxd/admin.key)
    #[arg(long, env = "SBX_API_KEY", hide_env_values = true, global = true)]
    key: Option<String>,
    /// Organization
    #[arg(long, env = "SBX_ORG", default_value = "default", global = true)]
    org: String,
    /// Project
    #[arg(long, env = "SBX_PROJECT", default_value = "default", global = true)]
    project: String,
    /// Print raw JSON instead of text
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create a sandbox and wait until it is Ready; prints its id
    Create(CreateArgs),
    /// List sandboxes
    Ls,
    /// Run a command in a sandbox, streaming its output; exits with its exit code
    Exec(ExecArgs),
    /// Open an interactive terminal in a sandbox (the login shell, or PROGRAM); exits with its
    /// exit code. Closing the connection detaches: the session goes on; --attach reopens it
    Shell(ShellArgs),
    /// Delete sandboxes; prints each deleted id
    Rm {
        /// Sandbox ids or names
        #[arg(required = true, value_name = "ID_OR_NAME")]
        sandboxes: Vec<String>,
    },
    /// Snapshots: create, ls, rm
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCmd),
    /// Fork a running sandbox (processes and memory included) into a new one; prints its id
    Fork(snapshot::ForkArgs),
    /// Restore a snapshot as a new sandbox, or roll a sandbox back to it with --into
    Restore(snapshot::RestoreArgs),
    /// Pause a sandbox (keeps processes and memory unless --no-memory)
    Pause(snapshot::PauseArgs),
    /// Resume a paused sandbox
    Resume {
        /// Sandbox id or name
        #[arg(value_name = "SANDBOX")]
        sandbox: String,
    },
    /// Show a sandbox's health metrics: the current value and a sparkline per series
    Metrics(MetricsArgs),
    /// Publish a sandbox port at a public preview URL (no key needed to open it); prints it
    Expose {
        /// Sandbox id or name
        #[arg(value_name = "SANDBOX")]
        sandbox: String,
        port: u16,
        /// The URL's secret part (8-63 of a-z, 0-9, '-'); random if omitted, rotates if changed
        #[arg(long)]
        slug: Option<String>,
    },
    /// List a sandbox's published ports and their preview URLs
    Ports {
        /// Sandbox id or name
        #[arg(value_name = "SANDBOX")]
        sandbox: String,
    },
    /// Stop publishing a sandbox port (its preview URL stops working at once)
    Unexpose {
        /// Sandbox id or name
        #[arg(value_name = "SANDBOX")]
        sandbox: String,
        port: u16,
    },
}

#[derive(Args, Debug)]
struct MetricsArgs {
    /// Sandbox id or name
    #[arg(value_name = "ID_OR_NAME")]
    sandbox: String,
    /// How far back to look, in whole minutes/hours/days (e.g. 15m, 1h, 1d)
    #[arg(long, default_value = "1h", value_parser = parse_since)]
    since: u64,
    /// Resolution (e.g. 10s, 1m); the server may coarsen it and says so
    #[arg(long)]
    step: Option<String>,
    /// Sparkline width in points
    #[arg(long, default_value_t = 40)]
    width: usize,
}

/// `15m`, `1h`, `2d`, `90s` → seconds.
fn parse_since(s: &str) -> std::result::Result<u64, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: expected e.g. 15m, 1h, 1d"))?;
    let mul = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: expected e.g. 15m, 1h, 1d")),
    };
    match n.checked_mul(mul) {
        Some(v) if v > 0 => Ok(v),
        _ => Err(format!("{s:?}: must be positive")),
    }
}

#[derive(Args, Debug)]
struct CreateArgs {
    /// Sandbox name (the server picks one if omitted)
    #[arg(long)]
    name: Option<String>,
    /// Sandbox template id
    #[arg(long, default_value = "sb-debian-12-python")]
    template: String,
    /// CPU cores (e.g. 0.5)
    #[arg(long)]
    cpu: Option<f64>,
    /// Memory in GB
    #[arg(long)]
    memory_gb: Option<u64>,
    /// Disk in GB
    #[arg(long)]
    disk_gb: Option<u64>,
    /// Environment variable, repeatable
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
}

#[derive(Args, Debug)]
struct ExecArgs {
    /// Sandbox id or name
    #[arg(value_name = "ID_OR_NAME")]
    sandbox: String,
    /// Working directory inside the sandbox
    #[arg(long)]
    cwd: Option<String>,
    /// Environment variable, repeatable
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Kill the command after this many milliseconds (exit status 124)
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Command and arguments (after `--`); one argument containing spaces runs as a shell line
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    command: Vec<String>,
}

#[derive(Args, Debug)]
struct ShellArgs {
    /// Sandbox id or name
    #[arg(value_name = "ID_OR_NAME")]
    sandbox: String,
    /// Reattach to a running terminal session (its recent output is replayed first)
    #[arg(long, value_name = "SESSION_ID", conflicts_with = "program")]
    attach: Option<String>,
    /// Program and arguments (after `--`); the sandbox's login shell if omitted
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "PROGRAM"
    )]
    program: Vec<String>,
}

/// What every command handler gets.
struct Ctx {
    client: Client,
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        // A closed stdout (`sbx ls | head`) ends the command quietly.
        Err(e) if is_broken_pipe(&e) => ExitCode::from(1),
        Err(e) => {
            eprintln!("sbx: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> Result<u8> {
    let key = resolve_key(
        cli.key,
        std::env::var_os("SBX_API_KEY_FILE")
            .as_deref()
            .map(Path::new),
        Path::new(DEFAULT_KEY_FILE),
    )?;
    let ctx = Ctx {
        client: Client::new(&cli.url, &key, &cli.org, &cli.project),
        json: cli.json,
    };
    match cli.cmd {
        Cmd::Create(a) => create(&ctx, &a),
        Cmd::Ls => ls(&ctx),
        Cmd::Exec(a) => exec_cmd(&ctx, &a),
        Cmd::Shell(a) => shell_cmd(&ctx, &a),
        Cmd::Rm { sandboxes } => rm(&ctx, &sandboxes),
        Cmd::Snapshot(c) => out(&snapshot::run(&ctx.client, &c, ctx.json)?).map(|_| 0),
        Cmd::Fork(a) => out(&snapshot::fork(&ctx.client, &a, ctx.json)?).map(|_| 0),
        Cmd::Restore(a) => out(&snapshot::restore(&ctx.client, &a, ctx.json)?).map(|_| 0),
        Cmd::Pause(a) => out(&snapshot::pause(&ctx.client, &a, ctx.json)?).map(|_| 0),
        Cmd::Resume { sandbox } => {
            out(&snapshot::resume(&ctx.client, &sandbox, ctx.json)?).map(|_| 0)
        }
        Cmd::Metrics(a) => metrics_cmd(&ctx, &a),
        Cmd::Expose {
            sandbox,
            port,
            slug,
        } => {
            let mut body = json!({"port": port});
            if let Some(s) = slug {
                body["slug"] = json!(s);
            }
            let url = ctx.client.project_url(&["sandboxes", &sandbox, "ports"]);
            let p = ctx.client.post(&url, &body)?;
            if ctx.json {
                print_json(&p)?;
            } else {
                out(&format!("{}\n", str_field(&p, "preview_url")))?;
            }
            Ok(0)
        }
        Cmd::Ports { sandbox } => {
            let url = ctx.client.project_url(&["sandboxes", &sandbox, "ports"]);
            let v = ctx.client.get(&url)?;
            if ctx.json {
                print_json(&v)?;
            } else {
                out(&ports_table(&v))?;
            }
            Ok(0)
        }
        Cmd::Unexpose { sandbox, port } => {
            let port = port.to_string();
            let url = ctx
                .client
                .project_url(&["sandboxes", &sandbox, "ports", &port]);
            ctx.client.delete(&url)?;
            Ok(0)
        }
    }
}

/// The API key: the flag/env value, else the first readable, non-empty key file.
fn resolve_key(
    flag: Option<String>,
    env_file: Option<&Path>,
    default_file: &Path,
) -> Result<String> {
    if let Some(k) = flag.map(|k| k.trim().to_string()).filter(|k| !k.is_empty()) {
        return Ok(k);
    }
    let mut tried = Vec::new();
    for path in env_file.into_iter().chain([default_file]) {
        match std::fs::read_to_string(path) {
            Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
            Ok(_) => tried.push(format!("{} is empty", path.display())),
            Err(e) => tried.push(format!("{}: {e}", path.display())),
        }
    }
    Err(anyhow!(
        "no API key: pass --key or set SBX_API_KEY ({})",
        tried.join("; ")
    ))
}

/// `KEY=VALUE` → `{"name": KEY, "value": VALUE}`.
fn env_var(kv: &str) -> Result<Value> {
    match kv.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok(json!({"name": k, "value": v})),
        _ => bail!("--env {kv:?}: expected KEY=VALUE"),
    }
}

/// The create-sandbox request body; only the options the user gave are sent.
fn create_body(a: &CreateArgs) -> Result<Value> {
    let mut body = Map::new();
    if let Some(n) = &a.name {
        body.insert("name".into(), json!(n));
    }
    body.insert("sandbox_template_id".into(), json!(a.template));
    let mut res = Map::new();
    if let Some(c) = a.cpu {
        res.insert("cpu".into(), json!(c));
    }
    if let Some(m) = a.memory_gb {
        res.insert("memory_gb".into(), json!(m));
    }
    if let Some(d) = a.disk_gb {
        res.insert("disk_gb".into(), json!(d));
    }
    if !res.is_empty() {
        body.insert("resources".into(), Value::Object(res));
    }
    if !a.env.is_empty() {
        let env = a
            .env
            .iter()
            .map(|kv| env_var(kv))
            .collect::<Result<Vec<_>>>()?;
        body.insert("env".into(), Value::Array(env));
    }
    Ok(Value::Object(body))
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Writes to stdout, reporting a closed pipe as an error instead of panicking like `print!`.
fn out(text: &str) -> Result<()> {
    let mut o = std::io::stdout().lock();
    o.write_all(text.as_bytes())?;
    o.flush()?;
    Ok(())
}

fn print_json(v: &Value) -> Result<()> {
    out(&format!("{}\n", serde_json::to_string_pretty(v)?))
}

fn create(ctx: &Ctx, a: &CreateArgs) -> Result<u8> {
    let mut sb = ctx.client.create_sandbox(&create_body(a)?)?;
    let id = str_field(&sb, "id").to_string();
    if id.is_empty() {
        bail!("the server returned a sandbox without an id");
    }
    if str_field(&sb, "phase") != "Ready" {
        sb = ctx
            .client
            .wait_ready(&id, POLL_EVERY, READY_TIMEOUT)
            .with_context(|| format!("created {id}"))?;
    }
    if ctx.json {
        print_json(&sb)?;
    } else {
        out(&format!("{id}\n"))?;
    }
    Ok(0)
}

fn ls(ctx: &Ctx) -> Result<u8> {
    let items = ctx.client.list_all("sandboxes")?;
    if ctx.json {
        print_json(&Value::Array(items))?;
    } else {
        out(&table::sandboxes(&items))?;
    }
    Ok(0)
}

/// A running sandbox's (id, connect_url), by id or name.
fn data_plane(ctx: &Ctx, sandbox: &str) -> Result<(String, String)> {
    let sb = ctx.client.get_sandbox(sandbox)?;
    let connect_url = str_field(&sb, "connect_url");
    if connect_url.is_empty() {
        bail!(
            "sandbox {sandbox} is not running (phase {})",
            str_field(&sb, "phase")
        );
    }
    Ok((str_field(&sb, "id").to_string(), connect_url.to_string()))
}

fn exec_cmd(ctx: &Ctx, a: &ExecArgs) -> Result<u8> {
    let body = exec::request_body(&a.command, a.cwd.as_deref(), &a.env, a.timeout_ms)?;
    let (id, connect_url) = data_plane(ctx, &a.sandbox)?;
    let resp = ctx.client.exec(&connect_url, &id, &body)?;
    let input = std::io::BufReader::new(resp.into_reader());
    exec::relay(
        input,
        &mut std::io::stdout(),
        &mut std::io::stderr(),
        ctx.json,
    )
}

fn shell_cmd(ctx: &Ctx, a: &ShellArgs) -> Result<u8> {
    let (id, connect_url) = data_plane(ctx, &a.sandbox)?;
    shell::run(
        &ctx.client,
        &shell::Target {
            connect_url: &connect_url,
            sandbox_id: &id,
            program: &a.program,
            attach: a.attach.as_deref(),
        },
    )
}

fn rm(ctx: &Ctx, targets: &[String]) -> Result<u8> {
    let mut status = 0;
    for t in targets {
        let res = ctx.client.get_sandbox(t).and_then(|sb| {
            let id = str_field(&sb, "id").to_string();
            ctx.client.delete_sandbox(&id)?;
            Ok(id)
        });
        match res {
            Ok(id) if ctx.json => out(&format!("{}\n", json!({"id": id, "deleted": true})))?,
            Ok(id) => out(&format!("{id}\n"))?,
            Err(e) => {
                eprintln!("sbx: {t}: {e:#}");
                status = 1;
            }
        }
    }
    Ok(status)
}

fn ports_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v["ports"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    vec![
                        p["port"].to_string(),
                        str_field(p, "preview_url").to_string(),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table::render(&["PORT", "PREVIEW URL"], &rows)
}

fn metrics_cmd(ctx: &Ctx, a: &MetricsArgs) -> Result<u8> {
    let to = chrono::Utc::now();
    let from = to - chrono::Duration::seconds(a.since as i64);
    let fmt =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut url = format!(
        "{}?from={}&to={}",
        ctx.client
            .project_url(&["sandboxes", &a.sandbox, "metrics"]),
        fmt(from),
        fmt(to)
    );
    if let Some(step) = &a.step {
        url.push_str(&format!("&step={}", client::path_segment(step)));
    }
    let resp = ctx.client.get(&url)?;
    if ctx.json {
        print_json(&resp)?;
    } else {
        out(&metrics::render(&resp, a.width))?;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_a_table() {
        let t = ports_table(&json!({"ports": [{"port": 8000, "slug": "s",
            "preview_url": "http://h/p/abcdefgh/"}]}));
        assert!(
            t.contains("PORT") && t.contains("8000") && t.contains("http://h/p/abcdefgh/"),
            "{t}"
        );
        let p = parse(&["expose", "web", "8000", "--slug", "my-preview"]);
        assert!(matches!(p.cmd, Cmd::Expose { port: 8000, .. }));
    }

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("sbx").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn create_defaults_send_only_the_template() {
        let Cmd::Create(a) = parse(&["create"]).cmd else {
            panic!("not create")
        };
        assert_eq!(
            create_body(&a).unwrap(),
            json!({"sandbox_template_id": "sb-debian-12-python"})
        );
    }

    #[test]
    fn create_maps_every_option() {
        let cli = parse(&[
            "create",
            "--name",
            "w1",
            "--template",
            "sb-busybox",
            "--cpu",
            "0.5",
            "--memory-gb",
            "2",
            "--disk-gb",
            "10",
            "--env",
            "A=1",
            "--env",
            "B=x=y",
        ]);
        let Cmd::Create(a) = cli.cmd else {
            panic!("not create")
        };
        assert_eq!(
            create_body(&a).unwrap(),
            json!({
                "name": "w1",
                "sandbox_template_id": "sb-busybox",
                "resources": {"cpu": 0.5, "memory_gb": 2, "disk_gb": 10},
                "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "x=y"}],
            })
        );
        let Cmd::Create(bad) = parse(&["create", "--env", "NOPE"]).cmd else {
            panic!("not create")
        };
        assert!(create_body(&bad).is_err());
    }

    #[test]
    fn exec_takes_everything_after_the_target() {
        let cli = parse(&[
            "exec",
            "--json",
            "box",
            "--cwd",
            "/tmp",
            "--env",
            "A=1",
            "--timeout-ms",
            "50",
            "--",
            "ls",
            "-la",
            "--json",
        ]);
        assert!(cli.json);
        let Cmd::Exec(a) = cli.cmd else {
            panic!("not exec")
        };
        assert_eq!(a.sandbox, "box");
        assert_eq!(a.cwd.as_deref(), Some("/tmp"));
        assert_eq!(a.env, ["A=1"]);
        assert_eq!(a.timeout_ms, Some(50));
        assert_eq!(a.command, ["ls", "-la", "--json"]);
        let Cmd::Exec(b) = parse(&["exec", "box", "echo hi; exit 3"]).cmd else {
            panic!("not exec")
        };
        assert_eq!(b.command, ["echo hi; exit 3"]);
        assert!(Cli::try_parse_from(["sbx", "exec", "box"]).is_err());
    }

    #[test]
    fn shell_args() {
        let Cmd::Shell(a) = parse(&["shell", "box"]).cmd else {
            panic!("not shell")
        };
        assert_eq!(
            (a.sandbox.as_str(), a.attach, a.program.len()),
            ("box", None, 0)
        );
        let Cmd::Shell(b) = parse(&["shell", "box", "--", "python3", "-i", "--json"]).cmd else {
            panic!("not shell")
        };
        assert_eq!(b.program, ["python3", "-i", "--json"]);
        let Cmd::Shell(c) = parse(&["shell", "box", "--attach", "s1"]).cmd else {
            panic!("not shell")
        };
        assert_eq!(c.attach.as_deref(), Some("s1"));
        assert!(
            Cli::try_parse_from(["sbx", "shell", "box", "--attach", "s1", "--", "sh"]).is_err()
        );
    }

    #[test]
    fn global_flags_and_rm() {
        let cli = parse(&[
            "rm",
            "a",
            "b",
            "--org",
            "o",
            "--project",
            "p",
            "--url",
            "http://x",
        ]);
        assert_eq!((cli.org.as_str(), cli.project.as_str()), ("o", "p"));
        assert_eq!(cli.url, "http://x");
        let Cmd::Rm { sandboxes } = cli.cmd else {
            panic!("not rm")
        };
        assert_eq!(sandboxes, ["a", "b"]);
        assert!(Cli::try_parse_from(["sbx", "rm"]).is_err());
    }

    #[test]
    fn metrics_args() {
        let Cmd::Metrics(a) = parse(&["metrics", "box", "--since", "15m", "--step", "10s"]).cmd
        else {
            panic!("not metrics")
        };
        assert_eq!(
            (a.sandbox.as_str(), a.since, a.step.as_deref()),
            ("box", 900, Some("10s"))
        );
        let Cmd::Metrics(d) = parse(&["metrics", "box"]).cmd else {
            panic!("not metrics")
        };
        assert_eq!((d.since, d.step, d.width), (3600, None, 40));
        for bad in ["0m", "1x", "m", "-1h"] {
            assert!(
                Cli::try_parse_from(["sbx", "metrics", "box", "--since", bad]).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn key_resolution_order() {
        let dir = std::env::temp_dir().join(format!("sbx-key-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (f1, f2, missing) = (dir.join("k1"), dir.join("k2"), dir.join("none"));
        std::fs::write(&f1, "key-one\n").unwrap();
        std::fs::write(&f2, "key-two").unwrap();
        let k = |flag: Option<&str>, env: Option<&Path>, def: &Path| {
            resolve_key(flag.map(String::from), env, def)
        };
        assert_eq!(k(Some("flag"), Some(&f1), &f2).unwrap(), "flag");
        assert_eq!(k(None, Some(&f1), &f2).unwrap(), "key-one");
        assert_eq!(k(Some(" "), Some(&missing), &f2).unwrap(), "key-two");
        assert!(k(None, None, &missing).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
