"""Benchmark: does the didactic loop keep a batch of trajectories concurrent, and what CPU does it add per turn?

A generation server with a fixed simulated latency (``asyncio.sleep``; ``ScriptedServer`` from
``rl2f_plugin.agent_loops.testing``) serves B trajectories x K student turns through the real
``rl2f_didactic`` loop (verl's AgentLoopBase machinery, hydra instantiation, Continuous Token merges, a real
tokenizer and chat template, the `self` teacher on the same server, the leak guard, the real ``exact`` task's
verifier). Every answer is wrong, so each trajectory runs all K student turns and K-1 teacher turns.

Baseline: the *same* server calls alone: B concurrent coroutines that each await the same sequence of
``generate`` calls as one loop trajectory -- its K student calls *and* its K-1 teacher calls (the `self`
teacher's generate calls are server calls too), with the recorded prompts, same latency, same server object --
with no loop logic in between. Baseline and loop runs alternate, so a change in machine load hits both.

Reported:
  * wall-time ratio loop / baseline (target: within 5%, i.e. <= 1.05), as the ratio of the medians and as the
    median/min/max of the per-repeat paired ratios;
  * CPU overhead per student turn = (process CPU time of the loop run - that of the baseline) / (B*K)
    (target: < 1 ms). Process CPU time includes the executor threads verl's helpers use;
  * the load average before and after (2 cores shared with other jobs: wall figures depend on it).

Measured 2026-11-24 ~08:50 UTC (SmolLM2 tokenizer, B=64, K=4, latency 0.5 s, 7 repeats), teacher=self:
  before (659e5e1): ratio 1.084 (paired median 1.084, min 1.048), 1.43 ms CPU/turn   load 5.95 -> 5.22
  after:            ratio 1.071 (paired median 1.054, min 1.046), 0.73 ms CPU/turn   load 5.47 -> 4.99
  after, teacher=template: ratio 1.046 (paired median 1.046, min 1.040), 0.42 ms CPU/turn (was 0.67)  load 7.57 -> 7.66
  after, teacher=self, latency 2.0 s (3 repeats): ratio 1.005 (paired 1.005..1.008), 0.69 ms CPU/turn  load 7.82 -> 7.07
  Where the CPU went: the `self` teacher prompt (~400 tokens) was rendered and tokenised from scratch per call
  in a worker thread (~1 ms; the byte-level pre-tokenizer regex dominates), and each feedback turn was
  tokenised by two chat-template renders in a worker thread. Now (rl2f_plugin/agent_loops/prompt_tokens.py)
  prompt pieces are tokenised once per trajectory (template header once per process) and the feedback turn
  once, on the event loop, with ids proven equal to the builder's (tests/test_prompt_tokens.py).
  Not met: the 5% wall target at 0.5 s latency on this loaded machine; the remaining per-turn CPU is the
  verifier's thread hop, decoding, verl's initial-prompt render and tokenising genuinely new text.

Usage: python benchmarks/bench_agent_loop.py [--batch 64] [--turns 4] [--latency 0.5] [--repeats 7]
       [--tokenizer smollm2|qwen_style] [--teacher self|template] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import statistics
import sys
import logging
import os
import time

from rl2f_plugin.agent_loops.testing import ScriptedServer, make_loop, qwen_style_tokenizer, smollm2_dir, smollm2_tokenizer, trainer_config

PROBLEM = "Tom has 17 apples and buys 25 more. He gives 9 to a friend. How many apples does he have now?"
SAMPLE = {"raw_prompt": [{"role": "user", "content": PROBLEM}], "reward_model": {"ground_truth": "33"},
          "data_source": "exact", "extra_info": {"index": 0}, "index": 0}
WRONG = ["Let me work it out. 17 + 25 = 42, and 42 - 9 = 32. The answer is 32.",
         "Re-checking: 17 + 25 = 41, then 41 - 9 = 32. So the answer is 32.",
         "Again: 17 + 25 = 42, 42 - 9 = 34. The answer is 34.",
         "Final attempt: the answer is 31."]
FEEDBACK = ["Look again at the subtraction in your last step; count down carefully from 42."]


# verl logs this once per loop instance for model types without a dedicated builder (SmolLM2 is "llama")
logging.getLogger("verl.utils.tokenizer.continuous_token_wiring").setLevel(logging.ERROR)


def build(args):
    tok = smollm2_tokenizer() if args.tokenizer == "smollm2" else qwen_style_tokenizer()
    model_type = "llama" if args.tokenizer == "smollm2" else "qwen2"
    cfg = trainer_config(response_length=2048, prompt_length=1024,
                         rl2f={"max_turns": args.turns, "teacher": {"name": args.teacher}})
    return tok, model_type, cfg


def make_loops(args, tok, model_type, cfg, server):
    """verl instantiates one loop per trajectory with hydra (AgentLoopWorker._run_agent_loop); that cost is
    verl's, the same for every agent loop, and is timed separately."""
    return [make_loop("rl2f_didactic", config=cfg, server_manager=server, tokenizer=tok, hf_model_type=model_type)
            for _ in range(args.batch)]


async def run_loop(args, tok, model_type, cfg, server, loops=None):
    loops = loops or make_loops(args, tok, model_type, cfg, server)
    outs = await asyncio.gather(*(lp.run({"temperature": 1.0, "logprobs": True}, **SAMPLE) for lp in loops))
    assert all(o.extra_fields["rl2f_num_student_turns"] == args.turns for o in outs), "every trajectory must run all turns"
    return outs


async def run_baseline(args, server, calls):
    """The recorded per-trajectory call sequence (kind, prompt_ids, params), replayed with no loop logic."""

    async def one(i):
        rid = f"base-{i}"
        for kind, prompt_ids, params in calls:
            await server.generate(rid if kind == "student" else f"rl2f-aux-{i}", prompt_ids=prompt_ids, sampling_params=params)

    await asyncio.gather(*(one(i) for i in range(args.batch)))


def measure(setup, coro_fn):
    """Wall and process-CPU seconds of `coro_fn(state)` in a fresh event loop, after an untimed `setup()`."""

    async def go():
        state = setup()
        c0, w0 = time.process_time(), time.perf_counter()
        await coro_fn(state)
        return time.perf_counter() - w0, time.process_time() - c0

    return asyncio.run(go())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--turns", type=int, default=4)
    p.add_argument("--latency", type=float, default=0.5, help="simulated seconds per generate call")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--tokenizer", choices=["smollm2", "qwen_style"], default="smollm2" if smollm2_dir() else "qwen_style")
    p.add_argument("--teacher", choices=["self", "template"], default="self")
    p.add_argument("--profile", action="store_true", help="print the top functions of one loop run (cProfile)")
    args = p.parse_args(argv)

    tok, model_type, cfg = build(args)
    mk_server = lambda latency: ScriptedServer(tok, WRONG, FEEDBACK, latency_s=latency, decode_prompts=False)  # noqa: E731

    # warm-up (imports, template compilation, thread pool) and the call sequence of one trajectory
    warm = mk_server(0.0)
    asyncio.run(run_loop(argparse.Namespace(**{**vars(args), "batch": 2}), tok, model_type, cfg, warm))
    rid = next(c["request_id"] for c in warm.calls if c["kind"] == "student")
    first_aux = [c for c in warm.calls if c["kind"] == "teacher"]
    seq, aux_i = [], 0
    for c in warm.calls:  # one trajectory's calls in order: its student calls and the teacher calls between them
        if c["kind"] == "student" and c["request_id"] == rid:
            seq.append(("student", c["prompt_ids"], c["sampling_params"]))
            if len([s for s in seq if s[0] == "student"]) < args.turns and aux_i < len(first_aux):
                seq.append(("teacher", first_aux[aux_i]["prompt_ids"], first_aux[aux_i]["sampling_params"]))
                aux_i += 1
    n_calls = len(seq)

    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        asyncio.run(run_loop(args, tok, model_type, cfg, mk_server(0.0)))
        prof.disable()
        pstats.Stats(prof).sort_stats("cumulative").print_stats(30)

    async def inst():
        t0 = time.process_time()
        make_loops(args, tok, model_type, cfg, mk_server(0.0))
        return (time.process_time() - t0) / args.batch

    inst_cpu = asyncio.run(inst())
    load0 = os.getloadavg()
    rows = []
    for _ in range(args.repeats):  # baseline and loop alternate, so drifting machine load hits both alike
        bw, bc = measure(lambda: mk_server(args.latency), lambda server: run_baseline(args, server, seq))
        lw, lc = measure(lambda: (lambda server: (server, make_loops(args, tok, model_type, cfg, server)))(mk_server(args.latency)),
                         lambda st: run_loop(args, tok, model_type, cfg, st[0], st[1]))
        rows.append((bw, bc, lw, lc))
    load1 = os.getloadavg()
    bw = statistics.median(r[0] for r in rows)
    lw = statistics.median(r[2] for r in rows)
    ratios = sorted(r[2] / r[0] for r in rows)  # each loop run over the baseline run next to it
    cpu_over = statistics.median((r[3] - r[1]) for r in rows)
    turns = args.batch * args.turns
    print(f"tokenizer={args.tokenizer} teacher={args.teacher} batch={args.batch} turns={args.turns} "
          f"latency={args.latency}s generate calls/trajectory={n_calls} repeats={args.repeats}")
    print(f"server calls alone: wall {bw:.3f}s (ideal {n_calls * args.latency:.3f}s)")
    print(f"didactic loop:      wall {lw:.3f}s")
    print(f"wall ratio loop/server-only: {lw / bw:.4f}  (target <= 1.05); paired per repeat: median "
          f"{statistics.median(ratios):.4f}, min {ratios[0]:.4f}, max {ratios[-1]:.4f}")
    print(f"server calls alone: CPU {statistics.median(r[1] for r in rows) * 1e3:.1f} ms; loop run: CPU "
          f"{statistics.median(r[3] for r in rows) * 1e3:.1f} ms")
    print(f"loop CPU overhead: {cpu_over * 1e3:.1f} ms total, {cpu_over / turns * 1e3:.3f} ms per student turn "
          f"(target < 1 ms); per generate call {cpu_over / (args.batch * n_calls) * 1e3:.3f} ms")
    print(f"(not included above) verl's per-trajectory hydra instantiation of the loop: {inst_cpu * 1e3:.1f} ms CPU")
    print(f"load average (1/5/15 min) before: {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}; after: "
          f"{load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}  ({os.cpu_count()} cores; other jobs share them)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
