"""The report of ``revcurse reproduce toy``: results table, aggregates, targets, figures, provenance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from revcurse import files
from revcurse.config import ToyExperimentConfig, dump_yaml
from revcurse.files import model_dir
from revcurse.report import figures, probe_figures
from revcurse.report.render import (
    Block,
    Check,
    Figure,
    Heading,
    Para,
    Pre,
    Table,
    comparison_section,
    to_html,
    to_markdown,
)
from revcurse.stats import FIT_THRESHOLD, effect_clause

TITLE = "revcurse: the reversal curse on the toy task (MDM vs ARM)"


def targets(summary: dict[str, Any]) -> list[Check]:
    """The toy targets of the project (issue #2), evaluated on the measured aggregates, and the
    paired MDM-vs-ARM test on the reverse direction. The fit checks come first: a reverse result
    means something only where the model fitted what it was trained on (forward, and for the MDM
    the mirror configuration)."""
    agg, chance = summary["aggregate"], summary["chance"]["reverse"]
    checks = []
    if "mdm" in agg:
        fwd, rev = agg["mdm"]["forward_accuracy"]["mean"], agg["mdm"]["reverse_accuracy"]["mean"]
        checks.append(Check(f"MDM forward >= {FIT_THRESHOLD} (mean over seeds)", f"{fwd:.3f}",
                            fwd >= FIT_THRESHOLD))  # fmt: skip
        if "mirror_accuracy" in agg["mdm"]:
            mirror = agg["mdm"]["mirror_accuracy"]["mean"]
            checks.append(Check(f"MDM mirror ([M] REL b) >= {FIT_THRESHOLD} (mean over seeds)",
                                f"{mirror:.3f}", mirror >= FIT_THRESHOLD))  # fmt: skip
        checks.append(Check("MDM reverse >= 0.90 (mean over seeds)", f"{rev:.3f}", rev >= 0.90))
    if "arm" in agg:
        fwd, rev = agg["arm"]["forward_accuracy"]["mean"], agg["arm"]["reverse_accuracy"]["mean"]
        checks.append(
            Check(
                f"ARM reverse <= chance + 0.02 = {chance + 0.02:.3f}",
                f"{rev:.3f}",
                rev <= chance + 0.02,
            )  # fmt: skip
        )
        checks.append(Check(f"ARM forward >= {FIT_THRESHOLD} (mean over seeds)", f"{fwd:.3f}",
                            fwd >= FIT_THRESHOLD))  # fmt: skip
    test = summary.get("comparison", {}).get("reverse_accuracy")
    if test is not None:
        checks.append(Check(
            "MDM > ARM on reverse accuracy (paired permutation test over seed x fact, p < 0.05, "
            "95% interval of the difference above 0)",
            f"difference {effect_clause(test)}, {test['n_seeds']} seeds x {test['n_queries']} facts",
            test["gap"],
        ))  # fmt: skip
    return checks


PROBE_COLUMNS = [
    ("attention_pearson_mirror_mean", "attention r, mirror pairing (mean over training)"),
    ("attention_pearson_mirror_final", "attention r, mirror pairing (final)"),
    ("attention_pearson_forward_mean", "attention r, forward pairing (mean over training)"),
    ("attention_pearson_forward_final", "attention r, forward pairing (final)"),
    ("grad_cos_fwd_rev_mean", "grad cos fwd/rev (mean)"),
    ("grad_cos_mirror_rev_mean", "grad cos [M]-REL-b/rev (mean)"),
    ("grad_cos_train_rev_mean", "grad cos train/rev (mean)"),
    ("signal_u_cosine_mirror_mean", "signal u cos, mirror pairing (mean)"),
    ("signal_u_cosine_forward_mean", "signal u cos, forward pairing (mean)"),
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
    if "attention_pearson_mirror_mean" in mdm:
        value = mdm["attention_pearson_mirror_mean"]
        checks.append(Check("MDM mean attention-score correlation over training, mirror pairing, > 0",
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
                model_dir(out, r["family"], r["seed"]), r["family"], r["seed"]
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
            "in a paired query (S_pair) and in the reverse query 'b REL [M]' (S_rev), correlated "
            "across facts and averaged over layers and heads. The pairing is named with every "
            "number: 'mirror' pairs '[M] REL b' (recover a from b with b after the mask: the same "
            "query and key at offsets +Delta and -Delta, the paper's pairing; bidirectional models "
            "only); 'forward' pairs the trained query 'a REL [M]' (same offset, other entity; the "
            "only pairing of a causal model). Gradient cosines compare the gradients of the "
            "forward-query (or '[M] REL b', or actual training) loss and the reverse-query loss."
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
        (probe_figures.storage_routing(models, fig_dir / "storage_routing.png"),
         "Storage (values, output, MLP, embeddings) and routing (queries, keys) parts of the "
         "gradient alignment and of the first-order reverse-loss change, over training."),
        (probe_figures.reverse_loss(models, fig_dir / "reverse_loss.png"),
         "Reverse-query loss during training, and predicted vs actual reverse-loss change of one "
         "SGD step on the training loss."),
        (probe_figures.signal_cosines(models, fig_dir / "signal_cosines.png"),
         "Cosine between the forward and reverse back-propagated signals of the same fact."),
    ]  # fmt: skip
    blocks += [Figure(path, caption) for path, caption in figs if path is not None]
    return blocks


def comparison_blocks(summary: dict[str, Any]) -> list[Block]:
    """The paired MDM-vs-ARM tests: effect, interval, p, per direction."""
    return comparison_section(
        summary.get("comparison") or {},
        "MDM minus ARM, paired by seed and fact",
        ["accuracy"],
        lambda metric: [metric.removesuffix("_accuracy")],
        "Each (seed, fact) pairs the MDM and the ARM trained with that seed on the same query. "
        "The interval resamples seeds and facts independently (both vary between reruns); the "
        "p-value swaps the two outcomes of randomly chosen pairs. 'gap' needs p < 0.05 and the "
        "interval above 0.",
    )


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
            model_dir(out, r["family"], r["seed"]) / "metrics.jsonl"
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
            "encoder trained with the masked diffusion loss (maskable positions: "
            f"{cfg.train.maskable}); the ARM is the same network with a "
            "causal mask trained on next-token prediction. Forward query 'a_i REL [M]' -> B_i; "
            "mirror query '[M] REL B_i' -> a_i (the reverse answer in the trained configuration, "
            "which only the MDM can be asked); reverse query 'B_i REL [M]' -> a_i, never seen in "
            "training. Accuracy is top-1 over "
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
                "mirror",
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
                    a["mirror_accuracy"]["mean"] if "mirror_accuracy" in a else "n/a",
                    a["reverse_accuracy"]["mean"],
                    a["reverse_accuracy"]["std"],
                    "[{:.3f}, {:.3f}]".format(*a["reverse_accuracy"]["ci95"]),
                    a["reverse_candidate_accuracy"]["mean"],
                ]
                for fam, a in summary["aggregate"].items()
            ],
        ),
        Figure(
            fig_acc, "Forward, mirror and reverse accuracy per family; dots are individual seeds."
        ),
        *comparison_blocks(summary),
        Heading("Every model"),
        Table(
            [
                "family",
                "seed",
                "forward",
                "mirror",
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
                    "n/a" if r["mirror_accuracy"] is None else r["mirror_accuracy"],
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
