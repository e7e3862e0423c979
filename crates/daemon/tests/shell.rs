//! `sbx shell` against a real daemon and a real gVisor sandbox: an interactive terminal driven
//! through tmux (typing, window size, resize, detach on SIGTERM, reattach with scrollback, the
//! remote exit code), and piped stdin without a terminal. Needs root, runsc and tmux, and the
//! newest `sbx` binary of this workspace (release or debug).

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{workspace, Daemon};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

fn sbx_binary() -> PathBuf {
    let ws = workspace();
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| ws.join("target"));
    ["release", "debug"]
        .iter()
        .map(|p| target.join(p).join("sbx"))
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .max()
        .map(|(_, p)| p)
        .expect("sbx binary (cargo build -p sbx)")
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A private tmux server (its own socket), killed when dropped.
struct Tmux {
    sock: PathBuf,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-S")
            .arg(&self.sock)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts session `name` with a `cols`x`rows` window running `cmd` (a shell line) with
    /// the daemon's URL and key in its environment.
    fn start(&self, d: &Daemon, name: &str, (cols, rows): (u16, u16), cmd: &str) {
        let (cols, rows) = (cols.to_string(), rows.to_string());
        let url = format!("SBX_URL={}", d.url);
        let key = format!("SBX_API_KEY={}", d.key);
        self.run(&[
            "new-session",
            "-d",
            "-s",
            name,
            "-x",
            &cols,
            "-y",
            &rows,
            "-e",
            &url,
            "-e",
            &key,
            cmd,
        ]);
    }

    fn pane(&self, name: &str) -> String {
        self.run(&["capture-pane", "-p", "-t", name])
    }

    /// Polls the pane until `done` holds; panics with the pane and `err_file` otherwise.
    fn wait_for(&self, name: &str, what: &str, err_file: &Path, done: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            let pane = self.pane(name);
            if done(&pane) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "waiting for {what}; pane:\n{pane}\nsbx stderr: {}",
                std::fs::read_to_string(err_file).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn type_line(&self, name: &str, line: &str) {
        self.run(&["send-keys", "-t", name, "-l", line]);
        self.run(&["send-keys", "-t", name, "Enter"]);
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&self.sock)
            .arg("kill-server")
            .stderr(Stdio::null())
            .status();
    }
}

/// A file's contents once it has some, for up to [`WAIT`].
fn wait_file(p: &Path) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        match std::fs::read_to_string(p) {
            Ok(s) if s.ends_with('\n') => return s,
            _ if Instant::now() >= deadline => panic!("{} never written", p.display()),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The pid of the only child of `pid` (the sbx that a pane's `sh -c` runs).
fn only_child(pid: &str) -> i32 {
    let kids = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    let kids: Vec<i32> = kids
        .split_whitespace()
        .map(|k| k.parse().unwrap())
        .collect();
    assert_eq!(kids.len(), 1, "children of {pid}: {kids:?}");
    kids[0]
}

fn prompt(pane: &str) -> bool {
    pane.lines().any(|l| l.trim_end().ends_with('#'))
}

#[test]
fn shell_is_an_interactive_terminal_and_takes_piped_input() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !have("runsc") {
        eprintln!("skipping: sbx shell end-to-end needs root and runsc");
        return;
    }
    assert!(
        have("tmux"),
        "tmux is missing (scripts/setup-system installs it)"
    );
    let d = Daemon::start();
    let sb = d.create(json!({"name": "sh-a", "sandbox_template_id": "sb-debian-12-python"}));
    let id = sb["id"].as_str().unwrap().to_string();
    let sbx = sbx_binary();
    let dir = d.data_dir.join("shell-test");
    std::fs::create_dir_all(&dir).unwrap();
    let tmux = Tmux {
        sock: dir.join("tmux.sock"),
    };
    let f = |n: &str| dir.join(n);
    // After sbx ends: its status, and whether it gave the terminal back in cooked mode.
    let pane_cmd = |args: &str, tag: &str| {
        format!(
            "{} shell {args} 2>{err}; echo rc=$? >{rc}; stty -a >{stty}; sleep 600",
            sbx.display(),
            err = f(&format!("{tag}.err")).display(),
            rc = f(&format!("{tag}.rc")).display(),
            stty = f(&format!("{tag}.stty")).display(),
        )
    };

    // A login shell at the tmux window's size; typing, resizing.
    tmux.start(&d, "a", (100, 30), &pane_cmd("sh-a", "a"));
    let a_err = f("a.err");
    tmux.wait_for("a", "a prompt", &a_err, prompt);
    tmux.type_line("a", "echo hello-$((6*7))");
    tmux.wait_for("a", "hello-42", &a_err, |p| {
        p.lines().any(|l| l.trim_end() == "hello-42")
    });
    tmux.type_line("a", "stty size");
    tmux.wait_for("a", "30 100", &a_err, |p| {
        p.lines().any(|l| l.trim_end() == "30 100")
    });
    tmux.run(&["resize-window", "-t", "a", "-x", "120", "-y", "40"]);
    // The resize frame races the next line: ask until the new size shows.
    let deadline = Instant::now() + WAIT;
    loop {
        tmux.type_line("a", "stty size");
        std::thread::sleep(Duration::from_millis(300));
        let pane = tmux.pane("a");
        if pane.lines().any(|l| l.trim_end() == "40 120") {
            break;
        }
        assert!(Instant::now() < deadline, "resize never arrived:\n{pane}");
    }

    // SIGTERM detaches: the session goes on, the terminal is restored, 128+15.
    let pane_pid = tmux.run(&["display-message", "-p", "-t", "a", "#{pane_pid}"]);
    let sbx_pid = only_child(pane_pid.trim());
    // SAFETY: kill(2) on the sbx process this test started (the pane shell's only child).
    assert_eq!(unsafe { libc::kill(sbx_pid, libc::SIGTERM) }, 0);
    assert_eq!(wait_file(&f("a.rc")), "rc=143\n");
    let err = std::fs::read_to_string(&a_err).unwrap();
    let session = err
        .trim()
        .strip_prefix("sbx: detached from session ")
        .unwrap_or_else(|| panic!("sbx stderr: {err}"))
        .to_string();
    let stty = wait_file(&f("a.stty"));
    assert!(
        stty.contains(" icanon") && stty.contains(" echo ") && !stty.contains("-icanon"),
        "terminal left raw: {stty}"
    );

    // Reattach from a smaller window: the scrollback comes back, the terminal takes this
    // window's size, the shell still runs, and its exit code is sbx's.
    tmux.start(
        &d,
        "b",
        (90, 25),
        &pane_cmd(&format!("sh-a --attach {session}"), "b"),
    );
    let b_err = f("b.err");
    tmux.wait_for("b", "the replayed hello-42", &b_err, |p| {
        p.lines().any(|l| l.trim_end() == "hello-42")
    });
    tmux.type_line("b", "stty size");
    tmux.wait_for("b", "25 90 after reattach", &b_err, |p| {
        p.lines().any(|l| l.trim_end() == "25 90")
    });
    tmux.type_line("b", "exit 3");
    assert_eq!(
        wait_file(&f("b.rc")),
        "rc=3\n",
        "{}",
        std::fs::read_to_string(&b_err).unwrap_or_default()
    );

    // Errors before the upgrade read like other sbx errors.
    let out = Command::new(&sbx)
        .args(["shell", &id, "--attach", "pty-nosuchsession"])
        .env("SBX_URL", &d.url)
        .env("SBX_API_KEY", &d.key)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("404") && err.contains("not found"), "{err}");

    // No terminal: stdin is typed in, its end is ^D; a named program and its arguments.
    let piped = |args: &[&str], input: &str| {
        let out_file = f("piped.out");
        let mut child = Command::new(&sbx)
            .arg("shell")
            .args(args)
            .env("SBX_URL", &d.url)
            .env("SBX_API_KEY", &d.key)
            .stdin(Stdio::piped())
            .stdout(std::fs::File::create(&out_file).unwrap())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                panic!("sbx shell {args:?} with piped input did not end");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        (status.code(), std::fs::read_to_string(&out_file).unwrap())
    };
    let (code, out) = piped(&["sh-a"], "echo piped-$((2+2)); exit 5\n");
    assert_eq!(code, Some(5), "{out}");
    // The remote terminal ends lines with CR LF and bash's prompt toggles bracketed paste.
    assert!(out.split(['\r', '\n']).any(|l| l == "piped-4"), "{out}");
    let (code, out) = piped(&[&id, "--", "cat"], "one\ntwo\n");
    assert_eq!(code, Some(0), "cat ends at the ^D: {out}");
    assert_eq!(out.matches("two").count(), 2, "echoed and copied: {out}");
}
