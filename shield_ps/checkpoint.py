"""Atomic checkpoints of the PS state, readable without pickle.

A checkpoint is one ``.npz`` file holding plain arrays only: ``params``, ``velocity``, optional named arrays (e.g.
centered clipping's centre, stored as ``x_<name>``) and ``meta`` (UTF-8 JSON bytes with the step, RNG state, the
resolved configuration, its hash, the run's tallies, and a BLAKE3 digest of the arrays). It is
written to a temporary name in the same directory, fsynced, renamed over the final name and the directory fsynced,
so a crash at any moment leaves either the old or the new checkpoint, never a torn one. Loading uses
``allow_pickle=False``. A write that fails (a full disk, a read-only directory) is never silent:
:class:`CheckpointLedger` turns it into a ``checkpoint`` event with the error, a log line and a field of the summary.
"""
from __future__ import annotations

import concurrent.futures
import io
import json
import logging
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shield_ps.errors import CheckpointError
from wire.digest import digest_chunks

log = logging.getLogger(__name__)

_NAME = re.compile(r"^step-(\d{8})\.npz$")


@dataclass(frozen=True)
class Checkpoint:
    """The PS state after ``step`` completed steps."""

    step: int
    params: np.ndarray
    velocity: np.ndarray
    config: dict[str, Any]
    config_hash: str
    rng_state: dict[str, Any]
    extra: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


def _arrays_digest(params: np.ndarray, velocity: np.ndarray, arrays: dict[str, np.ndarray] | None = None) -> str:
    arrays = arrays or {}
    named = [np.ascontiguousarray(arrays[k]) for k in sorted(arrays)]
    return digest_chunks([a.data.cast("B") for a in (params, velocity, *named)]).hex()


def checkpoint_path(directory: Path, step: int) -> Path:
    return directory / f"step-{step:08d}.npz"


def save_checkpoint(directory: Path, checkpoint: Checkpoint, keep: int = 3) -> Path:
    """Write ``checkpoint`` atomically under ``directory`` and keep only the newest ``keep`` files."""
    directory.mkdir(parents=True, exist_ok=True)
    meta = {
        "step": checkpoint.step,
        "config": checkpoint.config,
        "config_hash": checkpoint.config_hash,
        "rng_state": checkpoint.rng_state,
        "extra": checkpoint.extra,
        "digest": _arrays_digest(checkpoint.params, checkpoint.velocity, checkpoint.arrays),
        "arrays": sorted(checkpoint.arrays),
    }
    meta_bytes = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8)
    final = checkpoint_path(directory, checkpoint.step)
    fd, tmp_name = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            named = {f"x_{k}": v for k, v in checkpoint.arrays.items()}
            # numpy's stub types **kwds as if a key could be allow_pickle (its keyword); ours are x_NAME
            np.savez(handle, params=checkpoint.params, velocity=checkpoint.velocity, meta=meta_bytes,
                     **named)  # type: ignore[arg-type]
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, final)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    for old in list_checkpoints(directory)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return final


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoint files under ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if _NAME.match(p.name))


def load_checkpoint(path: Path) -> Checkpoint:
    """Load and verify one checkpoint; raises :class:`CheckpointError` if it is unreadable or corrupt."""
    try:
        with np.load(path, allow_pickle=False) as data:
            params = np.ascontiguousarray(data["params"], dtype=np.float32)
            velocity = np.ascontiguousarray(data["velocity"], dtype=np.float32)
            meta = json.loads(bytes(data["meta"]).decode())
            arrays = {str(k): np.ascontiguousarray(data[f"x_{k}"]) for k in meta.get("arrays", [])}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, io.UnsupportedOperation, EOFError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if params.ndim != 1 or params.shape != velocity.shape:
        raise CheckpointError(f"checkpoint {path} has mismatched arrays {params.shape} / {velocity.shape}")
    if meta.get("digest") != _arrays_digest(params, velocity, arrays):
        raise CheckpointError(f"checkpoint {path} fails its digest check (corrupt)")
    return Checkpoint(
        step=int(meta["step"]), params=params, velocity=velocity, config=meta["config"],
        config_hash=meta["config_hash"], rng_state=meta.get("rng_state", {}), extra=meta.get("extra", {}),
        arrays=arrays,
    )


def load_latest(directory: Path) -> Checkpoint | None:
    """The newest checkpoint under ``directory`` that loads and verifies; corrupt ones are skipped with a warning."""
    for path in reversed(list_checkpoints(directory)):
        try:
            return load_checkpoint(path)
        except CheckpointError as exc:
            log.warning("skipping checkpoint: %s", exc)
    return None


class CheckpointLedger:
    """Writes checkpoints in a background pool and reports every outcome: a ``checkpoint`` event (ok or the error),
    an error log line for a failure, and the list of failures for the summary. Callbacks run on the event loop."""

    def __init__(self, sink: Any) -> None:
        self._sink = sink
        self.errors: list[dict[str, Any]] = []
        self.last_step: int | None = None  # the newest step whose checkpoint is safely on disk

    def submit(self, pool: concurrent.futures.Executor, directory: Path, checkpoint: Checkpoint,
               keep: int) -> concurrent.futures.Future[Any]:
        import asyncio

        loop = asyncio.get_running_loop()
        future = pool.submit(save_checkpoint, directory, checkpoint, keep)
        future.add_done_callback(lambda fut: loop.call_soon_threadsafe(self._done, checkpoint.step, fut))
        return future

    def _done(self, step: int, future: concurrent.futures.Future[Any]) -> None:
        try:
            path = future.result()
        except Exception as exc:  # OSError (disk full, permissions) and anything else: never silent
            error = f"{type(exc).__name__}: {exc}"
            log.error("checkpoint at step %d was NOT written: %s", step, error)
            self.errors.append({"step": step, "error": error})
            self._sink.emit("checkpoint", step=step, ok=False, error=error)
            return
        self.last_step = step if self.last_step is None else max(self.last_step, step)
        self._sink.emit("checkpoint", step=step, ok=True, path=str(path))

    def final_error(self, step: int | None) -> str | None:
        """Why the checkpoint of ``step`` is not safely written (None if it is)."""
        if step is not None and self.last_step == step:
            return None
        failed = [e["error"] for e in self.errors if e["step"] == step]
        return failed[-1] if failed else f"no checkpoint of step {step} was written"
