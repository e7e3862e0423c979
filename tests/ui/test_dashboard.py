"""The dashboard in a real headless Chromium against a real sandboxd with gVisor sandboxes.

The tests run in file order and share one browser session and one daemon: login first, then
the list, create + run, the seed's snapshot flow (and restore), roll back, pause/resume/fork/
delete, the 409 of a second snapshot, metrics, and the security checks last (they read the
console and network logs the whole run left).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

from conftest import DOCS

BUSYBOX = "sb-busybox"
DEBIAN = "sb-debian-12-python"
STATE: dict = {}
CONSOLE: list = []


def uniq(p: str) -> str:
    return f"{p}-{uuid.uuid4().hex[:6]}"


def wait(drv, secs: float = 10):
    return WebDriverWait(drv, secs, poll_frequency=0.1,
                         ignored_exceptions=(StaleElementReferenceException,))


def drain_console(drv) -> None:
    CONSOLE.extend(drv.get_log("browser"))


def css(drv, sel):
    return drv.find_element(By.CSS_SELECTOR, sel)


def text_of(drv, sel) -> str:
    try:
        return drv.find_element(By.CSS_SELECTOR, sel).text
    except Exception:
        return ""


def login(drv, daemon, key):
    drv.get(daemon.ui_url + "/ui/login")
    css(drv, "#key").send_keys(key)
    css(drv, "#login").click()


def run_command(drv, cmd: str, timeout: float = 60) -> tuple[str, str]:
    """On a sandbox page: the Terminal tab's run form; returns (stdout, exit code)."""
    if "tab=terminal" not in drv.current_url:
        css(drv, "#tab-terminal").click()
    box = wait(drv).until(EC.element_to_be_clickable((By.ID, "command")))
    box.clear()
    box.send_keys(cmd)
    old = drv.find_elements(By.ID, "exit-code")
    css(drv, "#run").click()
    if old:
        wait(drv, timeout).until(EC.staleness_of(old[0]))
    wait(drv, timeout).until(EC.presence_of_element_located((By.ID, "exit-code")))
    return css(drv, "#stdout").text, css(drv, "#exit-code").text


def sandbox_id_of_page(drv) -> str:
    return css(drv, ".head .id").text


# 1 ──────────────────────────────────────────────────────────────────────────────────────────
def test_login_wrong_then_right_key(browser, daemon):
    drv = browser
    drv.get(daemon.ui_url + "/ui/")
    assert drv.current_url.endswith("/ui/login")
    login(drv, daemon, "sbx_wrong_key")
    assert "not valid" in wait(drv).until(EC.visibility_of_element_located((By.ID, "login-error"))).text
    assert drv.get_cookies() == []
    login(drv, daemon, daemon.api_key)
    wait(drv).until(EC.presence_of_element_located((By.ID, "sandboxes")))
    cookies = drv.get_cookies()
    assert len(cookies) == 1, cookies
    c = cookies[0]
    assert c["name"].startswith("__Host-")
    assert c["httpOnly"] and c["secure"] and c["sameSite"] == "Strict"
    assert daemon.api_key not in c["value"]
    assert drv.execute_script("return document.cookie") == ""
    assert daemon.api_key not in drv.page_source
    drain_console(drv)


# 2 ──────────────────────────────────────────────────────────────────────────────────────────
def test_sdk_created_sandbox_appears_live_and_paused_shows(browser, daemon, client):
    drv = browser
    drv.get(daemon.ui_url + "/ui/")
    drv.execute_script("window.__noReload = 1")
    name = uniq("sdk")
    sb = client.sandboxes.create({"sandbox_template_id": BUSYBOX, "name": name})
    sb.wait_until_ready(timeout_ms=60_000, poll_interval_ms=100)
    t0 = time.monotonic()
    row = f'tr[data-name="{name}"]'
    wait(drv, 5).until(EC.presence_of_element_located((By.CSS_SELECTOR, row)))
    assert time.monotonic() - t0 <= 5
    assert drv.execute_script("return window.__noReload") == 1, "the page reloaded"
    paused = uniq("sdk-paused")
    sb2 = client.sandboxes.create({"sandbox_template_id": BUSYBOX, "name": paused})
    sb2.wait_until_ready(timeout_ms=60_000, poll_interval_ms=100)
    sb2.pause()
    wait(drv, 15).until(lambda d: text_of(d, f'tr[data-name="{paused}"] .phase') == "Paused")
    assert text_of(drv, f'tr[data-name="{name}"] .phase') == "Ready"
    # Filter by phase, search by name.
    Select(css(drv, "#phase")).select_by_value("Paused")
    wait(drv, 5).until(lambda d: not d.find_elements(By.CSS_SELECTOR, row))
    assert drv.find_elements(By.CSS_SELECTOR, f'tr[data-name="{paused}"]')
    Select(css(drv, "#phase")).select_by_value("")
    wait(drv, 5).until(lambda d: d.find_elements(By.CSS_SELECTOR, row))
    STATE["sdk_names"] = (name, paused)
    drain_console(drv)


# 3 ──────────────────────────────────────────────────────────────────────────────────────────
def test_create_from_ui_and_run_a_command(browser, daemon):
    drv = browser
    drv.get(daemon.ui_url + "/ui/")
    css(drv, "#new-sandbox").click()
    name = uniq("ui")
    wait(drv).until(EC.visibility_of_element_located((By.ID, "create-name"))).send_keys(name)
    Select(css(drv, "#create-template")).select_by_value(DEBIAN)
    css(drv, "#create-submit").click()
    wait(drv, 90).until(lambda d: text_of(d, "#sb-name") == name)
    assert text_of(drv, "#sb-phase") == "Ready"
    STATE["debian"] = (name, sandbox_id_of_page(drv))
    out, code = run_command(drv, "python3 -c 'print(6*7)'")
    assert out.strip() == "42" and code == "0"
    # Files and a counter for the snapshot tests.
    out, code = run_command(drv, "echo original > /root/marker.txt && "
                                 "setsid sh -c 'i=0; while :; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.2; done' "
                                 ">/dev/null 2>&1 < /dev/null & sleep 1; cat /tmp/counter")
    assert code == "0" and int(out.strip()) >= 1, out
    drain_console(drv)


def counter(drv) -> int:
    out, code = run_command(drv, "cat /tmp/counter")
    assert code == "0", out
    return int(out.strip())


# 4 ──────────────────────────────────────────────────────────────────────────────────────────
def test_snapshot_modal_pending_to_ready_and_restore(browser, daemon):
    drv = browser
    name, sid = STATE["debian"]
    drv.get(f"{daemon.ui_url}/ui/sandboxes/{sid}")
    css(drv, "#snapshot-open").click()
    box = wait(drv).until(EC.visibility_of_element_located((By.ID, "snapshot-name")))
    assert css(drv, "#snapshot-memory").is_selected(), "include memory is on by default"
    create = css(drv, "#snapshot-create")
    box.send_keys("Bad Name!")
    hint = css(drv, "#snapshot-name-hint")
    assert "not a valid name" in hint.text and "error" in hint.get_attribute("class")
    assert not create.is_enabled()
    assert box.get_attribute("aria-invalid") == "true"
    box.clear()
    snap = uniq("before-change")
    box.send_keys(snap)
    assert create.is_enabled() and "not a valid" not in hint.text
    before = counter_value_via_sdk(daemon, sid)
    create.click()
    row = f'tr[data-snapshot="{snap}"] .status'
    wait(drv, 10).until(EC.presence_of_element_located((By.CSS_SELECTOR, row)))
    assert "tab=snapshots" in drv.current_url
    drv.execute_script("window.__noReload = 1")
    seen = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        s = text_of(drv, row)
        if s and (not seen or seen[-1] != s):
            seen.append(s)
        if s in ("Ready", "Failed"):
            break
        time.sleep(0.05)
    assert seen[-1] == "Ready", seen
    assert seen[0] in ("Pending", "Running"), f"first status seen was {seen}"
    assert drv.execute_script("return window.__noReload") == 1
    STATE["snap"] = (snap, before)
    # The project-wide Snapshots page.
    css(drv, "#nav-snapshots").click()
    r = wait(drv).until(EC.presence_of_element_located((By.CSS_SELECTOR, f'tr[data-snapshot="{snap}"]')))
    cells = r.find_elements(By.TAG_NAME, "td")
    assert cells[0].text == snap
    assert cells[1].text == name and cells[1].find_element(By.TAG_NAME, "a").get_attribute("href").endswith(sid)
    assert cells[2].text.startswith("Ready")
    assert "files + memory" in cells[3].text
    assert time.strftime("%Y-%m-%d", time.gmtime()) in cells[5].text
    drv.save_screenshot(str(DOCS / "dashboard-snapshots.png"))
    # Restore as a new sandbox: the files, and the counter carries on from the snapshot.
    r.find_element(By.CSS_SELECTOR, "button.restore").click()
    wait(drv, 120).until(lambda d: "/ui/sandboxes/" in d.current_url and sandbox_id_of_page(d) not in ("", sid))
    new_id = sandbox_id_of_page(drv)
    out, code = run_command(drv, "cat /root/marker.txt")
    assert out.strip() == "original"
    c1 = counter(drv)
    time.sleep(1)
    c2 = counter(drv)
    assert c2 > c1 >= before, (before, c1, c2)
    STATE["restored"] = new_id
    drain_console(drv)


def counter_value_via_sdk(daemon, sid) -> int:
    import neevai
    with neevai.NeevAI(max_retries=0) as c:
        return int(c.sandboxes.get(sid).exec("cat /tmp/counter").stdout.strip())


# 5 ──────────────────────────────────────────────────────────────────────────────────────────
def test_roll_back_in_place(browser, daemon):
    drv = browser
    name, sid = STATE["debian"]
    snap, at_snapshot = STATE["snap"]
    drv.get(f"{daemon.ui_url}/ui/sandboxes/{sid}?tab=terminal")
    out, code = run_command(drv, "echo changed > /root/marker.txt; cat /root/marker.txt")
    assert out.strip() == "changed"
    time.sleep(1)
    pre = counter(drv)
    drv.get(daemon.ui_url + "/ui/snapshots")
    r = wait(drv).until(EC.presence_of_element_located((By.CSS_SELECTOR, f'tr[data-snapshot="{snap}"]')))
    r.find_element(By.CSS_SELECTOR, "details.confirm summary").click()
    r.find_element(By.CSS_SELECTOR, "input[name=confirm]").click()
    r.find_element(By.CSS_SELECTOR, "button.rollback").click()
    wait(drv, 120).until(lambda d: f"/ui/sandboxes/{sid}" in d.current_url)
    assert sandbox_id_of_page(drv) == sid, "the sandbox keeps its id"
    out, _ = run_command(drv, "cat /root/marker.txt")
    assert out.strip() == "original"
    c1 = counter(drv)
    time.sleep(1)
    c2 = counter(drv)
    assert c2 > c1 >= at_snapshot and c1 < pre, (at_snapshot, pre, c1, c2)
    drain_console(drv)


# 8 ──────────────────────────────────────────────────────────────────────────────────────────
def test_second_snapshot_in_flight_shows_the_reason(browser, daemon, client):
    drv = browser
    name, sid = STATE["debian"]
    url = f"{daemon.api_url}/api/v1beta1/orgs/default/projects/default/sandboxes/{sid}/snapshots"
    first = uniq("first")

    def take():
        req = urllib.request.Request(url, method="POST",
                                     data=json.dumps({"name": first, "include_memory": True}).encode(),
                                     headers={"Authorization": f"Bearer {daemon.api_key}",
                                              "Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=120).read()

    def in_flight() -> bool:
        req = urllib.request.Request(url + "?limit=100",
                                     headers={"Authorization": f"Bearer {daemon.api_key}"})
        items = json.loads(urllib.request.urlopen(req, timeout=10).read())["items"]
        return any(i["name"] == first and i["status"] in ("Pending", "Running") for i in items)

    # A race by nature: the first capture can finish before the click lands (then the second
    # simply succeeds). Try a few times; one refusal in words is what this test wants.
    err = None
    for _ in range(4):
        first = uniq("first")
        drv.get(f"{daemon.ui_url}/ui/sandboxes/{sid}?tab=snapshots")
        css(drv, "#snapshot-open").click()
        box = wait(drv).until(EC.visibility_of_element_located((By.ID, "snapshot-name")))
        box.send_keys(uniq("second"))
        t = threading.Thread(target=take)
        t.start()
        # Once the first is recorded (Pending), the sandbox is busy with it.
        deadline = time.monotonic() + 10
        while not in_flight():
            assert time.monotonic() < deadline, "the first snapshot was never seen in flight"
            time.sleep(0.02)
        css(drv, "#snapshot-create").click()
        try:
            err = wait(drv, 5).until(
                EC.visibility_of_element_located((By.CSS_SELECTOR, "#snapshot-error .error")))
        except TimeoutException:
            err = None
        t.join()
        if err is not None:
            break
    assert err is not None, "the second snapshot was never refused while one was in flight"
    assert "Not possible right now" in err.text, err.text
    assert "409" not in err.text
    css(drv, "#snapshot-dialog [data-close]").click()
    drain_console(drv)


# 6 ──────────────────────────────────────────────────────────────────────────────────────────
def test_pause_resume_fork_and_delete(browser, daemon, client):
    drv = browser
    name = uniq("life")
    sb = client.sandboxes.create({"sandbox_template_id": BUSYBOX, "name": name})
    sb.wait_until_ready(timeout_ms=60_000, poll_interval_ms=100)
    drv.get(f"{daemon.ui_url}/ui/sandboxes/{sb.id}")
    css(drv, "#pause").click()
    wait(drv, 60).until(lambda d: text_of(d, "#sb-phase") == "Paused")
    wait(drv).until(EC.element_to_be_clickable((By.ID, "resume"))).click()
    wait(drv, 60).until(lambda d: text_of(d, "#sb-phase") == "Ready")
    fork = css(drv, "#fork-name")
    fork.clear()
    fork.send_keys(name + "-fork")
    css(drv, "#fork").click()
    wait(drv, 120).until(lambda d: text_of(d, "#sb-name") == name + "-fork")
    fork_id = sandbox_id_of_page(drv)
    assert fork_id != str(sb.id)
    # Delete the fork, confirming by its name.
    css(drv, "#delete-open").click()
    delete = css(drv, "#delete")
    assert not delete.is_enabled()
    css(drv, "#delete-confirm").send_keys(name)  # not its name
    assert not delete.is_enabled()
    css(drv, "#delete-confirm").send_keys("-fork")
    assert delete.is_enabled()
    delete.click()
    wait(drv, 60).until(lambda d: d.current_url.endswith("/ui/"))
    wait(drv, 5).until(lambda d: not d.find_elements(By.CSS_SELECTOR, f'tr[data-id="{fork_id}"]'))
    assert drv.find_elements(By.CSS_SELECTOR, f'tr[data-name="{name}"]')
    drv.save_screenshot(str(DOCS / "dashboard-sandboxes.png"))
    drain_console(drv)


# 7 ──────────────────────────────────────────────────────────────────────────────────────────
def test_metrics_cpu_rises_under_a_burner(browser, daemon, client):
    drv = browser
    name, sid = STATE["debian"]
    drv.get(f"{daemon.ui_url}/ui/sandboxes/{sid}?tab=metrics")
    wait(drv, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#chart-cpu canvas"))
    burner = threading.Thread(target=lambda: client.sandboxes.get(sid).exec(
        "timeout 12 python3 -c 'while True: pass'"))
    burner.start()
    fetch = """
      const done = arguments[arguments.length - 1];
      fetch(document.getElementById('metrics').dataset.src + '?range=5m')
        .then(r => r.json()).then(d => done(Math.max(0, ...d.cpu.filter(v => v !== null))))
        .catch(e => done(-1));"""
    peak = 0.0
    deadline = time.monotonic() + 25
    while time.monotonic() < deadline and peak < 0.5:
        peak = drv.execute_async_script(fetch)
        time.sleep(1)
    burner.join()
    assert peak >= 0.5, f"CPU peak {peak}"
    # The chart drew the points (uPlot's series paths exist once data is set).
    assert int(css(drv, "#metrics").get_attribute("data-points") or 0) > 0
    drain_console(drv)


# 9 ──────────────────────────────────────────────────────────────────────────────────────────
def test_security_csrf_other_org_console_and_origins(browser, daemon):
    drv = browser
    name, sid = STATE["debian"]
    cookie = drv.get_cookies()[0]
    req = urllib.request.Request(f"{daemon.ui_url}/ui/sandboxes/{sid}/delete", method="POST",
                                 data=f"confirm={name}".encode(),
                                 headers={"Cookie": f"{cookie['name']}={cookie['value']}",
                                          "Content-Type": "application/x-www-form-urlencoded"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 403
    req.add_header("Origin", "http://evil.example")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 403
    # The public API does not take the cookie.
    api = urllib.request.Request(f"{daemon.api_url}/api/v1beta1/orgs/default/projects/default/sandboxes",
                                 headers={"Cookie": f"{cookie['name']}={cookie['value']}"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(api, timeout=10)
    assert e.value.code == 401
    # Every page once more, for console errors.
    for path in ["/ui/", f"/ui/sandboxes/{sid}", f"/ui/sandboxes/{sid}?tab=snapshots",
                 f"/ui/sandboxes/{sid}?tab=metrics", f"/ui/sandboxes/{sid}?tab=processes",
                 f"/ui/sandboxes/{sid}?tab=terminal", f"/ui/sandboxes/{sid}?tab=audit",
                 "/ui/snapshots", "/ui/templates"]:
        drv.get(daemon.ui_url + path)
        time.sleep(0.5)
    drain_console(drv)
    # Another org's key sees none of this org's sandboxes.
    other = daemon.new_key("globex")
    css(drv, "#logout").click()
    wait(drv).until(lambda d: d.current_url.endswith("/ui/login"))
    login(drv, daemon, other)
    wait(drv).until(EC.presence_of_element_located((By.ID, "sandboxes")))
    assert not drv.find_elements(By.CSS_SELECTOR, "tr[data-id]")
    drv.get(f"{daemon.ui_url}/ui/sandboxes/{sid}")
    assert name not in drv.page_source
    drv.get(daemon.ui_url + "/ui/snapshots")
    assert not drv.find_elements(By.CSS_SELECTOR, "tr[data-snapshot]")
    css(drv, "#logout").click()
    login(drv, daemon, daemon.api_key)
    wait(drv).until(EC.presence_of_element_located((By.ID, "sandboxes")))
    # Expected, and nothing else: the 401 of the deliberately wrong key (test 1) and the 404
    # of the other org's view of this org's sandbox (above).
    drain_console(drv)
    errors = [m for m in CONSOLE if m["level"] == "SEVERE"
              and not (f"/ui/sandboxes/{sid}" in m["message"] and "404" in m["message"])
              and not ("/ui/login" in m["message"] and "401" in m["message"])]
    assert errors == [], errors
    # No request left the dashboard's origin.
    urls = set()
    for entry in drv.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg["method"] == "Network.requestWillBeSent":
            urls.add(msg["params"]["request"]["url"])
    # (The browser's own chrome:// pages are no network requests; data: URLs are inline.)
    net = [u for u in urls if u.split(":", 1)[0] in ("http", "https", "ws", "wss")]
    foreign = [u for u in net if not (u.startswith(daemon.ui_url + "/")
                                      or u.startswith(daemon.ui_url.replace("http", "ws", 1) + "/"))]
    assert net and foreign == [], foreign
