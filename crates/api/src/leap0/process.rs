//! `POST /v1/sandbox/{id}/process/execute`: one shell command, its whole output as JSON.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use sandboxd_agent::proto::{Reply, Request, StartSpec};

use super::fs::unexpected;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::fs::{abs, Target};
use super::L0Result;
use crate::body::read_json;
use crate::error::ApiError;
use crate::AppState;

/// Default and largest `timeout` of an execute, in seconds.
const EXEC_DEFAULT_SECS: i64 = 30;
const EXEC_MAX_SECS: i64 = 24 * 3600;

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/sandbox/{id}/process/execute", post(execute))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecReq {
    command: String,
    cwd: Option<String>,
    envs: Option<BTreeMap<String, String>>,
    timeout: Option<i64>,
}

async fn execute(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> L0Result {
    let req: ExecReq = read_json(body, false).await?;
    if req.command.trim().is_empty() {
        return Err(ApiError::invalid("command", "must not be empty").into());
    }
    let secs = req.timeout.unwrap_or(EXEC_DEFAULT_SECS);
    if !(1..=EXEC_MAX_SECS).contains(&secs) {
        return Err(
            ApiError::invalid("timeout", format!("must be between 1 and {EXEC_MAX_SECS}")).into(),
        );
    }
    let mut env = Vec::new();
    for (k, v) in req.envs.unwrap_or_default() {
        sandboxd_core::validate::env_name(&format!("envs.{k}"), &k)?;
        env.push((k, v));
    }
    let cwd = req.cwd.as_deref().map(|c| abs("cwd", c)).transpose()?;
    let t = Target::new(&st, &headers, &id).await?;
    let spec = StartSpec {
        argv: vec!["/bin/sh".into(), "-c".into(), req.command.clone()],
        env,
        cwd,
        ..Default::default()
    };
    let reply = t
        .call(
            "process.execute",
            &req.command,
            "command",
            Request::Exec {
                spec,
                timeout_ms: Some(secs as u64 * 1000),
            },
        )
        .await?;
    let Reply::Exec {
        info,
        stdout,
        stderr,
        timed_out,
    } = reply
    else {
        return Err(unexpected().into());
    };
    let text = |b: &str| String::from_utf8_lossy(&B64.decode(b).unwrap_or_default()).into_owned();
    let mut stderr = text(&stderr);
    // The process was killed at the deadline: 124, as timeout(1) reports it.
    let exit_code = if timed_out {
        stderr.push_str(&format!(
            "\ncommand timed out after {secs} s and was killed\n"
        ));
        124
    } else {
        info.exit_code
            .unwrap_or_else(|| 128 + info.signal.unwrap_or(0))
    };
    Ok(
        Json(json!({"exit_code": exit_code, "stdout": text(&stdout), "stderr": stderr}))
            .into_response(),
    )
}
