"""Rows: one per (scorer, mode, threshold) of a run's records, each with its own control."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from stepprune.runfolder import adapt_controls, threshold_key
from stepprune.schema import Record
from stepprune.stats import (
    DEFAULT_LEVEL,
    DEFAULT_RESAMPLES,
    bootstrap_ci,
    paired_delta,
    pass_at_1,
)

Interval = tuple[float, float]


@dataclass(frozen=True)
class Bootstrap:
    """Settings of every interval of one aggregation (one seed, so intervals are reproducible)."""

    n_resamples: int = DEFAULT_RESAMPLES
    seed: int = 0
    level: float = DEFAULT_LEVEL

    def ci(self, per_problem: Sequence[float]) -> Interval:
        return bootstrap_ci(per_problem, self.n_resamples, self.seed, self.level)

    def delta(self, a: Mapping[str, float], b: Mapping[str, float]) -> tuple[float, Interval]:
        return paired_delta(a, b, self.n_resamples, self.seed, self.level)


def mean(values: Iterable[float]) -> float | None:
    """Arithmetic mean as a plain float (JSON-serialisable); None for no values."""
    items = [float(v) for v in values]
    return sum(items) / len(items) if items else None


def kept_fraction(record: Record) -> float:
    """Share of the trace's reasoning tokens that ``record`` kept, in [0, 1]."""
    # No reasoning means nothing could be pruned: the convention of Record.steps_kept_pct.
    return record.tokens_kept / record.reasoning_tokens if record.reasoning_tokens else 1.0


@dataclass
class Row:
    """One (scorer, mode, threshold) of one run. Fractions are in [0, 1]; deltas are fractions.

    pass@1 is per problem the mean correctness over its samples, then the mean over problems;
    ``accuracy`` is the plain share of correct records (``correct / records``: the notebook's
    figure, equal to pass@1 when every problem has as many samples). ``delta`` is pass@1 minus
    the reference row's (threshold 0.0 of the same scorer and mode, else its smallest
    threshold), paired over shared problems; None on the reference row itself. ``control_*``
    describe this scorer's own random control at the same mode and threshold (every control
    seed of this scorer pooled) and ``vs_control`` = this row - control, paired; None when the
    scorer has no control there or this row is itself a control. ``control_of`` is, on a
    control's row, the scorer it controls. Token figures are means per record unless named
    ``..._pct`` or ``..._fraction`` of a pooled total (long traces dominate the token cost, so
    they dominate the share too).
    """

    run: str
    scorer: str
    mode: str
    threshold: float  # float(threshold_key(t)): 0.1 * 3 reads 0.3
    problems: int
    records: int
    pass1: float
    pass1_ci: Interval
    reference_threshold: float
    delta: float | None
    delta_ci: Interval | None
    kept_fraction: float  # mean per record of tokens_kept / reasoning_tokens
    steps_kept_fraction: float
    reasoning_tokens: float
    tokens_saved: float
    tokens_saved_fraction: float  # pooled: sum saved / sum reasoning tokens
    is_control: bool
    correct: int
    accuracy: float
    avg_steps_kept_pct: float
    avg_chars_kept: float
    avg_tokens_kept: float
    tokens_kept_pct: float  # pooled, in percent
    avg_answer_tokens: float
    answer_truncation_rate: float
    control_pass1: float | None = None
    control_ci: Interval | None = None
    control_kept_fraction: float | None = None
    vs_control: float | None = None
    vs_control_ci: Interval | None = None
    control_of: str | None = None
    per_problem: dict[str, float] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return threshold_key(self.threshold)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


GroupKey = tuple[str, str, float]


def _group_row(label: str, key: GroupKey, records: list[Record], boot: Bootstrap) -> Row:
    """The figures of one non-empty group (one scorer, or one scorer's control); deltas and
    the control beside a scorer are filled in afterwards."""

    def avg(value: Callable[[Record], float]) -> float:
        result = mean(value(r) for r in records)
        assert result is not None  # a group is never empty
        return result

    scorer, mode, threshold = key
    values = pass_at_1(records)
    reasoning = sum(r.reasoning_tokens for r in records)
    kept = sum(r.tokens_kept for r in records)
    correct = sum(1 for r in records if r.correct)
    return Row(
        run=label,
        scorer=scorer,
        mode=mode,
        threshold=threshold,
        problems=len(values),
        records=len(records),
        pass1=sum(values.values()) / len(values),
        pass1_ci=boot.ci(list(values.values())),
        reference_threshold=threshold,
        delta=None,
        delta_ci=None,
        kept_fraction=avg(kept_fraction),
        steps_kept_fraction=avg(lambda r: r.steps_kept_pct / 100.0),
        reasoning_tokens=avg(lambda r: float(r.reasoning_tokens)),
        tokens_saved=avg(lambda r: float(r.reasoning_tokens - r.tokens_kept)),
        tokens_saved_fraction=(reasoning - kept) / reasoning if reasoning else 0.0,
        is_control=records[0].is_control,
        correct=correct,
        accuracy=correct / len(records),
        avg_steps_kept_pct=avg(lambda r: r.steps_kept_pct),
        avg_chars_kept=avg(lambda r: r.chars_kept),
        avg_tokens_kept=avg(lambda r: r.tokens_kept),
        tokens_kept_pct=100.0 * kept / reasoning if reasoning else 100.0,
        avg_answer_tokens=avg(lambda r: r.answer_tokens),
        answer_truncation_rate=avg(lambda r: 1.0 if r.answer_truncated else 0.0),
        control_of=records[0].control_of,
        per_problem=values,
    )


def aggregate_rows(
    records: Iterable[Record], label: str = "", bootstrap: Bootstrap | None = None
) -> list[Row]:
    """Rows of ``records``: non-control scorers first (in record order), then controls; within
    a scorer, by mode then ascending threshold.

    Args:
        records: Records of one run (any scorers, modes and thresholds; controls included), as
            the run folder's reader gives them: a control is a record with ``control_of``.
            Records built without the field are adapted as the reader does
            (``runfolder.adapt_controls``; nothing changes for records read from a folder).
        label: The run's label, copied into every row (reports of several runs).
        bootstrap: Interval settings (default: ``stats`` defaults, seed 0).
    """
    boot = bootstrap or Bootstrap()
    records = adapt_controls(records)
    groups: dict[GroupKey, list[Record]] = defaultdict(list)
    for record in records:
        groups[(record.scorer, record.mode, float(threshold_key(record.threshold)))].append(record)
    rows = {key: _group_row(label, key, group, boot) for key, group in groups.items()}

    # The control of each (scorer, mode, threshold): only that scorer's controls (every seed
    # pooled, so that several seeds average out instead of one being picked arbitrarily).
    pooled: dict[GroupKey, list[Record]] = defaultdict(list)
    for (_, mode, threshold), row in rows.items():
        if row.control_of is not None:
            pooled[(row.control_of, mode, threshold)].extend(groups[(row.scorer, mode, threshold)])

    for (scorer, mode, threshold), row in rows.items():
        own = sorted(t for s, m, t in rows if (s, m) == (scorer, mode))
        row.reference_threshold = 0.0 if 0.0 in own else own[0]
        if threshold != row.reference_threshold:
            reference = rows[(scorer, mode, row.reference_threshold)]
            # No shared problem means no paired difference to report: leave it None.
            with contextlib.suppress(ValueError):
                row.delta, row.delta_ci = boot.delta(row.per_problem, reference.per_problem)
        control = pooled.get((scorer, mode, threshold))
        if control and not row.is_control:
            values = pass_at_1(control)
            row.control_pass1 = sum(values.values()) / len(values)
            row.control_ci = boot.ci(list(values.values()))
            row.control_kept_fraction = mean(kept_fraction(r) for r in control)
            with contextlib.suppress(ValueError):
                row.vs_control, row.vs_control_ci = boot.delta(row.per_problem, values)

    order = list(dict.fromkeys(r.scorer for r in records))
    return sorted(
        rows.values(), key=lambda r: (r.is_control, order.index(r.scorer), r.mode, r.threshold)
    )
