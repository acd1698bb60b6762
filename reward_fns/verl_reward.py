"""verl's reward entry point: `compute_score`, rl2f's tasks in verl's ``compute_score`` signature.

Use it in a verl 0.9.1 recipe with exactly (``reward.custom_reward_function`` of verl's ``reward.yaml``; the
``pkg://`` form is resolved by ``verl.utils.import_utils.load_module``, which imports the dotted module, and
loaded by ``verl.trainer.ppo.reward.get_custom_reward_fn``)::

    reward.custom_reward_function.path=pkg://reward_fns.verl_reward
    reward.custom_reward_function.name=compute_score

and, optionally, limits through ``+reward.custom_reward_function.reward_kwargs.math_timeout=5`` (any key of
`reward_fns.common.DEFAULT_LIMITS`: ``math_timeout``, ``code_timeout``, ``code_memory_mb``, ``rg_timeout``,
``max_answer_chars``). The legacy top-level ``custom_reward_function`` is ignored by verl 0.9.1's trainer.

This is the only module of `reward_fns` that uses `rl2f_plugin` (its task registry); the verifiers do not.
"""

from __future__ import annotations

from typing import Any

from .common import DEFAULT_LIMITS, set_limits, trim
from .worker_pool import accounting

__all__ = ["compute_score", "FINAL_RESPONSE_KEY", "SCORE_KEYS"]

#: ``extra_info`` key under which the didactic loop passes the student's final reply (via extra_fields);
#: same string as ``rl2f_plugin.schema.EF_FINAL_RESPONSE``.
FINAL_RESPONSE_KEY = "rl2f_final_response"

#: Every result of `compute_score` has exactly these keys (verl asserts that each reward_extra_info key
#: has one value per sample, so a mixed-task batch must not have task-dependent keys). Numbers are logged
#: by verl (``val-aux/<source>/<key>/mean@N``); strings are kept in dumps; ``pred`` feeds verl's maj@N.
SCORE_KEYS = ("score", "acc", "pred", "reason", "task", "tests_passed", "tests_total", "timeout")

_MAX_TEXT = 200


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                  **kwargs: Any) -> dict[str, Any]:
    """Score the student's *final* answer of a (possibly multi-turn) response, in verl's reward signature.

    * The task is ``extra_info["task"]`` (a registered rl2f task name, e.g. ``math``, ``code``,
      ``reasoning_gym:maze``), falling back to `data_source`. An unknown task raises an error listing the
      known ones.
    * The text scored is ``extra_info["rl2f_final_response"]`` when the rl2f loop put it there, else
      `solution_str` (whose *last* answer the task's extractor picks).
    * Returns a dict with the keys `SCORE_KEYS`: ``score`` in [0, 1], ``acc`` (1.0 if correct),
      ``pred`` (the extracted answer, trimmed), ``reason`` (short), ``task``, for code
      ``tests_passed``/``tests_total`` (None for other tasks; verl skips None in its metrics), and
      ``timeout``: 1.0 when the score of 0 came from a time limit (a verifier job's limit, no free verifier
      worker within its queue bound, a sandboxed program's wall clock) rather than from a judged answer,
      so verl logs time-outs apart from wrong answers (``val-aux/<source>/timeout/mean@N``).
    Keyword arguments named like a verifier limit (``math_timeout`` ...) set that limit for the process;
    verl's own extra kwargs (``reward_router_address`` ...) are ignored.
    """
    limits = {k: v for k, v in kwargs.items() if k in DEFAULT_LIMITS and v is not None}
    if limits:
        set_limits(**limits)
    extra_info = dict(extra_info) if extra_info else {}
    task_name = extra_info.get("task") or data_source
    if not task_name:
        raise ValueError("compute_score: neither extra_info['task'] nor data_source names a task")
    task_name = str(task_name)
    where = f"data_source={data_source!r}, index={extra_info.get('index')!r}"
    if ground_truth is None or (isinstance(ground_truth, str) and not ground_truth.strip()):
        raise ValueError(f"compute_score: reward_model.ground_truth is missing or empty ({where}, task={task_name!r})")

    # On first use, not at import: importing rl2f_plugin registers the whole plugin with verl.
    from rl2f_plugin.tasks import get_task

    task = get_task(task_name)
    final = extra_info.get(FINAL_RESPONSE_KEY)
    response = final if isinstance(final, str) and final.strip() else (solution_str or "")
    try:
        with accounting() as account:
            result = task.verify(response, ground_truth, extra_info)
    except (ValueError, TypeError, KeyError) as exc:  # bad ground truth: a data problem, say where
        raise ValueError(f"compute_score: task {task_name!r} could not use reward_model.ground_truth ({where}): "
                         f"{type(exc).__name__}: {exc}") from exc
    details = result.details or {}

    def _int_or_none(v: Any) -> int | None:
        return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    return {
        "score": float(result.score),
        "acc": 1.0 if result.correct else 0.0,
        "pred": trim(result.extracted, _MAX_TEXT) if result.extracted is not None else "",
        "reason": trim(result.reason or "", _MAX_TEXT),
        "task": task_name,
        "tests_passed": _int_or_none(details.get("tests_passed")) if "tests_total" in details else None,
        "tests_total": _int_or_none(details.get("tests_total")) if "tests_total" in details else None,
        "timeout": 1.0 if not result.correct and (account.job_timeouts or account.queue_timeouts
                                                  or details.get("status") == "timeout") else 0.0,
    }
