"""The `openai` teacher: any OpenAI-compatible chat-completions endpoint (e.g. a frozen model behind vLLM).

Config (``rl2f.teacher``): ``max_tokens``, ``temperature``, ``prompt_version`` and a sub-section ``openai:``
with ``base_url`` (e.g. ``http://host:8000/v1``), ``model``, ``api_key_env`` (name of the environment variable
holding the key; keys never go in configs), ``timeout_s`` (per request), ``max_retries`` (on connection
errors, timeouts, HTTP 429 and 5xx), ``backoff_s`` (exponential) and ``max_concurrency`` (requests in flight
per process and endpoint, shared by all trajectories).
"""

from __future__ import annotations

import asyncio
import logging
import os
import weakref
from dataclasses import dataclass

import httpx

from .base import Teacher, TeacherContext, TeacherError, clean_feedback, register_teacher

logger = logging.getLogger(__name__)

#: event loop -> {(base_url, max_concurrency): (client, semaphore)}; one pool per loop and endpoint.
_POOLS: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict]" = weakref.WeakKeyDictionary()


def _pool(base_url: str, max_concurrency: int) -> tuple[httpx.AsyncClient, asyncio.Semaphore]:
    loop = asyncio.get_running_loop()
    pools = _POOLS.setdefault(loop, {})
    key = (base_url, max_concurrency)
    if key not in pools:
        limits = httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency)
        pools[key] = (httpx.AsyncClient(limits=limits), asyncio.Semaphore(max_concurrency))
    return pools[key]


class _Retryable(Exception):
    pass


@register_teacher("openai")
class OpenAITeacher(Teacher):
    @dataclass
    class Options:
        base_url: str | None = None          # e.g. http://host:8000/v1 (required)
        model: str | None = None             # required
        api_key_env: str | None = "OPENAI_API_KEY"  # name of the environment variable holding the key
        timeout_s: float = 60.0              # per request
        max_retries: int = 3                 # on connection errors, timeouts, HTTP 429 and 5xx
        backoff_s: float = 0.5               # exponential
        max_concurrency: int = 32            # requests in flight per process and endpoint

    def __init__(self, config=None, **kwargs):
        super().__init__(config, **kwargs)
        opts = self.options
        if not opts.base_url:
            raise ValueError("rl2f.teacher.openai.base_url is required for the 'openai' teacher (e.g. http://host:8000/v1)")
        if not opts.model:
            raise ValueError("rl2f.teacher.openai.model is required for the 'openai' teacher")
        self.url = opts.base_url.rstrip("/") + "/chat/completions"
        self.model = opts.model
        self.api_key = os.environ.get(opts.api_key_env) if opts.api_key_env else None
        self.timeout_s = opts.timeout_s
        self.max_retries = opts.max_retries
        self.backoff_s = opts.backoff_s
        self.max_concurrency = opts.max_concurrency
        self.attempts_made = 0

    async def feedback(self, ctx: TeacherContext) -> str:
        text = await self.complete([{"role": "user", "content": self.teacher_prompt(ctx)}], self.max_tokens, self.temperature)
        return clean_feedback(text, who=self.name)

    async def complete(self, messages: list[dict[str, str]], max_tokens: int, temperature: float) -> str:
        client, semaphore = _pool(self.url, self.max_concurrency)
        body = {"model": self.model, "messages": messages, "max_tokens": int(max_tokens), "temperature": float(temperature)}
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff_s * (2 ** (attempt - 1)))
            self.attempts_made += 1
            try:
                async with semaphore:
                    resp = await client.post(self.url, json=body, headers=headers, timeout=self.timeout_s)
                if resp.status_code == 429 or resp.status_code >= 500:
                    raise _Retryable(f"HTTP {resp.status_code}: {resp.text[:200]}")
                if resp.status_code >= 400:
                    raise TeacherError(f"teacher endpoint {self.url} rejected the request: HTTP {resp.status_code}: {resp.text[:300]}")
                return _parse_reply(resp, self.url)
            except (_Retryable, httpx.TimeoutException, httpx.TransportError) as exc:
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                logger.info("rl2f openai teacher: attempt %d/%d to %s failed: %s", attempt + 1, self.max_retries + 1, self.url, last)
        raise TeacherError(f"teacher endpoint {self.url} failed after {self.max_retries + 1} attempts "
                           f"(timeout {self.timeout_s}s each); last error: {last}")


def _parse_reply(resp: httpx.Response, url: str) -> str:
    try:
        data = resp.json()
        return data["choices"][0]["message"]["content"] or ""
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise TeacherError(f"teacher endpoint {url} returned a malformed chat completion ({type(exc).__name__}): {resp.text[:300]}") from None
