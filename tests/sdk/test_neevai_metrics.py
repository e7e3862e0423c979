"""The neevai SDK's metrics call (seed 001 `getSandboxMetrics`) against sandboxd.

The suite's daemon samples at the default interval (10 s), so the first points of a new
sandbox can take that long to appear.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest

import neevai
from conftest import BUSYBOX, PROJECT

CATALOGUE = {
    "cpu_usage_cores": "cores",
    "memory_usage_bytes": "bytes",
    "memory_limit_bytes": "bytes",
    "disk_usage_bytes": "bytes",
    "disk_limit_bytes": "bytes",
    "pids": "count",
    "network_rx_bytes": "bytes",
    "network_tx_bytes": "bytes",
    "phase": "state",
    "restarts": "count",
    "oom_kills": "count",
    "egress_denied_total": "count",
}


def series(resp) -> dict:
    return {s.metric: s for s in resp.series}


def test_metrics_default_window_has_the_catalogue_and_fills_in(make_sandbox):
    sb = make_sandbox(BUSYBOX)
    deadline = time.monotonic() + 40
    while True:
        resp = sb.metrics()
        by = series(resp)
        if by["memory_usage_bytes"].points and by["pids"].points:
            break
        assert time.monotonic() < deadline, f"no samples yet: {resp}"
        time.sleep(1)
    assert str(resp.sandbox_id) == sb.id
    assert resp.to - resp.from_ == timedelta(hours=1)
    assert resp.step == "60s"
    assert {m: s.unit for m, s in by.items()} == CATALOGUE
    t, mem = by["memory_usage_bytes"].points[-1]
    assert mem > 0
    assert resp.from_.timestamp() - 60 <= t <= resp.to.timestamp()
    assert by["phase"].points[-1][1] == 1.0  # Ready
    assert by["memory_limit_bytes"].points[-1][1] >= 1 << 30
    assert by["disk_limit_bytes"].points[-1][1] == 10 << 30
    # Points are time-ordered [unix_seconds, value] pairs.
    for s in resp.series:
        ts = [p[0] for p in s.points]
        assert ts == sorted(ts) and all(len(p) == 2 for p in s.points)


def test_metrics_explicit_window_and_clamped_step(client, make_sandbox):
    sb = make_sandbox(BUSYBOX)
    to = datetime.now(timezone.utc).replace(microsecond=0)
    frm = to - timedelta(minutes=30)
    resp = client.sandboxes.metrics(sb.id, from_=frm.isoformat(), to=to.isoformat(), step="5m")
    assert (resp.from_, resp.to, resp.step) == (frm, to, "300s")
    # Finer than the sampling interval: raised to it, and reported.
    resp = sb.metrics(from_=frm.isoformat(), to=to.isoformat(), step="1s")
    assert resp.step == "10s"
    # A window before the sandbox existed: every series present, no points.
    old = sb.metrics(from_="2020-01-01T00:00:00Z", to="2020-01-01T01:00:00Z")
    assert set(series(old)) == set(CATALOGUE)
    assert all(s.points == [] for s in old.series)


def test_metrics_bad_ranges_unknown_sandbox_and_other_orgs(client, busybox, sandboxd):
    for kwargs in (
        {"from_": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
        {"from_": "not-a-time"},
        {"step": "soon"},
        {"step": "0s"},
    ):
        with pytest.raises(neevai.BadRequestError) as e:
            busybox.metrics(**kwargs)
        assert e.value.status_code == 400 and e.value.code == "validation_error", kwargs
    with pytest.raises(neevai.NotFoundError):
        client.sandboxes.metrics("00000000-0000-4000-8000-000000000000")
    with pytest.raises(neevai.PermissionDeniedError):
        client.sandboxes.metrics(busybox.id, org_id="someone-else", project_id=PROJECT)
