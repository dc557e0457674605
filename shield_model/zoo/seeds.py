"""Seeds: every random draw of a file's computation is a pure function of the job seed, the step and the file.

The built-in datasets augment from an explicit numpy Generator (:func:`seeded_rng`). A plug-in's dataset and model
may draw from the process-wide generators instead (``torch``'s, ``numpy.random``'s, ``random``'s): a random crop in
``__getitem__``, dropout in ``forward``. :func:`seeded_globals` seeds all three from the file's words for the length
of one block and restores them after, under one process-wide lock, so slots computing in parallel threads never see
each other's draws. :class:`SeededForward` runs a model's forward pass that way only when its first pass showed it
draws from them (dropout), so models that do not (every built-in) keep computing in parallel without the lock.
"""
from __future__ import annotations

import contextlib
import random
import threading
from collections.abc import Callable, Iterator
from typing import Any, cast

import numpy as np

#: Held while the process-wide generators are seeded for one block (and while a model's weights are drawn).
RNG_LOCK = threading.RLock()


def seeded_rng(*words: int) -> np.random.Generator:
    """A numpy Generator that is a pure function of the non-negative integers ``words``."""
    return np.random.default_rng(np.random.SeedSequence(list(words)))


def seed_of(*words: int) -> int:
    """A 63-bit integer seed that is a pure function of the non-negative integers ``words``."""
    return int(np.random.SeedSequence(list(words)).generate_state(2, np.uint32).view(np.uint64)[0] >> np.uint64(1))


class _Draws:
    """Whether the block drew from any process-wide generator (set when the block ends)."""

    drew: bool = False


@contextlib.contextmanager
def seeded_globals(seed: int, device: Any = None) -> Iterator[_Draws]:
    """Seed torch's (CPU, and ``device``'s when it is a GPU), numpy's legacy and Python's global generators with
    ``seed`` for the block, then restore them; yields an object whose ``drew`` tells afterwards whether the block drew
    from any of them. Blocks run one at a time in the process (:data:`RNG_LOCK`)."""
    import torch

    cuda = device is not None and getattr(device, "type", "cpu") == "cuda"
    with RNG_LOCK, torch.random.fork_rng(devices=[device] if cuda else []):
        python_state, numpy_state = random.getstate(), np.random.get_state()
        try:
            torch.default_generator.manual_seed(seed)  # (torch.manual_seed also queues a lazy seed of every GPU)
            if cuda:
                torch.cuda.default_generators[device.index if device.index is not None
                                              else torch.cuda.current_device()].manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % (1 << 32))
            before = _states(device if cuda else None)
            draws = _Draws()
            yield draws
            draws.drew = _states(device if cuda else None) != before
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def _states(device: Any) -> tuple[Any, ...]:
    """The three (or four) generators' full states, comparable with ``==``."""
    import torch

    legacy = cast("tuple[str, np.ndarray, int, int, float]", np.random.get_state())  # legacy=True: the tuple form
    _, keys, position, has_gauss, gauss = legacy
    states = [torch.get_rng_state().numpy().tobytes(), keys.tobytes(), position, has_gauss, gauss, random.getstate()]
    if device is not None:
        states.append(torch.cuda.get_rng_state(device).numpy().tobytes())
    return tuple(states)


class SeededForward:
    """``model(x)`` with the process-wide generators seeded from the words of each call (:func:`seeded_globals`), so
    dropout and other random layers draw the same numbers on every replica of a file. After the first call, a model
    that drew nothing runs without seeding or locking (a model that draws only on some inputs must draw on its first
    one: see docs/your-model.md)."""

    def __init__(self, model: Callable[[Any], Any], device: Any = None) -> None:
        self.model, self.device = model, device
        self.draws: bool | None = None  # unknown until the first call

    def __call__(self, x: Any, *words: int) -> Any:
        if self.draws is False:
            return self.model(x)
        with seeded_globals(seed_of(*words), self.device) as probe:
            out = self.model(x)
        if self.draws is None:
            self.draws = probe.drew
        return out
