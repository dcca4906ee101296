"""A local Ray instance (`--workers N` without `--ray-address`) is the run's own and closed to
the network: a new instance even beside a stale one, clients without the run's token refused;
a `--ray-address` where nothing listens fails at once; SIGTERM ends a workers run quietly and
with every process Ray started, and an interrupt before the workers are ready undoes what the
pool did (Ctrl-C, and more workers than a cluster's CPUs: test_workers_ray)."""

from __future__ import annotations

import importlib.machinery
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import types
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.extras import require_ray
from tests.processes import cmdline, descendants, invoke, kill_all
from tests.test_workers_ray import (
    assert_ends_quietly,
    dataset,
    run_args,
    start_until_actors,
    stop_run,
)

# Tests that start Ray look for its processes by name: one such test at a time.
pytestmark = pytest.mark.xdist_group("ray")


def _listening(pids: set[int]) -> list[tuple[str, int, int]]:
    """(local address, port, pid) of every listening TCP socket of ``pids`` (``ss -ltnp``)."""
    found = []
    text = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True).stdout
    for line in text.splitlines():
        fields = line.split()
        local = fields[3]
        for pid in map(int, re.findall(r"pid=(\d+)", line)):
            if pid in pids:
                host, _, port = local.rpartition(":")
                found.append((host, int(port), pid))
    return found


def _loopback(host: str) -> bool:
    return host.strip("[]").split("%")[0] in ("127.0.0.1", "::1", "localhost") or host.startswith(
        "127."
    )


def _reach(host: str) -> str:
    """An address that reaches a socket listening on ``host``."""
    return "127.0.0.1" if host in ("*", "0.0.0.0", "[::]") else host.strip("[]")


def _tokenless_client(port: int, home: Path) -> subprocess.CompletedProcess:
    """A Ray client with no token (none in its environment or home) asks the GCS at ``port``
    for the cluster's nodes."""
    code = (
        "import sys\nfrom ray._raylet import GcsClient\n"
        f"nodes = GcsClient(address='127.0.0.1:{port}').get_all_node_info(timeout=20)\n"
        "print('ACCEPTED', len(nodes))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), RAY_AUTH_MODE="disabled")
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )


@pytest.mark.slow
def test_local_ray_is_a_new_instance_closed_to_the_network_and_sigterm_ends_it(
    tiny_r1_dir, tmp_path, fork_server
) -> None:
    """Beside a stale `ray_current_cluster` and a `RAY_ADDRESS` of a cluster that is gone, with
    the user's `RAY_AUTH_MODE=disabled`: the run starts its own instance (its two workers start),
    and every listening socket of its Ray processes is on loopback or refuses a client without
    the run's token. SIGTERM to the driver then ends the run quietly, with every Ray process."""
    require_ray()
    # A short temp dir: Ray's socket paths must fit in 107 bytes.
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    (ray_tmp / "ray_current_cluster").write_text("127.0.0.1:1\n")  # left by a crashed instance
    out, work = tmp_path / "run", tmp_path / "work"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "RAY_TMPDIR": str(ray_tmp),
        "RAY_ADDRESS": "127.0.0.1:1",
        "RAY_AUTH_MODE": "disabled",
        "HOME": str(tmp_path),
    }
    args = run_args(tiny_r1_dir, dataset(tmp_path / "q.jsonl"), out, "--workers", "2")
    run = start_until_actors(fork_server, args, work, env, loading_only=True)
    below = []
    try:
        below = descendants(run)
        pids = {p[0] for p in below} | {run}
        sockets = _listening(pids)
        gcs = [port for host, port, pid in sockets if "gcs_server" in cmdline(pid)]
        assert gcs, sockets
        exposed = [(h, port, cmdline(pid)[:60]) for h, port, pid in sockets if not _loopback(h)]
        if exposed:  # Ray cannot bind to loopback: its token must keep other clients out
            client = _tokenless_client(gcs[0], tmp_path)
            assert "ACCEPTED" not in client.stdout, client.stdout
            assert "Authentication" in client.stdout + client.stderr, client.stderr[-2000:]
            http = [(h, port) for h, port, pid in sockets if "RuntimeEnvAgent" in cmdline(pid)]
            for host, port in http:  # its HTTP server too (the other servers are gRPC, as the GCS)
                with pytest.raises(urllib.error.HTTPError) as refused:
                    urllib.request.urlopen(
                        f"http://{_reach(host)}:{port}/get_or_create_runtime_env", b"x", timeout=20
                    )
                assert refused.value.code in (401, 403)
        os.kill(run, signal.SIGTERM)
        assert_ends_quietly(run, below, work)
    finally:
        stop_run(run)
        kill_all(below)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert not (tmp_path / ".ray" / "auth_token").exists()  # the token was never written


@pytest.mark.e2e
def test_ray_address_where_nothing_listens_fails_at_once(
    tiny_r1_dir, tmp_path, fork_server
) -> None:
    require_ray()
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = dataset(tmp_path / "q.jsonl")
    address = f"127.0.0.1:{port}"
    args = run_args(tiny_r1_dir, data, tmp_path / "run", "--ray-address", address)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = invoke(fork_server, args, tmp_path, env, timeout=300)
    assert result.code == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --ray-address {address}: no Ray"), lines
    assert result.seconds < 240 and not result.leftover
    assert not (tmp_path / "run" / "config.json").exists()


def test_a_ray_client_address_is_refused_with_what_to_give_instead() -> None:
    """The same one-line path as above (a ValueError before any Ray connection)."""
    require_ray()
    from stepprune.workers import _reachable

    with pytest.raises(ValueError, match=r"^--ray-address ray://h:1: Ray Client .* HOST:PORT"):
        _reachable("ray://h:1")


class _Reaper:
    killed = False

    def kill(self) -> None:
        self.killed = True

    def wait(self) -> int:
        return -9


def test_an_interrupt_while_the_actors_start_undoes_what_the_pool_did(monkeypatch) -> None:
    """Ctrl-C (or SIGTERM, turned into it) after Ray has started and before the actors are
    ready: the pool shuts the Ray it started down, kills its reaper, and puts the run's
    SIGTERM handler and environment back, as any later failure does. Ray is a stand-in here,
    interrupted in its first call after ``ray.init``."""
    from stepprune import workers
    from stepprune.config import RunConfig

    calls = []
    ray = types.ModuleType("ray")
    ray.__spec__ = importlib.machinery.ModuleSpec("ray", None)
    ray.is_initialized = lambda: False
    ray.init = lambda **options: calls.append("init")
    ray.shutdown = lambda: calls.append("shutdown")

    def interrupted():
        raise KeyboardInterrupt

    ray.cluster_resources = interrupted
    ray_util = types.ModuleType("ray.util")
    ray_util.ActorPool = object
    monkeypatch.setitem(sys.modules, "ray", ray)
    monkeypatch.setitem(sys.modules, "ray.util", ray_util)
    monkeypatch.setattr(workers, "_reload_ray_config", lambda: None)
    reaper = _Reaper()
    monkeypatch.setattr(workers, "_start_reaper", lambda: reaper)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    sigterm = signal.getsignal(signal.SIGTERM)
    config = RunConfig.from_flat(device="cpu", workers=2)
    with pytest.raises(KeyboardInterrupt):
        workers.RayPool(config, config.plan(), 2)
    assert calls == ["init", "shutdown"] and reaper.killed
    assert "RAY_AUTH_TOKEN" not in os.environ
    assert signal.getsignal(signal.SIGTERM) == sigterm
