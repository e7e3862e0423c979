//! The browser assets, embedded in the binary: vendored libraries (see
//! `assets/vendor/VENDOR.md`) and the dashboard's own script and style sheet.

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

/// `(path under /ui/assets/, content type, bytes)`.
pub const FILES: &[(&str, &str, &[u8])] = &[
    ("app.js", JS, include_bytes!("../assets/app.js")),
    ("app.css", CSS, include_bytes!("../assets/app.css")),
    (
        "htmx.min.js",
        JS,
        include_bytes!("../assets/vendor/htmx/htmx.min.js"),
    ),
    (
        "uPlot.iife.min.js",
        JS,
        include_bytes!("../assets/vendor/uplot/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        CSS,
        include_bytes!("../assets/vendor/uplot/uPlot.min.css"),
    ),
    (
        "xterm.js",
        JS,
        include_bytes!("../assets/vendor/xterm/xterm.js"),
    ),
    (
        "xterm.css",
        CSS,
        include_bytes!("../assets/vendor/xterm/xterm.css"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_bytes!("../assets/favicon.svg"),
    ),
];

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

pub(crate) async fn serve(Path(file): Path<String>) -> Response {
    match FILES.iter().find(|(name, _, _)| *name == file) {
        Some((_, ty, body)) => (
            [
                (header::CONTENT_TYPE, *ty),
                (header::CACHE_CONTROL, "public, max-age=3600"),
            ],
            *body,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such asset\n").into_response(),
    }
}
