"""The image+text reward model (``image_text``): it learns a text-conditional preference, its folder
is self-contained (tokenizer inside), unknown words are [UNK], and its recipe validates."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from genrl.config.load import load_recipe
from genrl.config.validate import build
from genrl.preference.data import PreferencePairs, save_pairs
from genrl.preference.loss import pairwise_accuracy
from genrl.preference.models import load_reward_model, save_reward_model
from genrl.preference.models.image_text import (
    UNK,
    ImageTextRewardModel,
    build_word_tokenizer,
    vocab_from_texts,
)
from genrl.preference.train import RewardModelTrainer, RewardTrainRecipe
from tests.helpers import ROOT, reset_accelerate

TINY = {"name": "image_text", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 64, "patch_size": 4}
PROMPTS = {"bright": ("bright", "a bright image", "show me a bright picture"),
           "dark": ("dark", "a dark image", "show me a dark picture")}


def planted_pairs(n: int, seed: int) -> PreferencePairs:
    """Pairs of noisy 8x8 images of two brightness levels; a "bright" prompt prefers the brighter one,
    a "dark" prompt the darker one, so no image-only score can rank both kinds of pair."""
    g = torch.Generator().manual_seed(seed)
    lo = torch.rand(n, generator=g) * 0.4 + 0.1
    hi = lo + 0.2 + torch.rand(n, generator=g) * 0.2  # a clear gap: the label is never noise
    swap = torch.rand(n, generator=g) < 0.5
    level = torch.stack([torch.where(swap, hi, lo), torch.where(swap, lo, hi)], 1)
    images = (level[:, :, None, None, None] + 0.15 * torch.randn(n, 2, 1, 8, 8, generator=g)).clamp(0, 1)
    want_bright = torch.rand(n, generator=g) < 0.5
    brighter_first = level[:, 0] > level[:, 1]
    first_wins = brighter_first == want_bright
    chosen = torch.where(first_wins[:, None, None, None], images[:, 0], images[:, 1])
    rejected = torch.where(first_wins[:, None, None, None], images[:, 1], images[:, 0])
    kinds = ["bright" if b else "dark" for b in want_bright.tolist()]
    contexts = [PROMPTS[k][i % 3] for i, k in enumerate(kinds)]
    return PreferencePairs(chosen, rejected, contexts, torch.zeros(n), torch.arange(n), kinds)


def tiny_recipe(tmp: Path, data: Path, **model) -> RewardTrainRecipe:
    raw = {"kind": "preference_reward", "run_dir": str(tmp / "run"), "seed": 0,
           "data": {"path": str(data), "eval_fraction": 0.2},
           "model": {**TINY, **model}, "loss": {"use_margin": False},
           "trainer": {"epochs": 8, "batch_size": 32, "micro_batch_size": 32, "lr": 3e-3, "lr_schedule": "cosine",
                       "warmup_steps": 5}}
    path = tmp / "train.yaml"
    path.write_text(yaml.safe_dump(raw))
    recipe, _ = load_recipe(path, RewardTrainRecipe)
    return recipe


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short RewardModelTrainer run on the planted pairs (shared by the tests below)."""
    tmp = tmp_path_factory.mktemp("image_text")
    data = save_pairs(planted_pairs(320, seed=0), tmp / "pairs.parquet", "parquet")
    trainer = RewardModelTrainer(tiny_recipe(tmp, data), recipe_file=str(tmp / "train.yaml"))
    result = trainer.train(resume=False)
    reset_accelerate()
    return trainer, result


def test_learns_text_conditional_preference(trained):
    trainer, result = trained
    assert result["eval/accuracy"] >= 0.9, result
    assert {"eval/accuracy/bright", "eval/accuracy/dark"} <= set(result)
    # The text matters: with the prompts swapped (bright <-> dark), the ranking flips.
    held = trainer.eval_pairs
    swapped = [PROMPTS["dark" if k == "bright" else "bright"][0] for k in held.label_source]
    model = trainer.model.eval()
    with torch.no_grad():
        r_c, r_r = model(held.chosen, swapped), model(held.rejected, swapped)
    assert float(pairwise_accuracy(r_c, r_r)) <= 0.1


def test_save_reload_identical_scores_and_tokenizer_inside(trained):
    trainer, result = trained
    model_dir = Path(result["model_dir"])
    assert (model_dir / "tokenizer" / "tokenizer.json").is_file()
    loaded, info = load_reward_model(model_dir)
    assert info["context_kind"] == "text" and info["architecture"] == "image_text"
    held = trainer.eval_pairs
    with torch.no_grad():
        assert torch.equal(loaded(held.chosen, held.contexts), trainer.model.eval()(held.chosen, held.contexts))


def test_tokenizer_path_folder_is_copied_and_self_contained(tmp_path):
    tok_dir = tmp_path / "my_tokenizer"
    build_word_tokenizer(vocab_from_texts(["a bright image", "a dark image"])).save_pretrained(str(tok_dir))
    config = build(ImageTextRewardModel.Config, {**{k: v for k, v in TINY.items() if k != "name"},
                                                 "tokenizer_path": str(tok_dir)})
    torch.manual_seed(0)
    model = ImageTextRewardModel(config, sample_shape=(1, 8, 8)).eval()
    assert model.backbone.get_input_embeddings().num_embeddings == 3 + 4  # [PAD] [UNK] [EOS] a bright dark image
    x, ctx = torch.rand(3, 1, 8, 8), ["a bright image", "a dark image", "bright"]
    out = save_reward_model(model, tmp_path / "model", {"context_kind": "text"})
    shutil.rmtree(tok_dir)  # the model folder must not need the original tokenizer
    loaded, _ = load_reward_model(out)
    with torch.no_grad():
        assert torch.equal(loaded(x, ctx), model(x, ctx))


def test_unknown_words_map_to_unk():
    config = build(ImageTextRewardModel.Config, {k: v for k, v in TINY.items() if k != "name"})
    model = ImageTextRewardModel(config, sample_shape=(1, 8, 8)).eval()
    unk = model.tokenizer.convert_tokens_to_ids(UNK)
    ids, lengths = model.encode(["a zebra quagga", "Bright", ""])
    assert ids[0, 1].item() == unk and ids[0, 2].item() == unk and ids[0, 0].item() != unk
    assert ids[1, 0].item() != unk  # lower-cased into the vocabulary
    assert lengths.tolist() == [4, 2, 1]  # words + [EOS]
    with torch.no_grad():
        r = model(torch.rand(3, 1, 8, 8), ["a zebra quagga", "Bright", ""])
    assert r.shape == (3,) and torch.isfinite(r).all()
    with pytest.raises(ValueError, match="3 strings"):
        model(torch.rand(3, 1, 8, 8), ["only one"])


def test_recipe_validates():
    recipe, _ = load_recipe(ROOT / "reward_models/digit_image_text/train.yaml", RewardTrainRecipe)
    assert recipe.model.name == "image_text" and recipe.model.config.model_type == "llama"
