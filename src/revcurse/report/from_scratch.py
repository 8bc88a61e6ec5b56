"""Report of ``reproduce person-description``: accuracy per split (training vs held-out templates),
MDM vs ARM over seeds with intervals, a bar chart, and the probe signatures on multi-token facts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from revcurse import files
from revcurse.config import PersonDescriptionConfig
from revcurse.data.tasks import Task, task_for
from revcurse.report.figures import model_colors, plt, save
from revcurse.report.render import (
    Block,
    Check,
    Figure,
    Heading,
    Para,
    Table,
    comparison_section,
    to_html,
    to_markdown,
)


def _cell(agg: dict[str, Any], key: str) -> str:
    m = agg.get(key)
    if m is None:
        return "–"
    lo, hi = m["ci95"]
    return f"{m['mean']:.3f} ± {m['std']:.3f} [{lo:.2f}, {hi:.2f}]"


def figure(out: Path, summary: dict[str, Any], metric: str, task: Task) -> Path:
    splits = [s for _, group in task.tables for s in group]
    fig, ax = plt.subplots(figsize=(10, 3.6))
    families = list(summary["aggregate"])
    colors = model_colors(families)
    width = 0.8 / len(families)
    x = np.arange(len(splits))
    for i, family in enumerate(families):
        agg = summary["aggregate"][family]
        # a split a family is not asked (an ARM's mirror) has no bar
        means = [agg[f"{s}.{metric}"]["mean"] if f"{s}.{metric}" in agg else np.nan for s in splits]
        stds = [agg[f"{s}.{metric}"]["std"] if f"{s}.{metric}" in agg else 0.0 for s in splits]
        ax.bar(x + (i - (len(families) - 1) / 2) * width, means, width, yerr=stds, capsize=3,
               label=family.upper(), color=colors[family])  # fmt: skip
    ax.set_xticks(x, [s.replace("_", "\n", 1) for s in splits], fontsize=8)
    edges = np.cumsum([len(group) for _, group in task.tables])[:-1]
    for edge in edges:  # one block of bars per table, left to right
        ax.axvline(edge - 0.5, color="#999", lw=0.8, ls="--")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"{metric} accuracy")
    blocks = "   |   ".join(title for title, _ in task.tables)
    ax.set_title(f"{blocks} (left to right; mean ± sd over seeds)", fontsize=9)
    # below the axes: with variants, a legend inside covers the bars
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=min(len(families), 6),
              frameon=False, fontsize=8)  # fmt: skip
    return save(fig, out / "figures" / f"accuracy_{metric}.png")


def fit_checks(summary: dict[str, Any], metric: str) -> list[Block]:
    """Did each model fit what it was trained on? Forward for all, mirror for the MDMs trained on
    it: the mean over seeds against the threshold, and which seeds fitted each statement group
    (the paired tests read only those)."""
    fit = summary["fit"]
    blocks: list[Block] = [Heading("Fit first: what each model was trained on")]
    for name, a in summary["aggregate"].items():
        for group, splits in fit["splits"].items():
            forward, mirror = splits
            for split in (forward, mirror) if fit["trains_mirror"][name] else (forward,):
                key = f"{split}.{metric}"
                if key in a:
                    value = a[key]["mean"]
                    blocks.append(Check(f"{name.upper()} {split} {metric} >= {fit['threshold']} "
                                        "(mean over seeds)", f"{value:.3f}",
                                        value >= fit["threshold"]))  # fmt: skip
            seeds = fit["fitted_seeds"][name][group]
            blocks.append(Para(f"{name.upper()}, {group} statements: fitted by seeds "
                               f"{seeds if seeds else 'none'} of {a['n']}."))  # fmt: skip
    return blocks


NOTE = (
    "Each (seed, query) pairs the two models trained with that seed on the same query and, for "
    "likelihood top-1, the same candidate answers; only seeds where both models fitted the "
    "split's statement group (forward and, for an MDM, mirror, see above) take part. The "
    "interval resamples seeds and queries independently; the p-value swaps the two outcomes of "
    "randomly chosen pairs. 'gap' needs p < 0.05 and the interval above 0."
)


def comparison_blocks(summary: dict[str, Any]) -> list[Block]:
    """The paired verdicts: MDM vs ARM, each variant vs the MDM, and each autoregressive variant
    (masked-AR) vs the ARM."""
    blocks = comparison_section(
        summary.get("comparison") or {},
        "MDM minus ARM on the reverse splits, paired by seed and query",
        ["split", "metric"],
        lambda key: key.split("."),
        NOTE,
    )
    against = (("variant_comparison", "MDM", ""),
               ("variant_arm_comparison", "ARM", " (the causal model held fixed)"))  # fmt: skip
    for key, baseline, held in against:
        for name, tests in (summary.get(key) or {}).items():
            blocks += comparison_section(
                tests,
                f"{name.upper()} minus {baseline}{held}, paired by seed and query",
                ["split", "metric"],
                lambda key: key.split("."),
                NOTE,
                effect=f"{name.upper()} - {baseline}",
            )
    return blocks


CURVE_STYLE = {"near": ":", "middle": "--", "far": "-"}

QUERY_KINDS = {"forward": "trained", "mirror": "mirror of a trained statement",
               "reverse": "untrained reverse"}  # fmt: skip
"""How a split's queries relate to training, for the accuracy tables: a group trained in both
directions asks its reverse statements as trained queries (labelled "forward" in the summary,
which read as the trained direction, not as the forward relation)."""


def curves_figure(out: Path, summary: dict[str, Any]) -> Path | None:
    """The probes over training (mean over seeds): attention correlation per model and pairing,
    the same by distance third, and the gradient cosine's storage and routing parts."""
    curves = summary.get("probe_curves") or {}
    if not curves:
        return None
    thirds = has_thirds(summary)  # too few probe facts leave every third without a correlation
    fig, axes = plt.subplots(1, 3 if thirds else 2, figsize=(15 if thirds else 10, 3.8))
    first, by_third, cosine = (axes[0], axes[1], axes[2]) if thirds else (axes[0], None, axes[1])
    colors = model_colors(list(curves))
    for name, c in curves.items():
        color = colors[name]
        for pairing, rows in c["pairings"].items():
            ls = "-" if pairing == "mirror" else "--"
            first.plot(c["steps"], _nan(rows["attention_r"]), ls, color=color,
                       label=f"{name} {pairing}")  # fmt: skip
            if pairing == ("mirror" if "mirror" in c["pairings"] else "forward"):
                for third, style in CURVE_STYLE.items() if by_third is not None else ():
                    by_third.plot(c["steps"], _nan(rows[f"attention_r_{third}"]), style,
                                  color=color, label=f"{name} {pairing} {third}")  # fmt: skip
                cosine.plot(c["steps"], _nan(rows["cos_pair_rev_storage"]), "-", color=color,
                            label=f"{name} {pairing} storage")  # fmt: skip
                cosine.plot(c["steps"], _nan(rows["cos_pair_rev_routing"]), ":", color=color,
                            label=f"{name} {pairing} routing")  # fmt: skip
    titles = ["attention r (mean over layers, heads)",
              *(["attention r by distance third (mirror where a model has it, else forward)"]
                if thirds else []),
              "gradient cosine, paired vs reverse query"]  # fmt: skip
    for ax, title in zip(axes, titles, strict=True):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("training step")
        ax.axhline(0, color="#999", lw=0.6)
        # below each panel: inside, the legends of several models cover the curves
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2,
                  frameon=False)  # fmt: skip
    return save(fig, out / "figures" / "probes_over_training.png")


def _nan(values: list[float | None]) -> list[float]:
    return [np.nan if v is None else v for v in values]


def has_thirds(summary: dict[str, Any]) -> bool:
    """Whether any model's probes have an attention correlation by distance third (each third
    needs at least 3 probe facts)."""
    return any(v is not None for c in (summary.get("probe_curves") or {}).values()
               for r in c["pairings"].values() for third in CURVE_STYLE
               for v in r[f"attention_r_{third}"])  # fmt: skip


def curves_table(summary: dict[str, Any]) -> list[Block]:
    """The last probed step's attention correlation by distance third, with the thirds' mean
    distances; where no third has a correlation, one sentence instead of a table of dashes."""
    if summary.get("probe_curves") and not has_thirds(summary):
        return [Para("The attention correlation by distance third is not shown: each third needs "
                     "at least 3 probe facts, and this run probed too few (probe.n_facts) for "
                     "any.")]  # fmt: skip
    rows = []
    for name, c in (summary.get("probe_curves") or {}).items():
        for pairing, r in c["pairings"].items():
            cells = []
            for third in CURVE_STYLE:
                value, dist = r[f"attention_r_{third}"][-1], r[f"distance_{third}"][-1]
                cells.append("–" if value is None else f"{value:+.3f} (d {dist:.1f})")
            rows.append([name.upper(), pairing, str(c["steps"][-1]), *cells])
    if not rows:
        return []
    return [
        Heading("Attention correlation against the entities' relative distance"),
        Table(["model", "pairing", "step", "near third", "middle third", "far third"], rows),
        Para("The probe facts sorted by their total relative distance (mean |i - j| between the "
             "answer rows and the given entity's tokens, paired query plus reverse query) and "
             "cut into thirds; r is the Pearson correlation of S_pair and S_rev over each third's "
             "facts, averaged over layers and heads, then over seeds; d is the midpoint of the "
             "third's range of distances."),
    ]  # fmt: skip


def write_report(out: Path, cfg: PersonDescriptionConfig, summary: dict[str, Any]) -> None:
    agg = summary["aggregate"]
    metric = summary["headline_metric"]
    run = cfg.run
    task = task_for(run)
    forward, mirror, reverse = task.probed
    blocks: list[Block] = [
        Para(
            f"{len(cfg.seeds)} seeds per family; {summary['n_statements']} training statements "
            f"({run.n_people} {task.unit} per group); {run.model.n_layers} layers, d_model "
            f"{run.model.d_model}, {run.model.n_heads} heads, {run.model.positional}; "
            f"{run.train.steps} steps of batch {run.train.batch_size}; the MDM may mask "
            f"{'every statement token' if run.train.maskable == 'all' else 'only statement completions'}"
            f" (run.train.maskable: {run.train.maskable}). "
            + "".join(
                f"Variant {name.upper()}: the MDM with {', '.join(o)}. "
                for name, o in cfg.variants.items()
            )
            + "Cells: mean ± sd "
            "[95% bootstrap interval of the mean]. Likelihood top-1 ranks the right answer among "
            f"{round(1 / summary['chance_top1'])} candidates (chance {summary['chance_top1']:.2f}) "
            "by the model's likelihood (an MDM's: the Monte-Carlo bound); chain top-1 ranks them "
            "by the left-to-right chain likelihood (a normalised distribution over answers; an "
            "ARM's likelihood already is one)."
        ),
    ]
    blocks += fit_checks(summary, metric)
    blocks += comparison_blocks(summary)
    measures = [m for m in (metric, "likelihood_top1", "chain_top1")
                if any(k.endswith(f".{m}") for a in agg.values() for k in a)]  # fmt: skip
    for title, splits in task.tables:
        blocks.append(Heading(f"Accuracy, {title}"))
        header = ["split", "query"] + [f"{f.upper()} {m}" for f in agg for m in measures]
        rows = [
            [s, QUERY_KINDS.get(summary["splits"][s], summary["splits"][s])]
            + [_cell(agg[f], f"{s}.{m}") for f in agg for m in measures]
            for s in splits
        ]
        blocks.append(Table(header, rows))
    blocks.append(Figure(figure(out, summary, metric, task), f"{metric} accuracy per split"))
    blocks.append(Heading("Mechanism probes on multi-token facts"))
    probe_keys = sorted({k for r in summary["rows"] for k in r if k.startswith("probe.")})
    blocks.append(
        Table(
            ["probe"] + [f.upper() for f in agg],
            [[k] + [_cell(agg[f], k) for f in agg] for k in probe_keys],
        )  # fmt: skip
    )
    blocks.append(Para(
        "Rows are named probe.<stage>.<pairing>.<quantity>. Attention r: Pearson correlation over "
        "facts of S_pair (answer positions of the paired query to its given entity) and S_rev "
        f"(answer positions of the reverse query {reverse} to its given entity), averaged over "
        f"heads. The 'forward' pairing pairs {forward}; the 'mirror' pairing (MDM only) pairs "
        f"{mirror}, the configuration the MDM trains on. cos_pair_rev: cosine of the paired and "
        "the reverse query's loss gradients over all parameters, averaged over facts."
    ))  # fmt: skip
    over_training = curves_figure(out, summary)
    if over_training is not None:
        blocks.append(Figure(over_training, "probes over training, mean over seeds"))
    blocks += curves_table(summary)
    title = task.title
    files.write_text(out / "report.html", to_html(title, blocks))
    files.write_text(out / "report.md", to_markdown(title, blocks, out))
