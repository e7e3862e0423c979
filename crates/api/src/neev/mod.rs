//! NeevCloud `v1beta1` control plane: sandboxes, templates, keepalive, timeout, audit, metrics.

mod dto;
mod metrics;
mod ports;
mod snapshots;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chrono::{DateTime, Duration, Utc};
use sandboxd_core::{SandboxId, Tenant};
use sandboxd_engine::templates::{TemplateStatus, CATALOGUE};
use sandboxd_engine::CreateSandbox;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::body::read_json;
use crate::error::ApiError;
use crate::{principal, AppState};

pub use dto::{sandbox_view, ts};

pub(crate) const P: &str = "/api/v1beta1/orgs/{org_id}/projects/{project_id}";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(&format!("{P}/sandboxes"), get(list).post(create))
        .route(
            &format!("{P}/sandboxes/{{sandbox_id}}"),
            get(get_one).delete(delete).patch(update),
        )
        .route(
            &format!("{P}/sandboxes/{{sandbox_id}}/keepalive"),
            post(keepalive),
        )
        .route(&format!("{P}/sandboxes/{{sandbox_id}}/pause"), post(pause))
        .route(
            &format!("{P}/sandboxes/{{sandbox_id}}/resume"),
            post(resume),
        )
        .route(
            &format!("{P}/sandboxes/{{sandbox_id}}/timeout"),
            put(set_timeout),
        )
        .route(&format!("{P}/sandboxes/{{sandbox_id}}/audit"), get(audit))
        .route(
            &format!("{P}/sandboxes/{{sandbox_id}}/egress"),
            put(set_egress),
        )
        .merge(snapshots::routes())
        .merge(metrics::routes())
        .merge(ports::routes())
        .route("/api/v1beta1/sandbox-templates", get(templates))
        .route(
            "/api/v1beta1/sandbox-templates/{template_id}",
            get(template),
        )
}

/// Authenticates and checks the caller may act in the path's org and project.
pub(crate) fn tenant(
    st: &AppState,
    headers: &HeaderMap,
    org: &str,
    project: &str,
) -> Result<(sandboxd_core::Principal, Tenant), ApiError> {
    let p = principal(st, headers)?;
    let t = p.authorize(org, project)?;
    Ok((p, t))
}

pub(crate) fn query_pairs(q: Option<&str>) -> Vec<(String, String)> {
    crate::query::pairs(q)
}

fn query_int(
    pairs: &[(String, String)],
    key: &str,
    min: i64,
    max: i64,
    default: i64,
) -> Result<i64, ApiError> {
    match pairs.iter().rev().find(|(k, _)| k == key) {
        None => Ok(default),
        Some((_, v)) => {
            let n: i64 = v
                .parse()
                .map_err(|_| ApiError::invalid(key, "must be an integer"))?;
            if n < min || n > max {
                return Err(ApiError::invalid(
                    key,
                    format!("must be between {min} and {max}"),
                ));
            }
            Ok(n)
        }
    }
}

fn query_str<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Pagination per the spec: `page` ≥ 1, `limit` 1..=100 (default 20).
pub(crate) fn paging(pairs: &[(String, String)]) -> Result<(u64, u64), ApiError> {
    let page = query_int(pairs, "page", 1, 1_000_000, 1)? as u64;
    let limit = query_int(pairs, "limit", 1, 100, 20)? as u64;
    Ok((page, limit))
}

pub(crate) fn page_json(items: Vec<Value>, total: u64, page: u64, limit: u64) -> Value {
    json!({"items": items, "total": total, "page": page, "limit": limit})
}

async fn list(
    State(st): State<AppState>,
    Path((org, project)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let (_, t) = tenant(&st, &headers, &org, &project)?;
    let pairs = query_pairs(q.as_deref());
    let (page, limit) = paging(&pairs)?;
    let name = query_str(&pairs, "name");
    let status = query_str(&pairs, "status");
    let sandbox_id = query_str(&pairs, "sandbox_id");
    if name.is_none() && status.is_none() && sandbox_id.is_none() {
        let p = st.engine.list_sandboxes(&t, (page - 1) * limit, limit)?;
        let items = p
            .items
            .iter()
            .map(|s| sandbox_view(s, &st.public_url))
            .collect();
        return Ok(Json(page_json(items, p.total, page, limit)));
    }
    let all = st.engine.list_sandboxes(&t, 0, u64::MAX >> 1)?;
    let matching: Vec<_> = all
        .items
        .iter()
        // `name` is a case-insensitive substring filter, as the SDK documents it.
        .filter(|s| name.is_none_or(|n| s.name.to_lowercase().contains(&n.to_lowercase())))
        .filter(|s| status.is_none_or(|f| dto::phase_matches(f, s.state)))
        .filter(|s| sandbox_id.is_none_or(|i| s.id.to_string() == i))
        .collect();
    let total = matching.len() as u64;
    let items = matching
        .into_iter()
        .skip(((page - 1) * limit) as usize)
        .take(limit as usize)
        .map(|s| sandbox_view(s, &st.public_url))
        .collect();
    Ok(Json(page_json(items, total, page, limit)))
}

/// How long a repeated identical create by the same key returns the sandbox already made.
const RETRY_WINDOW_SECS: i64 = 300;

async fn create(
    State(st): State<AppState>,
    Path((org, project)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (p, t) = tenant(&st, &headers, &org, &project)?;
    let req: dto::CreateReq = read_json(body, false).await?;
    let name = dto::name(req.name.as_deref())?;
    let resources = dto::resources(req.resources.as_ref())?;
    let env = dto::env(req.env.as_deref())?;
    let egress = dto::egress(req.egress.as_ref())?;
    let snapshot_frequency = dto::snapshot_schedule(
        req.snapshot_mode.as_deref(),
        req.snapshot_frequency.as_deref(),
    )?;
    if let Some(tid) = &req.sandbox_template_id {
        if tid.is_empty()
            || !tid.starts_with("sb-")
            || !tid[3..]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
            || tid.len() == 3
        {
            return Err(ApiError::invalid(
                "sandbox_template_id",
                "must match ^sb-[a-zA-Z0-9-]+$",
            ));
        }
    }
    if let Some(image) = &req.image {
        if req.sandbox_template_id.is_none() {
            return Err(ApiError::invalid(
                "image",
                format!("arbitrary images are not available on this node; use sandbox_template_id (image {image} was given)"),
            ));
        }
    }
    for (field, snap) in [
        ("from_snapshot", &req.from_snapshot),
        ("restore", &req.restore),
    ] {
        if let Some(s) = snap {
            let sid = snapshots::snapshot_id(field, s)?;
            let snap = st.engine.get_snapshot(&t, sid)?;
            if let Some(r) = &req.region {
                if r != &snap.region {
                    return Err(ApiError::invalid(
                        "region",
                        format!("must match the snapshot's region {}", snap.region),
                    ));
                }
            }
            if req.resources.is_some() && resources != snap.resources {
                return Err(ApiError::invalid(
                    "resources",
                    "must match the snapshot's sizing (omit it to reuse it)",
                ));
            }
            let restored = async {
                let mut sb = st.engine.restore_as_new(&p, &t, sid, name).await?;
                if let Some(e) = egress.clone() {
                    sb = st
                        .engine
                        .update_egress(&t, sb.id, sandboxd_engine::EgressUpdate::Neev(e))
                        .await?;
                }
                Ok::<_, sandboxd_engine::EngineError>(sb)
            }
            .await;
            let mut resp = match restored {
                Ok(sb) => {
                    (StatusCode::CREATED, Json(sandbox_view(&sb, &st.public_url))).into_response()
                }
                Err(e) => ApiError::from(e).into_response(),
            };
            // Counted as a snapshot operation by the metrics layer (the route alone can't say).
            resp.extensions_mut()
                .insert(crate::observe::SnapshotOp("restore"));
            return Ok(resp);
        }
    }
    let template = st
        .engine
        .resolve_template(req.sandbox_template_id.as_deref(), "sandbox_template_id")?;
    let timeout_secs = req
        .lifecycle
        .as_ref()
        .and_then(|l| l.get("idle_timeout_seconds"))
        .and_then(Value::as_u64);
    let template_id = template.id.to_string();
    let (asked_env, asked_egress) = (env.clone(), egress.clone());
    let created = st
        .engine
        .create_sandbox(
            &p,
            &t,
            CreateSandbox {
                name: name.clone(),
                region: req.region,
                template,
                env,
                resources,
                egress,
                command: req.command.unwrap_or_default(),
                timeout_secs,
                snapshot_frequency,
                lifetime: Default::default(),
                network_policy: None,
            },
        )
        .await;
    let sb = match created {
        Ok(sb) => sb,
        // The SDK retries a create whose answer it did not get in time: the same key asking
        // again for the same sandbox within a short window gets the one already made.
        Err(sandboxd_engine::EngineError::Core(sandboxd_core::CoreError::Conflict(m))) => {
            match st.engine.find_sandbox(&t, &name).ok().filter(|sb| {
                sb.created_by.as_deref() == Some(p.key_id.as_str())
                    && sb.template_id == template_id
                    && sb.resources == resources
                    && sb.env == asked_env
                    && sb.egress == asked_egress
                    && Utc::now() - sb.created_at < Duration::seconds(RETRY_WINDOW_SECS)
            }) {
                Some(sb) => sb,
                None => return Err(sandboxd_core::CoreError::Conflict(m).into()),
            }
        }
        Err(e) => return Err(e.into()),
    };
    Ok((StatusCode::CREATED, Json(sandbox_view(&sb, &st.public_url))).into_response())
}

/// The sandbox a `.../orgs/{org}/projects/{project}/sandboxes/{sandbox_id}/...` route names,
/// after authentication and the tenant check.
pub(crate) struct InSandbox {
    pub principal: sandboxd_core::Principal,
    pub tenant: Tenant,
    pub sandbox: sandboxd_core::Sandbox,
}

impl axum::extract::FromRequestParts<AppState> for InSandbox {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        st: &AppState,
    ) -> Result<Self, ApiError> {
        let Path((org, project, id)) =
            Path::<(String, String, String)>::from_request_parts(parts, st)
                .await
                .map_err(|_| ApiError::not_found("no such route"))?;
        let (principal, tenant) = tenant(st, &parts.headers, &org, &project)?;
        let sandbox = sandbox_ref(st, &tenant, &id)?;
        Ok(InSandbox {
            principal,
            tenant,
            sandbox,
        })
    }
}

/// Resolves the `{sandbox_id}` path segment: a UUID, or a sandbox name as the SDK allows.
pub(crate) fn sandbox_ref(
    st: &AppState,
    t: &Tenant,
    s: &str,
) -> Result<sandboxd_core::Sandbox, ApiError> {
    if SandboxId::parse(s).is_none()
        && sandboxd_core::validate::dns1123_label("sandbox_id", s).is_err()
    {
        return Err(ApiError::invalid(
            "sandbox_id",
            "must be a sandbox UUID or name",
        ));
    }
    Ok(st.engine.find_sandbox(t, s)?)
}

async fn get_one(State(st): State<AppState>, s: InSandbox) -> Result<Json<Value>, ApiError> {
    Ok(Json(sandbox_view(&s.sandbox, &st.public_url)))
}

async fn delete(State(st): State<AppState>, s: InSandbox) -> Result<StatusCode, ApiError> {
    st.engine.delete_sandbox(&s.tenant, s.sandbox.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn keepalive(State(st): State<AppState>, s: InSandbox) -> Result<Json<Value>, ApiError> {
    let sb = st.engine.keepalive(&s.tenant, s.sandbox.id)?;
    Ok(Json(sandbox_view(&sb, &st.public_url)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PauseReq {
    /// Keep processes and memory (default true); false keeps only the files.
    preserve_memory: Option<bool>,
}

async fn pause(
    State(st): State<AppState>,
    s: InSandbox,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let req: PauseReq = read_json(body, true).await?;
    let sb = st
        .engine
        .pause_sandbox(&s.tenant, s.sandbox.id, req.preserve_memory.unwrap_or(true))
        .await?;
    Ok(Json(sandbox_view(&sb, &st.public_url)))
}

async fn resume(State(st): State<AppState>, s: InSandbox) -> Result<Json<Value>, ApiError> {
    let sb = st.engine.resume_sandbox(&s.tenant, s.sandbox.id).await?;
    Ok(Json(sandbox_view(&sb, &st.public_url)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TimeoutReq {
    idle_timeout_seconds: Option<u64>,
    max_lifetime_seconds: Option<u64>,
    paused_retention_seconds: Option<u64>,
    on_idle: Option<sandboxd_core::OnIdle>,
}

async fn set_timeout(
    State(st): State<AppState>,
    s: InSandbox,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let req: TimeoutReq = read_json(body, true).await?;
    let sb = st.engine.set_timeout(
        &s.tenant,
        s.sandbox.id,
        sandboxd_engine::TimeoutUpdate {
            idle_secs: req.idle_timeout_seconds,
            max_lifetime_secs: req.max_lifetime_seconds,
            paused_retention_secs: req.paused_retention_seconds,
            on_idle: req.on_idle,
        },
    )?;
    Ok(Json(sandbox_view(&sb, &st.public_url)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesIn {
    allow: Vec<dto::EgressRuleIn>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateReq {
    resources: Option<dto::ResourcesIn>,
    egress: Option<dto::EgressIn>,
    egress_add: Option<RulesIn>,
    egress_remove: Option<RulesIn>,
}

/// Validated rules of an `egress_add` / `egress_remove`, in their stored form.
fn rules(field: &str, r: RulesIn) -> Result<Vec<Value>, ApiError> {
    if r.allow.is_empty() {
        return Err(ApiError::invalid(
            format!("{field}.allow"),
            "must have at least one rule",
        ));
    }
    let e = dto::EgressIn {
        mode: Some(dto::EgressMode::AllowList),
        allow_internet: None,
        allow: Some(r.allow),
    };
    let v = dto::egress(Some(&e)).map_err(|mut err| {
        err.message = err
            .message
            .replace("egress.allow", &format!("{field}.allow"));
        err.field = err
            .field
            .map(|f| f.replace("egress.allow", &format!("{field}.allow")));
        err
    })?;
    Ok(v.and_then(|v| v["allow"].as_array().cloned())
        .unwrap_or_default())
}

/// `PATCH .../sandboxes/{id}`: resizes cpu/memory in place and/or replaces or edits the
/// egress policy, without a restart. Only the fields given change.
async fn update(
    State(st): State<AppState>,
    s: InSandbox,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let req: UpdateReq = read_json(body, false).await?;
    if req.resources.is_none()
        && req.egress.is_none()
        && req.egress_add.is_none()
        && req.egress_remove.is_none()
    {
        return Err(ApiError::invalid(
            "resources",
            "give at least one of resources, egress, egress_add, egress_remove",
        ));
    }
    if req.egress.is_some() && (req.egress_add.is_some() || req.egress_remove.is_some()) {
        return Err(ApiError::invalid(
            "egress",
            "egress replaces the whole policy and cannot be combined with egress_add or egress_remove",
        ));
    }
    // Validate everything before changing anything.
    let resources = match &req.resources {
        None => None,
        Some(r) => {
            if r.rootfs_disk_gb.is_some() {
                return Err(ApiError::invalid(
                    "resources.rootfs_disk_gb",
                    "can only be set when the sandbox is created",
                ));
            }
            let parsed = dto::resources(Some(r))?;
            let mut new = s.sandbox.resources;
            if r.cpu.is_some() {
                new.cpu_millis = parsed.cpu_millis;
            }
            if r.memory_gb.is_some() {
                new.memory_mib = parsed.memory_mib;
            }
            if r.disk_gb.is_some() {
                new.disk_mib = parsed.disk_mib;
            }
            Some(new)
        }
    };
    let egress = match req.egress.as_ref() {
        Some(e) => Some(dto::egress(Some(e))?.unwrap_or_else(|| json!({"mode": "deny_all"}))),
        None => None,
    };
    let edits = match (req.egress_add, req.egress_remove) {
        (None, None) => None,
        (add, remove) => Some((
            add.map(|r| rules("egress_add", r))
                .transpose()?
                .unwrap_or_default(),
            remove
                .map(|r| rules("egress_remove", r))
                .transpose()?
                .unwrap_or_default(),
        )),
    };
    let edited = match &edits {
        Some((add, remove)) => Some(
            sandboxd_engine::update::edit_allow_list(s.sandbox.egress.as_ref(), add, remove)
                .map_err(ApiError::from)?,
        ),
        None => None,
    };
    let mut sb = s.sandbox.clone();
    if let Some(new) = resources {
        sb = st.engine.resize_sandbox(&s.tenant, sb.id, new).await?;
    }
    if let Some(policy) = egress.or(edited) {
        sb = st
            .engine
            .update_egress(
                &s.tenant,
                sb.id,
                sandboxd_engine::EgressUpdate::Neev(policy),
            )
            .await?;
    }
    Ok(Json(sandbox_view(&sb, &st.public_url)))
}

/// `PUT .../sandboxes/{id}/egress`: replaces the egress policy of a running sandbox, at
/// once and without a restart.
async fn set_egress(
    State(st): State<AppState>,
    s: InSandbox,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let req: dto::EgressIn = read_json(body, false).await?;
    let policy = dto::egress(Some(&req))?.unwrap_or_else(|| json!({"mode": "deny_all"}));
    let sb = st
        .engine
        .update_egress(
            &s.tenant,
            s.sandbox.id,
            sandboxd_engine::EgressUpdate::Neev(policy),
        )
        .await?;
    Ok(Json(sandbox_view(&sb, &st.public_url)))
}

fn parse_time(pairs: &[(String, String)], key: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
    query_str(pairs, key)
        .map(|v| {
            DateTime::parse_from_rfc3339(v)
                .map(|d| d.with_timezone(&Utc))
                .map_err(|_| ApiError::invalid(key, "must be an RFC 3339 timestamp"))
        })
        .transpose()
}

async fn audit(
    State(st): State<AppState>,
    s: InSandbox,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let pairs = query_pairs(q.as_deref());
    let to = parse_time(&pairs, "to")?.unwrap_or_else(Utc::now);
    let from = parse_time(&pairs, "from")?.unwrap_or(to - Duration::hours(24));
    if from > to {
        return Err(ApiError::invalid("from", "must not be after to"));
    }
    let limit = query_int(&pairs, "limit", 1, 1000, 100)? as usize;
    let before: Option<u64> = match query_str(&pairs, "cursor") {
        Some(c) => Some(
            c.parse()
                .map_err(|_| ApiError::invalid("cursor", "not a cursor from this API"))?,
        ),
        None => None,
    };
    let page = st
        .engine
        .audit_trail(&s.tenant, s.sandbox.id, from, to, before, limit)?;
    Ok(Json(json!({
        "sandbox_id": s.sandbox.id,
        "from": ts(from),
        "to": ts(to),
        "retention_days": 1,
        "window_truncated": page.window_truncated,
        "next_cursor": page.next_before.map(|s| s.to_string()),
        "records": page.records.iter().map(|r| json!({
            "id": format!("{}-{}", s.sandbox.id.short(), r.seq),
            "seq": r.seq,
            "at": ts(r.at),
            "tool": r.tool,
            "command": r.command,
            "target": r.target,
            "outcome": if r.success { "success" } else { "error" },
            "reason_code": r.reason_code,
            "duration_ms": r.duration_ms,
            "caller_source": "api_key",
        })).collect::<Vec<_>>(),
    })))
}

fn template_view(st: &AppState, t: &sandboxd_engine::Template) -> Value {
    let built = st
        .engine
        .templates
        .built_at(t)
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH);
    json!({
        "id": t.id,
        "name": t.name,
        "description": t.description,
        "category": "standard",
        "status": match st.engine.templates.status(t) {
            TemplateStatus::Active => "active",
            TemplateStatus::Disabled => "disabled",
        },
        "image": t.image,
        "created_at": ts(built),
        "updated_at": ts(built),
    })
}

async fn templates(
    State(st): State<AppState>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    principal(&st, &headers)?;
    let pairs = query_pairs(q.as_deref());
    let (page, limit) = paging(&pairs)?;
    let active: Vec<_> = CATALOGUE
        .iter()
        .filter(|t| st.engine.templates.status(t) == TemplateStatus::Active)
        .collect();
    let total = active.len() as u64;
    let items = active
        .into_iter()
        .skip(((page - 1) * limit) as usize)
        .take(limit as usize)
        .map(|t| template_view(&st, t))
        .collect();
    Ok(Json(page_json(items, total, page, limit)))
}

async fn template(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    principal(&st, &headers)?;
    let t = CATALOGUE
        .iter()
        .find(|t| t.id == id)
        .ok_or_else(|| ApiError::not_found(format!("template {id} not found")))?;
    Ok(Json(template_view(&st, t)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        let p = query_pairs(Some("page=2&limit=5&name=a%2Db&x"));
        assert_eq!(query_int(&p, "page", 1, 10, 1).unwrap(), 2);
        assert_eq!(query_str(&p, "name"), Some("a-b"));
        assert!(query_int(&query_pairs(Some("limit=101")), "limit", 1, 100, 20).is_err());
        assert!(query_int(&query_pairs(Some("page=0")), "page", 1, 100, 1).is_err());
        assert!(query_int(&query_pairs(Some("page=x")), "page", 1, 100, 1).is_err());
    }
}
