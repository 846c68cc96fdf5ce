"""An image+text preference reward model on a small Hugging Face ``transformers`` backbone.

    image [C, H, W] --patches (p x p)--> Linear --> + learned patch positions ─┐
    prompt "a handwritten seven" --tokenizer--> token embeddings (+ [EOS]) ────┴─> inputs_embeds
    backbone (AutoModel.from_config: llama by default, any model_type that takes inputs_embeds)
    value head: Linear(hidden state of the last non-padding token, i.e. the appended [EOS]) -> r

The patches come *before* the text, so with a causal decoder the [EOS] at the end of the prompt
attends to every patch and every prompt word: its hidden state is a summary of the (image, prompt)
pair, which is what the value head reads (``pooling: last``, the same token TRL's
``AutoModelForSequenceClassification`` reads). ``pooling: mean`` averages the hidden states of all
non-padding positions instead (better suited to bidirectional encoders such as ``bert``).

The tokenizer is built locally (no hub): a ``tokenizers`` WordLevel model over ``vocab`` (lower-cased,
whitespace/punctuation split, out-of-vocabulary words -> ``[UNK]``), or a saved
``PreTrainedTokenizerFast`` folder given as ``tokenizer_path``. Either way it is written into the
model folder (``tokenizer/``) by :meth:`save_extra`, and a loaded model reads it from there, so a
model folder is self-contained.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from genrl.config.validate import option
from genrl.preference.models.base import RewardModel, RewardModelError
from genrl.registry import REWARD_MODELS

PAD, UNK, EOS = "[PAD]", "[UNK]", "[EOS]"
SPECIAL_TOKENS = (PAD, UNK, EOS)  # ids 0, 1, 2 of a vocab-built tokenizer
TOKENIZER_DIR = "tokenizer"
MAX_CACHED_TEXTS = 4096  # prompts repeat across batches: token ids are cached per distinct string

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# Covers the digit prompts of genrl.preference.text_pairs and the usual words around them; any other
# word maps to [UNK]. Give ``vocab`` (e.g. ``vocab_from_texts(train_prompts)``) for other prompts.
DEFAULT_VOCAB: tuple[str, ...] = (
    *DIGIT_NAMES, *(str(d) for d in range(10)),
    "a", "an", "the", "of", "by", "with", "in", "on", "and", "or", "is", "it", "this", "that", "please", "for",
    "digit", "digits", "number", "numeral", "figure", "handwritten", "hand", "written", "write", "draw", "drawn",
    "drawing", "sketch", "image", "picture", "photo", "showing", "shows", "show", "single", "clear", "crisp",
    "sharp", "blurry", "faint", "thick", "thin", "bold", "neat", "messy", "clean", "bright", "dark", "light",
    "small", "large", "big", "centered", "white", "black", "grey", "gray", "stroke", "strokes",
    ",", ".", ":", "!", "?", "-",
)

# Attribute names under which transformers configs keep their dropout probabilities.
_DROPOUT_ATTRS = ("attention_dropout", "hidden_dropout", "hidden_dropout_prob", "attention_probs_dropout_prob",
                  "resid_pdrop", "embd_pdrop", "attn_pdrop", "dropout")


def vocab_from_texts(texts: Iterable[str], *, lowercase: bool = True) -> list[str]:
    """The word vocabulary of some texts, split as the WordLevel tokenizer splits them (sorted, stable)."""
    from tokenizers import pre_tokenizers

    split = pre_tokenizers.Whitespace()
    words: set[str] = set()
    for text in texts:
        words.update(w for w, _ in split.pre_tokenize_str(text.lower() if lowercase else text))
    return sorted(words - set(SPECIAL_TOKENS))


def build_word_tokenizer(vocab: Sequence[str], *, lowercase: bool = True):
    """A ``PreTrainedTokenizerFast`` over a word list: [PAD]=0, [UNK]=1, [EOS]=2, then the words in order.

    WordLevel rather than BPE: the prompts are short and come from a closed vocabulary, and a word
    model needs no training corpus, so the same vocabulary always gives the same ids.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    ids: dict[str, int] = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for word in vocab:
        word = word.lower() if lowercase else word
        if not word or any(c.isspace() for c in word):
            raise ValueError(f"vocab: {word!r} is not a single word (no spaces, not empty)")
        ids.setdefault(word, len(ids))
    tok = Tokenizer(models.WordLevel(ids, unk_token=UNK))
    if lowercase:
        tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(list(SPECIAL_TOKENS))  # "[EOS]" written in a text is one token, never split
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, unk_token=UNK, eos_token=EOS)


def load_tokenizer(path: str | Path):
    """A saved ``PreTrainedTokenizerFast`` folder (``save_pretrained``)."""
    from transformers import PreTrainedTokenizerFast

    path = Path(path).expanduser()
    if not (path / "tokenizer.json").is_file():
        raise ValueError(f"tokenizer_path: {path} has no tokenizer.json (expected a folder written by "
                         "PreTrainedTokenizerFast.save_pretrained)")
    return PreTrainedTokenizerFast.from_pretrained(str(path))


@REWARD_MODELS.register("image_text")
class ImageTextRewardModel(RewardModel):
    """Images ``[B, C, H, W]`` (or ``[B, H, W]``) in [0, 1], text contexts (one prompt per sample)."""

    modality = "image_text"
    context_kinds = ("text",)

    @dataclass
    class Config:
        model_type: str = option(default="llama", help="transformers model_type of the backbone "
                                                       "(AutoConfig.for_model): a decoder (llama, qwen2, gpt2) or "
                                                       "an encoder (bert).")
        hidden_size: int = option(default=64, help="Backbone width (also the patch and token embedding width).")
        num_hidden_layers: int = option(default=2, help="Backbone layers.")
        num_attention_heads: int = option(default=4, help="Attention heads.")
        intermediate_size: int = option(default=128, help="MLP width of the backbone.")
        patch_size: int = option(default=2, help="Side of the square image patches (must divide H and W).")
        max_text_tokens: int = option(default=32, help="Prompt tokens kept, [EOS] included (longer prompts are cut).")
        vocab: list[str] = option(default=list(DEFAULT_VOCAB),
                                  help="Words of the WordLevel tokenizer (ids after [PAD], [UNK], [EOS]); other "
                                       "words map to [UNK]. Default: digit names and common prompt words.")
        tokenizer_path: str | None = option(default=None, help="Or: a saved PreTrainedTokenizerFast folder (it is "
                                                               "copied into the model folder).")
        lowercase: bool = option(default=True, help="Lower-case the text (vocab-built tokenizers only).")
        pooling: Literal["last", "mean"] = option(default="last", help="last = hidden state of the last non-padding "
                                                                      "token ([EOS]); mean = mean over non-padding "
                                                                      "positions (patches and text).")
        dropout: float = option(default=0.0, help="Dropout of the backbone (every dropout its config has) and "
                                                  "before the value head.")
        backbone_kwargs: dict[str, Any] = option(default_factory=dict, help="Further AutoConfig.for_model keyword "
                                                                           "arguments (e.g. rope_theta).")
        vocab_size: int | None = option(default=None, help="Filled in when the model is built (the tokenizer's "
                                                           "size); lets a saved model be rebuilt before its own "
                                                           "tokenizer/ folder is read. Leave unset in recipes.")

        def validate(self) -> None:
            for name in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                         "patch_size"):
                if getattr(self, name) < 1:
                    raise ValueError(f"{name}: must be >= 1")
            if self.max_text_tokens < 2:
                raise ValueError("max_text_tokens: must be >= 2 (a word and [EOS])")
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(f"hidden_size: {self.hidden_size} is not a multiple of num_attention_heads "
                                 f"({self.num_attention_heads})")
            if not 0 <= self.dropout < 1:
                raise ValueError("dropout: must be in [0, 1)")
            if self.tokenizer_path is None and not self.vocab:
                raise ValueError("vocab: give some words, or a tokenizer_path")

    def __init__(self, config: Config, *, sample_shape: tuple[int, ...]) -> None:
        from transformers import AutoConfig, AutoModel

        super().__init__(config, sample_shape=sample_shape)
        if len(self.sample_shape) not in (2, 3):
            raise ValueError(f"image_text: samples must be [C, H, W] or [H, W], got {list(sample_shape)}")
        c, h, w = self.sample_shape if len(self.sample_shape) == 3 else (1, *self.sample_shape)
        p = config.patch_size
        if h % p or w % p:
            raise ValueError(f"image_text: patch_size {p} does not divide the image size {h}x{w}")
        self.num_patches = (h // p) * (w // p)

        tokenizer = self._initial_tokenizer(config)
        vocab_size = config.vocab_size or len(tokenizer)
        if tokenizer is not None and len(tokenizer) != vocab_size:
            raise ValueError(f"image_text: vocab_size {vocab_size} but the tokenizer has {len(tokenizer)} tokens")
        self.config = dataclasses.replace(config, vocab_size=vocab_size)  # config.json records the size
        self.tokenizer = None
        self._token_cache: dict[str, list[int]] = {}

        special = {"pad_token_id": 0, "eos_token_id": None, "bos_token_id": None}
        if tokenizer is not None:
            special.update(pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
                           eos_token_id=tokenizer.eos_token_id)
        backbone_cfg = AutoConfig.for_model(
            config.model_type, hidden_size=config.hidden_size, num_hidden_layers=config.num_hidden_layers,
            num_attention_heads=config.num_attention_heads, intermediate_size=config.intermediate_size,
            vocab_size=vocab_size, max_position_embeddings=self.num_patches + config.max_text_tokens,
            **special, **config.backbone_kwargs)
        for attr in _DROPOUT_ATTRS:
            if isinstance(getattr(backbone_cfg, attr, None), float):
                setattr(backbone_cfg, attr, config.dropout)
        if hasattr(backbone_cfg, "num_key_value_heads") and "num_key_value_heads" not in config.backbone_kwargs:
            backbone_cfg.num_key_value_heads = config.num_attention_heads  # plain MHA (qwen2's default is 32)
        backbone_cfg.use_cache = False  # scoring, not generation
        self.backbone = AutoModel.from_config(backbone_cfg)
        self.backbone_config = backbone_cfg
        width = backbone_cfg.hidden_size
        self.patch_embed = nn.Linear(c * p * p, width)
        self.patch_pos = nn.Parameter(torch.randn(self.num_patches, width) * 0.02)
        self.head = nn.Sequential(nn.Dropout(config.dropout), nn.Linear(width, 1))
        if tokenizer is not None:
            self.set_tokenizer(tokenizer)

    # ------------------------------------------------------------ tokenizer
    @staticmethod
    def _initial_tokenizer(config: Config):
        """The tokenizer the config describes; None when only a saved model folder can supply it."""
        if config.tokenizer_path is None:
            return build_word_tokenizer(config.vocab, lowercase=config.lowercase)
        if Path(config.tokenizer_path).expanduser().is_dir():
            return load_tokenizer(config.tokenizer_path)
        if config.vocab_size:  # rebuilt from a model folder's config.json: load_extra attaches its tokenizer
            return None
        raise ValueError(f"tokenizer_path: {config.tokenizer_path} does not exist")

    def set_tokenizer(self, tokenizer) -> None:
        """Attach a tokenizer whose ids fit the embedding table."""
        rows = self.backbone.get_input_embeddings().num_embeddings
        if len(tokenizer) != rows:
            raise RewardModelError(f"image_text: the tokenizer has {len(tokenizer)} tokens, the model's embedding "
                                   f"table {rows} rows")
        self.tokenizer = tokenizer
        self._token_cache.clear()

    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids ``[B, L]`` (right-padded, [EOS] appended, at most ``max_text_tokens``) and lengths ``[B]``."""
        if self.tokenizer is None:
            raise RuntimeError("image_text: no tokenizer attached; load the model with load_reward_model")
        eos = self.tokenizer.eos_token_id
        budget = self.config.max_text_tokens - (eos is not None)
        new = [t for t in dict.fromkeys(texts) if t not in self._token_cache]
        if new:
            if len(self._token_cache) + len(new) > MAX_CACHED_TEXTS:
                self._token_cache.clear()
            for text, enc in zip(new, self.tokenizer.backend_tokenizer.encode_batch(new, add_special_tokens=False)):
                self._token_cache[text] = enc.ids[:budget] + ([eos] if eos is not None else [])
        rows = [self._token_cache[t] for t in texts]
        lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
        pad = self.backbone_config.pad_token_id or 0
        ids = torch.full((len(rows), max((len(r) for r in rows), default=1) or 1), pad, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        return ids, lengths

    # ------------------------------------------------------------ scoring
    def forward(self, samples: torch.Tensor, contexts: Sequence[str] | str) -> torch.Tensor:
        self.check_samples(samples)
        b = len(samples)
        if isinstance(contexts, str):
            contexts = [contexts] * b
        if contexts is None or len(contexts) != b or not all(isinstance(t, str) for t in contexts):
            raise ValueError(f"image_text: contexts must be {b} strings (one prompt per sample)")
        device = self.patch_embed.weight.device
        x = samples.float().to(device)
        x = x.unsqueeze(1) if x.dim() == 3 else x
        p = self.config.patch_size
        patches = F.unfold(x * 2 - 1, kernel_size=p, stride=p).transpose(1, 2)  # [B, N, C*p*p], row-major
        image = self.patch_embed(patches) + self.patch_pos
        ids, lengths = self.encode(contexts)
        ids, lengths = ids.to(device), lengths.to(device)
        text = self.backbone.get_input_embeddings()(ids)
        text_mask = torch.arange(ids.shape[1], device=device) < lengths[:, None]
        mask = torch.cat([torch.ones(b, self.num_patches, dtype=torch.bool, device=device), text_mask], 1)
        hidden = self.backbone(inputs_embeds=torch.cat([image.to(text.dtype), text], 1),
                               attention_mask=mask.long()).last_hidden_state
        if self.config.pooling == "last":
            pooled = hidden[torch.arange(b, device=device), self.num_patches + lengths - 1]
        else:
            m = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1)
        return self.head(pooled).squeeze(-1)

    # ------------------------------------------------------------ files
    def save_extra(self, out_dir: Path) -> None:
        if self.tokenizer is None:
            raise RewardModelError("image_text: cannot save a model without its tokenizer")
        self.tokenizer.save_pretrained(str(Path(out_dir) / TOKENIZER_DIR))

    @classmethod
    def load_extra(cls, model_dir: Path, model: RewardModel) -> None:
        folder = Path(model_dir) / TOKENIZER_DIR
        if not (folder / "tokenizer.json").is_file():
            raise RewardModelError(f"{model_dir}: {TOKENIZER_DIR}/tokenizer.json is missing (an image_text model "
                                   "folder carries its tokenizer)")
        assert isinstance(model, ImageTextRewardModel)
        model.set_tokenizer(load_tokenizer(folder))
