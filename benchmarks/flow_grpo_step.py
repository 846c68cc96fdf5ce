"""Benchmark: one Flow-GRPO training step of the quick start against its compute floor.

    python benchmarks/flow_grpo_step.py [--repeats 5] [--steps-window 3] [--record] [key=value ...]

This is a benchmark, not a test: it prints figures (and, with ``--record``, appends them to
docs/benchmarks.md); it asserts nothing. Everything is measured side by side in ONE process, the
variants interleaved (A, B, C, D, A, B, C, D, ...), and medians are reported, because a shared CPU
is noisy: a ratio of two medians taken minutes apart means little, a ratio of interleaved ones does.

Variants
  step     ``Trainer.train_step`` of recipes/quickstart.yaml (+ overrides), split into the loop's own
           ``time/rollout``, ``time/reward`` and ``time/update``.
  floor    the same denoiser work with no framework around it: the raw transformer
           (``trainer.policy.transformer``, a private copy so AdamW does not move the trainer's
           weights) called on the prompt embeddings of ``trainer.policy.prompt_encoder``:
             rollout  num_steps no-grad forwards over the rollout batch (+ a plain Euler update),
             ref      one no-grad reference forward per trained step per sample (if kl_beta > 0),
             fwd/bwd  inner_epochs x (forward + backward) over the trained steps of every sample,
                      in micro-batches of trainer.micro_batch_size,
             adamw    one AdamW step per minibatch.
           Every network call has exactly ``policy.forward_chunk`` rows (short ones padded, as the
           policy does), so the floor runs the same kernels on the same shapes as the framework.
  win2 / winall
           ``train_step`` with ``explorer.window_size=2`` and ``=null`` (all steps trained): the
           update phase should scale with the number of trained steps.

``--steps-window N`` times N consecutive training steps (or floor iterations) per repetition and
keeps their per-step mean; medians are then taken over the ``--repeats`` repetitions. Ratios are
medians of the per-repetition (paired) ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"  # records go here unless $GENRL_BENCHMARK_DOC names another file
BASE_OVERRIDES = ["eval=null", "logging.tensorboard=false", "logging.progress=false"]
TARGET_STEP_OVER_FLOOR = 1.15
TARGET_WINDOW_RATIO = 0.3

DOC_HEADER = """\
# Benchmarks

Figures recorded by the scripts in `benchmarks/` (`python benchmarks/<name>.py --record` appends a
dated entry below). How they are measured:

* Every comparison is made **side by side in one process**: the variants are built once and their
  repetitions interleaved (A, B, A, B, ...), so that load on a shared machine hits all of them alike.
* Figures are **medians** over the repetitions; ratios are medians of the per-repetition (paired)
  ratios. Single runs and ratios of figures taken at different times are not comparable.
* Each entry gives the exact command, the date (`date -u`), the hardware and torch's thread count:
  compare entries only on the same hardware and settings (`OMP_NUM_THREADS=1` on small CPUs).
"""


# ----------------------------------------------------------------------------- helpers
def peak_rss_mib() -> float:
    """Peak resident set size of this process (ru_maxrss: KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.strip().lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine()


def record_entry(name: str, lines: list[str], *, hardware: str) -> None:
    """Append a dated entry (command, hardware, versions, then ``lines``) to docs/benchmarks.md."""
    cmd = "python " + shlex.join([os.path.relpath(sys.argv[0], ROOT) if sys.argv[0] else "", *sys.argv[1:]])
    env = " ".join(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "GENRL_CACHE") if k in os.environ)
    entry = [f"## {name} — {utc_date()}", "", f"- command: `{env + ' ' if env else ''}{cmd}`",
             f"- hardware: {hardware}", f"- python {platform.python_version()}, {platform.platform()}", "",
             *lines, ""]
    doc = Path(os.environ.get("GENRL_BENCHMARK_DOC") or DOC)  # the suite may send records elsewhere
    doc.parent.mkdir(parents=True, exist_ok=True)
    new = not doc.exists()
    with doc.open("a") as f:  # append only: other entries are left as they are
        f.write((DOC_HEADER + "\n" if new else "\n") + "\n".join(entry))
    print(f"[bench] recorded in {doc}")


def quiet_single_thread() -> None:
    """One torch thread (2-thread small ops are 10-40x slower on these CPUs), no tokenizer threads, and
    transformers/datasets without progress bars or warnings: benchmark output is the figures only."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import datasets
    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(1)
    hf_logging.set_verbosity_error()
    datasets.disable_progress_bars()


def utc_date() -> str:
    try:
        return subprocess.run(["date", "-u"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return datetime.datetime.now(datetime.timezone.utc).strftime("%a %b %d %H:%M:%S UTC %Y")


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def build_trainer(recipe: str, overrides: list[str], run_dir: str):
    from genrl.config.load import load_recipe
    from genrl.recipe import TrainRecipe
    from genrl.trainer.loop import Trainer

    cfg, _ = load_recipe(recipe, TrainRecipe, [*BASE_OVERRIDES, *overrides])
    return Trainer(cfg, recipe_file=recipe, run_dir=run_dir)


class StepRunner:
    """Runs consecutive ``train_step`` calls of one trainer; returns the per-step mean of its timings."""

    KEYS = ("time/rollout", "time/reward", "time/update", "time/step")

    def __init__(self, trainer) -> None:
        self.trainer = trainer
        self.step = 0

    def __call__(self, n: int) -> dict[str, float]:
        sums = dict.fromkeys(self.KEYS, 0.0)
        for _ in range(n):
            m = self.trainer.train_step(self.step)
            self.step += 1
            for k in self.KEYS:
                sums[k] += m[k]
        return {k.removeprefix("time/"): v / n for k, v in sums.items()}


class Floor:
    """The denoiser compute of one training step with no framework around it (see module doc)."""

    def __init__(self, trainer) -> None:
        import torch

        self.torch = torch
        self.trainer = trainer
        pol, tc = trainer.policy, trainer.recipe.trainer
        self.pol, self.tc = pol, tc
        self.device = trainer.device
        self.num_steps = pol.config.num_steps
        self.chunk = pol.config.forward_chunk
        self.cfg_passes = 1 if pol.config.guidance_scale == 1.0 else 2  # CFG: the unconditional branch too
        self.num_train_timesteps = pol.scheduler.config.num_train_timesteps
        self.sigmas = pol.sigmas
        self.kl = getattr(trainer.objective.config, "kl_beta", 0.0) > 0
        # A private copy: same architecture, weights and trainable set; its AdamW steps leave the trainer alone.
        self.model = copy.deepcopy(pol.transformer)
        self.lora = pol.config.lora is not None
        self.ref = None
        if self.kl and not self.lora:
            self.ref = pol.ref_module if pol.ref_module is not None else (
                copy.deepcopy(pol.transformer).requires_grad_(False).eval())
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=tc.lr, betas=tuple(tc.adam_betas), eps=tc.adam_eps,
                                     weight_decay=tc.weight_decay)
        self.train_steps = len(trainer.explorer.plan(0, self.num_steps).train_steps)
        self.step = 0
        self.rows = {"rollout": 0, "trained": 0, "trained_real": 0}

    def _sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def _reference(self):
        if not self.kl:
            return contextlib.nullcontext(None)
        if self.lora:
            return self.model.disable_adapter()  # what the policy does for a LoRA reference
        return contextlib.nullcontext(self.ref)

    def _forward(self, model, x, tokens, pooled, t_value):
        """One network call per forward_chunk rows (x already padded to a multiple of it)."""
        torch = self.torch
        outs = []
        for s in range(0, len(x), self.chunk):
            xb = x[s : s + self.chunk]
            tb = torch.full((len(xb),), t_value, device=x.device)
            tk, pl = tokens[s : s + self.chunk], pooled[s : s + self.chunk]
            if self.cfg_passes == 2:  # CFG: the chunk twice in one call, as the policy batches it
                xb, tb, tk, pl = (torch.cat([a, a]) for a in (xb, tb, tk, pl))
            out = model(hidden_states=xb, encoder_hidden_states=tk, pooled_projections=pl, timestep=tb,
                        return_dict=False)[0]
            outs.append(out[: self.chunk])
        return torch.cat(outs)

    def _pad(self, idx):
        """Pad an index list to a multiple of forward_chunk with copies of its last row (as the policy does)."""
        torch = self.torch
        m = len(idx)
        pad = -m % self.chunk
        return torch.cat([idx, idx[-1:].expand(pad)]) if pad else idx

    def __call__(self, n: int) -> dict[str, float]:
        sums = dict.fromkeys(("rollout", "ref", "fwd", "bwd", "adamw", "update", "total"), 0.0)
        for _ in range(n):
            for k, v in self._one().items():
                sums[k] += v
        return {k: v / n for k, v in sums.items()}

    def _one(self) -> dict[str, float]:
        torch, tc, pol = self.torch, self.tc, self.pol
        labels, _, _ = self.trainer.producer.shard(self.step)
        self.step += 1
        labels = labels.to(self.device)
        n_rows = len(labels)
        times = dict.fromkeys(("rollout", "ref", "fwd", "bwd", "adamw"), 0.0)
        with self.trainer._autocast():
            self._sync()
            t0 = time.perf_counter()
            # ---- rollout: num_steps no-grad forwards over the batch, plain Euler update
            with torch.no_grad():
                tokens, pooled = pol.prompt_encoder(labels[self._pad(torch.arange(n_rows)).to(self.device)])
                x = torch.randn(len(tokens), *pol.image_shape, device=self.device)
                traj = [x]
                self.model.eval()
                for t in range(self.num_steps):
                    sigma, sigma_next = self.sigmas[t], self.sigmas[t + 1]
                    v = self._forward(self.model, x, tokens, pooled, float(sigma) * self.num_train_timesteps).float()
                    x = x + (sigma_next - sigma) * v
                    traj.append(x)
                lat = torch.stack(traj, 1)[:n_rows]
            self._sync()
            times["rollout"] = time.perf_counter() - t0
            self.rows["rollout"] = len(tokens) * self.num_steps * self.cfg_passes

            # ---- update: inner_epochs x minibatches x micro-batches over the trained steps
            start = int(torch.randint(self.num_steps - self.train_steps + 1, (1,)))
            steps = range(start, start + self.train_steps)
            self.model.train()
            rows_trained = rows_real = 0
            for _epoch in range(tc.inner_epochs):
                perm = torch.randperm(n_rows)
                for mb in perm.split(tc.minibatch_size):
                    for idx in mb.split(tc.micro_batch_size):
                        pidx = self._pad(idx)
                        rows_trained += len(pidx) * len(steps)
                        rows_real += len(idx) * len(steps)
                        tok, poo = pol.prompt_encoder(labels[pidx].to(self.device))
                        pidx = pidx.to(self.device)
                        ta = time.perf_counter()
                        loss = 0.0
                        for t in steps:
                            out = self._forward(self.model, lat[pidx, t], tok, poo,
                                                float(self.sigmas[t]) * self.num_train_timesteps)
                            loss = loss + out[: len(idx)].float().square().mean()
                        self._sync()
                        tb = time.perf_counter()
                        if self.kl:
                            with torch.no_grad(), self._reference() as ref:
                                for t in steps:
                                    self._forward(ref, lat[pidx, t], tok, poo,
                                                  float(self.sigmas[t]) * self.num_train_timesteps)
                        self._sync()
                        tc_ = time.perf_counter()
                        (loss * (len(idx) / len(mb))).backward()
                        self._sync()
                        td = time.perf_counter()
                        times["fwd"] += tb - ta
                        times["ref"] += tc_ - tb
                        times["bwd"] += td - tc_
                    te = time.perf_counter()
                    self.opt.step()
                    self.opt.zero_grad(set_to_none=True)
                    self._sync()
                    times["adamw"] += time.perf_counter() - te
            self.rows["trained"], self.rows["trained_real"] = rows_trained, rows_real
        times["update"] = times["ref"] + times["fwd"] + times["bwd"] + times["adamw"]
        times["total"] = times["rollout"] + times["update"]
        return times


# ----------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5, help="interleaved repetitions of every variant (median over them)")
    ap.add_argument("--steps-window", type=int, default=3,
                    help="consecutive training steps (floor iterations) timed per repetition; their mean is one sample")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps of every variant before the repetitions")
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "quickstart.yaml"), help="training recipe")
    ap.add_argument("--no-window", action="store_true", help="skip the window_size=2 vs null comparison")
    ap.add_argument("--record", action="store_true", help="append a dated entry to docs/benchmarks.md (or $GENRL_BENCHMARK_DOC)")
    ap.add_argument("overrides", nargs="*", help="recipe overrides, dotted.key=value (applied to every trainer)")
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.steps_window < 1 or args.warmup < 0:
        ap.error("--repeats and --steps-window must be >= 1, --warmup >= 0")
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        ap.error(f"expected key=value recipe overrides, got {bad}")
    return args


def fmt(x: float, unit: str = "s") -> str:
    if x != x:  # nan
        return "-"
    return f"{x * 1000:.0f} ms" if unit == "s" else f"{x:.2f}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    t_start = time.perf_counter()
    import torch

    torch.set_num_threads(1)
    mem: dict[str, float] = {}
    tmp = tempfile.TemporaryDirectory(prefix="genrl-bench-")
    with tmp:
        main_tr = build_trainer(args.recipe, args.overrides, os.path.join(tmp.name, "step"))
        variants: dict[str, object] = {"step": StepRunner(main_tr), "floor": Floor(main_tr)}
        if not args.no_window:
            variants["win2"] = StepRunner(build_trainer(args.recipe, [*args.overrides, "explorer.window_size=2"],
                                                        os.path.join(tmp.name, "win2")))
            variants["winall"] = StepRunner(build_trainer(args.recipe, [*args.overrides, "explorer.window_size=null"],
                                                          os.path.join(tmp.name, "winall")))
        mem["after build"] = peak_rss_mib()
        for name, run in variants.items():
            for _ in range(args.warmup):
                run(1)
            mem[f"after {name} warm-up"] = peak_rss_mib()

        samples: dict[str, list[dict[str, float]]] = {k: [] for k in variants}
        for rep in range(args.repeats):
            for name, run in variants.items():
                samples[name].append(run(args.steps_window))
            print(f"[bench] repetition {rep + 1}/{args.repeats}: "
                  + ", ".join(f"{k} {fmt(v[-1]['step' if 'step' in v[-1] else 'total'])}" for k, v in samples.items()),
                  flush=True)
        floor_rows = dict(variants["floor"].rows)
        train_steps = variants["floor"].train_steps
    mem["end"] = peak_rss_mib()

    # --------------------------------------------------------------- figures
    def med(name: str, key: str) -> float:
        return median([s[key] for s in samples[name]])

    def paired(a: str, ka: str, b: str, kb: str) -> float:
        return median([x[ka] / y[kb] for x, y in zip(samples[a], samples[b], strict=True)])

    tc = main_tr.recipe.trainer
    pc = main_tr.policy.config
    kl_beta = getattr(main_tr.objective.config, "kl_beta", 0.0)
    n = tc.prompts_per_step * tc.group_size
    rows = [  # phase, framework, floor, ratio
        ("rollout", med("step", "rollout"), med("floor", "rollout"), paired("step", "rollout", "floor", "rollout")),
        ("reward", med("step", "reward"), float("nan"), float("nan")),
        ("update", med("step", "update"), med("floor", "update"), paired("step", "update", "floor", "update")),
        ("  ref fwd (no grad)", float("nan"), med("floor", "ref"), float("nan")),
        ("  fwd (grad)", float("nan"), med("floor", "fwd"), float("nan")),
        ("  bwd", float("nan"), med("floor", "bwd"), float("nan")),
        ("  adamw", float("nan"), med("floor", "adamw"), float("nan")),
        ("step (total)", med("step", "step"), med("floor", "total"), paired("step", "step", "floor", "total")),
    ]
    step_ratio = rows[-1][3]
    step_wo_reward = median([(x["rollout"] + x["update"]) / y["total"]
                             for x, y in zip(samples["step"], samples["floor"], strict=True)])

    lines = []
    lines.append(f"recipe: {os.path.relpath(args.recipe, ROOT)}  overrides: {' '.join([*BASE_OVERRIDES, *args.overrides])}")
    lines.append(f"batch {n} = {tc.prompts_per_step} prompts x {tc.group_size}, num_steps {pc.num_steps}, "
                 f"trained steps {train_steps}, minibatch {tc.minibatch_size}, micro-batch {tc.micro_batch_size}, "
                 f"forward_chunk {pc.forward_chunk}, inner_epochs {tc.inner_epochs}, kl_beta {kl_beta}")
    lines.append(f"repeats {args.repeats} x steps-window {args.steps_window} (per-step means), medians; "
                 f"ratios = median of paired per-repetition ratios")
    lines.append("")
    lines.append("| phase | framework (train_step) | floor (raw transformer) | framework / floor |")
    lines.append("|---|---:|---:|---:|")
    for phase, fw, fl, r in rows:
        lines.append(f"| {phase} | {fmt(fw)} | {fmt(fl)} | {fmt(r, 'x')} |")
    verdict = "OK" if step_ratio <= TARGET_STEP_OVER_FLOOR else "ABOVE TARGET"
    lines.append("")
    lines.append(f"step / floor = {step_ratio:.2f} (target <= {TARGET_STEP_OVER_FLOOR}: {verdict}); "
                 f"(rollout + update) / floor = {step_wo_reward:.2f}")
    if floor_rows["trained"] != floor_rows["trained_real"]:
        lines.append(f"padding: the update runs {floor_rows['trained']} network rows for {floor_rows['trained_real']} "
                     f"sample-steps ({floor_rows['trained'] / floor_rows['trained_real'] - 1:.0%} padded: micro-batches "
                     f"not a multiple of forward_chunk); the floor pads the same way")
    if "win2" in samples:
        wr = paired("win2", "update", "winall", "update")
        verdict = "OK" if wr <= TARGET_WINDOW_RATIO else "ABOVE TARGET"
        lines.append("")
        lines.append("| explorer.window_size | rollout | update | step |")
        lines.append("|---|---:|---:|---:|")
        for name, label in (("win2", "2"), ("winall", "null (all)")):
            lines.append(f"| {label} | {fmt(med(name, 'rollout'))} | {fmt(med(name, 'update'))} | {fmt(med(name, 'step'))} |")
        lines.append("")
        lines.append(f"update(window 2) / update(all {pc.num_steps}) = {wr:.2f} (target <= {TARGET_WINDOW_RATIO}: "
                     f"{verdict}; pure compute would give {2 / pc.num_steps:.2f})")
    lines.append("")
    lines.append("peak RSS: " + ", ".join(f"{k} {v:.0f} MiB" for k, v in mem.items()))
    wall = time.perf_counter() - t_start
    lines.append(f"benchmark wall time {wall:.0f} s")
    print("\n" + "\n".join(lines))

    if args.record:
        import torch

        record_entry("flow_grpo_step", lines, hardware=f"{cpu_model()}, {os.cpu_count()} logical cores; torch "
                     f"{torch.__version__}, {torch.get_num_threads()} intra-op thread(s), device {main_tr.device}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
