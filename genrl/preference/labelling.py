"""``genrl reward label RECIPE``: sample candidate pairs from a policy and label them with a cascade.

    groups   = contexts x groups_per_context; each group: samples_per_group samples of one context
    pairs    = all pairs within a group (or neighbours only)
    for rule in labeller (cheap, certain rules first; a judge last):
        decision = rule(a, b, context) in {a, b, tie, undecided}
        decided pairs leave the cascade with the rule's name as their label_source
    kept     = pairs decided a or b (as chosen / rejected); ties and undecided are counted, not kept

Rules are registered in ``LABEL_RULES`` (``genrl.preference.rules``): hard-constraint checks, a gap in
a measurable quality, and judges (a Python callable or an HTTP endpoint in front of a VLM).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from genrl.config.validate import ComponentSpec, RecipeError, component, option, to_dict
from genrl.preference.data import PreferencePairs, save_pairs
from genrl.registry import LABEL_RULES
from genrl.rng import Purpose

# Decisions a rule returns, one per pair.
PREFER_A, PREFER_B, TIE, UNDECIDED = 1, -1, 0, 2


@dataclass(kw_only=True)
class RuleConfig:
    """What every labelling rule's config has (rules subclass it)."""

    margin: float = option(default=0.0, help="Bradley–Terry margin of the pairs this rule decides (>= 0).")

    def validate(self) -> None:
        if self.margin < 0:
            raise ValueError("margin: must be >= 0")


@dataclass
class LabelRecipe:
    """A labelling recipe (``reward_models/*/label.yaml``)."""

    kind: Literal["preference_labels"] = option(help="Recipe kind; must be preference_labels.")
    labeller: list[ComponentSpec] = component(LABEL_RULES, help="The cascade of labelling rules, first to last.")
    policy_path: str | None = option(default=None, help="Checkpoint, run directory or base-model folder to sample from.")
    policy_recipe: str | None = option(default=None, help="Or: the pretraining recipe of a base generator "
                                                          "(built and cached).")
    contexts: list[int] = option(default_factory=lambda: list(range(10)), help="Class ids to generate for.")
    groups_per_context: int = option(default=100, help="Sampling groups per context.")
    samples_per_group: int = option(default=4, help="Samples per group; pairs are formed within a group.")
    pairing: Literal["all", "neighbours"] = option(default="all", help="all = every pair in a group (G(G-1)/2); "
                                                                       "neighbours = (0,1), (2,3), ... only.")
    seed: int = option(default=0, help="Seed of the sampling noise.")
    batch_size: int = option(default=500, help="Samples generated per forward pass.")
    num_threads: int | None = option(default=1, help="torch threads.")
    description: str = option(default="", help="Free text.")
    tags: list[str] = field(default_factory=list, metadata={"help": "Free-form labels."})

    def validate(self) -> None:
        if (self.policy_path is None) == (self.policy_recipe is None):
            raise ValueError("policy_path: give exactly one of policy_path and policy_recipe")
        if not self.labeller:
            raise ValueError("labeller: at least one labelling rule is needed")
        if self.samples_per_group < 2:
            raise ValueError("samples_per_group: must be >= 2 (pairs are formed within a group)")
        if self.groups_per_context < 1 or not self.contexts:
            raise ValueError("groups_per_context: need at least one group and one context")


def pair_index(samples_per_group: int, pairing: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Within-group index pairs (i, j), i < j."""
    g = samples_per_group
    if pairing == "neighbours":
        i = torch.arange(0, g - 1, 2)
        return i, i + 1
    i, j = torch.triu_indices(g, g, offset=1)
    return i, j


@dataclass
class CascadeResult:
    decisions: torch.Tensor  # [P] PREFER_A / PREFER_B / TIE / UNDECIDED
    stage: torch.Tensor  # [P] index of the deciding rule, -1 if undecided
    margin: torch.Tensor  # [P] margin given by the deciding rule
    counts: dict  # per rule: decided a, decided b, ties, failed


def run_cascade(rules: list, names: list[str], a: torch.Tensor, b: torch.Tensor, contexts) -> CascadeResult:
    """Pass the pairs through the rules in order; each pair stops at the first rule that decides it."""
    n = len(a)
    decisions = torch.full((n,), UNDECIDED, dtype=torch.long)
    stage = torch.full((n,), -1, dtype=torch.long)
    margin = torch.zeros(n)
    counts = {}
    pending = torch.arange(n)
    for k, (name, rule) in enumerate(zip(names, rules)):
        c = {"seen": len(pending), "a": 0, "b": 0, "tie": 0, "failed": 0}
        if len(pending):
            ctx = [contexts[i] for i in pending.tolist()] if isinstance(contexts, list) else contexts[pending]
            d = torch.as_tensor(rule(a[pending], b[pending], ctx), dtype=torch.long).reshape(-1)
            if len(d) != len(pending):
                raise ValueError(f"labelling rule {name!r} returned {len(d)} decisions for {len(pending)} pairs")
            bad = ~torch.isin(d, torch.tensor([PREFER_A, PREFER_B, TIE, UNDECIDED]))
            if bad.any():
                raise ValueError(f"labelling rule {name!r} returned decisions outside {{1, -1, 0, 2}}: "
                                 f"{sorted(set(d[bad].tolist()))}")
            c["failed"] = int(getattr(rule, "last_failures", 0))
            done = d != UNDECIDED
            decisions[pending[done]] = d[done]
            stage[pending[done]] = k
            margin[pending[done]] = float(getattr(rule.config, "margin", 0.0) or 0.0)
            c["a"], c["b"], c["tie"] = int((d == PREFER_A).sum()), int((d == PREFER_B).sum()), int((d == TIE).sum())
            pending = pending[~done]
        counts[name] = c
    return CascadeResult(decisions, stage, margin, counts)


def _load_policy(config: LabelRecipe, recipe_file: str | None):
    from genrl.sampling import load_policy_for_sampling

    if config.policy_recipe is not None:
        from genrl.pretrain.flow_image import flow_base_from_recipe

        path = flow_base_from_recipe(config.policy_recipe, referenced_from=recipe_file, key="policy_recipe")
    else:
        path = Path(config.policy_path).expanduser()
        if not path.exists():
            raise RecipeError(recipe_file, "policy_path", f"{path} does not exist (expected a checkpoint, run directory "
                                                     "or base-model folder)")
    policy, ckpt = load_policy_for_sampling(path)
    return policy, ckpt


def label_pairs(config: LabelRecipe, *, recipe_file: str | None = None, progress: bool = True
                ) -> tuple[PreferencePairs, dict]:
    """Sample candidates, label them; return the kept pairs and the labelling report."""
    from genrl.hashing import path_sha256
    from genrl.progress import progress as bar

    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    policy, ckpt = _load_policy(config, recipe_file)
    rules = [LABEL_RULES.get(spec.name)(spec.config, recipe_file=recipe_file, key=f"labeller[{i}]")
             for i, spec in enumerate(config.labeller)]
    names = [spec.name for spec in config.labeller]
    g = config.samples_per_group
    n_groups = len(config.contexts) * config.groups_per_context
    group_ctx = torch.tensor(config.contexts).repeat(config.groups_per_context)  # group k -> its context
    prompts = group_ctx.repeat_interleave(g)
    ids = torch.arange(len(prompts))
    with torch.no_grad():
        chunks = [policy.sample_ode(prompts[idx], idx, seed=config.seed, purpose=Purpose.DATA).cpu()
                  for idx in bar(ids.split(config.batch_size), desc="sample candidates", disable=not progress)]
        samples = torch.cat(chunks).float()
    if samples.dim() == 3:  # [N, H, W] images -> [N, 1, H, W]: every sample has a channel axis
        samples = samples.unsqueeze(1)
    i, j = pair_index(g, config.pairing)
    base = (torch.arange(n_groups) * g).view(-1, 1)
    ia, ib = (base + i).reshape(-1), (base + j).reshape(-1)
    pair_group = torch.arange(n_groups).repeat_interleave(len(i))
    ctx = group_ctx[pair_group]
    with torch.no_grad():
        result = run_cascade(rules, names, samples[ia], samples[ib], ctx)
    keep = (result.decisions == PREFER_A) | (result.decisions == PREFER_B)
    a_wins = result.decisions == PREFER_A
    chosen = torch.where(a_wins.view(-1, *[1] * (samples.dim() - 1)), samples[ia], samples[ib])[keep]
    rejected = torch.where(a_wins.view(-1, *[1] * (samples.dim() - 1)), samples[ib], samples[ia])[keep]
    pairs = PreferencePairs(chosen=chosen, rejected=rejected, contexts=ctx[keep], margin=result.margin[keep],
                            group=pair_group[keep], label_source=[names[s] for s in result.stage[keep].tolist()],
                            source="genrl reward label")
    ties = int((result.decisions == TIE).sum())
    undecided = int((result.decisions == UNDECIDED).sum())
    report = {"candidates": {"samples": len(samples), "groups": n_groups, "pairs": len(ia)},
              "kept": int(keep.sum()), "ties": ties, "undecided": undecided, "by_rule": result.counts,
              "policy": {"path": str(ckpt), "sha256": path_sha256(ckpt)}, "recipe": to_dict(config)}
    return pairs, report


def build_labels(config: LabelRecipe, out_dir: Path, *, recipe_file: str | None = None, fmt: str = "arrow",
                 progress: bool = True) -> dict:
    """Label and write ``out_dir/pairs`` (Arrow folder, or pairs.parquet / pairs.jsonl) + ``labels.json``."""
    pairs, report = label_pairs(config, recipe_file=recipe_file, progress=progress)
    return write_labels(pairs, report, Path(out_dir), fmt=fmt, kind="preference_labels")


def write_labels(pairs: PreferencePairs, report: dict, out_dir: Path, *, fmt: str, kind: str) -> dict:
    """Write ``out_dir/pairs`` (Arrow folder, or pairs.parquet / pairs.jsonl), ``labels.json`` (the report) and
    the ``checkpoint.json`` that marks a complete labelling artifact; refuses an empty result."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if not len(pairs):
        raise RuntimeError(f"no pair was decided by the labeller ({report['ties']} ties, {report['undecided']} "
                           f"undecided; per rule {report['by_rule']}); check the rules' thresholds")
    target = out_dir / {"arrow": "pairs", "parquet": "pairs.parquet", "jsonl": "pairs.jsonl"}[fmt]
    save_pairs(pairs, target, fmt)
    report["output"] = {"path": target.name, "format": fmt}
    (out_dir / "labels.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "checkpoint.json").write_text(json.dumps({"kind": kind, "pairs": len(pairs)}) + "\n")
    return report


def labels_from_recipe(recipe: str, *, referenced_from: str | None = None, key: str = "") -> Path:
    """Cache folder of the pairs that a labelling recipe makes (labelled now if not cached)."""
    from genrl.cache import cached_artifact, resolve_recipe_path
    from genrl.config.load import load_yaml

    path = resolve_recipe_path(recipe, referenced_from=referenced_from, key=key)
    if load_yaml(path).get("kind") == "scene_preference_labels":  # generated driving scenes (genrl.drive.labels)
        from genrl.drive.labels import scene_labels_from_recipe

        return scene_labels_from_recipe(str(path))
    return cached_artifact(path, LabelRecipe, "preference_labels",
                           lambda cfg, out: build_labels(cfg, out, recipe_file=str(path), progress=False))


import genrl.drive.labels  # noqa: E402, F401  (scene rules: trajectory_discrepancy, scene_safety)
import genrl.preference.rules  # noqa: E402, F401  (fills LABEL_RULES; imports the decision codes above)
