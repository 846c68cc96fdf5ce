"""Train a digit classifier: the quick start's reward model and, on a disjoint split, its judge."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from genrl.cache import cached_artifact, resolve_recipe_path
from genrl.config.validate import option
from genrl.data.digits import digit_split, split_fingerprint
from genrl.models.digit_classifier import DigitClassifierConfig, save_classifier, train_classifier


@dataclass
class ClassifierModel:
    channels: int = option(default=32, help="Width of the first conv block.")
    hidden: int = option(default=64, help="Width of the feature layer.")
    dropout: float = option(default=0.1, help="Dropout before the head (training only).")


@dataclass
class ClassifierRecipe:
    """A digit-classifier training recipe (``reward_models/digit_classifier/train.yaml``)."""

    kind: Literal["digit_classifier"] = option(help="Artifact kind; must be digit_classifier.")
    split: Literal["generator", "reward", "judge"] = option(help="Which split of the digits it trains on.")
    seed: int = option(default=0, help="Training seed.")
    model: ClassifierModel = option(default_factory=ClassifierModel, help="Architecture.")
    epochs: int = option(default=80, help="Training epochs.")
    lr: float = option(default=3e-3, help="Adam learning rate (cosine decay).")
    batch_size: int = option(default=64, help="Batch size.")
    augment: bool = option(default=True, help="±1 pixel shifts and intensity jitter, for robustness on samples.")
    val_fraction: float = option(default=0.1, help="Share of the split held out for validation accuracy.")


def build_classifier(config: ClassifierRecipe, out_dir: Path, *, progress: bool = True) -> None:
    images, labels = digit_split(config.split)
    m = config.model
    model, metrics = train_classifier(
        images, labels, DigitClassifierConfig(m.channels, m.hidden, m.dropout), epochs=config.epochs, lr=config.lr,
        batch_size=config.batch_size, seed=config.seed, augment=config.augment, val_fraction=config.val_fraction,
        progress=progress,
    )
    save_classifier(model, out_dir, {**metrics, "split": config.split})
    data = {"source": f"sklearn-digits:{config.split}", "sha256": split_fingerprint(config.split)}
    (out_dir / "checkpoint.json").write_text(
        json.dumps({"kind": "digit_classifier", "split": config.split, "data": data, **metrics}, indent=2))


def classifier_from_recipe(recipe: str, *, referenced_from: str | None = None, key: str = "") -> Path:
    """Cache folder of the classifier that ``recipe`` trains (trained now if not cached)."""
    path = resolve_recipe_path(recipe, referenced_from=referenced_from, key=key)
    return cached_artifact(path, ClassifierRecipe, "digit_classifier", build_classifier)
