"""Omni-MATH (hub dataset, the paper's maths *training* set) -> verl RL parquet, task ``math``.

    python examples/data_preprocess/omni_math_data.py --out-dir ~/data/rl2f/omni_math --test-size 200
    python examples/data_preprocess/omni_math_data.py --local omni_math.jsonl --out-dir DIR      # offline copy

Needs a reachable hub (``datasets.load_dataset("KbsdJames/Omni-MATH", split="test")``; the hub calls its only
split ``test``) or a local file with the same fields: ``problem``, ``answer``, ``solution`` (privileged, teacher
only), ``domain``, ``difficulty``, ``source``. Rows go to ``train`` unless ``--test-size`` holds some out;
``--min-difficulty`` / ``--max-difficulty`` filter on Omni-MATH's difficulty score.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rl2f_data_writer import add_common_args, add_source_args, finish, load_source, math_record_to_row, take  # noqa: E402

HUB_NAME = "KbsdJames/Omni-MATH"


def convert(records: list[dict], min_difficulty: float | None = None, max_difficulty: float | None = None,
            source_name: str = "omni_math") -> list[dict]:
    rows = []
    for i, rec in enumerate(records):
        diff = rec.get("difficulty")
        if diff is not None and ((min_difficulty is not None and float(diff) < min_difficulty)
                                 or (max_difficulty is not None and float(diff) > max_difficulty)):
            continue
        rows.append(math_record_to_row(rec, data_source="omni_math", index=len(rows), split="train",
                                       where=f"{source_name} record {i}",
                                       extra_keys=("domain", "difficulty", "source")))
    return rows


def main(argv: list[str] | None = None) -> dict[str, str]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_source_args(p, hub_name=HUB_NAME, hub_split="test")
    p.add_argument("--min-difficulty", type=float, default=None)
    p.add_argument("--max-difficulty", type=float, default=None)
    add_common_args(p, default_split="train")
    args = p.parse_args(argv)
    records = take(load_source(args), args.limit)
    rows = convert(records, args.min_difficulty, args.max_difficulty, args.local or args.hub_name)
    return finish(rows, args, default_split="train")


if __name__ == "__main__":
    main()
