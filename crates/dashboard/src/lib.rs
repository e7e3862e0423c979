//! The sandboxd web dashboard: pages rendered on the server (askama, escaped by default) with
//! htmx for partial updates, mounted at `/ui`.
//!
//! Handlers call the engine in-process, never the public HTTP API, for the tenant of the
//! session's key. The API key a user pastes is checked once at login and then forgotten: the
//! browser holds only a random session id in a `__Host-` cookie ([`session`]). Every response
//! carries a strict Content-Security-Policy, and every non-GET request must come from this
//! origin ([`guard`]). Browser assets are vendored and embedded ([`assets`]).
//!
//! - [`sandboxes`]: the list, create, the detail page and its actions and tabs.
//! - [`snapshots`]: take, list, restore, roll back, delete.
//! - [`views`]: the templates and how records are shown.

pub mod assets;
mod error;
pub mod guard;
mod sandboxes;
pub mod session;
mod snapshots;
mod terminal;
mod views;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use axum::response::Redirect;
use axum::routing::{get, post};
use axum::Router;
use sandboxd_engine::Engine;
use sandboxd_metrics::Hub;

pub use error::UiError;

/// The path the dashboard is mounted at.
pub const BASE: &str = "/ui";

/// Settings of the dashboard.
#[derive(Debug, Clone)]
pub struct Config {
    /// A session ends after this long without a request.
    pub idle_timeout: Duration,
    /// A session ends this long after login, whatever its use.
    pub absolute_timeout: Duration,
    /// Failed logins one client may make per [`Config::login_window`] before it must wait.
    pub login_failures: u32,
    pub login_window: Duration,
    /// The API's base URL, for preview links (`<api_url>/p/<token>/`).
    pub api_url: String,
    /// Previews on `<token>.<domain>` instead of the path form.
    pub preview_domain: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            idle_timeout: Duration::from_secs(30 * 60),
            absolute_timeout: Duration::from_secs(12 * 3600),
            login_failures: 5,
            login_window: Duration::from_secs(60),
            api_url: "http://127.0.0.1:8080".into(),
            preview_domain: None,
        }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct Dashboard {
    pub(crate) engine: Arc<Engine>,
    pub(crate) hub: Option<Arc<Hub>>,
    pub(crate) sessions: Arc<session::Sessions>,
    pub(crate) limiter: Arc<session::LoginLimiter>,
    pub(crate) cfg: Arc<Config>,
}

impl Dashboard {
    pub fn new(engine: Arc<Engine>, hub: Option<Arc<Hub>>, cfg: Config) -> Self {
        Dashboard {
            engine,
            hub,
            sessions: Arc::new(session::Sessions::new(
                cfg.idle_timeout,
                cfg.absolute_timeout,
            )),
            limiter: Arc::new(session::LoginLimiter::new(
                cfg.login_failures,
                cfg.login_window,
            )),
            cfg: Arc::new(cfg),
        }
    }
}

/// The dashboard's routes, all under [`BASE`], with its security layers. It has no fallback,
/// so that it can be merged into another router.
pub fn router(d: Dashboard) -> Router {
    routes()
        .layer(axum::middleware::from_fn(guard::same_origin))
        .layer(axum::middleware::from_fn(guard::headers))
        .with_state(d)
}

fn routes() -> Router<Dashboard> {
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(sandboxes::list_page))
        .route("/ui/login", get(session::login_page).post(session::login))
        .route("/ui/logout", post(session::logout))
        .route("/ui/assets/{*file}", get(assets::serve))
        .merge(sandboxes::routes())
        .merge(snapshots::routes())
        .merge(terminal::routes())
}

/// The dashboard as the whole app of a listener of its own: `/` leads to it, anything else is
/// a 404 page.
pub fn standalone(d: Dashboard) -> Router {
    routes()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route(
            "/favicon.ico",
            get(|| assets::serve(axum::extract::Path("favicon.svg".to_string()))),
        )
        .fallback(error::not_found)
        .layer(axum::middleware::from_fn(guard::same_origin))
        .layer(axum::middleware::from_fn(guard::headers))
        .with_state(d)
}
