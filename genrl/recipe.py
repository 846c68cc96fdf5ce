"""The training recipe schema: one YAML file -> one typed, validated ``TrainRecipe``.

Every field has a help string (``genrl recipe explain`` prints them). Components (policy, explorer,
prompts, rewards, advantage, objective, eval) are named entries of the registries in
``genrl.registry``; their fields sit next to their ``name``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from genrl.config.validate import ComponentSpec, component, option
from genrl.registry import ADVANTAGES, BENCHMARKS, EXPLORERS, OBJECTIVES, POLICIES, PROMPTS, REWARDS


def _register_builtins() -> None:
    """Import the modules whose decorators fill the registries."""
    import genrl.advantages  # noqa: F401
    import genrl.eval.digits  # noqa: F401
    import genrl.eval.moving_digits_video  # noqa: F401
    import genrl.eval.visual_arithmetic  # noqa: F401
    import genrl.eval.visual_math  # noqa: F401
    import genrl.explorers  # noqa: F401
    import genrl.objectives  # noqa: F401
    import genrl.policies  # noqa: F401
    import genrl.prompts  # noqa: F401
    import genrl.rewards  # noqa: F401


_register_builtins()


@dataclass
class TrainerConfig:
    steps: int = option(help="Training steps (one rollout + its updates each).")
    prompts_per_step: int = option(help="Prompts per step, over all processes.")
    group_size: int = option(help="Samples per prompt (G); advantages are relative within a group.")
    minibatch_size: int = option(help="Samples per optimizer update, over all processes.")
    micro_batch_size: int = option(default=32, help="Samples per forward/backward on one process (gradient accumulation).")
    inner_epochs: int = option(default=1, help="Passes over each rollout batch (K).")
    lr: float = option(default=1e-4, help="AdamW learning rate.")
    weight_decay: float = option(default=0.0, help="AdamW weight decay.")
    adam_betas: list[float] = option(default_factory=lambda: [0.9, 0.999], help="AdamW betas.")
    adam_eps: float = option(default=1e-8, help="AdamW epsilon.")
    max_grad_norm: float = option(default=1.0, help="Gradient-norm clip.")
    lr_schedule: Literal["constant", "cosine"] = option(default="constant", help="LR schedule after warm-up.")
    warmup_steps: int = option(default=0, help="Linear warm-up, in optimizer updates.")
    ema_decay: float | None = option(default=None, help="EMA of the trained weights (used for sampling); null = off.")
    checkpoint_every: int = option(default=0, help="Checkpoint every N steps (0 = only at the end).")
    keep_last: int = option(default=2, help="Checkpoints kept.")
    max_invalid_reward_share: float = option(
        default=0.05, help="Stop the run when more than this share of samples got a NaN/failed reward."
    )
    skip_grad_norm: float | None = option(
        default=None, help="Skip an update whose gradient norm exceeds this (non-finite norms are always skipped)."
    )
    max_skipped_update_share: float = option(
        default=0.1, help="Stop the run when the skipped updates pass this share of the run's planned updates."
    )
    rollout_depth: Literal[0] = option(
        default=0, help="Rollouts produced ahead of the update (0 = on-policy; >0 reserved for async modes)."
    )
    reward_chunks: int = option(
        default=1,
        help="Pieces each step's rollout is generated in; piece k is scored while piece k+1 is generated, hiding "
             "slow rewards (still on-policy, same samples). 1 = no overlap. Pieces hold whole groups unless that "
             "costs padded network rows (policy.forward_chunk); group-wise rewards then wait for the last piece.",
    )

    dynamic_sampling: bool = option(
        default=False,
        help="DAPO dynamic sampling: groups whose rewards all agree are dropped and refilled with fresh prompts "
             "(more rollouts per step, up to dynamic_sampling_rounds); the zero-std share is logged before and after.",
    )
    dynamic_sampling_rounds: int = option(
        default=3, help="Rollouts per step at most under dynamic sampling (the first + refills); short batches are "
                        "topped up with dropped groups, which get zero advantage.")

    def validate(self) -> None:
        if self.dynamic_sampling_rounds < 1:
            raise ValueError("dynamic_sampling_rounds: must be >= 1")
        for name in ("steps", "prompts_per_step", "group_size", "minibatch_size", "micro_batch_size", "inner_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1")
        batch = self.prompts_per_step * self.group_size
        if batch % self.minibatch_size:
            raise ValueError(
                f"minibatch_size: must divide the rollout batch prompts_per_step x group_size = {batch}"
            )
        if not 1 <= self.reward_chunks <= batch:
            raise ValueError(f"reward_chunks: expected 1 to the rollout batch prompts_per_step x group_size = "
                             f"{batch}, got {self.reward_chunks}")
        if len(self.adam_betas) != 2:
            raise ValueError("adam_betas: expected two numbers")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ValueError("ema_decay: must be in (0, 1) or null")


@dataclass
class EvalSchedule:
    every: int = option(default=0, help="Run the eval benchmark every N steps (0 = only before and after training).")
    seeds: int = option(default=1, help="Evaluation seeds per periodic evaluation (statistics over seeds).")
    select: str | None = option(
        default=None, help="Metric that picks the best checkpoint (kept in checkpoints/best); null = none kept."
    )

    def validate(self) -> None:
        if self.every < 0:
            raise ValueError("every: must be >= 0")
        if self.seeds < 1:
            raise ValueError("seeds: must be >= 1")


@dataclass
class LoggingConfig:
    tensorboard: bool = option(default=True, help="Write TensorBoard scalars to RUN_DIR/tb.")
    wandb: bool = option(default=False, help="Also log to Weights & Biases (needs `pip install wandb`).")
    wandb_project: str = option(default="genrl", help="W&B project.")
    progress: bool = option(default=True, help="Show progress bars.")


@dataclass
class TrainRecipe:
    run_dir: str = option(help="Run directory (checkpoints, logs, manifest); --run-dir overrides.")
    policy: ComponentSpec = component(POLICIES, help="The model being trained.")
    explorer: ComponentSpec = component(EXPLORERS, help="Where the diversity of a group comes from.")
    prompts: ComponentSpec = component(PROMPTS, help="What each step conditions on.")
    rewards: list[ComponentSpec] = component(REWARDS, help="Reward components, each with a weight.")
    trainer: TrainerConfig = option(help="Batch sizes, optimizer, schedule, checkpoints.")
    advantage: ComponentSpec = component(ADVANTAGES, default={"name": "group_relative"}, help="Advantage estimator.")
    objective: ComponentSpec = component(OBJECTIVES, default={"name": "flow_grpo"}, help="The loss.")
    eval: ComponentSpec | None = component(BENCHMARKS, default=None, help="Benchmark run before and after training.")
    eval_schedule: EvalSchedule = option(default_factory=EvalSchedule, help="Periodic evaluation and best checkpoint.")
    seed: int = option(default=0, help="Seed of every keyed random draw.")
    device: Literal["auto", "cpu", "cuda"] = option(default="auto", help="auto = CUDA when available.")
    num_threads: int | None = option(default=1, help="torch intra-op threads per process (1 is fastest on small CPUs).")
    mixed_precision: Literal["no", "bf16", "fp16"] = option(default="no", help="Autocast precision of the model.")
    deterministic: bool | None = option(
        default=None, help="Deterministic algorithms; null = on for CPU, off for GPU (where it costs speed)."
    )
    logging: LoggingConfig = option(default_factory=LoggingConfig, help="Where metrics go.")
    description: str = option(default="", help="Free text, copied into the manifest.")
    tags: list[str] = field(default_factory=list, metadata={"help": "Free-form labels."})

    def validate(self) -> None:
        if self.eval is None and (self.eval_schedule.every or self.eval_schedule.select):
            raise ValueError("eval_schedule: periodic evaluation needs an eval benchmark")
        if self.eval is not None and self.eval_schedule.select is not None:
            names = {m.name for m in BENCHMARKS.get(self.eval.name).metrics}
            if self.eval_schedule.select.split("/pass@")[0] not in names:
                raise ValueError(f"eval_schedule: select {self.eval_schedule.select!r} is not a metric of "
                                 f"{self.eval.name!r}; expected one of {sorted(names)}")
        if not self.rewards:
            raise ValueError("rewards: at least one reward component is needed")
        # Components may name the policies they work with (``policies = (...)``); unnamed ones (plug-ins) pass.
        for section, spec, registry in (("explorer", self.explorer, EXPLORERS), ("objective", self.objective, OBJECTIVES),
                                        ("prompts", self.prompts, PROMPTS)):
            allowed = getattr(registry.get(spec.name), "policies", None)
            if allowed is not None and self.policy.name not in allowed:
                raise ValueError(f"{section}: {spec.name!r} works with the policies {list(allowed)}, not with "
                                 f"{self.policy.name!r}")
        if getattr(POLICIES.get(self.policy.name), "needs_prompt_items", False) and \
                not hasattr(PROMPTS.get(self.prompts.name), "items"):
            raise ValueError(f"prompts: policy {self.policy.name!r} needs a prompt source with items (questions with "
                             f"images), e.g. visual_arithmetic; {self.prompts.name!r} gives ids only")
        if getattr(PROMPTS.get(self.prompts.name), "gives_text", False) and \
                getattr(self.policy.config, "pipeline", "") is None:
            raise ValueError(f"prompts: {self.prompts.name!r} gives text prompts; policy {self.policy.name!r} without "
                             f"a pipeline is a class-conditioned model: set policy.pipeline.path to a diffusers pipeline")
        batch = self.trainer.prompts_per_step * self.trainer.group_size
        if getattr(self.policy.config, "old_log_probs", "rollout") == "update" and (
                self.trainer.inner_epochs != 1 or self.trainer.minibatch_size != batch):
            raise ValueError(f"policy: old_log_probs 'update' needs one optimizer step per rollout: trainer.inner_epochs 1 "
                             f"and trainer.minibatch_size = prompts_per_step x group_size = {batch} (got "
                             f"{self.trainer.inner_epochs} and {self.trainer.minibatch_size})")
        need = getattr(OBJECTIVES.get(self.objective.name), "explorer_flag", None)
        if need and not getattr(self.explorer.config, need, False):
            raise ValueError(f"explorer: objective {self.objective.name!r} needs an explorer with {need}: true "
                             f"(explorer vogue, or noisy_image with {need}: true)")
        if getattr(self.objective.config, "guard", False) and self.policy.name != "flow_image":
            raise ValueError(f"objective: guard (GRPO-Guard's step re-weighting) needs the flow_image policy's single "
                             f"sigma schedule; {self.policy.name!r} has none: set guard: false")
        branches = getattr(self.explorer.config, "branches", None)
        if self.explorer.name == "kvpo" and self.trainer.group_size != branches + 1:
            raise ValueError(f"trainer.group_size: explorer kvpo makes fork groups of branches + 1 (the anchor) = "
                             f"{branches + 1} rows, got group_size {self.trainer.group_size}")
        if getattr(OBJECTIVES.get(self.objective.name), "whole_groups", False):
            G = self.trainer.group_size
            if self.trainer.minibatch_size % G or self.trainer.micro_batch_size % G:
                raise ValueError(f"trainer.minibatch_size: objective {self.objective.name!r} needs whole groups in "
                                 f"every (micro-)batch: minibatch_size and micro_batch_size must be multiples of "
                                 f"group_size {G} (got {self.trainer.minibatch_size} and {self.trainer.micro_batch_size})")
        noise = getattr(self.explorer.config, "noise_level", None)
        if noise == 0 and getattr(OBJECTIVES.get(self.objective.name), "needs_likelihood", False):
            raise ValueError(f"explorer: noise_level must be > 0 for the likelihood objective {self.objective.name!r}")
