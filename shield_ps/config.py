"""The resolved configuration of a training run, its validation and its hash.

:class:`ServeConfig` holds plain values (strings spelled as on the CLI, numbers), so it serialises to JSON for the
JOB message, checkpoints and ``metrics.jsonl``. :meth:`ServeConfig.config_hash` covers only the fields that change
the mathematics of the run, so ``--resume`` accepts a restart with another port or ``--max-steps`` but refuses one
with another learning rate.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from shield_ps.errors import ConfigError

#: Fields that do not change the result of a step; everything else is hashed.
_OPERATIONAL_FIELDS = frozenset({
    "host", "port", "data_dir", "train_dir", "resume", "local_agents", "local_agent_env", "local_agent_device", "view",
    "eval_freq",
    "epochs", "max_steps",
    "codec", "codec_level", "threads", "gather_timeout", "upload_timeout", "join_timeout", "checkpoint_keep",
    "min_bandwidth", "hedge_factor", "hedge_floor", "handshake_timeout", "max_preauth", "max_preauth_per_host",
    "max_skipped_steps", "agent_processes", "agg_threads", "streaming_vote", "relay", "relay_roots", "relay_fanout",
    "relay_latency",
})

#: The paper's configuration of each scheme, used when ``--workers``/``--replication`` are not given
#: (ByzShield, Konstantinidis & Ramamoorthy 2021, Sec. 5: MOLS K = 15, r = 3; Ramanujan Case 2 K = 25, r = 5;
#: Ramanujan Case 1 K = 15, r = 3; DETOX and majority vote in groups of 3; the baseline has no replication).
SCHEME_DEFAULTS: dict[str, tuple[int, int]] = {
    "baseline": (15, 1),
    "detox": (15, 3),
    "maj_vote": (15, 3),
    "mols": (15, 3),
    "rama_one": (15, 3),
    "rama_two": (25, 5),
}

#: --join-timeout when not given: remote agents, and agents this PS starts itself (they import torch and load data
#: on the same cores as everything else, so their first join can take minutes on a small busy machine).
JOIN_TIMEOUT_REMOTE_S = 120.0
JOIN_TIMEOUT_LOCAL_S = 300.0

#: Fields added after runs were checkpointed: hashed only when set, so older checkpoints keep their hash.
_HASHED_WHEN_SET = frozenset({"synthetic_d", "network_digest", "dataset_digest"})
#: The digest of a plug-in's code (shield_ps.plugins), by the field that names the plug-in.
PLUGIN_DIGESTS = {"network_digest": "network", "dataset_digest": "dataset"}


def valid_placements(scheme: str, limit: int = 4, max_workers: int = 64) -> list[tuple[int, int]]:
    """Up to ``limit`` small valid ``(K, r)`` of ``scheme`` (for error messages), the paper's first."""
    from byzantine.placement import build_placement
    from shield_ps.errors import ShieldPSError

    found: list[tuple[int, int]] = []
    default = SCHEME_DEFAULTS.get(scheme)
    candidates = [default] if default else []
    replications = (1,) if default and default[1] == 1 else (3, 5, 7)  # r = 1 only where there is no replication
    candidates += [(k, r) for r in replications for k in range(r, max_workers + 1) if (k, r) != default]
    for workers, replication in candidates:
        try:
            build_placement(scheme, workers, replication)
        except (ShieldPSError, ValueError):
            continue
        found.append((workers, replication))
        if len(found) >= limit:
            break
    return found


@dataclass(frozen=True)
class ServeConfig:
    """Everything ``shield-ps serve`` needs; see ``shield-ps serve --help`` for each field."""

    scheme: str = "mols"
    workers: int = 15
    replication: int = 3
    rama_m: int | None = None
    network: str = "LeNet"
    dataset: str = "MNIST"
    data_dir: str | None = None
    batch_size: int | None = None
    lr: float = 0.01
    momentum: float = 0.9
    gamma: float = 1.0
    lr_step: int = 1000
    epochs: int | None = None
    max_steps: int | None = None
    eval_freq: int = 50
    train_dir: str = "runs/default"
    aggregator: str = "coord-median"
    buckets: int | None = None
    agg_s: int | None = None
    agg_m: int | None = None
    byzantine: int = 0
    attack: str = "none"
    attack_c: float = 100.0
    alie_z: str = "1.0"
    byzantine_gen: str = "worst"
    fixed_byzantine: tuple[int, ...] = ()
    detox_attack: str = "worst"
    seed: int = 0
    vote: str = "auto"
    vote_rtol: float = 1e-5
    vote_tol: float | None = None  # --vote auto: relative tolerance of the sketch vote (None: from the probe spread)
    codec: str = "auto"
    codec_level: int = 1
    threads: int = 1
    agg_threads: int | None = None
    synthetic_d: int | None = None
    network_digest: str | None = None  # a plug-in network's identity (set by shield_ps.plugins.resolve_plugins)
    dataset_digest: str | None = None  # a plug-in dataset's identity
    host: str = "127.0.0.1"
    port: int = 7700
    resume: bool = False
    local_agents: int = 0
    local_agent_env: tuple[str, ...] = ()  # "INDICES:NAME=VALUE" per local agent (e.g. other kernel settings)
    local_agent_device: str = "cpu"  # the local agents' --device (cpu, cuda, cuda:N, auto)
    view: str = "auto"
    gather_timeout: float = 120.0
    upload_timeout: float = 10.0  # latency allowance of one transfer (plus bytes / min_bandwidth)
    min_bandwidth: float = 10.0  # MB/s, the slowest link a transfer is given time for
    hedge_factor: float = 4.0
    hedge_floor: float = 0.25
    streaming_vote: bool = True  # fetch a file as soon as r' digests agree (False: after the gather, serially)
    relay: str = "on"  # relay broadcast (shield_ps.phases.relay): the PS sends the parameters to relay_roots agents
    relay_roots: int = 2
    relay_fanout: int = 2
    relay_latency: float = 2.0  # seconds per relay hop, plus bytes / min_bandwidth
    handshake_timeout: float = 5.0
    max_preauth: int = 128
    max_preauth_per_host: int = 32
    join_timeout: float = 120.0
    checkpoint_keep: int = 3
    short_step: str = "skip"
    max_skipped_steps: int = 20
    cc_tau: float = 10.0
    cc_iters: int = 1
    agent_processes: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["fixed_byzantine"] = list(self.fixed_byzantine)
        data["local_agent_env"] = list(self.local_agent_env)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServeConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown configuration fields: {', '.join(unknown)}")
        values = dict(data)
        values["fixed_byzantine"] = tuple(values.get("fixed_byzantine", ()))
        values["local_agent_env"] = tuple(values.get("local_agent_env", ()))
        return cls(**values)

    def training_fields(self) -> dict[str, Any]:
        return {k: v for k, v in self.to_dict().items()
                if k not in _OPERATIONAL_FIELDS and not (k in _HASHED_WHEN_SET and v is None)}

    def config_hash(self) -> str:
        """SHA-256 (hex, 16 chars) of the canonical JSON of the fields that change the run's mathematics."""
        canonical = json.dumps(self.training_fields(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def replace(self, **changes: Any) -> ServeConfig:
        return dataclasses.replace(self, **changes)


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
