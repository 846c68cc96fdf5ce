"""The combined closed-loop driving score (defined in docs/driving.md before any result was reported).

In the spirit of nuPlan's closed-loop score: hard failures multiply the episode's score to zero, the
rest is a weighted mean of soft criteria. Per episode, in [0, 1]::

    score = no_collision * drivable * making_progress
            * (5 * progress + 5 * ttc_ok + 4 * speed_ok + 2 * comfortable) / 16

    no_collision    1 unless the ego crashed (any collision: highway-env does not assign fault)
    drivable        1 unless the ego ever left the lanes
    making_progress 1 if progress >= 0.2
    progress        min(1, ego progress / the IDM expert's progress on the same family and seed)
    ttc_ok          1 if the time to collision with the leader never fell below 0.95 s
    speed_ok        1 - share of ticks above the lane speed limit
    comfortable     1 if |longitudinal jerk| <= 4.13 m/s^3, |lateral acceleration| <= 4.89 m/s^2 and the
                    longitudinal acceleration stays within [-4.05, 2.40] m/s^2 (nuPlan's comfort bounds)

The constants below are the definition; changing them changes every reported number.
"""

from __future__ import annotations

import math

WEIGHTS = {"progress": 5.0, "ttc_ok": 5.0, "speed_ok": 4.0, "comfortable": 2.0}
MIN_PROGRESS = 0.2
TTC_BOUND_S = 0.95
MAX_JERK, MAX_LAT_ACC, MIN_LON_ACC, MAX_LON_ACC = 4.13, 4.89, -4.05, 2.40


def episode_score(m: dict, reference_progress_m: float) -> dict[str, float]:
    """The score and its terms for one episode's raw metrics (``genrl.drive.closed_loop.run_episode``)."""
    progress = min(1.0, max(0.0, m["progress_m"]) / reference_progress_m) if reference_progress_m > 0 else 1.0
    terms = {
        "no_collision": 0.0 if m["collision"] else 1.0,
        "drivable": 0.0 if m["off_road"] else 1.0,
        "making_progress": 1.0 if progress >= MIN_PROGRESS else 0.0,
        "progress": progress,
        "ttc_ok": 1.0 if m["min_ttc"] >= TTC_BOUND_S else 0.0,
        "speed_ok": 1.0 - float(m["speed_over_limit_share"]),
        "comfortable": 1.0 if (m["max_abs_jerk"] <= MAX_JERK and m["max_abs_lat_acc"] <= MAX_LAT_ACC
                                and m["min_acc"] >= MIN_LON_ACC and m["max_acc"] <= MAX_LON_ACC) else 0.0,
    }
    weighted = sum(WEIGHTS[k] * terms[k] for k in WEIGHTS) / sum(WEIGHTS.values())
    terms["score"] = terms["no_collision"] * terms["drivable"] * terms["making_progress"] * weighted
    return terms


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its normal 95 % interval."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    mean = sum(values) / n
    if n == 1:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, 1.96 * math.sqrt(var / n)
