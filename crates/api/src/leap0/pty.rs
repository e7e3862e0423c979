//! Leap0 terminals: `GET|POST /v1/sandbox/{id}/pty`, `GET|DELETE …/pty/{session}`,
//! `POST …/pty/{session}/resize`, and the WebSocket `GET …/pty/{session}/connect` carrying raw
//! terminal bytes both ways. Sessions live in the sandbox's agent: a client may leave and
//! reattach by id and sees the screen's scrollback.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use sandboxd_agent::proto::{Reply, Request, SessionInfo, SessionSpec};
use serde::Deserialize;
use serde_json::{json, Value};

use super::fs::{abs, Target};
use super::L0Result;
use crate::body::read_json;
use crate::error::ApiError;
use crate::terminal::{self, Framing};
use crate::AppState;

pub fn routes() -> Router<AppState> {
    let p = "/v1/sandbox/{id}/pty";
    Router::new()
        .route(p, get(list).post(create))
        .route(&format!("{p}/{{session}}"), get(get_one).delete(delete))
        .route(&format!("{p}/{{session}}/resize"), post(resize))
        .route(&format!("{p}/{{session}}/connect"), get(connect))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateReq {
    id: Option<String>,
    cols: Option<i64>,
    rows: Option<i64>,
    cwd: Option<String>,
    envs: Option<BTreeMap<String, String>>,
    lazy_start: Option<bool>,
}

fn dim(v: Option<i64>, field: &str) -> Result<Option<u16>, ApiError> {
    match v {
        None => Ok(None),
        Some(n) if (1..=1000).contains(&n) => Ok(Some(n as u16)),
        Some(_) => Err(ApiError::invalid(field, "must be between 1 and 1000")),
    }
}

pub(crate) fn view(i: &SessionInfo) -> Value {
    let envs: BTreeMap<&str, &str> = i
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    json!({
        "id": i.id,
        "cwd": i.cwd,
        "envs": envs,
        "cols": i.cols,
        "rows": i.rows,
        "created_at": super::dto::ts(
            chrono::DateTime::from_timestamp_millis(i.created_at_ms as i64).unwrap_or_default()
        ),
        "active": i.running || (i.lazy && !i.started),
        "lazy_start": i.lazy,
        "running": i.running,
        "exit_code": i.exit_code,
    })
}

async fn session_call(
    t: &Target,
    tool: &str,
    session: &str,
    req: Request,
) -> Result<Reply, ApiError> {
    let reply =
        t.st.engine
            .agent_call(&t.p, t.id, tool, Some(session.to_string()), req)
            .await?;
    match reply {
        Reply::Error { code, message } => Err(terminal::session_error(&code, message)),
        r => Ok(r),
    }
}

fn one(reply: Reply) -> L0Result {
    match reply {
        Reply::Session(i) => Ok(Json(view(&i)).into_response()),
        _ => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "internal",
            "unexpected reply from the sandbox agent",
        )
        .into()),
    }
}

async fn create(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> L0Result {
    let req: CreateReq = read_json(body, true).await?;
    let mut env = Vec::new();
    for (k, v) in req.envs.unwrap_or_default() {
        sandboxd_core::validate::env_name(&format!("envs.{k}"), &k)?;
        env.push((k, v));
    }
    if let Some(sid) = &req.id {
        if sid.trim().is_empty() {
            return Err(ApiError::invalid("id", "must not be empty").into());
        }
    }
    let spec = SessionSpec {
        id: req.id.map(|s| s.trim().to_string()),
        argv: None,
        env,
        cwd: req.cwd.as_deref().map(|c| abs("cwd", c)).transpose()?,
        pty: true,
        cols: dim(req.cols, "cols")?,
        rows: dim(req.rows, "rows")?,
        term: None,
        lazy: req.lazy_start.unwrap_or(false),
        kill_on_detach: false,
    };
    let t = Target::new(&st, &headers, &id).await?;
    let target = spec.id.clone().unwrap_or_default();
    match session_call(&t, "pty.create", &target, Request::SessionCreate(spec)).await? {
        Reply::Session(i) => Ok((StatusCode::CREATED, Json(view(&i))).into_response()),
        _ => one(Reply::Ok),
    }
}

async fn list(State(st): State<AppState>, Path(id): Path<String>, headers: HeaderMap) -> L0Result {
    let t = Target::new(&st, &headers, &id).await?;
    match session_call(&t, "pty.list", "", Request::SessionList).await? {
        Reply::Sessions { items } => Ok(Json(json!({
            "items": items.iter().filter(|i| i.pty).map(view).collect::<Vec<_>>(),
        }))
        .into_response()),
        r => one(r),
    }
}

async fn get_one(
    State(st): State<AppState>,
    Path((id, session)): Path<(String, String)>,
    headers: HeaderMap,
) -> L0Result {
    let t = Target::new(&st, &headers, &id).await?;
    one(session_call(
        &t,
        "pty.get",
        &session,
        Request::SessionGet {
            id: session.clone(),
        },
    )
    .await?)
}

async fn delete(
    State(st): State<AppState>,
    Path((id, session)): Path<(String, String)>,
    headers: HeaderMap,
) -> L0Result {
    let t = Target::new(&st, &headers, &id).await?;
    let req = Request::SessionKill {
        id: session.clone(),
        signal: Some(9),
        remove: true,
    };
    session_call(&t, "pty.delete", &session, req).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResizeReq {
    cols: i64,
    rows: i64,
}

async fn resize(
    State(st): State<AppState>,
    Path((id, session)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> L0Result {
    let req: ResizeReq = read_json(body, false).await?;
    let cols = dim(Some(req.cols), "cols")?.unwrap_or(80);
    let rows = dim(Some(req.rows), "rows")?.unwrap_or(24);
    let t = Target::new(&st, &headers, &id).await?;
    let req = Request::SessionResize {
        id: session.clone(),
        cols,
        rows,
    };
    one(session_call(&t, "pty.resize", &session, req).await?)
}

async fn connect(
    State(st): State<AppState>,
    Path((id, session)): Path<(String, String)>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> L0Result {
    let t = Target::new(&st, &headers, &id).await?;
    let (reply, stream) = st
        .engine
        .session_attach(
            &t.p,
            t.id,
            "pty.connect",
            Request::SessionAttach { id: session },
        )
        .await?;
    let info = terminal::expect_session(reply)?;
    let (reader, writer) = stream
        .ok_or_else(|| ApiError::new(StatusCode::BAD_GATEWAY, "internal", "no session stream"))?;
    Ok(ws
        .on_upgrade(move |socket| terminal::bridge(socket, info, reader, writer, Framing::Leap0))
        .into_response())
}
