"""The didactic episode (`rl2f_plugin.episode`) as verl agent loops: ``rl2f_didactic`` and ``rl2f_autodidact``.

The episode decides who speaks, when to stop and what the reward is; this adapter only turns it into tokens. The
student is the policy, through verl's ``server_manager.generate``; its tokens are appended as generated (verl's
Continuous Token builder, as ``ToolAgentLoop`` does) and each feedback turn as the chat template renders a user turn
after an assistant turn (`rl2f_plugin.agent_loops.chat_template.TurnFormat`: exact, also for templates that require
strict user/assistant alternation). Student tokens get ``response_mask`` 1; feedback and chat-template tokens 0;
``feedback_mask`` is 1 on the feedback's content tokens. The response never exceeds
``rollout.response_length``: each student turn may generate at most the remaining budget (and at most
``rl2f.max_student_tokens``), and feedback that would leave no room for another student token ends the episode
(truncated) without being appended.

Configuration: the ``rl2f:`` section of the trainer config (`rl2f_plugin.config.RL2FConfig`), overridden by keys
given to the loop's constructor (the ``agent_loop_config_path`` YAML entry's extra keys).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any
from uuid import uuid4

from verl.experimental.agent_loop.agent_loop import AgentLoopBase, register
from verl.utils.profiler import simple_timer
from verl.utils.tokenizer.continuous_token import MergeResult
from verl.workers.rollout.replica import TokenOutput

from ..config import RL2FConfig
from ..episode import DidacticEpisode, EpisodeRecord
from ..teachers import Teacher, TeacherError, build_teacher
from .chat_template import THINK_CLOSE, SameWarningOnce, aux_prompt_format, content_span, turn_format, unfinished_thought
from .output import RL2FAgentLoopOutput
from .prompt_tokens import AuxPromptTokenizer
from .server_calls import generate_abortable

logger = logging.getLogger(__name__)
logging.getLogger("verl.utils.tokenizer.continuous_token_wiring").addFilter(SameWarningOnce())

#: Same as verl's ToolAgentLoop: keys of TokenOutput.extra_fields that add up over calls.
_SUMMED_EXTRA_KEYS = ("spec_num_draft_tokens", "spec_num_accepted_tokens", "spec_num_verify_steps")
#: Request-id prefix of the policy's auxiliary calls (self teacher, autodidact critic, leak judge): they use
#: "<prefix><trajectory uuid>", student turns the bare uuid (two sticky sessions per trajectory), so servers and logs
#: can tell the two apart.
TEACHER_REQUEST_PREFIX = "rl2f-aux-"


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

    #: The teacher: None = ``rl2f.teacher.name``; the autodidact loop forces its critic.
    teacher_name: str | None = None
    #: Whether feedback passes through the leak guard (the autodidact critic sees no answer, so nothing to leak).
    uses_leak_guard = True

    def __init__(self, *args, tools: Any = None, **kwargs):
        base_keys = ("trainer_config", "server_manager", "tokenizer", "processor", "dataset_cls", "data_config", "hf_model_type")
        base_kwargs = {k: kwargs.pop(k) for k in base_keys if k in kwargs}
        kwargs.pop("name", None)  # an agent_loop_config_path YAML entry passes its own name through hydra
        super().__init__(*args, **base_kwargs)
        self.rl2f = RL2FConfig.from_trainer_config(self.config, kwargs)
        self.response_length = int(self.rollout_config.response_length)
        self.max_turns = self.rl2f.max_turns
        self._request_id = uuid4().hex
        self._aux_tokens: AuxPromptTokenizer | None = None

    def make_teacher(self) -> Teacher:
        config = self.rl2f.teacher
        if self.teacher_name is not None:
            config = dataclasses.replace(config, name=self.teacher_name)
        return build_teacher(config, policy_complete=self.policy_complete)

    async def run(self, sampling_params: dict[str, Any], **kwargs) -> RL2FAgentLoopOutput:
        episode = DidacticEpisode.from_sample(kwargs, self.rl2f, teacher=self.make_teacher(),
                                              leak_guard=self.uses_leak_guard)
        self._request_id = uuid4().hex  # one sticky session per trajectory
        aux_builder = aux_prompt_format(self.continuous_token_builder, thinking=self.rl2f.teacher.thinking).builder
        self._aux_tokens = AuxPromptTokenizer(aux_builder)  # piece cache for this trajectory
        metrics: dict[str, Any] = {}
        extra_fields: dict[str, Any] = {}
        traj = _Trajectory(await self.ct_build_initial_tokens(episode.messages))
        while True:
            remaining = self.response_length - len(traj.response_mask)
            if remaining <= 0:
                step = episode.end(truncated=True)
                break
            token_ids, hit_budget = await self._student_turn(traj, sampling_params, remaining, metrics, extra_fields)
            reply = self.tokenizer.decode(token_ids, skip_special_tokens=True)
            step = await episode.step(reply, can_continue=not hit_budget and len(traj.response_mask) < self.response_length)
            turn = step.record.turns[-1]
            metrics["compute_score"] = metrics.get("compute_score", 0.0) + turn.verify_s
            metrics["tool_calls"] = metrics.get("tool_calls", 0.0) + turn.teacher_s
            if step.done:
                break
            self._close_open_turn(traj)
            if not await self._append_feedback(traj, episode.messages, step.feedback):
                step = episode.end(truncated=True)
                break
        return self._output(traj, step.record, metrics, extra_fields)

    def _output(self, traj: _Trajectory, record: EpisodeRecord, metrics: dict, extra_fields: dict) -> RL2FAgentLoopOutput:
        """The trajectory as verl's output (same slicing as verl's ToolAgentLoop)."""
        n_resp, L = len(traj.response_mask), self.response_length
        response_ids = traj.runtime_ids[len(traj.runtime_ids) - n_resp:] if n_resp else []
        feedback_mask = traj.feedback_mask[:L]
        extra_fields.update(record.extra_fields(feedback_tokens=sum(feedback_mask)))
        return RL2FAgentLoopOutput(
            prompt_ids=traj.runtime_ids[: len(traj.runtime_ids) - n_resp],
            response_ids=response_ids[:L],
            response_mask=traj.response_mask[:L],
            feedback_mask=feedback_mask,
            response_logprobs=traj.logprobs[:L] if traj.logprobs else None,
            reward_score=record.reward,
            num_turns=len(record.turns) + record.feedback_turns + 1,
            metrics=metrics,
            extra_fields=extra_fields,
        )

    # --- tokens ------------------------------------------------------------------------------------------------
    async def _student_turn(self, traj: _Trajectory, sampling_params: dict[str, Any], remaining: int,
                            metrics: dict, extra_fields: dict) -> tuple[list[int], bool]:
        """Generate one student reply of at most `remaining` tokens and merge it (mask 1)."""
        params = dict(sampling_params)
        per_turn = self.rl2f.max_student_tokens  # cap of one student reply
        params["max_tokens"] = min(int(params.get("max_tokens") or remaining), remaining, int(per_turn or remaining))
        with simple_timer("generate_sequences", metrics):
            out: TokenOutput = await self.server_manager.generate(
                request_id=self._request_id, prompt_ids=list(traj.runtime_ids), sampling_params=params)
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
        fmt = turn_format(self.continuous_token_builder)
        close = list(fmt.close) if fmt is not None else []
        if not close or traj.runtime_ids[-len(close):] == close:
            return
        traj.runtime_ids = traj.runtime_ids + close
        traj.response_mask = traj.response_mask + [0] * len(close)
        traj.feedback_mask.extend([0] * len(close))
        if traj.logprobs:
            traj.logprobs = traj.logprobs + [0.0] * len(close)

    async def _append_feedback(self, traj: _Trajectory, messages: list[dict], text: str) -> bool:
        """Append `text` as a user turn after the conversation `messages` (mask 0, feedback_mask 1 on its
        content). False if it does not leave room for at least one more student token (then nothing is appended)."""
        builder = self.continuous_token_builder
        fmt = turn_format(builder)
        if fmt is not None:
            # The user turn as the chat template renders it after an assistant turn (rl2f_plugin.agent_loops.
            # chat_template: also for templates that require strict user/assistant alternation).
            appended, (start, end) = fmt.user_turn(text)
            merge = MergeResult(token_ids=traj.runtime_ids + appended, appended_token_count=len(appended), kind="context")
            mask, logprobs = builder.align_response_metadata(merge, traj.response_mask, traj.logprobs if traj.logprobs else None)
        else:  # verl's model-specific builders (GLM, Gemma-4, GPT-OSS, ...) merge with their own boundary rules
            previous = list(messages)
            merge, mask, logprobs = await self.ct_merge_context_msg(
                previous, previous + [{"role": "user", "content": text}], traj.runtime_ids, traj.response_mask,
                traj.logprobs if traj.logprobs else None)
            appended = merge.token_ids[len(merge.token_ids) - merge.appended_token_count:] if merge.appended_token_count else []
            start, end = content_span(self.tokenizer, appended, text)
        if len(mask) >= self.response_length:
            return False
        self._apply_merge(traj, merge, mask, logprobs)
        base = len(traj.feedback_mask) - merge.appended_token_count
        for i in range(start, end):
            traj.feedback_mask[base + i] = 1
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

    async def policy_complete(self, messages: list[dict[str, str]], max_tokens: int, temperature: float) -> str:
        """A plain completion by the policy through the same generation server (used by the `self` teacher,
        the autodidact critic and the leak judge). On a thinking model the prompt is rendered with thinking off
        unless ``rl2f.teacher.thinking`` (`aux_prompt_format`); a reply that stops inside an unfinished think block
        is continued once after the block is closed (``max_tokens`` more), so the caller gets an answer."""
        fmt = aux_prompt_format(self.continuous_token_builder, thinking=self.rl2f.teacher.thinking)
        # Incremental: only text not seen in this trajectory's earlier aux prompts is tokenised, on the event loop
        # (cheaper than a thread round trip); exactly the builder's ids (rl2f_plugin.agent_loops.prompt_tokens).
        aux = self._aux_tokens
        prompt_ids = aux.prompt_ids(messages) if aux is not None and aux.builder is fmt.builder else None
        if prompt_ids is None:
            prompt_ids = await self.loop.run_in_executor(None, lambda: fmt.builder.build_initial_tokens(messages))
        params = {"temperature": float(temperature), "top_p": 1.0, "top_k": -1, "repetition_penalty": 1.0,
                  "logprobs": False, "max_tokens": int(max_tokens)}
        reply_ids = await self._aux_generate(prompt_ids, params)
        reply = self.tokenizer.decode(reply_ids, skip_special_tokens=True)
        if len(reply_ids) >= max_tokens and unfinished_thought(reply, opened=fmt.opens_thought):
            close_ids = self.tokenizer.encode(THINK_CLOSE, add_special_tokens=False)
            answer_ids = await self._aux_generate(prompt_ids + reply_ids + close_ids, params)
            reply = self.tokenizer.decode(reply_ids + close_ids + answer_ids, skip_special_tokens=True)
        return reply

    async def _aux_generate(self, prompt_ids: list[int], params: dict[str, Any]) -> list[int]:
        """One auxiliary generate call. All aux calls of a trajectory share one routing id (one sticky session: the
        same replica, whose prefix cache holds the trajectory's earlier teacher prompts; one entry in verl's
        load-balancer cache per trajectory, not one per call); a cancelled call is aborted on the server."""
        try:
            out = await generate_abortable(self.server_manager, f"{TEACHER_REQUEST_PREFIX}{self._request_id}",
                                           list(prompt_ids), dict(params))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a failed auxiliary call is a teacher failure: rl2f.on_teacher_error decides
            raise TeacherError(f"policy server failed on an auxiliary call ({len(prompt_ids)} prompt tokens): "
                               f"{type(exc).__name__}: {exc}") from exc
        return list(out.token_ids)


@register("rl2f_autodidact")
class AutodidactAgentLoop(DidacticAgentLoop):
    """Self-correction with no teacher and no privileged information: after a wrong answer the same model
    critiques its previous attempt (the ``autodidact_critic`` teacher) and the critique becomes the next user turn
    (marked in ``feedback_mask``). The verifier still decides when to stop and scores each turn, so cumulative
    accuracy by turn is comparable with ``rl2f_didactic``."""

    teacher_name = "autodidact_critic"
    uses_leak_guard = False


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
