"""One kind of plug-in: a scorer and an engine, each one file outside the package, run through
``stepprune run``; the registry's typed options and derived specs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
from typer.testing import CliRunner

from stepprune.cli import app
from stepprune.registry import Plugin, PositiveInt, Registry, SpecError, run_setting, spec_key

PLUGIN_MODULES = "tests.plugins.last_step,tests.plugins.scripted_engine"


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.e2e
def test_an_outside_scorer_and_engine_run_through_stepprune_run(
    tiny_r1_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "problems.jsonl"
    data.write_text(
        "\n".join(
            json.dumps({"id": f"p{i}", "problem": f"What is 3 + {i}?", "answer": "7"})
            for i in range(2)
        )
    )
    out = tmp_path / "run"
    monkeypatch.setenv("STEPPRUNE_PLUGINS", PLUGIN_MODULES)
    args = ["run", "--model", str(tiny_r1_dir), "--device", "cpu", "--dataset", str(data)]
    args += ["--engine", "scripted", "--scorer", "last-step:weight=5", "--thresholds", "0,0.5"]
    result = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    traces, records = _lines(out / "traces.jsonl"), _lines(out / "records.jsonl")
    assert len(traces) == 2 and len(records) == 4
    for trace in traces:  # the engine's canned reasoning, segmented into its three paragraphs
        assert len(trace["steps"]) == 3
        assert [s["importance"] for s in trace["steps"]] == pytest.approx([1 / 7, 1 / 7, 5 / 7])
    assert {r["engine"] for r in records} == {"scripted"}
    assert {r["scorer"] for r in records} == {"last-step:weight=5"}
    assert all(r["correct"] and r["prediction"] == "7" for r in records)
    assert json.loads((out / "config.json").read_text())["config"]["engine"] == "scripted"


def test_run_help_lists_the_registered_plugins_with_their_options(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("STEPPRUNE_PLUGINS", PLUGIN_MODULES)
    monkeypatch.setenv("COLUMNS", "400")  # one help line per option
    result = CliRunner().invoke(app, ["run", "--help"])
    assert result.exit_code == 0, result.output
    assert "last-step[:weight=..]" in result.output
    assert "scripted | vllm[:tp=..,gpu_memory=..]" in result.output
    assert "kv[:positions=original|rerotate]" in result.output


def test_an_unknown_plugin_module_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEPPRUNE_PLUGINS", "tests.plugins.no_such_module")
    result = CliRunner().invoke(app, ["plugins"])
    assert result.exit_code == 2
    assert "cannot import 'tests.plugins.no_such_module'" in result.output


TOYS: Registry = Registry("toy")


@TOYS.register("toy")
@dataclass(frozen=True)
class Toy(Plugin):
    count: PositiveInt = 2
    kind: Literal["a", "b"] = "a"
    weight: float = 0.5
    flag: bool = False
    limit: int | None = None
    renamed: str = ""
    seed: int = run_setting(0)

    def __post_init__(self) -> None:
        if self.kind == "b" and self.count > 3:
            raise ValueError("kind b takes at most 3")


Toy.__dataclass_fields__["renamed"].metadata = spec_key("as")


def test_options_are_converted_to_their_annotated_types() -> None:
    toy = TOYS.build("toy:count=3,kind=b,weight=0.25,flag=yes,limit=none", seed=9)
    assert (toy.count, toy.kind, toy.weight, toy.flag, toy.limit, toy.seed) == (
        3,
        "b",
        0.25,
        True,
        None,
        9,
    )
    assert TOYS.build("toy:limit=4").limit == 4


def test_the_spec_is_derived_from_the_fields_and_rebuilds_the_same_plugin() -> None:
    toy = TOYS.build("toy:kind=b,weight=0.25")
    assert toy.spec == "toy:count=2,kind=b,weight=0.25,flag=False,limit=None,as="
    assert TOYS.build(toy.spec) == toy
    assert "seed" not in toy.spec  # a run setting is not an option


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("toy:count=0", "count=0 is outside the allowed range \\(>= 1\\)"),
        ("toy:count=x", "count='x' is not an integer"),
        ("toy:kind=c", "kind='c'; choose from a, b"),
        ("toy:weight=inf", "not a finite number"),
        ("toy:flag=maybe", "flag='maybe' is not true or false"),
        ("toy:seed=3", "unknown option 'seed'"),
        ("toy:kind=b,count=4", "kind b takes at most 3"),
        ("nosuch", "unknown toy 'nosuch'; choose from toy"),
    ],
)
def test_bad_options_name_the_spec_the_option_and_the_allowed_values(
    spec: str, message: str
) -> None:
    with pytest.raises(SpecError, match=message):
        TOYS.build(spec)
