"""The PS's side of your own model (``--network``/``--dataset MODULE:CALLABLE``, docs/your-model.md).

- :func:`resolve_plugins`: once, before anything is created or started, import the plug-ins, load the dataset, build
  the network and run it on two samples (:func:`shield_model.zoo.plugin_data.check_model`), and record each
  plug-in's identity (the digest of its module's source and the callable's name) in the configuration, so the
  config hash covers the code: ``--resume`` with changed plug-in code is refused, naming it.
- :func:`job_fields`: the identities in JOB, so an agent checks its own copy before it loads anything.
- :func:`refusal`: the identities an agent's JOB reply reports, compared with the PS's (close code ``job``: final).
- :func:`agent_args`: ``--plugin MODULE`` for the agents this PS starts or prints a join command for (an agent imports
  no module a PS names unless its own command line allows it).
"""
from __future__ import annotations

import re
from typing import Any

from shield_ps.config import ServeConfig
from shield_ps.errors import ConfigError
from wire.job import JobAccept

#: ServeConfig field of the digest -> the field that names the plug-in (and the JOB field of both)
_FIELDS = {"network_digest": "network", "dataset_digest": "dataset"}
_HEX = re.compile(r"^[0-9a-f]{64}$")


def plugin_specs(config: ServeConfig) -> dict[str, Any]:
    """``{"network": PluginSpec, ...}`` for the fields of ``config`` that name plug-ins (none for a synthetic job);
    ConfigError for a malformed one."""
    from shield_model.errors import ShieldModelError
    from shield_model.zoo.plugins import is_plugin, parse_plugin

    if config.synthetic_d is not None:
        return {}
    try:
        return {name: parse_plugin(getattr(config, name), f"--{name}") for name in _FIELDS.values()
                if is_plugin(getattr(config, name))}
    except ShieldModelError as exc:
        raise ConfigError(str(exc)) from None


def resolve_plugins(config: ServeConfig, data_dir: str | None) -> ServeConfig:
    """Check the plug-ins ``config`` names against the data in ``data_dir`` and return ``config`` with their
    digests; ConfigError (one line) saying what failed. A configuration without plug-ins is returned as it is."""
    from shield_model.errors import ShieldModelError
    from shield_model.zoo.plugin_data import check_model
    from shield_model.zoo.plugins import identify

    specs = plugin_specs(config)
    if not specs:
        return config
    try:
        digests = {digest: identify(specs[name], f"--{name}").digest for digest, name in _FIELDS.items()
                   if name in specs}
        check_model(config.network, config.dataset, data_dir or "", config.seed)
    except ShieldModelError as exc:
        raise ConfigError(str(exc)) from None
    return config.replace(**digests)


def job_fields(config: ServeConfig) -> dict[str, str]:
    """The JOB fields naming the plug-ins' identities (``network_digest``, ``dataset_digest``; none without
    plug-ins)."""
    return {digest: getattr(config, digest) for digest in _FIELDS if getattr(config, digest) is not None}


def refusal(config: ServeConfig, reply: JobAccept) -> str | None:
    """Why an agent whose JOB reply is ``reply`` must be refused (its copy of a plug-in differs, or it says nothing
    of one), or None. The reason names the module and both digests."""
    for digest, name in _FIELDS.items():
        ours = getattr(config, digest)
        if ours is None:
            continue
        theirs = getattr(reply, digest)
        module = getattr(config, name).split(":", 1)[0]
        if not isinstance(theirs, str) or not _HEX.match(theirs):
            return (f"the job's --{name} is the plug-in {getattr(config, name)} (digest {ours[:16]}), and the agent "
                    "reports no copy of it: update the agent")
        if theirs != ours:
            return (f"the agent's copy of {module} differs from the PS's: digest {theirs[:16]} there, {ours[:16]} "
                    f"here (--{name} {getattr(config, name)}); install the PS's version on the agent")
    return None


def check_unchanged(recorded: dict[str, Any]) -> None:
    """ConfigError naming a plug-in whose code here differs from what a run recorded (its checkpoint's configuration
    ``recorded``): its parameters would be loaded into another model."""
    from shield_model.errors import ShieldModelError
    from shield_model.zoo.plugins import identify, parse_plugin

    for digest, name in _FIELDS.items():
        if recorded.get(digest) is None:
            continue
        try:
            here = identify(parse_plugin(str(recorded.get(name)), f"--{name}"), f"--{name}").digest
        except ShieldModelError as exc:
            raise ConfigError(str(exc)) from None
        if here != recorded[digest]:
            raise ConfigError(f"the code of {name} {recorded[name]} changed since the run ({recorded[digest][:16]} -> "
                              f"{here[:16]}): use the run's version of {recorded[name].split(':', 1)[0]}")


def agent_args(config: ServeConfig) -> list[str]:
    """``--plugin MODULE`` for each plug-in module of the job (for local agents and the printed join command)."""
    modules = sorted({spec.module for spec in plugin_specs(config).values()})
    return [arg for module in modules for arg in ("--plugin", module)]
