"""Your own network and dataset: ``--network MODULE:CALLABLE`` and ``--dataset MODULE:CALLABLE`` (docs/your-model.md).

A plug-in is one more kind of entry beside the built-in registries (:data:`shield_model.zoo.models.NETWORKS`,
:data:`shield_model.zoo.datasets.DATASETS`): :func:`shield_model.zoo.names.network_choice` turns a ``--network``
value into either a :class:`~shield_model.zoo.names.Network` or a :class:`PluginSpec`, and each consumer asks the
entry it got. Nothing executable travels on the wire: the PS and every agent import ``MODULE`` from their own
installation (the current directory is searched last, as uvicorn does for ``app:app``), and a job names the plug-in
by its :class:`PluginIdentity`, a digest of the module's source and the callable's name.

The contract:

- a network CALLABLE takes the number of classes and returns a ``torch.nn.Module`` whose forward pass maps a batch of
  samples to logits of shape ``(n, num_classes)``;
- a dataset CALLABLE takes the data directory (a :class:`pathlib.Path`) and returns ``(train, test)``, two map-style
  torch datasets (``len`` and ``[i]``) of ``(tensor, int)`` pairs, every sample tensor of one shape.

This module only parses, imports and digests (torch-free until a plug-in imports it); building and checking happen
in :mod:`shield_model.zoo.plugin_data` and :mod:`shield_model.zoo.models`.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shield_model.errors import PluginError

#: ``MODULE:CALLABLE``: a dotted module path and an attribute name, each a Python identifier.
_PATTERN = re.compile(r"^([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):([A-Za-z_]\w*)$", re.ASCII)
#: the digest's domain (bump when what is digested changes)
_DIGEST_CONTEXT = b"shield-plugin-v1\0"
#: hex characters of a digest (SHA-256)
DIGEST_HEX = 64
MAX_SPEC_CHARS = 200


@dataclass(frozen=True)
class PluginSpec:
    """``MODULE:CALLABLE`` as given on the command line."""

    module: str
    name: str

    @property
    def text(self) -> str:
        return f"{self.module}:{self.name}"

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class PluginIdentity:
    """What a job knows a plug-in by: its spec and the digest of its module's source and the callable's name."""

    spec: PluginSpec
    digest: str  # hex, DIGEST_HEX characters

    @property
    def short(self) -> str:
        """The first 16 hex characters, for messages."""
        return self.digest[:16]


def is_plugin(text: Any) -> bool:
    """Whether a ``--network``/``--dataset`` value names a plug-in (it has a colon) rather than a built-in."""
    return isinstance(text, str) and ":" in text


def parse_plugin(text: str, flag: str = "--network") -> PluginSpec:
    """The :class:`PluginSpec` of ``MODULE:CALLABLE``; :class:`PluginError` saying what is allowed otherwise."""
    found = _PATTERN.match(text) if len(text) <= MAX_SPEC_CHARS else None
    if found is None:
        raise PluginError(f"{flag} {text!r}: expected MODULE:CALLABLE, a dotted module path and a function or class "
                          "name (e.g. examples.waveforms:WaveNet), at most 200 characters")
    return PluginSpec(found.group(1), found.group(2))


def load_callable(spec: PluginSpec, flag: str = "--network") -> Callable[..., Any]:
    """Import ``spec.module`` and return its ``spec.name``; :class:`PluginError` (one line) when the module is not
    importable here, its import fails, or the attribute is missing or not callable."""
    module = _import(spec, flag)
    target = getattr(module, spec.name, None)
    if target is None:
        raise PluginError(f"{flag} {spec}: module {spec.module} ({module.__file__}) has no attribute {spec.name!r}")
    if not callable(target):
        raise PluginError(f"{flag} {spec}: {spec.name} is a value of type {type(target).__name__}, not a function or "
                          "class")
    return target


def identify(spec: PluginSpec, flag: str = "--network") -> PluginIdentity:
    """The plug-in's identity: a SHA-256 over its module's source (every ``.py`` file of a package) and the callable's
    name. Imports the module (and checks the callable) first, so it digests the code this process runs."""
    load_callable(spec, flag)
    return PluginIdentity(spec, _source_digest(spec.module, spec.name))


@functools.lru_cache(maxsize=16)
def _source_digest(module_name: str, name: str) -> str:
    """Digest of the imported module's source files (cached: the code a process runs does not change under it)."""
    hasher = hashlib.sha256(_DIGEST_CONTEXT)
    for relative, content in _source_files(sys.modules[module_name]):
        hasher.update(relative.encode() + b"\0" + len(content).to_bytes(8, "little") + content)
    hasher.update(b"\0callable\0" + name.encode())
    return hasher.hexdigest()


def _source_files(module: Any) -> list[tuple[str, bytes]]:
    """(path relative to the package's directory, bytes) of the files that make up ``module``: its own file (with an
    empty path: a module's identity is its code, not its file name), or every ``.py`` file under a package's
    directory (sorted, caches skipped)."""
    path = Path(module.__file__)
    if not hasattr(module, "__path__"):
        return [("", path.read_bytes())]
    root = path.parent
    files = sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
    return [(p.relative_to(root).as_posix(), p.read_bytes()) for p in files]


def _import(spec: PluginSpec, flag: str) -> Any:
    _search_current_directory()
    try:
        module = importlib.import_module(spec.module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and spec.module.startswith(exc.name) and spec.module[len(exc.name):][:1] in ("", "."):
            raise PluginError(f"{flag} {spec}: no module named {spec.module!r} here (install it on this machine, "
                              "put its folder on PYTHONPATH, or run from the folder that holds it)") from None
        raise PluginError(f"{flag} {spec}: importing {spec.module} failed: {_one_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 (any error of the user's module is reported in one line)
        raise PluginError(f"{flag} {spec}: importing {spec.module} failed: {_one_line(exc)}") from None
    if getattr(module, "__file__", None) is None:
        raise PluginError(f"{flag} {spec}: {spec.module} is a namespace package without code; name the module that "
                          "defines the callable")
    return module


def _search_current_directory() -> None:
    """Let a plug-in in the current directory be found without PYTHONPATH (after every installed module)."""
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.append(here)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:300]


def describe_call_error(spec: PluginSpec, flag: str, what: str, exc: BaseException) -> PluginError:
    """A :class:`PluginError` for an exception raised by the user's callable."""
    return PluginError(f"{flag} {spec}: {what} raised {_one_line(exc)}")
