"""Whether this agent may train the plug-in a PS's job names, checked before anything is loaded (docs/your-model.md).

A job may name ``--network``/``--dataset MODULE:CALLABLE``. The agent imports ``MODULE`` only when its own command line
allows it (``shield-agent join --plugin MODULE``): a module named over the network is never imported on the PS's word
alone. Its copy must then be the PS's: the digest of the module's source and the callable's name
(:func:`shield_model.zoo.plugins.identify`) must equal the one in JOB. Otherwise the agent refuses with
:class:`~shield_agent.errors.PluginRefused`, whose code ``job`` ends the slot instead of reconnecting; the JOB reply
reports this copy's digests, which the PS compares too (docs/your-model.md).
"""
from __future__ import annotations

from collections.abc import Sequence

from shield_agent.errors import PluginRefused
from shield_agent.job import AgentJob
from shield_model.zoo.plugins import identify, is_plugin, parse_plugin


def check_job_plugins(job: AgentJob, allowed: Sequence[str]) -> dict[str, str]:
    """The JOB reply's fields for the job's plug-ins (``network_digest``/``dataset_digest`` of this copy; empty
    without plug-ins). Raises :class:`PluginRefused` for a module ``allowed`` does not name or a copy whose digest
    differs from the PS's (the message names the module and both digests), and PluginError when it cannot be
    imported here."""
    fields: dict[str, str] = {}
    for name, text, expected in (("network", job.network, job.network_digest),
                                 ("dataset", job.dataset, job.dataset_digest)):
        if not is_plugin(text):
            continue
        spec = parse_plugin(text, f"--{name}")
        if spec.module not in allowed:
            raise PluginRefused(f"the PS's job trains the plug-in --{name} {spec}, and this agent imports only the "
                                f"modules its --plugin flags name: join with --plugin {spec.module} (with the PS's "
                                "code installed here)")
        identity = identify(spec, f"--{name}")
        if expected is not None and identity.digest != expected:
            raise PluginRefused(f"this agent's copy of {spec.module} differs from the PS's: digest {identity.short} "
                                f"here, {expected[:16]} on the PS (--{name} {spec}); install the PS's version here")
        fields[f"{name}_digest"] = identity.digest
    return fields
