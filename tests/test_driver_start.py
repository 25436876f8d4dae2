"""The sweep's driver starts without torch: the backbone table it checks configurations with matches the registry,
and a dry run (every configuration checked against the data and the machine) imports neither torch, timm nor
torchvision. Trials import them in their own processes; the driver saved about 3 s of start-up."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from trainables.backbone_catalog import SHIPPED
from trainables.models.cnn_rnn import CnnRnn  # the probe's return annotation is resolved in this module


def test_the_catalog_is_the_registry_of_the_shipped_backbones():
    from trainables.models import registry

    shipped = {name for name in registry.list_backbones()
               if registry._BACKBONES.get(name).__module__.startswith("trainables.models.")}
    assert set(SHIPPED) == shipped, "a backbone was added or removed: update trainables/backbone_catalog.py"
    for name in shipped:
        assert SHIPPED[name].arguments == registry.backbone_arguments(name), (
            f"{name}'s constructor changed: update trainables/backbone_catalog.py")


def test_once_the_models_are_loaded_the_registry_answers():
    """A backbone registered at run time (here by a test; a user's own module in a trial) is known to the checks."""
    from trainables.backbone_catalog import backbone_arguments, list_backbones
    from trainables.config import TrialConfig
    from trainables.models import register_backbone

    @register_backbone("driver_start_probe", pins=("cnn",))
    def probe(**kwargs) -> CnnRnn:
        return CnnRnn(cnn="test_convnext", **kwargs)

    try:
        assert "driver_start_probe" in list_backbones()
        assert backbone_arguments("driver_start_probe") == SHIPPED["cnn_rnn_tiny"].arguments
        assert TrialConfig.from_dict({"backbone": "driver_start_probe"}).backbone == "driver_start_probe"
    finally:
        from trainables.models.registry import _BACKBONES

        _BACKBONES.entries.pop("driver_start_probe", None)


DRY_RUN = """
import json, sys
from cluster.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "loaded": sorted(m for m in ("torch", "timm", "torchvision") if m in sys.modules)}))
"""


@pytest.mark.parametrize("space", ["smoke", "all"])
def test_a_dry_run_imports_no_torch(prepared_index, tmp_path, space):
    proc = subprocess.run([sys.executable, "-c", DRY_RUN, "sweep", "--space", space, "--data", str(prepared_index),
                           "--dry-run",
                           "--cpus-per-worker", "1", "--gpus-per-worker", "0"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pre-flight:" in proc.stdout and "dry run:" in proc.stdout, proc.stdout
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"code": 0, "loaded": []}, proc.stdout


def test_a_typo_in_a_backbone_is_still_refused_without_torch(prepared_index, tmp_path):
    proc = subprocess.run([sys.executable, "-c", DRY_RUN, "sweep", "--space", "smoke", "--data", str(prepared_index),
                           "--dry-run", "--set", "backbone=cnn_rnn_tiyn"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.stderr.strip().splitlines() == [
        "emotune: error: smoke.yaml (the fixed settings): backbone='cnn_rnn_tiyn' is not registered; did you mean "
        f"'cnn_rnn_tiny'? (valid backbones: {', '.join(sorted(SHIPPED))})"]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"code": 2, "loaded": []}


OWN_RAY = """
import json
from pathlib import Path
import ray
from ray._private import ray_constants
from cluster import sweep
sweep.init_ray(log_to_driver=False, dashboard=False)
raylet = ray._private.worker._global_node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
children = Path(f"/proc/{raylet}/task/{raylet}/children").read_text().split()
commands = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in children]  # a worker retitles itself ray::IDLE
workers = [c for c in commands if c.startswith(b"ray::IDLE") or b"default_worker.py" in c]
started = {kind: [info.process for info in infos]
           for kind, infos in ray._private.worker._global_node.all_processes.items()}
monitor, asked = started[ray_constants.PROCESS_TYPE_MONITOR][0], []
terminate = monitor.terminate
monitor.terminate = lambda: (asked.append("SIGTERM"), terminate())
sweep._end_own_ray().join()
ended = [p.poll() for processes in started.values() for p in processes]
print(json.dumps({"idle_workers": len(workers), "ray_left": ray.is_initialized(),
                  "all_ended": None not in ended, "monitor": [*asked, monitor.returncode]}))
"""


def test_the_sweeps_own_ray_starts_no_idle_worker_processes_and_ends_without_waiting_for_its_monitor(tmp_path):
    """Ray would start one worker process per CPU for tasks without a runtime environment, and ``ray.init`` would wait
    for them; no process of a sweep could use them (see ``cluster.sweep.init_ray``). The local Ray a sweep starts has
    none when ``init_ray`` returns. The sweep ends every process of it, the autoscaler monitor by SIGKILL (its SIGTERM
    handler waits on the GCS that Ray ends first: ``cluster.sweep._end_own_ray``)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_GCS_SERVER_PORT")}
    proc = subprocess.run([sys.executable, "-c", OWN_RAY], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"idle_workers": 0, "ray_left": False,
                                                                "all_ended": True, "monitor": [-signal.SIGKILL]}
