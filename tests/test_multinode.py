"""A real two-node Ray on one machine: a head (`ray start --head`) and a second node (`ray start --address ...`, its own
raylet and object store), both with one CPU, token authentication on. A sweep submitted with `ray job submit` spreads
its trials over both nodes (each trial's MLflow run records its node), reads one clip cache from a shared path, and
when the second node is killed mid-sweep its trial resumes on the head from its checkpoint: every trial finishes once.

Marked slow: it starts two raylets, an MLflow store and a sweep of 4 trials x 30 short epochs.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import signal
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from test_cluster import BIN, free_port, wait_for_port
from tests.processes import end, node_ports, start
from test_sweep_e2e import synth_and_prepare

pytestmark = pytest.mark.slow

# Many short epochs and no early stopping, so a trial is still running when its node goes away.
SPACE = """
name: multinode
objective: {metric: val_ccc_mean, mode: max}
fidelity: {attr: epoch, max: 30, grace: 30, reduction_factor: 2}
resources: {workers: 1, cpus_per_worker: 1, gpus_per_worker: 0}
fixed: {backbone: cnn_rnn_tiny, window_length: 24, clip_len: 24, label_fusion: mean, batch_size: 8, w_ccc: 1.0,
        seed: 0, rnn_hidden: 16, window_overlap: 0.5, ssts_stride: 4}
params:
  lr: {type: loguniform, low: 1.0e-4, high: 3.0e-3}
"""


def _ray(*args: str, env: dict, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ray"), *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture()
def two_nodes(tmp_path):
    """(env with the token, dashboard address, GCS address, the worker node's process, its node id)."""
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    env.pop("RAY_ADDRESS", None)
    gcs, dash = free_port(), free_port()
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay under 107 bytes
    # Each node in a session of its own (--block keeps its raylet in this process group), so the test ends exactly
    # these nodes and everything they run: the worker node mid-sweep, as a machine that goes away, both at the end.
    head = start([str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
                  "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=1", "--include-dashboard=true",
                  f"--temp-dir={temp}", '--resources={"head_node": 1}', "--disable-usage-stats", *node_ports()], env=env,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = None
    address = f"http://127.0.0.1:{dash}"
    try:
        wait_for_port(dash, timeout=180)
        worker = start([str(BIN / "ray"), "start", f"--address=127.0.0.1:{gcs}", "--node-ip-address=127.0.0.1",
                        "--num-cpus=1", "--block", "--disable-usage-stats", *node_ports(head=False)], env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        worker_id = None
        deadline = time.time() + 120
        while worker_id is None and time.time() < deadline:
            listed = _ray("list", "nodes", "--format", "json", "--address", address, env=env)
            # "No resource in the cluster": the head's state service answers before its node has registered
            text = listed.stdout.strip() if listed.returncode == 0 else ""
            nodes = json.loads(text) if text.startswith("[") else []
            alive = [n for n in nodes if n.get("state") == "ALIVE"]
            if len(alive) == 2:
                worker_id = next(n["node_id"] for n in alive if not n.get("is_head_node"))
            else:
                time.sleep(2)
        assert worker_id, f"the second node did not join: {nodes}"
        yield env, address, worker, worker_id
    finally:
        for node in (worker, head):
            if node is not None:
                end(node)
        shutil.rmtree(temp, ignore_errors=True)


def _reported_from(db: Path, node_id: str) -> str | None:
    """A run that reported a validation result from node ``node_id``, read straight from the SQLite store (an MLflow
    client here would race the sweep's own creation of the store's tables)."""
    import sqlite3

    if not db.is_file():
        return None
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            row = con.execute("SELECT t.run_uuid FROM tags t JOIN metrics m ON m.run_uuid = t.run_uuid "
                              "WHERE t.key = 'emotune.node_id' AND t.value = ? AND m.key = 'val_ccc_mean' LIMIT 1",
                              (node_id,)).fetchone()
    except sqlite3.Error:  # the tables are not there yet
        return None
    return row[0] if row else None


def _trial_runs(client) -> list:
    exp = client.get_experiment_by_name("emotune")
    return [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]


@pytest.mark.timeout(1800)
def test_trials_spread_over_two_nodes_and_survive_losing_one(two_nodes, tmp_path):
    env, address, worker, worker_id = two_nodes
    index = synth_and_prepare(tmp_path, frames=400)[0]  # one cache on a path both nodes read
    (tmp_path / "multinode.yaml").write_text(SPACE)
    db = tmp_path / "mlflow.db"
    sweep = [str(BIN / "emotune"), "sweep", "--space", str(tmp_path / "multinode.yaml"), "--data", str(index),
             "--trials", "4", "--max-concurrent", "2", "--name", "mn", "--storage", str(tmp_path / "ray_results"),
             "--mlflow-uri", f"sqlite:///{db}", "--optuna-storage", f"sqlite:///{tmp_path / 'optuna.db'}",
             "--max-failures", "2"]
    for _ in range(30):
        # The sweep's driver runs on the head, as on a real cluster (the node that goes away holds trials only). No
        # --working-dir: the installed command and absolute paths are all the job needs.
        submitted = _ray("job", "submit", "--address", address, "--no-wait",
                         "--entrypoint-resources", '{"head_node": 0.01}', "--", *sweep, env=env)
        # A head that has just started may not have its job agent up yet: Ray answers so, and the user retries.
        if "No available agent to submit job" not in submitted.stdout + submitted.stderr:
            break
        time.sleep(10)
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    job_id = re.search(r"(raysubmit_\w+)", submitted.stdout + submitted.stderr).group(1)

    def status() -> str:
        answer = _ray("job", "status", job_id, "--address", address, env=env)
        return answer.stdout + answer.stderr

    def finished() -> bool:  # the CLI says "succeeded", "failed" or "stopped" (in colour)
        return any(word in status().lower() for word in ("succeeded", "failed", "stopped"))

    # Wait until a trial on the second node has reported an epoch (its checkpoint is saved with that report).
    deadline, victim = time.time() + 600, None
    while victim is None and time.time() < deadline and not finished():
        victim = _reported_from(db, worker_id)
        time.sleep(1)
    logs = lambda: _ray("job", "logs", job_id, "--address", address, env=env).stdout[-20000:]  # noqa: E731
    assert victim, f"no trial reported from the second node:\n{logs()[-5000:]}"
    time.sleep(1)
    os.killpg(worker.pid, signal.SIGKILL)  # the node goes away with its raylet and the trial process on it
    deadline = time.time() + 600
    while not finished() and time.time() < deadline:
        time.sleep(3)
    out = logs()
    (tmp_path / "job.log").write_text(out)
    final = status()
    assert "succeeded" in final.lower(), final + out[-8000:]
    assert "Leaderboard of sweep mn" in out
    assert "Trials:        4 complete, 0 stopped early, 0 diverged, 0 errored" in out, out[-3000:]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    runs = _trial_runs(client)
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)  # every trial once
    nodes = {n for r in runs for n in r.data.tags["emotune.nodes"].split(",")}
    assert worker_id in nodes and len(nodes) == 2  # trials ran on both nodes
    moved = client.get_run(victim)
    assert moved.data.tags["emotune.nodes"].split(",")[0] == worker_id
    assert moved.data.tags["emotune.node_id"] != worker_id  # it finished on the head
    epochs = [int(m.step) for m in client.get_metric_history(victim, "val_ccc_mean")]
    # Resumed from its checkpoint, not from scratch: every epoch is there, epoch 1 once, and at most one epoch twice
    # (the one whose report reached MLflow as the node died, after the checkpoint Tune restored from).
    assert sorted(set(epochs)) == list(range(1, 31)) and epochs.count(1) == 1, epochs
    assert len(epochs) - len(set(epochs)) <= 1, epochs
