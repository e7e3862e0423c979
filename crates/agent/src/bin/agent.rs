//! `sandboxd-agent`: init of every sandbox. Usage: `sandboxd-agent [--listen ADDR]`.

use std::net::TcpListener;
use std::thread;

use sandboxd_agent::proto::AGENT_PORT;
use sandboxd_agent::server::{serve, Agent};

/// Freed memory is wiped: the agent's memory is in every memory snapshot.
#[global_allocator]
static ALLOC: sandboxd_agent::zeroing::Zeroing = sandboxd_agent::zeroing::Zeroing;

fn main() {
    let mut listen = format!("0.0.0.0:{AGENT_PORT}");
    let mut memory_limit: Option<u64> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().unwrap_or(listen),
            "--memory-limit" => memory_limit = args.next().and_then(|v| v.parse().ok()),
            "--version" => {
                println!("sandboxd-agent {}", env!("CARGO_PKG_VERSION"));
                return;
            }
            other => {
                eprintln!("sandboxd-agent: unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    detach_stdio();
    let _ = std::fs::create_dir_all(sandboxd_agent::server::WORKSPACE);
    let agent = Agent::new();
    let reaper = agent.clone();
    thread::spawn(move || reaper.run_reaper());
    // Always running: a live resize (`SetMemoryLimit`) may set a limit later.
    agent.set_memory_limit(memory_limit.unwrap_or(0));
    let watchdog = agent.clone();
    thread::spawn(move || watchdog.run_memory_watchdog());
    let listener = match TcpListener::bind(&listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("sandboxd-agent: cannot listen on {listen}: {e}");
            std::process::exit(1);
        }
    };
    serve(agent, listener);
}

/// Points fds 0-2 at the sandbox's own /dev/null, so no host file descriptor passed in by the
/// runtime stays open inside the sandbox (a gVisor checkpoint cannot be restored with one).
fn detach_stdio() {
    let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    else {
        return;
    };
    use std::os::fd::AsRawFd;
    for fd in 0..3 {
        // SAFETY: dup2 on a valid open fd onto 0..=2; no Rust object owns fds 0-2 here.
        unsafe {
            libc::dup2(null.as_raw_fd(), fd);
        }
    }
}
