"""Statistics of evaluation results: summaries with 95 % confidence intervals, the unbiased pass@k
estimator, and the rule ``genrl compare`` uses to call a difference real rather than seed noise.

Which interval a metric gets depends on what one of its values is (its *unit*):

* **per-seed** values (set-level metrics such as diversity or a Fréchet distance, one number per
  evaluation seed): Student-t interval ``mean ± t(0.975, n-1) · s / sqrt(n)`` over the seeds, with
  ``s`` the sample standard deviation (ddof = 1). The t quantile, not 1.96, because a handful of
  seeds is the normal case. With one seed there is no spread to measure: the interval is ``None``.
* **per-sample binary** outcomes (prompt correct or not, pooled over all samples of all seeds —
  every sample has its own keyed noise, so they are independent draws): the **Wilson score
  interval**. The normal ("Wald") interval collapses to zero width at 0 % or 100 % accuracy and
  leaves [0, 1] near them, which is exactly where fine-tuned models end up; Wilson does neither.
* **per-sample continuous** values (e.g. a per-image score): Student-t interval over the samples.
* **per-prompt** values (pass@k, one unbiased estimate per prompt): Student-t interval over prompts,
  clipped to [0, 1] (it is a probability).

The compare rule (:func:`welch_test`): two results differ beyond noise when Welch's unequal-variance
t-test on their (mean, std, n) gives a two-sided p < 0.05. For binary metrics this is the unpooled
two-proportion z-test up to the ``n/(n-1)`` in the sample variance. A metric with fewer than two
values on either side cannot be tested and is reported as such (never as "significant").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as _sp

CONFIDENCE = 0.95
ALPHA = 0.05

CI_RULE = (
    "95% intervals: Student-t over seeds for per-seed metrics, over samples for per-sample continuous "
    "metrics and over prompts for pass@k; Wilson score interval for per-sample binary metrics."
)
COMPARE_RULE = (
    "A difference is outside the seed noise when Welch's unequal-variance t-test on the two "
    "(mean, std, n) gives a two-sided p < 0.05; metrics with fewer than 2 values on a side are not tested."
)


@dataclass(frozen=True)
class Summary:
    """Mean, sample std (ddof = 1; 0 for a single value), count and a 95 % interval (``None`` when
    it cannot be estimated, e.g. from one seed), plus the name of the interval method."""

    mean: float
    std: float
    n: int
    ci_low: float | None
    ci_high: float | None
    method: str

    def to_dict(self) -> dict:
        ci = None if self.ci_low is None else [self.ci_low, self.ci_high]
        return {"mean": self.mean, "std": self.std, "n": self.n, "ci95": ci, "ci_method": self.method}

    @classmethod
    def from_dict(cls, data: dict) -> Summary:
        ci = data.get("ci95")
        return cls(float(data["mean"]), float(data["std"]), int(data["n"]),
                   None if ci is None else float(ci[0]), None if ci is None else float(ci[1]),
                   str(data.get("ci_method", "?")))


def _values(values: Sequence[float] | np.ndarray) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError("cannot summarise an empty set of values")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"cannot summarise non-finite values ({int((~np.isfinite(arr)).sum())} of {arr.size})")
    return arr


def _std(arr: np.ndarray) -> float:
    return float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def t_interval(values: Sequence[float] | np.ndarray, confidence: float = CONFIDENCE) -> Summary:
    """Mean with a Student-t interval; ``None`` bounds for a single value."""
    arr = _values(values)
    mean, std, n = float(arr.mean()), _std(arr), int(arr.size)
    if n < 2:
        return Summary(mean, std, n, None, None, "t")
    half = float(_sp.t.ppf(0.5 + confidence / 2, n - 1)) * std / math.sqrt(n)
    return Summary(mean, std, n, mean - half, mean + half, "t")


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``successes / n``."""
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"wilson_interval needs 0 <= successes <= n and n >= 1, got {successes} of {n}")
    z = float(_sp.norm.ppf(0.5 + confidence / 2))
    p, z2 = successes / n, z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def binary_summary(values: Sequence[float] | np.ndarray, confidence: float = CONFIDENCE) -> Summary:
    """Summary of 0/1 outcomes with a Wilson interval (raises if a value is not 0 or 1)."""
    arr = _values(values)
    if not np.all((arr == 0) | (arr == 1)):
        raise ValueError("binary_summary expects values that are all 0 or 1")
    lo, hi = wilson_interval(int(arr.sum()), int(arr.size), confidence)
    return Summary(float(arr.mean()), _std(arr), int(arr.size), lo, hi, "wilson")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al., 2021) from ``n`` samples of which ``c`` are correct.

    ``1 - C(n-c, k) / C(n, k)`` is the chance that ``k`` samples drawn without replacement from the
    ``n`` contain a correct one. Binomial coefficients overflow floats for realistic ``n``; the ratio
    equals ``prod_{i=n-c+1}^{n} (1 - k / i)``, a product of ``c`` factors in [0, 1] that stays exact
    to rounding.
    """
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and k >= 1, got n={n}, c={c}, k={k}")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per prompt, got {n}")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def pass_at_k_summary(counts: Sequence[tuple[int, int]], k: int, confidence: float = CONFIDENCE) -> Summary:
    """pass@k averaged over prompts, given ``(n, c)`` per prompt; t-interval over prompts."""
    s = t_interval([pass_at_k(n, c, k) for n, c in counts], confidence)
    if s.ci_low is None:
        return s
    return Summary(s.mean, s.std, s.n, max(0.0, s.ci_low), min(1.0, s.ci_high), "t")  # a probability


@dataclass(frozen=True)
class Difference:
    """``b - a`` with Welch's test: standard error, degrees of freedom, two-sided p and the verdict
    (``None`` when it cannot be tested)."""

    diff: float
    se: float | None
    df: float | None
    p_value: float | None
    significant: bool | None
    reason: str = ""

    def to_dict(self) -> dict:
        return {"diff": self.diff, "se": self.se, "df": self.df, "p_value": self.p_value,
                "significant": self.significant, "reason": self.reason}


def welch_test(a: Summary, b: Summary, alpha: float = ALPHA) -> Difference:
    """Welch's t-test of ``b.mean - a.mean`` from the two summaries (the compare rule)."""
    diff = b.mean - a.mean
    if a.n < 2 or b.n < 2:
        return Difference(diff, None, None, None, None, f"not tested: n = {a.n} vs {b.n}; needs >= 2 on each side")
    va, vb = a.std**2 / a.n, b.std**2 / b.n
    se = math.sqrt(va + vb)
    if se == 0.0:  # both sides constant: any difference is exact, none is noise
        p = 0.0 if diff != 0 else 1.0
        return Difference(diff, 0.0, None, p, diff != 0, "both sides have zero variance")
    df = (va + vb) ** 2 / ((va**2 / (a.n - 1) if va else 0.0) + (vb**2 / (b.n - 1) if vb else 0.0))
    p = float(2.0 * _sp.t.sf(abs(diff) / se, df))
    return Difference(diff, se, df, p, p < alpha)
