"""Robust aggregators: golden values on hand-computed inputs, literal reference implementations, properties."""
from __future__ import annotations

import numpy as np
import pytest

import shield_ps
from byzantine.aggregators import Aggregator, aggregator_params, uses_byzantine_count
from byzantine.aggregators.bulyan import closest_to_median_mean
from byzantine.aggregators.network import NETWORK_MAX_ROWS
from byzantine.errors import AggregationError
from shield_ps import AGGREGATORS, aggregate

F32 = np.float32


def arr(rows: list[list[float]]) -> np.ndarray:
    return np.asarray(rows, dtype=F32)


# Five 2-D points: four inliers on a line and one outlier. Squared distances among the inliers:
# d12=82, d13=365, d14=1537, d23=101, d24=909, d34=404, so with s=1 (2 neighbours per score) the Krum scores are
# p1: 82+365=447, p2: 82+101=183, p3: 101+365=466, p4: 404+909=1313, p5: huge.
POINTS = arr([[1, 11], [2, 20], [3, 30], [5, 50], [100, -100]])


def test_names_are_the_registry_and_reexported() -> None:
    assert AGGREGATORS == tuple(a.value for a in Aggregator)
    assert shield_ps.AGGREGATORS is AGGREGATORS
    assert {"coord-median", "multi-krum", "bulyan", "geometric-median", "centered-clipping"} <= set(AGGREGATORS)
    assert uses_byzantine_count("bulyan") and not uses_byzantine_count("mean")
    assert "buckets" in aggregator_params("coord-median")


@pytest.mark.parametrize(("name", "params", "expected"), [
    ("mean", {}, [22.2, 2.2]),
    ("coord-median", {}, [3, 20]),
    ("coord-median", {"buckets": 1}, [22.2, 2.2]),
    ("trimmed-mean", {"s": 1}, [10 / 3, 61 / 3]),
    ("trimmed-mean", {"s": 2}, [3, 20]),
    ("krum", {"s": 1}, [2, 20]),
    ("multi-krum", {"s": 1}, [2.75, 27.75]),
    ("multi-krum", {"s": 1, "m": 3}, [2, 61 / 3]),
    ("multi-krum-byzshield", {"s": 1}, [1.5, 15.5]),
])
def test_golden(name: str, params: dict, expected: list[float]) -> None:
    out = aggregate(name, POINTS, **params)
    assert out.dtype == F32 and out.shape == (2,)
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_golden_sign_and_even_median() -> None:
    X = arr([[1, -1, 0, 2], [1, -2, 0, -1], [-1, -1, 0, 3]])
    np.testing.assert_array_equal(aggregate("sign-sgd", X), [1, -1, 0, 1])
    Y = arr([[1, 7], [4, 3], [2, 5], [10, -1]])
    np.testing.assert_array_equal(aggregate("coord-median", Y), [3, 4])


def test_golden_centered_clipping() -> None:
    # one vector (3, 4) of norm 5, tau = 1: 0 -> (0.6, 0.8) -> + (2.4, 3.2) * 1/4 = (1.2, 1.6)
    X = arr([[3, 4]])
    np.testing.assert_allclose(aggregate("centered-clipping", X, tau=1.0, iters=1), [0.6, 0.8], rtol=1e-6)
    np.testing.assert_allclose(aggregate("centered-clipping", X, tau=1.0, iters=2), [1.2, 1.6], rtol=1e-6)
    center = np.array([3, 0], dtype=F32)  # distance 4 from (3, 4): one step of tau=2 reaches (3, 2)
    np.testing.assert_allclose(aggregate("centered-clipping", X, tau=2.0, iters=1, center=center), [3, 2], rtol=1e-6)


def test_golden_bulyan_window() -> None:
    # columns are the sorted values of three coordinates; the 3 closest to the median 2, 6, -1 are
    # {0, 1, 2}, {5, 6, 7} and {-2, -1, 0}
    S = np.array([[0, 1, 2, 10, 11], [0, 5, 6, 7, 100], [-3, -2, -1, 0, 1]], dtype=F32).T.copy()
    np.testing.assert_allclose(closest_to_median_mean(S, 3), [1, 6, -1])
    np.testing.assert_allclose(closest_to_median_mean(S, 5), S.mean(axis=0), rtol=1e-6)
    ties = np.array([[0], [1], [2], [3]], dtype=F32)  # median 1.5: windows {0,1,2} and {1,2,3} tie; lower wins
    np.testing.assert_allclose(closest_to_median_mean(ties, 3), [1])


def ref_closest_to_median_mean(S: np.ndarray, beta: int) -> np.ndarray:
    """Column by column: of the windows of beta consecutive sorted values, the first whose farthest value is
    nearest the median (radii in float32, as the implementation), averaged in float64."""
    theta = len(S)
    med = np.median(S, axis=0)
    out = []
    for col, mid in zip(S.T, med, strict=False):
        radii = [max(mid - col[k], col[k + beta - 1] - mid) for k in range(theta - beta + 1)]
        k = int(np.argmin(radii))
        out.append(col[k:k + beta].astype(float).mean())
    return np.array(out)


@pytest.mark.parametrize("theta,beta", [(21, 17), (15, 5), (9, 3), (7, 7), (7, 1), (11, 4)])
def test_bulyan_window_matches_a_column_loop(theta: int, beta: int) -> None:
    # ties (values rounded to halves: the lower window must win) and +-1e6 outliers inside and outside the window
    rng = np.random.default_rng(theta * 100 + beta)
    X = rng.standard_normal((theta, 1000)).astype(F32)
    X[:, ::3] = np.round(X[:, ::3] * 2) / 2
    X[rng.integers(0, theta, 200), rng.integers(0, 1000, 200)] = F32(1e6)
    X[rng.integers(0, theta, 200), rng.integers(0, 1000, 200)] = F32(-1e6)
    S = np.sort(X, axis=0)
    np.testing.assert_allclose(closest_to_median_mean(S, beta), ref_closest_to_median_mean(S, beta),
                               rtol=1e-12, atol=1e-9)


def test_golden_geometric_median_of_a_triangle() -> None:
    # The Fermat point of (0,0), (2,0), (1, sqrt(3)) (equilateral) is its centroid; of a degenerate 1-D set,
    # the median point.
    tri = arr([[0, 0], [2, 0], [1, np.sqrt(3)]])
    np.testing.assert_allclose(aggregate("geometric-median", tri), [1, np.sqrt(3) / 3], rtol=1e-5)
    line = arr([[0, 0], [1, 0], [10, 0]])
    np.testing.assert_allclose(aggregate("geometric-median", line), [1, 0], atol=1e-3)


# ---- literal reference implementations, straight from the papers, O(n^2) loops in float64 ----

def ref_distances(X: np.ndarray) -> np.ndarray:
    n = len(X)
    return np.array([[float(np.sum((X[i].astype(float) - X[j]) ** 2)) for j in range(n)] for i in range(n)])


def ref_scores(X: np.ndarray, neighbours: int) -> np.ndarray:
    D = ref_distances(X)
    return np.array([np.sort(np.delete(D[i], i))[:neighbours].sum() for i in range(len(X))])


def ref_best(X: np.ndarray, neighbours: int, m: int) -> np.ndarray:
    """The m best Krum scores; ties to the lower total distance (then the lower index), as the implementation."""
    scores, total = ref_scores(X, neighbours), ref_distances(X).sum(axis=1)
    return np.array(sorted(range(len(X)), key=lambda i: (scores[i], total[i], i))[:m])


def ref_multi_krum(X: np.ndarray, s: int, m: int) -> np.ndarray:
    best = ref_best(X, len(X) - s - 2, m)
    return X[best].astype(float).mean(axis=0)


def ref_bulyan(X: np.ndarray, s: int) -> np.ndarray:
    left, chosen = list(range(len(X))), []
    while len(chosen) < len(X) - 2 * s:
        k = min(max(len(left) - s - 2, 1), len(left) - 1) if len(left) > 1 else 0
        pick = left[int(ref_best(X[left], k, 1)[0])] if len(left) > 1 else left[0]
        chosen.append(pick)
        left.remove(pick)
    sel = X[chosen].astype(float)
    beta = len(chosen) - 2 * s
    med = np.median(sel, axis=0)
    out = []
    for j in range(X.shape[1]):
        close = sel[np.argsort(np.abs(sel[:, j] - med[j]), kind="stable")[:beta], j]
        out.append(close.mean())
    return np.array(out)


def ref_bulyan_byzshield(X: np.ndarray, s: int) -> np.ndarray:
    theta = len(X) - s - 2
    sel = np.sort(X[ref_best(X, theta, theta)].astype(float), axis=0)
    return sel[s:theta - s].mean(axis=0)


@pytest.mark.parametrize("seed", range(4))
def test_matches_reference_implementations(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, s = 15, 3
    X = rng.standard_normal((n, 40)).astype(F32)
    X[:s] += rng.normal(0, 5, size=(s, 40)).astype(F32)
    np.testing.assert_allclose(aggregate("krum", X, s=s), ref_multi_krum(X, s, 1), rtol=1e-6)
    np.testing.assert_allclose(aggregate("multi-krum", X, s=s), ref_multi_krum(X, s, n - s), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(aggregate("multi-krum-byzshield", X, s=s), ref_multi_krum(X, s, n - s - 2),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(aggregate("bulyan", X, s=s), ref_bulyan(X, s), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(aggregate("bulyan-byzshield", X, s=s), ref_bulyan_byzshield(X, s),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(aggregate("coord-median", X), np.median(X, axis=0))
    np.testing.assert_allclose(aggregate("trimmed-mean", X, s=s), np.sort(X, axis=0)[s:n - s].mean(axis=0),
                               rtol=1e-5, atol=1e-6)


def test_sort_path_above_the_network_limit_matches_references() -> None:
    n, s = NETWORK_MAX_ROWS + 8, 4  # bulyan's theta = 32 rows take the network, bulyan-byzshield's 34 the sort
    X = np.random.default_rng(7).standard_normal((n, 30_001)).astype(F32)
    X[:s] *= 50
    assert np.array_equal(aggregate("coord-median", X), np.median(X, axis=0))
    np.testing.assert_allclose(aggregate("trimmed-mean", X, s=s), np.sort(X, axis=0)[s:n - s].mean(axis=0),
                               rtol=1e-5, atol=1e-6)
    sub = X[:, :64].copy()
    np.testing.assert_allclose(aggregate("bulyan", sub, s=s), ref_bulyan(sub, s), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(aggregate("bulyan-byzshield", sub, s=s), ref_bulyan_byzshield(sub, s),
                               rtol=1e-5, atol=1e-6)


def test_median_blocks_and_threads_match_numpy() -> None:
    rng = np.random.default_rng(5)
    for n in (24, 25):
        X = rng.standard_normal((n, 50_003)).astype(F32)  # several column blocks, a ragged last one
        np.testing.assert_array_equal(aggregate("coord-median", X, threads=2), np.median(X, axis=0))
        np.testing.assert_array_equal(aggregate("bulyan", X, s=4, threads=1), aggregate("bulyan", X, s=4, threads=3))
        np.testing.assert_allclose(aggregate("mean", X), X.astype(float).mean(axis=0), rtol=1e-5, atol=1e-7)


def test_bucketed_median_is_median_of_seeded_bucket_means() -> None:
    rng = np.random.default_rng(6)
    X = rng.standard_normal((10, 30)).astype(F32)
    groups = np.array_split(np.random.default_rng(42).permutation(10), 3)
    expected = np.median(np.stack([X[g].astype(float).mean(axis=0) for g in groups]), axis=0)
    np.testing.assert_allclose(aggregate("coord-median", X, buckets=3, seed=42), expected, rtol=1e-5)
    assert not np.array_equal(aggregate("coord-median", X, buckets=3, seed=1),
                              aggregate("coord-median", X, buckets=3, seed=2))


def test_geometric_median_agrees_with_hdmedians() -> None:
    hdmedians = pytest.importorskip("hdmedians")
    rng = np.random.default_rng(7)
    X = rng.standard_normal((12, 20)).astype(F32)
    X[:3] += 30
    ours = aggregate("geometric-median", X)
    theirs = np.asarray(hdmedians.geomedian(X.astype(np.float64), axis=0)).ravel()

    def cost(z: np.ndarray) -> float:
        return float(np.linalg.norm(X.astype(float) - z, axis=1).sum())

    np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-4)
    assert cost(ours) <= cost(theirs) * (1 + 1e-7)


# ---- properties ----

def _params(name: str, s: int = 2) -> dict:
    return {"s": s} if uses_byzantine_count(name) else {}


@pytest.mark.parametrize("name", AGGREGATORS)
def test_permutation_invariance(name: str) -> None:
    rng = np.random.default_rng(8)
    X = rng.standard_normal((13, 33)).astype(F32)
    perm = rng.permutation(13)
    np.testing.assert_allclose(aggregate(name, X[perm], **_params(name)), aggregate(name, X, **_params(name)),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", AGGREGATORS)
def test_identical_vectors_give_that_vector(name: str) -> None:
    v = np.random.default_rng(9).uniform(-0.1, 0.1, size=257).astype(F32)
    X = np.tile(v, (11, 1))
    expected = np.sign(v) if name == "sign-sgd" else v
    np.testing.assert_allclose(aggregate(name, X, **_params(name)), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["coord-median", "trimmed-mean", "krum", "multi-krum", "multi-krum-byzshield",
                                  "bulyan", "bulyan-byzshield", "geometric-median"])
def test_bounded_influence(name: str) -> None:
    rng = np.random.default_rng(10)
    n, s = 15, 3
    X = rng.standard_normal((n, 64)).astype(F32)
    X[rng.choice(n, s, replace=False)] = 1e6
    honest = X[X[:, 0] < 1e5]
    out = aggregate(name, X, **_params(name, s))
    if name == "geometric-median":  # bounded, not coordinate-wise: stays within the honest ball
        assert np.linalg.norm(out) < 2 * np.linalg.norm(honest, axis=1).max()
    else:
        assert np.all(out >= honest.min(axis=0) - 1e-6) and np.all(out <= honest.max(axis=0) + 1e-6)
    assert np.linalg.norm(aggregate("mean", X)) > 1e5  # the mean is not robust: the test can fail


# ---- errors ----

@pytest.mark.parametrize(("call", "needle"), [
    (lambda X: aggregate("median", X), "unknown aggregator 'median'"),
    (lambda X: aggregate("krum", X), "missing parameter(s) s"),
    (lambda X: aggregate("mean", X, s=1), "unknown parameter(s) s"),
    (lambda X: aggregate("krum", X, s=4), "n >= 2s+3; got n=10, s=4"),
    (lambda X: aggregate("multi-krum", X, s=1, m=11), "m=11 out of range [1, 10]"),
    (lambda X: aggregate("bulyan", X, s=2), "n >= 4s+3; got n=10, s=2"),
    (lambda X: aggregate("bulyan-byzshield", X, s=3), "n >= 3s+3; got n=10, s=3"),
    (lambda X: aggregate("trimmed-mean", X, s=5), "s=5 out of range [0, 4]"),
    (lambda X: aggregate("coord-median", X, buckets=0), "buckets=0 out of range [1, 10]"),
    (lambda X: aggregate("mean", X.astype(np.float64)), "must be float32, got float64"),
    (lambda X: aggregate("mean", X[0]), "shape (n, d), got 1 dimension(s) (7,)"),
    (lambda X: aggregate("centered-clipping", X, center=np.zeros(3, F32)), "shape (7,), got (3,)"),
    (lambda X: aggregate("geometric-median", X, tol=0), "tol must be a positive number"),
    (lambda X: aggregate("bulyan", X, s=1, threads=0), "threads must be an integer in [1, 64], got 0"),
    (lambda X: aggregate("sign-sgd", X, buckets=2, seed=-1), "seed must be a non-negative integer, got -1"),
])
def test_errors_name_the_numbers(call, needle: str) -> None:
    X = np.zeros((10, 7), dtype=F32)
    with pytest.raises(AggregationError) as err:
        call(X)
    assert needle in str(err.value)


def test_non_finite_rows_are_rejected_unless_the_caller_checked() -> None:
    X = np.ones((5, 300_000), dtype=F32)
    X[3, 200_001] = np.nan
    with pytest.raises(AggregationError, match="row 3 has a non-finite entry at column 200001"):
        aggregate("coord-median", X)
    aggregate("coord-median", X, check_finite_input=False)  # no error: the vote already excluded NaNs


def test_byzfl_cross_check() -> None:
    byzfl = pytest.importorskip("byzfl")
    rng = np.random.default_rng(11)
    X = rng.standard_normal((11, 16)).astype(F32)
    np.testing.assert_allclose(aggregate("coord-median", X), byzfl.Median()(X), rtol=1e-5)
    np.testing.assert_allclose(aggregate("trimmed-mean", X, s=2), byzfl.TrMean(f=2)(X), rtol=1e-5)
    np.testing.assert_allclose(aggregate("krum", X, s=2), byzfl.Krum(f=2)(X), rtol=1e-5)


def test_memory_stays_far_below_three_copies_of_the_input() -> None:
    """numpy reports its buffers to tracemalloc: every aggregator's peak extra memory must stay under one copy of
    X (the issue allows three), so blocks really are block-sized."""
    import tracemalloc

    X = np.random.default_rng(12).standard_normal((25, 100_000)).astype(F32)
    for name in AGGREGATORS:
        tracemalloc.start()
        try:
            aggregate(name, X, **_params(name, 5))
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < X.nbytes, f"{name} peaked at {peak / X.nbytes:.2f} copies of X"
    tracemalloc.start()
    try:
        aggregate("coord-median", X, buckets=5)  # holds the (5, d) bucket means: 0.2 copies
        assert tracemalloc.get_traced_memory()[1] < 0.5 * X.nbytes
    finally:
        tracemalloc.stop()


def test_bucketed_sign_sgd_is_the_two_stage_vote() -> None:
    X = np.random.default_rng(13).standard_normal((9, 40)).astype(F32)
    groups = np.array_split(np.random.default_rng(3).permutation(9), 3)
    expected = np.sign(sum(np.sign(np.sign(X[g]).sum(axis=0)) for g in groups))
    np.testing.assert_array_equal(aggregate("sign-sgd", X, buckets=3, seed=3), expected)


def test_bucketed_sign_sgd_votes_signs_not_raw_sums() -> None:
    """The original's workers send sign(g), so a bucket votes sign(sum of signs): one large entry cannot outvote two
    small ones. One bucket of three rows: raw sum 10 - 1 - 1 = 8 > 0, signs 1 - 1 - 1 = -1 < 0."""
    X = arr([[10, -3], [-1, 2], [-1, 2]])
    np.testing.assert_array_equal(aggregate("sign-sgd", X, buckets=1, seed=0), [-1, 1])
