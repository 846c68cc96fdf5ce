"""Vision-language models from a checkpoint folder: model + processor + chat template.

``load_vlm(path)`` is the one loading path, the same for a real Qwen2.5-VL download and for the
tiny Qwen2.5-VL-architecture model the tests and the digits task build with :func:`build_tiny_qwen25vl`
(its tokenizer is a byte-level BPE trained on the task's text, its processor the Qwen2-VL image
processor, both written with ``save_pretrained`` so that ``AutoProcessor`` finds them).

transformers' Qwen2.5-VL processor also owns a *video* processor, which needs torchvision. Where
torchvision is not installed (this project's CPU machines) ``load_vlm`` builds the same processor
class from the same files with the video part left out; images and text go through exactly the
same code, and a video input is refused with a message saying why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

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


def _train_tokenizer(corpus: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   extra_special_tokens={})
    fast.chat_template = CHAT_TEMPLATE
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


def _torchvision_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torchvision") is not None


def load_processor(path: str | Path):
    """The checkpoint's own processor (tokenizer + image processor + chat template)."""
    from transformers import AutoProcessor

    path = Path(path)
    if _torchvision_available():
        return AutoProcessor.from_pretrained(str(path))
    from transformers import AutoImageProcessor, AutoTokenizer

    named = [json.loads((path / f).read_text()).get("processor_class")
             for f in ("processor_config.json", "preprocessor_config.json") if (path / f).is_file()]
    cls_name = next((n for n in named if n), None)
    if not cls_name:
        return AutoProcessor.from_pretrained(str(path))  # no video half to leave out
    import transformers

    base = getattr(transformers, cls_name)

    class ImageOnly(base):  # same class, minus the torchvision-only video processor
        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and argument is None:
                return None
            return super().check_argument_for_proper_class(argument_name, argument)

        def __call__(self, *args, videos=None, **kwargs):
            if videos is not None:
                raise ValueError(f"{path}: video inputs need torchvision (pip install torchvision)")
            return super().__call__(*args, **kwargs)

    ImageOnly.__name__ = ImageOnly.__qualname__ = cls_name
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    template = path / "chat_template.jinja"
    chat_template = template.read_text() if template.is_file() else getattr(tokenizer, "chat_template", None)
    return ImageOnly(image_processor=AutoImageProcessor.from_pretrained(str(path)), tokenizer=tokenizer,
                     video_processor=None, chat_template=chat_template)


def load_vlm(path: str | Path, *, dtype: torch.dtype = torch.float32):
    """(model, processor) from a checkpoint folder; a clear error when it is not one."""
    from transformers import AutoModelForImageTextToText

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path}: not a vision-language checkpoint folder (expected config.json, "
                                "model weights, tokenizer and processor files inside it)")
    model = AutoModelForImageTextToText.from_pretrained(str(path), dtype=dtype)
    return model, load_processor(path)
