"""The JOB messages (pure): the PS's offer to a new agent and the agent's acceptance, typed and validated.

::

    PS -> agent   JOB {"worker", "files", "network", "dataset", "seed", "batch_size", "num_files", "threads", "codec",
                       "codec_level"[, "synthetic_d"][, "network_digest"][, "dataset_digest"][, "probe": {"step",
                       "file", "seed", "rows", "width"}][, "train_samples"]}          (a request)
    agent -> PS   JOB {"num_params", "worker"[, "environment": {...}, "probe_digest", "probe_sketch", "probe_norm"]
                       [, "relay_port", "relay_id"][, "network_digest"][, "dataset_digest"]}    (its reply)

The optional fields are additive: a peer that does not know one omits it, and a reader that does not know one ignores
it. A malformed field raises :class:`~wire.errors.MessageError` whose ``field`` names it (the PS answers a bad
fingerprint field differently from a bad parameter count). Whether the numbers fit the receiver's own job (the
parameter count, the probe's sketch size, the plug-in digests) is the receiver's check.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from wire import fields
from wire.autocodec import parse_codec_choice
from wire.digest import DIGEST_SIZE
from wire.errors import MessageError
from wire.sketch import MAX_SKETCH_BYTES, SketchHeaderError, SketchRequest, parse_sketch_request

#: The longest network or dataset name (or plug-in reference) in JOB.
MAX_NAME_CHARS = 256
#: The most threads a JOB may ask for per agent, and the most entries of an agent's environment.
MAX_THREADS = 4096
MAX_ENV_ITEMS = 32
MAX_ENV_KEY_CHARS = 64
MAX_ENV_CHARS = 160
RELAY_ID_SIZE = 16
#: The JOB reply's fields that make up an agent's determinism fingerprint (shield_ps.classes).
FINGERPRINT_FIELDS = frozenset({"environment", "probe_digest", "probe_sketch", "probe_norm"})
_KIND = "job"


@dataclass(frozen=True)
class ProbeSpec:
    """The probe a JOB names: the gradient of ``file`` of ``step`` at the job's initial parameters, sketched under
    ``seed`` to ``rows`` x ``width``."""

    step: int
    file: int
    seed: bytes
    rows: int
    width: int

    def header(self) -> dict[str, Any]:
        return {"step": self.step, "file": self.file, "seed": self.seed, "rows": self.rows, "width": self.width}


@dataclass(frozen=True)
class JobOffer:
    """The PS's JOB: what worker ``worker`` computes and how."""

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
    network_digest: str | None = None  # a plug-in network's identity on the PS
    dataset_digest: str | None = None  # a plug-in dataset's identity on the PS
    probe: ProbeSpec | None = None  # the determinism probe (an older PS names none)
    train_samples: int | None = None  # the size of the PS's training set

    def header(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "worker": self.worker, "files": list(self.files), "network": self.network, "dataset": self.dataset,
            "seed": self.seed, "batch_size": self.batch_size, "num_files": self.num_files, "threads": self.threads,
            "codec": self.codec, "codec_level": self.codec_level}
        optional = {"synthetic_d": self.synthetic_d, "network_digest": self.network_digest,
                    "dataset_digest": self.dataset_digest,
                    "probe": None if self.probe is None else self.probe.header(),
                    "train_samples": self.train_samples}
        out.update((key, value) for key, value in optional.items() if value is not None)
        return out


@dataclass(frozen=True)
class JobFingerprint:
    """The determinism fingerprint in an agent's JOB reply (all optional: an older agent sends none): its environment,
    the digest of the probe gradient, and that gradient's sketch (float64 little-endian) and L2 norm."""

    environment: dict[str, str | int | float | bool] | None = None
    probe_digest: bytes | None = None
    probe_sketch: bytes | None = None  # None: no probe, or its gradient is not finite
    probe_norm: float | None = None

    def header(self) -> dict[str, Any]:
        optional = {"environment": None if self.environment is None else dict(self.environment),
                    "probe_digest": self.probe_digest, "probe_sketch": self.probe_sketch,
                    "probe_norm": self.probe_norm}
        return {key: value for key, value in optional.items() if value is not None}


@dataclass(frozen=True)
class JobAccept:
    """An agent's JOB reply: its parameter count, its fingerprint, where it serves relays, its plug-ins' digests."""

    num_params: int
    worker: int
    fingerprint: JobFingerprint = JobFingerprint()
    relay_port: int | None = None
    relay_id: bytes | None = None
    network_digest: str | None = None
    dataset_digest: str | None = None

    def header(self) -> dict[str, Any]:
        out: dict[str, Any] = {"num_params": self.num_params, "worker": self.worker, **self.fingerprint.header()}
        optional = {"relay_port": self.relay_port, "relay_id": self.relay_id, "network_digest": self.network_digest,
                    "dataset_digest": self.dataset_digest}
        out.update((key, value) for key, value in optional.items() if value is not None)
        return out


def parse_probe_spec(value: object) -> ProbeSpec:
    """A JOB's ``probe`` field (checked as the SKETCH it announces)."""
    if type(value) is not dict:
        raise MessageError(_KIND, "probe", "must be a map")
    try:
        request: SketchRequest = parse_sketch_request({**value, "files": [value.get("file")]}, fields.MAX_FILES)
    except SketchHeaderError as exc:
        raise MessageError(_KIND, "probe", f"is not a valid sketch request: {exc}") from None
    return ProbeSpec(request.step, request.files[0], request.seed, request.rows, request.width)


def parse_job_offer(header: dict[str, Any]) -> JobOffer:
    """A PS's JOB (agent side): every file within ``0..num_files-1``, a codec the wire knows."""
    num_files = fields.integer(header, _KIND, "num_files", 1, fields.MAX_FILES)
    files = header.get("files")
    if type(files) is not list or len(files) > fields.MAX_FILES:
        raise MessageError(_KIND, "files", f"must be a list of at most {fields.MAX_FILES} files")
    if any(type(f) is not int or not 0 <= f < num_files for f in files):
        raise MessageError(_KIND, "files", f"must hold integers in 0..{num_files - 1}")
    codec = fields.text(header, _KIND, "codec", MAX_NAME_CHARS)
    try:
        parse_codec_choice(codec)
    except ValueError as exc:
        raise MessageError(_KIND, "codec", str(exc)) from None
    probe = header.get("probe")
    return JobOffer(
        worker=fields.integer(header, _KIND, "worker"), files=tuple(files),
        network=fields.text(header, _KIND, "network", MAX_NAME_CHARS),
        dataset=fields.text(header, _KIND, "dataset", MAX_NAME_CHARS),
        seed=fields.integer(header, _KIND, "seed", -fields.MAX_INT - 1),
        batch_size=fields.integer(header, _KIND, "batch_size", 1), num_files=num_files,
        threads=fields.integer(header, _KIND, "threads", 0, MAX_THREADS), codec=codec,
        codec_level=fields.integer(header, _KIND, "codec_level", -128, 128),
        synthetic_d=fields.optional_integer(header, _KIND, "synthetic_d", 1),
        network_digest=fields.hex_digest(header, _KIND, "network_digest"),
        dataset_digest=fields.hex_digest(header, _KIND, "dataset_digest"),
        probe=None if probe is None else parse_probe_spec(probe),
        train_samples=fields.optional_integer(header, _KIND, "train_samples"))


def _environment(header: dict[str, Any]) -> dict[str, str | int | float | bool] | None:
    if header.get("environment") is None:
        return None
    env = fields.mapping(header, _KIND, "environment")
    if len(env) > MAX_ENV_ITEMS:
        raise MessageError(_KIND, "environment", f"must be a map of at most {MAX_ENV_ITEMS} entries")
    for key, value in env.items():
        if (len(key) > MAX_ENV_KEY_CHARS or type(value) not in (str, int, float, bool)
                or len(str(value)) > MAX_ENV_CHARS):
            raise MessageError(_KIND, "environment", f"entry {key[:64]!r} is not a short plain value")
    return dict(env)


def parse_job_fingerprint(header: dict[str, Any]) -> JobFingerprint:
    """The fingerprint fields of an agent's JOB reply; the probe sketch's size and finiteness are the PS's to check
    (it knows the sketch it asked for)."""
    environment = _environment(header)
    probe_digest = fields.optional_blob(header, _KIND, "probe_digest", DIGEST_SIZE)
    sketch = header.get("probe_sketch")
    if sketch is not None and (type(sketch) is not bytes or not 0 < len(sketch) <= MAX_SKETCH_BYTES):
        raise MessageError(_KIND, "probe_sketch", f"must be 1..{MAX_SKETCH_BYTES} bytes")
    norm = fields.optional_number(header, _KIND, "probe_norm", 0.0)
    if sketch is not None and norm is None:
        raise MessageError(_KIND, "probe_norm", "must be a finite number given with probe_sketch")
    return JobFingerprint(environment, probe_digest, sketch, norm)


def parse_job_accept(header: dict[str, Any]) -> JobAccept:
    """An agent's JOB reply (PS side). The fingerprint is checked first, so a reply bad in both is reported as a bad
    fingerprint (``MessageError.field`` in :data:`FINGERPRINT_FIELDS`)."""
    fingerprint = parse_job_fingerprint(header)
    return JobAccept(
        num_params=fields.integer(header, _KIND, "num_params"), worker=fields.integer(header, _KIND, "worker"),
        fingerprint=fingerprint, relay_port=fields.optional_integer(header, _KIND, "relay_port", 1, 65535),
        relay_id=fields.optional_blob(header, _KIND, "relay_id", RELAY_ID_SIZE),
        network_digest=fields.hex_digest(header, _KIND, "network_digest"),
        dataset_digest=fields.hex_digest(header, _KIND, "dataset_digest"))
