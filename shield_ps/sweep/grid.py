"""A sweep grid: schemes x aggregators x attacks x q x seeds, each point one ``shield-ps serve`` run.

The grid comes from a preset (:data:`PRESETS`, keyed by :class:`Preset`), a TOML file, flags, or a preset
overridden by the other two. Every point is checked with the same resolution ``serve`` uses
(:func:`shield_ps.job.resolve_job`), so a point that cannot run (e.g. Bulyan's n >= 4s+3 with DETOX's five groups)
is reported as *infeasible* with the reason instead of failing the sweep.
"""
from __future__ import annotations

import dataclasses
import enum
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shield_ps.byzantine.aggregators import Aggregator
from shield_ps.byzantine.attacks import Attack
from shield_ps.byzantine.placement import Scheme
from shield_ps.config import ServeConfig
from shield_ps.errors import SweepError

NO_ATTACK = "none"
#: The schemes a sweep compares (the issue's grid; ``maj_vote`` is DETOX's placement with a plain mean).
SWEEP_SCHEMES: tuple[Scheme, ...] = (Scheme.BASELINE, Scheme.DETOX, Scheme.MOLS, Scheme.RAMA_ONE, Scheme.RAMA_TWO)


@dataclass(frozen=True)
class Grid:
    """The axes of a sweep and the settings every run shares. ``replication`` applies to every scheme except the
    baseline (r = 1); ``workers`` is K for all of them, so the schemes are compared at the same cluster size."""

    schemes: tuple[Scheme, ...] = (Scheme.BASELINE, Scheme.DETOX, Scheme.MOLS)
    aggregators: tuple[Aggregator, ...] = (Aggregator.COORD_MEDIAN,)
    attacks: tuple[str, ...] = (Attack.ALIE.value,)
    byzantine: tuple[int, ...] = (2,)
    seeds: tuple[int, ...] = (0,)
    workers: int = 15
    replication: int = 3
    rama_m: int | None = None
    network: str = "LeNet"
    dataset: str = "MNIST"
    batch_size: int | None = None
    lr: float = 0.01
    momentum: float = 0.9
    gamma: float = 1.0
    lr_step: int = 1000
    max_steps: int = 100
    eval_freq: int = 25
    alie_z: str = "1.0"
    byzantine_gen: str = "worst"

    def runs(self) -> list["RunSpec"]:
        """Every point of the grid, in a fixed order (q, aggregator, attack, seed, then scheme)."""
        return [RunSpec(self, scheme, aggregator, attack, q, seed)
                for q in self.byzantine for aggregator in self.aggregators for attack in self.attacks
                for seed in self.seeds for scheme in self.schemes]

    def replace(self, **changes: Any) -> "Grid":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class RunSpec:
    """One point of the grid."""

    grid: Grid
    scheme: Scheme
    aggregator: Aggregator
    attack: str
    q: int
    seed: int

    @property
    def replication(self) -> int:
        return 1 if self.scheme is Scheme.BASELINE else self.grid.replication

    @property
    def name(self) -> str:
        """The run's directory name, unique within the grid."""
        return f"{self.scheme.value}-{self.aggregator.value}-{self.attack}-q{self.q}-seed{self.seed}"

    def config(self, train_dir: str = "runs/sweep", data_dir: str | None = None) -> ServeConfig:
        """The :class:`ServeConfig` that ``serve`` would resolve from :meth:`serve_args` (for checking)."""
        g = self.grid
        return ServeConfig(
            scheme=self.scheme.value, workers=g.workers, replication=self.replication,
            rama_m=g.rama_m if self.scheme in (Scheme.RAMA_ONE, Scheme.RAMA_TWO) else None,
            network=g.network, dataset=g.dataset, data_dir=data_dir, batch_size=g.batch_size, lr=g.lr,
            momentum=g.momentum, gamma=g.gamma, lr_step=g.lr_step, max_steps=g.max_steps, eval_freq=g.eval_freq,
            train_dir=train_dir, aggregator=self.aggregator.value, byzantine=self.q, attack=self.attack,
            alie_z=g.alie_z, byzantine_gen=g.byzantine_gen, seed=self.seed, local_agents=g.workers)

    def serve_args(self) -> list[str]:
        """The ``shield-ps serve`` flags of this run (cluster, directory and view flags are the runner's)."""
        c = self.config()
        args = ["--scheme", c.scheme, "--workers", str(c.workers), "--replication", str(c.replication),
                "--network", c.network, "--dataset", c.dataset, "--lr", repr(c.lr), "--momentum", repr(c.momentum),
                "--gamma", repr(c.gamma), "--lr-step", str(c.lr_step), "--max-steps", str(c.max_steps),
                "--eval-freq", str(c.eval_freq), "--aggregator", c.aggregator, "--byzantine", str(c.byzantine),
                "--attack", c.attack, "--alie-z", c.alie_z, "--byzantine-gen", c.byzantine_gen,
                "--seed", str(c.seed)]
        if c.rama_m is not None:
            args += ["--rama-m", str(c.rama_m)]
        if c.batch_size is not None:
            args += ["--batch-size", str(c.batch_size)]
        return args

    def infeasible(self) -> str | None:
        """Why ``serve`` would refuse this run (its own message), or None when it can run."""
        from shield_ps.job import resolve_job

        try:
            resolve_job(self.config())
        except (SweepError, ValueError) as exc:
            return str(exc)
        return None


class Preset(str, enum.Enum):
    """The paper's comparisons as presets; values are the CLI names."""

    FIG9 = "fig9"
    FIG2 = "fig2"


@dataclass(frozen=True)
class PresetEntry:
    """A preset: its grid, what it reproduces, and what was scaled down to run on a CPU machine."""

    grid: Grid
    reproduces: str
    scaled: str


_SCALED = ("ResNet-18 on CIFAR-10 -> LeNet on MNIST (the paper's own MNIST network); thousands of steps -> {steps}; "
           "batch {batch} (the same b for every scheme, so the schemes see the same data per step)")

#: Preset -> grid. Aggregators are the original code's variants of Krum and Bulyan (see docs/byzantine.md).
PRESETS: dict[Preset, PresetEntry] = {
    Preset.FIG9: PresetEntry(
        Grid(schemes=(Scheme.BASELINE, Scheme.DETOX, Scheme.MOLS),
             aggregators=(Aggregator.COORD_MEDIAN, Aggregator.BULYAN_BYZSHIELD, Aggregator.MULTI_KRUM_BYZSHIELD),
             attacks=(Attack.ALIE.value,), byzantine=(2,), workers=15, replication=3, batch_size=150,
             max_steps=100, eval_freq=25),
        reproduces="ByzShield (MLSys 2021) Fig. 9: K = 15, q = 2, ALIE; median, Bulyan, Multi-Krum; baseline, "
                   "DETOX and ByzShield (MOLS, r = 3)",
        scaled=_SCALED.format(steps="100 steps", batch=150)),
    Preset.FIG2: PresetEntry(
        Grid(schemes=(Scheme.BASELINE, Scheme.DETOX, Scheme.RAMA_TWO), aggregators=(Aggregator.COORD_MEDIAN,),
             attacks=(Attack.ALIE.value,), byzantine=(3, 5), workers=25, replication=5, batch_size=250,
             max_steps=60, eval_freq=20),
        reproduces="ByzShield (MLSys 2021) Fig. 2: K = 25, q = 3 and 5, ALIE with median; baseline, DETOX (r = 5) "
                   "and ByzShield (Ramanujan Case 2, r = 5)",
        scaled=_SCALED.format(steps="60 steps", batch=250)),
}

#: TOML keys / flags that are lists of enum values or integers, and the scalar settings.
_LIST_KEYS = ("schemes", "aggregators", "attacks", "byzantine", "seeds")
_SCALAR_KEYS = tuple(f.name for f in dataclasses.fields(Grid) if f.name not in _LIST_KEYS)


def parse_axis(key: str, values: list[Any]) -> tuple[Any, ...]:
    """Validate one axis (a list from TOML or a comma-separated flag); SweepError names what is allowed."""
    if not isinstance(values, (list, tuple)) or not values:
        raise SweepError(f"{key} must be a non-empty list")
    if key in ("byzantine", "seeds"):
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            raise SweepError(f"{key} must be integers >= 0, got {values!r}")
        return tuple(values)
    table: dict[str, Any] = {"schemes": {s.value: s for s in SWEEP_SCHEMES},
                             "aggregators": {a.value: a for a in Aggregator},
                             "attacks": {NO_ATTACK: NO_ATTACK, **{a.value: a.value for a in Attack}}}[key]
    try:
        return tuple(table[v] for v in values)
    except (KeyError, TypeError):
        bad = next(v for v in values if not isinstance(v, str) or v not in table)
        raise SweepError(f"{key}: invalid choice {bad!r} (choose from {', '.join(table)})") from None


def grid_from_mapping(data: dict[str, Any], base: Grid | None = None) -> Grid:
    """``base`` (default :class:`Grid`'s defaults) with the keys of ``data`` applied, each validated."""
    unknown = sorted(set(data) - set(_LIST_KEYS) - set(_SCALAR_KEYS) - {"preset"})
    if unknown:
        raise SweepError(f"unknown sweep keys: {', '.join(unknown)} (allowed: "
                         f"{', '.join(('preset',) + _LIST_KEYS + _SCALAR_KEYS)})")
    grid = base or Grid()
    if "preset" in data:
        grid = preset(data["preset"]).grid
    changes: dict[str, Any] = {k: parse_axis(k, data[k]) for k in _LIST_KEYS if k in data}
    types = {f.name: f.type for f in dataclasses.fields(Grid)}
    for key in _SCALAR_KEYS:
        if key in data:
            changes[key] = _scalar(key, data[key], str(types[key]))
    return grid.replace(**changes)


def _scalar(key: str, value: Any, annotation: str) -> Any:
    if key == "momentum":
        if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1:
            return float(value)
        raise SweepError(f"momentum must be in [0, 1), got {value!r}")
    if key in ("network", "dataset"):
        return zoo_name(key, value)
    if "float" in annotation and isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    if "int" in annotation and isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if annotation == "str" and isinstance(value, str):
        return value
    if "None" in annotation and value is None:
        return None
    want = "a positive number" if "float" in annotation else "a positive integer" if "int" in annotation else "text"
    raise SweepError(f"{key} must be {want}, got {value!r}")


def zoo_name(key: str, value: Any) -> str:
    """``value`` if it names a network (``key`` = "network") or dataset the zoo knows, or a plug-in's
    ``MODULE:CALLABLE`` (imported and checked once the sweep starts); SweepError otherwise."""
    from shield_agent.errors import ShieldAgentError
    from shield_agent.zoo.names import Dataset, Network
    from shield_agent.zoo.plugins import is_plugin, parse_plugin

    if is_plugin(value):
        try:
            return parse_plugin(value, key).text
        except ShieldAgentError as exc:
            raise SweepError(str(exc)) from None
    choices = [m.value for m in (Network if key == "network" else Dataset)]
    if value not in choices:
        raise SweepError(f"{key}: invalid choice {value!r} (choose from {', '.join(choices)}, or MODULE:CALLABLE "
                         "for your own)")
    return str(value)


def preset(name: str | Preset) -> PresetEntry:
    """The preset called ``name``; SweepError naming the presets otherwise."""
    try:
        return PRESETS[Preset(name)]
    except ValueError:
        raise SweepError(f"unknown preset {name!r} (choose from {', '.join(p.value for p in Preset)})") from None


def load_toml(path: str | Path, base: Grid | None = None) -> Grid:
    """A grid from a TOML file (keys as :class:`Grid`'s fields, lists for the axes, optional ``preset``)."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise SweepError(f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SweepError(f"{path} is not valid TOML: {exc}") from None
    return grid_from_mapping(data, base)
