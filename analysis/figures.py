"""PNG figures of sweeps (matplotlib, no display): importance, parallel coordinates, learning curves with ASHA's
stops, objective against training time, the per-fold scores of a cross-validated sweep's top trials, Pareto fronts,
and best-so-far curves and fronts of several sweeps."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from analysis.sweeps import Sweep

STATUS_COLORS = {"complete": "tab:blue", "stopped early": "tab:orange", "diverged": "tab:red", "errored": "tab:gray",
                 "running": "tab:green"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _plt().close(fig)
    return path


def importance(values: dict[str, float], metric: str, path: Path) -> Path:
    plt = _plt()
    names = list(values)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.45 * max(3, len(names)) + 1))
    ax.barh(names, [values[n] for n in names], color="tab:blue")
    ax.set_xlabel(f"fANOVA importance for {metric}")
    ax.set_xlim(0, 1)
    return _save(fig, path)


@dataclass
class Axis:
    """One vertical axis of the parallel-coordinates figure."""

    label: str  # the parameter (``lr (log)`` when on a log scale) or the objective
    positions: list[float]  # each trial's place on the axis, in [0, 1]
    ticks: list[tuple[float, str]]  # (place, text) labels drawn beside the axis


def parallel_axes(sweep: Sweep, trials: list) -> list[Axis]:
    """The axes of :func:`parallel_coordinates`: one per searched parameter, then the objective. A parameter is on a
    log axis only when the study searched it on a log scale (``sweep.log_scaled``), and its label says so; the
    objective is always linear, so distances between trials read as differences in the objective."""
    axes = []
    for name in sweep.searched:
        positions, ticks, log = _scale([t.params.get(name) for t in trials], log=name in sweep.log_scaled)
        axes.append(Axis(f"{name} (log)" if log else name, positions, ticks))
    positions, ticks, _ = _scale([sweep.objective(t) for t in trials])
    axes.append(Axis(sweep.metric, positions, ticks))
    return axes


def parallel_coordinates(sweep: Sweep, path: Path) -> Path:
    """One line per finished trial through its searched parameters and its objective, coloured by it (each axis
    scaled to [0, 1], see :func:`parallel_axes`; categorical values evenly spaced in the order they appear)."""
    plt = _plt()
    from matplotlib import cm, colors

    trials = [t for t in sweep.trials if not math.isnan(sweep.objective(t))]
    axes = parallel_axes(sweep, trials)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(axes)), 4.5))
    objective = [sweep.objective(t) for t in trials]
    norm = colors.Normalize(min(objective, default=0), max(objective, default=1) + 1e-12)
    cmap = cm.get_cmap("viridis") if hasattr(cm, "get_cmap") else plt.colormaps["viridis"]
    for i, v in enumerate(objective):
        ax.plot(range(len(axes)), [a.positions[i] for a in axes], color=cmap(norm(v)), alpha=0.8, marker="o", ms=3)
    for x, axis in enumerate(axes):
        ax.axvline(x, color="k", lw=0.5)
        for y, text in axis.ticks:
            ax.text(x + 0.03, y, text, fontsize=7, va="center")
    ax.set_xticks(range(len(axes)), [a.label for a in axes], rotation=20)
    ax.set_yticks([])
    ax.set_ylim(-0.05, 1.05)
    fig.colorbar(cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=sweep.metric)
    ax.set_title(f"{sweep.name}: searched parameters of {len(trials)} trials")
    return _save(fig, path)


def _scale(values: list[Any], log: bool = False) -> tuple[list[float], list[tuple[float, str]], bool]:
    """(each value's place in [0, 1], tick labels, whether the axis is logarithmic). Numbers are placed linearly
    between their minimum and maximum, or on a log scale when ``log`` (and every value is positive), labelled at both
    ends; anything else is categorical: evenly spaced in the order the values first appear."""
    numeric = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if values and len(numeric) == len(values):
        lo, hi = min(numeric), max(numeric)
        log = log and lo > 0
        f = (lambda v: math.log(v)) if log else (lambda v: float(v))
        span = (f(hi) - f(lo)) or 1.0
        scaled = [(f(v) - f(lo)) / span if hi != lo else 0.5 for v in values]
        return scaled, [(0.0 if hi != lo else 0.5, f"{lo:.3g}"), *([(1.0, f"{hi:.3g}")] if hi != lo else [])], log
    order = list(dict.fromkeys(str(v) for v in values))
    pos = {v: (i / (len(order) - 1) if len(order) > 1 else 0.5) for i, v in enumerate(order)}
    return [pos[str(v)] for v in values], [(pos[v], v) for v in order], False


def learning_curves(sweep: Sweep, path: Path) -> Path:
    """The objective per epoch of every trial; an ``x`` at the last epoch of each trial ASHA stopped early. In a
    cross-validated sweep, per fold-epoch (the mean over the folds so far), with a line at the end of each fold."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    if sweep.folds:
        per_fold = max((int(t.params.get("max_units") or t.params.get("epochs") or 0) for t in sweep.trials), default=0)
        for fold in range(1, sweep.folds):
            ax.axvline(fold * per_fold + 0.5, color="0.8", lw=1, zorder=0)
    for t in sweep.trials:
        curve = [(e, v) for e, v in t.objective_curve(sweep.metric) if math.isfinite(v)]
        if not curve:
            continue
        color = STATUS_COLORS.get(t.status, "k")
        ax.plot([e for e, _ in curve], [v for _, v in curve], color=color, alpha=0.7, marker=".")
        if t.status == "stopped early":
            ax.plot(curve[-1][0], curve[-1][1], marker="x", color="tab:red", ms=10, mew=2)
    for status, color in STATUS_COLORS.items():
        if any(t.status == status for t in sweep.trials):
            ax.plot([], [], color=color, label=status)
    ax.plot([], [], marker="x", color="tab:red", ls="", label="stopped by ASHA")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("fold-epoch (folds in turn)" if sweep.folds else "epoch")
    ax.set_ylabel(f"{sweep.metric} (mean over the folds so far)" if sweep.folds else sweep.metric)
    ax.legend(fontsize=8)
    ax.set_title(f"{sweep.name}: learning curves")
    return _save(fig, path)


def objective_vs_time(sweep: Sweep, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for status, color in STATUS_COLORS.items():
        pts = [(t.train_time_s, sweep.objective(t)) for t in sweep.trials
               if t.status == status and not math.isnan(sweep.objective(t))]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=color, label=status)
    ax.set_xlabel("training time (s)")
    ax.set_ylabel(f"best {sweep.metric}")
    ax.legend(fontsize=8)
    ax.set_title(f"{sweep.name}: objective against training time")
    return _save(fig, path)


def fold_strip(sweep: Sweep, trials: list, path: Path) -> Path:
    """A strip plot of a cross-validated sweep's ``trials`` (best first): each fold's score (its run's ``fold_score``)
    as a dot coloured by fold, the mean over the finished folds as a bar with ± one sd; an open dot for a trial
    that did not finish every fold. A ``≈`` under a trial marks it within one sd of the best."""
    plt = _plt()
    from matplotlib import colormaps

    near = sweep.near_best()
    colors = colormaps["tab10"]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(trials) + 2), 4.5))
    for x, t in enumerate(trials):
        for f in t.folds:
            if f.complete:
                jitter = (f.fold - (sweep.folds + 1) / 2) * 0.06
                color = colors((f.fold - 1) % 10)
                ax.scatter([x + jitter], [f.score], s=28, zorder=3, edgecolors=[color],
                           facecolors=[color] if t.cv_complete else "none")
        cv = t.cv
        if cv is not None and cv.scores:
            ax.hlines(cv.mean, x - 0.25, x + 0.25, color="k", lw=2, zorder=2)
            if math.isfinite(cv.sd):
                ax.vlines(x, cv.mean - cv.sd, cv.mean + cv.sd, color="k", lw=1, zorder=2)
    labels = [f"{t.trial_id}\n{t.cv.folds_text() if t.cv else ''}{' ≈' if t.trial_id in near else ''}"
              for t in trials]
    ax.set_xticks(range(len(trials)), labels, fontsize=8)
    for fold in range(1, sweep.folds + 1):
        subjects = sweep.fold_subjects[fold - 1] if fold <= len(sweep.fold_subjects) else []
        ax.scatter([], [], color=colors((fold - 1) % 10), label=f"fold {fold}" + (
            f" ({', '.join(subjects[:3])}{', ...' if len(subjects) > 3 else ''})" if subjects else ""))
    ax.set_xlim(-0.6, len(trials) - 0.4)
    ax.set_ylabel(f"{sweep.metric} per fold (bar: mean ± sd)")
    ax.legend(fontsize=7, loc="best")
    ax.set_title(f"{sweep.name}: per-fold scores of the top {len(trials)} trials")
    return _save(fig, path)


def best_so_far(sweeps: list[Sweep], path: Path) -> Path:
    """Each sweep's best objective so far against the number of trials started (trials in start order)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    _best_so_far_panel(ax, sweeps)
    return _save(fig, path)


def _best_so_far_panel(ax, sweeps: list[Sweep]) -> None:
    for sweep in sweeps:
        xs, ys = best_so_far_curve(sweep)
        ax.step(xs, ys, where="post", marker="o", label=f"{sweep.name} ({sweep.experiment}, {sweep.validation})")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trials")
    ax.set_ylabel("best objective so far" + (f" ({sweeps[0].metric})" if len({s.metric for s in sweeps}) == 1 else ""))
    ax.legend(fontsize=8)


def comparison(sweeps: list[Sweep], fronts: list, path: Path) -> Path:
    """``emotune compare``'s figure: each sweep's best objective so far against trials (left) and, overlaid, each
    sweep's Pareto front of its objective against GFLOPs per window (right; ``fronts``: one
    :class:`analysis.fronts.Front` per sweep, over one reference point)."""
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    _best_so_far_panel(left, sweeps)
    left.set_title("best objective so far")
    colors = _colors(len(sweeps))
    for sweep, front, color in zip(sweeps, fronts, colors):
        _front_panel(right, front, 1, 0, color=color, label=f"{sweep.name} ({len(front.members)} on the front)")
    metrics = {s.metric for s in sweeps}
    right.set_ylabel(next(iter(metrics)) if len(metrics) == 1 else "each sweep's objective")
    right.set_xlabel("gflops per window")
    _log_if_wide(right, [v[1] for f in fronts for v in f.values])
    right.set_title("Pareto fronts: objective against GFLOPs (faded: dominated)")
    if any(f.trials for f in fronts):
        right.legend(fontsize=8)
    return _save(fig, path)


def pareto_fronts(sweep: Sweep, fronts: list, path: Path) -> Path:
    """The report's Pareto figure: one panel per front of :func:`analysis.fronts.sweep_fronts` (the objective on the
    y axis against each cost), the trials on the front solid and joined, the others faded; a front over three
    objectives is drawn as its three pairwise views, the trials on the (three-dimensional) front marked in each."""
    plt = _plt()
    panels = []  # (front, x index, y index)
    for front in fronts:
        if len(front.names) == 3:
            panels += [(front, 1, 0), (front, 2, 0), (front, 2, 1)]
        else:
            panels.append((front, 1, 0))
    cols = min(2, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 4.3 * rows), squeeze=False)
    for ax, (front, x, y) in zip(axes.flat, panels):
        _front_panel(ax, front, x, y, color="tab:blue", label=None, joined=len(front.names) == 2, annotate=True)
        ax.set_xlabel(f"{front.names[x]} ({front.modes[x]})")
        ax.set_ylabel(f"{front.names[y]} ({front.modes[y]})")
        _log_if_wide(ax, [v[x] for v in front.values])
        noisy = " (noisy: wall time)" if front.names[x] == "infer_ms" else ""
        ax.set_title(f"{front.names[y]} against {front.names[x]}{noisy}: {len(front.members)} of "
                     f"{len(front.trials)} on the front", fontsize=9)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"{sweep.name}: Pareto front{'s' if len(panels) > 1 else ''} of the complete trials "
                 "(solid: non-dominated, faded: dominated)", fontsize=10)
    return _save(fig, path)


def _front_panel(ax, front, x: int, y: int, color: str, label: str | None, joined: bool = True,
                 annotate: bool = False) -> None:
    """``front``'s trials on ``ax`` (coordinate ``x`` across, ``y`` up): dominated ones faded, the front's solid,
    joined by a staircase when the front is two-dimensional."""
    on = set(front.members)
    faded = [v for i, v in enumerate(front.values) if i not in on]
    if faded:
        ax.scatter([v[x] for v in faded], [v[y] for v in faded], color=color, alpha=0.3, s=22, edgecolors="none")
    members = [front.values[i] for i in front.members]
    if not members:
        return
    ax.scatter([v[x] for v in members], [v[y] for v in members], color=color, s=40, edgecolors="k", linewidths=0.6,
               zorder=3, label=label)
    if joined:
        ordered = sorted(members, key=lambda v: v[x])
        # the best value of y reachable at each x: held from a member on to the next cheaper-or-better one
        ax.step([v[x] for v in ordered], [v[y] for v in ordered], where="post" if front.modes[x] == "min" else "pre",
                color=color, lw=1.2, zorder=2)
    if annotate:
        for i in front.members:
            ax.annotate(front.trials[i].trial_id, (front.values[i][x], front.values[i][y]), fontsize=6,
                        xytext=(3, 3), textcoords="offset points")


def _log_if_wide(ax, values: list[float]) -> None:
    """A log x axis when the values are positive and span more than two orders of magnitude."""
    positive = [v for v in values if v > 0]
    if positive and len(positive) == len(values) and max(positive) / min(positive) > 100:
        ax.set_xscale("log")


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]


def best_so_far_curve(sweep: Sweep) -> tuple[list[int], list[float]]:
    pick = max if sweep.mode == "max" else min
    xs, ys, best = [], [], math.nan
    for i, t in enumerate(sweep.trials, 1):
        v = sweep.objective(t) if t.status != "errored" else math.nan
        if not math.isnan(v):
            best = v if math.isnan(best) else pick(best, v)
        xs.append(i)
        ys.append(best)
    return xs, ys


def objective_vs_knobs(sweep: Sweep, path: Path) -> Path:
    """One panel per searched setting: each finished trial's objective (its best value) against the setting's value,
    on the study's scale (log when it searched on one; categories evenly spaced). For a pretraining sweep this is the
    probe's CCC against each pretraining knob."""
    plt = _plt()
    trials = [t for t in sweep.trials if not math.isnan(sweep.objective(t))]
    names = sweep.searched or ["(none searched)"]
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.0), squeeze=False)
    values = [sweep.objective(t) for t in trials]
    for ax, name in zip(axes[0], names):
        xs, ticks, log = _scale([t.params.get(name) for t in trials], log=name in sweep.log_scaled)
        ax.scatter(xs, values, s=24, color="tab:blue")
        ax.set_xticks([p for p, _ in ticks], [label for _, label in ticks])
        ax.set_xlabel(f"{name} (log)" if log else name)
        ax.set_xlim(-0.1, 1.1)
    axes[0][0].set_ylabel(sweep.metric)
    return _save(fig, path)


def reconstructions(original, masked, recon, path: Path) -> Path:
    """A grid of masked clips reconstructed: for each clip, three rows (original, masked input, reconstruction), one
    column per frame. Arrays (N, T, H, W, C) uint8."""
    plt = _plt()
    n, t = original.shape[:2]
    fig, axes = plt.subplots(3 * n, t, figsize=(1.1 * t, 1.1 * 3 * n), squeeze=False)
    for i in range(n):
        for row, (label, clip) in enumerate((("original", original), ("masked", masked), ("reconstruction", recon))):
            for j in range(t):
                ax = axes[3 * i + row][j]
                frame = clip[i, j]
                ax.imshow(frame[..., 0] if frame.shape[-1] == 1 else frame, cmap="gray", vmin=0, vmax=255)
                ax.set_xticks([])
                ax.set_yticks([])
                if j == 0:
                    ax.set_ylabel(label, fontsize=7)
    return _save(fig, path)
