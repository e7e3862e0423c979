//! Leap0 snapshots: create (named, with memory), restore into a new sandbox by name, list,
//! delete.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use sandboxd_core::SnapshotStatus;
use sandboxd_engine::CreateSnapshot;
use serde_json::json;

use super::{caller, dto, generated_name, sandbox_id, with_policy_warning, L0Result};
use crate::body::read_json;
use crate::error::ApiError;
use crate::AppState;

pub fn routes() -> axum::Router<AppState> {
    Router::new()
        .route("/v1/sandbox/{id}/snapshot/create", post(create))
        // The SDK calls `restore`; the published docs call it `resume`.
        .route("/v1/snapshot/restore", post(restore))
        .route("/v1/snapshot/resume", post(restore))
        .route("/v1/snapshot/{id}", delete(remove))
        .route("/v1/snapshots", get(list))
}

async fn create(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> L0Result {
    let (p, t) = caller(&st, &headers)?;
    let id = sandbox_id(&id)?;
    let req: dto::SnapshotReq = read_json(body, true).await?;
    let name = match req.name.as_deref().map(str::trim) {
        Some(n) => {
            dto::snapshot_name("name", n)?;
            n.to_string()
        }
        None => format!("snap-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
    };
    // A paused sandbox is resumed first, as any request to it would.
    st.engine.get_sandbox(&t, id)?;
    st.engine.running_sandbox(&p, id).await?;
    let snap = st
        .engine
        .create_snapshot(
            &p,
            &t,
            id,
            CreateSnapshot {
                name: Some(name),
                include_memory: true,
                retain_for: None,
            },
        )
        .await?;
    if snap.status != SnapshotStatus::Ready {
        let msg = snap
            .error_message
            .unwrap_or_else(|| "snapshot capture failed".into());
        return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", msg).into());
    }
    if req.kill_sandbox_after.unwrap_or(false) {
        st.engine.delete_sandbox(&t, id).await?;
    }
    Ok((StatusCode::CREATED, Json(dto::snapshot_view(&snap))).into_response())
}

async fn restore(
    State(st): State<AppState>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> L0Result {
    let (p, t) = caller(&st, &headers)?;
    let req: dto::RestoreReq = read_json(body, false).await?;
    let name = req.snapshot_name.trim();
    if name.is_empty() || name.len() > 64 {
        return Err(ApiError::invalid("snapshot_name", "must be 1-64 characters").into());
    }
    let timeout = dto::timeout_secs(req.timeout, req.timeout_min)?;
    let policy = dto::network_policy(req.network_policy.as_ref())?;
    let snap = st.engine.find_snapshot(&t, name)?;
    let sb = st
        .engine
        .restore_as_new(&p, &t, snap.id, generated_name())
        .await?;
    if let Some(p) = &policy {
        st.engine
            .update_egress(&t, sb.id, sandboxd_engine::EgressUpdate::Leap0(p.clone()))
            .await?;
    }
    let sb = st.engine.set_lifetime(
        &t,
        sb.id,
        Some(timeout),
        req.auto_pause.unwrap_or(false),
        None,
    )?;
    Ok(with_policy_warning(
        (StatusCode::CREATED, Json(dto::sandbox_view(&sb))).into_response(),
        policy.as_ref(),
    ))
}

async fn remove(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
) -> L0Result {
    let (_, t) = caller(&st, &headers)?;
    let snap = st.engine.find_snapshot(&t, &id)?;
    st.engine.delete_snapshot(&t, snap.id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list(
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
    headers: axum::http::HeaderMap,
) -> L0Result {
    let (_, t) = caller(&st, &headers)?;
    let pairs = crate::query::pairs(q.as_deref());
    let pg = super::paging(&pairs, &["created_at", "template_id"])?;
    let query = pairs
        .iter()
        .rev()
        .find(|(k, _)| k == "query")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    if query.len() > 64 {
        return Err(ApiError::invalid("query", "must be at most 64 characters").into());
    }
    let mut all: Vec<_> = st
        .engine
        .list_snapshots(&t, None, 0, u64::MAX >> 1)?
        .items
        .into_iter()
        .filter(|s| query.is_empty() || s.name.as_deref().is_some_and(|n| n.contains(query)))
        .collect();
    if pg.sort == "template_id" {
        all.sort_by(|a, b| a.template_id.cmp(&b.template_id));
    }
    let (items, total) = pg.apply(all);
    Ok(Json(json!({
        "items": items.iter().map(dto::snapshot_view).collect::<Vec<_>>(),
        "total_items": total,
    }))
    .into_response())
}
