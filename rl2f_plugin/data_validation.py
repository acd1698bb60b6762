"""Check a verl RL parquet file before rl2f trains or evaluates on it.

Every row must have

* a prompt (``prompt`` column, or the configured prompt key): a non-empty list of chat messages with
  ``role`` and ``content``;
* a ground truth: ``reward_model.ground_truth`` present, not null and not empty;
* a known rl2f task: ``extra_info.task`` (falling back to ``data_source``, as
  `reward_fns.verl_reward.compute_score` does) must resolve with `rl2f_plugin.tasks.get_task`.

The ground truth must also have the shape its task's verifier needs: for ``code``, a dict / JSON object with
``tests`` (+ ``entry_point``) or ``io`` (checked with the sandbox's own parser); for ``arc``, a grid. A task may
add its own check by defining ``validate_ground_truth(ground_truth, extra_info)`` (raising on a bad one).

Errors name the file, the 0-based row index (the position in the file, as ``pandas.read_parquet(f).iloc[i]``)
and the field::

    data/train.parquet row 17: reward_model.ground_truth is missing

Use from Python::

    from rl2f_plugin.data_validation import validate_files
    validate_files(["train.parquet", "test.parquet"])        # raises DatasetValidationError listing problems

or from the shell (exit status 1 when a file has problems)::

    python -m rl2f_plugin.data_validation data/train.parquet data/test.parquet
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

__all__ = ["DatasetValidationError", "FileReport", "validate_file", "validate_files", "validate_rows",
           "task_name_of", "main"]

#: Stop collecting errors for one file after this many (the count of further ones is still reported).
DEFAULT_MAX_ERRORS = 50


class DatasetValidationError(ValueError):
    """A dataset file failed validation; ``errors`` lists every problem found (file, row, field)."""

    def __init__(self, errors: list[str], reports: list["FileReport"] | None = None):
        self.errors = list(errors)
        self.reports = list(reports or [])
        shown = self.errors[:20]
        more = f"\n... and {len(self.errors) - len(shown)} more" if len(self.errors) > len(shown) else ""
        super().__init__(f"{len(self.errors)} dataset problem(s):\n" + "\n".join(shown) + more)


@dataclass
class FileReport:
    path: str
    num_rows: int = 0
    tasks: Counter = field(default_factory=Counter)
    data_sources: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    num_errors: int = 0
    """All problems found, including those beyond ``max_errors`` that are not listed in ``errors``."""

    @property
    def ok(self) -> bool:
        return self.num_errors == 0

    def summary(self) -> str:
        status = "OK" if self.ok else f"{self.num_errors} problem(s)"
        tasks = ", ".join(f"{k} x{v}" for k, v in sorted(self.tasks.items()))
        return f"{self.path}: {self.num_rows} rows, {status}; tasks: {tasks or '-'}"


def task_name_of(row: dict[str, Any]) -> str | None:
    """The rl2f task of a row: ``extra_info.task``, else ``data_source`` (the rule `compute_score` applies)."""
    extra = row.get("extra_info")
    if isinstance(extra, dict) and isinstance(extra.get("task"), str) and extra["task"].strip():
        return extra["task"].strip()
    ds = row.get("data_source")
    return ds.strip() if isinstance(ds, str) and ds.strip() else None


def _check_code(gt: Any, extra_info: dict) -> None:
    from reward_fns.code_sandbox import parse_code_ground_truth

    parse_code_ground_truth(gt)


def _check_arc(gt: Any, extra_info: dict) -> None:
    from reward_fns.arc_grid import parse_grid

    if parse_grid(gt) is None:
        raise ValueError(f"not a grid: {_short(gt)}")


#: Shape checks of the built-in tasks' ground truths (by task name).
GROUND_TRUTH_CHECKS = {"code": _check_code, "arc": _check_arc}


def _iter_parquet_rows(path: str) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    for batch in pf.iter_batches(batch_size=1024):
        yield from batch.to_pylist()


def validate_rows(rows: Iterable[dict[str, Any]], *, name: str = "<rows>", prompt_key: str = "prompt",
                  max_errors: int = DEFAULT_MAX_ERRORS) -> FileReport:
    """Validate rows (dicts as verl's dataset sees them); `name` is used in the messages."""
    from rl2f_plugin.tasks import get_task

    report = FileReport(path=name)
    task_cache: dict[str, Any] = {}
    task_errors: dict[str, str] = {}

    def error(i: int, msg: str) -> None:
        report.num_errors += 1
        if len(report.errors) < max_errors:
            report.errors.append(f"{name} row {i}: {msg}")

    for i, row in enumerate(rows):
        report.num_rows += 1
        if not isinstance(row, dict):
            error(i, f"row is {type(row).__name__}, not a record")
            continue
        report.data_sources[str(row.get("data_source"))] += 1
        # -- prompt ---------------------------------------------------------------------------------------
        prompt = row.get(prompt_key)
        if hasattr(prompt, "tolist"):  # numpy arrays from pandas
            prompt = prompt.tolist()
        if prompt_key not in row:
            error(i, f"{prompt_key} is missing")
        elif not isinstance(prompt, list) or not prompt:
            error(i, f"{prompt_key} must be a non-empty list of chat messages, got {_short(prompt)}")
        else:
            for j, msg in enumerate(prompt):
                if not isinstance(msg, dict) or not isinstance(msg.get("role"), str) or msg.get("content") is None:
                    error(i, f"{prompt_key}[{j}] must be a message with 'role' and 'content', got {_short(msg)}")
                    break
        # -- ground truth ---------------------------------------------------------------------------------
        rm = row.get("reward_model")
        gt: Any = None
        if rm is None:
            error(i, "reward_model is missing")
        elif not isinstance(rm, dict):
            error(i, f"reward_model must be a record with ground_truth, got {_short(rm)}")
        elif "ground_truth" not in rm or rm["ground_truth"] is None:
            error(i, "reward_model.ground_truth is missing")
        else:
            gt = rm["ground_truth"]
            if hasattr(gt, "tolist"):
                gt = gt.tolist()
            if isinstance(gt, str) and not gt.strip() or isinstance(gt, (list, dict)) and not gt:
                error(i, "reward_model.ground_truth is empty")
                gt = None
        # -- task -----------------------------------------------------------------------------------------
        extra = row.get("extra_info")
        if extra is not None and not isinstance(extra, dict):
            error(i, f"extra_info must be a record, got {_short(extra)}")
            extra = None
        task_name = task_name_of(row)
        if task_name is None:
            error(i, "extra_info.task is missing (and there is no data_source to fall back on)")
            continue
        field_name = "extra_info.task" if isinstance(extra, dict) and extra.get("task") else "data_source"
        report.tasks[task_name] += 1
        if task_name not in task_cache and task_name not in task_errors:
            try:
                task_cache[task_name] = get_task(task_name)
            except Exception as exc:  # noqa: BLE001 - unknown task or a broken factory: report, don't crash
                task_errors[task_name] = f"{type(exc).__name__}: {exc}"
        if task_name in task_errors:
            error(i, f"{field_name} {task_name!r} is not a usable rl2f task ({task_errors[task_name]})")
            continue
        check = getattr(task_cache[task_name], "validate_ground_truth", None) or GROUND_TRUTH_CHECKS.get(task_name)
        if gt is not None and callable(check):
            try:
                check(gt, extra or {})
            except Exception as exc:  # noqa: BLE001
                error(i, f"reward_model.ground_truth is not valid for task {task_name!r}: {exc}")
    if report.num_rows == 0:
        report.num_errors += 1
        report.errors.append(f"{name}: no rows")
    return report


def validate_file(path: str, *, prompt_key: str = "prompt", max_errors: int = DEFAULT_MAX_ERRORS) -> FileReport:
    """Validate one parquet file; problems are in the returned report (nothing is raised for bad rows)."""
    if not os.path.exists(path):
        report = FileReport(path=path, num_errors=1)
        report.errors.append(f"{path}: file not found")
        return report
    try:
        import pyarrow.parquet as pq

        names = pq.ParquetFile(path).schema_arrow.names
    except Exception as exc:  # noqa: BLE001
        report = FileReport(path=path, num_errors=1)
        report.errors.append(f"{path}: not a readable parquet file ({type(exc).__name__}: {exc})")
        return report
    missing = [c for c in (prompt_key, "reward_model") if c not in names]
    if "extra_info" not in names and "data_source" not in names:
        missing.append("extra_info")
    if missing:
        report = FileReport(path=path, num_errors=len(missing))
        report.errors.extend(f"{path}: column {c!r} is missing (columns: {', '.join(names)})" for c in missing)
        return report
    return validate_rows(_iter_parquet_rows(path), name=path, prompt_key=prompt_key, max_errors=max_errors)


def validate_files(paths: Iterable[str] | str, *, prompt_key: str = "prompt", max_errors: int = DEFAULT_MAX_ERRORS,
                   raise_on_error: bool = True) -> list[FileReport]:
    """Validate parquet files (a path, or a list as in verl's ``data.train_files``). Raises
    `DatasetValidationError` listing every problem unless ``raise_on_error=False``."""
    if isinstance(paths, str):
        paths = [paths]
    else:
        paths = list(paths)  # also accepts OmegaConf ListConfig
    reports = [validate_file(str(p), prompt_key=prompt_key, max_errors=max_errors) for p in paths]
    errors = [e for r in reports for e in r.errors]
    hidden = sum(r.num_errors - len(r.errors) for r in reports)
    if hidden:
        errors.append(f"... and {hidden} more problem(s) not listed (max_errors={max_errors} per file)")
    if raise_on_error and any(not r.ok for r in reports):
        raise DatasetValidationError(errors, reports)
    return reports


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rl2f_plugin.data_validation",
                                description="Validate verl RL parquet files for rl2f (ground truth, known task, prompt).")
    p.add_argument("files", nargs="+", help="parquet files")
    p.add_argument("--prompt-key", default="prompt", help="prompt column (verl's data.prompt_key)")
    p.add_argument("--max-errors", type=int, default=DEFAULT_MAX_ERRORS, help="problems listed per file")
    args = p.parse_args(argv)
    reports = validate_files(args.files, prompt_key=args.prompt_key, max_errors=args.max_errors, raise_on_error=False)
    for r in reports:
        for e in r.errors:
            print(e, file=sys.stderr)
        if r.num_errors > len(r.errors):
            print(f"{r.path}: ... and {r.num_errors - len(r.errors)} more problem(s)", file=sys.stderr)
    for r in reports:
        print(r.summary())
    return 0 if all(r.ok for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
