"""Maths verification: answer extraction, a table of (non-)equivalent answers, hostile input, the worker pool.

Nothing is mocked: answers go through the real math-verify / sympy in real worker processes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import time

import pytest

from reward_fns.common import _OVERRIDES, set_limits
from reward_fns.extraction import answer_line, extract_final_answer, last_boxed
from reward_fns.math_verifier import check_math_answer, extract_math_answer, verify_math
from reward_fns.worker_pool import PoolError, PoolTimeout, WorkerPool, get_pool, wall_limit


# ------------------------------------------------------------------------------------------- extraction
@pytest.mark.parametrize("text,expected", [
    ("so \\boxed{42}.", "42"),
    ("first \\boxed{1} then \\boxed{2}", "2"),
    ("\\boxed{\\frac{1}{\\sqrt{2}}}", "\\frac{1}{\\sqrt{2}}"),
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
    ("\\boxed{a} and broken \\boxed{b", "a"),
    ("\\fbox{7}", "7"),
    ("$\\boxed 5$", "5"),
    ("no box here", None),
])
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("work...\nAnswer: 12", "12"),
    ("Final answer: x = 3.\nthanks", "x = 3"),
    ("**Answer:** 3/4", "3/4"),
    ("The answer is 17", "17"),
    ("Answer: 1\n...\nAnswer: 2", "2"),
    ("Answer:\n\n 9", "9"),
    ("nothing", None),
])
def test_answer_line(text, expected):
    assert answer_line(text) == expected


def test_extract_prefers_boxed_and_strips_delimiters():
    assert extract_math_answer("Answer: 3 but actually $\\boxed{4}$") == "4"
    assert extract_math_answer("Answer: $\\frac{1}{2}$") == "\\frac{1}{2}"
    assert extract_math_answer("Answer: \\boxed{7}") == "7"
    assert extract_final_answer("<answer>x</answer>") == "x"


def test_extraction_on_1mb_reply_is_linear():
    text = "blah " * 200_000 + "\\boxed{" * 10_000 + " Answer: 5"
    t0 = time.monotonic()
    assert extract_math_answer(text) == "5"
    assert time.monotonic() - t0 < 5.0  # a bound, not a speed benchmark: quadratic scanning would take minutes


# ------------------------------------------------------------------------------------------- the table
EQUIVALENT = [
    ("\\frac{1}{2}", "0.5"), ("0.5", "\\frac12"), ("1/2", "\\dfrac{1}{2}"), ("2", "2.0"), ("-3", "-3"),
    ("1000", "1,000"), ("1000000", "1,000,000"), ("\\frac{3}{4}", "0.75"), ("50\\%", "50"), ("50\\%", "0.5"),
    ("0.25", "25\\%"), ("\\sqrt{2}/2", "\\frac{\\sqrt{2}}{2}"), ("\\frac{1}{\\sqrt{2}}", "\\frac{\\sqrt{2}}{2}"),
    ("2\\sqrt{3}", "\\sqrt{12}"), ("x^2+2x+1", "(x+1)^2"), ("a+b", "b+a"), ("\\pi", "\\pi"),
    ("2\\pi", "6.283185307179586"), ("[1,2)", "[1, 2)"), ("(0,\\infty)", "(0, \\infty)"),
    ("\\{1,2,3\\}", "\\{3,2,1\\}"), ("\\{1,2\\}", "1, 2"), ("5", "5\\text{ cm}"), ("5", "5 cm"),
    ("12", "12 \\text{ apples}"), ("90^\\circ", "90"), ("90", "90^{\\circ}"), ("x=3", "3"), ("3", "x = 3"),
    ("-1", "e^{i\\pi}"), ("1", "\\sin^2 x + \\cos^2 x"), ("\\$5", "5"), ("10", "\\boxed{10}"),
    ("\\frac{-1}{2}", "-\\frac{1}{2}"), ("0.1", "\\frac{1}{10}"), ("3.14", "3.140"), ("\\infty", "\\infty"),
    ("(1,2)", "(1, 2)"), ("2^{10}", "1024"), ("\\binom{5}{2}", "10"), ("e", "e"),
    ("\\left(1,2\\right)", "(1,2)"),
]
NOT_EQUIVALENT = [
    ("\\frac{1}{2}", "\\frac{1}{3}"), ("5", "6"), ("1/3", "0.33"), ("(1,2]", "(1,2)"), ("[1,2]", "(1,2)"),
    ("\\{1,2\\}", "\\{1,3\\}"), ("x+1", "x-1"), ("\\sqrt{2}", "1.41"), ("100", "10"), ("-2", "2"),
    ("2\\pi", "\\pi"), ("x^2", "2x"), ("0", "1"), ("12", "twelve apples and pears"), ("3", "x = 4"),
]


def _check_all(rows, timeout=20.0):
    with cf.ThreadPoolExecutor(4) as ex:  # concurrent callers: exercises the pool from several threads
        return list(ex.map(lambda r: check_math_answer(r[1], r[0], timeout=timeout), rows))


def test_table_has_enough_rows():
    assert len(EQUIVALENT) + len(NOT_EQUIVALENT) >= 40


def test_equivalent_answers():
    verdicts = _check_all(EQUIVALENT)
    wrong = [(g, p, v.reason) for (g, p), v in zip(EQUIVALENT, verdicts) if v.score != 1.0]
    assert not wrong, wrong


def test_non_equivalent_answers():
    verdicts = _check_all(NOT_EQUIVALENT)
    wrong = [(g, p, v.reason) for (g, p), v in zip(NOT_EQUIVALENT, verdicts) if v.score != 0.0]
    assert not wrong, wrong
    assert all(v.reason for v in verdicts)


def test_verify_math_whole_replies():
    assert verify_math("Let me think. $x=1/2$ so \\boxed{\\frac{1}{2}}", "0.5").score == 1.0
    assert verify_math("The result is \\boxed{3}. Wait, no: \\boxed{4}", "4").score == 1.0
    v = verify_math("I think it is about five", "5")
    assert v.score == 0.0 and "no final answer" in v.reason and v.extracted is None
    assert verify_math("Answer: 7", 7).score == 1.0  # non-string ground truth
    assert verify_math("\\boxed{2}", "\\boxed{2}").details["method"] == "identical"


# --------------------------------------------------------------------------------------- hostile input
HOSTILE = [
    "2^{2^{2^{2^{2^{2^{2}}}}}}",          # tower of exponents
    "100000000!",                         # huge factorial
    "(10^{10^{10}})!",
    "9^{9^{9^{9}}} - 9^{9^{9^{9}}} + 1",
]


@pytest.fixture
def short_math_timeout():
    set_limits(math_timeout=2.0)
    yield 2.0
    _OVERRIDES.pop("math_timeout", None)


@pytest.mark.parametrize("pred", HOSTILE)
def test_hostile_expressions_time_out_cleanly(pred, short_math_timeout, capfd):
    t0 = time.monotonic()
    v = check_math_answer(pred, "3")
    elapsed = time.monotonic() - t0
    assert v.score == 0.0 and v.reason
    # the configured limit; on a busy machine up to its wall-clock backstop (+ kill/teardown on a loaded box)
    assert elapsed < wall_limit(short_math_timeout) + 3.0, elapsed
    out, err = capfd.readouterr()
    assert pred not in out and pred not in err  # nothing echoes the input into our logs


def test_deeply_nested_latex_and_huge_strings(short_math_timeout):
    nested = "\\frac{" * 150 + "1" + "}{2}" * 150
    t0 = time.monotonic()
    v = check_math_answer(nested, "1")
    assert v.score == 0.0 and v.reason
    huge = "\\boxed{" + "9" * 1_000_000 + "}"
    v2 = verify_math(huge, "1")
    assert v2.score == 0.0 and "too long" in v2.reason
    v3 = verify_math("x" * 1_000_000, "1")
    assert v3.score == 0.0
    assert time.monotonic() - t0 < 3 * (short_math_timeout + 3.0)


def test_pool_recovers_after_kills(short_math_timeout):
    pool = get_pool()
    kills = pool.kills
    assert check_math_answer("2^{2^{2^{2^{2^{2^{2}}}}}}", "5").score == 0.0
    assert check_math_answer("\\frac{2}{4}", "0.5").score == 1.0  # a fresh worker took over
    assert pool.kills >= kills


def test_works_from_threads_and_asyncio():
    async def main():
        rows = EQUIVALENT[:6]
        res = await asyncio.gather(*(asyncio.to_thread(check_math_answer, p, g) for g, p in rows))
        return [v.score for v in res]

    assert asyncio.run(main()) == [1.0] * 6


# ------------------------------------------------------------------------------------------ the pool
_TEST_JOBS = "pool_test_jobs"  # tests/pool_test_jobs.py: jobs the production worker does not have
def test_pool_hard_kills_a_job_that_blocks_signals():
    pool = WorkerPool(size=1, jobs_module=_TEST_JOBS)
    try:
        assert pool.call("test_echo", {"x": 1, "print": "noise"}, timeout=30)["echo"]["x"] == 1
        pid = pool.worker_pids()[0]
        t0 = time.monotonic()
        with pytest.raises(PoolTimeout):
            pool.call("test_block", {"seconds": 60}, timeout=1.0)
        assert time.monotonic() - t0 < 1.0 + 4.0  # the limit (+ kill/teardown on a loaded box)
        assert pool.kills == 1
        with pytest.raises(ProcessLookupError):  # the stuck worker is gone
            for _ in range(50):
                import os
                os.kill(pid, 0)
                time.sleep(0.1)
        assert pool.call("test_echo", {"x": 2}, timeout=30)["pid"] != pid  # replaced
    finally:
        pool.shutdown()


def test_pool_soft_timeout_keeps_worker():
    pool = WorkerPool(size=1, jobs_module=_TEST_JOBS)
    try:
        pid = pool.call("test_echo", {}, timeout=30)["pid"]
        with pytest.raises(PoolTimeout):
            pool.call("test_spin", {}, timeout=2.0)  # the worker's own alarm stops it at 1.5 s
        assert pool.kills == 0
        assert pool.call("test_echo", {}, timeout=30)["pid"] == pid
    finally:
        pool.shutdown()


def test_production_worker_has_no_test_jobs():
    with pytest.raises(PoolError, match="unknown job"):
        get_pool().call("test_echo", {}, timeout=30)
