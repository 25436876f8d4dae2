"""Pareto fronts and their hypervolume: the arithmetic only (plain Python, no torch, numpy or Ray), on points whose
every coordinate is to be minimised; :func:`minimised` turns (values, modes) into such points.

* A point *dominates* another when it is no worse in every coordinate and better in at least one. Equal points do not
  dominate each other, so both sit on the same front.
* :func:`non_dominated_sort` sorts points into fronts: front 1 is dominated by no point, front 2 only by points of
  front 1, and so on (NSGA-II's sorting; quadratic, which is nothing at a sweep's size).
* :func:`hypervolume` is the volume of the region the points dominate, bounded by a reference point (the Lebesgue
  measure of the union of the boxes [p, ref]), exact in 1, 2 or 3 dimensions. A point that is not better than the
  reference in every coordinate adds nothing.
* :func:`reference_point` is the reference this package states with every hypervolume: for a maximised coordinate 0
  (for a CCC or a correlation: no agreement), or the worst observed value when that is below 0; for a minimised one
  (costs) 1.1 x the largest observed value (the largest plus a tenth of its size; 1 when it is 0). Every observed point
  is then inside the reference box, and the worst trial of a cost still adds a slice.
"""
from __future__ import annotations

import math
from typing import Sequence

__all__ = ["dominates", "front", "hypervolume", "minimised", "non_dominated_sort", "reference_point"]

Point = Sequence[float]


def minimised(values: Point, modes: Sequence[str]) -> tuple[float, ...]:
    """``values`` with every coordinate to minimise: a maximised one (mode ``max``) negated."""
    if len(values) != len(modes):
        raise ValueError(f"{len(values)} values for {len(modes)} modes")
    out = []
    for v, mode in zip(values, modes):
        if mode not in ("min", "max"):
            raise ValueError(f"mode {mode!r}; allowed: min, max")
        out.append(-float(v) if mode == "max" else float(v))
    return tuple(out)


def dominates(a: Point, b: Point) -> bool:
    """Whether ``a`` dominates ``b`` (minimising every coordinate): no worse anywhere, better somewhere."""
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def non_dominated_sort(points: Sequence[Point]) -> list[list[int]]:
    """Indexes of ``points`` by front (module docstring), each front in index order, the first front first.

    Raises:
        ValueError: a coordinate is NaN (it would be neither better nor worse than anything).
    """
    _check(points)
    left, fronts = list(range(len(points))), []
    while left:
        first = [i for i in left if not any(dominates(points[j], points[i]) for j in left if j != i)]
        fronts.append(first)
        taken = set(first)
        left = [i for i in left if i not in taken]
    return fronts


def front(points: Sequence[Point]) -> list[int]:
    """Indexes of the points no other point dominates (the first front), in index order."""
    _check(points)
    return [i for i, p in enumerate(points) if not any(dominates(q, p) for j, q in enumerate(points) if j != i)]


def hypervolume(points: Sequence[Point], reference: Point) -> float:
    """The volume dominated by ``points`` up to ``reference`` (every coordinate minimised), exact for 1-3 dimensions.

    Raises:
        ValueError: more than 3 dimensions, a point of another dimension than the reference, or a NaN.
    """
    dims = len(reference)
    if not 1 <= dims <= 3:
        raise ValueError(f"hypervolume in {dims} dimensions; this module computes 1 to 3")
    if any(len(p) != dims for p in points):
        raise ValueError(f"every point needs {dims} coordinates, as the reference")
    _check([*points, reference])
    inside = [tuple(float(x) for x in p) for p in points if all(x < r for x, r in zip(p, reference))]
    ref = tuple(float(r) for r in reference)
    if not inside:
        return 0.0
    if dims == 1:
        return ref[0] - min(p[0] for p in inside)
    if dims == 2:
        return _hv2(inside, ref)
    # 3D: slabs between consecutive third coordinates; each slab's area is the 2D hypervolume of the points at or
    # below it.
    inside.sort(key=lambda p: p[2])
    volume = 0.0
    for i, p in enumerate(inside):
        top = inside[i + 1][2] if i + 1 < len(inside) else ref[2]
        if top > p[2]:
            volume += _hv2([q[:2] for q in inside[:i + 1]], ref[:2]) * (top - p[2])
    return volume


def _hv2(points: list[tuple[float, ...]], ref: tuple[float, ...]) -> float:
    """Area dominated by 2D ``points`` (each strictly inside ``ref``): a sweep along the first coordinate."""
    area, best_y = 0.0, ref[1]
    ordered = sorted(points)
    for i, (x, y) in enumerate(ordered):
        if y < best_y:
            best_y = y
        right = ordered[i + 1][0] if i + 1 < len(ordered) else ref[0]
        area += (right - x) * (ref[1] - best_y)
    return area


def reference_point(columns: Sequence[Sequence[float]], modes: Sequence[str]) -> tuple[float, ...]:
    """The reference of :func:`hypervolume` for points whose coordinate ``k`` takes the values ``columns[k]``, in the
    objectives' own units and directions (module docstring): 0 or the worst value below it for a maximised coordinate,
    1.1 x the largest for a minimised one."""
    ref = []
    for values, mode in zip(columns, modes):
        finite = [float(v) for v in values if math.isfinite(float(v))]
        if not finite:
            raise ValueError("a reference point needs at least one finite value per coordinate")
        if mode == "max":
            ref.append(min(0.0, min(finite)))
        else:
            worst = max(finite)
            ref.append(worst + 0.1 * abs(worst) if worst != 0 else 1.0)
    return tuple(ref)


def _check(points: Sequence[Point]) -> None:
    if any(math.isnan(float(x)) for p in points for x in p):
        raise ValueError("a point has a NaN coordinate")
