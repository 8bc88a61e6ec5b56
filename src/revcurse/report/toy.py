"""The report of ``revcurse reproduce toy``: results table, aggregates, targets, figures, provenance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from revcurse import files
from revcurse.config import ToyExperimentConfig, dump_yaml
from revcurse.report import figures
from revcurse.report.render import (
    Block,
    Check,
    Figure,
    Heading,
    Para,
    Pre,
    Table,
    to_html,
    to_markdown,
)

TITLE = "revcurse: the reversal curse on the toy task (MDM vs ARM)"


def targets(summary: dict[str, Any]) -> list[Check]:
    """The toy targets of the project (issue #2), evaluated on the measured aggregates."""
    agg, chance = summary["aggregate"], summary["chance"]["reverse"]
    checks = []
    if "mdm" in agg:
        fwd, rev = agg["mdm"]["forward_accuracy"]["mean"], agg["mdm"]["reverse_accuracy"]["mean"]
        checks.append(Check("MDM reverse >= 0.90 (mean over seeds)", f"{rev:.3f}", rev >= 0.90))
        checks.append(Check("MDM forward >= 0.99 (mean over seeds)", f"{fwd:.3f}", fwd >= 0.99))
    if "arm" in agg:
        fwd, rev = agg["arm"]["forward_accuracy"]["mean"], agg["arm"]["reverse_accuracy"]["mean"]
        checks.append(
            Check(
                f"ARM reverse <= chance + 0.02 = {chance + 0.02:.3f}",
                f"{rev:.3f}",
                rev <= chance + 0.02,
            )  # fmt: skip
        )
        checks.append(Check("ARM forward >= 0.99 (mean over seeds)", f"{fwd:.3f}", fwd >= 0.99))
    return checks


def write_report(out: Path, cfg: ToyExperimentConfig, summary: dict[str, Any]) -> None:
    """Write figures/, report.html and report.md into the experiment directory ``out``."""
    rows = summary["rows"]
    fig_acc = figures.accuracy_by_family(
        rows, cfg.families, summary["chance"], out / "figures" / "accuracy.png"
    )
    curves = {
        f"{r['family']}-seed{r['seed']}": files.read_jsonl(
            out / "models" / f"{r['family']}-seed{r['seed']}" / "metrics.jsonl"
        )
        for r in rows
    }
    fig_train = figures.training_curves(curves, out / "figures" / "training.png")

    m = cfg.model
    chance = summary["chance"]["reverse"]
    blocks: list[Block] = [
        Para(
            f"{len(rows)} models trained from scratch on {cfg.data.n_pairs} forward statements "
            f"'a_i REL B_i' only ({m.n_layers} layer(s), d_model {m.d_model}, {m.n_heads} head(s), "
            f"{m.positional} positions, {cfg.train.steps} steps). The MDM is a bidirectional "
            "encoder trained with the masked diffusion loss; the ARM is the same network with a "
            "causal mask trained on next-token prediction. Forward query 'a_i REL [M]' -> B_i; "
            "reverse query 'B_i REL [M]' -> a_i, never seen in training. Accuracy is top-1 over "
            f"the whole vocabulary; chance (uniform guess among the {cfg.data.n_pairs} candidate "
            f"answers) is {chance:.3f}."
        ),
        Heading("Targets"),
        *targets(summary),
        Heading("Accuracy per family (mean, std and 95% bootstrap interval over seeds)"),
        Table(
            [
                "family",
                "seeds",
                "forward",
                "reverse",
                "reverse std",
                "reverse 95% CI",
                "reverse (among candidates)",
            ],  # fmt: skip
            [
                [
                    fam.upper(),
                    a["n"],
                    a["forward_accuracy"]["mean"],
                    a["reverse_accuracy"]["mean"],
                    a["reverse_accuracy"]["std"],
                    "[{:.3f}, {:.3f}]".format(*a["reverse_accuracy"]["ci95"]),
                    a["reverse_candidate_accuracy"]["mean"],
                ]
                for fam, a in summary["aggregate"].items()
            ],
        ),
        Figure(fig_acc, "Forward and reverse accuracy per family; dots are individual seeds."),
        Heading("Every model"),
        Table(
            [
                "family",
                "seed",
                "forward",
                "reverse",
                "reverse (candidates)",
                "reverse log p(answer)",
                "final loss",
                "train s",
            ],  # fmt: skip
            [
                [
                    r["family"].upper(),
                    r["seed"],
                    r["forward_accuracy"],
                    r["reverse_accuracy"],
                    r["reverse_candidate_accuracy"],
                    r["reverse_answer_logprob"],
                    r["final_loss"],
                    f"{r['train_seconds']:.1f}",
                ]  # fmt: skip
                for r in rows
            ],
        ),
        Para(
            "'reverse (candidates)' takes the argmax among the N possible reverse answers only; "
            "a gap to the strict accuracy means the model ranks the right entity first among "
            "entities of its type but still prefers a token of the other type."
        ),
        Figure(fig_train, "Training loss and accuracy evaluated during training."),
        Heading("Provenance"),
        Para(
            f"Models trained in {summary['train_wall_seconds']:.1f} s wall time with "
            f"{summary['workers']} worker process(es). Each model's run directory is under "
            "models/ (config.yaml, metrics.jsonl, checkpoints/*.safetensors, predictions.json)."
        ),
        Pre(dump_yaml(cfg)),
    ]
    files.write_text(out / "report.html", to_html(TITLE, blocks))
    files.write_text(out / "report.md", to_markdown(TITLE, blocks, out))
