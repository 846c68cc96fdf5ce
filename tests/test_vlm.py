"""VLM policy (tiny Qwen2.5-VL), GRPO / VOGUE losses, the noisy-image explorers, visual arithmetic data and
answer rewards: hand-computed numbers, invariants (sign of the shaped advantage, on-policy ratio 1,
resume == uninterrupted run) and the errors that must be raised."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from genrl.config.load import load_recipe
from genrl.config.validate import RecipeError
from genrl.data.visual_arithmetic import HEIGHT, WIDTH, VisualArithmetic, noisy_image
from genrl.explorers.vlm import NoisyImageExplorer, SamplingExplorer, VLMPlan, VogueExplorer, linear_schedule
from genrl.objectives.grpo import GRPO, Vogue, aggregate, clipped_surrogate, k3_kl, vogue_shaped_advantage
from genrl.policies.vlm import ImageTokenMismatch, VLMPolicy, symmetric_kl
from genrl.prompts.visual_arithmetic import VisualArithmeticPrompts
from genrl.recipe import TrainRecipe
from genrl.registry import REWARDS
from genrl.rewards.answers import AnswerAccuracy, AnswerFormat
from genrl.rewards.base import RewardConfig
from genrl.trainer.checkpoint import latest_checkpoint, load_tensors
from genrl.trainer.rollout import Rollout
from tests.helpers import ROOT, reset_accelerate

SMOKE_VLM = ROOT / "recipes" / "smoke" / "vlm_grpo_tiny.yaml"
SFT_TINY = ROOT / "recipes" / "smoke" / "vlm_sft_tiny.yaml"

if "test_vlm_length" not in REWARDS:

    @REWARDS.register("test_vlm_length")
    class LengthUnlessMultipleOf3:
        """Response length (characters), but 0 for questions whose index is a multiple of 3: their groups
        always have zero reward std, the others' (sampled from a tiny random-ish model) do not."""

        @dataclass
        class Config(RewardConfig):
            pass

        def __init__(self, config, **_):
            self.config = config
            self.__name__ = "test_vlm_length"

        def __call__(self, responses, questions):
            return torch.tensor([0.0 if q.index % 3 == 0 else float(len(r)) for r, q in zip(responses, questions)])


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """The tiny SFT model of the smoke recipes, built once (cached under the session's GENRL_CACHE)."""
    from genrl.pretrain.vlm_sft import vlm_base_from_recipe

    with pytest.MonkeyPatch.context() as mp:
        if "GENRL_CACHE" not in os.environ or os.environ.get("GENRL_TEST_PRIVATE_CACHE"):
            mp.setenv("GENRL_CACHE", str(tmp_path_factory.getbasetemp() / "genrl_cache"))
        return vlm_base_from_recipe(str(SFT_TINY))


@pytest.fixture(scope="module")
def policy(tiny_base):
    return VLMPolicy(VLMPolicy.Config(base_checkpoint=str(tiny_base), max_prompt_tokens=128, max_new_tokens=12,
                                      forward_chunk=4), base_dir=tiny_base)


def _questions(n: int, step: int = 0):
    src = VisualArithmeticPrompts(VisualArithmeticPrompts.Config(size=64), seed=0)
    return src.items(src.sample(step, n))


def _trainer(run_dir, *overrides):
    from genrl.trainer.loop import Trainer

    recipe, _ = load_recipe(SMOKE_VLM, TrainRecipe, ["rewards=[{name: test_vlm_length}]", *overrides])
    return Trainer(recipe, recipe_file=str(SMOKE_VLM), run_dir=str(run_dir))


# ----------------------------------------------------------------------------- 1. symmetric KL
def test_symmetric_kl_hand_computed_and_through_the_policy(policy):
    # P = [0.5, 0.5], Q = [0.9, 0.1]:
    # KL(P||Q) = 0.5 ln(0.5/0.9) + 0.5 ln(0.5/0.1) = 0.5108256...; KL(Q||P) = 0.9 ln 1.8 + 0.1 ln 0.2 = 0.3680642...
    p, q = torch.tensor([0.5, 0.5], dtype=torch.float64), torch.tensor([0.9, 0.1], dtype=torch.float64)
    by_hand = (0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)) + (0.9 * math.log(0.9 / 0.5)
                                                                           + 0.1 * math.log(0.1 / 0.5))
    assert by_hand == pytest.approx(0.8788898309344879, abs=1e-12)
    assert symmetric_kl(p.log(), q.log()).item() == pytest.approx(0.8788898309344879, abs=1e-12)
    assert symmetric_kl(q.log(), p.log()).item() == pytest.approx(0.8788898309344879, abs=1e-12)  # symmetric
    assert symmetric_kl(p.log(), p.log()).item() == 0.0

    # Through the policy: the same response teacher-forced with the same pixels -> D = 0 exactly; with the
    # noisy image -> D > 0 on every response token.
    items = _questions(4)
    system = items[0].system_prompt
    enc = policy.encode_prompts(items, [it.image for it in items], system=system)
    response = torch.randint(7, 300, (4, policy.config.max_new_tokens), generator=torch.Generator().manual_seed(0))
    t = {"input_ids": torch.cat([enc["prompt_ids"], response], 1),
         "attention_mask": torch.cat([enc["prompt_mask"], torch.ones_like(response)], 1),
         "pixel_values": enc["pixel_values"], "image_grid_thw": enc["image_grid_thw"]}
    with torch.no_grad():
        same = policy.token_stats(policy.model, t, compare_pixels=enc["pixel_values"].clone())
        noisy_pixels = policy.encode_prompts(
            items, [noisy_image(it.image, 0.4, 0, 7, i) for i, it in enumerate(items)], system=system)["pixel_values"]
        noisy = policy.token_stats(policy.model, t, compare_pixels=noisy_pixels)
    assert same["divergence"].shape == (4, policy.config.max_new_tokens)
    assert same["divergence"].abs().max().item() == 0.0
    assert torch.equal(same["log_probs"], noisy["log_probs"])  # the scored sequence is the raw-image one
    assert (noisy["divergence"] > 0).all()


# ----------------------------------------------------------------------------- 2. VOGUE caps
@pytest.mark.parametrize("b_v,b_e", [(2.0, 2.0), (1.5, 3.0), (2.0, 4.0)])
def test_vogue_caps_never_flip_the_sign_of_the_advantage(b_v, b_e):
    g = torch.Generator().manual_seed(0)
    n, T = 4000, 8
    scale = torch.logspace(-20, 2, n).unsqueeze(1)  # tiny to large |A|, both signs
    adv = torch.where(torch.rand(n, 1, generator=g) < 0.5, -1.0, 1.0) * scale
    adv[::97] = 0.0
    d = torch.rand(n, T, generator=g) * 10.0 ** torch.randint(-3, 7, (n, T), generator=g)
    h = torch.rand(n, T, generator=g) * 10.0 ** torch.randint(-3, 7, (n, T), generator=g)
    shaped = vogue_shaped_advantage(adv, d, h, a_v=1.0, b_v=b_v, a_e=0.4, b_e=b_e)
    a = adv.expand_as(shaped)
    budget = 1 / b_v + 1 / b_e
    assert (shaped >= a).all()  # both bonuses are >= 0
    assert ((shaped - a).abs() <= a.abs() * budget * (1 + 1e-6)).all()
    assert (shaped[a == 0] == 0).all()
    flipped = (a < 0) & (shaped > 0)
    assert not flipped.any(), (f"{int(flipped.sum())} negative advantages became positive, e.g. "
                               f"A = {a[flipped][0].item():.6g} -> A' = {shaped[flipped][0].item():.6g}")
    assert not ((a > 0) & (shaped <= 0)).any()
    if budget < 1:  # strictly inside the allowed caps the sign is kept exactly
        assert torch.equal(torch.sign(shaped), torch.sign(a))
    # saturated bonuses (huge D and H) reach the cap exactly: A' = A + |A| (1/b_v + 1/b_e)
    big = torch.full((3, 2), 1e9)
    sat = vogue_shaped_advantage(torch.tensor([[-2.0], [0.0], [4.0]]), big, big, a_v=1.0, b_v=b_v, a_e=0.4, b_e=b_e)
    assert sat[:, 0].tolist() == pytest.approx([-2.0 + 2.0 * budget, 0.0, 4.0 + 4.0 * budget], abs=1e-6)


def test_vogue_caps_that_could_flip_a_sign_are_refused():
    with pytest.raises(ValueError, match=r"b_v: the caps could flip an advantage's sign: 1/b_v \+ 1/b_e = 1\.167 > 1"):
        Vogue.Config(b_v=1.5, b_e=2.0).validate()
    Vogue.Config(b_v=2.0, b_e=2.0).validate()  # the paper's caps: exactly 1, allowed
    with pytest.raises(RecipeError, match=r"explorer: objective 'vogue' needs an explorer with uncertainty: true"):
        load_recipe(SMOKE_VLM, TrainRecipe, ["explorer={name: sampling}"])
    with pytest.raises(RecipeError, match="uncertainty: true"):
        load_recipe(SMOKE_VLM, TrainRecipe, ["explorer={name: noisy_image}"])  # noisy branch, but no D_t
    load_recipe(SMOKE_VLM, TrainRecipe, ["explorer={name: noisy_image, uncertainty: true}"])


# ----------------------------------------------------------------------------- 3. branch schedule
def test_branch_probability_and_noise_anneal_linearly_and_branches_are_per_group():
    vogue = VogueExplorer(VogueExplorer.Config(p_start=0.5, p_end=0.1, anneal_steps=100), seed=0)
    assert vogue.plan(0).noisy_prob == pytest.approx(0.5)
    assert vogue.plan(50).noisy_prob == pytest.approx(0.3)
    assert vogue.plan(100).noisy_prob == pytest.approx(0.1)
    assert vogue.plan(500).noisy_prob == pytest.approx(0.1)
    assert vogue.plan(0).sigma == vogue.plan(500).sigma == pytest.approx(0.4)  # VOGUE keeps T(I) fixed
    assert vogue.plan(0).uncertainty and vogue.plan(0).unit == "group" and vogue.plan(0).update_image == "branch"
    noisy = NoisyImageExplorer(NoisyImageExplorer.Config(anneal_steps=100), seed=0)
    assert [noisy.plan(s).sigma for s in (0, 50, 100, 200)] == pytest.approx([0.4, 0.2, 0.0, 0.0])
    assert [noisy.plan(s).noisy_prob for s in (0, 100)] == pytest.approx([0.5, 0.5])
    assert noisy.plan(0).update_image == "raw" and not noisy.plan(0).uncertainty
    assert SamplingExplorer(SamplingExplorer.Config(), seed=0).plan(0).noisy_prob == 0.0
    assert linear_schedule(1.0, 3.0, 5, 0) == 3.0

    # The share of noisy groups at step 0 is p_start; at step 100 p_end.
    n = 2000
    ids = torch.arange(n)
    share0 = vogue.plan(0).noisy_rows(0, ids, ids).float().mean().item()
    share100 = vogue.plan(100).noisy_rows(100, ids, ids).float().mean().item()
    assert abs(share0 - 0.5) < 0.05 and abs(share100 - 0.1) < 0.03
    # Per-group mode: the 4 rows of a group share their branch; both branches occur.
    groups, samples = torch.arange(200).repeat_interleave(4), torch.arange(800)
    rows = vogue.plan(0).noisy_rows(0, groups, samples).view(200, 4)
    assert (rows.all(1) | ~rows.any(1)).all()
    assert 0 < rows[:, 0].sum() < 200
    # ... while NoisyRollout's per-sample mode mixes branches inside groups; keyed: the same call, the same draw.
    mixed = noisy.plan(0).noisy_rows(0, groups, samples).view(200, 4)
    assert (mixed.any(1) & ~mixed.all(1)).any()
    assert torch.equal(mixed, noisy.plan(0).noisy_rows(0, groups, samples).view(200, 4))
    assert not vogue.plan(0).noisy_rows(1, groups, samples).view(200, 4).equal(rows)  # re-drawn every step


# ----------------------------------------------------------------------------- 4. keyed noisy image
def test_noisy_image_is_keyed_clipped_and_identity_at_sigma_zero():
    image = VisualArithmetic("train", 8)[3].image
    a = noisy_image(image, 0.4, 0, 5, 2)
    assert a.dtype == np.uint8 and a.shape == image.shape == (HEIGHT, WIDTH)
    assert np.array_equal(a, noisy_image(image, 0.4, 0, 5, 2))  # bit-identical
    assert not np.array_equal(a, noisy_image(image, 0.4, 1, 5, 2))  # another seed
    assert not np.array_equal(a, noisy_image(image, 0.4, 0, 5, 3))  # another group
    assert not np.array_equal(a, image)
    assert a.min() == 0 and a.max() == 255  # clipped into the uint8 range, both ends reached
    # Images are scaled to [0, 1]: on black pixels the noise is max(0, 0.4 z), mean 0.4 / sqrt(2 pi) = 0.1596.
    black = image == 0
    assert a[black].astype(np.float64).mean() / 255 == pytest.approx(0.4 / math.sqrt(2 * math.pi), rel=0.05)
    assert np.array_equal(noisy_image(image, 0.0, 0, 5, 2), image)
    # Through the plan: keyed by (seed, step, group).
    plan = VLMPlan(1.0, 1.0, noisy_prob=0.5, sigma=0.4, seed=3)
    assert np.array_equal(plan.noisy_image(image, 4, 9), plan.noisy_image(image, 4, 9))
    assert not np.array_equal(plan.noisy_image(image, 4, 9), plan.noisy_image(image, 5, 9))


# ----------------------------------------------------------------------------- 5. on-policy ratio
@pytest.mark.parametrize("extra", [[], ["trainer.micro_batch_size=8", "policy.forward_chunk=3"],
                                   ["explorer={name: noisy_image, uncertainty: true, p_start: 0.5}"],
                                   ["policy.old_log_probs=update"], ["policy.generate_chunk=16"]],
                         ids=["micro_eq_chunk", "micro8_chunk3", "noisy_rows_update_on_raw_image",
                              "old_log_probs_from_the_update_forward", "one_generate_call_for_the_batch"])
def test_first_update_is_on_policy_ratio_exactly_one(tmp_path, extra):
    trainer = _trainer(tmp_path, "trainer.steps=1", "trainer.minibatch_size=16", "trainer.inner_epochs=1",
                       "objective.kl_beta=0.01", *extra)
    trainer.train()
    m = trainer.history[-1]
    assert m["ratio/mean"] == 1.0
    assert m["clip_frac"] == 0.0
    assert m["approx_kl"] == 0.0
    assert m["kl"] == 0.0
    assert m["adv/abs_max"] > 0 and m["grad_norm"] > 0  # a real update with a signal, not an all-zero batch
    assert 0 < m["vogue/noisy_share"] <= 1  # some rows were generated from the noisy image


# ----------------------------------------------------------------------------- 6. image tokens
def test_image_token_mismatch_is_caught_before_the_forward(policy, tiny_base):
    items = _questions(4)
    system = items[0].system_prompt
    short = VLMPolicy(VLMPolicy.Config(base_checkpoint=str(tiny_base), max_prompt_tokens=64), base_dir=tiny_base)
    with pytest.raises(ValueError, match=rf"question {items[0].index}: its prompt has \d+ tokens, "
                                         r"above policy.max_prompt_tokens=64; raise it"):
        short.encode_prompts(items, [it.image for it in items], system=system)

    enc = policy.encode_prompts(items, [it.image for it in items], system=system)
    want = int(enc["image_grid_thw"][0].prod() // policy.merge**2)
    assert (enc["prompt_ids"] == policy.image_token_id).sum(1).tolist() == [want] * 4
    R = policy.config.max_new_tokens
    response = torch.randint(7, 300, (4, R), generator=torch.Generator().manual_seed(1))
    sample_ids = torch.tensor([40, 41, 42, 43])

    def seq(prompt_ids, resp):
        return {"input_ids": torch.cat([prompt_ids, resp], 1),
                "attention_mask": torch.cat([enc["prompt_mask"], torch.ones_like(resp)], 1),
                "pixel_values": enc["pixel_values"], "image_grid_thw": enc["image_grid_thw"], "sample_ids": sample_ids}

    with torch.no_grad():
        policy.token_stats(policy.model, seq(enc["prompt_ids"], response))  # consistent: no error
        bad = response.clone()
        bad[2, 5] = policy.image_token_id  # a sampled <|image_pad|> in the response of sample 42
        with pytest.raises(ImageTokenMismatch, match=rf"sample 42: {want + 1} image tokens in the prompt but its "
                                                     rf"image gives {want} features; the response .* holds image"):
            policy.token_stats(policy.model, seq(enc["prompt_ids"], bad))
        cut = enc["prompt_ids"].clone()
        cut[1, (cut[1] == policy.image_token_id).nonzero()[0]] = policy.pad_id  # one placeholder lost
        with pytest.raises(ImageTokenMismatch, match=rf"sample 41: {want - 1} image tokens .* the prompt was cut"):
            policy.token_stats(policy.model, seq(cut, response))


def test_generated_responses_never_contain_vision_tokens(policy):
    items = [it for it in _questions(8) for _ in range(8)]
    n = len(items)
    plan = VLMPlan(temperature=1.0, top_p=1.0)
    rollout = policy.rollout(torch.tensor([it.index for it in items]), torch.arange(n), step=0, seed=0, plan=plan,
                             explorer_config=None, items=items, group_ids=torch.arange(n) // 8)
    R = policy.config.max_new_tokens
    resp = rollout["input_ids"][:, -R:]
    assert not torch.isin(resp, torch.tensor(policy.vision_token_ids)).any()
    assert policy.image_token_id in policy.vision_token_ids
    # Control: without the suppression the same sampling does produce vision tokens (the check can fail).
    enc = policy.encode_prompts(items, [it.image for it in items], system=items[0].system_prompt)
    kept = policy.vision_token_ids
    try:
        policy.vision_token_ids = []
        free = policy._generate(policy.model, enc, 1.0, 1.0, 0, 0, torch.arange(n))
    finally:
        policy.vision_token_ids = kept
    assert torch.isin(free, torch.tensor(kept)).any()


# ----------------------------------------------------------------------------- 7. dynamic sampling
def test_dynamic_sampling_refills_zero_std_groups(tmp_path):
    trainer = _trainer(tmp_path, "trainer.steps=1", "trainer.dynamic_sampling=true",
                       "trainer.dynamic_sampling_rounds=4")
    sizes = []
    update = trainer._update

    def spy(step, batch):
        sizes.append(len(batch))
        return update(step, batch)

    trainer._update = spy
    trainer.train()
    m = trainer.history[-1]
    first = VisualArithmeticPrompts(VisualArithmeticPrompts.Config(size=64), seed=0).sample(0, 4)
    flat_share = float((first % 3 == 0).float().mean())  # those questions: reward 0 for the whole group
    assert 0 < flat_share < 1, first
    assert m["dynamic/zero_std_share_first_round"] == pytest.approx(flat_share)
    assert m["dynamic/rounds"] >= 2  # the first round was short of informative groups: refilled
    assert m["dynamic/filled_share"] == 1.0
    assert m["adv/zero_std_group_share"] == 0.0 < m["dynamic/zero_std_share_first_round"]
    assert sizes == [4 * 4]  # prompts_per_step x group_size
    assert math.isfinite(m["policy_loss"]) and m["grad_norm"] > 0


def test_dynamic_sampling_keeps_the_batch_when_every_group_is_uninformative(tmp_path):
    """The tiny model never writes the answer format: every group is all-zero; after the refill rounds the
    batch is topped up with dropped groups and the update still runs."""
    trainer = _trainer(tmp_path, "trainer.steps=1", "trainer.dynamic_sampling=true",
                       "trainer.dynamic_sampling_rounds=2", "rewards=[{name: answer_format}]")
    trainer.train()
    m = trainer.history[-1]
    assert m["dynamic/rounds"] == 2.0
    assert m["dynamic/zero_std_share_first_round"] == 1.0 == m["adv/zero_std_group_share"]
    assert m["dynamic/filled_share"] == 0.0
    assert m["response_tokens"] > 0 and math.isfinite(m["policy_loss"])


# ----------------------------------------------------------------------------- 8. GRPO loss parts
def test_aggregation_rules_match_hand_computation():
    per_token = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    # GRPO: mean(6/3, 5/1) = 3.5; DAPO: 11/4 = 2.75; Dr.GRPO: mean(6/4, 5/4) = 1.375
    assert aggregate(per_token, mask, "seq_mean_token_mean", 4).item() == pytest.approx(3.5)
    assert aggregate(per_token, mask, "token_mean", 4).item() == pytest.approx(2.75)
    assert aggregate(per_token, mask, "seq_mean_token_sum", 4).item() == pytest.approx(1.375)
    assert aggregate(per_token, torch.zeros_like(mask), "token_mean", 4).item() == 0.0


def test_clipped_surrogate_asymmetric_clip_and_k3():
    ratio = torch.tensor([[2.0, 2.0, 0.5, 0.5, 1.1, 1.1]])
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0, 2.0, -2.0]])
    old = torch.zeros_like(ratio)
    loss, rho = clipped_surrogate(ratio.log(), old, adv, 0.2, 0.28)
    assert torch.allclose(rho, ratio)
    # A>0, rho=2: -min(2, 1.28) = -1.28;  A<0, rho=2: -min(-2, -1.28) = 2 (no clip on the pessimistic side)
    # A>0, rho=.5: -min(.5, .8) = -0.5;   A<0, rho=.5: -min(-.5, -.8) = 0.8 (clipped at 1 - 0.2)
    # inside the range: -rho A
    assert loss[0].tolist() == pytest.approx([-1.28, 2.0, -0.5, 0.8, -2.2, 2.2], abs=1e-6)

    # k3: exp(r) - r - 1 with r = log pi_ref - log pi: pi_ref / pi = 2 -> 1 - ln 2
    assert k3_kl(torch.tensor(math.log(0.25)), torch.tensor(math.log(0.5))).item() == pytest.approx(1 - math.log(2))
    g = torch.Generator().manual_seed(0)
    lp, ref = torch.randn(50, 7, generator=g), torch.randn(50, 7, generator=g)
    assert (k3_kl(lp, ref) >= 0).all() and (k3_kl(lp, ref) > 0).any()
    assert torch.equal(k3_kl(lp, lp), torch.zeros_like(lp))


class _FixedScorePolicy:
    """score() returns fixed per-token log-probs (with a gradient) and entropies."""

    def __init__(self, log_probs: torch.Tensor) -> None:
        self.log_probs = log_probs.clone().requires_grad_(True)

    def score(self, batch, *, reference: bool = False):
        return {"log_probs": self.log_probs, "entropies": torch.ones_like(self.log_probs)}


def test_mask_truncated_takes_truncated_rows_out_of_the_loss():
    g = torch.Generator().manual_seed(0)
    B, T = 4, 5
    old = -torch.rand(B, T, generator=g)
    new = old + 0.05 * torch.randn(B, T, generator=g)
    mask = torch.ones(B, T)
    mask[1, 3:] = 0

    def batch(truncated):
        return Rollout({"response_mask": mask, "old_log_probs": old, "truncated": torch.tensor(truncated),
                        "advantages": torch.tensor([1.0, -0.5, 2.0, -1.5])})

    def run(mask_truncated, truncated):
        obj = GRPO(GRPO.Config(mask_truncated=mask_truncated))
        pol = _FixedScorePolicy(new)
        out = obj(pol, batch(truncated))
        out.loss.backward()
        return out, pol.log_probs.grad

    everything, _ = run(False, [True] * 4)
    assert everything.loss.item() != 0
    out, grad = run(True, [True] * 4)
    assert out.metrics["policy_loss"] == 0.0 and out.loss.item() == 0.0
    assert torch.equal(grad, torch.zeros_like(grad))
    # Some rows truncated: the loss is the mean over the others only, and they get no gradient.
    out, grad = run(True, [False, True, False, True])
    per_token, _ = clipped_surrogate(new, old, torch.tensor([1.0, -0.5, 2.0, -1.5]).unsqueeze(1).expand(B, T),
                                     0.2, 0.2)
    keep = [0, 2]
    expected = (per_token[keep] * mask[keep]).sum(1) / mask[keep].sum(1)
    assert out.loss.item() == pytest.approx(expected.sum().item() / B, rel=1e-6)  # GRPO's mean over all rows
    assert torch.equal(grad[[1, 3]], torch.zeros(2, T)) and (grad[keep] != 0).all()
    assert out.metrics["truncated_share"] == 0.5


# ----------------------------------------------------------------------------- 9. answer rewards
def test_answer_accuracy_and_format_rewards():
    questions = [SimpleNamespace(answer=a) for a in ("7", "7", "7", "-3", "12", "2")]
    responses = ["I see 3, 4. 3 + 4 = 7. <answer>7</answer>",  # right
                 "I see 3, 5. 3 + 5 = 8. <answer>8</answer>",  # wrong
                 "3 + 4 = 7",  # right number but no answer given
                 "5 - 8 = -3. <answer>-3</answer>",  # negative, right
                 "<answer>12</answer> <answer>13</answer>",  # the last tag counts: wrong; and two tags: bad format
                 "<answer>2</answer> and more text"]  # right, but not the last thing written
    acc = AnswerAccuracy(AnswerAccuracy.Config())(responses, questions)
    fmt = AnswerFormat(AnswerFormat.Config())(responses, questions)
    assert acc.tolist() == [1.0, 0.0, 0.0, 1.0, 0.0, 1.0]
    assert fmt.tolist() == [1.0, 1.0, 0.0, 1.0, 0.0, 0.0]
    assert AnswerFormat(AnswerFormat.Config())(["<answer> </answer>"], questions[:1]).tolist() == [0.0]
    # the SFT target of a real question is right and well formatted
    items = VisualArithmetic("train", 20).items(range(20))
    sols = [it.solution() for it in items]
    assert AnswerAccuracy(AnswerAccuracy.Config())(sols, items).tolist() == [1.0] * 20
    assert AnswerFormat(AnswerFormat.Config())(sols, items).tolist() == [1.0] * 20


# ----------------------------------------------------------------------------- 10. visual arithmetic
def test_visual_arithmetic_is_deterministic_consistent_and_splits_handwriting():
    a, b = VisualArithmetic("train", 50), VisualArithmetic("train", 50)
    held = VisualArithmetic("heldout", 50)
    kinds = set()
    for i in range(50):
        x, y = a[i], b[i]
        assert np.array_equal(x.image, y.image) and (x.question, x.answer, x.kind, x.digits) == (
            y.question, y.answer, y.kind, y.digits)
        assert x.image.shape == (56, 168) and x.image.dtype == np.uint8
        d = x.digits
        kinds.add(x.kind)
        if x.kind == "sum":
            assert len(d) in (2, 3) and int(x.answer) == sum(d)
        elif x.kind == "difference":
            assert len(d) == 2 and int(x.answer) == d[0] - d[1]
        elif x.kind == "larger":
            assert len(d) == 2 and d[0] != d[1] and int(x.answer) == max(d)
        else:
            t = int(re.fullmatch(r"How many digits are greater than (\d)\?", x.question).group(1))
            assert len(d) in (2, 3) and int(x.answer) == sum(v > t for v in d)
        # one digit per 56-pixel cell, never across a cell border
        inked = [bool(x.image[:, c * 56:(c + 1) * 56].any()) for c in range(3)]
        assert sum(inked) == len(d)
        assert not np.array_equal(x.image, held[i].image)
    assert kinds == {"sum", "difference", "larger", "count"}
    with pytest.raises(IndexError):
        a[50]
    # held-out questions are drawn in other handwriting: no glyph is in both pools
    train_glyphs = {g.numpy().tobytes() for g in a._glyphs}
    assert not any(g.numpy().tobytes() in train_glyphs for g in held._glyphs)
    assert VisualArithmetic("train", 50, seed=1)[0].image.tobytes() != a[0].image.tobytes()


# ----------------------------------------------------------------------------- 11. resume
def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(tmp_path):
    args = ("trainer.steps=2", "trainer.checkpoint_every=1")
    straight = _trainer(tmp_path / "straight", *args)
    init = {k: v.detach().clone() for k, v in straight.policy.trainable_parameters().items()}
    straight.train()
    reset_accelerate()
    first = _trainer(tmp_path / "resumed", *args)
    assert first.train(until_step=1)["stopped_at"] == 1
    reset_accelerate()
    second = _trainer(tmp_path / "resumed", *args)
    second.train()
    assert second.history[0]["step"] == 2 and len(second.history) == 1  # it resumed, it did not start over
    a = load_tensors(latest_checkpoint(tmp_path / "straight") / "policy.safetensors")
    b = load_tensors(latest_checkpoint(tmp_path / "resumed") / "policy.safetensors")
    assert a.keys() == b.keys() == init.keys()
    assert any(not torch.equal(a[k], init[k]) for k in a)  # the run trained
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert straight.history[-1]["policy_loss"] == second.history[-1]["policy_loss"]


def test_genrl_eval_scores_a_vlm_on_a_local_mathvista_folder(tmp_path, tiny_base):
    """`genrl eval CKPT --benchmark mathvista --data DIR` through the real CLI: the folder's questions are read,
    answered by the policy and scored; a folder without testmini.json is refused before any model loads."""
    import json

    from PIL import Image

    from tests.helpers import run_genrl

    data = tmp_path / "mathvista"
    (data / "images").mkdir(parents=True)
    rows = {}
    for i in range(3):
        Image.fromarray(VisualArithmetic("heldout", 4)[i].image).save(data / "images" / f"{i}.png")
        rows[str(i)] = {"question": "What is the sum of the digits?", "image": f"images/{i}.png", "choices": None,
                        "answer": VisualArithmetic("heldout", 4)[i].answer, "question_type": "free_form",
                        "answer_type": "integer", "precision": None, "metadata": {"task": "math word problem"},
                        "query": "What is the sum of the digits?"}
    (data / "testmini.json").write_text(json.dumps(rows))
    out = tmp_path / "eval"
    run_genrl("eval", tiny_base, "--benchmark", "mathvista", "--data", data, "--seeds", "1", "--out", out,
              cwd=tmp_path)
    metrics = json.loads((out / "metrics.json").read_text())
    text = json.dumps(metrics)
    assert "accuracy" in text and "format" in text
    assert (out / "report.html").is_file()
    bad = run_genrl("eval", tiny_base, "--benchmark", "mathvista", "--data", tmp_path, cwd=tmp_path, check=False)
    assert bad.returncode == 2 and "testmini.json" in bad.stderr + bad.stdout


def test_vogue_uncertainty_is_the_same_measured_at_rollout_or_in_the_update(tmp_path):
    """policy.old_log_probs=update moves D_t from the rollout's re-score into the update's forward (one forward
    saved); with one update per rollout both see the same weights, so the shaped loss must agree."""
    metrics = []
    for mode in ("rollout", "update"):
        reset_accelerate()
        trainer = _trainer(tmp_path / mode, "trainer.steps=1", "trainer.minibatch_size=16", "trainer.inner_epochs=1",
                           f"policy.old_log_probs={mode}", "explorer.p_start=1.0")
        trainer.train()
        metrics.append(trainer.history[-1])
    rollout, update = metrics
    assert rollout["vogue/uncertainty"] > 0
    assert update["vogue/uncertainty"] == pytest.approx(rollout["vogue/uncertainty"], rel=1e-5)
    assert update["vogue/bonus"] == pytest.approx(rollout["vogue/bonus"], rel=1e-5)
    assert update["policy_loss"] == pytest.approx(rollout["policy_loss"], rel=1e-5, abs=1e-7)


def test_components_of_another_model_family_are_refused_by_name():
    """An explorer or objective built for flow models in a VLM recipe (and vice versa) is a recipe error that
    names the component and the policies it works with — not a crash at the first rollout."""
    from genrl.config.load import load_recipe
    from genrl.recipe import TrainRecipe

    with pytest.raises(RecipeError, match=r"explorer: 'sde' works with the policies \['flow_image', 'flow_video', 'ar_video'\], not with 'vlm'"):
        load_recipe(SMOKE_VLM, TrainRecipe, ["explorer={name: sde}", "objective={name: grpo}"])
    with pytest.raises(RecipeError, match=r"objective: 'flow_grpo' works with the policies \['flow_image', 'flow_video', 'ar_video'\]"):
        load_recipe(SMOKE_VLM, TrainRecipe, ["explorer={name: sampling}", "objective={name: flow_grpo}"])
    with pytest.raises(RecipeError, match=r"prompts: policy 'vlm' needs a prompt source with items"):
        load_recipe(SMOKE_VLM, TrainRecipe, ["prompts={name: digit_classes}"])


def test_two_processes_train_the_vlm_under_ddp(tmp_path, tiny_base):
    """torchrun with 2 CPU processes (gloo DDP): each generates its shard, rewards and advantages are gathered,
    the update is synchronised, rank 0 writes the checkpoint; the manifest records both processes."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "OMP_NUM_THREADS": "1", "GENRL_CACHE": str(Path(tiny_base).parent.parent)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29571",
           "-m", "genrl.cli", "train", str(SMOKE_VLM), "--run-dir", str(tmp_path / "run"), "trainer.steps=2"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["ratio/mean"] == 1.0 and r["vogue/uncertainty"] > 0 for r in rows)
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["hardware"]["world_size"] == 2
    assert (tmp_path / "run" / "checkpoints" / "step_00000002" / "policy.safetensors").is_file()


def test_lora_trains_adapters_on_the_language_model_only_and_reloads(tmp_path):
    """policy.lora puts adapters on the language model's projections only (the vision tower reuses some names);
    the checkpoint holds just the adapters, and from_checkpoint rebuilds the same policy from them (merged or not)."""
    from genrl.trainer.checkpoint import latest_checkpoint, load_tensors

    trainer = _trainer(tmp_path, "trainer.steps=1", "policy.lora={rank: 4}")
    names = list(trainer.policy.trainable_parameters())
    assert names and all("lora_" in n and "language_model" in n for n in names)
    assert not any("visual" in n for n in names)
    trainer.train()
    ckpt = latest_checkpoint(tmp_path)
    saved = load_tensors(ckpt / "policy.safetensors")
    assert set(saved) == set(names)
    assert any(v.abs().sum() > 0 for k, v in saved.items() if "lora_B" in k)  # the update moved the adapters
    items = _questions(2)
    reloaded = VLMPolicy.from_checkpoint(ckpt)
    merged = VLMPolicy.from_checkpoint(ckpt, merge=True)
    t = reloaded.encode_prompts(items, [it.image for it in items], system=items[0].system_prompt)
    ids = torch.cat([t["prompt_ids"], torch.full((2, reloaded.config.max_new_tokens), reloaded.eos_id)], 1)
    seq = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": t["pixel_values"],
           "image_grid_thw": t["image_grid_thw"]}
    seq["attention_mask"][:, : t["prompt_mask"].shape[1]] = t["prompt_mask"]
    with torch.no_grad():
        a = reloaded.token_stats(reloaded.model, seq)["log_probs"]
        b = merged.token_stats(merged.model, seq)["log_probs"]
    assert torch.allclose(a, b, atol=1e-5)


def test_images_of_different_sizes_line_up_with_max_image_patches(policy, tiny_base):
    """Two images of different sizes padded to policy.max_image_patches: each row's log-probs equal those it
    gets alone (padding never leaks into the vision tower), and an image above the cap is refused by name."""
    import dataclasses

    items = _questions(2)
    small = dataclasses.replace(items[1], image=items[1].image[:, :112])  # 56 x 112: 32 patches instead of 48
    capped = VLMPolicy(VLMPolicy.Config(base_checkpoint=str(tiny_base), max_prompt_tokens=128, max_new_tokens=12,
                                        forward_chunk=2, max_image_patches=64), base_dir=tiny_base)
    system = items[0].system_prompt

    def log_probs(rows):
        enc = capped.encode_prompts(rows, [r.image for r in rows], system=system)
        assert enc["pixel_values"].shape[1] == 64
        ids = torch.cat([enc["prompt_ids"], torch.full((len(rows), 12), capped.eos_id)], 1)
        mask = torch.cat([enc["prompt_mask"], torch.ones(len(rows), 12, dtype=torch.long)], 1)
        with torch.no_grad():
            return capped.token_stats(capped.model, {"input_ids": ids, "attention_mask": mask,
                                                     "pixel_values": enc["pixel_values"],
                                                     "image_grid_thw": enc["image_grid_thw"]})["log_probs"]

    both = log_probs([items[0], small])
    assert torch.allclose(both[1], log_probs([small])[0], atol=1e-5)
    assert torch.allclose(both[0], log_probs([items[0]])[0], atol=1e-5)
    tight = VLMPolicy(VLMPolicy.Config(base_checkpoint=str(tiny_base), max_prompt_tokens=128, max_image_patches=40),
                      base_dir=tiny_base)
    with pytest.raises(ValueError, match=r"question \d+: its image has 48 patches, above policy.max_image_patches=40"):
        tight.encode_prompts(items[:1], [items[0].image], system=system)
