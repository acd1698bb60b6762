"""Leak guard against rl2f's real built-in tasks (math-verify equivalence for `math`, exact/choice matching).
Nothing is mocked except the LLM judge, which is a plain async function standing in for a model."""

from __future__ import annotations

import asyncio
import time

import pytest

from rl2f_plugin.leak_guard import LeakGuard, answer_like_spans, normalize
from rl2f_plugin.tasks import Task, VerifyResult, get_task


@pytest.fixture(scope="module")
def math_task():
    return get_task("math")


@pytest.mark.parametrize("feedback", [
    "So x = 1/2.",
    "The result should be \\boxed{\\frac{1}{2}}",
    "You should get $\\frac{1}{2}$ here.",
    "It equals 0.5",
    "Half of it, i.e. 50%.",
    "the answer is one half = 2/4, think again",
])
def test_math_leaks_are_caught_in_any_form(math_task, feedback):
    report = LeakGuard(math_task, "0.5").check(feedback)
    assert report.leaked, feedback
    assert report.reasons[0].startswith(("string:", "equivalent:"))


@pytest.mark.parametrize("feedback", [
    "Check your second step: you dropped a factor.",
    "Try 3/4 again? No: recompute the denominator.",
    "Compute 12 + 7 first, then halve.",
    "Your value 0.25 is too small by a factor of two.",  # '2' and '0.25' are not 0.5
])
def test_math_safe_feedback_passes(math_task, feedback):
    assert not LeakGuard(math_task, "0.5").check(feedback).leaked


def test_string_match_uses_word_boundaries():
    exact = get_task("exact")
    g = LeakGuard(exact, "12")
    assert g.check("The answer is 12.").leaked
    assert not LeakGuard(exact, "12", check_spans=False).check("Look at row 123 and cell x12.").leaked
    b = LeakGuard(exact, "B")
    assert b.check("The answer is B").leaked
    assert not b.check("Option Bonus is a trap; Beware.").leaked


def test_a_signed_or_decimal_number_is_not_its_digits():
    """The template teacher quotes the student's wrong answer: "(-2)" is not a leak of "2", nor "0.2" or "1.2"."""
    rg = get_task("reasoning_gym:basic_arithmetic")
    g = LeakGuard(rg, "2", {"answer_extraction": "flexible"})
    assert not g.check("Your final answer (-2) is incorrect. It is too small. Check your reasoning.").leaked
    assert not g.check("Your final answer (0.2) is incorrect; so is 1.2.").leaked
    assert g.check("It should be 2, not -2.").leaked
    assert g.check("Try 10-2 first.").leaked  # an operand equal to the answer still counts (conservative)
    assert LeakGuard(rg, "-2").check("The result is (-2).").leaked


def test_choice_answer_text_counts_as_a_leak():
    choice = get_task("choice")
    g = LeakGuard(choice, "B", {"choices": ["Paris", "Lyon", "Nice"]})
    assert g.check("Think again: the city is Lyon.").leaked
    assert not g.check("Think again about which city hosts the parliament.").leaked


def test_normalisation():
    assert normalize("  $\\left( 1 ,\\, 2 \\right)$ ") == "(1,2)"
    assert normalize("A  B\n C", keep_spaces=True) == "a b c"


def test_answer_like_spans():
    spans = answer_like_spans("First y = 3x + 1, so the answer is \\boxed{7}. Also $a^2$ and 1/2 and \\frac{3}{4}.")
    for s in ("7", "3x + 1", "a^2", "1/2", "\\frac{3}{4}"):
        assert s in spans, (s, spans)
    assert len(answer_like_spans(" ".join(str(i) for i in range(200)), max_spans=10)) == 10


class _SlowTask(Task):
    def verify(self, response, ground_truth, extra_info=None):
        return VerifyResult(0.0)

    def is_equivalent(self, candidate, ground_truth, extra_info=None):
        time.sleep(1.0)
        return False


def test_check_is_time_bounded_and_a_timeout_is_reported_as_timeout_not_leak():
    g = LeakGuard(_SlowTask(), "xyz", timeout_s=0.1)

    async def go():
        t0 = time.perf_counter()
        report = await g.acheck("maybe 42")
        return report, time.perf_counter() - t0

    report, waited = asyncio.run(go())
    assert report.timed_out and not report.leaked  # withheld by the episode, but not a leak
    assert report.reasons[0].startswith("timeout: ran ")
    assert waited < 0.9  # the caller was released at the timeout, not after the 1 s check


def test_llm_judge(math_task):
    seen = []

    async def judge(messages, max_tokens, temperature):
        seen.append(messages[0]["content"])
        return "LEAK" if "seven" in messages[0]["content"] else "SAFE"

    g = LeakGuard(get_task("exact"), "7", llm_judge=True, judge=judge)
    assert asyncio.run(g.acheck("It is seven.")).reasons == ["judge"]
    assert not asyncio.run(g.acheck("Recount the apples.")).leaked
    assert "Correct final answer: 7" in seen[0] and "It is seven." in seen[0]
    # a deterministic leak is never sent to (or cleared by) the judge
    n = len(seen)
    assert asyncio.run(g.acheck("It is 7.")).reasons == ["string:7"] and len(seen) == n

    async def broken(messages, max_tokens, temperature):
        raise ConnectionError("judge down")

    g2 = LeakGuard(get_task("exact"), "7", llm_judge=True, judge=broken)
    assert not asyncio.run(g2.acheck("Recount the apples.")).leaked  # judge failure keeps the deterministic verdict
