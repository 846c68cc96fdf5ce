"""Moving-digit video data for the autoregressive video task: motion prompts, ground-truth clips, the
prompt source, the video rewards (text, motion, quality; scopes) and the video benchmark."""

from __future__ import annotations

import itertools
import math
import os
from pathlib import Path

import pytest
import torch

from genrl.config.validate import RecipeError, build
from genrl.data.moving_digits import DIRECTION_STEPS, DIRECTIONS, MotionPrompt, motion_prompts, render_clips
from genrl.eval.moving_digits_video import MovingDigitsVideoBenchmark
from genrl.prompts.moving_digits import MovingDigitPrompts
from genrl.registry import BENCHMARKS, PROMPTS, REWARDS
from genrl.rewards.video import (
    AFTER,
    LOCAL,
    PREFIX,
    VideoMotionAlignmentReward,
    VideoQualityReward,
    VideoTextAlignmentReward,
    locate_digit,
    video_contexts,
)

RIGHT, LEFT, UP, DOWN = range(4)


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory) -> Path:
    """The quick start's reward classifier, built from its recipe into the session's cache."""
    from genrl.pretrain.classifier import classifier_from_recipe

    with pytest.MonkeyPatch.context() as mp:
        if "GENRL_CACHE" not in os.environ or os.environ.get("GENRL_TEST_PRIVATE_CACHE"):
            mp.setenv("GENRL_CACHE", str(tmp_path_factory.getbasetemp() / "genrl_cache"))
        return classifier_from_recipe("reward_models/digit_classifier/train.yaml")


@pytest.fixture(scope="module")
def text_reward(classifier_dir) -> VideoTextAlignmentReward:
    return VideoTextAlignmentReward(VideoTextAlignmentReward.Config(), model_dir=classifier_dir)


@pytest.fixture(scope="module")
def short():
    """64 single-segment prompts (8 frames) and their clips."""
    prompts = motion_prompts(64, segments=1, segment_frames=8, seed=0)
    return prompts, render_clips(prompts, seed=0)


def motion(scope: str = "all") -> VideoMotionAlignmentReward:
    return VideoMotionAlignmentReward(VideoMotionAlignmentReward.Config(scope=scope))


# ----------------------------------------------------------------------------- prompts and clips
def test_motion_prompt_text_conditions_and_path() -> None:
    p = MotionPrompt(3, (RIGHT, UP), segment_frames=3)
    assert DIRECTIONS == ("right", "left", "up", "down")
    assert DIRECTION_STEPS == ((0, 1), (0, -1), (-1, 0), (1, 0))
    assert p.text == "a 3 moving right, then up" and p.frames == 6
    assert p.conditions().dtype == torch.long
    assert p.conditions().tolist() == [[3, 0]] * 3 + [[3, 2]] * 3
    # frame 0 at the start; frames 1, 2 step right; frames 3, 4, 5 step up
    assert p.path().tolist() == [[0, 0], [0, 1], [0, 2], [-1, 2], [-2, 2], [-3, 2]]
    assert MotionPrompt(0, (LEFT,), 9).fits(16) and not MotionPrompt(0, (LEFT,), 10).fits(16)
    assert not MotionPrompt(0, (RIGHT, DOWN, RIGHT), 8).fits(16)  # 15 px to the right
    with pytest.raises(ValueError, match="digit"):
        MotionPrompt(10, (RIGHT,), 8)
    with pytest.raises(ValueError, match="directions"):
        MotionPrompt(1, (4,), 8)


def test_prompts_and_clips_are_keyed_by_seed(short) -> None:
    prompts, clips = short
    assert motion_prompts(64, segments=1, segment_frames=8, seed=0) == prompts
    assert motion_prompts(10, segments=1, segment_frames=8, seed=0) == prompts[:10]  # prompt i keyed by i
    assert torch.equal(render_clips(prompts, seed=0), clips)
    assert motion_prompts(64, segments=1, segment_frames=8, seed=1) != prompts
    assert not torch.equal(render_clips(prompts, seed=1), clips)  # other handwriting / start positions
    assert {p.digit for p in prompts} == set(range(10))
    assert {p.directions[0] for p in prompts} == set(range(4))
    assert clips.shape == (64, 8, 16, 16) and clips.min() >= 0 and clips.max() <= 1


@pytest.mark.parametrize("segments", [1, 3])
def test_clips_move_one_pixel_per_frame_inside_the_canvas(segments: int) -> None:
    prompts = motion_prompts(40, segments=segments, segment_frames=8, seed=5)
    clips = render_clips(prompts, seed=5)
    assert clips.shape == (40, 8 * segments, 16, 16)
    for prompt, clip in zip(prompts, clips):
        ink = clip.sum((1, 2))
        assert torch.allclose(ink, ink[0]) and ink[0] > 10  # the whole digit in every frame: nothing clipped
        boxes = []
        for frame in clip:
            ys, xs = torch.nonzero(frame > 0, as_tuple=True)
            boxes.append([int(ys.min()), int(xs.min()), int(ys.max()), int(xs.max())])
        boxes = torch.tensor(boxes)
        steps = torch.tensor(DIRECTION_STEPS)[prompt.conditions()[1:, 1]]
        assert torch.equal(boxes[1:, :2] - boxes[:-1, :2], steps)  # one unit step of that frame's direction
        assert torch.equal(boxes[1:, 2:] - boxes[:-1, 2:], steps)
        for t in range(1, len(clip)):  # the same glyph, moved rigidly
            assert torch.equal(torch.roll(clip[0], tuple(prompt.path()[t].tolist()), (0, 1)), clip[t])


def test_three_segments_of_eight_always_fit() -> None:
    prompts = motion_prompts(300, segments=3, segment_frames=8, seed=2)
    assert all(p.fits(16) and p.frames == 24 for p in prompts)
    assert all(a != b for p in prompts for a, b in itertools.pairwise(p.directions))  # every switch changes motion
    assert len({p.text for p in prompts}) > 100
    render_clips(prompts, seed=2)  # every one renders
    with pytest.raises(ValueError, match="segment_frames"):
        motion_prompts(1, segments=1, segment_frames=10, seed=0)


# ----------------------------------------------------------------------------- prompt source
def test_prompt_source_is_keyed_and_typed() -> None:
    cls = PROMPTS.get("moving_digits")
    assert cls is MovingDigitPrompts
    cfg = build(cls.Config, {"size": 40, "segments": 3, "segment_frames": 8})
    source = cls(cfg, seed=7)
    assert torch.equal(source.sample(3, 8), cls(cfg, seed=7).sample(3, 8))
    assert not torch.equal(source.sample(3, 8), cls(cfg, seed=8).sample(3, 8))
    epoch = torch.cat([source.sample(s, 8) for s in range(5)])  # 5 x 8 = one pass over the 40 prompts
    assert sorted(epoch.tolist()) == list(range(40))
    assert source.sample(0, 8, round=1).shape == (8,)
    items = source.items(epoch[:4])
    assert all(isinstance(p, MotionPrompt) and p.frames == 24 for p in items)
    assert items == [source.prompts[int(i)] for i in epoch[:4]]


def test_centred_start_varies_only_the_handwriting() -> None:
    prompts = motion_prompts(6, segments=1, segment_frames=16, size=24, seed=0)
    a = render_clips(prompts, size=24, seed=0, start="centred")
    b = render_clips(prompts, size=24, seed=1, start="centred")
    for clip_a, clip_b in zip(a, b):  # same path and place, maybe another image of the digit
        ya, xa = torch.nonzero(clip_a[0] > 0, as_tuple=True)
        yb, xb = torch.nonzero(clip_b[0] > 0, as_tuple=True)
        assert abs(int(xa.min()) - int(xb.min())) <= 2 and abs(int(ya.min()) - int(yb.min())) <= 2
    with pytest.raises(ValueError, match="start must be"):
        render_clips(prompts, size=24, seed=0, start="left")


def test_heldout_prompts_differ_from_train() -> None:
    def texts(split: str, **kw) -> list[str]:
        cfg = {"split": split, "segment_frames": 8 if kw.get("segments", 1) > 1 else 16, **kw}
        return [p.text for p in MovingDigitPrompts(build(MovingDigitPrompts.Config, cfg), seed=0).prompts]

    train, heldout = texts("train", segments=3, size=64), texts("heldout", segments=3, size=64)
    assert train != heldout and len(set(heldout) - set(train)) > 20
    assert texts("train", segments=1) != texts("heldout", segments=1)
    assert texts("heldout", segments=3, size=64) == heldout  # fixed
    with pytest.raises(RecipeError, match="segment_frames"):
        build(MovingDigitPrompts.Config, {"segment_frames": 18})  # 17 px: more than a 24 px canvas allows


# ----------------------------------------------------------------------------- rewards
def test_locate_digit_centroid_and_crop() -> None:
    frames = torch.zeros(3, 16, 16)
    frames[0, 2:4, 10:12] = 1.0  # a 2x2 blob centred at (2.5, 10.5)
    frames[1, 13:16, 0:2] = 1.0  # in a corner: the crop is clamped inside the canvas
    centroids, crops = locate_digit(frames)
    assert torch.allclose(centroids[0], torch.tensor([2.5, 10.5]))
    assert torch.allclose(centroids[2], torch.tensor([7.5, 7.5]))  # blank: the canvas centre
    assert crops.shape == (3, 8, 8) and crops[0].sum() == 4 and crops[1].sum() == 6


def test_motion_alignment_forward_backward_frozen(short) -> None:
    prompts, clips = short
    ctx = video_contexts(prompts)
    assert ctx.shape == (64, 8, 3) and (ctx[..., 2] == AFTER).all()
    forward = motion()(clips, ctx)
    assert forward.shape == (64,) and (forward > 0.95).all()
    assert torch.allclose(motion()(clips.flip(1), ctx), torch.full((64,), -1.0), atol=0.05)
    frozen = clips[:, :1].expand_as(clips)
    assert motion()(frozen, ctx).abs().max() < 0.05
    assert motion()(torch.zeros_like(clips), ctx).abs().max() < 1e-6
    long = motion_prompts(16, segments=3, segment_frames=8, seed=3)
    assert (motion()(render_clips(long, seed=3), video_contexts(long)) > 0.95).all()


def test_motion_scope_uses_only_its_frames(short) -> None:
    prompts, clips = short
    clip = clips[:1]
    video = torch.cat([clip[:, :1].expand(1, 5, 16, 16), clip[:, 1:4]], 1)  # still for 5 frames, then 3 steps
    ctx = video_contexts(prompts[:1], torch.tensor([PREFIX] * 4 + [LOCAL] * 2 + [AFTER] * 2))
    # pair scores t = 1..7: 0, 0, 0, 0, 1, 1, 1
    assert motion("all")(video, ctx).item() == pytest.approx(3 / 7)
    assert motion("local")(video, ctx).item() == pytest.approx(1 / 2)  # frames 4, 5
    assert motion("global")(video, ctx).item() == pytest.approx(3 / 4)  # frames 4..7
    no_chunk = video_contexts(prompts[:2], AFTER)
    assert motion("local")(clips[:2], no_chunk).isnan().all()
    only_first = video_contexts(prompts[:1], torch.tensor([LOCAL] + [AFTER] * 7))
    assert motion("local")(clip, only_first).isnan().all()  # frame 0 has no predecessor
    with pytest.raises(ValueError, match=r"contexts \[B, F, 3\]"):
        motion()(clips[:2], ctx[..., :2])


def test_text_alignment_prompted_vs_wrong_digit(short, text_reward) -> None:
    prompts, clips = short
    ctx = video_contexts(prompts)
    right = text_reward(clips, ctx)
    assert right.mean() > 0.8
    wrong = ctx.clone()
    wrong[..., 0] = (wrong[..., 0] + 1) % 10
    assert text_reward(clips, wrong).mean() < 0.1
    assert text_reward(torch.zeros_like(clips), ctx).mean() < 0.3


def test_text_alignment_scope(short, text_reward) -> None:
    prompts, clips = short
    wrong = video_contexts(prompts, torch.tensor([PREFIX] * 4 + [LOCAL] * 4))
    wrong[:, :4, 0] = (wrong[:, :4, 0] + 1) % 10  # the prefix names another digit, the chunk the right one
    local = VideoTextAlignmentReward(VideoTextAlignmentReward.Config(scope="local"), model_dir=text_reward.model_dir)
    assert local(clips, wrong).mean() > 0.8
    assert text_reward(clips, wrong).mean() < 0.6  # scope all also reads the wrong prefix
    assert local(clips, video_contexts(prompts, PREFIX)).isnan().all()


def test_quality_prefers_clear_digits(short, classifier_dir) -> None:
    prompts, clips = short
    ctx = video_contexts(prompts)
    quality = VideoQualityReward(VideoQualityReward.Config(), model_dir=classifier_dir)
    real = quality(clips, ctx)
    assert real.mean() > 0.8 and real.max() <= 1.0
    assert quality(torch.zeros_like(clips), ctx).max() == 0  # no ink: not a clear digit
    blurred = torch.nn.functional.avg_pool2d(clips.flatten(0, 1)[:, None], 3, 1, 1).view_as(clips)
    assert quality(blurred, ctx).mean() < real.mean() - 0.2  # the typical failure of a video generator
    noisy = (clips + 0.3 * torch.rand(clips.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert quality(noisy, ctx).mean() < real.mean() - 0.1
    assert quality(clips * 0.5, ctx).mean() < real.mean() - 0.05  # faint grey strokes
    crisp = VideoQualityReward(VideoQualityReward.Config(measure="crispness"), model_dir=classifier_dir)
    assert crisp((clips > 0.5).float(), ctx).mean() > crisp(clips, ctx).mean()


def test_rewards_are_registered_with_scopes() -> None:
    for name in ("video_text_alignment", "video_motion_alignment", "video_quality"):
        cls = REWARDS.get(name)
        assert build(cls.Config, {"scope": "global"}).scope == "global"
        with pytest.raises(RecipeError, match="scope"):
            build(cls.Config, {"scope": "chunk"})
    assert VideoMotionAlignmentReward.best_value == 1.0


# ----------------------------------------------------------------------------- benchmark
class FakePolicy:
    """Draws the ground truth of each prompt (or nothing): what a perfect (or dead) generator would."""

    def __init__(self, blank: bool = False) -> None:
        self.blank, self.calls = blank, []

    def generate(self, prompts, sample_ids, *, seed):
        self.calls.append((len(prompts), sample_ids.tolist(), seed))
        clips = render_clips(prompts, size=24, seed=seed)
        return torch.zeros_like(clips) if self.blank else clips


def test_benchmark_scores_ground_truth_high_and_blank_low(classifier_dir, tmp_path) -> None:
    assert BENCHMARKS.get("moving_digits_video") is MovingDigitsVideoBenchmark
    cfg = build(MovingDigitsVideoBenchmark.Config, {"prompts": 12, "segments": 3, "segment_frames": 8, "n_per_prompt": 2,
                                                    "classifier_checkpoint": str(classifier_dir)})
    bench = MovingDigitsVideoBenchmark(cfg)
    policy = FakePolicy()
    good = bench.run(policy, seed=3)
    assert policy.calls == [(24, list(range(24)), 3)]
    assert set(good.per_sample) == {m.name for m in bench.metrics} == {"text_alignment", "motion_alignment", "quality"}
    assert len(good.groups) == 24 and good.groups[0] == good.groups[1] == bench.prompts[0].text
    flat = good.flat()
    assert flat["motion_alignment"] > 0.95 and flat["text_alignment"] > 0.8 and flat["quality"] > 0.8
    blank = bench.run(FakePolicy(blank=True), seed=3).flat()
    assert abs(blank["motion_alignment"]) < 0.05 and blank["text_alignment"] < 0.3 and blank["quality"] == 0

    from genrl.eval.runner import evaluate, write_eval_report

    result = evaluate(bench, policy, [3, 4], name="moving_digits_video")
    assert math.isfinite(result.metrics["motion_alignment"]["mean"])
    md, _ = write_eval_report(result, bench, tmp_path / "report")
    assert (tmp_path / "report" / "assets" / "videos_seed3.png").is_file() and "videos_seed3.png" in md.read_text()


def test_benchmark_rejects_missing_classifier(tmp_path) -> None:
    from genrl.eval.benchmark import EvalError

    cfg = build(MovingDigitsVideoBenchmark.Config, {"classifier_checkpoint": str(tmp_path)})
    with pytest.raises(EvalError, match="classifier_checkpoint"):
        MovingDigitsVideoBenchmark.check_inputs(cfg)
    with pytest.raises(RecipeError, match="segment_frames"):
        build(MovingDigitsVideoBenchmark.Config, {"segment_frames": 0})
