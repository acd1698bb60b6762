"""Teachers of the didactic episode: `self` (the policy with privileged information), `openai` (any
OpenAI-compatible endpoint), `execution` (failing-test feedback for code), `template` (rule-based) and
`autodidact_critic` (the policy critiquing itself, no privileged information). Plugins: the ``rl2f.teachers``
entry-point group."""

from .base import (
    TEACHER_REGISTRY,
    CompleteFn,
    Teacher,
    TeacherConfig,
    TeacherContext,
    TeacherError,
    UnknownTeacherError,
    build_teacher,
    clean_feedback,
    content_text,
    get_teacher_class,
    register_teacher,
    render_conversation,
)
from . import simple, openai_teacher, execution  # noqa: E402,F401  (register the built-in teachers)
from . import content_free  # noqa: E402,F401  (the attempts-matched control of feedback studies)

__all__ = [
    "TEACHER_REGISTRY", "CompleteFn", "Teacher", "TeacherConfig", "TeacherContext", "TeacherError",
    "UnknownTeacherError", "build_teacher", "clean_feedback", "content_text", "get_teacher_class", "register_teacher",
    "render_conversation",
]
