"""reasoning-gym generators -> verl RL parquet for rl2f (offline: the generators ship inside the package).

    python examples/data_preprocess/reasoning_gym_data.py --generators basic_arithmetic,chain_sum \
        --train-size 64 --test-size 16 --seed 0 --out-dir ~/data/rl2f/rg

writes ``OUT_DIR/train.parquet`` and ``OUT_DIR/test.parquet``. Each row's task is ``reasoning_gym:<generator>``
(verified by reasoning-gym's own ``score_answer``). ``--train-size`` / ``--test-size`` are totals, split as
evenly as possible over the generators. Train and test come from one reasoning-gym dataset per generator
(indices ``0..n_train-1`` for train, the following ones for test); a test problem whose question also occurs in
train is dropped and replaced by the next index, so the splits never share a question.

``extra_info`` carries what the verifier needs to call ``score_answer`` and what is needed to rebuild the
exact entry:

* ``rg_entry``: the reasoning-gym entry (``question``, ``answer``, ``metadata``) as a JSON string;
* ``rg_dataset``: the generator name; ``rg_config``: its config as a JSON string (seed and size included);
  ``rg_index``: the entry's index, so ``reasoning_gym.create_dataset(rg_dataset, **json.loads(rg_config))
  [rg_index]`` gives back the entry with its metadata objects intact;
* ``solution``: a privileged reference solution when the generator's metadata has one (teacher only).

Per-generator options: ``--gen-config '{"basic_arithmetic": {"max_terms": 4}}'``.

``--answer-extraction flexible`` writes ``extra_info["answer_extraction"] = "flexible"`` on every row: a reply
without an ``<answer>`` tag (or ``\\boxed{}`` / "Answer:" line) is read for its last number, as verl's GSM8K
scorer does in its flexible mode (see `reward_fns.reasoning_gym_verifier`). The CPU default uses it: the
embedded 135M model answers right more often than it writes the tags.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rl2f_data_writer import make_row, shuffle_and_reindex, write_splits  # noqa: E402

DATA_SOURCE_PREFIX = "reasoning_gym"
TASK_PREFIX = "reasoning_gym"
#: metadata keys that hold a worked solution (privileged: only the teacher sees them)
SOLUTION_METADATA_KEYS = ("solution", "reasoning", "explanation", "steps", "cot")


def _json(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, default=_json_default)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if hasattr(obj, "tolist"):  # numpy
        return obj.tolist()
    return str(obj)


def generator_category(name: str) -> str:
    """reasoning-gym's category of a generator (its sub-package, e.g. ``arithmetic``)."""
    from reasoning_gym.factory import DATASETS

    cls = DATASETS[name][0]
    parts = cls.__module__.split(".")
    return parts[1] if len(parts) > 2 else "reasoning"


def convert_generator(name: str, n_train: int, n_test: int, seed: int, config: dict | None = None,
                      answer_extraction: str = "strict") -> tuple[list[dict], list[dict]]:
    """(train rows, test rows) for one generator; test questions never repeat train questions."""
    import reasoning_gym
    from reasoning_gym.factory import DATASETS

    if name not in DATASETS:
        raise SystemExit(f"unknown reasoning-gym generator {name!r}; known: {', '.join(sorted(DATASETS))}")
    # Generate with head-room for the test de-duplication; entries depend only on (seed, index), not size.
    size = n_train + 2 * n_test + 16
    ds = reasoning_gym.create_dataset(name, size=size, seed=seed, **(config or {}))
    rg_config = _json(dataclasses.asdict(ds.config))
    category = generator_category(name)
    task = f"{TASK_PREFIX}:{name}"

    def row(idx: int, split: str) -> dict:
        entry = ds[idx]
        if entry.get("answer") is None:
            raise SystemExit(f"reasoning-gym generator {name!r} entry {idx} has no reference answer "
                             "(it is scored by its own checker only); rl2f needs a ground truth per row")
        metadata = entry.get("metadata") or {}
        privileged = {}
        for key in SOLUTION_METADATA_KEYS:
            if isinstance(metadata.get(key), str) and metadata[key].strip():
                privileged["solution"] = metadata[key]
                break
        extra = {
            "rg_entry": _json({"question": entry["question"], "answer": entry["answer"], "metadata": metadata}),
            "rg_dataset": name,
            "rg_config": rg_config,
            "rg_index": idx,
        }
        if answer_extraction != "strict":
            extra["answer_extraction"] = answer_extraction
        return make_row(data_source=f"{DATA_SOURCE_PREFIX}/{name}", task=task, problem=entry["question"],
                        ground_truth=str(entry["answer"]), ability=category, split=split, index=idx,
                        privileged=privileged, extra=extra)

    train = [row(i, "train") for i in range(n_train)]
    seen = {r["extra_info"]["problem"] for r in train}
    test: list[dict] = []
    idx = n_train
    while len(test) < n_test and idx < size:
        r = row(idx, "test")
        idx += 1
        if r["extra_info"]["problem"] in seen:
            continue
        seen.add(r["extra_info"]["problem"])
        test.append(r)
    if len(test) < n_test:
        print(f"warning: {name}: only {len(test)} test problems distinct from train (asked {n_test})",
              file=sys.stderr)
    return train, test


def split_evenly(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def build(generators: list[str], train_size: int, test_size: int, seed: int,
          gen_config: dict[str, dict] | None = None, answer_extraction: str = "strict") -> dict[str, list[dict]]:
    if not generators:
        raise SystemExit("--generators: give at least one reasoning-gym generator")
    gen_config = gen_config or {}
    unknown = set(gen_config) - set(generators)
    if unknown:
        raise SystemExit(f"--gen-config names generators not in --generators: {sorted(unknown)}")
    train: list[dict] = []
    test: list[dict] = []
    for name, n_tr, n_te in zip(generators, split_evenly(train_size, len(generators)),
                                split_evenly(test_size, len(generators))):
        tr, te = convert_generator(name, n_tr, n_te, seed, gen_config.get(name), answer_extraction)
        train += tr
        test += te
    return {"train": shuffle_and_reindex(train, seed, "train"), "test": shuffle_and_reindex(test, seed + 1, "test")}


def main(argv: list[str] | None = None) -> dict[str, str]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--generators", required=True, help="comma-separated reasoning-gym generator names")
    p.add_argument("--train-size", type=int, default=1024, help="total train rows (over all generators)")
    p.add_argument("--test-size", type=int, default=128, help="total test rows (over all generators)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gen-config", default="{}", help='JSON: {"generator": {config overrides}}')
    p.add_argument("--answer-extraction", choices=["strict", "flexible"], default="strict",
                   help="strict: <answer> tag / boxed / 'Answer:' line only; flexible: else the reply's last number")
    p.add_argument("--out-dir", required=True)
    args = p.parse_args(argv)
    if args.train_size < 0 or args.test_size < 0:
        raise SystemExit("--train-size/--test-size must be >= 0")
    try:
        gen_config = json.loads(args.gen_config)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"--gen-config is not valid JSON: {exc}") from exc
    generators = [g.strip() for g in args.generators.split(",") if g.strip()]
    splits = build(generators, args.train_size, args.test_size, args.seed, gen_config, args.answer_extraction)
    return write_splits(os.path.expanduser(args.out_dir), {k: v for k, v in splits.items() if v})


if __name__ == "__main__":
    main()
