"""A small pool of persistent verifier processes with a hard wall-clock limit per job.

Why: math-verify (and sympy, and reasoning-gym's scorers) can run for minutes on adversarial input, its own
timeout is ``signal.alarm`` based (main thread only, whole seconds) and prints the full input when it fires.
verl calls ``compute_score`` from an executor thread, and rl2f's loops call verifiers through
``asyncio.to_thread``. So the heavy work runs in separate processes:

* each worker is ``python -m reward_fns._pool_worker`` (a plain subprocess, not ``multiprocessing``: no
  pickling of the caller's ``__main__``, no fork of a threaded parent), in its own session, with stderr sent
  to /dev/null (nothing it prints can flood the trainer's logs) and an address-space limit;
* a job is one JSON line in, one JSON line out. The worker first imports what the job needs and says so
  (``ack``); only then starts the job clock, so a cold import never counts as a verifier timeout;
* if the result is not back within the limit the worker's process group is SIGKILLed and the slot is
  refilled lazily: a stuck computation (even one inside C code that ignores signals) costs one respawn;
* workers are spawned on demand, up to ``size`` at a time; callers beyond that wait for a free worker.

Thread-safe; safe to use from any thread and from inside an event loop (via ``asyncio.to_thread``).
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

_PKG_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class PoolTimeout(Exception):
    """The job did not finish within its wall-clock limit (the worker was killed)."""


class PoolError(Exception):
    """The worker died or answered garbage (e.g. it ran out of memory)."""


@dataclass(eq=False)
class _Worker:
    proc: subprocess.Popen
    buf: bytes = b""
    jobs: int = 0

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.kill()
        except ProcessLookupError:
            pass
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except Exception:  # noqa: BLE001
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def send(self, msg: dict) -> None:
        data = (json.dumps(msg) + "\n").encode()
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def recv(self, deadline: float) -> dict:
        """Read one JSON line, waiting at most until `deadline` (time.monotonic())."""
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PoolTimeout()
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                raise PoolTimeout()
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise PoolError(f"verifier worker exited (code {self.proc.poll()})")
            self.buf += chunk
            if len(self.buf) > 16 << 20:
                raise PoolError("verifier worker answer too large")
        line, self.buf = self.buf.split(b"\n", 1)
        try:
            return json.loads(line)
        except ValueError as exc:
            raise PoolError(f"unreadable answer from verifier worker: {line[:200]!r}") from exc


class WorkerPool:
    """Persistent verifier subprocesses. ``call(fn, args, timeout)`` runs ``reward_fns._pool_worker.JOBS[fn]``.

    Args:
        size: maximum number of worker processes (and concurrent jobs).
        memory_mb: address-space limit (RLIMIT_AS) of each worker.
        max_jobs_per_worker: recycle a worker after this many jobs (bounds slow memory growth in sympy caches).
        startup_timeout: limit for starting a worker and for the imports a job asks for (not job time).
        jobs_module: a module (importable from this process's ``sys.path``) whose ``JOBS`` dict the workers add
            to their own; the tests point it at ``tests/pool_test_jobs.py`` so that their jobs (one that blocks
            SIGALRM, a busy loop, a chatty echo) stay out of the production worker.
    """

    def __init__(self, size: int = 2, memory_mb: int = 4096, max_jobs_per_worker: int = 2000,
                 startup_timeout: float = 120.0, jobs_module: str | None = None):
        self.size = max(1, int(size))
        self.memory_mb = int(memory_mb)
        self.max_jobs_per_worker = max_jobs_per_worker
        self.startup_timeout = startup_timeout
        self.jobs_module = jobs_module
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._cond = threading.Condition()
        self._busy = 0
        self._pid = os.getpid()
        self._seq = 0
        self.kills = 0  # workers killed for exceeding a limit (observable in tests and benchmarks)
        self.spawns = 0

    # -- worker lifecycle ---------------------------------------------------------------------------------
    def _spawn(self) -> _Worker:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": os.pathsep.join([_PKG_PARENT] + [p for p in sys.path if p]),
            "PYTHONDONTWRITEBYTECODE": "1",
            "OMP_NUM_THREADS": "1",
            "LANG": "C.UTF-8",
        }
        proc = subprocess.Popen(
            [sys.executable, "-u", "-m", "reward_fns._pool_worker", str(self.memory_mb)]
            + ([self.jobs_module] if self.jobs_module else []),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            start_new_session=True, env=env, cwd="/", close_fds=True,
        )
        worker = _Worker(proc)
        self.spawns += 1
        try:
            hello = worker.recv(time.monotonic() + self.startup_timeout)
        except (PoolTimeout, PoolError) as exc:
            worker.kill()
            raise PoolError(f"verifier worker failed to start: {exc}") from exc
        if hello.get("ready") is not True:
            worker.kill()
            raise PoolError(f"verifier worker failed to start: {hello}")
        return worker

    def _acquire(self) -> _Worker | None:
        with self._cond:
            if self._pid != os.getpid():  # we were forked: the parent's workers are not ours
                self._idle, self._all, self._busy, self._pid = [], set(), 0, os.getpid()
            while not self._idle and self._busy >= self.size:
                self._cond.wait()
            self._busy += 1
            while self._idle:
                w = self._idle.pop()
                if w.alive():
                    return w
                self._all.discard(w)
            return None  # caller spawns outside the lock

    def _release(self, worker: _Worker | None) -> None:
        with self._cond:
            self._busy -= 1
            if worker is not None:
                if worker.alive() and worker.jobs < self.max_jobs_per_worker:
                    self._idle.append(worker)
                else:
                    self._all.discard(worker)
                    worker.kill()
            self._cond.notify()

    def _discard(self, worker: _Worker) -> None:
        with self._cond:
            self._all.discard(worker)
        worker.kill()

    # -- public API ---------------------------------------------------------------------------------------
    def call(self, fn: str, args: dict[str, Any], timeout: float, preload: tuple[str, ...] = ()) -> Any:
        """Run job `fn` with `args` in a worker; return its result.

        Raises `PoolTimeout` if the job ran longer than `timeout` seconds (the worker is killed and replaced),
        `PoolError` if the worker died (e.g. out of memory) or the job raised (message = the job's error).
        """
        worker = self._acquire()
        try:
            if worker is None:
                worker = self._spawn()
                with self._cond:
                    self._all.add(worker)
            with self._cond:
                self._seq += 1
                job_id = self._seq
            worker.jobs += 1
            try:
                worker.send({"id": job_id, "fn": fn, "args": args, "preload": list(preload),
                             "soft_timeout": float(timeout)})
                ack = worker.recv(time.monotonic() + self.startup_timeout)
                if ack.get("id") != job_id or "ack" not in ack:
                    raise PoolError(f"verifier worker protocol error: {ack}")
                answer = worker.recv(time.monotonic() + float(timeout))
            except PoolTimeout:
                self.kills += 1
                self._discard(worker)
                worker = None
                raise
            except (PoolError, OSError) as exc:
                self._discard(worker)
                worker = None
                raise PoolError(str(exc) or type(exc).__name__) from exc
            if answer.get("id") != job_id:
                self._discard(worker)
                worker = None
                raise PoolError(f"verifier worker protocol error: {answer}")
            if not answer.get("ok"):
                if answer.get("timeout"):  # the worker's own soft alarm fired; the worker is still healthy
                    raise PoolTimeout()
                raise PoolError(answer.get("error", "job failed"))
            return answer.get("result")
        finally:
            self._release(worker)

    def shutdown(self) -> None:
        with self._cond:
            workers = list(self._all)
            self._all.clear()
            self._idle.clear()
        for w in workers:
            w.kill()

    def worker_pids(self) -> list[int]:
        with self._cond:
            return [w.proc.pid for w in self._all if w.alive()]


_POOLS: dict[str, WorkerPool] = {}
_POOLS_LOCK = threading.Lock()


def get_pool(name: str = "verify") -> WorkerPool:
    """The process-wide pool `name` (created on first use; size from ``RL2F_VERIFY_WORKERS``, default 2)."""
    with _POOLS_LOCK:
        pool = _POOLS.get(name)
        if pool is None:
            size = int(os.environ.get("RL2F_VERIFY_WORKERS", "0") or 0) or min(2, os.cpu_count() or 1)
            mem = int(os.environ.get("RL2F_VERIFY_MEMORY_MB", "4096"))
            pool = _POOLS[name] = WorkerPool(size=size, memory_mb=mem)
        return pool


@atexit.register
def _shutdown_all() -> None:
    for pool in list(_POOLS.values()):
        pool.shutdown()
