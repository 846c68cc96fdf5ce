"""Prompt data sets from local files: the formats, their errors, the ``text_prompts`` source and the shipped files."""

from __future__ import annotations

import copy
import json
import pickle
from pathlib import Path

import pytest
import torch

from genrl.config.validate import RecipeError, build
from genrl.data.prompt_files import PromptFileError, TextPrompt, load_prompt_records, resolve_data_path
from genrl.prompts.text_files import TextFilePrompts
from genrl.registry import PROMPTS
from genrl.rewards.clip import prompt_texts
from tests.helpers import ROOT

GENEVAL_ROW = {"tag": "counting", "include": [{"class": "dog", "count": 2}], "prompt": "a photo of two dogs"}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ----------------------------------------------------------------------------- TextPrompt
def test_text_prompt_is_its_text_and_survives_pickling() -> None:
    p = TextPrompt("a red car", {"tag": "colors", "include": [{"class": "car"}]}, 3)
    assert p == "a red car" and isinstance(p, str) and hash(p) == hash("a red car")
    assert {p: 1}["a red car"] == 1
    assert prompt_texts([p], "{}", []) == ["a red car"]
    for q in (pickle.loads(pickle.dumps(p, protocol=proto)) for proto in range(2, pickle.HIGHEST_PROTOCOL + 1)):
        assert type(q) is TextPrompt and q == p and q.metadata == p.metadata and q.index == 3
    deep = copy.deepcopy(p)
    assert deep.metadata == p.metadata and deep.metadata is not p.metadata and deep.index == 3


# ----------------------------------------------------------------------------- formats
def test_txt_strips_and_skips_blank_and_comment_lines(tmp_path) -> None:
    path = tmp_path / "p.txt"
    path.write_text("# header\n  a cat on a mat  \n\n   \nTwo dogs\n  # indented comment\n")
    records = load_prompt_records(path)
    assert records == ["a cat on a mat", "Two dogs"]
    assert [r.index for r in records] == [0, 1] and all(r.metadata == {} for r in records)


def test_jsonl_keeps_metadata_and_custom_text_key(tmp_path) -> None:
    rows = [GENEVAL_ROW, {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}],
                          "prompt": "a photo of a red car"}]
    path = write_jsonl(tmp_path / "g.jsonl", rows)
    path.write_text(path.read_text() + "\n")  # a trailing blank line is fine
    records = load_prompt_records(path)
    assert records == ["a photo of two dogs", "a photo of a red car"]
    assert records[0].metadata == {"tag": "counting", "include": [{"class": "dog", "count": 2}]}
    assert records[1].index == 1 and records[1].metadata["include"][0]["color"] == "red"
    other = write_jsonl(tmp_path / "c.jsonl", [{"caption": "x", "id": 7}])
    (rec,) = load_prompt_records(other, text_key="caption")
    assert rec == "x" and rec.metadata == {"id": 7}


def test_json_list_of_objects_or_strings(tmp_path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps(["plain text", {"prompt": "with meta", "tag": "t"}]))
    records = load_prompt_records(path)
    assert records == ["plain text", "with meta"] and records[1].metadata == {"tag": "t"} and records[1].index == 1


def test_datasets_folders_dataset_and_dataset_dict(tmp_path) -> None:
    import datasets

    data = {"prompt": ["a", "b", "c"], "tag": ["x", "y", "z"]}
    datasets.Dataset.from_dict(data).save_to_disk(str(tmp_path / "ds"))
    records = load_prompt_records(tmp_path / "ds")
    assert records == ["a", "b", "c"] and records[2].metadata == {"tag": "z"} and records[2].index == 2
    with pytest.raises(PromptFileError, match=r"ds: a single Dataset .*remove split 'train'"):
        load_prompt_records(tmp_path / "ds", split="train")

    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict(data),
                               "test": datasets.Dataset.from_dict({"prompt": ["t"], "tag": ["q"]})})
    dd.save_to_disk(str(tmp_path / "dd"))
    test = load_prompt_records(tmp_path / "dd", split="test")
    assert test == ["t"] and test[0].metadata == {"tag": "q"}
    assert load_prompt_records(tmp_path / "dd", split="train") == ["a", "b", "c"]
    with pytest.raises(PromptFileError, match=r"dd: a DatasetDict; set split to one of \['test', 'train'\]"):
        load_prompt_records(tmp_path / "dd")
    with pytest.raises(PromptFileError, match=r"dd: no split 'val'; available splits: \['test', 'train'\]"):
        load_prompt_records(tmp_path / "dd", split="val")
    with pytest.raises(PromptFileError, match=r"ds: no column 'caption' \(text_key\); columns: \['prompt', 'tag'\]"):
        load_prompt_records(tmp_path / "ds", text_key="caption")
    (tmp_path / "plain").mkdir()
    with pytest.raises(PromptFileError, match=r"plain: a folder, but not one written by .*save_to_disk"):
        load_prompt_records(tmp_path / "plain")


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(("name", "content", "message"), [
    ("p.csv", "a,b\n", r"p\.csv: unknown prompt file type '\.csv'; expected a \.txt, \.jsonl"),
    ("p.txt", "\n# only a comment\n\n", r"p\.txt: no prompts in the file"),
    ("p.jsonl", "", r"p\.jsonl: no prompts in the file"),
    ("p.jsonl", '{"prompt": "ok"}\n\n[1, 2]\n', r"p\.jsonl: line 3: expected a JSON object with a 'prompt' field, got list"),
    ("p.jsonl", '{"prompt": "ok"}\n{"text": "x", "tag": "t"}\n',
     r"p\.jsonl: line 2: no 'prompt' field \(text_key\); the record has keys \['tag', 'text'\]"),
    ("p.jsonl", '{"prompt": "  "}\n', r"p\.jsonl: line 1: 'prompt' is an empty prompt"),
    ("p.jsonl", '{"prompt": 42}\n', r"p\.jsonl: line 1: 'prompt' is int 42, expected a string"),
    ("p.jsonl", '{"prompt": "ok"}\n{"prompt": \n', r"p\.jsonl: line 2: not valid JSON"),
    ("p.json", '{"prompt": "x"}', r"p\.json: expected a JSON list of objects or strings, got dict"),
    ("p.json", '["ok", 3]', r"p\.json: item 1: expected a JSON object or a string with a 'prompt' field, got int 3"),
])
def test_bad_files_name_the_file_and_the_line(tmp_path, name, content, message) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(PromptFileError, match=message) as info:
        load_prompt_records(path)
    assert str(path) in str(info.value)


def test_missing_files_and_stray_split(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=rf"nope\.txt: prompt file not found \(relative to the working directory {tmp_path}\)"):
        load_prompt_records("nope.txt")
    with pytest.raises(FileNotFoundError, match=rf"'data/nope\.jsonl' not found \(looked in {tmp_path} and {ROOT}\)"):
        resolve_data_path("data/nope.jsonl")
    (tmp_path / "p.txt").write_text("a\n")
    with pytest.raises(PromptFileError, match=r"p\.txt: split 'train' given, but only a DatasetDict folder has splits"):
        load_prompt_records("p.txt", split="train")


def test_relative_paths_resolve_from_cwd_then_project_root(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_data_path("data/prompts/simple_scenes.txt") == ROOT / "data/prompts/simple_scenes.txt"
    (tmp_path / "data/prompts").mkdir(parents=True)
    (tmp_path / "data/prompts/simple_scenes.txt").write_text("local\n")
    assert resolve_data_path("data/prompts/simple_scenes.txt") == tmp_path / "data/prompts/simple_scenes.txt"


# ----------------------------------------------------------------------------- the prompt source
def source(tmp_path: Path, n: int, seed: int = 0, **fields) -> TextFilePrompts:
    path = tmp_path / "p.txt"
    path.write_text("".join(f"prompt {i}\n" for i in range(n)))
    cls = PROMPTS.get("text_prompts")
    return cls(build(cls.Config, {"path": str(path), **fields}), seed=seed)


def test_sampling_is_keyed_and_covers_each_epoch(tmp_path) -> None:
    src = source(tmp_path, 12)
    assert type(src) is TextFilePrompts and len(src) == 12 and TextFilePrompts.policies == ("flow_image", "flow_video")
    assert torch.equal(src.sample(5, 4), source(tmp_path, 12).sample(5, 4))
    assert not torch.equal(src.sample(5, 4), source(tmp_path, 12, seed=1).sample(5, 4))
    for epoch in range(3):  # 3 steps x 4 = 12 rows: each epoch is a permutation, disjoint slices
        rows = torch.cat([src.sample(3 * epoch + s, 4) for s in range(3)])
        assert sorted(rows.tolist()) == list(range(12))
    assert not torch.equal(torch.cat([src.sample(s, 4) for s in range(3)]), torch.cat([src.sample(s, 4) for s in range(3, 6)]))
    stream = torch.cat([src.sample(s, 5) for s in range(5)])  # steps of 5 straddle the epochs of 12
    assert sorted(stream[:12].tolist()) == list(range(12)) and sorted(stream[12:24].tolist()) == list(range(12))
    refill = src.sample(5, 4, round=1)
    assert refill.dtype == torch.long and refill.shape == (4,) and int(refill.max()) < 12
    assert not torch.equal(refill, src.sample(5, 4)) and not torch.equal(refill, src.sample(5, 4, round=2))
    assert torch.equal(refill, src.sample(5, 4, round=1))
    items = src.items(torch.tensor([3, 0]))
    assert items == ["prompt 3", "prompt 0"] and [p.index for p in items] == [3, 0]


def test_limit_keeps_the_first_rows(tmp_path) -> None:
    src = source(tmp_path, 10, limit=4)
    assert len(src) == 4 and sorted(src.sample(0, 4).tolist()) == [0, 1, 2, 3]
    assert len(source(tmp_path, 3, limit=10)) == 3


def test_config_errors_name_the_key(tmp_path) -> None:
    cls = PROMPTS.get("text_prompts")
    good = tmp_path / "p.jsonl"
    write_jsonl(good, [GENEVAL_ROW])
    with pytest.raises(RecipeError, match=r"prompts\.pth: unknown key; .*did you mean 'path'"):
        build(cls.Config, {"pth": str(good)}, key="prompts")
    with pytest.raises(RecipeError, match=r"prompts\.path: missing required field"):
        build(cls.Config, {}, key="prompts")
    with pytest.raises(RecipeError, match=r"prompts\.path: required"):
        build(cls.Config, {"path": ""}, key="prompts")
    with pytest.raises(RecipeError, match=r"prompts\.limit: must be >= 1"):
        build(cls.Config, {"path": str(good), "limit": 0}, key="prompts")
    with pytest.raises(RecipeError, match=r"r\.yaml: prompts\.path: .*'nope\.txt' not found"):
        build(cls.Config, {"path": "nope.txt"}, file="r.yaml", key="prompts")
    # A bad row is reported at recipe validation, before any model is built.
    with pytest.raises(RecipeError, match=rf"prompts\.path: {good}: line 1: no 'caption' field"):
        build(cls.Config, {"path": str(good), "text_key": "caption"}, key="prompts")


# ----------------------------------------------------------------------------- shipped files
def test_shipped_prompt_files_load() -> None:
    scenes = load_prompt_records(ROOT / "data/prompts/simple_scenes.txt")
    assert len(scenes) >= 30 and len(set(scenes)) == len(scenes)
    geneval = load_prompt_records(ROOT / "data/prompts/geneval_style.jsonl")
    assert len(geneval) >= 30
    tags = {"single_object", "two_object", "counting", "colors", "position", "color_attr"}
    assert {p.metadata["tag"] for p in geneval} == tags
    for p in geneval:
        include = p.metadata["include"]
        assert include and all(isinstance(o["class"], str) and o["count"] >= 1 for o in include)
        assert all(o["class"].split()[-1] in p for o in include)  # the prompt names what it asks for
        if p.metadata["tag"] in ("colors", "color_attr"):
            assert all(o["color"] in p for o in include)
        if p.metadata["tag"] == "position":
            assert include[1]["position"][1] == 0 and include[1]["position"][0] in p


def test_train_recipes_accept_text_prompts_for_flow_policies_only() -> None:
    import yaml

    from genrl.recipe import TrainRecipe

    prompts = {"name": "text_prompts", "path": "data/prompts/geneval_style.jsonl", "limit": 8}
    quickstart = {**yaml.safe_load((ROOT / "recipes/quickstart.yaml").read_text()), "prompts": prompts}
    # the quick start's model is class-conditioned: text prompts need a pipeline base
    with pytest.raises(RecipeError, match=r"prompts: 'text_prompts' gives text prompts.*set policy.pipeline.path"):
        build(TrainRecipe, quickstart, file="quickstart.yaml")
    policy = quickstart["policy"]
    quickstart["policy"] = {k: v for k, v in policy.items() if k not in ("base_recipe", "base_checkpoint")}
    quickstart["policy"]["pipeline"] = {"path": "models/sd3"}
    recipe = build(TrainRecipe, quickstart, file="quickstart.yaml")
    assert recipe.policy.name == "flow_image" and recipe.prompts.config.limit == 8
    vlm = {**yaml.safe_load((ROOT / "recipes/vlm_grpo.yaml").read_text()), "prompts": prompts}
    with pytest.raises(RecipeError, match=r"prompts: 'text_prompts' works with the policies \['flow_image', 'flow_video'\], "
                                          r"not with 'vlm'"):
        build(TrainRecipe, vlm, file="vlm_grpo.yaml")
