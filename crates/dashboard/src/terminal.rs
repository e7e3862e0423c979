//! The live terminal: a WebSocket of the dashboard's own (the browser cannot set the
//! `Authorization` header the data plane's `/v1/pty` wants), authenticated by the session
//! cookie and checked for this origin like every non-GET request ([`crate::guard`]). It opens
//! a pty session in the sandbox and bridges bytes both ways; text frames carry
//! `{"type":"resize","cols":..,"rows":..}`.

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::{SinkExt, StreamExt};
use sandboxd_agent::proto::{Reply, Request, SessionSpec};
use sandboxd_engine::agent_client::{SessionFrame, SessionReader, SessionWriter};
use serde::Deserialize;
use serde_json::Value;

use crate::error::UiError;
use crate::sandboxes::sandbox_id;
use crate::session::Authed;
use crate::Dashboard;

pub(crate) fn routes() -> Router<Dashboard> {
    Router::new().route("/ui/sandboxes/{id}/pty", get(pty))
}

#[derive(Deserialize)]
struct Size {
    cols: Option<u16>,
    rows: Option<u16>,
}

async fn pty(
    a: Authed,
    State(d): State<Dashboard>,
    Path(id): Path<String>,
    Query(size): Query<Size>,
    ws: WebSocketUpgrade,
) -> Result<Response, UiError> {
    let id = sandbox_id(&id)?;
    d.engine.get_sandbox(&a.tenant, id)?;
    let spec = SessionSpec {
        pty: true,
        cols: size.cols.filter(|c| (1..=1000).contains(c)),
        rows: size.rows.filter(|r| (1..=1000).contains(r)),
        kill_on_detach: true,
        ..Default::default()
    };
    let (reply, stream) = d
        .engine
        .session_attach(
            &a.principal,
            id,
            "dashboard.terminal",
            Request::SessionOpen(spec),
        )
        .await?;
    let (reader, writer) = match (reply, stream) {
        (Reply::Session(_), Some(s)) => s,
        (Reply::Error { message, .. }, _) => {
            return Err(UiError::invalid(format!("No terminal: {message}.")))
        }
        _ => return Err(UiError::invalid("The sandbox gave an unexpected answer.")),
    };
    Ok(ws
        .max_message_size(1 << 20)
        .on_upgrade(move |socket| bridge(socket, reader, writer))
        .into_response())
}

async fn bridge(ws: WebSocket, mut reader: SessionReader, mut writer: SessionWriter) {
    let (mut tx, mut rx) = ws.split();
    let down = async move {
        loop {
            match reader.next().await {
                Ok(Some(SessionFrame::Stdout(b) | SessionFrame::Stderr(b))) => {
                    if tx.send(Message::Binary(b.into())).await.is_err() {
                        return;
                    }
                }
                Ok(Some(SessionFrame::Exit(_))) | Ok(None) | Err(_) => {
                    let _ = tx
                        .send(Message::Close(Some(CloseFrame {
                            code: 1000,
                            reason: "session ended".into(),
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
                Message::Text(t) => match resize(t.as_str()) {
                    Some((c, r)) => writer.resize(c, r).await,
                    None => Ok(()),
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
    tokio::select! {
        _ = down => {}
        _ = up => {}
    }
}

fn resize(text: &str) -> Option<(u16, u16)> {
    let v: Value = serde_json::from_str(text).ok()?;
    if v.get("type")?.as_str()? != "resize" {
        return None;
    }
    let dim = |k: &str| {
        v.get(k)
            .and_then(Value::as_u64)
            .filter(|n| (1..=1000).contains(n))
            .map(|n| n as u16)
    };
    Some((dim("cols")?, dim("rows")?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn resize_frames() {
        assert_eq!(
            super::resize(r#"{"type":"resize","cols":80,"rows":24}"#),
            Some((80, 24))
        );
        assert_eq!(
            super::resize(r#"{"type":"resize","cols":0,"rows":24}"#),
            None
        );
        assert_eq!(super::resize("ls"), None);
    }
}
