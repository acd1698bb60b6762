"""The program that runs *inside* the code sandbox (see `reward_fns.code_sandbox`). Standard library only.

Run as ``python -I -B -S _sandbox_runner.py <result fd>``; the isolation (namespaces, filesystem view, Landlock,
limits) is `reward_fns.sandbox_isolation`'s, whose copy sits next to this file. Two roles, two kinds of process:

* the **judge** (this program's first process) runs the trusted test code and decides every test; it alone
  holds the result fd to the caller;
* the **candidate** processes, forked from the judge, run the untrusted program. The first one is forked before
  the judge has read anything (the job arrives on stdin afterwards), so no candidate ever holds the tests, the
  expected values or the result fd. A candidate keeps only its two pipes to the judge (and, for stdin/stdout
  tests, its three files), sets its rlimits and enters its Landlock domain (`restrict_candidate`), then runs
  the program.

Function-call tests: the judge executes the test units (prepared by the caller) with ``candidate`` (the entry
point, and any other name the tests use that the candidate's program defines) bound to a proxy. A call sends
its arguments to the candidate (marshal: trusted data, judge -> candidate) and gets back JSON with type tags
for tuple/set/frozenset/dict/complex/bytes, decoded strictly into exact builtin types (`decode_plain`): nothing
the candidate returns is code, so every comparison runs builtin ``__eq__``. Whatever else happens in a call (an
exception of any type, an exit, a crash, a value that is not plain data, too large or too deep) is a `Fault`:
a BaseException the test code cannot turn into a pass, and sticky (every later test fails too).

stdin/stdout tests: one fresh candidate per input, stdin/stdout/stderr files in the judge's directory (opened
before the candidate enters Landlock); the judge sends the captured stdout to the caller, which compares it
with the expected output the sandbox never sees.

Python-level parts, defence in depth only (the kernel bounds are the barrier): strict plain-data decoding,
capped stdout/stderr, uncatchable candidate faults.

Reports are JSON lines on the result fd: ``{"ev": "start", "i": k, "src": ...}`` before test k (so a timeout
can name it), ``{"ev": "case", "i": k, "status": ..., "stdout": ..., "error": ...}`` per stdin/stdout case,
and ``{"ev": "done", "status": ..., "passed": n, "total": N, ...}``.
"""

import _signal as signal  # not `signal`: its enums cost milliseconds of start-up
import _thread
import builtins
import io
import marshal
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sandbox_isolation import restrict_candidate  # noqa: E402  (copied next to this file in the sandbox)

#: the largest reply (encoded return value) a candidate may send, and how deep a value may nest
REPLY_CAP = 8 << 20
MAX_DEPTH = 100
_PLAIN_NAMES = "None, bool, int, float, complex, str, bytes, list, tuple, dict, set, frozenset"


def _no_default(obj):
    raise TypeError(f"{type(obj).__name__} is not JSON")


def _codec():
    """(dumps, loads) of JSON, loads turning tagged objects into tuples, sets, ... (`_untag`). Straight from the
    C accelerator where there is one: the json package pulls in re and enum, milliseconds of every run."""
    try:
        import _json
    except ImportError:
        import json

        return json.dumps, lambda s: json.loads(s, object_hook=_untag)

    class Context:
        strict, object_hook, object_pairs_hook, parse_float, parse_int, memo = True, _untag, None, float, int, {}
        parse_constant = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}.__getitem__

    encode = _json.make_encoder(None, _no_default, _json.encode_basestring_ascii, None, ":", ",", False, False, True)
    scan = _json.make_scanner(Context)

    def loads(s):
        try:
            obj, end = scan(s, 0)
        except StopIteration:
            raise ValueError("not JSON") from None
        if end != len(s):
            raise ValueError("extra data after the JSON value")
        Context.memo.clear()
        return obj

    return lambda obj: "".join(encode(obj, 0)), loads


class OutputLimit(BaseException):
    pass


class CappedOut(io.TextIOBase):
    """stdout/stderr of a candidate: at most `cap` characters, then `OutputLimit`. With an fd the text is
    written there (on flush, and every 64 KiB); without one it is discarded."""

    def __init__(self, cap, fd=None):
        self.cap, self.fd, self.size, self.parts, self.pending = cap, fd, 0, [], 0

    def writable(self):
        return True

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        return self._add(s)

    def _add(self, s):
        self.size += len(s)
        if self.size > self.cap:
            raise OutputLimit()
        if self.fd is not None:
            self.parts.append(s)
            self.pending += len(s)
            if self.pending >= 1 << 16:
                self.flush()
        return len(s)

    def flush(self):
        if self.fd is None or not self.parts:
            return
        data = "".join(s if isinstance(s, str) else s.decode("utf-8", "replace") for s in self.parts)
        self.parts, self.pending = [], 0
        _write_all(self.fd, data.encode("utf-8", "replace"))

    @property
    def buffer(self):  # sys.stdout.buffer.write(b"...") in competitive-programming code
        return _BytesView(self)


class _BytesView:
    def __init__(self, text):
        self._text = text

    def write(self, b):
        return self._text._add(bytes(b))

    def flush(self):
        self._text.flush()


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _read_exact(fd, n):
    parts, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def send(fd, data):
    _write_all(fd, len(data).to_bytes(8, "big") + data)


class TooLarge(Exception):
    pass


def recv(fd, cap=None):
    """One length-prefixed message, or None at end of file. `TooLarge` beyond `cap` bytes (not read)."""
    head = _read_exact(fd, 8)
    if head is None:
        return None
    n = int.from_bytes(head, "big")
    if cap is not None and n > cap:
        raise TooLarge(n)
    return _read_exact(fd, n)


def _trim(s, n=400):
    s = s if isinstance(s, str) else repr(s)
    return s if len(s) <= n else s[: n // 2 - 3] + " ... " + s[-(n // 2 - 3):]


def _safe_repr(v, n=300):
    try:
        return _trim(repr(v), n)
    except BaseException:  # noqa: BLE001 - only plain data reaches the judge, but be safe
        return "<unrepresentable>"


def _error_text(exc, limit=600):
    try:
        import traceback

        tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
        lines = [ln for ln in tb if not (ln.startswith('  File "') and "_sandbox_runner.py" in ln.split("\n", 1)[0])]
        return _trim("".join(lines).strip(), limit)
    except BaseException:  # noqa: BLE001 - a hostile exception object
        return "<unprintable exception>"


def _classify(exc):
    if isinstance(exc, MemoryError):
        return "memory_limit"
    if isinstance(exc, RecursionError):
        return "recursion_limit"
    if isinstance(exc, OutputLimit):
        return "output_limit"
    if isinstance(exc, PermissionError):  # the kernel refused (Landlock, no capability, no process left)
        return "forbidden"
    if not isinstance(exc, Exception):
        return "exit"  # SystemExit, KeyboardInterrupt, GeneratorExit, ...
    return "error"


# ------------------------------------------------------------------------------------------- candidate side
def install_limits(setup):
    """Per-process rlimits of a candidate (inherited by its children). RLIMIT_NPROC counts the tasks of the
    sandbox's (non-root) uid in its user namespace: processes and threads of the whole run."""
    for res, val in ((resource.RLIMIT_AS, int(setup["memory_mb"]) << 20), (resource.RLIMIT_CPU, int(setup["cpu_seconds"])),
                     (resource.RLIMIT_FSIZE, int(setup["file_size_mb"]) << 20), (resource.RLIMIT_CORE, 0),
                     (resource.RLIMIT_NOFILE, 64), (resource.RLIMIT_NPROC, int(setup["max_tasks"]))):
        resource.setrlimit(res, (val, val))


def _keep_only_fds(keep):
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    hi = max(keep | {null}) + 1
    lo = 3
    for fd in sorted(keep) + [hi]:
        if fd > lo:
            os.closerange(lo, fd)
        lo = max(lo, fd + 1)
    os.closerange(hi, resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def plain(v, depth=0):
    """The JSON form (with type tags) of a plain-data value; `TypeError` for anything else. Runs in the
    candidate: it may call the candidate's own methods (of subclasses, numpy scalars), which only decides what
    it sends; the judge decodes strictly."""
    if depth > MAX_DEPTH:
        raise TypeError(f"the value nests deeper than {MAX_DEPTH} levels")
    t = type(v)
    if v is None or t is bool or t is int or t is float or t is str:
        return v
    d = depth + 1
    if t is list:
        return [plain(x, d) for x in v]
    if t is tuple:
        return {"t": [plain(x, d) for x in v]}
    if t is dict:
        return {"d": [[plain(k, d), plain(x, d)] for k, x in v.items()]}
    if t is set or t is frozenset:
        return {"s" if t is set else "f": [plain(x, d) for x in v]}
    if t is complex:
        return {"c": [v.real, v.imag]}
    if t is bytes or t is bytearray:
        return {"b" if t is bytes else "y": v.decode("latin-1")}
    for base in (int, float, str, complex, bytes, tuple, list, dict, frozenset, set):  # subclasses: by value
        if isinstance(v, base):
            value = base(v)
            if type(value) is base:
                return plain(value, depth)
    if t.__module__ == "numpy" and hasattr(v, "tolist"):
        return plain(v.tolist(), depth)
    raise TypeError(f"returned a {t.__module__}.{t.__qualname__} object, not plain data ({_PLAIN_NAMES})")


def _err_reply(exc):
    if isinstance(exc, MemoryError):  # let go of what filled the memory before describing it
        tb = exc.__traceback__
        while tb is not None:
            try:
                tb.tb_frame.clear()
            except RuntimeError:  # a frame still running (this file's)
                pass
            tb = tb.tb_next
    try:
        return dumps(["err", _classify(exc), str(type(exc).__name__), _trim(str(exc), 2000), _error_text(exc)])
    except BaseException:  # noqa: BLE001 - a hostile exception object
        return dumps(["err", "error", "Exception", "<unprintable exception>", "<unprintable exception>"])


def candidate_main(cmd_fd, rep_fd):
    """Never returns. Everything before `restrict_candidate` is this file's code; the candidate's comes after."""
    _keep_only_fds({cmd_fd, rep_fd})
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # the judge gone: die quietly on the next write
    msg = recv(cmd_fd)
    if msg is None:
        os._exit(0)
    setup = marshal.loads(msg)
    cap = int(setup["max_output_chars"])
    io_mode = setup["mode"] == "io"
    if io_mode:
        for fd, path, flags in ((0, setup["stdin"], os.O_RDONLY), (1, setup["stdout"], os.O_WRONLY | os.O_CREAT),
                                (2, setup["stderr"], os.O_WRONLY | os.O_CREAT)):
            f = os.open(path, flags, 0o600)
            os.dup2(f, fd)
            os.close(f)
        sys.stdin = open(0, "r", encoding="utf-8", errors="replace", closefd=False)
    install_limits(setup)
    if setup["isolated"]:
        restrict_candidate(setup["read_paths"], setup["write_paths"])
    os.chdir(setup["work_dir"])
    out, err = CappedOut(cap, 1 if io_mode else None), CappedOut(cap, 2 if io_mode else None)
    sys.stdout, sys.stderr = out, err
    try:
        code_obj = compile(setup["code"], "<solution>", "exec")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
        send(rep_fd, dumps(["err", "syntax_error", type(exc).__name__, _trim(f"{type(exc).__name__}: {exc}"),
                                 ""]).encode())
        os._exit(0)
    if io_mode:
        _run_program(code_obj, out, err, rep_fd)
    else:
        _serve_calls(code_obj, setup, cmd_fd, rep_fd)
    os._exit(0)


def _run_program(code_obj, out, err, rep_fd):
    """stdin/stdout mode: run the program once; stdout stays in its file for the judge."""
    error = None
    try:
        exec(code_obj, {"__name__": "__main__", "__builtins__": builtins})
    except SystemExit as exc:
        if exc.code not in (None, 0):
            error = exc
    except BaseException as exc:  # noqa: BLE001
        error = exc
    try:
        if "threading" in sys.modules:  # like interpreter shutdown: wait for the program's threads
            threading = sys.modules["threading"]
            for t in threading.enumerate():
                if t is not threading.current_thread() and not t.daemon:
                    t.join()
        out.flush()
        err.flush()
    except BaseException as exc:  # noqa: BLE001
        error = error or exc
    send(rep_fd, (_err_reply(error) if error is not None else '["ok", null]').encode())


def _serve_calls(code_obj, setup, cmd_fd, rep_fd):
    """Function-call mode: load the program, then answer the judge's calls with plain data."""
    ns = {"__name__": "__rl2f_solution__", "__builtins__": builtins}
    try:
        if setup.get("prompt"):
            exec(compile(setup["prompt"], "<prompt>", "exec"), ns)
        exec(code_obj, ns)
        entry = setup.get("entry_point") or ""
        reply = dumps(["ok", not entry or callable(ns.get(entry))])
    except BaseException as exc:  # noqa: BLE001
        reply = _err_reply(exc)
    send(rep_fd, reply.encode())
    while True:
        msg = recv(cmd_fd)
        if msg is None:
            os._exit(0)
        op, name, args, kwargs = marshal.loads(msg)
        try:
            if op == "lookup":
                reply = dumps(["ok", callable(ns.get(name))])
            else:
                result = ns[name](*args, **kwargs)
                try:
                    reply = dumps(["ok", plain(result)])
                except TypeError as exc:
                    t = type(result)
                    reply = dumps(["err", "unplain", f"{t.__module__}.{t.__qualname__}", str(exc), ""])
        except BaseException as exc:  # noqa: BLE001
            reply = _err_reply(exc)
        send(rep_fd, reply.encode())


# ------------------------------------------------------------------------------------------------ judge side
_TAGS = {"t": tuple, "s": set, "f": frozenset}


def _untag(obj):
    if len(obj) != 1:
        raise ValueError("not a tagged value")
    ((tag, v),) = obj.items()
    if tag in _TAGS and type(v) is list:
        return _TAGS[tag](v)
    if tag == "d" and type(v) is list and all(type(p) is list and len(p) == 2 for p in v):
        return dict(v)
    if tag == "c" and type(v) is list and len(v) == 2 and all(type(x) in (int, float) for x in v):
        return complex(v[0], v[1])
    if tag in ("b", "y") and type(v) is str:
        return (bytes if tag == "b" else bytearray)(v, "latin-1")
    raise ValueError(f"unknown tag {tag!r}")


dumps, loads = _codec()


def decode_plain(payload):
    """A candidate's reply -> ("ok", value) or ("err", kind, type name, message, traceback). Only exact builtin
    types come out; `ValueError` for anything malformed."""
    try:
        msg = loads(payload.decode("utf-8"))
    except (ValueError, TypeError, RecursionError, MemoryError) as exc:
        raise ValueError(f"malformed reply: {_trim(str(exc), 200)}") from None
    if type(msg) is list and len(msg) == 2 and msg[0] == "ok":
        return msg
    if type(msg) is list and len(msg) == 5 and msg[0] == "err" and all(type(x) is str for x in msg):
        return msg
    raise ValueError("malformed reply")


class Fault(BaseException):
    """The candidate failed a call in a way the tests must not be able to catch (``except Exception``)."""

    def __init__(self, status, error, got=None):
        super().__init__(error)
        self.status, self.error, self.got = status, error, got


def _describe_exit(status):
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return {signal.SIGXCPU: ("timeout", "CPU time limit exceeded"),
                signal.SIGXFSZ: ("file_size_limit", "file size limit exceeded")}.get(
            sig, ("runtime_error", f"the program was killed by signal {sig} ({signal.strsignal(sig)})"))
    return "runtime_error", f"the program exited (exit status {os.WEXITSTATUS(status)})"


_LIVE = set()  # pids of candidates not reaped yet


class Candidate:
    """A candidate process, seen from the judge."""

    def __init__(self):
        cmd_r, cmd_w = os.pipe()
        rep_r, rep_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                candidate_main(cmd_r, rep_w)
            finally:
                os._exit(70)
        os.close(cmd_r)
        os.close(rep_w)
        self.pid, self.cmd, self.rep = pid, cmd_w, rep_r
        _LIVE.add(pid)
        self.fault = None  # sticky: once a call faulted, every later test fails too
        self.exit_status = None

    def request(self, data):
        """Send `data` (None: nothing) and return the decoded reply, or raise `Fault`."""
        if self.fault is not None:
            raise Fault(self.fault.status, self.fault.error)
        try:
            if data is not None:
                send(self.cmd, data)
            payload = recv(self.rep, REPLY_CAP)
            if payload is None:
                self.fault = Fault(*self.finish())
            else:
                return decode_plain(payload)
        except TooLarge as exc:
            self.fault = Fault("failed", f"the return value is too large ({exc.args[0]} bytes encoded, at most "
                                         f"{REPLY_CAP})", got="<too large>")
        except OSError:  # the pipe broke: the candidate is gone
            self.fault = Fault(*self.finish())
        except ValueError as exc:
            self.fault = Fault("failed", f"the candidate's reply is not plain data ({exc})", got="<malformed>")
        raise self.fault

    def finish(self):
        """Wait for the candidate's end (killing it after a short grace): (status, description)."""
        if self.exit_status is None:
            deadline = time.monotonic() + 0.2
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            while pid == 0 and time.monotonic() < deadline:
                time.sleep(0.002)
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid == 0:
                os.kill(self.pid, signal.SIGKILL)
                pid, status = os.waitpid(self.pid, 0)
            self.exit_status = status
            _LIVE.discard(self.pid)
        return _describe_exit(self.exit_status)

    def close(self):
        for fd in (self.cmd, self.rep):
            try:
                os.close(fd)
            except OSError:
                pass

    def call(self, name, args, kwargs):
        try:
            data = marshal.dumps(("call", name, args, kwargs))
        except ValueError:
            raise TypeError(f"{name}() was called with arguments that are not plain data") from None
        reply = self.request(data)
        if reply[0] == "ok":
            return reply[1]
        _, kind, tname, message, tb = reply  # any failure of a call, whatever it raised: the test fails
        if kind == "unplain":
            self.fault = Fault("failed", f"{name}() {message}", got=f"<{tname} object>")
        else:
            status = kind if kind in ("memory_limit", "recursion_limit", "output_limit", "forbidden") else "runtime_error"
            self.fault = Fault(status, tb or f"{tname}: {message}")
        raise self.fault


class _Proxy:
    """What the tests see as the candidate's function: calls cross to the candidate process."""

    __slots__ = ("_cand", "_name")

    def __init__(self, cand, name):
        self._cand, self._name = cand, name

    def __call__(self, *args, **kwargs):
        return self._cand.call(self._name, args, kwargs)

    def __repr__(self):
        return f"<candidate function {self._name}>"


class _Names(dict):
    """The tests' builtins: the real ones, then any function the candidate's program defines (e.g. HumanEval's
    ``poly`` helper), as a proxy."""

    def __init__(self, cand):
        super().__init__(builtins.__dict__)
        self._cand = cand

    def __missing__(self, name):
        reply = self._cand.request(marshal.dumps(("lookup", name, (), {})))
        if reply[0] == "ok" and reply[1] is True:
            self[name] = _Proxy(self._cand, name)
            return self[name]
        raise KeyError(name)


class Judge:
    def __init__(self, result_fd):
        self.fd = result_fd

    def emit(self, **msg):
        _write_all(self.fd, (dumps(msg) + "\n").encode("utf-8", "replace"))

    def setup_for(self, job, **extra):
        keys = ("code", "memory_mb", "cpu_seconds", "file_size_mb", "max_output_chars", "max_tasks", "isolated",
                "read_paths", "write_paths", "work_dir")
        return marshal.dumps({**{k: job[k] for k in keys}, **extra})

    def run_functions(self, job, cand):
        entry = job.get("entry_point") or ""
        try:
            reply = cand.request(self.setup_for(job, mode="func", prompt=job.get("prompt") or "", entry_point=entry))
        except Fault as fault:  # it exited or crashed while loading
            return self.emit(ev="done", status="load_error", passed=0, total=0, error=fault.error + " while loading")
        if reply[0] != "ok":
            _, kind, tname, message, tb = reply
            status = {"error": "load_error", "exit": "load_error"}.get(kind, kind)
            return self.emit(ev="done", status=status, passed=0, total=0, error=tb or message)
        if not reply[1]:
            return self.emit(ev="done", status="missing_entry_point", passed=0, total=0,
                             error=f"the code does not define {entry!r}")
        ns = {"__name__": "__rl2f_tests__", "__builtins__": _Names(cand)}
        if job.get("prompt"):  # trusted helpers of the problem (e.g. HumanEval's poly) win over the candidate's
            try:
                exec(compile(job["prompt"], "<prompt>", "exec"), ns)
            except Exception:  # noqa: BLE001 - then the tests use the candidate's definitions
                pass
        if entry:
            ns[entry] = _Proxy(cand, entry)
        units = [(src, compile(code, "<tests>", "exec"), got and compile(got, "<tests>", "eval"),
                  exp and compile(exp, "<tests>", "eval")) for src, code, got, exp in job["units"]]
        total = sum(1 for u in units if u[0])
        passed = 0
        for src, code, got_code, exp_code in units:
            if src:
                self.emit(ev="start", i=passed, src=_trim(src, 300))
            try:
                exec(code, ns)
                if cand.fault is not None:  # a fault the test code swallowed still fails the test
                    raise cand.fault
            except BaseException as exc:  # noqa: BLE001
                return self.emit(ev="done", passed=passed, total=total, failing_test=_trim(src or "", 400),
                                 **self._failure(exc, cand, ns, got_code, exp_code))
            if src:
                passed += 1
        self.emit(ev="done", status="passed" if total else "no_tests", passed=passed, total=total)

    def _failure(self, exc, cand, ns, got_code, exp_code):
        if isinstance(exc, Fault):
            return {"status": exc.status, "error": exc.error, "got": exc.got, "expected": None}
        if isinstance(exc, AssertionError):
            expected = got = None
            if got_code is not None:
                try:
                    got, expected = _safe_repr(eval(got_code, ns)), _safe_repr(eval(exp_code, ns))
                except BaseException:  # noqa: BLE001 - e.g. the candidate faults on the second evaluation
                    expected = got = None
            return {"status": "failed", "expected": expected, "got": got, "error": "" if not str(exc) else _error_text(exc)}
        status = _classify(exc)  # the test code itself failed (on a value the candidate returned)
        return {"status": "runtime_error" if status in ("error", "exit") else status, "error": _error_text(exc)}

    def run_io(self, job, first):
        cap = int(job["max_output_chars"])
        for i, inp in enumerate(job["inputs"]):
            self.emit(ev="start", i=i, src=_trim(f"stdin: {inp!r}", 300))
            paths = {k: os.path.join(job["judge_dir"], f"{k}_{i}") for k in ("stdin", "stdout", "stderr")}
            with open(paths["stdin"], "wb") as f:
                f.write(inp.encode("utf-8", "replace"))
            cand = first if i == 0 else Candidate()
            status, error = "ok", ""
            try:
                reply = cand.request(self.setup_for(job, mode="io", **paths))
                if reply[0] == "err":
                    _, kind, _, message, tb = reply
                    status = "runtime_error" if kind in ("error", "exit", "unplain") else kind
                    error = message if kind == "syntax_error" else tb or message
            except Fault as fault:  # no report: os._exit(), a crash or a signal
                if cand.exit_status != 0:
                    status, error = fault.status, fault.error
            cand.finish()
            cand.close()
            stdout = _read_text(paths["stdout"], 4 * cap + 4)
            if len(stdout) > cap and status == "ok":
                status, error = "output_limit", "output limit exceeded"
            if status != "ok" and not error:
                error = _read_text(paths["stderr"], 2000)
            for p in paths.values():
                try:
                    os.remove(p)
                except OSError:
                    pass
            self.emit(ev="case", i=i, status=status, stdout=stdout[: cap + 1], error=_trim(error, 1200))
            if status != "ok":
                break
        self.emit(ev="done", status="ran", passed=0, total=len(job["inputs"]))


def _read_text(path, limit):
    try:
        with open(path, "rb") as f:
            return f.read(limit).decode("utf-8", "replace")
    except OSError:
        return ""


def main():
    result_fd = int(sys.argv[1])
    first = Candidate()  # before reading the job: the candidate never holds the tests
    job = marshal.loads(recv(0))
    # the caller closes our stdin once it knows the verdict or the time is up: then end at once, taking every
    # candidate with us (in the sandbox, the PID namespace ends with us and takes their children too)
    _thread.start_new_thread(lambda: os.read(0, 1) or end(), ())
    for res, val in ((resource.RLIMIT_AS, int(job["memory_mb"]) << 20), (resource.RLIMIT_CORE, 0)):
        try:
            resource.setrlimit(res, (val, val))
        except (ValueError, OSError):
            pass
    sys.stdout = CappedOut(1 << 20)  # the tests' own prints go nowhere
    judge = Judge(result_fd)
    if job["mode"] == "io":
        judge.run_io(job, first)
    else:
        judge.run_functions(job, first)


def end():
    """End the run at once (no interpreter shutdown). In the sandbox the judge is the PID namespace's init:
    SIGKILL every other process of the run and reap them all, so that the run is over when bwrap sees the judge
    exit. Without isolation: kill and reap the candidates this judge started."""
    if os.getpid() == 1:
        try:
            os.kill(-1, signal.SIGKILL)  # from a namespace's init: every process of the namespace but itself
        except OSError:
            pass
        while True:
            try:
                os.waitpid(-1, 0)
            except ChildProcessError:
                break
            except OSError:
                continue
    else:
        for pid in list(_LIVE):
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except OSError:
                pass
    os._exit(0)


if __name__ == "__main__":
    try:
        main()
    finally:
        end()
