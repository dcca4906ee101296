"""The resampling scorer: how much the distribution of *answers sampled right after a prefix*
changes when the prefix gains the step. A sampled forced-answer; not Thought Anchors'
counterfactual importance (arXiv 2506.19143), which regenerates the rest of the chain of thought
from the prefix without sentence i, keeps only resamples whose replacement sentence differs
semantically from the removed one (a sentence embedding), and measures the accuracy or KL change
over many rollouts. Here no reasoning is regenerated and nothing is filtered, so it stays cheap;
read its scores as "resampled answers after the prefix", not as counterfactual importance.

Spec: ``resampling[:k=K,seed=S,max_new_tokens=M,temperature=T]``, defaults ``k=4, seed=0,
max_new_tokens=64, temperature=0.6`` (top-p 0.95, the reasoning-model default). With ``c_j`` the
text-mode re-evaluation context keeping the first ``j`` steps and the end-of-reasoning cue
(``forced_answer.prefix_contexts``), K answers are sampled from each ``c_j``; ``P_j`` is the
empirical distribution of their answers (the last ``\\boxed{...}`` content, spaces removed; no
box is one more outcome). Then::

    importance_i = TV(P_{i+1}, P_i) = 1/2 sum_a |P_{i+1}(a) - P_i(a)|      then normalised

The total-variation distance (not the accuracy difference) is used: it needs no grader (math
equivalence runs in a separate process in this project), counts a step that changes a wrong
answer into another wrong one, and is bounded in [0, 1] with no smoothing (unlike KL). The
contexts ``c_i`` and ``c_{i+1}`` differ by step i only; ``c_j`` is shared by two steps and sampled
once. Each answer has its own seed (``seed``, problem, sample, context and draw), so the scores
are the same whatever the batch. Cost: ``(S + 1) * K`` sampled answers of up to M tokens.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from transformers import PreTrainedModel

from stepprune.decoding import SamplingConfig, StopRule
from stepprune.engines.hf import HFEngine
from stepprune.models import ChatFormat, eos_token_ids
from stepprune.registry import PositiveFloat, PositiveInt
from stepprune.schema import Trace
from stepprune.scorers.base import SCORERS, Scorer, normalise
from stepprune.scorers.forced_answer import prefix_contexts

TOP_P = 0.95


def answer_key(text: str) -> str | None:
    """The content of the last complete ``\\boxed{...}`` in ``text``, spaces removed (None if
    there is none): the outcome that the answer distributions count."""
    start = text.rfind("\\boxed{")
    while start >= 0:
        depth, body = 0, start + len("\\boxed")
        for end in range(body, len(text)):
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            if depth == 0:
                return "".join(text[body + 1 : end].split())
        start = text.rfind("\\boxed{", 0, start)  # unclosed: try the box before it
    return None


def total_variation(a: Sequence[str | None], b: Sequence[str | None]) -> float:
    """Total-variation distance between the empirical distributions of two answer lists."""
    pa, pb = Counter(a), Counter(b)
    return 0.5 * sum(abs(pa[k] / len(a) - pb[k] / len(b)) for k in pa.keys() | pb.keys())


def sample_answers(
    model: PreTrainedModel,
    fmt: ChatFormat,
    contexts: Sequence[list[int]],
    seeds: Sequence[int],
    sampling: SamplingConfig,
) -> list[str]:
    """One sampled answer text per context (the cue text it continues included), each drawn
    from its own seed with the transformers engine, cut at its first complete box."""
    eos = eos_token_ids(model, fmt.tokenizer)
    pad = fmt.tokenizer.pad_token_id if fmt.tokenizer.pad_token_id is not None else eos[0]
    engine = HFEngine(model, fmt.tokenizer, eos, pad)
    cue = fmt.answer_cue_text()
    rule = StopRule(fmt.tokenizer, eos, box_prefix=cue)
    texts = []
    for continuation in engine.sample(list(contexts), list(seeds), sampling):
        cut = rule.finish(continuation.ids).content_ids
        texts.append(cue + fmt.tokenizer.decode(cut, skip_special_tokens=True))
    return texts


@SCORERS.register("resampling")
@dataclass(frozen=True)
class ResamplingScorer(Scorer):
    """Importance of step i = total-variation distance between the answers sampled after
    steps ``0..i`` and after steps ``0..i-1``; see the module docstring."""

    k: PositiveInt = 4
    seed: int = 0
    max_new_tokens: PositiveInt = 64
    # Temperature 0 would make the K draws identical: no distribution to compare.
    temperature: PositiveFloat = 0.6

    def answers(self, model: PreTrainedModel, trace: Trace, fmt: ChatFormat) -> list[list[str]]:
        """``(S + 1) x K`` sampled answer texts: row j from the context keeping ``j`` steps."""
        contexts = prefix_contexts(fmt, trace)
        rows = [(j, r) for j in range(len(contexts)) for r in range(self.k)]
        seeds = [
            zlib.crc32(f"{self.seed}:{trace.problem_id}:{trace.sample}:{j}:{r}".encode())
            for j, r in rows
        ]
        sampling = SamplingConfig(self.max_new_tokens, self.temperature, TOP_P)
        texts = sample_answers(model, fmt, [contexts[j] for j, _ in rows], seeds, sampling)
        return [texts[j * self.k : (j + 1) * self.k] for j in range(len(contexts))]

    def score(
        self,
        model: PreTrainedModel,
        trace: Trace,
        fmt: ChatFormat,
        gold: str | None = None,
    ) -> list[float]:
        if not trace.steps:
            return []
        keys = [[answer_key(t) for t in row] for row in self.answers(model, trace, fmt)]
        distances = [total_variation(keys[i + 1], keys[i]) for i in range(len(trace.steps))]
        return normalise(np.array(distances, dtype=np.float64))

    def online_problem(self) -> str:
        return "it samples answers from every prefix of the finished trace"
