"""Processes the tests start, and only those: each in a session (process group) of its own, ended by that group.

A sweep's local Ray (GCS, raylet, dashboard, agents) is started by its driver and stays in the driver's process
group; Ray's worker processes get groups of their own but end when their raylet does. So ending the driver's group
ends the sweep and everything it started, as a crash of that machine would, and nothing else: no shutdown of
every Ray of the user, no matching of command lines.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
EXE = str(BIN / "emotune")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def node_ports(head: bool = True) -> list[str]:
    """``ray start`` flags giving a node free ports of its own for the services that otherwise take fixed defaults
    (the dashboard agent's 52365, the Ray client server's 10001 on a head): a second Ray on the machine (the user's,
    a bystander, another test's) holds those, and this node's agent would fail to start ("No available agent to
    submit job")."""
    ports = ["--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--metrics-export-port",
             "--runtime-env-agent-port", *(["--ray-client-server-port"] if head else [])]
    return [f"{flag}={free_port()}" for flag in ports]


def start(cmd: list[str], **kwargs) -> subprocess.Popen:
    """``cmd`` in a session of its own (see the module docstring)."""
    return subprocess.Popen(cmd, start_new_session=True, **kwargs)


def end(proc: subprocess.Popen, sig: int = signal.SIGKILL, timeout: float = 60) -> None:
    """End ``proc`` and everything in its process group (which :func:`start` made its own)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout)


def start_sweep(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.Popen:
    """``emotune <args>`` with its output in a pipe (line by line), in a session of its own."""
    return start([EXE, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                 env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


def wait_for_line(proc: subprocess.Popen, pattern: str, timeout: float = 600) -> str:
    """Read ``proc``'s output until a line matches ``pattern``; returns everything read."""
    seen, deadline = [], time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        if re.search(pattern, line):
            return "".join(seen)
    raise AssertionError(f"{pattern!r} never appeared:\n{''.join(seen)[-3000:]}")


def trial_worker_pid(trial_dir: Path, timeout: float = 60) -> int:
    """The process that trains the trial (reported by the trial itself as ``worker_pid``, see trainables.loop)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        lines = (trial_dir / "result.json").read_text().splitlines() if (trial_dir / "result.json").is_file() else []
        if lines:
            return int(json.loads(lines[-1])["worker_pid"])
        time.sleep(0.2)
    raise AssertionError(f"{trial_dir} reported no result")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours counts as gone
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


@contextlib.contextmanager
def bystander_ray(num_cpus: int = 1, env: dict | None = None):
    """A Ray head a user started for other work (``ray start --head --block``, dashboard on), yielding (process,
    GCS address, dashboard URL). It writes Ray's "current cluster" file as any ``ray start`` does, so a command that
    joined the machine's latest cluster would join it; the file is put back as it was afterwards."""
    from ray._common.utils import get_ray_address_file

    address_file = Path(get_ray_address_file(None))
    before = address_file.read_text() if address_file.is_file() else None
    gcs, dash = free_port(), free_port()
    env = {k: v for k, v in {**os.environ, **(env or {})}.items() if k != "RAY_ADDRESS"}
    proc = start([str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
                  f"--num-cpus={num_cpus}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                  f"--dashboard-port={dash}", "--disable-usage-stats", *node_ports()],
                 env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(dash, timeout=180)
        # `ray start` names its cluster (by the machine's address) once the node is up, after the dashboard.
        deadline, named = time.time() + 120, ""
        while not named.endswith(f":{gcs}"):
            assert time.time() < deadline and proc.poll() is None, "the bystander Ray did not come up"
            time.sleep(0.5)
            named = address_file.read_text().strip() if address_file.is_file() else ""
        yield proc, named, f"http://127.0.0.1:{dash}"
    finally:
        end(proc)
        if before is None:
            address_file.unlink(missing_ok=True)
        else:
            address_file.write_text(before)


def user_processes(min_age_s: float = 10.0) -> dict[int, tuple[str, str]]:
    """pid -> (start time, command name) of this user's processes older than ``min_age_s`` (younger ones come and go
    by themselves), read from ``ps`` for a liveness check at the end of the suite; nothing is ever chosen to be ended
    this way."""
    out = subprocess.run(["ps", "-u", str(os.getuid()), "-o", "pid=,ppid=,sid=,stat=,etimes=,lstart=,comm="],
                         capture_output=True, text=True, check=True).stdout
    own_session = str(os.getsid(0))
    procs = {}
    for line in out.splitlines():
        words = line.split()
        pid, ppid, sid, state, age, started, command = *words[:5], " ".join(words[5:10]), " ".join(words[10:])
        # A zombie is reaped by its parent at any time; the kernel's own threads (children of kthreadd, pid 2, seen
        # as root's processes) come and go by themselves; so do the processes of the session that runs the suite
        # (the shell or CI job around pytest, and its helpers). The user's other work runs in sessions of its own.
        if float(age) >= min_age_s and not state.startswith("Z") and "2" not in (pid, ppid) and sid != own_session:
            procs[int(pid)] = (started, command)
    return procs


def gone(procs: dict[int, tuple[str, str]]) -> list[str]:
    """``pid (command)`` of the processes of ``procs`` (from :func:`user_processes`) no longer running: no process
    with that pid, or one started at another time."""
    if not procs:
        return []
    out = subprocess.run(["ps", "-o", "pid=,lstart=", "-p", ",".join(map(str, procs))], capture_output=True,
                         text=True).stdout
    now = {int(w[0]): " ".join(w[1:6]) for w in (line.split() for line in out.splitlines())}
    return [f"{pid} ({command})" for pid, (started, command) in procs.items() if now.get(pid) != started]
