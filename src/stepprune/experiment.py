"""The experiment, end to end, in one place: the resume loop of ``stepprune run``.

    Problem -> Trace -> Steps -> importances -> keep masks -> Outcomes -> Records -> summary
    (session.traces)            (scorer)       (policy)      (mode)      (to_record) (reporting)

Everything is checked before anything is loaded or written (a scorer that depends on the
model, such as ``attention:layers=0+99``, against the config read from the model's files); then
the run folder is locked, the model is loaded and checked again (layers; every prompt against
the model's context) before config.json is written, and each finished trace and its records are
appended before the next unit starts, so an interrupted run resumes where it stopped. A folder
with nothing left to do is summarised without loading the model.
"""

from __future__ import annotations

import importlib.util
import platform
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
import transformers
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import stepprune
from stepprune.config import RunConfig
from stepprune.decoding import SamplingConfig
from stepprune.engines import Engine, VLLMEngine
from stepprune.engines.vllm import vllm_python
from stepprune.grading import Grader
from stepprune.models import (
    ModelLoadError,
    check_model_options,
    resolve_model_source,
    resolved_dtype,
)
from stepprune.modes import MODES
from stepprune.policies import POLICIES
from stepprune.problems import load_problems
from stepprune.reporting.run_outputs import write_run_outputs
from stepprune.runfolder import RunFolder, RunFolderError
from stepprune.runner import UnitResult, build_mode, control_of
from stepprune.schema import Problem, Trace
from stepprune.scorers import SCORERS, Scorer
from stepprune.session import sample_seed
from stepprune.workers import LocalPool, RayPool, open_pool

Pool = LocalPool | RayPool

# Units per engine call while tracing: large enough to batch, small enough to resume often.
TRACE_CHUNK = 8
# Units whose answers one driver-side engine call decodes (vLLM): its batch, and how much work a
# killed run can lose.
ANSWER_CHUNK = 64


def _environment() -> dict[str, str]:
    return {
        "stepprune": stepprune.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


class Experiment:
    """One run: validated strategies, problems and a run folder; ``run`` does what is missing."""

    def __init__(self, config: RunConfig, err: Console, out: Console) -> None:
        self.config, self.err, self.out = config, err, out
        # Everything that can be checked without the model is checked here, before any file
        # is written or the model is loaded.
        device = check_model_options(config.device, config.dtype, config.load_in_4bit)
        # Part of the folder's identity: bfloat16 and float32 traces must not mix in one folder.
        self.dtype = "nf4" if config.load_in_4bit else resolved_dtype(config.dtype, device)
        self.scorer: Scorer = SCORERS.build(config.scorer)
        self.policy = POLICIES.build(config.policy)
        self.mode = build_mode(config)
        self.mode.check(self.scorer)
        self.problems = load_problems(
            config.dataset,
            Path(config.data_dir) if config.data_dir else None,
            config.limit,
            seed=config.seed,
        )
        # The control of this scorer: it keeps as many steps as this scorer at each threshold,
        # so its spec names the scorer (another --scorer on the folder gets its own control).
        self.control = control_of(config, self.mode, self.scorer.spec)
        self.units = [(p, s) for p in self.problems for s in range(config.samples)]
        if config.engine == "vllm":
            vllm_python()  # vLLM is there to start, before anything is loaded
        if (config.workers > 1 or config.ray_address) and not importlib.util.find_spec("ray"):
            raise ValueError(
                "--workers and --ray-address need Ray: pip install 'stepprune[ray]' (or make ray)"
            )
        brought = next((p for p in self.problems if p.output_ids is not None), None)
        if brought is not None and (config.samples > 1 or self.mode.name == "online"):
            raise ValueError(
                f"problem {brought.id!r} brings its trace (output_ids): one sample each, "
                "pruned with --mode text or kv (online mode generates its own trace)"
            )

    def _pending(self, folder: RunFolder) -> tuple[list[tuple[Problem, int]], list]:
        """Units without a trace, and units whose scores or records are incomplete."""
        specs = [s for s in (self.scorer.spec, self.control) if s]
        untraced, unfinished = [], []
        for problem, sample in self.units:
            trace = folder.traces.get((problem.id, sample))
            if trace is None:
                untraced.append((problem, sample))
            if (
                trace is None
                or folder.importances(trace, self.scorer.spec) is None
                or not all(
                    folder.has_record(problem.id, sample, t, spec)
                    for t in self.config.thresholds
                    for spec in specs
                )
            ):
                unfinished.append((problem, sample))
        return untraced, unfinished

    def _check_unchanged(self, folder: RunFolder) -> None:
        """Refuse a folder whose traces or records were made from another version of a problem
        (an edited dataset file): reusing them would grade against a stale answer."""
        problems = {p.id: p for p in self.problems}
        for (problem_id, _), trace in folder.traces.items():
            problem = problems.get(problem_id)
            changed_ids = (
                problem is not None
                and problem.output_ids is not None
                and (
                    trace.prompt_ids != problem.prompt_ids or trace.output_ids != problem.output_ids
                )
            )
            if problem is not None and (
                (trace.problem and trace.problem != problem.problem) or changed_ids
            ):
                raise RunFolderError(
                    f"{folder.out}: problem {problem_id!r} differs from the one its traces were "
                    "made from (the dataset changed); use another --out"
                )
        for record in folder.records.values():
            problem = problems.get(record.problem_id)
            if problem is not None and record.gold != problem.answer:
                raise RunFolderError(
                    f"{folder.out}: the answer of problem {record.problem_id!r} is now "
                    f"{problem.answer!r}, its records say {record.gold!r} (the dataset "
                    "changed); use another --out"
                )

    def _check_model_files(self) -> None:
        """Check a scorer that depends on the model (``attention:layers=0+99``) against the
        config read from the model's files, before the folder is opened or weights loaded.

        Only done when the scorer needs it (reading a GGUF's metadata takes seconds). A config
        that cannot be read here is left to ``load_model`` to report, and only if the run has
        work to do: a finished folder is summarised without its model.
        """
        if not getattr(self.scorer, "needs_model_config", False):
            return
        try:
            source, gguf_file = resolve_model_source(self.config.model)
            model_config = transformers.AutoConfig.from_pretrained(source, gguf_file=gguf_file)
        except (ModelLoadError, OSError, ValueError, KeyError):
            return
        check = getattr(self.scorer, "check_model", None)
        if check is not None:
            check(model_config, cached_only=self.mode.decides_online)

    def _check_loaded(self, pool: Pool, untraced: list[tuple[Problem, int]]) -> None:
        """Checks that need the loaded model, made before config.json or any trace is written."""
        problems = list({p.id: p for p, _ in untraced}.values())
        warning = pool.call("check", problems)
        if warning:
            self.err.print(f"[yellow]warning:[/yellow] {warning}", highlight=False, soft_wrap=True)

    def run(self) -> dict[str, Any]:
        """Trace, score, prune and re-evaluate every unit not yet in the run folder; report."""
        cfg = self.config
        run_config = {"config": asdict(cfg), "environment": _environment()}
        identity = {**cfg.identity(), "engine": cfg.engine, "dtype": self.dtype}
        self._check_model_files()
        with RunFolder(cfg.output_dir(), identity, run_config) as folder:
            self._check_unchanged(folder)
            untraced, unfinished = self._pending(folder)
            if unfinished:
                with Grader(timeout_s=cfg.grade_timeout) as grader, ExitStack() as stack:
                    pool = self._open_pool(grader)
                    stack.callback(pool.close)
                    self._check_loaded(pool, untraced)
                    engine = self._open_engine(pool) if self._needs_engine(untraced) else None
                    if engine is not None:
                        stack.callback(engine.close)
                    folder.write_config()
                    self._work(pool, engine, folder, untraced, unfinished)
                if grader.timeouts:
                    self.err.print(
                        f"note: grading timed out on {grader.timeouts} answer(s) (math-verify, "
                        f"limit {cfg.grade_timeout:g} s per answer); they count as incorrect",
                        highlight=False,
                        soft_wrap=True,
                    )
            else:
                folder.write_config()
                self.err.print("nothing left to do in this folder: summarising", highlight=False)
            units = {(p.id, s) for p, s in self.units}
            return write_run_outputs(
                folder.run(),
                scorer=self.scorer.spec,
                control=self.control,
                policy=self.policy.spec,
                mode=self.mode.name,
                thresholds=cfg.thresholds,
                units=units,
                out=self.out,
                err=self.err,
            )

    def _open_pool(self, grader: Grader) -> Pool:
        cfg = self.config
        started = time.perf_counter()
        where = f" on {cfg.workers} Ray worker(s)" if cfg.workers > 1 or cfg.ray_address else ""
        with self.err.status(f"loading model {cfg.model}{where} ..."):
            pool = open_pool(cfg, grader)
        self.err.print(
            f"model {cfg.model}: {pool.call('describe')}, loaded{where} in "
            f"{time.perf_counter() - started:.0f} s",
            highlight=False,
        )
        return pool

    def _needs_engine(self, untraced: list[tuple[Problem, int]]) -> bool:
        """Whether the run decodes with a driver-side engine (vLLM): traces to generate, or
        text-mode answers. A resumed kv or online run with every trace made starts no vLLM."""
        if self.config.engine == "hf":
            return False
        return self.mode.name == "text" or any(not p.brings_trace for p, _ in untraced)

    def _open_engine(self, pool: Pool) -> Engine:
        """The driver's engine for plain decoding (vLLM, in its own process)."""
        started = time.perf_counter()
        with self.err.status("starting vLLM ..."):
            inputs = pool.call("engine_inputs")
            if not Path(inputs.model_dir).exists():  # made on a Ray worker's machine
                raise ValueError(
                    f"vLLM reads the model from {inputs.model_dir}, which is not on this "
                    "machine (a GGUF converted on a Ray worker): pass a model folder or hub id"
                )
            options = replace(
                self.config.vllm_options(), max_model_len=self._max_model_len(pool, inputs)
            )
            engine = VLLMEngine(
                inputs.model_dir,
                inputs.tokenizer,
                inputs.eos_ids,
                dtype=inputs.dtype,
                seed=self.config.seed,
                options=options,
            )
        self.box_prefix = inputs.box_prefix
        self.err.print(
            f"vLLM {engine.process.version} started in {time.perf_counter() - started:.0f} s",
            highlight=False,
        )
        return engine

    def _max_model_len(self, pool: Pool, inputs) -> int:
        """The longest sequence the run decodes: the longest prompt and trace (generated up to
        --max-new-tokens, or brought), the answer cue and an answer (vLLM sizes its cache by
        it; the model's own limit can be 128k)."""
        cfg = self.config
        longest = max(pool.call("sequence_lengths", self.problems, cfg.max_new_tokens))
        needed = longest + cfg.answer_max_tokens + 64  # + the answer cue and the answer
        return min(needed, inputs.context_limit) if inputs.context_limit else needed

    @contextmanager
    def _progress(self) -> Iterator[Progress]:
        columns = [
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        ]
        with Progress(*columns, console=self.err, transient=False) as progress:
            yield progress

    def _work(
        self,
        pool: Pool,
        engine: Engine | None,
        folder: RunFolder,
        untraced: list[tuple[Problem, int]],
        unfinished: list[tuple[Problem, int]],
    ) -> None:
        with self._progress() as progress:
            if untraced:
                task = progress.add_task("tracing", total=len(untraced))
                for trace in self._traces(pool, engine, untraced):
                    folder.add_trace(trace)
                    progress.advance(task)
            task = progress.add_task("re-evaluating", total=len(unfinished))
            items = [
                (problem, folder.traces[(problem.id, sample)]) for problem, sample in unfinished
            ]
            if engine is not None and self.mode.name == "text":
                results = self._answered_by_engine(pool, engine, folder, items)
            else:
                calls = [("evaluate", (p, t, self._importances(folder, t))) for p, t in items]
                results = _spread(pool, calls)
            for result in results:
                self._add(folder, result)
                progress.advance(task)

    def _traces(
        self, pool: Pool, engine: Engine | None, units: list[tuple[Problem, int]]
    ) -> Iterator[Trace]:
        """Traces of ``units`` as they are finished.

        With the workers' own engine (hf), chunks of ``TRACE_CHUNK`` units, each generated in
        one call: the chunks are the same whatever the number of workers, so the traces are
        too. With a driver-side engine (vLLM), every generated unit in one job; each output is
        handed to a worker to be segmented, scored and graded the moment vLLM finishes it.
        """
        if engine is None:
            for traces in _spread(pool, _trace_calls(units)):
                yield from traces
            return
        for traces in _spread(pool, _trace_calls([(p, s) for p, s in units if p.brings_trace])):
            yield from traces
        generated = [(p, s) for p, s in units if not p.brings_trace]
        prompts = pool.call("prompt_ids", [p for p, _ in generated])
        seeds = [sample_seed(self.config.seed, p.id, s) for p, s in generated]
        for index, output in engine.sample_stream(prompts, seeds, self.config.sampling()):
            problem, sample = generated[index]
            pool.submit("finish", problem, sample, prompts[index], output.ids)
            yield from pool.results(wait=False)
        yield from pool.results()

    def _answered_by_engine(
        self, pool: Pool, engine: Engine, folder: RunFolder, items: list[tuple[Problem, Trace]]
    ) -> Iterator[UnitResult]:
        """Text mode with a driver-side engine: the workers prepare contexts, the engine answers
        ``ANSWER_CHUNK`` units' contexts in one call, the workers grade them into records."""
        for begin in range(0, len(items), ANSWER_CHUNK):
            chunk = items[begin : begin + ANSWER_CHUNK]
            calls = [("prepare", (p, t, self._importances(folder, t))) for p, t in chunk]
            prepared = list(_spread(pool, calls))
            contexts = [c for unit in prepared for c in unit.contexts]
            answers = engine.greedy(contexts, self.config.answer_max_tokens, self.box_prefix)
            calls, offset = [], 0
            for unit in prepared:
                calls.append(("complete", (unit, answers[offset : offset + len(unit.contexts)])))
                offset += len(unit.contexts)
            yield from _spread(pool, calls)

    def _importances(self, folder: RunFolder, trace: Trace) -> list[float] | None:
        return folder.importances(trace, self.scorer.spec)

    def _add(self, folder: RunFolder, result: UnitResult) -> None:
        """Write one unit's importances (when new) and records; the folder skips records it has."""
        trace = folder.traces[(result.problem_id, result.sample)]
        if result.importances is not None and self._importances(folder, trace) is None:
            folder.add_scores(trace, self.scorer.spec, result.importances)
        folder.add_records(result.records)


def _trace_calls(units: list[tuple[Problem, int]]) -> list[tuple[str, tuple]]:
    """One ``traces`` call per chunk of ``TRACE_CHUNK`` units."""
    return [("traces", (units[b : b + TRACE_CHUNK],)) for b in range(0, len(units), TRACE_CHUNK)]


def _spread(pool: Pool, calls: list[tuple[str, tuple]]) -> Iterator[Any]:
    """Submit ``calls`` to the pool's workers, handing back each result as soon as it is done
    (so the driver writes while workers work; in one process, right after each call)."""
    for method, args in calls:
        pool.submit(method, *args)
        yield from pool.results(wait=False)
    yield from pool.results()


def run_experiment(
    config: RunConfig, err: Console | None = None, out: Console | None = None
) -> tuple[dict[str, Any], Path]:
    """Run (or resume) the experiment ``config`` describes; returns the summary and folder."""
    experiment = Experiment(config, err or Console(stderr=True), out or Console())
    return experiment.run(), config.output_dir()


__all__ = ["MODES", "Experiment", "RunConfig", "SamplingConfig", "build_mode", "run_experiment"]
