"""The class-based proof of a Byzantine majority (shield_ps.phases.auto_vote.honest_bound): honest holders of one
determinism class commit one digest, so a file's digests and classes bound how many of its holders are honest."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from shield_ps.phases.auto_vote import honest_bound

HOLDERS = (0, 1, 2)


def _classes(mapping: dict[int, str]):
    return lambda worker: mapping.get(worker, "unknown")


def test_one_class_with_three_different_digests_has_at_most_one_honest_holder() -> None:
    assert honest_bound({0: b"a", 1: b"b", 2: b"c"}, HOLDERS, _classes({0: "A", 1: "A", 2: "A"})) == 1


def test_two_classes_may_each_hold_an_honest_replica() -> None:
    assert honest_bound({0: b"a", 1: b"b", 2: b"c"}, HOLDERS, _classes({0: "A", 1: "B", 2: "A"})) == 2


def test_a_holder_of_no_known_class_or_with_no_digest_may_be_honest() -> None:
    one_class = _classes({0: "A", 1: "A", 2: "A"})
    assert honest_bound({0: b"a", 1: b"b"}, HOLDERS, one_class) == 2  # 2's digest never came
    assert honest_bound({0: b"a", 1: b"b", 2: b"c"}, HOLDERS, _classes({0: "A", 1: "A"})) == 2  # 2: unknown class


def test_an_agreeing_pair_within_a_class_counts_twice() -> None:
    assert honest_bound({0: b"a", 1: b"a", 2: b"c"}, HOLDERS, _classes({0: "A", 1: "A", 2: "A"})) == 2


@st.composite
def _files(draw: st.DrawFn) -> tuple[dict[int, bytes], dict[int, str], set[int]]:
    """r = 5 holders: each honest or not, of class A, B or unknown; honest holders of one class commit their class's
    digest (or nothing, when slow); Byzantine holders send anything, claiming any class."""
    honest = {w for w in range(5) if draw(st.booleans())}
    classes = {w: c for w in range(5) if (c := draw(st.sampled_from(["A", "B", "unknown"]))) != "unknown"}
    replies: dict[int, bytes] = {}
    for w in range(5):
        if draw(st.booleans()) and w in honest:
            continue  # an honest holder whose digest did not come
        if w in honest:
            replies[w] = f"class-{classes.get(w, f'own-{w}')}".encode()
        else:
            replies[w] = draw(st.sampled_from([b"class-A", b"class-B", b"x", b"y", f"own-{w}".encode()]))
    return replies, classes, honest


File = tuple[dict[int, bytes], dict[int, str], set[int]]


@given(_files())
def test_the_bound_never_undercounts_the_honest_holders(file: File) -> None:
    """Soundness: whatever the Byzantine holders send or claim, the honest holders are never more than the bound
    (else a file with an honest majority could be dropped as proven Byzantine and lower s unsoundly)."""
    replies, classes, honest = file
    assert honest_bound(replies, range(5), _classes(classes)) >= len(honest)


def test_holders_of_no_known_class_are_not_one_class() -> None:
    """Two holders of unknown class may be of two classes, each honest: they are not grouped by digest."""
    assert honest_bound({0: b"a", 1: b"b", 2: b"c"}, HOLDERS, _classes({0: "A"})) == 3
