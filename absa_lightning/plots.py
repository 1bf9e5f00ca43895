"""The pictures a run leaves in its folder: loss dynamics and the embedding space."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on clusters

import matplotlib.lines
import matplotlib.patches
import matplotlib.pyplot as plt
import torch

REGIME_COLOURS = {
    "healthy": "#d9f0d3",
    "contrastive_lags": "#fee8c8",
    "focal_lags": "#deebf7",
    "stalled": "#fcbba1",
    "converged": "#bdbdbd",
    "warming_up": "#f2f2f2",
    "over_fitting": "#fdae6b",
    "under_training": "#c6dbef",
    "collapse": "#969696",
}
POLARITY_COLOURS = ["#1a9850", "#d73027", "#878787", "#7b3294", "#e08214"]


def loss_dynamics(rows: list[dict], path: str | Path, patience: int = 1) -> None:
    """The curves the reading uses: focal, contrastive over its chance level (train solid, val
    dashed) and val pair F1 by epoch; the regime read after each epoch as its background band,
    pale where it had not yet held `patience` consecutive epochs (what loss/balancer=rule
    waits for)."""
    epochs = [int(r["epoch"]) for r in rows]  # ints from the callback, strings from a csv
    panels = [
        ("focal loss", "focal", "val_focal"),
        ("contrastive / chance", "contrastive_norm", "val_contrastive_norm"),
        ("val pair F1", "val_pair_f1", None),
    ]
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 7), sharex=True)
    for ax, (title, train_key, val_key) in zip(axes, panels, strict=True):
        for epoch, row in zip(epochs, rows, strict=True):
            colour = REGIME_COLOURS.get(row["regime"], "#ffffff")
            held = int(row.get("held") or patience)
            alpha = 1.0 if held >= patience else 0.4
            ax.axvspan(epoch - 0.5, epoch + 0.5, color=colour, lw=0, alpha=alpha)
        ax.plot(
            epochs,
            [float(r.get(train_key, "nan")) for r in rows],
            "o-",
            label="train" if val_key else "val",
        )
        if val_key:
            ax.plot(epochs, [float(r.get(val_key, "nan")) for r in rows], "s--", label="val")
        untrained = train_key == "contrastive_norm" and all(
            float(r.get("contrastive_weight", 1)) == 0 for r in rows
        )
        ax.set_ylabel(title + ("\n(weight 0: not read)" if untrained else ""))
        ax.legend(loc="best", fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("epoch")
    handles = [
        matplotlib.patches.Patch(color=c, label=name.replace("_", " "))
        for name, c in REGIME_COLOURS.items()
        if any(r["regime"] == name for r in rows)
    ]
    if patience > 1:
        handles.append(
            matplotlib.patches.Patch(
                color="#bdbdbd", alpha=0.4, label=f"pale: held < {patience} epochs"
            )
        )
    fig.legend(
        handles=handles,
        loc="upper center",
        ncol=min(5, len(handles) or 1),
        fontsize=8,
        frameon=False,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def embedding_panels(
    embeddings: torch.Tensor,
    aspects: torch.Tensor,
    polarities: torch.Tensor,
    aspect_names: list[str],
    polarity_names: list[str],
    title: str,
    path: str | Path,
    max_panels: int | None = None,
) -> None:
    """One panel per aspect (most mentioned first): that aspect's embeddings projected on their
    own first two principal components, coloured by polarity."""
    counts = torch.bincount(aspects, minlength=len(aspect_names))
    order = [int(a) for a in counts.argsort(descending=True) if counts[a] > 0]
    order = order[:max_panels] if max_panels else order
    columns = min(5, max(1, len(order)))
    rows = math.ceil(len(order) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, aspect in zip(axes.flat, order, strict=False):
        cells = aspects == aspect
        points = embeddings[cells].double()
        centred = points - points.mean(dim=0)
        # Right singular vectors = principal axes; a lone point sits at the origin.
        _, _, v = torch.linalg.svd(centred, full_matrices=False)
        xy = (centred @ v[:2].T).numpy() if len(points) > 1 else centred[:, :2].numpy()
        labels = polarities[cells]
        for p in range(1, len(polarity_names) + 1):
            chosen = (labels == p).numpy()
            if chosen.any():
                colour = POLARITY_COLOURS[(p - 1) % len(POLARITY_COLOURS)]
                y = xy[chosen, 1] if xy.shape[1] > 1 else xy[chosen, 0] * 0
                ax.scatter(xy[chosen, 0], y, s=6, alpha=0.6, color=colour)
        ax.set_axis_on()
        ax.set_title(f"{aspect_names[aspect]} ({int(counts[aspect])})", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [
        matplotlib.lines.Line2D(
            [], [], marker="o", ls="", color=POLARITY_COLOURS[i % len(POLARITY_COLOURS)], label=n
        )
        for i, n in enumerate(polarity_names)
    ]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.95))
    fig.savefig(path, dpi=100)
    plt.close(fig)
