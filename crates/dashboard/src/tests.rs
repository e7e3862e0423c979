//! Handler tests: the router driven with `tower::ServiceExt::oneshot` over a real engine (an
//! in-memory metadata store, a runtime that refuses everything: no sandbox is ever started).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, Response, StatusCode};
use axum::Router;
use chrono::Utc;
use sandboxd_core::{NetSlot, Sandbox, SandboxId, SandboxState, Tenant};
use sandboxd_engine::{Engine, EngineConfig, Templates};
use sandboxd_runtime::{
    CaptureStats, ContainerStatus, ImageWait, Runtime, RuntimeError, SandboxSpec, Usage,
};
use tower::ServiceExt;

use crate::{Config, Dashboard};

struct NoRuntime;

fn refused() -> RuntimeError {
    RuntimeError::NotReady("no runtime in tests".into())
}

impl Runtime for NoRuntime {
    fn name(&self) -> &'static str {
        "none"
    }
    fn create(&self, _: &SandboxSpec) -> Result<(), RuntimeError> {
        Err(refused())
    }
    fn destroy(&self, _: &str, _: Option<NetSlot>) -> Result<(), RuntimeError> {
        Ok(())
    }
    fn status(&self, _: &str) -> Result<ContainerStatus, RuntimeError> {
        Ok(ContainerStatus::Stopped)
    }
    fn alive(&self, _: &str) -> bool {
        false
    }
    fn sweep(&self, _: &[String]) -> Result<Vec<String>, RuntimeError> {
        Ok(vec![])
    }
    fn usage(&self, _: &str) -> Result<Usage, RuntimeError> {
        Err(refused())
    }
    fn capture(
        &self,
        _: &str,
        _: Option<&Path>,
        _: Option<&Path>,
        _: bool,
    ) -> Result<CaptureStats, RuntimeError> {
        Err(refused())
    }
    fn resume(&self, _: &SandboxSpec, _: Option<&Path>) -> Result<(), RuntimeError> {
        Err(refused())
    }
    fn restore_new_when(
        &self,
        _: &SandboxSpec,
        _: &Path,
        _: Option<ImageWait>,
    ) -> Result<(), RuntimeError> {
        Err(refused())
    }
    fn rollback(&self, _: &SandboxSpec, _: &Path, _: Option<&Path>) -> Result<(), RuntimeError> {
        Err(refused())
    }
    fn capture_paths(&self, name: &str) -> (PathBuf, PathBuf) {
        (
            PathBuf::from("/nonexistent").join(name),
            PathBuf::from("/nonexistent"),
        )
    }
    fn drop_layer(&self, _: &Path) -> Result<(), RuntimeError> {
        Ok(())
    }
    fn close_if_idle(&self) -> Result<(), RuntimeError> {
        Ok(())
    }
    fn set_egress(
        &self,
        _: &str,
        _: NetSlot,
        _: &sandboxd_egress::Policy,
    ) -> Result<(), RuntimeError> {
        Ok(())
    }
    fn egress_denied(&self, _: &str) -> u64 {
        0
    }
    fn discard_dead(&self, _: &str) -> Result<(), RuntimeError> {
        Ok(())
    }
    fn resize(&self, _: &str, _: &sandboxd_core::Resources) -> Result<(), RuntimeError> {
        Err(refused())
    }
}

struct World {
    engine: Arc<Engine>,
    dash: Dashboard,
    key: String,
}

const HOST: &str = "127.0.0.1:9999";
const ORIGIN: &str = "http://127.0.0.1:9999";

fn world() -> World {
    let meta = Arc::new(sandboxd_meta::SqliteStore::in_memory().unwrap());
    let engine = Arc::new(Engine::new(
        EngineConfig::default(),
        meta,
        Arc::new(NoRuntime),
        Templates::new(std::env::temp_dir().join("sandboxd-dashboard-tests-templates")),
    ));
    let key = key_for(&engine, "acme");
    let dash = Dashboard::new(engine.clone(), None, Config::default());
    World { engine, dash, key }
}

fn key_for(engine: &Engine, org: &str) -> String {
    use secrecy::ExposeSecret;
    sandboxd_engine::keys::create(engine.meta(), org, None)
        .unwrap()
        .expose_secret()
        .to_string()
}

fn insert(engine: &Engine, org: &str, name: &str, state: SandboxState) -> SandboxId {
    let t = engine.templates.lookup("sb-busybox").unwrap();
    let now = Utc::now();
    // Through serde, so that fields others add with a default need no change here.
    let mut sb: Sandbox = serde_json::from_value(serde_json::json!({
        "id": SandboxId::new(),
        "tenant": {"org": org, "project": "default"},
        "name": name,
        "region": "local",
        "template_id": t.id,
        "image": t.image,
        "command": [],
        "env": [],
        "resources": sandboxd_core::Resources::default(),
        "state": state,
        "status_message": null,
        "net": null,
        "egress": null,
        "created_by": null,
        "created_at": now,
        "updated_at": now,
        "timeout_secs": 600,
        "last_activity_at": now,
    }))
    .unwrap();
    engine.meta().insert_sandbox(&mut sb).unwrap();
    sb.id
}

fn app(w: &World) -> Router {
    crate::router(w.dash.clone())
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, String) {
    let resp: Response<Body> = app.clone().oneshot(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 24).await.unwrap();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

fn get(path: &str, cookie: Option<&str>) -> Request<Body> {
    let mut b = Request::get(path).header(header::HOST, HOST);
    if let Some(c) = cookie {
        b = b.header(header::COOKIE, format!("{}={c}", crate::session::COOKIE));
    }
    b.body(Body::empty()).unwrap()
}

fn post(path: &str, cookie: Option<&str>, origin: Option<&str>, form: &str) -> Request<Body> {
    let mut b = Request::post(path)
        .header(header::HOST, HOST)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(c) = cookie {
        b = b.header(header::COOKIE, format!("{}={c}", crate::session::COOKIE));
    }
    if let Some(o) = origin {
        b = b.header(header::ORIGIN, o);
    }
    b.body(Body::from(form.to_string())).unwrap()
}

fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Logs in with `key`; returns the session id from the cookie.
async fn login(app: &Router, key: &str) -> String {
    let (status, headers, _) = send(
        app,
        post(
            "/ui/login",
            None,
            Some(ORIGIN),
            &format!("key={}", form_encode(key)),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let cookie = headers
        .get(header::SET_COOKIE)
        .expect("a session cookie")
        .to_str()
        .unwrap()
        .to_string();
    let id = cookie
        .strip_prefix(&format!("{}=", crate::session::COOKIE))
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    id
}

#[tokio::test]
async fn without_a_session_pages_go_to_login() {
    let w = world();
    let (status, headers, _) = send(&app(&w), get("/ui/", None)).await;
    assert!(status.is_redirection());
    assert_eq!(headers[header::LOCATION], "/ui/login");
    // htmx requests are told to navigate instead.
    let mut req = get("/ui/sandboxes/rows", None);
    req.headers_mut()
        .insert("hx-request", "true".parse().unwrap());
    let (_, headers, _) = send(&app(&w), req).await;
    assert_eq!(headers["hx-redirect"], "/ui/login");
    let (status, headers, body) = send(&app(&w), get("/ui/login", None)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("name=\"key\""));
    assert!(headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .contains("script-src 'self'"));
    assert_eq!(headers[header::X_FRAME_OPTIONS], "DENY");
    assert_eq!(headers[header::REFERRER_POLICY], "no-referrer");
    assert!(!body.contains("<script>"), "no inline script");
}

#[tokio::test]
async fn a_wrong_key_sets_no_cookie_and_says_so() {
    let w = world();
    let (status, headers, body) = send(
        &app(&w),
        post("/ui/login", None, Some(ORIGIN), "key=sbx_nope_nope"),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(headers.get(header::SET_COOKIE).is_none());
    assert!(body.contains("That API key is not valid."));
}

#[tokio::test]
async fn a_right_key_gets_a_host_only_http_only_strict_cookie_without_the_key() {
    let w = world();
    let (status, headers, _) = send(
        &app(&w),
        post(
            "/ui/login",
            None,
            Some(ORIGIN),
            &format!("key={}", form_encode(&w.key)),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let c = headers[header::SET_COOKIE].to_str().unwrap();
    assert!(c.starts_with("__Host-"), "{c}");
    for attr in ["Path=/", "Secure", "HttpOnly", "SameSite=Strict"] {
        assert!(c.contains(attr), "{attr} missing in {c}");
    }
    assert!(!c.contains("Domain"));
    assert!(!c.contains(&w.key));
    let secret = w.key.rsplit('_').next().unwrap();
    assert!(!c.contains(secret));
}

#[tokio::test]
async fn failed_logins_are_rate_limited() {
    let w = world();
    let app = app(&w);
    for _ in 0..5 {
        let (status, _, _) = send(&app, post("/ui/login", None, Some(ORIGIN), "key=bad")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    // Even the right key waits now.
    let (status, headers, body) = send(
        &app,
        post(
            "/ui/login",
            None,
            Some(ORIGIN),
            &format!("key={}", form_encode(&w.key)),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(headers.get(header::SET_COOKIE).is_none());
    assert!(body.contains("Too many failed logins"));
}

#[tokio::test]
async fn posts_without_a_same_origin_are_refused() {
    let w = world();
    let app = app(&w);
    let sid = login(&app, &w.key).await;
    let id = insert(&w.engine, "acme", "victim", SandboxState::Paused);
    let path = format!("/ui/sandboxes/{id}/delete");
    for origin in [
        None,
        Some("http://evil.example"),
        Some("null"),
        Some("http://127.0.0.1:8080"),
    ] {
        let (status, _, _) = send(&app, post(&path, Some(&sid), origin, "confirm=victim")).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "origin {origin:?}");
    }
    // Fetch metadata without Origin: same-site is not enough.
    let mut req = post(&path, Some(&sid), None, "confirm=victim");
    req.headers_mut()
        .insert("sec-fetch-site", "same-site".parse().unwrap());
    assert_eq!(send(&app, req).await.0, StatusCode::FORBIDDEN);
    // Login too (no login CSRF).
    let (status, _, _) = send(&app, post("/ui/login", None, None, "key=x")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(w.engine.get_sandbox(&tenant("acme"), id).is_ok());
}

fn tenant(org: &str) -> Tenant {
    Tenant {
        org: org.into(),
        project: "default".into(),
    }
}

#[tokio::test]
async fn the_list_escapes_names_and_shows_running_and_paused() {
    let w = world();
    let app = app(&w);
    let sid = login(&app, &w.key).await;
    insert(
        &w.engine,
        "acme",
        "<script>alert(1)</script>",
        SandboxState::Running,
    );
    insert(&w.engine, "acme", "sleepy", SandboxState::Paused);
    let (status, _, body) = send(&app, get("/ui/", Some(&sid))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!body.contains("<script>alert(1)</script>"));
    assert!(
        body.contains("&#60;script&#62;alert(1)&#60;/script&#62;")
            || body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{body}"
    );
    assert!(body.contains("sleepy"));
    assert!(body.contains(">Paused<"));
    assert!(body.contains(">Ready<"));
    // Filter by phase and search by name (the rows htmx polls).
    let (_, _, rows) = send(&app, get("/ui/sandboxes/rows?phase=Paused&q=", Some(&sid))).await;
    assert!(rows.contains("sleepy") && !rows.contains("alert(1)"));
    let (_, _, rows) = send(&app, get("/ui/sandboxes/rows?phase=&q=SLEE", Some(&sid))).await;
    assert!(rows.contains("sleepy") && !rows.contains("alert(1)"));
    assert!(rows.contains("hx-trigger=\"every 2s\""));
}

#[tokio::test]
async fn another_org_sees_none_of_it() {
    let w = world();
    let app = app(&w);
    let id = insert(&w.engine, "acme", "secret-box", SandboxState::Running);
    let other = key_for(&w.engine, "globex");
    let sid = login(&app, &other).await;
    let (_, _, body) = send(&app, get("/ui/", Some(&sid))).await;
    assert!(!body.contains("secret-box"));
    let (status, _, body) = send(&app, get(&format!("/ui/sandboxes/{id}"), Some(&sid))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(!body.contains("secret-box"));
}

#[tokio::test]
async fn sessions_expire_and_logout_ends_them() {
    let w = world();
    let app = app(&w);
    let sid = login(&app, &w.key).await;
    assert_eq!(send(&app, get("/ui/", Some(&sid))).await.0, StatusCode::OK);
    w.dash.sessions.age(Duration::from_secs(31 * 60));
    let (status, headers, _) = send(&app, get("/ui/", Some(&sid))).await;
    assert!(status.is_redirection());
    assert_eq!(headers[header::LOCATION], "/ui/login");

    let sid = login(&app, &w.key).await;
    let (status, headers, _) = send(&app, post("/ui/logout", Some(&sid), Some(ORIGIN), "")).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(headers[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    assert!(send(&app, get("/ui/", Some(&sid))).await.0.is_redirection());
    // Logout is POST only.
    assert_eq!(
        send(&app, get("/ui/logout", Some(&sid))).await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
}

#[tokio::test]
async fn the_detail_page_has_the_snapshot_modal_and_tabs() {
    let w = world();
    let app = app(&w);
    let sid = login(&app, &w.key).await;
    let id = insert(&w.engine, "acme", "web", SandboxState::Running);
    let (status, _, body) = send(&app, get(&format!("/ui/sandboxes/{id}"), Some(&sid))).await;
    assert_eq!(status, StatusCode::OK);
    for s in [
        "Take snapshot",
        "id=\"snapshot-name\"",
        "id=\"snapshot-memory\" checked",
        "id=\"snapshot-create\"",
        "tab=snapshots",
        "tab=metrics",
        "tab=terminal",
        "tab=audit",
        "data-must-equal=\"web\"",
    ] {
        assert!(body.contains(s), "{s} missing");
    }
    let (_, headers, body) = send(
        &app,
        get(&format!("/ui/sandboxes/{id}?tab=terminal"), Some(&sid)),
    )
    .await;
    assert!(body.contains("id=\"command\""));
    assert!(headers[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .starts_with("default-src 'none'; script-src 'self';"));
}

#[tokio::test]
async fn engine_and_form_errors_come_back_in_words() {
    let w = world();
    let app = app(&w);
    let sid = login(&app, &w.key).await;
    let id = insert(&w.engine, "acme", "web", SandboxState::Running);
    // A bad snapshot name, checked before anything runs.
    let (status, _, body) = send(
        &app,
        post(
            &format!("/ui/sandboxes/{id}/snapshots"),
            Some(&sid),
            Some(ORIGIN),
            "name=Bad+Name&memory=on&retention=0",
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "htmx swaps only 2xx");
    assert!(body.contains("is not a valid snapshot name"), "{body}");
    assert!(body.contains("lowercase letters, digits and hyphens"));
    // A delete whose typed name does not match.
    let (_, _, body) = send(
        &app,
        post(
            &format!("/ui/sandboxes/{id}/delete"),
            Some(&sid),
            Some(ORIGIN),
            "confirm=wbe",
        ),
    )
    .await;
    assert!(body.contains("Type the sandbox"));
    assert!(w.engine.get_sandbox(&tenant("acme"), id).is_ok());
    // Resume of a running sandbox: the engine's 409, in words.
    let (_, _, body) = send(
        &app,
        post(
            &format!("/ui/sandboxes/{id}/resume"),
            Some(&sid),
            Some(ORIGIN),
            "",
        ),
    )
    .await;
    assert!(body.contains("Not possible right now"), "{body}");
    assert!(!body.contains("409"));
}

#[tokio::test]
async fn assets_are_embedded() {
    let w = world();
    let (status, headers, body) = send(&app(&w), get("/ui/assets/htmx.min.js", None)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    assert!(body.contains("htmx"));
    assert_eq!(
        send(&app(&w), get("/ui/assets/../Cargo.toml", None))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
}
