"""A file won by the sketch vote takes the coordinate-wise median of its agreeing group's payloads.

When no digest of a file has r' equal copies (three determinism classes among its holders, or a Byzantine holder
next to two classes), the sketch vote's winning group is a set of at least r' holders whose sketches agree within
the tolerance tau. Taking one member's payload would let that member, if Byzantine, carry a bias of up to the
hiding bound (2.61 tau ||g||, docs/byzantine.md) on every file it holds, every step, in a direction it chooses. The
PS instead fetches one payload per distinct digest of the group and keeps their coordinate-wise median, each payload
counted once per group member that committed it:

* with b Byzantine members in a group of n, b < n/2, every coordinate of the median lies between two honest
  members' values, so the row moves no further from an honest replica than the honest replicas lie from one another
  (the honest spread), whatever the Byzantine payloads are;
* with b >= n/2 (e.g. one Byzantine member in a group of two), the median is the mean of the middle values and a
  Byzantine payload that the consistency check below lets through moves it by at most half its distance to the
  honest one, i.e. at most ``OUTLIER_FACTOR * hiding * tau * ||g||``. Such a file counts as corrupted when the
  Byzantine workers are known (:func:`could_bias`).

Consistency check: a payload farther than ``OUTLIER_FACTOR * hiding * tau`` (relative) from the median is an
outlier; the PS recomputes its sketch, which proves a lie when it differs from the sketch its holder sent, and drops
it from the median either way. Honest members stay within (1 + hiding) tau of the median (each median coordinate
lies within the range of the others), below the threshold.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from byzantine.aggregators.network import pruned_network, sort_rows
from byzantine.aggregators.order import median_of, median_positions

#: A payload is an outlier beyond this many hiding bounds (times tau, relative to the median's norm).
OUTLIER_FACTOR = 2.0
_BLOCK = 1 << 15


def median_into(payloads: Sequence[np.ndarray], weights: Sequence[int], out: np.ndarray) -> np.ndarray:
    """The coordinate-wise median of ``payloads``, payload i counted ``weights[i]`` times, into ``out`` (float32).

    As ``np.median`` computes it (an even count averages the two middle values in float32), per column block with a
    pruned sorting network of vectorised min/max (:mod:`byzantine.aggregators.network`). The result does not
    depend on the order of the payloads."""
    if not payloads or len(payloads) != len(weights) or any(w < 1 for w in weights):
        raise ValueError("median_into needs at least one payload and a positive weight for each")
    rows = [p for p, w in zip(payloads, weights, strict=False) for _ in range(w)]
    n, d = len(rows), out.shape[0]
    if n == 1:
        np.copyto(out, rows[0])
        return out
    network = pruned_network(n, frozenset(median_positions(n)))
    scratch = np.empty((n, min(_BLOCK, d)), dtype=np.float32)
    for start in range(0, d, _BLOCK):
        stop = min(start + _BLOCK, d)
        block = scratch[:, :stop - start]
        for i, row in enumerate(rows):
            np.copyto(block[i], row[start:stop])
        out[start:stop] = median_of(sort_rows(block, network))
    return out


def relative_distances(payloads: Sequence[np.ndarray], center: np.ndarray) -> list[float]:
    """``||p - center|| / ||center||`` for each payload (blocks of float32 differences, sums in float64; inf for a
    zero center and a payload that differs from it)."""
    scale = _norm(center)
    diff = np.empty(min(_BLOCK, center.shape[0]), dtype=np.float32)
    out = []
    for payload in payloads:
        total = 0.0
        for start in range(0, center.shape[0], _BLOCK):
            stop = min(start + _BLOCK, center.shape[0])
            part = diff[:stop - start]
            np.subtract(payload[start:stop], center[start:stop], out=part)
            total += float(np.dot(part, part))
        out.append(float(np.sqrt(total)) / scale if scale > 0 else (0.0 if total == 0 else float("inf")))
    return out


def outliers(payloads: Sequence[np.ndarray], center: np.ndarray, tolerance: float, hiding: float) -> list[int]:
    """Indices of the payloads farther than ``OUTLIER_FACTOR * hiding * tolerance`` (relative) from ``center``."""
    bound = OUTLIER_FACTOR * hiding * tolerance
    return [i for i, dist in enumerate(relative_distances(payloads, center)) if dist > bound]


def could_bias(weights: Sequence[int], byzantine: Sequence[bool]) -> bool:
    """True when the Byzantine payloads make up at least half of the median's inputs (then they can move it)."""
    bad = sum(w for w, b in zip(weights, byzantine, strict=False) if b)
    return bad > 0 and 2 * bad >= sum(weights)


def _norm(x: np.ndarray) -> float:
    total = 0.0
    for start in range(0, x.shape[0], _BLOCK):
        chunk = x[start:start + _BLOCK]
        total += float(np.dot(chunk, chunk))
    return float(np.sqrt(total))
