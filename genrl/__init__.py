"""genrl: RL fine-tuning of generative policies on one shared GRPO-family loop."""

__version__ = "0.1.0"
