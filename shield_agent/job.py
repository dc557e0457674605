"""What an agent is told: its own options (``shield-agent join``'s flags) and the PS's JOB, validated."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shield_model.errors import ComputeError
from wire.autocodec import parse_codec_choice

if TYPE_CHECKING:
    from shield_agent.adversary import BehaviourSpec

_MAX_FILES_PER_WORKER = 1 << 16


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

    @classmethod
    def from_header(cls, header: dict[str, Any]) -> AgentJob:
        try:
            files = header["files"]
            if not isinstance(files, list) or len(files) > _MAX_FILES_PER_WORKER:
                raise TypeError("files")
            job = cls(
                worker=as_int(header["worker"]), files=tuple(as_int(f) for f in files),
                network=as_str(header["network"]), dataset=as_str(header["dataset"]), seed=as_int(header["seed"]),
                batch_size=as_int(header["batch_size"]), num_files=as_int(header["num_files"]),
                threads=as_int(header["threads"]), codec=as_str(header["codec"]),
                codec_level=as_int(header["codec_level"]),
                synthetic_d=as_int(header["synthetic_d"]) if "synthetic_d" in header else None,
                train_samples=as_int(header["train_samples"]) if "train_samples" in header else None,
                network_digest=as_digest(header.get("network_digest")),
                dataset_digest=as_digest(header.get("dataset_digest")),
            )
        except (KeyError, TypeError) as exc:
            raise ComputeError(f"malformed JOB from the PS: {exc}") from None
        if any(not 0 <= f < job.num_files for f in job.files):
            raise ComputeError(f"JOB assigns files {list(job.files)} outside 0..{job.num_files - 1}")
        try:
            parse_codec_choice(job.codec)
        except ValueError as exc:
            raise ComputeError(f"malformed JOB from the PS: {exc}") from None
        return job


def as_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


def as_digest(value: Any) -> str | None:
    """A plug-in digest from JOB: None, or 64 lower-case hex characters."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise TypeError("a plug-in digest must be 64 hex characters")
    return value


def as_str(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 256:
        raise TypeError(f"expected a short string, got {type(value).__name__}")
    return value
