"""The `self` (privileged policy) and `template` (rule-based) teachers, and the autodidact critic (the policy
critiquing its own attempt with no privileged information: the ``rl2f_autodidact`` loop's teacher)."""

from __future__ import annotations

from dataclasses import dataclass

from ..prompts import render_prompt
from .base import Teacher, TeacherContext, clean_feedback, register_teacher, render_conversation


@register_teacher("self")
class SelfTeacher(Teacher):
    """The policy itself, through the same generation server, prompted with the privileged information and
    told to guide without revealing the answer (the paper's default teacher)."""

    async def feedback(self, ctx: TeacherContext) -> str:
        text = await self.complete([{"role": "user", "content": self.teacher_prompt(ctx)}], self.max_tokens, self.temperature)
        return clean_feedback(text, who=self.name)


@register_teacher("template")
class TemplateTeacher(Teacher):
    """Rule-based feedback without any LLM: "your answer X is incorrect" or "no final answer found", plus the
    task's privileged hint (`Task.hint`: for numbers, "too large" / "too small") or else the verifier's reason.
    Fast and leak-free by construction; the CPU default's teacher. Texts: ``template_incorrect`` /
    ``template_no_answer``."""

    @dataclass
    class Options:
        hints: bool = True  # add the task's privileged hint (Task.hint); false: the verifier's reason only

    async def feedback(self, ctx: TeacherContext) -> str:
        vr = ctx.verify_result
        reason = vr.reason.strip()
        if reason.lower().rstrip(".") == "incorrect":  # says nothing the template does not already say
            reason = ""
        hint = ctx.task.hint(vr, ctx.ground_truth, ctx.extra_info) if self.options.hints and vr.extracted else ""
        reason = hint.strip() or reason
        if reason and not reason.endswith((".", "!", "?")):
            reason += "."
        if reason:
            reason = reason[0].upper() + reason[1:]
        if vr.extracted:
            text = render_prompt("template_incorrect", self.prompt_version, extracted=vr.extracted.strip(), reason=reason)
        else:
            text = render_prompt("template_no_answer", self.prompt_version, reason=reason)
        return clean_feedback(" ".join(text.split()), who=self.name)


@register_teacher("autodidact_critic")
class SelfCriticTeacher(Teacher):
    """No privileged information: the policy critiques its previous attempt (``autodidact_critic`` prompt) and the
    critique, wrapped by ``autodidact_revise``, is the next user turn. Nothing to leak, so the ``rl2f_autodidact``
    loop runs it without the leak guard."""

    async def feedback(self, ctx: TeacherContext) -> str:
        prompt = render_prompt("autodidact_critic", self.prompt_version, problem=ctx.problem,
                               conversation=render_conversation(ctx.messages))
        critique = clean_feedback(await self.complete([{"role": "user", "content": prompt}], self.max_tokens,
                                                      self.temperature), who=self.name)
        return render_prompt("autodidact_revise", self.prompt_version, critique=critique)
