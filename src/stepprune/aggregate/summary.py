"""summary.json as a dataclass: ``Summary`` (run figures + one ``SummaryRow`` per threshold).

    Records + Traces -> build_summary() -> Summary -> to_json() -> summary.json
                                                   <- from_json() <- summary.json

The JSON keeps the original notebook's key names, which its readers use; attributes are named
for what they hold. Where the two differ (``SummaryRow.JSON_KEYS``):

    attribute        JSON key
    records          total
    avg_chars_kept   avg_output_length (characters of kept reasoning, not an output length;
                     written under both names: the old one for existing readers)
    tokens_kept_pct  avg_tokens_kept_pct (pooled: sum kept / sum reasoning tokens, in percent)
    control_pass1    random_control_pass1      control_ci     random_control_pass1_ci
    vs_control       vs_random                 vs_control_ci  vs_random_ci
    rows             thresholds.{threshold_key}
    control          random_control.scorer     control_rows   random_control.{threshold_key}
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from stepprune.aggregate.rows import Bootstrap, Interval, Row, aggregate_rows
from stepprune.aggregate.runs import run_figures
from stepprune.runfolder import adapt_controls, threshold_key
from stepprune.schema import Record, Trace

# Keys every summary.json has had in its threshold blocks (the notebook's); later ones may be
# missing from an older file, and read as None.
_REQUIRED = ("accuracy", "correct", "total", "avg_steps_kept_pct", "avg_output_length")
_CONTROL_KEYS = ("control_pass1", "control_ci", "vs_control", "vs_control_ci")


def _interval(value: Any) -> Interval | None:
    return None if value is None else (float(value[0]), float(value[1]))


@dataclass
class SummaryRow:
    """One threshold of summary.json: the figures of an ``aggregate.Row`` that it keeps.

    Fractions are in [0, 1]; ``avg_steps_kept_pct`` and ``tokens_kept_pct`` in percent.
    ``control_*`` / ``vs_control*`` are the scorer's random control at this threshold (None
    without one, and on the control's own rows, which do not write them).
    """

    # Attribute -> JSON key, where they differ (see the module docstring).
    JSON_KEYS: ClassVar[dict[str, str]] = {
        "records": "total",
        "avg_chars_kept": "avg_output_length",
        "tokens_kept_pct": "avg_tokens_kept_pct",
        "control_pass1": "random_control_pass1",
        "control_ci": "random_control_pass1_ci",
        "vs_control": "vs_random",
        "vs_control_ci": "vs_random_ci",
    }

    threshold: float
    accuracy: float  # correct / records
    correct: int
    records: int
    avg_steps_kept_pct: float
    avg_chars_kept: float  # mean characters of kept reasoning per record
    avg_tokens_kept: float | None = None
    tokens_kept_pct: float | None = None
    avg_answer_tokens: float | None = None
    answer_truncation_rate: float | None = None
    pass1: float | None = None  # None in summaries written before pass@1
    pass1_ci: Interval | None = None
    control_pass1: float | None = None
    control_ci: Interval | None = None
    vs_control: float | None = None
    vs_control_ci: Interval | None = None

    @property
    def key(self) -> str:
        return threshold_key(self.threshold)

    @classmethod
    def of(cls, row: Row) -> SummaryRow:
        """The summary's figures of ``row``."""
        return cls(**{f.name: getattr(row, f.name) for f in fields(cls)})

    def to_json(self, with_control: bool = True) -> dict[str, Any]:
        """The threshold block: the notebook's keys, ``avg_chars_kept`` beside
        ``avg_output_length``, pass@1 and, ``with_control``, the control's keys."""
        data: dict[str, Any] = {}
        for name in (f.name for f in fields(self)):
            if name == "threshold" or (name in _CONTROL_KEYS and not with_control):
                continue
            value = getattr(self, name)
            if isinstance(value, tuple):  # an interval: a JSON list
                value = list(value)
            data[self.JSON_KEYS.get(name, name)] = value
            if name == "avg_chars_kept":
                data[name] = value
        return data

    @classmethod
    def from_json(cls, key: str, data: dict[str, Any]) -> SummaryRow:
        """The row of threshold ``key`` from its block (keys of older summaries may be missing,
        except the notebook's)."""
        missing = [k for k in _REQUIRED if k not in data]
        if missing:
            raise KeyError(f"threshold {key}: no {', '.join(missing)}")
        values: dict[str, Any] = {"threshold": float(key)}
        for name in (f.name for f in fields(cls) if f.name != "threshold"):
            value = data.get(cls.JSON_KEYS.get(name, name))
            values[name] = _interval(value) if name.endswith("_ci") else value
        return cls(**values)


@dataclass
class Summary:
    """What `stepprune run` reports for one scorer (and its random control): summary.json.

    Run figures (``num_problems`` ... ``avg_reasoning_tokens``, see ``aggregate.RunFigures``)
    cover the units summarised; ``rows`` are the scorer's thresholds in ascending order, and
    ``control_rows`` those of its random control ``control`` (a spec; None when the run has no
    control, and then summary.json has no ``random_control``).
    """

    model: str
    dataset: str
    num_problems: int
    samples: int
    num_traces: int
    truncation_rate: float | None
    original_accuracy: float | None
    avg_reasoning_tokens: float | None
    rows: list[SummaryRow]
    scorer: str = ""
    policy: str = ""
    mode: str = ""
    control: str | None = None
    control_rows: list[SummaryRow] = field(default_factory=list)

    def row_at(self, threshold: float) -> SummaryRow | None:
        """The scorer's row at ``threshold`` (None when it was not evaluated there)."""
        key = threshold_key(threshold)
        return next((row for row in self.rows if row.key == key), None)

    def accuracy_at(self, threshold: float) -> float | None:
        """The share of correct answers at ``threshold``; None when it was not evaluated."""
        row = self.row_at(threshold)
        return None if row is None else row.accuracy

    @property
    def reference_row(self) -> SummaryRow | None:
        """The row every delta is taken against: threshold 0.0 (every threshold goes through
        the same re-evaluation path, so it is the fair baseline), else the least pruned row."""
        if not self.rows:
            return None
        return self.row_at(0.0) or min(self.rows, key=lambda r: r.threshold)

    @property
    def has_control(self) -> bool:
        """Whether any threshold has the random control's pass@1 beside the scorer's."""
        return any(row.control_pass1 is not None for row in self.rows)

    def to_json(self) -> dict[str, Any]:
        """summary.json's object, keys in the order every version has written them."""
        data: dict[str, Any] = {
            "model": self.model,
            "dataset": self.dataset,
            "num_problems": self.num_problems,
            "samples": self.samples,
            "num_traces": self.num_traces,
            "truncation_rate": self.truncation_rate,
            "original_accuracy": self.original_accuracy,
            "avg_reasoning_tokens": self.avg_reasoning_tokens,
            "thresholds": {row.key: row.to_json() for row in self.rows},
        }
        if self.control is not None:
            data["random_control"] = {
                "scorer": self.control,
                **{row.key: row.to_json(with_control=False) for row in self.control_rows},
            }
        data.update(scorer=self.scorer, policy=self.policy, mode=self.mode)
        return data

    def to_text(self) -> str:
        """The text of summary.json."""
        return json.dumps(self.to_json(), indent=2) + "\n"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Summary:
        """A summary read back from summary.json (also one written by an older version).

        Raises:
            KeyError, TypeError, ValueError: ``data`` is not a summary.
        """

        def rows(block: dict[str, Any]) -> list[SummaryRow]:
            items = [SummaryRow.from_json(k, v) for k, v in block.items() if k != "scorer"]
            return sorted(items, key=lambda row: row.threshold)

        control = data.get("random_control")
        return cls(
            model=str(data["model"]),
            dataset=str(data["dataset"]),
            num_problems=int(data["num_problems"]),
            samples=int(data["samples"]),
            num_traces=int(data["num_traces"]),
            truncation_rate=data.get("truncation_rate"),
            original_accuracy=data.get("original_accuracy"),
            avg_reasoning_tokens=data.get("avg_reasoning_tokens"),
            rows=rows(data["thresholds"]),
            scorer=str(data.get("scorer", "")),
            policy=str(data.get("policy", "")),
            mode=str(data.get("mode", "")),
            control=None if control is None else str(control["scorer"]),
            control_rows=[] if control is None else rows(control),
        )


def build_summary(
    records: Iterable[Record],
    traces: Sequence[Trace],
    *,
    model: str,
    dataset: str,
    scorer: str,
    control: str | None,
    policy: str,
    mode: str,
    bootstrap: Bootstrap | None = None,
) -> Summary:
    """The summary of ``scorer`` and its random control ``control`` (its spec, as
    ``runfolder.control_spec`` names it; None: no control).

    ``records`` may hold other scorers and their controls: only ``scorer`` and ``control`` are
    read (controls written before 0.2 are adapted as the run folder's reader does, so an old
    folder's control of its first scorer is ``control_spec(seed, first scorer)``). ``traces``
    are the units summarised (for the run figures). Rows are sorted by threshold; should the
    records hold several modes, the run's own ``mode`` wins.
    """
    records = [r for r in adapt_controls(records) if r.scorer in (scorer, control)]
    rows = aggregate_rows(records, bootstrap=bootstrap)
    figures = run_figures(traces, records, bootstrap)

    def chosen(wanted: str, is_control: bool) -> list[SummaryRow]:
        by_key: dict[str, Row] = {}
        own = [r for r in rows if r.scorer == wanted and r.is_control == is_control]
        for row in sorted(own, key=lambda r: r.mode == mode):  # the run's mode last: it wins
            by_key[row.key] = row
        return sorted(map(SummaryRow.of, by_key.values()), key=lambda r: r.threshold)

    return Summary(
        model=model,
        dataset=dataset,
        num_problems=figures.num_problems,
        samples=figures.samples,
        num_traces=figures.num_traces,
        truncation_rate=figures.truncation_rate,
        original_accuracy=figures.original_accuracy,
        avg_reasoning_tokens=figures.avg_reasoning_tokens,
        rows=chosen(scorer, False),
        scorer=scorer,
        policy=policy,
        mode=mode,
        control=control,
        control_rows=chosen(control, True) if control is not None else [],
    )


def summary_json(
    records: Iterable[Record], traces: Sequence[Trace], **settings: Any
) -> dict[str, Any]:
    """``build_summary(...).to_json()``: the contents of summary.json as a dict (kept for
    callers that read the dict)."""
    return build_summary(records, traces, **settings).to_json()
