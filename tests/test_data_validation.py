"""`rl2f_plugin.data_validation` on real parquet files: every problem is reported with file, row and field;
good files pass; the CLI exits 1 on problems. Tasks are resolved through the real rl2f task registry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rl2f_plugin.data_validation import DatasetValidationError, validate_file, validate_files, validate_rows

REPO = Path(__file__).resolve().parents[1]


def _row(i: int, task: str = "math", gt="42", **over) -> dict:
    row = {
        "data_source": "unit",
        "prompt": [{"role": "user", "content": f"What is 6*7? (#{i})"}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": gt},
        "extra_info": {"task": task, "index": i, "split": "train", "problem": f"What is 6*7? (#{i})"},
    }
    row.update(over)
    return row


def _write(path: Path, rows: list[dict], schema: pa.Schema | None = None) -> str:
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), str(path))
    return str(path)


def test_good_file_passes_with_a_summary(tmp_path):
    path = _write(tmp_path / "train.parquet", [_row(i) for i in range(5)] + [_row(5, task="exact", gt="yes")])
    (report,) = validate_files(path)
    assert report.ok and report.num_rows == 6
    assert dict(report.tasks) == {"math": 5, "exact": 1}
    assert "6 rows, OK" in report.summary()


def test_missing_ground_truth_names_file_row_and_field(tmp_path):
    rows = [_row(i) for i in range(20)]
    rows[17]["reward_model"] = {"style": "rule", "ground_truth": None}
    path = _write(tmp_path / "train.parquet", rows)
    with pytest.raises(DatasetValidationError) as err:
        validate_files([path])
    assert err.value.errors == [f"{path} row 17: reward_model.ground_truth is missing"]
    assert "train.parquet row 17: reward_model.ground_truth is missing" in str(err.value)


def test_unknown_task_names_file_row_field_and_known_tasks(tmp_path):
    rows = [_row(0), _row(1, task="no_such_task"), _row(2, task="reasoning_gym:no_such_generator")]
    path = _write(tmp_path / "val.parquet", rows)
    report = validate_file(path)
    assert not report.ok and report.num_errors == 2
    assert report.errors[0].startswith(f"{path} row 1: extra_info.task 'no_such_task' is not a usable rl2f task")
    assert "known tasks:" in report.errors[0] and "math" in report.errors[0]
    assert report.errors[1].startswith(f"{path} row 2: extra_info.task 'reasoning_gym:no_such_generator'")


def test_task_falls_back_to_data_source(tmp_path):
    rows = [_row(0, data_source="math"), _row(1, data_source="openai/gsm8k")]
    for r in rows:
        r["extra_info"].pop("task")
    report = validate_file(_write(tmp_path / "t.parquet", rows))
    assert report.num_errors == 1
    assert "t.parquet row 1: data_source 'openai/gsm8k' is not a usable rl2f task" in report.errors[0]
    assert dict(report.tasks) == {"math": 1, "openai/gsm8k": 1}


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r["reward_model"].update(ground_truth="   "), "row 0: reward_model.ground_truth is empty"),
    (lambda r: r["reward_model"].pop("ground_truth"), "row 0: reward_model.ground_truth is missing"),
    (lambda r: r.update(prompt=[]), "row 0: prompt must be a non-empty list of chat messages"),
    (lambda r: r.update(prompt=[{"content": "hi"}]), "row 0: prompt[0] must be a message with 'role' and 'content'"),
    (lambda r: r.update(extra_info={"index": 0}, data_source=None), "row 0: extra_info.task is missing"),
])
def test_row_problems(tmp_path, mutate, message):
    row = _row(0)
    mutate(row)
    report = validate_rows([row], name="rows.parquet")
    assert report.num_errors == 1 and report.errors[0].startswith(f"rows.parquet {message}"), report.errors


def test_code_and_arc_ground_truth_shapes_are_checked(tmp_path):
    good_code = json.dumps({"tests": "assert f(1) == 2", "entry_point": "f"})
    rows = [
        _row(0, task="code", gt=good_code),
        _row(1, task="code", gt=json.dumps({"io": [{"input": "1\n", "output": "2\n"}]})),
        _row(2, task="code", gt="print('not json')"),
        _row(3, task="code", gt=json.dumps({"entry_point": "f"})),
        _row(4, task="arc", gt="[[1, 2], [3, 4]]"),
        _row(5, task="arc", gt="no grid here"),
    ]
    report = validate_file(_write(tmp_path / "code.parquet", rows))
    assert [e.split(": ", 1)[0].rsplit(" ", 1)[-1] for e in report.errors] == ["2", "3", "5"]
    assert "row 2: reward_model.ground_truth is not valid for task 'code'" in report.errors[0]
    assert "not JSON" in report.errors[0]
    assert "needs 'tests'" in report.errors[1]
    assert "row 5: reward_model.ground_truth is not valid for task 'arc': not a grid" in report.errors[2]


def test_file_level_problems(tmp_path):
    missing = str(tmp_path / "nope.parquet")
    assert validate_file(missing).errors == [f"{missing}: file not found"]
    junk = tmp_path / "junk.parquet"
    junk.write_text("this is not parquet")
    assert "not a readable parquet file" in validate_file(str(junk)).errors[0]
    no_rm = _write(tmp_path / "no_rm.parquet", [{k: v for k, v in _row(0).items() if k != "reward_model"}])
    assert validate_file(no_rm).errors[0].startswith(f"{no_rm}: column 'reward_model' is missing")
    empty = _write(tmp_path / "empty.parquet", [], schema=pa.Table.from_pylist([_row(0)]).schema)
    assert validate_file(empty).errors == [f"{empty}: no rows"]


def test_custom_prompt_key(tmp_path):
    rows = [_row(0)]
    rows[0]["messages"] = rows[0].pop("prompt")
    path = _write(tmp_path / "m.parquet", rows)
    assert validate_file(path, prompt_key="messages").ok
    assert "column 'prompt' is missing" in validate_file(path).errors[0]


def test_many_errors_are_capped_but_counted(tmp_path):
    rows = [_row(i, task="bogus") for i in range(30)]
    path = _write(tmp_path / "many.parquet", rows)
    report = validate_file(path, max_errors=5)
    assert report.num_errors == 30 and len(report.errors) == 5
    with pytest.raises(DatasetValidationError) as err:
        validate_files([path], max_errors=5)
    assert err.value.errors[-1].startswith("... and 25 more problem(s)")
    assert validate_files([path], raise_on_error=False)[0].num_errors == 30


def test_cli_exit_status_and_messages(tmp_path):
    good = _write(tmp_path / "good.parquet", [_row(0), _row(1)])
    rows = [_row(0), _row(1)]
    rows[1]["reward_model"]["ground_truth"] = None
    bad = _write(tmp_path / "bad.parquet", rows)
    cmd = [sys.executable, "-m", "rl2f_plugin.data_validation"]
    ok = subprocess.run(cmd + [good], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert f"{good}: 2 rows, OK; tasks: math x2" in ok.stdout
    ko = subprocess.run(cmd + [good, bad], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert ko.returncode == 1
    assert f"{bad} row 1: reward_model.ground_truth is missing" in ko.stderr
    assert f"{bad}: 2 rows, 1 problem(s)" in ko.stdout
