//! `sbx exec`: builds the `/v1/exec` request and relays its NDJSON frame stream.

use std::io::{BufRead, Write};

use anyhow::{anyhow, bail, Context as _, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};

/// Exit status used when the server reports `deadline_exceeded`.
const TIMEOUT_EXIT: u8 = 124;

/// The `/v1/exec` body. A single word list element containing whitespace is a shell line
/// (sent with empty `args`, which the server runs via `/bin/sh -c`); otherwise argv form.
pub fn request_body(
    command: &[String],
    cwd: Option<&str>,
    env: &[String],
    timeout_ms: Option<u64>,
) -> Result<Value> {
    let (cmd, args) = command
        .split_first()
        .ok_or_else(|| anyhow!("exec needs a command"))?;
    for kv in env {
        if !kv.contains('=') {
            bail!("--env {kv:?}: expected KEY=VALUE");
        }
    }
    Ok(json!({
        "command": cmd,
        "args": args,
        "cwd": cwd,
        "env": if env.is_empty() { Value::Null } else { json!(env) },
        "timeout_ms": timeout_ms,
        "stdin": Value::Null,
    }))
}

/// One decoded NDJSON frame.
#[derive(Debug, PartialEq)]
pub enum Frame {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exit {
        code: i64,
        signal: Option<i64>,
    },
    Error {
        reason_code: String,
        message: String,
    },
    /// A frame type this client does not know; ignored for forward compatibility.
    Other,
}

/// Parses one line; `None` for blank keep-alive lines.
pub fn parse_frame(line: &[u8]) -> Result<Option<Frame>> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let v: Value = serde_json::from_slice(line).context("malformed frame from the server")?;
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let data = || -> Result<Vec<u8>> {
        B64.decode(s("data"))
            .context("frame data is not valid base64")
    };
    Ok(Some(match v.get("type").and_then(Value::as_str) {
        Some("stdout") => Frame::Stdout(data()?),
        Some("stderr") => Frame::Stderr(data()?),
        Some("exit") => Frame::Exit {
            code: v.get("exit_code").and_then(Value::as_i64).unwrap_or(-1),
            signal: v.get("signal").and_then(Value::as_i64),
        },
        Some("error") => Frame::Error {
            reason_code: s("reason_code"),
            message: s("message"),
        },
        _ => Frame::Other,
    }))
}

/// The process exit status for a remote exit: the code itself, or 128+signal when killed.
pub fn exit_status(code: i64, signal: Option<i64>) -> u8 {
    match signal {
        Some(sig) if code < 0 => (128 + sig).clamp(0, 255) as u8,
        _ => code.rem_euclid(256) as u8,
    }
}

/// Relays frames from `input` to `out`/`err` as they arrive (or, with `raw`, copies each
/// frame line to `out`), and returns the exit status the CLI should end with.
pub fn relay(
    mut input: impl BufRead,
    out: &mut impl Write,
    err: &mut impl Write,
    raw: bool,
) -> Result<u8> {
    let mut line = Vec::new();
    loop {
        line.clear();
        if input
            .read_until(b'\n', &mut line)
            .context("reading the exec stream")?
            == 0
        {
            bail!("the exec stream ended without an exit status");
        }
        let Some(frame) = parse_frame(&line)? else {
            continue;
        };
        if raw {
            out.write_all(line.trim_ascii_end())?;
            out.write_all(b"\n")?;
            out.flush()?;
        }
        match frame {
            Frame::Stdout(b) if !raw => {
                out.write_all(&b)?;
                out.flush()?;
            }
            Frame::Stderr(b) if !raw => {
                err.write_all(&b)?;
                err.flush()?;
            }
            Frame::Exit { code, signal } => return Ok(exit_status(code, signal)),
            Frame::Error {
                reason_code,
                message,
            } => {
                let msg = if message.is_empty() {
                    &reason_code
                } else {
                    &message
                };
                writeln!(err, "sbx: {msg}")?;
                err.flush()?;
                return Ok(if reason_code == "deadline_exceeded" {
                    TIMEOUT_EXIT
                } else {
                    1
                });
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn strs(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn shell_line_goes_without_args() {
        let b = request_body(&strs(&["echo hi; exit 3"]), None, &[], None).unwrap();
        assert_eq!(b["command"], "echo hi; exit 3");
        assert_eq!(b["args"], json!([]));
        assert_eq!(b["env"], Value::Null);
        assert_eq!(b["cwd"], Value::Null);
        assert_eq!(b["timeout_ms"], Value::Null);
    }

    #[test]
    fn argv_form_with_options() {
        let b = request_body(
            &strs(&["python3", "-c", "print(1)"]),
            Some("/tmp"),
            &strs(&["A=1", "B=x=y"]),
            Some(500),
        )
        .unwrap();
        assert_eq!(b["command"], "python3");
        assert_eq!(b["args"], json!(["-c", "print(1)"]));
        assert_eq!(b["cwd"], "/tmp");
        assert_eq!(b["env"], json!(["A=1", "B=x=y"]));
        assert_eq!(b["timeout_ms"], 500);
    }

    #[test]
    fn bad_requests_are_rejected() {
        assert!(request_body(&[], None, &[], None).is_err());
        assert!(request_body(&strs(&["ls"]), None, &strs(&["NOEQ"]), None).is_err());
    }

    #[test]
    fn frames_parse() {
        assert_eq!(parse_frame(b"\n").unwrap(), None);
        assert_eq!(parse_frame(b"").unwrap(), None);
        assert_eq!(
            parse_frame(br#"{"type":"stdout","data":"aGkK"}"#).unwrap(),
            Some(Frame::Stdout(b"hi\n".to_vec()))
        );
        assert_eq!(
            parse_frame(br#"{"type":"exit","exit_code":3,"signal":null}"#).unwrap(),
            Some(Frame::Exit {
                code: 3,
                signal: None
            })
        );
        assert_eq!(
            parse_frame(br#"{"type":"progress"}"#).unwrap(),
            Some(Frame::Other)
        );
        assert!(parse_frame(b"{not json").is_err());
        assert!(parse_frame(br#"{"type":"stdout","data":"!!"}"#).is_err());
    }

    #[test]
    fn exit_statuses() {
        assert_eq!(exit_status(0, None), 0);
        assert_eq!(exit_status(3, None), 3);
        assert_eq!(exit_status(256 + 7, None), 7);
        assert_eq!(exit_status(-1, Some(9)), 137);
        assert_eq!(exit_status(-1, None), 255);
    }

    fn run(stream: &str, raw: bool) -> (Result<u8>, String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let r = relay(Cursor::new(stream.as_bytes()), &mut out, &mut err, raw);
        let s = |b: Vec<u8>| String::from_utf8(b).unwrap();
        (r, s(out), s(err))
    }

    #[test]
    fn relay_streams_and_exits() {
        let stream = "{\"type\":\"stdout\",\"data\":\"aGkK\"}\n\n\
                      {\"type\":\"stderr\",\"data\":\"b29wcwo=\"}\n\
                      {\"type\":\"exit\",\"exit_code\":3}\n";
        let (r, out, err) = run(stream, false);
        assert_eq!(r.unwrap(), 3);
        assert_eq!(out, "hi\n");
        assert_eq!(err, "oops\n");
    }

    #[test]
    fn relay_raw_copies_frames() {
        let stream =
            "{\"type\":\"stdout\",\"data\":\"aGkK\"}\r\n\n{\"type\":\"exit\",\"exit_code\":0}";
        let (r, out, err) = run(stream, true);
        assert_eq!(r.unwrap(), 0);
        assert_eq!(
            out,
            "{\"type\":\"stdout\",\"data\":\"aGkK\"}\n{\"type\":\"exit\",\"exit_code\":0}\n"
        );
        assert_eq!(err, "");
    }

    #[test]
    fn relay_error_frames() {
        let dl = r#"{"type":"error","reason_code":"deadline_exceeded","message":"command timed out and was killed"}"#;
        let (r, _, err) = run(dl, false);
        assert_eq!(r.unwrap(), 124);
        assert_eq!(err, "sbx: command timed out and was killed\n");
        let un = r#"{"type":"error","reason_code":"unavailable","message":"lost"}"#;
        assert_eq!(run(un, false).0.unwrap(), 1);
    }

    #[test]
    fn relay_truncated_stream_is_an_error() {
        let (r, out, _) = run("{\"type\":\"stdout\",\"data\":\"aGkK\"}\n", false);
        assert!(r.is_err());
        assert_eq!(out, "hi\n");
    }
}
