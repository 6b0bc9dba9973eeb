"""Deadlines on a new connection to the API server: its TCP connect
(``klock_upstream_connect_timeout``) and its TLS handshake (``klock_upstream_tls_timeout``).

mitmproxy gives an upstream connection no time limit for either, and none once it is
connected but the idle timeout, which klockproxy raises to days so that idle watches and
``exec`` sessions live. An API server address whose packets are dropped (the kernel gives
up on a connect after about two minutes) or that accepts the connection and then never
answers the ClientHello (a wedged API server, a load balancer without backends) would keep
the request waiting, and kubectl with it. client-go gives up after 30 s on a connect and 10 s
on a handshake (its dialer's and its transport's ``TLSHandshakeTimeout``) and says why; so
does the proxy, with the same defaults: the connection is closed, the requests waiting on it
get a 503 Status (``upstream_errors``) whose message names the deadline, and one warning is
logged. (Before most new connections the addon's reachability probe has already tried a
connect, with a shorter timeout of its own; the connect deadline covers those it skips.)

The connection is closed through mitmproxy's own connection handler (``close_connection``,
what a layer's ``CloseConnection`` command does), found from the ``proxyserver`` addon's
table of live client connections; the layers then see the connect cancelled, or the
connection end mid-handshake, as if the API server had closed it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from mitmproxy import connection, ctx, exceptions
from mitmproxy.proxy.server_hooks import ServerConnectionHookData
from mitmproxy.tls import TlsData
from mitmproxy.utils import human

logger = logging.getLogger(__name__)

# client-go's own limits (k8s.io/client-go/transport: its dialer's Timeout and
# TLSHandshakeTimeout).
DEFAULT_CONNECT_TIMEOUT = 30.0
DEFAULT_TLS_TIMEOUT = 10.0
CONNECT_OPTION = "klock_upstream_connect_timeout"
TLS_OPTION = "klock_upstream_tls_timeout"

# Ids of upstream connections a deadline closed -> what it says of the API server ("did not
# ... within N s"), until the HTTP layer tells the requests waiting on that very connection
# that it failed (and words their answers with it), or a while after the connection is gone
# (nothing waited on it). Process-wide, as the HTTP layer (upstream_errors) has no reference
# to the addon.
_cut: dict[str, str] = {}
# mitmproxy runs the disconnect hooks and the HTTP layer's failure report in no fixed order.
_FORGET_AFTER = 60.0


def deadline_cut(connection_id: str) -> str | None:
    """What the deadline that closed upstream connection ``connection_id`` says, if one did
    (told once: the HTTP layer asks when the connection fails)."""
    return _cut.pop(connection_id, None)


class UpstreamDeadlines:
    """mitmproxy addon: close a new upstream connection whose connect or TLS handshake takes
    too long."""

    def __init__(self) -> None:
        self.connect_timeout = DEFAULT_CONNECT_TIMEOUT
        self.tls_timeout = DEFAULT_TLS_TIMEOUT
        # Server connection id -> the timer that closes it (cancelled once the phase it
        # watches ends, either way).
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def load(self, loader: Any) -> None:
        loader.add_option(
            CONNECT_OPTION,
            float,
            DEFAULT_CONNECT_TIMEOUT,
            "Seconds the API server has to accept a new connection before the proxy gives "
            "up and answers the request with a 503 Status.",
        )
        loader.add_option(
            TLS_OPTION,
            float,
            DEFAULT_TLS_TIMEOUT,
            "Seconds the API server has to complete the TLS handshake of a new connection "
            "before the proxy closes it and answers the request with a 503 Status.",
        )

    def configure(self, updated: set[str]) -> None:
        given = {
            name: float(getattr(ctx.options, name))
            for name in (CONNECT_OPTION, TLS_OPTION)
            if name in updated
        }
        # Both checked before either is taken: a refused update changes nothing.
        for name, value in given.items():
            if not value > 0:
                raise exceptions.OptionsError(f"{name} must be positive (seconds)")
        self.connect_timeout = given.get(CONNECT_OPTION, self.connect_timeout)
        self.tls_timeout = given.get(TLS_OPTION, self.tls_timeout)

    def server_connect(self, data: ServerConnectionHookData) -> None:
        """Start the connect's clock (mitmproxy connects once this hook has returned)."""
        self._start(data, self.connect_timeout, "did not accept a connection")

    def server_connected(self, data: ServerConnectionHookData) -> None:
        """Start the handshake's clock (it begins once this hook has returned)."""
        self._stop(data.server)
        self._start(data, self.tls_timeout, "did not complete the TLS handshake")

    def server_connect_error(self, data: ServerConnectionHookData) -> None:
        self._stop(data.server)

    def tls_established_server(self, data: TlsData) -> None:
        self._stop(data.conn)

    def tls_failed_server(self, data: TlsData) -> None:
        self._stop(data.conn)

    def server_disconnected(self, data: ServerConnectionHookData) -> None:
        self._stop(data.server)
        if data.server.id in _cut:
            asyncio.get_running_loop().call_later(_FORGET_AFTER, _cut.pop, data.server.id, None)

    def done(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    def _start(self, data: ServerConnectionHookData, timeout: float, failure: str) -> None:
        loop = asyncio.get_running_loop()
        self._timers[data.server.id] = loop.call_later(
            timeout, self._expire, data, f"{failure} within {timeout:g} s"
        )

    def _stop(self, conn: connection.Connection) -> None:
        timer = self._timers.pop(conn.id, None)
        if timer is not None:
            timer.cancel()

    def _expire(self, data: ServerConnectionHookData, says: str) -> None:
        server = data.server
        self._timers.pop(server.id, None)
        if server.connected and (not server.tls or server.tls_established):
            # Connected, and no handshake due (plain HTTP) or it is done: nothing to cut.
            return
        proxyserver = ctx.master.addons.get("proxyserver")
        handler = getattr(proxyserver, "connections", {}).get(data.client.id)
        if handler is None or server not in handler.transports:
            return
        _cut[server.id] = says
        logger.warning(
            "klockproxy: the API server %s %s: closed the connection",
            human.format_address(server.address),
            says,
        )
        handler.close_connection(server)
