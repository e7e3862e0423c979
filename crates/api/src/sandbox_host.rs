//! Sandbox hosts (`--sandbox-domain`), as the Leap0 SDK calls them:
//! `https://{sandbox_id}.{domain}/…` serves the sandbox's code interpreter (`/healthz`,
//! `/contexts`, `/execute`, `/execute/async`), and `https://{sandbox_id}-{port}.{domain}/…` is
//! the sandbox's port (`invoke_url`, `websocket_url`). Both take the API key like the API
//! (`Authorization` or `Leap0-Authorization`), and a key reaches only its own tenant's
//! sandboxes.

use std::convert::Infallible;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream;
use sandboxd_agent::proto::{ContextInfo, Reply, Request as AgentRequest};
use sandboxd_core::{Principal, SandboxId};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::body::read_json;
use crate::error::{ApiError, Dialect};
use crate::AppState;

/// Default and largest time a cell may run, in ms.
const EXEC_DEFAULT_MS: u64 = 30_000;
const EXEC_MAX_MS: u64 = 24 * 3600 * 1000;

/// What a sandbox host name addresses.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HostTarget {
    Interpreter(SandboxId),
    Port(SandboxId, u16),
}

/// `<uuid>.<domain>` or `<uuid>-<port>.<domain>` (any port on the Host header; case-insensitive).
pub(crate) fn parse_host(host: &str, domain: &str) -> Option<Result<HostTarget, ()>> {
    let name = host.rsplit_once(':').map_or(host, |(n, p)| {
        if p.bytes().all(|b| b.is_ascii_digit()) {
            n
        } else {
            host
        }
    });
    let name = name.to_ascii_lowercase();
    let label = name.strip_suffix(domain)?.strip_suffix('.')?;
    if label.is_empty() || label.contains('.') {
        return Some(Err(()));
    }
    let (id, port) = match label.get(36..) {
        None | Some("") => (label, None),
        Some(rest) => (&label[..36], Some(rest.strip_prefix('-').ok_or(()))),
    };
    let Some(id) = SandboxId::parse(id) else {
        return Some(Err(()));
    };
    Some(match port {
        None => Ok(HostTarget::Interpreter(id)),
        Some(Ok(p)) => match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(HostTarget::Port(id, n)),
            _ => Err(()),
        },
        Some(Err(())) => Err(()),
    })
}

/// The domain as configured, without a port and dots at the ends, lower case.
pub fn domain_host(domain: &str) -> String {
    let d = domain.trim().trim_matches('/');
    let d = d.rsplit_once(':').map_or(d, |(n, p)| {
        if p.bytes().all(|b| b.is_ascii_digit()) {
            n
        } else {
            d
        }
    });
    d.trim_matches('.').to_ascii_lowercase()
}

fn err(e: impl Into<ApiError>) -> Response {
    e.into().in_dialect(Dialect::Leap0).into_response()
}

pub(crate) async fn by_host(
    State(st): State<AppState>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(domain) = &st.sandbox_domain {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .or_else(|| req.uri().authority().map(|a| a.to_string()));
        if let Some(t) = host.and_then(|h| parse_host(&h, domain)) {
            return match t {
                Err(()) => err(ApiError::not_found("no such sandbox host")),
                Ok(t) => serve(&st, t, req).await.unwrap_or_else(err),
            };
        }
    }
    next.run(req).await
}

async fn serve(st: &AppState, t: HostTarget, mut req: Request) -> Result<Response, ApiError> {
    let p = crate::leap0::principal(st, req.headers())?;
    match t {
        HostTarget::Port(id, port) => {
            st.engine.get_sandbox(&p.default_tenant(), id)?;
            let sb = st.engine.running_sandbox(&p, id).await?;
            if port == sandboxd_agent::proto::AGENT_PORT {
                return Err(ApiError::invalid("port", "this port is not published"));
            }
            let net = sb.net.ok_or_else(|| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "sandbox has no network",
                )
            })?;
            let addr = std::net::SocketAddr::new(net.sandbox_ip().into(), port);
            // Our key is not the sandbox server's business.
            req.headers_mut().remove(header::AUTHORIZATION);
            req.headers_mut().remove("leap0-authorization");
            let path = req.uri().path().trim_start_matches('/').to_string();
            Ok(crate::preview::proxy(addr, &path, None, req).await)
        }
        HostTarget::Interpreter(id) => {
            st.engine.get_sandbox(&p.default_tenant(), id)?;
            st.engine.running_sandbox(&p, id).await?;
            let path = req.uri().path().trim_end_matches('/').to_string();
            let method = req.method().clone();
            let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
            let body = req.into_body();
            let i = Interp { st, p: &p, id };
            match (&method, segs.as_slice()) {
                (&Method::GET, ["healthz"] | ["health"]) => i.health().await,
                (&Method::POST, ["contexts"]) => i.create(body).await,
                (&Method::GET, ["contexts"]) => i.list().await,
                (&Method::GET, ["contexts", c]) => i.get(c).await,
                (&Method::DELETE, ["contexts", c]) => i.delete(c).await,
                (&Method::POST, ["execute"]) => i.execute(body).await,
                (&Method::POST, ["execute", "async"]) => i.execute_stream(body).await,
                (_, ["healthz" | "health" | "contexts" | "execute"])
                | (_, ["contexts", _])
                | (_, ["execute", "async"]) => Err(ApiError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    "method not allowed on this route",
                )),
                _ => Err(ApiError::not_found("no such route on the sandbox host")),
            }
        }
    }
}

struct Interp<'a> {
    st: &'a AppState,
    p: &'a Principal,
    id: SandboxId,
}

fn context_view(c: &ContextInfo) -> Value {
    json!({"id": c.id, "language": c.language, "cwd": c.cwd})
}

fn agent_err(code: &str, message: String, field: &str) -> ApiError {
    match code {
        "not_found" => ApiError::not_found(message),
        "exists" => ApiError::new(StatusCode::CONFLICT, "conflict", message),
        "limit" => ApiError::new(StatusCode::CONFLICT, "limit_exceeded", message),
        "invalid" => ApiError::invalid(field, message),
        "unavailable" => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message),
        "gone" => ApiError::new(StatusCode::GONE, "gone", message),
        _ => ApiError::new(StatusCode::BAD_GATEWAY, "internal", message),
    }
}

fn unexpected() -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "internal",
        "unexpected reply from the sandbox agent",
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateContext {
    language: Option<String>,
    cwd: Option<String>,
    id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecuteReq {
    code: String,
    language: Option<String>,
    context_id: Option<String>,
    env_vars: Option<std::collections::HashMap<String, String>>,
    timeout_ms: Option<u64>,
}

impl ExecuteReq {
    fn into_agent(self) -> Result<(Option<String>, AgentRequest), ApiError> {
        let timeout = self.timeout_ms.unwrap_or(EXEC_DEFAULT_MS);
        if !(1..=EXEC_MAX_MS).contains(&timeout) {
            return Err(ApiError::invalid(
                "timeout_ms",
                format!("must be between 1 and {EXEC_MAX_MS}"),
            ));
        }
        language_ok(self.language.as_deref())?;
        if let Some(env) = &self.env_vars {
            for k in env.keys() {
                sandboxd_core::validate::env_name(&format!("env_vars.{k}"), k)?;
            }
        }
        Ok((
            self.context_id.clone(),
            AgentRequest::InterpExecute {
                context: self.context_id,
                language: self.language,
                code: self.code,
                env: self.env_vars,
                timeout_ms: Some(timeout),
            },
        ))
    }
}

fn language_ok(l: Option<&str>) -> Result<(), ApiError> {
    match l {
        None | Some("python") => Ok(()),
        Some(other) => Err(ApiError::invalid(
            "language",
            format!("{other:?} is not available on this node (supported: python)"),
        )),
    }
}

/// Folds a cell's events into Leap0's `CodeExecutionResult`.
#[derive(Default)]
struct Collected {
    items: Vec<Value>,
    stdout: Vec<String>,
    stderr: Vec<String>,
    error: Option<Value>,
}

/// A mime bundle as Leap0's output item.
fn output_item(ev: &Value) -> Value {
    let data = ev
        .get("data")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut item = Map::new();
    item.insert(
        "is_primary".into(),
        ev.get("is_primary").cloned().unwrap_or(Value::Bool(false)),
    );
    let mut extra = Map::new();
    for (mime, v) in data {
        let key = match mime.as_str() {
            "text/plain" => "text",
            "text/html" => "html",
            "text/markdown" => "markdown",
            "image/svg+xml" => "svg",
            "image/png" => "png",
            "image/jpeg" => "jpeg",
            "application/pdf" => "pdf",
            "text/latex" => "latex",
            "application/json" => "json",
            "application/javascript" => "javascript",
            _ => {
                extra.insert(mime, v);
                continue;
            }
        };
        item.insert(key.into(), v);
    }
    if !extra.is_empty() {
        item.insert("extra".into(), Value::Object(extra));
    }
    Value::Object(item)
}

fn traceback_text(ev: &Value) -> String {
    match ev.get("traceback") {
        Some(Value::Array(lines)) => lines
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join("\n"),
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    }
}

impl Collected {
    fn add(&mut self, ev: &Value) {
        let text = || {
            ev.get("text")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        match ev.get("type").and_then(Value::as_str) {
            Some("stdout") => self.stdout.push(text()),
            Some("stderr") => self.stderr.push(text()),
            Some("result") => self.items.push(output_item(ev)),
            Some("error") => {
                self.error = Some(json!({
                    "name": ev.get("name").cloned().unwrap_or_default(),
                    "value": ev.get("value").cloned().unwrap_or_default(),
                    "traceback": traceback_text(ev),
                }))
            }
            _ => {}
        }
    }
}

impl Interp<'_> {
    async fn call(
        &self,
        tool: &str,
        target: Option<String>,
        req: AgentRequest,
    ) -> Result<Reply, ApiError> {
        let reply = self
            .st
            .engine
            .agent_call(self.p, self.id, tool, target, req)
            .await?;
        match reply {
            Reply::Error { code, message } => Err(agent_err(&code, message, "context_id")),
            r => Ok(r),
        }
    }

    async fn health(&self) -> Result<Response, ApiError> {
        match self
            .call("interpreter.health", None, AgentRequest::Ping)
            .await?
        {
            Reply::Pong { .. } => Ok(Json(json!({"status": "ok"})).into_response()),
            _ => Err(unexpected()),
        }
    }

    async fn create(&self, body: Body) -> Result<Response, ApiError> {
        let req: CreateContext = read_json(body, true).await?;
        language_ok(req.language.as_deref())?;
        let cwd = match req.cwd {
            Some(c) if !c.starts_with('/') => {
                return Err(ApiError::invalid("cwd", "must be an absolute path"))
            }
            c => c,
        };
        let r = AgentRequest::InterpCreate {
            id: req.id,
            language: req.language,
            cwd,
        };
        match self.call("interpreter.create_context", None, r).await? {
            Reply::Context(c) => Ok((StatusCode::CREATED, Json(context_view(&c))).into_response()),
            _ => Err(unexpected()),
        }
    }

    async fn list(&self) -> Result<Response, ApiError> {
        match self
            .call("interpreter.list_contexts", None, AgentRequest::InterpList)
            .await?
        {
            Reply::Contexts { items } => Ok(Json(json!({
                "items": items.iter().map(context_view).collect::<Vec<_>>()
            }))
            .into_response()),
            _ => Err(unexpected()),
        }
    }

    async fn get(&self, c: &str) -> Result<Response, ApiError> {
        let r = AgentRequest::InterpGet { id: c.to_string() };
        match self
            .call("interpreter.get_context", Some(c.into()), r)
            .await?
        {
            Reply::Context(c) => Ok(Json(context_view(&c)).into_response()),
            _ => Err(unexpected()),
        }
    }

    async fn delete(&self, c: &str) -> Result<Response, ApiError> {
        let r = AgentRequest::InterpDelete { id: c.to_string() };
        self.call("interpreter.delete_context", Some(c.into()), r)
            .await?;
        Ok(StatusCode::NO_CONTENT.into_response())
    }

    async fn execute(&self, body: Body) -> Result<Response, ApiError> {
        let req: ExecuteReq = read_json(body, false).await?;
        let (context, areq) = req.into_agent()?;
        let started = std::time::Instant::now();
        let (mut s, key) = self
            .st
            .engine
            .agent_stream_pooled(self.p, self.id, areq)
            .await?;
        let mut c = Collected::default();
        let done = loop {
            match s.next().await {
                Some(Ok(Reply::InterpEvent { event })) => c.add(&event),
                Some(Ok(Reply::InterpDone { event })) => break event,
                Some(Ok(Reply::Error { code, message })) => {
                    self.st.engine.agent_pool_put(key, s);
                    self.audit(context.clone(), Some(code.clone()), started);
                    return Err(agent_err(&code, message, "context_id"));
                }
                Some(Ok(_)) => return Err(unexpected()),
                Some(Err(e)) => return Err(sandboxd_engine::EngineError::from(e).into()),
                None => return Err(unexpected()),
            }
        };
        self.st.engine.agent_pool_put(key, s);
        self.audit(context.clone(), None, started);
        Ok(Json(json!({
            "context_id": context.unwrap_or_else(|| sandboxd_agent::interp::DEFAULT_CONTEXT.into()),
            "items": c.items,
            "logs": {"stdout": c.stdout, "stderr": c.stderr},
            "error": c.error,
            "execution_count": done.get("execution_count"),
            "timed_out": done.get("timed_out"),
        }))
        .into_response())
    }

    fn audit(&self, context: Option<String>, reason: Option<String>, started: std::time::Instant) {
        self.st.engine.audit_event(
            self.id,
            "interpreter.execute",
            None,
            context,
            reason,
            started.elapsed().as_millis() as u64,
        );
    }

    /// Server-sent events: `{"type":"stdout"|"stderr","data"}` as output comes,
    /// `{"type":"result","data":<text>}` for results, `{"type":"error","data":<traceback>}`,
    /// and last `{"type":"exit","code":0|1}`.
    async fn execute_stream(&self, body: Body) -> Result<Response, ApiError> {
        let req: ExecuteReq = read_json(body, false).await?;
        let (context, areq) = req.into_agent()?;
        let started = std::time::Instant::now();
        let mut s = self.st.engine.agent_stream(self.p, self.id, areq).await?;
        // The first reply decides between an error status and the stream.
        let first = s.next().await;
        let first = match first {
            Some(Ok(Reply::Error { code, message })) => {
                self.audit(context, Some(code.clone()), started);
                return Err(agent_err(&code, message, "context_id"));
            }
            Some(Ok(r)) => r,
            Some(Err(e)) => return Err(sandboxd_engine::EngineError::from(e).into()),
            None => return Err(unexpected()),
        };
        self.audit(context, None, started);
        let events = stream::unfold((Some(first), Some(s)), |(pending, s)| async move {
            let mut s = s?;
            let reply = match pending {
                Some(r) => Some(Ok(r)),
                None => s.next().await,
            };
            let (event, last) = match reply {
                Some(Ok(Reply::InterpEvent { event })) => (sse_event(&event), false),
                Some(Ok(Reply::InterpDone { event })) => {
                    let ok = event.get("ok").and_then(Value::as_bool).unwrap_or(true);
                    (
                        json!({"type": "exit", "code": if ok { 0 } else { 1 }}),
                        true,
                    )
                }
                Some(Ok(Reply::Error { message, .. })) => {
                    (json!({"envelope": "error", "error": message}), true)
                }
                _ => (
                    json!({"envelope": "error", "error": "the sandbox connection was lost"}),
                    true,
                ),
            };
            let chunk = format!("data: {event}\n\n");
            Some((
                Ok::<_, Infallible>(chunk),
                (None, if last { None } else { Some(s) }),
            ))
        });
        Ok(Response::builder()
            .header(header::CONTENT_TYPE, "text/event-stream")
            .header(header::CACHE_CONTROL, "no-cache")
            .body(Body::from_stream(events))
            .expect("static headers"))
    }
}

fn sse_event(ev: &Value) -> Value {
    let text = ev
        .get("text")
        .cloned()
        .unwrap_or(Value::String(String::new()));
    match ev.get("type").and_then(Value::as_str) {
        Some("stdout") => json!({"type": "stdout", "data": text}),
        Some("stderr") => json!({"type": "stderr", "data": text}),
        Some("error") => json!({"type": "error", "data": traceback_text(ev),
                                "name": ev.get("name"), "value": ev.get("value")}),
        Some("result") => {
            let item = output_item(ev);
            json!({"type": "result", "data": item.get("text").cloned().unwrap_or_default(), "item": item})
        }
        _ => json!({"type": "unknown", "data": ev.to_string()}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names() {
        let id = "0b6f5a9e-2f1c-4c1e-9a55-0123456789ab";
        let d = "sbx.localhost";
        assert_eq!(
            parse_host(&format!("{id}.sbx.localhost:8443"), d),
            Some(Ok(HostTarget::Interpreter(SandboxId::parse(id).unwrap())))
        );
        assert_eq!(
            parse_host(&format!("{}-8000.SBX.localhost", id.to_uppercase()), d),
            Some(Ok(HostTarget::Port(SandboxId::parse(id).unwrap(), 8000)))
        );
        assert_eq!(parse_host("api.example.com", d), None);
        assert_eq!(parse_host("nope.sbx.localhost", d), Some(Err(())));
        assert_eq!(
            parse_host(&format!("{id}-0.sbx.localhost"), d),
            Some(Err(()))
        );
        assert_eq!(
            parse_host(&format!("{id}-99999.sbx.localhost"), d),
            Some(Err(()))
        );
        assert_eq!(domain_host("Sbx.Localhost:8443/"), "sbx.localhost");
    }

    #[test]
    fn results_become_leap0_items() {
        let ev = json!({"type": "result", "is_primary": true,
                        "data": {"text/plain": "42", "image/png": "iVBOR", "x/custom": 1}});
        let item = output_item(&ev);
        assert_eq!(item["text"], "42");
        assert_eq!(item["png"], "iVBOR");
        assert_eq!(item["is_primary"], true);
        assert_eq!(item["extra"]["x/custom"], 1);
        let err = json!({"type": "error", "name": "ZeroDivisionError", "value": "division by zero",
                         "traceback": ["Traceback (most recent call last):", "ZeroDivisionError: division by zero"]});
        let mut c = Collected::default();
        c.add(&err);
        assert!(c.error.unwrap()["traceback"]
            .as_str()
            .unwrap()
            .ends_with("division by zero"));
    }
}
