"""Reliability as the SDKs see it: a crashed sandbox heals and neevai reads its `last_crash`;
a pooled HTTP client survives early errors on large bodies."""

from __future__ import annotations

import os
import signal
import time

import httpx

from conftest import BUSYBOX


def _kill_sandbox_processes(sandbox_id: str) -> None:
    short = sandbox_id.replace("-", "")[:12]
    procs = f"/sys/fs/cgroup/pids/sandboxd/{short}/cgroup.procs"
    pids = open(procs).read().split()
    assert pids, f"no processes in {procs}"
    for pid in pids:
        os.kill(int(pid), signal.SIGKILL)


def test_a_crashed_sandbox_heals_and_reports_last_crash(make_sandbox):
    sb = make_sandbox(BUSYBOX)
    assert sb.last_crash is None
    sb.files.write("/root/kept.txt", "still here\n")
    _kill_sandbox_processes(sb.id)
    deadline = time.monotonic() + 30
    while True:
        sb.refresh()
        if sb.phase == "Ready" and sb.last_crash is not None:
            break
        assert time.monotonic() < deadline, f"not healed: {sb.data}"
        time.sleep(0.2)
    assert sb.last_crash.reason == "Crashed"
    assert sb.last_crash.storage_reset is False
    assert sb.files.read("/root/kept.txt") in ("still here\n", b"still here\n")
    assert sb.exec("echo alive").stdout == "alive\n"


def test_pooled_client_survives_early_errors_on_large_bodies(sandboxd):
    body = b"x" * (1024 * 1024)
    with httpx.Client(base_url=sandboxd.base_url, timeout=30) as c:
        good = {"Authorization": f"Bearer {sandboxd.api_key}"}
        r = c.post("/v1/no-such-route", content=body, headers=good)
        assert r.status_code == 404
        assert c.get("/v1/sandboxes", headers=good).status_code == 200
        r = c.post("/v1/sandbox", content=body, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401
        assert c.get("/v1/sandboxes", headers=good).status_code == 200
