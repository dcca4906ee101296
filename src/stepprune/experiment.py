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

import platform
import sys
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import stepprune
from stepprune.config import RunConfig
from stepprune.decoding import SamplingConfig
from stepprune.grading import Grader
from stepprune.models import (
    ModelLoadError,
    check_model_options,
    load_model,
    resolve_model_source,
    resolved_dtype,
)
from stepprune.modes import MODES, Mode, Pruning, to_record
from stepprune.policies import POLICIES
from stepprune.problems import load_problems
from stepprune.reporting.run_outputs import write_run_outputs
from stepprune.runfolder import RunFolder, RunFolderError, control_spec, threshold_key
from stepprune.schema import Problem, Trace
from stepprune.scorers import SCORERS, Scorer
from stepprune.session import Segmenter, Session

# Units per engine call while tracing: large enough to batch, small enough to resume often.
TRACE_CHUNK = 8


def build_mode(config: RunConfig) -> Mode:
    """The re-evaluation mode a config asks for, from the ``MODES`` registry."""
    return MODES.get(config.mode).from_config(config)


def control_mask(seed: int, trace: Trace, threshold: float, kept: int) -> tuple[bool, ...]:
    """The random control: ``kept`` steps chosen at random, seeded by run seed, trace and
    threshold, so it keeps as many steps as the scorer it controls."""
    key = f"{seed}:{trace.problem_id}:{trace.sample}:{threshold_key(threshold)}"
    chosen = np.random.default_rng(zlib.crc32(key.encode())).permutation(len(trace.steps))
    keep = np.zeros(len(trace.steps), dtype=bool)
    keep[chosen[:kept]] = True
    return tuple(keep.tolist())


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
        self.control = (
            control_spec(config.seed, self.scorer.spec)
            if config.control and not self.mode.decides_online
            else None
        )
        self.units = [(p, s) for p in self.problems for s in range(config.samples)]

    def prunings(self, session: Session, trace: Trace, importances: list[float]) -> list[Pruning]:
        """What to re-evaluate for one trace: the scorer's mask at every threshold and the
        random control beside each (online mode decides during generation: no masks)."""
        thresholds = self.config.thresholds
        if self.mode.decides_online:
            return [Pruning(self.scorer.spec, t) for t in thresholds]
        masks = session.keep_masks(importances, thresholds)
        prunings = [Pruning(self.scorer.spec, t, m) for t, m in zip(thresholds, masks, strict=True)]
        if self.control is not None:
            prunings += [
                Pruning(self.control, t, control_mask(self.config.seed, trace, t, sum(m)))
                for t, m in zip(thresholds, masks, strict=True)
            ]
        return prunings

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
            if problem is not None and trace.problem and trace.problem != problem.problem:
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

    def _check_session(self, session: Session, untraced: list[tuple[Problem, int]]) -> None:
        """Checks that need the loaded model, made before config.json or any trace is written."""
        check = getattr(self.scorer, "check_model", None)
        if check is not None:
            check(session.model.config, cached_only=self.mode.decides_online)
        problems = list({p.id: p for p, _ in untraced}.values())
        warning = session.check_lengths(problems, self.config.max_new_tokens)
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
                with Grader(timeout_s=cfg.grade_timeout) as grader:
                    session = self._load(grader)
                    self._check_session(session, untraced)
                    folder.write_config()
                    self._work(session, folder, untraced, unfinished)
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

    def _load(self, grader: Grader) -> Session:
        cfg = self.config
        started = time.perf_counter()
        with self.err.status(f"loading model {cfg.model} ..."):
            model, tokenizer = load_model(cfg.model, cfg.device, cfg.dtype, cfg.load_in_4bit)
        session = Session(
            model,
            tokenizer,
            scorer=self.scorer,
            policy=self.policy,
            segmenter=Segmenter(cfg.segmenter, cfg.min_step_chars),
            grader=grader,
            engine=cfg.engine,
        )
        kind = "thinking" if session.format.is_thinking else "non-thinking"
        self.err.print(
            f"model {cfg.model}: {kind}, {model.config.num_hidden_layers} layers, "
            f"{model.device}, {model.dtype}, loaded in {time.perf_counter() - started:.0f} s",
            highlight=False,
        )
        return session

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
        session: Session,
        folder: RunFolder,
        untraced: list[tuple[Problem, int]],
        unfinished: list[tuple[Problem, int]],
    ) -> None:
        sampling = self.config.sampling()
        with self._progress() as progress:
            if untraced:
                task = progress.add_task("tracing", total=len(untraced))
                for begin in range(0, len(untraced), TRACE_CHUNK):
                    chunk = untraced[begin : begin + TRACE_CHUNK]
                    for trace in session.traces(chunk, sampling, self.config.seed):
                        folder.add_trace(trace)
                    progress.advance(task, len(chunk))
            task = progress.add_task("re-evaluating", total=len(unfinished))
            for problem, sample in unfinished:
                progress.update(task, description=f"{problem.id}#{sample}: re-evaluating")
                self._finish_unit(session, folder, problem, folder.traces[(problem.id, sample)])
                progress.advance(task)

    def _finish_unit(
        self, session: Session, folder: RunFolder, problem: Problem, trace: Trace
    ) -> None:
        """Score (if this scorer has not yet) and re-evaluate every threshold of one trace.

        All thresholds are evaluated together, so batches of greedy answers, and hence the
        answers, do not depend on which records a resumed run still lacks.
        """
        importances = folder.importances(trace, self.scorer.spec)
        if importances is None:  # a trace reused from a run with another scorer
            importances = session.score(trace, problem)
            folder.add_scores(trace, self.scorer.spec, importances)
        prunings = self.prunings(session, trace, importances)
        if all(
            folder.has_record(trace.problem_id, trace.sample, p.threshold, p.scorer)
            for p in prunings
        ):
            return
        outcomes = self.mode.evaluate(session, problem, trace, prunings)
        folder.add_records([to_record(session, self.mode, problem, trace, o) for o in outcomes])


def run_experiment(
    config: RunConfig, err: Console | None = None, out: Console | None = None
) -> tuple[dict[str, Any], Path]:
    """Run (or resume) the experiment ``config`` describes; returns the summary and folder."""
    experiment = Experiment(config, err or Console(stderr=True), out or Console())
    return experiment.run(), config.output_dir()


__all__ = ["MODES", "Experiment", "RunConfig", "SamplingConfig", "build_mode", "run_experiment"]
