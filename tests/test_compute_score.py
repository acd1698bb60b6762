"""`reward_fns.verl_reward.compute_score` as verl 0.9.1 loads and calls it.

* verl's real config (``ppo_trainer.yaml`` composed by Hydra) with the documented override
  ``reward.custom_reward_function.path=pkg://reward_fns.verl_reward`` is loaded by verl's own
  ``get_custom_reward_fn`` (the recipes' own path goes through it in tests/test_recipes.py);
* verl's real ``NaiveRewardManager`` (built by ``load_reward_manager``) scores a real ``DataProto`` whose
  response is decoded by a real (small, trained-in-test, byte-level BPE) tokenizer; the loop's
  ``tool_extra_fields`` carry the final answer, as rl2f's didactic loop sends it;
* the result dicts feed verl's ``process_validation_metrics``. Nothing is mocked.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from reward_fns.verl_reward import FINAL_RESPONSE_KEY, SCORE_KEYS, compute_score
from reward_fns.common import _OVERRIDES

ADD_TESTS = {"tests": "assert add(1, 2) == 3\nassert add(-1, 1) == 0\n", "entry_point": "add"}


@pytest.fixture(scope="module")
def verl_config():
    import verl

    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        cfg = compose(config_name="ppo_trainer", overrides=[
            "reward.custom_reward_function.path=pkg://reward_fns.verl_reward",
            "reward.custom_reward_function.name=compute_score",
            "+reward.custom_reward_function.reward_kwargs.math_timeout=7",
        ])
    yield cfg
    _OVERRIDES.clear()


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["The answer is \\boxed{42}. Let me think step by step.", "```python\ndef add(a, b):\n    return a + b\n```"]
    tok.train_from_iterator(corpus * 10, trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>"],
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>")


def test_verl_loader_loads_compute_score(verl_config):
    from verl.trainer.ppo.reward import get_custom_reward_fn

    fn = get_custom_reward_fn(verl_config)
    assert fn.args[0] is compute_score  # verl's partial(_call_with_kwargs, raw_fn, reward_kwargs)
    assert fn.args[1] == {"math_timeout": 7}
    out = fn(data_source="math", solution_str="so \\boxed{\\frac{1}{2}}", ground_truth="0.5", extra_info={"task": "math"})
    assert out["score"] == 1.0 and out["acc"] == 1.0 and out["pred"] == "\\frac{1}{2}"
    assert _OVERRIDES["math_timeout"] == 7.0  # reward_kwargs reached the verifier limits


def _data_proto(tokenizer, rows):
    from verl import DataProto

    prompt_len, resp_len = 4, 96
    prompts, responses, masks = [], [], []
    for row in rows:
        ids = tokenizer(row["response"], add_special_tokens=False)["input_ids"]
        assert len(ids) <= resp_len
        prompts.append([0] * prompt_len)
        responses.append(ids + [tokenizer.pad_token_id] * (resp_len - len(ids)))
        masks.append([1] * prompt_len + [1] * len(ids) + [0] * (resp_len - len(ids)))
    return DataProto.from_dict(
        tensors={"prompts": torch.tensor(prompts), "responses": torch.tensor(responses),
                 "attention_mask": torch.tensor(masks)},
        non_tensors={"data_source": np.array([r["data_source"] for r in rows], dtype=object),
                     "reward_model": np.array([{"ground_truth": r["gt"]} for r in rows], dtype=object),
                     "extra_info": np.array([r["extra_info"] for r in rows], dtype=object),
                     "tool_extra_fields": np.array([r.get("tool_extra_fields", {}) for r in rows], dtype=object)},
    )


def test_naive_reward_manager_end_to_end(verl_config, tokenizer):
    from verl.trainer.ppo.reward import load_reward_manager

    manager = load_reward_manager(verl_config, tokenizer)
    assert type(manager).__name__ == "NaiveRewardManager"
    rows = [
        # single-turn: the last \boxed in the decoded response is scored
        {"data_source": "champ", "response": "I think \\boxed{41}. No wait: \\boxed{42}.", "gt": "42",
         "extra_info": {"task": "math", "index": 0}},
        # multi-turn: the loop's final answer (tool_extra_fields -> extra_info) wins over the decoded text,
        # which contains the teacher's feedback and earlier wrong answers
        {"data_source": "champ", "response": "\\boxed{41} Teacher: check step 2. \\boxed{40}", "gt": "42",
         "extra_info": {"task": "math", "index": 1},
         "tool_extra_fields": {FINAL_RESPONSE_KEY: "Fixed it: \\boxed{42}"}},
        {"data_source": "humaneval", "response": "```python\ndef add(a, b):\n    return a + b\n```",
         "gt": json.dumps(ADD_TESTS), "extra_info": {"task": "code", "index": 2}},
        {"data_source": "arc", "response": "[[1, 2], [3, 4]]", "gt": json.dumps([[1, 2], [3, 5]]),
         "extra_info": {"task": "arc", "index": 3}},
    ]
    data = _data_proto(tokenizer, rows)
    results = [manager.loop.run_until_complete(manager.run_single(data[i:i + 1])) for i in range(len(rows))]
    assert [r["reward_score"] for r in results] == [1.0, 1.0, 1.0, 0.0]
    for r in results:
        assert tuple(r["reward_extra_info"]) == SCORE_KEYS  # the same keys for every task
    assert results[2]["reward_extra_info"]["tests_passed"] == 2
    assert results[3]["reward_extra_info"]["reason"] == "1 of 4 cells differ"

    # verl's validation metrics accept the mixed-task extra info (strings and None are skipped)
    from verl.trainer.ppo.metric_utils import process_validation_metrics

    infos = {k: [r["reward_extra_info"][k] for r in results] for k in SCORE_KEYS}
    metrics = process_validation_metrics([r["data_source"] for r in rows], [str(i) for i in range(4)], infos)
    assert metrics["champ"]["acc"]["mean@1"] == 1.0
    assert metrics["humaneval"]["tests_passed"]["mean@1"] == 2.0
    assert "reason" not in metrics["champ"]


def test_task_fallback_errors_and_missing_ground_truth():
    assert compute_score("math", "\\boxed{3}", "3")["task"] == "math"  # no extra_info: data_source names the task
    with pytest.raises(KeyError, match=r"unknown task 'openai/gsm8k'; known tasks: ") as err:
        compute_score("openai/gsm8k", "\\boxed{3}", "3", {})
    # other test modules may register tasks of their own at import; the built-ins must all be listed
    known = str(err.value).split("known tasks: ", 1)[1].split(", ")
    assert {"arc", "choice", "code", "exact", "math", "reasoning_gym:<name>"} <= set(known)
    with pytest.raises(ValueError, match=r"ground_truth is missing .*index=5"):
        compute_score("x", "\\boxed{3}", None, {"task": "math", "index": 5})
    with pytest.raises(ValueError, match=r"task 'code' could not use reward_model.ground_truth .*index=7.*needs 'tests'"):
        compute_score("x", "```python\npass\n```", {"nothing": 1}, {"task": "code", "index": 7})


def test_result_values_are_short():
    out = compute_score("x", "Answer: " + "7" * 5000, "3", {"task": "exact"})
    assert out["score"] == 0.0 and len(out["pred"]) <= 200 and len(out["reason"]) <= 200
    assert set(out) == set(SCORE_KEYS)


def test_a_score_of_0_from_a_time_limit_says_timeout(monkeypatch):
    """Before: a maths check cut by its time limit was a plain 0 (verl logged it as a wrong answer)."""
    from reward_fns import common

    monkeypatch.setattr(common, "_OVERRIDES", {})
    gold, pred = "\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}"  # equal, but only math-verify/sympy can tell
    assert compute_score("math", f"\\boxed{{{pred}}}", gold) == {**compute_score("math", f"\\boxed{{{pred}}}", gold),
                                                                  "score": 1.0, "timeout": 0.0}
    fresh = "\\frac{2}{\\sqrt{8}}"  # not parsed before by this worker (its parses are cached)
    out = compute_score("math", f"\\boxed{{{fresh}}}", gold, math_timeout=0.002)  # far below any parse
    assert out["score"] == 0.0 and out["timeout"] == 1.0 and out["reason"].startswith("timeout")
    assert compute_score("math", "\\boxed{0.5}", "3/4")["timeout"] == 0.0  # a judged wrong answer
