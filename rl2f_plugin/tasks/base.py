"""The `Task` plugin API: one problem domain (maths, code, grids, ...) as the didactic loop sees it.

A task knows how to
  * render the student's first prompt from a problem statement (`render_prompt`),
  * pull the student's final answer out of a reply (`extract_answer`),
  * verify that answer against the ground truth, time-bounded, with a score in [0, 1] and details (`verify`),
  * describe the privileged information only the teacher may see (`privileged_info`),
  * give the teacher domain guidance (`teacher_guidance`),
  * decide whether an arbitrary text span is *equivalent* to the ground truth (`is_equivalent`, used by the
    leak guard to catch "x = 1/2" leaking "0.5").

Tasks are registered by name with `register_task` (see `rl2f_plugin.tasks.registry`). `VerifyResult` is
`reward_fns.common.VerifyResult` (what the verifiers return), re-exported here.
"""

from __future__ import annotations

import json
import re
from fractions import Fraction
from typing import Any

from reward_fns.common import VerifyResult, trim

__all__ = ["Task", "VerifyResult", "format_ground_truth"]


class Task:
    """Base class of a problem domain. Subclasses override what differs from these defaults."""

    name: str = "base"
    #: Shown to the teacher (after the privileged information) to steer its feedback for this domain.
    teacher_guidance: str = (
        "Point at the first mistake in the student's reasoning and suggest what to reconsider. "
        "Do not state the final answer."
    )
    #: Appended to the problem statement in the student's first prompt.
    answer_format_instruction: str = ""

    # -- prompt -------------------------------------------------------------------------------------------
    def render_prompt(self, problem: str, extra_info: dict | None = None) -> list[dict[str, str]]:
        """Chat messages for the student's first turn."""
        text = problem if not self.answer_format_instruction else f"{problem}\n\n{self.answer_format_instruction}"
        return [{"role": "user", "content": text}]

    # -- answer -------------------------------------------------------------------------------------------
    def extract_answer(self, response: str) -> str | None:
        """The final answer in a student reply, or None."""
        response = response.strip()
        return response or None

    def verify(self, response: str, ground_truth: Any, extra_info: dict | None = None) -> VerifyResult:
        """Extract the final answer from `response` and check it. Must be time-bounded and never raise on
        bad model output (it returns score 0 with a reason instead)."""
        raise NotImplementedError

    def is_equivalent(self, candidate: str, ground_truth: Any, extra_info: dict | None = None) -> bool:
        """Whether `candidate` (a bare answer-like span, not a whole reply) equals the ground truth.
        Used by the leak guard. Default: verify the span as if it were a reply."""
        try:
            return self.verify(candidate, ground_truth, extra_info).correct
        except Exception:  # a leak check must never crash the rollout
            return False

    # -- teacher ------------------------------------------------------------------------------------------
    def privileged_info(self, ground_truth: Any, extra_info: dict | None = None,
                        verify_result: VerifyResult | None = None) -> str:
        """Text only the teacher sees: the ground truth, a reference solution or hint from `extra_info`, and the
        verifier's verdict on the student's last answer (with the answer it extracted)."""
        parts = [f"Correct final answer: {format_ground_truth(ground_truth)}"]
        extra_info = extra_info or {}
        for key, title in (("solution", "Reference solution"), ("hint", "Hint")):
            if extra_info.get(key):
                parts.append(f"{title}:\n{extra_info[key]}")
        if verify_result is not None:
            verdict = verify_result.reason or ("correct" if verify_result.correct else "incorrect")
            lines = [f"Verifier verdict on the student's last answer: {verdict}"]
            if verify_result.extracted is not None:
                lines.append(f"Student's extracted answer: {trim(verify_result.extracted, 300)}")
            parts.append("\n".join(lines))
        return "\n\n".join(parts)

    def hint(self, verify_result: VerifyResult, ground_truth: Any, extra_info: dict | None = None) -> str:
        """A short privileged hint for rule-based feedback (the ``template`` teacher) that never states the
        answer; "" for none. Default: for a numeric answer and a numeric ground truth, whether the answer is too
        large or too small (the direction to move, not the distance)."""
        got, want = _as_number(verify_result.extracted), _as_number(ground_truth)
        if got is None or want is None or got == want:
            return ""
        return "It is too large." if got > want else "It is too small."

    def answer_strings(self, ground_truth: Any, extra_info: dict | None = None) -> list[str]:
        """Strings whose literal appearance in feedback counts as a leak (normalised matching is done by
        the leak guard). Default: the ground truth itself."""
        text = format_ground_truth(ground_truth).strip()
        return [text] if text else []

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def _as_number(value: Any) -> Fraction | None:
    """`value` as an exact number when it is a plain integer, decimal or fraction ("-3", "2.50", "7/4"), else None."""
    if isinstance(value, bool) or value is None:
        return None
    text = str(value).strip().replace(",", "")
    if not _PLAIN_NUMBER.fullmatch(text):
        return None
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


_PLAIN_NUMBER = re.compile(r"[-+]?\d{1,30}(?:\.\d{1,30})?(?:/\d{1,30})?")


def format_ground_truth(ground_truth: Any) -> str:
    if isinstance(ground_truth, str):
        return ground_truth
    try:
        return json.dumps(ground_truth)
    except TypeError:
        return str(ground_truth)
