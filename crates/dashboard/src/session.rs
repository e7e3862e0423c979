//! Login, sessions and logout.
//!
//! A session id is 256 random bits, sent to the browser once in the cookie; the server keeps
//! only its SHA-256, with the principal the key resolved to, and drops it after
//! [`crate::Config::idle_timeout`] without use or [`crate::Config::absolute_timeout`] after
//! login. The key itself is never kept, put in a cookie, or written into a page.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use askama::Template;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use rand::RngCore;
use sandboxd_core::{Principal, Tenant};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::UiError;
use crate::views::LoginPage;
use crate::Dashboard;

/// The session cookie. `__Host-`: Secure, `Path=/`, no `Domain`, so no other host can set it.
pub const COOKIE: &str = "__Host-sandboxd-session";

type Hash = [u8; 32];

struct Entry {
    principal: Principal,
    created: Instant,
    last_seen: Instant,
}

/// The live sessions, by the SHA-256 of their id.
pub struct Sessions {
    idle: Duration,
    absolute: Duration,
    map: Mutex<HashMap<Hash, Entry>>,
}

fn digest(id: &str) -> Hash {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    pub fn new(idle: Duration, absolute: Duration) -> Self {
        Sessions {
            idle,
            absolute,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Starts a session for `principal`; returns its id (hex), which is not kept.
    pub fn create(&self, principal: Principal) -> String {
        let mut raw = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut raw);
        let id = hex::encode(raw);
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, e| self.live(e, now));
        map.insert(
            digest(&id),
            Entry {
                principal,
                created: now,
                last_seen: now,
            },
        );
        id
    }

    fn live(&self, e: &Entry, now: Instant) -> bool {
        now.duration_since(e.last_seen) < self.idle && now.duration_since(e.created) < self.absolute
    }

    /// The principal of a live session, marking it used; an expired one is removed.
    pub fn get(&self, id: &str) -> Option<Principal> {
        let h = digest(id);
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let e = map.get_mut(&h)?;
        if !self.live(e, now) {
            map.remove(&h);
            return None;
        }
        e.last_seen = now;
        Some(e.principal.clone())
    }

    pub fn remove(&self, id: &str) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&digest(id));
    }

    /// Ages every session by `by` (tests of expiry).
    #[cfg(test)]
    pub(crate) fn age(&self, by: Duration) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        for e in map.values_mut() {
            e.created = e.created.checked_sub(by).expect("uptime");
            e.last_seen = e.last_seen.checked_sub(by).expect("uptime");
        }
    }
}

/// Failed logins per client address in a sliding window.
pub struct LoginLimiter {
    max: u32,
    window: Duration,
    map: Mutex<HashMap<String, Vec<Instant>>>,
}

impl LoginLimiter {
    pub fn new(max: u32, window: Duration) -> Self {
        LoginLimiter {
            max,
            window,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(wait)` when `client` has used up its failures in the window.
    pub fn blocked(&self, client: &str) -> Option<Duration> {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let v = map.entry(client.to_string()).or_default();
        v.retain(|t| now.duration_since(*t) < self.window);
        if v.len() as u32 >= self.max {
            let oldest = v.iter().min().copied().unwrap_or(now);
            return Some(self.window.saturating_sub(now.duration_since(oldest)));
        }
        None
    }

    pub fn failed(&self, client: &str) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 10_000 {
            let (now, window) = (Instant::now(), self.window);
            map.retain(|_, v| v.iter().any(|t| now.duration_since(*t) < window));
        }
        map.entry(client.to_string())
            .or_default()
            .push(Instant::now());
    }
}

/// The session id in the request's cookies.
pub(crate) fn cookie_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A request of a logged-in user: who, and the tenant the pages show.
pub struct Authed {
    pub principal: Principal,
    pub tenant: Tenant,
}

/// Sends a request without a live session to the login page (htmx: a full-page redirect).
pub struct ToLogin {
    htmx: bool,
}

impl IntoResponse for ToLogin {
    fn into_response(self) -> Response {
        if self.htmx {
            let mut r = StatusCode::NO_CONTENT.into_response();
            r.headers_mut()
                .insert("hx-redirect", HeaderValue::from_static("/ui/login"));
            return r;
        }
        Redirect::to("/ui/login").into_response()
    }
}

impl FromRequestParts<Dashboard> for Authed {
    type Rejection = ToLogin;

    async fn from_request_parts(parts: &mut Parts, d: &Dashboard) -> Result<Self, ToLogin> {
        let htmx = parts.headers.contains_key("hx-request");
        let principal = cookie_of(&parts.headers)
            .and_then(|id| d.sessions.get(&id))
            .ok_or(ToLogin { htmx })?;
        Ok(Authed {
            tenant: principal.default_tenant(),
            principal,
        })
    }
}

pub(crate) async fn login_page(headers: HeaderMap, State(d): State<Dashboard>) -> Response {
    if cookie_of(&headers)
        .and_then(|id| d.sessions.get(&id))
        .is_some()
    {
        return Redirect::to("/ui/").into_response();
    }
    LoginPage { error: None }.page()
}

#[derive(Deserialize)]
pub(crate) struct LoginForm {
    key: String,
}

pub(crate) async fn login(
    State(d): State<Dashboard>,
    ext: axum::http::Extensions,
    Form(f): Form<LoginForm>,
) -> Response {
    // Per client address when the listener records it, else one shared budget.
    let client = ext
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "unknown".to_string(), |c| c.0.ip().to_string());
    let fail = |status: StatusCode, msg: String| {
        let mut r = LoginPage { error: Some(msg) }.page();
        *r.status_mut() = status;
        r
    };
    if let Some(wait) = d.limiter.blocked(&client) {
        return fail(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "Too many failed logins from your address; try again in {} s.",
                wait.as_secs().max(1)
            ),
        );
    }
    let key = f.key.trim();
    let principal = if key.is_empty() || key.len() > 512 {
        None
    } else {
        match d.engine.authenticate(key) {
            Ok(p) => p,
            Err(e) => return UiError::from(e).page(),
        }
    };
    let Some(principal) = principal else {
        d.limiter.failed(&client);
        tracing::info!(%client, "dashboard login refused");
        return fail(
            StatusCode::UNAUTHORIZED,
            "That API key is not valid.".to_string(),
        );
    };
    tracing::info!(key_id = %principal.key_id, "dashboard login");
    let id = d.sessions.create(principal);
    let mut r = Redirect::to("/ui/").into_response();
    // 303 for the form's POST; the cookie holds the id only.
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{COOKIE}={id}; Path=/; Secure; HttpOnly; SameSite=Strict"
    )) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

pub(crate) async fn logout(headers: HeaderMap, State(d): State<Dashboard>) -> Response {
    if let Some(id) = cookie_of(&headers) {
        d.sessions.remove(&id);
    }
    let mut r = Redirect::to("/ui/login").into_response();
    *r.status_mut() = StatusCode::SEE_OTHER;
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&format!(
            "{COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0"
        ))
        .expect("static cookie"),
    );
    r
}

impl LoginPage {
    fn page(&self) -> Response {
        match self.render() {
            Ok(html) => crate::views::html(html),
            Err(e) => UiError::from(e).page(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> Principal {
        Principal {
            key_id: "k".into(),
            org: "o".into(),
            project: None,
        }
    }

    #[test]
    fn ids_are_256_bit_and_only_hashes_are_kept() {
        let s = Sessions::new(Duration::from_secs(60), Duration::from_secs(600));
        let id = s.create(p());
        assert_eq!(id.len(), 64);
        let map = s.map.lock().unwrap();
        assert!(!map.contains_key(id.as_bytes()));
        assert!(map.contains_key(&digest(&id)));
    }

    #[test]
    fn idle_and_absolute_expiry() {
        let s = Sessions::new(Duration::from_secs(60), Duration::from_secs(600));
        let id = s.create(p());
        assert!(s.get(&id).is_some());
        s.age(Duration::from_secs(61));
        assert!(s.get(&id).is_none(), "idle session must end");

        let id = s.create(p());
        // Used every 50 s, it still ends at the absolute limit.
        for _ in 0..11 {
            s.age(Duration::from_secs(50));
            assert!(s.get(&id).is_some());
        }
        s.age(Duration::from_secs(50));
        assert!(s.get(&id).is_none(), "absolute limit must end it");
    }

    #[test]
    fn limiter_blocks_after_max_failures() {
        let l = LoginLimiter::new(3, Duration::from_secs(60));
        for _ in 0..3 {
            assert!(l.blocked("a").is_none());
            l.failed("a");
        }
        assert!(l.blocked("a").is_some());
        assert!(l.blocked("b").is_none());
    }

    #[test]
    fn cookie_parsing_takes_only_well_formed_ids() {
        let mut h = HeaderMap::new();
        let id = "ab".repeat(32);
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("x=1; {COOKIE}={id}")).unwrap(),
        );
        assert_eq!(cookie_of(&h), Some(id));
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("{COOKIE}=short")).unwrap(),
        );
        assert_eq!(cookie_of(&h), None);
    }
}
