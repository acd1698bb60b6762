"""Host-side checks shared by the code-sandbox tests (test_sandbox_attacks.py, test_verifiers_code.py): the
processes of a sandbox uid of this test process's own, so that other runs on the machine do not count."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager

from reward_fns import sandbox_isolation


@contextmanager
def own_sandbox_uid():
    """Runs started inside use a sandbox uid no other process on the machine uses (RL2F_SANDBOX_UID)."""
    saved = os.environ.get("RL2F_SANDBOX_UID")
    os.environ["RL2F_SANDBOX_UID"] = str(3_000_000 + os.getpid() % 1_000_000)
    sandbox_isolation.isolation.cache_clear()
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("RL2F_SANDBOX_UID", None)
        else:
            os.environ["RL2F_SANDBOX_UID"] = saved
        sandbox_isolation.isolation.cache_clear()


def sandbox_uid_processes() -> list[int]:
    """pids of the processes running as the sandbox uid (seen from the host)."""
    uid = sandbox_isolation._sandbox_uid()
    pids = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.stat(f"/proc/{pid}").st_uid == uid:
                    pids.append(int(pid))
            except OSError:
                pass
    return pids


def no_sandbox_processes(within: float = 2.0) -> bool:
    """True once no process of the sandbox uid is left; the kernel ends a PID namespace asynchronously, so
    allow it `within` seconds."""
    deadline = time.monotonic() + within
    while sandbox_uid_processes():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def sandbox_owned(directory: str) -> set[str]:
    """Entries of `directory` the sandbox uid owns, or named like the attacks' files ("pwned")."""
    uid, found = sandbox_isolation._sandbox_uid(), set()
    try:
        names = os.listdir(directory)
    except OSError:
        return found
    for name in names:
        try:
            if "pwned" in name or os.lstat(os.path.join(directory, name)).st_uid == uid:
                found.add(name)
        except OSError:
            pass
    return found
