"""The built-in tasks: ``math``, ``code``, ``arc``, ``exact``, ``choice`` and ``reasoning_gym:<generator>``.

Each is a thin `Task` over a verifier in `reward_fns` (the verifiers do the time-bounded work; the tasks add
prompts, teacher material and leak-guard hooks). Ground-truth formats are documented in the verifier
modules: `reward_fns.math_verifier`, `reward_fns.code_sandbox`, `reward_fns.arc_grid`,
`reward_fns.exact_match`, `reward_fns.reasoning_gym_verifier`.
"""

from __future__ import annotations

import json
import re
from fractions import Fraction
from typing import Any

from reward_fns.common import trim

from .base import Task, VerifyResult, format_ground_truth
from .registry import UnknownTaskError, register_parametric_task, register_task

__all__ = ["MathTask", "CodeTask", "ArcTask", "ExactTask", "ChoiceTask", "ReasoningGymTask"]


# ----------------------------------------------------------------------------------------------- maths
@register_task("math")
class MathTask(Task):
    """Competition maths; final answer in ``\\boxed{}`` (or an "Answer:" line), checked by math-verify + sympy."""

    answer_format_instruction = "Please reason step by step, and put your final answer within \\boxed{}."
    teacher_guidance = (
        "Find the first incorrect step in the student's work (a wrong formula, an algebra or arithmetic slip, a "
        "misread condition, a missed case) and explain what is wrong with it and what to reconsider. You may "
        "suggest a method or check, but never state the final answer or an expression equal to it."
    )

    def extract_answer(self, response: str) -> str | None:
        from reward_fns.math_verifier import extract_math_answer

        return extract_math_answer(response)

    def verify(self, response: str, ground_truth: Any, extra_info: dict | None = None) -> VerifyResult:
        from reward_fns.math_verifier import verify_math

        return verify_math(response, ground_truth)

    def is_equivalent(self, candidate: str, ground_truth: Any, extra_info: dict | None = None) -> bool:
        from reward_fns.math_verifier import check_math_answer, extract_math_answer

        span = extract_math_answer(candidate) or candidate
        span = re.sub(r"^\s*[a-zA-Z]\w*\s*=\s*", "", span.strip())  # "x = 1/2" -> "1/2"
        try:
            return check_math_answer(span, ground_truth).correct
        except Exception:  # noqa: BLE001
            return False

    def answer_strings(self, ground_truth: Any, extra_info: dict | None = None) -> list[str]:
        from reward_fns.math_verifier import gold_text, normalize_math_text

        gold = gold_text(ground_truth)
        out = [gold, normalize_math_text(gold)]
        m = re.fullmatch(r"(-?)\\frac\{(\d+)\}\{(\d+)\}", normalize_math_text(gold))
        frac = None
        if m:
            out.append(f"{m.group(1)}{m.group(2)}/{m.group(3)}")
            frac = Fraction(int(m.group(2)), int(m.group(3))) * (-1 if m.group(1) else 1)
        elif re.fullmatch(r"-?\d+/\d+", gold.strip()) and not gold.strip().endswith("/0"):
            frac = Fraction(gold.strip())
        if frac is not None and frac.denominator in {2 ** a * 5 ** b for a in range(7) for b in range(7)}:
            out.append(format(float(frac), "g"))
        return [s for i, s in enumerate(out) if s and s not in out[:i]]


# ------------------------------------------------------------------------------------------------ code
@register_task("code")
class CodeTask(Task):
    """Python programming; the last fenced code block is run against unit tests in a sandbox."""

    answer_format_instruction = ("Write your complete solution in Python in a single ```python code block at the "
                                 "end of your reply.")
    teacher_guidance = (
        "Use the test result to explain what goes wrong in the student's code: which input fails, what the "
        "code returned versus what was expected, or what the error means, and which part of the logic to "
        "rethink (an edge case, an off-by-one, a wrong data structure, an inefficient algorithm). Do not write "
        "the corrected code or a full solution."
    )

    def render_prompt(self, problem: str, extra_info: dict | None = None) -> list[dict[str, str]]:
        extra_info = extra_info or {}
        instr = self.answer_format_instruction
        if extra_info.get("entry_point"):
            instr += f" Define the function `{extra_info['entry_point']}`."
        elif extra_info.get("io_mode") or extra_info.get("stdin"):
            instr += " The program reads standard input and writes standard output."
        return [{"role": "user", "content": f"{problem}\n\n{instr}"}]

    def extract_answer(self, response: str) -> str | None:
        from reward_fns.extraction import last_code_block

        return last_code_block(response)

    def verify(self, response: str, ground_truth: Any, extra_info: dict | None = None) -> VerifyResult:
        from reward_fns.code_sandbox import verify_code

        return verify_code(response, ground_truth)

    def is_equivalent(self, candidate: str, ground_truth: Any, extra_info: dict | None = None) -> bool:
        return False  # a span of feedback cannot "equal" a test suite; leaks of code use answer_strings

    def answer_strings(self, ground_truth: Any, extra_info: dict | None = None) -> list[str]:
        sol = (extra_info or {}).get("solution")
        if not sol:
            return []
        # distinctive non-trivial lines of the reference solution
        lines = [ln.strip() for ln in str(sol).splitlines()]
        return [ln for ln in lines if len(ln) >= 25 and not ln.startswith(("#", "def ", "import ", "from "))][:20]

    def privileged_info(self, ground_truth: Any, extra_info: dict | None = None,
                        verify_result: VerifyResult | None = None) -> str:
        from reward_fns.code_sandbox import CodeGroundTruthError, parse_code_ground_truth

        extra_info = extra_info or {}
        parts = []
        try:
            gt = parse_code_ground_truth(ground_truth)
        except CodeGroundTruthError:
            gt = {}
        if gt.get("io"):
            shown = gt["io"][:2]
            parts.append("Hidden tests (stdin -> expected stdout), first of " + str(len(gt["io"])) + ":\n" + "\n".join(
                f"- input: {trim(c['input'], 300)!r} -> output: {trim(c['output'], 300)!r}" for c in shown))
        elif gt.get("tests"):
            parts.append(f"Hidden unit tests (entry point `{gt.get('entry_point', '')}`):\n{trim(gt['tests'], 1500)}")
        if extra_info.get("solution"):
            parts.append(f"Reference solution:\n{trim(str(extra_info['solution']), 3000)}")
        if verify_result is not None:
            d = verify_result.details or {}
            lines = [f"Test result of the student's last code: {verify_result.reason}"]
            if d.get("failing_test"):
                lines.append(f"First failing test: {d['failing_test']}")
            if d.get("expected") or d.get("got"):
                lines.append(f"Expected: {d.get('expected', '')}\nGot: {d.get('got', '')}")
            if d.get("error"):
                lines.append(f"Error:\n{d['error']}")
            parts.append("\n".join(lines))
        return "\n\n".join(parts) or "No privileged information."


# ------------------------------------------------------------------------------------------------- ARC
@register_task("arc")
class ArcTask(Task):
    """ARC-AGI grids; exact match of the whole output grid."""

    answer_format_instruction = ("Give the output grid at the end inside <answer></answer> tags, one row per line "
                                 "with the cells separated by spaces.")
    teacher_guidance = (
        "Compare the student's grid with the expected one and the examples. Point out which part of the "
        "transformation rule the student misunderstood (a colour mapping, a symmetry, object counting, the "
        "output size) and which example contradicts it. Never give the output grid or any of its rows."
    )

    def extract_answer(self, response: str) -> str | None:
        from reward_fns.arc_grid import extract_grid, grid_to_text

        grid = extract_grid(response)
        return grid_to_text(grid) if grid is not None else None

    def verify(self, response: str, ground_truth: Any, extra_info: dict | None = None) -> VerifyResult:
        from reward_fns.arc_grid import verify_arc

        return verify_arc(response, ground_truth)

    def is_equivalent(self, candidate: str, ground_truth: Any, extra_info: dict | None = None) -> bool:
        from reward_fns.arc_grid import parse_grid

        try:
            return parse_grid(candidate) == parse_grid(ground_truth)
        except Exception:  # noqa: BLE001
            return False

    def answer_strings(self, ground_truth: Any, extra_info: dict | None = None) -> list[str]:
        from reward_fns.arc_grid import grid_to_text, parse_grid

        grid = parse_grid(ground_truth)
        if grid is None:
            return []
        return [grid_to_text(grid), json.dumps(grid), json.dumps(grid, separators=(",", ":"))]

    def privileged_info(self, ground_truth: Any, extra_info: dict | None = None,
                        verify_result: VerifyResult | None = None) -> str:
        from reward_fns.arc_grid import grid_to_text, parse_grid

        grid = parse_grid(ground_truth)
        parts = [f"Correct output grid:\n{grid_to_text(grid) if grid else format_ground_truth(ground_truth)}"]
        if verify_result is not None:
            d = verify_result.details or {}
            parts.append(f"Verifier: {verify_result.reason} (expected size {d.get('shape_expected', '?')}, "
                         f"student's size {d.get('shape_got') or 'none'})")
        return "\n\n".join(parts)


# ----------------------------------------------------------------------------------- exact / choice
@register_task("exact")
class ExactTask(Task):
    """Short free-form answers, normalised exact match (BIG-Bench Extra Hard style)."""

    answer_format_instruction = "Think it through, then end your reply with a final line of the form 'Answer: <your answer>'."

    def extract_answer(self, response: str) -> str | None:
        from reward_fns.exact_match import extract_short_answer

        return extract_short_answer(response)

    def verify(self, response: str, ground_truth: Any, extra_info: dict | None = None) -> VerifyResult:
        from reward_fns.exact_match import verify_exact

        return verify_exact(response, ground_truth)

    def is_equivalent(self, candidate: str, ground_truth: Any, extra_info: dict | None = None) -> bool:
        from reward_fns.exact_match import gold_answers, texts_equal

        return any(texts_equal(candidate, str(g)) for g in gold_answers(ground_truth))

    def answer_strings(self, ground_truth: Any, extra_info: dict | None = None) -> list[str]:
        from reward_fns.exact_match import gold_answers

        return [str(g).strip() for g in gold_answers(ground_truth) if str(g).strip()]


@register_task("choice")
class ChoiceTask(Task):
    """Multiple choice: the student picks an option by letter or by its text."""

    answer_format_instruction = ("Think it through, then end your reply with a final line of the form "
                                 "'Answer: (X)' where X is the letter of your choice.")

    def render_prompt(self, problem: str, extra_info: dict | None = None) -> list[dict[str, str]]:
        from reward_fns.exact_match import parse_options

        options = parse_options(extra_info)
        text = problem
        if options and "(A)" not in problem:
            text += "\n\nOptions:\n" + "\n".join(f"({k}) {v}" for k, v in options.items())
        return [{"role": "user", "content": f"{text}\n\n{self.answer_format_instruction}"}]

    def extract_answer(self, response: str) -> str | None:
        from reward_fns.exact_match import extract_short_answer

        return extract_short_answer(response)

    def verify(self, response: str, ground_truth: Any, extra_info: dict | None = None) -> VerifyResult:
        from reward_fns.exact_match import verify_choice

        return verify_choice(response, ground_truth, extra_info)

    def is_equivalent(self, candidate: str, ground_truth: Any, extra_info: dict | None = None) -> bool:
        from reward_fns.exact_match import choice_letter, parse_options

        options = parse_options(extra_info)
        gold = choice_letter(str(ground_truth), options)
        cand = candidate.strip()
        # a bare letter inside feedback is too ambiguous to call a leak; an option marker or the text is not
        if gold is None or len(cand) < 3:
            return False
        return choice_letter(cand, options) == gold

    def answer_strings(self, ground_truth: Any, extra_info: dict | None = None) -> list[str]:
        from reward_fns.exact_match import choice_letter, parse_options

        options = parse_options(extra_info)
        gold = choice_letter(str(ground_truth), options)
        out = []
        if gold:
            out += [f"({gold})", f"option {gold}"]
            if options.get(gold):
                out.append(options[gold])
        elif str(ground_truth).strip():
            out.append(str(ground_truth).strip())
        return out

    def privileged_info(self, ground_truth: Any, extra_info: dict | None = None,
                        verify_result: VerifyResult | None = None) -> str:
        from reward_fns.exact_match import choice_letter, parse_options

        options = parse_options(extra_info)
        gold = choice_letter(str(ground_truth), options)
        text = f"({gold}) {options[gold]}" if gold and options.get(gold) else str(ground_truth)
        return super().privileged_info(text, extra_info, verify_result)


# -------------------------------------------------------------------------------------- reasoning-gym
class ReasoningGymTask(Task):
    """Any reasoning-gym generator, scored by the generator's own ``score_answer``."""

    answer_format_instruction = "Give your final answer inside <answer></answer> tags."

    def __init__(self, generator: str):
        self.generator = generator
        self.name = f"reasoning_gym:{generator}"

    def extract_answer(self, response: str) -> str | None:
        from reward_fns.reasoning_gym_verifier import extract_rg_answer

        return extract_rg_answer(response)

    def verify(self, response: str, ground_truth: Any, extra_info: dict | None = None) -> VerifyResult:
        from reward_fns.reasoning_gym_verifier import verify_reasoning_gym

        return verify_reasoning_gym(self.generator, response, ground_truth, extra_info)

    def is_equivalent(self, candidate: str, ground_truth: Any, extra_info: dict | None = None) -> bool:
        try:
            return self.verify(f"<answer>{candidate.strip()}</answer>", ground_truth, extra_info).correct
        except Exception:  # noqa: BLE001
            return False

    def validate_ground_truth(self, ground_truth: Any, extra_info: dict) -> None:
        """Data check (`rl2f_plugin.data_validation`): the row's ``answer_extraction`` is a known mode."""
        from reward_fns.reasoning_gym_verifier import answer_extraction_mode

        answer_extraction_mode(extra_info)


@register_parametric_task("reasoning_gym")
def _reasoning_gym_task(generator: str) -> ReasoningGymTask:
    from reward_fns.reasoning_gym_verifier import known_generators

    known = known_generators()
    if generator not in known:
        raise UnknownTaskError(f"unknown task 'reasoning_gym:{generator}': reasoning-gym has no generator "
                               f"{generator!r}; known generators: {', '.join(known)}")
    return ReasoningGymTask(generator)
