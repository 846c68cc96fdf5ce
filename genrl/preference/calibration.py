"""Calibration of a Bradley–Terry reward model: does sigma(r_a - r_b) match how often a wins?"""

from __future__ import annotations

import torch

from genrl.rng import keyed_generator


def reliability(r_chosen: torch.Tensor, r_rejected: torch.Tensor, *, bins: int = 10, seed: int = 0) -> dict:
    """Reliability table and expected calibration error of the model's pair probabilities.

    Each pair is shown in a random (keyed) order, so predicted probabilities cover [0, 1] and the
    outcome "first sample is the chosen one" is 0 or 1; a perfectly calibrated model has, in every
    probability bin, an empirical frequency equal to its mean prediction.
    """
    flip = torch.rand(len(r_chosen), generator=keyed_generator(seed, len(r_chosen))) < 0.5
    first_wins = (~flip).float()
    p = torch.sigmoid(torch.where(flip, r_rejected - r_chosen, r_chosen - r_rejected).float())
    edges = torch.linspace(0, 1, bins + 1)
    idx = torch.bucketize(p, edges[1:-1])
    table, ece = [], 0.0
    for b in range(bins):
        m = idx == b
        n = int(m.sum())
        if n == 0:
            table.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": 0, "predicted": None, "observed": None})
            continue
        pred, obs = float(p[m].mean()), float(first_wins[m].mean())
        ece += n / len(p) * abs(pred - obs)
        table.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": n, "predicted": pred, "observed": obs})
    return {"bins": table, "ece": ece, "n": len(p)}
