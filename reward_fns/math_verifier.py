"""Maths answers: math-verify, with a sympy fallback, hard time-bounded in a worker process.

``verify_math(response, gold)`` extracts the student's final answer (last ``\\boxed{}``, else an "Answer:"
line) and checks it against `gold`. ``check_math_answer(pred, gold)`` checks a bare answer (the leak guard
uses it on spans of teacher feedback).

Equivalence, in order (the first that says "equal" wins):
  1. identical after whitespace / ``$`` / ``\\left`` ``\\right`` / trailing-period clean-up, or two plain
     integers compared exactly, or two plain rationals (``-0.375``, ``3/8``, ``\\frac{3}{8}``) that are equal
     exactly or differ by more than 1e-4 relative (far beyond math-verify's 6-digit rounding; closer pairs go on
     to step 2) (in the caller, no process hop: the leak guard checks every number of a feedback this way);
  2. math-verify ``verify(parse(gold), parse(pred))`` (fractions, decimals, LaTeX, sets, intervals, ``1,000``,
     ``x = 3`` vs ``3``, ``\\text{cm}`` units);
  3. the same after our normalisation (``\\text{...}`` and bare trailing unit words stripped, ``\\dfrac``,
     degrees, ``\\!``, thousands separators);
  4. percentages: ``50\\%`` equals ``50`` and ``0.5`` (either side);
  5. sympy: ``simplify(a - b) == 0`` on math-verify's parsed expressions with ``i``/``e`` read as the
     imaginary unit / Euler's number (catches ``e^{i\\pi}`` = -1), then a numeric check (relative 1e-6).

Steps 2-5 run in a `reward_fns.worker_pool` worker: they work from any thread and inside asyncio (call
through ``asyncio.to_thread``), never print into the caller's logs, and come back within
``math_timeout`` seconds (the worker is killed and replaced if it overruns) as score 0, reason "timeout".
Answers longer than ``max_answer_chars`` score 0 unchecked.
"""

from __future__ import annotations

import functools
import re
from fractions import Fraction
from typing import Any

from .common import VerifyResult, limit, trim
from .extraction import answer_line, last_boxed, strip_math_delimiters
from .worker_pool import PoolError, PoolQueueTimeout, PoolTimeout, get_pool

__all__ = ["verify_math", "check_math_answer", "extract_math_answer", "normalize_math_text", "gold_text"]


def extract_math_answer(response: str) -> str | None:
    """Last ``\\boxed{}`` content, else the last "Answer:" line (math delimiters stripped)."""
    ans = last_boxed(response)
    if ans is None:
        ans = answer_line(response)
        if ans is not None:
            inner = last_boxed(ans)
            ans = inner if inner is not None else ans
    if ans is None:
        return None
    ans = strip_math_delimiters(ans)
    return ans or None


_WS = re.compile(r"\s+")
_INT = re.compile(r"[-+]?\d{1,60}")
_RATIONAL = re.compile(r"([-+]?)(?:(\d{1,30}(?:\.\d{1,30})?)(?:/(\d{1,30}))?|\\frac\{(\d{1,30})\}\{(\d{1,30})\})")


def _rational(text: str) -> Fraction | None:
    """The value of a plain rational answer (``-2``, ``0.375``, ``3/8``, ``\\frac{3}{8}``), else None."""
    m = _RATIONAL.fullmatch(text)
    if m is None:
        return None
    sign, num, den, fnum, fden = m.groups()
    num, den = (fnum, fden) if fnum is not None else (num, den or "1")
    if int(den) == 0:
        return None
    value = Fraction(num) / int(den)
    return -value if sign == "-" else value


def normalize_math_text(s: str) -> str:
    """Cheap, meaning-preserving clean-up used for the no-hop fast path."""
    s = strip_math_delimiters(str(s))
    s = s.replace("\\left", "").replace("\\right", "").replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("\\!", "").replace("\\,", "").replace("\\;", "").replace("\\ ", "")
    s = _WS.sub("", s)
    return s.rstrip(".")


def gold_text(gold: Any) -> str:
    """The ground truth as answer text: a one-element list unwrapped, a ``\\boxed{}`` opened, delimiters stripped."""
    if isinstance(gold, (list, tuple)) and len(gold) == 1:
        gold = gold[0]
    text = gold if isinstance(gold, str) else str(gold)
    boxed = last_boxed(text)
    return strip_math_delimiters(boxed if boxed is not None else text)


def check_math_answer(pred: str, gold: Any, timeout: float | None = None) -> VerifyResult:
    """Is the bare answer `pred` equivalent to `gold`? Score 1/0 with the method or the reason."""
    gold_s = gold_text(gold)
    pred_s = strip_math_delimiters(pred or "")
    max_chars = int(limit("max_answer_chars"))
    if not pred_s:
        return VerifyResult(0.0, extracted=pred_s, reason="empty answer")
    if len(pred_s) > max_chars:
        return VerifyResult(0.0, extracted=trim(pred_s, 100),
                            reason=f"answer too long ({len(pred_s)} > {max_chars} chars)")
    if not gold_s:
        return VerifyResult(0.0, extracted=pred_s, reason="empty ground truth")
    norm_pred, norm_gold = normalize_math_text(pred_s), normalize_math_text(gold_s)
    if norm_pred == norm_gold:
        return VerifyResult(1.0, extracted=pred_s, reason="correct (identical)", details={"method": "identical"})
    if _INT.fullmatch(norm_pred) and _INT.fullmatch(norm_gold):  # two plain integers: exact, no process hop
        same = int(norm_pred) == int(norm_gold)
        return VerifyResult(1.0 if same else 0.0, extracted=pred_s,
                            reason="correct (integer)" if same else "not equivalent to the ground truth",
                            details={"method": "integer"})
    pv, gv = _rational(norm_pred), _rational(norm_gold)
    if pv is not None and gv is not None:
        if pv == gv:
            return VerifyResult(1.0, extracted=pred_s, reason="correct (equal rationals)", details={"method": "rational"})
        if abs(pv - gv) > Fraction(1, 10_000) * max(abs(pv), abs(gv)):
            return VerifyResult(0.0, extracted=pred_s, reason="not equivalent to the ground truth",
                                details={"method": "rational"})
    if len(gold_s) > 10 * max_chars:
        return VerifyResult(0.0, extracted=pred_s, reason=f"ground truth too long ({len(gold_s)} chars)")
    t = limit("math_timeout", timeout)
    try:
        res = get_pool().call("math", {"gold": gold_s, "pred": pred_s}, timeout=t)
    except PoolQueueTimeout as exc:  # before PoolTimeout (its base): the check never ran
        return VerifyResult(0.0, extracted=pred_s, reason=f"verifier queue timeout: {exc}",
                            details={"method": "queue_timeout"})
    except PoolTimeout:
        return VerifyResult(0.0, extracted=pred_s, reason=f"timeout: verification took longer than {t:g}s",
                            details={"method": "timeout"})
    except PoolError as exc:
        return VerifyResult(0.0, extracted=pred_s, reason=f"verifier error: {trim(str(exc), 200)}",
                            details={"method": "error"})
    score = float(res.get("score", 0.0))
    method = str(res.get("method", ""))
    reason = f"correct ({method})" if score >= 1.0 else (res.get("reason") or "not equivalent to the ground truth")
    return VerifyResult(score, extracted=pred_s, reason=reason, details={"method": method})


def verify_math(response: str, gold: Any, timeout: float | None = None) -> VerifyResult:
    """Extract the final answer from a reply and check it against `gold`."""
    pred = extract_math_answer(response or "")
    if pred is None:
        return VerifyResult(0.0, reason="no final answer found (expected \\boxed{...} or an 'Answer:' line)",
                            details={"method": "no_answer"})
    return check_math_answer(pred, gold, timeout)


# ------------------------------------------------------------------------------------------------------
# Worker side (runs inside reward_fns._pool_worker; heavy imports are fine here).
# ------------------------------------------------------------------------------------------------------
_TEXT_CMD = re.compile(r"\\(?:text|textbf|mathrm|mbox|textrm|operatorname)\s*\{([^{}]*)\}")
_UNIT_TAIL = re.compile(r"^([-+]?\s*(?:\d[\d,]*)?\.?\d+(?:/\d+)?)\s*(?:[a-zA-Z][a-zA-Z ]*|\^\\circ|°)\s*(?:\^?\d)?$")
_THOUSANDS = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")  # properly grouped only: "1,234,567.5"
_PERCENT = re.compile(r"^(.*?)\s*(?:\\%|%|\\text\{\s*percent\s*\}|percent)$")


def _normalize_for_fallback(s: str) -> str:
    s = normalize_math_text(s)
    s = _TEXT_CMD.sub(lambda m: m.group(1).strip(), s)
    s = s.replace("^\\circ", "").replace("^{\\circ}", "").replace("°", "").replace("\\circ", "")
    s = s.replace("\\$", "").replace("$", "")
    if re.fullmatch(r"[a-zA-Z]\w*=.+", s) and s.count("=") == 1:  # "x=3" -> "3"
        s = s.split("=", 1)[1]
    m = _UNIT_TAIL.match(s)
    if m:
        s = m.group(1)
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    return s.strip()


def _percent_value(s: str) -> str | None:
    m = _PERCENT.match(s)
    return m.group(1).strip() if m and m.group(1).strip() else None


@functools.lru_cache(maxsize=4096)
def _parse(text: str) -> tuple:
    """math-verify's parse of `text` (as ``$text$``, else bare), cached: in GRPO the same gold answer is
    checked once per sample of its group, and identical student answers are common."""
    from math_verify import parse

    out = parse(f"${text}$", parsing_timeout=None)
    if not out:
        out = parse(text, parsing_timeout=None)
    return tuple(out)


def _mv_equal(gold: str, pred: str) -> tuple[bool, list, list]:
    from math_verify import verify

    gp, pp = list(_parse(gold)), list(_parse(pred))
    ok = bool(gp and pp and verify(gp, pp, timeout_seconds=None))
    return ok, gp, pp


def _sympy_equal(a: Any, b: Any) -> bool:
    import sympy

    if not isinstance(a, sympy.Expr) or not isinstance(b, sympy.Expr):
        return False
    consts = {"i": sympy.I, "e": sympy.E}

    def named_consts(expr):  # math-verify's symbols carry assumptions, so match them by name
        return expr.subs({s: consts[s.name] for s in expr.free_symbols if s.name in consts})

    a, b = named_consts(a), named_consts(b)
    if a.free_symbols != b.free_symbols:
        return False
    diff = sympy.simplify(a - b)
    if diff == 0:
        return True
    if not diff.free_symbols:
        try:
            va, vb = complex(a.evalf(30)), complex(b.evalf(30))
        except (TypeError, ValueError):
            return False
        return abs(va - vb) <= 1e-6 * max(1.0, abs(va), abs(vb))
    return False


def check_in_worker(gold: str, pred: str) -> dict:
    """Steps 2-5 of the module docstring; the ``math`` job of `reward_fns._pool_worker`."""
    ok, gp, pp = _mv_equal(gold, pred)
    if ok:
        return {"score": 1.0, "method": "math_verify"}
    ng, np_ = _normalize_for_fallback(gold), _normalize_for_fallback(pred)
    if ng and ng == np_:
        return {"score": 1.0, "method": "normalized"}
    if (ng, np_) != (gold, pred) and ng and np_:
        ok, gp2, pp2 = _mv_equal(ng, np_)
        if ok:
            return {"score": 1.0, "method": "normalized+math_verify"}
        gp, pp = gp or gp2, pp or pp2
    pg, ppc = _percent_value(ng), _percent_value(np_)
    if (pg is None) != (ppc is None):  # exactly one side is a percentage
        pct, other = (pg, np_) if pg is not None else (ppc, ng)
        if _mv_equal(pct, other)[0] or _mv_equal(f"({pct})/100", other)[0]:
            return {"score": 1.0, "method": "percent"}
    if gp and pp:
        try:
            if _sympy_equal(gp[0], pp[0]):
                return {"score": 1.0, "method": "sympy"}
        except Exception:  # noqa: BLE001 - sympy raises many things on odd input; it just isn't a match
            pass
    if not pp:
        return {"score": 0.0, "method": "unparsed", "reason": "answer could not be parsed as maths"}
    return {"score": 0.0, "method": "not_equal", "reason": "not equivalent to the ground truth"}
