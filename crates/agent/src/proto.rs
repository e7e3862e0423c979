//! Requests and replies between the daemon and the agent. Bytes travel base64-encoded.

use serde::{Deserialize, Serialize};

/// The TCP port the agent listens on inside the sandbox.
pub const AGENT_PORT: u16 = 7777;

/// Largest request line the agent accepts (file writes travel inline).
pub const MAX_REQUEST_BYTES: usize = 128 * 1024 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Liveness check; replies `Pong`.
    Ping,
    /// Spawns a process and returns at once.
    Start(StartSpec),
    /// Spawns a process, waits for it (up to `timeout_ms`) and returns its output.
    Exec {
        #[serde(flatten)]
        spec: StartSpec,
        timeout_ms: Option<u64>,
    },
    /// `Start`, then on the same connection the process's output as `Logs` with `follow`
    /// would stream it: one round trip for a whole exec.
    StartFollow(StartSpec),
    Get {
        pid: u32,
    },
    List,
    Kill {
        pid: u32,
        signal: Option<i32>,
    },
    KillAll {
        signal: Option<i32>,
    },
    /// Writes to a process's stdin (if it was started with `stdin: true`).
    Stdin {
        pid: u32,
        data: String,
        eof: bool,
    },
    /// Streams output events from `from_seq` on; with `follow`, until the process exits.
    Logs {
        pid: u32,
        follow: bool,
        from_seq: Option<u64>,
    },
    ReadFile {
        path: String,
        offset: Option<u64>,
        length: Option<u64>,
    },
    WriteFile {
        path: String,
        data: String,
        mode: Option<u32>,
        append: bool,
        make_parents: bool,
    },
    ListDir {
        path: String,
        depth: Option<u32>,
    },
    Stat {
        path: String,
    },
    Mkdir {
        path: String,
        parents: bool,
        mode: Option<u32>,
    },
    Remove {
        path: String,
        recursive: bool,
    },
    Rename {
        from: String,
        to: String,
    },
    Copy {
        from: String,
        to: String,
        recursive: bool,
    },
    /// Sets the hostname and re-seeds after a clone (fork, restore-as-new).
    Reidentify {
        hostname: String,
    },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StartSpec {
    /// argv; `argv[0]` is looked up in `PATH`.
    pub argv: Vec<String>,
    #[serde(default)]
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    /// Keep a pipe to stdin open for `Stdin` requests; otherwise stdin is /dev/null.
    #[serde(default)]
    pub stdin: bool,
    /// Data written to stdin at start (base64), then closed unless `stdin` is set.
    pub stdin_data: Option<String>,
    /// Caller's label for the process, echoed in `ProcInfo`.
    pub tag: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ProcInfo {
    pub pid: u32,
    pub argv: Vec<String>,
    pub cwd: String,
    pub tag: Option<String>,
    pub running: bool,
    pub exit_code: Option<i32>,
    /// Set when the process was killed by a signal.
    pub signal: Option<i32>,
    /// The agent killed it for pushing the sandbox over its memory limit.
    #[serde(default)]
    pub oom_killed: bool,
    pub started_at_ms: u64,
    pub ended_at_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileInfo {
    pub name: String,
    pub path: String,
    /// "file", "dir", "symlink" or "other".
    pub kind: String,
    pub size: u64,
    pub mode: u32,
    pub modified_ms: u64,
    pub symlink_target: Option<String>,
    /// Owner and group ids (older agents do not send them).
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    Pong {
        version: String,
        /// Processes the agent's memory watchdog has killed since it started (older
        /// agents do not send it).
        #[serde(default)]
        oom_kills: u64,
    },
    Started(ProcInfo),
    Exec {
        info: ProcInfo,
        stdout: String,
        stderr: String,
        timed_out: bool,
    },
    Proc(ProcInfo),
    Procs {
        items: Vec<ProcInfo>,
    },
    Ok,
    Killed {
        count: u32,
    },
    /// One chunk of output, `stream` is "stdout" or "stderr", data base64.
    Output {
        seq: u64,
        stream: String,
        data: String,
    },
    /// The process ended; sent by `Logs` after all output.
    Exit(ProcInfo),
    /// End of a stream of events (logs without follow, or the process is gone).
    End,
    File {
        data: String,
        size: u64,
    },
    Entries {
        items: Vec<FileInfo>,
    },
    Stat(FileInfo),
    Error {
        /// "not_found", "invalid", "exists", "not_dir", "is_dir", "permission", "io".
        code: String,
        message: String,
    },
}

impl Reply {
    pub fn error(code: &str, message: impl Into<String>) -> Reply {
        Reply::Error {
            code: code.to_string(),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_request_is_flat_json() {
        let r = Request::Exec {
            spec: StartSpec {
                argv: vec!["sh".into(), "-c".into(), "true".into()],
                ..Default::default()
            },
            timeout_ms: Some(5),
        };
        let s = serde_json::to_string(&r).unwrap();
        assert!(
            s.starts_with(r#"{"op":"exec","argv":["sh","-c","true"]"#),
            "{s}"
        );
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), r);
    }

    #[test]
    fn replies_are_tagged() {
        let s = serde_json::to_string(&Reply::error("not_found", "x")).unwrap();
        assert_eq!(s, r#"{"type":"error","code":"not_found","message":"x"}"#);
    }
}
