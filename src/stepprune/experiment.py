"""The experiment, end to end, in one place: the resume loop of ``stepprune run``.

    Problem -> Trace -> Steps -> importances -> keep masks -> Outcomes -> Records -> summary
    (stages.traces)             (scorer)       (policy)      (mode)      (to_record) (reporting)

``Experiment.run`` reads: validate -> lock -> pending -> traces -> evaluate -> write -> report.

Everything is checked before anything is loaded or written (a scorer that depends on the
model, such as ``attention:layers=0+99``, against the config read from the model's files); then
the run folder is locked, the model is loaded and checked again (layers; every prompt against
the model's context) before config.json is written, and each finished trace and its records are
appended before the next unit starts, so an interrupted run resumes where it stopped. A folder
with nothing left to do is summarised without loading the model.
"""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch
import transformers
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import stepprune
from stepprune.config import RunConfig
from stepprune.grading import Grader
from stepprune.models import ModelLoadError, resolve_model_source
from stepprune.problems import load_problems
from stepprune.reporting.run_outputs import write_run_outputs
from stepprune.runfolder import RunFolder, RunFolderError
from stepprune.runner import UnitResult, UnitRunner
from stepprune.schema import Problem, Trace, forced_digest
from stepprune.stages import DriverStages, Pool, WorkerStages
from stepprune.workers import open_pool


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
        self.plan = config.plan()
        self.plan.engine.check()
        data = config.data
        self.problems = load_problems(
            data.dataset,
            Path(data.data_dir) if data.data_dir else None,
            data.limit,
            seed=config.seed,
        )
        self.units = [(p, s) for p in self.problems for s in range(data.samples)]
        brought = next((p for p in self.problems if p.output_ids is not None), None)
        if brought is not None and (data.samples > 1 or self.plan.mode.decides_online):
            raise ValueError(
                f"problem {brought.id!r} brings its trace (output_ids): one sample each, "
                "pruned with --mode text or kv (online mode generates its own trace)"
            )

    @property
    def scorer_spec(self) -> str:
        return self.plan.scorer.spec

    def _pending(self, folder: RunFolder) -> tuple[list[tuple[Problem, int]], list]:
        """Units without a trace, and units whose scores or records are incomplete."""
        specs = [s for s in (self.scorer_spec, self.plan.control) if s]
        untraced, unfinished = [], []
        for problem, sample in self.units:
            trace = folder.traces.get((problem.id, sample))
            if trace is None:
                untraced.append((problem, sample))
            if (
                trace is None
                or folder.importances(trace, self.scorer_spec) is None
                or not all(
                    folder.has_record(problem.id, sample, t, spec)
                    for t in self.plan.thresholds
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
            if problem is not None and trace.forced and trace.forced != forced_digest(problem):
                raise RunFolderError(
                    f"{folder.out}: the reasoning of problem {problem_id!r} differs from the one "
                    "its trace was forced with (the dataset changed); use another --out"
                )
            if problem is not None and trace.gold is not None and trace.gold != problem.answer:
                raise RunFolderError(
                    f"{folder.out}: the answer of problem {problem_id!r} is now "
                    f"{problem.answer!r}, its traces were graded on {trace.gold!r} (the dataset "
                    "changed); use another --out"
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
        if not self.plan.scorer.needs_model_config:
            return
        try:
            source, gguf_file = resolve_model_source(self.config.model.name)
            model_config = transformers.AutoConfig.from_pretrained(source, gguf_file=gguf_file)
        except (ModelLoadError, OSError, ValueError, KeyError):
            return
        self.plan.scorer.check_model(model_config, cached_only=self.plan.mode.decides_online)

    def _check_loaded(self, pool: Pool, untraced: list[tuple[Problem, int]]) -> None:
        """Checks that need the loaded model, made before config.json or any trace is written."""
        problems = list({p.id: p for p, _ in untraced}.values())
        warning = pool.call(UnitRunner.check, problems)
        if warning:
            self.err.print(f"[yellow]warning:[/yellow] {warning}", highlight=False, soft_wrap=True)

    def run(self) -> Any:
        """Trace, score, prune and re-evaluate every unit not yet in the run folder; report."""
        cfg, plan = self.config, self.plan
        run_config = {"config": cfg.to_json(), "environment": _environment()}
        identity = {
            **cfg.identity(),
            "engine": plan.engine.name,
            "dtype": cfg.model.dtype_name(),
        }
        self._check_model_files()
        with RunFolder(cfg.output_dir(), identity, run_config) as folder:
            self._check_unchanged(folder)
            untraced, unfinished = self._pending(folder)
            if unfinished:
                with Grader(timeout_s=cfg.grade_timeout) as grader, ExitStack() as stack:
                    pool = self._open_pool(grader)
                    stack.callback(pool.close)
                    self._check_loaded(pool, untraced)
                    stages = self._open_stages(pool, untraced, stack)
                    folder.write_config()
                    self._work(stages, folder, untraced, unfinished)
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
            return write_run_outputs(
                folder.run(),
                scorer=self.scorer_spec,
                control=plan.control,
                policy=plan.policy.spec,
                mode=plan.mode.name,
                thresholds=list(plan.thresholds),
                units={(p.id, s) for p, s in self.units},
                out=self.out,
                err=self.err,
            )

    def _open_pool(self, grader: Grader) -> Pool:
        cfg = self.config
        started = time.perf_counter()
        placement = cfg.placement
        where = f" on {placement.workers} Ray worker(s)" if placement.uses_ray else ""
        with self.err.status(f"loading model {cfg.model.name}{where} ..."):
            pool = open_pool(cfg, self.plan, grader)
        self.err.print(
            f"model {cfg.model.name}: {pool.call(UnitRunner.describe)}, loaded{where} in "
            f"{time.perf_counter() - started:.0f} s",
            highlight=False,
        )
        return pool

    def _open_stages(
        self, pool: Pool, untraced: list[tuple[Problem, int]], stack: ExitStack
    ) -> WorkerStages:
        """The stages, with the engine opened beside the driver when it decodes there and the
        run has something for it: traces to generate, or answers from contexts. A resumed
        kv or online run with every trace made starts none."""
        engine_config, mode = self.plan.engine, self.plan.mode
        generates = any(not p.brings_trace for p, _ in untraced)
        if engine_config.location == "worker" or not (generates or mode.answers_from_contexts):
            return WorkerStages(pool, self.plan)
        started = time.perf_counter()
        with self.err.status(f"starting engine {engine_config.name} ..."):
            view = pool.call(UnitRunner.model_view, self.problems, self.config.model.name)
            engine = engine_config.open(view, self.plan.seed)
            stack.callback(engine.close)
        self.err.print(
            f"{engine.describe()} started in {time.perf_counter() - started:.0f} s",
            highlight=False,
        )
        return DriverStages(pool, self.plan, engine, view.answer_cue)

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
        stages: WorkerStages,
        folder: RunFolder,
        untraced: list[tuple[Problem, int]],
        unfinished: list[tuple[Problem, int]],
    ) -> None:
        with self._progress() as progress:
            if untraced:
                task = progress.add_task("tracing", total=len(untraced))
                given = {p.id: p for p, _ in untraced}
                for trace in stages.traces(untraced):
                    # What original_correct was graded on, and what the trace was forced with.
                    trace.gold = given[trace.problem_id].answer
                    trace.forced = forced_digest(given[trace.problem_id])
                    folder.add_trace(trace)
                    progress.advance(task)
            task = progress.add_task("re-evaluating", total=len(unfinished))
            items = []
            for problem, sample in unfinished:
                trace = folder.traces[(problem.id, sample)]
                items.append((problem, trace, self._importances(folder, trace)))
            for result in stages.evaluate(items):
                self._add(folder, result)
                progress.advance(task)

    def _importances(self, folder: RunFolder, trace: Trace) -> list[float] | None:
        return folder.importances(trace, self.scorer_spec)

    def _add(self, folder: RunFolder, result: UnitResult) -> None:
        """Write one unit's importances (when new) and records; the folder skips records it has."""
        trace = folder.traces[(result.problem_id, result.sample)]
        if result.importances is not None and self._importances(folder, trace) is None:
            folder.add_scores(trace, self.scorer_spec, result.importances)
        folder.add_records(result.records)


def run_experiment(
    config: RunConfig, err: Console | None = None, out: Console | None = None
) -> tuple[Any, Path]:
    """Run (or resume) the experiment ``config`` describes; returns the summary and folder."""
    experiment = Experiment(config, err or Console(stderr=True), out or Console())
    return experiment.run(), config.output_dir()


__all__ = ["Experiment", "RunConfig", "run_experiment"]
