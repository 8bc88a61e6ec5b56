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

Prose around the blocks carries no measured number; when a rerun changes a claim, the prose is
rewritten in words.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from revcurse import files
from revcurse.stats import COMPARISON_HEADER, comparison_cells, decision, effect_clause

ROOT = Path(__file__).resolve().parents[3]
RESULTS = ROOT / "docs" / "results"
DOCUMENTS = ("README.md", "docs/*.md")
BLOCK = re.compile(
    r"(?P<open><!-- results: (?P<name>[\w-]+) (?P<view>[\w-]+) -->\n)(?P<body>.*?)(?P<close><!-- /results -->)",
    re.S,
)
PUBLISHED_FILES = ("summary.json", "config.yaml", "command.txt", "report.md", "timings.json")


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
    from revcurse.experiments.from_scratch import TASKS

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
    """The paired tests: MDM - ARM on the reverse splits, then each variant - MDM."""
    tests = [("MDM - ARM", key, t) for key, t in s.get("comparison", {}).items()]
    for name, per in (s.get("variant_comparison") or {}).items():
        tests += [(f"{name.upper()} - MDM", key, t) for key, t in per.items()]
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
    rows = []
    for agg in cells:
        fit = agg["fit"]
        rows.append([
            *(agg["labels"][k] for k in keys), f"{fit['n_fitted']}/{fit['n']}",
            _pm(agg.get("forward_accuracy"), 2), _pm(agg.get("mirror_accuracy"), 2),
            _fitted_reverse(fit),
            *([_pm(fit.get("forward_unseen"), 2), _pm(fit.get("reverse_unseen"), 2)]
              if unseen else []),
        ])  # fmt: skip
    header = [*(k.split(".")[-1] for k in keys), "fitted seeds", "forward", "mirror",
              "reverse, fitted seeds",
              *(["forward, unseen paraphrase", "reverse, unseen paraphrase"] if unseen else [])]  # fmt: skip
    threshold = s["aggregates"][0]["fit"]["threshold"]
    return _table(header, rows) + (
        f"\n\nMean ± sd over seeds. Fitted: forward and (MDM) mirror accuracy >= {threshold}; "
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


DISTANCE_SLICES = ("masking", "heads", "rope-base", "no-position", "filler-types", "arm")
BRIDGE_SLICES = ("entity-length", "entity-length-deep", "paraphrases", "facts")

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
        for name in ("person-description", "parent-child")
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
}


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
    """``text`` with every marked block re-rendered."""
    return BLOCK.sub(
        lambda m: m["open"] + render_block(m["name"], m["view"], results) + m["close"], text
    )


def documents(root: Path = ROOT) -> list[Path]:
    return sorted({p for pattern in DOCUMENTS for p in root.glob(pattern)})


def check(root: Path = ROOT) -> list[str]:
    """One line per marked block whose text differs from what its results file renders."""
    stale = []
    for path in documents(root):
        text = path.read_text()
        for m in BLOCK.finditer(text):
            if m["body"] != render_block(m["name"], m["view"], root / "docs" / "results"):
                line = text[: m.start()].count("\n") + 1
                stale.append(f"{path.relative_to(root)}:{line}: block '{m['name']} {m['view']}' "
                             "differs from its results file")  # fmt: skip
    return stale


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
