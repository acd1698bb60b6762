"""Seconds per training step and peak memory of the CPU recipes, through verl's real main_ppo.

    python benchmarks/bench_cpu_step.py [--steps 3] [--recipes rlvr_cpu,rl2f_cpu] [--json out.json]

For each recipe it runs ``main_ppo`` (VERL_PLATFORM=cpu, SmolLM2-135M-Instruct, reasoning-gym basic_arithmetic)
for ``--steps`` steps and reports, from verl's own timing metrics (``timing_s/*``, file logger):

* seconds per step (mean over steps 2..N: step 1 pays one-off warm-up; step 1 is shown separately),
* the share of step time in generation (``gen``: rollout incl. the agent loop, teacher and reward), log-prob
  (``old_log_prob`` + ``ref``), the actor update (``update_actor``) and weight sync (``update_weights``),
* peak memory: the largest total resident memory of the whole process tree (driver, Ray, workers, rollout
  server; sampled every 0.5 s), plus the actor's and the rollout server's own peak RSS.

The RLVR recipe is the baseline: for the others the ratio of seconds per step to it is printed. Nothing is
asserted; numbers depend on the machine and on what else runs on it (the load average is printed).

Measured 2026-11-27 (2 cores, 24 GB, torch 2.13 CPU, ``--steps 3``, quiet machine; the ``hf`` rollout's
continuous-batching engine in bf16, verl's TIS rollout correction on, template teacher):

    recipe       s/step  step1 s  x base  tokens    gen  logprob  update   sync  other  peak GB  actor GB  rollout GB
    rlvr_cpu       40.2     51.1    1.00    2482    15%      18%     63%     4%     0%    12.80      5.52        2.42
    rl2f_cpu       75.0     91.4    1.87    5056    21%      20%     55%     3%     0%    15.66      7.85        2.68

(an earlier run the same day: 41.0 and 72.6 s/step, 1.77x). Generation per step: RLVR 6-8 s for 32 replies, RL²F
14-16 s for 32 first replies + 32 retries with the feedback turn (its chain of two turns is the floor: a retry waits
for its first answer). The rest of the RL²F step is the actor's on longer sequences (padded to 64 + 144 tokens
against 64 + 48): log-prob 14-19 s vs 7-9 s, update 39-48 s vs 25.5 s.

Before the engine (2026-11-24, per-wave fp32 ``generate``, self teacher, other jobs sharing the machine): RLVR 42.9
s/step, RL²F 125 s for its low-load step 1 (2.9x; 220 s under load), generation 45-60% of the RL²F step.
"peak GB" sums RSS over the whole process tree (Ray's shared object store pages are counted in every process that
maps them, so it over-states); the actor's own peak RSS is 5.5-7.9 GB (fp32 weights + grads + AdamW for 135M
parameters, plus 49k-vocabulary logits), the rollout server's ~2.5 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PARTS = {"generation": ["timing_s/gen"], "log_prob": ["timing_s/old_log_prob", "timing_s/ref"],
         "update": ["timing_s/update_actor"], "weight_sync": ["timing_s/update_weights"]}


def tree_rss_bytes(pid: int) -> int:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root] + root.children(recursive=True)
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def prepare(work: Path) -> tuple[str, Path]:
    sys.path.insert(0, str(REPO))
    from rl2f_plugin.cpu_model import ensure_smollm2

    model = str(ensure_smollm2())
    data = work / "data"
    subprocess.run([sys.executable, str(REPO / "examples/data_preprocess/reasoning_gym_data.py"), "--generators",
                    "basic_arithmetic", "--train-size", "32", "--test-size", "4", "--seed", "0", "--out-dir", str(data),
                    "--gen-config", json.dumps({"basic_arithmetic": {"min_terms": 2, "max_terms": 2, "min_digits": 1,
                                                                     "max_digits": 1}})],
                   check=True, capture_output=True, timeout=600)
    return model, data


def run(recipe: str, steps: int, model: str, data: Path, work: Path, extra: list[str], label: str = "") -> dict:
    out = work / (f"{recipe}.{label}" if label else recipe)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "VERL_PLATFORM": "cpu", "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": "",
           "VERL_FILE_LOGGER_PATH": str(out / "metrics.jsonl"), "RL2F_CPU_ROLLOUT_LOG": str(out / "rollout.jsonl"),
           "RL2F_OUTPUT_DIR": str(out)}
    cmd = [sys.executable, "-m", "verl.trainer.main_ppo", f"--config-path={REPO / 'recipes'}", f"--config-name={recipe}",
           f"actor_rollout_ref.model.path={model}", f"data.train_files={data}/train.parquet",
           f"data.val_files={data}/test.parquet", f"trainer.total_training_steps={steps}", f"hydra.run.dir={out}/hydra",
           *extra]
    t0 = time.time()
    with open(out / "train.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=out)
        peak = [0]
        done = threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], tree_rss_bytes(proc.pid))
                done.wait(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        rc = proc.wait()
        done.set()
        sampler.join()
    wall = time.time() - t0
    if rc != 0:
        raise SystemExit(f"{recipe}: main_ppo exited {rc}; see {out / 'train.log'}")
    metrics: dict[int, dict] = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        metrics.setdefault(rec["step"], {}).update(rec["data"])
    events = [json.loads(x) for x in (out / "rollout.jsonl").read_text().splitlines()]
    steady = [metrics[s] for s in sorted(metrics) if s >= 2] or [metrics[min(metrics)]]
    step_s = statistics.mean(float(m["timing_s/step"]) for m in steady)
    shares = {}
    for part, keys in PARTS.items():
        shares[part] = statistics.mean(sum(float(m.get(k, 0.0)) for k in keys) / float(m["timing_s/step"]) for m in steady)
    shares["other"] = max(0.0, 1.0 - sum(shares.values()))
    # padding share of a padded forward: 1 - mean / max sequence length (prompt + response, verl's length metrics);
    # what remove-padding stops computing (a micro-batch's own max is <= the step's, so this is an upper bound)
    seq_mean = statistics.mean(float(m["prompt_length/mean"]) + float(m["response_length/mean"]) for m in steady)
    seq_max = statistics.mean(float(m["prompt_length/max"]) + float(m["response_length/max"]) for m in steady)
    return {
        "recipe": recipe, "variant": label, "steps": steps, "wall_s": round(wall, 1),
        "load_avg": os.getloadavg(), "padding_share": round(1.0 - seq_mean / seq_max, 3),
        "step1_s": round(float(metrics[min(metrics)]["timing_s/step"]), 2),
        "step_s": round(step_s, 2),
        "tokens_per_step": statistics.mean(float(m.get("perf/total_num_tokens", 0)) for m in steady),
        "shares": {k: round(v, 3) for k, v in shares.items()},
        "peak_tree_rss_gb": round(peak[0] / 1024**3, 2),
        "peak_actor_rss_gb": round(max(float(m.get("actor/perf/max_memory_allocated_gb", 0)) for m in metrics.values()), 2),
        "peak_rollout_rss_gb": round(max((e.get("peak_rss_gb", 0) for e in events), default=0), 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--recipes", default="rlvr_cpu,rl2f_cpu")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--workdir", default=None)
    p.add_argument("--variant", action="append", default=[], metavar="NAME=OVERRIDE[,OVERRIDE...]",
                   help="run every recipe once per variant (its Hydra overrides added), back to back; repeatable. "
                        "Ratios are then against the first variant of the same recipe")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    a = p.parse_args(argv)
    variants = [(v.split("=", 1)[0], [o for o in v.split("=", 1)[1].split(",") if o]) for v in a.variant] or [("", [])]
    work = Path(a.workdir or tempfile.mkdtemp(prefix="rl2f_bench_cpu_"))
    model, data = prepare(work)
    print(f"load average before: {os.getloadavg()}  cores: {os.cpu_count()}  workdir: {work}")
    results = [run(r, a.steps, model, data, work, a.overrides + extra, label)
               for r in a.recipes.split(",") for label, extra in variants]
    print(f"\n{'recipe':10} {'variant':8} {'s/step':>8} {'step1 s':>8} {'x base':>7} {'tokens':>7} {'pad':>5} {'gen':>6} "
          f"{'logprob':>8} {'update':>7} {'sync':>6} {'other':>6} {'peak GB':>8} {'actor GB':>9} {'rollout GB':>11}  load")
    for r in results:
        if len(variants) > 1:  # against the first variant of the same recipe
            base = next(b for b in results if b["recipe"] == r["recipe"])
        else:
            base = next((b for b in results if b["recipe"] == "rlvr_cpu"), results[0])
        s = r["shares"]
        print(f"{r['recipe']:10} {r['variant']:8} {r['step_s']:8.1f} {r['step1_s']:8.1f} {r['step_s'] / base['step_s']:7.2f} "
              f"{r['tokens_per_step']:7.0f} {r['padding_share']:5.0%} {s['generation']:6.0%} {s['log_prob']:8.0%} "
              f"{s['update']:7.0%} {s['weight_sync']:6.0%} {s['other']:6.0%} {r['peak_tree_rss_gb']:8.2f} "
              f"{r['peak_actor_rss_gb']:9.2f} {r['peak_rollout_rss_gb']:11.2f}  {r['load_avg'][0]:.1f}")
    print(f"load average after: {os.getloadavg()}")
    if a.json:
        Path(a.json).write_text(json.dumps({"load_avg": os.getloadavg(), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
