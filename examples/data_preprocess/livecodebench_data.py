"""LiveCodeBench code generation (hub dataset) -> verl RL parquet, task ``code`` with stdin/stdout tests.

    python examples/data_preprocess/livecodebench_data.py --out-dir ~/data/rl2f/lcb
    python examples/data_preprocess/livecodebench_data.py --local lcb.jsonl --out-dir DIR     # offline copy

Reads the raw JSON-lines files of ``livecodebench/code_generation_lite`` (``--data-files``, default every
``test*.jsonl`` release; the hub's loading script is not supported by recent ``datasets``). Fields:
``question_title``, ``question_content``, ``platform``, ``question_id``, ``contest_date``, ``difficulty``,
``starter_code``, ``public_test_cases`` (a JSON string: ``[{"input", "output", "testtype"}]``) and
``private_test_cases``. Only ``stdin`` problems are converted (LeetCode-style ``functional`` ones are skipped
and counted). The ground truth is ``{"io": [{input, output}, ...]}`` from the public tests, plus the private
ones with ``--private-tests``: LiveCodeBench stores those as base64(zlib(pickle(JSON))); they are unpickled
with an unpickler that refuses every object but plain strings. ``--since YYYY-MM-DD`` keeps problems after a
date (contamination control).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import pickle
import sys
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rl2f_data_writer import add_common_args, add_source_args, finish, io_ground_truth, load_source, make_row, take  # noqa: E402

DATA_FILES = "hf://datasets/livecodebench/code_generation_lite/test*.jsonl"


class _StringsOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):  # noqa: D401 - refuse every global: only builtin str/list/dict data
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from LiveCodeBench test data")


def _decode_tests(value, *, where: str) -> list[dict]:
    if value in (None, ""):
        return []
    if isinstance(value, list):
        return value
    try:
        return json.loads(value)
    except (json.JSONDecodeError, TypeError):
        pass
    try:
        payload = _StringsOnlyUnpickler(io.BytesIO(zlib.decompress(base64.b64decode(value)))).load()
        return json.loads(payload) if isinstance(payload, str) else payload
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"{where}: cannot decode test cases ({type(exc).__name__}: {exc})") from exc


def problem_text(rec: dict) -> str:
    title = rec.get("question_title") or ""
    body = rec["question_content"].strip()
    return (f"{title}\n\n{body}" if title else body) + \
        "\n\nWrite a Python 3 program that reads the input from standard input and prints the answer to standard output."


def convert(records: list[dict], private_tests: bool = False, since: str | None = None,
            source_name: str = "livecodebench") -> tuple[list[dict], dict[str, int]]:
    rows, skipped = [], {"functional": 0, "before_since": 0}
    for i, rec in enumerate(records):
        where = f"{source_name} record {i} ({rec.get('question_id', '?')})"
        if since and str(rec.get("contest_date", ""))[:10] < since:
            skipped["before_since"] += 1
            continue
        tests = _decode_tests(rec.get("public_test_cases"), where=where)
        if private_tests:
            tests += _decode_tests(rec.get("private_test_cases"), where=where)
        if any(t.get("testtype", "stdin") != "stdin" for t in tests):
            skipped["functional"] += 1
            continue
        rows.append(make_row(
            data_source=f"livecodebench/{rec.get('platform', 'unknown')}", task="code",
            problem=problem_text(rec), ground_truth=io_ground_truth(tests, where=where), ability="code",
            split="test", index=len(rows),
            extra={"io_mode": True, "question_id": rec.get("question_id"), "contest_date": rec.get("contest_date"),
                   "difficulty": rec.get("difficulty")}))
    return rows, skipped


def main(argv: list[str] | None = None) -> dict[str, str]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_source_args(p, hub_name=None, hub_split="test", data_files=DATA_FILES)
    p.add_argument("--private-tests", action="store_true", help="add the (hidden) private tests")
    p.add_argument("--since", default=None, help="keep problems with contest_date >= this (YYYY-MM-DD)")
    add_common_args(p, default_split="test")
    args = p.parse_args(argv)
    records = take(load_source(args), args.limit)
    rows, skipped = convert(records, args.private_tests, args.since, args.local or args.data_files)
    print(f"skipped: {skipped}")
    return finish(rows, args, default_split="test")


if __name__ == "__main__":
    main()
