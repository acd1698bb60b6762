"""CHAMP competition maths (from the offline ``champ-dataset`` package) -> verl RL parquet, task ``math``.

    python examples/data_preprocess/champ_data.py --out-dir ~/data/rl2f/champ                 # 270 test rows

The ground truth is CHAMP's final answer; the step-wise solution, the problem's hints and the concepts it uses
are privileged fields (``solution``, ``hint``, ``concepts``) that only the teacher sees.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rl2f_data_writer import add_common_args, finish, make_row, take  # noqa: E402

TASK = "math"


def convert_problem(dataset, problem, index: int, split: str = "test") -> dict:
    steps = [s.text for s in (problem.solution.steps if problem.solution else [])]
    hints, concepts = [], []
    for ref in problem.ch_list or []:
        if ref in dataset.hints:
            hints.append(dataset.hints[ref].text)
        elif ref in dataset.concepts:
            concepts.append(dataset.concepts[ref].text)
    privileged = {
        "solution": "\n".join(f"{i}. {s}" for i, s in enumerate(steps, 1)) or None,
        "hint": "\n".join(f"- {h}" for h in hints) or None,
        "concepts": "\n".join(f"- {c}" for c in concepts) or None,
    }
    return make_row(data_source="champ", task=TASK, problem=problem.text, ground_truth=problem.answer,
                    ability="math", split=split, index=index,
                    privileged={k: v for k, v in privileged.items() if v},
                    extra={"champ_id": problem.identifier, "category": problem.category})


def main(argv: list[str] | None = None) -> dict[str, str]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--version", default="v0", help="champ-dataset version")
    add_common_args(p, default_split="test")
    args = p.parse_args(argv)
    import champ_dataset

    ds = champ_dataset.load(args.version)
    rows = [convert_problem(ds, pr, i) for i, pr in enumerate(take(ds.problems.values(), args.limit))]
    return finish(rows, args, default_split="test")


if __name__ == "__main__":
    main()
