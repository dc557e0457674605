"""The resolved configuration of a training run: each field declared once, its validation and its hash.

Every field of :class:`ServeConfig` is declared with :func:`shield_ps.flags.flag`: its default, its ``shield-ps
serve`` flag (help, value type, group) and whether ``--resume`` may change it; the command line is generated from
those declarations (:mod:`shield_ps.cli.serve_args`). Fields chosen from a set are enums (``vote`` a
:class:`~byzantine.vote.VoteMode`, ``attack`` an :class:`~byzantine.attacks.Attack` or None);
:meth:`ServeConfig.to_dict` writes them out as the strings of the command line, so the configuration serialises to
JSON for the JOB message, checkpoints and ``metrics.jsonl``, and a string given for such a field (an older
checkpoint, a config built in code) is parsed as the command line would. :meth:`ServeConfig.config_hash` covers
only the fields that change the mathematics of the run, so ``--resume`` accepts a restart with another port or
``--max-steps`` but refuses one with another learning rate. :meth:`ServeConfig.validate` holds the checks across
fields (:mod:`shield_ps.config_check`).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import enum
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from byzantine.aggregators import Aggregator
from byzantine.attacks import Attack
from byzantine.byzantine_sets import ByzantineChoice, DetoxAttack
from byzantine.placement import SCHEME_ALIASES, Scheme
from byzantine.vote import VoteMode
from shield_model.device import parse_device
from shield_ps import flags
from shield_ps.config_check import SCHEME_DEFAULTS as SCHEME_DEFAULTS  # noqa: F401 (re-exported)
from shield_ps.config_check import valid_placements as valid_placements  # noqa: F401
from shield_ps.errors import ConfigError
from shield_ps.flags import Group, flag, flag_of
from wire.autocodec import AUTO, CODEC_CHOICES
from wire.cli import enum_choice, non_negative_int, positive_float, positive_int

#: --max-steps when neither it nor --epochs is given.
DEFAULT_MAX_STEPS = 300
#: --join-timeout when not given: remote agents, and agents this PS starts itself (they import torch and load data
#: on the same cores as everything else, so their first join can take minutes on a small busy machine).
JOIN_TIMEOUT_REMOTE_S = 120.0
JOIN_TIMEOUT_LOCAL_S = 300.0
#: The digest of a plug-in's code (shield_ps.plugins), by the field that names the plug-in.
PLUGIN_DIGESTS = {"network_digest": "network", "dataset_digest": "dataset"}


class ShortStep(str, enum.Enum):
    """What a step does when too few files survive for the aggregator's s (``--short-step``)."""

    SKIP = "skip"
    LOWER_S = "lower-s"


_C, _P, _T, _R, _X = Group.CLUSTER, Group.PLACEMENT, Group.TRAINING, Group.ROBUSTNESS, Group.TRANSPORT


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``shield-ps serve`` needs; see ``shield-ps serve --help`` (or each field's :func:`flag`)."""

    # cluster
    host: str = flag("127.0.0.1", "address to listen on (0.0.0.0 for remote agents)", group=_C, operational=True)
    port: int = flag(7700, "port (0 picks a free one and prints it)", parse=flags.port, group=_C, operational=True)
    local_agents: int = flag(
        0, "host K worker slots on this machine (in a few agent processes) and stop them at the end",
        parse=non_negative_int, metavar="K", group=_C, operational=True)
    agent_processes: int | None = flag(
        None, "agent processes for --local-agents (default: one per core but one for the PS, at least 1, at most K)",
        parse=positive_int, metavar="P", group=_C, operational=True)
    local_agent_env: tuple[str, ...] = flag(  # "INDICES:NAME=VALUE" per local agent (e.g. other kernel settings)
        (), "extra environment for some local agent processes, e.g. 0,2:ATEN_CPU_CAPABILITY=avx2 (repeatable; "
        "indices of --agent-processes; mixes determinism classes on one machine)",
        metavar="INDICES:NAME=VALUE", repeatable=True, group=_C, operational=True)
    threads: int = flag(1, "torch threads per agent (default 1)", parse=positive_int, group=_C, operational=True)
    local_agent_device: str = flag(
        "cpu", "where the --local-agents compute: cpu (default), cuda, cuda:N or auto (their --device)",
        names=("--agent-device",), parse=parse_device, metavar="DEVICE", group=_C, operational=True)
    # placement
    scheme: Scheme = flag(Scheme.MOLS, names=("--scheme", "--approach"), parse=enum_choice(Scheme, SCHEME_ALIASES),
                          group=_P)
    workers: int = flag(15, "number of workers K (default: the paper's for the scheme: 25 for rama_two, else 15)",
                        parse=positive_int, metavar="K", derived=True, group=_P)
    replication: int = flag(
        3, "replication r (default: the paper's for the scheme: 5 for rama_two, 1 for baseline, else 3)",
        names=("--replication", "--group-size"), parse=positive_int, metavar="R", derived=True, group=_P)
    rama_m: int | None = flag(None, "m of the Ramanujan Case 2 construction (default s)", parse=positive_int,
                              group=_P)
    # training
    network: str = flag(
        "LeNet", "model: LeNet (as in the paper's code), LeNet-relu, ResNet18, ResNet34, ResNet50, DenseNet, VGG11, "
        "VGG13, or MODULE:CALLABLE for your own (CALLABLE(num_classes) returns a torch.nn.Module; importable here and "
        "on every agent: docs/your-model.md)", parse=flags.network, group=_T)
    dataset: str = flag(
        "MNIST", "MNIST, Cifar10, Cifar100, SVHN, or MODULE:CALLABLE for your own (CALLABLE(data_dir) returns "
        "map-style (train, test) datasets of (tensor, int) pairs: docs/your-model.md)", parse=flags.dataset, group=_T)
    data_dir: str | None = flag(
        None, "directory that holds the dataset (default: the cache $SHIELD_DATA_DIR or ~/.cache/shield/data, "
        "downloaded there on first use; offline, MNIST's test split embedded in the package); a plug-in dataset is "
        "given this directory, or the cache's", metavar="DIR", group=_T, operational=True)
    batch_size: int | None = flag(None, "the whole batch b (default 10*f)", parse=positive_int, group=_T)
    lr: float = flag(0.01, parse=positive_float, group=_T)
    momentum: float = flag(0.9, parse=float, group=_T)
    gamma: float = flag(1.0, "lr decay factor every --lr-step steps", parse=positive_float, group=_T)
    lr_step: int = flag(1000, parse=positive_int, group=_T)
    epochs: int | None = flag(None, parse=positive_int, exclusive="steps", group=_T, operational=True)
    max_steps: int | None = flag(None, f"number of steps (default {DEFAULT_MAX_STEPS})", parse=positive_int,
                                 exclusive="steps", group=_T, operational=True)
    eval_freq: int = flag(50, "evaluate and checkpoint every N steps", parse=positive_int, group=_T, operational=True)
    train_dir: str = flag("runs/default", "where checkpoints and metrics.jsonl go (default runs/YYYYmmdd-HHMMSS)",
                          derived=True, group=_T, operational=True)
    seed: int = flag(0, parse=non_negative_int, group=_T)
    synthetic_d: int | None = flag(
        None, "benchmarks and tests only: train a flat vector of D parameters on synthetic gradients (agents join with "
        "--synthetic SECONDS_PER_FILE; --network/--dataset are ignored, no evaluation)",
        parse=flags.synthetic_d, metavar="D", hashed_when_set=True, group=_T)
    resume: bool = flag(False, "continue from the newest valid checkpoint (of --train-dir; default: the newest run "
                        "in runs/)", switch=True, group=_T, operational=True)
    checkpoint_keep: int = flag(3, "keep the newest N checkpoints of the run (default 3)",
                                names=("--keep-checkpoints",), parse=positive_int, metavar="N", group=_T,
                                operational=True)
    # robustness
    aggregator: Aggregator = flag(Aggregator.COORD_MEDIAN, names=("--aggregator", "--mode"),
                                  parse=enum_choice(Aggregator), group=_R)
    buckets: int | None = flag(None, "coord-median / sign-sgd: number of buckets", parse=positive_int, group=_R)
    agg_s: int | None = flag(None, "Byzantine count s of the aggregator (default c_max(q))", parse=non_negative_int,
                             group=_R)
    agg_m: int | None = flag(None, "multi-krum: number of vectors averaged (default n-s)", parse=positive_int,
                             group=_R)
    agg_threads: int | None = flag(
        None, "threads of the aggregation (1..64; default: one per core; never changes the result)",
        parse=flags.agg_threads, metavar="N", group=_R, operational=True)
    byzantine: int = flag(0, names=("--byzantine", "--worker-fail"), parse=non_negative_int, metavar="Q", group=_R)
    attack: Attack | None = flag(None, "none, " + ", ".join(a.value for a in Attack), names=("--attack", "--err-mode"),
                                 parse=flags.attack_or_none, none_as="none", group=_R)
    attack_c: float = flag(100.0, "attack constant c (default 100)", parse=float, group=_R)
    alie_z: str = flag("1.0", "ALIE z: a number (default 1.0, the original code's), or auto: ALIE's z_max for the "
                       "aggregator's f rows of which the corrupted files are Byzantine", parse=flags.alie_z, group=_R)
    byzantine_gen: ByzantineChoice = flag(
        ByzantineChoice.WORST, parse=enum_choice(ByzantineChoice, {"hard_coded": ByzantineChoice.WORST,
                                                               "hard-coded": ByzantineChoice.WORST}), group=_R)
    fixed_byzantine: tuple[int, ...] = flag((), "worker ids for --byzantine-gen fixed", parse=flags.worker_list,
                                            group=_R)
    detox_attack: DetoxAttack = flag(DetoxAttack.WORST, parse=enum_choice(DetoxAttack, {"whole_group":
                                                                                    DetoxAttack.WHOLE_GROUP}), group=_R)
    vote: VoteMode = flag(
        VoteMode.AUTO, "auto (default): vote on digests, and where a file's digests disagree (agents of different "
        "determinism classes) on sketches within --vote-tol; ingress about f*d. exact: digests only, refused when the "
        "agents form more than one class. tolerant: fetch every replica and vote on vectors within --vote-rtol "
        "(ingress f*r*d)", parse=enum_choice(VoteMode), group=_R)
    vote_rtol: float = flag(1e-5, "relative tolerance of --vote tolerant", parse=positive_float, group=_R)
    vote_tol: float | None = flag(
        None, "relative tolerance of --vote auto's sketch vote (default: 10x the spread of the agents' probe gradients "
        "between classes, within [1e-6, 0.05])", parse=positive_float, group=_R)
    short_step: ShortStep = flag(
        ShortStep.SKIP, "when too few files survive for the aggregator's s: skip the update (default, always sound) "
        "or lower-s (aggregate with the largest valid s; weaker)", parse=enum_choice(ShortStep), group=_R)
    max_skipped_steps: int = flag(20, "fail after this many consecutive steps that could not be aggregated (default "
                                  "20)", parse=positive_int, group=_R, operational=True)
    cc_tau: float = flag(10.0, "centered-clipping radius tau (default 10)", parse=positive_float, group=_R)
    cc_iters: int = flag(1, "centered-clipping iterations (default 1)", parse=positive_int, group=_R)
    # transport and deadlines
    codec: str = flag(
        AUTO, "vector codec on every link; auto (default): per link and direction, the fastest of raw and blosc2 "
        "LZ4/ZSTD for the link's measured rate (raw on fast links)", choices=CODEC_CHOICES, group=_X, operational=True)
    codec_level: int = flag(1, parse=non_negative_int, group=_X, operational=True)
    gather_timeout: float = flag(120.0, "seconds to wait for digests", parse=positive_float, group=_X,
                                 operational=True)
    upload_timeout: float = flag(
        10.0, "latency allowance of one transfer, seconds: a STEP send or a fetch must end within this plus its size "
        "/ --min-bandwidth (default 10)", names=("--upload-timeout", "--latency-allowance"), parse=positive_float,
        group=_X, operational=True)
    min_bandwidth: float = flag(10.0, "the slowest link a transfer is given time for (default 10 MB/s)",
                                parse=positive_float, metavar="MB/s", group=_X, operational=True)
    hedge_factor: float = flag(
        4.0, "ask the next holder of a file when a fetch runs this many times the median fetch time (default 4)",
        parse=positive_float, group=_X, operational=True)
    hedge_floor: float = flag(
        0.25, "never hedge, nor end the gather's straggler grace, sooner (seconds, default 0.25)",
        parse=positive_float, group=_X, operational=True)
    digest_grace_floor: float = flag(
        0.05, "the least the gather waits for the last digests once every file can be voted (seconds, default 0.05); "
        "a worker late for a step is waited for only this long for the next 8 steps, once it alone is missing: "
        "raise it on a loaded host whose scheduling noise exceeds it", parse=positive_float, group=_X,
        operational=True)
    streaming_vote: bool = flag(
        True, "on (default): fetch a file's winning payload as soon as r' equal digests are in, while others still "
        "compute; off: after every digest is in (the serial step, for comparison)", parse=flags.on_off,
        metavar="{on,off}", group=_X, operational=True)
    relay: str = flag(
        "on", "relay broadcast (default on): the PS sends each step's parameters to --relay-roots agent processes, "
        "which forward them in a tree, every hop checked by digest; off: to every agent", choices=("on", "off"),
        group=_X, operational=True)
    relay_roots: int = flag(2, "agent processes the PS sends the parameters to (default 2)", parse=positive_int,
                            group=_X, operational=True)
    relay_fanout: int = flag(2, "agent processes each relay forwards them to (default 2)", parse=positive_int,
                             group=_X, operational=True)
    relay_latency: float = flag(
        2.0, "seconds per hop of the relay tree, plus the vector's size / --min-bandwidth: an agent k hops from the "
        "PS asks the PS directly after k such hops (default 2)", parse=positive_float, group=_X, operational=True)
    handshake_timeout: float = flag(5.0, "seconds an unauthenticated connection may take to authenticate (default 5)",
                                    parse=positive_float, group=_X, operational=True)
    max_preauth: int = flag(128, "unauthenticated connections held at once (default 128)", parse=positive_int,
                            group=_X, operational=True)
    max_preauth_per_host: int = flag(32, "of those, from one source address (default 32)", parse=positive_int,
                                     group=_X, operational=True)
    join_timeout: float = flag(
        JOIN_TIMEOUT_REMOTE_S, "seconds to wait for agents without progress; agents still loading extend the wait up "
        f"to 5*S (default {JOIN_TIMEOUT_REMOTE_S:.0f}, or {JOIN_TIMEOUT_LOCAL_S:.0f} with --local-agents)",
        parse=positive_float, metavar="S", derived=True, group=_X, operational=True)
    # set by the PS, not flags
    network_digest: str | None = flag(None, cli=False, hashed_when_set=True)  # a plug-in network's identity
    dataset_digest: str | None = flag(None, cli=False, hashed_when_set=True)  # a plug-in dataset's identity
    view: str = flag("auto", cli=False, operational=True)  # --plain / --quiet (shield_ps.view)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        """Strings for enum fields (a checkpoint, a JOB message, a config built in code) become their enums, parsed
        as the command line parses them; lists become tuples."""
        for field in _ENUM_FIELDS:
            value = getattr(self, field.name)
            if isinstance(value, str) and not isinstance(value, enum.Enum):
                parse = flag_of(field).parse
                assert parse is not None
                try:
                    object.__setattr__(self, field.name, parse(value))
                except argparse.ArgumentTypeError as exc:
                    raise ConfigError(f"{field.name}: {exc}") from None
        for name in ("fixed_byzantine", "local_agent_env"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form: enums as their command-line strings (no attack: ``"none"``), tuples as lists."""
        return {field.name: _plain(getattr(self, field.name), field) for field in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServeConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown configuration fields: {', '.join(unknown)}")
        return cls(**data)

    def training_fields(self) -> dict[str, Any]:
        return {k: v for k, v in self.to_dict().items()
                if k not in OPERATIONAL_FIELDS and not (k in HASHED_WHEN_SET and v is None)}

    def config_hash(self) -> str:
        """SHA-256 (hex, 16 chars) of the canonical JSON of the fields that change the run's mathematics."""
        canonical = json.dumps(self.training_fields(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def replace(self, **changes: Any) -> ServeConfig:
        return dataclasses.replace(self, **changes)

    def validate(self) -> ServeConfig:
        """Raise ConfigError naming what would work when the fields contradict one another (the checks across
        fields, for a configuration from the command line or built in code); returns self."""
        from shield_ps.config_check import validate

        validate(self)
        return self

    @property
    def attack_name(self) -> str:
        """The attack as the command line and the events spell it (``none`` when there is none)."""
        return self.attack.value if self.attack is not None else "none"


def _plain(value: Any, field: dataclasses.Field[Any]) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, dict):
        return copy.deepcopy(value)
    return flag_of(field).none_as if value is None else value


def default_of(name: str) -> Any:
    """The declared default of ServeConfig field ``name`` (for code that needs it outside a configuration)."""
    return ServeConfig.__dataclass_fields__[name].default


#: The fields chosen from an enum (a string given for one is parsed by its flag's type).
_ENUM_FIELDS = tuple(f for f in dataclasses.fields(ServeConfig)
                     if isinstance(f.default, enum.Enum) or flag_of(f).none_as is not None)
#: Fields that do not change the result of a step (``--resume`` may change them); everything else is hashed.
OPERATIONAL_FIELDS = frozenset(f.name for f in dataclasses.fields(ServeConfig) if flag_of(f).operational)
#: Fields added after runs were checkpointed: hashed only when set, so older checkpoints keep their hash.
HASHED_WHEN_SET = frozenset(f.name for f in dataclasses.fields(ServeConfig) if flag_of(f).hashed_when_set)


def diff_training_fields(old: dict[str, Any], new: ServeConfig) -> list[str]:
    """Human-readable differences between a checkpoint's configuration and ``new`` (training fields only)."""
    previous = ServeConfig.from_dict(old).training_fields()
    current = new.training_fields()
    return [_difference(key, previous, current)
            for key in sorted(set(previous) | set(current)) if previous.get(key) != current.get(key)]


def _difference(key: str, previous: dict[str, Any], current: dict[str, Any]) -> str:
    if key in PLUGIN_DIGESTS:  # name the plug-in whose code changed, with both digests
        short = [str(d)[:16] if d is not None else "none" for d in (previous.get(key), current.get(key))]
        name = PLUGIN_DIGESTS[key]
        return f"the code of {name} {current.get(name)} changed ({short[0]} -> {short[1]})"
    return f"{key}: {previous.get(key)!r} -> {current.get(key)!r}"
