//! `sbx shell`: an interactive terminal in a sandbox, like `docker exec -it`, over the data
//! plane's `GET /v1/pty` WebSocket in the NeevCloud framing: the server's first text frame is
//! `{"type":"session","pty_id"}`, terminal output comes as binary frames, and a text frame
//! `{"type":"exit","exit_code"}` comes last; keystrokes go up as binary frames, size changes
//! and end of input as JSON text frames (`resize`, `eof`).
//!
//! One thread owns the socket: it reads with a short timeout and, between reads, sends what
//! the stdin thread and the signal thread queued on a channel.
//!
//! When stdin is not a terminal, its bytes are typed into the remote terminal as they come and
//! its end is sent as `eof` (the remote terminal reads that as ^D), so
//! `echo 'make; exit $?' | sbx shell box` runs the line and ends with the shell. The remote
//! side is a terminal either way: it echoes input and ends lines with CR LF.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::{json, Value};
use tungstenite::handshake::HandshakeError;
use tungstenite::http;
use tungstenite::{Message, WebSocket};

use crate::client::{error_message, path_segment, HttpError};
use crate::tty;

/// How long the socket thread waits for server data before it looks at local events again:
/// the most a keystroke waits before it is sent.
const TICK: Duration = Duration::from_millis(20);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The server opens the session in the sandbox before it answers the upgrade.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(120);
const STDIN: i32 = 0;

/// What to open: a new terminal (the login shell, or `program`) or a running session.
pub struct Target<'a> {
    pub connect_url: &'a str,
    pub sandbox_id: &'a str,
    pub program: &'a [String],
    pub attach: Option<&'a str>,
}

/// Runs the terminal session; returns the exit status sbx should end with.
pub fn run(client: &crate::client::Client, t: &Target) -> Result<u8> {
    let tty = tty::is_tty(STDIN);
    let size = if tty { tty::size(STDIN) } else { None };
    let url = pty_url(t.connect_url, size, t.program, t.attach);
    let req = client.ws_request(&url, t.sandbox_id)?;
    let mut ws = connect(req)?;

    let (tx, rx) = mpsc::channel();
    spawn_stdin(tx.clone());
    // Raw mode only once connected, so connection errors print on a sane terminal.
    let raw = if tty {
        spawn_signals(tx)?;
        Some(tty::RawMode::enable(STDIN).context("cannot put the terminal in raw mode")?)
    } else {
        None
    };
    let mut out = std::io::stdout().lock();
    let res = relay(&mut ws, &rx, &mut out, tty, size, t.attach);
    drop(raw);
    let end = res?;
    let session = end
        .session
        .or(t.attach.map(String::from))
        .unwrap_or_default();
    Ok(match end.how {
        Ended::Exited(code) => code,
        Ended::Detached(reason) => {
            match reason {
                Some(r) => eprintln!("sbx: detached from session {session} ({r})"),
                None => eprintln!("sbx: detached from session {session}"),
            }
            1
        }
        Ended::Stopped(sig) => {
            eprintln!("sbx: detached from session {session}");
            (128 + sig).clamp(0, 255) as u8
        }
    })
}

/// `{connect_url}/v1/pty?...` as a `ws://`/`wss://` URL.
pub fn pty_url(
    connect_url: &str,
    size: Option<(u16, u16)>,
    program: &[String],
    attach: Option<&str>,
) -> String {
    let base = connect_url.trim_end_matches('/');
    let base = if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else {
        base.to_string()
    };
    let mut q = Vec::new();
    if let Some((cols, rows)) = size {
        q.push(format!("cols={cols}"));
        q.push(format!("rows={rows}"));
    }
    if let Some(id) = attach {
        q.push(format!("id={}", path_segment(id)));
    } else if let Some((p, args)) = program.split_first() {
        q.push(format!("program={}", path_segment(p)));
        q.extend(args.iter().map(|a| format!("arg={}", path_segment(a))));
    }
    if q.is_empty() {
        format!("{base}/v1/pty")
    } else {
        format!("{base}/v1/pty?{}", q.join("&"))
    }
}

/// Opens the TCP connection and does the WebSocket handshake; an HTTP error answer becomes an
/// [`HttpError`] like every other sbx request's.
fn connect(req: http::Request<()>) -> Result<WebSocket<TcpStream>> {
    let uri = req.uri().clone();
    match uri.scheme_str() {
        Some("ws") => {}
        Some("wss") => bail!(
            "{uri}: https is not supported by this sbx build (it has no TLS); use an http:// \
             SBX_URL"
        ),
        _ => bail!("{uri}: expected an http:// URL"),
    }
    let host = uri.host().ok_or_else(|| anyhow!("{uri}: no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    let addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| anyhow!("cannot reach the server: {host}: {e}"))?;
    let mut last = None;
    let mut stream = None;
    for a in addrs {
        match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let stream = match (stream, last) {
        (Some(s), _) => s,
        (None, Some(e)) => bail!("cannot reach the server: {host}:{port}: {e}"),
        (None, None) => bail!("cannot reach the server: {host}: no address"),
    };
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    match tungstenite::client(req, stream) {
        Ok((ws, _)) => Ok(ws),
        Err(HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
            let status = resp.status();
            let body = resp
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            Err(HttpError {
                status: status.as_u16(),
                message: error_message(status.canonical_reason().unwrap_or(""), &body),
            }
            .into())
        }
        Err(HandshakeError::Failure(e)) => Err(anyhow!("opening the terminal: {e}")),
        Err(HandshakeError::Interrupted(_)) => bail!("opening the terminal: timed out"),
    }
}

/// What the stdin and signal threads hand the socket thread.
enum Event {
    Input(Vec<u8>),
    Eof,
    Winch,
    Stop(i32),
}

fn spawn_stdin(tx: Sender<Event>) {
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 8192];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => {
                    let _ = tx.send(Event::Eof);
                    return;
                }
                Ok(n) => {
                    if tx.send(Event::Input(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    let _ = tx.send(Event::Eof);
                    return;
                }
            }
        }
    });
}

/// Window size changes, and the signals that should end the session with the terminal put
/// back (in raw mode ^C is a byte for the remote side; these come from elsewhere).
fn spawn_signals(tx: Sender<Event>) -> Result<()> {
    let mut sigs = signal_hook::iterator::Signals::new(
        std::iter::once(tty::SIGWINCH).chain(tty::STOP_SIGNALS),
    )
    .context("cannot watch signals")?;
    std::thread::spawn(move || {
        for s in sigs.forever() {
            let ev = if s == tty::SIGWINCH {
                Event::Winch
            } else {
                Event::Stop(s)
            };
            if tx.send(ev).is_err() {
                return;
            }
        }
    });
    Ok(())
}

/// A text frame from the server.
#[derive(Debug, PartialEq)]
enum Control {
    Session(String),
    Exit(u8),
    Other,
}

fn parse_control(text: &str) -> Control {
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return Control::Other;
    };
    match v.get("type").and_then(Value::as_str) {
        Some("session") => Control::Session(
            v.get("pty_id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
        ),
        Some("exit") => Control::Exit(crate::exec::exit_status(
            v.get("exit_code").and_then(Value::as_i64).unwrap_or(-1),
            v.get("signal").and_then(Value::as_i64),
        )),
        _ => Control::Other,
    }
}

fn resize_frame((cols, rows): (u16, u16)) -> Message {
    Message::text(json!({"type": "resize", "cols": cols, "rows": rows}).to_string())
}

enum Ended {
    /// The remote program ended with this status.
    Exited(u8),
    /// The socket closed without an exit frame (the session may still run); the server's
    /// close reason or the transport error, if any.
    Detached(Option<String>),
    /// sbx got this signal and left the session running.
    Stopped(i32),
}

struct End {
    session: Option<String>,
    how: Ended,
}

/// A read that timed out, or a read or write that a signal interrupted (a socket with a read
/// timeout is never restarted after a signal handler, see signal(7)): try again later.
fn would_block(e: &tungstenite::Error) -> bool {
    use std::io::ErrorKind::{Interrupted, TimedOut, WouldBlock};
    matches!(e, tungstenite::Error::Io(io) if matches!(io.kind(), WouldBlock | TimedOut | Interrupted))
}

/// Where a send left the socket.
#[derive(Clone, Copy, PartialEq)]
enum Sent {
    Done,
    /// The frame is buffered in the socket; flush again later.
    Pending,
    /// The socket is going away; reading tells how.
    Failed,
}

fn send(ws: &mut WebSocket<TcpStream>, msg: Option<Message>) -> Sent {
    let res = match msg {
        Some(m) => ws.send(m),
        None => ws.flush(),
    };
    match res {
        Ok(()) => Sent::Done,
        Err(e) if would_block(&e) => Sent::Pending,
        Err(_) => Sent::Failed,
    }
}

/// Copies server output to `out` and local events to the server until the session ends.
fn relay(
    ws: &mut WebSocket<TcpStream>,
    events: &Receiver<Event>,
    out: &mut impl Write,
    tty: bool,
    mut sent_size: Option<(u16, u16)>,
    attach: Option<&str>,
) -> Result<End> {
    ws.get_mut().set_read_timeout(Some(TICK))?;
    let mut session = None;
    let mut exit = None;
    let mut reason = None;
    let mut sent = Sent::Done;
    let mut events_open = true;
    loop {
        match ws.read() {
            Ok(Message::Binary(b)) => {
                out.write_all(&b)?;
                out.flush()?;
            }
            Ok(Message::Text(t)) => match parse_control(t.as_str()) {
                Control::Session(id) => {
                    session = Some(id);
                    // A reattached terminal keeps its old size until told this one's.
                    if let (Some(_), Some(s)) = (attach, sent_size) {
                        sent = send(ws, Some(resize_frame(s)));
                    }
                }
                Control::Exit(code) => exit = Some(code),
                Control::Other => {}
            },
            Ok(Message::Close(f)) => {
                reason = f
                    .filter(|f| u16::from(f.code) != 1000 && !f.reason.is_empty())
                    .map(|f| f.reason.to_string());
            }
            Ok(_) => {}
            Err(e) if would_block(&e) => {}
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => break,
            Err(e) => {
                if exit.is_none() && reason.is_none() {
                    reason = Some(format!("connection lost: {e}"));
                }
                break;
            }
        }
        if sent == Sent::Pending {
            sent = send(ws, None);
        }
        while events_open && sent == Sent::Done {
            let msg = match events.try_recv() {
                Ok(Event::Input(b)) => Message::binary(b),
                Ok(Event::Eof) if !tty => Message::text(json!({"type": "eof"}).to_string()),
                Ok(Event::Eof) => continue,
                Ok(Event::Winch) => match tty::size(STDIN).filter(|s| Some(*s) != sent_size) {
                    Some(s) => {
                        sent_size = Some(s);
                        resize_frame(s)
                    }
                    None => continue,
                },
                Ok(Event::Stop(sig)) => {
                    let _ = ws.close(None);
                    let _ = ws.flush();
                    return Ok(End {
                        session,
                        how: Ended::Stopped(sig),
                    });
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    events_open = false;
                    break;
                }
            };
            sent = send(ws, Some(msg));
        }
    }
    let how = match exit {
        Some(code) => Ended::Exited(code),
        None => Ended::Detached(reason),
    };
    Ok(End { session, how })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn urls() {
        assert_eq!(
            pty_url("http://h:8080/", Some((100, 30)), &[], None),
            "ws://h:8080/v1/pty?cols=100&rows=30"
        );
        assert_eq!(
            pty_url(
                "https://h",
                None,
                &strs(&["python3", "-c", "print('a b')"]),
                None
            ),
            "wss://h/v1/pty?program=python3&arg=-c&arg=print%28%27a%20b%27%29"
        );
        assert_eq!(
            pty_url("http://h", Some((80, 24)), &strs(&["bash"]), Some("s-1")),
            "ws://h/v1/pty?cols=80&rows=24&id=s-1"
        );
        assert_eq!(pty_url("http://h", None, &[], None), "ws://h/v1/pty");
    }

    #[test]
    fn control_frames() {
        assert_eq!(
            parse_control(r#"{"type":"session","pty_id":"abc"}"#),
            Control::Session("abc".into())
        );
        assert_eq!(
            parse_control(r#"{"type":"exit","exit_code":3}"#),
            Control::Exit(3)
        );
        assert_eq!(
            parse_control(r#"{"type":"exit","exit_code":-1,"signal":9}"#),
            Control::Exit(137)
        );
        assert_eq!(parse_control(r#"{"type":"later"}"#), Control::Other);
        assert_eq!(parse_control("nope"), Control::Other);
    }
}
