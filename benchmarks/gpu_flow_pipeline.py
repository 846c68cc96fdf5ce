"""GPU benchmark: Flow-GRPO steps of an SD3.5-Medium-size transformer through genrl's real pipeline path.

    python benchmarks/gpu_flow_pipeline.py [--size real|tiny] [--group 9] [--steps 3] [--out DIR]

Builds a ``StableDiffusion3Pipeline`` whose transformer is SD3.5-Medium's published config at full size
(random init; ``genrl.models.pipelines_tiny.real_size_components``) next to the smallest text encoders and
VAE that fit it, saves it with ``save_pretrained``, and trains ``recipes/models/sd35_medium_flow_grpo.yaml``
on it (LoRA r 32, bf16 weights, CFG 4.5, 10 sampling steps, 9 trained) for a few steps: one prompt, a
group of ``--group`` images at 512 px, one optimizer update per step; once with gradient checkpointing
and once without. Reward: JPEG compressibility (the PickScore weights are not on the machine);
``kl_beta`` 0 so that the update does exactly forward + backward.

Reported per configuration (the last step; the first ones warm up): rollout / update / step seconds,
images per second, peak CUDA memory, and model FLOPs utilisation. FLOPs are counted with
``torch.utils.flop_counter`` on one network call of the policy (``forward_chunk`` rows conditioned and the
same rows unconditioned: CFG is batched into one call): the update does one such call per trained step,
forward + activation gradients (2x the forward; weight gradients only for the LoRA weights, ~0.3% here,
left out); the rollout does one per sampling step. Recomputation under gradient checkpointing is not counted (it is overhead).
A benchmark, not a test: it prints and writes JSON; it asserts nothing. Not part of CI.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RECIPE = ROOT / "recipes" / "models" / "sd35_medium_flow_grpo.yaml"
PEAK_BF16 = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "H800": 989e12, "A100": 312e12}  # dense


def peak_flops(name: str) -> float | None:
    for key in sorted(PEAK_BF16, key=len, reverse=True):
        if key in name:
            return PEAK_BF16[key]
    return None


def build_pipeline(size: str, out: Path, device: str) -> float:
    from diffusers import StableDiffusion3Pipeline

    from genrl.models.pipelines_tiny import build_tiny_pipeline, real_size_components

    t0 = time.perf_counter()
    if size == "tiny":
        build_tiny_pipeline("sd3", out)
    else:
        with torch.device(device):
            comps = real_size_components("sd3.5-medium", dtype=torch.bfloat16)
        StableDiffusion3Pipeline(**comps).save_pretrained(str(out))
        del comps
        torch.cuda.empty_cache() if device == "cuda" else None
    return time.perf_counter() - t0


def recipe_for(pipe_dir: Path, run_dir: Path, *, size: str, group: int, steps: int, ckpt: bool, device: str) -> dict:
    data = yaml.safe_load(RECIPE.read_text())
    res = 32 if size == "tiny" else 512
    data["policy"]["pipeline"].update(path=str(pipe_dir), height=res, width=res,
                                      max_sequence_length=16 if size == "tiny" else 256,
                                      dtype="float32" if device == "cpu" else "bfloat16")
    data["policy"].update(forward_chunk=group, gradient_checkpointing=ckpt)
    data["rewards"] = [{"name": "jpeg_compressibility"}]
    data["objective"]["kl_beta"] = 0.0
    data["trainer"].update(steps=steps, prompts_per_step=1, group_size=group, minibatch_size=group,
                           micro_batch_size=group, checkpoint_every=0)
    data.update(device=device, run_dir=str(run_dir), mixed_precision="no" if device == "cpu" else "bf16")
    data["logging"] = {"tensorboard": False, "progress": False}
    return data


def network_flops(policy, group: int) -> float:
    """FLOPs of one policy network call of ``group`` rows, forward only."""
    from torch.utils.flop_counter import FlopCounterMode

    from genrl.data.prompt_files import TextPrompt

    cond = policy.backbone.condition(torch.arange(group), [TextPrompt(f"prompt {i}") for i in range(group)])
    x = torch.randn(group, *policy.image_shape, device=policy.device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        policy.backbone.network(policy.transformer, x, torch.full((group,), 0.5, device=policy.device), cond)
    return float(counter.get_total_flops())


def _median_s(fn, reps: int, device: str) -> float:
    import statistics

    times = []
    for i in range(reps + 2):  # two warm-up calls
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def compute_floor(trainer, group: int, reps: int = 5) -> dict:
    """The same network calls with no framework around them (same module, rows, dtype, autocast; ``group`` =
    the rows of one call, both CFG branches): no-grad forward (LoRA on, and the bare base model), and
    forward + backward to the LoRA weights."""
    from genrl.data.prompt_files import TextPrompt

    policy, device = trainer.policy, trainer.policy.device.type
    model = policy.engine_model
    cond = policy.backbone.condition(torch.arange(group), [TextPrompt(f"prompt {i}") for i in range(group)])
    x = torch.randn(group, *policy.image_shape, device=policy.device)
    sig = torch.full((group,), 0.5, device=policy.device)

    def fwd() -> None:
        with torch.no_grad(), trainer._autocast():
            policy.backbone.network(model, x, sig, cond)

    def bare() -> None:
        with policy.transformer.disable_adapter():
            fwd()

    def fwd_bwd() -> None:
        model.train()
        with trainer._autocast():
            out = policy.backbone.network(model, x, sig, cond).float()
        out.square().mean().backward()

    floor = {"fwd_s": _median_s(fwd, reps, device), "bare_fwd_s": _median_s(bare, reps, device),
             "fwd_bwd_s": _median_s(fwd_bwd, reps, device)}
    trainer.optimizer.zero_grad(set_to_none=True)
    return floor


def run_config(pipe_dir: Path, work: Path, name: str, *, size: str, group: int, steps: int, ckpt: bool,
               device: str) -> dict:
    from genrl.config.validate import build
    from genrl.recipe import TrainRecipe
    from genrl.trainer.loop import Trainer
    from tests.helpers import reset_accelerate

    reset_accelerate()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    data = recipe_for(pipe_dir, work / name, size=size, group=group, steps=steps, ckpt=ckpt, device=device)
    t0 = time.perf_counter()
    trainer = Trainer(build(TrainRecipe, data, file=str(RECIPE)), recipe_file=str(RECIPE), run_dir=str(work / name))
    load_s = time.perf_counter() - t0
    trainer.train()
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    rows = [json.loads(line) for line in (work / name / "metrics.jsonl").read_text().splitlines()]
    last = rows[-1]
    policy = trainer.policy
    cfg = policy.config
    trained = len(trainer.explorer.plan(0, cfg.num_steps).train_steps)
    branches = 2 if cfg.guidance_scale != 1.0 else 1
    call_rows = group * branches  # one call carries the chunk conditioned and unconditioned (CFG)
    f_call = network_flops(policy, call_rows)
    update_flops = f_call * trained * 2  # forward + activation gradients
    rollout_flops = f_call * cfg.num_steps
    floor = compute_floor(trainer, call_rows)
    rollout_floor = floor["fwd_s"] * cfg.num_steps
    update_floor = floor["fwd_bwd_s"] * trained
    n_params = sum(p.numel() for p in policy.transformer.parameters())
    n_train = sum(p.numel() for p in policy.trainable_parameters().values())
    peak_tf = peak_flops(torch.cuda.get_device_name()) if device == "cuda" else None
    out = {
        "config": name, "gradient_checkpointing": ckpt, "group": group, "load_s": round(load_s, 1),
        "transformer_params": n_params, "trainable_params": n_train, "trained_steps": trained,
        "num_steps": cfg.num_steps, "cfg_branches": branches, "rows_per_call": call_rows,
        "rollout_s": last["time/rollout"], "reward_s": last["time/reward"], "update_s": last["time/update"],
        "step_s": last["time/step"], "images_per_s": group / last["time/step"],
        "peak_mem_gib": peak, "flops_per_call": f_call, "update_tflops": update_flops / 1e12,
        "update_tflop_per_s": update_flops / last["time/update"] / 1e12,
        "rollout_tflop_per_s": rollout_flops / last["time/rollout"] / 1e12,
        "floor": floor, "rollout_over_floor": last["time/rollout"] / rollout_floor,
        "update_over_floor": last["time/update"] / update_floor,
        "bare_fwd_tflop_per_s": f_call / floor["bare_fwd_s"] / 1e12,
        "first_step_ratio_is_1": all(v == 1.0 for k, v in rows[0].items() if k.startswith("ratio/") and "/std" not in k),
        "steps_s": [r["time/step"] for r in rows],
    }
    if peak_tf:
        out["update_mfu"] = update_flops / last["time/update"] / peak_tf
        out["rollout_mfu"] = rollout_flops / last["time/rollout"] / peak_tf
        out["peak_bf16_tflops"] = peak_tf / 1e12
    del trainer, policy
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["real", "tiny"], default="real")
    p.add_argument("--group", type=int, default=9, help="images per step (one prompt's group)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--configs", default="ckpt", help="comma list of ckpt (gradient checkpointing) / nockpt (needs the "
                                                     "memory of every trained step's graph: out of memory at 512 px)")
    p.add_argument("--out", default=os.environ.get("OUT", "/tmp/gpu_flow_pipeline"))
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = True
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_flow_"))
    pipe_dir = work / "sd35m"
    result = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
              "size": args.size, "build_and_save_s": round(build_pipeline(args.size, pipe_dir, device), 1)}
    print(json.dumps(result), flush=True)
    result["runs"] = []
    for name in args.configs.split(","):
        r = run_config(pipe_dir, work, name, size=args.size, group=args.group, steps=args.steps,
                       ckpt=name == "ckpt", device=device)
        print(json.dumps(r), flush=True)
        result["runs"].append(r)
        (out / "gpu_flow_pipeline.json").write_text(json.dumps(result, indent=2))
    for r in result["runs"]:
        mfu = f"{r['update_mfu']:.1%}" if "update_mfu" in r else "n/a"
        print(f"{r['config']:>7}: step {r['step_s']:.2f} s (rollout {r['rollout_s']:.2f}, update {r['update_s']:.2f}) "
              f"{r['images_per_s']:.2f} img/s  peak {r['peak_mem_gib']} GiB  update {r['update_tflop_per_s']:.0f} "
              f"TFLOP/s = MFU {mfu}; framework/floor rollout {r['rollout_over_floor']:.2f} update "
              f"{r['update_over_floor']:.2f}; bare forward {r['bare_fwd_tflop_per_s']:.0f} TFLOP/s")


if __name__ == "__main__":
    main()
