"""The shield wire protocol: framed msgpack headers and blosc2 vector chunks over TCP. No torch here.

Layers: :mod:`wire.frames` (pure frame encode/parse, :class:`Limits`, :class:`Kind`), :mod:`wire.codec` (pure vector
chunking: :class:`Codec`, :func:`encode_vector`, :func:`decode_vector_into`), :mod:`wire.auth` (pure HMAC handshake
pieces, :class:`Role`, :data:`ROLE_SENDS`), :mod:`wire.reader` (pure receive state machine), :mod:`wire.conn`
(:class:`Connection`, the asyncio protocol) and :mod:`wire.server` (:func:`serve`, :func:`connect`). Every error
raised on purpose is a :class:`wire.errors.WireError` with a ``code``. See ``docs/wire.md`` for the byte layout.

API (all importable from ``wire``)::

    install_event_loop() -> bool
    await serve(host, port, on_connection, *, token, limits=Limits(), timeouts=Timeouts(), admit=None) -> Server
        Server.port / .host / .connections;  await Server.close(grace=5.0)
        on_connection(conn) -> Awaitable[None];  admit(role: Role, name: str) -> int (peer id; raise AuthError)
    await connect(host, port, *, token, role="agent", name="", limits=..., timeouts=...) -> Connection
    Connection: .peer (Peer(role, name, id)), .closed, .close_error, .bytes_in, .bytes_out
        await send(kind, header=None, *, vector: EncodedVector | None = None, reply_to: Message | int | None = None)
        await send_vector(kind, header, array, *, codec=Codec.LZ4, level=1, reply_to=None)
        await request(kind, header=None, *, vector=None, timeout=None) -> Message   (RemoteError on an ERROR reply)
        await reply(to: Message, kind, header=None, *, vector=None)
        await recv(timeout=None) -> Message;  async for msg in conn
        await close(reason="closed", *, code=None);  await wait_closed()
    Message: .kind, .header, .id, .reply_to, .vector (VectorDesc | None)
        await read_vector_into(dest, *, digest=True) -> bytes | None;  discard()
    encode_vector(array, codec=Codec.LZ4, level=1, *, chunk_elems=1<<20, shuffle=Shuffle.BYTE) -> EncodedVector
    decode_vector_into(encoded, dest, *, digest=True) -> bytes | None;  vector_digest(array) -> bytes
    Kind, Codec, Shuffle, Role, ROLE_SENDS, Limits, Timeouts, VECTOR_KINDS, encode_frame, parse_frame
    errors: WireError(code) > ProtocolError > FrameError, LimitError, VectorError, RoleError; AuthError, HeaderError,
            WireTimeoutError, ConnectionClosed(reason, remote_code), RemoteError(remote_code, reason)

Rules of use:

- Call :func:`install_event_loop` before ``asyncio.run`` (uvloop when installed).
- Messages that are not replies come from ``await conn.recv()`` or ``async for msg in conn`` (the loop ends when the
  connection closes; ``conn.close_error`` says why). Replies resolve ``await conn.request(...)`` instead.
- A message whose ``vector`` is set still has its payload on the wire: call ``await msg.read_vector_into(dest)``
  (``dest`` a preallocated float32 array of exactly ``msg.vector.n`` values, reused across steps; returns the BLAKE3
  digest of the raw bytes, computed while chunks arrive) or ``msg.discard()``. Nothing else is read until then.
- To send one vector to many peers encode it once (``enc = await loop.run_in_executor(None, encode_vector, params,
  Codec.LZ4)``) and ``await conn.send(Kind.STEP, hdr, vector=enc)`` per peer; ``conn.send_vector`` encodes and sends.
- Headers hold only str/int/float/bool/bytes/list/dict/None (no tuples, no numpy scalars).
- ``on_connection`` owns the connection: when it returns, the server closes it.

PS <-> agent sketch::

    import numpy as np, wire
    from wire import Kind, Codec

    async def on_agent(conn: wire.Connection) -> None:          # PS side, one task per agent
        grad = np.empty(d, np.float32)                           # preallocated once, reused every step
        reply = await conn.request(Kind.STEP, {"t": 0, "lr": 0.1}, vector=encoded_params, timeout=30)
        digests = reply.header["digests"]                        # agent replied DIGESTS
        vec = await conn.request(Kind.FETCH, {"t": 0, "file": 3})
        if await vec.read_vector_into(grad) != digests[0]:
            ...                                                  # this agent lied about file 3

    server = await wire.serve("0.0.0.0", 0, on_agent, token=token)   # server.port; await server.close()

    conn = await wire.connect(host, port, token=token, role="agent", name="w0")   # agent side
    params = np.empty(d, np.float32)
    async for msg in conn:
        if msg.kind is Kind.STEP:
            await msg.read_vector_into(params, digest=False)
            grads = compute(params)                              # off the loop
            await conn.reply(msg, Kind.DIGESTS, {"digests": [wire.vector_digest(g) for g in grads]})
        elif msg.kind is Kind.FETCH:
            await conn.send_vector(Kind.VECTOR, {"file": msg.header["file"]}, grads[0], codec=Codec.LZ4,
                                   reply_to=msg)
"""
from wire.auth import ROLE_SENDS, Role
from wire.codec import Codec, EncodedVector, Shuffle, VectorDesc, decode_vector_into, encode_vector, vector_digest
from wire.conn import Connection
from wire.digest import DIGEST_NAME, DIGEST_SIZE, StreamingDigest, digest_bytes
from wire.errors import (
                         AuthError,
                         ConnectionClosed,
                         FrameError,
                         HeaderError,
                         LimitError,
                         ProtocolError,
                         RemoteError,
                         RoleError,
                         VectorError,
                         WireError,
                         WireTimeoutError,
)
from wire.frames import PROTOCOL_VERSION, VECTOR_KINDS, Frame, Kind, Limits, encode_frame, parse_frame
from wire.message import Message, Peer, Timeouts
from wire.server import Server, connect, install_event_loop, serve

__all__ = [
    "ROLE_SENDS", "Role", "Codec", "EncodedVector", "Shuffle", "VectorDesc", "decode_vector_into", "encode_vector",
    "vector_digest",
    "Connection", "Message", "Peer", "Timeouts", "DIGEST_NAME", "DIGEST_SIZE", "StreamingDigest", "digest_bytes",
    "AuthError", "ConnectionClosed", "FrameError", "HeaderError", "LimitError", "ProtocolError", "RemoteError",
    "RoleError", "VectorError", "WireError", "WireTimeoutError", "PROTOCOL_VERSION", "VECTOR_KINDS", "Frame", "Kind",
    "Limits", "encode_frame", "parse_frame", "Server", "connect", "install_event_loop", "serve",
]
