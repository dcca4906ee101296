"""Step scorers: importance of each reasoning step of a trace, normalised to sum to 1.

Select one by spec string from ``SCORERS``: ``attention[:query=..,layers=..,heads=..,agg=..,
sink=..]``, ``ablation``, ``random[:seed=N]``, ``length``, ``position``, ``uniform``.
Importing this package registers them all.
"""

from stepprune.scorers.ablation import AblationScorer
from stepprune.scorers.attention import AttentionScorer
from stepprune.scorers.base import SCORERS, Scorer, normalise
from stepprune.scorers.baselines import LengthScorer, PositionScorer, RandomScorer, UniformScorer

__all__ = [
    "SCORERS",
    "AblationScorer",
    "AttentionScorer",
    "LengthScorer",
    "PositionScorer",
    "RandomScorer",
    "Scorer",
    "UniformScorer",
    "normalise",
]
