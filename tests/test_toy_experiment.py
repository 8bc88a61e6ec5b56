"""The toy experiment's published comparison: MDM - ARM, paired by (seed, fact), from the models'
saved per-query correctness, against a hand count."""

from __future__ import annotations

import pytest

from revcurse import files
from revcurse.config import ToyExperimentConfig
from revcurse.experiments.toy import compare_families
from revcurse.files import model_dir


def test_comparison_is_mdm_minus_arm_over_the_saved_per_query_outcomes(tmp_path):
    """Two seeds x four facts, written as each model's predictions.json. The MDM answers 7 of the
    8 reverse queries and the ARM 1 (on seed 1, fact 3, where the MDM fails): the paired
    difference is (7 - 1) / 8 = +0.75 for the MDM, and forward ties at 0. A test reading ARM - MDM,
    one seed's outcomes twice, or the forward column fails here."""
    cfg = ToyExperimentConfig(seeds=[0, 1])
    outcomes = {
        ("mdm", 0): {"forward": [True] * 4, "reverse": [True, True, True, True]},
        ("mdm", 1): {"forward": [True] * 4, "reverse": [True, True, True, False]},
        ("arm", 0): {"forward": [True] * 4, "reverse": [False, False, False, False]},
        ("arm", 1): {"forward": [True] * 4, "reverse": [False, False, False, True]},
    }
    for (family, seed), correct in outcomes.items():
        files.write_json(model_dir(tmp_path, family, seed) / "predictions.json",
                         {"correct": correct})  # fmt: skip
    got = compare_families(tmp_path, cfg)
    reverse, forward = got["reverse_accuracy"], got["forward_accuracy"]
    assert reverse["effect"] == pytest.approx(0.75)
    assert (reverse["n_seeds"], reverse["n_queries"]) == (2, 4)
    assert reverse["ci"][0] <= 0.75 <= reverse["ci"][1] and reverse["ci"][1] <= 1.0
    assert forward["effect"] == 0.0 and forward["p"] == 1.0 and not forward["gap"]
    # Only one family trained: there is nothing to compare.
    assert compare_families(tmp_path, ToyExperimentConfig(families=["mdm"], seeds=[0, 1])) == {}
