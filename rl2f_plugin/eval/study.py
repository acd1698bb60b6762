"""The report of a training study (``examples/study_cpu.sh``): arms (recipes) trained with several seeds, each
trained model evaluated with the informative teacher, the content-free teacher, independent sampling (pass@k), the
informative teacher sampled at pass@k's temperature (so that "feedback vs independent samples" is not also "greedy vs
sampled") and, for some arms, no teacher (autodidact self-critique); the untrained model with the same evaluations.

    python -m rl2f_plugin.eval.study --dir outputs/study_cpu --arm "rlvr_cpu=RLVR" --arm "rl2f_cpu=RL2F (final)" \\
        --seeds 1 2 3 --baseline rlvr_cpu --contrast "final vs discounted=rl2f_cpu:rl2f_discounted_cpu"

Files (the study script's layout): ``DIR/eval/<run>[.<mode>].jsonl`` with ``<run>`` = ``base`` (untrained) or
``<arm>_s<seed>`` and ``<mode>`` one of `MODES` (the informative teacher's file has no suffix), ``DIR/<run>/metrics*.jsonl``
(verl's per-step metrics) and ``DIR/cost.tsv`` (wall time of every training and evaluation phase). Writes
``DIR/study.md``, ``DIR/study.png`` and ``DIR/study.json``; whatever is missing (a run not trained yet, a control
not evaluated) is left out and listed.

Every difference is paired per problem (the same held-out problems), seeds pooled (a problem's value is the mean over
the seeds both sides have), with a 95% percentile-bootstrap CI over problems (`rl2f_plugin.eval.report`): it says how
sure we are *for these trained models*. Training randomness is in the seed-level interval beside it: the per-seed
paired differences (seed s of B minus seed s of A), mean +- t(0.975, S-1) * sd / sqrt(S); with S seeds it is the one
that says whether another set of seeds would give the same sign.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import textwrap
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .controls import answer_changes, fill_answers, format_answer_changes
from .learning_curves import load_run
from .report import (bootstrap_ci, format_paired_table, format_table, is_independent, load_records,
                     paired_difference, per_problem, summarize_file)

__all__ = ["MODES", "Study", "eval_path", "seed_interval", "seeds_needed", "main"]

#: Evaluation modes: file suffix, and what the mode is.
MODES: "OrderedDict[str, tuple[str, str]]" = OrderedDict([
    ("informative", ("", "informative teacher")),
    ("content_free", (".content_free", "content-free teacher")),
    ("independent", (".independent", "independent samples, pass@k")),
    ("informative_t1", (".informative_t1", "informative teacher, sampled (T of pass@k)")),
    ("autodidact", (".autodidact", "no teacher (autodidact)")),
])
BASE = "base"

#: Student t quantiles t(0.975, df), df = 1..30 (beyond: the normal 1.96). No scipy in the environment.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def _t975(df: int) -> float:
    return _T975[df - 1] if 1 <= df <= len(_T975) else 1.96


def eval_path(directory: str, run: str, mode: str) -> str:
    return os.path.join(directory, "eval", f"{run}{MODES[mode][0]}.jsonl")


def seed_interval(per_seed: list[float]) -> tuple[float, float, float] | None:
    """(mean, low, high) of per-seed differences: mean +- t(0.975, S-1) sd / sqrt(S); None below 2 seeds."""
    x = np.asarray([v for v in per_seed if not math.isnan(v)], dtype=float)
    if len(x) < 2:
        return None
    half = _t975(len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean()), float(x.mean() - half), float(x.mean() + half)


def seeds_needed(seed_sd: float, half_width: float, *, limit: int = 200) -> int | None:
    """Smallest S with t(0.975, S-1) * seed_sd / sqrt(S) <= half_width (None if above `limit`)."""
    for s in range(2, limit + 1):
        if _t975(s - 1) * seed_sd / math.sqrt(s) <= half_width:
            return s
    return None


@dataclass
class Study:
    directory: str
    arms: "OrderedDict[str, str]"
    """Arm name -> label, in table order."""
    seeds: list[int]
    baseline: str
    contrasts: list[tuple[str, str, str]] = field(default_factory=list)
    """(label, arm A, arm B): B - A, seeds pooled, in every mode."""
    n_boot: int = 2000
    target_half_width: float = 0.04
    answers_from: str | None = None
    """Data file to re-extract answers from for transcripts that do not record them (`controls.fill_answers`)."""

    def __post_init__(self):
        self.files: dict[tuple[str, str], tuple[dict, list[dict]]] = {}
        for run in [BASE] + [self.run_name(a, s) for a in self.arms for s in self.seeds]:
            for mode in MODES:
                path = eval_path(self.directory, run, mode)
                if os.path.isfile(path):
                    header, records = load_records(path)
                    if self.answers_from:
                        records = fill_answers(records, self.answers_from)
                    self.files[(run, mode)] = (header, records)
        interactions = [int(h.get("max_turns") or 1) for (h, _) in self.files.values() if not is_independent(h)]
        self.k = max(interactions) if interactions else 1

    @staticmethod
    def run_name(arm: str, seed: int) -> str:
        return f"{arm}_s{seed}"

    def label(self, arm: str) -> str:
        return "untrained" if arm == BASE else self.arms[arm]

    def seeds_with(self, arm: str, mode: str) -> list[int]:
        return [s for s in self.seeds if (self.run_name(arm, s), mode) in self.files]

    def runs(self, arm: str, mode: str, seeds: list[int] | None = None) -> list[list[dict]]:
        if arm == BASE:
            return [self.files[(BASE, mode)][1]] if (BASE, mode) in self.files else []
        return [self.files[(self.run_name(arm, s), mode)][1] for s in (seeds if seeds is not None else self.seeds_with(arm, mode))]

    # -- accuracy per arm, seeds pooled ---------------------------------------------------------------------
    def pooled_accuracy(self, arm: str, mode: str) -> dict[str, Any] | None:
        runs = self.runs(arm, mode)
        if not runs:
            return None
        per = [per_problem(r, self.k, independent=mode == "independent") for r in runs]
        common = [p for p in per[0] if all(p in d for d in per)]
        units = [np.mean([d[p] for d in per], axis=0) for p in common]

        def stat(sample):
            # accuracy at turns 1..K, then the gain from turn 1 to turn K (paired: the same problems resampled)
            if not len(sample):
                return [float("nan")] * (self.k + 1)
            acc = list(np.mean(sample, axis=0))
            return acc + [acc[-1] - acc[0]]

        point, (low, high) = stat(units), bootstrap_ci(units, stat, n_boot=self.n_boot)
        return {"arm": arm, "mode": mode, "seeds": len(runs), "problems": len(common), "acc": point[:-1],
                "low": list(low[:-1]), "high": list(high[:-1]), "gain": point[-1], "gain_low": low[-1],
                "gain_high": high[-1]}

    # -- paired differences -----------------------------------------------------------------------------------
    def contrast(self, label: str, arm_a: str, mode_a: str, arm_b: str, mode_b: str) -> dict[str, Any] | None:
        """B - A: seeds pooled and paired per problem (bootstrap CI), and the seed-level interval over the seeds
        both sides have (each side's seed s; the untrained model is one model for every seed)."""
        trained = [(arm, mode) for arm, mode in ((arm_a, mode_a), (arm_b, mode_b)) if arm != BASE]
        seeds: list[Any] = [None]  # the untrained model alone: one model
        if trained:
            seeds = [s for s in self.seeds if all(s in self.seeds_with(arm, mode) for arm, mode in trained)]

        def side(arm, mode, ss):
            return self.runs(arm, mode, None if arm == BASE else ss)

        if not seeds or not side(arm_a, mode_a, seeds) or not side(arm_b, mode_b, seeds):
            return None
        ind_a, ind_b = mode_a == "independent", mode_b == "independent"
        pooled = paired_difference(side(arm_a, mode_a, seeds), side(arm_b, mode_b, seeds), max_turns=self.k,
                                   n_boot=self.n_boot, independent_a=[ind_a] * len(side(arm_a, mode_a, seeds)),
                                   independent_b=[ind_b] * len(side(arm_b, mode_b, seeds)),
                                   name_a=f"{self.label(arm_a)}, {MODES[mode_a][1]}",
                                   name_b=f"{self.label(arm_b)}, {MODES[mode_b][1]}")
        per_seed = []
        for s in seeds:
            d = paired_difference(side(arm_a, mode_a, [s]), side(arm_b, mode_b, [s]), max_turns=self.k, n_boot=1,
                                  independent_a=[ind_a], independent_b=[ind_b], name_a="a", name_b="b")
            per_seed.append(d.diff)
        by_turn = [seed_interval([d[t] for d in per_seed]) for t in range(self.k)]
        return {"label": label, "seeds": seeds, "pooled": pooled, "per_seed": per_seed, "seed_interval": by_turn}

    def contrasts_table(self) -> tuple[list[dict[str, Any]], list[str]]:
        rows, missing = [], []
        arms = list(self.arms)
        specs = []
        for arm in arms:
            specs.append((f"{self.label(arm)} - untrained", BASE, "informative", arm, "informative"))
        for arm in arms:
            if arm != self.baseline:
                for mode in ("informative", "content_free"):
                    specs.append((f"{self.label(arm)} - {self.label(self.baseline)}", self.baseline, mode, arm, mode))
        for label, a, b in self.contrasts:
            specs.append((label, a, "informative", b, "informative"))
        for arm in [BASE] + arms:
            specs.append((f"feedback effect, {self.label(arm)}", arm, "content_free", arm, "informative"))
        for arm in [BASE] + arms:
            specs.append((f"feedback vs independent samples, {self.label(arm)}", arm, "independent", arm, "informative"))
            specs.append((f"retry vs independent samples, {self.label(arm)}", arm, "independent", arm, "content_free"))
            # the same temperature on both sides: K turns with feedback vs K independent samples, both sampled
            specs.append((f"feedback vs independent samples, same temperature, {self.label(arm)}", arm, "independent",
                          arm, "informative_t1"))
        for arm in arms:
            if self.seeds_with(arm, "autodidact"):
                specs.append((f"autodidact, {self.label(arm)} - untrained", BASE, "autodidact", arm, "autodidact"))
                specs.append((f"autodidact vs content-free, {self.label(arm)}", arm, "content_free", arm, "autodidact"))
        for spec in specs:
            row = self.contrast(*spec)
            (rows.append(row) if row else missing.append(spec[0] + f" ({MODES[spec[4]][1]})"))
        return rows, missing

    # -- cost -------------------------------------------------------------------------------------------------
    def cost_table(self) -> str:
        phases: dict[tuple[str, str], float] = {}
        steal: dict[str, list[float]] = {}  # run -> [sum of steal% x wall, wall] over the phases that record it
        cores = None
        path = os.path.join(self.directory, "cost.tsv")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                for row in csv.DictReader(f, delimiter="\t"):
                    run, phase = row["run"], row["phase"].split(":")[0]
                    phases[(run, phase)] = phases.get((run, phase), 0.0) + float(row["wall_s"])
                    cores = int(row["cores"])
                    try:
                        pct = float(row.get("steal_pct") or "")
                    except ValueError:  # older rows have no steal column; "-": not measured
                        continue
                    acc = steal.setdefault(run, [0.0, 0.0])
                    acc[0] += pct * float(row["wall_s"])
                    acc[1] += float(row["wall_s"])
        lines = ["| arm | runs | steps | s/step (mean of steps) | training wall | evaluation wall | CPU-minutes | "
                 "host CPU steal |", "|---|---|---|---|---|---|---|---|"]
        in_progress = []
        for arm in [BASE] + list(self.arms):
            runs = [BASE] if arm == BASE else [self.run_name(arm, s) for s in self.seeds]
            # a run is costed once it is complete (trained and evaluated: <run>/DONE); one under way is listed below
            started = [r for r in runs if r != BASE and ((r, "train") in phases or os.path.isdir(os.path.join(
                self.directory, r)))]
            in_progress += [r for r in started if not os.path.isfile(os.path.join(self.directory, r, "DONE"))]
            runs = [r for r in runs if r == BASE or os.path.isfile(os.path.join(self.directory, r, "DONE"))]
            steps, step_s = 0, 0.0
            for run in runs:
                folder = os.path.join(self.directory, run)
                try:
                    curve = load_run(run, folder)
                except FileNotFoundError:
                    continue
                steps += len(curve.steps)
                step_s += curve.wall_seconds
            train = sum(phases.get((r, "train"), 0.0) for r in runs)
            evals = sum(phases.get((r, "eval"), 0.0) for r in runs)
            if not (steps or train or evals):
                continue
            done = len(runs)  # the untrained model, or the complete (DONE) runs
            timed = any((r, phase) in phases for r in runs for phase in ("train", "eval"))
            cpu = f"{(train + evals) * cores / 60:.0f}" if timed and cores else "-"
            wall = f"{train / 60:.1f} min | {evals / 60:.1f} min" if timed else "- | -"
            measured = [steal[r] for r in runs if r in steal and steal[r][1] > 0]
            stolen = (f"{sum(a for a, _ in measured) / sum(w for _, w in measured):.0f}%" if measured else "-")
            lines.append(f"| {self.label(arm)} | {done} | {steps} | {f'{step_s / steps:.1f}' if steps else '-'} | "
                         f"{wall} | {cpu} | {stolen} |")
        lines.append("")
        if in_progress:
            lines += [f"Not costed yet (under way, no `DONE`): {', '.join(in_progress)}.", ""]
        lines.append("s/step: verl's `timing_s/step` over every training step of the arm; wall: the study script's "
                     "clock around each training run (Ray/verl start-up included) and each evaluation; CPU-minutes = "
                     f"wall x {cores or '?'} cores (each phase uses the whole machine). Host CPU steal: the share of "
                     "CPU time a shared host gave to other machines during the arm's phases (wall-weighted; `-`: not "
                     "recorded); at 30-50% a phase takes about twice as long.")
        return "\n".join(lines)

    # -- the report -------------------------------------------------------------------------------------------
    def write(self, title: str = "Study") -> str:
        k = self.k
        out = [f"# {title}", ""]
        arms_line = ", ".join(f"{self.label(a)} (seeds {self.seeds_with(a, 'informative') or 'none yet'})"
                              for a in self.arms)
        out += [f"Arms: {arms_line}. Held-out evaluation at K={k}. Seeds planned: {self.seeds}.", ""]
        out += ["## Accuracy per arm (seeds pooled)", ""]
        head = ["arm", "evaluation", "seeds", "problems"] + [f"turn {t}" for t in range(1, k + 1)] + [f"turn {k} - turn 1"]
        out += ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
        pooled = []
        for arm in [BASE] + list(self.arms):
            for mode in MODES:
                acc = self.pooled_accuracy(arm, mode)
                if acc is None:
                    continue
                pooled.append(acc)
                cells = [self.label(arm), MODES[mode][1], str(acc["seeds"]), str(acc["problems"])]
                cells += ["-" if math.isnan(acc["acc"][t]) else
                          f"{acc['acc'][t]:.3f} [{acc['low'][t]:.3f}, {acc['high'][t]:.3f}]" for t in range(k)]
                cells.append("-" if math.isnan(acc["gain"]) else
                             f"{acc['gain']:+.3f} [{acc['gain_low']:+.3f}, {acc['gain_high']:+.3f}]")
                out.append("| " + " | ".join(cells) + " |")
        out += ["", "Cumulative accuracy by turn (pass@k for independent samples), the mean over seeds per problem; "
                    f"turn {k} - turn 1: what the later turns (or samples) add, paired per problem; "
                    "95% bootstrap CIs over problems.", ""]
        rows, missing = self.contrasts_table()
        out += ["## Paired differences (B - A)", ""]
        head = ["contrast", "B - A", "seeds", "problems", "turn 1", f"turn {k}", f"seed-level turn 1", f"seed-level turn {k}",
                f"better / worse (turn {k})"]
        out += ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
        for r in rows:
            d = r["pooled"]

            def fmt(t):
                return "-" if math.isnan(d.diff[t]) else f"{d.diff[t]:+.3f} [{d.ci_low[t]:+.3f}, {d.ci_high[t]:+.3f}]"

            def fmt_seed(t):
                iv = r["seed_interval"][t]
                return "-" if iv is None else f"{iv[0]:+.3f} [{iv[1]:+.3f}, {iv[2]:+.3f}]"

            out.append("| " + " | ".join([r["label"], f"{d.b} - {d.a}", str(len(r["seeds"])), str(d.n_problems),
                                          fmt(0), fmt(k - 1), fmt_seed(0), fmt_seed(k - 1),
                                          f"{d.better[-1]} / {d.worse[-1]}"]) + " |")
        out += ["", "Seeds pooled and paired per problem, 95% bootstrap CI over problems; seed-level: the per-seed "
                    "paired differences, mean [t interval] (needs 2 seeds). Feedback effect = informative minus "
                    "content-free teacher, the same models and attempts.", ""]
        if missing:
            out += ["Not yet available: " + "; ".join(missing) + ".", ""]
        out += ["## Power of the headline contrast", ""]
        power = self.power(rows)
        out += power["lines"] + [""]
        out += ["## Answer changes after feedback (seeds pooled)", ""]
        changes = []
        for arm in [BASE] + list(self.arms):
            for mode in ("informative", "content_free", "autodidact"):
                runs = self.runs(arm, mode)
                if runs:
                    changes.append(answer_changes(runs, name=f"{self.label(arm)}, {MODES[mode][1]}", max_turns=k,
                                                  n_boot=self.n_boot))
        out += [format_answer_changes(changes) if changes else "(no multi-turn evaluation yet)", ""]
        out += ["## Cost", "", self.cost_table(), ""]
        out += ["## Every evaluation", ""]
        summaries = [summarize_file(eval_path(self.directory, run, mode), name=f"{run}, {MODES[mode][1]}",
                                    n_boot=self.n_boot, max_turns=k if mode == "independent" else None)
                     for (run, mode) in sorted(self.files, key=lambda x: (x[0] != BASE, x[0], list(MODES).index(x[1])))]
        out += [format_table(summaries) if summaries else "(none yet)", ""]
        text = "\n".join(out)
        with open(os.path.join(self.directory, "study.md"), "w", encoding="utf-8") as f:
            f.write(text)
        with open(os.path.join(self.directory, "study.json"), "w", encoding="utf-8") as f:
            json.dump({"k": k, "pooled_accuracy": pooled, "power": power["data"],
                       "contrasts": [{**r, "pooled": r["pooled"].as_dict()} for r in rows],
                       "answer_changes": [c.as_dict() for c in changes]}, f, indent=1, default=float)
        if pooled:
            self.plot(pooled, os.path.join(self.directory, "study.png"), title)
        return text

    def power(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """The first trained arm other than the baseline vs the baseline, informative teacher, turn K: the CI
        half-widths reached and the seeds the seed-level interval needs for the target half-width."""
        headline = next((r for r in rows if r["label"].endswith(f" - {self.label(self.baseline)}")
                         and r["pooled"].a.endswith(MODES["informative"][1])), None)
        if headline is None:
            return {"lines": ["(the headline contrast has no data yet)"], "data": None}
        d, k = headline["pooled"], self.k
        lines, data = [f"{d.b} - {d.a}, target: 95% CI within +-{self.target_half_width:.2f}.", ""], {}
        for t in (0, k - 1):
            half = (d.ci_high[t] - d.ci_low[t]) / 2
            per = [s[t] for s in headline["per_seed"]]
            sd = float(np.std(per, ddof=1)) if len(per) >= 2 else float("nan")
            need = seeds_needed(sd, self.target_half_width) if len(per) >= 2 else None
            iv = headline["seed_interval"][t]
            seed_half = None if iv is None else (iv[2] - iv[1]) / 2
            lines.append(f"- turn {t + 1}: problem-bootstrap half-width {half:.3f} with {len(per)} seed(s) pooled; "
                         + ("seed-level half-width -, sd of the per-seed differences - (needs 2 seeds)"
                            if iv is None else f"seed-level half-width {seed_half:.3f}, sd of the per-seed differences "
                            f"{sd:.3f}: {need or '>200'} seeds would give +-{self.target_half_width:.2f}"))
            data[f"turn{t + 1}"] = {"bootstrap_half_width": half, "seeds": len(per), "seed_sd": sd,
                                    "seed_half_width": seed_half, "seeds_needed": need}
        return {"lines": lines, "data": data}

    def plot(self, pooled: list[dict[str, Any]], path: str, title: str) -> str:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        modes = [m for m in MODES if any(p["mode"] == m for p in pooled)]
        fig, axes = plt.subplots(1, len(modes), figsize=(max(6.5, 4.2 * len(modes)), 4.4), sharey=True, squeeze=False)
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        arms = [BASE] + list(self.arms)
        turns = np.arange(1, self.k + 1)
        for ax, mode in zip(axes[0], modes):
            for p in pooled:
                if p["mode"] != mode:
                    continue
                c = colors[arms.index(p["arm"]) % len(colors)]
                ax.plot(turns, p["acc"], marker="o", color=c,
                        label=f"{self.label(p['arm'])} ({p['seeds']} seed{'s' if p['seeds'] > 1 else ''})")
                ax.fill_between(turns, p["low"], p["high"], color=c, alpha=0.15)
            ax.set_title(MODES[mode][1], fontsize=10)
            ax.set_xlabel("k (samples)" if mode == "independent" else "turn")
            ax.set_xticks(turns)
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("cumulative accuracy (pass@k), seeds pooled")
        axes[0][0].legend(fontsize=7, loc="upper left")
        fig.suptitle(textwrap.fill(title + " (95% bootstrap CIs over problems)", 90), fontsize=10)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rl2f_plugin.eval.study", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", required=True, help="the study's output folder")
    p.add_argument("--arm", action="append", required=True, metavar="NAME=LABEL", help="an arm, in table order")
    p.add_argument("--seeds", nargs="+", type=int, required=True)
    p.add_argument("--baseline", required=True, help="the arm every other arm is compared with")
    p.add_argument("--contrast", action="append", default=[], metavar="LABEL=A:B", help="another B - A of two arms")
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--answers-from", metavar="PARQUET", help="the held-out data, to recover the answers of transcripts "
                   "written before the harness recorded them (see python -m rl2f_plugin.eval --answers-from)")
    p.add_argument("--title", default="Study")
    args = p.parse_args(argv)
    arms: "OrderedDict[str, str]" = OrderedDict()
    for spec in args.arm:
        name, sep, label = spec.partition("=")
        if not sep or not name:
            p.error(f"--arm {spec!r}: expected NAME=LABEL")
        arms[name] = label or name
    if args.baseline not in arms:
        p.error(f"--baseline {args.baseline!r} is not one of the arms ({', '.join(arms)})")
    contrasts = []
    for spec in args.contrast:
        label, sep, pair = spec.rpartition("=")
        a, sep2, b = pair.partition(":")
        if not sep or not sep2 or a not in arms or b not in arms:
            p.error(f"--contrast {spec!r}: expected LABEL=A:B with A and B among the arms")
        contrasts.append((label, a, b))
    study = Study(args.dir, arms, args.seeds, args.baseline, contrasts, n_boot=args.bootstrap,
                  answers_from=args.answers_from)
    print(study.write(args.title))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
