"""Models that the project's own recipes make (base generators, reward models, judges) are built
once and cached under ``$GENRL_CACHE`` (default ``~/.cache/genrl``), keyed by the hash of the
resolved recipe that made them — change the recipe, get a new artifact; never a stale one.

Builds go to a temporary folder that is renamed into place, under a file lock, so two processes
(two ranks, two runs) never build the same artifact twice or see a half-written one.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from genrl.config.load import load_recipe, recipe_hash
from genrl.config.validate import RecipeError
from genrl.hashing import path_sha256

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Bumped when what a builder writes changes, so caches made by older code are not reused.
ARTIFACT_FORMAT = 2


def cache_root() -> Path:
    return Path(os.environ.get("GENRL_CACHE", "~/.cache/genrl")).expanduser()


def lookup_candidates(path: str | Path) -> list[Path]:
    """Where a path written in a recipe may be: itself if absolute, else relative to the working directory,
    then to the project root (so recipes and data paths work from any directory of a source checkout)."""
    p = Path(path).expanduser()
    return [p] if p.is_absolute() else [Path.cwd() / p, PROJECT_ROOT / p]


def resolve_recipe_path(path: str, *, referenced_from: str | None = None, key: str = "") -> Path:
    """A recipe path as written in another recipe (see :func:`lookup_candidates`)."""
    for cand in lookup_candidates(path):
        if cand.is_file():
            return cand.resolve()
    raise RecipeError(referenced_from, key, f"recipe file {path!r} not found (looked in {Path.cwd()} and {PROJECT_ROOT})")


def check_references(resolved: dict, recipe_file: str | None) -> list[Path]:
    """Check every ``*recipe`` path a training recipe refers to (base model, reward models, judge)
    before anything is built, so a typo in the last one does not cost a pretraining run first."""
    found: list[Path] = []

    def walk(node, key: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                sub = f"{key}.{k}" if key else str(k)
                if isinstance(v, str) and str(k).endswith("recipe"):
                    found.append(resolve_recipe_path(v, referenced_from=recipe_file, key=sub))
                else:
                    walk(v, sub)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{key}[{i}]")

    walk(resolved, "")
    return found


def _existing(value: str, recipe_file: str | None) -> Path | None:
    """The file or folder a recipe value names: as given, or relative to the recipe's folder (judge files)."""
    p = Path(value).expanduser()
    for cand in [p] + ([Path(recipe_file).parent / p] if recipe_file and not p.is_absolute() else []):
        if cand.exists():
            return cand
    return None


def input_hashes(resolved: dict, recipe_file: str | None, _seen: frozenset = frozenset()) -> dict[str, str]:
    """Content hashes of everything a recipe reads, transitively: files and folders named by ``file`` /
    ``*_file`` / ``*path`` keys (a judge's or a reward's Python file too), and every referenced ``*recipe``
    (with what *it* reads). An artifact's cache key
    includes them, so editing a labelling recipe retrains the reward model that was built from it."""
    from genrl.config.load import load_yaml

    out: dict[str, str] = {}

    def walk(node, key: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                found = _existing(v, recipe_file) if isinstance(v, str) and (
                    str(k).endswith(("_file", "path")) or k == "file") else None
                if found is not None:
                    out[f"{key}.{k}"] = path_sha256(found)
                else:
                    walk(v, f"{key}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{key}[{i}]")

    walk(resolved, "")
    for ref in check_references(resolved, recipe_file):
        if ref in _seen:
            raise RecipeError(recipe_file, "", f"recipe {ref} refers back to itself (a reference cycle)")
        out[str(ref)] = path_sha256(ref)
        nested = input_hashes(load_yaml(ref), str(ref), _seen | {ref})
        out.update({f"{ref}:{k}": v for k, v in nested.items()})
    return out


def cached_artifact(recipe_file: Path, schema: type, kind: str, build: Callable[[object, Path], None]) -> Path:
    """Return the cache folder of the artifact that ``recipe_file`` makes, building it if needed."""
    config, resolved = load_recipe(recipe_file, schema)
    identity = {**resolved, "_inputs": input_hashes(resolved, str(recipe_file)), "_format": ARTIFACT_FORMAT}
    target = cache_root() / kind / recipe_hash(identity)
    if (target / "checkpoint.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "checkpoint.json").is_file():  # another process built it while we waited
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            build(config, tmp)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return target
