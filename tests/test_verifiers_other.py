"""ARC grids, exact match, multiple choice and reasoning-gym verification (real reasoning-gym generators)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from reward_fns.arc_grid import extract_grid, parse_grid, verify_arc
from reward_fns.exact_match import choice_letter, normalize_text, parse_options, verify_choice, verify_exact
from reward_fns.reasoning_gym_verifier import extract_rg_answer, verify_reasoning_gym

GRID = [[0, 1, 2], [3, 4, 5]]


# ------------------------------------------------------------------------------------------------- ARC
@pytest.mark.parametrize("reply", [
    "The rule is a shift.\n<answer>\n0 1 2\n3 4 5\n</answer>",
    "Output:\n```\n012\n345\n```",
    "Answer: [[0, 1, 2], [3, 4, 5]]",
    "first guess [[9]] ... final: [[0,1,2],[3,4,5]]",
    "0,1,2\n3,4,5",
    "[0, 1, 2]\n[3, 4, 5]",
])
def test_arc_equivalent_forms(reply):
    v = verify_arc(reply, GRID)
    assert v.score == 1.0, (reply, v)


@pytest.mark.parametrize("reply,reason", [
    ("<answer>\n0 1 2\n3 4 6\n</answer>", "1 of 6 cells differ"),
    ("<answer>\n0 1\n3 4\n</answer>", "wrong grid size"),
    ("I am not sure.", "no grid"),
    ("[[0, 1, 2], [3, 4, 5], [0, 0, 0]]", "wrong grid size"),
])
def test_arc_wrong(reply, reason):
    v = verify_arc(reply, json.dumps(GRID))
    assert v.score == 0.0 and reason in v.reason


def test_arc_ground_truth_forms_and_errors():
    assert parse_grid("0 1 2\n3 4 5") == GRID
    assert parse_grid(json.dumps(GRID)) == GRID
    assert extract_grid("<answer>[[1]]</answer> and later text [[2]]") == [[1]]
    with pytest.raises(ValueError, match="not a grid"):
        verify_arc("[[1]]", "no grid here")


# ------------------------------------------------------------------------------------------ exact match
@pytest.mark.parametrize("reply,gold,score", [
    ("Answer: Paris", "paris", 1.0),
    ("Answer: **The Eiffel Tower.**", "Eiffel Tower", 1.0),
    ("\\boxed{\\text{blue}}", "Blue", 1.0),
    ("Answer: 1,000", "1000", 1.0),
    ("Answer: 3.50", "3.5", 1.0),
    ("lots of text\nfinal line: apple", "final line: apple", 1.0),
    ("Answer: \"yes\"", "Yes", 1.0),
    ("Answer: London", "Paris", 0.0),
    ("Answer: 3.51", "3.5", 0.0),
    ("Answer: not valid", ["valid", "Valid!"], 0.0),
    ("Answer: valid", ["invalid", "valid"], 1.0),
])
def test_exact(reply, gold, score):
    assert verify_exact(reply, gold).score == score


def test_exact_ground_truth_from_parquet_array():
    import numpy as np

    assert verify_exact("Answer: b", np.array(["a", "b"], dtype=object)).score == 1.0


def test_normalize_text():
    assert normalize_text("  The  Big   Apple. ") == "big apple"
    assert normalize_text("$\\text{ok}$") == "ok"


# -------------------------------------------------------------------------------------- multiple choice
OPTS = {"options": ["Paris", "London", "Rome", "Berlin"]}


@pytest.mark.parametrize("reply,score", [
    ("Answer: (B)", 1.0), ("Answer: B", 1.0), ("Answer: b) London", 1.0), ("B. London", 1.0),
    ("Answer: London", 1.0), ("The answer is B.", 1.0), ("Option B", 1.0), ("\\boxed{B}", 1.0),
    ("Answer: (A)", 0.0), ("Answer: Paris", 0.0), ("Answer: D", 0.0), ("Answer: Madrid", 0.0),
])
def test_choice_with_options(reply, score):
    for gold in ("B", "(B)", "London"):
        assert verify_choice(reply, gold, OPTS).score == score, (reply, gold)


def test_choice_without_options_and_option_formats():
    assert verify_choice("Answer: (C)", "(C)").score == 1.0
    assert verify_choice("Answer: c", "C").score == 1.0
    assert verify_choice("Answer: (D)", "(C)").score == 0.0
    assert parse_options({"choices": json.dumps({"A": "x", "B": "y"})}) == {"A": "x", "B": "y"}
    assert parse_options({"options": ["(A) x", "(B) y"]}) == {"A": "x", "B": "y"}
    assert choice_letter("a cat", {"A": "a dog", "B": "a cat"}) == "B"  # option text beats the article
    with pytest.raises(ValueError, match="neither an option letter"):
        verify_choice("Answer: A", "Madrid", OPTS)


# ---------------------------------------------------------------------------------------- reasoning-gym
def _row(name: str, idx: int = 1):
    import reasoning_gym

    ds = reasoning_gym.create_dataset(name, size=4, seed=11)
    e = ds[idx]
    extra = {"rg_dataset": name, "rg_index": idx,
             "rg_config": json.dumps(dataclasses.asdict(ds.config), default=str),
             "rg_entry": json.dumps({"question": e["question"], "answer": e["answer"], "metadata": e["metadata"]},
                                    default=str)}
    return e, extra


@pytest.mark.parametrize("name", ["basic_arithmetic", "chain_sum", "maze", "fraction_simplification", "arc_1d"])
def test_reasoning_gym_generators(name):
    e, extra = _row(name)
    right = verify_reasoning_gym(name, f"Let me see.\n<answer>{e['answer']}</answer>", e["answer"], extra)
    assert right.score == 1.0 and right.details["entry_source"] == "rebuilt", right
    wrong = verify_reasoning_gym(name, "<answer>certainly not this 98765</answer>", e["answer"], extra)
    assert wrong.score < 1.0
    only_entry = verify_reasoning_gym(name, f"<answer>{e['answer']}</answer>", e["answer"], {"rg_entry": extra["rg_entry"]})
    assert only_entry.score == 1.0 and only_entry.details["entry_source"] == "rg_entry"
    none = verify_reasoning_gym(name, "no tags here", e["answer"], extra)
    assert none.score == 0.0 and none.extracted is None and "no final answer" in none.reason


def test_reasoning_gym_answer_extraction_and_fallback():
    assert extract_rg_answer("<answer> 5 </answer>") == "5"
    assert extract_rg_answer("\\boxed{6}") == "6"
    v = verify_reasoning_gym("basic_arithmetic", "<answer>-4</answer>", "-4", {})
    assert v.score == 1.0 and v.details["entry_source"] == "ground_truth"


@pytest.mark.parametrize("text, number", [
    ("so 7 - 9 = -2.", "-2"), ("The answer is 5.", "5"), ("1,000 apples", "1000"), ("3.5 and then 2", "2"),
    ("10-3", "3"), ("(-3)", "-3"), ("no digits", None), ("", None),
])
def test_last_number(text, number):
    from reward_fns.extraction import last_number

    assert last_number(text) == number


def test_reasoning_gym_flexible_extraction_reads_the_last_number():
    e, extra = _row("basic_arithmetic")
    reply = f"Let me compute: the result is {e['answer']}."
    assert verify_reasoning_gym("basic_arithmetic", reply, e["answer"], extra).score == 0.0  # strict: no tag
    flexible = {**extra, "answer_extraction": "flexible"}
    v = verify_reasoning_gym("basic_arithmetic", reply, e["answer"], flexible)
    assert v.score == 1.0 and v.extracted == str(e["answer"])
    # an explicit answer still wins over the last number, and a wrong last number scores 0
    assert verify_reasoning_gym("basic_arithmetic", f"<answer>{e['answer']}</answer> (checked 3 times)",
                                e["answer"], flexible).score == 1.0
    assert verify_reasoning_gym("basic_arithmetic", "it is 98765", e["answer"], flexible).score == 0.0
    # the explicit answer is read for its number too (seen in a real evaluation: "So, the answer is (18).")
    for reply in (f"So, the answer is ({e['answer']}).", f"<answer>x = {e['answer']}</answer>"):
        assert verify_reasoning_gym("basic_arithmetic", reply, e["answer"], flexible).score == 1.0, reply
        assert verify_reasoning_gym("basic_arithmetic", reply, e["answer"], extra).score == 0.0, reply  # strict
    # one number only: the last of the explicit answer
    assert verify_reasoning_gym("basic_arithmetic", f"Answer: {e['answer']} or 98765", e["answer"], flexible).score == 0.0
    with pytest.raises(ValueError, match="answer_extraction='loose' is not one of strict, flexible"):
        verify_reasoning_gym("basic_arithmetic", reply, e["answer"], {**extra, "answer_extraction": "loose"})


def test_reasoning_gym_reward_is_sparse_unless_partial_credit_is_asked():
    """reasoning-gym's default scorer gives len(oracle)/len(answer) to any answer containing the oracle: a digit
    string would earn reward on every one-digit problem. rl2f's reward is 0/1 unless the row opts in."""
    v = verify_reasoning_gym("basic_arithmetic", "<answer>0123456789</answer>", "7", {})
    assert v.score == 0.0 and v.details["rg_score"] == pytest.approx(0.1) and v.reason == "incorrect"
    p = verify_reasoning_gym("basic_arithmetic", "<answer>0123456789</answer>", "7", {"partial_credit": True})
    assert p.score == pytest.approx(0.1) and p.reason == "partial credit 0.10"


def test_task_hint_gives_a_direction_never_the_answer():
    from rl2f_plugin.tasks import VerifyResult, get_task

    task = get_task("reasoning_gym:basic_arithmetic")
    assert task.hint(VerifyResult(0.0, "45"), "-49") == "It is too large."
    assert task.hint(VerifyResult(0.0, "-1.5"), "7/2") == "It is too small."
    for extracted, gold in [("7", "7"), ("seven", "7"), ("7", "[1, 2]"), (None, "7")]:
        assert task.hint(VerifyResult(0.0, extracted), gold) == ""


# ------------------------------------------------------------------------------------ hostile text
def test_text_verifiers_are_linear_on_hostile_replies():
    """Regexes must not backtrack super-linearly: long whitespace runs after a marker, bracket floods,
    delimiter floods. Each case is ~100 KB; a quadratic regex takes minutes on these, a linear one ms."""
    import time

    from reward_fns.extraction import extract_final_answer, last_code_block, last_number
    from reward_fns.math_verifier import extract_math_answer

    n = 100_000
    texts = ["Answer" + " " * n + "x", "the answer" + " " * n + "x", "B" + " " * n + "x", "(B" + " " * n + "x",
             "Option" + " " * n + "x", "1" + " " * n + "x", "[[1]" + " " * n + "x", "[[1, " * (n // 5),
             "[[" + "1" * n + "x", "$" * n, "\\boxed{" * (n // 7), "```" + " " * n, "1 2 3\n" * (n // 6)]
    checks = [lambda t: verify_arc(t, [[1]]), lambda t: verify_exact(t, "a"),
              lambda t: verify_choice(t, "B", {"options": ["x", "y"]}), extract_final_answer, last_code_block,
              extract_math_answer, last_number]
    t0 = time.monotonic()
    for text in texts:
        for check in checks:
            check(text)
    assert time.monotonic() - t0 < 20.0  # ~0.5 s when linear (78 scans of 100 KB)
