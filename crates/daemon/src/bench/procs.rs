//! Child processes for the bench. One thread reaps every child (`waitpid(-1)`), so the bench
//! can be a child subreaper: the `runsc-sandbox` and `runsc-gofer` processes that outlive the
//! baseline's `runsc run --detach` are re-parented to it and reaped at once, as the daemon does
//! for its own sandboxes (it is their subreaper, see crates/runtime/src/reaper.rs). Without
//! that, on a host whose PID 1 reaps late, `runsc delete --force` waits for the reaping
//! (1.3-1.9 s, see docs/runsc-recipe.md) and the baseline's delete would be measured slow.
//!
//! Because the reaper owns `waitpid`, children spawned here must be waited with [`wait`], never
//! with `Child::wait`.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

struct Reaper {
    exited: Mutex<HashMap<i32, i32>>,
    cv: Condvar,
}

static REAPER: OnceLock<Reaper> = OnceLock::new();
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_sig: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Whether SIGINT or SIGTERM arrived; the bench then stops and cleans up.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

pub fn check_interrupted() -> anyhow::Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// Starts the reaper thread (once) and, if `subreaper`, makes this process a child subreaper.
/// Also turns SIGINT/SIGTERM into a flag so that cleanup still runs.
pub fn init(subreaper: bool) -> anyhow::Result<()> {
    // SAFETY: installs an async-signal-safe handler (one atomic store) for two signals.
    unsafe {
        let h = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::signal(libc::SIGINT, h);
        libc::signal(libc::SIGTERM, h);
    }
    if subreaper {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
            return Err(std::io::Error::last_os_error()).context("PR_SET_CHILD_SUBREAPER");
        }
    }
    if REAPER
        .set(Reaper {
            exited: Mutex::new(HashMap::new()),
            cv: Condvar::new(),
        })
        .is_ok()
    {
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(reap_loop)?;
    }
    Ok(())
}

fn reaper() -> &'static Reaper {
    REAPER.get().expect("procs::init not called")
}

fn reap_loop() {
    let r = reaper();
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes only to `status`.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        if pid > 0 {
            r.exited.lock().expect("reaper lock").insert(pid, status);
            r.cv.notify_all();
            continue;
        }
        let err = std::io::Error::last_os_error().raw_os_error();
        if err == Some(libc::EINTR) {
            continue;
        }
        // ECHILD: no child right now; `spawn` wakes us when there is one.
        let g = r.exited.lock().expect("reaper lock");
        let _ = r.cv.wait_timeout(g, Duration::from_millis(20));
    }
}

/// Spawns `cmd` in its own process group (so a terminal's Ctrl-C reaches only the bench).
pub fn spawn(cmd: &mut Command) -> anyhow::Result<Child> {
    let r = reaper();
    cmd.process_group(0);
    let mut g = r.exited.lock().expect("reaper lock");
    let child = cmd
        .spawn()
        .with_context(|| format!("spawn {:?}", cmd.get_program()))?;
    // A stale status under a reused pid must not be mistaken for this child's.
    g.remove(&(child.id() as i32));
    drop(g);
    r.cv.notify_all();
    Ok(child)
}

/// Waits for a child from [`spawn`]; after `timeout` it is SIGKILLed (and still waited for).
pub fn wait(child: &Child, timeout: Duration) -> ExitStatus {
    let r = reaper();
    let pid = child.id() as i32;
    let deadline = Instant::now() + timeout;
    let mut killed = false;
    let mut g = r.exited.lock().expect("reaper lock");
    loop {
        if let Some(st) = g.remove(&pid) {
            return ExitStatus::from_raw(st);
        }
        let now = Instant::now();
        if now >= deadline && !killed {
            // SAFETY: kill(2) takes no pointers. The pid is our child's, whose status has not
            // been recorded yet, so it is not reaped (or was reaped microseconds ago).
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            killed = true;
        }
        let wait_for = if killed {
            Duration::from_millis(100)
        } else {
            deadline - now
        };
        g = r.cv.wait_timeout(g, wait_for).expect("reaper lock").0;
    }
}

/// Sends SIGTERM to a child from [`spawn`] and waits up to `grace`, then SIGKILLs it.
pub fn terminate(child: &Child, grace: Duration) -> ExitStatus {
    {
        let g = reaper().exited.lock().expect("reaper lock");
        if !g.contains_key(&(child.id() as i32)) {
            // SAFETY: kill(2) takes no pointers; the pid is our child's (see `wait`).
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
        }
    }
    wait(child, grace)
}

/// Runs `cmd` to completion with stdin and stdout on /dev/null and stderr into `errlog`
/// (a file, not a pipe: a pipe could be kept open by processes runsc leaves behind).
/// Fails with the stderr text if it exits non-zero.
pub fn run_quiet(what: &str, cmd: &mut Command, errlog: &Path) -> anyhow::Result<()> {
    let err = File::create(errlog).with_context(|| format!("create {}", errlog.display()))?;
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(err);
    let child = spawn(cmd)?;
    let st = wait(&child, Duration::from_secs(60));
    if !st.success() {
        let detail = std::fs::read_to_string(errlog).unwrap_or_default();
        let tail: String = detail.trim().chars().rev().take(1500).collect();
        bail!(
            "{what} failed ({st}): {}",
            tail.chars().rev().collect::<String>()
        );
    }
    Ok(())
}

/// Like [`run_quiet`], and returns stdout (for short outputs such as `runsc --version`).
pub fn run_output(what: &str, cmd: &mut Command) -> anyhow::Result<String> {
    use std::io::Read;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = spawn(cmd)?;
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        o.read_to_string(&mut out)?;
    }
    let st = wait(&child, Duration::from_secs(30));
    if !st.success() {
        bail!("{what} failed ({st})");
    }
    Ok(out)
}
