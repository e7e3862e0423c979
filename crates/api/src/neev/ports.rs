//! NeevCloud preview ports: `GET|POST .../sandboxes/{id}/ports`, `DELETE .../ports/{port}`.
//! An exposed port is served at `<public_url>/p/<slug>/` (see `crate::preview`).

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, get};
use axum::{Json, Router};
use sandboxd_core::PreviewUrl;
use serde_json::{json, Value};

use super::{sandbox_ref, tenant, InSandbox, P};
use crate::body::{int_field, read_json};
use crate::error::ApiError;
use crate::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            &format!("{P}/sandboxes/{{sandbox_id}}/ports"),
            get(list).post(expose),
        )
        .route(
            &format!("{P}/sandboxes/{{sandbox_id}}/ports/{{port}}"),
            delete(revoke),
        )
}

fn view(st: &AppState, u: &PreviewUrl) -> Value {
    let slug = u.slug.as_deref().unwrap_or_default();
    json!({
        "port": u.port,
        "slug": slug,
        "preview_url": crate::preview::url_of(st, slug),
    })
}

async fn list(State(st): State<AppState>, s: InSandbox) -> Result<Json<Value>, ApiError> {
    let ports = st.engine.list_ports(&s.tenant, s.sandbox.id)?;
    Ok(Json(json!({
        "ports": ports.iter().map(|u| view(&st, u)).collect::<Vec<_>>(),
    })))
}

async fn expose(
    State(st): State<AppState>,
    s: InSandbox,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let req: Value = read_json(body, false).await?;
    let port = int_field(&req, "port", true)?.unwrap_or_default();
    let slug = match req.get("slug") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => return Err(ApiError::invalid("slug", "must be a string")),
    };
    let u = st.engine.expose_port(&s.tenant, s.sandbox.id, port, slug)?;
    Ok(Json(view(&st, &u)))
}

async fn revoke(
    State(st): State<AppState>,
    Path((org, project, id, port)): Path<(String, String, String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let (_, t) = tenant(&st, &headers, &org, &project)?;
    let sb = sandbox_ref(&st, &t, &id)?;
    let port: i64 = port
        .parse()
        .map_err(|_| ApiError::invalid("port", "must be an integer"))?;
    st.engine.revoke_port(&t, sb.id, port)?;
    Ok(StatusCode::NO_CONTENT)
}
