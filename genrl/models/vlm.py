"""Vision-language models from a checkpoint folder: model + processor + chat template.

``load_vlm(path)`` is the one loading path, the same for a real download and for the tiny models the
tests and the digits task build from configs: :func:`build_tiny_qwen25vl` (Qwen2.5-VL) and
:func:`build_tiny_smolvlm` (SmolVLM / Idefics3). Their tokenizers are byte-level BPEs trained on the
task's text, their processors the family's own classes, all written with ``save_pretrained`` so that
``AutoProcessor`` finds them.

What differs between families in how an image reaches the model (which processor outputs carry it,
how they are laid out one row per question, which token ids are vision placeholders, where the language
model's modules are) is a :class:`VisionFamily`, looked up by the folder's ``model_type``.

transformers' Qwen2.5-VL and SmolVLM processors also own a *video* processor, which needs torchvision.
Where torchvision is not installed (this project's CPU machines) ``load_vlm`` builds the same processor
class from the same files with the video part left out; images and text go through exactly the same
code, and a video input is refused with a message saying why.
"""

from __future__ import annotations

import inspect
import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from genrl.config.validate import option

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]
# Qwen's chat format (system / user / assistant turns; an image is vision_start, pad, vision_end).
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass
class TinyVLMConfig:
    """A Qwen2.5-VL-architecture model small enough to train on a CPU in minutes."""

    vocab_size: int = option(default=512, help="BPE vocabulary size of the locally trained tokenizer.")
    hidden_size: int = option(default=128, help="Language model width.")
    intermediate_size: int = option(default=256, help="Language model MLP width.")
    num_layers: int = option(default=3, help="Language model layers.")
    num_heads: int = option(default=4, help="Attention heads (head dim = hidden_size / num_heads).")
    num_kv_heads: int = option(default=2, help="Key/value heads (grouped-query attention).")
    vision_hidden_size: int = option(default=64, help="Vision encoder width.")
    vision_depth: int = option(default=2, help="Vision encoder blocks.")
    vision_heads: int = option(default=2, help="Vision encoder heads.")
    image_min_pixels: int = option(default=56 * 56, help="Image processor min_pixels.")
    image_max_pixels: int = option(default=56 * 168, help="Image processor max_pixels.")

    def validate(self) -> None:
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads: must divide hidden_size, and num_kv_heads must divide num_heads")
        head = self.hidden_size // self.num_heads
        if head % 8:
            raise ValueError(f"hidden_size: head dim {head} must be a multiple of 8 (Qwen2.5-VL's 3-D rotary sections)")


def _train_tokenizer(corpus: list[str], vocab_size: int, *, special_tokens: Sequence[str] = tuple(SPECIAL_TOKENS),
                     eos: str = "<|im_end|>", pad: str = "<|endoftext|>", chat_template: str = CHAT_TEMPLATE):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=eos, pad_token=pad, extra_special_tokens={})
    fast.chat_template = chat_template
    return fast


def build_tiny_qwen25vl(out_dir: Path, config: TinyVLMConfig, corpus: list[str]) -> None:
    """Write a randomly initialised Qwen2.5-VL-architecture checkpoint folder (model, tokenizer,
    image processor, chat template) that ``load_vlm`` and ``AutoModelForImageTextToText`` load."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    out_dir = Path(out_dir)
    tokenizer = _train_tokenizer(corpus, config.vocab_size)
    ids = dict(zip(SPECIAL_TOKENS, tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS)))
    head = config.hidden_size // config.num_heads
    section = [head // 8, 3 * head // 16, 3 * head // 16]  # t/h/w rotary split of the half head dim
    section[0] += head // 2 - sum(section)
    model_config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
            num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
            num_key_value_heads=config.num_kv_heads, max_position_embeddings=1024,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": section},
            bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(
            depth=config.vision_depth, hidden_size=config.vision_hidden_size,
            intermediate_size=2 * config.vision_hidden_size, num_heads=config.vision_heads,
            out_hidden_size=config.hidden_size, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
            window_size=56, fullatt_block_indexes=[config.vision_depth - 1]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True)
    model = Qwen2_5_VLForConditionalGeneration(model_config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(str(out_dir))
    image_processor = Qwen2VLImageProcessorPil(min_pixels=config.image_min_pixels, max_pixels=config.image_max_pixels,
                                               patch_size=14, merge_size=2, temporal_patch_size=2)
    tokenizer.save_pretrained(str(out_dir))
    image_processor.save_pretrained(str(out_dir))
    (out_dir / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    (out_dir / "processor_config.json").write_text(json.dumps({"processor_class": "Qwen2_5_VLProcessor"}, indent=2))
    # What AutoProcessor reads for the video half where torchvision is installed.
    video = {"video_processor_type": "Qwen2VLVideoProcessor", "processor_class": "Qwen2_5_VLProcessor",
             "patch_size": 14, "merge_size": 2, "temporal_patch_size": 2,
             "min_pixels": config.image_min_pixels, "max_pixels": config.image_max_pixels}
    (out_dir / "video_preprocessor_config.json").write_text(json.dumps(video, indent=2))


SMOLVLM_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>",
                          "<global-img>", *(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7))]
# SmolVLM's own chat format ("User:<image>question<end_of_utterance>\nAssistant:"), as its downloads ship it.
SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def build_tiny_smolvlm(out_dir: Path, config: TinyVLMConfig, corpus: list[str], *, image_size: int = 56,
                       patch_size: int = 14, scale_factor: int = 2, image_splitting: bool = False) -> None:
    """Write a randomly initialised SmolVLM checkpoint folder (``Idefics3ForConditionalGeneration``, the
    architecture of the SmolVLM-Instruct downloads, with transformers' ``Idefics3Processor``). Without image
    splitting every image becomes one ``image_size`` square, i.e. ``(image_size / patch_size)^2 / scale_factor^2``
    placeholder tokens; ``config``'s Qwen-only fields (min/max pixels) are unused."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    out_dir = Path(out_dir)
    tokenizer = _train_tokenizer(corpus, config.vocab_size, special_tokens=SMOLVLM_SPECIAL_TOKENS,
                                 eos="<end_of_utterance>", pad="<|endoftext|>", chat_template=SMOLVLM_CHAT_TEMPLATE)
    ids = dict(zip(SMOLVLM_SPECIAL_TOKENS, tokenizer.convert_tokens_to_ids(SMOLVLM_SPECIAL_TOKENS)))
    eos, pad = ids["<end_of_utterance>"], ids["<|endoftext|>"]
    model_config = Idefics3Config(
        text_config=dict(
            model_type="llama", vocab_size=len(tokenizer), hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size, num_hidden_layers=config.num_layers,
            num_attention_heads=config.num_heads, num_key_value_heads=config.num_kv_heads, max_position_embeddings=1024,
            bos_token_id=ids["<|im_start|>"], eos_token_id=eos, pad_token_id=pad),
        vision_config=dict(
            hidden_size=config.vision_hidden_size, intermediate_size=2 * config.vision_hidden_size,
            num_hidden_layers=config.vision_depth, num_attention_heads=config.vision_heads, image_size=image_size,
            patch_size=patch_size),
        scale_factor=scale_factor, image_token_id=ids["<image>"], pad_token_id=pad, tie_word_embeddings=True)
    model = Idefics3ForConditionalGeneration(model_config)
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = pad
    model.save_pretrained(str(out_dir))
    image_processor = Idefics3ImageProcessorPil(do_image_splitting=image_splitting, size={"longest_edge": 2 * image_size},
                                                max_image_size={"longest_edge": image_size})
    seq_len = (image_size // patch_size) ** 2 // scale_factor**2
    Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=seq_len,
                      chat_template=SMOLVLM_CHAT_TEMPLATE).save_pretrained(str(out_dir))


def _torchvision_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torchvision") is not None


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def folder_chat_template(path: str | Path, tokenizer=None) -> str | None:
    """The folder's own chat template, in transformers' order: ``chat_template.jinja``, then
    ``chat_template.json`` (older downloads, e.g. Qwen2.5-VL's), then the tokenizer's."""
    path = Path(path)
    if (path / "chat_template.jinja").is_file():
        return (path / "chat_template.jinja").read_text()
    if (path / "chat_template.json").is_file():
        return _read_json(path / "chat_template.json")["chat_template"]
    return getattr(tokenizer, "chat_template", None)


def load_processor(path: str | Path):
    """The checkpoint's own processor (tokenizer + image processor + chat template)."""
    from transformers import AutoProcessor

    path = Path(path)
    if _torchvision_available():
        return AutoProcessor.from_pretrained(str(path))
    import transformers
    from transformers import AutoImageProcessor, AutoTokenizer
    from transformers.processing_utils import ProcessorMixin

    settings = _read_json(path / "processor_config.json")
    cls_name = settings.get("processor_class") or _read_json(path / "preprocessor_config.json").get("processor_class")
    base = getattr(transformers, cls_name, None) if cls_name else None
    params = inspect.signature(base.__init__).parameters if base is not None else {}
    if "video_processor" not in params:
        return AutoProcessor.from_pretrained(str(path))  # no video half to leave out

    class ImageOnly(base):  # same class, minus the torchvision-only video processor
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

        def __call__(self, *args, videos=None, **kwargs):
            if videos is not None:
                raise ValueError(f"{path}: video inputs need torchvision (pip install torchvision)")
            return super().__call__(*args, **kwargs)

        def apply_chat_template(self, conversation, *args, **kwargs):
            # The base one: SmolVLM's override reads frame settings off its (absent) video processor.
            return ProcessorMixin.apply_chat_template(self, conversation, *args, **kwargs)

        def save_pretrained(self, save_directory, **kwargs):
            """The parts as a download lays them out (transformers' own save needs every part present); the
            video-processor file is copied from the folder this came from."""
            out = Path(save_directory)
            out.mkdir(parents=True, exist_ok=True)
            self.tokenizer.save_pretrained(str(out))
            self.image_processor.save_pretrained(str(out))
            if isinstance(self.chat_template, str):
                (out / "chat_template.jinja").write_text(self.chat_template)
            (out / "processor_config.json").write_text(json.dumps({**extra, "processor_class": cls_name}, indent=2))
            video = "video_preprocessor_config.json"
            if (path / video).is_file() and path.resolve() != out.resolve():
                shutil.copy2(path / video, out / video)
            return [str(out / "processor_config.json")]

    ImageOnly.__name__ = ImageOnly.__qualname__ = cls_name
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    skip = {"self", "image_processor", "tokenizer", "video_processor", "chat_template", "kwargs"}
    extra = {k: v for k, v in settings.items() if k in params and k not in skip}  # e.g. SmolVLM's image_seq_len
    return ImageOnly(image_processor=AutoImageProcessor.from_pretrained(str(path)), tokenizer=tokenizer,
                     video_processor=None, chat_template=folder_chat_template(path, tokenizer), **extra)


def load_vlm(path: str | Path, *, dtype: torch.dtype = torch.float32):
    """(model, processor) from a checkpoint folder; a clear error when it is not one."""
    from transformers import AutoModelForImageTextToText

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: not a vision-language checkpoint folder (expected config.json, "
                                "model weights, tokenizer and processor files inside it)")
    model = AutoModelForImageTextToText.from_pretrained(str(path), dtype=dtype)
    return model, load_processor(path)


# ----------------------------------------------------------------------------- families
class VisionFamily:
    """How one family's images reach its model. The policy stores every image tensor one row per question,
    padded to a width fixed per call (or by ``policy.max_image_patches``), so that rows can be chunked,
    stored and concatenated across pieces and processes; :meth:`model_inputs` turns rows back into exactly
    what the family's processor would have given the model for them alone."""

    label: str = ""
    model_types: tuple[str, ...] = ()
    image_keys: tuple[str, ...] = ()  # the processor outputs that carry the images, kept per row
    language_module: str = ""  # module-name part of the language model (where LoRA adapters go)
    vision_modules: tuple[str, ...] = ()  # module-name parts of the vision tower + projector

    def __init__(self, model_config, tokenizer) -> None:
        self.image_token_id = int(model_config.image_token_id)
        self.vision_token_ids: list[int] = [self.image_token_id]

    def per_question(self, images: list) -> list:
        """``images`` (one per question) as the family's processor and image processor must get them."""
        return images

    def rows(self, enc: Mapping[str, torch.Tensor], *, width: int | None, names: Sequence) -> dict[str, torch.Tensor]:
        """The processor's image outputs as one row per question, padded to ``width`` (None: the widest row)."""
        raise NotImplementedError

    def model_inputs(self, t: Mapping[str, torch.Tensor], rows: list[int]) -> dict[str, torch.Tensor]:
        """The model's keyword inputs for ``rows`` of ``t`` (ids, mask, image tensors)."""
        raise NotImplementedError

    def image_tokens(self, t: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """How many image placeholder tokens each row's image(s) need [B]."""
        raise NotImplementedError

    def is_vision_parameter(self, name: str) -> bool:
        return any(f".{m}." in f".{name}." for m in self.vision_modules)


class QwenVL(VisionFamily):
    """Qwen2.5-VL: an image is a variable number of flat patches (``pixel_values`` [patches, D], all images
    concatenated) with its ``image_grid_thw``; ``spatial_merge_size``^2 patches make one placeholder token."""

    label = "Qwen2.5-VL"
    model_types = ("qwen2_5_vl",)
    image_keys = ("pixel_values", "image_grid_thw")
    language_module = "language_model"
    vision_modules = ("visual",)

    def __init__(self, model_config, tokenizer) -> None:
        super().__init__(model_config, tokenizer)
        mc = model_config
        self.merge = getattr(mc.vision_config, "spatial_merge_size", 1)
        self.vision_token_ids = sorted({i for i in (mc.image_token_id, getattr(mc, "video_token_id", None),
                                                    getattr(mc, "vision_start_token_id", None),
                                                    getattr(mc, "vision_end_token_id", None)) if i is not None})

    def rows(self, enc, *, width, names):
        grid = enc["image_grid_thw"]
        patches = grid.prod(1).tolist()
        width = width or max(patches)
        for name, k in zip(names, patches):
            if k > width:
                raise ValueError(f"question {name}: its image has {k} patches, above policy.max_image_patches={width}; "
                                 "raise it or lower the image processor's max_pixels")
        flat = enc["pixel_values"]
        pixels = torch.stack([F.pad(p, (0, 0, 0, width - len(p))) for p in torch.split(flat, patches)])
        return {"pixel_values": pixels, "image_grid_thw": grid}

    def model_inputs(self, t, rows):
        """Each image's patches without their padding, concatenated as the processor emits them, and the
        image-token types (``mm_token_type_ids``, 1 on placeholders): Qwen2.5-VL needs them to give image
        tokens their 3-D rotary positions; without them every token gets a text position, which silently
        disagrees with how the model was trained (measured: NLL 1.09 instead of 0.46 per token)."""
        idx = torch.tensor(rows, device=t["input_ids"].device)
        grid = t["image_grid_thw"][idx]
        pixel = torch.cat([t["pixel_values"][r, :k] for r, k in zip(rows, grid.prod(1).tolist())])
        ids = t["input_ids"][idx]
        return {"input_ids": ids, "attention_mask": t["attention_mask"][idx],
                "mm_token_type_ids": (ids == self.image_token_id).long(), "pixel_values": pixel, "image_grid_thw": grid}

    def image_tokens(self, t):
        return t["image_grid_thw"].prod(1) // self.merge**2


class SmolVLM(VisionFamily):
    """SmolVLM / Idefics3: an image is one or more fixed-size squares (``pixel_values`` [B, squares, 3, S, S]
    with a ``pixel_attention_mask``; several when the processor splits it into crops), each giving
    ``image_seq_len`` placeholder tokens. All-zero padding squares are dropped by the model itself."""

    label = "SmolVLM (Idefics3)"
    model_types = ("idefics3", "smolvlm")
    image_keys = ("pixel_values", "pixel_attention_mask")
    language_module = "text_model"
    vision_modules = ("vision_model", "connector")
    VISION_TOKENS = ("<image>", "<fake_token_around_image>", "<global-img>", "<video>",
                     *(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)))

    def __init__(self, model_config, tokenizer) -> None:
        super().__init__(model_config, tokenizer)
        vc = model_config.vision_config
        self.image_seq_len = (vc.image_size // vc.patch_size) ** 2 // model_config.scale_factor**2
        vocab = tokenizer.get_vocab()
        self.vision_token_ids = sorted({self.image_token_id} | {vocab[t] for t in self.VISION_TOKENS if t in vocab})

    def per_question(self, images: list) -> list:
        return [[image] for image in images]  # a flat list can be read as ONE question's several images

    @staticmethod
    def _squares(mask: torch.Tensor) -> torch.Tensor:
        return mask.flatten(2).any(-1).sum(1)  # real (unpadded) squares per row

    def rows(self, enc, *, width, names):
        pixels = enc["pixel_values"]
        mask = enc.get("pixel_attention_mask")
        if mask is None:
            mask = torch.ones(*pixels.shape[:2], *pixels.shape[-2:], dtype=torch.long)
        counts = self._squares(mask).tolist()
        width = width or pixels.shape[1]
        for name, k in zip(names, counts):
            if k > width:
                raise ValueError(f"question {name}: its image is cut into {k} squares, above "
                                 f"policy.max_image_patches={width}; raise it or set the image processor's "
                                 "do_image_splitting to false")
        pad = width - pixels.shape[1]
        if pad > 0:
            pixels = F.pad(pixels, (0, 0, 0, 0, 0, 0, 0, pad))
            mask = F.pad(mask, (0, 0, 0, 0, 0, pad))
        return {"pixel_values": pixels[:, :width], "pixel_attention_mask": mask[:, :width]}

    def model_inputs(self, t, rows):
        """The rows' tensors as they are, with the positions ``generate`` gives a left-padded prompt (counted
        over real tokens; rotary attention only sees their differences, so this changes rounding only, but
        then a score reproduces what sampling computed to float precision)."""
        idx = torch.tensor(rows, device=t["input_ids"].device)
        mask = t["attention_mask"][idx]
        positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
        return {"input_ids": t["input_ids"][idx], "attention_mask": mask, "position_ids": positions,
                "pixel_values": t["pixel_values"][idx], "pixel_attention_mask": t["pixel_attention_mask"][idx]}

    def image_tokens(self, t):
        return self._squares(t["pixel_attention_mask"]) * self.image_seq_len


FAMILIES: tuple[type[VisionFamily], ...] = (QwenVL, SmolVLM)


def vision_family(path: str | Path) -> type[VisionFamily]:
    """The family of a checkpoint folder, from its config.json's ``model_type`` (read before any weights)."""
    model_type = _read_json(Path(path) / "config.json").get("model_type")
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    known = ", ".join(f"{'/'.join(f.model_types)} ({f.label})" for f in FAMILIES)
    raise ValueError(f"{path}: model_type {model_type!r} is not a supported vision-language family; supported: {known}")
