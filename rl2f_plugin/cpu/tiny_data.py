"""A tiny offline reasoning-gym dataset in verl's RL parquet layout, for CPU smoke runs and tests.

The project's real converter is ``examples/data_preprocess/reasoning_gym_data.py``; this is the minimal fallback
the CPU demo/tests use when that script is unavailable. Columns: ``data_source``, ``prompt`` (chat messages),
``ability``, ``reward_model`` {``style``, ``ground_truth``}, ``extra_info`` {``task``, ``index``, ``split``,
``question``}. Tasks are named ``reasoning_gym:<generator>``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

INSTRUCTION = "Answer the question. Put the final answer alone on the last line as 'Answer: <answer>'."


def rows(generator: str, size: int, seed: int, split: str, config: dict | None = None) -> list[dict]:
    import reasoning_gym

    ds = reasoning_gym.create_dataset(generator, size=size, seed=seed, **(config or {}))
    task = f"reasoning_gym:{generator}"
    out = []
    for i in range(size):
        entry = ds[i]
        out.append({
            "data_source": task,
            "prompt": [{"role": "user", "content": f"{entry['question']}\n\n{INSTRUCTION}"}],
            "ability": "reasoning",
            "reward_model": {"style": "rule", "ground_truth": str(entry["answer"])},
            "extra_info": {"task": task, "index": i, "split": split, "question": entry["question"]},
        })
    return out


def write_tiny_dataset(out_dir: str | os.PathLike, generator: str = "basic_arithmetic", n_train: int = 16,
                       n_val: int = 4, seed: int = 0, config: dict | None = None) -> tuple[Path, Path]:
    """Write ``train.parquet`` / ``test.parquet`` under `out_dir` (idempotent) and return their paths."""
    import pandas as pd

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train, test = out / "train.parquet", out / "test.parquet"
    if not (train.is_file() and test.is_file()):
        config = config if config is not None else ({"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}
                                                    if generator == "basic_arithmetic" else {})
        pd.DataFrame(rows(generator, n_train, seed, "train", config)).to_parquet(train)
        pd.DataFrame(rows(generator, n_val, seed + 1, "test", config)).to_parquet(test)
    return train, test


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", required=True)
    p.add_argument("--generator", default="basic_arithmetic")
    p.add_argument("--train-size", type=int, default=16)
    p.add_argument("--test-size", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    for path in write_tiny_dataset(a.out_dir, a.generator, a.train_size, a.test_size, a.seed):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
