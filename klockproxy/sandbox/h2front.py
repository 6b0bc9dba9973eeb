"""An HTTP/2 front for the sandbox (the sandbox itself, aiohttp, speaks HTTP/1.1 only).

A real kube-apiserver speaks HTTP/2, and so does the proxy's upstream hop in front of one.
``H2Front`` listens for TLS (the sandbox's own server certificate), advertises ALPN ``h2``
and ``http/1.1``, and:

- on an ``h2`` connection, answers every stream by forwarding its request to the sandbox
  over HTTP/1.1 (method, path and query, end-to-end headers, body) and streaming the answer
  back as it arrives: headers, then one or more DATA frames per chunk, within the HTTP/2
  flow-control windows, so watches and ``logs -f`` stream. A client that resets a stream
  (kubectl leaving a watch) closes its sandbox request. Upgrades (``Connection: Upgrade``,
  ``CONNECT``, extended CONNECT) are answered with a 501 Status: the front relays no
  upgraded connections.
- on an ``http/1.1`` connection (or no ALPN), relays the bytes unchanged to the sandbox over
  a new TLS connection (so HTTP/1.1 clients, including exec/attach upgrades, see the
  sandbox itself).

The front cannot forward client certificates (it does not request them): through it, only
bearer tokens authenticate; a request without credentials gets whatever the sandbox answers
(401).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import ssl
from collections.abc import Iterable

import aiohttp
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from klockproxy.core.status import failure, to_bytes

logger = logging.getLogger(__name__)

# Headers that describe one hop, never forwarded (RFC 9110 7.6.1, plus HTTP/2's rules).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)
# Also not copied to the sandbox request: the client session frames the body itself.
NOT_FORWARDED = HOP_BY_HOP | frozenset(
    {
        "content-length",
    }
)
READ_SIZE = 65536
# How many served h2 requests ``H2Front.requests`` remembers (method, path).
REQUEST_HISTORY = 1000
MAX_STREAMS = 1000
# Request bodies are read whole before forwarding; past this (well above the sandbox's own
# 3 MiB limit, which answers 413 itself) the front stops reading and answers 413.
MAX_REQUEST_BODY = 8 * 1024 * 1024


class _Stream:
    """One HTTP/2 request being received, then answered."""

    def __init__(self, headers: list[tuple[str, str]]) -> None:
        self.headers = headers
        self.body = bytearray()
        self.task: asyncio.Task[None] | None = None
        self.answered = False
        self.too_large = False


class _H2Connection:
    """One client connection speaking HTTP/2; each stream is answered by its own task."""

    def __init__(
        self,
        front: H2Front,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.front = front
        self.reader = reader
        self.writer = writer
        config = h2.config.H2Configuration(
            client_side=False,
            header_encoding="utf-8",
            # Upgrade requests carry connection-specific headers; read them to refuse them
            # with a Status instead of tearing the connection down.
            validate_inbound_headers=False,
        )
        self.conn = h2.connection.H2Connection(config=config)
        self.streams: dict[int, _Stream] = {}
        self.window_opened = asyncio.Event()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    def _window_changed(self) -> None:
        event, self.window_opened = self.window_opened, asyncio.Event()
        event.set()

    async def run(self) -> None:
        self.conn.initiate_connection()
        # As many concurrent streams (watches) as a client may open through a proxy.
        self.conn.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS})
        self.flush()
        try:
            while True:
                data = await self.reader.read(READ_SIZE)
                if not data:
                    break
                try:
                    events = self.conn.receive_data(data)
                except h2.exceptions.ProtocolError as e:
                    logger.debug("h2 front: protocol error from a client: %s", e)
                    self.flush()
                    break
                for event in events:
                    if self._handle(event):
                        self.flush()
                        return
                self.flush()
                await self.writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            for stream in self.streams.values():
                if stream.task is not None:
                    stream.task.cancel()
            tasks = [s.task for s in self.streams.values() if s.task is not None]
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            self._window_changed()

    def _handle(self, event: h2.events.Event) -> bool:
        """React to one event; True when the connection is over."""
        if isinstance(event, h2.events.RequestReceived):
            headers = [(_text(k), _text(v)) for k, v in event.headers or ()]
            self.streams[_sid(event.stream_id)] = _Stream(headers)
        elif isinstance(event, h2.events.DataReceived):
            sid = _sid(event.stream_id)
            stream = self.streams.get(sid)
            if stream is not None and event.data and not stream.too_large:
                stream.body.extend(event.data)
                if len(stream.body) > MAX_REQUEST_BODY:
                    stream.too_large = True
                    stream.body = bytearray()
            self.conn.acknowledge_received_data(event.flow_controlled_length or 0, sid)
        elif isinstance(event, h2.events.StreamEnded):
            sid = _sid(event.stream_id)
            stream = self.streams.get(sid)
            if stream is not None and stream.task is None:
                stream.task = asyncio.create_task(self._answer(sid, stream))
        elif isinstance(event, h2.events.StreamReset):
            stream = self.streams.pop(_sid(event.stream_id), None)
            if stream is not None and stream.task is not None:
                stream.task.cancel()
        elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            self._window_changed()
        elif isinstance(event, h2.events.ConnectionTerminated):
            return True
        return False

    async def _answer(self, sid: int, stream: _Stream) -> None:
        try:
            await self._forward(sid, stream)
        except asyncio.CancelledError:
            raise
        except h2.exceptions.StreamClosedError:
            pass
        except (aiohttp.ClientError, OSError) as e:
            logger.warning("h2 front: the sandbox request failed: %s", type(e).__name__)
            if stream.answered:
                self._try_reset(sid)
            else:
                with contextlib.suppress(h2.exceptions.H2Error):
                    await self._send_status(sid, 502, "the sandbox did not answer")
        finally:
            self.streams.pop(sid, None)
            self.flush()

    def _try_reset(self, sid: int) -> None:
        with contextlib.suppress(h2.exceptions.H2Error):
            self.conn.reset_stream(sid, error_code=h2.errors.ErrorCodes.INTERNAL_ERROR)

    async def _forward(self, sid: int, stream: _Stream) -> None:
        pseudo = {k: v for k, v in stream.headers if k.startswith(":")}
        method = pseudo.get(":method", "GET")
        path = pseudo.get(":path", "/")
        if method == "CONNECT" or ":protocol" in pseudo or _wants_upgrade(stream.headers):
            await self._send_status(sid, 501, "the sandbox's HTTP/2 front does not relay upgrades")
            return
        if stream.too_large:
            await self._send_status(sid, 413, "the request body is too large")
            return
        headers = [(k, v) for k, v in stream.headers if not k.startswith(":")]
        headers = [(k, v) for k, v in headers if k not in NOT_FORWARDED]
        self.front.record(method, path)
        session = self.front.session()
        async with session.request(
            method,
            self.front.backend_url + path,
            headers=headers,
            data=bytes(stream.body) if stream.body else None,
            allow_redirects=False,
            skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
        ) as resp:
            answer = [(":status", str(resp.status))]
            answer += [
                (k.lower(), v) for k, v in resp.headers.items() if k.lower() not in HOP_BY_HOP
            ]
            self.conn.send_headers(sid, answer)
            stream.answered = True
            self.flush()
            async for chunk in resp.content.iter_any():
                await self._send_data(sid, chunk)
            self.conn.end_stream(sid)
            self.flush()

    async def _send_status(self, sid: int, code: int, message: str) -> None:
        body = to_bytes(failure(code, message))
        self.conn.send_headers(
            sid,
            [
                (":status", str(code)),
                ("content-type", "application/json"),
                ("content-length", str(len(body))),
            ],
        )
        await self._send_data(sid, body)
        self.conn.end_stream(sid)
        self.flush()

    async def _send_data(self, sid: int, data: bytes) -> None:
        """Send ``data`` on the stream as the flow-control windows allow."""
        view = memoryview(data)
        while view:
            allowed = min(
                self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size
            )
            if allowed <= 0:
                await self.window_opened.wait()
                continue
            self.conn.send_data(sid, bytes(view[:allowed]))
            view = view[allowed:]
            self.flush()
            await self.writer.drain()


def _sid(stream_id: int | None) -> int:
    return int(stream_id or 0)


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _wants_upgrade(headers: Iterable[tuple[str, str]]) -> bool:
    for name, value in headers:
        if name == "upgrade":
            return True
        if name == "connection" and "upgrade" in value.lower():
            return True
    return False


class H2Front:
    """The HTTP/2 front on ``host:port`` (0 = a free port) for the sandbox at ``backend_url``.

    ``server_ssl``: the TLS context to serve (the sandbox's certificate); its ALPN protocols
    are set here. ``backend_ssl``: how to reach the sandbox (trusting its CA). ``streams``
    counts the HTTP/2 requests forwarded, ``requests`` remembers their method and path, and
    ``protocols`` the ALPN protocol of each connection ("" for none).
    """

    def __init__(
        self,
        backend_url: str,
        server_ssl: ssl.SSLContext,
        backend_ssl: ssl.SSLContext,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.backend_url = backend_url.rstrip("/")
        self.server_ssl = server_ssl
        self.server_ssl.set_alpn_protocols(["h2", "http/1.1"])
        self.backend_ssl = backend_ssl
        self.host = host
        self.port = port
        self.streams = 0
        self.requests: collections.deque[tuple[str, str]] = collections.deque(
            maxlen=REQUEST_HISTORY
        )
        self.protocols: list[str] = []
        self._server: asyncio.Server | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepting: set[asyncio.Task[object]] = set()
        self._stopping = False

    def record(self, method: str, path: str) -> None:
        """Count one forwarded HTTP/2 request."""
        self.streams += 1
        self.requests.append((method, path))

    def session(self) -> aiohttp.ClientSession:
        """The pooled HTTP/1.1 client session to the sandbox (created on first use)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                # No cap on concurrent requests (aiohttp's default is 100): each open watch
                # holds one, and a kube-apiserver does not count watches against its limits.
                connector=aiohttp.TCPConnector(ssl=self.backend_ssl, limit=0),
                auto_decompress=False,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            )
        return self._session

    async def start(self) -> None:
        """Listen; ``self.port`` is then the bound port."""
        self._server = await asyncio.start_server(
            self._accept, self.host, self.port, ssl=self.server_ssl
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        logger.info("sandbox HTTP/2 front listening on port %d", self.port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The connection's work runs in its own task, which stop() cancels; this callback
        # always returns normally (asyncio's stream server logs callbacks that end cancelled).
        me = asyncio.current_task()
        if me is not None:
            self._accepting.add(me)
        work = asyncio.create_task(self._serve_connection(reader, writer))
        self._tasks.add(work)
        try:
            await asyncio.wait({work})
        finally:
            self._tasks.discard(work)
            if self._stopping:
                # No TLS close_notify exchange (it may wait for a busy client): just close.
                writer.transport.abort()
            else:
                writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            if me is not None:
                self._accepting.discard(me)

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            ssl_object = writer.get_extra_info("ssl_object")
            protocol = (ssl_object.selected_alpn_protocol() if ssl_object else None) or ""
            self.protocols.append(protocol)
            if protocol == "h2":
                await _H2Connection(self, reader, writer).run()
            else:
                await self._relay(reader, writer)
        except (ConnectionError, ssl.SSLError, OSError) as e:
            logger.debug("h2 front: connection ended: %s", type(e).__name__)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """HTTP/1.1 (or no ALPN): relay the bytes to the sandbox and back, unchanged."""
        host, _, port = self.backend_url.removeprefix("https://").rpartition(":")
        up_reader, up_writer = await asyncio.open_connection(
            host.strip("[]"),
            int(port),
            ssl=self.backend_ssl,
            server_hostname=host.strip("[]"),
        )

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(READ_SIZE):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, ssl.SSLError, OSError):
                return

        pipes = [
            asyncio.create_task(pipe(reader, up_writer)),
            asyncio.create_task(pipe(up_reader, writer)),
        ]
        try:
            # One side is done (TLS has no half-close): end the other.
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for p in pipes:
                p.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            up_writer.close()
            with contextlib.suppress(Exception):
                await up_writer.wait_closed()

    async def stop(self) -> None:
        """Stop listening, end every open connection and stream, close the client session."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        # The accept callbacks then close their sockets and return.
        accepting = list(self._accepting)
        if accepting:
            await asyncio.gather(*accepting, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        if self._session is not None:
            await self._session.close()
            self._session = None


def backend_context(ca_pem: bytes) -> ssl.SSLContext:
    """A client TLS context trusting the sandbox CA, speaking HTTP/1.1."""
    ctx = ssl.create_default_context(cadata=ca_pem.decode())
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


__all__ = ["HOP_BY_HOP", "H2Front", "backend_context"]
