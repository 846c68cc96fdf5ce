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
    results = trainer.train(resume=not args.fresh, until_step=args.until_step)
    if trainer.is_main:
        print(f"[genrl] run directory: {trainer.run_dir}")
        if results.get("final_checkpoint"):
            print(f"[genrl] final checkpoint: {results['final_checkpoint']}")
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    import torch

    from genrl.config.load import load_recipe, load_yaml
    from genrl.config.validate import RecipeError
    from genrl.pretrain import JOB_KINDS, pretrain_job

    torch.set_num_threads(args.num_threads)
    kind = load_yaml(args.recipe).get("kind")
    job = pretrain_job(kind)
    if job is None:
        raise RecipeError(str(args.recipe), "kind", f"expected one of {list(JOB_KINDS)}, got {kind!r}")
    schema, build = job
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
    """``genrl sample``: ODE samples of a checkpoint into an .npz (class ids, or text prompts from a file)."""
    import numpy as np
    import torch

    from genrl.sampling import load_policy_for_sampling

    torch.set_num_threads(args.num_threads)
    items = None
    if args.prompt_file:
        from genrl.data.prompt_files import load_prompt_records, resolve_data_path

        records = load_prompt_records(resolve_data_path(args.prompt_file))
        items = [r for r in records for _ in range(args.n)]
        labels = torch.arange(len(records)).repeat_interleave(args.n)
    else:
        try:
            prompts = [int(p) for p in args.prompts.split(",") if p.strip()]
        except ValueError:
            raise SystemExit(f"--prompts: expected comma-separated integers, got {args.prompts!r}") from None
        labels = torch.tensor(prompts).repeat_interleave(args.n)
    policy, source = load_policy_for_sampling(Path(args.path), use_ema=not args.no_ema)
    if getattr(getattr(policy, "backbone", None), "condition_kind", "class") == "text" and items is None:
        raise SystemExit(f"{source}: this model is prompted with text: give --prompt-file (.txt, .jsonl, ...)")
    ids = torch.arange(len(labels))
    chunks = []  # rows are keyed by sample id, so the batch size changes nothing but memory
    for lo in range(0, len(labels), args.batch):
        part = items[lo:lo + args.batch] if items is not None else None
        chunks.append(policy.sample_ode(labels[lo:lo + args.batch], ids[lo:lo + args.batch], seed=args.seed,
                                        items=part).cpu())
    images = torch.cat(chunks)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    prompt_array = np.array([str(t) for t in items]) if items is not None else labels.numpy()
    np.savez(out, images=images.numpy().astype(np.float32), prompts=prompt_array)
    print(f"[genrl] {len(labels)} samples from {source} -> {out}")
    return 0


def _schema_for(path: str):
    """Training recipes have a ``policy``; pretraining/reward-model recipes name their ``kind``."""
    from genrl.config.load import load_yaml
    from genrl.pretrain import pretrain_job
    from genrl.recipe import TrainRecipe

    kind = load_yaml(path).get("kind")
    if kind == "preference_labels":
        from genrl.preference.labelling import LabelRecipe

        return LabelRecipe
    if kind == "preference_reward":
        from genrl.preference.train import RewardTrainRecipe

        return RewardTrainRecipe
    if kind == "drive_collect":
        from genrl.drive.collect import CollectRecipe

        return CollectRecipe
    if kind == "scene_preference_labels":
        from genrl.drive.labels import SceneLabelRecipe

        return SceneLabelRecipe
    if kind == "drive_eval":
        from genrl.drive.evaluate import DriveEvalRecipe

        return DriveEvalRecipe
    job = pretrain_job(kind)
    return job[0] if job else TrainRecipe


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


def _reward(args: argparse.Namespace) -> int:
    """``genrl reward label`` (candidate pairs + labelling cascade) and ``genrl reward train`` (Bradley–Terry)."""
    from genrl.config.load import load_recipe

    if args.action == "label":
        from genrl.config.load import load_yaml

        if load_yaml(args.recipe).get("kind") == "scene_preference_labels":  # driving scenes: `genrl drive label`
            from genrl.drive.labels import main as label_main

            return label_main([str(args.recipe), *args.overrides, "--format", args.format,
                               *(["--out", args.out] if args.out else [])])
        from genrl.preference.labelling import LabelRecipe, build_labels

        config, _ = load_recipe(args.recipe, LabelRecipe, args.overrides)
        out = Path(args.out or "preference_pairs").resolve()
        report = build_labels(config, out, recipe_file=str(args.recipe), fmt=args.format)
        stages = "; ".join(f"{name}: {c['a'] + c['b']} decided, {c['tie']} ties"
                           + (f", {c['failed']} failed" if c["failed"] else "") for name, c in report["by_rule"].items())
        print(f"[genrl] {report['candidates']['pairs']} candidate pairs -> {report['kept']} kept "
              f"({report['ties']} ties, {report['undecided']} undecided); {stages}")
        print(f"[genrl] pairs: {out / report['output']['path']}; report: {out / 'labels.json'}")
        return 0
    from genrl.preference.train import RewardModelTrainer, RewardTrainRecipe

    config, _ = load_recipe(args.recipe, RewardTrainRecipe, args.overrides)
    trainer = RewardModelTrainer(config, recipe_file=str(args.recipe), run_dir=args.run_dir)
    result = trainer.train(resume=not args.fresh, until_step=args.until_step)
    if "stopped_at" in result:
        print(f"[genrl] stopped after update {result['stopped_at']} (checkpoint {result['checkpoint']})")
    return 0


def _launch(args: argparse.Namespace) -> int:
    import os
    import shlex
    import subprocess

    import torch

    from genrl.launch import LaunchSpec, launch_command, node_environment

    if args.accelerate_config and not Path(args.accelerate_config).is_file():
        raise FileNotFoundError(f"--accelerate-config: {args.accelerate_config} does not exist")
    spec = LaunchSpec(recipe=args.recipe, overrides=list(args.overrides), nproc_per_node=args.num_processes,
                      nnodes=args.nnodes, rdzv_endpoint=args.rdzv_endpoint, rdzv_id=args.rdzv_id,
                      accelerate_config=args.accelerate_config, use_gpu=torch.cuda.is_available() and not args.cpu,
                      run_dir=args.run_dir)
    cmd = launch_command(spec)
    print("[genrl] " + shlex.join(cmd), flush=True)
    if args.dry_run:
        return 0
    env = {**node_environment(spec), **os.environ}  # a GLOO_SOCKET_IFNAME set by the user wins
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.call(cmd, env=env)


def _slurm(args: argparse.Namespace) -> int:
    """``genrl slurm submit``: validate the recipe, render RUN_DIR/slurm/job.sbatch, sbatch it."""
    from genrl.slurm import SlurmError, SlurmJob, submit, validate, write_script

    try:
        job = SlurmJob(recipe=str(Path(args.recipe).resolve()), run_dir="", overrides=list(args.overrides),
                       nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                       processes_per_node=args.processes_per_node, cpus_per_task=args.cpus_per_task,
                       partition=args.partition, time=args.time, job_name=args.job_name,
                       accelerate_config=str(Path(args.accelerate_config).resolve()) if args.accelerate_config else None,
                       signal_seconds=args.signal_seconds, rdzv_port=args.rdzv_port,
                       sbatch_args=list(args.sbatch_arg), template=args.template)
        if not Path(args.recipe).is_file():
            raise FileNotFoundError(f"recipe {args.recipe} does not exist")
        if args.accelerate_config and not Path(args.accelerate_config).is_file():
            raise FileNotFoundError(f"--accelerate-config: {args.accelerate_config} does not exist")
        resolved = validate(args.recipe, job.overrides, world_size=job.world_size)
        job.run_dir = str(Path(args.run_dir or resolved["run_dir"]).expanduser().resolve())
        if args.dry_run:
            script = write_script(job)
            print(script.read_text(), end="")
            print(f"[genrl] dry run: script written to {script} (not submitted)", file=sys.stderr)
            return 0
        job_id = submit(job)
    except SlurmError as err:
        print(f"genrl: slurm: {err}", file=sys.stderr)
        return 2
    print(f"[genrl] submitted SLURM job {job_id}: {job.world_size} processes on {job.nodes} node(s), "
          f"script {job.script_path}")
    print(f"[genrl] log: {job.log_path(job_id)} (appended across requeues); run directory: {job.run_dir}")
    print(job_id)
    return 0


def _replay(args: argparse.Namespace) -> int:
    from genrl.replay import ReplayRefused, replay

    try:
        report = replay(Path(args.run_dir), until=args.until, out=Path(args.out) if args.out else None)
    except ReplayRefused as err:
        print(f"genrl: replay refused: {err}", file=sys.stderr)
        return 2
    for note in report.notes:
        print(f"[genrl] {note}")
    print(report.summary())
    return 0 if report.bitwise else 1


def _eval(args: argparse.Namespace) -> int:
    """``genrl eval``: every check before any model is loaded (exit 2 with the reason), then evaluate."""
    import torch

    from genrl.eval.benchmark import EvalError
    from genrl.eval.runner import plan_eval, run_eval

    torch.set_num_threads(args.num_threads)
    try:
        plan = plan_eval(args.path, args.benchmark, n=args.n, seeds=args.seeds, seed=args.seed,
                         data=args.data, overrides=args.overrides)
    except EvalError as err:
        print(f"genrl: eval error: {err}", file=sys.stderr)
        return 2
    result, out = run_eval(plan, args.out, use_ema=not args.no_ema)
    for name, m in result.metrics.items():
        ci = "" if m["ci95"] is None else f"  95% CI [{m['ci95'][0]:.4g}, {m['ci95'][1]:.4g}]"
        print(f"{name:<34}{m['mean']:>10.4g}{ci}")
    print(f"[genrl] {plan.name} on {plan.checkpoint} (seeds {plan.seeds}) -> {out / 'metrics.json'}, {out / 'report.html'}")
    return 0


def _compare(args: argparse.Namespace) -> int:
    """``genrl compare``: a side-by-side table of eval outputs, differences tested against the seed noise."""
    import json

    from genrl.eval.benchmark import EvalError
    from genrl.eval.compare import compare, comparison_markdown

    try:
        result = compare(args.results)
    except EvalError as err:
        print(f"genrl: compare error: {err}", file=sys.stderr)
        return 2
    text = comparison_markdown(result)
    print(text, end="")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.md").write_text(text)
        (out / "compare.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _export(args: argparse.Namespace) -> int:
    """``genrl export``: the trained weights of a run as a diffusers LoRA, a merged model or a PEFT adapter."""
    import torch

    from genrl.export import ExportError, export_run

    torch.set_num_threads(args.num_threads)
    try:
        out = export_run(args.path, args.format, args.out, use_ema=not args.no_ema)
    except ExportError as err:
        print(f"genrl: export error: {err}", file=sys.stderr)
        return 2
    print(f"[genrl] {args.format} export of {args.path} -> {out}")
    return 0


def _drive(args: argparse.Namespace) -> int:
    """``genrl drive collect|label|eval|curve``: highway-env scenes, scene preference pairs, closed-loop tables."""
    import torch

    from genrl.config.load import load_recipe

    torch.set_num_threads(1)
    if args.action == "collect":
        from genrl.drive.collect import collect_from_recipe

        path = collect_from_recipe(str(args.recipe), list(args.overrides), args.out)
        print(f"[genrl] scene data set: {path}")
    elif args.action == "label":
        from genrl.drive.labels import main as label_main

        return label_main([str(args.recipe), *args.overrides, *(["--out", args.out] if args.out else [])])
    elif args.action == "curve":
        from genrl.drive.curve import over_optimisation_curve
        from genrl.drive.evaluate import DriveEvalRecipe

        recipe, _ = load_recipe(args.recipe, DriveEvalRecipe, args.overrides)
        if args.workers is not None:
            recipe.workers = args.workers
        result = over_optimisation_curve(args.run_dir, recipe, recipe_file=str(args.recipe), samples=args.samples,
                                         selector=args.selector, evaluator=args.evaluator)
        out = Path(recipe.out)
        print((out / "curve.md").read_text())
        print(f"[genrl] selected step {result['selected']['step']} (score {result['selected']['score']:.3f}); "
              f"curve: {out / 'curve.png'}")
    else:
        from genrl.drive.evaluate import DriveEvalRecipe, run_eval

        recipe, _ = load_recipe(args.recipe, DriveEvalRecipe, args.overrides)
        if args.workers is not None:
            recipe.workers = args.workers
        table = run_eval(recipe, recipe_file=str(args.recipe), out=args.out,
                         rows=args.rows.split(",") if args.rows else None)
        from genrl.drive.evaluate import markdown_table

        print(markdown_table(table))
        print(f"[genrl] closed-loop table: {Path(args.out or recipe.out) / 'table.md'} ({table['seconds']} s)")
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
    t.add_argument("--until-step", type=int, default=None, metavar="N",
                   help="stop after step N (with a checkpoint); the run can be resumed later")
    t.set_defaults(func=_train)

    pt = sub.add_parser("pretrain", help="build a base model / reward model from its recipe")
    pt.add_argument("recipe")
    pt.add_argument("overrides", nargs="*")
    pt.add_argument("--out", default=None, help="output folder (default: the cache, keyed by recipe hash)")
    pt.add_argument("--num-threads", type=int, default=1)
    pt.set_defaults(func=_pretrain)

    s = sub.add_parser("sample", help="sample a checkpoint with the ODE sampler into an .npz")
    s.add_argument("path", help="run directory (latest checkpoint) or checkpoint directory")
    s.add_argument("--prompts", default="0,1,2,3,4,5,6,7,8,9", help="class ids (genrl's class-conditioned models)")
    s.add_argument("--prompt-file", default=None,
                   help="text prompts (.txt, .jsonl, .json, datasets folder) for pipeline models (SD3, FLUX, Wan)")
    s.add_argument("--n", type=int, default=100, help="samples per prompt")
    s.add_argument("--batch", type=int, default=64, help="samples per sampler call (memory; results do not change)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="samples.npz")
    s.add_argument("--no-ema", action="store_true", help="use the raw weights even if EMA weights exist")
    s.add_argument("--num-threads", type=int, default=1)
    s.set_defaults(func=_sample)

    rw = sub.add_parser("reward", help="preference reward models: label pairs, train a Bradley–Terry model")
    rw_sub = rw.add_subparsers(dest="action", required=True)
    rl = rw_sub.add_parser("label", help="sample candidate pairs from a policy and label them with a rule cascade")
    rl.add_argument("recipe")
    rl.add_argument("overrides", nargs="*")
    rl.add_argument("--out", default=None, help="output folder (default: ./preference_pairs)")
    rl.add_argument("--format", choices=["arrow", "parquet", "jsonl"], default="arrow", help="format of the pairs")
    rl.set_defaults(func=_reward)
    rt = rw_sub.add_parser("train", help="train a reward model (resumes automatically from RUN_DIR)")
    rt.add_argument("recipe")
    rt.add_argument("overrides", nargs="*")
    rt.add_argument("--run-dir", default=None, help="run directory (overrides the recipe's run_dir)")
    rt.add_argument("--fresh", action="store_true", help="ignore checkpoints already in the run directory")
    rt.add_argument("--until-step", type=int, default=None, metavar="N", help="stop after update N (with a checkpoint)")
    rt.set_defaults(func=_reward)

    la = sub.add_parser("launch", help="start `genrl train` on this node under accelerate launch (GPU) or torchrun (CPU)")
    la.add_argument("recipe")
    la.add_argument("overrides", nargs="*")
    la.add_argument("--accelerate-config", default=None, help="engine config (recipes/accelerate/*.yaml)")
    la.add_argument("--num-processes", type=int, default=1, help="processes on this node")
    la.add_argument("--nnodes", type=int, default=1)
    la.add_argument("--rdzv-endpoint", default=None, help="head node host:port (multi-node c10d rendezvous)")
    la.add_argument("--rdzv-id", default="genrl")
    la.add_argument("--run-dir", default=None)
    la.add_argument("--cpu", action="store_true", help="use torchrun on CPU even if GPUs are visible")
    la.add_argument("--dry-run", action="store_true", help="print the command only")
    la.set_defaults(func=_launch)

    sl = sub.add_parser("slurm", help="submit a training run to SLURM (sbatch script from slurm/*.sbatch)")
    sl_sub = sl.add_subparsers(dest="action", required=True)
    ss = sl_sub.add_parser("submit", help="validate RECIPE, write RUN_DIR/slurm/job.sbatch and sbatch it",
                           description="One SLURM task per node runs `genrl launch` (torchrun on CPU, accelerate "
                                       "launch on GPUs); several nodes meet in a c10d rendezvous on the first node. "
                                       "The job gets SIGUSR1 --signal-seconds before its time limit, checkpoints, "
                                       "requeues itself and resumes. Logs: RUN_DIR/slurm/<jobid>.out.")
    ss.add_argument("recipe")
    ss.add_argument("overrides", nargs="*", help="key.path=value overrides of recipe fields")
    ss.add_argument("--nodes", type=int, default=1)
    ss.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node (--gres=gpu:G when G > 0)")
    ss.add_argument("--processes-per-node", "--tasks-per-node", dest="processes_per_node", type=int, default=None,
                    help="training processes per node (default: the GPUs per node, or 1)")
    ss.add_argument("--cpus-per-task", type=int, default=None,
                    help="CPUs of the one task per node that runs all its processes (default: processes per node)")
    ss.add_argument("--partition", default=None)
    ss.add_argument("--time", default=None, help="time limit (sbatch --time, e.g. 04:00:00)")
    ss.add_argument("--job-name", default=None, help="default: genrl-<recipe name>")
    ss.add_argument("--run-dir", default=None, help="run directory (default: the recipe's run_dir)")
    ss.add_argument("--accelerate-config", default=None, help="engine config for GPUs (recipes/accelerate/*.yaml)")
    ss.add_argument("--signal-seconds", type=int, default=120,
                    help="SIGUSR1 this many seconds before the time limit (checkpoint + requeue); default 120")
    ss.add_argument("--rdzv-port", type=int, default=None,
                    help="multi-node rendezvous port on the first node (default: 29500 + job id %% 1000)")
    ss.add_argument("--sbatch-arg", action="append", default=[], metavar="OPTION",
                    help="extra #SBATCH option, repeatable (e.g. --sbatch-arg=--account=NAME)")
    ss.add_argument("--template", default=None, help="custom sbatch template (default: slurm/*_node.sbatch)")
    ss.add_argument("--dry-run", action="store_true", help="write and print the script, do not submit")
    ss.set_defaults(func=_slurm)

    dr = sub.add_parser("drive", help="driving (Gen-Drive on highway-env): collect scenes, label scene pairs, "
                                      "closed-loop evaluation")
    dr_sub = dr.add_subparsers(dest="action", required=True)
    dc = dr_sub.add_parser("collect", help="log expert highway-env episodes as a scene data set (train/validation/test)")
    dc.add_argument("recipe")
    dc.add_argument("overrides", nargs="*")
    dc.add_argument("--out", default=None, help="output folder (default: the recipe's out)")
    dc.set_defaults(func=_drive)
    dl = dr_sub.add_parser("label", help="generate scenes with a scene generator and label pairs with the cascade")
    dl.add_argument("recipe")
    dl.add_argument("overrides", nargs="*")
    dl.add_argument("--out", default=None, help="output folder (default: the recipe's out)")
    dl.set_defaults(func=_drive)
    de = dr_sub.add_parser("eval", help="closed-loop evaluation of planner rows on held-out seeds (resumable)")
    de.add_argument("recipe")
    de.add_argument("overrides", nargs="*")
    de.add_argument("--out", default=None, help="output folder (default: the recipe's out); re-running resumes")
    de.add_argument("--rows", default=None, help="comma-separated row names to run (the expert row always runs)")
    de.add_argument("--workers", type=int, default=None, help="processes (default: the recipe's workers)")
    de.set_defaults(func=_drive)
    dv = dr_sub.add_parser("curve", help="over-optimisation curve: every checkpoint of an RL run in closed loop on "
                                         "validation seeds; the best is copied to RUN_DIR/checkpoints/best")
    dv.add_argument("run_dir")
    dv.add_argument("recipe", help="a drive_eval recipe with the validation seeds (its rows: the expert only)")
    dv.add_argument("overrides", nargs="*")
    dv.add_argument("--samples", type=int, default=1, help="scenes per decision (default 1: the RL effect alone)")
    dv.add_argument("--selector", default="first", choices=["first", "evaluator", "random", "pdm"])
    dv.add_argument("--evaluator", default=None, help="scene evaluator (selector evaluator)")
    dv.add_argument("--workers", type=int, default=None)
    dv.set_defaults(func=_drive)

    rp = sub.add_parser("replay", help="re-execute a run from its manifest and check it step by step")
    rp.add_argument("run_dir")
    rp.add_argument("--until", type=int, default=None, metavar="STEP", help="replay the first STEP steps only")
    rp.add_argument("--out", default=None, help="replay directory (default: RUN_DIR-replay)")
    rp.set_defaults(func=_replay)

    r = sub.add_parser("recipe", help="check recipe files or explain the recipe schema")
    r.add_argument("action", choices=["check", "explain"])
    r.add_argument("recipes", nargs="*")
    r.set_defaults(func=_recipe)

    e = sub.add_parser("eval", help="evaluate a run directory or checkpoint on a benchmark (metrics.json + report)")
    e.add_argument("path", help="run directory (latest checkpoint) or checkpoint directory")
    e.add_argument("overrides", nargs="*", help="key=value options of the benchmark (e.g. judge_recipe=...)")
    e.add_argument("--benchmark", required=True, help="registered benchmark name (e.g. digits)")
    e.add_argument("--n", type=int, default=None, help="samples per prompt and seed (default: the benchmark's)")
    e.add_argument("--seeds", type=int, default=3, help="number of seeds: seed, seed+1, ... (default 3)")
    e.add_argument("--seed", type=int, default=None, help="first seed (default: the benchmark's)")
    e.add_argument("--data", default=None, help="data folder of benchmarks that read downloaded files")
    e.add_argument("--out", default=None, help="output folder (default: RUN_DIR/eval/<benchmark>/<step> for a "
                                                "run directory, else eval/<benchmark>/<checkpoint name>)")
    e.add_argument("--no-ema", action="store_true", help="use the raw weights even if EMA weights exist")
    e.add_argument("--num-threads", type=int, default=1)
    e.set_defaults(func=_eval)

    x = sub.add_parser("export", help="write a run's weights as a diffusers LoRA, a merged model or a PEFT adapter")
    x.add_argument("path", help="run directory (latest checkpoint) or checkpoint directory")
    x.add_argument("--format", required=True, choices=["diffusers-lora", "merged", "peft"],
                   help="diffusers-lora: pipeline.load_lora_weights(OUT); merged: from_pretrained(OUT) loads the whole "
                        "model with the adapters merged; peft: PeftModel.from_pretrained(base, OUT)")
    x.add_argument("--out", required=True, help="new (or empty) output folder")
    x.add_argument("--no-ema", action="store_true", help="export the raw weights even if EMA weights exist")
    x.add_argument("--num-threads", type=int, default=1)
    x.set_defaults(func=_export)

    c = sub.add_parser("compare", help="compare eval outputs of the same benchmark, first one = baseline")
    c.add_argument("results", nargs="+", help="genrl eval output folders or their metrics.json files")
    c.add_argument("--out", default=None, help="also write compare.md and compare.json into this folder")
    c.set_defaults(func=_compare)
    return p


def main(argv: list[str] | None = None) -> int:
    from genrl.config.validate import RecipeError
    from genrl.data.image_files import DataRowError
    from genrl.preference.data import PreferenceDataError
    from genrl.preference.models.base import RewardModelError
    from genrl.trainer.checkpoint import CheckpointError

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
    except (FileNotFoundError, CheckpointError, DataRowError, PreferenceDataError, RewardModelError) as err:
        print(f"genrl: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
