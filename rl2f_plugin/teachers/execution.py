"""The `execution` teacher: feedback from the code verifier's report on the failing test (which test, expected
vs got, the error), optionally rewritten into friendlier prose by an LLM teacher
(``rl2f.teacher.execution.rewrite_with: self|openai``).

It reads `VerifyResult.details` of the code task (`reward_fns.code_sandbox`); keys it knows (any subset may be
present): ``status``, ``tests_passed`` / ``tests_total``, ``failing_test``, ``input``, ``expected``, ``got``,
``error`` / ``traceback`` / ``stderr``. Unknown keys are listed as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..prompts import render_prompt
from .base import Teacher, TeacherContext, clean_feedback, get_teacher_class, register_teacher

_LABELS = (
    (("failing_test", "test", "test_case"), "Failing test"),
    (("input", "inputs", "args"), "Input"),
    (("expected", "expected_output"), "Expected"),
    (("got", "output", "actual", "actual_output"), "Got"),
    (("error", "exception", "error_type"), "Error"),
    (("traceback",), "Traceback"),
    (("stderr",), "Stderr"),
)


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 20] + "\n... (truncated)"


def execution_report(details: dict[str, Any], reason: str, max_chars: int = 1500) -> tuple[str, str]:
    """(summary line, detail block) from a verifier's details."""
    passed = details.get("tests_passed", details.get("passed"))
    total = details.get("tests_total", details.get("total"))
    summary = reason.strip() or str(details.get("status", "")).replace("_", " ")
    if summary and not summary.endswith((".", "!", "?")):
        summary += "."
    if summary:
        summary = summary[0].upper() + summary[1:]
    if passed is not None and total and "passed" not in summary:
        summary = f"{passed}/{total} tests passed. {summary}".strip()
    used: set[str] = {"passed", "total", "tests_passed", "tests_total", "status", "seconds", "elapsed"}
    lines: list[str] = []
    for keys, label in _LABELS:
        for k in keys:
            if k in details and details[k] not in (None, ""):
                lines.append(f"{label}:\n{_clip(str(details[k]).rstrip(), max_chars)}")
                used.add(k)
                break
    for k, v in details.items():
        if k not in used and not any(k in keys for keys, _ in _LABELS) and v not in (None, ""):
            lines.append(f"{k}: {_clip(str(v), max_chars)}")
    return summary, "\n".join(lines)


@register_teacher("execution")
class ExecutionTeacher(Teacher):
    @dataclass
    class Options:
        rewrite_with: str | None = None  # an LLM teacher (self | openai) that rewrites the report into prose
        max_detail_chars: int = 1500     # each detail (test, expected, got, error) clipped to this length

    def __init__(self, config=None, **kwargs):
        super().__init__(config, **kwargs)
        rewrite_with = self.options.rewrite_with
        self.rewriter: Teacher | None = None
        if rewrite_with:
            if rewrite_with == "execution":
                raise ValueError("rl2f.teacher.execution.rewrite_with cannot be 'execution'")
            self.rewriter = get_teacher_class(rewrite_with)(self.config, **kwargs)

    async def feedback(self, ctx: TeacherContext) -> str:
        vr = ctx.verify_result
        summary, details = execution_report(vr.details or {}, vr.reason or "", self.options.max_detail_chars)
        report = render_prompt("execution_feedback", self.prompt_version, summary=summary, details=details)
        if self.rewriter is None:
            return clean_feedback(report, who=self.name)
        prompt = render_prompt("execution_rewrite", self.prompt_version, problem=ctx.problem,
                               latest_answer=ctx.latest_answer, report=report)
        text = await self.rewriter.complete([{"role": "user", "content": prompt}], self.max_tokens, self.temperature)
        return clean_feedback(text, who=f"{self.name}+{self.rewriter.name}")

    async def complete(self, messages, max_tokens, temperature):
        if self.rewriter is not None:
            return await self.rewriter.complete(messages, max_tokens, temperature)
        return await super().complete(messages, max_tokens, temperature)
