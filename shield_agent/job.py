"""What an agent is told: its own options (``shield-agent join``'s flags) and the PS's JOB, validated."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shield_model.errors import ComputeError
from wire.errors import MessageError
from wire.job import ProbeSpec, parse_job_offer

if TYPE_CHECKING:
    from shield_agent.adversary import BehaviourSpec


@dataclass(frozen=True)
class AgentOptions:
    """How to reach the PS and what this machine brings (everything else comes from the PS's JOB)."""

    host: str
    port: int
    token: str
    data_dir: str | None  # None: the cache, else the embedded copy (shield_model.zoo.sources)
    plugins: tuple[str, ...] = ()  # --plugin: the modules a PS's job may name (shield_agent.plugin_admission)
    threads: int | None = None
    name: str = ""
    reconnect: bool = True
    max_backoff: float = 30.0
    device: str = "cpu"  # cpu, cuda, cuda:N or auto (shield_model.device)
    spot_watch: bool = False  # poll IMDSv2 for a spot interruption notice and leave the PS cleanly on one
    imds: tuple[str, int] | None = None  # the metadata service (default: EC2's link-local address)
    spot_notice_file: str | None = None  # where the watcher writes the notice (shield-ops reads it over SSH)
    workers: int = 1  # worker slots in this process, each its own authenticated connection
    compute_threads: int | None = None  # the slots' compute pool (default: see shield_agent.host)
    max_refusals: int = 3  # consecutive refusals of our token before giving up
    synthetic: float | None = None  # benchmarks and tests only: seconds per file of synthetic compute (no torch)
    relay: bool = True  # serve the step's parameters to other agents (shield_agent.relay)
    relay_bind: str | None = None  # the relay server's address (default: loopback for a loopback PS, else all)
    relay_port: int = 0
    adversary: tuple[BehaviourSpec, ...] = ()  # --adversary: Byzantine behaviours (shield_agent.adversary)

    def slot_name(self, slot: int) -> str:
        """The name slot ``slot`` shows on the PS: ``name`` alone for one slot, ``name/slot`` for several."""
        if self.workers == 1:
            return self.name
        return f"{self.name or 'agent'}/{slot}"[:64]


@dataclass(frozen=True)
class AgentJob:
    """The job as the PS describes it in JOB (validated: the PS is authenticated, but we still check types)."""

    worker: int
    files: tuple[int, ...]
    network: str
    dataset: str
    seed: int
    batch_size: int
    num_files: int
    threads: int
    codec: str
    codec_level: int
    synthetic_d: int | None = None  # a synthetic job (benchmarks, tests): its parameter count
    train_samples: int | None = None  # the size of the PS's training set (an agent reading other data refuses)
    network_digest: str | None = None  # a plug-in network's identity on the PS (shield_agent.plugin_admission)
    dataset_digest: str | None = None  # a plug-in dataset's identity on the PS

    probe: ProbeSpec | None = None  # the determinism probe the PS names (shield_agent.fingerprint)

    @classmethod
    def from_header(cls, header: dict[str, Any]) -> AgentJob:
        """The PS's JOB, checked by :func:`wire.job.parse_job_offer` (ComputeError when malformed)."""
        try:
            offer = parse_job_offer(header)
        except MessageError as exc:
            raise ComputeError(f"malformed JOB from the PS: {exc}") from None
        return cls(offer.worker, offer.files, offer.network, offer.dataset, offer.seed, offer.batch_size,
                   offer.num_files, offer.threads, offer.codec, offer.codec_level, synthetic_d=offer.synthetic_d,
                   train_samples=offer.train_samples, network_digest=offer.network_digest,
                   dataset_digest=offer.dataset_digest, probe=offer.probe)
