"""Exit codes are interface: every subcommand of the installed ``emotune`` command, run as a user runs it (a process of
its own, through its real entry point): ``--help`` exits 0, a usage error 2 and a user error 2, each error one line
``emotune: error: ...`` on stderr and nothing on stdout; an unexpected failure exits 1 with one line naming the log
that holds the traceback."""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.cli import build_parser

EXE = str(Path(sys.executable).with_name("emotune"))


def leaf_commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every runnable command path of the parser (``("data", "synth")``, ``("sweep",)``, ...)."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        return [prefix]
    return [path for name, child in subs[0].choices.items() for path in leaf_commands(child, (*prefix, name))]


COMMANDS = leaf_commands(build_parser())


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("emotune: error: "), proc.stderr
    return lines[0]


def test_every_command_is_walked():
    assert len(COMMANDS) == 12 and ("data", "synth") in COMMANDS and ("demo",) in COMMANDS
    assert ("pretrain",) in COMMANDS


@pytest.mark.parametrize("command", [(), *COMMANDS], ids=lambda c: " ".join(c) or "emotune")
def test_help_exits_0(command, tmp_path):
    proc = run(*command, "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: emotune") and not proc.stderr
    assert not list(tmp_path.iterdir())  # asking for help writes nothing


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_an_unknown_option_is_a_usage_error(command, tmp_path):
    proc = run(*command, "--no-such-option", cwd=tmp_path)
    assert proc.returncode == 2
    line = one_error_line(proc)  # the unknown option, or first the required arguments that are missing
    assert ("--no-such-option" in line or "arguments are required" in line) and not proc.stdout


@pytest.mark.parametrize("args", [("nosuch",), (), ("data",), ("data", "synth"), ("sweep", "--trials", "many"),
                                  ("data", "prepare", "--manifest", "m.csv", "--cache", "c", "--size", "big")],
                         ids=" ".join)
def test_usage_errors_exit_2(args, tmp_path):
    proc = run(*args, cwd=tmp_path)
    assert proc.returncode == 2
    one_error_line(proc)


#: One user error per command that takes input, and the words its line must hold.
USER_ERRORS = {
    ("data", "synth"): (["--out", "ds", "--variant", "nope"], "unknown variant 'nope'; allowed: per_frame"),
    ("data", "synth", "subjects"): (["--out", "ds", "--subjects", "2"], "subjects must be >= 3"),
    ("data", "prepare"): (["--manifest", "none.csv", "--cache", "c"], "none.csv"),
    ("data", "manifest"): (["--videos", "v", "--labels", "l", "--format", "frame_csv", "--out", "m.csv"], "v"),
    ("sweep",): (["--space", "smoke"], "--data is required"),
    ("sweep", "space"): (["--space", "no_such_study", "--data", "x.json"], "no_such_study"),
    ("pretrain",): ([], "pretrain: --data is required"),
    ("pretrain", "alias"): (["--data", "x.json", "--alias", "latest"], "MLflow reserves the alias 'latest'"),
    ("report",): (["somesweep"], "no MLflow store"),
    ("compare",): (["a", "b"], "no MLflow store"),
    ("promote",): (["somesweep"], "no MLflow store"),
    ("predict",): (["v.mp4", "--model", "missing.pt"], "missing.pt"),
    ("predict", "registry"): (["v.mp4", "--model", "models:/emotune@production"], "no MLflow store"),
}


@pytest.mark.parametrize("case", list(USER_ERRORS), ids=" ".join)
def test_user_errors_exit_2_with_one_line_and_touch_no_store(case, tmp_path):
    command = [c for c in case if c in {"data", "synth", "prepare", "manifest", "sweep", "pretrain", "report",
                                        "compare", "promote", "predict"}]
    args, words = USER_ERRORS[case]
    proc = run(*command, *args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert words in one_error_line(proc)
    assert not (tmp_path / "mlflow.db").exists()  # a reading command never creates an empty store


def test_an_unexpected_failure_exits_1_and_names_the_log(tmp_path):
    (tmp_path / "mlflow.db").write_bytes(b"this is not a database" * 100)
    proc = run("report", "somesweep", cwd=tmp_path)
    assert proc.returncode == 1
    line = one_error_line(proc)
    log = tmp_path / "emotune.log"
    assert f"(the traceback is in {log})" in line
    assert "Traceback (most recent call last)" in log.read_text()
