"""The RL²F world-model auxiliary loss: verl's PPO loss plus cross-entropy on the teacher's feedback tokens.

RL²F also trains the student to *predict the teacher's critique* of its own visible mistake, without the
privileged information (paper §"self-improvement"). In a didactic trajectory the feedback turns are already
part of the student's response sequence (``response_mask`` 0 there, so verl's RL terms ignore them); the
agent loop marks them with a per-token ``feedback_mask`` (`rl2f_plugin.schema.FEEDBACK_MASK_KEY`). This module
adds ``coef * CE(feedback tokens)`` to verl's own actor loss:

    loss = ppo_loss(...) + coef * agg_loss(-log_prob, feedback_mask, config.loss_agg_mode, **global_batch_info)

How the pieces reach this function in verl 0.9.1 (read from the code, see the tests):

* The actor engine calls ``loss_fn(model_output=..., data=micro_batch, dp_group=...)`` once per micro-batch
  (``workers/engine/fsdp/transformer_impl.py`` ``forward_step``). ``model_output["log_probs"]`` is a jagged
  nested tensor over prompt+response; `verl.workers.utils.padding.no_padding_2_padding` slices it to the
  padded ``[bsz, max_response_len]`` response log-probs, exactly as `ppo_loss` does.
* The v1 trainer stores every key of ``AgentLoopOutput.as_dict()`` in TransferQueue; the actor worker fetches
  all fields, so ``data["feedback_mask"]`` is there: a jagged nested tensor when lengths differ (the usual
  case, `verl.utils.tensordict_utils.list_of_dict_to_tensordict`), a dense ``[bsz, L]`` tensor when they
  happen to be equal, or a ``NonTensorStack`` of lists if a loop emitted plain lists. All are accepted.
* Synthetic padding rows (``verl/trainer/ppo/padding_utils.py``) copy custom fields from a real sample while
  their response is 1 token long with ``response_mask`` 0: any row whose mask length differs from its
  response length, or that has no student token, contributes nothing.
* Normalisation: `ppo_loss` writes ``dp_size``, ``batch_num_tokens`` (global count of ``loss_mask`` tokens
  in the mini-batch, all-reduced over DP by the engine) and ``global_batch_size`` into
  ``config.global_batch_info``; the CE goes through verl's own `agg_loss` with the same values, so with the
  default ``token-mean`` it is ``sum(NLL on feedback tokens) / batch_num_tokens * dp_size``. The sum over
  micro-batches and the DP gradient average then give the same gradient for any micro-batching / DP size,
  and one unit of ``coef`` weighs a feedback token like one student token of the PG loss.

Metrics (``actor/`` prefix is added by the trainer):
  ``actor/wm_ce``     the CE term as added to the loss before ``coef`` (SUM-aggregated like ``pg_loss``:
                      the value for the whole mini-batch).
  ``actor/wm_tokens`` number of feedback tokens in the mini-batch (all DP ranks).
  ``actor/wm_nll_sum`` summed NLL of those tokens; the trainer adds ``actor/wm_ce_per_token`` =
                      ``wm_nll_sum / wm_tokens``, the plain per-feedback-token cross-entropy.

Samples without a feedback mask (stock single-turn loops) leave the loss exactly verl's and log nothing extra.
``coef = 0`` returns verl's loss object unchanged (bit for bit) and still logs the metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from tensordict import TensorDict

from verl.trainer.ppo.core_algos import agg_loss
from verl.utils import tensordict_utils as tu
from verl.utils.metric import AggregationType, Metric
from verl.workers.utils.losses import ppo_loss
from verl.workers.utils.padding import no_padding_2_padding

from .schema import FEEDBACK_MASK_KEY

__all__ = ["aligned_feedback_mask", "feedback_positions", "rl2f_actor_loss", "make_actor_loss", "WM_CE_METRIC", "WM_TOKENS_METRIC",
           "WM_NLL_SUM_METRIC", "WM_CE_PER_TOKEN_METRIC", "per_token_ce"]

WM_CE_METRIC = "actor/wm_ce"
WM_TOKENS_METRIC = "actor/wm_tokens"
WM_NLL_SUM_METRIC = "actor/wm_nll_sum"
WM_CE_PER_TOKEN_METRIC = "actor/wm_ce_per_token"


def _response_lengths(data: TensorDict) -> torch.Tensor:
    """Per-row response length, the way `no_padding_2_padding` computes it."""
    responses = data["responses"]
    if responses.is_nested:
        return responses.offsets().diff()
    if "attention_mask" not in data.keys():  # dense, unpadded rows: every response has the full width
        return torch.full((responses.shape[0],), responses.shape[1], dtype=torch.int64)
    prompts = data["prompts"]
    return data["attention_mask"][:, prompts.shape[1] :].sum(dim=1)


def _mask_rows(raw: Any) -> list[torch.Tensor]:
    """Split a feedback-mask field, in any form verl may hand it over, into one 1-D tensor per row."""
    if isinstance(raw, torch.Tensor):
        if raw.is_nested:
            return list(raw.unbind(0))
        if raw.dim() != 2:
            raise ValueError(f"'{FEEDBACK_MASK_KEY}' must be one mask per sample ([bsz, len]); got shape {tuple(raw.shape)}")
        return list(raw.unbind(0))
    values = raw.tolist() if hasattr(raw, "tolist") else list(raw)
    rows = []
    for i, v in enumerate(values):
        if v is None:
            raise ValueError(f"'{FEEDBACK_MASK_KEY}' of row {i} is None; every sample of a didactic batch needs one")
        rows.append(torch.as_tensor(v).reshape(-1))
    return rows


def aligned_feedback_mask(data: TensorDict, width: int, device: torch.device | None = None) -> torch.Tensor | None:
    """The feedback mask of a micro-batch as a float ``[bsz, width]`` tensor aligned with the padded response
    log-probs of `no_padding_2_padding`, or None when the batch carries no feedback mask.

    Rows whose mask length differs from their response length (verl's synthetic padding rows) or that contain
    no student token are zeroed. Raises ``ValueError`` naming the row when the mask is not 0/1 or marks a
    token that ``response_mask`` says the student sampled (the loop's masks disagree).
    """
    positions = feedback_positions(data)
    if positions is None:
        return None
    rows, cols = positions
    out = torch.zeros(len(data), width, dtype=torch.float32, device=device)
    keep = cols < width
    out[rows[keep].to(out.device), cols[keep].to(out.device)] = 1.0
    return out


def feedback_positions(data: TensorDict) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(row, response position) of every feedback token that counts (see `aligned_feedback_mask`), or None
    when the batch carries no feedback mask."""
    if FEEDBACK_MASK_KEY not in data.keys():
        return None
    raw = data[FEEDBACK_MASK_KEY]
    if (isinstance(raw, torch.Tensor) and raw.is_nested and data["responses"].is_nested
            and data["response_mask"].is_nested and raw.dim() == 2):
        return _feedback_positions_nested(raw, data)
    return _feedback_positions_rows(raw, data)


def _feedback_positions_nested(fb: torch.Tensor, data: TensorDict) -> tuple[torch.Tensor, torch.Tensor]:
    """Vectorised path for the jagged tensors verl's v1 pipeline passes (no per-row Python loop)."""
    resp_lens = data["responses"].offsets().diff()
    fb_offsets, fb_vals = fb.offsets(), fb.values()
    fb_lens = fb_offsets.diff()
    if fb_lens.numel() != resp_lens.numel():
        raise ValueError(f"'{FEEDBACK_MASK_KEY}' has {fb_lens.numel()} rows but the micro-batch has {resp_lens.numel()} samples")
    rm = data["response_mask"]
    rm_vals, rm_offsets = rm.values(), rm.offsets()
    rm_cum = torch.cat([rm_vals.new_zeros(1), (rm_vals != 0).long().cumsum(0)])
    n_student = rm_cum[rm_offsets[1:]] - rm_cum[rm_offsets[:-1]]
    device = fb_vals.device
    valid = (fb_lens.to(device) == resp_lens.to(device)) & (n_student.to(device) > 0)  # padding rows drop out

    bsz = fb_lens.numel()
    fb_row = torch.repeat_interleave(torch.arange(bsz, device=device), fb_lens.to(device))
    keep = valid[fb_row]
    rows = fb_row[keep]
    vals = fb_vals[keep]
    cols = torch.arange(fb_vals.numel(), device=device)[keep] - fb_offsets.to(device)[rows]
    rm_row = torch.repeat_interleave(torch.arange(bsz, device=rm_vals.device), rm_offsets.diff())
    student = rm_vals[valid.to(rm_vals.device)[rm_row]].to(device) != 0  # same rows, same lengths, same order

    bad = (vals != 0) & (vals != 1)
    if bool(bad.any()):
        i = int(rows[bad][0])
        raise ValueError(f"'{FEEDBACK_MASK_KEY}' of row {i} must contain only 0/1, got values "
                         f"{vals[rows == i].unique().tolist()}")
    overlap = (vals != 0) & student
    if bool(overlap.any()):
        i = int(rows[overlap][0])
        raise ValueError(
            f"'{FEEDBACK_MASK_KEY}' of row {i} marks {int(overlap[rows == i].sum())} token(s) that 'response_mask' "
            "marks as student tokens; feedback tokens must have response_mask 0"
        )
    on = vals != 0
    return rows[on], cols[on]


def _feedback_positions_rows(raw: Any, data: TensorDict) -> tuple[torch.Tensor, torch.Tensor]:
    """General path: dense tensors, or a NonTensorStack of lists, one row at a time."""
    rows_in = _mask_rows(raw)
    resp_lens = _response_lengths(data).tolist()
    if len(rows_in) != len(resp_lens):
        raise ValueError(f"'{FEEDBACK_MASK_KEY}' has {len(rows_in)} rows but the micro-batch has {len(resp_lens)} samples")
    student_rows = list(data["response_mask"].unbind(0))
    out_rows, out_cols = [], []
    for i, (fb, n_resp, student) in enumerate(zip(rows_in, resp_lens, student_rows, strict=True)):
        if fb.numel() != n_resp:
            continue  # synthetic padding row (mask copied from another sample): no contribution
        if not bool((student != 0).any()):
            continue  # no student token at all: a padding row
        if not bool(((fb == 0) | (fb == 1)).all()):
            raise ValueError(f"'{FEEDBACK_MASK_KEY}' of row {i} must contain only 0/1, got values {fb.unique().tolist()}")
        student = student.to(fb.device)[: fb.numel()]
        overlap = int(((fb != 0) & (student != 0)).sum())
        if overlap:
            raise ValueError(
                f"'{FEEDBACK_MASK_KEY}' of row {i} marks {overlap} token(s) that 'response_mask' marks as student "
                "tokens; feedback tokens must have response_mask 0"
            )
        cols = torch.nonzero(fb).flatten()
        out_rows.append(torch.full_like(cols, i))
        out_cols.append(cols)
    if not out_rows:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty
    return torch.cat(out_rows), torch.cat(out_cols)


def rl2f_actor_loss(
    config,
    model_output: dict | None = None,
    data: TensorDict | None = None,
    dp_group=None,
    *,
    wm_coef: float = 0.0,
    base_loss_fn: Callable = ppo_loss,
    **kwargs,
):
    """verl's actor loss plus ``wm_coef`` times the world-model cross-entropy on feedback tokens.

    Signature of verl's engine loss functions (``loss_fn(config, model_output, data, dp_group)``); bind
    ``config`` and ``wm_coef`` with `make_actor_loss` / `functools.partial` before `set_loss_fn`.
    ``base_loss_fn`` is verl's `ppo_loss` unless the trainer runs distillation.
    """
    if kwargs.get("student_logits") is not None:  # distillation's logits-processor call: not a policy loss
        return base_loss_fn(config=config, model_output=model_output, data=data, dp_group=dp_group, **kwargs)
    loss, metrics = base_loss_fn(config=config, model_output=model_output, data=data, dp_group=dp_group, **kwargs)

    log_probs = model_output.get("log_probs") if model_output is not None else None
    if log_probs is None or FEEDBACK_MASK_KEY not in data.keys():
        return loss, metrics

    batch_info = dict(config.global_batch_info) if config.global_batch_info else _batch_info_from(data, config)
    if config.loss_agg_mode in _TOKEN_AGG_MODES and data["prompts"].is_nested:
        # token-level aggregation needs no rows: gather the feedback log-probs straight from the engine's flat
        # output (cheaper than re-padding, and the backward touches only those positions)
        rows, cols = feedback_positions(data)
        fb_log_prob = _gather_response_positions(log_probs, data, rows, cols).unsqueeze(0)
        n_feedback = rows.numel()
        nll_sum = -fb_log_prob.detach().sum()
        ce = agg_loss(loss_mat=-fb_log_prob, loss_mask=torch.ones_like(fb_log_prob),
                      loss_agg_mode=config.loss_agg_mode, **batch_info)
    else:
        log_prob = no_padding_2_padding(log_probs, data)  # [bsz, max_resp_len], same slicing as ppo_loss
        fb_mask = aligned_feedback_mask(data, log_prob.shape[1], device=log_prob.device)
        ce = agg_loss(loss_mat=-log_prob, loss_mask=fb_mask, loss_agg_mode=config.loss_agg_mode, **batch_info)
        n_feedback = int(fb_mask.sum().item())
        nll_sum = -(log_prob.detach() * fb_mask).sum()

    if n_feedback == 0:  # nothing to predict in this micro-batch (agg_loss would divide 0 by 0 without global info)
        ce = torch.zeros((), dtype=ce.dtype, device=ce.device)
    if wm_coef:
        loss = loss + wm_coef * ce
    metrics = dict(metrics)
    metrics[WM_CE_METRIC] = Metric(value=ce.detach(), aggregation=AggregationType.SUM)
    # SUM over micro-batches, mean over DP ranks (Metric.aggregate_dp): scale by dp_size to count all ranks.
    dp_size = int(batch_info.get("dp_size", 1) or 1)
    metrics[WM_TOKENS_METRIC] = Metric(value=float(n_feedback * dp_size), aggregation=AggregationType.SUM)
    metrics[WM_NLL_SUM_METRIC] = Metric(value=float(nll_sum) * dp_size, aggregation=AggregationType.SUM)
    return loss, metrics


def per_token_ce(metrics: dict) -> float | None:
    """Mean cross-entropy per feedback token from reduced actor metrics (``wm_nll_sum / wm_tokens``: both are
    global mini-batch totals averaged over the step's mini-batches, so the ratio is the token-weighted mean)."""
    tokens = metrics.get(WM_TOKENS_METRIC)
    nll = metrics.get(WM_NLL_SUM_METRIC)
    if tokens is None or nll is None or not float(tokens) > 0:
        return None
    return float(nll) / float(tokens)


_TOKEN_AGG_MODES = ("token-mean", "token-sum")


def _gather_response_positions(log_probs: torch.Tensor, data: TensorDict, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """The entries of the engine's flat prompt+response log-probs that score response token ``cols`` of row
    ``rows``: the same left-shift by one as `no_padding_2_padding`."""
    values = log_probs.values() if log_probs.is_nested else log_probs
    prompt_lens = data["prompts"].offsets().diff()
    resp_lens = data["responses"].offsets().diff()
    seq_ends = (prompt_lens + resp_lens).cumsum(0)
    if int(seq_ends[-1]) != values.shape[0]:
        raise ValueError(f"log_probs hold {values.shape[0]} tokens but prompts+responses hold {int(seq_ends[-1])}")
    starts = (seq_ends - resp_lens - 1).to(values.device)
    return values.index_select(0, starts[rows.to(values.device)] + cols.to(values.device))


def _batch_info_from(data: TensorDict, config) -> dict:
    """Global batch info as `ppo_loss` records it (used when the base loss did not record it)."""
    return {
        "dp_size": tu.get_non_tensor_data(data=data, key="dp_size", default=1),
        "batch_num_tokens": tu.get_non_tensor_data(data=data, key="batch_num_tokens", default=None),
        "global_batch_size": tu.get_non_tensor_data(data=data, key="global_batch_size", default=None),
        "loss_scale_factor": getattr(config, "loss_scale_factor", None),
    }


def make_actor_loss(actor_config, wm_coef: float, distillation_config=None):
    """The picklable loss function the trainer sends to the actor workers with ``set_loss_fn``.

    Mirrors how verl's ``ActorRolloutRefWorker.init_model`` builds the default one
    (``partial(ppo_loss, config=actor_config)``, or ``distillation_ppo_loss`` when distillation is on).
    """
    from functools import partial

    wm_coef = float(wm_coef)
    if wm_coef < 0:
        raise ValueError(f"rl2f.world_model.coef must be >= 0, got {wm_coef}")
    if distillation_config is not None:
        from verl.trainer.distillation import distillation_ppo_loss

        base = partial(distillation_ppo_loss, distillation_config=distillation_config)
    else:
        base = ppo_loss
    return partial(rl2f_actor_loss, config=actor_config, wm_coef=wm_coef, base_loss_fn=base)
