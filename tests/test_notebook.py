"""The Colab notebook is a valid notebook whose stepprune commands use real options."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import typer

from stepprune.cli import app

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "stepprune_colab.ipynb"


def _commands() -> list[list[str]]:
    notebook = json.loads(NOTEBOOK.read_text())
    assert notebook["nbformat"] == 4
    commands = []
    for cell in notebook["cells"]:
        source = "".join(cell["source"]).replace("\\\n", " ")
        for line in source.splitlines():
            if line.startswith("!stepprune "):
                commands.append(shlex.split(line[1:].replace("{RUN}", "run_dir")))
    return commands


def test_every_notebook_command_parses_with_the_cli() -> None:
    commands = _commands()
    assert {c[1] for c in commands} >= {"run", "report", "show"}
    root = typer.main.get_command(app)
    for command in commands:
        sub = root.commands[command[1]]
        context = sub.make_context(command[1], command[2:], resilient_parsing=False)
        assert context.params  # parsed without a usage error
        if command[1] == "run":
            params = context.params
            assert params["dataset"] == "aime24"
            # The T4 (15 GB, no bfloat16): 4-bit weights with the
            # transformers engine, or float16 with vLLM (which loads no NF4 weights).
            if params["engine"] == "vllm":
                assert params["dtype"] == "float16" and not params["load_in_4bit"]
                assert params["gpu_memory_utilization"] <= 0.6
            else:
                assert params["load_in_4bit"]


def test_a_wrong_option_would_be_caught() -> None:
    sub = typer.main.get_command(app).commands["run"]
    # typer vendors click, so its usage error class is private: match the message.
    with pytest.raises(Exception, match="No such option: --no-such-option"):
        sub.make_context("run", ["--no-such-option"])
