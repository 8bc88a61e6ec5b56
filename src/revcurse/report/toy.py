"""The report of ``revcurse reproduce toy``: results table, aggregates, targets, figures, provenance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from revcurse import files
from revcurse.config import ToyExperimentConfig, dump_yaml
from revcurse.report import figures, probe_figures
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


PROBE_COLUMNS = [
    ("attention_pearson_mean", "attention r (mean over training)"),
    ("attention_pearson_final", "attention r (final)"),
    ("attention_spearman_mean", "attention Spearman (mean)"),
    ("grad_cos_fwd_rev_mean", "grad cos fwd/rev (mean)"),
    ("grad_cos_mirror_rev_mean", "grad cos [M]-REL-b/rev (mean)"),
    ("grad_cos_train_rev_mean", "grad cos train/rev (mean)"),
    ("signal_u_cosine_mean", "signal u cos (mean)"),
    ("reverse_loss_final", "reverse loss (final)"),
]


def probe_means(rows: list[dict[str, Any]], family: str) -> dict[str, float]:
    """Mean over seeds of each probe headline number (``probe.*`` row keys) of one family."""
    fam = [r for r in rows if r["family"] == family]
    return {
        key: sum(r[f"probe.{key}"] for r in fam) / len(fam)
        for key, _ in PROBE_COLUMNS
        if fam and all(f"probe.{key}" in r for r in fam)
    }


def probe_checks(rows: list[dict[str, Any]]) -> list[Check]:
    """The probe targets of the project (issue #3), on the measured means over seeds."""
    mdm = probe_means(rows, "mdm")
    checks = []
    if "attention_pearson_mean" in mdm:
        value = mdm["attention_pearson_mean"]
        checks.append(Check("MDM mean attention-score correlation over training > 0",
                            f"{value:+.3f}", value > 0))  # fmt: skip
    if "grad_cos_fwd_rev_mean" in mdm:
        value = mdm["grad_cos_fwd_rev_mean"]
        checks.append(Check("MDM mean forward/reverse gradient cosine over training > 0",
                            f"{value:+.3f}", value > 0))  # fmt: skip
    return checks


def probe_blocks(out: Path, cfg: ToyExperimentConfig, rows: list[dict[str, Any]]) -> list[Block]:
    """The mechanism-probe section: checks, a table and the probe figures."""
    models = [
        m
        for r in rows
        if (
            m := probe_figures.load_probed(
                out / "models" / f"{r['family']}-seed{r['seed']}", r["family"], r["seed"]
            )
        )
        is not None  # fmt: skip
    ]
    if not models:
        return []
    fig_dir = out / "figures"
    head_dim = cfg.model.d_model // cfg.model.n_heads
    base = cfg.model.rope_base if cfg.model.positional == "rope" else None
    blocks: list[Block] = [
        Heading("Mechanism probes"),
        Para(
            f"Probed every {cfg.probe.every} steps (and at steps 0 and the end). Attention coupling: "
            "for every fact, the pre-softmax score from the answer position to the context entity "
            "in the trained configuration (S_fwd) and in the reverse query (S_rev), correlated "
            "across facts and averaged over layers and heads. For the MDM the trained configuration "
            "is '[M] REL b' (recover a from b with b after the mask) and the reverse query "
            "'b REL [M]': the same query and key at offsets +Delta and -Delta. For the ARM it is "
            "the forward query 'a REL ->' vs the reverse query 'b REL ->' (same offset, other "
            "entity). Gradient cosines compare the gradients of the forward-query (or '[M] REL b', "
            "or actual training) loss and the reverse-query loss."
        ),
        *probe_checks(rows),
        Table(
            ["family", *(label for _, label in PROBE_COLUMNS)],
            [
                [fam.upper(), *(probe_means(rows, fam).get(key, "n/a") for key, _ in PROBE_COLUMNS)]
                for fam in cfg.families
            ],
        ),
    ]
    figs = [
        (probe_figures.attention_scatter(models, fig_dir / "attention_scatter.png"),
         "S_fwd vs S_rev over facts at the end of training (layer 0, head 0)."),
        (probe_figures.attention_vs_step(models, fig_dir / "attention_vs_step.png"),
         "Correlation of S_fwd and S_rev across facts during training."),
        (probe_figures.attention_vs_distance(models, head_dim, base,
                                             fig_dir / "attention_vs_distance.png"),
         "Coupling against relative distance (final models; fillers inserted at probe time) and "
         "the closed-form RoPE correlation for isotropic q, k."),
        (probe_figures.gradient_cosines(models, fig_dir / "gradient_cosines.png"),
         "Cosine between forward and reverse loss gradients per parameter group."),
        (probe_figures.reverse_loss(models, fig_dir / "reverse_loss.png"),
         "Reverse-query loss during training, and predicted vs actual reverse-loss change of one "
         "SGD step on the training loss."),
        (probe_figures.signal_cosines(models, fig_dir / "signal_cosines.png"),
         "Cosine between the forward and reverse back-propagated signals of the same fact."),
    ]  # fmt: skip
    blocks += [Figure(path, caption) for path, caption in figs if path is not None]
    return blocks


def write_report(out: Path, cfg: ToyExperimentConfig, summary: dict[str, Any]) -> None:
    """Write figures/, report.html and report.md into the experiment directory ``out``."""
    rows = summary["rows"]
    times = files.read_json(out / "timings.json")
    seconds = {name: t["train_seconds"] for name, t in times["runs"].items()}
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
                    f"{seconds[r['family'] + '-seed' + str(r['seed'])]:.1f}",
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
        *probe_blocks(out, cfg, rows),
        Heading("Provenance"),
        Para(
            f"Models trained in {times['train_wall_seconds']:.1f} s wall time with "
            f"{times['workers']} worker process(es). Each model's run directory is under "
            "models/ (config.yaml, metrics.jsonl, checkpoints/*.safetensors, predictions.json)."
        ),
        Pre(dump_yaml(cfg)),
    ]
    files.write_text(out / "report.html", to_html(TITLE, blocks))
    files.write_text(out / "report.md", to_markdown(TITLE, blocks, out))
