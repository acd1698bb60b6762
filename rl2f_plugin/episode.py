"""One didactic episode (RL²F), as text: the interaction a student has with a verifier and a teacher.

    episode = DidacticEpisode.from_sample(row, config, teacher=build_teacher(config.teacher))
    step = await episode.step(student_reply)          # verify; if wrong, feedback through the leak guard
    while not step.done:
        step = await episode.step(await student(episode.messages + [user(step.feedback)]))
    step.record.reward, step.record.turns[0].verdict, ...

A step takes the student's reply and
1. verifies it with the task's verifier (off the event loop; ``rl2f.verify_timeout_s`` bounds its *execution*,
   ``rl2f.verify_queue_timeout_s`` its waiting for verifier capacity; a verdict that comes from a time limit
   scores 0 and is counted as a verify timeout, never passed off as a plain wrong answer);
2. ends the episode if it is correct, if the caller says there is no room for another reply (``can_continue``)
   or if it was the K-th reply (``rl2f.max_turns``);
3. otherwise asks the teacher for feedback, checks it with the leak guard (regenerating up to
   ``leak_guard.max_regenerations`` times, then falling back to the safe generic feedback) and returns it; it
   becomes the next user turn when the next reply is stepped. A leak check that times out withholds the
   feedback like a leak but is counted as a leak-guard timeout, not a leak. A failing teacher is handled by
   ``rl2f.on_teacher_error`` (fallback feedback, stop, or raise); a teacher timeout is counted as such.
   ``rl2f.teacher_timeout_s`` bounds the teacher's own time (an external endpoint, its own work), not the time
   it spends generating on the policy's own server (`self`, the autodidact critic, a ``rewrite_with: self``):
   that generation waits in the same server queue as the student's turns, and in ``rl2f_colocate_async`` is
   paused across a weight update by design (verl's ``FullyAsyncLLMServerClient`` resumes it), so it is bounded
   like the student's own turns, by ``max_tokens`` on verl's server, not by a wall clock that would turn server
   load or a training step into generic fallback feedback.

The episode knows no tokens; the verl agent loops (`rl2f_plugin.agent_loops.didactic`) turn it into token ids and
masks, and may end it early with `end(truncated=True)` when the response budget runs out. Its `EpisodeRecord`
(turns, verdicts, leaks, teacher errors, time-outs, queue waits, timings, reward) gives the trajectory's
``extra_fields`` and the metrics' `TrajectoryRecord`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import schema
from reward_fns.worker_pool import ExecutionTimeout, QueueTimeout, VerifyAccount, configure_pool, run_bounded

from .config import RL2FConfig, plain
from .leak_guard import LeakGuard
from .metrics import TrajectoryRecord
from .prompts import render_prompt
from .reward_modes import trajectory_reward
from .tasks import Task, VerifyResult, get_task
from .teachers import Teacher, TeacherContext, TeacherError, content_text

logger = logging.getLogger(__name__)

__all__ = ["DidacticEpisode", "EpisodeRecord", "Step", "TurnRecord", "problem_text"]


@dataclass
class TurnRecord:
    """One student reply, its verdict, and the feedback written after it (if any)."""

    reply: str
    verdict: VerifyResult
    verify_s: float = 0.0
    verify_timed_out: bool = False
    """The verdict came from a time limit (the episode's execution bound, a verifier job's limit, a sandboxed
    program's wall clock): scored 0 without the answer having been judged wrong."""
    verify_queue_timed_out: bool = False
    """The verifier could not get capacity within ``rl2f.verify_queue_timeout_s`` (scored 0, never judged)."""
    verify_queue_s: float = 0.0
    """Seconds this reply's verification and its feedback's leak checks waited for verifier capacity."""
    feedback: str | None = None
    """The feedback written after this reply (None: the episode ended, or the teacher failed with on_teacher_error=stop)."""
    delivered: bool = False
    """The feedback reached the student (False when the episode was cut before the next reply)."""
    leaks: int = 0
    """Leaks the guard caught while this feedback was written (each caused a regeneration or the fallback)."""
    leak_guard_timeouts: int = 0
    """Leak checks that timed out (each withheld the feedback: a regeneration or the fallback, not a leak)."""
    fell_back: bool = False
    """The safe generic feedback was used after the guard rejected ``max_regenerations + 1`` attempts."""
    teacher_error: str | None = None
    teacher_timed_out: bool = False
    teacher_s: float = 0.0

    @property
    def used_fallback(self) -> bool:
        """The student got the safe generic feedback instead of the teacher's (guard rejections or a teacher
        failure under ``on_teacher_error: fallback``)."""
        return self.fell_back or (self.teacher_error is not None and self.feedback is not None)


@dataclass
class EpisodeRecord:
    """Everything that happened in one episode."""

    task: str
    max_turns: int
    turns: list[TurnRecord] = field(default_factory=list)
    truncated: bool = False
    reward: float = 0.0

    @property
    def turn_correct(self) -> list[int]:
        return [int(t.verdict.correct) for t in self.turns]

    @property
    def solved_at(self) -> int:
        """1-based turn of the first correct reply, 0 if none."""
        return next((i for i, t in enumerate(self.turns, start=1) if t.verdict.correct), 0)

    @property
    def leaks(self) -> int:
        return sum(t.leaks for t in self.turns)

    @property
    def leaked_turns(self) -> int:
        """Feedback turns that fell back to the safe generic feedback after leaks (at least one caught)."""
        return sum(t.fell_back and t.leaks > 0 for t in self.turns)

    @property
    def guard_timeout_turns(self) -> int:
        """Feedback turns that fell back only because the leak checks timed out (no leak caught)."""
        return sum(t.fell_back and t.leaks == 0 for t in self.turns)

    @property
    def timeouts(self) -> dict[str, int]:
        """Time-outs of this episode by kind (`rl2f_plugin.schema` names them in ``extra_fields``)."""
        return {"verify": sum(t.verify_timed_out for t in self.turns),
                "verify_queue": sum(t.verify_queue_timed_out for t in self.turns),
                "leak_guard": sum(t.leak_guard_timeouts for t in self.turns),
                "teacher": sum(t.teacher_timed_out for t in self.turns)}

    @property
    def fallbacks(self) -> int:
        return sum(t.used_fallback for t in self.turns)

    @property
    def verify_queue_s(self) -> float:
        return float(sum(t.verify_queue_s for t in self.turns))

    @property
    def feedback_turns(self) -> int:
        return sum(t.delivered for t in self.turns)

    @property
    def final_reply(self) -> str:
        return self.turns[-1].reply if self.turns else ""

    def trajectory_record(self, data_source: str | None = None, feedback_tokens: int = 0) -> TrajectoryRecord:
        """The record `rl2f_plugin.metrics` computes cumulative accuracy, leak rate, ... from."""
        return TrajectoryRecord(
            solved_at_turn=self.solved_at, num_student_turns=len(self.turns), max_turns=self.max_turns,
            leaks=self.leaks, leaked_turns=self.leaked_turns,
            feedback_tokens=feedback_tokens, feedback_turns=self.feedback_turns, data_source=data_source or self.task,
            **self._timeout_fields())

    def _timeout_fields(self) -> dict[str, Any]:
        t = self.timeouts
        return {"verify_timeouts": t["verify"], "verify_queue_timeouts": t["verify_queue"],
                "verify_queue_s": self.verify_queue_s, "leak_guard_timeouts": t["leak_guard"],
                "guard_timeout_turns": self.guard_timeout_turns, "teacher_timeouts": t["teacher"],
                "fallbacks": self.fallbacks}

    def extra_fields(self, feedback_tokens: int = 0) -> dict[str, Any]:
        """The trajectory's ``extra_fields`` (`rl2f_plugin.schema` keys), read by metrics, loss and evaluation."""
        solved, k = self.solved_at, self.max_turns
        leaks, fell_back = self.leaks, self.leaked_turns
        teacher_errors = sum(t.teacher_error is not None for t in self.turns)
        timeouts = self.timeouts
        return {
            schema.EF_TURN_CORRECT: self.turn_correct,
            schema.EF_TURN_SCORES: [float(t.verdict.score) for t in self.turns],
            schema.EF_SOLVED_AT_TURN: solved,
            schema.EF_NUM_STUDENT_TURNS: len(self.turns),
            schema.EF_LEAK_COUNT: leaks,
            schema.EF_LEAKED_TURNS: fell_back,
            schema.EF_FEEDBACK_TURNS: self.feedback_turns,
            schema.EF_FEEDBACK_TOKENS: int(feedback_tokens),
            schema.EF_TEACHER_LATENCY: float(sum(t.teacher_s for t in self.turns)),
            schema.EF_TRUNCATED: int(self.truncated),
            schema.EF_TASK: self.task,
            schema.EF_MAX_TURNS: k,
            schema.EF_TEACHER_ERRORS: teacher_errors,
            schema.EF_FINAL_RESPONSE: self.final_reply,
            schema.EF_VERIFY_TIMEOUTS: timeouts["verify"],
            schema.EF_VERIFY_QUEUE_TIMEOUTS: timeouts["verify_queue"],
            schema.EF_VERIFY_QUEUE_S: self.verify_queue_s,
            schema.EF_LEAK_GUARD_TIMEOUTS: timeouts["leak_guard"],
            schema.EF_GUARD_TIMEOUT_TURNS: self.guard_timeout_turns,
            schema.EF_TEACHER_TIMEOUTS: timeouts["teacher"],
            schema.EF_FALLBACKS: self.fallbacks,
            schema.REWARD_EXTRA_INFO: {
                "score": self.reward,
                "acc": float(self.turns[-1].verdict.correct) if self.turns else 0.0,
                **{f"acc_turn{t}": float(0 < solved <= t) for t in range(1, k + 1)},
                "solved_turn": float(solved),
                "num_student_turns": float(len(self.turns)),
                "leaks": float(leaks),
                "leaked_turns": float(fell_back),
                "teacher_errors": float(teacher_errors),
                "truncated": float(self.truncated),
                "verify_timeouts": float(timeouts["verify"] + timeouts["verify_queue"]),
                "leak_guard_timeouts": float(timeouts["leak_guard"]),
                "teacher_timeouts": float(timeouts["teacher"]),
                "fallbacks": float(self.fallbacks),
            },
        }


@dataclass
class Step:
    """What `DidacticEpisode.step` returns: the next feedback, or the end of the episode."""

    done: bool
    feedback: str | None
    """The next user turn (when not done)."""
    record: EpisodeRecord

    @property
    def reward(self) -> float:
        return self.record.reward


class DidacticEpisode:
    """A student, a verifier and a teacher with privileged information, for at most K student replies."""

    def __init__(self, *, task: Task, ground_truth: Any, extra_info: Mapping[str, Any] | None,
                 messages: list[dict[str, Any]], config: RL2FConfig, teacher: Teacher, leak_guard: bool = True):
        self.task, self.ground_truth, self.extra_info = task, ground_truth, dict(extra_info or {})
        self.config, self.teacher = config, teacher
        self.messages: list[dict[str, Any]] = [dict(m) for m in messages]
        """The conversation so far (chat messages; the latest feedback joins it when the next reply is stepped)."""
        self.problem = problem_text(self.extra_info, self.messages)
        lg = config.leak_guard
        self.guard = (LeakGuard(task, ground_truth, self.extra_info, config=lg, judge=teacher.complete,
                                prompt_version=config.teacher.prompt_version,
                                queue_timeout_s=config.verify_queue_timeout_s) if leak_guard and lg.enable else None)
        self.record = EpisodeRecord(task=task.name, max_turns=config.max_turns)
        self.done = False
        self._policy_clock = _PolicyClock()
        _track_policy_time(teacher, self._policy_clock)
        configure_pool(size=config.verify_workers, queue_timeout=config.verify_queue_timeout_s)

    @classmethod
    def from_sample(cls, sample: Mapping[str, Any], config: RL2FConfig, *, teacher: Teacher,
                    leak_guard: bool = True) -> "DidacticEpisode":
        """The episode of one dataset row as verl's ``RLHFDataset`` yields it (``raw_prompt``, ``reward_model``,
        ``extra_info``, ``data_source``, ``index``); a row missing a field raises naming the row and the field."""
        where = f"sample index={sample.get('index')!r}"
        extra_info = dict(plain(sample.get("extra_info")) or {})
        task_name = extra_info.get("task") or sample.get("data_source")
        if not task_name:
            raise ValueError(f"rl2f: {where} has neither extra_info.task nor data_source; cannot pick a task/verifier")
        reward_model = plain(sample.get("reward_model")) or {}
        if "ground_truth" not in reward_model:
            raise ValueError(f"rl2f: {where} (task {task_name!r}) has no reward_model.ground_truth")
        if "raw_prompt" not in sample:
            raise ValueError(f"rl2f: {where} has no raw_prompt (set data.return_raw_chat=True)")
        return cls(task=get_task(str(task_name)), ground_truth=reward_model["ground_truth"], extra_info=extra_info,
                   messages=list(plain(list(sample["raw_prompt"]))), config=config, teacher=teacher,
                   leak_guard=leak_guard)

    # ------------------------------------------------------------------------------------------------------------
    async def step(self, reply: str, *, can_continue: bool = True) -> Step:
        """Take the student's next reply; return the feedback to show it, or the end (see the module docstring).
        ``can_continue=False``: the caller has no room for another reply (the episode ends truncated if wrong)."""
        if self.done:
            raise RuntimeError("step() called on a finished episode")
        turns = self.record.turns
        if turns and turns[-1].feedback is not None:  # the previous feedback reached the student
            self.messages.append({"role": "user", "content": turns[-1].feedback})
            turns[-1].delivered = True
        self.messages.append({"role": "assistant", "content": reply})
        t0 = time.perf_counter()
        turn = await self._verify(reply)
        turn.verify_s = time.perf_counter() - t0
        turns.append(turn)
        verdict = turn.verdict
        if verdict.correct:
            return self.end()
        if not can_continue:
            return self.end(truncated=True)
        if len(turns) >= self.config.max_turns:
            return self.end()
        t0 = time.perf_counter()
        await self._write_feedback(turn)
        turn.teacher_s = time.perf_counter() - t0
        if turn.feedback is None:  # the teacher failed and on_teacher_error == "stop"
            return self.end()
        return Step(done=False, feedback=turn.feedback, record=self.record)

    def end(self, *, truncated: bool = False) -> Step:
        """End the episode (also: the caller could not fit the pending feedback or another reply)."""
        self.done = True
        self.record.truncated = self.record.truncated or truncated
        self.record.reward = trajectory_reward(self.record.turn_correct, self.config.reward_mode, self.config.gamma)
        return Step(done=True, feedback=None, record=self.record)

    # ------------------------------------------------------------------------------------------------------------
    async def _verify(self, reply: str) -> TurnRecord:
        """The reply's verdict in a new `TurnRecord`, with its time-outs and queue wait."""
        account = VerifyAccount()
        timed_out = queue_timed_out = False
        try:
            verdict = await run_bounded(self.task.verify, reply, self.ground_truth, self.extra_info,
                                        exec_timeout=self.config.verify_timeout_s,
                                        queue_timeout=self.config.verify_queue_timeout_s, account=account)
        except ExecutionTimeout as exc:
            verdict, timed_out = VerifyResult(score=0.0, reason=f"verifier timeout: {exc}"), True
        except QueueTimeout as exc:
            verdict, queue_timed_out = VerifyResult(score=0.0, reason=f"verifier queue timeout: {exc}"), True
        except Exception as exc:  # noqa: BLE001 - the contract says verify never raises; be safe anyway
            logger.warning("rl2f: task %r verify raised %s: %s (scored 0)", self.task.name, type(exc).__name__, exc)
            verdict = VerifyResult(score=0.0, reason=f"verifier error: {type(exc).__name__}")
        timed_out = timed_out or account.job_timeouts > 0 or (verdict.details or {}).get("status") == "timeout"
        queue_timed_out = queue_timed_out or account.queue_timeouts > 0
        if (timed_out or queue_timed_out) and not verdict.correct:
            logger.warning("rl2f: task %r: %s at turn %d (scored 0, counted as a %s)", self.task.name,
                           verdict.reason, len(self.record.turns) + 1,
                           "verify timeout" if timed_out else "verifier queue timeout")
        return TurnRecord(reply=reply, verdict=verdict, verify_timed_out=timed_out,
                          verify_queue_timed_out=queue_timed_out, verify_queue_s=account.queued_s())

    async def _bounded_teacher(self, coro, timeout: float):
        """Await the teacher's `coro`, cancelling it (`asyncio.TimeoutError`) once it has spent more than `timeout`
        seconds outside generation on the policy's own server (see the module docstring)."""
        task = asyncio.ensure_future(coro)
        start, policy0 = time.monotonic(), self._policy_clock.seconds()
        try:
            while True:
                own = time.monotonic() - start - (self._policy_clock.seconds() - policy0)
                if own >= timeout:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                    raise asyncio.TimeoutError(f"teacher timed out after {timeout:g}s (time generating on the "
                                               f"policy's server not counted)")
                done, _ = await asyncio.wait({task}, timeout=max(timeout - own, 0.01))
                if done:
                    return task.result()
        except asyncio.CancelledError:
            task.cancel()
            raise

    def safe_feedback(self) -> str:
        return render_prompt("safe_feedback", self.config.teacher.prompt_version)

    async def _write_feedback(self, turn: TurnRecord) -> None:
        """The teacher's feedback on `turn` through the leak guard, into ``turn.feedback`` (None = stop)."""
        ctx = TeacherContext(task=self.task, problem=self.problem, ground_truth=self.ground_truth,
                             extra_info=self.extra_info, messages=list(self.messages), verify_result=turn.verdict,
                             turn=len(self.record.turns))
        timeout, policy = self.config.teacher_timeout_s, self.config.on_teacher_error
        for attempt in range(self.config.leak_guard.max_regenerations + 1):
            ctx.attempt = attempt
            try:
                text = await self._bounded_teacher(self.teacher.feedback(ctx), timeout)
            except (TeacherError, asyncio.TimeoutError) as exc:
                turn.teacher_timed_out = isinstance(exc, asyncio.TimeoutError)
                turn.teacher_error = str(exc) or f"teacher timed out after {timeout:g}s"
                if policy == "raise":
                    raise TeacherError(f"rl2f: teacher {self.teacher.name!r} failed at turn {ctx.turn}: "
                                       f"{turn.teacher_error}") from exc
                logger.warning("rl2f: teacher %r failed at turn %d (%s); %s", self.teacher.name, ctx.turn,
                               turn.teacher_error, "using the safe generic feedback" if policy == "fallback"
                               else "ending the episode")
                turn.feedback = self.safe_feedback() if policy == "fallback" else None
                return
            if self.guard is None:
                turn.feedback = text
                return
            report = await self.guard.acheck(text)
            turn.verify_queue_s += report.queue_s
            if report.timed_out:
                turn.leak_guard_timeouts += 1
                continue  # unverifiable: withheld like a leak, counted as a leak-guard timeout (logged by the guard)
            if not report.leaked:
                turn.feedback = text
                return
            turn.leaks += 1
            logger.info("rl2f leak guard: feedback at turn %d attempt %d leaked (%s)", ctx.turn, attempt,
                        ", ".join(report.reasons))
        turn.feedback, turn.fell_back = self.safe_feedback(), True


class _PolicyClock:
    """Seconds a teacher has spent in generation calls on the policy's own server (calls in progress included)."""

    def __init__(self):
        self._done, self._active, self._since = 0.0, 0, 0.0

    def enter(self) -> None:
        if self._active == 0:
            self._since = time.monotonic()
        self._active += 1

    def exit(self) -> None:
        self._active -= 1
        if self._active == 0:
            self._done += time.monotonic() - self._since

    def seconds(self) -> float:
        return self._done + (time.monotonic() - self._since if self._active else 0.0)


def _track_policy_time(teacher: Teacher, clock: _PolicyClock) -> None:
    """Route the policy completions of `teacher` (and of teachers it holds, e.g. the execution teacher's
    rewriter) through `clock`."""
    for t in (teacher, *(v for v in vars(teacher).values() if isinstance(v, Teacher))):
        inner = t.policy_complete
        if inner is None:
            continue

        async def timed(messages, max_tokens, temperature, _inner=inner):
            clock.enter()
            try:
                return await _inner(messages, max_tokens, temperature)
            finally:
                clock.exit()

        t.policy_complete = timed


def problem_text(extra_info: Mapping[str, Any], messages: list[dict[str, Any]]) -> str:
    """The problem statement: ``extra_info.problem`` / ``question``, else the first user message."""
    if extra_info.get("problem") or extra_info.get("question"):
        return str(extra_info.get("problem") or extra_info.get("question"))
    return next((content_text(m.get("content")) for m in messages if m.get("role") == "user"), "")
