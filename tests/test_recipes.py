"""The project's recipes, checked torchtune-style: every YAML under ``recipes/`` and ``reward_models/``
validates against its schema (without loading weights or building anything), the recipes they
reference exist, and every kind of mistake in a training recipe is reported before any work starts,
naming the file, the key path and what was expected.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from genrl.cache import resolve_recipe_path
from genrl.config.load import load_recipe, load_yaml
from genrl.config.validate import RecipeError
from genrl.drive.collect import CollectRecipe
from genrl.drive.evaluate import DriveEvalRecipe
from genrl.drive.labels import SceneLabelRecipe
from genrl.preference.labelling import LabelRecipe
from genrl.preference.train import RewardTrainRecipe
from genrl.pretrain.ar_video import ARVideoPretrainRecipe
from genrl.pretrain.classifier import ClassifierRecipe
from genrl.pretrain.flow_image import FlowPretrainRecipe
from genrl.pretrain.scene_diffusion import SceneDiffusionPretrainRecipe
from genrl.pretrain.vlm_sft import VLMSFTRecipe
from genrl.recipe import TrainRecipe

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "recipes" / "smoke" / "flow_grpo_tiny.yaml"
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
ACCELERATE_DIR = ROOT / "recipes" / "accelerate"
# Recipes that make an artifact name their kind: base models, classifiers, preference pairs, reward models.
PRETRAIN_SCHEMAS: dict[str, type] = {"flow_image": FlowPretrainRecipe, "digit_classifier": ClassifierRecipe,
                                     "preference_labels": LabelRecipe, "preference_reward": RewardTrainRecipe,
                                     "vlm_sft": VLMSFTRecipe, "ar_video": ARVideoPretrainRecipe,
                                     "drive_collect": CollectRecipe, "drive_eval": DriveEvalRecipe,
                                     "scene_diffusion": SceneDiffusionPretrainRecipe,
                                     "scene_preference_labels": SceneLabelRecipe}


# --------------------------------------------------------------------------- discovery


def _recipe_files() -> list[Path]:
    files: set[Path] = set()
    for folder in ("recipes", "reward_models"):
        for pattern in ("*.yaml", "*.yml"):
            files.update((ROOT / folder).rglob(pattern))
    return sorted(files)


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _raw(path: Path) -> dict[str, Any]:
    """Plain data of a file for collection-time classification; broken files are {} here and fail
    (with a proper message) in the validation test."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _kind_of(path: Path) -> str:
    if ACCELERATE_DIR in path.parents:
        return "accelerate"
    data = _raw(path)
    if "policy" in data:
        return "train"
    if data.get("kind") in PRETRAIN_SCHEMAS:
        return str(data["kind"])
    return "unknown"


RECIPE_FILES = _recipe_files()
TRAIN_FILES = [p for p in RECIPE_FILES if _kind_of(p) == "train"]


def _validate_file(path: Path) -> tuple[str, Any]:
    """Validate one recipe file against the schema its content calls for; build nothing."""
    kind = _kind_of(path)
    if kind == "accelerate":
        data = yaml.safe_load(path.read_text())
        assert isinstance(data, dict), f"{_rel(path)}: an Accelerate/DeepSpeed config must be a YAML mapping"
        return kind, data
    if kind == "train":
        config, _ = load_recipe(path, TrainRecipe)
        return kind, config
    if kind in PRETRAIN_SCHEMAS:
        config, _ = load_recipe(path, PRETRAIN_SCHEMAS[kind])
        return kind, config
    # Not classifiable: say why, in the loader's words if the YAML itself is broken.
    data = load_yaml(path)
    pytest.fail(f"{_rel(path)}: neither a training recipe (no 'policy:' key) nor a known pretraining "
                f"recipe (kind: {data.get('kind')!r}, expected one of {sorted(PRETRAIN_SCHEMAS)})")


# ------------------------------------------------------------------ 1. the recipes validate


def test_recipes_were_found() -> None:
    names = [_rel(p) for p in RECIPE_FILES]
    assert "recipes/quickstart.yaml" in names
    assert any(n.startswith("recipes/smoke/") for n in names), names
    assert _rel(QUICKSTART) in [_rel(p) for p in TRAIN_FILES]
    assert _rel(SMOKE) in [_rel(p) for p in TRAIN_FILES]


@pytest.mark.parametrize("path", RECIPE_FILES, ids=_rel)
def test_recipe_validates(path: Path) -> None:
    kind, config = _validate_file(path)
    if kind == "train":
        assert isinstance(config, TrainRecipe)
    elif kind in PRETRAIN_SCHEMAS:
        assert isinstance(config, PRETRAIN_SCHEMAS[kind]) and config.kind == kind


def _references(config: TrainRecipe) -> list[tuple[str, str, str | None]]:
    """(key path, recipe path, expected kind) of every recipe a training recipe refers to."""
    refs: list[tuple[str, str, str | None]] = []
    base = getattr(config.policy.config, "base_recipe", None)
    if base:
        refs.append(("policy.base_recipe", base, {"flow_image": "flow_image", "vlm": "vlm_sft", "ar_video": "ar_video",
                                                  "scene_diffusion": "scene_diffusion"}[config.policy.name]))
    for i, spec in enumerate(config.rewards):
        # Defaults count: the quick start's classifier reward names its recipe only by default.
        if getattr(spec.config, "checkpoint", None):
            continue
        recipe = getattr(spec.config, "recipe", None)
        if recipe:
            expected = {"digit_classifier": "digit_classifier", "learned": "preference_reward"}.get(spec.name)
            refs.append((f"rewards[{i}].recipe", recipe, expected))
    if config.eval is not None:
        judge = getattr(config.eval.config, "judge_recipe", None)
        if judge:
            refs.append(("eval.judge_recipe", judge, "digit_classifier"))
    return refs


@pytest.mark.parametrize("path", TRAIN_FILES, ids=_rel)
def test_referenced_recipes_exist_and_validate(path: Path) -> None:
    config, _ = load_recipe(path, TrainRecipe)
    for key, ref, expected_kind in _references(config):
        resolved = resolve_recipe_path(ref, referenced_from=str(path), key=key)
        kind, _ = _validate_file(resolved)
        if expected_kind is not None:
            assert kind == expected_kind, f"{_rel(path)}: {key}: {ref} is a {kind!r} recipe, expected {expected_kind!r}"


def test_quickstart_references_all_three_models() -> None:
    config, _ = load_recipe(QUICKSTART, TrainRecipe)
    keys = {key for key, _, _ in _references(config)}
    assert {"policy.base_recipe", "rewards[0].recipe", "eval.judge_recipe"} <= keys


# ------------------------------------------------------------------ 2. bad recipes


def _smoke() -> dict[str, Any]:
    return yaml.safe_load(SMOKE.read_text())


def _write(tmp_path: Path, data: dict[str, Any], name: str = "bad.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _error(path: Path, overrides: tuple[str, ...] = ()) -> RecipeError:
    with pytest.raises(RecipeError) as info:
        load_recipe(path, TrainRecipe, overrides)
    return info.value


def _check(err: RecipeError, path: Path, key: str, *expected: str, file: str | None = None) -> None:
    """The error names the file, the key path and what was expected (each fragment of ``expected``)."""
    assert err.file == (file if file is not None else str(path)), str(err)
    assert err.key == key, str(err)
    for fragment in expected:
        assert fragment in err.message, f"{fragment!r} not in {err.message!r}"
    text = str(err)
    assert text.startswith(f"{err.file}: {key}: "), text
    assert str(path) in text


def test_bad_unknown_top_level_key_suggests(tmp_path: Path) -> None:
    data = _smoke()
    data["trainr"] = data.pop("trainer")
    path = _write(tmp_path, data)
    err = _error(path)
    _check(err, path, "trainr", "unknown key", "expected one of [", "'trainer'", "did you mean 'trainer'?")


def test_bad_unknown_nested_key(tmp_path: Path) -> None:
    data = _smoke()
    data["trainer"]["lrr"] = data["trainer"].pop("lr")
    path = _write(tmp_path, data)
    _check(_error(path), path, "trainer.lrr", "unknown key", "expected one of [", "did you mean 'lr'?")


def test_bad_wrong_type(tmp_path: Path) -> None:
    data = _smoke()
    data["trainer"]["lr"] = "fast"
    path = _write(tmp_path, data)
    err = _error(path)
    _check(err, path, "trainer.lr")
    assert err.message == "expected a float, got 'fast' (str)"


def test_bad_bool_for_int(tmp_path: Path) -> None:
    data = _smoke()
    data["trainer"]["steps"] = True
    path = _write(tmp_path, data)
    err = _error(path)
    _check(err, path, "trainer.steps")
    assert err.message == "expected an integer, got True (bool)"


def test_bad_float_for_int(tmp_path: Path) -> None:
    data = _smoke()
    data["trainer"]["group_size"] = 4.0
    path = _write(tmp_path, data)
    _check(_error(path), path, "trainer.group_size", "expected an integer", "4.0 (float)")


@pytest.mark.parametrize(("section", "field", "expected"), [
    ("trainer", "group_size", "expected an integer"),
    (None, "run_dir", "expected a string"),
], ids=["trainer.group_size", "run_dir"])
def test_bad_missing_required_field(tmp_path: Path, section: str | None, field: str, expected: str) -> None:
    data = _smoke()
    (data[section] if section else data).pop(field)
    path = _write(tmp_path, data)
    key = f"{section}.{field}" if section else field
    _check(_error(path), path, key, "missing required field", expected)


def test_bad_missing_required_section(tmp_path: Path) -> None:
    data = _smoke()
    del data["explorer"]
    path = _write(tmp_path, data)
    _check(_error(path), path, "explorer", "missing required field")


def test_bad_unknown_component_name_suggests(tmp_path: Path) -> None:
    data = _smoke()
    data["explorer"]["name"] = "sdee"
    path = _write(tmp_path, data)
    _check(_error(path), path, "explorer.name", "unknown explorer 'sdee'", "expected one of ['ddpm', 'kvpo', 'noisy_image', 'sampling', 'sde', 'vogue']",
           "did you mean 'sde'?")


def test_bad_unknown_reward_name_suggests(tmp_path: Path) -> None:
    data = _smoke()
    data["rewards"][0]["name"] = "stroke_crispnes"
    path = _write(tmp_path, data)
    _check(_error(path), path, "rewards[0].name", "unknown reward 'stroke_crispnes'", "expected one of [",
           "did you mean 'stroke_crispness'?")


def test_bad_unknown_key_inside_component(tmp_path: Path) -> None:
    data = _smoke()
    data["explorer"]["noise_levl"] = data["explorer"].pop("noise_level")
    path = _write(tmp_path, data)
    _check(_error(path), path, "explorer.noise_levl", "unknown key", "expected one of [", "'name'",
           "did you mean 'noise_level'?")


def test_bad_literal_suggests(tmp_path: Path) -> None:
    data = _smoke()
    data["explorer"]["noise_rule"] = "flowgrpo"
    path = _write(tmp_path, data)
    _check(_error(path), path, "explorer.noise_rule",
           "expected one of ['flow_grpo', 'dance_grpo', 'cps'], got 'flowgrpo'", "did you mean 'flow_grpo'?")


def test_bad_top_level_literal(tmp_path: Path) -> None:
    data = _smoke()
    data["mixed_precision"] = "bf61"
    path = _write(tmp_path, data)
    _check(_error(path), path, "mixed_precision", "expected one of ['no', 'bf16', 'fp16']", "did you mean 'bf16'?")


def test_bad_cross_field_minibatch(tmp_path: Path) -> None:
    data = _smoke()
    data["trainer"]["minibatch_size"] = 7  # rollout batch is 4 x 4 = 16
    path = _write(tmp_path, data)
    _check(_error(path), path, "trainer.minibatch_size", "must divide", "prompts_per_step x group_size = 16")


def test_bad_both_base_checkpoint_and_base_recipe(tmp_path: Path) -> None:
    data = _smoke()
    data["policy"]["base_checkpoint"] = str(tmp_path / "ckpt")
    data["policy"]["base_recipe"] = "recipes/pretrain/digits_flow.yaml"
    path = _write(tmp_path, data)
    _check(_error(path), path, "policy.base_recipe", "base_checkpoint or base_recipe, not both")


def test_bad_negative_clip_range(tmp_path: Path) -> None:
    data = _smoke()
    data["objective"]["clip_range"] = -1e-3
    path = _write(tmp_path, data)
    _check(_error(path), path, "objective.clip_range", "must be > 0")


def test_bad_ema_decay_out_of_range(tmp_path: Path) -> None:
    data = _smoke()
    data["trainer"]["ema_decay"] = 1.5
    path = _write(tmp_path, data)
    _check(_error(path), path, "trainer.ema_decay", "must be in (0, 1) or null")


def test_bad_zero_steps(tmp_path: Path) -> None:
    data = _smoke()
    data["trainer"]["steps"] = 0
    path = _write(tmp_path, data)
    _check(_error(path), path, "trainer.steps", "must be >= 1")


def test_bad_reward_item_without_name(tmp_path: Path) -> None:
    data = _smoke()
    data["rewards"] = [{"weight": 1.0}]
    path = _write(tmp_path, data)
    _check(_error(path), path, "rewards[0].name", "missing required field",
           "missing required field; expected one of ['aesthetic', 'answer_accuracy', 'answer_format', 'clip_score', ")


def test_bad_empty_rewards(tmp_path: Path) -> None:
    data = _smoke()
    data["rewards"] = []
    path = _write(tmp_path, data)
    _check(_error(path), path, "rewards", "at least one reward component")


def test_bad_rewards_not_a_list(tmp_path: Path) -> None:
    data = _smoke()
    data["rewards"] = {"name": "stroke_crispness"}
    path = _write(tmp_path, data)
    _check(_error(path), path, "rewards", "expected a list")


def test_bad_override_without_value(tmp_path: Path) -> None:
    path = _write(tmp_path, _smoke(), "smoke.yaml")
    err = _error(path, ("trainer.lr",))
    _check(err, path, "<override>", "expected 'dotted.key.path=value', got 'trainer.lr'")


def test_bad_override_typo_blames_override(tmp_path: Path) -> None:
    path = _write(tmp_path, _smoke(), "smoke.yaml")
    err = _error(path, ("trainer.stepz=3",))
    _check(err, path, "trainer.stepz", "unknown key", "expected one of [", "did you mean 'steps'?",
           file=f"{path} (override 'trainer.stepz=3')")


def test_bad_override_wrong_type_blames_override(tmp_path: Path) -> None:
    path = _write(tmp_path, _smoke(), "smoke.yaml")
    err = _error(path, ("trainer.group_size=four",))
    _check(err, path, "trainer.group_size", "expected an integer, got 'four' (str)",
           file=f"{path} (override 'trainer.group_size=four')")


def test_bad_yaml_syntax_names_line(tmp_path: Path) -> None:
    lines = SMOKE.read_text().splitlines()
    i = lines.index("  lr: 1.0e-3")
    lines[i] = "  lr: [1.0e-3"  # unclosed flow sequence; the parser trips on the next line's ':'
    path = tmp_path / "bad.yaml"
    path.write_text("\n".join(lines) + "\n")
    err = _error(path)
    _check(err, path, "<root>", "invalid YAML", f"at line {i + 2}, column")


def test_bad_yaml_duplicate_key_names_line(tmp_path: Path) -> None:
    lines = SMOKE.read_text().splitlines()
    i = lines.index("  lr: 1.0e-3")
    lines.insert(i + 1, "  lr: 2.0e-3")
    path = tmp_path / "bad.yaml"
    path.write_text("\n".join(lines) + "\n")
    _check(_error(path), path, "<root>", "duplicate key 'lr'", f"line {i + 2}")


def test_bad_missing_recipe_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    _check(_error(path), path, "<root>", "file not found")


def test_smoke_fixture_itself_is_good(tmp_path: Path) -> None:
    """The mutations above start from a valid recipe (so each failure is the mutation's)."""
    config, resolved = load_recipe(_write(tmp_path, copy.deepcopy(_smoke())), TrainRecipe)
    assert config.explorer.name == "sde" and resolved["trainer"]["group_size"] == 4


# ------------------------------------------- errors found when the run is built (still before work)


def test_missing_judge_recipe_is_a_recipe_error(tmp_path: Path) -> None:
    """The digits benchmark resolves its judge through the recipe paths, naming eval.judge_recipe."""
    from genrl.eval.digits import DigitsBenchmark

    recipe_file = str(tmp_path / "bad.yaml")
    config = DigitsBenchmark.Config(judge_recipe="recipes/eval/no_such_judge.yaml")
    with pytest.raises(RecipeError) as info:
        DigitsBenchmark(config, recipe_file=recipe_file)
    _check(info.value, Path(recipe_file), "eval.judge_recipe", "'recipes/eval/no_such_judge.yaml' not found")


def test_missing_base_recipe_is_a_recipe_error(tmp_path: Path) -> None:
    from genrl.policies.flow_image import FlowImagePolicy

    recipe_file = str(tmp_path / "bad.yaml")
    config = FlowImagePolicy.Config(base_recipe="recipes/pretrain/no_such_base.yaml")
    with pytest.raises(RecipeError) as info:
        FlowImagePolicy.resolve_base(config, recipe_file=recipe_file, key="policy")
    _check(info.value, Path(recipe_file), "policy.base_recipe", "'recipes/pretrain/no_such_base.yaml' not found")


def _genrl_exe() -> str:
    local = Path(sys.executable).with_name("genrl")
    exe = str(local) if local.is_file() else shutil.which("genrl")
    assert exe, "the genrl console script is not installed"
    return exe


def _train_cli(tmp_path: Path, data: dict[str, Any]) -> tuple[subprocess.CompletedProcess[str], Path, float]:
    recipe = _write(tmp_path, data)
    env = {**os.environ, "GENRL_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    start = time.monotonic()
    proc = subprocess.run([_genrl_exe(), "train", str(recipe), "--run-dir", str(tmp_path / "run")],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    return proc, recipe, time.monotonic() - start


def _assert_nothing_started(tmp_path: Path, recipe: Path) -> None:
    assert not (tmp_path / "run").exists(), "a run directory was created before the recipe error"
    assert not (tmp_path / "cache").exists(), "something was built into the cache before the recipe error"
    assert sorted(p.name for p in tmp_path.iterdir()) == [recipe.name]
    assert not list(tmp_path.rglob("checkpoint*"))


def test_cli_missing_base_checkpoint_fails_fast(tmp_path: Path) -> None:
    data = _smoke()
    missing = tmp_path / "no_such_checkpoint"
    data["policy"]["base_checkpoint"] = str(missing)
    proc, recipe, seconds = _train_cli(tmp_path, data)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"genrl: recipe error: {recipe}: policy.base_checkpoint: "), proc.stderr
    assert f"no checkpoint at {missing}" in proc.stderr
    assert "expected a folder with checkpoint.json" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert seconds < 30
    _assert_nothing_started(tmp_path, recipe)


def test_cli_missing_reward_recipe_fails_fast(tmp_path: Path) -> None:
    data = _smoke()
    data["rewards"].insert(0, {"name": "digit_classifier", "recipe": "reward_models/no_such/train.yaml"})
    proc, recipe, seconds = _train_cli(tmp_path, data)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"genrl: recipe error: {recipe}: rewards[0].recipe: "), proc.stderr
    assert "recipe file 'reward_models/no_such/train.yaml' not found" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert seconds < 30
    _assert_nothing_started(tmp_path, recipe)


# ------------------------------------------------------------------ 4. recipe check / explain


def test_cli_recipe_check_quickstart(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GENRL_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([_genrl_exe(), "recipe", "check", "recipes/quickstart.yaml"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "ok  recipes/quickstart.yaml" in proc.stdout
    assert not (tmp_path / "cache").exists()  # checking builds nothing


def test_cli_recipe_check_bad_recipe_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from genrl.cli import main

    data = _smoke()
    data["trainer"]["lrr"] = 1e-3
    path = _write(tmp_path, data)
    assert main(["recipe", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"genrl: recipe error: {path}: trainer.lrr: unknown key"), err
    assert "did you mean 'lr'?" in err


def test_cli_recipe_explain_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    from genrl.cli import main

    assert main(["recipe", "explain"]) == 0
    out = capsys.readouterr().out
    assert "group_size: int (required)" in out
    assert "Samples per prompt (G)" in out  # the help string, not just the name
    for name in ("run_dir", "policy", "explorer", "rewards", "trainer", "minibatch_size", "ema_decay"):
        assert f"{name}:" in out
