"""Text-context views of the labelled digit pairs, for image+text reward models and text-only baselines.

The digit pairs (``reward_models/digit_preference/label.yaml``) carry class-id contexts. An image+text
reward model (``image_text``) needs prompts instead; :func:`to_text_pairs` swaps each class id for a
prompt in words ("a handwritten seven", "draw the digit 7", ...; the template is picked by a keyed
draw on (seed, group), so the pairs of one sampling group share one prompt, as they shared one
context). Images, margins, groups and label sources are kept, so the two views rank the same pairs.

A text-only reward trainer (TRL's ``RewardTrainer``) cannot see images: :func:`trl_text_view`
replaces every image by a sentence naming the digit a judge classifier reads in it
("an image of the digit 7"), in TRL's explicit-prompt preference format (prompt/chosen/rejected).

    python -m genrl.preference.text_pairs --label-recipe reward_models/digit_preference/label.yaml \\
        --out runs/digit_image_text/pairs.parquet
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from genrl.preference.data import PreferencePairs, save_pairs
from genrl.preference.models.image_text import DIGIT_NAMES
from genrl.rng import Purpose, key_seed

PROMPT_TEMPLATES: tuple[str, ...] = (
    "a handwritten {name}",
    "draw the digit {digit}",
    "the number {name}, written by hand",
    "a clear image of a {name}",
)


def digit_prompt(digit: int, *, seed: int, key: int, templates: Sequence[str] = PROMPT_TEMPLATES) -> str:
    """The prompt for class ``digit``; the template is a pure function of (seed, key)."""
    if not 0 <= int(digit) <= 9:
        raise ValueError(f"digit_prompt: expected a digit 0..9, got {digit}")
    template = templates[key_seed(seed, Purpose.PROMPTS, int(key)) % len(templates)]
    return template.format(name=DIGIT_NAMES[int(digit)], digit=int(digit))


def to_text_pairs(pairs: PreferencePairs, *, seed: int = 0,
                  templates: Sequence[str] = PROMPT_TEMPLATES) -> PreferencePairs:
    """The same pairs with text contexts (one prompt per sampling group)."""
    if pairs.context_kind != "class":
        raise ValueError(f"to_text_pairs: expected class-id (digit) contexts, got {pairs.context_kind!r} contexts")
    prompts = [digit_prompt(c, seed=seed, key=g, templates=templates)
               for c, g in zip(pairs.contexts.tolist(), pairs.group.tolist())]
    return PreferencePairs(pairs.chosen, pairs.rejected, prompts, pairs.margin, pairs.group,
                           list(pairs.label_source), dict(pairs.extra), pairs.source)


def describe_digit(digit: int) -> str:
    """What a text-only model is told about an image: the digit it shows."""
    return f"an image of the digit {int(digit)}"


@torch.no_grad()
def judge_digits(images: torch.Tensor, classifier: Callable[[torch.Tensor], torch.Tensor],
                 batch_size: int = 1024) -> torch.Tensor:
    """The digit (argmax class) a classifier reads in each image ``[N, 1, 8, 8]`` -> ``[N]`` long."""
    return torch.cat([classifier(chunk).argmax(-1).cpu() for chunk in images.split(batch_size)])


def trl_text_view(pairs: PreferencePairs, chosen_digits: torch.Tensor, rejected_digits: torch.Tensor, *,
                  with_margin: bool = False):
    """A ``datasets.Dataset`` in TRL's explicit-prompt preference format: prompt, chosen, rejected
    (+ margin), label_source, group.

    TRL tokenizes ``prompt + chosen`` (plain concatenation), so the prompt ends with a space.
    """
    from datasets import Dataset

    if pairs.context_kind != "text":
        raise ValueError("trl_text_view: expected text contexts (see to_text_pairs)")
    if not len(chosen_digits) == len(rejected_digits) == len(pairs):
        raise ValueError("trl_text_view: one judged digit per chosen and per rejected image is needed")
    columns = {"prompt": [f"{c} " for c in pairs.contexts],
               "chosen": [describe_digit(d) for d in chosen_digits.tolist()],
               "rejected": [describe_digit(d) for d in rejected_digits.tolist()],
               "label_source": list(pairs.label_source), "group": pairs.group.tolist()}
    if with_margin:
        columns["margin"] = pairs.margin.tolist()
    return Dataset.from_dict(columns)


def main(argv: list[str] | None = None) -> int:
    """Write the text-context view of labelled digit pairs (the data of reward_models/digit_image_text)."""
    from genrl.preference.data import read_pairs

    ap = argparse.ArgumentParser(description=main.__doc__)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--pairs", help="class-context pairs on disk (e.g. OUT/pairs of `genrl reward label`)")
    src.add_argument("--label-recipe", help="or: a labelling recipe (its pairs are built once and cached)")
    ap.add_argument("--out", required=True, help="output file (.parquet or .jsonl) or Arrow folder")
    ap.add_argument("--seed", type=int, default=0, help="seed of the template choice")
    args = ap.parse_args(argv)
    if args.label_recipe:
        from genrl.preference.labelling import labels_from_recipe

        path = labels_from_recipe(args.label_recipe) / "pairs"
    else:
        path = Path(args.pairs)
    text = to_text_pairs(read_pairs(path), seed=args.seed)
    out = Path(args.out)
    fmt = {".parquet": "parquet", ".jsonl": "jsonl", ".json": "jsonl"}.get(out.suffix, "arrow")
    save_pairs(text, out, fmt)
    print(f"[genrl] {len(text)} text-context pairs -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
