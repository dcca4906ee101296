"""Tests of `stepprune show` (stepprune.reporting.show, .html_page): terminal and HTML views of a
trace; the page in headless Chromium."""

from __future__ import annotations

import html
import io
import json
import re
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from rich.console import Console

from stepprune.reporting.html_page import (
    NO_SCORE_RGB,
    TOP_RGB,
    importance_levels,
    render_html,
    shade,
)
from stepprune.reporting.labels import MAX_LABEL, scorer_label
from stepprune.reporting.show import (
    ShowError,
    lookup_problem_text,
    problem_text,
    render_terminal,
    show_problem,
)
from stepprune.runfolder import RunFolderError, control_spec, load_run
from tests.run_fixture import (
    ATTENTION,
    STEPS,
    make_record,
    make_trace,
    problem_statement,
    write_run,
)

CHROMIUM = Path("/usr/bin/chromium")
requires_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=f"{CHROMIUM} not found: run .ci/install-chromium.sh (Debian package 'chromium')",
)
SCRIPT_TEXT = "<script>alert('x')</script>"
# The fixture's control (written before 0.2): the control of its first scorer, as shown.
CONTROL = scorer_label("random-control:seed=0", ATTENTION)
LONG = "attention:query=last,layers=all,heads=mean,agg=sum,sink=keep"


def view_groups(page: str) -> list[str]:
    """The text of the page's view-group headings (one per scorer and mode)."""
    groups = re.findall(r'<div class="view-group">(.*?)</div>', page)
    return [re.sub(r"<[^>]*>", "", group) for group in groups]


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return write_run(tmp_path / "run")


def records_of(run_dir: Path, problem_id: str = "p3", sample: int = 0):
    run = load_run(run_dir)
    return run.trace(problem_id, sample), [
        r for r in run.records if r.problem_id == problem_id and r.sample == sample
    ]


# -- shading ---------------------------------------------------------------------------------


def test_levels_are_relative_to_the_largest_importance() -> None:
    trace = make_trace("p1", 0)
    assert importance_levels(trace) == pytest.approx([0.40 / 0.45, 0.10 / 0.45, 0.05 / 0.45, 1])
    trace.steps[1].importance = None
    assert importance_levels(trace)[1] is None


def test_shade_runs_from_white_to_the_top_colour() -> None:
    assert shade(0.0) == (255, 255, 255)
    assert shade(1.0) == TOP_RGB
    assert shade(None) == NO_SCORE_RGB
    assert shade(2.0) == TOP_RGB  # clipped
    # Monotone: more important is darker in every channel.
    shades = [shade(x / 10) for x in range(11)]
    assert all(
        a >= b for s, t in zip(shades, shades[1:], strict=False) for a, b in zip(s, t, strict=True)
    )


# -- terminal --------------------------------------------------------------------------------


def test_render_terminal_marks_and_strikes_pruned_steps() -> None:
    buffer = io.StringIO()
    con = Console(file=buffer, width=200, force_terminal=True, color_system="truecolor")
    render_terminal(make_trace("p1", 0), {0, 3}, con)
    out = buffer.getvalue()
    plain = re.sub(r"\x1b\[[0-9;]*m", "", out)
    for text, _, _ in STEPS:
        assert text in plain  # rich prints markup-like text verbatim, the script tag included
    assert re.search(r"^\+ \[  0\] 0\.400 necessary First", plain, re.M)
    assert re.search(r"^- \[  1\] 0\.100 planted Let me", plain, re.M)
    # Strike-through (SGR 9) right before the pruned step's text, not before a kept one.
    strike = r"\x1b\[(?:\d+;)*9(?:;\d+)*m"
    assert re.search(strike + re.escape("Let me restate"), out)
    assert not re.search(strike + re.escape("First, 3 + 4"), out)
    # The most important step has the top shade as its background.
    top = r"48;2;{};{};{}".format(*TOP_RGB)
    assert re.search(top + r"m" + re.escape("Then 7 * 2"), out)


def test_render_terminal_without_kept_set_marks_nothing() -> None:
    con = Console(file=io.StringIO(), width=200, color_system=None, record=True)
    render_terminal(make_trace("p1", 0), None, con)
    text = con.export_text()
    assert not re.search(r"^[+-] \[", text, re.M)
    assert "[  3] 0.450" in text


# -- HTML ------------------------------------------------------------------------------------


def test_html_escapes_all_run_text(run_dir: Path) -> None:
    trace, records = records_of(run_dir, "p2", 0)  # p2 sample 0 is wrong at 0.5: "<b>9</b>"
    page = render_html(trace, records, problem_text="Is 2 < 3? <img src=x onerror=alert(1)>")
    assert "<script" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "<img" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "<b>9</b>" not in page and "&lt;b&gt;9&lt;/b&gt;" in page


def test_html_is_self_contained(run_dir: Path) -> None:
    trace, records = records_of(run_dir)
    page = render_html(trace, records, "What is 14?")
    lowered = page.lower()
    for needle in ("<script", "<link", "src=", "http://", "https://", "url(", "@import"):
        assert needle not in lowered, needle
    assert page.startswith("<!DOCTYPE html>") and lowered.rstrip().endswith("</html>")


def test_html_views_strike_the_steps_each_record_pruned(run_dir: Path) -> None:
    trace, records = records_of(run_dir)
    page = render_html(trace, records)
    # Views in order: attention 0.0, 0.5, then the random control 0.0, 0.5.
    labels = re.findall(r'<label for="v(\d)">([^<]*)</label>', page)
    assert labels == [("0", "t=0.0"), ("1", "t=0.5"), ("2", "t=0.0"), ("3", "t=0.5")]
    assert view_groups(page) == [f"{ATTENTION} (text):", f"{CONTROL} (text):"]
    assert f"{CONTROL}</span> (text) t=0.5: kept 2/4 steps" in page  # the view's answer panel
    classes = {
        int(i): set(c.split()) for c, i in re.findall(r'<div class="([^"]*)" id="step-(\d+)"', page)
    }
    # Attention at 0.5 keeps steps 0 and 3 (view 1); random at 0.5 keeps 1 and 2 (view 3).
    assert classes == {
        0: {"step", "x3"},
        1: {"step", "x1"},
        2: {"step", "x1"},
        3: {"step", "x3"},
    }
    for k in range(4):
        assert re.search(rf"#v{k}:checked ~ \.trace \.x{k} {{[^}}]*line-through", page)
        assert f"#v{k}:checked ~ .answers .a{k} {{ display: block; }}" in page
    # The largest threshold of the trace's own scorer is selected by default.
    assert re.findall(r'id="v(\d)" checked', page) == ["1"]
    assert re.findall(r'id="v(\d)" checked', render_html(trace, records, threshold=0.0)) == ["0"]
    # Shading: the most important step (3) has the top colour.
    assert re.search(r'id="step-3" style="background: rgb\({}, {}, {}\)"'.format(*TOP_RGB), page)


def _long_spec_page() -> str:
    """The page of a trace scored with a long spec, with its control beside it."""
    trace = make_trace("p1", 0)
    trace.scorer = LONG
    records = [make_record("p1", 0, t, True, [0, 3], LONG) for t in (0.0, 0.5)]
    control = control_spec(0, LONG)
    for t in (0.0, 0.5):
        records.append(replace(make_record("p1", 0, t, False, [1, 2], control), control_of=LONG))
    return render_html(trace, records, "What is (3 + 4) * 2?")


def test_html_labels_are_bounded_with_the_full_spec_on_hover() -> None:
    page = _long_spec_page()
    labels = re.findall(r'<span class="label" title="([^"]*)">([^<]*)</span>', page)
    # Two view groups, four answer panels and four table rows, each labelled.
    assert len(labels) == 10
    assert {title for title, _ in labels} == {LONG, control_spec(0, LONG)}
    assert {text for _, text in labels} == {
        "attention:query=last,layers=all,heads=m…",
        "random control (attention:query=last,l…)",
    }
    assert all(len(html.unescape(text)) <= MAX_LABEL for _, text in labels)
    # The answers table names each scorer by its label alone.
    cells = re.findall(r'<tr class="r\d"><td class="text">(.*?)</td>', page)
    assert [re.sub(r"<[^>]*>", "", c) for c in cells] == [text for _, text in labels[-4:]]


def test_labels_never_exceed_their_limit() -> None:
    control = control_spec(0, LONG)
    for limit in range(1, 70):
        for label in (scorer_label(LONG, None, limit), scorer_label(control, LONG, limit)):
            assert len(label) <= limit and (len(label) == limit or "…" not in label)
    assert scorer_label(control, LONG, 21) == "random control (att…)"
    assert scorer_label(control, LONG, 20) == "random control (att…"  # no room for ")"
    assert scorer_label(control, LONG, 12) == "random cont…"
    assert scorer_label(control, LONG, None) == f"random control ({LONG})"
    assert scorer_label("random-control:seed=0", "uniform") == "random control (uniform)"


def test_html_lists_every_answer_with_correctness(run_dir: Path) -> None:
    trace, records = records_of(run_dir)  # p3 sample 0: right at both thresholds; random wrong
    page = render_html(trace, records)
    rows = re.findall(r'<tr class="r(\d)">(.*?)</tr>', page)
    assert len(rows) == 4
    verdicts = [re.search(r'<span class="(ok|wrong)">', row).group(1) for _, row in rows]
    assert verdicts == ["ok", "ok", "ok", "wrong"]
    assert page.count('<div class="answer a') == 4


def test_html_without_records_or_steps() -> None:
    trace = make_trace("p1", 0)
    page = render_html(trace, [])
    assert "No re-evaluated answers" in page and "<input" not in page
    trace.steps = []
    assert "no reasoning steps" in render_html(trace, [])


# -- show_problem ----------------------------------------------------------------------------


def test_show_problem_prints_and_writes_html(run_dir: Path, tmp_path: Path) -> None:
    buffer = io.StringIO()
    con = Console(file=buffer, width=250, color_system=None)
    path = show_problem(run_dir, "p3", 1, threshold=0.5, html_path=tmp_path / "x" / "p3.html",
                        console=con)  # fmt: skip
    assert path == tmp_path / "x" / "p3.html"
    page = path.read_text(encoding="utf-8")
    assert re.findall(r'id="v(\d)" checked', page) == ["1"]
    out = buffer.getvalue()
    assert "p3 (sample 1)" in out
    assert "threshold 0.5: kept 2 of 4 steps" in out
    assert re.search(r"^- \[  2\]", out, re.M) and re.search(r"^\+ \[  3\]", out, re.M)
    assert "HTML written to" in out
    assert show_problem(run_dir, "p1", console=Console(file=io.StringIO())) is None


@pytest.mark.parametrize("width", [80, 120])
def test_show_problem_lists_each_answer_on_one_line(run_dir: Path, width: int) -> None:
    buffer = io.StringIO()
    show_problem(run_dir, "p3", console=Console(file=buffer, width=width, color_system=None))
    out = buffer.getvalue()
    rows = [line for line in out.splitlines() if re.match(r"│ \S", line)]
    assert len(rows) == 4 and max(len(line) for line in out.splitlines()) <= width
    labels = [row.split("│")[1].strip() for row in rows]
    assert [label.startswith("random con") for label in labels] == [False, False, True, True]
    # A wider terminal shows more of the label (the room the other columns leave).
    assert width < 120 or labels[-1] == "random control (attention:query=last,layers=all,a…)"


def test_show_problem_errors_are_one_line_and_helpful(run_dir: Path) -> None:
    quiet = Console(file=io.StringIO())
    with pytest.raises(ShowError, match=r"'p9' is not in .*valid ids: p1, p2, p3, p4") as info:
        show_problem(run_dir, "p9", console=quiet)
    assert "\n" not in str(info.value)
    with pytest.raises(ShowError, match=r"no sample 5 .*samples: 0, 1"):
        show_problem(run_dir, "p1", 5, console=quiet)
    with pytest.raises(ShowError, match=r"no answer at threshold 0.3; thresholds: 0.0, 0.5"):
        show_problem(run_dir, "p1", threshold=0.3, console=quiet)
    with pytest.raises(RunFolderError, match="config.json is missing"):
        show_problem(run_dir.parent, "p1", console=quiet)
    assert isinstance(ShowError("x"), ValueError)  # caught by the CLI's user-error handler


def test_problem_text_is_the_traces_own(tmp_path: Path) -> None:
    # The run's dataset (aime24, no local copy) could not be read: the trace's statement is used.
    run = load_run(write_run(tmp_path / "run", dataset="aime24"))
    assert problem_text(run, run.trace("p2", 0)) == problem_statement("p2")
    buffer = io.StringIO()
    page = tmp_path / "p2.html"
    show_problem(run.path, "p2", html_path=page, console=Console(file=buffer, width=200))
    assert problem_statement("p2") in buffer.getvalue()
    assert f'<div class="problem">{problem_statement("p2")}</div>' in page.read_text()


def test_problem_text_of_an_old_folder_is_looked_up_and_must_agree(tmp_path: Path) -> None:
    data = tmp_path / "mine.jsonl"
    rows = [{"id": "p1", "problem": "What is (3 + 4) * 2?", "answer": "14"},
            {"id": "p2", "problem": "A different problem", "answer": "99"}]  # fmt: skip
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = load_run(write_run(tmp_path / "run", dataset=str(data), with_problem=False))
    assert run.trace("p1", 0).problem == ""
    assert problem_text(run, run.trace("p1", 0)) == "What is (3 + 4) * 2?"
    # The file's p2 has another gold answer than the run's records: not the run's problem.
    assert problem_text(run, run.trace("p2", 0)) is None
    assert problem_text(run, run.trace("p3", 0)) is None  # not in the file
    # A built-in set without a local copy is never fetched from the hub.
    hub = load_run(write_run(tmp_path / "hub", dataset="aime24", with_problem=False))
    assert problem_text(hub, hub.trace("p1", 0)) is None
    assert lookup_problem_text(hub, hub.trace("p1", 0)) is None


def test_a_random_scorer_is_listed_before_the_control(tmp_path: Path) -> None:
    # A user's random scorer is the trace's scorer, not a control: its views come first.
    run = load_run(write_run(tmp_path / "run", scorer="random:seed=0"))
    trace = run.trace("p3", 0)
    records = [r for r in run.records if (r.problem_id, r.sample) == ("p3", 0)]
    page = render_html(trace, records[::-1])
    assert view_groups(page) == ["random:seed=0 (text):", "random control (random:seed=0) (text):"]


# -- headless Chromium -----------------------------------------------------------------------


def chromium_dump(page: Path, profile: Path) -> tuple[str, list[str]]:
    """The DOM after load, and the browser's console messages (from its stderr log).

    With ``--enable-logging=stderr``, Chromium logs every console message and uncaught exception
    of the page as a line like ``[...:INFO:CONSOLE:1] "Uncaught Error: ...", source: file://...``
    (console.error is logged at INFO too, so the level cannot be used: any CONSOLE line counts).
    """
    command = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
        "--dump-dom", page.resolve().as_uri(),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    console_lines = [
        line for line in done.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line
    ]
    return done.stdout, console_lines


@requires_chromium
def test_console_check_detects_a_broken_page(tmp_path: Path) -> None:
    # The check below is only worth something if it fails on a page that does have errors.
    page = tmp_path / "broken.html"
    page.write_text(
        "<!DOCTYPE html><html><body><p>broken</p><script>console.error('deliberate');"
        "undefinedFunction();</script></body></html>"
    )
    dom, messages = chromium_dump(page, tmp_path / "profile")
    assert "<p>broken</p>" in dom
    assert any("deliberate" in line for line in messages)
    assert any("Uncaught ReferenceError" in line for line in messages)


@requires_chromium
def test_html_renders_in_headless_chromium_without_console_errors(
    run_dir: Path, tmp_path: Path
) -> None:
    path = show_problem(run_dir, "p2", 0, html_path=tmp_path / "p2.html",
                        console=Console(file=io.StringIO()))  # fmt: skip
    assert path is not None
    dom, messages = chromium_dump(path, tmp_path / "profile")
    assert messages == []
    # Every step's text is in the rendered document, the script tag as text, not an element.
    for text, _, _ in STEPS:
        escaped = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        assert escaped in dom
    assert "<script" not in dom
    assert dom.count('class="step') == len(STEPS)
    assert 'id="v1" checked' in dom


# Appended to a copy of the page (which has no scripts of its own): the right edge of each
# answers-table row's last cell (correct / wrong), and of the document.
MEASURE = """<script>addEventListener("load", () => {
  const cells = [...document.querySelectorAll("tr")].map(r => r.lastElementChild);
  document.body.dataset.right = Math.max(...cells.map(c => c.getBoundingClientRect().right));
  document.body.dataset.width = document.documentElement.scrollWidth;
});</script></body>"""


@requires_chromium
def test_html_answers_table_fits_a_1200_pixel_window(tmp_path: Path) -> None:
    # A control's full spec (86 characters) in the first column pushed the last one out.
    page = tmp_path / "page.html"
    page.write_text(_long_spec_page().replace("</body>", MEASURE), encoding="utf-8")
    command = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,900",
        f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri(),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    body = re.search(r'<body data-right="([\d.]+)" data-width="(\d+)">', done.stdout)
    assert body is not None, done.stderr[-2000:]
    assert float(body.group(1)) <= 1200 and int(body.group(2)) <= 1200


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("folder", "is a folder"),
        ("under-a-file", "{tmp}/plain.txt is a file, not a folder"),
        ("run-file", "is a file of the run folder"),
        ("sysfs", "cannot write there ("),
    ],
)
def test_html_that_cannot_be_written_fails_before_anything_is_shown(
    run_dir: Path, tmp_path: Path, where: str, message: str
) -> None:
    (tmp_path / "plain.txt").write_text("x")
    path = {
        "folder": tmp_path,
        "under-a-file": tmp_path / "plain.txt" / "page.html",
        "run-file": run_dir / "records.jsonl",
        "sysfs": Path("/sys/stepprune-page.html"),
    }[where]
    records = (run_dir / "records.jsonl").read_bytes()
    buffer = io.StringIO()
    with pytest.raises(ShowError) as caught:
        show_problem(run_dir, "p1", html_path=path, console=Console(file=buffer))
    assert str(caught.value).startswith(f"--html {path}: {message.format(tmp=tmp_path)}")
    assert buffer.getvalue() == ""  # nothing printed before the error
    assert (run_dir / "records.jsonl").read_bytes() == records
