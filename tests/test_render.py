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
