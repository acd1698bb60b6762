"""Summaries of evaluation transcripts: cumulative accuracy by turn with 95% bootstrap CIs, leak rate, turns to
solve; a Markdown table and a Figure-4-style plot (cumulative accuracy vs turn, one line per run).

Every figure comes from `rl2f_plugin.metrics` (the functions training logs ``rl2f/*`` with), applied to
`TrajectoryRecord`s built from the transcript records: cumulative accuracy at turn t = fraction of problems
whose first correct answer came at turn <= t (RL²F's metric; non-decreasing in t), leak rate, turns to solve,
mean student turns. With several samples per problem, a problem's cumulative accuracy is the mean over its
samples (each sample weighs 1/samples) and the bootstrap resamples problems, computing the metric on each
resample; leak rate and turns to solve pool the samples. Problems whose record is an error are *not* counted
as wrong: they are reported in their own column, so a flaky endpoint cannot pass for a weak model.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from .. import metrics
from ..metrics import TrajectoryRecord, format_metric

#: The run header's ``mode`` of independent single-turn sampling (pass@k), ``python -m rl2f_plugin.eval --independent``.
INDEPENDENT = "independent"

__all__ = ["INDEPENDENT", "is_independent", "RunSummary", "PairedDifference", "load_records", "trajectory_record", "summarize_run", "bootstrap_ci",
           "format_table", "per_problem", "paired_difference", "format_paired_table", "plot_cumulative", "summarize_file"]


@dataclass
class RunSummary:
    name: str
    max_turns: int
    n_problems: int
    n_records: int
    n_errors: int
    cum_acc: list[float]
    ci_low: list[float]
    ci_high: list[float]
    leak_rate: float | None
    """Leaks caught by the leak guard / teacher replies checked (feedback turns + regenerated leaks - turns that
    fell back to the safe feedback), as in training's ``rl2f/leak_rate`` (`rl2f_plugin.metrics.leak_rate`);
    None without teacher replies. The paper's figure (~0.3% of teacher turns leaked) is of this kind."""
    leak_count: int
    feedback_turns: int
    mean_turns_to_solve: float | None
    """Mean first-correct turn over solved records."""
    mean_student_turns: float
    teacher_replies: int = 0
    """Teacher replies the leak guard checked (the leak rate's denominator)."""
    meta: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def load_records(path: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(run header, final problem records) of a transcript file; the last record of a key wins (a resumed
    run appends a successful record after an earlier error)."""
    header: dict[str, Any] = {}
    latest: "OrderedDict[str, dict]" = OrderedDict()
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    last = max((i for i, ln in enumerate(lines) if ln.strip()), default=-1)
    for i, line in enumerate(lines):
        lineno = i + 1
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            # a run killed mid-write leaves a partial last line: skip it (the problem is redone on resume)
            if i == last:
                break
            raise ValueError(f"{path} line {lineno}: not valid JSON ({exc})") from exc
        if rec.get("record") == "run":
            header = header or rec
        elif rec.get("record") == "problem":
            if "key" not in rec:
                raise ValueError(f"{path} line {lineno}: problem record without 'key'")
            latest.pop(rec["key"], None)
            latest[rec["key"]] = rec
    return header, list(latest.values())


def trajectory_record(rec: dict[str, Any]) -> TrajectoryRecord:
    """The `TrajectoryRecord` of one ``status: "ok"`` problem record of a transcript file."""
    n_student = int(rec.get("num_student_turns") or 0)
    fb_turns = rec.get("feedback_turns")
    try:
        return TrajectoryRecord(
            solved_at_turn=int(rec.get("solved_at_turn") or 0),
            num_student_turns=n_student,
            max_turns=int(rec.get("max_turns") or n_student),
            leaks=int(rec.get("leak_count") or 0),
            leaked_turns=int(rec.get("leaked_turns") or 0),
            feedback_tokens=sum(int(t.get("tokens") or 0) for t in rec.get("turns") or ()
                                if t.get("role") == "feedback"),
            feedback_turns=None if fb_turns is None else int(fb_turns),
            data_source=str(rec.get("data_source") or rec.get("task") or "unknown"),
        )
    except ValueError as exc:
        raise ValueError(f"problem record {rec.get('key')!r}: {exc}") from None


def bootstrap_ci(units: Sequence[Any], statistic: Callable[[list[Any]], Sequence[float]], *, n_boot: int = 2000,
                 level: float = 0.95, seed: int = 0) -> np.ndarray:
    """Percentile bootstrap CI of `statistic` (a vector of m values) over `units` (here: problems) resampled
    with replacement; `statistic` is computed on each resample. Returns [2, m]."""
    n = len(units)
    if n == 0:
        m = len(statistic([]))
        return np.full((2, m), np.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    stats = np.array([statistic([units[i] for i in row]) for row in idx.tolist()], dtype=float)  # [n_boot, m]
    alpha = (1.0 - level) / 2.0
    return np.quantile(stats, [alpha, 1.0 - alpha], axis=0)


def _cumulative_accuracy(problems: list[list[TrajectoryRecord]], max_turns: int) -> list[float]:
    """`metrics.cumulative_accuracy` over problems: each of a problem's samples weighs 1/samples (as whole
    numbers, lcm/samples, so the sums stay exact)."""
    scale = math.lcm(*{len(samples) for samples in problems})
    solved = [r.solved_at_turn for samples in problems for r in samples]
    weights = [scale // len(samples) for samples in problems for _ in samples]
    return metrics.cumulative_accuracy(solved, max_turns, weights=weights)


def _pass_at_ks(solved_at_turns: Sequence[int], k: int) -> np.ndarray:
    """pass@1..k of one problem's independent samples (NaN where k exceeds the samples)."""
    from .controls import pass_at_k

    c = sum(1 for s in solved_at_turns if s > 0)
    return np.array([pass_at_k(len(solved_at_turns), c, j) for j in range(1, k + 1)])


def _mean_over_units(units: Sequence[np.ndarray]) -> list[float]:
    return list(np.mean(units, axis=0)) if len(units) else []


def _none_if_nan(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def summarize_run(records: Iterable[dict[str, Any]], *, name: str = "run", max_turns: int | None = None,
                  n_boot: int = 2000, seed: int = 0, meta: dict[str, Any] | None = None,
                  independent: bool = False) -> RunSummary:
    """The `RunSummary` of one run's final problem records (`load_records`). `independent`: the records are
    independent single-turn samples (``--independent``) and the value at turn k is their pass@k
    (`rl2f_plugin.eval.controls.pass_at_k`), for k up to `max_turns`."""
    records = list(records)
    ok = [r for r in records if r.get("status") == "ok"]
    n_errors = len(records) - len(ok)
    if max_turns is None:
        max_turns = max([int(r.get("max_turns") or 0) for r in records] + [1])
    k = int(max_turns)
    by_problem: "OrderedDict[Any, list[TrajectoryRecord]]" = OrderedDict()
    for r in ok:
        by_problem.setdefault(r.get("row", r["key"]), []).append(trajectory_record(r))
    problems = list(by_problem.values())
    trajectories = [t for samples in problems for t in samples]
    if independent:
        per_problem = [_pass_at_ks([t.solved_at_turn for t in samples], k) for samples in problems]
        cum_acc = _mean_over_units
        cum = cum_acc(per_problem)
        ci = bootstrap_ci(per_problem, cum_acc, n_boot=n_boot, seed=seed)
    else:
        cum_acc = functools.partial(_cumulative_accuracy, max_turns=k)
        cum = cum_acc(problems)
        ci = bootstrap_ci(problems, cum_acc, n_boot=n_boot, seed=seed)
    solved = [t.solved_at_turn for t in trajectories]
    return RunSummary(
        name=name, max_turns=k, n_problems=len(problems), n_records=len(ok), n_errors=n_errors,
        cum_acc=[float(x) for x in cum], ci_low=[float(x) for x in ci[0]], ci_high=[float(x) for x in ci[1]],
        leak_rate=_none_if_nan(metrics.leak_rate(trajectories)), leak_count=sum(t.leaks for t in trajectories),
        feedback_turns=sum(t.n_feedback_turns for t in trajectories),
        teacher_replies=metrics.teacher_generations(trajectories),
        mean_turns_to_solve=_none_if_nan(metrics.turns_to_solve(solved)),
        mean_student_turns=float(metrics.mean_student_turns(trajectories)) if trajectories else 0.0,
        meta=dict(meta or {}),
    )


def summarize_file(path: str, *, name: str | None = None, max_turns: int | None = None, n_boot: int = 2000,
                   seed: int = 0) -> RunSummary:
    header, records = load_records(path)
    if name is None:
        name = header.get("name") or os.path.splitext(os.path.basename(path))[0]
    return summarize_run(records, name=name, max_turns=max_turns or header.get("max_turns"), n_boot=n_boot,
                         seed=seed, independent=is_independent(header),
                         meta={"path": path, **{k: header.get(k) for k in ("agent_loop", "teacher", "student", "data",
                                                                          "mode", "n_samples")}})


def is_independent(header: dict[str, Any]) -> bool:
    """Whether a transcript file holds independent single-turn samples (the harness' ``--independent`` mode)."""
    return header.get("mode") == INDEPENDENT


def format_table(summaries: list[RunSummary]) -> str:
    """One Markdown table: per run, cumulative accuracy at each turn as ``acc [lo, hi]``, then counts."""
    k = max(s.max_turns for s in summaries)
    head = ["run", "n", "errors"] + [f"turn {t}" for t in range(1, k + 1)] + ["leak rate", "turns to solve"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for s in summaries:
        independent = s.meta.get("mode") == INDEPENDENT
        label = f"{s.name} (pass@k, {s.meta.get('n_samples')} samples)" if independent else s.name
        cells = [label, str(s.n_problems), str(s.n_errors)]
        for t in range(k):
            if t < s.max_turns and not np.isnan(s.cum_acc[t]):
                lo, hi = format_metric(s.ci_low[t]), format_metric(s.ci_high[t])
                cells.append(f"{format_metric(s.cum_acc[t])} [{lo}, {hi}]")
            else:
                cells.append("-")
        leak = "-" if s.leak_rate is None else (
            f"{format_metric(s.leak_rate)} ({s.leak_count} leaks / {s.teacher_replies} teacher replies)")
        cells += [leak, format_metric(s.mean_turns_to_solve, 2)]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Cumulative accuracy at turn t = share of problems first solved at or before turn t, "
                 "with 95% percentile-bootstrap CIs over problems; errored problems are excluded and counted.")
    if any(s.meta.get("mode") == INDEPENDENT for s in summaries):
        lines.append("A pass@k row: k independent single-turn samples (no feedback, the same per-answer token budget), "
                     "unbiased pass@k from its samples per problem, in the turn-k column.")
    return "\n".join(lines)


@dataclass
class PairedDifference:
    """B - A in cumulative accuracy by turn over the problems both evaluated (paired: the same problems), with a
    95% bootstrap CI over those problems. A and B may each pool several runs (e.g. two seeds): a problem's value
    is then the mean over the runs."""

    a: str
    b: str
    n_problems: int
    max_turns: int
    diff: list[float]
    ci_low: list[float]
    ci_high: list[float]
    better: list[int]
    """Per turn: problems where B's value is higher than A's."""
    worse: list[int]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def per_problem(records: Iterable[dict[str, Any]], k: int, *, independent: bool = False) -> dict[Any, list[float]]:
    """Problem -> its cumulative accuracy by turn 1..k (`metrics.cumulative_accuracy` over its samples), or for
    independent samples its pass@1..k."""
    by_problem: "OrderedDict[Any, list[int]]" = OrderedDict()
    for r in records:
        if r.get("status") == "ok":
            by_problem.setdefault(r.get("row", r["key"]), []).append(trajectory_record(r).solved_at_turn)
    if independent:
        return {p: list(_pass_at_ks(solved, k)) for p, solved in by_problem.items()}
    return {p: metrics.cumulative_accuracy(solved, k) for p, solved in by_problem.items()}


def paired_difference(runs_a: Sequence[Sequence[dict[str, Any]]], runs_b: Sequence[Sequence[dict[str, Any]]], *,
                      name_a: str, name_b: str, max_turns: int, n_boot: int = 2000, seed: int = 0,
                      independent_a: Sequence[bool] | None = None,
                      independent_b: Sequence[bool] | None = None) -> PairedDifference:
    """`PairedDifference` of the run group B over the run group A (each a list of runs' final problem records;
    `independent_a` / `independent_b` flag the runs of independent samples, compared by their pass@k)."""
    k = int(max_turns)
    per_a = [per_problem(r, k, independent=bool(i)) for r, i in zip(runs_a, independent_a or [False] * len(runs_a))]
    per_b = [per_problem(r, k, independent=bool(i)) for r, i in zip(runs_b, independent_b or [False] * len(runs_b))]
    common = [p for p in per_a[0] if all(p in d for d in per_a + per_b)]

    def mean_over_runs(runs: list[dict[Any, list[float]]], p: Any) -> np.ndarray:
        return np.mean([d[p] for d in runs], axis=0)

    deltas = [mean_over_runs(per_b, p) - mean_over_runs(per_a, p) for p in common]

    def stat(units: list[np.ndarray]) -> list[float]:
        return list(np.mean(units, axis=0)) if units else [float("nan")] * k

    ci = bootstrap_ci(deltas, stat, n_boot=n_boot, seed=seed)
    return PairedDifference(
        a=name_a, b=name_b, n_problems=len(common), max_turns=k, diff=[float(x) for x in stat(deltas)],
        ci_low=[float(x) for x in ci[0]], ci_high=[float(x) for x in ci[1]],
        better=[int(sum(d[t] > 1e-12 for d in deltas)) for t in range(k)],
        worse=[int(sum(d[t] < -1e-12 for d in deltas)) for t in range(k)])


def format_paired_table(diffs: list[PairedDifference]) -> str:
    k = max(d.max_turns for d in diffs)
    head = ["B - A", "problems"] + [f"turn {t}" for t in range(1, k + 1)] + ["B better / worse (turn 1)",
                                                                            f"B better / worse (turn {k})"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for d in diffs:
        cells = [f"{d.b} - {d.a}", str(d.n_problems)]
        cells += ["-" if np.isnan(d.diff[t]) else f"{d.diff[t]:+.3f} [{d.ci_low[t]:+.3f}, {d.ci_high[t]:+.3f}]"
                  for t in range(d.max_turns)]
        cells += ["-"] * (k - d.max_turns)
        cells += [f"{d.better[0]} / {d.worse[0]}", f"{d.better[-1]} / {d.worse[-1]}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Paired differences in cumulative accuracy on the problems both sides evaluated, with 95% "
                 "percentile-bootstrap CIs over those problems; a side that pools runs (seeds) averages them per problem.")
    return "\n".join(lines)


def plot_cumulative(summaries: list[RunSummary], path: str, *, title: str | None = None) -> str:
    """Cumulative accuracy vs turn, one line (with its CI band) per run; writes a PNG to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 4.2), dpi=120)
    for s in summaries:
        turns = np.arange(1, s.max_turns + 1)
        independent = s.meta.get("mode") == INDEPENDENT
        line, = ax.plot(turns, s.cum_acc, marker="s" if independent else "o", linestyle="--" if independent else "-",
                        label=f"{s.name}{' (pass@k)' if independent else ''} (n={s.n_problems})")
        ax.fill_between(turns, s.ci_low, s.ci_high, alpha=0.18, color=line.get_color())
    ax.set_xlabel("turn (pass@k: k samples)" if any(s.meta.get("mode") == INDEPENDENT for s in summaries) else "turn")
    ax.set_ylabel("cumulative accuracy")
    ax.set_xticks(np.arange(1, max(s.max_turns for s in summaries) + 1))
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title or "Cumulative accuracy by turn (95% bootstrap CI)")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
