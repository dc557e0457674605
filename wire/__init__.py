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
    errors: WireError(code) > ProtocolError > FrameError, LimitError, VectorError, RoleError, MessageError(kind, field);
            AuthError, HeaderError,
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
- Each message kind of the step has a dataclass with ``.header()`` and a ``parse_*`` that checks every field of an
  untrusted header and raises only :class:`MessageError`: :mod:`wire.messages` (STEP, DIGESTS, FETCH, VECTOR, RELAY,
  LEAVE, EVENT), :mod:`wire.job` (JOB offer and acceptance), :mod:`wire.sketch` (SKETCH). Receivers dispatch with one
  ``match msg.kind`` and parse the header of the kind they got.
- ``on_connection`` owns the connection: when it returns, the server closes it.

PS <-> agent sketch::

    import numpy as np, wire
    from wire import Kind, Codec
    from wire.messages import (DigestReport, FetchRequest, StepOrder, VectorReply, parse_digest_report,
                               parse_fetch_request, parse_step_order)

    async def on_agent(conn: wire.Connection) -> None:          # PS side, one task per agent
        grad = np.empty(d, np.float32)                           # preallocated once, reused every step
        await conn.send(Kind.STEP, StepOrder(0, 0.1, params_digest).header(), vector=encoded_params)
        report = parse_digest_report((await conn.recv(timeout=30)).header)   # agent sent DIGESTS for one file
        vec = await conn.request(Kind.FETCH, FetchRequest(0, report.file).header())
        if await vec.read_vector_into(grad) != report.digest:
            ...                                                  # this agent lied about that file

    server = await wire.serve("0.0.0.0", 0, on_agent, token=token)   # server.port; await server.close()

    conn = await wire.connect(host, port, token=token, role="agent", name="w0")   # agent side
    params = np.empty(d, np.float32)
    async for msg in conn:
        match msg.kind:
            case Kind.STEP:
                order = parse_step_order(msg.header)
                await msg.read_vector_into(params, digest=False)
                grad = compute(params)                           # off the loop
                await conn.send(Kind.DIGESTS, DigestReport(order.step, 3, wire.vector_digest(grad), None, 0.1).header())
            case Kind.FETCH:
                fetch = parse_fetch_request(msg.header)
                await conn.send_vector(Kind.VECTOR, VectorReply(fetch.step, fetch.file).header(), grad,
                                       codec=Codec.LZ4, reply_to=msg)
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
                         MessageError,
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
    "AuthError", "ConnectionClosed", "FrameError", "HeaderError", "LimitError", "MessageError", "ProtocolError",
    "RemoteError", "RoleError", "VectorError", "WireError", "WireTimeoutError", "PROTOCOL_VERSION", "VECTOR_KINDS",
    "Frame", "Kind", "Limits", "encode_frame", "parse_frame", "Server", "connect", "install_event_loop", "serve",
]
