//! HTTP front-ends over the engine's actions. Routes parse and validate into typed calls; the
//! engine never sees an HTTP type.
//!
//! - `neev`: the NeevCloud `v1beta1` control plane (`/api/v1beta1/...`).
//! - `dataplane`: the NeevCloud SDK data plane at `connect_url` (`/v1/exec`, `/v1/processes/*`,
//!   `/v1/files/*`), addressed with `X-Sandbox-Id`.
//! - `leap0`: Leap0 `v1` (`/v1/sandbox/...`, `/v1/snapshot/...`), the tenant from the key.

pub mod body;
mod dataplane;
pub mod error;
mod leap0;
mod neev;
mod observe;
mod preview;
mod query;
pub mod sandbox_host;
pub mod ssh;
pub mod terminal;
mod uploads;

pub use observe::with_metrics;

use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use sandboxd_core::Principal;
use sandboxd_engine::Engine;

use crate::error::ApiError;

#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    /// Base URL clients reach this server at; sandboxes' `connect_url`.
    pub public_url: String,
    /// With it, preview URLs are `<scheme>://<token>.<domain>[:port]/` (a wildcard DNS name,
    /// or `*.localhost`, pointing here) instead of `<public_url>/p/<token>/`.
    pub preview_domain: Option<String>,
    /// With it, `<sandbox-id>.<domain>` serves the sandbox's code interpreter and
    /// `<sandbox-id>-<port>.<domain>` its ports (the Leap0 SDK's sandbox hosts). Host part only.
    pub sandbox_domain: Option<String>,
    /// The node's SSH gateway, when `--ssh-listen` is set.
    pub ssh: Option<Arc<ssh::SshNode>>,
}

/// Reads `Authorization: Bearer <key>` and resolves it. Never logs the key.
pub(crate) fn principal(st: &AppState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or_else(ApiError::unauthorized)?;
    st.engine
        .authenticate(token)
        .map_err(ApiError::from)?
        .ok_or_else(ApiError::unauthorized)
}

async fn not_found() -> impl IntoResponse {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> impl IntoResponse {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}

/// An error answered to a request that carried a body may have been sent before the body was
/// read (an unknown route, a bad key); the server then cannot reuse the connection. Saying
/// `Connection: close` lets the client know, instead of its next pooled request failing.
async fn close_after_early_error(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::header;
    let has_body = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > 0)
        || req.headers().contains_key(header::TRANSFER_ENCODING);
    let mut resp = next.run(req).await;
    if has_body && (resp.status().is_client_error() || resp.status().is_server_error()) {
        resp.headers_mut().insert(
            header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    resp
}

/// The whole HTTP surface.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(neev::routes())
        .merge(dataplane::routes())
        .merge(leap0::routes())
        .merge(ssh::routes())
        .merge(preview::routes())
        .route("/healthz", axum::routing::get(|| async { "ok\n" }))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            preview::by_host,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            sandbox_host::by_host,
        ))
        .layer(axum::middleware::from_fn(close_after_early_error))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}
