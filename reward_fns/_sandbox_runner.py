"""The program that runs *inside* the code sandbox (see `reward_fns.code_sandbox`). Standard library only.

Run as ``python -I -B _sandbox_runner.py`` with the sandbox's private temp dir as cwd. It reads the job (JSON)
from stdin, then, before any candidate code runs:
  * sets resource limits: RLIMIT_AS (memory), RLIMIT_CPU, RLIMIT_FSIZE, RLIMIT_NOFILE, RLIMIT_CORE=0;
  * installs an audit hook (it cannot be removed from Python) that refuses process creation (fork, exec,
    spawn, subprocess, system), sockets, ctypes, signals to other processes, and any write, delete, rename,
    chmod or mkdir outside the temp dir;
  * replaces stdout/stderr with size-capped buffers.
It reports JSON lines, tagged with a nonce from the job, on the pipe fd named in the job:
  {"ev": "start", "i": k, "src": ...}    before test k (so a timeout can name the test that hung)
  {"ev": "fail", ...} / {"ev": "done", "passed": n, "total": N, "status": ...}
"""

import ast
import builtins
import io
import json
import os
import resource
import signal
import sys
import threading
import traceback

_BLOCKED_EVENTS = frozenset({
    "os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "subprocess.Popen",
    "os.kill", "os.killpg", "signal.pthread_kill", "os.setsid", "os.setpgid", "os.chroot",
    "socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.gethostbyname",
    "socket.gethostbyaddr", "socket.sendto", "socket.sendmsg",
    "ctypes.dlopen", "ctypes.dlsym", "ctypes.dlsym/handle", "ctypes.cdata", "ctypes.call_function",
    "sys.addaudithook", "resource.setrlimit", "resource.prlimit", "os.startfile", "os.add_dll_directory",
})
_BLOCKED_IMPORTS = frozenset({"_posixsubprocess", "_ctypes", "ctypes", "cffi", "pty"})
#: events whose first (and for rename/link: second) argument is a path that must stay inside the sandbox
_PATH_EVENTS = frozenset({
    "os.remove", "os.rmdir", "os.rename", "os.mkdir", "os.symlink", "os.link", "os.chmod", "os.chown",
    "os.truncate", "os.utime", "shutil.rmtree", "os.chdir", "os.mkfifo", "os.mknod", "os.setxattr",
    "os.removexattr", "shutil.chown", "shutil.move", "shutil.copyfile", "shutil.copytree",
})
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


class OutputLimit(BaseException):
    pass


class CappedText(io.TextIOBase):
    """A text stream that keeps the first `cap` characters and raises `OutputLimit` beyond them."""

    def __init__(self, cap):
        self.cap = cap
        self.parts = []
        self.size = 0

    def writable(self):
        return True

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        self.size += len(s)
        if self.size > self.cap:
            raise OutputLimit()
        self.parts.append(s)
        return len(s)

    def getvalue(self):
        return "".join(self.parts)

    @property
    def buffer(self):  # sys.stdout.buffer.write(b"...") in competitive-programming code
        return _BytesView(self)


class _BytesView:
    def __init__(self, text):
        self._text = text

    def write(self, b):
        self._text.write(bytes(b).decode("utf-8", "replace"))
        return len(b)

    def flush(self):
        pass


def _trim(s, n=400):
    s = s if isinstance(s, str) else repr(s)
    return s if len(s) <= n else s[: n // 2 - 3] + " ... " + s[-(n // 2 - 3):]


def _safe_repr(v, n=300):
    try:
        return _trim(repr(v), n)
    except BaseException:  # noqa: BLE001 - hostile __repr__
        return "<unrepresentable>"


def install_limits(job):
    mem = int(job["memory_mb"]) * 1024 * 1024
    cpu = int(job["cpu_seconds"])
    fsize = int(job["file_size_mb"]) * 1024 * 1024
    for res, val in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_CPU, cpu), (resource.RLIMIT_FSIZE, fsize),
                     (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NOFILE, 64)):
        try:
            resource.setrlimit(res, (val, val))
        except (ValueError, OSError):
            pass
    try:
        resource.setrlimit(resource.RLIMIT_NPROC, (64, 64))
    except (ValueError, OSError):
        pass


def install_audit_hook(root):
    root = os.path.realpath(root)
    state = threading.local()

    def inside(path):
        if isinstance(path, int):
            return True
        if isinstance(path, bytes):
            path = path.decode("utf-8", "replace")
        if not isinstance(path, str):
            path = os.fspath(path)
        if path in ("/dev/null",):
            return True
        full = os.path.realpath(os.path.join(root, path))
        return full == root or full.startswith(root + os.sep)

    def hook(event, args):
        if getattr(state, "busy", False):
            return
        state.busy = True
        try:
            if event in _BLOCKED_EVENTS or event.startswith("os.exec") or event.startswith("os.spawn"):
                raise PermissionError(f"sandbox: {event} is not allowed")
            if event == "import" and args and args[0] in _BLOCKED_IMPORTS:
                raise ImportError(f"sandbox: importing {args[0]} is not allowed")
            if event == "open" and len(args) >= 3:
                path, mode, flags = args[0], args[1], args[2]
                writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                    isinstance(flags, int) and flags & _WRITE_FLAGS)
                if writing and not inside(path):
                    raise PermissionError(f"sandbox: writing {path!r} outside the sandbox is not allowed")
            elif event in _PATH_EVENTS and args:
                paths = [args[0]]
                if event in ("os.rename", "os.symlink", "os.link", "shutil.move", "shutil.copyfile",
                             "shutil.copytree") and len(args) > 1:
                    paths.append(args[1])
                for p in paths:
                    if p is not None and not isinstance(p, int) and not inside(p):
                        raise PermissionError(f"sandbox: {event} on {p!r} outside the sandbox is not allowed")
        finally:
            state.busy = False

    sys.addaudithook(hook)


def _stdin_fd_from(data, i):
    """Make fd 0 a file holding `data` (inside the sandbox dir)."""
    path = f".stdin_{i}"
    with open(path, "wb") as f:
        f.write(data)
    fd = os.open(path, os.O_RDONLY)
    if fd != 0:  # fd 0 may be free (the previous case's open(0) closed it) and then os.open returns 0
        os.dup2(fd, 0)
        os.close(fd)


def _compare_outputs(expected, got):
    exp_lines = [ln.rstrip() for ln in expected.strip().splitlines()]
    got_lines = [ln.rstrip() for ln in got.strip().splitlines()]
    if exp_lines == got_lines:
        return True
    exp_tok, got_tok = expected.split(), got.split()
    if len(exp_tok) != len(got_tok):
        return False
    for a, b in zip(exp_tok, got_tok):
        if a == b:
            continue
        try:
            fa, fb = float(a), float(b)
        except ValueError:
            return False
        if abs(fa - fb) > 1e-6 * max(1.0, abs(fa)):
            return False
    return True


def _split_tests(tests_src, entry_point):
    """Test units: (source text, code object, namespace-updates). A ``check(candidate)`` call is expanded
    into check's body statements, one unit each, so the first failing assert can be named."""
    tree = ast.parse(tests_src)
    checks = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    units = []
    setup = []
    called_check = False
    for node in tree.body:
        src = ast.get_source_segment(tests_src, node) or ast.unparse(node)
        is_check_call = (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
                         and isinstance(node.value.func, ast.Name) and node.value.func.id in checks
                         and len(node.value.args) == 1 and not node.value.keywords)
        if is_check_call:
            fdef = checks[node.value.func.id]
            argname = fdef.args.args[0].arg if fdef.args.args else "candidate"
            bind = ast.get_source_segment(tests_src, node.value.args[0]) or ast.unparse(node.value.args[0])
            body = [s for s in fdef.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
            if any(isinstance(n, (ast.Return, ast.Yield, ast.YieldFrom, ast.Nonlocal))
                   for s in body for n in ast.walk(s)):
                units.append((src, compile(ast.Module([node], []), "<tests>", "exec"), None))
            else:
                units.append((None, compile(f"{argname} = {bind}", "<tests>", "exec"), None))
                for s in body:
                    ssrc = ast.get_source_segment(tests_src, s) or ast.unparse(s)
                    units.append((ssrc, compile(ast.Module([s], []), "<tests>", "exec"), s))
            called_check = True
        elif isinstance(node, (ast.Assert, ast.For, ast.While, ast.If, ast.With, ast.Try, ast.Expr)):
            units.append((src, compile(ast.Module([node], []), "<tests>", "exec"), node))
        else:  # imports, defs, assignments: setup, not counted as tests
            setup.append(node)
            units.append((None, compile(ast.Module([node], []), "<tests>", "exec"), None))
    if not called_check and entry_point and "check" in checks and not any(u[0] for u in units):
        call = ast.parse(f"check({entry_point})").body[0]
        units.append((f"check({entry_point})", compile(ast.Module([call], []), "<tests>", "exec"), call))
    return units


def _expected_vs_got(node, ns, entry_point):
    """For ``assert a == b`` return (expected, got) reprs, the side calling the candidate being "got"."""
    if not (isinstance(node, ast.Assert) and isinstance(node.test, ast.Compare) and len(node.test.ops) == 1
            and isinstance(node.test.ops[0], (ast.Eq, ast.Is))):
        return None, None
    left, right = node.test.left, node.test.comparators[0]
    names = {"candidate", entry_point}

    def calls_candidate(n):
        return any(isinstance(x, ast.Call) and isinstance(x.func, ast.Name) and x.func.id in names
                   for x in ast.walk(n))

    got_node, exp_node = (right, left) if calls_candidate(right) and not calls_candidate(left) else (left, right)
    try:
        got = eval(compile(ast.Expression(got_node), "<tests>", "eval"), ns)
        exp = eval(compile(ast.Expression(exp_node), "<tests>", "eval"), ns)
    except BaseException:  # noqa: BLE001
        return None, None
    return _safe_repr(exp), _safe_repr(got)


def _error_text(exc, limit=600):
    tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
    # keep only frames of the candidate / tests, not of this runner
    lines = [ln for ln in tb if "_sandbox_runner.py" not in ln]
    return _trim("".join(lines).strip(), limit)


def _classify(exc):
    if isinstance(exc, MemoryError):
        return "memory_limit"
    if isinstance(exc, RecursionError):
        return "recursion_limit"
    if isinstance(exc, OutputLimit):
        return "output_limit"
    if isinstance(exc, (PermissionError, ImportError)) and "sandbox:" in str(exc):
        return "forbidden"
    return "error"


def main():
    job = json.loads(sys.stdin.read())
    sys.stdin.close()
    nonce = job.pop("nonce")
    out = os.fdopen(int(job.pop("result_fd")), "w", buffering=1)
    real_stdout, real_stderr = sys.stdout, sys.stderr

    def emit(**msg):
        msg["nonce"] = nonce
        out.write(json.dumps(msg) + "\n")
        out.flush()

    install_limits(job)
    cap = int(job["max_output_chars"])
    code = job["code"]
    try:
        code_obj = compile(code, "<solution>", "exec")
    except (SyntaxError, ValueError) as exc:
        emit(ev="done", status="syntax_error", passed=0, total=0, error=_trim(f"{type(exc).__name__}: {exc}"))
        return
    install_audit_hook(os.getcwd())
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)

    if job["mode"] == "io":
        cases = job["io"]
        passed = 0
        for i, case in enumerate(cases):
            inp = case.get("input", "")
            emit(ev="start", i=i, src=_trim(f"stdin: {inp!r}", 300))
            stdout = CappedText(cap)
            data = str(inp).encode()
            sys.stdin = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")
            _stdin_fd_from(data, i)  # for open(0) / os.read(0, ...) style programs
            sys.stdout = sys.stderr = stdout
            ns = {"__name__": "__main__", "__builtins__": builtins}
            err = None
            try:
                exec(code_obj, ns)
            except SystemExit as exc:
                if exc.code not in (None, 0):
                    err = exc
            except BaseException as exc:  # noqa: BLE001
                err = exc
            for t in threading.enumerate():
                if t is not threading.current_thread() and not t.daemon:
                    t.join()
            sys.stdout, sys.stderr = real_stdout, real_stderr
            got = stdout.getvalue()
            if err is not None:
                status = "runtime_error" if _classify(err) == "error" else _classify(err)
                emit(ev="done", status=status, passed=passed, total=len(cases), failing_test=_trim(f"stdin: {inp!r}"),
                     expected=_trim(str(case.get("output", ""))), got=_trim(got), error=_error_text(err))
                return
            if not _compare_outputs(str(case.get("output", "")), got):
                emit(ev="done", status="wrong_answer", passed=passed, total=len(cases),
                     failing_test=_trim(f"stdin: {inp!r}"), expected=_trim(str(case.get("output", ""))),
                     got=_trim(got), error="")
                return
            passed += 1
        emit(ev="done", status="passed", passed=passed, total=len(cases))
        return

    # function-call tests
    entry_point = job.get("entry_point") or ""
    stdout = CappedText(cap)
    sys.stdout = sys.stderr = stdout
    ns = {"__name__": "__rl2f_solution__", "__builtins__": builtins}
    try:
        if job.get("prompt"):
            exec(compile(job["prompt"], "<prompt>", "exec"), ns)
        exec(code_obj, ns)
    except BaseException as exc:  # noqa: BLE001
        sys.stdout, sys.stderr = real_stdout, real_stderr
        emit(ev="done", status=_classify(exc) if _classify(exc) != "error" else "load_error", passed=0, total=0,
             error=_error_text(exc))
        return
    if entry_point and entry_point not in ns:
        sys.stdout, sys.stderr = real_stdout, real_stderr
        emit(ev="done", status="missing_entry_point", passed=0, total=0,
             error=f"the code does not define {entry_point!r}")
        return
    try:
        units = _split_tests(job["tests"], entry_point)
    except SyntaxError as exc:
        sys.stdout, sys.stderr = real_stdout, real_stderr
        emit(ev="done", status="bad_tests", passed=0, total=0, error=_trim(f"tests do not parse: {exc}"))
        return
    total = sum(1 for u in units if u[0])
    passed = 0
    k = 0
    for src, unit_code, node in units:
        if src:
            emit(ev="start", i=k, src=_trim(src, 300))
        try:
            exec(unit_code, ns)
        except BaseException as exc:  # noqa: BLE001
            sys.stdout, sys.stderr = real_stdout, real_stderr
            expected = got = None
            if isinstance(exc, AssertionError) and node is not None:
                sys.stdout = sys.stderr = CappedText(cap)
                expected, got = _expected_vs_got(node, ns, entry_point)
                sys.stdout, sys.stderr = real_stdout, real_stderr
            status = "failed" if isinstance(exc, AssertionError) else _classify(exc)
            if status == "error":
                status = "runtime_error"
            emit(ev="done", status=status, passed=passed, total=total, failing_test=_trim(src or "", 400),
                 expected=expected, got=got,
                 error="" if isinstance(exc, AssertionError) and not str(exc) else _error_text(exc))
            return
        if src:
            passed += 1
            k += 1
    sys.stdout, sys.stderr = real_stdout, real_stderr
    emit(ev="done", status="passed" if total else "no_tests", passed=passed, total=total)


if __name__ == "__main__":
    try:
        main()
    finally:
        # Leave at once: no interpreter shutdown, so threads or atexit handlers of the candidate cannot keep
        # the sandbox alive after the result was reported.
        try:
            sys.stdout.flush()
        except BaseException:  # noqa: BLE001
            pass
        os._exit(0)
