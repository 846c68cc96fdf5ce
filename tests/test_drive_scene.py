"""The scene layout: the unicycle roll-out against hand-computed states, its inverse, packing, the ego frame."""

from __future__ import annotations

import math

import pytest
import torch

from genrl.drive.scene import (
    SceneSpec,
    actions_from_states,
    empty_scene,
    pack_context,
    to_ego_frame,
    unicycle_rollout,
    unpack_context,
)


def test_unicycle_rollout_matches_hand_computed_states():
    # From (0, 0), heading 0, 10 m/s, dt = 0.5 s:
    #   step 1: a = 1, w = 0.1  -> v = 10.5, psi = 0.05, x = 10.5 cos(0.05) 0.5, y = 10.5 sin(0.05) 0.5
    #   step 2: a = 0, w = 0    -> v = 10.5, psi = 0.05, moves another 5.25 m along psi = 0.05
    #   step 3: a = -2, w = -0.1 -> v = 9.5, psi = 0.0, moves 4.75 m along +x
    current = torch.tensor([0.0, 0.0, 0.0, 10.0])
    actions = torch.tensor([[1.0, 0.1], [0.0, 0.0], [-2.0, -0.1]])
    states = unicycle_rollout(current, actions, dt=0.5)
    c, s = math.cos(0.05), math.sin(0.05)
    expected = torch.tensor([
        [5.25 * c, 5.25 * s, 0.05, 10.5],
        [10.5 * c, 10.5 * s, 0.05, 10.5],
        [10.5 * c + 4.75, 10.5 * s, 0.0, 9.5],
    ])
    torch.testing.assert_close(states, expected, rtol=0, atol=1e-5)
    # batched over leading dims, and from a moved, turned start
    start = torch.tensor([3.0, -2.0, math.pi / 2, 4.0])
    up = unicycle_rollout(start.expand(2, 4), torch.tensor([[[0.0, 0.0]] * 2] * 2), dt=1.0)
    torch.testing.assert_close(up[0, :, :2], torch.tensor([[3.0, 2.0], [3.0, 6.0]]), rtol=0, atol=1e-5)


def test_actions_from_states_inverts_the_rollout_on_speed_and_heading():
    g = torch.Generator().manual_seed(0)
    current = torch.tensor([[0.0, 0.0, 3.0, 12.0], [5.0, 1.0, -3.1, 8.0]])  # headings near +-pi wrap
    actions = torch.randn(2, 10, 2, generator=g) * torch.tensor([1.0, 0.3])
    states = unicycle_rollout(current, actions, dt=0.5)
    torch.testing.assert_close(actions_from_states(current, states, dt=0.5), actions, rtol=0, atol=1e-4)
    torch.testing.assert_close(unicycle_rollout(current, actions_from_states(current, states, 0.5), 0.5), states,
                               rtol=0, atol=1e-4)


def test_pack_and_unpack_context_round_trip_and_shape_errors():
    spec = SceneSpec(num_agents=3, history_steps=2, future_steps=4, num_lanes=2, lane_points=3, route_points=2)
    scene = empty_scene(spec, 2)
    g = torch.Generator().manual_seed(1)
    for k, v in scene.items():
        scene[k] = torch.rand(v.shape, generator=g) > 0.5 if v.dtype == torch.bool else torch.randn(v.shape, generator=g)
    flat = pack_context(spec, scene)
    assert flat.shape == (2, spec.context_dim)
    back = unpack_context(spec, flat)
    assert set(back) == {"history", "history_mask", "size", "agent_mask", "lanes", "lane_mask", "route"}
    for k, v in back.items():
        assert torch.equal(v, scene[k]), k
    with pytest.raises(ValueError, match="history"):
        pack_context(spec, {**scene, "history": scene["history"][:, :2]})
    with pytest.raises(ValueError, match=str(spec.context_dim)):
        unpack_context(spec, flat[:, :-1])


def test_ego_frame():
    pts = torch.tensor([[11.0, 5.0], [10.0, 7.0]])
    local = to_ego_frame(pts, torch.tensor([10.0, 5.0]), math.pi / 2)  # ego at (10, 5) heading +y
    torch.testing.assert_close(local, torch.tensor([[0.0, -1.0], [2.0, 0.0]]), rtol=0, atol=1e-6)
