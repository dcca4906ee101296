"""Step scorers: importance of each reasoning step of a trace, normalised to sum to 1.

Select one by spec string from ``SCORERS`` (a part spec with options of its own goes in
parentheses):

- ``attention[:query=..,layers=..,heads=..,agg=..,sink=..,calibration=FILE]``: attention paid
  to each step (``heads=receiver,calibration=FILE``: receiver heads from ``receiver``'s file);
- ``ablation``: drop of log p(answer) when the step is removed;
- ``entropy[:agg=sum|mean]``: next-token entropy over the step's tokens;
- ``redundancy[:lambda=0.07,window=8,kernel=7,threshold=0.5]``: R-KV's token score (window
  attention, max-pooled, minus the softmaxed key redundancy per KV head), averaged per step;
- ``step-redundancy[:of=SPEC,lambda=L,layer=N|last,vector=hidden|key]``: a base scorer minus
  the step's mean cosine similarity to the other steps (inspired by R-KV, not R-KV);
- ``attribution``: gradient of log p(answer) with respect to a per-step scale on the attention
  the answer pays to the step (attribution patching of attention knockout; an oracle);
- ``forced-answer``: rise of log p(answer) when the reasoning stops after the step;
- ``resampling[:k=K,seed=S,max_new_tokens=M,temperature=T]``: change of the distribution of answers
  sampled right after the prefix with the step (not Thought Anchors' counterfactual importance);
- ``mix:a=SPEC,b=SPEC,w=W``: ``W * a + (1 - W) * b``;
- baselines ``random[:seed=N]``, ``length``, ``position``, ``uniform``, ``form`` (numbers and
  ``=`` signs in the step).

Importing this package registers them all.
"""

from stepprune.scorers.ablation import AblationScorer
from stepprune.scorers.attention import AttentionScorer
from stepprune.scorers.attribution import AttributionScorer
from stepprune.scorers.base import SCORERS, Scorer, normalise
from stepprune.scorers.baselines import (
    FormScorer,
    LengthScorer,
    PositionScorer,
    RandomScorer,
    UniformScorer,
)
from stepprune.scorers.entropy import EntropyScorer
from stepprune.scorers.forced_answer import ForcedAnswerScorer
from stepprune.scorers.mix import MixScorer
from stepprune.scorers.receiver import (
    calibrate_receiver_heads,
    load_receiver_heads,
    save_receiver_heads,
)
from stepprune.scorers.redundancy import RedundancyScorer
from stepprune.scorers.resampling import ResamplingScorer
from stepprune.scorers.rkv import RKVScorer

__all__ = [
    "SCORERS",
    "AblationScorer",
    "AttentionScorer",
    "AttributionScorer",
    "EntropyScorer",
    "ForcedAnswerScorer",
    "FormScorer",
    "LengthScorer",
    "MixScorer",
    "PositionScorer",
    "RandomScorer",
    "RKVScorer",
    "RedundancyScorer",
    "ResamplingScorer",
    "Scorer",
    "UniformScorer",
    "calibrate_receiver_heads",
    "load_receiver_heads",
    "normalise",
    "save_receiver_heads",
]
