"""Learning curves of training runs side by side: per-step reward and accuracy of every run on one figure, and a
table of steps done and wall time per run.

    python -m rl2f_plugin.eval.learning_curves --run "RLVR s1=outputs/compare_cpu/rlvr_s1" \\
        --run "RL2F s1=outputs/compare_cpu/rl2f_s1" --plot curves.png --table curves.md

A run is a folder holding verl file-logger files (``metrics*.jsonl``, one JSON record per step, written when
``VERL_FILE_LOGGER_PATH`` is set) or one such file. verl's file logger truncates its file when a run starts, so a
run resumed from a checkpoint should log to a new file in the same folder (the CPU comparison names them
``metrics-<YYYYmmdd-HHMMSS>.jsonl``): the files are read in name (= time) order and, for a step logged twice (a step redone after
an interruption), the later record wins.

Per step, the plot shows the training reward (``critic/score/mean``: the final-answer correctness of the sampled
rollouts) and the turn-1 accuracy of those rollouts (``rl2f/acc_turn1`` for rl2f runs; for single-turn runs the
reward is their turn-1 accuracy). Curves are smoothed with a trailing moving average (``--smooth`` steps) and the
raw points drawn faintly. "Time in steps" is the sum of verl's ``timing_s/step`` over the steps kept (the wall time of
the training steps; Ray/verl start-up, ~2.5 min per (re)start on 2 cores, is not in it).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
from dataclasses import dataclass

__all__ = ["RunCurve", "load_run", "format_table", "plot_curves"]


@dataclass
class RunCurve:
    label: str
    steps: dict[int, dict[str, float]]

    def series(self, key: str) -> tuple[list[int], list[float]]:
        xs = [s for s in sorted(self.steps) if key in self.steps[s]]
        return xs, [float(self.steps[s][key]) for s in xs]

    def turn1_accuracy(self) -> tuple[list[int], list[float]]:
        xs, ys = self.series("rl2f/acc_turn1")
        return (xs, ys) if xs else self.series("critic/score/mean")

    @property
    def wall_seconds(self) -> float:
        return sum(float(m.get("timing_s/step", 0.0)) for m in self.steps.values())


def metric_files(path: str) -> list[str]:
    """The file-logger files of a run folder in time order (or [path] for a file). The order is the names'
    (``metrics-<YYYYmmdd-HHMMSS>.jsonl``), not modification times, which a copy or a git checkout resets."""
    if os.path.isfile(path):
        return [path]
    return sorted(glob.glob(os.path.join(path, "metrics*.jsonl")))


def load_run(label: str, path: str) -> RunCurve:
    """Merge a run's metric files; a step logged again later (after a resume) replaces the earlier record.
    A torn last line (a run killed mid-write) is skipped."""
    steps: dict[int, dict[str, float]] = {}
    files = metric_files(path)
    if not files:
        raise FileNotFoundError(f"{path}: no metrics*.jsonl (verl's file logger output) found")
    for fname in files:
        with open(fname, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    step, data = int(rec["step"]), rec["data"]
                except (ValueError, KeyError, TypeError):
                    continue  # torn or foreign line
                numbers = {k: float(v) for k, v in data.items()
                           if isinstance(v, (int, float)) and not isinstance(v, bool)}
                steps[step] = numbers
    return RunCurve(label, steps)


def _smooth(ys: list[float], k: int) -> list[float]:
    out = []
    for i in range(len(ys)):
        window = ys[max(0, i - k + 1): i + 1]
        out.append(sum(window) / len(window))
    return out


def format_table(runs: list[RunCurve]) -> str:
    lines = ["| run | steps | time in steps | s/step | reward, first 4 steps | reward, last 4 steps |",
             "|---|---|---|---|---|---|"]
    for r in runs:
        _, rewards = r.series("critic/score/mean")
        n = len(r.steps)
        first = sum(rewards[:4]) / len(rewards[:4]) if rewards else float("nan")
        last = sum(rewards[-4:]) / len(rewards[-4:]) if rewards else float("nan")
        wall = r.wall_seconds
        lines.append(f"| {r.label} | {n} | {wall / 60:.1f} min | {wall / max(n, 1):.1f} | {first:.3f} | {last:.3f} |")
    return "\n".join(lines)


def plot_curves(runs: list[RunCurve], path: str, *, smooth: int = 4, title: str | None = None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    panels = [("training reward (final answer correct)", lambda r: r.series("critic/score/mean")),
              ("turn-1 accuracy of the training rollouts", RunCurve.turn1_accuracy)]
    top = max([y for run in runs for get in (panels[0][1], panels[1][1]) for y in get(run)[1]] or [0.0])
    for ax, (name, get) in zip(axes, panels):
        for i, run in enumerate(runs):
            xs, ys = get(run)
            if not xs:
                continue
            c = colors[i % len(colors)]
            ax.plot(xs, ys, color=c, alpha=0.2, linewidth=1)
            ax.plot(xs, _smooth(ys, smooth), color=c, linewidth=2, label=run.label)
        ax.set_title(name + (f", {smooth}-step moving average" if smooth > 1 else ""), fontsize=10)
        ax.set_xlabel("training step (policy update)")
        ax.set_ylim(-0.02, min(1.02, max(0.5, 1.15 * top)))  # both panels on one scale, small values readable
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", action="append", required=True, metavar="LABEL=PATH",
                   help="a run: its label and its folder (metrics*.jsonl inside) or metrics file")
    p.add_argument("--plot", help="write the PNG here")
    p.add_argument("--table", help="write the Markdown table here (printed either way)")
    p.add_argument("--smooth", type=int, default=4, help="moving-average window in steps (1 = raw)")
    p.add_argument("--title")
    args = p.parse_args(argv)
    runs = []
    for spec in args.run:
        label, sep, path = spec.partition("=")
        if not sep or not label or not path:
            p.error(f"--run {spec!r}: expected LABEL=PATH")
        runs.append(load_run(label, path))
    table = format_table(runs)
    print(table)
    if args.table:
        with open(args.table, "w", encoding="utf-8") as f:
            f.write(table + "\n")
    if args.plot:
        print(f"plot: {plot_curves(runs, args.plot, smooth=args.smooth, title=args.title)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
