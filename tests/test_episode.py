"""The didactic episode on its own: text in, feedback or the end out, no tokens and no verl.

Real: the ``reasoning_gym:basic_arithmetic`` task and its verifier (reasoning-gym's own scorer), the ``template``
teacher, the leak guard, the reward modes and the metrics. Scripted: teachers that leak or fail on purpose
(subclasses of the real `Teacher`), and the student's replies.
"""

from __future__ import annotations

import asyncio

import pytest

from rl2f_plugin import schema
from rl2f_plugin.config import RL2FConfig
from rl2f_plugin.episode import DidacticEpisode
from rl2f_plugin.metrics import cumulative_accuracy, leak_rate
from rl2f_plugin.prompts import render_prompt
from rl2f_plugin.teachers import Teacher, TeacherError, build_teacher

TASK = "reasoning_gym:basic_arithmetic"
SAMPLE = {"raw_prompt": [{"role": "user", "content": "Calculate 4 + 3. Give your final answer inside <answer></answer> tags."}],
          "reward_model": {"ground_truth": "7"}, "data_source": TASK, "index": 5,
          "extra_info": {"task": TASK, "answer_extraction": "strict"}}


class Scripted(Teacher):
    """Replies from a list, in order; an Exception instance in the list is raised instead."""

    def __init__(self, replies, **kw):
        super().__init__(**kw)
        self.replies, self.calls = list(replies), []

    async def feedback(self, ctx):
        self.calls.append((ctx.turn, ctx.attempt))
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply


def episode(teacher=None, sample=SAMPLE, leak_guard=True, **rl2f):
    cfg = RL2FConfig.from_dict({"max_turns": 3, "teacher": {"name": "template"}, **rl2f})
    return DidacticEpisode.from_sample(sample, cfg, teacher=teacher or build_teacher(cfg.teacher), leak_guard=leak_guard)


def play(ep, replies, **kw):
    async def go():
        steps = []
        for r in replies:
            steps.append(await ep.step(r, **kw))
            if steps[-1].done:
                break
        return steps

    return asyncio.run(go())


def test_correct_first_reply_ends_with_reward_1():
    ep = episode()
    (step,) = play(ep, ["<answer>7</answer>"])
    assert step.done and step.feedback is None and step.reward == 1.0
    rec = step.record
    assert rec.solved_at == 1 and rec.turn_correct == [1] and rec.feedback_turns == 0 and not rec.truncated
    assert ep.messages[-1] == {"role": "assistant", "content": "<answer>7</answer>"}


def test_wrong_then_feedback_then_correct():
    ep = episode()
    s1, s2 = play(ep, ["<answer>8</answer>", "<answer>7</answer>"])
    # the real template teacher with the task's privileged hint, never the answer
    assert not s1.done and s1.feedback.startswith("Your final answer (8) is incorrect. It is too large.")
    assert "7" not in s1.feedback
    assert s2.done and s2.reward == 1.0  # reward_mode final
    rec = s2.record
    assert rec.turn_correct == [0, 1] and rec.solved_at == 2 and rec.feedback_turns == 1
    assert [m["role"] for m in ep.messages] == ["user", "assistant", "user", "assistant"]
    assert ep.messages[2]["content"] == s1.feedback and rec.turns[0].delivered
    assert rec.turns[0].verdict.extracted == "8" and rec.turns[0].verify_s >= 0


def test_k_wrong_replies_end_without_feedback_after_the_last():
    ep = episode(max_turns=2)
    steps = play(ep, ["<answer>1</answer>", "<answer>2</answer>", "never asked"])
    assert len(steps) == 2 and steps[-1].done and steps[-1].reward == 0.0
    assert steps[-1].record.turns[-1].feedback is None and steps[-1].record.feedback_turns == 1
    with pytest.raises(RuntimeError, match="finished episode"):
        asyncio.run(ep.step("again"))


@pytest.mark.parametrize("mode,reward", [("final", 1.0), ("discounted", 0.25), ("any_turn", 1.0)])
def test_reward_modes(mode, reward):
    steps = play(episode(reward_mode=mode, gamma=0.5), ["1", "2", "<answer>7</answer>"])
    assert steps[-1].reward == pytest.approx(reward)


def test_leaking_teacher_is_regenerated_then_falls_back_to_safe_feedback():
    teacher = Scripted(["The answer is 7.", "It equals 7", "Try 7."])
    ep = episode(teacher=teacher, leak_guard={"max_regenerations": 2})
    step, last = play(ep, ["<answer>5</answer>", "<answer>7</answer>"])
    assert step.feedback == render_prompt("safe_feedback", "v1")
    turn = last.record.turns[0]
    assert turn.leaks == 3 and turn.fell_back and teacher.calls == [(1, 0), (1, 1), (1, 2)]
    # the paper's leak rate: 3 leaks in 3 teacher generations
    assert leak_rate([last.record.trajectory_record()]) == 1.0


def test_one_leak_then_clean_feedback():
    teacher = Scripted(["It is 7.", "Add the units digits again."])
    (step,) = play(episode(teacher=teacher), ["<answer>5</answer>"])
    assert step.feedback == "Add the units digits again."
    assert step.record.turns[0].leaks == 1 and not step.record.turns[0].fell_back


def test_without_leak_guard_feedback_passes_unchecked():
    teacher = Scripted(["It is 7."])
    (step,) = play(episode(teacher=teacher, leak_guard=False), ["<answer>5</answer>"])
    assert step.feedback == "It is 7."


@pytest.mark.parametrize("policy", ["fallback", "stop", "raise"])
def test_teacher_errors_follow_on_teacher_error(policy):
    ep = episode(teacher=Scripted([TeacherError("endpoint down")]), on_teacher_error=policy)
    if policy == "raise":
        with pytest.raises(TeacherError, match="failed at turn 1: endpoint down"):
            play(ep, ["<answer>5</answer>"])
        return
    (step,) = play(ep, ["<answer>5</answer>"])
    turn = step.record.turns[0]
    assert turn.teacher_error == "endpoint down"
    if policy == "fallback":
        assert not step.done and step.feedback == render_prompt("safe_feedback", "v1")
    else:
        assert step.done and turn.feedback is None
    assert step.record.extra_fields()[schema.EF_TEACHER_ERRORS] == 1


def test_slow_teacher_times_out():
    class Slow(Teacher):
        async def feedback(self, ctx):
            await asyncio.sleep(5)

    (step,) = play(episode(teacher=Slow(), teacher_timeout_s=0.05), ["<answer>5</answer>"])
    assert "timed out after 0.05s" in step.record.turns[0].teacher_error


def test_no_room_for_another_reply_ends_truncated_and_undelivered_feedback_is_not_counted():
    ep = episode()
    (step,) = play(ep, ["<answer>5</answer>"], can_continue=False)
    assert step.done and step.record.truncated and step.record.turns[0].feedback is None
    ep = episode()
    (step,) = play(ep, ["<answer>5</answer>"])
    end = ep.end(truncated=True)  # the adapter could not fit the feedback
    assert end.record.truncated and end.record.feedback_turns == 0 and end.record.turns[0].feedback is not None


def test_record_feeds_extra_fields_and_metrics():
    rec = play(episode(), ["<answer>9</answer>", "<answer>7</answer>"])[-1].record
    ef = rec.extra_fields(feedback_tokens=11)
    assert ef[schema.EF_TURN_CORRECT] == [0, 1] and ef[schema.EF_SOLVED_AT_TURN] == 2 and ef[schema.EF_MAX_TURNS] == 3
    assert ef[schema.EF_FEEDBACK_TOKENS] == 11 and ef[schema.EF_FINAL_RESPONSE] == "<answer>7</answer>"
    assert ef[schema.REWARD_EXTRA_INFO]["acc_turn1"] == 0.0 and ef[schema.REWARD_EXTRA_INFO]["acc_turn2"] == 1.0
    tr = rec.trajectory_record()
    assert cumulative_accuracy([tr.solved_at_turn], tr.max_turns) == [0.0, 1.0, 1.0] and tr.data_source == TASK


def test_bad_rows_name_the_row_and_field():
    with pytest.raises(ValueError, match=r"index=5 \(task .*\) has no reward_model.ground_truth"):
        episode(sample={**SAMPLE, "reward_model": {}})
    with pytest.raises(ValueError, match=r"index=5 has no raw_prompt"):
        episode(sample={k: v for k, v in SAMPLE.items() if k != "raw_prompt"})
    with pytest.raises(ValueError, match=r"index=5 has neither extra_info.task nor data_source"):
        episode(sample={**SAMPLE, "data_source": None, "extra_info": {}})


def test_verifier_timeout_is_a_wrong_answer():
    from rl2f_plugin.tasks import Task, VerifyResult, register_task

    @register_task("rl2f_test_slow_verify")
    class SlowVerify(Task):
        def verify(self, response, ground_truth, extra_info=None):
            import time

            time.sleep(1.0)
            return VerifyResult(score=1.0)

    ep = episode(sample={**SAMPLE, "data_source": "rl2f_test_slow_verify", "extra_info": {}}, verify_timeout_s=0.05,
                 max_turns=1)
    (step,) = play(ep, ["anything"])
    assert step.reward == 0.0 and "verifier timeout" in step.record.turns[0].verdict.reason
