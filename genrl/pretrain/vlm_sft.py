"""Supervised warm start of a vision-language model on the visual arithmetic task (the stage before RL).

RL from a model that never answers in the format gets no reward to learn from; RL from a model that
already answers everything right has nothing left to learn. This job fine-tunes (cross-entropy on the
response tokens only, the chat prompt and image masked out) for a fixed number of steps chosen so
that the base model lands in between, and records its greedy held-out accuracy in ``checkpoint.json``.

Starting from ``base_checkpoint`` (any transformers image-text-to-text folder) or, without one, from a
tiny Qwen2.5-VL-architecture model built from ``model`` with a tokenizer trained on the task's text.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch

from genrl.cache import cached_artifact, resolve_recipe_path
from genrl.config.validate import option
from genrl.data.visual_arithmetic import KINDS, SYSTEM_PROMPT, VisualArithmetic
from genrl.models.vlm import TinyVLMConfig, build_tiny_qwen25vl, load_vlm
from genrl.progress import progress as progress_bar
from genrl.rng import Purpose, keyed_generator

PROCESSOR_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "chat_template.json",
                   "preprocessor_config.json", "processor_config.json", "video_preprocessor_config.json")


@dataclass
class VLMSFTRecipe:
    """``recipes/pretrain/vlm_arith_sft.yaml``: how the VLM recipes' base model is made."""

    kind: Literal["vlm_sft"] = option(help="Artifact kind; must be vlm_sft.")
    base_checkpoint: str | None = option(default=None, help="Checkpoint folder to fine-tune; null = build the tiny model.")
    model: TinyVLMConfig = option(default_factory=TinyVLMConfig, help="Tiny model architecture (no base_checkpoint).")
    tokenizer_corpus: int = option(default=2000, help="Train questions whose text trains the tiny model's tokenizer.")
    vision_pretrain_steps: int = option(
        default=400, help="Tiny model only: steps of pretraining the vision tower to recognise the digit (or none) in "
                          "each cell, the stand-in for the pretrained vision encoder a real VLM starts from.")
    vision_pretrain_lr: float = option(default=1e-3, help="AdamW learning rate of that vision pretraining.")
    train_vision: bool = option(default=True, help="Also fine-tune the vision tower during SFT.")
    eval_every: int = option(default=0, help="Print the greedy held-out accuracy every N steps (0 = only at the end).")
    split_size: int = option(default=4000, help="Train questions to fine-tune on.")
    kinds: list[str] = option(default_factory=lambda: list(KINDS), help="Question kinds.")
    data_seed: int = option(default=0, help="Seed of the question set (the RL recipes use the same).")
    seed: int = option(default=0, help="Seed of initialisation and batches.")
    steps: int = option(default=600, help="Optimizer steps (sets how good the base model is).")
    batch_size: int = option(default=32, help="Questions per step.")
    lr: float = option(default=2e-3, help="Peak AdamW learning rate (linear warm-up, then constant).")
    warmup_steps: int = option(default=50, help="Warm-up steps.")
    eval_questions: int = option(default=200, help="Held-out questions for the recorded greedy accuracy.")
    system_prompt: str = option(default=SYSTEM_PROMPT, help="System message of every prompt.")
    tags: list[str] = field(default_factory=list, metadata={"help": "Free-form labels."})


def chat_prompts(processor, questions: list[str], system: str | None) -> list[str]:
    """Prompt texts through the checkpoint's chat template (image first, then the question)."""
    out = []
    for q in questions:
        msgs = [{"role": "system", "content": system}] if system else []
        msgs.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]})
        out.append(processor.apply_chat_template(msgs, add_generation_prompt=True))
    return out


def sft_batch(processor, items, system: str | None) -> dict[str, torch.Tensor]:
    """Prompt + solution + end token, right-padded; labels only on the response tokens."""
    from genrl.policies.vlm import _to_pil

    tok = processor.tokenizer
    prompts = chat_prompts(processor, [it.question for it in items], system)
    images = [_to_pil(it.image) for it in items]
    side = tok.padding_side
    tok.padding_side = "right"
    try:
        full = processor(text=[p + it.solution() + tok.eos_token for p, it in zip(prompts, items)], images=images,
                         return_tensors="pt", padding=True)
        prompt_len = processor(text=prompts, images=images, return_tensors="pt", padding=True)["attention_mask"].sum(1)
    finally:
        tok.padding_side = side
    labels = full["input_ids"].clone()
    positions = torch.arange(labels.shape[1]).unsqueeze(0)
    labels[(positions < prompt_len.unsqueeze(1)) | (full["attention_mask"] == 0)] = -100
    return {**full, "labels": labels}


def build_vlm_sft(config: VLMSFTRecipe, out_dir: Path, *, progress: bool = True) -> None:
    torch.manual_seed(config.seed)
    train = VisualArithmetic("train", config.split_size, config.data_seed, tuple(config.kinds))
    if config.base_checkpoint:
        source = Path(config.base_checkpoint).expanduser()
    else:
        source = out_dir / "_init"
        source.mkdir(parents=True)
        corpus = [config.system_prompt, "system\nuser\nassistant\n"]
        corpus += [f"{it.question} {it.solution()}" for it in train.items(range(min(config.tokenizer_corpus, len(train))))]
        build_tiny_qwen25vl(source, config.model, corpus)
    model, processor = load_vlm(source)
    if not config.base_checkpoint and config.vision_pretrain_steps:
        pretrain_vision(model, processor, train, config, progress=progress)
    if not config.train_vision:
        model.model.visual.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, config.warmup_steps)))
    model.train()
    bar = progress_bar(range(config.steps), desc="vlm sft", disable=not progress)
    loss = torch.tensor(float("nan"))
    for step in bar:
        g = keyed_generator(config.seed, Purpose.DATA, step)
        idx = torch.randint(len(train), (config.batch_size,), generator=g)
        batch = sft_batch(processor, train.items(idx), config.system_prompt)
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        if config.eval_every and (step + 1) % config.eval_every == 0 and step + 1 < config.steps:
            acc = greedy_accuracy(model, source, min(100, config.eval_questions), config)
            print(f"[genrl] vlm sft step {step + 1}: loss {loss.item():.3f}, held-out greedy accuracy {acc:.3f}",
                  flush=True)
            model.train()
    model.eval()
    save_model_folder(model, source, out_dir)
    if source == out_dir / "_init":
        shutil.rmtree(source)
    accuracy = heldout_accuracy(out_dir, config.eval_questions, config.data_seed, config.kinds, config.system_prompt)
    meta = {"format": "genrl-checkpoint/1", "policy": "vlm", "weights": "full_base", "kind": "vlm_sft",
            "base_checkpoint": str(config.base_checkpoint) if config.base_checkpoint else None,
            "model": asdict(config.model) if not config.base_checkpoint else None,
            "trained_steps": config.steps, "final_loss": float(loss.item()),
            "heldout_greedy_accuracy": accuracy, "heldout_questions": config.eval_questions}
    (out_dir / "checkpoint.json").write_text(json.dumps(meta, indent=2))
    print(f"[genrl] vlm sft: final loss {loss.item():.3f}, held-out greedy accuracy {accuracy:.3f} "
          f"({config.eval_questions} questions)")


def pretrain_vision(model, processor, data: VisualArithmetic, config: VLMSFTRecipe, *, progress: bool) -> None:
    """Train the vision tower (+ a throw-away linear head) to tell, for each of the canvas's cells, which
    digit it shows or that it is empty. Without it a from-scratch vision tower learns far too slowly
    from the language loss alone (measured: chance-level digit reading after 1,500 SFT steps)."""
    from genrl.data.visual_arithmetic import CELL, SLOTS
    from genrl.policies.vlm import _to_pil

    visual = model.model.visual
    merge = visual.spatial_merge_size if hasattr(visual, "spatial_merge_size") else 2
    unit = 14 * merge  # pixels per merged vision token
    width = model.config.vision_config.out_hidden_size
    per_cell = CELL // unit  # merged tokens along each side of a cell
    head = torch.nn.Linear(width * per_cell * per_cell, 11)
    params = list(visual.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=config.vision_pretrain_lr)
    bar = progress_bar(range(config.vision_pretrain_steps), desc="vision pretrain", disable=not progress)
    for step in bar:
        g = keyed_generator(config.seed, Purpose.DATA, step, 1)
        items = data.items(torch.randint(len(data), (config.batch_size,), generator=g))
        enc = processor.image_processor(images=[_to_pil(it.image) for it in items], return_tensors="pt")
        out = visual(enc["pixel_values"], grid_thw=enc["image_grid_thw"])
        feats = getattr(out, "pooler_output", out)  # [B * tokens, width], raster order of merged tokens
        grid = feats.view(len(items), per_cell, SLOTS, per_cell, width)  # [B, row, cell, column in cell, width]
        logits = head(grid.permute(0, 2, 1, 3, 4).reshape(len(items) * SLOTS, -1))
        targets = torch.full((len(items), SLOTS), 10)
        for i, it in enumerate(items):
            for d, slot in zip(it.digits, it.slots):
                targets[i, slot] = d
        loss = torch.nn.functional.cross_entropy(logits, targets.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)


def save_model_folder(model, source: Path, out_dir: Path) -> None:
    """The model's weights + the processor files of the folder it came from: a folder ``load_vlm`` reads."""
    model.save_pretrained(str(out_dir))
    for name in PROCESSOR_FILES:
        if (source / name).is_file() and source.resolve() != Path(out_dir).resolve():
            shutil.copy2(source / name, Path(out_dir) / name)


def greedy_accuracy(model, source: Path, n: int, config: VLMSFTRecipe) -> float:
    """Held-out greedy accuracy of the model being trained, saved to a temporary folder (processor from ``source``)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        save_model_folder(model, source, Path(tmp))
        return heldout_accuracy(Path(tmp), n, config.data_seed, config.kinds, config.system_prompt)


@torch.no_grad()
def heldout_accuracy(path: Path, n: int, data_seed: int, kinds: list[str], system: str) -> float:
    """Greedy accuracy on the first ``n`` held-out questions (unseen handwriting)."""
    from genrl.eval.math_answers import answers_match, extract_answer
    from genrl.policies.vlm import VLMPolicy

    if n <= 0:
        return float("nan")
    policy = VLMPolicy(VLMPolicy.Config(base_checkpoint=str(path), max_new_tokens=48), base_dir=path)
    items = VisualArithmetic("heldout", n, data_seed, tuple(kinds)).items(range(n))
    texts = policy.answer(items, seed=0, step=0, sample_ids=torch.arange(n), temperature=0.0, system=system)
    return sum(answers_match(extract_answer(t), it.answer) for t, it in zip(texts, items)) / n


def vlm_base_from_recipe(recipe: str, *, referenced_from: str | None = None, key: str = "") -> Path:
    path = resolve_recipe_path(recipe, referenced_from=referenced_from, key=key)
    return cached_artifact(path, VLMSFTRecipe, "vlm_sft", build_vlm_sft)
