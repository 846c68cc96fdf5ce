"""Benchmark: genrl's image+text reward model against TRL's RewardTrainer on the same preference pairs.

    python benchmarks/image_text_rm_vs_trl.py [--quick] [--epochs 10] [--batch-size 64] [--lr 3e-3] [--record]

This is a benchmark, not a test: it prints figures (and, with ``--record``, appends them to
docs/benchmarks.md); it asserts nothing.

Data: the labelled digit pairs of reward_models/digit_preference/label.yaml (built once, cached in
GENRL_CACHE), their class ids turned into prompts by ``genrl.preference.text_pairs.to_text_pairs``
("a handwritten seven", "draw the digit 7", ...). Both trainers get the SAME train/held-out split:
the one ``RewardModelTrainer`` makes (whole sampling groups held out).

  genrl  ``image_text`` (tiny llama backbone, image patches + prompt tokens, value head on [EOS]),
         trained by ``RewardModelTrainer.train()`` (Bradley–Terry on Accelerate).
  TRL    ``trl.RewardTrainer`` on ``AutoModelForSequenceClassification`` built from the same backbone
         config (model_type, width, layers, heads, MLP; num_labels=1) and the same locally built
         WordLevel tokenizer. TRL cannot see images: each image becomes the sentence "an image of the
         digit D", D being what the judge classifier (recipes/eval/digit_judge.yaml) reads in it.

Same epochs, batch size, learning rate, warm-up, cosine schedule, grad clip, centering coefficient
(TRL's center_rewards_coefficient) and seed; both drop the last partial batch; dropout is off in both.
Held-out pairwise accuracy is computed the same way for both (``genrl.preference.loss.pairwise_accuracy``,
an exact tie counts one half). Seconds per epoch: wall time of each epoch's updates (TRL: a
``TrainerCallback`` at epoch begin/end; genrl: around ``train_update``), median over epochs; held-out
evaluation is left out of both (genrl evaluates once, after the last update). The two run one after
the other in one process (TRL first), one thread each.

What the comparison means: on ``prompted_digit`` pairs TRL's text view carries the label almost
verbatim (the labeller used the same judge), while genrl must read the digit from pixels; on
``crispness_gap`` pairs both images show the prompted digit, so TRL's two texts are identical and it
can only tie (0.5). It measures what an image-reading reward model buys over a text-only one that
trains on captions, and what genrl's loop costs next to TRL's for a backbone of the same size.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
LABEL_RECIPE = "reward_models/digit_preference/label.yaml"
JUDGE_RECIPE = "recipes/eval/digit_judge.yaml"

from benchmarks.flow_grpo_step import cpu_model, peak_rss_mib, quiet_single_thread, record_entry  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smaller run: 1500 pairs, 3 epochs (about 30 s)")
    ap.add_argument("--pairs", default=None,
                    help="class-context pairs on disk (default: the labelling recipe's, cached)")
    ap.add_argument("--max-pairs", type=int, default=None, help="use the pairs of the first groups only, up to N pairs")
    ap.add_argument("--epochs", type=int, default=None, help="epochs of both trainers (default 10, --quick 3)")
    ap.add_argument("--batch-size", type=int, default=64, help="pairs per optimizer update (both)")
    ap.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate (both)")
    ap.add_argument("--warmup-steps", type=int, default=20, help="linear warm-up, in updates (both)")
    ap.add_argument("--center-coef", type=float, default=0.01, help="reward-centering coefficient (both)")
    ap.add_argument("--eval-fraction", type=float, default=0.15, help="share of sampling groups held out")
    ap.add_argument("--seed", type=int, default=0, help="seed of both trainers and of the prompt templates")
    ap.add_argument("--floor-epochs", type=int, default=None,
                    help="epochs of the no-trainer floors of both models (default 3, --quick 1)")
    ap.add_argument("--record", action="store_true", help="append a dated entry to docs/benchmarks.md (or $GENRL_BENCHMARK_DOC)")
    args = ap.parse_args(argv)
    if args.epochs is None:
        args.epochs = 3 if args.quick else 10
    if args.floor_epochs is None:
        args.floor_epochs = 1 if args.quick else 3
    if args.max_pairs is None and args.quick:
        args.max_pairs = 1500
    return args


def first_groups(pairs, max_pairs: int | None):
    """The pairs of the first sampling groups, at most ``max_pairs`` (whole groups, so the split stays clean)."""
    import torch

    if max_pairs is None or len(pairs) <= max_pairs:
        return pairs
    cut = pairs.group[max_pairs - 1]
    return pairs.select(torch.where(pairs.group < cut)[0])


# ----------------------------------------------------------------------------- genrl
def genrl_trainer(data: Path, run_dir: Path, args: argparse.Namespace, backbone: dict):
    from genrl.config.load import load_recipe
    from genrl.preference.train import RewardModelTrainer, RewardTrainRecipe

    recipe_file = ROOT / "reward_models" / "digit_image_text" / "train.yaml"
    overrides = [f"data.path={data}", f"data.eval_fraction={args.eval_fraction}", f"seed={args.seed}",
                 f"trainer.epochs={args.epochs}", f"trainer.batch_size={args.batch_size}",
                 f"trainer.micro_batch_size={args.batch_size}", f"trainer.lr={args.lr}",
                 f"trainer.warmup_steps={args.warmup_steps}", "trainer.lr_schedule=cosine",
                 "trainer.max_grad_norm=1.0", "trainer.weight_decay=0.0", f"loss.center_coef={args.center_coef}",
                 "loss.use_margin=true", "device=cpu", "num_threads=1", "model.dropout=0.0",
                 "trainer.eval_every=1000000000",  # held-out evaluation once, after the last update
                 *(f"model.{k}={v}" for k, v in backbone.items())]
    recipe, _ = load_recipe(recipe_file, RewardTrainRecipe, overrides)
    return RewardModelTrainer(recipe, recipe_file=str(recipe_file), run_dir=str(run_dir))


def run_genrl(trainer) -> dict:
    """``trainer.train()`` with each update timed; epoch time = first update start .. last update end."""
    starts: dict[int, float] = {}
    ends: dict[int, float] = {}
    inner = trainer.train_update

    def timed(update: int) -> dict:
        epoch = update // trainer.updates_per_epoch
        starts.setdefault(epoch, time.perf_counter())
        out = inner(update)
        ends[epoch] = time.perf_counter()
        return out

    trainer.train_update = timed
    t0 = time.perf_counter()
    result = trainer.train(resume=False)
    wall = time.perf_counter() - t0
    return {"result": result, "epochs": [ends[e] - starts[e] for e in sorted(starts)], "wall": wall}


# ----------------------------------------------------------------------------- TRL
def run_trl(train_ds, model, tokenizer, args: argparse.Namespace, out_dir: Path, updates_per_epoch: int) -> dict:
    from transformers import PrinterCallback, TrainerCallback
    from trl import RewardConfig, RewardTrainer

    class EpochTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self._t = 0.0

        def on_epoch_begin(self, *a, **k) -> None:
            self._t = time.perf_counter()

        def on_epoch_end(self, *a, **k) -> None:
            self.times.append(time.perf_counter() - self._t)

    config = RewardConfig(
        output_dir=str(out_dir), num_train_epochs=args.epochs, per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr, lr_scheduler_type="cosine", warmup_steps=args.warmup_steps, weight_decay=0.0,
        max_grad_norm=1.0, center_rewards_coefficient=args.center_coef or None, seed=args.seed,
        data_seed=args.seed, dataloader_drop_last=True, max_length=None, disable_dropout=True,
        activation_checkpointing=False, bf16=False, fp16=False, use_cpu=True, report_to="none",
        save_strategy="no", eval_strategy="no", logging_strategy="epoch", disable_tqdm=True,
        dataloader_num_workers=0)
    timer = EpochTimer()
    trainer = RewardTrainer(model=model, args=config, train_dataset=train_ds, processing_class=tokenizer,
                            callbacks=[timer])
    trainer.remove_callback(PrinterCallback)  # no per-epoch log dicts on stdout (genrl logs to its run dir)
    steps = len(trainer.get_train_dataloader())
    if steps != updates_per_epoch:
        print(f"[bench] note: TRL makes {steps} updates per epoch, genrl {updates_per_epoch}")
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    return {"trainer": trainer, "epochs": timer.times, "wall": wall}


# ----------------------------------------------------------------------------- floors
def genrl_floor_step(model, opt, pairs, center_coef: float):
    """One update of the image_text model with no framework around it: forward, BT loss, backward, clip, AdamW."""
    import torch

    from genrl.preference.loss import bradley_terry_loss, centering_loss

    def step(idx) -> None:
        batch = pairs.select(idx)
        r = model(torch.cat([batch.chosen, batch.rejected]), batch.contexts + batch.contexts)
        r_c, r_r = r[: len(idx)], r[len(idx):]
        loss = bradley_terry_loss(r_c, r_r) + center_coef * centering_loss(r_c, r_r)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def trl_floor_step(model, opt, processed, pad_id: int, center_coef: float):
    """The same for TRL's model on TRL's tokenized rows, padded by TRL's own collator."""
    import torch
    from trl.trainer.reward_trainer import DataCollatorForPreference

    collate = DataCollatorForPreference(pad_token_id=pad_id)
    rows = [{"chosen_ids": c, "rejected_ids": r} for c, r in zip(processed["chosen_ids"], processed["rejected_ids"])]

    def step(idx) -> None:
        batch = collate([rows[i] for i in idx.tolist()])
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        r_c, r_r = logits.squeeze(-1).chunk(2)
        loss = -torch.nn.functional.logsigmoid(r_c - r_r).mean() + center_coef * ((r_c + r_r) ** 2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def floor_epochs(steps: dict, n_rows: int, batch_size: int, epochs: int, seed: int) -> dict[str, list[float]]:
    """Epochs of each floor step function, interleaved (A, B, A, B, ...); seconds per epoch."""
    import torch

    times: dict[str, list[float]] = {k: [] for k in steps}
    for e in range(epochs):
        perm = torch.randperm(n_rows, generator=torch.Generator().manual_seed(seed + e))
        batches = [perm[j * batch_size:(j + 1) * batch_size] for j in range(n_rows // batch_size)]
        for name, step in steps.items():
            t0 = time.perf_counter()
            for idx in batches:
                step(idx)
            times[name].append(time.perf_counter() - t0)
    return times


def trl_scores(model, tokenizer, prompts: list[str], answers: list[str], batch: int = 512):
    """Rewards of prompt + answer + EOS, tokenized and right-padded as TRL's collator does."""
    import torch

    texts = [p + a + tokenizer.eos_token for p, a in zip(prompts, answers)]
    out = []
    model.eval()
    with torch.no_grad():
        for lo in range(0, len(texts), batch):
            enc = tokenizer(texts[lo:lo + batch], padding=True, return_tensors="pt")
            out.append(model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits[:, 0].float())
    return torch.cat(out)


# ----------------------------------------------------------------------------- main
def accuracies(r_c, r_r, sources: list[str]) -> dict[str, float]:
    import torch

    from genrl.preference.loss import pairwise_accuracy

    out = {"all": float(pairwise_accuracy(r_c, r_r))}
    for s in sorted(set(sources)):
        m = torch.tensor([x == s for x in sources])
        out[s] = float(pairwise_accuracy(r_c[m], r_r[m]))
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    quiet_single_thread()
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from genrl.models.digit_classifier import load_classifier
    from genrl.preference.data import read_pairs, save_pairs
    from genrl.preference.models.image_text import DEFAULT_VOCAB, build_word_tokenizer
    from genrl.preference.text_pairs import judge_digits, to_text_pairs, trl_text_view
    from genrl.pretrain.classifier import classifier_from_recipe

    if args.pairs:
        source = Path(args.pairs)
    else:
        from genrl.preference.labelling import labels_from_recipe

        source = labels_from_recipe(str(ROOT / LABEL_RECIPE)) / "pairs"
    pairs = first_groups(read_pairs(source), args.max_pairs)
    text_pairs = to_text_pairs(pairs, seed=args.seed)
    judge = load_classifier(classifier_from_recipe(str(ROOT / JUDGE_RECIPE))).eval()
    backbone = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                "intermediate_size": 128}

    with tempfile.TemporaryDirectory(prefix="genrl-bench-rm-") as tmp:
        tmp = Path(tmp)
        data = save_pairs(text_pairs, tmp / "pairs.parquet", "parquet")
        g_tr = genrl_trainer(data, tmp / "genrl", args, backbone)
        train, held = g_tr.train_pairs, g_tr.eval_pairs

        # TRL's view of the same split: images -> "an image of the digit D" (judge's reading).
        def view(p):
            return trl_text_view(p, judge_digits(p.chosen, judge), judge_digits(p.rejected, judge))

        train_ds, held_ds = view(train), view(held)
        tokenizer = build_word_tokenizer(DEFAULT_VOCAB)  # the tokenizer genrl's model builds from its default vocab
        assert tokenizer.get_vocab() == g_tr.model.tokenizer.get_vocab()
        trl_len = [len(tokenizer(p + c + tokenizer.eos_token)["input_ids"])
                   for p, c in zip(train_ds["prompt"], train_ds["chosen"])]
        genrl_len = (g_tr.model.encode(train.contexts)[1] + g_tr.model.num_patches).float()
        torch.manual_seed(args.seed)
        cfg = AutoConfig.for_model(
            backbone["model_type"], **{k: v for k, v in backbone.items() if k != "model_type"},
            num_key_value_heads=backbone["num_attention_heads"], vocab_size=len(tokenizer),
            max_position_embeddings=g_tr.model.backbone_config.max_position_embeddings, num_labels=1,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
            use_cache=False)
        trl_model = AutoModelForSequenceClassification.from_config(cfg)
        mem = {"after build": peak_rss_mib()}

        trl = run_trl(train_ds, trl_model, tokenizer, args, tmp / "trl", g_tr.updates_per_epoch)
        mem["after TRL"] = peak_rss_mib()
        gen = run_genrl(g_tr)
        mem["after genrl"] = peak_rss_mib()

        # Floors: the same updates with no trainer around them, on private copies (interleaved epochs).
        g_copy, t_copy = copy.deepcopy(g_tr.model).train(), copy.deepcopy(trl_model).train()
        floors = floor_epochs(
            {"genrl": genrl_floor_step(g_copy, torch.optim.AdamW(g_copy.parameters(), lr=args.lr), train,
                                       args.center_coef),
             "trl": trl_floor_step(t_copy, torch.optim.AdamW(t_copy.parameters(), lr=args.lr),
                                   trl["trainer"].train_dataset, tokenizer.pad_token_id, args.center_coef)},
            len(train), args.batch_size, args.floor_epochs, args.seed)
        del g_copy, t_copy

        with torch.no_grad():
            model = g_tr.model.eval()
            g_c, g_r = model(held.chosen, held.contexts), model(held.rejected, held.contexts)
        t_c = trl_scores(trl_model, tokenizer, held_ds["prompt"], held_ds["chosen"])
        t_r = trl_scores(trl_model, tokenizer, held_ds["prompt"], held_ds["rejected"])
        acc_g = accuracies(g_c, g_r, held.label_source)
        acc_t = accuracies(t_c, t_r, held.label_source)
        assert abs(acc_g["all"] - gen["result"]["eval/accuracy"]) < 1e-6  # our scoring = the trainer's

    # ----------------------------------------------------------------- figures
    digit_of_group = dict(zip(pairs.group.tolist(), pairs.contexts.tolist()))  # the prompted class id
    prompted_digit = torch.tensor([digit_of_group[g] for g in held.group.tolist()])
    is_prompted = torch.tensor([s == "prompted_digit" for s in held.label_source])
    judged = judge_digits(held.chosen, judge)
    leak = float((judged == prompted_digit)[is_prompted].float().mean()) if is_prompted.any() else float("nan")
    same_text = sum(a == b for a, b in zip(held_ds["chosen"], held_ds["rejected"])) / len(held_ds)
    g_ep, t_ep = statistics.median(gen["epochs"]), statistics.median(trl["epochs"])
    ratios = [a / b for a, b in zip(gen["epochs"], trl["epochs"])]
    n_g = sum(p.numel() for p in g_tr.model.parameters())
    n_t = sum(p.numel() for p in trl_model.parameters())
    sources = ["all", *sorted(set(held.label_source))]
    counts = {"all": len(held), **{s: held.label_source.count(s) for s in set(held.label_source)}}

    lines = [
        f"data: {LABEL_RECIPE} pairs{f' (first {len(pairs)})' if args.max_pairs else ''}; "
        f"{len(train)} train / {len(held)} held-out pairs (same split for both; whole sampling groups held out)",
        f"backbone: {backbone['model_type']} hidden {backbone['hidden_size']}, {backbone['num_hidden_layers']} layers, "
        f"{backbone['num_attention_heads']} heads, MLP {backbone['intermediate_size']}; WordLevel tokenizer, "
        f"{len(tokenizer)} tokens; genrl {n_g / 1e3:.1f}k params, {genrl_len.mean():.1f} positions per sample "
        f"({g_tr.model.num_patches} image patches + prompt + [EOS]); TRL {n_t / 1e3:.1f}k params, "
        f"{statistics.mean(trl_len):.1f} tokens per sample (prompt + description + [EOS])",
        f"epochs {args.epochs}, batch {args.batch_size} pairs, lr {args.lr:g} cosine, warm-up {args.warmup_steps}, "
        f"clip 1.0, centering {args.center_coef:g}, seed {args.seed}; {g_tr.updates_per_epoch} updates/epoch",
        f"TRL text view: judge reads the prompted digit in the chosen image of {leak:.0%} of held-out "
        f"prompted_digit pairs; chosen and rejected texts are identical in {same_text:.0%} of held-out pairs",
        "",
        "| | genrl image_text (image + prompt) | TRL RewardTrainer (text description) |",
        "|---|---:|---:|",
    ]
    for s in sources:
        lines.append(f"| held-out accuracy, {s} ({counts[s]} pairs) | {acc_g[s]:.3f} | {acc_t[s]:.3f} |")
    lines.append(f"| s/epoch (median of {args.epochs}) | {g_ep:.2f} | {t_ep:.2f} |")
    g_fl, t_fl = statistics.median(floors["genrl"]), statistics.median(floors["trl"])
    lines.append(f"| s/epoch, floor: the model alone (median of {args.floor_epochs}) | {g_fl:.2f} | {t_fl:.2f} |")
    lines.append(f"| trainer / floor | {g_ep / g_fl:.2f} | {t_ep / t_fl:.2f} |")
    lines.append(f"| train() wall time | {gen['wall']:.1f} s | {trl['wall']:.1f} s |")
    lines.append("")
    lines.append(f"time ratio genrl / TRL: {g_ep / t_ep:.2f} s/epoch (median of per-epoch ratios "
                 f"{statistics.median(ratios):.2f}); floors genrl / TRL {g_fl / t_fl:.2f} (model compute: "
                 f"{genrl_len.mean():.1f} vs {statistics.mean(trl_len):.1f} positions per sample)")
    lines.append(f"per-epoch s: genrl {', '.join(f'{x:.2f}' for x in gen['epochs'])}; "
                 f"TRL {', '.join(f'{x:.2f}' for x in trl['epochs'])}")
    lines.append("peak RSS: " + ", ".join(f"{k} {v:.0f} MiB" for k, v in mem.items()))
    lines.append(f"benchmark wall time {time.perf_counter() - t_start:.0f} s")
    print("\n" + "\n".join(lines))

    if args.record:
        import transformers
        import trl as trl_pkg

        record_entry("image_text_rm_vs_trl", lines, hardware=(
            f"2 vCPU, no GPU ({cpu_model()}, {os.cpu_count()} logical cores); torch {torch.__version__}, "
            f"{torch.get_num_threads()} intra-op thread(s); transformers {transformers.__version__}, "
            f"trl {trl_pkg.__version__}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
