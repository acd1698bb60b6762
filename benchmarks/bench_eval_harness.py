"""Does the evaluation harness keep the model busy? Generated tokens per second of ``python -m rl2f_plugin.eval``'s
runner (agent loop + HF backend with dynamic batching) against the model's own ``generate`` throughput on the
same prompts, with the same batch size, token cap and greedy decoding. Reports the ratio (1.0 = no overhead).

    python benchmarks/bench_eval_harness.py                      # SmolLM2-135M-Instruct (converted once, cached)
    python benchmarks/bench_eval_harness.py --model tiny --n 32  # random 2-layer model: harness overhead only
    python benchmarks/bench_eval_harness.py --model /path/to/hf_folder --batch-size 16

Three measurements on the same N arithmetic problems:
  baseline   ``model.generate`` on the rendered first-turn prompts in batches of B (no harness at all);
  harness_k1 the harness with ``rl2f_autodidact`` and K=1 (one student turn per problem: the same prompts),
             concurrency B, so the backend batches up to B requests;
  harness_k3 (context only, different prompts) K=3 with the template teacher: multi-turn tokens/s.
Timings are wall-clock on this machine; run it on an idle machine. No assertion here: figures only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time


THREADS: int | None = None  # --threads, applied to the baseline and the harness alike


def _problems(n: int, seed: int) -> list[dict]:
    import random

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        q = f"What is {a} + {b}? Think briefly, then end with 'Answer: <number>'."
        rows.append({"data_source": "bench_answer_line", "prompt": [{"role": "user", "content": q}],
                     "reward_model": {"style": "rule", "ground_truth": str(a + b)},
                     "extra_info": {"task": "bench_answer_line", "index": i, "question": q}})
    return rows


def _register_task() -> None:
    import re

    from rl2f_plugin.tasks import Task, VerifyResult, register_task

    @register_task("bench_answer_line")
    class _AnswerLine(Task):
        def verify(self, response, ground_truth, extra_info=None):
            found = re.findall(r"Answer:\s*(-?\d+)", response)
            ok = bool(found) and found[-1] == str(ground_truth)
            return VerifyResult(1.0 if ok else 0.0, found[-1] if found else None, "" if ok else "wrong answer")


def _load(model_arg: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if model_arg == "tiny":
        from transformers import LlamaConfig, LlamaForCausalLM

        from rl2f_plugin.agent_loops.testing import smollm2_tokenizer

        tok = smollm2_tokenizer()
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id or 0)
        return LlamaForCausalLM(cfg).eval(), tok, "tiny-random-llama"
    path = model_arg
    if model_arg == "smollm2":
        from rl2f_plugin.cpu_model import ensure_smollm2

        path = str(ensure_smollm2())
    tok = AutoTokenizer.from_pretrained(path)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), tok, path


def baseline(model, tok, rows, batch_size: int, max_new_tokens: int, eos_ids: list[int], pad_id: int) -> dict:
    """Plain batched ``model.generate``, run on a worker thread exactly like HFBackend runs it (on a busy
    2-core machine, torch's OpenMP pool in the main thread behaves very differently from one in a worker
    thread, so both sides must use the same kind of thread to be comparable)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as ex:
        return ex.submit(_baseline, model, tok, rows, batch_size, max_new_tokens, eos_ids, pad_id).result()


def _baseline(model, tok, rows, batch_size: int, max_new_tokens: int, eos_ids: list[int], pad_id: int) -> dict:
    import torch

    if THREADS:
        torch.set_num_threads(THREADS)

    prompts = []
    for r in rows:
        ids = tok.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True)
        prompts.append(list(ids["input_ids"]) if hasattr(ids, "keys") else list(ids))
    gen = 0
    t0 = time.perf_counter()
    for s in range(0, len(prompts), batch_size):
        chunk = prompts[s:s + batch_size]
        width = max(map(len, chunk))
        x = torch.full((len(chunk), width), pad_id)
        m = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, p in enumerate(chunk):
            x[i, width - len(p):] = torch.tensor(p)
            m[i, width - len(p):] = 1
        with torch.inference_mode():
            out = model.generate(input_ids=x, attention_mask=m, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=eos_ids, pad_token_id=pad_id)
        for row in out[:, width:].tolist():
            n = next((j + 1 for j, t in enumerate(row) if t in eos_ids), len(row))
            gen += n
    sec = time.perf_counter() - t0
    return {"generated_tokens": gen, "seconds": sec, "tokens_per_s": gen / sec}


def harness(model, tok, data: str, out: str, *, batch_size: int, max_new_tokens: int, max_turns: int,
            teacher: str) -> dict:
    from rl2f_plugin.eval.backends import HFBackend
    from rl2f_plugin.eval.runner import EvalSettings, build_trainer_config, run_eval

    cfg = build_trainer_config(None, [f"actor_rollout_ref.rollout.response_length={max_new_tokens * max_turns + 256}",
                                      "actor_rollout_ref.rollout.prompt_length=1024"])
    backend = HFBackend(model, tok, max_batch_size=batch_size, max_new_tokens=max_new_tokens, num_threads=THREADS)
    t0 = time.perf_counter()
    res = run_eval(EvalSettings(data=data, out=out, teacher=teacher, max_turns=max_turns,
                                max_new_tokens=max_new_tokens, concurrency=batch_size, progress=False,
                                validate_data=False), cfg, backend, tok, hf_model_type=model.config.model_type)
    sec = time.perf_counter() - t0
    backend.close()
    st = res["backend"]
    return {"generated_tokens": st["generated_tokens"], "seconds": sec, "tokens_per_s": st["generated_tokens"] / sec,
            "backend_busy_s": st["busy_seconds"], "busy_fraction": st["busy_seconds"] / sec,
            "batches": st["batches"], "calls": st["calls"], "errors": res["errors"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2", help="smollm2 | tiny | HF folder")
    p.add_argument("--n", type=int, default=16, help="problems")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--skip-multiturn", action="store_true")
    p.add_argument("--threads", type=int, help="torch threads for generate, both sides (default torch's)")
    p.add_argument("--json", help="also write the figures here")
    a = p.parse_args(argv)
    global THREADS
    THREADS = a.threads

    import pandas as pd
    import torch

    import rl2f_plugin  # noqa: F401

    _register_task()
    model, tok, label = _load(a.model)
    from rl2f_plugin.eval.backends import HFBackend

    probe = HFBackend(model, tok)  # same eos/pad resolution as the harness
    eos_ids, pad_id = probe.eos_token_ids, probe.pad_token_id
    rows = _problems(a.n, 0)
    with tempfile.TemporaryDirectory() as d:
        data = os.path.join(d, "bench.parquet")
        pd.DataFrame(rows).to_parquet(data)
        # warm-up (first generate call allocates caches, loads kernels)
        baseline(model, tok, rows[:2], 2, 4, eos_ids, pad_id)
        base = baseline(model, tok, rows, a.batch_size, a.max_new_tokens, eos_ids, pad_id)
        print(f"baseline: {json.dumps(base)}", flush=True)
        k1 = harness(model, tok, data, os.path.join(d, "k1.jsonl"), batch_size=a.batch_size,
                     max_new_tokens=a.max_new_tokens, max_turns=1, teacher="none")
        print(f"harness_k1: {json.dumps(k1)}", flush=True)
        k3 = None
        if not a.skip_multiturn:
            k3 = harness(model, tok, data, os.path.join(d, "k3.jsonl"), batch_size=a.batch_size,
                         max_new_tokens=a.max_new_tokens, max_turns=3, teacher="template")
    result = {"model": label, "n": a.n, "batch_size": a.batch_size, "max_new_tokens": a.max_new_tokens,
              "cpu_threads": a.threads or torch.get_num_threads(), "load_avg_1min": os.getloadavg()[0], "baseline": base, "harness_k1": k1, "harness_k3": k3,
              "ratio_k1": k1["tokens_per_s"] / base["tokens_per_s"],
              "ratio_k3": (k3["tokens_per_s"] / base["tokens_per_s"]) if k3 else None}
    print(json.dumps(result, indent=2))
    print(f"\nmodel {label}: baseline generate {base['tokens_per_s']:.1f} tok/s; harness K=1 {k1['tokens_per_s']:.1f} tok/s "
          f"(ratio {result['ratio_k1']:.2f}, backend busy {k1['busy_fraction']:.0%})"
          + (f"; harness K=3 {k3['tokens_per_s']:.1f} tok/s (ratio {result['ratio_k3']:.2f})" if k3 else ""))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
