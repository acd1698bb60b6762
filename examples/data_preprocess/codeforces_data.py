"""Codeforces problems (hub dataset ``open-r1/codeforces``) -> verl RL parquet, task ``code`` (stdin/stdout).

    python examples/data_preprocess/codeforces_data.py --out-dir ~/data/rl2f/codeforces --hub-split test
    python examples/data_preprocess/codeforces_data.py --local codeforces.jsonl --out-dir DIR    # offline copy

Fields used: ``id``, ``title``, ``description``, ``input_format``, ``output_format``, ``note``, ``examples``
and ``official_tests`` (lists of ``{input, output}``), ``rating``, ``tags``, ``time_limit``,
``memory_limit``, ``interaction_format``, ``generated_checker``. The ground truth is
``{"io": [{input, output}, ...]}`` from the official tests (the examples when there are none). Interactive
problems and problems judged by a special checker (several correct outputs) cannot be verified by exact
stdout comparison and are skipped (and counted). ``--min-rating`` / ``--max-rating`` filter on difficulty.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rl2f_data_writer import add_common_args, add_source_args, finish, io_ground_truth, load_source, make_row, take  # noqa: E402

HUB_NAME = "open-r1/codeforces"


def problem_text(rec: dict) -> str:
    parts = [f"{rec.get('title') or ''}".strip(), (rec.get("description") or "").strip()]
    if rec.get("input_format"):
        parts.append("Input\n" + rec["input_format"].strip())
    if rec.get("output_format"):
        parts.append("Output\n" + rec["output_format"].strip())
    for k, ex in enumerate(rec.get("examples") or [], 1):
        parts.append(f"Example {k}\nInput:\n{ex['input'].rstrip()}\nOutput:\n{ex['output'].rstrip()}")
    if rec.get("note"):
        parts.append("Note\n" + rec["note"].strip())
    parts.append("Write a Python 3 program that reads from standard input and writes to standard output.")
    return "\n\n".join(p for p in parts if p)


def convert(records: list[dict], min_rating: int | None = None, max_rating: int | None = None,
            source_name: str = "codeforces") -> tuple[list[dict], dict[str, int]]:
    rows, skipped = [], {"interactive": 0, "checker": 0, "rating": 0, "no_tests": 0}
    for i, rec in enumerate(records):
        where = f"{source_name} record {i} ({rec.get('id', '?')})"
        if rec.get("interaction_format"):
            skipped["interactive"] += 1
            continue
        if rec.get("generated_checker"):
            skipped["checker"] += 1
            continue
        rating = rec.get("rating")
        if rating is not None and ((min_rating is not None and rating < min_rating)
                                   or (max_rating is not None and rating > max_rating)):
            skipped["rating"] += 1
            continue
        tests = list(rec.get("official_tests") or []) or list(rec.get("examples") or [])
        if not tests:
            skipped["no_tests"] += 1
            continue
        rows.append(make_row(
            data_source="codeforces", task="code", problem=problem_text(rec),
            ground_truth=io_ground_truth(tests, where=where), ability="code", split="test", index=len(rows),
            extra={"io_mode": True, "problem_id": rec.get("id"), "rating": rating, "tags": rec.get("tags"),
                   "time_limit": rec.get("time_limit"), "memory_limit": rec.get("memory_limit")}))
    return rows, skipped


def main(argv: list[str] | None = None) -> dict[str, str]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_source_args(p, hub_name=HUB_NAME, hub_split="test")
    p.add_argument("--min-rating", type=int, default=None)
    p.add_argument("--max-rating", type=int, default=None)
    add_common_args(p, default_split="test")
    args = p.parse_args(argv)
    records = take(load_source(args), args.limit)
    rows, skipped = convert(records, args.min_rating, args.max_rating, args.local or args.hub_name)
    print(f"skipped: {skipped}")
    return finish(rows, args, default_split="test")


if __name__ == "__main__":
    main()
