"""LeanHttpLayer: closed upstream connections are let go of while their client connection
lives on; HTTP/2 settings and mitmproxy's layers keep their queues in small lists.

Through a real embedded mitmproxy (``start_master``) in front of a small HTTP/1.1 API server
over TLS, with the HTTP layer the addon installs (``answer_with_status``): kubectl's way of
watching over HTTP/2 (a LIST, then a watch as a second stream of the same connection) and an
HTTP/1.1 client whose idle upstream connection the API server closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ssl
import tracemalloc
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from mitmproxy import options
from mitmproxy.connection import Client
from mitmproxy.proxy import commands, events, layer
from mitmproxy.proxy.context import Context

from klockproxy.cluster.certs import CertificateAuthority
from klockproxy.proxy.lean_http import compact_queues
from klockproxy.proxy.master import RunningMaster
from klockproxy.proxy.upstream_errors import answer_with_status
from tests.proxy.support import master_in_front_of, server_pem
from tests.rawh2 import RawH2, h2_request

LIST_BODY = b"x" * 100_000


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("lean-http test CA")


class _Upstream:
    """An HTTP/1.1 API server over TLS: ``/list`` answers 100 kB, ``/watch`` answers chunked
    and sends what ``event()`` is given, ``/idle`` answers and then closes the connection (as
    an idle timeout would)."""

    def __init__(self) -> None:
        self.accepted = 0
        self.closed = 0
        self.watches: list[asyncio.StreamWriter] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1]
                if path == b"/watch":
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        b"Transfer-Encoding: chunked\r\n\r\n"
                    )
                    self.watches.append(writer)
                    await writer.drain()
                    continue
                body = LIST_BODY if path == b"/list" else b"ok"
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
                if path == b"/idle":
                    break
        self.closed += 1
        writer.close()

    async def event(self, data: bytes) -> None:
        for writer in self.watches:
            writer.write(b"%x\r\n%s\r\n" % (len(data), data))
            await writer.drain()


class _Probe:
    """The addon's HTTP layer, responses streamed (as the addon streams them), and a weak
    reference to every upstream TLS connection mitmproxy makes."""

    def __init__(self) -> None:
        self.upstream_tls: list[weakref.ref[Any]] = []

    def next_layer(self, nextlayer: Any) -> None:
        answer_with_status(nextlayer)

    def responseheaders(self, flow: Any) -> None:
        flow.response.stream = True

    def tls_start_server(self, data: Any) -> None:
        self.upstream_tls.append(weakref.ref(data.ssl_conn))


async def _start(
    tmp_path: Path, ca: CertificateAuthority, upstream: _Upstream, probe: _Probe
) -> tuple[asyncio.Server, RunningMaster]:
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(server_pem(tmp_path, ca, "upstream.pem"))
    server_ctx.set_alpn_protocols(["http/1.1"])
    server = await asyncio.start_server(upstream.serve, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    running = await master_in_front_of(tmp_path, ca, port, lambda pem: [probe])
    return server, running


async def _eventually(check: Callable[[], bool]) -> bool:
    for _ in range(100):
        gc.collect()
        if check():
            return True
        await asyncio.sleep(0.05)
    return False


async def test_an_http2_watch_after_a_list_does_not_keep_the_lists_upstream_connection(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    upstream, probe = _Upstream(), _Probe()
    server, running = await _start(tmp_path, ca, upstream, probe)
    client = await RawH2.connect(running.url, ca.cert_pem)
    try:
        listed = client.send(h2_request(running.url, "t", "GET", "/list"))
        await client.until(lambda: listed in client.ended)
        assert client.status[listed] == 200
        assert bytes(client.body[listed]) == LIST_BODY
        watch = client.send(h2_request(running.url, "t", "GET", "/watch"))
        await client.until(lambda: watch in client.status)
        assert client.status[watch] == 200
        # mitmproxy gave the LIST and the watch an upstream connection each (an HTTP/1.1
        # connection carries one request of an HTTP/2 client) and closed the LIST's.
        assert upstream.accepted == 2
        assert await _eventually(lambda: upstream.closed == 1)
        list_tls = probe.upstream_tls[0]
        # While the watch is open, the LIST's connection is gone from memory ...
        assert await _eventually(lambda: list_tls() is None)
        # ... and the watch relays each event as it comes, unbuffered.
        for n in (1, 2):
            event = b'{"type":"ADDED","n":%d}\n' % n
            await upstream.event(event)

            def arrived(event: bytes = event) -> bool:
                return event in client.body[watch]

            await client.until(arrived)
        assert watch not in client.ended
        assert probe.upstream_tls[1]() is not None
    finally:
        client.close()
        await running.stop()
        server.close()


async def _h1_get(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str
) -> tuple[bytes, bytes]:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
    return head, await reader.readexactly(length)


async def test_an_http1_client_reuses_its_upstream_connection_and_lets_a_closed_one_go(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    upstream, probe = _Upstream(), _Probe()
    server, running = await _start(tmp_path, ca, upstream, probe)
    ctx = ssl.create_default_context(cadata=ca.cert_pem.decode())
    ctx.set_alpn_protocols(["http/1.1"])
    host, port = running.url.removeprefix("https://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port), ssl=ctx)
    try:
        for _ in range(2):
            head, body = await _h1_get(reader, writer, "/small")
            assert head.startswith(b"HTTP/1.1 200") and body == b"ok"
        # Keep-alive as before: both requests went over one upstream connection.
        assert upstream.accepted == 1
        head, body = await _h1_get(reader, writer, "/idle")
        assert head.startswith(b"HTTP/1.1 200") and body == b"ok"
        # The API server closed that connection (an idle timeout): the client's connection
        # lives on, the closed upstream one is let go of ...
        assert await _eventually(lambda: upstream.closed == 1)
        first = probe.upstream_tls[0]
        assert await _eventually(lambda: first() is None)
        # ... and the next request gets a new one.
        head, body = await _h1_get(reader, writer, "/small")
        assert head.startswith(b"HTTP/1.1 200") and body == b"ok"
        assert upstream.accepted == 2
    finally:
        writer.close()
        await running.stop()
        server.close()


# ---------------------------------------------------------------------------------------------
# Small queues: HTTP/2 settings, mitmproxy's layers


def _bytes_per_object(make: Callable[[], object]) -> float:
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [make() for _ in range(100)]
        return (tracemalloc.get_traced_memory()[0] - before) / len(kept)
    finally:
        tracemalloc.stop()


def _exchange(a: h2.connection.H2Connection, b: h2.connection.H2Connection) -> list[Any]:
    """Deliver what ``a`` has to send to ``b``; ``b``'s events."""
    return list(b.receive_data(a.data_to_send()))


def test_http2_settings_are_small_and_negotiate_as_before() -> None:
    compact_queues()
    # A deque per setting made one ~4 kB; a list per setting ~1 kB.
    assert _bytes_per_object(lambda: h2.settings.Settings(client=False)) < 1500

    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    client.initiate_connection()
    server.initiate_connection()
    # A new value, pending until the peer acknowledges it (kubectl's 4 MB stream window).
    client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 4 << 20})
    assert client.local_settings.initial_window_size == 65535
    changed = [
        e for e in _exchange(client, server) if isinstance(e, h2.events.RemoteSettingsChanged)
    ]
    assert server.remote_settings.initial_window_size == 4 << 20
    assert changed
    acked = [e for e in _exchange(server, client) if isinstance(e, h2.events.SettingsAcknowledged)]
    assert acked
    assert client.local_settings.initial_window_size == 4 << 20
    # A request and its response still flow.
    client.send_headers(1, [(":method", "GET"), (":scheme", "https"), (":authority", "a"),
                            (":path", "/")], end_stream=True)  # fmt: skip
    assert any(isinstance(e, h2.events.RequestReceived) for e in _exchange(client, server))
    server.send_headers(1, [(":status", "200")], end_stream=True)
    assert any(isinstance(e, h2.events.ResponseReceived) for e in _exchange(server, client))


class _Waiting(layer.Layer):
    """A layer that opens a connection first (and so waits), then records the data it gets."""

    def __init__(self, context: Context) -> None:
        super().__init__(context)
        self.seen: list[bytes] = []

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, events.Start):
            yield commands.OpenConnection(self.context.server)
        elif isinstance(event, events.DataReceived):
            self.seen.append(event.data)


def test_a_layer_is_small_and_replays_what_arrived_while_it_waited_in_order() -> None:
    compact_queues()
    context = Context(
        Client(peername=("127.0.0.1", 1), sockname=("127.0.0.1", 2), timestamp_start=0),
        options.Options(),
    )
    # An empty deque per layer made a layer ~900 bytes; an empty list ~300.
    assert _bytes_per_object(lambda: _Waiting(context.fork())) < 600

    waiting = _Waiting(context)
    (opening,) = waiting.handle_event(events.Start())
    assert isinstance(opening, commands.OpenConnection)
    for data in (b"1", b"2", b"3"):
        assert list(waiting.handle_event(events.DataReceived(context.client, data))) == []
    assert waiting.seen == []
    list(waiting.handle_event(events.OpenConnectionCompleted(opening, None)))
    assert waiting.seen == [b"1", b"2", b"3"]
