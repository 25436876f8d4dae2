"""Does self-supervised pretraining pay at this size? Two families, each fine-tuned from scratch against fine-tuned
from its encoder pretrained on the train split's (mostly unlabelled) video, same fine-tune budget within a family:
``video_vit_tiny`` with ``mae`` and ``conv3d_resnet_gru_tiny`` with ``byol``.

    python benchmarks/bench_pretrain.py [--work DIR] [--quick] [--seeds 0 1 2] [--families mae byol]

1. **Data**: synthetic face video (``trainables.prepare.synth.synthesize``) rendered at 64x64 and prepared at 64x64
   (``prepare --size 64``), one 200-frame video per subject: 24 subjects -> 15 train, 6 val, 3 test (the generator's
   split rule). Only the first ``labelled`` train subjects of a family keep their labels (``labelled_train_subjects``:
   4 for mae/ViT, 1 for byol/conv3d, see the notes); the other train subjects' rows have an empty ``labels`` cell:
   pretraining-only video (11 and 14 videos: 2.75x and 14x the labelled video). The videos are the same in both data
   folders (same generator seed); only which train subjects keep labels differs. Validation and test subjects are
   labelled and never pretrained on. Built once and cached under ``--work`` (a folder per data setting).
2. **Pretraining** (per seed and family): the real trial, ``trainables.pretrain.run.fit_pretrain`` (through
   ``trainables.loop.fit`` with ``pretrain_method: mae`` / ``byol``), on every train-split video, labelled or not,
   with a local in-process session (no Ray) that keeps the reports; 4 epochs pinned, windows of 16 frames without
   overlap (8 frames sampled), batch 16. mae: mask 0.9, 2-block decoder, lr 1.5e-3. byol: projector/predictor
   widths ``byol_hidden: 256``, ``byol_proj_dim: 64`` (the tiny encoder is 48 wide; BYOL's 4096/256 would dwarf it),
   ``ema_momentum: 0.99`` (BYOL's 0.996 is for ~10^5 steps, here ~90), ``global_crop_scale: 0.4`` (BYOL's 0.08 would
   often crop away the mouth or the eyes, the signals regressed), lr 1e-3. Its last ``encoder.pt`` (the exported
   ``encoder_state()``) is the checkpoint. Wall time includes the per-epoch frozen probe (2 epochs a report, cut
   from 10 to save time), as a real trial's does; ``train_s`` (the method's steps only) is shown too.
3. **Fine-tuning** (per seed, both arms): the real trial (``trainables.loop.fit``/``build_trial``) on the family's
   labelled train subjects, scored on the validation subjects every epoch; the pretrained arm sets ``checkpoint:
   encoder.pt`` (ViT) or ``pretext_checkpoint: encoder.pt`` (conv3d), and its report must show every encoder key
   matched (``ckpt_missing_keys == 0``; the run stops otherwise). The arms of a family differ in that one setting
   only (windows 16 frames, overlap 0.5, 8 frames, batch 16, AdamW lr 1e-3, wd 0.05, CCC loss; 30 epochs for the ViT,
   12 for conv3d). The epoch with the best validation CCC is scored on the test subjects with
   ``trainables.loop.evaluate``. Results are cached per configuration (deterministic), so an interrupted run resumes.

Table: validation (best epoch) and test CCC mean +/- sd over the seeds, pretraining wall time, and the first
fine-tune epoch at which the pretrained arm's validation CCC reaches the scratch arm's best (same seed; "-" when it
never does). Goal (issue 22): at least +0.05 test CCC from pretraining on the mean of 3 seeds.

``--quick``: 2 pretraining and 2 fine-tune epochs, one seed (a smoke run of the script). Not part of the test run.

Notes (measured on the shared 2-core machine, 2026-12-06; not a timed test)::

    PYTHONPATH=. python benchmarks/bench_pretrain.py --work /tmp/bpt2    # total wall time 467 s

    24 subjects (15 train / 6 val / 3 test), 200 frames each at 64x64; 4 pretraining epochs on all 15 train videos; 3 seed(s) [0, 1, 2]
      mae on video_vit_tiny: 4 labelled train subject(s), 11 unlabelled train videos, 30 fine-tune epochs
      byol on conv3d_resnet_gru_tiny: 1 labelled train subject(s), 14 unlabelled train videos, 12 fine-tune epochs
    arm                                     val CCC         test CCC  pretrain wall s  epochs to scratch best
    ---------------------------------------------------------------------------------------------------------
    video_vit_tiny scratch          0.094 +/- 0.048  0.048 +/- 0.087                -                       -
    video_vit_tiny mae              0.092 +/- 0.032  0.045 +/- 0.027        18 +/- 27              22 / 8 / -
    conv3d_resnet_gru_tiny scratch  0.098 +/- 0.009  0.110 +/- 0.051                -                       -
    conv3d_resnet_gru_tiny byol     0.217 +/- 0.033  0.495 +/- 0.032         11 +/- 0               3 / 4 / 4
    mae on video_vit_tiny: gain from pretraining (mean of seeds) val -0.002, test -0.003 (goal test >= +0.05: not met)
    byol on conv3d_resnet_gru_tiny: gain from pretraining (mean of seeds) val +0.119, test +0.386 (goal test >= +0.05: met)

* **How the setting was chosen** (validation figures of seed 0 only, before the 3-seed run): with 3 labelled train
  subjects for both families and 12 fine-tune epochs (pretraining windows overlapping by half), the ViT arms stayed
  near 0 on validation (scratch 0.057, mae 0.017), so its labelled data was made less scarce (4 subjects) and its
  fine-tuning longer (30 epochs); the conv3d arms already read the task (scratch 0.800, byol 0.721 on validation;
  0.930 / 0.916 on test), the issue's "too easy" case, so its labelled data was made scarcer (1 subject, 14
  unlabelled videos). The 3 test subjects were not looked at to choose. The setting was run once, as printed.
* **mae / video_vit_tiny: no gain.** Equal on both validation and test (-0.002, -0.003), with 3 test subjects and 4
  labelled ones the test figure now moves off 0 (seed 2's scratch arm: 0.148) but the seeds spread widely. The earlier
  result (16 subjects, 2 labelled, 10 mae epochs: +0.105 val, +0.004 test) is not confirmed on the larger split.
  The mae loss barely falls in 4 epochs (1.03 -> 0.98) and the frozen probe stays at ~0.
* **byol / conv3d_resnet_gru_tiny: the goal is met on this budget, but it is a head start, not a better end
  point.** With 1 labelled subject and 12 fine-tune epochs the byol encoder gives +0.119 val and +0.386 test CCC
  (better on every seed) and reaches scratch's best in 3-4 epochs. All three scratch curves are still rising at epoch
  12, though, and a check outside the chosen setting (same encoders and data, 30 fine-tune epochs for both arms)
  reverses the validation order and levels the test figure: see the last note.
* With more labels byol does not help: at 3 labelled subjects (pilot, seed 0, 12 epochs) the pretrained arm was
  below scratch (val 0.721 vs 0.800, test 0.916 vs 0.930), although it led for the first 5 epochs.
* Pretraining is cheap here (4 epochs of 180 clips; about 2 s for mae and 11 s for byol uncontended): the 49 s of
  mae seed 0 is contention from other work on the machine, which also inflated seed 0's ViT fine-tuning (218 s
  against 10 s for seeds 1 and 2). CCC figures are deterministic; results are cached per configuration.
* **byol with a longer fine-tune: no gain.** Same encoders and data, 30 fine-tune epochs for both arms (run after
  the table above, not used to choose it; wall time 751 s, contended)::

    PYTHONPATH=. python benchmarks/bench_pretrain.py --work /tmp/bpt2 --families byol --finetune-epochs 30

    conv3d_resnet_gru_tiny scratch  0.388 +/- 0.062  0.587 +/- 0.090                -                       -
    conv3d_resnet_gru_tiny byol     0.303 +/- 0.081  0.600 +/- 0.112         11 +/- 0              - / - / 11
    byol on conv3d_resnet_gru_tiny: gain from pretraining (mean of seeds) val -0.085, test +0.012 (goal test >= +0.05: not met)

  Scratch keeps climbing to 0.32-0.42 validation CCC while the pretrained arm plateaus at 0.22-0.38 from about
  epoch 10 (above scratch on seed 2 only); the test figures end level (+0.012). So 4 epochs of byol buy a fast
  start (its 12-epoch result equals scratch's at ~25 epochs) but not a better model: at this size and pretraining
  length the honest answer is that pretraining does not pay beyond saving fine-tune epochs.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import statistics
import sys
import time
from pathlib import Path

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DATA = dict(subjects=24, videos_per_subject=1, frames=200, size=64, lag_frames=4, blank_rate=0.04, seed=7)
CROP = 64
FINETUNE = {"window_length": 16, "window_overlap": 0.5, "sampler": "uniform", "num_frames": 8, "batch_size": 16,
            "lr": 1e-3, "weight_decay": 0.05, "w_ccc": 1.0, "w_mse": 0.0, "postprocess": False, "threads": 2}
#: One family per backbone: its pretraining method and knobs, and the setting its fine-tuning loads the encoder with.
#: The fine-tune settings of the two arms of a family are FINETUNE + backbone, identical but for that one key.
FAMILIES = {
    "mae": {"backbone": "video_vit_tiny", "ckpt_key": "checkpoint", "labelled": 4, "finetune_epochs": 30,
            "pretrain": {"pretrain_method": "mae", "mask_ratio": 0.9, "decoder_depth": 2, "lr": 1.5e-3}},
    # The tiny encoder is 48 wide: BYOL's 4096/256 projector widths would dwarf it, so 256/64; the EMA starts at
    # 0.99 (BYOL's 0.996 is for ~10^5 steps; here a few hundred); global crops keep >= 40% of the face (the
    # setting's default; BYOL's 0.08 would often crop the mouth or the eyes, the very signals regressed).
    "byol": {"backbone": "conv3d_resnet_gru_tiny", "ckpt_key": "pretext_checkpoint", "labelled": 1,
             "finetune_epochs": 12,
             "pretrain": {"pretrain_method": "byol", "byol_hidden": 256, "byol_proj_dim": 64, "ema_momentum": 0.99,
                          "global_crop_scale": 0.4}},
}
#: Pretraining reads every train video's windows without overlap (half the clips of the fine-tune windows: the
#: pretraining epochs are the run's cost) and its frozen probe trains 2 epochs a report (the probe only shows progress).
PRETRAIN_CLIPS = {"window_overlap": 0.0, "probe_epochs": 2}
FULL = {"pretrain_epochs": 4, "seeds": (0, 1, 2)}
QUICK = {"pretrain_epochs": 2, "finetune_epochs": 2, "seeds": (0,)}
METRIC = "val_ccc_mean"


class LocalSession:
    """The loop's session interface in this process, on the CPU, without Ray: keeps every report, the last
    ``encoder.pt`` a report carried, and the evaluated weights of the report with the best validation CCC."""

    rank = 0

    def __init__(self, keep_encoder: Path | None = None):
        import torch

        self.device = torch.device("cpu")
        self.marks: dict[str, float] = {}
        self.reports: list[dict] = []
        self.keep_encoder = keep_encoder
        self.best_state, self.best_value = None, -math.inf

    def prepare_model(self, model, **kwargs):
        return model

    def prepare_data_loader(self, loader):
        return loader

    def load_state(self, device):
        return None

    def should_stop(self) -> bool:
        return False

    def report(self, metrics: dict, checkpoint_dir: Path | None = None) -> None:
        from trainables.session import load_state_file

        self.reports.append(dict(metrics))
        if checkpoint_dir is None:
            return
        if self.keep_encoder is not None and (Path(checkpoint_dir) / "encoder.pt").is_file():
            shutil.copyfile(Path(checkpoint_dir) / "encoder.pt", self.keep_encoder)
        value = metrics.get(METRIC, -math.inf)
        if value > self.best_value:
            self.best_value = value
            state = load_state_file(Path(checkpoint_dir) / "state.pt")
            self.best_state = {k: state[k] for k in ("eval_model", "in_chans", "out_dims") if k in state}


def build_data(work: Path, labelled: int) -> Path:
    from trainables.prepare.registration import Registration
    from trainables.prepare.run import prepare
    from trainables.prepare.synth import synthesize

    setting = {**DATA, "labelled_train_subjects": labelled}
    data = work / ("data_" + "_".join(f"{v}" for v in setting.values()) + f"_crop{CROP}")  # one folder per setting
    index = data / "index.json"
    if index.is_file():
        return index
    manifest = synthesize(data / "synth", progress=False, **setting)
    _, summary = prepare(manifest, data / "cache", Registration(size=CROP), workers=2, progress=False,
                         index_path=index)
    for line in summary.lines():
        print(f"  {line}")
    return index


def pretrain(index: Path, family: str, seed: int, epochs: int, out: Path) -> dict:
    """One real pretraining trial; returns its figures and leaves the encoder at ``out`` (both cached: a second run
    with the same seed and epochs reuses them)."""
    import json

    from trainables.loop import fit

    figures = out.with_suffix(".json")
    if out.is_file() and figures.is_file():
        return {**json.loads(figures.read_text()), "cached": True}

    session = LocalSession(keep_encoder=out)
    t0 = time.perf_counter()
    fam = FAMILIES[family]
    fit({**FINETUNE, "backbone": fam["backbone"], **fam["pretrain"], **PRETRAIN_CLIPS, "data_index": str(index),
         "seed": seed, "epochs": epochs}, session)
    wall = time.perf_counter() - t0
    last = session.reports[-1]
    if last.get("diverged") or not out.is_file():
        raise RuntimeError(f"pretraining (seed {seed}) diverged or exported no encoder: {last}")
    result = {"wall_s": wall, "train_s": last["train_s"], "clips": last["pretrain_clips"],
              "videos": last["pretrain_videos"], "loss_first": session.reports[0]["pretrain_loss"],
              "loss_last": last["pretrain_loss"], "probe_first": session.reports[0][METRIC],
              "probe_last": last[METRIC]}
    figures.write_text(json.dumps(result, indent=1))
    return result


def finetune(index: Path, family: str, seed: int, epochs: int, checkpoint: Path | None) -> dict:
    """One real fine-tuning trial; the best validation epoch scored on the test split."""
    from trainables.config import TrialConfig
    from trainables.data.augment import build_eval_transform
    from trainables.data.cache import load_split
    from trainables.loop import build_model, evaluate, fit

    import hashlib
    import json

    fam = FAMILIES[family]
    config = {**FINETUNE, "backbone": fam["backbone"], "data_index": str(index), "seed": seed, "epochs": epochs,
              **({fam["ckpt_key"]: str(checkpoint)} if checkpoint else {})}
    key = hashlib.sha1(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]
    cached = index.parent / f"finetune_{family}_{'pretrained' if checkpoint else 'scratch'}_seed{seed}_{key}.json"
    if cached.is_file():  # same config, same data, same encoder file name: deterministic, so reused
        return {**json.loads(cached.read_text()), "cached": True}
    session = LocalSession()
    t0 = time.perf_counter()
    fit(config, session)
    wall = time.perf_counter() - t0
    curve = [r.get(METRIC, -1.0) for r in session.reports]
    if session.best_state is None:
        raise RuntimeError(f"fine-tuning (seed {seed}) reported no finite validation CCC: {session.reports[-1]}")
    cfg = TrialConfig.from_dict(config, lenient=config.keys())
    test = load_split(cfg.index_path, "test")
    model = build_model(cfg, int(session.best_state["out_dims"]), int(session.best_state["in_chans"]))
    model.load_state_dict(session.best_state["eval_model"])
    model.eval()
    frame_hw = tuple(test[0].frames.shape[1:3])
    metrics, _ = evaluate(model, test, cfg.clip_spec(), session.device, seed=seed,
                          transform=build_eval_transform(cfg.augmentations(), frame_size=frame_hw),
                          multiplier=cfg.target_multiplier, faceless=cfg.faceless)
    first = session.reports[0]
    result = {"val": max(curve), "curve": curve, "best_epoch": curve.index(max(curve)) + 1,
              "test": metrics["ccc_mean"], "wall_s": wall, "ckpt_loaded_keys": first.get("ckpt_loaded_keys"),
              "ckpt_missing_keys": first.get("ckpt_missing_keys")}
    cached.write_text(json.dumps(result, indent=1))
    return result


def mean_sd(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f}" if values else "-"
    return f"{statistics.mean(values):.3f} +/- {statistics.stdev(values):.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/emotune-bench-pretrain"),
                        help="cache folder (data, encoders; default %(default)s)")
    parser.add_argument("--quick", action="store_true", help="2 + 2 epochs, one seed (smoke run)")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds (default 0 1 2)")
    parser.add_argument("--families", nargs="+", choices=sorted(FAMILIES), default=list(FAMILIES),
                        help="pretraining families (default: all)")
    parser.add_argument("--pretrain-epochs", type=int, help="pretraining epochs (default %d)" % FULL["pretrain_epochs"])
    parser.add_argument("--finetune-epochs", type=int, help="fine-tune epochs (default: the family's)")
    parser.add_argument("--labelled", type=int, help="labelled train subjects (default: the family's)")
    parser.add_argument("--subjects", type=int, help="subjects (default %d)" % DATA["subjects"])
    parser.add_argument("--frames", type=int, help="frames per video (default %d)" % DATA["frames"])
    args = parser.parse_args(argv)
    setup = dict(QUICK if args.quick else FULL)
    if args.seeds:
        setup["seeds"] = tuple(args.seeds)
    if args.pretrain_epochs:
        setup["pretrain_epochs"] = args.pretrain_epochs
    for key, value in (("subjects", args.subjects), ("frames", args.frames)):
        if value:
            DATA[key] = value
    ft_epochs = {f: args.finetune_epochs or setup.get("finetune_epochs") or FAMILIES[f]["finetune_epochs"]
                 for f in args.families}
    labelled = {f: args.labelled or FAMILIES[f]["labelled"] for f in args.families}

    import torch

    import trainables
    from trainables.prepare.synth import assign_splits

    started = time.perf_counter()
    print(f"trainables from {Path(trainables.__file__).parent}; torch {torch.__version__}")
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    indexes = {f: build_data(args.work, labelled[f]) for f in args.families}
    splits = assign_splits(DATA["subjects"], DATA["seed"])
    print(f"data ({time.perf_counter() - t0:.0f} s): subjects train/val/test "
          f"{len(splits['train'])}/{len(splits['val'])}/{len(splits['test'])}; "
          + "; ".join(f"{f}: {labelled[f]} train subjects labelled, {indexes[f]}" for f in args.families), flush=True)

    rows: dict[str, dict[str, list[dict]]] = {f: {"scratch": [], "pretrained": []} for f in args.families}
    pre: dict[str, list[dict]] = {f: [] for f in args.families}
    for seed in setup["seeds"]:
        for family in args.families:
            knobs = json.dumps({**FAMILIES[family], **PRETRAIN_CLIPS, **FINETUNE}, sort_keys=True).encode()
            index = indexes[family]
            encoder = index.parent / (f"encoder_{family}_seed{seed}_ep{setup['pretrain_epochs']}_"
                                      f"{hashlib.sha1(knobs).hexdigest()[:10]}.pt")
            p = pretrain(index, family, seed, setup["pretrain_epochs"], encoder)
            pre[family].append(p)
            print(f"seed {seed} {family} pretrain: {p['videos']} videos, {p['clips']} clips/epoch, loss "
                  f"{p['loss_first']:.3f} -> {p['loss_last']:.3f}, probe val CCC {p['probe_first']:.3f} -> "
                  f"{p['probe_last']:.3f}, {p['wall_s']:.0f} s wall ({p['train_s']:.0f} s steps)"
                  f"{' (cached)' if p.get('cached') else ''}", flush=True)
            for arm, ckpt in (("scratch", None), ("pretrained", encoder)):
                r = finetune(index, family, seed, ft_epochs[family], ckpt)
                rows[family][arm].append(r)
                keys = "" if ckpt is None else \
                    f", ckpt keys loaded {r['ckpt_loaded_keys']} missing {r['ckpt_missing_keys']}"
                if ckpt is not None and r["ckpt_missing_keys"] != 0:
                    raise RuntimeError(f"{family} seed {seed}: the encoder checkpoint left "
                                       f"{r['ckpt_missing_keys']} encoder keys unmatched")
                print(f"seed {seed} {FAMILIES[family]['backbone']} {arm}: val {r['val']:.3f} (epoch "
                      f"{r['best_epoch']}), test {r['test']:.3f}, {r['wall_s']:.0f} s"
                      f"{' (cached)' if r.get('cached') else ''}{keys}; val curve "
                      f"{' '.join(f'{v:.2f}' for v in r['curve'])}", flush=True)

    n = len(setup["seeds"])
    print(f"{DATA['subjects']} subjects ({len(splits['train'])} train / {len(splits['val'])} val / "
          f"{len(splits['test'])} test), {DATA['frames']} frames each at {CROP}x{CROP}; {setup['pretrain_epochs']} "
          f"pretraining epochs on all {len(splits['train'])} train videos; {n} seed(s) {list(setup['seeds'])}")
    for f in args.families:
        print(f"  {f} on {FAMILIES[f]['backbone']}: {labelled[f]} labelled train subject(s), "
              f"{len(splits['train']) - labelled[f]} unlabelled train videos, {ft_epochs[f]} fine-tune epochs")
    header = f"{'arm':<30} {'val CCC':>16} {'test CCC':>16} {'pretrain wall s':>16} {'epochs to scratch best':>23}"
    print(header)
    print("-" * len(header))
    gains = []
    for family in args.families:
        backbone = FAMILIES[family]["backbone"]
        scratch, pretrained = rows[family]["scratch"], rows[family]["pretrained"]
        reach = [next((i + 1 for i, v in enumerate(m["curve"]) if v >= s["val"]), None)
                 for s, m in zip(scratch, pretrained)]
        walls = [p["wall_s"] for p in pre[family]]
        wall_text = f"{statistics.mean(walls):.0f} +/- {statistics.stdev(walls):.0f}" if n > 1 else f"{walls[0]:.0f}"
        print(f"{backbone + ' scratch':<30} {mean_sd([r['val'] for r in scratch]):>16} "
              f"{mean_sd([r['test'] for r in scratch]):>16} {'-':>16} {'-':>23}")
        print(f"{backbone + ' ' + family:<30} {mean_sd([r['val'] for r in pretrained]):>16} "
              f"{mean_sd([r['test'] for r in pretrained]):>16} {wall_text:>16} "
              f"{' / '.join('-' if h is None else str(h) for h in reach):>23}")
        gains.append((family, backbone,
                      statistics.mean(r["val"] for r in pretrained) - statistics.mean(r["val"] for r in scratch),
                      statistics.mean(r["test"] for r in pretrained) - statistics.mean(r["test"] for r in scratch)))
    for family, backbone, val_gain, test_gain in gains:
        print(f"{family} on {backbone}: gain from pretraining (mean of seeds) val {val_gain:+.3f}, test "
              f"{test_gain:+.3f} (goal test >= +0.05: {'met' if test_gain >= 0.05 else 'not met'})")
    print(f"total wall time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
