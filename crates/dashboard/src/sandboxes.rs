//! The sandboxes list, create, and the detail page with its actions and tabs.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use chrono::Utc;
use sandboxd_agent::proto::{Reply, Request, StartSpec};
use sandboxd_core::{CoreError, Resources, Sandbox, SandboxId};
use sandboxd_engine::CreateSandbox;
use serde::Deserialize;
use serde_json::json;

use crate::error::UiError;
use crate::session::Authed;
use crate::views::{self, render, SandboxView, SnapshotView, User};
use crate::Dashboard;

pub(crate) fn routes() -> Router<Dashboard> {
    Router::new()
        .route("/ui/sandboxes", post(create))
        .route("/ui/sandboxes/rows", get(rows))
        .route("/ui/sandboxes/{id}", get(detail))
        .route("/ui/sandboxes/{id}/pause", post(pause))
        .route("/ui/sandboxes/{id}/resume", post(resume))
        .route("/ui/sandboxes/{id}/fork", post(fork))
        .route("/ui/sandboxes/{id}/delete", post(delete))
        .route("/ui/sandboxes/{id}/exec", post(exec))
        .route("/ui/sandboxes/{id}/processes/{pid}/kill", post(kill))
        .route("/ui/sandboxes/{id}/ports", post(expose))
        .route("/ui/sandboxes/{id}/ports/{port}/revoke", post(revoke))
        .route("/ui/sandboxes/{id}/metrics/data", get(metrics_data))
        .route("/ui/templates", get(templates_page))
}

/// After an action: go to `url` (htmx follows `HX-Redirect`; a plain form the 303).
pub(crate) fn go(url: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(url) {
        r.headers_mut().insert(header::LOCATION, v.clone());
        r.headers_mut().insert("hx-redirect", v);
    }
    r
}

/// Like [`go`] but for htmx requests a 200 (htmx does not see a 303's headers).
pub(crate) fn go_htmx(headers: &HeaderMap, url: &str) -> Response {
    let mut r = go(url);
    if headers.contains_key("hx-request") {
        r.headers_mut().remove(header::LOCATION);
        *r.status_mut() = StatusCode::OK;
    }
    r
}

pub(crate) fn sandbox_id(s: &str) -> Result<SandboxId, UiError> {
    SandboxId::parse(s).ok_or_else(|| CoreError::not_found("sandbox", s.to_string()).into())
}

impl From<CoreError> for UiError {
    fn from(e: CoreError) -> Self {
        UiError::Engine(e.into())
    }
}

#[derive(Deserialize, Default)]
pub(crate) struct ListQuery {
    #[serde(default)]
    phase: String,
    #[serde(default)]
    q: String,
}

fn listed(d: &Dashboard, a: &Authed, f: &ListQuery) -> Result<Vec<SandboxView>, UiError> {
    let page = d.engine.list_sandboxes(&a.tenant, 0, 1000)?;
    let q = f.q.trim().to_lowercase();
    Ok(page
        .items
        .iter()
        .map(|sb| SandboxView::of(&d.engine, sb))
        .filter(|v| f.phase.is_empty() || v.phase == f.phase)
        .filter(|v| q.is_empty() || v.name.to_lowercase().contains(&q))
        .collect())
}

fn rows_url(f: &ListQuery) -> String {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    };
    format!("/ui/sandboxes/rows?phase={}&q={}", enc(&f.phase), enc(&f.q))
}

pub(crate) async fn list_page(
    a: Authed,
    State(d): State<Dashboard>,
    Query(f): Query<ListQuery>,
) -> Result<Response, UiError> {
    let rows = listed(&d, &a, &f)?;
    let templates = sandboxd_engine::templates::CATALOGUE
        .iter()
        .map(|t| views::Choice {
            value: t.id,
            label: t.name,
            current: t.id == sandboxd_engine::templates::DEFAULT_TEMPLATE,
        })
        .collect();
    Ok(render(&views::ListPage {
        user: User::of(&a),
        nav: "sandboxes",
        rows,
        rows_url: rows_url(&f),
        phases: views::choices(views::PHASES, &f.phase),
        q: f.q,
        templates,
    }))
}

async fn rows(
    a: Authed,
    State(d): State<Dashboard>,
    Query(f): Query<ListQuery>,
) -> Result<Response, UiError> {
    let rows = listed(&d, &a, &f)?;
    Ok(render(&views::Rows {
        rows,
        rows_url: rows_url(&f),
    }))
}

#[derive(Deserialize)]
struct CreateForm {
    name: String,
    template: String,
    cpu: f64,
    memory_gb: u32,
}

fn create_request(d: &Dashboard, f: &CreateForm) -> Result<CreateSandbox, UiError> {
    let name = f.name.trim().to_string();
    sandboxd_core::validate::dns1123_label("name", &name)?;
    sandboxd_core::validate::ranged_multiple("cpu", f.cpu, 0.5, 8.0, 0.5)?;
    sandboxd_core::validate::ranged_multiple("memory", f64::from(f.memory_gb), 1.0, 16.0, 1.0)?;
    let template = d.engine.resolve_template(Some(&f.template), "template")?;
    Ok(CreateSandbox {
        name,
        region: None,
        template,
        env: vec![],
        resources: Resources {
            cpu_millis: (f.cpu * 1000.0).round() as u32,
            memory_mib: f.memory_gb * 1024,
            ..Resources::default()
        },
        egress: None,
        command: vec![],
        timeout_secs: None,
        snapshot_frequency: None,
        lifetime: Default::default(),
        network_policy: None,
    })
}

async fn create(
    a: Authed,
    headers: HeaderMap,
    State(d): State<Dashboard>,
    Form(f): Form<CreateForm>,
) -> Response {
    let req = match create_request(&d, &f) {
        Ok(r) => r,
        Err(e) => return e.fragment(),
    };
    match d.engine.create_sandbox(&a.principal, &a.tenant, req).await {
        Ok(sb) => go_htmx(&headers, &format!("/ui/sandboxes/{}", sb.id)),
        Err(e) => UiError::from(e).fragment(),
    }
}

#[derive(Deserialize)]
struct TabQuery {
    tab: Option<String>,
}

fn preview_url(d: &Dashboard, token: &str) -> String {
    sandboxd_engine::preview::url_for(&d.cfg.api_url, d.cfg.preview_domain.as_deref(), token)
}

/// The names of the tenant's sandboxes by id (snapshot tables link their source).
pub(crate) fn names(d: &Dashboard, a: &Authed) -> Result<HashMap<String, String>, UiError> {
    Ok(d.engine
        .list_sandboxes(&a.tenant, 0, 1000)?
        .items
        .into_iter()
        .map(|s| (s.id.to_string(), s.name))
        .collect())
}

async fn detail(
    a: Authed,
    State(d): State<Dashboard>,
    Path(id): Path<String>,
    Query(t): Query<TabQuery>,
) -> Result<Response, UiError> {
    let id = sandbox_id(&id)?;
    let sb = d.engine.get_sandbox(&a.tenant, id)?;
    let tab = views::TABS
        .iter()
        .map(|(k, _)| *k)
        .find(|k| Some(*k) == t.tab.as_deref())
        .unwrap_or("overview");
    let tabs = views::choices(views::TABS, tab);
    let mut page = views::DetailPage {
        user: User::of(&a),
        nav: "sandboxes",
        sb: SandboxView::of(&d.engine, &sb),
        tab,
        tabs,
        egress: String::new(),
        ports: vec![],
        snaps: vec![],
        snap_rows_url: format!("/ui/sandboxes/{id}/snapshots/rows"),
        poll_secs: 5,
        show_source: false,
        procs: vec![],
        audit: vec![],
        tab_error: None,
    };
    match tab {
        "overview" => overview(&d, &a, &sb, &mut page)?,
        "snapshots" => {
            let names = HashMap::from([(sb.id.to_string(), sb.name.clone())]);
            page.snaps = d
                .engine
                .list_snapshots(&a.tenant, Some(id), 0, 500)?
                .items
                .iter()
                .map(|s| SnapshotView::of(s, &names))
                .collect();
            page.poll_secs = views::poll_secs(&page.snaps);
        }
        "processes" if page.sb.running => {
            match d
                .engine
                .agent_call(&a.principal, id, "dashboard.processes", None, Request::List)
                .await
            {
                Ok(Reply::Procs { items }) => {
                    page.procs = items
                        .into_iter()
                        .map(|p| views::ProcView {
                            pid: p.pid,
                            argv: p.argv.join(" "),
                            state: match (p.running, p.exit_code, p.signal) {
                                (true, _, _) => "running".into(),
                                (false, Some(c), _) => format!("exited {c}"),
                                (false, None, Some(s)) => format!("killed by signal {s}"),
                                _ => "ended".into(),
                            },
                            started: chrono::DateTime::from_timestamp_millis(
                                p.started_at_ms as i64,
                            )
                            .map_or_else(String::new, views::when),
                        })
                        .collect()
                }
                Ok(_) => page.tab_error = Some("The sandbox gave an unexpected answer.".into()),
                Err(e) => page.tab_error = Some(UiError::from(e).words()),
            }
        }
        "audit" => {
            let now = Utc::now();
            let trail = d.engine.audit_trail(
                &a.tenant,
                id,
                now - sandboxd_engine_audit_retention(),
                now,
                None,
                200,
            )?;
            page.audit = trail
                .records
                .into_iter()
                .map(|r| views::AuditView {
                    at: views::when(r.at),
                    tool: r.tool,
                    command: r.command.unwrap_or_default(),
                    target: r.target.unwrap_or_default(),
                    ok: r.success,
                    reason: r.reason_code.unwrap_or_default(),
                    ms: r.duration_ms,
                })
                .collect();
        }
        _ => {}
    }
    let mut r = render(&page);
    if tab == "terminal" {
        r.headers_mut().insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(crate::guard::CSP_TERMINAL),
        );
    }
    Ok(r)
}

fn sandboxd_engine_audit_retention() -> chrono::Duration {
    chrono::Duration::days(1)
}

fn overview(
    d: &Dashboard,
    a: &Authed,
    sb: &Sandbox,
    page: &mut views::DetailPage,
) -> Result<(), UiError> {
    page.egress = match sandboxd_engine::egress::policy_of(sb) {
        Ok(p) => sandboxd_engine::egress::summary(&p),
        Err(_) => "unreadable".into(),
    };
    page.ports = d
        .engine
        .list_ports(&a.tenant, sb.id)?
        .into_iter()
        .map(|u| views::PortView {
            port: u.port,
            url: u
                .slug
                .as_deref()
                .map(|s| preview_url(d, s))
                .unwrap_or_default(),
        })
        .collect();
    Ok(())
}

#[derive(Deserialize)]
struct PauseForm {
    memory: Option<String>,
}

async fn pause(
    a: Authed,
    headers: HeaderMap,
    State(d): State<Dashboard>,
    Path(id): Path<String>,
    Form(f): Form<PauseForm>,
) -> Response {
    let run = async {
        let id = sandbox_id(&id)?;
        d.engine
            .pause_sandbox(&a.tenant, id, f.memory.is_some())
            .await?;
        Ok::<_, UiError>(id)
    };
    match run.await {
        Ok(id) => go_htmx(&headers, &format!("/ui/sandboxes/{id}")),
        Err(e) => e.fragment(),
    }
}

async fn resume(
    a: Authed,
    headers: HeaderMap,
    State(d): State<Dashboard>,
    Path(id): Path<String>,
) -> Response {
    let run = async {
        let id = sandbox_id(&id)?;
        d.engine.resume_sandbox(&a.tenant, id).await?;
        Ok::<_, UiError>(id)
    };
    match run.await {
        Ok(id) => go_htmx(&headers, &format!("/ui/sandboxes/{id}")),
        Err(e) => e.fragment(),
    }
}

#[derive(Deserialize)]
struct NameForm {
    name: String,
}

async fn fork(
    a: Authed,
    headers: HeaderMap,
    State(d): State<Dashboard>,
    Path(id): Path<String>,
    Form(f): Form<NameForm>,
) -> Response {
    let run = async {
        let id = sandbox_id(&id)?;
        let name = f.name.trim().to_string();
        sandboxd_core::validate::dns1123_label("name", &name)?;
        Ok::<_, UiError>(d.engine.fork(&a.principal, &a.tenant, id, name).await?)
    };
    match run.await {
        Ok(sb) => go_htmx(&headers, &format!("/ui/sandboxes/{}", sb.id)),
        Err(e) => e.fragment(),
    }
}

#[derive(Deserialize)]
struct DeleteForm {
    confirm: String,
}

async fn delete(
    a: Authed,
    headers: HeaderMap,
    State(d): State<Dashboard>,
    Path(id): Path<String>,
    Form(f): Form<DeleteForm>,
) -> Response {
    let run = async {
        let id = sandbox_id(&id)?;
        let sb = d.engine.get_sandbox(&a.tenant, id)?;
        if f.confirm != sb.name {
            return Err(UiError::invalid(
                "Type the sandbox's name exactly to confirm the delete.",
            ));
        }
        d.engine.delete_sandbox(&a.tenant, id).await?;
        Ok(())
    };
    match run.await {
        Ok(()) => go_htmx(&headers, "/ui/"),
        Err(e) => e.fragment(),
    }
}

#[derive(Deserialize)]
struct ExecForm {
    command: String,
}

/// Output shown of each stream, at most.
const EXEC_SHOWN: usize = 256 * 1024;

async fn exec(
    a: Authed,
    State(d): State<Dashboard>,
    Path(id): Path<String>,
    Form(f): Form<ExecForm>,
) -> Response {
    let run = async {
        let id = sandbox_id(&id)?;
        if f.command.trim().is_empty() {
            return Err(UiError::invalid("Type a command to run."));
        }
        let req = Request::Exec {
            spec: StartSpec {
                argv: vec!["sh".into(), "-c".into(), f.command.clone()],
                ..Default::default()
            },
            timeout_ms: Some(60_000),
        };
        match d
            .engine
            .agent_call(&a.principal, id, "dashboard.exec", None, req)
            .await?
        {
            Reply::Exec {
                info,
                stdout,
                stderr,
                timed_out,
            } => {
                // The agent sends output base64-encoded.
                let text = |b64: String| {
                    use base64::Engine as _;
                    match base64::engine::general_purpose::STANDARD.decode(b64.as_bytes()) {
                        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                        Err(_) => b64,
                    }
                };
                let (stdout, stderr) = (text(stdout), text(stderr));
                let cut = |mut s: String| {
                    if s.len() > EXEC_SHOWN {
                        let mut i = EXEC_SHOWN;
                        while !s.is_char_boundary(i) {
                            i -= 1;
                        }
                        s.truncate(i);
                        s.push_str("\n[output cut]");
                    }
                    s
                };
                Ok(views::ExecResult {
                    command: f.command.clone(),
                    stdout: cut(stdout),
                    stderr: cut(stderr),
                    exit: match (info.exit_code, info.signal) {
                        (Some(c), _) => c.to_string(),
                        (None, Some(s)) => format!("killed by signal {s}"),
                        _ => "none".into(),
                    },
                    timed_out,
                })
            }
            Reply::Error { message, .. } => Err(UiError::invalid(format!(
                "The command could not run: {message}."
            ))),
            _ => Err(UiError::invalid("The sandbox gave an unexpected answer.")),
        }
    };
    match run.await {
        Ok(v) => render(&v),
        Err(e) => e.fragment(),
    }
}

async fn kill(
    a: Authed,
    headers: HeaderMap,
    State(d): State<Dashboard>,
    Path((id, pid)): Path<(String, u32)>,
) -> Response {
    let run = async {
        let id = sandbox_id(&id)?;
        match d
            .engine
            .agent_call(
                &a.principal,
                id,
                "dashboard.kill",
                None,
                Request::Kill { pid, signal: None },
            )
            .await?
        {
            Reply::Error { message, .. } => Err(UiError::invalid(format!(
                "Could not kill {pid}: {message}."
            ))),
            _ => Ok(id),
        }
    };
    match run.await {
        Ok(id) => go_htmx(&headers, &format!("/ui/sandboxes/{id}?tab=processes")),
        Err(e) => e.fragment(),
    }
}

#[derive(Deserialize)]
struct PortForm {
    port: String,
}

async fn expose(
    a: Authed,
    headers: HeaderMap,
    State(d): State<Dashboard>,
    Path(id): Path<String>,
    Form(f): Form<PortForm>,
) -> Response {
    let run = async {
        let id = sandbox_id(&id)?;
        let port: i64 = f
            .port
            .trim()
            .parse()
            .map_err(|_| UiError::invalid("The port must be a number."))?;
        d.engine.expose_port(&a.tenant, id, port, None)?;
        Ok::<_, UiError>(id)
    };
    match run.await {
        Ok(id) => go_htmx(&headers, &format!("/ui/sandboxes/{id}")),
        Err(e) => e.fragment(),
    }
}

async fn revoke(
    a: Authed,
    headers: HeaderMap,
    State(d): State<Dashboard>,
    Path((id, port)): Path<(String, i64)>,
) -> Response {
    let run = async {
        let id = sandbox_id(&id)?;
        d.engine.revoke_port(&a.tenant, id, port)?;
        Ok::<_, UiError>(id)
    };
    match run.await {
        Ok(id) => go_htmx(&headers, &format!("/ui/sandboxes/{id}")),
        Err(e) => e.fragment(),
    }
}

#[derive(Deserialize)]
struct RangeQuery {
    range: Option<String>,
}

/// The Metrics tab's data: columns aligned on time, as uPlot takes them.
async fn metrics_data(
    a: Authed,
    State(d): State<Dashboard>,
    Path(id): Path<String>,
    Query(q): Query<RangeQuery>,
) -> Result<Response, UiError> {
    use sandboxd_metrics::{series, Metric};
    let id = sandbox_id(&id)?;
    let sb = d.engine.get_sandbox(&a.tenant, id)?;
    let Some(hub) = d.hub.clone() else {
        return Ok(
            Json(json!({"error": "metrics are not enabled on this server"})).into_response(),
        );
    };
    let (range, step) = match q.range.as_deref() {
        Some("1h") => (3600, 30),
        Some("24h") => (86_400, 600),
        _ => (300, 1),
    };
    let step = series::clamp_step(step, range, hub.interval.as_secs().max(1));
    let to = Utc::now();
    let from = to - chrono::Duration::seconds(range as i64);
    let key = id.to_string();
    let rows = tokio::task::spawn_blocking(move || {
        hub.store
            .range(&key, from.timestamp_millis(), to.timestamp_millis())
    })
    .await
    .map_err(|_| UiError::invalid("The metrics query failed."))?
    .map_err(|e| {
        tracing::error!(error = %e, "dashboard metrics query");
        UiError::invalid("The metrics query failed.")
    })?;
    let out = series::downsample(&rows, from.timestamp(), to.timestamp(), step);
    // One time axis: every bucket any series has.
    let mut ts: Vec<i64> = out
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p[0] as i64))
        .collect();
    ts.sort_unstable();
    ts.dedup();
    let col = |m: Metric| -> Vec<Option<f64>> {
        let by: HashMap<i64, f64> = out
            .iter()
            .find(|s| s.metric == m)
            .map(|s| s.points.iter().map(|p| (p[0] as i64, p[1])).collect())
            .unwrap_or_default();
        ts.iter().map(|t| by.get(t).copied()).collect()
    };
    let mib = |v: Vec<Option<f64>>| -> Vec<Option<f64>> {
        v.into_iter().map(|x| x.map(|b| b / 1_048_576.0)).collect()
    };
    Ok(Json(json!({
        "t": ts,
        "cpu": col(Metric::CpuUsageCores),
        "cpu_limit": sb.resources.cpu_cores(),
        "mem": mib(col(Metric::MemoryUsageBytes)),
        "mem_limit": mib(col(Metric::MemoryLimitBytes)),
        "mem_limit_static": sb.resources.memory_mib,
        "disk": mib(col(Metric::DiskUsageBytes)),
        "rx": mib(col(Metric::NetworkRxBytes)),
        "tx": mib(col(Metric::NetworkTxBytes)),
    }))
    .into_response())
}

async fn templates_page(a: Authed, State(d): State<Dashboard>) -> Result<Response, UiError> {
    let usage = d.engine.snapshot_usage(&a.tenant)?;
    let templates = sandboxd_engine::templates::CATALOGUE
        .iter()
        .map(|t| views::TemplateView {
            id: t.id,
            name: t.name,
            description: t.description,
            image: t.image,
            active: d.engine.templates.status(t) == sandboxd_engine::TemplateStatus::Active,
        })
        .collect();
    Ok(render(&views::TemplatesPage {
        user: User::of(&a),
        nav: "templates",
        templates,
        snapshots: usage.snapshots,
        snapshot_bytes: views::bytes(usage.bytes),
        byte_hours: format!("{:.1} GiB·h", usage.byte_hours / 1_073_741_824.0),
        as_of: views::when(usage.as_of),
    }))
}
