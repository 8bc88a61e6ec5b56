"""The mechanism probes over a finished toy sweep's final checkpoints (#28, section 1).

Sweeps with multi-token entities (``bridge``, ``entity-length``) were trained without probes. This
module probes every finished MDM run's final checkpoint afterwards, with the probes the run's own
``probe`` settings would have run (:func:`revcurse.experiments.toy_run.probe_runner`; multi-token
entities read by the multi-token probes), and summarises them per cell (mean over seeds):

* per pairing and layer, the position grid (:func:`revcurse.probes.attention.mass_grid`; mean over
  heads): the attention mass from each answer position on each token of the given entity, in the
  paired query (``grid_pair``) and in the reverse query (``grid_rev``);
* per pairing, the coupling's Pearson r (mean over layers and heads) and the per-fact gradient
  cosine of the paired and the reverse query.

Nothing is written into the sweep's folder; per-run records go to ``out/runs/<run_id>.json`` as
they finish and a rerun reuses them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from revcurse import files
from revcurse.config import apply_overrides
from revcurse.errors import RevcurseError
from revcurse.experiments.sweep import (
    cells_of,
    finished_mdm_runs,
    per_run_records,
    sweep_results,
)
from revcurse.repro import use_threads, write_provenance


def probe_run(run_dir: Path) -> dict[str, Any]:
    """The final probe record of one toy run's final checkpoint (nothing written)."""

    from revcurse.experiments.toy_run import build_dataset, load_checkpoint, probe_runner

    model, cfg, vocab, step = load_checkpoint(run_dir / "checkpoints" / "final.safetensors")
    use_threads(cfg.train.threads)
    cfg = apply_overrides(cfg, ["probe.enabled=true", "probe.distances=[]"])
    dataset, _ = build_dataset(cfg)
    return probe_runner(cfg, dataset, vocab, None)(model, step, final=True)


def _cell_probes(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per pairing, the seeds' mean of the grids (mean over heads, per layer), of the coupling r
    and of the per-fact gradient cosine (multi-token records, ``record["pairings"]``)."""
    out: dict[str, Any] = {}
    for pairing in records[0].get("pairings", {}):
        parts = [r["pairings"][pairing] for r in records]
        attention = [p["attention"] for p in parts]
        entry: dict[str, Any] = {
            "r": float(np.mean([np.nanmean(list(a["r_mean"].values())) for a in attention])),
            "cos_pair_rev": float(np.mean([p["gradients"]["cos_pair_rev_mean"] for p in parts])),
        }
        for which in ("pair", "rev"):
            key = f"mass_grid_{which}"
            if all(key in a for a in attention):
                layers = list(attention[0][key])
                entry[f"grid_{which}"] = {
                    layer: np.mean([np.mean(a[key][layer], axis=0) for a in attention],
                                   axis=0).tolist()
                    for layer in layers
                }  # fmt: skip  # [A][E] per layer
        out[pairing] = entry
    return out


def measure(
    sweep: Path, out: Path, *, command: str = "(library call)", progress: bool = True
) -> dict[str, Any]:
    """Probe every finished MDM run of ``sweep`` with several tokens per entity; write
    ``summary.json`` and ``report.md`` into ``out``."""
    _, jobs, outcomes = sweep_results(sweep)
    chosen = [j for j in finished_mdm_runs(jobs, outcomes) if j.config.data.entity_tokens > 1]
    if not chosen:
        raise RevcurseError(f"{sweep}: no finished MDM run with multi-token entities to probe")
    write_provenance(out, f"sweep: {sweep}\n", command)
    records = per_run_records(out, chosen, probe_run, desc="runs probed", progress=progress)
    cells = cells_of(jobs, chosen)
    for cell in cells:
        cell["probes"] = _cell_probes([records[r] for r in cell["runs"]])
    summary = {"sweep": str(sweep), "cells": cells}
    files.write_json(out / "summary.json", summary)
    write_report(out, summary)
    return summary


def write_report(out: Path, summary: dict[str, Any]) -> None:
    """``report.md``: per cell and pairing the coupling r and gradient cosine, and a figure of the
    last layer's position grids (paired query beside reverse query)."""
    from revcurse.report.figures import plt, save
    from revcurse.report.readings import cell_name
    from revcurse.report.render import Figure, Para, Table, to_markdown

    def name(labels: dict[str, Any]) -> str:  # the keys that tell the cells apart
        return cell_name(summary, labels)

    rows = [[name(c["labels"]), pairing, f"{p['r']:+.2f}", f"{p['cos_pair_rev']:+.2f}"]
            for c in summary["cells"] for pairing, p in c["probes"].items()]  # fmt: skip
    cells = [c for c in summary["cells"] if "grid_pair" in c["probes"].get("mirror", {})]
    blocks = [
        Para(
            "Mechanism probes on the final checkpoints of the MDM runs with multi-token "
            f"entities of {summary['sweep']}, mean over seeds."
        ),  # fmt: skip
        Table(["cell", "pairing", "coupling r", "gradient cosine (paired, reverse)"], rows),
    ]
    if cells:
        fig, axes = plt.subplots(len(cells), 2, squeeze=False,
                                 figsize=(6.5, 2.6 * len(cells)))  # fmt: skip
        for row, cell in zip(axes, cells, strict=True):
            probes = cell["probes"]["mirror"]
            last = list(probes["grid_pair"])[-1]
            for ax, which, title in ((row[0], "grid_pair", "mirror"),
                                     (row[1], "grid_rev", "reverse")):  # fmt: skip
                grid = np.array(probes[which][last])  # [A, E]
                image = ax.imshow(grid, vmin=0, vmax=max(0.05, float(grid.max())), cmap="viridis")
                ax.set_title(f"{name(cell['labels'])}\n{title} query, layer {last}", fontsize=6)
                ax.set_xlabel("given entity's token", fontsize=7)
                ax.set_ylabel("answer position", fontsize=7)
                ax.set_xticks(range(grid.shape[1]))
                ax.set_yticks(range(grid.shape[0]))
                fig.colorbar(image, ax=ax, fraction=0.046)
        fig.tight_layout()
        path = save(fig, out / "figures" / "grids.png")
        blocks.append(Figure(path, "Attention mass from each answer position (rows) on each token "
                                   "of the given entity (columns), last layer, mean over heads "
                                   "and seeds: the mirror query beside the reverse query."))  # fmt: skip
    files.write_text(out / "report.md", to_markdown("Probes over a sweep", blocks, out))
