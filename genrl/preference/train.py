"""``genrl reward train RECIPE``: Bradley–Terry reward models for any modality, on Accelerate.

    for update u (epoch e = u // updates_per_epoch):
        batch   = keyed permutation of the training pairs (seed, e), slice u; rank r takes r::W
        r_c,r_r = model(chosen, ctx), model(rejected, ctx)          # micro-batches, DDP sync on the last
        loss    = BT(r_c, r_r, margin) + center_coef * centering + sum_k w_k * aux_k
        clip, AdamW step, LR schedule
    eval (held-out pairwise accuracy, calibration) every ``eval_every`` updates and at the end;
    checkpoints (atomic, verified on resume) every ``checkpoint_every`` updates.

Every random draw is keyed by (seed, update, rank), so a resumed run equals an uninterrupted one.
The trained model lands in ``RUN_DIR/model`` (config.json, model.safetensors, MODEL_CARD.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import yaml

import genrl.preference.models  # noqa: F401, E402  (fills REWARD_MODELS)
from genrl.config.validate import ComponentSpec, RecipeError, component, option, to_dict
from genrl.preference.data import PreferencePairs, read_pairs
from genrl.preference.loss import bradley_terry_loss, centering_loss, pairwise_accuracy
from genrl.registry import REWARD_MODELS
from genrl.rng import Purpose, key_seed, keyed_permutation


@dataclass
class PairData:
    path: str | None = option(default=None, help="Preference data: a JSONL or Parquet file/folder, or an Arrow "
                                                  "folder (datasets.save_to_disk).")
    label_recipe: str | None = option(default=None, help="Or: a labelling recipe (`genrl reward label`); its pairs "
                                                         "are built once and cached.")
    format: Literal["auto", "jsonl", "parquet", "arrow"] = option(default="auto", help="Format of path.")
    eval_path: str | None = option(default=None, help="Held-out pairs (same formats); default: a split of the data.")
    eval_fraction: float = option(default=0.1, help="Share of sampling groups held out when eval_path is null.")
    split_seed: int = option(default=0, help="Seed of the held-out split.")

    def validate(self) -> None:
        if (self.path is None) == (self.label_recipe is None):
            raise ValueError("path: give exactly one of path and label_recipe")
        if self.eval_path is None and not 0 < self.eval_fraction < 1:
            raise ValueError("eval_fraction: must be in (0, 1) when there is no eval_path")


@dataclass
class LossConfig:
    use_margin: bool = option(default=True, help="Use the data's margin column in the BT loss.")
    center_coef: float = option(default=0.0, help="Weight of the reward-centering term mean((r_c + r_r)^2) "
                                                  "(TRL's center_rewards_coefficient; ~0.01).")
    aux_weights: dict[str, float] = option(default_factory=dict, help="Weights of auxiliary losses the architecture "
                                                                      "declares, by name (missing = 1.0).")

    def validate(self) -> None:
        if self.center_coef < 0:
            raise ValueError("center_coef: must be >= 0")


@dataclass
class RewardTrainerConfig:
    epochs: int = option(default=10, help="Passes over the training pairs.")
    batch_size: int = option(default=64, help="Pairs per optimizer update, over all processes.")
    micro_batch_size: int = option(default=64, help="Pairs per forward/backward on one process.")
    lr: float = option(default=1e-3, help="AdamW learning rate.")
    weight_decay: float = option(default=0.0, help="AdamW weight decay.")
    lr_schedule: Literal["constant", "cosine"] = option(default="cosine", help="LR schedule after warm-up.")
    warmup_steps: int = option(default=0, help="Linear warm-up, in updates.")
    max_grad_norm: float = option(default=1.0, help="Gradient-norm clip.")
    eval_every: int = option(default=0, help="Held-out evaluation every N updates (0 = once per epoch).")
    checkpoint_every: int = option(default=0, help="Checkpoint every N updates (0 = only at the end).")
    keep_last: int = option(default=2, help="Checkpoints kept.")

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "micro_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1")


@dataclass
class RewardTrainRecipe:
    """A reward-model training recipe (``reward_models/*/train.yaml``)."""

    kind: Literal["preference_reward"] = option(help="Recipe kind; must be preference_reward.")
    data: PairData = option(help="Where the preference pairs come from.")
    model: ComponentSpec = component(REWARD_MODELS, help="Reward-model architecture and its options.")
    run_dir: str = option(default="runs/reward_model", help="Run directory (checkpoints, model, metrics).")
    loss: LossConfig = option(default_factory=LossConfig, help="Bradley–Terry loss options.")
    trainer: RewardTrainerConfig = option(default_factory=RewardTrainerConfig, help="Optimisation.")
    seed: int = option(default=0, help="Seed of initialisation, shuffling and dropout.")
    device: Literal["auto", "cpu", "cuda"] = option(default="auto", help="auto = CUDA when available.")
    num_threads: int | None = option(default=1, help="torch intra-op threads per process.")
    mixed_precision: Literal["no", "bf16", "fp16"] = option(default="no", help="Autocast precision.")
    description: str = option(default="", help="Free text, copied into the model card.")
    tags: list[str] = field(default_factory=list, metadata={"help": "Free-form labels."})


# ------------------------------------------------------------------ data
def load_pairs_for(recipe: RewardTrainRecipe, recipe_file: str | None) -> tuple[PreferencePairs, PreferencePairs, dict]:
    """(train, held-out, provenance) of a recipe's data; groups never straddle the split."""
    from genrl.hashing import path_sha256

    cls = REWARD_MODELS.get(recipe.model.name)
    d = recipe.data
    if d.label_recipe is not None:
        from genrl.preference.labelling import labels_from_recipe

        folder = labels_from_recipe(d.label_recipe, referenced_from=recipe_file, key="data.label_recipe")
        path, fmt = folder / "pairs", "arrow"
    else:
        path, fmt = Path(d.path).expanduser(), d.format
    pairs = read_pairs(path, fmt, extra_columns=cls.aux_columns)
    provenance = {"data": {"path": str(path), "sha256": path_sha256(path), "rows": len(pairs)}}
    if d.eval_path is not None:
        held = read_pairs(d.eval_path, "auto", sample_shape=pairs.sample_shape, extra_columns=cls.aux_columns)
        provenance["eval_data"] = {"path": d.eval_path, "sha256": path_sha256(Path(d.eval_path)), "rows": len(held)}
        return pairs, held, provenance
    groups = torch.unique(pairs.group)
    order = groups[keyed_permutation(len(groups), d.split_seed, Purpose.DATA)]
    n_eval = max(1, round(d.eval_fraction * len(groups)))
    is_eval = torch.isin(pairs.group, order[:n_eval])
    if is_eval.all():
        raise RecipeError(recipe_file, "data.eval_fraction", f"leaves no training pairs ({len(groups)} groups)")
    return pairs.select(torch.where(~is_eval)[0]), pairs.select(torch.where(is_eval)[0]), provenance


class RewardModelTrainer:
    def __init__(self, recipe: RewardTrainRecipe, *, recipe_file: str, run_dir: str | None = None) -> None:
        from accelerate import Accelerator

        from genrl.trainer.loop import enable_deterministic_mode, lr_lambda

        self.recipe, self.recipe_file = recipe, recipe_file
        self.resolved = to_dict(recipe)
        if run_dir is not None:
            self.resolved["run_dir"] = run_dir
        self.run_dir = Path(self.resolved["run_dir"]).expanduser().resolve()
        if recipe.num_threads:
            torch.set_num_threads(recipe.num_threads)
        use_cpu = recipe.device == "cpu" or not torch.cuda.is_available()
        if recipe.device == "cuda" and not torch.cuda.is_available():
            raise RecipeError(recipe_file, "device", "expected 'cpu' or 'auto': no CUDA device is visible")
        if use_cpu:
            enable_deterministic_mode()
        self.acc = Accelerator(cpu=use_cpu, mixed_precision=recipe.mixed_precision)
        self.rank, self.world, self.device = self.acc.process_index, self.acc.num_processes, self.acc.device
        tc = recipe.trainer
        if tc.batch_size % self.world:
            raise RecipeError(recipe_file, "trainer.batch_size", f"expected a multiple of the {self.world} processes")

        with self.acc.main_process_first():
            self.train_pairs, self.eval_pairs, self.provenance = load_pairs_for(recipe, recipe_file)
        self.updates_per_epoch = len(self.train_pairs) // tc.batch_size
        if self.updates_per_epoch < 1:
            raise RecipeError(recipe_file, "trainer.batch_size",
                              f"larger than the {len(self.train_pairs)} training pairs")
        self.total_updates = tc.epochs * self.updates_per_epoch
        cls = REWARD_MODELS.get(recipe.model.name)
        if self.train_pairs.context_kind not in cls.context_kinds:
            raise RecipeError(recipe_file, "model.name",
                              f"{recipe.model.name!r} takes {list(cls.context_kinds)} contexts, the data has "
                              f"{self.train_pairs.context_kind!r} contexts")
        torch.manual_seed(recipe.seed)
        try:
            self.model = cls(recipe.model.config, sample_shape=self.train_pairs.sample_shape)
        except ValueError as exc:
            raise RecipeError(recipe_file, "model", str(exc)) from None
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(tc.lr_schedule, tc.warmup_steps, self.total_updates))
        self.engine, self.optimizer = self.acc.prepare(self.model.to(self.device), self.optimizer)
        self.step = 0

    @property
    def is_main(self) -> bool:
        return self.acc.is_main_process

    def _autocast(self):
        return self.acc.autocast() if self.recipe.mixed_precision != "no" else contextlib.nullcontext()

    # ------------------------------------------------------------ batches
    def _to_device(self, pairs: PreferencePairs) -> dict:
        ctx = pairs.contexts if isinstance(pairs.contexts, list) else pairs.contexts.to(self.device)
        return {"chosen": pairs.chosen.to(self.device), "rejected": pairs.rejected.to(self.device), "contexts": ctx,
                "margin": pairs.margin.to(self.device), **{k: v.to(self.device) for k, v in pairs.extra.items()}}

    def _scores(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Chosen and rejected in one forward (one all-reduce under DDP, same dropout code path)."""
        ctx = batch["contexts"]
        ctx2 = ctx + ctx if isinstance(ctx, list) else torch.cat([ctx, ctx])
        r = model(torch.cat([batch["chosen"], batch["rejected"]]), ctx2).float()
        return r[: len(r) // 2], r[len(r) // 2:]

    def _loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        lc = self.recipe.loss
        r_c, r_r = self._scores(self.engine, batch)
        bt = bradley_terry_loss(r_c, r_r, batch["margin"] if lc.use_margin else None)
        loss = bt
        metrics = {"loss/bt": float(bt.detach()), "train/accuracy": float(pairwise_accuracy(r_c, r_r)),
                   "train/reward_gap": float((r_c - r_r).detach().mean())}
        if lc.center_coef:
            center = centering_loss(r_c, r_r)
            loss = loss + lc.center_coef * center
            metrics["loss/center"] = float(center.detach())
        for name, value in self.model.aux_losses(batch).items():
            loss = loss + lc.aux_weights.get(name, 1.0) * value
            metrics[f"loss/aux/{name}"] = float(value.detach())
        metrics["loss/total"] = float(loss.detach())
        return loss, metrics

    def train_update(self, update: int) -> dict[str, float]:
        tc = self.recipe.trainer
        epoch, j = divmod(update, self.updates_per_epoch)
        perm = keyed_permutation(len(self.train_pairs), self.recipe.seed, Purpose.SHUFFLE, epoch)
        local = perm[j * tc.batch_size:(j + 1) * tc.batch_size][self.rank::self.world]
        torch.manual_seed(key_seed(self.recipe.seed, Purpose.DATA, update, self.rank))  # dropout, resume-exact
        self.engine.train()
        sums: dict[str, float] = {}
        micros = local.split(tc.micro_batch_size)
        for i, idx in enumerate(micros):
            batch = self._to_device(self.train_pairs.select(idx))
            sync = i == len(micros) - 1
            with (contextlib.nullcontext() if sync else self.acc.no_sync(self.engine)), self._autocast():
                loss, m = self._loss(batch)
            self.acc.backward(loss * (len(idx) / len(local)))
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + v * len(idx) / len(local)
        norm = self.acc.clip_grad_norm_(self.model.parameters(), tc.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.world > 1:
            keys = sorted(sums)
            vals = self.acc.reduce(torch.tensor([sums[k] for k in keys], device=self.device), "mean")
            sums = dict(zip(keys, vals.tolist()))
        sums["grad_norm"], sums["lr"], sums["epoch"] = float(norm), self.scheduler.get_last_lr()[0], float(epoch)
        return sums

    @torch.no_grad()
    def score_pairs(self, pairs: PreferencePairs, chunk: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
        self.model.eval()
        out_c, out_r = [], []
        for idx in torch.arange(len(pairs)).split(chunk):
            with self._autocast():
                r_c, r_r = self._scores(self.model, self._to_device(pairs.select(idx)))
            out_c.append(r_c.float().cpu())
            out_r.append(r_r.float().cpu())
        return torch.cat(out_c), torch.cat(out_r)

    def evaluate(self) -> dict[str, float]:
        from genrl.preference.calibration import reliability

        r_c, r_r = self.score_pairs(self.eval_pairs)
        cal = reliability(r_c, r_r, seed=self.recipe.seed)
        out = {"eval/accuracy": float(pairwise_accuracy(r_c, r_r)), "eval/bt_loss": float(bradley_terry_loss(r_c, r_r)),
               "eval/ece": cal["ece"], "eval/reward_gap": float((r_c - r_r).mean())}
        for source in sorted(set(self.eval_pairs.label_source) - {""}):
            m = torch.tensor([s == source for s in self.eval_pairs.label_source])
            out[f"eval/accuracy/{source}"] = float(pairwise_accuracy(r_c[m], r_r[m]))
        self._last_calibration = cal
        return out

    # ------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path | None:
        from genrl.trainer import checkpoint as ckpt
        from genrl.trainer.manifest import record_checkpoint, run_hash, save_manifest

        path = None
        if self.is_main:
            opt_tensors, opt_meta = ckpt.optimizer_state_to_flat(ckpt.unwrap_optimizer(self.optimizer))
            meta = {"format": "genrl-checkpoint/1", "kind": "preference_reward",
                    "architecture": self.recipe.model.name, "step": self.step, "recipe_hash": run_hash(self.resolved)}
            state = {"step": self.step, "optimizer": opt_meta,
                     "scheduler": {k: v for k, v in self.scheduler.state_dict().items() if k != "lr_lambdas"}}
            path = ckpt.write_checkpoint(self.run_dir, self.step, {"model.safetensors": self.model.state_dict(),
                                                                   "optimizer.safetensors": opt_tensors},
                                         meta, state, keep_last=self.recipe.trainer.keep_last)
            record_checkpoint(self.manifest, self.run_dir, path, self.step)
            save_manifest(self.run_dir, self.manifest)
        self.acc.wait_for_everyone()
        return path

    def load_checkpoint(self, path: Path) -> None:
        from genrl.trainer import checkpoint as ckpt

        ckpt.verify_checkpoint(path)
        meta = ckpt.read_json(path / "checkpoint.json")
        if meta.get("kind") != "preference_reward" or meta.get("architecture") != self.recipe.model.name:
            raise ckpt.CheckpointError(f"{path}: holds a {meta.get('kind')}/{meta.get('architecture')} checkpoint, "
                                       f"the recipe trains preference_reward/{self.recipe.model.name}")
        self.model.load_state_dict(ckpt.load_tensors(path / "model.safetensors"))
        state = ckpt.read_json(path / "trainer_state.json")
        raw = ckpt.unwrap_optimizer(self.optimizer)
        raw.load_state_dict(ckpt.optimizer_state_from_flat(ckpt.load_tensors(path / "optimizer.safetensors"),
                                                           state["optimizer"], raw.state_dict()))
        self.scheduler.load_state_dict({**state["scheduler"], "lr_lambdas": [None]})
        self.step = state["step"]

    # ------------------------------------------------------------ run
    def _start(self, resume: bool) -> None:
        from genrl.trainer import checkpoint as ckpt
        from genrl.trainer.manifest import determinism_statement, new_manifest, open_session

        latest, notes = ckpt.resume_newest(self.run_dir, self.load_checkpoint) if resume else (None, [])
        if latest is not None and self.is_main:
            print(f"[genrl] resuming {self.run_dir} from {latest.name}")

        def fresh() -> dict:
            return new_manifest(
                engine=str(getattr(self.acc.distributed_type, "value", self.acc.distributed_type)),
                recipe_file=self.recipe_file, resolved=self.resolved, seed=self.recipe.seed, world_size=self.world,
                base_checkpoint=None, inputs={k: Path(v["path"]) for k, v in self.provenance.items()},
                determinism=determinism_statement(deterministic=self.device.type == "cpu", device=self.device.type,
                                                  world_size=self.world, mixed_precision=self.recipe.mixed_precision,
                                                  remote_rewards=[]))

        self.manifest = open_session(self.run_dir, self.resolved, resumed=latest is not None, step=self.step,
                                     world_size=self.world, make_manifest=fresh, write=self.is_main, notes=notes)
        if self.is_main:
            (self.run_dir / "recipe.yaml").write_text(yaml.safe_dump(self.resolved, sort_keys=False))

    def train(self, *, resume: bool = True, until_step: int | None = None) -> dict:
        """Train (or resume) to the end; ``until_step`` stops early after checkpointing that update."""
        from genrl.progress import progress
        from genrl.trainer.logger import MetricLogger

        self._start(resume)
        self.acc.wait_for_everyone()
        logger = MetricLogger(self.run_dir, tensorboard=False, wandb=False, wandb_project="", config=self.resolved,
                              enabled=self.is_main)
        logger.truncate_after(self.step)
        tc = self.recipe.trainer
        every_eval = tc.eval_every or self.updates_per_epoch
        bar = progress(range(self.step, self.total_updates), desc="train reward model",
                       disable=not self.is_main, total=self.total_updates - self.step)
        start = time.perf_counter()
        for update in bar:
            if until_step is not None and update >= until_step:
                break
            metrics = self.train_update(update)
            self.step = update + 1
            if self.step % every_eval == 0 or self.step == self.total_updates:
                metrics.update(self.evaluate())
                bar.set_postfix(acc=f"{metrics['eval/accuracy']:.3f}", refresh=False)
            logger.log(self.step, metrics)
            if self.step < self.total_updates and tc.checkpoint_every and self.step % tc.checkpoint_every == 0:
                self.save_checkpoint()
        seconds = time.perf_counter() - start
        final_ckpt = self.save_checkpoint()
        logger.close()
        if self.step < self.total_updates:
            return {"stopped_at": self.step, "checkpoint": str(final_ckpt) if final_ckpt else None}
        result = self.finish(seconds)
        self.acc.wait_for_everyone()
        return result

    def finish(self, seconds: float) -> dict:
        """Held-out metrics, calibration plot, normalisation statistics, model folder + card."""
        from genrl.eval.plots import save_reliability_png
        from genrl.preference.card import write_model_card
        from genrl.preference.models.base import save_reward_model

        metrics = self.evaluate()
        if not self.is_main:
            return metrics
        r_c, r_r = self.score_pairs(self.train_pairs)
        all_r = torch.cat([r_c, r_r])
        metrics["train/accuracy"] = float(pairwise_accuracy(r_c, r_r))
        eval_dir = self.run_dir / "eval"
        eval_dir.mkdir(parents=True, exist_ok=True)
        save_reliability_png(eval_dir / "calibration.png", self._last_calibration["bins"],
                             title=f"held-out calibration (ECE {self._last_calibration['ece']:.3f})")
        (eval_dir / "calibration.json").write_text(json.dumps(self._last_calibration, indent=2) + "\n")
        (eval_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        info = {"context_kind": self.train_pairs.context_kind,
                "normalization": {"mean": float(all_r.mean()), "std": float(all_r.std().clamp_min(1e-6))},
                "metrics": metrics, "pairs": {"train": len(self.train_pairs), "eval": len(self.eval_pairs)},
                "data": self.provenance, "recipe_hash": self.manifest["recipe_hash"],
                "training_seconds": round(seconds, 2), "updates": self.step}
        tmp = self.run_dir / ".model.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        save_reward_model(self.model, tmp, info)
        final = self.run_dir / "model"
        write_model_card(tmp, info=info, recipe=self.resolved, manifest=self.manifest, run_dir=self.run_dir)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        print(f"[genrl] reward model -> {final}: held-out pair accuracy {metrics['eval/accuracy']:.3f} "
              f"({len(self.eval_pairs)} pairs), ECE {metrics['eval/ece']:.3f}")
        return {**metrics, "model_dir": str(final)}


def train_reward_model_artifact(recipe_file: Path, out_dir: Path) -> None:
    """Cache builder: ``genrl reward train`` into ``out_dir`` in a child process, then mark it complete.

    A child process: the caller may be one rank of a multi-process run (building under
    ``main_process_first``); training in-process would join that run's process group.
    """
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
           and not k.startswith(("ACCELERATE_", "TORCHELASTIC_"))}
    env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [sys.executable, "-m", "genrl.cli", "reward", "train", str(recipe_file), "--run-dir", str(out_dir), "--fresh"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"training the reward model of {recipe_file} failed:\n{proc.stderr[-3000:]}")
    metrics = json.loads((out_dir / "model" / "config.json").read_text())["metrics"]
    (out_dir / "checkpoint.json").write_text(json.dumps({"kind": "preference_reward", "model": "model",
                                                         "metrics": metrics}, indent=2))


def reward_model_from_recipe(recipe: str, *, referenced_from: str | None = None, key: str = "") -> Path:
    """Run folder of the reward model that ``recipe`` trains (trained now and cached if needed)."""
    from genrl.cache import cached_artifact, resolve_recipe_path

    path = resolve_recipe_path(recipe, referenced_from=referenced_from, key=key)
    return cached_artifact(path, RewardTrainRecipe, "preference_reward",
                           lambda _cfg, out: train_reward_model_artifact(path, out))
