"""The reward-model seam: an ``nn.Module`` that maps (samples, contexts) to one scalar per sample.

Architectures are registered in ``genrl.registry.REWARD_MODELS`` with a ``Config`` dataclass; a
trained model is a folder::

    config.json        {"format": "genrl-reward-model/1", "architecture": ..., "config": {...},
                        "modality": ..., "sample_shape": [...], "context_kind": ...,
                        "normalization": {"mean": m, "std": s}, "metrics": {...}, ...}
    model.safetensors  the weights (no pickle)
    MODEL_CARD.md      data, metrics, recipe and hashes, for people
    (extra files an architecture saves, e.g. a tokenizer)

so that any recipe can use it as a reward by path (``genrl.rewards.learned``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from genrl.registry import REWARD_MODELS

FORMAT = "genrl-reward-model/1"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class RewardModelError(ValueError):
    """A folder that is not a usable genrl reward model (missing, foreign, incompatible)."""


class RewardModel(nn.Module):
    """Base class of preference reward models.

    ``modality`` names what the samples are (image, video, scene, image_text); ``context_kind`` what
    they were generated for (class ids, text or arrays). Architectures may declare auxiliary losses
    (Gen-Drive's plan reconstruction) by overriding :meth:`aux_losses`; their weights come from the
    training recipe's ``loss.aux_weights``.
    """

    modality: ClassVar[str] = "image"
    context_kinds: ClassVar[tuple[str, ...]] = ("class",)
    aux_columns: ClassVar[tuple[str, ...]] = ()  # data columns the auxiliary losses need

    def __init__(self, config: Any, *, sample_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.config = config
        self.sample_shape = tuple(sample_shape)

    def forward(self, samples: torch.Tensor, contexts: Any) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def aux_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Auxiliary training losses on a batch of pairs (keys: chosen, rejected, contexts, extra columns)."""
        return {}

    def check_samples(self, samples: torch.Tensor) -> None:
        if tuple(samples.shape[1:]) != self.sample_shape:
            raise ValueError(f"{type(self).__name__} scores samples of shape {list(self.sample_shape)}, "
                             f"got a batch of shape {list(samples.shape)}")

    # ------------------------------------------------------------ files
    def save_extra(self, out_dir: Path) -> None:
        """Files besides the weights (tokenizers); none by default."""

    @classmethod
    def load_extra(cls, model_dir: Path, model: RewardModel) -> None:
        """Counterpart of :meth:`save_extra`."""


def save_reward_model(model: RewardModel, out_dir: Path, info: dict[str, Any]) -> Path:
    """Write config.json + model.safetensors (+ the architecture's extra files) into ``out_dir``."""
    from dataclasses import asdict

    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = next(n for n in REWARD_MODELS.names() if REWARD_MODELS.get(n) is type(model))
    payload = {"format": FORMAT, "architecture": name, "config": asdict(model.config), "modality": model.modality,
               "sample_shape": list(model.sample_shape), **info}
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / WEIGHTS_FILE))
    model.save_extra(out_dir)
    (out_dir / CONFIG_FILE).write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return out_dir


def find_model_dir(path: str | Path) -> Path:
    """The model folder of a reward-model run directory (``RUN/model``), or the folder itself."""
    path = Path(path).expanduser()
    if not path.exists():
        raise RewardModelError(f"{path} does not exist (expected a reward-model run directory or model folder)")
    for cand in (path, path / "model"):
        if (cand / CONFIG_FILE).is_file():
            return cand
    raise RewardModelError(f"{path}: no {CONFIG_FILE}; expected a folder written by `genrl reward train` "
                           f"(RUN_DIR or RUN_DIR/model)")


def read_model_info(path: str | Path) -> dict[str, Any]:
    """config.json of a reward model, checked to be one genrl wrote with a known architecture."""
    import genrl.preference.models  # noqa: F401  (fills REWARD_MODELS)

    model_dir = find_model_dir(path)
    try:
        info = json.loads((model_dir / CONFIG_FILE).read_text())
    except json.JSONDecodeError as exc:
        raise RewardModelError(f"{model_dir / CONFIG_FILE}: not valid JSON ({exc})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise RewardModelError(f"{model_dir / CONFIG_FILE}: format {info.get('format') if isinstance(info, dict) else None!r}, "
                               f"expected {FORMAT!r} (a model written by `genrl reward train`)")
    if info.get("architecture") not in REWARD_MODELS:
        raise RewardModelError(f"{model_dir / CONFIG_FILE}: {REWARD_MODELS.unknown_message(info.get('architecture'))}")
    if not (model_dir / WEIGHTS_FILE).is_file():
        raise RewardModelError(f"{model_dir}: {WEIGHTS_FILE} is missing")
    info["model_dir"] = str(model_dir)
    return info


def build_reward_model(architecture: str, config: Any, sample_shape: tuple[int, ...]) -> RewardModel:
    return REWARD_MODELS.get(architecture)(config, sample_shape=tuple(sample_shape))


def load_reward_model(path: str | Path, *, device: torch.device | str = "cpu") -> tuple[RewardModel, dict[str, Any]]:
    """Load a reward model (eval mode) and its config.json."""
    from safetensors.torch import load_file

    from genrl.config.validate import build

    info = read_model_info(path)
    model_dir = Path(info["model_dir"])
    cls = REWARD_MODELS.get(info["architecture"])
    config = build(cls.Config, info["config"], file=str(model_dir / CONFIG_FILE), key="config")
    model = cls(config, sample_shape=tuple(info["sample_shape"]))
    cls.load_extra(model_dir, model)
    model.load_state_dict(load_file(str(model_dir / WEIGHTS_FILE)))
    return model.to(device).eval(), info
