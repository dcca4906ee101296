"""``python -m stepprune``: the command-line interface."""

from stepprune.cli import app

app(prog_name="stepprune")
