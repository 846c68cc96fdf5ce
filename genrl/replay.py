"""``genrl replay RUN_DIR``: re-execute a run from its manifest and check it step by step.

The recorded recipe is run again in a new directory, with the recorded number of processes; then
every logged metric (timings aside) and every checkpoint hash both runs have is compared. The result
is "replayed bit for bit" or the first step and quantity that diverged, and by how much. A run
whose inputs changed (a base or reward model file, a judge, user code) is refused up front with the
recorded and the current hash.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from genrl.hashing import path_sha256

SCHEMA = Path(__file__).resolve().parent / "schemas" / "manifest.schema.json"


class ReplayRefused(RuntimeError):
    pass


def validate_manifest(manifest: dict, *, source: str = "manifest.json") -> None:
    """Check a manifest against the committed JSON schema (``jsonschema`` if installed)."""
    try:
        import jsonschema
    except ImportError:  # the schema is still the documentation; required keys are checked below
        missing = [k for k in json.loads(SCHEMA.read_text())["required"] if k not in manifest]
        if missing:
            raise ReplayRefused(f"{source}: missing keys {missing}") from None
        return
    try:
        jsonschema.validate(manifest, json.loads(SCHEMA.read_text()))
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "<root>"
        raise ReplayRefused(f"{source}: {where}: {exc.message}") from None


def check_inputs(manifest: dict) -> list[str]:
    """Refuse when a recorded input exists with different content; list inputs that will be rebuilt."""
    rebuilt = []
    for name, rec in manifest["inputs"].items():
        path = Path(rec["path"])
        if not path.exists():
            rebuilt.append(name)
            continue
        now = path_sha256(path)
        if now != rec["sha256"]:
            raise ReplayRefused(f"input {name} ({path}) changed since the run: recorded sha256 {rec['sha256']}, "
                                f"now {now}")
    return rebuilt


@dataclass
class Divergence:
    step: int
    quantity: str
    original: float | str | None
    replayed: float | str | None

    def describe(self) -> str:
        if isinstance(self.original, float) and isinstance(self.replayed, float):
            diff = abs(self.original - self.replayed)
            rel = diff / max(abs(self.original), 1e-30)
            return (f"step {self.step}: {self.quantity} = {self.original!r} originally, {self.replayed!r} replayed "
                    f"(|diff| {diff:.3g}, relative {rel:.3g})")
        return f"step {self.step}: {self.quantity} = {self.original!r} originally, {self.replayed!r} replayed"


@dataclass
class ReplayReport:
    run_dir: str
    replay_dir: str
    steps_compared: int = 0
    checkpoints_compared: int = 0
    divergence: Divergence | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def bitwise(self) -> bool:
        return self.divergence is None

    def summary(self) -> str:
        if self.bitwise:
            return (f"replayed bit for bit: {self.steps_compared} steps of metrics and {self.checkpoints_compared} "
                    f"checkpoint hashes identical ({self.replay_dir})")
        return f"diverged at {self.divergence.describe()}"


def _metrics(path: Path) -> dict[int, dict]:
    rows = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)  # a step may have several lines (training, then periodic eval)
                rows.setdefault(row["step"], {}).update({k: v for k, v in row.items() if not k.startswith("time/")})
    return rows


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def compare_runs(original: Path, replay: Path, until: int | None) -> ReplayReport:
    report = ReplayReport(str(original), str(replay))
    om, rm = _metrics(original / "metrics.jsonl"), _metrics(replay / "metrics.jsonl")
    steps = sorted(s for s in om if until is None or s <= until)
    for s in steps:
        if s not in rm:
            report.divergence = Divergence(s, "metrics line", "present", "missing")
            return report
        for key in sorted(set(om[s]) | set(rm[s])):
            if not _same(om[s].get(key), rm[s].get(key)):
                report.divergence = Divergence(s, key, om[s].get(key), rm[s].get(key))
                return report
        report.steps_compared += 1
    oc = {c["step"]: c["sha256"] for c in json.loads((original / "manifest.json").read_text())["checkpoints"]}
    rc = {c["step"]: c["sha256"] for c in json.loads((replay / "manifest.json").read_text())["checkpoints"]}
    for s in sorted(set(oc) & set(rc)):
        if oc[s] != rc[s]:
            report.divergence = Divergence(s, "checkpoint sha256", oc[s], rc[s])
            return report
        report.checkpoints_compared += 1
    return report


def replay(run_dir: Path, *, until: int | None = None, out: Path | None = None) -> ReplayReport:
    run_dir = Path(run_dir).resolve()
    manifest_file = run_dir / "manifest.json"
    if not manifest_file.is_file():
        raise ReplayRefused(f"{run_dir}: no manifest.json (not a genrl run directory)")
    manifest = json.loads(manifest_file.read_text())
    validate_manifest(manifest, source=str(manifest_file))
    rebuilt = check_inputs(manifest)
    out = Path(out or run_dir.with_name(run_dir.name + "-replay")).resolve()
    if out.exists() and any(out.iterdir()):
        raise ReplayRefused(f"{out}: the replay directory exists and is not empty")
    out.mkdir(parents=True, exist_ok=True)
    recipe = dict(manifest["recipe"], run_dir=str(out))
    recipe_file = out / "replayed_recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe, sort_keys=False))
    world = manifest["hardware"]["world_size"]
    args = ["train", str(recipe_file), "--run-dir", str(out), "--fresh", "logging.progress=false"]
    if until is not None:
        args += ["--until-step", str(until)]
    if world == 1:
        cmd = [sys.executable, "-m", "genrl.cli", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world), "-m", "genrl.cli", *args]
    proc = subprocess.run(cmd, env={**os.environ}, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the replayed run failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    report = compare_runs(run_dir, out, until)
    replayed_inputs = json.loads((out / "manifest.json").read_text())["inputs"]
    for name, rec in manifest["inputs"].items():
        now = replayed_inputs.get(name, {}).get("sha256")
        if now != rec["sha256"] and report.divergence is None:
            report.divergence = Divergence(0, f"input {name} sha256", rec["sha256"], now)
    report.notes += [f"input {n} was missing and rebuilt from its recipe" for n in rebuilt]
    (out / "replay_report.json").write_text(json.dumps(
        {"bitwise": report.bitwise, "summary": report.summary(), "steps_compared": report.steps_compared,
         "checkpoints_compared": report.checkpoints_compared, "notes": report.notes}, indent=2))
    return report
