"""The `self` (privileged policy) and `template` (rule-based) teachers."""

from __future__ import annotations

from ..prompts import render_prompt
from .base import Teacher, TeacherContext, clean_feedback, register_teacher


@register_teacher("self")
class SelfTeacher(Teacher):
    """The policy itself, through the same generation server, prompted with the privileged information and
    told to guide without revealing the answer (the paper's default teacher)."""

    uses_llm = True

    async def feedback(self, ctx: TeacherContext) -> str:
        text = await self.complete([{"role": "user", "content": self.teacher_prompt(ctx)}], self.max_tokens, self.temperature)
        return clean_feedback(text, who=self.name)


@register_teacher("template")
class TemplateTeacher(Teacher):
    """Rule-based feedback without any LLM: "your answer X is incorrect" or "no final answer found", plus the
    verifier's reason. For ablations and fast tests. Texts: ``template_incorrect``/``template_no_answer``."""

    async def feedback(self, ctx: TeacherContext) -> str:
        vr = ctx.verify_result
        reason = vr.reason.strip()
        if reason and not reason.endswith((".", "!", "?")):
            reason += "."
        if reason:
            reason = reason[0].upper() + reason[1:]
        if vr.extracted:
            text = render_prompt("template_incorrect", self.prompt_version, extracted=vr.extracted.strip(), reason=reason)
        else:
            text = render_prompt("template_no_answer", self.prompt_version, reason=reason)
        return clean_feedback(" ".join(text.split()), who=self.name)
