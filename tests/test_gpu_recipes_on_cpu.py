"""The GPU recipes' own settings, run on CPU through verl's real ``main_ppo``.

``recipes/rl2f_grpo_wm.yaml`` and ``recipes/rlvr_grpo.yaml`` are composed by verl's Hydra entry point with only what a
CPU must change (`CPU_MUST_CHANGE`: platform, rollout backend, attention kernel, precision, GPU counts, model and data
size, per-turn budgets sized for a 135M model on 2 cores). Everything else is the GPU recipe's: remove-padding
(``use_remove_padding: true``) and dynamic batch size (``use_dynamic_bsz: true``, ``ppo_max_token_len_per_gpu``
24576 / 32768), gradient checkpointing, GRPO (n=8; 4 in the RL²F run, `RL2F_SIZE`), 4 student turns, the ``self``
teacher with its leak guard, the world-model loss (coef 0.1), greedy validation before training and at the last step,
save_freq / test_freq.

The one GPU-only kernel is flash-attn's varlen attention, which verl's remove-padding path relies on for packed
rows. On CPU the model runs ``attn_implementation=rl2f_packed_sdpa`` (`rl2f_plugin.cpu.packed_attention`); the
first part of this file checks, on verl's own packing, that it gives the padded path's log-probs and gradients.

The RL²F run is two runs of one experiment, 2 training steps in all (5.3 min on 2 quiet cores): run 1 trains
step 1 (validation with the self teacher before and after, checkpoint at the last step); run 2 resumes from that
checkpoint (``trainer.resume_mode=auto``) with ``total_training_steps=2`` on a data set whose epoch is 1 step, so step
2 is in the second epoch: it must run, end at step 2 and save ``global_step_2`` (verl's loop otherwise stops at the
end of ``total_epochs`` without its last checkpoint and validation).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from main_ppo_checks import check_updates_reach_the_rollout, read_events, read_metrics

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
RUN_TIMEOUT_S = int(os.environ.get("RL2F_E2E_TIMEOUT", "2400"))

STUDENT_TOKENS, TEACHER_TOKENS = 16, 24  # distinct, so the rollout log tells a teacher request from a student one

#: What a 2-core CPU must change in a GPU recipe, and nothing else.
CPU_MUST_CHANGE = [
    # platform (VERL_PLATFORM=cpu in the environment) and GPU counts: one training process on one logical GPU
    "trainer.device=cpu", "trainer.n_gpus_per_node=1",
    "ray_kwargs.ray_init.num_cpus=16", "+ray_kwargs.ray_init.num_gpus=1",
    "transfer_queue.backend.SimpleStorage.num_data_storage_units=1",
    # rollout backend: rl2f's transformers replica instead of vLLM (no TP), one agent-loop and one reward worker
    "actor_rollout_ref.rollout.name=hf", "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
    "actor_rollout_ref.rollout.agent.num_workers=1", "reward.num_workers=1", "data.dataloader_num_workers=0",
    # attention: flash-attn's varlen kernel does not exist on CPU (remove-padding stays on)
    "+actor_rollout_ref.model.override_config.attn_implementation=rl2f_packed_sdpa",
    # FSDP1 (verl's default strategy) needs an accelerator: FSDP2, as the CPU recipes
    "actor_rollout_ref.actor.strategy=fsdp2", "actor_rollout_ref.actor.fsdp_config.strategy=fsdp2",
    "actor_rollout_ref.ref.fsdp_config.strategy=fsdp2",
    # precision: fp32 actor (no bf16 autocast on the CPU actor; the CPU recipes' measured setting)
    "+actor_rollout_ref.actor.fsdp_config.mixed_precision={param_dtype:fp32,reduce_dtype:fp32,buffer_dtype:fp32}",
    # model and data size: 1 prompt a step (one GRPO group), one mini-batch, short replies
    "data.train_batch_size=1", "actor_rollout_ref.actor.ppo_mini_batch_size=1", "data.max_prompt_length=128",
]
# RL²F: a GRPO group of 4 (the recipe's 8, which tests/test_recipes.py checks composed, only repeats the same work)
RL2F_SIZE = ["actor_rollout_ref.rollout.n=4", "data.max_response_length=160", f"rl2f.max_student_tokens={STUDENT_TOKENS}",
             f"rl2f.teacher.max_tokens={TEACHER_TOKENS}"]
RLVR_SIZE = [f"data.max_response_length={STUDENT_TOKENS}"]


# ------------------------------------------------------------------ the attention on verl's packed rows -------
@pytest.fixture(scope="module")
def gqa_model_dir(tmp_path_factory):
    """A small Llama with SmolLM2's layout (grouped-query heads, tied embeddings), random weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=96, intermediate_size=192, num_hidden_layers=2,
                      num_attention_heads=3, num_key_value_heads=1, head_dim=32, max_position_embeddings=256,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    path = tmp_path_factory.mktemp("gqa_llama")
    LlamaForCausalLM(cfg).save_pretrained(path)
    return str(path)


def _verl_no_padding_batch(lengths: list[int], vocab: int = 128):
    """A left/right padded batch (prompts left-, responses right-padded, as verl's rollout writes them) turned into
    the jagged micro-batch the FSDP engine packs, by verl's own `left_right_2_no_padding`."""
    from tensordict import TensorDict

    from verl.workers.utils.padding import left_right_2_no_padding

    g = torch.Generator().manual_seed(1)
    prompt_w, resp_w = 8, max(lengths) - 3
    rows = len(lengths)
    prompts = torch.zeros(rows, prompt_w, dtype=torch.long)
    responses = torch.zeros(rows, resp_w, dtype=torch.long)
    attention = torch.zeros(rows, prompt_w + resp_w, dtype=torch.long)
    for i, n in enumerate(lengths):
        p = 3 + i % 4  # prompt tokens of this row, then n - p response tokens
        prompts[i, prompt_w - p:] = torch.randint(3, vocab, (p,), generator=g)
        responses[i, : n - p] = torch.randint(3, vocab, (n - p,), generator=g)
        attention[i, prompt_w - p: prompt_w + n - p] = 1
    position = (attention.cumsum(1) - 1).clamp(min=0)
    td = TensorDict({"prompts": prompts, "responses": responses, "input_ids": torch.cat([prompts, responses], 1),
                     "attention_mask": attention, "position_ids": position,
                     "response_mask": attention[:, prompt_w:]}, batch_size=[rows])
    return left_right_2_no_padding(td)


def _log_probs(model, input_ids, position_ids, attention_mask=None):
    logits = model(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask, use_cache=False).logits
    return torch.gather(logits.float().log_softmax(-1)[:, :-1], -1, input_ids[:, 1:, None])[..., 0]


def test_packed_attention_matches_the_padded_path_on_verls_packing(gqa_model_dir):
    """verl's remove-padding inputs (one row of every sequence, position ids restarting per sequence, no mask, as
    ``FSDPEngine.prepare_model_inputs`` builds them from verl's jagged micro-batch) through ``rl2f_packed_sdpa`` give
    each sequence the log-probs and the gradients of the padded batch with transformers' ``sdpa``. A causal mask
    over the whole packed row (what attention without the sequence boundaries computes) does not."""
    from transformers import AutoModelForCausalLM

    from rl2f_plugin.cpu import packed_attention

    packed_attention.register()
    data = _verl_no_padding_batch([9, 23, 5, 17, 30])
    ids, pos = data["input_ids"], data["position_ids"]
    lengths = ids.offsets().diff().tolist()

    padded_model = AutoModelForCausalLM.from_pretrained(gqa_model_dir, attn_implementation="sdpa")
    size = (len(lengths), max(lengths))  # as verl's padded path (its offsets are int32: give the size explicitly)
    padded_ids = torch.nested.to_padded_tensor(ids, 0, output_size=size)
    mask = (torch.arange(size[1])[None] < torch.tensor(lengths)[:, None]).long()
    ref = _log_probs(padded_model, padded_ids, torch.nested.to_padded_tensor(pos, 0, output_size=size), mask)
    (ref * mask[:, 1:]).sum().backward()

    packed_model = AutoModelForCausalLM.from_pretrained(gqa_model_dir, attn_implementation=packed_attention.ATTENTION)
    flat = _log_probs(packed_model, ids.values()[None], pos.values()[None])[0]
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    per_seq = [flat[s: s + n - 1] for s, n in zip(starts, lengths)]  # drop the cross-sequence position at each end
    sum(x.sum() for x in per_seq).backward()
    for i, n in enumerate(lengths):
        torch.testing.assert_close(per_seq[i], ref[i, : n - 1], rtol=1e-5, atol=1e-5)
    for (name, p), q in zip(padded_model.named_parameters(), packed_model.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)

    # the boundaries matter: one causal sequence over the packed row is a different model output
    whole = _log_probs(packed_model, ids.values()[None], torch.arange(ids.values().numel())[None])[0]
    assert (whole[starts[1]: starts[1] + lengths[1] - 1] - per_seq[1]).abs().max() > 1e-2


def test_packed_attention_leaves_other_calls_to_sdpa(gqa_model_dir):
    """A padded batch (2-D mask) through ``rl2f_packed_sdpa`` is transformers' ``sdpa`` exactly, so one
    ``attn_implementation`` serves verl's padded and remove-padding paths."""
    from transformers import AutoModelForCausalLM

    from rl2f_plugin.cpu import packed_attention

    packed_attention.register()
    ids = torch.randint(3, 128, (3, 12), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        a = _log_probs(AutoModelForCausalLM.from_pretrained(gqa_model_dir, attn_implementation="sdpa"), ids, pos, mask)
        b = _log_probs(AutoModelForCausalLM.from_pretrained(gqa_model_dir, attn_implementation=packed_attention.ATTENTION),
                       ids, pos, mask)
    assert torch.equal(a, b)


def test_packed_segments_follow_transformers_rule():
    from transformers.masking_utils import find_packed_sequence_indices

    from rl2f_plugin.cpu.packed_attention import packed_segments

    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3, 5, 6]])  # a jump (3 -> 5) starts a sequence too
    flat, sequences, longest = packed_segments(pos)
    seq_ids = find_packed_sequence_indices(pos)[0]
    assert sequences == int(seq_ids.max()) + 1 == 4 and longest == 4
    assert (flat // longest).tolist() == seq_ids.tolist()
    assert (flat % longest).tolist() == [0, 1, 2, 0, 1, 0, 1, 2, 3, 0, 1]


# ------------------------------------------------------------------ the recipes through main_ppo --------------
@pytest.fixture(scope="module")
def model_dir():
    from rl2f_plugin.cpu_model import ensure_smollm2

    return str(ensure_smollm2())


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The CPU default task, 1 training problem (an epoch is 1 step of 1 prompt x 8) and 2 held-out ones."""
    out = tmp_path_factory.mktemp("gpu_recipe_data")
    subprocess.run([sys.executable, str(REPO / "examples/data_preprocess/cpu_default_data.py"),
                    "--train-size", "1", "--test-size", "2", "--out-dir", str(out)],
                   check=True, capture_output=True, timeout=300)
    return out


def main_ppo(recipe: str, overrides: list[str], work: Path, out: Path) -> dict:
    """``python -m verl.trainer.main_ppo`` as a user runs it; returns the metrics by step, the rollout log and the
    composed config Hydra saved."""
    work.mkdir(parents=True, exist_ok=True)
    rollout_log, metrics_log = work / "rollout.jsonl", work / "metrics.jsonl"
    env = {**os.environ, "VERL_PLATFORM": "cpu", "RL2F_CPU_ROLLOUT_LOG": str(rollout_log),
           "VERL_FILE_LOGGER_PATH": str(metrics_log), "HF_HUB_OFFLINE": "1", "RAY_DEDUP_LOGS": "0", "RAY_ADDRESS": ""}
    cmd = [sys.executable, "-m", "verl.trainer.main_ppo", f"--config-path={RECIPES}", f"--config-name={recipe}",
           *CPU_MUST_CHANGE, "trainer.logger=[console,file]", f"trainer.default_local_dir={out}",
           f"hydra.run.dir={work}/hydra", *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=env, cwd=work)
    (work / "stdout.log").write_text(proc.stdout)
    (work / "stderr.log").write_text(proc.stderr)
    assert proc.returncode == 0, f"main_ppo {recipe} failed (logs in {work}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    import yaml

    return {"metrics": read_metrics(metrics_log), "events": read_events(rollout_log),
            "config": yaml.safe_load((work / "hydra" / ".hydra" / "config.yaml").read_text()),
            "output": proc.stdout + proc.stderr}


def check_gpu_settings_kept(cfg: dict, max_token_len: int, n: int = 8) -> None:
    model, actor = cfg["actor_rollout_ref"]["model"], cfg["actor_rollout_ref"]["actor"]
    assert model["use_remove_padding"] is True and model["enable_gradient_checkpointing"] is True
    assert actor["use_dynamic_bsz"] is True and actor["ppo_max_token_len_per_gpu"] == max_token_len
    assert cfg["actor_rollout_ref"]["rollout"]["n"] == n and actor["use_kl_loss"] is False
    assert cfg["trainer"]["save_freq"] == 50 and cfg["trainer"]["test_freq"] == 20


def check_trained(metrics: dict, step: int) -> None:
    m = metrics[step]
    for key in ("actor/pg_loss", "actor/grad_norm", "critic/score/mean", "timing_s/update_actor"):
        assert math.isfinite(float(m[key])), f"step {step}: {key}={m.get(key)}"


def checkpoint_steps(out: Path) -> list[int]:
    return sorted(int(p.name.split("_")[-1]) for p in out.glob("global_step_*") if (p / "actor").is_dir())


# In CI. Measured 2026-12-03 on a clean clone, host CPU steal < 1%: 5.3 min (run 1: 169 s, of which the step 80 s
# and validation 12 s; run 2 ~140 s), the RLVR test 1.8 min (two steps 58 s; the rest is start-up).
@pytest.mark.timeout(2 * RUN_TIMEOUT_S + 300)
def test_rl2f_grpo_wm_on_cpu_validates_checkpoints_and_resumes_past_an_epoch(model_dir, data_dir, tmp_path):
    out = tmp_path / "checkpoints"
    data = [f"actor_rollout_ref.model.path={model_dir}", f"data.train_files={data_dir}/train.parquet",
            f"data.val_files={data_dir}/test.parquet"]
    # run 1: validation before training (self teacher), 1 step = one epoch, validation + checkpoint at the last
    first = main_ppo("rl2f_grpo_wm", data + RL2F_SIZE + ["trainer.total_training_steps=1"], tmp_path / "run1", out)
    check_gpu_settings_kept(first["config"], 32768, n=4)
    assert first["config"]["rl2f"]["teacher"]["name"] == "self" and first["config"]["rl2f"]["max_turns"] == 4
    assert "rl2f_packed_sdpa: packed forward" in first["output"], "the actor never ran a packed (remove-padding) forward"
    metrics = first["metrics"]
    check_trained(metrics, 1)
    # the world-model loss saw the feedback tokens through remove-padding and dynamic batch size
    assert float(metrics[1]["actor/wm_tokens"]) > 0 and math.isfinite(float(metrics[1]["actor/wm_ce"]))
    assert 0 < float(metrics[1]["actor/wm_ce_per_token"]) < 20
    val_keys = [k for k in metrics[0] if k.startswith("val-core/")]
    assert val_keys, f"no validation before training: {sorted(metrics[0])[:20]}"
    assert any(k.startswith("val-core/") for k in metrics[1]), "no validation at the last step"
    # the last validation ran on the step-1 weights and asked the self teacher for feedback
    final_val = [e for e in first["events"] if e["event"] == "request" and e["global_steps"] == 1]
    assert final_val and any(e["max_tokens"] == TEACHER_TOKENS for e in final_val), "no teacher call in validation"
    assert checkpoint_steps(out) == [1]
    saved = next(e for e in first["events"] if e["event"] == "update_weights" and e["global_steps"] == 1)

    # run 2: resume from global_step_1 and train to step 2, which lies in the data's second epoch
    second = main_ppo("rl2f_grpo_wm", data + RL2F_SIZE + ["trainer.total_training_steps=2", "trainer.resume_mode=auto",
                                                          "trainer.val_before_train=false"], tmp_path / "run2", out)
    assert sorted(second["metrics"]) == [2], f"resumed run logged steps {sorted(second['metrics'])}"
    check_trained(second["metrics"], 2)
    assert int(second["metrics"][2]["training/epoch"]) == 1, "step 2 did not run in the data's second epoch"
    assert float(second["metrics"][2]["actor/wm_tokens"]) > 0
    assert any(k.startswith("val-core/") for k in second["metrics"][2]), "no validation at the last step"
    assert checkpoint_steps(out) == [1, 2]
    assert (out / "latest_checkpointed_iteration.txt").read_text().strip() == "2"
    # the resumed run started from the saved weights: its first sync to the rollout carries the step-1 checksum
    first_sync = next(e for e in second["events"] if e["event"] == "update_weights")
    assert first_sync["checksum"] == pytest.approx(saved["checksum"], rel=1e-9)


@pytest.mark.timeout(RUN_TIMEOUT_S + 300)
def test_rlvr_grpo_on_cpu_trains_validates_and_checkpoints(model_dir, data_dir, tmp_path):
    out = tmp_path / "checkpoints"
    # fp32 rollout, as the actor: the strictest log-prob check; weight decay off, so weights move only by the loss.
    # An entropy bonus gives every step a gradient: with 1 problem x 8 samples the group often earns one reward for
    # all (no GRPO advantage), and a step without a gradient cannot show that updated weights reach the rollout.
    run = main_ppo("rlvr_grpo", [f"actor_rollout_ref.model.path={model_dir}", f"data.train_files={data_dir}/train.parquet",
                                 f"data.val_files={data_dir}/test.parquet", "trainer.total_training_steps=2",
                                 "trainer.val_before_train=false", "actor_rollout_ref.rollout.dtype=float32",
                                 "actor_rollout_ref.actor.optim.weight_decay=0.0",
                                 "actor_rollout_ref.actor.entropy_coeff=0.01", *RLVR_SIZE], tmp_path / "run", out)
    check_gpu_settings_kept(run["config"], 24576)
    assert "rl2f_packed_sdpa: packed forward" in run["output"]
    for step in (1, 2):
        check_trained(run["metrics"], step)
        assert float(run["metrics"][step]["actor/grad_norm"]) > 0, f"step {step}: no gradient despite the entropy bonus"
    assert any(k.startswith("val-core/") for k in run["metrics"][2]), "no validation at the last step"
    assert checkpoint_steps(out) == [2]
    # the updates reach the rollout: step 2 generates on the step-1 weights, its log-probs are the actor's
    check_updates_reach_the_rollout(run["metrics"], run["events"], probs_diff_max=1e-2, probs_diff_mean=1e-3)
    assert next(e for e in run["events"] if e["event"] == "init")["dtype"] == "torch.float32"
