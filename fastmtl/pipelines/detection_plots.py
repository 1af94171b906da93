"""Pictures of the detection pipeline: detections against ground truth, and the training losses."""

from collections.abc import Sequence
from pathlib import Path

from fastmtl.pipelines._figures import pyplot, save_figure

__all__ = ["save_detection_grid", "save_loss_plot"]

_COLOURS = ("tab:red", "tab:orange", "tab:cyan", "tab:purple", "tab:pink", "tab:olive")


def save_detection_grid(
    images: Sequence,
    detections: Sequence,
    targets: Sequence,
    path,
    *,
    class_names: Sequence = (),
    score_threshold: float = 0.5,
    title: str = "",
) -> Path:
    """One panel per image: ground truth dashed in green, detections scoring at least
    ``score_threshold`` in a colour per class with ``label score``. Writes a PNG at ``path``."""
    plt = pyplot()
    n = len(images)
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, det, tgt in zip(axes.flat, images, detections, targets):
        ax.imshow(image.detach().cpu().permute(1, 2, 0).clamp(0, 1).numpy())
        for x1, y1, x2, y2 in tgt["boxes"].tolist():
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="lime", ls="--", lw=1.2))
        for (x1, y1, x2, y2), s, c in zip(
            det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist()
        ):
            if s < score_threshold:
                continue
            colour = _COLOURS[(c - 1) % len(_COLOURS)]
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec=colour, lw=1.5))
            name = class_names[c] if c < len(class_names) else str(c)
            ax.text(
                x1,
                y1 - 1,
                f"{name} {s:.2f}",
                color="white",
                fontsize=7,
                va="bottom",
                bbox={"facecolor": colour, "alpha": 0.7, "pad": 1, "lw": 0},
            )
    fig.suptitle(title or f"detections (score >= {score_threshold}) vs ground truth (dashed)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def save_loss_plot(history: Sequence, path, *, title: str = "training losses") -> Path:
    """Plots each named loss of ``history`` (one dict of floats per step) on a log scale."""
    fig, ax = pyplot().subplots(figsize=(7, 4))
    for name in history[0] if history else ():
        ax.plot([h[name] for h in history], label=name, lw=2.0 if name == "total" else 1.0)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
