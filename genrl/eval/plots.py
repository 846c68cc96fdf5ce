"""PNG figures for fine-tuning reports: sample grids and training curves.

Uses matplotlib's object-oriented API with the Agg canvas directly (no ``pyplot``), so it
works headless and neither changes nor depends on the process-wide matplotlib backend.

Grid figures have an exact, predictable size (no ``bbox_inches="tight"``): each 8x8 sample
takes :data:`CELL_INCHES` square and each block adds :data:`TITLE_INCHES` for its title,
at :data:`DPI`, so reports can lay them out and tests can check them.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 100
CELL_INCHES = 0.6  # one sample, i.e. 8 pixels upscaled to 60 px at DPI 100
TITLE_INCHES = 0.4  # room for a block's title above its grid
MIN_WIDTH_INCHES = 3.0  # so that titles of narrow grids stay readable
_GAP = 1  # separator, in source pixels, between neighbouring samples
_GAP_VALUE = 0.35  # grey, so that black backgrounds of neighbours stay distinguishable


def _mosaic(images: torch.Tensor, ncols: int) -> np.ndarray:
    """Tile ``[N, H, W]`` images (row-major, ``ncols`` per row) into one array with gaps."""
    n, h, w = images.shape
    nrows = max(1, math.ceil(n / ncols))
    out = np.full((nrows * (h + _GAP) + _GAP, ncols * (w + _GAP) + _GAP), _GAP_VALUE, dtype=np.float32)
    data = images.detach().cpu().float().clamp(0.0, 1.0).numpy()
    for i in range(n):
        r, c = divmod(i, ncols)
        top, left = _GAP + r * (h + _GAP), _GAP + c * (w + _GAP)
        out[top : top + h, left : left + w] = data[i]
    return out


def grid_figure_size(rows: list[tuple[str, torch.Tensor]], *, ncols: int) -> tuple[float, float]:
    """Width and height in inches of the figure :func:`save_grid_png` writes for ``rows``."""
    width = max(ncols * CELL_INCHES, MIN_WIDTH_INCHES)
    height = sum(TITLE_INCHES + max(1, math.ceil(len(imgs) / ncols)) * CELL_INCHES for _, imgs in rows)
    return width, height


def save_grid_png(path: str | Path, rows: list[tuple[str, torch.Tensor]], *, ncols: int) -> Path:
    """Write a PNG with one titled block of grayscale samples per ``(title, images)`` group.

    ``images`` is ``[N, H, W]`` or ``[N, 1, H, W]`` in ``[0, 1]`` (clamped), laid out
    row-major with ``ncols`` samples per row, e.g. 10 prompts x k samples, one prompt per
    row, with ``ncols=k``. Samples are upscaled with nearest-neighbour interpolation so that
    individual pixels stay visible. Parent directories are created. Returns the path.
    """
    if ncols < 1:
        raise ValueError(f"ncols must be positive, got {ncols}")
    if not rows:
        raise ValueError("save_grid_png needs at least one (title, images) group")
    blocks = []
    for title, images in rows:
        if images.dim() == 4 and images.shape[1] == 1:
            images = images[:, 0]
        if images.dim() != 3 or images.shape[0] == 0:
            raise ValueError(
                f"group {title!r}: expected non-empty images [N, H, W], got {list(images.shape)}"
            )
        blocks.append((title, _mosaic(images, ncols), max(1, math.ceil(images.shape[0] / ncols))))

    width, height = grid_figure_size(rows, ncols=ncols)
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    top = height
    for title, mosaic, nrows in blocks:
        grid_h = nrows * CELL_INCHES
        top -= TITLE_INCHES
        ax = fig.add_axes((0.0, (top - grid_h) / height, 1.0, grid_h / height))
        ax.imshow(mosaic, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(title, fontsize=11, pad=4)
        top -= grid_h
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png", facecolor="white")
    return path


def save_curve_png(
    path: str | Path,
    series: dict[str, list[tuple[int, float]]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
) -> Path:
    """Write a line plot of one or more named curves of ``(step, value)`` points.

    Points are sorted by step; markers are drawn when a curve has few points, so that a
    single evaluation is still visible. Parent directories are created. Returns the path.
    """
    fig = Figure(figsize=(6.4, 4.0), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, points in series.items():
        if not points:
            continue
        ordered = sorted(points)
        ax.plot(
            [step for step, _ in ordered],
            [value for _, value in ordered],
            label=name,
            marker="o" if len(points) <= 30 else None,
            markersize=3,
        )
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if any(series.values()):
        ax.legend(fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def save_bar_png(
    path: str | Path,
    labels: list[str],
    values: list[float],
    lows: list[float] | None = None,
    highs: list[float] | None = None,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
) -> Path:
    """Write a bar chart of one value per label, with error bars from ``lows``/``highs`` (interval
    bounds, not half-widths, so asymmetric intervals such as Wilson's draw correctly)."""
    if len(labels) != len(values):
        raise ValueError(f"{len(labels)} labels but {len(values)} values")
    fig = Figure(figsize=(max(4.0, 0.45 * len(labels) + 1.5), 3.2), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = np.arange(len(labels))
    yerr = None
    if lows is not None and highs is not None:
        v = np.asarray(values, dtype=float)
        yerr = np.stack([v - np.asarray(lows, dtype=float), np.asarray(highs, dtype=float) - v]).clip(min=0.0)
    ax.bar(x, values, yerr=yerr, capsize=3, color="#4c72b0")
    ax.set_xticks(x, labels)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def save_reliability_png(path: str | Path, table: list[dict], *, title: str) -> Path:
    """Reliability diagram: observed frequency against mean predicted probability per bin (point
    size ~ pairs in the bin), with the diagonal of perfect calibration."""
    fig = Figure(figsize=(4.2, 4.0), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    rows = [r for r in table if r["n"]]
    if rows:
        total = sum(r["n"] for r in rows)
        ax.plot([r["predicted"] for r in rows], [r["observed"] for r in rows], color="#4c72b0", linewidth=1)
        ax.scatter([r["predicted"] for r in rows], [r["observed"] for r in rows],
                   s=[20 + 300 * r["n"] / total for r in rows], color="#4c72b0", label="model", zorder=3)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted P(first preferred)")
    ax.set_ylabel("observed frequency")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path
