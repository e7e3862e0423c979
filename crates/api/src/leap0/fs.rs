//! Leap0 process execution and filesystem routes: `/v1/sandbox/{id}/process/execute` and
//! `/v1/sandbox/{id}/filesystem/*`. A paused sandbox is resumed by any of these (auto-resume).

use std::collections::BTreeMap;

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

use super::{principal, sandbox_id, L0Result};
use crate::body::{read_capped, read_json, MAX_FILE_BYTES};
use crate::error::ApiError;
use crate::AppState;

/// Where commands start and relative paths resolve.
pub const WORKDIR: &str = "/workspace";
/// Default and largest `timeout` of an execute, in seconds.
const EXEC_DEFAULT_SECS: i64 = 30;
const EXEC_MAX_SECS: i64 = 24 * 3600;

pub fn routes() -> Router<AppState> {
    let fs = "/v1/sandbox/{id}/filesystem";
    Router::new()
        .route("/v1/sandbox/{id}/process/execute", post(execute))
        .route(&format!("{fs}/ls"), post(ls))
        .route(&format!("{fs}/stat"), post(stat))
        .route(&format!("{fs}/mkdir"), post(mkdir))
        .route(&format!("{fs}/write-file"), post(write_file))
        .route(&format!("{fs}/write-files"), post(write_files))
        .route(&format!("{fs}/read-file"), post(read_file))
        .route(&format!("{fs}/read-files"), post(read_files))
        .route(&format!("{fs}/delete"), post(delete))
        .route(&format!("{fs}/set-permissions"), post(set_permissions))
        .route(&format!("{fs}/glob"), post(glob))
        .route(&format!("{fs}/grep"), post(grep))
        .route(&format!("{fs}/edit-file"), post(edit_file))
        .route(&format!("{fs}/edit-files"), post(edit_files))
        .route(&format!("{fs}/move"), post(move_path))
        .route(&format!("{fs}/copy"), post(copy))
        .route(&format!("{fs}/exists"), post(exists))
        .route(&format!("{fs}/tree"), post(tree))
}

/// The caller and the sandbox a route names, running (resumed if it was paused).
struct Target {
    st: AppState,
    p: Principal,
    id: SandboxId,
}

impl Target {
    async fn new(st: &AppState, headers: &HeaderMap, raw_id: &str) -> Result<Target, ApiError> {
        let p = principal(st, headers)?;
        let id = sandbox_id(raw_id)?;
        st.engine.running_sandbox(&p, id).await?;
        Ok(Target {
            st: st.clone(),
            p,
            id,
        })
    }

    async fn call(
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

    async fn stat(&self, path: &str, field: &str) -> Result<Option<FileInfo>, EngineError> {
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

fn unexpected() -> EngineError {
    CoreError::Internal("unexpected reply from the sandbox agent".into()).into()
}

/// An absolute path; relative ones resolve against [`WORKDIR`].
fn abs(field: &str, p: &str) -> Result<String, ApiError> {
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
fn mode(field: &str, s: &str) -> Result<u32, ApiError> {
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

fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// `FileInfo` in Leap0's shape.
fn info_json(f: &FileInfo) -> Value {
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
struct ExecReq {
    command: String,
    cwd: Option<String>,
    envs: Option<BTreeMap<String, String>>,
    timeout: Option<i64>,
}

async fn execute(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> L0Result {
    let req: ExecReq = read_json(body, false).await?;
    if req.command.trim().is_empty() {
        return Err(ApiError::invalid("command", "must not be empty").into());
    }
    let secs = req.timeout.unwrap_or(EXEC_DEFAULT_SECS);
    if !(1..=EXEC_MAX_SECS).contains(&secs) {
        return Err(
            ApiError::invalid("timeout", format!("must be between 1 and {EXEC_MAX_SECS}")).into(),
        );
    }
    let mut env = Vec::new();
    for (k, v) in req.envs.unwrap_or_default() {
        sandboxd_core::validate::env_name(&format!("envs.{k}"), &k)?;
        env.push((k, v));
    }
    let cwd = req.cwd.as_deref().map(|c| abs("cwd", c)).transpose()?;
    let t = Target::new(&st, &headers, &id).await?;
    let spec = StartSpec {
        argv: vec!["/bin/sh".into(), "-c".into(), req.command.clone()],
        env,
        cwd,
        ..Default::default()
    };
    let reply = t
        .call(
            "process.execute",
            &req.command,
            "command",
            Request::Exec {
                spec,
                timeout_ms: Some(secs as u64 * 1000),
            },
        )
        .await?;
    let Reply::Exec {
        info,
        stdout,
        stderr,
        timed_out,
    } = reply
    else {
        return Err(unexpected().into());
    };
    let text = |b: &str| String::from_utf8_lossy(&B64.decode(b).unwrap_or_default()).into_owned();
    let mut stderr = text(&stderr);
    // The process was killed at the deadline: 124, as timeout(1) reports it.
    let exit_code = if timed_out {
        stderr.push_str(&format!(
            "\ncommand timed out after {secs} s and was killed\n"
        ));
        124
    } else {
        info.exit_code
            .unwrap_or_else(|| 128 + info.signal.unwrap_or(0))
    };
    Ok(
        Json(json!({"exit_code": exit_code, "stdout": text(&stdout), "stderr": stderr}))
            .into_response(),
    )
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
    let parts = multipart::parse(&ct, &data)?;
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
    let (ct, body) = multipart::render(&parts);
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
struct GlobReq {
    path: String,
    pattern: Option<String>,
    exclude: Option<Vec<String>>,
}

async fn glob(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> L0Result {
    let req: GlobReq = read_json(body, false).await?;
    let path = abs("path", &req.path)?;
    let pattern = req.pattern.unwrap_or_else(|| "*".into());
    if pattern.is_empty() {
        return Err(ApiError::invalid("pattern", "must not be empty").into());
    }
    let t = Target::new(&st, &headers, &id).await?;
    let items = st
        .engine
        .glob(
            &t.p,
            t.id,
            &path,
            &pattern,
            &req.exclude.unwrap_or_default(),
        )
        .await?;
    Ok(Json(json!({"items": items})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrepReq {
    path: String,
    pattern: Option<String>,
    include: Option<String>,
    exclude: Option<Vec<String>>,
}

async fn grep(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> L0Result {
    let req: GrepReq = read_json(body, false).await?;
    let path = abs("path", &req.path)?;
    let pattern = req.pattern.unwrap_or_default();
    if pattern.is_empty() {
        return Err(ApiError::invalid("pattern", "must not be empty").into());
    }
    let t = Target::new(&st, &headers, &id).await?;
    let found = st
        .engine
        .grep(
            &t.p,
            t.id,
            &path,
            &pattern,
            req.include.as_deref(),
            &req.exclude.unwrap_or_default(),
        )
        .await?;
    let items: Vec<Value> = found
        .into_iter()
        .map(|m| json!({"path": m.path, "line": m.line, "content": m.content}))
        .collect();
    Ok(Json(json!({"items": items})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EditIn {
    find: String,
    replace: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EditReq {
    path: String,
    edits: Vec<EditIn>,
}

async fn edit_file(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> L0Result {
    let req: EditReq = read_json(body, false).await?;
    let path = abs("path", &req.path)?;
    if req.edits.is_empty() {
        return Err(ApiError::invalid("edits", "must have at least one edit").into());
    }
    let edits: Vec<(String, String)> = req
        .edits
        .into_iter()
        .map(|e| (e.find, e.replace.unwrap_or_default()))
        .collect();
    let t = Target::new(&st, &headers, &id).await?;
    let r = st.engine.edit_file(&t.p, t.id, &path, &edits).await?;
    Ok(Json(json!({"diff": r.diff, "replacements": r.replacements})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EditManyReq {
    files: Vec<String>,
    find: String,
    replace: Option<String>,
}

async fn edit_files(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> L0Result {
    let req: EditManyReq = read_json(body, false).await?;
    if req.files.is_empty() {
        return Err(ApiError::invalid("files", "must name at least one file").into());
    }
    if req.find.is_empty() {
        return Err(ApiError::invalid("find", "must not be empty").into());
    }
    let paths = req
        .files
        .iter()
        .enumerate()
        .map(|(i, p)| abs(&format!("files[{i}]"), p))
        .collect::<Result<Vec<_>, _>>()?;
    let t = Target::new(&st, &headers, &id).await?;
    let edits = [(req.find, req.replace.unwrap_or_default())];
    let mut items = Vec::new();
    for (given, path) in req.files.iter().zip(&paths) {
        let v = match st.engine.edit_file(&t.p, t.id, path, &edits).await {
            Ok(_) => json!({"file": given, "success": true}),
            Err(EngineError::Core(CoreError::InvalidArgument { message, .. })) => {
                json!({"file": given, "success": false, "error": message})
            }
            Err(EngineError::Core(e)) => {
                json!({"file": given, "success": false, "error": e.to_string()})
            }
            Err(e) => return Err(e.into()),
        };
        items.push(v);
    }
    Ok(Json(json!({"items": items})).into_response())
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

use super::L0Error;

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TreeReq {
    path: String,
    exclude: Option<Vec<String>>,
    max_depth: Option<i64>,
}

/// Nests a flat, depth-first listing under `root` into `TreeEntry` objects.
fn nest(root: &str, entries: &[FileInfo]) -> Vec<Value> {
    let root = root.trim_end_matches('/');
    let mut children: BTreeMap<String, Vec<&FileInfo>> = BTreeMap::new();
    for e in entries {
        let parent = e.path.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
        children.entry(parent.to_string()).or_default().push(e);
    }
    fn build(dir: &str, children: &BTreeMap<String, Vec<&FileInfo>>) -> Vec<Value> {
        children
            .get(dir)
            .map(|items| {
                items
                    .iter()
                    .map(|e| {
                        if e.kind == "dir" {
                            json!({"name": e.name, "type": "directory", "children": build(&e.path, children)})
                        } else {
                            json!({"name": e.name, "type": "file"})
                        }
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
    build(root, &children)
}

async fn tree(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> L0Result {
    let req: TreeReq = read_json(body, false).await?;
    let path = abs("path", &req.path)?;
    let depth = match req.max_depth {
        None => u32::MAX,
        Some(d) if (1..=1000).contains(&d) => d as u32,
        Some(_) => return Err(ApiError::invalid("max_depth", "must be between 1 and 1000").into()),
    };
    let t = Target::new(&st, &headers, &id).await?;
    let entries = st
        .engine
        .walk(&t.p, t.id, &path, depth, &req.exclude.unwrap_or_default())
        .await?;
    Ok(Json(json!({"items": nest(&path, &entries)})).into_response())
}

/// `multipart/form-data` in both directions: each part is one file, named by its path.
mod multipart {
    use crate::error::ApiError;

    fn boundary(ct: &str) -> Option<String> {
        let (mime, params) = ct.split_once(';')?;
        if !mime.trim().eq_ignore_ascii_case("multipart/form-data") {
            return None;
        }
        params.split(';').find_map(|p| {
            let (k, v) = p.trim().split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case("boundary")
                .then(|| v.trim().trim_matches('"').to_string())
        })
    }

    fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
        if needle.is_empty() || hay.len() < needle.len() {
            return None;
        }
        (from..=hay.len() - needle.len()).find(|&i| &hay[i..i + needle.len()] == needle)
    }

    /// The `name` parameter of a `Content-Disposition: form-data` header.
    fn part_name(headers: &str) -> Option<String> {
        let line = headers
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("content-disposition:"))?;
        // The `name` parameter, not the tail of `filename`.
        let mut from = 0;
        let i = loop {
            let j = line[from..].find("name=")? + from;
            if j > 0 && matches!(line.as_bytes()[j - 1], b' ' | b';') {
                break j;
            }
            from = j + 5;
        };
        let rest = &line[i + 5..];
        Some(if let Some(q) = rest.strip_prefix('"') {
            let end = q.find('"')?;
            q[..end].replace("%22", "\"")
        } else {
            rest.split(';').next()?.trim().to_string()
        })
    }

    pub fn parse(ct: &str, body: &[u8]) -> Result<Vec<(String, Vec<u8>)>, ApiError> {
        let b = boundary(ct).ok_or_else(|| {
            ApiError::invalid(
                "Content-Type",
                "must be multipart/form-data with a boundary",
            )
        })?;
        let bad = || ApiError::invalid("body", "malformed multipart body");
        let delim = format!("--{b}").into_bytes();
        let mut pos = find(body, &delim, 0).ok_or_else(bad)?;
        let mut out = Vec::new();
        loop {
            let after = pos + delim.len();
            if body[after..].starts_with(b"--") {
                return Ok(out);
            }
            let head_start = find(body, b"\r\n", after).ok_or_else(bad)? + 2;
            let head_end = find(body, b"\r\n\r\n", head_start - 2).ok_or_else(bad)?;
            let headers = String::from_utf8_lossy(&body[head_start.min(head_end)..head_end]);
            let data_start = head_end + 4;
            let mut next_delim = b"\r\n".to_vec();
            next_delim.extend_from_slice(&delim);
            let next = find(body, &next_delim, data_start).ok_or_else(bad)?;
            let name = part_name(&headers).ok_or_else(bad)?;
            out.push((name, body[data_start..next].to_vec()));
            pos = next + 2;
        }
    }

    pub fn render(parts: &[(String, Vec<u8>)]) -> (String, Vec<u8>) {
        let b = format!("sbx{}", uuid::Uuid::new_v4().simple());
        let mut out = Vec::new();
        for (name, data) in parts {
            out.extend_from_slice(
                format!(
                    "--{b}\r\nContent-Disposition: form-data; name=\"{}\"\r\nContent-Type: application/octet-stream\r\n\r\n",
                    name.replace('"', "%22")
                )
                .as_bytes(),
            );
            out.extend_from_slice(data);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("--{b}--\r\n").as_bytes());
        (format!("multipart/form-data; boundary={b}"), out)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn round_trips() {
            let parts = vec![
                ("/w/a.txt".to_string(), b"hello\r\n--x".to_vec()),
                ("b".to_string(), vec![0, 255, 13, 10]),
            ];
            let (ct, body) = render(&parts);
            assert_eq!(parse(&ct, &body).unwrap(), parts);
        }

        #[test]
        fn reads_what_httpx_sends() {
            let body = b"--abc\r\nContent-Disposition: form-data; name=\"/workspace/a.txt\"; filename=\"upload\"\r\nContent-Type: application/octet-stream\r\n\r\nA\r\n--abc\r\nContent-Disposition: form-data; name=\"/workspace/b.txt\"; filename=\"upload\"\r\n\r\n\r\n--abc--\r\n";
            let parts = parse("multipart/form-data; boundary=abc", body).unwrap();
            assert_eq!(
                parts,
                vec![
                    ("/workspace/a.txt".to_string(), b"A".to_vec()),
                    ("/workspace/b.txt".to_string(), vec![]),
                ]
            );
            let swapped = b"--abc\r\nContent-Disposition: form-data; filename=\"f\"; name=\"/p\"\r\n\r\nB\r\n--abc--\r\n";
            assert_eq!(
                parse("multipart/form-data; boundary=abc", swapped).unwrap(),
                vec![("/p".to_string(), b"B".to_vec())]
            );
            assert!(parse("application/json", body).is_err());
            assert!(parse("multipart/form-data; boundary=zzz", body).is_err());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fi(path: &str, kind: &str) -> FileInfo {
        FileInfo {
            name: path.rsplit('/').next().unwrap().into(),
            path: path.into(),
            kind: kind.into(),
            size: 0,
            mode: 0o644,
            modified_ms: 0,
            symlink_target: None,
            uid: 0,
            gid: 0,
        }
    }

    #[test]
    fn trees_nest() {
        let entries = vec![fi("/w/a", "dir"), fi("/w/a/x", "file"), fi("/w/b", "file")];
        assert_eq!(
            Value::Array(nest("/w/", &entries)),
            json!([{"name": "a", "type": "directory", "children": [{"name": "x", "type": "file"}]},
                   {"name": "b", "type": "file"}])
        );
    }

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
