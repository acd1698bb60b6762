"""The test task the evaluation tests share (tests/test_eval_harness.py, tests/test_eval_controls.py): the answer is
the last 'Answer: X' line of a reply, compared as a string. Scripted students write such lines, so each test knows
every verdict in advance. Registered once, under `TASK`, when this module is first imported."""

from __future__ import annotations

import re

from rl2f_plugin.tasks import Task, VerifyResult, register_task

TASK = "test_answer_line"


@register_task(TASK)
class AnswerLineTask(Task):
    """Test task: the answer is the last 'Answer: X' in the reply, compared as a string."""

    teacher_guidance = "Point at the arithmetic mistake."

    def extract_answer(self, response: str):
        found = re.findall(r"Answer:\s*(-?\d+)", response)
        return found[-1] if found else None

    def verify(self, response, ground_truth, extra_info=None):
        ans = self.extract_answer(response)
        if ans is None:
            return VerifyResult(0.0, None, "no 'Answer:' line")
        ok = ans == str(ground_truth).strip()
        return VerifyResult(1.0 if ok else 0.0, ans, "" if ok else "wrong answer")
