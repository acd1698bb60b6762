"""Teacher API and registry (verl style: a module-level dict filled by a decorator).

    @register_teacher("my_teacher")
    class MyTeacher(Teacher):
        async def feedback(self, ctx: TeacherContext) -> str: ...

A teacher turns the state of a didactic interaction (problem, conversation so far, the verifier's verdict on
the latest answer, privileged information) into corrective feedback for the student. The agent loop builds one
teacher per trajectory with `build_teacher` from the ``rl2f.teacher`` config section; ``name`` selects the
class, the other keys are its options (sub-sections ``openai:``/``execution:`` hold teacher-specific keys).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from ..prompts import render_prompt
from ..tasks.base import Task, VerifyResult

#: Async text completion: (chat messages, max_tokens, temperature) -> reply text.
CompleteFn = Callable[[list[dict[str, str]], int, float], Awaitable[str]]

TEACHER_REGISTRY: dict[str, type["Teacher"]] = {}


class TeacherError(RuntimeError):
    """The teacher could not produce feedback (endpoint down, timeouts after retries, empty reply, ...)."""


class UnknownTeacherError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown teacher"


def register_teacher(name: str):
    """Class decorator registering a `Teacher` subclass under `name` (re-registering the same class is a no-op)."""

    def decorator(cls: type[Teacher]) -> type[Teacher]:
        existing = TEACHER_REGISTRY.get(name)
        if existing is not None and f"{existing.__module__}.{existing.__qualname__}" != f"{cls.__module__}.{cls.__qualname__}":
            raise ValueError(f"teacher {name!r} is already registered by {existing.__module__}.{existing.__qualname__}")
        TEACHER_REGISTRY[name] = cls
        cls.name = name
        return cls

    return decorator


def get_teacher_class(name: str) -> type["Teacher"]:
    if name not in TEACHER_REGISTRY:
        raise UnknownTeacherError(
            f"unknown teacher {name!r} (rl2f.teacher.name); registered teachers: {', '.join(sorted(TEACHER_REGISTRY))}"
        )
    return TEACHER_REGISTRY[name]


def build_teacher(config: dict, *, policy_complete: CompleteFn | None = None) -> "Teacher":
    """Instantiate the teacher named by ``config["name"]`` with the whole ``rl2f.teacher`` section."""
    return get_teacher_class(str(config.get("name", "self")))(config, policy_complete=policy_complete)


@dataclass
class TeacherContext:
    """Everything a teacher may look at when writing feedback after student turn `turn`."""

    task: Task
    problem: str
    ground_truth: Any
    extra_info: dict
    messages: list[dict[str, Any]]
    """The student's conversation so far, ending with the latest (wrong) assistant reply."""
    verify_result: VerifyResult
    turn: int
    attempt: int = 0
    """0 for the first try; k for the k-th regeneration after a leak."""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def latest_answer(self) -> str:
        for m in reversed(self.messages):
            if m.get("role") == "assistant":
                return content_text(m.get("content"))
        return ""


class Teacher:
    """Base class. Subclasses implement `feedback`; LLM-backed ones also `complete` (used by the leak judge
    and by teachers that rewrite other feedback)."""

    name: str = "base"
    #: Whether this teacher calls an LLM (the loop measures its latency either way).
    uses_llm: bool = False

    def __init__(self, config: dict, *, policy_complete: CompleteFn | None = None):
        self.config = dict(config)
        self.policy_complete = policy_complete
        self.prompt_version = str(self.config.get("prompt_version", "v1"))
        self.max_tokens = int(self.config.get("max_tokens", 256))
        self.temperature = float(self.config.get("temperature", 0.7))

    async def feedback(self, ctx: TeacherContext) -> str:
        raise NotImplementedError

    async def complete(self, messages: list[dict[str, str]], max_tokens: int, temperature: float) -> str:
        """Plain completion with this teacher's model; by default the policy (same server as the student)."""
        if self.policy_complete is None:
            raise TeacherError(f"teacher {self.name!r} has no LLM to complete with (no policy server given)")
        return await self.policy_complete(messages, max_tokens, temperature)

    # -- shared helpers -------------------------------------------------------------------------------------
    def teacher_prompt(self, ctx: TeacherContext) -> str:
        """The privileged teacher prompt (``teacher_<version>.txt``)."""
        retry = render_prompt("teacher_retry", self.prompt_version) if ctx.attempt > 0 else ""
        return render_prompt(
            "teacher", self.prompt_version,
            problem=ctx.problem,
            privileged_info=ctx.task.privileged_info(ctx.ground_truth, ctx.extra_info, ctx.verify_result),
            guidance=ctx.task.teacher_guidance,
            conversation=render_conversation(ctx.messages),
            retry_note=retry,
        )


_THINK = re.compile(r"<think>.*?</think>", re.S)


def clean_feedback(text: str, *, who: str) -> str:
    """Strip reasoning blocks and whitespace; an empty result is a `TeacherError`."""
    text = _THINK.sub("", text or "")
    if "<think>" in text:  # unterminated reasoning: the answer never came
        text = text.split("<think>", 1)[0]
    text = text.strip()
    if not text:
        raise TeacherError(f"teacher {who!r} returned empty feedback")
    return text


def content_text(content: Any) -> str:
    """Text of a chat message content (a string, or a list of OpenAI-style parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return str(content)


def render_conversation(messages: list[dict[str, Any]]) -> str:
    """The interaction after the first problem statement, as labelled plain text for a teacher/critic prompt."""
    lines: list[str] = []
    seen_problem = False
    attempt = 0
    for m in messages:
        role = m.get("role")
        text = content_text(m.get("content")).strip()
        if role == "system":
            continue
        if role == "user" and not seen_problem:
            seen_problem = True
            continue
        if role == "assistant":
            attempt += 1
            lines.append(f"### Student, attempt {attempt}\n{text}")
        elif role == "user":
            lines.append(f"### Feedback to the student\n{text}")
    return "\n\n".join(lines)
