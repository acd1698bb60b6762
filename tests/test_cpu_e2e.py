"""End to end on CPU: verl's real ``main_ppo`` (a subprocess, as a user runs it) trains 2 GRPO steps of
``recipes/rlvr_cpu.yaml`` (stock single-turn) and ``recipes/rl2f_wm_cpu.yaml`` (didactic loop, template teacher,
world-model loss, rl2f_sync trainer mode) with SmolLM2-135M-Instruct on the CPU default data
(``examples/data_preprocess/cpu_default_data.py``, its first 16 training problems: two batches of 8).

Nothing is mocked: Ray, TransferQueue, the FSDP2 actor, the hf rollout server and weight sync all run for real
on the CPU. What is asserted, per recipe:

* both steps completed (exit 0, metrics logged for steps 1 and 2 by verl's file logger);
* the default can learn: some reward is earned and at least one GRPO group has rewards that differ, so some
  advantages are non-zero (a default on which the model earns nothing, or everything, gives GRPO nothing to learn
  from and fails here);
* the policy weights changed by a gradient step: the weights the actor sent to the rollout after a step differ
  from those before it (checksums from the rollout server's log) exactly when the step had a non-zero
  ``actor/grad_norm`` (weight decay off), and at least one step had one;
* the rollout used the updated weights in step 2: every generation of step 2 ran on the weights received after
  step 1 (server log), verl saw no stale trajectory, and the rollout's log-probs match the actor's
  recomputation (``training/rollout_probs_diff_*``, per-token |p_rollout - p_actor|), which only holds if both hold
  the same weights. The RLVR run decodes in fp32 like the actor: max diff < 1e-2. The RL²F run uses the default
  bf16 rollout (fp32 actor) with verl's token-level TIS correction on: mean diff < 0.02 and max < 0.3 (measured
  0.006-0.007 and 0.06-0.09 on SmolLM2-135M), and the correction's metrics are logged;
* the metrics exist and are finite (timings, losses, rewards; for RL²F also its per-turn accuracy and the
  world-model loss term).

Each run takes ~3-6 minutes on 2 cores (first use also converts the model, ~30 s, cached in ~/.cache/rl2f).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = os.path.join(REPO, "recipes")
RUN_TIMEOUT_S = int(os.environ.get("RL2F_E2E_TIMEOUT", "1500"))

COMMON_METRICS = [
    "timing_s/gen", "timing_s/old_log_prob", "timing_s/update_actor", "timing_s/update_weights", "timing_s/step",
    "actor/pg_loss", "actor/grad_norm", "critic/score/mean", "critic/advantages/mean", "response_length/mean",
    "training/rollout_probs_diff_max",
]


@pytest.fixture(scope="module")
def model_dir():
    from rl2f_plugin.cpu_model import ensure_smollm2

    return str(ensure_smollm2())


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("rg_cpu")
    subprocess.run([sys.executable, os.path.join(REPO, "examples/data_preprocess/cpu_default_data.py"),
                    "--train-size", "16", "--test-size", "2", "--out-dir", str(out)],
                   check=True, capture_output=True, timeout=300)
    return out


# Weight changes must come from the loss, not from AdamW's decoupled weight decay.
NO_DECAY = ["actor_rollout_ref.actor.optim.weight_decay=0.0"]


def run_main_ppo(recipe: str, model_dir: str, data_dir, work, extra: list[str] = ()) -> dict:
    rollout_log, metrics_log = work / "rollout.jsonl", work / "metrics.jsonl"
    env = {**os.environ, "VERL_PLATFORM": "cpu", "RL2F_CPU_ROLLOUT_LOG": str(rollout_log),
           "VERL_FILE_LOGGER_PATH": str(metrics_log), "RL2F_OUTPUT_DIR": str(work / "out"),
           "HF_HUB_OFFLINE": "1", "RAY_DEDUP_LOGS": "0", "RAY_ADDRESS": ""}
    cmd = [sys.executable, "-m", "verl.trainer.main_ppo", f"--config-path={RECIPES}", f"--config-name={recipe}",
           f"actor_rollout_ref.model.path={model_dir}", f"data.train_files={data_dir}/train.parquet",
           f"data.val_files={data_dir}/test.parquet", "trainer.total_training_steps=2",
           f"hydra.run.dir={work}/hydra", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=env, cwd=work)
    (work / "stdout.log").write_text(proc.stdout)
    (work / "stderr.log").write_text(proc.stderr)
    assert proc.returncode == 0, f"main_ppo {recipe} failed (logs in {work}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    metrics = {}
    for line in metrics_log.read_text().splitlines():
        rec = json.loads(line)
        metrics.setdefault(rec["step"], {}).update(rec["data"])
    events = [json.loads(line) for line in rollout_log.read_text().splitlines()]
    return {"metrics": metrics, "events": events, "stdout": proc.stdout}


def check_run(result: dict, extra_metrics: list[str], probs_diff_max: float, probs_diff_mean: float) -> None:
    metrics, events = result["metrics"], result["events"]
    # 1. both steps completed
    assert 1 in metrics and 2 in metrics, f"steps logged: {sorted(metrics)}"
    # 2. metrics exist and are finite
    for step in (1, 2):
        for key in COMMON_METRICS + extra_metrics:
            assert key in metrics[step], f"step {step}: metric {key} missing; have {sorted(metrics[step])[:80]}"
            value = float(metrics[step][key])
            assert math.isfinite(value), f"step {step}: {key}={value}"
    # 2b. the default data can teach: reward earned, and a group whose rewards differ (non-zero GRPO advantages)
    rewards = [float(metrics[s]["critic/score/mean"]) for s in (1, 2)]
    assert max(rewards) > 0, f"no reward earned on the default data in 2 steps: {rewards}"
    spread = [max(abs(float(metrics[s]["critic/advantages/max"])), abs(float(metrics[s]["critic/advantages/min"])))
              for s in (1, 2)]
    assert max(spread) > 0, f"every GRPO group had equal rewards (all advantages 0): nothing to learn from; {spread}"
    # 3. the policy weights changed: what the actor sent after steps 1 and 2 differs from the initial weights
    updates = {e["global_steps"]: e for e in events if e["event"] == "update_weights"}
    init = next(e for e in events if e["event"] == "init")
    assert {0, 1, 2} <= set(updates), f"weight updates seen for steps {sorted(updates)}"
    assert updates[0]["checksum"] == pytest.approx(init["checksum"], rel=1e-9)  # step-0 sync = initial model
    # a step changes the weights exactly when it has a gradient (weight decay is off): a step whose 32 samples all
    # earned the same reward has none in RLVR (it happens, ~2-3% of steps at ~10% accuracy), and must then not move
    for s in (1, 2):
        moved = updates[s]["checksum"] != updates[s - 1]["checksum"]
        grad = float(metrics[s]["actor/grad_norm"])
        assert moved == (grad > 0), f"step {s}: grad_norm {grad} but the weights {'' if moved else 'did not '}changed"
    assert max(float(metrics[s]["actor/grad_norm"]) for s in (1, 2)) > 0, "no step had a gradient"
    # 4. step 2 was generated with the weights produced by step 1
    t1, t2 = updates[1]["time"], updates[2]["time"]
    step2_batches = [e for e in events if e["event"] == "generate_batch" and t1 < e["time"] < t2]
    assert step2_batches, "no generation between the step-1 and step-2 weight updates"
    for b in step2_batches:
        assert b["weights_version"] == updates[1]["weights_version"] and b["global_steps"] == 1
        assert b["checksum"] == updates[1]["checksum"]
    assert float(metrics[2]["training/off_policy/trajectory_staleness/max"]) == 0
    # rollout log-probs equal the actor's recomputation (to the rollout's precision) -> same weights on both sides
    assert float(metrics[2]["training/rollout_probs_diff_max"]) < probs_diff_max
    assert float(metrics[2]["training/rollout_probs_diff_mean"]) < probs_diff_mean


@pytest.mark.timeout(RUN_TIMEOUT_S + 300)
def test_rlvr_cpu_two_steps(model_dir, data_dir, tmp_path):
    # fp32 rollout, as the actor: the strictest log-prob check
    result = run_main_ppo("rlvr_cpu", model_dir, data_dir, tmp_path, NO_DECAY + ["actor_rollout_ref.rollout.dtype=float32"])
    check_run(result, [], probs_diff_max=1e-2, probs_diff_mean=1e-3)
    assert next(e for e in result["events"] if e["event"] == "init")["dtype"] == "torch.float32"


@pytest.mark.timeout(RUN_TIMEOUT_S + 300)
def test_rl2f_cpu_two_steps(model_dir, data_dir, tmp_path):
    # the default rollout dtype (bf16 where the CPU has bf16 instructions) with verl's TIS correction
    result = run_main_ppo("rl2f_wm_cpu", model_dir, data_dir, tmp_path, NO_DECAY)
    check_run(result, ["rl2f/acc_turn1", "rl2f/acc_turn2", "rl2f/solve_rate", "rl2f/mean_student_turns"],
              probs_diff_max=0.3, probs_diff_mean=0.02)
    assert any(k.startswith("rollout_corr/") for k in result["metrics"][2]), "verl's rollout correction logged nothing"
    # multi-turn conversations were served from the prefix cache (the next turn continues the previous one)
    requests = [e for e in result["events"] if e["event"] == "request"]
    assert any(r["parent"] is not None and r["reused_prompt_tokens"] > 0 for r in requests)
    for step in (1, 2):
        m = result["metrics"][step]
        assert float(m["rl2f/acc_turn1"]) <= float(m["rl2f/acc_turn2"])  # cumulative accuracy never decreases
        wm = [k for k in m if "wm" in k or "world_model" in k]
        assert wm, f"no world-model loss metric in step {step}"
        assert all(math.isfinite(float(m[k])) for k in wm)
