"""The request pattern of recorded RL²F steps, and a closed-loop replay of it (standard library only: the vLLM
driver imports this file from vLLM's own virtualenv).

A pattern is built from the ``request`` lines the CPU rollout writes to ``RL2F_CPU_ROLLOUT_LOG`` (one per served
request: its id in the log, the earlier request whose prompt + reply this prompt continues (``parent``), a prompt
hash, prompt and generated token counts, submit and finish times): turn k+1's prompt is turn k's prompt + turn k's
reply + the feedback turn. The replay
keeps that structure with synthetic token ids: a first turn gets random ids (identical prompts, e.g. GRPO's ``n``
samples of one problem, get identical ids), a later turn extends its parent's prompt with the reply the backend
*actually* generated plus as many feedback ids as recorded, and is issued when its parent finishes plus the recorded
gap (verifier + teacher time). Every request generates exactly its recorded number of tokens (stop tokens ignored),
so every backend does the same work on the same prompts.
"""

from __future__ import annotations

import heapq
import json
import random
import time
from pathlib import Path

VOCAB_RANGE = (100, 30000)  # synthetic ids inside every supported model's vocabulary


def pattern_from_log(log_path: str | Path, step: int | None = None, seed: int = 0) -> dict:
    """Requests served during one training step (``global_steps``; default: the first step with requests)."""
    events = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line.strip()]
    requests = [e for e in events if e.get("event") == "request"]
    if not requests:
        raise ValueError(f"{log_path}: no 'request' lines (written by rl2f's CPU rollout since the continuous-batching "
                         "engine; set RL2F_CPU_ROLLOUT_LOG when training)")
    steps = sorted({e["global_steps"] for e in requests})
    step = steps[0] if step is None else step
    if step not in steps:
        raise ValueError(f"{log_path}: no requests at global step {step}; steps with requests: {steps}")
    requests = sorted((e for e in requests if e["global_steps"] == step), key=lambda e: e["submitted"])
    t0 = requests[0]["submitted"]
    rng = random.Random(seed)
    prompts: dict[str, list[int]] = {}
    index_of = {e["log_id"]: i for i, e in enumerate(requests) if "log_id" in e}
    out = []
    for i, e in enumerate(requests):
        parent = index_of.get(e.get("parent"))
        spec = {"new_tokens": int(e["generated_tokens"]), "parent": None, "start": None, "gap": None, "prompt": None,
                "extend": None}
        if parent is not None:
            p = requests[parent]
            extend = int(e["prompt_tokens"]) - int(p["prompt_tokens"]) - int(p["generated_tokens"])
            if extend >= 0:
                spec.update(parent=parent, gap=max(0.0, e["submitted"] - p["finished"]),
                            extend=[rng.randrange(*VOCAB_RANGE) for _ in range(extend)])
        if spec["parent"] is None:
            key = e.get("prompt_hash") or f"row{i}"
            if key not in prompts:
                prompts[key] = [rng.randrange(*VOCAB_RANGE) for _ in range(int(e["prompt_tokens"]))]
            spec.update(start=e["submitted"] - t0, prompt=prompts[key])
        out.append(spec)
    recorded = max(e["finished"] for e in requests) - t0
    return {"source": str(log_path), "global_step": step, "recorded_seconds": round(recorded, 3),
            "recorded_generated_tokens": sum(int(e["generated_tokens"]) for e in requests), "requests": out}


def replicate(pattern: dict, copies: int, seed: int = 1) -> dict:
    """``copies`` independent copies of the pattern running at once (fresh prompt ids per copy): the same request
    structure at ``copies`` times the load, to measure throughput rather than the turn-by-turn latency floor."""
    if copies <= 1:
        return pattern
    rng = random.Random(seed)
    reqs = []
    for c in range(copies):
        fresh: dict[tuple, list[int]] = {}
        for r in pattern["requests"]:
            r = dict(r)
            if r["parent"] is not None:
                r["parent"] += c * len(pattern["requests"])
            elif c > 0:
                key = tuple(r["prompt"])
                r["prompt"] = fresh.setdefault(key, [rng.randrange(*VOCAB_RANGE) for _ in key])
            reqs.append(r)
    return {**pattern, "requests": reqs, "copies": copies}


def describe(pattern: dict) -> str:
    reqs = pattern["requests"]
    first = [r for r in reqs if r["parent"] is None]
    follow = [r for r in reqs if r["parent"] is not None]
    distinct = len({tuple(r["prompt"]) for r in first})
    copies = f"{pattern['copies']} concurrent copies of one step: " if pattern.get("copies", 1) > 1 else ""
    return (f"{copies}{len(reqs)} requests ({len(first)} first turns of {distinct} distinct prompts, {len(follow)} later turns), "
            f"{sum(r['new_tokens'] for r in reqs)} tokens to generate; recorded in {pattern['recorded_seconds']} s "
            f"(step {pattern['global_step']} of {pattern['source']})")


class Replay:
    """Closed-loop scheduler: `due` hands out the requests whose time has come, `finish` reports a reply."""

    def __init__(self, pattern: dict):
        self.reqs = pattern["requests"]
        self.children: dict[int, list[int]] = {}
        for i, r in enumerate(self.reqs):
            if r["parent"] is not None:
                self.children.setdefault(r["parent"], []).append(i)
        self.prompts: dict[int, list[int]] = {}
        self.t0 = time.monotonic()
        self._heap = [(r["start"], i) for i, r in enumerate(self.reqs) if r["parent"] is None]
        heapq.heapify(self._heap)
        self.done = 0
        self.generated = 0
        self.end: float | None = None

    def now(self) -> float:
        return time.monotonic() - self.t0

    @property
    def finished(self) -> bool:
        return self.done == len(self.reqs)

    def next_time(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def due(self) -> list[tuple[int, list[int], int]]:
        """(index, prompt ids, tokens to generate) of every request due now."""
        now, out = self.now(), []
        while self._heap and self._heap[0][0] <= now:
            _, i = heapq.heappop(self._heap)
            r = self.reqs[i]
            if r["parent"] is None:
                prompt = list(r["prompt"])
            else:
                prompt = self.prompts[i]
            self.prompts[i] = prompt
            out.append((i, prompt, r["new_tokens"]))
        return out

    def finish(self, index: int, token_ids: list[int]) -> None:
        if len(token_ids) != self.reqs[index]["new_tokens"]:
            raise RuntimeError(f"request {index}: asked for {self.reqs[index]['new_tokens']} tokens, got {len(token_ids)}")
        self.done += 1
        self.generated += len(token_ids)
        now = self.now()
        for child in self.children.get(index, []):
            c = self.reqs[child]
            self.prompts[child] = self.prompts[index] + list(token_ids) + c["extend"]
            heapq.heappush(self._heap, (now + c["gap"], child))
        if self.finished:
            self.end = now

    def result(self) -> dict:
        wall = self.end if self.end is not None else self.now()
        return {"wall_s": round(wall, 3), "generated_tokens": self.generated,
                "tokens_per_s": round(self.generated / wall, 2) if wall > 0 else None}
