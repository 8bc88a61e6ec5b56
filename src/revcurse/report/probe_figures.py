"""Figures of the mechanism probes (probes/probes.jsonl and the final probe tensors of each model).

Each function takes ``models``: a list of ``ProbedModel`` (family, seed, records, final tensors),
so the figures do not care where the numbers came from.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.ticker import FixedLocator, NullLocator

from revcurse import files
from revcurse.probes.gradients import GROUPS
from revcurse.probes.inputs import PAIRINGS
from revcurse.probes.theory import rope_score_correlation
from revcurse.report.figures import FAMILY_COLORS, plt, save


@dataclass
class ProbedModel:
    family: str
    seed: int
    records: list[dict[str, Any]]
    final: dict[str, Any]  # tensors of the final probe (s_<pairing>, s_rev_<pairing>, cosines)

    @property
    def label(self) -> str:
        return f"{self.family}-seed{self.seed}"


def load_probed(run_dir: Path, family: str, seed: int) -> ProbedModel | None:
    """The probe records of one model run, or None when it was trained without probes."""
    path = run_dir / "probes" / "probes.jsonl"
    if not path.is_file():
        return None
    records = files.read_jsonl(path)
    last = records[-1]["step"]
    tensors_path = run_dir / "probes" / f"step-{last:07d}.safetensors"
    final = files.load_tensors(tensors_path) if tensors_path.is_file() else {}
    return ProbedModel(family, seed, records, final)


def _series(records: Sequence[dict[str, Any]], *path: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for r in records:
        node: Any = r
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if node is not None:
            steps.append(r["step"])
            values.append(float(node))
    return steps, values


PAIRING_STYLE = {"mirror": "-", "forward": "--"}
PAIRING_MEANING = {"mirror": "mirror pairing (same answer)",
                   "forward": "forward pairing (other answer)"}  # fmt: skip


def _key_below(fig, models: Sequence[ProbedModel], pairings: Sequence[str] = ()) -> None:
    """One legend under the panels (where it covers no curve): a colour per family and a line
    style per pairing; every seed is a thin line of its family's colour, so seeds are not
    listed one by one (they would all read the same)."""
    from matplotlib.lines import Line2D

    families = list(dict.fromkeys(m.family for m in models))
    handles = [Line2D([], [], color=FAMILY_COLORS.get(f, "gray"), lw=1.5,
                      label=f"{f.upper()} (one line per seed)") for f in families]  # fmt: skip
    handles += [Line2D([], [], color="black", lw=1, ls=PAIRING_STYLE[p], label=PAIRING_MEANING[p])
                for p in pairings]  # fmt: skip
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))


PAIRING_QUERY = {"mirror": "[M] REL b", "forward": "a REL [M]"}


def attention_scatter(models: Sequence[ProbedModel], path: Path) -> Path | None:
    """S_pair vs S_rev over facts (layer 0, head 0), one panel per (family, pairing), first seed."""
    firsts: dict[tuple[str, str], ProbedModel] = {}
    for m in models:
        for pairing in PAIRINGS:
            if f"s_{pairing}" in m.final:
                firsts.setdefault((m.family, pairing), m)
    if not firsts:
        return None
    fig, axes = plt.subplots(1, len(firsts), figsize=(4.2 * len(firsts), 3.8), squeeze=False)
    for ax, ((family, pairing), m) in zip(axes[0], firsts.items(), strict=True):
        x = m.final[f"s_{pairing}"][0, 0].numpy()
        y = m.final[f"s_rev_{pairing}"][0, 0].numpy()
        r = np.corrcoef(x, y)[0, 1]
        ax.scatter(x, y, s=10, color=FAMILY_COLORS.get(family, "gray"), alpha=0.7)
        lo, hi = min(x.min(), y.min()), max(x.max(), y.max())
        ax.plot([lo, hi], [lo, hi], color="gray", lw=0.8, ls=":")
        ax.set_xlabel(f"S_{pairing} ({PAIRING_QUERY[pairing]})")
        ax.set_ylabel("S_rev (b REL [M])")
        ax.set_title(f"{family.upper()} seed {m.seed}, {pairing} pairing, L0 H0: r = {r:+.2f}",
                     fontsize=9)  # fmt: skip
    fig.tight_layout()
    return save(fig, path)


def attention_vs_step(models: Sequence[ProbedModel], path: Path) -> Path:
    """Mean (over layers and heads) Pearson correlation of S_pair and S_rev against step, one line
    per model and pairing (solid: mirror, dashed: forward)."""
    fig, ax = plt.subplots(figsize=(7.0, 4.0))
    for m in models:
        for pairing in PAIRINGS:
            steps, values = _series(m.records, "attention", pairing, "mean_pearson")
            if steps:
                ax.plot(steps, values, color=FAMILY_COLORS.get(m.family, "gray"), alpha=0.8,
                        lw=1, ls=PAIRING_STYLE[pairing], label=f"{m.label} {pairing}")  # fmt: skip
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xlabel("step")
    ax.set_ylabel("Pearson r(S_pair, S_rev) over facts")
    ax.set_title("Attention-score coupling during training", fontsize=9)
    _key_below(fig, models, PAIRINGS)
    return save(fig, path)


def attention_vs_distance(
    models: Sequence[ProbedModel], head_dim: int, rope_base: float | None, path: Path
) -> Path | None:
    """Final coupling against relative distance Delta, per family and pairing, with the RoPE theory
    curve (which is for the mirror pairing: same query and key at offsets +Delta and -Delta)."""
    curves: dict[tuple[str, str], list[tuple[list[int], list[float]]]] = defaultdict(list)
    for m in models:
        for pairing, dist in (m.records[-1].get("distance") or {}).items():
            curves[(m.family, pairing)].append(
                ([d["delta"] for d in dist], [float(np.mean(d["pearson"])) for d in dist])
            )
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    all_deltas = sorted({d for runs in curves.values() for xs, _ in runs for d in xs})
    for (family, pairing), runs in curves.items():
        color, ls = FAMILY_COLORS.get(family, "gray"), PAIRING_STYLE[pairing]
        for xs, ys in runs:
            ax.plot(xs, ys, color=color, alpha=0.3, lw=1, ls=ls, marker="o", ms=2)
        mean = np.mean([ys for _, ys in runs], axis=0)
        ax.plot(runs[0][0], mean, color=color, lw=2, ls=ls,
                label=f"{family.upper()} {pairing} (mean over seeds)")  # fmt: skip
    if rope_base is not None:
        grid = np.linspace(min(all_deltas), max(all_deltas), 400)
        theory = [rope_score_correlation(head_dim, rope_base, d) for d in grid]
        ax.plot(grid, theory, color="black", ls=":", lw=1.2,
                label=f"RoPE theory (mirror pairing), isotropic q,k (d={head_dim}, "
                      f"base={rope_base:g})")  # fmt: skip
    ax.axhline(0, color="gray", lw=0.6)
    ax.set_xscale("symlog", linthresh=4)
    ax.set_xlabel("relative distance Delta = fillers + 2")
    ax.set_ylabel("Pearson r(S_pair, S_rev)")
    ax.set_title("Coupling vs distance (fillers inserted at probe time)", fontsize=10)
    ax.legend(fontsize=6)
    return save(fig, path)


def gradient_cosines(models: Sequence[ProbedModel], path: Path) -> Path:
    """Cosine of forward- and reverse-loss gradients per parameter group against step."""
    panels = [
        ("mdm", "cos_mirror_rev", "MDM: [M] REL b vs reverse (paper's pairing)"),
        ("mdm", "cos_fwd_rev", "MDM: forward query vs reverse query"),
        ("arm", "cos_fwd_rev", "ARM: forward query vs reverse query"),
    ]
    panels = [p for p in panels if any(m.family == p[0] for m in models)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.6), squeeze=False,
                             sharey=True)  # fmt: skip
    cmap = plt.get_cmap("tab10")
    for ax, (family, key, title) in zip(axes[0], panels, strict=True):
        fam = [m for m in models if m.family == family]
        for i, group in enumerate((*GROUPS, "all")):
            runs = [_series(m.records, "gradients", key, group) for m in fam]
            runs = [r for r in runs if r[0]]
            if not runs:
                continue
            n = min(len(r[1]) for r in runs)
            mean = np.mean([r[1][:n] for r in runs], axis=0)
            ax.plot(runs[0][0][:n], mean, lw=2.2 if group == "all" else 1,
                    color="black" if group == "all" else cmap(i), label=group)  # fmt: skip
        ax.axhline(0, color="gray", lw=0.6)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
    axes[0][0].set_ylabel("cos(g_fwd, g_rev), mean over seeds")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    return save(fig, path)


PART_STYLE = {"storage": "-", "routing": "--"}


def storage_routing(models: Sequence[ProbedModel], path: Path) -> Path | None:
    """The mechanism's two parts over training, per family (mean over seeds): the cosine of the
    forward-query and of the training-loss gradient with the reverse-query gradient restricted
    to storage (embeddings, values/output, MLP, unembedding) and to routing (queries, keys)
    parameters, and each part's first-order change of the reverse loss per SGD step."""
    panels = [
        (("gradients", "cos_fwd_rev"), "cos(g_forward query, g_reverse query)", False),
        (("gradients", "cos_train_rev"), "cos(g_training loss, g_reverse query)", False),
        (("gradients", "first_order", "predicted_parts"),
         "first-order change of the reverse loss, one SGD step (-lr <g_train, g_rev>)", True),
    ]  # fmt: skip
    if not any(_series(m.records, *panels[2][0], "storage")[0] for m in models):
        return None  # records written before the parts existed
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for ax, (keys, title, symlog) in zip(axes, panels, strict=True):
        for family in dict.fromkeys(m.family for m in models):
            fam = [m for m in models if m.family == family]
            for part, ls in PART_STYLE.items():
                runs = [r for r in (_series(m.records, *keys, part) for m in fam) if r[0]]
                if not runs:
                    continue
                n = min(len(r[1]) for r in runs)
                ax.plot(runs[0][0][:n], np.mean([r[1][:n] for r in runs], axis=0), ls=ls,
                        color=FAMILY_COLORS.get(family, "gray"),
                        label=f"{family.upper()} {part}")  # fmt: skip
        ax.axhline(0, color="gray", lw=0.6)
        if symlog:
            ax.set_yscale("symlog", linthresh=1e-6)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
    axes[0].set_ylabel("mean over seeds")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    return save(fig, path)


def reverse_loss(models: Sequence[ProbedModel], path: Path) -> Path:
    """Reverse loss while training on forward data only, and the first-order check."""
    fig, (ax_loss, ax_fo) = plt.subplots(1, 2, figsize=(10.5, 3.8))
    predicted, actual, colors = [], [], []
    for m in models:
        color = FAMILY_COLORS.get(m.family, "gray")
        steps, values = _series(m.records, "gradients", "loss", "reverse")
        ax_loss.plot(steps, values, color=color, lw=1, alpha=0.8)
        for r in m.records:
            fo = r.get("gradients", {}).get("first_order")
            if fo:
                predicted.append(fo["predicted"])
                actual.append(fo["actual"])
                colors.append(color)
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("reverse-query loss (CE)")
    ax_loss.set_title("Reverse loss, training on forward statements only", fontsize=10)
    if predicted:
        ax_fo.scatter(predicted, actual, s=8, c=colors, alpha=0.7)
        lim = max(max(map(abs, predicted)), max(map(abs, actual)))
        ax_fo.plot([-lim, lim], [-lim, lim], color="gray", ls=":", lw=0.8)
        linthresh = lim / 1e4
        # 0 and every second decade outside the linear band: ticks at +-linthresh sit a few
        # pixels from 0 and their labels collide with its
        top = int(np.floor(np.log10(lim)))
        decades = [10.0**k for k in range(top, int(np.floor(np.log10(linthresh))) + 1, -2)]
        ticks = sorted([0.0, *decades, *(-d for d in decades)])
        for axis, set_scale in ((ax_fo.xaxis, ax_fo.set_xscale), (ax_fo.yaxis, ax_fo.set_yscale)):
            set_scale("symlog", linthresh=linthresh)
            axis.set_major_locator(FixedLocator(ticks))
            axis.set_minor_locator(NullLocator())
        ax_fo.tick_params(labelsize=7)
    ax_fo.set_xlabel("predicted  -lr <g_train, g_rev>")
    ax_fo.set_ylabel("actual change of reverse loss")
    ax_fo.set_title("First-order check of one SGD step on the training loss", fontsize=10)
    _key_below(fig, models)
    return save(fig, path)


def signal_cosines(models: Sequence[ProbedModel], path: Path) -> Path:
    """Mean per-fact cosine of the paired and the reverse query's back-propagated signals against
    step (solid: mirror pairing, same answer; dashed: forward pairing, different answers)."""
    names = ("e", "u", "z.0")
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.4), sharey=True)
    for ax, name in zip(axes, names, strict=True):
        for m in models:
            for pairing in PAIRINGS:
                steps, values = _series(m.records, "signals", pairing, name, "cosine")
                if steps:
                    ax.plot(steps, values, color=FAMILY_COLORS.get(m.family, "gray"), lw=1,
                            alpha=0.8, ls=PAIRING_STYLE[pairing])  # fmt: skip
        ax.axhline(0, color="gray", lw=0.6)
        ax.set_title({"e": "output error e = p - onehot", "u": "hidden signal u = W_U^T e",
                      "z.0": "signal at o_proj input (layer 0)"}[name], fontsize=9)  # fmt: skip
        ax.set_xlabel("step")
    axes[0].set_ylabel("mean cos(pair, rev) over facts")
    _key_below(fig, models, PAIRINGS)
    return save(fig, path)
