//! File operations built from the agent's primitives (list, read, write): glob, grep, tree,
//! find-and-replace edits with a unified diff. The pure parts (pattern matching, diffs) are
//! here with their tests; the walks go through [`Engine::agent_call`].

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use sandboxd_agent::proto::{FileInfo, Reply, Request};
use sandboxd_core::{CoreError, Principal, SandboxId};

use crate::{Engine, EngineError};

/// Most entries a recursive walk looks at.
pub const MAX_WALK_ENTRIES: usize = 100_000;
/// Most files grep reads, and the largest it reads.
pub const GREP_MAX_FILES: usize = 5_000;
pub const GREP_MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// Most matches grep returns.
pub const GREP_MAX_MATCHES: usize = 10_000;

/// One line grep found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrepMatch {
    pub path: String,
    pub line: u64,
    pub content: String,
}

/// The result of a find-and-replace edit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edited {
    pub diff: String,
    pub replacements: u64,
}

/// Maps an agent error reply to a client error; `field` names the request field at fault.
pub fn agent_failure(code: &str, message: String, field: &str) -> CoreError {
    match code {
        "not_found" => CoreError::NotFound {
            kind: "path",
            id: message,
        },
        "invalid" | "not_dir" | "is_dir" | "not_empty" => CoreError::invalid(field, message),
        "exists" => CoreError::Conflict(message),
        "permission" => CoreError::Forbidden(message),
        _ => CoreError::Internal(format!("file operation failed: {message}")),
    }
}

/// Matches `name` against a shell glob: `*` (not across `/`), `**` (across `/`), `?`, and
/// `[abc]`, `[a-z]`, `[!x]` classes.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn class(p: &[char], c: char) -> Option<(bool, usize)> {
        // p starts after '['; returns (matched, chars consumed including ']').
        let mut i = 0;
        let negate = matches!(p.first(), Some('!') | Some('^'));
        if negate {
            i += 1;
        }
        let mut matched = false;
        let start = i;
        while i < p.len() {
            if p[i] == ']' && i > start {
                return Some((matched != negate, i + 1));
            }
            if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
                if p[i] <= c && c <= p[i + 2] {
                    matched = true;
                }
                i += 3;
            } else {
                if p[i] == c {
                    matched = true;
                }
                i += 1;
            }
        }
        None
    }
    fn go(p: &[char], s: &[char]) -> bool {
        match p.first() {
            None => s.is_empty(),
            Some('*') => {
                let double = p.get(1) == Some(&'*');
                let rest = if double { &p[2..] } else { &p[1..] };
                // `**/` also matches zero directories.
                if double && rest.first() == Some(&'/') && go(&rest[1..], s) {
                    return true;
                }
                for i in 0..=s.len() {
                    if go(rest, &s[i..]) {
                        return true;
                    }
                    if i < s.len() && s[i] == '/' && !double {
                        return false;
                    }
                }
                false
            }
            Some('?') => !s.is_empty() && s[0] != '/' && go(&p[1..], &s[1..]),
            Some('[') => match (s.first(), class(&p[1..], *s.first().unwrap_or(&'\0'))) {
                (Some(_), Some((true, n))) => go(&p[1 + n..], &s[1..]),
                (Some(_), Some((false, _))) => false,
                // An unclosed '[' is a literal.
                (Some(c), None) => *c == '[' && go(&p[1..], &s[1..]),
                (None, _) => false,
            },
            Some(c) => s.first() == Some(c) && go(&p[1..], &s[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = name.chars().collect();
    go(&p, &s)
}

/// `path` relative to `base` (both absolute), without a leading `/`.
fn relative<'a>(base: &str, path: &'a str) -> &'a str {
    let base = base.trim_end_matches('/');
    path.strip_prefix(base)
        .unwrap_or(path)
        .trim_start_matches('/')
}

/// Whether an entry (relative path `rel`) is excluded: a pattern matches its relative path,
/// or any one of its path components (so `node_modules` prunes the whole tree).
pub fn excluded(rel: &str, exclude: &[String]) -> bool {
    exclude.iter().any(|pat| {
        let pat = pat.trim_end_matches('/');
        glob_match(pat, rel) || rel.split('/').any(|comp| glob_match(pat, comp))
    })
}

/// Whether a file (relative path `rel`) matches a glob: against its relative path if the
/// pattern names directories, else against its name at any depth.
pub fn glob_hit(pattern: &str, rel: &str) -> bool {
    if pattern.contains('/') {
        glob_match(pattern.trim_start_matches("./"), rel)
    } else {
        glob_match(pattern, rel.rsplit('/').next().unwrap_or(rel))
    }
}

/// Replaces every occurrence of each `(find, replace)` in turn; returns the new text and the
/// count per edit. An empty `find` is refused by the caller.
pub fn apply_edits(text: &str, edits: &[(String, String)]) -> (String, Vec<u64>) {
    let mut out = text.to_string();
    let mut counts = Vec::with_capacity(edits.len());
    for (find, replace) in edits {
        let n = out.matches(find.as_str()).count() as u64;
        if n > 0 {
            out = out.replace(find.as_str(), replace);
        }
        counts.push(n);
    }
    (out, counts)
}

/// A unified diff of `old` → `new` for `path`: one hunk spanning the changed lines with up to
/// three lines of context. Empty when nothing changed.
pub fn unified_diff(path: &str, old: &str, new: &str) -> String {
    if old == new {
        return String::new();
    }
    let a: Vec<&str> = old.split_inclusive('\n').collect();
    let b: Vec<&str> = new.split_inclusive('\n').collect();
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let max_suffix = a.len().min(b.len()) - prefix;
    let suffix = a
        .iter()
        .rev()
        .zip(b.iter().rev())
        .take(max_suffix)
        .take_while(|(x, y)| x == y)
        .count();
    const CTX: usize = 3;
    let start = prefix.saturating_sub(CTX);
    let a_end = (a.len() - suffix + CTX).min(a.len());
    let b_end = (b.len() - suffix + CTX).min(b.len());
    let range = |s: usize, e: usize| {
        let n = e - s;
        let first = if n == 0 { s } else { s + 1 };
        format!("{first},{n}")
    };
    let mut out = format!(
        "--- a{path}\n+++ b{path}\n@@ -{} +{} @@\n",
        range(start, a_end),
        range(start, b_end)
    );
    let line = |out: &mut String, tag: char, l: &str| {
        out.push(tag);
        out.push_str(l);
        if !l.ends_with('\n') {
            out.push_str("\n\\ No newline at end of file\n");
        }
    };
    for l in &a[start..prefix] {
        line(&mut out, ' ', l);
    }
    for l in &a[prefix..a.len() - suffix] {
        line(&mut out, '-', l);
    }
    for l in &b[prefix..b.len() - suffix] {
        line(&mut out, '+', l);
    }
    for l in &a[a.len() - suffix..a_end] {
        line(&mut out, ' ', l);
    }
    out
}

impl Engine {
    /// An agent call whose error replies become client errors naming `field`.
    pub async fn file_call(
        &self,
        principal: &Principal,
        id: SandboxId,
        tool: &str,
        target: &str,
        field: &str,
        req: Request,
    ) -> Result<Reply, EngineError> {
        match self
            .agent_call(principal, id, tool, Some(target.to_string()), req)
            .await?
        {
            Reply::Error { code, message } => Err(agent_failure(&code, message, field).into()),
            r => Ok(r),
        }
    }

    /// Reads a whole file (up to `limit` bytes from `offset`).
    pub async fn read_bytes(
        &self,
        principal: &Principal,
        id: SandboxId,
        path: &str,
        offset: Option<u64>,
        limit: Option<u64>,
    ) -> Result<Vec<u8>, EngineError> {
        let req = Request::ReadFile {
            path: path.to_string(),
            offset,
            length: limit,
        };
        match self
            .file_call(principal, id, "files.read", path, "path", req)
            .await?
        {
            Reply::File { data, .. } => B64
                .decode(data)
                .map_err(|_| CoreError::Internal("bad file data from the agent".into()).into()),
            _ => Err(unexpected()),
        }
    }

    pub async fn write_bytes(
        &self,
        principal: &Principal,
        id: SandboxId,
        path: &str,
        data: &[u8],
        mode: Option<u32>,
    ) -> Result<(), EngineError> {
        let req = Request::WriteFile {
            path: path.to_string(),
            data: B64.encode(data),
            mode,
            append: false,
            make_parents: true,
        };
        self.file_call(principal, id, "files.write", path, "path", req)
            .await
            .map(|_| ())
    }

    /// Every entry under `dir`, `depth` levels deep, minus the excluded ones.
    pub async fn walk(
        &self,
        principal: &Principal,
        id: SandboxId,
        dir: &str,
        depth: u32,
        exclude: &[String],
    ) -> Result<Vec<FileInfo>, EngineError> {
        let req = Request::ListDir {
            path: dir.to_string(),
            depth: Some(depth.max(1)),
        };
        let items = match self
            .file_call(principal, id, "files.list", dir, "path", req)
            .await?
        {
            Reply::Entries { items } => items,
            _ => return Err(unexpected()),
        };
        Ok(items
            .into_iter()
            .take(MAX_WALK_ENTRIES)
            .filter(|f| !excluded(relative(dir, &f.path), exclude))
            .collect())
    }

    /// Files (not directories) under `dir` whose name or relative path matches `pattern`.
    pub async fn glob(
        &self,
        principal: &Principal,
        id: SandboxId,
        dir: &str,
        pattern: &str,
        exclude: &[String],
    ) -> Result<Vec<String>, EngineError> {
        let entries = self.walk(principal, id, dir, u32::MAX, exclude).await?;
        Ok(entries
            .into_iter()
            .filter(|f| f.kind != "dir" && glob_hit(pattern, relative(dir, &f.path)))
            .map(|f| f.path)
            .collect())
    }

    /// Lines containing `pattern` in the files under `dir` (or in `dir` itself if it is a
    /// file), optionally only files whose name matches `include`. Binary files are skipped.
    pub async fn grep(
        &self,
        principal: &Principal,
        id: SandboxId,
        dir: &str,
        pattern: &str,
        include: Option<&str>,
        exclude: &[String],
    ) -> Result<Vec<GrepMatch>, EngineError> {
        let stat = match self
            .file_call(
                principal,
                id,
                "files.stat",
                dir,
                "path",
                Request::Stat { path: dir.into() },
            )
            .await?
        {
            Reply::Stat(i) => i,
            _ => return Err(unexpected()),
        };
        let files: Vec<FileInfo> = if stat.kind == "dir" {
            self.walk(principal, id, dir, u32::MAX, exclude)
                .await?
                .into_iter()
                .filter(|f| f.kind == "file")
                .filter(|f| include.is_none_or(|inc| glob_hit(inc, relative(dir, &f.path))))
                .take(GREP_MAX_FILES)
                .collect()
        } else {
            vec![stat]
        };
        let mut out = Vec::new();
        for f in files {
            if f.size > GREP_MAX_FILE_BYTES {
                continue;
            }
            let data = match self.read_bytes(principal, id, &f.path, None, None).await {
                Ok(d) => d,
                // Gone or unreadable since the walk: skip it, as grep -s does.
                Err(EngineError::Core(_)) => continue,
                Err(e) => return Err(e),
            };
            if data[..data.len().min(8192)].contains(&0) {
                continue;
            }
            let text = String::from_utf8_lossy(&data);
            for (i, l) in text.lines().enumerate() {
                if l.contains(pattern) {
                    out.push(GrepMatch {
                        path: f.path.clone(),
                        line: i as u64 + 1,
                        content: l.to_string(),
                    });
                    if out.len() >= GREP_MAX_MATCHES {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Applies find-and-replace edits to one file; every `find` must occur at least once
    /// (else nothing is written and the error names `edits[i].find`).
    pub async fn edit_file(
        &self,
        principal: &Principal,
        id: SandboxId,
        path: &str,
        edits: &[(String, String)],
    ) -> Result<Edited, EngineError> {
        for (i, (find, _)) in edits.iter().enumerate() {
            if find.is_empty() {
                return Err(
                    CoreError::invalid(format!("edits[{i}].find"), "must not be empty").into(),
                );
            }
        }
        let data = self.read_bytes(principal, id, path, None, None).await?;
        let text = String::from_utf8(data)
            .map_err(|_| CoreError::invalid("path", "is not a UTF-8 text file"))?;
        let (new, counts) = apply_edits(&text, edits);
        if let Some(i) = counts.iter().position(|n| *n == 0) {
            return Err(CoreError::invalid(
                format!("edits[{i}].find"),
                "text not found in the file",
            )
            .into());
        }
        if new != text {
            self.write_bytes(principal, id, path, new.as_bytes(), None)
                .await?;
        }
        Ok(Edited {
            diff: unified_diff(path, &text, &new),
            replacements: counts.iter().sum(),
        })
    }
}

fn unexpected() -> EngineError {
    CoreError::Internal("unexpected reply from the sandbox agent".into()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*.py", "a.py"));
        assert!(!glob_match("*.py", "dir/a.py"));
        assert!(glob_match("**/*.py", "dir/sub/a.py"));
        assert!(glob_match("**/*.py", "a.py"));
        assert!(glob_match("src/**", "src/a/b.rs"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "a/c"));
        assert!(glob_match("[ab]x", "bx"));
        assert!(glob_match("[a-c]x", "cx"));
        assert!(!glob_match("[!a-c]x", "cx"));
        assert!(glob_match("[x", "[x"));
        assert!(!glob_match("*.py", "a.pyc"));
        assert!(glob_match("*", ""));
    }

    #[test]
    fn hits_and_excludes() {
        assert!(glob_hit("*.py", "deep/down/x.py"));
        assert!(!glob_hit("src/*.py", "deep/x.py"));
        assert!(glob_hit("src/*.py", "src/x.py"));
        let ex = vec!["node_modules".to_string(), "*.log".to_string()];
        assert!(excluded("node_modules/a/b.js", &ex));
        assert!(excluded("x/y.log", &ex));
        assert!(!excluded("src/main.rs", &ex));
        assert_eq!(relative("/w/", "/w/a/b"), "a/b");
        assert_eq!(relative("/w", "/w/a"), "a");
    }

    #[test]
    fn edits_count_and_replace_in_order() {
        let (t, n) = apply_edits(
            "a b a\n",
            &[("a".into(), "c".into()), ("c b".into(), "d".into())],
        );
        assert_eq!(t, "d c\n");
        assert_eq!(n, vec![2, 1]);
        let (_, n) = apply_edits("x", &[("y".into(), "z".into())]);
        assert_eq!(n, vec![0]);
    }

    #[test]
    fn diffs_are_unified() {
        assert_eq!(unified_diff("/f", "same\n", "same\n"), "");
        let old = "1\n2\n3\n4\n5\n6\n7\n8\n";
        let new = "1\n2\n3\n4\nfive\n6\n7\n8\n";
        assert_eq!(
            unified_diff("/f", old, new),
            "--- a/f\n+++ b/f\n@@ -2,7 +2,7 @@\n 2\n 3\n 4\n-5\n+five\n 6\n 7\n 8\n"
        );
        let d = unified_diff("/f", "a", "b");
        assert_eq!(
            d,
            "--- a/f\n+++ b/f\n@@ -1,1 +1,1 @@\n-a\n\\ No newline at end of file\n+b\n\\ No newline at end of file\n"
        );
        // Pure insertion at the end.
        let d = unified_diff("/f", "a\n", "a\nb\n");
        assert_eq!(d, "--- a/f\n+++ b/f\n@@ -1,1 +1,2 @@\n a\n+b\n");
    }
}
