"""Interactive sessions through the official SDKs: terminals (leap0 `pty`, neevai `pty`), the
leap0 code interpreter on the sandbox host, `invoke_url`/`websocket_url`, and SSH (leap0
credentials with OpenSSH's own client fed by sshpass, the neevai WebSocket tunnel).

Sandboxes are made through neevai (Debian template) and reached through leap0 by the same id:
both dialects serve one engine.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

leap0 = pytest.importorskip("leap0")
from leap0 import Leap0Error, Leap0NotFoundError  # noqa: E402

from conftest import DEBIAN, unique_name  # noqa: E402


def l0(leap0_client, sb):
    return leap0_client.sandboxes.get(sb.id)


def recv_until(conn, needle: bytes, timeout: float = 15.0) -> bytes:
    """Reads a leap0 PtyConnection until `needle` shows up."""
    buf = b""
    deadline = time.monotonic() + timeout
    while needle not in buf:
        if time.monotonic() > deadline:
            raise AssertionError(f"{needle!r} not seen; got {buf[-400:]!r}")
        buf += conn.recv()
    return buf


def wait_for(pred, timeout: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# ---------------------------------------------------------------- leap0 terminals


def test_leap0_pty_size_resize_reattach_and_exit_status(make_sandbox, leap0_client):
    sb = l0(leap0_client, make_sandbox(DEBIAN))
    s = sb.pty.create(cols=100, rows=30, envs={"GREETING": "hi-there"})
    assert s.id and s.cols == 100 and s.rows == 30 and s.active
    assert s.envs == {"GREETING": "hi-there"}
    assert any(p.id == s.id for p in sb.pty.list())
    assert sb.pty.get(s.id).id == s.id
    url = sb.pty.websocket_url(s.id)
    assert url.startswith("ws://") and url.endswith(f"/pty/{s.id}/connect")

    conn = sb.pty.connect(s.id)
    conn.send("stty size; echo mark-$((6*7)) $GREETING\n")
    out = recv_until(conn, b"mark-42 hi-there")
    assert b"30 100" in out

    resized = sb.pty.resize(s.id, cols=120, rows=40)
    assert (resized.cols, resized.rows) == (120, 40)
    conn.send(b"stty size; echo again-$((1+1))\n")
    out = recv_until(conn, b"again-2")
    assert b"40 120" in out
    conn.close()

    # Reattach: the scrollback shows what the first client saw.
    conn = sb.pty.connect(s.id)
    assert b"mark-42" in recv_until(conn, b"mark-42")
    conn.send("exit 3\n")
    with pytest.raises(Exception):
        while True:
            conn.recv()
    wait_for(lambda: not sb.pty.get(s.id).active, what="session end")
    raw = leap0_client._transport.request_json("GET", f"/v1/sandbox/{sb.id}/pty/{s.id}")
    assert raw["exit_code"] == 3

    sb.pty.delete(s.id)
    assert all(p.id != s.id for p in sb.pty.list())
    with pytest.raises(Leap0NotFoundError):
        sb.pty.get(s.id)


def test_leap0_pty_named_lazy_sessions_and_errors(make_sandbox, leap0_client):
    sb = l0(leap0_client, make_sandbox(DEBIAN))
    s = sb.pty.create(session_id="build-shell", lazy_start=True, cwd="/tmp")
    assert s.id == "build-shell" and s.lazy_start and s.cwd == "/tmp"
    with pytest.raises(Leap0Error):
        sb.pty.create(session_id="build-shell")  # taken
    with pytest.raises(Leap0Error):
        sb.pty.create(cwd="/no/such/dir")
    conn = sb.pty.connect("build-shell")  # starts the shell now
    conn.send("pwd\n")
    recv_until(conn, b"/tmp\r\n")
    conn.close()
    with pytest.raises(Leap0Error):
        sb.pty.connect("nope")
    with pytest.raises(Leap0Error):
        sb.pty.resize("build-shell", cols=0, rows=10)
    sb.pty.delete("build-shell")


# ---------------------------------------------------------------- neevai terminals


def test_neevai_pty_size_resize_reattach_kill_wait(make_sandbox):
    sb = make_sandbox(DEBIAN)
    out = bytearray()
    h = sb.pty.create(cols=90, rows=20, on_data=out.extend)
    assert h.id
    h.send_input("stty size; echo m-$((6*7))\n")
    wait_for(lambda: b"m-42" in out, what="first output")
    assert b"20 90" in out
    h.resize(132, 43)
    h.send_input("stty size; echo r-$((2+3))\n")
    wait_for(lambda: b"r-5" in out, what="resized output")
    assert b"43 132" in out
    h.disconnect()
    h.wait()

    again = bytearray()
    h2 = sb.pty.create(id=h.id, on_data=again.extend)
    assert h2.id == h.id
    wait_for(lambda: b"m-42" in again, what="scrollback on reattach")
    # kill: SIGINT stops the foreground job, the shell lives on.
    h2.send_input('sleep 60; echo sl""ept\n')
    time.sleep(0.5)
    h2.kill("SIGINT")
    h2.send_input("echo alive-$((3+4))\n")
    wait_for(lambda: b"alive-7" in again, timeout=10, what="shell after SIGINT")
    assert b"slept" not in again
    h2.send_input("exit 7\n")
    assert h2.wait() == 7

    h3 = sb.pty.create(program="sh", args=["-c", "exit 4"])
    assert h3.wait() == 4
    h4 = sb.pty.create(program="sleep", args=["60"])
    h4.kill("SIGTERM")
    assert h4.wait() == 128 + 15


# ---------------------------------------------------------------- code interpreter


def test_code_interpreter_contexts_values_errors_streams_timeouts(make_sandbox, leap0_client):
    sb = l0(leap0_client, make_sandbox(DEBIAN))
    ci = sb.code_interpreter
    assert ci.health() is True
    a = ci.create_context()
    b = ci.create_context(cwd="/tmp")
    assert a.id != b.id and b.cwd == "/tmp" and a.language == "python"
    assert {a.id, b.id} <= {c.id for c in ci.list_contexts()}
    assert ci.get_context(b.id).id == b.id

    assert ci.execute(code="x = 41", context_id=a.id).error is None
    r = ci.execute(code="x + 1", context_id=a.id)
    assert r.main_text == "42" and r.items[0].is_primary
    r = ci.execute(code="print('hello'); import sys; print('oops', file=sys.stderr)", context_id=a.id)
    assert "".join(r.logs.stdout) == "hello\n" and "oops" in "".join(r.logs.stderr)
    # Two contexts are independent.
    r = ci.execute(code="x", context_id=b.id)
    assert r.error is not None and r.error.name == "NameError"
    # An exception comes back with its traceback.
    r = ci.execute(code="def f():\n    return 1/0\nf()", context_id=a.id)
    assert r.error.name == "ZeroDivisionError"
    assert "Traceback" in r.error.traceback and "1/0" in r.error.traceback
    # Rich results: an object's _repr_html_ / _repr_png_.
    r = ci.execute(
        code="class R:\n    def _repr_html_(self): return '<b>bold</b>'\n"
             "    def _repr_png_(self): return b'\\x89PNG fake'\nR()",
        context_id=a.id,
    )
    assert r.items[0].html == "<b>bold</b>" and r.items[0].png_bytes() == b"\x89PNG fake"

    # Streams output before the code finishes.
    code = "import time\nfor i in range(3):\n    print('tick', i, flush=True)\n    time.sleep(0.6)"
    t0 = time.monotonic()
    seen = []
    for ev in ci.execute_stream(code=code, context_id=a.id):
        seen.append((time.monotonic() - t0, ev))
    ticks = [(t, e) for t, e in seen if e.type == "stdout" and "tick" in e.data]
    assert len(ticks) == 3
    assert ticks[0][0] < 1.0 and ticks[-1][0] > 1.0  # the first came well before the end
    assert seen[-1][1].type == "exit" and seen[-1][1].code == 0

    # A timeout interrupts the code, not the context.
    r = ci.execute(code="import time\ntime.sleep(30)", context_id=a.id, timeout_ms=500)
    assert r.error is not None and r.error.name == "KeyboardInterrupt"
    assert ci.execute(code="x", context_id=a.id).main_text == "41"

    with pytest.raises(Leap0Error):
        ci.create_context(language="cobol")
    ci.delete_context(b.id)
    assert b.id not in {c.id for c in ci.list_contexts()}
    with pytest.raises(Leap0Error):
        ci.execute(code="1", context_id=b.id)


def test_code_interpreter_state_survives_fork_and_pause(make_sandbox, sandbox_factory, leap0_client):
    nsb = make_sandbox(DEBIAN)
    sb = l0(leap0_client, nsb)
    ctx = sb.code_interpreter.create_context()
    sb.code_interpreter.execute(code="x = 'kept'", context_id=ctx.id)
    fork = sandbox_factory.track(nsb.fork(unique_name("fork")))
    fork.wait_until_ready(timeout_ms=60_000, poll_interval_ms=100)
    for s in (sb, leap0_client.sandboxes.get(fork.id)):
        assert s.code_interpreter.execute(code="x", context_id=ctx.id).main_text == "'kept'"
    # The copies are independent afterwards.
    leap0_client.sandboxes.get(fork.id).code_interpreter.execute(code="x = 'fork'", context_id=ctx.id)
    assert sb.code_interpreter.execute(code="x", context_id=ctx.id).main_text == "'kept'"
    nsb.pause()
    nsb.resume()
    assert sb.code_interpreter.execute(code="x", context_id=ctx.id).main_text == "'kept'"


def test_invoke_url_and_websocket_url_reach_a_sandbox_port(make_sandbox, leap0_client, sandboxd):
    import httpx

    nsb = make_sandbox(DEBIAN)
    sb = l0(leap0_client, nsb)
    sb.process.execute(command="mkdir -p /srv && echo served-file > /srv/hello.txt")
    nsb.processes.start(["python3", "-m", "http.server", "8000", "--directory", "/srv"])
    url = sb.invoke_url("/hello.txt", port=8000)
    assert url.startswith(f"https://{sb.id}-8000.")
    ws = sb.websocket_url("/x", port=8000)
    assert ws.startswith(f"wss://{sb.id}-8000.")
    auth = {"Authorization": f"Bearer {sandboxd.api_key}"}
    import ssl

    with httpx.Client(verify=ssl.create_default_context(cafile=str(sandboxd.ca_file))) as h:
        deadline = time.monotonic() + 15
        while True:
            r = h.get(url, headers=auth)
            if r.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert r.status_code == 200 and r.text == "served-file\n"
        assert h.get(url).status_code == 401  # the API key is required
        other = url.replace(sb.id, "00000000-0000-4000-8000-000000000000")
        assert h.get(other, headers=auth).status_code == 404


# ---------------------------------------------------------------- SSH


def _ssh_tools():
    missing = [t for t in ("ssh", "scp", "sftp", "sshpass", "rsync") if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing on this host: {missing} (scripts/setup-system installs them)")


SSH_OPTS = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=10"]


def _run(args, password=None, input=None, timeout=60):
    env = dict(os.environ)
    if password is not None:
        env["SSHPASS"] = password
        args = ["sshpass", "-e", *args]
    return subprocess.run(args, input=input, capture_output=True, timeout=timeout, env=env)


def refused(r) -> bool:
    """sshpass exits 5 on a refused password (ssh itself 255)."""
    return r.returncode in (5, 255) and b"Permission denied" in r.stderr


def test_leap0_ssh_access_ssh_scp_sftp_shell_and_revocation(make_sandbox, leap0_client, sandboxd):
    _ssh_tools()
    sb = l0(leap0_client, make_sandbox(DEBIAN))
    acc = sb.ssh.create_access()
    assert acc.id and len(acc.password) >= 16 and acc.sandbox_id == sb.id
    assert acc.ssh_command == f"ssh -p {sandboxd.ssh_port} {acc.id}@127.0.0.1"
    assert sb.ssh.validate_access(id=acc.id, password=acc.password).valid
    assert not sb.ssh.validate_access(id=acc.id, password="wrong").valid

    base = shlex.split(acc.ssh_command)
    ssh = [base[0], *SSH_OPTS, *base[1:]]
    r = _run([*ssh, "uname -a; echo rc-test; exit 3"], acc.password)
    assert r.returncode == 3, r.stderr
    assert b"Linux" in r.stdout and b"rc-test" in r.stdout

    with tempfile.TemporaryDirectory() as d:
        local = Path(d) / "up.bin"
        local.write_bytes(os.urandom(300_000))
        port = str(sandboxd.ssh_port)
        scp = ["scp", *SSH_OPTS, "-P", port]
        r = _run([*scp, str(local), f"{acc.id}@127.0.0.1:/tmp/up.bin"], acc.password)
        assert r.returncode == 0, r.stderr
        r = _run([*scp, f"{acc.id}@127.0.0.1:/tmp/up.bin", str(Path(d) / "down.bin")], acc.password)
        assert r.returncode == 0, r.stderr
        assert (Path(d) / "down.bin").read_bytes() == local.read_bytes()
        batch = Path(d) / "batch"
        batch.write_text(f"put {local} /tmp/sftp.bin\nget /tmp/sftp.bin {d}/sftp-back.bin\n")
        r = _run(["sftp", *SSH_OPTS, "-o", "BatchMode=no", "-P", port, "-b", str(batch), f"{acc.id}@127.0.0.1"],
                 acc.password)
        assert r.returncode == 0, r.stderr
        assert (Path(d) / "sftp-back.bin").read_bytes() == local.read_bytes()

        # rsync over the gateway (exec channel, rsync on both ends).
        rsh = " ".join(["ssh", *SSH_OPTS, "-p", port])
        r = _run(["rsync", "-e", rsh, str(local), f"{acc.id}@127.0.0.1:/tmp/rsynced.bin"],
                 acc.password)
        assert r.returncode == 0, r.stderr
        r = _run([*ssh, "sha256sum /tmp/rsynced.bin"], acc.password)
        import hashlib

        assert hashlib.sha256(local.read_bytes()).hexdigest().encode() in r.stdout

    # An interactive shell on a terminal.
    r = _run([*ssh, "-tt"], acc.password, input=b"echo shell-$((20+22)); tty; exit\n")
    assert b"shell-42" in r.stdout and b"/dev/pts/" in r.stdout

    # A wrong password is refused.
    assert refused(_run([*ssh, "true"], "not-the-password"))

    # Regenerating invalidates the old password; deleting stops logins at once.
    new = sb.ssh.regenerate_access(id=acc.id)
    assert new.id == acc.id and new.password != acc.password
    assert refused(_run([*ssh, "true"], acc.password))
    assert _run([*ssh, "true"], new.password).returncode == 0
    sb.ssh.delete_access(id=acc.id)
    assert refused(_run([*ssh, "true"], new.password))
    with pytest.raises(Leap0NotFoundError):
        sb.ssh.validate_access(id=acc.id, password=new.password)


def test_neevai_ssh_tunnel_runs_commands_and_copies_files(make_sandbox):
    _ssh_tools()
    sb = make_sandbox(DEBIAN)
    with sb.ssh() as tunnel:
        ssh = ["ssh", *SSH_OPTS, "-p", str(tunnel.port), f"root@{tunnel.host}"]
        r = _run([*ssh, "uname -a"])
        assert r.returncode == 0, r.stderr
        assert b"Linux" in r.stdout
        with tempfile.TemporaryDirectory() as d:
            local = Path(d) / "f.txt"
            local.write_text("through the tunnel\n")
            scp = ["scp", *SSH_OPTS, "-P", str(tunnel.port)]
            assert _run([*scp, str(local), f"root@{tunnel.host}:/tmp/f.txt"]).returncode == 0
            assert _run([*scp, f"root@{tunnel.host}:/tmp/f.txt", f"{d}/back.txt"]).returncode == 0
            assert Path(d, "back.txt").read_text() == "through the tunnel\n"
        r = _run([*ssh, "-tt"], input=b"echo tunnel-$((1+2)); exit\n")
        assert b"tunnel-3" in r.stdout
    # Closed: nothing listens any more.
    r = _run(["ssh", *SSH_OPTS, "-p", str(tunnel.port), "root@127.0.0.1", "true"], timeout=20)
    assert r.returncode == 255


def test_pty_session_survives_fork_and_pause(make_sandbox, sandbox_factory, leap0_client):
    """A terminal and its scrollback are restored with the sandbox's memory: after a fork the
    copy has the session (reattach by id sees the earlier screen); after pause/resume the
    shell is still there."""
    nsb = make_sandbox(DEBIAN)
    sb = l0(leap0_client, nsb)
    s = sb.pty.create(session_id="keep-me")
    conn = sb.pty.connect(s.id)
    conn.send("echo before-$((40+2))\n")
    recv_until(conn, b"before-42")
    conn.close()

    fork = sandbox_factory.track(nsb.fork(unique_name("ptyfork")))
    fork.wait_until_ready(timeout_ms=60_000, poll_interval_ms=100)
    fsb = leap0_client.sandboxes.get(fork.id)
    assert any(p.id == "keep-me" for p in fsb.pty.list())
    c2 = fsb.pty.connect("keep-me")
    recv_until(c2, b"before-42")  # the scrollback came along
    c2.send("echo in-fork-$((1+1))\n")
    recv_until(c2, b"in-fork-2")
    c2.close()

    nsb.pause()
    nsb.resume()
    c3 = sb.pty.connect("keep-me")
    c3.send("echo after-resume-$((3+3))\n")
    recv_until(c3, b"after-resume-6")
    c3.close()
