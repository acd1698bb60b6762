"""BIG-Bench Extra Hard (BBEH) -> verl RL parquet, tasks ``choice`` (multiple choice) / ``exact`` (free form).

    python examples/data_preprocess/bbeh_data.py --hub-name BBEH/bbeh --out-dir ~/data/rl2f/bbeh
    python examples/data_preprocess/bbeh_data.py --local benchmark_tasks/bbeh_linguini/task.json --out-dir DIR

Records have ``input`` (the question, options included) and ``target`` (the answer), and on the hub a task
column (``task`` / ``task_name``); a ``task.json`` of the BBEH GitHub repository (``{"examples": [...]}``) is
read with ``--local`` and named with ``--bbeh-task``. A target that is an option letter (``(B)``, ``B``) makes a
``choice`` row, anything else an ``exact`` row (normalised exact match). ``--tasks`` keeps some BBEH tasks.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rl2f_data_writer import add_common_args, add_source_args, finish, load_source, make_row, pick_field, take  # noqa: E402

HUB_NAME = "BBEH/bbeh"
_CHOICE = re.compile(r"^\(?([A-Z])\)?$")
_OPTION_LINE = re.compile(r"^\s*\(([A-Z])\)\s*(.+?)\s*$", re.M)
TASK_FIELDS = ("task", "task_name", "subset", "category")


def parse_options(question: str) -> dict[str, str]:
    """``(A) text`` lines of a question -> {"A": "text", ...} (the ``choice`` verifier maps answers given as
    the option's text back to its letter)."""
    return {m.group(1): m.group(2) for m in _OPTION_LINE.finditer(question)}


def task_for_target(target: str) -> str:
    return "choice" if _CHOICE.match(target.strip()) else "exact"


def convert(records: list[dict], bbeh_task: str | None = None, keep: set[str] | None = None,
            source_name: str = "bbeh") -> list[dict]:
    rows = []
    for i, rec in enumerate(records):
        where = f"{source_name} record {i}"
        name = bbeh_task or pick_field(rec, TASK_FIELDS, where=where, required=False) or "unknown"
        if keep and name not in keep:
            continue
        question = str(pick_field(rec, ("input", "question"), where=where))
        target = str(pick_field(rec, ("target", "answer"), where=where)).strip()
        task = task_for_target(target)
        extra = {"bbeh_task": name}
        if task == "choice" and parse_options(question):
            extra["options"] = parse_options(question)
        rows.append(make_row(data_source=f"bbeh/{name}", task=task, problem=question, ground_truth=target,
                             ability="reasoning", split="test", index=len(rows), extra=extra))
    return rows


def main(argv: list[str] | None = None) -> dict[str, str]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_source_args(p, hub_name=HUB_NAME, hub_split="train")
    p.add_argument("--bbeh-task", default=None, help="task name for records without one (a local task.json)")
    p.add_argument("--tasks", default=None, help="comma-separated BBEH tasks to keep")
    add_common_args(p, default_split="test")
    args = p.parse_args(argv)
    keep = {t.strip() for t in args.tasks.split(",")} if args.tasks else None
    records = take(load_source(args), args.limit)
    return finish(convert(records, args.bbeh_task, keep, args.local or args.hub_name), args, default_split="test")


if __name__ == "__main__":
    main()
