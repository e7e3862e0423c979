//! Leap0 git routes (`POST /v1/sandbox/{id}/git/*`): the sandbox's own `git`, run by its agent
//! with one argv per call (never a shell line built from input), in the C locale, with no
//! terminal prompts. Machine-readable output (`status --porcelain=v2 -z`, `for-each-ref`,
//! `log -z`) is parsed and rendered as stable text in `{output, exit_code}`; a failing git is
//! an error in Leap0's shape carrying git's own message.
//!
//! Credentials (clone, push, pull) reach git only through a credential helper given on that
//! command's line, which reads them from that one process's environment: they are never in
//! argv, the remote URL, the repository's config, the audit target or the daemon's log.

use std::fmt;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use sandboxd_agent::proto::{Reply, Request, StartSpec};
use sandboxd_engine::EngineError;
use serde::Deserialize;
use serde_json::json;

use super::fs::{abs, unexpected, Target};
use super::L0Result;
use crate::body::read_json;
use crate::error::ApiError;
use crate::AppState;

/// Deadline of a git command that stays in the sandbox, and of one that talks to a remote.
const LOCAL_TIMEOUT_MS: u64 = 120_000;
const REMOTE_TIMEOUT_MS: u64 = 300_000;
/// `git log` returns this many commits unless told otherwise, and never more than the cap.
const LOG_DEFAULT: u32 = 10;
const LOG_MAX: u32 = 10_000;
/// Longest git message carried into an error body.
const MESSAGE_MAX: usize = 4000;
/// The email of commits (a pull's merge, say) when neither the call nor the repository's
/// config names one; the name is the user's (`root`).
const FALLBACK_EMAIL: &str = "root@sandbox.invalid";
/// Username sent with a token when the caller gives only a password.
const TOKEN_USER: &str = "x-access-token";
/// Environment variables the credential helper reads; set only on that git process.
const USER_VAR: &str = "SANDBOXD_GIT_USERNAME";
const PASS_VAR: &str = "SANDBOXD_GIT_PASSWORD";
/// Answers git's `get` from the two variables above and ignores `store`/`erase`, so nothing
/// is kept. An empty `credential.helper` before it drops any helper the sandbox configured.
const HELPER: &str = "credential.helper=!f() { if test \"$1\" = get; then \
    printf 'username=%s\\npassword=%s\\n' \"$SANDBOXD_GIT_USERNAME\" \"$SANDBOXD_GIT_PASSWORD\"; \
    fi; }; f";

pub fn routes() -> Router<AppState> {
    let g = "/v1/sandbox/{id}/git";
    Router::new()
        .route(&format!("{g}/clone"), post(clone))
        .route(&format!("{g}/status"), post(status))
        .route(&format!("{g}/branches"), post(branches))
        .route(&format!("{g}/diff-unstaged"), post(diff_unstaged))
        .route(&format!("{g}/diff-staged"), post(diff_staged))
        .route(&format!("{g}/diff"), post(diff))
        .route(&format!("{g}/reset"), post(reset))
        .route(&format!("{g}/log"), post(log))
        .route(&format!("{g}/show"), post(show))
        .route(&format!("{g}/create-branch"), post(create_branch))
        .route(&format!("{g}/checkout-branch"), post(checkout_branch))
        .route(&format!("{g}/delete-branch"), post(delete_branch))
        .route(&format!("{g}/add"), post(add))
        .route(&format!("{g}/commit"), post(commit))
        .route(&format!("{g}/push"), post(push))
        .route(&format!("{g}/pull"), post(pull))
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
enum GitError {
    #[error("git is not installed in this sandbox's template; use a template that has git (such as sb-debian-12-python)")]
    NotInstalled,
    /// The repository directory does not exist.
    #[error("{0}")]
    NoPath(String),
    #[error("{0}")]
    NotARepository(String),
    /// A branch, revision or remote repository that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The repository's state forbids it: merge conflict, rejected push, existing branch...
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Failed(String),
    #[error("git {op} timed out after {secs} s and was killed")]
    TimedOut { op: &'static str, secs: u64 },
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl From<GitError> for ApiError {
    fn from(e: GitError) -> Self {
        let with_field = |mut a: ApiError, f: &str| {
            a.field = Some(f.to_string());
            a
        };
        let msg = e.to_string();
        match e {
            GitError::Engine(e) => e.into(),
            GitError::NotInstalled => {
                ApiError::new(StatusCode::BAD_REQUEST, "git_unavailable", msg)
            }
            GitError::NoPath(_) => with_field(ApiError::not_found(msg), "path"),
            GitError::NotARepository(_) => with_field(
                ApiError::new(StatusCode::BAD_REQUEST, "not_a_repository", msg),
                "path",
            ),
            GitError::NotFound(_) => ApiError::not_found(msg),
            GitError::Conflict(_) => ApiError::new(StatusCode::CONFLICT, "conflict", msg),
            GitError::Failed(_) => ApiError::new(StatusCode::BAD_REQUEST, "git_failed", msg),
            GitError::TimedOut { .. } => ApiError::new(StatusCode::GATEWAY_TIMEOUT, "timeout", msg),
        }
    }
}

/// What a git that exited non-zero said, sorted by what the caller should do about it.
/// Git runs with `LC_ALL=C`, so its messages are the English ones matched here.
fn classify(out: &Out) -> GitError {
    let msg = failure_message(out);
    let all = format!("{}\n{}", out.stdout, out.stderr);
    let has = |needles: &[&str]| needles.iter().any(|n| all.contains(n));
    if has(&["cannot change to '"]) {
        GitError::NoPath(msg)
    } else if has(&["not a git repository"]) {
        GitError::NotARepository(msg)
    } else if has(&[
        "CONFLICT (",
        "Automatic merge failed",
        "could not apply",
        "[rejected]",
        "already exists",
        "not fully merged",
        "checked out at",
        "would be overwritten",
        "You have unmerged paths",
        "divergent branches",
    ]) {
        GitError::Conflict(msg)
    } else if has(&[
        "not found",
        "did not match any",
        "unknown revision",
        "bad revision",
        "invalid reference",
        "invalid object name",
        "does not exist",
        "couldn't find remote ref",
        "does not appear to be a git repository",
    ]) {
        GitError::NotFound(msg)
    } else {
        GitError::Failed(msg)
    }
}

/// Git's own words for a failure: stderr without `hint:` lines, then stdout where merge
/// conflicts and "nothing to commit" are reported; capped.
fn failure_message(out: &Out) -> String {
    let pick = |s: &str| {
        s.lines()
            .map(str::trim_end)
            .filter(|l| !l.is_empty() && !l.starts_with("hint:"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let (err, std) = (pick(&out.stderr), pick(&out.stdout));
    let mut m = match (err.is_empty(), std.is_empty()) {
        (true, true) => format!("git exited with code {}", out.exit),
        (true, false) => std,
        (false, false) if std.contains("CONFLICT") => format!("{std}\n{err}"),
        _ => err,
    };
    if m.len() > MESSAGE_MAX {
        let mut cut = MESSAGE_MAX;
        while !m.is_char_boundary(cut) {
            cut -= 1;
        }
        m.truncate(cut);
        m.push('…');
    }
    m
}

// ---------------------------------------------------------------------------------------
// Running git
// ---------------------------------------------------------------------------------------

/// A username and password (or token) for one remote operation. Never printed.
struct Creds {
    user: String,
    pass: String,
}

impl fmt::Debug for Creds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Creds(<redacted>)")
    }
}

impl Creds {
    fn from_request(user: Option<String>, pass: Option<String>) -> Result<Option<Creds>, ApiError> {
        let user = user.filter(|u| !u.is_empty());
        let pass = pass.filter(|p| !p.is_empty());
        for (field, v) in [("username", &user), ("password", &pass)] {
            if v.as_deref().is_some_and(|v| v.contains(['\n', '\r', '\0'])) {
                return Err(ApiError::invalid(
                    field,
                    "must not contain line breaks or NUL",
                ));
            }
        }
        match (user, pass) {
            (None, None) => Ok(None),
            (Some(_), None) => Err(ApiError::invalid("password", "is required with username")),
            (user, Some(pass)) => Ok(Some(Creds {
                user: user.unwrap_or_else(|| TOKEN_USER.to_string()),
                pass,
            })),
        }
    }
}

/// What git printed and how it ended.
#[derive(Debug, Default)]
struct Out {
    stdout: String,
    stderr: String,
    exit: i32,
}

impl Out {
    /// stdout then stderr, where commands such as clone, push and switch report.
    fn both(&self) -> String {
        let mut s = self.stdout.clone();
        if !s.is_empty() && !s.ends_with('\n') && !self.stderr.is_empty() {
            s.push('\n');
        }
        s.push_str(&self.stderr);
        s
    }
}

/// One git command in the sandbox: `git <global options> [-C repo] <args>`.
struct Git<'a> {
    t: &'a Target,
    op: &'static str,
    /// For the audit trail: the repository path (never a URL or a secret).
    target: String,
    global: Vec<String>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    timeout_ms: u64,
    secret: Option<String>,
}

impl<'a> Git<'a> {
    /// A command run in the repository at `repo`.
    fn new(t: &'a Target, op: &'static str, repo: &str) -> Git<'a> {
        let mut g = Git::bare(t, op, repo);
        g.global.extend(["-C".to_string(), repo.to_string()]);
        g
    }

    /// A command that names its directory itself (clone).
    fn bare(t: &'a Target, op: &'static str, target: &str) -> Git<'a> {
        let mut global = vec!["git".to_string()];
        for c in [
            "core.quotepath=off",
            "color.ui=false",
            "core.pager=cat",
            "advice.detachedHead=false",
            // The sandbox is one tenant's machine: a repository written by another uid
            // (through the filesystem API, say) is still the caller's own.
            "safe.directory=*",
        ] {
            global.extend(["-c".to_string(), c.to_string()]);
        }
        Git {
            t,
            op,
            target: target.to_string(),
            global,
            args: Vec::new(),
            env: vec![
                ("LC_ALL".into(), "C".into()),
                ("GIT_TERMINAL_PROMPT".into(), "0".into()),
                // Empty: no askpass program (nor SSH_ASKPASS) is run.
                ("GIT_ASKPASS".into(), String::new()),
                ("GIT_PAGER".into(), "cat".into()),
                ("GIT_EDITOR".into(), "true".into()),
                // Git's last resort for an email when none is configured (the sandbox's
                // hostname has no domain): merges made by a pull need one.
                ("EMAIL".into(), FALLBACK_EMAIL.into()),
            ],
            timeout_ms: LOCAL_TIMEOUT_MS,
            secret: None,
        }
    }

    fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, it: I) -> Self {
        self.args.extend(it.into_iter().map(Into::into));
        self
    }

    fn arg_if(self, cond: bool, a: &str) -> Self {
        if cond {
            self.arg(a)
        } else {
            self
        }
    }

    fn envs(mut self, kv: impl IntoIterator<Item = (String, String)>) -> Self {
        self.env.extend(kv);
        self
    }

    /// Talks to a remote: the longer deadline, and credentials through the helper.
    fn remote(mut self, creds: Option<&Creds>) -> Self {
        self.timeout_ms = REMOTE_TIMEOUT_MS;
        if let Some(c) = creds {
            for c in ["credential.helper=", HELPER, "credential.interactive=never"] {
                self.global.extend(["-c".to_string(), c.to_string()]);
            }
            self.env.push((USER_VAR.into(), c.user.clone()));
            self.env.push((PASS_VAR.into(), c.pass.clone()));
            self.secret = Some(c.pass.clone());
        }
        self
    }

    /// Runs it; a non-zero exit is returned, not raised.
    async fn run(self) -> Result<Out, GitError> {
        let mut argv = self.global;
        argv.extend(self.args);
        let spec = StartSpec {
            argv,
            env: self.env,
            // `-C` names the repository: a missing one is git's error, not a missing cwd.
            cwd: Some("/".into()),
            ..Default::default()
        };
        let reply = self
            .t
            .st
            .engine
            .agent_call(
                &self.t.p,
                self.t.id,
                &format!("git.{}", self.op),
                Some(self.target),
                Request::Exec {
                    spec,
                    timeout_ms: Some(self.timeout_ms),
                },
            )
            .await?;
        let (info, stdout, stderr, timed_out) = match reply {
            Reply::Exec {
                info,
                stdout,
                stderr,
                timed_out,
            } => (info, stdout, stderr, timed_out),
            Reply::Error { code, message } if code == "not_found" && message.contains("git") => {
                return Err(GitError::NotInstalled)
            }
            Reply::Error { code, message } => {
                return Err(EngineError::from(sandboxd_engine::files::agent_failure(
                    &code, message, "path",
                ))
                .into())
            }
            _ => return Err(unexpected().into()),
        };
        if timed_out {
            return Err(GitError::TimedOut {
                op: self.op,
                secs: self.timeout_ms / 1000,
            });
        }
        let text = |b: &str| {
            let s = String::from_utf8_lossy(&B64.decode(b).unwrap_or_default()).into_owned();
            // Belt and braces: git has no reason to echo a password, and never will here.
            match &self.secret {
                Some(p) => s.replace(p.as_str(), "***"),
                None => s,
            }
        };
        Ok(Out {
            stdout: text(&stdout),
            stderr: text(&stderr),
            exit: info
                .exit_code
                .unwrap_or_else(|| 128 + info.signal.unwrap_or(0)),
        })
    }

    /// Runs it; a non-zero exit is an error carrying git's message.
    async fn ok(self) -> Result<Out, GitError> {
        let out = self.run().await?;
        if out.exit == 0 {
            Ok(out)
        } else {
            Err(classify(&out))
        }
    }
}

fn result(output: String, exit_code: i32) -> Response {
    Json(json!({"output": output, "exit_code": exit_code})).into_response()
}

// ---------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------

/// A branch, remote, revision or commit: one argument that git must never read as an option.
fn name(field: &str, v: &str) -> Result<String, ApiError> {
    if v.trim().is_empty() {
        return Err(ApiError::invalid(field, "must not be empty"));
    }
    if v.len() > 1024 || v.contains(['\0', '\n', '\r']) {
        return Err(ApiError::invalid(
            field,
            "must be one line of at most 1024 bytes",
        ));
    }
    if v.starts_with('-') {
        return Err(ApiError::invalid(field, "must not start with '-'"));
    }
    Ok(v.to_string())
}

fn opt_name(field: &str, v: Option<&str>) -> Result<Option<String>, ApiError> {
    v.filter(|s| !s.is_empty())
        .map(|s| name(field, s))
        .transpose()
}

fn context(n: Option<u32>) -> Result<String, ApiError> {
    match n {
        Some(n) if n > 100_000 => Err(ApiError::invalid("context_lines", "must be at most 100000")),
        n => Ok(format!("--unified={}", n.unwrap_or(3))),
    }
}

/// Splits `user:password@` out of an `http(s)://` URL, so that the URL git stores in the
/// repository's config carries no secret; the pair is handed to the credential helper.
fn split_url_credentials(url: &str) -> (String, Option<(String, String)>) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_string(), None);
    };
    if !matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https") {
        return (url.to_string(), None);
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let Some(at) = authority.rfind('@') else {
        return (url.to_string(), None);
    };
    let Some((user, pass)) = authority[..at].split_once(':') else {
        return (url.to_string(), None);
    };
    let clean = format!("{scheme}://{}{}", &authority[at + 1..], &rest[end..]);
    (clean, Some((percent_decode(user), percent_decode(pass))))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------
// Rendering git's machine-readable output
// ---------------------------------------------------------------------------------------

/// `git status --porcelain=v2 --branch -z` as the short format (`git status -sb`):
/// `## main...origin/main [ahead 1]`, then `XY path` lines (`R  old -> new` for renames).
fn render_status(raw: &str) -> String {
    let (mut oid, mut head, mut upstream, mut ab) = ("", "", None, None);
    let mut lines = Vec::new();
    let xy = |s: &str| s.replace('.', " ");
    let mut it = raw.split('\0').filter(|r| !r.is_empty());
    while let Some(rec) = it.next() {
        if let Some(h) = rec.strip_prefix("# ") {
            let (k, v) = h.split_once(' ').unwrap_or((h, ""));
            match k {
                "branch.oid" => oid = v,
                "branch.head" => head = v,
                "branch.upstream" => upstream = Some(v),
                "branch.ab" => ab = Some(v),
                _ => {}
            }
            continue;
        }
        let f: Vec<&str> = match rec.as_bytes()[0] {
            b'1' => rec.splitn(9, ' ').collect(),
            b'2' => rec.splitn(10, ' ').collect(),
            b'u' => rec.splitn(11, ' ').collect(),
            _ => vec![rec],
        };
        match (rec.as_bytes()[0], f.as_slice()) {
            (b'1', [_, x, .., p]) | (b'u', [_, x, .., p]) => {
                lines.push(format!("{} {}", xy(x), quote(p)))
            }
            (b'2', [_, x, .., p]) => {
                let orig = it.next().unwrap_or_default();
                lines.push(format!("{} {} -> {}", xy(x), quote(orig), quote(p)));
            }
            (b'?', _) => lines.push(format!("?? {}", quote(&rec[2..]))),
            (b'!', _) => lines.push(format!("!! {}", quote(&rec[2..]))),
            _ => {}
        }
    }
    let mut header = if head == "(detached)" {
        "## HEAD (no branch)".to_string()
    } else if oid == "(initial)" {
        format!("## No commits yet on {head}")
    } else {
        format!("## {head}")
    };
    if let Some(u) = upstream {
        header.push_str(&format!("...{u}"));
        match ab.and_then(|ab| ab.split_once(' ')) {
            None => header.push_str(" [gone]"),
            Some((a, b)) => {
                let a = a.trim_start_matches('+');
                let b = b.trim_start_matches('-');
                let parts: Vec<String> = [("ahead", a), ("behind", b)]
                    .iter()
                    .filter(|(_, n)| *n != "0")
                    .map(|(w, n)| format!("{w} {n}"))
                    .collect();
                if !parts.is_empty() {
                    header.push_str(&format!(" [{}]", parts.join(", ")));
                }
            }
        }
    }
    let mut s = header;
    s.push('\n');
    for l in lines {
        s.push_str(&l);
        s.push('\n');
    }
    s
}

/// A path as the short status format shows it: C-quoted when it holds a quote, a backslash
/// or a control character (spaces and UTF-8 stay as they are: `core.quotepath=off`).
fn quote(p: &str) -> String {
    if !p.chars().any(|c| c == '"' || c == '\\' || c.is_control()) {
        return p.to_string();
    }
    let mut s = String::from("\"");
    for c in p.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\t' => s.push_str("\\t"),
            c if c.is_control() => s.push_str(&format!("\\{:03o}", c as u32)),
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

/// Which refs `branches` lists.
#[derive(Debug, Clone, Copy, PartialEq)]
enum BranchType {
    Local,
    Remote,
    All,
}

const BRANCH_FORMAT: &str = "--format=%(HEAD)%00%(refname)%00%(symref)";

/// `for-each-ref` records as `git branch` lists them: `* main`, `  origin/main`,
/// `  origin/HEAD -> origin/main`; with `all`, remote ones under `remotes/`.
fn render_branches(raw: &str, kind: BranchType) -> String {
    let mut s = String::new();
    for rec in raw.lines().filter(|l| !l.is_empty()) {
        let mut f = rec.split('\0');
        let (head, full, symref) = (
            f.next().unwrap_or(" "),
            f.next().unwrap_or_default(),
            f.next().unwrap_or_default(),
        );
        let short = |r: &str| -> String {
            if let Some(n) = r.strip_prefix("refs/heads/") {
                n.to_string()
            } else if let Some(n) = r.strip_prefix("refs/remotes/") {
                if kind == BranchType::All {
                    format!("remotes/{n}")
                } else {
                    n.to_string()
                }
            } else {
                r.to_string()
            }
        };
        let marker = if head == "*" { '*' } else { ' ' };
        s.push_str(&format!("{marker} {}", short(full)));
        if !symref.is_empty() {
            s.push_str(&format!(
                " -> {}",
                short(symref).trim_start_matches("remotes/")
            ));
        }
        s.push('\n');
    }
    s
}

const LOG_FORMAT: &str = "--format=%H%x1f%an%x1f%ae%x1f%aI%x1f%B";

/// `log -z` records (`sha, name, email, date, message` split by US) in git's medium format.
fn render_log(raw: &str) -> String {
    let mut commits = Vec::new();
    for rec in raw.split('\0').map(|r| r.trim_start_matches('\n')) {
        let f: Vec<&str> = rec.splitn(5, '\x1f').collect();
        let [sha, name, email, date, body] = f.as_slice() else {
            continue;
        };
        let mut c = format!("commit {sha}\nAuthor: {name} <{email}>\nDate:   {date}\n\n");
        for l in body.trim_end().lines() {
            if l.is_empty() {
                c.push('\n');
            } else {
                c.push_str(&format!("    {l}\n"));
            }
        }
        commits.push(c);
    }
    commits.join("\n")
}

// ---------------------------------------------------------------------------------------
// Routes
// ---------------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CloneReq {
    url: String,
    path: String,
    branch: Option<String>,
    commit_id: Option<String>,
    depth: Option<u32>,
    username: Option<String>,
    password: Option<String>,
}

async fn clone(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> L0Result {
    let req: CloneReq = read_json(body, false).await?;
    let url = name("url", req.url.trim())?;
    let dest = abs("path", &req.path)?;
    let branch = opt_name("branch", req.branch.as_deref())?;
    let commit = opt_name("commit_id", req.commit_id.as_deref())?;
    if req.depth == Some(0) {
        return Err(ApiError::invalid("depth", "must be at least 1").into());
    }
    let (url, in_url) = split_url_credentials(&url);
    let creds = match Creds::from_request(req.username, req.password)? {
        Some(c) => Some(c),
        None => in_url.map(|(user, pass)| Creds { user, pass }),
    };
    let t = Target::new(&st, &headers, &id).await?;
    let mut g = Git::bare(&t, "clone", &dest)
        .remote(creds.as_ref())
        .arg("clone");
    if let Some(b) = &branch {
        g = g.arg(format!("--branch={b}"));
    }
    if let Some(d) = req.depth {
        g = g.arg(format!("--depth={d}"));
    }
    let out = g
        .args(["--end-of-options", url.as_str(), dest.as_str()])
        .ok()
        .await?;
    let mut output = out.both();
    if let Some(c) = commit {
        let co = Git::new(&t, "clone", &dest)
            .args(["switch", "--detach", "--end-of-options", c.as_str()])
            .ok()
            .await?;
        output.push_str(&co.both());
    }
    Ok(result(output, out.exit))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PathReq {
    path: String,
}

async fn status(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> L0Result {
    let req: PathReq = read_json(body, false).await?;
    let repo = abs("path", &req.path)?;
    let t = Target::new(&st, &headers, &id).await?;
    let out = Git::new(&t, "status", &repo)
        .args(["status", "--porcelain=v2", "--branch", "-z"])
        .ok()
        .await?;
    Ok(result(render_status(&out.stdout), out.exit))
}

async fn reset(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> L0Result {
    let req: PathReq = read_json(body, false).await?;
    let repo = abs("path", &req.path)?;
    let t = Target::new(&st, &headers, &id).await?;
    let out = Git::new(&t, "reset", &repo).arg("reset").ok().await?;
    Ok(result(out.both(), out.exit))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BranchesReq {
    path: String,
    branch_type: Option<String>,
    contains: Option<String>,
    not_contains: Option<String>,
}

async fn branches(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> L0Result {
    let req: BranchesReq = read_json(body, false).await?;
    let repo = abs("path", &req.path)?;
    let kind = match req.branch_type.as_deref().unwrap_or("local") {
        "local" | "" => BranchType::Local,
        "remote" => BranchType::Remote,
        "all" => BranchType::All,
        _ => {
            return Err(
                ApiError::invalid("branch_type", "must be one of local, remote, all").into(),
            )
        }
    };
    let contains = opt_name("contains", req.contains.as_deref())?;
    let not_contains = opt_name("not_contains", req.not_contains.as_deref())?;
    let t = Target::new(&st, &headers, &id).await?;
    let mut g = Git::new(&t, "branches", &repo).args(["for-each-ref", BRANCH_FORMAT]);
    if let Some(c) = contains {
        g = g.arg(format!("--contains={c}"));
    }
    if let Some(c) = not_contains {
        g = g.arg(format!("--no-contains={c}"));
    }
    let g = g
        .arg_if(kind != BranchType::Remote, "refs/heads/")
        .arg_if(kind != BranchType::Local, "refs/remotes/");
    let out = g.ok().await?;
    Ok(result(render_branches(&out.stdout, kind), out.exit))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ContextReq {
    path: String,
    context_lines: Option<u32>,
}

async fn diff_unstaged(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> L0Result {
    let req: ContextReq = read_json(body, false).await?;
    run_diff(
        &st,
        &headers,
        &id,
        "diff-unstaged",
        &req.path,
        req.context_lines,
        None,
    )
    .await
}

async fn diff_staged(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> L0Result {
    let req: ContextReq = read_json(body, false).await?;
    run_diff(
        &st,
        &headers,
        &id,
        "diff-staged",
        &req.path,
        req.context_lines,
        Some("--cached"),
    )
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DiffReq {
    path: String,
    target: String,
    context_lines: Option<u32>,
}

async fn diff(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> L0Result {
    let req: DiffReq = read_json(body, false).await?;
    let target = name("target", &req.target)?;
    run_diff(
        &st,
        &headers,
        &id,
        "diff",
        &req.path,
        req.context_lines,
        Some(&target),
    )
    .await
}

/// `git diff` of the work tree against the index, the index against HEAD (`--cached`), or
/// the work tree against a revision.
async fn run_diff(
    st: &AppState,
    headers: &HeaderMap,
    id: &str,
    op: &'static str,
    path: &str,
    context_lines: Option<u32>,
    against: Option<&str>,
) -> L0Result {
    let repo = abs("path", path)?;
    let unified = context(context_lines)?;
    let t = Target::new(st, headers, id).await?;
    let mut g =
        Git::new(&t, op, &repo).args(["diff", "--no-color", "--no-ext-diff", unified.as_str()]);
    match against {
        None => {}
        Some("--cached") => g = g.arg("--cached"),
        Some(rev) => g = g.args(["--end-of-options", rev]),
    }
    let out = g.arg("--").ok().await?;
    Ok(result(out.stdout, out.exit))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogReq {
    path: String,
    max_count: Option<u32>,
    start_timestamp: Option<String>,
    end_timestamp: Option<String>,
}

async fn log(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> L0Result {
    let req: LogReq = read_json(body, false).await?;
    let repo = abs("path", &req.path)?;
    let n = req.max_count.unwrap_or(LOG_DEFAULT);
    if !(1..=LOG_MAX).contains(&n) {
        return Err(
            ApiError::invalid("max_count", format!("must be between 1 and {LOG_MAX}")).into(),
        );
    }
    let since = opt_name("start_timestamp", req.start_timestamp.as_deref())?;
    let until = opt_name("end_timestamp", req.end_timestamp.as_deref())?;
    let t = Target::new(&st, &headers, &id).await?;
    let mut g = Git::new(&t, "log", &repo)
        .args(["log", "-z", LOG_FORMAT])
        .arg(format!("--max-count={n}"));
    if let Some(s) = since {
        g = g.arg(format!("--since={s}"));
    }
    if let Some(u) = until {
        g = g.arg(format!("--until={u}"));
    }
    let out = g.arg("--").run().await?;
    if out.exit != 0 {
        // A branch with no commits yet has an empty history, not a failure.
        if out.stderr.contains("does not have any commits yet") {
            return Ok(result(String::new(), 0));
        }
        return Err(classify(&out).into());
    }
    Ok(result(render_log(&out.stdout), out.exit))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShowReq {
    path: String,
    revision: Option<String>,
}

async fn show(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> L0Result {
    let req: ShowReq = read_json(body, false).await?;
    let repo = abs("path", &req.path)?;
    let rev = name("revision", req.revision.as_deref().unwrap_or("HEAD"))?;
    let t = Target::new(&st, &headers, &id).await?;
    let out = Git::new(&t, "show", &repo)
        .args([
            "show",
            "--no-color",
            "--no-ext-diff",
            "--end-of-options",
            rev.as_str(),
            "--",
        ])
        .ok()
        .await?;
    Ok(result(out.stdout, out.exit))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBranchReq {
    path: String,
    name: String,
    checkout: Option<bool>,
    base_branch: Option<String>,
}

async fn create_branch(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> L0Result {
    let req: CreateBranchReq = read_json(body, false).await?;
    let repo = abs("path", &req.path)?;
    let branch = name("name", &req.name)?;
    let base = opt_name("base_branch", req.base_branch.as_deref())?;
    let t = Target::new(&st, &headers, &id).await?;
    // `--create` takes the name as its value, so it is given in the one-argument form.
    let g = if req.checkout.unwrap_or(false) {
        Git::new(&t, "create-branch", &repo)
            .args(["switch".to_string(), format!("--create={branch}")])
    } else {
        Git::new(&t, "create-branch", &repo).args(["branch", "--end-of-options", branch.as_str()])
    };
    let g = match &base {
        Some(b) => g.args(["--end-of-options", b.as_str()]),
        None => g,
    };
    let out = g.ok().await?;
    let mut output = out.both();
    if output.trim().is_empty() {
        output = format!("Created branch '{branch}'\n");
    }
    Ok(result(output, out.exit))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckoutReq {
    path: String,
    branch: String,
    create: Option<bool>,
}

async fn checkout_branch(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> L0Result {
    let req: CheckoutReq = read_json(body, false).await?;
    let repo = abs("path", &req.path)?;
    let branch = name("branch", &req.branch)?;
    let t = Target::new(&st, &headers, &id).await?;
    // `switch`, not `checkout`: a name is never taken for a path to overwrite.
    let create = req.create.unwrap_or(false)
        && Git::new(&t, "checkout-branch", &repo)
            .args(["rev-parse", "--verify", "--quiet", "--end-of-options"])
            .arg(format!("refs/heads/{branch}"))
            .run()
            .await?
            .exit
            != 0;
    let g = Git::new(&t, "checkout-branch", &repo).arg("switch");
    let g = if create {
        g.arg(format!("--create={branch}"))
    } else {
        g.args(["--end-of-options", branch.as_str()])
    };
    let out = g.ok().await?;
    Ok(result(out.both(), out.exit))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteBranchReq {
    path: String,
    name: String,
    force: Option<bool>,
}

async fn delete_branch(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> L0Result {
    let req: DeleteBranchReq = read_json(body, false).await?;
    let repo = abs("path", &req.path)?;
    let branch = name("name", &req.name)?;
    let flag = if req.force.unwrap_or(false) {
        "-D"
    } else {
        "-d"
    };
    let t = Target::new(&st, &headers, &id).await?;
    let out = Git::new(&t, "delete-branch", &repo)
        .args(["branch", flag, "--end-of-options", branch.as_str()])
        .ok()
        .await?;
    Ok(result(out.both(), out.exit))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddReq {
    path: String,
    files: Vec<String>,
}

async fn add(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> L0Result {
    let req: AddReq = read_json(body, false).await?;
    let repo = abs("path", &req.path)?;
    if req.files.is_empty() {
        return Err(ApiError::invalid("files", "must name at least one file").into());
    }
    for (i, f) in req.files.iter().enumerate() {
        if f.is_empty() || f.contains('\0') {
            return Err(ApiError::invalid(
                format!("files[{i}]"),
                "must be a non-empty path without NUL",
            )
            .into());
        }
    }
    let t = Target::new(&st, &headers, &id).await?;
    let out = Git::new(&t, "add", &repo)
        .args(["add", "--verbose", "--"])
        .args(req.files)
        .ok()
        .await?;
    Ok(result(out.both(), out.exit))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommitReq {
    path: String,
    message: String,
    author: Option<String>,
    email: Option<String>,
    allow_empty: Option<bool>,
}

async fn commit(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> L0Result {
    let req: CommitReq = read_json(body, false).await?;
    let repo = abs("path", &req.path)?;
    if req.message.trim().is_empty() || req.message.contains('\0') {
        return Err(ApiError::invalid("message", "must not be empty").into());
    }
    // The author is also the committer, as `git -c user.name=... commit` would make them.
    let mut ident = Vec::new();
    for (field, v, vars) in [
        (
            "author",
            &req.author,
            ["GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"],
        ),
        (
            "email",
            &req.email,
            ["GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"],
        ),
    ] {
        if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
            if v.contains(['\0', '\n', '<', '>']) {
                return Err(ApiError::invalid(
                    field,
                    "must not contain '<', '>', line breaks or NUL",
                )
                .into());
            }
            ident.extend(vars.map(|k| (k.to_string(), v.to_string())));
        }
    }
    let t = Target::new(&st, &headers, &id).await?;
    let out = Git::new(&t, "commit", &repo)
        .envs(ident)
        .args(["commit", "--message", req.message.as_str()])
        .arg_if(req.allow_empty.unwrap_or(false), "--allow-empty")
        .ok()
        .await?;
    let head = Git::new(&t, "commit", &repo)
        .args(["rev-parse", "--verify", "HEAD"])
        .ok()
        .await?;
    let sha = head.stdout.trim();
    Ok(Json(json!({
        "sha": sha,
        "result": {"output": out.both(), "exit_code": out.exit},
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PushPullReq {
    path: String,
    remote: Option<String>,
    branch: Option<String>,
    set_upstream: Option<bool>,
    /// Pull only; ignored by push.
    rebase: Option<bool>,
    username: Option<String>,
    password: Option<String>,
}

async fn push(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> L0Result {
    let req: PushPullReq = read_json(body, false).await?;
    let repo = abs("path", &req.path)?;
    let remote = opt_name("remote", req.remote.as_deref())?.unwrap_or_else(|| "origin".into());
    let branch = opt_name("branch", req.branch.as_deref())?;
    let upstream = req.set_upstream.unwrap_or(false);
    let creds = Creds::from_request(req.username, req.password)?;
    let t = Target::new(&st, &headers, &id).await?;
    // Setting an upstream needs a branch to set it for: the current one unless named.
    let branch = branch.or_else(|| upstream.then(|| "HEAD".to_string()));
    let out = Git::new(&t, "push", &repo)
        .remote(creds.as_ref())
        .arg("push")
        .arg_if(upstream, "--set-upstream")
        .args(["--end-of-options", remote.as_str()])
        .args(branch)
        .ok()
        .await?;
    Ok(result(out.both(), out.exit))
}

async fn pull(
    State(st): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> L0Result {
    let req: PushPullReq = read_json(body, false).await?;
    let repo = abs("path", &req.path)?;
    let remote = opt_name("remote", req.remote.as_deref())?;
    let branch = opt_name("branch", req.branch.as_deref())?;
    let creds = Creds::from_request(req.username, req.password)?;
    let t = Target::new(&st, &headers, &id).await?;
    // Neither named: the branch's upstream, as a bare `git pull`; a branch alone is origin's.
    let remote = remote.or_else(|| branch.as_ref().map(|_| "origin".to_string()));
    let rebase = if req.rebase.unwrap_or(false) {
        "--rebase"
    } else {
        "--no-rebase"
    };
    let out = Git::new(&t, "pull", &repo)
        .remote(creds.as_ref())
        .args(["pull", "--no-edit", rebase])
        .arg_if(req.set_upstream.unwrap_or(false), "--set-upstream")
        .arg_if(remote.is_some(), "--end-of-options")
        .args(remote)
        .args(branch)
        .ok()
        .await?;
    Ok(result(out.both(), out.exit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_renders_the_short_format() {
        let raw = "# branch.oid 1234\0# branch.head main\0# branch.upstream origin/main\0\
                   # branch.ab +2 -0\0\
                   1 .M N... 100644 100644 100644 aa bb a b.txt\0\
                   1 A. N... 000000 100644 100644 00 cc new.txt\0\
                   2 R. N... 100644 100644 100644 aa aa R100 moved.txt\0old.txt\0\
                   u UU N... 100644 100644 100644 100644 a b c conflict.txt\0\
                   ? untracked dir/file\0";
        assert_eq!(
            render_status(raw),
            "## main...origin/main [ahead 2]\n M a b.txt\nA  new.txt\nR  old.txt -> moved.txt\n\
             UU conflict.txt\n?? untracked dir/file\n"
        );
    }

    #[test]
    fn status_headers_for_new_detached_and_gone_branches() {
        assert_eq!(
            render_status("# branch.oid (initial)\0# branch.head main\0"),
            "## No commits yet on main\n"
        );
        assert_eq!(
            render_status("# branch.oid ab\0# branch.head (detached)\0"),
            "## HEAD (no branch)\n"
        );
        assert_eq!(
            render_status("# branch.oid ab\0# branch.head f\0# branch.upstream origin/f\0"),
            "## f...origin/f [gone]\n"
        );
        assert_eq!(
            render_status(
                "# branch.oid ab\0# branch.head f\0# branch.upstream o/f\0# branch.ab +1 -3\0"
            ),
            "## f...o/f [ahead 1, behind 3]\n"
        );
    }

    #[test]
    fn odd_paths_are_quoted() {
        assert_eq!(quote("plain é.txt"), "plain é.txt");
        assert_eq!(quote("a\nb\"c"), "\"a\\nb\\\"c\"");
    }

    #[test]
    fn branches_render_as_git_branch_does() {
        let raw = "*\0refs/heads/main\0\n \0refs/heads/feat\0\n \0refs/remotes/origin/HEAD\0refs/remotes/origin/main\n \0refs/remotes/origin/main\0\n";
        assert_eq!(
            render_branches(raw, BranchType::All),
            "* main\n  feat\n  remotes/origin/HEAD -> origin/main\n  remotes/origin/main\n"
        );
        assert_eq!(
            render_branches(" \0refs/remotes/origin/main\0\n", BranchType::Remote),
            "  origin/main\n"
        );
    }

    #[test]
    fn log_renders_the_medium_format() {
        let raw = "abc\x1fAda\x1fada@x.io\x1f2026-01-02T03:04:05+00:00\x1fsubject\n\nbody line\n\0\
                   def\x1fBo\x1fbo@x.io\x1f2026-01-01T00:00:00+00:00\x1ffirst\n\0";
        assert_eq!(
            render_log(raw),
            "commit abc\nAuthor: Ada <ada@x.io>\nDate:   2026-01-02T03:04:05+00:00\n\n    subject\n\n    body line\n\
             \ncommit def\nAuthor: Bo <bo@x.io>\nDate:   2026-01-01T00:00:00+00:00\n\n    first\n"
        );
        assert_eq!(render_log(""), "");
    }

    #[test]
    fn url_credentials_are_split_out_of_http_urls_only() {
        assert_eq!(
            split_url_credentials("https://u:p%40ss@host:8443/r.git?x=1"),
            (
                "https://host:8443/r.git?x=1".to_string(),
                Some(("u".into(), "p@ss".into()))
            )
        );
        for keep in [
            "https://user@host/r.git",
            "ssh://git:pw@host/r.git",
            "git@github.com:o/r.git",
            "/srv/origin.git",
            "http://host/a@b",
        ] {
            assert_eq!(
                split_url_credentials(keep),
                (keep.to_string(), None),
                "{keep}"
            );
        }
    }

    #[test]
    fn percent_decoding_keeps_malformed_escapes() {
        assert_eq!(percent_decode("a%2Fb%zz%4"), "a/b%zz%4");
        assert_eq!(percent_decode("%41"), "A");
    }

    #[test]
    fn credentials_need_a_password_and_one_line_each() {
        assert!(Creds::from_request(None, None).unwrap().is_none());
        assert!(Creds::from_request(Some("u".into()), None).is_err());
        assert!(Creds::from_request(None, Some("a\nb".into())).is_err());
        let c = Creds::from_request(None, Some("tok".into()))
            .unwrap()
            .unwrap();
        assert_eq!((c.user.as_str(), c.pass.as_str()), (TOKEN_USER, "tok"));
        assert_eq!(format!("{c:?}"), "Creds(<redacted>)");
    }

    #[test]
    fn names_never_read_as_options() {
        assert!(name("branch", "-D").is_err());
        assert!(name("branch", "").is_err());
        assert!(name("branch", "a\nb").is_err());
        assert_eq!(name("branch", "feature/x").unwrap(), "feature/x");
    }

    fn out(stdout: &str, stderr: &str) -> Out {
        Out {
            stdout: stdout.into(),
            stderr: stderr.into(),
            exit: 1,
        }
    }

    #[test]
    fn failures_are_classified_by_what_git_said() {
        let c = |o: Out| ApiError::from(classify(&o)).status;
        assert_eq!(
            c(out(
                "",
                "fatal: cannot change to '/nope': No such file or directory\n"
            )),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            c(out(
                "",
                "fatal: not a git repository (or any of the parent directories): .git\n"
            )),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            c(out("", "fatal: a branch named 'x' already exists\n")),
            StatusCode::CONFLICT
        );
        assert_eq!(
            c(out("CONFLICT (content): Merge conflict in a\n", "")),
            StatusCode::CONFLICT
        );
        assert_eq!(
            c(out("", "error: branch 'x' not found\n")),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            c(out("nothing to commit, working tree clean\n", "")),
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn failure_messages_drop_hints_and_fall_back_to_stdout() {
        assert_eq!(
            failure_message(&out("", "hint: try this\nfatal: boom\n")),
            "fatal: boom"
        );
        assert_eq!(
            failure_message(&out("nothing to commit\n", "")),
            "nothing to commit"
        );
        assert_eq!(failure_message(&out("", "")), "git exited with code 1");
        let long = "x".repeat(MESSAGE_MAX + 10);
        assert!(failure_message(&out("", &long)).chars().count() <= MESSAGE_MAX + 1);
    }
}
