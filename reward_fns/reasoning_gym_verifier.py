"""reasoning-gym tasks (``reasoning_gym:<generator>``), scored by the generator's own ``score_answer``.

How a dataset row carries what ``score_answer`` needs (written by
``examples/data_preprocess/reasoning_gym_data.py``), all in ``extra_info``:

* ``rg_dataset``: the generator name (also the part after ``reasoning_gym:`` in the task name);
* ``rg_config``:  the generator's config as a JSON string (``dataclasses.asdict(ds.config)``, seed and size
  included), and ``rg_index``: the entry's index. With both, the worker rebuilds the exact entry with
  ``reasoning_gym.create_dataset(rg_dataset, **rg_config)[rg_index]``, metadata objects intact
  (preferred: some scorers read metadata that JSON cannot hold faithfully);
* ``rg_entry``:   the entry (``question``, ``answer``, ``metadata``) as a JSON string (used when the config
  or index is missing, or the rebuilt entry's question differs from it);
* with none of these, the entry is ``{"answer": ground_truth, "metadata": {}}`` (enough for generators that
  compare against the answer only).

Answer extraction (``extra_info["answer_extraction"]``, the row's choice, like the ``strict`` / ``flexible``
methods of verl's own GSM8K scorer):

* ``strict`` (default): the last ``<answer>...</answer>`` (reasoning-gym's convention), else the last
  ``\\boxed{}``, else the last "Answer:" line; a reply with none of them has no answer;
* ``flexible``: the last number (``last_number``) of that explicit answer ("So, the answer is (18)." -> "18"), or
  of the whole reply when it has none; an explicit answer without a number is kept as it is. Meant for numeric
  generators and small models that answer right but ignore the tag format; there is no bonus for the format
  either way, and only one number (the last) is ever scored.

The reward is sparse: 1.0 when ``score_answer`` says the answer is right, else 0.0. reasoning-gym's own partial
credit (its default scorer gives ``len(oracle) / len(answer)`` to any answer that merely *contains* the oracle,
so "0123456789" earns 0.1 on every one-digit problem) is used only when the row sets
``extra_info["partial_credit"] = True``; the raw score is kept in the details either way (``rg_score``).

Scoring runs in a `reward_fns.worker_pool` worker, so it is time-bounded (``rg_timeout``) and never blocks the
caller; reasoning-gym's import and the dataset build are not counted against that limit.
"""

from __future__ import annotations

import json
from typing import Any

from .common import VerifyResult, limit, trim
from .extraction import answer_tag, extract_final_answer, last_number
from .worker_pool import PoolError, PoolTimeout, get_pool

__all__ = ["verify_reasoning_gym", "extract_rg_answer", "known_generators", "ANSWER_EXTRACTION_MODES"]

#: values of ``extra_info["answer_extraction"]``
ANSWER_EXTRACTION_MODES = ("strict", "flexible")


def known_generators() -> list[str]:
    from reasoning_gym.factory import DATASETS

    return sorted(DATASETS)


def extract_rg_answer(response: str, mode: str = "strict") -> str | None:
    """The student's answer under extraction `mode` (see the module docstring)."""
    if mode not in ANSWER_EXTRACTION_MODES:
        raise ValueError(f"unknown answer_extraction {mode!r}; known: {', '.join(ANSWER_EXTRACTION_MODES)}")
    ans = answer_tag(response or "")
    if ans is None:
        ans = extract_final_answer(response or "")
    if mode == "flexible":  # the last number of the explicit answer ("(18)", "**18**", "9 + 9 = 18"), else of the reply
        return last_number(ans if ans is not None else (response or "")) or ans
    return ans


def answer_extraction_mode(extra_info: dict | None) -> str:
    """The row's ``answer_extraction`` (default ``strict``); an unknown value is a data error naming the field."""
    mode = (extra_info or {}).get("answer_extraction") or "strict"
    if mode not in ANSWER_EXTRACTION_MODES:
        raise ValueError(f"extra_info.answer_extraction={mode!r} is not one of {', '.join(ANSWER_EXTRACTION_MODES)}")
    return str(mode)


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() in ("1", "true", "yes")) or (
        isinstance(value, (int, float)) and not isinstance(value, bool) and value == 1)


def _jsonish(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        value = value.decode()
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return None
    return value


def verify_reasoning_gym(generator: str, response: str, ground_truth: Any, extra_info: dict | None = None,
                         timeout: float | None = None) -> VerifyResult:
    extra_info = extra_info or {}
    mode = answer_extraction_mode(extra_info)
    answer = extract_rg_answer(response, mode)
    if answer is None:
        expected = "<answer>...</answer>" + (" or a number" if mode == "flexible" else "")
        return VerifyResult(0.0, reason=f"no final answer found (expected {expected})")
    if len(answer) > 20 * int(limit("max_answer_chars")):
        return VerifyResult(0.0, extracted=trim(answer, 100), reason=f"answer too long ({len(answer)} chars)")
    config = _jsonish(extra_info.get("rg_config"))
    index = extra_info.get("rg_index")
    entry = extra_info.get("rg_entry")
    if isinstance(entry, dict):
        entry = json.dumps(entry, default=str)
    args = {
        "generator": extra_info.get("rg_dataset") or generator,
        "answer": answer,
        "entry": entry if isinstance(entry, str) else None,
        "config": config if isinstance(config, dict) else None,
        "index": int(index) if index is not None and str(index).lstrip("-").isdigit() else None,
        "ground_truth": None if ground_truth is None else str(ground_truth),
    }
    t = limit("rg_timeout", timeout)
    try:
        res = get_pool().call("rg", args, timeout=t, preload=("reasoning_gym",))
    except PoolTimeout:
        return VerifyResult(0.0, extracted=answer, reason=f"timeout: score_answer took longer than {t:g}s")
    except PoolError as exc:
        return VerifyResult(0.0, extracted=answer, reason=f"verifier error: {trim(str(exc), 200)}")
    raw = float(res["score"])
    details = {"entry_source": res.get("entry_source", ""), "rg_score": raw}
    if raw >= 1.0:
        return VerifyResult(1.0, extracted=answer, reason="correct", details=details)
    if raw > 0 and _truthy(extra_info.get("partial_credit")):
        return VerifyResult(raw, extracted=answer, reason=f"partial credit {raw:.2f}", details=details)
    return VerifyResult(0.0, extracted=answer, reason="incorrect", details=details)


# ------------------------------------------------------------------------------------------------------
# Worker side
# ------------------------------------------------------------------------------------------------------
_DATASETS: dict[str, Any] = {}


def _dataset(generator: str, config: dict | None):
    import reasoning_gym
    from reasoning_gym.factory import DATASETS

    key = f"{generator}|{json.dumps(config, sort_keys=True, default=str) if config else ''}"
    if key not in _DATASETS:
        if generator not in DATASETS:
            raise KeyError(f"unknown reasoning-gym generator {generator!r}")
        if config:
            cfg = dict(config)
            cfg.setdefault("size", 1)
            _DATASETS[key] = reasoning_gym.create_dataset(generator, **cfg)
        else:
            _DATASETS[key] = reasoning_gym.create_dataset(generator, size=1, seed=0)
    return _DATASETS[key]


def prepare_in_worker(generator: str, config: dict | None) -> None:
    try:
        _dataset(generator, config)
    except Exception:  # noqa: BLE001 - score_in_worker falls back to the default config
        _dataset(generator, None)


def score_in_worker(generator: str, answer: str, entry_json: str | None, config: dict | None,
                     index: int | None, ground_truth: str | None) -> dict:
    try:
        ds = _dataset(generator, config)
    except Exception:  # noqa: BLE001
        ds, config = _dataset(generator, None), None
    stored = json.loads(entry_json) if entry_json else None
    entry, source = None, ""
    if config and index is not None:
        try:
            rebuilt = ds[index]
            if stored is None or rebuilt.get("question") == stored.get("question"):
                entry, source = rebuilt, "rebuilt"
        except Exception:  # noqa: BLE001
            entry = None
    if entry is None and stored is not None:
        entry, source = stored, "rg_entry"
        entry.setdefault("metadata", {})
    if entry is None:
        entry, source = {"question": "", "answer": ground_truth, "metadata": {}}, "ground_truth"
    score = ds.score_answer(answer, entry)
    return {"score": max(0.0, min(1.0, float(score or 0.0))), "entry_source": source}
