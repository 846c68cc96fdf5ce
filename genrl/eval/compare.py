"""``genrl compare``: checkpoints side by side on the same benchmark, with the differences to the first
one and whether each is outside the seed noise (the rule is :func:`genrl.eval.stats.welch_test`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from genrl.eval.benchmark import EvalError
from genrl.eval.runner import FORMAT, fmt
from genrl.eval.stats import COMPARE_RULE, Summary, welch_test


def load_metrics(path: str | Path) -> dict:
    """A ``metrics.json`` written by ``genrl eval``, given as the file or its folder."""
    p = Path(path).expanduser()
    file = p / "metrics.json" if p.is_dir() else p
    if not file.is_file():
        raise EvalError(f"{p}: expected a genrl eval output folder (with metrics.json) or a metrics.json file")
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise EvalError(f"{file}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise EvalError(f"{file}: expected a genrl eval metrics file (format {FORMAT!r}), "
                        f"got format {data.get('format') if isinstance(data, dict) else None!r}")
    return data


def _labels(paths: Sequence[str]) -> list[str]:
    """Short names (the folder names) unless two collide; then the paths as given."""
    names = []
    for p in paths:
        q = Path(p)
        names.append((q.parent if q.name == "metrics.json" else q).name or str(p))
    return names if len(set(names)) == len(names) else [str(p) for p in paths]


def compare(paths: Sequence[str | Path]) -> dict:
    """Compare eval outputs; the first is the baseline. Refuses results of different benchmarks."""
    if len(paths) < 2:
        raise EvalError(f"compare needs at least two eval outputs, got {len(paths)}")
    runs = [load_metrics(p) for p in paths]
    names = [r["benchmark"]["name"] for r in runs]
    if len(set(names)) > 1:
        raise EvalError("compare needs results of the same benchmark, got "
                        + ", ".join(f"{p}: {n!r}" for p, n in zip(paths, names)))
    notes = []
    base_cfg = {k: v for k, v in runs[0]["benchmark"]["config"].items() if k != "seed"}
    labels = _labels([str(p) for p in paths])
    for label, r in zip(labels[1:], runs[1:]):
        cfg = {k: v for k, v in r["benchmark"]["config"].items() if k != "seed"}
        for key in sorted(set(base_cfg) | set(cfg)):
            if base_cfg.get(key) != cfg.get(key):
                notes.append(f"{label}: benchmark option {key} differs from {labels[0]}: "
                             f"{cfg.get(key)!r} vs {base_cfg.get(key)!r}")
    metric_names = list(runs[0]["metrics"])
    for r in runs[1:]:
        metric_names += [m for m in r["metrics"] if m not in metric_names]
    rows = []
    for m in metric_names:
        entries = [r["metrics"].get(m) for r in runs]
        higher = next(e["higher_is_better"] for e in entries if e is not None)
        diffs = []
        for e in entries[1:]:
            if e is None or entries[0] is None:
                diffs.append(None)
            else:
                diffs.append(welch_test(Summary.from_dict(entries[0]), Summary.from_dict(e)).to_dict())
        rows.append({"metric": m, "higher_is_better": higher, "values": entries, "vs_first": diffs})
    return {"benchmark": names[0], "rule": COMPARE_RULE, "notes": notes,
            "runs": [{"label": lab, "path": str(p), "checkpoint": r.get("checkpoint", {}), "seeds": r.get("seeds")}
                     for lab, p, r in zip(labels, paths, runs)],
            "rows": rows}


def _value(entry: dict | None) -> str:
    if entry is None:
        return "–"
    ci = entry.get("ci95")
    return fmt(entry["mean"]) + ("" if ci is None else f" [{fmt(ci[0])}, {fmt(ci[1])}]")


def _verdict(diff: dict | None, higher_is_better: bool) -> str:
    if diff is None:
        return "–"
    if diff["significant"] is None:
        return "n/a (" + diff["reason"].removeprefix("not tested: ") + ")"
    p = diff["p_value"]
    if not diff["significant"]:
        return f"no (p={p:.2g})"
    better = (diff["diff"] > 0) == higher_is_better
    return f"yes, {'better' if better else 'worse'} (p={p:.2g})"


def comparison_markdown(result: dict) -> str:
    """The comparison as a Markdown table: each checkpoint's mean [95% CI], then per later checkpoint
    its difference to the first and whether it is outside the seed noise."""
    labels = [r["label"] for r in result["runs"]]
    header = ["metric", labels[0]]
    for lab in labels[1:]:
        header += [lab, f"Δ vs {labels[0]}", "beyond noise?"]
    lines = [f"benchmark: {result['benchmark']}", "",
             "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in result["rows"]:
        cells = [row["metric"], _value(row["values"][0])]
        for entry, diff in zip(row["values"][1:], row["vs_first"]):
            delta = "–" if diff is None else f"{diff['diff']:+.4g}"
            cells += [_value(entry), delta, _verdict(diff, row["higher_is_better"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Rule: {result['rule']}"]
    lines += [f"Note: {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"
