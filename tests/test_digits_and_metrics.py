"""Digits splits, the digit classifier, image metrics and report plots."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch

from genrl.data.digits import SPLITS, digit_split, digit_split_indices, load_digit_images
from genrl.eval.image_metrics import frechet_distance, per_prompt_diversity, prompt_accuracy, stroke_crispness
from genrl.eval.plots import DPI, grid_figure_size, save_curve_png, save_grid_png
from genrl.models.digit_classifier import (
    DigitClassifier,
    DigitClassifierConfig,
    load_classifier,
    save_classifier,
    train_classifier,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def reward_classifier() -> tuple[DigitClassifier, dict]:
    images, labels = digit_split("reward")
    return train_classifier(
        images,
        labels,
        DigitClassifierConfig(),
        epochs=40,
        lr=3e-3,
        batch_size=64,
        seed=0,
        augment=True,
        val_fraction=0.1,
        progress=False,
    )


def test_load_digit_images() -> None:
    images, labels = load_digit_images()
    assert images.shape == (1797, 8, 8) and images.dtype == torch.float32
    assert labels.shape == (1797,) and labels.dtype == torch.int64
    assert images.min() == 0.0 and images.max() == 1.0


def test_splits_sizes_disjoint_stratified() -> None:
    indices = {name: digit_split_indices(name) for name in SPLITS}
    assert {name: len(idx) for name, idx in indices.items()} == {
        "generator": 899,
        "reward": 449,
        "judge": 449,
    }
    everything = torch.cat(list(indices.values()))
    assert len(torch.unique(everything)) == 1797 == len(everything)  # a partition: disjoint and complete
    all_images, all_labels = load_digit_images()
    class_counts = torch.bincount(all_labels, minlength=10).double()
    for name, share in (("generator", 0.5), ("reward", 0.25), ("judge", 0.25)):
        images, labels = digit_split(name)
        assert torch.equal(images, all_images[indices[name]]) and torch.equal(
            labels, all_labels[indices[name]]
        )
        counts = torch.bincount(labels, minlength=10).double()
        assert (counts > 0).all()
        assert ((counts - share * class_counts).abs() <= 1.0).all()


def test_split_is_deterministic() -> None:
    torch.manual_seed(123)  # the split must not depend on the global RNG
    a = digit_split("judge")
    torch.manual_seed(456)
    b = digit_split("judge")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_unknown_split_lists_names() -> None:
    with pytest.raises(ValueError, match="generator.*reward.*judge"):
        digit_split("test")


def test_classifier_generalises_to_judge_split(reward_classifier: tuple[DigitClassifier, dict]) -> None:
    model, metrics = reward_classifier
    assert not model.training
    assert metrics["val_accuracy"] >= 0.9 and metrics["n_val"] == 45
    images, labels = digit_split("judge")
    assert prompt_accuracy(model, images, labels) >= 0.9
    assert model(images[:4, None]).shape == (4, 10)  # [B, 1, 8, 8] is accepted too
    assert model.features(images[:4]).shape == (4, DigitClassifierConfig().hidden)


def test_training_is_deterministic_and_leaves_global_rng_alone() -> None:
    images, labels = digit_split("reward")
    kwargs = dict(epochs=2, lr=3e-3, batch_size=64, seed=3, augment=True, val_fraction=0.1, progress=False)
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    a, _ = train_classifier(images, labels, DigitClassifierConfig(), **kwargs)
    assert torch.equal(torch.random.get_rng_state(), before)
    b, _ = train_classifier(images, labels, DigitClassifierConfig(), **kwargs)
    with torch.no_grad():
        assert torch.equal(a(images), b(images))


def test_save_load_round_trip(tmp_path: Path, reward_classifier: tuple[DigitClassifier, dict]) -> None:
    model, metrics = reward_classifier
    save_classifier(model, tmp_path / "clf", metrics)
    text = (tmp_path / "clf" / "config.json").read_text()
    assert text.index('"type"') < text.index('"config"') < text.index('"metrics"')
    loaded = load_classifier(tmp_path / "clf")
    images, _ = digit_split("judge")
    with torch.no_grad():
        assert torch.equal(model(images), loaded(images))


def test_load_missing_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.*config.json"):
        load_classifier(tmp_path / "nowhere")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text('{"type": "DigitClassifier", "config": {}}')
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_classifier(tmp_path / "half")


def test_diversity() -> None:
    prompts = torch.arange(3).repeat_interleave(4)
    same = torch.rand(3, 8, 8).repeat_interleave(4, dim=0)
    assert per_prompt_diversity(same, prompts) == 0.0
    gen = torch.Generator().manual_seed(0)
    low = per_prompt_diversity(same + 0.05 * torch.randn(same.shape, generator=gen), prompts)
    high = per_prompt_diversity(same + 0.2 * torch.randn(same.shape, generator=gen), prompts)
    assert 0.0 < low < high
    with pytest.raises(ValueError):
        per_prompt_diversity(same[:3], prompts[:3] * 0 + torch.arange(3))


def test_crispness() -> None:
    binary = (torch.rand(5, 8, 8) > 0.5).float()
    assert torch.allclose(stroke_crispness(binary), torch.ones(5))
    assert torch.allclose(stroke_crispness(torch.full((2, 8, 8), 0.5)), torch.zeros(2))
    assert torch.allclose(stroke_crispness(torch.full((1, 1, 8, 8), 2.0)), torch.ones(1))  # clamped
    real, _ = digit_split("reward")
    assert 0.0 < stroke_crispness(real).mean() < 1.0  # the data is not crisp


def test_frechet_distance(reward_classifier: tuple[DigitClassifier, dict]) -> None:
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(500, 16, generator=gen) @ torch.randn(16, 16, generator=gen)
    assert frechet_distance(feats, feats) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(feats, feats + 1.0) == pytest.approx(16.0, rel=1e-6)  # mean shift only
    assert frechet_distance(feats, 2.0 * feats) > 0.0
    model, _ = reward_classifier
    images, labels = digit_split("judge")
    with torch.no_grad():
        f_real = model.features(images[labels < 5])
        f_self = model.features(images[labels < 5])
        f_other = model.features(images[labels >= 5])
    assert frechet_distance(f_real, f_self) == pytest.approx(
        0.0, abs=1e-6
    )  # rank-deficient features are fine
    assert frechet_distance(f_real, f_other) > 1.0


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_grid_png(tmp_path: Path) -> None:
    images, _ = digit_split("judge")
    rows = [("before", images[:30]), ("after", images[30:50])]  # 3 and 2 grid rows of 10
    path = save_grid_png(tmp_path / "sub" / "grid.png", rows, ncols=10)
    width, height = _png_size(path)
    w_in, h_in = grid_figure_size(rows, ncols=10)
    assert (width, height) == (round(w_in * DPI), round(h_in * DPI))
    assert height / width == pytest.approx((5 * 0.6 + 2 * 0.4) / (10 * 0.6), rel=0.01)


def test_curve_png(tmp_path: Path) -> None:
    series = {"classifier": [(0, 0.2), (10, 0.5), (20, 0.7)], "crispness": [(0, 0.6), (20, 0.8)]}
    path = save_curve_png(tmp_path / "curve.png", series, title="reward", xlabel="step", ylabel="mean reward")
    width, height = _png_size(path)
    assert width / height == pytest.approx(6.4 / 4.0, rel=0.01)
