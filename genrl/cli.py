"""The ``genrl`` command line: train, pretrain, sample, recipe check/explain."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _train(args: argparse.Namespace) -> int:
    from genrl.config.load import load_recipe
    from genrl.recipe import TrainRecipe
    from genrl.trainer.loop import Trainer

    recipe, _ = load_recipe(args.recipe, TrainRecipe, args.overrides)
    run_dir = args.resume if isinstance(args.resume, str) else args.run_dir
    trainer = Trainer(recipe, recipe_file=str(args.recipe), run_dir=run_dir)
    results = trainer.train(resume=not args.fresh)
    if trainer.is_main:
        print(f"[genrl] run directory: {trainer.run_dir}")
        if results.get("final_checkpoint"):
            print(f"[genrl] final checkpoint: {results['final_checkpoint']}")
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    import torch

    from genrl.config.load import load_recipe, load_yaml
    from genrl.config.validate import RecipeError

    torch.set_num_threads(args.num_threads)
    kind = load_yaml(args.recipe).get("kind")
    if kind == "flow_image":
        from genrl.pretrain.flow_image import FlowPretrainRecipe as schema
        from genrl.pretrain.flow_image import build_flow_base as build
    elif kind == "digit_classifier":
        from genrl.pretrain.classifier import ClassifierRecipe as schema
        from genrl.pretrain.classifier import build_classifier as build
    else:
        raise RecipeError(str(args.recipe), "kind", f"expected one of ['digit_classifier', 'flow_image'], got {kind!r}")
    if args.out is None and not args.overrides:
        from genrl.cache import cached_artifact

        path = cached_artifact(Path(args.recipe), schema, kind, build)
    else:
        config, _ = load_recipe(args.recipe, schema, args.overrides)
        path = Path(args.out or "pretrained").resolve()
        path.mkdir(parents=True, exist_ok=True)
        build(config, path)
    print(f"[genrl] {kind} checkpoint: {path}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from genrl.sampling import load_policy_for_sampling

    torch.set_num_threads(args.num_threads)
    try:
        prompts = [int(p) for p in args.prompts.split(",") if p.strip()]
    except ValueError:
        raise SystemExit(f"--prompts: expected comma-separated integers, got {args.prompts!r}") from None
    policy, source = load_policy_for_sampling(Path(args.path), use_ema=not args.no_ema)
    labels = torch.tensor(prompts).repeat_interleave(args.n)
    images = policy.sample_ode(labels, torch.arange(len(labels)), seed=args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, images=images.cpu().numpy().astype(np.float32), prompts=labels.numpy())
    print(f"[genrl] {len(labels)} samples from {source} -> {out}")
    return 0


def _schema_for(path: str):
    """Training recipes have a ``policy``; pretraining/reward-model recipes name their ``kind``."""
    from genrl.config.load import load_yaml

    data = load_yaml(path)
    kind = data.get("kind")
    if kind == "flow_image":
        from genrl.pretrain.flow_image import FlowPretrainRecipe

        return FlowPretrainRecipe
    if kind == "digit_classifier":
        from genrl.pretrain.classifier import ClassifierRecipe

        return ClassifierRecipe
    from genrl.recipe import TrainRecipe

    return TrainRecipe


def _recipe(args: argparse.Namespace) -> int:
    from genrl.cache import check_references
    from genrl.config.load import load_recipe
    from genrl.config.validate import describe
    from genrl.recipe import TrainRecipe

    if args.action == "explain":
        print(describe(TrainRecipe))
        return 0
    for path in args.recipes:
        _, resolved = load_recipe(path, _schema_for(path))
        check_references(resolved, path)
        print(f"ok  {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="genrl", description="RL fine-tuning of generative policies.")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a recipe (resumes automatically if RUN_DIR has a checkpoint)")
    t.add_argument("recipe")
    t.add_argument("overrides", nargs="*", help="key.path=value overrides of recipe fields")
    t.add_argument("--run-dir", default=None, help="run directory (overrides the recipe's run_dir)")
    t.add_argument("--resume", nargs="?", const=True, default=None, metavar="RUN_DIR",
                   help="resume RUN_DIR (default: the recipe's run_dir) from its latest checkpoint")
    t.add_argument("--fresh", action="store_true", help="ignore checkpoints already in the run directory")
    t.set_defaults(func=_train)

    pt = sub.add_parser("pretrain", help="build a base model / reward model from its recipe")
    pt.add_argument("recipe")
    pt.add_argument("overrides", nargs="*")
    pt.add_argument("--out", default=None, help="output folder (default: the cache, keyed by recipe hash)")
    pt.add_argument("--num-threads", type=int, default=1)
    pt.set_defaults(func=_pretrain)

    s = sub.add_parser("sample", help="sample a checkpoint with the ODE sampler into an .npz")
    s.add_argument("path", help="run directory (latest checkpoint) or checkpoint directory")
    s.add_argument("--prompts", default="0,1,2,3,4,5,6,7,8,9")
    s.add_argument("--n", type=int, default=100, help="samples per prompt")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="samples.npz")
    s.add_argument("--no-ema", action="store_true", help="use the raw weights even if EMA weights exist")
    s.add_argument("--num-threads", type=int, default=1)
    s.set_defaults(func=_sample)

    r = sub.add_parser("recipe", help="check recipe files or explain the recipe schema")
    r.add_argument("action", choices=["check", "explain"])
    r.add_argument("recipes", nargs="*")
    r.set_defaults(func=_recipe)
    return p


def main(argv: list[str] | None = None) -> int:
    from genrl.config.validate import RecipeError

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come after options (`genrl train R --run-dir D trainer.lr=1e-4`)
    bad = [e for e in extra if e.startswith("-") or "=" not in e or not hasattr(args, "overrides")]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    try:
        return args.func(args)
    except RecipeError as err:
        print(f"genrl: recipe error: {err}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:
        print(f"genrl: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
