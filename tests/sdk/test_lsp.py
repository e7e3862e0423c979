"""Leap0 language servers through the official `leap0` SDK: `sb.lsp.*` against pyright and
typescript-language-server running in the Debian template (all ten SDK methods).

One Debian sandbox is shared by the module; each test uses its own project directory, so the
servers (one per language and project) do not meet.
"""

from __future__ import annotations

import time
import uuid

import pytest

leap0 = pytest.importorskip("leap0")
from leap0 import Leap0Error  # noqa: E402

from conftest import BUSYBOX, DEBIAN, SandboxFactory  # noqa: E402

PY_SOURCE = """import os


class Greeter:
    def __init__(self, name: str) -> None:
        self.name = name

    def greet(self) -> str:
        return "hello " + self.name


def main() -> None:
    print(Greeter("lsp").greet())


os.pa
"""
# `os.pa` above: line 15, the cursor after `pa`.
PY_CURSOR = (15, 5)

TS_SOURCE = """export interface Shape {
  area(): number;
}

export class Circle implements Shape {
  constructor(private radius: number) {}
  area(): number {
    return Math.PI * this.radius * this.radius;
  }
}

export function total(shapes: Shape[]): number {
  return shapes.reduce((sum, s) => sum + s.area(), 0);
}

const label = "circle";
label.
"""
# `label.` above: line 16, the cursor after the dot.
TS_CURSOR = (16, 6)


@pytest.fixture(scope="module")
def sb(make_sandbox_module, leap0_client):
    return leap0_client.sandboxes.get(make_sandbox_module(DEBIAN).id)


@pytest.fixture(scope="module")
def make_sandbox_module(client):
    factory = SandboxFactory(client)
    try:
        yield factory.create
    finally:
        factory.cleanup()


def project(sb, files: dict[str, str]) -> str:
    root = f"/workspace/p-{uuid.uuid4().hex[:8]}"
    sb.filesystem.mkdir(path=root, recursive=True)
    for name, text in files.items():
        sb.filesystem.write_file(path=f"{root}/{name}", content=text)
    return root


def server_gone(sb, program: str, timeout: float = 10.0) -> bool:
    """Whether no process of `program` is left in the sandbox (within `timeout`)."""
    deadline = time.time() + timeout
    while True:
        # `[x]yz` keeps pgrep from finding the shell that runs it.
        r = sb.process.execute(command=f"pgrep -af '[{program[0]}]{program[1:]}' || true")
        if not r.stdout.strip() or time.time() > deadline:
            return not r.stdout.strip()
        time.sleep(0.2)


def names(symbols) -> set[str]:
    """Every symbol name, nested ones included (DocumentSymbol or SymbolInformation)."""
    out: set[str] = set()
    for s in symbols or []:
        out.add(s["name"])
        out |= names(s.get("children"))
    return out


def labels(result) -> set[str]:
    items = result["items"] if isinstance(result, dict) else result
    return {i["label"] for i in items or []}


def test_python_completions_and_symbols(sb):
    root = project(sb, {"main.py": PY_SOURCE})
    path = f"{root}/main.py"
    args = {"language_id": "python", "path_to_project": root}
    assert sb.lsp.start(**args).success is True
    # Starting again is a no-op on the running server.
    assert sb.lsp.start(**args).success is True

    # No text: the server gets what the file in the sandbox holds.
    sb.lsp.did_open_path(**args, path=path)
    r = sb.lsp.completions_path(**args, path=path, line=PY_CURSOR[0], character=PY_CURSOR[1])
    assert r.error is None and r.jsonrpc == "2.0" and r.id is not None
    assert "path" in labels(r.result)

    r = sb.lsp.document_symbols_path(**args, path=path)
    assert r.error is None
    assert {"Greeter", "greet", "main"} <= names(r.result)

    # Opening again replaces the document: the new text is what the server sees.
    sb.lsp.did_open(**args, uri=f"file://{path}", text="def other():\n    pass\n", version=2)
    r = sb.lsp.document_symbols(**args, uri=f"file://{path}")
    assert names(r.result) == {"other"}

    sb.lsp.did_close_path(**args, path=path)
    assert sb.lsp.stop(**args).success is True
    assert server_gone(sb, "pyright")
    with pytest.raises(Leap0Error) as e:
        sb.lsp.completions_path(**args, path=path, line=0, character=0)
    assert e.value.status_code == 400 and "lsp.start" in str(e.value)
    # Stopping what is not running is done already.
    assert sb.lsp.stop(**args).success is True


def test_typescript_symbols_and_completions(sb):
    root = project(sb, {"shapes.ts": TS_SOURCE})
    uri = f"file://{root}/shapes.ts"
    args = {"language_id": "typescript", "path_to_project": root}
    assert sb.lsp.start(**args).success is True
    sb.lsp.did_open(**args, uri=uri, text=TS_SOURCE)

    r = sb.lsp.document_symbols(**args, uri=uri)
    assert r.error is None
    assert {"Shape", "Circle", "area", "total"} <= names(r.result)

    r = sb.lsp.completions(**args, uri=uri, line=TS_CURSOR[0], character=TS_CURSOR[1])
    assert r.error is None
    assert {"toUpperCase", "length"} <= labels(r.result)

    sb.lsp.did_close(**args, uri=uri)
    assert sb.lsp.stop(**args).success is True
    assert server_gone(sb, "typescript-language-server")


def test_a_server_that_dies_is_reported_and_can_be_started_again(sb):
    root = project(sb, {"a.py": "x = 1\n"})
    args = {"language_id": "python", "path_to_project": root}
    assert sb.lsp.start(**args).success is True
    sb.process.execute(command="pkill -9 -f '[p]yright'")
    with pytest.raises(Leap0Error) as e:
        for _ in range(50):  # until this side has seen the exit
            sb.lsp.document_symbols_path(**args, path=f"{root}/a.py")
            time.sleep(0.1)
    assert e.value.status_code == 502 and "exited" in str(e.value)
    # Reported once, then forgotten: a new start brings up a new server.
    assert sb.lsp.start(**args).success is True
    sb.lsp.did_open_path(**args, path=f"{root}/a.py")
    assert names(sb.lsp.document_symbols_path(**args, path=f"{root}/a.py").result) == {"x"}
    assert sb.lsp.stop(**args).success is True


def test_errors(sb):
    root = project(sb, {})
    with pytest.raises(Leap0Error) as e:
        sb.lsp.start(language_id="cobol", path_to_project=root)
    assert e.value.status_code == 400 and "language_id" in str(e.value)

    # Nothing started for this project yet.
    with pytest.raises(Leap0Error) as e:
        sb.lsp.did_open(language_id="python", path_to_project=root, uri=f"file://{root}/a.py", text="")
    assert e.value.status_code == 400

    with pytest.raises(Leap0Error) as e:
        sb.lsp.start(language_id="python", path_to_project=f"{root}/missing")
    assert e.value.status_code == 400 and "path_to_project" in str(e.value)


def test_template_without_language_servers(make_sandbox, leap0_client):
    bb = leap0_client.sandboxes.get(make_sandbox(BUSYBOX).id)
    with pytest.raises(Leap0Error) as e:
        bb.lsp.start(language_id="python", path_to_project="/")
    assert e.value.status_code == 400 and "not installed" in str(e.value)
