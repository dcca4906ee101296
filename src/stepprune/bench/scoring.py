"""``stepprune bench scoring``: exactness, speed and memory of attention scoring at length N.

In one run on one model it measures: the largest absolute difference between captured scores and
eager ``output_attentions`` (where eager fits), the time of scoring over a plain forward pass,
the time of eager over scoring, and the peak memory of each. Timings are medians of repeats.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from stepprune.bench import SCORING_MIN_TOKENS
from stepprune.bench.common import paired_seconds, peak_mb, seconds, synthetic_trace
from stepprune.scorers.attention import key_buckets, step_attention_mass

# Eager keeps layers x heads x N x N float32 weights; skip it above this estimate.
DEFAULT_EAGER_LIMIT_GB = 8.0


@dataclass
class ScoringBench:
    """JSON keys of ``stepprune bench scoring --json``."""

    tokens: int
    max_abs_diff: float | None
    scoring_over_forward: float
    eager_over_scoring: float | None
    peak_mb_scoring: float
    peak_mb_eager: float | None
    peak_mb_forward: float
    seconds_forward: float
    seconds_scoring: float
    seconds_eager: float | None
    device: str

    def to_json(self) -> dict:
        return asdict(self)


def run_scoring_bench(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    tokens: int,
    repeats: int = 5,
    eager_limit_gb: float = DEFAULT_EAGER_LIMIT_GB,
) -> ScoringBench:
    """Measure last-token step scoring (the default attention scorer) at ``tokens`` tokens, on
    ``bench.common.synthetic_trace``."""
    if tokens < SCORING_MIN_TOKENS:
        raise ValueError(f"--tokens must be >= {SCORING_MIN_TOKENS}, got {tokens}")
    device = model.device
    trace = synthetic_trace(tokenizer, tokens)
    ids = trace.all_ids
    input_ids = torch.tensor([ids], device=device)
    buckets, num_buckets = key_buckets(trace, len(ids), sink_tokens=0)

    def forward() -> None:
        with torch.inference_mode():
            model(input_ids=input_ids, use_cache=False, logits_to_keep=1)

    def scoring() -> torch.Tensor:
        return step_attention_mass(model, ids, [len(ids) - 1], buckets, num_buckets)

    timing = paired_seconds(forward, scoring, repeats, device)
    peak_forward, peak_scoring = peak_mb(forward, device), peak_mb(scoring, device)

    config = model.config
    eager_gb = config.num_hidden_layers * config.num_attention_heads * tokens**2 * 4 / 2**30
    max_abs_diff = seconds_eager = peak_eager = None
    if eager_gb <= eager_limit_gb:
        captured = scoring()
        result: dict[str, tuple] = {}

        previous = config._attn_implementation

        def eager() -> None:
            config._attn_implementation = "eager"
            try:
                with torch.inference_mode():
                    result["attn"] = model(input_ids=input_ids, output_attentions=True).attentions
            finally:
                config._attn_implementation = previous

        eager()  # warm-up
        seconds_eager = seconds(eager, device)
        peak_eager = peak_mb(eager, device)
        last_rows = torch.stack([a[0, :, -1, :].float() for a in result.pop("attn")]).cpu()
        reference = torch.zeros(last_rows.shape[:2] + (num_buckets,)).index_add_(
            2, buckets, last_rows
        )
        max_abs_diff = float((captured[:, :, 0, :] - reference).abs().max())
    return ScoringBench(
        tokens=tokens,
        max_abs_diff=max_abs_diff,
        scoring_over_forward=timing.ratio,
        eager_over_scoring=None if seconds_eager is None else seconds_eager / timing.median_second,
        peak_mb_scoring=peak_scoring,
        peak_mb_eager=peak_eager,
        peak_mb_forward=peak_forward,
        seconds_forward=timing.median_first,
        seconds_scoring=timing.median_second,
        seconds_eager=seconds_eager,
        device=str(device),
    )
