"""The step's buffers, one owner for every vector the phases share: the (f, d) rows and the spare vectors.

``rows[file]`` receives the winning payload of ``file`` (the fetch copies a verified payload into it, a split file's
group median is written into it, the tolerant vote copies its winner into it), the attack simulation rewrites the
rows in place, and the aggregation reads the rows of the files won, moved to the front (:meth:`StepBuffers.compact`).

*Spare* vectors are the fetch's landing buffers (each attempt's payload lands in one and only the winner is copied
into its row, so a loser draining in the background never touches a row) and the split files' payload buffers. A
phase borrows one (:meth:`StepBuffers.borrow`) and gives it back when done (:meth:`StepBuffers.give_back`); one that
a cancelled read or copy may still write into this step is given back by :meth:`StepBuffers.quarantine` instead, and
is lent again only from the next step on (:meth:`StepBuffers.begin_step`). A fresh vector of a large model costs a
page fault per 4 KiB (../shared/ARCHITECTURE.md: ~1.6 GB/s against 13 GB/s into a reused one), so buffers are reused
across steps; what a step of many hedges took beyond ``keep`` spares is let go at the next step, so memory does not
grow across steps.
"""
from __future__ import annotations

import numpy as np

#: Spare vectors kept across steps beyond one per file: 4 for the fetch's hedges that receive, 12 for the split
#: files' payloads (the two pools these replace kept f + 4 and 12).
SPARES_OVER_F = 16


class StepBuffers:
    """The (f, d) float32 rows of one job and its spare d-vectors (borrowed and given back)."""

    def __init__(self, f: int, d: int, *, keep: int | None = None) -> None:
        self.rows = np.empty((f, d), dtype=np.float32)
        self.f, self.d = f, d
        self.keep = f + SPARES_OVER_F if keep is None else keep
        self._spares: list[np.ndarray] = []  # free now
        self._quarantine: list[np.ndarray] = []  # free from the next step on
        self._lent: dict[int, np.ndarray] = {}  # id -> vector, borrowed and not given back yet

    @property
    def nbytes(self) -> int:
        """Bytes of one vector."""
        return self.d * 4

    def row(self, file: int) -> np.ndarray:
        """``file``'s row (a view: writing into it writes the row)."""
        return self.rows[file]

    def put(self, file: int, vector: np.ndarray) -> None:
        """Copy ``vector`` (a winner) into ``file``'s row."""
        np.copyto(self.rows[file], vector)

    def compact(self, won: list[int]) -> np.ndarray:
        """Move the rows of ``won`` (ascending files) to the front, in place; the first ``len(won)`` rows (a view),
        what the aggregator reads. The other rows are left as they are."""
        for position, file in enumerate(won):
            if position != file:
                self.rows[position] = self.rows[file]
        return self.rows[:len(won)]

    # ---- spare vectors ------------------------------------------------------------------------------------------
    def borrow(self) -> np.ndarray:
        """A spare d-vector, not lent to anyone else until it is given back (its contents are whatever was there)."""
        vector = self._spares.pop() if self._spares else np.empty(self.d, dtype=np.float32)
        self._lent[id(vector)] = vector
        return vector

    def give_back(self, vector: np.ndarray) -> None:
        """``vector`` (borrowed) is free again now."""
        self._spares.append(self._return(vector))

    def quarantine(self, vector: np.ndarray) -> None:
        """``vector`` (borrowed) is free from the next step on: a cancelled read or copy may still write into it."""
        self._quarantine.append(self._return(vector))

    def begin_step(self) -> None:
        """A new step: the quarantined vectors are free again, and spares beyond ``keep`` are let go."""
        self._spares.extend(self._quarantine)
        self._quarantine.clear()
        del self._spares[self.keep:]

    @property
    def spares(self) -> int:
        """Spare vectors free now."""
        return len(self._spares)

    @property
    def lent(self) -> int:
        """Spare vectors borrowed and not given back."""
        return len(self._lent)

    def _return(self, vector: np.ndarray) -> np.ndarray:
        if self._lent.pop(id(vector), None) is not vector:
            raise ValueError("a vector given back that was not lent (or was given back twice)")
        return vector
