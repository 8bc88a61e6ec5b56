"""Seed aggregates and the paired MDM-vs-ARM comparison, against exact references."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from revcurse.stats import aggregate, paired_comparison


def test_aggregate_mean_and_sample_std():
    agg = aggregate([{"reverse_accuracy": v} for v in (0.2, 0.4, 0.9)], ["reverse_accuracy"])
    m = agg["reverse_accuracy"]
    assert m["mean"] == pytest.approx(0.5)
    assert m["std"] == pytest.approx(np.sqrt(((0.3**2) + (0.1**2) + (0.4**2)) / 2))
    assert m["ci95"][0] <= m["mean"] <= m["ci95"][1]


def test_permutation_p_value_matches_the_exact_enumeration_of_swaps():
    a = np.array([[1, 1, 0], [1, 0, 1.0]])
    b = np.array([[0, 0, 0], [1, 0, 0.0]])
    observed = (a - b).mean()
    d = (a - b).ravel()
    # Exact two-sided p: every one of the 2^6 swaps of the paired outcomes, equally likely.
    flips = np.array(list(itertools.product([1, -1], repeat=d.size)))
    null = (flips * d).mean(axis=1)
    exact = np.mean(np.abs(null) >= abs(observed) - 1e-12)
    got = paired_comparison(a, b)
    assert got["effect"] == pytest.approx(observed)
    assert got["p"] == pytest.approx(exact)
    assert got["p"] > 0.05 and not got["gap"]  # 3 wins of 6 pairs are no evidence


def test_interval_carries_the_seed_to_seed_variation():
    # Additive seed and query effects: a crossed bootstrap's mean is mean(alpha*) + mean(beta*), so
    # its variance is var(alpha)/S + var(beta)/Q (population variances). A bootstrap over queries
    # alone would miss the first term, which dominates here.
    rng = np.random.default_rng(0)
    alpha = np.array([0.5, -0.3, 0.2, 0.4, -0.1])  # [S] seed effects
    beta = rng.normal(0, 0.2, size=200)  # [Q]
    d = 0.1 + alpha[:, None] + beta[None, :]
    got = paired_comparison(d, np.zeros_like(d), n_resamples=20_000)
    sd = np.sqrt(alpha.var() / alpha.size + beta.var() / beta.size)
    width = got["ci"][1] - got["ci"][0]
    assert width == pytest.approx(2 * 1.96 * sd, rel=0.15)
    assert got["ci"][0] < 0.1 + alpha.mean() + beta.mean() < got["ci"][1]


def test_a_clear_gap_is_detected_and_equal_outcomes_are_not():
    rng = np.random.default_rng(1)
    a = (rng.random((5, 100)) < 0.7).astype(float)
    b = (rng.random((5, 100)) < 0.3).astype(float)
    gap = paired_comparison(a, b)
    assert gap["gap"] and gap["p"] < 1e-3 and gap["ci"][0] > 0.25
    same = paired_comparison(a, a)
    assert not same["gap"] and same["p"] == 1.0 and same["effect"] == 0.0
    with pytest.raises(ValueError, match="equal"):
        paired_comparison(a, b[:, :50])


def test_fit_summary_reads_reverse_only_over_fitted_seeds():
    from revcurse.stats import fit_summary, fitted

    mdm = [
        {"forward_accuracy": 1.0, "mirror_accuracy": 1.0, "reverse_accuracy": 0.0},
        {"forward_accuracy": 1.0, "mirror_accuracy": 0.98, "reverse_accuracy": 1.0},  # no mirror
        {"forward_accuracy": 0.99, "mirror_accuracy": 0.99, "reverse_accuracy": 0.2},
    ]
    assert [fitted(r) for r in mdm] == [True, False, True]
    out = fit_summary(mdm)
    assert (out["n"], out["n_fitted"]) == (3, 2)
    assert out["reverse"]["values"] == [0.0, 0.2] and out["label"] == "fails"
    assert fit_summary(mdm[1:2]) == {"threshold": 0.99, "n": 1, "n_fitted": 0, "label": "unfitted"}
    # A causal model has no mirror query: forward alone decides.
    arm = [{"forward_accuracy": 1.0, "mirror_accuracy": None, "reverse_accuracy": 0.95}]
    assert fit_summary(arm)["label"] == "reverses"
    assert fit_summary([mdm[0], {**mdm[0], "reverse_accuracy": 0.9}])["label"] == "partial"


def test_decision_needs_the_permutation_p_and_the_interval_to_agree():
    from revcurse.stats import decision

    assert decision({"p": 0.001, "ci": [0.1, 0.5]}) == "higher"
    assert decision({"p": 0.001, "ci": [-0.5, -0.1]}) == "lower"
    assert decision({"p": 0.001, "ci": [-0.2, 0.7]}) == "undecided"  # seed-dependent effect
    assert decision({"p": 0.2, "ci": [0.1, 0.5]}) == "undecided"
    # A clustered case: large per-seed effects of opposite sign. The pairs look different to the
    # permutation test, but the crossed bootstrap over seeds spans 0.
    from revcurse.stats import paired_comparison

    a = [[1] * 50 + [0] * 50, [1] * 100, [0] * 100, [1] * 100, [0] * 100]
    b = [[0] * 100, [0] * 100, [1] * 100, [0] * 100, [0] * 100]
    test = paired_comparison(a, b)
    assert test["p"] < 0.05 and test["ci"][0] < 0 < test["ci"][1]
    assert decision(test) == "undecided"


def test_fit_summary_reads_unseen_paraphrases_over_the_same_fitted_seeds():
    from revcurse.stats import fit_summary

    rows = [
        {"forward_accuracy": 1.0, "mirror_accuracy": 1.0, "reverse_accuracy": 1.0,
         "forward_unseen_accuracy": 0.5, "reverse_unseen_accuracy": 0.25},
        {"forward_accuracy": 0.5, "mirror_accuracy": 1.0, "reverse_accuracy": 0.0,
         "forward_unseen_accuracy": 0.0, "reverse_unseen_accuracy": 0.0},  # not fitted
    ]  # fmt: skip
    out = fit_summary(rows)
    assert out["forward_unseen"]["values"] == [0.5]
    assert out["reverse_unseen"]["values"] == [0.25]
    assert "reverse_unseen" not in fit_summary([{k: v for k, v in rows[0].items()
                                                 if "unseen" not in k}])  # fmt: skip
