"""The CPU default dataset, in one place: what `make demo`, the CPU comparison, the teacher measurement and the
CPU end-to-end tests train and evaluate on.

    python examples/data_preprocess/cpu_default_data.py --out-dir ~/.cache/rl2f/data/cpu_default

reasoning-gym ``basic_arithmetic`` with one-digit operands and two terms ("Calculate -7 * 7."; 358 distinct
questions), seed 0, 128 train rows and 200 held-out test rows that share no question with train, scored with
``--answer-extraction flexible`` (the reply's last number when it has no ``<answer>`` tag; the reward stays 0/1).
Why this default (measured, README "The CPU default"): the embedded SmolLM2-135M-Instruct never writes the tags,
so under the strict rule every reward is 0 and GRPO has nothing to learn from; read flexibly it is right on
~25-33% of held-out problems greedy and ~10-14% sampled at T=1, so groups of 4 samples often disagree.

Any option of ``reasoning_gym_data.py`` given here overrides the default (e.g. ``--train-size 8 --test-size 2``).
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reasoning_gym_data  # noqa: E402

GENERATOR = "basic_arithmetic"
GEN_CONFIG = {GENERATOR: {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}}
DEFAULT_ARGS = ["--generators", GENERATOR, "--gen-config", json.dumps(GEN_CONFIG), "--train-size", "128",
                "--test-size", "200", "--seed", "0", "--answer-extraction", "flexible"]


def main(argv: list[str] | None = None) -> dict[str, str]:
    # argparse keeps the last occurrence of an option: the caller's options override the defaults
    return reasoning_gym_data.main(DEFAULT_ARGS + list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
