"""Fixtures of the dashboard's browser tests (tests/ui).

A session-scoped sandboxd (fresh data dir, API and dashboard on port 0, subnet octet 224,
metrics sampled every second) and a headless Debian Chromium driven by Selenium through
Debian's chromedriver: nothing is downloaded. Helpers to stop the daemon and clean up are
those of the SDK suite (tests/sdk/conftest.py).

Environment overrides:
  SANDBOXD_BIN            path to sandboxd (default: <repo>/target/release/sandboxd)
  SANDBOXD_TEMPLATES_DIR  template root (default: /var/lib/sandboxd/templates)
  UI_TEST_SUBNET_OCTET    --subnet-octet (default: 224)
  UI_TEST_KEEP_DATA       keep the data dir (and its sandboxd.log)
"""

from __future__ import annotations

import importlib.util
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("sdk_conftest", REPO / "tests" / "sdk" / "conftest.py")
sdk = importlib.util.module_from_spec(_spec)
sys.modules["sdk_conftest"] = sdk
_spec.loader.exec_module(sdk)  # type: ignore[union-attr]

import neevai  # noqa: E402  (the SDK conftest sets up typing for it first)
from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402

SANDBOXD = Path(os.environ.get("SANDBOXD_BIN", REPO / "target" / "release" / "sandboxd"))
TEMPLATES_DIR = os.environ.get("SANDBOXD_TEMPLATES_DIR", "/var/lib/sandboxd/templates")
OCTET = os.environ.get("UI_TEST_SUBNET_OCTET", "224")
DOCS = REPO / "docs"


@dataclass
class Daemon:
    proc: subprocess.Popen
    data_dir: Path
    api_url: str
    ui_url: str  # http://127.0.0.1:<port> (the dashboard's origin)
    api_key: str
    log_path: Path

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "<no log>"

    def new_key(self, org: str) -> str:
        out = subprocess.run([str(SANDBOXD), "keys", "create", "--org", org,
                              "--data-dir", str(self.data_dir)],
                             check=True, capture_output=True, text=True)
        return out.stdout.strip()


def _start() -> Daemon:
    if os.geteuid() != 0:
        pytest.exit("the UI suite must run as root (sandboxd needs it)", returncode=2)
    if not SANDBOXD.is_file():
        pytest.exit(f"{SANDBOXD} not found: build it first (scripts/build)", returncode=2)
    data_dir = Path(tempfile.mkdtemp(prefix="sandboxd-ui-"))
    log_path = data_dir / "sandboxd.log"
    log = open(log_path, "ab")
    cmd = [str(SANDBOXD), "serve", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir),
           "--templates-dir", TEMPLATES_DIR, "--no-template-build",
           "--subnet-octet", OCTET, "--reclaim-subnet",
           "--egress-ceiling", f"198.18.{OCTET}.0/24",
           "--metrics-interval-secs", "1",
           "--dashboard-listen", "127.0.0.1:0"]
    env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info"), NO_COLOR="1")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, env=env)
    log.close()
    lines: "queue.Queue[str | None]" = queue.Queue()
    threading.Thread(target=sdk._drain, args=(proc.stdout, lines, data_dir / "sandboxd.stdout"),
                     daemon=True).start()
    api = ui = None
    deadline = time.monotonic() + 30
    while api is None:
        try:
            line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
        except queue.Empty:
            line = None
        if line is None:
            break
        m = re.search(r"dashboard on (http://\S+:\d+)/ui/", line)
        if m:
            ui = m.group(1)
        m = re.search(r"listening on (\S+:\d+)", line)
        if m:
            api = f"http://{m.group(1)}"
    if api is None or ui is None:
        sdk._stop_process(proc)
        pytest.exit(f"sandboxd did not start with a dashboard:\n{log_path.read_text(errors='replace')[-3000:]}",
                    returncode=2)
    key_file = data_dir / "admin.key"
    while not key_file.exists() or not key_file.read_text().strip():
        time.sleep(0.05)
    return Daemon(proc, data_dir, api, ui, key_file.read_text().strip(), log_path)


@pytest.fixture(scope="session")
def daemon():
    d = _start()
    os.environ.update({"NEEV_API_KEY": d.api_key, "NEEV_ORG_ID": "default",
                       "NEEV_PROJECT_ID": "default", "NEEV_BASE_URL": d.api_url})
    try:
        yield d
    finally:
        try:
            if d.proc.poll() is None:
                with neevai.NeevAI(max_retries=0, timeout_ms=30_000) as c:
                    sdk._delete_all_sandboxes(c)
        except Exception as exc:  # keep stopping the daemon
            print(f"\n[ui-tests] cleanup failed: {exc!r}")
        sdk._stop_process(d.proc)
        if os.environ.get("UI_TEST_KEEP_DATA"):
            print(f"\n[ui-tests] kept {d.data_dir}")
        else:
            sdk._remove_data_dir(d.data_dir)


@pytest.fixture(scope="session")
def client(daemon) -> neevai.NeevAI:
    c = neevai.NeevAI(max_retries=0, timeout_ms=120_000)
    yield c
    c.close()


def chrome_options(profile: str) -> webdriver.ChromeOptions:
    o = webdriver.ChromeOptions()
    o.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
              "--disable-background-networking", "--disable-component-update",
              "--no-first-run", "--disable-gpu", f"--user-data-dir={profile}",
              "--window-size=1280,800"):
        o.add_argument(a)
    o.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return o


@pytest.fixture(scope="session")
def browser(daemon):
    profile = tempfile.mkdtemp(prefix="ui-chromium-")
    drv = webdriver.Chrome(options=chrome_options(profile), service=Service("/usr/bin/chromedriver"))
    drv.set_window_size(1280, 800)
    drv.implicitly_wait(0)
    yield drv
    drv.quit()
    subprocess.run(["rm", "-rf", profile], check=False)
