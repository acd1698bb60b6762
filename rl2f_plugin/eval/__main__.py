"""``python -m rl2f_plugin.eval``: multi-turn evaluation of a student (local HF checkpoint or OpenAI-compatible
endpoint) with a teacher, or without one (autodidact), on an rl2f parquet split; or comparison of result files.

Evaluate (writes ``OUT`` (JSONL transcripts), ``OUT.md`` (summary table) and ``OUT.png`` (plot))::

    python -m rl2f_plugin.eval --data test.parquet --out runs/base.jsonl --student smollm2 --max-turns 4
    python -m rl2f_plugin.eval --data test.parquet --out runs/ckpt.jsonl --student hf:/ckpts/step_50/hf \\
        --teacher self --recipe recipes/rl2f_grpo_cpu.yaml
    python -m rl2f_plugin.eval --data test.parquet --out runs/api.jsonl \\
        --student openai:http://127.0.0.1:8000 --model Qwen/Qwen2.5-7B-Instruct --tokenizer /models/qwen7b \\
        --teacher none --concurrency 32 --timeout 120 --retries 3

Controls (the same model, the same K): the content-free teacher ("Your answer is incorrect. Try again."), and K
independent single-turn samples per problem (pass@k; no feedback, the same per-answer token budget)::

    python -m rl2f_plugin.eval --data test.parquet --out runs/cf.jsonl --student smollm2 --teacher content_free --max-turns 3
    python -m rl2f_plugin.eval --data test.parquet --out runs/indep.jsonl --student smollm2 --independent --max-turns 3

Compare runs (one table and one plot; answer changes after feedback; paired differences)::

    python -m rl2f_plugin.eval --compare runs/base.jsonl runs/rlvr.jsonl runs/rl2f.jsonl \\
        --labels base RLVR RL2F --table runs/compare.md --plot runs/compare.png
    python -m rl2f_plugin.eval --compare runs/base.jsonl runs/cf.jsonl runs/indep.jsonl --diff 1:0 2:0

Re-running the same command resumes: finished problems are skipped, errored ones retried.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

logger = logging.getLogger("rl2f_plugin.eval")


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _rl2f_overrides(items: list[str]) -> dict[str, Any]:
    """``a.b=1`` strings into a nested dict (values parsed as JSON when possible)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--rl2f expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = _parse_value(value)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rl2f_plugin.eval", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    g = p.add_argument_group("evaluation")
    g.add_argument("--data", help="parquet split (verl RL format)")
    g.add_argument("--out", help="JSONL transcript file (resumable)")
    g.add_argument("--name", help="run label in tables/plots (default: OUT's stem)")
    g.add_argument("--student", help="smollm2 | hf:PATH | PATH (HF folder) | openai:BASE_URL")
    g.add_argument("--model", help="served model name (openai student)")
    g.add_argument("--tokenizer", help="tokenizer folder (openai student; default --model)")
    g.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the endpoint's key")
    g.add_argument("--prompt-format", choices=["token_ids", "text"], default="token_ids",
                   help="openai student: send token ids (vLLM/SGLang) or decoded text")
    g.add_argument("--teacher", help="self | template | content_free | openai | execution | none (autodidact); default: recipe's")
    g.add_argument("--agent-loop", help="agent loop name (default rl2f_didactic, or rl2f_autodidact for --teacher none)")
    g.add_argument("--max-turns", type=int, help="K student turns (default: the recipe's rl2f.max_turns)")
    g.add_argument("--recipe", help="recipe YAML to take the rl2f:/rollout settings from (default verl's ppo_trainer)")
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="Hydra override of the trainer config")
    g.add_argument("--rl2f", action="append", default=[], metavar="KEY=VALUE", help="override in the rl2f: section")
    g.add_argument("--prompt-length", type=int, help="rollout.prompt_length")
    g.add_argument("--response-length", type=int, help="rollout.response_length (whole multi-turn response)")
    g.add_argument("--temperature", type=float, help="student temperature (default: rollout.val_kwargs, greedy)")
    g.add_argument("--limit", type=int, help="only the first N rows")
    g.add_argument("--n-samples", type=int, help="interactions per problem (default 1; with --independent: K)")
    g.add_argument("--independent", action="store_true",
                   help="control: independent single-turn samples (no feedback), --n-samples of them per problem at "
                        "--temperature (default the training rollout's); reported as pass@1..K beside turn 1..K")
    g.add_argument("--concurrency", type=int, default=4, help="problems in flight")
    g.add_argument("--batch-size", type=int, default=8, help="HF student: max requests decoded together (CPU engine rows, or one GPU generate batch)")
    g.add_argument("--max-new-tokens", type=int, help="per-turn cap on student tokens (default: the remaining "
                   "response budget, as in training)")
    g.add_argument("--device", help="HF student device (default cuda if available else cpu)")
    g.add_argument("--threads", type=int, help="HF student on CPU: torch threads (default torch's)")
    g.add_argument("--timeout", type=float, default=120.0, help="seconds per endpoint call")
    g.add_argument("--retries", type=int, default=3, help="retries per failed endpoint call")
    g.add_argument("--problem-timeout", type=float, default=900.0, help="seconds per whole interaction")
    g.add_argument("--problem-retries", type=int, default=1, help="retries of a failed interaction")
    g.add_argument("--no-validate", action="store_true", help="skip rl2f_plugin.data_validation of --data")
    g.add_argument("--no-progress", action="store_true")
    g.add_argument("--seed", type=int, default=0)
    c = p.add_argument_group("report / compare")
    c.add_argument("--compare", nargs="+", metavar="JSONL", help="summarise these result files together")
    c.add_argument("--labels", nargs="+", help="names for --compare files (default: each run's name)")
    c.add_argument("--table", help="write the Markdown table here (default OUT.md / stdout only for --compare)")
    c.add_argument("--plot", help="write the PNG plot here (default OUT.png)")
    c.add_argument("--summary-json", help="write the summaries as JSON here")
    c.add_argument("--diff", nargs="+", metavar="A:B", default=[],
                   help="paired differences B - A between --compare files, by position (0-based); a side may pool "
                        "runs with commas, e.g. 0:1 1,3:2,4 (appended to the table)")
    c.add_argument("--answers-from", metavar="PARQUET",
                   help="transcripts written before answers were recorded: re-extract each reply's answer with its task "
                        "from this data file (the one they were evaluated on; checked by its digest)")
    c.add_argument("--group", action="append", default=[], metavar="NAME=POSITIONS",
                   help="also report the answer changes of these --compare files pooled, e.g. 'RL2F=1,3' (repeatable)")
    c.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the CIs")
    c.add_argument("--title", help="plot title")
    return p


def make_student(args: argparse.Namespace):
    """(backend, tokenizer, hf_model_type, label) for ``--student``."""
    from transformers import AutoConfig, AutoTokenizer

    from .backends import HFBackend, OpenAIBackend

    spec = args.student
    if not spec:
        raise SystemExit("--student is required (smollm2 | hf:PATH | openai:URL)")
    if spec.startswith("openai:"):
        url = spec[len("openai:"):]
        if not args.model:
            raise SystemExit("--student openai:URL needs --model (the served model name)")
        tok_src = args.tokenizer or args.model
        tokenizer = AutoTokenizer.from_pretrained(tok_src)
        try:
            model_type = AutoConfig.from_pretrained(tok_src).model_type
        except Exception:  # noqa: BLE001 - a tokenizer-only folder
            model_type = None
        backend = OpenAIBackend(url, args.model, tokenizer, api_key=os.environ.get(args.api_key_env),
                                prompt_format=args.prompt_format, timeout=args.timeout, retries=args.retries,
                                max_concurrency=max(args.concurrency, 1) * 2, max_new_tokens=args.max_new_tokens or 512)
        return backend, tokenizer, model_type, f"openai:{args.model}@{url}"
    if spec == "smollm2":
        from rl2f_plugin.cpu_model import ensure_smollm2

        path = str(ensure_smollm2())
    else:
        path = spec[len("hf:"):] if spec.startswith("hf:") else spec
        if not os.path.isdir(path):
            raise SystemExit(f"--student {spec}: {path} is not a model folder")
    tokenizer = AutoTokenizer.from_pretrained(path)
    backend = HFBackend(path, tokenizer, device=args.device, max_batch_size=args.batch_size,
                        max_new_tokens=args.max_new_tokens or 512, seed=args.seed,
                        num_threads=args.threads)
    return backend, tokenizer, backend.model.config.model_type, f"hf:{path}"


def _group_name(names: list[str]) -> str:
    return names[0] if len(names) == 1 else "(" + " + ".join(names) + ")"


def _parse_diff(spec: str, n: int) -> tuple[list[int], list[int]]:
    try:
        a, b = spec.split(":")
        sides = [[int(x) for x in side.split(",")] for side in (a, b)]
    except ValueError:
        raise SystemExit(f"--diff {spec!r}: expected A:B with file positions, e.g. 0:1 or 1,3:2,4") from None
    if any(not 0 <= i < n for side in sides for i in side):
        raise SystemExit(f"--diff {spec!r}: positions must be in 0..{n - 1} (the --compare files)")
    return sides[0], sides[1]


def _parse_group(spec: str, n: int) -> tuple[str, list[int]]:
    name, sep, positions = spec.rpartition("=")
    try:
        idx = [int(x) for x in positions.split(",")]
    except ValueError:
        idx = []
    if not sep or not name or not idx:
        raise SystemExit(f"--group {spec!r}: expected NAME=POSITIONS, e.g. 'RL2F=1,3,5'")
    if any(not 0 <= i < n for i in idx):
        raise SystemExit(f"--group {spec!r}: positions must be in 0..{n - 1} (the --compare files)")
    return name, idx


def report(paths: list[str], *, labels: list[str] | None, table: str | None, plot: str | None,
           summary_json: str | None, n_boot: int, title: str | None = None, max_turns: int | None = None,
           diffs: list[str] | None = None, groups: list[str] | None = None, answers_from: str | None = None) -> str:
    """The table of every run (cumulative accuracy by turn, or pass@k for independent samples), the answer changes
    after feedback (per run, then per `groups`: pooled runs), and the paired differences `diffs`."""
    from .controls import answer_changes, format_answer_changes
    from .report import (format_paired_table, format_table, is_independent, load_records, paired_difference,
                         plot_cumulative, summarize_file)

    if labels and len(labels) != len(paths):
        raise SystemExit(f"--labels has {len(labels)} names for {len(paths)} files")
    loaded = [load_records(p) for p in paths]
    if answers_from:
        from .controls import fill_answers
        from .runner import file_digest

        digest = file_digest(answers_from)
        for p, (header, _) in zip(paths, loaded):
            if header.get("data_sha") != digest:
                raise SystemExit(f"--answers-from {answers_from} (digest {digest}) is not the data {p} was evaluated on "
                                 f"(digest {header.get('data_sha')})")
        loaded = [(header, fill_answers(records, answers_from)) for header, records in loaded]
    independent = [is_independent(header) for header, _ in loaded]
    multi_turn_k = [int(h.get("max_turns") or 1) for (h, _), ind in zip(loaded, independent) if not ind]
    # independent samples are compared at the multi-turn runs' K (pass@K beside turn K)
    k_independent = max_turns or (max(multi_turn_k) if multi_turn_k else None)
    summaries = [summarize_file(p, name=(labels[i] if labels else None), n_boot=n_boot,
                                max_turns=k_independent if independent[i] else max_turns)
                 for i, p in enumerate(paths)]
    k = max_turns or max(s.max_turns for s in summaries)
    text = format_table(summaries)
    changes = [answer_changes([loaded[i][1]], name=s.name, max_turns=s.max_turns, n_boot=n_boot)
               for i, s in enumerate(summaries) if not independent[i] and s.max_turns > 1]
    for spec in groups or []:
        name, idx = _parse_group(spec, len(paths))
        changes.append(answer_changes([loaded[i][1] for i in idx], name=name, max_turns=k, n_boot=n_boot))
    if changes:
        text += "\n\n" + format_answer_changes(changes)
    paired = []
    if diffs:
        for spec in diffs:
            a, b = _parse_diff(spec, len(paths))
            paired.append(paired_difference([loaded[i][1] for i in a], [loaded[i][1] for i in b], max_turns=k,
                                            n_boot=n_boot, independent_a=[independent[i] for i in a],
                                            independent_b=[independent[i] for i in b],
                                            name_a=_group_name([summaries[i].name for i in a]),
                                            name_b=_group_name([summaries[i].name for i in b])))
        text += "\n\n" + format_paired_table(paired)
    if table:
        os.makedirs(os.path.dirname(os.path.abspath(table)), exist_ok=True)
        with open(table, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    if plot:
        plot_cumulative(summaries, plot, title=title)
    if summary_json:
        with open(summary_json, "w", encoding="utf-8") as f:
            json.dump([s.as_dict() for s in summaries] + [d.as_dict() for d in paired] + [c.as_dict() for c in changes],
                      f, indent=2)
    return text


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=os.environ.get("RL2F_LOG_LEVEL", "WARNING"))
    if args.compare:
        print(report(args.compare, labels=args.labels, table=args.table, plot=args.plot,
                     summary_json=args.summary_json, n_boot=args.bootstrap, title=args.title, diffs=args.diff,
                     groups=args.group, answers_from=args.answers_from))
        return 0
    if not args.data or not args.out:
        raise SystemExit("--data and --out are required (or use --compare FILES)")

    from .runner import EvalSettings, build_trainer_config, run_eval

    overrides = list(args.set)
    if args.prompt_length:
        overrides.append(f"actor_rollout_ref.rollout.prompt_length={args.prompt_length}")
    if args.response_length:
        overrides.append(f"actor_rollout_ref.rollout.response_length={args.response_length}")
    cfg = build_trainer_config(args.recipe, overrides, _rl2f_overrides(args.rl2f))
    n_samples = args.n_samples or ((args.max_turns or int(cfg.rl2f.max_turns)) if args.independent else 1)
    backend, tokenizer, model_type, label = make_student(args)
    settings = EvalSettings(
        data=args.data, out=args.out, name=args.name, agent_loop=args.agent_loop, teacher=args.teacher,
        max_turns=args.max_turns, independent=args.independent, limit=args.limit, n_samples=n_samples,
        concurrency=args.concurrency,
        problem_timeout=args.problem_timeout, problem_retries=args.problem_retries,
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, progress=not args.no_progress, validate_data=not args.no_validate, student_label=label, seed=args.seed,
    )
    try:
        result = run_eval(settings, cfg, backend, tokenizer, hf_model_type=model_type)
    finally:
        backend.close()
    stem = os.path.splitext(args.out)[0]
    text = report([args.out], labels=[args.name] if args.name else None, table=args.table or stem + ".md",
                  plot=args.plot or stem + ".png", summary_json=args.summary_json, n_boot=args.bootstrap,
                  title=args.title)
    print(text)
    b = result.get("backend") or {}
    tps = b.get("generated_tokens", 0) / result["seconds"] if result["seconds"] else 0.0
    print(f"\n{result['done']} problem(s) run, {result['skipped']} skipped (already done), {result['errors']} error(s); "
          f"{result['seconds']:.1f}s, {b.get('generated_tokens', 0)} generated tokens ({tps:.1f} tok/s)", file=sys.stderr)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
