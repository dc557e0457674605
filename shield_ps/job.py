"""From a :class:`ServeConfig` to everything a run needs: placement, sizes, aggregator parameters, attack plan.

Resolution checks every cross-field constraint up front (batch size against the number of files, the aggregator's
preconditions at the expected number of files, the attack's Byzantine count against K) so a bad configuration fails
before any agent is started, with a message that says what would work.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

from byzantine.aggregators import Aggregator, aggregator_params, default_byzantine_count, parse_aggregator
from byzantine.attacks import Attack
from byzantine.byzantine_sets import ByzantineChoice, ByzantineSchedule, is_group_placement, make_schedule
from byzantine.errors import AggregationError, AttackError
from byzantine.placement import Placement, Scheme, build_placement
from shield_ps.config import ServeConfig, ShortStep
from shield_ps.errors import ConfigError
from shield_ps.optimizer import Schedule
from wire.job import JobOffer

log = logging.getLogger(__name__)

#: Samples per file when ``--batch-size`` is not given.
DEFAULT_SAMPLES_PER_FILE = 10


@dataclass(frozen=True)
class JobPlan:
    """A validated run: the configuration plus everything derived from it."""

    config: ServeConfig
    placement: Placement
    batch_size: int
    aggregator: Aggregator
    aggregator_kwargs: dict[str, Any]
    schedule: Schedule
    attack: Attack | None
    byzantine: ByzantineSchedule | None
    byzantine_bound: int
    notes: tuple[str, ...] = field(default=())

    @property
    def samples_per_file(self) -> int:
        return self.batch_size // self.placement.f

    @property
    def attestation_quorum(self) -> int:
        """Members of one determinism class that must report one probe for it to set the tolerance
        (:func:`byzantine.tolerance.attestation_quorum`)."""
        from byzantine.tolerance import attestation_quorum

        return attestation_quorum(self.placement.r_prime, self.config.byzantine)

    def total_steps(self, steps_per_epoch: int) -> int:
        if self.config.max_steps is not None:
            return self.config.max_steps
        assert self.config.epochs is not None
        return self.config.epochs * steps_per_epoch

    def aggregation_kwargs(self, step: int) -> dict[str, Any]:
        """Keyword arguments for :func:`shield_ps.aggregate` at ``step`` (seeded parameters vary per step)."""
        kwargs = dict(self.aggregator_kwargs)
        if self.config.agg_threads is not None:  # threads never change the result (byzantine.aggregators)
            kwargs["threads"] = self.config.agg_threads
        if "seed" in kwargs:
            kwargs["seed"] = (self.config.seed * 1_000_003 + step) % (1 << 63)
        return kwargs

    def job_offer(self, worker: int) -> JobOffer:
        """The JOB message for ``worker``: what the agent needs to compute its files (the daemon adds the probe and
        the training set's size)."""
        c = self.config
        return JobOffer(worker, tuple(self.placement.worker_files[worker]), c.network, c.dataset, c.seed,
                        self.batch_size, self.placement.f, c.threads, c.codec, c.codec_level, synthetic_d=c.synthetic_d,
                        # a plug-in's identity: the agent checks its own copy before loading anything
                        network_digest=c.network_digest, dataset_digest=c.dataset_digest)

    def job_header(self, worker: int) -> dict[str, Any]:
        """:meth:`job_offer`'s header."""
        return self.job_offer(worker).header()


def resolve_job(config: ServeConfig) -> JobPlan:
    """Validate ``config`` and derive the run plan; raises ConfigError (or a subclass) naming what would work."""
    notes: list[str] = []
    config.validate()
    placement = build_placement(config.scheme, config.workers, config.replication, config.rama_m)
    if (config.epochs is None) == (config.max_steps is None):
        raise ConfigError("give exactly one of --epochs or --max-steps")
    batch_size = config.batch_size or DEFAULT_SAMPLES_PER_FILE * placement.f
    if batch_size % placement.f:
        lower = max(placement.f, batch_size - batch_size % placement.f)
        raise ConfigError(f"--batch-size {batch_size} must be a multiple of the number of files f={placement.f} "
                          f"of {placement.scheme.value} (e.g. {lower} or {lower + placement.f})")
    if config.local_agents > placement.K:
        raise ConfigError(f"--local-agents {config.local_agents} exceeds --workers K={placement.K}")
    if not 0 <= config.byzantine < placement.K:
        raise ConfigError(f"--byzantine q={config.byzantine} must be in 0..{placement.K - 1}")
    aggregator = parse_aggregator(config.aggregator)
    if placement.scheme is Scheme.MAJ_VOTE and aggregator is not Aggregator.MEAN:
        notes.append(f"maj_vote averages the group winners: --aggregator {aggregator.value} replaced by mean")
        aggregator = Aggregator.MEAN
    attack, byzantine = _resolve_attack(config, placement)
    bound = config.agg_s if config.agg_s is not None else default_byzantine_count(placement, config.byzantine)
    kwargs = _aggregator_kwargs(config, aggregator, bound, placement.f)
    _check_withholding(config, placement, aggregator, kwargs, attack is not None)
    schedule = Schedule(config.lr, config.gamma, config.lr_step)
    for note in notes:
        log.warning("%s", note)
    return JobPlan(config, placement, batch_size, aggregator, kwargs, schedule, attack, byzantine, bound,
                   tuple(notes))


def _resolve_attack(config: ServeConfig, placement: Placement) -> tuple[Attack | None, ByzantineSchedule | None]:
    fixed_gen = config.byzantine_gen is ByzantineChoice.FIXED
    if config.attack is None and config.byzantine > 0 and fixed_gen:
        # no simulation: the fixed workers are real Byzantine agents on the wire, named so that files_corrupted
        # counts the files they could set (shield_ps.step)
        return None, make_schedule(ByzantineChoice.FIXED, placement, config.byzantine, seed=config.seed,
                                   fixed=list(config.fixed_byzantine))
    attack = config.attack
    if attack is None or config.byzantine == 0:
        if attack is not None:
            log.warning("--attack %s with --byzantine 0: no worker is Byzantine", attack.value)
        return None, None
    if config.alie_z != "auto" and not math.isfinite(float(config.alie_z)):
        raise AttackError(f"--alie-z must be a finite number or 'auto', got {config.alie_z}")
    fixed = list(config.fixed_byzantine) if fixed_gen else None
    worst = config.byzantine_gen is ByzantineChoice.WORST
    detox = config.detox_attack if worst and is_group_placement(placement) else None
    schedule = make_schedule(config.byzantine_gen, placement, config.byzantine, seed=config.seed, fixed=fixed,
                             detox_attack=detox)
    return attack, schedule


def _check_withholding(config: ServeConfig, placement: Placement, aggregator: Aggregator, kwargs: dict[str, Any],
                       simulated: bool) -> None:
    """q Byzantine agents that withhold their replies (erasures: nothing proves who they are) drop the files where
    they hold r - r' + 1 = r' copies, c of them (the same count as the files they could win), every step. Refuse a
    configuration where the f - c files left can never be aggregated with the configured s: every update would be
    skipped and the run would fail. A simulated attack's Byzantine workers are the PS's own simulation and never
    withhold, so it is only warned about; ``--short-step lower-s`` accepts the risk explicitly."""
    q = config.byzantine
    if q == 0 or config.short_step is ShortStep.LOWER_S:
        return
    droppable = default_byzantine_count(placement, q)
    left = placement.f - droppable
    why = _rejects(aggregator, kwargs, left)
    if why is None:
        return
    message = (f"--byzantine {q}: {q} Byzantine agents can withhold the c={droppable} files where they hold r' "
               f"copies, every step, leaving {left} of f={placement.f}, and {why}: every update would be skipped. "
               "Lower --byzantine, pick an aggregator that needs fewer files (e.g. coord-median) or a placement with "
               "more files, or accept the risk with --short-step lower-s")
    if simulated:
        log.warning("%s (the simulated attack never withholds, so this run goes on)", message)
        return
    raise AggregationError(message)


def _rejects(aggregator: Aggregator, kwargs: dict[str, Any], n: int) -> str | None:
    """Why ``aggregator`` refuses n rows with ``kwargs`` (None when it accepts them)."""
    import numpy as np

    from byzantine.aggregators import aggregate

    if n <= 0:
        return "no file is left"
    probe = np.random.default_rng(0).standard_normal((n, 2)).astype(np.float32)
    small: dict[str, Any] = {k: (np.zeros(2, dtype=np.float32) if k == "center" else v) for k, v in kwargs.items()}
    try:
        aggregate(aggregator, probe, **small)
    except AggregationError as exc:
        return str(exc)
    return None


def _aggregator_kwargs(config: ServeConfig, aggregator: Aggregator, bound: int, files: int) -> dict[str, Any]:
    accepted = aggregator_params(aggregator)
    kwargs: dict[str, Any] = {}
    if "s" in accepted:
        kwargs["s"] = bound
    if "m" in accepted and config.agg_m is not None:
        kwargs["m"] = config.agg_m
    if "buckets" in accepted and config.buckets is not None:
        if not 1 <= config.buckets <= files:
            raise AggregationError(f"--buckets must be in 1..f={files}, got {config.buckets}")
        kwargs["buckets"] = config.buckets
    if "seed" in accepted:
        kwargs["seed"] = config.seed
    if aggregator is Aggregator.CENTERED_CLIPPING:
        kwargs["tau"], kwargs["iters"] = config.cc_tau, config.cc_iters
    _check_preconditions(aggregator, kwargs, files)
    return kwargs


def _check_preconditions(aggregator: Aggregator, kwargs: dict[str, Any], files: int) -> None:
    """Run the aggregator once on a tiny (f, 2) input so its n/s preconditions fail now, not at step 0."""
    import numpy as np

    from byzantine.aggregators import aggregate

    probe = np.random.default_rng(0).standard_normal((files, 2)).astype(np.float32)
    try:
        aggregate(aggregator, probe, **kwargs)
    except AggregationError as exc:
        raise AggregationError(f"{exc} (with f={files} files per step; lower --agg-s or pick another aggregator)"
                               ) from None
