"""The checks across :class:`~shield_ps.config.ServeConfig` fields, in one place: :func:`validate` runs for a
configuration from the command line (``shield-ps serve``, exit status 2) and for one built in code
(:func:`shield_ps.job.resolve_job`). Each value alone is checked by its flag's type (:mod:`shield_ps.flags`)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from byzantine.byzantine_sets import ByzantineChoice
from byzantine.placement import build_placement
from shield_ps.errors import CONFIG_ERRORS, ConfigError, ShieldPSError

if TYPE_CHECKING:
    from shield_ps.config import ServeConfig

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


def valid_placements(scheme: str, limit: int = 4, max_workers: int = 64) -> list[tuple[int, int]]:
    """Up to ``limit`` small valid ``(K, r)`` of ``scheme`` (for error messages), the paper's first."""
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


def check_placement(scheme: str, workers: int, replication: int, rama_m: int | None) -> None:
    """Fail with a message naming valid ``--workers``/``--replication`` pairs when the placement cannot be built."""
    try:
        build_placement(scheme, workers, replication, rama_m)
    except CONFIG_ERRORS as exc:
        valid = "; ".join(f"--workers {k} --replication {r}" for k, r in valid_placements(scheme))
        raise type(exc)(f"{exc} (valid for {scheme}, e.g.: {valid})") from None


def validate(config: ServeConfig) -> None:
    """Raise ConfigError (or the placement's error) naming what would work when ``config``'s fields contradict one
    another: fixed Byzantine ids without ``--byzantine-gen fixed``, momentum outside [0, 1), local-agent options
    without local agents, a placement that cannot be built, a malformed ``--local-agent-env``."""
    from shield_ps.local_agents import default_processes, parse_agent_env

    if config.fixed_byzantine and config.byzantine_gen is not ByzantineChoice.FIXED:
        raise ConfigError("--fixed-byzantine needs --byzantine-gen fixed")
    if not 0 <= config.momentum < 1:
        raise ConfigError(f"--momentum must be in [0, 1), got {config.momentum}")
    if config.local_agent_device != "cpu" and not config.local_agents:
        raise ConfigError("--agent-device applies to --local-agents K; agents joined by hand take their own --device")
    if config.agent_processes and not config.local_agents:
        raise ConfigError("--agent-processes applies to --local-agents K; agents joined by hand choose their own "
                          "--workers N")
    check_placement(config.scheme.value, config.workers, config.replication, config.rama_m)
    try:
        parse_agent_env(list(config.local_agent_env),
                        config.agent_processes or default_processes(max(1, config.local_agents)))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
