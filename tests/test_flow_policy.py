"""The must-holds of the flow policy: exact on-policy ratio, ODE equivalence, keyed noise."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from genrl.explorers.sde import ExplorationPlan, sde_step
from genrl.rng import Purpose, keyed_permutation
from tests.helpers import make_trainer


def _first_ratio(trainer) -> torch.Tensor:
    """Ratios of a shuffled minibatch of step 0's rollout, before any update."""
    with trainer._autocast():
        batch = trainer.producer.get(0)
        perm = keyed_permutation(len(batch), 0, Purpose.SHUFFLE, 0, 0)
        ratios = []
        for idx in perm.split(trainer.recipe.trainer.micro_batch_size):
            mb = batch.select(idx)
            new = trainer.policy.score(mb)["log_probs"]
            ratios.append(torch.exp(new - mb["log_probs"][:, mb.meta["train_steps"]]))
    return torch.cat(ratios)


@pytest.mark.parametrize(
    "overrides",
    [
        (),
        ("mixed_precision=bf16",),
        ("trainer.ema_decay=0.5",),
        ("policy.lora={rank: 4, alpha: 8}",),
        ("mixed_precision=bf16", "policy.lora={rank: 4, alpha: 8}", "trainer.micro_batch_size=3"),
        ("explorer.noise_rule=cps", "explorer.window_size=null"),
        ("explorer.noise_rule=dance_grpo", "explorer.noise_level=0.3"),
        ("policy.guidance_scale=2.5",),
    ],
    ids=["fp32", "bf16", "ema", "lora", "bf16-lora-odd-micro", "cps", "dance", "cfg"],
)
def test_ratio_is_exactly_one_before_first_update(tmp_path, overrides):
    trainer = make_trainer(tmp_path, *overrides)
    ratio = _first_ratio(trainer)
    assert ratio.numel() > 0
    assert torch.equal(ratio, torch.ones_like(ratio)), (ratio.min(), ratio.max())


def test_noise_level_zero_reproduces_the_ode_sampler_bit_for_bit(tmp_path):
    trainer = make_trainer(tmp_path)
    policy = trainer.policy
    explorer_config = dataclasses.replace(trainer.explorer.config, noise_level=0.0)
    prompts = torch.tensor([0, 3, 7, 9, 1])
    ids = torch.arange(5) + 100
    plan = ExplorationPlan(stochastic=[False] * policy.config.num_steps, train_steps=[0])
    sde = policy.rollout(prompts, ids, step=4, seed=0, plan=plan, explorer_config=explorer_config)
    # Same keyed initial noise, diffusers' FlowMatchEulerDiscreteScheduler.step as the ODE.
    ode = policy.sample_ode(prompts, ids, seed=0, purpose=Purpose.INIT_NOISE, step=4)
    assert torch.equal(sde["images"], ode)
    # and the stochastic plan with noise level 0 is the same deterministic path
    plan2 = ExplorationPlan(stochastic=[True] * policy.config.num_steps, train_steps=[0])
    sde2 = policy.rollout(prompts, ids, step=4, seed=0, plan=plan2, explorer_config=explorer_config)
    assert torch.equal(sde2["images"], ode)


def test_samples_do_not_depend_on_batch_composition(tmp_path):
    trainer = make_trainer(tmp_path)
    policy, cfg = trainer.policy, trainer.explorer.config
    plan = trainer.explorer.plan(0, policy.config.num_steps)
    prompts = torch.arange(12) % 10
    ids = torch.arange(12)
    full = policy.rollout(prompts, ids, step=0, seed=0, plan=plan, explorer_config=cfg)
    part = policy.rollout(prompts[5:9], ids[5:9], step=0, seed=0, plan=plan, explorer_config=cfg)
    assert torch.equal(full["latents"][5:9], part["latents"])
    assert torch.equal(full["log_probs"][5:9], part["log_probs"])


@pytest.mark.parametrize("rule", ["flow_grpo", "dance_grpo", "cps"])
def test_sde_step_scores_what_it_sampled(rule):
    g = torch.Generator().manual_seed(0)
    x, v, noise = (torch.randn(6, 1, 4, 4, generator=g) for _ in range(3))
    sigma, sigma_next = torch.full((6,), 0.6), torch.full((6,), 0.5)
    x1, lp, mean, std = sde_step(x, v, sigma, sigma_next, sigma_max=0.9, rule=rule, noise_level=0.7, noise=noise)
    _, lp2, _, _ = sde_step(x, v, sigma, sigma_next, sigma_max=0.9, rule=rule, noise_level=0.7, x_next=x1)
    assert torch.equal(lp, lp2)
    # the log-density is the Gaussian's: at the mean it is the maximum
    _, lp_mean, _, _ = sde_step(x, v, sigma, sigma_next, sigma_max=0.9, rule=rule, noise_level=0.7, x_next=mean)
    assert (lp_mean > lp).all()
    expected = -0.5 * noise.pow(2).flatten(1).mean(1) - torch.log(std).mean() - 0.5 * torch.log(torch.tensor(2 * torch.pi))
    assert torch.allclose(lp, expected, atol=1e-5)


def test_flow_grpo_std_follows_the_paper():
    """std_t = a sqrt(sigma / (1 - sigma)); the transition std is std_t sqrt(|dt|)."""
    x = v = torch.zeros(1, 1, 2, 2)
    _, _, _, std = sde_step(x, v, torch.tensor([0.6]), torch.tensor([0.5]), sigma_max=0.9, rule="flow_grpo",
                            noise_level=0.7)
    assert torch.allclose(std.flatten(), torch.tensor([0.7 * (0.6 / 0.4) ** 0.5 * 0.1**0.5]))
