"""Fixtures for the neevai SDK compatibility suite.

A session-scoped fixture starts a private sandboxd (fresh data dir, port 0,
subnet octet 211) and points the official `neevai` SDK at it through the NEEV_*
environment variables. Every sandbox a test creates goes through `make_sandbox`
(or the module-scoped helpers below) and is deleted at teardown; the session
teardown additionally deletes anything still listed in the project before it
stops the daemon, because sandboxes outlive a stopped sandboxd.

Environment overrides:
  SANDBOXD_BIN            path to sandboxd (default: <repo>/target/release/sandboxd)
  SANDBOXD_TEMPLATES_DIR  template root (default: /var/lib/sandboxd/templates)
  SDK_TEST_SUBNET_OCTET   --subnet-octet (default: 211; must differ from other daemons)
  SDK_TEST_KEEP_DATA      if set, keep the data dir (and its sandboxd.log) after the run

The `leap0` SDK suite (test_leap0.py) shares the daemon: LEAP0_BASE_URL and LEAP0_API_KEY
are set beside the NEEV_* variables, and `leap0_client` is a client built from them.
"""

from __future__ import annotations

import faulthandler
import gc
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

if sys.version_info < (3, 12):
    # leap0 0.8.0 declares its wire schemas with typing.TypedDict, which pydantic accepts only
    # on Python >= 3.12 (scripts/test-sdk picks one when the machine has it). Elsewhere the
    # stdlib name is pointed at typing_extensions' implementation; the SDK itself is unchanged.
    import typing

    import typing_extensions

    typing.TypedDict = typing_extensions.TypedDict  # type: ignore[misc]

import neevai

REPO = Path(__file__).resolve().parents[2]
SANDBOXD = Path(os.environ.get("SANDBOXD_BIN", REPO / "target" / "release" / "sandboxd"))
TEMPLATES_DIR = os.environ.get("SANDBOXD_TEMPLATES_DIR", "/var/lib/sandboxd/templates")
SUBNET_OCTET = os.environ.get("SDK_TEST_SUBNET_OCTET", "211")
START_TIMEOUT_S = 30.0
TEST_TIMEOUT_S = int(os.environ.get("SDK_TEST_TIMEOUT", "90"))
STOP_TIMEOUT_S = 30.0

ORG = "default"
PROJECT = "default"
BUSYBOX = "sb-busybox"
# Sandbox hosts live under this name; the tests resolve it to loopback themselves (below),
# never through the host's DNS.
SANDBOX_DOMAIN = "sbx.localhost"


def _resolve_sandbox_hosts_to_loopback() -> None:
    import socket

    original = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if isinstance(host, str) and (host == SANDBOX_DOMAIN or host.endswith("." + SANDBOX_DOMAIN)):
            host = "127.0.0.1"
        return original(host, *args, **kwargs)

    socket.getaddrinfo = getaddrinfo


_resolve_sandbox_hosts_to_loopback()
DEBIAN = "sb-debian-12-python"


@dataclass
class Daemon:
    proc: subprocess.Popen
    data_dir: Path
    base_url: str
    api_key: str
    log_path: Path
    # Leap0 sandbox hosts: `<id>.<sandbox_domain>` over HTTPS (node CA at ca_file).
    sandbox_domain: str = ""
    ssh_port: int = 0

    @property
    def ca_file(self) -> Path:
        return self.data_dir / "egress-ca.pem"

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "<no log>"


def unique_name(prefix: str = "sdk") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _drain(stream, q: "queue.Queue[str | None]", sink: Path) -> None:
    """Reads the daemon's stdout forever so it never blocks on a full pipe."""
    with open(sink, "a", encoding="utf-8", errors="replace") as out:
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace")
            out.write(line)
            out.flush()
            q.put(line)
    q.put(None)


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root).rstrip("/") + "/"
    found = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            for line in f:
                mnt = line.split()[4]
                mnt = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), mnt)
                if mnt == str(root) or mnt.startswith(prefix):
                    found.append(mnt)
    except OSError:
        pass
    # Deepest first.
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)


def _remove_data_dir(data_dir: Path) -> None:
    for mnt in _mounts_under(data_dir):
        subprocess.run(["umount", "-R", "-l", mnt], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shutil.rmtree(data_dir, ignore_errors=True)
    if data_dir.exists():
        print(f"\n[sdk-tests] warning: could not fully remove {data_dir}")


def _delete_all_sandboxes(client: neevai.NeevAI) -> list[str]:
    """Deletes every sandbox left in the project; returns the names it deleted."""
    leftovers: list[str] = []
    for _ in range(10):
        page = client.sandboxes.list(page=1, limit=100)
        if not page.items:
            break
        for sb in page.items:
            leftovers.append(sb.name)
            try:
                sb.delete()
            except neevai.NotFoundError:
                pass
    return leftovers


def _start_daemon() -> Daemon:
    if os.geteuid() != 0:
        pytest.exit("the SDK suite must run as root (sandboxd needs it)", returncode=2)
    if not SANDBOXD.is_file():
        pytest.exit(f"{SANDBOXD} not found: build it first (scripts/build)", returncode=2)
    data_dir = Path(tempfile.mkdtemp(prefix="sandboxd-sdk-"))
    log_path = data_dir / "sandboxd.log"
    log = open(log_path, "ab")
    cmd = [
        str(SANDBOXD), "serve",
        "--listen", "127.0.0.1:0",
        "--data-dir", str(data_dir),
        "--templates-dir", TEMPLATES_DIR,
        "--no-template-build",
        "--subnet-octet", SUBNET_OCTET,
        "--reclaim-subnet",
        # Sandboxes of the SDK suite reach nothing but a test range no host answers on, even
        # with the Leap0 default policy (allow-all).
        "--egress-ceiling", f"198.18.{SUBNET_OCTET}.0/24",
        # Sandbox hosts (code interpreter, invoke_url) and the SSH gateway, on loopback.
        "--sandbox-domain", SANDBOX_DOMAIN,
        "--sandbox-listen", "127.0.0.1:0",
        "--ssh-listen", "127.0.0.1:0",
    ]
    env = dict(os.environ)
    env.setdefault("RUST_LOG", "info")
    env["NO_COLOR"] = "1"
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=log, env=env)
    log.close()
    lines: "queue.Queue[str | None]" = queue.Queue()
    threading.Thread(target=_drain, args=(proc.stdout, lines, data_dir / "sandboxd.stdout"),
                     daemon=True).start()

    deadline = time.monotonic() + START_TIMEOUT_S
    addr = None
    hosts_port = ssh_port = 0
    while addr is None:
        remaining = deadline - time.monotonic()
        try:
            line = lines.get(timeout=max(remaining, 0.01)) if remaining > 0 else None
        except queue.Empty:
            line = None
        if line is None:
            break
        m = re.search(r"sandbox hosts on \S+:(\d+)", line)
        if m:
            hosts_port = int(m.group(1))
        m = re.search(r"ssh on \S+:(\d+)", line)
        if m:
            ssh_port = int(m.group(1))
        m = re.search(r"listening on (\S+:\d+)", line)
        if m:
            addr = m.group(1)
    daemon = Daemon(proc, data_dir, f"http://{addr}", "", log_path,
                    f"{SANDBOX_DOMAIN}:{hosts_port}", ssh_port)
    if addr is None:
        _stop_process(proc)
        tail = daemon.log_tail()
        _remove_data_dir(data_dir)
        pytest.exit(f"sandboxd did not print 'listening on' within {START_TIMEOUT_S}s "
                    f"(exit={proc.poll()}):\n{tail}", returncode=2)

    key_file = data_dir / "admin.key"
    while not key_file.exists() or not key_file.read_text().strip():
        if time.monotonic() > deadline:
            _stop_process(proc)
            pytest.exit(f"sandboxd wrote no {key_file}:\n{daemon.log_tail()}", returncode=2)
        time.sleep(0.05)
    daemon.api_key = key_file.read_text().strip()
    return daemon


def _stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


class SdkTestTimeout(Exception):
    pass


@pytest.fixture(autouse=True)
def _per_test_guard():
    """Per-test wall-clock limit, and garbage collection only between tests.

    neevai's exec/follow generators keep an httpx streaming response open inside
    `with client.stream(...)`. When an exception (e.g. DeadlineExceededError from an
    exec error frame) leaves such a generator suspended and a reference cycle (a
    stored traceback, pytest.raises' ExceptionInfo) keeps it alive, the cyclic GC may
    finalize it in the middle of a later request on the same httpx pool; closing the
    response then re-acquires httpcore's non-reentrant pool lock that request holds,
    and the process deadlocks. Automatic GC is therefore off for the session and run
    here, between tests, where no request is in flight.
    """
    def on_alarm(signum, frame):
        faulthandler.dump_traceback(all_threads=True)
        raise SdkTestTimeout(f"test exceeded {TEST_TIMEOUT_S}s (SDK_TEST_TIMEOUT)")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(TEST_TIMEOUT_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        gc.collect()


@pytest.fixture(scope="session")
def sandboxd():
    gc.disable()  # see _per_test_guard
    daemon = _start_daemon()
    saved = {k: os.environ.get(k) for k in
             ("NEEV_API_KEY", "NEEV_ORG_ID", "NEEV_PROJECT_ID", "NEEV_BASE_URL",
              "LEAP0_API_KEY", "LEAP0_BASE_URL", "LEAP0_SANDBOX_DOMAIN", "SSL_CERT_FILE")}
    os.environ.update({
        "NEEV_API_KEY": daemon.api_key,
        "NEEV_ORG_ID": ORG,
        "NEEV_PROJECT_ID": PROJECT,
        "NEEV_BASE_URL": daemon.base_url,
        # The Leap0 dialect takes the same key; its tenant is the key's org/project.
        "LEAP0_API_KEY": daemon.api_key,
        "LEAP0_BASE_URL": daemon.base_url,
        "LEAP0_SANDBOX_DOMAIN": daemon.sandbox_domain,
        # The sandbox hosts' certificate is issued by the node CA.
        "SSL_CERT_FILE": str(daemon.ca_file),
    })
    try:
        yield daemon
    finally:
        try:
            if daemon.proc.poll() is None:
                with neevai.NeevAI(max_retries=0, timeout_ms=30_000) as c:
                    left = _delete_all_sandboxes(c)
                if left:
                    print(f"\n[sdk-tests] deleted leftover sandboxes: {left}")
        except Exception as exc:  # keep stopping the daemon whatever happened
            print(f"\n[sdk-tests] warning: leftover cleanup failed: {exc!r}")
        finally:
            _stop_process(daemon.proc)
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            gc.enable()
            if os.environ.get("SDK_TEST_KEEP_DATA"):
                print(f"\n[sdk-tests] kept data dir {daemon.data_dir}")
            else:
                _remove_data_dir(daemon.data_dir)


@pytest.fixture(scope="session")
def client(sandboxd) -> neevai.NeevAI:
    """An SDK client configured purely from NEEV_* env vars, as users do."""
    # No retries: a retried POST would hide server 5xx behind a second attempt.
    c = neevai.NeevAI(max_retries=0)
    yield c
    c.close()


class SandboxFactory:
    """Creates sandboxes through the SDK and deletes them all on cleanup()."""

    def __init__(self, client: neevai.NeevAI):
        self.client = client
        self.created: list[neevai.Sandbox] = []

    def create(self, template: str = BUSYBOX, *, name: str | None = None,
               wait: bool = True, **params) -> neevai.Sandbox:
        body = {"sandbox_template_id": template, "name": name or unique_name(), **params}
        sb = self.client.sandboxes.create(body)
        self.created.append(sb)
        if wait:
            sb.wait_until_ready(timeout_ms=60_000, poll_interval_ms=100)
        return sb

    def track(self, sb: neevai.Sandbox) -> neevai.Sandbox:
        self.created.append(sb)
        return sb

    def cleanup(self) -> None:
        errors = []
        while self.created:
            sb = self.created.pop()
            # A sandbox may be mid-operation (e.g. the idle enforcer pausing it): the server
            # answers 409 for one operation at a time, so retry for a while.
            deadline = time.monotonic() + 30
            while True:
                try:
                    self.client.sandboxes.delete(sb.id)
                except neevai.NotFoundError:
                    pass
                except neevai.ConflictError as exc:
                    if time.monotonic() < deadline:
                        time.sleep(0.2)
                        continue
                    errors.append(f"{sb.id}: {exc!r}")
                except Exception as exc:
                    errors.append(f"{sb.id}: {exc!r}")
                break
        if errors:
            raise AssertionError("failed to delete sandboxes: " + "; ".join(errors))


@pytest.fixture
def make_sandbox(client):
    """Factory fixture: make_sandbox(template=..., name=..., **create_params)."""
    factory = SandboxFactory(client)
    try:
        yield factory.create
    finally:
        factory.cleanup()


@pytest.fixture
def sandbox_factory(client):
    """Like make_sandbox but exposes the factory (for track())."""
    factory = SandboxFactory(client)
    try:
        yield factory
    finally:
        factory.cleanup()


@pytest.fixture(scope="module")
def debian(client) -> neevai.Sandbox:
    """One Debian 12 + python3 sandbox shared by a module's read-mostly tests."""
    factory = SandboxFactory(client)
    try:
        yield factory.create(DEBIAN, name=unique_name("sdk-deb"))
    finally:
        factory.cleanup()


@pytest.fixture(scope="module")
def busybox(client) -> neevai.Sandbox:
    """One busybox sandbox shared by a module's tests."""
    factory = SandboxFactory(client)
    try:
        yield factory.create(BUSYBOX, name=unique_name("sdk-bb"))
    finally:
        factory.cleanup()


@pytest.fixture
def workdir(debian) -> str:
    """A fresh, unique directory (relative to the workspace) in the shared Debian sandbox."""
    d = f"t-{uuid.uuid4().hex[:8]}"
    debian.files.mkdir(d)
    yield d
    try:
        debian.files.remove(d, recursive=True)
    except neevai.NotFoundError:
        pass


@pytest.fixture(scope="session")
def leap0_client(sandboxd):
    """A `leap0` SDK client configured purely from LEAP0_* env vars, as users do."""
    import leap0  # imported here so the neevai suite runs where leap0 is not installed

    c = leap0.Leap0Client()
    yield c
    c.close()
