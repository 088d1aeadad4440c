"""End-of-run curves as a PNG (DESIGN §9), drawn from metrics records (see `rlhf.trainers.metrics`).

Uses matplotlib's object API with the Agg canvas rather than pyplot: no display, no global backend
switch, no figure registry to leak across a long process. matplotlib is imported only when called.
"""
from __future__ import annotations

import math
import os
from pathlib import Path


def plot_curves(records: list[dict], keys: list[str], out_path: str | os.PathLike) -> Path:
    """Save one subplot per key (x = record["step"]) to `out_path` and return it as a Path.

    Keys that no record has are skipped; None/NaN values are gaps in the line. With no key present
    the PNG still gets written, saying so, so callers never have to special-case an empty run.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    present = [k for k in keys if any(k in r for r in records)]
    ncols = min(len(present), 3) or 1
    nrows = max(math.ceil(len(present) / ncols), 1)
    fig = Figure(figsize=(4.5 * ncols, 3.2 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    if not present:
        fig.text(0.5, 0.5, "no metrics to plot", ha="center", va="center")
    for i, key in enumerate(present):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        points = [(r["step"], r[key]) for r in records if key in r]
        steps = [s for s, _ in points]
        values = [math.nan if v is None else float(v) for _, v in points]
        ax.plot(steps, values, marker="." if len(points) < 50 else None, linewidth=1.2)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, format="png", dpi=100)
    return out_path
