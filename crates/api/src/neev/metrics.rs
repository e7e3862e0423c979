//! `GET .../sandboxes/{sandbox_id}/metrics?from&to&step` (seed 001, `getSandboxMetrics`): the
//! v1 catalogue of series for one sandbox over a window, downsampled to `step`.

use std::sync::Arc;

use axum::extract::RawQuery;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Extension, Json, Router};
use chrono::{Duration, Utc};
use sandboxd_metrics::{series, Hub};
use serde_json::{json, Value};
use tracing::error;

use super::{parse_time, query_pairs, query_str, ts, InSandbox, P};
use crate::error::ApiError;
use crate::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route(
        &format!("{P}/sandboxes/{{sandbox_id}}/metrics"),
        get(metrics),
    )
}

async fn metrics(
    s: InSandbox,
    hub: Option<Extension<Arc<Hub>>>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let pairs = query_pairs(q.as_deref());
    let to = parse_time(&pairs, "to")?.unwrap_or_else(Utc::now);
    let from = parse_time(&pairs, "from")?.unwrap_or(to - Duration::hours(1));
    if from >= to {
        return Err(ApiError::invalid("from", "must be before to"));
    }
    let requested = match query_str(&pairs, "step") {
        Some(v) => series::parse_step(v).map_err(|m| ApiError::invalid("step", m))?,
        None => series::DEFAULT_STEP_SECS,
    };
    let Some(Extension(hub)) = hub else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "metrics are not enabled on this server",
        ));
    };
    let range = (to - from).num_seconds().max(1) as u64;
    let step = series::clamp_step(requested, range, hub.interval.as_secs().max(1));
    let id = s.sandbox.id.to_string();
    let (from_s, to_s) = (from.timestamp(), to.timestamp());
    let rows = tokio::task::spawn_blocking(move || {
        hub.store
            .range(&id, from.timestamp_millis(), to.timestamp_millis())
    })
    .await
    .map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    })?
    .map_err(|e| {
        error!(error = %e, detail = ?e, "metrics query failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    })?;
    let out = series::downsample(&rows, from_s, to_s, step);
    Ok(Json(json!({
        "sandbox_id": s.sandbox.id,
        "from": ts(from),
        "to": ts(to),
        "step": series::format_step(step),
        "series": out.iter().map(|s| json!({
            "metric": s.metric.key(),
            "unit": s.metric.unit(),
            "points": s.points,
        })).collect::<Vec<_>>(),
    })))
}
