"""What the worker slots of one agent process share: the compute threads and the dataset.

``shield-agent join --workers N`` runs N worker slots in one process. Each slot is its own authenticated connection
to the PS and owns its own :class:`~shield_model.compute.GradientComputer` (model, flat parameter storage and
gradient buffers: a model is never used by two threads at once), while the process imports torch once and loads the
dataset once (``load_dataset`` caches it per process; the images are read-only tensors shared by every slot).

The slots' files are computed by a small pool of threads. Every computation runs with the job's fixed intra-op
thread count (:func:`~shield_model.compute.configure_torch` sets it in the computing thread), so a file's gradient is
bit-identical to what a one-worker process computes: the kernels see the same inputs, the same weights and the same
thread count, whichever pool thread runs them. The pool holds ``max(1, min(N, cores // threads))`` threads, so N
slots never oversubscribe the cores with intra-op threads.
"""
from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shield_model.compute import ComputeSpec, GradientComputer

log = logging.getLogger(__name__)


def default_compute_threads(slots: int, intra_op_threads: int, cores: int | None = None) -> int:
    """Pool size for ``slots`` worker slots whose computations each use ``intra_op_threads`` torch threads."""
    cores = cores or os.cpu_count() or 1
    return max(1, min(slots, cores // max(1, intra_op_threads)))


class ComputeHost:
    """The process-wide compute pool of an agent's worker slots (created on the first JOB, shut down once)."""

    def __init__(self, slots: int, pool_threads: int | None = None) -> None:
        self.slots = slots
        self._pool_threads = pool_threads
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._build_lock = threading.Lock()
        self.threads: int | None = None

    def executor(self, intra_op_threads: int) -> concurrent.futures.ThreadPoolExecutor:
        """The compute pool, sized on first use from the job's intra-op thread count (the same for every slot:
        they all serve one PS)."""
        with self._lock:
            if self._executor is None:
                size = self._pool_threads or default_compute_threads(self.slots, intra_op_threads)
                self._executor = concurrent.futures.ThreadPoolExecutor(size, thread_name_prefix="shield-compute")
                self.threads = size
                log.info("%d worker slot(s), %d compute thread(s) of %d torch thread(s) each", self.slots, size,
                         intra_op_threads)
            return self._executor

    def build(self, spec: ComputeSpec) -> GradientComputer:
        """A slot's own GradientComputer (runs in a pool thread). Built one at a time, so the first build loads the
        dataset and every later one finds it in the per-process cache."""
        from shield_model.compute import GradientComputer

        with self._build_lock:
            return GradientComputer(spec)

    def shutdown(self) -> None:
        """Wait for running computations and stop the pool (idempotent)."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)
