//! The NeevCloud SDK data plane, served at every sandbox's `connect_url`: the same API key plus
//! `X-Sandbox-Id` addresses one sandbox; requests become agent calls.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use sandboxd_agent::proto::{FileInfo, ProcInfo, Reply, Request, StartSpec};
use sandboxd_core::{Principal, SandboxId};
use sandboxd_engine::agent_client::ReplyStream;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::body::{read_capped, read_json, MAX_FILE_BYTES};
use crate::error::{ApiError, Dialect};
use crate::{principal, AppState};

/// Blank line sent on quiet streams so the SDK's 60 s read timeout never fires.
const KEEPALIVE: Duration = Duration::from_secs(25);
/// How often a quiet stream checks that its sandbox is still alive.
const LIVENESS: Duration = Duration::from_secs(1);
const WORKSPACE: &str = "/workspace";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/exec", post(exec))
        .route("/v1/processes/start", post(start))
        .route("/v1/processes/get", post(get))
        .route("/v1/processes/list", post(list))
        .route("/v1/processes/kill", post(kill))
        .route("/v1/processes/kill-all", post(kill_all))
        .route("/v1/processes/logs", post(logs))
        .route("/v1/files/write", post(write))
        .route("/v1/files/read", post(read))
        .route("/v1/files/list", post(list_files))
        .route("/v1/files/stat", post(stat))
        .route("/v1/files/exists", post(exists))
        .route("/v1/files/mkdir", post(mkdir))
        .route("/v1/files/move", post(move_file))
        .route("/v1/files/remove", post(remove))
        .route("/v1/files/watch", post(watch))
        .merge(crate::uploads::routes())
        .route("/v1/pty", axum::routing::get(pty))
        .route("/v1/ssh", axum::routing::get(ssh))
}

/// `GET /v1/pty?program&arg…&cols&rows` (WebSocket): a new terminal running `program` (a login
/// shell by default), or with `id` a reattach to a running one (its scrollback comes first).
async fn pty(
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    ws: axum::extract::ws::WebSocketUpgrade,
) -> Response {
    finish(pty_open(st, q, headers, ws).await)
}

/// `GET /v1/ssh` (WebSocket): the sandbox's SSH server, as raw SSH bytes.
async fn ssh(
    State(st): State<AppState>,
    headers: HeaderMap,
    ws: axum::extract::ws::WebSocketUpgrade,
) -> Response {
    let r = async {
        let c = ctx(&st, &headers)?;
        crate::ssh::tunnel(c.st, c.principal, c.id, ws).await
    }
    .await;
    finish(r)
}

async fn pty_open(
    st: AppState,
    q: Option<String>,
    headers: HeaderMap,
    ws: axum::extract::ws::WebSocketUpgrade,
) -> DpResult {
    let c = ctx(&st, &headers)?;
    let pairs = crate::query::pairs(q.as_deref());
    let get = |k: &str| {
        pairs
            .iter()
            .rev()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let dim = |k: &str| -> Result<Option<u16>, ApiError> {
        match get(k).filter(|v| !v.is_empty()) {
            None => Ok(None),
            Some(v) => match v.parse::<u16>() {
                Ok(n) if (1..=1000).contains(&n) => Ok(Some(n)),
                _ => Err(ApiError::invalid(
                    k,
                    "must be an integer between 1 and 1000",
                )),
            },
        }
    };
    let req = match get("id").filter(|v| !v.is_empty()) {
        Some(id) => Request::SessionAttach { id },
        None => {
            let argv = get("program").filter(|p| !p.is_empty()).map(|p| {
                let mut a = vec![p];
                a.extend(
                    pairs
                        .iter()
                        .filter(|(k, _)| k == "arg")
                        .map(|(_, v)| v.clone()),
                );
                a
            });
            Request::SessionOpen(sandboxd_agent::proto::SessionSpec {
                argv,
                pty: true,
                cols: dim("cols")?,
                rows: dim("rows")?,
                ..Default::default()
            })
        }
    };
    let (reply, stream) =
        c.st.engine
            .session_attach(&c.principal, c.id, "pty", req)
            .await?;
    let info = crate::terminal::expect_session(reply)?;
    let (reader, writer) = stream.ok_or_else(unexpected)?;
    Ok(ws
        .on_upgrade(move |socket| {
            crate::terminal::bridge(socket, info, reader, writer, crate::terminal::Framing::Neev)
        })
        .into_response())
}

/// Every handler's result: errors are rendered in the data-plane shape.
pub(crate) type DpResult = Result<Response, ApiError>;

pub(crate) fn finish(r: DpResult) -> Response {
    r.unwrap_or_else(|e| e.in_dialect(Dialect::DataPlane).into_response())
}

pub(crate) struct Ctx {
    pub(crate) st: AppState,
    pub(crate) principal: Principal,
    pub(crate) id: SandboxId,
}

pub(crate) fn ctx(st: &AppState, headers: &HeaderMap) -> Result<Ctx, ApiError> {
    let principal = principal(st, headers)?;
    let raw = headers
        .get("x-sandbox-id")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::invalid("X-Sandbox-Id", "header is required"))?;
    let id = SandboxId::parse(raw)
        .ok_or_else(|| ApiError::invalid("X-Sandbox-Id", "must be a sandbox UUID"))?;
    Ok(Ctx {
        st: st.clone(),
        principal,
        id,
    })
}

impl Ctx {
    pub(crate) async fn call(
        &self,
        tool: &str,
        target: Option<String>,
        req: Request,
    ) -> Result<Reply, ApiError> {
        let reply = self
            .st
            .engine
            .agent_call(&self.principal, self.id, tool, target, req)
            .await?;
        match reply {
            Reply::Error { code, message } => Err(agent_error(&code, message)),
            r => Ok(r),
        }
    }
}

pub(crate) fn agent_error(code: &str, message: String) -> ApiError {
    let (status, c) = match code {
        "not_found" => (StatusCode::NOT_FOUND, "not_found"),
        "invalid" | "not_dir" | "is_dir" | "not_empty" => {
            (StatusCode::BAD_REQUEST, "invalid_argument")
        }
        "exists" => (StatusCode::CONFLICT, "already_exists"),
        "conflict" => (StatusCode::CONFLICT, "failed_precondition"),
        "permission" => (StatusCode::FORBIDDEN, "permission_denied"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    };
    ApiError::new(status, c, message)
}

pub(crate) fn unexpected() -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "internal",
        "unexpected reply from the sandbox agent",
    )
}

fn env_pairs(env: Option<Vec<String>>) -> Result<Vec<(String, String)>, ApiError> {
    env.unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, kv)| {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| ApiError::invalid(format!("env[{i}]"), "must be KEY=value"))?;
            sandboxd_core::validate::env_name(&format!("env[{i}]"), k)?;
            Ok((k.to_string(), v.to_string()))
        })
        .collect()
}

/// The SDK sends a whole shell line as `command` with no `args`; argv form otherwise.
fn argv(command: &str, args: Vec<String>) -> Result<Vec<String>, ApiError> {
    if command.trim().is_empty() {
        return Err(ApiError::invalid("command", "must not be empty"));
    }
    Ok(if args.is_empty() {
        vec!["/bin/sh".into(), "-c".into(), command.to_string()]
    } else {
        std::iter::once(command.to_string()).chain(args).collect()
    })
}

pub(crate) fn resolve_path(path: &str, cwd: Option<&str>) -> String {
    if path.starts_with('/') {
        return path.to_string();
    }
    let base = match cwd {
        Some(c) if c.starts_with('/') => c.to_string(),
        Some(c) if !c.is_empty() => format!("{WORKSPACE}/{c}"),
        _ => WORKSPACE.to_string(),
    };
    if path.is_empty() || path == "." {
        base
    } else {
        format!(
            "{}/{}",
            base.trim_end_matches('/'),
            path.trim_start_matches("./")
        )
    }
}

fn ndjson(
    stream: impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

fn line(v: Value) -> Bytes {
    let mut b = serde_json::to_vec(&v).expect("json");
    b.push(b'\n');
    Bytes::from(b)
}

/// What a follow stream does at the end of the process's output.
struct Follow {
    ctx: Ctx,
    stream: ReplyStream,
    pid: u32,
    deadline: Option<tokio::time::Instant>,
    /// The caller's timeout, for messages.
    timeout_ms: Option<u64>,
    done: bool,
    last_sent: tokio::time::Instant,
    /// The output so far (its tail), for the error at the deadline.
    tail: OutputTail,
}

/// The last [`TAIL_BYTES`] of a command's stdout and stderr.
#[derive(Default)]
struct OutputTail {
    stdout: std::collections::VecDeque<u8>,
    stderr: std::collections::VecDeque<u8>,
    dropped: [usize; 2],
}

/// Output of a timed-out command repeated in its error (exec_stream callers saw it all).
const TAIL_BYTES: usize = 32 * 1024;
/// How long after the kill at a deadline the rest of the output may take to arrive.
const DRAIN_AFTER_KILL: Duration = Duration::from_millis(500);

impl OutputTail {
    fn push(&mut self, stream: &str, b64: &str) {
        let bytes = B64.decode(b64).unwrap_or_default();
        let (buf, i) = if stream == "stderr" {
            (&mut self.stderr, 1)
        } else {
            (&mut self.stdout, 0)
        };
        buf.extend(bytes);
        let over = buf.len().saturating_sub(TAIL_BYTES);
        buf.drain(..over);
        self.dropped[i] += over;
    }

    /// The error message of a command killed at its deadline, with the output it printed.
    fn message(&self, timeout_ms: u64) -> String {
        let mut m = format!("command timed out after {timeout_ms} ms and was killed");
        for (name, buf, dropped) in [
            ("stdout", &self.stdout, self.dropped[0]),
            ("stderr", &self.stderr, self.dropped[1]),
        ] {
            if buf.is_empty() {
                continue;
            }
            let (a, b) = buf.as_slices();
            let text = String::from_utf8_lossy(&[a, b].concat()).into_owned();
            let cut = if dropped > 0 {
                format!(", last {} bytes", buf.len())
            } else {
                String::new()
            };
            m.push_str(&format!(
                "\n--- {name} before the deadline{cut} ---\n{text}"
            ));
        }
        m
    }
}

/// Turns agent log events into SDK frames: `stdout`/`stderr` (base64), then `exit`.
fn follow_frames(
    f: Follow,
    error_frames: bool,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send {
    futures_util::stream::unfold(f, move |mut f| async move {
        if f.done {
            return None;
        }
        loop {
            let wait = match f.deadline {
                Some(d) => LIVENESS.min(d.saturating_duration_since(tokio::time::Instant::now())),
                None => LIVENESS,
            };
            let timed_out = f.deadline.is_some_and(|d| tokio::time::Instant::now() >= d);
            if timed_out {
                return Some((Ok(deadline_frames(&mut f, error_frames).await), f));
            }
            let event = tokio::time::timeout(wait, f.stream.next()).await;
            if event.is_ok() {
                f.last_sent = tokio::time::Instant::now();
            }
            return match event {
                Err(_) => {
                    if !f.ctx.st.engine.is_running(f.ctx.id) {
                        f.done = true;
                        if error_frames {
                            let frame = json!({"type": "error", "reason_code": "unavailable", "message": "the sandbox stopped (see its status_message)"});
                            return Some((Ok(line(frame)), f));
                        }
                        return None;
                    }
                    if f.last_sent.elapsed() < KEEPALIVE {
                        continue;
                    }
                    f.last_sent = tokio::time::Instant::now();
                    Some((Ok(Bytes::from_static(b"\n")), f))
                }
                Ok(None) | Ok(Some(Err(_))) => {
                    f.done = true;
                    if error_frames {
                        let frame = json!({"type": "error", "reason_code": "unavailable", "message": "lost the connection to the sandbox"});
                        return Some((Ok(line(frame)), f));
                    }
                    None
                }
                Ok(Some(Ok(reply))) => match reply {
                    Reply::Output { stream, data, .. } => {
                        if f.deadline.is_some() {
                            f.tail.push(&stream, &data);
                        }
                        Some((Ok(line(json!({"type": stream, "data": data}))), f))
                    }
                    Reply::Exit(info) => {
                        f.done = true;
                        Some((Ok(line(exit_frame(&info))), f))
                    }
                    Reply::End => None,
                    _ => Some((Ok(Bytes::from_static(b"\n")), f)),
                },
            };
        }
    })
}

/// At the deadline: kills the process, forwards the output it printed up to its death, and
/// ends the stream with a `deadline_exceeded` error carrying that output (`exec()` in the SDK
/// keeps nothing else of it), or, for followers that take no error frames, exit 124 as
/// timeout(1) reports it (Leap0's `process/execute` does the same).
async fn deadline_frames(f: &mut Follow, error_frames: bool) -> Bytes {
    let _ = f
        .ctx
        .st
        .engine
        .agent_call(
            &f.ctx.principal,
            f.ctx.id,
            "processes.kill",
            None,
            Request::Kill {
                pid: f.pid,
                signal: Some(9),
            },
        )
        .await;
    f.done = true;
    let mut out = Vec::new();
    let until = tokio::time::Instant::now() + DRAIN_AFTER_KILL;
    while let Ok(Some(Ok(reply))) = tokio::time::timeout_at(until, f.stream.next()).await {
        match reply {
            Reply::Output { stream, data, .. } => {
                f.tail.push(&stream, &data);
                out.extend_from_slice(&line(json!({"type": stream, "data": data})));
            }
            Reply::Exit(_) | Reply::End => break,
            _ => {}
        }
    }
    let frame = if error_frames {
        let ms = f.timeout_ms.unwrap_or(0);
        json!({"type": "error", "reason_code": "deadline_exceeded", "message": f.tail.message(ms)})
    } else {
        json!({"type": "exit", "exit_code": 124})
    };
    out.extend_from_slice(&line(frame));
    Bytes::from(out)
}

#[derive(Debug, Deserialize)]
struct ExecReq {
    command: String,
    #[serde(default)]
    args: Vec<String>,
    cwd: Option<String>,
    env: Option<Vec<String>>,
    timeout_ms: Option<u64>,
    stdin: Option<String>,
}

/// The agent's start request for a data-plane command (the audit trail records only its
/// program, from the engine: arguments may hold secrets).
fn start_spec(
    command: &str,
    args: Vec<String>,
    cwd: Option<String>,
    env: Option<Vec<String>>,
    stdin: Option<String>,
) -> Result<StartSpec, ApiError> {
    let argv = argv(command, args)?;
    let spec = StartSpec {
        argv,
        env: env_pairs(env)?,
        cwd: cwd.map(|c| resolve_path(&c, None)),
        stdin: false,
        stdin_data: stdin.map(|s| B64.encode(s)),
        tag: None,
    };
    Ok(spec)
}

async fn start_process(
    c: &Ctx,
    tool: &str,
    command: &str,
    args: Vec<String>,
    cwd: Option<String>,
    env: Option<Vec<String>>,
    stdin: Option<String>,
) -> Result<ProcInfo, ApiError> {
    let spec = start_spec(command, args, cwd, env, stdin)?;
    match c.call(tool, None, Request::Start(spec)).await? {
        Reply::Started(info) => Ok(info),
        _ => Err(unexpected()),
    }
}

async fn exec(State(st): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    finish(
        async {
            let c = ctx(&st, &headers)?;
            let req: ExecReq = read_json(body, true).await?;
            let spec = start_spec(&req.command, req.args, req.cwd, req.env, req.stdin)?;
            let program = sandboxd_engine::program_of(&spec.argv);
            // One agent round trip: start and follow on the same connection.
            let started = std::time::Instant::now();
            let mut stream =
                c.st.engine
                    .agent_stream(&c.principal, c.id, Request::StartFollow(spec))
                    .await?;
            let first = stream.next().await;
            let reason = match &first {
                Some(Ok(Reply::Started(_))) => None,
                Some(Ok(Reply::Error { code, .. })) => Some(code.clone()),
                _ => Some("unavailable".to_string()),
            };
            let ms = started.elapsed().as_millis() as u64;
            c.st.engine
                .audit_event(c.id, "exec", program, None, reason, ms);
            let info = match first {
                Some(Ok(Reply::Started(info))) => info,
                Some(Ok(Reply::Error { code, message })) => {
                    return Err(agent_error(&code, message))
                }
                _ => return Err(unexpected()),
            };
            let deadline = req
                .timeout_ms
                .map(|t| tokio::time::Instant::now() + Duration::from_millis(t));
            Ok(ndjson(follow_frames(
                Follow {
                    ctx: c,
                    stream,
                    pid: info.pid,
                    deadline,
                    timeout_ms: req.timeout_ms,
                    done: false,
                    last_sent: tokio::time::Instant::now(),
                    tail: OutputTail::default(),
                },
                true,
            )))
        }
        .await,
    )
}

fn exit_frame(i: &ProcInfo) -> Value {
    json!({"type": "exit", "exit_code": i.exit_code.unwrap_or(-1), "signal": i.signal, "oom_killed": i.oom_killed})
}

fn status_json(i: &ProcInfo) -> Value {
    json!({
        "process_id": i.pid.to_string(),
        "state": if i.running { "running" } else { "exited" },
        "exit_code": i.exit_code,
        "started_at": i.started_at_ms / 1000,
        "oom_killed": i.oom_killed,
    })
}

fn info_json(i: &ProcInfo) -> Value {
    let mut v = status_json(i);
    v["name"] = json!(i.argv.first().cloned().unwrap_or_default());
    v["args"] = json!(i.argv.get(1..).unwrap_or_default());
    v["cwd"] = json!(i.cwd);
    v
}

#[derive(Debug, Deserialize)]
struct StartReq {
    program: String,
    #[serde(default)]
    args: Vec<String>,
    cwd: Option<String>,
    env: Option<Vec<String>>,
    stdin: Option<String>,
}

async fn start(State(st): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    finish(
        async {
            let c = ctx(&st, &headers)?;
            let req: StartReq = read_json(body, true).await?;
            let info = start_process(
                &c,
                "processes.start",
                &req.program,
                req.args,
                req.cwd,
                req.env,
                req.stdin,
            )
            .await?;
            Ok(Json(status_json(&info)).into_response())
        }
        .await,
    )
}

fn pid(s: &str) -> Result<u32, ApiError> {
    s.parse()
        .map_err(|_| ApiError::not_found(format!("process {s} not found")))
}

#[derive(Debug, Deserialize)]
struct PidReq {
    process_id: String,
    #[serde(default)]
    wait: bool,
    signal: Option<i32>,
    cursor: Option<u64>,
    #[serde(default)]
    follow: bool,
}

async fn get(State(st): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    finish(
        async {
            let c = ctx(&st, &headers)?;
            let req: PidReq = read_json(body, true).await?;
            let pid = pid(&req.process_id)?;
            // With `wait`, block until exit, but answer before the SDK's 60 s read timeout.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(50);
            loop {
                let info = match c.call("processes.get", None, Request::Get { pid }).await? {
                    Reply::Proc(i) => i,
                    _ => return Err(unexpected()),
                };
                if !req.wait || !info.running || tokio::time::Instant::now() >= deadline {
                    return Ok(Json(status_json(&info)).into_response());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        .await,
    )
}

async fn list(State(st): State<AppState>, headers: HeaderMap) -> Response {
    finish(
        async {
            let c = ctx(&st, &headers)?;
            match c.call("processes.list", None, Request::List).await? {
                Reply::Procs { items } => Ok(Json(
                    json!({"processes": items.iter().map(info_json).collect::<Vec<_>>()}),
                )
                .into_response()),
                _ => Err(unexpected()),
            }
        }
        .await,
    )
}

async fn kill(State(st): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    finish(
        async {
            let c = ctx(&st, &headers)?;
            let req: PidReq = read_json(body, true).await?;
            let pid = pid(&req.process_id)?;
            let signal = Some(req.signal.unwrap_or(libc_sigterm()));
            match c
                .call(
                    "processes.kill",
                    Some(req.process_id.clone()),
                    Request::Kill { pid, signal },
                )
                .await?
            {
                Reply::Killed { count } => {
                    Ok(Json(json!({"signalled": count > 0})).into_response())
                }
                _ => Err(unexpected()),
            }
        }
        .await,
    )
}

const fn libc_sigterm() -> i32 {
    15
}

#[derive(Debug, Deserialize)]
struct KillAllReq {
    signal: Option<i32>,
}

async fn kill_all(State(st): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    finish(
        async {
            let c = ctx(&st, &headers)?;
            let req: KillAllReq = read_json(body, true).await?;
            let signal = Some(req.signal.unwrap_or(libc_sigterm()));
            match c
                .call("processes.kill-all", None, Request::KillAll { signal })
                .await?
            {
                Reply::Killed { count } => {
                    Ok(Json(json!({"signalled_count": count})).into_response())
                }
                _ => Err(unexpected()),
            }
        }
        .await,
    )
}

async fn logs(State(st): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    finish(
        async {
            let c = ctx(&st, &headers)?;
            let req: PidReq = read_json(body, true).await?;
            let pid = pid(&req.process_id)?;
            let mut stream =
                c.st.engine
                    .agent_stream(
                        &c.principal,
                        c.id,
                        Request::Logs {
                            pid,
                            follow: req.follow,
                            from_seq: req.cursor,
                        },
                    )
                    .await?;
            if req.follow {
                // Errors must be HTTP statuses: the SDK's follow accepts no error frames. Peek the
                // first event so an unknown process is a 404.
                return match stream.next().await {
                    Some(Ok(Reply::Error { code, message })) => Err(agent_error(&code, message)),
                    Some(Ok(first)) => {
                        let first_frame = match &first {
                            Reply::Output { stream, data, .. } => {
                                Some(line(json!({"type": stream, "data": data})))
                            }
                            Reply::Exit(info) => Some(line(exit_frame(info))),
                            _ => None,
                        };
                        let ended = matches!(first, Reply::Exit(_) | Reply::End);
                        let rest = follow_frames(
                            Follow {
                                ctx: c,
                                stream,
                                pid,
                                deadline: None,
                                timeout_ms: None,
                                done: ended,
                                last_sent: tokio::time::Instant::now(),
                                tail: OutputTail::default(),
                            },
                            false,
                        );
                        let head = futures_util::stream::iter(first_frame.map(Ok));
                        Ok(ndjson(futures_util::StreamExt::chain(head, rest)))
                    }
                    _ => Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        "lost the connection to the sandbox",
                    )),
                };
            }
            let mut entries = Vec::new();
            let mut cursor = req.cursor.unwrap_or(0);
            let mut state = "running";
            while let Some(ev) = stream.next().await {
                match ev.map_err(|e| ApiError::from(sandboxd_engine::EngineError::from(e)))? {
                    Reply::Output { seq, stream, data } => {
                        let bytes = B64.decode(data).unwrap_or_default();
                        entries.push(
                            json!({"stream": stream, "data": String::from_utf8_lossy(&bytes)}),
                        );
                        cursor = seq + 1;
                    }
                    Reply::Exit(_) => state = "exited",
                    Reply::Error { code, message } => return Err(agent_error(&code, message)),
                    _ => break,
                }
            }
            Ok(Json(
                json!({"entries": entries, "cursor": cursor, "dropped": false, "state": state}),
            )
            .into_response())
        }
        .await,
    )
}

fn entry_json(f: &FileInfo) -> Value {
    let (t, ch) = match f.kind.as_str() {
        "dir" => ("directory", 'd'),
        "symlink" => ("symlink", 'l'),
        _ => ("file", '-'),
    };
    let mut perms = String::from(ch);
    for shift in [6, 3, 0] {
        let bits = (f.mode >> shift) & 7;
        perms.push(if bits & 4 != 0 { 'r' } else { '-' });
        perms.push(if bits & 2 != 0 { 'w' } else { '-' });
        perms.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    let modified = DateTime::<Utc>::from_timestamp_millis(f.modified_ms as i64).unwrap_or_default();
    json!({
        "name": f.name,
        "type": t,
        "path": f.path,
        "size": f.size,
        "mode": f.mode,
        "permissions": perms,
        "modified_time": crate::neev::ts(modified),
        "symlink_target": f.symlink_target,
    })
}

#[derive(Debug, Deserialize)]
struct PathReq {
    path: String,
    cwd: Option<String>,
    #[serde(default)]
    recursive: bool,
    max_count: Option<usize>,
}

async fn write(
    State(st): State<AppState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Body,
) -> Response {
    finish(
        async {
            let c = ctx(&st, &headers)?;
            let pairs: Vec<(String, String)> = crate::query::pairs(q.as_deref());
            let path = pairs
                .iter()
                .find(|(k, _)| k == "path")
                .map(|(_, v)| v.clone())
                .ok_or_else(|| ApiError::invalid("path", "query parameter is required"))?;
            let cwd = pairs
                .iter()
                .find(|(k, _)| k == "cwd")
                .map(|(_, v)| v.clone());
            let data = read_capped(body, MAX_FILE_BYTES).await?;
            let full = resolve_path(&path, cwd.as_deref());
            let n = data.len();
            let req = Request::WriteFile {
                path: full.clone(),
                data: B64.encode(&data),
                mode: None,
                append: false,
                make_parents: true,
            };
            match c.call("files.write", Some(full), req).await? {
                Reply::Ok => Ok(Json(json!({"bytes_written": n})).into_response()),
                _ => Err(unexpected()),
            }
        }
        .await,
    )
}

async fn read(State(st): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    finish(
        async {
            let c = ctx(&st, &headers)?;
            let req: PathReq = read_json(body, true).await?;
            let full = resolve_path(&req.path, req.cwd.as_deref());
            match c
                .call(
                    "files.read",
                    Some(full.clone()),
                    Request::ReadFile {
                        path: full,
                        offset: None,
                        length: None,
                    },
                )
                .await?
            {
                Reply::File { data, .. } => {
                    let bytes = B64.decode(data).map_err(|_| unexpected())?;
                    Ok(
                        ([(header::CONTENT_TYPE, "application/octet-stream")], bytes)
                            .into_response(),
                    )
                }
                _ => Err(unexpected()),
            }
        }
        .await,
    )
}

async fn stat_entry(c: &Ctx, path: String) -> Result<FileInfo, ApiError> {
    match c
        .call("files.stat", Some(path.clone()), Request::Stat { path })
        .await?
    {
        Reply::Stat(i) => Ok(i),
        _ => Err(unexpected()),
    }
}

async fn list_files(State(st): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    finish(
        async {
            let c = ctx(&st, &headers)?;
            let req: PathReq = read_json(body, true).await?;
            let full = resolve_path(&req.path, req.cwd.as_deref());
            let depth = if req.recursive { 64 } else { 1 };
            match c.call("files.list", Some(full.clone()), Request::ListDir { path: full, depth: Some(depth) }).await? {
                Reply::Entries { items } => {
                    let max = req.max_count.unwrap_or(usize::MAX);
                    Ok(Json(json!({"entries": items.iter().take(max).map(entry_json).collect::<Vec<_>>()})).into_response())
                }
                _ => Err(unexpected()),
            }
        }
        .await,
    )
}

async fn stat(State(st): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    finish(
        async {
            let c = ctx(&st, &headers)?;
            let req: PathReq = read_json(body, true).await?;
            let info = stat_entry(&c, resolve_path(&req.path, req.cwd.as_deref())).await?;
            Ok(Json(json!({"entry": entry_json(&info)})).into_response())
        }
        .await,
    )
}

async fn exists(State(st): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    finish(
        async {
            let c = ctx(&st, &headers)?;
            let req: PathReq = read_json(body, true).await?;
            let e = match stat_entry(&c, resolve_path(&req.path, req.cwd.as_deref())).await {
                Ok(_) => true,
                Err(e) if e.status == StatusCode::NOT_FOUND => false,
                Err(e) => return Err(e),
            };
            Ok(Json(json!({"exists": e})).into_response())
        }
        .await,
    )
}

async fn mkdir(State(st): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    finish(
        async {
            let c = ctx(&st, &headers)?;
            let req: PathReq = read_json(body, true).await?;
            let full = resolve_path(&req.path, req.cwd.as_deref());
            c.call(
                "files.mkdir",
                Some(full.clone()),
                Request::Mkdir {
                    path: full.clone(),
                    parents: true,
                    mode: None,
                },
            )
            .await?;
            let info = stat_entry(&c, full).await?;
            Ok(Json(json!({"entry": entry_json(&info)})).into_response())
        }
        .await,
    )
}

#[derive(Debug, Deserialize)]
struct MoveReq {
    source: String,
    destination: String,
    cwd: Option<String>,
}

async fn move_file(State(st): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    finish(
        async {
            let c = ctx(&st, &headers)?;
            let req: MoveReq = read_json(body, true).await?;
            let from = resolve_path(&req.source, req.cwd.as_deref());
            let to = resolve_path(&req.destination, req.cwd.as_deref());
            c.call(
                "files.move",
                Some(format!("{from} -> {to}")),
                Request::Rename {
                    from,
                    to: to.clone(),
                },
            )
            .await?;
            let info = stat_entry(&c, to).await?;
            Ok(Json(json!({"entry": entry_json(&info)})).into_response())
        }
        .await,
    )
}

async fn remove(State(st): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    finish(
        async {
            let c = ctx(&st, &headers)?;
            let req: PathReq = read_json(body, true).await?;
            let full = resolve_path(&req.path, req.cwd.as_deref());
            c.call(
                "files.remove",
                Some(full.clone()),
                Request::Remove {
                    path: full,
                    recursive: req.recursive,
                },
            )
            .await?;
            Ok(Json(json!({})).into_response())
        }
        .await,
    )
}

#[derive(Debug, Deserialize)]
struct WatchReq {
    path: String,
    cwd: Option<String>,
    #[serde(default)]
    recursive: bool,
    timeout_ms: Option<u64>,
}

/// A watch's agent stream, turned into the SDK's frames.
struct Watching {
    ctx: Ctx,
    stream: ReplyStream,
    last_sent: tokio::time::Instant,
}

/// `POST /v1/files/watch`: ndjson `{"type","path","entry"}` lines, one per change, until
/// `timeout_ms` passes or the client leaves (the agent then drops its inotify watches). A
/// watch that fell behind gets a `write` on the watched path itself: rescan it.
async fn watch(State(st): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    finish(
        async {
            let c = ctx(&st, &headers)?;
            let req: WatchReq = read_json(body, false).await?;
            let full = resolve_path(&req.path, req.cwd.as_deref());
            let started = std::time::Instant::now();
            let mut stream =
                c.st.engine
                    .agent_stream(
                        &c.principal,
                        c.id,
                        Request::Watch {
                            path: full.clone(),
                            recursive: req.recursive,
                            timeout_ms: req.timeout_ms,
                        },
                    )
                    .await?;
            let first = stream.next().await;
            let reason = match &first {
                Some(Ok(Reply::Ok)) => None,
                Some(Ok(Reply::Error { code, .. })) => Some(code.clone()),
                _ => Some("unavailable".to_string()),
            };
            let ms = started.elapsed().as_millis() as u64;
            c.st.engine
                .audit_event(c.id, "files.watch", None, Some(full), reason, ms);
            match first {
                Some(Ok(Reply::Ok)) => {}
                Some(Ok(Reply::Error { code, message })) => {
                    return Err(agent_error(&code, message))
                }
                _ => return Err(unexpected()),
            }
            let w = Watching {
                ctx: c,
                stream,
                last_sent: tokio::time::Instant::now(),
            };
            Ok(ndjson(futures_util::stream::unfold(
                w,
                |mut w| async move {
                    loop {
                        match tokio::time::timeout(LIVENESS, w.stream.next()).await {
                            Err(_) => {
                                if !w.ctx.st.engine.is_running(w.ctx.id) {
                                    return None;
                                }
                                if w.last_sent.elapsed() >= KEEPALIVE {
                                    w.last_sent = tokio::time::Instant::now();
                                    return Some((Ok(Bytes::from_static(b"\n")), w));
                                }
                            }
                            Ok(Some(Ok(Reply::WatchEvent(e)))) => {
                                w.last_sent = tokio::time::Instant::now();
                                return Some((Ok(line(watch_frame(&e))), w));
                            }
                            Ok(Some(Ok(Reply::End))) | Ok(None) | Ok(Some(Err(_))) => return None,
                            Ok(Some(Ok(_))) => {}
                        }
                    }
                },
            )))
        }
        .await,
    )
}

fn watch_frame(e: &sandboxd_agent::proto::WatchEvent) -> Value {
    let mut v = json!({"type": e.kind, "path": e.path});
    if let Some(entry) = &e.entry {
        v["entry"] = entry_json(entry);
    }
    if e.overflow {
        v["overflow"] = json!(true);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_message_carries_the_output_tail() {
        let mut t = OutputTail::default();
        t.push("stdout", &B64.encode("before\n"));
        assert_eq!(
            t.message(500),
            "command timed out after 500 ms and was killed\n--- stdout before the deadline ---\nbefore\n"
        );
        t.push("stderr", &B64.encode(vec![b'e'; TAIL_BYTES + 3]));
        let m = t.message(500);
        assert!(m.contains(&format!(
            "--- stderr before the deadline, last {TAIL_BYTES} bytes ---"
        )));
    }

    #[test]
    fn shell_lines_and_argv() {
        assert_eq!(
            argv("echo hi", vec![]).unwrap(),
            ["/bin/sh", "-c", "echo hi"]
        );
        assert_eq!(argv("echo", vec!["a".into()]).unwrap(), ["echo", "a"]);
        assert!(argv("  ", vec![]).is_err());
    }

    #[test]
    fn paths_resolve_against_the_workspace() {
        assert_eq!(resolve_path("a.txt", None), "/workspace/a.txt");
        assert_eq!(resolve_path("./a.txt", Some("/tmp")), "/tmp/a.txt");
        assert_eq!(resolve_path("/etc/x", Some("/tmp")), "/etc/x");
        assert_eq!(resolve_path(".", None), "/workspace");
        assert_eq!(resolve_path("b", Some("sub")), "/workspace/sub/b");
    }

    #[test]
    fn env_must_be_key_value() {
        assert_eq!(
            env_pairs(Some(vec!["A=1=2".into()])).unwrap(),
            [("A".to_string(), "1=2".to_string())]
        );
        assert!(env_pairs(Some(vec!["A".into()])).is_err());
        assert!(env_pairs(Some(vec!["1A=x".into()])).is_err());
    }

    #[test]
    fn entries_render_permissions() {
        let f = FileInfo {
            name: "a".into(),
            path: "/a".into(),
            kind: "dir".into(),
            size: 0,
            mode: 0o755,
            modified_ms: 0,
            symlink_target: None,
            uid: 0,
            gid: 0,
        };
        let v = entry_json(&f);
        assert_eq!(v["permissions"], "drwxr-xr-x");
        assert_eq!(v["type"], "directory");
        assert_eq!(v["mode"], 0o755);
    }
}
