//! Talks to the agent inside a sandbox: one TCP connection per call, JSON lines.

use std::net::SocketAddr;
use std::time::Duration;

use sandboxd_agent::proto::{Reply, Request};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("agent unreachable")]
    Unreachable(#[source] std::io::Error),
    #[error("agent connection lost")]
    Io(#[source] std::io::Error),
    #[error("agent sent an unreadable reply")]
    Protocol(#[source] serde_json::Error),
    #[error("agent closed the connection")]
    Closed,
}

/// An open reply stream (for `Logs`).
pub struct ReplyStream {
    reader: BufReader<TcpStream>,
    line: Vec<u8>,
}

impl ReplyStream {
    /// The next reply, or `None` at end of stream.
    pub async fn next(&mut self) -> Option<Result<Reply, AgentError>> {
        self.line.clear();
        match self.reader.read_until(b'\n', &mut self.line).await {
            Ok(0) => None,
            Ok(_) => Some(serde_json::from_slice(&self.line).map_err(AgentError::Protocol)),
            Err(e) => Some(Err(AgentError::Io(e))),
        }
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn open(addr: SocketAddr, req: &Request) -> Result<ReplyStream, AgentError> {
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| AgentError::Unreachable(std::io::ErrorKind::TimedOut.into()))?
        .map_err(AgentError::Unreachable)?;
    let _ = stream.set_nodelay(true);
    let mut line = serde_json::to_vec(req).expect("request serializes");
    line.push(b'\n');
    let mut reader = BufReader::new(stream);
    reader
        .get_mut()
        .write_all(&line)
        .await
        .map_err(AgentError::Io)?;
    Ok(ReplyStream {
        reader,
        line: Vec::new(),
    })
}

/// Sends one request and reads its single reply.
pub async fn call(addr: SocketAddr, req: &Request) -> Result<Reply, AgentError> {
    let mut s = open(addr, req).await?;
    s.next().await.unwrap_or(Err(AgentError::Closed))
}

/// Polls the agent with `Ping` until it answers or `timeout` passes.
pub async fn wait_ready(addr: SocketAddr, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut delay = Duration::from_millis(2);
    while tokio::time::Instant::now() < deadline {
        if let Ok(Ok(Reply::Pong { .. })) =
            tokio::time::timeout(Duration::from_millis(500), call(addr, &Request::Ping)).await
        {
            return true;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(50));
    }
    false
}
