"""A sweep grid: schemes x aggregators x attacks x q x seeds, each point one ``shield-ps serve`` run.

The grid comes from a preset (:data:`PRESETS`, keyed by :class:`Preset`), a TOML file, flags, or a preset
overridden by the other two. Every point is checked with the same resolution ``serve`` uses
(:func:`shield_ps.job.resolve_job`), so a point that cannot run (e.g. Bulyan's n >= 4s+3 with DETOX's five groups)
is reported as *infeasible* with the reason instead of failing the sweep.

Every attacked point has a *control*: the same scheme, aggregator and seed with no Byzantine worker (q = 0, attack
``none``), which the grid adds when it is missing (``controls``), so each point's accuracy drop is measured against
the same training without the adversary. q = 0 points are controls whatever the attack axis says (there is nobody
to attack with). An attack may carry its own ALIE z: ``alie:auto`` or ``alie:3`` (``alie`` alone takes the grid's
``alie_z``), so one grid compares attack strengths.
"""
from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from byzantine.aggregators import Aggregator
from byzantine.attacks import Attack
from byzantine.byzantine_sets import ByzantineChoice
from byzantine.placement import Scheme
from shield_ps.config import ServeConfig
from shield_ps.errors import SweepError
from shield_ps.flags import attack_or_none

NO_ATTACK = "none"
#: ``alie:Z`` on the attack axis: ALIE with its own z (a number or ``auto``).
ALIE_Z_SEPARATOR = ":"
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
    controls: bool = True

    def runs(self) -> list[RunSpec]:
        """Every point of the grid, in a fixed order (q, aggregator, attack, seed, then scheme); the q = 0 controls
        (attack ``none``) come first when ``controls`` is on or q = 0 is on the axis."""
        qs = list(dict.fromkeys(self.byzantine))
        if self.controls and any(q > 0 for q in qs) and 0 not in qs:
            qs.insert(0, 0)
        return [RunSpec(self, scheme, aggregator, attack, q, seed)
                for q in qs for aggregator in self.aggregators
                for attack in (self.attacks if q > 0 else (NO_ATTACK,))
                for seed in self.seeds for scheme in self.schemes]

    def replace(self, **changes: Any) -> Grid:
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
        attack = self.attack.replace(ALIE_Z_SEPARATOR, "-z")
        return f"{self.scheme.value}-{self.aggregator.value}-{attack}-q{self.q}-seed{self.seed}"

    @property
    def is_control(self) -> bool:
        return self.q == 0

    def attack_and_z(self) -> tuple[str, str]:
        """The ``serve`` attack and ALIE z of this point (``alie:Z`` carries its own z)."""
        attack, _, z = self.attack.partition(ALIE_Z_SEPARATOR)
        return attack, z or self.grid.alie_z

    def config(self, train_dir: str = "runs/sweep", data_dir: str | None = None) -> ServeConfig:
        """The :class:`ServeConfig` that ``serve`` would resolve from :meth:`serve_args` (for checking)."""
        g = self.grid
        attack, z = self.attack_and_z()
        return ServeConfig(
            scheme=self.scheme, workers=g.workers, replication=self.replication,
            rama_m=g.rama_m if self.scheme in (Scheme.RAMA_ONE, Scheme.RAMA_TWO) else None,
            network=g.network, dataset=g.dataset, data_dir=data_dir, batch_size=g.batch_size, lr=g.lr,
            momentum=g.momentum, gamma=g.gamma, lr_step=g.lr_step, max_steps=g.max_steps, eval_freq=g.eval_freq,
            train_dir=train_dir, aggregator=self.aggregator, byzantine=self.q,
            attack=attack_or_none(attack), alie_z=z, byzantine_gen=ByzantineChoice(g.byzantine_gen), seed=self.seed,
            local_agents=g.workers)

    def serve_args(self) -> list[str]:
        """The ``shield-ps serve`` flags of this run (cluster, directory and view flags are the runner's)."""
        c = self.config()
        named = c.to_dict()  # the enums as the command line spells them
        args = ["--scheme", named["scheme"], "--workers", str(c.workers), "--replication", str(c.replication),
                "--network", c.network, "--dataset", c.dataset, "--lr", repr(c.lr), "--momentum", repr(c.momentum),
                "--gamma", repr(c.gamma), "--lr-step", str(c.lr_step), "--max-steps", str(c.max_steps),
                "--eval-freq", str(c.eval_freq), "--aggregator", named["aggregator"], "--byzantine", str(c.byzantine),
                "--attack", named["attack"], "--alie-z", c.alie_z, "--byzantine-gen", named["byzantine_gen"],
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
    REACH = "reach"
    FIG9_SCALED = "fig9-scaled"
    FIG2_SCALED = "fig2-scaled"


@dataclass(frozen=True)
class PresetEntry:
    """A preset: its grid, what it reproduces, and what differs from the paper to run on a CPU machine."""

    grid: Grid
    reproduces: str
    scaled: str


#: The paper's settings (ByzShield, MLSys 2021, Sec. 6): the whole batch b with 50 samples per baseline worker (b = 750
#: at K = 15: MOLS 25 files of 30, DETOX 5 groups of 150, the baseline 15 of 50; b = 1250 at K = 25: Ramanujan Case 2
#: 25 files of 50, DETOX 5 groups of 250, the baseline 25 of 50), ALIE's own z (``auto``), momentum 0.9 and the
#: original code's step decay (lr 0.01, times 0.96 every 15 steps: ``run_pytorch.sh``'s gamma and lr_step).
PAPER_SCHEDULE: dict[str, Any] = {"lr": 0.01, "momentum": 0.9, "gamma": 0.96, "lr_step": 15, "alie_z": "auto"}
PAPER_BATCH = {15: 750, 25: 1250}
#: Seeds of the paper presets: enough for a 95% interval (t with 2 degrees of freedom), not for small differences.
PAPER_SEEDS = (0, 1, 2)

_PAPER_TASK = ("ResNet-18 on CIFAR-10 -> LeNet on MNIST (the paper's own MNIST network; pass --network ResNet18 "
               "--dataset Cifar10 for the paper's task); thousands of steps -> {steps} steps; the paper's batch "
               "b = {batch}, lr schedule and ALIE z")
_SCALED = ("ResNet-18 on CIFAR-10 -> LeNet on MNIST (the paper's own MNIST network); thousands of steps -> {steps}; "
           "batch {batch} (the same b for every scheme, so the schemes see the same data per step)")
_K15 = (Scheme.BASELINE, Scheme.DETOX, Scheme.MOLS)
_K25 = (Scheme.BASELINE, Scheme.DETOX, Scheme.RAMA_TWO)
_FIG9_AGGREGATORS = (Aggregator.COORD_MEDIAN, Aggregator.BULYAN_BYZSHIELD, Aggregator.MULTI_KRUM_BYZSHIELD)

#: Preset -> grid. Aggregators are the original code's variants of Krum and Bulyan (see docs/byzantine.md).
PRESETS: dict[Preset, PresetEntry] = {
    Preset.FIG9: PresetEntry(
        Grid(schemes=_K15, aggregators=_FIG9_AGGREGATORS, attacks=(Attack.ALIE.value,), byzantine=(2,),
             seeds=PAPER_SEEDS, workers=15, replication=3, batch_size=PAPER_BATCH[15], max_steps=100, eval_freq=25,
             **PAPER_SCHEDULE),
        reproduces="ByzShield (MLSys 2021) Fig. 9: K = 15, q = 2, ALIE; median, Bulyan, Multi-Krum; baseline, "
                   "DETOX and ByzShield (MOLS, r = 3); 3 seeds and the q = 0 controls",
        scaled=_PAPER_TASK.format(steps=100, batch=PAPER_BATCH[15])),
    Preset.FIG2: PresetEntry(
        Grid(schemes=_K25, aggregators=(Aggregator.COORD_MEDIAN,), attacks=(Attack.ALIE.value,), byzantine=(3, 5),
             seeds=PAPER_SEEDS, workers=25, replication=5, batch_size=PAPER_BATCH[25], max_steps=100,
             eval_freq=25, **PAPER_SCHEDULE),
        reproduces="ByzShield (MLSys 2021) Fig. 2: K = 25, q = 3 and 5, ALIE with median; baseline, DETOX (r = 5) "
                   "and ByzShield (Ramanujan Case 2, r = 5); 3 seeds and the q = 0 controls",
        scaled=_PAPER_TASK.format(steps=100, batch=PAPER_BATCH[25])),
    Preset.REACH: PresetEntry(
        Grid(schemes=_K15, aggregators=(Aggregator.COORD_MEDIAN,),
             attacks=("alie:auto", "alie:3", Attack.CONSTANT.value, Attack.REV_GRAD.value), byzantine=(2, 4, 6),
             seeds=PAPER_SEEDS, workers=15, replication=3, batch_size=PAPER_BATCH[15], max_steps=100, eval_freq=25,
             **PAPER_SCHEDULE),
        reproduces="where the schemes separate: K = 15, q = 2, 4, 6 against the q = 0 controls, ALIE with z auto "
                   "and z = 3, the constant and reversed-gradient attacks (c = 100), coordinate median; baseline, "
                   "DETOX and ByzShield (MOLS); 3 seeds",
        scaled=_PAPER_TASK.format(steps=100, batch=PAPER_BATCH[15])),
    Preset.FIG9_SCALED: PresetEntry(
        Grid(schemes=_K15, aggregators=_FIG9_AGGREGATORS, attacks=(Attack.ALIE.value,), byzantine=(2,), workers=15,
             replication=3, batch_size=150, max_steps=100, eval_freq=25),
        reproduces="ByzShield (MLSys 2021) Fig. 9, scaled: K = 15, q = 2, ALIE z = 1; median, Bulyan, Multi-Krum; "
                   "baseline, DETOX and ByzShield (MOLS, r = 3); one seed",
        scaled=_SCALED.format(steps="100 steps", batch=150)),
    Preset.FIG2_SCALED: PresetEntry(
        Grid(schemes=_K25, aggregators=(Aggregator.COORD_MEDIAN,), attacks=(Attack.ALIE.value,), byzantine=(3, 5),
             workers=25, replication=5, batch_size=250, max_steps=60, eval_freq=20),
        reproduces="ByzShield (MLSys 2021) Fig. 2, scaled: K = 25, q = 3 and 5, ALIE z = 1 with median; baseline, "
                   "DETOX (r = 5) and ByzShield (Ramanujan Case 2, r = 5); one seed",
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
    tables: dict[str, dict[str, Any]] = {"schemes": {s.value: s for s in SWEEP_SCHEMES},
                                         "aggregators": {a.value: a for a in Aggregator},
                                         "attacks": {NO_ATTACK: NO_ATTACK, **{a.value: a.value for a in Attack}}}
    table = tables[key]
    if key == "attacks":
        return tuple(dict.fromkeys(parse_attack_entry(v, table) for v in values))
    try:
        return tuple(table[v] for v in values)
    except (KeyError, TypeError):
        bad = next(v for v in values if not isinstance(v, str) or v not in table)
        raise SweepError(f"{key}: invalid choice {bad!r} (choose from {', '.join(table)})") from None


def parse_attack_entry(value: Any, table: dict[str, str]) -> str:
    """One attack of the axis: a name of ``table``, or ``alie:Z`` (Z a finite number or ``auto``), canonical."""
    if isinstance(value, str) and value.startswith(Attack.ALIE.value + ALIE_Z_SEPARATOR):
        z = value.split(ALIE_Z_SEPARATOR, 1)[1]
        return f"{Attack.ALIE.value}{ALIE_Z_SEPARATOR}{parse_alie_z(z, f'attacks: {value!r}')}"
    if isinstance(value, str) and value in table:
        return table[value]
    raise SweepError(f"attacks: invalid choice {value!r} (choose from {', '.join(table)}, or alie:Z with Z a "
                     "number or auto)")


def parse_alie_z(text: Any, what: str = "alie_z") -> str:
    """ALIE's z as the CLI spells it: ``auto`` or a finite number (written back in its shortest form)."""
    import math

    if text == "auto":
        return "auto"
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(text, bool) or not math.isfinite(value):
        raise SweepError(f"{what}: ALIE z must be a finite number or 'auto', got {text!r}")
    return format(value, "g")


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
    """A scalar setting ``key`` checked: by its own rule (:data:`_SPECIAL`), else by its field's type
    ``annotation``."""
    special = _SPECIAL.get(key)
    if special is not None:
        return special(key, value)
    return _typed_scalar(key, value, annotation)


def _controls(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise SweepError(f"controls must be true or false, got {value!r}")


def _alie_z(key: str, value: Any) -> Any:
    """A string is kept as written (it is part of the runs' configuration hash)."""
    canonical = parse_alie_z(value)
    return value if isinstance(value, str) else canonical


def _momentum(key: str, value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1:
        return float(value)
    raise SweepError(f"momentum must be in [0, 1), got {value!r}")


def _typed_scalar(key: str, value: Any, annotation: str) -> Any:
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
    from shield_model.errors import ShieldModelError
    from shield_model.zoo.names import Dataset, Network
    from shield_model.zoo.plugins import is_plugin, parse_plugin

    if is_plugin(value):
        try:
            return parse_plugin(value, key).text
        except ShieldModelError as exc:
            raise SweepError(str(exc)) from None
    choices = [m.value for m in (Network if key == "network" else Dataset)]
    if value not in choices:
        raise SweepError(f"{key}: invalid choice {value!r} (choose from {', '.join(choices)}, or MODULE:CALLABLE "
                         "for your own)")
    return str(value)


#: The scalar settings checked by a rule of their own rather than by their field's type.
_SPECIAL: dict[str, Callable[[str, Any], Any]] = {"controls": _controls, "alie_z": _alie_z, "momentum": _momentum,
                                                  "network": zoo_name, "dataset": zoo_name}


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
