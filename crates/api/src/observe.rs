//! Request metrics for the platform's Prometheus endpoint: count and latency of every request
//! by route template (never the raw path: ids would make the label set unbounded), method and
//! status; snapshot operations by kind and outcome. Latency is the time to the response head
//! (a streamed exec is counted until its first frame is ready).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use axum::{Extension, Router};
use sandboxd_metrics::Hub;

/// Adds request metrics and makes `hub` available to the routes that read it (the per-sandbox
/// metrics route).
pub fn with_metrics(router: Router, hub: Arc<Hub>) -> Router {
    router
        .layer(axum::middleware::from_fn_with_state(hub.clone(), track))
        .layer(Extension(hub))
}

/// Set on a response by a handler whose route alone does not say it ran a snapshot
/// operation (create-from-snapshot shares `POST .../sandboxes` with plain creates).
#[derive(Debug, Clone, Copy)]
pub struct SnapshotOp(pub &'static str);

/// Which snapshot operation a request is, by route template and method.
pub fn snapshot_op(route: &str, method: &Method) -> Option<&'static str> {
    let post = method == Method::POST;
    if route.ends_with("/sandboxes/{sandbox_id}/snapshots") && post {
        Some("capture")
    } else if route.ends_with("/snapshots/{snapshot_id}") && method == Method::DELETE {
        Some("delete")
    } else if (route.ends_with("/restore") || route.ends_with("/rollback")) && post {
        Some("rollback")
    } else if route.ends_with("/fork") && post {
        Some("fork")
    } else {
        None
    }
}

async fn track(State(hub): State<Arc<Hub>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let method = req.method().clone();
    let started = Instant::now();
    let resp = next.run(req).await;
    let secs = started.elapsed().as_secs_f64();
    let status = resp.status();
    let r = &hub.registry;
    r.inc(
        "sandboxd_http_requests_total",
        "HTTP requests by route template, method and status.",
        &[
            ("route", &route),
            ("method", method.as_str()),
            ("status", status.as_str()),
        ],
        1.0,
    );
    r.observe(
        "sandboxd_http_request_duration_seconds",
        "Time to the response head, by route template, method and status.",
        &[
            ("route", &route),
            ("method", method.as_str()),
            ("status", status.as_str()),
        ],
        secs,
    );
    let op = resp
        .extensions()
        .get::<SnapshotOp>()
        .map(|o| o.0)
        .or_else(|| snapshot_op(&route, &method));
    if let Some(op) = op {
        let outcome = if status.is_success() { "ok" } else { "error" };
        r.inc(
            "sandboxd_snapshot_operations_total",
            "Snapshot operations (capture, delete, rollback, fork, restore) by outcome.",
            &[("op", op), ("outcome", outcome)],
            1.0,
        );
        r.observe(
            "sandboxd_snapshot_operation_duration_seconds",
            "Duration of snapshot operations.",
            &[("op", op)],
            secs,
        );
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_snapshot_routes() {
        let p = "/api/v1beta1/orgs/{org_id}/projects/{project_id}";
        let post = Method::POST;
        assert_eq!(
            snapshot_op(&format!("{p}/sandboxes/{{sandbox_id}}/snapshots"), &post),
            Some("capture")
        );
        assert_eq!(
            snapshot_op(
                &format!("{p}/sandboxes/{{sandbox_id}}/snapshots"),
                &Method::GET
            ),
            None
        );
        assert_eq!(
            snapshot_op(&format!("{p}/snapshots/{{snapshot_id}}"), &Method::DELETE),
            Some("delete")
        );
        assert_eq!(
            snapshot_op(&format!("{p}/sandboxes/{{sandbox_id}}/rollback"), &post),
            Some("rollback")
        );
        assert_eq!(
            snapshot_op(&format!("{p}/sandboxes/{{sandbox_id}}/fork"), &post),
            Some("fork")
        );
        assert_eq!(snapshot_op(&format!("{p}/sandboxes"), &post), None);
    }
}
