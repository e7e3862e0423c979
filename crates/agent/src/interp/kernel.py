"""sandboxd code-interpreter driver (one process per interpreter "context").

Started by the in-sandbox agent as ``python3 -u -c <this file>`` with stdin,
stdout and stderr connected to pipes.  Python 3.11, stdlib only; IPython is
used when importable.  Keep this file well below 128 KiB: it travels as one
argv string (Linux MAX_ARG_STRLEN).

Protocol (one JSON object per line, UTF-8):

* requests on stdin:  {"id": <int>, "code": "<source>", "env": {"K": "V"} | null}
  (an env value of null unsets the variable; env changes persist).
* events on the original stdout fd:
    {"type":"ready","language":"python","version":"3.11.2","ipython":bool,"pid":int}
        first line, once.  If something wrote to stdout/stderr while the
        driver started, that text is attached as "log".
    {"id":n,"type":"stdout"|"stderr","text":"..."}
    {"id":n,"type":"result","is_primary":bool,"data":{mime: value}}
        binary mime types (image/png, image/jpeg, application/pdf) are base64.
    {"id":n,"type":"error","name":"ZeroDivisionError","value":"...",
     "traceback":["Traceback (most recent call last):", ...]}
    {"id":n,"type":"done","execution_count":k,"ok":bool}
        exactly one per request, after every stdout/stderr/result/error event
        the request produced (raw fd 1/2 output of subprocesses included).
  Output written by background threads/processes after "done" carries the id
  of the most recent request.  A line that is not valid JSON gets
  {"id":null,"type":"error","name":"ProtocolError",...} + a "done".

Signals: SIGINT while a cell runs raises KeyboardInterrupt in it (error event
name "KeyboardInterrupt", then done ok=false); SIGINT while idle is ignored.
The interrupt is raised only while user code runs; one that arrives inside
driver/IPython bookkeeping (locks, protocol writes) is delivered as soon as
that section ends, or at the end of the cell.  SIGUSR1 dumps all thread
stacks (faulthandler) to the driver's original stderr.
os.system is replaced by an equivalent that SIGINT can interrupt (libc
system() ignores SIGINT while its child runs).  User code can still swallow
KeyboardInterrupt or block SIGINT, so the agent must be prepared to escalate
(SIGKILL the driver's process group).  stdin EOF -> exit status 0.

Two execution paths, identical events:
* IPython (if importable; force off with SANDBOXD_KERNEL_IPYTHON=0): cells run
  through InteractiveShell.run_cell, so magics, !shell, display() and
  IPython's formatters work.  History is in-memory; tracebacks are formatted
  with the stdlib (same shape as the stdlib path, cells named "<cell N>").
  IPython.terminal.embed (prompt_toolkit) is skipped during start-up.
* stdlib: ast-based, Jupyter-like (the value of a final expression statement
  is the primary result; a trailing ';' suppresses it; top-level await works).
  IPython features (magics, get_ipython, In/Out, pretty-printing) are absent,
  except: lines `!cmd` and `%pip ...` run via the shell and `%matplotlib ...`
  is ignored (only when the cell is not valid Python as written).  A builtin
  display(*objs, raw=False, include=None, exclude=None) is provided.
Matplotlib (MPLBACKEND=Agg): plt.show() and the end of each cell emit the open
figures as image/png results (non-primary) and close them.
"""

import ast
import base64
import builtins
import io
import json
import linecache
import os
import select
import signal
import sys
import threading
import time
import traceback
import types
import warnings

_G = globals()
_DRIVER_MODULE = sys.modules.get("__main__")
_MAIN_TID = threading.get_ident()
_VERSION = "%d.%d.%d" % sys.version_info[:3]

os.environ["MPLBACKEND"] = "Agg"
os.environ.setdefault("PYTHONUNBUFFERED", "1")  # child pythons stream too
warnings.filterwarnings("ignore", message=".*non-interactive.*cannot be shown")
warnings.filterwarnings("ignore", message="To exit: use 'exit'")

# ----------------------------------------------------------------- file descriptors
_PROTO_IN = os.dup(0)    # requests (os.dup => non-inheritable)
_PROTO_OUT = os.dup(1)   # events
_ORIG_ERR = os.dup(2)    # the agent's stderr pipe: fatal driver diagnostics


def _setup_fds():
    nul = os.open(os.devnull, os.O_RDONLY)
    os.dup2(nul, 0)
    os.close(nul)
    fds = []
    for target in (1, 2):
        r, w = os.pipe()
        try:
            import fcntl
            fcntl.fcntl(r, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
        except Exception:
            pass
        os.dup2(w, target)   # inheritable: children write here
        os.close(w)
        os.set_blocking(r, False)
        fds.append(r)
    return fds


_R_OUT, _R_ERR = _setup_fds()
try:
    import faulthandler
    faulthandler.enable(file=_ORIG_ERR, all_threads=True)
    # `kill -USR1 <pid>` dumps every thread's stack to the agent's stderr pipe.
    faulthandler.register(signal.SIGUSR1, file=_ORIG_ERR, all_threads=True)
except Exception:
    pass
try:
    import ctypes
    _fflush = ctypes.CDLL(None).fflush
    _fflush.argtypes = [ctypes.c_void_p]
except Exception:
    _fflush = None

# ----------------------------------------------------------------- event output
_plock = threading.Lock()
_hold = []        # events produced before "ready" (becomes None afterwards)
_cur_id = None    # id of the request being (or last) executed
_forked = False   # True in a child created by os.fork() (multiprocessing)


def _json_default(o):
    if isinstance(o, (bytes, bytearray, memoryview)):
        return base64.b64encode(o).decode("ascii")
    if isinstance(o, (set, frozenset)):
        return list(o)
    return repr(o)


_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"),
                           allow_nan=False, default=_json_default).encode


def _sanitize(o, depth=0):
    if depth > 100:
        return None
    if isinstance(o, float):
        return o if o == o and o not in (float("inf"), float("-inf")) else None
    if isinstance(o, dict):
        return {str(k): _sanitize(v, depth + 1) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_sanitize(v, depth + 1) for v in o]
    if o is None or isinstance(o, (str, int, bool)):
        return o
    return _sanitize(_json_default(o), depth + 1)


def _write_all(data):
    view = memoryview(data)
    while view:
        try:
            n = os.write(_PROTO_OUT, view)
        except BrokenPipeError:
            os._exit(0)   # the agent is gone
        view = view[n:]


def _emit(ev):
    if _forked:
        return _emit_forked(ev)
    try:
        line = _encode(ev)
    except (ValueError, TypeError, RecursionError):
        line = _encode(_sanitize(ev))
    data = (line + "\n").encode("utf-8", "replace")
    with _plock:
        if _hold is not None:
            _hold.append(ev)
            return
        _write_all(data)


def _emit_forked(ev):
    # In a fork()ed child (e.g. multiprocessing): never touch the protocol;
    # write text to the raw fds, the parent forwards it.
    kind = ev.get("type")
    if kind in ("stdout", "stderr"):
        text = ev["text"]
    elif kind == "result":
        text = str(ev["data"].get("text/plain", "")) + "\n"
    elif kind == "error":
        text = "\n".join(ev["traceback"]) + "\n"
    else:
        return
    data = text.encode("utf-8", "replace")
    while data:
        data = data[os.write(2 if kind in ("stderr", "error") else 1, data):]


# ----------------------------------------------------------------- raw fd forwarding
_rcond = threading.Condition(threading.Lock())
_poll0 = select.poll()
_poll0.register(_R_OUT, select.POLLIN)
_poll0.register(_R_ERR, select.POLLIN)


def _raw_reader():
    try:
        _raw_reader_loop()
    except BaseException:
        try:
            os.write(_ORIG_ERR, ("sandboxd kernel: raw output reader died\n"
                                 + traceback.format_exc()).encode("utf-8", "replace"))
        except Exception:
            pass


def _raw_reader_loop():
    import codecs
    p = select.poll()
    route = {}
    for fd, stream in ((_R_OUT, _stdout), (_R_ERR, _stderr)):
        p.register(fd, select.POLLIN)
        route[fd] = (codecs.getincrementaldecoder("utf-8")("replace"), stream)
    while route:
        ready = p.poll()
        with _rcond:
            for fd, _ev in ready:
                if fd not in route:
                    continue
                dec, stream = route[fd]
                try:
                    data = os.read(fd, 1 << 18)
                except BlockingIOError:
                    continue
                if not data:   # every writer closed fd 1/2
                    p.unregister(fd)
                    _poll0.unregister(fd)
                    del route[fd]
                    continue
                text = dec.decode(data)
                if text:
                    stream._flush_buf()   # earlier Python-level text goes first
                    _emit({"id": _cur_id, "type": stream.kind, "text": text})
            _rcond.notify_all()


def _drain_raw():
    """Wait until everything already written to fd 1/2 has been emitted."""
    if _forked:
        return
    with _rcond:
        while True:
            for _fd, ev in _poll0.poll(0):
                if ev & select.POLLIN:
                    break
            else:
                return
            if not _rcond.wait(1.0) and not _reader_thread.is_alive():
                return


def _flush_loop():
    while True:
        _flush_evt.wait()
        time.sleep(0.05)
        _flush_evt.clear()
        _stdout._flush_buf()
        _stderr._flush_buf()


def _sync():
    """Make every byte of output produced so far an event (in order)."""
    if _fflush is not None:
        _fflush(None)   # C-level stdio buffers of this process
    _drain_raw()
    _stdout._flush_buf()
    _stderr._flush_buf()


# ----------------------------------------------------------------- sys.stdout / sys.stderr
class _BinaryWriter(io.RawIOBase):
    def __init__(self, stream):
        import codecs
        self._stream = stream
        self._dec = codecs.getincrementaldecoder("utf-8")("replace")

    def writable(self):
        return True

    def fileno(self):
        return self._stream.fileno()

    def write(self, b):
        n = memoryview(b).nbytes
        text = self._dec.decode(bytes(b))
        if text:
            self._stream.write(text)
        return n

    def flush(self):
        self._stream.flush()

    def close(self):
        self.flush()


class _Stream(io.TextIOBase):
    """Text stream that turns writes into stdout/stderr events.

    Emits at once when the text contains a newline (or >8 KiB is buffered),
    otherwise within 50 ms, on flush(), and before any result/error/done.
    """

    encoding = "utf-8"
    errors = "replace"
    newlines = None
    line_buffering = True
    write_through = True

    def __init__(self, kind, fd):
        self.kind = kind
        self.name = "<%s>" % kind
        self._fd = fd
        self._lock = threading.Lock()
        self._buf = []
        self._n = 0
        self.buffer = _BinaryWriter(self)

    def fileno(self):
        return self._fd

    def isatty(self):
        return False

    def writable(self):
        return True

    def readable(self):
        return False

    def seekable(self):
        return False

    def reconfigure(self, **kwargs):
        pass

    def close(self):
        self.flush()

    def write(self, s):
        if type(s) is not str and not isinstance(s, str):
            raise TypeError("write() argument must be str, not %s" % type(s).__name__)
        n = len(s)
        if n:
            _drain_raw()
            with self._lock:
                self._buf.append(s)
                self._n += n
                if self._n > 8192 or "\n" in s:
                    self._emit_locked()
                elif len(self._buf) == 1:
                    _flush_evt.set()
            if _pending_int:
                _check_pending()
        return n

    def writelines(self, lines):
        for s in lines:
            self.write(s)

    def _emit_locked(self):
        buf = self._buf
        text = buf[0] if len(buf) == 1 else "".join(buf)
        self._buf = []
        self._n = 0
        _emit({"id": _cur_id, "type": self.kind, "text": text})

    def _flush_buf(self):
        if self._buf:
            with self._lock:
                if self._buf:
                    self._emit_locked()

    def flush(self):
        if self._buf:
            _drain_raw()
            self._flush_buf()
        if _pending_int:
            _check_pending()


_stdout = _Stream("stdout", 1)
_stderr = _Stream("stderr", 2)
_flush_evt = threading.Event()
sys.stdout = _stdout
sys.stderr = _stderr


def _after_fork_child():
    global _forked
    _forked = True
    for fd in (_PROTO_IN, _PROTO_OUT, _R_OUT, _R_ERR):
        try:
            os.close(fd)
        except OSError:
            pass
    for s in (_stdout, _stderr):
        s._lock = threading.Lock()
        s._buf = []
        s._n = 0


os.register_at_fork(after_in_child=_after_fork_child)

# ----------------------------------------------------------------- SIGINT
_in_cell = False        # a request is being executed
_running = False        # user code may be interrupted right now (main thread)
_pending_int = False    # SIGINT to deliver as soon as user code may be interrupted
_CRIT = set()           # code objects of driver functions that must not be interrupted


def _on_sigint(signum, frame):
    # KeyboardInterrupt is raised only inside user code: raising it inside
    # driver or IPython machinery could leave a lock acquired (the classic
    # `with lock:` race) and deadlock the context later.
    global _pending_int
    if not _in_cell:
        return   # idle: ignore
    if not _running:
        _pending_int = True   # e.g. IPython bookkeeping between statements
        return
    f = frame
    while f is not None:
        if f.f_code in _CRIT:
            _pending_int = True   # raised when the critical section ends
            return
        f = f.f_back
    raise KeyboardInterrupt


def _check_pending():
    global _pending_int
    if _pending_int and _running and threading.get_ident() == _MAIN_TID:
        _pending_int = False
        raise KeyboardInterrupt


def _raise_if_pending():
    global _pending_int
    if _pending_int:
        _pending_int = False
        raise KeyboardInterrupt


_orig_system = os.system


def _system(command):
    """os.system() that SIGINT can stop.

    libc system() ignores SIGINT in the caller until the child exits, so a
    timed-out `os.system("pip install ...")` could not be interrupted.  Same
    return value (wait status) as os.system; the child stays in our process
    group.  On KeyboardInterrupt the child gets SIGINT, then SIGKILL.
    """
    import subprocess
    p = subprocess.Popen(command, shell=True)
    try:
        rc = p.wait()
    except BaseException:
        try:
            p.send_signal(signal.SIGINT)
            p.wait(0.25)
        except BaseException:
            pass
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        raise
    return rc << 8 if rc >= 0 else -rc


_system.__wrapped__ = _orig_system
os.system = _system

# ----------------------------------------------------------------- rich results
_BINARY_MIMES = ("image/png", "image/jpeg", "application/pdf")
_MIME_METHODS = (
    ("text/html", "_repr_html_"),
    ("text/markdown", "_repr_markdown_"),
    ("image/svg+xml", "_repr_svg_"),
    ("image/png", "_repr_png_"),
    ("image/jpeg", "_repr_jpeg_"),
    ("application/pdf", "_repr_pdf_"),
    ("text/latex", "_repr_latex_"),
    ("application/json", "_repr_json_"),
    ("application/javascript", "_repr_javascript_"),
)
_PLAIN_TYPES = frozenset((int, float, complex, bool, str, bytes, bytearray, list,
                          tuple, dict, set, frozenset, range, type(None)))


def _clean_bundle(data):
    out = {}
    for mime, v in data.items():
        if isinstance(v, (bytes, bytearray, memoryview)):
            if mime in _BINARY_MIMES or not mime.startswith("text/"):
                v = base64.b64encode(v).decode("ascii")
            else:
                v = bytes(v).decode("utf-8", "replace")
        elif mime == "application/json" and isinstance(v, str):
            try:
                v = json.loads(v)
            except ValueError:
                pass
        out[mime] = v
    return out


def _emit_result(data, primary):
    _sync()
    _emit({"id": _cur_id, "type": "result", "is_primary": primary,
           "data": _clean_bundle(data)})
    if _pending_int:
        _check_pending()


def _repr_failed():
    # Like IPython: a failing formatter shows the error but the cell goes on.
    e = sys.exc_info()[1]
    if not isinstance(e, NotImplementedError):
        _emit_error(e)


def _bundle(obj, include=None, exclude=None):
    """Mime bundle from the _repr_*_ protocol (stdlib path)."""
    data = {}
    if type(obj) not in _PLAIN_TYPES and not isinstance(obj, type):
        try:
            canary = getattr(obj, "_ipython_canary_method_should_not_exist_", None)
        except Exception:
            canary = True
        if canary is None:
            try:
                m = getattr(obj, "_repr_mimebundle_", None)
            except Exception:
                m = None
            if callable(m):
                try:
                    r = m(include=include, exclude=exclude)
                    if isinstance(r, tuple):
                        r = r[0]
                    if isinstance(r, dict):
                        data.update(r)
                except Exception:
                    _repr_failed()
            for mime, name in _MIME_METHODS:
                if mime in data:
                    continue
                try:
                    m = getattr(obj, name, None)
                except Exception:
                    m = None
                if not callable(m):
                    continue
                try:
                    r = m()
                except Exception:
                    _repr_failed()
                    continue
                if isinstance(r, tuple):
                    r = r[0]
                if r is not None:
                    data[mime] = r
    if "text/plain" not in data:
        data["text/plain"] = repr(obj)
    if include:
        data = {k: v for k, v in data.items() if k in include}
    if exclude:
        data = {k: v for k, v in data.items() if k not in exclude}
    return data


def _ipython_display(obj):
    try:
        m = getattr(obj, "_ipython_display_", None)
    except Exception:
        return False
    if callable(m) and not isinstance(obj, type):
        m()
        return True
    return False


def display(*objs, include=None, exclude=None, metadata=None, transient=None,
            display_id=None, raw=False, clear=False, **kwargs):
    """Show objects as rich (non-primary) results, like IPython's display()."""
    for obj in objs:
        if raw:
            data = obj if isinstance(obj, dict) else {"text/plain": str(obj)}
        elif _ipython_display(obj):
            continue
        else:
            data = _bundle(obj, include, exclude)
        _emit_result(data, False)


# ----------------------------------------------------------------- matplotlib
def _patch_pyplot(plt):
    orig_show = plt.show

    def show(*args, **kwargs):
        if _running and _agg_backend(plt):
            _flush_figures(True)
            return None
        return orig_show(*args, **kwargs)

    show.__doc__ = orig_show.__doc__
    show.__wrapped__ = orig_show
    plt.show = show


def _agg_backend(plt):
    try:
        return str(plt.get_backend()).lower() == "agg"
    except Exception:
        return False


def _flush_figures(render):
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is None or not _agg_backend(plt):
        return
    try:
        if render:
            for num in plt.get_fignums():
                fig = plt.figure(num)
                buf = io.BytesIO()
                fig.savefig(buf, format="png", bbox_inches="tight")
                _emit_result({"text/plain": repr(fig), "image/png": buf.getvalue()}, False)
    finally:
        plt.close("all")


class _PyplotImportHook:
    """One-shot meta-path hook: patch pyplot.show right after pyplot is imported."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "matplotlib.pyplot":
            return None
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass
        import importlib.util
        spec = importlib.util.find_spec(fullname)
        loader = getattr(spec, "loader", None)
        if loader is not None and hasattr(loader, "exec_module"):
            orig = loader.exec_module

            def exec_module(module):
                orig(module)
                try:
                    _patch_pyplot(module)
                except Exception:
                    pass

            try:
                loader.exec_module = exec_module
            except Exception:
                pass
        return spec


if "matplotlib.pyplot" in sys.modules:
    _patch_pyplot(sys.modules["matplotlib.pyplot"])
else:
    sys.meta_path.insert(0, _PyplotImportHook())

# ----------------------------------------------------------------- errors
_INTERNAL_PREFIXES = ("IPython.", "asyncio.")


def _strip_tb(tb):
    frames = []
    t = tb
    while t is not None:
        frames.append(t)
        t = t.tb_next
    kept = [t for t in frames if t.tb_frame.f_globals is not _G]
    i = 0
    while i < len(kept) and str(kept[i].tb_frame.f_globals.get("__name__", "")).startswith(_INTERNAL_PREFIXES):
        i += 1
    kept = kept[i:]
    if len(kept) == len(frames):
        return tb
    new = None
    for t in reversed(kept):
        new = types.TracebackType(new, t.tb_frame, t.tb_lasti, t.tb_lineno)
    return new


def _format_exc(e, tb=False):
    """Plain-text traceback lines without driver frames. tb=False: use e's."""
    if tb is not False:
        try:
            e.__traceback__ = tb
        except Exception:
            pass
    seen = set()
    todo = [e]
    while todo:
        x = todo.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        try:
            x.__traceback__ = _strip_tb(x.__traceback__)
        except Exception:
            pass
        todo.append(x.__cause__)
        todo.append(x.__context__)
    try:
        chunks = traceback.TracebackException(type(e), e, e.__traceback__,
                                              compact=True).format()
        return "".join(chunks).rstrip("\n").split("\n")
    except Exception:
        return ["%s: %s" % (type(e).__name__, _safe_str(e))]


def _safe_str(e):
    try:
        return str(e)
    except Exception:
        return "<exception str() failed>"


def _emit_error(e, tb=False, lines=None):
    if lines is None:
        lines = _format_exc(e, tb)
    sys.last_type, sys.last_value, sys.last_traceback = type(e), e, e.__traceback__
    _sync()
    _emit({"id": _cur_id, "type": "error", "name": type(e).__name__,
           "value": _safe_str(e), "traceback": lines})


# ----------------------------------------------------------------- stdlib execution
_user_mod = types.ModuleType("__main__", None)
_ns = _user_mod.__dict__
_ns["__builtins__"] = builtins
_count = 1
_loop = None
_CO_COROUTINE = 0x80
_FLAGS = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT


def _await(coro):
    global _loop
    import asyncio
    if _loop is None or _loop.is_closed():
        _loop = asyncio.new_event_loop()
    task = _loop.create_task(coro)
    try:
        return _loop.run_until_complete(task)
    except BaseException:
        if not task.done():
            task.cancel()
            try:
                _loop.run_until_complete(task)
            except BaseException:
                pass
        raise


def _semicolon(lines, node):
    """True if the source right after `node` starts with ';' (suppress output)."""
    line = lines[node.end_lineno - 1].encode("utf-8")[node.end_col_offset:]
    rest = line.decode("utf-8", "replace") + "".join(lines[node.end_lineno:])
    return rest.lstrip().startswith(";")


def _displayhook(value):
    ns = _ns
    ns["___"] = ns.get("__")
    ns["__"] = ns.get("_")
    ns["_"] = value
    if _ipython_display(value):
        return
    _emit_result(_bundle(value), True)


def _shell_lines(code):
    """Minimal stand-in for the commonest IPython syntax (stdlib path only):
    `!cmd` and `%pip ...` lines run through the shell, `%matplotlib ...` is a
    no-op.  Returns the rewritten cell, or None if there is nothing to do."""
    out = []
    changed = False
    for line in code.split("\n"):
        s = line.lstrip()
        ind = line[:len(line) - len(s)]
        if s.startswith("!") and not s.startswith("!="):
            line = "%s__import__('os').system(%r)" % (ind, s[1:])
        elif s == "%pip" or s.startswith(("%pip ", "%pip\t")):
            import shlex
            line = "%s__import__('os').system(%r)" % (ind, shlex.quote(sys.executable) + " -m pip" + s[4:])
        elif s == "%matplotlib" or s.startswith(("%matplotlib ", "%matplotlib\t")):
            line = ind + "pass"
        else:
            out.append(line)
            continue
        changed = True
        out.append(line)
    return "\n".join(out) if changed else None


def _parse_cell(code, fn):
    try:
        return code, compile(code, fn, "exec", ast.PyCF_ONLY_AST | _FLAGS, True)
    except SyntaxError:
        alt = _shell_lines(code) if ("!" in code or "%" in code) else None
        if alt is None:
            raise
        try:
            return alt, compile(alt, fn, "exec", ast.PyCF_ONLY_AST | _FLAGS, True)
        except SyntaxError:
            pass
        raise


def _run_std(code):
    global _count
    _raise_if_pending()
    n = _count
    _count += 1
    fn = "<cell %d>" % n
    linecache.cache[fn] = (len(code), None, code.splitlines(True), fn)
    code, tree = _parse_cell(code, fn)
    lines = code.splitlines(True)
    linecache.cache[fn] = (len(code), None, lines, fn)
    body = tree.body
    last = None
    if body and type(body[-1]) is ast.Expr and not (";" in code and _semicolon(lines, body[-1])):
        last = ast.Expression(body.pop().value)
    ns = _ns
    if body:
        co = compile(tree, fn, "exec", _FLAGS, True)
        if co.co_flags & _CO_COROUTINE:
            _await(eval(co, ns))
        else:
            exec(co, ns)
    if last is not None:
        co = compile(last, fn, "eval", _FLAGS, True)
        value = eval(co, ns)
        if co.co_flags & _CO_COROUTINE:
            value = _await(value)
        if value is not None:
            _displayhook(value)
    return True


def _std_count():
    return _count


# ----------------------------------------------------------------- IPython execution
_shell = None


def _lazy_embed(*args, **kwargs):
    from IPython.terminal.embed import embed
    return embed(*args, **kwargs)


def _import_interactiveshell():
    # IPython/__init__.py imports IPython.terminal.embed, which pulls in
    # prompt_toolkit, jedi & co. (~300 ms) that a pipe-driven kernel never
    # uses.  Stand in a stub during the import, then remove it so that a
    # later explicit import gets the real module.
    stub = types.ModuleType("IPython.terminal.embed")
    stub.embed = _lazy_embed
    if "IPython" not in sys.modules:
        sys.modules["IPython.terminal.embed"] = stub
    try:
        from IPython.core.interactiveshell import InteractiveShell
    except Exception:
        for k in [k for k in sys.modules if k == "IPython" or k.startswith("IPython.")]:
            del sys.modules[k]
        from IPython.core.interactiveshell import InteractiveShell
    finally:
        if sys.modules.get("IPython.terminal.embed") is stub:
            del sys.modules["IPython.terminal.embed"]
    return InteractiveShell


def _init_ipython():
    global _shell
    InteractiveShell = _import_interactiveshell()
    from IPython.core.displayhook import DisplayHook
    from IPython.core.displaypub import DisplayPublisher
    from traitlets import Type
    from traitlets.config import Config

    class Hook(DisplayHook):
        def compute_format_data(self, result):
            # Fast path: builtin scalars/containers only get text/plain unless
            # a formatter has a printer registered for their type (running
            # all ten formatters costs ~0.3 ms per cell).
            t = type(result)
            if t in _PLAIN_TYPES:
                fmts = self.shell.display_formatter.formatters
                key = (t.__module__, t.__name__)
                for mime, f in fmts.items():
                    if mime != "text/plain" and (t in f.type_printers or key in f.deferred_printers):
                        break
                else:
                    return {"text/plain": fmts["text/plain"](result)}, {}
            return super().compute_format_data(result)

        def start_displayhook(self):
            pass

        def write_output_prompt(self):
            pass

        def write_format_data(self, format_dict, md_dict=None):
            _emit_result(format_dict, True)

        def finish_displayhook(self):
            pass

    class Pub(DisplayPublisher):
        def publish(self, data, metadata=None, source=None, *, transient=None,
                    update=False, **kwargs):
            _emit_result(data, False)

        def clear_output(self, wait=False):
            pass

    class SandboxdShell(InteractiveShell):
        displayhook_class = Type(Hook)
        display_pub_class = Type(Pub)

        def showtraceback(self, exc_tuple=None, filename=None, tb_offset=None,
                          exception_only=False, running_compiled_code=False):
            try:
                etype, value, tb = self._get_exc_info(exc_tuple)
            except ValueError:
                return
            if issubclass(etype, SyntaxError):
                return self.showsyntaxerror(filename, running_compiled_code)
            lines = None
            if etype.__name__ == "UsageError" or exception_only:
                lines = traceback.format_exception_only(etype, value)
                lines = "".join(lines).rstrip("\n").split("\n")
            elif hasattr(value, "_render_traceback_"):
                try:
                    lines = list(value._render_traceback_())
                except Exception:
                    pass
            _emit_error(value, tb, lines)

        def showsyntaxerror(self, filename=None, running_compiled_code=False):
            try:
                etype, value, tb = self._get_exc_info()
            except ValueError:
                return
            if filename and issubclass(etype, SyntaxError):
                try:
                    value.filename = filename
                except Exception:
                    pass
            _emit_error(value, tb if running_compiled_code else None)

        def showindentationerror(self):
            self.showsyntaxerror()

        async def run_code(self, *args, **kwargs):
            # The only place where IPython executes user code: allow
            # KeyboardInterrupt here, defer it everywhere else.
            global _running
            _raise_if_pending()
            _running = True
            try:
                return await super().run_code(*args, **kwargs)
            finally:
                _running = False

        def enable_gui(self, gui=None):
            # No GUI event loop integration; lets `%matplotlib inline` work.
            pass

    c = Config()
    c.HistoryManager.enabled = False
    c.HistoryManager.hist_file = ":memory:"
    c.InteractiveShell.colors = "NoColor"
    c.InteractiveShell.xmode = "Plain"
    c.InteractiveShell.autocall = 0
    _shell = SandboxdShell.instance(config=c)
    comp = _shell.compile
    if hasattr(comp, "get_code_name"):
        comp.get_code_name = lambda raw, transformed, number: "<cell %d>" % number


def _run_ipython(code):
    r = _shell.run_cell(code, store_history=True)
    return bool(r.success)


# ----------------------------------------------------------------- request loop
_CRIT.update(f.__code__ for f in (
    _emit, _write_all, _emit_forked, _drain_raw, _sync, _emit_result, _emit_error,
    _format_exc, _strip_tb, _Stream.write, _Stream.flush, _Stream._flush_buf,
    _Stream._emit_locked, _check_pending, _raise_if_pending, _on_sigint))


def _handle(req, run, count):
    global _cur_id, _running, _pending_int, _in_cell
    rid = req.get("id") if isinstance(req, dict) else None
    _cur_id = rid
    n = count()
    ok = True
    if not isinstance(req, dict) or not isinstance(req.get("code"), str):
        _emit({"id": rid, "type": "error", "name": "ProtocolError",
               "value": "request must be an object with a string 'code'",
               "traceback": []})
        _emit({"id": rid, "type": "done", "execution_count": n, "ok": False})
        return
    env = req.get("env")
    _pending_int = False
    interrupted = False
    try:
        if isinstance(env, dict):
            for k, v in env.items():
                if v is None:
                    os.environ.pop(str(k), None)
                else:
                    os.environ[str(k)] = str(v)
        try:
            _in_cell = True
            _running = run is _run_std   # IPython: only inside run_code
            ok = run(req["code"])
            _raise_if_pending()
        finally:
            _running = _in_cell = False
    except BaseException as e:
        ok = False
        interrupted = isinstance(e, KeyboardInterrupt)
        if isinstance(e, SystemExit):   # like IPython: no traceback
            _emit_error(e, lines=traceback.format_exception_only(type(e), e)[-1].rstrip("\n").split("\n"))
        else:
            _emit_error(e)
    if "matplotlib.pyplot" in sys.modules:
        try:
            try:
                _running = _in_cell = not interrupted
                _flush_figures(not interrupted)
                _raise_if_pending()
            finally:
                _running = _in_cell = False
        except BaseException as e:
            ok = False
            _emit_error(e)
    if signal.getsignal(signal.SIGINT) is not _on_sigint:
        signal.signal(signal.SIGINT, _on_sigint)
    _sync()
    _emit({"id": rid, "type": "done", "execution_count": n, "ok": ok})


def _main():
    global _hold
    # Threads must not receive SIGINT: it has to interrupt the main thread's
    # blocking calls (time.sleep, ...).  Threads inherit the blocked mask.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    global _reader_thread
    _reader_thread = threading.Thread(target=_raw_reader, name="sandboxd-raw-io", daemon=True)
    _reader_thread.start()
    threading.Thread(target=_flush_loop, name="sandboxd-flush", daemon=True).start()
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, _on_sigint)

    use_ipython = False
    if os.environ.get("SANDBOXD_KERNEL_IPYTHON", "").strip().lower() not in ("0", "false", "no", "off"):
        try:
            import importlib.util
            use_ipython = importlib.util.find_spec("IPython") is not None
        except Exception:
            pass
    if use_ipython:
        try:
            _init_ipython()
        except Exception:
            traceback.print_exc()
            use_ipython = False
    if use_ipython:
        run = _run_ipython
        count = lambda: _shell.execution_count  # noqa: E731
    else:
        sys.modules["__main__"] = _user_mod
        builtins.display = display
        run = _run_std
        count = _std_count

    _sync()
    ready = {"type": "ready", "language": "python", "version": _VERSION,
             "ipython": use_ipython, "pid": os.getpid()}
    with _plock:
        held, _hold = _hold, None
        log = "".join(ev.get("text", "") for ev in held)
        if log:
            ready["log"] = log
        _write_all((_encode(_sanitize(ready)) + "\n").encode("utf-8", "replace"))

    reader = io.open(_PROTO_IN, "rb", buffering=1 << 16, closefd=False)
    while True:
        line = reader.readline()
        if not line:
            break
        if not line.strip():
            continue
        try:
            req = json.loads(line)
        except ValueError as e:
            _emit({"id": None, "type": "error", "name": "ProtocolError",
                   "value": "invalid JSON request: %s" % e, "traceback": []})
            _emit({"id": None, "type": "done", "execution_count": count(), "ok": False})
            continue
        _handle(req, run, count)

    # stdin EOF: run atexit handlers, flush, exit 0 (do not wait for user threads)
    try:
        import atexit
        atexit._run_exitfuncs()
    except BaseException:
        pass
    _sync()
    os._exit(0)


_reader_thread = None
try:
    _main()
except BaseException:
    try:
        os.write(_ORIG_ERR, ("sandboxd kernel: fatal error\n" + traceback.format_exc()).encode("utf-8", "replace"))
    except Exception:
        pass
    os._exit(70)
