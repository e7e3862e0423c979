//! The templates (`templates/*.html`, escaped by default) and how engine records are shown.

use std::collections::HashMap;

use askama::Template;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use sandboxd_core::{Sandbox, SandboxState, Snapshot, SnapshotStatus};
use sandboxd_engine::Engine;

use crate::session::Authed;

pub fn html(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], body).into_response()
}

/// Renders a template into a response (or the error page).
pub fn render<T: Template>(t: &T) -> Response {
    match t.render() {
        Ok(s) => html(s),
        Err(e) => crate::UiError::from(e).page(),
    }
}

/// Who is logged in, for the page header.
pub struct User {
    pub org: String,
    pub project: String,
    pub key_id: String,
}

impl User {
    pub fn of(a: &Authed) -> Self {
        User {
            org: a.tenant.org.clone(),
            project: a.tenant.project.clone(),
            key_id: a.principal.key_id.clone(),
        }
    }
}

pub fn when(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

pub fn secs(s: u64) -> String {
    match s {
        0 => "off".into(),
        s if s % 3600 == 0 => format!("{} h", s / 3600),
        s if s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

pub fn bytes(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

/// The phase a state shows as (the NeevCloud names the SDKs use).
pub fn phase(s: SandboxState) -> &'static str {
    match s {
        SandboxState::Failed => "Failed",
        SandboxState::Deleting => "Deleting",
        SandboxState::Stopping => "Stopping",
        other => sandboxd_metrics::catalogue::phase_name(other),
    }
}

/// Phases the list filter offers.
pub const PHASES: &[(&str, &str)] = &[
    ("Ready", "Ready"),
    ("Paused", "Paused"),
    ("Pending", "Pending"),
    ("Pausing", "Pausing"),
    ("Resuming", "Resuming"),
    ("Failed", "Failed"),
];

fn transitional(s: SandboxState) -> bool {
    matches!(
        s,
        SandboxState::Starting
            | SandboxState::Snapshotting
            | SandboxState::Pausing
            | SandboxState::Resuming
            | SandboxState::Stopping
            | SandboxState::Deleting
    )
}

/// One sandbox as the list and the detail page show it.
pub struct SandboxView {
    pub id: String,
    pub name: String,
    pub phase: &'static str,
    pub template: String,
    pub cpu: String,
    pub memory: String,
    pub disk: String,
    pub created: String,
    pub timeout: String,
    pub max_lifetime: String,
    pub run_limit: String,
    pub status_message: Option<String>,
    pub running: bool,
    pub paused: bool,
    pub transitional: bool,
}

impl SandboxView {
    pub fn of(engine: &Engine, sb: &Sandbox) -> Self {
        let template = engine
            .templates
            .lookup(&sb.template_id)
            .map_or_else(|| sb.template_id.clone(), |t| t.name.to_string());
        let cores = sb.resources.cpu_cores();
        SandboxView {
            id: sb.id.to_string(),
            name: sb.name.clone(),
            phase: phase(sb.state),
            template,
            cpu: format!("{cores} vCPU"),
            memory: bytes(sb.resources.memory_bytes()),
            disk: bytes(sb.resources.disk_bytes()),
            created: when(sb.created_at),
            timeout: sb.timeout_secs.map_or_else(|| "none".into(), secs),
            max_lifetime: sb
                .windows
                .max_lifetime_secs
                .map_or_else(|| "none".into(), secs),
            run_limit: sb.lifetime.timeout_secs.map_or_else(|| "none".into(), secs),
            status_message: sb.status_message.clone(),
            running: matches!(sb.state, SandboxState::Running),
            paused: matches!(sb.state, SandboxState::Paused | SandboxState::Stopped),
            transitional: transitional(sb.state),
        }
    }
}

/// One snapshot as its tables show it.
pub struct SnapshotView {
    pub id: String,
    pub name: String,
    pub source_id: String,
    pub source_name: String,
    pub status: &'static str,
    pub error: Option<String>,
    pub kind: &'static str,
    pub size: String,
    pub added: String,
    pub created: String,
    pub expires: String,
    pub in_flight: bool,
    pub ready: bool,
}

impl SnapshotView {
    pub fn of(s: &Snapshot, names: &HashMap<String, String>) -> Self {
        let source_id = s.sandbox_id.to_string();
        SnapshotView {
            id: s.id.to_string(),
            name: s.name.clone().unwrap_or_else(|| "(unnamed)".into()),
            source_name: names
                .get(&source_id)
                .cloned()
                .unwrap_or_else(|| "(deleted)".into()),
            source_id,
            status: s.status.as_str(),
            error: s.error_message.clone(),
            kind: if s.include_memory {
                "files + memory"
            } else {
                "files only"
            },
            size: s.size_bytes.map_or_else(|| "–".into(), bytes),
            added: s.added_bytes.map_or_else(|| "–".into(), bytes),
            created: when(s.created_at),
            expires: s.expires_at.map_or_else(|| "never".into(), when),
            in_flight: matches!(s.status, SnapshotStatus::Pending | SnapshotStatus::Running),
            ready: s.status == SnapshotStatus::Ready,
        }
    }
}

#[derive(Template)]
#[template(path = "login.html")]
pub struct LoginPage {
    pub error: Option<String>,
}

#[derive(Template)]
#[template(path = "error.html")]
pub struct ErrorPage {
    pub message: String,
}

#[derive(Template)]
#[template(path = "error_fragment.html")]
pub struct ErrorFragment {
    pub message: String,
}

#[derive(Template)]
#[template(path = "list.html")]
pub struct ListPage {
    pub user: User,
    pub nav: &'static str,
    pub rows: Vec<SandboxView>,
    pub q: String,
    pub phases: Vec<Choice>,
    pub templates: Vec<Choice>,
    pub rows_url: String,
}

#[derive(Template)]
#[template(path = "rows.html")]
pub struct Rows {
    pub rows: Vec<SandboxView>,
    pub rows_url: String,
}

pub struct ProcView {
    pub pid: u32,
    pub argv: String,
    pub state: String,
    pub started: String,
}

pub struct AuditView {
    pub at: String,
    pub tool: String,
    pub command: String,
    pub target: String,
    pub ok: bool,
    pub reason: String,
    pub ms: u64,
}

pub struct PortView {
    pub port: u16,
    pub url: String,
}

#[derive(Template)]
#[template(path = "detail.html")]
pub struct DetailPage {
    pub user: User,
    pub nav: &'static str,
    pub sb: SandboxView,
    pub tab: &'static str,
    pub tabs: Vec<Choice>,
    pub egress: String,
    pub ports: Vec<PortView>,
    pub snaps: Vec<SnapshotView>,
    pub snap_rows_url: String,
    pub poll_secs: u32,
    pub show_source: bool,
    pub procs: Vec<ProcView>,
    pub audit: Vec<AuditView>,
    pub tab_error: Option<String>,
}

pub const TABS: &[(&str, &str)] = &[
    ("overview", "Overview"),
    ("snapshots", "Snapshots"),
    ("metrics", "Metrics"),
    ("processes", "Processes"),
    ("terminal", "Terminal"),
    ("audit", "Audit"),
];

#[derive(Template)]
#[template(path = "snap_rows.html")]
pub struct SnapRows {
    pub snaps: Vec<SnapshotView>,
    pub snap_rows_url: String,
    pub poll_secs: u32,
    pub show_source: bool,
}

#[derive(Template)]
#[template(path = "snapshots.html")]
pub struct SnapshotsPage {
    pub user: User,
    pub nav: &'static str,
    pub snaps: Vec<SnapshotView>,
    pub snap_rows_url: String,
    pub poll_secs: u32,
    pub show_source: bool,
}

#[derive(Template)]
#[template(path = "exec_result.html")]
pub struct ExecResult {
    pub command: String,
    pub stdout: String,
    pub stderr: String,
    pub exit: String,
    pub timed_out: bool,
}

pub struct TemplateView {
    pub id: &'static str,
    pub name: &'static str,
    pub description: &'static str,
    pub image: &'static str,
    pub active: bool,
}

#[derive(Template)]
#[template(path = "templates.html")]
pub struct TemplatesPage {
    pub user: User,
    pub nav: &'static str,
    pub templates: Vec<TemplateView>,
    pub snapshots: u64,
    pub snapshot_bytes: String,
    pub byte_hours: String,
    pub as_of: String,
}

/// An option of a select, a tab: its value, label and whether it is the current one.
pub struct Choice {
    pub value: &'static str,
    pub label: &'static str,
    pub current: bool,
}

pub fn choices(all: &[(&'static str, &'static str)], current: &str) -> Vec<Choice> {
    all.iter()
        .map(|(value, label)| Choice {
            value,
            label,
            current: *value == current,
        })
        .collect()
}

/// Polling interval of a snapshot table: fast while one is in flight.
pub fn poll_secs(snaps: &[SnapshotView]) -> u32 {
    if snaps.iter().any(|s| s.in_flight) {
        1
    } else {
        5
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1024 * 1024 * 1024), "1.0 GiB");
        assert_eq!(secs(600), "10 min");
        assert_eq!(secs(7200), "2 h");
        assert_eq!(secs(0), "off");
    }
}
