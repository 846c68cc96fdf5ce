"""The one training loop shared by every genrl trainer.

    for each step:
        for piece in producer.chunks(step):                  # policy + explorer, no grad, this rank's shard
            reward_stream.add(samples, prompts)              # scored while the next piece is generated
        rewards   = reward_stream.result()                   # [b, C], possibly slow / remote / in a worker
        batch     = gather(rollout + rewards)                # global batch on every rank
        [dynamic sampling: drop all-equal-reward groups, refill with fresh prompts, up to N rollouts]
        batch.adv = advantage(rewards, weights, groups)      # group statistics over all ranks
        K epochs x minibatches (keyed shuffle; rank r takes r::W of each) x micro-batches:
            loss = objective(policy, micro)                  # gradient accumulation, DDP sync on the last
            optimizer step, LR schedule, EMA
        log, checkpoint (atomic), eval

A new trainer plugs in a policy / explorer / reward / advantage / objective; it never copies this.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections import defaultdict
from pathlib import Path

import torch
import yaml

from genrl.cache import check_references
from genrl.config.validate import RecipeError, to_dict
from genrl.recipe import TrainRecipe
from genrl.registry import ADVANTAGES, BENCHMARKS, EXPLORERS, OBJECTIVES, POLICIES, PROMPTS, REWARDS
from genrl.rewards.base import RewardSet, build_reward
from genrl.rewards.learned import policy_reward_check
from genrl.rng import Purpose, keyed_permutation
from genrl.trainer import checkpoint as ckpt
from genrl.trainer.ema import EMA
from genrl.trainer.faults import FaultLog
from genrl.trainer.logger import MetricLogger
from genrl.trainer.manifest import (
    determinism_statement,
    new_manifest,
    open_session,
    record_checkpoint,
    run_hash,
    save_manifest,
)
from genrl.trainer.preemption import PreemptionWatcher, requeue_slurm_job
from genrl.trainer.producer import RolloutProducer
from genrl.trainer.rollout import Rollout


def enable_deterministic_mode() -> None:
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by deterministic cuBLAS
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def lr_lambda(schedule: str, warmup: int, total: int):
    """Multiplier of the base LR at update u: linear warm-up, then constant or cosine to 0."""
    def f(update: int) -> float:
        if update < warmup:
            return (update + 1) / warmup
        if schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * (update - warmup) / max(1, total - warmup)))
        return 1.0

    return f


class Trainer:
    def __init__(self, recipe: TrainRecipe, *, recipe_file: str, run_dir: str | None = None) -> None:
        from accelerate import Accelerator

        self.recipe = recipe
        self.recipe_file = recipe_file
        self.resolved = to_dict(recipe)
        if run_dir is not None:
            self.resolved["run_dir"] = run_dir
        self.run_dir = Path(self.resolved["run_dir"]).expanduser().resolve()
        self.seed = recipe.seed
        if recipe.num_threads:
            torch.set_num_threads(recipe.num_threads)
        use_cpu = recipe.device == "cpu" or not torch.cuda.is_available()
        # Deterministic mode: on by default on CPU (free), opt-in on GPU (it costs speed there).
        self.deterministic = recipe.deterministic if recipe.deterministic is not None else use_cpu
        if self.deterministic:
            enable_deterministic_mode()
        if recipe.device == "cuda" and not torch.cuda.is_available():
            raise RecipeError(recipe_file, "device", "expected 'cpu' or 'auto': cuda was requested but no CUDA device is visible")
        check_references(self.resolved, recipe_file)  # every referenced recipe exists before anything is built
        # On CPU, cpu=True gives gloo DDP under torchrun; but it would also switch off a DeepSpeed or FSDP
        # engine that `accelerate launch` set up, so then Accelerate picks the (CPU) device itself.
        engine_launch = any(os.environ.get(f"ACCELERATE_USE_{e}", "false").lower() == "true" for e in ("DEEPSPEED", "FSDP"))
        self.acc = Accelerator(cpu=use_cpu and not engine_launch, mixed_precision=recipe.mixed_precision)
        self.rank, self.world = self.acc.process_index, self.acc.num_processes
        self.device = self.acc.device
        tc = recipe.trainer
        if tc.minibatch_size % self.world or (tc.prompts_per_step * tc.group_size) % self.world:
            raise RecipeError(recipe_file, "trainer.minibatch_size",
                              f"expected the minibatch ({tc.minibatch_size}) and the rollout batch "
                              f"({tc.prompts_per_step * tc.group_size}) to divide over {self.world} processes")

        # Inputs are resolved (checked, or built and cached) before any training work.
        pspec = recipe.policy
        policy_cls = POLICIES.get(pspec.name)
        with self.acc.main_process_first():
            self.base_dir = policy_cls.resolve_base(pspec.config, recipe_file=recipe_file, key="policy")
            self.reward_dirs = {}
            for i, spec in enumerate(recipe.rewards):
                cls = REWARDS.get(spec.name)
                if hasattr(cls, "resolve"):
                    self.reward_dirs[i] = cls.resolve(spec.config, recipe_file=recipe_file, key=f"rewards[{i}]")

        torch.manual_seed(self.seed)  # fresh weights (a from-scratch policy, LoRA init) depend on the seed only
        self.policy = policy_cls(pspec.config, device=self.device, base_dir=self.base_dir)
        self.explorer = EXPLORERS.get(recipe.explorer.name)(recipe.explorer.config, seed=self.seed)
        self.prompts = PROMPTS.get(recipe.prompts.name)(recipe.prompts.config, seed=self.seed)
        components = []
        for i, spec in enumerate(recipe.rewards):
            policy_reward_check(REWARDS.get(spec.name), self.reward_dirs.get(i), self.policy, recipe_file, f"rewards[{i}]")
            extra = {"model_dir": self.reward_dirs[i]} if i in self.reward_dirs else {}
            fn = build_reward(spec.name, spec.config, device=self.device, **extra)  # executor: process -> a worker
            components.append((spec.name, fn, spec.config.weight, spec.config))
        self.rewards = RewardSet(components, max_invalid_share=tc.max_invalid_reward_share)
        groupwise = [spec.name for spec in recipe.rewards if getattr(REWARDS.get(spec.name), "groupwise", False)]
        if groupwise and tc.prompts_per_step % self.world:
            # Each process scores its own shard: a group cut between two processes would be ranked in halves.
            raise RecipeError(recipe_file, "trainer.prompts_per_step",
                              f"expected a multiple of the {self.world} processes: the group-wise reward(s) "
                              f"{groupwise} need every process's shard to hold whole groups")
        self.advantage = ADVANTAGES.get(recipe.advantage.name)(recipe.advantage.config)
        self.objective = OBJECTIVES.get(recipe.objective.name)(recipe.objective.config)
        if getattr(self.objective, "needs_reference", False):
            self.policy.make_reference()

        params = self.policy.trainable_parameters()
        if not params:
            raise ValueError(f"{recipe_file}: policy has no trainable parameters")
        self.optimizer = torch.optim.AdamW(list(params.values()), lr=tc.lr, betas=tuple(tc.adam_betas),
                                           eps=tc.adam_eps, weight_decay=tc.weight_decay)
        updates_per_step = tc.inner_epochs * (tc.prompts_per_step * tc.group_size // tc.minibatch_size)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(tc.lr_schedule, tc.warmup_steps, tc.steps * updates_per_step))
        self.deepspeed = self.acc.state.deepspeed_plugin is not None
        self.zero3 = self.deepspeed and self.acc.state.deepspeed_plugin.zero_stage == 3
        self.fsdp = str(getattr(self.acc.distributed_type, "value", self.acc.distributed_type)) == "FSDP"
        if self.zero3 and tc.ema_decay:
            raise RecipeError(recipe_file, "trainer.ema_decay",
                              "expected null under DeepSpeed ZeRO-3 (EMA of sharded parameters is not supported yet)")
        if self.deepspeed:  # genrl owns accumulation and clipping; tell the engine the sizes it asks for
            ds = self.acc.state.deepspeed_plugin.deepspeed_config
            ds["train_micro_batch_size_per_gpu"] = tc.micro_batch_size
            ds["gradient_accumulation_steps"] = 1  # boundaries are set per micro-batch in _update
            ds["gradient_clipping"] = tc.max_grad_norm
        self.policy.engine_model, self.optimizer = self.acc.prepare(self.policy.trainable_module(), self.optimizer)
        self.ema = EMA(self.policy.trainable_parameters(), tc.ema_decay) if tc.ema_decay else None
        self.producer = RolloutProducer(self.policy, self.explorer, self.prompts, seed=self.seed,
                                        prompts_per_step=tc.prompts_per_step, group_size=tc.group_size,
                                        rank=self.rank, world_size=self.world, depth=tc.rollout_depth,
                                        reward_chunks=tc.reward_chunks)
        self.benchmark = self.evaluator = None
        if recipe.eval is not None:
            self.benchmark = BENCHMARKS.get(recipe.eval.name)(recipe.eval.config, recipe_file=recipe_file)
            sched = recipe.eval_schedule
            if sched.every and self.is_main:
                from genrl.eval.periodic import PeriodicEvaluator

                base_seed = getattr(recipe.eval.config, "seed", 0)
                self.evaluator = PeriodicEvaluator(
                    self.benchmark, self.run_dir / "eval", name=recipe.eval.name,
                    seeds=[base_seed + i for i in range(sched.seeds)], select=sched.select,
                    keep_best_dir=self.run_dir / "checkpoints" / "best" if sched.select else None)
        self.faults = FaultLog(self.run_dir, max_skipped_update_share=tc.max_skipped_update_share,
                               skip_grad_norm=tc.skip_grad_norm, planned_updates=tc.steps * updates_per_step)
        self.step = 0
        self.history: list[dict] = []

    @property
    def engine_name(self) -> str:
        """DDP / DEEPSPEED / FSDP / NO (one process), as Accelerate set it up from the launcher."""
        kind = str(getattr(self.acc.distributed_type, "value", self.acc.distributed_type))
        if kind == "DEEPSPEED":
            kind += f" ZeRO-{self.acc.state.deepspeed_plugin.zero_stage}"
        return kind

    def inputs(self) -> dict[str, Path | None]:
        """Everything this run reads, for the manifest's content hashes (and replay's refusal)."""
        found: dict[str, Path | None] = {"base_checkpoint": self.base_dir}
        for i, p in self.reward_dirs.items():
            found[f"rewards[{i}]:{self.recipe.rewards[i].name}"] = p
        for i, fn in enumerate(self.rewards.fns):
            for name, p in getattr(fn, "input_files", {}).items():
                found[f"rewards[{i}]:{name}"] = p
        for part, obj in (("policy", self.policy), ("prompts", self.prompts)):  # a pipeline folder, a prompt file
            found.update({f"{part}:{k}": v for k, v in getattr(obj, "input_files", {}).items()})
        if self.benchmark is not None:
            found.update({f"eval:{k}": v for k, v in getattr(self.benchmark, "input_files", {}).items()})
        return found

    # ------------------------------------------------------------------ helpers
    @property
    def is_main(self) -> bool:
        return self.acc.is_main_process

    def _gather(self, rollout: Rollout) -> Rollout:
        if self.world == 1:
            return rollout
        return Rollout({k: self.acc.gather(v.contiguous()) for k, v in rollout.tensors.items()}, rollout.meta)

    def _autocast(self):
        return self.acc.autocast() if self.recipe.mixed_precision != "no" else contextlib.nullcontext()

    # ------------------------------------------------------------- one step
    def _clock(self) -> float:
        if self.device.type == "cuda":  # kernels are asynchronous: time what ran, not what was queued
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _generate_and_score(self, step: int, round: int = 0) -> tuple[Rollout, dict[str, float]]:
        """One rollout of the step (refill ``round`` under dynamic sampling), scored and gathered (CPU)."""
        t0 = self._clock()
        # The shard comes in trainer.reward_chunks pieces; each is scored (on the scoring thread, or a
        # worker) while the next is generated. Group-wise rewards wait for whole groups (RewardStream).
        scoring = self.rewards.stream(whole_groups=self.producer.chunks_hold_whole_groups)
        pieces = []
        with self._autocast():
            for piece in self.producer.chunks(step, round):
                samples, contexts = self.policy.reward_inputs(piece)
                scoring.add(samples, contexts, groups=piece["group_ids"].cpu())
                pieces.append(piece)
        local = pieces[0] if len(pieces) == 1 else Rollout.cat(pieces)
        t1 = self._clock()
        scored = scoring.result()  # time/reward: only the wait left after generation
        local["rewards"] = scored.values.to(self.device)
        local["valid"] = scored.valid.to(self.device)
        t2 = self._clock()
        batch = self._gather(local).to("cpu")
        self.rewards.account(batch["valid"])
        return batch, {"time/rollout": t1 - t0, "time/reward": t2 - t1,
                       # scoring time that ran while pieces were still being generated
                       "time/reward_hidden": max(0.0, scored.seconds - (t2 - t1))}

    def _informative_groups(self, batch: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        """(group ids, informative?) per group: usable (no failed reward) and not all rewards equal."""
        uniq, inv = torch.unique(batch["group_ids"], return_inverse=True)
        keep = torch.zeros(len(uniq), dtype=torch.bool)
        for g in range(len(uniq)):
            m = inv == g
            r = batch["rewards"][m]
            keep[g] = bool(batch["valid"][m].all()) and bool((r.max(0).values - r.min(0).values).abs().max() > 1e-6)
        return uniq, keep

    def _dynamic_batch(self, step: int, first: Rollout, timing: dict[str, float]) -> tuple[Rollout, dict[str, float]]:
        """DAPO's dynamic sampling: drop groups whose rewards all agree, refill with fresh prompts (up to
        ``dynamic_sampling_rounds`` rollouts), then top up with dropped groups if still short."""
        n_groups, G = self.recipe.trainer.prompts_per_step, self.recipe.trainer.group_size
        kept: list[Rollout] = []
        dropped: list[Rollout] = []
        rounds, batch, first_share = 0, first, None
        while True:
            uniq, keep = self._informative_groups(batch)
            if first_share is None:
                first_share = 1 - float(keep.float().mean())
            for g, ok in zip(uniq.tolist(), keep.tolist()):
                (kept if ok else dropped).append(batch.select(torch.nonzero(batch["group_ids"] == g).flatten()))
            rounds += 1
            if len(kept) >= n_groups or rounds >= self.recipe.trainer.dynamic_sampling_rounds:
                break
            batch, more = self._generate_and_score(step, rounds)
            for k, v in more.items():
                timing[k] += v
        chosen = (kept + dropped)[:n_groups]
        for new_id, part in enumerate(chosen):  # groups from different rounds share ids: renumber
            part["group_ids"] = torch.full((G,), new_id, dtype=part["group_ids"].dtype)
        metrics = {"dynamic/rounds": float(rounds), "dynamic/filled_share": min(len(kept), n_groups) / n_groups,
                   "dynamic/zero_std_share_first_round": first_share}
        return Rollout.cat(chosen), metrics

    def train_step(self, step: int) -> dict[str, float]:
        t0 = self._clock()
        first, timing = self._generate_and_score(step)
        batch, dyn = (first, {}) if not self.recipe.trainer.dynamic_sampling else self._dynamic_batch(step, first, timing)
        t2 = self._clock()
        # A sample whose reward failed takes its whole group out of the update (its statistics are unknown).
        groups = batch["group_ids"]
        bad_groups = torch.unique(groups[~batch["valid"]])
        usable = ~torch.isin(groups, bad_groups)
        adv = self.advantage(batch["rewards"], self.rewards.weights, groups, usable)
        batch["advantages"] = adv.advantages
        metrics = self._update(step, batch.to(self.device))
        t3 = self._clock()

        # Reward statistics of the first rollout: what the policy does on fresh prompts (not the refilled batch).
        r = first["rewards"][first["valid"]]
        for c, name in enumerate(self.rewards.names):
            metrics[f"reward/{name}/mean"] = float(r[:, c].mean())
            metrics[f"reward/{name}/std"] = float(r[:, c].std())
        total = (r * self.rewards.weights).sum(1)  # elementwise: no alignment-dependent gemv
        metrics["reward/total/mean"], metrics["reward/total/std"] = float(total.mean()), float(total.std())
        metrics["reward/invalid_share"] = float((~first["valid"]).float().mean())
        metrics["reward/skipped_groups"] = float(len(bad_groups))
        metrics.update(adv.metrics)
        metrics.update(dyn)
        metrics["lr"] = self.scheduler.get_last_lr()[0]
        metrics.update({**timing, "time/update": t3 - t2, "time/step": t3 - t0})
        return metrics

    def _update(self, step: int, batch: Rollout) -> dict[str, float]:
        tc = self.recipe.trainer
        n = len(batch)
        sums: dict[str, float] = defaultdict(float)
        ratios: dict[int, list[torch.Tensor]] = defaultdict(list)
        count, grad_norms = 0, []
        model = self.policy.engine_model
        # Objectives over a group's rows (KVPO's branch softmax) get whole groups: groups are shuffled, not rows.
        G = tc.group_size if getattr(self.objective, "whole_groups", False) else 1
        for epoch in range(tc.inner_epochs):
            perm = keyed_permutation(n // G, self.seed, Purpose.SHUFFLE, step, epoch)
            perm = (perm.view(-1, 1) * G + torch.arange(G)).flatten()  # rows of a group are contiguous in the batch
            for j, mb in enumerate(perm.split(tc.minibatch_size)):
                local = mb.view(-1, G)[self.rank :: self.world].flatten()  # this rank's share of the global minibatch
                micros = local.split(tc.micro_batch_size)
                for i, idx in enumerate(micros):
                    micro = batch.select(idx)
                    sync = i == len(micros) - 1
                    with (contextlib.nullcontext() if sync else self.acc.no_sync(model)), self._autocast():
                        out = self.objective(self.policy, micro)
                    if self.deepspeed:  # the engine reduces and steps only at the minibatch's last micro-batch
                        self.acc.gradient_state._set_sync_gradients(sync)
                    self.acc.backward(out.loss * (len(idx) / len(local)))
                    for k, v in out.metrics.items():
                        sums[k] += v * len(idx)
                    for t, rt in out.step_ratios.items():
                        ratios[t].append(rt)
                    count += len(idx)
                norm = self.acc.clip_grad_norm_(list(self.policy.trainable_parameters().values()), tc.max_grad_norm)
                norm = float("nan") if norm is None else float(norm)
                # The norm is global (after all-reduce), so ranks agree. Under DeepSpeed the engine has
                # already stepped (it skips overflowing fp16 steps itself): nothing left to skip here.
                skip = self.faults.bad_update(norm) and not self.deepspeed
                self.faults.record_update(skip, grad_norm=norm, batch=batch.select(local) if skip else None,
                                          tag=f"step{step:06d}_epoch{epoch}_mb{j}", rank=self.rank)
                if not skip:
                    grad_norms.append(norm)
                    self.optimizer.step()
                    self.scheduler.step()
                    if self.ema is not None:
                        self.ema.update()
                self.optimizer.zero_grad(set_to_none=True)
        metrics = {k: v / count for k, v in sums.items()}
        if self.world > 1:
            keys = sorted(metrics)
            vals = self.acc.reduce(torch.tensor([metrics[k] for k in keys], device=self.device), "mean")
            metrics = dict(zip(keys, vals.tolist()))
        for t, parts in sorted(ratios.items()):
            rt = torch.cat(parts)
            if self.world > 1:
                rt = self.acc.gather(rt)
            metrics.update({f"ratio/step_{t:02d}/mean": float(rt.mean()), f"ratio/step_{t:02d}/std": float(rt.std()),
                            f"ratio/step_{t:02d}/min": float(rt.min()), f"ratio/step_{t:02d}/max": float(rt.max())})
        metrics["grad_norm"] = sum(grad_norms) / len(grad_norms) if grad_norms else float("nan")
        metrics["fault/skipped_updates"] = float(self.faults.skipped_updates)
        return metrics

    # ------------------------------------------------------------- checkpoints
    def _checkpoint_meta(self) -> dict:
        return {
            "format": "genrl-checkpoint/1",
            **self.policy.checkpoint_meta(),
            "policy_config": {k: v for k, v in self.resolved["policy"].items() if k != "name"},
            "weights": "lora" if getattr(self.policy.config, "lora", None) else "full",
            "base_checkpoint": str(self.base_dir) if self.base_dir else None,
            "step": self.step,
            "has_ema": self.ema is not None,
            "recipe_hash": run_hash(self.resolved),
        }

    def save_checkpoint(self, *, final: bool = False) -> Path | None:
        """Write a checkpoint (main process). A failed write (disk full, I/O error) keeps the previous
        checkpoint valid; it is counted and the run goes on, except for the final checkpoint."""
        path = None
        # Under FSDP every rank takes part in gathering the shards; otherwise the main process reads alone.
        gather = self.is_main or self.fsdp
        with self._gathered():  # collective under ZeRO-3: every rank enters it
            weights = self.policy.trainable_state_dict() if gather else None
        ema = self.ema.state_dict() if self.ema is not None and gather else None
        # Objectives with state of their own (DiffusionNFT's soft old policy) checkpoint it here.
        objective_state = self.objective.state_dict() if gather and hasattr(self.objective, "state_dict") else {}
        opt_tensors = opt_meta = None
        if gather and not (self.deepspeed and self.world > 1):  # ZeRO partitions live on every rank: see docs
            opt_tensors, opt_meta = ckpt.optimizer_state_to_flat(self._raw_optimizer)
        if self.is_main:
            files = {"policy.safetensors": weights, **self.policy.frozen_checkpoint_files()}
            if ema is not None:
                files["ema.safetensors"] = ema
            if opt_tensors is not None:
                files["optimizer.safetensors"] = opt_tensors
            if objective_state:
                files["objective.safetensors"] = objective_state
            files["rng.safetensors"] = {"torch_cpu": torch.get_rng_state()}
            state = {"step": self.step, "data_position": self.step, "optimizer": opt_meta,
                     "scheduler": {k: v for k, v in self.scheduler.state_dict().items() if k != "lr_lambdas"},
                     "advantage": self.advantage.state_dict(),
                     "rewards": {"invalid": self.rewards.invalid_count, "total": self.rewards.total_count},
                     "faults": self.faults.state_dict()}
            try:
                path = ckpt.write_checkpoint(self.run_dir, self.step, files, self._checkpoint_meta(), state,
                                             keep_last=self.recipe.trainer.keep_last)
            except OSError as exc:
                self.faults.checkpoint_failures += 1
                previous = ckpt.latest_checkpoint(self.run_dir)
                print(f"[genrl] could not write the checkpoint of step {self.step}: {exc}; "
                      f"the previous checkpoint ({previous.name if previous else 'none'}) is still valid")
                if final:
                    raise
            if path is not None:
                record_checkpoint(self.manifest, self.run_dir, path, self.step)
                save_manifest(self.run_dir, self.manifest)
        self.acc.wait_for_everyone()
        return path

    def _gathered(self, modify: bool = False):
        """Full parameters for reading/writing them outside forward (ZeRO-3 shards them)."""
        if not self.zero3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(self.policy.trainable_parameters().values()),
                                                 modifier_rank=0 if modify else None)

    @property
    def _raw_optimizer(self) -> torch.optim.Optimizer:
        return ckpt.unwrap_optimizer(self.optimizer)

    def load_checkpoint(self, path: Path) -> None:
        ckpt.verify_checkpoint(path)  # exactly the files genrl wrote, with their hashes; nothing foreign
        meta = ckpt.read_json(path / "checkpoint.json")
        if meta.get("policy") != self.recipe.policy.name:
            raise ValueError(f"{path}: holds a {meta.get('policy')!r} policy, the recipe trains {self.recipe.policy.name!r}")
        with self._gathered(modify=True):
            self.policy.load_trainable_state_dict(ckpt.load_tensors(path / "policy.safetensors"))
        if self.ema is not None:
            self.ema.load_state_dict(ckpt.load_tensors(path / "ema.safetensors"))
        state = ckpt.read_json(path / "trainer_state.json")
        if state["optimizer"] is None:
            print(f"[genrl] {path.name} has no optimizer state (multi-process DeepSpeed); Adam moments restart")
        else:
            opt_state = ckpt.optimizer_state_from_flat(ckpt.load_tensors(path / "optimizer.safetensors"),
                                                       state["optimizer"], self._raw_optimizer.state_dict())
            # DeepSpeed's ZeRO optimizer loads a list with one state per data-parallel rank.
            self._raw_optimizer.load_state_dict([opt_state] if self.deepspeed else opt_state)
            if self.fsdp:
                ckpt.reshard_optimizer_state(self._raw_optimizer)
        self.scheduler.load_state_dict({**state["scheduler"], "lr_lambdas": [None]})
        self.advantage.load_state_dict(state["advantage"])
        if (path / "objective.safetensors").is_file() and hasattr(self.objective, "load_state_dict"):
            self.objective.load_state_dict(ckpt.load_tensors(path / "objective.safetensors"))
        self.rewards.invalid_count, self.rewards.total_count = state["rewards"]["invalid"], state["rewards"]["total"]
        self.faults.load_state_dict(state.get("faults", {}))
        torch.set_rng_state(ckpt.load_tensors(path / "rng.safetensors")["torch_cpu"])
        self.step = state["step"]

    def _stop_for_preemption(self, watcher: PreemptionWatcher) -> dict:
        """Save (atomically), note it in the manifest, requeue under SLURM, and return."""
        note = f"preempted by {watcher.signal_name} after step {self.step}"
        self.manifest["sessions"][-1].setdefault("notes", []).append(note)
        path = self.save_checkpoint(final=True)
        self.logger.close()  # flushed before the requeue: SLURM cancels the job (SIGTERM) right away
        if self.is_main:
            print(f"[genrl] {note}; checkpoint {path.name if path else '?'} written", flush=True)
            failure = requeue_slurm_job()
            if failure:
                print(f"[genrl] {failure}", flush=True)
        return {"final_checkpoint": str(path) if path else None, "stopped_at": self.step, "preempted": True}

    def _periodic_eval(self, checkpoint: Path | None) -> None:
        """Evaluate the (EMA) policy on the main process; log ``eval/*``; keep the best checkpoint."""
        if self.evaluator is not None:
            ema = self.ema.applied() if self.ema is not None else contextlib.nullcontext()
            with ema, torch.no_grad():
                result, improved = self.evaluator(self.policy, step=self.step, checkpoint=checkpoint)
            metrics = {f"eval/{k}/mean": v["mean"] for k, v in result.metrics.items() if v.get("mean") is not None}
            self.logger.log(self.step, metrics)
            if improved:
                print(f"[genrl] step {self.step}: new best {self.evaluator.best.metric} = "
                      f"{self.evaluator.best.best['value']:.4f} (kept in checkpoints/best)")
        self.acc.wait_for_everyone()

    def _resume(self) -> tuple[Path | None, list[str]]:
        """Load the newest checkpoint that verifies; report (and skip) corrupted ones."""
        return ckpt.resume_newest(self.run_dir, self.load_checkpoint)

    # ------------------------------------------------------------------ run
    def _start_run_dir(self, resume_from: Path | None, notes: list[str]) -> None:
        def fresh() -> dict:
            remote = [n for n, f in zip(self.rewards.names, self.rewards.fns) if getattr(f, "remote", False)]
            return new_manifest(
                engine=self.engine_name,
                recipe_file=self.recipe_file, resolved=self.resolved, seed=self.seed, world_size=self.world,
                base_checkpoint=str(self.base_dir) if self.base_dir else None, inputs=self.inputs(),
                determinism=determinism_statement(
                    deterministic=self.deterministic, device=self.device.type, world_size=self.world,
                    mixed_precision=self.recipe.mixed_precision, remote_rewards=remote))

        self.manifest = open_session(self.run_dir, self.resolved, resumed=resume_from is not None, step=self.step,
                                     world_size=self.world, make_manifest=fresh, write=self.is_main, notes=notes)
        if self.is_main:
            (self.run_dir / "recipe.yaml").write_text(yaml.safe_dump(self.resolved, sort_keys=False))

    def train(self, *, resume: bool = True, until_step: int | None = None) -> dict:
        """Run (or resume) to ``trainer.steps``; ``until_step`` stops early after checkpointing that step
        (an interruption on purpose: tests, replays and preemption use it)."""
        try:
            return self._train(resume=resume, until_step=until_step)
        finally:
            self.rewards.close()  # reward worker processes never outlive the run, also on error

    def _train(self, *, resume: bool, until_step: int | None) -> dict:
        latest, notes = self._resume() if resume else (None, [])
        if latest is not None and self.is_main:
            print(f"[genrl] resuming {self.run_dir} from {latest.name}")
        self._start_run_dir(latest, notes)
        self.acc.wait_for_everyone()
        lc = self.recipe.logging
        self.logger = MetricLogger(self.run_dir, tensorboard=lc.tensorboard, wandb=lc.wandb,
                                   wandb_project=lc.wandb_project, config=self.resolved, enabled=self.is_main)
        self.logger.truncate_after(self.step)
        results: dict = {}
        if self.benchmark is not None and self.step == 0 and self.is_main:
            results["before"] = self.benchmark.evaluate(self, tag="before")
        self.acc.wait_for_everyone()
        tc = self.recipe.trainer
        from genrl.progress import progress

        bar = progress(range(self.step, tc.steps), desc="train", disable=not (lc.progress and self.is_main),
                       total=tc.steps - self.step)
        watcher = PreemptionWatcher()
        preempted = False
        for step in bar:
            if until_step is not None and step >= until_step:
                break
            metrics = self.train_step(step)
            self.step = step + 1
            self.logger.log(self.step, metrics)
            self.history.append({"step": self.step, **metrics})
            bar.set_postfix(reward=f"{metrics['reward/total/mean']:.3f}", refresh=False)
            eval_due = bool(self.recipe.eval_schedule.every) and self.step % self.recipe.eval_schedule.every == 0
            if self.step < tc.steps and (eval_due or (tc.checkpoint_every and self.step % tc.checkpoint_every == 0)):
                path = self.save_checkpoint()
                if eval_due:
                    self._periodic_eval(path)
            if self.step < tc.steps and watcher.agreed(self.acc):
                preempted = True
                break
        watcher.restore()
        if preempted:
            return self._stop_for_preemption(watcher)
        final = self.save_checkpoint(final=True)
        if self.recipe.eval_schedule.every and self.step == tc.steps:
            self._periodic_eval(final)
        if until_step is not None and self.step < tc.steps:
            self.logger.close()
            return {"final_checkpoint": str(final) if final else None, "stopped_at": self.step}
        if self.benchmark is not None and self.is_main:
            results["after"] = self.benchmark.evaluate(self, tag="after")
            results.update(self.benchmark.report(self, results))
        self.logger.close()
        self.acc.wait_for_everyone()
        results["final_checkpoint"] = str(final) if final else None
        return results

