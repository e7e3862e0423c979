//! Makes the daemon the subreaper of the runsc sandbox and gofer processes.
//!
//! `runsc run --detach` exits and leaves its sandbox and gofer processes behind; they are
//! re-parented to the nearest subreaper. Measured: when that is the machine's init and it reaps
//! late, `runsc delete --force` takes 1.3-3.8 s instead of 120-270 ms and `runsc state` reports
//! a dead sandbox as running for ~1.5 s. So the daemon becomes a subreaper and reaps those
//! processes itself. It must not reap the commands it runs (their owners wait for them): it
//! only reaps zombie children named `exe`, which is how runsc's re-executed sandbox and gofer
//! processes appear, while the commands it spawns keep their own names (`runsc`, `ip`, ...).

use std::time::Duration;

/// Registers this process as a child subreaper and starts the reaping thread.
pub fn start() -> std::io::Result<()> {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER, 1) takes no pointers.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    std::thread::Builder::new()
        .name("sandbox-reaper".into())
        .spawn(|| loop {
            std::thread::sleep(Duration::from_millis(50));
            reap_once();
        })?;
    Ok(())
}

/// Parses `/proc/<pid>/stat` into (comm, state, ppid).
fn parse_stat(stat: &str) -> Option<(&str, char, i32)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = &stat[open + 1..close];
    let mut rest = stat[close + 1..].split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some((comm, state, ppid))
}

fn reap_once() {
    let me = std::process::id() as i32;
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return;
    };
    for pid in rd
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
    {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some(("exe", 'Z', ppid)) = parse_stat(&stat) {
            if ppid == me {
                let mut status = 0;
                // SAFETY: reaps one zombie child by pid; `status` outlives the call.
                unsafe {
                    libc::waitpid(pid, &mut status, libc::WNOHANG);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_lines() {
        assert_eq!(
            parse_stat("123 (exe) Z 77 123 123 0"),
            Some(("exe", 'Z', 77))
        );
        assert_eq!(parse_stat("9 (a (b) c) S 1 9"), Some(("a (b) c", 'S', 1)));
        assert_eq!(parse_stat("junk"), None);
    }
}
