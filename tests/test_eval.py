"""Evaluation: statistics, benchmark prompt formats, `genrl eval` / `genrl compare`, the HTML report,
and the training loop's use of the same benchmark API. Tiny models, a 3-epoch judge, --n 2."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from genrl.cli import main
from genrl.data.benchmark_formats import (
    BenchmarkFormatError,
    load_geneval_metadata,
    load_prompt_list,
    load_vbench_full_info,
    load_vbench_prompts,
)
from genrl.eval.benchmark import MetricSpec, SeedResult
from genrl.eval.runner import summarize
from genrl.eval.stats import (
    Summary,
    binary_summary,
    pass_at_k,
    pass_at_k_summary,
    t_interval,
    welch_test,
    wilson_interval,
)
from tests.helpers import ROOT

TINY_JUDGE = "judge_recipe=recipes/smoke/judge_tiny.yaml"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


# ----------------------------------------------------------------------------- statistics
def test_pass_at_k_is_the_unbiased_estimator() -> None:
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the success rate
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)  # 1 - C(7,5)/C(10,5)
    assert pass_at_k(5, 4, 2) == 1.0 and pass_at_k(8, 0, 3) == 0.0
    # where C(n, k) overflows floats the product form still matches the exact fraction
    n, c, k = 1000, 400, 300
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12)
    with pytest.raises(ValueError, match="needs at least 6 samples"):
        pass_at_k(5, 1, 6)
    s = pass_at_k_summary([(4, 3), (4, 1)], 2)  # per prompt: 1 - C(1,2)/C(4,2) = 1 and 1 - C(3,2)/C(4,2) = 0.5
    assert s.mean == pytest.approx(0.75) and s.n == 2 and s.method == "t"
    assert 0.0 <= s.ci_low and s.ci_high <= 1.0  # a probability: clipped


def test_intervals_match_hand_computed_values() -> None:
    s = t_interval([1.0, 2.0, 3.0, 4.0])  # mean 2.5, s = 1.29099, t(0.975, 3) = 3.18245, half-width 3.18245 * s / 2
    assert (s.mean, s.n, s.method) == (2.5, 4, "t")
    assert s.std == pytest.approx(1.290994, abs=1e-6)
    assert (s.ci_low, s.ci_high) == pytest.approx((2.5 - 2.054260, 2.5 + 2.054260), abs=1e-5)
    one = t_interval([0.7])
    assert one.ci_low is None and one.std == 0.0 and one.to_dict()["ci95"] is None
    # Wilson, 8 of 10: centre (p + z²/2n)/(1 + z²/n) = 0.71675, half-width 0.22658
    assert wilson_interval(8, 10) == pytest.approx((0.49016, 0.94331), abs=1e-4)
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0) and wilson_interval(10, 10)[0] == pytest.approx(0.72247, abs=1e-4)
    b = binary_summary([1, 1, 0, 1, 1, 1, 1, 0, 1, 1])
    assert (b.mean, b.n, b.method) == (0.8, 10, "wilson") and b.ci_low == pytest.approx(0.49016, abs=1e-4)
    with pytest.raises(ValueError, match="0 or 1"):
        binary_summary([0.5, 1.0])


def test_welch_rule() -> None:
    a, b = Summary(1.0, 1.0, 10, None, None, "t"), Summary(2.0, 2.0, 10, None, None, "t")
    d = welch_test(a, b)  # se² = 1/10 + 4/10; df = 0.25 / (0.01/9 + 0.16/9) = 13.235
    assert d.diff == 1.0 and d.se == pytest.approx(math.sqrt(0.5)) and d.df == pytest.approx(13.2353, abs=1e-4)
    from scipy.stats import ttest_ind_from_stats

    assert d.p_value == pytest.approx(ttest_ind_from_stats(1, 1, 10, 2, 2, 10, equal_var=False).pvalue)
    assert d.significant is False  # p = 0.18
    far = welch_test(a, Summary(3.0, 1.0, 10, None, None, "t"))
    assert far.significant is True and far.p_value < 0.001
    single = welch_test(Summary(1.0, 0.0, 1, None, None, "t"), b)
    assert single.significant is None and "needs >= 2" in single.reason
    assert welch_test(Summary(1.0, 0.0, 5, None, None, "t"), Summary(1.0, 0.0, 5, None, None, "t")).significant is False


def test_summaries_pool_samples_and_average_seeds() -> None:
    specs = (MetricSpec("ok", "sample", binary=True), MetricSpec("spread", "seed", higher_is_better=False))
    results = [SeedResult(0, ["a", "a", "b", "b"], {"ok": np.array([1, 0, 1, 1])}, {"spread": 2.0}),
               SeedResult(1, ["a", "a", "b", "b"], {"ok": np.array([1, 1, 0, 1])}, {"spread": 4.0})]
    metrics, groups, notes = summarize(specs, results, pass_k=[1, 2, 5])
    ok = metrics["ok"]
    assert ok["mean"] == 0.75 and ok["n"] == 8 and ok["ci_method"] == "wilson" and ok["per_seed"] == [0.75, 0.75]
    assert ok["ci95"] == pytest.approx(list(wilson_interval(6, 8)))
    spread = metrics["spread"]  # t(0.975, 1) = 12.7062, se = 1
    assert spread["mean"] == 3.0 and spread["n"] == 2 and not spread["higher_is_better"]
    assert spread["ci95"] == pytest.approx([3 - 12.7062, 3 + 12.7062], abs=1e-3)
    assert metrics["ok/pass@1"]["mean"] == pytest.approx(0.75) and metrics["ok/pass@2"]["mean"] == 1.0
    assert "ok/pass@5" not in metrics and any("pass@5 skipped" in n for n in notes)
    assert groups == {"a": {"n": 4, "ok": 0.75, "ok/pass@1": 0.75, "ok/pass@2": 1.0},
                      "b": {"n": 4, "ok": 0.75, "ok/pass@1": 0.75, "ok/pass@2": 1.0}}


# ----------------------------------------------------------------------------- benchmark formats
GENEVAL_ROWS = [
    {"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"},
    {"tag": "counting", "include": [{"class": "clock", "count": 2}], "exclude": [{"class": "clock", "count": 3}],
     "prompt": "a photo of two clocks"},
    {"tag": "position", "include": [{"class": "dog", "count": 1},
                                    {"class": "cat", "count": 1, "position": ["right of", 0]}],
     "prompt": "a photo of a cat right of a dog"},
    {"tag": "color_attr", "include": [{"class": "bus", "count": 1, "color": "blue"},
                                      {"class": "car", "count": 1, "color": "red"}], "prompt": "a blue bus and a red car"},
]


def _write_geneval(folder: Path, rows: list, extra_lines: tuple[str, ...] = ()) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / "evaluation_metadata.jsonl"
    file.write_text("\n".join([json.dumps(r) for r in rows] + list(extra_lines)) + "\n")
    return file


def test_geneval_metadata_is_read_and_bad_rows_are_located(tmp_path: Path) -> None:
    file = _write_geneval(tmp_path / "geneval" / "prompts", GENEVAL_ROWS)
    prompts = load_geneval_metadata(tmp_path / "geneval")  # a folder with prompts/evaluation_metadata.jsonl
    assert [p.tag for p in prompts] == ["single_object", "counting", "position", "color_attr"]
    assert prompts[1].exclude[0].count == 3 and prompts[2].include[1].position == ("right of", 0)
    assert prompts[3].include[0].color == "blue" and load_geneval_metadata(file) == prompts

    cases = [
        ('{"tag": "single_object", "prompt": "x"}', "line 5: include: expected a non-empty list"),
        ('{"tag": "counting", "include": [{"class": "cat", "count": "two"}], "prompt": "x"}',
         "line 5: include[0].count: expected an integer >= 1"),
        ('{"tag": "position", "include": [{"class": "cat", "position": ["left of", 3]}], "prompt": "x"}',
         "line 5: include[0].position: reference index 3 is outside include[0..0]"),
        ('{"tag": "colors", "include": [{"class": "cat"}], "prompt": "x", "promt": "y"}', "line 5: promt: unknown key"),
        ('{"tag": "colors", "include": [{"class": "cat"}], "prompt": ', "line 5: expected one JSON object per line"),
    ]
    for line, message in cases:
        bad = _write_geneval(tmp_path / "bad", GENEVAL_ROWS, (line,))
        with pytest.raises(BenchmarkFormatError) as err:
            load_geneval_metadata(bad)
        assert str(err.value).startswith(f"{bad}: {message}"), str(err.value)
    with pytest.raises(FileNotFoundError, match="evaluation_metadata.jsonl"):
        load_geneval_metadata(tmp_path / "nowhere")


def test_vbench_prompt_lists_and_full_info(tmp_path: Path) -> None:
    root = tmp_path / "VBench"
    (root / "prompts" / "prompts_per_dimension").mkdir(parents=True)
    (root / "prompts" / "all_dimension.txt").write_text("a cat running\na red car on a road\n\n")
    (root / "prompts" / "prompts_per_dimension" / "subject_consistency.txt").write_text("a cat running\n")
    (root / "VBench_full_info.json").write_text(json.dumps([
        {"prompt_en": "a cat running", "dimension": ["subject_consistency", "motion_smoothness"]},
        {"prompt_en": "a red car on a road", "dimension": ["color"], "auxiliary_info": {"color": {"color": "red"}}},
    ]))
    assert [p.prompt for p in load_vbench_prompts(root)] == ["a cat running", "a red car on a road"]
    one = load_vbench_prompts(root, "subject_consistency")
    assert one[0].prompt == "a cat running" and one[0].dimensions == ("subject_consistency",)
    full = load_vbench_full_info(root)
    assert full[0].dimensions == ("subject_consistency", "motion_smoothness") and full[1].prompt == "a red car on a road"

    with pytest.raises(FileNotFoundError, match="did you mean 'subject_consistency'"):
        load_vbench_prompts(root, "subject_consistancy")
    gap = tmp_path / "gap.txt"
    gap.write_text("one\n\nthree\n")
    with pytest.raises(BenchmarkFormatError, match=r"gap.txt: line 2: empty line; expected one prompt per line"):
        load_prompt_list(gap)
    bad = tmp_path / "VBench_full_info.json"
    bad.write_text(json.dumps([{"prompt_en": "ok", "dimension": ["color"]}, {"prompt_en": "x", "dimension": "color"}]))
    with pytest.raises(BenchmarkFormatError, match=r"entry \[1\].dimension: expected a non-empty list of dimension names"):
        load_vbench_full_info(bad)


# ----------------------------------------------------------------------------- genrl eval / compare
@pytest.fixture(scope="module")
def cache_env(tmp_path_factory):
    """The same cache the conftest gives each test (module fixtures run before it)."""
    if "GENRL_CACHE" not in os.environ or os.environ.get("GENRL_TEST_PRIVATE_CACHE"):
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("GENRL_CACHE", str(tmp_path_factory.getbasetemp() / "genrl_cache"))
            yield os.environ["GENRL_CACHE"]
    else:
        yield os.environ["GENRL_CACHE"]


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny_base")
    assert main(["pretrain", str(ROOT / "recipes/smoke/pretrain_tiny.yaml"), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def evaluated(tiny_base, cache_env, tmp_path_factory) -> tuple[Path, Path]:
    """The same checkpoint and seed evaluated twice: once by the installed CLI, once in-process."""
    work = tmp_path_factory.mktemp("eval")
    args = ["eval", str(tiny_base), "--benchmark", "digits", "--n", "2", "--seeds", "2", TINY_JUDGE]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GENRL_CACHE": cache_env}
    proc = subprocess.run([sys.executable, "-m", "genrl.cli", *args, "--out", str(work / "a")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cwd = os.getcwd()
    try:
        os.chdir(ROOT)  # the judge recipe is given relative to the project
        assert main([*args, "--out", str(work / "b")]) == 0
    finally:
        os.chdir(cwd)
    return work / "a", work / "b"


def test_eval_writes_every_metric_with_intervals_and_is_deterministic(evaluated) -> None:
    a, b = evaluated
    assert (a / "metrics.json").read_bytes() == (b / "metrics.json").read_bytes()
    data = json.loads((a / "metrics.json").read_text())
    assert data["benchmark"]["name"] == "digits" and data["seeds"] == [1234, 1235]
    assert data["samples_per_seed"] == 20 and data["checkpoint"]["policy"] == "flow_image"
    m = data["metrics"]
    assert set(m) == {"judge_accuracy", "judge_accuracy/pass@1", "stroke_crispness", "diversity",
                      "frechet_judge_features"}
    for name, entry in m.items():
        assert {"mean", "std", "n", "ci95", "ci_method", "higher_is_better"} <= set(entry), name
        lo, hi = entry["ci95"]
        assert lo <= entry["mean"] <= hi, name
    assert (m["judge_accuracy"]["ci_method"], m["judge_accuracy"]["n"]) == ("wilson", 40)
    assert (m["diversity"]["ci_method"], m["diversity"]["n"], len(m["diversity"]["per_seed"])) == ("t", 2, 2)
    assert m["judge_accuracy/pass@1"]["mean"] == pytest.approx(m["judge_accuracy"]["mean"])
    assert any("pass@10 skipped" in n for n in data["notes"])
    assert len(data["per_group"]) == 10 and data["per_group"]["digit 3"]["n"] == 4
    md = (a / "report.md").read_text()
    assert "| judge_accuracy |" in md and "](assets/samples_seed1234.png)" in md


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=120)


_MARKER = ('<script>window.addEventListener("load", () => {const im = [...document.images];'
           'document.body.dataset.images = im.length + ":" + im.filter(i => i.complete && i.naturalWidth > 0).length;'
           "});</script></body>")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (CI installs it: apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(evaluated, tmp_path) -> None:
    report = evaluated[0] / "report.html"
    probe = report.with_name("probe.html")  # next to the report, so the relative image paths resolve
    probe.write_text(report.read_text().replace("</body>", _MARKER))
    dom = _chromium("--dump-dom", probe.as_uri(), profile=tmp_path / "profile").stdout
    assert 'data-images="2:2"' in dom, dom[-2000:]  # both pictures loaded, with a width
    assert dom.count("<table>") == 4 and "judge_accuracy/pass@1" in dom and "Per prompt" in dom
    broken = report.with_name("broken.html")  # the probe itself can tell a broken picture
    broken.write_text(probe.read_text().replace("assets/samples_seed1234.png", "assets/missing.png"))
    assert 'data-images="2:1"' in _chromium("--dump-dom", broken.as_uri(), profile=tmp_path / "profile").stdout
    shot = evaluated[0] / "report_screenshot.png"
    _chromium(f"--screenshot={shot}", "--window-size=1200,1600", report.as_uri(), profile=tmp_path / "profile")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def _metrics_file(path: Path, benchmark: str, metrics: dict) -> Path:
    path.mkdir(parents=True)
    (path / "metrics.json").write_text(json.dumps({"format": "genrl-eval/1", "benchmark": {"name": benchmark, "config": {}},
                                                   "checkpoint": {}, "seeds": [0, 1, 2], "metrics": metrics}))
    return path


def test_compare_tables_differences_against_the_seed_noise(evaluated, tmp_path, capsys) -> None:
    def entry(mean, std, n, higher=True):
        return {"mean": mean, "std": std, "n": n, "ci95": None, "ci_method": "t", "higher_is_better": higher}

    a = _metrics_file(tmp_path / "a", "digits", {"acc": entry(0.80, 0.02, 3), "fd": entry(40.0, 5.0, 3, False)})
    b = _metrics_file(tmp_path / "b", "digits", {"acc": entry(0.90, 0.02, 3), "fd": entry(38.0, 5.0, 3, False)})
    c = _metrics_file(tmp_path / "c", "digits", {"acc": entry(0.81, 0.0, 1), "fd": entry(20.0, 1.0, 3, False)})
    assert main(["compare", str(a), str(b / "metrics.json"), str(c), "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert "| acc | 0.8 | 0.9 | +0.1 | yes, better (p=" in out  # Welch: t = 6.12, df = 4
    assert "| fd | 40 | 38 | -2 | no (p=" in out
    assert "n/a (n = 3 vs 1; needs >= 2 on each side)" in out and "yes, better (p=0.0" in out.split("| fd |")[1]
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert saved["rows"][0]["vs_first"][0]["significant"] is True and "Welch" in saved["rule"]

    other = _metrics_file(tmp_path / "geneval", "geneval", {"acc": entry(0.5, 0.1, 3)})
    assert main(["compare", str(a), str(other)]) == 2
    assert "same benchmark" in capsys.readouterr().err
    assert main(["compare", str(evaluated[0]), str(evaluated[1])]) == 0  # real eval outputs: identical, no noise
    assert "| diversity |" in capsys.readouterr().out


@pytest.fixture
def nothing_loads(monkeypatch):
    """Fail the test if any model (policy or judge) is loaded."""
    import genrl.eval.digits
    import genrl.sampling

    def forbidden(*_, **__):
        raise AssertionError("a model was loaded before the request was checked")

    monkeypatch.setattr(genrl.sampling, "load_policy_for_sampling", forbidden)
    monkeypatch.setattr(genrl.eval.digits.DigitsBenchmark, "__init__", forbidden)


@pytest.fixture
def folder_benchmark():
    """A benchmark that reads a downloaded GenEval folder (no such domain ships yet)."""
    from dataclasses import dataclass

    from genrl.config.validate import option
    from genrl.registry import BENCHMARKS

    class FolderPrompts:
        @dataclass
        class Config:
            data_dir: str | None = option(default=None, help="GenEval prompts folder.")
            n_per_prompt: int = option(default=1, help="Samples per prompt.")

        policy_types = ("flow_image",)
        data_files = ("evaluation_metadata.jsonl",)
        metrics = ()

        @classmethod
        def check_inputs(cls, config, *, recipe_file=None):
            load_geneval_metadata(config.data_dir)

    BENCHMARKS.register("folder_prompts_test")(FolderPrompts)
    yield "folder_prompts_test"
    BENCHMARKS._entries.pop("folder_prompts_test")


def test_bad_requests_fail_with_status_2_before_any_model_loads(tiny_base, tmp_path, capsys, nothing_loads,
                                                                folder_benchmark) -> None:
    def fails(*args: str) -> str:
        assert main(["eval", *map(str, args)]) == 2
        return capsys.readouterr().err

    assert "unknown benchmark 'digts': expected one of" in fails(tiny_base, "--benchmark", "digts")
    assert "did you mean 'digits'?" in fails(tiny_base, "--benchmark", "digts")
    classifier = tmp_path / "judge"
    classifier.mkdir()
    (classifier / "checkpoint.json").write_text(json.dumps({"kind": "digit_classifier", "split": "judge"}))
    err = fails(classifier, "--benchmark", "digits")
    assert "holds a 'digit_classifier' model, not a generative policy" in err and "['flow_image']" in err
    assert "no such run directory or checkpoint" in fails(tmp_path / "nope", "--benchmark", "digits")
    assert "option n_per_prompt: must be >= 2" in fails(tiny_base, "--benchmark", "digits", "--n", "1")
    assert "option judge_recipe: recipe file 'nope.yaml' not found" in fails(
        tiny_base, "--benchmark", "digits", "judge_recipe=nope.yaml")
    assert "brings its own data; it takes no data folder" in fails(tiny_base, "--benchmark", "digits", "--data", tmp_path)

    err = fails(tiny_base, "--benchmark", folder_benchmark, "--data", tmp_path / "geneval_download")
    assert f"data folder {tmp_path / 'geneval_download'} does not exist" in err
    assert "expected a folder with evaluation_metadata.jsonl" in err
    assert "needs its data folder: pass --data DIR" in fails(tiny_base, "--benchmark", folder_benchmark)
    bad = _write_geneval(tmp_path / "geneval_bad", GENEVAL_ROWS, ('{"tag": "colors", "prompt": "x"}',))
    err = fails(tiny_base, "--benchmark", folder_benchmark, "--data", bad.parent)
    assert f"{bad}: line 5: include: expected a non-empty list" in err


# ----------------------------------------------------------------------------- training-loop use
def test_training_recipes_eval_section_uses_the_same_benchmark(tmp_path, cache_env) -> None:
    from tests.helpers import make_trainer

    cwd = os.getcwd()
    try:
        os.chdir(ROOT)
        trainer = make_trainer(tmp_path / "run", "trainer.steps=1",
                               "eval={name: digits, n_per_prompt: 2, judge_recipe: recipes/smoke/judge_tiny.yaml}")
        results = trainer.train()
    finally:
        os.chdir(cwd)
    before = json.loads((tmp_path / "run" / "eval" / "before.json").read_text())
    assert set(before) >= {"judge_accuracy", "diversity", "frechet_judge_features", "reward/stroke_crispness"}
    assert before["stroke_crispness"] == pytest.approx(before["reward/stroke_crispness"], abs=1e-6)
    assert results["after"].keys() == before.keys()
    assert (tmp_path / "run" / "samples_before_after.png").read_bytes()[:4] == b"\x89PNG"


def test_periodic_evaluator_writes_metrics_and_tracks_the_best_checkpoint(tmp_path) -> None:
    from genrl.eval.periodic import PeriodicEvaluator

    class Scripted:  # a benchmark whose score is whatever the "policy" says
        config = None
        metrics = (MetricSpec("score", "seed"), MetricSpec("ok", "sample", binary=True))

        def run(self, policy, seed):
            return SeedResult(seed, ["p", "p"], {"ok": np.array([1.0, 0.0])}, {"score": policy + seed / 100})

    ckpts = []
    for step in (1, 2, 3):
        (tmp_path / f"ck{step}").mkdir()
        (tmp_path / f"ck{step}" / "policy.safetensors").write_text(str(step))
        ckpts.append(tmp_path / f"ck{step}")
    ev = PeriodicEvaluator(Scripted(), tmp_path / "eval", name="scripted", seeds=[0, 1], select="score",
                           keep_best_dir=tmp_path / "best")
    assert ev(0.5, step=1, checkpoint=ckpts[0])[1] is True
    assert ev(0.9, step=2, checkpoint=ckpts[1])[1] is True
    result, improved = ev(0.7, step=3, checkpoint=ckpts[2])
    assert not improved and result.metrics["score"]["mean"] == pytest.approx(0.705)
    assert json.loads((tmp_path / "eval" / "step_00000003" / "metrics.json").read_text())["seeds"] == [0, 1]
    best = json.loads((tmp_path / "eval" / "best.json").read_text())["best"]
    assert best["step"] == 2 and best["value"] == pytest.approx(0.905)
    assert (tmp_path / "best" / "policy.safetensors").read_text() == "2"
    resumed = PeriodicEvaluator(Scripted(), tmp_path / "eval", name="scripted", seeds=[0, 1], select="score")
    assert resumed(0.8, step=4)[1] is False  # the best of the whole run survives a restart
    with pytest.raises(ValueError, match="unknown metric 'scor'"):
        PeriodicEvaluator(Scripted(), tmp_path / "x", name="scripted", seeds=[0], select="scor")


def test_training_evaluates_on_a_cadence_logs_it_and_keeps_the_best_checkpoint(tmp_path, cache_env) -> None:
    from genrl.trainer.checkpoint import verify_checkpoint
    from tests.helpers import make_trainer

    trainer = make_trainer(tmp_path / "run", "trainer.steps=2", "trainer.checkpoint_every=0",
                           "eval={name: digits, n_per_prompt: 2, judge_recipe: recipes/smoke/judge_tiny.yaml}",
                           "eval_schedule={every: 1, seeds: 2, select: judge_accuracy}")
    trainer.train()
    run = tmp_path / "run"
    for step in (1, 2):
        metrics = json.loads((run / "eval" / f"step_{step:08d}" / "metrics.json").read_text())
        assert metrics["seeds"] == [1234, 1235] and "ci95" in json.dumps(metrics["metrics"]["judge_accuracy"])
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert sum("eval/judge_accuracy/mean" in row for row in lines) == 2
    best = json.loads((run / "eval" / "best.json").read_text())
    assert best["metric"] == "judge_accuracy" and best["best"]["step"] in (1, 2)
    verify_checkpoint(run / "checkpoints" / "best")  # an intact copy, outside the pruned rotation
    from genrl.trainer.checkpoint import latest_checkpoint

    assert latest_checkpoint(run).name == "step_00000002"


def test_a_selection_metric_the_benchmark_lacks_is_a_recipe_error(tmp_path) -> None:
    from genrl.config.validate import RecipeError
    from tests.helpers import smoke_recipe

    with pytest.raises(RecipeError, match=r"eval_schedule: select 'acc' is not a metric of 'digits'"):
        smoke_recipe("eval={name: digits}", "eval_schedule={every: 1, select: acc}")
