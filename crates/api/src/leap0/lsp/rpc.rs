//! LSP's JSON-RPC over an agent session's byte stream: `Content-Length` framing, requests
//! matched to responses by id with a deadline, the server's own requests answered at once so
//! it never stalls, and its exit (with the tail of its stderr) reported to whoever waits.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::http::StatusCode;
use sandboxd_core::SandboxId;
use sandboxd_engine::agent_client::{SessionFrame, SessionReader, SessionWriter};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::debug;

use crate::error::ApiError;

/// How long `shutdown` and the exit after it may take before the server is killed.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest message a server may send.
const MAX_MESSAGE: usize = 64 << 20;
/// How much of a server's stderr is kept to explain its exit.
const STDERR_TAIL: usize = 2048;

/// Why a request to a server failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum LspError {
    #[error("the {0} language server exited: {1}")]
    Exited(&'static str, String),
    #[error("the {0} language server did not answer {1} within {2}s")]
    Timeout(&'static str, String, u64),
}

impl From<LspError> for ApiError {
    fn from(e: LspError) -> Self {
        let status = match e {
            LspError::Exited(..) => StatusCode::BAD_GATEWAY,
            LspError::Timeout(..) => StatusCode::GATEWAY_TIMEOUT,
        };
        ApiError::new(status, "lsp_error", e.to_string())
    }
}

/// The JSON-RPC connection to one running language server.
pub(super) struct Connection {
    /// The language, for messages (`python`).
    name: &'static str,
    root: String,
    /// Framed messages to the server; dropping the sender ends the connection.
    outbox: Mutex<Option<mpsc::UnboundedSender<Vec<u8>>>>,
    pending: Mutex<HashMap<i64, oneshot::Sender<Value>>>,
    next_id: AtomicI64,
    /// Set once, with the reason, when the server is gone.
    exited: watch::Sender<Option<String>>,
    stderr: Mutex<Vec<u8>>,
    /// Dropped with the server: tells the reader task to let go of the connection.
    _alive: oneshot::Sender<()>,
}

fn frame(msg: &Value) -> Vec<u8> {
    let body = serde_json::to_vec(msg).expect("a JSON value serializes");
    let mut out = format!("Content-Length: {}\r\n\r\n", body.len()).into_bytes();
    out.extend_from_slice(&body);
    out
}

/// Takes one complete message off the front of `buf`, if there is one.
fn take_message(buf: &mut Vec<u8>) -> Result<Option<Value>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > 8192 {
            return Err("sent a header block without an end".into());
        }
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let len = head
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .ok_or_else(|| "sent a message without Content-Length".to_string())?;
    if len > MAX_MESSAGE {
        return Err(format!("sent a message of {len} bytes"));
    }
    let start = end + 4;
    if buf.len() < start + len {
        return Ok(None);
    }
    let msg = serde_json::from_slice(&buf[start..start + len])
        .map_err(|e| format!("sent a message that is not JSON: {e}"));
    buf.drain(..start + len);
    msg.map(Some)
}

impl Connection {
    /// Takes over a session's byte stream; the connection lives until it is closed or dropped.
    pub(super) fn open(
        name: &'static str,
        root: &str,
        sandbox: SandboxId,
        reader: SessionReader,
        writer: SessionWriter,
    ) -> Arc<Connection> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (alive_tx, alive_rx) = oneshot::channel();
        let conn = Arc::new(Connection {
            name,
            root: root.to_string(),
            outbox: Mutex::new(Some(tx)),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicI64::new(1),
            exited: watch::Sender::new(None),
            stderr: Mutex::new(Vec::new()),
            _alive: alive_tx,
        });
        tokio::spawn(write_loop(writer, rx));
        tokio::spawn(read_loop(Arc::downgrade(&conn), reader, alive_rx, sandbox));
        conn
    }

    pub(super) fn name(&self) -> &'static str {
        self.name
    }

    pub(super) fn exit_reason(&self) -> Option<String> {
        self.exited.borrow().clone()
    }

    fn send(&self, msg: &Value) -> Result<(), LspError> {
        let sent = self
            .outbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|tx| tx.send(frame(msg)).is_ok());
        if sent {
            Ok(())
        } else {
            Err(self.gone_error())
        }
    }

    fn gone_error(&self) -> LspError {
        let why = self
            .exit_reason()
            .unwrap_or_else(|| "connection closed".into());
        LspError::Exited(self.name(), why)
    }

    pub(super) fn notify(&self, method: &str, params: Value) -> Result<(), LspError> {
        if self.exit_reason().is_some() {
            return Err(self.gone_error());
        }
        self.send(&json!({"jsonrpc": "2.0", "method": method, "params": params}))
    }

    /// Sends a request and waits for its response (the whole JSON-RPC message).
    pub(super) async fn request(
        &self,
        method: &str,
        params: Value,
        limit: Duration,
    ) -> Result<Value, LspError> {
        if self.exit_reason().is_some() {
            return Err(self.gone_error());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
        let msg = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        if let Err(e) = self.send(&msg) {
            self.pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
            return Err(e);
        }
        let out = tokio::time::timeout(limit, rx).await;
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        match out {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => Err(self.gone_error()),
            Err(_) => {
                // The server may still answer later; tell it to give up.
                let _ = self.notify("$/cancelRequest", json!({"id": id}));
                Err(LspError::Timeout(
                    self.name(),
                    method.to_string(),
                    limit.as_secs(),
                ))
            }
        }
    }

    /// Handles one message from the server.
    fn dispatch(&self, msg: Value) {
        let method = msg.get("method").and_then(Value::as_str);
        let id = msg.get("id").filter(|v| !v.is_null()).cloned();
        match (method, id) {
            // A response to one of ours.
            (None, Some(id)) => {
                let waiter = id.as_i64().and_then(|n| {
                    self.pending
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&n)
                });
                if let Some(tx) = waiter {
                    let _ = tx.send(msg);
                }
            }
            // A request from the server: answered at once so it never waits on us.
            (Some(method), Some(id)) => {
                let reply = match method {
                    "workspace/configuration" => {
                        let n = msg
                            .pointer("/params/items")
                            .and_then(Value::as_array)
                            .map_or(0, Vec::len);
                        json!({"jsonrpc": "2.0", "id": id, "result": vec![Value::Null; n]})
                    }
                    "workspace/workspaceFolders" => json!({
                        "jsonrpc": "2.0", "id": id, "result": [folder(&self.root)],
                    }),
                    "client/registerCapability"
                    | "client/unregisterCapability"
                    | "window/workDoneProgress/create"
                    | "window/showMessageRequest"
                    | "window/showDocument"
                    | "workspace/applyEdit"
                    | "workspace/semanticTokens/refresh"
                    | "workspace/inlayHint/refresh"
                    | "workspace/codeLens/refresh"
                    | "workspace/diagnostic/refresh" => {
                        json!({"jsonrpc": "2.0", "id": id, "result": null})
                    }
                    _ => json!({"jsonrpc": "2.0", "id": id, "error": {
                        "code": -32601, "message": format!("{method} is not supported"),
                    }}),
                };
                let _ = self.send(&reply);
            }
            // Notifications (diagnostics, progress, logs) are not kept.
            _ => {}
        }
    }

    fn note_stderr(&self, data: &[u8]) {
        let mut s = self.stderr.lock().unwrap_or_else(|p| p.into_inner());
        s.extend_from_slice(data);
        if s.len() > STDERR_TAIL {
            let cut = s.len() - STDERR_TAIL;
            s.drain(..cut);
        }
    }

    /// Marks the server gone: waiting requests fail at once.
    fn gone(&self, why: String) {
        let tail = {
            let s = self.stderr.lock().unwrap_or_else(|p| p.into_inner());
            String::from_utf8_lossy(&s).trim().to_string()
        };
        let why = match tail.lines().last() {
            Some(l) if !l.is_empty() => format!("{why}; last stderr line: {l}"),
            _ => why,
        };
        self.exited.send_if_modified(|v| {
            if v.is_some() {
                return false;
            }
            *v = Some(why);
            true
        });
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// `shutdown`, `exit`, then the connection is closed (which kills what is left).
    pub(super) async fn shutdown(&self) {
        if self.exit_reason().is_none() {
            let _ = self
                .request("shutdown", Value::Null, SHUTDOWN_TIMEOUT)
                .await;
            let _ = self.notify("exit", Value::Null);
            let mut rx = self.exited.subscribe();
            let _ = tokio::time::timeout(SHUTDOWN_TIMEOUT, rx.wait_for(Option::is_some)).await;
        }
        self.close();
    }

    pub(super) fn close(&self) {
        self.outbox.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

pub(super) fn folder(root: &str) -> Value {
    let name = root.rsplit('/').find(|s| !s.is_empty()).unwrap_or("/");
    json!({"uri": file_uri(root), "name": name})
}

/// `file://` + the path, percent-encoding what a URI path may not hold.
pub(super) fn file_uri(path: &str) -> String {
    let mut out = String::from("file://");
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~!$&'()*+,;=:@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn write_loop(mut writer: SessionWriter, mut rx: mpsc::UnboundedReceiver<Vec<u8>>) {
    while let Some(msg) = rx.recv().await {
        if writer.input(&msg).await.is_err() {
            break;
        }
    }
    let _ = writer.eof().await;
    writer.close().await;
}

async fn read_loop(
    conn: Weak<Connection>,
    mut reader: SessionReader,
    mut alive: oneshot::Receiver<()>,
    sandbox: SandboxId,
) {
    let mut buf = Vec::new();
    let why = loop {
        let next = tokio::select! {
            f = reader.next() => f,
            _ = &mut alive => return,
        };
        let Some(s) = conn.upgrade() else { return };
        match next {
            Ok(Some(SessionFrame::Stdout(b))) => {
                buf.extend_from_slice(&b);
                let mut bad = None;
                loop {
                    match take_message(&mut buf) {
                        Ok(Some(msg)) => s.dispatch(msg),
                        Ok(None) => break,
                        Err(e) => {
                            bad = Some(e);
                            break;
                        }
                    }
                }
                if let Some(e) = bad {
                    s.close();
                    break e;
                }
            }
            Ok(Some(SessionFrame::Stderr(b))) => s.note_stderr(&b),
            Ok(Some(SessionFrame::Exit(e))) => {
                break match e.signal {
                    Some(sig) => format!("killed by signal {sig}"),
                    None => format!("exit code {}", e.exit_code),
                }
            }
            Ok(None) => break "the sandbox closed the connection".to_string(),
            Err(e) => break format!("the sandbox connection failed: {e}"),
        }
    };
    if let Some(s) = conn.upgrade() {
        debug!(sandbox_id = %sandbox, language = s.name, root = %s.root, %why, "language server gone");
        s.gone(why);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_round_trips_and_waits_for_whole_messages() {
        let a = frame(&json!({"id": 1, "result": "é"}));
        let b = frame(&json!({"method": "x"}));
        let mut buf = a.clone();
        buf.extend_from_slice(&b[..10]);
        assert_eq!(
            take_message(&mut buf).unwrap(),
            Some(json!({"id": 1, "result": "é"}))
        );
        assert_eq!(take_message(&mut buf).unwrap(), None);
        buf.extend_from_slice(&b[10..]);
        assert_eq!(
            take_message(&mut buf).unwrap(),
            Some(json!({"method": "x"}))
        );
        assert!(buf.is_empty());
        let mut bad = b"Content-Type: x\r\n\r\n{}".to_vec();
        assert!(take_message(&mut bad).is_err());
    }

    #[test]
    fn file_uris_are_percent_encoded() {
        assert_eq!(file_uri("/w/a b.py"), "file:///w/a%20b.py");
        assert_eq!(folder("/w/p/")["name"], "p");
    }
}
