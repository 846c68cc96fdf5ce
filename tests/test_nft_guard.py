"""DiffusionNFT (forward-process objective) and GRPO-Guard (Flow-GRPO option): losses, identities, smoke runs."""

from __future__ import annotations

import json
import math

import pytest
import torch

from genrl.objectives.diffusion_nft import DiffusionNFT, nft_loss
from genrl.objectives.flow_grpo import guard_log_ratio, guard_step_weights
from genrl.trainer.checkpoint import latest_checkpoint, load_tensors
from genrl.trainer.rollout import Rollout
from tests.helpers import make_trainer


class _LinearPolicy:
    """A fake flow policy: v_theta(x, t, label) = W x + t c, one trainable weight matrix on flat 2-d samples."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.net = torch.nn.Linear(2, 2)
        self.engine_model = self.net
        self.sigmas = torch.tensor([1.0, 0.5, 0.0])

        class C:
            num_steps = 2

        self.config = C()

    def trainable_parameters(self):
        return dict(self.net.named_parameters())

    def velocity(self, model, x, sigma, cond):
        return model(x) + sigma.view(-1, 1)

    def conditioning(self, batch):
        return {"labels": batch["prompts"]}


def _batch(x0: torch.Tensor, adv: torch.Tensor) -> Rollout:
    n = len(x0)
    latents = torch.stack([torch.randn_like(x0), torch.randn_like(x0), x0], 1)
    return Rollout({"latents": latents, "prompts": torch.zeros(n, dtype=torch.long),
                    "sample_ids": torch.arange(n), "advantages": adv}, {"step": 0, "seed": 0})


def test_nft_loss_matches_a_hand_computed_value():
    # One row, 1-d: v_theta = 2, v_old = 1, beta = 0.5 -> v+ = 1.5, v- = 0.5; target v = eps - x0 = 1 - 0 = 1.
    vt, vo = torch.tensor([[2.0]]), torch.tensor([[1.0]])
    x0, eps, t, r = torch.tensor([[0.0]]), torch.tensor([[1.0]]), torch.tensor([0.5]), torch.tensor([0.8])
    x_t = (1 - t.view(-1, 1)) * x0 + t.view(-1, 1) * eps  # 0.5
    plain = nft_loss(vt, vo, x_t, x0, eps - x0, t, r, beta=0.5, weighting="none")
    assert plain.item() == pytest.approx(0.8 * 0.5**2 + 0.2 * 0.5**2)  # 0.25
    # adaptive: x0_hat(v+) = 0.5 - 0.5 * 1.5 = -0.25, x0_hat(v-) = 0.25 -> err^2/|err| = 0.25 for both
    adaptive = nft_loss(vt, vo, x_t, x0, eps - x0, t, r, beta=0.5, weighting="adaptive")
    assert adaptive.item() == pytest.approx(0.8 * 0.25 + 0.2 * 0.25)


def test_nft_objective_on_a_tiny_batch_matches_hand_computation():
    policy = _LinearPolicy()
    obj = DiffusionNFT(DiffusionNFT.Config(beta=0.5, adv_clip=2.0, weighting="none"))
    x0 = torch.tensor([[1.0, -1.0], [0.5, 2.0]])
    adv = torch.tensor([1.0, -4.0])  # r = 0.75, 0
    out = obj(policy, _batch(x0, adv))
    # Before any update the old policy is the current one: v+ = v- = v_theta, so the loss is plain FM.
    obj2 = DiffusionNFT(obj.config)
    row, t, eps = obj2._draw(policy, _batch(x0, adv), x0)
    x_t = (1 - t.view(-1, 1)) * x0[row] + t.view(-1, 1) * eps
    with torch.no_grad():
        v = policy.velocity(policy.net, x_t, t, None)
    expected = (2.0 / 0.5) * (v - (eps - x0[row])).pow(2).mean(1).mean()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert out.metrics["nft/r_mean"] == pytest.approx(0.375)
    assert out.step_ratios == {}


def test_with_r_one_half_the_nft_gradient_is_flow_matching_onto_the_old_velocity():
    """Identity: with r = 1/2, d[1/2|v+ - v|^2 + 1/2|v- - v|^2] = beta (v+ - v-) dv_theta = beta^2 d|v_theta - v_old|^2.

    The target v cancels: an uninformative reward is plain flow matching with the old policy as its target
    (the paper's optimum v* = v_old + (2/beta) Delta has Delta = 0 when pi+ = pi_old).
    """
    torch.manual_seed(1)
    beta = 0.3
    w = torch.randn(4, 4, requires_grad=True)
    x_t, x0, target = torch.randn(6, 4), torch.randn(6, 4), torch.randn(6, 4)
    t, r = torch.rand(6), torch.full((6,), 0.5)
    v_old = torch.randn(6, 4)
    nft = nft_loss(x_t @ w, v_old, x_t, x0, target, t, r, beta=beta, weighting="none").sum()
    (g_nft,) = torch.autograd.grad(nft, w)
    fm = (beta**2 * ((x_t @ w) - v_old).pow(2).mean(1)).sum()
    (g_fm,) = torch.autograd.grad(fm, w)
    assert torch.allclose(g_nft, g_fm, atol=1e-6)
    # ... and it does not depend on the sample's target at all
    nft2 = nft_loss(x_t @ w, v_old, x_t, x0, torch.randn(6, 4), t, r, beta=beta, weighting="none").sum()
    (g2,) = torch.autograd.grad(nft2, w)
    assert torch.allclose(g_nft, g2, atol=1e-6)


def test_guard_ratio_normalisation_on_a_planted_distribution():
    """x' = mu_old + s_t z with step-dependent s_t and drift: raw log-ratios have mean -b_t and scale ~ 1/s_t;
    RatioNorm's have per-step mean 0 and the same scale rms(mu_theta - mu_old)/sqrt(D) at every step."""
    torch.manual_seed(0)
    B, W, D = 4000, 3, 16
    stds = torch.tensor([0.05, 0.2, 0.8])
    mu_old = torch.randn(B, W, D)
    delta = 0.03 * torch.randn(1, 1, D).expand(B, W, D)  # the same planted drift at every step
    mu_new = mu_old + delta
    x = mu_old + stds.view(1, W, 1) * torch.randn(B, W, D)

    def lp(mu):
        s = stds.view(1, W, 1)
        return (-((x - mu) ** 2) / (2 * s**2) - torch.log(s) - 0.5 * math.log(2 * math.pi)).mean(2)

    raw = lp(mu_new) - lp(mu_old)
    norm = guard_log_ratio(lp(mu_new), lp(mu_old), mu_new, mu_old, stds)
    scale = delta[0, 0].pow(2).mean().sqrt() / math.sqrt(D)
    assert raw.mean(0)[0] < -0.1  # the left shift the paper reports, strongest at small s_t
    for j in range(W):
        assert abs(norm[:, j].mean()) < 4 * scale / math.sqrt(B) + 1e-6  # mean 0
        assert norm[:, j].std() / scale == pytest.approx(1.0, abs=0.05)  # unit scale after RatioNorm
    assert raw.std(0)[0] / raw.std(0)[2] == pytest.approx(16.0, rel=0.1)  # raw scale ~ 1/s_t
    # uniform schedule -> weights 1; otherwise proportional to 1/|dt|
    assert torch.allclose(guard_step_weights(torch.linspace(1, 0, 5), [0, 2]), torch.ones(1, 2))
    w = guard_step_weights(torch.tensor([1.0, 0.9, 0.5, 0.0]), [0, 1, 2])
    assert torch.allclose(w * torch.tensor([0.1, 0.4, 0.5]), torch.full((1, 3), 1 / 3))


def _losses(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _trains(tmp_path, *overrides):
    trainer = make_trainer(tmp_path, "trainer.steps=2", "trainer.checkpoint_every=0", "trainer.inner_epochs=1",
                           *overrides)
    before = {k: v.detach().clone() for k, v in trainer.policy.trainable_parameters().items()}
    trainer.train()
    after = load_tensors(latest_checkpoint(tmp_path) / "policy.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    rows = _losses(tmp_path)
    assert len(rows) == 2 and all(math.isfinite(r["policy_loss"]) and math.isfinite(r["grad_norm"]) for r in rows)
    return rows


def test_diffusion_nft_trains_through_the_unchanged_loop_with_an_ode_sampler(tmp_path):
    rows = _trains(tmp_path, "objective={name: diffusion_nft, timestep_fraction: 0.5, kl_beta: 1.0e-4}",
                   "explorer.noise_level=0")
    assert "nft/r_mean" in rows[0] and "kl" in rows[0]


def test_flow_grpo_with_guard_trains_through_the_unchanged_loop(tmp_path):
    rows = _trains(tmp_path, "objective.guard=true")
    assert "ratio/step_00/mean" in rows[0] or any(k.startswith("ratio/") for k in rows[0])


def test_nft_soft_old_policy_is_checkpointed_and_a_resumed_run_ends_identical(tmp_path):
    """old_policy: ema keeps state across steps; it goes into objective.safetensors, so resume is exact."""
    from tests.helpers import reset_accelerate

    overrides = ("trainer.steps=3", "trainer.checkpoint_every=0", "trainer.inner_epochs=1", "explorer.noise_level=0",
                 "objective={name: diffusion_nft, timestep_fraction: 0.5, old_policy: ema, old_decay_rate: 0.2}")
    make_trainer(tmp_path / "full", *overrides).train()
    reset_accelerate()
    assert make_trainer(tmp_path / "part", *overrides).train(until_step=2)["stopped_at"] == 2
    saved = load_tensors(latest_checkpoint(tmp_path / "part") / "objective.safetensors")
    assert int(saved["steps_seen"]) == 2 and any(k.startswith("old.") for k in saved)
    reset_accelerate()
    make_trainer(tmp_path / "part", *overrides).train()
    a = load_tensors(latest_checkpoint(tmp_path / "full") / "policy.safetensors")
    b = load_tensors(latest_checkpoint(tmp_path / "part") / "policy.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = load_tensors(latest_checkpoint(tmp_path / "full") / "objective.safetensors")
    d = load_tensors(latest_checkpoint(tmp_path / "part") / "objective.safetensors")
    assert c.keys() == d.keys() and all(torch.equal(c[k], d[k]) for k in c)
