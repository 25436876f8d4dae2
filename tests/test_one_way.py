"""One way to do each thing: each shared rule has one definition, which every room asks (git grep and behaviour)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_one_of_each():
    """One definition of each shared rule (issue: one way to do each thing)."""
    def definitions(pattern: str) -> list[str]:
        out = subprocess.run(["git", "grep", "-n", "--untracked", "-E", pattern, "--", "*.py", ":!tests"], cwd=REPO,
                             capture_output=True, text=True).stdout
        return [line.split(":")[0] for line in out.splitlines()]

    assert definitions(r"^def git_commit\(") == ["trainables/provenance.py"]
    assert definitions(r"^def find_user_error\(") == ["trainables/errors.py"]
    # one sweep lookup: promotion asks the same function as reports and comparisons
    assert definitions(r"search_runs\(.*emotune\.sweep") == []
    assert definitions(r"^def resolve_sweep\(") == ["analysis/sweeps.py"]
    # one checkpoint reader: one report, one prefix rule (the wrapper prefixes are spelled nowhere else)
    assert definitions(r"^class LoadReport\b") == ["trainables/models/pretrained.py"]
    assert definitions(r"^def strip_prefixes\(") == ["trainables/models/pretrained.py"]
    assert definitions(r"[\"'](module|encoder|backbone)\.[\"']") == ["trainables/models/pretrained.py"]
    assert definitions(r"^def (sinusoid_table|_sinusoid_table)\(") == ["trainables/models/positions.py"]


@pytest.mark.parametrize("flags, status", [
    (dict(errored=True, diverged=True, stopped_early=True), "errored"),
    (dict(errored=False, diverged=True, stopped_early=True), "diverged"),
    (dict(errored=False, diverged=False, stopped_early=True), "stopped early"),
    (dict(errored=False, diverged=False, stopped_early=False), "complete"),
    (dict(errored=False, diverged=False, stopped_early=False, finished=False), "running"),
    (dict(errored=False, diverged=False, stopped_early=False, reported=False), "no report"),
])
def test_one_trial_status_rule(flags, status):
    from analysis.leaderboard import trial_status

    assert trial_status(**flags) == status
    code = subprocess.run(["git", "grep", "-n", "--untracked", "-E", r"status = \"(errored|diverged)\"", "--", "*.py",
                           ":!tests"], cwd=REPO, capture_output=True, text=True).stdout
    assert code == ""  # the sweep's leaderboard and the reports both ask trial_status


def test_one_tuner_builder():
    """A sweep and a retraining set up Tune the same way (cluster.tuner.build_tuner)."""
    out = subprocess.run(["git", "grep", "-n", "--untracked", "tune.Tuner(", "--", "*.py", ":!tests"], cwd=REPO,
                         capture_output=True, text=True).stdout
    assert [line.split(":")[0] for line in out.splitlines()] == ["cluster/tuner.py"]


def test_rooms_import_one_way():
    """analysis reads what sweeps recorded and never imports cluster (retraining is driven from cluster, which may
    import analysis); trainables and search_spaces import neither."""
    def importers(room: str, of: str) -> list[str]:
        out = subprocess.run(["git", "grep", "-l", "--untracked", "-E", rf"^\s*(from|import) {of}\b", "--", f"{room}/*.py"],
                             cwd=REPO, capture_output=True, text=True).stdout
        return out.split()

    assert importers("analysis", "cluster") == []
    assert importers("trainables", "(cluster|analysis)") == []
    assert importers("search_spaces", "(cluster|analysis|trainables)") == []


def test_backbone_names_are_listed_once():
    """Outside the constructor each name registers, a shipped backbone's name is written only in the catalog; the
    settings table takes its default and the layer-decay backbones from there."""
    from trainables import config
    from trainables.backbone_catalog import DEFAULT_BACKBONE, LAYER_DECAY_BACKBONES, SHIPPED

    assert config.LAYER_DECAY_BACKBONES is LAYER_DECAY_BACKBONES
    assert config.SPECS["backbone"].default == DEFAULT_BACKBONE
    names = "|".join(sorted(SHIPPED, key=len, reverse=True))
    out = subprocess.run(["git", "grep", "-n", "--untracked", "-E", rf"[\"']({names})[\"']", "--", "*.py", ":!tests",
                          ":!benchmarks"], cwd=REPO, capture_output=True, text=True).stdout.splitlines()
    registrations = [line for line in out if line.split(":", 2)[2].startswith("@register_backbone(")]
    assert sorted(line.split('"')[1] for line in registrations) == sorted(SHIPPED)
    assert {line.split(":")[0] for line in out if line not in registrations} == {"trainables/backbone_catalog.py"}


def test_setting_names_are_listed_once():
    from trainables.config import FUSION_CHOICES, SAMPLER_CHOICES
    from trainables.data.sampling import SAMPLERS
    from trainables.data.windows import FUSION_MODES
    from trainables.names import FUSIONS, SAMPLERS as NAMES

    assert SAMPLER_CHOICES is NAMES and tuple(SAMPLERS) == NAMES and FUSION_CHOICES is FUSIONS is FUSION_MODES
    out = subprocess.run(["git", "grep", "-n", "--untracked", "-E", r"\(\"(ssts|mean)\", \"(uniform|extremum)\"", "--",
                          "*.py", ":!tests"], cwd=REPO, capture_output=True, text=True).stdout
    assert [line.split(":")[0] for line in out.splitlines()] == ["trainables/names.py"] * 2
