"""Summaries of evaluation transcripts: cumulative accuracy by turn with 95% bootstrap CIs, leak rate, turns to
solve; a Markdown table and a Figure-4-style plot (cumulative accuracy vs turn, one line per run).

Cumulative accuracy at turn t = fraction of problems whose first correct answer came at turn <= t (RL²F's
metric; non-decreasing in t). With several samples per problem, a problem's value is the mean over its samples
and the bootstrap resamples problems. Problems whose record is an error are *not* counted as wrong: they are
reported in their own column, so a flaky endpoint cannot pass for a weak model.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

__all__ = ["RunSummary", "load_records", "summarize", "bootstrap_ci", "format_table", "plot_cumulative",
           "summarize_file"]


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


def bootstrap_ci(values: np.ndarray, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> np.ndarray:
    """Percentile bootstrap CI of the mean of each column of `values` ([n, m]): returns [2, m]."""
    values = np.asarray(values, dtype=float)
    if values.ndim == 1:
        values = values[:, None]
    n = values.shape[0]
    if n == 0:
        return np.full((2, values.shape[1]), np.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    means = values[idx].mean(axis=1)  # [n_boot, m]
    alpha = (1.0 - level) / 2.0
    return np.quantile(means, [alpha, 1.0 - alpha], axis=0)


def summarize(records: Iterable[dict[str, Any]], *, name: str = "run", max_turns: int | None = None,
              n_boot: int = 2000, seed: int = 0, meta: dict[str, Any] | None = None) -> RunSummary:
    records = list(records)
    ok = [r for r in records if r.get("status") == "ok"]
    errors = [r for r in records if r.get("status") != "ok"]
    if max_turns is None:
        max_turns = max([int(r.get("max_turns") or 0) for r in records] + [1])
    k = int(max_turns)
    by_problem: "OrderedDict[Any, list[np.ndarray]]" = OrderedDict()
    solved_turns: list[int] = []
    student_turns: list[int] = []
    leak_count = leaked = fb_turns = 0
    for r in ok:
        s = int(r.get("solved_at_turn") or 0)
        row = np.array([1.0 if 0 < s <= t else 0.0 for t in range(1, k + 1)])
        by_problem.setdefault(r.get("row", r["key"]), []).append(row)
        if s > 0:
            solved_turns.append(s)
        student_turns.append(int(r.get("num_student_turns") or 0))
        leak_count += int(r.get("leak_count") or 0)
        leaked += int(r.get("leaked_turns") or 0)
        fb_turns += int(r.get("feedback_turns") or 0)
    teacher_replies = fb_turns + leak_count - leaked
    if by_problem:
        per_problem = np.stack([np.mean(v, axis=0) for v in by_problem.values()])
        cum = per_problem.mean(axis=0)
        ci = bootstrap_ci(per_problem, n_boot=n_boot, seed=seed)
    else:
        cum = np.full(k, np.nan)
        ci = np.full((2, k), np.nan)
    return RunSummary(
        name=name, max_turns=k, n_problems=len(by_problem), n_records=len(ok), n_errors=len(errors),
        cum_acc=[float(x) for x in cum], ci_low=[float(x) for x in ci[0]], ci_high=[float(x) for x in ci[1]],
        leak_rate=(leak_count / teacher_replies) if teacher_replies else None, leak_count=leak_count,
        feedback_turns=fb_turns, teacher_replies=teacher_replies,
        mean_turns_to_solve=float(np.mean(solved_turns)) if solved_turns else None,
        mean_student_turns=float(np.mean(student_turns)) if student_turns else 0.0,
        meta=dict(meta or {}),
    )


def summarize_file(path: str, *, name: str | None = None, max_turns: int | None = None, n_boot: int = 2000,
                   seed: int = 0) -> RunSummary:
    header, records = load_records(path)
    if name is None:
        name = header.get("name") or os.path.splitext(os.path.basename(path))[0]
    return summarize(records, name=name, max_turns=max_turns or header.get("max_turns"), n_boot=n_boot,
                     seed=seed, meta={"path": path, **{k: header.get(k) for k in ("agent_loop", "teacher", "student", "data")}})


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "-"
    return f"{x:.{digits}f}"


def format_table(summaries: list[RunSummary]) -> str:
    """One Markdown table: per run, cumulative accuracy at each turn as ``acc [lo, hi]``, then counts."""
    k = max(s.max_turns for s in summaries)
    head = ["run", "n", "errors"] + [f"turn {t}" for t in range(1, k + 1)] + ["leak rate", "turns to solve"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for s in summaries:
        cells = [s.name, str(s.n_problems), str(s.n_errors)]
        for t in range(k):
            if t < s.max_turns:
                cells.append(f"{_fmt(s.cum_acc[t])} [{_fmt(s.ci_low[t])}, {_fmt(s.ci_high[t])}]")
            else:
                cells.append("-")
        leak = "-" if s.leak_rate is None else f"{_fmt(s.leak_rate)} ({s.leak_count} leaks / {s.teacher_replies} teacher replies)"
        cells += [leak, _fmt(s.mean_turns_to_solve, 2)]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Cumulative accuracy at turn t = share of problems first solved at or before turn t, "
                 "with 95% percentile-bootstrap CIs over problems; errored problems are excluded and counted.")
    return "\n".join(lines)


def plot_cumulative(summaries: list[RunSummary], path: str, *, title: str | None = None) -> str:
    """Cumulative accuracy vs turn, one line (with its CI band) per run; writes a PNG to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 4.2), dpi=120)
    for s in summaries:
        turns = np.arange(1, s.max_turns + 1)
        ax.plot(turns, s.cum_acc, marker="o", label=f"{s.name} (n={s.n_problems})")
        ax.fill_between(turns, s.ci_low, s.ci_high, alpha=0.18)
    ax.set_xlabel("turn")
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
