"""Receiver heads chosen once from a set of traces, saved to a file that the attention scorer
reads (``attention:heads=receiver,calibration=FILE``), instead of per trace.

Thought Anchors (arXiv 2506.19143) picks "receiver heads", which focus their attention on a
few sentences, over many traces and then uses the same heads everywhere. Here the criterion is
that of ``attention.select_receiver_heads`` averaged over traces: for each trace, the attention
scorer's per-step mass of every head (mean over its queries) is made a distribution over the
steps, and its entropy is divided by ``log(steps)`` so traces with different step counts weigh
the same; the ``top_k`` heads with the lowest mean normalised entropy are the receivers. Traces
with fewer than 2 steps say nothing about concentration and are skipped.

Thought Anchors' own criterion (``receiver_head_funcs.py``) is also here, as
:func:`thought_anchors_receiver_heads` (``calibrate_receiver_heads(method="kurtosis")``): per
trace and head, the sentence-averaged attention matrix ``M[i, j]`` (mean attention from the
tokens of step ``i`` to those of step ``j``); each step's *vertical score*, the mean of
``M[i, j]`` over the steps ``i >= j + 4`` (the nearest steps' attention is local, not
"receiving"); the excess kurtosis of those scores across steps (how spiky the head's attention
to a few steps is); the mean over traces; the ``top_k`` (20) heads of highest kurtosis. Steps
here are the segmenter's (paragraphs by default), the paper's are sentences: calibrate with
``--segmenter sentence`` traces for the paper's setting.

File format (JSON)::

    {"heads": [[layer, head], ...],   # best first; layer indexes all of the model's layers
     "num_layers": L, "num_heads": H, "scorer": "attention:...", "traces": N,
     "criterion": "..."}
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
from transformers import PreTrainedModel

from stepprune.models import ChatFormat
from stepprune.schema import Trace

if TYPE_CHECKING:
    from stepprune.scorers.attention import AttentionScorer

CRITERION = "lowest mean over traces of the entropy over steps / log(steps)"
KURTOSIS_CRITERION = (
    "highest mean over traces of the kurtosis across steps of vertical scores (Thought Anchors)"
)
Criterion = Literal["entropy", "kurtosis"]
# Thought Anchors' defaults: a step's vertical score ignores the 3 steps after it, and the
# 20 heads of highest mean kurtosis are the receivers.
PROXIMITY_IGNORE = 4
THOUGHT_ANCHORS_TOP_K = 20


def head_concentration(step_mass: torch.Tensor) -> torch.Tensor:
    """Normalised entropy of each head's attention over the steps.

    Args:
        step_mass: ``(layers, heads, queries, steps)`` non-negative, ``steps >= 2``.

    Returns:
        ``(layers, heads)`` in [0, 1]: 0 all on one step, 1 spread evenly.
    """
    mass = step_mass.mean(2)
    dist = mass / mass.sum(-1, keepdim=True).clamp_min(1e-12)
    entropy = -(dist * dist.clamp_min(1e-12).log()).sum(-1)
    return entropy / math.log(step_mass.shape[-1])


def step_attention_matrix(model: PreTrainedModel, trace: Trace) -> torch.Tensor:
    """``(layers, heads, S, S)``: ``[l, h, i, j]`` is head ``(l, h)``'s mean attention from the
    tokens of step ``i`` to the tokens of step ``j`` (zero above the diagonal: causal).

    One forward over the prompt and reasoning; every step token is a query row, reduced to
    per-step sums on the fly, so memory is O(layers x heads x step tokens x steps).
    """
    from stepprune.scorers.attention import key_buckets, step_attention_mass

    ids = trace.all_ids[: trace.reasoning_end]
    rows = [p for step in trace.steps for p in range(step.start, step.end)]
    buckets, num_buckets = key_buckets(trace, len(ids), sink_tokens=0)
    mass = step_attention_mass(model, ids, rows, buckets, num_buckets).double()
    n = len(trace.steps)
    lengths = torch.tensor([step.num_tokens for step in trace.steps], dtype=torch.float64)
    # Sum the query rows of each step: rows are listed step by step, in step order.
    owner = torch.repeat_interleave(torch.arange(n), lengths.long())
    per_step = torch.zeros(*mass.shape[:2], n, n, dtype=torch.float64)
    per_step.index_add_(2, owner, mass[..., :n])
    return per_step / (lengths[:, None] * lengths[None, :])


def vertical_scores(matrix: torch.Tensor, proximity: int = PROXIMITY_IGNORE) -> torch.Tensor:
    """``(..., S)``: the mean of ``matrix[..., i, j]`` over ``i >= j + proximity`` for each step
    ``j`` (Thought Anchors' vertical score); NaN for a step with no such ``i``."""
    n = matrix.shape[-1]
    index = torch.arange(n)
    later = (index[:, None] >= index[None, :] + proximity).to(matrix.dtype)  # [i, j]
    counts = later.sum(0)
    sums = (matrix * later).sum(-2)
    return torch.where(counts > 0, sums / counts.clamp_min(1), torch.nan)


def excess_kurtosis(values: torch.Tensor) -> torch.Tensor:
    """Excess kurtosis over the last axis, NaNs left out: ``m4 / m2^2 - 3`` with the biased
    central moments (scipy's default, which Thought Anchors uses); NaN with fewer than two
    values or no spread."""
    finite = ~torch.isnan(values)
    count = finite.sum(-1)
    safe = torch.where(finite, values, torch.zeros_like(values))
    mean = safe.sum(-1) / count.clamp_min(1)
    centred = torch.where(finite, values - mean[..., None], torch.zeros_like(values))
    m2 = (centred**2).sum(-1) / count.clamp_min(1)
    m4 = (centred**4).sum(-1) / count.clamp_min(1)
    kurtosis = m4 / m2**2 - 3.0
    return torch.where((count >= 2) & (m2 > 0), kurtosis, torch.nan)


def thought_anchors_receiver_heads(
    model: PreTrainedModel,
    traces: Sequence[Trace],
    top_k: int = THOUGHT_ANCHORS_TOP_K,
    proximity: int = PROXIMITY_IGNORE,
    layers: Sequence[int] | None = None,
) -> list[tuple[int, int]]:
    """Thought Anchors' receiver heads: the ``top_k`` (layer, head) pairs whose vertical scores
    have the highest kurtosis across steps, averaged over ``traces`` (module docstring).

    A trace whose kurtosis is undefined for a head (too few steps) does not count for it;
    ``layers`` limits the candidates.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    per_trace = [
        excess_kurtosis(vertical_scores(step_attention_matrix(model, trace), proximity))
        for trace in traces
        if len(trace.steps) >= proximity + 2  # at least two steps with a vertical score
    ]
    if not per_trace:
        raise ValueError(
            f"no trace with at least {proximity + 2} steps to calibrate receiver heads on"
        )
    mean = torch.stack(per_trace).nanmean(0)  # (layers, heads)
    allowed = torch.full_like(mean, -math.inf)
    chosen = list(range(mean.shape[0])) if layers is None else list(layers)
    allowed[chosen] = torch.nan_to_num(mean[chosen], nan=-math.inf)
    order = torch.argsort(allowed.flatten(), descending=True, stable=True)
    order = order[: min(top_k, len(chosen) * mean.shape[1])]
    heads = mean.shape[1]
    return [(int(i) // heads, int(i) % heads) for i in order]


def calibrate_receiver_heads(
    model: PreTrainedModel,
    traces: Sequence[Trace],
    fmt: ChatFormat | None,
    top_k: int = 8,
    scorer: AttentionScorer | None = None,
    criterion: Criterion = "entropy",
) -> list[tuple[int, int]]:
    """The ``top_k`` (layer, head) pairs whose attention over steps is the most concentrated
    on average over ``traces`` (see the module docstring), best first.

    ``scorer`` sets the queries, sink handling and aggregation whose attention is measured, and
    its ``layers`` limit the candidates (default: ``attention`` with its default options).
    ``criterion="kurtosis"``: Thought Anchors' criterion instead
    (:func:`thought_anchors_receiver_heads`; every step token queries, ``scorer``'s layers
    only limit the candidates).
    """
    from stepprune.scorers.attention import AttentionScorer, _parse_layers

    scorer = scorer or AttentionScorer()
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if criterion == "kurtosis":
        num_layers = model.config.get_text_config().num_hidden_layers
        layers = _parse_layers(scorer.layers, num_layers)
        return thought_anchors_receiver_heads(model, traces, top_k, layers=layers)
    total, used = None, 0
    for trace in traces:
        if len(trace.steps) < 2:
            continue
        concentration = head_concentration(scorer.step_mass(model, trace, fmt))
        total = concentration if total is None else total + concentration
        used += 1
    if total is None:
        raise ValueError("no trace with at least 2 steps to calibrate receiver heads on")
    mean = total / used
    allowed = torch.full_like(mean, math.inf)
    layers = _parse_layers(scorer.layers, mean.shape[0])
    allowed[layers] = mean[layers]
    order = torch.argsort(allowed.flatten())[: min(top_k, len(layers) * mean.shape[1])]
    heads = mean.shape[1]
    return [(int(i) // heads, int(i) % heads) for i in order]


def save_receiver_heads(
    path: Path | str,
    heads: Sequence[tuple[int, int]],
    num_layers: int,
    num_heads: int,
    scorer: str = "",
    traces: int = 0,
    criterion: Criterion = "entropy",
) -> None:
    """Write the calibration file (the module docstring's format)."""
    data = {
        "heads": [[int(layer), int(head)] for layer, head in heads],
        "num_layers": int(num_layers),
        "num_heads": int(num_heads),
        "scorer": scorer,
        "traces": int(traces),
        "criterion": KURTOSIS_CRITERION if criterion == "kurtosis" else CRITERION,
    }
    Path(path).write_text(json.dumps(data, indent=2) + "\n")


def load_receiver_heads(path: Path | str) -> list[tuple[int, int]]:
    """The (layer, head) pairs of a calibration file, in its order.

    Raises:
        ValueError: the file is missing, not JSON, or holds no valid ``heads`` list.
    """
    try:
        data = json.loads(Path(path).read_text())
    except OSError as error:
        raise ValueError(
            f"cannot read receiver-head file {str(path)!r}: {error.strerror}"
        ) from None
    except json.JSONDecodeError as error:
        raise ValueError(f"receiver-head file {str(path)!r} is not JSON: {error}") from None
    heads = data.get("heads") if isinstance(data, dict) else None
    valid = isinstance(heads, list) and heads
    valid = valid and all(
        isinstance(p, list) and len(p) == 2 and all(type(x) is int and x >= 0 for x in p)
        for p in heads
    )
    if not valid:
        raise ValueError(
            f"receiver-head file {str(path)!r}: 'heads' must be a non-empty list of "
            "[layer, head] pairs of non-negative integers"
        )
    pairs = [(layer, head) for layer, head in heads]
    if len(set(pairs)) != len(pairs):
        raise ValueError(f"receiver-head file {str(path)!r}: a head is listed twice")
    return pairs


def calibrate_run(
    run_dir: Path | str,
    out: Path | str,
    top_k: int = 8,
    scorer: str = "attention",
    device: str = "auto",
    dtype: str = "auto",
    criterion: Criterion = "entropy",
) -> list[tuple[int, int]]:
    """Calibrate receiver heads on the traces of a run folder with the run's model, and save
    them to ``out`` (``stepprune calibrate``). ``scorer``: an attention spec whose queries,
    sink handling, aggregation and layers the calibration uses (its ``heads`` is ignored);
    ``criterion``: ``entropy`` or Thought Anchors' ``kurtosis``."""
    if criterion not in ("entropy", "kurtosis"):
        raise ValueError(f"--criterion {criterion!r}: use entropy or kurtosis")
    from stepprune.models import load_model
    from stepprune.registry import SpecError
    from stepprune.runfolder import load_run, run_file_in_the_way
    from stepprune.scorers.attention import AttentionScorer
    from stepprune.scorers.base import SCORERS

    # --out is checked first, before the model is loaded and the heads are measured.
    if Path(out).is_dir():
        raise ValueError(f"--out {out}: is a folder; give a file name such as {out}/heads.json")
    run_folder = run_file_in_the_way(out)
    if run_folder is not None:
        raise ValueError(f"--out {out}: is a file of the run folder {run_folder}; not overwritten")
    attention = SCORERS.build(scorer)
    if not isinstance(attention, AttentionScorer):
        raise SpecError(f"--scorer {scorer!r}: calibration measures an attention scorer's heads")
    run = load_run(run_dir)
    traces = [t for t in run.traces if len(t.steps) >= 2]
    if not traces:
        raise ValueError(f"{run_dir}: no trace with at least 2 steps to calibrate on")
    model, tokenizer = load_model(run.model, device, dtype)
    attention.check_model(model.config)
    heads = calibrate_receiver_heads(
        model, traces, ChatFormat.from_tokenizer(tokenizer), top_k, attention, criterion
    )
    text = model.config.get_text_config()
    save_receiver_heads(
        out,
        heads,
        text.num_hidden_layers,
        text.num_attention_heads,
        attention.spec,
        len(traces),
        criterion,
    )
    return heads
