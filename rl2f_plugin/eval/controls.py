"""Statistics that separate what feedback adds from what retrying adds: how answers change after feedback, and
pass@k of independent samples.

* **Answer changes.** After feedback turn t (the feedback that follows a wrong student turn t), the student's next
  answer is one of: *wrong -> right* (turn t+1 correct), *wrong -> other wrong* (wrong, and a different answer from
  turn t), *unchanged* (the same answer again; two replies with no answer found count as unchanged). *Changed* is the
  first two together. An answer is the one the task's verifier extracted (``Task.verify(...).extracted``),
  compared after stripping and lower-casing; the harness records it on each student turn (``answer``). Rates are
  over the transitions at that turn (trajectories that received feedback t and answered again), with 95%
  percentile-bootstrap CIs over problems (a problem's transitions, from all its samples and all pooled runs, stay
  together), and over all feedback turns together.
* **pass@k** of n independent single-turn samples of a problem with c correct: the unbiased estimator
  1 - C(n-c, k) / C(n, k) (Chen et al., 2021), defined for k <= n; with n = k it is "any of the k correct". Beside
  cumulative accuracy at turn K (K attempts with feedback) it is the same number of attempts and the same student
  token budget without feedback.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

__all__ = ["TRANSITIONS", "AnswerChanges", "pass_at_k", "student_answers", "fill_answers", "transitions", "answer_changes",
           "format_answer_changes"]

#: Transition kinds after a feedback turn, in table order.
TRANSITIONS = ("wrong_to_right", "wrong_to_other_wrong", "unchanged")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of `n` independent samples of which `c` are correct (NaN when k > n)."""
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: c={c} correct out of n={n} samples")
    if k < 1:
        raise ValueError(f"pass_at_k: k={k} must be >= 1")
    if k > n:
        return float("nan")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def _norm(answer: Any) -> str | None:
    if answer is None:
        return None
    text = " ".join(str(answer).split()).lower()
    return text or None


def student_answers(rec: dict[str, Any]) -> list[tuple[str | None, bool]] | None:
    """(normalised extracted answer, correct) per student turn of a transcript record; None when the record does
    not hold the extracted answers (transcripts written before the harness recorded them)."""
    student = [t for t in rec.get("turns") or () if t.get("role") == "student"]
    if not student or any("answer" not in t for t in student):
        return None
    correct = list(rec.get("turn_correct") or [])
    if len(correct) < len(student):
        raise ValueError(f"problem record {rec.get('key')!r}: {len(student)} student turns but "
                         f"{len(correct)} verdicts (turn_correct)")
    return [(_norm(t["answer"]), bool(correct[i])) for i, t in enumerate(student)]


def fill_answers(records: Iterable[dict[str, Any]], data_path: str) -> list[dict[str, Any]]:
    """`records` with the extracted answer of every student turn that lacks one (transcripts written before the
    harness recorded answers): the reply verified again by the row's task with the row's ``extra_info`` from
    `data_path` (the transcript's data file; its row ``row``). A verdict that differs from the recorded one is an
    error naming the record: the answer would not be the one the loop read."""
    import pandas as pd

    from rl2f_plugin.tasks import get_task

    frame = pd.read_parquet(data_path)
    out = []
    for rec in records:
        student = [t for t in rec.get("turns") or () if t.get("role") == "student"]
        if rec.get("status") != "ok" or all("answer" in t for t in student):
            out.append(rec)
            continue
        row = int(rec["row"])
        if not 0 <= row < len(frame):
            raise ValueError(f"problem record {rec.get('key')!r}: row {row} is not in {data_path} ({len(frame)} rows)")
        extra_info = frame.iloc[row].get("extra_info")
        extra_info = dict(extra_info) if extra_info is not None else {}
        task = get_task(rec["task"])
        turns = [dict(t) for t in rec["turns"]]
        for i, t in enumerate(x for x in turns if x.get("role") == "student"):
            verdict = task.verify(t["text"], rec.get("ground_truth"), extra_info)
            if i < len(rec.get("turn_correct") or ()) and int(verdict.correct) != int(rec["turn_correct"][i]):
                raise ValueError(f"problem record {rec.get('key')!r} turn {i + 1}: the task's verdict today "
                                 f"({int(verdict.correct)}) differs from the recorded one; its answer cannot be recovered")
            t["answer"] = None if verdict.extracted is None else str(verdict.extracted)
        out.append({**rec, "turns": turns})
    return out


def transitions(answers: Sequence[tuple[str | None, bool]]) -> list[tuple[int, str]]:
    """(feedback turn t, kind) for every wrong turn t followed by another answer."""
    out = []
    for t in range(1, len(answers)):
        prev, (now, ok) = answers[t - 1], answers[t]
        if prev[1]:  # the episode stops at a right answer; a reply after one is not a response to feedback
            break
        kind = "wrong_to_right" if ok else ("unchanged" if now == prev[0] else "wrong_to_other_wrong")
        out.append((t, kind))
    return out


@dataclass
class AnswerChanges:
    """Transition rates after each feedback turn (``turn`` 1..K-1, then 0 = all feedback turns together)."""

    name: str
    turns: list[int]
    n: list[int]
    """Transitions observed per turn (the rates' denominators)."""
    rates: dict[str, list[float]]
    """Kind (`TRANSITIONS` and ``changed``) -> rate per turn."""
    ci_low: dict[str, list[float]]
    ci_high: dict[str, list[float]]
    n_problems: int
    """Problems with at least one transition."""
    missing: int = 0
    """Records without recorded answers (not counted)."""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def answer_changes(runs: Sequence[Iterable[dict[str, Any]]], *, name: str, max_turns: int, n_boot: int = 2000,
                   seed: int = 0) -> AnswerChanges:
    """`AnswerChanges` of one run, or of several runs pooled (their transitions on the same problem together)."""
    from .report import bootstrap_ci  # the same percentile bootstrap as the accuracy CIs

    k = int(max_turns)
    turns = list(range(1, k)) + [0]
    kinds = TRANSITIONS + ("changed",)
    by_problem: "OrderedDict[Any, np.ndarray]" = OrderedDict()  # problem -> counts[turn index, kind index]
    missing = 0
    for records in runs:
        for rec in records:
            if rec.get("status") != "ok":
                continue
            answers = student_answers(rec)
            if answers is None:
                missing += 1
                continue
            counts = by_problem.setdefault(rec.get("row", rec["key"]), np.zeros((len(turns), len(kinds))))
            for t, kind in transitions(answers):
                if t >= k:
                    continue
                for row in (turns.index(t), len(turns) - 1):
                    counts[row, kinds.index(kind)] += 1
                    if kind != "unchanged":
                        counts[row, kinds.index("changed")] += 1
    units = [c for c in by_problem.values() if c[-1, :len(TRANSITIONS)].sum() > 0]

    def stat(sample: list[np.ndarray]) -> list[float]:
        total = np.sum(sample, axis=0) if sample else np.zeros((len(turns), len(kinds)))
        n = total[:, :len(TRANSITIONS)].sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            return list((total / np.where(n > 0, n, np.nan)).ravel())

    point = np.array(stat(units)).reshape(len(turns), len(kinds))
    ci = bootstrap_ci(units, stat, n_boot=n_boot, seed=seed).reshape(2, len(turns), len(kinds))
    n = (np.sum(units, axis=0)[:, :len(TRANSITIONS)].sum(axis=1) if units else np.zeros(len(turns))).astype(int)
    return AnswerChanges(
        name=name, turns=turns, n=[int(x) for x in n],
        rates={kind: [float(x) for x in point[:, j]] for j, kind in enumerate(kinds)},
        ci_low={kind: [float(x) for x in ci[0, :, j]] for j, kind in enumerate(kinds)},
        ci_high={kind: [float(x) for x in ci[1, :, j]] for j, kind in enumerate(kinds)},
        n_problems=len(units), missing=missing)


def _cell(rate: float, lo: float, hi: float) -> str:
    if np.isnan(rate):
        return "-"
    return f"{rate:.3f} [{lo:.3f}, {hi:.3f}]"


def format_answer_changes(changes: Sequence[AnswerChanges]) -> str:
    """A Markdown table: per run (or pooled runs) and feedback turn, the transition rates with their CIs."""
    head = ["run", "after feedback", "n", "changed", "wrong -> right", "wrong -> other wrong", "unchanged"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    notes = []
    for c in changes:
        if c.missing:
            notes.append(f"{c.name}: {c.missing} record(s) without recorded answers, not counted")
        for i, t in enumerate(c.turns):
            if c.n[i] == 0 and t != 0:
                continue
            cells = [c.name, f"turn {t}" if t else "all turns", str(c.n[i])]
            cells += [_cell(c.rates[kind][i], c.ci_low[kind][i], c.ci_high[kind][i])
                      for kind in ("changed",) + TRANSITIONS]
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("After a wrong answer and the feedback that follows it, what the next answer is: right, another "
                 "wrong answer, or the same answer (the verifier's extracted answers compared); n = such transitions. "
                 "95% percentile-bootstrap CIs over problems.")
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines)
