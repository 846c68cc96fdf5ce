"""Vision-language policy: a transformers image-text-to-text model (Qwen2.5-VL, SmolVLM) as a token policy.

Rollout builds each question's chat prompt with the checkpoint's own processor and chat template,
samples a group of responses with ``generate``, then re-scores them teacher-forced with
:meth:`VLMPolicy.token_stats` — the *same* function the objective calls with gradients — so the
importance ratio is exactly 1 before the first update.

Two layout rules make that exact (as the flow policy's fixed ``forward_chunk`` does): every sequence
is laid out at a fixed length (the prompt left-padded to ``max_prompt_tokens``, the response
right-padded to ``max_new_tokens``), and the network always runs on ``forward_chunk`` rows (the last
chunk padded with copies). A row's numbers then do not depend on which other rows share its batch.

Token log-probs and entropies are computed from the final hidden states ``logprob_chunk`` positions
at a time, each chunk re-computed in the backward pass, so the ``[batch, length, vocab]`` logits of a
150k-token vocabulary never exist at once.

What differs between model families (which processor outputs carry the image, how they are laid out
per row, which tokens are vision placeholders, where the language model's modules are) lives in
:class:`genrl.models.vlm.VisionFamily`; this module only calls it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from genrl.config.validate import option
from genrl.policies.flow_image import LoraOptions
from genrl.policies.weights import TrainableWeights
from genrl.registry import POLICIES
from genrl.rng import Purpose, key_seed
from genrl.trainer.rollout import Rollout


@dataclass
class VLMLoraOptions(LoraOptions):
    """LoRA on the language model's attention and MLP projections (Qwen2/Llama names)."""

    rank: int = option(default=16, help="LoRA rank r.")
    alpha: float = option(default=32.0, help="LoRA alpha (scale = alpha / r).")
    target_modules: list[str] = option(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        help="Module names (suffixes) of the language model that get adapters.",
    )


class ImageTokenMismatch(ValueError):
    """A prompt whose image placeholder tokens do not match its image's features (caught before the forward)."""


def _to_pil(image):
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, (str, Path)):  # benchmark questions refer to image files
        with Image.open(image) as im:
            return im.convert("RGB")
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    return Image.fromarray(arr).convert("RGB")


EXPORT_FORMATS = ("merged", "peft")


@POLICIES.register("vlm")
class VLMPolicy(TrainableWeights):
    """Image + question -> sampled response; per-token log-probs for GRPO-family objectives."""

    needs_prompt_items = True  # questions with images, not ids (checked when the recipe is validated)

    @dataclass
    class Config:
        base_checkpoint: str | None = option(
            default=None, help="A transformers checkpoint folder (model, tokenizer, processor, chat template).")
        base_recipe: str | None = option(
            default=None, help="SFT recipe that makes the base model; built once and cached under $GENRL_CACHE.")
        system_prompt: str | None = option(
            default=None, help="System message; null = the prompt source's own (if any), else none.")
        max_prompt_tokens: int = option(default=96, help="Prompt length the layout pads to (longer prompts are an error).")
        max_new_tokens: int = option(default=32, help="Response length cap; longer responses are truncated.")
        lora: VLMLoraOptions | None = option(default=None, help="LoRA adapter settings; null = full fine-tuning.")
        train_vision: bool = option(default=False, help="Also train the vision tower (full fine-tuning only).")
        forward_chunk: int = option(default=16, help="Rows per network call; fixed so results do not depend on batching.")
        generate_chunk: int | None = option(
            default=None,
            help="Rows per generate() call; null = forward_chunk. Decoding is launch-bound on GPUs, so fewer, larger "
                 "calls generate faster. The sampled responses depend on it (each call's RNG is keyed by its first "
                 "sample); the log-probs do not (they are re-scored in forward_chunk rows).")
        max_image_patches: int | None = option(
            default=None,
            help="Pad every image's patches to this many. Needed when images differ in size and a step's batch is "
                 "generated in pieces (trainer.reward_chunks) or over several processes, whose tensors must line up; "
                 "null = the largest image of each piece (fine for same-size images).")
        logprob_chunk: int = option(default=64, help="Response positions per log-softmax chunk (bounds vocab memory).")
        gradient_checkpointing: bool = option(default=False, help="Re-compute decoder activations in backward.")
        old_log_probs: Literal["rollout", "update"] = option(
            default="rollout",
            help="Where the old log-probs come from: a no-grad re-score at rollout, or the update's own forward, "
                 "detached ('update': exact only when each rollout feeds ONE optimizer step — trainer.inner_epochs 1 "
                 "and minibatch_size = the whole batch — and it saves one forward per sample, as trl does).")

        def validate(self) -> None:
            if self.base_checkpoint and self.base_recipe:
                raise ValueError("base_recipe: give base_checkpoint or base_recipe, not both")
            if not (self.base_checkpoint or self.base_recipe):
                raise ValueError("base_checkpoint: a VLM policy starts from a checkpoint folder or an SFT recipe")
            if self.generate_chunk is not None and self.generate_chunk < 1:
                raise ValueError("generate_chunk: must be >= 1 or null")
            for name in ("max_prompt_tokens", "max_new_tokens", "forward_chunk", "logprob_chunk"):
                if getattr(self, name) < 1:
                    raise ValueError(f"{name}: must be >= 1")
            if self.max_image_patches is not None and self.max_image_patches < 1:
                raise ValueError("max_image_patches: must be >= 1 or null")
            if self.train_vision and self.lora is not None:
                raise ValueError("train_vision: only with full fine-tuning (lora: null)")

    def __init__(self, config: Config, *, device: torch.device | str = "cpu", base_dir: Path | None = None) -> None:
        from genrl.models.vlm import load_vlm, vision_family

        self.config = config
        self.device = torch.device(device)
        if base_dir is None:
            raise ValueError("the vlm policy needs a base checkpoint folder")
        self.base_dir = Path(base_dir).resolve()
        family = vision_family(self.base_dir)  # an unsupported model is refused before its weights load
        self.model, self.processor = load_vlm(self.base_dir)
        self.tokenizer = self.processor.tokenizer
        self._folder_padding_side = self.tokenizer.padding_side  # what an export writes back
        self.tokenizer.padding_side = "left"
        mc = self.model.config
        self.family = family(mc, self.tokenizer)
        self.image_token_id = self.family.image_token_id
        self.merge = getattr(mc.vision_config, "spatial_merge_size", 1)
        self.eos_id = self.tokenizer.convert_tokens_to_ids(self.tokenizer.eos_token)
        # Vision placeholder tokens must never be *generated*: one sampled <|image_pad|> in a response makes the
        # teacher-forced forward see more image tokens than image features (a much-reported RL crash).
        self.vision_token_ids = self.family.vision_token_ids
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eos_id
        if config.lora is not None:
            from peft import LoraConfig, get_peft_model

            self.model.requires_grad_(False)
            # Adapters on the language model only: the vision tower's blocks reuse some of these names.
            targets = rf".*{self.family.language_module}.*\.({'|'.join(config.lora.target_modules)})"
            self.model = get_peft_model(self.model, LoraConfig(
                r=config.lora.rank, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
                target_modules=targets, init_lora_weights=True))
        elif not config.train_vision:
            for name, p in self.model.named_parameters():
                if self.family.is_vision_parameter(name):
                    p.requires_grad_(False)
        if config.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model.to(self.device)
        self.engine_model: nn.Module = self.model
        self._items: dict[int, object] = {}

    # ----------------------------------------------------------------- loading
    @staticmethod
    def resolve_base(config: Config, *, recipe_file: str | None, key: str) -> Path | None:
        from genrl.config.validate import RecipeError

        if config.base_recipe:
            from genrl.pretrain.vlm_sft import vlm_base_from_recipe

            return vlm_base_from_recipe(config.base_recipe, referenced_from=recipe_file, key=f"{key}.base_recipe")
        path = Path(config.base_checkpoint).expanduser()
        if not (path / "config.json").is_file():
            raise RecipeError(recipe_file, f"{key}.base_checkpoint",
                              f"no vision-language checkpoint at {path} (expected a folder with config.json, weights, "
                              "tokenizer and processor files)")
        return path.resolve()

    @classmethod
    def from_checkpoint(cls, path: Path | str, *, use_ema: bool = True, merge: bool = False,
                        device: str = "cpu") -> VLMPolicy:
        """A base folder (SFT output, a downloaded model) or a genrl RL checkpoint, ready to answer."""
        from genrl.policies.loading import load_rl_checkpoint, read_checkpoint_meta

        path = Path(path).resolve()
        meta = read_checkpoint_meta(path) if (path / "checkpoint.json").is_file() else {"weights": "full_base"}
        if meta.get("weights") == "full_base":
            return cls(cls.Config(base_checkpoint=str(path)), device=device, base_dir=path)
        policy = load_rl_checkpoint(cls, path, meta, use_ema=use_ema, device=device,
                                    base_check=lambda base: (base / "config.json").is_file())
        config = policy.config
        if merge and config.lora is not None:
            policy.model = policy.engine_model = policy.model.merge_and_unload()
        return policy

    def checkpoint_meta(self) -> dict:
        return {"policy": "vlm", "model": {"architecture": type(self.model).__name__ if self.config.lora is None
                                           else type(self.model.get_base_model()).__name__}}

    def frozen_checkpoint_files(self) -> dict[str, dict[str, torch.Tensor]]:
        return {}  # the frozen parts are the base checkpoint folder itself

    def trainable_module(self) -> nn.Module:
        return self.model

    # ------------------------------------------------------------------ export
    def export(self, fmt: str, out: Path) -> Path:
        """This policy's weights (the checkpoint's, EMA when it was loaded so) as a folder that transformers
        and PEFT load without genrl, with the base folder's processor, tokenizer and chat template.

        ``merged``: the whole model, LoRA merged into a *copy* (this policy keeps its adapters), for
        ``AutoModelForImageTextToText.from_pretrained(out)`` + ``AutoProcessor.from_pretrained(out)``.
        ``peft`` (LoRA runs): the adapter folder, ``base_model_name_or_path`` the absolute base folder, for
        ``PeftModel.from_pretrained(base, out)`` or transformers' ``from_pretrained(out)``."""
        from peft import PeftModel

        from genrl.export import ExportError

        if fmt not in EXPORT_FORMATS:
            raise ExportError(f"export format {fmt!r} is not one the vlm policy writes; supported: "
                             f"{', '.join(EXPORT_FORMATS)}")
        adapters = isinstance(self.model, PeftModel)
        if fmt == "peft" and self.config.lora is None:
            raise ExportError("export format 'peft': this policy is fully fine-tuned (policy.lora: null), it has no "
                             "adapter to write; use --format merged")
        if fmt == "peft" and not adapters:
            raise ExportError("export format 'peft': the adapters were merged into the model when it was loaded "
                             "(merge=True); load it without merging, or use --format merged")
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        if fmt == "peft":
            for adapter in self.model.peft_config.values():
                adapter.base_model_name_or_path = str(self.base_dir)
            self.model.save_pretrained(str(out))
        else:
            (copy.deepcopy(self.model).merge_and_unload() if adapters else self.model).save_pretrained(str(out))
        self._save_processor(out)
        return out

    def _save_processor(self, out: Path) -> None:
        """Processor, tokenizer and chat template beside the weights, with the folder's padding side (the
        policy pads prompts on the left for itself, not for whoever loads the export). A fast tokenizer keeps
        its last call's padding in its backend, which ``tokenizer.json`` records and loading reads back as
        the padding side: cleared first (each call sets it again)."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            backend.no_padding()
            backend.no_truncation()
        side, self.tokenizer.padding_side = self.tokenizer.padding_side, self._folder_padding_side
        try:
            self.processor.save_pretrained(str(out))
        finally:
            self.tokenizer.padding_side = side

    @property
    def reward_sample_spec(self) -> tuple[tuple[int, ...], str]:
        return (), "text"

    # ----------------------------------------------------------------- prompts
    def _messages(self, item, system: str | None) -> list[dict]:
        # Content as a list of parts in every turn: some families' templates (SmolVLM's) read only that form.
        msgs = [{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []
        return msgs + [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": item.question}]}]

    def encode_prompts(self, items, images, *, system: str | None = None, fixed_length: bool = True
                       ) -> dict[str, torch.Tensor]:
        """Chat prompts + images -> processor tensors, left-padded to ``max_prompt_tokens`` (training's fixed
        layout; ``fixed_length=False``, for evaluation: to the longest prompt); image tokens checked."""
        system = self.config.system_prompt if self.config.system_prompt is not None else system
        texts = [self.processor.apply_chat_template(self._messages(it, system), add_generation_prompt=True)
                 for it in items]
        pils = self.family.per_question([_to_pil(im) for im in images])
        enc = self.processor(text=texts, images=pils, return_tensors="pt", padding=True)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        P = self.config.max_prompt_tokens if fixed_length else ids.shape[1]
        lengths = mask.sum(1)
        for i in range(len(items)):
            if lengths[i] > P:
                raise ValueError(f"question {getattr(items[i], 'index', i)}: its prompt has {int(lengths[i])} tokens, "
                                 f"above policy.max_prompt_tokens={P}; raise it")
        pad = P - ids.shape[1]
        ids = F.pad(ids, (pad, 0), value=self.pad_id) if pad > 0 else ids[:, -P:]
        mask = F.pad(mask, (pad, 0), value=0) if pad > 0 else mask[:, -P:]
        out = {"prompt_ids": ids, "prompt_mask": mask, **self._image_rows(enc, items, fixed_length)}
        self.check_image_tokens(out, [getattr(it, "index", i) for i, it in enumerate(items)])
        return out

    def encode_pixels(self, items, images) -> torch.Tensor:
        """Only the pixel rows of other images for the same prompts (the noisy / raw branch): the image
        processor alone, no chat template or tokenizer. Same-size images, so the prompts still fit."""
        pils = self.family.per_question([_to_pil(im) for im in images])
        enc = self.processor.image_processor(images=pils, return_tensors="pt")
        return self._image_rows(enc, items, fixed_length=True)["pixel_values"]

    def _image_rows(self, enc, items, fixed_length: bool) -> dict[str, torch.Tensor]:
        """The processor's image outputs -> one row per question, padded to ``max_image_patches`` (fixed
        layout) or to the largest image of the call."""
        width = self.config.max_image_patches if fixed_length else None
        return self.family.rows(enc, width=width, names=[getattr(it, "index", i) for i, it in enumerate(items)])

    def check_image_tokens(self, enc: dict[str, torch.Tensor], names, *, key: str = "prompt_ids") -> None:
        """Each sequence must hold exactly as many image placeholder tokens as its image yields features;
        otherwise the model's scatter of image features fails deep inside (or misaligns silently)."""
        counts = (enc[key] == self.image_token_id).sum(1).tolist()
        expected = self.family.image_tokens(enc).tolist()
        for name, got, want in zip(names, counts, expected):
            if got != want:
                why = ("the prompt was cut (raise policy.max_prompt_tokens)" if got < want else
                       "the response or the question text holds image placeholder tokens of its own")
                raise ImageTokenMismatch(f"sample {name}: {got} image tokens in the prompt but its image gives "
                                         f"{want} features; {why}")

    # ------------------------------------------------------------------ network
    def _chunk_inputs(self, t: dict[str, torch.Tensor], lo: int, hi: int) -> tuple[dict, int]:
        """Rows lo..hi as model inputs, padded with copies of the last row to ``forward_chunk`` rows."""
        n = hi - lo
        return self._model_inputs(t, list(range(lo, hi)) + [hi - 1] * (self.config.forward_chunk - n)), n

    def _model_inputs(self, t: dict[str, torch.Tensor], rows: list[int]) -> dict[str, torch.Tensor]:
        """The model's keyword inputs for ``rows`` of ``t`` (the family turns stored rows back into them)."""
        return self.family.model_inputs(t, rows)

    def token_stats(self, model: nn.Module, t: dict[str, torch.Tensor], *, entropy: bool = False,
                    compare_pixels: torch.Tensor | None = None, temperature: float = 1.0) -> dict[str, torch.Tensor]:
        """Teacher-forced log p(response token) [B, R] of the full sequences in ``t`` — the one scoring
        function of rollout (old log-probs) and update (with gradients) — plus, on request, the token
        entropies [B, R] and the symmetric KL [B, R] to the same model shown ``compare_pixels`` instead.
        ``temperature`` is the sampling one: the policy that generated the tokens is softmax(logits / T)."""
        scale = 1.0 / temperature if temperature > 0 else 1.0
        R, rows, width = self.config.max_new_tokens, self.config.forward_chunk, self.config.logprob_chunk
        head = self._lm_head(model)
        names = t["sample_ids"].tolist() if "sample_ids" in t else list(range(len(t["input_ids"])))
        self.check_image_tokens(t, names, key="input_ids")
        lps, ents, divs = [], [], []
        for lo in range(0, len(t["input_ids"]), rows):
            hi = min(lo + rows, len(t["input_ids"]))
            inputs, n = self._chunk_inputs(t, lo, hi)
            h = self._response_hidden(model, inputs)
            targets = inputs["input_ids"][:, -R:]
            h2 = None
            if compare_pixels is not None:  # D_t is used without gradient (sg): no graph for the second branch
                other, _ = self._chunk_inputs({**t, "pixel_values": compare_pixels}, lo, hi)
                with torch.no_grad():
                    h2 = self._response_hidden(model, other)
            row_lp, row_ent, row_div = [], [], []
            for s in range(0, R, width):
                e = min(s + width, R)
                args = (h[:, s:e], targets[:, s:e], head.weight, head.bias, scale)
                lp, ent = checkpoint(_chunk_stats, *args, use_reentrant=False) if torch.is_grad_enabled() \
                    else _chunk_stats(*args)
                row_lp.append(lp[:n])
                row_ent.append(ent[:n])
                if h2 is not None:
                    with torch.no_grad():
                        row_div.append(_chunk_divergence(h[:n, s:e].detach(), h2[:n, s:e], head.weight, head.bias,
                                                         scale))
            lps.append(torch.cat(row_lp, 1))
            ents.append(torch.cat(row_ent, 1))
            if h2 is not None:
                divs.append(torch.cat(row_div, 1))
        out = {"log_probs": torch.cat(lps)}
        if entropy:
            out["entropies"] = torch.cat(ents)
        if compare_pixels is not None:
            out["divergence"] = torch.cat(divs)
        return out

    def _response_hidden(self, model: nn.Module, inputs: dict) -> torch.Tensor:
        """Final hidden states [rows, R, H] at the positions that predict the R response tokens."""
        R = self.config.max_new_tokens
        hidden = model(**inputs, output_hidden_states=True, logits_to_keep=1, use_cache=False).hidden_states[-1]
        return hidden[:, -R - 1 : -1]

    @staticmethod
    def _lm_head(model: nn.Module) -> nn.Module:
        inner = getattr(model, "module", model)  # DDP / engine wrappers
        return inner.get_output_embeddings()

    # ------------------------------------------------------------------ rollout
    def items_for(self, indices: torch.Tensor) -> list:
        return [self._items[int(i)] for i in indices.tolist()]

    @torch.no_grad()
    def rollout(self, prompts: torch.Tensor, sample_ids: torch.Tensor, *, step: int, seed: int, plan,
                explorer_config, items=None, group_ids: torch.Tensor | None = None) -> Rollout:
        """Sample one response per row; store the fixed-length sequences and their old log-probs.

        ``plan`` (from the explorer) says which rows see a noisy image (``plan.noisy_rows``), which image
        the update conditions on, whether to measure visual uncertainty, and the sampling temperature.
        """
        if items is None:
            raise ValueError("the vlm policy needs a prompt source with items (e.g. prompts: {name: visual_arithmetic})")
        model = self.engine_model
        model.eval()
        self._items = {int(i): it for i, it in zip(prompts.tolist(), items)}  # this piece's, for reward_inputs
        groups = group_ids if group_ids is not None else sample_ids
        noisy = plan.noisy_rows(step, groups, sample_ids)  # [B] bool
        raw_images = [it.image for it in items]
        branch_images = [plan.noisy_image(it.image, step, int(g)) if nz else it.image
                         for it, g, nz in zip(items, groups.tolist(), noisy.tolist())]
        system = getattr(items[0], "system_prompt", None)
        gen_enc = self.encode_prompts(items, branch_images, system=system)
        response = self._generate(model, gen_enc, plan.temperature, plan.top_p, seed, step, sample_ids)
        ended = (response == self.eos_id).cumsum(1)
        response_mask = (ended - (response == self.eos_id).long()) == 0  # tokens up to and including the eos
        response = torch.where(response_mask, response, torch.full_like(response, self.pad_id))
        truncated = ended[:, -1] == 0
        t = {"input_ids": torch.cat([gen_enc["prompt_ids"], response], 1),
             "attention_mask": torch.cat([gen_enc["prompt_mask"], response_mask.long()], 1),
             **{k: gen_enc[k] for k in self.family.image_keys}, "sample_ids": sample_ids}
        if plan.update_image == "raw" and bool(noisy.any()):
            t["pixel_values"] = self.encode_pixels(items, raw_images)
        t = {k: v.to(self.device) for k, v in t.items()}
        compare = None
        tensors = {"prompts": prompts.to(self.device), "sample_ids": sample_ids.to(self.device), **t,
                   "noisy": noisy.to(self.device), "truncated": truncated.to(self.device)}
        mask = response_mask.to(self.device).float()
        tensors["response_mask"] = mask
        meta = {"step": step, "seed": seed, "temperature": plan.temperature}
        if plan.uncertainty:
            # VOGUE's D_t = KL(P_t || Q_t) + KL(Q_t || P_t), P/Q = the token distributions with the raw / the
            # noisy image, teacher-forced on the same sampled response, no gradient. Symmetric, so each row
            # is compared with "the other" image of its pair.
            others = [it.image if (nz and plan.update_image == "branch") else plan.noisy_image(it.image, step, int(g))
                      for it, g, nz in zip(items, groups.tolist(), noisy.tolist())]
            compare = self.encode_pixels(items, others).to(self.device)
        if self.config.old_log_probs == "update":
            # The objective takes the old log-probs (and D_t, from the other image's no-grad forward) from the
            # update's own forward: the weights that sampled are the weights that score.
            if compare is not None:
                tensors["compare_pixel_values"] = compare
            return Rollout(tensors, meta)
        stats = self.token_stats(model, t, entropy=True, compare_pixels=compare, temperature=plan.temperature)
        tensors.update({"old_log_probs": stats["log_probs"] * mask, "entropies": stats["entropies"] * mask})
        if compare is not None:
            tensors["vis_uncertainty"] = stats["divergence"] * mask
        return Rollout(tensors, meta)

    def _generate(self, model, enc, temperature: float, top_p: float, seed: int, step: int,
                  sample_ids: torch.Tensor, max_new_tokens: int | None = None) -> torch.Tensor:
        """Sampled responses [B, R] (eos then pad after the end), generated ``generate_chunk`` rows at a time
        under an RNG keyed by (seed, step, first sample id) of the chunk."""
        R = max_new_tokens or self.config.max_new_tokens
        outs = []
        inner = getattr(model, "module", model)
        rows = self.config.generate_chunk or self.config.forward_chunk
        for lo in range(0, len(enc["prompt_ids"]), rows):
            hi = min(lo + rows, len(enc["prompt_ids"]))
            t = {"input_ids": enc["prompt_ids"], "attention_mask": enc["prompt_mask"],
                 **{k: enc[k] for k in self.family.image_keys}}
            inputs = self._model_inputs(t, list(range(lo, hi)))
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                torch.manual_seed(key_seed(seed, Purpose.STEP_NOISE, step, int(sample_ids[lo])))
                gen = inner.generate(**{k: v.to(self.device) for k, v in inputs.items()}, do_sample=temperature > 0,
                                     temperature=temperature if temperature > 0 else None,
                                     top_p=top_p if temperature > 0 else None, top_k=None, max_new_tokens=R,
                                     min_new_tokens=0, eos_token_id=self.eos_id, pad_token_id=self.pad_id,
                                     suppress_tokens=self.vision_token_ids)
            resp = gen[:, inputs["input_ids"].shape[1]:].cpu()
            outs.append(F.pad(resp, (0, R - resp.shape[1]), value=self.pad_id))
        return torch.cat(outs)

    def reward_inputs(self, rollout: Rollout) -> tuple[list[str], list]:
        """What reward callables receive: the response texts and the questions (with their answers)."""
        R = self.config.max_new_tokens
        ids = rollout["input_ids"][:, -R:].cpu()
        mask = rollout["response_mask"].cpu().bool()
        texts = [self.tokenizer.decode(row[m], skip_special_tokens=True) for row, m in zip(ids, mask)]
        return texts, self.items_for(rollout["prompts"].cpu())

    def score(self, batch: Rollout, *, reference: bool = False) -> dict[str, torch.Tensor]:
        """Per-token log-probs [B, R] of the stored responses (with gradients unless ``reference``)."""
        t = {k: batch[k] for k in ("input_ids", "attention_mask", "sample_ids", *self.family.image_keys)}
        temperature = batch.meta.get("temperature", 1.0)
        if reference:
            with self.reference() as ref:
                return self.token_stats(ref, t, temperature=temperature)
        self.engine_model.train()
        compare = batch["compare_pixel_values"] if "compare_pixel_values" in batch else None  # VOGUE, update mode
        return self.token_stats(self.engine_model, t, entropy=True, temperature=temperature, compare_pixels=compare)

    # --------------------------------------------------------------- evaluation
    @torch.no_grad()
    def answer(self, items, *, seed: int, step: int, sample_ids: torch.Tensor, temperature: float,
               top_p: float = 1.0, system: str | None = None, max_new_tokens: int | None = None) -> list[str]:
        """Sampled (temperature > 0) or greedy responses to raw-image questions, as text (evaluation; prompts
        of any length, ``max_new_tokens`` defaulting to the policy's)."""
        enc = self.encode_prompts(items, [it.image for it in items], system=system, fixed_length=False)
        resp = self._generate(self.engine_model.eval(), enc, temperature, top_p, seed, step, sample_ids,
                              max_new_tokens)
        texts = []
        for row in resp:
            end = (row == self.eos_id).nonzero()
            row = row[: int(end[0]) if len(end) else len(row)]
            texts.append(self.tokenizer.decode(row, skip_special_tokens=True))
        return texts


def _chunk_stats(h: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 scale: float = 1.0):
    logits = F.linear(h, weight, bias).float() * scale
    logp = torch.log_softmax(logits, -1)
    token = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    ent = -(logp.exp() * logp).sum(-1)
    return token, ent


def _chunk_divergence(h: torch.Tensor, h2: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      scale: float = 1.0):
    return symmetric_kl(torch.log_softmax(F.linear(h, weight, bias).float() * scale, -1),
                        torch.log_softmax(F.linear(h2, weight, bias).float() * scale, -1))


def symmetric_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) + KL(Q || P) over the last dimension, from log-probabilities."""
    p, q = log_p.exp(), log_q.exp()
    return ((p - q) * (log_p - log_q)).sum(-1)
