"""Report of ``reproduce person-description``: accuracy per split (training vs held-out templates),
MDM vs ARM over seeds with intervals, a bar chart, and the probe signatures on multi-token facts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from revcurse import files
from revcurse.config import PersonDescriptionConfig
from revcurse.report.figures import FAMILY_COLORS, plt, save
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

TITLE = "Person–Description from scratch: masked diffusion vs autoregressive"
GROUPS = (
    ("training templates", ("p2d_same_train", "p2d_mirror_train", "p2d_reverse_train",
                            "d2p_same_train", "d2p_mirror_train", "d2p_reverse_train")),
    ("held-out templates", ("p2d_same", "p2d_reverse", "d2p_same", "d2p_reverse")),
)  # fmt: skip


def _cell(agg: dict[str, Any], key: str) -> str:
    m = agg.get(key)
    if m is None:
        return "–"
    lo, hi = m["ci95"]
    return f"{m['mean']:.3f} ± {m['std']:.3f} [{lo:.2f}, {hi:.2f}]"


def figure(out: Path, summary: dict[str, Any], metric: str) -> Path:
    splits = [s for _, group in GROUPS for s in group]
    fig, ax = plt.subplots(figsize=(10, 3.6))
    families = list(summary["aggregate"])
    width = 0.8 / len(families)
    x = np.arange(len(splits))
    for i, family in enumerate(families):
        agg = summary["aggregate"][family]
        # a split a family is not asked (an ARM's mirror) has no bar
        means = [agg[f"{s}.{metric}"]["mean"] if f"{s}.{metric}" in agg else np.nan for s in splits]
        stds = [agg[f"{s}.{metric}"]["std"] if f"{s}.{metric}" in agg else 0.0 for s in splits]
        ax.bar(x + (i - (len(families) - 1) / 2) * width, means, width, yerr=stds, capsize=3,
               label=family.upper(), color=FAMILY_COLORS.get(family))  # fmt: skip
    ax.set_xticks(x, [s.replace("_", "\n", 1) for s in splits], fontsize=8)
    ax.axvline(len(GROUPS[0][1]) - 0.5, color="#999", lw=0.8, ls="--")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"{metric} accuracy")
    ax.set_title("left: training templates   |   right: held-out templates (mean ± sd over seeds)")
    ax.legend()
    return save(fig, out / "figures" / f"accuracy_{metric}.png")


FIT = 0.95
"""What "fitted" means here: a reverse failure is read only where the forward (and, for the MDM,
the mirror) queries in the training templates score at least this."""


def fit_checks(agg: dict[str, Any], metric: str) -> list[Block]:
    """Did each family fit what it was trained on? Forward for both, mirror for the MDM."""
    blocks: list[Block] = [Heading("Fit first: what each family was trained on")]
    for family, a in agg.items():
        for split in ("p2d_same_train", "d2p_same_train", "p2d_mirror_train", "d2p_mirror_train"):
            key = f"{split}.{metric}"
            if key in a:
                value = a[key]["mean"]
                blocks.append(Check(f"{family.upper()} {split} {metric} >= {FIT}",
                                    f"{value:.3f}", value >= FIT))  # fmt: skip
    return blocks


def comparison_blocks(summary: dict[str, Any]) -> list[Block]:
    """The MDM-vs-ARM verdicts: paired tests over seed x query, effect size with its interval."""
    return comparison_section(
        summary.get("comparison") or {},
        "MDM minus ARM on the reverse splits, paired by seed and query",
        ["split", "metric"],
        lambda key: key.split("."),
        "Each (seed, query) pairs the MDM and the ARM trained with that seed on the same query "
        "and, for likelihood top-1, the same candidate answers. The interval resamples seeds "
        "and queries independently; the p-value swaps the two outcomes of randomly chosen "
        "pairs. 'gap' needs p < 0.05 and the interval above 0. A gap on a split means little "
        "where the fit checks above are not met.",
    )


def write_report(out: Path, cfg: PersonDescriptionConfig, summary: dict[str, Any]) -> None:
    agg = summary["aggregate"]
    metric = summary["headline_metric"]
    run = cfg.run
    blocks: list[Block] = [
        Para(
            f"{len(cfg.seeds)} seeds per family; {summary['n_statements']} training statements "
            f"({run.n_people} people per group); {run.model.n_layers} layers, d_model "
            f"{run.model.d_model}, {run.model.n_heads} heads, {run.model.positional}; "
            f"{run.train.steps} steps of batch {run.train.batch_size}; the MDM may mask "
            f"{'every statement token' if run.train.maskable == 'all' else 'only statement completions'}"
            f" (run.train.maskable: {run.train.maskable}). Cells: mean ± sd "
            "[95% bootstrap interval of the mean]. Likelihood top-1 ranks the right answer among "
            f"{round(1 / summary['chance_top1'])} candidates (chance {summary['chance_top1']:.2f})."
        ),
    ]
    blocks += fit_checks(agg, metric)
    blocks += comparison_blocks(summary)
    for title, splits in GROUPS:
        blocks.append(Heading(f"Accuracy, {title}"))
        header = ["split", "direction"] + [
            f"{f.upper()} {m}" for f in agg for m in (metric, "likelihood_top1")
        ]
        rows = [
            [s, summary["splits"][s]]
            + [_cell(agg[f], f"{s}.{m}") for f in agg for m in (metric, "likelihood_top1")]
            for s in splits
        ]
        blocks.append(Table(header, rows))
    blocks.append(Figure(figure(out, summary, metric), f"{metric} accuracy per split"))
    blocks.append(Heading("Mechanism probes on multi-token facts (p2d name <-> description)"))
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
        "(answer positions of the reverse query 'description -> name' to the description), "
        "averaged over heads. The 'forward' pairing pairs the p2d query 'name -> description'; "
        "the 'mirror' pairing (MDM only) pairs the p2d statement with the name masked, the "
        "configuration the MDM trains on. cos_pair_rev: cosine of the paired and the reverse "
        "query's loss gradients over all parameters, averaged over facts."
))  # fmt: skip
    files.write_text(out / "report.html", to_html(TITLE, blocks))
    files.write_text(out / "report.md", to_markdown(TITLE, blocks, out))
