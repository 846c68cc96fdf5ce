"""Recipe validation: every mistake names the file, the key path and what was expected."""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
import yaml

from genrl.config import (
    ComponentSpec,
    RecipeError,
    apply_overrides,
    build,
    component,
    describe,
    load_recipe,
    load_yaml,
    option,
    recipe_hash,
    to_dict,
)
from genrl.registry import Registry

# --- a toy schema ------------------------------------------------------------------------

TOY_REWARDS = Registry("rewards")


@TOY_REWARDS.register("aesthetic")
class Aesthetic:
    @dataclass
    class Config:
        weight: float = option(default=1.0, help="scale of this reward")
        model: str = option(default="clip-l", help="scorer checkpoint")


@TOY_REWARDS.register("ocr")
class Ocr:
    @dataclass
    class Config:
        weight: float = option(default=1.0, help="scale of this reward")
        lang: Literal["en", "zh"] = option(default="en", help="text language")


@dataclass
class LoraConfig:
    rank: int = option(default=8, help="LoRA rank")
    targets: list[str] = option(default=["q", "v"], help="modules to adapt")


@dataclass
class PolicyConfig:
    model: str = option(help="checkpoint path")  # required
    lora: LoraConfig | None = option(default=None, help="LoRA adapters, or null for full tuning")


@dataclass
class TrainerConfig:
    lr: float = option(default=1e-5, help="learning rate")
    steps: int = option(default=100, help="optimizer steps")
    batch_size: int = option(default=8, help="samples per step")
    minibatch_size: int = option(default=4, help="samples per backward")
    bf16: bool = option(default=True, help="bfloat16 autocast")
    optimizer: Literal["adamw", "sgd", "adafactor"] = option(default="adamw", help="optimizer")
    betas: tuple[float, ...] = option(default=(0.9, 0.999), help="Adam betas")

    def validate(self) -> None:
        if self.batch_size % self.minibatch_size:
            raise ValueError(f"minibatch_size: {self.minibatch_size} must divide batch_size {self.batch_size}")


@dataclass
class Recipe:
    policy: PolicyConfig = option(help="the policy being tuned")
    trainer: TrainerConfig = option(default_factory=TrainerConfig, help="optimisation")
    rewards: list[ComponentSpec] = component(TOY_REWARDS, default=["aesthetic"], help="reward terms")
    tags: list[str] = option(default_factory=list, help="free-form labels")
    extra: dict[str, int] = option(default_factory=dict, help="named integers")


GOOD = """\
policy:
  model: sd3.5-medium
  lora: {rank: 16}
trainer:
  lr: 1e-4
  steps: 10
rewards:
  - {name: aesthetic, weight: 0.5}
  - name: ocr
    lang: zh
"""


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    path = tmp_path / "quickstart.yaml"
    path.write_text(GOOD)
    return path


def _error(path: Path, text: str | None = None, overrides: tuple[str, ...] = ()) -> RecipeError:
    if text is not None:
        path.write_text(text)
    with pytest.raises(RecipeError) as info:
        load_recipe(path, Recipe, overrides)
    return info.value


def _edit(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new)


# --- mistakes ----------------------------------------------------------------------------


def test_unknown_top_level_key_with_suggestion(recipe: Path) -> None:
    e = _error(recipe, GOOD + "trainr: {}\n")
    assert e.file == str(recipe)
    assert e.key == "trainr"
    assert "unknown key" in e.message and "did you mean 'trainer'?" in e.message
    assert str(e).startswith(f"{recipe}: trainr: unknown key")


def test_unknown_nested_key(recipe: Path) -> None:
    e = _error(recipe, _edit(GOOD, "  steps: 10", "  stepz: 10"))
    assert e.key == "trainer.stepz"
    assert "did you mean 'steps'?" in e.message


def test_wrong_type_str_for_float(recipe: Path) -> None:
    e = _error(recipe, _edit(GOOD, "lr: 1e-4", "lr: abc"))
    assert str(e) == f"{recipe}: trainer.lr: expected a float, got 'abc' (str)"


def test_bool_for_int(recipe: Path) -> None:
    e = _error(recipe, _edit(GOOD, "steps: 10", "steps: true"))
    assert (e.key, e.message) == ("trainer.steps", "expected an integer, got True (bool)")


def test_float_for_int(recipe: Path) -> None:
    e = _error(recipe, _edit(GOOD, "steps: 10", "steps: 10.0"))
    assert (e.key, e.message) == ("trainer.steps", "expected an integer, got 10.0 (float)")


def test_int_for_bool(recipe: Path) -> None:
    e = _error(recipe, _edit(GOOD, "steps: 10", "steps: 10\n  bf16: 1"))
    assert (e.key, e.message) == ("trainer.bf16", "expected a boolean (true/false), got 1 (int)")


def test_missing_required_field(recipe: Path) -> None:
    e = _error(recipe, _edit(GOOD, "  model: sd3.5-medium\n", ""))
    assert (e.key, e.message) == ("policy.model", "missing required field; expected a string")


def test_unknown_component_name_with_suggestion(recipe: Path) -> None:
    e = _error(recipe, _edit(GOOD, "name: ocr", "name: ocrr"))
    assert e.key == "rewards[1].name"
    assert "unknown reward 'ocrr'" in e.message
    assert "expected one of ['aesthetic', 'ocr']" in e.message
    assert "did you mean 'ocr'?" in e.message


def test_component_missing_name(recipe: Path) -> None:
    e = _error(recipe, _edit(GOOD, "{name: aesthetic, weight: 0.5}", "{weight: 0.5}"))
    assert e.key == "rewards[0].name"
    assert "missing required field" in e.message and "['aesthetic', 'ocr']" in e.message


def test_unknown_key_inside_component(recipe: Path) -> None:
    e = _error(recipe, _edit(GOOD, "weight: 0.5", "wieght: 0.5"))
    assert e.key == "rewards[0].wieght"
    assert "did you mean 'weight'?" in e.message


def test_wrong_type_inside_component(recipe: Path) -> None:
    e = _error(recipe, _edit(GOOD, "weight: 0.5", "weight: [1]"))
    assert str(e) == f"{recipe}: rewards[0].weight: expected a float, got [1] (list)"


def test_bad_literal_with_suggestion(recipe: Path) -> None:
    e = _error(recipe, _edit(GOOD, "steps: 10", "steps: 10\n  optimizer: adamww"))
    assert e.key == "trainer.optimizer"
    assert "expected one of ['adamw', 'sgd', 'adafactor'], got 'adamww'" in e.message
    assert "did you mean 'adamw'?" in e.message


def test_bad_literal_inside_component(recipe: Path) -> None:
    e = _error(recipe, _edit(GOOD, "lang: zh", "lang: fr"))
    assert (e.key, e.message) == ("rewards[1].lang", "expected one of ['en', 'zh'], got 'fr' (str)")


def test_list_expected_got_scalar(recipe: Path) -> None:
    e = _error(recipe, GOOD + "tags: 0.5\n")
    assert (e.key, e.message) == ("tags", "expected a list, got 0.5 (float)")


def test_list_item_wrong_type(recipe: Path) -> None:
    e = _error(recipe, GOOD + "tags: [a, 3]\n")
    assert (e.key, e.message) == ("tags[1]", "expected a string, got 3 (int)")


def test_mapping_expected(recipe: Path) -> None:
    e = _error(recipe, _edit(GOOD, "lora: {rank: 16}", "lora: 16"))
    assert e.key == "policy.lora"
    assert "expected a mapping of LoraConfig fields, got 16 (int)" in e.message


def test_dict_value_wrong_type(recipe: Path) -> None:
    e = _error(recipe, GOOD + "extra: {a: 1, b: x}\n")
    assert (e.key, e.message) == ("extra.b", "expected an integer, got 'x' (str)")


def test_cross_field_validate(recipe: Path) -> None:
    e = _error(recipe, _edit(GOOD, "steps: 10", "steps: 10\n  batch_size: 6"))
    assert str(e) == f"{recipe}: trainer.minibatch_size: 4 must divide batch_size 6"


def test_yaml_syntax_error_names_line(recipe: Path) -> None:
    e = _error(recipe, "policy:\n  model: x\ntrainer:\n  lr: [1e-4\n  steps: 3\n")
    assert e.file == str(recipe) and e.key == "<root>"
    assert e.message == "invalid YAML at line 5, column 8: expected ',' or ']', but got ':'"
    bad = "policy:\n  model: x\n  lora: {rank: 2\nrewards: []\n"
    e = _error(recipe, bad)
    assert "line 4" in e.message  # the flow mapping is found unclosed where `rewards` starts


def test_yaml_duplicate_key(recipe: Path) -> None:
    e = _error(recipe, GOOD + "trainer: {}\n")
    assert "duplicate key 'trainer'" in e.message and "line 11" in e.message


def test_top_level_not_mapping(recipe: Path) -> None:
    e = _error(recipe, "- a\n- b\n")
    assert (e.key, e.message) == ("<root>", "expected a mapping of recipe sections at the top level, got a list")
    e = _error(recipe, "")
    assert "got an empty document" in e.message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(RecipeError) as info:
        load_yaml(path)
    assert str(info.value) == f"{path}: <root>: file not found"


def test_bad_override_syntax(recipe: Path) -> None:
    e = _error(recipe, overrides=("trainer.lr",))
    assert (e.key, e.file) == ("<override>", str(recipe))
    assert "expected 'dotted.key.path=value', got 'trainer.lr'" in e.message
    e = _error(recipe, overrides=("trainer..lr=1",))
    assert e.key == "<override>"


def test_override_creating_unknown_key(recipe: Path) -> None:
    e = _error(recipe, overrides=("trainer.lrr=1",))
    assert e.file == f"{recipe} (override 'trainer.lrr=1')"
    assert e.key == "trainer.lrr" and "did you mean 'lr'?" in e.message
    assert str(e).startswith(f"{recipe} (override 'trainer.lrr=1'): trainer.lrr: unknown key")
    # a new section under an unknown key is blamed on the override that made it
    e = _error(recipe, overrides=("trainr.lr=1",))
    assert e.file == f"{recipe} (override 'trainr.lr=1')" and e.key == "trainr"


def test_override_wrong_type_blames_override(recipe: Path) -> None:
    e = _error(recipe, overrides=("trainer.steps=1.5",))
    assert e.file == f"{recipe} (override 'trainer.steps=1.5')"
    assert (e.key, e.message) == ("trainer.steps", "expected an integer, got 1.5 (float)")


def test_override_bad_list_index(recipe: Path) -> None:
    e = _error(recipe, overrides=("rewards.5.weight=2",))
    assert e.key == "rewards[5]" and "below 2" in e.message
    assert e.file == f"{recipe} (override 'rewards.5.weight=2')"


def test_error_in_file_not_blamed_on_unrelated_override(recipe: Path) -> None:
    e = _error(recipe, _edit(GOOD, "lr: 1e-4", "lr: abc"), overrides=("trainer.steps=3",))
    assert e.file == str(recipe)


# --- things that work --------------------------------------------------------------------


def test_good_recipe_builds(recipe: Path) -> None:
    cfg, resolved = load_recipe(recipe, Recipe)
    assert cfg.policy.lora == LoraConfig(rank=16, targets=["q", "v"])
    assert cfg.trainer.lr == 1e-4 and isinstance(cfg.trainer.lr, float)
    assert cfg.trainer.betas == (0.9, 0.999)
    assert cfg.rewards == [
        ComponentSpec("aesthetic", Aesthetic.Config(weight=0.5)),
        ComponentSpec("ocr", Ocr.Config(lang="zh")),
    ]
    assert resolved["trainer"]["batch_size"] == 8  # defaults are filled in
    assert resolved["rewards"][1] == {"name": "ocr", "weight": 1.0, "lang": "zh"}


def test_overrides_nested_and_list_values(recipe: Path) -> None:
    cfg, _ = load_recipe(recipe, Recipe, [
        "trainer.lr=3e-5", "rewards.1.weight=2", "policy.lora=null", "tags=[a,b]",
        "trainer.optimizer=sgd", "extra.k=7",
    ])
    assert cfg.trainer.lr == 3e-5
    assert cfg.rewards[1].config.weight == 2.0 and isinstance(cfg.rewards[1].config.weight, float)
    assert cfg.policy.lora is None
    assert cfg.tags == ["a", "b"]
    assert cfg.trainer.optimizer == "sgd"
    assert cfg.extra == {"k": 7}


def test_apply_overrides_parses_values_and_copies() -> None:
    data = {"trainer": {"lr": 0.1}, "rewards": [{"name": "a"}, {"name": "b"}]}
    out = apply_overrides(data, ["trainer.lr=1e-4", "rewards.1.weight=2", "new.sec.x='1e3'"], file="r.yaml")
    assert out["trainer"]["lr"] == 1e-4 and isinstance(out["trainer"]["lr"], float)
    assert out["rewards"][1] == {"name": "b", "weight": 2}
    assert out["new"] == {"sec": {"x": "1e3"}}  # quoted stays a string
    assert data["trainer"]["lr"] == 0.1  # input untouched


def test_exponent_floats_parse_as_float(tmp_path: Path) -> None:
    path = tmp_path / "f.yaml"
    path.write_text("a: 1e-4\nb: 5E3\nc: '1e-4'\nd: 1.5e-3\ne: 12\n")
    assert load_yaml(path) == {"a": 1e-4, "b": 5000.0, "c": "1e-4", "d": 1.5e-3, "e": 12}
    # a string is still converted where a float is expected (e.g. data built in Python)
    assert build(TrainerConfig, {"lr": "1e-4"}).lr == 1e-4


def test_shorthand_component_string(recipe: Path) -> None:
    cfg, _ = load_recipe(recipe, Recipe, ["rewards=[ocr, aesthetic]"])
    assert cfg.rewards == [ComponentSpec("ocr", Ocr.Config()), ComponentSpec("aesthetic", Aesthetic.Config())]


def test_component_default(recipe: Path) -> None:
    recipe.write_text("policy: {model: m}\n")
    cfg, _ = load_recipe(recipe, Recipe)
    assert cfg.rewards == [ComponentSpec("aesthetic", Aesthetic.Config())]
    assert Recipe(policy=PolicyConfig(model="m")).rewards == cfg.rewards  # direct construction too


def test_round_trip_and_hash(recipe: Path) -> None:
    cfg, resolved = load_recipe(recipe, Recipe)
    assert build(Recipe, to_dict(cfg)) == cfg
    assert build(Recipe, yaml.safe_load(yaml.safe_dump(resolved))) == cfg
    h = recipe_hash(resolved)
    assert len(h) == 16 and int(h, 16) >= 0
    reordered = dict(reversed(list(resolved.items())))
    reordered["trainer"] = dict(reversed(list(resolved["trainer"].items())))
    assert recipe_hash(reordered) == h
    _, resolved2 = load_recipe(recipe, Recipe, ["trainer.steps=11"])
    assert recipe_hash(resolved2) != h


def test_error_is_picklable_and_a_value_error() -> None:
    e = RecipeError("r.yaml", "a.b", "expected a float")
    assert isinstance(e, ValueError)
    assert str(pickle.loads(pickle.dumps(e))) == "r.yaml: a.b: expected a float"
    assert str(RecipeError(None, "", "bad")) == "<root>: bad"


def test_describe_lists_fields_and_help() -> None:
    text = describe(Recipe)
    assert "policy: PolicyConfig (required)  # the policy being tuned" in text
    assert "    rank: int = 8  # LoRA rank" in text
    assert "lr: float = 1e-05  # learning rate" in text
    assert "rewards: list[ComponentSpec] of rewards ['aesthetic', 'ocr']" in text
