"""The benchmark protocol: what a domain implements so that ``genrl eval``, ``genrl compare``, the
training recipes' ``eval:`` section and periodic evaluation during training can all run it.

A benchmark is a class registered in :data:`genrl.registry.BENCHMARKS` with

* ``Config`` — a dataclass of options (built from recipe/CLI data by ``genrl.config``); the CLI
  maps ``--n`` to ``n_per_prompt`` and ``--seed`` to ``seed``, so benchmarks should use those names;
* ``policy_types`` — the registered policy names it can evaluate (checked against the
  checkpoint's ``checkpoint.json`` before anything is loaded);
* ``data_files`` — files it needs in a user-downloaded data folder (``--data DIR``, config field
  ``data_dir``); empty when the benchmark brings its own data;
* ``metrics`` — one :class:`MetricSpec` per metric: what one value is (a sample or a whole seed),
  whether it is a 0/1 outcome (gets a Wilson interval and pass@k), and which direction is better;
* ``check_inputs(config, *, recipe_file=None)`` (classmethod) — every cheap check that can fail
  (data folder, recipe paths, prompt files) so mistakes surface before a model is loaded;
* ``__init__(config, *, recipe_file=None)`` — loads scorers (judges, detectors);
* ``run(policy, seed) -> SeedResult`` — generate and score one seed's samples; deterministic in
  ``(policy, seed)``;
* ``report_sections(result, assets_dir) -> list[Section]`` — the domain's pictures and tables
  (sample grids, videos, trajectory plots, per-category tables) for the shared report.

Statistics, ``metrics.json``, the report frame and comparisons are shared
(:mod:`genrl.eval.runner`), so a benchmark only produces numbers and pictures.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import numpy as np

from genrl.registry import BENCHMARKS


class EvalError(ValueError):
    """A mistake in an evaluation request found before any model is loaded: what is wrong and what
    was expected (the CLI prints it and exits with status 2)."""


@dataclass(frozen=True)
class MetricSpec:
    """How to summarise one metric (see :mod:`genrl.eval.stats` for the intervals)."""

    name: str
    unit: Literal["sample", "seed"]
    binary: bool = False
    higher_is_better: bool = True
    help: str = ""


@dataclass
class SeedResult:
    """One seed's evaluation: per-sample values (with the prompt each sample answered, as text, for
    per-prompt tables and pass@k), set-level values, and the raw samples for the report."""

    seed: int
    groups: list[str]
    per_sample: dict[str, np.ndarray] = field(default_factory=dict)
    per_seed: dict[str, float] = field(default_factory=dict)
    samples: Any = None

    def __post_init__(self) -> None:
        for name, values in self.per_sample.items():
            values = np.asarray(values, dtype=np.float64).reshape(-1)
            if values.shape[0] != len(self.groups):
                raise ValueError(f"metric {name!r}: {values.shape[0]} values for {len(self.groups)} samples")
            self.per_sample[name] = values
        self.per_seed = {k: float(v) for k, v in self.per_seed.items()}

    def flat(self) -> dict[str, float]:
        """One number per metric (per-sample ones averaged): the training loop's before/after view."""
        return {**{k: float(v.mean()) for k, v in self.per_sample.items()}, **self.per_seed}


class Benchmark(Protocol):
    Config: ClassVar[type]
    policy_types: ClassVar[tuple[str, ...]]
    data_files: ClassVar[tuple[str, ...]]
    metrics: ClassVar[tuple[MetricSpec, ...]]
    config: Any

    @classmethod
    def check_inputs(cls, config: Any, *, recipe_file: str | None = None) -> None: ...

    def __init__(self, config: Any, *, recipe_file: str | None = None) -> None: ...

    def run(self, policy: Any, seed: int) -> SeedResult: ...

    def report_sections(self, result: Any, assets_dir: Path) -> list: ...


def benchmark_class(name: str) -> type:
    """The registered benchmark ``name``, or an :class:`EvalError` with the known names and a suggestion."""
    import genrl.recipe  # noqa: F401  (imports the built-in benchmarks)

    if name not in BENCHMARKS:
        raise EvalError(BENCHMARKS.unknown_message(name))
    return BENCHMARKS.get(name)


def check_data_folder(name: str, cls: type, data_dir: str | None) -> None:
    """A benchmark that reads a downloaded folder gets a clear error when it is missing or incomplete."""
    needed = tuple(getattr(cls, "data_files", ()))
    if not needed:
        if data_dir is not None:
            raise EvalError(f"benchmark {name!r} brings its own data; it takes no data folder (got {data_dir})")
        return
    if data_dir is None:
        raise EvalError(f"benchmark {name!r} needs its data folder: pass --data DIR "
                        f"(a folder with {', '.join(needed)})")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise EvalError(f"benchmark {name!r}: data folder {root} does not exist "
                        f"(expected a folder with {', '.join(needed)})")
    missing = [f for f in needed if not (root / f).is_file()]
    if missing:
        present = sorted(p.name for p in root.iterdir())[:20]
        hint = difflib.get_close_matches(missing[0], present, n=1)
        raise EvalError(f"benchmark {name!r}: data folder {root} lacks {', '.join(missing)} "
                        f"(found {present}){f'; did you mean {hint[0]!r}?' if hint else ''}")


def check_policy_type(name: str, cls: type, checkpoint: Path, meta: dict) -> str:
    """The checkpoint's policy type, if ``cls`` can evaluate it (read from checkpoint.json only)."""
    accepted = list(getattr(cls, "policy_types", ()))
    policy = meta.get("policy")
    if policy is None:
        kind = meta.get("kind", "unknown")
        raise EvalError(f"{checkpoint} holds a {kind!r} model, not a generative policy; benchmark "
                        f"{name!r} evaluates policy checkpoints of type {accepted}")
    if policy not in accepted:
        raise EvalError(f"{checkpoint} holds a {policy!r} policy; benchmark {name!r} evaluates "
                        f"policy checkpoints of type {accepted}")
    return policy


# ----------------------------------------------------------------------------- the training loop's before/after
def save_tagged_result(trainer, tag: str, result: dict) -> dict:
    """Write a training run's ``before``/``after`` evaluation to ``RUN_DIR/eval/<tag>.json``."""
    import json

    out = trainer.run_dir / "eval"
    out.mkdir(exist_ok=True)
    (out / f"{tag}.json").write_text(json.dumps(result, indent=2))
    return result


def before_after_table(trainer, results: dict, *, extra: list[str] = (), width: int = 20) -> str:
    """The before/after table of a training run: printed and written to ``RUN_DIR/eval/summary.txt``."""
    before, after = results["before"], results["after"]
    lines = [f"{'metric':<{width}}{'before':>10}{'after':>10}", "-" * (width + 20)]
    lines += [f"{k:<{width}}{before[k]:>10.4f}{after[k]:>10.4f}" for k in before]
    table = "\n".join([*lines, *extra])
    print("\n" + table + "\n")
    (trainer.run_dir / "eval" / "summary.txt").write_text(table + "\n")
    return table
