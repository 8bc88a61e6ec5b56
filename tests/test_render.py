"""Markdown reports show data strings literally: no link, image, heading or table cell can be
injected by a dataset's text."""

from __future__ import annotations

from pathlib import Path

from revcurse.report.render import Heading, Para, Table, to_markdown


def test_data_strings_cannot_inject_markdown(tmp_path):
    hostile = "x ![track](http://evil/p.png) [click](http://evil)\n# Fake heading | cell <b>"
    text = to_markdown(hostile, [Heading(hostile), Para(hostile), Table([hostile], [[hostile]])],
                       Path(tmp_path))  # fmt: skip
    assert "![" not in text and "](" not in text.replace("\\](", "")
    assert "\n# Fake" not in text and "<b>" not in text and "&lt;b&gt;" in text
    table = [line for line in text.splitlines() if line.startswith("| ")]
    # one header row and one body row, each a single cell: the pipe in the data is escaped
    assert len(table) == 2 and all(line.count(" | ") == 0 for line in table)
    assert r"\!\[track\]" in text and r"\|" in text


def test_every_model_of_a_figure_has_its_own_colour():
    """The families keep theirs (MDM blue, ARM red); every other model gets one no other model of
    the figure has, even with more variants than the palette holds."""
    from revcurse.report.figures import FAMILY_COLORS, VARIANT_COLORS, model_colors

    names = ["mdm", "arm", "mdm-entity", "masked-ar", "mdm-causal-attention", "prefix-lm-full"]
    colors = model_colors(names)
    assert colors["mdm"] == FAMILY_COLORS["mdm"] and colors["arm"] == FAMILY_COLORS["arm"]
    assert len(set(colors.values())) == len(names)
    many = model_colors([f"v{i}" for i in range(len(VARIANT_COLORS))])
    assert len(set(many.values())) == len(VARIANT_COLORS)
    assert not set(many.values()) & set(FAMILY_COLORS.values())
