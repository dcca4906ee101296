"""Where the transformers stages run: in this process, or spread over Ray actors.

Both pools offer one interface to the experiment's driver, typed by the ``UnitRunner``
method they are given (the method itself, ``UnitRunner.evaluate``, never its name):

- ``call(UnitRunner.check, problems)``: one call, waited for (checks, the model's view);
- ``submit(UnitRunner.evaluate, problem, trace, importances)`` then ``results(wait=...)``:
  calls spread over the workers, their results handed back as they finish (in any order).

``LocalPool`` runs each call at once on the driver's own runner. ``RayPool`` starts ``workers``
actors (on a local Ray instance it starts, or on the cluster at ``address``), each loading its
own model on one device (``num_gpus=1`` where there are GPUs) with its own grader. Only the
driver writes the run folder; a worker returns traces, importances and records. Every call
works on one unit (or one chunk of traces the driver fixed), so the records of a unit do not
depend on which worker made them or how many there are.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any, Concatenate, ParamSpec, TypeVar

from stepprune.config import RunConfig, RunPlan
from stepprune.grading import Grader
from stepprune.runner import UnitRunner

P = ParamSpec("P")
R = TypeVar("R")
#: A ``UnitRunner`` method, called with the runner first.
Stage = Callable[Concatenate[UnitRunner, P], R]


class LocalPool:
    """Runs every call on ``runner`` in this process, at once."""

    def __init__(self, runner: UnitRunner) -> None:
        self.runner = runner
        self._done: deque[Any] = deque()

    @property
    def size(self) -> int:
        return 1

    def call(self, stage: Stage[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        return stage(self.runner, *args, **kwargs)

    def submit(self, stage: Stage[P, Any], *args: P.args, **kwargs: P.kwargs) -> None:
        self._done.append(stage(self.runner, *args, **kwargs))

    def results(self, wait: bool = True) -> Iterator[Any]:
        while self._done:
            yield self._done.popleft()

    def close(self) -> None:
        return None


class _RunnerActor:
    """A Ray actor's state: a grader and a runner built from the run's config."""

    def __init__(self, config: RunConfig, plan: RunPlan, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self._stack = ExitStack()
        grader = self._stack.enter_context(Grader(timeout_s=config.grade_timeout))
        self.runner = UnitRunner.load(config, plan, grader)

    def call(self, stage: Callable[..., Any], *args: Any) -> Any:
        return stage(self.runner, *args)

    def ready(self) -> str:
        return self.runner.describe()


class RayPool:
    """``workers`` Ray actors, each holding a runner (see the module docstring).

    Args:
        config: The run's config; each actor loads the model it names.
        plan: The run's strategies, shared by every actor.
        workers: Number of actors.
        address: A running Ray cluster's address; None starts a local Ray instance (and shuts
            it down on ``close``).
    """

    def __init__(
        self, config: RunConfig, plan: RunPlan, workers: int, address: str | None = None
    ) -> None:
        try:
            import ray
            from ray.util import ActorPool
        except ImportError as error:
            raise RuntimeError(
                "--workers and --ray-address need Ray: pip install 'stepprune[ray]'"
            ) from error
        self.ray = ray
        self._saved_env: dict[str, str | None] = {}
        # Ray runs workers at nice 15 by default: beside any other job they would starve, and
        # here they do all the work while the driver waits.
        niceness = os.environ.get("RAY_worker_niceness", "0")  # noqa: SIM112 (Ray's name)
        self._set_env("RAY_worker_niceness", niceness)
        self.started_here = not ray.is_initialized()
        # A local instance must not outlive a killed run, even one killed while the workers
        # load: Ray's agents survive SIGKILL of the driver (seen: DashboardAgent,
        # RuntimeEnvAgent), so a reaper that dies with this process kills all it started.
        self.reaper = None
        self._old_sigterm = None
        self.actors: list[Any] = []
        # Everything after the first Ray call is undone by close() on any error, Ctrl-C
        # included: an interrupt while the actors are made must not leave Ray running.
        try:
            if self.started_here:
                ray.init(**self._init_options(workers, address))
                self._catch_sigterm()
            self._start_actors(config, plan, workers)
        except BaseException:  # a model that cannot load, too many workers, Ctrl-C
            self.close()
            raise
        self.pool = ActorPool(self.actors)

    def _start_actors(self, config: RunConfig, plan: RunPlan, workers: int) -> None:
        """Start ``workers`` actors on the cluster's devices and wait until each has loaded
        its model (a ValueError where the cluster cannot hold them)."""
        ray = self.ray
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        on_gpus = gpus >= 1 and config.model.device in ("auto", "cuda")
        if on_gpus and workers > gpus:  # the actors beyond would wait for a GPU forever
            raise ValueError(
                f"--workers {workers}: each worker takes one GPU and the Ray cluster has {gpus}"
            )
        cpus = int(resources.get("CPU", 0))
        if not on_gpus and workers > cpus:  # each actor takes a CPU: the rest would wait forever
            raise ValueError(
                f"--workers {workers}: each worker takes one CPU and the Ray cluster has {cpus}"
            )
        threads = max(1, cpus // workers)
        actor_class = ray.remote(num_gpus=1 if on_gpus else 0, num_cpus=0 if on_gpus else 1)(
            _RunnerActor
        )
        # The plan travels pickled: a plug-in registered outside the package is imported in
        # each actor by its module's name, as pickle does for any class.
        for _ in range(workers):
            self.actors.append(actor_class.remote(config, plan, threads))
        self._unwrap(lambda: ray.get([a.ready.remote() for a in self.actors]))

    def _init_options(self, workers: int, address: str | None) -> dict[str, Any]:
        """``ray.init``'s options: the cluster at ``address`` (seen listening), or a new local
        instance closed to the network, with a reaper."""
        options: dict[str, Any] = {"log_to_driver": False, "include_dashboard": False}
        if address:
            options["address"] = _reachable(address)
        else:
            # The driver only writes; the workers need the cores.
            options["num_cpus"] = max(workers, os.cpu_count() or 1)
            options["address"] = self._local_instance()
            self.reaper = _start_reaper()
        return options

    def _catch_sigterm(self) -> None:
        """SIGTERM ends the run as Ctrl-C does (the pool closed, Ray shut down, no traceback):
        left to Ray's own handler it aborts with a native stack dump."""
        if threading.current_thread() is threading.main_thread():
            self._old_sigterm = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)

    def _set_env(self, name: str, value: str) -> None:
        """Set an environment variable for Ray (read by ``ray.init`` and inherited by the
        processes it starts); ``close`` puts the old value back."""
        self._saved_env.setdefault(name, os.environ.get(name))
        os.environ[name] = value

    def _local_instance(self) -> str:
        """Prepare a local Ray instance closed to the network; returns the ``address`` that
        makes ``ray.init`` start a new one.

        Ray's GCS, raylet and workers listen on every interface whatever address they are
        given, so anyone who reaches the machine could submit code to them. Token
        authentication turned on with a token made for this run, and known only to the
        processes it starts (through their environment, never written to ``~/.ray``), makes
        them refuse every other client. ``"local"`` starts a new instance even where another
        one runs on the machine or a crashed one left its address behind, and ignores
        ``RAY_ADDRESS``.
        """
        self._set_env("RAY_AUTH_MODE", "token")
        self._set_env("RAY_AUTH_TOKEN", secrets.token_hex(32))
        _reload_ray_config()
        return "local"

    @property
    def size(self) -> int:
        return len(self.actors)

    def _unwrap(self, get):
        """Run ``get``; an error raised in an actor is raised here as itself (a clear user
        error stays one), not as Ray's wrapper."""
        try:
            return get()
        except self.ray.exceptions.RayTaskError as error:
            cause = error.cause
            raise (cause if isinstance(cause, BaseException) else error) from None
        except self.ray.exceptions.RayActorError as error:
            raise RuntimeError(f"a Ray worker died: {error}") from None

    def call(self, stage: Stage[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        return self._unwrap(lambda: self.ray.get(self.actors[0].call.remote(stage, *args)))

    def submit(self, stage: Stage[P, Any], *args: P.args, **kwargs: P.kwargs) -> None:
        self.pool.submit(lambda actor, a: actor.call.remote(stage, *a), args)

    def results(self, wait: bool = True) -> Iterator[Any]:
        """Finished calls; with ``wait`` until none is pending, else only those done now."""
        while self.pool.has_next():
            try:
                yield self._unwrap(
                    lambda: self.pool.get_next_unordered(timeout=None if wait else 0)
                )
            except TimeoutError:
                return

    def close(self) -> None:
        if self._old_sigterm is not None:
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None
        for actor in self.actors:
            self.ray.kill(actor)
        if self.started_here:
            self.ray.shutdown()
        if self.reaper is not None:
            self.reaper.kill()  # SIGKILL: the reaper's own handler does not run
            self.reaper.wait()
            self.reaper = None
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if "RAY_AUTH_TOKEN" in self._saved_env:
            _reload_ray_config()
        self._saved_env = {}


# Runs as ``python -c PARENT_PID``. While the parent lives it notes, every half second, every
# process below the parent (pid and start time, so a reused pid is never taken for one of them);
# when the parent dies (PR_SET_PDEATHSIG turns that into SIGTERM, and the loop sees the parent
# gone) it kills those still alive.
_REAPER = """
import ctypes, os, signal, sys, time
parent, me, seen = int(sys.argv[1]), os.getpid(), {}
def stat(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[1]), int(fields[19])
    except (OSError, IndexError, ValueError):
        return None
def scan():
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (found := stat(int(entry))):
            children.setdefault(found[0], []).append((int(entry), found[1]))
    todo = [parent]
    while todo:
        for pid, start in children.get(todo.pop(), []):
            if pid != me:
                seen[pid] = start
                todo.append(pid)
def reap(*_):
    for pid, start in seen.items():
        found = stat(pid)
        if found and found[1] == start:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    os._exit(0)
signal.signal(signal.SIGTERM, reap)
signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)
while os.getppid() == parent:
    scan()
    time.sleep(0.5)
reap()
"""


def _sigterm_as_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _reload_ray_config() -> None:
    """Make this process's Ray see the authentication settings of its environment now: Ray
    reads them once, when it is imported (Ray's own ``_enable_token_auth`` does the same)."""
    try:
        from ray._raylet import AuthenticationTokenLoader, Config
    except ImportError:  # a Ray without token authentication reads nothing more
        return
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def _reachable(address: str) -> str:
    """``address`` (``HOST:PORT`` or ``auto``) once something is seen listening there: Ray
    itself would wait many minutes for a cluster that is not there.

    Raises:
        ValueError: a ``ray://`` address (Ray Client: not supported), no cluster found for
            ``auto``, or nothing listening at the address (one line each).
    """
    from ray._private.services import canonicalize_bootstrap_address

    if address.startswith("ray://"):
        raise ValueError(
            f"--ray-address {address}: Ray Client (ray://) addresses are not supported; give "
            "the cluster's GCS address HOST:PORT (as `ray start --head` prints it) or auto"
        )
    try:
        found = canonicalize_bootstrap_address(address)
    except (ValueError, ConnectionError) as error:
        raise ValueError(f"--ray-address {address}: {error}") from None
    if not found:
        raise ValueError(f"--ray-address {address}: no running Ray cluster found on this machine")
    host, _, port = found.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except (OSError, ValueError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise ValueError(
            f"--ray-address {address}: no Ray cluster answers at {found} ({reason or 'timed out'})"
        ) from None
    return address


def _start_reaper() -> subprocess.Popen | None:
    """A process that kills what this process starts when this process dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    return subprocess.Popen([sys.executable, "-c", _REAPER, str(os.getpid())])


def open_pool(config: RunConfig, plan: RunPlan, grader: Grader | None) -> LocalPool | RayPool:
    """The pool a config asks for: Ray actors with ``--workers`` / ``--ray-address``, else
    this process (its runner grading with ``grader``)."""
    placement = config.placement
    if placement.uses_ray:
        return RayPool(config, plan, placement.workers, placement.ray_address)
    return LocalPool(UnitRunner.load(config, plan, grader))
