//! Leap0 filesystem routes (`/v1/sandbox/{id}/filesystem/*`) and what they share with process
//! execution and search: the target sandbox (resumed if paused), paths, modes, `FileInfo`.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use sandboxd_agent::proto::{FileInfo, Reply, Request, StartSpec};
use sandboxd_core::{CoreError, Principal, SandboxId};
use sandboxd_engine::EngineError;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{principal, sandbox_id, L0Error, L0Result};
use crate::body::{read_capped, read_json, MAX_FILE_BYTES};
use crate::error::ApiError;
use crate::AppState;

/// Where commands start and relative paths resolve.
pub const WORKDIR: &str = "/workspace";

pub fn routes() -> Router<AppState> {
    let fs = "/v1/sandbox/{id}/filesystem";
    Router::new()
        .route(&format!("{fs}/ls"), post(ls))
        .route(&format!("{fs}/stat"), post(stat))
        .route(&format!("{fs}/mkdir"), post(mkdir))
        .route(&format!("{fs}/write-file"), post(write_file))
        .route(&format!("{fs}/write-files"), post(write_files))
        .route(&format!("{fs}/read-file"), post(read_file))
        .route(&format!("{fs}/read-files"), post(read_files))
        .route(&format!("{fs}/delete"), post(delete))
        .route(&format!("{fs}/set-permissions"), post(set_permissions))
        .route(&format!("{fs}/move"), post(move_path))
        .route(&format!("{fs}/copy"), post(copy))
        .route(&format!("{fs}/exists"), post(exists))
        .merge(super::search::routes())
        .merge(super::process::routes())
}

/// The caller and the sandbox a route names, running (resumed if it was paused).
pub(super) struct Target {
    pub st: AppState,
    pub p: Principal,
    pub id: SandboxId,
}

impl Target {
    pub(super) async fn new(
        st: &AppState,
        headers: &HeaderMap,
        raw_id: &str,
    ) -> Result<Target, ApiError> {
        let p = principal(st, headers)?;
        let id = sandbox_id(raw_id)?;
        // Another tenant's sandbox does not exist for this key (404, as GET answers).
        st.engine.get_sandbox(&p.default_tenant(), id)?;
        st.engine.running_sandbox(&p, id).await?;
        Ok(Target {
            st: st.clone(),
            p,
            id,
        })
    }

    pub(super) async fn call(
        &self,
        tool: &str,
        path: &str,
        field: &str,
        req: Request,
    ) -> Result<Reply, EngineError> {
        self.st
            .engine
            .file_call(&self.p, self.id, tool, path, field, req)
            .await
    }

    pub(super) async fn stat(
        &self,
        path: &str,
        field: &str,
    ) -> Result<Option<FileInfo>, EngineError> {
        match self
            .call(
                "files.stat",
                path,
                field,
                Request::Stat { path: path.into() },
            )
            .await
        {
            Ok(Reply::Stat(i)) => Ok(Some(i)),
            Ok(_) => Err(unexpected()),
            Err(EngineError::Core(CoreError::NotFound { .. })) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

pub(super) fn unexpected() -> EngineError {
    CoreError::Internal("unexpected reply from the sandbox agent".into()).into()
}

/// An absolute path; relative ones resolve against [`WORKDIR`].
pub(super) fn abs(field: &str, p: &str) -> Result<String, ApiError> {
    if p.is_empty() {
        return Err(ApiError::invalid(field, "must not be empty"));
    }
    if p.contains('\0') {
        return Err(ApiError::invalid(field, "must not contain NUL"));
    }
    Ok(if p.starts_with('/') {
        p.to_string()
    } else {
        format!("{WORKDIR}/{}", p.trim_start_matches("./"))
    })
}

/// An octal mode string such as `755` or `0644`.
pub(super) fn mode(field: &str, s: &str) -> Result<u32, ApiError> {
    let t = s.trim();
    let digits = t.strip_prefix("0o").unwrap_or(t);
    if digits.is_empty() || digits.len() > 5 {
        return Err(ApiError::invalid(
            field,
            "must be an octal mode such as 755",
        ));
    }
    u32::from_str_radix(digits, 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| ApiError::invalid(field, "must be an octal mode such as 755"))
}

pub(super) fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// `FileInfo` in Leap0's shape.
pub(super) fn info_json(f: &FileInfo) -> Value {
    let who = |id: u32| {
        if id == 0 {
            "root".to_string()
        } else {
            id.to_string()
        }
    };
    json!({
        "name": f.name,
        "path": f.path,
        "is_dir": f.kind == "dir",
        "size": f.size,
        "mode": format!("{:o}", f.mode),
        "mtime": f.modified_ms / 1000,
        "owner": who(f.uid),
        "group": who(f.gid),
        "is_symlink": f.kind == "symlink",
        "link_target": f.symlink_target.clone().unwrap_or_default(),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PathReq {
    path: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LsReq {
    path: String,
    recursive: Option<bool>,
    exclude: Option<Vec<String>>,
}

async fn ls(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> L0Result {
    let req: LsReq = read_json(body, false).await?;
    let path = abs("path", &req.path)?;
    let t = Target::new(&st, &headers, &id).await?;
    let depth = if req.recursive.unwrap_or(false) {
        u32::MAX
    } else {
        1
    };
    let items = st
        .engine
        .walk(&t.p, t.id, &path, depth, &req.exclude.unwrap_or_default())
        .await?;
    Ok(Json(json!({"items": items.iter().map(info_json).collect::<Vec<_>>()})).into_response())
}

async fn stat(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> L0Result {
    let req: PathReq = read_json(body, false).await?;
    let path = abs("path", &req.path)?;
    let t = Target::new(&st, &headers, &id).await?;
    match t.stat(&path, "path").await? {
        Some(i) => Ok(Json(info_json(&i)).into_response()),
        None => Err(ApiError::not_found(format!("{path}: no such file or directory")).into()),
    }
}

async fn exists(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> L0Result {
    let req: PathReq = read_json(body, false).await?;
    let path = abs("path", &req.path)?;
    let t = Target::new(&st, &headers, &id).await?;
    let found = t.stat(&path, "path").await?.is_some();
    Ok(Json(json!({"exists": found})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MkdirReq {
    path: String,
    recursive: Option<bool>,
    permissions: Option<String>,
}

async fn mkdir(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> L0Result {
    let req: MkdirReq = read_json(body, false).await?;
    let path = abs("path", &req.path)?;
    let m = req
        .permissions
        .as_deref()
        .map(|p| mode("permissions", p))
        .transpose()?;
    let t = Target::new(&st, &headers, &id).await?;
    let recursive = req.recursive.unwrap_or(false);
    if recursive
        && t.stat(&path, "path")
            .await?
            .is_some_and(|i| i.kind == "dir")
    {
        return Ok(no_content());
    }
    t.call(
        "files.mkdir",
        &path,
        "path",
        Request::Mkdir {
            path: path.clone(),
            parents: recursive,
            mode: Some(m.unwrap_or(0o755)),
        },
    )
    .await?;
    Ok(no_content())
}

async fn write_file(
    State(st): State<AppState>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> L0Result {
    let pairs = crate::query::pairs(q.as_deref());
    let get = |k: &str| {
        pairs
            .iter()
            .rev()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let path = abs("path", &get("path").unwrap_or_default())?;
    let m = get("permissions")
        .map(|p| mode("permissions", &p))
        .transpose()?;
    let data = read_capped(body, MAX_FILE_BYTES).await?;
    let t = Target::new(&st, &headers, &id).await?;
    st.engine.write_bytes(&t.p, t.id, &path, &data, m).await?;
    Ok(no_content())
}

async fn write_files(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> L0Result {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let data = read_capped(body, MAX_FILE_BYTES).await?;
    let parts = super::multipart::parse(&ct, &data)?;
    if parts.is_empty() {
        return Err(ApiError::invalid("files", "at least one file part is required").into());
    }
    let mut files = Vec::with_capacity(parts.len());
    for (i, (name, bytes)) in parts.into_iter().enumerate() {
        files.push((abs(&format!("files[{i}]"), &name)?, bytes));
    }
    let t = Target::new(&st, &headers, &id).await?;
    for (path, bytes) in files {
        st.engine
            .write_bytes(&t.p, t.id, &path, &bytes, None)
            .await?;
    }
    Ok(no_content())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadReq {
    path: String,
    offset: Option<u64>,
    limit: Option<u64>,
    head: Option<u64>,
    tail: Option<u64>,
}

/// The first or last `n` lines of `data`.
fn lines(data: &[u8], head: Option<u64>, tail: Option<u64>) -> Vec<u8> {
    let all: Vec<&[u8]> = data.split_inclusive(|b| *b == b'\n').collect();
    let pick: &[&[u8]] = match (head, tail) {
        (Some(n), _) => &all[..(n as usize).min(all.len())],
        (None, Some(n)) => &all[all.len() - (n as usize).min(all.len())..],
        (None, None) => &all,
    };
    pick.concat()
}

async fn read_file(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> L0Result {
    let req: ReadReq = read_json(body, false).await?;
    let path = abs("path", &req.path)?;
    if req.head.is_some() && req.tail.is_some() {
        return Err(ApiError::invalid("tail", "head and tail are mutually exclusive").into());
    }
    let t = Target::new(&st, &headers, &id).await?;
    let data = st
        .engine
        .read_bytes(&t.p, t.id, &path, req.offset, req.limit)
        .await?;
    let data = if req.head.is_some() || req.tail.is_some() {
        lines(&data, req.head, req.tail)
    } else {
        data
    };
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], data).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadManyReq {
    paths: Vec<String>,
}

async fn read_files(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> L0Result {
    let req: ReadManyReq = read_json(body, false).await?;
    if req.paths.is_empty() {
        return Err(ApiError::invalid("paths", "must name at least one file").into());
    }
    let paths = req
        .paths
        .iter()
        .enumerate()
        .map(|(i, p)| abs(&format!("paths[{i}]"), p))
        .collect::<Result<Vec<_>, _>>()?;
    let t = Target::new(&st, &headers, &id).await?;
    let mut parts = Vec::with_capacity(paths.len());
    for (given, path) in req.paths.iter().zip(&paths) {
        let data = st.engine.read_bytes(&t.p, t.id, path, None, None).await?;
        parts.push((given.clone(), data));
    }
    let (ct, body) = super::multipart::render(&parts);
    Ok(([(header::CONTENT_TYPE, ct)], body).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteReq {
    path: String,
    recursive: Option<bool>,
}

async fn delete(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> L0Result {
    let req: DeleteReq = read_json(body, false).await?;
    let path = abs("path", &req.path)?;
    if path.trim_end_matches('/').is_empty() {
        return Err(ApiError::invalid("path", "refusing to delete /").into());
    }
    let t = Target::new(&st, &headers, &id).await?;
    t.call(
        "files.remove",
        &path,
        "path",
        Request::Remove {
            path: path.clone(),
            recursive: req.recursive.unwrap_or(false),
        },
    )
    .await?;
    Ok(no_content())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PermReq {
    path: String,
    mode: Option<String>,
    owner: Option<String>,
    group: Option<String>,
}

fn name_ok(field: &str, s: &str) -> Result<(), ApiError> {
    let ok = !s.is_empty()
        && s.len() <= 32
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    ok.then_some(())
        .ok_or_else(|| ApiError::invalid(field, "must be a user or group name or numeric id"))
}

async fn set_permissions(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> L0Result {
    let req: PermReq = read_json(body, false).await?;
    let path = abs("path", &req.path)?;
    if req.mode.is_none() && req.owner.is_none() && req.group.is_none() {
        return Err(ApiError::invalid("mode", "give at least one of mode, owner, group").into());
    }
    let m = req.mode.as_deref().map(|m| mode("mode", m)).transpose()?;
    if let Some(o) = &req.owner {
        name_ok("owner", o)?;
    }
    if let Some(g) = &req.group {
        name_ok("group", g)?;
    }
    let t = Target::new(&st, &headers, &id).await?;
    if t.stat(&path, "path").await?.is_none() {
        return Err(ApiError::not_found(format!("{path}: no such file or directory")).into());
    }
    let mut cmds: Vec<Vec<String>> = Vec::new();
    if let Some(m) = m {
        cmds.push(vec!["chmod".into(), format!("{m:o}"), path.clone()]);
    }
    let who = match (&req.owner, &req.group) {
        (Some(o), Some(g)) => Some(format!("{o}:{g}")),
        (Some(o), None) => Some(o.clone()),
        (None, Some(g)) => Some(format!(":{g}")),
        (None, None) => None,
    };
    if let Some(w) = who {
        cmds.push(vec!["chown".into(), w, path.clone()]);
    }
    for argv in cmds {
        let reply = t
            .call(
                "files.set_permissions",
                &path,
                "path",
                Request::Exec {
                    spec: StartSpec {
                        argv,
                        ..Default::default()
                    },
                    timeout_ms: Some(10_000),
                },
            )
            .await?;
        match reply {
            Reply::Exec { info, stderr, .. } if info.exit_code == Some(0) => {
                let _ = stderr;
            }
            Reply::Exec { stderr, .. } => {
                let msg = String::from_utf8_lossy(&B64.decode(stderr).unwrap_or_default())
                    .trim()
                    .to_string();
                return Err(ApiError::invalid("path", msg).into());
            }
            _ => return Err(unexpected().into()),
        }
    }
    Ok(no_content())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MoveReq {
    src_path: String,
    dst_path: String,
    overwrite: Option<bool>,
    recursive: Option<bool>,
}

/// Checks the source exists and the destination is free (or may be replaced).
async fn prepare_transfer(
    t: &Target,
    src: &str,
    dst: &str,
    overwrite: bool,
) -> Result<FileInfo, L0Error> {
    let Some(s) = t.stat(src, "src_path").await? else {
        return Err(ApiError::not_found(format!("{src}: no such file or directory")).into());
    };
    if let Some(d) = t.stat(dst, "dst_path").await? {
        if !overwrite {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "already_exists",
                format!("{dst} already exists (set overwrite to replace it)"),
            )
            .into());
        }
        t.call(
            "files.remove",
            dst,
            "dst_path",
            Request::Remove {
                path: dst.into(),
                recursive: d.kind == "dir",
            },
        )
        .await?;
    }
    Ok(s)
}

async fn move_path(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> L0Result {
    let req: MoveReq = read_json(body, false).await?;
    let (src, dst) = (
        abs("src_path", &req.src_path)?,
        abs("dst_path", &req.dst_path)?,
    );
    let t = Target::new(&st, &headers, &id).await?;
    prepare_transfer(&t, &src, &dst, req.overwrite.unwrap_or(false)).await?;
    t.call(
        "files.move",
        &src,
        "src_path",
        Request::Rename {
            from: src.clone(),
            to: dst,
        },
    )
    .await?;
    Ok(no_content())
}

async fn copy(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> L0Result {
    let req: MoveReq = read_json(body, false).await?;
    let (src, dst) = (
        abs("src_path", &req.src_path)?,
        abs("dst_path", &req.dst_path)?,
    );
    let t = Target::new(&st, &headers, &id).await?;
    let s = prepare_transfer(&t, &src, &dst, req.overwrite.unwrap_or(false)).await?;
    let recursive = req.recursive.unwrap_or(false);
    if s.kind == "dir" && !recursive {
        return Err(ApiError::invalid("recursive", "must be true to copy a directory").into());
    }
    t.call(
        "files.copy",
        &src,
        "src_path",
        Request::Copy {
            from: src.clone(),
            to: dst,
            recursive,
        },
    )
    .await?;
    Ok(no_content())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_modes_lines() {
        assert_eq!(abs("p", "a/b").unwrap(), "/workspace/a/b");
        assert_eq!(abs("p", "/x").unwrap(), "/x");
        assert!(abs("p", "").is_err());
        assert_eq!(mode("m", "755").unwrap(), 0o755);
        assert_eq!(mode("m", "0644").unwrap(), 0o644);
        assert!(mode("m", "9").is_err());
        assert!(mode("m", "77777").is_err());
        assert_eq!(lines(b"1\n2\n3\n", Some(2), None), b"1\n2\n");
        assert_eq!(lines(b"1\n2\n3", None, Some(1)), b"3");
        assert_eq!(lines(b"1\n", Some(5), None), b"1\n");
    }
}
