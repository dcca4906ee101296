"""Plug-ins from outside the package: scorers, policies, modes or engines that register
themselves when their module is imported.

``stepprune`` imports, before it reads its options:

- the modules named in ``STEPPRUNE_PLUGINS`` (comma-separated importable module names, or
  paths to ``.py`` files);
- the entry points of the group ``stepprune.plugins`` of installed distributions
  (``[project.entry-points."stepprune.plugins"] mine = "my_package.my_scorer"``).

A plug-in registered this way is known to the CLI's ``--help`` and to every spec; Ray actors
import it by its module name when they unpickle the run's plan.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from importlib.metadata import entry_points
from pathlib import Path

ENTRY_POINT_GROUP = "stepprune.plugins"
ENVIRONMENT_VARIABLE = "STEPPRUNE_PLUGINS"


def _import(name: str) -> None:
    if name.endswith(".py"):
        path = Path(name)
        if not path.is_file():
            raise ValueError(f"{ENVIRONMENT_VARIABLE}: {name} is not a file")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        spec.loader.exec_module(module)
        return
    try:
        importlib.import_module(name)
    except ImportError as error:
        raise ValueError(f"{ENVIRONMENT_VARIABLE}: cannot import {name!r}: {error}") from None


def load_plugins() -> list[str]:
    """Import every outside plug-in module (see the module docstring); their names."""
    names = [n.strip() for n in os.environ.get(ENVIRONMENT_VARIABLE, "").split(",") if n.strip()]
    for name in names:
        _import(name)
    for point in entry_points(group=ENTRY_POINT_GROUP):
        point.load()
        names.append(point.value)
    return names
