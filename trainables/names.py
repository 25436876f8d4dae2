"""Names a trial setting chooses among, listed once: the driver's settings table (``trainables.config``, which
imports no numpy or torch) and the data path (``trainables.data``) both read them from here."""
from __future__ import annotations

#: Frame samplers inside a window (``sampler``): SSTS (papers 000 and 001), evenly spaced, or consecutive frames.
SAMPLERS: tuple[str, ...] = ("ssts", "uniform", "consecutive")

#: How a window's per-frame labels become its one target (``label_fusion``; paper 003).
FUSIONS: tuple[str, ...] = ("mean", "extremum", "median", "center", "last")
