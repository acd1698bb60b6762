"""Teacher API and registry (verl style: a module-level dict filled by a decorator).

    @register_teacher("my_teacher")
    class MyTeacher(Teacher):
        @dataclass
        class Options:              # optional: the teacher's own keys, under rl2f.teacher.my_teacher
            style: str = "short"

        async def feedback(self, ctx: TeacherContext) -> str: ...

A teacher turns the state of a didactic episode (problem, conversation so far, the verifier's verdict on the
latest answer, privileged information) into corrective feedback for the student. The episode gets one teacher per
trajectory from `build_teacher` and the ``rl2f.teacher`` section (`rl2f_plugin.config.TeacherConfig`): ``name``
selects the class, ``max_tokens``/``temperature``/``prompt_version`` apply to all, and a sub-section named after
the teacher holds its ``Options``. Third-party packages register teachers through the ``rl2f.teachers``
entry-point group (the target is imported; a `Teacher` subclass is registered under the entry point's name).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, ClassVar

from ..dataclass_config import ConfigError, build_options, require
from ..plugin_entry_points import load_entry_points
from ..prompts import render_prompt
from ..tasks.base import Task, VerifyResult


#: Async text completion: (chat messages, max_tokens, temperature) -> reply text.
CompleteFn = Callable[[list[dict[str, str]], int, float], Awaitable[str]]

TEACHER_REGISTRY: dict[str, type["Teacher"]] = {}
ENTRY_POINT_GROUP = "rl2f.teachers"


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


def load_teacher_entry_points() -> None:
    """Import every ``rl2f.teachers`` entry point once (`rl2f_plugin.plugin_entry_points`)."""
    for name, target in load_entry_points(ENTRY_POINT_GROUP):
        if name not in TEACHER_REGISTRY and isinstance(target, type) and issubclass(target, Teacher):
            register_teacher(name)(target)


def get_teacher_class(name: str) -> type["Teacher"]:
    if name not in TEACHER_REGISTRY:
        load_teacher_entry_points()
    if name not in TEACHER_REGISTRY:
        raise UnknownTeacherError(
            f"unknown teacher {name!r} (rl2f.teacher.name); registered teachers: {', '.join(sorted(TEACHER_REGISTRY))}"
        )
    return TEACHER_REGISTRY[name]


def build_teacher(config: TeacherConfig | Mapping[str, Any], *, policy_complete: CompleteFn | None = None) -> "Teacher":
    """Instantiate the teacher named by ``config.name`` (a `TeacherConfig`, or the ``rl2f.teacher`` mapping)."""
    if not isinstance(config, TeacherConfig):
        config = build_options(TeacherConfig, config, "rl2f.teacher")
    return get_teacher_class(config.name)(config, policy_complete=policy_complete)


@dataclass
class TeacherConfig:
    """``rl2f.teacher``: which teacher writes the feedback and how. Keys other than the five below are sub-sections
    named after a teacher (``openai:``, ``execution:``, ``template:``) holding that teacher's options; they are
    checked against the teacher's ``Options`` dataclass by `options_for`, which `RL2FConfig` calls for the chosen
    teacher at construction."""

    _extra_keys_allowed = True

    name: str = "self"              # a registered teacher: self | template | openai | execution | a plugin's
    max_tokens: int = 256
    temperature: float = 0.7
    prompt_version: str = "v1"      # prompts/<name>_<version>.txt
    thinking: bool = False          # may the policy think (<think> block) when it gives feedback, critiques or judges?
    """With a thinking model (e.g. a Qwen3-style template) as its own teacher: false renders those prompts with
    the template's thinking switch off (``enable_thinking=False``) when it has one. Either way, a reply that hits
    ``max_tokens`` inside an unfinished think block gets the block closed and ``max_tokens`` more to answer."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Teacher sub-sections by teacher name (raw; see `options_for`)."""

    def __post_init__(self):
        require(self.max_tokens >= 1, "rl2f.teacher.max_tokens", "an integer >= 1", self.max_tokens)
        require(self.temperature >= 0, "rl2f.teacher.temperature", "a number >= 0", self.temperature)

    def options_for(self, teacher_name: str) -> Any:
        """The validated options of teacher `teacher_name` (its ``Options`` dataclass; None if it has none)."""
        options_cls = getattr(get_teacher_class(teacher_name), "Options", None)
        section = self.extra.get(teacher_name)
        if options_cls is None:
            if section:
                raise ConfigError(f"rl2f.teacher.{teacher_name}: teacher {teacher_name!r} takes no options")
            return None
        return build_options(options_cls, section, f"rl2f.teacher.{teacher_name}")

    def validate(self) -> None:
        """Every sub-section names a registered teacher and holds valid options for it."""
        try:
            get_teacher_class(self.name)
        except UnknownTeacherError as exc:
            raise ConfigError(str(exc)) from None
        for key in self.extra:
            try:
                get_teacher_class(key)
            except UnknownTeacherError:
                known = ["name", "max_tokens", "temperature", "prompt_version", "thinking"]
                raise ConfigError(f"rl2f.teacher.{key}: unknown key; known keys: {', '.join(known)}, or the options "
                                  f"section of a registered teacher ({', '.join(sorted(TEACHER_REGISTRY))})") from None
            self.options_for(key)
        self.options_for(self.name)

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in ("name", "max_tokens", "temperature", "prompt_version", "thinking")}
        out.update(self.extra)
        return out


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

    @property
    def latest_answer(self) -> str:
        for m in reversed(self.messages):
            if m.get("role") == "assistant":
                return content_text(m.get("content"))
        return ""


class Teacher:
    """Base class. Subclasses implement `feedback`; LLM-backed ones also `complete` (used by the leak judge
    and by teachers that rewrite other feedback). A subclass may declare an ``Options`` dataclass: its
    validated instance (from ``rl2f.teacher.<name>``) is ``self.options``."""

    name: str = "base"
    Options: ClassVar[type | None] = None

    def __init__(self, config: TeacherConfig | None = None, *, policy_complete: CompleteFn | None = None):
        self.config = config if config is not None else TeacherConfig(name=self.name)
        self.policy_complete = policy_complete
        self.prompt_version = self.config.prompt_version
        self.max_tokens = self.config.max_tokens
        self.temperature = self.config.temperature
        self.options = (build_options(self.Options, self.config.extra.get(self.name), f"rl2f.teacher.{self.name}")
                        if self.Options is not None else None)

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
    """Strip reasoning blocks and whitespace; an empty result is a `TeacherError`. A ``</think>`` with no opening
    tag ends reasoning the generation prompt opened (DeepSeek-R1/QwQ-style templates): only what follows is kept."""
    text = _THINK.sub("", text or "")
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
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
