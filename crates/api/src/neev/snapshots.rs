//! NeevCloud snapshot routes (seed 000): create, list (per sandbox and project-wide), get,
//! delete, restore in place (`restore`, and `rollback` as the SDK calls it), fork.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use sandboxd_core::snapshot::{parse_retention, valid_name};
use sandboxd_core::Snapshot;
use sandboxd_engine::CreateSnapshot;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::{page_json, paging, query_pairs, sandbox_view, tenant, ts, InSandbox, P};
use crate::body::read_json;
use crate::error::ApiError;
use crate::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            &format!("{P}/sandboxes/{{sandbox_id}}/snapshots"),
            get(list).post(create),
        )
        .route(&format!("{P}/snapshots"), get(list_project))
        .route(&format!("{P}/usage"), get(usage))
        .route(
            &format!("{P}/snapshots/{{snapshot_id}}"),
            get(get_one).delete(delete),
        )
        .route(
            &format!("{P}/sandboxes/{{sandbox_id}}/restore"),
            post(rollback),
        )
        .route(
            &format!("{P}/sandboxes/{{sandbox_id}}/rollback"),
            post(rollback),
        )
        .route(&format!("{P}/sandboxes/{{sandbox_id}}/fork"), post(fork))
}

pub fn snapshot_view(s: &Snapshot) -> Value {
    json!({
        "id": s.id,
        "sandbox_id": s.sandbox_id,
        "org_id": s.tenant.org,
        "project_id": s.tenant.project,
        "name": s.name,
        "status": s.status.as_str(),
        "include_memory": s.include_memory,
        "snapshot_type": "full",
        "source_region": s.region,
        "sandbox_format_version": 1,
        "restorability": "restorable",
        "size_bytes": s.size_bytes,
        "added_bytes": s.added_bytes,
        "paused_ms": s.paused_ms,
        "error_message": s.error_message,
        "expires_at": s.expires_at.map(ts),
        "created_by": s.created_by,
        "created_at": ts(s.created_at),
        "updated_at": ts(s.updated_at),
    })
}

pub fn snapshot_id(field: &str, s: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(s).map_err(|_| ApiError::invalid(field, "must be a UUID"))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateReq {
    name: Option<String>,
    include_memory: Option<bool>,
    retain_for: Option<String>,
}

async fn create(
    State(st): State<AppState>,
    s: InSandbox,
    body: Body,
) -> Result<Response, ApiError> {
    let req: CreateReq = read_json(body, true).await?;
    if let Some(n) = &req.name {
        if !valid_name(n) {
            return Err(ApiError::invalid("name", "must match ^[a-z0-9-]{1,40}$"));
        }
    }
    let retain_for = match req.retain_for.as_deref() {
        None => None,
        Some(r) => parse_retention(r).ok_or_else(|| {
            ApiError::invalid(
                "retain_for",
                "must be a duration like \"720h\", or \"0\" for no expiry",
            )
        })?,
    };
    let snap = st
        .engine
        .create_snapshot(
            &s.principal,
            &s.tenant,
            s.sandbox.id,
            CreateSnapshot {
                name: req.name,
                include_memory: req.include_memory.unwrap_or(false),
                retain_for,
            },
        )
        .await?;
    Ok((StatusCode::ACCEPTED, Json(snapshot_view(&snap))).into_response())
}

async fn list(
    State(st): State<AppState>,
    s: InSandbox,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let (page, limit) = paging(&query_pairs(q.as_deref()))?;
    let p = st
        .engine
        .list_snapshots(&s.tenant, Some(s.sandbox.id), (page - 1) * limit, limit)?;
    Ok(Json(page_json(
        p.items.iter().map(snapshot_view).collect(),
        p.total,
        page,
        limit,
    )))
}

async fn list_project(
    State(st): State<AppState>,
    Path((org, project)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (_, t) = tenant(&st, &headers, &org, &project)?;
    let (page, limit) = paging(&query_pairs(q.as_deref()))?;
    let p = st
        .engine
        .list_snapshots(&t, None, (page - 1) * limit, limit)?;
    Ok(Json(page_json(
        p.items.iter().map(snapshot_view).collect(),
        p.total,
        page,
        limit,
    )))
}

/// Snapshot storage the project holds now and has held (byte-hours, deleted snapshots included).
async fn usage(
    State(st): State<AppState>,
    Path((org, project)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (_, t) = tenant(&st, &headers, &org, &project)?;
    let u = st.engine.snapshot_usage(&t)?;
    Ok(Json(json!({
        "org_id": t.org,
        "project_id": t.project,
        "snapshots": {
            "count": u.snapshots,
            "storage_bytes": u.bytes,
            "storage_byte_hours": u.byte_hours,
        },
        "as_of": ts(u.as_of),
    })))
}

async fn get_one(
    State(st): State<AppState>,
    Path((org, project, sid)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (_, t) = tenant(&st, &headers, &org, &project)?;
    let snap = st
        .engine
        .get_snapshot(&t, snapshot_id("snapshot_id", &sid)?)?;
    Ok(Json(snapshot_view(&snap)))
}

async fn delete(
    State(st): State<AppState>,
    Path((org, project, sid)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let (_, t) = tenant(&st, &headers, &org, &project)?;
    st.engine
        .delete_snapshot(&t, snapshot_id("snapshot_id", &sid)?)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackReq {
    snapshot_id: String,
}

async fn rollback(
    State(st): State<AppState>,
    s: InSandbox,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let req: RollbackReq = read_json(body, false).await?;
    let snap = snapshot_id("snapshot_id", &req.snapshot_id)?;
    let sb = st.engine.rollback(&s.tenant, s.sandbox.id, snap).await?;
    Ok(Json(sandbox_view(&sb, &st.public_url)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ForkReq {
    name: String,
}

async fn fork(State(st): State<AppState>, s: InSandbox, body: Body) -> Result<Response, ApiError> {
    let req: ForkReq = read_json(body, false).await?;
    sandboxd_core::validate::dns1123_label("name", &req.name)?;
    let new = st
        .engine
        .fork(&s.principal, &s.tenant, s.sandbox.id, req.name)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(sandbox_view(&new, &st.public_url)),
    )
        .into_response())
}
