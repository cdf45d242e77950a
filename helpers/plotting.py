"""One plotting style for every notebook, and saving figures next to summary.json."""

from __future__ import annotations

from pathlib import Path

import matplotlib as mpl
import matplotlib.pyplot as plt
import seaborn as sns

PALETTE = "colorblind"


def use_style() -> None:
    """Seaborn's whitegrid with the colourblind palette; fixed figure size and dpi."""
    sns.set_theme(context="notebook", style="whitegrid", palette=PALETTE)
    mpl.rcParams.update({
        "figure.figsize": (7.5, 4.0),
        "figure.dpi": 100,
        "savefig.dpi": 120,
        "savefig.bbox": "tight",
        "axes.titlesize": "medium",
        "axes.spines.top": False,
        "axes.spines.right": False,
        "svg.hashsalt": "workbooks",  # deterministic SVG ids
    })


def save(fig: plt.Figure, output_dir: str | Path, name: str) -> Path:
    """Save ``fig`` as ``<output_dir>/figures/<name>.png`` and return the path."""
    out = Path(output_dir) / "figures"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    fig.savefig(path, metadata={"Software": None})
    from helpers.findings import record_written

    record_written(output_dir, path)
    return path


def show(fig: plt.Figure, output_dir: str | Path, name: str) -> Path:
    """Save ``fig``, close it, and display the saved PNG: one render instead of two."""
    from IPython.display import Image, display

    path = save(fig, output_dir, name)
    plt.close(fig)
    display(Image(filename=str(path)))
    return path
