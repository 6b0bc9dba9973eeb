"""Per-connection HTTP memory of the embedded proxy, kept small (the HTTP side of ``lean_tls``).

Measured the way kubectl opens a watch over HTTP/2 (issue 12: a new connection carries a LIST,
then a watch as a second stream of it), two things made each such watch heavier than the same
watch over HTTP/1.1:

- **Closed upstream connections stayed in memory.** mitmproxy's ``HttpLayer`` (one per client
  connection) keeps every upstream connection it opened, with its whole layer stack — the
  upstream TLS layer and its OpenSSL connection (session, the server's certificate chain,
  buffers), the HTTP/1 client layer and the last request and response it carried — in its
  ``connections`` table until the *client* disconnects, even once the upstream connection is
  closed and can never be used again (a closed connection is skipped when one is looked for).
  For an HTTP/2 client in front of an HTTP/1.1 API server (such as the sandbox), mitmproxy
  gives each request its own upstream connection and closes it once the response is in
  (HTTP/1.1 cannot multiplex): the LIST's closed connection stayed for as long as the watch
  was open (~40 to 55 kB per watch), and a long-lived HTTP/2 client piled up one per request.
  :class:`LeanHttpLayer` forgets a closed upstream connection once it is closed in both
  directions (mitmproxy has delivered its ``ConnectionClosed``, after which no event concerns
  it) and no live stream still points at it (a stream sends its request events to its upstream
  connection through that table). Connections that failed keep their entry: mitmproxy answers
  the client connection's later requests with the same error, and that is unchanged.
- **Deques for queues of one or two items.** A ``collections.deque`` takes ~700 bytes however
  little it holds. The h2 library keeps each HTTP/2 setting of each side (the current value,
  plus values not acknowledged yet) in one: ~10 kB per HTTP/2 connection. mitmproxy gives every
  protocol layer one for the events that arrive while the layer waits for a hook (empty
  nearly always): ~20 layers per watch with its connections. :func:`compact_queues` has both
  modules make a list with a ``popleft`` instead (~60 bytes): the same operations, in order.
"""

from __future__ import annotations

import collections
from typing import Any

from mitmproxy.connection import Connection, ConnectionState
from mitmproxy.proxy import events, layer
from mitmproxy.proxy.layers.http import HttpLayer

# Per-layer set of closed upstream connections waiting for their last stream to end (an
# instance attribute set lazily: the layer's class is swapped after mitmproxy built it).
_PENDING = "_klock_closed_upstreams"


class LeanHttpLayer(HttpLayer):
    """An ``HttpLayer`` that drops closed upstream connections from its table and has small
    queues used from its first connection on (see the module).

    Adds no ``__init__``: instances are made by mitmproxy as ``HttpLayer`` and change class in
    place (``klockproxy.proxy.upstream_errors.answer_with_status``).
    """

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if isinstance(event, events.Start):
            # Before the layer makes its client connection's HTTP/2 state and more layers.
            compact_queues()
        yield from super()._handle_event(event)
        pending: set[Connection] | None = self.__dict__.get(_PENDING)
        if isinstance(event, events.ConnectionClosed):
            conn = event.connection
            if (
                conn is not self.context.client
                and conn in self.connections
                and conn.state is ConnectionState.CLOSED
                and not conn.error
                and conn not in self.waiting_for_establishment
            ):
                if pending is None:
                    pending = self.__dict__.setdefault(_PENDING, set())
                pending.add(conn)
        if pending:
            self._forget(pending)

    def _forget(self, pending: set[Connection]) -> None:
        # A stream whose response ended is dropped from ``streams`` (mitmproxy routes nothing
        # to it any more): only the streams still there may send to their upstream connection.
        in_use = {stream.context.server for stream in self.streams.values()}
        for conn in list(pending):
            if conn not in in_use:
                pending.discard(conn)
                self.connections.pop(conn, None)


class _SmallQueue(list[Any]):
    """What h2's settings and mitmproxy's layers use of a ``collections.deque`` (append,
    popleft, ``[0]``, ``len``, truth), as a list: a few items never need a deque's 64-slot
    block (popleft moves the rest, a few pointers)."""

    __slots__ = ()

    def popleft(self) -> Any:
        """Remove and return the first item (as ``deque.popleft``)."""
        return self.pop(0)


class _Collections:
    """Stands in for the ``collections`` module inside a module that uses it only to make
    small queues; anything else is the real module's."""

    deque = _SmallQueue

    def __getattr__(self, name: str) -> Any:
        return getattr(collections, name)


_COLLECTIONS = _Collections()


def compact_queues() -> None:
    """Make the h2 library's HTTP/2 settings and mitmproxy's protocol layers keep their queues
    in small lists (idempotent; objects made afterwards are affected, and behave the same)."""
    import h2.settings
    from mitmproxy.proxy import layer as layer_module

    # Each refers to ``collections`` only to make those queues (h2 4.1, mitmproxy 11).
    for module in (h2.settings, layer_module):
        if getattr(module, "collections", None) is not _COLLECTIONS:
            setattr(module, "collections", _COLLECTIONS)  # noqa: B010
