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
    /// Creates a session (pty or pipes); replies `Session`.
    SessionCreate(SessionSpec),
    /// Creates a session and attaches to it on this connection (see [`frame`]).
    SessionOpen(SessionSpec),
    /// Attaches to a session: replies `Session`, then the session's kept output (a pty's
    /// scrollback) and its live output as frames, while the connection's frames go to it.
    SessionAttach {
        id: String,
    },
    SessionList,
    SessionGet {
        id: String,
    },
    SessionResize {
        id: String,
        cols: u16,
        rows: u16,
    },
    /// Signals the session's process group (default SIGKILL); with `remove`, forgets it.
    SessionKill {
        id: String,
        signal: Option<i32>,
        remove: bool,
    },
    /// Moves the memory watchdog's limit (a live resize); replies `Ok`.
    SetMemoryLimit {
        bytes: u64,
    },
    /// Starts a code-interpreter context (a live interpreter); replies `Context`.
    InterpCreate {
        id: Option<String>,
        language: Option<String>,
        cwd: Option<String>,
    },
    InterpList,
    InterpGet {
        id: String,
    },
    InterpDelete {
        id: String,
    },
    /// Runs code in a context (the default one when none is named): `InterpEvent` lines as
    /// output comes, then `InterpDone`. On `timeout_ms` the code is interrupted
    /// (KeyboardInterrupt), the context stays.
    InterpExecute {
        context: Option<String>,
        language: Option<String>,
        code: String,
        env: Option<std::collections::HashMap<String, String>>,
        timeout_ms: Option<u64>,
    },
    /// Watches `path` (with `recursive`, every directory under it, including ones made
    /// later): `Ok` once watching, then `WatchEvent` lines until `timeout_ms` passes, the
    /// client closes the connection or the path goes away; then `End`.
    Watch {
        path: String,
        #[serde(default)]
        recursive: bool,
        timeout_ms: Option<u64>,
    },
    /// Starts a resumable upload of `total` bytes to `target`, staged in the empty file
    /// `temp` (see [`crate::upload::temp_path`]); replies `UploadOffset`.
    UploadCreate {
        temp: String,
        target: String,
        total: u64,
    },
    /// Writes a chunk (base64) at `offset` of the upload staged in `temp`. The offset may not
    /// lie past the bytes already there (error `conflict`); a resent chunk is harmless. At
    /// `total` bytes the file is renamed onto `target`. Replies `UploadOffset`.
    UploadWrite {
        temp: String,
        target: String,
        offset: u64,
        total: u64,
        data: String,
    },
}

/// One change seen by a `Watch`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WatchEvent {
    /// "create", "write", "remove", "rename" or "chmod" (fsnotify's kinds).
    pub kind: String,
    pub path: String,
    /// The entry as it is now, unless it was removed (or is gone already).
    pub entry: Option<FileInfo>,
    /// Events were dropped (a slow client): `path` is the watched root, rescan it.
    #[serde(default)]
    pub overflow: bool,
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
    Session(SessionInfo),
    Context(ContextInfo),
    Contexts {
        items: Vec<ContextInfo>,
    },
    /// One event of a running cell: `{"type":"stdout"|"stderr","text"}`,
    /// `{"type":"result","is_primary","data":{mime: value}}`,
    /// `{"type":"error","name","value","traceback":[lines]}`.
    InterpEvent {
        event: serde_json::Value,
    },
    /// The cell finished: `{"execution_count","ok","timed_out"}`.
    InterpDone {
        event: serde_json::Value,
    },
    Sessions {
        items: Vec<SessionInfo>,
    },
    /// A change seen by a `Watch`.
    WatchEvent(WatchEvent),
    /// Bytes an upload holds; `done` once it was moved into place.
    UploadOffset {
        offset: u64,
        done: bool,
    },
    Error {
        /// "not_found", "invalid", "exists", "not_dir", "is_dir", "permission", "conflict",
        /// "io".
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

/// A code-interpreter context.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ContextInfo {
    pub id: String,
    pub language: String,
    pub cwd: String,
    pub created_at_ms: u64,
    /// Cells run so far.
    pub executions: u64,
    pub alive: bool,
}

/// A terminal (pty) or piped process a client attaches to as a byte stream
/// (`SessionAttach`/`SessionOpen`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SessionSpec {
    /// Caller-chosen id (unique in the sandbox); generated when absent.
    pub id: Option<String>,
    /// argv; a login shell (`bash -l`, else `sh -l`) when absent.
    pub argv: Option<Vec<String>>,
    #[serde(default)]
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    /// A pseudo-terminal of `cols` x `rows`; otherwise stdin/stdout/stderr are pipes.
    #[serde(default)]
    pub pty: bool,
    pub cols: Option<u16>,
    pub rows: Option<u16>,
    /// `TERM` for a pty (default `xterm-256color`).
    pub term: Option<String>,
    /// Start the process at the first attach instead of now.
    #[serde(default)]
    pub lazy: bool,
    /// Kill the process group when the last client detaches (exec/sftp over SSH).
    #[serde(default)]
    pub kill_on_detach: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SessionInfo {
    pub id: String,
    pub argv: Vec<String>,
    pub cwd: String,
    pub env: Vec<(String, String)>,
    pub pty: bool,
    pub cols: u16,
    pub rows: u16,
    pub lazy: bool,
    /// The process has been started (false while a lazy session waits for its first attach).
    pub started: bool,
    /// The process is running.
    pub running: bool,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Clients attached now.
    pub attached: u32,
    pub created_at_ms: u64,
}

/// After a `Session` reply to `SessionAttach`/`SessionOpen`, the connection carries frames:
/// one kind byte, a big-endian u32 length, the payload.
pub mod frame {
    /// agent -> host: terminal output / stdout bytes.
    pub const STDOUT: u8 = 1;
    /// agent -> host: stderr bytes (pipe sessions).
    pub const STDERR: u8 = 2;
    /// agent -> host: the process ended; payload is JSON `{"exit_code":i32,"signal":i32|null}`.
    /// Nothing follows it.
    pub const EXIT: u8 = 3;
    /// host -> agent: input bytes.
    pub const INPUT: u8 = 1;
    /// host -> agent: close stdin (pipes) / send ^D (pty).
    pub const EOF: u8 = 2;
    /// host -> agent: new size, payload two big-endian u16: cols, rows.
    pub const RESIZE: u8 = 3;
    /// host -> agent: a signal (big-endian i32) to the foreground process group.
    pub const SIGNAL: u8 = 4;
    /// Largest payload either side sends.
    pub const MAX_PAYLOAD: usize = 1 << 20;

    pub fn header(kind: u8, len: usize) -> [u8; 5] {
        let l = (len as u32).to_be_bytes();
        [kind, l[0], l[1], l[2], l[3]]
    }

    pub fn encode(kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(5 + payload.len());
        v.extend_from_slice(&header(kind, payload.len()));
        v.extend_from_slice(payload);
        v
    }

    /// Payload of an `EXIT` frame.
    #[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, PartialEq)]
    pub struct Exit {
        pub exit_code: i32,
        pub signal: Option<i32>,
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn header_is_kind_then_big_endian_length() {
            assert_eq!(super::header(3, 0x0102_0304), [3, 1, 2, 3, 4]);
            assert_eq!(super::encode(1, b"hi"), vec![1, 0, 0, 0, 2, b'h', b'i']);
        }
    }
}
