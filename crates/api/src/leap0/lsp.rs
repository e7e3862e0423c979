//! Leap0 language servers: `POST /v1/sandbox/{id}/lsp/{start,stop,did-open,did-close,
//! completions,document-symbols}`. A server (pyright for Python, typescript-language-server for
//! TypeScript and JavaScript) runs inside the sandbox as an agent session with pipes; this side
//! speaks LSP's JSON-RPC (`Content-Length` framing) over the session's byte stream. One server
//! runs per (sandbox, server, project directory), kept in a registry in this process.
//!
//! A server's connection closes when it is stopped or dropped from the registry, and the agent
//! then kills it (`kill_on_detach`). A server that exits is reported once, then forgotten; one
//! started before the sandbox last (re)started or resumed is forgotten as well.

mod rpc;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use sandboxd_agent::proto::{Reply, Request, SessionSpec};
use sandboxd_core::{SandboxId, Tenant};
use serde::Deserialize;
use serde_json::{json, Value};
use tracing::{debug, info};

use self::rpc::{file_uri, folder, Connection, LspError};
use super::fs::{abs, Target};
use super::{sandbox_id, L0Result};
use crate::body::read_json;
use crate::error::ApiError;
use crate::AppState;

/// How long a server may take to answer `initialize` (node starting inside gVisor, a first
/// scan of the project).
const INIT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a completion or symbol request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest document read from the sandbox.
const MAX_DOCUMENT: u64 = 16 << 20;

pub fn routes() -> Router<AppState> {
    let l = "/v1/sandbox/{id}/lsp";
    Router::new()
        .route(&format!("{l}/start"), post(start))
        .route(&format!("{l}/stop"), post(stop))
        .route(&format!("{l}/did-open"), post(did_open))
        .route(&format!("{l}/did-close"), post(did_close))
        .route(&format!("{l}/completions"), post(completions))
        .route(&format!("{l}/document-symbols"), post(document_symbols))
}

/// Which language server a `language_id` is served by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Pyright,
    TypeScript,
}

impl Kind {
    fn of(language_id: &str) -> Result<Kind, ApiError> {
        match language_id.trim().to_ascii_lowercase().as_str() {
            "python" => Ok(Kind::Pyright),
            "typescript" | "javascript" | "typescriptreact" | "javascriptreact" => {
                Ok(Kind::TypeScript)
            }
            _ => Err(ApiError::invalid(
                "language_id",
                "must be one of python, typescript, javascript",
            )),
        }
    }

    fn program(self) -> &'static str {
        match self {
            Kind::Pyright => "pyright-langserver",
            Kind::TypeScript => "typescript-language-server",
        }
    }

    fn language(self) -> &'static str {
        match self {
            Kind::Pyright => "python",
            Kind::TypeScript => "typescript",
        }
    }

    /// The `languageId` of a document: from its extension where that says more than the
    /// request's `language_id` (a `.tsx` file under a `typescript` server).
    fn document_language(self, language_id: &str, uri: &str) -> String {
        let ext = uri
            .rsplit('/')
            .next()
            .and_then(|n| n.rsplit_once('.'))
            .map(|(_, e)| e);
        match (self, ext) {
            (Kind::TypeScript, Some("ts" | "mts" | "cts")) => "typescript".into(),
            (Kind::TypeScript, Some("tsx")) => "typescriptreact".into(),
            (Kind::TypeScript, Some("js" | "mjs" | "cjs")) => "javascript".into(),
            (Kind::TypeScript, Some("jsx")) => "javascriptreact".into(),
            _ => language_id.trim().to_ascii_lowercase(),
        }
    }
}

/// (sandbox, server, project directory).
type Key = (SandboxId, Kind, String);

#[derive(Default)]
struct Registry {
    servers: Mutex<HashMap<Key, Arc<Server>>>,
    /// Serializes start and stop of one key (a start takes seconds; others go on meanwhile).
    starting: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::default)
}

impl Registry {
    fn start_lock(&self, key: &Key) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.starting.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(key.clone()).or_default().clone()
    }

    fn get(&self, key: &Key) -> Option<Arc<Server>> {
        let m = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        m.get(key).cloned()
    }

    fn insert(&self, key: Key, s: Arc<Server>) {
        let mut m = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        m.insert(key, s);
    }

    /// Forgets the servers of sandboxes that are gone or have restarted since: their
    /// connections may hang rather than close, so nothing else would free them.
    fn prune(&self, st: &AppState) {
        let all: Vec<(Key, Arc<Server>)> = {
            let m = self.servers.lock().unwrap_or_else(|p| p.into_inner());
            m.iter().map(|(k, s)| (k.clone(), s.clone())).collect()
        };
        for (key, s) in all {
            let current = st
                .engine
                .get_sandbox(&s.tenant, key.0)
                .is_ok_and(|sb| sb.lifetime.started_at == s.generation);
            if !current && self.remove(&key, Some(&s)).is_some() {
                debug!(sandbox_id = %key.0, root = %key.2, "forgot the language server of a gone sandbox run");
                s.conn.close();
            }
        }
    }

    /// Removes `key`'s server, but only if it is still `s` when one is given.
    fn remove(&self, key: &Key, s: Option<&Arc<Server>>) -> Option<Arc<Server>> {
        let mut m = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        match (m.get(key), s) {
            (Some(cur), Some(s)) if !Arc::ptr_eq(cur, s) => None,
            _ => m.remove(key),
        }
    }
}

/// One running language server, as the registry keeps it.
struct Server {
    tenant: Tenant,
    /// The sandbox run it was started in (`lifetime.started_at`).
    generation: Option<DateTime<Utc>>,
    open_docs: Mutex<HashSet<String>>,
    conn: Arc<Connection>,
}

/// The sandbox path of a `file://` URI.
fn uri_path(uri: &str) -> Result<String, ApiError> {
    let bad = || ApiError::invalid("uri", "must be a file:// URI of an absolute path");
    let rest = uri.strip_prefix("file://").ok_or_else(bad)?;
    // `file://localhost/x` names `/x` as well.
    let rest = rest.strip_prefix("localhost").unwrap_or(rest);
    if !rest.starts_with('/') {
        return Err(bad());
    }
    let raw = rest.as_bytes();
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let hex = raw
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            let b = hex
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(bad)?;
            out.push(b);
            i += 3;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    let path = String::from_utf8(out).map_err(|_| bad())?;
    if path.contains('\0') {
        return Err(bad());
    }
    Ok(path)
}

/// Starts `kind` in the sandbox and completes the `initialize` handshake.
async fn spawn(
    t: &Target,
    key: &Key,
    generation: Option<DateTime<Utc>>,
) -> Result<Arc<Server>, ApiError> {
    let (_, kind, root) = key;
    let spec = SessionSpec {
        id: Some(format!(
            "lsp-{}-{}",
            kind.language(),
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        )),
        argv: Some(vec![kind.program().into(), "--stdio".into()]),
        env: vec![],
        cwd: Some(root.clone()),
        pty: false,
        cols: None,
        rows: None,
        term: None,
        lazy: false,
        kill_on_detach: true,
    };
    let (reply, stream) =
        t.st.engine
            .session_attach(&t.p, t.id, "lsp.start", Request::SessionOpen(spec))
            .await?;
    match reply {
        Reply::Session(_) => {}
        Reply::Error { code, message } if code == "not_found" => {
            return Err(if message.starts_with("working directory") {
                ApiError::invalid("path_to_project", format!("{root} is not a directory"))
            } else {
                ApiError::invalid(
                    "language_id",
                    format!(
                        "the {} language server ({}) is not installed in this sandbox's template",
                        kind.language(),
                        kind.program()
                    ),
                )
            });
        }
        Reply::Error { code, message } => {
            return Err(crate::terminal::session_error(&code, message))
        }
        _ => return Err(bad_gateway("unexpected reply from the sandbox agent")),
    }
    let (reader, writer) = stream.ok_or_else(|| bad_gateway("no session stream"))?;
    let server = Connection::open(kind.language(), root, t.id, reader, writer);
    let params = json!({
        "processId": null,
        "clientInfo": {"name": "sandboxd"},
        "rootUri": file_uri(root),
        "rootPath": root,
        "workspaceFolders": [folder(root)],
        "capabilities": {
            "workspace": {"configuration": true, "workspaceFolders": true},
            "window": {"workDoneProgress": true},
            "textDocument": {
                "synchronization": {"dynamicRegistration": false, "didSave": false},
                "completion": {
                    "contextSupport": true,
                    "completionItem": {
                        "snippetSupport": false,
                        "documentationFormat": ["markdown", "plaintext"],
                    },
                },
                "documentSymbol": {"hierarchicalDocumentSymbolSupport": true},
                "publishDiagnostics": {},
            },
        },
    });
    let init = server.request("initialize", params, INIT_TIMEOUT).await;
    let init = match init {
        Ok(v) => v,
        Err(e) => {
            server.close();
            return Err(e.into());
        }
    };
    if let Some(err) = init.get("error") {
        server.close();
        return Err(bad_gateway(format!(
            "the {} language server refused initialize: {}",
            kind.language(),
            err.get("message")
                .and_then(Value::as_str)
                .unwrap_or("no message")
        )));
    }
    server.notify("initialized", json!({}))?;
    Ok(Arc::new(Server {
        tenant: t.p.default_tenant(),
        generation,
        open_docs: Mutex::new(HashSet::new()),
        conn: server,
    }))
}

fn bad_gateway(msg: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_GATEWAY, "lsp_error", msg)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerReq {
    language_id: String,
    path_to_project: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DocReq {
    language_id: String,
    path_to_project: String,
    uri: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenReq {
    language_id: String,
    path_to_project: String,
    uri: String,
    text: Option<String>,
    version: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Position {
    line: i64,
    character: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompletionContext {
    trigger_kind: Option<i64>,
    trigger_character: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompletionReq {
    language_id: String,
    path_to_project: String,
    uri: String,
    position: Position,
    context: Option<CompletionContext>,
}

/// The registry key of a request, checked before the sandbox is touched.
fn key_of(id: SandboxId, language_id: &str, path_to_project: &str) -> Result<Key, ApiError> {
    let kind = Kind::of(language_id)?;
    let root = abs("path_to_project", path_to_project.trim())?;
    let trimmed = root.trim_end_matches('/');
    let root = if trimmed.is_empty() {
        "/".to_string()
    } else {
        trimmed.to_string()
    };
    Ok((id, kind, root))
}

/// The run of the sandbox a server belongs to.
fn generation(t: &Target) -> Result<Option<DateTime<Utc>>, ApiError> {
    let sb = t.st.engine.get_sandbox(&t.p.default_tenant(), t.id)?;
    Ok(sb.lifetime.started_at)
}

/// The running server of `key`, or the error that says why there is none.
fn running(t: &Target, key: &Key) -> Result<Arc<Server>, ApiError> {
    let reg = registry();
    let not_running = |extra: &str| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "lsp_not_started",
            format!(
                "no {} language server is running for {}{extra}; call lsp.start first",
                key.1.language(),
                key.2
            ),
        )
    };
    let s = reg.get(key).ok_or_else(|| not_running(""))?;
    if let Some(why) = s.conn.exit_reason() {
        reg.remove(key, Some(&s));
        return Err(LspError::Exited(s.conn.name(), why).into());
    }
    if s.generation != generation(t)? {
        reg.remove(key, Some(&s));
        s.conn.close();
        return Err(not_running(" (the sandbox has restarted since)"));
    }
    Ok(s)
}

async fn start(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> L0Result {
    let req: ServerReq = read_json(body, false).await?;
    let key = key_of(sandbox_id(&id)?, &req.language_id, &req.path_to_project)?;
    let t = Target::new(&st, &headers, &id).await?;
    let reg = registry();
    reg.prune(&st);
    let lock = reg.start_lock(&key);
    let _guard = lock.lock().await;
    if running(&t, &key).is_ok() {
        return Ok(success());
    }
    let gen = generation(&t)?;
    let server = spawn(&t, &key, gen).await?;
    info!(sandbox_id = %t.id, server = key.1.program(), root = %key.2, "language server started");
    reg.insert(key, server);
    Ok(success())
}

async fn stop(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> L0Result {
    let req: ServerReq = read_json(body, false).await?;
    let key = key_of(sandbox_id(&id)?, &req.language_id, &req.path_to_project)?;
    let t = Target::new(&st, &headers, &id).await?;
    let reg = registry();
    let lock = reg.start_lock(&key);
    let _guard = lock.lock().await;
    // Stopping what is not running is done already.
    if let Some(s) = reg.remove(&key, None) {
        s.conn.shutdown().await;
        info!(sandbox_id = %t.id, server = key.1.program(), root = %key.2, "language server stopped");
    }
    Ok(success())
}

fn success() -> axum::response::Response {
    Json(json!({"success": true})).into_response()
}

async fn did_open(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> L0Result {
    let req: OpenReq = read_json(body, false).await?;
    let path = uri_path(&req.uri)?;
    let version = req.version.unwrap_or(1);
    if !(0..=i64::from(i32::MAX)).contains(&version) {
        return Err(ApiError::invalid("version", "must be between 0 and 2147483647").into());
    }
    let key = key_of(sandbox_id(&id)?, &req.language_id, &req.path_to_project)?;
    let t = Target::new(&st, &headers, &id).await?;
    let s = running(&t, &key)?;
    // Without `text`, the document is what the file in the sandbox holds.
    let text = match req.text {
        Some(text) => text,
        None => {
            let data = st
                .engine
                .read_bytes(&t.p, t.id, &path, None, Some(MAX_DOCUMENT + 1))
                .await?;
            if data.len() as u64 > MAX_DOCUMENT {
                return Err(ApiError::invalid("uri", "the file is larger than 16 MiB").into());
            }
            String::from_utf8(data)
                .map_err(|_| ApiError::invalid("uri", "the file is not UTF-8 text"))?
        }
    };
    let uri = req.uri.clone();
    // Opening an open document again replaces it.
    let reopened = !s
        .open_docs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(uri.clone());
    if reopened {
        s.conn.notify(
            "textDocument/didClose",
            json!({"textDocument": {"uri": uri}}),
        )?;
    }
    s.conn.notify(
        "textDocument/didOpen",
        json!({"textDocument": {
            "uri": uri,
            "languageId": key.1.document_language(&req.language_id, &uri),
            "version": version,
            "text": text,
        }}),
    )?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn did_close(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> L0Result {
    let req: DocReq = read_json(body, false).await?;
    uri_path(&req.uri)?;
    let key = key_of(sandbox_id(&id)?, &req.language_id, &req.path_to_project)?;
    let t = Target::new(&st, &headers, &id).await?;
    let s = running(&t, &key)?;
    s.open_docs
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&req.uri);
    s.conn.notify(
        "textDocument/didClose",
        json!({"textDocument": {"uri": req.uri}}),
    )?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn completions(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> L0Result {
    let req: CompletionReq = read_json(body, false).await?;
    uri_path(&req.uri)?;
    let line = coordinate("position.line", req.position.line)?;
    let character = coordinate("position.character", req.position.character)?;
    let mut params = json!({
        "textDocument": {"uri": req.uri},
        "position": {"line": line, "character": character},
    });
    if let Some(c) = req.context {
        let kind = c.trigger_kind.unwrap_or(1);
        if !(1..=3).contains(&kind) {
            return Err(ApiError::invalid("context.trigger_kind", "must be 1, 2 or 3").into());
        }
        let mut ctx = json!({"triggerKind": kind});
        if let Some(ch) = c.trigger_character {
            ctx["triggerCharacter"] = json!(ch);
        }
        params["context"] = ctx;
    }
    let key = key_of(sandbox_id(&id)?, &req.language_id, &req.path_to_project)?;
    let t = Target::new(&st, &headers, &id).await?;
    let s = running(&t, &key)?;
    let reply = s
        .conn
        .request("textDocument/completion", params, REQUEST_TIMEOUT)
        .await?;
    Ok(Json(envelope(reply)).into_response())
}

async fn document_symbols(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> L0Result {
    let req: DocReq = read_json(body, false).await?;
    uri_path(&req.uri)?;
    let key = key_of(sandbox_id(&id)?, &req.language_id, &req.path_to_project)?;
    let t = Target::new(&st, &headers, &id).await?;
    let s = running(&t, &key)?;
    let reply = s
        .conn
        .request(
            "textDocument/documentSymbol",
            json!({"textDocument": {"uri": req.uri}}),
            REQUEST_TIMEOUT,
        )
        .await?;
    Ok(Json(envelope(reply)).into_response())
}

fn coordinate(field: &str, v: i64) -> Result<u32, ApiError> {
    u32::try_from(v).map_err(|_| ApiError::invalid(field, "must be a non-negative integer"))
}

/// The server's response as the spec's envelope: `jsonrpc`, `id`, and `result` or `error`.
fn envelope(reply: Value) -> Value {
    let mut out = json!({"jsonrpc": "2.0", "id": reply.get("id").cloned().unwrap_or(Value::Null)});
    match reply.get("error") {
        Some(e) if !e.is_null() => out["error"] = e.clone(),
        _ => out["result"] = reply.get("result").cloned().unwrap_or(Value::Null),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_and_paths() {
        assert_eq!(uri_path("file:///w/a%20b.py").unwrap(), "/w/a b.py");
        assert_eq!(uri_path("file://localhost/x").unwrap(), "/x");
        assert!(uri_path("http://x/y").is_err());
        assert!(uri_path("file://rel").is_err());
    }

    #[test]
    fn languages() {
        assert_eq!(Kind::of("Python").unwrap(), Kind::Pyright);
        assert_eq!(Kind::of("javascript").unwrap(), Kind::TypeScript);
        assert!(Kind::of("cobol").is_err());
        assert_eq!(
            Kind::TypeScript.document_language("typescript", "file:///a.js"),
            "javascript"
        );
        assert_eq!(
            Kind::Pyright.document_language("python", "file:///a.py"),
            "python"
        );
    }
}
