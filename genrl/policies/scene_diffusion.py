"""Gen-Drive's scene generator as an RL policy: the DDPM chain over joint agent actions, ego rows trained.

Each denoising step k -> k-1 is a Gaussian policy q(x_{k-1} | x_k, x0_hat) (DDPO). Gen-Drive optimises
the *ego's* behaviour: the log-probability of a step is that of the ego row of x_{k-1} alone (agent 0);
the other agents are sampled by the same chain and condition the denoiser (through agent self-attention)
but their rows are not actions of the policy. The scene encoder is frozen; the denoiser trains (full
fine-tuning).

``rollout`` samples with keyed noise (sample id x denoising step) and runs the network on exactly
``forward_chunk`` rows per call (the last chunk padded), so a sample does not depend on how the batch was
cut, and ``score`` replays the stored chain through the same :func:`ddpm_step`: the first ratio is 1.

Recipes name ``explorer: {name: ddpm}`` (registered here): the DDPM chain is itself stochastic, so the
explorer only says which denoising steps are trained (all stochastic ones by default, as in Gen-Drive).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from genrl.config.validate import option
from genrl.drive.scene import SceneSpec, unpack_context
from genrl.models.scene_diffusion import (
    DDPMSchedule,
    SceneDiffusionConfig,
    SceneDiffusionModel,
    actions_to_states,
    ddpm_step,
    sample_chain,
    step_log_prob,
)
from genrl.policies.loading import load_rl_checkpoint, read_checkpoint_meta, resolve_genrl_base
from genrl.policies.weights import TrainableWeights
from genrl.registry import POLICIES
from genrl.rng import Purpose, keyed_normal
from genrl.trainer.rollout import Rollout

POLICY_NAME = "scene_diffusion"
WEIGHTS_FILE = "model.safetensors"  # a base folder: encoder + denoiser
ENCODER_FILE = "scene_encoder.safetensors"  # an RL checkpoint: the frozen encoder beside the trained denoiser


@dataclass
class SceneItems:
    """What the ``driving_scenes`` prompt source hands a rollout: scenes as packed contexts + logged futures."""

    contexts: torch.Tensor  # [n, C] packed (genrl.drive.scene.pack_context)
    future: torch.Tensor  # [n, A, F, 4] logged future states
    future_mask: torch.Tensor  # [n, A, F] bool
    spec: dict  # SceneSpec.to_dict() of the data set
    source: str  # the data set folder (for error messages)


@POLICIES.register(POLICY_NAME)
class SceneDiffusionPolicy(TrainableWeights):
    """Behaviour-diffusion scene generator (joint agent actions) as a stochastic ego policy."""

    needs_prompt_items = True  # scenes (packed contexts + logged futures), not ids

    @dataclass
    class Config:
        base_checkpoint: str | None = option(default=None, help="Folder of a scene_diffusion base (or an RL checkpoint).")
        base_recipe: str | None = option(default=None, help="Pretraining recipe of the base (kind scene_diffusion); "
                                                            "built once and cached.")
        model: SceneDiffusionConfig = option(default_factory=SceneDiffusionConfig,
                                             help="Architecture without a base (random weights: tests only).")
        scene: SceneSpec = option(default_factory=SceneSpec, help="Scene layout without a base (a base brings its own).")
        num_steps: int | None = option(default=None, help="K denoising steps; null = the base's. Must equal the "
                                                          "schedule the base was trained with.")
        forward_chunk: int = option(default=32, help="Rows per network call (fixed: results independent of batching).")

        lora = None  # full fine-tuning of the denoiser (not a recipe field)

        def validate(self) -> None:
            if self.base_checkpoint and self.base_recipe:
                raise ValueError("base_recipe: give base_checkpoint or base_recipe, not both")
            if self.forward_chunk < 1:
                raise ValueError("forward_chunk: must be >= 1")
            if self.num_steps is not None and self.num_steps < 2:
                raise ValueError("num_steps: must be >= 2 (the last DDPM step is deterministic)")

    def __init__(self, config: Config, *, device: torch.device | str = "cpu", base_dir: Path | None = None) -> None:
        self.config = config
        self.device = torch.device(device)
        self.base_dir = Path(base_dir).resolve() if base_dir else None
        if self.base_dir is not None:
            self.model = self._load_base(self.base_dir)
        else:
            config.scene.validate()
            self.model = SceneDiffusionModel(config.model, config.scene)
        self.model_config, self.spec = self.model.cfg, self.model.spec
        K = self.model_config.num_steps
        if config.num_steps is None:
            config.num_steps = K  # the producer asks the explorer for a plan over config.num_steps
        elif config.num_steps != K:
            raise ValueError(f"policy.num_steps: the base was trained with a {K}-step DDPM schedule, got "
                             f"{config.num_steps} (leave it null)")
        self.schedule = DDPMSchedule(K)
        self.model.encoder.requires_grad_(False).eval()
        self.model.to(self.device)
        self.engine_model: nn.Module = self.model.denoiser

    # ----------------------------------------------------------------- loading
    @staticmethod
    def resolve_base(config: Config, *, recipe_file: str | None, key: str) -> Path | None:
        from genrl.pretrain.scene_diffusion import scene_diffusion_base_from_recipe

        return resolve_genrl_base(config, recipe_file=recipe_file, key=key, from_recipe=scene_diffusion_base_from_recipe)

    @staticmethod
    def _load_base(path: Path) -> SceneDiffusionModel:
        from genrl.trainer.checkpoint import load_tensors

        meta = read_checkpoint_meta(path)
        if meta.get("policy") != POLICY_NAME:
            raise ValueError(f"{path}: holds a {meta.get('policy')!r} model, expected {POLICY_NAME!r}")
        if meta.get("weights") == "full_base":
            model = SceneDiffusionModel(SceneDiffusionConfig(**meta["model"]), SceneSpec(**meta["scene_spec"]))
            model.load_state_dict(load_tensors(path / WEIGHTS_FILE))
            return model
        return SceneDiffusionPolicy.from_checkpoint(path).model  # an RL checkpoint as the base

    @classmethod
    def from_checkpoint(cls, path: Path | str, *, use_ema: bool = True, device: str = "cpu") -> SceneDiffusionPolicy:
        """A base folder or an RL checkpoint (its base rebuilt, the trained denoiser and the frozen encoder applied)."""
        from genrl.trainer.checkpoint import load_tensors

        path = Path(path).resolve()
        meta = read_checkpoint_meta(path)
        if meta.get("weights") == "full_base":
            return cls(cls.Config(), device=device, base_dir=path)
        policy = load_rl_checkpoint(cls, path, meta, use_ema=use_ema, device=device)
        if (path / ENCODER_FILE).is_file():
            policy.model.encoder.load_state_dict(load_tensors(path / ENCODER_FILE))
        return policy

    def save_base(self, out_dir: Path, *, extra_meta: dict | None = None) -> None:
        """A self-contained base folder: checkpoint.json (model config, scene spec) + the weights (safetensors)."""
        from safetensors.torch import save_file

        out_dir.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}, str(out_dir / WEIGHTS_FILE))
        meta = {"format": "genrl-checkpoint/1", "policy": POLICY_NAME, "weights": "full_base",
                "model": asdict(self.model_config), "scene_spec": self.spec.to_dict(),
                "num_steps": self.model_config.num_steps, **(extra_meta or {})}
        (out_dir / "checkpoint.json").write_text(json.dumps(meta, indent=2))

    def checkpoint_meta(self) -> dict:
        return {"policy": POLICY_NAME, "model": asdict(self.model_config), "scene_spec": self.spec.to_dict()}

    def trainable_module(self) -> nn.Module:
        return self.model.denoiser

    def frozen_checkpoint_files(self) -> dict[str, dict[str, torch.Tensor]]:
        return {ENCODER_FILE: {k: v.detach().cpu() for k, v in self.model.encoder.state_dict().items()}}

    @property
    def reward_sample_spec(self) -> tuple[tuple[int, ...], str]:
        return tuple(self.spec.sample_shape), "array"

    # -------------------------------------------------------------- the network
    def _chunks(self, n: int):
        c = self.config.forward_chunk
        for s in range(0, n, c):
            idx = torch.arange(s, min(s + c, n))
            pad = c - len(idx)
            yield idx, torch.cat([idx, idx[-1:].expand(pad)]) if pad else idx

    def encode(self, contexts: torch.Tensor) -> dict[str, torch.Tensor]:
        """Scene tokens of packed contexts (one chunk); the encoder is frozen: no grad."""
        with torch.no_grad():
            return self.model.encoder(unpack_context(self.spec, contexts.to(self.device)))

    def current_states(self, contexts: torch.Tensor) -> torch.Tensor:
        """[B, A, 4]: each agent's state at t = 0 (the unicycle's starting point)."""
        return unpack_context(self.spec, contexts.to(self.device))["history"][:, :, -1]

    def current_agent_mask(self, contexts: torch.Tensor) -> torch.Tensor:
        """[B, A] bool: real agents (padding rows are False)."""
        return unpack_context(self.spec, contexts.to(self.device))["agent_mask"]

    def states_from_actions(self, actions_norm: torch.Tensor, contexts: torch.Tensor) -> torch.Tensor:
        """Normalised actions [B, ..., A, F, 2] -> future states [B, ..., A, F, 4] (unicycle, differentiable)."""
        return actions_to_states(actions_norm, self.current_states(contexts), self.model_config, self.spec.dt)

    def _sample(self, contexts: torch.Tensor, sample_ids: torch.Tensor, *, seed: int, step: int,
                init: tuple[Purpose, tuple[int, ...]], steps: tuple[Purpose, tuple[int, ...]]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(chain [B, K+1, A, F, 2], ego log-probs [B, K]); noise keyed by (seed, purpose, step, sample id, keys)."""
        K, shape = self.schedule.K, self.spec.action_shape
        ids = sample_ids.tolist()
        x_K = keyed_normal(shape, seed, init[0], step, ids, *init[1], device=self.device)
        noise = [keyed_normal(shape, seed, steps[0], step, ids, *steps[1], j, device=self.device) for j in range(K)]
        chains, lps = [], []
        model = self.engine_model
        for real, rows in self._chunks(len(ids)):
            enc = self.encode(contexts[rows])
            chain, lp = sample_chain(model, self.schedule, enc, x_K[rows], [n[rows] for n in noise])
            chains.append(chain[: len(real)])
            lps.append(lp[: len(real)])
        return torch.cat(chains), torch.cat(lps)

    def _check_items(self, items) -> SceneItems:
        if not isinstance(items, SceneItems):
            raise ValueError("the scene_diffusion policy needs scenes from a prompt source with items "
                             "(prompts: {name: driving_scenes, path: ...})")
        if items.spec != self.spec.to_dict():
            diff = {k: (v, items.spec.get(k)) for k, v in self.spec.to_dict().items() if items.spec.get(k) != v}
            raise ValueError(f"{items.source}: the scene data set's SceneSpec differs from the policy's "
                             f"({{key: (policy, data set)}}: {diff}); use data written with the base's spec")
        return items

    # ------------------------------------------------------------------ rollout
    @torch.no_grad()
    def rollout(self, prompts: torch.Tensor, sample_ids: torch.Tensor, *, step: int, seed: int, plan,
                explorer_config=None, items=None, group_ids: torch.Tensor | None = None) -> Rollout:
        """Sample the joint future of each prompted scene; store the chain and the ego's per-step log-probs."""
        items = self._check_items(items)
        self.engine_model.eval()
        contexts = items.contexts.to(self.device).float()
        chain, log_probs = self._sample(contexts, sample_ids, seed=seed, step=step,
                                        init=(Purpose.INIT_NOISE, ()), steps=(Purpose.STEP_NOISE, ()))
        states = self.states_from_actions(chain[:, -1], contexts)
        tensors = {"prompts": prompts.to(self.device), "sample_ids": sample_ids.to(self.device), "chain": chain,
                   "log_probs": log_probs, "contexts": contexts, "states": states,
                   "future": items.future.to(self.device).float(), "future_mask": items.future_mask.to(self.device)}
        return Rollout(tensors, {"kind": "ddpm", "train_steps": list(plan.train_steps), "step": step, "seed": seed})

    def reward_inputs(self, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        """(generated future states [B, A, F, 4], packed contexts [B, C]): what scene evaluators score."""
        return rollout["states"].cpu(), rollout["contexts"].cpu()

    # ---------------------------------------------------------------- re-scoring
    def score(self, batch: Rollout, *, reference: bool = False) -> dict[str, torch.Tensor]:
        """Replay the stored transitions of the trained steps through ``ddpm_step``: the ego's log-probs [B, W]
        (with grad), x0_hat [B, W, A, F, 2] (normalised actions, for the regulariser), means, stds [W]."""
        ctx = self.reference() if reference else contextlib.nullcontext(self.engine_model)
        steps = batch.meta["train_steps"]
        K, chain, contexts = self.schedule.K, batch["chain"], batch["contexts"]
        lps, x0s, means = [], [], []
        with ctx as model:
            if not reference:
                model.train()
            for real, rows in self._chunks(len(chain)):
                enc = self.encode(contexts[rows])
                lp_c, x0_c, mean_c = [], [], []
                for j in steps:
                    _, mean, std, x0_hat = ddpm_step(model, chain[rows, j], K - j, enc, schedule=self.schedule)
                    lp_c.append(step_log_prob(chain[rows, j + 1], mean, std)[:, 0])  # ego row only
                    x0_c.append(x0_hat)
                    mean_c.append(mean)
                n = len(real)
                lps.append(torch.stack(lp_c, 1)[:n])
                x0s.append(torch.stack(x0_c, 1)[:n])
                means.append(torch.stack(mean_c, 1)[:n])
        stds = torch.tensor([self.schedule.std(K - j) for j in steps], device=chain.device)
        return {"log_probs": torch.cat(lps), "x0_hat": torch.cat(x0s), "means": torch.cat(means), "stds": stds}

    # --------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(self, contexts: torch.Tensor, sample_ids: torch.Tensor, *, seed: int,
                 purpose: Purpose = Purpose.EVAL, step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Scenes for planning / preference labelling: (states [B, A, F, 4], ego plan [B, F, 4]).

        Keyed by (seed, purpose, step, sample id): the same call gives the same scenes in any batch split."""
        self.engine_model.eval()
        contexts = contexts.to(self.device).float()
        if contexts.dim() != 2 or contexts.shape[1] != self.spec.context_dim:
            raise ValueError(f"generate: expected packed contexts [B, {self.spec.context_dim}] for this SceneSpec, "
                             f"got {list(contexts.shape)}")
        chain, _ = self._sample(contexts, torch.as_tensor(sample_ids), seed=seed, step=step,
                                init=(purpose, (0,)), steps=(purpose, (1,)))
        states = self.states_from_actions(chain[:, -1], contexts)
        return states, states[:, 0]
