//! Snapshots: the Take-snapshot modal's action, the per-sandbox and project-wide tables (live
//! until every row is Ready or Failed), restore as a new sandbox, roll back in place, delete.

use std::collections::HashSet;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Form, Router};
use sandboxd_core::CoreError;
use sandboxd_engine::CreateSnapshot;
use serde::Deserialize;
use uuid::Uuid;

use crate::error::UiError;
use crate::sandboxes::{go_htmx, names, sandbox_id};
use crate::session::Authed;
use crate::views::{self, render, SnapshotView, User};
use crate::Dashboard;

pub(crate) fn routes() -> Router<Dashboard> {
    Router::new()
        .route("/ui/snapshots", get(page))
        .route("/ui/snapshots/rows", get(all_rows))
        .route("/ui/sandboxes/{id}/snapshots", post(take))
        .route("/ui/sandboxes/{id}/snapshots/rows", get(sandbox_rows))
        .route("/ui/snapshots/{sid}/restore", post(restore))
        .route("/ui/snapshots/{sid}/rollback", post(rollback))
        .route("/ui/snapshots/{sid}/delete", post(delete))
}

/// The seed's rule for snapshot names, as the modal says it.
pub const NAME_RULE: &str = "Use 1–40 lowercase letters, digits and hyphens.";

fn snapshot_id(s: &str) -> Result<Uuid, UiError> {
    Uuid::parse_str(s).map_err(|_| CoreError::not_found("snapshot", s.to_string()).into())
}

fn all(d: &Dashboard, a: &Authed) -> Result<Vec<SnapshotView>, UiError> {
    let names = names(d, a)?;
    Ok(d.engine
        .list_snapshots(&a.tenant, None, 0, 1000)?
        .items
        .iter()
        .map(|s| SnapshotView::of(s, &names))
        .collect())
}

async fn page(a: Authed, State(d): State<Dashboard>) -> Result<Response, UiError> {
    let snaps = all(&d, &a)?;
    Ok(render(&views::SnapshotsPage {
        user: User::of(&a),
        nav: "snapshots",
        poll_secs: views::poll_secs(&snaps),
        snaps,
        snap_rows_url: "/ui/snapshots/rows".into(),
        show_source: true,
    }))
}

async fn all_rows(a: Authed, State(d): State<Dashboard>) -> Result<Response, UiError> {
    let snaps = all(&d, &a)?;
    Ok(render(&views::SnapRows {
        poll_secs: views::poll_secs(&snaps),
        snaps,
        snap_rows_url: "/ui/snapshots/rows".into(),
        show_source: true,
    }))
}

async fn sandbox_rows(
    a: Authed,
    State(d): State<Dashboard>,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    let id = sandbox_id(&id)?;
    let sb = d.engine.get_sandbox(&a.tenant, id)?;
    let names = std::collections::HashMap::from([(sb.id.to_string(), sb.name)]);
    let snaps: Vec<SnapshotView> = d
        .engine
        .list_snapshots(&a.tenant, Some(id), 0, 500)?
        .items
        .iter()
        .map(|s| SnapshotView::of(s, &names))
        .collect();
    Ok(render(&views::SnapRows {
        poll_secs: views::poll_secs(&snaps),
        snaps,
        snap_rows_url: format!("/ui/sandboxes/{id}/snapshots/rows"),
        show_source: false,
    }))
}

#[derive(Deserialize)]
struct TakeForm {
    name: String,
    memory: Option<String>,
    #[serde(default)]
    retention: String,
}

/// How long the modal's request waits for the capture to be recorded (or refused).
const RECORDED_WITHIN: Duration = Duration::from_secs(5);

/// Starts a capture and returns once its record exists (Pending): the Snapshots tab then
/// shows it go to Ready. A refusal (409 while one is in flight, a bad name) comes back in the
/// modal, in words.
async fn take(
    a: Authed,
    headers: HeaderMap,
    State(d): State<Dashboard>,
    Path(id): Path<String>,
    Form(f): Form<TakeForm>,
) -> Response {
    let run = async {
        let id = sandbox_id(&id)?;
        let name = f.name.trim().to_string();
        if !sandboxd_core::snapshot::valid_name(&name) {
            return Err(UiError::invalid(format!(
                "“{name}” is not a valid snapshot name. {NAME_RULE}"
            )));
        }
        let retain_for = match f.retention.trim() {
            "" | "0" => None,
            r => sandboxd_core::snapshot::parse_retention(r)
                .ok_or_else(|| UiError::invalid("Pick a retention from the list."))?,
        };
        let before: HashSet<Uuid> = d
            .engine
            .list_snapshots(&a.tenant, Some(id), 0, 1000)?
            .items
            .iter()
            .map(|s| s.id)
            .collect();
        let engine = d.engine.clone();
        let (principal, tenant) = (a.principal.clone(), a.tenant.clone());
        let req = CreateSnapshot {
            name: Some(name),
            include_memory: f.memory.is_some(),
            retain_for,
        };
        let mut task =
            tokio::spawn(async move { engine.create_snapshot(&principal, &tenant, id, req).await });
        let deadline = tokio::time::Instant::now() + RECORDED_WITHIN;
        loop {
            tokio::select! {
                done = &mut task => {
                    return match done {
                        Ok(Ok(_)) => Ok(id),
                        Ok(Err(e)) => Err(e.into()),
                        Err(_) => Err(UiError::invalid("The snapshot task failed.")),
                    };
                }
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
            let now: Vec<Uuid> = d
                .engine
                .list_snapshots(&a.tenant, Some(id), 0, 1000)?
                .items
                .iter()
                .map(|s| s.id)
                .collect();
            if now.iter().any(|s| !before.contains(s)) || tokio::time::Instant::now() > deadline {
                return Ok(id);
            }
        }
    };
    match run.await {
        Ok(id) => go_htmx(&headers, &format!("/ui/sandboxes/{id}?tab=snapshots")),
        Err(e) => e.fragment(),
    }
}

#[derive(Deserialize)]
struct RestoreForm {
    #[serde(default)]
    name: String,
}

async fn restore(
    a: Authed,
    headers: HeaderMap,
    State(d): State<Dashboard>,
    Path(sid): Path<String>,
    Form(f): Form<RestoreForm>,
) -> Response {
    let run = async {
        let sid = snapshot_id(&sid)?;
        let snap = d.engine.get_snapshot(&a.tenant, sid)?;
        let name = match f.name.trim() {
            "" => format!(
                "{}-{}",
                snap.name.as_deref().unwrap_or("restore"),
                &Uuid::new_v4().simple().to_string()[..6]
            ),
            n => n.to_string(),
        };
        sandboxd_core::validate::dns1123_label("name", &name)?;
        Ok::<_, UiError>(
            d.engine
                .restore_as_new(&a.principal, &a.tenant, sid, name)
                .await?,
        )
    };
    match run.await {
        Ok(sb) => go_htmx(&headers, &format!("/ui/sandboxes/{}", sb.id)),
        Err(e) => e.fragment(),
    }
}

#[derive(Deserialize)]
struct RollbackForm {
    confirm: Option<String>,
}

async fn rollback(
    a: Authed,
    headers: HeaderMap,
    State(d): State<Dashboard>,
    Path(sid): Path<String>,
    Form(f): Form<RollbackForm>,
) -> Response {
    let run = async {
        if f.confirm.is_none() {
            return Err(UiError::invalid(
                "Tick the box to confirm: rolling back replaces the sandbox's files and memory.",
            ));
        }
        let sid = snapshot_id(&sid)?;
        let snap = d.engine.get_snapshot(&a.tenant, sid)?;
        Ok(d.engine.rollback(&a.tenant, snap.sandbox_id, sid).await?)
    };
    match run.await {
        Ok(sb) => go_htmx(&headers, &format!("/ui/sandboxes/{}", sb.id)),
        Err(e) => e.fragment(),
    }
}

async fn delete(
    a: Authed,
    headers: HeaderMap,
    State(d): State<Dashboard>,
    Path(sid): Path<String>,
) -> Response {
    let run = async {
        let sid = snapshot_id(&sid)?;
        d.engine.delete_snapshot(&a.tenant, sid).await?;
        Ok::<_, UiError>(())
    };
    // Back to the page the table was on, if it is one of the dashboard's.
    let back = headers
        .get("hx-current-url")
        .and_then(|v| v.to_str().ok())
        .and_then(|u| u.split_once("://"))
        .and_then(|(_, rest)| rest.find('/').map(|i| rest[i..].to_string()))
        .filter(|p| p.starts_with("/ui/") && !p.starts_with("/ui//"))
        .unwrap_or_else(|| "/ui/snapshots".into());
    match run.await {
        Ok(()) => go_htmx(&headers, &back),
        Err(e) => e.fragment(),
    }
}
