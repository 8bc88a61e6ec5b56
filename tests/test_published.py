"""Every number in README and docs comes from a results file: the marked blocks agree with
docs/results/, and the check notices when they do not."""

from __future__ import annotations

import json

from revcurse.report import published


def test_readme_and_docs_agree_with_their_results_files():
    assert published.check() == []


def test_every_results_folder_records_the_command_that_wrote_it():
    for folder in published.RESULTS.iterdir():
        assert (folder / "summary.json").is_file(), folder
        assert (folder / "command.txt").read_text().strip().startswith("revcurse "), folder


def _toy_summary(reverse_mean: float) -> dict:
    agg = {"mean": reverse_mean, "std": 0.01, "ci95": [0, 1], "values": []}
    fam = {"n": 5, "forward_accuracy": agg | {"mean": 1.0}, "reverse_accuracy": agg}
    test = {
        "effect": 0.9,
        "ci": [0.8, 1.0],
        "p": 0.0002,
        "n_seeds": 5,
        "n_queries": 100,
        "gap": True,
    }
    return {"aggregate": {"mdm": fam, "arm": fam}, "chance": {"reverse": 0.01},
            "comparison": {"reverse_accuracy": test}, "rows": []}  # fmt: skip


def test_a_changed_result_makes_the_check_fail_and_write_mends_it(tmp_path):
    results = tmp_path / "docs" / "results" / "toy"
    results.mkdir(parents=True)
    (results / "command.txt").write_text("revcurse reproduce toy --out runs/toy\n")
    (results / "summary.json").write_text(json.dumps(_toy_summary(0.987)))
    readme = tmp_path / "README.md"
    readme.write_text("Intro.\n\n<!-- results: toy accuracy -->\nold\n<!-- /results -->\n\nEnd.\n")
    assert published.check(tmp_path) == ["README.md:3: block 'toy accuracy' differs from its "
                                         "results file"]  # fmt: skip
    published.write(tmp_path)
    text = readme.read_text()
    assert "0.987 ± 0.010" in text and "revcurse reproduce toy --out runs/toy" in text
    assert text.startswith("Intro.") and text.endswith("End.\n")
    assert published.check(tmp_path) == []
    # A rerun that changes the number: the text is now stale until rewritten.
    (results / "summary.json").write_text(json.dumps(_toy_summary(0.912)))
    assert len(published.check(tmp_path)) == 1
