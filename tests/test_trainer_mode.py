"""The RL²F trainer modes registered with verl's v1 trainer registry.

Real: verl's registry and trainer classes (constructed from verl's own `ppo_trainer.yaml` defaults), verl's
`_compute_metrics`, verl's padding-row template, the didactic loop's `RL2FAgentLoopOutput.as_dict()` (what the
v1 agent-loop worker stores per sample) and verl's `list_of_dict_to_tensordict` (TransferQueue's stored form).
Stand-ins, because they need GPUs or a running Ray cluster: the actor worker group (`FakeWorkerGroup` records
`set_loss_fn` and round-trips the function through cloudpickle as Ray does), the checkpoint manager (weight
sync to rollout replicas), the resource-pool GPU count, and the TransferQueue client (`FakeTQ`, a dict of
samples with the same `kv_batch_get` signature).
"""

from __future__ import annotations

import os
import subprocess
import sys
import types

import cloudpickle
import pytest
import torch

from transfer_queue import KVBatchMeta
from verl.experimental.agent_loop.agent_loop import AgentLoopMetrics
from verl.trainer.ppo.padding_utils import construct_minimal_padding_template
from verl.trainer.ppo.v1 import get_trainer_cls
from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer, ReplayBufferAsync
from verl.utils import tensordict_utils as tu
from verl.utils.config import omega_conf_to_dataclass
from verl.workers.utils.losses import ppo_loss

from rl2f_plugin import schema
from rl2f_plugin.losses import WM_CE_METRIC, rl2f_actor_loss
from rl2f_plugin.trainer import RL2FTrainerColocateAsync, RL2FTrainerSync

from test_wm_loss import _run, build_batch, compose_verl, engine_view  # the same real verl batch as the loss tests


def _cfg(*overrides):
    return compose_verl("actor_rollout_ref.rollout.n=2", "algorithm.adv_estimator=grpo", *overrides)


class FakeWorkerGroup:
    """Stands in for verl's RayWorkerGroup of ActorRolloutRefWorker (needs GPUs)."""

    def __init__(self, log):
        self.log = log
        self.loss_fn = None

    def set_loss_fn(self, loss_fn):  # ONE_TO_ALL RPC: the function is pickled to every worker
        self.loss_fn = cloudpickle.loads(cloudpickle.dumps(loss_fn))
        self.log.append("set_loss_fn")


class FakeCheckpointManager:
    def __init__(self, log):
        self.log = log

    def update_weights(self, global_steps):
        self.log.append(f"update_weights({global_steps})")


def _with_fakes(trainer):
    log = []
    trainer.actor_rollout_wg = FakeWorkerGroup(log)
    trainer.checkpoint_manager = FakeCheckpointManager(log)
    trainer.global_steps = 0
    return trainer, log


def test_registered_by_plain_import_verl():
    env = {k: v for k, v in os.environ.items() if not k.startswith("VERL_USE_EXTERNAL")}
    code = (
        "import verl\n"
        "from verl.trainer.ppo.v1 import get_trainer_cls\n"
        "print(get_trainer_cls('rl2f_sync').__qualname__, get_trainer_cls('rl2f_colocate_async').__qualname__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["RL2FTrainerSync", "RL2FTrainerColocateAsync"]


def test_behaves_as_the_verl_base_mode():
    assert get_trainer_cls("rl2f_sync") is RL2FTrainerSync
    t = RL2FTrainerSync(_cfg("trainer.v1.trainer_mode=rl2f_sync"))
    # verl's `trainer_mode == "sync"` checks see "sync": the synchronous replay buffer, not the async one
    assert t.trainer_mode == "sync" and t.rl2f_trainer_mode == "rl2f_sync"
    assert type(t.replay_buffer) is ReplayBuffer
    ta = get_trainer_cls("rl2f_colocate_async")(_cfg("trainer.v1.trainer_mode=rl2f_colocate_async"))
    assert ta.trainer_mode == "colocate_async" and isinstance(ta.replay_buffer, ReplayBufferAsync)
    assert isinstance(ta, RL2FTrainerColocateAsync)


def test_on_init_end_installs_the_wm_loss_before_weight_sync():
    cfg = _cfg("trainer.v1.trainer_mode=rl2f_sync", "+rl2f.world_model.coef=0.2")
    trainer, log = _with_fakes(RL2FTrainerSync(cfg))
    trainer.on_init_end()
    assert log == ["set_loss_fn", "update_weights(0)"]  # then verl's own on_init_end
    fn = trainer.actor_rollout_wg.loss_fn
    assert fn.func is rl2f_actor_loss and fn.keywords["wm_coef"] == 0.2
    assert fn.keywords["base_loss_fn"] is ppo_loss
    assert fn.keywords["config"] == omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)

    # the worker-side function really computes ppo_loss + 0.2 * CE on a verl batch
    td, params = build_batch(cfg.algorithm, "grpo")
    actor_cfg = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    base, _, _ = _run(lambda **kw: ppo_loss(actor_cfg, **kw), engine_view(td), params)
    loss, metrics, _ = _run(fn, engine_view(td), params)
    assert float(loss) == pytest.approx(float(base) + 0.2 * metrics[WM_CE_METRIC].values[0], rel=1e-6)


def test_default_coef_is_exactly_verl():
    cfg = _cfg("trainer.v1.trainer_mode=rl2f_sync")  # no rl2f section at all
    trainer, _ = _with_fakes(RL2FTrainerSync(cfg))
    trainer.on_init_end()
    fn = trainer.actor_rollout_wg.loss_fn
    assert fn.keywords["wm_coef"] == 0.0
    td, params = build_batch(cfg.algorithm, "gae")
    actor_cfg = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    ref, _, _ = _run(lambda **kw: ppo_loss(actor_cfg, **kw), engine_view(td), params)
    loss, _, _ = _run(fn, engine_view(td), params)
    assert torch.equal(loss, ref)


def test_bad_coef_is_a_clear_error():
    trainer, _ = _with_fakes(RL2FTrainerSync(_cfg("trainer.v1.trainer_mode=rl2f_sync", "+rl2f.world_model.coef=lots")))
    with pytest.raises(ValueError, match="rl2f.world_model.coef must be a number"):
        trainer.on_init_end()


# ----------------------------------------------------------------------------------------------------------
class FakeTQ:
    """TransferQueue's key-value API over a dict (the real one needs a Ray cluster)."""

    def __init__(self):
        self.store = {}

    def kv_batch_get(self, keys, partition_id, select_fields=None):
        rows = [self.store[(partition_id, k)] for k in keys]
        fields = select_fields or list(rows[0])
        missing = [f for f in fields if not all(f in r for r in rows)]
        fields = [f for f in fields if f not in missing]
        return tu.list_of_dict_to_tensordict([{f: r[f] for f in fields} for r in rows])


def _didactic_sample(solved_at, n_turns, data_source, leaks=0, max_turns=4):
    """A sample exactly as verl's AgentLoopWorkerTQ stores it: the loop output's as_dict() + dataset kwargs."""
    from rl2f_plugin.agent_loops.output import RL2FAgentLoopOutput

    fb_tokens = 3 * (n_turns - 1)
    resp_mask = ([1, 1, 0, 0, 0] * (n_turns - 1)) + [1, 1]
    fb_mask = ([0, 0, 1, 1, 1] * (n_turns - 1)) + [0, 0]
    extra = {
        schema.EF_TURN_CORRECT: [int(t == solved_at) for t in range(1, n_turns + 1)],
        schema.EF_SOLVED_AT_TURN: solved_at,
        schema.EF_NUM_STUDENT_TURNS: n_turns,
        schema.EF_LEAK_COUNT: leaks,
        schema.EF_LEAKED_TURNS: 0,
        schema.EF_FEEDBACK_TOKENS: fb_tokens,
        schema.EF_MAX_TURNS: max_turns,
        schema.EF_TASK: "math",
        "min_global_steps": 0,
        "max_global_steps": 0,
        schema.REWARD_EXTRA_INFO: {"acc": float(solved_at > 0)},
    }
    out = RL2FAgentLoopOutput(
        prompt_ids=[11, 12, 13],
        response_ids=list(range(20, 20 + len(resp_mask))),
        response_mask=resp_mask,
        feedback_mask=fb_mask,
        reward_score=float(solved_at > 0),
        num_turns=2 * n_turns,
        metrics=AgentLoopMetrics(),
        extra_fields=extra,
    )
    field = out.as_dict()
    field.update({"data_source": data_source, "uid": "u", "global_steps": 0})
    field["loss_mask"] = field["response_mask"]
    field["input_ids"] = torch.cat([field["prompts"], field["responses"]])
    field["position_ids"] = torch.arange(field["input_ids"].numel())
    field["attention_mask"] = torch.ones_like(field["input_ids"])
    n = field["responses"].numel()
    field["advantages"] = torch.full((n,), 0.5)
    field["returns"] = torch.full((n,), 0.5)
    field["token_level_rewards"] = field["rm_scores"]
    assert field[schema.FEEDBACK_MASK_KEY].sum() == fb_tokens
    return field


def test_compute_metrics_logs_rl2f_metrics_per_step(monkeypatch):
    import verl.trainer.ppo.v1.trainer_base as trainer_base

    fake = FakeTQ()
    monkeypatch.setattr(trainer_base, "tq", types.SimpleNamespace(kv_batch_get=fake.kv_batch_get))
    trainer = RL2FTrainerSync(_cfg("trainer.v1.trainer_mode=rl2f_sync"))
    trainer.resource_pool_manager = types.SimpleNamespace(get_n_gpus=lambda: 1)  # GPU count: no GPUs here

    samples = [
        _didactic_sample(1, 1, "gsm8k"),
        _didactic_sample(3, 3, "gsm8k", leaks=1),
        _didactic_sample(0, 4, "omni_math"),
        _didactic_sample(2, 2, "omni_math"),
    ]
    keys = [f"u{i}_0_0" for i in range(4)]
    tags = [{"status": "success", "min_global_steps": 0, "max_global_steps": 0} for _ in samples]
    pad, pad_tag = construct_minimal_padding_template(samples[0], tags[0], eos_token_id=2)  # verl's padding row
    for key, s in zip(keys + ["pad_0_0"], samples + [pad], strict=True):
        fake.store[("train", key)] = s
    batch = KVBatchMeta(partition_id="train", keys=keys + ["pad_0_0"], tags=tags + [pad_tag])
    assert pad_tag["is_padding"] and pad["extra_fields"][schema.EF_SOLVED_AT_TURN] == 1  # copied fields

    metrics = {"actor/wm_nll_sum": 30.0, "actor/wm_tokens": 12.0}  # reduced actor metrics of the step
    trainer._compute_metrics(batch, metrics, timing_raw={"step": 1.0, "gen": 0.5}, global_steps=1, epoch=0)
    assert metrics["actor/wm_ce_per_token"] == 2.5
    assert "training/num_turns/mean" in metrics and "critic/score/mean" in metrics  # verl's own still there
    assert [metrics[f"rl2f/acc_turn{k}"] for k in range(1, 5)] == [0.25, 0.5, 0.75, 0.75]
    assert metrics["rl2f/solve_rate"] == 0.75
    assert metrics["rl2f/mean_student_turns"] == (1 + 3 + 4 + 2) / 4
    assert metrics["rl2f/feedback_tokens"] == 3 * (0 + 2 + 3 + 1) / 4
    assert metrics["rl2f/leak_rate"] == pytest.approx(1 / (6 + 1))
    assert metrics["rl2f/gsm8k/acc_turn1"] == 0.5 and metrics["rl2f/omni_math/acc_turn2"] == 0.5
    assert metrics["rl2f/num_trajectories"] == 4  # the padding row is not counted


def test_stock_single_turn_batches_log_no_rl2f_metrics():
    fake = FakeTQ()
    fake.store[("train", "a_0_0")] = {"extra_fields": {"min_global_steps": 0}, "data_source": "gsm8k"}
    trainer = RL2FTrainerSync.__new__(RL2FTrainerSync)  # only the metrics hook is exercised
    batch = KVBatchMeta(partition_id="train", keys=["a_0_0"], tags=[{}])
    assert trainer.rl2f_training_metrics(batch, kv_batch_get=fake.kv_batch_get) == {}


def test_malformed_extra_fields_warn_without_stopping_training(monkeypatch, caplog):
    import verl.trainer.ppo.v1.trainer_base as trainer_base

    trainer = RL2FTrainerSync.__new__(RL2FTrainerSync)
    # verl's own part of the hook is not under test here
    monkeypatch.setattr(trainer_base.PPOTrainer, "_compute_metrics", lambda self, *a, **k: None)
    fake = FakeTQ()
    bad = _didactic_sample(1, 1, "gsm8k")
    bad["extra_fields"][schema.EF_SOLVED_AT_TURN] = "one"
    fake.store[("train", "a_0_0")] = bad
    monkeypatch.setattr(trainer_base, "tq", types.SimpleNamespace(kv_batch_get=fake.kv_batch_get))
    metrics = {}
    with caplog.at_level("WARNING", logger="rl2f_plugin.trainer"):
        trainer._compute_metrics(KVBatchMeta(partition_id="train", keys=["a_0_0"], tags=[{}]), metrics, {}, 7, 0)
    assert metrics == {}
    assert f"step 7: RL2F metrics skipped: sample 0: extra field '{schema.EF_SOLVED_AT_TURN}'" in caplog.text
