"""A deadline on the TLS handshake with the API server (``klock_upstream_tls_timeout``).

mitmproxy gives an upstream connection no time limit for its TLS handshake, and none once it
is connected but the idle timeout, which klockproxy raises to days so that idle watches and
``exec`` sessions live. An API server (or a load balancer in front of one) that accepts the
TCP connection and then never answers the ClientHello would keep the request waiting, and
kubectl with it, for days. client-go gives up after 10 s (its transport's
``TLSHandshakeTimeout``) and says why; so does the proxy: an upstream connection whose TLS
handshake has not finished ``klock_upstream_tls_timeout`` seconds after it connected is
closed, the requests waiting on it get a 503 Status (``upstream_errors``) whose message
names the timeout, and one warning is logged.

The connection is closed through mitmproxy's own connection handler (``close_connection``,
what a layer's ``CloseConnection`` command does), found from the ``proxyserver`` addon's
table of live client connections; the layers then see the connection end mid-handshake, as
if the API server had closed it.
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

# client-go's transport waits as long (k8s.io/client-go/transport: TLSHandshakeTimeout).
DEFAULT_TLS_TIMEOUT = 10.0
# Ids of upstream connections a deadline closed -> the timeout that closed them, until the
# HTTP layer tells the requests waiting on that very connection that it failed (and words
# their answer with it), or a while after the connection is gone (nothing waited on it).
# Process-wide, as the HTTP layer (upstream_errors) has no reference to the addon.
_cut: dict[str, float] = {}
# mitmproxy runs the disconnect hook and the HTTP layer's failure report in no fixed order.
_FORGET_AFTER = 60.0


def handshake_cut(connection_id: str) -> float | None:
    """The timeout with which the deadline closed upstream connection ``connection_id``, if
    it did (told once: the HTTP layer asks when the connection fails)."""
    return _cut.pop(connection_id, None)


class UpstreamHandshakeDeadline:
    """mitmproxy addon: close an upstream connection whose TLS handshake takes too long."""

    def __init__(self) -> None:
        self.timeout = DEFAULT_TLS_TIMEOUT
        # Server connection id -> the timer that closes it (cancelled once the handshake
        # ends either way, or the connection does).
        self._timers: dict[str, asyncio.TimerHandle] = {}

    def load(self, loader: Any) -> None:
        loader.add_option(
            "klock_upstream_tls_timeout",
            float,
            DEFAULT_TLS_TIMEOUT,
            "Seconds the API server has to complete the TLS handshake of a new connection "
            "before the proxy closes it and answers the request with a 503 Status.",
        )

    def configure(self, updated: set[str]) -> None:
        if "klock_upstream_tls_timeout" in updated:
            timeout = ctx.options.klock_upstream_tls_timeout
            if not timeout > 0:
                raise exceptions.OptionsError(
                    "klock_upstream_tls_timeout must be a positive number of seconds"
                )
            self.timeout = float(timeout)

    def server_connected(self, data: ServerConnectionHookData) -> None:
        """Start the clock: the handshake begins once this hook has returned."""
        loop = asyncio.get_running_loop()
        self._timers[data.server.id] = loop.call_later(self.timeout, self._expire, data)

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

    def _stop(self, conn: connection.Connection) -> None:
        timer = self._timers.pop(conn.id, None)
        if timer is not None:
            timer.cancel()

    def _expire(self, data: ServerConnectionHookData) -> None:
        server = data.server
        self._timers.pop(server.id, None)
        # A plain-HTTP upstream never has a handshake; one that finished or ended is done.
        if not server.tls or server.tls_established or not server.connected:
            return
        proxyserver = ctx.master.addons.get("proxyserver")
        handler = getattr(proxyserver, "connections", {}).get(data.client.id)
        if handler is None or server not in handler.transports:
            return
        _cut[server.id] = self.timeout
        logger.warning(
            "klockproxy: the API server %s accepted a connection but did not complete the "
            "TLS handshake within %g s: closed it",
            human.format_address(server.address),
            self.timeout,
        )
        handler.close_connection(server)
