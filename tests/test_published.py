"""Every number in README and docs comes from a results file: the marked blocks agree with
docs/results/, and the check notices when they do not."""

from __future__ import annotations

import json
import shutil

import pytest

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


# --------------------------------------------------------------------------------------------------
# Inline values and numbers in prose
# --------------------------------------------------------------------------------------------------


def _folder_with_toy(tmp_path, reverse_mean: float):
    results = tmp_path / "docs" / "results" / "toy"
    results.mkdir(parents=True, exist_ok=True)
    (results / "command.txt").write_text("revcurse reproduce toy --out runs/toy\n")
    (results / "summary.json").write_text(json.dumps(_toy_summary(reverse_mean)))


def test_an_inline_value_is_checked_and_rewritten_like_a_block(tmp_path):
    _folder_with_toy(tmp_path, 0.987)
    readme = tmp_path / "README.md"
    marker = "<!-- value: toy aggregate/mdm/reverse_accuracy/mean .2f -->"
    readme.write_text(f"The MDM reverses at {marker}0.50<!-- /value --> here.\n")
    assert published.check(tmp_path) == [
        "README.md:1: value 'toy aggregate/mdm/reverse_accuracy/mean' reads '0.50', its results "
        "file gives '0.99'"
    ]
    published.write(tmp_path)
    assert readme.read_text() == f"The MDM reverses at {marker}0.99<!-- /value --> here.\n"
    assert published.check(tmp_path) == []
    readme.write_text("At <!-- value: toy aggregate/mdm/nope/mean .2f -->1<!-- /value -->.\n")
    (problem,) = published.check(tmp_path)
    assert problem.startswith("README.md:1: value 'toy aggregate/mdm/nope/mean' cannot be read")


def test_a_measured_number_left_in_prose_fails_the_check(tmp_path):
    _folder_with_toy(tmp_path, 0.987)
    readme = tmp_path / "README.md"
    readme.write_text(
        "Trained 3000 steps on 100 facts, 5 seeds (design integers pass).\n"
        "Code is not prose: `lr=1e-3`, `top_p=0.9`.\n"
        "```bash\nrevcurse reproduce toy --set train.lr=0.001\n```\n"
        "Tested as in arXiv 2602.02133, at p < 0.05.\n"
        "The MDM reverses at 0.99, a gap of +0.5 [0.4, 0.6], 12% more, 2x faster.\n"
    )
    found = published.check(tmp_path)
    assert [line.split("'")[1] for line in found] == ["0.99", "+0.5", "0.4", "0.6", "12%", "2x"]
    assert all(line.startswith("README.md:7: number ") for line in found)


def test_every_design_number_exemption_is_still_used():
    unused = [p for p, used in published.design_patterns_in_use().items() if not used]
    assert unused == []


def test_the_estimates_table_is_what_its_script_prints():
    import subprocess
    import sys

    text = (published.ROOT / "docs" / "finetune.md").read_text()
    blocks = list(published.ESTIMATES.finditer(text))
    assert len(blocks) == 1
    command = blocks[0]["command"].split()
    assert command[:2] == ["python", "scripts/finetune_recipes.py"]
    out = subprocess.run([sys.executable, *command[1:]], capture_output=True, text=True,
                         cwd=published.ROOT, check=True).stdout  # fmt: skip
    assert blocks[0]["body"] == out


def test_resolve_paths_filters_globs_positions_and_reducers():
    s = {
        "rows": [{"family": "mdm", "seed": 0, "acc": 0.2, "slices": ["a"]},
                 {"family": "mdm", "seed": 1, "acc": 0.6, "slices": ["a", "b"]},
                 {"family": "arm", "seed": 0, "acc": -0.1, "slices": ["b"]}],
        "tests": {"x.top1": {"effect": 0.3}, "y.top1": {"effect": -0.5}, "x.prefix": {"e": 1}},
        "curve": [0.9, 0.1, 0.3],
    }  # fmt: skip
    r = published.resolve
    assert r(s, "rows[family=mdm,seed=1]/acc") == 0.6
    assert r(s, "rows[family=mdm]/acc@mean") == pytest.approx(0.4)
    assert r(s, "rows[slices~b]/acc@min") == -0.1
    assert r(s, "rows[slices~b]/acc@count") == 2
    assert r(s, "tests/*.top1/effect@absmax") == 0.5
    assert r(s, "tests/*.top1/effect@absmin") == 0.3
    assert r(s, "curve[1:]@max") == 0.3 and r(s, "curve[-1]") == 0.3
    for bad, message in [("rows[family=mdm]/acc", "2 values and no @reducer"),
                         ("rows[family=gpt]/acc", "nothing matches"),
                         ("tests/z.top1/effect", "no key 'z.top1'"),
                         ("curve[1:]@median", "unknown reducer")]:  # fmt: skip
        with pytest.raises(KeyError, match=message.replace("[", r"\[")):
            r(s, bad)
    assert published.format_value(-0.796, "+.3fu") == "−0.796"
    assert published.format_value(0.0002, "p") == "< 0.001"


# --------------------------------------------------------------------------------------------------
# The published summaries agree with themselves
# --------------------------------------------------------------------------------------------------


def _summary(name: str) -> dict:
    return json.loads((published.RESULTS / name / "summary.json").read_text())


@pytest.mark.parametrize("name", ["toy", "toy-deep"])
def test_toy_comparison_is_the_difference_of_the_family_means(name):
    """Every seed asks the same facts, so the paired effect (MDM - ARM over seed x fact) equals
    the difference of the two families' mean accuracies: a sign flip, a copied column or a test
    over other seeds breaks the identity."""
    s = _summary(name)
    for direction in ("forward", "reverse"):
        test = s["comparison"][f"{direction}_accuracy"]
        mdm = s["aggregate"]["mdm"][f"{direction}_accuracy"]["mean"]
        arm = s["aggregate"]["arm"][f"{direction}_accuracy"]["mean"]
        assert test["effect"] == pytest.approx(mdm - arm, abs=1e-12)
        assert test["n_seeds"] == s["aggregate"]["mdm"]["n"] == s["aggregate"]["arm"]["n"]
        assert test["ci"][0] <= test["effect"] <= test["ci"][1]
        assert test["gap"] == (test["p"] < 0.05 and test["ci"][0] > 0)


@pytest.mark.parametrize("name", ["distance", "distance-fillers", "bridge"])
def test_sweep_contrasts_are_value_minus_baseline_over_their_seeds(name):
    """Each slice contrast's effect is the value cell's mean reverse accuracy minus the baseline
    cell's, over the seeds the test names (read from the runs' rows), and its decision and fit
    labels follow from its numbers."""
    from revcurse.stats import decision, fit_summary

    s = _summary(name)
    rows = [r for r in s["rows"] if r.get("status") == "done"]
    assert s["contrasts"], name
    for c in s["contrasts"]:
        key = c["key"]

        def cell_rows(value, c=c, key=key):
            return {r["seed"]: r for r in rows if c["slice"] in r.get("slices", [])
                    and r.get(key) == value and all(r.get(k) == v for k, v in c["cell"].items())}  # fmt: skip

        a, b = cell_rows(c["value"]), cell_rows(c["baseline"])
        assert set(c["seeds"]) <= set(a) & set(b), (c["slice"], c["value"])
        diff = [a[s_]["reverse_accuracy"] - b[s_]["reverse_accuracy"] for s_ in c["seeds"]]
        assert c["test"]["effect"] == pytest.approx(sum(diff) / len(diff), abs=1e-9)
        assert c["decision"] == decision(c["test"])
        assert c["fit"]["value"] == fit_summary([a[s_] for s_ in c["seeds"]])["label"]
        assert c["fit"]["baseline"] == fit_summary([b[s_] for s_ in c["seeds"]])["label"]


@pytest.mark.parametrize(
    "name", ["person-description", "parent-child", "parent-child-grid", "person-description-grid"]
)
def test_scratch_tests_are_differences_over_the_seeds_both_models_fitted(name):
    """Every paired test of a from-scratch experiment runs over exactly the seeds both compared
    models fitted the split's group on (summary['fit']), and its effect is the difference of the
    two models' per-seed split metrics (summary rows) averaged over those seeds."""
    from revcurse.data.tasks import TASKS

    s = _summary(name)
    fitted = s["fit"]["fitted_seeds"]
    task = TASKS[s["experiment"]]
    group_of = {forward: g for g, (forward, _) in task.fit.items()} | dict(task.compared)
    tests = [("mdm", "arm", k, t) for k, t in s["comparison"].items()]
    tests += [(v, "mdm", k, t) for v, per in (s.get("variant_comparison") or {}).items()
              for k, t in per.items()]  # fmt: skip
    tests += [(v, "arm", k, t) for v, per in (s.get("variant_arm_comparison") or {}).items()
              for k, t in per.items()]  # fmt: skip
    row = {(r["family"], r["seed"]): r for r in s["rows"]}
    checked = 0
    for a, b, key, t in tests:
        split, metric = key.split(".")
        group = group_of[split]
        both = sorted(set(fitted[a][group]) & set(fitted[b][group]))
        assert t.get("seeds", []) == both, (a, b, key)
        if not both:
            continue
        diff = [row[a, s_][key] - row[b, s_][key] for s_ in both]
        assert t["effect"] == pytest.approx(sum(diff) / len(diff), abs=1e-9), (a, b, key)
        checked += 1
    assert checked >= 3


@pytest.mark.parametrize(
    ("published", "min_effects"),
    # Person–Description's whole-entity MDM fits no seed beside the MDM by any reading, so its
    # tests hold no effect; their seeds (none) are still checked
    [("parent-child-grid-decoding", 8), ("person-description-grid-decoding", 0)],
)
def test_text_readings_are_differences_over_the_seeds_each_reading_fitted(published, min_effects):
    """The published text decoding control: every model's fitted seeds per reading are those whose
    forward split (and mirror, for a model trained on it) reach the threshold read that way, and
    every variant - MDM test runs over the seeds both fitted, its effect the mean over them of the
    per-seed difference (from the per-seed values the summary keeps)."""
    from revcurse.data.tasks import TASKS

    s = _summary(published)
    task = TASKS[s["task"]]
    checked = fits = 0
    for reading, spec in s["readings"].items():
        metric = spec["metric"]

        def per_seed(name, split, reading=reading, metric=metric):
            r = s["models"][name][reading]
            agg = r["all_seeds"].get(f"{split}.{metric}")
            return dict(zip(r["seeds"], agg["values"], strict=True)) if agg else {}

        for name, readings in s["models"].items():
            for group, (forward, mirror) in task.fit.items():
                needed = [forward] + ([mirror] if per_seed(name, mirror) else [])
                fitted = [seed for seed in readings[reading]["seeds"]
                          if all(per_seed(name, x)[seed] >= s["threshold"] for x in needed)]  # fmt: skip
                assert readings[reading]["fitted_seeds"][group] == fitted, (name, reading)
                fits += 1
        for name, tests in s["tests"][reading].items():
            for key, t in tests.items():
                split = key.split(".")[0]
                group = (
                    next(g for g, (f, _) in task.fit.items() if f == split)
                    if split in {f for f, _ in task.fit.values()}
                    else dict(task.compared)[split]
                )
                both = sorted(set(s["models"]["mdm"][reading]["fitted_seeds"][group])
                              & set(s["models"][name][reading]["fitted_seeds"][group]))  # fmt: skip
                assert t["seeds"] == both, (name, reading, key)
                if both:
                    a, b = per_seed(name, split), per_seed("mdm", split)
                    diff = [a[seed] - b[seed] for seed in both]
                    assert t["effect"] == pytest.approx(sum(diff) / len(diff), abs=1e-9)
                    checked += 1
    assert fits == len(s["readings"]) * len(s["models"]) * len(task.fit)
    assert checked >= min_effects


def test_the_matched_pair_reads_its_reverse_over_the_seeds_both_fitted():
    """The published matched pair: each family's fitted seeds per reading are those whose forward
    split after fine-tuning reaches the threshold read that way; each A2D - ARM test on the
    reverse split runs over the seeds both fitted (or every seed, marked all), its effect the
    mean over them of the per-seed difference of the rows' accuracies (one query set per seed, so
    the mean of the paired differences is that)."""
    s = _summary("matched-pair")
    arm, a2d = s["families"]
    fit = s["fit"]
    checked = 0
    for reading, metric in fit["readings"].items():
        rows = {(r["family"], r["seed"]): r for r in s["rows"]}
        for family in s["families"]:
            fitted = [seed for seed in s["seeds"] if all(
                rows[family, seed][f"after.{split}.{metric}"] >= fit["threshold"]
                for split in fit["splits"])]  # fmt: skip
            assert fit["fitted_seeds"][reading][family] == fitted, (family, reading)
        for split, direction in s["directions"].items():
            if direction != "reverse":
                continue
            for over, seeds in (("fitted", sorted(set(fit["fitted_seeds"][reading][a2d])
                                                  & set(fit["fitted_seeds"][reading][arm]))),
                                ("all", s["seeds"])):  # fmt: skip
                # every query, and those no shared word gives away (the rows' uncued rates)
                for comparison, suffix in (("comparison", ""), ("comparison_uncued", "_uncued")):
                    t = s[comparison][f"{split}.{reading}.{over}"]
                    assert t["seeds"] == seeds, (reading, over)
                    key = f"after.{split}.{metric}{suffix}"
                    if seeds and key in rows[arm, seeds[0]]:  # no per-row rate of generation apart
                        diff = [rows[a2d, seed][key] - rows[arm, seed][key] for seed in seeds]
                        assert t["effect"] == pytest.approx(sum(diff) / len(diff), abs=1e-9)
                        checked += 1
    assert checked >= 3


def test_the_matched_pair_views_put_each_number_in_its_column():
    """The rendered matched-pair tables read back cell by cell against the summary: a swapped
    before/after, cued/uncued or rank/chain column would render consistently in the page and its
    check, so it is caught here."""
    s = _summary("matched-pair")

    def cells(text):
        lines = [line for line in text.splitlines() if line.startswith("| `")]
        return {(c[1].strip("` "), c[2].strip()): [x.strip() for x in c[3:-1]]
                for c in (line.split("|") for line in lines)}  # fmt: skip

    def mean(family, key):
        return f"{s['aggregate'][family][key]['mean']:.2f}"

    table = cells(published.matched_pair_table(s))
    cue = cells(published.matched_pair_cue(s))
    for family in s["families"]:
        for split, direction in s["directions"].items():
            expected = [f"{mean(family, f'{stage}.{split}.{m}')} ± "
                        f"{s['aggregate'][family][f'{stage}.{split}.{m}']['std']:.2f}"
                        for m in ("prefix", "likelihood_top1", "chain_top1")
                        for stage in ("before", "after")]  # fmt: skip
            assert table[family, direction] == expected
            assert cue[family, direction] == [
                f"{mean(family, f'before.{split}.{m}_{kind}')} → "
                f"{mean(family, f'after.{split}.{m}_{kind}')}"
                for m in ("likelihood_top1", "chain_top1") for kind in ("cued", "uncued")
            ]  # fmt: skip


# --------------------------------------------------------------------------------------------------
# docs/verification.md: every published quantity names a test that exists
# --------------------------------------------------------------------------------------------------

VERIFICATION = published.ROOT / "docs" / "verification.md"
NOT_MEASURED = {
    # design labels and config values carried in rows and cells
    "batch_size", "causal", "d_model", "entity_pool", "entity_tokens", "filler_shared",
    "filler_vocab", "lr",
    "mlp", "n_filler", "n_heads", "n_layers", "n_pairs", "n_params", "n_templates", "rope_base",
    "templates_per_fact", "steps", "compile", "seed", "slices", "keys", "value", "baseline",
    "runs", "draws", "scorers", "readings", "weight_decay", "first_step", "final_step", "chat_template",
    "vocab_size", "n_facts_forward", "n_facts_mirror", "threshold",
    # names: model families and variants, statement groups and directions keyed in the fit table
    "arm", "mdm", "mdm-answer", "mdm-learned", "mdm-none", "mdm-sinusoidal", "p2d", "d2p", "c2p",
    "mdm-entity", "masked-ar", "mdm-causal-attention", "prefix-lm-full", "llama", "llama-a2d",
    "families", "splits",
    "forward", "mirror", "reverse", "layer0", "layer1",
}  # fmt: skip
PLACEHOLDERS = {
    "<direction>": r"(?:forward|mirror|reverse)(?:_unseen)?", "<pairing>": r"(?:forward|mirror)",
    "<pair>": r"(?:fwd_rev|mirror_rev|train_rev)", "<part>": r"(?:storage|routing|other)",
    "<third>": r"(?:near|middle|far)", "<n>": r"\d+",
}  # fmt: skip


def _leaf_names() -> set[str]:
    """The names of every numeric field of every published summary, as the table names them:
    split and stage prefixes dropped (``p2d_reverse.likelihood_top1`` -> ``likelihood_top1``),
    probe labels without ``probe.`` and their ``_first``/``_final``/``_mean`` suffix."""
    import re

    names: set[str] = set()

    def walk(node, key=None):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, k)
        elif isinstance(node, list) and node and isinstance(node[0], dict | list):
            for v in node:
                walk(v, key)
        elif key is not None and not isinstance(node, str) and node is not None:
            k = re.sub(r"_(first|final|mean)$", "", key.removeprefix("probe."))
            names.add(k.split(".")[-1])

    for path in published.RESULTS.glob("*/summary.json"):
        walk(json.loads(path.read_text()))
    return names


def test_a_marker_that_does_not_parse_fails_the_check(tmp_path):
    """A value marker with a stray word (here the name twice) matches no marker pattern; it was
    skipped, so its number was never compared with its results file. Now it is reported."""
    shutil.copytree(published.RESULTS / "toy", tmp_path / "docs" / "results" / "toy")
    readme = tmp_path / "README.md"
    readme.write_text("MDM reverse <!-- value: toy toy aggregate/mdm/reverse_accuracy/mean .2f "
                      "-->0.99<!-- /value -->.\n")  # fmt: skip
    problems = published.check(tmp_path)
    assert problems[0].startswith("README.md:1: a value or results marker that does not parse")
    assert "number '0.99' outside a results block or value" in problems[1]


def test_every_published_field_names_the_test_that_guards_it():
    import re

    text = VERIFICATION.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| `") or line.startswith("| ")]
    first_cells = " ".join(row.split("|")[1] for row in rows if row.count("|") >= 4)
    named = set(re.findall(r"`([^`]+)`", first_cells))
    patterns = []
    for name in named:
        pattern = re.escape(name)
        for placeholder, regex in PLACEHOLDERS.items():
            pattern = pattern.replace(re.escape(placeholder), regex)
        patterns.append(re.compile(pattern + r"(?:_layer\d+)?"))
    unnamed = sorted(n for n in _leaf_names() - NOT_MEASURED
                     if not any(p.fullmatch(n) for p in patterns))  # fmt: skip
    assert unnamed == []


def test_every_test_the_verification_page_names_exists():
    import ast
    import re

    named = set(re.findall(r"`(tests/test_\w+\.py)::(test_\w+)`", VERIFICATION.read_text()))
    assert len(named) > 40
    defined: dict[str, set[str]] = {}
    for file, test in sorted(named):
        if file not in defined:
            tree = ast.parse((published.ROOT / file).read_text())
            defined[file] = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert test in defined[file], f"{file}::{test}"
