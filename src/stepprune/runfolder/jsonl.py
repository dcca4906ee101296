"""Reading and writing the folder's files: JSONL rows with their line numbers (torn last lines
cut or skipped), typed rows, JSON objects, atomic replacement."""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from stepprune.runfolder.errors import RunFolderError


def _write_error(path: Path, error: OSError) -> RunFolderError:
    """A failed write as one line naming the folder and the file; a full disk says how to go
    on (what was written is kept whole)."""
    reason = error.strerror or str(error)
    hint = (
        "; every complete line is kept: free space and run the same command again to resume"
        if error.errno in (errno.ENOSPC, errno.EDQUOT)
        else ""
    )
    return RunFolderError(f"{path.parent}: cannot write {path.name} ({reason}){hint}")


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` without ever leaving a half-written file (a full disk
    leaves the old file, and no temporary one)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise _write_error(path, error) from None


def _line(row: dict[str, Any]) -> bytes:
    """One row as a UTF-8 JSON line; text that UTF-8 cannot hold (a lone surrogate in an id
    read from a file) is written escaped, and reads back the same."""
    try:
        return (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(row) + "\n").encode("ascii")


def append_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Append ``rows`` as JSON lines, fsynced: all of them or none. A write that fails (a full
    disk) is cut back to where it started; a kill leaves at most one partial last line, which
    ``read_jsonl`` skips (or, with ``repair``, cuts).

    Raises:
        RunFolderError: the write failed (the message names the folder and the file).
    """
    data = b"".join(_line(row) for row in rows)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as error:
        raise _write_error(path, error) from None
    try:
        start = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except OSError as error:
            os.ftruncate(fd, start)  # needs no space: the file keeps only whole lines
            raise _write_error(path, error) from None
    finally:
        os.close(fd)


def read_jsonl(path: Path, repair: bool = False) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, row)`` of a JSONL file.

    A last line without its newline is a write cut by a kill: skipped if it is not valid JSON.
    With ``repair`` such a line is cut away, and a valid one gets its newline, so that later
    appends stay one row per line.

    Raises:
        RunFolderError: a complete line that is not a JSON object, or bytes that are not UTF-8
            (the message names file and line).
    """
    if not path.exists():
        return []
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    complete = raw.endswith(b"\n") or not raw
    rows: list[tuple[int, dict[str, Any]]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        last = number == len(lines) and not complete
        try:
            row = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            raise RunFolderError(f"{path}: line {number}: not UTF-8 text") from None
        except json.JSONDecodeError as error:
            if not last:
                raise RunFolderError(f"{path}: line {number}: invalid JSON ({error.msg})") from None
            if repair:
                with path.open("r+b") as handle:
                    handle.truncate(len(raw) - len(line))
            continue
        if not isinstance(row, dict):
            raise RunFolderError(f"{path}: line {number}: expected a JSON object")
        if last and repair:
            with path.open("ab") as handle:
                handle.write(b"\n")
        rows.append((number, row))
    return rows


def _parse(path: Path, repair: bool, cls: type[Any]) -> list[Any]:
    """Rows of ``path`` as ``cls`` (Trace or Record); a row that is not one names its line."""
    items = []
    for number, row in read_jsonl(path, repair):
        try:
            items.append(cls.from_json(row))
        except (TypeError, KeyError, ValueError, AttributeError) as error:
            raise RunFolderError(
                f"{path}: line {number}: not a {cls.__name__.lower()} ({error})"
            ) from None
    return items


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise RunFolderError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise RunFolderError(f"{path}: invalid JSON ({error.msg}, line {error.lineno})") from None
    if not isinstance(data, dict):
        raise RunFolderError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _read_scores(path: Path, repair: bool) -> dict[tuple[str, int, str], list[float]]:
    scores = {}
    for number, row in read_jsonl(path, repair):
        try:
            key = (str(row["problem_id"]), int(row["sample"]), str(row["scorer"]))
            scores[key] = [float(x) for x in row["importances"]]
        except (KeyError, TypeError, ValueError) as error:
            raise RunFolderError(f"{path}: line {number}: not a scores row ({error})") from None
    return scores
