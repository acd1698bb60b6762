"""Leak guard: keep the teacher from handing the student the answer.

Two deterministic checks, plus an optional LLM judge:

1. *String match*: each of the task's `answer_strings` is normalised (Unicode NFKC, case, ``$``, LaTeX spacing
   and ``\\left``/``\\right``) and searched in the normalised feedback with word boundaries, so the answer
   ``12`` is not found inside ``123`` or ``x12``; answers of 4+ characters are also matched with all
   whitespace removed (``1 / 2`` vs ``1/2``).
2. *Verifier equivalence*: answer-like spans of the feedback (``\\boxed{}`` contents, ``$...$`` maths, the
   right-hand side of ``x = ...``, "the answer is ...", fractions, numbers) are checked with the task's own
   `Task.is_equivalent`, so "x = 1/2" is caught for the answer ``0.5``.
3. *LLM judge* (``leak_guard.llm_judge: true``): a yes/no question to an LLM (the teacher's model) with the
   ``leak_judge`` prompt; it can only add leaks, never clear one found by 1 or 2.

The checks run off the event loop (the verifier may block), in the verification executor: ``leak_guard.timeout_s``
bounds their *execution* and ``rl2f.verify_queue_timeout_s`` their waiting for verifier capacity
(`reward_fns.worker_pool.run_bounded`). A check that times out, or one whose equivalence check of a span hit the
verifier's own time limit, is reported as ``timed_out`` (not as a leak): the episode withholds that feedback
all the same, so an unverifiable feedback never reaches the student, and counts a leak-guard timeout.
"""

from __future__ import annotations

import asyncio
import logging
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from reward_fns.worker_pool import ExecutionTimeout, QueueTimeout, VerifyAccount, run_bounded

from .config import DEFAULT_VERIFY_QUEUE_TIMEOUT_S, LeakGuardConfig
from .prompts import render_prompt
from .tasks.base import Task, format_ground_truth
from .teachers.base import CompleteFn

logger = logging.getLogger(__name__)

_LATEX_NOISE = re.compile(r"\\left|\\right|\\[,;:! ]|\\displaystyle|\\text(?:bf|rm|it)?\b|\\mathrm\b")
_SPACE = re.compile(r"\s+")

_NUMBER = re.compile(r"(?<![\w.])[-−]?\d+(?:,\d{3})*(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?\s*%?(?![\w])")
_LATEX_FRAC = re.compile(r"-?\\[dt]?frac\s*\{[^{}]{1,60}\}\s*\{[^{}]{1,60}\}")
_INLINE_MATH = re.compile(r"\$\$?([^$]{1,200}?)\$\$?")
_RHS = re.compile(r"(?<![<>=!])=\s*([^=\n;]{1,120}?)(?=\s*(?:[,;]\s|\.\s|\.$|\n|$|\s(?:and|so|which|then|but)\s))")
_ANSWER_IS = re.compile(r"(?:answer|result|solution)\s*(?:is|=|:|should be|would be)\s*([^\n;]{1,120}?)(?=[.;,]\s|[.;,]?$|\n)", re.I)


def normalize(text: str, *, keep_spaces: bool = False) -> str:
    """Lower-cased NFKC text with ``$`` and LaTeX spacing/sizing noise removed; whitespace removed, or collapsed
    to single spaces with ``keep_spaces`` (which keeps word boundaries for short answers such as ``B``)."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = _LATEX_NOISE.sub(" ", text)
    text = text.replace("$", " ").replace("−", "-")
    return _SPACE.sub(" ", text).strip() if keep_spaces else _SPACE.sub("", text)


def _contains_bounded(haystack: str, needle: str) -> bool:
    """`needle` occurs in `haystack` not glued to a letter/digit on either side (both normalised)."""
    if not needle:
        return False
    start = 0
    while True:
        i = haystack.find(needle, start)
        if i < 0:
            return False
        before = haystack[i - 1] if i > 0 else ""
        after = haystack[i + len(needle)] if i + len(needle) < len(haystack) else ""
        glued_before = bool(before) and before.isalnum() and needle[0].isalnum()
        if needle[0].isdigit() and before in "-." and before and (before == "." or i < 2 or not haystack[i - 2].isalnum()):
            glued_before = True  # "(-2)" or "0.2" is another number than "2" ("10-2" still counts: an operand)
        glued_after = bool(after) and needle[-1].isalnum() and (after.isalnum() or (after == "." and haystack[i + len(needle) + 1: i + len(needle) + 2].isdigit()))
        if not glued_before and not glued_after:
            return True
        start = i + 1


def _boxed_contents(text: str) -> list[str]:
    out = []
    for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            out.append(text[m.end(): i - 1])
    return out


def answer_like_spans(text: str, max_spans: int = 64) -> list[str]:
    """Candidate answer spans in `text`, most specific first, deduplicated, at most `max_spans`."""
    found: list[str] = []
    found += _boxed_contents(text)
    found += [m.group(0) for m in _LATEX_FRAC.finditer(text)]
    found += [m.group(1) for m in _ANSWER_IS.finditer(text)]
    found += [m.group(1) for m in _RHS.finditer(text)]
    found += [m.group(1) for m in _INLINE_MATH.finditer(text)]
    found += [m.group(0) for m in _NUMBER.finditer(text)]
    seen, spans = set(), []
    for s in found:
        s = s.strip().strip(".,;:").strip()
        key = normalize(s)
        if not key or key in seen:
            continue
        seen.add(key)
        spans.append(s)
        if len(spans) >= max_spans:
            break
    return spans


@dataclass
class LeakReport:
    leaked: bool
    reasons: list[str] = field(default_factory=list)
    """E.g. ``"string:0.5"``, ``"equivalent:1/2"``, ``"judge"``, ``"timeout: ..."``."""
    timed_out: bool = False
    """The check could not finish in time (``leaked`` is then False): the feedback is unverified."""
    queue_s: float = 0.0
    """Seconds the check waited for verifier capacity (not part of ``timeout_s``)."""


class LeakGuard:
    """Checks one trajectory's feedback against its ground truth (see the module docstring). Options: a
    `LeakGuardConfig` (``rl2f.leak_guard``), or its fields as keywords (``check_spans=False``)."""

    def __init__(self, task: Task, ground_truth: Any, extra_info: dict | None = None, *,
                 config: LeakGuardConfig | None = None, judge: CompleteFn | None = None, prompt_version: str = "v1",
                 queue_timeout_s: float = DEFAULT_VERIFY_QUEUE_TIMEOUT_S, **options: Any):
        config = config if config is not None else LeakGuardConfig(**options)
        self.config = config
        self.task = task
        self.ground_truth = ground_truth
        self.extra_info = extra_info or {}
        self.check_spans = config.check_spans
        self.max_spans = config.max_spans
        self.timeout_s = config.timeout_s
        self.queue_timeout_s = queue_timeout_s
        self.llm_judge = config.llm_judge
        self.judge = judge
        self.prompt_version = prompt_version
        answers = [str(a) for a in task.answer_strings(ground_truth, self.extra_info) if str(a).strip()]
        #: (spaced form, compact form or None): short answers are only matched with word boundaries intact.
        self._answers = [(normalize(a, keep_spaces=True), normalize(a) if len(normalize(a)) >= 4 else None) for a in answers]

    # -- deterministic checks (sync, may block in the verifier) ---------------------------------------------
    def check(self, feedback: str) -> LeakReport:
        report = self.check_strings(feedback)
        if report.leaked or not self.check_spans:
            return report
        return self.check_equivalent_spans(answer_like_spans(feedback, self.max_spans))

    def check_strings(self, feedback: str) -> LeakReport:
        """Check 1 (string match): cheap, never blocks."""
        spaced, compact = normalize(feedback, keep_spaces=True), normalize(feedback)
        reasons = [f"string:{a}" for a, c in self._answers
                   if _contains_bounded(spaced, a) or (c and _contains_bounded(compact, c))]
        return LeakReport(bool(reasons), reasons)

    def check_equivalent_spans(self, spans: list[str]) -> LeakReport:
        """Check 2 (verifier equivalence of answer-like spans): may block in the task's verifier."""
        for span in spans:
            if self.task.is_equivalent(span, self.ground_truth, self.extra_info):
                return LeakReport(True, [f"equivalent:{span}"])
        return LeakReport(False, [])

    # -- full check, off the event loop and time-bounded ----------------------------------------------------
    async def acheck(self, feedback: str) -> LeakReport:
        report = self.check_strings(feedback)
        spans = answer_like_spans(feedback, self.max_spans) if (self.check_spans and not report.leaked) else []
        if spans:  # only the verifier may block: run it off the event loop, time-bounded
            account = VerifyAccount()
            try:
                report = await run_bounded(self.check_equivalent_spans, spans, exec_timeout=self.timeout_s,
                                           queue_timeout=self.queue_timeout_s, account=account)
                if not report.leaked and (account.job_timeouts or account.queue_timeouts):  # a span went unchecked
                    raise ExecutionTimeout(f"{account.job_timeouts + account.queue_timeouts} span check(s) hit the "
                                           f"verifier's time limit")
            except (ExecutionTimeout, QueueTimeout) as exc:
                logger.warning("rl2f leak guard: check timed out (%s); the feedback is withheld as unverified "
                               "(counted as a leak-guard timeout, not a leak)", exc)
                return LeakReport(False, [f"timeout: {exc}"], timed_out=True, queue_s=account.queued_s())
            report.queue_s = account.queued_s()
        if report.leaked or not (self.llm_judge and self.judge is not None):
            return report
        prompt = render_prompt("leak_judge", self.prompt_version, answer=format_ground_truth(self.ground_truth), feedback=feedback)
        try:
            verdict = await asyncio.wait_for(self.judge([{"role": "user", "content": prompt}], 8, 0.0), timeout=self.timeout_s)
        except Exception as exc:  # noqa: BLE001 - an unavailable judge must not drop the trajectory
            logger.warning("rl2f leak guard: LLM judge failed (%s: %s); keeping the deterministic verdict", type(exc).__name__, exc)
            return report
        words = re.findall(r"[A-Za-z]+", verdict)
        if words and words[0].upper() == "LEAK":
            return LeakReport(True, ["judge"], queue_s=report.queue_s)
        return report
