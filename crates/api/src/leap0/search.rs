//! Search and bulk edits inside a sandbox: glob, grep, tree, edit-file, edit-files. The engine
//! builds them from the agent's list/read/write (`sandboxd_engine::files`).

use std::collections::BTreeMap;

use sandboxd_agent::proto::FileInfo;
use sandboxd_core::CoreError;
use sandboxd_engine::EngineError;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::fs::{abs, Target};
use super::L0Result;
use crate::body::read_json;
use crate::error::ApiError;
use crate::AppState;

pub fn routes() -> Router<AppState> {
    let fs = "/v1/sandbox/{id}/filesystem";
    Router::new()
        .route(&format!("{fs}/glob"), post(glob))
        .route(&format!("{fs}/grep"), post(grep))
        .route(&format!("{fs}/edit-file"), post(edit_file))
        .route(&format!("{fs}/edit-files"), post(edit_files))
        .route(&format!("{fs}/tree"), post(tree))
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

#[cfg(test)]
mod tests {
    use super::*;
    use sandboxd_agent::proto::FileInfo;

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
}
