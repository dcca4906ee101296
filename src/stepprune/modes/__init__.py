"""Re-evaluation modes: ``text``, ``kv``, ``online``. See ``modes.base``."""

from stepprune.modes.base import MODES, Mode, Outcome, Pruning, to_record
from stepprune.modes.kv import KVMode
from stepprune.modes.online import OnlineMode
from stepprune.modes.text import TextMode

__all__ = ["MODES", "KVMode", "Mode", "OnlineMode", "Outcome", "Pruning", "TextMode", "to_record"]
