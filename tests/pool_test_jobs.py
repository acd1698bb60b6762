"""Jobs for the worker-pool tests (``WorkerPool(jobs_module="pool_test_jobs")``), kept out of the production
worker `reward_fns._pool_worker`. Not a test module (pytest does not collect it); the workers import it by
name, from the test process's ``sys.path``."""

from __future__ import annotations

import os
import signal
import time


def block(args: dict) -> dict:
    """Sleep with the soft alarm's signal blocked (and using no CPU, which that alarm counts): a job only the
    parent's hard kill stops."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM, signal.SIGPROF})
    time.sleep(float(args.get("seconds", 60)))
    return {"slept": True}


def echo(args: dict) -> dict:
    """Return the arguments and the worker's pid; with ``print``, write to stdout first (from Python and from
    the file descriptor), as a chatty library would: that must not break the protocol."""
    if args.get("print"):
        print(args["print"])
        os.write(1, b"raw fd write\n")
    return {"echo": args, "pid": os.getpid()}


def spin(args: dict) -> dict:
    """A pure-Python busy loop: the worker's soft alarm interrupts it."""
    n = 0
    while True:
        n += 1


def work(args: dict) -> dict:
    """Busy for ``cpu_seconds`` of this process's CPU time (however long that takes on a busy machine)."""
    end = time.process_time() + float(args["cpu_seconds"])
    while time.process_time() < end:
        pass
    return {"done": True}


JOBS = {"test_block": block, "test_echo": echo, "test_spin": spin, "test_work": work}
