"""Rebuild a readable transcript from one agent-loop output.

The loop's output is the single source of truth: the student turns are the contiguous ``response_mask == 1``
spans of ``response_ids`` (tokens the model sampled), the feedback turns the contiguous ``feedback_mask == 1``
spans (``RL2FAgentLoopOutput.feedback_mask``, see `rl2f_plugin.schema.FEEDBACK_MASK_KEY`). Per-turn correctness,
the turn of the first correct answer and leak counts come from the ``schema.EF_*`` extra fields the rl2f loops
write; for a loop that writes none (e.g. verl's ``single_turn_agent``) the harness verifies each student turn
itself with the row's rl2f task.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from .. import schema

__all__ = ["mask_spans", "rebuild_turns", "json_safe"]


def mask_spans(mask: Sequence[int]) -> list[tuple[int, int]]:
    """Half-open ``[start, end)`` index ranges of the contiguous runs of 1 in `mask`."""
    spans: list[tuple[int, int]] = []
    start = None
    for i, m in enumerate(mask):
        if m and start is None:
            start = i
        elif not m and start is not None:
            spans.append((start, i))
            start = None
    if start is not None:
        spans.append((start, len(mask)))
    return spans


def _to_list(x: Any) -> list:
    if x is None:
        return []
    if hasattr(x, "tolist"):
        x = x.tolist()
    return list(x)


def rebuild_turns(output: Any, tokenizer: Any) -> dict[str, Any]:
    """Student and feedback turns of one ``AgentLoopOutput``, in order of appearance.

    Returns ``{"prompt": str, "turns": [{"role": "student"|"feedback", "index": k, "text": str,
    "tokens": n, "start": i}], "num_student_spans": int, "num_feedback_spans": int}``; ``index`` is 1-based per
    role (student turn k is followed by feedback k).
    """
    response_ids = _to_list(output.response_ids)
    response_mask = _to_list(output.response_mask)
    feedback_mask = _to_list(getattr(output, schema.FEEDBACK_MASK_KEY, None))
    if not feedback_mask:
        feedback_mask = _to_list((output.extra_fields or {}).get(schema.FEEDBACK_MASK_KEY))
    if feedback_mask and len(feedback_mask) != len(response_ids):
        raise ValueError(f"feedback_mask has {len(feedback_mask)} entries for {len(response_ids)} response tokens")
    pieces: list[tuple[int, int, str]] = [(s, e, "student") for s, e in mask_spans(response_mask)]
    pieces += [(s, e, "feedback") for s, e in mask_spans(feedback_mask)]
    pieces.sort()
    turns: list[dict[str, Any]] = []
    counters = {"student": 0, "feedback": 0}
    for s, e, role in pieces:
        counters[role] += 1
        turns.append({"role": role, "index": counters[role], "start": s, "tokens": e - s,
                      "text": tokenizer.decode(response_ids[s:e], skip_special_tokens=True)})
    return {
        "prompt": tokenizer.decode(_to_list(output.prompt_ids), skip_special_tokens=False),
        "turns": turns,
        "num_student_spans": counters["student"],
        "num_feedback_spans": counters["feedback"],
        "response_tokens": len(response_ids),
    }


def json_safe(value: Any, depth: int = 0) -> Any:
    """`value` made JSON-serialisable (numpy/torch scalars and arrays to Python, unknown objects to repr)."""
    if depth > 8:
        return repr(value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if hasattr(value, "tolist"):
        return json_safe(value.tolist(), depth + 1)
    if hasattr(value, "item") and callable(value.item):
        try:
            return json_safe(value.item(), depth + 1)
        except Exception:  # noqa: BLE001
            return repr(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [json_safe(v, depth + 1) for v in value]
    if hasattr(value, "model_dump"):
        return json_safe(value.model_dump(), depth + 1)
    return repr(value)
