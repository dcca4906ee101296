"""`--workers 2` spreads the transformers stages over two Ray actors, on a local Ray instance
the run starts and stops, or on a cluster (`--ray-address`): the records are those of a run in
one process, the driver alone writes the folder, a run killed with SIGKILL resumes, no Ray
process of the run outlives it, and more workers than a cluster's CPUs are refused.

Each Ray start costs about 25 s of CPU here (the instance, and two workers that import torch
and load the model), so each test goes through several phases of one folder (killed, then
resumed to the end) rather than starting Ray once per property; the run in one process they
are compared with, and the two-node cluster, are made once for the module. The runs are
children of the fork server (``tests.processes``: `python -m stepprune` without its 5-7 s of
imports, each in a session of its own, as a shell starts a command)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
from pathlib import Path

import pytest

from tests.extras import require_ray
from tests.processes import (
    ForkServer,
    alive,
    cmdline,
    descendants,
    invoke,
    kill_all,
    pid_alive,
    wait_for,
)

# Tests that start Ray look for its processes by name: one such test at a time.
pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.xdist_group("ray")]

PROBLEMS = [f"What is {a} + {2 * a + 1}?" for a in range(1, 4)]
COMPARED = ["answer_text", "prediction", "correct", "kept_steps", "tokens_kept", "context_tokens"]


def dataset(path: Path) -> Path:
    rows = [{"id": f"q{i}", "problem": p, "answer": str(3 * i + 2)} for i, p in enumerate(PROBLEMS)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    """`stepprune run`'s arguments for a small run: two sampled traces per problem (sampling is
    seeded per sequence, so the traces must not depend on which worker ran them), thresholds 0
    and 0.5, and controls."""
    return [
        "run", "--model", str(model), "--dataset", str(data), "--samples", "2",
        "--max-new-tokens", "24", "--answer-max-tokens", "6", "--thresholds", "0,0.5",
        "--device", "cpu", "--out", str(out), *extra,
    ]  # fmt: skip


def output(work: Path) -> str:
    """What a command of the fork server printed (its stdout, then its stderr)."""
    return "".join((work / name).read_text(errors="replace") for name in ("stdout", "stderr"))


def _rows(out: Path, name: str) -> dict[tuple, dict]:
    """The rows of ``name`` by unit (and threshold and scorer); a unit written twice fails."""
    rows = [json.loads(x) for x in (out / name).read_text().splitlines()]
    key = ("problem_id", "sample", "threshold", "scorer")
    keyed: dict[tuple, dict] = {}
    for row in rows:
        k = tuple(row[f] for f in key) if "threshold" in row else (row["problem_id"], row["sample"])
        assert k not in keyed, f"{name}: {k} written twice"
        keyed[k] = row
    return keyed


def assert_same_records(one: Path, two: Path) -> None:
    """The folder ``two`` holds the traces, records and controls of ``one``, each unit once."""
    traces_one, traces_two = _rows(one, "traces.jsonl"), _rows(two, "traces.jsonl")
    assert len(traces_one) == len(PROBLEMS) * 2 and set(traces_one) == set(traces_two)
    for key, trace in traces_one.items():
        assert trace["output_ids"] == traces_two[key]["output_ids"], key
        assert trace["steps"] == traces_two[key]["steps"], key
    for name in ("records.jsonl", "controls.jsonl"):
        a, b = _rows(one, name), _rows(two, name)
        assert set(a) == set(b) and len(a) == len(PROBLEMS) * 2 * 2
        for key in a:
            assert {f: a[key][f] for f in COMPARED} == {f: b[key][f] for f in COMPARED}, key


def ray_processes() -> set[int]:
    names = ("raylet", "gcs_server", "ray::", "default_worker.py")
    return {
        int(pid)
        for pid in os.listdir("/proc")
        if pid.isdigit() and any(n in cmdline(int(pid)) for n in names)
    }


def actors() -> list[int]:
    """Every RunnerActor process on this machine (of any node)."""
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and "RunnerActor" in cmdline(int(p))]


def loading(run: int) -> list[int]:
    """The Ray workers below the local run ``run`` that have begun to load: to import torch
    for the actor they were given, then the model (a Ray worker that waits for work has not
    imported torch). Their actor's name shows only once that import is done, about 7 s of
    CPU per worker here, which a run stopped before its first trace need not spend."""

    def imports_torch(pid: int) -> bool:
        with contextlib.suppress(OSError):
            return "libtorch" in Path(f"/proc/{pid}/maps").read_text()
        return False

    # A Ray worker's title replaces its command line: ray::IDLE, then ray::_RunnerActor...
    ray_workers = [p for p, _ in descendants(run) if cmdline(p).startswith("ray::")]
    return [p for p in ray_workers if imports_torch(p)]


def start_until_actors(
    server: ForkServer, args: list[str], work: Path, env: dict, *, loading_only: bool = False
) -> int:
    """Start ``stepprune ARGS`` through the fork server (in a session of its own, as a shell
    starts a command; its output in ``work``) and return its pid once its two Ray actors exist
    (they then load the model: the longest phase before any trace); with ``loading_only``, a
    local run's, once its two Ray workers have begun to load (``loading``)."""
    work.mkdir()
    pid = server.spawn(args, work, env)
    two = (lambda: len(loading(pid)) == 2) if loading_only else (lambda: len(actors()) == 2)
    try:
        assert wait_for(lambda: two() or not pid_alive(pid), 600, interval=0.1)
        assert pid_alive(pid), output(work)[-3000:]
    except BaseException:
        stop_run(pid)
        raise
    return pid


def run_to_the_end(server: ForkServer, args: list[str], work: Path, env: dict) -> None:
    """Run ``stepprune ARGS`` through the fork server; it must finish with exit status 0. What
    it started is left to end by itself (the caller checks that it does)."""
    work.mkdir()
    pid = server.spawn(args, work, env)
    try:
        assert wait_for(lambda: not pid_alive(pid), timeout=900)
    finally:
        stop_run(pid)
    assert int((work / "status").read_text()) == 0, output(work)[-3000:]


def stop_run(pid: int) -> None:
    """Kill the run ``pid`` and everything below it, if still alive (a test's clean-up)."""
    below = descendants(pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    kill_all(below)


def assert_none_left(below: list, timeout: float) -> None:
    """None of the processes ``below`` is alive within ``timeout`` s."""

    def survivors() -> list[str]:
        return [cmdline(p[0])[:80] for p in below if alive(p)]

    assert wait_for(lambda: not survivors(), timeout=timeout), survivors()


def assert_ends_quietly(pid: int, below: list, work: Path) -> None:
    """The run ``pid`` of the fork server, just signalled, ends with an error status, without a
    traceback or Ray's native stack dump, and leaves none of the processes that were below it."""
    assert wait_for(lambda: not pid_alive(pid), timeout=120)
    assert int((work / "status").read_text()) != 0
    text = output(work)
    for sign in ("Traceback", "KeyboardInterrupt", "*** SIG", "Stack trace", "Aborted at"):
        assert sign not in text, text[-3000:]
    assert_none_left(below, timeout=30)


@pytest.fixture(scope="module")
def one_process(tiny_r1_dir: Path, tmp_path_factory, fork_server) -> tuple[Path, Path]:
    """(dataset, folder of the same run in one process), the reference of every Ray run."""
    work = tmp_path_factory.mktemp("ray-reference")
    data, out = dataset(work / "q.jsonl"), work / "one"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = invoke(fork_server, run_args(tiny_r1_dir, data, out), work, env, timeout=900)
    assert done.code == 0, done.stderr[-3000:]
    return data, out


def test_interrupted_twice_while_workers_load_then_resumed_gives_the_records_of_one_process(
    tiny_r1_dir, tmp_path, one_process, fork_server
) -> None:
    """Ctrl-C, as a terminal sends it (to the whole group: the reaper too), while the workers
    load (torch, then the model: the longest phase before any trace) and the driver waits for
    them: the run ends without a traceback or Ray's native stack dump, and leaves no Ray
    process. Then SIGKILL at the same point: Ray's agents would outlive the driver on their
    own; the run's reaper takes them, and everything else Ray started. The last run finishes
    every unit once, with the records of one process, and stops its Ray instance."""
    require_ray()
    data, one = one_process
    out = tmp_path / "two"
    args = run_args(tiny_r1_dir, data, out, "--workers", "2")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    before = ray_processes()
    for signal_to_send in ("Ctrl-C", "SIGKILL"):
        work = tmp_path / signal_to_send
        run = start_until_actors(fork_server, args, work, env, loading_only=True)
        below = []
        try:
            below = descendants(run)
            assert any("raylet" in cmdline(p[0]) for p in below)
            if signal_to_send == "Ctrl-C":
                os.killpg(run, signal.SIGINT)
                assert_ends_quietly(run, below, work)
            else:
                os.kill(run, signal.SIGKILL)
                assert wait_for(lambda: not pid_alive(run), timeout=10)  # noqa: B023
                assert_none_left(below, timeout=15)
        finally:
            stop_run(run)
            kill_all(below)
    run_to_the_end(fork_server, args, tmp_path / "resumed", env)
    # The run stopped the Ray instance it started: its processes are gone within seconds (on a
    # loaded machine they may still be exiting when the run returns).
    assert wait_for(lambda: ray_processes() <= before, timeout=60), ray_processes() - before
    assert_same_records(one, out)


@pytest.fixture(scope="module")
def cluster():
    """Two nodes (``ray.cluster_utils.Cluster`` on this machine, one CPU each, so the two
    workers run one on each node) with token authentication, as the README asks; the token is
    in this process's environment, which the test's runs inherit. Made once for the module."""
    require_ray()
    from ray.cluster_utils import Cluster

    from stepprune.workers import _reload_ray_config

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_AUTH_MODE", "token")
        patch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
        _reload_ray_config()
        made = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
        try:
            made.add_node(num_cpus=1)
            made.wait_for_nodes(timeout=120)
            yield made
        finally:
            made.shutdown()
    _reload_ray_config()


def test_more_workers_than_the_clusters_cpus_are_refused(cluster) -> None:
    """On a CPU-only cluster each worker takes one CPU: a third worker on two CPUs would wait
    for ever, so the pool refuses it before starting any actor."""
    import ray

    from stepprune.config import RunConfig
    from stepprune.workers import RayPool

    config = RunConfig.from_flat(device="cpu", workers=3)
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        with pytest.raises(ValueError, match=r"--workers 3: each worker takes one CPU.* has 2"):
            RayPool(config, config.plan(), 3)
    finally:
        ray.shutdown()
    assert not actors()


def test_two_nodes_killed_then_resumed_give_the_records_of_one_process(
    tiny_r1_dir, tmp_path, one_process, cluster, fork_server
) -> None:
    """`--ray-address` with `--workers 2`, killed with SIGKILL once its two workers run (one
    per node): Ray ends the actors of a driver that died, the cluster stays whole and usable,
    and the resumed run gives the records of one process."""
    data, one = one_process
    out = tmp_path / "two"
    args = run_args(tiny_r1_dir, data, out, "--ray-address", cluster.address, "--workers", "2")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = start_until_actors(fork_server, args, tmp_path / "killed", env)
    below = []
    try:
        below = descendants(run)
        os.kill(run, signal.SIGKILL)
        assert wait_for(lambda: not actors(), timeout=120), actors()
    finally:
        stop_run(run)
        kill_all(below)
    run_to_the_end(fork_server, args, tmp_path / "resumed", env)
    assert wait_for(lambda: not actors(), timeout=60), actors()
    assert len(cluster.global_state._live_node_ids()) == 2  # the cluster is still whole
    assert_same_records(one, out)
