"""Visual math benchmarks: MathVista / MathVerse / WeMath readers on tiny fixture folders, answer
extraction and matching (the RL verifier reward's rules too), and scoring with WeMath's IK/IG/CM/RM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from genrl.data.benchmark_formats import BenchmarkFormatError
from genrl.data.vlm_benchmarks import (
    VisualQuestion,
    load_mathverse,
    load_mathvista,
    load_wemath,
    parse_inline_choices,
    parse_wemath_options,
    score_questions,
)
from genrl.eval.math_answers import answers_match, extract_answer, format_ok


def _png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (255, 0, 0)).save(path)


def _write(folder: Path, name: str, data) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(data), encoding="utf-8")
    return folder / name


# ----------------------------------------------------------------------------- fixtures
def _mathvista_rows() -> dict:
    def row(question, image, answer, qtype, atype, task, choices=None, precision=None):
        return {"question": question, "image": image, "choices": choices, "unit": None, "precision": precision,
                "answer": answer, "question_type": qtype, "answer_type": atype, "query": f"Hint: ...\n{question}",
                "metadata": {"task": task, "skills": ["arithmetic reasoning"], "grade": "high school"}}
    return {
        "1": row("How many bars?", "images/1.png", "12", "free_form", "integer", "figure question answering"),
        "2": row("Which length is AB?", "2.png", "5", "multi_choice", "text", "geometry problem solving",
                 choices=["3", "5", "7"]),
        "3": row("What is x?", "images/3.png", "1.2", "free_form", "float", "geometry problem solving",
                 precision=1.0),
    }


@pytest.fixture
def mathvista_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "mathvista"
    for name in ("1.png", "2.png", "3.png"):
        _png(folder / "images" / name)
    _write(folder, "testmini.json", _mathvista_rows())
    return folder


def _mathverse_rows() -> list[dict]:
    base = {"metadata": {"split": "testmini", "source": "GeoQA", "subject": "Plane Geometry", "subfield": "Angle"},
            "query_wo": "...", "query_cot": "...", "question_for_eval": "..."}
    return [
        {**base, "sample_index": "1", "problem_index": "1", "problem_version": "Text Dominant",
         "question": "Find angle B.\nChoices:\nA:35°\nB:55°\nC:65°\nD:70°", "image": "1.png", "answer": "B",
         "question_type": "multi-choice"},
        {**base, "sample_index": "2", "problem_index": "1", "problem_version": "Vision Only", "question": "",
         "image": "2.png", "answer": "B", "question_type": "multi-choice"},
        {**base, "sample_index": "3", "problem_index": "2", "problem_version": "Text Dominant",
         "question": "What is sin 30°?", "image": "3.png", "answer": "\\frac{1}{2}", "question_type": "free-form"},
    ]


@pytest.fixture
def mathverse_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "mathverse"
    for name in ("1.png", "2.png", "3.png"):
        _png(folder / "images" / name)
    _write(folder, "testmini.json", _mathverse_rows())
    return folder


# WeMath problems: (ID style, steps, sub-problem results, composite result) -> the strict / loose label
WEMATH_PLAN = {
    "g1": (2, [True, True], True),     # CM / CM
    "g2": (2, [True, True], False),    # IG / IG
    "g3": (2, [False, True], True),    # RM / CM
    "g4": (2, [False, False], False),  # IK / IK
    "g5": (3, [False, False, False], True),  # RM / RM
}


def _wemath_rows() -> tuple[list[dict], list[str]]:
    """Rows of WEMATH_PLAN plus an incomplete problem "g6" (composite only, answered right), and responses
    that are right or wrong as planned. g1..g3 use "<group>@<key>" IDs, the rest a shared plain ID."""
    rows, responses = [], []

    def add(group, key, right, answer="C"):
        ident = f"{group}@{key}" if group in ("g1", "g2", "g3") else group
        rows.append({"ID": ident, "split": "testmini", "knowledge concept": "Area of Rectangles",
                     "question": f"{group} {key}?", "option": "A. 1; B. 2; C. 3; D. 4", "answer": answer,
                     "key": key, "question number": len(rows) + 1, "image_path": f"{group}-{key}.png"})
        responses.append(f"<answer>{answer if right else 'A'}</answer>")

    for group, (steps, subs, composite) in WEMATH_PLAN.items():
        for i, right in enumerate(subs, start=1):
            add(group, f"{steps}steps_{i}", right)
        add(group, f"{steps}steps_multi", composite)
    add("g6", "2steps_multi", True)
    return rows, responses


@pytest.fixture
def wemath_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "wemath"
    rows, _ = _wemath_rows()
    for row in rows:
        _png(folder / row["image_path"])
    _write(folder, "testmini.json", rows)
    return folder


# ----------------------------------------------------------------------------- loaders
def test_mathvista_fields_and_images(mathvista_dir: Path):
    qs = {q.qid: q for q in load_mathvista(mathvista_dir)}
    assert list(qs) == ["1", "2", "3"]
    assert qs["1"].image == mathvista_dir / "images" / "1.png"
    assert qs["2"].image == mathvista_dir / "images" / "2.png"  # bare name found under images/
    assert qs["2"].choices == ("3", "5", "7") and qs["2"].answer_type == "multi_choice"
    assert qs["1"].choices is None and qs["1"].answer_type == "integer" and qs["1"].precision is None
    assert qs["3"].precision == 1 and qs["3"].answer == "1.2"
    assert qs["3"].meta["task"] == "geometry problem solving" and qs["3"].meta["query"].startswith("Hint")
    assert all(q.benchmark == "mathvista" for q in qs.values())


def test_mathvista_jsonl(tmp_path: Path, mathvista_dir: Path):
    lines = [json.dumps({**row, "pid": pid}) for pid, row in _mathvista_rows().items()]
    (mathvista_dir / "testmini.jsonl").write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    qs = load_mathvista(mathvista_dir / "testmini.jsonl")
    assert [q.qid for q in qs] == ["1", "2", "3"] and qs[1].choices == ("3", "5", "7")


def test_mathvista_errors(tmp_path: Path, mathvista_dir: Path):
    (mathvista_dir / "images" / "3.png").unlink()
    with pytest.raises(BenchmarkFormatError) as e:
        load_mathvista(mathvista_dir)
    assert "testmini.json" in str(e.value) and "pid 3" in str(e.value) and "image" in str(e.value)
    assert load_mathvista(mathvista_dir, check_images=False)[2].image == mathvista_dir / "images" / "3.png"

    rows = _mathvista_rows()
    del rows["2"]["answer"]
    file = _write(tmp_path / "bad", "data.json", rows)
    with pytest.raises(BenchmarkFormatError) as e:
        load_mathvista(file.parent, check_images=False)
    assert str(file) in str(e.value) and "pid 2: answer" in str(e.value) and "got nothing" in str(e.value)

    rows = _mathvista_rows()
    rows["1"]["precision"] = 1.5
    _write(tmp_path / "bad", "data.json", rows)
    with pytest.raises(BenchmarkFormatError, match="pid 1: precision"):
        load_mathvista(tmp_path / "bad", check_images=False)

    with pytest.raises(FileNotFoundError, match="testmini.json, data.json"):
        load_mathvista(tmp_path / "bad" / "..")


def test_mathverse_fields_and_choices(mathverse_dir: Path):
    qs = load_mathverse(mathverse_dir / "testmini.json")
    assert [q.qid for q in qs] == ["1", "2", "3"]
    assert qs[0].choices == ("35°", "55°", "65°", "70°") and qs[0].answer == "B"
    assert qs[1].choices is None and qs[1].answer_type == "multi_choice"  # Vision Only: options in the image
    assert qs[2].answer_type == "free_form" and qs[2].choices is None
    assert qs[0].image == mathverse_dir / "images" / "1.png"
    assert qs[0].meta["problem_version"] == "Text Dominant" and qs[0].meta["subject"] == "Plane Geometry"
    assert parse_inline_choices("Q?\nChoices:\n(A) 1\n(B) 2\n") == ("1", "2")
    assert parse_inline_choices("no options here") is None


def test_mathverse_errors(tmp_path: Path, mathverse_dir: Path):
    rows = _mathverse_rows()
    del rows[1]["problem_version"]
    file = _write(tmp_path / "bad", "testmini.json", rows)
    with pytest.raises(BenchmarkFormatError) as e:
        load_mathverse(file, check_images=False)
    assert str(file) in str(e.value) and "row [1]" in str(e.value) and "problem_version" in str(e.value)
    (mathverse_dir / "images" / "2.png").unlink()
    with pytest.raises(BenchmarkFormatError, match=r"sample_index 2\): image"):
        load_mathverse(mathverse_dir)
    with pytest.raises(FileNotFoundError, match="testmini.json"):
        load_mathverse(tmp_path)


def test_wemath_fields_and_options(wemath_dir: Path):
    qs = {q.qid: q for q in load_wemath(wemath_dir)}
    assert len(qs) == 17
    sub, comp = qs["g1@2steps_1"], qs["g5@3steps_multi"]
    assert sub.choices == ("1", "2", "3", "4") and sub.answer == "C" and sub.answer_type == "multi_choice"
    assert sub.meta["group"] == "g1" and sub.meta["steps"] == 2 and not sub.meta["composite"]
    assert comp.meta["group"] == "g5" and comp.meta["steps"] == 3 and comp.meta["composite"]
    assert sub.meta["knowledge concept"] == "Area of Rectangles" and sub.meta["key"] == "2steps_1"
    assert sub.image == wemath_dir / "g1-2steps_1.png"
    assert parse_wemath_options("A. 90°; B. 180°；C. No correct answer") == ("90°", "180°", "No correct answer")
    assert parse_wemath_options("B. 1; A. 2") == ()


def test_wemath_errors(tmp_path: Path, wemath_dir: Path):
    rows, _ = _wemath_rows()
    rows[3]["answer"] = "F"
    file = _write(tmp_path / "bad", "testmini.json", rows)
    with pytest.raises(BenchmarkFormatError, match=r"row \[3\] \(ID g2@2steps_1\): answer: letter F"):
        load_wemath(file, check_images=False)
    rows, _ = _wemath_rows()
    del rows[0]["key"]
    _write(tmp_path / "bad", "testmini.json", rows)
    with pytest.raises(BenchmarkFormatError) as e:
        load_wemath(tmp_path / "bad", check_images=False)
    assert str(file) in str(e.value) and "row [0]" in str(e.value) and ": key" in str(e.value)
    (wemath_dir / "g4-2steps_multi.png").unlink()
    with pytest.raises(BenchmarkFormatError, match="image_path: image 'g4-2steps_multi.png' not found"):
        load_wemath(wemath_dir)


# ----------------------------------------------------------------------------- extraction
@pytest.mark.parametrize("text, expected", [
    ("<think>2+3</think><answer> 5. </answer>", "5"),
    ("<answer>3</answer> wait <answer>4</answer>", "4"),
    ("<answer>$\\boxed{\\frac{1}{2}}$</answer>", "\\frac{1}{2}"),
    ("so \\boxed{\\frac{1}{\\sqrt{2}}} hence", "\\frac{1}{\\sqrt{2}}"),
    ("first \\boxed{1}, then \\boxed{x^{2}+\\{1\\}}", "x^{2}+\\{1\\}"),
    ("\\boxed{\\text{B}}", "B"),
    ("Some work.\nThe answer is $12$.", "12"),
    ("Therefore the final answer is: 3/4.", "3/4"),
    ("**Answer:** (B)", "(B)"),
    ("Final answer:\n  7", "7"),
    ("Answer: 2\nchecking...\nAnswer: 3", "3"),
    ("To answer this, look at the figure.", None),
    ("no answer here", None),
    ("<answer>  </answer>", None),
    ("<answer>The answer is (C).</answer>", "(C)"),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


# ----------------------------------------------------------------------------- matching
@pytest.mark.parametrize("pred, gold, kw, expected", [
    ("B", "5", {"choices": ["3", "5", "7"]}, True),          # letter -> option text (MathVista)
    ("(B)", "5", {"choices": ["3", "5", "7"]}, True),
    ("B.", "5", {"choices": ["3", "5", "7"]}, True),
    ("5", "5", {"choices": ["3", "5", "7"]}, True),          # option text itself
    ("5.0", "5", {"choices": ["3", "5", "7"]}, True),
    ("C", "5", {"choices": ["3", "5", "7"]}, False),
    ("D", "5", {"choices": ["3", "5", "7"]}, False),         # no such option
    ("55°", "B", {"choices": ["35°", "55°"]}, True),         # option text vs gold letter (MathVerse)
    ("B: 55°", "B", {"answer_type": "multi_choice"}, True),  # letter without option list
    ("Option C", "C", {"answer_type": "multi_choice"}, True),
    ("A", "B", {"answer_type": "multi_choice"}, False),
    ("1,000", "1000", {}, True),
    ("1/2", "0.5", {}, True),
    ("5 cm", "5", {}, True),
    ("12 m^2", "12", {}, True),
    ("5 or 6", "5", {}, False),
    ("-2", "2", {}, False),
    ("3.0", "3", {"answer_type": "integer"}, True),
    ("1.23", "1.2", {"precision": 1}, True),
    ("1.26", "1.2", {"precision": 1}, False),
    ("1.23", "1.2", {}, False),
    ("0.333", "0.33", {"precision": 2}, True),
    ("\\frac{1}{2}", "0.5", {}, True),                       # math_verify
    ("\\sqrt{2}", "1.41", {"precision": 2}, True),
    ("x^2 + 1", "1+x^2", {}, True),
    ("2\\pi", "2", {}, False),
    ("Yes", "yes", {"answer_type": "text"}, True),
    ("no", "yes", {"answer_type": "text"}, False),
    ("ab", "ba", {}, False),
    ("\\frac{1}{", "0.5", {}, False),                         # unparsable: no match, no exception
    (None, "1", {}, False),
    ("", "1", {}, False),
])
def test_answers_match(pred, gold, kw, expected):
    assert answers_match(pred, gold, **kw) is expected


@pytest.mark.parametrize("text, expected", [
    ("<think>...</think><answer>5</answer>", True),
    ("<answer>5</answer>\n  ", True),
    ("<answer> </answer>", False),
    ("<answer>5</answer> and more", False),
    ("<answer>1</answer><answer>2</answer>", False),
    ("</answer>5<answer>", False),
    ("the answer is 5", False),
])
def test_format_ok(text, expected):
    assert format_ok(text) is expected


# ----------------------------------------------------------------------------- scoring
def test_score_mathvista_and_mathverse(mathvista_dir: Path, mathverse_dir: Path):
    result = score_questions(load_mathvista(mathvista_dir),
                             ["<answer>12</answer>", "The answer is B", "\\boxed{1.3}"])
    assert result["n"] == 3 and result["accuracy"] == pytest.approx(2 / 3)
    assert result["by_group"] == {"figure question answering": {"n": 1, "accuracy": 1.0},
                                  "geometry problem solving": {"n": 2, "accuracy": 0.5}}
    assert [q["correct"] for q in result["questions"]] == [True, True, False]
    assert result["questions"][2]["prediction"] == "1.3" and "wemath" not in result

    result = score_questions(load_mathverse(mathverse_dir), ["<answer>55°</answer>", "(C)", "Answer: 0.5"])
    assert result["accuracy"] == pytest.approx(2 / 3)
    assert result["by_group"] == {"Text Dominant": {"n": 2, "accuracy": 1.0},
                                  "Vision Only": {"n": 1, "accuracy": 0.0}}
    with pytest.raises(ValueError, match="3 questions but 1 responses"):
        score_questions(load_mathverse(mathverse_dir), ["A"])


def test_score_wemath_four_dimensional(wemath_dir: Path):
    _, responses = _wemath_rows()
    result = score_questions(load_wemath(wemath_dir), responses)
    assert result["n"] == 17 and result["accuracy"] == pytest.approx(9 / 17)
    assert result["by_group"]["1step"] == {"n": 11, "accuracy": pytest.approx(5 / 11)}
    assert result["by_group"]["2steps"] == {"n": 5, "accuracy": pytest.approx(3 / 5)}
    assert result["by_group"]["3steps"] == {"n": 1, "accuracy": 1.0}
    wm = result["wemath"]
    assert wm["problems"] == 5 and wm["incomplete"] == ["g6"]
    assert wm["labels"] == {"g1": "CM", "g2": "IG", "g3": "RM", "g4": "IK", "g5": "RM"}
    strict, loose = wm["strict"], wm["loose"]
    assert strict["counts"] == {"IK": 1, "IG": 1, "CM": 1, "RM": 2}
    assert (strict["IK"], strict["IG"], strict["CM"], strict["RM_share"]) == pytest.approx((0.2, 0.2, 0.2, 0.4))
    assert strict["RM"] == pytest.approx(2 / 3) and strict["score"] == pytest.approx(0.2 + 0.5 * 0.2)
    assert loose["counts"] == {"IK": 1, "IG": 1, "CM": 2, "RM": 1}
    assert loose["RM"] == pytest.approx(1 / 3) and loose["score"] == pytest.approx(0.4 + 0.5 * 0.2)


def test_visual_question_is_frozen_and_hashable():
    q = VisualQuestion("1", "q", None, "5", None, "integer", None, {"task": "t"})
    with pytest.raises(AttributeError):
        q.answer = "6"  # type: ignore[misc]
    assert hash(q) == hash(VisualQuestion("1", "q", None, "5", None, "integer", None, {"task": "t"}))
