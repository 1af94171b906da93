"""Matplotlib set-up and saving shared by the pipelines' plots (files only, no display)."""

from pathlib import Path


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend, imported on first use (matplotlib is a demo extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path) -> Path:
    """Writes ``fig`` to ``path`` (parent folders made) at 100 dpi and closes it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    pyplot().close(fig)
    return path
