"""Metrics of generated 8x8 digit images, each answering one question about a fine-tune.

* :func:`prompt_accuracy`: does the generator draw the digit it was asked for (judged by a
  classifier that was not the reward model)?
* :func:`per_prompt_diversity`: did RL collapse each prompt onto a single image? Reward
  maximisation tends to do that, so diversity is measured within a prompt, not across
  prompts (where the ten classes alone would keep it high).
* :func:`stroke_crispness`: how black-and-white the strokes are. The digits data is full of
  grey anti-aliased pixels, so this is a preference the pre-training data does not teach and
  only a reward can add.
* :func:`frechet_distance`: how far the distribution of samples has drifted from the real
  digits, in the feature space of a classifier (:meth:`DigitClassifier.features`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


@torch.no_grad()
def prompt_correct(
    classifier: nn.Module, images: torch.Tensor, prompts: torch.Tensor, *, batch_size: int = 512
) -> torch.Tensor:
    """Per image, whether the predicted class equals its prompt (class label): bool ``[B]``.

    Per-sample outcomes, not just their mean, so that evaluation can pool them over seeds, give
    a binomial interval and pass@k. Runs in eval mode without gradients, in batches; the
    classifier's training/eval mode is restored afterwards.
    """
    prompts = torch.as_tensor(prompts).long().reshape(-1)
    if images.shape[0] != prompts.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {prompts.shape[0]} prompts")
    if prompts.numel() == 0:
        raise ValueError("prompt_accuracy of an empty batch is undefined")
    was_training = classifier.training
    classifier.eval()
    try:
        predictions = torch.cat([classifier(chunk).argmax(-1).cpu() for chunk in images.split(batch_size)])
    finally:
        classifier.train(was_training)
    return predictions == prompts.cpu()


def prompt_accuracy(
    classifier: nn.Module, images: torch.Tensor, prompts: torch.Tensor, *, batch_size: int = 512
) -> float:
    """Fraction of ``images`` whose predicted class equals their prompt (see :func:`prompt_correct`)."""
    return prompt_correct(classifier, images, prompts, batch_size=batch_size).float().mean().item()


@torch.no_grad()
def per_prompt_diversity(images: torch.Tensor, prompts: torch.Tensor) -> float:
    """Mean over prompts of the mean pairwise Euclidean distance between that prompt's samples.

    Distances are in flattened pixel space. Prompts with fewer than two samples have no pairs
    and are skipped; ``ValueError`` if no prompt has two samples.
    """
    prompts = torch.as_tensor(prompts).reshape(-1)
    if images.shape[0] != prompts.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {prompts.shape[0]} prompts")
    flat = images.reshape(images.shape[0], -1).double()
    per_prompt = []
    for prompt in torch.unique(prompts):
        group = flat[prompts == prompt]
        if group.shape[0] >= 2:
            per_prompt.append(torch.pdist(group).mean())
    if not per_prompt:
        raise ValueError("per_prompt_diversity needs at least two samples of some prompt")
    return torch.stack(per_prompt).mean().item()


def stroke_crispness(images: torch.Tensor) -> torch.Tensor:
    """Per-image mean of ``|2x - 1|`` over pixels, with ``x`` clamped to ``[0, 1]``: ``[B]``.

    1.0 (the best value) for a pure black/white image, 0.0 for a uniformly mid-grey one;
    blurred or faint strokes score in between. Differentiable almost everywhere, so it can
    also serve as a reward or a loss.
    """
    x = images.reshape(images.shape[0], -1).clamp(0.0, 1.0)
    return (2.0 * x - 1.0).abs().mean(dim=1)


def _symmetric_sqrt_trace(a: np.ndarray, b: np.ndarray) -> float:
    """``tr(sqrt(a @ b))`` for symmetric PSD ``a`` and ``b``, via ``sqrt(a) b sqrt(a)``.

    ``a @ b`` is not symmetric, and ``scipy.linalg.sqrtm`` of it can return complex results
    with small imaginary parts from round-off. ``sqrt(a) b sqrt(a)`` is similar to ``a @ b``
    (same eigenvalues) but symmetric PSD, so its eigenvalues are real and non-negative up to
    round-off, which is clipped.
    """
    eigval, eigvec = np.linalg.eigh(a)
    sqrt_a = (eigvec * np.sqrt(np.clip(eigval, 0.0, None))) @ eigvec.T
    middle = sqrt_a @ b @ sqrt_a
    middle = (middle + middle.T) / 2.0
    return float(np.sqrt(np.clip(np.linalg.eigvalsh(middle), 0.0, None)).sum())


def frechet_distance(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``[Na, D]``, ``[Nb, D]``.

    ``|mu_a - mu_b|^2 + tr(C_a + C_b - 2 sqrt(C_a C_b))``, computed in float64 with an
    eigen-based symmetric square root (see :func:`_symmetric_sqrt_trace`), so no complex
    parts arise. Non-negative; 0 for identical sets. Each set needs at least two rows.
    """
    a = torch.as_tensor(feats_a).detach().cpu().double().reshape(feats_a.shape[0], -1).numpy()
    b = torch.as_tensor(feats_b).detach().cpu().double().reshape(feats_b.shape[0], -1).numpy()
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError(
            f"frechet_distance needs at least two samples per set, got {a.shape[0]} and {b.shape[0]}"
        )
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a = np.atleast_2d(np.cov(a, rowvar=False))
    cov_b = np.atleast_2d(np.cov(b, rowvar=False))
    value = float(
        ((mu_a - mu_b) ** 2).sum()
        + np.trace(cov_a)
        + np.trace(cov_b)
        - 2.0 * _symmetric_sqrt_trace(cov_a, cov_b)
    )
    return max(value, 0.0)
