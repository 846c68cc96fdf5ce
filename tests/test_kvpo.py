"""The autoregressive video policy (block-causal Wan + KV cache) and KVPO: what must hold exactly."""

from __future__ import annotations

import math

import pytest
import torch

from genrl.data.moving_digits import motion_prompts
from genrl.explorers.kvpo import KVPOExplorer, kvpo_rollout
from genrl.models.ar_video import ARVideoConfig, KVCache, block_causal_mask, window_context
from genrl.objectives.kvpo import KVPO, branch_kl, group_log_softmax, protected_groups
from genrl.policies.ar_video import SCOPE_CHUNK, SCOPE_PREFIX, ARVideoPolicy
from genrl.registry import ADVANTAGES
from genrl.rng import Purpose
from genrl.trainer.rollout import Rollout
from tests.helpers import ROOT, reset_accelerate, smoke_recipe

TINY_VIDEO = dict(canvas=16, patch=4, layers=1, heads=2, head_dim=16, ffn_dim=64, text_dim=16, freq_dim=32,
                  frames_per_block=2, sink_frames=2, window_frames=4)
KVPO_SMOKE = ROOT / "recipes" / "smoke" / "kvpo_tiny.yaml"
SDE_SMOKE = ROOT / "recipes" / "smoke" / "video_sde_tiny.yaml"


@pytest.fixture(scope="module")
def policy() -> ARVideoPolicy:
    torch.manual_seed(0)
    return ARVideoPolicy(ARVideoPolicy.Config(model=ARVideoConfig(**TINY_VIDEO), num_steps=3, forward_chunk=4))


def prompts(n: int, seed: int = 3):
    # 2 segments x 8 frames = 16 frames: one prompt switch (re-cache) at frame 8
    return motion_prompts(n, segments=2, segment_frames=8, size=16, seed=seed)


def plan(branches: int = 3, step: int = 0, **kw):
    return KVPOExplorer(KVPOExplorer.Config(branches=branches, **kw), seed=0).plan(step)


def fork_batch(policy, n_groups: int = 2, branches: int = 3, step: int = 0, record=None):
    items = [p for p in prompts(n_groups) for _ in range(branches + 1)]
    conds = policy.frame_conditions(items, "cpu")
    keys = torch.arange(n_groups).repeat_interleave(branches + 1) + 100
    st = policy.state_of(policy.transformer)
    if record is not None:  # record the attention context of every cached forward
        st.record = record
    with torch.no_grad():
        tensors, meta = kvpo_rollout(policy, policy.transformer, conds, keys, step=step, seed=0,
                                     plan=plan(branches, step))
    st.record = None
    tensors["conds"], tensors["group_ids"] = conds, keys
    return Rollout(tensors, meta), items, keys


# ------------------------------------------------------------------------------ the cache
def test_window_context_and_mask():
    cfg = ARVideoConfig(**TINY_VIDEO)
    assert window_context(0, cfg) == []
    assert window_context(4, cfg) == [0, 1, 2, 3]
    assert window_context(10, cfg) == [0, 1, 6, 7, 8, 9]  # sink 0,1 + the 4 frames before the block
    m = block_causal_mask(12, cfg)
    assert m[10].nonzero().flatten().tolist() == [0, 1, 6, 7, 8, 9, 10, 11]
    assert not m[:10, 10:].any()  # causal: no frame sees a later block


def test_block_causal_processors_reproduce_stock_wan_attention():
    """With a full (all-True) mask and positions 0..F-1 the installed processors and frame RoPE compute
    exactly what diffusers' own WanAttnProcessor and rotary embedding do (guards the pinned diffusers API)."""
    import copy

    from genrl.models.ar_video import build_transformer, install_block_causal

    cfg = ARVideoConfig(**TINY_VIDEO)
    torch.manual_seed(0)
    stock = build_transformer(cfg).eval()
    ours = copy.deepcopy(stock)
    state = install_block_causal(ours, cfg)
    F = 6
    x = torch.randn(2, 1, F, 16, 16)
    t = torch.tensor([300.0, 800.0])
    text = torch.randn(2, 2, cfg.text_dim)
    state.mode, state.positions, state.allowed = "full", torch.arange(F), torch.ones(F, F, dtype=torch.bool)
    with torch.no_grad():
        a = stock(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]
        b = ours(hidden_states=x, timestep=t, encoder_hidden_states=text, return_dict=False)[0]
    assert (a - b).abs().max() < 1e-5


def test_kv_cache_generation_equals_full_recompute(policy):
    """Cached block-by-block generation = recomputing the whole history per block (the slow baseline)."""
    items = prompts(3)
    cached = policy.generate(items, torch.arange(3), seed=1)
    full = policy.generate(items, torch.arange(3), seed=1, use_cache=False)
    assert cached.shape == (3, 16, 16, 16)
    assert (cached - full).abs().max() < 1e-4


def test_cache_write_and_gather_are_per_frame():
    cfg = ARVideoConfig(**TINY_VIDEO)
    cache = KVCache.empty(2, 6, cfg, device="cpu")
    T = cfg.tokens_per_frame
    k = torch.arange(2 * 2 * T * cfg.heads * cfg.head_dim, dtype=torch.float32).view(2, 2 * T, cfg.heads, cfg.head_dim)
    cache.write(0, torch.tensor([0, 1]), torch.tensor([3, 4]), k, -k)
    gk, gv = cache.gather(0, torch.tensor([1, 0]), torch.tensor([[4, 3], [3, 3]]))
    assert torch.equal(gk[0, :T], k[1, T:]) and torch.equal(gk[0, T:], k[1, :T])
    assert torch.equal(gk[1, :T], k[0, :T]) and torch.equal(gv[1], -torch.cat([k[0, :T], k[0, :T]]))


# ------------------------------------------------------------------------------ fork groups
def test_fork_group_shares_prefix_and_anchor_is_the_plain_rollout(policy):
    batch, items, keys = fork_batch(policy)
    G1 = 4
    fork = batch.meta["fork_block"]
    start = fork * 2
    clean = batch["clean"]
    for g in range(2):
        rows = clean[g * G1:(g + 1) * G1]
        assert all(torch.equal(rows[0, :, :start], r[:, :start]) for r in rows)  # identical prefix
        assert all(not torch.equal(rows[0, :, start:], r[:, start:]) for r in rows[1:])  # routed branches differ
    # the anchor (row 0 of each group) is the unperturbed rollout of its prompt and noise, bit for bit
    anchors = [0, G1]
    conds = policy.frame_conditions([items[i] for i in anchors], "cpu")
    with torch.no_grad():
        plain, _, _ = policy.sample_blocks(policy.transformer, conds, keys[anchors].tolist(), seed=0,
                                           purpose=Purpose.INIT_NOISE, step=0)
    assert torch.equal(plain, clean[anchors])
    scope = batch["scope"][0]
    assert (scope[:start] == SCOPE_PREFIX).all() and (scope[start:start + 4] == SCOPE_CHUNK).all()


def test_routing_really_routes(policy):
    """Videos are longer than sink + window + routed frames; every branch attends to a different history."""
    cfg = policy.model_config
    record: list = []
    batch, _, _ = fork_batch(policy, record=record)
    n_routed = cfg.window_frames - 2
    assert batch["clean"].shape[2] > cfg.sink_frames + cfg.window_frames + n_routed
    fork = batch.meta["fork_block"]
    # forward_chunk 4 = one fork group per network call: row 0 the anchor, rows 1..3 its branches
    window_contexts = [c for c in record if c is not None and len(c) == 4 and not torch.equal(c[0], c[1])]
    assert len(window_contexts) == 2 * 2 * (3 + 1)  # 2 groups x 2 window blocks x (3 steps + the clean pass)
    for ctx in window_contexts:
        anchor = set(ctx[0].tolist())
        assert anchor == set(window_context(int(max(anchor)) + 1, cfg))
        for r in range(1, 4):
            branch = set(ctx[r].tolist())
            assert branch != anchor and len(branch) == len(anchor)
            assert min(branch - {0, 1}) < fork * 2 - cfg.window_frames  # an older frame was routed in
    routed = batch["routed_frames"]
    assert (routed[batch["is_anchor"]] == -1).all()
    for g in range(2):  # distinct routings within a group
        assert len({tuple(r) for r in routed[g * 4 + 1:(g + 1) * 4].tolist()}) == 3


def test_restoring_the_rng_reproduces_a_branch(policy):
    a, _, _ = fork_batch(policy, step=5)
    b, _, _ = fork_batch(policy, step=5)
    c, _, _ = fork_batch(policy, step=6)
    assert torch.equal(a["clean"], b["clean"]) and torch.equal(a["energy"], b["energy"])
    assert not torch.equal(a["clean"], c["clean"])
    # one branch alone, regenerated from the group's prefix with its routed context, is the same video
    fork = a.meta["fork_block"]
    row = 2
    conds = a["conds"][[row]]
    with torch.no_grad():
        clean0, cache, _ = policy.sample_blocks(policy.transformer, conds, [int(a["group_ids"][row])], seed=0,
                                                purpose=Purpose.INIT_NOISE, step=5, blocks=range(fork))
        p = plan(3, 5)
        frames = p.routes(int(a["group_ids"][row]), fork * 2, policy.model_config)[row - 1]
        ctx = {b: torch.tensor([p.branch_context(2 * b, frames, policy.model_config)]) for b in range(fork, fork + 2)}
        again, _, _ = policy.sample_blocks(policy.transformer, conds, [int(a["group_ids"][row])], seed=0,
                                           purpose=Purpose.INIT_NOISE, step=5, cache=cache, clean=clean0,
                                           blocks=range(fork, 8), contexts=ctx)
    assert torch.equal(again[0], a["clean"][row])


def test_on_policy_branch_ratio_is_exactly_one(policy):
    batch, _, _ = fork_batch(policy)
    sub = batch.select(torch.nonzero(~batch["is_anchor"]).flatten())
    with torch.no_grad():
        again = policy.energies(sub)
    assert torch.equal(again, sub["energy"])
    # in a different composition (one group alone, reversed rows) the energies are still identical
    part = sub.select([2, 1, 0])
    with torch.no_grad():
        assert torch.equal(policy.energies(part), sub["energy"][[2, 1, 0]])


def test_fork_needs_whole_groups_and_room_to_route(policy):
    items = prompts(1) * 3
    conds = policy.frame_conditions(items, "cpu")
    with pytest.raises(ValueError, match="group_size: 4"):
        kvpo_rollout(policy, policy.transformer, conds, torch.zeros(3, dtype=torch.long), step=0, seed=0, plan=plan(3))
    short = motion_prompts(4, segments=1, segment_frames=8, size=16, seed=0)
    conds = policy.frame_conditions(short, "cpu")
    with pytest.raises(ValueError, match="no block of a 8-frame video can fork"):
        kvpo_rollout(policy, policy.transformer, conds, torch.zeros(4, dtype=torch.long), step=0, seed=0, plan=plan(3))


# ------------------------------------------------------------------------------ objective pieces
def test_protect_rule_engages_exactly_when_no_branch_beats_the_anchor():
    groups = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    adv = torch.tensor([-1.0, -0.2, 0.0, -1.0, 0.3, -2.0, 0.0, 0.0, 0.0])
    assert protected_groups(adv, groups).tolist() == [True] * 3 + [False] * 3 + [True] * 3


def test_branch_softmax_and_kl():
    groups = torch.tensor([0, 0, 1, 1, 1])
    logits = torch.tensor([1.0, 2.0, 0.0, 0.0, math.log(2.0)])
    lp = group_log_softmax(logits, groups)
    assert torch.allclose(lp[:2].exp().sum(), torch.tensor(1.0)) and torch.allclose(lp[4].exp(), torch.tensor(0.5))
    assert float(branch_kl(lp, lp, groups)) == 0.0
    ref = group_log_softmax(torch.zeros(5), groups)
    expected_g1 = 0.25 * math.log(0.25 / (1 / 3)) * 2 + 0.5 * math.log(0.5 / (1 / 3))
    p0 = torch.softmax(torch.tensor([1.0, 2.0]), 0)
    expected_g0 = float((p0 * (p0.log() - math.log(0.5))).sum())
    assert abs(float(branch_kl(lp, ref, groups)) - (expected_g0 + expected_g1) / 2) < 1e-6


def test_anchor_relative_advantage_numbers():
    est = ADVANTAGES.get("anchor_relative")(ADVANTAGES.get("anchor_relative").Config(eps=0.0))
    # one group: anchor first; two components with weights 1 and 0.5
    r = torch.tensor([[0.5, 1.0], [1.0, 1.0], [0.0, 2.0], [0.5, 1.0]])
    out = est(r, torch.tensor([1.0, 0.5]), torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.bool))
    s0, s1 = r[:, 0].std(unbiased=False), r[:, 1].std(unbiased=False)
    expected = torch.tensor([0.0, 0.5 / s0, -0.5 / s0 + 0.5 * 1.0 / s1, 0.0])
    assert torch.allclose(out.advantages, expected)
    assert out.metrics["adv/beats_anchor_share"] == 1.0
    flat = est(torch.ones(4, 2), torch.ones(2), torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.bool))
    assert (flat.advantages == 0).all() and flat.metrics["adv/zero_std_group_share"] == 1.0


def test_kvpo_loss_first_ratio_is_one_and_protect_zeroes_the_gradient(policy):
    batch, _, _ = fork_batch(policy, n_groups=2)
    adv = torch.zeros(len(batch))
    adv[1:4] = torch.tensor([1.0, -0.5, -0.5])  # group 0: a branch beats the anchor
    adv[5:8] = torch.tensor([-1.0, -0.5, 0.0])  # group 1: none does -> protected
    batch["advantages"] = adv
    obj = KVPO(KVPO.Config(kl_beta=0.0))
    out = obj(policy, batch)
    assert out.metrics["kvpo/ratio_mean"] == 1.0 and out.metrics["kvpo/protected_share"] == 0.5
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.transformer.parameters())
    policy.transformer.zero_grad(set_to_none=True)
    batch["advantages"] = torch.where(torch.arange(len(batch)) >= 4, adv, torch.zeros_like(adv))
    out = obj(policy, batch)
    assert float(out.loss.detach()) == 0.0  # only the protected group carries advantages: no policy gradient
    with pytest.raises(ValueError, match="whole fork groups"):
        obj(policy, batch.select([0, 1, 2, 3, 5, 6]))  # group 1 cut in half


# ------------------------------------------------------------------------------ in the shared loop
@pytest.mark.parametrize("recipe", [KVPO_SMOKE, SDE_SMOKE], ids=["kvpo", "sde_grpo"])
def test_video_recipes_train_in_the_shared_loop(tmp_path, recipe):
    from genrl.trainer.loop import Trainer

    reset_accelerate()
    trainer = Trainer(smoke_recipe("trainer.inner_epochs=2", "trainer.minibatch_size=4", path=recipe),
                      recipe_file=str(recipe), run_dir=str(tmp_path / "run"))
    trainer.train(resume=False)
    first = trainer.history[0]
    assert (tmp_path / "run" / "checkpoints").is_dir()
    if "kvpo" in recipe.name:
        assert first["kvpo/ratio_mean"] != 1.0 or first["policy_loss"] == 0.0  # a second minibatch moved it
        assert 0.0 <= first["kvpo/protected_share"] <= 1.0
        # routing changes the videos: the rewards of a fork group differ in (nearly) every group
        assert all(h["adv/zero_std_group_share"] <= 0.2 for h in trainer.history)
    else:
        assert first["ratio/step_00/mean"] == pytest.approx(1.0, abs=0.05)
    assert all(math.isfinite(h["reward/total/mean"]) for h in trainer.history)


def test_kvpo_recipe_validation_names_the_key():
    with pytest.raises(Exception, match="group_size"):
        smoke_recipe("trainer.group_size=5", path=KVPO_SMOKE)
    with pytest.raises(Exception, match="multiples of group_size"):
        smoke_recipe("trainer.micro_batch_size=2", path=KVPO_SMOKE)
    with pytest.raises(Exception, match="guard"):
        smoke_recipe("objective.guard=true", path=SDE_SMOKE)


def test_pretrain_builds_a_base_that_reloads_to_the_same_sampler(tmp_path):
    """The pretraining job writes a diffusers Wan folder + prompt encoder that reload (processors re-installed)
    to exactly the same videos, and an RL run can start from it."""
    from genrl.config.validate import build
    from genrl.pretrain.ar_video import ARVideoPretrainRecipe, build_ar_video_base

    cfg = build(ARVideoPretrainRecipe, {"kind": "ar_video", "model": TINY_VIDEO, "num_steps": 3, "steps": 3,
                                        "clips": 8, "batch_size": 4, "single_frames": 8, "segment_frames": 4,
                                        "segments": 2, "start": "centred"}, file="t", key="")
    out = tmp_path / "base"
    build_ar_video_base(cfg, out, progress=False)
    assert (out / "transformer" / "config.json").is_file() and (out / "checkpoint.json").is_file()
    loaded = ARVideoPolicy.from_checkpoint(out)
    items = prompts(2)
    again = ARVideoPolicy.from_checkpoint(out)
    assert torch.equal(loaded.generate(items, torch.arange(2), seed=0), again.generate(items, torch.arange(2), seed=0))
    with pytest.raises(ValueError, match="expected 'ar_video'"):
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "checkpoint.json").write_text('{"policy": "flow_image", "weights": "full_base"}')
        ARVideoPolicy.from_checkpoint(tmp_path / "other", device="cpu").generate(items, torch.arange(2), seed=0)
