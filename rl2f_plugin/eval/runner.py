"""Run an rl2f agent loop over a parquet split and write one JSONL transcript record per problem.

The interaction is not re-implemented here: each problem runs the *same* agent-loop class as training
(``rl2f_didactic`` with a teacher, ``rl2f_autodidact`` without, or any loop in verl's agent-loop registry),
instantiated as verl's ``AgentLoopWorker._run_agent_loop`` does (``hydra.utils.instantiate`` of the registry
entry with ``trainer_config=DictConfigWrap(cfg)``, ``server_manager``, ``tokenizer``, ...), on rows produced
by verl's ``RLHFDataset`` (so the loop sees the kwargs it sees in training: ``raw_prompt``, ``reward_model``,
``extra_info``, ``index``, ...). The ``server_manager`` is a student backend from `rl2f_plugin.eval.backends`.

Guarantees: bounded concurrency (``concurrency`` problems in flight), a per-problem time limit, a failed
problem is retried and finally written as an ``status: "error"`` record (never dropped), and re-running with
the same output file skips problems already finished (``status: "ok"``) and retries the errored ones.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from .. import schema
from ..config import RL2FConfig
from .report import INDEPENDENT
from .transcript import json_safe, rebuild_turns

logger = logging.getLogger(__name__)

__all__ = ["EvalSettings", "build_trainer_config", "load_rows", "run_eval", "run_eval_async", "default_agent_loop"]

AUTODIDACT_LOOP = "rl2f_autodidact"
DIDACTIC_LOOP = "rl2f_didactic"


def default_agent_loop(teacher: str | None) -> str:
    return AUTODIDACT_LOOP if (teacher or "").lower() in ("none", "autodidact") else DIDACTIC_LOOP


@dataclass
class EvalSettings:
    data: str
    """Parquet file (verl's RL format: prompt, reward_model.ground_truth, extra_info.task / data_source)."""
    out: str
    """JSONL transcript file (appended to, resumable)."""
    name: str | None = None
    """Run label in tables and plots (default: the output file's stem)."""
    agent_loop: str | None = None
    """Registered agent-loop name; default rl2f_didactic, or rl2f_autodidact when teacher is 'none'."""
    teacher: str | None = None
    """Sets ``rl2f.teacher.name`` (self | openai | execution | template | none); None keeps the config's."""
    max_turns: int | None = None
    """K student turns; sets ``rl2f.max_turns`` (None keeps the config's). With `independent`: the K that pass@k
    is reported up to (the loop then runs one turn)."""
    independent: bool = False
    """Independent single-turn samples instead of an interaction: the loop runs with K=1 (no feedback), each problem
    gets `n_samples` answers sampled at `temperature` (default: the training rollout's), and the report gives their
    pass@1..K (`rl2f_plugin.eval.controls.pass_at_k`) beside a multi-turn run's cumulative accuracy at turn K."""
    limit: int | None = None
    """Evaluate only the first N rows."""
    n_samples: int = 1
    concurrency: int = 4
    problem_timeout: float = 900.0
    """Seconds for one whole interaction (all turns, teacher included)."""
    problem_retries: int = 1
    """Extra attempts of a problem whose interaction raised or timed out."""
    max_new_tokens: int | None = None
    """Per-turn cap on student tokens (``max_tokens`` in the sampling params; the loop still caps by the
    remaining response budget). None: the remaining budget only, as in training."""
    temperature: float | None = None
    """Student temperature; None: ``rollout.val_kwargs.temperature`` (greedy by default)."""
    verify_timeout: float = 30.0
    """Seconds for the harness' own verification (used only when the loop reports no per-turn correctness)."""
    progress: bool = True
    validate_data: bool = True
    student_label: str | None = None
    seed: int = 0
    extra_header: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------------------
# config
# ------------------------------------------------------------------------------------------------------------
def build_trainer_config(recipe: str | None = None, overrides: list[str] | None = None,
                         rl2f: dict[str, Any] | None = None):
    """The full trainer config the loop sees: verl's ``ppo_trainer`` (or a recipe composed on it) with Hydra
    `overrides` applied, then the `rl2f` dict merged into the ``rl2f:`` section."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf, open_dict

    import verl

    if recipe:
        recipe = os.path.abspath(recipe)
        if not os.path.isfile(recipe):
            raise FileNotFoundError(f"recipe {recipe} not found")
        config_dir, config_name = os.path.dirname(recipe), os.path.splitext(os.path.basename(recipe))[0]
    else:
        config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
        config_name = "ppo_trainer"
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        cfg = compose(config_name=config_name, overrides=list(overrides or []))
    with open_dict(cfg):
        # defaults < recipe < `rl2f`, validated (errors name the key)
        cfg.rl2f = OmegaConf.create(RL2FConfig.from_trainer_config(cfg, overrides=rl2f).to_dict())
        # the harness' rows come from one file, read as-is
        cfg.data.filter_overlong_prompts = False
    return cfg


def _register_config_loops(cfg) -> None:
    """Load ``rollout.agent.agent_loop_config_path`` into verl's registry, as ``AgentLoopWorker`` does."""
    from omegaconf import OmegaConf
    from verl.experimental.agent_loop.agent_loop import _agent_loop_registry
    from verl.utils.import_utils import resolve_config_path

    path = cfg.actor_rollout_ref.rollout.agent.get("agent_loop_config_path")
    if path:
        for entry in OmegaConf.load(resolve_config_path(path)):
            _agent_loop_registry[entry.name] = entry


# ------------------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------------------
def load_rows(path: str, tokenizer: Any, cfg, *, validate: bool = True, limit: int | None = None) -> list[dict[str, Any]]:
    """Rows of `path` as verl's ``RLHFDataset.__getitem__`` yields them (``raw_prompt``, ``index``, ...)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"evaluation data {path} not found")
    if validate:
        try:
            from rl2f_plugin.data_validation import validate_files
        except ImportError:  # written by another component; absent in minimal builds
            validate_files = None
        if validate_files is not None:
            validate_files([path], prompt_key=cfg.data.get("prompt_key", "prompt"))
    from verl.utils.dataset.rl_dataset import RLHFDataset

    dataset = RLHFDataset(data_files=[path], tokenizer=tokenizer, config=cfg.data, processor=None)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    return [dataset[i] for i in range(n)]


# ------------------------------------------------------------------------------------------------------------
# output file
# ------------------------------------------------------------------------------------------------------------
def file_digest(path: str) -> str:
    """The first 16 hex digits of the file's SHA-256 (a transcript header's ``data_sha``)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _prepare_output(path: str, header: dict[str, Any]) -> set[str]:
    """Create `path` with `header`, or check an existing one matches and return its finished keys."""
    from .report import load_records

    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        with open(path, "w", encoding="utf-8") as f:
            f.write(json.dumps(header) + "\n")
        return set()
    with open(path, "rb+") as f:  # drop a partial last line left by a killed run
        data = f.read()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            f.seek(cut)
            f.truncate()
    old, records = load_records(path)
    old = {"mode": "interaction", **old}  # files written before independent sampling existed
    for key in ("data_sha", "agent_loop", "max_turns", "n_samples", "mode"):
        if old.get(key) != header.get(key):
            raise ValueError(
                f"{path} holds a different run ({key}: {old.get(key)!r} there, {header.get(key)!r} now); "
                f"use another --out or delete the file to start over")
    return {r["key"] for r in records if r.get("status") == "ok"}


# ------------------------------------------------------------------------------------------------------------
# one problem
# ------------------------------------------------------------------------------------------------------------
def _sampling_params(cfg, temperature: float | None = None) -> dict[str, Any]:
    """Validation sampling parameters, as ``AgentLoopWorker.generate_sequences`` builds them with validate=True
    (except ``logprobs``, always off here)."""
    rollout = cfg.actor_rollout_ref.rollout
    val = rollout.val_kwargs
    # no log-probs: evaluation reads none, and computing them costs the backend time and memory
    sp = dict(temperature=val.temperature, top_p=val.top_p, top_k=val.top_k, repetition_penalty=1.0, logprobs=False)
    if temperature is not None:
        sp["temperature"] = temperature
    return sp


class _Harness:
    def __init__(self, settings: EvalSettings, cfg, backend: Any, tokenizer: Any, agent_loop: str,
                 hf_model_type: str | None):
        from verl.utils.dataset.rl_dataset import RLHFDataset

        self.s = settings
        self.cfg = cfg
        self.backend = backend
        self.tokenizer = tokenizer
        self.agent_loop = agent_loop
        self.hf_model_type = hf_model_type
        self.dataset_cls = RLHFDataset
        self.sampling_params = _sampling_params(cfg, settings.temperature)
        if settings.max_new_tokens:
            self.sampling_params["max_tokens"] = int(settings.max_new_tokens)
        self.max_turns = int(cfg.rl2f.max_turns)

    def _instantiate(self):
        import hydra
        from verl.experimental.agent_loop.agent_loop import DictConfigWrap, ToolListWrap, _agent_loop_registry

        return hydra.utils.instantiate(
            config=_agent_loop_registry[self.agent_loop],
            trainer_config=DictConfigWrap(config=self.cfg),
            server_manager=self.backend,
            tokenizer=self.tokenizer,
            processor=None,
            hf_model_type=self.hf_model_type,
            dataset_cls=self.dataset_cls,
            data_config=DictConfigWrap(self.cfg.data),
            tools=ToolListWrap([]),
        )

    async def run_problem(self, row_pos: int, sample: int, row: dict[str, Any]) -> dict[str, Any]:
        key = f"{row_pos}:{sample}"
        base = {
            "record": "problem", "key": key, "row": row_pos, "sample": sample,
            "index": json_safe(row.get("index")), "data_source": row.get("data_source"),
            "task": _task_name(row), "ground_truth": json_safe((row.get("reward_model") or {}).get("ground_truth")),
            "max_turns": self.max_turns,
        }
        errors: list[str] = []
        attempts = 0
        for attempt in range(self.s.problem_retries + 1):
            attempts = attempt + 1
            t0 = time.perf_counter()
            try:
                kwargs = dict(row)
                kwargs.update(uid=f"eval-{row_pos}", session_id=sample, global_steps=-1)
                kwargs.pop("agent_name", None)
                loop = self._instantiate()
                output = await asyncio.wait_for(loop.run(dict(self.sampling_params), **kwargs),
                                                timeout=self.s.problem_timeout)
                if isinstance(output, list):
                    if len(output) != 1:
                        raise ValueError(f"agent loop returned {len(output)} outputs; the harness expects one trajectory")
                    output = output[0]
                rec = await self._record(output, row, time.perf_counter() - t0)
                rec.update(base, status="ok", attempts=attempts, errors=errors)
                return rec
            except asyncio.TimeoutError:
                errors.append(f"attempt {attempts}: interaction exceeded {self.s.problem_timeout:g}s")
            except Exception as exc:  # noqa: BLE001 - record, retry, then write an error record
                errors.append(f"attempt {attempts}: {type(exc).__name__}: {exc}")
                logger.debug("problem %s failed: %s", key, traceback.format_exc())
        return {**base, "status": "error", "attempts": attempts, "errors": errors, "error": errors[-1]}

    async def _record(self, output: Any, row: dict[str, Any], elapsed: float) -> dict[str, Any]:
        ef = dict(output.extra_fields or {})
        tr = rebuild_turns(output, self.tokenizer)
        student = [t for t in tr["turns"] if t["role"] == "student"]
        correct = ef.get(schema.EF_TURN_CORRECT)
        scores = ef.get(schema.EF_TURN_SCORES)
        verified_by = "agent_loop"
        # each reply verified again with the row's task, as the episode does, for the answer it extracted (what the
        # answer-change statistics compare); and the verdict itself for a loop that does not verify
        results = [await self._verify(t["text"], row) for t in student]
        for t, r in zip(student, results):
            t["answer"] = r["extracted"]
        if correct is None:  # a loop that does not verify (e.g. verl's single_turn_agent): verify here
            verified_by = "harness"
            correct = [int(r["correct"]) for r in results]
            scores = [float(r["score"]) for r in results]
        correct = [int(bool(c)) for c in json_safe(correct)]
        scores = json_safe(scores) if scores is not None else None
        n_student = int(ef.get(schema.EF_NUM_STUDENT_TURNS, len(correct)) or 0)
        solved = ef.get(schema.EF_SOLVED_AT_TURN)
        if solved is None:
            solved = next((i + 1 for i, c in enumerate(correct) if c), 0)
        solved = int(json_safe(solved) or 0)
        for i, t in enumerate(student):
            if i < len(correct):
                t["correct"] = bool(correct[i])
            if scores is not None and i < len(scores):
                t["score"] = scores[i]
        warnings = []
        if len(student) != len(correct):
            warnings.append(f"{len(student)} student spans in the response but {len(correct)} verified turns "
                            "(a turn may have been truncated or empty)")
        disagree = [i + 1 for i, r in enumerate(results) if i < len(correct) and int(r["correct"]) != correct[i]]
        if disagree:
            warnings.append(f"turn(s) {disagree}: the loop's verdict differs from the task's verdict on the decoded "
                            "reply (its recorded answer may not be the one the loop read)")
        fb_turns = tr["num_feedback_spans"]
        for t in tr["turns"]:
            t.pop("start", None)
        extra = {k: v for k, v in ef.items() if k not in (schema.FEEDBACK_MASK_KEY,)}
        return {
            "prompt": tr["prompt"], "turns": tr["turns"], "turn_correct": correct, "turn_scores": scores,
            "solved_at_turn": solved, "correct": bool(solved), "num_student_turns": n_student,
            "feedback_turns": fb_turns,
            "leak_count": int(json_safe(ef.get(schema.EF_LEAK_COUNT, 0)) or 0),
            "leaked_turns": int(json_safe(ef.get(schema.EF_LEAKED_TURNS, 0)) or 0),
            "leaked": bool(ef.get(schema.EF_LEAK_COUNT) or ef.get(schema.EF_LEAKED_TURNS)),
            "truncated": int(json_safe(ef.get(schema.EF_TRUNCATED, 0)) or 0),
            "response_tokens": tr["response_tokens"],
            "generated_tokens": sum(t["tokens"] for t in student),
            "elapsed_s": round(elapsed, 3), "verified_by": verified_by, "warnings": warnings,
            "extra_fields": json_safe(extra),
        }

    async def _verify(self, text: str, row: dict[str, Any]) -> dict[str, Any]:
        from rl2f_plugin.tasks import get_task

        task = get_task(_task_name(row))
        gt = (row.get("reward_model") or {}).get("ground_truth")
        gt = json_safe(gt)
        loop = asyncio.get_running_loop()
        try:
            res = await asyncio.wait_for(loop.run_in_executor(None, task.verify, text, gt, row.get("extra_info") or {}),
                                         timeout=self.s.verify_timeout)
        except asyncio.TimeoutError:
            return {"correct": False, "score": 0.0, "reason": f"verifier timeout ({self.s.verify_timeout:g}s)",
                    "extracted": None}
        return {"correct": res.correct, "score": float(res.score), "reason": res.reason,
                "extracted": None if res.extracted is None else str(res.extracted)}


def _independent_settings(settings: EvalSettings, cfg, k: int) -> EvalSettings:
    """`settings` for independent sampling: a temperature > 0 (default the training rollout's) and at least K
    samples per problem (pass@K needs K)."""
    from dataclasses import replace

    temperature = settings.temperature
    if temperature is None:
        temperature = float(cfg.actor_rollout_ref.rollout.temperature)
    if temperature <= 0:
        raise ValueError("independent sampling needs a temperature > 0 (greedy samples of a problem are all the same)")
    if settings.n_samples < k:
        raise ValueError(f"independent sampling: {settings.n_samples} sample(s) per problem cannot give pass@{k} "
                         f"(n_samples must be >= max_turns)")
    if settings.agent_loop not in (None, DIDACTIC_LOOP):
        raise ValueError(f"independent sampling runs the {DIDACTIC_LOOP} loop with one turn, not {settings.agent_loop!r}")
    return replace(settings, temperature=temperature)


def _task_name(row: dict[str, Any]) -> str | None:
    from rl2f_plugin.data_validation import task_name_of

    return task_name_of(row)


# ------------------------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------------------------
async def run_eval_async(settings: EvalSettings, cfg, backend: Any, tokenizer: Any, *,
                         hf_model_type: str | None = None,
                         on_record: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Evaluate; returns ``{"done": n, "skipped": n, "errors": n, "seconds": s, "backend": stats}``."""
    import rl2f_plugin  # noqa: F401  (registers rl2f's agent loops, tasks, teachers)
    from verl.experimental.agent_loop.agent_loop import _agent_loop_registry
    from verl.utils.rollout_trace import RolloutTraceConfig

    from omegaconf import OmegaConf, open_dict

    with open_dict(cfg):
        if settings.max_turns is not None:
            cfg.rl2f.max_turns = int(settings.max_turns)
        if settings.teacher is not None and settings.teacher.lower() not in ("none", "autodidact"):
            cfg.rl2f.teacher.name = settings.teacher
    report_turns = int(cfg.rl2f.max_turns)
    if settings.independent:
        settings = _independent_settings(settings, cfg, report_turns)
        with open_dict(cfg):
            cfg.rl2f.max_turns = 1
    agent_loop = settings.agent_loop or default_agent_loop(settings.teacher)
    _register_config_loops(cfg)
    if agent_loop not in _agent_loop_registry:
        from rl2f_plugin._registration import REGISTRATION_ERRORS

        hint = f"; rl2f registration errors: {REGISTRATION_ERRORS}" if REGISTRATION_ERRORS else ""
        raise KeyError(f"agent loop {agent_loop!r} is not registered (known: {sorted(_agent_loop_registry)}){hint}")
    RolloutTraceConfig.init(cfg.trainer.project_name, cfg.trainer.experiment_name, None, False, None)

    rows = load_rows(settings.data, tokenizer, cfg, validate=settings.validate_data, limit=settings.limit)
    header = {
        "record": "run", "name": settings.name or os.path.splitext(os.path.basename(settings.out))[0],
        "data": os.path.abspath(settings.data), "data_sha": file_digest(settings.data),
        "agent_loop": agent_loop,
        "teacher": None if agent_loop == AUTODIDACT_LOOP or settings.independent else cfg.rl2f.teacher.name,
        "max_turns": report_turns, "n_samples": int(settings.n_samples),
        "mode": INDEPENDENT if settings.independent else "interaction",
        "student": settings.student_label,
        "sampling_params": {**_sampling_params(cfg, settings.temperature),
                            **({"max_tokens": settings.max_new_tokens} if settings.max_new_tokens else {})},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **settings.extra_header,
    }
    header["rl2f"] = OmegaConf.to_container(cfg.rl2f, resolve=True)
    finished = _prepare_output(settings.out, header)
    harness = _Harness(settings, cfg, backend, tokenizer, agent_loop, hf_model_type)
    todo = [(i, s, row) for i, row in enumerate(rows) for s in range(settings.n_samples) if f"{i}:{s}" not in finished]
    skipped = len(rows) * settings.n_samples - len(todo)

    sem = asyncio.Semaphore(max(1, settings.concurrency))
    counts = {"done": 0, "errors": 0}
    bar = None
    if settings.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=f"eval {header['name']}", unit="problem", dynamic_ncols=True)
    t0 = time.perf_counter()
    with open(settings.out, "a", encoding="utf-8") as f:
        async def one(i: int, s: int, row: dict[str, Any]) -> None:
            async with sem:
                rec = await harness.run_problem(i, s, row)
            f.write(json.dumps(json_safe(rec), ensure_ascii=False) + "\n")
            f.flush()
            counts["done"] += 1
            counts["errors"] += rec["status"] != "ok"
            if on_record is not None:
                on_record(rec)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(errors=counts["errors"])

        await asyncio.gather(*(one(i, s, row) for i, s, row in todo))
    if bar is not None:
        bar.close()
    stats = getattr(backend, "stats", None)
    return {"done": counts["done"], "skipped": skipped, "errors": counts["errors"],
            "seconds": time.perf_counter() - t0, "backend": stats.as_dict() if stats is not None else None}


def run_eval(settings: EvalSettings, cfg, backend: Any, tokenizer: Any, **kw: Any) -> dict[str, Any]:
    async def main():
        try:
            return await run_eval_async(settings, cfg, backend, tokenizer, **kw)
        finally:
            aclose = getattr(backend, "aclose", None)
            if aclose is not None:
                await aclose()

    return asyncio.run(main())
