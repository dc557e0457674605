"""The packages are layers and every tie between them points one way (docs: /README.md's package table):

    shield_ps, shield_agent   (neither imports the other)
    shield_model              (the model library both use)
    byzantine, wire           (pure math; the protocol)

Nothing imports shield_ops. Every import of every module is read from its source (ast), including the ones inside
functions and under ``TYPE_CHECKING``, so a lazy import cannot hide a tie.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("wire", "byzantine", "shield_model", "shield_agent", "shield_ps", "shield_ops")

#: Packages of this project each package may not import.
FORBIDDEN = {
    "wire": {"byzantine", "shield_model", "shield_agent", "shield_ps", "shield_ops"},
    "byzantine": {"wire", "shield_model", "shield_agent", "shield_ps", "shield_ops"},
    "shield_model": {"shield_agent", "shield_ps", "shield_ops"},
    "shield_agent": {"shield_ps", "shield_ops"},
    "shield_ps": {"shield_agent", "shield_ops"},
}
#: The Byzantine math is pure: the standard library without sockets or an event loop, numpy, scipy, blake3.
BYZANTINE_THIRD_PARTY = {"numpy", "scipy", "blake3"}
BYZANTINE_STDLIB_FORBIDDEN = {"asyncio", "socket", "selectors", "ssl", "subprocess", "multiprocessing"}


def imported_modules(source: str, module: str) -> set[str]:
    """The top-level names of every module ``source`` (the text of module ``module``) imports, at any depth."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: stays inside this module's own top-level package
                found.add(module.split(".")[0])
            elif node.module is not None:
                found.add(node.module.split(".")[0])
    found.discard("__future__")
    return found


def modules_of(package: str) -> dict[str, str]:
    """Every module of ``package`` under the repository root, by dotted name, with its source."""
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        dotted = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        out[dotted] = path.read_text(encoding="utf-8")
    return out


def violations(package: str, sources: dict[str, str]) -> list[str]:
    """``module imports name`` for each import of ``sources`` (modules of ``package``) its layer forbids."""
    out = []
    for module, source in sources.items():
        for name in sorted(imported_modules(source, module)):
            if name in FORBIDDEN.get(package, set()):
                out.append(f"{module} imports {name}")
            elif package == "byzantine" and name != "byzantine" and (
                    name in BYZANTINE_STDLIB_FORBIDDEN
                    or (name not in sys.stdlib_module_names and name not in BYZANTINE_THIRD_PARTY)):
                out.append(f"{module} imports {name} (the Byzantine math is pure numpy/scipy)")
    return out


@pytest.mark.parametrize("package", [p for p in PACKAGES if p in FORBIDDEN])
def test_every_tie_between_packages_points_down(package: str) -> None:
    sources = modules_of(package)
    assert sources, f"no modules found under {ROOT / package}"
    assert violations(package, sources) == []


@pytest.mark.parametrize("package, line, expected", [
    ("shield_agent", "from shield_ps.errors import ConfigError", "shield_agent.x imports shield_ps"),
    ("shield_ps", "def f():\n    import shield_agent.client", "shield_ps.x imports shield_agent"),
    ("shield_model", "if TYPE_CHECKING:\n    from shield_ps import config", "shield_model.x imports shield_ps"),
    ("wire", "import numpy, byzantine.vote", "wire.x imports byzantine"),
    ("byzantine", "import asyncio", "byzantine.x imports asyncio (the Byzantine math is pure numpy/scipy)"),
    ("byzantine", "import torch", "byzantine.x imports torch (the Byzantine math is pure numpy/scipy)"),
    ("byzantine", "from wire import digest_bytes", "byzantine.x imports wire"),
    ("shield_ps", "from shield_ops import cli", "shield_ps.x imports shield_ops"),
])
def test_a_forbidden_import_is_found(package: str, line: str, expected: str) -> None:
    assert violations(package, {f"{package}.x": line}) == [expected]


def test_allowed_imports_pass() -> None:
    assert violations("byzantine", {"byzantine.x": "import numpy\nfrom scipy import optimize\nfrom . import vote\n"
                                                   "import blake3, math, functools"}) == []
    assert violations("shield_agent", {"shield_agent.x": "from shield_model.zoo import names\nimport byzantine"}) == []
