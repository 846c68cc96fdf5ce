"""Benchmark: one GRPO step of genrl's VLM trainer against TRL's GRPOTrainer, and VOGUE's overhead.

    python benchmarks/vlm_grpo_vs_trl.py [--model DIR] [--repeats 5] [--steps-window 8] [--record]
        [--deterministic default|on|off] [--trl-text-positions] [--micro-batch N] [--no-vogue | --no-trl]

This is a benchmark, not a test: it prints figures (and, with ``--record``, appends them to
docs/benchmarks.md); it asserts nothing.

The same Qwen2.5-VL-architecture checkpoint folder (``--model``; by default the one
``recipes/pretrain/vlm_arith_sft.yaml`` builds, cached) is trained three ways, side by side in ONE
process, each from its own copy of the weights:

  genrl  ``Trainer.train_step`` with ``policy: vlm``, ``explorer: sampling``, ``objective: grpo``
  vogue  the same with ``explorer: vogue``, ``objective: vogue`` (noisy-image branch + the extra
         no-grad forward that measures the visual uncertainty D_t)
  trl    ``trl.GRPOTrainer.train()`` on a ``datasets.Dataset`` with ``prompt`` (system + user message;
         TRL inserts the image placeholder), ``image`` and ``answer`` columns, transformers generation,
         and as ``processing_class`` the processor ``genrl.models.vlm.load_processor`` builds (the
         checkpoint's own processor class without its torchvision-only video half: torchvision is not
         installed here, so ``AutoProcessor``, which TRL would call itself, fails), left-padded as TRL
         sets it up when it loads a processor itself.

Equal for all, and printed side by side as read back from the two trainers: the questions of every
step (TRL's dataset holds, in order and unshuffled, exactly the visual arithmetic train questions
genrl's prompt source draws for steps 0, 1, 2, ...; checked after the run), prompts per step, group
size, completions per optimizer update (one update per step: minibatch = the whole batch,
inner_epochs / num_iterations 1), the micro-batch, the longest response, temperature and top_p, the
rewards (genrl's own ``answer_accuracy`` and ``answer_format`` classes, weights 1.0 and 0.2, summed
then normalised per group), the clipped surrogate with per-sequence token means (TRL
``loss_type="grpo"``), no KL term (beta 0: neither builds a reference model), AdamW (lr, betas, eps,
no weight decay, constant schedule, no warm-up), grad clip 1.0, fp32, no activation checkpointing,
the trained parameters (the language model; the vision tower frozen in both unless
``--train-vision``). Checked before training: both build the same prompt token ids and pixel values,
and both score the same response with the same log-probs (see ``--trl-text-positions``).

Timing: after one untimed warm-up step of every variant, ``--repeats`` rounds of ``--steps-window``
consecutive steps of each, interleaved (trl, genrl, vogue, trl, genrl, vogue, ...): TRL's ``train()``
runs all its steps in one call, and a ``TrainerCallback`` at the end of each TRL window runs the
genrl windows, TRL's clock paused. A TRL step is the wall time between consecutive ``on_step_end``
events (data loading, generation, rewards, loss, backward, clip, AdamW, its bookkeeping); a genrl
step is ``train_step`` (rollout, rewards, update). Logging and checkpoints are off in both. Reported:
medians over the repetitions of the per-step mean of each window; ratios are medians of the paired
per-repetition ratios. ``--deterministic``: torch's deterministic-algorithms switch is process-wide,
so it is set before every window: by default each framework runs under its own default (genrl turns
it on for CPU runs; TRL leaves it off), ``on`` / ``off`` puts both under the same setting (it costs
TRL's loss, whose chunked log-prob kernel allocates many tensors that deterministic mode fills).

What is NOT the same (inherent to the two designs; printed as notes): genrl lays every sequence out
at a fixed length (prompt left-padded to ``max_prompt_tokens``, here the longest prompt of the
questions used; response right-padded to ``max_new_tokens``), generates ``forward_chunk`` rows per
call (with ``--old-log-probs rollout`` it also re-scores each rollout once without gradients; the
default ``update``, like TRL when every generation serves exactly one update, takes the old log-probs
from the loss forward itself), while TRL pads to the batch's longest sequence and generates the whole
batch in one call. TRL also suppresses only the image token in sampling (genrl: all vision tokens). The sampled responses differ (different random streams), so their
lengths, and the generation time, differ; both are printed. ``--trl-text-positions`` (a diagnostic)
drops ``mm_token_type_ids`` from TRL's processor outputs, so that Qwen2.5-VL falls back to 1-D text
positions, as it does for a policy that does not pass them; the log-prob check says whether genrl
computes the same function as TRL with, or only without, them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SFT_RECIPE = ROOT / "recipes" / "pretrain" / "vlm_arith_sft.yaml"
TARGET_RATIO = 1.0  # genrl s/step / TRL s/step
TARGET_VOGUE_OVERHEAD = 0.30  # VOGUE s/step / GRPO s/step - 1

from benchmarks.flow_grpo_step import cpu_model, peak_rss_mib, quiet_single_thread, record_entry  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None,
                    help=f"Qwen2.5-VL checkpoint folder (default: built from {SFT_RECIPE.relative_to(ROOT)}, cached)")
    ap.add_argument("--prompts", type=int, default=4, help="prompts (questions) per step")
    ap.add_argument("--group", type=int, default=4, help="completions per prompt (GRPO group size)")
    ap.add_argument("--micro-batch", type=int, default=None,
                    help="completions per forward/backward (default: the whole batch); genrl's forward_chunk and "
                         "TRL's per_device_train_batch_size are set to it")
    ap.add_argument("--max-new-tokens", type=int, default=32, help="longest response (TRL max_completion_length)")
    ap.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    ap.add_argument("--lr", type=float, default=1e-5, help="AdamW learning rate")
    ap.add_argument("--train-vision", action="store_true", help="also train the vision tower (both)")
    ap.add_argument("--seed", type=int, default=0, help="seed of both trainers")
    ap.add_argument("--old-log-probs", choices=("update", "rollout"), default="update",
                    help="genrl's policy.old_log_probs: 'update' (from the one update's forward, as trl does with "
                         "one update per generation) or 'rollout' (a no-grad re-score of every rollout)")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved repetitions of every variant")
    ap.add_argument("--steps-window", type=int, default=8, help="consecutive steps timed per repetition")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps of every variant before timing")
    ap.add_argument("--trl-text-positions", action="store_true",
                    help="drop mm_token_type_ids from TRL's processor outputs (Qwen2.5-VL then uses 1-D text "
                         "positions): for a genrl policy that does not pass them, an equal-work timing")
    ap.add_argument("--deterministic", choices=("default", "on", "off"), default="default",
                    help="torch deterministic algorithms: each framework's default (genrl: on for CPU, TRL: off), "
                         "or on / off for both")
    ap.add_argument("--no-vogue", action="store_true", help="skip the GRPO vs VOGUE comparison")
    ap.add_argument("--no-trl", action="store_true", help="skip TRL (genrl GRPO vs VOGUE only)")
    ap.add_argument("--record", action="store_true", help="append a dated entry to docs/benchmarks.md (or $GENRL_BENCHMARK_DOC)")
    args = ap.parse_args(argv)
    if min(args.prompts, args.group, args.max_new_tokens, args.repeats, args.steps_window) < 1 or args.warmup < 1:
        ap.error("--prompts, --group, --max-new-tokens, --repeats, --steps-window and --warmup must be >= 1")
    if args.group < 2:
        ap.error("--group must be >= 2 (group-relative advantages)")
    batch = args.prompts * args.group
    args.micro_batch = args.micro_batch or batch
    if batch % args.micro_batch:
        ap.error(f"--micro-batch must divide the batch of {batch} completions")
    if args.no_trl and args.no_vogue:
        ap.error("nothing to compare with both --no-trl and --no-vogue")
    return args


def resolve_model(args: argparse.Namespace) -> Path:
    if args.model:
        path = Path(args.model).expanduser().resolve()
        if not (path / "config.json").is_file():
            raise SystemExit(f"--model {path}: not a checkpoint folder (no config.json)")
        return path
    if not SFT_RECIPE.is_file():
        raise SystemExit(f"{SFT_RECIPE.relative_to(ROOT)} does not exist (yet): pass --model DIR, a Qwen2.5-VL "
                         "checkpoint folder such as one genrl.pretrain.vlm_sft builds")
    from genrl.pretrain.vlm_sft import vlm_base_from_recipe

    return vlm_base_from_recipe(str(SFT_RECIPE))


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def paired(a: list[float], b: list[float]) -> float:
    return median([x / y for x, y in zip(a, b, strict=True)])


# ----------------------------------------------------------------------------- genrl
def genrl_recipe(args, model: Path, prompt_tokens: int, steps: int, *, vogue: bool) -> dict:
    batch = args.prompts * args.group
    explorer = {"name": "vogue", "temperature": args.temperature, "top_p": 1.0} if vogue else \
        {"name": "sampling", "temperature": args.temperature, "top_p": 1.0}
    return {
        "run_dir": "unused",  # given to the Trainer
        "seed": args.seed, "device": "cpu", "num_threads": 1, "mixed_precision": "no",
        "deterministic": None if args.deterministic == "default" else args.deterministic == "on",
        "policy": {"name": "vlm", "base_checkpoint": str(model), "max_prompt_tokens": prompt_tokens,
                   "max_new_tokens": args.max_new_tokens, "forward_chunk": args.micro_batch,
                   "train_vision": args.train_vision, "lora": None, "gradient_checkpointing": False,
                   "old_log_probs": args.old_log_probs},
        "explorer": explorer,
        "prompts": {"name": "visual_arithmetic", "split": "train"},
        "rewards": [{"name": "answer_accuracy", "weight": 1.0}, {"name": "answer_format", "weight": 0.2}],
        "advantage": {"name": "group_relative", "combine": "sum_then_normalize", "std_scope": "group"},
        "objective": {"name": "vogue" if vogue else "grpo", "kl_beta": 0.0, "clip_low": 0.2, "clip_high": 0.2,
                      "loss_agg": "seq_mean_token_mean", "mask_truncated": False},
        "trainer": {"steps": steps, "prompts_per_step": args.prompts, "group_size": args.group,
                    "minibatch_size": batch, "micro_batch_size": args.micro_batch, "inner_epochs": 1,
                    "lr": args.lr, "weight_decay": 0.0, "adam_betas": [0.9, 0.999], "adam_eps": 1e-8,
                    "max_grad_norm": 1.0, "lr_schedule": "constant", "warmup_steps": 0},
        "eval": None,
        "logging": {"tensorboard": False, "progress": False},
    }


def build_genrl(recipe: dict, tmp: Path, name: str):
    import yaml

    from genrl.config.load import load_recipe
    from genrl.recipe import TrainRecipe
    from genrl.trainer.loop import Trainer

    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    cfg, _ = load_recipe(path, TrainRecipe)
    return Trainer(cfg, recipe_file=str(path), run_dir=str(tmp / name))


class GenrlRunner:
    """Consecutive ``train_step`` calls of one trainer; per-step means of its phases over a window.

    ``generate`` and ``rescore`` (the no-grad ``token_stats`` of the rollout: old log-probs, entropies and,
    for VOGUE, the second forward with the other image) are timed by wrapping the policy's own methods."""

    def __init__(self, trainer) -> None:
        import torch

        self.trainer = trainer
        self.step = 0
        self.gen_s = self.rescore_s = 0.0
        self.longest: list[int] = []
        pol = trainer.policy
        generate, token_stats = pol._generate, pol.token_stats

        def timed_generate(*a, **k):
            t0 = time.perf_counter()
            resp = generate(*a, **k)
            self.gen_s += time.perf_counter() - t0
            # decode steps = the longest response up to and including its end token (pad after it)
            eos = (resp == pol.eos_id).int()
            self.longest.append(int(((eos.cumsum(1) - eos) == 0).sum(1).max()))
            return resp

        def timed_token_stats(*a, **k):
            if torch.is_grad_enabled():
                return token_stats(*a, **k)
            t0 = time.perf_counter()
            try:
                return token_stats(*a, **k)
            finally:
                self.rescore_s += time.perf_counter() - t0

        pol._generate = timed_generate  # instance attributes: the policy calls self._generate(...) etc.
        pol.token_stats = timed_token_stats

    def __call__(self, n: int) -> dict[str, float]:
        keys = ("time/rollout", "time/reward", "time/update", "response_tokens", "truncated_share")
        sums = dict.fromkeys(keys, 0.0)
        self.gen_s = self.rescore_s = 0.0
        self.longest = []
        t0 = time.perf_counter()
        for _ in range(n):
            m = self.trainer.train_step(self.step)
            self.step += 1
            for k in keys:
                sums[k] += m[k]
        wall = time.perf_counter() - t0
        out = {k.removeprefix("time/"): v / n for k, v in sums.items()}
        out["generate"] = self.gen_s / n
        out["rescore"] = self.rescore_s / n
        out["longest"] = sum(self.longest) / len(self.longest)
        out["rollout"] += out.pop("reward")  # generation + re-scoring + rewards: TRL's _generate_and_score
        out["step"] = wall / n
        return out


# ----------------------------------------------------------------------------- TRL
def trl_dataset(questions: list, system: str):
    """One row per question, in genrl's step order: system + user message (TRL inserts the image), image, answer."""
    import datasets

    from genrl.policies.vlm import _to_pil

    return datasets.Dataset.from_dict({
        "prompt": [[{"role": "system", "content": system}, {"role": "user", "content": q.question}] for q in questions],
        "image": [_to_pil(q.image) for q in questions],
        "answer": [q.answer for q in questions],
    })


def trl_rewards():
    """genrl's own reward classes as TRL reward callables (completions are assistant messages)."""
    from types import SimpleNamespace

    from genrl.rewards.answers import AnswerAccuracy, AnswerFormat

    acc, fmt = AnswerAccuracy(AnswerAccuracy.Config()), AnswerFormat(AnswerFormat.Config())

    def texts(completions) -> list[str]:
        return [c[-1]["content"] if isinstance(c, list) else c for c in completions]

    def answer_accuracy(prompts, completions, answer, **kwargs) -> list[float]:
        return acc(texts(completions), [SimpleNamespace(answer=a) for a in answer]).tolist()

    def answer_format(prompts, completions, answer, **kwargs) -> list[float]:
        return fmt(texts(completions), [SimpleNamespace(answer=a) for a in answer]).tolist()

    return [answer_accuracy, answer_format]


def build_trl(args, model_dir: Path, dataset, steps: int, out_dir: Path, callback):
    import torch
    from transformers import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    from genrl.models.vlm import load_vlm

    torch.manual_seed(args.seed)
    model, processor = load_vlm(model_dir)  # the same loading path genrl's policy uses
    # What TRL sets when it loads the processor itself (AutoProcessor.from_pretrained(..., padding_side="left")):
    # its forward pass takes mm_token_type_ids from a padded processor call, aligned with left-padded prompts.
    processor.tokenizer.padding_side = processor.tokenizer.truncation_side = "left"
    if args.trl_text_positions:
        processor = without_mm_token_types(processor)
    if not args.train_vision:
        for name, p in model.named_parameters():
            if ".visual." in f".{name}.":
                p.requires_grad_(False)
    batch = args.prompts * args.group
    config = GRPOConfig(
        output_dir=str(out_dir), max_steps=steps, per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=batch // args.micro_batch, steps_per_generation=batch // args.micro_batch,
        num_generations=args.group, num_iterations=1, max_completion_length=args.max_new_tokens,
        temperature=args.temperature, top_p=1.0, top_k=0, beta=0.0, epsilon=0.2, loss_type="grpo",
        scale_rewards="group", multi_objective_aggregation="sum_then_normalize", reward_weights=[1.0, 0.2],
        mask_truncated_completions=False, shuffle_dataset=False, learning_rate=args.lr, lr_scheduler_type="constant",
        warmup_steps=0, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=1.0,
        activation_checkpointing=False, bf16=False, fp16=False, use_cpu=True, use_vllm=False, report_to=[],
        logging_strategy="no", save_strategy="no", eval_strategy="no", disable_tqdm=True, seed=args.seed,
        data_seed=args.seed, dataloader_num_workers=0, remove_unused_columns=False, log_completions=False)
    trainer = GRPOTrainer(model=model, reward_funcs=trl_rewards(), args=config, train_dataset=dataset,
                          processing_class=processor, callbacks=[callback])
    trainer.remove_callback(PrinterCallback)
    return trainer


class TrlTimer:
    """Wraps a GRPOTrainer's generation and rollout methods to time them (per-step sums), and records the
    questions each rollout got (question text, answer, image bytes) to check them against genrl's."""

    def __init__(self, trainer) -> None:
        import numpy as np

        self.gen_s = self.rollout_s = 0.0
        self.seen: list[list[tuple]] = []
        gen, roll = trainer._generate_single_turn, trainer._generate_and_score_completions

        def timed_gen(*a, **k):
            t0 = time.perf_counter()
            try:
                return gen(*a, **k)
            finally:
                self.gen_s += time.perf_counter() - t0

        def timed_roll(inputs, *a, **k):
            self.seen.append([(x["prompt"][-1]["content"], x["answer"], np.asarray(x["image"])[..., 0].tobytes())
                              for x in inputs])
            t0 = time.perf_counter()
            try:
                return roll(inputs, *a, **k)
            finally:
                self.rollout_s += time.perf_counter() - t0

        trainer._generate_single_turn = timed_gen
        trainer._generate_and_score_completions = timed_roll

    def reset(self) -> None:
        self.gen_s = self.rollout_s = 0.0


def without_mm_token_types(processor):
    """The same processor, its outputs without ``mm_token_type_ids`` (``--trl-text-positions``): Qwen2.5-VL then
    falls back to 1-D text positions, as it does for any caller that does not pass them."""
    base = type(processor)

    class NoTokenTypes(base):
        def __call__(self, *a, **k):
            out = super().__call__(*a, **k)
            out.pop("mm_token_type_ids", None)
            return out

    NoTokenTypes.__name__ = NoTokenTypes.__qualname__ = base.__name__
    processor.__class__ = NoTokenTypes
    return processor


def make_interleaver(args, between):
    """A TrainerCallback that times TRL windows of ``--steps-window`` steps (after ``--warmup`` steps) and,
    after each, calls ``between(rep, trl_window)`` with TRL's clock paused."""
    from transformers import TrainerCallback

    class Interleave(TrainerCallback):
        def __init__(self) -> None:
            self.t0 = 0.0
            self.timer: TrlTimer | None = None  # set once the trainer exists
            self.metrics: dict[str, list[float]] = {}  # the trainer's own per-step metric lists

        def on_train_begin(self, a, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            now = time.perf_counter()
            s = state.global_step
            if s < args.warmup:
                return
            if s == args.warmup:
                between(-1, None)
            elif (s - args.warmup) % args.steps_window == 0:
                n = args.steps_window
                window = {"step": (now - self.t0) / n, "generate": self.timer.gen_s / n,
                          "rollout": self.timer.rollout_s / n, **self._lengths(n)}
                window["update"] = window["step"] - window["rollout"]
                between((s - args.warmup) // n - 1, window)
            else:
                return  # inside a window: its clock runs on
            self.timer.reset()
            self.t0 = time.perf_counter()

        def _lengths(self, n: int) -> dict[str, float]:
            m = self.metrics
            def mean(key: str) -> float:
                xs = m.get(key, [])
                return sum(xs[-n:]) / n if len(xs) >= n else float("nan")

            return {"response_tokens": mean("completions/mean_length"), "longest": mean("completions/max_length"),
                    "truncated_share": mean("completions/clipped_ratio")}

    return Interleave()


# ----------------------------------------------------------------------------- checks
def same_inputs(policy, trl_trainer, questions, dataset) -> tuple[bool, bool]:
    """Do genrl and TRL build the same prompt token ids and pixel values for these questions?"""
    import torch
    from trl.data_utils import prepare_multimodal_messages

    from genrl.data.visual_arithmetic import SYSTEM_PROMPT

    enc = policy.encode_prompts(questions, [q.image for q in questions], system=SYSTEM_PROMPT)
    g_ids = [row[m.bool()].tolist() for row, m in zip(enc["prompt_ids"], enc["prompt_mask"])]
    g_pix = torch.cat([p[: int(k)] for p, k in zip(enc["pixel_values"], enc["image_grid_thw"].prod(1).tolist())])
    rows = [dataset[i] for i in range(len(questions))]
    msgs = [prepare_multimodal_messages(r["prompt"], images=[r["image"]]) for r in rows]
    t_ids, _, fields = trl_trainer._tokenize_prompts(msgs)
    t_ids = [list(x) for x in t_ids]
    return g_ids == t_ids, bool(torch.equal(g_pix, torch.as_tensor(fields["pixel_values"]).to(g_pix.dtype)))


def same_logprobs(policy, trl_trainer, questions, dataset) -> dict[str, float]:
    """Max |log p genrl - log p TRL| over the response tokens of the reference solutions of ``questions``
    (initial weights): genrl's ``token_stats`` on its fixed layout, TRL's ``_get_per_token_logps_and_entropies``
    on inputs built as ``_generate_and_score_completions`` builds them (with, and without, mm_token_type_ids)."""
    import torch
    import torch.nn.functional as F
    from trl.data_utils import apply_chat_template, prepare_multimodal_messages

    from genrl.data.visual_arithmetic import SYSTEM_PROMPT

    R, tok = policy.config.max_new_tokens, policy.tokenizer
    resp = [tok(q.solution() + tok.eos_token, add_special_tokens=False)["input_ids"][:R] for q in questions]
    B, L = len(questions), max(len(r) for r in resp)
    ids = torch.full((B, R), policy.pad_id)
    mask = torch.zeros(B, R, dtype=torch.long)
    for i, r in enumerate(resp):
        ids[i, : len(r)], mask[i, : len(r)] = torch.tensor(r), 1
    enc = policy.encode_prompts(questions, [q.image for q in questions], system=SYSTEM_PROMPT)
    t = {"input_ids": torch.cat([enc["prompt_ids"], ids], 1), "attention_mask": torch.cat([enc["prompt_mask"], mask], 1),
         "image_grid_thw": enc["image_grid_thw"], "pixel_values": enc["pixel_values"]}
    with torch.no_grad():
        g = policy.token_stats(policy.model.eval(), t)["log_probs"][:, :L]

    proc = trl_trainer.processing_class
    rows = [dataset[i] for i in range(B)]
    msgs = [prepare_multimodal_messages(r["prompt"], images=[r["image"]]) for r in rows]
    p_ids, _, _ = trl_trainer._tokenize_prompts(msgs)
    P = max(len(x) for x in p_ids)
    prompt = torch.stack([F.pad(torch.tensor(list(x)), (P - len(x), 0), value=tok.pad_token_id) for x in p_ids])
    pmask = torch.stack([F.pad(torch.ones(len(x), dtype=torch.long), (P - len(x), 0)) for x in p_ids])
    texts = [apply_chat_template({"prompt": m}, proc)["prompt"] for m in msgs]
    kw = proc(images=[[r["image"]] for r in rows], text=texts, padding=True, return_tensors="pt")
    kw = {k: v for k, v in kw.items() if k not in ("input_ids", "attention_mask")}
    if "mm_token_type_ids" in kw:
        kw["mm_token_type_ids"] = torch.cat([kw["mm_token_type_ids"], torch.zeros(B, L, dtype=torch.long)], 1)
    out = {}
    for name, extra in (("trl", kw), ("trl, text positions", {k: v for k, v in kw.items() if k != "mm_token_type_ids"})):
        with torch.no_grad():
            lp, _, _ = trl_trainer._get_per_token_logps_and_entropies(
                trl_trainer.model.eval(), torch.cat([prompt, ids[:, :L]], 1), torch.cat([pmask, mask[:, :L]], 1), L,
                num_images=[1] * B, **extra)
        out[name] = float(((lp - g).abs() * mask[:, :L]).max())
    trl_trainer.model.train()
    return out


def prompt_lengths(processor, questions, system: str) -> list[int]:
    from genrl.policies.vlm import _to_pil
    from genrl.pretrain.vlm_sft import chat_prompts

    texts = chat_prompts(processor, [q.question for q in questions], system)
    enc = processor(text=texts, images=[_to_pil(q.image) for q in questions], return_tensors="pt", padding=True)
    return enc["attention_mask"].sum(1).tolist()


# ----------------------------------------------------------------------------- main
def fmt_ms(x: float) -> str:
    return "-" if x != x else f"{x * 1000:.0f} ms"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    quiet_single_thread()
    import torch

    from genrl.data.visual_arithmetic import SYSTEM_PROMPT
    from genrl.models.vlm import load_processor
    from genrl.prompts.visual_arithmetic import VisualArithmeticPrompts

    t_model = time.perf_counter()
    model_dir = resolve_model(args)
    model_s = time.perf_counter() - t_model  # building the SFT base once (cached afterwards), or nothing
    total = args.warmup + args.repeats * args.steps_window

    # The questions of steps 0 .. total-1, exactly as genrl's prompt source draws them.
    source = VisualArithmeticPrompts(VisualArithmeticPrompts.Config(split="train"), seed=args.seed)
    questions = [q for s in range(total) for q in source.items(source.sample(s, args.prompts))]
    processor = load_processor(model_dir)
    lengths = prompt_lengths(processor, questions, SYSTEM_PROMPT)
    max_prompt = max(lengths)

    variants: dict[str, object] = {}
    samples: dict[str, list[dict]] = {}
    mem: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="genrl-bench-vlm-") as tmp:
        tmp = Path(tmp)
        recipes = {"genrl": genrl_recipe(args, model_dir, max_prompt, total, vogue=False)}
        if not args.no_vogue:
            recipes["vogue"] = genrl_recipe(args, model_dir, max_prompt, total, vogue=True)
        trainers = {name: build_genrl(r, tmp, name) for name, r in recipes.items()}
        for name, tr in trainers.items():
            variants[name] = GenrlRunner(tr)
            samples[name] = []
        genrl_tr = trainers["genrl"]
        mem["after genrl build"] = peak_rss_mib()

        # torch's deterministic-algorithms switch is process-wide: each window runs under its own framework's.
        det = {name: tr.deterministic for name, tr in trainers.items()}
        det["trl"] = args.deterministic == "on"  # TRL leaves torch's default (off) alone

        def run_genrl_windows(rep: int) -> None:
            for name, run in variants.items():
                torch.use_deterministic_algorithms(det[name], warn_only=True)
                if rep < 0:
                    for _ in range(args.warmup):
                        run(1)
                else:
                    samples[name].append(run(args.steps_window))

        checks: dict[str, object] = {}
        trl_cfg = None
        if args.no_trl:
            run_genrl_windows(-1)
            for rep in range(args.repeats):
                run_genrl_windows(rep)
                print(f"[bench] repetition {rep + 1}/{args.repeats}: " + ", ".join(
                    f"{k} {fmt_ms(v[-1]['step'])}" for k, v in samples.items()), flush=True)
        else:
            samples["trl"] = []
            dataset = trl_dataset(questions, SYSTEM_PROMPT)

            def between(rep: int, window) -> None:
                if window is not None:
                    samples["trl"].append(window)
                run_genrl_windows(rep if window is not None else -1)
                torch.use_deterministic_algorithms(det["trl"], warn_only=True)
                if window is not None:
                    print(f"[bench] repetition {rep + 1}/{args.repeats}: " + ", ".join(
                        f"{k} {fmt_ms(v[-1]['step'])}" for k, v in samples.items()), flush=True)
                else:
                    mem["after warm-up"] = peak_rss_mib()

            cb = make_interleaver(args, between)
            trl_tr = build_trl(args, model_dir, dataset, total, tmp / "trl", cb)
            cb.timer = TrlTimer(trl_tr)
            cb.metrics = trl_tr._metrics["train"]
            mem["after TRL build"] = peak_rss_mib()
            checks["prompt ids"], checks["pixels"] = same_inputs(
                genrl_tr.policy, trl_tr, questions[: args.prompts], dataset)
            checks["logprobs"] = same_logprobs(genrl_tr.policy, trl_tr, questions[: args.prompts], dataset)
            trl_cfg = trl_tr.args
            trl_trainable = sum(p.numel() for p in trl_tr.model.parameters() if p.requires_grad)
            torch.use_deterministic_algorithms(det["trl"], warn_only=True)
            trl_tr.train()
            checks["trl updates"] = trl_tr.state.global_step
            expected = [[(q.question, q.answer, q.image.tobytes())
                         for q in questions[s * args.prompts:(s + 1) * args.prompts] for _ in range(args.group)]
                        for s in range(total)]
            checks["questions"] = cb.timer.seen == expected
        mem["end"] = peak_rss_mib()
        genrl_trainable = sum(p.numel() for p in genrl_tr.policy.trainable_parameters().values())
        total_params = sum(p.numel() for p in genrl_tr.policy.model.parameters())

    # --------------------------------------------------------------- figures
    def med(name: str, key: str) -> float:
        return median([s[key] for s in samples[name] if key in s]) if samples[name] and key in samples[name][0] \
            else float("nan")

    rc = genrl_tr.recipe
    tc, pc = rc.trainer, rc.policy.config
    lines = [
        f"model: {model_dir} (Qwen2.5-VL architecture, {total_params / 1e6:.2f} M parameters, "
        f"{genrl_trainable / 1e6:.2f} M trained: {'all' if args.train_vision else 'language model; vision tower frozen'})",
        f"batch {tc.prompts_per_step} prompts x {tc.group_size} = {tc.prompts_per_step * tc.group_size} completions, "
        f"one AdamW update per step; micro-batch {tc.micro_batch_size}; max_new_tokens {pc.max_new_tokens}; "
        f"temperature {args.temperature}; lr {tc.lr:g}; prompts {min(lengths)}-{max_prompt} tokens "
        f"(genrl max_prompt_tokens {pc.max_prompt_tokens})",
        f"torch deterministic algorithms: genrl {'on' if det['genrl'] else 'off'}"
        + (f", TRL {'on' if det['trl'] else 'off'}" if not args.no_trl else "")
        + f" (--deterministic {args.deterministic})",
        f"repeats {args.repeats} x steps-window {args.steps_window} (per-step means) after {args.warmup} warm-up step(s); "
        "medians; ratios = median of paired per-repetition ratios",
    ]
    settings = None
    if trl_cfg is not None:
        obj = rc.objective.config
        settings = [  # (what, genrl, TRL) as read back from the two trainers
            ("completions per update", tc.minibatch_size,
             trl_cfg.per_device_train_batch_size * trl_cfg.gradient_accumulation_steps),
            ("group size", tc.group_size, trl_cfg.num_generations),
            ("completions generated per step", tc.prompts_per_step * tc.group_size, trl_cfg.generation_batch_size),
            ("micro-batch", tc.micro_batch_size, trl_cfg.per_device_train_batch_size),
            ("passes over each batch", tc.inner_epochs, trl_cfg.num_iterations),
            ("max response tokens", pc.max_new_tokens, trl_cfg.max_completion_length),
            ("temperature / top_p", f"{rc.explorer.config.temperature} / {rc.explorer.config.top_p}",
             f"{trl_cfg.temperature} / {trl_cfg.top_p}"),
            ("KL beta", obj.kl_beta, trl_cfg.beta),
            ("clip eps low / high", f"{obj.clip_low} / {obj.clip_high}",
             f"{trl_cfg.epsilon} / {trl_cfg.epsilon_high or trl_cfg.epsilon}"),
            ("loss aggregation", obj.loss_agg, trl_cfg.loss_type),
            ("advantage", f"{rc.advantage.name}, {rc.advantage.config.combine}, /std {rc.advantage.config.std_scope}",
             f"{trl_cfg.multi_objective_aggregation}, scale_rewards {trl_cfg.scale_rewards}"),
            ("reward weights", [r.config.weight for r in rc.rewards], trl_cfg.reward_weights),
            ("lr / schedule / warm-up", f"{tc.lr:g} / {tc.lr_schedule} / {tc.warmup_steps}",
             f"{trl_cfg.learning_rate:g} / {trl_cfg.lr_scheduler_type.value if hasattr(trl_cfg.lr_scheduler_type, 'value') else trl_cfg.lr_scheduler_type} / {trl_cfg.warmup_steps}"),
            ("AdamW betas / eps / wd", f"{tuple(tc.adam_betas)} / {tc.adam_eps:g} / {tc.weight_decay}",
             f"{(trl_cfg.adam_beta1, trl_cfg.adam_beta2)} / {trl_cfg.adam_epsilon:g} / {trl_cfg.weight_decay}"),
            ("grad clip", tc.max_grad_norm, trl_cfg.max_grad_norm),
            ("trained parameters", genrl_trainable, trl_trainable),
            ("precision / grad ckpt", f"fp32 ({rc.mixed_precision}) / {pc.gradient_checkpointing}",
             f"fp32 (bf16 {trl_cfg.bf16}) / {trl_cfg.activation_checkpointing}"),
            ("torch deterministic algorithms", "on" if det["genrl"] else "off", "on" if det["trl"] else "off"),
            ("optimizer updates run", variants["genrl"].step, checks["trl updates"]),
        ]
        lines += ["", "| setting | genrl | TRL |", "|---|---|---|"]
        lines += [f"| {k} | {g} | {t} |" for k, g, t in settings]
        lines.append("")
        lines.append(f"same inputs: prompt token ids {'identical' if checks['prompt ids'] else 'DIFFERENT'}, "
                     f"pixel values {'identical' if checks['pixels'] else 'DIFFERENT'} (first step's questions); "
                     f"questions of every step (text, answer, image) "
                     f"{'the same as genrl' if checks['questions'] else 'DIFFERENT from genrl'}")
        d = checks["logprobs"]
        lines.append("same model function: max |log p(genrl) - log p(TRL)| on the reference solutions of the first "
                     f"step's questions (initial weights) = {d['trl']:.1e}"
                     + (f" (TRL without mm_token_type_ids: {d['trl, text positions']:.1e})"
                        if not args.trl_text_positions else " (TRL run with --trl-text-positions)"))
        if d["trl"] > 1e-4 and (args.trl_text_positions or d["trl, text positions"] > 1e-4):
            lines.append("WARNING: genrl and TRL give the same response different log-probs: the two trainers do "
                         "not sample and train the same function of the weights.")
        if not args.trl_text_positions and d["trl"] > 1e-4 and d["trl, text positions"] <= 1e-4:
            lines.append("NOTE: genrl's VLM policy does not pass mm_token_type_ids to the model, so Qwen2.5-VL uses 1-D "
                         "text positions instead of its 3-D M-RoPE image positions (which the processor, SFT and TRL "
                         "use): genrl samples and trains a different function of the same weights. "
                         "--trl-text-positions makes TRL do the same, for an equal-work timing.")

    names = [n for n in ("genrl", "vogue", "trl") if n in samples]
    titles = {"genrl": "genrl GRPO", "vogue": "genrl VOGUE", "trl": "TRL GRPOTrainer"}
    lines += ["", "| per step | " + " | ".join(titles[n] for n in names) + " |",
              "|---|" + "---:|" * len(names)]
    rows = [("generate", "generate"), ("re-score rollout, no grad (genrl only)", "rescore"),
            ("rollout + rewards (incl. the two above)", "rollout"), ("update", "update"), ("**step**", "step")]
    for label, key in rows:
        lines.append(f"| {label} | " + " | ".join(fmt_ms(med(n, key)) for n in names) + " |")
    lines.append("| response tokens (mean, incl. end token) | "
                 + " | ".join(f"{med(n, 'response_tokens'):.1f}" for n in names) + " |")
    lines.append("| longest response of the batch (decode steps) | "
                 + " | ".join(f"{med(n, 'longest'):.1f}" for n in names) + " |")
    lines.append("| truncated share | " + " | ".join(f"{med(n, 'truncated_share'):.2f}" for n in names) + " |")
    lines.append("")
    verdicts = []
    if "trl" in samples:
        r = paired([s["step"] for s in samples["genrl"]], [s["step"] for s in samples["trl"]])
        ok = "OK" if r <= TARGET_RATIO else "ABOVE TARGET"
        verdicts.append(f"genrl / TRL s/step = {r:.2f} (target <= {TARGET_RATIO}: {ok}); "
                        f"generate {paired([s['generate'] for s in samples['genrl']], [s['generate'] for s in samples['trl']]):.2f}, "
                        f"update {paired([s['update'] for s in samples['genrl']], [s['update'] for s in samples['trl']]):.2f}")
    if "vogue" in samples:
        ov = paired([s["step"] for s in samples["vogue"]], [s["step"] for s in samples["genrl"]]) - 1
        ok = "OK" if ov <= TARGET_VOGUE_OVERHEAD else "ABOVE TARGET"
        verdicts.append(f"VOGUE overhead over GRPO = {ov:+.0%} s/step (target <= {TARGET_VOGUE_OVERHEAD:.0%}: {ok})")
    lines += verdicts
    if "trl" in samples:
        lines.append("")
        rescore = ("re-scores each rollout once without gradients (old log-probs, entropies)"
                   if args.old_log_probs == "rollout" else "like TRL takes the old log-probs from the update's forward")
        lines.append("not equal by design: genrl pads every prompt to max_prompt_tokens and every response to "
                     f"max_new_tokens and {rescore}; TRL pads to the batch's longest sequence. TRL also suppresses "
                     "only the image token in sampling, and "
                     "divides by the group's sample std (genrl: population std; advantages differ by a constant "
                     f"factor sqrt({tc.group_size - 1}/{tc.group_size}), which changes no timing). The sampled "
                     "responses (hence their lengths) differ between the two.")
        if tc.micro_batch_size < tc.minibatch_size:
            lines.append(f"micro-batch {tc.micro_batch_size} < batch {tc.minibatch_size}: genrl also generates "
                         f"{pc.forward_chunk} rows per generate call, TRL the whole batch in one call.")
        if det["genrl"] != det["trl"]:
            lines.append("each framework ran under its own default torch determinism (genrl: deterministic algorithms "
                         "on CPU, which also fill every new tensor with NaN; TRL: off); --deterministic on / off "
                         "puts both under the same setting.")
    lines.append("per-repetition s/step: " + "; ".join(
        f"{n} " + ", ".join(f"{s['step']:.2f}" for s in samples[n]) for n in names))
    lines.append("peak RSS: " + ", ".join(f"{k} {v:.0f} MiB" for k, v in mem.items()))
    lines.append(f"benchmark wall time {time.perf_counter() - t_start - model_s:.0f} s"
                 + (f" (+ {model_s:.0f} s to build the base model, cached for later runs)" if model_s > 5 else ""))
    print("\n" + "\n".join(lines))

    if args.record:
        import transformers

        versions = f"torch {torch.__version__}, {torch.get_num_threads()} intra-op thread(s); transformers " \
                   f"{transformers.__version__}"
        if not args.no_trl:
            import trl

            versions += f", trl {trl.__version__}"
        record_entry("vlm_grpo_vs_trl", lines, hardware=f"{cpu_model()}, {os.cpu_count()} logical cores; {versions}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
