"""Behavioural compatibility tests: the official `neevai` SDK against sandboxd.

Wire protocol reference: docs/compat/neevai.md. Tests marked xfail document
server bugs (strict: they start failing loudly once the server is fixed).
"""

from __future__ import annotations

import hashlib
import os
import time
from datetime import datetime, timedelta, timezone

import pytest

import neevai
from conftest import BUSYBOX, DEBIAN, ORG, PROJECT, unique_name

SANDBOXES = f"/api/v1beta1/orgs/{ORG}/projects/{PROJECT}/sandboxes"


def collect_follow(proc) -> tuple[str, str, int | None, list[str]]:
    """Iterates follow() until the exit event; returns stdout, stderr, exit code, event types."""
    out, err, code, types = [], [], None, []
    for ev in proc.follow():
        types.append(ev["type"])
        if ev["type"] == "stdout":
            out.append(ev["data"])
        elif ev["type"] == "stderr":
            err.append(ev["data"])
        elif ev["type"] == "exit":
            code = ev["exit_code"]
            break
    return "".join(out), "".join(err), code, types


def logs_text(page) -> tuple[str, str]:
    out = "".join(e.data for e in page.entries if e.stream == "stdout")
    err = "".join(e.data for e in page.entries if e.stream == "stderr")
    return out, err


# --------------------------------------------------------------------------------------
# Sandbox lifecycle + processes on busybox (the brief's end-to-end scenario)
# --------------------------------------------------------------------------------------


def test_busybox_start_follow_wait_delete(client, sandbox_factory):
    name = unique_name()
    sb = sandbox_factory.create(BUSYBOX, name=name, wait=False)
    assert sb.name == name
    assert sb.data["sandbox_template_id"] == BUSYBOX
    assert sb.data["org_id"] == ORG and sb.data["project_id"] == PROJECT
    sb.wait_until_ready(timeout_ms=60_000, poll_interval_ms=100)
    assert sb.phase == "Ready"
    assert sb.replicas == 1
    assert sb.addressable is True
    assert sb.connect_url

    proc = sb.processes.start(["sh", "-c", "echo hi; exit 3"])
    assert proc.id
    assert proc.state in ("running", "exited")

    stdout, stderr, code, types = collect_follow(proc)
    assert code == 3
    assert stdout == "hi\n"
    assert stderr == ""
    assert types[-1] == "exit"

    status = proc.wait()
    assert status.state == "exited"
    assert status.exit_code == 3
    assert status.process_id == proc.id
    assert proc.exit_code == 3  # handle caches the waited status

    sb.delete()
    with pytest.raises(neevai.NotFoundError) as ei:
        client.sandboxes.get(sb.id)
    assert ei.value.status_code == 404
    assert ei.value.code == "not_found"
    with pytest.raises(neevai.NotFoundError):
        client.sandboxes.get(name)
    # Deleting again is a 404 too.
    with pytest.raises(neevai.NotFoundError):
        client.sandboxes.delete(sb.id)
    assert sb.id not in [s.id for s in client.sandboxes.list(limit=100).items]


def test_create_with_env_and_resources(make_sandbox):
    sb = make_sandbox(BUSYBOX, env=[{"name": "GREETING", "value": "hello there"}],
                      resources={"cpu": 1, "memory_gb": 2})
    assert sb.data["resources"]["memory_gb"] == 2
    assert sb.data["resources"]["cpu"] == 1.0
    r = sb.exec('echo "$GREETING"')
    assert (r.stdout, r.exit_code) == ("hello there\n", 0)


def test_follow_streams_live_output(busybox):
    proc = busybox.processes.start(["sh", "-c", "echo one; sleep 1; echo two >&2; echo three"])
    t0 = time.monotonic()
    stdout, stderr, code, types = collect_follow(proc)
    assert time.monotonic() - t0 >= 0.8, "follow returned before the process finished"
    assert (stdout, stderr, code) == ("one\nthree\n", "two\n", 0)
    assert types[-1] == "exit"


def test_follow_from_cursor_replays_tail(busybox):
    proc = busybox.processes.start(["sh", "-c", "echo a; sleep 0.2; echo b >&2; sleep 0.2; echo c"])
    assert proc.wait().exit_code == 0
    events = list(proc.follow(cursor=1))
    assert events == [
        {"type": "stderr", "data": "b\n"},
        {"type": "stdout", "data": "c\n"},
        {"type": "exit", "exit_code": 0},
    ]


def test_process_start_shell_string_env_cwd(busybox):
    p = busybox.processes.start("echo a b | tr a-z A-Z")
    assert p.wait().exit_code == 0
    assert logs_text(p.logs()) == ("A B\n", "")

    p = busybox.processes.start(["sh", "-c", 'echo "$X"; pwd'], env={"X": "y z"}, cwd="/tmp")
    assert p.wait().exit_code == 0
    assert logs_text(p.logs()) == ("y z\n/tmp\n", "")


def test_process_stdin(busybox):
    p = busybox.processes.start(["cat"], stdin="fed via stdin\n")
    assert p.wait().exit_code == 0
    assert logs_text(p.logs()) == ("fed via stdin\n", "")


def test_processes_list_and_kill(busybox):
    p = busybox.processes.start(["sleep", "100"])
    try:
        assert p.state == "running"
        listed = {i.process_id: i for i in busybox.processes.list()}
        assert p.id in listed
        info = listed[p.id]
        assert info.state == "running"
        assert info.exit_code is None
        assert info.name == "sleep"
        assert info.args == ["100"]
        assert p.status().state == "running"

        assert p.kill() is True  # SIGTERM by default
        st = p.wait()
        assert st.state == "exited"
        assert st.exit_code == 128 + 15
        listed = {i.process_id: i for i in busybox.processes.list()}
        assert listed[p.id].state == "exited"
        # Signalling an exited process signals nothing.
        assert p.kill() is False
    finally:
        busybox.processes.kill(p.id, signal=9)


def test_process_kill_with_signal(busybox):
    p = busybox.processes.start(["sleep", "100"])
    assert busybox.processes.kill(p.id, signal=9) is True
    st = p.wait()
    assert (st.state, st.exit_code) == ("exited", 128 + 9)


def test_processes_kill_all(make_sandbox):
    sb = make_sandbox(BUSYBOX)
    procs = [sb.processes.start(["sleep", "100"]) for _ in range(3)]
    done = sb.processes.start(["true"])
    done.wait()
    assert all(p.status().state == "running" for p in procs)
    assert sb.processes.kill_all(signal=9) == 3
    for p in procs:
        st = p.wait()
        assert (st.state, st.exit_code) == ("exited", 137)
    assert all(i.state == "exited" for i in sb.processes.list())
    assert sb.processes.kill_all() == 0


def test_process_logs_poll_mode(busybox):
    p = busybox.processes.start(["sh", "-c", "echo a; sleep 0.2; echo b >&2; sleep 0.2; echo c"])
    p.wait()
    page = p.logs()
    assert [(e.stream, e.data) for e in page.entries] == [
        ("stdout", "a\n"), ("stderr", "b\n"), ("stdout", "c\n")]
    assert page.state == "exited"
    assert page.dropped is False
    # The returned cursor resumes after everything already read.
    rest = p.logs(cursor=page.cursor)
    assert rest.entries == []
    assert rest.cursor == page.cursor
    assert rest.state == "exited"
    # A cursor in the middle replays only the tail.
    tail = busybox.processes.logs(p.id, cursor=1)
    assert [(e.stream, e.data) for e in tail.entries] == [("stderr", "b\n"), ("stdout", "c\n")]


def test_process_logs_of_running_process(busybox):
    p = busybox.processes.start(["sh", "-c", "echo started; sleep 100"])
    try:
        deadline = time.monotonic() + 10
        page = p.logs()
        while not page.entries and time.monotonic() < deadline:
            time.sleep(0.05)
            page = p.logs()
        assert page.state == "running"
        assert logs_text(page) == ("started\n", "")
    finally:
        p.kill(signal=9)


def test_unknown_process_is_not_found(busybox):
    with pytest.raises(neevai.NotFoundError) as ei:
        busybox.processes.get("no-such-process")
    assert ei.value.code == "not_found"
    with pytest.raises(neevai.NotFoundError):
        busybox.processes.logs("no-such-process")
    with pytest.raises(neevai.NotFoundError):
        busybox.processes.kill("no-such-process")


# --------------------------------------------------------------------------------------
# exec on Debian
# --------------------------------------------------------------------------------------


def test_exec_shell_string(debian):
    r = debian.exec("python3 -c 'print(6*7)'")
    assert (r.stdout, r.stderr, r.exit_code) == ("42\n", "", 0)


def test_exec_argv_env_cwd(debian):
    r = debian.exec(["sh", "-c", "echo $FOO; pwd"], env={"FOO": "bar"}, cwd="/tmp")
    assert (r.stdout, r.stderr, r.exit_code) == ("bar\n/tmp\n", "", 0)


def test_exec_argv_is_not_shell_split(debian):
    r = debian.exec(["python3", "-c", "import sys; print(sys.argv[1:])", "a b", "$HOME", "*"])
    assert r.stdout == "['a b', '$HOME', '*']\n"
    r = debian.exec("echo", args=["x  y"])
    assert r.stdout == "x  y\n"


def test_exec_default_cwd_is_workspace(debian):
    assert debian.exec("pwd").stdout == "/workspace\n"


def test_exec_failure_exit_code_and_stderr(debian):
    r = debian.exec("echo partial; echo 'something broke' >&2; exit 7")
    assert (r.stdout, r.stderr, r.exit_code) == ("partial\n", "something broke\n", 7)
    r = debian.exec(["python3", "-c", "import sys; sys.exit('fatal: bad input')"])
    assert (r.stdout, r.stderr, r.exit_code) == ("", "fatal: bad input\n", 1)


def test_exec_missing_program(debian):
    r = debian.exec("definitely-not-a-program --flag")
    assert r.exit_code == 127
    assert "not found" in r.stderr


def test_exec_stdin(debian):
    r = debian.exec(["python3", "-c", "import sys; print(sys.stdin.read().upper(), end='')"],
                    stdin="shout\n")
    assert (r.stdout, r.exit_code) == ("SHOUT\n", 0)


def test_exec_utf8_and_binary_safe_output(debian):
    r = debian.exec(["python3", "-c",
                     "import sys; sys.stdout.buffer.write('h\u00e9llo \u2713 \U0001F600\\n'.encode())"])
    assert r.stdout == "h\u00e9llo \u2713 \U0001F600\n"


def test_exec_large_output(debian):
    r = debian.exec(["python3", "-c", "print('x' * 999); print('y' * 300000)"])
    assert r.exit_code == 0
    assert r.stdout == "x" * 999 + "\n" + "y" * 300000 + "\n"


def test_exec_stream_events(debian):
    events = list(debian.exec_stream(["sh", "-c", "echo out; echo err >&2; exit 5"]))
    assert events[-1] == {"type": "exit", "exit_code": 5}
    assert [e["type"] for e in events].count("exit") == 1
    assert "".join(e["data"] for e in events if e["type"] == "stdout") == "out\n"
    assert "".join(e["data"] for e in events if e["type"] == "stderr") == "err\n"


def test_exec_timeout(debian):
    t0 = time.monotonic()
    with pytest.raises(neevai.DeadlineExceededError) as ei:
        debian.exec("sleep 30", timeout_ms=500)
    assert time.monotonic() - t0 < 10
    assert ei.value.code == "deadline_exceeded"


# --------------------------------------------------------------------------------------
# files on Debian
# --------------------------------------------------------------------------------------


def test_files_text_roundtrip(debian, workdir):
    path = f"{workdir}/notes.txt"
    assert debian.files.write(path, "hello world\n") == {"bytes_written": 12}
    assert debian.files.read_text(path) == "hello world\n"
    assert debian.files.read(path) == b"hello world\n"
    assert debian.exec(["cat", path]).stdout == "hello world\n"
    # Overwrite truncates.
    debian.files.write(path, "hi")
    assert debian.files.read(path) == b"hi"
    # Unicode text is written as UTF-8.
    debian.files.write(path, "\u00e9\u2713")
    assert debian.files.read(path) == "\u00e9\u2713".encode()
    # Empty file.
    assert debian.files.write(f"{workdir}/empty", b"") == {"bytes_written": 0}
    assert debian.files.read(f"{workdir}/empty") == b""


def test_files_binary_roundtrip(debian, workdir):
    data = bytes(range(256))
    path = f"{workdir}/all-bytes.bin"
    assert debian.files.write(path, data) == {"bytes_written": 256}
    assert debian.files.read(path) == data
    r = debian.exec(["python3", "-c",
                     f"d=open('{path}','rb').read(); print(len(d), d == bytes(range(256)))"])
    assert r.stdout == "256 True\n"


def test_files_write_over_1mib(debian, workdir):
    # > SINGLE_WRITE_MAX_BYTES: the SDK tries tus (/v1/files/uploads), gets a bare 404
    # and falls back to a single /v1/files/write with the whole content.
    data = os.urandom((3 << 19) + 7)  # 1.5 MiB + 7
    path = f"{workdir}/big.bin"
    assert debian.files.write(path, data) == {"bytes_written": len(data)}
    assert debian.files.read(path) == data
    r = debian.exec(["python3", "-c",
                     f"import hashlib; print(hashlib.sha256(open('{path}','rb').read()).hexdigest())"])
    assert r.stdout.strip() == hashlib.sha256(data).hexdigest()
    assert debian.files.stat(path).size == len(data)


def test_files_upload_and_download(debian, workdir, tmp_path):
    data = os.urandom(70 * 1024 + 3)
    path = f"{workdir}/up.bin"
    assert debian.files.upload(path, data, chunk_size=64 * 1024) == {"bytes_written": len(data)}
    assert debian.files.read(path) == data
    local = tmp_path / "down.bin"
    assert debian.files.download_file(path, local) == {"bytes_written": len(data)}
    assert local.read_bytes() == data


def test_files_write_with_cwd_and_absolute_path(debian, workdir):
    debian.files.write("cwd.txt", "via cwd", cwd=f"/workspace/{workdir}")
    assert debian.exec(["cat", f"/workspace/{workdir}/cwd.txt"]).stdout == "via cwd"
    assert debian.files.read("cwd.txt", cwd=f"/workspace/{workdir}") == b"via cwd"
    debian.files.write(f"/workspace/{workdir}/abs.txt", "absolute")
    assert debian.files.read(f"{workdir}/abs.txt") == b"absolute"


def test_files_stat_exists_list(debian, workdir):
    debian.files.write(f"{workdir}/a.txt", "12345")
    debian.exec(["chmod", "600", f"{workdir}/a.txt"])
    entry = debian.files.stat(f"{workdir}/a.txt")
    assert entry.name == "a.txt"
    assert entry.type == "file"
    assert entry.path == f"/workspace/{workdir}/a.txt"
    assert entry.size == 5
    assert entry.mode & 0o777 == 0o600
    assert entry.permissions == "-rw-------"
    mtime = datetime.fromisoformat(entry.modified_time.replace("Z", "+00:00"))
    assert abs((datetime.now(timezone.utc) - mtime).total_seconds()) < 300

    assert debian.files.exists(f"{workdir}/a.txt") is True
    assert debian.files.exists(f"{workdir}/missing.txt") is False

    debian.files.mkdir(f"{workdir}/sub")
    debian.files.write(f"{workdir}/sub/b.txt", "b")
    flat = {e.name: e for e in debian.files.list(workdir)}
    assert set(flat) == {"a.txt", "sub"}
    assert flat["sub"].type == "directory"
    assert flat["a.txt"].size == 5
    deep = {e.path for e in debian.files.list(workdir, recursive=True)}
    base = f"/workspace/{workdir}"
    assert deep == {f"{base}/a.txt", f"{base}/sub", f"{base}/sub/b.txt"}

    debian.exec(["ln", "-s", "a.txt", f"{workdir}/link"])
    link = {e.name: e for e in debian.files.list(workdir)}["link"]
    assert link.type == "symlink"
    assert link.symlink_target == "a.txt"


def test_files_mkdir_move_remove(debian, workdir):
    d = debian.files.mkdir(f"{workdir}/x/y/z")  # creates parents
    assert d.type == "directory"
    assert d.name == "z"
    assert d.path == f"/workspace/{workdir}/x/y/z"
    assert debian.files.exists(f"{workdir}/x/y") is True
    debian.files.mkdir(f"{workdir}/x/y/z")  # idempotent, like mkdir -p

    debian.files.write(f"{workdir}/x/y/z/f.txt", "payload")
    moved = debian.files.move(f"{workdir}/x/y/z/f.txt", f"{workdir}/x/g.txt")
    assert moved.type == "file"
    assert moved.name == "g.txt"
    assert moved.path == f"/workspace/{workdir}/x/g.txt"
    assert moved.size == 7
    assert debian.files.exists(f"{workdir}/x/y/z/f.txt") is False
    assert debian.files.read(f"{workdir}/x/g.txt") == b"payload"

    # Non-recursive remove of a non-empty directory is refused and removes nothing.
    with pytest.raises(neevai.APIError) as ei:
        debian.files.remove(f"{workdir}/x")
    assert 400 <= ei.value.status_code < 500
    assert debian.files.exists(f"{workdir}/x/g.txt") is True

    debian.files.remove(f"{workdir}/x/g.txt")
    assert debian.files.exists(f"{workdir}/x/g.txt") is False
    debian.files.remove(f"{workdir}/x", recursive=True)
    assert debian.files.exists(f"{workdir}/x") is False


def test_files_missing_paths_are_not_found(debian, workdir):
    for call in (lambda: debian.files.read(f"{workdir}/nope"),
                 lambda: debian.files.stat(f"{workdir}/nope"),
                 lambda: debian.files.list(f"{workdir}/nope"),
                 lambda: debian.files.move(f"{workdir}/nope", f"{workdir}/other")):
        with pytest.raises(neevai.NotFoundError) as ei:
            call()
        assert ei.value.code == "not_found"


# --------------------------------------------------------------------------------------
# control plane
# --------------------------------------------------------------------------------------


def test_templates(client):
    page = client.templates.list()
    ids = {t.id for t in page.items}
    assert {BUSYBOX, DEBIAN} <= ids
    assert page.total >= 2 and page.page == 1 and page.limit >= len(page.items)
    t = client.templates.get(DEBIAN)
    assert t.id == DEBIAN
    assert "python" in (t.description or "").lower()
    assert t.status.value == "active"
    with pytest.raises(neevai.NotFoundError):
        client.templates.get("sb-no-such-template")


def test_list_sandboxes_pagination_and_filters(client, make_sandbox):
    prefix = unique_name("sdk-list")
    a = make_sandbox(BUSYBOX, name=f"{prefix}-a")
    b = make_sandbox(BUSYBOX, name=f"{prefix}-b")

    everything = client.sandboxes.list(limit=100)
    assert {a.id, b.id} <= {s.id for s in everything.items}
    assert everything.total == len(everything.items)
    assert everything.page == 1 and everything.limit == 100

    p1 = client.sandboxes.list(page=1, limit=1)
    p2 = client.sandboxes.list(page=2, limit=1)
    assert (p1.page, p1.limit, p2.page, p2.limit) == (1, 1, 2, 1)
    assert len(p1.items) == 1 and len(p2.items) == 1
    assert p1.total == p2.total == everything.total
    assert p1.items[0].id != p2.items[0].id
    beyond = client.sandboxes.list(page=everything.total + 1, limit=1)
    assert beyond.items == [] and beyond.total == everything.total

    by_name = client.sandboxes.list(name=a.name)
    assert [s.id for s in by_name.items] == [a.id] and by_name.total == 1

    by_id = client.sandboxes.list(sandbox_id=b.id)
    assert [s.id for s in by_id.items] == [b.id] and by_id.total == 1

    ready = {s.id for s in client.sandboxes.list(status="Ready", limit=100).items}
    assert {a.id, b.id} <= ready
    assert [s.id for s in client.sandboxes.list(status="Ready", name=b.name).items] == [b.id]
    paused = client.sandboxes.list(status="Paused", name=a.name)
    assert paused.items == [] and paused.total == 0

    # get by id and by name return the same record; refresh() re-reads it.
    assert client.sandboxes.get(a.name).id == a.id
    assert client.sandboxes.get(a.id).name == a.name
    assert a.refresh().phase == "Ready"


def test_list_name_filter_is_case_insensitive_substring(client, make_sandbox):
    prefix = unique_name("sdk-sub")
    a = make_sandbox(BUSYBOX, name=f"{prefix}-a")
    b = make_sandbox(BUSYBOX, name=f"{prefix}-b")
    page = client.sandboxes.list(name=prefix.upper())
    assert sorted(s.id for s in page.items) == sorted([a.id, b.id])
    assert page.total == 2


def test_keepalive(make_sandbox):
    sb = make_sandbox(BUSYBOX)
    before = sb.data["updated_at"]
    same = sb.keepalive()
    assert same.id == sb.id
    assert same.phase == "Ready"
    assert same.data["updated_at"] >= before
    # The handle still works afterwards.
    assert sb.exec("echo alive").stdout == "alive\n"


def test_update_idle_timeout(make_sandbox):
    sb = make_sandbox(BUSYBOX)
    updated = sb.update_timeout({"idle_timeout_seconds": 600})
    assert updated.id == sb.id
    assert updated.data["idle_timeout_seconds"] == 600
    assert sb.refresh().data["idle_timeout_seconds"] == 600
    # {} changes nothing.
    assert sb.update_timeout({}).data["idle_timeout_seconds"] == 600
    # 0 turns the window off.
    assert sb.update_timeout({"idle_timeout_seconds": 0}).data["idle_timeout_seconds"] in (0, None)
    assert sb.phase == "Ready"


def test_create_with_lifecycle_idle_timeout(make_sandbox):
    sb = make_sandbox(BUSYBOX, lifecycle={"idle_timeout_seconds": 900})
    assert sb.data["idle_timeout_seconds"] == 900


@pytest.mark.parametrize("field,value", [
    ("max_lifetime_seconds", 3600),
    ("paused_retention_seconds", 7200),
    ("on_idle", "delete"),
])
def test_update_timeout_other_windows(make_sandbox, field, value):
    sb = make_sandbox(BUSYBOX)
    raw = sb.sandboxes._client.raw.request("PUT", f"{SANDBOXES}/{sb.id}/timeout",
                                           body={field: value})
    assert raw.get(field) == value


def test_idle_expiry_reported_and_extended_by_keepalive(make_sandbox):
    sb = make_sandbox(BUSYBOX)
    sb.update_timeout({"idle_timeout_seconds": 600})
    # `data` is the raw JSON record: timestamps are RFC 3339 strings.
    first = sb.refresh().data["idle_expires_at"]
    assert first is not None
    first = datetime.fromisoformat(first)
    assert timedelta(seconds=590) < first - datetime.now(timezone.utc) <= timedelta(seconds=600)
    time.sleep(1.1)
    assert datetime.fromisoformat(sb.keepalive().data["idle_expires_at"]) > first


def test_idle_timeout_is_enforced(client, make_sandbox):
    sb = make_sandbox(BUSYBOX)
    sb.update_timeout({"idle_timeout_seconds": 1})
    deadline = time.monotonic() + 6
    phase = "Ready"
    while time.monotonic() < deadline and phase == "Ready":
        time.sleep(0.5)
        try:
            phase = client.sandboxes.get(sb.id).phase
        except neevai.NotFoundError:
            phase = "<deleted>"
    assert phase in ("Pausing", "Paused", "<deleted>")


def _fresh_audited_sandbox(make_sandbox):
    sb = make_sandbox(BUSYBOX)
    assert sb.exec(["echo", "first-secret-arg"]).exit_code == 0
    assert sb.exec("exit 4").exit_code == 4
    sb.files.write("audited.txt", "x")
    p = sb.processes.start(["sleep", "100"])
    p.kill(signal=9)
    p.wait()
    return sb


def test_audit_records_execs(make_sandbox):
    t0 = datetime.now(timezone.utc) - timedelta(seconds=5)
    sb = _fresh_audited_sandbox(make_sandbox)
    trail = sb.audit()
    assert str(trail.sandbox_id) == sb.id
    assert trail.retention_days >= 1
    assert trail.from_ <= t0 <= trail.to
    tools = [r.tool for r in trail.records]
    assert tools.count("exec") == 2, tools
    assert any(r.tool == "files.write" and r.target.endswith("audited.txt")
               for r in trail.records), tools
    assert any(r.tool == "processes.start" for r in trail.records), tools
    assert any(r.tool == "processes.kill" for r in trail.records), tools
    for r in trail.records:
        assert t0 <= r.at <= datetime.now(timezone.utc) + timedelta(seconds=5)
        assert r.outcome.value in ("success", "error")
        assert r.id
    assert len({r.id for r in trail.records}) == len(trail.records)
    # A failed file operation is recorded as an error.
    with pytest.raises(neevai.NotFoundError):
        sb.files.read("missing.txt")
    errs = [r for r in sb.audit().records if r.outcome.value == "error"]
    assert any(r.tool == "files.read" and r.reason_code == "not_found" for r in errs)
    # A window in the past holds nothing.
    old = sb.audit(from_=(t0 - timedelta(hours=2)).isoformat(),
                   to=(t0 - timedelta(hours=1)).isoformat())
    assert old.records == []


def test_audit_pagination(make_sandbox):
    sb = _fresh_audited_sandbox(make_sandbox)
    full = sb.audit(limit=1000)
    assert full.next_cursor is None
    ids, cursor, pages = [], None, 0
    while True:
        page = sb.audit(limit=2, cursor=cursor)
        pages += 1
        assert len(page.records) <= 2
        ids += [r.id for r in page.records]
        cursor = page.next_cursor
        if cursor is None:
            break
        assert pages < 50
    assert len(full.records) >= 5
    assert ids == [r.id for r in full.records]  # same records, same order, no duplicates
    assert pages >= len(full.records) // 2


def test_audit_newest_first(make_sandbox):
    sb = _fresh_audited_sandbox(make_sandbox)
    records = sb.audit().records
    assert len(records) >= 3
    ats = [r.at for r in records]
    assert ats == sorted(ats, reverse=True)


def test_audit_window_truncated_semantics(make_sandbox):
    sb = _fresh_audited_sandbox(make_sandbox)
    assert sb.audit(limit=1).window_truncated is False  # default window = last 24 h
    week_ago = (datetime.now(timezone.utc) - timedelta(days=7)).isoformat()
    assert sb.audit(from_=week_ago).window_truncated is True


def test_audit_records_program_not_arguments(make_sandbox):
    sb = _fresh_audited_sandbox(make_sandbox)
    records = sb.audit().records
    execs = [r for r in records if r.tool == "exec"]
    assert execs and all(r.command for r in execs)
    assert any(r.command == "echo" for r in execs)
    for r in records:
        assert "first-secret-arg" not in (r.command or "") + (r.target or "")


def test_duplicate_name_conflict(client, make_sandbox):
    sb = make_sandbox(BUSYBOX)
    # (The same create again from the same key is taken as a retry and answered with the
    # sandbox already made: see test_a_retried_create_gets_the_same_sandbox.)
    with pytest.raises(neevai.ConflictError) as ei:
        client.sandboxes.create({"sandbox_template_id": BUSYBOX, "name": sb.name,
                                 "resources": {"memory_gb": 2}})
    assert ei.value.status_code == 409
    assert ei.value.code == "conflict"
    assert len(client.sandboxes.list(name=sb.name).items) == 1


def test_a_retried_create_gets_the_same_sandbox(client, make_sandbox):
    sb = make_sandbox(BUSYBOX)
    again = client.sandboxes.create({"sandbox_template_id": BUSYBOX, "name": sb.name})
    assert again.id == sb.id
    assert len(client.sandboxes.list(name=sb.name).items) == 1


def test_bad_name_rejected(client, sandbox_factory):
    # The SDK validates the name pattern client-side ...
    with pytest.raises(neevai.NeevAIError):
        client.sandboxes.create({"sandbox_template_id": BUSYBOX, "name": "Bad_Name"})
    # ... so send it through the SDK's raw transport to reach the server.
    for bad in ("Bad_Name", "-leading-dash", "x" * 64):
        try:
            created = client.raw.request("POST", SANDBOXES,
                                         body={"sandbox_template_id": BUSYBOX, "name": bad})
        except neevai.BadRequestError as e:
            assert e.status_code == 400
            assert e.code == "validation_error"
            assert "name" in str(e)
        else:
            sandbox_factory.track(client.sandboxes.get(created["id"]))
            pytest.fail(f"server accepted sandbox name {bad!r}")


def test_unknown_template_rejected(client, sandbox_factory):
    name = unique_name()
    try:
        created = client.sandboxes.create({"sandbox_template_id": "sb-no-such-template",
                                           "name": name})
    except neevai.BadRequestError as e:
        assert e.status_code == 400
        assert "sb-no-such-template" in str(e)
    else:
        sandbox_factory.track(created)
        pytest.fail("server accepted an unknown template")
    with pytest.raises(neevai.NotFoundError):
        client.sandboxes.get(name)


def test_invalid_api_key(sandboxd):
    bad = neevai.NeevAI(api_key="sbx_not_a_real_key", max_retries=0)
    with pytest.raises(neevai.AuthenticationError) as ei:
        bad.sandboxes.list()
    assert ei.value.status_code == 401
    with pytest.raises(neevai.AuthenticationError):
        bad.templates.list()


def test_invalid_api_key_on_data_plane(client, busybox):
    bad = neevai.NeevAI(api_key="sbx_not_a_real_key", max_retries=0)
    handle = neevai.Sandbox(bad.sandboxes, busybox.data)
    with pytest.raises(neevai.AuthenticationError):
        handle.exec("echo should-not-run")


def test_other_project_is_forbidden_or_missing(client):
    with pytest.raises((neevai.PermissionDeniedError, neevai.NotFoundError)):
        client.sandboxes.list(org_id=ORG, project_id="someone-elses-project")


def test_snapshot_fork_rollback_restore_pause_resume(client, sandbox_factory):
    """Issue 3 through the SDK: snapshot → Ready → fork → rollback → restore-as-new →
    pause (with memory) → resume, checking files and a live process along the way."""
    sb = sandbox_factory.create(DEBIAN)
    assert sb.exec("echo v1 > /workspace/f").exit_code == 0

    snap = sb.snapshot({"name": unique_name("snap")})
    deadline = time.time() + 60
    while True:
        got = client.sandboxes.get_snapshot(snap.id)
        if got.status == "Ready" or time.time() > deadline:
            break
        time.sleep(0.1)
    assert got.status == "Ready"
    assert str(got.sandbox_id) == sb.id
    assert any(str(s.id) == str(snap.id) for s in sb.snapshots())

    forked = sandbox_factory.track(sb.fork(unique_name("fork")))
    forked.wait_until_ready(timeout_ms=60_000, poll_interval_ms=100)
    assert forked.id != sb.id
    assert forked.exec("cat /workspace/f").stdout == "v1\n"

    assert sb.exec("echo v2 > /workspace/f").exit_code == 0
    sb.rollback(snap.id)
    sb.wait_until_ready(timeout_ms=60_000, poll_interval_ms=100)
    assert sb.exec("cat /workspace/f").stdout == "v1\n"

    restored = sandbox_factory.track(
        client.sandboxes.create({"name": unique_name("restored"), "restore": str(snap.id)})
    )
    restored.wait_until_ready(timeout_ms=60_000, poll_interval_ms=100)
    assert restored.exec("cat /workspace/f").stdout == "v1\n"

    counter = sb.processes.start(["python3", "-c",
                                  "import time\nn=0\nwhile True:\n n+=1\n open('/workspace/n','w').write(str(n))\n time.sleep(0.05)"])
    time.sleep(0.5)
    sb.pause()
    assert sb.phase == "Paused"
    sb.resume()
    sb.wait_until_ready(timeout_ms=60_000, poll_interval_ms=100)
    # The counting process came back with its memory and keeps going.
    first = int(sb.exec("cat /workspace/n").stdout)
    time.sleep(0.3)
    assert int(sb.exec("cat /workspace/n").stdout) > first
    # (the old Process handle is bound to the pre-pause connection, which the SDK closed)
    assert sb.processes.get(counter.id).state == "running"

    client.sandboxes.delete_snapshot(snap.id)
    with pytest.raises(neevai.NotFoundError):
        client.sandboxes.get_snapshot(snap.id)


SERVE_SRV = (
    "import functools, http.server as h, socketserver as s\n"
    "s.ThreadingTCPServer(('0.0.0.0', 8000), "
    "functools.partial(h.SimpleHTTPRequestHandler, directory='/srv')).serve_forever()"
)


def test_expose_port_preview_url_list_and_revoke(make_sandbox):
    import httpx

    sb = make_sandbox(DEBIAN, name=unique_name("sdk-port"))
    sb.files.write("/srv/hi.txt", "preview me\n")
    sb.processes.start(["python3", "-c", SERVE_SRV])
    # get_url exposes the port and waits until the URL is routed (the SDK polls it).
    url = sb.get_url(8000)
    assert url.endswith("/")
    assert [p.port for p in sb.list_ports()] == [8000]
    assert sb.expose_port(8000).preview_url == url  # idempotent

    deadline = time.time() + 15
    while True:
        r = httpx.get(url + "hi.txt", timeout=10)  # no API key: the slug is the credential
        if r.status_code == 200 or time.time() > deadline:
            break
        time.sleep(0.2)
    assert (r.status_code, r.text) == (200, "preview me\n")

    sb.revoke_port(8000)
    assert sb.list_ports() == []
    assert httpx.get(url + "hi.txt", timeout=10).status_code == 404
