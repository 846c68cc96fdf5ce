"""Reward seam (weighted columns, group-wise, failures counted) and advantage estimators."""

from __future__ import annotations

import pytest
import torch

from genrl.advantages.estimators import BatchNormalized, GroupRelative
from genrl.rewards.base import InvalidRewardError, RewardSet


def test_rewards_are_one_column_per_component_and_groupwise_rewards_get_groups():
    seen = {}

    def brightness(images, prompts):
        return images.flatten(1).mean(1)

    def rank_in_group(images, prompts, groups):
        seen["groups"] = groups
        score = images.flatten(1).mean(1)
        return torch.stack([(score[groups == g].unsqueeze(0) < s).sum() for s, g in zip(score, groups)]).float()

    rank_in_group.groupwise = True
    rs = RewardSet([("brightness", brightness, 1.0), ("rank", rank_in_group, 0.5)])
    images = torch.arange(8, dtype=torch.float32).view(8, 1, 1).expand(8, 2, 2)
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    out = rs.submit(images, torch.zeros(8), groups=groups).result()
    assert out.values.shape == (8, 2) and out.names == ["brightness", "rank"]
    assert torch.equal(out.values[:, 1], torch.tensor([0.0, 1, 2, 3, 0, 1, 2, 3]))
    assert torch.equal(seen["groups"], groups)
    assert torch.equal(rs.weights, torch.tensor([1.0, 0.5]))


def test_nan_rewards_are_masked_counted_and_stop_the_run_past_the_share():
    def flaky(images, prompts):
        out = torch.ones(len(prompts))
        out[0] = float("nan")
        return out

    rs = RewardSet([("flaky", flaky, 1.0)], max_invalid_share=0.15)
    out = rs.score(torch.zeros(10, 2, 2), torch.zeros(10))
    assert out.valid.tolist() == [False] + [True] * 9
    rs.account(out.valid)  # 1 of 10 = 10 %: tolerated
    assert rs.invalid_count == 1
    rs.account(out.valid)
    out4 = rs.score(torch.zeros(4, 2, 2), torch.zeros(4))
    with pytest.raises(InvalidRewardError, match=r"5 of 26 samples .*above trainer.max_invalid_reward_share"):
        rs.account(torch.cat([out4.valid, torch.tensor([False, False])]))


def test_a_failing_remote_reward_costs_its_samples_not_the_run():
    calls = []

    def server(images, prompts):
        calls.append(1)
        raise ConnectionError("reward server down")

    server.remote = True
    rs = RewardSet([("server", server, 1.0)], max_invalid_share=1.0)
    out = rs.score(torch.zeros(3, 2, 2), torch.zeros(3))
    assert calls and not out.valid.any()


def test_a_local_reward_bug_is_not_swallowed():
    def broken(images, prompts):
        return torch.ones(len(prompts) + 1)

    with pytest.raises(ValueError, match="returned 4 values for 3 samples"):
        RewardSet([("broken", broken, 1.0)]).score(torch.zeros(3, 2, 2), torch.zeros(3))


def test_group_relative_advantages_match_the_formula_and_count_zero_std_groups():
    est = GroupRelative(GroupRelative.Config(eps=0.0))
    rewards = torch.tensor([[1.0], [2.0], [3.0], [4.0], [5.0], [5.0], [5.0], [5.0]])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    out = est(rewards, torch.tensor([1.0]), groups, torch.ones(8, dtype=torch.bool))
    r = torch.tensor([1.0, 2, 3, 4])
    assert torch.allclose(out.advantages[:4], (r - r.mean()) / r.std(unbiased=False))
    assert torch.equal(out.advantages[4:], torch.zeros(4))
    assert out.metrics["adv/zero_std_group_share"] == 0.5


def test_components_can_be_normalised_before_combining_and_invalid_samples_get_zero():
    rewards = torch.tensor([[0.0, 100.0], [1.0, 300.0], [0.5, 200.0], [0.2, float("nan")]])
    valid = torch.isfinite(rewards).all(1)
    groups = torch.zeros(4, dtype=torch.long)
    est = GroupRelative(GroupRelative.Config(eps=0.0, combine="normalize_then_sum"))
    out = est(rewards, torch.tensor([1.0, 1.0]), groups, valid)
    assert out.advantages[3] == 0
    # both components are z-scored over the 3 valid samples, then summed: equal scales
    z = lambda x: (x - x.mean()) / x.std(unbiased=False)  # noqa: E731
    expected = z(torch.tensor([0.0, 1.0, 0.5])) + z(torch.tensor([100.0, 300.0, 200.0]))
    assert torch.allclose(out.advantages[:3], expected, atol=1e-6)


def test_batch_normalized_ignores_groups():
    out = BatchNormalized(BatchNormalized.Config(eps=0.0))(
        torch.tensor([[1.0], [3.0]]), torch.tensor([1.0]), torch.tensor([0, 1]), torch.ones(2, dtype=torch.bool))
    assert torch.allclose(out.advantages, torch.tensor([-1.0, 1.0]))
