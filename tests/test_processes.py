"""The suite's own process hygiene (tests/processes.py): the liveness check that guards the user's processes names a
process that was ended and only that one, and ending a started command ends its whole process group."""
from __future__ import annotations

import subprocess
import sys
import time

from tests.processes import alive, end, gone, start, user_processes


def test_the_check_names_exactly_the_process_that_was_ended():
    keep, victim = start(["sleep", "600"]), start(["sleep", "600"])
    try:
        time.sleep(0.5)
        before = user_processes(min_age_s=0)
        assert {keep.pid, victim.pid} <= set(before)
        end(victim)
        assert gone({p: before[p] for p in (keep.pid, victim.pid)}) == [f"{victim.pid} (sleep)"]
    finally:
        end(keep)


def test_ending_a_command_ends_what_it_started():
    parent = start([sys.executable, "-c", "import subprocess, time; subprocess.Popen(['sleep', '600']); "
                                          "print(flush=True); time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    parent.stdout.readline()  # the child runs
    child = int(subprocess.run(["ps", "-o", "pid=", "--ppid", str(parent.pid)], capture_output=True,
                               text=True).stdout.split()[0])
    end(parent)
    deadline = time.time() + 10
    while alive(child) and time.time() < deadline:
        time.sleep(0.1)
    assert not alive(parent.pid) and not alive(child)
