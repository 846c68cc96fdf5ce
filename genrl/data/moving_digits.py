"""Moving-digit videos from the real handwritten digits, and video preference pairs on them.

A video is one digit of the ``reward`` split drifting across a blank canvas at a constant velocity.
The planted preference is temporal coherence: the chosen video is the smooth one, the rejected video
shows the *same frames* with two of them swapped or one repeated (a stutter), so no single frame
tells them apart — a reward model has to look at motion. Until genrl has a video generator this is
the video reward model's data (``reward_models/moving_digits_video``)::

    python -m genrl.data.moving_digits --out data/moving_digit_pairs.parquet
"""

from __future__ import annotations

import argparse
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
