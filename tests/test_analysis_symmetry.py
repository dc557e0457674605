"""Symmetry breaking: every automorphism is real, and the prefix test never rejects the smallest set of an orbit."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from byzantine.placement import Scheme, build_placement
from byzantine.symmetry import PrefixFilter, automorphisms, is_automorphism, orbit_minimal_prefix
from byzantine.worst_case import distorted

CONFIGS = [("mols", 15, 3, None), ("mols", 35, 5, None), ("rama_one", 21, 3, None), ("rama_two", 25, 5, None),
           ("rama_two", 25, 5, 10)]


@pytest.mark.parametrize("scheme,K,r,m", CONFIGS)
def test_every_automorphism_preserves_the_file_holder_sets(scheme: str, K: int, r: int, m: int | None) -> None:
    p = build_placement(scheme, K, r, m)
    group = automorphisms(p)
    assert (group[0] == np.arange(K)).all() and len(group) > 1
    assert len({tuple(g) for g in group}) == len(group)
    for g in group:
        assert sorted(g.tolist()) == list(range(K))
        assert is_automorphism(p, g)


def orbits(group: np.ndarray) -> list[set[int]]:
    return sorted({frozenset(group[:, w].tolist()) for w in range(group.shape[1])}, key=min)  # type: ignore


def test_orbit_structure() -> None:
    """The affine maps are transitive on MOLS K=15 workers; for K=35, r=5 the five directions of AG(2, 7) split
    into orbits of 3 and 2 classes under the maps that keep the direction set, so workers split 21 + 14."""
    assert [len(o) for o in orbits(automorphisms(build_placement("mols", 15, 3)))] == [15]
    assert sorted(len(o) for o in orbits(automorphisms(build_placement("mols", 35, 5)))) == [14, 21]


def test_schemes_without_coordinates_get_the_identity() -> None:
    assert automorphisms(build_placement("detox", 9, 3)).shape == (1, 9)
    p = build_placement("mols", 15, 3)
    shuffled = dataclasses.replace(p, worker_files=p.worker_files[1:] + p.worker_files[:1],
                                   file_workers=tuple(tuple(sorted((w - 1) % 15 for w in ws)) for ws in p.file_workers))
    group = automorphisms(shuffled)
    assert all(is_automorphism(shuffled, g) for g in group), "a relabelled placement is still checked, never trusted"
    odd = dataclasses.replace(p, scheme=Scheme.RAMA_TWO)
    assert all(is_automorphism(odd, g) for g in automorphisms(odd))


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(CONFIGS), st.data())
def test_smallest_set_of_an_orbit_passes_every_prefix(config: tuple, data: st.DataObject) -> None:
    p = build_placement(*config)
    group = automorphisms(p)
    q = data.draw(st.integers(1, 8))
    chosen = data.draw(st.lists(st.integers(0, p.K - 1), min_size=q, max_size=q, unique=True))
    images = sorted(tuple(sorted(g[chosen].tolist())) for g in group)
    smallest = np.array(images[0])
    value = distorted(p, chosen)
    assert all(distorted(p, image) == value for image in images[:: max(1, len(images) // 20)])
    for k in range(1, q + 1):
        assert orbit_minimal_prefix(group, smallest[:k])
    if images[0] != tuple(sorted(chosen)):
        assert not orbit_minimal_prefix(group, np.array(sorted(chosen)))


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(CONFIGS), st.data())
def test_incremental_bitset_filter_agrees_with_the_sorting_test(config: tuple, data: st.DataObject) -> None:
    p = build_placement(*config)
    group = automorphisms(p)
    flt = PrefixFilter(group)
    chosen = sorted(data.draw(st.lists(st.integers(0, p.K - 1), min_size=1, max_size=10, unique=True)))
    masks, prefix_mask = flt.empty(), 0
    for k, w in enumerate(chosen):
        masks, prefix_mask = flt.extend(masks, w), prefix_mask | (1 << w)
        assert flt.minimal(masks, prefix_mask) == orbit_minimal_prefix(group, np.array(chosen[:k + 1]))
