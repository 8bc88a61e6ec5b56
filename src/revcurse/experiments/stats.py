"""Aggregates over seeds: mean, sample standard deviation and a 95% percentile-bootstrap interval."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

METRICS = (
    "forward_accuracy",
    "reverse_accuracy",
    "forward_candidate_accuracy",
    "reverse_candidate_accuracy",
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
