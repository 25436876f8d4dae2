"""Every shipped study runs: each study file through the real CLI (pre-flight, Ray Tune, Optuna, ASHA, MLflow), shrunk
to its family's tiny backbone, small windows and 2 trials x 1 epoch on synthetic videos, with only the ``--set`` values
its description names for a laptop."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from search_spaces.schema import shipped_spaces
from test_sweep_e2e import emotune

LAPTOP = ("--trials", "2", "--epochs", "1", "--cpus-per-worker", "1", "--gpus-per-worker", "0")
README = Path(__file__).resolve().parents[1] / "README.md"


def readme_study_commands() -> dict[str, list[str]]:
    """study -> the command and arguments of its laptop line in the README (the block that starts with ``L=``), with
    ``$L`` expanded; dataset indexes stay ``$I`` (32 px), ``$F`` (32 px, fine alignment), ``$G`` (96 px grayscale),
    the checkpoint ``$V``."""
    text = README.read_text()
    block = text[text.index('L="'):]
    block = block[:block.index("```")].splitlines()
    laptop = block[0].split("=", 1)[1].strip('"').split()
    out = {}
    for line in block[1:]:
        words = line.split()
        assert words[0] == "emotune" and words[1] in ("sweep", "pretrain"), line
        args = [words[1], *[w for word in words[2:] for w in (laptop if word == "$L" else [word])]]
        out[args[args.index("--space") + 1]] = args
    return out


STUDIES = readme_study_commands()


@pytest.fixture(scope="module")
def caches(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """The README's synthetic dataset: 3 subjects (one per split) of 400-frame videos (16 s, so every window length and
    gap tolerance of the studies finds training windows), prepared three ways through the CLI."""
    work = tmp_path_factory.mktemp("studies")
    emotune("data", "synth", "--out", "data", "--subjects", "3", "--videos-per-subject", "1", "--frames", "400",
            "--size", "64", cwd=work)
    variants = {"rgb": ("--size", "32"), "fine": ("--size", "32", "--align", "fine"),
                "gray96": ("--size", "96", "--grayscale")}
    out = {}
    for name, args in variants.items():
        prep = emotune("data", "prepare", "--manifest", "data/manifest.csv", "--cache", f"cache-{name}", *args,
                       cwd=work)
        out[name] = (work / prep.stdout.split("dataset index: ")[1].strip()).resolve()
    out["videomae"] = videomae_pretraining_checkpoint(work / "videomae_tiny_pretrain.pth")
    return work, out


def videomae_pretraining_checkpoint(path: Path) -> Path:
    """An official-layout VideoMAE pretraining file of video_vit_tiny's size: the encoder under ``encoder.`` with a
    decoder, mask token and encoder-to-decoder projection beside it, all under ``model``."""
    import torch

    from trainables.models import create_backbone

    torch.manual_seed(0)
    encoder = create_backbone("video_vit_tiny").state_dict()
    state = {f"encoder.{k}": v for k, v in encoder.items() if not k.startswith(("head.", "fc_norm."))}
    width = encoder["patch_embed.proj.weight"].shape[0]
    state.update({"mask_token": torch.zeros(1, 1, width), "encoder_to_decoder.weight": torch.randn(width, width),
                  "decoder.norm.weight": torch.ones(width), "decoder.head.weight": torch.randn(96, width)})
    torch.save({"model": state}, path)
    return path


def test_every_shipped_study_has_a_laptop_run():
    assert {p.stem for p in shipped_spaces()} == set(STUDIES)


@pytest.mark.parametrize("study", sorted(STUDIES))
def test_shipped_study_runs(study, caches):
    work, index = caches
    names = {"$I": "rgb", "$F": "fine", "$G": "gray96", "$V": "videomae"}
    args = []
    for arg in STUDIES[study]:
        for var, name in names.items():
            arg = arg.replace(var, str(index[name]))
        args.append(arg)
    out = emotune(*args, "--name", f"study-{study}", "--experiment", study, cwd=work, timeout=900).stdout
    assert "pre-flight:" in out
    board = out.split(f"Leaderboard of sweep study-{study}")[1]
    assert len([line for line in board.splitlines() if line[:1].isdigit()]) == 2
    if "--folds" in args:  # two folds: racing may stop a trial clearly behind after its first fold
        assert re.search(r"Trials:        [12] complete, [01] stopped early, 0 diverged, 0 errored", out), out
        assert "cross-validation: 2 subject folds" in out
    else:
        assert "Trials:        2 complete, 0 stopped early, 0 diverged, 0 errored" in out
    assert "Best trial:    none" not in out


def test_a_study_shrunk_to_a_backbone_without_its_knobs_drops_them_with_one_warning(caches):
    """The issue's case: losses_augment searches `freeze`, which a CNN-RNN does not have; pinned to cnn_rnn_tiny the
    knob is dropped (one warning, not searched) instead of failing every trial."""
    work, index = caches
    out = emotune("sweep", "--space", "losses_augment", "--data", str(index["gray96"]), "--dry-run", *LAPTOP,
                  "--set", "backbone=cnn_rnn_tiny", "--set", "window_length=32", "--set", "num_frames=32",
                  "--set", "clip_len=32", cwd=work).stdout
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: losses_augment.yaml: freeze does not apply (backbone cnn_rnn_tiny takes no "
                        "'freeze' argument); not searched"]
    assert "dry run: 2 trials" in out
