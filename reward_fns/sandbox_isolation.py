"""Kernel isolation of the code sandbox: who may do what, and which kernel mechanism enforces it.

Threat model: the candidate program is hostile and stronger than its author (a policy trained against the
reward). It runs arbitrary Python and native code (ctypes, compiled extensions, new interpreters), and wants
(a) a score without a solution, (b) to change or read anything outside its run (this project's files, the host's
files, other processes, other runs, the trainer's secrets), or (c) to crash, hang or exhaust the trainer that
calls `compute_score`. The test code and expected outputs come from the dataset and are trusted. The kernel,
bubblewrap and the Python interpreter's own files are trusted. Out of scope: kernel exploits (reduced, not
excluded: no capabilities, no nested user namespaces, no network) and side channels (timing, CPU load).

Guarantees, in the order to check them (each names the mechanism; none relies on Python-level checks):

1. **Separate host identity.** A run starts as the dedicated unprivileged host uid/gid ``RL2F_SANDBOX_UID``
   (default 2000000, no supplementary groups) when the trainer is root; otherwise as the caller's own uid.
   Nothing of the run is host root, so per-user kernel limits (RLIMIT_NPROC) apply.
2. **Namespaces (bubblewrap, ``bwrap --unshare-all``).** New user, mount, PID, network, IPC, UTS and cgroup
   namespaces; no capabilities (``--cap-drop ALL``); no further user namespaces (``--disable-userns``); a new
   session (no terminal injection); the judge is the PID namespace's init (``--as-pid-1``): when it ends, the
   kernel kills every process of the run before ``bwrap`` (its parent) can reap it, so nothing outlives the run
   and no orphan is left for the host's init to reap; SIGKILL to it when ``bwrap``'s caller dies
   (``--die-with-parent``). The network namespace has only its own loopback interface. ``/proc`` is a fresh
   procfs of the run's own PID namespace: no host process is visible.
3. **Filesystem view.** A fresh tmpfs root holding only: read-only binds of the sandbox interpreter, its
   standard library and the shared libraries it loads (`view_paths`), a private ``/dev`` (null, zero,
   urandom, ...), the run's procfs, the two sandbox programs (copied in from pipes, read-only), the judge's
   tmpfs ``/judge`` and the candidate's tmpfs ``/work`` of ``disk_mb`` bytes. No site-packages: the tests of
   the code tasks need the standard library only, and the venv's site-packages are the trainer's own code.
   The environment is cleared (``--clearenv``) but for LANG, HOME and TMPDIR (and PWD, which bwrap sets).
4. **Landlock on every candidate process** (`restrict_candidate`, applied in the candidate after its pipes
   are set up and before any of its code runs, inherited by all its children, irrevocable): it may read and
   execute the interpreter's files only, read and write only under ``/work``; nothing else exists for it
   (not ``/judge``, not ``/proc``). The Landlock domain also denies ptrace of processes outside it (the judge:
   no memory, fd or environment access through ``/proc/<pid>``), with ABI >= 4 TCP bind/connect, and with
   ABI >= 6 signals and abstract unix sockets to processes outside it.
5. **Seccomp** (x86_64; `seccomp_filter`, loaded by bwrap for every process of the run): the system calls a
   sandboxed program has no use for and that widen the kernel's attack surface fail with EPERM: ptrace and
   process_vm_*, keyrings, bpf, userfaultfd, perf_event_open, io_uring, mount/namespace/module/kexec calls,
   open_by_handle_at; the x32 ABI is refused.
6. **Bounds.** Bytes: the tmpfs sizes. Processes and threads: RLIMIT_NPROC (`MAX_TASKS`), counted per user
   namespace for the non-root uid of (1). Per process: RLIMIT_AS, RLIMIT_CPU, RLIMIT_FSIZE, RLIMIT_NOFILE,
   no core dumps. The whole run's memory (every process, its tmpfs pages, and the kernel memory of its files
   and directories, which is what bounds their number): a memory cgroup per concurrent run slot
   (`MemoryCgroups`, cgroup v1 ``memory``, where the caller may create one: root with a writable hierarchy);
   without one the sum is bounded only by MAX_TASKS x RLIMIT_AS, as `Isolation.describe` says. Wall clock:
   at the deadline the caller closes the judge's stdin (the judge kills and reaps every process of the run and
   exits) and SIGKILLs the judge if it has not within 0.2 s; the kernel tears down the namespaces and frees
   the tmpfs (the caller never walks the candidate's files).
7. **Verdict channel.** Only the judge holds the result pipe to the caller; the candidate holds two pipes to
   the judge and nothing else (all other fds closed before its code runs).

What Python adds on top, as defence in depth only (`reward_fns._sandbox_runner`): plain-data replies decoded
strictly, capped stdout/stderr, and candidate failures that the test code cannot catch.

Where the kernel cannot isolate (no ``bwrap``, no user namespaces, no Landlock, an interpreter the sandbox uid
cannot read), `isolation` raises `SandboxUnavailable` naming what is missing. Trusted settings (your own code,
a machine without these features) may opt out explicitly with ``RL2F_SANDBOX_ISOLATION=none``: runs then use
processes and rlimits only, with NO protection of the host.

The Landlock part runs inside the sandbox (standard library only: this module is copied in); the rest runs in
the caller.
"""

import _ctypes
import errno
import functools
import os
import sys

# subprocess and shutil are imported by the caller-side functions, and `ctypes` is not used at all (12 ms of
# start-up): the candidate makes its Landlock calls through `_ctypes` (`_libc_function`).

#: the environment variable that opts out of isolation (value ``none``) for trusted code
OPT_OUT_ENV = "RL2F_SANDBOX_ISOLATION"
#: processes + threads of one run (bwrap's init, the judge, the candidates and their threads)
MAX_TASKS = 24
#: where things are inside the sandbox
PROGRAM_DIR, JUDGE_DIR, WORK_DIR = "/sandbox", "/judge", "/work"
JUDGE_DISK_MB = 64

# Landlock (include/uapi/linux/landlock.h); the syscall numbers are the same on every architecture
_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38
_FS_EXECUTE, _FS_WRITE_FILE, _FS_READ_FILE, _FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FS_RIGHTS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 5: (1 << 16) - 1}
_FILE_RIGHTS = _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | 1 << 14  # + TRUNCATE
_NET_BIND_CONNECT_TCP = 3  # ABI >= 4
_SCOPE_ABSTRACT_UNIX_SIGNAL = 3  # ABI >= 6


#: x86_64 numbers of the system calls `seccomp_filter` refuses (arch/x86/entry/syscalls/syscall_64.tbl)
SECCOMP_DENIED_X86_64 = {
    "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "add_key": 248, "request_key": 249,
    "keyctl": 250, "bpf": 321, "userfaultfd": 323, "perf_event_open": 298, "io_uring_setup": 425,
    "io_uring_enter": 426, "io_uring_register": 427, "mount": 165, "umount2": 166, "pivot_root": 155,
    "unshare": 272, "setns": 308, "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
    "fsmount": 432, "fspick": 433, "mount_setattr": 442, "kexec_load": 246, "kexec_file_load": 320,
    "init_module": 175, "finit_module": 313, "delete_module": 176, "open_by_handle_at": 304, "acct": 163,
    "swapon": 167, "swapoff": 168, "reboot": 169, "syslog": 103, "quotactl": 179,
}


def seccomp_filter() -> bytes | None:
    """A classic-BPF seccomp program (the format bwrap's ``--seccomp`` reads) refusing
    `SECCOMP_DENIED_X86_64` with EPERM and killing any other architecture's or the x32 ABI's calls; None where
    the machine is not x86_64 (then there is no filter)."""
    import platform
    import struct

    if platform.machine() != "x86_64":
        return None
    ld_abs, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    audit_arch_x86_64, x32_bit = 0xC000003E, 0x40000000
    allow, kill, eperm = 0x7FFF0000, 0x80000000, 0x00050000 | errno.EPERM
    prog = [(ld_abs, 0, 0, 4), (jeq, 1, 0, audit_arch_x86_64), (ret, 0, 0, kill),  # seccomp_data.arch
            (ld_abs, 0, 0, 0), (jge, 0, 1, x32_bit), (ret, 0, 0, kill)]  # seccomp_data.nr
    for nr in sorted(SECCOMP_DENIED_X86_64.values()):
        prog += [(jeq, 0, 1, nr), (ret, 0, 0, eperm)]
    prog.append((ret, 0, 0, allow))
    return b"".join(struct.pack("=HBBI", *ins) for ins in prog)


class SandboxUnavailable(RuntimeError):
    """The kernel cannot isolate candidate code here; the message says what is missing and how to opt out."""


class _Long(_ctypes._SimpleCData):
    _type_ = "l"


class _Libc:
    _handle = _ctypes.dlopen(None)


def _libc_function(name):
    """libc's `name` as a callable taking and returning C longs (bytes arguments pass as pointers), errno kept."""
    class Function(_ctypes.CFuncPtr):
        _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
        _restype_ = _Long

    function = Function((name, _Libc))

    def call(*args):
        return function(*(a if isinstance(a, bytes) or a is None else _Long(a) for a in args))

    return call


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 if Landlock is not available."""
    return max(0, _libc_function("syscall")(_SYS_CREATE_RULESET, None, 0, _CREATE_RULESET_VERSION))


def restrict_candidate(read_paths, write_paths) -> None:
    """Put this process (and every process it creates) in a Landlock domain: read+execute under `read_paths`,
    read+write under `write_paths`, no other filesystem access, no ptrace of processes outside the domain and
    (ABI >= 6) no signals or abstract unix sockets to them. Raises OSError if the kernel refuses."""
    syscall, prctl = _libc_function("syscall"), _libc_function("prctl")
    abi = landlock_abi()
    if abi < 1:
        raise OSError(errno.ENOSYS, "Landlock is not available")
    fs_all = _FS_RIGHTS_BY_ABI[max(k for k in _FS_RIGHTS_BY_ABI if k <= abi)]
    attr = [fs_all, _NET_BIND_CONNECT_TCP if abi >= 4 else 0, _SCOPE_ABSTRACT_UNIX_SIGNAL if abi >= 6 else 0]
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    ruleset = syscall(_SYS_CREATE_RULESET, b"".join(x.to_bytes(8, sys.byteorder) for x in attr), size, 0)
    if ruleset < 0:
        raise OSError(_ctypes.get_errno(), "landlock_create_ruleset failed")
    try:
        read_exec = _FS_EXECUTE | _FS_READ_FILE | _FS_READ_DIR
        for path, rights in [(p, read_exec) for p in read_paths] + [(p, fs_all) for p in write_paths]:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                allowed = rights if os.path.isdir(path) else rights & _FILE_RIGHTS
                rule = allowed.to_bytes(8, sys.byteorder) + fd.to_bytes(4, sys.byteorder, signed=True)  # packed
                if syscall(_SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH, rule, 0) < 0:
                    raise OSError(_ctypes.get_errno(), f"landlock_add_rule {path} failed")
            finally:
                os.close(fd)
        if prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(_ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
        if syscall(_SYS_RESTRICT_SELF, ruleset, 0) < 0:
            raise OSError(_ctypes.get_errno(), "landlock_restrict_self failed")
    finally:
        os.close(ruleset)


# ------------------------------------------------------------------------------------------ caller side
class MemoryCgroups:
    """One cgroup v1 ``memory`` group per concurrent run slot of each calling process (``rl2f-sandbox-<pid>``
    below the caller's own group, so forked reward workers do not share slots), owned by the sandbox uid so
    that the run's first process can enter it (`enter_argv`). Removed when the calling process exits."""

    def __init__(self, parent: str, uid):
        self.parent, self.uid, self.pid, self.made = parent, uid, None, []

    @classmethod
    def find(cls, uid):
        """The slots' groups, or None where the caller cannot create memory cgroups (cgroup v2 only, a
        read-only hierarchy, not root)."""
        if uid is None:
            return None
        try:
            with open("/proc/self/cgroup") as f:
                own = next(line.split(":", 2)[2].strip() for line in f if line.split(":")[1] == "memory")
        except (OSError, StopIteration, IndexError):
            return None
        groups = cls(os.path.join("/sys/fs/cgroup/memory", own.lstrip("/")), uid)
        try:
            groups.slot(0, 64)
        except OSError:
            return None
        return groups

    @property
    def base(self) -> str:
        return os.path.join(self.parent, f"rl2f-sandbox-{os.getpid()}")

    def slot(self, k: int, limit_mb: int) -> str:
        """The directory of slot `k` of this process with its limit set (created on first use)."""
        if self.pid != os.getpid():  # first use in this process (the probe's, or a forked worker's)
            import atexit

            self.pid, self.made = os.getpid(), []
            atexit.register(self.remove, self.base, self.made)
            self._remove_stale()
        path = os.path.join(self.base, f"slot{k}")
        if path not in self.made:
            os.makedirs(path, exist_ok=True)
            for name in ("cgroup.procs", "tasks"):
                os.chown(os.path.join(path, name), self.uid, self.uid)
            self.made.append(path)
        with open(os.path.join(path, "memory.limit_in_bytes"), "w") as f:
            f.write(str(int(limit_mb) << 20))
        return path

    def enter_argv(self, slot_dir: str) -> list:
        """A prefix that moves the process into the slot, then execs the rest of the command."""
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', os.path.join(slot_dir, "cgroup.procs")]

    def _remove_stale(self):
        """Remove the (empty) groups of calling processes that are gone: a forked worker exits without atexit."""
        try:
            names = os.listdir(self.parent)
        except OSError:
            return
        for name in names:
            pid = name[len("rl2f-sandbox-"):]
            if name.startswith("rl2f-sandbox-") and pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                base = os.path.join(self.parent, name)
                try:
                    slots = [os.path.join(base, d) for d in os.listdir(base) if d.startswith("slot")]
                except OSError:
                    continue
                for path in slots + [base]:
                    try:
                        os.rmdir(path)
                    except OSError:
                        pass

    @staticmethod
    def remove(base: str, made: list):
        """rmdir the slots and their parent (retried for a second: the last runs may still be exiting)."""
        import time

        deadline = time.monotonic() + 1.0
        for path in sorted(made) + [base]:
            while True:
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.02)


class Isolation:
    """How to start one run on this machine: `command` builds the bwrap argv; `popen_kwargs` the identity."""

    def __init__(self, bwrap, python, view, uid, memory=None):
        self.bwrap, self.python, self.view, self.uid, self.memory = bwrap, python, tuple(view), uid, memory

    def command(self, program_fds: dict, disk_mb: int, slot: int = 0, memory_mb: int = 0, info_fd: int = -1,
                seccomp_fd: int = -1) -> list:
        """argv of one run: `program_fds` maps file names (copied into PROGRAM_DIR) to readable fds; with a memory
        cgroup, run slot `slot` holds the whole run to `memory_mb` (plus the two tmpfs); bwrap writes the host pid
        of the sandbox's init to `info_fd` (`sandbox_init_pid`) and loads the seccomp program it reads from
        `seccomp_fd`."""
        cmd = []
        if self.memory is not None and memory_mb:
            cmd = self.memory.enter_argv(self.memory.slot(slot, memory_mb + disk_mb + JUDGE_DISK_MB))
        cmd += [self.bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--cap-drop", "ALL",
               "--die-with-parent", "--new-session", "--as-pid-1", "--clearenv", *(["--info-fd", str(info_fd)] if info_fd >= 0 else []),
               *(["--seccomp", str(seccomp_fd)] if seccomp_fd >= 0 else []), "--setenv", "LANG", "C.UTF-8",
               "--setenv", "HOME", WORK_DIR, "--setenv", "TMPDIR", WORK_DIR]
        for link in ("/bin", "/lib", "/lib32", "/lib64", "/libx32", "/sbin"):  # merged-/usr symlinks, as on the host
            if os.path.islink(link):
                cmd += ["--symlink", os.readlink(link), link]
        for path in self.view:
            cmd += ["--ro-bind", path, path]
        cmd += ["--proc", "/proc", "--dev", "/dev", "--dir", PROGRAM_DIR]
        for name, fd in program_fds.items():
            cmd += ["--perms", "0444", "--ro-bind-data", str(fd), f"{PROGRAM_DIR}/{name}"]
        cmd += ["--size", str(JUDGE_DISK_MB << 20), "--perms", "0700", "--tmpfs", JUDGE_DIR,
                "--size", str(int(disk_mb) << 20), "--perms", "0700", "--tmpfs", WORK_DIR,
                "--remount-ro", "/", "--chdir", WORK_DIR, self.python, "-I", "-B", "-S"]
        return cmd

    def popen_kwargs(self) -> dict:
        if self.uid is None:
            return {}
        return {"user": self.uid, "group": self.uid, "extra_groups": []}

    def describe(self) -> dict:
        return {"isolation": "kernel", "bwrap": self.bwrap, "python": self.python, "uid": self.uid or os.getuid(),
                "view": list(self.view), "landlock_abi": landlock_abi(), "max_tasks": MAX_TASKS,
                "seccomp": "denylist of x86_64 calls" if seccomp_filter() else "none (not x86_64)",
                "run_memory": f"memory cgroup {self.memory.base}/slot<k>" if self.memory else
                              "no memory cgroup here: the sum is bounded by max_tasks x RLIMIT_AS only"}


def sandbox_init_pid(info: bytes):
    """The host pid of the sandbox's init from what bwrap wrote to ``--info-fd``, None if not (yet) there.
    SIGKILL to it ends the run's PID namespace at once, and bwrap (its parent) reaps it: killing bwrap instead
    would leave the init a zombie for the host's init to reap."""
    import json

    try:
        return int(json.loads(info.decode())["child-pid"])
    except (ValueError, KeyError, TypeError):
        return None


def _sandbox_uid():
    if os.getuid() != 0:
        return None
    return int(os.environ.get("RL2F_SANDBOX_UID", "2000000"))


def _readable_by(path: str, uid) -> bool:
    """Can `uid` (None: this process) open `path` (every directory on the way searchable)?"""
    if uid is None:
        return os.access(path, os.R_OK)
    parts = os.path.realpath(path).split("/")
    for i in range(2, len(parts) + 1):
        st = os.stat("/".join(parts[:i]) or "/")
        need = 0o5 if i < len(parts) else 0o4
        mode = st.st_mode & 0o7 if st.st_uid != uid else (st.st_mode >> 6) & 0o7
        if mode & need != need:
            return False
    return True


def _sandbox_python(uid) -> str:
    """This interpreter if the sandbox uid can run it, else the system's of the same minor version."""
    import shutil

    version = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    candidates = [os.environ.get("RL2F_SANDBOX_PYTHON"), os.path.realpath(sys.executable),
                  shutil.which(version, path="/usr/local/bin:/usr/bin:/bin")]
    for py in candidates:
        if py and os.path.isfile(py) and _readable_by(py, uid):
            return os.path.realpath(py)
    raise SandboxUnavailable(
        f"no {version} interpreter that the sandbox uid {uid if uid is not None else os.getuid()} can read: "
        f"{os.path.realpath(sys.executable)} is in a directory it cannot enter (e.g. under /root). Install "
        f"{version} system-wide (Debian: apt-get install {version}) or set RL2F_SANDBOX_PYTHON")


def view_paths(python: str, uid) -> list:
    """What the sandbox binds read-only: the interpreter, its standard library (with lib-dynload) and the
    directories of the shared libraries it and its extension modules load. Asked from that interpreter."""
    import subprocess

    probe = ("import sys, sysconfig; v = sysconfig.get_config_vars(); "
             "print(sysconfig.get_paths()['stdlib']); print(v.get('LIBDIR') or ''); print(v.get('MULTIARCH') or '')")
    out = subprocess.run([python, "-I", "-S", "-c", probe], capture_output=True, text=True, timeout=30, check=True)
    stdlib, libdir, multiarch = (out.stdout.splitlines() + ["", "", ""])[:3]
    paths = [python, stdlib]
    if libdir and libdir not in ("/usr/lib", "/lib", "/usr/lib64") and os.path.isfile(
            os.path.join(libdir, f"libpython{sys.version_info[0]}.{sys.version_info[1]}.so.1.0")):
        paths.append(os.path.join(libdir, f"libpython{sys.version_info[0]}.{sys.version_info[1]}.so.1.0"))
    for d in (f"/usr/lib/{multiarch}" if multiarch else "", "/usr/lib64", "/lib64" if not os.path.islink("/lib64") else ""):
        if d and os.path.isdir(d):
            paths.append(d)
    paths = [os.path.realpath(p) for p in paths]
    unreadable = [p for p in paths if not _readable_by(p, uid)]
    if unreadable:
        raise SandboxUnavailable(f"the sandbox uid cannot read {unreadable}")
    return list(dict.fromkeys(p for p in paths if not any(p != q and p.startswith(q + "/") for q in paths)))


@functools.lru_cache(maxsize=1)
def isolation():
    """The `Isolation` of this machine (probed once), None when the user opted out, or `SandboxUnavailable`."""
    if os.environ.get(OPT_OUT_ENV, "kernel").strip().lower() == "none":
        return None
    import shutil
    import subprocess

    bwrap = shutil.which("bwrap")
    if bwrap is None:
        raise SandboxUnavailable(
            "bubblewrap (bwrap) is not installed: the code sandbox needs it to isolate candidate programs "
            f"(Debian: apt-get install bubblewrap; `make install` does it as root). For trusted code only: "
            f"{OPT_OUT_ENV}=none")
    abi = landlock_abi()
    if abi < 1:
        raise SandboxUnavailable(f"the kernel has no Landlock (Linux >= 5.13 with lsm=...,landlock). For trusted "
                                 f"code only: {OPT_OUT_ENV}=none")
    uid = _sandbox_uid()
    python = _sandbox_python(uid)
    iso = Isolation(bwrap, python, view_paths(python, uid), uid, MemoryCgroups.find(uid))
    try:
        check = subprocess.run(iso.command({}, 1) + ["-c", "print('ok')"], capture_output=True, text=True,
                               timeout=30, **iso.popen_kwargs())
    except (OSError, subprocess.SubprocessError) as exc:
        raise SandboxUnavailable(f"cannot run {bwrap} as the sandbox uid: {exc}") from exc
    if check.returncode != 0 or check.stdout.strip() != "ok":
        raise SandboxUnavailable(
            f"bubblewrap cannot create the sandbox here ({check.stderr.strip()[:300] or check.returncode}); it needs "
            f"unprivileged user namespaces (sysctl user.max_user_namespaces > 0, kernel.unprivileged_userns_clone=1"
            f" where it exists, no AppArmor restriction). For trusted code only: {OPT_OUT_ENV}=none")
    return iso
