"""What a scorer is called wherever a run is shown: tables, plots, the HTML page, ``show``.

A scorer is shown by its spec; a random control as ``random control (SCORER)``, the scorer it
controls, rather than by its own spec (``random-control:seed=0,of=SCORER``), which says the same
at twice the length. Specs are long (``attention:query=last,layers=all,heads=mean,...``), so a
label is cut to ``limit`` characters with an ellipsis where space is short (terminal tables,
plot legends, the HTML page, which shows the full spec on hover); report.md, which has room,
shows it whole (``limit=None``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from stepprune.schema import Record

ELLIPSIS = "…"
# Characters of a label on screen: the HTML answers table of a long control spec then fits
# a 1200-pixel window, and a legend entry stays on one line.
MAX_LABEL = 40
CONTROL_LABEL = "random control"
# Fewer characters of the controlled scorer than this say nothing ("random control (a…)").
MIN_ROOM = 4


def shorten(text: str, limit: int | None = MAX_LABEL) -> str:
    """``text`` cut to ``limit`` characters, its end replaced by an ellipsis (None: as it is)."""
    if limit is None or len(text) <= limit:
        return text
    return text[: max(limit - len(ELLIPSIS), 0)] + ELLIPSIS


def scorer_label(scorer: str, control_of: str | None = None, limit: int | None = MAX_LABEL) -> str:
    """The label of ``scorer``, or of the random control of ``control_of`` when given, in at
    most ``limit`` characters (None: whole)."""
    if control_of is None:
        return shorten(scorer, limit)
    room = None if limit is None else limit - len(CONTROL_LABEL) - len(" ()")
    if room is not None and room < MIN_ROOM:  # no room for the scorer: cut the whole label
        return shorten(f"{CONTROL_LABEL} ({control_of})", limit)
    return f"{CONTROL_LABEL} ({shorten(control_of, room)})"


def record_label(record: Record, limit: int | None = MAX_LABEL) -> str:
    """The label of the scorer (or control) that made ``record``."""
    return scorer_label(record.scorer, record.control_of, limit)


def row_label(row: Mapping[str, Any], limit: int | None = MAX_LABEL) -> str:
    """The label of a report row (``aggregate.Row`` as in report.json)."""
    return scorer_label(str(row["scorer"]), row.get("control_of"), limit)
