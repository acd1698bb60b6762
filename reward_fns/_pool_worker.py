"""Entry point of a verifier worker process (see `reward_fns.worker_pool`). Not for direct use.

Usage: ``python -m reward_fns._pool_worker MEMORY_MB [JOBS_MODULE]``; `JOBS` maps a job name to a function of
its ``args`` dict; a ``JOBS_MODULE`` (an importable module with its own ``JOBS`` dict) adds jobs.

Protocol (JSON lines on stdin/stdout):
  worker -> {"ready": true}                                    once, after start-up
  parent -> {"id", "fn", "args", "preload", "soft_timeout"}
  worker -> {"id", "ack": true}                                after importing `preload` and running the
                                                               job's PREPARE step (not timed)
  worker -> {"id", "ok": true, "result": ...} | {"id", "ok": false, "error": str, "timeout": bool}

The worker runs each job under a soft ``setitimer`` alarm on its CPU time (``ITIMER_PROF``: time waiting for a
CPU on a busy machine does not count) slightly shorter than the parent's hard limit, so most runaway jobs are
interrupted cheaply; the parent kills the whole worker if the alarm cannot interrupt (e.g. a huge integer power
inside C code) or if the job blocks without using CPU.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import resource
import signal
import sys


class JobTimeout(BaseException):
    """Raised by the soft alarm. A BaseException so that libraries' ``except Exception`` cannot swallow it."""


def _on_alarm(signum, frame):
    raise JobTimeout()


def _job_math(args: dict) -> dict:
    from reward_fns.math_verifier import check_in_worker

    return check_in_worker(args["gold"], args["pred"])


def _job_rg(args: dict) -> dict:
    from reward_fns.reasoning_gym_verifier import score_in_worker

    return score_in_worker(args["generator"], args["answer"], args.get("entry"), args.get("config"),
                           args.get("index"), args.get("ground_truth"))


def _prepare_rg(args: dict) -> None:
    from reward_fns.reasoning_gym_verifier import prepare_in_worker

    prepare_in_worker(args["generator"], args.get("config"))


PREPARE = {"rg": _prepare_rg}

JOBS = {
    "math": _job_math,
    "rg": _job_rg,
}


def _write(out, msg: dict) -> None:
    data = (json.dumps(msg, default=str) + "\n").encode()
    while data:
        data = data[out.write(data):]


def main() -> None:
    memory_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    if memory_mb > 0:
        limit = memory_mb * 1024 * 1024
        try:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        except (ValueError, OSError):
            pass
    # No PR_SET_PDEATHSIG: it fires when the *thread* that spawned us exits (e.g. an executor thread), not the
    # process. A dead parent closes our stdin instead, and the loop below ends; the soft alarm bounds any job.
    logging.disable(logging.CRITICAL)  # math-verify logs whole inputs on timeouts; nobody reads them here
    signal.signal(signal.SIGPROF, _on_alarm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(sys, "set_int_max_str_digits"):  # Python >= 3.11 (and patched 3.10)
        sys.set_int_max_str_digits(100_000)
    # The protocol gets a private copy of fd 1; fd 1 itself (and sys.stdout) go to /dev/null, so a library
    # that prints (from Python or from C) cannot corrupt the JSON-lines channel.
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115
    inp = sys.stdin.buffer
    if len(sys.argv) > 2:  # WorkerPool(jobs_module=...): extra jobs; only the tests use it (tests/pool_test_jobs.py)
        JOBS.update(importlib.import_module(sys.argv[2]).JOBS)
    try:
        import reward_fns.math_verifier  # noqa: F401  (warm: math-verify + sympy)
    except Exception:  # noqa: BLE001
        pass
    _write(out, {"ready": True})
    for line in inp:
        try:
            job = json.loads(line)
        except ValueError:
            continue
        job_id = job.get("id")
        try:
            for mod in job.get("preload") or ():
                importlib.import_module(mod)
            if job.get("fn") in PREPARE:  # untimed set-up (e.g. building a reasoning-gym dataset)
                PREPARE[job["fn"]](job.get("args") or {})
        except Exception as exc:  # noqa: BLE001
            _write(out, {"id": job_id, "ack": True})
            _write(out, {"id": job_id, "ok": False, "error": f"set-up failed: {type(exc).__name__}: {exc}"[:500],
                         "timeout": False})
            continue
        _write(out, {"id": job_id, "ack": True})
        fn = JOBS.get(job.get("fn"))
        if fn is None:
            _write(out, {"id": job_id, "ok": False, "error": f"unknown job {job.get('fn')!r}", "timeout": False})
            continue
        limit = float(job.get("soft_timeout") or 0)
        # leave the answer time to get back before the parent's hard deadline, even on a loaded machine
        soft = limit - max(0.1 * limit, 0.5) if limit > 1.0 else limit * 0.5
        try:
            if soft > 0:
                signal.setitimer(signal.ITIMER_PROF, soft)
            result = fn(job.get("args") or {})
            signal.setitimer(signal.ITIMER_PROF, 0)
            msg = {"id": job_id, "ok": True, "result": result}
        except JobTimeout:
            msg = {"id": job_id, "ok": False, "error": "timeout", "timeout": True}
        except MemoryError:
            signal.setitimer(signal.ITIMER_PROF, 0)
            msg = {"id": job_id, "ok": False, "error": "out of memory", "timeout": False}
        except RecursionError:
            signal.setitimer(signal.ITIMER_PROF, 0)
            msg = {"id": job_id, "ok": False, "error": "recursion too deep", "timeout": False}
        except Exception as exc:  # noqa: BLE001
            signal.setitimer(signal.ITIMER_PROF, 0)
            msg = {"id": job_id, "ok": False, "error": f"{type(exc).__name__}: {exc}"[:500], "timeout": False}
        try:
            _write(out, msg)
        except JobTimeout:  # the alarm fired between the job's end and the write
            _write(out, msg)


if __name__ == "__main__":
    main()
