"""GPU benchmark: GRPO steps of a Qwen2.5-VL-3B-size model through genrl's VLM policy.

    python benchmarks/gpu_vlm_grpo.py [--size real|tiny] [--prompts 8] [--group 8] [--new-tokens 128] [--out DIR]

Writes a checkpoint folder with Qwen2.5-VL-3B-Instruct's published architecture (36 decoder layers of width
2048, GQA 16/2 heads, MLP 11008, vocabulary 151,936; the 32-block 1280-wide vision tower; random init)
beside the tiny tokenizer and image processor of the test models, and trains GRPO on the visual arithmetic
questions for a few steps: sampling explorer, LoRA r 64 on the language model, fp32 master weights with
bf16 autocast, gradient checkpointing, one optimizer update per step. Random weights generate until the
length cap, so every response has ``--new-tokens`` tokens.

Reported (the last step; the first ones warm up): rollout (generation + old log-probs) / update / step
seconds, samples/s and tokens/s (prompt + response tokens of the batch per step second), peak CUDA memory,
and the update's model FLOPs utilisation with FLOPs = 4 x (language-model parameters) x (tokens): forward
plus activation gradients (LoRA weight gradients, <1%, left out; recompute not counted). Not part of CI.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.gpu_flow_pipeline import peak_flops  # noqa: E402

SMOKE = ROOT / "recipes" / "smoke" / "vlm_grpo_tiny.yaml"
QWEN25_VL_3B = {  # Qwen/Qwen2.5-VL-3B-Instruct config.json (architecture fields)
    "text": {"hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36, "num_attention_heads": 16,
             "num_key_value_heads": 2, "vocab_size": 151936, "max_position_embeddings": 128000,
             "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}},
    "vision": {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "out_hidden_size": 2048,
               "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
               "fullatt_block_indexes": [7, 15, 23, 31]},
}


def build_folder(out: Path, size: str, device: str) -> None:
    """The tiny test model's tokenizer/processor/template; for ``real`` the model replaced by a 3B-size one."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from genrl.data.visual_arithmetic import KINDS, SYSTEM_PROMPT, VisualArithmetic
    from genrl.models.vlm import TinyVLMConfig, build_tiny_qwen25vl

    train = VisualArithmetic("train", 256, 0, tuple(KINDS))
    corpus = [SYSTEM_PROMPT, "system\nuser\nassistant\n"] + [f"{it.question} {it.solution()}" for it in train.items(range(256))]
    build_tiny_qwen25vl(out, TinyVLMConfig(), corpus)
    if size == "tiny":
        return
    tiny = json.loads((out / "config.json").read_text())
    ids = {k: tiny[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")}
    text = {**QWEN25_VL_3B["text"], **{k: tiny["text_config"][k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}}
    config = Qwen2_5_VLConfig(text_config=text, vision_config=QWEN25_VL_3B["vision"], tie_word_embeddings=True, **ids)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration(config).to(torch.bfloat16)
    model.generation_config.eos_token_id = text["eos_token_id"]
    model.generation_config.pad_token_id = text["pad_token_id"]
    for f in out.glob("model*.safetensors*"):
        f.unlink()
    model.save_pretrained(str(out))
    del model
    if device == "cuda":
        torch.cuda.empty_cache()


def main() -> None:
    import yaml

    from genrl.config.validate import build
    from genrl.recipe import TrainRecipe
    from genrl.trainer.loop import Trainer

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", choices=["real", "tiny"], default="real")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--generate-chunk", type=int, default=None,
                   help="rows per generate() call (policy.generate_chunk; default: forward_chunk = 16)")
    p.add_argument("--out", default=os.environ.get("OUT", "/tmp/gpu_vlm_grpo"))
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_vlm_"))
    t0 = time.perf_counter()
    build_folder(work / "qwen", args.size, device)
    result = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "size": args.size,
              "build_s": round(time.perf_counter() - t0, 1)}
    data = yaml.safe_load(SMOKE.read_text())
    batch = args.prompts * args.group
    data["policy"] = {"name": "vlm", "base_checkpoint": str(work / "qwen"), "max_prompt_tokens": 128,
                      "max_new_tokens": args.new_tokens, "forward_chunk": 16, "gradient_checkpointing": True,
                      "lora": {"rank": 64, "alpha": 128}, "generate_chunk": args.generate_chunk}
    data.update(explorer={"name": "sampling"}, objective={"name": "grpo"}, device=device, run_dir=str(work / "run"),
                mixed_precision="bf16" if device == "cuda" else "no", logging={"tensorboard": False, "progress": False})
    data["rewards"] = [{"name": "answer_accuracy"}, {"name": "answer_format", "weight": 0.1}]
    data["trainer"].update(steps=args.steps, prompts_per_step=args.prompts, group_size=args.group,
                           minibatch_size=batch, micro_batch_size=16, checkpoint_every=0)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t1 = time.perf_counter()
    trainer = Trainer(build(TrainRecipe, data, file=str(SMOKE)), recipe_file=str(SMOKE), run_dir=str(work / "run"))
    result["load_s"] = round(time.perf_counter() - t1, 1)
    trainer.train()
    rows = [json.loads(line) for line in (work / "run" / "metrics.jsonl").read_text().splitlines()]
    last = rows[-1]
    policy = trainer.policy
    lm_params = sum(p.numel() for n, p in policy.model.named_parameters() if "visual" not in n and "lora_" not in n)
    tokens = batch * (policy.config.max_prompt_tokens + policy.config.max_new_tokens)  # the fixed-length layout
    update_flops = 4 * lm_params * tokens
    result.update({
        "batch": batch, "layout_tokens_per_row": policy.config.max_prompt_tokens + policy.config.max_new_tokens,
        "lm_params": lm_params, "trainable_params": sum(p.numel() for p in policy.trainable_parameters().values()),
        "rollout_s": last["time/rollout"], "update_s": last["time/update"], "step_s": last["time/step"],
        "samples_per_s": batch / last["time/step"], "tokens_per_s": tokens / last["time/step"],
        "generated_tokens_per_s": batch * policy.config.max_new_tokens / last["time/rollout"],
        "update_tflop_per_s": update_flops / last["time/update"] / 1e12,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
        "steps_s": [r["time/step"] for r in rows],
    })
    peak = peak_flops(result["device"]) if device == "cuda" else None
    if peak:
        result["update_mfu"] = update_flops / last["time/update"] / peak
    (out / "gpu_vlm_grpo.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result), flush=True)
    mfu = f"{result['update_mfu']:.1%}" if "update_mfu" in result else "n/a"
    print(f"vlm grpo: step {result['step_s']:.2f} s (rollout {result['rollout_s']:.2f}, update {result['update_s']:.2f}) "
          f"{result['samples_per_s']:.1f} samples/s, {result['tokens_per_s']:.0f} tokens/s, peak {result['peak_mem_gib']} "
          f"GiB, update MFU {mfu}")


if __name__ == "__main__":
    main()
