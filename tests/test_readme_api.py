"""The README's Python API example runs as written, on the bundled model."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _api_example() -> str:
    section = README.read_text(encoding="utf-8").split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_readme_api_example_runs() -> None:
    code = _api_example()
    assert len(code.strip().splitlines()) <= 14  # a short example, as the README promises
    namespace: dict = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, str(README), "exec"), namespace)
    importances, masks = namespace["importances"], namespace["masks"]
    assert len(importances) == 3 and abs(sum(importances) - 1) < 1e-6
    assert masks[0] == [True, True, True] and sum(masks[1]) < 3
    context = namespace["tokenizer"].decode(namespace["context"])
    assert context.startswith("Question: what is 2 + 3 * 4?")
    assert "The answer is \\boxed{" in context
    assert printed.getvalue().count("\n") >= 3
