"""``--codec auto``: per link and direction, the vector codec that maximises effective throughput (pure, no sockets).

A vector of R raw bytes sent with codec c costs ``R / encode_rate(c)`` to encode (the whole vector is encoded before
its frame is written; zero for ``none``, whose chunks are views) plus ``R / (ratio(c) * link)`` on the wire, where
``link`` is the link's rate in wire bytes per second and ``ratio(c)`` the raw/wire size ratio. The receiver decodes
chunk k while chunk k+1 arrives (5-8 GB/s), so decoding is off the critical path on every link where compression can
pay. Effective throughput = R / (encode + wire); :func:`choose` picks its maximum.

Everything is measured from traffic the connection already carries: every vector frame a connection sends gives a
sample (wire bytes, seconds from the first write to the drained buffer) of its link, and every encode gives the
encode rate and ratio of that codec on this data. :class:`AutoCodec` keeps exponentially weighted averages of
them and switches codec only when another one is predicted at least :data:`HYSTERESIS` faster, so a noisy sample
does not flip the choice. Until a codec has been measured here its figures are :data:`PRIORS`, measured on real
float32 gradients on this project's reference machine (ARCHITECTURE.md): LZ4 1.07x at ~2.7 GB/s, ZSTD-1 1.18x at
~1.1 GB/s. Raw on loopback and fast links; blosc2 ZSTD on links around 1 Gbit/s and slower.

Lossless either way: the codec never changes a received value, so determinism is untouched.
"""
from __future__ import annotations

import ipaddress
import math
import time
from dataclasses import dataclass, field
from typing import Any

from wire.codec import Codec, EncodedVector, encode_vector

#: The spelling of the automatic choice on the command line and in JOB (never on the wire: a vector's descriptor
#: always names the concrete codec it was encoded with).
AUTO = "auto"
#: Codec choices the CLI accepts.
CODEC_CHOICES: tuple[str, ...] = (AUTO,) + tuple(c.value for c in Codec)
#: Vectors smaller than this (raw bytes) give no link sample: they fit in socket buffers and would time the copy.
MIN_SAMPLE_BYTES = 4 << 20
#: Weight of a new sample in the moving averages.
ALPHA = 0.3
#: Switch only to a codec predicted at least this much faster than the current one.
HYSTERESIS = 1.03
#: Level used for the blosc2 codecs under auto (level 1: the fastest, and ratios barely grow above it on floats).
AUTO_LEVEL = 1


@dataclass(frozen=True)
class CodecFigures:
    """A codec's encode rate (raw bytes per second) and raw/wire ratio."""

    encode_rate: float
    ratio: float


#: Figures before any measurement (real float32 gradients, 4 MiB chunks; ARCHITECTURE.md "Measured facts").
PRIORS: dict[Codec, CodecFigures] = {
    Codec.NONE: CodecFigures(math.inf, 1.0),
    Codec.LZ4: CodecFigures(2.7e9, 1.07),
    Codec.ZSTD: CodecFigures(1.1e9, 1.18),
}


def parse_codec_choice(text: str) -> str:
    """``text`` if it is ``auto`` or a :class:`Codec` value, else ValueError listing the choices."""
    if text not in CODEC_CHOICES:
        raise ValueError(f"unknown codec {text!r}; choose from {', '.join(CODEC_CHOICES)}")
    return text


def effective_rate(figures: CodecFigures, link_rate: float) -> float:
    """Raw bytes per second delivered through a link of ``link_rate`` wire bytes/s with a codec of ``figures``."""
    seconds_per_byte = 1.0 / figures.encode_rate + 1.0 / (figures.ratio * link_rate)
    return 1.0 / seconds_per_byte


def choose(figures: dict[Codec, CodecFigures], link_rate: float | None, current: Codec | None = None,
           hysteresis: float = HYSTERESIS) -> Codec:
    """The codec of highest :func:`effective_rate` on a link of ``link_rate`` (None: not measured yet -> none);
    ``current`` is kept unless another is more than ``hysteresis`` times faster."""
    if link_rate is None or not link_rate > 0:
        return current or Codec.NONE
    rates = {codec: effective_rate(fig, link_rate) for codec, fig in figures.items()}
    best = max(rates, key=lambda c: (rates[c], c is Codec.NONE))
    if current is not None and current in rates and rates[best] < hysteresis * rates[current]:
        return current
    return best


def is_loopback(peername: object) -> bool:
    """Whether a socket's ``peername`` (as ``get_extra_info("peername")`` gives it) is this machine."""
    try:
        return ipaddress.ip_address(peername[0]).is_loopback  # type: ignore[index]
    except (TypeError, ValueError, IndexError):
        return False


def _blend(old: float | None, new: float) -> float:
    return new if old is None else (1 - ALPHA) * old + ALPHA * new


class EncodeFigures:
    """Measured encode rate and ratio per codec. They belong to this process (its CPU, its data), not to a link,
    so every link of the process shares one :data:`PROCESS_FIGURES`; tests make their own."""

    def __init__(self) -> None:
        self.figures: dict[Codec, CodecFigures] = dict(PRIORS)
        self.measured: set[Codec] = set()

    def record(self, codec: Codec, raw_bytes: int, wire_bytes: int, seconds: float) -> None:
        """An encode of ``raw_bytes`` into ``wire_bytes`` took ``seconds`` (ignored for none and tiny vectors). The
        first measurement replaces the prior (this machine and data may be far from the reference), later ones are
        averaged in. Safe from executor threads: one dict item is replaced by a new frozen value."""
        if codec is Codec.NONE or raw_bytes < MIN_SAMPLE_BYTES or wire_bytes <= 0 or seconds <= 0:
            return
        old = self.figures[codec] if codec in self.measured else None
        self.figures[codec] = CodecFigures(_blend(old.encode_rate if old is not None else None, raw_bytes / seconds),
                                           _blend(old.ratio if old is not None else None, raw_bytes / wire_bytes))
        self.measured.add(codec)


#: The encode figures of this process.
PROCESS_FIGURES = EncodeFigures()


@dataclass
class AutoCodec:
    """The automatic codec of one direction of one link: its measured rate and current choice, and the process's
    encode figures.

    Call :meth:`pick` before encoding a vector for this link, :meth:`record_encode` after encoding it, and
    :meth:`record_send` once its frame is written. ``switches`` counts the changes of codec (for the view)."""

    link_rate: float | None = None
    encodes: EncodeFigures = field(default_factory=lambda: PROCESS_FIGURES)
    current: Codec = Codec.NONE
    switches: int = 0
    loopback: bool = False  # the peer is this machine: raw, whatever the measured rate

    def pick(self) -> Codec:
        """The codec for the next vector on this link (always raw to this machine: a loopback link's rate is the
        CPU's, which compressing only takes more of; measured here with 15 agents beside the PS, auto on loopback
        chose ZSTD for the broadcast)."""
        if self.loopback:
            return Codec.NONE
        chosen = choose(self.encodes.figures, self.link_rate, self.current)
        if chosen is not self.current:
            self.current = chosen
            self.switches += 1
        return chosen

    def record_encode(self, codec: Codec, raw_bytes: int, wire_bytes: int, seconds: float) -> None:
        """See :meth:`EncodeFigures.record`."""
        self.encodes.record(codec, raw_bytes, wire_bytes, seconds)

    def resolve(self, choice: Codec | str, level: int) -> tuple[Codec, int]:
        """The concrete (codec, level) for a vector: ``choice`` itself, or for ``auto`` :meth:`pick` at
        :data:`AUTO_LEVEL`."""
        if choice == AUTO:
            return self.pick(), AUTO_LEVEL
        return Codec(choice), level

    def encode(self, array: Any, codec: Codec, level: int, **encode_kwargs: Any) -> EncodedVector:
        """:func:`wire.codec.encode_vector`, its rate and ratio recorded (blocking)."""
        started = time.perf_counter()
        encoded = encode_vector(array, codec, level, **encode_kwargs)
        self.record_encode(codec, encoded.desc.nbytes, sum(encoded.desc.sizes), time.perf_counter() - started)
        return encoded

    def record_send(self, wire_bytes: int, seconds: float) -> None:
        """A vector frame of ``wire_bytes`` took ``seconds`` from its first write to a drained buffer."""
        if wire_bytes < MIN_SAMPLE_BYTES or seconds <= 0:
            return
        self.link_rate = _blend(self.link_rate, wire_bytes / seconds)

    def describe(self) -> dict[str, object]:
        """What the view shows: the codec, the measured link rate (bytes/s, None before a sample), the switches."""
        return {"codec": self.current.value, "link_rate": self.link_rate, "switches": self.switches}
