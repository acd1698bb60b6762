"""The built-in tasks through rl2f's task registry: prompts, verification, teacher material, leak-guard hooks."""

from __future__ import annotations

import asyncio
import json

import pytest

from rl2f_plugin.tasks import Task, UnknownTaskError, VerifyResult, get_task, list_tasks

ADD_TESTS = {"tests": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n\n"
                      "check(add)\n", "entry_point": "add"}


def test_builtins_registered():
    names = list_tasks()
    for name in ("math", "code", "arc", "exact", "choice", "reasoning_gym:<name>"):
        assert name in names
    for name in ("math", "code", "arc", "exact", "choice", "reasoning_gym:maze"):
        task = get_task(name)
        assert isinstance(task, Task) and task.name == name
        assert get_task(name) is task  # cached
        assert task.teacher_guidance


def test_unknown_tasks_name_the_known_ones():
    with pytest.raises(UnknownTaskError, match=r"unknown task 'mathh'; known tasks: .*math"):
        get_task("mathh")
    with pytest.raises(UnknownTaskError, match=r"no generator 'not_a_generator'; known generators: .*maze"):
        get_task("reasoning_gym:not_a_generator")


def test_prompts_carry_the_answer_format():
    assert "\\boxed{}" in get_task("math").render_prompt("What is 1+1?")[0]["content"]
    code = get_task("code").render_prompt("Add two numbers.", {"entry_point": "add"})[0]["content"]
    assert "```python" in code and "`add`" in code
    assert "<answer>" in get_task("arc").render_prompt("grid")[0]["content"]
    assert "Answer:" in get_task("exact").render_prompt("q")[0]["content"]
    choice = get_task("choice").render_prompt("Capital of France?", {"options": ["Paris", "Rome"]})[0]["content"]
    assert "(A) Paris" in choice and "(B) Rome" in choice
    assert "<answer>" in get_task("reasoning_gym:basic_arithmetic").render_prompt("1+1")[0]["content"]


@pytest.mark.parametrize("name,reply,gold,extra,score", [
    ("math", "so \\boxed{\\frac{1}{2}}", "0.5", None, 1.0),
    ("math", "so \\boxed{2}", "0.5", None, 0.0),
    ("code", "```python\ndef add(a, b):\n    return a + b\n```", ADD_TESTS, None, 1.0),
    ("code", "```python\ndef add(a, b):\n    return abs(a) + b\n```", json.dumps(ADD_TESTS), None, 0.0),
    ("arc", "<answer>\n1 2\n3 4\n</answer>", [[1, 2], [3, 4]], None, 1.0),
    ("exact", "Answer: blue", "Blue", None, 1.0),
    ("choice", "Answer: (B)", "B", {"options": ["x", "y"]}, 1.0),
    ("choice", "Answer: x", "B", {"options": ["x", "y"]}, 0.0),
    ("reasoning_gym:basic_arithmetic", "<answer>-4</answer>", "-4", None, 1.0),
])
def test_verify_returns_verify_result(name, reply, gold, extra, score):
    r = get_task(name).verify(reply, gold, extra)
    assert isinstance(r, VerifyResult)
    assert r.score == score and r.reason
    assert r.correct == (score == 1.0)


def test_extract_answer():
    assert get_task("math").extract_answer("Answer: $3$") == "3"
    assert get_task("code").extract_answer("```python\nx=1\n```") == "x=1\n"
    assert get_task("arc").extract_answer("[[1,2],[3,4]]") == "1 2\n3 4"
    assert get_task("reasoning_gym:maze").extract_answer("<answer>7</answer>") == "7"


def test_code_privileged_info_has_the_failing_test():
    task = get_task("code")
    reply = "```python\ndef add(a, b):\n    return abs(a) + b\n```"
    result = task.verify(reply, ADD_TESTS)
    info = task.privileged_info(ADD_TESTS, {"solution": "def add(a, b):\n    return a + b"}, result)
    assert "assert candidate(-1, 1) == 0" in info
    assert "Expected: 0" in info and "Got: 2" in info
    assert "Reference solution" in info
    io_info = task.privileged_info({"io": [{"input": "1 2", "output": "3"}]}, None, None)
    assert "'1 2'" in io_info and "'3'" in io_info


def test_math_privileged_info_and_leak_hooks():
    task = get_task("math")
    r = task.verify("\\boxed{3}", "\\frac{1}{2}")
    info = task.privileged_info("\\frac{1}{2}", {"solution": "Halve it."}, r)
    assert "\\frac{1}{2}" in info and "Halve it." in info and "Student's extracted answer: 3" in info
    strings = task.answer_strings("\\frac{1}{2}")
    assert "\\frac{1}{2}" in strings and "1/2" in strings and "0.5" in strings
    assert task.is_equivalent("x = 1/2", "0.5")
    assert task.is_equivalent("0.50", "\\frac{1}{2}")
    assert not task.is_equivalent("x = 1/3", "0.5")


def test_arc_exact_choice_leak_hooks():
    arc = get_task("arc")
    assert arc.is_equivalent("[[1, 2], [3, 4]]", "1 2\n3 4")
    assert "1 2\n3 4" in arc.answer_strings([[1, 2], [3, 4]])
    assert "Correct output grid" in arc.privileged_info([[1, 2], [3, 4]], None, arc.verify("[[1]]", [[1, 2], [3, 4]]))
    exact = get_task("exact")
    assert exact.is_equivalent("The Eiffel tower", "eiffel tower") and exact.answer_strings(["a", "b"]) == ["a", "b"]
    choice = get_task("choice")
    opts = {"options": ["Paris", "London"]}
    assert "London" in choice.answer_strings("B", opts) and "(B)" in choice.answer_strings("B", opts)
    assert choice.is_equivalent("London", "B", opts) and not choice.is_equivalent("B", "B", opts)
    assert "(B) London" in choice.privileged_info("B", opts)


def test_reasoning_gym_task_from_data_row_fields():
    import dataclasses

    import reasoning_gym

    ds = reasoning_gym.create_dataset("chain_sum", size=3, seed=5)
    e = ds[2]
    extra = {"rg_dataset": "chain_sum", "rg_index": 2, "rg_config": json.dumps(dataclasses.asdict(ds.config)),
             "rg_entry": json.dumps(e, default=str)}
    task = get_task("reasoning_gym:chain_sum")
    assert task.verify(f"<answer>{e['answer']}</answer>", e["answer"], extra).correct
    assert task.is_equivalent(str(e["answer"]), e["answer"], extra)
    assert not task.is_equivalent("not a number", e["answer"], extra)


def test_verify_through_asyncio_to_thread():
    async def main():
        math, code = get_task("math"), get_task("code")
        return await asyncio.gather(
            asyncio.to_thread(math.verify, "\\boxed{4}", "4"),
            asyncio.to_thread(code.verify, "```python\ndef add(a, b):\n    return a + b\n```", ADD_TESTS),
        )

    assert [r.score for r in asyncio.run(main())] == [1.0, 1.0]
