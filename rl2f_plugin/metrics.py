"""RL²F's metrics: cumulative accuracy by turn, solve rate, turns to solve, leak rate, feedback tokens.

Pure functions over per-trajectory records, shared by the training loop (`rl2f_plugin.trainer` logs them every
step from the trajectories' ``extra_fields``) and by the evaluation harness (which builds the same records from
its transcripts).

Definitions (one trajectory = one didactic interaction of at most K student turns):

* ``solved_at_turn``: 1-based student turn of the first correct answer, 0 if never correct.
* cumulative accuracy at turn k (the paper's metric, non-decreasing in k): fraction of trajectories with
  ``0 < solved_at_turn <= k``, for k = 1..K where K is the largest turn budget in the batch (a trajectory with
  a smaller budget counts as unsolved at its later turns only if it was never solved). With ``weights`` (the
  evaluation report gives each sample of a problem 1/samples), every problem counts once.
* solve rate: fraction solved at any turn (= cumulative accuracy at K).
* turns to solve: mean ``solved_at_turn`` over solved trajectories (NaN-free: omitted when none is solved).
* mean student turns: mean number of student answers per trajectory.
* leak rate: leaks caught by the leak guard / teacher generations, where a trajectory's teacher generations
  are its feedback turns plus the regenerations the guard caused (``feedback_turns + leaks +
  leak_guard_timeouts - leaked_turns - guard_timeout_turns``: every rejected attempt triggers one more
  generation, except the last of a turn that fell back to safe feedback). This is the paper's "fraction of
  teacher turns that leaked" before the guard; a leak check that timed out is not a leak. ``leaked_turn_rate``
  is the fraction of feedback turns that ended on the safe fallback after leaks.
  Feedback turns are read from ``rl2f_feedback_turns`` when the loop writes it, else ``num_student_turns - 1``
  (each revision follows exactly one feedback turn).
* feedback tokens: mean number of teacher-feedback tokens per trajectory (what the world-model loss trains on).
* time-outs, each its own count over the batch (0 is the healthy value): ``timeouts/verify`` (replies scored 0
  because verification hit a time limit), ``timeouts/verify_queue`` (no verifier capacity within
  ``rl2f.verify_queue_timeout_s``), ``timeouts/leak_guard`` (leak checks that timed out; the feedback was
  withheld), ``timeouts/teacher``; ``fallbacks`` (feedback turns that got the safe generic feedback, for any
  reason); ``verify_queue_s/mean`` and ``/max`` (seconds a trajectory's verifications waited for capacity).

Metric names: ``{prefix}/acc_turn{k}``, ``{prefix}/solve_rate``, ``{prefix}/turns_to_solve``,
``{prefix}/mean_student_turns``, ``{prefix}/leak_rate``, ``{prefix}/leaked_turn_rate``,
``{prefix}/feedback_tokens``, ``{prefix}/num_trajectories``, ``{prefix}/timeouts/{verify,verify_queue,leak_guard,
teacher}``, ``{prefix}/fallbacks``, ``{prefix}/verify_queue_s/{mean,max}``, and the same under
``{prefix}/{data_source}/...``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import schema

__all__ = [
    "EF_FEEDBACK_TURNS",
    "TrajectoryRecord",
    "record_from_extra_fields",
    "cumulative_accuracy",
    "solve_rate",
    "turns_to_solve",
    "mean_student_turns",
    "teacher_generations",
    "leak_rate",
    "summarize",
    "format_metric",
    "training_metrics",
]

#: Optional extra field: feedback turns actually given in the trajectory (falls back to num_student_turns - 1).
EF_FEEDBACK_TURNS = schema.EF_FEEDBACK_TURNS

#: TrajectoryRecord counters read from extra fields of the same meaning (0 when absent: older trajectories).
_TIMEOUT_FIELDS = {
    "verify_timeouts": schema.EF_VERIFY_TIMEOUTS,
    "verify_queue_timeouts": schema.EF_VERIFY_QUEUE_TIMEOUTS,
    "leak_guard_timeouts": schema.EF_LEAK_GUARD_TIMEOUTS,
    "guard_timeout_turns": schema.EF_GUARD_TIMEOUT_TURNS,
    "teacher_timeouts": schema.EF_TEACHER_TIMEOUTS,
    "fallbacks": schema.EF_FALLBACKS,
}

#: The extra fields whose presence marks a trajectory as an rl2f (didactic/autodidact) one.
_REQUIRED = (schema.EF_SOLVED_AT_TURN, schema.EF_NUM_STUDENT_TURNS)


@dataclass(frozen=True)
class TrajectoryRecord:
    """What the metrics need from one trajectory."""

    solved_at_turn: int
    num_student_turns: int
    max_turns: int
    leaks: int = 0
    leaked_turns: int = 0
    feedback_tokens: int = 0
    feedback_turns: int | None = None
    data_source: str = "unknown"
    verify_timeouts: int = 0
    verify_queue_timeouts: int = 0
    verify_queue_s: float = 0.0
    leak_guard_timeouts: int = 0
    guard_timeout_turns: int = 0
    teacher_timeouts: int = 0
    fallbacks: int = 0

    def __post_init__(self):
        if self.num_student_turns < 0 or self.max_turns < 0:
            raise ValueError(f"turn counts must be >= 0, got {self}")
        if not 0 <= self.solved_at_turn <= max(self.num_student_turns, 0):
            raise ValueError(
                f"solved_at_turn={self.solved_at_turn} is outside 0..num_student_turns={self.num_student_turns}"
            )

    @property
    def n_feedback_turns(self) -> int:
        if self.feedback_turns is not None:
            return self.feedback_turns
        return max(self.num_student_turns - 1, 0)


def _as_int(value: Any, field: str, where: str) -> int:
    if isinstance(value, bool):
        return int(value)
    if hasattr(value, "item") and not isinstance(value, (list, tuple)):  # numpy / torch scalars
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int):
        return value
    raise ValueError(f"{where}: extra field '{field}' must be an integer, got {value!r} ({type(value).__name__})")


def record_from_extra_fields(
    extra_fields: Mapping[str, Any] | None, data_source: str | None = None, where: str = "sample"
) -> TrajectoryRecord | None:
    """Build a record from a trajectory's ``extra_fields`` (the rl2f ``schema.EF_*`` keys); None for trajectories
    of other agent loops (no rl2f fields). ``where`` names the sample in error messages."""
    if not isinstance(extra_fields, Mapping) or not all(k in extra_fields for k in _REQUIRED):
        return None
    ef = extra_fields
    num_turns = _as_int(ef[schema.EF_NUM_STUDENT_TURNS], schema.EF_NUM_STUDENT_TURNS, where)
    max_turns = ef.get(schema.EF_MAX_TURNS)
    max_turns = num_turns if max_turns is None else _as_int(max_turns, schema.EF_MAX_TURNS, where)
    fb_turns = ef.get(EF_FEEDBACK_TURNS)
    source = data_source if data_source not in (None, "") else ef.get(schema.EF_TASK) or "unknown"
    try:
        return TrajectoryRecord(
            solved_at_turn=_as_int(ef[schema.EF_SOLVED_AT_TURN], schema.EF_SOLVED_AT_TURN, where),
            num_student_turns=num_turns,
            max_turns=max(max_turns, num_turns),
            leaks=_as_int(ef.get(schema.EF_LEAK_COUNT, 0), schema.EF_LEAK_COUNT, where),
            leaked_turns=_as_int(ef.get(schema.EF_LEAKED_TURNS, 0), schema.EF_LEAKED_TURNS, where),
            feedback_tokens=_as_int(ef.get(schema.EF_FEEDBACK_TOKENS, 0), schema.EF_FEEDBACK_TOKENS, where),
            feedback_turns=None if fb_turns is None else _as_int(fb_turns, EF_FEEDBACK_TURNS, where),
            data_source=str(source),
            verify_queue_s=float(ef.get(schema.EF_VERIFY_QUEUE_S, 0.0) or 0.0),
            **{name: _as_int(ef.get(key, 0), key, where) for name, key in _TIMEOUT_FIELDS.items()},
        )
    except ValueError as exc:
        if str(exc).startswith(where):
            raise
        raise ValueError(f"{where}: {exc}") from None


# --- the metrics themselves ------------------------------------------------------------------------------------
def cumulative_accuracy(
    solved_at_turns: Sequence[int], max_turns: int, weights: Sequence[float] | None = None
) -> list[float]:
    """Fraction of trajectories solved at or before turn k, for k = 1..max_turns (non-decreasing).

    ``weights`` (one per trajectory, > 0) makes it the weighted fraction: with 1/(samples of the problem) for
    every sample, it is the mean over problems of each problem's fraction.
    """
    n = len(solved_at_turns)
    if weights is not None and len(weights) != n:
        raise ValueError(f"{len(weights)} weights for {n} trajectories")
    total = n if weights is None else sum(weights)
    if n == 0 or total <= 0:
        return [float("nan")] * max_turns
    counts = [0] * (max_turns + 1)
    for s, w in zip(solved_at_turns, weights if weights is not None else itertools.repeat(1)):
        if 0 < s <= max_turns:
            counts[s] += w
    out, running = [], 0
    for k in range(1, max_turns + 1):
        running += counts[k]
        out.append(running / total)
    return out


def solve_rate(solved_at_turns: Sequence[int]) -> float:
    n = len(solved_at_turns)
    return sum(1 for s in solved_at_turns if s > 0) / n if n else float("nan")


def turns_to_solve(solved_at_turns: Sequence[int]) -> float:
    """Mean turn of the first correct answer among solved trajectories (NaN if none)."""
    solved = [s for s in solved_at_turns if s > 0]
    return sum(solved) / len(solved) if solved else float("nan")


def mean_student_turns(records: Sequence[TrajectoryRecord]) -> float:
    """Mean number of student answers per trajectory (NaN for no trajectories)."""
    return sum(r.num_student_turns for r in records) / len(records) if records else float("nan")


def teacher_generations(records: Iterable[TrajectoryRecord]) -> int:
    """Teacher generations the leak guard checked: feedback turns plus the regenerations its rejections caused
    (``feedback_turns + leaks + leak_guard_timeouts - leaked_turns - guard_timeout_turns``, see the module
    docstring); the leak rate's denominator."""
    return sum(r.n_feedback_turns + r.leaks + r.leak_guard_timeouts - r.leaked_turns - r.guard_timeout_turns
               for r in records)


def leak_rate(records: Iterable[TrajectoryRecord]) -> float:
    """Leaks caught / teacher generations (see the module docstring); NaN when no teacher generation happened."""
    records = list(records)
    leaks = sum(r.leaks for r in records)
    gens = teacher_generations(records)
    return leaks / gens if gens > 0 else float("nan")


def _group_metrics(records: Sequence[TrajectoryRecord], prefix: str) -> dict[str, float]:
    solved = [r.solved_at_turn for r in records]
    k_max = max(r.max_turns for r in records)
    out: dict[str, float] = {}
    for k, acc in enumerate(cumulative_accuracy(solved, k_max), start=1):
        out[f"{prefix}/acc_turn{k}"] = acc
    out[f"{prefix}/solve_rate"] = solve_rate(solved)
    tts = turns_to_solve(solved)
    if not math.isnan(tts):
        out[f"{prefix}/turns_to_solve"] = tts
    out[f"{prefix}/mean_student_turns"] = mean_student_turns(records)
    lr = leak_rate(records)
    fb_turns = sum(r.n_feedback_turns for r in records)
    if not math.isnan(lr):
        out[f"{prefix}/leak_rate"] = lr
    if fb_turns > 0:
        out[f"{prefix}/leaked_turn_rate"] = sum(r.leaked_turns for r in records) / fb_turns
    out[f"{prefix}/feedback_tokens"] = sum(r.feedback_tokens for r in records) / len(records)
    out[f"{prefix}/num_trajectories"] = float(len(records))
    for kind in ("verify", "verify_queue", "leak_guard", "teacher"):
        out[f"{prefix}/timeouts/{kind}"] = float(sum(getattr(r, f"{kind}_timeouts") for r in records))
    out[f"{prefix}/fallbacks"] = float(sum(r.fallbacks for r in records))
    out[f"{prefix}/verify_queue_s/mean"] = sum(r.verify_queue_s for r in records) / len(records)
    out[f"{prefix}/verify_queue_s/max"] = max(r.verify_queue_s for r in records)
    return out


def _source_key(source: str) -> str:
    return str(source).replace("/", "_") or "unknown"


def summarize(records: Sequence[TrajectoryRecord], prefix: str = "rl2f", by_source: bool = True) -> dict[str, float]:
    """All metrics over ``records``, plus the same per data source. Empty dict for no records."""
    records = list(records)
    if not records:
        return {}
    out = _group_metrics(records, prefix)
    if by_source:
        groups: dict[str, list[TrajectoryRecord]] = {}
        for r in records:
            groups.setdefault(_source_key(r.data_source), []).append(r)
        for source, group in sorted(groups.items()):
            out.update(_group_metrics(group, f"{prefix}/{source}"))
    return out


def training_metrics(
    extra_fields: Sequence[Mapping[str, Any] | None],
    data_sources: Sequence[str | None] | None = None,
    is_padding: Sequence[bool] | None = None,
    prefix: str = "rl2f",
) -> dict[str, float]:
    """Per-step training metrics from a batch's per-sample ``extra_fields`` (as stored in TransferQueue).

    Skips verl's synthetic padding rows (``is_padding``; they copy a real sample's extra fields) and
    trajectories of other agent loops (no rl2f fields); returns {} when nothing is left.
    """
    n = len(extra_fields)
    for name, seq in (("data_sources", data_sources), ("is_padding", is_padding)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"{name} has {len(seq)} entries but extra_fields has {n}")
    records = []
    for i, ef in enumerate(extra_fields):
        if is_padding is not None and is_padding[i]:
            continue
        source = data_sources[i] if data_sources is not None else None
        rec = record_from_extra_fields(ef, source, where=f"sample {i}")
        if rec is not None:
            records.append(rec)
    return summarize(records, prefix=prefix)


def format_metric(value: Any, digits: int = 3, nan: str = "-") -> str:
    """A metric for a table or a log line: ``digits`` decimals, "-" for None (not measured), `nan` for NaN."""
    if value is None:
        return "-"
    value = float(value)
    return nan if math.isnan(value) else f"{value:.{digits}f}"
