"""The content-free teacher: "Your answer is incorrect. Try again." after every wrong answer, nothing else.

The attempts-matched control of a feedback study: evaluated with the same K as an informative teacher, it gives the
student the same number of attempts and tells it only what the verifier's verdict already implies (the answer was
wrong), so informative minus content-free at turn K is what the feedback's *content* adds over retrying. It never
looks at the problem, the answer or the privileged information, so it leaks nothing (its text holds no digit; an answer
that happens to be one of its six words is caught by the leak guard, which checks it like any teacher's feedback).
"""

from __future__ import annotations

from .base import Teacher, TeacherContext, register_teacher


@register_teacher("content_free")
class ContentFreeTeacher(Teacher):
    """The same feedback after every wrong answer: `FEEDBACK`."""

    FEEDBACK = "Your answer is incorrect. Try again."

    async def feedback(self, ctx: TeacherContext) -> str:
        return self.FEEDBACK
