"""Preference labels for generated driving scenes: Gen-Drive's cascade and the scene labelling job.

    scenes   = rows of a scene data set (``genrl.drive.dataset``), each generated S times
    pairs    = pairs of generations of one scene (all, or neighbours)
    cascade  = trajectory_discrepancy -> scene_safety -> a judge (python_judge / http_judge)
    kept     = pairs decided a or b: chosen / rejected = future states [A, F, 4], context = packed scene [C]

Rules follow ``genrl.preference.rules``: ``rule(a, b, contexts) -> decisions`` with ``a``, ``b`` generated
scenes [P, A, F, 4] and ``contexts`` packed scene contexts [P, C]. They need the :class:`SceneSpec` to
unpack a context; the labelling job binds it (``rule.bind_spec``); unbound, a rule assumes the default
spec with A and F taken from the samples (and says so if the context does not fit).

Run the job with ``python -m genrl.drive.labels RECIPE --out DIR``; ``genrl reward train`` reads the
result through ``data.path: DIR/pairs``.
"""

from __future__ import annotations

import argparse
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from genrl.config.validate import ComponentSpec, RecipeError, component, option, to_dict
from genrl.drive import geometry as geo
from genrl.drive.scene import SceneSpec, actions_from_states, pack_context, unicycle_rollout, unpack_context
from genrl.drive.selectors import comfort_progress_judge  # noqa: F401  (re-exported: the default judge)
from genrl.preference.labelling import (
    PREFER_A,
    PREFER_B,
    TIE,
    UNDECIDED,
    RuleConfig,
    pair_index,
    run_cascade,
    write_labels,
)
from genrl.registry import LABEL_RULES
from genrl.rng import Purpose, keyed_normal

if __name__ == "__main__":  # `python -m genrl.drive.labels`: run the imported module (rules registered once)
    from genrl.drive.labels import main as _main

    raise SystemExit(_main())

GenerateFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (contexts [B, C], sample ids [B]) -> [B, A, F, 4]


def spec_for(spec: SceneSpec | None, samples: torch.Tensor, contexts: torch.Tensor) -> SceneSpec:
    """The bound spec, or the default one with A, F from the samples; checked against the context width."""
    if spec is None:
        spec = SceneSpec(num_agents=samples.shape[1], future_steps=samples.shape[2])
    if contexts.shape[-1] != spec.context_dim:
        raise ValueError(f"scene contexts have {contexts.shape[-1]} values, the scene spec {spec.to_dict()} packs "
                         f"{spec.context_dim}; bind the data set's spec (rule.bind_spec(spec); the scene labelling "
                         "job does this)")
    return spec


class SceneRule:
    """Shared plumbing of the scene rules: the bound spec and per-call details for the report."""

    config: RuleConfig

    def __init__(self, config: RuleConfig, **_: object) -> None:
        self.config = config
        self.spec: SceneSpec | None = None
        self.last_details: dict[str, int] = {}

    def bind_spec(self, spec: SceneSpec) -> None:
        self.spec = spec

    def _context(self, samples: torch.Tensor, contexts) -> tuple[SceneSpec, dict[str, torch.Tensor]]:
        contexts = torch.as_tensor(contexts, dtype=torch.float32)
        spec = spec_for(self.spec, samples, contexts)
        return spec, unpack_context(spec, contexts)


@LABEL_RULES.register("trajectory_discrepancy")
class TrajectoryDiscrepancyRule(SceneRule):
    """Gen-Drive's first stage: two ego plans that barely differ teach nothing -> tie (dropped).

    Plans differ clearly when FDE >= min_fde or ADE >= min_ade (``require: all``: both); those pairs go on
    (undecided), the others get ``similar`` (a tie by default).
    """

    @dataclass(kw_only=True)
    class Config(RuleConfig):
        min_ade: float = option(default=0.5, help="Mean ego displacement (m) that counts as a clear difference.")
        min_fde: float = option(default=1.0, help="Final ego displacement (m) that counts as a clear difference.")
        require: Literal["any", "all"] = option(default="any", help="any = ADE or FDE above its threshold "
                                                                     "suffices; all = both must be.")
        similar: Literal["tie", "undecided"] = option(default="tie", help="Decision for similar plans.")

        def validate(self) -> None:
            super().validate()
            if self.min_ade < 0 or self.min_fde < 0:
                raise ValueError("min_ade: min_ade and min_fde must be >= 0")

    def __call__(self, a: torch.Tensor, b: torch.Tensor, contexts) -> torch.Tensor:
        ade, fde = geo.plan_discrepancy(a.float(), b.float())
        big_a, big_f = ade >= self.config.min_ade, fde >= self.config.min_fde
        differ = (big_a & big_f) if self.config.require == "all" else (big_a | big_f)
        out = torch.full((len(a),), UNDECIDED, dtype=torch.long)
        out[~differ] = TIE if self.config.similar == "tie" else UNDECIDED
        self.last_details = {"similar": int((~differ).sum())}
        return out


@LABEL_RULES.register("scene_safety")
class SceneSafetyRule(SceneRule):
    """Hard checks in order: ego collision, then ego off-road, then a clear progress gap.

    At each check the scene that passes wins when the other fails; both failing -> ``both_unsafe``
    (undecided by default: the judge sees them). A pair that passes both checks is decided by progress
    along the route when gap >= min_progress_gap and gap >= (min_progress_ratio - 1) * |slower progress|
    (i.e. a ratio test when progress is positive); otherwise it is undecided.
    """

    @dataclass(kw_only=True)
    class Config(RuleConfig):
        check_collision: bool = option(default=True, help="Decide on ego collisions (boxes from the context's size).")
        check_off_road: bool = option(default=True, help="Decide on the ego leaving the road.")
        off_road_margin: float = option(default=geo.OFF_ROAD_MARGIN,
                                        help="Metres beyond half a lane width before the ego is off the road.")
        min_progress_gap: float | None = option(default=3.0, help="Progress difference (m) needed to decide "
                                                                  "(null = no progress stage).")
        min_progress_ratio: float = option(default=1.2, help="And: faster / slower progress ratio needed.")
        both_unsafe: Literal["undecided", "tie"] = option(default="undecided",
                                                          help="Decision when both scenes fail the same check.")

        def validate(self) -> None:
            super().validate()
            if self.min_progress_gap is not None and self.min_progress_gap < 0:
                raise ValueError("min_progress_gap: must be >= 0")
            if self.min_progress_ratio < 1:
                raise ValueError("min_progress_ratio: must be >= 1")
            if self.off_road_margin < 0:
                raise ValueError("off_road_margin: must be >= 0")

    def __call__(self, a: torch.Tensor, b: torch.Tensor, contexts) -> torch.Tensor:
        cfg = self.config
        a, b = a.float(), b.float()
        spec, ctx = self._context(a, contexts)
        out = torch.full((len(a),), UNDECIDED, dtype=torch.long)
        open_ = torch.ones(len(a), dtype=torch.bool)  # still to be decided by a later check
        both_code = TIE if cfg.both_unsafe == "tie" else UNDECIDED
        details = {}

        def decide(name: str, fail_a: torch.Tensor, fail_b: torch.Tensor) -> None:
            nonlocal open_
            win_a, win_b, both = open_ & ~fail_a & fail_b, open_ & fail_a & ~fail_b, open_ & fail_a & fail_b
            out[win_a], out[win_b], out[both] = PREFER_A, PREFER_B, both_code
            details[name], details[f"{name}_both"] = int((win_a | win_b).sum()), int(both.sum())
            open_ = open_ & ~fail_a & ~fail_b

        if cfg.check_collision:
            decide("collision", geo.ego_collision(a, ctx["size"], ctx["agent_mask"]),
                   geo.ego_collision(b, ctx["size"], ctx["agent_mask"]))
        if cfg.check_off_road:
            decide("off_road",
                   geo.ego_off_road(a, ctx["lanes"], ctx["lane_mask"], spec, margin=cfg.off_road_margin),
                   geo.ego_off_road(b, ctx["lanes"], ctx["lane_mask"], spec, margin=cfg.off_road_margin))
        if cfg.min_progress_gap is not None:
            start = ctx["history"][:, 0, -1, :2]
            pa, pb = geo.progress(a, ctx["route"], start), geo.progress(b, ctx["route"], start)
            gap = (pa - pb).abs()
            clear = open_ & (gap >= cfg.min_progress_gap) & (gap >= (cfg.min_progress_ratio - 1) * torch.minimum(
                pa, pb).abs())
            out[clear & (pa > pb)], out[clear & (pb > pa)] = PREFER_A, PREFER_B
            details["progress"] = int(clear.sum())
        self.last_details = details
        return out


# ------------------------------------------------------------------ the scene labelling job
@dataclass
class PerturbedLogConfig:
    """A generator without a model: the logged future re-rolled through the unicycle, the ego's actions
    shifted by keyed noise (a smooth offset over the horizon plus a little per-step noise)."""

    accel_std: float = option(default=1.0, help="Std of the ego's constant acceleration offset (m/s^2).")
    yaw_rate_std: float = option(default=0.05, help="Std of the ego's constant yaw-rate offset (rad/s).")
    step_noise: float = option(default=0.2, help="Per-step noise, as a fraction of the offset stds.")

    def validate(self) -> None:
        if min(self.accel_std, self.yaw_rate_std, self.step_noise) < 0:
            raise ValueError("accel_std: accel_std, yaw_rate_std and step_noise must be >= 0")


@dataclass
class SceneLabelRecipe:
    """A scene labelling recipe (``reward_models/scene_evaluator/label.yaml``)."""

    kind: Literal["scene_preference_labels"] = option(help="Recipe kind; must be scene_preference_labels.")
    labeller: list[ComponentSpec] = component(LABEL_RULES, help="The cascade of labelling rules, first to last.")
    data: str | None = option(default=None, help="Scene data set folder (`genrl.drive.dataset`: a DatasetDict + "
                                                 "scene_spec.json).")
    collect_recipe: str | None = option(default=None, help="Or: a `kind: drive_collect` recipe; its data set is "
                                                           "collected once and cached.")
    split: str = option(default="train", help="Split of the data set whose scenes are generated and labelled.")
    limit: int | None = option(default=None, help="Use the first N scenes of the split (null = all).")
    every: int = option(default=1, help="Use every n-th scene of the split (before limit): a subset spread over "
                                        "the families and seeds, which are stored one after the other.")
    generator: Literal["policy", "perturbed_log"] = option(
        default="policy", help="policy = the scene diffusion policy (generator_path / generator_recipe); "
                               "perturbed_log = the logged future with keyed ego perturbations (no model).")
    generator_path: str | None = option(default=None, help="Checkpoint or run directory of the scene policy.")
    generator_recipe: str | None = option(default=None, help="Or: its pretraining recipe (built and cached).")
    perturbed_log: PerturbedLogConfig = option(default_factory=PerturbedLogConfig,
                                               help="Options of the perturbed_log generator.")
    samples_per_scene: int = option(default=4, help="S: generations per scene; pairs are formed within a scene.")
    pairing: Literal["all", "neighbours"] = option(default="all", help="all = every pair of a scene's S "
                                                                       "generations; neighbours = (0,1), (2,3), ...")
    seed: int = option(default=0, help="Seed of the generation noise.")
    batch_size: int = option(default=256, help="Scenes generated per forward pass.")
    num_threads: int | None = option(default=1, help="torch threads.")
    out: str | None = option(default=None, help="Default output folder (the command line may override it).")
    description: str = option(default="", help="Free text.")
    tags: list[str] = field(default_factory=list, metadata={"help": "Free-form labels."})

    def validate(self) -> None:
        if (self.data is None) == (self.collect_recipe is None):
            raise ValueError("data: give exactly one of data and collect_recipe")
        if self.generator == "policy" and (self.generator_path is None) == (self.generator_recipe is None):
            raise ValueError("generator_path: give exactly one of generator_path and generator_recipe "
                             "(or generator: perturbed_log)")
        if not self.labeller:
            raise ValueError("labeller: at least one labelling rule is needed")
        if self.samples_per_scene < 2:
            raise ValueError("samples_per_scene: must be >= 2 (pairs are formed within a scene)")
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit: must be >= 1 or null")
        if self.every < 1:
            raise ValueError("every: must be >= 1")
        if self.batch_size < 1:
            raise ValueError("batch_size: must be >= 1")


def perturbed_log_generator(spec: SceneSpec, config: PerturbedLogConfig, seed: int) -> GenerateFn:
    """``generate(contexts, sample_ids)`` for scenes whose logged futures are known (looked up by context row).

    Every valid agent replays its logged actions (zero actions where the log ends); the ego's actions get
    a keyed offset, speeds are kept >= 0. The caller passes the logged futures with :func:`with_log`.
    """

    def generate(contexts: torch.Tensor, sample_ids: torch.Tensor, *, future: torch.Tensor,
                 future_mask: torch.Tensor) -> torch.Tensor:
        ctx = unpack_context(spec, contexts)
        current = ctx["history"][:, :, -1]  # [B, A, 4]
        actions = actions_from_states(current, future, spec.dt)
        prev_ok = torch.cat([ctx["history_mask"][:, :, -1:], future_mask[:, :, :-1]], 2)
        actions = actions * (future_mask & prev_ok)[..., None]
        z = keyed_normal((spec.future_steps + 1, 2), seed, Purpose.DATA, 0, sample_ids.tolist())
        scale = torch.tensor([config.accel_std, config.yaw_rate_std])
        ego = actions[:, 0] + (z[:, :1] + config.step_noise * z[:, 1:]) * scale
        speed = (current[:, 0, 3:4] + torch.cumsum(ego[..., 0], -1) * spec.dt).clamp_min(0)
        prev_speed = torch.cat([current[:, 0, 3:4], speed[:, :-1]], -1)
        ego = torch.stack([(speed - prev_speed) / spec.dt, ego[..., 1]], -1)
        actions = torch.cat([ego[:, None], actions[:, 1:]], 1)
        states = unicycle_rollout(current, actions, spec.dt)
        return states * ctx["agent_mask"][:, :, None, None]

    return generate


def _policy_generator(recipe: SceneLabelRecipe, recipe_file: str | None) -> tuple[GenerateFn, dict]:
    """The scene diffusion policy (loaded lazily: only this generator needs it)."""
    from genrl.cache import cached_artifact, resolve_recipe_path
    from genrl.config.load import load_yaml
    from genrl.hashing import path_sha256
    from genrl.pretrain import pretrain_job
    from genrl.sampling import load_policy_for_sampling

    if recipe.generator_recipe is not None:
        path = resolve_recipe_path(recipe.generator_recipe, referenced_from=recipe_file, key="generator_recipe")
        kind = load_yaml(path).get("kind")
        job = pretrain_job(kind)
        if job is None:
            raise RecipeError(recipe_file, "generator_recipe", f"{path}: kind {kind!r} is not a pretraining job")
        path = cached_artifact(path, job[0], kind, job[1])
    else:
        path = Path(recipe.generator_path).expanduser()
        if not path.exists():
            raise RecipeError(recipe_file, "generator_path", f"{path} does not exist (expected a checkpoint or run "
                                                             "directory of the scene diffusion policy)")
    policy, ckpt = load_policy_for_sampling(path)
    if not callable(getattr(policy, "generate", None)):
        raise RecipeError(recipe_file, "generator_path", f"{ckpt} holds a {type(policy).__name__}, which has no "
                                                         "generate(contexts, sample_ids, seed=, purpose=) method")

    def generate(contexts: torch.Tensor, sample_ids: torch.Tensor, **_: object) -> torch.Tensor:
        return policy.generate(contexts, sample_ids, seed=recipe.seed, purpose=Purpose.DATA)

    return generate, {"path": str(ckpt), "sha256": path_sha256(ckpt)}


def build_rules(recipe: SceneLabelRecipe, spec: SceneSpec, recipe_file: str | None) -> tuple[list, list[str]]:
    """Instantiate the cascade and bind the scene spec (scene rules; judges whose callable takes ``spec``)."""
    rules = [LABEL_RULES.get(c.name)(c.config, recipe_file=recipe_file, key=f"labeller[{i}]")
             for i, c in enumerate(recipe.labeller)]
    for rule in rules:
        if hasattr(rule, "bind_spec"):
            rule.bind_spec(spec)
        fn = getattr(rule, "fn", None)
        if callable(fn) and "spec" in inspect.signature(fn).parameters:
            rule.fn = functools.partial(fn, spec=spec)
    return rules, [c.name for c in recipe.labeller]


def label_scenes(recipe: SceneLabelRecipe, out_dir: Path, *, recipe_file: str | None = None,
                 generate: GenerateFn | None = None, fmt: str = "arrow") -> dict:
    """Generate S scenes per data-set scene, label their pairs with the cascade, write ``out_dir/pairs``
    (PreferencePairs), ``labels.json`` (counts per stage) and ``checkpoint.json``; return the report.

    ``generate(contexts [B, C], sample_ids [B]) -> [B, A, F, 4]`` (or a tuple whose first item it is, as
    ``SceneDiffusionPolicy.generate`` returns) replaces the recipe's generator.
    """
    import time

    from genrl.drive.dataset import load_scenes, read_spec, scene_data_folder, select
    from genrl.hashing import path_sha256
    from genrl.preference.data import PreferencePairs

    if recipe.num_threads:
        torch.set_num_threads(recipe.num_threads)
    t0 = time.perf_counter()
    data = scene_data_folder(recipe.data, recipe.collect_recipe, referenced_from=recipe_file, key="",
                             relative_to=Path(recipe_file).parent if recipe_file else None)
    spec = read_spec(data)
    scene, _ = load_scenes(data, recipe.split)
    scene = select(scene, torch.arange(0, len(scene["history"]), recipe.every)[:recipe.limit])
    contexts = pack_context(spec, scene)
    n, s = len(contexts), recipe.samples_per_scene
    rules, names = build_rules(recipe, spec, recipe_file)
    if generate is not None:
        gen_info: dict = {"kind": "callable", "name": getattr(generate, "__name__", type(generate).__name__)}
    elif recipe.generator == "perturbed_log":
        generate, gen_info = perturbed_log_generator(spec, recipe.perturbed_log, recipe.seed), {
            "kind": "perturbed_log", **to_dict(recipe.perturbed_log)}
    else:
        generate, gen_info = _policy_generator(recipe, recipe_file)
        gen_info["kind"] = "policy"

    rows = torch.arange(n).repeat_interleave(s)  # generation k -> its scene
    ids = torch.arange(n * s)
    chunks = []
    with torch.no_grad():
        for idx in ids.split(recipe.batch_size * s):
            r = rows[idx]
            extra = {"future": scene["future"][r], "future_mask": scene["future_mask"][r]} \
                if gen_info["kind"] == "perturbed_log" else {}
            out = generate(contexts[r], idx, **extra)
            out = out[0] if isinstance(out, tuple) else out  # ScenePolicy.generate: (states, ego plan)
            if tuple(out.shape) != (len(idx), *spec.sample_shape):
                raise ValueError(f"the scene generator returned shape {list(out.shape)}, expected "
                                 f"{[len(idx), *spec.sample_shape]} (the data set's scene spec)")
            chunks.append(out.detach().float().cpu())
    samples = torch.cat(chunks)
    if not torch.isfinite(samples).all():
        raise ValueError("the scene generator returned non-finite states")
    t_gen = time.perf_counter() - t0

    i, j = pair_index(s, recipe.pairing)
    base = (torch.arange(n) * s).view(-1, 1)
    ia, ib = (base + i).reshape(-1), (base + j).reshape(-1)
    group = torch.arange(n).repeat_interleave(len(i))
    with torch.no_grad():
        result = run_cascade(rules, names, samples[ia], samples[ib], contexts[group])
    details = {}
    for name, rule in zip(names, rules):
        if getattr(rule, "last_details", None):
            details[name] = dict(rule.last_details)
    keep = (result.decisions == PREFER_A) | (result.decisions == PREFER_B)
    a_wins = (result.decisions == PREFER_A).view(-1, 1, 1, 1)
    chosen = torch.where(a_wins, samples[ia], samples[ib])[keep]
    rejected = torch.where(a_wins, samples[ib], samples[ia])[keep]
    pairs = PreferencePairs(chosen=chosen, rejected=rejected, contexts=contexts[group][keep],
                            margin=result.margin[keep], group=group[keep],
                            label_source=[names[k] for k in result.stage[keep].tolist()],
                            source="genrl.drive.labels")
    report = {"candidates": {"scenes": n, "samples": len(samples), "pairs": len(ia)},
              "kept": int(keep.sum()), "ties": int((result.decisions == TIE).sum()),
              "undecided": int((result.decisions == UNDECIDED).sum()), "by_rule": result.counts,
              "details": details, "generator": gen_info,
              "data": {"path": str(data), "split": recipe.split, "sha256": path_sha256(data)},
              "scene_spec": spec.to_dict(), "recipe": to_dict(recipe),
              "seconds": {"generate": round(t_gen, 3), "total": round(time.perf_counter() - t0, 3)}}
    return write_labels(pairs, report, Path(out_dir), fmt=fmt, kind="scene_preference_labels")


def scene_labels_from_recipe(recipe: str, *, referenced_from: str | None = None, key: str = "") -> Path:
    """Cache folder of the pairs a scene labelling recipe makes (labelled now if not cached)."""
    from genrl.cache import cached_artifact, resolve_recipe_path

    path = resolve_recipe_path(recipe, referenced_from=referenced_from, key=key)
    return cached_artifact(path, SceneLabelRecipe, "scene_preference_labels",
                           lambda cfg, out: label_scenes(cfg, out, recipe_file=str(path)))


def main(argv: list[str] | None = None) -> int:
    """``python -m genrl.drive.labels RECIPE [--out DIR] [key=value ...]``."""
    from genrl.config.load import load_recipe

    parser = argparse.ArgumentParser(prog="python -m genrl.drive.labels", description=main.__doc__)
    parser.add_argument("recipe")
    parser.add_argument("--out", default=None, help="Output folder (default: the recipe's out, else scene_pairs).")
    parser.add_argument("--format", default="arrow", choices=["arrow", "parquet", "jsonl"])
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args(argv)
    config, _ = load_recipe(args.recipe, SceneLabelRecipe, args.overrides)
    out = Path(args.out or config.out or "scene_pairs").resolve()
    report = label_scenes(config, out, recipe_file=str(args.recipe), fmt=args.format)
    stages = "; ".join(f"{k}: {c['a'] + c['b']} decided, {c['tie']} ties" for k, c in report["by_rule"].items())
    print(f"[genrl] {report['candidates']['pairs']} candidate pairs of {report['candidates']['scenes']} scenes -> "
          f"{report['kept']} kept ({report['ties']} ties, {report['undecided']} undecided); {stages}")
    print(f"[genrl] pairs: {out / report['output']['path']}; report: {out / 'labels.json'}")
    return 0
