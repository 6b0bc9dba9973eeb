"""Deadlines on a new connection to the API server (klockproxy.proxy.upstream_deadlines); the
end-to-end cases (kubectl; an address that accepts and never answers the handshake, connects
that never complete) are in tests/e2e/test_proxy_faults.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from mitmproxy import connection, exceptions
from mitmproxy.proxy.server_hooks import ServerConnectionHookData
from mitmproxy.test import taddons, tflow
from mitmproxy.tls import TlsData

from klockproxy.proxy import upstream_deadlines
from klockproxy.proxy.upstream_deadlines import UpstreamDeadlines, deadline_cut

SHORT = 0.05
PAST = 0.2


class _Handler:
    """Stands in for mitmproxy's connection handler: records what it was told to close."""

    def __init__(self, server: connection.Server) -> None:
        self.transports = {server: object()}
        self.closed: list[connection.Server] = []

    def close_connection(self, conn: connection.Server) -> None:
        self.closed.append(conn)


def _connection(*, tls: bool = True) -> tuple[ServerConnectionHookData, _Handler, Any]:
    """A new upstream connection, not connected yet, and the proxyserver that knows it."""
    client = tflow.tclient_conn()
    server = tflow.tserver_conn()
    server.address = ("10.0.0.1", 6443)
    server.tls = tls
    server.timestamp_tls_setup = None
    server.state = connection.ConnectionState.CLOSED
    handler = _Handler(server)
    proxyserver = type("Proxyserver", (), {"connections": {client.id: handler}})()
    return ServerConnectionHookData(client=client, server=server), handler, proxyserver


def _connected(data: ServerConnectionHookData) -> None:
    data.server.state = connection.ConnectionState.OPEN


@pytest.fixture(autouse=True)
def _forget_cuts() -> Iterator[None]:
    yield
    upstream_deadlines._cut.clear()


def _context(addon: UpstreamDeadlines, proxyserver: Any) -> Any:
    tctx = taddons.context(addon)
    tctx.master.addons.get = lambda name: proxyserver if name == "proxyserver" else None  # type: ignore[method-assign]
    return tctx


async def test_a_connect_that_does_not_finish_in_time_is_closed_and_named() -> None:
    addon = UpstreamDeadlines()
    data, handler, proxyserver = _connection()
    with _context(addon, proxyserver) as tctx:
        tctx.configure(addon, klock_upstream_connect_timeout=SHORT)
        addon.server_connect(data)
        await asyncio.sleep(PAST)
    assert handler.closed == [data.server]
    assert deadline_cut(data.server.id) == "did not accept a connection within 0.05 s"


async def test_a_handshake_that_does_not_finish_in_time_is_closed_and_named() -> None:
    addon = UpstreamDeadlines()
    data, handler, proxyserver = _connection()
    with _context(addon, proxyserver) as tctx:
        tctx.configure(addon, klock_upstream_connect_timeout=SHORT, klock_upstream_tls_timeout=PAST)
        addon.server_connect(data)
        _connected(data)
        addon.server_connected(data)
        # The connect's deadline no longer applies once connected: the handshake has its own.
        await asyncio.sleep(PAST / 2)
        assert handler.closed == []
        await asyncio.sleep(PAST)
    assert handler.closed == [data.server]
    # Told once (the HTTP layer asks when the connection's failure reaches it, before or
    # after the disconnect hook).
    addon.server_disconnected(data)
    assert deadline_cut(tflow.tserver_conn().id) is None
    assert deadline_cut(data.server.id) == "did not complete the TLS handshake within 0.2 s"
    assert deadline_cut(data.server.id) is None


@pytest.mark.parametrize("end", ["connect failed", "established", "tls failed", "disconnected"])
async def test_a_phase_that_ends_in_time_stops_the_clock(end: str) -> None:
    addon = UpstreamDeadlines()
    data, handler, proxyserver = _connection()
    with _context(addon, proxyserver) as tctx:
        tctx.configure(
            addon, klock_upstream_connect_timeout=SHORT, klock_upstream_tls_timeout=SHORT
        )
        addon.server_connect(data)
        tls = TlsData(conn=data.server, context=None)  # type: ignore[arg-type]
        if end == "connect failed":
            addon.server_connect_error(data)
        else:
            _connected(data)
            addon.server_connected(data)
            if end == "established":
                data.server.timestamp_tls_setup = time.time()
                addon.tls_established_server(tls)
            elif end == "tls failed":
                addon.tls_failed_server(tls)
            else:
                addon.server_disconnected(data)
        await asyncio.sleep(PAST)
    assert handler.closed == []
    assert deadline_cut(data.server.id) is None


async def test_a_connected_plain_http_upstream_has_no_handshake_to_wait_for() -> None:
    addon = UpstreamDeadlines()
    data, handler, proxyserver = _connection(tls=False)
    with _context(addon, proxyserver) as tctx:
        tctx.configure(addon, klock_upstream_tls_timeout=SHORT)
        addon.server_connect(data)
        _connected(data)
        addon.server_connected(data)
        await asyncio.sleep(PAST)
    assert handler.closed == []


@pytest.mark.parametrize("option", ["klock_upstream_connect_timeout", "klock_upstream_tls_timeout"])
def test_the_timeouts_must_be_positive(option: str) -> None:
    addon = UpstreamDeadlines()
    with taddons.context(addon) as tctx:
        assert (addon.connect_timeout, addon.tls_timeout) == (30.0, 10.0)
        for bad in (0.0, -1.0):
            with pytest.raises(exceptions.OptionsError, match=f"{option} must be positive"):
                tctx.configure(addon, **{option: bad})
