"""One aggregation of a run's records: the numbers behind every table, JSON file and plot.

    Records -> aggregate_rows() -> Row per (scorer, mode, threshold)
    Traces (+ Records) -> run_figures() -> RunFigures (counts, truncation, original accuracy)
    Rows + RunFigures -> summary_json()  (summary.json, rendered as results.md)
                      -> build_report()  (report.json, rendered as report.md and plots)

Pure computation: no files, no rendering (``stepprune.reporting`` renders). Thresholds are
grouped on ``runfolder.threshold_key``, so ``0.1 * 3`` and ``0.3`` are one row; the random
control is what ``runfolder.is_control`` says (``random-control...``), never a user's own
``random`` scorer, and each scorer is compared only with its own control
(``runfolder.control_owner``: ``of=`` in the control's spec, or the folder's first scorer for
controls written before 0.2). Intervals are percentile bootstraps over problems
(``stepprune.stats``).

Means of nothing are None, never 0: a run without traces has no truncation rate, not a rate of
0%. Rows are built from non-empty groups of records, so their means are always numbers.
"""

from stepprune.aggregate.rows import Bootstrap, Interval, Row, aggregate_rows, kept_fraction, mean
from stepprune.aggregate.runs import RunFigures, build_report, run_figures, run_labels, summary_json

__all__ = [
    "Bootstrap",
    "Interval",
    "Row",
    "RunFigures",
    "aggregate_rows",
    "build_report",
    "kept_fraction",
    "mean",
    "run_figures",
    "run_labels",
    "summary_json",
]
