"""The report of a sweep or named experiment: aggregates per group, figures against the swept
value, failures, and (distance, depth) the probe views those experiments are about.

A sweep in slices (``SweepConfig.slices``) is reported slice by slice, fit first: each cell's
reverse accuracy is read over the seeds that fitted forward and mirror
(:func:`revcurse.stats.fit_summary`), unfitted cells are marked as such, the slice's paired tests
stand beside it, and per-head attention masses show which heads read the context entity in the
mirror query and in the reverse one."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from revcurse import files
from revcurse.config import SweepConfig, dump_yaml
from revcurse.probes.theory import rope_score_correlation
from revcurse.report.figures import FAMILY_COLORS, plt, save
from revcurse.report.render import Block, Figure, Heading, Para, Pre, Table, to_html, to_markdown
from revcurse.stats import FIT_THRESHOLD, comparison_cells
from revcurse.tracking import eval_history

PANELS = [
    ("forward_accuracy", "forward accuracy"),
    ("mirror_accuracy", "mirror accuracy ([M] REL b, bidirectional models)"),
    ("reverse_accuracy", "reverse accuracy"),
    ("probe.attention_pearson_mirror_mean", "attention r(S_mirror, S_rev), mean over training"),
    ("probe.attention_pearson_forward_mean", "attention r(S_forward, S_rev), mean over training"),
    ("probe.grad_cos_fwd_rev_mean", "grad cos fwd/rev, mean over training"),
]
LINESTYLES = ["-", "--", ":", "-."]


def _x_key(cfg: SweepConfig, named: Any) -> str:
    if named is not None:
        return named.x
    if cfg.variants:
        return "variant"
    keys = [k for k in cfg.grid if k != "model.causal"]
    return keys[0] if keys else "family"


def _hue_key(cfg: SweepConfig, named: Any, x: str) -> str | None:
    if named is not None:
        return named.hue
    keys = [k for k in cfg.grid if k not in (x, "model.causal")]
    return keys[0] if keys else None


def metrics_figure(
    rows: list[dict[str, Any]], x: str, hue: str | None, path: Path, theory: dict | None = None
) -> Path:
    """Each headline metric against ``x``: one line per (family, hue), mean +- std, seed dots."""
    done = [r for r in rows if r["status"] == "done"]
    xs = list(dict.fromkeys(r[x] for r in done))
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in xs)
    position = {v: (v if numeric else i) for i, v in enumerate(xs)}
    hues = list(dict.fromkeys(r[hue] for r in done)) if hue else [None]
    fig, axes = plt.subplots(3, 2, figsize=(11, 10))
    for ax, (metric, title) in zip(axes.flat, PANELS, strict=True):
        for family in dict.fromkeys(r["family"] for r in done):
            for h_i, h in enumerate(hues):
                sel = [r for r in done if r["family"] == family and (hue is None or r[hue] == h)]
                pts = defaultdict(list)
                for r in sel:
                    if r.get(metric) is not None:
                        pts[r[x]].append(r[metric])
                if not pts:
                    continue
                keys = [k for k in xs if k in pts]
                px = np.array([position[k] for k in keys], dtype=float)
                mean = np.array([np.mean(pts[k]) for k in keys])
                std = np.array([np.std(pts[k], ddof=1) if len(pts[k]) > 1 else 0 for k in keys])
                label = family.upper() + (f", {hue.split('.')[-1]}={h}" if hue else "")
                ax.errorbar(px, mean, yerr=std, color=FAMILY_COLORS.get(family, "gray"),
                            ls=LINESTYLES[h_i % 4], marker="o", ms=3, capsize=2, label=label)  # fmt: skip
                for k in keys:
                    ax.scatter([position[k]] * len(pts[k]), pts[k], s=6, color="black", alpha=0.4)
        if metric == "probe.attention_pearson_mirror_mean" and theory:
            for (label, tx, ty), ls in zip(theory["curves"], LINESTYLES, strict=False):
                ax.plot(tx, ty, color="black", lw=1, ls=ls, label=label)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(x)
        if metric.endswith("accuracy"):
            ax.set_ylim(-0.05, 1.05)
        if not numeric:
            ax.set_xticks(range(len(xs)), [str(v) for v in xs], rotation=20, fontsize=8)
        elif max(xs) / max(min(xs), 1e-9) > 50:
            ax.set_xscale("symlog", linthresh=1)
        ax.axhline(0, color="gray", lw=0.5)
    for ax, size in ((axes[0][1], 7), (axes[1][0], 6)):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=size)
    fig.tight_layout()
    return save(fig, path)


CURVE_TITLES = {"forward_accuracy": "forward (the test facts)",
                "reverse_both_accuracy": "reverse of the facts trained both ways (fit check)",
                "reverse_accuracy": "reverse of the facts trained forward only (the test)"}  # fmt: skip
"""The panels of :func:`curves_figure`: one per metric whose curves the sweep's summary carries
(``summary["curves"]``: the sweep's ``CURVE_METRICS``), titled."""


def curves_figure(out: Path, rows: list[dict[str, Any]], metrics: list[str], x: str,
                  path: Path) -> Path | None:  # fmt: skip
    """Accuracies over training from each run's evaluations (``runs/<id>/metrics.jsonl``): a
    row of panels per family, one colour per value of ``x``, the mean over seeds drawn thick and
    each seed thin (a late transition in one seed stays visible)."""
    done = [r for r in rows if r["status"] == "done"]
    panels = [(m, CURVE_TITLES.get(m, m)) for m in metrics]
    families = list(dict.fromkeys(r["family"] for r in done))
    if not panels or not families:
        return None
    values = list(dict.fromkeys(r[x] for r in done))
    colours = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(values)))
    histories = {r["run_id"]: eval_history(out / "runs" / r["run_id"], metrics) for r in done}
    fig, axes = plt.subplots(len(families), len(panels), squeeze=False,
                             figsize=(4.2 * len(panels), 3.2 * len(families)))  # fmt: skip
    for row_axes, family in zip(axes, families, strict=True):
        for ax, (metric, title) in zip(row_axes, panels, strict=True):
            for i, (value, colour) in enumerate(zip(values, colours, strict=True)):
                seeds = []
                for r in done:
                    if r["family"] != family or r[x] != value:
                        continue
                    steps, curve = histories[r["run_id"]][metric]
                    seeds.append((steps, curve))
                    ax.plot(steps, curve, color=colour, lw=0.6, alpha=0.5)
                if seeds and len({tuple(s) for s, _ in seeds}) == 1:
                    ax.plot(seeds[0][0], np.mean([v for _, v in seeds], axis=0), color=colour,
                            lw=2, ls=LINESTYLES[i % 4], label=f"{x.split('.')[-1]} = {value}")  # fmt: skip
            ax.set_title(f"{family.upper()}: {title}", fontsize=8)
            ax.set_ylim(-0.05, 1.05)
            ax.set_xlabel("step")
    # below the panels, where it covers no curve (a line styled per value: equal curves overlap)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(values), fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return save(fig, path)


def distance_theory(cfg: SweepConfig, rows: list[dict[str, Any]]) -> dict:
    """Theory curves for the distance experiment, on the n_filler axis (Delta = n_filler + 2)."""
    head_dim = cfg.model.d_model // cfg.model.n_heads
    fillers = sorted({r["data.n_filler"] for r in rows})
    grid = np.linspace(min(fillers), max(fillers), 300)
    bases = sorted({r.get("model.rope_base", cfg.model.rope_base) for r in rows})
    return {
        "curves": [
            (
                f"theory, base {b:g}",
                grid,
                [rope_score_correlation(head_dim, b, g + 2) for g in grid],
            )
            for b in bases
        ]
    }


def per_layer_figure(out: Path, rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Final attention coupling per layer (mean over heads and seeds), MDM and ARM panels."""
    curves: dict[tuple[str, int, int], list[list[float]]] = defaultdict(list)
    for r in rows:
        if r["status"] != "done":
            continue
        probes = out / "runs" / r["run_id"] / "probes" / "probes.jsonl"
        if not probes.is_file():
            continue
        final = files.read_jsonl(probes)[-1].get("attention")
        if final:
            key = (r["family"], r["n_layers"], r["n_heads"])
            curves[key].append([float(np.mean(layer)) for layer in final["pearson"]])
    if not curves:
        return None
    families = sorted({k[0] for k in curves}, reverse=True)
    fig, axes = plt.subplots(1, len(families), figsize=(5 * len(families), 3.6), squeeze=False)
    for ax, family in zip(axes[0], families, strict=True):
        for (fam, n_layers, n_heads), values in sorted(curves.items()):
            if fam != family:
                continue
            mean = np.mean(values, axis=0)
            ax.plot(range(n_layers), mean, marker="o",
                    label=f"{n_layers} layer(s), {n_heads} head(s)")  # fmt: skip
        ax.axhline(0, color="gray", lw=0.5)
        ax.set_xlabel("layer")
        ax.set_ylabel("final r(S_fwd, S_rev), mean over heads and seeds")
        ax.set_title(f"{family.upper()}: coupling per layer", fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save(fig, path)


def _short(key: str) -> str:
    return key.split(".")[-1]


def _cell_name(labels: dict[str, Any], keys: list[str]) -> str:
    return ", ".join(f"{_short(k)}={labels[k]}" for k in keys)


def _mean(agg: dict[str, Any], metric: str) -> str:
    return f"{agg[metric]['mean']:.2f}" if metric in agg else "n/a"


SOURCE_LABELS = [
    ("first_token_accuracy", "first token right"), ("later_token_accuracy", "later tokens right"),
    ("wrong_entity", "another entity"), ("wrong_entity_sharing", "... sharing a token"),
    ("wrong_copy", "a copy of the given entity"), ("wrong_other_side", "tokens of the other side"),
    ("wrong_mixture", "a mixture of its side's tokens"), ("wrong_other", "anything else"),
]  # fmt: skip
"""Column titles of :data:`revcurse.evaluation.ANSWER_SOURCES` in tables."""


def _fit_mean(fit: dict[str, Any], key: str) -> str:
    return f"{fit[key]['mean']:.2f}" if key in fit else "-"


def _head_masses(rows: list[dict[str, Any]]) -> str:
    """Per head (last layer), the attention mass on the context entity in the mirror query ->
    in the reverse query, mean over the cell's seeds: ``0.91→0.04``."""
    masses = [r["probe.attention_mass_final"] for r in rows if r.get("probe.attention_mass_final")]
    if not masses or "mirror" not in masses[0]:
        return "n/a"
    mirror = np.mean([m["mirror"][-1] for m in masses], axis=0)
    reverse = np.mean([m["reverse"][-1] for m in masses], axis=0)
    return " ".join(f"{a:.2f}→{b:.2f}" for a, b in zip(mirror, reverse, strict=True))


def slice_blocks(out: Path, summary: dict[str, Any]) -> list[Block]:
    """One section per slice: its question, its cells (fit first), its paired tests, a figure."""
    rows = [r for r in summary["rows"] if r["status"] == "done"]
    blocks: list[Block] = [
        Para(
            f"A cell's reverse accuracy is read over the seeds that fitted: forward (and, for an "
            f"MDM, mirror; where facts are trained in both directions, their reverse too) "
            f"accuracy >= {FIT_THRESHOLD}. A cell with no fitted seed is 'unfitted', "
            "an optimisation result and not a reversal one. Labels: reverses / fails / partial "
            "for a fitted-seed mean >= 0.9 / <= 0.1 / between. Heads: attention mass on the "
            "context entity b in the mirror query [M] REL f.. b → in the reverse query "
            "b REL f.. [M], per head (last layer), mean over seeds. Paired tests: reverse "
            "outcomes paired by seed and fact; decision higher/lower only where the permutation "
            "p < 0.05 and the crossed-bootstrap interval excludes 0 (the permutation test treats "
            "the pairs as independent, so its p alone overstates seed-dependent differences)."
        )
    ]
    for name, info in summary["slices"].items():
        keys = list(info["keys"])
        cells = [a for a in summary["aggregates"] if name in a.get("slices", [])]
        unseen = any("reverse_unseen" in a["fit"] for a in cells)
        rank = any("reverse_rank" in a["fit"] for a in cells)
        table = []
        for agg in cells:
            fit = agg["fit"]
            members = [r for r in rows if name in r.get("slices", [])
                       and all(r[k] == v for k, v in agg["labels"].items())]  # fmt: skip
            rev = fit.get("reverse")
            table.append([
                _cell_name(agg["labels"], keys),
                f"{fit['n_fitted']}/{fit['n']}",
                _mean(agg, "forward_accuracy"), _mean(agg, "mirror_accuracy"),
                _mean(agg, "reverse_accuracy"),
                f"{rev['mean']:.2f} [{rev['ci95'][0]:.2f}, {rev['ci95'][1]:.2f}]" if rev else "-",
                *([_fit_mean(fit, "reverse_rank")] if rank else []),
                fit["label"], _mean(agg, "probe.attention_pearson_mirror_final"),
                _head_masses(members),
                *([_fit_mean(fit, "forward_unseen"), _fit_mean(fit, "reverse_unseen")]
                  if unseen else []),
            ])  # fmt: skip
        blocks += [
            Heading(f"Slice {name}"),
            Para(info["question"]),
            Table(
                [
                    "cell",
                    "fitted seeds",
                    "forward",
                    "mirror",
                    "reverse (all seeds)",
                    "reverse (fitted seeds) [95% CI]",
                    *(["reverse by likelihood rank, top-1 (fitted seeds)"] if rank else []),
                    "reading",
                    "coupling r (mirror pairing)",
                    "heads: mass mirror→reverse",
                    *(
                        [
                            "forward, unseen paraphrase (fitted seeds)",
                            "reverse, unseen paraphrase (fitted seeds)",
                        ]
                        if unseen
                        else []
                    ),
                ],
                table,
            ),  # fmt: skip
        ]
        sourced = [a for a in cells if a["fit"].get("fitted_metrics")]
        if sourced:
            blocks += [
                Para("Where the reverse answers come from (multi-token cells, fitted seeds, "
                     "fractions of the queries): per-position accuracy, and each wrong answer as "
                     "another entity of its side (some sharing a token with the right one), a "
                     "copy of the query's own entity, one holding a token of the other side, a "
                     "mixture of its side's tokens, or anything else."),
                Table(["cell", "fitted seeds", *(t for _, t in SOURCE_LABELS)],
                      [[_cell_name(a["labels"], keys), f"{a['fit']['n_fitted']}/{a['fit']['n']}",
                        *(_fit_mean(a["fit"]["fitted_metrics"], f"reverse_{m}")
                          for m, _ in SOURCE_LABELS)] for a in sourced]),
            ]  # fmt: skip
        tests = [c for c in summary.get("contrasts", []) if c["slice"] == name]
        if tests:
            blocks.append(Table(
                [f"{_short(info['compare'])}: value - baseline", "where", "reverse difference",
                 "95% interval", "p", "seeds x facts", "decision", "fit (value / baseline)"],
                [[f"{c['value']} - {c['baseline']}",
                  ", ".join(f"{_short(k)}={v}" for k, v in c["cell"].items()),
                  *comparison_cells(c["test"])[:4], c["decision"],
                  f"{c['fit']['value']} / {c['fit']['baseline']}"] for c in tests],
            ))  # fmt: skip
        x = figure_axis(keys, cells, info["compare"])
        path = out / "figures" / f"slice-{name}.png"
        if x is not None:
            fig = slice_figure(name, x, keys, cells, path)
            blocks.append(Figure(fig, f"Slice {name}: reverse accuracy over fitted seeds against "
                                      f"{_short(x)} (hollow: no seed fitted; the value is then "
                                      "the all-seed mean)."))  # fmt: skip
        elif len(cells) > 1:  # categorical cells (a family, an attention, an objective)
            fig = cells_figure(name, keys, cells, path)
            blocks.append(Figure(fig, f"Slice {name}: reverse accuracy of each cell, mean over "
                                      "the fitted seeds (hatched: no seed fitted, the all-seed "
                                      "mean); dots: each seed."))  # fmt: skip
    return blocks


def cells_figure(name: str, keys: list[str], cells: list[dict[str, Any]], path: Path) -> Path:
    """One bar per cell of a slice whose keys are not numbers: reverse accuracy over the fitted
    seeds (hatched where none fitted: the all-seed mean), each seed's value as a dot."""
    varying = [k for k in keys if len({repr(a["labels"].get(k)) for a in cells}) > 1] or keys
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(cells)), 3.8))
    for i, agg in enumerate(cells):
        fit = agg["fit"]
        fitted = bool(fit.get("reverse"))
        height = fit["reverse"]["mean"] if fitted else agg["reverse_accuracy"]["mean"]
        ax.bar(i, height, color=f"C{i}", alpha=0.8 if fitted else 0.3,
               hatch=None if fitted else "//", edgecolor=f"C{i}")  # fmt: skip
        seeds = agg["reverse_accuracy"]["values"]
        ax.scatter([i] * len(seeds), seeds, s=12, color="black", zorder=3)
    ax.set_xticks(range(len(cells)),
                  [_cell_name(a["labels"], varying).replace(", ", "\n") for a in cells],
                  fontsize=8)  # fmt: skip
    ax.set_ylabel("reverse accuracy")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(f"slice {name}", fontsize=10)
    fig.tight_layout()
    return save(fig, path)


AXIS_LABELS = {
    "data.n_filler": "fillers between REL and the second entity (distance = fillers + 2)",
    "data.entity_tokens": "tokens per entity",
    "data.templates_per_fact": "paraphrases each fact is trained in",
    "data.n_pairs": "facts",
}


def figure_axis(keys: list[str], cells: list[dict[str, Any]], compare: str) -> str | None:
    """The numeric key a slice's figure puts on its x axis: the filler count where it varies
    (the distance slices), else the compared key, else any key that varies; None when no
    numeric key takes two values."""

    def varies(key: str) -> bool:
        values = {a["labels"].get(key) for a in cells}
        return len(values) > 1 and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in values
        )

    for key in ("data.n_filler", compare, *keys):
        if key in keys and varies(key):
            return key
    return None


def slice_figure(name: str, axis: str, keys: list[str], cells: list[dict[str, Any]],
                 path: Path) -> Path:  # fmt: skip
    """Reverse accuracy (fitted seeds; hollow markers where none fitted) against the key ``axis``,
    one line per value of the slice's other keys."""
    others = [k for k in keys if k != axis]
    lines: dict[str, list[tuple[int, float, bool]]] = defaultdict(list)
    for agg in cells:
        label = _cell_name(agg["labels"], others) or "reverse"
        fit = agg["fit"]
        if fit.get("reverse"):
            lines[label].append((agg["labels"][axis], fit["reverse"]["mean"], True))
        elif "reverse_accuracy" in agg:
            lines[label].append((agg["labels"][axis], agg["reverse_accuracy"]["mean"], False))
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (label, pts) in enumerate(sorted(lines.items())):
        pts.sort()
        xs = [p[0] for p in pts]
        color = f"C{i}"
        ax.plot(xs, [p[1] for p in pts], color=color, ls=LINESTYLES[i % 4], label=label)
        for x, y, good in pts:
            ax.scatter([x], [y], color=color if good else "white", edgecolor=color, zorder=3)
    if axis == "data.n_filler":
        ax.set_xscale("symlog", linthresh=1)
    else:
        ax.set_xticks(sorted({p[0] for pts in lines.values() for p in pts}))
    ax.set_xlabel(AXIS_LABELS.get(axis, _short(axis)))
    ax.set_ylabel("reverse accuracy")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(f"slice {name}", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save(fig, path)


def head_mass_figure(rows: list[dict[str, Any]], slice_name: str, path: Path) -> Path | None:
    """Per head and seed (last layer): attention mass on the context entity in the mirror query
    (x) against the reverse query (y), one panel per maskable choice, coloured by filler count
    (or the swept key that varies).
    A head on the diagonal reads the entity in both queries; one on the x axis only in the
    mirror (the configuration it was trained on)."""
    pts = [r for r in rows if slice_name in r.get("slices", []) and r["status"] == "done"
           and (r.get("probe.attention_mass_final") or {}).get("mirror")]  # fmt: skip
    if not pts:
        return None
    panels = list(dict.fromkeys(r.get("train.maskable", "all") for r in pts))
    # coloured by the filler count where the sweep varies it, else by the first swept key that
    # varies among these runs (the bridge's entity length, say), else one colour
    varying = [k for k in pts[0] if "." in k and k != "train.maskable" and k.startswith(
        ("data.", "model.", "train.")) and len({repr(r.get(k)) for r in pts}) > 1]  # fmt: skip
    key = "data.n_filler" if "data.n_filler" in varying else (varying[0] if varying else None)
    values = sorted({r.get(key) for r in pts}, key=repr) if key else [None]
    cmap = plt.get_cmap("viridis")
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.8), squeeze=False)
    for ax, maskable in zip(axes[0], panels, strict=True):
        for r in (r for r in pts if r.get("train.maskable", "all") == maskable):
            mass = r["probe.attention_mass_final"]
            color = cmap(values.index(r.get(key) if key else None) / max(1, len(values) - 1))
            ax.scatter(mass["mirror"][-1], mass["reverse"][-1], s=10, color=color, alpha=0.7)
        ax.plot([0, 1], [0, 1], color="gray", lw=0.6, ls=":")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"maskable={maskable}", fontsize=9)
        ax.set_xlabel("mass on b, mirror query [M] REL f.. b")
    axes[0][0].set_ylabel("mass on b, reverse query b REL f.. [M]")
    name = "fillers" if key == "data.n_filler" else (key or "").split(".")[-1]
    handles = [plt.Line2D([], [], ls="", marker="o", color=cmap(i / max(1, len(values) - 1)),
                          label=f"{v} {name}" if key == "data.n_filler" else f"{name}={v}")
               for i, v in enumerate(values)] if key else []  # fmt: skip
    if handles:
        axes[0][-1].legend(handles=handles, fontsize=7)
    fig.tight_layout()
    return save(fig, path)


def group_table(summary: dict[str, Any]) -> Table:
    """Every cell of an unsliced sweep: accuracies and the headline probes, mean over seeds."""
    header = ["group", "n", "forward", "reverse", "reverse std", "reverse 95% CI",
              "attention r (mirror pairing)", "attention r (forward pairing)",
              "grad cos fwd/rev"]  # fmt: skip
    table = []
    for agg in summary["aggregates"]:
        rev = agg.get("reverse_accuracy", {})
        table.append(
            [
                ", ".join(f"{k.split('.')[-1]}={v}" for k, v in agg["labels"].items()),
                agg["n"],
                agg.get("forward_accuracy", {}).get("mean", "n/a"),
                rev.get("mean", "n/a"),
                rev.get("std", "n/a"),
                "[{:.3f}, {:.3f}]".format(*rev["ci95"]) if rev else "n/a",
                agg.get("probe.attention_pearson_mirror_mean", {}).get("mean", "n/a"),
                agg.get("probe.attention_pearson_forward_mean", {}).get("mean", "n/a"),
                agg.get("probe.grad_cos_fwd_rev_mean", {}).get("mean", "n/a"),
            ]
        )
    return Table(header, table)


def write_report(out: Path, cfg: SweepConfig, summary: dict[str, Any], named: Any = None) -> None:
    """Write figures/, report.html and report.md of a sweep into ``out``."""
    rows = summary["rows"]
    x = _x_key(cfg, named)
    hue = _hue_key(cfg, named, x)
    theory = distance_theory(cfg, rows) if cfg.name == "distance" and not cfg.slices else None
    blocks: list[Block] = []
    if named is not None and named.question:
        blocks.append(Para(f"Question: {named.question}"))
    blocks.append(
        Para(
            f"{summary['n_runs']} runs ({summary['n_failed']} failed), seeds {cfg.seeds}. Accuracy "
            "is top-1 over the vocabulary; intervals are 95% percentile-bootstrap intervals of "
            f"the mean over seeds (narrow and optimistic with {len(cfg.seeds)} seeds; the std is "
            "beside them)."
        )
    )
    if summary.get("slices"):
        blocks += slice_blocks(out, summary)
        first = next(iter(summary["slices"]))
        mass_fig = head_mass_figure(rows, first, out / "figures" / "head_mass.png")
        if mass_fig is not None:
            blocks.append(Figure(mass_fig, f"Slice {first}: each head's attention mass on the "
                                           "context entity in the mirror and in the reverse query "
                                           "(final models, one dot per head and seed)."))  # fmt: skip
    else:
        blocks += [Heading("Results per group (mean over seeds)"), group_table(summary)]
        fig = metrics_figure(rows, x, hue, out / "figures" / "metrics.png", theory)
        blocks.append(Figure(fig, f"Headline metrics against {x}; error bars: std over seeds."))
    if theory is not None:
        blocks.append(
            Para(
                "Black lines: the closed-form correlation of q.R(D)k and q.R(-D)k for isotropic "
                "q, k at D = n_filler + 2; the points are the learned models' mean coupling."
            )
        )
    if named is not None and getattr(named, "curves", False):
        metrics = list(dict.fromkeys(m for c in summary.get("curves", []) for m in c
                                     if m != "labels"))  # fmt: skip
        curve_fig = curves_figure(out, rows, metrics, x, out / "figures" / "curves.png")
        if curve_fig is not None:
            blocks.append(Figure(curve_fig, f"Accuracy over training, one colour per {x}: thick, "
                                            "the mean over seeds; thin, each seed."))  # fmt: skip
    if cfg.name == "depth":
        layer_fig = per_layer_figure(out, rows, out / "figures" / "coupling_per_layer.png")
        if layer_fig is not None:
            blocks.append(Figure(layer_fig, "Final attention coupling per layer."))
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        blocks += [
            Heading("Failed runs"),
            Table(
                ["run", "labels", "error"],
                [
                    [
                        r["run_id"],
                        {k: r[k] for k in r if "." in k or k in ("family", "seed", "variant")},
                        r["error"],
                    ]
                    for r in failed
                ],
            ),  # fmt: skip
        ]
    blocks += [
        Heading("Provenance"),
        Para(
            "Run directories: runs/<run-id>/ (run-id = hash of the resolved config); index: "
            "index.sqlite (revcurse runs list / compare)."
        ),  # fmt: skip
        Pre(dump_yaml(cfg)),
    ]
    title = f"revcurse: {cfg.name}"
    files.write_text(out / "report.html", to_html(title, blocks))
    files.write_text(out / "report.md", to_markdown(title, blocks, out))
