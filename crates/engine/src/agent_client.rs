//! Talks to the agent inside a sandbox: one TCP connection per call, JSON lines.

use std::net::SocketAddr;
use std::time::Duration;

use sandboxd_agent::proto::{frame, Reply, Request};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
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

/// What an attached session sends.
#[derive(Debug)]
pub enum SessionFrame {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exit(frame::Exit),
}

/// Opens a session connection (`SessionOpen` / `SessionAttach`): the agent's first reply, and
/// when it is `Session`, the two halves of the attached byte stream.
pub async fn attach(
    addr: SocketAddr,
    req: &Request,
) -> Result<(Reply, Option<(SessionReader, SessionWriter)>), AgentError> {
    let mut s = open(addr, req).await?;
    let first = s.next().await.unwrap_or(Err(AgentError::Closed))?;
    if !matches!(first, Reply::Session(_)) {
        return Ok((first, None));
    }
    // Bytes already buffered past the reply line stay in the reader.
    let reader = s.reader;
    let buffered = reader.buffer().to_vec();
    let stream = reader.into_inner();
    let (r, w) = stream.into_split();
    let reader = SessionReader {
        inner: BufReader::new(Box::new(std::io::Cursor::new(buffered).chain(r))),
    };
    Ok((first, Some((reader, SessionWriter { inner: w }))))
}

type BoxRead = Box<dyn tokio::io::AsyncRead + Send + Unpin>;

pub struct SessionReader {
    inner: BufReader<BoxRead>,
}

impl SessionReader {
    /// The next frame; `None` when the agent closed the stream.
    pub async fn next(&mut self) -> Result<Option<SessionFrame>, AgentError> {
        let mut head = [0u8; 5];
        match self.inner.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(AgentError::Io(e)),
        }
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len > frame::MAX_PAYLOAD {
            return Err(AgentError::Io(std::io::ErrorKind::InvalidData.into()));
        }
        let mut payload = vec![0u8; len];
        self.inner
            .read_exact(&mut payload)
            .await
            .map_err(AgentError::Io)?;
        Ok(Some(match head[0] {
            frame::STDOUT => SessionFrame::Stdout(payload),
            frame::STDERR => SessionFrame::Stderr(payload),
            frame::EXIT => {
                SessionFrame::Exit(serde_json::from_slice(&payload).map_err(AgentError::Protocol)?)
            }
            _ => return Err(AgentError::Io(std::io::ErrorKind::InvalidData.into())),
        }))
    }
}

pub struct SessionWriter {
    inner: tokio::net::tcp::OwnedWriteHalf,
}

impl SessionWriter {
    async fn send(&mut self, kind: u8, payload: &[u8]) -> Result<(), AgentError> {
        for chunk in payload.chunks(frame::MAX_PAYLOAD).chain(
            // An empty payload still makes one frame.
            std::iter::once(&[][..]).filter(|_| payload.is_empty()),
        ) {
            self.inner
                .write_all(&frame::encode(kind, chunk))
                .await
                .map_err(AgentError::Io)?;
        }
        Ok(())
    }

    pub async fn input(&mut self, data: &[u8]) -> Result<(), AgentError> {
        self.send(frame::INPUT, data).await
    }

    pub async fn eof(&mut self) -> Result<(), AgentError> {
        self.send(frame::EOF, &[]).await
    }

    pub async fn resize(&mut self, cols: u16, rows: u16) -> Result<(), AgentError> {
        let mut p = cols.to_be_bytes().to_vec();
        p.extend_from_slice(&rows.to_be_bytes());
        self.send(frame::RESIZE, &p).await
    }

    pub async fn signal(&mut self, sig: i32) -> Result<(), AgentError> {
        self.send(frame::SIGNAL, &sig.to_be_bytes()).await
    }

    /// Detaches: the session goes on (unless it was opened with `kill_on_detach`).
    pub async fn close(mut self) {
        let _ = self.inner.shutdown().await;
    }
}

/// Idle agent connections kept for reuse by code-interpreter calls, where a fresh TCP
/// connection into the sandbox is half of a `1+1` round trip. A connection goes back only
/// after a complete exchange. Connections are keyed by the sandbox and the version of its
/// record, so none outlives a pause, a restore or the sandbox itself (a sandbox that later
/// gets the same address has another id); an idle one is dropped after `POOL_IDLE`.
#[derive(Default)]
pub struct Pool {
    idle: std::sync::Mutex<
        std::collections::HashMap<PoolKey, Vec<(tokio::time::Instant, ReplyStream)>>,
    >,
}

/// A sandbox and the version of its record (`updated_at`), and where its agent listens.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub sandbox: String,
    pub version: i64,
    pub addr: SocketAddr,
}

const POOL_IDLE: Duration = Duration::from_secs(10);
const POOL_PER_SANDBOX: usize = 4;

impl Pool {
    fn take(&self, key: &PoolKey) -> Option<ReplyStream> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        // Versions of this sandbox other than the current one are dead weight.
        idle.retain(|k, _| k.sandbox != key.sandbox || k == key);
        let list = idle.get_mut(key)?;
        while let Some((at, s)) = list.pop() {
            if at.elapsed() < POOL_IDLE {
                return Some(s);
            }
        }
        None
    }

    /// Sends `req` on an idle connection if one works, else on a new one.
    pub async fn open(&self, key: &PoolKey, req: &Request) -> Result<ReplyStream, AgentError> {
        if let Some(mut s) = self.take(key) {
            let mut line = serde_json::to_vec(req).expect("request serializes");
            line.push(b'\n');
            if s.reader.get_mut().write_all(&line).await.is_ok() {
                return Ok(s);
            }
        }
        open(key.addr, req).await
    }

    /// Returns a connection whose exchange is complete.
    pub fn put(&self, key: PoolKey, s: ReplyStream) {
        if !s.reader.buffer().is_empty() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(key).or_default();
        list.retain(|(at, _)| at.elapsed() < POOL_IDLE);
        if list.len() < POOL_PER_SANDBOX {
            list.push((tokio::time::Instant::now(), s));
        }
    }
}
