"""Load test: the didactic loop at GPU-like concurrency; does anything time out, and does it say so?

One agent-loop worker of a GPU recipe runs ``train_batch_size * rollout.n / agent.num_workers`` trajectories
at once (verl 0.9.1 ``AgentLoopManager.generate_sequences`` chunks the batch over the workers and
``AgentLoopWorker.generate_sequences`` gathers every trajectory of its chunk with no concurrency limit):
1024 / 8 = 128 for ``recipes/_grpo_8gpu_base.yaml``. This benchmark drives ``--concurrency`` (default 128)
trajectories of the real ``rl2f_didactic`` loop at a time (verl's AgentLoopBase machinery, hydra
instantiation, a real tokenizer, the `self` teacher, the leak guard, the real ``math`` and ``code`` tasks:
math-verify in the verifier pool, programs in the code sandbox) against a simulated generation server
(``ScriptedServer`` of ``rl2f_plugin.agent_loops.testing``, with random per-call latency: the only mock).

The workload is built to be hard on the verifier, as a GPU run is:
  * non-integer gold answers (``3/4``, ``0.375``, ``\\frac{\\sqrt{2}}{2}``, ...), so no integer fast path;
  * the student is wrong twice, then right in another form than the gold (``0.75`` for ``3/4``): every
    trajectory must end solved at turn 3; one that does not is a correct answer scored 0;
  * number-dense teacher feedback (~30 numbers, none equal to the answer): every number is a span the leak
    guard checks for equivalence with the answer; clean feedback replaced by the fallback is a false alarm;
  * a quarter of the problems are code tasks run in the sandbox.

Reported per 1,000 trajectories: correct answers scored 0, verify timeouts, verifier queue timeouts,
leak-guard timeouts, teacher timeouts (and, for code that does not count them, its logged warnings), leaks
caught, fallbacks (generic feedback instead of the teacher's). Queueing, measured from outside the code under
test: the verifier pool's queue (around ``WorkerPool._acquire``) and the event loop's default executor (around
``asyncio.to_thread``, where the code before this change ran verifications and leak checks; 6 threads on 2
cores); and the code's own ``rl2f_verify_queue_s`` per trajectory where it has it (all its waiting: its own
executor's queue, the pool's queue, worker start-up). ``--compare REF`` runs the same workload on the code of git ref ``REF`` (a temporary
``git worktree``, in a subprocess) and prints both side by side: REF = before, the working tree = after.

The loop is configured by the GPU recipes' own ``rl2f:`` section (``recipes/_rl2f_didactic.yaml``: the `self`
teacher, K=4, the leak guard, and every time limit at its default), changed only by ``--set``.

Usage: python benchmarks/bench_load.py [--trajectories 256] [--concurrency 128] [--compare a196c6a]
       [--student-latency 1 4] [--teacher-latency 1 3] [--set leak_guard.timeout_s=30] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from fractions import Fraction

from rl2f_plugin.agent_loops.testing import ScriptedServer, make_loop, qwen_style_tokenizer, smollm2_dir, smollm2_tokenizer, trainer_config

#: (gold, wrong replies' answers, the correct answer in another form than the gold, its value)
MATH = [
    ("3/4", ["0.7", "\\frac{2}{3}"], "0.75", Fraction(3, 4)),
    ("0.375", ["\\frac{3}{7}", "0.35"], "\\frac{3}{8}", Fraction(3, 8)),
    ("\\frac{5}{2}", ["2.4", "\\frac{7}{3}"], "2.5", Fraction(5, 2)),
    ("1.25", ["\\frac{4}{5}", "1.2"], "\\frac{5}{4}", Fraction(5, 4)),
    ("\\frac{\\sqrt{2}}{2}", ["\\frac{\\sqrt{3}}{2}", "0.5"], "\\frac{1}{\\sqrt{2}}", None),
    ("-\\frac{7}{3}", ["-\\frac{5}{3}", "-2.5"], "\\frac{-7}{3}", Fraction(-7, 3)),
]
CODE_GT = {"tests": "assert sq(2) == 4\nassert sq(-3) == 9\nassert sq(0) == 0\nassert sq(11) == 121",
           "entry_point": "sq"}
CODE_REPLIES = ["The square is double the number.\n```python\ndef sq(x):\n    return 2 * x\n```",
                "Add it to itself.\n```python\ndef sq(x):\n    return x + x\n```",
                "Multiply it by itself.\n```python\ndef sq(x):\n    return x * x\n```"]
SOLVED_AT = 3  # every trajectory is scripted to be right at its third reply
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def samples(n: int) -> list[dict]:
    out = []
    for i in range(n):
        tag = f"[P{i}]"
        if i % 4 == 3:
            out.append({"raw_prompt": [{"role": "user", "content": f"{tag} Write sq(x), the square of x."}],
                        "reward_model": {"ground_truth": json.dumps(CODE_GT)}, "data_source": "code",
                        "extra_info": {"index": i, "task": "code"}, "index": i})
        else:
            gold = MATH[i % len(MATH)][0]
            out.append({"raw_prompt": [{"role": "user", "content": f"{tag} Compute the value (problem {i})."}],
                        "reward_model": {"ground_truth": gold}, "data_source": "math",
                        "extra_info": {"index": i, "task": "math"}, "index": i})
    return out


_TAG = re.compile(r"\[P(\d+)\]")


def student_reply(k: int, prompt: str) -> str:
    i = int(_TAG.search(prompt).group(1))
    if i % 4 == 3:
        return CODE_REPLIES[min(k, 2)]
    _, wrong, right, _ = MATH[i % len(MATH)]
    ans = wrong[k] if k < 2 else right
    return (f"Step 1: 12.5 * 0.4 = 5 and 7/8 - 1/8 = 0.75 of the rest. Step 2: 3.6 / 1.2 = 3. "
            f"Attempt {k + 1}: the answer is \\boxed{{{ans}}}.")


def teacher_feedback(k: int, prompt: str) -> str:
    """~30 numbers (decimals, fractions, x = ...) of which none equals the problem's answer."""
    i = int(_TAG.search(prompt).group(1))
    value = None if i % 4 == 3 else MATH[i % len(MATH)][3]
    rng = random.Random(i * 1009 + k)
    nums = []
    while len(nums) < 30:
        a, b = rng.randint(1, 99), rng.randint(2, 19)
        form = rng.choice(("dec", "frac", "int", "eq"))
        val = Fraction(a, b) if form in ("frac", "eq") else Fraction(a) if form == "int" else Fraction(a, 10)
        if value is not None and val == value or value is None and val in (Fraction(0.75), Fraction(1, 2)):
            continue
        if i % len(MATH) == 4 and abs(float(val) - 2 ** -0.5) < 0.05:
            continue
        nums.append({"dec": f"{a / 10:g}", "frac": f"{a}/{b}", "int": str(a), "eq": f"x = {a}/{b}"}[form])
    return ("Look again at your work. You used " + ", ".join(nums[:10]) + "; the intermediate values "
            + ", ".join(nums[10:20]) + " are fine, but recheck the step where " + " and ".join(nums[20:]) +
            " are combined. Do not round early.")


class LoadServer(ScriptedServer):
    """`ScriptedServer` with a random latency per call (uniform in the given ranges, seeded)."""

    def __init__(self, tokenizer, student_latency, teacher_latency, seed=0):
        super().__init__(tokenizer, student_reply, teacher_feedback, decode_prompts=True)
        self.ranges = {"student": student_latency, "teacher": teacher_latency}
        self.rng = random.Random(seed)

    async def generate(self, request_id, **kw):
        kind = "teacher" if request_id.startswith("rl2f-aux-") else "student"
        await asyncio.sleep(self.rng.uniform(*self.ranges[kind]))
        return await super().generate(request_id, **kw)


class QueueProbe:
    """Seconds each `WorkerPool._acquire` waited (the verifier pool's queue) and each ``asyncio.to_thread`` call
    waited for a thread of the event loop's default executor (where the code before this change ran every
    verification and leak check), measured from outside the code under test."""

    def __init__(self):
        from reward_fns.worker_pool import WorkerPool

        self.waits: list[float] = []
        self.thread_waits: list[float] = []
        self._lock = threading.Lock()
        to_thread = asyncio.to_thread

        async def timed_to_thread(func, *a, **kw):
            t0 = time.monotonic()

            def started(*a2, **kw2):
                with self._lock:
                    self.thread_waits.append(time.monotonic() - t0)
                return func(*a2, **kw2)

            return await to_thread(started, *a, **kw)

        asyncio.to_thread = timed_to_thread
        inner = WorkerPool._acquire

        def timed(pool, *a, **kw):
            t0 = time.monotonic()
            try:
                return inner(pool, *a, **kw)
            finally:
                with self._lock:
                    self.waits.append(time.monotonic() - t0)

        WorkerPool._acquire = timed


class LogCounter(logging.Handler):
    """Counts rl2f's own warnings about timeouts (the only trace the code before this change leaves)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.leak_guard_timeouts = 0
        self.teacher_timeouts = 0

    def emit(self, record):
        msg = record.getMessage()
        if "leak guard" in msg and "timed out" in msg:
            self.leak_guard_timeouts += 1
        elif "teacher" in msg and "timed out" in msg:
            self.teacher_timeouts += 1


def recipe_rl2f(args) -> dict:
    """The ``rl2f:`` section of the GPU recipes (``--recipe``), with ``--set key=value`` overrides (dotted keys)."""
    from omegaconf import OmegaConf

    section = OmegaConf.load(args.recipe).get("rl2f") or OmegaConf.create({})
    for item in args.set:
        key, value = item.split("=", 1)
        OmegaConf.update(section, key, _value(value), force_add=True)
    import dataclasses

    from rl2f_plugin.config import RL2FConfig

    known = {f.name for f in dataclasses.fields(RL2FConfig)}  # the code under --compare may predate a key
    dropped = sorted(set(section) - known)
    if dropped:
        print(f"(keys this code does not have, not applied: {', '.join(dropped)})", file=sys.stderr)
    return {k: v for k, v in OmegaConf.to_container(section).items() if k in known}


def _value(text: str):
    """A ``--set`` value: JSON (numbers, true/false/null, lists) where it parses, else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def run(args) -> dict:
    from rl2f_plugin import schema

    probe, logs = QueueProbe(), LogCounter()
    logging.getLogger("rl2f_plugin").addHandler(logs)
    logging.getLogger("verl.utils.tokenizer.continuous_token_wiring").setLevel(logging.ERROR)
    tok = smollm2_tokenizer() if smollm2_dir() else qwen_style_tokenizer()
    model_type = "llama" if smollm2_dir() else "qwen2"
    cfg = trainer_config(response_length=8192, prompt_length=1024, rl2f=recipe_rl2f(args),
                         overrides=[f"actor_rollout_ref.rollout.agent.num_workers={args.agent_workers}"])
    rows = samples(args.trajectories)
    outs = []
    t0 = time.monotonic()

    async def wave(batch, seed):
        server = LoadServer(tok, args.student_latency, args.teacher_latency, seed=seed)
        loops = [make_loop("rl2f_didactic", config=cfg, server_manager=server, tokenizer=tok, hf_model_type=model_type)
                 for _ in batch]
        return await asyncio.gather(*(lp.run({"temperature": 1.0, "logprobs": True}, **row) for lp, row in zip(loops, batch)))

    load0 = os.getloadavg()
    for w in range(0, len(rows), args.concurrency):
        outs += asyncio.run(wave(rows[w: w + args.concurrency], w))
    wall = time.monotonic() - t0
    load1 = os.getloadavg()
    efs = [o.extra_fields for o in outs]

    def total(key):
        return sum(int(ef.get(key, 0)) for ef in efs) if all(key in ef for ef in efs) else None

    fallbacks = total(getattr(schema, "EF_FALLBACKS", "")) if hasattr(schema, "EF_FALLBACKS") else \
        sum(int(ef[schema.EF_LEAKED_TURNS]) + int(ef[schema.EF_TEACHER_ERRORS]) for ef in efs)
    waits, thread_waits = probe.waits, probe.thread_waits
    own_wait = [float(ef[schema.EF_VERIFY_QUEUE_S]) for ef in efs] if hasattr(schema, "EF_VERIFY_QUEUE_S") else []
    return {
        "trajectories": len(efs),
        "wrongly_scored": sum(ef[schema.EF_SOLVED_AT_TURN] != SOLVED_AT for ef in efs),
        "verify_timeouts": total(getattr(schema, "EF_VERIFY_TIMEOUTS", "-")),
        "verify_queue_timeouts": total(getattr(schema, "EF_VERIFY_QUEUE_TIMEOUTS", "-")),
        "leak_guard_timeouts": total(getattr(schema, "EF_LEAK_GUARD_TIMEOUTS", "-")),
        "leak_guard_timeouts_logged": logs.leak_guard_timeouts,
        "teacher_timeouts": total(getattr(schema, "EF_TEACHER_TIMEOUTS", "-")),
        "teacher_timeouts_logged": logs.teacher_timeouts,
        "leaks": sum(int(ef[schema.EF_LEAK_COUNT]) for ef in efs),
        "fallbacks": fallbacks,
        "pool_calls": len(waits),
        "pool_wait_mean_s": sum(waits) / len(waits) if waits else 0.0,
        "pool_wait_max_s": max(waits, default=0.0),
        "thread_waits": len(thread_waits),
        "thread_wait_mean_s": sum(thread_waits) / len(thread_waits) if thread_waits else 0.0,
        "thread_wait_max_s": max(thread_waits, default=0.0),
        "traj_wait": "{:.2f} / {:.1f}".format(sum(own_wait) / len(own_wait), max(own_wait)) if own_wait else "not measured",
        "pool_size": __import__("reward_fns.worker_pool", fromlist=["get_pool"]).get_pool().size,
        "wall_s": wall, "load_before": load0[0], "load_after": load1[0],
    }


def run_at(ref: str, argv: list[str]) -> dict:
    """This benchmark on the code of git ref `ref` (a temporary worktree), in a subprocess."""
    tree = tempfile.mkdtemp(prefix="rl2f-bench-load-")
    subprocess.run(["git", "-C", REPO, "worktree", "add", "--detach", tree, ref], check=True, capture_output=True)
    try:
        env = {**os.environ, "PYTHONPATH": tree}
        out = subprocess.run([sys.executable, os.path.abspath(__file__), *argv, "--json"], env=env, cwd=tree,
                             capture_output=True, text=True, timeout=3600)
        if out.returncode:
            raise RuntimeError(f"the run on {ref} failed:\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run(["git", "-C", REPO, "worktree", "remove", "--force", tree], capture_output=True)


ROWS = [("correct answers scored 0", "wrongly_scored"), ("verify timeouts", "verify_timeouts"),
        ("verifier queue timeouts", "verify_queue_timeouts"), ("leak-guard timeouts", "leak_guard_timeouts"),
        ("  (logged warnings)", "leak_guard_timeouts_logged"), ("teacher timeouts", "teacher_timeouts"),
        ("  (logged warnings)", "teacher_timeouts_logged"), ("leaks caught", "leaks"),
        ("fallbacks (generic feedback)", "fallbacks")]


def table(results: dict[str, dict]) -> str:
    names = list(results)
    lines = [f"{'per 1,000 trajectories':32s}" + "".join(f"{n:>16s}" for n in names)]
    for label, key in ROWS:
        cells = []
        for n in names:
            r = results[n]
            v = r.get(key)
            cells.append(f"{'not counted':>16s}" if v is None else f"{1000 * v / r['trajectories']:16.1f}")
        lines.append(f"{label:32s}" + "".join(cells))
    for label, fmt in (("verifier pool: processes", "{pool_size}"), ("pool calls", "{pool_calls}"),
                       ("pool queue wait mean / max (s)", "{pool_wait_mean_s:.2f} / {pool_wait_max_s:.1f}"),
                       ("default-executor hops", "{thread_waits}"),
                       ("  their wait mean / max (s)", "{thread_wait_mean_s:.2f} / {thread_wait_max_s:.1f}"),
                       ("wait per trajectory mean/max (s)", "{traj_wait}"),
                       ("wall (s)", "{wall_s:.0f}"), ("load 1-min before -> after", "{load_before:.1f} -> {load_after:.1f}")):
        lines.append(f"{label:32s}" + "".join(f"{fmt.format(**results[n]):>16s}" for n in names))
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trajectories", type=int, default=256)
    p.add_argument("--concurrency", type=int, default=128, help="trajectories in flight at once (one worker)")
    p.add_argument("--student-latency", type=float, nargs=2, default=(1.0, 4.0), metavar=("MIN", "MAX"))
    p.add_argument("--teacher-latency", type=float, nargs=2, default=(1.0, 3.0), metavar=("MIN", "MAX"))
    p.add_argument("--recipe", default=os.path.join(REPO, "recipes", "_rl2f_didactic.yaml"),
                   help="YAML whose rl2f: section configures the loop (default: the GPU recipes' own)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of that rl2f: section, e.g. --set leak_guard.timeout_s=30")
    p.add_argument("--agent-workers", type=int, default=1,
                   help="agent-loop workers sharing this machine (rollout.agent.num_workers of one node)")
    p.add_argument("--compare", metavar="REF", help="also run the code of git ref REF (before) and print both")
    p.add_argument("--json", action="store_true", help="print one JSON line of results (used by --compare)")
    args = p.parse_args(argv)
    own = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--json"]
    if args.compare:
        i = own.index("--compare")
        own = own[:i] + own[i + 2:]
    results = {}
    if args.compare:
        results[f"before ({args.compare})"] = run_at(args.compare, own)
    results["after (this tree)" if args.compare else "this tree"] = run(args)
    if args.json:
        print(json.dumps(next(iter(results.values()))))
        return 0
    print(f"{args.trajectories} trajectories, {args.concurrency} at a time, latency student "
          f"{args.student_latency[0]:g}-{args.student_latency[1]:g}s teacher {args.teacher_latency[0]:g}-"
          f"{args.teacher_latency[1]:g}s, {os.cpu_count()} cores")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
