"""The HTML page of one trace: steps shaded by importance, a view per record.

    Trace + its Records -> render_html() -> one self-contained HTML page

Shading is the step's importance divided by the trace's largest importance, so the step the
scorer ranks first is always the darkest and traces of different lengths look alike (raw
importances sum to 1 and shrink as steps multiply). The terminal view (``reporting.show``)
uses the same shading and the same order of views.

The page has no JavaScript and loads nothing: the threshold selector is a row of radio
buttons, and CSS sibling selectors (``#vK:checked ~ .trace .xK``) strike the steps pruned in the
selected view. Every view's answer is also listed in a table that needs no CSS at all.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from stepprune.reporting.labels import record_label
from stepprune.runfolder import threshold_key
from stepprune.schema import Record, Trace

# Shading runs from white (importance 0) to this orange (the trace's most important step): light
# enough at the top that black text stays readable on it.
TOP_RGB = (253, 141, 60)
NO_SCORE_RGB = (225, 225, 225)
# Hues of plots.LABEL_COLOURS, darkened to be readable as text.
LABEL_COLOURS = {"necessary": "#1f5f9f", "planted": "#b35900"}


def importance_levels(trace: Trace) -> list[float | None]:
    """Each step's importance divided by the trace's largest; None for an unscored step."""
    scored = [s.importance for s in trace.steps if s.importance is not None]
    top = max(scored, default=0.0)
    return [
        None if s.importance is None else (s.importance / top if top > 0 else 0.0)
        for s in trace.steps
    ]


def shade(level: float | None) -> tuple[int, int, int]:
    """RGB background of a normalised importance in [0, 1] (grey for no score)."""
    if level is None:
        return NO_SCORE_RGB
    level = min(max(level, 0.0), 1.0)
    return tuple(round(255 + (top - 255) * level) for top in TOP_RGB)  # type: ignore[return-value]


def _rgb(colour: tuple[int, int, int]) -> str:
    return "rgb({}, {}, {})".format(*colour)


# -- views: the records of a trace, in the order both views list them ----------------------------


def order_records(trace: Trace, records: Sequence[Record]) -> list[Record]:
    """The trace's own scorer first (its kept steps match the shading), controls last."""
    own = [r for r in records if r.problem_id == trace.problem_id and r.sample == trace.sample]
    return sorted(
        own,
        key=lambda r: (r.is_control, r.scorer != trace.scorer, r.scorer, r.mode, r.threshold),
    )  # fmt: skip


def default_view(records: Sequence[Record], threshold: float | None) -> int:
    """Index of the initially selected view: ``threshold`` of the first scorer, else its
    largest threshold (the most pruning, so the cut is visible at once)."""
    if not records:
        return -1
    first = [i for i, r in enumerate(records) if r.scorer == records[0].scorer]
    if threshold is not None:
        key = threshold_key(threshold)
        for i in first:
            if threshold_key(records[i].threshold) == key:
                return i
    return max(first, key=lambda i: records[i].threshold)


# -- the page ------------------------------------------------------------------------------------

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; color: #111;
  background: #fff; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; line-height: 1.45; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 1.6rem; }
.meta, .note { color: #555; font-size: 0.9rem; }
.problem { white-space: pre-wrap; background: #f6f6f6; padding: 0.6rem 0.8rem;
  border-radius: 4px; }
.legend { display: flex; flex-wrap: wrap; gap: 1.2rem; align-items: center; font-size: 0.85rem;
  margin: 0.8rem 0; }
.ramp { display: inline-block; width: 9rem; height: 0.9rem; vertical-align: middle;
  border: 1px solid #ccc; background: linear-gradient(to right, rgb(255, 255, 255), TOP); }
.swatch { display: inline-block; width: 0.9rem; height: 0.9rem; vertical-align: middle;
  border: 1px solid #ccc; }
.views-label { margin-top: 0.6rem; }
.view-group { font-size: 0.8rem; color: #555; margin-top: 0.2rem; }
main > input { margin: 0.3rem 0.2rem 0.3rem 0; vertical-align: middle; }
main > label { font-size: 0.9rem; cursor: pointer; margin-right: 1rem; white-space: nowrap;
  vertical-align: middle; }
.step { white-space: pre-wrap; padding: 0.35rem 0.6rem; margin: 0.25rem 0; border-radius: 4px;
  border-left: 4px solid transparent; }
.step .tag { font-family: ui-monospace, monospace; font-size: 0.75rem; color: #333;
  margin-right: 0.5rem; white-space: nowrap; }
.badge { font-size: 0.7rem; background: #fff; border: 1px solid; border-radius: 3px;
  padding: 0 0.3rem; margin-right: 0.4rem; }
.answer { display: none; border: 1px solid #ddd; border-radius: 4px; padding: 0.5rem 0.8rem; }
.answer pre, .original pre { white-space: pre-wrap; margin: 0.3rem 0; }
.ok { color: #1a7f37; font-weight: 600; } .wrong { color: #b42318; font-weight: 600; }
table { border-collapse: collapse; font-size: 0.85rem; margin-top: 0.6rem; max-width: 100%; }
th, td { border: 1px solid #ddd; padding: 0.2rem 0.5rem; text-align: right;
  overflow-wrap: anywhere; }
.label { white-space: nowrap; }
td.text, th.text { text-align: left; }
""".replace("TOP", _rgb(TOP_RGB))

PRUNED_CSS = "text-decoration: line-through; opacity: 0.45; border-left-color: #b42318;"


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _badge(label: str) -> str:
    # White badge, coloured text and border: readable on every shade of the importance ramp
    # (a filled orange badge vanished on the most important steps).
    colour = LABEL_COLOURS.get(label, "#555555")
    return f'<span class="badge" style="color: {colour}">{_esc(label)}</span>'


def _label(record: Record) -> str:
    """The scorer (or "random control (scorer)") that made ``record``, cut to a bounded width
    (a long spec pushed the answers table's last column out of the window), the full spec on
    hover."""
    return f'<span class="label" title="{_esc(record.scorer)}">{_esc(record_label(record))}</span>'


def _view_name(record: Record) -> str:
    return f"{_label(record)} ({_esc(record.mode)}) t={threshold_key(record.threshold)}"


def _verdict(correct: bool | None) -> str:
    if correct is None:
        return '<span class="note">not graded</span>'
    return '<span class="ok">correct</span>' if correct else '<span class="wrong">wrong</span>'


def render_html(
    trace: Trace,
    records_for_trace: Sequence[Record],
    problem_text: str | None = None,
    *,
    threshold: float | None = None,
    title: str | None = None,
) -> str:
    """One self-contained HTML page of a trace: no scripts, no external resources.

    Args:
        trace: The trace to show; its steps' importances give the shading.
        records_for_trace: Its records (other problems' records are ignored); each one is a view
            in the selector, which strikes through the steps that view pruned and shows its
            answer. All answers are also listed in a table.
        problem_text: The problem statement, shown on top when known.
        threshold: The view selected when the page opens (default: the largest threshold).
        title: Page title (default: problem id and sample).

    All text from the run (steps, answers, problem, ids) is HTML-escaped.
    """
    records = order_records(trace, records_for_trace)
    selected = default_view(records, threshold)
    levels = importance_levels(trace)
    top = max((s.importance for s in trace.steps if s.importance is not None), default=None)
    heading = title or f"{trace.problem_id} (sample {trace.sample})"

    # One CSS rule pair per view: strike its pruned steps, show its answer, mark its table row.
    view_css = []
    for k in range(len(records)):
        view_css.append(f"#v{k}:checked ~ .trace .x{k} {{ {PRUNED_CSS} }}")
        view_css.append(f"#v{k}:checked ~ .answers .a{k} {{ display: block; }}")
        view_css.append(f"#v{k}:checked ~ table .r{k} {{ background: #fff3cd; }}")

    out = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(heading)} · stepprune</title>",
        f"<style>{CSS}\n" + "\n".join(view_css) + "\n</style>",
        "</head>",
        "<body>",
        f"<h1>{_esc(heading)}</h1>",
        f'<p class="meta">scorer {_esc(trace.scorer or "?")} · {len(trace.steps)} steps · '
        f"{trace.reasoning_end - trace.reasoning_start} reasoning tokens"
        + (" · <strong>truncated</strong>" if trace.truncated else "")
        + (" · teacher-forced" if trace.teacher_forced else "")
        + "</p>",
    ]
    if problem_text is not None:
        out += ["<h2>Problem</h2>", f'<div class="problem">{_esc(problem_text)}</div>']

    out += ["<h2>Reasoning</h2>", '<div class="legend">']
    top_text = "n/a" if top is None else f"{top:.3g}"
    out.append(f'<span>importance 0 <span class="ramp"></span> {_esc(top_text)} (max)</span>')
    out.append(
        f'<span><span class="swatch" style="background: {_rgb(NO_SCORE_RGB)}"></span> '
        "no score</span>"
    )
    if records:
        out.append('<span><span style="text-decoration: line-through">struck</span> = pruned in '
                   "the selected view</span>")  # fmt: skip
    labels = sorted({s.label for s in trace.steps if s.label})
    if labels:
        out.append("<span>step labels: " + "".join(map(_badge, labels)) + "</span>")
    out.append("</div>")

    # The radio buttons, the trace, the answers and the table are siblings: the CSS rules above
    # select from a checked button to its later siblings, so they must stay in one parent.
    out.append('<main class="viewer">')
    if records:
        out.append('<div class="views-label">Pruning view (struck steps are dropped):</div>')
        for k, record in enumerate(records):
            if k == 0 or (record.scorer, record.mode) != (
                records[k - 1].scorer,
                records[k - 1].mode,
            ):
                # One line per scorer and mode, so a button never wraps away from its label.
                out.append(f'<div class="view-group">{_label(record)} ({_esc(record.mode)}):</div>')
            checked = " checked" if k == selected else ""
            name = f"t={threshold_key(record.threshold)}"
            out.append(f'<input type="radio" name="view" id="v{k}"{checked}>'
                       f'<label for="v{k}">{name}</label>')  # fmt: skip
    else:
        out.append('<p class="note">No re-evaluated answers for this trace yet.</p>')
    out.append('<div class="trace">')
    for step, level in zip(trace.steps, levels, strict=True):
        pruned_in = [k for k, r in enumerate(records) if step.index not in set(r.kept_steps)]
        classes = " ".join(["step", *(f"x{k}" for k in pruned_in)])
        score = "n/a" if step.importance is None else f"{step.importance:.3f}"
        badge = _badge(step.label) if step.label else ""
        out.append(
            f'<div class="{classes}" id="step-{step.index}" '
            f'style="background: {_rgb(shade(level))}" title="importance {score}">'
            f'<span class="tag">#{step.index} · {score}</span>{badge}{_esc(step.text)}</div>'
        )
    if not trace.steps:
        out.append('<p class="note">This trace has no reasoning steps.</p>')
    out.append("</div>")

    if records:
        out.append('<div class="answers"><h2>Answer in the selected view</h2>')
        for k, record in enumerate(records):
            out.append(
                f'<div class="answer a{k}"><div>{_view_name(record)}: kept '
                f"{record.num_kept_steps}/{record.num_steps} steps, {record.tokens_kept}/"
                f"{record.reasoning_tokens} reasoning tokens · prediction "
                f"<code>{_esc(record.prediction)}</code>, gold <code>{_esc(record.gold)}</code> "
                f"· {_verdict(record.correct)}"
                + (" · answer truncated" if record.answer_truncated else "")
                + f"</div><pre>{_esc(record.answer_text)}</pre></div>"
            )
        out.append("</div>")
        out.append("<h2>All answers</h2>")
        out.append(
            '<table><tr><th class="text">scorer</th><th>mode</th><th>threshold</th>'
            "<th>steps kept</th><th>tokens kept</th><th>prediction</th><th>gold</th>"
            "<th>correct</th></tr>"
        )
        for k, record in enumerate(records):
            out.append(
                f'<tr class="r{k}"><td class="text">{_label(record)}</td>'
                f"<td>{_esc(record.mode)}</td><td>{threshold_key(record.threshold)}</td>"
                f"<td>{record.num_kept_steps}/{record.num_steps}</td>"
                f"<td>{record.tokens_kept}/{record.reasoning_tokens}</td>"
                f"<td>{_esc(record.prediction)}</td><td>{_esc(record.gold)}</td>"
                f"<td>{_verdict(record.correct)}</td></tr>"
            )
        out.append("</table>")
    out.append("</main>")

    out += [
        "<h2>Original answer (before pruning)</h2>",
        f'<div class="original">prediction <code>{_esc(trace.original_prediction)}</code> · '
        f"{_verdict(trace.original_correct)}<pre>{_esc(trace.original_answer)}</pre></div>",
        '<p class="note">Written by stepprune. Shading: step importance divided by the '
        "trace's largest. Threshold t drops the steps below the t-quantile of importance.</p>",
        "</body>",
        "</html>",
        "",
    ]
    return "\n".join(out)
