"""The reward models users already have on disk, loaded through their real architectures.

* ``clip_score``: cosine similarity of CLIP image and text embeddings (CLIPScore);
* ``pickscore``: PickScore, a CLIP fine-tuned on human preferences, scored as in its paper;
* ``aesthetic``: the LAION "improved aesthetic predictor", an MLP on CLIP image embeddings.

Models are read from a local folder in the Hugging Face format (``config.json`` +
``model.safetensors``, as written by ``save_pretrained``); nothing is downloaded. The folder is
checked by ``resolve`` before any training work, so a wrong path fails at once with the recipe key.
Images are preprocessed on tensors (on the reward's device, in batches) the way the CLIP image
processor does it: resize the short side with bicubic filtering, centre-crop, normalise.
Weights are only read from safetensors files: a pickle (``.pth``) can run code when loaded.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from genrl.config.validate import RecipeError, option
from genrl.registry import REWARDS
from genrl.rewards.image import RewardConfig

# The normalisation OpenAI CLIP was trained with (used when a folder has no preprocessor_config.json).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def prompt_texts(prompts: torch.Tensor | Sequence[Any], template: str, class_names: Sequence[str]) -> list[str]:
    """Prompts as text: strings pass through, class ids become ``template.format(class_names[id])``."""
    if isinstance(prompts, torch.Tensor):
        prompts = prompts.reshape(-1).tolist()
    texts = []
    for p in prompts:
        if isinstance(p, str):
            texts.append(p)
            continue
        i = int(p)
        if not 0 <= i < len(class_names):
            raise ValueError(f"prompt class id {i} has no entry in class_names ({len(class_names)} names)")
        texts.append(template.format(class_names[i]))
    return texts


def check_clip_folder(path: str, *, recipe_file: str | None, key: str, needs_tokenizer: bool = False) -> Path:
    """The folder of a Hugging Face CLIP model, or a :class:`RecipeError` at ``key`` saying what is wrong."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise RecipeError(recipe_file, key, f"no folder at {folder} (expected a CLIP model saved with save_pretrained)")
    config_file = folder / "config.json"
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        raise RecipeError(recipe_file, key, f"{folder} holds no readable config.json of a CLIP model") from None
    if model_type != "clip":
        raise RecipeError(recipe_file, key, f"{config_file} is for model_type {model_type!r}, expected 'clip' "
                                            "(a Hugging Face CLIPModel; open_clip checkpoints need converting)")
    if needs_tokenizer and not any((folder / f).is_file() for f in _TOKENIZER_FILES):
        raise RecipeError(recipe_file, key, f"{folder} holds no tokenizer (one of {list(_TOKENIZER_FILES)})")
    return folder


def preprocess_images(images: torch.Tensor, size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """[B, H, W] (grey, as the flow policy returns one-channel images) or [B, C, H, W] (C = 1 or 3)
    in [0, 1] -> CLIP pixel values [B, 3, size, size], on the input's device.

    Same steps as the CLIP image processor (short side to ``size`` with bicubic filtering,
    centre crop, normalise), but batched on tensors, so no round trip through PIL.
    """
    x = images.float()
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected images [B, H, W] or [B, 1 or 3, H, W], got shape {tuple(images.shape)}")
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    x = x[:, :, top:top + size, left:left + size].clamp(0, 1)  # bicubic overshoots; the processor works on uint8
    mean_t = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean_t) / std_t


def _features(out: Any) -> torch.Tensor:
    """``get_*_features`` returns a tensor in transformers 4 and an output object (pooler_output) in 5."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _image_stats(folder: Path) -> tuple[Sequence[float], Sequence[float]]:
    try:
        pre = json.loads((folder / "preprocessor_config.json").read_text())
        return pre.get("image_mean") or CLIP_MEAN, pre.get("image_std") or CLIP_STD
    except (OSError, ValueError, AttributeError):
        return CLIP_MEAN, CLIP_STD


class ClipEncoder:
    """A CLIP model with its tokenizer and image statistics: unit-norm image and text embeddings."""

    def __init__(self, model_dir: Path, *, processor_dir: Path | None = None, device: torch.device | str = "cpu",
                 dtype: str = "float32", batch_size: int = 32, text: bool = True) -> None:
        from transformers import AutoTokenizer, CLIPModel

        processor_dir = processor_dir or model_dir
        self.device = torch.device(device)
        self.dtype = _DTYPES[dtype]
        self.batch_size = batch_size
        # The whole CLIPModel even for image-only use: CLIPVisionModelWithProjection cannot be loaded
        # from a CLIPModel folder (its config does not carry projection_dim into vision_config).
        self.model = CLIPModel.from_pretrained(model_dir, dtype=self.dtype).to(self.device).eval().requires_grad_(False)
        self.image_size = int(self.model.config.vision_config.image_size)
        self.mean, self.std = _image_stats(processor_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(processor_dir) if text else None
        limit = int(self.model.config.text_config.max_position_embeddings)
        self.max_length = min(limit, int(getattr(self.tokenizer, "model_max_length", limit) or limit))

    @torch.no_grad()
    def image_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm image embeddings [B, D] (float32, on the device)."""
        out = []
        for chunk in images.split(self.batch_size):
            pixels = preprocess_images(chunk.to(self.device), self.image_size, self.mean, self.std)
            feats = _features(self.model.get_image_features(pixel_values=pixels.to(self.dtype)))
            out.append(F.normalize(feats.float(), dim=-1))
        return torch.cat(out)

    @torch.no_grad()
    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm text embeddings [len(texts), D]; each distinct text is encoded once."""
        unique = list(dict.fromkeys(texts))
        out = []
        for start in range(0, len(unique), self.batch_size):
            tokens = self.tokenizer(unique[start:start + self.batch_size], padding=True, truncation=True,
                                    max_length=self.max_length, return_tensors="pt").to(self.device)
            feats = _features(self.model.get_text_features(input_ids=tokens["input_ids"],
                                                           attention_mask=tokens.get("attention_mask")))
            out.append(F.normalize(feats.float(), dim=-1))
        table = torch.cat(out)
        index = {t: i for i, t in enumerate(unique)}
        return table[torch.tensor([index[t] for t in texts], device=table.device)]


@dataclass(kw_only=True)
class _ClipOptions(RewardConfig):
    """Options shared by the image-text CLIP rewards."""

    path: str = option(help="Local folder of a Hugging Face CLIPModel (config.json + model.safetensors).")
    processor_path: str | None = option(
        default=None,
        help="Folder with the tokenizer and preprocessor_config.json, if not in `path` "
             "(PickScore's README takes its processor from laion/CLIP-ViT-H-14-laion2B-s32B-b79K).")
    batch_size: int = option(default=32, help="Images (and texts) per forward pass.")
    dtype: Literal["float32", "float16", "bfloat16"] = option(default="float32", help="Weights' dtype.")
    prompt_template: str = option(default="a photo of the digit {}",
                                  help="Text for class-id prompts: '{}' is replaced by the class name.")
    class_names: list[str] = option(default=DIGIT_NAMES, help="Name of each class id, for prompt_template.")

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ValueError("batch_size: must be >= 1")
        if not self.class_names:
            raise ValueError("class_names: expected at least one name")
        if "{}" not in self.prompt_template:
            raise ValueError("prompt_template: expected a '{}' where the class name goes")
        try:
            self.prompt_template.format(self.class_names[0])
        except (IndexError, KeyError, ValueError) as e:
            raise ValueError(f"prompt_template: cannot be formatted with one class name ({e!r})") from None


class _ClipTextReward:
    """Loads the model (after ``resolve`` checked the folder) and scores cos(image, text)."""

    name = ""

    def __init__(self, config: _ClipOptions, *, device: torch.device | str = "cpu", model_dir: Path | None = None) -> None:
        self.config = config
        model_dir = model_dir or Path(config.path).expanduser()
        processor_dir = Path(config.processor_path).expanduser() if config.processor_path else None
        self.encoder = ClipEncoder(model_dir, processor_dir=processor_dir, device=device, dtype=config.dtype,
                                   batch_size=config.batch_size)
        self.__name__ = self.name

    @staticmethod
    def resolve(config: _ClipOptions, *, recipe_file: str | None, key: str) -> Path:
        """The model folder, checked (with its tokenizer) before any training work."""
        folder = check_clip_folder(config.path, recipe_file=recipe_file, key=f"{key}.path",
                                   needs_tokenizer=not config.processor_path)
        if config.processor_path:
            proc = Path(config.processor_path).expanduser()
            if not any((proc / f).is_file() for f in _TOKENIZER_FILES):
                raise RecipeError(recipe_file, f"{key}.processor_path",
                                  f"{proc} holds no tokenizer (one of {list(_TOKENIZER_FILES)})")
        return folder

    def cosine(self, images: torch.Tensor, prompts: torch.Tensor | Sequence[Any]) -> torch.Tensor:
        texts = prompt_texts(prompts, self.config.prompt_template, self.config.class_names)
        if len(texts) != len(images):
            raise ValueError(f"got {len(images)} images for {len(texts)} prompts")
        txt = self.encoder.text_embeddings(texts)
        if images.dim() == 5:  # videos [B, F, 3, H, W]: the mean over frames of each frame's cosine
            img = self.encoder.image_embeddings(images.flatten(0, 1)).view(*images.shape[:2], -1)
            return (img * txt.to(img.device).unsqueeze(1)).sum(-1).mean(1)
        img = self.encoder.image_embeddings(images)
        return (img * txt.to(img.device)).sum(-1)


@REWARDS.register("clip_score")
class ClipScoreReward(_ClipTextReward):
    """``scale * cos(CLIP image embedding, CLIP text embedding)``: does the image match its prompt?

    The CLIPScore paper (Hessel et al., 2021) reports ``2.5 * max(cos, 0)``: set ``scale: 2.5`` and
    ``clamp_negative: true`` for that. The default (plain cosine) keeps apart the samples the clamp
    would tie at 0, so a group-relative advantage can still rank them.
    """

    name = "clip_score"

    @dataclass(kw_only=True)
    class Config(_ClipOptions):
        scale: float = option(default=1.0, help="Multiplier of the cosine (CLIPScore uses 2.5).")
        clamp_negative: bool = option(default=False, help="Score max(cos, 0), as CLIPScore does.")

    def __call__(self, images: torch.Tensor, prompts: torch.Tensor | Sequence[Any]) -> torch.Tensor:
        cos = self.cosine(images, prompts)
        if self.config.clamp_negative:
            cos = cos.clamp(min=0)
        return (self.config.scale * cos).float().cpu()


@REWARDS.register("pickscore")
class PickScoreReward(_ClipTextReward):
    """PickScore (Kirstain et al., 2023): ``logit_scale.exp() * cos(image, text)`` of the preference CLIP.

    This is the paper's score (roughly 15-25 for typical images, since exp(logit_scale) is about 100).
    """

    name = "pickscore"

    @dataclass(kw_only=True)
    class Config(_ClipOptions):
        pass

    def __call__(self, images: torch.Tensor, prompts: torch.Tensor | Sequence[Any]) -> torch.Tensor:
        cos = self.cosine(images, prompts)
        scale = self.encoder.model.logit_scale.detach().float().exp().to(cos.device)
        return (scale * cos).float().cpu()


# ----------------------------------------------------------------------------- aesthetic predictor

AESTHETIC_LINEARS = (0, 2, 4, 6, 7)  # indices of the Linear layers in the head's nn.Sequential
PTH_TO_SAFETENSORS = (
    "python -c \"import torch, safetensors.torch as st; "
    "st.save_file({k: v.contiguous() for k, v in torch.load('HEAD.pth', map_location='cpu', weights_only=True).items()}, "
    "'HEAD.safetensors')\""
)


class AestheticHead(nn.Module):
    """The improved aesthetic predictor's MLP; its state dict keys are ``layers.{0,2,4,6,7}.{weight,bias}``."""

    def __init__(self, dim: int = 768) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(dim, 1024), nn.Dropout(0.2),
            nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(embeddings)


def convert_aesthetic_head(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The public checkpoint's tensors as :class:`AestheticHead` keys (``layers.0.weight`` ... ``layers.7.bias``).

    The public ``sac+logos+ava1-l14-linearMSE.pth`` already uses these names; a ``module.``
    prefix (saved from DataParallel) or a missing ``layers.`` prefix is accepted. Tensors come back
    contiguous float32, ready for ``safetensors.torch.save_file``.
    """
    out = {}
    for k, v in state_dict.items():
        name = k.removeprefix("module.")
        if not name.startswith("layers."):
            name = f"layers.{name}"
        out[name] = v.detach().to(torch.float32).contiguous()
    expected = {f"layers.{i}.{p}" for i in AESTHETIC_LINEARS for p in ("weight", "bias")}
    if set(out) != expected:
        missing, extra = sorted(expected - set(out)), sorted(set(out) - expected)
        raise ValueError(f"not an aesthetic head state dict: missing {missing}, unexpected {extra}")
    return out


def not_safetensors_message(path: Path) -> str:
    """Why a pickle is refused, and the one line that converts it."""
    command = PTH_TO_SAFETENSORS.replace("HEAD.pth", str(path)).replace("HEAD.", f"{path.with_suffix('')}.")
    return f"{path}: only .safetensors weights are read (loading a pickle can run code); convert it once with: {command}"


def load_aesthetic_head(path: str | Path) -> AestheticHead:
    """An :class:`AestheticHead` from a .safetensors file (the input size is read from the weights)."""
    from safetensors.torch import load_file

    path = Path(path).expanduser()
    if path.suffix != ".safetensors":
        raise ValueError(not_safetensors_message(path))
    if not path.is_file():
        raise ValueError(f"no aesthetic head at {path}")
    state = convert_aesthetic_head(load_file(str(path)))
    head = AestheticHead(dim=state["layers.0.weight"].shape[1])
    head.load_state_dict(state)
    return head.eval()


@REWARDS.register("aesthetic")
class AestheticReward:
    """LAION improved aesthetic predictor: an MLP on unit-norm CLIP image embeddings (about 1-10).

    The public head (``sac+logos+ava1-l14-linearMSE``) was trained on OpenAI CLIP ViT-L/14
    embeddings (768-d): ``clip_path`` must be that model for its scores to mean anything.
    The prompt is ignored.
    """

    @dataclass(kw_only=True)
    class Config(RewardConfig):
        clip_path: str = option(help="Local folder of the Hugging Face CLIP model the head was trained on.")
        head_path: str = option(help="The head's weights, a .safetensors file with keys layers.{0,2,4,6,7}.weight/bias.")
        batch_size: int = option(default=32, help="Images per forward pass.")
        dtype: Literal["float32", "float16", "bfloat16"] = option(default="float32", help="CLIP weights' dtype.")

        def validate(self) -> None:
            if self.batch_size < 1:
                raise ValueError("batch_size: must be >= 1")

    def __init__(self, config: Config, *, device: torch.device | str = "cpu", model_dir: Path | None = None) -> None:
        self.config = config
        model_dir = model_dir or Path(config.clip_path).expanduser()
        self.encoder = ClipEncoder(model_dir, device=device, dtype=config.dtype, batch_size=config.batch_size,
                                   text=False)
        self.head = load_aesthetic_head(config.head_path).to(self.encoder.device)
        dim = self.head.layers[0].in_features
        width = int(self.encoder.model.config.projection_dim)
        if dim != width:
            raise RecipeError(None, "rewards[].head_path", f"the head takes {dim}-d embeddings but the CLIP model "
                                                           f"at {model_dir} gives {width}-d ones")
        self.__name__ = "aesthetic"

    @staticmethod
    def resolve(config: Config, *, recipe_file: str | None, key: str) -> Path:
        """The CLIP folder; the head file is checked too, both before any training work."""
        folder = check_clip_folder(config.clip_path, recipe_file=recipe_file, key=f"{key}.clip_path")
        head = Path(config.head_path).expanduser()
        if head.suffix != ".safetensors":
            raise RecipeError(recipe_file, f"{key}.head_path", not_safetensors_message(head))
        if not head.is_file():
            raise RecipeError(recipe_file, f"{key}.head_path", f"no aesthetic head at {head}")
        return folder

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, prompts: object = None) -> torch.Tensor:
        emb = self.encoder.image_embeddings(images)
        return self.head(emb).squeeze(-1).float().cpu()
