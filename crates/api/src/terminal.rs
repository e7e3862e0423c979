//! Terminals over WebSocket: bridges a client's WebSocket to a session attached in the
//! sandbox's agent. Two framings: Leap0 (binary frames of raw terminal bytes both ways; size
//! changes go through the REST resize route) and NeevCloud (binary input, JSON text control
//! frames `resize`/`signal`; a `session` frame first and an `exit` frame last).

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use axum::http::StatusCode;
use futures_util::{SinkExt, StreamExt};
use sandboxd_agent::proto::{Reply, SessionInfo};
use sandboxd_engine::agent_client::{SessionFrame, SessionReader, SessionWriter};
use serde_json::{json, Value};

use crate::error::ApiError;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Leap0,
    Neev,
}

/// An agent error reply to a session request, as a client error.
pub fn session_error(code: &str, message: String) -> ApiError {
    match code {
        "not_found" => ApiError::not_found(message),
        "exists" => ApiError::new(StatusCode::CONFLICT, "conflict", message),
        "limit" => ApiError::new(StatusCode::CONFLICT, "limit_exceeded", message),
        "invalid" => ApiError::invalid("session", message),
        _ => ApiError::new(StatusCode::BAD_GATEWAY, "internal", message),
    }
}

/// The agent's first reply to an attach, or the error it stands for.
pub fn expect_session(reply: Reply) -> Result<SessionInfo, ApiError> {
    match reply {
        Reply::Session(i) => Ok(i),
        Reply::Error { code, message } => Err(session_error(&code, message)),
        _ => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "internal",
            "unexpected reply from the sandbox agent",
        )),
    }
}

/// Signal numbers by name (`SIGTERM`, `TERM`, `15`).
pub fn signal_number(name: &str) -> Option<i32> {
    let n = name.trim();
    if let Ok(v) = n.parse::<i32>() {
        return (1..=64).contains(&v).then_some(v);
    }
    let n = n.to_ascii_uppercase();
    let n = n.strip_prefix("SIG").unwrap_or(&n);
    Some(match n {
        "HUP" => libc_sig::HUP,
        "INT" => libc_sig::INT,
        "QUIT" => libc_sig::QUIT,
        "KILL" => libc_sig::KILL,
        "USR1" => libc_sig::USR1,
        "USR2" => libc_sig::USR2,
        "TERM" => libc_sig::TERM,
        "CONT" => libc_sig::CONT,
        "STOP" => libc_sig::STOP,
        "TSTP" => libc_sig::TSTP,
        "WINCH" => libc_sig::WINCH,
        _ => return None,
    })
}

/// Linux signal numbers (x86_64 and aarch64 agree on these).
mod libc_sig {
    pub const HUP: i32 = 1;
    pub const INT: i32 = 2;
    pub const QUIT: i32 = 3;
    pub const KILL: i32 = 9;
    pub const USR1: i32 = 10;
    pub const USR2: i32 = 12;
    pub const TERM: i32 = 15;
    pub const CONT: i32 = 18;
    pub const STOP: i32 = 19;
    pub const TSTP: i32 = 20;
    pub const WINCH: i32 = 28;
}

/// Copies between the WebSocket and the attached session until either ends. Closing the
/// WebSocket detaches (the session goes on unless it was opened to die with its client).
pub async fn bridge(
    ws: WebSocket,
    info: SessionInfo,
    mut reader: SessionReader,
    mut writer: SessionWriter,
    framing: Framing,
) {
    let (mut tx, mut rx) = ws.split();
    if framing == Framing::Neev {
        let hello = json!({"type": "session", "pty_id": info.id}).to_string();
        if tx.send(Message::Text(hello.into())).await.is_err() {
            return;
        }
    }
    let down = async move {
        loop {
            match reader.next().await {
                Ok(Some(SessionFrame::Stdout(d) | SessionFrame::Stderr(d))) => {
                    if tx.send(Message::Binary(d.into())).await.is_err() {
                        return;
                    }
                }
                Ok(Some(SessionFrame::Exit(e))) => {
                    if framing == Framing::Neev {
                        let mut v = json!({"type": "exit", "exit_code": e.exit_code});
                        if let Some(s) = e.signal {
                            v["signal"] = json!(s);
                        }
                        let _ = tx.send(Message::Text(v.to_string().into())).await;
                    }
                    let _ = tx
                        .send(Message::Close(Some(CloseFrame {
                            code: 1000,
                            reason: "process exited".into(),
                        })))
                        .await;
                    return;
                }
                Ok(None) | Err(_) => {
                    let _ = tx
                        .send(Message::Close(Some(CloseFrame {
                            code: 1011,
                            reason: "sandbox connection lost".into(),
                        })))
                        .await;
                    return;
                }
            }
        }
    };
    let up = async move {
        while let Some(Ok(msg)) = rx.next().await {
            let res = match msg {
                Message::Binary(b) => writer.input(&b).await,
                Message::Text(t) => match framing {
                    Framing::Leap0 => writer.input(t.as_bytes()).await,
                    Framing::Neev => match control(t.as_str()) {
                        Some(Control::Resize(c, r)) => writer.resize(c, r).await,
                        Some(Control::Signal(s)) => writer.signal(s).await,
                        Some(Control::Input(d)) => writer.input(&d).await,
                        Some(Control::Eof) => writer.eof().await,
                        None => Ok(()),
                    },
                },
                Message::Close(_) => break,
                _ => Ok(()),
            };
            if res.is_err() {
                break;
            }
        }
        writer.close().await;
    };
    // Either direction ending ends the bridge: a client that leaves detaches at once.
    tokio::select! {
        _ = down => {}
        _ = up => {}
    }
}

enum Control {
    Resize(u16, u16),
    Signal(i32),
    Input(Vec<u8>),
    Eof,
}

/// A NeevCloud text frame: `{"type":"resize","cols","rows"}`, `{"type":"signal","signal"}`,
/// `{"type":"input","data"}`, `{"type":"eof"}`. Anything else is ignored.
fn control(text: &str) -> Option<Control> {
    let v: Value = serde_json::from_str(text).ok()?;
    let dim = |k: &str| {
        v.get(k)
            .and_then(Value::as_u64)
            .filter(|n| (1..=u16::MAX as u64).contains(n))
            .map(|n| n as u16)
    };
    match v.get("type")?.as_str()? {
        "resize" => Some(Control::Resize(dim("cols")?, dim("rows")?)),
        "signal" => {
            let s = match v.get("signal")? {
                Value::String(s) => signal_number(s)?,
                Value::Number(n) => signal_number(&n.to_string())?,
                _ => return None,
            };
            Some(Control::Signal(s))
        }
        "input" => Some(Control::Input(v.get("data")?.as_str()?.as_bytes().to_vec())),
        "eof" => Some(Control::Eof),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_or_number() {
        assert_eq!(signal_number("SIGTERM"), Some(15));
        assert_eq!(signal_number("int"), Some(2));
        assert_eq!(signal_number("9"), Some(9));
        assert_eq!(signal_number("SIGBOGUS"), None);
        assert_eq!(signal_number("0"), None);
    }

    #[test]
    fn neev_control_frames() {
        assert!(matches!(
            control(r#"{"type":"resize","cols":120,"rows":40}"#),
            Some(Control::Resize(120, 40))
        ));
        assert!(matches!(
            control(r#"{"type":"signal","signal":"SIGINT"}"#),
            Some(Control::Signal(2))
        ));
        assert!(control(r#"{"type":"resize","cols":0,"rows":40}"#).is_none());
        assert!(control("not json").is_none());
    }
}
