"""Tests for kernel.py, the in-sandbox code-interpreter driver.

Run:  python3 -m pytest crates/agent/src/interp/test_kernel.py
 (or: python3 crates/agent/src/interp/test_kernel.py)

The driver is spawned exactly like the agent does it: ``python -u -c <source>``
with pipes.  The interpreter is $SANDBOXD_TEST_PYTHON or the one running the
tests.  Every test runs against the stdlib path (SANDBOXD_KERNEL_IPYTHON=0) and,
when that interpreter can import IPython, against the IPython path as well.
"""

import base64
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(HERE, "kernel.py"), encoding="utf-8") as _f:
    SRC = _f.read()
PYTHON = os.environ.get("SANDBOXD_TEST_PYTHON") or sys.executable


def _importable(mod):
    return subprocess.run([PYTHON, "-c", "import " + mod],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


HAVE_IPYTHON = _importable("IPython")
HAVE_MPL = _importable("matplotlib")


class Kernel:
    def __init__(self, ipython):
        env = dict(os.environ)
        env["SANDBOXD_KERNEL_IPYTHON"] = "1" if ipython else "0"
        env.pop("MPLBACKEND", None)
        self.t0 = time.monotonic()
        self.p = subprocess.Popen([PYTHON, "-u", "-c", SRC], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        self.q = queue.Queue()
        self.lines = []
        threading.Thread(target=self._read, daemon=True).start()
        self.stderr = []
        threading.Thread(target=lambda: self.stderr.append(self.p.stderr.read()), daemon=True).start()
        self.next_id = 0
        self.ready = self.next_event(60)
        self.startup = time.monotonic() - self.t0

    def _read(self):
        for line in self.p.stdout:
            self.lines.append(line)
            ev = json.loads(line)   # a malformed line fails the test via the missing event
            self.q.put((time.monotonic(), ev))
        self.q.put((time.monotonic(), None))

    def next_event(self, timeout=10):
        t, ev = self.q.get(timeout=timeout)
        return ev

    def send(self, code, env=None):
        self.next_id += 1
        req = {"id": self.next_id, "code": code, "env": env}
        self.p.stdin.write((json.dumps(req) + "\n").encode())
        self.p.stdin.flush()
        return self.next_id

    def collect(self, rid, timeout=20):
        """(timestamp, event) pairs for request rid, up to and including done."""
        out = []
        deadline = time.monotonic() + timeout
        while True:
            t, ev = self.q.get(timeout=max(0.01, deadline - time.monotonic()))
            if ev is None:
                raise AssertionError("driver exited; stderr=%r" % self.stderr)
            if ev.get("id") != rid:
                continue
            out.append((t, ev))
            if ev["type"] == "done":
                return out

    def run(self, code, env=None, timeout=20):
        return [ev for _, ev in self.collect(self.send(code, env), timeout)]

    def close(self):
        if self.p.poll() is None:
            try:
                self.p.stdin.close()
            except OSError:
                pass
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        for f in (self.p.stdout, self.p.stderr):
            try:
                f.close()
            except Exception:
                pass


def text(events, kind="stdout"):
    return "".join(e["text"] for e in events if e["type"] == kind)


def of_type(events, kind):
    return [e for e in events if e["type"] == kind]


def done(events):
    assert events[-1]["type"] == "done", events
    assert len(of_type(events, "done")) == 1, events
    return events[-1]


class KernelTests:
    IPYTHON = False

    def setUp(self):
        self.k = Kernel(self.IPYTHON)

    def tearDown(self):
        self.k.close()

    # -- basics ------------------------------------------------------------
    def test_ready(self):
        r = self.k.ready
        self.assertEqual(r["type"], "ready")
        self.assertEqual(r["language"], "python")
        self.assertIs(r["ipython"], self.IPYTHON)
        self.assertRegex(r["version"], r"^3\.\d+\.\d+$")
        self.assertNotIn("log", r)

    def test_persistent_namespace_and_primary_result(self):
        ev = self.k.run("x = 41")
        self.assertEqual(of_type(ev, "result"), [])
        d1 = done(ev)
        self.assertTrue(d1["ok"])
        ev = self.k.run("x + 1")
        res = of_type(ev, "result")
        self.assertEqual(len(res), 1, ev)
        self.assertTrue(res[0]["is_primary"])
        self.assertEqual(res[0]["data"]["text/plain"], "42")
        d2 = done(ev)
        self.assertTrue(d2["ok"])
        self.assertEqual(d2["execution_count"], d1["execution_count"] + 1)
        ev = self.k.run("__name__")
        self.assertEqual(of_type(ev, "result")[0]["data"]["text/plain"], "'__main__'")

    def test_none_and_semicolon_give_no_result(self):
        self.assertEqual(of_type(self.k.run("None"), "result"), [])
        self.assertEqual(of_type(self.k.run("1 + 1;"), "result"), [])
        self.assertEqual(of_type(self.k.run("1 + 1 ; # quiet"), "result"), [])

    def test_print(self):
        ev = self.k.run("print('hello'); print('world', 1)\nimport sys; print('oops', file=sys.stderr)")
        self.assertEqual(text(ev), "hello\nworld 1\n")
        self.assertEqual(text(ev, "stderr"), "oops\n")
        self.assertTrue(done(ev)["ok"])

    def test_partial_line_is_flushed_before_done(self):
        ev = self.k.run("print('no newline', end='')")
        self.assertEqual(text(ev), "no newline")

    def test_streaming(self):
        rid = self.k.send("import time\nfor i in range(3):\n    print(i)\n    time.sleep(0.5)\n")
        evs = self.k.collect(rid)
        outs = [(t, e) for t, e in evs if e["type"] == "stdout"]
        self.assertEqual("".join(e["text"] for _, e in outs), "0\n1\n2\n")
        self.assertEqual(len(outs), 3, outs)
        t_done = evs[-1][0]
        self.assertGreater(outs[1][0] - outs[0][0], 0.3)
        self.assertGreater(outs[2][0] - outs[1][0], 0.3)
        self.assertGreater(t_done - outs[0][0], 0.8)

    def test_streaming_partial_line(self):
        rid = self.k.send("import time\nprint('loading', end='')\ntime.sleep(1)\nprint(' ok')")
        evs = self.k.collect(rid)
        first = [t for t, e in evs if e["type"] == "stdout"][0]
        self.assertGreater(evs[-1][0] - first, 0.7)
        self.assertEqual(text([e for _, e in evs]), "loading ok\n")

    def test_raw_fd_output(self):
        ev = self.k.run("import os\nos.system('echo raw')\nos.system('echo rawerr 1>&2')\nNone")
        self.assertEqual(text(ev), "raw\n")
        self.assertEqual(text(ev, "stderr"), "rawerr\n")
        ev = self.k.run("import subprocess\nsubprocess.run(['printf', 'sub'])\nos.write(1, b'direct\\n')\nNone")
        self.assertEqual(text(ev), "subdirect\n")

    def test_raw_and_python_output_ordering(self):
        ev = self.k.run("import os\nfor i in range(20):\n    print('py%d' % i)\n    os.system('echo sh%d' % i)")
        expected = "".join("py%d\nsh%d\n" % (i, i) for i in range(20))
        self.assertEqual(text(ev), expected)

    def test_multiprocessing_child_output(self):
        ev = self.k.run("import multiprocessing as mp\n"
                        "p = mp.get_context('fork').Process(target=print, args=('from child',))\n"
                        "p.start(); p.join(); p.exitcode")
        self.assertEqual(text(ev), "from child\n")
        self.assertEqual(of_type(ev, "result")[0]["data"]["text/plain"], "0")

    def test_stdin_is_devnull(self):
        ev = self.k.run("import sys, os\n(sys.stdin.read(), os.read(0, 10))")
        self.assertEqual(of_type(ev, "result")[0]["data"]["text/plain"], "('', b'')")

    # -- errors --------------------------------------------------------------
    def test_exception(self):
        self.k.run("def f(a):\n    return 1 / a\n")
        ev = self.k.run("y = 3\nf(0)")
        errs = of_type(ev, "error")
        self.assertEqual(len(errs), 1, ev)
        e = errs[0]
        self.assertEqual(e["name"], "ZeroDivisionError")
        self.assertEqual(e["value"], "division by zero")
        tb = e["traceback"]
        self.assertEqual(tb[0], "Traceback (most recent call last):")
        self.assertEqual(tb[-1], "ZeroDivisionError: division by zero")
        self.assertIn("    return 1 / a", tb)
        self.assertIn("    f(0)", tb)
        self.assertTrue(any(line.startswith('  File "<cell') for line in tb), tb)
        joined = "\n".join(tb)
        self.assertNotIn("<string>", joined)       # driver frames removed
        self.assertNotIn("interactiveshell", joined)
        self.assertNotIn("\x1b[", joined)         # no ANSI colours
        self.assertFalse(done(ev)["ok"])
        # the context survives
        ev = self.k.run("y")
        self.assertEqual(of_type(ev, "result")[0]["data"]["text/plain"], "3")

    def test_syntax_error(self):
        ev = self.k.run("x = (1,\nprint('never')")
        e = of_type(ev, "error")[0]
        self.assertEqual(e["name"], "SyntaxError")
        self.assertTrue(e["traceback"][-1].startswith("SyntaxError"), e)
        self.assertEqual(text(ev), "")
        self.assertFalse(done(ev)["ok"])
        ev = self.k.run("def f(:\n  pass")
        self.assertEqual(of_type(ev, "error")[0]["name"], "SyntaxError")

    def test_output_before_error_is_kept(self):
        ev = self.k.run("print('before')\nraise KeyError('k')")
        self.assertEqual(text(ev), "before\n")
        types_ = [e["type"] for e in ev]
        self.assertEqual(types_, ["stdout", "error", "done"])
        self.assertEqual(ev[1]["name"], "KeyError")

    # -- interrupts -------------------------------------------------------------
    def test_sigint_interrupts_sleep(self):
        self.k.run("x = 41")
        rid = self.k.send("import time\nprint('start', flush=True)\ntime.sleep(30)\nprint('not reached')")
        t, ev = self.k.q.get(timeout=20)
        self.assertEqual((ev["id"], ev["type"], ev["text"]), (rid, "stdout", "start\n"))
        time.sleep(0.1)
        t_sig = time.monotonic()
        self.k.p.send_signal(signal.SIGINT)
        evs = self.k.collect(rid, timeout=5)
        errs = [(t, e) for t, e in evs if e["type"] == "error"]
        self.assertEqual(len(errs), 1, evs)
        self.assertEqual(errs[0][1]["name"], "KeyboardInterrupt")
        self.assertLess(errs[0][0] - t_sig, 1.0)
        self.assertFalse(evs[-1][1]["ok"])
        self.assertNotIn("not reached", text([e for _, e in evs]))
        ev = self.k.run("x")
        self.assertEqual(of_type(ev, "result")[0]["data"]["text/plain"], "41")

    def test_sigint_while_idle_is_ignored(self):
        self.k.run("z = 5")
        for _ in range(3):
            self.k.p.send_signal(signal.SIGINT)
            time.sleep(0.1)
        self.assertIsNone(self.k.p.poll())
        ev = self.k.run("z * 2")
        self.assertEqual(of_type(ev, "result")[0]["data"]["text/plain"], "10")
        self.assertTrue(done(ev)["ok"])
        self.assertEqual(of_type(ev, "error"), [])

    def test_sigint_during_heavy_output_keeps_protocol_intact(self):
        rid = self.k.send("import sys\nwhile True:\n    print('x' * 200)\n    sys.stdout.flush()")
        t, ev = self.k.q.get(timeout=20)
        self.assertEqual(ev["id"], rid)
        time.sleep(0.3)
        self.k.p.send_signal(signal.SIGINT)
        evs = [e for _, e in self.k.collect(rid, timeout=10)]
        self.assertEqual(of_type(evs, "error")[-1]["name"], "KeyboardInterrupt")
        self.assertFalse(done(evs)["ok"])
        self.assertEqual(set(text(evs).replace("\n", "")), {"x"})
        ev = self.k.run("'alive'")
        self.assertEqual(of_type(ev, "result")[0]["data"]["text/plain"], "'alive'")

    def test_sigint_interrupts_os_system(self):
        ev = self.k.run("import os\n(os.system('exit 3'), os.system('kill -9 $$'))")
        self.assertEqual(of_type(ev, "result")[0]["data"]["text/plain"], "(768, 9)")
        rid = self.k.send("import os\nprint('go', flush=True)\nos.system('sleep 30')")
        t, ev = self.k.q.get(timeout=20)
        self.assertEqual(ev["text"], "go\n")
        time.sleep(0.2)
        t_sig = time.monotonic()
        self.k.p.send_signal(signal.SIGINT)
        evs = self.k.collect(rid, timeout=5)
        self.assertLess(evs[-1][0] - t_sig, 1.5)
        self.assertEqual([e["name"] for _, e in evs if e["type"] == "error"], ["KeyboardInterrupt"])

    def test_c_level_stdio_is_flushed(self):
        ev = self.k.run("import ctypes\nctypes.CDLL(None).printf(b'from C %d\\n', 7)\nNone")
        self.assertEqual(text(ev), "from C 7\n")

    def test_sigint_storm(self):
        """SIGINTs at random moments (also inside driver/IPython bookkeeping)
        never corrupt the protocol, lose a done, or wedge the context."""
        import random
        rng = random.Random(1234)
        stop = threading.Event()

        def storm():
            while not stop.is_set():
                time.sleep(rng.random() * 0.004)
                try:
                    self.k.p.send_signal(signal.SIGINT)
                except OSError:
                    return
        t = threading.Thread(target=storm, daemon=True)
        t.start()
        cells = ["1+1", "print('a' * 50)\n2", "import os; os.system('echo x')",
                 "display(3)", "for i in range(30): print(i)", "raise ValueError(1)"]
        try:
            for i in range(300):
                ev = self.k.run(cells[i % len(cells)], timeout=20)
                done(ev)
        finally:
            stop.set()
            t.join()
        time.sleep(0.05)
        ev = self.k.run("'alive'")
        self.assertEqual(of_type(ev, "result")[0]["data"]["text/plain"], "'alive'")

    def test_user_sigint_handler_is_reset(self):
        self.k.run("import signal\nsignal.signal(signal.SIGINT, signal.SIG_DFL)")
        self.k.p.send_signal(signal.SIGINT)
        time.sleep(0.2)
        self.assertIsNone(self.k.p.poll())
        self.assertTrue(done(self.k.run("1"))["ok"])

    # -- rich output ------------------------------------------------------------
    RICH = (
        "class Rich:\n"
        "    def _repr_html_(self):\n"
        "        return '<b>rich</b>'\n"
        "    def _repr_png_(self):\n"
        "        return b'\\x89PNG\\r\\n\\x1a\\nfake'\n"
        "    def __repr__(self):\n"
        "        return 'Rich()'\n"
    )

    def test_rich_result(self):
        self.k.run(self.RICH)
        ev = self.k.run("Rich()")
        res = of_type(ev, "result")
        self.assertEqual(len(res), 1, ev)
        data = res[0]["data"]
        self.assertTrue(res[0]["is_primary"])
        self.assertEqual(data["text/plain"], "Rich()")
        self.assertEqual(data["text/html"], "<b>rich</b>")
        self.assertEqual(base64.b64decode(data["image/png"]), b"\x89PNG\r\n\x1a\nfake")

    def test_display_gives_non_primary_results(self):
        self.k.run(self.RICH)
        ev = self.k.run("print('a')\ndisplay(Rich())\nprint('b')\n7")
        self.assertEqual([e["type"] for e in ev], ["stdout", "result", "stdout", "result", "done"])
        self.assertFalse(ev[1]["is_primary"])
        self.assertEqual(ev[1]["data"]["text/html"], "<b>rich</b>")
        self.assertTrue(ev[3]["is_primary"])
        self.assertEqual(ev[3]["data"]["text/plain"], "7")

    def test_other_mime_types(self):
        ev = self.k.run(
            "class M:\n"
            "    def _repr_markdown_(self): return '# hi'\n"
            "    def _repr_json_(self): return {'a': [1, 2]}\n"
            "    def _repr_svg_(self): return '<svg></svg>'\n"
            "    def _repr_latex_(self): return '$x$'\n"
            "M()")
        data = of_type(ev, "result")[0]["data"]
        self.assertEqual(data["text/markdown"], "# hi")
        self.assertEqual(data["application/json"], {"a": [1, 2]})
        self.assertEqual(data["image/svg+xml"], "<svg></svg>")
        self.assertEqual(data["text/latex"], "$x$")
        self.assertIn("text/plain", data)

    def test_unicode(self):
        ev = self.k.run("print('h\u00e9llo \u2603 \U0001f600')\n'\u00fc'")
        self.assertEqual(text(ev), "h\u00e9llo \u2603 \U0001f600\n")
        self.assertEqual(of_type(ev, "result")[0]["data"]["text/plain"], "'\u00fc'")
        ev = self.k.run("import os\nos.write(1, 'caf\u00e9\\n'.encode())\nNone")
        self.assertEqual(text(ev), "caf\u00e9\n")

    @unittest.skipUnless(HAVE_MPL, "matplotlib not importable")
    def test_matplotlib_figures(self):
        ev = self.k.run("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()\n"
                        "plt.plot([3, 2, 1])\nplt.show()\nplt.figure(); plt.plot([0, 1]); None")
        imgs = [e for e in of_type(ev, "result") if "image/png" in e["data"]]
        self.assertEqual(len(imgs), 3, [e["type"] for e in ev])
        for e in imgs:
            self.assertFalse(e["is_primary"])
            self.assertTrue(base64.b64decode(e["data"]["image/png"]).startswith(b"\x89PNG"))
        self.assertEqual(text(ev, "stderr"), "")
        ev = self.k.run("len(plt.get_fignums())")
        self.assertEqual(of_type(ev, "result")[0]["data"]["text/plain"], "0")

    def test_common_notebook_syntax(self):
        ev = self.k.run("!echo bang\nfor i in range(2):\n    !echo loop\nv = 5\nv")
        self.assertEqual(text(ev).replace("\r\n", "\n"), "bang\nloop\nloop\n")
        self.assertEqual(of_type(ev, "result")[0]["data"]["text/plain"], "5")
        self.assertTrue(done(ev)["ok"])
        ev = self.k.run("%pip --version")
        self.assertIn("pip ", text(ev))

    @unittest.skipUnless(HAVE_MPL, "matplotlib not importable")
    def test_matplotlib_inline_magic(self):
        ev = self.k.run("%matplotlib inline\nimport matplotlib.pyplot as plt\nplt.plot([1, 2]); plt.show()")
        imgs = [e for e in of_type(ev, "result") if "image/png" in e["data"]]
        self.assertEqual(len(imgs), 1, ev)
        self.assertFalse(imgs[0]["is_primary"])
        self.assertTrue(done(ev)["ok"])

    # -- environment, async, shutdown --------------------------------------------
    def test_env_is_applied_and_persists(self):
        ev = self.k.run("import os\nos.environ['SBX_A']", env={"SBX_A": "one"})
        self.assertEqual(of_type(ev, "result")[0]["data"]["text/plain"], "'one'")
        ev = self.k.run("import os\nos.system('echo $SBX_A')\nos.environ.get('SBX_A')")
        self.assertEqual(text(ev), "one\n")
        self.assertEqual(of_type(ev, "result")[0]["data"]["text/plain"], "'one'")
        ev = self.k.run("os.environ.get('SBX_A')", env={"SBX_A": None})
        self.assertEqual(of_type(ev, "result"), [])
        ev = self.k.run("1", env={"BAD=NAME": "x"})
        self.assertEqual(len(of_type(ev, "error")), 1)
        self.assertFalse(done(ev)["ok"])
        self.assertTrue(done(self.k.run("1"))["ok"])

    def test_top_level_await(self):
        ev = self.k.run("import asyncio\nawait asyncio.sleep(0.01)\nv = await asyncio.sleep(0, result=6)\nv * 7")
        self.assertEqual(of_type(ev, "result")[0]["data"]["text/plain"], "42")

    def test_stdin_eof_exits_zero(self):
        self.assertTrue(done(self.k.run("1"))["ok"])
        self.k.p.stdin.close()
        self.assertEqual(self.k.p.wait(10), 0)

    def test_protocol_error(self):
        self.k.p.stdin.write(b"this is not json\n")
        self.k.p.stdin.flush()
        ev = self.k.next_event()
        self.assertEqual((ev["type"], ev["name"]), ("error", "ProtocolError"))
        self.assertEqual(self.k.next_event()["type"], "done")
        self.assertTrue(done(self.k.run("1"))["ok"])

    def test_latency(self):
        for _ in range(20):
            self.k.run("1+1")
        n = 300
        t = time.perf_counter()
        for _ in range(n):
            ev = self.k.run("1+1")
        per = (time.perf_counter() - t) / n
        self.assertEqual(ev[0]["data"]["text/plain"], "2")
        sys.stderr.write("\n[%s] startup %.0f ms, round trip for 1+1: %.0f us\n"
                         % ("ipython" if self.IPYTHON else "stdlib", self.k.startup * 1e3, per * 1e6))
        self.assertLess(per, 0.02)


class StdlibKernelTest(KernelTests, unittest.TestCase):
    IPYTHON = False

    def test_magics_absent(self):
        ev = self.k.run("%time 1")
        self.assertEqual(of_type(ev, "error")[0]["name"], "SyntaxError")

    def test_matplotlib_magic_is_ignored(self):
        # (IPython itself needs matplotlib for this magic.)
        ev = self.k.run("%matplotlib inline\n3")
        self.assertEqual(of_type(ev, "result")[0]["data"]["text/plain"], "3")


@unittest.skipUnless(HAVE_IPYTHON, "IPython not importable by %s" % PYTHON)
class IPythonKernelTest(KernelTests, unittest.TestCase):
    IPYTHON = True

    def test_shell_escape_and_magic(self):
        ev = self.k.run("!echo bang\nv = %time 21 * 2\nv")
        self.assertIn("bang", text(ev))
        self.assertEqual(of_type(ev, "result")[0]["data"]["text/plain"], "42")
        self.assertTrue(done(ev)["ok"])


if __name__ == "__main__":
    unittest.main()
