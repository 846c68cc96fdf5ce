"""Text prompts from a local file (:mod:`genrl.data.prompt_files`) as a prompt source for text-conditioned
image and video policies: ``sample`` draws row indices, ``items`` turns them into :class:`TextPrompt` s
(plain strings that carry their record's metadata, e.g. GenEval's ``tag`` and ``include``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from genrl.config.validate import option
from genrl.data.prompt_files import TextPrompt, load_prompt_records, resolve_data_path
from genrl.prompts.order import epoch_slice
from genrl.registry import PROMPTS


def _load(config: TextFilePrompts.Config) -> list[TextPrompt]:
    records = load_prompt_records(resolve_data_path(config.path), text_key=config.text_key, split=config.split)
    return records if config.limit is None else records[:config.limit]


@PROMPTS.register("text_prompts")
class TextFilePrompts:
    """Each step draws row indices (keyed by seed and step, without replacement within an epoch);
    ``items`` turns indices into the prompts the policy conditions on."""

    policies = ("flow_image", "flow_video")
    gives_text = True  # text, not class ids: a flow_image policy needs a pipeline base (checked in recipe validation)

    @dataclass
    class Config:
        path: str = option(help="Prompt file: .txt (one per line), .jsonl, .json, or a datasets save_to_disk "
                                "folder; relative = working directory, then project root.")
        text_key: str = option(default="prompt", help="Field of a .jsonl/.json record or datasets column holding the prompt.")
        split: str | None = option(default=None, help="Split of a DatasetDict folder (null for files and single Datasets).")
        limit: int | None = option(default=None, help="Use only the first N rows (null = all).")

        def validate(self) -> None:
            if not self.path:
                raise ValueError("path: required (a prompt file or datasets folder, e.g. data/prompts/simple_scenes.txt)")
            if not self.text_key:
                raise ValueError("text_key: must not be empty")
            if self.limit is not None and self.limit < 1:
                raise ValueError(f"limit: must be >= 1 or null, got {self.limit}")
            try:  # read it now, so a bad row is reported with the recipe, before any model is built
                _load(self)
            except (OSError, ValueError) as e:
                raise ValueError(f"path: {e}") from e

    def __init__(self, config: Config, *, seed: int) -> None:
        self.config, self.seed = config, seed
        self.records = _load(config)
        self.input_files = {"path": resolve_data_path(config.path)}  # content-hashed into the run's manifest

    def __len__(self) -> int:
        return len(self.records)

    def sample(self, step: int, n: int, *, round: int = 0) -> torch.Tensor:
        """Row indices of step ``step``: consecutive slices of a keyed permutation per epoch of the file.
        ``round`` > 0 (a dynamic-sampling refill): ``n`` keyed draws from all rows."""
        return epoch_slice(self.seed, step, n, len(self.records), round=round)

    def items(self, indices: torch.Tensor) -> list[TextPrompt]:
        return [self.records[int(i)] for i in indices.reshape(-1).tolist()]
