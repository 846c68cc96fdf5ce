"""Advantage estimators: turn per-component rewards [N, C] into one advantage per sample."""

from genrl.advantages.estimators import AdvantageOutput, BatchNormalized, GroupRelative  # noqa: F401
