//! The preview proxy: `ANY /p/{token}/{*path}` is forwarded to the sandbox port the token was
//! issued for (HTTP/1.1, the request and response streamed as they come). No API key: the
//! token is the credential. Errors: 404 for an unknown, expired or revoked token, 503 while
//! the sandbox is not running, 502 when nothing answers on the port, 504 when the server
//! there sends no response head within 120 s (a streamed body may take as long as it needs).

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use hyper_util::rt::TokioIo;
use sandboxd_engine::preview::PreviewTarget;
use tracing::debug;

use crate::error::ApiError;
use crate::AppState;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest the sandbox's server may take to send its response head (504 after).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(120);

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/p/{token}", any(root))
        .route("/p/{token}/", any(root))
        .route("/p/{token}/{*path}", any(sub_path))
}

/// The public URL of a token on this server: `<public_url>/p/<token>/`, or with a preview
/// domain `<scheme>://<token>.<domain>[:<public_url's port>]/`.
pub(crate) fn url_of(st: &AppState, token: &str) -> String {
    url_for(&st.public_url, st.preview_domain.as_deref(), token)
}

fn url_for(public_url: &str, preview_domain: Option<&str>, token: &str) -> String {
    sandboxd_engine::preview::url_for(public_url, preview_domain, token)
}

/// With a preview domain: a request whose `Host` is `<token>.<domain>` (any port) goes to the
/// proxy with its whole path; every other request goes on to the API.
pub(crate) async fn by_host(
    State(st): State<AppState>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(domain) = &st.preview_domain {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(|h| {
                h.rsplit_once(':')
                    .map_or(h, |(name, _)| name)
                    .to_ascii_lowercase()
            });
        let token = host.as_deref().and_then(|h| {
            h.strip_suffix(domain.as_str())
                .and_then(|t| t.strip_suffix('.'))
                .filter(|t| !t.is_empty() && !t.contains('.'))
                .map(str::to_string)
        });
        if let Some(token) = token {
            let path = req.uri().path().trim_start_matches('/').to_string();
            return forward(&st, &token, &path, req).await;
        }
    }
    next.run(req).await
}

async fn root(State(st): State<AppState>, Path(token): Path<String>, req: Request) -> Response {
    forward(&st, &token, "", req).await
}

async fn sub_path(
    State(st): State<AppState>,
    Path((token, path)): Path<(String, String)>,
    req: Request,
) -> Response {
    forward(&st, &token, &path, req).await
}

async fn forward(st: &AppState, token: &str, path: &str, req: Request) -> Response {
    let addr = match st.engine.resolve_preview(token) {
        Ok(Some(PreviewTarget::Open(addr))) => addr,
        Ok(Some(PreviewTarget::NotRunning)) => {
            return ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the sandbox behind this URL is not running",
            )
            .into_response()
        }
        Ok(None) => {
            return ApiError::not_found("no such preview URL (or it expired)").into_response()
        }
        Err(e) => return ApiError::from(e).into_response(),
    };
    let prefix = st.preview_domain.is_none().then(|| format!("/p/{token}"));
    proxy(addr, path, prefix, req).await
}

/// Proxies `req` to `addr` (a sandbox's port) as `/<path>?<query>`; upgrades become a byte
/// tunnel after the sandbox's 101. `prefix` is sent as `X-Forwarded-Prefix`.
pub(crate) async fn proxy(
    addr: std::net::SocketAddr,
    path: &str,
    prefix: Option<String>,
    req: Request,
) -> Response {
    let stream =
        match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            _ => {
                return ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "bad_gateway",
                    format!("nothing answers on port {} in the sandbox", addr.port()),
                )
                .into_response()
            }
        };
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    {
        Ok(x) => x,
        Err(e) => return bad_gateway(e),
    };
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            debug!(error = %e, "preview connection");
        }
    });
    let mut req = req;
    // An upgrade (WebSocket, ...): both sides are handed over to a byte tunnel once the
    // sandbox's server answers 101.
    let upgrading = req.headers().contains_key(header::UPGRADE);
    let client_upgrade = upgrading.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let query = parts
        .uri
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    parts.uri = match format!("/{path}{query}").parse() {
        Ok(u) => u,
        Err(_) => return ApiError::invalid("path", "not a valid request path").into_response(),
    };
    if let Some(prefix) = prefix.and_then(|p| HeaderValue::from_str(&p).ok()) {
        parts.headers.insert("x-forwarded-prefix", prefix);
    }
    // The sandbox's server never sees the caller's credentials: no API key, and not the
    // dashboard's session cookie (a host-wide `__Host-` cookie the browser sends here too).
    parts.headers.remove(header::AUTHORIZATION);
    parts.headers.remove(header::PROXY_AUTHORIZATION);
    let cookies: Vec<String> = parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|c| !c.is_empty() && !c.starts_with(DASHBOARD_COOKIE_PREFIX))
        .map(str::to_string)
        .collect();
    parts.headers.remove(header::COOKIE);
    if let Ok(v) = HeaderValue::from_str(&cookies.join("; ")) {
        if !cookies.is_empty() {
            parts.headers.insert(header::COOKIE, v);
        }
    }
    if !upgrading {
        // One request per connection to the sandbox; the client side keeps its own.
        parts.headers.remove(header::CONNECTION);
    }
    let sent = tokio::time::timeout(
        RESPONSE_TIMEOUT,
        sender.send_request(Request::from_parts(parts, body)),
    )
    .await;
    let mut resp = match sent {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => return bad_gateway(e),
        Err(_) => {
            return ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "gateway_timeout",
                format!(
                    "the sandbox's server did not answer within {} s",
                    RESPONSE_TIMEOUT.as_secs()
                ),
            )
            .into_response()
        }
    };
    if let (Some(client), StatusCode::SWITCHING_PROTOCOLS) = (client_upgrade, resp.status()) {
        let server = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            match tokio::try_join!(client, server) {
                Ok((c, s)) => {
                    let (mut c, mut s) = (TokioIo::new(c), TokioIo::new(s));
                    if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut s).await {
                        debug!(error = %e, "preview tunnel");
                    }
                }
                Err(e) => debug!(error = %e, "preview upgrade"),
            }
        });
    }
    resp.map(Body::new)
}

/// The dashboard's session cookie (`sandboxd_dashboard::session::COOKIE`) and any later one.
const DASHBOARD_COOKIE_PREFIX: &str = "__Host-sandboxd";

fn bad_gateway(e: hyper::Error) -> Response {
    debug!(error = %e, "preview request");
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "bad_gateway",
        "the sandbox's server closed the connection or answered invalid HTTP",
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The proxy forwards neither `Authorization` nor the dashboard's cookie; other cookies
    /// (the sandbox app's own) pass.
    #[tokio::test]
    async fn credentials_never_reach_the_sandbox() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut chunk).await.unwrap();
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                .await
                .unwrap();
            String::from_utf8_lossy(&buf).to_lowercase()
        });
        let req = Request::builder()
            .uri("/p/tok/page")
            .header(header::AUTHORIZATION, "Bearer sbx_key_secret")
            .header(
                header::COOKIE,
                "app=1; __Host-sandboxd-session=0123abcd; theme=dark",
            )
            .body(Body::empty())
            .unwrap();
        let resp = proxy(addr, "page", Some("/p/tok".into()), req).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let head = seen.await.unwrap();
        assert!(head.starts_with("get /page http/1.1"), "{head}");
        assert!(!head.contains("authorization"), "{head}");
        assert!(!head.contains("sbx_key_secret"), "{head}");
        assert!(!head.contains("sandboxd-session"), "{head}");
        assert!(!head.contains("0123abcd"), "{head}");
        assert!(head.contains("cookie: app=1; theme=dark"), "{head}");
    }

    #[test]
    fn urls_take_the_path_or_the_host_form() {
        let tok = "0123456789abcdef";
        assert_eq!(
            url_for("http://127.0.0.1:8080/", None, tok),
            "http://127.0.0.1:8080/p/0123456789abcdef/"
        );
        assert_eq!(
            url_for("https://api.example.com", Some("preview.example.com"), tok),
            "https://0123456789abcdef.preview.example.com/"
        );
        assert_eq!(
            url_for("http://127.0.0.1:8080", Some("preview.localhost"), tok),
            "http://0123456789abcdef.preview.localhost:8080/"
        );
    }
}
