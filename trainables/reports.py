"""What a trial reports, by name: the target dimensions, the keys of every report and the metric names a study's
objective may choose. No torch here: the sweep's driver checks a study's objective with these before Ray starts.
"""
from __future__ import annotations

DIMS = ("valence", "arousal")
#: What every report holds besides the validation metrics (``val_<metric>`` and ``val_<metric>_raw``).
REPORT_KEYS = ("epoch", "step", "data_fraction", "train_loss", "epoch_time_s", "train_time_s", "clips_per_s", "lr")
_PER_DIM = ("ccc", "pcc", "rmse", "mae", "mape")
#: What every trial measures of its costs (``trainables.costs``), reported with every result.
COST_KEYS = ("params_m", "gflops", "infer_ms", "train_s", "peak_mem_mb")


def metric_names(dims: tuple[str, ...] = DIMS, native: bool = False) -> list[str]:
    """The keys of ``trainables.objectives.metrics.regression_report(..., include_mape=True)`` for ``dims`` (with a
    native label scale when ``native``), in its order. A test holds the two together."""
    names = [f"{m}_{d}" for d in dims for m in _PER_DIM] + ["ccc_mean"]
    if native:
        names += [f"{m}_{d}_native" for d in dims for m in _PER_DIM]
    return names


def reported_metrics(dims: tuple[str, ...] = DIMS, native_scale: tuple[float, float] | None = None) -> set[str]:
    """Every metric name a report can hold for targets ``dims``: what a study's objective may name."""
    keys = set(REPORT_KEYS) | set(COST_KEYS)
    for name in metric_names(dims, native_scale is not None):
        keys |= {f"val_{name}", f"val_{name}_raw"}
    return keys
