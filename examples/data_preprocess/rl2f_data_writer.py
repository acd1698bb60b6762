"""Shared helpers of the rl2f data converters: build one verl RL row, write verl RL parquet files.

Every converter in this folder turns its source into rows of verl's RL dataset format (the one
`verl.utils.dataset.rl_dataset.RLHFDataset` reads), with the rl2f conventions:

* ``data_source``: where the problem comes from, e.g. ``reasoning_gym/basic_arithmetic``, ``humaneval``.
* ``prompt``: the student's first-turn chat messages, rendered by the rl2f task
  (``get_task(task).render_prompt(problem, extra_info)``) so the prompt matches what the verifier extracts.
* ``ability``: a coarse domain label (``math``, ``code``, ``arc``, ...), informational.
* ``reward_model``: ``{"style": "rule", "ground_truth": <str>}``. The ground truth is always a string; a
  structured one (code tests) is stored as a JSON string, which the rl2f verifiers accept. A single string
  type keeps files of several sources concatenable.
* ``extra_info``: ``{"task": <rl2f task name>, "index", "split", "problem"}`` plus privileged fields the
  teacher may see (``solution``, ``hint``, ...) and source bookkeeping. Types are fixed so that files of
  different sources can be listed together in ``data.train_files`` (verl concatenates them, which fails when
  one field has two types): keys ending in ``index`` are integers, flags are booleans, everything else is a
  string (numbers as text, lists / dicts as JSON).

The converters import this module as a sibling (``python examples/data_preprocess/<source>.py`` puts this
folder on ``sys.path``).
"""

from __future__ import annotations

import json
import logging
import os
import random
from typing import Any, Iterable

logger = logging.getLogger("rl2f.data_preprocess")

#: Keys that every row's ``extra_info`` carries.
EXTRA_INFO_TASK = "task"
EXTRA_INFO_INDEX = "index"
EXTRA_INFO_SPLIT = "split"
EXTRA_INFO_PROBLEM = "problem"


def render_prompt(task_name: str, problem: str, extra_info: dict | None = None) -> list[dict[str, str]]:
    """The student's first-turn messages for `problem`, rendered by the registered rl2f task."""
    from rl2f_plugin.tasks import get_task

    messages = get_task(task_name).render_prompt(problem, extra_info)
    if not isinstance(messages, list) or not messages or not all(
        isinstance(m, dict) and "role" in m and "content" in m for m in messages
    ):
        raise TypeError(f"task {task_name!r}: render_prompt returned {messages!r}, expected chat messages")
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]


def make_row(*, data_source: str, task: str, problem: str, ground_truth: Any, ability: str, split: str,
             index: int, privileged: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
             ) -> dict[str, Any]:
    """One verl RL row. `privileged` holds teacher-only material (solution, hints); `extra` holds other
    bookkeeping (source ids, reproduction data). Both go into ``extra_info``; non-scalar values there are
    JSON-encoded."""
    if not isinstance(problem, str) or not problem.strip():
        raise ValueError(f"{data_source} {split} row {index}: empty problem statement")
    gt = ground_truth_to_str(ground_truth)
    if not gt.strip():
        raise ValueError(f"{data_source} {split} row {index}: empty ground truth")
    extra_info: dict[str, Any] = {
        EXTRA_INFO_TASK: task,
        EXTRA_INFO_INDEX: int(index),
        EXTRA_INFO_SPLIT: split,
        EXTRA_INFO_PROBLEM: problem,
    }
    for source in (privileged or {}), (extra or {}):
        for key, value in source.items():
            if key in extra_info:
                raise ValueError(f"extra_info key {key!r} is reserved")
            extra_info[key] = _normalise_extra(key, value)
    return {
        "data_source": data_source,
        "prompt": render_prompt(task, problem, extra_info),
        "ability": ability,
        "reward_model": {"style": "rule", "ground_truth": gt},
        "extra_info": extra_info,
    }


def ground_truth_to_str(ground_truth: Any) -> str:
    if ground_truth is None:
        return ""
    if isinstance(ground_truth, str):
        return ground_truth
    if isinstance(ground_truth, (int, float)) and not isinstance(ground_truth, bool):
        return str(ground_truth)
    return json.dumps(ground_truth, ensure_ascii=False, sort_keys=True)


def _normalise_extra(key: str, value: Any) -> Any:
    """None, bool, int for ``*index`` keys, else a string (JSON for containers): one type per key across
    every converter."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if key.endswith("index") and isinstance(value, int):
        return value
    if isinstance(value, (int, float)):
        return str(value)
    if hasattr(value, "tolist"):  # numpy
        value = value.tolist()
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def write_parquet(rows: list[dict[str, Any]], path: str) -> str:
    """Write `rows` (from `make_row`) as a verl RL parquet file; returns the path. Rows are re-indexed
    ``extra_info.index = 0..n-1`` only if they have no index. Missing ``extra_info`` keys in some rows become
    nulls (pyarrow unions the struct fields)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not rows:
        raise ValueError(f"{path}: no rows to write")
    # Make every row carry the same extra_info keys (None where absent) so the struct schema is the union.
    keys: list[str] = []
    for row in rows:
        for k in row["extra_info"]:
            if k not in keys:
                keys.append(k)
    rows = [{**row, "extra_info": {k: row["extra_info"].get(k) for k in keys}} for row in rows]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, path)
    logger.info("wrote %d rows to %s", len(rows), path)
    return path


def read_rows(path: str) -> list[dict[str, Any]]:
    """Rows of a parquet file as python dicts (for tests and tools)."""
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def shuffle_and_reindex(rows: list[dict[str, Any]], seed: int, split: str) -> list[dict[str, Any]]:
    """Shuffle deterministically and set ``extra_info.index`` / ``split`` to the row position / split."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    for i, row in enumerate(rows):
        row["extra_info"][EXTRA_INFO_INDEX] = i
        row["extra_info"][EXTRA_INFO_SPLIT] = split
    return rows


def take(rows: Iterable[dict[str, Any]], limit: int | None) -> list[dict[str, Any]]:
    rows = list(rows)
    return rows if limit is None or limit < 0 else rows[:limit]


def write_splits(out_dir: str, splits: dict[str, list[dict[str, Any]]]) -> dict[str, str]:
    """Write ``{split: rows}`` as ``out_dir/<split>.parquet``; returns ``{split: path}``."""
    paths = {}
    for split, rows in splits.items():
        paths[split] = write_parquet(rows, os.path.join(out_dir, f"{split}.parquet"))
        print(f"wrote {len(rows):>6d} rows -> {paths[split]}")
    return paths


def load_jsonl(path: str) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file; a bad line names the file and line."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path} line {lineno}: not valid JSON: {exc}") from exc
    return rows


def load_hub_or_file(hub_name: str | None, *, split: str, config: str | None = None, local: str | None = None,
                     data_files: str | None = None) -> list[dict[str, Any]]:
    """Rows of a hub dataset (``datasets.load_dataset(hub_name, config, split=split)``; with `data_files`,
    ``load_dataset("json", data_files=data_files, split="train")`` for hubs that ship raw JSON-lines) or, when
    `local` is given, of a local ``.jsonl`` / ``.json`` / ``.parquet`` file in the same format (offline use,
    tests). A ``.json`` file may hold a list of rows, ``{split: rows}`` or ``{"examples": rows}``."""
    if local:
        if local.endswith(".jsonl"):
            return load_jsonl(local)
        if local.endswith(".json"):
            with open(local, encoding="utf-8") as fh:
                data = json.load(fh)
            if isinstance(data, list):
                return data
            for key in (split, "examples"):
                if isinstance(data, dict) and isinstance(data.get(key), list):
                    return data[key]
            raise ValueError(f"{local}: expected a list of rows, or a {split!r} / 'examples' list")
        if local.endswith(".parquet"):
            return read_rows(local)
        raise ValueError(f"{local}: unsupported file type (use .jsonl, .json or .parquet)")
    import datasets

    if data_files:
        return [dict(r) for r in datasets.load_dataset("json", data_files=data_files, split="train")]
    if not hub_name:
        raise SystemExit("give --hub-name (a hub dataset), --data-files or --local (a local file)")
    ds = datasets.load_dataset(hub_name, config, split=split) if config else datasets.load_dataset(hub_name, split=split)
    return [dict(r) for r in ds]


def pick_field(record: dict[str, Any], candidates: tuple[str, ...] | list[str], *, where: str,
               required: bool = True) -> Any:
    """The value of the first of `candidates` present (and not null) in `record`. Hub datasets rename
    columns between revisions; a missing field raises an error naming the record and the columns it has."""
    for key in candidates:
        if key in record and record[key] is not None:
            return record[key]
    if required:
        raise ValueError(f"{where}: none of the fields {list(candidates)} is present "
                         f"(fields: {', '.join(sorted(record))})")
    return None


def split_train_test(rows: list[dict[str, Any]], test_size: int, seed: int) -> dict[str, list[dict[str, Any]]]:
    """Shuffle `rows` with `seed`, hold out `test_size` of them as ``test`` and keep the rest as ``train``
    (``extra_info.index`` / ``split`` are rewritten). Empty splits are dropped."""
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    test_size = max(0, min(test_size, len(rows)))
    out = {"train": shuffle_and_reindex(rows[test_size:], seed, "train"),
           "test": shuffle_and_reindex(rows[:test_size], seed + 1, "test")}
    return {k: v for k, v in out.items() if v}


def add_common_args(parser, *, default_split: str | None = None) -> None:
    """``--out-dir``, ``--seed``, ``--limit`` for every converter."""
    parser.add_argument("--out-dir", required=True, help="writes OUT_DIR/<split>.parquet")
    parser.add_argument("--seed", type=int, default=0, help="shuffling seed")
    parser.add_argument("--limit", type=int, default=None, help="keep at most this many source problems")
    if default_split is not None:
        parser.add_argument("--test-size", type=int, default=None,
                            help=f"hold out this many rows as test (default: everything goes to {default_split})")


def finish(rows: list[dict[str, Any]], args, default_split: str) -> dict[str, str]:
    """Split (``--test-size``) or put every row in `default_split`, then write the parquet files."""
    if not rows:
        raise SystemExit("no rows converted")
    if getattr(args, "test_size", None) is not None:
        splits = split_train_test(rows, args.test_size, args.seed)
    else:
        splits = {default_split: shuffle_and_reindex(rows, args.seed, default_split)}
    return write_splits(os.path.expanduser(args.out_dir), splits)


def add_source_args(parser, *, hub_name: str | None, hub_split: str, hub_config: str | None = None,
                    data_files: str | None = None) -> None:
    """``--hub-name/--hub-split/--hub-config/--data-files`` (hub) and ``--local`` (offline file) options."""
    parser.add_argument("--hub-name", default=hub_name, help=f"hub dataset (default: {hub_name})")
    parser.add_argument("--hub-split", default=hub_split)
    parser.add_argument("--hub-config", default=hub_config)
    parser.add_argument("--data-files", default=data_files,
                        help="raw JSON-lines file(s) on the hub, e.g. hf://datasets/<owner>/<name>/test.jsonl")
    parser.add_argument("--local", default=None, help="a local .jsonl/.json/.parquet file in the hub's format")


def load_source(args) -> list[dict[str, Any]]:
    return load_hub_or_file(args.hub_name, split=args.hub_split, config=args.hub_config, local=args.local,
                            data_files=None if args.local else args.data_files)


PROBLEM_FIELDS = ("problem", "question", "prompt", "input")
ANSWER_FIELDS = ("answer", "final_answer", "solution_answer", "target")
SOLUTION_FIELDS = ("solution", "reference_solution", "explanation")


def math_record_to_row(record: dict[str, Any], *, data_source: str, index: int, split: str,
                       where: str, extra_keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """A hub maths record (problem / answer / optional worked solution) -> a ``math`` row."""
    problem = pick_field(record, PROBLEM_FIELDS, where=where)
    answer = pick_field(record, ANSWER_FIELDS, where=where)
    solution = pick_field(record, SOLUTION_FIELDS, where=where, required=False)
    extra = {k: record[k] for k in extra_keys if record.get(k) is not None}
    return make_row(data_source=data_source, task="math", problem=str(problem), ground_truth=str(answer).strip(),
                    ability="math", split=split, index=index,
                    privileged={"solution": str(solution)} if solution else None, extra=extra)


def io_ground_truth(pairs: list[dict[str, Any]], *, where: str) -> dict[str, Any]:
    """``{"io": [{"input", "output"}, ...]}`` for stdin/stdout programs; every pair must have both strings."""
    out = []
    for j, pair in enumerate(pairs):
        if not isinstance(pair, dict) or not isinstance(pair.get("input"), str) or not isinstance(pair.get("output"), str):
            raise ValueError(f"{where}: test {j} must have string 'input' and 'output', got {str(pair)[:80]!r}")
        out.append({"input": pair["input"], "output": pair["output"]})
    if not out:
        raise ValueError(f"{where}: no stdin/stdout tests")
    return {"io": out}
