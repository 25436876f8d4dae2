"""One way to do each thing: each shared rule has one definition, which every room asks (git grep and behaviour)."""
from __future__ import annotations

import ast
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
    assert definitions(r"^def is_sweep_parent\(") == ["analysis/sweeps.py"]
    assert definitions(r"^(KIND_TAG|EXPERIMENT_KIND_TAG) = ") == ["trainables/provenance.py"] * 2
    # the stores' default places and the rule for which store a command reads
    for name in ("default_tracking_uri", "default_optuna_storage", "sqlite_path", "existing_store"):
        assert definitions(rf"^def {name}\(") == ["trainables/storage.py"], name
    # the command line keeps the parser; each handler lives with its room
    assert not [f for f in definitions(r"^def cmd_") if f == "cluster/cli.py"]
    assert definitions(r"^def cmd_demo\(") == ["cluster/demo.py"]


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
    """A sweep and a retraining set up Tune the same way (cluster.tuner.build_tuner). Benchmarks are not looked at:
    bench_sweep_overhead's floor is a bare Tune run without emotune's driver on purpose."""
    out = subprocess.run(["git", "grep", "-n", "--untracked", "tune.Tuner(", "--", "*.py", ":!tests", ":!benchmarks"],
                         cwd=REPO, capture_output=True, text=True).stdout
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


ROOMS = ("search_spaces", "trainables", "cluster", "analysis")


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(module, at the top level) for every absolute import of ``path``, function-local ones included."""
    tree = ast.parse(path.read_text(), str(path))
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, id(node) in top))
    return found


def _package(module: str) -> str:
    """The package (a folder of the repository) that holds ``module``."""
    parts = module.split(".")
    while parts and not REPO.joinpath(*parts).is_dir():
        parts.pop()
    return ".".join(parts)


def _package_graph() -> dict[str, set[str]]:
    """Package -> the packages of the four rooms its modules import (itself left out)."""
    graph: dict[str, set[str]] = {}
    for room in ROOMS:
        for path in (REPO / room).rglob("*.py"):
            package = ".".join(path.parent.relative_to(REPO).parts)
            for module, _ in _imports(path):
                if module.split(".")[0] in ROOMS and _package(module) != package:
                    graph.setdefault(package, set()).add(_package(module))
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path (first node repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [node, nxt] if nxt in path else path + [node, nxt]
            if nxt not in state and (found := visit(nxt, path + [node])):
                return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node, [])):
            return found
    return None


def test_no_package_cycle():
    """Over every import of every module (function-local ones too): the four rooms import one way (no cycle, analysis
    never imports cluster), and inside each room no two sibling packages import each other, directly or round about
    (a package's own modules and its subpackages may import each other)."""
    graph = _package_graph()
    rooms = {room: {q.split(".")[0] for p, deps in graph.items() if p.split(".")[0] == room for q in deps} - {room}
             for room in ROOMS}
    assert _cycle(rooms) is None, _cycle(rooms)
    assert rooms["analysis"] <= {"trainables"} and rooms["trainables"] == set() and rooms["search_spaces"] == set()

    def nested(a: str, b: str) -> bool:
        return a == b or a.startswith(b + ".") or b.startswith(a + ".")

    siblings = {p: {q for q in deps if not nested(p, q)} for p, deps in graph.items()}
    assert _cycle(siblings) is None, _cycle(siblings)
    # the checker finds a cycle when there is one
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_analysis_leaves_mlflow_settings_alone():
    """analysis names its store on each client and download; it never sets (or swaps) MLflow's process-wide tracking
    or registry URI, nor reaches into MLflow's private modules to do so."""
    for path in (REPO / "analysis").rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)} | \
            {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
        assert not names & {"set_tracking_uri", "set_registry_uri", "_tracking_uri", "_registry_uri"}, path
        modules = {m for m, _ in _imports(path)}
        assert not {m for m in modules if m.split(".")[0] == "cluster"}, path
        assert not {m for m in modules if "._" in m and m.startswith("mlflow")}, path


def test_augmentation_settings_need_no_torch():
    """The driver checks aug_* settings with trainables.data.augment_settings (no torch); the tensor ops import torch
    once, at the top of trainables.data.augment, never inside a function."""
    settings = {m.split(".")[0] for m, _ in _imports(REPO / "trainables/data/augment_settings.py")}
    assert not settings & {"torch", "torchvision", "numpy"}
    assert [(m, top) for m, top in _imports(REPO / "trainables/data/augment.py")
            if m.split(".")[0] in ("torch", "torchvision") and not top] == []
    for driver in ("cluster/preflight.py", "cluster/sweep.py", "trainables/config.py", *[
            str(p.relative_to(REPO)) for p in (REPO / "search_spaces").rglob("*.py")]):
        assert "trainables.data.augment" not in {m for m, _ in _imports(REPO / driver)}, driver
