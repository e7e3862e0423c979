"""Leap0 git through the official `leap0` SDK (0.8.x): all 16 `sb.git.*` methods against real
git in a Debian sandbox.

A bare repository inside the sandbox is the "remote" for the file-path workflow. For HTTP with
a password, the test builds its own "internet" as crates/daemon/tests/egress.rs does: a network
namespace joined to the host by a veth, at 198.18.<octet>.2 (inside the daemon's egress ceiling
198.18.<octet>.0/24), where `git http-backend` is served behind HTTP Basic auth. The password
must then appear nowhere: not in the sandbox's files, not in the repository's config, not in
the daemon's log or data.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import httpx
import pytest

leap0 = pytest.importorskip("leap0")
from leap0 import Leap0ConflictError, Leap0Error, Leap0NotFoundError  # noqa: E402

from conftest import BUSYBOX, DEBIAN, SUBNET_OCTET  # noqa: E402

AUTHOR, EMAIL = "Ada Lovelace", "ada@example.com"
SHA = re.compile(r"^[0-9a-f]{40}$")


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def box(leap0_client):
    """One Debian sandbox for the file-path tests (the Leap0 default template)."""
    sb = leap0_client.sandboxes.create(template_name=DEBIAN)
    try:
        yield sb
    finally:
        try:
            sb.delete()
        except Leap0NotFoundError:
            pass


@pytest.fixture
def fresh(leap0_client):
    """Sandboxes created by one test, deleted after it."""
    made = []

    def make(**kw):
        sb = leap0_client.sandboxes.create(**kw)
        made.append(sb)
        return sb

    yield make
    for sb in made:
        try:
            sb.delete()
        except Leap0NotFoundError:
            pass


def sh(sb, command: str, env: dict[str, str] | None = None) -> str:
    r = sb.process.execute(command=command, env=env, timeout=60)
    assert r.exit_code == 0, f"{command}: {r.stdout}{r.stderr}"
    return r.stdout


def status_lines(sb, path: str) -> list[str]:
    r = sb.git.status(path=path)
    assert r.exit_code == 0
    return r.output.splitlines()


def commit(sb, path: str, message: str) -> str:
    c = sb.git.commit(path=path, message=message, author=AUTHOR, email=EMAIL)
    assert c.sha and SHA.match(c.sha), c
    assert c.result is not None and c.result.exit_code == 0
    assert message.splitlines()[0] in c.result.output
    return c.sha


def api_status(exc: Leap0Error) -> int | None:
    return exc.status_code


# --------------------------------------------------------------------------------------
# File-path remote: the whole local workflow
# --------------------------------------------------------------------------------------


def test_clone_status_add_commit_log_show_diff_reset(box):
    g = box.git
    d = f"/workspace/g-{uuid.uuid4().hex[:8]}"
    origin, repo = f"{d}/origin.git", f"{d}/repo"
    sh(box, f"git init -q --bare --initial-branch=main {origin}")

    r = g.clone(url=origin, path=repo)
    assert r.exit_code == 0
    assert f"Cloning into '{repo}'" in r.output and "empty repository" in r.output
    assert status_lines(box, repo)[0].startswith("## No commits yet on main")

    box.filesystem.write_files(files={f"{repo}/a.txt": "hello\n", f"{repo}/b c.txt": "spaced\n"})
    assert status_lines(box, repo)[1:] == ["?? a.txt", "?? b c.txt"]

    r = g.add(path=repo, files=["a.txt"])
    assert "add 'a.txt'" in r.output
    assert status_lines(box, repo)[1:] == ["A  a.txt", "?? b c.txt"]
    staged = g.diff_staged(path=repo).output
    assert "diff --git a/a.txt b/a.txt" in staged and "+hello" in staged
    assert g.diff_unstaged(path=repo).output == ""

    first = commit(box, repo, "first commit")
    log = g.log(path=repo).output
    assert log.startswith(f"commit {first}\n")
    assert f"Author: {AUTHOR} <{EMAIL}>" in log and "    first commit" in log
    # The author is also the committer.
    assert sh(box, f"git -C {repo} log -1 --format=%cn/%ce").strip() == f"{AUTHOR}/{EMAIL}"

    shown = g.show(path=repo, revision=first).output
    assert shown.startswith(f"commit {first}") and "+hello" in shown
    assert g.show(path=repo).output == shown  # revision defaults to HEAD

    # A modification: unstaged, then staged, then unstaged again by reset.
    box.filesystem.write_file(path=f"{repo}/a.txt", content="hello world\nsecond line\n")
    assert status_lines(box, repo)[1:] == [" M a.txt", "?? b c.txt"]
    unstaged = g.diff_unstaged(path=repo).output
    assert "-hello\n+hello world\n+second line" in unstaged
    assert "@@ -1 +1,2 @@" in g.diff_unstaged(path=repo, context_lines=0).output
    g.add(path=repo, files=["a.txt", "b c.txt"])
    assert status_lines(box, repo)[1:] == ["M  a.txt", "A  b c.txt"]
    assert "+hello world" in g.diff_staged(path=repo).output
    r = g.reset(path=repo)
    assert r.exit_code == 0 and "a.txt" in r.output
    assert status_lines(box, repo)[1:] == [" M a.txt", "?? b c.txt"]
    assert g.diff_staged(path=repo).output == ""

    # Against a revision: the work tree versus the first commit.
    assert "+hello world" in g.diff(path=repo, target=first).output
    g.add(path=repo, files=["a.txt"])
    second = commit(box, repo, "second commit\n\nwith a body")
    log = g.log(path=repo).output
    assert log.index(f"commit {second}") < log.index(f"commit {first}")
    assert "    with a body" in log
    assert g.log(path=repo, max_count=1).output.count("commit ") == 1
    assert g.log(path=repo, start_timestamp="2000-01-01", end_timestamp="2001-01-01").output == ""
    assert f"commit {second}" in g.log(path=repo, start_timestamp="1 hour ago").output
    # The work tree now matches the second commit, not the first.
    assert g.diff(path=repo, target=second).output == ""
    assert "+hello world" in g.diff(path=repo, target="HEAD~1").output


def test_branches_create_checkout_delete(box):
    g = box.git
    repo = f"/workspace/b-{uuid.uuid4().hex[:8]}"
    sh(box, f"git init -q --initial-branch=main {repo}")
    box.filesystem.write_file(path=f"{repo}/f.txt", content="1\n")
    g.add(path=repo, files=["f.txt"])
    base = commit(box, repo, "base")

    r = g.create_branch(path=repo, name="feature")
    assert r.exit_code == 0 and "feature" in r.output
    assert g.branches(path=repo).output == "  feature\n* main\n"
    with pytest.raises(Leap0ConflictError) as e:
        g.create_branch(path=repo, name="feature")
    assert "already exists" in str(e.value)

    r = g.create_branch(path=repo, name="topic", checkout=True, base_branch="main")
    assert "Switched to a new branch 'topic'" in r.output
    assert g.branches(path=repo).output == "  feature\n  main\n* topic\n"
    box.filesystem.write_file(path=f"{repo}/t.txt", content="topic\n")
    g.add(path=repo, files=["t.txt"])
    topic = commit(box, repo, "on topic")

    assert "Switched to branch 'main'" in g.checkout_branch(path=repo, branch="main").output
    assert not box.filesystem.exists(path=f"{repo}/t.txt")
    assert g.branches(path=repo, contains=topic).output == "  topic\n"
    assert g.branches(path=repo, not_contains=topic).output == "  feature\n* main\n"
    assert g.branches(path=repo, contains=base).output == "  feature\n* main\n  topic\n"
    assert g.branches(path=repo, branch_type="remote").output == ""

    # create=True makes a missing branch and switches to an existing one.
    assert "Switched to a new branch 'scratch'" in g.checkout_branch(path=repo, branch="scratch", create=True).output
    assert "Switched to branch 'feature'" in g.checkout_branch(path=repo, branch="feature", create=True).output
    with pytest.raises(Leap0NotFoundError):
        g.checkout_branch(path=repo, branch="nope")

    # Unmerged work is kept unless forced; the current branch cannot go.
    with pytest.raises(Leap0ConflictError) as e:
        g.delete_branch(path=repo, name="topic")
    assert "not fully merged" in str(e.value)
    with pytest.raises(Leap0ConflictError):
        g.delete_branch(path=repo, name="feature")
    assert "Deleted branch scratch" in g.delete_branch(path=repo, name="scratch").output
    assert "Deleted branch topic" in g.delete_branch(path=repo, name="topic", force=True).output
    assert g.branches(path=repo).output == "* feature\n  main\n"
    with pytest.raises(Leap0NotFoundError):
        g.delete_branch(path=repo, name="scratch")
    # A branch name is never an option.
    with pytest.raises(Leap0Error) as e:
        g.checkout_branch(path=repo, branch="-f")
    assert api_status(e.value) == 400


def test_push_clone_elsewhere_pull_and_conflict(box):
    g = box.git
    d = f"/workspace/p-{uuid.uuid4().hex[:8]}"
    origin, one, two = f"{d}/origin.git", f"{d}/one", f"{d}/two"
    sh(box, f"git init -q --bare --initial-branch=main {origin}")
    g.clone(url=origin, path=one)
    box.filesystem.write_file(path=f"{one}/readme.md", content="v1\n")
    g.add(path=one, files=["readme.md"])
    c1 = commit(box, one, "one: first")

    r = g.push(path=one, remote="origin", branch="main", set_upstream=True)
    assert r.exit_code == 0 and "main -> main" in r.output
    assert status_lines(box, one)[0] == "## main...origin/main"
    assert "origin/main" in g.branches(path=one, branch_type="remote").output
    assert g.branches(path=one, branch_type="all").output == "* main\n  remotes/origin/main\n"
    assert sh(box, f"git --git-dir={origin} rev-parse main").strip() == c1

    r = g.clone(url=f"file://{origin}", path=two, branch="main", depth=1)
    assert r.exit_code == 0
    assert g.log(path=two).output.startswith(f"commit {c1}")
    assert box.filesystem.read_file(path=f"{two}/readme.md") == "v1\n"

    box.filesystem.write_file(path=f"{one}/readme.md", content="v2\n")
    g.add(path=one, files=["readme.md"])
    c2 = commit(box, one, "one: second")
    assert status_lines(box, one)[0] == "## main...origin/main [ahead 1]"
    g.push(path=one)

    r = g.pull(path=two)
    assert r.exit_code == 0 and "Fast-forward" in r.output
    assert g.log(path=two, max_count=1).output.startswith(f"commit {c2}")
    assert box.filesystem.read_file(path=f"{two}/readme.md") == "v2\n"

    # Both change the same line: the push of the late one is rejected, its pull conflicts.
    box.filesystem.write_file(path=f"{one}/readme.md", content="from one\n")
    g.add(path=one, files=["readme.md"])
    commit(box, one, "one: third")
    g.push(path=one, remote="origin", branch="main")
    box.filesystem.write_file(path=f"{two}/readme.md", content="from two\n")
    g.add(path=two, files=["readme.md"])
    commit(box, two, "two: rival")
    with pytest.raises(Leap0ConflictError) as e:
        g.push(path=two)
    assert "rejected" in str(e.value)
    with pytest.raises(Leap0ConflictError) as e:
        g.pull(path=two, remote="origin", branch="main")
    assert "CONFLICT" in str(e.value) and "readme.md" in str(e.value)
    assert "UU readme.md" in status_lines(box, two)

    # A rebase pull of a clean clone works too.
    three = f"{d}/three"
    g.clone(url=origin, path=three, commit_id=c1)
    assert status_lines(box, three)[0] == "## HEAD (no branch)"
    g.checkout_branch(path=three, branch="main")
    r = g.pull(path=three, rebase=True)
    assert r.exit_code == 0
    assert box.filesystem.read_file(path=f"{three}/readme.md") == "from one\n"


def test_errors_in_leap0_shapes(box):
    g = box.git
    repo = f"/workspace/e-{uuid.uuid4().hex[:8]}"
    sh(box, f"git init -q --initial-branch=main {repo}")
    with pytest.raises(Leap0NotFoundError) as e:
        g.status(path="/workspace/does-not-exist")
    assert "No such file or directory" in str(e.value)
    sh(box, "mkdir -p /tmp/plain")
    with pytest.raises(Leap0Error) as e:
        g.status(path="/tmp/plain")
    assert api_status(e.value) == 400 and "not a git repository" in str(e.value)
    with pytest.raises(Leap0Error) as e:
        g.commit(path=repo, message="nothing", author=AUTHOR, email=EMAIL)
    assert api_status(e.value) == 400 and "nothing" in str(e.value)
    # An empty history is empty, not an error; an empty commit is allowed when asked for.
    assert g.log(path=repo).output == ""
    c = g.commit(path=repo, message="empty", author=AUTHOR, email=EMAIL, allow_empty=True)
    assert c.sha and SHA.match(c.sha)
    with pytest.raises(Leap0NotFoundError):
        g.show(path=repo, revision="no-such-rev")
    with pytest.raises(Leap0NotFoundError):
        g.add(path=repo, files=["missing.txt"])
    with pytest.raises(Leap0Error) as e:
        g.add(path=repo, files=[])
    assert api_status(e.value) == 400
    with pytest.raises(Leap0Error) as e:
        g.branches(path=repo, branch_type="weird")
    assert api_status(e.value) == 400
    with pytest.raises(Leap0Error) as e:
        g.clone(url="/nope/none.git", path=f"{repo}-clone")
    assert api_status(e.value) in (400, 404)
    with pytest.raises(Leap0ConflictError):
        g.clone(url=repo, path=repo)  # the destination is there and not empty


def test_a_template_without_git_says_so(fresh):
    sb = fresh(template_name=BUSYBOX)
    with pytest.raises(Leap0Error) as e:
        sb.git.status(path="/")
    assert api_status(e.value) == 400
    assert "git is not installed" in str(e.value)


# --------------------------------------------------------------------------------------
# HTTP with a password, from a server in a network namespace
# --------------------------------------------------------------------------------------

# A Basic-auth front for `git http-backend` (CGI), run inside the namespace.
SERVER = textwrap.dedent(r'''
    import base64, os, subprocess, sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    root, port, user, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    want = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    backend = os.path.join(subprocess.check_output(["git", "--exec-path"], text=True).strip(),
                           "git-http-backend")

    class H(BaseHTTPRequestHandler):
        def body(self):
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                out = b""
                while True:
                    n = int(self.rfile.readline().split(b";")[0], 16)
                    if n == 0:
                        self.rfile.readline()
                        return out
                    out += self.rfile.read(n)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def serve(self):
            data = self.body()
            if self.headers.get("Authorization") != want:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="git"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            path, _, query = self.path.partition("?")
            env = dict(os.environ, GIT_PROJECT_ROOT=root, GIT_HTTP_EXPORT_ALL="1",
                       PATH_INFO=path, QUERY_STRING=query, REQUEST_METHOD=self.command,
                       CONTENT_TYPE=self.headers.get("Content-Type", ""),
                       CONTENT_LENGTH=str(len(data)), REMOTE_USER=user, REMOTE_ADDR="x",
                       HTTP_CONTENT_ENCODING=self.headers.get("Content-Encoding", ""),
                       GIT_PROTOCOL=self.headers.get("Git-Protocol", ""))
            out = subprocess.run([backend], input=data, env=env, capture_output=True).stdout
            head, _, payload = out.partition(b"\r\n\r\n")
            if not _:
                head, _, payload = out.partition(b"\n\n")
            status, headers = 200, []
            for line in head.decode().splitlines():
                k, _, v = line.partition(":")
                if k.lower() == "status":
                    status = int(v.split()[0])
                else:
                    headers.append((k, v.strip()))
            self.send_response(status)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = serve

        def log_message(self, *a):
            pass

    ThreadingHTTPServer(("0.0.0.0", port), H).serve_forever()
''')


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(list(argv), capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"{argv}: {p.stderr}")
    return p


class GitHost:
    """`git http-backend` behind Basic auth at http://198.18.<octet>.2:<port>/, in a netns."""

    PORT = 8080

    def __init__(self, octet: str, user: str, password: str):
        self.ns, self.veth, self.peer = f"sbxt-git-{octet}", f"gi{octet}", f"gp{octet}"
        self.ip = f"198.18.{octet}.2"
        self.root = Path(tempfile.mkdtemp(prefix="sdk-git-host-"))
        self.proc: subprocess.Popen | None = None
        self.teardown_links()
        run("ip", "netns", "add", self.ns)
        run("ip", "link", "add", self.veth, "type", "veth", "peer", "name", self.peer)
        run("ip", "link", "set", self.peer, "netns", self.ns)
        run("ip", "addr", "add", f"198.18.{octet}.1/24", "dev", self.veth)
        run("ip", "link", "set", self.veth, "up")
        run("ip", "-n", self.ns, "link", "set", self.peer, "up")
        run("ip", "-n", self.ns, "link", "set", "lo", "up")
        run("ip", "-n", self.ns, "addr", "add", f"{self.ip}/24", "dev", self.peer)
        script = self.root / "server.py"
        script.write_text(SERVER)
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, sys.executable, str(script), str(self.root),
             str(self.PORT), user, password],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((self.ip, self.PORT), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "git host did not start"
                assert self.proc.poll() is None, "git host exited"
                time.sleep(0.1)

    def url(self, name: str) -> str:
        return f"http://{self.ip}:{self.PORT}/{name}"

    def bare_repo_with_a_commit(self, name: str) -> tuple[Path, str]:
        bare = self.root / name
        run("git", "init", "-q", "--bare", "--initial-branch=main", str(bare))
        work = self.root / (name + ".work")
        run("git", "clone", "-q", str(bare), str(work))
        (work / "hello.txt").write_text("hello from the host\n")
        env = ["-c", "user.name=Host", "-c", "user.email=host@example.com"]
        run("git", "-C", str(work), "add", "hello.txt")
        run("git", *env, "-C", str(work), "commit", "-q", "-m", "host commit")
        run("git", "-C", str(work), "push", "-q", "origin", "main")
        sha = run("git", "--git-dir", str(bare), "rev-parse", "main").stdout.strip()
        return bare, sha

    def teardown_links(self):
        run("ip", "link", "del", self.veth, check=False)
        run("ip", "netns", "del", self.ns, check=False)

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.teardown_links()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def git_host():
    if not shutil.which("git") or not shutil.which("ip"):
        pytest.skip("needs git and iproute2 on the host")
    user, password = "agent", f"pw-{uuid.uuid4().hex}"
    host = GitHost(SUBNET_OCTET, user, password)
    host.user, host.password = user, password
    try:
        yield host
    finally:
        host.close()


def test_http_clone_push_pull_with_a_password_leaves_no_trace(fresh, git_host, sandboxd, leap0_client):
    user, pw = git_host.user, git_host.password
    bare, host_sha = git_host.bare_repo_with_a_commit("secret.git")
    sb = fresh(template_name=DEBIAN)
    g = sb.git
    url = git_host.url("secret.git")

    # Without credentials, and with a wrong password: git's refusal, no prompt, no hang.
    with pytest.raises(Leap0Error) as e:
        g.clone(url=url, path="/workspace/noauth")
    assert api_status(e.value) == 400
    with pytest.raises(Leap0Error) as e:
        g.clone(url=url, path="/workspace/wrong", username=user, password="not-it")
    assert api_status(e.value) == 400 and "Authentication failed" in str(e.value)

    r = g.clone(url=url, path="/workspace/repo", username=user, password=pw)
    assert r.exit_code == 0 and "Cloning into" in r.output
    assert g.log(path="/workspace/repo").output.startswith(f"commit {host_sha}")
    assert sb.filesystem.read_file(path="/workspace/repo/hello.txt") == "hello from the host\n"

    # Credentials inside the URL are taken out of it before git stores the URL.
    r = g.clone(url=f"http://{user}:{pw}@{git_host.ip}:{git_host.PORT}/secret.git",
                path="/workspace/repo2")
    assert r.exit_code == 0
    assert sh(sb, "git -C /workspace/repo2 remote get-url origin").strip() == url

    # Push and pull with the password, per call.
    sb.filesystem.write_file(path="/workspace/repo/new.txt", content="from the sandbox\n")
    g.add(path="/workspace/repo", files=["new.txt"])
    sha = commit(sb, "/workspace/repo", "sandbox commit")
    with pytest.raises(Leap0Error):
        g.push(path="/workspace/repo")  # no credentials: refused
    r = g.push(path="/workspace/repo", username=user, password=pw)
    assert "main -> main" in r.output
    assert run("git", "--git-dir", str(bare), "rev-parse", "main").stdout.strip() == sha
    r = g.pull(path="/workspace/repo2", username=user, password=pw)
    assert "Fast-forward" in r.output
    assert g.log(path="/workspace/repo2", max_count=1).output.startswith(f"commit {sha}")
    r = g.pull(path="/workspace/repo2", username=user, password=pw)
    assert "Already up to date" in r.output

    # The password is nowhere: the repos' config, the sandbox's files, the daemon's data.
    for repo in ("/workspace/repo", "/workspace/repo2"):
        config = sb.filesystem.read_file(path=f"{repo}/.git/config")
        assert pw not in config and user not in config, config
    # (The needle goes in the environment: a command line would be in the audit trail.)
    grep = ('grep -rlsF -e "$NEEDLE" / --exclude-dir=proc --exclude-dir=sys '
            '--exclude-dir=dev; echo "rc=$?"')
    found = sb.process.execute(command=grep, env={"NEEDLE": pw}, timeout=120)
    assert found.stdout.strip() == "rc=1", found.stdout  # grep: 1 = no file holds it
    control = sb.process.execute(command=grep, env={"NEEDLE": "hello from the host"}, timeout=120)
    assert "/workspace/repo/hello.txt" in control.stdout and "rc=0" in control.stdout
    data = Path(sandboxd.data_dir)
    leaks = []
    for f in [sandboxd.log_path, data / "sandboxd.stdout", *data.glob("*.db*"),
              *data.glob("*.sqlite*"), *data.glob("*.json"), *data.glob("audit*")]:
        if f.is_file() and pw.encode() in f.read_bytes():
            leaks.append(str(f))
    assert not leaks, leaks
    b64 = base64.b64encode(f"{user}:{pw}".encode()).decode()
    assert b64 not in sandboxd.log_path.read_text(errors="replace")
    # Nor in a snapshot of the sandbox (files and memory), wherever the daemon keeps it: the
    # layer, the checkpoint image, the content-addressed store.
    snap = sb.create_snapshot(name=f"after-git-{uuid.uuid4().hex[:6]}")
    time.sleep(3)  # the archiver moves the memory image into the store after 1 s of quiet
    # (The btrfs volume image is skipped: its files are read through the mounted tree.)
    needle = pw.encode()

    def holds(f: Path) -> bool:
        tail = b""
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                if needle in tail + chunk:
                    return True
                tail = chunk[-len(needle):]
        return False

    held = []
    for root, _, files in os.walk(data):
        for name in files:
            f = Path(root) / name
            if name == "volume.img" or f.is_symlink() or not f.is_file():
                continue
            try:
                if holds(f):
                    held.append(str(f))
            except OSError:
                pass
    assert not held, held
    leap0_client.snapshots.delete(snap.id)
    # The audit trail names the operation and the repository, nothing else.
    trail = httpx.get(
        f"{sandboxd.base_url}/api/v1beta1/orgs/default/projects/default/sandboxes/{sb.id}/audit",
        params={"limit": 1000}, headers={"Authorization": f"Bearer {sandboxd.api_key}"},
        timeout=30)
    assert trail.status_code == 200, trail.text
    assert pw not in trail.text and b64 not in trail.text
    clones = [r for r in trail.json()["records"] if r["tool"] == "git.clone"]
    assert {r["target"] for r in clones} >= {"/workspace/repo", "/workspace/repo2"}, clones
