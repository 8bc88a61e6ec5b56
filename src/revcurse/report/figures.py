"""Matplotlib figures of experiment results (Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from revcurse import files  # noqa: E402

FAMILY_COLORS = {"mdm": "#1f77b4", "arm": "#d62728"}
VARIANT_COLORS = ("#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
"""Colours for the models that are neither family (variants), none of them the MDM's or the ARM's."""


def model_colors(names: Sequence[str]) -> dict[str, str]:
    """A distinct colour per model of one figure: the families their own, the others in turn."""
    others = iter(VARIANT_COLORS * (1 + len(names) // len(VARIANT_COLORS)))
    return {n: FAMILY_COLORS[n] if n in FAMILY_COLORS else next(others) for n in names}


def save(fig: plt.Figure, path: Path) -> Path:
    """Save a figure as PNG atomically and close it."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    files.write_bytes(path, buf.getvalue())
    return path


def accuracy_by_family(
    rows: Sequence[dict[str, Any]], families: Sequence[str], chance: dict[str, float], path: Path
) -> Path:
    """Forward, mirror and reverse accuracy per family: bars at the seed mean, one dot per seed
    (no mirror bar for a family that cannot be asked it)."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    width = 0.27
    style = {"forward": (0.8, None), "mirror": (0.55, ".."), "reverse": (0.35, "//")}
    rng = np.random.default_rng(0)  # jitter of the per-seed dots only
    for i, family in enumerate(families):
        fam_rows = [r for r in rows if r["family"] == family]
        for j, direction in enumerate(("forward", "mirror", "reverse")):
            if any(r.get(f"{direction}_accuracy") is None for r in fam_rows):
                continue
            values = np.array([r[f"{direction}_accuracy"] for r in fam_rows])
            x = i + (j - 1) * width
            alpha, hatch = style[direction]
            ax.bar(x, values.mean(), width * 0.9, color=FAMILY_COLORS.get(family, "gray"),
                   alpha=alpha, edgecolor="black", hatch=hatch,
                   label=f"{family.upper()} {direction}")  # fmt: skip
            jitter = rng.uniform(-width * 0.2, width * 0.2, size=len(values))
            ax.scatter(x + jitter, values, color="black", s=14, zorder=3)
    ax.axhline(chance["reverse"], color="gray", ls="--", lw=1, label="chance (1/N)")
    ax.set_xticks(range(len(families)), [f.upper() for f in families])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("top-1 accuracy")
    ax.set_title("Forward, mirror, reverse accuracy (bars: seed mean; dots: seeds)", fontsize=10)
    ax.legend(fontsize=7, loc="center right", bbox_to_anchor=(1.38, 0.5))
    return save(fig, path)


def before_and_after(
    rows: Sequence[dict[str, Any]],
    families: Sequence[str],
    readings: dict[str, str],
    splits: Sequence[str],
    path: Path,
    chance: float | None = None,
) -> Path:
    """A fine-tune comparison read several ways: one panel per reading (``readings``: title ->
    metric), per family and split a pale bar before fine-tuning and a solid one after (seed
    means), one dot per seed. ``rows`` hold ``{stage}.{split}.{metric}`` per (family, seed)."""
    fig, axes = plt.subplots(1, len(readings), figsize=(3.4 * len(readings), 3.4), sharey=True)
    axes = np.atleast_1d(axes)
    colors = model_colors(list(families))
    width = 0.8 / (2 * len(splits))
    rng = np.random.default_rng(0)  # jitter of the per-seed dots only
    for ax, (title, metric) in zip(axes, readings.items(), strict=True):
        for i, family in enumerate(families):
            fam_rows = [r for r in rows if r["family"] == family]
            for j, (split, stage) in enumerate((s, g) for s in splits for g in ("before", "after")):
                values = np.array([r[f"{stage}.{split}.{metric}"] for r in fam_rows])
                x = i - 0.4 + width * (j + 0.5)
                ax.bar(x, values.mean(), width * 0.9, color=colors[family], edgecolor="black",
                       alpha=0.35 if stage == "before" else 0.9,
                       hatch="//" if split != splits[0] else None)  # fmt: skip
                jitter = rng.uniform(-width * 0.2, width * 0.2, size=len(values))
                ax.scatter(x + jitter, values, color="black", s=10, zorder=3)
        if chance is not None:
            ax.axhline(chance, color="gray", ls="--", lw=1)
        ax.set_xticks(range(len(families)), list(families))
        ax.set_title(title, fontsize=10)
        ax.set_ylim(0, 1.05)
    axes[0].set_ylabel("accuracy")
    handles = [
        plt.Rectangle((0, 0), 1, 1, facecolor="white", edgecolor="black",
                      hatch="//" if split != splits[0] else None, label=split)
        for split in splits
    ] + [
        plt.Rectangle((0, 0), 1, 1, facecolor="gray", alpha=a, edgecolor="black", label=stage)
        for stage, a in (("before fine-tuning", 0.35), ("after", 0.9))
    ]  # fmt: skip
    if chance is not None:
        handles.append(Line2D([], [], color="gray", ls="--", label="chance (ranks)"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8,
               bbox_to_anchor=(0.5, -0.08))  # fmt: skip
    return save(fig, path)


def training_curves(curves: dict[str, list[dict[str, Any]]], path: Path) -> Path:
    """Loss and forward/reverse accuracy against step; one line per model (label -> metrics)."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
    for label, records in curves.items():
        family = label.split("-")[0]
        color = FAMILY_COLORS.get(family, "gray")
        train = [r for r in records if r.get("kind") == "train"]
        evals = [r for r in records if r.get("kind") == "eval"]
        ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], color=color,
                     alpha=0.7, lw=1)  # fmt: skip
        steps = [r["step"] for r in evals]
        ax_acc.plot(steps, [r["forward_accuracy"] for r in evals], color=color, alpha=0.7, lw=1)
        ax_acc.plot(steps, [r["reverse_accuracy"] for r in evals], color=color, alpha=0.7, lw=1,
                    ls="--")  # fmt: skip
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("training loss")
    ax_loss.set_title("Training loss\n(MDM: diffusion bound, ARM: next-token CE)", fontsize=10)
    # one entry per family: every model of a family has its colour, so seeds are not listed
    families = list(dict.fromkeys(label.split("-")[0] for label in curves))
    ax_loss.legend(handles=[Line2D([], [], color=FAMILY_COLORS.get(f, "gray"),
                                   label=f"{f.upper()} (one line per seed)") for f in families],
                   fontsize=7)  # fmt: skip
    ax_acc.set_xlabel("step")
    ax_acc.set_ylabel("top-1 accuracy")
    ax_acc.set_ylim(-0.02, 1.02)
    ax_acc.set_title("Accuracy during training\n(solid: forward, dashed: reverse)", fontsize=10)
    return save(fig, path)
