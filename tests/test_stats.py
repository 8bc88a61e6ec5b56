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


def test_seed_interval_is_the_percentile_interval_of_resampled_means():
    """The descriptive ci95 of a family mean, against a bootstrap written out draw by draw (seeds
    resampled with replacement, the 2.5% and 97.5% quantiles of the means), and against the
    exact bootstrap law for two seeds: the mean of two draws from {0, 1} is 0, 1/2 or 1 with
    probabilities 1/4, 1/2, 1/4, so the interval is [0, 1]."""
    from revcurse.stats import bootstrap_ci

    values = [0.1, 0.5, 0.9, 0.95, 0.2]
    draw = np.random.default_rng(99)
    means = [np.mean(draw.choice(values, size=5, replace=True)) for _ in range(40_000)]
    lo, hi = bootstrap_ci(values)
    assert lo == pytest.approx(np.quantile(means, 0.025), abs=0.02)
    assert hi == pytest.approx(np.quantile(means, 0.975), abs=0.02)
    assert bootstrap_ci([0.0, 1.0]) == (0.0, 1.0)
    assert bootstrap_ci([0.3]) == (0.3, 0.3)


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


@pytest.mark.parametrize(
    ("seed_sd", "query_sd"),
    [(0.35, 0.2), (0.0, 1.0), (0.02, 1.0), (0.3, 3.0)],
    ids=["seeds-dominate", "queries-only", "queries-dominate", "balanced"],
)
def test_interval_carries_the_seed_and_the_query_variation(seed_sd, query_sd):
    # Additive seed and query effects: a crossed bootstrap's mean is mean(alpha*) + mean(beta*), so
    # its variance is var(alpha)/S + var(beta)/Q (population variances), the exact reference here.
    # A bootstrap over queries alone misses the first term (it dominates in "seeds-dominate"), one
    # over seeds alone misses the second (the interval collapses where queries vary more than
    # seeds); either fails one of these cases by far more than the tolerance.
    rng = np.random.default_rng(0)
    alpha = rng.normal(0, 1, size=5)  # [S] seed effects
    alpha = seed_sd * (alpha - alpha.mean()) / max(alpha.std(), 1e-12)
    beta = rng.normal(0, 1, size=200)  # [Q] query effects
    beta = query_sd * (beta - beta.mean()) / beta.std()
    d = 0.1 + alpha[:, None] + beta[None, :]
    got = paired_comparison(d, np.zeros_like(d), n_resamples=20_000)
    sd = np.sqrt(alpha.var() / alpha.size + beta.var() / beta.size)
    width = got["ci"][1] - got["ci"][0]
    assert width == pytest.approx(2 * 1.96 * sd, rel=0.1)
    assert got["ci"][0] < 0.1 < got["ci"][1]
    assert got["effect"] == pytest.approx(0.1)


def test_the_interval_is_the_percentile_interval_of_a_hand_written_crossed_bootstrap():
    """The crossed bootstrap written as the definition reads, resample by resample (seeds and
    queries drawn independently, with replacement, then the grid's mean), against the vectorised
    one: the same quantiles of the same resampling law, within Monte-Carlo error."""
    rng = np.random.default_rng(7)
    d = rng.normal(0, 1, size=(4, 30)) + rng.normal(0, 0.5, size=(4, 1))  # [S, Q]
    draw = np.random.default_rng(123)
    means = []
    for _ in range(20_000):
        s = draw.integers(0, 4, size=4)
        q = draw.integers(0, 30, size=30)
        means.append(d[np.ix_(s, q)].mean())
    lo, hi = np.quantile(means, [0.025, 0.975])
    got = paired_comparison(d, np.zeros_like(d), n_resamples=20_000)
    assert got["ci"][0] == pytest.approx(lo, abs=0.03)
    assert got["ci"][1] == pytest.approx(hi, abs=0.03)


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
    assert decision({"p": 0.07, "ci": [0.1, 0.5]}) == "undecided"  # the 0.05 level, not 0.1
    assert decision({"p": 0.049, "ci": [0.1, 0.5]}) == "higher"
    # A clustered case: large per-seed effects of opposite sign. The pairs look different to the
    # permutation test, but the crossed bootstrap over seeds spans 0.
    from revcurse.stats import paired_comparison

    a = [[1] * 50 + [0] * 50, [1] * 100, [0] * 100, [1] * 100, [0] * 100]
    b = [[0] * 100, [0] * 100, [1] * 100, [0] * 100, [0] * 100]
    test = paired_comparison(a, b)
    assert test["p"] < 0.05 and test["ci"][0] < 0 < test["ci"][1]
    assert decision(test) == "undecided"
    assert not test["gap"]  # the published "(gap)" flag reads the interval too


def test_gap_flag_is_the_decision_higher():
    """``gap`` (printed as "(gap)" and "yes" in published tables) is exactly ``decision ==
    'higher'``: across clear gaps, clear losses, seed-dependent effects and no difference."""
    from revcurse.stats import decision

    rng = np.random.default_rng(2)
    cases = [
        ((rng.random((5, 100)) < 0.8), (rng.random((5, 100)) < 0.2)),  # A higher
        ((rng.random((5, 100)) < 0.2), (rng.random((5, 100)) < 0.8)),  # A lower
        ([[1] * 50 + [0] * 50, [1] * 100, [0] * 100, [1] * 100, [0] * 100],
         [[0] * 100, [0] * 100, [1] * 100, [0] * 100, [0] * 100]),  # p small, interval spans 0
        ((rng.random((5, 100)) < 0.5), (rng.random((5, 100)) < 0.5)),  # no difference
    ]  # fmt: skip
    got = [paired_comparison(np.asarray(a, float), np.asarray(b, float)) for a, b in cases]
    assert [decision(t) for t in got] == ["higher", "lower", "undecided", "undecided"]
    assert [t["gap"] for t in got] == [True, False, False, False]
    assert got[1]["effect"] < -0.5 and got[1]["ci"][1] < 0


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


@pytest.mark.parametrize(
    ("reverse", "label"),
    [(0.95, "reverses"), (0.9, "reverses"), (0.89, "partial"), (0.5, "partial"),
     (0.11, "partial"), (0.1, "fails"), (0.0, "fails")],
)  # fmt: skip
def test_fit_labels_at_their_boundaries(reverse, label):
    """The published cell labels: a fitted-seed mean reverse accuracy of at least 0.9 reverses, at
    most 0.1 fails, anything between is partial (the boundaries themselves included as stated)."""
    from revcurse.stats import fit_summary

    rows = [{"forward_accuracy": 1.0, "mirror_accuracy": 1.0, "reverse_accuracy": reverse}] * 2
    assert fit_summary(rows)["label"] == label


def test_fit_summary_reads_the_rank_and_answer_sources_over_fitted_seeds():
    """Beside generation, the reverse likelihood-rank accuracy (``reverse_rank``) and any metric
    asked (the multi-token answer sources) are averaged over the fitted seeds only."""
    from revcurse.stats import fit_summary

    rows = [
        {"forward_accuracy": 1.0, "mirror_accuracy": 1.0, "reverse_accuracy": 0.1,
         "reverse_candidate_accuracy": 0.6, "reverse_wrong_mixture": 0.5},
        {"forward_accuracy": 1.0, "mirror_accuracy": 1.0, "reverse_accuracy": 0.3,
         "reverse_candidate_accuracy": 0.8, "reverse_wrong_mixture": 0.3},
        {"forward_accuracy": 0.2, "mirror_accuracy": 1.0, "reverse_accuracy": 0.0,
         "reverse_candidate_accuracy": 0.0, "reverse_wrong_mixture": 1.0},  # not fitted
    ]  # fmt: skip
    out = fit_summary(rows, ["reverse_wrong_mixture"])
    assert out["reverse_rank"]["values"] == [0.6, 0.8]
    assert out["reverse_rank"]["mean"] == pytest.approx(0.7)
    assert out["fitted_metrics"]["reverse_wrong_mixture"]["mean"] == pytest.approx(0.4)
    assert "fitted_metrics" not in fit_summary(rows)


def test_a_run_fitted_only_if_it_fitted_the_inverse_statements_it_was_trained_on():
    """With facts trained in both directions, their reverse is training data: a run that has not
    fitted it has not fitted its data, whatever its forward and mirror accuracies."""
    from revcurse.stats import fitted

    row = {"forward_accuracy": 1.0, "mirror_accuracy": 1.0}
    assert fitted(row) and fitted(row | {"reverse_both_accuracy": 0.99})
    assert not fitted(row | {"reverse_both_accuracy": 0.5})
    assert fitted({"forward_accuracy": 1.0, "mirror_accuracy": None, "reverse_both_accuracy": 1.0})


def test_a_proportions_standard_error_is_the_binomial_one():
    from revcurse.stats import proportion_se, with_se

    assert proportion_se(0.25, 12) == pytest.approx(0.125)  # sqrt(0.25 * 0.75 / 12)
    assert proportion_se(1.0, 5) == 0.0
    assert with_se(0.25, 12) == "0.250 ± 0.125"
