"""Continuous batching with a prefix cache for a transformers causal LM on CPU: the engine behind rollout ``hf``.

The didactic loop's requests do not come in waves of equal length: 32 first answers start together and end at
different tokens; each wrong one comes back a moment later as a longer conversation (its own prompt + reply +
the teacher's feedback), and teacher or leak-guard calls arrive on their own. The engine serves that pattern:

* **requests join and leave at token boundaries**: every `step` admits what is queued (up to ``max_batch`` rows),
  decodes one token for every running row, and retires the rows that ended, so a finished sequence stops costing
  compute and a retry does not wait for the slowest member of a wave;
* **a conversation's KV cache is reused for its next turn**: a retired row's keys and values (prompt + reply) go
  into a `PrefixCache`; a request whose prompt starts with a cached sequence prefills only the new tokens (the
  feedback turn). Identical prompts admitted together (GRPO's ``n`` samples of one problem) are prefilled once.
  The prefix cache is emptied on every weight update (`clear_prefix_cache`): keys computed by old weights are stale;
* **decoding in the dtype the caller picks** (the server uses bf16 where the CPU has native bf16 instructions).

The running batch is one dense, left-padded KV cache per layer (``[rows, kv_heads, length, head_dim]``) plus a 0/1
mask; each row carries its own RoPE positions, so rows of any length share a step. Log-probs are the model's raw
log-probabilities of the sampled tokens (before temperature, top-k, top-p), as vLLM reports by default.

Why not transformers' own continuous batching (``model.generate_batch``, paged cache, block sharing)? Measured on
this machine (SmolLM2-135M bf16, 2 cores; 32 requests of 64 prompt tokens x 48 new tokens, then their 32 follow-up
turns): 15.7 s and 24.2 s (98 and 64 generated tokens/s). On CPU its paged-attention gathers and per-step sampling
cost more than the batch saves; this dense engine serves the same two turns several times faster
(``benchmarks/bench_rollout.py`` measures it against plain ``model.generate`` and vLLM's CPU build).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

MIN_REUSED_PREFIX = 8  # a shorter common prefix is prefilled with the other new rows instead
ATTENTION = "rl2f_dense_cpu"


def dense_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention as two matmuls with a float32 softmax, grouped-query heads without copying keys/values.

    On CPU, torch's ``scaled_dot_product_attention`` with a mask takes 6 ms for one bf16 decode step of 32 rows x
    350 keys (SmolLM2-135M shapes, 2 cores) where these matmuls take 0.4 ms; in fp32 both take ~0.8 ms.
    ``attention_mask`` is additive, ``[batch, 1, queries, keys]`` (transformers' eager mask format).
    """
    batch, heads, q_len, dim = query.shape
    kv_heads, keys = key.shape[1], key.shape[2]
    group = heads // kv_heads
    scores = torch.matmul(query.reshape(batch, kv_heads, group * q_len, dim), key.transpose(-1, -2)).float()
    scores = scores.view(batch, kv_heads, group, q_len, keys) * (scaling if scaling is not None else dim ** -0.5)
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, None, :, -keys:].float()
    probs = scores.softmax(-1).to(value.dtype).view(batch, kv_heads, group * q_len, keys)
    out = torch.matmul(probs, value).view(batch, heads, q_len, dim)
    return out.transpose(1, 2).contiguous(), None


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(ATTENTION, dense_attention)
    AttentionMaskInterface.register(ATTENTION, eager_mask)


def additive_mask(mask: torch.Tensor, q_len: int) -> torch.Tensor:
    """``[batch, 1, q_len, keys]`` float mask from a 0/1 ``[batch, keys]`` mask: causal for the last ``q_len``
    keys (the queries), 0 where allowed, float32 min elsewhere (a fully masked padding row stays finite)."""
    keys = mask.shape[1]
    causal = torch.arange(keys)[None, :] <= (keys - q_len + torch.arange(q_len))[:, None]
    allowed = causal[None] & mask.bool()[:, None, :]
    return torch.zeros(allowed.shape, dtype=torch.float32).masked_fill(~allowed, torch.finfo(torch.float32).min)[:, None]


@dataclass(frozen=True)
class SamplingParams:
    """What one request asks for. ``temperature <= 0`` is greedy; ``top_k <= 0`` and ``top_p >= 1`` are off."""

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    repetition_penalty: float = 1.0
    stop_token_ids: frozenset[int] = frozenset()
    seed: Optional[int] = None

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    @property
    def sampling_key(self) -> tuple:
        return (float(self.temperature), float(self.top_p), int(self.top_k) if self.top_k > 0 else 0)


@dataclass
class Completion:
    token_ids: list[int]
    log_probs: list[float]
    finish_reason: str  # "stop" (a stop token, included) or "length"
    prompt_tokens: int
    reused_prompt_tokens: int  # served from the prefix cache or shared with an identical prompt
    weights_version: int
    submitted: float
    finished: float


@dataclass
class _Row:
    prompt: list[int]
    params: SamplingParams
    on_done: Callable[[Completion | BaseException], None]
    submitted: float
    weights_version: int = 0
    reused: int = 0
    generated: list[int] = field(default_factory=list)
    log_probs: list[float] = field(default_factory=list)
    position: int = 0  # RoPE position of the next token fed
    generator: Optional[torch.Generator] = None
    finish_reason: Optional[str] = None


class PrefixCache:
    """Keys and values of finished sequences, least recently used evicted beyond ``max_tokens`` cached tokens."""

    def __init__(self, max_tokens: int):
        self.max_tokens = int(max_tokens)
        self._entries: OrderedDict[int, tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]] = OrderedDict()
        self._next_id = 0
        self.tokens = 0

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self.tokens = 0

    def put(self, token_ids: list[int], kv: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """``kv``: per layer (keys, values) of shape ``[kv_heads, len(token_ids), head_dim]``."""
        n = len(token_ids)
        if n == 0 or n > self.max_tokens:
            return
        self._entries[self._next_id] = (torch.tensor(token_ids, dtype=torch.long), kv)
        self._next_id += 1
        self.tokens += n
        while self.tokens > self.max_tokens:
            _, (old, _) = self._entries.popitem(last=False)
            self.tokens -= len(old)

    def longest_prefix(self, prompt: torch.Tensor) -> tuple[int, Optional[list[tuple[torch.Tensor, torch.Tensor]]]]:
        """(length, kv) of the longest cached prefix of ``prompt``, capped at ``len(prompt) - 1`` so that at
        least one token is left to prefill (its logits give the first new token)."""
        best, best_id = 0, None
        limit = len(prompt) - 1
        for key, (tokens, _) in self._entries.items():
            m = min(len(tokens), limit)
            if m <= best:
                continue
            same = tokens[:m] == prompt[:m]
            n = m if bool(same.all()) else int(same.to(torch.int8).argmin())
            if n > best:
                best, best_id = n, key
        if best_id is None:
            return 0, None
        self._entries.move_to_end(best_id)
        kv = self._entries[best_id][1]
        return best, [(k[:, :best], v[:, :best]) for k, v in kv]


def _dynamic_cache(kv: list[tuple[torch.Tensor, torch.Tensor]]):
    """A transformers ``DynamicCache`` holding these tensors as they are (no copy)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache()
    for keys, values in kv:
        layer = DynamicLayer()
        layer.lazy_initialization(keys, values)
        layer.keys, layer.values = keys, values
        cache.layers.append(layer)
    return cache


def _cache_tensors(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _left_pad(kv, mask: torch.Tensor, length: int):
    """Pad a batch's KV tensors and mask on the left (sequence dim) to ``length`` columns."""
    extra = length - mask.shape[1]
    if extra <= 0:
        return kv, mask
    pad_kv = []
    for k, v in kv:
        z = k.new_zeros(k.shape[0], k.shape[1], extra, k.shape[3])
        pad_kv.append((torch.cat([z, k], dim=2), torch.cat([z, v], dim=2)))
    return pad_kv, torch.cat([mask.new_zeros(mask.shape[0], extra), mask], dim=1)


class ContinuousBatcher:
    """Serves `submit`ted requests one token per `step` for every running row (see the module docstring).

    Thread-safety: `submit` may be called from any thread; `step`, `clear_prefix_cache` and anything touching the
    model's weights must hold `lock` (`start` runs `step` in a background thread that holds it per step).
    """

    def __init__(self, model: torch.nn.Module, *, eos_token_ids: list[int], pad_token_id: int, max_batch: int = 64,
                 prefix_cache_tokens: int = 32768):
        _register_attention()
        model.set_attn_implementation(ATTENTION)
        self.model = model
        self.vocab_size = int(model.get_input_embeddings().weight.shape[0])
        self.eos_token_ids = [int(e) for e in eos_token_ids]
        self.pad_token_id = int(pad_token_id)
        self.max_batch = max(1, int(max_batch))
        self.prefix_cache = PrefixCache(prefix_cache_tokens)
        self.lock = threading.RLock()
        self.weights_version = 0
        self._queue: list[_Row] = []
        self._queue_cv = threading.Condition()
        self._rows: list[_Row] = []
        self._kv: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._mask = torch.zeros(0, 0, dtype=torch.long)
        self._next = torch.zeros(0, dtype=torch.long)
        self._thread: Optional[threading.Thread] = None
        self._closed = False
        self.on_idle: Optional[Callable[[], None]] = None
        self.stats = {"steps": 0, "prefilled_tokens": 0, "reused_tokens": 0, "generated_tokens": 0, "max_rows": 0,
                      "busy_s": 0.0}

    # -- requests --------------------------------------------------------------------------------------------
    def submit(self, prompt_ids: list[int], params: SamplingParams,
               on_done: Callable[[Completion | BaseException], None]) -> None:
        if not prompt_ids:
            raise ValueError("empty prompt")
        bad = [t for t in prompt_ids if not 0 <= int(t) < self.vocab_size]
        if bad:
            raise ValueError(f"prompt token ids {bad[:5]} outside the model's vocabulary (size {self.vocab_size})")
        row = _Row(prompt=[int(t) for t in prompt_ids], params=params, on_done=on_done, submitted=time.time())
        if params.seed is not None:
            row.generator = torch.Generator().manual_seed(int(params.seed))
        with self._queue_cv:
            self._queue.append(row)
            self._queue_cv.notify()

    @property
    def busy(self) -> bool:
        return bool(self._rows or self._queue)

    def generate(self, prompts: list[list[int]], params: list[SamplingParams] | SamplingParams) -> list[Completion]:
        """Serve these prompts to completion in the calling thread (tests, benchmarks, offline use)."""
        params = params if isinstance(params, list) else [params] * len(prompts)
        results: list[Completion | BaseException | None] = [None] * len(prompts)
        for i, (prompt, p) in enumerate(zip(prompts, params, strict=True)):
            self.submit(prompt, p, lambda r, i=i: results.__setitem__(i, r))
        while any(r is None for r in results):
            if not self.busy:
                raise RuntimeError("engine went idle with requests unanswered")
            with self.lock:
                self.step()
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return results  # type: ignore[return-value]

    # -- background thread -----------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="rl2f-cpu-engine", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the background thread (after the step it is in) and wait for it."""
        self._closed = True
        with self._queue_cv:
            self._queue_cv.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)

    def _gather_wave(self, quiet_s: float = 0.01, max_s: float = 0.1) -> None:
        """Coming out of idle, let the rest of a wave arrive (agent loops send a batch's requests over tens of
        ms) so it is prefilled as one batch: wait until no request came for ``quiet_s``, at most ``max_s``."""
        deadline = time.monotonic() + max_s
        seen = -1
        while time.monotonic() < deadline and len(self._queue) != seen and len(self._queue) < self.max_batch:
            seen = len(self._queue)
            time.sleep(quiet_s)

    def _run(self) -> None:
        while not self._closed:
            with self._queue_cv:
                idle = not self._rows
                while not self._closed and not self._queue and not self._rows:
                    self._queue_cv.wait()
            if self._closed:
                return
            if idle:
                self._gather_wave()
            with self.lock:
                self.step()
                idle = not self.busy
            if idle and self.on_idle is not None:
                self.on_idle()

    # -- weights ---------------------------------------------------------------------------------------------
    def clear_prefix_cache(self) -> None:
        """Call with `lock` held whenever the weights change: cached keys/values were computed by the old ones."""
        self.prefix_cache.clear()

    # -- one step --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self) -> None:
        """Admit queued requests (prefill + first token), decode one token for every running row, retire the
        rows that ended."""
        t0 = time.perf_counter()
        try:
            self._admit()
            self._retire()
            if self._rows:
                self._decode()
                self._retire()
        except BaseException as exc:  # noqa: BLE001 - every running request hears of it; the engine stays usable
            failed, self._rows = self._rows, []
            self._reset_batch()
            for row in failed:
                row.on_done(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self.stats["busy_s"] += time.perf_counter() - t0

    def _reset_batch(self) -> None:
        self._kv, self._mask, self._next = [], torch.zeros(0, 0, dtype=torch.long), torch.zeros(0, dtype=torch.long)

    def _admit(self) -> None:
        with self._queue_cv:
            room = self.max_batch - len(self._rows)
            new, self._queue = self._queue[:room], self._queue[room:]
        if not new:
            return
        for row in new:
            row.weights_version = self.weights_version
        try:
            plans = []
            for row in new:
                n, kv = self.prefix_cache.longest_prefix(torch.tensor(row.prompt, dtype=torch.long))
                plans.append((row, n, kv) if n >= MIN_REUSED_PREFIX else (row, 0, None))
            self._prefill(plans)
        except Exception as exc:  # noqa: BLE001 - the requests being admitted fail; running rows go on
            joined = {id(row) for row in self._rows}
            for row in new:
                if id(row) not in joined:
                    row.on_done(exc)

    def _prefill(self, plans: list[tuple[_Row, int, Optional[list[tuple[torch.Tensor, torch.Tensor]]]]]) -> None:
        """Prefill the admitted rows in one batch: each row's cached prefix (``n`` tokens of keys/values from the
        prefix cache, left-padded) followed by the rest of its prompt (left-padded); identical prompts once."""
        unique: dict[tuple[int, ...], int] = {}
        reps = []
        for row, n, kv in plans:
            key = tuple(row.prompt)
            if key not in unique:
                unique[key] = len(reps)
                reps.append((row, n, kv))
        cached = max(n for _, n, _ in reps)
        width = max(len(row.prompt) - n for row, n, _ in reps)
        ids = torch.full((len(reps), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(reps), cached + width), dtype=torch.long)
        positions = torch.zeros((len(reps), width), dtype=torch.long)
        for i, (row, n, _) in enumerate(reps):
            rest = row.prompt[n:]
            ids[i, width - len(rest):] = torch.tensor(rest, dtype=torch.long)
            mask[i, cached - n:cached] = 1
            mask[i, cached + width - len(rest):] = 1
            positions[i, width - len(rest):] = torch.arange(n, len(row.prompt))
        past = []
        if cached:
            template = next(kv for _, n, kv in reps if n)
            for layer, (k0, _) in enumerate(template):
                zero = k0.new_zeros(k0.shape[0], cached, k0.shape[2])
                ks, vs = [], []
                for _, n, kv in reps:
                    k, v = kv[layer] if n else (zero[:, :0], zero[:, :0])
                    ks.append(torch.cat([zero[:, : cached - n], k], dim=1))
                    vs.append(torch.cat([zero[:, : cached - n], v], dim=1))
                past.append((torch.stack(ks), torch.stack(vs)))
        out = self.model(input_ids=ids, attention_mask=additive_mask(mask, width), position_ids=positions,
                         past_key_values=_dynamic_cache(past), use_cache=True, logits_to_keep=1)
        index = torch.tensor([unique[tuple(row.prompt)] for row, _, _ in plans], dtype=torch.long)
        kv = [(k.index_select(0, index), v.index_select(0, index)) for k, v in _cache_tensors(out.past_key_values)]
        seen: set[tuple[int, ...]] = set()
        for row, n, _ in plans:
            key = tuple(row.prompt)
            row.reused = len(row.prompt) if key in seen else n  # a duplicate shares its twin's prefill
            seen.add(key)
            row.position = len(row.prompt)
        self.stats["prefilled_tokens"] += sum(len(row.prompt) - n for row, n, _ in reps)
        self.stats["reused_tokens"] += sum(row.reused for row, _, _ in plans)
        rows = [row for row, _, _ in plans]
        self._join(rows, kv, mask.index_select(0, index), out.logits[:, -1].index_select(0, index))

    def _join(self, rows: list[_Row], kv, mask: torch.Tensor, logits: torch.Tensor) -> None:
        """Add prefilled rows to the running batch and sample their first token."""
        if self._rows:
            width = max(self._mask.shape[1], mask.shape[1])
            old_kv, old_mask = _left_pad(self._kv, self._mask, width)
            kv, mask = _left_pad(kv, mask, width)
            self._kv = [(torch.cat([ok, k]), torch.cat([ov, v])) for (ok, ov), (k, v) in zip(old_kv, kv, strict=True)]
            self._mask = torch.cat([old_mask, mask])
        else:
            self._kv, self._mask = kv, mask
        self._rows.extend(rows)
        tokens = self._sample(logits, rows)
        self._next = torch.cat([self._next, tokens])

    def _decode(self) -> None:
        """Feed every row its last sampled token (at the row's own position) and sample the next."""
        mask = torch.cat([self._mask, self._mask.new_ones(len(self._rows), 1)], dim=1)
        positions = torch.tensor([row.position for row in self._rows], dtype=torch.long)[:, None]
        cache = _dynamic_cache(self._kv)
        out = self.model(input_ids=self._next[:, None], attention_mask=additive_mask(mask, 1), position_ids=positions,
                         past_key_values=cache, use_cache=True)
        self._kv, self._mask = _cache_tensors(cache), mask
        for row in self._rows:
            row.position += 1
        self._next = self._sample(out.logits[:, -1], self._rows)
        self.stats["steps"] += 1
        self.stats["max_rows"] = max(self.stats["max_rows"], len(self._rows))

    def _sample(self, logits: torch.Tensor, rows: list[_Row]) -> torch.Tensor:
        """Sample one token per row; record it, its raw log-prob and whether the row is done."""
        logits = logits.float()
        raw_logp = torch.log_softmax(logits, dim=-1)
        tokens = torch.empty(len(rows), dtype=torch.long)
        groups: dict[tuple, list[int]] = {}
        for i, row in enumerate(rows):
            groups.setdefault(row.params.sampling_key, []).append(i)
        for (temperature, top_p, top_k), idx in groups.items():
            index = torch.tensor(idx, dtype=torch.long)
            scores = logits.index_select(0, index)
            for j, i in enumerate(idx):
                penalty = rows[i].params.repetition_penalty
                if penalty != 1.0:
                    seen = torch.tensor(sorted(set(rows[i].prompt + rows[i].generated)), dtype=torch.long)
                    picked = scores[j, seen]
                    scores[j, seen] = torch.where(picked > 0, picked / penalty, picked * penalty)
            if temperature <= 0:
                tokens[index] = scores.argmax(-1)
                continue
            scores = scores / temperature
            if top_k > 0 and top_k < scores.shape[-1]:
                kth = scores.topk(top_k, dim=-1).values[:, -1:]
                scores = scores.masked_fill(scores < kth, float("-inf"))
            if top_p < 1.0:
                ordered, order = scores.sort(dim=-1, descending=True)
                cum = ordered.softmax(-1).cumsum(-1)
                drop = cum - ordered.softmax(-1) > top_p  # keep the smallest set whose mass reaches top_p
                scores = scores.scatter(-1, order, ordered.masked_fill(drop, float("-inf")))
            # inverse-CDF sampling (one uniform per row): exact, and far cheaper on CPU than multinomial or a
            # Gumbel draw over the whole vocabulary
            cdf = scores.softmax(-1).cumsum(-1)
            if any(rows[i].generator is not None for i in idx):
                u = torch.cat([torch.rand(1, generator=rows[i].generator) for i in idx])
            else:
                u = torch.rand(len(idx))
            picked_ids = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0]
            tokens[index] = picked_ids.clamp(max=cdf.shape[-1] - 1)
        picked = raw_logp.gather(1, tokens[:, None])[:, 0].tolist()
        for row, tok, lp in zip(rows, tokens.tolist(), picked, strict=True):
            row.generated.append(tok)
            row.log_probs.append(lp)
            stops = row.params.stop_token_ids
            if tok in stops:
                row.finish_reason = "stop"
            elif len(row.generated) >= row.params.max_new_tokens:
                row.finish_reason = "length"
        self.stats["generated_tokens"] += len(rows)
        return tokens

    def _retire(self) -> None:
        done = [i for i, row in enumerate(self._rows) if row.finish_reason is not None]
        if not done:
            return
        now = time.time()
        for i in done:
            row = self._rows[i]
            fed = row.prompt + row.generated[:-1]  # the last token was sampled, never fed: it has no KV yet
            cols = self._mask[i].nonzero()[:, 0]
            if len(cols) == len(fed):
                self.prefix_cache.put(fed, [(k[i].index_select(1, cols), v[i].index_select(1, cols)) for k, v in self._kv])
            row.on_done(Completion(token_ids=row.generated, log_probs=row.log_probs, finish_reason=row.finish_reason,
                                   prompt_tokens=len(row.prompt), reused_prompt_tokens=row.reused,
                                   weights_version=row.weights_version, submitted=row.submitted, finished=now))
        finished = set(done)
        alive = [i for i in range(len(self._rows)) if i not in finished]
        self._rows = [self._rows[i] for i in alive]
        if not alive:
            self._reset_batch()
            return
        index = torch.tensor(alive, dtype=torch.long)
        mask = self._mask.index_select(0, index)
        start = int(mask.any(0).to(torch.int8).argmax())  # drop leading columns no remaining row uses
        self._mask = mask[:, start:]
        self._kv = [(k.index_select(0, index)[:, :, start:], v.index_select(0, index)[:, :, start:]) for k, v in self._kv]
        self._next = self._next.index_select(0, index)
