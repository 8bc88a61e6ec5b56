"""Statistics over seeds and queries.

* :func:`aggregate`: per metric, the mean over seeds, the sample standard deviation and a 95%
  percentile-bootstrap interval of the mean (descriptive: with 3-5 seeds such an interval is
  narrow and optimistic, so no verdict is drawn from comparing two of them);
* :func:`paired_comparison`: the verdict on a gap between two families. Their per-query outcomes
  are paired by (seed, query): the two families trained with the same seed answer the same query.
  Effect size: the mean paired difference, with a 95% interval from a crossed bootstrap that
  resamples seeds and queries independently (both are random factors, so the interval carries the
  seed-to-seed variation as well as the query-to-query one); p-value: a paired permutation test
  (``scipy.stats.permutation_test``, the two outcomes of a pair swapped at random);
* :func:`fit_summary`: the control every reversal reading needs. A seed's reverse accuracy counts
  only if that model fitted what it was trained on: forward, and for a bidirectional model the
  mirror query, at :data:`FIT_THRESHOLD` or above.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

FIT_THRESHOLD = 0.99
"""Forward (and mirror) accuracy at or above which a model counts as having fitted its data."""

METRICS = (
    "forward_accuracy",
    "mirror_accuracy",
    "reverse_accuracy",
    "forward_candidate_accuracy",
    "mirror_candidate_accuracy",
    "reverse_candidate_accuracy",
    "forward_unseen_accuracy",
    "mirror_unseen_accuracy",
    "reverse_unseen_accuracy",
    "reverse_both_accuracy",
)


def bootstrap_ci(
    values: Sequence[float], level: float = 0.95, n_resamples: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (seeded, so reports are reproducible).

    With very few seeds the interval is narrow and optimistic; it is reported beside the standard
    deviation, not instead of it.
    """
    x = np.asarray(values, dtype=np.float64)
    if len(x) == 1:
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_resamples, len(x)))].mean(axis=1)
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def aggregate(rows: Sequence[dict[str, Any]], metrics: Sequence[str] = METRICS) -> dict[str, Any]:
    """``{metric: {mean, std, ci95, values}}`` over the rows (one row per seed); metrics that not
    every row has are left out."""
    out: dict[str, Any] = {"n": len(rows)}
    for metric in metrics:
        if not rows or any(metric not in r or r[metric] is None for r in rows):
            continue
        values = [float(r[metric]) for r in rows]
        arr = np.asarray(values)
        out[metric] = {
            "mean": float(arr.mean()),
            "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
            "ci95": list(bootstrap_ci(values)),
            "values": values,
        }
    return out


def paired_comparison(
    a: Sequence[Sequence[float]],
    b: Sequence[Sequence[float]],
    *,
    level: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> dict[str, Any]:
    """Compare family A with family B on outcomes paired by (seed, query).

    ``a[s][q]`` and ``b[s][q]`` are the outcomes (1/0 correct, or any score) of the two families'
    models of seed ``s`` on query ``q``. Returns the mean paired difference ``effect = mean(a - b)``,
    its ``ci`` (crossed bootstrap over seeds and queries), the two-sided ``p`` of the paired
    permutation test, the numbers of seeds and queries, and ``gap``: whether A beats B (p < 1 -
    level and the interval above 0). Seeded, so reports are reproducible.
    """
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)  # [S, Q]
    if x.shape != y.shape or x.ndim != 2 or x.size == 0:
        raise ValueError(
            f"paired outcomes need equal [seeds, queries] shapes, got {x.shape} {y.shape}"
        )
    d = x - y  # [S, Q]
    n_seeds, n_queries = d.shape
    rng = np.random.default_rng(seed)
    seeds = rng.integers(0, n_seeds, size=(n_resamples, n_seeds))  # [R, S]
    queries = rng.integers(0, n_queries, size=(n_resamples, n_queries))  # [R, Q]
    # The mean over a resampled seed x query grid: mean_s mean_q d[seeds[r, s], queries[r, q]].
    # Chunks of resamples bound the [S, chunk, Q] temporary.
    chunk = max(1, 2_000_000 // (n_seeds * n_queries))
    per_seed = np.concatenate(
        [d[:, queries[i : i + chunk]].mean(axis=2).T for i in range(0, n_resamples, chunk)]
    )  # [R, S]: each seed's mean over that resample's queries
    means = np.take_along_axis(per_seed, seeds, axis=1).mean(axis=1)  # [R]
    alpha = (1.0 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    if np.all(d == 0):
        p = 1.0
    else:
        test = scipy_stats.permutation_test(
            (x.ravel(), y.ravel()), lambda u, v: np.mean(u - v), permutation_type="samples",
            n_resamples=n_resamples, alternative="two-sided", rng=np.random.default_rng(seed),
        )  # fmt: skip
        p = float(test.pvalue)
    effect = float(d.mean())
    return {
        "effect": effect,
        "ci": [float(lo), float(hi)],
        "p": p,
        "n_seeds": n_seeds,
        "n_queries": n_queries,
        "gap": bool(p < 1.0 - level and lo > 0),
    }


def decision(test: dict[str, Any], level: float = 0.95) -> str:
    """Two-sided reading of a :func:`paired_comparison`: ``higher`` or ``lower`` (A than B) where
    the permutation p is below 1 - level and the interval excludes 0 on that side, else
    ``undecided``. Both must agree because they answer different questions: the permutation test
    exchanges (seed, query) pairs as if independent, so with large seed-to-seed variation its p is
    small while the crossed-bootstrap interval, which carries that variation, still spans 0."""
    lo, hi = test["ci"]
    if test["p"] >= 1.0 - level:
        return "undecided"
    return "higher" if lo > 0 else "lower" if hi < 0 else "undecided"


def proportion_se(p: float, n: int) -> float:
    """The binomial standard error of a proportion ``p`` of ``n`` queries, ``sqrt(p (1 - p) / n)``
    (what lm_eval prints as ``± stderr`` beside an accuracy); NaN for no queries."""
    return math.sqrt(p * (1.0 - p) / n) if n > 0 else math.nan


def with_se(p: float, n: int) -> str:
    """``p ± se`` to three decimals: a proportion of ``n`` queries with its standard error."""
    return f"{p:.3f} ± {proportion_se(p, n):.3f}"


def format_p(p: float) -> str:
    """A p-value for a table: below 0.001 it is printed as a bound, since a permutation p with
    10,000 resamples cannot go below about 2e-4 and more digits would only show that floor."""
    return "< 0.001" if p < 0.001 else f"{p:.2g}"


def p_clause(p: float) -> str:
    """``p = 0.03`` or ``p < 0.001`` for running text."""
    text = format_p(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def effect_clause(test: dict[str, Any]) -> str:
    """A :func:`paired_comparison` result for running text: ``+0.990 [+0.980, +1.000], p < 0.001``."""
    lo, hi = test["ci"]
    return f"{test['effect']:+.3f} [{lo:+.3f}, {hi:+.3f}], {p_clause(test['p'])}"


COMPARISON_HEADER = ["MDM - ARM", "95% interval (crossed bootstrap)", "p (paired permutation)",
                     "seeds x queries", "gap"]  # fmt: skip
"""Column names of :func:`comparison_cells`."""


def comparison_cells(test: dict[str, Any]) -> list[str]:
    """A :func:`paired_comparison` result as table cells (see :data:`COMPARISON_HEADER`); a test
    that was not run (``n_seeds`` 0: no seed fitted what it needs) says so."""
    if test["n_seeds"] == 0:
        return ["not run: no seed fitted both models", "", "", "0", ""]
    lo, hi = test["ci"]
    return [f"{test['effect']:+.3f}", f"[{lo:+.3f}, {hi:+.3f}]", format_p(test["p"]),
            f"{test['n_seeds']} x {test['n_queries']}", "yes" if test["gap"] else "no"]  # fmt: skip


def fitted(row: dict[str, Any]) -> bool:
    """Whether one run fitted its training data: forward accuracy, mirror accuracy where the
    model has a mirror query (bidirectional models), and the reverse accuracy of the facts
    trained in both directions where there are some (the toy's ``both_fraction``), at least
    :data:`FIT_THRESHOLD`."""
    checks = [row.get("forward_accuracy"), row.get("mirror_accuracy"),
              row.get("reverse_both_accuracy")]  # fmt: skip
    if checks[0] is None:
        return False
    return all(v >= FIT_THRESHOLD for v in checks if v is not None)


def fit_summary(rows: Sequence[dict[str, Any]], over_fitted: Sequence[str] = ()) -> dict[str, Any]:
    """The reversal reading of one cell (its seeds), fit first: how many seeds fitted, the reverse
    accuracy over the fitted seeds only (:func:`aggregate`, absent if none fitted), and a label:
    ``unfitted`` where no seed fitted (an optimisation result, not a reversal one), else
    ``reverses`` / ``fails`` / ``partial`` for a fitted-seed mean of at least 0.9 / at most 0.1
    / between (labels for tables; the numbers stand beside them). Where the runs asked queries in
    a paraphrase the fact was never trained in, ``forward_unseen`` and ``reverse_unseen`` are
    their accuracies over the same fitted seeds. ``reverse_rank`` is the reverse candidate
    (likelihood top-1) accuracy over the fitted seeds, where the rows have it (for multi-token
    answers generation and rank can disagree, so a claim is read from both); each metric named in
    ``over_fitted`` is aggregated over the fitted seeds under ``fitted_metrics``."""
    good = [r for r in rows if fitted(r)]
    out: dict[str, Any] = {"threshold": FIT_THRESHOLD, "n": len(rows), "n_fitted": len(good)}
    if not good:
        return out | {"label": "unfitted"}
    # with the queries in a paraphrase the fact was never trained in (the toy bridge), if any
    agg = aggregate(good, ["reverse_accuracy", "forward_unseen_accuracy",
                           "reverse_unseen_accuracy", "reverse_candidate_accuracy"])  # fmt: skip
    out |= {k.removesuffix("_accuracy"): v for k, v in agg.items() if "unseen" in k}
    if "reverse_candidate_accuracy" in agg:
        out["reverse_rank"] = agg["reverse_candidate_accuracy"]
    extra = {k: v for k, v in aggregate(good, over_fitted).items() if k != "n"}
    if extra:
        out["fitted_metrics"] = extra
    reverse = agg.get("reverse_accuracy")
    if reverse is None:
        return out | {"label": "n/a"}
    mean = reverse["mean"]
    label = "reverses" if mean >= 0.9 else "fails" if mean <= 0.1 else "partial"
    return out | {"reverse": reverse, "label": label}
