"""Student backends for the evaluation harness, each a verl ``server_manager``.

verl's agent loops talk to the LLM only through ``await server_manager.generate(request_id, *, prompt_ids,
sampling_params, **kw) -> TokenOutput`` (``verl/workers/rollout/llm_server.py``). During training that is
verl's ``LLMServerClient`` in front of vLLM/SGLang replicas; here the same loop classes get one of these:

* `HFBackend` -- a local Hugging Face checkpoint. On CPU it is served by the CPU rollout's continuous-batching
  engine (`rl2f_plugin.cpu.engine`: requests join the running batch at token boundaries, a conversation's next turn
  reuses its cached keys/values); on GPU concurrent requests with the same sampling settings are batched into one
  ``transformers`` ``generate`` call. Real token ids; log-probs (of the raw, untempered distribution, as vLLM's
  default ``raw_logprobs``) when the loop asks for them.
* `OpenAIBackend` -- any OpenAI-compatible ``/v1/completions`` endpoint (vLLM, SGLang, llama.cpp server, ...).
  Token-id prompts (vLLM and SGLang accept a list of ints as ``prompt``) or text prompts decoded with the
  local tokenizer; the returned tokens are taken from the response when the server returns them (vLLM's
  ``return_token_ids``), otherwise the text is re-tokenized locally. Each call has a timeout, failed calls
  are retried with exponential backoff, and at most ``max_concurrency`` calls are in flight.

Both keep `BackendStats` (calls, generated tokens, seconds busy) for the benchmark and the run summary.
The sampling parameters follow verl's vLLM server: ``temperature`` (0 = greedy), ``top_p``, ``top_k`` (-1 =
off), ``max_tokens`` (default: the backend's ``max_new_tokens``, capped by the context window),
``stop_token_ids``, ``logprobs`` (bool), ``repetition_penalty``; ``min_p`` and the presence/frequency penalties
stay at vLLM's neutral defaults, as in training. `OpenAIBackend` sends every one of them, neutral values included,
so that the server does not fill them from the model's generation config (`SERVER_FILLED_SAMPLING_PARAMS`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from verl.workers.rollout.replica import TokenOutput

logger = logging.getLogger(__name__)

__all__ = ["BackendError", "BackendStats", "HFBackend", "OpenAIBackend"]


#: The weight-version tags verl's ``LLMServerClient.generate`` adds to every output (no training here: -1).
_STEP_TAGS = {"global_steps": -1, "min_global_steps": -1, "max_global_steps": -1}


class BackendError(RuntimeError):
    """A generate call failed for good (after retries); the harness records it as the problem's error."""


@dataclass
class BackendStats:
    calls: int = 0
    generated_tokens: int = 0
    prompt_tokens: int = 0
    busy_seconds: float = 0.0
    """HF: seconds inside ``model.generate``; OpenAI: summed wall time of successful HTTP calls."""
    batches: int = 0
    retries: int = 0
    failures: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **kw: float) -> None:
        with self._lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)

    def as_dict(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in ("calls", "generated_tokens", "prompt_tokens", "busy_seconds",
                                              "batches", "retries", "failures")}


#: The sampling parameters an OpenAI-compatible vLLM server takes from the served model's
#: ``generation_config.json`` when a request leaves them out (vLLM's ``ModelConfig.get_diff_sampling_param``; e.g.
#: Qwen2.5-Instruct's top_k=20, top_p=0.8, repetition_penalty=1.05). Training never decodes with those: verl's vLLM
#: server passes the agent loop's values, neutral ones included, straight to ``SamplingParams`` and overrides the
#: generation config. So `OpenAIBackend` sends every one of them, each with the value training uses.
SERVER_FILLED_SAMPLING_PARAMS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty",
                                 "frequency_penalty")


def _norm_sampling(sampling_params: dict[str, Any], default_max_tokens: int) -> dict[str, Any]:
    sp = dict(sampling_params or {})
    temperature = float(sp.get("temperature", 1.0) or 0.0)
    top_k = sp.get("top_k", -1)
    top_k = int(top_k) if top_k is not None else -1
    max_tokens = sp.get("max_tokens", sp.get("max_new_tokens", default_max_tokens))
    return {
        "temperature": temperature,
        "top_p": float(sp.get("top_p", 1.0) if sp.get("top_p") is not None else 1.0),
        "top_k": top_k if top_k > 0 else -1,
        "max_tokens": int(max_tokens) if max_tokens is not None else int(default_max_tokens),
        "stop_token_ids": tuple(int(t) for t in (sp.get("stop_token_ids") or ())),
        "logprobs": bool(sp.get("logprobs", False)),
        "repetition_penalty": float(sp.get("repetition_penalty", 1.0) or 1.0),
        # what verl's agent loops never set, so training decodes with vLLM ``SamplingParams``' neutral defaults
        "min_p": 0.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
    }


# ------------------------------------------------------------------------------------------------------------
# Local Hugging Face model
# ------------------------------------------------------------------------------------------------------------
@dataclass
class _Request:
    prompt_ids: list[int]
    sp: dict[str, Any]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


class HFBackend:
    """``server_manager`` over a local transformers causal LM (CPU or GPU).

    Args:
        model: a loaded ``PreTrainedModel`` or a path/hub id to load with ``AutoModelForCausalLM``.
        tokenizer: the model's tokenizer (pad/eos ids come from it and the generation config).
        max_batch_size: requests with equal sampling settings waiting at the same time are batched up to this.
        max_new_tokens: default ``max_tokens`` when the loop does not set one.
        max_model_len: context window; ``max_tokens`` is capped to leave the prompt room.
        seed: seeds torch once, for reproducible sampling.
        batch_wait_s: how long a batch waits for more requests before it starts (fewer than max_batch_size queued).
        num_threads: torch intra-op threads for ``generate`` (default: torch's). On a CPU shared with other
            busy processes 1 thread can be much faster than spinning OpenMP workers fighting for cores.

    On CPU, ``engine`` is the `ContinuousBatcher` serving the requests (it switches the model's attention
    implementation to its own dense CPU attention); on GPU it is None.
    """

    def __init__(self, model: Any, tokenizer: Any, *, device: str | None = None, dtype: str = "float32",
                 max_batch_size: int = 8, max_new_tokens: int = 512, max_model_len: int | None = None,
                 seed: int = 0, num_threads: int | None = None, batch_wait_s: float = 0.02):
        import torch

        if isinstance(model, str):
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype))
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.num_threads = int(num_threads) if num_threads else None
        self.batch_wait_s = max(0.0, float(batch_wait_s))
        self.max_batch_size = max(1, int(max_batch_size))
        self.max_new_tokens = int(max_new_tokens)
        cfg_len = getattr(model.config, "max_position_embeddings", None)
        self.max_model_len = int(max_model_len or cfg_len or 4096)
        gen_eos = getattr(model.generation_config, "eos_token_id", None)
        eos = gen_eos if isinstance(gen_eos, list) else [gen_eos]
        eos += [tokenizer.eos_token_id]
        self.eos_token_ids = sorted({int(e) for e in eos if e is not None})
        if not self.eos_token_ids:
            raise ValueError("HFBackend: the tokenizer/generation config defines no eos token")
        pad = tokenizer.pad_token_id
        self.pad_token_id = int(pad if pad is not None else self.eos_token_ids[0])
        self.stats = BackendStats()
        self.engine = None
        if torch.device(self.device).type == "cpu":
            from rl2f_plugin.cpu.engine import ContinuousBatcher

            if self.num_threads:
                torch.set_num_threads(self.num_threads)
            self.engine = ContinuousBatcher(self.model, eos_token_ids=self.eos_token_ids,
                                             pad_token_id=self.pad_token_id, max_batch=self.max_batch_size)
            self._engine_busy = 0.0
        self._queue: list[_Request] = []
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rl2f-hf-generate")
        torch.manual_seed(seed)

    # -- verl server_manager API ------------------------------------------------------------------------------
    async def generate(self, request_id: str, *, prompt_ids: list[int], sampling_params: dict[str, Any],
                       **kwargs: Any) -> TokenOutput:
        if kwargs.get("image_data") or kwargs.get("video_data") or kwargs.get("audio_data"):
            raise BackendError("HFBackend is text-only: the request carries images/videos/audio")
        loop = asyncio.get_running_loop()
        prompt_ids = [int(t) for t in prompt_ids]
        room = self.max_model_len - len(prompt_ids)
        if room < 1:
            raise BackendError(f"prompt of {len(prompt_ids)} tokens leaves no room in max_model_len={self.max_model_len}")
        sp = _norm_sampling(sampling_params, self.max_new_tokens)
        sp["max_tokens"] = max(1, min(sp["max_tokens"], room))
        if self.engine is not None:
            return await self._generate_on_engine(prompt_ids, sp)
        req = _Request(prompt_ids, sp, loop.create_future(), loop)
        self._queue.append(req)
        if self._worker is None or self._worker.done() or self._worker.get_loop() is not loop:
            self._wakeup = asyncio.Event()
            self._worker = loop.create_task(self._serve())
        self._wakeup.set()
        return await req.future

    async def _generate_on_engine(self, prompt_ids: list[int], sp: dict[str, Any]) -> TokenOutput:
        from rl2f_plugin.cpu.engine import SamplingParams

        loop = asyncio.get_running_loop()
        future = loop.create_future()
        params = SamplingParams(max_new_tokens=sp["max_tokens"], temperature=sp["temperature"], top_p=sp["top_p"],
                                top_k=sp["top_k"], repetition_penalty=sp["repetition_penalty"],
                                stop_token_ids=frozenset(self.eos_token_ids) | frozenset(sp["stop_token_ids"]))

        def deliver(result):  # engine thread
            busy = self.engine.stats["busy_s"]
            self.stats.add(busy_seconds=busy - self._engine_busy)
            self._engine_busy = busy
            if isinstance(result, BaseException):
                self.stats.add(failures=1)
                result = BackendError(f"HF generate failed: {type(result).__name__}: {result}")
            else:
                self.stats.add(calls=1, generated_tokens=len(result.token_ids), prompt_tokens=len(prompt_ids))
            loop.call_soon_threadsafe(lambda: future.done() or (
                future.set_exception(result) if isinstance(result, BaseException) else future.set_result(result)))

        self.engine.start()
        self.engine.submit(prompt_ids, params, deliver)
        done = await future
        self.stats.batches = self.engine.stats["steps"]
        return TokenOutput(token_ids=done.token_ids, log_probs=done.log_probs if sp["logprobs"] else None,
                           stop_reason="completed" if done.finish_reason == "stop" else "length",
                           extra_fields=dict(_STEP_TAGS))

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- batching -------------------------------------------------------------------------------------------
    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # dynamic batching: give requests that are on their way (agent loops build prompts in executor
            # threads, so concurrent trajectories arrive a few ms apart) a short window to join this batch
            deadline = loop.time() + self.batch_wait_s
            while len(self._queue) < self.max_batch_size and loop.time() < deadline:
                await asyncio.sleep(0.002)
            first = self._queue[0]
            key = _batch_key(first.sp)
            batch = [r for r in self._queue if _batch_key(r.sp) == key][: self.max_batch_size]
            for r in batch:
                self._queue.remove(r)
            batch = [r for r in batch if not r.future.cancelled()]
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(self._executor, self._generate_batch, batch)
            except Exception as exc:  # noqa: BLE001 - hand the failure to every caller in the batch
                self.stats.add(failures=len(batch))
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(BackendError(f"HF generate failed: {type(exc).__name__}: {exc}"))
                continue
            for r, out in zip(batch, results):
                if not r.future.done():
                    r.future.set_result(out)

    def _generate_batch(self, batch: list[_Request]) -> list[TokenOutput]:
        import torch

        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        sp = dict(batch[0].sp)
        sp["max_tokens"] = max(r.sp["max_tokens"] for r in batch)
        sp["logprobs"] = any(r.sp["logprobs"] for r in batch)
        width = max(len(r.prompt_ids) for r in batch)
        input_ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for i, r in enumerate(batch):  # left padding, as decoder-only generation needs
            input_ids[i, width - len(r.prompt_ids):] = torch.tensor(r.prompt_ids, dtype=torch.long)
            attention[i, width - len(r.prompt_ids):] = 1
        stop_ids = sorted(set(self.eos_token_ids) | set(sp["stop_token_ids"]))
        gen_kwargs: dict[str, Any] = dict(
            max_new_tokens=sp["max_tokens"], eos_token_id=stop_ids, pad_token_id=self.pad_token_id,
            return_dict_in_generate=True, output_logits=sp["logprobs"],
        )
        if sp["temperature"] > 0:
            gen_kwargs.update(do_sample=True, temperature=sp["temperature"], top_p=sp["top_p"],
                              top_k=sp["top_k"] if sp["top_k"] > 0 else None)
        else:
            gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if sp["repetition_penalty"] != 1.0:
            gen_kwargs["repetition_penalty"] = sp["repetition_penalty"]
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device),
                                      **gen_kwargs)
        elapsed = time.perf_counter() - t0
        new = out.sequences[:, width:].cpu()
        logprobs = None
        if sp["logprobs"] and out.logits:
            steps = torch.stack([lg.float() for lg in out.logits], dim=1).cpu()  # [B, T, V], raw logits
            logprobs = torch.log_softmax(steps, dim=-1).gather(-1, new[:, : steps.shape[1]].unsqueeze(-1)).squeeze(-1)
        results: list[TokenOutput] = []
        total_new = 0
        stop_set = set(stop_ids)
        for i, r in enumerate(batch):
            ids = new[i].tolist()[: r.sp["max_tokens"]]
            end, reason = len(ids), "length"
            for j, t in enumerate(ids):
                if t in stop_set:
                    end, reason = j + 1, "completed"  # keep the stop token, as vLLM's token output does
                    break
            ids = ids[:end]
            total_new += len(ids)
            lp = logprobs[i, :end].tolist() if logprobs is not None and r.sp["logprobs"] else None
            results.append(TokenOutput(token_ids=ids, log_probs=lp, stop_reason=reason,
                                       extra_fields=dict(_STEP_TAGS)))
        self.stats.add(calls=len(batch), batches=1, generated_tokens=total_new, busy_seconds=elapsed,
                       prompt_tokens=sum(len(r.prompt_ids) for r in batch))
        return results


def _batch_key(sp: dict[str, Any]) -> tuple:
    """Requests that can share one ``generate`` call: same sampling settings. ``max_tokens`` and ``logprobs``
    may differ (the batch runs to the largest budget and each output is cut to its own; log-probs are computed
    if any request wants them and returned only to those that do)."""
    return tuple(sorted((k, v) for k, v in sp.items() if k not in ("max_tokens", "logprobs")))


# ------------------------------------------------------------------------------------------------------------
# OpenAI-compatible endpoint
# ------------------------------------------------------------------------------------------------------------
class OpenAIBackend:
    """``server_manager`` over an OpenAI-compatible ``/v1/completions`` endpoint.

    Args:
        base_url: e.g. ``http://127.0.0.1:8000`` (``/v1`` is appended unless already there).
        model: the served model name.
        tokenizer: the student's tokenizer (decodes text prompts, re-tokenizes text answers).
        prompt_format: ``token_ids`` (send the prompt ids; vLLM/SGLang) or ``text`` (send the decoded prompt).
        timeout: seconds per HTTP call; retries: extra attempts after a failed call (timeouts, connection
        errors, HTTP 408/409/429/5xx; other 4xx fail at once); max_concurrency: calls in flight.
    """

    RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})

    def __init__(self, base_url: str, model: str, tokenizer: Any, *, api_key: str | None = None,
                 prompt_format: str = "token_ids", timeout: float = 120.0, retries: int = 3,
                 backoff: float = 1.0, max_concurrency: int = 8, max_new_tokens: int = 512,
                 extra_body: dict[str, Any] | None = None):
        if prompt_format not in ("token_ids", "text"):
            raise ValueError(f"prompt_format must be 'token_ids' or 'text', got {prompt_format!r}")
        base = base_url.rstrip("/")
        self.url = (base if base.endswith("/v1") else base + "/v1") + "/completions"
        self.model = model
        self.tokenizer = tokenizer
        self.api_key = api_key
        self.prompt_format = prompt_format
        self.timeout = float(timeout)
        self.retries = max(0, int(retries))
        self.backoff = float(backoff)
        self.max_concurrency = max(1, int(max_concurrency))
        self.max_new_tokens = int(max_new_tokens)
        self.extra_body = dict(extra_body or {})
        self.stats = BackendStats()
        self._sem: asyncio.Semaphore | None = None
        self._session = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def _get_session(self):
        import aiohttp

        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            self._loop = loop
            self._sem = asyncio.Semaphore(self.max_concurrency)
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            self._session = aiohttp.ClientSession(headers=headers)
        return self._session

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()

    def close(self) -> None:
        pass

    def _payload(self, prompt_ids: list[int], sp: dict[str, Any]) -> dict[str, Any]:
        prompt: Any = list(prompt_ids)
        if self.prompt_format == "text":
            prompt = self.tokenizer.decode(prompt_ids, skip_special_tokens=False)
        body: dict[str, Any] = {
            "model": self.model, "prompt": prompt, "max_tokens": sp["max_tokens"], "n": 1, "stream": False,
            # every sampling parameter, neutral ones included: see SERVER_FILLED_SAMPLING_PARAMS
            **{key: sp[key] for key in SERVER_FILLED_SAMPLING_PARAMS},
            # vLLM extensions (ignored by servers that do not know them)
            "skip_special_tokens": False, "return_token_ids": True,
        }
        if sp["stop_token_ids"]:
            body["stop_token_ids"] = list(sp["stop_token_ids"])
        if sp["logprobs"]:
            body["logprobs"] = 1
        body.update(self.extra_body)
        return body

    async def generate(self, request_id: str, *, prompt_ids: list[int], sampling_params: dict[str, Any],
                       **kwargs: Any) -> TokenOutput:
        import aiohttp

        if kwargs.get("image_data") or kwargs.get("video_data") or kwargs.get("audio_data"):
            raise BackendError("OpenAIBackend sends text/token prompts only: the request carries media")
        sp = _norm_sampling(sampling_params, self.max_new_tokens)
        body = self._payload([int(t) for t in prompt_ids], sp)
        session = await self._get_session()
        last_error = "no attempt made"
        for attempt in range(self.retries + 1):
            if attempt:
                self.stats.add(retries=1)
                await asyncio.sleep(self.backoff * (2 ** (attempt - 1)) * (0.5 + random.random()))
            t0 = time.perf_counter()
            try:
                async with self._sem:
                    async with session.post(self.url, json=body,
                                            timeout=aiohttp.ClientTimeout(total=self.timeout)) as resp:
                        text = await resp.text()
                        status = resp.status
            except asyncio.TimeoutError:
                last_error = f"timeout after {self.timeout:g}s"
                continue
            except aiohttp.ClientError as exc:
                last_error = f"{type(exc).__name__}: {exc}"
                continue
            if status != 200:
                last_error = f"HTTP {status}: {text[:300]}"
                if status in self.RETRY_STATUSES:
                    continue
                break
            try:
                out = self._parse(json.loads(text), sp)
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                last_error = f"malformed completion response ({type(exc).__name__}: {exc}): {text[:300]}"
                continue
            self.stats.add(calls=1, generated_tokens=len(out.token_ids), prompt_tokens=len(prompt_ids),
                           busy_seconds=time.perf_counter() - t0)
            return out
        self.stats.add(failures=1)
        raise BackendError(f"{self.url} failed after {attempt + 1} attempt(s): {last_error}")

    def _parse(self, data: dict[str, Any], sp: dict[str, Any]) -> TokenOutput:
        choice = data["choices"][0]
        finish = choice.get("finish_reason")
        token_ids = choice.get("token_ids")
        if token_ids is None:
            token_ids = self.tokenizer.encode(choice["text"], add_special_tokens=False)
            # vLLM drops the EOS token from the text; add it back so the chat turn is closed as in training
            if finish == "stop" and choice.get("stop_reason") is None and self.tokenizer.eos_token_id is not None:
                if not token_ids or token_ids[-1] != self.tokenizer.eos_token_id:
                    token_ids = list(token_ids) + [int(self.tokenizer.eos_token_id)]
        token_ids = [int(t) for t in token_ids]
        log_probs = None
        lp = (choice.get("logprobs") or {}).get("token_logprobs") if sp["logprobs"] else None
        if lp is not None and len(lp) == len(token_ids):
            log_probs = [float(x) for x in lp]
        return TokenOutput(token_ids=token_ids, log_probs=log_probs,
                           stop_reason="completed" if finish == "stop" else (finish or None),
                           extra_fields=dict(_STEP_TAGS))
