//! Leap0 `v1`: sandboxes, snapshots, processes and files, as the official `leap0` Python SDK
//! speaks them (docs/compat/leap0.md). A thin front-end over the same engine actions as the
//! NeevCloud dialect: the tenant is the API key's org and project.

mod dto;
mod fs;
mod git;
mod lsp;
mod multipart;
mod process;
mod pty;
mod search;
mod snapshots;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use sandboxd_core::{Lifetime, Principal, Sandbox, SandboxId, Tenant};
use sandboxd_engine::CreateSandbox;
use serde_json::{json, Value};

use crate::body::{int_field, read_json};
use crate::error::{ApiError, Dialect};
use crate::AppState;
pub(crate) use dto::ts;

pub fn routes() -> Router<AppState> {
    let sb = "/v1/sandbox/{id}";
    Router::new()
        .route("/v1/sandbox", post(create))
        .route("/v1/sandbox/", post(create))
        .route(sb, get(get_one).delete(delete))
        .route(&format!("{sb}/"), get(get_one).delete(delete))
        .route("/v1/sandboxes", get(list))
        .route(&format!("{sb}/pause"), post(pause))
        .route(&format!("{sb}/resume"), post(resume))
        .route(&format!("{sb}/stop"), post(stop))
        .route(&format!("{sb}/start"), post(start))
        .route(&format!("{sb}/network-policy"), put(set_network_policy))
        .route(&format!("{sb}/system/user-home-dir"), get(home_dir))
        .route(&format!("{sb}/system/workdir"), get(workdir))
        .route(&format!("{sb}/presigned-url"), post(create_presigned))
        .route(
            &format!("{sb}/presigned-url/{{pid}}"),
            axum::routing::delete(delete_presigned),
        )
        .merge(snapshots::routes())
        .merge(fs::routes())
        .merge(git::routes())
        .merge(pty::routes())
        .merge(lsp::routes())
}

/// An error rendered in Leap0's shape (`{message}`; 400 adds `errors: [{field, error}]`).
pub struct L0Error(ApiError);

impl<E: Into<ApiError>> From<E> for L0Error {
    fn from(e: E) -> Self {
        L0Error(e.into())
    }
}

impl IntoResponse for L0Error {
    fn into_response(self) -> Response {
        self.0.in_dialect(Dialect::Leap0).into_response()
    }
}

pub type L0Result = Result<Response, L0Error>;

/// The API key from `Authorization` or `Leap0-Authorization`, with or without `Bearer `
/// (the SDK's `bearer=False` sends it bare). Never logged.
pub(crate) fn principal(st: &AppState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let raw = ["authorization", "leap0-authorization"]
        .iter()
        .find_map(|h| headers.get(*h).and_then(|v| v.to_str().ok()))
        .ok_or_else(ApiError::unauthorized)?
        .trim();
    let token = raw
        .get(..7)
        .filter(|p| p.eq_ignore_ascii_case("bearer "))
        .map(|_| raw[7..].trim())
        .unwrap_or(raw);
    if token.is_empty() {
        return Err(ApiError::unauthorized());
    }
    st.engine
        .authenticate(token)
        .map_err(ApiError::from)?
        .ok_or_else(ApiError::unauthorized)
}

/// The caller and the tenant its key maps to.
pub(crate) fn caller(st: &AppState, headers: &HeaderMap) -> Result<(Principal, Tenant), ApiError> {
    let p = principal(st, headers)?;
    let t = p.default_tenant();
    Ok((p, t))
}

/// A sandbox id from the path; anything but a UUID is a sandbox that does not exist.
pub(crate) fn sandbox_id(raw: &str) -> Result<SandboxId, ApiError> {
    SandboxId::parse(raw.trim_end_matches('/'))
        .ok_or_else(|| ApiError::not_found(format!("sandbox {raw} not found")))
}

fn created(v: Value) -> Response {
    (StatusCode::CREATED, Json(v)).into_response()
}

/// Adds an RFC 7234 `Warning` when the request's network policy is not what the node does.
pub(crate) fn with_policy_warning(mut r: Response, policy: Option<&Value>) -> Response {
    if dto::policy_not_honoured(policy) {
        let w = format!("299 sandboxd \"{}\"", dto::NOT_ENFORCED);
        if let Ok(h) = HeaderValue::from_str(&w) {
            r.headers_mut().insert("warning", h);
        }
    }
    r
}

/// A hostname for a sandbox the client did not name.
pub(crate) fn generated_name() -> String {
    format!("l0-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

async fn create(State(st): State<AppState>, headers: HeaderMap, body: Body) -> L0Result {
    let (p, t) = caller(&st, &headers)?;
    let req: dto::CreateReq = read_json(body, false).await?;
    let template = dto::one_of(
        req.template_name.clone(),
        "template_name",
        req.template.clone(),
        "template",
    )?;
    if let Some(name) = &template {
        if name.trim().is_empty() || name.len() > 64 {
            return Err(ApiError::invalid("template_name", "must be 1-64 characters").into());
        }
    }
    let resources = dto::resources(&req)?;
    let env = dto::env(&req)?;
    let timeout = dto::timeout_secs(req.timeout, req.timeout_min)?;
    // Leap0's documented default is allow-all; it is stored so the record says what runs.
    let policy = dto::network_policy(req.network_policy.as_ref())?
        .or_else(|| Some(json!({"mode": "allow-all"})));
    if req.mounts.as_ref().is_some_and(|m| !m.is_empty()) {
        return Err(ApiError::invalid(
            "mounts",
            "object storage mounts are not available on this node",
        )
        .into());
    }
    let template = st
        .engine
        .resolve_template(template.as_deref().map(str::trim), "template_name")?;
    let auto_pause = req.auto_pause.unwrap_or(false);
    let sb = st
        .engine
        .create_sandbox(
            &p,
            &t,
            CreateSandbox {
                name: generated_name(),
                region: None,
                template,
                env,
                resources,
                egress: None,
                command: vec![],
                timeout_secs: None,
                lifetime: Lifetime {
                    timeout_secs: Some(timeout),
                    started_at: None,
                    auto_pause,
                },
                network_policy: policy.clone(),
                snapshot_frequency: None,
            },
        )
        .await?;
    Ok(with_policy_warning(
        created(dto::sandbox_view(&sb)),
        policy.as_ref(),
    ))
}

fn view(sb: &Sandbox) -> Response {
    Json(dto::sandbox_view(sb)).into_response()
}

async fn get_one(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> L0Result {
    let (_, t) = caller(&st, &headers)?;
    Ok(view(&st.engine.get_sandbox(&t, sandbox_id(&id)?)?))
}

async fn delete(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> L0Result {
    let (_, t) = caller(&st, &headers)?;
    st.engine.delete_sandbox(&t, sandbox_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `PUT /v1/sandbox/{id}/network-policy` (sandboxd's addition; Leap0 has no update route):
/// replaces the policy of a running sandbox at once, without a restart.
async fn set_network_policy(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> L0Result {
    let (_, t) = caller(&st, &headers)?;
    let v: Value = read_json(body, false).await?;
    let policy = dto::network_policy(Some(&v))?
        .ok_or_else(|| ApiError::invalid("network_policy", "is required"))?;
    let sb = st
        .engine
        .update_egress(
            &t,
            sandbox_id(&id)?,
            sandboxd_engine::EgressUpdate::Leap0(policy.clone()),
        )
        .await?;
    Ok(with_policy_warning(view(&sb), Some(&policy)))
}

async fn pause(State(st): State<AppState>, Path(id): Path<String>, headers: HeaderMap) -> L0Result {
    let (_, t) = caller(&st, &headers)?;
    let sb = st.engine.pause_sandbox(&t, sandbox_id(&id)?, true).await?;
    Ok(created(dto::sandbox_view(&sb)))
}

async fn resume(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> L0Result {
    let (_, t) = caller(&st, &headers)?;
    Ok(view(&st.engine.resume_sandbox(&t, sandbox_id(&id)?).await?))
}

async fn stop(State(st): State<AppState>, Path(id): Path<String>, headers: HeaderMap) -> L0Result {
    let (_, t) = caller(&st, &headers)?;
    Ok(view(&st.engine.stop_sandbox(&t, sandbox_id(&id)?).await?))
}

async fn start(State(st): State<AppState>, Path(id): Path<String>, headers: HeaderMap) -> L0Result {
    let (_, t) = caller(&st, &headers)?;
    Ok(view(&st.engine.start_sandbox(&t, sandbox_id(&id)?).await?))
}

async fn home_dir(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> L0Result {
    let (_, t) = caller(&st, &headers)?;
    st.engine.get_sandbox(&t, sandbox_id(&id)?)?;
    Ok(Json(json!({"user_home_dir": "/root"})).into_response())
}

async fn workdir(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> L0Result {
    let (_, t) = caller(&st, &headers)?;
    st.engine.get_sandbox(&t, sandbox_id(&id)?)?;
    Ok(Json(json!({"workdir": fs::WORKDIR})).into_response())
}

/// `POST /v1/sandbox/{id}/presigned-url {port, expires_in?}`: a public URL for one port of
/// the sandbox, served by this server under `/p/<token>/`. The token is returned once.
async fn create_presigned(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> L0Result {
    let (_, t) = caller(&st, &headers)?;
    let sid = sandbox_id(&id)?;
    let req: Value = read_json(body, false).await?;
    let port = int_field(&req, "port", true)?.unwrap_or_default();
    let ttl = int_field(&req, "expires_in", false)?;
    let issued = st.engine.create_preview(&t, sid, port, ttl)?;
    let u = &issued.url;
    Ok(created(json!({
        "id": u.id,
        "token": issued.token,
        "url": crate::preview::url_of(&st, &issued.token),
        "sandbox_id": u.sandbox_id.to_string(),
        "port": u.port,
        "expires_at": dto::ts(u.expires_at),
        "created_at": dto::ts(u.created_at),
    })))
}

/// `DELETE /v1/sandbox/{id}/presigned-url/{pid}`: revokes the URL at once.
async fn delete_presigned(
    State(st): State<AppState>,
    Path((id, pid)): Path<(String, String)>,
    headers: HeaderMap,
) -> L0Result {
    let (_, t) = caller(&st, &headers)?;
    st.engine.delete_preview(&t, sandbox_id(&id)?, &pid)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Query parameters shared by the two listings: `sort`, `order-by`, `page`, `page-size`.
pub(crate) struct Paging {
    pub sort: String,
    pub desc: bool,
    pub page: u64,
    pub page_size: u64,
}

pub(crate) fn paging(pairs: &[(String, String)], sorts: &[&str]) -> Result<Paging, ApiError> {
    let get = |k: &str| {
        pairs
            .iter()
            .rev()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let int = |k: &str, min: u64, max: u64, default: u64| -> Result<u64, ApiError> {
        match get(k) {
            None | Some("") => Ok(default),
            Some(v) => v
                .parse::<u64>()
                .ok()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| {
                    ApiError::invalid(k, format!("must be an integer between {min} and {max}"))
                }),
        }
    };
    let sort = get("sort")
        .filter(|s| !s.is_empty())
        .unwrap_or("created_at");
    if !sorts.contains(&sort) {
        return Err(ApiError::invalid(
            "sort",
            format!("must be one of {}", sorts.join(", ")),
        ));
    }
    let desc = match get("order-by").unwrap_or("desc") {
        "desc" | "" => true,
        "asc" => false,
        _ => return Err(ApiError::invalid("order-by", "must be asc or desc")),
    };
    Ok(Paging {
        sort: sort.to_string(),
        desc,
        page: int("page", 1, 1_000_000, 1)?,
        page_size: int("page-size", 1, 100, 20)?,
    })
}

impl Paging {
    pub fn apply<T>(&self, mut items: Vec<T>) -> (Vec<T>, u64) {
        if self.desc {
            items.reverse();
        }
        let total = items.len() as u64;
        let page = items
            .into_iter()
            .skip(((self.page - 1) * self.page_size) as usize)
            .take(self.page_size as usize)
            .collect();
        (page, total)
    }
}

async fn list(State(st): State<AppState>, RawQuery(q): RawQuery, headers: HeaderMap) -> L0Result {
    let (_, t) = caller(&st, &headers)?;
    let pairs = crate::query::pairs(q.as_deref());
    let pg = paging(&pairs, &["created_at", "state"])?;
    let filter = match pairs.iter().rev().find(|(k, _)| k == "state") {
        Some((_, s)) if !s.is_empty() => Some(dto::state_filter(s)?),
        _ => None,
    };
    // Oldest first from the store; sorting by state keeps that order within a state.
    let mut all: Vec<Sandbox> = st
        .engine
        .list_sandboxes(&t, 0, u64::MAX >> 1)?
        .items
        .into_iter()
        .filter(|s| filter.as_ref().is_none_or(|f| f.contains(&s.state)))
        .collect();
    if pg.sort == "state" {
        all.sort_by_key(|s| dto::state(s.state));
    }
    let (items, total) = pg.apply(all);
    Ok(Json(json!({
        "items": items.iter().map(dto::sandbox_item).collect::<Vec<_>>(),
        "total_items": total,
    }))
    .into_response())
}
