"""stepprune: attention-guided pruning of reasoning steps in chains of thought.

The Python API (see README, "Python API")::

    from stepprune import score_steps, keep_masks, reevaluation_context, run, RunConfig
"""

__version__ = "0.2.0"

from stepprune.api import keep_masks, make_trace, reevaluation_context, run, score_steps
from stepprune.config import RunConfig
from stepprune.session import Session

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
