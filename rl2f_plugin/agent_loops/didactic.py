"""The didactic interaction rollout (RL²F) as verl agent loops: ``rl2f_didactic`` and ``rl2f_autodidact``.

One trajectory, with K = ``rl2f.max_turns``:

1. the student (the policy, through verl's ``server_manager.generate``) answers;
2. the task's verifier checks the final answer (off the event loop, time-bounded); correct -> stop;
3. otherwise, if student turns and response budget remain, a teacher writes feedback, the leak guard checks
   it (regenerating up to ``leak_guard.max_regenerations`` times, then falling back to the safe generic
   feedback), it is appended as a user turn and the student answers again.

Tokens are built with verl's Continuous Token helpers exactly as ``ToolAgentLoop`` does: student tokens get
``response_mask`` 1; feedback and chat-template tokens 0; ``feedback_mask`` is 1 on the feedback's content
tokens. The response never exceeds ``rollout.response_length``: each student turn may generate at most the
remaining budget, and feedback that would leave no room for another student token ends the trajectory
(truncated) without being appended.

Configuration: the ``rl2f:`` section of the trainer config (`rl2f_plugin.schema.rl2f_section`), overridden by
keys given to the loop's constructor (the ``agent_loop_config_path`` YAML entry's extra keys).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any
from uuid import uuid4

from omegaconf import DictConfig, ListConfig, OmegaConf
from verl.experimental.agent_loop.agent_loop import AgentLoopBase, register
from verl.utils.profiler import simple_timer
from verl.utils.tokenizer.continuous_token import ContinuousTokenBuilder, QwenContinuousTokenBuilder
from verl.workers.rollout.replica import TokenOutput

from .. import schema
from ..leak_guard import LeakGuard
from ..prompts import render_prompt
from ..tasks import VerifyResult, get_task
from ..tasks.base import Task
from ..teachers import Teacher, TeacherContext, TeacherError, build_teacher, content_text, render_conversation
from .output import RL2FAgentLoopOutput
from .prompt_tokens import AuxPromptTokenizer

logger = logging.getLogger(__name__)

class _SameWarningOnce(logging.Filter):
    """verl re-resolves the Continuous Token builder for every trajectory (a fresh loop instance each) and warns
    each time for model types it has no builder for (SmolLM2's "llama"): keep the first of each such warning."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING or not record.getMessage().startswith("No model-specific Continuous Token builder"):
            return True
        key = record.getMessage()
        if key in self._seen:
            return False
        self._seen.add(key)
        return True


logging.getLogger("verl.utils.tokenizer.continuous_token_wiring").addFilter(_SameWarningOnce())

#: Loop-level keys of the ``rl2f:`` section that are not in `schema.DEFAULTS` (defaults live here).
LOOP_DEFAULTS: dict[str, Any] = {
    "verify_timeout_s": 30.0,       # per verify() call; a timeout counts as a wrong answer ("verifier timeout")
    "teacher_timeout_s": 120.0,     # per feedback request (all retries of one attempt included)
    "on_teacher_error": "fallback",  # fallback (safe generic feedback, counted) | stop (end the trajectory) | raise
}

#: Same as verl's ToolAgentLoop: keys of TokenOutput.extra_fields that add up over calls.
_SUMMED_EXTRA_KEYS = ("spec_num_draft_tokens", "spec_num_accepted_tokens", "spec_num_verify_steps")
REWARD_MODES = ("final", "discounted", "any_turn")
EF_FINAL_RESPONSE = "rl2f_final_response"
EF_TEACHER_ERRORS = "rl2f_teacher_errors"
#: Request-id prefix of the policy's auxiliary calls (self teacher, autodidact critic, leak judge); student turns
#: use one bare uuid per trajectory (sticky session), so servers and logs can tell the two apart.
TEACHER_REQUEST_PREFIX = "rl2f-aux-"


def _plain(value: Any) -> Any:
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def resolve_config(trainer_config: Any, overrides: dict[str, Any]) -> dict[str, Any]:
    """``rl2f:`` section (over `schema.DEFAULTS` and `LOOP_DEFAULTS`) with the loop's constructor kwargs on top;
    validated with errors that name the key."""
    cfg = schema._deep_merge(LOOP_DEFAULTS, schema.rl2f_section(trainer_config))
    cfg = schema._deep_merge(cfg, {k: _plain(v) for k, v in overrides.items()})
    if int(cfg["max_turns"]) < 1:
        raise ValueError(f"rl2f.max_turns must be >= 1, got {cfg['max_turns']!r}")
    if cfg["reward_mode"] not in REWARD_MODES:
        raise ValueError(f"rl2f.reward_mode must be one of {REWARD_MODES}, got {cfg['reward_mode']!r}")
    if not 0.0 <= float(cfg["gamma"]) <= 1.0:
        raise ValueError(f"rl2f.gamma must be in [0, 1], got {cfg['gamma']!r}")
    if cfg["on_teacher_error"] not in ("fallback", "stop", "raise"):
        raise ValueError(f"rl2f.on_teacher_error must be fallback|stop|raise, got {cfg['on_teacher_error']!r}")
    return cfg


def trajectory_reward(turn_correct: list[int], mode: str, gamma: float) -> float:
    """final: 1 if the last answer is correct; discounted: gamma^(t-1) for the first success at turn t;
    any_turn: 1 if any answer is correct."""
    if not turn_correct:
        return 0.0
    if mode == "final":
        return float(turn_correct[-1])
    first = next((i for i, c in enumerate(turn_correct) if c), None)
    if first is None:
        return 0.0
    return float(gamma ** first) if mode == "discounted" else 1.0


class _Trajectory:
    """Mutable token state of one trajectory (runtime ids and response-aligned metadata)."""

    def __init__(self, prompt_ids: list[int]):
        self.runtime_ids: list[int] = list(prompt_ids)
        self.response_mask: list[int] = []
        self.feedback_mask: list[int] = []
        self.logprobs: list[float] = []


@register("rl2f_didactic")
class DidacticAgentLoop(AgentLoopBase):
    """Student answers, verifier checks, privileged teacher gives leak-guarded feedback; repeat (see module doc)."""

    #: Whether feedback passes through the leak guard (the autodidact critic sees no answer, so nothing to leak).
    uses_leak_guard = True

    def __init__(self, *args, tools: Any = None, **kwargs):
        base_keys = ("trainer_config", "server_manager", "tokenizer", "processor", "dataset_cls", "data_config", "hf_model_type")
        base_kwargs = {k: kwargs.pop(k) for k in base_keys if k in kwargs}
        kwargs.pop("name", None)  # an agent_loop_config_path YAML entry passes its own name through hydra
        super().__init__(*args, **base_kwargs)
        if type(self.continuous_token_builder) is ContinuousTokenBuilder and _renders_chatml(self.tokenizer):
            # verl picks builders by model_type; ChatML models under other types (SmolLM2 is "llama") get the
            # default builder, which drops the "\n" the template puts after a generated <|im_end|>. verl's
            # ChatML boundary handling is the Qwen builder's: use it when the template really is ChatML.
            self.continuous_token_builder = QwenContinuousTokenBuilder(
                self.tokenizer, chat_template_kwargs=self.apply_chat_template_kwargs)
        self.rl2f = resolve_config(self.config, kwargs)
        self.response_length = int(self.rollout_config.response_length)
        self.max_turns = int(self.rl2f["max_turns"])
        self._request_id = uuid4().hex
        self._aux_calls = 0
        self._aux_tokens: AuxPromptTokenizer | None = None

    # ------------------------------------------------------------------------------------------------------
    async def run(self, sampling_params: dict[str, Any], **kwargs) -> RL2FAgentLoopOutput:
        extra_info = dict(_plain(kwargs.get("extra_info")) or {})
        task_name = extra_info.get("task") or kwargs.get("data_source")
        if not task_name:
            raise ValueError(f"rl2f: sample index={kwargs.get('index')!r} has neither extra_info.task nor data_source; "
                             "cannot pick a task/verifier")
        task = get_task(str(task_name))
        reward_model = _plain(kwargs.get("reward_model")) or {}
        if "ground_truth" not in reward_model:
            raise ValueError(f"rl2f: sample index={kwargs.get('index')!r} (task {task_name!r}) has no reward_model.ground_truth")
        ground_truth = reward_model["ground_truth"]
        if "raw_prompt" not in kwargs:
            raise ValueError(f"rl2f: sample index={kwargs.get('index')!r} has no raw_prompt (set data.return_raw_chat=True)")
        messages = [dict(m) for m in _plain(list(kwargs["raw_prompt"]))]
        problem = str(extra_info.get("problem") or extra_info.get("question") or _first_user_text(messages))

        metrics: dict[str, Any] = {}
        request_id = self._request_id = uuid4().hex
        self._aux_calls = 0
        self._aux_tokens = AuxPromptTokenizer(self.continuous_token_builder)  # piece cache for this trajectory
        extra_fields: dict[str, Any] = {}
        teacher = self._make_teacher()
        guard = self._make_guard(task, ground_truth, extra_info, teacher) if self.uses_leak_guard else None

        traj = _Trajectory(await self.ct_build_initial_tokens(messages))
        prompt_len = len(traj.runtime_ids)
        turn_correct: list[int] = []
        turn_scores: list[float] = []
        solved_at = 0
        leaks = leaked_turns = teacher_errors = feedback_turns = 0
        teacher_latency = 0.0
        truncated = False
        last_reply = ""
        verify_results: list[VerifyResult] = []

        for turn in range(1, self.max_turns + 1):
            remaining = self.response_length - len(traj.response_mask)
            if remaining <= 0:
                truncated = True
                break
            token_ids, hit_budget = await self._student_turn(traj, request_id, sampling_params, remaining, metrics, extra_fields)
            last_reply = self.tokenizer.decode(token_ids, skip_special_tokens=True)
            messages.append({"role": "assistant", "content": last_reply})

            with simple_timer("compute_score", metrics):
                vr = await self._verify(task, last_reply, ground_truth, extra_info)
            verify_results.append(vr)
            turn_correct.append(int(vr.correct))
            turn_scores.append(float(vr.score))
            if vr.correct:
                solved_at = turn
                break
            if hit_budget or len(traj.response_mask) >= self.response_length:
                truncated = True
                break
            if turn == self.max_turns:
                break

            # --- feedback turn -------------------------------------------------------------------------------
            ctx = TeacherContext(task=task, problem=problem, ground_truth=ground_truth, extra_info=extra_info,
                                 messages=list(messages), verify_result=vr, turn=turn)
            t0 = time.perf_counter()
            with simple_timer("tool_calls", metrics):
                fb = await self._feedback(teacher, guard, ctx)
            teacher_latency += time.perf_counter() - t0
            leaks += fb["leaks"]
            leaked_turns += int(fb["fell_back_after_leaks"])
            teacher_errors += int(fb["error"] is not None)
            if fb["text"] is None:  # teacher failed and on_teacher_error == "stop"
                break
            self._close_open_turn(traj)
            if not await self._append_feedback(traj, messages, fb["text"]):
                truncated = True
                break
            feedback_turns += 1

        # --- finalise (same slicing as verl's ToolAgentLoop) ---------------------------------------------------
        n_resp = len(traj.response_mask)
        response_ids = traj.runtime_ids[len(traj.runtime_ids) - n_resp:] if n_resp else []
        prompt_ids = traj.runtime_ids[: len(traj.runtime_ids) - n_resp]
        L = self.response_length
        response_ids, response_mask, feedback_mask = response_ids[:L], traj.response_mask[:L], traj.feedback_mask[:L]
        logprobs = traj.logprobs[:L] if traj.logprobs else None
        if len(prompt_ids) != prompt_len:
            logger.debug("rl2f: continuous-token merge moved the prompt boundary (%d -> %d)", prompt_len, len(prompt_ids))

        num_student_turns = len(turn_correct)
        reward = trajectory_reward(turn_correct, self.rl2f["reward_mode"], float(self.rl2f["gamma"]))
        final_correct = float(turn_correct[-1]) if turn_correct else 0.0
        reward_extra_info: dict[str, float] = {
            "score": reward,
            "acc": final_correct,
            **{f"acc_turn{k}": float(0 < solved_at <= k) for k in range(1, self.max_turns + 1)},
            "solved_turn": float(solved_at),
            "num_student_turns": float(num_student_turns),
            "leaks": float(leaks),
            "leaked_turns": float(leaked_turns),
            "teacher_errors": float(teacher_errors),
            "truncated": float(truncated),
        }
        extra_fields.update({
            schema.EF_TURN_CORRECT: turn_correct,
            schema.EF_TURN_SCORES: turn_scores,
            schema.EF_SOLVED_AT_TURN: solved_at,
            schema.EF_NUM_STUDENT_TURNS: num_student_turns,
            schema.EF_LEAK_COUNT: leaks,
            schema.EF_LEAKED_TURNS: leaked_turns,
            schema.EF_FEEDBACK_TURNS: feedback_turns,
            schema.EF_FEEDBACK_TOKENS: int(sum(feedback_mask)),
            schema.EF_TEACHER_LATENCY: float(teacher_latency),
            schema.EF_TRUNCATED: int(truncated),
            schema.EF_TASK: str(task_name),
            schema.EF_MAX_TURNS: self.max_turns,
            EF_TEACHER_ERRORS: teacher_errors,
            EF_FINAL_RESPONSE: last_reply,
            schema.REWARD_EXTRA_INFO: reward_extra_info,
        })
        return RL2FAgentLoopOutput(
            prompt_ids=prompt_ids,
            response_ids=response_ids,
            response_mask=response_mask,
            feedback_mask=feedback_mask,
            response_logprobs=logprobs,
            reward_score=reward,
            num_turns=num_student_turns + feedback_turns + 1,
            metrics=metrics,
            extra_fields=extra_fields,
        )

    # ------------------------------------------------------------------------------------------------------
    async def _student_turn(self, traj: _Trajectory, request_id: str, sampling_params: dict[str, Any], remaining: int,
                            metrics: dict, extra_fields: dict) -> tuple[list[int], bool]:
        """Generate one student reply of at most `remaining` tokens and merge it (mask 1)."""
        params = dict(sampling_params)
        per_turn = self.rl2f.get("max_student_tokens")  # rl2f.max_student_tokens: cap of one student reply
        params["max_tokens"] = min(int(params.get("max_tokens") or remaining), remaining, int(per_turn or remaining))
        with simple_timer("generate_sequences", metrics):
            out: TokenOutput = await self.server_manager.generate(
                request_id=request_id, prompt_ids=list(traj.runtime_ids), sampling_params=params)
        _carry_extra_fields(extra_fields, out)
        n_pre = out.num_preempted if out.num_preempted is not None else None
        if "num_preempted" not in metrics:
            metrics["num_preempted"] = n_pre if n_pre is not None else -1
        elif n_pre:
            metrics["num_preempted"] += n_pre

        token_ids = list(out.token_ids)
        out_logprobs = list(out.log_probs) if out.log_probs else None
        hit_budget = len(token_ids) >= remaining
        if len(token_ids) > remaining:  # a server that ignored max_tokens: never overflow the budget
            token_ids = token_ids[:remaining]
            out_logprobs = out_logprobs[:remaining] if out_logprobs else None
        # verl's ct_merge_assistant_token without its executor hop: for an assistant turn the builder only
        # concatenates, which costs far less than a thread round trip (measured in benchmarks/bench_agent_loop.py).
        builder = self.continuous_token_builder
        merge = builder.merge_assistant_tokens(traj.runtime_ids, token_ids)
        mask, logprobs = builder.align_response_metadata(
            merge, traj.response_mask, traj.logprobs if (traj.logprobs or out_logprobs) else None,
            assistant_logprobs=out_logprobs)
        self._apply_merge(traj, merge, mask, logprobs)
        return token_ids, hit_budget

    def _close_open_turn(self, traj: _Trajectory) -> None:
        """If the student's reply stopped without the template's end-of-turn token (a server-side token cap or
        stop string), append that token (mask 0: the model did not generate it) so the next turn is framed as
        the chat template frames it."""
        close = _assistant_close_ids(self.continuous_token_builder)
        if not close or traj.runtime_ids[-len(close):] == close:
            return
        traj.runtime_ids = traj.runtime_ids + close
        traj.response_mask = traj.response_mask + [0] * len(close)
        traj.feedback_mask.extend([0] * len(close))
        if traj.logprobs:
            traj.logprobs = traj.logprobs + [0.0] * len(close)

    async def _append_feedback(self, traj: _Trajectory, messages: list[dict], text: str) -> bool:
        """Append `text` as a user turn (mask 0, feedback_mask 1 on its content). False if it does not leave
        room for at least one more student token (then nothing is appended)."""
        previous = list(messages)
        updated = previous + [{"role": "user", "content": text}]
        builder = self.continuous_token_builder
        appended_ids = self._aux_tokens.user_turn_ids(text, _user_turn_frame(builder)) if self._aux_tokens else None
        if appended_ids is not None:
            # What ct_merge_context_msg computes (same builder hook for the junction, same metadata alignment),
            # with the user turn tokenised once instead of two chat-template renders in a worker thread.
            merge = builder._merge_context_token_ids(traj.runtime_ids, appended_ids, previous_messages=previous,
                                                     appended_messages=updated[len(previous):])
            mask, logprobs = builder.align_response_metadata(merge, traj.response_mask, traj.logprobs if traj.logprobs else None)
        else:
            merge, mask, logprobs = await self.ct_merge_context_msg(
                previous, updated, traj.runtime_ids, traj.response_mask, traj.logprobs if traj.logprobs else None)
        if len(mask) >= self.response_length:
            return False
        appended = merge.token_ids[len(merge.token_ids) - merge.appended_token_count:] if merge.appended_token_count else []
        start, end = self._content_span(appended, text)
        self._apply_merge(traj, merge, mask, logprobs)
        n_app = len(appended)
        base = len(traj.feedback_mask) - n_app
        for i in range(start, end):
            traj.feedback_mask[base + i] = 1
        messages.append(updated[-1])
        return True

    @staticmethod
    def _apply_merge(traj: _Trajectory, merge, mask: list[int], logprobs: list[float] | None) -> None:
        if merge.removed_prefix_token_count:
            del traj.feedback_mask[len(traj.feedback_mask) - merge.removed_prefix_token_count:]
        traj.feedback_mask.extend([0] * (len(mask) - len(traj.feedback_mask)))
        traj.runtime_ids = merge.token_ids
        traj.response_mask = mask
        if logprobs is not None:
            traj.logprobs = logprobs

    def _content_span(self, appended: list[int], content: str) -> tuple[int, int]:
        """[start, end) of the tokens of `content` inside the rendered user turn `appended`."""
        frame = _user_turn_frame(self.continuous_token_builder)
        if frame is not None:  # fast path: strip the template's constant header/trailer around the content
            head, tail = frame
            n = len(appended)
            if n >= len(head) + len(tail) and appended[:len(head)] == head and appended[n - len(tail):] == tail:
                return len(head), n - len(tail)
        cids = self.tokenizer.encode(content, add_special_tokens=False)
        n = len(cids)
        if n:
            for s in range(len(appended) - n, -1, -1):
                if appended[s:s + n] == cids:
                    return s, s + n
        # Tokenisation merged across the template boundary: locate by decoded characters instead.
        full = self.tokenizer.decode(appended, skip_special_tokens=False)
        c0 = full.rfind(content)
        if c0 < 0:
            logger.warning("rl2f: could not locate feedback text in its rendered tokens; marking the whole user turn")
            return 0, len(appended)
        c1 = c0 + len(content)
        lengths = [len(self.tokenizer.decode(appended[:k], skip_special_tokens=False)) for k in range(len(appended) + 1)]
        start = next(k for k in range(len(appended)) if lengths[k + 1] > c0)
        end = next(k for k in range(len(appended) + 1) if lengths[k] >= c1)
        return start, end

    async def _verify(self, task: Task, reply: str, ground_truth: Any, extra_info: dict) -> VerifyResult:
        timeout = float(self.rl2f["verify_timeout_s"])
        try:
            return await asyncio.wait_for(asyncio.to_thread(task.verify, reply, ground_truth, extra_info), timeout=timeout)
        except asyncio.TimeoutError:
            return VerifyResult(0.0, None, f"verifier timeout after {timeout:g}s")
        except Exception as exc:  # noqa: BLE001 - the contract says verify never raises; be safe anyway
            logger.warning("rl2f: task %r verify raised %s: %s (scored 0)", task.name, type(exc).__name__, exc)
            return VerifyResult(0.0, None, f"verifier error: {type(exc).__name__}")

    # --- teacher + leak guard -------------------------------------------------------------------------------
    def _make_teacher(self) -> Teacher:
        return build_teacher(self.rl2f["teacher"], policy_complete=self.policy_complete)

    def _make_guard(self, task: Task, ground_truth: Any, extra_info: dict, teacher: Teacher) -> LeakGuard | None:
        lg = self.rl2f["leak_guard"]
        if not lg.get("enable", True):
            return None
        return LeakGuard(task, ground_truth, extra_info, check_spans=bool(lg.get("check_spans", True)),
                         max_spans=int(lg.get("max_spans", 64)), timeout_s=float(lg.get("timeout_s", 10.0)),
                         llm_judge=bool(lg.get("llm_judge", False)), judge=teacher.complete,
                         prompt_version=str(self.rl2f["teacher"].get("prompt_version", "v1")))

    def safe_feedback(self) -> str:
        return render_prompt("safe_feedback", str(self.rl2f["teacher"].get("prompt_version", "v1")))

    async def _feedback(self, teacher: Teacher, guard: LeakGuard | None, ctx: TeacherContext) -> dict[str, Any]:
        """Teacher feedback through the leak guard. Returns text (None = stop), leaks caught, whether it fell
        back to the safe feedback after leaks, and the teacher error if any."""
        max_regen = int(self.rl2f["leak_guard"].get("max_regenerations", 2))
        timeout = float(self.rl2f["teacher_timeout_s"])
        leaks = 0
        for attempt in range(max_regen + 1):
            ctx.attempt = attempt
            try:
                text = await asyncio.wait_for(teacher.feedback(ctx), timeout=timeout)
            except (TeacherError, asyncio.TimeoutError) as exc:
                err = str(exc) or f"teacher timed out after {timeout:g}s"
                policy = self.rl2f["on_teacher_error"]
                if policy == "raise":
                    raise TeacherError(f"rl2f: teacher {teacher.name!r} failed at turn {ctx.turn}: {err}") from exc
                logger.warning("rl2f: teacher %r failed at turn %d (%s); %s", teacher.name, ctx.turn, err,
                               "using the safe generic feedback" if policy == "fallback" else "ending the trajectory")
                return {"text": self.safe_feedback() if policy == "fallback" else None, "leaks": leaks,
                        "fell_back_after_leaks": False, "error": err}
            if guard is None:
                return {"text": text, "leaks": 0, "fell_back_after_leaks": False, "error": None}
            report = await guard.acheck(text)
            if not report.leaked:
                return {"text": text, "leaks": leaks, "fell_back_after_leaks": False, "error": None}
            leaks += 1
            logger.info("rl2f leak guard: feedback at turn %d attempt %d leaked (%s)", ctx.turn, attempt, ", ".join(report.reasons))
        return {"text": self.safe_feedback(), "leaks": leaks, "fell_back_after_leaks": True, "error": None}

    async def policy_complete(self, messages: list[dict[str, str]], max_tokens: int, temperature: float) -> str:
        """A plain completion by the policy through the same generation server (used by the `self` teacher,
        the autodidact critic and the leak judge)."""
        # Incremental: only text not seen in this trajectory's earlier aux prompts is tokenised, on the event loop
        # (cheaper than a thread round trip); exactly the builder's ids (rl2f_plugin.agent_loops.prompt_tokens).
        aux = self._aux_tokens
        prompt_ids = aux.prompt_ids(messages) if aux is not None else None
        if prompt_ids is None:
            prompt_ids = await self.loop.run_in_executor(None, lambda: self.continuous_token_builder.build_initial_tokens(messages))
        params = {"temperature": float(temperature), "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0,
                  "logprobs": False, "max_tokens": int(max_tokens)}
        self._aux_calls += 1
        try:
            out = await self.server_manager.generate(request_id=f"{TEACHER_REQUEST_PREFIX}{self._request_id}-{self._aux_calls}",
                                                      prompt_ids=prompt_ids, sampling_params=params)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a failed auxiliary call is a teacher failure: rl2f.on_teacher_error decides
            raise TeacherError(f"policy server failed on an auxiliary call ({len(prompt_ids)} prompt tokens): "
                               f"{type(exc).__name__}: {exc}") from exc
        return self.tokenizer.decode(out.token_ids, skip_special_tokens=True)


@register("rl2f_autodidact")
class AutodidactAgentLoop(DidacticAgentLoop):
    """Self-correction with no teacher and no privileged information: after a wrong answer the same model
    critiques its previous attempt (``autodidact_critic`` prompt) and the critique, wrapped by
    ``autodidact_revise``, becomes the next user turn (marked in ``feedback_mask``). The verifier still decides
    when to stop and scores each turn, so cumulative accuracy by turn is comparable with ``rl2f_didactic``."""

    uses_leak_guard = False

    def _make_teacher(self) -> Teacher:
        return _SelfCritic(self.rl2f["teacher"], policy_complete=self.policy_complete)


class _SelfCritic(Teacher):
    name = "autodidact_critic"
    uses_llm = True

    async def feedback(self, ctx: TeacherContext) -> str:
        from ..teachers import clean_feedback

        prompt = render_prompt("autodidact_critic", self.prompt_version, problem=ctx.problem,
                               conversation=render_conversation(ctx.messages))
        critique = clean_feedback(await self.complete([{"role": "user", "content": prompt}], self.max_tokens, self.temperature),
                                  who=self.name)
        return render_prompt("autodidact_revise", self.prompt_version, critique=critique)


def _carry_extra_fields(extra_fields: dict, out: TokenOutput) -> None:
    """Keep each generate call's TokenOutput.extra_fields as verl's ToolAgentLoop does: first call's fields,
    then the latest max_global_steps and summed speculative-decoding counters."""
    fields = out.extra_fields or {}
    if not extra_fields:
        extra_fields.update(fields)
        return
    if fields.get("max_global_steps"):
        extra_fields["max_global_steps"] = fields["max_global_steps"]
    for key in _SUMMED_EXTRA_KEYS:
        if key in fields and key in extra_fields:
            extra_fields[key] = int(extra_fields[key]) + int(fields[key])


_FRAMES: dict[tuple, tuple[list[int], list[int]] | None] = {}


def _user_turn_frame(builder: ContinuousTokenBuilder) -> tuple[list[int], list[int]] | None:
    """Token ids the builder puts before and after a user message's content when it appends a user turn
    (e.g. ``<|im_start|>user\n`` and ``<|im_end|>\n<|im_start|>assistant\n``), found once per builder type,
    tokenizer and template by diffing two renders; None when the template does not frame content that way."""
    key = (type(builder), id(builder.tokenizer), getattr(builder.tokenizer, "chat_template", None),
           repr(sorted(builder.chat_template_kwargs.items())))
    if key not in _FRAMES:
        frame = None
        try:
            a = builder.tokenize_context_incremental_messages([], [{"role": "user", "content": "Zq"}])
            b = builder.tokenize_context_incremental_messages([], [{"role": "user", "content": "Yw kx. 7"}])
            h = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            t = next((i for i, (x, y) in enumerate(zip(reversed(a), reversed(b))) if x != y), min(len(a), len(b)))
            tok = builder.tokenizer
            if (a[h:len(a) - t] == tok.encode("Zq", add_special_tokens=False)
                    and b[h:len(b) - t] == tok.encode("Yw kx. 7", add_special_tokens=False)):
                frame = (a[:h], a[len(a) - t:])
        except Exception:  # noqa: BLE001 - fall back to locating the content by its tokens
            frame = None
        _FRAMES[key] = frame
    return _FRAMES[key]


_CLOSERS: dict[tuple, list[int]] = {}


def _assistant_close_ids(builder: ContinuousTokenBuilder) -> list[int]:
    """The special token(s) the chat template puts right after an assistant message's content (ChatML:
    ``<|im_end|>``), found once per builder type/tokenizer/template by diffing two renders; [] if none."""
    key = (type(builder), id(builder.tokenizer), getattr(builder.tokenizer, "chat_template", None))
    if key not in _CLOSERS:
        close: list[int] = []
        try:
            tok = builder.tokenizer
            prefix = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
            a = builder.render_delta_token_id(prefix, [{"role": "assistant", "content": "Zq"}])
            b = builder.render_delta_token_id(prefix, [{"role": "assistant", "content": "Yw kx. 7"}])
            t = next((i for i, (x, y) in enumerate(zip(reversed(a), reversed(b))) if x != y), min(len(a), len(b)))
            tail = a[len(a) - t:]
            special = set(tok.all_special_ids) | set(getattr(tok, "added_tokens_decoder", {}) or {})
            if tail and tail[0] in special:
                close = [tail[0]]
        except Exception:  # noqa: BLE001 - leave turns as generated
            close = []
        _CLOSERS[key] = close
    return _CLOSERS[key]


@functools.lru_cache(maxsize=16)
def _renders_chatml(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template is ChatML with ``<|im_end|>\n`` between turns."""
    try:
        if tokenizer.convert_tokens_to_ids("<|im_end|>") in (None, tokenizer.unk_token_id):
            return False
        if len(tokenizer.encode("\n", add_special_tokens=False)) != 1:
            return False
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}],
            tokenize=False)
        return "b<|im_end|>\n<|im_start|>user\nc<|im_end|>" in text
    except Exception:  # noqa: BLE001 - no template or an exotic one: keep verl's choice
        return False


def _first_user_text(messages: list[dict]) -> str:
    for m in messages:
        if m.get("role") == "user":
            return content_text(m.get("content"))
    return ""
