"""Moving-digit videos from the real handwritten digits, and video preference pairs on them.

A video is one digit of the ``reward`` split drifting across a blank canvas at a constant velocity.
The planted preference is temporal coherence: the chosen video is the smooth one, the rejected video
shows the *same frames* with two of them swapped or one repeated (a stutter), so no single frame
tells them apart — a reward model has to look at motion. Until genrl has a video generator this is
the video reward model's data (``reward_models/moving_digits_video``)::

    python -m genrl.data.moving_digits --out data/moving_digit_pairs.parquet

It also defines the *prompted* moving digits of the autoregressive video generator (KVPO): a
:class:`MotionPrompt` ("a 3 moving right, then up") names one digit and one direction per segment
of ``segment_frames`` frames; the digit moves one pixel per frame. :func:`motion_prompts` draws
prompts whose whole path fits on the canvas, :func:`render_clips` draws their ground-truth clips
from real handwriting (the generator's training data).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from genrl.data.digits import digit_split
from genrl.rng import Purpose, keyed_generator


def moving_digit_videos(n: int, *, frames: int = 6, size: int = 16, seed: int = 0,
                        split: str = "reward") -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` videos ``[n, frames, 1, size, size]`` in [0, 1] and their digit labels ``[n]``."""
    images, labels = digit_split(split)
    g = keyed_generator(seed, Purpose.DATA, n)
    pick = torch.randint(len(images), (n,), generator=g)
    span = size - 8
    start = torch.randint(0, span + 1, (n, 2), generator=g)
    # Cross at least half the canvas along one axis, so that every frame moves.
    end = torch.randint(0, span + 1, (n, 2), generator=g)
    far = torch.where(start[:, 0] < span / 2, span, 0)
    end[:, 0] = torch.where((end[:, 0] - start[:, 0]).abs() < span / 2, far, end[:, 0])
    t = torch.linspace(0, 1, frames).view(1, frames, 1)
    pos = (start.view(n, 1, 2) + (end - start).view(n, 1, 2) * t).round().long()  # [n, frames, 2]
    videos = torch.zeros(n, frames, 1, size, size)
    for i in range(n):
        for f in range(frames):
            y, x = pos[i, f].tolist()
            videos[i, f, 0, y:y + 8, x:x + 8] = images[pick[i]]
    return videos, labels[pick]


def stutter(videos: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
    """The same frames with a temporal glitch per video: two neighbours swapped, or one frame repeated."""
    n, frames = videos.shape[:2]
    g = keyed_generator(seed, Purpose.DATA, n, frames)
    out = videos.clone()
    at = torch.randint(1, frames - 1, (n,), generator=g)
    swap = torch.rand(n, generator=g) < 0.5
    for i in range(n):
        f = int(at[i])
        if swap[i]:
            out[i, [f, f + 1]] = videos[i, [f + 1, f]]
        else:
            out[i, f + 1] = videos[i, f]
    return out


def moving_digit_pairs(n: int, *, frames: int = 6, size: int = 16, seed: int = 0):
    """Preference pairs: smooth (chosen) vs stuttering (rejected) videos of the same digit."""
    from genrl.preference.data import PreferencePairs

    videos, labels = moving_digit_videos(n, frames=frames, size=size, seed=seed)
    rejected = stutter(videos, seed=seed)
    # A slow digit can sit still for two frames: then the glitch changes nothing and the pair is dropped.
    differs = (videos != rejected).flatten(1).any(1)
    videos, rejected, labels = videos[differs], rejected[differs], labels[differs]
    return PreferencePairs(chosen=videos, rejected=rejected, contexts=labels.long(), margin=torch.zeros(len(labels)),
                           group=torch.arange(len(labels)), label_source=["stutter"] * len(labels),
                           source=f"moving digits (seed {seed})")


# ----------------------------------------------------------------------------- prompted motion (KVPO)
DIRECTIONS = ("right", "left", "up", "down")
# Unit step of each direction in (dy, dx) pixels: image rows grow downwards, so "up" is dy = -1.
DIRECTION_STEPS = ((0, 1), (0, -1), (-1, 0), (1, 0))
DIGIT = 8  # side of a digit image, in pixels

# Separate keyed streams of one data seed: which prompts, and how their clips are drawn.
_PROMPT_STREAM, _CLIP_STREAM = 1, 2


def direction_steps() -> torch.Tensor:
    """:data:`DIRECTION_STEPS` as a LongTensor ``[4, 2]`` (index with direction indices)."""
    return torch.tensor(DIRECTION_STEPS, dtype=torch.long)


@dataclass(frozen=True)
class MotionPrompt:
    """One digit moving one pixel per frame, in one direction per segment of ``segment_frames`` frames.

    Frame 0 is at the start position; frame ``t > 0`` is frame ``t - 1`` moved by the unit step of
    frame ``t``'s direction, so a prompt switch takes effect on the first frame of the new segment.
    """

    digit: int
    directions: tuple[int, ...]
    segment_frames: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "directions", tuple(int(d) for d in self.directions))
        if not 0 <= int(self.digit) <= 9:
            raise ValueError(f"digit: expected 0..9, got {self.digit}")
        if not self.directions or any(not 0 <= d < len(DIRECTIONS) for d in self.directions):
            raise ValueError(f"directions: expected a non-empty tuple of indices into {DIRECTIONS}, "
                             f"got {self.directions}")
        if self.segment_frames < 1:
            raise ValueError(f"segment_frames: expected >= 1, got {self.segment_frames}")

    @property
    def frames(self) -> int:
        return len(self.directions) * self.segment_frames

    @property
    def text(self) -> str:
        return f"a {self.digit} moving " + ", then ".join(DIRECTIONS[d] for d in self.directions)

    def conditions(self) -> torch.Tensor:
        """(digit, direction index) of every frame: LongTensor ``[frames, 2]``."""
        direction = torch.tensor(self.directions, dtype=torch.long).repeat_interleave(self.segment_frames)
        return torch.stack([torch.full_like(direction, int(self.digit)), direction], 1)

    def path(self) -> torch.Tensor:
        """Offset (dy, dx) of every frame from the start position: LongTensor ``[frames, 2]``."""
        steps = direction_steps()[self.conditions()[:, 1]]
        steps[0] = 0  # the first frame is the start position
        return steps.cumsum(0)

    def fits(self, size: int) -> bool:
        """Whether an 8x8 digit can make the whole path on a ``size`` canvas from some start position."""
        path = self.path()
        return bool(((path.max(0).values - path.min(0).values) <= size - DIGIT).all())


def check_motion_layout(segments: int, segment_frames: int, canvas: int) -> None:
    """Config check shared by the prompt source and the benchmark: ValueErrors name the field."""
    if segments < 1:
        raise ValueError(f"segments: must be >= 1, got {segments}")
    if canvas < DIGIT:
        raise ValueError(f"canvas: must be >= {DIGIT} (the digit's side), got {canvas}")
    if not 1 <= segment_frames <= canvas - DIGIT + 1:
        raise ValueError(f"segment_frames: expected 1..{canvas - DIGIT + 1} (a segment moves "
                         f"segment_frames - 1 px on a {canvas} px canvas), got {segment_frames}")


def motion_prompts(n: int, *, segments: int, segment_frames: int, size: int = 16, seed: int,
                   digits: Sequence[int] = tuple(range(10)), max_tries: int = 1000) -> list[MotionPrompt]:
    """``n`` prompts whose paths fit on the canvas, prompt ``i`` keyed by ``(seed, i)``.

    A digit is drawn uniformly from ``digits``; the directions uniformly among sequences whose
    consecutive segments differ (a prompt switch changes the motion) and whose path fits, by rejection.
    Keying per prompt makes the first ``k`` of ``n`` prompts the ``k`` prompts of a smaller set.
    """
    if segments < 1 or segment_frames < 1:
        raise ValueError(f"segments, segment_frames: expected >= 1, got {segments}, {segment_frames}")
    if segment_frames - 1 > size - DIGIT:
        raise ValueError(f"segment_frames: a segment of {segment_frames} frames moves {segment_frames - 1} px, "
                         f"more than an {DIGIT}x{DIGIT} digit can on a {size}x{size} canvas ({size - DIGIT} px)")
    if not digits or any(not 0 <= d <= 9 for d in digits):
        raise ValueError(f"digits: expected a non-empty subset of 0..9, got {list(digits)}")
    prompts = []
    for i in range(n):
        g = keyed_generator(seed, Purpose.DATA, _PROMPT_STREAM, i)
        digit = int(digits[int(torch.randint(len(digits), (1,), generator=g))])
        for _ in range(max_tries):
            seq = [int(torch.randint(len(DIRECTIONS), (1,), generator=g))]
            for _ in range(segments - 1):  # any direction but the previous one
                seq.append((seq[-1] + 1 + int(torch.randint(len(DIRECTIONS) - 1, (1,), generator=g))) % len(DIRECTIONS))
            prompt = MotionPrompt(digit, tuple(seq), segment_frames)
            if prompt.fits(size):
                break
        else:
            raise ValueError(f"segments: no path of {segments} segments of {segment_frames} frames fits a "
                             f"{size}x{size} canvas in {max_tries} tries; use fewer or shorter segments")
        prompts.append(prompt)
    return prompts


def render_clips(prompts: Sequence[MotionPrompt], *, size: int = 16, seed: int,
                 split: str = "generator", start: str = "random") -> torch.Tensor:
    """Ground-truth clips ``[n, frames, size, size]`` in [0, 1] of ``prompts``.

    Clip ``i`` (keyed by ``(seed, i)``) shows one real image of the prompted digit from ``split``,
    pasted at integer positions: a start position drawn uniformly among those from which the whole
    path stays inside the canvas (``start="random"``) or the one that centres the path (``"centred"``: a
    generator then has to choose only the handwriting, not where the digit appears), then one unit step
    per frame (:meth:`MotionPrompt.path`).
    """
    if not prompts:
        raise ValueError("render_clips: expected at least one prompt")
    frames = {p.frames for p in prompts}
    if len(frames) != 1:
        raise ValueError(f"render_clips: prompts have different frame counts {sorted(frames)}; render them apart")
    images, labels = digit_split(split)
    clips = torch.zeros(len(prompts), frames.pop(), size, size)
    for i, prompt in enumerate(prompts):
        g = keyed_generator(seed, Purpose.DATA, _CLIP_STREAM, i)
        members = torch.nonzero(labels == prompt.digit).flatten()
        image = images[members[int(torch.randint(len(members), (1,), generator=g))]]
        path = prompt.path()
        low, high = -path.min(0).values, size - DIGIT - path.max(0).values
        if (low > high).any():
            raise ValueError(f"render_clips: prompt {i} ({prompt.text!r}, {prompt.frames} frames) does not fit "
                             f"a {size}x{size} canvas")
        if start == "centred":  # the path's bounding box in the middle of the canvas: only the handwriting varies
            first = (low + high) // 2
        elif start == "random":
            first = torch.stack([torch.randint(int(lo), int(hi) + 1, (), generator=g) for lo, hi in zip(low, high)])
        else:
            raise ValueError(f"render_clips: start must be 'random' or 'centred', got {start!r}")
        for t, (y, x) in enumerate((first + path).tolist()):
            clips[i, t, y:y + DIGIT, x:x + DIGIT] = image
    return clips


def main(argv: list[str] | None = None) -> int:
    from genrl.preference.data import save_pairs

    p = argparse.ArgumentParser(description="Write moving-digit video preference pairs.")
    p.add_argument("--out", required=True, help="output: .parquet, .jsonl, or a folder (Arrow)")
    p.add_argument("--n", type=int, default=3000)
    p.add_argument("--frames", type=int, default=6)
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = Path(args.out)
    fmt = {".parquet": "parquet", ".jsonl": "jsonl"}.get(out.suffix, "arrow")
    pairs = moving_digit_pairs(args.n, frames=args.frames, size=args.size, seed=args.seed)
    save_pairs(pairs, out, fmt)
    print(f"[genrl] {len(pairs)} video pairs -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
