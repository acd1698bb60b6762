"""Run candidate code against unit tests in a sandboxed subprocess.

Ground truth (a dict, or its JSON string) is one of
  * function-call tests (HumanEval style): ``{"tests": "<asserts, or def check(candidate) + check(f)>",
    "entry_point": "f", "prompt": "<optional code run before the candidate, e.g. imports>"}``
  * stdin/stdout tests (Codeforces / LiveCodeBench style): ``{"io": [{"input": "...", "output": "..."}, ...]}``
The candidate code is the last fenced code block of the reply (``last_code_block``).

Who decides the verdict: a judge process, never the candidate's (`reward_fns._sandbox_runner`):
  * function-call tests: the judge runs the test code (split here into units, one per assert) with the entry
    point (and any other function the tests name that the program defines) bound to a proxy; each call sends
    its arguments to the candidate process and gets back plain data (None, bool, int, float, complex, str,
    bytes, list, tuple, dict, set, frozenset: JSON with type tags, strictly decoded), so every comparison is
    builtin. Any other return value, one nested deeper than 100 levels or larger than 8 MB encoded, and a
    candidate that exits or crashes during a call fail the test. If the ground truth's ``prompt`` is given the
    judge runs it too, so the problem's own helpers (e.g. HumanEval's ``poly``) are used, not the candidate's.
  * stdin/stdout tests: a fresh candidate process per input; its stdout comes back here and is compared here,
    against expected outputs the sandbox never receives.
  * the first candidate is forked before the judge reads the job, and keeps nothing but its two pipes to the
    judge: no tests, no expected values, no report channel.
Limits of the cross-process calls: arguments are copied (a test that checks that the candidate mutated its
argument, or identity, fails), and the tests cannot call methods on objects the candidate returns.

Isolation of one run: the kernel's, as `reward_fns.sandbox_isolation` sets it up and documents it (its threat
model and guarantees are at its top): bubblewrap namespaces under a dedicated unprivileged uid, a read-only view
of the interpreter and its standard library only, Landlock on every candidate process, tmpfs directories bounded
in bytes, RLIMIT_NPROC/AS/CPU/FSIZE/NOFILE. Where the kernel cannot isolate, the first run raises
`SandboxUnavailable` naming what is missing, unless ``RL2F_SANDBOX_ISOLATION=none`` opts out (trusted code
only: processes and rlimits, no protection of the host). The wall-clock limit (``code_timeout``) holds within
a fraction of a second: at the deadline, or once the verdict is known, the judge is told to end the run and
``bwrap`` is SIGKILLed if it is still there; the kernel tears down the run's processes and files.

Comparison of stdout with the expected output (`compare_outputs`): equal lines up to trailing whitespace, else
token by token: integers exactly, other numbers within 1e-6 (relative above 1), NaN and infinities only where
the expected token is one; the rule that decided is reported in ``comparison``.

Result details: ``status`` (passed, failed, wrong_answer, runtime_error, timeout, memory_limit,
output_limit, forbidden, syntax_error, ...), ``tests_passed``/``tests_total``, and for the first failure
``failing_test``, ``expected``, ``got``, ``error`` (all trimmed) — the teacher's feedback material. They hold
the verifier's words, the dataset's tests and expected values, and bounded excerpts (400 characters) of what the
candidate printed, raised or returned; the sandbox has nothing else of the host to put there.
"""

from __future__ import annotations

import ast
import functools
import json
import marshal
import math
import os
import queue
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from . import sandbox_isolation
from .common import VerifyResult, limit, trim
from .extraction import last_code_block
from .sandbox_isolation import SandboxUnavailable
from .worker_pool import account_wait

__all__ = ["run_code", "verify_code", "parse_code_ground_truth", "sandbox_info", "compare_outputs",
           "CodeGroundTruthError", "SandboxUnavailable"]

_HERE = os.path.dirname(os.path.abspath(__file__))
_RUNNER = os.path.join(_HERE, "_sandbox_runner.py")
_PROGRAM_NAMES = ("_sandbox_runner", "sandbox_isolation")
_COMPILE = ("import importlib.util, marshal, sys\n"
            "path = sys.argv[1]\n"
            "code = compile(open(path, 'rb').read(), sys.argv[2], 'exec')\n"
            "sys.stdout.buffer.write(importlib.util.MAGIC_NUMBER + bytes(12) + marshal.dumps(code))\n")
#: run slots (the number of concurrent runs; each its own memory cgroup where there is one)
def _new_slots() -> "queue.Queue[int]":
    slots: "queue.Queue[int]" = queue.Queue()
    for k in range(int(os.environ.get("RL2F_SANDBOX_PARALLEL", "0") or 0) or (os.cpu_count() or 1)):
        slots.put(k)
    return slots


def _reset_slots() -> None:  # a forked reward worker: its own free slots (and no lock held by a parent thread)
    global _SLOTS
    _SLOTS = _new_slots()


_SLOTS = _new_slots()
os.register_at_fork(after_in_child=_reset_slots)
#: the memory of a whole run (all its processes, with their files) beyond the per-process ``code_memory_mb``
RUN_MEMORY_FACTOR = 2
#: the candidate's disk (tmpfs bytes) in MB
DISK_MB = 64


class CodeGroundTruthError(ValueError):
    """The ground truth is not a valid code-task ground truth (a data problem, not a model failure)."""


def sandbox_info() -> dict[str, Any]:
    """How runs are isolated on this machine (for logs and `python -m rl2f_plugin info`); raises
    `SandboxUnavailable` where the kernel cannot isolate and nobody opted out."""
    iso = sandbox_isolation.isolation()
    if iso is None:
        return {"isolation": f"none ({sandbox_isolation.OPT_OUT_ENV}=none: trusted code only)", "python": sys.executable}
    return iso.describe()


def parse_code_ground_truth(ground_truth: Any) -> dict:
    """Normalise a code ground truth (dict or JSON string) and check its shape."""
    gt = ground_truth
    if isinstance(gt, (bytes, bytearray)):
        gt = gt.decode()
    if isinstance(gt, str):
        try:
            gt = json.loads(gt)
        except ValueError as exc:
            raise CodeGroundTruthError(f"code ground truth is a string but not JSON: {trim(ground_truth, 120)!r}") from exc
    if not isinstance(gt, dict):
        raise CodeGroundTruthError(f"code ground truth must be a dict or JSON object, got {type(gt).__name__}")
    gt = dict(gt)
    if "io" in gt and gt["io"] is not None:
        io_cases = gt["io"]
        if isinstance(io_cases, str):
            io_cases = json.loads(io_cases)
        if isinstance(io_cases, dict) and "inputs" in io_cases:  # {"inputs": [...], "outputs": [...]} form
            io_cases = [{"input": i, "output": o} for i, o in zip(io_cases["inputs"], io_cases["outputs"])]
        if not isinstance(io_cases, (list, tuple)) or not io_cases:
            raise CodeGroundTruthError("code ground truth field 'io' must be a non-empty list of {input, output}")
        cases = []
        for k, case in enumerate(io_cases):
            if not isinstance(case, dict) or "output" not in case:
                raise CodeGroundTruthError(f"code ground truth field 'io'[{k}] lacks 'output'")
            cases.append({"input": str(case.get("input", "")), "output": str(case["output"])})
        gt["io"] = cases
        return gt
    if gt.get("tests"):
        if not isinstance(gt["tests"], str):
            raise CodeGroundTruthError("code ground truth field 'tests' must be a string of Python test code")
        return gt
    raise CodeGroundTruthError(f"code ground truth needs 'tests' (+ 'entry_point') or 'io'; got keys {sorted(gt)}")


def _end_run(proc: subprocess.Popen, info_fd: int | None, grace: float) -> None:
    """Let the run end by itself within `grace` seconds (the judge leaves once its stdin is closed), else end
    it: SIGKILL the sandbox's init (the kernel then kills every process of its PID namespace, and bwrap reaps
    it and exits), then, if bwrap is still there, its process group; finally reap bwrap. Without isolation the
    process group is the judge and its candidates."""
    try:
        proc.wait(timeout=grace)
        return
    except subprocess.TimeoutExpired:
        pass
    init_pid = None
    if info_fd is not None and select.select([info_fd], [], [], 0)[0]:
        init_pid = sandbox_isolation.sandbox_init_pid(os.read(info_fd, 4096))
    if init_pid is not None:
        try:
            os.kill(init_pid, signal.SIGKILL)
            proc.wait(timeout=0.5)
            return
        except (ProcessLookupError, PermissionError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=1.0)
    except subprocess.TimeoutExpired:
        pass


def _unit_source(tests_src: str, node: ast.AST) -> str:
    return ast.get_source_segment(tests_src, node) or ast.unparse(node)


def _assert_sides(node: ast.AST, entry_point: str) -> tuple[str | None, str | None]:
    """For ``assert a == b``: the sources of the expressions (got, expected), the side calling the candidate
    being "got"; (None, None) for other tests."""
    if not (isinstance(node, ast.Assert) and isinstance(node.test, ast.Compare) and len(node.test.ops) == 1
            and isinstance(node.test.ops[0], (ast.Eq, ast.Is))):
        return None, None
    left, right = node.test.left, node.test.comparators[0]
    names = {"candidate", entry_point}

    def calls_candidate(n):
        return any(isinstance(x, ast.Call) and isinstance(x.func, ast.Name) and x.func.id in names
                   for x in ast.walk(n))

    got, exp = (right, left) if calls_candidate(right) and not calls_candidate(left) else (left, right)
    return ast.unparse(got), ast.unparse(exp)


@functools.lru_cache(maxsize=512)
def _test_units(tests_src: str, entry_point: str) -> tuple[tuple[str | None, str, str | None, str | None], ...]:
    """The tests as units for the judge: (source shown in reports or None for setup, source to run, sources of
    got and expected of an ``assert a == b`` or None). A ``check(candidate)`` call is expanded into check's body
    statements, one unit each, so the first failing assert can be named. Raises SyntaxError for tests that do
    not parse."""
    tree = ast.parse(tests_src)
    checks = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    units = []

    def unit(src, node, sides=(None, None)):
        units.append((src, ast.unparse(ast.fix_missing_locations(node)), *sides))

    called_check = False
    for node in tree.body:
        src = _unit_source(tests_src, node)
        is_check_call = (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
                         and isinstance(node.value.func, ast.Name) and node.value.func.id in checks
                         and len(node.value.args) == 1 and not node.value.keywords)
        if is_check_call:
            fdef = checks[node.value.func.id]
            argname = fdef.args.args[0].arg if fdef.args.args else "candidate"
            body = [s for s in fdef.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
            if any(isinstance(n, (ast.Return, ast.Yield, ast.YieldFrom, ast.Nonlocal))
                   for s in body for n in ast.walk(s)):
                unit(src, node)
            else:
                unit(None, ast.copy_location(ast.Assign([ast.Name(argname, ast.Store())], node.value.args[0]), node))
                for s in body:
                    unit(_unit_source(tests_src, s), s, _assert_sides(s, entry_point))
            called_check = True
        elif isinstance(node, (ast.Assert, ast.For, ast.While, ast.If, ast.With, ast.Try, ast.Expr)):
            unit(src, node, _assert_sides(node, entry_point))
        else:  # imports, defs, assignments: setup, not counted as tests
            unit(None, node)
    if not called_check and entry_point and "check" in checks and not any(u[0] for u in units):
        unit(f"check({entry_point})", ast.parse(f"check({entry_point})").body[0])
    return tuple(units)


_INT = frozenset("0123456789")


def _number(token: str) -> int | float | None:
    """A token as an int (digits with an optional sign) or a float, else None."""
    body = token[1:] if token[:1] in "+-" else token
    if body and set(body) <= _INT:
        return int(token)
    try:
        return float(token)
    except ValueError:
        return None


def compare_outputs(expected: str, got: str) -> tuple[bool, str]:
    """stdout comparison: (equal?, the rule that decided). Equal lines up to trailing whitespace; else equal
    tokens where integers must be equal exactly, other numbers within 1e-6 (relative above 1), and NaN or an
    infinity matches only the same token expected."""
    exp_lines = [ln.rstrip() for ln in expected.strip().splitlines()]
    got_lines = [ln.rstrip() for ln in got.strip().splitlines()]
    if exp_lines == got_lines:
        return True, "lines equal (trailing whitespace ignored)"
    exp_tok, got_tok = expected.split(), got.split()
    if len(exp_tok) != len(got_tok):
        return False, f"token count differs ({len(got_tok)} printed, {len(exp_tok)} expected)"
    for k, (a, b) in enumerate(zip(exp_tok, got_tok)):
        if a == b:
            continue
        fa, fb = _number(a), _number(b)
        where = f"token {k + 1}: {trim(b, 40)!r} vs expected {trim(a, 40)!r}"
        if fa is None or fb is None:
            return False, f"text differs at {where}"
        if isinstance(fa, int):
            if fb != fa:  # an int or float token equal to it exactly (3 and 3.0), nothing else
                return False, f"integers compared exactly, differ at {where}"
            continue
        if not (math.isfinite(fa) and math.isfinite(fb)):
            if not (fa == fb or (math.isnan(fa) and math.isnan(fb))):
                return False, f"nan/inf accepted only where expected, differ at {where}"
            continue
        if abs(fa - fb) > 1e-6 * max(1.0, abs(fa)):
            return False, f"numbers differ by more than 1e-6 (relative above 1) at {where}"
    return True, "tokens equal: integers exactly, other numbers within 1e-6 (relative above 1)"


def run_code(code: str, ground_truth: Any, timeout: float | None = None, memory_mb: int | None = None,
             max_output_chars: int = 1 << 20, file_size_mb: int = 16) -> dict[str, Any]:
    """Run `code` against the tests of `ground_truth` in the sandbox. Returns the details dict
    (``status``, ``tests_passed``, ``tests_total``, ``failing_test``, ``expected``, ``got``, ``error``,
    ``seconds``). Never raises for anything the code does; raises `CodeGroundTruthError` for bad ground truth
    and `SandboxUnavailable` where the kernel cannot isolate (see `reward_fns.sandbox_isolation`)."""
    t0 = time.monotonic()
    gt = parse_code_ground_truth(ground_truth)
    iso = sandbox_isolation.isolation()
    wall = limit("code_timeout", timeout)
    mem = int(limit("code_memory_mb", memory_mb))
    job = {"mode": "io" if "io" in gt else "func", "code": code, "memory_mb": mem,
           "cpu_seconds": max(1, math.ceil(wall)) + 1, "file_size_mb": file_size_mb,
           "max_output_chars": max_output_chars, "max_tasks": sandbox_isolation.MAX_TASKS,
           "isolated": iso is not None}
    expected: list[str] = []
    n_tests = None
    if job["mode"] == "io":  # the sandbox gets the inputs only; outputs are compared here
        job["inputs"] = [c["input"] for c in gt["io"]]
        expected = [c["output"] for c in gt["io"]]
    else:
        job.update(entry_point=gt.get("entry_point") or "", prompt=gt.get("prompt") or "")
        try:
            job["units"] = _test_units(gt["tests"], job["entry_point"])
        except (SyntaxError, ValueError) as exc:
            return {**_blank_details(time.monotonic() - t0), "status": "bad_tests",
                    "error": trim(f"tests do not parse: {exc}", 400)}
        n_tests = sum(1 for u in job["units"] if u[0])
    with account_wait():  # time waiting for a free slot is queueing, not execution (verify_timeout_s counts the latter)
        slot = _SLOTS.get()
    try:
        return _run_job(job, iso, wall, expected, n_tests, slot)
    finally:
        _SLOTS.put(slot)


def _blank_details(seconds: float) -> dict[str, Any]:
    return {"status": "", "tests_passed": 0, "tests_total": 0, "failing_test": "", "expected": "", "got": "",
            "error": "", "seconds": round(seconds, 3)}


class _Progress:
    """What the judge has reported so far. stdin/stdout cases are compared here, against outputs the sandbox
    never saw; a function-call verdict counts as passed only if it covers the `n_tests` tests counted here."""

    def __init__(self, expected: list[str], n_tests: int | None):
        self.expected, self.n_tests = expected, n_tests
        self.starts: list[str] = []
        self.passed = 0
        self.final: dict[str, Any] | None = None

    def handle(self, msg: Any) -> bool:
        """Take one report; True once the verdict is known."""
        if not isinstance(msg, dict):
            return False
        ev = msg.get("ev")
        if ev == "start":
            self.starts.append(str(msg.get("src", "")))
        elif ev == "case":
            return self._case(msg)
        elif ev == "done":
            if self.final is None and self.expected:
                self.final = {"status": "crashed", "tests_passed": self.passed, "tests_total": len(self.expected),
                              "error": "the judge ended without reporting every case"}
            elif self.final is None:
                status, passed = str(msg.get("status", "error")), int(msg.get("passed", 0))
                if status == "passed" and not (self.n_tests and passed == self.n_tests):
                    status = "error"
                self.final = {"status": status, "tests_passed": min(passed, self.n_tests or 0),
                              "tests_total": self.n_tests or 0,
                              **{k: trim(str(msg[k]), 400) for k in ("failing_test", "expected", "got", "error")
                                 if msg.get(k) is not None}}
            return True
        return False

    def _case(self, msg: dict) -> bool:
        i, total = int(msg.get("i", -1)), len(self.expected)
        if not 0 <= i < total or i != self.passed:
            return False
        got, status = str(msg.get("stdout", "")), str(msg.get("status", ""))
        same, rule = compare_outputs(self.expected[i], got) if status == "ok" else (False, "")
        if same:
            self.passed += 1
            if self.passed == total:
                self.final = {"status": "passed", "tests_passed": total, "tests_total": total}
            return self.passed == total
        self.final = {"status": "wrong_answer" if status == "ok" else status, "tests_passed": self.passed,
                      "tests_total": total, "failing_test": trim(self.starts[-1] if self.starts else "", 400),
                      "expected": trim(self.expected[i], 400), "got": trim(got, 400),
                      "error": trim(str(msg.get("error", "")), 400)}
        if rule:
            self.final["comparison"] = rule
        return True


@functools.lru_cache(maxsize=4)
def _compiled_programs(python: str) -> dict[str, bytes]:
    """The two programs copied into every sandbox, as .pyc files of the sandbox's interpreter: compiling the
    runner's source at every start would cost more than the rest of Python's start-up."""
    programs = {}
    for name in _PROGRAM_NAMES:
        out = subprocess.run([python, "-I", "-S", "-c", _COMPILE, os.path.join(_HERE, f"{name}.py"),
                              f"{sandbox_isolation.PROGRAM_DIR}/{name}.py"], capture_output=True, timeout=60, check=True)
        programs[f"{name}.pyc"] = out.stdout
    return programs


def _pipe_holding(data: bytes) -> int:
    """The read end of a pipe that holds `data` (bwrap reads the sandbox's programs and seccomp filter so)."""
    r, w = os.pipe()
    try:
        if len(data) > 60_000:
            import fcntl

            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, len(data) + 4096)
        os.write(w, data)
    finally:
        os.close(w)
    return r


_SECCOMP = sandbox_isolation.seccomp_filter()


def _launch(job: dict, iso, result_fd: int, errf, slot: int) -> tuple[subprocess.Popen, str | None, int | None]:
    """Start the judge (in the sandbox when `iso`); returns it, the host dir to remove afterwards (only without
    isolation: the sandbox's dirs are tmpfs that vanish with it) and the read end of bwrap's ``--info-fd``."""
    if iso is None:
        host_dir = tempfile.mkdtemp(prefix="rl2f-sbx-")
        job.update(judge_dir=os.path.join(host_dir, "judge"), work_dir=os.path.join(host_dir, "work"),
                   read_paths=[], write_paths=[])
        os.mkdir(job["judge_dir"])
        os.mkdir(job["work_dir"])
        env = {"HOME": job["work_dir"], "TMPDIR": job["work_dir"], "LANG": "C.UTF-8"}
        return subprocess.Popen([sys.executable, "-I", "-B", "-S", _RUNNER, str(result_fd)], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=errf, cwd=job["work_dir"], env=env,
                                pass_fds=(result_fd,), start_new_session=True), host_dir, None
    job.update(judge_dir=sandbox_isolation.JUDGE_DIR, work_dir=sandbox_isolation.WORK_DIR,
               read_paths=list(iso.view) + ["/dev/urandom", "/dev/zero"],
               write_paths=[sandbox_isolation.WORK_DIR, "/dev/null"])
    fds = {name: _pipe_holding(data) for name, data in _compiled_programs(iso.python).items()}
    seccomp_fd = _pipe_holding(_SECCOMP) if _SECCOMP else -1
    info_r, info_w = os.pipe()
    try:
        cmd = iso.command(fds, DISK_MB, slot, RUN_MEMORY_FACTOR * int(job["memory_mb"]), info_w, seccomp_fd) + [
            f"{sandbox_isolation.PROGRAM_DIR}/_sandbox_runner.pyc", str(result_fd)]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errf, cwd="/",
                                env={"LANG": "C.UTF-8"}, pass_fds=(result_fd, info_w, *fds.values(),
                                                                   *([seccomp_fd] if seccomp_fd >= 0 else [])),
                                start_new_session=True, **iso.popen_kwargs())
    except OSError as exc:  # bwrap went away since the probe: the machine changed, not the candidate's doing
        os.close(info_r)
        raise SandboxUnavailable(f"cannot start the sandbox ({cmd[0]}): {exc}") from exc
    except BaseException:
        os.close(info_r)
        raise
    finally:
        for fd in (*fds.values(), info_w, *([seccomp_fd] if seccomp_fd >= 0 else [])):
            os.close(fd)
    return proc, None, info_r


def _remove_host_dir(path: str) -> None:
    """Without isolation only: remove the run's directory, bounded in time whatever the program left there."""
    try:
        subprocess.run(["rm", "-rf", "--one-file-system", path], timeout=5, capture_output=True)
    except (OSError, subprocess.SubprocessError):
        pass


def _run_job(job: dict, iso, wall: float, expected: list[str], n_tests: int | None, slot: int) -> dict[str, Any]:
    start = time.monotonic()
    deadline = start + wall
    r_fd, w_fd = os.pipe()
    proc = host_dir = info_fd = None
    progress = _Progress(expected, n_tests)
    timed_out = finished = False
    stderr_tail = ""
    try:
        with tempfile.TemporaryFile() as errf:
            proc, host_dir, info_fd = _launch(job, iso, w_fd, errf, slot)
            os.close(w_fd)
            w_fd = -1
            try:  # length-prefixed; stdin then stays open: closing it tells the judge to end the run
                data = marshal.dumps(job)
                proc.stdin.write(len(data).to_bytes(8, "big") + data)
                proc.stdin.flush()
            except (BrokenPipeError, OSError):
                pass
            buf = b""
            line_cap = 6 * int(job["max_output_chars"]) + (1 << 20)  # stdout as JSON: \u0000 is 6 bytes
            while not finished:
                remaining = deadline - time.monotonic()
                ready = select.select([r_fd], [], [], remaining)[0] if remaining > 0 else []
                if not ready:
                    timed_out = True
                    break
                chunk = os.read(r_fd, 1 << 16)
                if not chunk:
                    break  # the judge ended (or died) without a verdict
                buf += chunk
                while not finished and b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    try:
                        finished = progress.handle(json.loads(line))
                    except ValueError:
                        pass
                if len(buf) > line_cap:
                    break
            try:  # verdict known or time up: the judge ends the run
                proc.stdin.close()
            except OSError:
                pass
            if not finished and not timed_out:  # the judge ended without a verdict, or stopped reporting
                try:
                    proc.wait(timeout=max(0.2, min(0.5, deadline - time.monotonic())))
                except subprocess.TimeoutExpired:
                    timed_out = True
            _end_run(proc, info_fd, grace=0.2)
            errf.seek(0)
            stderr_tail = errf.read(4096).decode("utf-8", "replace")
    finally:
        if proc is not None and proc.returncode is None:
            _end_run(proc, info_fd, grace=0.0)
        if info_fd is not None:
            os.close(info_fd)
        if w_fd >= 0:
            os.close(w_fd)
        os.close(r_fd)
        if host_dir is not None:
            _remove_host_dir(host_dir)
    return _summarise(progress, proc.returncode if proc else None, timed_out and not finished, wall, stderr_tail,
                      time.monotonic() - start, len(expected) or None)


def _summarise(progress: _Progress, returncode, timed_out, wall, stderr_tail, seconds, n_io) -> dict[str, Any]:
    details = _blank_details(seconds)
    if progress.final is not None:
        return {**details, **progress.final}
    starts = progress.starts
    details["tests_passed"] = progress.passed if n_io else max(0, len(starts) - 1)
    details["tests_total"] = n_io or 0
    if starts:
        details["failing_test"] = trim(starts[-1], 400)
    sig = -returncode if returncode is not None and returncode < 0 else (
        returncode - 128 if returncode is not None and returncode > 128 else None)
    if timed_out or sig == signal.SIGKILL and seconds >= wall * 0.95:
        details["status"] = "timeout"
        details["error"] = f"wall-clock limit of {wall:g}s exceeded" + (" (while running the test above)" if starts else "")
    elif sig == signal.SIGXCPU:
        details["status"] = "timeout"
        details["error"] = "CPU time limit exceeded"
    elif sig == signal.SIGXFSZ:
        details["status"] = "file_size_limit"
        details["error"] = "file size limit exceeded"
    elif sig is not None:
        details["status"] = "killed"
        details["error"] = f"killed by signal {signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else sig}"
    else:
        details["status"] = "crashed"
        details["error"] = trim(stderr_tail.strip() or f"sandbox exited with code {returncode} without a result", 400)
    return details


_STATUS_REASON = {
    "passed": "all tests passed",
    "failed": "a test failed",
    "wrong_answer": "wrong output",
    "runtime_error": "runtime error",
    "load_error": "error while loading the code",
    "syntax_error": "syntax error",
    "timeout": "time limit exceeded",
    "memory_limit": "memory limit exceeded",
    "output_limit": "output limit exceeded",
    "file_size_limit": "file size limit exceeded",
    "recursion_limit": "recursion limit exceeded",
    "forbidden": "forbidden operation (process, network or file access outside the sandbox)",
    "missing_entry_point": "entry point not defined",
    "no_tests": "no tests found",
    "bad_tests": "tests do not parse",
}


def verify_code(response: str, ground_truth: Any, timeout: float | None = None,
                memory_mb: int | None = None) -> VerifyResult:
    """Extract the last fenced code block of `response` and run it against the tests."""
    code = last_code_block(response or "")
    if code is None or not code.strip():
        return VerifyResult(0.0, reason="no fenced code block (```python ... ```) in the answer",
                            details={"status": "no_code", "tests_passed": 0, "tests_total": 0})
    if len(code) > 200_000:
        return VerifyResult(0.0, extracted=trim(code, 100), reason=f"code too long ({len(code)} chars)",
                            details={"status": "too_long", "tests_passed": 0, "tests_total": 0})
    d = run_code(code, ground_truth, timeout=timeout, memory_mb=memory_mb)
    ok = d["status"] == "passed" and d["tests_total"] > 0
    reason = _STATUS_REASON.get(d["status"], d["status"])
    if d["tests_total"]:
        reason += f" ({d['tests_passed']}/{d['tests_total']} tests passed)"
    if not ok and d.get("error") and d["status"] not in ("failed",):
        first_line = d["error"].strip().splitlines()[-1] if d["error"].strip() else ""
        if first_line:
            reason += f": {trim(first_line, 160)}"
    return VerifyResult(1.0 if ok else 0.0, extracted=code, reason=reason, details=d)
