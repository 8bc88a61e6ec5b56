"""The report of ``revcurse analyse decoding`` (:mod:`revcurse.experiments.decoding_control`):
its tables (shared with the published views in :mod:`revcurse.report.published`), its figure and
``report.md``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from revcurse import files
from revcurse.report.figures import plt, save
from revcurse.report.render import Figure, Heading, Para, Table, to_markdown

CELL_COLUMNS = ["cell", "reading", "forward (all seeds)", "mirror (all seeds)",
                "reverse (all seeds)", "fitted seeds", "reverse (fitted seeds)", "label"]  # fmt: skip
TEST_COLUMNS = ["contrast", "where", "reading", "difference", "95% interval", "decision", "fit"]


def _varying(summary: dict[str, Any]) -> list[str]:
    """The label keys that tell the summary's cells apart."""
    cells = summary["cells"]
    return [k for k in cells[0]["labels"] if len({repr(c["labels"][k]) for c in cells}) > 1]


def cell_name(summary: dict[str, Any], labels: dict[str, Any]) -> str:
    return ", ".join(f"{k.split('.')[-1]}={labels[k]}" for k in _varying(summary)) or "the cell"


def cell_rows(summary: dict[str, Any]) -> list[list[str]]:
    """Rows of :data:`CELL_COLUMNS`: per cell and reading, the accuracies over all seeds, the
    fitted seeds and the reverse over them (the report's and the published table's)."""

    def mean(agg: dict[str, Any], key: str) -> str:
        return f"{agg[key]['mean']:.2f}" if key in agg else "-"

    rows = []
    for cell in summary["cells"]:
        for reading in summary["readings"]:
            r = cell["readings"][reading]
            fit, seeds = r["fit"], r["all_seeds"]
            reverse = f"{fit['reverse']['mean']:.2f}" if "reverse" in fit else "-"
            rows.append([cell_name(summary, cell["labels"]), reading,
                         *(mean(seeds, f"{d}_accuracy") for d in ("forward", "mirror", "reverse")),
                         f"{fit['n_fitted']}/{fit['n']}", reverse, fit["label"]])  # fmt: skip
    return rows


def test_rows(summary: dict[str, Any]) -> list[list[str]]:
    """Rows of :data:`TEST_COLUMNS`: each of the sweep's paired tests under each reading."""
    readings = summary["readings"]
    rows = []
    for i, c in enumerate(summary["contrasts"][readings[0]]):
        where = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in c["cell"].items())
        for reading in readings:
            t = summary["contrasts"][reading][i]
            lo, hi = t["test"]["ci"]
            rows.append([f"{c['key'].split('.')[-1]}: {c['value']} - {c['baseline']}", where,
                         reading, f"{t['test']['effect']:+.3f}", f"[{lo:+.3f}, {hi:+.3f}]",
                         t["decision"], f"{t['fit']['value']} / {t['fit']['baseline']}"])  # fmt: skip
    return rows


def write_report(out: Path, summary: dict[str, Any]) -> None:
    """``report.md``: :func:`cell_rows`, a figure of them, :func:`test_rows`."""

    names = [cell_name(summary, c["labels"]) for c in summary["cells"]]
    figure = readings_figure(summary, names, out / "figures" / "readings.png")
    blocks = [
        Para(
            f"The MDM runs of {summary['sweep']}, each final checkpoint read four ways: "
            "sampler (the evaluation's generation, one token per step), one-step (the whole "
            "answer filled at once), rank (the right entity first among its side's by the "
            "exact likelihood bound) and one-step-rank (the same by the answer read with all "
            "of it masked, the state whole-entity masking trains on). Each reading applies the "
            "fit-first rule by itself (forward and mirror >= 0.99) and reads the reverse over its "
            "own fitted seeds. Recomputed sampler answers that differ from the runs' records: "
            f"{summary['sampler_differs']}."
        ),
        Table(CELL_COLUMNS, cell_rows(summary)),
        Figure(
            figure,
            "Reverse accuracy over each reading's fitted seeds, per cell; a cross where the "
            "reading fitted no seed (its reverse is not read), a tick where it fitted and "
            "reverses none.",
        ),
        Heading("The sweep's paired tests, per reading"),
        Para(
            "Reverse difference paired by seed and fact, with each cell's fit label by the "
            "same reading (value / baseline)."
        ),
        Table(TEST_COLUMNS, test_rows(summary)),
    ]
    files.write_text(out / "report.md", to_markdown("Four readings of the MDM checkpoints",
                                                    blocks, out))  # fmt: skip


def readings_figure(summary: dict[str, Any], names: list[str], path: Path) -> Path:
    """Grouped bars: per cell (rows of the figure, top to bottom), each reading's reverse
    accuracy over its own fitted seeds, a cross where it fitted none and a tick where it
    fitted and answered (almost) no reverse query."""
    import numpy as np

    readings = summary["readings"]
    cells = summary["cells"]
    fig, ax = plt.subplots(figsize=(7.5, 0.9 + 0.55 * len(cells)))
    height = 0.8 / len(readings)
    y = np.arange(len(cells))[::-1].astype(float)  # the first cell at the top
    for k, reading in enumerate(readings):
        at = y + 0.4 - height * (k + 0.5)
        values = [c["readings"][reading]["fit"].get("reverse", {}).get("mean") for c in cells]
        color = f"C{k}"
        ax.barh([a for a, v in zip(at, values, strict=True) if v is not None],
                [v for v in values if v is not None], height=height, color=color,
                label=reading)  # fmt: skip
        unfitted = [a for a, v in zip(at, values, strict=True) if v is None]
        ax.plot([0.01] * len(unfitted), unfitted, "x", color=color, markersize=5)
        zero = [a for a, v in zip(at, values, strict=True) if v is not None and v < 0.005]
        ax.plot([0.004] * len(zero), zero, "|", color=color, markersize=7)  # fitted, none right
    ax.set_yticks(y)
    ax.set_yticklabels(names, fontsize=7)
    ax.set_xlim(0, 1.02)
    ax.set_xlabel("reverse accuracy, fitted seeds (x: no seed fitted by this reading; |: 0)")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12 - 0.4 / len(cells)),
              ncol=len(readings), frameon=False)  # fmt: skip
    fig.tight_layout()
    return save(fig, path)


TEXT_MODEL_COLUMNS = ["model", "reading", "fitted seeds", "forward (all seeds)",
                      "mirror (all seeds)", "reverse (all seeds)", "reverse (fitted seeds)"]  # fmt: skip
TEXT_TEST_COLUMNS = ["difference", "split", "reading", "effect", "95% interval (crossed bootstrap)",
                     "p (paired permutation)", "seeds x queries", "decision"]  # fmt: skip


def text_model_columns(summary: dict[str, Any]) -> list[str]:
    """:data:`TEXT_MODEL_COLUMNS`, with a statement-group column after the reading where the task
    fits more than one group (Person–Description's name -> description and description -> name)."""
    from revcurse.data.tasks import TASKS

    if len(TASKS[summary["task"]].fit) == 1:
        return TEXT_MODEL_COLUMNS
    return [*TEXT_MODEL_COLUMNS[:2], "statements", *TEXT_MODEL_COLUMNS[2:]]


def text_model_rows(summary: dict[str, Any]) -> list[list[str]]:
    """Rows of :func:`text_model_columns`: per model, reading and statement group, how many seeds
    fitted the group read that way, the group's forward and mirror splits and its first reverse
    split over every seed, and that reverse over the fitted seeds (the report's and the published
    table's)."""
    from revcurse.data.tasks import TASKS

    task = TASKS[summary["task"]]
    grouped = len(task.fit) > 1
    rows = []
    for name, readings in summary["models"].items():
        for reading, r in readings.items():
            metric = summary["readings"][reading]["metric"]
            agg = r["all_seeds"]

            def mean(split: str | None, agg=agg, metric=metric) -> str:
                key = f"{split}.{metric}"
                return f"{agg[key]['mean']:.2f} ± {agg[key]['std']:.2f}" if key in agg else "n/a"

            for group, (forward, mirror) in task.fit.items():
                reverse = next(s for s, g in task.compared.items() if g == group)
                seeds = r["fitted_seeds"][group]
                # the reverse over the fitted seeds, from the same per-seed numbers
                values = agg.get(f"{reverse}.{metric}", {}).get("values", [])
                fitted = [v for s, v in zip(r["seeds"], values, strict=False) if s in seeds]
                rows.append([name.upper(), reading, *([group] if grouped else []),
                             f"{len(seeds)}/{len(r['seeds'])}", mean(forward), mean(mirror),
                             mean(reverse),
                             f"{sum(fitted) / len(fitted):.2f}" if fitted else "not read"])  # fmt: skip
    return rows


def text_test_rows(summary: dict[str, Any]) -> list[list[str]]:
    """Rows of :data:`TEXT_TEST_COLUMNS`: each variant - MDM, split by split, under each reading
    over the seeds both fitted by it."""
    from revcurse.stats import comparison_cells, decision

    rows = []
    first = next(iter(summary["tests"]))
    for name, per in summary["tests"][first].items():
        for key in per:
            split = key.split(".")[0]
            for reading, tests in summary["tests"].items():
                t = tests[name][f"{split}.{summary['readings'][reading]['metric']}"]
                rows.append([f"{name.upper()} - MDM", split, reading, *comparison_cells(t)[:4],
                             decision(t) if t["n_seeds"] else ""])  # fmt: skip
    return rows


def write_text_report(out: Path, summary: dict[str, Any]) -> None:
    """``report.md`` of the text control: :func:`text_model_rows` and :func:`text_test_rows`."""
    blocks = [
        Para(
            f"The MDMs of {summary['experiment']}, each finished run read four ways: sampler "
            "(the generation the run recorded, one token per step), one-step (the whole "
            "answer filled at once), rank (the answer first among the candidates by the "
            "Monte-Carlo likelihood bound) and chain-rank (by the chain likelihood). Each "
            f"reading applies the fit-first rule by itself (at least {summary['threshold']} on "
            "the forward split and, for a model trained on it, the mirror) and reads the "
            "reverse over its own fitted seeds."
        ),
        Table(text_model_columns(summary), text_model_rows(summary)),
        Heading("Each variant against the MDM, per reading"),
        Para("Paired by seed and query over the seeds both models fitted by that reading."),
        Table(TEXT_TEST_COLUMNS, text_test_rows(summary)),
    ]
    files.write_text(out / "report.md", to_markdown("The MDMs read four ways", blocks, out))
