"""Reporting, outside the core pipeline: it reads what a run wrote and renders it.

    tables       results.md, report.md and terminal tables (rendering only)
    plots        importance bars, accuracy vs kept tokens, tokens saved (matplotlib Figures)
    report       `stepprune report`: report.md, report.json and plots over run folders
    show         `stepprune show`: one trace in the terminal; html_page renders it as a page
    run_outputs  summary.json, results.md and importance.png at the end of `stepprune run`

The numbers come from ``stepprune.aggregate``; nothing here computes a statistic.
"""

from pathlib import Path


def file_in_the_way(path: Path) -> Path | None:
    """The existing file among the parents of ``path`` (``a.txt`` for ``a.txt/b/c.html``), which
    keeps ``path`` from being created; None when there is none."""
    for parent in Path(path).parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None
