"""Verifier throughput: maths through rl2f's verifier vs math-verify called directly, and the code sandbox's
per-call overhead vs a plain ``python -c`` subprocess.

    python benchmarks/bench_rewards.py            # defaults: 300 maths pairs, 20 code runs, best of 3 rounds
    python benchmarks/bench_rewards.py --math-n 1000 --code-n 100
    python benchmarks/bench_rewards.py --only code

Maths: the same answer pairs (all textually different, so none takes the no-hop fast path) are checked
  (a) directly: ``math_verify.verify(parse(gold), parse(pred))`` in this process's main thread;
  (b) through ``reward_fns.math_verifier.check_math_answer`` from one caller thread (one job at a time over
      the worker pipe) and from as many threads as the pool has workers.
Code: the same tiny function + 3 asserts run (variants interleaved run by run, median time)
  (a) plainly: ``subprocess.run([python, "-c", code + tests])``;
  (b) in the sandbox (``run_code``: bubblewrap + judge process + Landlocked candidate process, the calls
      crossing between them), with the kernel isolation and with isolation opted out
      (``RL2F_SANDBOX_ISOLATION=none``: the same processes without bwrap/Landlock, to show what isolation costs);
  then plain and the isolated sandbox from 2 caller threads (runs/s).
Figures are wall-clock on whatever machine runs this; compare ratios, not absolute numbers.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import random
import statistics
import subprocess
import sys
import time
from fractions import Fraction


def math_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    pairs = []
    while len(pairs) < n:
        a, b = rng.randint(1, 999_999), rng.randint(2, 999_999)  # wide: answers (almost) never repeat
        f = Fraction(a, b)
        kind = rng.randrange(6)
        if kind == 0:
            pairs.append((f"\\frac{{{f.numerator}}}{{{f.denominator}}}", f"{f.numerator}/{f.denominator}"))
        elif kind == 1:
            pairs.append((str(a * 1000), f"{a * 1000:,}"))
        elif kind == 2:
            pairs.append((f"{a}\\sqrt{{2}}", f"\\sqrt{{{2 * a * a}}}"))
        elif kind == 3:
            pairs.append((f"x^2+{2 * a}x+{a * a}", f"(x+{a})^2"))
        elif kind == 4:
            pairs.append((f"\\{{{a},{b}\\}}", f"\\{{{b},{a + 1}\\}}"))  # not equal
        else:
            pairs.append((f"{a}.5", f"\\frac{{{2 * a + 1}}}{{2}}"))
    return pairs


def bench_math(n: int, rounds: int) -> None:
    from math_verify import parse, verify

    from reward_fns.math_verifier import check_math_answer, normalize_math_text
    from reward_fns.worker_pool import get_pool

    pairs = math_pairs(n)
    assert all(normalize_math_text(g) != normalize_math_text(p) for g, p in pairs)  # no fast path taken
    # warm both paths (imports, worker start-up)
    for g, p in pairs[:5]:
        verify(parse(f"${g}$"), parse(f"${p}$"))
    pool = get_pool()
    with cf.ThreadPoolExecutor(pool.size) as ex:
        list(ex.map(lambda gp: check_math_answer(gp[1], gp[0]), pairs[:2 * pool.size]))

    def run_direct(pairs):
        return [bool(verify(parse(f"${g}$"), parse(f"${p}$"))) for g, p in pairs]

    def run_seq(pairs):
        return [check_math_answer(p, g).correct for g, p in pairs]

    def run_par(pairs):
        with cf.ThreadPoolExecutor(pool.size) as ex:
            return [v.correct for v in ex.map(lambda gp: check_math_answer(gp[1], gp[0]), pairs)]

    # Interleaved rounds, best time of each: robust to other load on the machine. Every rl2f measurement
    # gets answers its workers have never seen (their parse cache would otherwise help: it does in GRPO,
    # where a group re-checks one gold answer 8 times), and math-verify runs on exactly the same answers.
    times: dict[str, list[float]] = {"direct_a": [], "seq": [], "direct_b": [], "par": []}
    for r in range(rounds):
        set_a, set_b = math_pairs(n, seed=1000 + r), math_pairs(n, seed=5000 + r)
        for key, fn, pairs in (("direct_a", run_direct, set_a), ("seq", run_seq, set_a),
                               ("direct_b", run_direct, set_b), ("par", run_par, set_b)):
            t0 = time.perf_counter()
            out = fn(pairs)
            times[key].append(time.perf_counter() - t0)
            if key == "direct_a":
                direct = out
            elif key == "seq":
                ours_seq = out
    t_direct, t_seq = min(times["direct_a"]), min(times["seq"])
    t_direct_b, t_par = min(times["direct_b"]), min(times["par"])

    agree = sum(a == b for a, b in zip(direct, ours_seq)) / n
    print(f"maths: {n} answer pairs ({sum(direct)} equivalent per math-verify), pool of {pool.size} workers, "
          f"{os.cpu_count()} cores, best of {rounds} interleaved rounds, load average {os.getloadavg()[0]:.1f}")
    print(f"  math-verify direct (main thread)     : {n / t_direct:8.1f} verifications/s")
    print(f"  rl2f verifier, 1 caller thread       : {n / t_seq:8.1f} verifications/s  "
          f"ratio vs direct {t_direct / t_seq:5.2f}x  (per-call overhead {(t_seq - t_direct) / n * 1e3:+.2f} ms)")
    print(f"  rl2f verifier, {pool.size} caller threads      : {n / t_par:8.1f} verifications/s  "
          f"ratio vs direct {t_direct_b / t_par:5.2f}x")
    print(f"  verdict agreement with math-verify   : {agree:.1%} (rl2f adds sympy/percent/unit fallbacks)")


CODE = "def add(a, b):\n    return a + b\n"
TESTS = "assert add(1, 2) == 3\nassert add(2, 2) == 4\nassert add(-1, 1) == 0\n"


def bench_code(n: int, rounds: int) -> None:
    from reward_fns import sandbox_isolation
    from reward_fns.code_sandbox import run_code

    gt = {"tests": TESTS, "entry_point": "add"}
    iso = sandbox_isolation.isolation()  # raises SandboxUnavailable where the kernel cannot isolate
    run_code(CODE, gt)  # warm (probe, page cache)
    subprocess.run([sys.executable, "-c", CODE + TESTS], check=True)

    def plain():
        subprocess.run([sys.executable, "-c", CODE + TESTS], check=True, capture_output=True)

    def plain_isolated_mode():  # the interpreter without site (what the sandbox itself starts)
        subprocess.run([iso.python, "-I", "-S", "-c", CODE + TESTS], check=True, capture_output=True)

    # the probe result is cached per setting: swap the cached objects instead of re-probing in the timed loop
    cached = {True: iso, False: None}

    def variant(isolated):
        def run():
            sandbox_isolation.isolation = _fixed(cached[isolated])
            d = run_code(CODE, gt)
            assert d["status"] == "passed", d
        return run

    modes = [("kernel isolation (bwrap+Landlock)", True), ("isolation opted out", False)]
    # Interleaved per run (plain, sandbox, sandbox, plain, ...) and the median kept: other load on the machine
    # hits every variant alike.
    times: dict[str, list[float]] = {}
    original = sandbox_isolation.isolation
    try:
        for _ in range(rounds * n):
            for label, fn in [("plain", plain), ("plain -I -S", plain_isolated_mode)] + [
                    (lbl, variant(isolated)) for lbl, isolated in modes]:
                t0 = time.perf_counter()
                fn()
                times.setdefault(label, []).append(time.perf_counter() - t0)
        t_plain = statistics.median(times.pop("plain"))
        t_bare = statistics.median(times.pop("plain -I -S"))
        results = {label: statistics.median(ts) for label, ts in times.items()}
        print(f"code: {rounds * n} runs of a 3-assert function test per variant, interleaved, median, "
              f"load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} cores, sandbox python {iso.python}")
        print(f"  plain `python -c` subprocess                 : {1 / t_plain:8.1f} runs/s  ({t_plain * 1e3:6.1f} ms per run)")
        print(f"  plain `{os.path.basename(iso.python)} -I -S -c` (no site)        : {1 / t_bare:8.1f} runs/s  "
              f"({t_bare * 1e3:6.1f} ms per run)")
        for label, t in results.items():
            print(f"  sandbox, {label:<35s}: {1 / t:8.1f} runs/s  ({t * 1e3:6.1f} ms per run, "
                  f"{t / t_plain:4.2f}x plain, {t / t_bare:4.2f}x plain without site)")
        # throughput with 2 callers (the sandbox's slots allow one run per core), plain alike
        sandbox_isolation.isolation = _fixed(iso)
        for label, fn in (("plain `python -c`", plain), ("sandbox, kernel isolation", lambda: run_code(CODE, gt))):
            t0 = time.perf_counter()
            with cf.ThreadPoolExecutor(2) as ex:
                list(ex.map(lambda _: fn(), range(rounds * n)))
            t_par = time.perf_counter() - t0
            print(f"  {label + ', 2 caller threads':<45s}: {rounds * n / t_par:8.1f} runs/s  "
                  f"({rounds * n * 3 / t_par:.1f} asserts/s)")
    finally:
        sandbox_isolation.isolation = original


def _fixed(value):
    """A stand-in for `sandbox_isolation.isolation` returning `value` (the benchmark switches settings)."""
    def isolation():
        return value
    return isolation


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--math-n", type=int, default=300)
    ap.add_argument("--code-n", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved repetitions; the best time of each is kept")
    ap.add_argument("--only", choices=("math", "code"), help="run one of the two benchmarks")
    args = ap.parse_args()
    if args.only != "code":
        bench_math(args.math_n, args.rounds)
    if args.only != "math":
        bench_code(args.code_n, args.rounds)


if __name__ == "__main__":
    main()
