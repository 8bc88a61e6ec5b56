"""Published numbers: README and docs tables rendered from the results files under docs/results/.

A measured number appears in README.md or docs/*.md only inside a marked block::

    <!-- results: toy accuracy -->
    ...rendered table...
    <!-- /results -->

whose body is rendered here from ``docs/results/<experiment>/summary.json`` (and the command that
wrote it, ``command.txt``). :func:`check` re-renders every block and reports each one that differs
from the text (a test runs it); ``python -m revcurse.report.published --write`` rewrites them after
a rerun. :func:`publish` copies a finished experiment directory's results (summary, config,
command, report, figures; no model weights) into ``docs/results/<experiment>/``.

A measured number in running text is an inline value, rendered the same way from a path into
the summary (:func:`resolve`)::

    MDM reversal falls to <!-- value: bridge aggregates[slices~entity-length-deep,labels/data.entity_tokens=2,labels/family=mdm]/fit/reverse/mean .2f -->0.20<!-- /value -->

and :func:`unmarked_numbers` fails the check on any number shaped like a measurement (a decimal,
a percentage, a ratio such as ``2x``) left in the prose outside a block or a value, unless it is a
documented design constant (:data:`DESIGN_NUMBERS`). So "every number is checked" holds by
construction: a measured number either re-renders from its results file or fails the check.
When a rerun changes a claim, the prose around the values is rewritten in words.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from revcurse import files
from revcurse.report.sweep import SOURCE_LABELS
from revcurse.stats import COMPARISON_HEADER, comparison_cells, decision, effect_clause, format_p

ROOT = Path(__file__).resolve().parents[3]
RESULTS = ROOT / "docs" / "results"
DOCUMENTS = ("README.md", "docs/*.md", "docs/experiments/*.md")
BLOCK = re.compile(
    r"(?P<open><!-- results: (?P<name>[\w-]+) (?P<view>[\w-]+) -->\n)(?P<body>.*?)(?P<close><!-- /results -->)",
    re.S,
)
PUBLISHED_FILES = ("summary.json", "config.yaml", "command.txt", "report.md", "timings.json")
VALUE = re.compile(
    r"<!-- value: (?P<name>[\w-]+) (?P<path>\S+) (?P<fmt>\S+) -->(?P<body>[^<\n]*)<!-- /value -->"
)
ESTIMATES = re.compile(
    r"<!-- estimates: (?P<command>[^>]+?) -->\n(?P<body>.*?)<!-- /estimates -->", re.S
)
"""A table of arithmetic estimates (not measurements) and the command that prints it; the tests
compare the body with that command's output."""


def _pm(metric: dict[str, Any] | None, digits: int = 3) -> str:
    """``mean ± std`` of an aggregate, or n/a."""
    if not metric:
        return "n/a"
    return f"{metric['mean']:.{digits}f} ± {metric['std']:.{digits}f}"


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.3f}"


def _test(t: dict[str, Any]) -> str:
    return f"{effect_clause(t)}{' (gap)' if t['gap'] else ''}"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _mean_over_seeds(rows: list[dict[str, Any]], family: str, key: str) -> float | None:
    values = [r[key] for r in rows if r["family"] == family and r.get(key) is not None]
    return sum(values) / len(values) if values else None


# --------------------------------------------------------------------------------------------------
# Views: (experiment, view) -> markdown
# --------------------------------------------------------------------------------------------------


def toy_accuracy(s: dict[str, Any]) -> str:
    agg, n = s["aggregate"], {f: a["n"] for f, a in s["aggregate"].items()}
    rows = [
        [f.upper(), n[f], _pm(a.get("forward_accuracy")), _pm(a.get("mirror_accuracy")),
         _pm(a.get("reverse_accuracy"))]
        for f, a in agg.items()
    ]  # fmt: skip
    text = _table(["family", "seeds", "forward", "mirror", "reverse"], rows)
    test = s.get("comparison", {}).get("reverse_accuracy")
    if test:
        text += (
            f"\n\nMDM − ARM reverse accuracy, paired by seed and fact ({test['n_seeds']} seeds × "
            f"{test['n_queries']} facts): {_test(test)}. Chance is {s['chance']['reverse']:.3f}."
        )
    return text


PROBE_VIEW = [
    ("probe.attention_pearson_mirror_mean", "attention r, mirror pairing"),
    ("probe.attention_pearson_forward_mean", "attention r, forward pairing"),
    ("probe.grad_cos_fwd_rev_mean", "grad cos forward/reverse"),
    ("probe.grad_cos_mirror_rev_mean", "grad cos mirror/reverse"),
    ("probe.grad_cos_train_rev_mean", "grad cos train/reverse"),
    ("probe.signal_u_cosine_mirror_mean", "signal u cos, mirror pairing"),
    ("probe.signal_u_cosine_forward_mean", "signal u cos, forward pairing"),
]


def toy_probes(s: dict[str, Any]) -> str:
    rows = [
        [f.upper(), *(_signed(_mean_over_seeds(s["rows"], f, k)) for k, _ in PROBE_VIEW)]
        for f in s["aggregate"]
    ]
    note = (f"\n\nEach probe's mean over training, then over the "
            f"{min(a['n'] for a in s['aggregate'].values())} seeds.")  # fmt: skip
    return _table(["family", *(label for _, label in PROBE_VIEW)], rows) + note


PARTS_VIEW = [
    ("probe.grad_cos_fwd_rev_storage_mean", "cos fwd/rev, storage"),
    ("probe.grad_cos_fwd_rev_routing_mean", "cos fwd/rev, routing"),
    ("probe.grad_cos_mirror_rev_storage_mean", "cos mirror/rev, storage"),
    ("probe.grad_cos_mirror_rev_routing_mean", "cos mirror/rev, routing"),
    ("probe.grad_cos_train_rev_storage_mean", "cos train/rev, storage"),
    ("probe.grad_cos_train_rev_routing_mean", "cos train/rev, routing"),
    ("probe.first_order_storage_mean", "ΔL_rev per step, storage"),
    ("probe.first_order_routing_mean", "ΔL_rev per step, routing"),
]


def toy_parts(s: dict[str, Any]) -> str:
    """Storage vs routing: gradient cosines and the first-order reverse-loss change per SGD step
    (-lr <g_train, g_rev> restricted to each part), means over training, then over seeds."""

    def cell(key: str, family: str) -> str:
        value = _mean_over_seeds(s["rows"], family, key)
        if value is None:
            return "n/a"
        return f"{value:+.1e}" if key.startswith("probe.first_order") else f"{value:+.3f}"

    rows = [[f.upper(), *(cell(k, f) for k, _ in PARTS_VIEW)] for f in s["aggregate"]]
    note = (f"\n\nEach probe's mean over training, then over the "
            f"{min(a['n'] for a in s['aggregate'].values())} seeds; ΔL_rev per step: the predicted "
            "change of the reverse loss by one SGD step on the training loss (lr 1e-3), negative "
            "= the reverse loss falls.")  # fmt: skip
    return _table(["family", *(label for _, label in PARTS_VIEW)], rows) + note


def _sweep_rows(s: dict[str, Any], label: str) -> dict[Any, dict[str, dict[str, Any]]]:
    """Sweep aggregates as {label value: {family: aggregate}}."""
    out: dict[Any, dict[str, dict[str, Any]]] = {}
    for agg in s["aggregates"]:
        labels = agg["labels"]
        family = "arm" if labels.get("model.causal") else "mdm"
        out.setdefault(labels[label], {})[family] = agg
    return out


def pe_ablation_table(s: dict[str, Any]) -> str:
    rows = []
    for value, fam in _sweep_rows(s, "model.positional").items():
        mdm, arm = fam.get("mdm", {}), fam.get("arm", {})
        rows.append([
            value, _pm(mdm.get("forward_accuracy")), _pm(mdm.get("mirror_accuracy")),
            _pm(mdm.get("reverse_accuracy")), _pm(arm.get("forward_accuracy")),
            _pm(arm.get("reverse_accuracy")),
            _signed((mdm.get("probe.attention_pearson_mirror_mean") or {}).get("mean")),
            _signed((mdm.get("probe.grad_cos_fwd_rev_mean") or {}).get("mean")),
        ])  # fmt: skip
    n = min(a["n"] for a in s["aggregates"])
    header = ["positional encoding", "MDM forward", "MDM mirror", "MDM reverse", "ARM forward",
              "ARM reverse", "MDM attention r (mirror pairing)", "MDM grad cos fwd/rev"]  # fmt: skip
    return _table(header, rows) + f"\n\nMean ± sd over {n} seeds."


def objective_table(s: dict[str, Any]) -> str:
    rows = [
        [a["labels"]["variant"], _pm(a.get("forward_accuracy")), _pm(a.get("mirror_accuracy")),
         _pm(a.get("reverse_accuracy"))]
        for a in s["aggregates"]
    ]  # fmt: skip
    n = min(a["n"] for a in s["aggregates"])
    return (_table(["variant", "forward", "mirror", "reverse"], rows)
            + f"\n\nMean ± sd over {n} seeds; mirror is n/a for causal models.")  # fmt: skip


def scratch_splits(s: dict[str, Any]) -> str:
    """A from-scratch text experiment's accuracy per split (in the task's table order): the
    headline metric, likelihood top-1 and (runs that have it) chain top-1, per model."""
    from revcurse.data.tasks import TASKS

    agg, metric = s["aggregate"], s["headline_metric"]
    task = TASKS[s["experiment"]]
    labels = {metric: metric, "likelihood_top1": "likelihood top-1", "chain_top1": "chain top-1"}
    measures = [m for m in labels if any(k.endswith(f".{m}") for a in agg.values() for k in a)]
    rows = [
        [split, title, s["splits"][split],
         *(_pm(agg[f].get(f"{split}.{m}"), 2) for m in measures for f in agg)]
        for title, splits in task.tables for split in splits
    ]  # fmt: skip
    header = ["split", "group", "direction",
              *(f"{f.upper()} {labels[m]}" for m in measures for f in agg)]  # fmt: skip
    n = min(a["n"] for a in agg.values())
    return _table(header, rows) + (
        f"\n\nMean ± sd over {n} seeds. Likelihood top-1 ranks the right answer among candidates "
        f"(chance {s['chance_top1']:.2f}) by the model's likelihood (an MDM's: the Monte-Carlo "
        "bound); chain top-1 by the left-to-right chain likelihood (for an ARM the same "
        "quantity). Mirror splits are asked of bidirectional models only."
    )


def scratch_fit(s: dict[str, Any]) -> str:
    """Which seeds of each model fitted each statement group (forward, and the mirror where the
    model trains on it, at least the threshold)."""
    fit = s["fit"]
    groups = list(fit["splits"])
    rows = [
        [name.upper(), "yes" if fit["trains_mirror"][name] else "no",
         *(f"{len(seeds)}/{s['aggregate'][name]['n']}" for seeds in
           (fit["fitted_seeds"][name][g] for g in groups))]
        for name in fit["fitted_seeds"]
    ]  # fmt: skip
    header = ["model", "held to its mirror", *(f"{g} fitted seeds" for g in groups)]
    return _table(header, rows) + (
        f"\n\nFitted: {fit['metric']} accuracy >= {fit['threshold']} on the group's forward split "
        "and, for a model trained on it, its mirror split; each group's reverse splits are tested "
        "over the seeds both compared models fitted."
    )


def scratch_tests(s: dict[str, Any]) -> str:
    """The paired tests: MDM - ARM on the reverse splits, then each variant - MDM, then each
    autoregressive variant - ARM (the causal model held fixed)."""
    tests = [("MDM - ARM", key, t) for key, t in s.get("comparison", {}).items()]
    for field, against in (("variant_comparison", "MDM"), ("variant_arm_comparison", "ARM")):
        for name, per in (s.get(field) or {}).items():
            tests += [(f"{name.upper()} - {against}", key, t) for key, t in per.items()]
    rows = [
        [who, *key.split("."), *comparison_cells(t)[:4], decision(t) if t["n_seeds"] else ""]
        for who, key, t in tests
    ]  # fmt: skip
    return _table(["difference", "split", "metric", "effect", *COMPARISON_HEADER[1:4],
                   "decision"], rows) + (
        "\n\nPaired by seed and query over the seeds where both models fitted the split's "
        "statements. Decision: higher or lower only where the permutation p is below 0.05 and the "
        "crossed-bootstrap interval excludes 0."
    )  # fmt: skip


def scratch_probes(s: dict[str, Any]) -> str:
    agg = s["aggregate"]
    keys = sorted({k for a in agg.values() for k in a if k.startswith("probe.")})
    rows = [[k.removeprefix("probe."), *(_pm(agg[f].get(k)) for f in agg)] for k in keys]
    return _table(["probe (stage.pairing.quantity)", *(f.upper() for f in agg)], rows)


def scratch_curves(s: dict[str, Any]) -> str:
    """The probes over training for every model and each pairing it has (forward first): attention
    correlation overall and by distance third, and the gradient cosine's storage and routing
    parts, at each probed step (mean over seeds)."""
    rows = []
    curves = s.get("probe_curves") or {}
    for name, c in curves.items():  # every model, each pairing it has: forward first
        for pairing in sorted(c["pairings"], key=lambda p: p != "forward"):
            r = c["pairings"][pairing]
            for i, step in enumerate(c["steps"]):
                rows.append([name.upper(), pairing, step, _signed(r["attention_r"][i]),
                             *(_signed(r[f"attention_r_{t}"][i]) for t in ("near", "middle", "far")),
                             _signed(r["cos_pair_rev_storage"][i]),
                             _signed(r["cos_pair_rev_routing"][i])])  # fmt: skip
    first = next(iter(curves.values()), None)
    dist = ""
    if first is not None:
        r = first["pairings"]["forward"]
        dist = ", ".join(f"{t} {r[f'distance_{t}'][-1]:.1f}" for t in ("near", "middle", "far")
                         if r[f"distance_{t}"][-1] is not None)  # fmt: skip
    header = ["model", "pairing", "step", "attention r", "r near", "r middle", "r far",
              "grad cos storage", "grad cos routing"]  # fmt: skip
    return _table(header, rows) + (
        "\n\nMean over seeds; attention r averaged over layers and heads. Near / middle / far: the "
        "probe facts cut into thirds by the total relative distance of their entity spans (mean "
        f"|i - j| from answer rows to the given entity, paired plus reverse query; midpoints "
        f"of the thirds' ranges at the last step, forward pairing: {dist}). "
        "Gradient cosine: paired vs reverse query, storage (embeddings, values and output "
        "projections, MLP, unembedding) and routing (queries, keys) parameters."
    )


def _fitted_reverse(fit: dict[str, Any]) -> str:
    rev = fit.get("reverse")
    if rev is None:
        return "unfitted"
    return f"{_pm(rev, 2)} ({fit['label']})"


def slice_table(s: dict[str, Any], name: str) -> str:
    """One slice of a sliced sweep, fit first: per cell, the seeds that fitted forward and mirror,
    the mean accuracies over all seeds, and reverse accuracy over the fitted seeds only."""
    keys = s["slices"][name]["keys"]
    cells = [a for a in s["aggregates"] if name in a.get("slices", [])]
    unseen = any("reverse_unseen" in a["fit"] for a in cells)
    # with facts trained in both directions (data.both_fraction): their reverse, part of the fit
    both = any(a.get("reverse_both_accuracy") for a in cells)
    # summaries written since the rank is kept over fitted seeds show it beside generation
    rank = any("reverse_rank" in a["fit"] for a in cells)
    rows = []
    for agg in cells:
        fit = agg["fit"]
        rows.append([
            *(agg["labels"][k] for k in keys), f"{fit['n_fitted']}/{fit['n']}",
            _pm(agg.get("forward_accuracy"), 2), _pm(agg.get("mirror_accuracy"), 2),
            _fitted_reverse(fit),
            *([_pm(fit.get("reverse_rank"), 2)] if rank else []),
            *([_pm(fit.get("forward_unseen"), 2), _pm(fit.get("reverse_unseen"), 2)]
              if unseen else []),
            *([_pm(agg.get("reverse_both_accuracy"), 2)] if both else []),
        ])  # fmt: skip
    header = [*(k.split(".")[-1] for k in keys), "fitted seeds", "forward", "mirror",
              "reverse, fitted seeds",
              *(["reverse by likelihood rank (top-1), fitted seeds"] if rank else []),
              *(["forward, unseen paraphrase", "reverse, unseen paraphrase"] if unseen else []),
              *(["reverse of the facts trained both ways"] if both else [])]  # fmt: skip
    threshold = s["aggregates"][0]["fit"]["threshold"]
    trained = " and the reverse of the facts trained both ways" if both else ""
    return _table(header, rows) + (
        f"\n\nMean ± sd over seeds. Fitted: forward and (MDM) mirror accuracy{trained} >= "
        f"{threshold}; reverse accuracy is read over the fitted seeds only (the facts trained "
        "forward only, where some were trained both ways), and a cell with none is unfitted."
        if both
        else f"\n\nMean ± sd over seeds. Fitted: forward and (MDM) mirror accuracy >= {threshold}; "
        "reverse accuracy is read over the fitted seeds only, and a cell with none is unfitted."
    )


def slice_tests(s: dict[str, Any], name: str) -> str:
    """The paired tests of one slice (its compared key, value minus baseline, per cell)."""
    rows = [
        [f"{c['value']} - {c['baseline']}", ", ".join(f"{k.split('.')[-1]}={v}"
                                                       for k, v in c["cell"].items()),
         *comparison_cells(c["test"])[:4], c["decision"],
         f"{c['fit']['value']} / {c['fit']['baseline']}"]
        for c in s["contrasts"] if c["slice"] == name
    ]  # fmt: skip
    key = s["slices"][name]["compare"].split(".")[-1]
    header = [key, "where", "reverse difference", *COMPARISON_HEADER[1:4], "decision", "fit"]
    return _table(header, rows) + (
        "\n\nPaired by seed and fact. Decision: higher or lower only where the permutation p is "
        "below 0.05 and the interval excludes 0; the permutation test treats (seed, fact) pairs as "
        "independent, so its p alone overstates differences that vary from seed to seed."
    )


def slice_sources(s: dict[str, Any], name: str) -> str:
    """Where the reverse answers of a slice's multi-token cells come from, over fitted seeds:
    per-position accuracy and the classes of wrong answers (:func:`~revcurse.evaluation.
    answer_sources`), as fractions of the queries."""
    keys = s["slices"][name]["keys"]
    cells = [a for a in s["aggregates"]
             if name in a.get("slices", []) and a["fit"].get("fitted_metrics")]  # fmt: skip
    rows = [[*(a["labels"][k] for k in keys), f"{a['fit']['n_fitted']}/{a['fit']['n']}",
             *(_pm(a["fit"]["fitted_metrics"].get(f"reverse_{m}"), 2) for m, _ in SOURCE_LABELS)]
            for a in cells]  # fmt: skip
    header = [*(k.split(".")[-1] for k in keys), "fitted seeds", *(t for _, t in SOURCE_LABELS)]
    return _table(header, rows) + (
        "\n\nReverse queries of the multi-token cells, fractions of the queries, mean ± sd over "
        "the fitted seeds. A wrong answer is another entity of the answer's side (some sharing a "
        "token with the right one), else a copy of the query's own entity, else one holding a "
        "token of the other side, else a mixture of its own side's tokens that spells no entity, "
        "else anything else."
    )


def draws_accuracy(s: dict[str, Any]) -> str:
    """``analyse mc-draws``: each cell's reverse candidate accuracy under each scorer."""
    names = s["scorers"]
    varying = [k for k in s["cells"][0]["labels"]
               if len({repr(c["labels"][k]) for c in s["cells"]}) > 1]  # fmt: skip
    rows = [[*(c["labels"][k] for k in varying), *(_pm(c["accuracy"][n], 2) for n in names)]
            for c in s["cells"]]  # fmt: skip
    return _table([*(k.split(".")[-1] for k in varying), *names], rows) + (
        "\n\nReverse candidate accuracy (the right entity first among every entity of its side), "
        "mean ± sd over seeds: the Monte-Carlo bound with N draws (mc-N), its exact expectation, "
        "the left-to-right chain."
    )


def draws_tests(s: dict[str, Any]) -> str:
    """``analyse mc-draws``: the sweep's paired tests on rank correctness, one column per scorer
    (effect and decision)."""
    names = s["scorers"]
    first = s["contrasts"][names[0]]
    rows = []
    for i, c in enumerate(first):
        where = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in c["cell"].items())
        cells = [s["contrasts"][n][i] for n in names]
        rows.append([f"{c['slice']}: {c['value']} - {c['baseline']}", where,
                     *(f"{d['test']['effect']:+.3f} ({d['decision']})" for d in cells)])  # fmt: skip
    return _table(["contrast", "where", *names], rows) + (
        "\n\nPaired by seed and fact on whether the right entity ranks first; decisions as in "
        "every sweep (p < 0.05 and an interval excluding 0)."
    )


def readings_table(s: dict[str, Any]) -> str:
    """``analyse decoding``: per cell and reading, fit and reverse read that way."""
    from revcurse.report.readings import CELL_COLUMNS, cell_rows

    return _table(CELL_COLUMNS, cell_rows(s)) + (
        "\n\nMeans over seeds. sampler: the evaluation's generation (one token per step); "
        "one-step: the whole answer filled at once; rank: the right entity first among its "
        "side's by the exact likelihood bound; one-step-rank: the same by the answer read with "
        "all of it masked. Each reading fits first by itself (forward and mirror >= 0.99 read "
        "that way) and reads the reverse over its own fitted seeds."
    )


def readings_tests(s: dict[str, Any]) -> str:
    """``analyse decoding``: the sweep's paired tests under each reading, with its fit labels."""
    from revcurse.report.readings import TEST_COLUMNS, test_rows

    return _table(TEST_COLUMNS, test_rows(s)) + (
        "\n\nReverse difference paired by seed and fact; decisions as in every sweep (p < 0.05 "
        "and an interval excluding 0); fit: each cell's label by the same reading."
    )


def text_readings_table(s: dict[str, Any]) -> str:
    """``analyse decoding`` of a from-scratch experiment: per model, reading and statement group,
    fit and the group's splits read that way."""
    from revcurse.report.readings import text_model_columns, text_model_rows

    return _table(text_model_columns(s), text_model_rows(s)) + (
        "\n\nMean ± sd over seeds. sampler: the generation the run recorded (one token per "
        "step); one-step: the whole answer filled at once; rank: the answer first among the "
        "candidates by the Monte-Carlo likelihood bound; chain-rank: by the chain likelihood. "
        "Each reading fits first by itself (forward and, for a model trained on it, mirror at "
        ">= 0.95 read that way) and reads the reverse over its own fitted seeds."
    )


def text_readings_tests(s: dict[str, Any]) -> str:
    """``analyse decoding`` of a from-scratch experiment: each variant - MDM per reading."""
    from revcurse.report.readings import TEXT_TEST_COLUMNS, text_test_rows

    return _table(TEXT_TEST_COLUMNS, text_test_rows(s)) + (
        "\n\nPaired by seed and query over the seeds both models fitted by that reading; "
        "decisions as in every paired test here (p < 0.05 and an interval excluding 0)."
    )


def evaluation_table(s: dict[str, Any]) -> str:
    """``revcurse evaluate`` of one checkpoint: per split, generation and likelihood rank with their
    binomial standard errors, and the probes' mean coupling and gradient cosine."""
    from revcurse.stats import with_se

    def cue(m: dict[str, Any], kind: str) -> str:  # the rank on one kind of query, with its n
        n = round(m["n"] * (m["cued_share"] if kind == "cued" else 1 - m["cued_share"]))
        rate = m.get(f"likelihood_top1_{kind}")
        return "n/a" if rate is None else f"{with_se(rate, n)} (of {n})"

    cued = all("cued_share" in m for m in s["splits"].values())
    rows = [[split, m["direction"], m["n"], with_se(m["exact"], m["n"]),
             with_se(m["prefix"], m["n"]), with_se(m["likelihood_top1"], m["n"]),
             *((cue(m, "cued"), cue(m, "uncued")) if cued else ()),
             f"{m['chance_top1']:.2f}"] for split, m in s["splits"].items()]  # fmt: skip
    text = _table(["split", "direction", "queries", "exact", "prefix", "likelihood top-1",
                   *(("top-1, named by a shared word", "top-1, the rest") if cued else ()),
                   "chance"], rows)  # fmt: skip
    probe = s.get("probe") or {}
    if "attention_pearson_forward_final" in probe:
        text += (
            "\n\n| probe (forward pairing) | value |\n|---|---|\n"
            f"| attention r(S_forward, S_reverse), mean over layers | "
            f"{probe['attention_pearson_forward_final']:+.3f} |\n"
            f"| gradient cosine (forward, reverse), mean over facts | "
            f"{probe['per_fact_cos_fwd_rev_final']:+.3f} |"
        )
    return text + (
        "\n\nEach proportion ± its binomial standard error over the split's queries. exact / "
        "prefix: greedy generation (the reply is the answer / starts with it); likelihood top-1: "
        "the answer ranked first among the candidates"
        + (
            "; named by a shared word: the queries whose answer is the only candidate sharing a "
            "word with them (a surname, on Parent–Child), and the rest."
            if cued
            else "."
        )
    )


MATCHED_METRICS = {"prefix": "generation", "likelihood_top1": "rank", "chain_top1": "chain rank"}


def matched_pair_table(s: dict[str, Any]) -> str:
    """The matched pair: per family and split, each reading before and after fine-tuning (mean ±
    sd over seeds), and per family the seeds that fitted by each reading."""
    rows = []
    for family in s["families"]:
        agg = s["aggregate"][family]
        for split, direction in s["directions"].items():
            rows.append([f"`{family}`", direction, *(
                _pm(agg.get(f"{stage}.{split}.{metric}"), 2)
                for metric in MATCHED_METRICS for stage in ("before", "after")
            )])  # fmt: skip
    text = _table(["family", "split", *(f"{name}, {stage}" for name in MATCHED_METRICS.values()
                                        for stage in ("before", "after"))], rows)  # fmt: skip
    fit = s["fit"]
    fitted = [[reading, *(", ".join(map(str, fit["fitted_seeds"][reading][f])) or "none"
                          for f in s["families"])] for reading in fit["readings"]]  # fmt: skip
    return (
        text
        + "\n\n"
        + _table(
            [
                "seeds fitted (forward ≥ " + f"{fit['threshold']}) by",
                *(f"`{f}`" for f in s["families"]),
            ],
            fitted,
        )
        + (
            f"\n\nMean ± sd over seeds {', '.join(map(str, s['seeds']))} of each split's "
            f"{s['rows'][0]['n'][next(iter(s['directions']))]} queries. generation: the reply starts "
            f"with the answer; rank: the answer first among {round(1 / max(s['chance_top1'].values()))} "
            "candidates by likelihood (the A2D's "
            "by the Monte-Carlo bound); chain rank: first by the chain likelihood (the A2D's answer "
            "unmasked a token at a time; for the ARM the same as rank)."
        )
    )


def matched_pair_cue(s: dict[str, Any]) -> str:
    """The matched pair's ranks apart on the queries whose answer alone shares a word with them
    (a surname, on Parent–Child) and on the rest, before → after fine-tuning, seed means."""

    def mean(family: str, key: str) -> str:
        agg = s["aggregate"][family].get(key)
        return "n/a" if agg is None else f"{agg['mean']:.2f}"

    rows = []
    for family in s["families"]:
        for split, direction in s["directions"].items():
            rows.append([f"`{family}`", direction, *(
                f"{mean(family, f'before.{split}.{m}_{kind}')} → "
                f"{mean(family, f'after.{split}.{m}_{kind}')}"
                for m in ("likelihood_top1", "chain_top1") for kind in ("cued", "uncued")
            )])  # fmt: skip
    shares = ", ".join(f"{split} {share:.2f}" for split, share in s["cued_share"].items())
    return _table(["family", "split", "rank, named by a shared word", "rank, the rest",
                   "chain rank, named by a shared word", "chain rank, the rest"], rows) + (
        "\n\nBefore → after fine-tuning, means over seeds. Named by a shared word: the right "
        "answer is the only candidate that shares a word with the query (on Parent–Child, the "
        f"parent's or child's surname; share of the queries: {shares}); the rest: every other "
        "query."
    )  # fmt: skip


def matched_pair_tests(s: dict[str, Any]) -> str:
    """The matched pair's reverse split, A2D − ARM paired by seed and query per reading, over the
    seeds both fitted and over every seed."""
    rows = []
    for queries, comparison in (("every query", "comparison"),
                                ("no shared word", "comparison_uncued")):  # fmt: skip
        for key, t in s.get(comparison, {}).items():
            split, reading, over = key.split(".")
            if not t.get("seeds"):
                rows.append([split, reading, queries, over, "none", "", "", "", "not read"])
                continue
            rows.append([split, reading, queries, over, ", ".join(map(str, t["seeds"])),
                         _signed(t["effect"]), f"[{_signed(t['ci'][0])}, {_signed(t['ci'][1])}]",
                         f"{t['p']:.2g}", t["decision"]])  # fmt: skip
    mdm, arm = s["families"][1], s["families"][0]
    return _table(["split", "reading", "queries", "seeds over", "seeds", f"{mdm} − {arm}",
                   "95% interval", "p", "decision"], rows) + (
        "\n\nPaired by seed and query. no shared word: only the queries whose answer is not "
        "the only candidate sharing a word with them (a surname); fitted: the seeds where both "
        "models fitted by that reading (none: nothing to read); all: every seed, a gap between "
        "models that did not fit their facts, which is not a reversal result."
    )  # fmt: skip


def curve_table(s: dict[str, Any]) -> str:
    """A sweep's curves over training as ranges (``summary["curves"]``): per cell, the lowest and
    highest accuracy any seed had at any evaluation, and the range at the seeds' last one."""
    titles = {"forward_accuracy": "forward", "reverse_both_accuracy": "reverse, trained both ways",
              "reverse_accuracy": "reverse, trained forward only (the test)"}  # fmt: skip
    metrics = [m for m in titles if any(m in c for c in s["curves"])]
    keys = [
        k for k in s["curves"][0]["labels"] if len({repr(c["labels"][k]) for c in s["curves"]}) > 1
    ]
    rows = []
    for cell in s["curves"]:
        ranges = []
        for m in metrics:
            r = cell.get(m)
            ranges.append("n/a" if r is None else f"{r['min']:.2f} – {r['max']:.2f} "
                          f"(last: {r['last_min']:.2f} – {r['last_max']:.2f})")  # fmt: skip
        rows.append([*(cell["labels"][k] for k in keys), *ranges])
    n = s["curves"][0][metrics[0]]["evaluations"]
    return _table([*(k.split(".")[-1] for k in keys), *(titles[m] for m in metrics)], rows) + (
        f"\n\nLowest – highest accuracy of any seed at any evaluation during training ({n} "
        "evaluations per cell over its seeds), and the range at the seeds' last evaluation."
    )


DISTANCE_SLICES = ("masking", "heads", "rope-base", "no-position", "filler-types", "arm")
BRIDGE_SLICES = ("entity-length", "entity-length-deep", "paraphrases", "facts")
ENTITY_LENGTH_SLICES = ("length-unique", "sharing", "pool-4", "pool-2", "arm")
OBJECTIVE_ATTENTION_SLICES = ("family", "masked-attention", "next-token-attention", "masked-ar")
WEIGHT_DECAY_SLICES = ("arm", "mdm")
ENTITY_MASKING_SLICES = ("unique", "shared")

VIEWS: dict[tuple[str, str], Callable[[dict[str, Any]], str]] = {
    ("toy", "accuracy"): toy_accuracy,
    ("toy", "probes"): toy_probes,
    ("toy", "parts"): toy_parts,
    # the follow-up on depth: the toy reproduction with 4 layers and 4 heads
    ("toy-deep", "accuracy"): toy_accuracy,
    ("toy-deep", "probes"): toy_probes,
    ("toy-deep", "parts"): toy_parts,
    ("pe-ablation", "table"): pe_ablation_table,
    ("objective", "table"): objective_table,
    **{
        (name, view): fn
        for name in (
            "person-description",
            "parent-child",
            "parent-child-grid",
            "person-description-grid",
        )
        for view, fn in (
            ("splits", scratch_splits),
            ("fit", scratch_fit),
            ("tests", scratch_tests),
            ("probes", scratch_probes),
            ("curves", scratch_curves),
        )
    },  # fmt: skip
    **{("distance", n): (lambda s, n=n: slice_table(s, n)) for n in DISTANCE_SLICES},
    **{
        ("distance", f"{n}-tests"): (lambda s, n=n: slice_tests(s, n))
        for n in DISTANCE_SLICES
        if n != "arm"
    },  # the ARM control compares nothing
    ("distance-fillers", "shared-fillers"): lambda s: slice_table(s, "shared-fillers"),
    ("distance-fillers", "shared-fillers-tests"): lambda s: slice_tests(s, "shared-fillers"),
    **{("bridge", n): (lambda s, n=n: slice_table(s, n)) for n in BRIDGE_SLICES},
    **{
        ("bridge", f"{n}-tests"): (lambda s, n=n: slice_tests(s, n))
        for n in BRIDGE_SLICES
        if n != "facts"
    },  # different facts: nothing to pair
    **{("entity-length", n): (lambda s, n=n: slice_table(s, n)) for n in ENTITY_LENGTH_SLICES},
    **{
        ("entity-length", f"{n}-tests"): (lambda s, n=n: slice_tests(s, n))
        for n in ENTITY_LENGTH_SLICES
        if n != "arm"
    },  # the ARM control compares nothing
    **{
        ("entity-length", f"{n}-sources"): (lambda s, n=n: slice_sources(s, n))
        for n in ENTITY_LENGTH_SLICES
    },
    ("entity-masking-decoding", "readings"): readings_table,
    ("entity-masking-decoding", "tests"): readings_tests,
    ("smollm2-parent-child", "evaluation"): evaluation_table,
    ("matched-pair", "table"): matched_pair_table,
    ("matched-pair", "tests"): matched_pair_tests,
    ("matched-pair", "cue"): matched_pair_cue,
    **{
        (name, view): fn
        for name in ("parent-child-grid-decoding", "person-description-grid-decoding")
        for view, fn in (("readings", text_readings_table), ("tests", text_readings_tests))
    },
    ("entity-length-mc-draws", "accuracy"): draws_accuracy,
    ("entity-length-mc-draws", "tests"): draws_tests,
    **{
        ("objective-attention", n): (lambda s, n=n: slice_table(s, n))
        for n in OBJECTIVE_ATTENTION_SLICES
    },
    **{
        ("objective-attention", f"{n}-tests"): (lambda s, n=n: slice_tests(s, n))
        for n in OBJECTIVE_ATTENTION_SLICES
    },
    **{
        ("objective-attention-entities", n): (lambda s, n=n: slice_table(s, n))
        for n in OBJECTIVE_ATTENTION_SLICES
    },
    **{
        ("objective-attention-entities", f"{n}-tests"): (lambda s, n=n: slice_tests(s, n))
        for n in OBJECTIVE_ATTENTION_SLICES
    },
    **{("entity-masking", n): (lambda s, n=n: slice_table(s, n)) for n in ENTITY_MASKING_SLICES},
    **{
        ("entity-masking", f"{n}-tests"): (lambda s, n=n: slice_tests(s, n))
        for n in ENTITY_MASKING_SLICES
    },
    **{
        ("entity-masking", f"{n}-sources"): (lambda s, n=n: slice_sources(s, n))
        for n in ENTITY_MASKING_SLICES
    },
    **{("weight-decay", n): (lambda s, n=n: slice_table(s, n)) for n in WEIGHT_DECAY_SLICES},
    ("weight-decay", "curves"): curve_table,
    **{
        ("weight-decay", f"{n}-tests"): (lambda s, n=n: slice_tests(s, n))
        for n in WEIGHT_DECAY_SLICES
    },
}


# --------------------------------------------------------------------------------------------------
# Inline values: a path into a summary, and a format
# --------------------------------------------------------------------------------------------------

_STEP = re.compile(r"(?P<key>[^/\[@]+)(?:\[(?P<where>[^\]]*)\])?")


def _matches(item: Any, where: str) -> bool:
    """Whether a list element passes every ``key=value`` (``value`` read as JSON where it parses,
    else a string) and ``key~member`` condition of a filter; keys are ``/``-separated paths."""
    for cond in where.split(","):
        member = "~" in cond
        key, value = cond.split("~" if member else "=", 1)
        try:
            found = _walk(item, key.split("/"))
        except KeyError:
            return False
        try:
            want = json.loads(value)
        except json.JSONDecodeError:
            want = value
        if (want not in found) if member else (found != want):
            return False
    return True


def _walk(node: Any, keys: list[str]) -> Any:
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            raise KeyError(key)
        node = node[key]
    return node


REDUCERS: dict[str, Callable[[list[float]], float]] = {
    "min": min, "max": max, "mean": lambda v: sum(v) / len(v), "count": len,
    "absmin": lambda v: min(abs(x) for x in v), "absmax": lambda v: max(abs(x) for x in v),
}  # fmt: skip


def _keys(node: Any, key: str, path: str) -> list[Any]:
    """The values under ``key`` (a glob such as ``*reverse*.prefix`` may match several)."""
    if not isinstance(node, dict):
        raise KeyError(f"{path}: {key!r} under a non-mapping")
    if "*" in key:
        hits = [v for k, v in node.items() if fnmatch.fnmatchcase(k, key)]
        if not hits:
            raise KeyError(f"{path}: no key matches {key!r}")
        return hits
    if key not in node:
        raise KeyError(f"{path}: no key {key!r}")
    return [node[key]]


def _select(nodes: list[Any], where: str, path: str) -> list[Any]:
    """A list step: ``[i]`` or ``[a:b]`` by position, else a filter (:func:`_matches`)."""
    if re.fullmatch(r"-?\d+", where):
        return [n[int(where)] for n in nodes]
    if re.fullmatch(r"-?\d*:-?\d*", where):
        a, b = (int(x) if x else None for x in where.split(":"))
        return [x for n in nodes for x in n[a:b]]
    picked = [x for n in nodes for x in n if _matches(x, where)]
    if not picked:
        raise KeyError(f"{path}: nothing matches [{where}]")
    return picked


def resolve(summary: dict[str, Any], path: str) -> Any:
    """The value at ``path`` in a summary: ``/``-separated keys (a ``*`` glob may match several);
    a list step ``[i]`` or ``[a:b]`` takes positions, ``[key=value,...]`` (or ``[key~member]``: a
    list-valued key that holds member) the elements that match. Where a step gives several
    values, the rest of the path maps over them, and a final ``@min``, ``@max``, ``@mean``,
    ``@count``, ``@absmin`` or ``@absmax`` must reduce them to one. Raises ``KeyError`` naming the
    step that found nothing."""
    path, _, reducer = path.partition("@")
    nodes, many = [summary], False
    for step in re.findall(r"(?:[^/\[]|\[[^\]]*\])+", path):  # "/" splits outside brackets
        m = _STEP.fullmatch(step)
        if m is None:
            raise KeyError(f"{path}: bad step {step!r}")
        nodes = [v for n in nodes for v in _keys(n, m["key"], path)]
        if m["where"] is not None:
            nodes = _select(nodes, m["where"], path)
        many = many or len(nodes) > 1 or (m["where"] is not None and ":" in m["where"])
    if reducer:
        if reducer not in REDUCERS:
            raise KeyError(f"{path}: unknown reducer @{reducer} (known: {', '.join(REDUCERS)})")
        return REDUCERS[reducer]([float(v) for v in nodes])
    if many or len(nodes) != 1:
        raise KeyError(f"{path}: {len(nodes)} values and no @reducer")
    return nodes[0]


def format_value(value: Any, fmt: str) -> str:
    """``fmt`` is a format spec (``.2f``, ``+.3f``, ``d``), ``p`` (a p-value as the tables print
    it), or ``str``; a trailing ``u`` writes minus signs as the typographic minus."""
    minus = fmt.endswith("u") and fmt != "u"
    spec = fmt[:-1] if minus else fmt
    text = format_p(value) if spec == "p" else str(value) if spec == "str" else format(value, spec)
    return text.replace("-", "−") if minus else text


def render_value(name: str, path: str, fmt: str, results: Path = RESULTS) -> str:
    return format_value(resolve(files.read_json(results / name / "summary.json"), path), fmt)


# Numbers shaped like measurements: decimals (0.20, −0.796, .5), percentages, ratios (2x, 1.2x).
MEASURED = re.compile(r"(?<![\w.])[+−-]?(?:\d+\.\d+|\.\d+|\d+(?:\.\d+)?%|\d+(?:\.\d+)?x\b)")
DESIGN_NUMBERS: tuple[tuple[str, str], ...] = (
    (r"arXiv:? ?\d{4}\.\d{4,5}", "a paper's identifier"),
    (r"(?:Llama|Qwen|CC BY(?:-NC)?) ?-?\d+(?:\.\d+)+", "a model's or licence's version"),
    (r"\b95% (?:percentile-bootstrap )?interval", "the interval level (stats.paired_comparison)"),
    (r"p < 0\.05", "the significance level (stats.decision)"),
    (
        r"MLM (?:at )?15% or\s+50%|MLM 15%, MLM 50%|MLM 50% misses",
        "the objective ablation's masking rates",
    ),
    (
        r"at least 0\.95|at >= 0\.95|>= 0\.95|\b0\.95 \(prefix\)|≥ 0\.99",
        "the fit thresholds (config)",
    ),
    (r"\(chance 0\.1\)", "one over the 10 candidates of the design"),
    (r"samples at 0\.2 with top-p 0\.95", "Dream's published sampler settings"),
    (r"betas \(0\.9, 0\.999", "AdamW's default betas (config)"),
    (r"`?train\.cart_p`? = 0\.3", "Dream's CART constant (config)"),
    (r"\(the aim is >= 0\.9x\)|that 2x aim", "a benchmark's target, not a result"),
    (
        r"above 98% once weight decay is at\s+least 1, and none above 40% below it",
        "Kim et al.'s reported result (their paper's numbers, quoted)",
    ),
    (
        r"40% of its 989 TFLOP/s bf16 peak in training and 15% in evaluation",
        "assumptions of the cost estimate",
    ),
)
"""Numbers in prose that are design constants, levels or names, not measurements: each pattern
with the reason it is exempt (a test keeps every pattern in use)."""


def _blank(m: re.Match[str]) -> str:
    return "\n" * m.group(0).count("\n")


def _prose(text: str) -> str:
    """``text`` with everything the number check does not read blanked out (line numbers kept):
    results blocks, inline values, estimate tables, fenced and inline code, HTML comments and
    link targets."""
    for pattern in (BLOCK, VALUE, ESTIMATES, re.compile(r"^```.*?^```", re.S | re.M),
                    re.compile(r"<!--.*?-->", re.S), re.compile(r"`[^`\n]*`"),
                    re.compile(r"\]\([^)\s]*\)")):  # fmt: skip
        text = pattern.sub(_blank, text)
    return text


def unmarked_numbers(root: Path = ROOT) -> list[str]:
    """One line per measured-looking number in README/docs prose outside every results block and
    inline value that no :data:`DESIGN_NUMBERS` pattern covers."""
    found = []
    exempt = [re.compile(p) for p, _ in DESIGN_NUMBERS]
    for path in documents(root):
        prose = _prose(path.read_text())
        covered = [m.span() for p in exempt for m in p.finditer(prose)]
        for m in MEASURED.finditer(prose):
            if not any(a <= m.start() and m.end() <= b for a, b in covered):
                line = prose[: m.start()].count("\n") + 1
                found.append(f"{path.relative_to(root)}:{line}: number '{m.group(0)}' outside a "
                             "results block or value (render it from docs/results/)")  # fmt: skip
    return found


def design_patterns_in_use(root: Path = ROOT) -> dict[str, bool]:
    """For each :data:`DESIGN_NUMBERS` pattern, whether some document's prose still uses it."""
    texts = [_prose(p.read_text()) for p in documents(root)]
    return {p: any(re.search(p, t) for t in texts) for p, _ in DESIGN_NUMBERS}


# --------------------------------------------------------------------------------------------------
# Rendering, checking, publishing
# --------------------------------------------------------------------------------------------------


def render_block(name: str, view: str, results: Path = RESULTS) -> str:
    """The body of one marked block: the view's table and the command that wrote its numbers."""
    if (name, view) not in VIEWS:
        known = ", ".join(f"{n} {v}" for n, v in VIEWS)
        raise ValueError(f"no published view '{name} {view}' (known: {known})")
    folder = results / name
    summary = files.read_json(folder / "summary.json")
    # one command per line, in the order they ran (a run, then its re-evaluation, say)
    commands = [c for c in (folder / "command.txt").read_text().splitlines() if c.strip()]
    written = "`, then `".join(commands)
    source = f"docs/results/{name}/summary.json"
    return f"{VIEWS[name, view](summary)}\n\n<sub>From `{source}`, written by `{written}`.</sub>\n"


def render(text: str, results: Path = RESULTS) -> str:
    """``text`` with every marked block and inline value re-rendered."""
    text = BLOCK.sub(
        lambda m: m["open"] + render_block(m["name"], m["view"], results) + m["close"], text
    )
    return VALUE.sub(
        lambda m: m.group(0).replace(
            f"-->{m['body']}<!--",
            f"-->{render_value(m['name'], m['path'], m['fmt'], results)}<!--",
        ),
        text,
    )


def documents(root: Path = ROOT) -> list[Path]:
    return sorted({p for pattern in DOCUMENTS for p in root.glob(pattern)})


def check(root: Path = ROOT) -> list[str]:
    """One line per marked block or inline value whose text differs from what its results file
    renders, and per measured-looking number outside them (:func:`unmarked_numbers`)."""
    stale = []
    results = root / "docs" / "results"
    for path in documents(root):
        text = path.read_text()
        # a marker that does not parse would be skipped silently, its number never checked
        parsed = {m.start() for m in VALUE.finditer(text)} | {
            m.start() for m in BLOCK.finditer(text)
        }
        for m in re.finditer(r"(?<!`)<!-- (?:value|results): ", text):  # not in a code span
            if m.start() not in parsed:
                line = text[: m.start()].count("\n") + 1
                stale.append(f"{path.relative_to(root)}:{line}: a value or results marker that "
                             "does not parse (expected '<!-- value: NAME PATH FORMAT -->...' or "
                             "'<!-- results: NAME VIEW -->')")  # fmt: skip
        for m in BLOCK.finditer(text):
            if m["body"] != render_block(m["name"], m["view"], results):
                line = text[: m.start()].count("\n") + 1
                stale.append(f"{path.relative_to(root)}:{line}: block '{m['name']} {m['view']}' "
                             "differs from its results file")  # fmt: skip
        for m in VALUE.finditer(text):
            line = text[: m.start()].count("\n") + 1
            try:
                want = render_value(m["name"], m["path"], m["fmt"], results)
            except (KeyError, ValueError, TypeError) as e:
                stale.append(f"{path.relative_to(root)}:{line}: value '{m['name']} {m['path']}' "
                             f"cannot be read: {e}")  # fmt: skip
                continue
            if m["body"] != want:
                stale.append(f"{path.relative_to(root)}:{line}: value '{m['name']} {m['path']}' "
                             f"reads {m['body']!r}, its results file gives {want!r}")  # fmt: skip
    return stale + unmarked_numbers(root)


def write(root: Path = ROOT) -> list[Path]:
    """Re-render every marked block in place; returns the documents that changed."""
    changed = []
    for path in documents(root):
        text = path.read_text()
        new = render(text, root / "docs" / "results")
        if new != text:
            files.write_text(path, new)
            changed.append(path)
    return changed


def publish(run_dir: Path, name: str, root: Path = ROOT) -> Path:
    """Copy an experiment directory's results (no weights) to ``docs/results/<name>/``."""
    dest = root / "docs" / "results" / name
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "figures").mkdir(parents=True)
    for f in PUBLISHED_FILES:
        if (run_dir / f).is_file():
            shutil.copyfile(run_dir / f, dest / f)
    for png in sorted((run_dir / "figures").glob("*.png")):
        shutil.copyfile(png, dest / "figures" / png.name)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Published results: check, rewrite or publish.")
    parser.add_argument("--write", action="store_true", help="re-render every marked block")
    parser.add_argument("--publish", nargs=2, metavar=("RUN_DIR", "NAME"),
                        help="copy a finished experiment's results to docs/results/NAME")  # fmt: skip
    args = parser.parse_args(argv)
    if args.publish:
        print(f"published {publish(Path(args.publish[0]), args.publish[1])}")
        return 0
    if args.write:
        for path in write():
            print(f"rewrote {path}")
        return 0
    stale = check()
    for line in stale:
        print(line)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
