"""The pretraining part of a report: validation clips masked and reconstructed by the best trial's encoder and
decoder, and the probe's CCC against each knob (``analysis.figures.objective_vs_knobs``).

The best trial's checkpoint (``checkpoint/state.pt`` of its MLflow run: the pretrainer's weights with the trial's
config) is rebuilt here, on the CPU, and run on the first windows of the sweep's validation videos; the mask is drawn
from a fixed seed, so a report written again shows the same picture.
"""
from __future__ import annotations

import html
import tempfile
from pathlib import Path

from analysis import figures
from analysis.sweeps import Sweep

#: Validation clips shown, and the seed of their masks.
CLIPS_SHOWN = 2
MASK_SEED = 0


def is_pretraining(sweep: Sweep) -> bool:
    return any(t.params.get("pretrain_method") for t in sweep.trials)


def pretraining_section(client, sweep: Sweep, fig_dir: Path) -> str:
    """HTML of the section, with its figures written into ``fig_dir``; "" for a fine-tuning sweep."""
    if not is_pretraining(sweep):
        return ""
    parts = ["<h2>Pretraining</h2><p>The objective is the frozen probe's CCC on the validation subjects "
             "(trainables.pretrain.probe).</p>"]
    if sweep.searched and sweep.completed:
        path = figures.objective_vs_knobs(sweep, fig_dir / "probe_vs_knobs.png")
        parts.append(f"<h3>Probe CCC against each knob</h3><img src='figures/{path.name}' alt='probe against knobs'>")
    best = sweep.best()
    if best is not None and best.params.get("pretrain_method") == "mae":
        try:
            path = reconstruction_figure(client, best.run_id, fig_dir / "reconstructions.png")
            parts.append(f"<h3>Masked validation clips reconstructed (trial {html.escape(best.trial_id)})</h3>"
                         f"<img src='figures/{path.name}' alt='reconstructions'>")
        except (OSError, ValueError, KeyError) as err:
            parts.append(f"<p>No reconstructions: {html.escape(str(err))}</p>")
    return "".join(parts)


def reconstruction_figure(client, run_id: str, path: Path) -> Path:
    """Draw :data:`CLIPS_SHOWN` validation clips (original, masked, reconstruction) of the pretrainer in run
    ``run_id``'s best checkpoint."""
    import numpy as np
    import torch

    from trainables.config import TrialConfig
    from trainables.data.cache import load_split
    from trainables.loop import build_model
    from trainables.pretrain.methods import create_pretrainer
    from trainables.pretrain.run import PretrainClips
    from trainables.session import load_state_file

    with tempfile.TemporaryDirectory(prefix="emotune-report-") as tmp:
        state = load_state_file(client.download_artifacts(run_id, "checkpoint/state.pt", tmp), "cpu",
                                shown=f"runs:/{run_id}/checkpoint/state.pt")
    config = {k: v for k, v in state["config"].items() if v is not None}
    cfg = TrialConfig.from_dict(config, lenient=config.keys())
    pretrainer = create_pretrainer(cfg.pretrain_method, build_model(cfg, int(state["out_dims"]),
                                                                    int(state["in_chans"])), cfg)
    pretrainer.load_state_dict(state["model"])
    pretrainer.eval()
    clips = PretrainClips(load_split(cfg.index_path, "val"), cfg.clip_spec(), seed=MASK_SEED)
    if not len(clips):
        raise ValueError("the validation videos have no window to show")
    picks = np.linspace(0, len(clips) - 1, min(CLIPS_SHOWN, len(clips))).round().astype(int)
    batch = torch.stack([clips[int(i)] for i in picks])
    with torch.no_grad():
        masked, recon = pretrainer.reconstruct(batch, torch.Generator().manual_seed(MASK_SEED))

    def to_uint8(x):  # (N, T, C, H, W) in [-1, 1] -> (N, T, H, W, C) uint8
        return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 1, 3, 4, 2).numpy()

    return figures.reconstructions(to_uint8(batch), to_uint8(masked), to_uint8(recon), path)
