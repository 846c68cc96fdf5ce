"""Readers and scoring for visual math benchmarks, from a folder the user downloaded.

* **MathVista** (``testmini``) — ``testmini.json`` / ``data.json``: a dict keyed by pid of
  ``{question, image ("images/1.jpg"), choices (list | null), answer, question_type ("multi_choice" |
  "free_form"), answer_type ("integer" | "float" | "text" | "list"), precision, query, metadata {task,
  skills, grade, ...}}``; or a JSONL file, one such object per line with a ``pid``. The gold answer of a
  multi-choice row is the option's text.
* **MathVerse** — ``testmini.json``: a list of ``{sample_index, problem_index, problem_version,
  question, image, answer, question_type ("multi-choice" | "free-form"), metadata {subject, subfield},
  query_wo, query_cot, question_for_eval}``. Options live in the question text after "Choices:"
  (absent in Vision-Only versions, where they are in the image); the gold answer is a letter.
* **WeMath** — ``testmini.json``: a list of ``{ID, question, option ("A. 5; B. 6"), answer (a letter),
  image_path, key, knowledge concept, ...}``. ``key`` is ``<N>steps_<i>`` for the i-th one-step
  sub-problem of an N-step problem and ``<N>steps_multi`` for the composite problem itself; the rows of
  one problem share ``ID`` (or its part before "@").

Rows are validated as they are read (a :class:`BenchmarkFormatError` names the file, the row and the
key), since a silently skipped row or a misread answer changes a score without anyone noticing. Images
are looked up next to the JSON file, then under its ``images/`` folder.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genrl.data.benchmark_formats import BenchmarkFormatError, _got
from genrl.eval.math_answers import answers_match, extract_answer

MATHVISTA_FILES = ("testmini.json", "data.json", "testmini.jsonl")
MATHVERSE_FILES = ("testmini.json",)
WEMATH_FILES = ("testmini.json",)

_CHOICE_LINE = re.compile(r"\s*\(?([A-H])\)?\s*[:.：)]\s*(.*)")
_WEMATH_OPTION = re.compile(r"(?:^|[;；]\s*)([A-H])\s*[.．、:]\s*")
_WEMATH_KEY = re.compile(r"(\d+)steps?(?:_(\d+|multi))?")
_LETTER_ANSWER = re.compile(r"\(?([A-H])\)?(?:\s*[:.)].*)?", re.DOTALL)


@dataclass(frozen=True)
class VisualQuestion:
    """One benchmark question. ``answer_type`` is ``multi_choice`` for multiple choice (``choices`` then
    holds the options when the benchmark gives them as text), else the benchmark's own type."""

    qid: str
    question: str
    image: Path | None
    answer: str
    choices: tuple[str, ...] | None
    answer_type: str
    precision: int | None
    meta: dict = field(default_factory=dict, hash=False)
    benchmark: str = ""


# ----------------------------------------------------------------------------- shared helpers
def _locate(path: str | Path, names: tuple[str, ...], bench: str) -> Path:
    path = Path(path).expanduser()
    if path.is_dir():
        found = next((path / n for n in names if (path / n).is_file()), None)
        if found is None:
            raise FileNotFoundError(f"{path}: no {bench} file in this folder (looked for {', '.join(names)})")
        return found
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (expected a {bench} file, {' or '.join(names)}, "
                                "or a folder holding one)")
    return path


def _read_json(file: Path) -> Any:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise BenchmarkFormatError(file, f"line {e.lineno}", f"invalid JSON: {e.msg}") from None


def _rows_list(file: Path, data: Any) -> list[tuple[str, Any]]:
    if not isinstance(data, list) or not data:
        raise BenchmarkFormatError(file, "", f"expected a non-empty JSON list of rows, got {_got(data)}")
    return [(f"row [{i}]", row) for i, row in enumerate(data)]


def _field(row: dict, key: str, file: Path, where: str, types: type | tuple[type, ...], expected: str,
           *, optional: bool = False, empty_ok: bool = False) -> Any:
    """``row[key]`` checked against ``types`` (None allowed when ``optional``)."""
    value = row.get(key)
    if value is None and optional:
        return None
    bad = (not isinstance(value, types) or isinstance(value, bool)
           or (isinstance(value, str) and not empty_ok and not value.strip()))
    if bad:
        got = _got(value) if key in row else "nothing"
        raise BenchmarkFormatError(file, f"{where}: {key}", f"expected {expected}, got {got}")
    return value


def _image(name: str | None, file: Path, where: str, key: str, check: bool) -> Path | None:
    if not name:
        return None
    first, second = file.parent / name, file.parent / "images" / name
    if first.is_file():
        return first
    if second.is_file():
        return second
    if not check:
        return first
    raise BenchmarkFormatError(file, f"{where}: {key}",
                               f"image {name!r} not found (looked for {first} and {second})")


def _meta_dict(row: dict, file: Path, where: str) -> dict:
    return dict(_field(row, "metadata", file, where, dict, "an object (task, skills, ...)"))


def _letter(value: str, file: Path, where: str, key: str) -> str:
    match = _LETTER_ANSWER.fullmatch(value.strip())
    if not match:
        raise BenchmarkFormatError(file, f"{where}: {key}", f"expected an option letter A-H, got {_got(value)}")
    return match.group(1)


# ----------------------------------------------------------------------------- MathVista
def load_mathvista(path: str | Path, *, check_images: bool = True) -> list[VisualQuestion]:
    """MathVista testmini: the JSON dict keyed by pid, or a JSONL file with a ``pid`` per line."""
    file = _locate(path, MATHVISTA_FILES, "MathVista")
    if file.suffix == ".jsonl":
        rows = []
        for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise BenchmarkFormatError(file, f"line {number}", f"invalid JSON: {e.msg}") from None
            pid = row.get("pid") if isinstance(row, dict) else None
            if not isinstance(pid, (str, int)) or isinstance(pid, bool):
                raise BenchmarkFormatError(file, f"line {number}: pid", "expected a pid (string or integer), "
                                                                         f"got {_got(pid)}")
            rows.append((f"line {number} (pid {pid})", row, str(pid)))
    else:
        data = _read_json(file)
        if not isinstance(data, dict) or not data:
            raise BenchmarkFormatError(file, "", f"expected a JSON object keyed by pid, got {_got(data)}")
        rows = [(f"pid {pid}", row, str(pid)) for pid, row in data.items()]
    out = []
    for where, row, pid in rows:
        if not isinstance(row, dict):
            raise BenchmarkFormatError(file, where, f"expected an object, got {_got(row)}")
        question = _field(row, "question", file, where, str, "a non-empty string")
        image = _field(row, "image", file, where, str, "an image path such as 'images/1.jpg'")
        answer = _field(row, "answer", file, where, (str, int, float), "the gold answer (string or number)")
        qtype = _field(row, "question_type", file, where, str, "'multi_choice' or 'free_form'")
        atype = _field(row, "answer_type", file, where, str, "'integer', 'float', 'text' or 'list'")
        if qtype not in ("multi_choice", "free_form"):
            raise BenchmarkFormatError(file, f"{where}: question_type",
                                       f"expected 'multi_choice' or 'free_form', got {_got(qtype)}")
        choices = _field(row, "choices", file, where, list, "a list of option strings or null", optional=True)
        if choices is not None and not all(isinstance(c, (str, int, float)) for c in choices):
            raise BenchmarkFormatError(file, f"{where}: choices", f"expected option strings, got {_got(choices)}")
        if qtype == "multi_choice" and not choices:
            raise BenchmarkFormatError(file, f"{where}: choices", "expected the options of a multi_choice "
                                                                  f"question, got {_got(choices)}")
        precision = _field(row, "precision", file, where, (int, float), "an integer number of decimals or null",
                           optional=True)
        if precision is not None and (precision != int(precision) or precision < 0):
            raise BenchmarkFormatError(file, f"{where}: precision", f"expected an integer >= 0, got {_got(precision)}")
        meta = _meta_dict(row, file, where)
        meta.update(question_type=qtype, query=row.get("query"), unit=row.get("unit"))
        out.append(VisualQuestion(
            pid, question, _image(image, file, where, "image", check_images), str(answer),
            tuple(str(c) for c in choices) if choices else None,
            "multi_choice" if qtype == "multi_choice" else atype,
            None if precision is None else int(precision), meta, "mathvista"))
    return out


# ----------------------------------------------------------------------------- MathVerse
def parse_inline_choices(question: str) -> tuple[str, ...] | None:
    """Options written after "Choices:" in a question, one per line (``A: 35°``, ``B. 55°``, ``(C) 65°``),
    lettered A, B, C... in order; None when there are none."""
    match = re.search(r"choices\s*[:：]", question, re.IGNORECASE)
    if not match:
        return None
    options: list[str] = []
    for line in question[match.end():].splitlines():
        option = _CHOICE_LINE.fullmatch(line)
        if option and option.group(1) == chr(ord("A") + len(options)):
            options.append(option.group(2).strip())
        elif line.strip() and options:
            break
    return tuple(options) or None


def load_mathverse(path: str | Path, *, check_images: bool = True) -> list[VisualQuestion]:
    """MathVerse testmini (all problem versions, each its own question)."""
    file = _locate(path, MATHVERSE_FILES, "MathVerse")
    out = []
    for where, row in _rows_list(file, _read_json(file)):
        if not isinstance(row, dict):
            raise BenchmarkFormatError(file, where, f"expected an object, got {_got(row)}")
        index = _field(row, "sample_index", file, where, (str, int), "a sample index")
        where = f"{where} (sample_index {index})"
        version = _field(row, "problem_version", file, where, str, "a version such as 'Vision Only'")
        question = _field(row, "question", file, where, str, "a string", empty_ok=True)
        image = _field(row, "image", file, where, str, "an image file name (or '')", empty_ok=True)
        answer = _field(row, "answer", file, where, (str, int, float), "the gold answer")
        qtype = _field(row, "question_type", file, where, str, "'multi-choice' or 'free-form'")
        if qtype not in ("multi-choice", "free-form"):
            raise BenchmarkFormatError(file, f"{where}: question_type",
                                       f"expected 'multi-choice' or 'free-form', got {_got(qtype)}")
        meta = _meta_dict(row, file, where)
        multi = qtype == "multi-choice"
        meta.update(problem_version=version, problem_index=row.get("problem_index"), question_type=qtype,
                    query_wo=row.get("query_wo"), query_cot=row.get("query_cot"),
                    question_for_eval=row.get("question_for_eval"))
        out.append(VisualQuestion(
            str(index), question, _image(image, file, where, "image", check_images),
            _letter(str(answer), file, where, "answer") if multi else str(answer),
            parse_inline_choices(question) if multi else None,
            "multi_choice" if multi else "free_form", None, meta, "mathverse"))
    return out


# ----------------------------------------------------------------------------- WeMath
def parse_wemath_options(option: str) -> tuple[str, ...]:
    """``"A. 5; B. 6; C. 7"`` -> ``("5", "6", "7")``; empty when the string does not read A, B, C... in order."""
    marks = list(_WEMATH_OPTION.finditer(option))
    if not marks or any(m.group(1) != chr(ord("A") + i) for i, m in enumerate(marks)):
        return ()
    ends = [m.start() for m in marks[1:]] + [len(option)]
    return tuple(option[m.end():end].strip() for m, end in zip(marks, ends))


def load_wemath(path: str | Path, *, check_images: bool = True) -> list[VisualQuestion]:
    """WeMath testmini; ``meta`` gets ``group`` (the problem the row belongs to), ``steps`` and
    ``composite`` (True for the ``<N>steps_multi`` row)."""
    file = _locate(path, WEMATH_FILES, "WeMath")
    out, seen = [], set()
    for where, row in _rows_list(file, _read_json(file)):
        if not isinstance(row, dict):
            raise BenchmarkFormatError(file, where, f"expected an object, got {_got(row)}")
        ident = str(_field(row, "ID", file, where, (str, int), "a problem ID such as '1@2steps_1'"))
        where = f"{where} (ID {ident})"
        question = _field(row, "question", file, where, str, "a non-empty string")
        key = _field(row, "key", file, where, str, "a key such as '2steps_1' or '2steps_multi'")
        parsed_key = _WEMATH_KEY.fullmatch(key.strip())
        if not parsed_key:
            raise BenchmarkFormatError(file, f"{where}: key", f"expected '<N>steps_<i>' or '<N>steps_multi', "
                                                              f"got {_got(key)}")
        option = _field(row, "option", file, where, str, "options such as 'A. 5; B. 6'")
        choices = parse_wemath_options(option)
        if len(choices) < 2:
            raise BenchmarkFormatError(file, f"{where}: option", "expected options written 'A. ...; B. ...', "
                                                                 f"got {_got(option)}")
        answer = _letter(_field(row, "answer", file, where, str, "an option letter"), file, where, "answer")
        if ord(answer) - ord("A") >= len(choices):
            raise BenchmarkFormatError(file, f"{where}: answer",
                                       f"letter {answer} names no option (there are {len(choices)})")
        image = _field(row, "image_path", file, where, str, "an image path")
        qid = ident if "@" in ident else f"{ident}@{key}"
        if qid in seen:
            raise BenchmarkFormatError(file, f"{where}: key", f"duplicate question {qid!r}")
        seen.add(qid)
        composite = parsed_key.group(2) == "multi"
        meta = {k: v for k, v in row.items() if k not in ("question", "option", "answer", "image_path")}
        meta.update(group=ident.split("@")[0], steps=int(parsed_key.group(1)), composite=composite)
        out.append(VisualQuestion(qid, question, _image(image, file, where, "image_path", check_images),
                                  answer, choices, "multi_choice", None, meta, "wemath"))
    return out


# ----------------------------------------------------------------------------- scoring
def _group_of(q: VisualQuestion) -> str:
    if q.benchmark == "mathvista":
        return str(q.meta.get("task", "unknown"))
    if q.benchmark == "mathverse":
        return str(q.meta.get("problem_version", "unknown"))
    if q.benchmark == "wemath":  # the paper's S1/S2/S3: sub-problems are one-step problems
        return f"{q.meta['steps']}steps" if q.meta.get("composite") and q.meta["steps"] > 1 else "1step"
    return "all"


def wemath_four_dimensional(questions: list[VisualQuestion], correct: list[bool]) -> dict:
    """WeMath's four-dimensional metric (Qiao et al., 2024) over its composite (multi-step) problems.

    Each problem with a composite row and its one-step sub-problems is classified as
    IK (some sub-problem wrong, composite wrong), IG (all sub-problems right, composite wrong),
    CM (all right) or RM (some sub-problem wrong, composite right). That is the "strict" setting; the
    "loose" one counts a right composite as CM when *any* sub-problem is right (RM: all wrong).
    As in the authors' evaluation script: IK, IG and CM are shares of all composite problems, ``RM`` is
    the share of RM among the right composites (RM / (CM + RM)), ``RM_share`` its share of all problems,
    and ``score`` = (n - IK - RM - 0.5 IG) / n = CM share + 0.5 IG share. Problems lacking a composite or
    any sub-problem row are left out and listed under ``incomplete``.
    """
    groups: dict[str, dict[str, Any]] = defaultdict(lambda: {"subs": [], "composite": None})
    for q, ok in zip(questions, correct):
        if q.benchmark == "wemath" and q.meta.get("steps", 1) > 1:
            slot = groups[q.meta["group"]]
            if q.meta.get("composite"):
                slot["composite"] = ok
            else:
                slot["subs"].append(ok)
    labels: dict[str, dict[str, str]] = {"strict": {}, "loose": {}}
    incomplete = []
    for name, slot in sorted(groups.items()):
        subs, composite = slot["subs"], slot["composite"]
        if composite is None or not subs:
            incomplete.append(name)
            continue
        if not composite:
            labels["strict"][name] = labels["loose"][name] = "IG" if all(subs) else "IK"
        else:
            labels["strict"][name] = "CM" if all(subs) else "RM"
            labels["loose"][name] = "CM" if any(subs) else "RM"
    n = len(labels["strict"])
    result: dict[str, Any] = {"problems": n, "incomplete": incomplete, "labels": labels["strict"]}
    for setting, by_problem in labels.items():
        counts = {k: sum(v == k for v in by_problem.values()) for k in ("IK", "IG", "CM", "RM")}
        shares = {k: (c / n if n else 0.0) for k, c in counts.items()}
        right = counts["CM"] + counts["RM"]
        result[setting] = {
            "counts": counts, "IK": shares["IK"], "IG": shares["IG"], "CM": shares["CM"],
            "RM": counts["RM"] / right if right else 0.0, "RM_share": shares["RM"],
            "score": shares["CM"] + 0.5 * shares["IG"],
        }
    return result


def score_questions(questions: list[VisualQuestion], responses: list[str]) -> dict:
    """Score model responses: per-question correctness (:func:`extract_answer` then
    :func:`answers_match`), overall accuracy, accuracy per group (MathVista: ``task``; MathVerse:
    ``problem_version``; WeMath: ``1step`` / ``2steps`` / ``3steps``, sub-problems counting as one-step)
    and, when WeMath questions are present, :func:`wemath_four_dimensional` under ``wemath``."""
    if len(questions) != len(responses):
        raise ValueError(f"{len(questions)} questions but {len(responses)} responses")
    per_question, correct = [], []
    groups: dict[str, list[bool]] = defaultdict(list)
    for q, response in zip(questions, responses):
        pred = extract_answer(response)
        ok = answers_match(pred, q.answer, choices=list(q.choices) if q.choices else None,
                           answer_type=q.answer_type, precision=q.precision)
        correct.append(ok)
        groups[_group_of(q)].append(ok)
        per_question.append({"qid": q.qid, "prediction": pred, "answer": q.answer, "correct": ok})
    result: dict[str, Any] = {
        "n": len(questions),
        "accuracy": sum(correct) / len(correct) if correct else 0.0,
        "by_group": {g: {"n": len(v), "accuracy": sum(v) / len(v)} for g, v in sorted(groups.items())},
        "questions": per_question,
    }
    if any(q.benchmark == "wemath" for q in questions):
        result["wemath"] = wemath_four_dimensional(questions, correct)
    return result
