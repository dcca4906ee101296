"""The experiment, end to end: generate, segment, score, prune, re-evaluate, grade, report.

    Problem -> Trace -> Steps -> importances -> keep masks -> Answers -> Records -> summary

Each finished trace and its records are appended to the run folder before the next problem
starts, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import platform
import sys
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import stepprune
from stepprune.generation import (
    SamplingConfig,
    build_trace,
    generate_outputs,
    teacher_forced_output,
)
from stepprune.grading import Grader
from stepprune.kvcache import POSITION_SCHEMES
from stepprune.models import ChatFormat, eos_token_ids, load_model
from stepprune.online import OnlineConfig, OnlinePruner
from stepprune.problems import dataset_name, load_problems
from stepprune.pruning import POLICIES, PruningPolicy
from stepprune.reeval import generate_answers, text_context
from stepprune.reeval_kv import kv_answers
from stepprune.report import (
    pick_trace_for_plot,
    plot_importance,
    print_summary_table,
    results_markdown,
    summarize,
)
from stepprune.schema import Problem, Record, Step, Trace
from stepprune.scorers import SCORERS, Scorer
from stepprune.steps import (
    DEFAULT_MIN_STEP_CHARS,
    SEGMENTERS,
    attach_labels,
    segment_paragraphs,
)
from stepprune.store import CONTROL_SCORER, RunStore, threshold_key, write_atomic

DEFAULT_THRESHOLDS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
MODES = ("text", "kv", "online")
# Online mode always scores by the probe's attention, at each checkpoint, over cached steps.
ONLINE_SCORER = "attention:query=probe,online"


@dataclass
class RunConfig:
    """Every setting of a run; written to ``config.json``."""

    model: str = "bundled"
    dataset: str = "planted"
    data_dir: str | None = None
    limit: int | None = None
    samples: int = 1
    thresholds: list[float] = field(default_factory=lambda: list(DEFAULT_THRESHOLDS))
    max_new_tokens: int = 32768
    temperature: float = 0.6
    top_p: float = 0.95
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"
    load_in_4bit: bool = False
    scorer: str = "attention"
    policy: str = "percentile"
    mode: str = "text"
    answer_max_tokens: int = 512
    min_step_chars: int = DEFAULT_MIN_STEP_CHARS
    segmenter: str = "paragraph"
    positions: str = "original"
    interval: int = 0
    budget: int | None = None
    control: bool = True
    grade_timeout: float = 10.0
    out: str | None = None

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ValueError(f"--samples must be >= 1, got {self.samples}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be >= 1, got {self.limit}")
        if self.answer_max_tokens < 1:
            raise ValueError(f"--answer-max-tokens must be >= 1, got {self.answer_max_tokens}")
        if not self.thresholds:
            raise ValueError("--thresholds: give at least one threshold")
        for t in self.thresholds:
            if not 0.0 <= t < 1.0:
                raise ValueError(f"--thresholds: {t} is outside [0, 1)")
        if self.segmenter not in SEGMENTERS:
            raise ValueError(f"--segmenter {self.segmenter!r}: choose from {', '.join(SEGMENTERS)}")
        if self.mode not in MODES:
            raise ValueError(f"--mode {self.mode!r}: choose from {', '.join(MODES)}")
        if self.mode == "online" and self.positions != "original":
            raise ValueError("--mode online keeps original positions; drop --positions")
        if self.positions not in POSITION_SCHEMES:
            raise ValueError(
                f"--positions {self.positions!r}: choose from {', '.join(POSITION_SCHEMES)}"
            )
        self.thresholds = sorted({float(t) for t in self.thresholds})

    def output_dir(self) -> Path:
        """``--out``, or ``runs/<dataset>-<model>`` named from the config."""
        if self.out:
            return Path(self.out)
        model = Path(self.model.rstrip("/")).name.removesuffix(".gguf")
        return Path("runs") / f"{dataset_name(self.dataset)}-{model}"

    def identity(self) -> dict[str, Any]:
        """Settings that must match to resume in an existing run folder."""
        # Not the scorer, thresholds, samples or limit: traces are reused across those.
        keys = ["model", "dataset", "max_new_tokens", "temperature", "top_p", "seed"]
        keys += ["policy", "mode", "answer_max_tokens", "min_step_chars", "segmenter"]
        keys += ["load_in_4bit", "positions", "interval", "budget"]
        return {k: getattr(self, k) for k in keys}


def _environment() -> dict[str, str]:
    return {
        "stepprune": stepprune.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


def _problem_seed(seed: int, problem_id: str) -> int:
    """Seed of one problem's samples, independent of the order problems run in."""
    return zlib.crc32(f"{seed}:{problem_id}".encode())


@dataclass
class Outcome:
    """A re-evaluated answer before grading: the steps it came from and which were kept."""

    steps: list[Step]
    keep: list[bool]
    answer_ids: list[int]
    answer_truncated: bool
    context_tokens: int
    extra: dict[str, Any] = field(default_factory=dict)


class Experiment:
    """Holds the loaded model and strategies; ``run`` processes a list of problems."""

    def __init__(self, config: RunConfig, console: Console | None = None) -> None:
        self.config = config
        self.console = console or Console(stderr=True)
        self.scorer: Scorer = SCORERS.build(config.scorer)
        self.policy: PruningPolicy = POLICIES.build(config.policy)
        self.sampling = SamplingConfig(config.max_new_tokens, config.temperature, config.top_p)

    def load(self) -> None:
        cfg = self.config
        started = time.perf_counter()
        with self.console.status(f"loading model {cfg.model} ..."):
            self.model, self.tokenizer = load_model(
                cfg.model, cfg.device, cfg.dtype, cfg.load_in_4bit
            )
        self.format = ChatFormat.from_tokenizer(self.tokenizer)
        self.eos_ids = eos_token_ids(self.model, self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id
        kind = "thinking" if self.format.is_thinking else "non-thinking"
        self.console.print(
            f"model {cfg.model}: {kind}, {self.model.config.num_hidden_layers} layers, "
            f"{self.model.device}, {self.model.dtype}, "
            f"loaded in {time.perf_counter() - started:.0f} s"
        )

    # -- stages -------------------------------------------------------------------------------

    def make_traces(self, problem: Problem, samples: list[int], grader: Grader) -> list[Trace]:
        """Generate (or teacher-force) the given samples of a problem; segment, score, grade."""
        prompt = self.format.prompt_ids(problem.problem)
        if problem.reasoning is not None:
            output = teacher_forced_output(self.format, problem, prompt, self.eos_ids[0])
            outputs = [output] * self.config.samples
        else:
            seed = _problem_seed(self.config.seed, problem.id)
            outputs = generate_outputs(
                self.model, prompt, self.config.samples, self.sampling, seed, self.pad_id
            )
        traces = []
        for sample in samples:
            trace = build_trace(
                self.format,
                problem,
                sample,
                prompt,
                outputs[sample],
                self.eos_ids,
                teacher_forced=problem.reasoning is not None,
            )
            trace.steps = segment_paragraphs(
                self.tokenizer,
                trace.all_ids,
                trace.reasoning_start,
                trace.reasoning_end,
                self.config.min_step_chars,
                self.config.segmenter,
            )
            attach_labels(trace.steps, problem.step_labels)
            for step, importance in zip(
                trace.steps,
                self.scorer.score(self.model, trace, self.format, problem.answer),
                strict=True,
            ):
                step.importance = importance
            trace.scorer = self.scorer.spec
            grade = grader.grade(problem.answer, trace.original_answer)
            trace.original_prediction, trace.original_correct = grade.prediction, grade.correct
            traces.append(trace)
        return traces

    @property
    def scorer_spec(self) -> str:
        return ONLINE_SCORER if self.config.mode == "online" else self.scorer.spec

    @property
    def control_spec(self) -> str | None:
        """The random control's spec, or None when there is none (online mode, --no-control)."""
        if not self.config.control or self.config.mode == "online":
            return None
        return f"{CONTROL_SCORER}:seed={self.config.seed}"

    def control_mask(self, trace: Trace, threshold: float, kept: int) -> tuple[bool, ...]:
        """``kept`` steps chosen at random, seeded by run seed, trace and threshold: the control
        keeps as many steps as the scorer does at that threshold."""
        key = f"{self.config.seed}:{trace.problem_id}:{trace.sample}:{threshold_key(threshold)}"
        chosen = np.random.default_rng(zlib.crc32(key.encode())).permutation(len(trace.steps))
        keep = np.zeros(len(trace.steps), dtype=bool)
        keep[chosen[:kept]] = True
        return tuple(keep.tolist())

    def make_records(
        self, problem: Problem, trace: Trace, importances: list[float], grader: Grader
    ) -> list[Record]:
        """Prune at every threshold (and the random control) and re-evaluate in the configured
        mode.

        All thresholds are always computed together, so the batches of greedy answers, and
        hence the answers, do not depend on which records a resumed run still lacks.
        """
        thresholds = self.config.thresholds
        if self.config.mode == "online":
            return [
                self._record(problem, trace, t, self._online_outcome(problem, trace, t), grader)
                for t in thresholds
            ]
        masks = [tuple(self.policy.keep(importances, t)) for t in thresholds]
        runs = [(self.scorer_spec, t, m) for t, m in zip(thresholds, masks, strict=True)]
        if self.control_spec is not None:
            runs += [
                (self.control_spec, t, self.control_mask(trace, t, sum(m)))
                for t, m in zip(thresholds, masks, strict=True)
            ]
        # Greedy answers depend on the kept set only: identical masks share one answer.
        unique = list(dict.fromkeys(mask for _, _, mask in runs))
        answer_of = self._text_outcomes if self.config.mode == "text" else self._kv_outcomes
        by_mask = dict(zip(unique, answer_of(trace, unique), strict=True))
        return [
            self._record(problem, trace, t, by_mask[mask], grader, scorer=spec)
            for spec, t, mask in runs
        ]

    def _text_outcomes(self, trace: Trace, masks: list[tuple[bool, ...]]) -> list[Outcome]:
        contexts = [text_context(self.format, trace, mask) for mask in masks]
        answers = generate_answers(
            self.model,
            contexts,
            self.config.answer_max_tokens,
            self.pad_id,
            self.eos_ids,
            box_stop=(self.tokenizer, self.format.answer_cue_text()),
        )
        return [
            Outcome(trace.steps, list(mask), answer.ids, answer.truncated, len(context))
            for mask, context, answer in zip(masks, contexts, answers, strict=True)
        ]

    def _kv_outcomes(self, trace: Trace, masks: list[tuple[bool, ...]]) -> list[Outcome]:
        results = kv_answers(
            self.model,
            self.format,
            trace,
            [list(m) for m in masks],
            self.config.positions,
            self.config.answer_max_tokens,
            self.eos_ids,
        )
        return [
            Outcome(
                trace.steps,
                list(mask),
                r.answer.ids,
                r.answer.truncated,
                r.context_tokens,
                extra={
                    "positions": self.config.positions,
                    "cache_tokens": r.cache_tokens,
                    "full_cache_tokens": r.full_cache_tokens,
                },
            )
            for mask, r in zip(masks, results, strict=True)
        ]

    def _online_outcome(self, problem: Problem, trace: Trace, threshold: float) -> Outcome:
        """One online generation (teacher-forced for traces that carry their reasoning)."""
        cfg = self.config
        pruner = OnlinePruner(
            self.model,
            self.format,
            OnlineConfig(
                policy=self.policy,
                threshold=threshold,
                budget=cfg.budget,
                interval=cfg.interval,
                min_step_chars=cfg.min_step_chars,
            ),
            self.eos_ids,
        )
        prompt = trace.prompt_ids
        seed = _problem_seed(cfg.seed, problem.id) + trace.sample
        if trace.teacher_forced:
            forced = trace.all_ids[len(prompt) : trace.reasoning_end]
            result = pruner.run(prompt, self.sampling, seed, forced, cfg.answer_max_tokens)
            steps, answer_ids = trace.steps, result.answer_ids
        else:
            result = pruner.run(prompt, self.sampling, seed)
            online = build_trace(
                self.format, problem, trace.sample, prompt, result.output_ids, self.eos_ids, False
            )
            steps = segment_paragraphs(
                self.tokenizer,
                online.all_ids,
                online.reasoning_start,
                online.reasoning_end,
                cfg.min_step_chars,
                cfg.segmenter,
            )
            end = len(online.all_ids) - (1 if online.hit_eos else 0)
            answer_ids = (
                online.all_ids[online.reasoning_end + 1 : end] if online.finished_reasoning else []
            )
        gone = result.evicted_positions
        keep = [not any(p in gone for p in range(s.start, s.end)) for s in steps]
        return Outcome(
            steps,
            keep,
            answer_ids,
            result.answer_truncated,
            result.cache_tokens + result.cue_tokens,
            extra={
                "positions": "original",
                "cache_tokens": result.cache_tokens,
                "full_cache_tokens": result.reasoning_end,
                "online": {
                    "tokens_generated": len(result.output_ids),
                    "peak_cache_tokens": result.peak_cache_tokens,
                    "final_cache_tokens": result.final_cache_tokens,
                    "checkpoints": result.checkpoints,
                    "evictions": result.evictions,
                },
            },
        )

    def _record(
        self,
        problem: Problem,
        trace: Trace,
        threshold: float,
        outcome: Outcome,
        grader: Grader,
        scorer: str | None = None,
    ) -> Record:
        kept = [s for s, k in zip(outcome.steps, outcome.keep, strict=True) if k]
        text = self.format.answer_cue_text() + self.tokenizer.decode(
            outcome.answer_ids, skip_special_tokens=True
        )
        grade = grader.grade(problem.answer, text)
        return Record(
            problem_id=trace.problem_id,
            sample=trace.sample,
            threshold=threshold,
            mode=self.config.mode,
            scorer=scorer or self.scorer_spec,
            policy=self.policy.spec,
            kept_steps=[s.index for s in kept],
            num_steps=len(outcome.steps),
            steps_kept=len(kept),
            reasoning_tokens=sum(s.num_tokens for s in outcome.steps),
            tokens_kept=sum(s.num_tokens for s in kept),
            reasoning_chars=sum(len(s.text) for s in outcome.steps),
            chars_kept=sum(len(s.text) for s in kept),
            context_tokens=outcome.context_tokens,
            answer_text=text,
            answer_tokens=len(outcome.answer_ids),
            answer_truncated=outcome.answer_truncated,
            gold=problem.answer,
            prediction=grade.prediction,
            correct=grade.correct,
            trace_truncated=trace.truncated,
            **outcome.extra,
        )

    # -- orchestration ------------------------------------------------------------------------

    def run(self, problems: list[Problem], store: RunStore) -> dict[str, Any]:
        """Process every problem x sample x threshold not yet in ``store``; write the reports."""
        cfg = self.config
        columns = [
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        ]
        total = len(problems) * cfg.samples
        with (
            Grader(timeout_s=cfg.grade_timeout) as grader,
            Progress(*columns, console=self.console, transient=False) as progress,
        ):
            task = progress.add_task("problems x samples", total=total)
            for problem in problems:
                missing = [s for s in range(cfg.samples) if (problem.id, s) not in store.traces]
                if missing:
                    progress.update(task, description=f"{problem.id}: tracing")
                    for trace in self.make_traces(problem, missing, grader):
                        store.add_trace(trace)
                for sample in range(cfg.samples):
                    trace = store.traces[(problem.id, sample)]
                    importances = store.importances(trace, self.scorer.spec)
                    if importances is None:  # a trace reused from a run with another scorer
                        progress.update(task, description=f"{problem.id}: scoring")
                        importances = self.scorer.score(
                            self.model, trace, self.format, problem.answer
                        )
                        store.add_scores(trace, self.scorer.spec, importances)
                    specs = [s for s in (self.scorer_spec, self.control_spec) if s]
                    done = all(
                        store.has_record(problem.id, sample, t, spec)
                        for t in cfg.thresholds
                        for spec in specs
                    )
                    if not done:
                        progress.update(task, description=f"{problem.id}: re-evaluating")
                        records = self.make_records(problem, trace, importances, grader)
                        store.add_records(
                            [
                                r
                                for r in records
                                if not store.has_record(
                                    r.problem_id, r.sample, r.threshold, r.scorer
                                )
                            ]
                        )
                    progress.advance(task)
        return self.report(problems, store)

    def warn_truncated(self, traces: list[Trace]) -> None:
        truncated = [f"{t.problem_id}#{t.sample}" for t in traces if t.truncated]
        if truncated:
            self.console.print(
                f"[yellow]warning:[/yellow] {len(truncated)} trace(s) stopped at --max-new-tokens "
                f"{self.config.max_new_tokens} before finishing their reasoning (truncated): "
                f"{', '.join(truncated[:8])}{' ...' if len(truncated) > 8 else ''}",
                highlight=False,
                soft_wrap=True,
            )

    def report(self, problems: list[Problem], store: RunStore) -> dict[str, Any]:
        """Write summary.json, results.md and importance.png for the selected units."""
        cfg = self.config
        wanted = {(p.id, s) for p in problems for s in range(cfg.samples)}
        traces = [t for key, t in store.traces.items() if key in wanted]
        thresholds = {threshold_key(t) for t in cfg.thresholds}

        def selected(spec: str | None) -> list[Record]:
            return [
                r
                for (pid, s, t, scorer), r in store.records.items()
                if (pid, s) in wanted and t in thresholds and scorer == spec
            ]

        self.warn_truncated(traces)
        dataset = dataset_name(cfg.dataset)
        summary = summarize(selected(self.scorer_spec), traces, model=cfg.model, dataset=dataset)
        if self.control_spec is not None:
            control = summarize(
                selected(self.control_spec), traces, model=cfg.model, dataset=dataset
            )
            summary["random_control"] = {"scorer": self.control_spec, **control["thresholds"]}
        summary["scorer"] = self.scorer_spec
        summary["policy"] = self.policy.spec
        summary["mode"] = cfg.mode
        write_atomic(store.out / "summary.json", json.dumps(summary, indent=2) + "\n")
        write_atomic(store.out / "results.md", results_markdown(summary))
        trace = pick_trace_for_plot(traces)
        if trace is not None:
            plot_importance(trace, store.out / "importance.png")
        print_summary_table(summary, self.console)
        return summary


def run_experiment(
    config: RunConfig, console: Console | None = None
) -> tuple[dict[str, Any], Path]:
    """Load problems and model, run everything not yet done in the run folder, report."""
    console = console or Console(stderr=True)
    problems = load_problems(
        config.dataset,
        Path(config.data_dir) if config.data_dir else None,
        config.limit,
        seed=config.seed,
    )
    experiment = Experiment(config, console)  # validates scorer and policy before loading
    out = config.output_dir()
    run_config = {"config": asdict(config), "environment": _environment()}
    store = RunStore(out, config.identity(), run_config)
    experiment.load()
    summary = experiment.run(problems, store)
    return summary, out
