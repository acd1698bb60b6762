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
* a job's limit is on its *execution*: wall-clock time minus the time its worker sat runnable on the kernel's
  run queue waiting for a CPU (``/proc/<pid>/schedstat``; plain wall clock where the kernel does not report
  it), so a machine busy with other work slows a check without timing it out, up to `wall_limit` (4x the
  limit + 1 s of wall clock: nothing waits for ever). The worker's own soft alarm counts its CPU time
  (``ITIMER_PROF``) for the same reason;
* if the result is not back within the limit the worker's process group is SIGKILLed and the slot is
  refilled lazily: a stuck computation (even one inside C code that ignores signals) costs one respawn;
* workers are spawned on demand, up to ``size`` at a time; callers beyond that wait for a free worker, at most
  ``queue_timeout`` seconds (then `PoolQueueTimeout`): waiting is never charged to a job's own time limit.

Size: `default_pool_size` (the CPUs this process may use, shared by the agent-loop workers of the node, at most
`MAX_AUTO_WORKERS`); ``RL2F_VERIFY_WORKERS`` or `configure_pool` (``rl2f.verify_workers``) set it explicitly.

Accounting (`VerifyAccount`): a caller that wants to know where its time went (the didactic episode, the leak
guard) runs its verification under `run_bounded`, which charges to the caller's account every second spent
*waiting* (for an executor thread, for a pool worker, or in any other queue a verifier marks with
`account_wait`) apart from the seconds spent *executing*, bounds each separately, and counts the pool's job
timeouts. A job that times out is reported as a timeout, never silently as a wrong answer.

Thread-safe; safe to use from any thread and from inside an event loop (via `run_bounded` or ``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import contextvars
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


#: A job is stopped at this multiple of its limit in wall-clock time (+ 1 s) whatever its run-queue wait.
MAX_WALL_FACTOR = 4.0


def wall_limit(limit: float) -> float:
    """The wall-clock backstop of a job whose execution limit is `limit` seconds."""
    return MAX_WALL_FACTOR * limit + 1.0


def run_queue_wait(pid: int) -> float:
    """Seconds process `pid` has spent runnable but waiting for a CPU (``/proc/<pid>/schedstat``, 2nd field);
    0.0 where the kernel does not report it (the limits are then plain wall clock)."""
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


class PoolTimeout(Exception):
    """The job did not finish within its wall-clock limit (the worker was killed)."""


class PoolQueueTimeout(PoolTimeout):
    """No worker became free within the pool's ``queue_timeout`` (the job never ran)."""


class PoolError(Exception):
    """The worker died or answered garbage (e.g. it ran out of memory)."""


#: Upper bound of the automatic pool size (each worker holds math-verify + sympy, ~100 MB resident).
MAX_AUTO_WORKERS = 8
#: Default bound on waiting for a free worker (seconds); `configure_pool` / ``RL2F_VERIFY_QUEUE_TIMEOUT``.
DEFAULT_QUEUE_TIMEOUT = 600.0


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which Ray and containers narrow), else ``os.cpu_count()``."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_pool_size(workers_per_node: int = 1) -> int:
    """Verifier processes for one of `workers_per_node` processes that verify on this node (verl's agent-loop
    workers): an equal share of the usable CPUs, at least 1, at most `MAX_AUTO_WORKERS`."""
    return max(1, min(MAX_AUTO_WORKERS, usable_cpus() // max(1, int(workers_per_node))))


class VerifyAccount:
    """Where one verification's time went: seconds waiting (queues) vs executing, and the time-outs seen.

    Filled by `WorkerPool.call` (and any queue marked with `account_wait`) for the account of the current
    context (`run_bounded` sets it; ``asyncio.to_thread`` and executor hops carry it along)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._waiting_since: float | None = time.monotonic()  # from submission until a thread picks the job up
        self.queue_s = 0.0
        self.pool_calls = 0
        self.job_timeouts = 0        # pool jobs killed / interrupted at their own time limit
        self.queue_timeouts = 0      # pool calls that found no free worker within the pool's queue_timeout

    def start_wait(self) -> None:
        with self._lock:
            if self._waiting_since is None:
                self._waiting_since = time.monotonic()

    def end_wait(self) -> None:
        with self._lock:
            if self._waiting_since is not None:
                self.queue_s += time.monotonic() - self._waiting_since
                self._waiting_since = None

    def add_wait(self, seconds: float) -> None:
        """Charge `seconds` spent waiting elsewhere (a worker's wait for a CPU during its job) as waiting."""
        with self._lock:
            self.queue_s += max(0.0, seconds)

    def queued_s(self) -> float:
        """Seconds spent waiting so far, the wait in progress included."""
        with self._lock:
            ongoing = time.monotonic() - self._waiting_since if self._waiting_since is not None else 0.0
            return self.queue_s + ongoing


_ACCOUNT: contextvars.ContextVar[VerifyAccount | None] = contextvars.ContextVar("rl2f_verify_account", default=None)


@contextlib.contextmanager
def account_wait():
    """Charge the time spent in this block (waiting for a slot of some queue) to the current `VerifyAccount` as
    waiting, not execution. A no-op outside `run_bounded`."""
    account = _ACCOUNT.get()
    if account is None:
        yield
        return
    account.start_wait()
    try:
        yield
    finally:
        account.end_wait()


@contextlib.contextmanager
def accounting():
    """Record on a new `VerifyAccount` the pool waits and time-outs of the calls made in this block (this thread;
    what verl's ``compute_score`` path uses to say that a score of 0 came from a time limit)."""
    account = VerifyAccount()
    account.end_wait()
    token = _ACCOUNT.set(account)
    try:
        yield account
    finally:
        _ACCOUNT.reset(token)


class ExecutionTimeout(Exception):
    """`run_bounded`: the verification executed longer than its limit (queueing excluded)."""


class QueueTimeout(Exception):
    """`run_bounded`: the verification waited longer than its queue limit."""


_EXECUTOR: concurrent.futures.ThreadPoolExecutor | None = None
_EXECUTOR_LOCK = threading.Lock()
#: Threads of the verification executor: blocking verifier calls wait here, not in the event loop's default
#: executor, where verl's own tokenisation (``run_in_executor(None, ...)``) would queue behind them.
EXECUTOR_THREADS = 32


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    global _EXECUTOR
    with _EXECUTOR_LOCK:
        if _EXECUTOR is None:
            _EXECUTOR = concurrent.futures.ThreadPoolExecutor(EXECUTOR_THREADS, thread_name_prefix="rl2f-verify")
        return _EXECUTOR


async def run_bounded(fn, *args, exec_timeout: float, queue_timeout: float, account: VerifyAccount | None = None):
    """``fn(*args)`` in the verification executor, bounded by `exec_timeout` seconds of *execution* and
    `queue_timeout` seconds of *waiting* (for the thread and for pool workers), each measured on `account`.

    Raises `ExecutionTimeout` / `QueueTimeout` (the thread is left to finish on its own; the pool's hard limit
    bounds it). Returns ``fn``'s result; its account is `account` (pass one to read it afterwards)."""
    account = account if account is not None else VerifyAccount()
    loop = asyncio.get_running_loop()
    ctx = contextvars.copy_context()
    ctx.run(_ACCOUNT.set, account)

    def in_thread():
        account.end_wait()  # the thread picked the job up: waiting for the executor ends here
        return ctx.run(fn, *args)

    future = loop.run_in_executor(_executor(), in_thread)
    start = time.monotonic()
    while True:
        queued = account.queued_s()
        executed = time.monotonic() - start - queued
        if queued > queue_timeout:
            future.add_done_callback(_discard_result)
            raise QueueTimeout(f"waited {queued:.1f}s for the verifier (limit {queue_timeout:g}s)")
        if executed > exec_timeout:
            future.add_done_callback(_discard_result)
            raise ExecutionTimeout(f"ran {executed:.1f}s (limit {exec_timeout:g}s; {queued:.1f}s queueing not counted)")
        wait = min(exec_timeout - executed, queue_timeout - queued)
        done, _ = await asyncio.wait({future}, timeout=max(wait, 0.01))
        if done:
            return future.result()


def _discard_result(future) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: no "exception was never retrieved" noise for an abandoned check


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

    def recv(self, deadline: float | None = None, *, limit: float | None = None) -> dict:
        """Read one JSON line, waiting at most until `deadline` (time.monotonic()), or for at most `limit` seconds
        of the worker's execution (wall clock minus its run-queue wait, see the module docstring)."""
        fd = self.proc.stdout.fileno()
        start, queued0 = time.monotonic(), run_queue_wait(self.proc.pid)
        while b"\n" not in self.buf:
            if limit is None:
                remaining = deadline - time.monotonic()
            else:
                elapsed = time.monotonic() - start
                remaining = min(limit - elapsed + (run_queue_wait(self.proc.pid) - queued0), wall_limit(limit) - elapsed)
            if remaining <= 0:
                raise PoolTimeout()
            ready, _, _ = select.select([fd], [], [], remaining)
            if not ready:
                continue  # re-check: time spent waiting for a CPU does not count against `limit`
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
        queue_timeout: longest wait for a free worker before `PoolQueueTimeout` (not part of a job's time).
        memory_mb: address-space limit (RLIMIT_AS) of each worker.
        max_jobs_per_worker: recycle a worker after this many jobs (bounds slow memory growth in sympy caches).
        startup_timeout: limit for starting a worker and for the imports a job asks for (not job time).
        jobs_module: a module (importable from this process's ``sys.path``) whose ``JOBS`` dict the workers add
            to their own; the tests point it at ``tests/pool_test_jobs.py`` so that their jobs (one that blocks
            SIGALRM, a busy loop, a chatty echo) stay out of the production worker.
    """

    def __init__(self, size: int = 2, memory_mb: int = 4096, max_jobs_per_worker: int = 2000,
                 startup_timeout: float = 120.0, jobs_module: str | None = None,
                 queue_timeout: float = DEFAULT_QUEUE_TIMEOUT):
        self.size = max(1, int(size))
        self.queue_timeout = float(queue_timeout)
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
        """A free worker (None: spawn one), after at most ``queue_timeout`` seconds (else `PoolQueueTimeout`)."""
        with self._cond:
            if self._pid != os.getpid():  # we were forked: the parent's workers are not ours
                self._idle, self._all, self._busy, self._pid = [], set(), 0, os.getpid()
            deadline = time.monotonic() + self.queue_timeout
            while not self._idle and self._busy >= self.size:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise PoolQueueTimeout(f"no verifier worker free within {self.queue_timeout:g}s "
                                           f"({self.size} workers busy)")
                self._cond.wait(remaining)
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
                if worker.alive() and worker.jobs < self.max_jobs_per_worker and len(self._all) <= self.size:
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
        `PoolQueueTimeout` if no worker was free within ``queue_timeout`` (time waiting is never part of
        `timeout`), `PoolError` if the worker died (e.g. out of memory) or the job raised (message = the job's
        error). Waits, job time-outs and queue time-outs are recorded on the current `VerifyAccount`.
        """
        account = _ACCOUNT.get()
        try:
            with account_wait():
                worker = self._acquire()
        except PoolQueueTimeout:
            if account is not None:
                account.queue_timeouts += 1
            raise
        if account is not None:
            account.pool_calls += 1
        try:
            return self._run(worker, fn, args, timeout, preload)
        except PoolTimeout:
            if account is not None:
                account.job_timeouts += 1
            raise

    def _run(self, worker: _Worker | None, fn: str, args: dict[str, Any], timeout: float, preload: tuple[str, ...]) -> Any:
        """`call` once a slot is held: spawn if needed, send the job, wait for its answer, release the slot."""
        try:
            if worker is None:
                with account_wait():  # a cold start is the pool's set-up, not the job's time
                    worker = self._spawn()
                with self._cond:
                    self._all.add(worker)
            with self._cond:
                self._seq += 1
                job_id = self._seq
            worker.jobs += 1
            try:
                with account_wait():  # imports and set-up the job asks for: untimed, as in the worker
                    worker.send({"id": job_id, "fn": fn, "args": args, "preload": list(preload),
                                 "soft_timeout": float(timeout)})
                    ack = worker.recv(time.monotonic() + self.startup_timeout)
                if ack.get("id") != job_id or "ack" not in ack:
                    raise PoolError(f"verifier worker protocol error: {ack}")
                cpu_wait0 = run_queue_wait(worker.proc.pid)
                answer = worker.recv(limit=float(timeout))
                account = _ACCOUNT.get()
                if account is not None:  # the job's wait for a CPU is queueing for the caller's budget too
                    account.add_wait(run_queue_wait(worker.proc.pid) - cpu_wait0)
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


_CONFIGURED: dict[str, float] = {}


def configure_pool(size: int | None = None, queue_timeout: float | None = None) -> None:
    """Set the verifier pool's size (None/0: keep ``RL2F_VERIFY_WORKERS`` or the default) and queue timeout for
    this process (the didactic loop calls it with ``rl2f.verify_workers`` / ``rl2f.verify_queue_timeout_s``).
    An existing pool is resized in place: extra workers retire as they come back idle."""
    with _POOLS_LOCK:
        if size:
            _CONFIGURED["size"] = max(1, int(size))
        if queue_timeout is not None:
            _CONFIGURED["queue_timeout"] = float(queue_timeout)
        pool = _POOLS.get("verify")
    if pool is not None:
        size, queue = _pool_settings()
        with pool._cond:
            pool.size, pool.queue_timeout = size, queue
            pool._cond.notify_all()


def _pool_settings() -> tuple[int, float]:
    """(size, queue_timeout): `configure_pool`, else the environment, else the defaults."""
    env_size = int(os.environ.get("RL2F_VERIFY_WORKERS", "0") or 0)
    size = int(_CONFIGURED.get("size") or env_size or default_pool_size())
    env_queue = os.environ.get("RL2F_VERIFY_QUEUE_TIMEOUT")
    queue = _CONFIGURED.get("queue_timeout", float(env_queue) if env_queue else DEFAULT_QUEUE_TIMEOUT)
    return size, queue


def get_pool(name: str = "verify") -> WorkerPool:
    """The process-wide pool `name` (created on first use; size and queue timeout: `configure_pool`, else
    ``RL2F_VERIFY_WORKERS`` / ``RL2F_VERIFY_QUEUE_TIMEOUT``, else `default_pool_size` / 600 s)."""
    with _POOLS_LOCK:
        pool = _POOLS.get(name)
        if pool is None:
            size, queue = _pool_settings()
            mem = int(os.environ.get("RL2F_VERIFY_MEMORY_MB", "4096"))
            pool = _POOLS[name] = WorkerPool(size=size, memory_mb=mem, queue_timeout=queue)
        return pool


@atexit.register
def _shutdown_all() -> None:
    for pool in list(_POOLS.values()):
        pool.shutdown()
