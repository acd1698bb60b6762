"""HARDMath2 (hub dataset, the paper's held-out maths *test* set) -> verl RL parquet, task ``math``.

    python examples/data_preprocess/hardmath2_data.py --hub-name <owner>/<HARDMath2 dataset> --out-dir DIR
    python examples/data_preprocess/hardmath2_data.py --local hardmath2.jsonl --out-dir DIR

HARDMath2 (211 applied-maths problems) has no single canonical hub location, so ``--hub-name`` (or
``--data-files`` / ``--local``) is required. Fields are matched by name: the problem from ``problem`` /
``question`` / ``prompt``, the final answer from ``answer`` / ``final_answer`` / ``solution_answer``, the worked
solution (privileged, teacher only) from ``solution``. Everything goes to ``test``.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rl2f_data_writer import add_common_args, add_source_args, finish, load_source, math_record_to_row, take  # noqa: E402


def convert(records: list[dict], source_name: str = "hardmath2") -> list[dict]:
    return [math_record_to_row(rec, data_source="hardmath2", index=i, split="test",
                               where=f"{source_name} record {i}",
                               extra_keys=("id", "problem_type", "topic", "answer_type"))
            for i, rec in enumerate(records)]


def main(argv: list[str] | None = None) -> dict[str, str]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_source_args(p, hub_name=None, hub_split="test")
    add_common_args(p, default_split="test")
    args = p.parse_args(argv)
    records = take(load_source(args), args.limit)
    return finish(convert(records, args.local or args.hub_name or args.data_files), args, default_split="test")


if __name__ == "__main__":
    main()
