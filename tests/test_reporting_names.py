"""Report file names of problem ids: writable for any id (long ones, other scripts, emoji),
and one file per id."""

from __future__ import annotations

from pathlib import Path

from stepprune.reporting.plots import importance_figure, save_figure
from stepprune.reporting.report import slug
from tests.test_runfolder import _trace

IDS = ["p1", "a/b", "α", "β", "问题一", "😀", "😁", "🙂🙂", "x" * 300, "x" * 299 + "y", "é" * 200]


def test_every_id_gets_a_file_of_its_own(tmp_path: Path) -> None:
    names = [f"{slug(i)}_s0.png" for i in IDS]
    assert len(set(names)) == len(IDS)
    assert all(len(n.encode("utf-8")) < 255 for n in names)
    assert slug("p1") == "p1" and slug("a/b") == "a_b" and slug("α") == "α"
    for name in names:  # the file system takes every one
        save_figure(importance_figure(_trace("p")), tmp_path / name)
    assert len(list(tmp_path.iterdir())) == len(IDS)
