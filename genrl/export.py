"""``genrl export``: a run's trained weights in the formats other tools load unchanged.

The policy of the run's latest checkpoint (EMA weights when the run kept them) writes itself into a
fresh folder (``policy.export(fmt, folder)``); the folder appears under its final name only once
complete, with an ``export.json`` saying where the weights came from.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

FORMATS = ("diffusers-lora", "merged", "peft")


class ExportError(ValueError):
    """An export that cannot be made (a format the run's policy or training mode does not have)."""


def export_run(path: Path | str, fmt: str, out: Path | str, *, use_ema: bool = True) -> Path:
    """Export the checkpoint at ``path`` (a run directory's latest, or a checkpoint folder) as ``fmt`` into ``out``."""
    from genrl.sampling import load_policy_for_sampling
    from genrl.trainer.checkpoint import read_json

    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: expected one of {list(FORMATS)}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"--out {out}: exists and is not an empty folder (exports never overwrite)")
    policy, ckpt = load_policy_for_sampling(Path(path), use_ema=use_ema)
    if not hasattr(policy, "export"):
        raise ExportError(f"{ckpt}: policy {type(policy).__name__} has no export")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        policy.export(fmt, tmp)
        meta = read_json(ckpt / "checkpoint.json")
        ema = use_ema and (ckpt / "ema.safetensors").is_file()
        (tmp / "export.json").write_text(json.dumps({
            "format": fmt, "checkpoint": str(ckpt.resolve()), "step": meta.get("step"), "policy": meta.get("policy"),
            "weights": "ema" if ema else "raw"}, indent=2) + "\n")
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
