"""A Ray cluster of two nodes (``ray.cluster_utils.Cluster`` on this machine, one CPU each, so
the two workers run one on each node), with token authentication as the README asks:
`--ray-address` with `--workers 2` gives the records of one process; `kill -9` of the driver
leaves the cluster usable and the folder resumable; nothing of the run is left on either node."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from pathlib import Path

import pytest

from tests.extras import require_ray
from tests.processes import cmdline, descendants, kill_all, stop, wait_for
from tests.test_workers_ray_safety import PROBLEMS, _command, _dataset

# vLLM and Ray start servers and look for their processes: one such test at a time.
pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.xdist_group("engines")]

COMPARED = ["answer_text", "prediction", "correct", "kept_steps", "tokens_kept", "context_tokens"]


def _keyed(out: Path, name: str) -> dict[tuple, dict]:
    rows = [json.loads(x) for x in (out / name).read_text().splitlines()]
    keyed = {}
    for row in rows:
        key = (row["problem_id"], row["sample"], row.get("threshold"))
        assert key not in keyed, f"{name}: {key} written twice"
        keyed[key] = row
    return keyed


def _actors() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and "RunnerActor" in cmdline(int(p))]


@pytest.fixture
def cluster(monkeypatch):
    """Two nodes with token authentication; the token is in this process's environment, which
    the test's runs inherit."""
    require_ray()
    from ray.cluster_utils import Cluster

    from stepprune.workers import _reload_ray_config

    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    _reload_ray_config()
    made = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        made.add_node(num_cpus=1)
        made.wait_for_nodes(timeout=120)
        yield made
    finally:
        made.shutdown()
        monkeypatch.undo()
        _reload_ray_config()


def test_two_nodes_give_the_records_of_one_process(tiny_r1_dir, tmp_path, cluster) -> None:
    dataset = _dataset(tmp_path / "q.jsonl")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    one, two = tmp_path / "one", tmp_path / "two"
    done = subprocess.run(_command(tiny_r1_dir, dataset, one), env=env, capture_output=True)
    assert done.returncode == 0, done.stderr[-3000:]
    command = _command(
        tiny_r1_dir, dataset, two, "--ray-address", cluster.address, "--workers", "2"
    )
    # Killed once its two workers run (one per node), then resumed on the same cluster.
    with (tmp_path / "log").open("wb") as log:
        run = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    below = []
    try:
        assert wait_for(lambda: len(_actors()) == 2 or run.poll() is not None, timeout=600)
        assert run.poll() is None, (tmp_path / "log").read_text()[-3000:]
        below = descendants(run.pid)
        run.kill()
        run.wait()
        # Ray ends the actors of a driver that died; nothing of the run stays on either node.
        assert wait_for(lambda: not _actors(), timeout=120), _actors()
    finally:
        stop(run)
        kill_all(below)
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert wait_for(lambda: not _actors(), timeout=60), _actors()
    assert len(cluster.global_state._live_node_ids()) == 2  # the cluster is still whole
    traces_one, traces_two = _keyed(one, "traces.jsonl"), _keyed(two, "traces.jsonl")
    assert set(traces_one) == set(traces_two) and len(traces_one) == len(PROBLEMS)
    for key, trace in traces_one.items():
        assert trace["output_ids"] == traces_two[key]["output_ids"], key
    records_one, records_two = _keyed(one, "records.jsonl"), _keyed(two, "records.jsonl")
    assert set(records_one) == set(records_two) and len(records_one) == len(PROBLEMS) * 2
    for key, row in records_one.items():
        assert {f: row[f] for f in COMPARED} == {f: records_two[key][f] for f in COMPARED}, key
