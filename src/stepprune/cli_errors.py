"""One line per error in the user's input: ``error: ...`` on stderr, exit code 2.

Usage errors of the parser (``OneLineErrors``) and the errors the commands raise
(``user_errors``) alike; never a traceback.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import typer
from typer.core import TyperGroup

from stepprune.problems import DatasetError
from stepprune.registry import SpecError
from stepprune.runfolder import RunFolderError

# Exit code of every error in the user's input (the parser's usage errors use it too).
USER_ERROR_EXIT = 2


def one_line(text: str) -> str:
    """A message as one line: its non-empty lines joined."""
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def _is_user_error(error: BaseException) -> bool:
    """Errors in the user's input: bad datasets, specs, run folders, settings (ValueError),
    models that cannot be loaded, files that cannot be read or written (OSError), a vLLM that
    is missing or cannot start."""
    if isinstance(error, DatasetError | RunFolderError | SpecError | ValueError | OSError):
        return True
    # These modules import torch: their errors can only exist once they have been imported.
    kinds = [
        ("stepprune.models", "ModelLoadError"),
        ("stepprune.grading", "GradingError"),
        ("stepprune.engines.vllm", "VLLMError"),
    ]
    return any(
        isinstance(error, getattr(sys.modules[module], name))
        for module, name in kinds
        if module in sys.modules
    )


def _message(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        where = f"{error.filename}: " if error.filename else ""
        return f"{where}{error.strerror}"
    return one_line(str(error)) or type(error).__name__


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn an error in the user's input into one line on stderr and exit code 2."""
    try:
        yield
    except Exception as error:
        # A closed pipe (`stepprune show ... | head`) is not an error of the user's input: the
        # parser's own handling ends the command quietly.
        if isinstance(error, BrokenPipeError) or not _is_user_error(error):
            raise
        # Plain echo: a rich console would wrap the message over several lines.
        typer.echo(f"error: {_message(error)}", err=True)
        raise typer.Exit(USER_ERROR_EXIT) from None


class OneLineErrors(TyperGroup):
    """The command group, with the parser's usage errors ("No such option", "Invalid value
    for '--samples'", "Missing option '--problem'") as one line on stderr instead of a usage
    panel, exit code 2."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except typer.TyperException as error:  # click's ClickException and UsageError
            # Without arguments a group prints its help (already shown): nothing to add.
            if type(error).__name__ != "NoArgsIsHelpError":
                context = getattr(error, "ctx", None)
                hint = f" (see '{context.command_path} --help')" if context is not None else ""
                typer.echo(f"error: {one_line(error.format_message())}{hint}", err=True)
            sys.exit(getattr(error, "exit_code", USER_ERROR_EXIT))
        except typer.Abort:
            typer.echo("Aborted.", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)
