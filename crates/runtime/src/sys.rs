//! Host command helpers: running `ip`, `mount` and friends and turning failures into errors.

use std::process::{Command, Output};

use crate::RuntimeError;

/// Runs `cmd`, feeding `stdin` if given; fails with its stderr if it exits non-zero.
pub(crate) fn run(
    what: &str,
    cmd: &mut Command,
    stdin: Option<&str>,
) -> Result<Output, RuntimeError> {
    use std::io::Write;
    use std::process::Stdio;
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(RuntimeError::io(format!("spawn {what}")))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(RuntimeError::io(format!("write to {what}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(RuntimeError::io(format!("wait for {what}")))?;
    if !out.status.success() {
        return Err(RuntimeError::Command {
            what: what.to_string(),
            detail: String::from_utf8_lossy(&out.stderr)
                .trim()
                .chars()
                .take(2000)
                .collect(),
        });
    }
    Ok(out)
}
