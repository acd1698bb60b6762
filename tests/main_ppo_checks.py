"""Checks on a real ``python -m verl.trainer.main_ppo`` run, shared by the tests that launch one
(tests/test_cpu_e2e.py, tests/test_gpu_recipes_on_cpu.py): verl's file-logger metrics by step and the rl2f CPU
rollout server's event log (``RL2F_CPU_ROLLOUT_LOG``: ``init``, ``update_weights`` with the weights' checksum and
version, ``generate_batch`` with the version it ran on, ``request``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest


def read_metrics(path: Path) -> dict[int, dict]:
    """verl's file logger (``VERL_FILE_LOGGER_PATH``): one ``{"step": N, "data": {...}}`` per line -> {step: data}."""
    metrics: dict[int, dict] = {}
    for line in Path(path).read_text().splitlines():
        rec = json.loads(line)
        metrics.setdefault(rec["step"], {}).update(rec["data"])
    return metrics


def read_events(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def check_finite(metrics: dict, steps, keys) -> None:
    for step in steps:
        for key in keys:
            assert key in metrics[step], f"step {step}: metric {key} missing; have {sorted(metrics[step])[:80]}"
            value = float(metrics[step][key])
            assert math.isfinite(value), f"step {step}: {key}={value}"


def check_learning_signal(metrics: dict, steps) -> None:
    """Some reward is earned and at least one GRPO group has rewards that differ (non-zero advantages): a default on
    which the model earns nothing, or everything, gives GRPO nothing to learn from."""
    rewards = [float(metrics[s]["critic/score/mean"]) for s in steps]
    assert max(rewards) > 0, f"no reward earned in steps {list(steps)}: {rewards}"
    spread = [max(abs(float(metrics[s]["critic/advantages/max"])), abs(float(metrics[s]["critic/advantages/min"])))
              for s in steps]
    assert max(spread) > 0, f"every GRPO group had equal rewards (all advantages 0): nothing to learn from; {spread}"
    assert max(float(metrics[s]["actor/grad_norm"]) for s in steps) > 0, "no step had a gradient"


def check_updates_reach_the_rollout(metrics: dict, events: list[dict], *, probs_diff_max: float,
                                    probs_diff_mean: float) -> None:
    """Steps 1 and 2 of one process: the weights the actor sent to the rollout after step s differ from those before
    it exactly when step s had a non-zero ``actor/grad_norm`` (run with weight decay off); every generation of step
    2 ran on the weights received after step 1; verl saw no stale trajectory; and the rollout's log-probs equal the
    actor's recomputation to the rollout's precision (``training/rollout_probs_diff_*``), which holds only if both
    sides hold the same weights."""
    updates = {e["global_steps"]: e for e in events if e["event"] == "update_weights"}
    init = next(e for e in events if e["event"] == "init")
    assert {0, 1, 2} <= set(updates), f"weight updates seen for steps {sorted(updates)}"
    assert updates[0]["checksum"] == pytest.approx(init["checksum"], rel=1e-9)  # step-0 sync = the initial model
    # a step whose samples all earned the same reward has no gradient and must then not move the weights
    for s in (1, 2):
        moved = updates[s]["checksum"] != updates[s - 1]["checksum"]
        grad = float(metrics[s]["actor/grad_norm"])
        assert moved == (grad > 0), f"step {s}: grad_norm {grad} but the weights {'' if moved else 'did not '}changed"
    t1, t2 = updates[1]["time"], updates[2]["time"]
    step2_batches = [e for e in events if e["event"] == "generate_batch" and t1 < e["time"] < t2]
    assert step2_batches, "no generation between the step-1 and step-2 weight updates"
    for b in step2_batches:
        assert b["weights_version"] == updates[1]["weights_version"] and b["global_steps"] == 1
        assert b["checksum"] == updates[1]["checksum"]
    assert float(metrics[2]["training/off_policy/trajectory_staleness/max"]) == 0
    assert float(metrics[2]["training/rollout_probs_diff_max"]) < probs_diff_max
    assert float(metrics[2]["training/rollout_probs_diff_mean"]) < probs_diff_mean
