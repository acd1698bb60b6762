"""RL²F metrics (pure functions shared by the trainer and the evaluation harness)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rl2f_plugin import schema
from rl2f_plugin.metrics import (
    TrajectoryRecord,
    cumulative_accuracy,
    leak_rate,
    record_from_extra_fields,
    solve_rate,
    summarize,
    training_metrics,
    turns_to_solve,
)


def ef(solved, turns, max_turns=4, leaks=0, leaked=0, fb_tokens=0, task="math", **extra):
    """extra_fields as the didactic loop writes them (schema.EF_* keys)."""
    d = {
        schema.EF_TURN_CORRECT: [int(solved == t) for t in range(1, turns + 1)],
        schema.EF_SOLVED_AT_TURN: solved,
        schema.EF_NUM_STUDENT_TURNS: turns,
        schema.EF_LEAK_COUNT: leaks,
        schema.EF_LEAKED_TURNS: leaked,
        schema.EF_FEEDBACK_TOKENS: fb_tokens,
        schema.EF_TASK: task,
        schema.EF_MAX_TURNS: max_turns,
        "min_global_steps": 0,
        "max_global_steps": 0,
    }
    d.update(extra)
    return d


def test_cumulative_accuracy_hand_example():
    # 5 problems: solved at 1, 3, 3, never, 2 ; K = 4
    acc = cumulative_accuracy([1, 3, 3, 0, 2], 4)
    assert acc == [1 / 5, 2 / 5, 4 / 5, 4 / 5]
    assert solve_rate([1, 3, 3, 0, 2]) == 4 / 5
    assert turns_to_solve([1, 3, 3, 0, 2]) == (1 + 3 + 3 + 2) / 4
    assert math.isnan(turns_to_solve([0, 0]))
    assert all(a <= b for a, b in zip(acc, acc[1:]))


def test_mixed_turn_counts_and_sources():
    batch = [
        ef(1, 1, max_turns=2, fb_tokens=0),                    # math, solved at once (K=2 budget)
        ef(0, 2, max_turns=2, fb_tokens=10, leaks=1),           # math, never (K=2), one leak caught
        ef(4, 4, max_turns=4, fb_tokens=30, task="arc"),        # arc, solved at the 4th turn
        ef(2, 2, max_turns=4, fb_tokens=12, task="arc"),        # arc, solved at turn 2
        ef(0, 4, max_turns=4, fb_tokens=40, leaks=3, leaked=1, task="arc"),
    ]
    sources = ["gsm", "gsm", "arc_agi", "arc_agi", "arc_agi"]
    m = training_metrics(batch, data_sources=sources)
    # K = 4 (largest budget); a K=2 trajectory never solved counts as unsolved at turns 3, 4
    assert [m[f"rl2f/acc_turn{k}"] for k in range(1, 5)] == [1 / 5, 2 / 5, 2 / 5, 3 / 5]
    assert "rl2f/acc_turn5" not in m
    assert m["rl2f/solve_rate"] == 3 / 5
    assert m["rl2f/turns_to_solve"] == (1 + 4 + 2) / 3
    assert m["rl2f/mean_student_turns"] == (1 + 2 + 4 + 2 + 4) / 5
    assert m["rl2f/feedback_tokens"] == (0 + 10 + 30 + 12 + 40) / 5
    # feedback turns (= student turns - 1): 0,1,3,1,3 = 8 ; generations = 8 + leaks 4 - fell back 1 = 11
    assert m["rl2f/leak_rate"] == pytest.approx(4 / 11)
    assert m["rl2f/leaked_turn_rate"] == pytest.approx(1 / 8)
    # by data source, each with its own K
    assert [m[f"rl2f/gsm/acc_turn{k}"] for k in (1, 2)] == [1 / 2, 1 / 2]
    assert "rl2f/gsm/acc_turn3" not in m
    assert [m[f"rl2f/arc_agi/acc_turn{k}"] for k in range(1, 5)] == [0, 1 / 3, 1 / 3, 2 / 3]
    assert m["rl2f/arc_agi/num_trajectories"] == 3
    assert m["rl2f/gsm/feedback_tokens"] == 5


def test_padding_rows_and_stock_samples_are_skipped():
    real = [ef(2, 2), ef(0, 4)]
    padding_copy = dict(real[0])  # verl's padding rows copy a real sample's fields
    stock = {"min_global_steps": 0, "max_global_steps": 0, "reward_extra_info": {"acc": 1.0}}
    m = training_metrics(real + [padding_copy, stock], data_sources=["d"] * 4, is_padding=[False, False, True, False])
    assert m["rl2f/num_trajectories"] == 2
    assert m["rl2f/acc_turn2"] == 0.5
    # a batch of stock single-turn samples: the metrics are simply absent
    assert training_metrics([stock, stock], data_sources=["d", "d"]) == {}
    assert training_metrics([None, {}]) == {}


def test_source_falls_back_to_task_and_slashes_are_flattened():
    m = training_metrics([ef(1, 1, task="reasoning_gym:maze")], data_sources=None)
    assert "rl2f/reasoning_gym:maze/acc_turn1" in m
    m = training_metrics([ef(1, 1)], data_sources=["org/dataset"])
    assert "rl2f/org_dataset/acc_turn1" in m


def test_numpy_and_float_values_are_accepted():
    rec = record_from_extra_fields(
        {schema.EF_SOLVED_AT_TURN: np.int64(2), schema.EF_NUM_STUDENT_TURNS: 3.0, schema.EF_MAX_TURNS: np.int32(4)}
    )
    assert rec == TrajectoryRecord(solved_at_turn=2, num_student_turns=3, max_turns=4, data_source="unknown")


def test_explicit_feedback_turns_override_the_fallback():
    recs = [record_from_extra_fields(ef(0, 3, leaks=1, **{schema.EF_FEEDBACK_TURNS: 1}))]
    assert leak_rate(recs) == 1 / 2  # 1 feedback turn + 1 regeneration
    assert math.isnan(leak_rate([record_from_extra_fields(ef(1, 1))]))  # no teacher generation at all


def test_bad_extra_fields_name_sample_and_field():
    bad = ef(1, 1)
    bad[schema.EF_SOLVED_AT_TURN] = "yes"
    with pytest.raises(ValueError, match=rf"sample 1: extra field '{schema.EF_SOLVED_AT_TURN}' must be an integer"):
        training_metrics([ef(1, 1), bad])
    impossible = ef(3, 2)  # solved at a turn that never happened
    with pytest.raises(ValueError, match=r"sample 0: solved_at_turn=3 is outside 0..num_student_turns=2"):
        training_metrics([impossible])
    with pytest.raises(ValueError, match="data_sources has 1 entries but extra_fields has 2"):
        training_metrics([ef(1, 1), ef(1, 1)], data_sources=["a"])


def test_summarize_for_the_eval_harness():
    recs = [TrajectoryRecord(solved_at_turn=s, num_student_turns=max(s, 3) if s == 0 else s, max_turns=10,
                             data_source="hardmath2") for s in (0, 1, 5, 10)]
    m = summarize(recs, prefix="eval", by_source=False)
    assert m["eval/acc_turn10"] == 3 / 4 and m["eval/acc_turn4"] == 1 / 4
    assert not any(k.startswith("eval/hardmath2") for k in m)
    assert summarize([]) == {}


def test_weighted_cumulative_accuracy_counts_each_problem_once():
    from rl2f_plugin.metrics import cumulative_accuracy, format_metric, mean_student_turns, teacher_generations

    # problem A: two samples, one solved at turn 1; problem B: one sample solved at turn 2
    assert cumulative_accuracy([1, 0, 2], 2, weights=[0.5, 0.5, 1.0]) == [0.25, 0.75]
    assert cumulative_accuracy([1, 0, 2], 2) == [1 / 3, 2 / 3]
    with pytest.raises(ValueError, match="2 weights for 3 trajectories"):
        cumulative_accuracy([1, 0, 2], 2, weights=[1, 1])
    recs = [TrajectoryRecord(solved_at_turn=0, num_student_turns=3, max_turns=3, leaks=2, leaked_turns=1, feedback_turns=2),
            TrajectoryRecord(solved_at_turn=1, num_student_turns=1, max_turns=3)]
    assert teacher_generations(recs) == 3 and mean_student_turns(recs) == 2.0
    assert (format_metric(0.12345), format_metric(None), format_metric(float("nan"), nan="nan")) == ("0.123", "-", "nan")


def test_timeouts_and_fallbacks_are_their_own_metrics():
    """Each kind of time-out is its own count (0 is logged too: 'nothing timed out' is a measurement), a leak-guard
    time-out is not a leak (the leak rate's numerator) but its regeneration is a teacher generation."""
    from rl2f_plugin.metrics import summarize, teacher_generations

    base = {schema.EF_SOLVED_AT_TURN: 0, schema.EF_NUM_STUDENT_TURNS: 2, schema.EF_MAX_TURNS: 2,
            schema.EF_FEEDBACK_TURNS: 1, schema.EF_TASK: "math"}
    timed_out = {**base, schema.EF_VERIFY_TIMEOUTS: 1, schema.EF_VERIFY_QUEUE_TIMEOUTS: 1, schema.EF_VERIFY_QUEUE_S: 4.5,
                 schema.EF_LEAK_GUARD_TIMEOUTS: 3, schema.EF_GUARD_TIMEOUT_TURNS: 1, schema.EF_TEACHER_TIMEOUTS: 1,
                 schema.EF_FALLBACKS: 1}
    leaked = {**base, schema.EF_LEAK_COUNT: 1, schema.EF_VERIFY_QUEUE_S: 0.5}
    rec = record_from_extra_fields(timed_out)
    assert (rec.verify_timeouts, rec.verify_queue_timeouts, rec.leak_guard_timeouts, rec.guard_timeout_turns,
            rec.teacher_timeouts, rec.fallbacks, rec.verify_queue_s) == (1, 1, 3, 1, 1, 1, 4.5)
    recs = [rec, record_from_extra_fields(leaked)]
    assert teacher_generations(recs) == (1 + 3 - 1) + (1 + 1)
    m = summarize(recs, by_source=False)
    assert m["rl2f/leak_rate"] == 1 / 5  # one leak in five generations; the three timed-out checks are not leaks
    assert (m["rl2f/timeouts/verify"], m["rl2f/timeouts/verify_queue"], m["rl2f/timeouts/leak_guard"],
            m["rl2f/timeouts/teacher"], m["rl2f/fallbacks"]) == (1.0, 1.0, 3.0, 1.0, 1.0)
    assert m["rl2f/verify_queue_s/mean"] == 2.5 and m["rl2f/verify_queue_s/max"] == 4.5
    clean = summarize([record_from_extra_fields(base)], by_source=False)
    assert clean["rl2f/timeouts/verify"] == 0.0 and clean["rl2f/fallbacks"] == 0.0  # logged as 0, not omitted
    with pytest.raises(ValueError, match=r"sample: extra field 'rl2f_teacher_timeouts' must be an integer"):
        record_from_extra_fields({**base, schema.EF_TEACHER_TIMEOUTS: "many"})
