"""``bench.png``: time per call against N, one panel per (D, dtype), the memory floor as a line."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from benchmarks.impls import IMPLEMENTATIONS

__all__ = ["plot"]


def plot(results: dict[str, Any], path: Path) -> None:
    """Time (p50) vs N per implementation, one panel per (D, dtype), the floor as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results.get("grid", []) if "p50_us" in r]
    panels = sorted({(r["dim"], r["dtype"]) for r in rows})
    if not panels:
        raise ValueError("no timed rows to plot")
    columns = min(3, len(panels))
    lines = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(lines, columns, figsize=(5.2 * columns, 4.0 * lines), squeeze=False)
    device = results.get("meta", {}).get("device_name", "")
    for ax, (dim, dtype) in zip(axes.flat, panels, strict=False):
        panel = [r for r in rows if r["dim"] == dim and r["dtype"] == dtype]
        for layout, style in (("sorted", "-"), ("shuffled", "--")):
            for color, impl in enumerate(IMPLEMENTATIONS):
                points = sorted(
                    (r["n"], r["group_size"], r["p50_us"])
                    for r in panel
                    if r["impl"] == impl and r["ids"] == layout
                )
                if points:
                    ax.plot(
                        [p[0] for p in points],
                        [p[2] for p in points],
                        style,
                        marker="o",
                        markersize=3,
                        color=f"C{color}",
                        label=f"{impl} ({layout})",
                    )
        floor = sorted({(r["n"], r["floor_us"]) for r in panel})
        ax.plot(
            [f[0] for f in floor], [f[1] for f in floor], "k:", linewidth=2, label="memory floor"
        )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("N (rows)")
        ax.set_ylabel("time per call, p50 (us)")
        ax.set_title(f"D={dim}, {dtype}")
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    ncol = min(4, max(1, columns * 2))
    fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=8)
    fig.suptitle(f"DRA adjust_rewards: time vs N ({device})", fontsize=10)
    rows_of_labels = -(-len(labels) // ncol)
    fig.tight_layout(rect=(0, min(0.5, 0.045 * (rows_of_labels + 1) / lines), 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
