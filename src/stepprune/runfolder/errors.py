"""The one error of the run folder, raised by its writer, its reader and their callers."""

from __future__ import annotations


class RunFolderError(RuntimeError):
    """The run folder cannot be used (another experiment, a corrupted file, held by a run)."""
