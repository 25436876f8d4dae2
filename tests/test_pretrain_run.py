"""`emotune pretrain` as users run it: unlabelled videos in the manifest, a pretraining sweep registered as
``emotune-pretrained`` (twice: the alias moves), a fine-tuning sweep started from that encoder by its MLflow URI with
every encoder key matched, bad input refused in one line, and a killed pretraining trial resumed from its checkpoint
to exactly the weights of an uninterrupted one."""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from tests.test_memory_retry import CpuSession
from tests.test_sweep_e2e import emotune, run_cli

PRETRAIN = ("--trials", "1", "--epochs", "1", "--set", "window_length=16", "--set", "clip_len=4",
            "--set", "probe_epochs=1", "--set", "decoder_depth=1")


@pytest.fixture(scope="module")
def pre_data(tmp_path_factory):
    """6 subjects (3 train, 2 val, 1 test), one train subject labelled: 2 unlabelled train videos."""
    work = tmp_path_factory.mktemp("pretrain")
    emotune("data", "synth", "--out", "data", "--subjects", "6", "--videos-per-subject", "1", "--frames", "64",
            "--size", "64", "--labelled-train-subjects", "1", cwd=work)
    prep = emotune("data", "prepare", "--manifest", "data/manifest.csv", "--cache", "cache", "--size", "32", cwd=work)
    assert "videos ok: 6 (2 unlabelled: pretraining only)" in prep.stdout
    return work, (work / prep.stdout.split("dataset index: ")[1].strip()).resolve()


def test_pretraining_takes_every_train_subject_and_fine_tuning_only_the_labelled(pre_data):
    from trainables.data.cache import load_split
    from trainables.pretrain.run import pretraining_videos

    _, index = pre_data
    entries = json.loads(index.read_text())["videos"]
    split_of = {v["subject"]: v["split"] for v in entries}
    unlabelled = {v["video_id"] for v in entries if v.get("labelled") is False}
    assert len(unlabelled) == 2
    pre = pretraining_videos(str(index))
    assert {v.subject for v in pre} == {s for s, split in split_of.items() if split == "train"}  # 3 subjects
    assert {v.video_id for v in pre} >= unlabelled
    fine = load_split(index, "train")
    assert len(fine) == 1 and not {v.video_id for v in fine} & unlabelled
    assert not {v.video_id for split in ("val", "test") for v in load_split(index, split, labelled=None)} & unlabelled


def _registered(work: Path) -> tuple[str, list[str]]:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{work / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    versions = sorted(v.version for v in client.search_model_versions("name='emotune-pretrained'"))
    return str(client.get_model_version_by_alias("emotune-pretrained", "current").version), [str(v) for v in versions]


@pytest.fixture(scope="module")
def readme_pretraining(tmp_path_factory):
    """The README's pretraining example, every command as written, in a scratch folder."""
    from tests.test_readme import code_blocks, commands

    work = tmp_path_factory.mktemp("readme-pretrain")
    outs = [emotune(*cmd[1:], cwd=work, timeout=900).stdout
            for cmd in commands(code_blocks("Self-supervised pretraining")[0])]
    return work, outs


def test_the_readme_example_pretrains_registers_and_fine_tunes_from_the_registered_encoder(readme_pretraining):
    work, outs = readme_pretraining
    assert "videos ok: 6 (2 unlabelled: pretraining only)" in outs[1]
    assert "0 diverged, 0 errored" in outs[2]
    assert "Registered:    emotune-pretrained version 1 (alias current)" in outs[2]
    result = next((work / "ray_results" / "pre-smoke").glob("trial-*/result.json"))
    last = json.loads(result.read_text().splitlines()[-1])
    assert {"pretrain_loss", "pretrain_masked_share", "val_ccc_mean", "pretrain_videos"} <= set(last)
    assert last["pretrain_videos"] == 3  # every train-split video, labelled or not
    assert "1 complete" in outs[3] and "2 unlabelled video(s)" in outs[3]  # fine-tuning leaves them out
    report = json.loads(next((work / "ray_results" / "ft-pretrained").glob("trial-*/result.json"))
                        .read_text().splitlines()[0])
    assert report["ckpt_missing_keys"] == 0 and report["ckpt_unexpected_keys"] == 0
    assert report["ckpt_loaded_keys"] == 30  # every key of video_vit_tiny but its head (weight and bias)


def test_pretraining_again_moves_the_alias_and_its_report_shows_reconstructions(readme_pretraining):
    work, _ = readme_pretraining
    index = str(work / "ptcache" / "index.json")
    again = emotune("pretrain", "--data", index, "--name", "pre-b", *PRETRAIN, cwd=work, timeout=900)
    assert "Registered:    emotune-pretrained version 2 (alias current)" in again.stdout
    assert _registered(work) == ("2", ["1", "2"])
    history = emotune("promote", "--history", "--model-name", "emotune-pretrained", cwd=work).stdout
    assert "pre-b" in history and "pre-smoke" in history
    # Fine-tuning by the trial's own run (runs:/<run_id>) as well as by the registry.
    run_id = again.stdout.split("checkpoint logged to MLflow run ")[1].split(")")[0]
    sweep = emotune("sweep", "--data", index, "--name", "ft-run", "--trials", "1", "--epochs", "1",
                    "--set", "backbone=video_vit_tiny", "--set", f"checkpoint=runs:/{run_id}", cwd=work, timeout=900)
    assert "1 complete" in sweep.stdout
    first = json.loads(next((work / "ray_results" / "ft-run").glob("trial-*/result.json")).read_text().splitlines()[0])
    assert first["ckpt_missing_keys"] == 0 and first["ckpt_loaded_keys"] == 30

    emotune("report", "pre-b", "--out", "pre-b-report", cwd=work, timeout=600)
    page = (work / "pre-b-report" / "report.html").read_text()
    assert "Masked validation clips reconstructed" in page and "Probe CCC against each knob" in page
    from PIL import Image

    with Image.open(work / "pre-b-report" / "figures" / "reconstructions.png") as image:
        assert image.size[0] > 400 and image.size[1] > 400  # 2 clips x 3 rows of frames


def test_each_command_resumes_only_its_own_kind_of_sweep(readme_pretraining):
    """`emotune sweep --resume` of a pretraining sweep would finish it without registering its encoder, and
    `emotune pretrain --resume` of a fine-tuning sweep would register a fine-tuned model as an encoder: both are
    refused in one line naming the command that resumes it, and the registry is left as it was."""
    work, _ = readme_pretraining
    before = _registered(work)
    for command, name, right in (("sweep", "pre-smoke", "emotune pretrain"), ("pretrain", "ft-pretrained",
                                                                              "emotune sweep")):
        proc = run_cli(command, "--resume", name, cwd=work, timeout=600)
        assert proc.returncode == 2, proc.stderr[-2000:]
        kind = "pretraining" if command == "sweep" else "fine-tuning"
        assert proc.stderr.strip().splitlines() == [
            f"emotune: error: {name!r} is a {kind} sweep; resume it with `{right} --resume {name} --storage "
            f"ray_results`"]
    assert _registered(work) == before
    # The same pretraining command again: refused, pointing at the command that resumes a pretraining sweep.
    index = str(work / "ptcache" / "index.json")
    proc = run_cli("pretrain", "--data", index, "--name", "pre-smoke", cwd=work)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        f"emotune: error: a sweep named 'pre-smoke' already exists in {work / 'ray_results'}; resume it with "
        "`emotune pretrain --resume pre-smoke --storage ray_results` or choose another --name"]
    # The pretraining sweep the alias names, resumed again once finished: nothing trains, nothing new is registered.
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{work / 'mlflow.db'}"
    sweep = MlflowClient(uri, registry_uri=uri).get_model_version(
        "emotune-pretrained", before[0]).tags["emotune.sweep"]
    again = emotune("pretrain", "--resume", sweep, cwd=work, timeout=600).stdout
    assert (f"Registered:    emotune-pretrained version {before[0]} (alias current, already: nothing new to "
            "register)") in again
    assert _registered(work) == before


@pytest.mark.parametrize("args, message", [
    (("--set", "backbone=cnn_rnn_tiny"), "pretrain_method='mae' does not fit backbone 'cnn_rnn_tiny'"),
    (("--space", "pretrain_smoke", "--set", "mask_ratio=1.0"), "--set mask_ratio=1.0 lies outside the distribution"),
    (("--space", "{work}/fixed.yaml", "--set", "mask_ratio=1.0"),
     "mask_ratio=1.0 is not allowed; allowed: a number > 0 and < 1"),
    (("--space", "{work}/fixed.yaml", "--set", "mask_ratio=0"), "mask_ratio=0 is not allowed"),
    (("--space", "smoke"), "is a fine-tuning study (kind: finetune); run it with `emotune sweep`"),
    (("--alias", "latest"), "MLflow reserves the alias 'latest'"),
    (("--folds", "3"), "--folds: a pretraining study takes no cross-validation"),
])
def test_bad_pretraining_input_is_one_line_and_exit_2(pre_data, args, message):
    work, index = pre_data
    (work / "fixed.yaml").write_text("kind: pretrain\nfixed: {backbone: video_vit_tiny, pretrain_method: mae, "
                                     "mask_ratio: 0.9, window_length: 16, clip_len: 4}\n")
    proc = run_cli("pretrain", "--data", str(index), "--dry-run", *[a.format(work=work) for a in args], cwd=work)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("emotune: error: ") and message in lines[0], proc.stderr


def test_a_pretraining_dry_run_says_what_would_start(pre_data):
    """One trial by default, so one at a time, however many would fit."""
    work, index = pre_data
    out = emotune("pretrain", "--data", str(index), "--dry-run", cwd=work).stdout
    assert "dry run: 1 trial of 1 worker(s) x 1 CPU / 0 GPU, 1 at a time (inline executor); nothing started" in out


def test_a_pretraining_study_is_refused_by_sweep(pre_data):
    work, index = pre_data
    proc = run_cli("sweep", "--data", str(index), "--space", "pretrain_smoke", "--dry-run", cwd=work)
    assert proc.returncode == 2
    assert "is a pretraining study (kind: pretrain); run it with `emotune pretrain`" in proc.stderr


def test_an_index_without_train_videos_is_refused_before_any_trial(pre_data, tmp_path):
    work, _ = pre_data
    rows = (work / "data" / "manifest.csv").read_text().splitlines()
    (work / "data" / "no_train.csv").write_text("\n".join([rows[0], *[r for r in rows[1:] if ",train," not in r]]))
    prep = emotune("data", "prepare", "--manifest", str(work / "data" / "no_train.csv"), "--cache", "cache", "--size",
                   "32", "--index", str(tmp_path / "index.json"), cwd=work)
    assert "videos ok: 3" in prep.stdout
    proc = run_cli("pretrain", "--data", str(tmp_path / "index.json"), "--dry-run", cwd=work)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"emotune: error: dataset index {tmp_path / 'index.json'} has no prepared video in split 'train' with labels"]


class _KilledAfter(Exception):
    pass


class RecordingSession(CpuSession):
    """The loop's session in this process: keeps each report's checkpoint (as the trial's storage would), resumes
    from ``state``, and is killed after ``kill_after`` reports."""

    def __init__(self, state: dict | None = None, kill_after: int | None = None):
        super().__init__()
        self.state, self.kill_after, self.reports, self.encoders = state, kill_after, [], []

    def load_state(self, device):
        return self.state

    def report(self, metrics: dict, checkpoint_dir: Path | None = None) -> None:
        self.reports.append(metrics)
        if checkpoint_dir is None:
            return
        self.state = torch.load(Path(checkpoint_dir) / "state.pt", weights_only=True)
        self.encoders.append(torch.load(Path(checkpoint_dir) / "encoder.pt", weights_only=True))
        if self.kill_after is not None and len(self.reports) >= self.kill_after:
            raise _KilledAfter()


@pytest.mark.parametrize("backbone, method", [("video_vit_tiny", "mae"), ("conv3d_resnet_gru_tiny", "byol")])
def test_a_killed_pretraining_trial_resumes_to_the_uninterrupted_weights(pre_data, backbone, method):
    from trainables.config import TrialConfig
    from trainables.pretrain.run import fit_pretrain

    _, index = pre_data
    config = {"data_index": str(index), "backbone": backbone, "pretrain_method": method, "window_length": 16,
              "clip_len": 4, "batch_size": 4, "epochs": 2, "probe_epochs": 1, "lr": 1e-3, "seed": 3,
              **({"decoder_depth": 1} if method == "mae" else {"byol_hidden": 32, "byol_proj_dim": 16})}
    cfg = TrialConfig.from_dict(config)
    whole = RecordingSession()
    fit_pretrain(cfg, whole)
    killed = RecordingSession(kill_after=1)
    with pytest.raises(_KilledAfter):
        fit_pretrain(cfg, killed)
    resumed = RecordingSession(state=killed.state)
    fit_pretrain(cfg, resumed)
    assert [r["epoch"] for r in resumed.reports] == [2]  # epoch 1 was not trained again
    assert resumed.reports[0]["pretrain_loss"] == whole.reports[1]["pretrain_loss"]
    for key, value in whole.encoders[-1].items():
        assert torch.equal(value, resumed.encoders[-1][key]), key
    assert not all(torch.equal(v, whole.encoders[0][k]) for k, v in whole.encoders[-1].items())



def test_a_non_finite_pretraining_loss_ends_this_trial_only_at_the_worst_objective(pre_data, monkeypatch):
    from trainables.config import TrialConfig
    from trainables.pretrain import methods
    from trainables.pretrain.run import fit_pretrain

    real = methods.create_pretrainer

    def poisoned(method, model, config):  # the patch embedding starts emitting NaN: the loss is NaN from step 1
        model.patch_embed.proj.register_forward_hook(lambda module, args, out: out * float("nan"))
        return real(method, model, config)

    monkeypatch.setattr(methods, "create_pretrainer", poisoned)
    _, index = pre_data
    cfg = TrialConfig.from_dict({"data_index": str(index), "backbone": "video_vit_tiny", "pretrain_method": "mae",
                                 "window_length": 16, "clip_len": 4, "epochs": 2, "decoder_depth": 1})
    session = RecordingSession()
    fit_pretrain(cfg, session)  # returns: the sweep goes on with its other trials
    assert len(session.reports) == 1 and session.state is None  # reported once, no checkpoint
    report = session.reports[0]
    assert report["diverged"] == 1 and report["val_ccc_mean"] == -1.0
    assert report["pretrain_loss"] != report["pretrain_loss"]  # NaN


@pytest.mark.slow
@pytest.mark.parametrize("settings", [
    ("--set", "decoder_depth=1"),
    ("--set", "backbone=conv3d_resnet_gru_tiny", "--set", "pretrain_method=dino", "--set", "dino_out_dim=256",
     "--set", "dino_hidden=64", "--set", "dino_bottleneck=32", "--set", "dino_local_crops=2"),
])
def test_pretraining_on_two_ray_train_workers_with_ddp(pre_data, settings):
    """Two Ray Train workers (DDP over gloo on the CPU): MAE, whose heads get no gradient, and DINO, whose centre is
    all-reduced across the workers."""
    work, index = pre_data
    name = f"ddp-{len(settings)}"
    out = emotune("pretrain", "--data", str(index), "--name", name, "--trials", "1", "--epochs", "2", "--workers", "2",
                  "--executor", "train", "--set", "window_length=16", "--set", "clip_len=4", "--set", "probe_epochs=1",
                  "--register-as", "ddp-pretrained", *settings, cwd=work, timeout=900).stdout
    assert "1 complete" in out and "Registered:    ddp-pretrained version" in out
    reports = [json.loads(line) for line in next((work / "ray_results" / name).glob("trial-*/result.json"))
               .read_text().splitlines()]
    assert [r["epoch"] for r in reports] == [1, 2] and all(r["pretrain_loss"] == r["pretrain_loss"] for r in reports)



@pytest.mark.slow
def test_a_frozen_probe_on_a_briefly_pretrained_encoder_beats_it_on_a_random_one(tmp_path):
    """DINO on the 3D-conv ResNet, four epochs on the train subjects' videos (3 of 5 subjects unlabelled), 64-pixel
    faces: the probe (same head, seed and data) scores the pretrained encoder clearly above the randomly initialised
    one it started from, after every epoch. (On the 32-pixel, 64-frame data of the other tests it does not: too few
    windows for either the method or the probe.)"""
    from trainables.config import TrialConfig
    from trainables.data.cache import load_split
    from trainables.loop import build_model, seed_everything
    from trainables.pretrain.methods import create_pretrainer
    from trainables.pretrain.probe import run_probe
    from trainables.pretrain.run import fit_pretrain

    emotune("data", "synth", "--out", "data", "--subjects", "8", "--frames", "200", "--size", "64",
            "--labelled-train-subjects", "2", cwd=tmp_path)
    prep = emotune("data", "prepare", "--manifest", "data/manifest.csv", "--cache", "cache", cwd=tmp_path)
    index = (tmp_path / prep.stdout.split("dataset index: ")[1].strip()).resolve()
    cfg = TrialConfig.from_dict({
        "data_index": str(index), "backbone": "conv3d_resnet_gru_tiny", "pretrain_method": "dino",
        "window_length": 16, "clip_len": 8, "sampler": "uniform", "batch_size": 16, "lr": 1e-3, "epochs": 4,
        "weight_decay": 0.05, "probe_epochs": 20, "dino_out_dim": 256, "dino_hidden": 128, "dino_bottleneck": 64,
        "dino_local_crops": 2, "seed": 0})
    seed_everything(0)  # the draws fit_pretrain starts from: the same initial encoder
    random_init = create_pretrainer("dino", build_model(cfg, 2, 3), cfg)
    before, _ = run_probe(random_init, load_split(index, "train"), load_split(index, "val"), cfg.clip_spec(),
                          torch.device("cpu"), epochs=cfg.probe_epochs, lr=cfg.probe_lr, seed=0)
    session = RecordingSession()
    fit_pretrain(cfg, session)
    after = [r["val_ccc_mean"] for r in session.reports]
    print(f"probe CCC: random init {before['ccc_mean']:.3f}, after each epoch {[round(a, 3) for a in after]}")
    assert min(after) > before["ccc_mean"] + 0.1


def test_an_encoder_pretrained_on_subjects_a_cv_sweep_validates_on_is_refused(readme_pretraining):
    """The README's encoder was pretrained on every train subject; a cross-validated sweep validates on every labelled
    train subject (its folds), so it is refused before anything starts. Pretrained on the unlabelled videos only, the
    same sweep passes."""
    work, _ = readme_pretraining
    index = str(work / "ptcache" / "index.json")
    cv = ("sweep", "--data", index, "--folds", "2", "--trials", "1", "--epochs", "1", "--dry-run",
          "--set", "backbone=video_vit_tiny", "--set", "checkpoint=models:/emotune-pretrained@current")
    proc = run_cli(*cv, cwd=work)
    assert proc.returncode == 2
    line = proc.stderr.strip()
    assert line.startswith("emotune: error: checkpoint: the encoder was pretrained on 1 subject(s) this sweep "
                           "validates (its folds) or tests on: ") and "pretrain_videos=unlabelled" in line
    out = emotune("pretrain", "--data", index, "--name", "pre-unlabelled", *PRETRAIN, "--set",
                  "pretrain_videos=unlabelled", "--alias", "outside-folds", cwd=work, timeout=900).stdout
    assert "(alias outside-folds)" in out
    last = json.loads(next((work / "ray_results" / "pre-unlabelled").glob("trial-*/result.json"))
                      .read_text().splitlines()[-1])
    assert last["pretrain_videos"] == 2  # the two unlabelled videos only
    ok = emotune(*cv[:-1], "checkpoint=models:/emotune-pretrained@outside-folds", cwd=work).stdout
    assert "dry run:" in ok


@pytest.mark.parametrize("extra, message", [
    ("cv: {folds: 3}", "cv: a pretraining study takes no cross-validation"),
    ("fidelity: {attr: data_fraction, max: 8, grace: 2}", "a pretraining study reports once per epoch"),
    ("", ""),
])
def test_a_pretraining_study_file_is_checked(tmp_path, extra, message):
    from search_spaces.schema import SpaceError, load_space

    study = tmp_path / "pre.yaml"
    study.write_text(f"kind: pretrain\nfixed: {{backbone: video_vit_tiny, pretrain_method: mae}}\n{extra}\n")
    if not message:
        assert load_space(study).kind == "pretrain"
        study.write_text("fixed: {backbone: video_vit_tiny, pretrain_method: mae}\n")  # no kind: a fine-tuning study
        with pytest.raises(SpaceError, match="pretrain_method belongs to a pretraining study; add `kind: pretrain`"):
            load_space(study)
        study.write_text("kind: pretrain\nfixed: {backbone: video_vit_tiny}\n")
        message = "must set pretrain_method"
    with pytest.raises(SpaceError, match=message):
        load_space(study)
