"""RL²F trainer modes for verl's v1 trainer: ``trainer.v1.trainer_mode=rl2f_sync`` (or ``rl2f_colocate_async``).

Importing this module (done by the ``verl.plugins`` entry point in every process) registers, with verl's own
`register_trainer`:

* ``rl2f_sync``            = verl's `PPOTrainerSync` + the two RL²F hooks below;
* ``rl2f_colocate_async``  = verl's `PPOTrainerColocateAsync` + the same hooks.

The hooks, and nothing else (no fork of verl):

1. ``on_init_end``: build the actor loss `rl2f_plugin.losses.make_actor_loss` (verl's `ppo_loss` + the
   world-model CE on feedback tokens, weight ``rl2f.world_model.coef``) from the same actor config verl's
   worker uses (``omega_conf_to_dataclass(actor_rollout_ref.actor)``, engine_workers.py ``init_model``) and
   send it to every actor worker with verl's public ``set_loss_fn`` RPC (engine_workers.py
   ``ActorRolloutRefWorker.set_loss_fn``). The workers only ever see ``actor_rollout_ref``, so the coefficient
   travels inside the `functools.partial`. Distillation keeps verl's ``distillation_ppo_loss`` as the base.
2. ``_compute_metrics``: after verl's own metrics, read the batch's per-sample ``extra_fields`` (and
   ``data_source``) from TransferQueue, skip verl's synthetic padding rows, and log the RL²F training metrics
   of `rl2f_plugin.metrics` (``rl2f/acc_turn{k}``, ``rl2f/{data_source}/acc_turn{k}``, ``rl2f/solve_rate``,
   ``rl2f/mean_student_turns``, ``rl2f/leak_rate``, ``rl2f/feedback_tokens``, ...). Batches from stock
   single-turn loops have no rl2f fields and log nothing extra.

verl compares ``self.trainer_mode`` with ``"sync"`` in several places (replay-buffer class, refill, checkpoint
restore). The registered name must differ from verl's, so the classes report verl's base mode
(``"sync"`` / ``"colocate_async"``) as ``trainer_mode`` and keep the configured name in ``rl2f_trainer_mode``:
behaviour is exactly the base trainer's apart from the two hooks. The per-mode config section read by verl
(``trainer.v1.<mode>``, e.g. ``colocate_async.num_warmup_batches``) is therefore the base mode's.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_colocate_async import PPOTrainerColocateAsync
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.utils.config import omega_conf_to_dataclass

from .losses import WM_CE_PER_TOKEN_METRIC, make_actor_loss, per_token_ce
from .metrics import training_metrics
from .config import RL2FConfig

logger = logging.getLogger("rl2f_plugin.trainer")

__all__ = ["RL2FTrainerSync", "RL2FTrainerColocateAsync", "build_actor_loss_fn", "RL2F_TRAINER_MODES"]


def build_actor_loss_fn(config: Any) -> Callable:
    """The actor loss for a full trainer config (what ``on_init_end`` sends with ``set_loss_fn``)."""
    coef = RL2FConfig.from_trainer_config(config).world_model.coef
    actor_cfg = omega_conf_to_dataclass(config.actor_rollout_ref.actor)
    distillation_config = None
    distillation = config.get("distillation") if hasattr(config, "get") else None
    if distillation is not None:
        from verl.trainer.distillation import is_distillation_enabled

        if is_distillation_enabled(distillation):
            distillation_config = omega_conf_to_dataclass(distillation)
    return make_actor_loss(actor_cfg, wm_coef=coef, distillation_config=distillation_config)


class RL2FTrainerMixin:
    """The RL²F hooks; mixed in front of a verl v1 trainer class."""

    #: verl's trainer mode this class behaves as (what verl's ``self.trainer_mode == "sync"`` checks see).
    base_trainer_mode: str = "sync"

    # verl's PPOTrainer.__init__ assigns ``self.trainer_mode = config.trainer.v1.trainer_mode``.
    @property
    def trainer_mode(self) -> str:
        return self.base_trainer_mode

    @trainer_mode.setter
    def trainer_mode(self, value: str) -> None:
        self.rl2f_trainer_mode = value

    # --- 1. the world-model loss on the actor workers ---------------------------------------------------------
    def on_init_end(self):
        self.install_rl2f_loss()
        super().on_init_end()

    def install_rl2f_loss(self) -> None:
        loss_fn = build_actor_loss_fn(self.config)
        self.actor_rollout_wg.set_loss_fn(loss_fn)
        logger.info("rl2f: actor loss = ppo_loss + %s * world-model CE on feedback tokens", loss_fn.keywords["wm_coef"])

    # --- 2. per-step RL²F training metrics --------------------------------------------------------------------
    def _compute_metrics(self, batch, metrics, timing_raw, global_steps, epoch):
        super()._compute_metrics(batch, metrics, timing_raw, global_steps=global_steps, epoch=epoch)
        ce = per_token_ce(metrics)
        if ce is not None:
            metrics[WM_CE_PER_TOKEN_METRIC] = ce
        try:
            metrics.update(self.rl2f_training_metrics(batch))
        except ValueError as exc:  # malformed rl2f extra fields: report loudly, but never kill a training run
            logger.warning("rl2f: step %s: RL2F metrics skipped: %s", global_steps, exc)

    def rl2f_training_metrics(self, batch, kv_batch_get: Callable | None = None) -> dict[str, float]:
        """RL²F metrics of one training batch (a TransferQueue ``KVBatchMeta``)."""
        if kv_batch_get is None:
            from verl.trainer.ppo.v1 import trainer_base  # the TransferQueue client verl's trainer itself uses

            kv_batch_get = trainer_base.tq.kv_batch_get
        if not batch.keys:
            return {}
        is_padding = [bool(tag.get("is_padding", False)) for tag in batch.tags]
        try:
            data = kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["extra_fields", "data_source"])
        except (ValueError, KeyError) as exc:  # a dataset without data_source: label the metrics by task instead
            if "data_source" not in str(exc):
                raise
            logger.debug("rl2f: no data_source in TransferQueue (%s); labelling metrics by task", exc)
            data = kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["extra_fields"])
        extra_fields = _as_list(data["extra_fields"])
        sources = _as_list(data["data_source"]) if "data_source" in data.keys() else None
        return training_metrics(extra_fields, data_sources=sources, is_padding=is_padding)


def _as_list(value: Any) -> list:
    if hasattr(value, "tolist"):
        return value.tolist()
    return list(value)


@register_trainer("rl2f_sync")
class RL2FTrainerSync(RL2FTrainerMixin, PPOTrainerSync):
    """verl's synchronous PPO trainer with the RL²F world-model loss and per-step RL²F metrics."""

    base_trainer_mode = "sync"


@register_trainer("rl2f_colocate_async")
class RL2FTrainerColocateAsync(RL2FTrainerMixin, PPOTrainerColocateAsync):
    """verl's colocated asynchronous (partial-rollout) PPO trainer with the RL²F hooks."""

    base_trainer_mode = "colocate_async"


RL2F_TRAINER_MODES = {"rl2f_sync": RL2FTrainerSync, "rl2f_colocate_async": RL2FTrainerColocateAsync}
