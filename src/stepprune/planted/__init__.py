"""A synthetic benchmark with known redundant steps: arithmetic word problems whose reasoning
traces are written by the program, with redundant steps planted among the necessary ones.

Each necessary step computes one intermediate result ("Tom starts with 3 boxes of 12 apples, so
he has 3 × 12 = 36 apples."); the last necessary step states the final answer. Planted steps
carry nothing the answer needs: a restatement of the question, an irrelevant fact, a re-check of
an earlier result, or an abandoned false start. A good step scorer should rank planted steps
below necessary ones, and pruning them should not change the answer.

The set is built so that neither length nor position predicts the label:

- **Length.** Each planted step is paired with a necessary step of its trace (cycling through
  them in a shuffled order, so each necessary length is used about equally often) and written to
  within ±10% of that step's length in approximate tokens (:func:`approx_tokens`, which counts
  words, punctuation and single digits the way the byte-level BPE tokenizers of Qwen, R1-distill
  and SmolLM2 split them). The phrasing is picked among several of each kind, with a neutral lead-in
  ("Let me see.") and tail ("Let me continue.") sentence to fine-tune the length. Necessary steps
  get the same filler sentences at random, so a filler does not mark a step as planted.
- **Position.** The positions of the planted steps are a uniformly random subset of all positions
  (first and last included), drawn before their kinds; the kind is then chosen among those that
  make sense there. The positions of both classes are therefore exchangeable and their mean
  relative positions agree in expectation.

Ordering rules: necessary steps keep their order, so the last necessary step states the final
result. A re-check needs a necessary step before it (it checks one of them); a false start needs
a necessary step after it (it fumbles the operands of the next one, then abandons the idea).
Restatements and irrelevant facts may go anywhere before the final necessary step. Planted steps
after it (the trace's last steps) are re-checks of the final result that end by stating it
again, and no filler follows the final result: the last number of every trace is the answer,
because small models answer with the most recent number they read, and a planted step must not
change the full-context answer. Since some kind fits every position, the kind never constrains
where a planted step goes.

That is the ``semantic`` variant: a step is necessary because the derivation needs it, yet a
model re-answering from the trace needs only the last one. The ``causal`` variant
(:mod:`stepprune.planted.causal`, ``generate_causal``) asks for every intermediate result, so
each necessary step is needed by the answer itself; the ``matched`` variant
(:mod:`stepprune.planted.matched`, ``generate_matched``) makes every planted step a distractor
computation of the same form as the necessary ones, so that the form of a step (its numbers and
``=`` signs) says nothing of its label; ``generate_variant`` picks one by name.
"""

from stepprune.planted.causal import generate_causal
from stepprune.planted.generate import DEFAULT_SIZE, PARAGRAPH_SEPARATOR, generate_planted
from stepprune.planted.matched import generate_matched
from stepprune.planted.planting import (
    FALSE_START,
    IRRELEVANT,
    LEAD_INS,
    LENGTH_TOLERANCE,
    MIN_PARAGRAPH_CHARS,
    NECESSARY,
    NECESSARY_LEAD_IN_RATE,
    NECESSARY_TAIL_RATE,
    PLANTED,
    PLANTED_KINDS,
    RECHECK,
    RESTATEMENT,
    TAILS,
    approx_tokens,
)
from stepprune.planted.scenarios import TEMPLATES
from stepprune.planted.variants import (
    CAUSAL,
    DEFAULT_VARIANT,
    MATCHED,
    PLANTED_VARIANTS,
    SEMANTIC,
    generate_variant,
)

__all__ = [
    "CAUSAL",
    "DEFAULT_SIZE",
    "DEFAULT_VARIANT",
    "FALSE_START",
    "IRRELEVANT",
    "LEAD_INS",
    "LENGTH_TOLERANCE",
    "MATCHED",
    "MIN_PARAGRAPH_CHARS",
    "NECESSARY",
    "NECESSARY_LEAD_IN_RATE",
    "NECESSARY_TAIL_RATE",
    "PARAGRAPH_SEPARATOR",
    "PLANTED",
    "PLANTED_KINDS",
    "PLANTED_VARIANTS",
    "RECHECK",
    "RESTATEMENT",
    "SEMANTIC",
    "TAILS",
    "TEMPLATES",
    "approx_tokens",
    "generate_causal",
    "generate_matched",
    "generate_planted",
    "generate_variant",
]
