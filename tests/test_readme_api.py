"""README's "Python API" section: its code blocks run as written (stdout captured)."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def api_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_readme_python_api_blocks_run():
    blocks = api_blocks()
    assert blocks
    for block in blocks:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(block, "README.md (Python API)", "exec"), {})
        printed = out.getvalue().split()
        assert len(printed) == 4  # three accuracies and the coupling
        assert all(0.0 <= float(x) <= 1.0 for x in printed[:3])
        assert -1.0 <= float(printed[3]) <= 1.0
