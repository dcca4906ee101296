"""stepprune: attention-guided pruning of reasoning steps in chains of thought.

The Python API (see README, "Python API")::

    from stepprune import score_steps, keep_masks, reevaluation_context, run, RunConfig
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

# Imported on first use (PEP 562): they pull in torch and transformers, which the command line
# needs only once a command gets past its checks.
_EXPORTS = {
    "keep_masks": "stepprune.api",
    "make_trace": "stepprune.api",
    "reevaluation_context": "stepprune.api",
    "run": "stepprune.api",
    "score_steps": "stepprune.api",
    "RunConfig": "stepprune.config",
    "Session": "stepprune.session",
}

if TYPE_CHECKING:
    from stepprune.api import keep_masks, make_trace, reevaluation_context, run, score_steps
    from stepprune.config import RunConfig
    from stepprune.session import Session


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'stepprune' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


__all__ = [
    "RunConfig",
    "Session",
    "__version__",
    "keep_masks",
    "make_trace",
    "reevaluation_context",
    "run",
    "score_steps",
]
