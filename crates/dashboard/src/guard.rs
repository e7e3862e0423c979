//! The layers every `/ui` response goes through: security headers, and the same-origin check
//! that stands in for CSRF tokens.

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// No inline script, nothing from another origin, no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; font-src 'self'; form-action 'self'; \
     frame-ancestors 'none'; base-uri 'none'";

/// The terminal page: xterm.js writes its own `<style>` element.
pub const CSP_TERMINAL: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; \
     font-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Adds the security headers (a handler may have set its own CSP).
pub async fn headers(req: Request, next: Next) -> Response {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
    }
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

/// Whether a request that changes something comes from a page of this origin: its `Origin`
/// names this host, or `Sec-Fetch-Site` says `same-origin`. `Origin: null` counts as absent:
/// under `Referrer-Policy: no-referrer` browsers send it on their own same-origin POSTs, and
/// then fetch metadata decides (a cross-site or sandboxed sender gets `cross-site`).
pub fn is_same_origin(h: &HeaderMap) -> bool {
    let host = h.get(header::HOST).and_then(|v| v.to_str().ok());
    if let Some(origin) = h.get(header::ORIGIN).filter(|o| o.as_bytes() != b"null") {
        let Some(authority) = origin.to_str().ok().and_then(|o| {
            o.strip_prefix("http://")
                .or_else(|| o.strip_prefix("https://"))
        }) else {
            return false;
        };
        return host.is_some_and(|host| host.eq_ignore_ascii_case(authority));
    }
    h.get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes() == b"same-origin")
}

/// Refuses a non-GET request (and a WebSocket upgrade) that is not [`is_same_origin`].
pub async fn same_origin(req: Request, next: Next) -> Response {
    let safe = matches!(*req.method(), Method::GET | Method::HEAD)
        && !req.headers().contains_key(header::UPGRADE);
    if !safe && !is_same_origin(req.headers()) {
        return (
            StatusCode::FORBIDDEN,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "Refused: this request did not come from a page of the dashboard.\n",
        )
            .into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn origin_must_name_this_host() {
        assert!(is_same_origin(&h(&[
            ("host", "127.0.0.1:9090"),
            ("origin", "http://127.0.0.1:9090")
        ])));
        assert!(!is_same_origin(&h(&[
            ("host", "127.0.0.1:9090"),
            ("origin", "http://127.0.0.1:8080")
        ])));
        assert!(!is_same_origin(&h(&[
            ("host", "127.0.0.1:9090"),
            ("origin", "null")
        ])));
        assert!(is_same_origin(&h(&[
            ("host", "127.0.0.1:9090"),
            ("origin", "null"),
            ("sec-fetch-site", "same-origin")
        ])));
        assert!(!is_same_origin(&h(&[
            ("host", "127.0.0.1:9090"),
            ("origin", "null"),
            ("sec-fetch-site", "cross-site")
        ])));
        // An Origin that disagrees wins over Sec-Fetch-Site.
        assert!(!is_same_origin(&h(&[
            ("host", "a"),
            ("origin", "http://b"),
            ("sec-fetch-site", "same-origin")
        ])));
    }

    #[test]
    fn fetch_metadata_without_origin() {
        assert!(is_same_origin(&h(&[("sec-fetch-site", "same-origin")])));
        assert!(!is_same_origin(&h(&[("sec-fetch-site", "same-site")])));
        assert!(!is_same_origin(&h(&[("host", "a")])));
    }
}
