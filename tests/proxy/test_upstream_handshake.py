"""The deadline on the API server's TLS handshake (klockproxy.proxy.upstream_handshake); the
end-to-end case (kubectl, an address that accepts and never answers) is in
tests/e2e/test_proxy_faults.py."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from mitmproxy import connection, exceptions
from mitmproxy.proxy.server_hooks import ServerConnectionHookData
from mitmproxy.test import taddons, tflow
from mitmproxy.tls import TlsData

from klockproxy.proxy import upstream_handshake
from klockproxy.proxy.upstream_handshake import UpstreamHandshakeDeadline, handshake_cut


class _Handler:
    """Stands in for mitmproxy's connection handler: records what it was told to close."""

    def __init__(self, server: connection.Server) -> None:
        self.transports = {server: object()}
        self.closed: list[connection.Server] = []

    def close_connection(self, conn: connection.Server) -> None:
        self.closed.append(conn)


def _connected(tls: bool = True) -> tuple[ServerConnectionHookData, _Handler, Any]:
    client = tflow.tclient_conn()
    server = tflow.tserver_conn()
    server.address = ("10.0.0.1", 6443)
    server.tls = tls
    server.timestamp_tls_setup = None
    server.state = connection.ConnectionState.OPEN
    handler = _Handler(server)
    proxyserver = type("Proxyserver", (), {"connections": {client.id: handler}})()
    return ServerConnectionHookData(client=client, server=server), handler, proxyserver


@pytest.fixture(autouse=True)
def _forget_expired() -> None:
    upstream_handshake._cut.clear()


def _context(addon: UpstreamHandshakeDeadline, proxyserver: Any) -> Any:
    tctx = taddons.context(addon)
    tctx.master.addons.get = lambda name: proxyserver if name == "proxyserver" else None  # type: ignore[method-assign]
    return tctx


async def test_a_handshake_that_does_not_finish_in_time_is_closed_and_named() -> None:
    addon = UpstreamHandshakeDeadline()
    data, handler, proxyserver = _connected()
    with _context(addon, proxyserver) as tctx:
        tctx.configure(addon, klock_upstream_tls_timeout=0.05)
        addon.server_connected(data)
        await asyncio.sleep(0.15)
    assert handler.closed == [data.server]
    # What the HTTP layer words its answer with, told once (it asks when the connection's
    # failure reaches it, before or after the disconnect hook).
    addon.server_disconnected(data)
    assert handshake_cut(tflow.tserver_conn().id) is None
    assert handshake_cut(data.server.id) == 0.05
    assert handshake_cut(data.server.id) is None


@pytest.mark.parametrize("end", ["established", "failed", "disconnected"])
async def test_a_handshake_that_ends_in_time_stops_the_clock(end: str) -> None:
    addon = UpstreamHandshakeDeadline()
    data, handler, proxyserver = _connected()
    with _context(addon, proxyserver) as tctx:
        tctx.configure(addon, klock_upstream_tls_timeout=0.05)
        addon.server_connected(data)
        tls = TlsData(conn=data.server, context=None)  # type: ignore[arg-type]
        if end == "established":
            addon.tls_established_server(tls)
        elif end == "failed":
            addon.tls_failed_server(tls)
        else:
            addon.server_disconnected(data)
        await asyncio.sleep(0.15)
    assert handler.closed == []
    assert handshake_cut(data.server.id) is None


async def test_a_plain_http_or_already_secured_upstream_is_left_alone() -> None:
    addon = UpstreamHandshakeDeadline()
    plain, plain_handler, proxyserver = _connected(tls=False)
    secured, secured_handler, _ = _connected()
    secured.server.timestamp_tls_setup = time.time()
    proxyserver.connections[secured.client.id] = secured_handler
    with _context(addon, proxyserver) as tctx:
        tctx.configure(addon, klock_upstream_tls_timeout=0.05)
        addon.server_connected(plain)
        addon.server_connected(secured)
        await asyncio.sleep(0.15)
    assert plain_handler.closed == [] and secured_handler.closed == []


def test_the_timeout_must_be_positive() -> None:
    addon = UpstreamHandshakeDeadline()
    with taddons.context(addon) as tctx:
        assert addon.timeout == 10.0
        for bad in (0.0, -1.0):
            with pytest.raises(exceptions.OptionsError, match="positive"):
                tctx.configure(addon, klock_upstream_tls_timeout=bad)
