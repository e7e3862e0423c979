"""Developer surface of the data plane: file watch, resumable uploads, exec timeouts that keep
their output, and the agent's idle cost. Runs against a private sandboxd (see conftest.py)."""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from pathlib import Path

import pytest

import neevai
from conftest import DEBIAN


def _cpuacct_usage_ns(sb_id: str) -> int | None:
    short = sb_id.replace("-", "")[:12]
    p = Path(f"/sys/fs/cgroup/cpuacct/sandboxd/{short}/cpuacct.usage")
    try:
        return int(p.read_text().strip())
    except OSError:
        return None


def test_idle_cpu_of_a_sandbox(make_sandbox):
    """Measures (and bounds) what an idle sandbox costs: its cgroup's CPU time over 20 s."""
    sb = make_sandbox(DEBIAN)
    time.sleep(3)  # let start-up settle
    before = _cpuacct_usage_ns(sb.id)
    if before is None:
        pytest.skip("no cpuacct cgroup for the sandbox")
    secs = float(os.environ.get("IDLE_CPU_SECS", "20"))
    time.sleep(secs)
    used = _cpuacct_usage_ns(sb.id) - before
    pct = used / (secs * 1e9) * 100
    print(f"\n[idle-cpu] {used / 1e6:.1f} ms CPU over {secs:.0f} s = {pct:.2f}% of a core")
    assert pct < float(os.environ.get("IDLE_CPU_MAX_PCT", "100"))


def test_memory_hog_is_still_killed_fast(make_sandbox):
    """The cheaper watchdog (a /proc walk only near the limit) still catches a fast hog
    before the cgroup backstop takes the whole sandbox down."""
    sb = make_sandbox(DEBIAN, resources={"cpu": 1, "memory_gb": 1})
    hog = "b = b'x' * (1536 << 20)\nprint('survived')"
    r = sb.exec(["python3", "-c", hog])
    assert r.exit_code == 137, r
    assert "survived" not in r.stdout
    assert "out of memory" in r.stderr
    # The sandbox lives on.
    assert sb.exec(["python3", "-c", "print(len(bytearray(256 << 20)) >> 20)"]).stdout == "256\n"


# --------------------------------------------------------------------------------------
# files.watch
# --------------------------------------------------------------------------------------


class Watcher:
    """Runs sb.files.watch in a thread, collecting (type, path) until `stop_on` is seen."""

    def __init__(self, sb, path, *, recursive=False, timeout_ms=15_000, stop_on=None):
        self.events: list = []
        self.error: BaseException | None = None
        self._gen = sb.files.watch(path, recursive=recursive, timeout_ms=timeout_ms)
        self._stop_on = stop_on
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        time.sleep(1.5)  # the watch is in place once its response started

    def _run(self):
        try:
            for ev in self._gen:
                self.events.append(ev)
                if self._stop_on and (ev.type, ev.path) == self._stop_on:
                    break
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            self._gen.close()

    def join(self, timeout=20):
        self._t.join(timeout)
        assert not self._t.is_alive(), "watch did not end"
        assert self.error is None, repr(self.error)
        return [(e.type, e.path) for e in self.events]


def test_watch_sees_create_write_remove(make_sandbox):
    sb = make_sandbox(DEBIAN)
    d = f"/workspace/w-{uuid.uuid4().hex[:6]}"
    sb.files.mkdir(d)
    f = f"{d}/f.txt"
    w = Watcher(sb, d, stop_on=("remove", f))
    # Another process makes the changes.
    r = sb.exec(["sh", "-c", f"echo one > {f}; sleep 0.2; echo two >> {f}; sleep 0.2; "
                              f"chmod 600 {f}; sleep 0.2; rm {f}"])
    assert r.exit_code == 0
    seen = w.join()
    assert ("create", f) in seen, seen
    assert ("write", f) in seen, seen
    assert ("chmod", f) in seen, seen
    assert seen[-1] == ("remove", f), seen
    assert seen.index(("create", f)) < seen.index(("write", f)) < seen.index(("remove", f))
    created = next(e for e in w.events if e.type == "create")
    assert created.entry is not None and created.entry.name == "f.txt"
    assert next(e for e in w.events if e.type == "remove").entry is None


def test_watch_recursive_only_sees_subdirectories_when_asked(make_sandbox):
    sb = make_sandbox(DEBIAN)
    d = f"/workspace/r-{uuid.uuid4().hex[:6]}"
    sb.files.mkdir(f"{d}/sub")
    flat = Watcher(sb, d, recursive=False, timeout_ms=6_000)
    deep = Watcher(sb, d, recursive=True, stop_on=("create", f"{d}/later/deeper/g"))
    sb.exec(["sh", "-c", f"echo x > {d}/sub/inner; echo y > {d}/top"])
    # A directory made after the watch started is followed too.
    sb.exec(["sh", "-c", f"mkdir -p {d}/later/deeper && sleep 0.3 && echo z > {d}/later/deeper/g"])
    flat_seen = flat.join()
    deep_seen = deep.join()
    assert ("create", f"{d}/top") in flat_seen, flat_seen
    assert not any(p.startswith(f"{d}/sub/") for _, p in flat_seen), flat_seen
    assert not any(p.startswith(f"{d}/later/") for _, p in flat_seen), flat_seen
    assert ("create", f"{d}/sub/inner") in deep_seen, deep_seen
    assert ("create", f"{d}/top") in deep_seen, deep_seen
    assert ("create", f"{d}/later/deeper/g") in deep_seen, deep_seen


def test_watch_ends_at_its_timeout_and_rejects_a_missing_path(make_sandbox):
    sb = make_sandbox(DEBIAN)
    t0 = time.monotonic()
    assert list(sb.files.watch("/workspace", timeout_ms=1_000)) == []
    assert time.monotonic() - t0 < 10
    with pytest.raises(neevai.NotFoundError):
        list(sb.files.watch("/no/such/dir", timeout_ms=1_000))


# --------------------------------------------------------------------------------------
# resumable uploads
# --------------------------------------------------------------------------------------


def _sha256_in(sb, path) -> str:
    r = sb.exec(["sha256sum", path])
    assert r.exit_code == 0, r
    return r.stdout.split()[0]


def _no_upload_leftovers(sb, d="/workspace"):
    r = sb.exec(["sh", "-c", f"ls -a {d} | grep sandboxd-upload || true"])
    return r.stdout.strip() == ""


def test_upload_200_mib_hash_matches(make_sandbox):
    sb = make_sandbox(DEBIAN, resources={"cpu": 1, "memory_gb": 2})
    data = os.urandom(200 << 20)
    t0 = time.monotonic()
    assert sb.files.write("big.bin", data) == {"bytes_written": len(data)}
    secs = time.monotonic() - t0
    print(f"\n[upload] 200 MiB in {secs:.1f} s = {200 / secs:.0f} MiB/s")
    assert _sha256_in(sb, "/workspace/big.bin") == hashlib.sha256(data).hexdigest()
    assert _no_upload_leftovers(sb)


class FlakyTransport:
    """Wraps the SDK's runtime transport: chosen PATCHes fail once with a connection error,
    before the chunk is sent (`before`) or after the sandbox took it (`after`)."""

    def __init__(self, sb, before=(), after=()):
        self.transport = sb.files._conn._transport
        self.real = self.transport.request
        self.before, self.after = set(before), set(after)
        self.patches = 0
        self.heads: list[int] = []
        self.deletes = 0

    def __enter__(self):
        def request(method, path, *args, **kwargs):
            if method == "PATCH":
                self.patches += 1
                n = self.patches
                if n in self.before:
                    self.before.discard(n)
                    raise neevai.APIConnectionError("injected: connection cut before the chunk")
                resp = self.real(method, path, *args, **kwargs)
                if n in self.after:
                    self.after.discard(n)
                    raise neevai.APIConnectionError("injected: response lost")
                return resp
            resp = self.real(method, path, *args, **kwargs)
            if method == "HEAD":
                self.heads.append(int(resp.headers["Upload-Offset"]))
            if method == "DELETE":
                self.deletes += 1
            return resp

        self.transport.request = request
        return self

    def __exit__(self, *exc):
        self.transport.request = self.real


def test_upload_resumes_from_the_sandbox_offset(make_sandbox):
    sb = make_sandbox(DEBIAN)
    data = os.urandom(8 << 20)
    progress = []
    # Chunk 3 is cut before it reaches the sandbox; chunk 6 lands but its answer is lost.
    with FlakyTransport(sb, before={3}, after={6}) as ft:
        res = sb.files.upload("resumed.bin", data, on_progress=lambda n, t: progress.append(n))
    assert res == {"bytes_written": len(data)}
    # The SDK asked the sandbox where to go on: 2 MiB (chunk 3 never arrived), then 5 MiB
    # (chunk 6 did: it is not sent again).
    assert ft.heads == [2 << 20, 5 << 20], ft.heads
    assert ft.patches == 8 + 1, ft.patches
    assert progress[-1] == len(data)
    assert _sha256_in(sb, "/workspace/resumed.bin") == hashlib.sha256(data).hexdigest()
    assert _no_upload_leftovers(sb)


def test_upload_offsets_are_checked_and_a_failed_upload_is_discarded(make_sandbox):
    sb = make_sandbox(DEBIAN)
    t = sb.files._conn._transport
    created = t.request("POST", "/v1/files/uploads", headers={
        "Tus-Resumable": "1.0.0", "Upload-Length": "10",
        "Upload-Metadata": "path " + __import__("base64").b64encode(b"sub/x.bin").decode()})
    assert created.status_code == 201
    loc = created.headers["Location"]
    hdr = {"Tus-Resumable": "1.0.0", "Content-Type": "application/offset+octet-stream"}
    r = t.request("PATCH", loc, headers={**hdr, "Upload-Offset": "0"}, content=b"01234")
    assert r.status_code == 204 and r.headers["Upload-Offset"] == "5"
    # A resent chunk is harmless; a chunk past the end of what arrived is refused.
    r = t.request("PATCH", loc, headers={**hdr, "Upload-Offset": "0"}, content=b"01234")
    assert r.headers["Upload-Offset"] == "5"
    with pytest.raises(neevai.ConflictError):
        t.request("PATCH", loc, headers={**hdr, "Upload-Offset": "7"}, content=b"789")
    assert t.request("HEAD", loc, headers={"Tus-Resumable": "1.0.0"}).headers["Upload-Offset"] == "5"
    assert not sb.files.exists("sub/x.bin")
    r = t.request("PATCH", loc, headers={**hdr, "Upload-Offset": "5"}, content=b"56789")
    assert r.headers["Upload-Offset"] == "10"
    assert sb.files.read("sub/x.bin") == b"0123456789"
    with pytest.raises(neevai.NotFoundError):
        t.request("HEAD", loc, headers={"Tus-Resumable": "1.0.0"})

    # An upload that fails for good is removed from the sandbox by the SDK's DELETE.
    class Boom(Exception):
        pass

    real = t.request

    def failing(method, path, *a, **kw):
        if method == "PATCH" and kw.get("headers", {}).get("Upload-Offset") == str(2 << 20):
            raise Boom()
        return real(method, path, *a, **kw)

    t.request = failing
    try:
        with pytest.raises(Boom):
            sb.files.upload("failed.bin", os.urandom(4 << 20))
    finally:
        t.request = real
    assert not sb.files.exists("failed.bin")
    assert _no_upload_leftovers(sb)


# --------------------------------------------------------------------------------------
# exec timeouts keep their output
# --------------------------------------------------------------------------------------


def test_exec_timeout_keeps_the_output(make_sandbox):
    sb = make_sandbox(DEBIAN)
    t0 = time.monotonic()
    with pytest.raises(neevai.DeadlineExceededError) as ei:
        sb.exec(["sh", "-c", "echo before; echo oops >&2; sleep 30; echo later"], timeout_ms=1500)
    assert time.monotonic() - t0 < 10
    assert ei.value.code == "deadline_exceeded"
    msg = ei.value.body["message"]
    assert "timed out after 1500 ms" in msg
    assert "--- stdout before the deadline ---\nbefore\n" in msg, msg
    assert "--- stderr before the deadline ---\noops\n" in msg, msg
    assert "later" not in msg

    # exec_stream hands over every chunk as it comes, then the error.
    got = []
    with pytest.raises(neevai.DeadlineExceededError):
        for ev in sb.exec_stream(["sh", "-c", "echo one; sleep 30"], timeout_ms=1000):
            got.append(ev)
    assert {"type": "stdout", "data": "one\n"} in got


def test_exec_timeout_stops_a_chatty_command(make_sandbox):
    """A command that never goes quiet still ends at its deadline, with its output."""
    sb = make_sandbox(DEBIAN)
    t0 = time.monotonic()
    with pytest.raises(neevai.DeadlineExceededError) as ei:
        sb.exec(["sh", "-c", "while :; do echo tick; sleep 0.05; done"], timeout_ms=1500)
    assert time.monotonic() - t0 < 10
    assert "tick\ntick\n" in ei.value.body["message"]
