"""Sweep storage in an object store: an S3 server (moto's standalone server, a separate process on 127.0.0.1) that
the platform reaches through the standard AWS variables, as it would reach a real bucket. Checkpoints written to and
read back from the bucket, a best checkpoint copied from the bucket to MLflow, a driver killed mid-sweep and resumed
from the bucket, and checkpoints that are loaded as data only (``weights_only``), never as code.

The fast tests run by default; the sweep is marked slow."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.test_cluster import free_port, wait_for_port

BIN = Path(sys.executable).parent


class _Evil:
    """A pickled object whose unpickling would run a command (it writes a marker file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """moto's S3 server on a free port in a session of its own; yields the environment that points a process at it."""
    pytest.importorskip("moto")
    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("w")
    server = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_port(port, timeout=60)
        yield {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
               "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture
def bucket(s3_server, monkeypatch):
    """A new bucket; this test process reaches the server through the same variables as the platform's processes."""
    import boto3

    for key, value in s3_server.items():
        monkeypatch.setenv(key, value)
    name = f"emotune-{uuid.uuid4().hex[:12]}"
    s3 = boto3.client("s3", endpoint_url=s3_server["AWS_ENDPOINT_URL"], region_name="us-east-1")
    s3.create_bucket(Bucket=name)
    return SimpleNamespace(name=name, s3=s3, env=s3_server)


def _objects(bucket) -> list[dict]:
    pages = bucket.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket.name)
    return [obj for page in pages for obj in page.get("Contents", [])]


def _state_names(bucket, state_keys: list[str], checkpoint_dir: str) -> bool:
    """Whether Tune's experiment state in the bucket records the checkpoint ``checkpoint_dir`` (a trial's checkpoint
    manager is kept there pickled, as hex, so the path is looked for in both spellings)."""
    tail = "/".join(checkpoint_dir.split("/")[-2:])  # trial-<id>/checkpoint_<n>
    for key in state_keys:
        body = bucket.s3.get_object(Bucket=bucket.name, Key=key)["Body"].read().decode()
        if tail in body or tail.encode().hex() in body:
            return True
    return False


def _reports(bucket, key: str) -> list[dict]:
    """The results Tune recorded for a trial (its ``result.json`` in the bucket)."""
    import json

    try:
        body = bucket.s3.get_object(Bucket=bucket.name, Key=key)["Body"].read().decode()
    except bucket.s3.exceptions.NoSuchKey:
        return []
    return [json.loads(line) for line in body.splitlines() if line.strip()]


def _keys(bucket) -> list[str]:
    return [obj["Key"] for obj in _objects(bucket)]


def _upload_checkpoint(bucket, prefix: str, state: object, extra: dict[str, str] | None = None):
    """A Ray checkpoint folder ``prefix`` in the bucket (written through pyarrow, as Ray writes it)."""
    import pyarrow.fs
    from ray.tune import Checkpoint

    fs, path = pyarrow.fs.FileSystem.from_uri(f"s3://{bucket.name}/{prefix}")
    with fs.open_output_stream(f"{path}/state.pt") as out:
        import io

        buf = io.BytesIO()
        torch.save(state, buf)
        out.write(buf.getvalue())
    for name, text in (extra or {}).items():
        with fs.open_output_stream(f"{path}/{name}") as out:
            out.write(text.encode())
    return Checkpoint(path, filesystem=fs)


# ---- fast: checkpoints are data, never code ---------------------------------------------------------------------

def test_a_checkpoint_pickling_an_object_is_refused_not_run(tmp_path):
    from trainables.errors import DataError
    from trainables.predict import load_bundle
    from trainables.session import load_state_file

    marker = tmp_path / "ran"
    path = tmp_path / "state.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "payload": _Evil(marker)}, path)
    with pytest.raises(DataError) as err:
        load_state_file(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "posix.system" in message and "refused" in message
    with pytest.raises(DataError, match="refused") as err:
        load_bundle(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()  # nothing was executed


def test_a_file_that_is_not_a_checkpoint_is_a_one_line_data_error(tmp_path):
    from trainables.errors import DataError
    from trainables.session import load_state_file

    path = tmp_path / "state.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="not a torch checkpoint") as err:
        load_state_file(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_checkpoint_of_tensors_and_plain_values_loads():
    from trainables.session import load_state_file

    import io

    buf = io.BytesIO()
    torch.save({"model": {"w": torch.ones(3)}, "config": {"lr": 1e-3, "dims": ["v", "a"], "x": None}, "epoch": 2,
                "pair": (1, 2.0)}, buf)
    buf.seek(0)
    state = load_state_file(buf)
    assert torch.equal(state["model"]["w"], torch.ones(3)) and state["config"]["dims"] == ["v", "a"]


# ---- fast: the bucket ---------------------------------------------------------------------------------------------

def test_resume_reads_the_checkpoint_from_the_bucket_and_refuses_a_pickled_object(bucket, tmp_path):
    from trainables.errors import DataError
    from trainables.session import _Session

    good = _upload_checkpoint(bucket, "sweeps/s/trial-1/checkpoint_000000", {"model": {"w": torch.ones(2)}, "unit": 1})
    session = _Session(SimpleNamespace(get_checkpoint=lambda: good))
    assert session.load_state(torch.device("cpu"))["unit"] == 1

    marker = tmp_path / "ran"
    bad = _upload_checkpoint(bucket, "sweeps/s/trial-2/checkpoint_000000", {"x": _Evil(marker)})
    session = _Session(SimpleNamespace(get_checkpoint=lambda: bad))
    with pytest.raises(DataError, match="refused") as err:
        session.load_state(torch.device("cpu"))
    assert f"s3://{bucket.name}/sweeps/s/trial-2/checkpoint_000000/state.pt" in str(err.value)
    assert not marker.exists()


def test_best_checkpoint_in_a_bucket_is_copied_to_mlflow(bucket, tmp_path):
    import pyarrow.fs

    from cluster.tracking import MlflowTrialCallback, open_experiment

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client, experiment_id = open_experiment(uri, "t", artifact_root=tmp_path / "artifacts")
    parent = client.create_run(experiment_id, run_name="sweep").info.run_id
    cb = MlflowTrialCallback(uri, experiment_id, parent, max_steps=2)
    fs, _ = pyarrow.fs.FileSystem.from_uri(f"s3://{bucket.name}")
    # What the callback reads of Tune's Trial: its id, config, last result and its storage's filesystem.
    trial = SimpleNamespace(trial_id="t1", config={"lr": 0.001}, last_result=None,
                            storage=SimpleNamespace(storage_filesystem=fs))
    cb.on_trial_start(0, [], trial)
    for epoch, value in ((1, 0.7), (2, 0.4)):  # the first epoch is the best
        result = {"epoch": epoch, "training_iteration": epoch, "time_total_s": 10.0 * epoch, "val_ccc_mean": value}
        cb.on_trial_result(0, [], trial, result)
        trial.last_result = result
        ckpt = _upload_checkpoint(bucket, f"sweeps/s/trial-t1/checkpoint_{epoch - 1:06d}",
                                  {"eval_model": {"w": torch.full((2,), float(epoch))}}, {"epoch.txt": str(epoch)})
        cb.on_checkpoint(0, [], trial, ckpt)
    assert not Path(cb.best["t1"][1]).exists()  # a bucket path, not a local folder
    cb.on_trial_complete(0, [], trial)

    run = client.get_run(cb.run_id("t1"))
    assert run.data.tags["emotune.best_checkpoint"] == f"s3://{bucket.name}/sweeps/s/trial-t1/checkpoint_000000"
    assert Path(client.download_artifacts(run.info.run_id, "checkpoint/epoch.txt", str(tmp_path))).read_text() == "1"
    from trainables.session import load_state_file

    state = load_state_file(client.download_artifacts(run.info.run_id, "checkpoint/state.pt", str(tmp_path)))
    assert torch.equal(state["eval_model"]["w"], torch.ones(2))


def test_a_best_checkpoint_gone_from_the_bucket_is_skipped(bucket, tmp_path):
    import pyarrow.fs

    from cluster.tracking import log_checkpoint, open_experiment

    client, experiment_id = open_experiment(f"sqlite:///{tmp_path / 'mlflow.db'}", "t",
                                            artifact_root=tmp_path / "artifacts")
    run_id = client.create_run(experiment_id).info.run_id
    fs, _ = pyarrow.fs.FileSystem.from_uri(f"s3://{bucket.name}")
    assert log_checkpoint(client, run_id, f"{bucket.name}/nothing/checkpoint_000003", fs) is False
    assert client.list_artifacts(run_id) == []


# ---- slow: a sweep in the bucket, its driver killed, resumed ------------------------------------------------------

@pytest.mark.slow
def test_sweep_in_a_bucket_survives_a_killed_driver_and_files_best_checkpoints(bucket, tmp_path):
    from mlflow.tracking import MlflowClient

    from tests.processes import start_sweep
    from tests.test_fault_tolerance import _kill_driver, _wait_for
    from tests.test_sweep_e2e import SPACE, emotune, synth_and_prepare
    from trainables.session import load_state_file

    # Long videos (the e2e test's are 72 frames) and dense windows, so that an epoch lasts a few seconds and the kill
    # below lands between two checkpoints.
    index = synth_and_prepare(tmp_path, frames=1200)[0]
    # 2 trials x 2 epochs, none stopped early by ASHA (grace = max), one at a time so the kill lands mid-sweep.
    (tmp_path / "s3.yaml").write_text(SPACE.replace("grace: 1", "grace: 2").replace("window_overlap: 0.5",
                                                                                    "window_overlap: 0.9"))
    storage = f"s3://{bucket.name}/sweeps"
    started = time.time()
    proc = start_sweep(["sweep", "--space", "s3.yaml", "--data", str(index), "--trials", "2", "--name", "b",
                        "--storage", storage, "--max-concurrent", "1", "--seed", "1"], cwd=tmp_path, env=bucket.env)
    try:
        _wait_for(proc, r"trial \w+ started", timeout=600)
        # Kill once the first checkpoint is in the bucket and the experiment state there names it (so the resumed
        # sweep must read that checkpoint back from the bucket).
        deadline, first = time.time() + 600, None
        while time.time() < deadline:
            objects = _objects(bucket)
            ckpt = [o["Key"] for o in objects if "/checkpoint_" in o["Key"] and o["Key"].endswith("/state.pt")]
            state = [o["Key"] for o in objects if o["Key"].rsplit("/", 1)[-1].startswith("experiment_state")]
            # a trial between its first and second checkpoint, the first one recorded in the experiment state
            mid = [k for k in ckpt if k.endswith("/checkpoint_000000/state.pt")
                   and k.replace("checkpoint_000000", "checkpoint_000001") not in ckpt]
            if mid and state and _state_names(bucket, state, mid[0].rsplit("/", 1)[0]):
                first = mid[0].split("/")[2]
                break
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            time.sleep(0.5)
        else:
            raise AssertionError(f"no checkpoint in the bucket after 600 s: {_keys(bucket)}")
        assert proc.poll() is None, "the sweep ended before its driver could be killed"
    finally:
        _kill_driver(proc)
    killed_after = time.time() - started
    reports_at_kill = _reports(bucket, f"sweeps/b/{first}/result.json")
    assert not (tmp_path / "ray_results").exists()  # nothing of the sweep went to a local folder

    resumed = emotune("sweep", "--resume", "b", "--storage", storage, cwd=tmp_path, timeout=900)
    print(f"killed after {killed_after:.0f} s; resume took {time.time() - started - killed_after:.0f} s")
    assert "Leaderboard of sweep b" in resumed.stdout

    keys = _keys(bucket)
    assert any(k.startswith("sweeps/b/experiment_state") for k in keys)
    ckpts = {k.split("/")[2] for k in keys if "/checkpoint_" in k and k.endswith("/state.pt")}
    assert len(ckpts) == 2, keys  # every trial checkpointed into the bucket

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("emotune").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    trial_ids = sorted(c.data.tags["emotune.trial_id"] for c in children)
    assert len(trial_ids) == 2 and len(set(trial_ids)) == 2  # every trial once, no duplicate run
    assert {f"trial-{t}" for t in trial_ids} == ckpts
    for child in children:
        assert child.info.status == "FINISHED" and child.data.tags["emotune.epochs_run"] == "2"
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_ccc_mean")]
        print(child.data.tags["emotune.trial_id"], "epochs reported:", steps)
        assert set(steps) == {1, 2}
        if f"trial-{child.data.tags['emotune.trial_id']}" == first:
            # The killed trial went on from its checkpoint in the bucket (loaded with weights_only), not from scratch.
            assert steps.count(1) == 1
    reports = _reports(bucket, f"sweeps/b/{first}/result.json")
    print(f"{first}: {len(reports_at_kill)} report(s) at the kill; epochs {[r['epoch'] for r in reports]} "
          f"({[round(r['epoch_time_s'], 1) for r in reports]} s) from processes {[r['pid'] for r in reports]}")
    if len(reports_at_kill) == 1:  # killed mid-trial: a new process finished it from the bucket's checkpoint
        assert [r["epoch"] for r in reports] == [1, 2] and len({r["pid"] for r in reports}) == 2
        assert child.data.tags["emotune.best_checkpoint"].startswith(f"{storage}/b/trial-")
        assert "checkpoint" in {a.path for a in client.list_artifacts(child.info.run_id)}
    import optuna

    study = optuna.load_study(study_name="b", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert len([t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]) == 2

    best_run = parents[0].data.tags["emotune.best_run_id"]
    state = load_state_file(client.download_artifacts(best_run, "checkpoint/state.pt", str(tmp_path)))
    assert {"eval_model", "model", "config", "postprocess"} <= set(state)
    assert state["epoch"] >= 1
