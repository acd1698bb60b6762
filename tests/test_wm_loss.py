"""The world-model loss against verl's real ppo_loss, data structures and normalisation.

Everything here is verl's own code path on CPU: the actor config is verl's `ppo_trainer.yaml` defaults
turned into verl's dataclass with `omega_conf_to_dataclass`; samples go through `AgentLoopOutput.as_dict`-
shaped dicts and verl's `list_of_dict_to_tensordict` (what TransferQueue stores and returns), verl's synthetic
padding row (`construct_minimal_padding_template`), verl's advantage computation for v1
(`compute_advantage_for_multi_trajectories`) and verl's micro-batching (`prepare_micro_batches`).
The only stand-in is the model: the per-token log-probs are `logsigmoid` of free leaf parameters instead of a
transformer forward (no GPU here), packed as the FSDP engine packs them (a jagged nested tensor over
prompt+response). TransferQueue itself is not started (it needs a Ray cluster); its stored format is reproduced
with verl's own `list_of_dict_to_tensordict`.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import verl
from hydra import compose, initialize_config_dir
from verl import DataProto
from verl.trainer.ppo.padding_utils import construct_minimal_padding_template
from verl.trainer.ppo.v1.utils import compute_advantage_for_multi_trajectories
from verl.utils import tensordict_utils as tu
from verl.utils.config import omega_conf_to_dataclass
from verl.utils.metric import Metric, reduce_metrics
from verl.workers.engine.utils import prepare_micro_batches
from verl.workers.utils.losses import ppo_loss
from verl.workers.utils.padding import response_from_nested, response_to_nested

from rl2f_plugin.losses import (
    WM_CE_METRIC,
    WM_NLL_SUM_METRIC,
    WM_TOKENS_METRIC,
    aligned_feedback_mask,
    make_actor_loss,
    per_token_ce,
    rl2f_actor_loss,
)
from rl2f_plugin.schema import FEEDBACK_MASK_KEY

EOS = 2


def compose_verl(*overrides):
    conf_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=conf_dir, version_base=None):
        return compose(
            config_name="ppo_trainer",
            overrides=[
                "data.train_batch_size=4",
                "actor_rollout_ref.actor.ppo_mini_batch_size=4",
                "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
                *overrides,
            ],
        )


@pytest.fixture(scope="module")
def verl_cfg():
    return compose_verl()


@pytest.fixture()
def actor_cfg(verl_cfg):
    return omega_conf_to_dataclass(verl_cfg.actor_rollout_ref.actor)


# ----------------------------------------------------------------------------------------------------------
# A didactic batch: student turn, feedback turn (teacher), student turn, ... with exact masks per token
# ----------------------------------------------------------------------------------------------------------
def _sample(uid, session, prompt_len, segments, score, with_feedback=True):
    """segments: list of (kind, n) with kind in {'student', 'feedback', 'template'} (template = chat tokens)."""
    resp_mask, fb_mask = [], []
    for kind, n in segments:
        resp_mask += [1 if kind == "student" else 0] * n
        fb_mask += [1 if kind == "feedback" else 0] * n
    resp_len = len(resp_mask)
    g = torch.Generator().manual_seed(hash((uid, session)) % 2**31)
    prompts = torch.randint(3, 100, (prompt_len,), generator=g)
    responses = torch.randint(3, 100, (resp_len,), generator=g)
    rm_scores = torch.zeros(resp_len)
    rm_scores[-1] = score
    d = {
        "prompts": prompts,
        "responses": responses,
        "response_mask": torch.tensor(resp_mask, dtype=torch.int64),
        "loss_mask": torch.tensor(resp_mask, dtype=torch.int64),
        "input_ids": torch.cat([prompts, responses]),
        "attention_mask": torch.ones(prompt_len + resp_len, dtype=torch.int64),
        "position_ids": torch.arange(prompt_len + resp_len),
        "rm_scores": rm_scores,
        "rollout_log_probs": torch.zeros(resp_len),
        "num_turns": 2 * sum(k == "student" for k, _ in segments),
        "uid": uid,
    }
    if with_feedback:
        d[FEEDBACK_MASK_KEY] = torch.tensor(fb_mask, dtype=torch.int64)
    return d, f"{uid}_{session}_0"


def _raw_samples(with_feedback=True):
    S, Fb, T = "student", "feedback", "template"
    specs = [
        ("u1", 0, 5, [(S, 4), (T, 2), (Fb, 3), (T, 1), (S, 3)], 1.0),
        ("u1", 1, 5, [(S, 6)], 0.0),
        ("u2", 0, 7, [(S, 2), (T, 2), (Fb, 4), (T, 2), (S, 2), (T, 1), (Fb, 2), (T, 1), (S, 3)], 0.0),
        ("u2", 1, 7, [(S, 5), (T, 1), (Fb, 5), (T, 1), (S, 4)], 1.0),
    ]
    return [_sample(*s, with_feedback=with_feedback) for s in specs]


def _make_params(td):
    """One leaf per sample (prompt+response long): the stand-in for the model's per-token outputs."""
    lens = (td["prompts"].offsets().diff() + td["responses"].offsets().diff()).tolist()
    g = torch.Generator().manual_seed(0)
    return [torch.randn(n, generator=g, dtype=torch.float64).float().requires_grad_(True) for n in lens]


def _log_probs(params, rows):
    """Model output as the FSDP engine returns it: nested jagged log-probs over prompt+response."""
    vals = [F.logsigmoid(params[r]) for r in rows]
    offsets = torch.tensor([0] + np.cumsum([len(v) for v in vals]).tolist())
    return torch.nested.nested_tensor_from_jagged(torch.cat(vals), offsets)


def build_batch(algo, adv_estimator="grpo", with_feedback=True, with_padding_row=True):
    raw = _raw_samples(with_feedback)
    dicts = [d for d, _ in raw]
    keys = [k for _, k in raw]
    tags = [{"status": "success"} for _ in raw]
    if with_padding_row:
        pad, _ = construct_minimal_padding_template(dicts[0], tags[0], EOS)  # verl's own padding row
        pad["uid"] = "padxyz"
        dicts.append(pad)
        keys.append("padxyz_0_0")
    for i, d in enumerate(dicts):
        d["row_id"] = torch.tensor(i)
    td = tu.list_of_dict_to_tensordict(dicts)

    # old log-probs: the actor's own log-probs before the update (as _compute_old_log_prob writes them)
    params = _make_params(td)
    with torch.no_grad():
        td["old_log_probs"] = response_from_nested(_log_probs(params, range(len(dicts))), td["response_mask"])

    # advantages: exactly the v1 trainer's path (_compute_advantage)
    data = DataProto(batch=td.select("response_mask", "rm_scores", "old_log_probs").to_padded_tensor())
    data.batch["token_level_scores"] = data.batch["rm_scores"]
    data.batch["token_level_rewards"] = data.batch["rm_scores"]
    data.non_tensor_batch["uid"] = np.array([d["uid"] for d in dicts], dtype=object)
    if adv_estimator == "gae":
        g = torch.Generator().manual_seed(1)
        data.batch["values"] = torch.randn(data.batch["response_mask"].shape, generator=g)
    data = compute_advantage_for_multi_trajectories(
        data, batch_keys=keys, adv_estimator=adv_estimator, gamma=1.0, lam=1.0, num_repeat=2, config=algo
    )
    td["advantages"] = response_to_nested(data.batch["advantages"], td["response_mask"])
    return td, params


def engine_view(td, dp_size=1, batch_num_tokens=None):
    """What `FSDPEngine.forward_backward_batch` adds before calling the loss (batch_num_tokens, dp_size)."""
    td = td.clone() if hasattr(td, "clone") else td
    n = int(td["loss_mask"].sum()) if batch_num_tokens is None else batch_num_tokens
    tu.assign_non_tensor(td, batch_num_tokens=n, dp_size=dp_size, global_batch_size=len(td) * dp_size)
    return td


def _run(loss_fn, td, params, rows=None):
    rows = td["row_id"].tolist() if rows is None else rows
    for p in params:
        p.grad = None
    loss, metrics = loss_fn(model_output={"log_probs": _log_probs(params, rows)}, data=td)
    loss.backward()
    return loss.detach(), metrics, [None if p.grad is None else p.grad.clone() for p in params]


def _positions(td, row, which):
    """Flat indices (in the sample's prompt+response log-prob vector) that score response tokens of a kind."""
    plen = int(td["prompts"].offsets().diff()[row])
    mask = td[which].unbind(0)[row] if which != "student" else td["response_mask"].unbind(0)[row]
    return {plen + j - 1 for j in torch.nonzero(mask).flatten().tolist()}


# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("adv_estimator", ["grpo", "gae"])
def test_coef_zero_is_bitwise_verl_ppo_loss(verl_cfg, actor_cfg, adv_estimator):
    td, params = build_batch(verl_cfg.algorithm, adv_estimator)
    data = engine_view(td)
    ref_loss, ref_metrics, ref_grads = _run(lambda **kw: ppo_loss(actor_cfg, **kw), data, params)
    loss, metrics, grads = _run(make_actor_loss(actor_cfg, wm_coef=0.0), data, params)
    assert torch.equal(loss, ref_loss)  # bit for bit
    for a, b in zip(ref_grads, grads, strict=True):
        assert (a is None and b is None) or torch.equal(a, b)
    assert metrics["actor/pg_loss"].values == ref_metrics["actor/pg_loss"].values
    assert WM_CE_METRIC in metrics and WM_TOKENS_METRIC in metrics  # still monitored at coef 0


@pytest.mark.parametrize("adv_estimator", ["grpo", "gae"])
def test_ce_term_equals_hand_computation(verl_cfg, actor_cfg, adv_estimator):
    td, params = build_batch(verl_cfg.algorithm, adv_estimator)
    data = engine_view(td)
    coef = 0.37
    base, _, _ = _run(lambda **kw: ppo_loss(actor_cfg, **kw), data, params)
    loss, metrics, _ = _run(make_actor_loss(actor_cfg, wm_coef=coef), data, params)

    # hand computation: sum of -log p over feedback tokens of real rows / global student-token count
    n_student = int(td["loss_mask"].sum())
    nll, n_fb = 0.0, 0
    for row in range(4):  # the 4 real samples; row 4 is verl's padding row
        lp = F.logsigmoid(params[row]).detach().double()
        for pos in _positions(td, row, FEEDBACK_MASK_KEY):
            nll += -float(lp[pos])
            n_fb += 1
    expected_ce = nll / n_student
    assert n_fb == 3 + 4 + 2 + 5
    assert metrics[WM_CE_METRIC].values[0] == pytest.approx(expected_ce, rel=1e-6)
    assert metrics[WM_TOKENS_METRIC].values[0] == n_fb
    assert metrics[WM_NLL_SUM_METRIC].values[0] == pytest.approx(nll, rel=1e-6)
    assert per_token_ce(reduce_metrics(dict(metrics))) == pytest.approx(nll / n_fb, rel=1e-6)
    assert float(loss) == pytest.approx(float(base) + coef * expected_ce, rel=1e-6)


def test_gradients_flow_to_the_right_positions(verl_cfg, actor_cfg):
    td, params = build_batch(verl_cfg.algorithm, "grpo")
    data = engine_view(td)
    _, _, g_rl = _run(lambda **kw: ppo_loss(actor_cfg, **kw), data, params)
    _, _, g_all = _run(make_actor_loss(actor_cfg, wm_coef=1.0), data, params)
    adv = td["advantages"].unbind(0)
    for row in range(len(params)):
        g_ce = g_all[row] - g_rl[row]
        ce_nz = set(torch.nonzero(g_ce.abs() > 1e-9).flatten().tolist())
        rl_nz = set(torch.nonzero(g_rl[row].abs() > 0).flatten().tolist())
        if row == 4:  # verl's synthetic padding row: nothing at all
            assert not ce_nz and not rl_nz
            continue
        assert ce_nz == _positions(td, row, FEEDBACK_MASK_KEY), row
        plen = int(td["prompts"].offsets().diff()[row])
        student_with_adv = {p for p in _positions(td, row, "student") if float(adv[row][p - plen + 1]) != 0.0}
        assert rl_nz == student_with_adv, row
        assert student_with_adv, "test batch must give every real row a non-zero advantage"


def test_padding_row_contributes_nothing(verl_cfg, actor_cfg):
    td_pad, params = build_batch(verl_cfg.algorithm, "grpo", with_padding_row=True)
    # the padding row really carries a copied (foreign) feedback mask: that is the gotcha under test
    pad_fb = td_pad[FEEDBACK_MASK_KEY].unbind(0)[4]
    assert pad_fb.numel() != td_pad["responses"].unbind(0)[4].numel() and pad_fb.sum() > 0
    fb = aligned_feedback_mask(engine_view(td_pad), width=40)
    assert fb[4].sum() == 0 and fb[:4].sum() == 14

    td_nopad, _ = build_batch(verl_cfg.algorithm, "grpo", with_padding_row=False)
    loss_fn = make_actor_loss(actor_cfg, wm_coef=0.5)
    l_pad, m_pad, g_pad = _run(loss_fn, engine_view(td_pad), params)
    l_nopad, m_nopad, g_nopad = _run(loss_fn, engine_view(td_nopad), params[:4], rows=list(range(4)))
    assert float(l_pad) == pytest.approx(float(l_nopad), rel=1e-6)
    assert m_pad[WM_CE_METRIC].values[0] == pytest.approx(m_nopad[WM_CE_METRIC].values[0], rel=1e-6)
    for a, b in zip(g_pad[:4], g_nopad, strict=True):
        torch.testing.assert_close(a, b)


def test_invariant_to_micro_batching_and_dp(verl_cfg, actor_cfg):
    td, params = build_batch(verl_cfg.algorithm, "grpo", with_padding_row=False)
    loss_fn = make_actor_loss(actor_cfg, wm_coef=0.25)
    n_tokens = int(td["loss_mask"].sum())
    full_loss, full_m, full_g = _run(loss_fn, engine_view(td), params)

    # verl's own micro-batching with micro_batch_size_per_gpu=1 and 2, and with dynamic batch size (the GPU recipes'
    # use_dynamic_bsz: rows regrouped by token count and reordered, feedback_mask carried along with each row),
    # gradients accumulated as the engine does
    seq_lens = (td["prompts"].offsets().diff() + td["responses"].offsets().diff()).tolist()
    for mbs in (1, 2, "dynamic"):
        data = engine_view(td)
        if mbs == "dynamic":
            tu.assign_non_tensor(data, use_dynamic_bsz=True, max_token_len_per_gpu=max(seq_lens) + 2)
        else:
            tu.assign_non_tensor(data, use_dynamic_bsz=False, micro_batch_size_per_gpu=mbs)
        micro_batches, order = prepare_micro_batches(data)
        if mbs == "dynamic":  # the token budget split the batch into micro-batches of regrouped rows
            assert len(micro_batches) > 1 and sorted(i for mb in order for i in mb) == list(range(len(td)))
        for p in params:
            p.grad = None
        total, ce_sum = 0.0, 0.0
        for mb in micro_batches:
            loss, m = loss_fn(model_output={"log_probs": _log_probs(params, mb["row_id"].tolist())}, data=mb)
            loss.backward()
            total += float(loss)
            ce_sum += m[WM_CE_METRIC].values[0]
        assert total == pytest.approx(float(full_loss), rel=1e-6)
        assert ce_sum == pytest.approx(full_m[WM_CE_METRIC].values[0], rel=1e-6)
        for p, g in zip(params, full_g, strict=True):
            torch.testing.assert_close(p.grad, g)

    # 2 data-parallel ranks: each sees half the batch, the global token count and dp_size=2; FSDP averages grads
    grads = [torch.zeros_like(p) for p in params]
    rank_metrics = []
    for rank_rows in ([0, 2], [1, 3]):
        shard = tu.index_select_tensor_dict(td, torch.tensor(rank_rows))
        data = engine_view(shard, dp_size=2, batch_num_tokens=n_tokens)
        _, m, g = _run(loss_fn, data, params, rows=rank_rows)
        rank_metrics.append(m)
        for r in rank_rows:
            grads[r] += g[r] / 2  # all-reduce mean over dp
    for g, ref in zip(grads, full_g, strict=True):
        torch.testing.assert_close(g, ref)
    # verl's DP metric aggregation (Metric.aggregate_dp, as TrainingWorker.train_mini_batch does) gives the
    # single-rank values back: the CE term, the feedback-token count and the NLL sum of the whole batch
    for key in (WM_CE_METRIC, WM_TOKENS_METRIC, WM_NLL_SUM_METRIC):
        agg = Metric.aggregate_dp([rm[key] for rm in rank_metrics])
        assert agg == pytest.approx(full_m[key].values[0], rel=1e-6), key


def test_batches_without_feedback_mask_are_exactly_verl(verl_cfg, actor_cfg):
    td, params = build_batch(verl_cfg.algorithm, "grpo", with_feedback=False)
    data = engine_view(td)
    ref_loss, ref_m, ref_g = _run(lambda **kw: ppo_loss(actor_cfg, **kw), data, params)
    loss, m, g = _run(make_actor_loss(actor_cfg, wm_coef=1.0), data, params)
    assert torch.equal(loss, ref_loss)
    assert set(m) == set(ref_m)  # no wm metrics
    for a, b in zip(ref_g, g, strict=True):
        assert (a is None and b is None) or torch.equal(a, b)


def test_feedback_mask_forms_dense_and_lists(verl_cfg, actor_cfg):
    td, _ = build_batch(verl_cfg.algorithm, "grpo", with_padding_row=False)
    data = engine_view(td)
    nested = aligned_feedback_mask(data, width=30)
    rows = td[FEEDBACK_MASK_KEY].unbind(0)
    # a NonTensorStack of python lists (a loop that emitted plain lists)
    as_lists = data.clone()
    del as_lists[FEEDBACK_MASK_KEY]
    tu.assign_non_tensor_stack(as_lists, FEEDBACK_MASK_KEY, [r.tolist() for r in rows])
    torch.testing.assert_close(aligned_feedback_mask(as_lists, width=30), nested)
    # dense [bsz, L] (all masks of one length, as list_of_dict_to_tensordict stacks equal shapes)
    one = [{"prompts": torch.tensor([5, 6]), "responses": torch.tensor([7, 8, 9]),
            "response_mask": torch.tensor([1, 0, 0]), "attention_mask": torch.ones(5, dtype=torch.int64),
            FEEDBACK_MASK_KEY: torch.tensor([0, 1, 1])} for _ in range(2)]
    td_dense = tu.list_of_dict_to_tensordict(one)
    assert not td_dense[FEEDBACK_MASK_KEY].is_nested
    out = aligned_feedback_mask(td_dense, width=3)
    assert out.tolist() == [[0, 1, 1], [0, 1, 1]]


def test_bad_feedback_masks_name_the_row(verl_cfg, actor_cfg):
    one = [{"prompts": torch.tensor([5, 6]), "responses": torch.tensor([7, 8, 9]),
            "response_mask": torch.tensor([1, 1, 0]), FEEDBACK_MASK_KEY: torch.tensor([0, 0, 1])},
           {"prompts": torch.tensor([5]), "responses": torch.tensor([7, 8]),
            "response_mask": torch.tensor([1, 0]), FEEDBACK_MASK_KEY: torch.tensor([1, 1])}]
    with pytest.raises(ValueError, match=r"row 1 marks 1 token\(s\) that 'response_mask'"):
        aligned_feedback_mask(tu.list_of_dict_to_tensordict(one), width=3)
    one[1][FEEDBACK_MASK_KEY] = torch.tensor([0, 2])
    with pytest.raises(ValueError, match="row 1 must contain only 0/1"):
        aligned_feedback_mask(tu.list_of_dict_to_tensordict(one), width=3)
    with pytest.raises(ValueError, match="coef must be >= 0"):
        make_actor_loss(actor_cfg, wm_coef=-1)


def test_partial_is_picklable_for_ray(verl_cfg, actor_cfg):
    import pickle

    fn = pickle.loads(pickle.dumps(make_actor_loss(actor_cfg, wm_coef=0.1)))
    assert fn.func is rl2f_actor_loss and fn.keywords["wm_coef"] == 0.1
    td, params = build_batch(verl_cfg.algorithm, "grpo")
    loss, m, _ = _run(fn, engine_view(td), params)
    assert torch.isfinite(loss) and m[WM_TOKENS_METRIC].values[0] == 14


@pytest.mark.parametrize("mode", ["seq-mean-token-sum", "seq-mean-token-mean", "token-sum"])
def test_other_loss_agg_modes_follow_verl(verl_cfg, actor_cfg, mode):
    """Non-default `actor.loss_agg_mode`s normalise the CE exactly as verl's agg_loss does for that mode."""
    actor_cfg = omega_conf_to_dataclass(compose_verl(f"actor_rollout_ref.actor.loss_agg_mode={mode}").actor_rollout_ref.actor)
    assert actor_cfg.loss_agg_mode == mode
    td, params = build_batch(verl_cfg.algorithm, "grpo")
    data = engine_view(td)
    _, m, _ = _run(make_actor_loss(actor_cfg, wm_coef=1.0), data, params)
    per_seq_sum, per_seq_n = [], []
    for row in range(4):
        lp = F.logsigmoid(params[row]).detach().double()
        pos = _positions(td, row, FEEDBACK_MASK_KEY)
        per_seq_sum.append(sum(-float(lp[p]) for p in pos))
        per_seq_n.append(len(pos))
    gbs = len(td)  # engine_view: global_batch_size = rows incl. the padding row
    expected = {
        "token-sum": sum(per_seq_sum),
        "seq-mean-token-sum": sum(per_seq_sum) / gbs,
        "seq-mean-token-mean": sum(s / n if n else 0.0 for s, n in zip(per_seq_sum, per_seq_n)) / gbs,
    }[mode]
    assert m[WM_CE_METRIC].values[0] == pytest.approx(expected, rel=1e-5)


def test_kl_loss_stays_on_student_tokens(verl_cfg):
    """With verl's KL loss on (actor.use_kl_loss), the RL side still touches only student tokens and the
    world-model term only feedback tokens."""
    actor_cfg = omega_conf_to_dataclass(
        compose_verl("actor_rollout_ref.actor.use_kl_loss=true", "actor_rollout_ref.actor.kl_loss_coef=0.5")
        .actor_rollout_ref.actor
    )
    assert actor_cfg.use_kl_loss
    td, params = build_batch(verl_cfg.algorithm, "grpo")
    g = torch.Generator().manual_seed(3)
    old = td["old_log_probs"].to_padded_tensor(0.0)
    td["ref_log_prob"] = response_to_nested(old - torch.rand(old.shape, generator=g), td["response_mask"])
    data = engine_view(td)
    _, m_rl, g_rl = _run(lambda **kw: ppo_loss(actor_cfg, **kw), data, params)
    assert "kl_loss" in m_rl
    _, _, g_all = _run(make_actor_loss(actor_cfg, wm_coef=1.0), data, params)
    for row in range(4):
        rl_nz = set(torch.nonzero(g_rl[row].abs() > 0).flatten().tolist())
        ce_nz = set(torch.nonzero((g_all[row] - g_rl[row]).abs() > 1e-9).flatten().tolist())
        assert rl_nz == _positions(td, row, "student"), row
        assert ce_nz == _positions(td, row, FEEDBACK_MASK_KEY), row


def test_micro_batch_without_feedback_tokens_adds_exactly_zero(verl_cfg, actor_cfg):
    td, params = build_batch(verl_cfg.algorithm, "grpo", with_padding_row=False)
    shard = tu.index_select_tensor_dict(td, torch.tensor([1]))  # u1/1: solved at once, no feedback turn
    for info in ({"batch_num_tokens": int(td["loss_mask"].sum())}, {}):  # with and without the engine's global info
        data = shard.clone()
        tu.assign_non_tensor(data, dp_size=1, global_batch_size=4, **info)
        if not info:
            tu.assign_non_tensor(data, batch_num_tokens=None)
        ref, _, _ = _run(lambda **kw: ppo_loss(actor_cfg, **kw), data, params, rows=[1])
        loss, m, _ = _run(make_actor_loss(actor_cfg, wm_coef=0.3), data, params, rows=[1])
        assert torch.equal(loss, ref) and m[WM_CE_METRIC].values[0] == 0.0 and m[WM_TOKENS_METRIC].values[0] == 0
