"""Sweeps against real local servers: a Ray head started with `ray start --head` (token authentication on) and
`ray job submit`, and an `mlflow server` on 127.0.0.1. Marked slow: each starts real services."""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.processes import end, free_port, node_ports, start, wait_for_port
from tests.test_sweep_e2e import SPACE, emotune, synth_and_prepare

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    work = tmp_path_factory.mktemp("cluster")
    index = synth_and_prepare(work)[0]
    (work / "e2e.yaml").write_text(SPACE)
    return work, index


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """A real Ray head on 127.0.0.1 with token authentication, as a user starts it (``--block``, in a session of its
    own: the test ends this head and nothing else)."""
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    env.pop("RAY_ADDRESS", None)
    gcs, dash = free_port(), free_port()
    temp = tmp_path_factory.mktemp("raytmp")
    head = start([str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
                  "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2",
                  "--include-dashboard=true", f"--temp-dir={temp}", "--disable-usage-stats", *node_ports()],
                 env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(dash, timeout=180)
        yield env, f"http://127.0.0.1:{dash}"
    finally:
        end(head)


def test_ray_job_submit_runs_a_sweep(prepared, ray_head, tmp_path):
    work, index = prepared
    env, address = ray_head
    job_dir = tmp_path / "job"
    shutil.copytree(work, job_dir, ignore=shutil.ignore_patterns("data"))
    # Without the token the head refuses the submission: authentication is really on.
    no_token = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN"}
    refused = subprocess.run([str(BIN / "ray"), "job", "list", "--address", address], env=no_token,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0
    mlflow_db = tmp_path / "mlflow.db"
    cmd = [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(job_dir), "--",
           str(BIN / "emotune"), "sweep", "--space", "e2e.yaml", "--data", str(index), "--trials", "2",
           "--name", "submitted", "--storage", str(tmp_path / "ray_results"),
           "--mlflow-uri", f"sqlite:///{mlflow_db}", "--optuna-storage", f"sqlite:///{tmp_path / 'optuna.db'}"]
    for _ in range(10):
        job = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        # A head that has just started may not have its job agent up yet: Ray answers so, and the user retries.
        if "No available agent to submit job" not in job.stdout + job.stderr:
            break
        time.sleep(10)
    assert job.returncode == 0, job.stdout[-4000:] + job.stderr[-4000:]
    assert "Leaderboard of sweep submitted" in job.stdout
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{mlflow_db}")
    runs = client.search_runs([client.get_experiment_by_name("emotune").experiment_id])
    assert len([r for r in runs if "mlflow.parentRunId" in r.data.tags]) == 2
    assert len([r for r in runs if "mlflow.parentRunId" not in r.data.tags]) == 1


def start_mlflow_server(folder: Path) -> tuple[subprocess.Popen, int]:
    """A real ``mlflow server`` on 127.0.0.1 (a free port) with its store and artifacts in ``folder``, in a session of
    its own; the caller waits for the port and stops it."""
    port = free_port()
    server = start([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                    "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
                    "--artifacts-destination", str(folder / "server-artifacts"), "--workers", "1"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return server, port


def test_sweep_records_to_a_real_mlflow_server(prepared, tmp_path):
    work, index = prepared
    server, port = start_mlflow_server(tmp_path)
    try:
        wait_for_port(port, timeout=120)
        uri = f"http://127.0.0.1:{port}"
        emotune("sweep", "--space", "e2e.yaml", "--data", str(index), "--trials", "2", "--name", "served",
                "--mlflow-uri", uri, "--storage", str(tmp_path / "ray_results"), cwd=work)
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name("emotune").experiment_id])
        parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        assert len(parents) == 1 and len(children) == 2
        for child in children:
            assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
            assert {a.path for a in client.list_artifacts(child.info.run_id)} >= {"config.json", "checkpoint"}
            steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_ccc_mean")]
            assert steps == list(range(1, len(steps) + 1)) and steps
        # Artifacts went through the server into its artifact store, not to a client-side folder.
        assert any((tmp_path / "server-artifacts").rglob("state.pt"))
    finally:
        end(server, signal.SIGTERM, timeout=30)
