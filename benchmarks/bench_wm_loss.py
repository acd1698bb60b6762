"""Benchmark: what does the world-model term add to the actor loss step?

One micro-batch in the exact form verl's FSDP engine hands to the loss (jagged nested prompts/responses/masks,
nested log-probs over prompt+response, ``batch_num_tokens``/``dp_size``) goes through

* baseline: verl's ``ppo_loss`` (forward + backward to the log-prob leaf), and
* ``rl2f_actor_loss`` with ``coef=0.1`` (ppo_loss + aligned feedback mask + CE term), same batch.

Reported: median milliseconds per call of each, the ratio rl2f / baseline, and the overhead in ms. The loss is a
tiny share of a real actor step (the model forward/backward dominates), so the absolute overhead per
micro-batch is the number to compare with a step's time.

Measured 2026-11-24 on the shared 2-core CPU box (load average ~10), --threads 1, 8 x (256 + <=2048) tokens:
verl ppo_loss 14.2 ms, rl2f_actor_loss 22.2 ms (ratio 1.56, +8 ms per micro-batch); with 2 threads on the same
overloaded box the extra small ops stall on OpenMP barriers and the ratio is noisy (1.4x to 6x).

Usage: python benchmarks/bench_wm_loss.py [--batch 8] [--prompt 256] [--response 2048] [--repeats 30] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def build(batch: int, prompt: int, response: int, seed: int = 0):
    from verl.utils import tensordict_utils as tu

    from rl2f_plugin.schema import FEEDBACK_MASK_KEY

    g = torch.Generator().manual_seed(seed)
    dicts = []
    for i in range(batch):
        resp = response - int(torch.randint(0, response // 4, (1,), generator=g))
        # 4 turns: student 40%, template 5%, feedback 15%, repeated
        pattern = []
        while len(pattern) < resp:
            pattern += ["s"] * (resp // 10) + ["t"] * max(resp // 80, 1) + ["f"] * (resp // 25) + ["t"]
        pattern = pattern[:resp]
        resp_mask = torch.tensor([int(c == "s") for c in pattern])
        fb_mask = torch.tensor([int(c == "f") for c in pattern])
        dicts.append({
            "prompts": torch.randint(3, 1000, (prompt - i,), generator=g),  # ragged, as in real batches
            "responses": torch.randint(3, 1000, (resp,), generator=g),
            "response_mask": resp_mask,
            "loss_mask": resp_mask,
            FEEDBACK_MASK_KEY: fb_mask,
            "old_log_probs": -torch.rand(resp, generator=g),
            "advantages": torch.randn(resp, generator=g),
        })
    td = tu.list_of_dict_to_tensordict(dicts)
    tu.assign_non_tensor(td, batch_num_tokens=int(td["loss_mask"].sum()), dp_size=1, global_batch_size=batch)
    lens = [d["prompts"].numel() + d["responses"].numel() for d in dicts]
    return td, lens


def actor_config():
    import verl
    from hydra import compose, initialize_config_dir
    from verl.utils.config import omega_conf_to_dataclass

    conf_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=conf_dir, version_base=None):
        cfg = compose(config_name="ppo_trainer", overrides=[
            "data.train_batch_size=8", "actor_rollout_ref.actor.ppo_mini_batch_size=8",
            "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=8"])
    return omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)


def time_losses(fns, td, lens, repeats):
    """Median ms per forward+backward of each loss; calls are interleaved so machine-load drift hits all alike."""
    offsets = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist())
    leaf = torch.randn(sum(lens)).requires_grad_(True)
    times = [[] for _ in fns]
    for it in range(repeats + 3):
        for k, fn in enumerate(fns):
            leaf.grad = None
            t0 = time.perf_counter()
            lp = torch.nn.functional.logsigmoid(leaf)
            loss, _ = fn(model_output={"log_probs": torch.nested.nested_tensor_from_jagged(lp, offsets)}, data=td)
            loss.backward()
            if it >= 3:
                times[k].append(time.perf_counter() - t0)
    return [statistics.median(t) * 1e3 for t in times]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--response", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (use 1 on a busy machine: with more threads than free cores every "
                         "small op waits for a descheduled OpenMP thread, which inflates the many-small-op paths)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from verl.workers.utils.losses import ppo_loss

    from rl2f_plugin.losses import make_actor_loss

    cfg = actor_config()
    td, lens = build(args.batch, args.prompt, args.response)
    base_ms, rl2f_ms = time_losses(
        [lambda **kw: ppo_loss(cfg, **kw), make_actor_loss(cfg, wm_coef=0.1)], td, lens, args.repeats)
    n_fb = int(td["feedback_mask"].sum())
    print(f"micro-batch: {args.batch} x (prompt {args.prompt} + response <= {args.response}); "
          f"{int(td['loss_mask'].sum())} student tokens, {n_fb} feedback tokens; torch threads {torch.get_num_threads()}")
    print(f"verl ppo_loss      : {base_ms:8.2f} ms (forward+backward incl. the stand-in log-prob op, median of {args.repeats})")
    print(f"rl2f_actor_loss    : {rl2f_ms:8.2f} ms")
    print(f"ratio rl2f / verl  : {rl2f_ms / base_ms:8.2f}   overhead {rl2f_ms - base_ms:+.2f} ms per micro-batch")


if __name__ == "__main__":
    main()
