"""``stepprune bench pipeline``: the experiment's stages on a described workload, counted.

For each stage (``traces``, ``scoring``, ``text``, ``kv``, ``online``, ``grading``) it reports
wall seconds, sequential forward passes (calls of the model's ``forward``: one decode step of a
batch is one) and mean rows per forward, and with a per-forward latency (``step_ms``) the
projected time of the same forwards. ``kv_unbatched`` is kv mode before batching (one keep mask
at a time), for the before/after comparison. kv mode batches the masks of several traces
(``kvunits.pack``) in chunks of ``stages.EVALUATE_CHUNK`` traces, as many per batch as the cache
budget (``kv_batch_mib``) of the model being measured holds, the stand-in's too: the dry run
packs by the replaced model's cache, so its counts are the real model's.

Lengths are forced so that random-weight models (which never stop) and real ones do the same
work: traces are sampled to exactly ``tokens`` new tokens (no end-of-sequence id), answers run to
exactly ``answer_tokens``, and online mode generates ``tokens`` tokens per threshold with a
checkpoint every ``interval`` tokens. Online mode runs the thresholds of several traces as rows
of one generation (``modes.online_batch``), chunks of ``stages.EVALUATE_CHUNK`` traces packed
into batches by ``online_batch_mib`` of the measured model's cache, as ``stepprune run`` does.
Re-evaluation and scoring run on a synthetic trace of ``tokens`` reasoning tokens
(``bench.common.synthetic_trace``) cut into 40-token steps.

Stages are run for ``measure`` traces (trace generation: ``measure`` batches) and scaled to the
workload's trace count: with forced lengths every trace (every full batch) does the same forwards.
``dry_run`` swaps the model for a one-layer, one-head random-weight stand-in with a 64-id
vocabulary (it reads the tokenizer's ids modulo 64): with forced lengths the counts depend neither
on the model's size nor on its vocabulary. Trace generation and online mode, which decode
``tokens`` tokens one forward at a time, then run at two short lengths (2 and 4 checkpoint
intervals) and are extrapolated to ``tokens`` (``extrapolate``; their forwards are affine in the
length; a checkpoint's probe rides in its token's forward, ``tests/test_online_batch.py``), so
the seed's counts come in seconds. A dry run's seconds are the stand-in's (None where
extrapolated): read its ``forwards`` and ``projected_seconds``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from stepprune.bench.common import synthetic_trace
from stepprune.context import closing_ids
from stepprune.decoding import SamplingConfig, StopRule
from stepprune.engines.hf import DEFAULT_BATCH_SIZE, HFEngine
from stepprune.kvcache import decode_greedy, prefill
from stepprune.kvunits import DEFAULT_BATCH_MIB, UnitRows, budget_entries, decode_units, pack
from stepprune.modes.kv import kept_entries
from stepprune.modes.online import ONLINE_BATCH_MIB, OnlineConfig
from stepprune.modes.online_batch import OnlineTask, pack_units, row_width, run_rows
from stepprune.session import Session
from stepprune.stages import EVALUATE_CHUNK

STAGES = ("traces", "scoring", "text", "kv", "online", "grading")


@dataclass(frozen=True)
class Workload:
    """What the experiment runs: ``problems`` x ``samples`` traces of ``tokens`` reasoning
    tokens, ``thresholds`` keep masks plus the random control per trace (text, kv), answers of
    ``answer_tokens``, online checkpoints every ``interval`` tokens."""

    problems: int = 2
    samples: int = 2
    tokens: int = 256
    thresholds: int = 6
    answer_tokens: int = 16
    interval: int = 256
    batch: int = DEFAULT_BATCH_SIZE  # hf engine rows per generate call

    @property
    def traces(self) -> int:
        return self.problems * self.samples


# The seed's experiment: AIME 2024 (30 problems) x 4 samples, ~12k-token traces, 6 thresholds.
WORKLOADS = {"seed": Workload(30, 4, 12288, 6, 512, 256)}


def parse_workload(text: str) -> Workload:
    """``seed``, or ``PxSxT[xK[xA]]``: problems, samples, reasoning tokens, thresholds, answer
    tokens (e.g. ``4x2x2048x6x64``)."""
    if text in WORKLOADS:
        return WORKLOADS[text]
    try:
        numbers = [int(part) for part in text.split("x")]
    except ValueError:
        numbers = []
    if not 3 <= len(numbers) <= 5 or min(numbers) < 1:
        raise ValueError(
            f"--workload {text!r}: use {', '.join(WORKLOADS)} or PxSxT[xK[xA]] "
            "(problems x samples x tokens x thresholds x answer tokens), all >= 1"
        )
    return Workload(*numbers)


class ForwardCounter:
    """Counts calls of ``model.forward`` and the rows (batch size) of each."""

    def __init__(self, model: PreTrainedModel) -> None:
        self.forwards = self.rows = 0
        self.handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        self.forwards += 1
        self.rows += int(ids.shape[0]) if ids is not None else 1


# The stand-in's vocabulary: counts do not depend on it, but sampling cost does (a top-p sort
# and a draw over the vocabulary per row and token: over 49k ids that was 90% of a dry run).
STAND_IN_VOCAB = 64


class WrappedEmbedding(torch.nn.Embedding):
    """An embedding that reads any id modulo its size, so the stand-in takes the real
    tokenizer's ids (prompts, cues, probes) while it samples from ``STAND_IN_VOCAB`` ids."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return super().forward(ids % self.num_embeddings)


def stand_in(model: PreTrainedModel) -> PreTrainedModel:
    """A one-layer, one-head, 8-wide random-weight model with a ``STAND_IN_VOCAB``-id vocabulary
    (``--dry-run``). It samples ids 0-63: below R1's special ids; SmolLM2's specials (0-16) are
    among them, harmless because the dry run's stop lists are empty."""
    config = AutoConfig.for_model(
        "qwen2",
        vocab_size=STAND_IN_VOCAB,
        # One 8-wide head: attention over a 12k-token cache of 48 rows stays cheap.
        hidden_size=8,
        intermediate_size=8,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
        max_position_embeddings=1 << 17,
        tie_word_embeddings=False,
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    small = AutoModelForCausalLM.from_config(config).eval()
    wrapped = WrappedEmbedding(STAND_IN_VOCAB, config.hidden_size)
    wrapped.load_state_dict(small.get_input_embeddings().state_dict())
    small.set_input_embeddings(wrapped)
    return small


def random_weights(config_dir: str, dtype: str, device: str):
    """A model built from ``config_dir``'s ``config.json`` with random weights (``auto``
    device and dtype as for ``load_model``), and the folder's tokenizer."""
    from transformers import AutoTokenizer

    from stepprune.models import _resolve_device, _resolve_dtype

    where = _resolve_device(device)
    config = AutoConfig.from_pretrained(config_dir)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=_resolve_dtype(dtype, where))
    return model.to(where).eval(), AutoTokenizer.from_pretrained(config_dir)


def _measure(model: PreTrainedModel, fn: Callable[[], object], scale: float) -> dict:
    counter = ForwardCounter(model)
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)
    start = time.perf_counter()
    try:
        fn()
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)
    finally:
        counter.handle.remove()
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds * scale,
        "forwards": round(counter.forwards * scale),
        "rows_per_forward": counter.rows / counter.forwards if counter.forwards else 0.0,
        # The device's own step time at this stage's rows (the latency --step-ms stands for).
        "ms_per_forward": 1000 * seconds / counter.forwards if counter.forwards else 0.0,
        "measured_seconds": seconds,
        "scale": scale,
    }


def extrapolate(first: dict, second: dict, lengths: tuple[int, int], tokens: int) -> dict:
    """A stage measured at two forced lengths, extrapolated to ``tokens``: forwards and rows
    are affine in the length (``_measure``'s fields, ``rows_per_forward`` recomputed from the
    extrapolated rows). Time is not (attention grows with the cache), so ``seconds`` and
    ``ms_per_forward`` are None; ``measured_seconds`` is the two short runs' and
    ``extrapolated_from`` names their lengths."""
    share = (tokens - lengths[0]) / (lengths[1] - lengths[0])

    def line(a: float, b: float) -> float:
        return a + (b - a) * share

    forwards = round(line(first["forwards"], second["forwards"]))
    rows = line(*(s["rows_per_forward"] * s["forwards"] for s in (first, second)))
    return {
        "seconds": None,
        "forwards": forwards,
        "rows_per_forward": rows / forwards if forwards else 0.0,
        "ms_per_forward": None,
        "measured_seconds": first["measured_seconds"] + second["measured_seconds"],
        "scale": second["scale"],
        "extrapolated_from": list(lengths),
    }


def run_pipeline_bench(
    model: PreTrainedModel,
    tokenizer,
    workload: Workload,
    step_ms: float | None = None,
    measure: int = 1,
    dry_run: bool = False,
    threads: int = 1,
    kv_batch_mib: int = DEFAULT_BATCH_MIB,
    online_batch_mib: int = ONLINE_BATCH_MIB,
) -> dict:
    """Measure every stage (see the module docstring); returns the JSON object. ``threads``
    pins torch's CPU threads (0: leave torch's default): on a shared machine more threads than
    free cores park and run several times slower."""
    if threads:
        torch.set_num_threads(threads)
    # kv mode packs traces by the cache of the model measured, not by the stand-in's.
    kv_capacity = budget_entries(model.config, model.dtype, kv_batch_mib)
    online_capacity = budget_entries(model.config, model.dtype, online_batch_mib)
    if dry_run:
        model = stand_in(model)
    session = Session(model, tokenizer, scorer="attention", policy="percentile")
    trace = synthetic_trace(tokenizer, workload.tokens + 8)
    measure = max(1, min(measure, workload.traces))
    per_trace = workload.traces / measure
    never = StopRule(tokenizer, [], box_prefix=None)
    rng = np.random.default_rng(0)
    thresholds = np.linspace(0.0, 0.5, workload.thresholds).tolist()
    scores = rng.random(len(trace.steps))
    masks = list(session.keep_masks(scores, thresholds))
    masks.append(tuple(bool(b) for b in rng.random(len(trace.steps)) < 0.7))  # the control
    distinct = list(dict.fromkeys(masks))
    pad = session.pad_id
    stages: dict[str, dict] = {}

    # Traces: the hf engine (continuous batching), every row forced to ``tokens`` new tokens.
    engine = HFEngine(model, tokenizer, [], pad, workload.batch)
    rows = min(workload.batch, workload.traces)
    batches = math.ceil(workload.traces / workload.batch)
    sampling = SamplingConfig(max_new_tokens=workload.tokens, temperature=1.0, top_p=0.95)
    prompts = [trace.prompt_ids] * rows
    run_batches = min(measure, batches)

    def traces_stage(tokens: int) -> dict:
        forced = replace(sampling, max_new_tokens=tokens)
        return _measure(
            model,
            lambda: [engine.sample(prompts, list(range(rows)), forced) for _ in range(run_batches)],
            batches / run_batches,
        )

    def each(fn: Callable[[], object]) -> Callable[[], None]:
        return lambda: [fn() for _ in range(measure)]

    stages["scoring"] = _measure(
        model, each(lambda: session.scorer.score(model, trace, session.format)), per_trace
    )
    contexts = [
        trace.all_ids[: trace.reasoning_end]
        if all(keep)
        else [trace.all_ids[p] for p in np.flatnonzero(kept_entries(trace, keep).numpy())]
        + closing_ids(session.format, trace, keep)
        for keep in distinct
    ]
    stages["text"] = _measure(
        model,
        each(lambda: engine.greedy(contexts, workload.answer_tokens, box_prefix=None)),
        per_trace,
    )
    cues = [closing_ids(session.format, trace, keep) for keep in distinct]
    entries = [kept_entries(trace, keep) for keep in distinct]

    def kv_unbatched() -> None:
        full, _ = prefill(model, trace.all_ids[: trace.reasoning_end])
        for e, cue in zip(entries, cues, strict=True):
            decode_greedy(model, full.gather(e), cue, workload.answer_tokens, never)

    # kv mode: chunks of EVALUATE_CHUNK traces, each packed into batches within the budget.
    unit = UnitRows(trace.all_ids[: trace.reasoning_end], entries, cues)
    chunks = [
        min(EVALUATE_CHUNK, workload.traces - b) for b in range(0, workload.traces, EVALUATE_CHUNK)
    ]
    groups = [len(g) for n in chunks for g in pack([unit] * n, kv_capacity, workload.answer_tokens)]
    run_groups = groups[: max(1, min(measure, len(groups)))]
    stages["kv"] = _measure(
        model,
        lambda: [
            decode_units(model, [unit] * n, lambda state, _: state, workload.answer_tokens, never)
            for n in run_groups
        ],
        len(groups) / len(run_groups),
    )
    stages["kv"]["traces_per_batch"] = max(groups)
    kv_before = _measure(model, each(kv_unbatched), per_trace)

    # Online mode: the thresholds of a chunk's traces generate as rows of batches, as many
    # traces per batch as the mode's cache budget holds (of the model measured, as for kv).
    online_session = Session(model, tokenizer, scorer="attention:query=probe", policy="percentile")
    online_session.eos_ids = []  # forced length
    online_sampling = replace(sampling, top_p=1.0)
    online_configs = [
        OnlineConfig(online_session.policy, t, interval=workload.interval) for t in thresholds
    ]
    online_width = row_width(OnlineTask(trace.prompt_ids, online_configs[0], 0), online_sampling, 0)
    online_groups = [
        len(group)
        for begin in range(0, workload.traces, EVALUATE_CHUNK)
        for group in pack_units(
            [(len(online_configs), online_width)] * min(EVALUATE_CHUNK, workload.traces - begin),
            online_capacity,
        )
    ]
    run_online = online_groups[: max(1, min(measure, len(online_groups)))]

    def online_stage(tokens: int) -> dict:
        forced = replace(online_sampling, max_new_tokens=tokens)

        def online(traces: int) -> None:
            tasks = [
                OnlineTask(trace.prompt_ids, config, seed)
                for seed in range(traces)  # one seed per trace, as sample_seed gives
                for config in online_configs
            ]
            run_rows(online_session, tasks, forced)

        return _measure(
            model, lambda: [online(n) for n in run_online], len(online_groups) / len(run_online)
        )

    # Trace generation and online mode decode ``tokens`` tokens one forward at a time. A dry
    # run decodes two short lengths instead and extrapolates: with forced lengths their forwards
    # and rows are affine in the length (a prefill, then one forward per token; a checkpoint's
    # probe rides in its token's forward), so the counts are exact (tested against a real run).
    short = (2 * workload.interval, 4 * workload.interval)
    if dry_run and workload.tokens > short[1]:
        for name, stage in (("traces", traces_stage), ("online", online_stage)):
            stages[name] = extrapolate(stage(short[0]), stage(short[1]), short, workload.tokens)
    else:
        stages["traces"] = traces_stage(workload.tokens)
        stages["online"] = online_stage(workload.tokens)
    stages["online"]["traces_per_batch"] = max(online_groups)

    from stepprune.grading import Grader

    answers = [f"The answer is \\boxed{{{i}}}." for i in range(len(masks))]
    with Grader() as grader:
        stages["grading"] = _measure(
            model, each(lambda: [grader.grade("3", a) for a in answers]), per_trace
        )
    stages = {name: stages[name] for name in STAGES}
    for stage in [*stages.values(), kv_before]:
        if step_ms is not None:
            stage["projected_seconds"] = stage["forwards"] * step_ms / 1000
    return {
        "workload": asdict(workload) | {"traces": workload.traces},
        "masks_per_trace": len(distinct),
        "dry_run": dry_run,
        "measured_traces": measure,
        "step_ms": step_ms,
        "device": str(model.device),
        "dtype": str(model.dtype),
        "threads": torch.get_num_threads(),
        "stages": stages,
        "kv_unbatched": kv_before,
    }
