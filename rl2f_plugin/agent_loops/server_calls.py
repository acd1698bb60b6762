"""A generate call that stops on the server when its caller gives up (the teacher's timeout cancels it).

verl 0.9.1's ``LLMServerClient.generate`` awaits the replica's Ray actor call; cancelling that await (what
``asyncio.wait_for`` does on a timeout) does not cancel the actor call, so the server keeps generating a reply
nobody will read (checked on CPU with a real Ray actor: ``tests/test_didactic_loop.py``). `generate_abortable`
makes the same call as ``LLMServerClient.generate`` for a text prompt (the client's own load balancer, sticky
routing and per-call vLLM request id) but keeps the actor call's ``ObjectRef`` and ``ray.cancel``s it on
cancellation: the replica's ``generate`` coroutine then gets ``CancelledError`` inside vLLM's ``AsyncLLM.generate``
loop, which aborts the request in the engine. Clients with their own ``generate`` (fully-async, the eval
harness's backends, test stand-ins) are called as they are.
"""

from __future__ import annotations

import asyncio
from typing import Any

import ray
from verl.workers.rollout.llm_server import LLMServerClient
from verl.workers.rollout.replica import TokenOutput

__all__ = ["generate_abortable"]


async def generate_abortable(client: Any, request_id: str, prompt_ids: list[int], sampling_params: dict[str, Any]) -> TokenOutput:
    """``client.generate(request_id=..., prompt_ids=..., sampling_params=...)``, aborted on the server if cancelled."""
    if not isinstance(client, LLMServerClient) or type(client).generate is not LLMServerClient.generate:
        return await client.generate(request_id=request_id, prompt_ids=prompt_ids, sampling_params=sampling_params)
    server_id, server = await client._acquire_server(request_id, prompt_ids=prompt_ids, sampling_params=sampling_params)
    try:
        ref = server.generate.remote(request_id=client._vllm_request_id(request_id), prompt_ids=prompt_ids,
                                     sampling_params=sampling_params)
        try:
            output: TokenOutput = await ref
        except asyncio.CancelledError:
            ray.cancel(ref)
            raise
        global_steps = output.extra_fields.get("global_steps")
        output.extra_fields.setdefault("min_global_steps", global_steps)
        output.extra_fields.setdefault("max_global_steps", global_steps)
        return output
    finally:
        client._release_server(server_id, request_id=request_id)
