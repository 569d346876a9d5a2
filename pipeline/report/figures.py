"""How the results page's figures are written: the legend outside on the right (it names rows as the
tables do, so it is wide), the PNG written atomically, the figure closed."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402

from pipeline._atomic import write_atomic  # noqa: E402

__all__ = ["save_with_legend"]


def save_with_legend(fig: plt.Figure, ax: plt.Axes, path: Path) -> list[str]:
    """Add ``ax``'s legend beside it, write ``fig`` to ``path`` as PNG and close it; returns the legend's labels."""
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    labels = ax.get_legend_handles_labels()[1]
    fig.tight_layout()
    write_atomic(path, lambda f: fig.savefig(f, format="png", bbox_inches="tight"))  # a long title stays whole
    plt.close(fig)
    return labels
