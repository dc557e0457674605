"""The dataset a run reads, chosen by :func:`shield_model.zoo.sources.locate` (the one place that decides it), with
its errors turned into the PS's :class:`~shield_ps.errors.ConfigError` (one line, exit status 2)."""
from __future__ import annotations

from pathlib import Path

from shield_ps.errors import ConfigError


def locate_data(dataset: str, data_dir: str | Path | None, download: bool = False):  # -> DataLocation
    """Where ``dataset`` is read from: ``data_dir`` when given (it must hold the dataset), else the cache, else
    (``download``) fetched into the cache, else the embedded copy; :class:`ConfigError` saying what to pass."""
    from shield_model.errors import ShieldModelError
    from shield_model.zoo.sources import locate

    try:
        return locate(dataset, data_dir, download=download)
    except ShieldModelError as exc:
        raise ConfigError(str(exc)) from None
