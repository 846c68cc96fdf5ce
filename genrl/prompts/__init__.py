"""Prompt sources: what each training step conditions on."""

from genrl.prompts.classes import ClassPrompts  # noqa: F401
from genrl.prompts.driving_scenes import DrivingScenePrompts  # noqa: F401
from genrl.prompts.moving_digits import MovingDigitPrompts  # noqa: F401
from genrl.prompts.text_files import TextFilePrompts  # noqa: F401
from genrl.prompts.visual_arithmetic import VisualArithmeticPrompts  # noqa: F401
