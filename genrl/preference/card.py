"""MODEL_CARD.md of a trained reward model: what it was trained on, how well it does, how to use it."""

from __future__ import annotations

from pathlib import Path

import yaml

from genrl.hashing import file_sha256


def write_model_card(model_dir: Path, *, info: dict, recipe: dict, manifest: dict, run_dir: Path) -> Path:
    model_dir = Path(model_dir)
    m = info["metrics"]
    per_source = {k.split("/", 2)[2]: v for k, v in m.items() if k.startswith("eval/accuracy/")}
    lines = [
        f"# Reward model: {recipe['model']['name']}",
        "",
        recipe.get("description") or "A Bradley–Terry preference reward model trained with `genrl reward train`.",
        "",
        "## Use it as a reward",
        "",
        "```yaml",
        "rewards:",
        f"  - {{name: learned, path: {run_dir}, weight: 1.0}}",
        "```",
        "",
        "## Data",
        "",
        *(f"- {name}: `{d['path']}` ({d['rows']} rows, sha256 `{d['sha256'][:16]}`)" for name, d in info["data"].items()),
        f"- pairs: {info['pairs']['train']} for training, {info['pairs']['eval']} held out (whole sampling groups)",
        f"- samples: {info.get('sample_shape', 'see config.json')}; contexts: {info['context_kind']}",
        "",
        "## Metrics (held-out pairs)",
        "",
        "| metric | value |",
        "|---|---|",
        f"| pairwise accuracy | {m['eval/accuracy']:.4f} |",
        f"| Bradley–Terry loss | {m['eval/bt_loss']:.4f} |",
        f"| expected calibration error | {m['eval/ece']:.4f} |",
        f"| training pairwise accuracy | {m.get('train/accuracy', float('nan')):.4f} |",
        *(f"| accuracy on pairs decided by `{k}` | {v:.4f} |" for k, v in sorted(per_source.items())),
        "",
        "Calibration plot: `../eval/calibration.png` (reliability of sigma(r_a - r_b)).",
        f"Rewards on the training samples: mean {info['normalization']['mean']:.4f}, std "
        f"{info['normalization']['std']:.4f} (the `learned` reward's `normalize: standard` uses these).",
        "",
        "## Provenance",
        "",
        f"- recipe hash `{info['recipe_hash']}`, seed {recipe['seed']}, {info['updates']} updates in "
        f"{info['training_seconds']} s",
        f"- git commit `{manifest['git'].get('commit')}`{' (dirty)' if manifest['git'].get('dirty') else ''}",
        f"- packages: {', '.join(f'{k} {v}' for k, v in manifest['packages'].items() if v)}",
        f"- weights sha256 `{file_sha256(model_dir / 'model.safetensors')}`",
        "",
        "## Recipe",
        "",
        "```yaml",
        yaml.safe_dump(recipe, sort_keys=False).rstrip(),
        "```",
        "",
    ]
    path = model_dir / "MODEL_CARD.md"
    path.write_text("\n".join(lines))
    return path
