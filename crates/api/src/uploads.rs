//! Resumable uploads on the data plane (tus 1.0.0, as the neevai SDK speaks it):
//! `POST /v1/files/uploads` starts one, `PATCH` sends a chunk at `Upload-Offset`, `HEAD`
//! reports how many bytes the sandbox holds, `DELETE` discards it.
//!
//! The daemon keeps no state: the upload's URL carries its target and length, and the temp
//! file beside the target inside the sandbox (its size is the offset) is the rest. An upload
//! therefore survives a restart of the daemon.

use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use sandboxd_agent::proto::{Reply, Request};
use sandboxd_agent::upload::temp_path;

use crate::body::read_capped;
use crate::dataplane::{agent_error, ctx, finish, resolve_path, unexpected, Ctx};
use crate::error::ApiError;
use crate::AppState;

const TUS_VERSION: &str = "1.0.0";
/// Largest chunk one PATCH may carry (the SDK sends at most 1 MiB).
const MAX_CHUNK_BYTES: usize = 8 << 20;
/// Largest upload.
const MAX_UPLOAD_BYTES: u64 = 1 << 40;
const UPLOADS: &str = "/v1/files/uploads";

pub fn routes() -> Router<AppState> {
    Router::new().route(UPLOADS, post(create)).route(
        "/v1/files/uploads/{token}",
        axum::routing::patch(chunk).head(status).delete(abort),
    )
}

/// Where an upload goes, as its URL names it.
#[derive(Debug, PartialEq)]
struct Upload {
    token: String,
    target: String,
    length: u64,
}

impl Upload {
    fn temp(&self) -> String {
        temp_path(&self.target, &self.token)
    }

    /// The upload's URL, relative to the data plane.
    fn location(&self) -> String {
        format!(
            "{UPLOADS}/{}?path={}&length={}",
            self.token,
            encode(&self.target),
            self.length
        )
    }

    fn from_url(token: String, q: Option<&str>) -> Result<Upload, ApiError> {
        if token.len() != 32 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ApiError::not_found(format!("upload {token} not found")));
        }
        let pairs = crate::query::pairs(q);
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        let target = get("path")
            .filter(|p| p.starts_with('/'))
            .ok_or_else(|| ApiError::invalid("path", "must be an absolute path"))?;
        let length = get("length")
            .and_then(|l| l.parse().ok())
            .ok_or_else(|| ApiError::invalid("length", "must be an integer"))?;
        Ok(Upload {
            token,
            target,
            length,
        })
    }
}

/// Percent-encodes everything but unreserved characters and `/`.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `Upload-Metadata`: comma-separated `key base64(value)` pairs.
fn metadata(raw: &str) -> Result<Vec<(String, String)>, ApiError> {
    raw.split(',')
        .map(str::trim)
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once(' ').unwrap_or((kv, ""));
            let v = B64
                .decode(v.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    ApiError::invalid("Upload-Metadata", format!("{k} is not base64 UTF-8"))
                })?;
            Ok((k.to_string(), v))
        })
        .collect()
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn header_u64(headers: &HeaderMap, name: &str) -> Result<u64, ApiError> {
    header_str(headers, name)
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| ApiError::invalid(name, "header must be a non-negative integer"))
}

/// A tus response: `status`, `Tus-Resumable`, and the given headers.
fn tus(status: StatusCode, headers: &[(&str, String)]) -> Response {
    let mut r = status.into_response();
    let h = r.headers_mut();
    h.insert("tus-resumable", HeaderValue::from_static(TUS_VERSION));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for (k, v) in headers {
        if let (Ok(name), Ok(value)) = (
            header::HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            h.insert(name, value);
        }
    }
    r
}

/// One request to the agent, unaudited (chunks would flood the audit trail).
async fn agent(c: &Ctx, req: Request) -> Result<Reply, ApiError> {
    let mut s = c.st.engine.agent_stream(&c.principal, c.id, req).await?;
    match s.next().await {
        Some(Ok(Reply::Error { code, message })) => Err(agent_error(&code, message)),
        Some(Ok(r)) => Ok(r),
        _ => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "lost the connection to the sandbox",
        )),
    }
}

async fn create(State(st): State<AppState>, headers: HeaderMap) -> Response {
    finish(
        async {
            let c = ctx(&st, &headers)?;
            let length = header_u64(&headers, "upload-length")?;
            if length > MAX_UPLOAD_BYTES {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!("uploads are limited to {MAX_UPLOAD_BYTES} bytes"),
                ));
            }
            let meta = metadata(header_str(&headers, "upload-metadata").unwrap_or(""))?;
            let get = |k: &str| {
                meta.iter()
                    .find(|(key, _)| key == k)
                    .map(|(_, v)| v.clone())
            };
            let path = get("path")
                .filter(|p| !p.is_empty())
                .ok_or_else(|| ApiError::invalid("Upload-Metadata", "path is required"))?;
            let up = Upload {
                token: uuid::Uuid::new_v4().simple().to_string(),
                target: resolve_path(&path, get("cwd").as_deref()),
                length,
            };
            let req = Request::UploadCreate {
                temp: up.temp(),
                target: up.target.clone(),
                total: length,
            };
            match c.call("files.upload", Some(up.target.clone()), req).await? {
                Reply::UploadOffset { offset, .. } => Ok(tus(
                    StatusCode::CREATED,
                    &[
                        ("location", up.location()),
                        ("upload-offset", offset.to_string()),
                        ("upload-length", length.to_string()),
                    ],
                )),
                _ => Err(unexpected()),
            }
        }
        .await,
    )
}

async fn chunk(
    State(st): State<AppState>,
    Path(token): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    finish(
        async {
            let c = ctx(&st, &headers)?;
            let up = Upload::from_url(token, q.as_deref())?;
            let ct = header_str(&headers, "content-type").unwrap_or("");
            if !ct.starts_with("application/offset+octet-stream") {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "invalid_argument",
                    "Content-Type must be application/offset+octet-stream",
                ));
            }
            let offset = header_u64(&headers, "upload-offset")?;
            let data = read_capped(body, MAX_CHUNK_BYTES).await?;
            let started = Instant::now();
            let req = Request::UploadWrite {
                temp: up.temp(),
                target: up.target.clone(),
                offset,
                total: up.length,
                data: B64.encode(&data),
            };
            match agent(&c, req).await? {
                Reply::UploadOffset { offset, done } => {
                    if done {
                        c.st.engine.audit_event(
                            c.id,
                            "files.upload.complete",
                            None,
                            Some(up.target.clone()),
                            None,
                            started.elapsed().as_millis() as u64,
                        );
                    }
                    Ok(tus(
                        StatusCode::NO_CONTENT,
                        &[("upload-offset", offset.to_string())],
                    ))
                }
                _ => Err(unexpected()),
            }
        }
        .await,
    )
}

async fn status(
    State(st): State<AppState>,
    Path(token): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    finish(
        async {
            let c = ctx(&st, &headers)?;
            let up = Upload::from_url(token, q.as_deref())?;
            match agent(&c, Request::Stat { path: up.temp() }).await? {
                Reply::Stat(info) => Ok(tus(
                    StatusCode::OK,
                    &[
                        ("upload-offset", info.size.min(up.length).to_string()),
                        ("upload-length", up.length.to_string()),
                    ],
                )),
                _ => Err(unexpected()),
            }
        }
        .await,
    )
}

async fn abort(
    State(st): State<AppState>,
    Path(token): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    finish(
        async {
            let c = ctx(&st, &headers)?;
            let up = Upload::from_url(token, q.as_deref())?;
            let req = Request::Remove {
                path: up.temp(),
                recursive: false,
            };
            c.call("files.upload.abort", Some(up.target.clone()), req)
                .await?;
            Ok(tus(StatusCode::NO_CONTENT, &[]))
        }
        .await,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_round_trips() {
        let up = Upload {
            token: "0123456789abcdef0123456789abcdef".into(),
            target: "/workspace/a b/ü&x=1.bin".into(),
            length: 42,
        };
        let loc = up.location();
        let (path, q) = loc.split_once('?').unwrap();
        let token = path.rsplit('/').next().unwrap().to_string();
        assert_eq!(Upload::from_url(token, Some(q)).unwrap(), up);
        assert!(Upload::from_url("../x".into(), Some(q)).is_err());
        assert!(Upload::from_url(up.token.clone(), Some("path=rel&length=1")).is_err());
    }

    #[test]
    fn metadata_pairs_are_base64() {
        let m = metadata("path L3dvcmtzcGFjZS9m,cwd ,flag").unwrap();
        assert_eq!(m[0], ("path".into(), "/workspace/f".into()));
        assert_eq!(m[1], ("cwd".into(), String::new()));
        assert_eq!(m[2], ("flag".into(), String::new()));
        assert!(metadata("path !!!").is_err());
    }
}
