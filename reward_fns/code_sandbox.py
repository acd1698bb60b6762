"""Run candidate code against unit tests in a sandboxed subprocess.

Ground truth (a dict, or its JSON string) is one of
  * function-call tests (HumanEval style): ``{"tests": "<asserts, or def check(candidate) + check(f)>",
    "entry_point": "f", "prompt": "<optional code run before the candidate, e.g. imports>"}``
  * stdin/stdout tests (Codeforces / LiveCodeBench style): ``{"io": [{"input": "...", "output": "..."}, ...]}``
The candidate code is the last fenced code block of the reply (``last_code_block``).

Isolation of one run (`run_code`):
  * a private temp dir (``mkdtemp``) as cwd, HOME and TMPDIR, removed afterwards whatever happens;
  * an environment with nothing but PATH, HOME, TMPDIR, LANG; ``python -I -B`` (no user site, no env vars);
  * ``unshare -rnp --fork --kill-child`` when the kernel allows it (probed once): no network interface at
    all, and a private PID namespace, so every process the code manages to create dies with it;
  * inside, before the candidate runs (`reward_fns._sandbox_runner`): RLIMIT_AS (``code_memory_mb``),
    RLIMIT_CPU, RLIMIT_FSIZE, RLIMIT_NOFILE, no core dumps, and an audit hook refusing fork/exec/subprocess,
    sockets, ctypes, signals, and writes/deletes/renames outside the temp dir; stdout is capped;
  * its own session / process group, SIGKILLed on the wall-clock limit (``code_timeout``) and again after
    every run, so nothing outlives the call.

Known limit: the tests run in the candidate's own process (as in HumanEval's harness), so the sandbox protects
the machine, not the *reward* from a program written to game it (e.g. returning an object whose ``__eq__`` is
always true, or forging the runner's report by inspecting its frames; stdin/stdout programs also run inside
the runner). Watch for reward hacking when training on code.

Result details: ``status`` (passed, failed, wrong_answer, runtime_error, timeout, memory_limit,
output_limit, forbidden, syntax_error, ...), ``tests_passed``/``tests_total``, and for the first failure
``failing_test``, ``expected``, ``got``, ``error`` (all trimmed) — the teacher's feedback material.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from .common import Verdict, limit, trim
from .extraction import last_code_block

__all__ = ["run_code", "verify_code", "parse_code_ground_truth", "sandbox_info", "CodeGroundTruthError"]

_RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_sandbox_runner.py")
_UNSHARE_ARGS = ["unshare", "--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child"]
_unshare_ok: bool | None = None
_unshare_lock = threading.Lock()
_SLOTS = threading.BoundedSemaphore(int(os.environ.get("RL2F_SANDBOX_PARALLEL", "0") or 0) or (os.cpu_count() or 1))


class CodeGroundTruthError(ValueError):
    """The ground truth is not a valid code-task ground truth (a data problem, not a model failure)."""


def _use_unshare() -> bool:
    global _unshare_ok
    with _unshare_lock:
        if _unshare_ok is None:
            if os.environ.get("RL2F_SANDBOX_UNSHARE", "1") in ("0", "false", "no") or not shutil.which("unshare"):
                _unshare_ok = False
            else:
                try:
                    _unshare_ok = subprocess.run(_UNSHARE_ARGS + ["true"], capture_output=True, timeout=10).returncode == 0
                except (OSError, subprocess.SubprocessError):
                    _unshare_ok = False
        return _unshare_ok


def sandbox_info() -> dict[str, Any]:
    """How runs are isolated on this machine (for logs and `python -m rl2f_plugin info`)."""
    return {"network_namespace": _use_unshare(), "pid_namespace": _use_unshare(), "audit_hook": True,
            "python": sys.executable}


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


def _rmtree(path: str) -> None:
    def onerror(func, p, exc_info):
        try:
            os.chmod(os.path.dirname(p), stat.S_IRWXU)
            os.chmod(p, stat.S_IRWXU)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=onerror)
    if os.path.exists(path):
        shutil.rmtree(path, ignore_errors=True)


def _kill_group(proc: subprocess.Popen, wait: float = 2.0) -> None:
    """SIGKILL `proc`'s process group and wait (bounded) until its members are gone: we reap `proc`; other
    members (the runner under ``unshare --fork``) are reaped by someone else, a moment later."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        proc.poll()
        try:
            os.killpg(proc.pid, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.005)


def run_code(code: str, ground_truth: Any, timeout: float | None = None, memory_mb: int | None = None,
             max_output_chars: int = 1 << 20, file_size_mb: int = 16) -> dict[str, Any]:
    """Run `code` against the tests of `ground_truth` in the sandbox. Returns the details dict
    (``status``, ``tests_passed``, ``tests_total``, ``failing_test``, ``expected``, ``got``, ``error``,
    ``seconds``). Never raises for anything the code does; raises `CodeGroundTruthError` for bad ground truth."""
    gt = parse_code_ground_truth(ground_truth)
    wall = limit("code_timeout", timeout)
    mem = int(limit("code_memory_mb", memory_mb))
    nonce = secrets.token_hex(16)
    job = {
        "mode": "io" if "io" in gt else "func",
        "code": code,
        "tests": gt.get("tests", ""),
        "entry_point": gt.get("entry_point") or "",
        "prompt": gt.get("prompt") or "",
        "io": gt.get("io") or [],
        "memory_mb": mem,
        "cpu_seconds": max(1, math.ceil(wall)) + 1,
        "file_size_mb": file_size_mb,
        "max_output_chars": max_output_chars,
        "nonce": nonce,
    }
    with _SLOTS:
        return _run_job(job, wall)


def _run_job(job: dict, wall: float) -> dict[str, Any]:
    start = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="rl2f-sbx-")
    r_fd, w_fd = os.pipe()
    job["result_fd"] = w_fd
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8"}
    cmd = [sys.executable, "-I", "-B", _RUNNER]
    if _use_unshare():
        cmd = _UNSHARE_ARGS + cmd
    proc = None
    events: list[dict] = []
    timed_out = False
    try:
        with tempfile.TemporaryFile() as errf:
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errf, cwd=tmp,
                                    env=env, pass_fds=(w_fd,), start_new_session=True, close_fds=True)
            os.close(w_fd)
            w_fd = -1
            try:
                proc.stdin.write(json.dumps(job).encode())
                proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            buf, total, got_done = b"", 0, False
            deadline = start + wall
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    timed_out = True
                    break
                ready, _, _ = select.select([r_fd], [], [], remaining)
                if not ready:
                    timed_out = True
                    break
                chunk = os.read(r_fd, 1 << 16)
                if not chunk:
                    break  # every writer closed: the runner finished (or died)
                total += len(chunk)
                if total <= 4 << 20:
                    buf += chunk
                if b'"ev": "done"' in chunk or b'"ev": "done"' in buf[-len(chunk) - 16:]:
                    got_done = True
                    break  # the runner reported its result; whatever else holds the pipe is killed below
            if timed_out:
                _kill_group(proc)
            try:  # after its report the runner only has to exit; lingering threads are not waited for
                proc.wait(timeout=1.0 if got_done else max(0.5, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = timed_out or not got_done
                _kill_group(proc)
                proc.wait(timeout=10)
            for line in buf.split(b"\n"):
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if isinstance(msg, dict) and msg.pop("nonce", None) == job["nonce"]:
                    events.append(msg)
            errf.seek(0)
            stderr_tail = errf.read(4096).decode("utf-8", "replace")
    finally:
        if proc is not None:
            _kill_group(proc, wait=0.0 if proc.returncode is not None and not timed_out else 2.0)
        if w_fd >= 0:
            os.close(w_fd)
        os.close(r_fd)
        _rmtree(tmp)
    return _summarise(events, proc.returncode if proc else None, timed_out, wall, stderr_tail,
                      time.monotonic() - start, len(job["io"]) if job["mode"] == "io" else None)


def _summarise(events, returncode, timed_out, wall, stderr_tail, seconds, n_io) -> dict[str, Any]:
    done = next((e for e in reversed(events) if e.get("ev") == "done"), None)
    starts = [e for e in events if e.get("ev") == "start"]
    details: dict[str, Any] = {"status": "", "tests_passed": 0, "tests_total": 0, "failing_test": "",
                               "expected": "", "got": "", "error": "", "seconds": round(seconds, 3)}
    if done is not None and not timed_out:
        details["status"] = done.get("status", "error")
        details["tests_passed"] = int(done.get("passed", 0))
        details["tests_total"] = int(done.get("total", 0))
        for k in ("failing_test", "expected", "got", "error"):
            if done.get(k) is not None:
                details[k] = trim(str(done[k]), 400)
        return details
    details["tests_passed"] = len(starts) - 1 if starts else 0
    details["tests_total"] = n_io or 0
    if starts:
        details["failing_test"] = trim(starts[-1].get("src", ""), 400)
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
                memory_mb: int | None = None) -> Verdict:
    """Extract the last fenced code block of `response` and run it against the tests."""
    code = last_code_block(response or "")
    if code is None or not code.strip():
        return Verdict(0.0, "no fenced code block (```python ... ```) in the answer", None,
                       {"status": "no_code", "tests_passed": 0, "tests_total": 0})
    if len(code) > 200_000:
        return Verdict(0.0, f"code too long ({len(code)} chars)", trim(code, 100),
                       {"status": "too_long", "tests_passed": 0, "tests_total": 0})
    d = run_code(code, ground_truth, timeout=timeout, memory_mb=memory_mb)
    ok = d["status"] == "passed" and d["tests_total"] > 0
    reason = _STATUS_REASON.get(d["status"], d["status"])
    if d["tests_total"]:
        reason += f" ({d['tests_passed']}/{d['tests_total']} tests passed)"
    if not ok and d.get("error") and d["status"] not in ("failed",):
        first_line = d["error"].strip().splitlines()[-1] if d["error"].strip() else ""
        if first_line:
            reason += f": {trim(first_line, 160)}"
    return Verdict(1.0 if ok else 0.0, reason, code, d)
