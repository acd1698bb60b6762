"""Readable per-step lines for the CPU demo (``examples/run_cpu_demo.sh``).

``filter``: reads main_ppo's console output on stdin, writes every line to ``--log`` and prints, for each
``step:N - key:value - ...`` line, one compact line (reward, cumulative accuracy by turn, losses, timings).
``summary``: prints a per-step table from verl's file-logger JSONL and, with ``--plot``, draws it as a PNG
(reward, cumulative accuracy by turn, world-model CE, seconds per step).
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys

from ..metrics import format_metric

_STEP = re.compile(r"step:(\d+) - (.*)$")
_NUM = re.compile(r"^(?:np\.\w+\()?(-?[\d.eE+-]+|nan|inf|-inf)\)?$")


def parse_step_line(line: str) -> tuple[int, dict[str, float]] | None:
    m = _STEP.search(line)
    if not m:
        return None
    out: dict[str, float] = {}
    for part in m.group(2).split(" - "):
        key, _, value = part.rpartition(":")
        n = _NUM.match(value.strip())
        if key and n:
            try:
                out[key.strip()] = float(n.group(1))
            except ValueError:
                pass
    return int(m.group(1)), out


#: a value for the step line: "-" when not logged, "nan" when logged as NaN
_fmt = functools.partial(format_metric, nan="nan")


def compact(step: int, m: dict[str, float]) -> str:
    turns = sorted((int(k[len("rl2f/acc_turn"):]), v) for k, v in m.items()
                   if k.startswith("rl2f/acc_turn") and k[len("rl2f/acc_turn"):].isdigit())
    acc = " ".join(f"t{k}={_fmt(v, 2)}" for k, v in turns) or "-"
    parts = [
        f"step {step}",
        f"reward={_fmt(m.get('critic/score/mean'))}",
        f"cum_acc_by_turn[{acc}]",
        f"solve_rate={_fmt(m.get('rl2f/solve_rate'), 2)}",
        f"pg_loss={_fmt(m.get('actor/pg_loss'))}",
        f"wm_ce={_fmt(m.get('actor/wm_ce'))}",
        f"resp_len={_fmt(m.get('response_length/mean'), 1)}",
        f"step_s={_fmt(m.get('timing_s/step'), 1)}",
        f"(gen {_fmt(m.get('timing_s/gen'), 1)}, logprob {_fmt(m.get('timing_s/old_log_prob'), 1)}, "
        f"update {_fmt(m.get('timing_s/update_actor'), 1)}, sync {_fmt(m.get('timing_s/update_weights'), 1)})",
    ]
    return "  ".join(parts)


def cmd_filter(args) -> int:
    with open(args.log, "a") as log:
        for line in sys.stdin:
            log.write(line)
            log.flush()
            parsed = parse_step_line(line)
            if parsed:
                print("[rl2f demo] " + compact(*parsed), flush=True)
            elif line.startswith("rl2f preflight:"):
                print(line.rstrip(), flush=True)
    return 0


def cmd_summary(args) -> int:
    steps: dict[int, dict[str, float]] = {}
    try:
        with open(args.metrics) as f:
            for line in f:
                rec = json.loads(line)
                steps.setdefault(int(rec["step"]), {}).update(rec["data"])
    except FileNotFoundError:
        print(f"no metrics at {args.metrics}")
        return 1
    for step in sorted(steps):
        print(compact(step, steps[step]))
    if steps:
        print(shown(steps))
    if steps and args.plot:
        plot_steps(steps, args.plot)
        print(f"plot: {args.plot}")
    return 0 if steps else 1


def shown(steps: dict[int, dict[str, float]]) -> str:
    """One line saying what the run showed: in how many steps rewards were earned, and in how many a feedback turn
    turned a wrong first answer into a right one (cumulative accuracy at the last turn above the first turn's)."""
    rewarded = [s for s, m in sorted(steps.items()) if m.get("critic/score/mean", 0.0) > 0]
    fixed = []
    for s, m in sorted(steps.items()):
        turns = sorted(int(k[len("rl2f/acc_turn"):]) for k in m
                       if k.startswith("rl2f/acc_turn") and k[len("rl2f/acc_turn"):].isdigit())
        if len(turns) > 1 and m[f"rl2f/acc_turn{turns[-1]}"] > m[f"rl2f/acc_turn{turns[0]}"]:
            fixed.append(s)
    return (f"shown: reward > 0 in {len(rewarded)} of {len(steps)} steps {rewarded}; a feedback turn turned a wrong "
            f"answer right (last turn > t1) in {len(fixed)} steps {fixed}")


def plot_steps(steps: dict[int, dict[str, float]], path: str) -> None:
    """One PNG with four panels over training steps: reward, cumulative accuracy by turn, world-model CE and
    seconds per step (split into generation / update)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = sorted(steps)

    def series(key: str) -> list[float]:
        return [float(steps[x].get(key, float("nan"))) for x in xs]

    fig, axes = plt.subplots(2, 2, figsize=(10, 6.5))
    ax = axes[0][0]
    ax.plot(xs, series("critic/score/mean"), marker="o")
    ax.set_title("reward (mean)")
    ax = axes[0][1]
    turns = sorted({int(k[len("rl2f/acc_turn"):]) for m in steps.values() for k in m
                    if k.startswith("rl2f/acc_turn") and k[len("rl2f/acc_turn"):].isdigit()})
    for t in turns:
        ax.plot(xs, series(f"rl2f/acc_turn{t}"), marker="o", label=f"turn {t}")
    ax.set_title("cumulative accuracy by turn")
    ax.set_ylim(-0.02, 1.02)
    if turns:
        ax.legend(fontsize=8)
    ax = axes[1][0]
    ax.plot(xs, series("actor/wm_ce"), marker="o", label="world-model CE")
    ax.plot(xs, series("actor/pg_loss"), marker="o", label="pg loss")
    ax.set_title("losses")
    ax.legend(fontsize=8)
    ax = axes[1][1]
    for key, label in (("timing_s/step", "step"), ("timing_s/gen", "generation"), ("timing_s/update_actor", "update")):
        ax.plot(xs, series(key), marker="o", label=label)
    ax.set_title("seconds")
    ax.legend(fontsize=8)
    for ax in axes.flat:
        ax.set_xlabel("step")
        ax.set_xticks(xs)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("filter")
    f.add_argument("--log", required=True)
    s = sub.add_parser("summary")
    s.add_argument("--metrics", required=True)
    s.add_argument("--plot", help="also write the per-step metrics as a PNG here")
    args = p.parse_args(argv)
    return cmd_filter(args) if args.cmd == "filter" else cmd_summary(args)


if __name__ == "__main__":
    raise SystemExit(main())
