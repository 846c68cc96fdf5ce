"""Final-answer extraction and answer checking for math problems.

One set of rules serves both the RL verifier reward and benchmark scoring (MathVista, MathVerse, WeMath:
:mod:`genrl.data.vlm_benchmarks`), because a reward that accepts answers the scorer rejects, or the
reverse, trains the policy toward a target the evaluation does not measure.

Checking goes from cheap and exact to expensive and lenient: option letters / option text for multiple
choice, then numbers (exact fractions; rounding when the benchmark gives a precision), then normalised
strings, and last ``math_verify`` for LaTeX and expressions. Any failure inside ``math_verify`` counts
as "no match": one odd response must never stop a scoring run or a training step.
"""

from __future__ import annotations

import math
import re
import threading
from fractions import Fraction

MULTI_CHOICE_TYPES = frozenset({"multi_choice", "multi-choice", "multiple_choice"})

_TAG_OPEN, _TAG_CLOSE = "<answer>", "</answer>"
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_LINE = re.compile(r"\b(?:final\s+answer|answer)\s*(?:\bis\b\s*:?|[:：])", re.IGNORECASE)
_TEXT_WRAP = re.compile(r"\\(?:text|textbf|mathrm|mathbf)\s*\{([^{}]*)\}")
_LETTER = re.compile(r"(?:(?:option|choice)\s*)?\(?([A-Z])\)?(?:\s*[.:：)]\s*.*)?", re.IGNORECASE | re.DOTALL)
_NUMBER = re.compile(r"([-+]?)(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
                     r"(?:\s*/\s*(\d+(?:\.\d+)?))?")
# What may follow a number as a unit ("5 cm", "12 m^2", "3\text{ kg}"); only for predictions of numeric golds.
_UNIT_TAIL = re.compile(r"(?:\s|\.|(?:\\(?:text|mathrm)\s*\{[^{}]*\}|[A-Za-z]+)(?:\^\{?[23]\}?|[23²³])?)*")
_PLAIN_WORDS = re.compile(r"[A-Za-z\s'-]*")


# ----------------------------------------------------------------------------- extraction
def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` whose braces balance (nested braces allowed)."""
    for match in reversed(list(_BOXED.finditer(text))):
        depth = 1
        for i in range(match.end(), len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                return text[match.end():i]
    return None


def _clean(text: str) -> str:
    """Strip what surrounds an answer but is not part of it: markdown bold, ``$...$``, ``\\(...\\)``,
    ``\\text{...}`` around the whole answer, trailing periods."""
    s = text.strip()
    while True:
        before = s
        s = s.strip("*").strip().rstrip(".").rstrip()
        for left, right in (("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
            if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
                s = s[len(left):len(s) - len(right)].strip()
        wrapped = _TEXT_WRAP.fullmatch(s)
        if wrapped:
            s = wrapped.group(1).strip()
        if s == before:
            return s


def _after_answer_phrase(text: str) -> str | None:
    """Text after the last "Answer:" / "The answer is" / "Final answer:" (or the next line when that one
    ends there); None when no line has such a phrase."""
    lines = text.splitlines()
    for n in range(len(lines) - 1, -1, -1):
        matches = list(_ANSWER_LINE.finditer(lines[n]))
        if matches:
            rest = _clean(lines[n][matches[-1].end():])
            return rest or next((_clean(line) for line in lines[n + 1:] if _clean(line)), "")
    return None


def extract_answer(text: str) -> str | None:
    """The final answer a response gives: the last ``<answer>...</answer>`` span (a ``\\boxed{}`` or an
    "Answer:" phrase inside it is unwrapped), else the last balanced ``\\boxed{...}``, else the text
    after the last "Answer:", "The answer is ..." or "Final answer: ..." phrase; else None."""
    if not isinstance(text, str):
        return None
    spans = _ANSWER_TAG.findall(text)
    if spans:
        inner = _last_boxed(spans[-1])
        if inner is None:
            inner = _after_answer_phrase(spans[-1]) or spans[-1]
        return _clean(inner) or None
    boxed = _last_boxed(text)
    if boxed is not None:
        return _clean(boxed) or None
    return _after_answer_phrase(text) or None


def format_ok(text: str) -> bool:
    """The format reward: exactly one ``<answer>...</answer>`` span, non-empty, and nothing but whitespace
    after ``</answer>`` (so the answer is the last thing the policy wrote, not a draft it went on from)."""
    if not isinstance(text, str) or text.count(_TAG_OPEN) != 1 or text.count(_TAG_CLOSE) != 1:
        return False
    start, end = text.index(_TAG_OPEN) + len(_TAG_OPEN), text.index(_TAG_CLOSE)
    return end >= start and bool(text[start:end].strip()) and not text[end + len(_TAG_CLOSE):].strip()


# ----------------------------------------------------------------------------- matching
def _norm(text: str) -> str:
    s = _TEXT_WRAP.sub(r"\1", text).replace("$", "").lower()
    return re.sub(r"\s+", "", s).strip(".'\"")


def _number(text: str, *, units: bool) -> Fraction | None:
    """The exact value of a number written as ``-1,234.5``, ``3/4``, ``55°`` or ``50%``; with ``units``,
    also ``5 cm`` or ``12 m^2``. None when the text is anything else (``2\\pi``, ``x = 3``, ``1,2``)."""
    s = _clean(text).replace("−", "-").replace("{,}", ",").replace("\\!", "").replace("\\,", "")
    s = re.sub(r"\^\s*\{?\s*\\circ\s*\}?|°|\\circ|\\?%", "", s).strip()
    match = _NUMBER.match(s)
    if not match:
        return None
    rest = s[match.end():].strip()
    if rest and not (units and _UNIT_TAIL.fullmatch(rest)):
        return None
    sign, value, denominator = match.groups()
    number = Fraction(value.replace(",", ""))
    if denominator is not None:
        if Fraction(denominator) == 0:
            return None
        number /= Fraction(denominator)
    return -number if sign == "-" else number


def _numbers_equal(pred: Fraction | float, gold: Fraction | float, precision: int | None) -> bool:
    if precision is None:
        return pred == gold or math.isclose(float(pred), float(gold), rel_tol=1e-9, abs_tol=1e-12)
    return math.isclose(round(float(pred), precision), round(float(gold), precision),
                        abs_tol=0.1 ** (precision + 6))


def _option_index(text: str, choices: list[str] | None) -> int | None:
    """Which option ``text`` names: the option text itself (or its number), else a letter such as
    ``B``, ``(B)``, ``B.`` or ``B: 55°``."""
    if choices:
        for i, choice in enumerate(choices):
            if _norm(text) == _norm(choice):
                return i
        value = _number(text, units=True)
        for i, choice in enumerate(choices):
            if value is not None and (gold := _number(choice, units=False)) is not None and value == gold:
                return i
    match = _LETTER.fullmatch(text.strip())
    if not match or (not match.group(1).isupper() and not text.strip().startswith("(")):
        return None
    index = ord(match.group(1).upper()) - ord("A")
    return index if not choices or index < len(choices) else None


def _math_verify(pred: str, gold: str, gold_number: Fraction | None, precision: int | None) -> bool:
    """``math_verify`` equivalence, never raising. Its timeouts use SIGALRM, which only the main thread may
    set, so elsewhere (reward worker threads) it runs without them."""
    if _PLAIN_WORDS.fullmatch(pred) and _PLAIN_WORDS.fullmatch(gold):
        return False  # words are not symbols: "ab" and "ba" would parse as the equal products a*b, b*a
    try:
        from math_verify import parse, verify

        main = threading.current_thread() is threading.main_thread()
        parse_kw = {} if main else {"parsing_timeout": None}
        verify_kw = {} if main else {"timeout_seconds": None}
        gold_parsed, pred_parsed = parse(f"${gold}$", **parse_kw), parse(f"${pred}$", **parse_kw)
        if not gold_parsed or not pred_parsed:
            return False
        if gold_number is not None and precision is not None:
            try:  # e.g. \sqrt{2} against 1.41 at 2 decimals
                return _numbers_equal(float(pred_parsed[0]), gold_number, precision)
            except (TypeError, ValueError):
                pass
        return bool(verify(gold_parsed, pred_parsed, **verify_kw))
    except Exception:
        return False


def answers_match(pred: str | None, gold: str, *, choices: list[str] | None = None,
                  answer_type: str | None = None, precision: int | None = None) -> bool:
    """Whether a predicted answer equals the gold one.

    * Multiple choice (``choices`` given or ``answer_type`` multi-choice): the gold (a letter or an option's
      text) and the prediction (a letter in any usual form, or the option text) must name the same option.
    * Numeric gold: compared by value (fractions, thousands separators, a unit after the prediction);
      rounded to ``precision`` decimals when given.
    * Otherwise normalised string equality, then ``math_verify`` (e.g. ``\\frac{1}{2}`` vs ``0.5``).
    """
    if pred is None or gold is None:
        return False
    pred, gold = _clean(str(pred)), _clean(str(gold))
    if not pred:
        return False
    choices = list(choices) if choices else None
    if choices or (answer_type or "").lower() in MULTI_CHOICE_TYPES:
        gold_index = _option_index(gold, choices)
        if gold_index is not None:
            return _option_index(pred, choices) == gold_index
    if _norm(pred) == _norm(gold):
        return True
    gold_number = _number(gold, units=False)
    pred_number = _number(pred, units=True) if gold_number is not None else None
    if pred_number is not None:
        return _numbers_equal(pred_number, gold_number, precision)
    return _math_verify(pred, gold, gold_number, precision)
