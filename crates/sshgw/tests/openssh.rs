//! Black-box tests: the gateway on loopback, driven by the real OpenSSH client (`ssh`, `scp`,
//! `sftp`, with `sshpass` for passwords), sessions run as local processes.

mod support;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use sandboxd_sshgw::{derive_host_key, Gateway, HostKey, SessionKind};
use support::*;
use tokio::net::TcpListener;

const NODE_SECRET: [u8; 32] = [42; 32];

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "sandboxd_sshgw=debug".into()),
        )
        .with_test_writer()
        .try_init();
}

fn node_key() -> HostKey {
    derive_host_key(&[1; 32], "node")
}

/// A gateway serving password logins on a loopback port.
async fn tcp_gateway(backend: Arc<LocalBackend>) -> (u16, tokio::task::JoinHandle<()>) {
    init_tracing();
    let gw = Arc::new(Gateway::new(backend, node_key()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    (port, tokio::spawn(gw.serve_tcp(listener)))
}

/// A loopback port whose connections are bridged over an in-memory duplex stream into
/// `serve_authorized`, as the daemon does for a WebSocket tunnel.
async fn authorized_gateway(backend: Arc<LocalBackend>) -> (u16, tokio::task::JoinHandle<()>) {
    init_tracing();
    let gw = Arc::new(Gateway::new(backend, node_key()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let (mut near, far) = tokio::io::duplex(64 * 1024);
            tokio::spawn(async move {
                let _ = tokio::io::copy_bidirectional(&mut tcp, &mut near).await;
            });
            let gw = gw.clone();
            tokio::spawn(async move {
                let key = derive_host_key(&NODE_SECRET, "sb-test");
                if let Err(e) = gw.serve_authorized(far, target(), key).await {
                    tracing::debug!(error = %e, "authorized stream ended");
                }
            });
        }
    });
    (port, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_login_runs_commands_and_reports_exit_status() {
    if !have_tools() {
        return;
    }
    let backend = backend();
    let (port, _gw) = tcp_gateway(backend.clone()).await;

    let r = ssh_password(port, USER, PASSWORD, &[], "echo hi; echo oops >&2", None).await;
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    assert_eq!(String::from_utf8_lossy(&r.stdout), "hi\n");
    assert!(r.stderr.contains("oops"), "stderr: {}", r.stderr);

    let r = ssh_password(port, USER, PASSWORD, &[], "exit 3", None).await;
    assert_eq!(r.code, Some(3), "stderr: {}", r.stderr);

    // Env requests travel with exec (SetEnv is sent by the client as an `env` request).
    let r = ssh_password(
        port,
        USER,
        PASSWORD,
        &["-o", "SetEnv=SSHGW_TEST=works"],
        "echo $SSHGW_TEST",
        None,
    )
    .await;
    assert_eq!(
        String::from_utf8_lossy(&r.stdout),
        "works\n",
        "stderr: {}",
        r.stderr
    );

    let opened = backend.opened.lock().unwrap().clone();
    assert!(
        matches!(&opened[0], SessionKind::Exec { command, pty: None, .. } if command == "echo hi; echo oops >&2")
    );
    assert!(
        matches!(&opened[2], SessionKind::Exec { env, .. } if env.contains(&("SSHGW_TEST".into(), "works".into())))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_flows_both_ways_under_flow_control() {
    if !have_tools() {
        return;
    }
    let (port, _gw) = tcp_gateway(backend()).await;

    // 20 MB out: many times the SSH window, so the writer must wait for window adjusts.
    let r = ssh_password(
        port,
        USER,
        PASSWORD,
        &[],
        "head -c 20000000 /dev/zero",
        None,
    )
    .await;
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    assert_eq!(r.stdout.len(), 20_000_000);

    // 8 MB in and echoed back by `cat`: input and output at once must not deadlock.
    let data: Vec<u8> = (0..8_000_000u32).map(|i| (i % 251) as u8).collect();
    let r = ssh_password(port, USER, PASSWORD, &[], "cat", Some(data.clone())).await;
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    assert!(r.stdout == data, "echoed {} bytes", r.stdout.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pty_exec_and_shell() {
    if !have_tools() {
        return;
    }
    let backend = backend();
    let (port, _gw) = tcp_gateway(backend.clone()).await;

    let r = ssh_password(
        port,
        USER,
        PASSWORD,
        &["-tt"],
        "tty; echo term=$TERM; stty size",
        None,
    )
    .await;
    let out = String::from_utf8_lossy(&r.stdout);
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    assert!(out.contains("/dev/pts/"), "out: {out}");
    assert!(out.contains("term="), "out: {out}");

    // An interactive shell (no command) on a PTY, fed through stdin.
    let mut args = vec!["-p".to_string(), PASSWORD.to_string(), "ssh".to_string()];
    args.extend(ssh_opts(port));
    args.extend(password_opts());
    args.extend(["-tt".to_string(), format!("{USER}@127.0.0.1")]);
    let r = run(
        "sshpass",
        &args,
        Some(b"echo shell-$((40+2))\nexit 5\n".to_vec()),
    )
    .await;
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(out.contains("shell-42"), "out: {out}");
    assert_eq!(r.code, Some(5), "stderr: {}", r.stderr);

    let opened = backend.opened.lock().unwrap().clone();
    assert!(matches!(&opened[0], SessionKind::Exec { pty: Some(_), .. }));
    assert!(matches!(
        &opened[1],
        SessionKind::Shell { term: Some(_), .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_are_refused_and_rate_limited() {
    if !have_tools() {
        return;
    }
    let backend = backend();
    let (port, _gw) = tcp_gateway(backend.clone()).await;

    for i in 1..=3 {
        let r = ssh_password(port, USER, "wrong", &[], "echo hi", None).await;
        assert_ne!(r.code, Some(0));
        assert!(r.stdout.is_empty());
        assert_eq!(backend.password_checks.load(Ordering::SeqCst), i);
    }
    // Locked out now: even the right password is refused, fast, without asking the backend.
    let r = ssh_password(port, USER, PASSWORD, &[], "echo hi", None).await;
    assert_ne!(r.code, Some(0), "locked-out login must fail");
    assert!(r.stdout.is_empty());
    assert!(r.elapsed < Duration::from_secs(3), "took {:?}", r.elapsed);
    assert_eq!(backend.password_checks.load(Ordering::SeqCst), 3);
    assert_eq!(backend.auth_failures.load(Ordering::SeqCst), 4);

    // Another user from the same address is not affected.
    let r = ssh_password(port, "acc-bob", "x", &[], "echo hi", None).await;
    assert_ne!(r.code, Some(0));
    assert_eq!(backend.password_checks.load(Ordering::SeqCst), 4);

    // The first lockout lasts one second.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r = ssh_password(port, USER, PASSWORD, &[], "echo hi", None).await;
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    assert_eq!(String::from_utf8_lossy(&r.stdout), "hi\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_access_cannot_open_channels() {
    if !have_tools() {
        return;
    }
    let backend = backend();
    let (port, _gw) = tcp_gateway(backend.clone()).await;
    backend.revoked.store(true, Ordering::SeqCst);
    let r = ssh_password(port, USER, PASSWORD, &[], "echo hi", None).await;
    assert_ne!(r.code, Some(0));
    assert!(r.stdout.is_empty());
    assert!(backend.opened.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorized_stream_accepts_none_auth_and_presents_sandbox_key() {
    if !have_tools() {
        return;
    }
    let (port, _gw) = authorized_gateway(backend()).await;
    let dir = scratch("authz");

    // Pin the derived per-sandbox key: connecting succeeds only if the gateway presents it.
    let key = derive_host_key(&NODE_SECRET, "sb-test");
    let known = dir.join("known_hosts");
    std::fs::write(
        &known,
        format!(
            "[127.0.0.1]:{port} {}\n",
            key.public_key().to_openssh().unwrap()
        ),
    )
    .unwrap();
    let mut args = ssh_opts(port);
    args.retain(|a| a != "StrictHostKeyChecking=no" && a != "UserKnownHostsFile=/dev/null");
    // `ssh_opts` puts each option after its own "-o"; drop the now-dangling ones.
    let mut cleaned = Vec::new();
    for a in args {
        if a == "-o" && cleaned.last().is_some_and(|l: &String| l == "-o") {
            continue;
        }
        cleaned.push(a);
    }
    cleaned.extend([
        "-o".into(),
        "StrictHostKeyChecking=yes".into(),
        "-o".into(),
        format!("UserKnownHostsFile={}", known.display()),
        "-o".into(),
        "BatchMode=yes".into(),
        "-o".into(),
        "PubkeyAuthentication=no".into(),
        "-o".into(),
        "PasswordAuthentication=no".into(),
        "-o".into(),
        "KbdInteractiveAuthentication=no".into(),
        "anyone@127.0.0.1".into(),
        "echo tunneled; exit 7".into(),
    ]);
    let r = run("ssh", &cleaned, None).await;
    assert_eq!(
        String::from_utf8_lossy(&r.stdout),
        "tunneled\n",
        "stderr: {}",
        r.stderr
    );
    assert_eq!(r.code, Some(7));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_and_scp_round_trip_files() {
    if !have_tools() {
        return;
    }
    let backend = backend();
    let dir = scratch("sftp");
    let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let src = dir.join("src.bin");
    std::fs::write(&src, &payload).unwrap();

    // scp (SFTP protocol in OpenSSH 9) with a password on the TCP listener.
    let (port, _gw) = tcp_gateway(backend.clone()).await;
    let up = dir.join("scp-up.bin");
    let mut args = vec!["-p".to_string(), PASSWORD.to_string(), "scp".to_string()];
    args.extend(ssh_opts(port));
    args.extend(password_opts());
    args.extend([
        src.display().to_string(),
        format!("{USER}@127.0.0.1:{}", up.display()),
    ]);
    let r = run("sshpass", &args, None).await;
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    assert!(std::fs::read(&up).unwrap() == payload);

    // sftp in batch mode over an authorized stream (auth "none").
    let (port, _gw2) = authorized_gateway(backend.clone()).await;
    let down = dir.join("sftp-down.bin");
    let batch = dir.join("batch");
    std::fs::write(
        &batch,
        format!(
            "put {} {}\nget {} {}\n",
            src.display(),
            dir.join("sftp-up.bin").display(),
            dir.join("sftp-up.bin").display(),
            down.display()
        ),
    )
    .unwrap();
    let mut args = ssh_opts(port);
    args.extend([
        "-b".to_string(),
        batch.display().to_string(),
        "anyone@127.0.0.1".to_string(),
    ]);
    let r = run("sftp", &args, None).await;
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    assert!(std::fs::read(&down).unwrap() == payload);

    let opened = backend.opened.lock().unwrap().clone();
    assert!(opened
        .iter()
        .all(|k| matches!(k, SessionKind::Subsystem { name } if name == "sftp")));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_and_unknown_subsystems_are_refused() {
    if !have_tools() {
        return;
    }
    let backend = backend();
    let (port, _gw) = tcp_gateway(backend.clone()).await;
    let r = ssh_password(port, USER, PASSWORD, &["-s"], "nosuch", None).await;
    assert_ne!(r.code, Some(0));
    assert!(
        r.stderr.contains("subsystem request failed"),
        "stderr: {}",
        r.stderr
    );

    // -W asks for a direct-tcpip channel: refused.
    let r = ssh_password(port, USER, PASSWORD, &["-W", "127.0.0.1:9"], "", None).await;
    assert_ne!(r.code, Some(0));
    assert!(
        r.stderr.contains("forwarding failed"),
        "stderr: {}",
        r.stderr
    );
    assert!(backend.opened.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_going_away_ends_a_fast_producer() {
    if !have_tools() {
        return;
    }
    let (port, _gw) = authorized_gateway(backend()).await;
    let marker = format!("sshgw-yes-{}", std::process::id());
    let mut args = ssh_opts(port);
    args.extend(["anyone@127.0.0.1".to_string(), format!("yes {marker}")]);
    let mut ssh = tokio::process::Command::new("ssh")
        .args(&args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Read a little, then stall: the gateway must not buffer what `yes` keeps producing
    // (it waits for the client's window), and must stop `yes` once the client is gone.
    let mut out = ssh.stdout.take().unwrap();
    let mut buf = vec![0u8; 1 << 20];
    tokio::time::timeout(
        Duration::from_secs(20),
        tokio::io::AsyncReadExt::read_exact(&mut out, &mut buf),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(buf.starts_with(marker.as_bytes()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    ssh.kill().await.unwrap();
    let mut gone = false;
    for _ in 0..50 {
        let ps = run("pgrep", &["-f".into(), marker.clone()], None).await;
        if ps.code == Some(1) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "`yes` still running after the client left");
}
