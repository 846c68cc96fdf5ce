"""Pretraining jobs that make the small base models and reward models the project's recipes use."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

JOB_KINDS = ("digit_classifier", "flow_image", "vlm_sft", "ar_video", "scene_diffusion")


def pretrain_job(kind: object) -> tuple[type, Callable[[object, Path], None]] | None:
    """(recipe schema, builder) of the pretraining job named by a recipe's ``kind``; None if unknown."""
    if kind == "flow_image":
        from genrl.pretrain.flow_image import FlowPretrainRecipe, build_flow_base

        return FlowPretrainRecipe, build_flow_base
    if kind == "digit_classifier":
        from genrl.pretrain.classifier import ClassifierRecipe, build_classifier

        return ClassifierRecipe, build_classifier
    if kind == "vlm_sft":
        from genrl.pretrain.vlm_sft import VLMSFTRecipe, build_vlm_sft

        return VLMSFTRecipe, build_vlm_sft
    if kind == "ar_video":
        from genrl.pretrain.ar_video import ARVideoPretrainRecipe, build_ar_video_base

        return ARVideoPretrainRecipe, build_ar_video_base
    if kind == "scene_diffusion":
        from genrl.pretrain.scene_diffusion import SceneDiffusionPretrainRecipe, build_scene_diffusion_base

        return SceneDiffusionPretrainRecipe, build_scene_diffusion_base
    return None
