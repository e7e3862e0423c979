//! The seam between the gateway and whatever runs sessions: the daemon implements [`Backend`]
//! over the in-sandbox agent; tests implement it over local processes.

use std::net::SocketAddr;

use tokio::sync::mpsc;

/// Who a connection acts as once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The sandbox every channel of the connection is opened in.
    pub sandbox: String,
    /// Opaque to the gateway; carried for audit (an access id, an API key id, ...).
    pub principal: String,
}

/// What a session channel asked to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionKind {
    /// `shell` (after an optional `pty-req`): an interactive login shell.
    Shell {
        term: Option<String>,
        cols: u16,
        rows: u16,
        env: Vec<(String, String)>,
    },
    /// `exec`: the backend runs `sh -c command` inside the sandbox.
    Exec {
        command: String,
        /// `(term, cols, rows)` when the client asked for a PTY first (`ssh -t`).
        pty: Option<(String, u16, u16)>,
        env: Vec<(String, String)>,
    },
    /// `subsystem`: only `"sftp"` reaches the backend, which runs its sftp-server binary.
    Subsystem { name: String },
}

/// From the client to the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Data(Vec<u8>),
    /// The client will send no more data (stdin closed).
    Eof,
    Resize {
        cols: u16,
        rows: u16,
    },
    /// A signal name without the `SIG` prefix: `"INT"`, `"TERM"`, `"KILL"`, ...
    Signal(String),
}

/// From the session to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The session ended; the gateway sends `exit-status` (or `exit-signal`), EOF and close.
    Exit {
        code: Option<i32>,
        signal: Option<String>,
    },
}

/// Both ends of a running session as the gateway sees them.
///
/// Use bounded channels: the gateway awaits every send on `input` and reads `output` only as
/// fast as the SSH client's window allows, so a fast producer is slowed down instead of
/// buffered. The gateway drops `input` when the client closes the channel; the backend should
/// end the session then, and may end it at any time by sending [`Output::Exit`] or by dropping
/// its `output` sender.
#[derive(Debug)]
pub struct SessionIo {
    pub input: mpsc::Sender<Input>,
    pub output: mpsc::Receiver<Output>,
}

/// Errors a [`Backend`] reports.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The session cannot be opened for a reason the client may read (sandbox stopped, ...).
    #[error("{0}")]
    Unavailable(String),
    /// Anything else; logged, and shown to the client only as "internal error".
    #[error("backend failure")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Everything the gateway needs from the rest of the node.
#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Password login on the TCP listener: `user` is what the client sent (an access id).
    /// `Ok(None)` means wrong credentials.
    async fn check_password(
        &self,
        user: &str,
        password: &str,
        peer: SocketAddr,
    ) -> Result<Option<Target>, BackendError>;

    /// Whether a password login of `user` as `target` may still open channels. Asked at each
    /// channel open, so a deleted access stops working at once for new channels (sessions
    /// already running continue).
    async fn still_valid(&self, _target: &Target, _user: &str) -> bool {
        true
    }

    /// Starts a session in `target.sandbox`.
    async fn open(&self, target: &Target, kind: SessionKind) -> Result<SessionIo, BackendError>;

    /// Called for audit: a login attempt failed or was rate limited.
    fn auth_failed(&self, _user: &str, _peer: SocketAddr, _reason: &str) {}
}
