"""mitmproxy's own error answers (upstream unreachable, TLS verification failed, connection
reset mid-answer) sent to kubectl as a Kubernetes ``Status`` instead of an HTML page.

mitmproxy reports a failed upstream connection or a broken upstream answer by sending its
client connection a ``ResponseProtocolError``; the HTTP/1 and HTTP/2 server layers turn that
into an HTML "502 Bad Gateway" page, after the ``error`` hook and beyond any addon's reach.
kubectl then prints an ``InternalError`` full of HTML, and the cause is lost in it.

:func:`answer_with_status` gives an ``HttpLayer`` a subclass whose one change is exactly
there: a ``ResponseProtocolError`` bound for a client that has not received response headers
on that stream yet is sent as a complete JSON Status response instead (503 ``ServiceUnavailable``
for mitmproxy's 502, otherwise mitmproxy's code), its message naming the API server and the
cause mitmproxy gave. Once headers were sent (a watch cut mid-stream) there is nothing to
replace: the stream is ended as mitmproxy ends it. (The subclass builds on
``lean_http.LeanHttpLayer``, which keeps per-connection memory small.)
"""

from __future__ import annotations

import logging
from typing import Any

from mitmproxy import http
from mitmproxy.net.http import status_codes
from mitmproxy.proxy import commands, events, layer
from mitmproxy.proxy.layers.http import (
    HttpLayer,
    HttpStream,
    RegisterHttpConnection,
    ResponseData,
    ResponseEndOfMessage,
    ResponseHeaders,
    ResponseProtocolError,
)

from klockproxy.core.status import failure, to_bytes
from klockproxy.proxy.lean_http import LeanHttpLayer
from klockproxy.proxy.upstream_deadlines import deadline_cut

logger = logging.getLogger(__name__)


def _is_discovery(path: str) -> bool:
    """``/api[/v1]``, ``/apis[/GROUP[/VERSION]]``, ``/version``, ``/openapi/...``."""
    parts = path.split("?", 1)[0].strip("/").split("/")
    return (
        parts[0] in ("version", "openapi")
        or (parts[0] == "api" and len(parts) <= 2)
        or (parts[0] == "apis" and len(parts) <= 3)
    )


def error_response(path: str, code: int, message: str) -> http.Response:
    """The answer for an upstream failure: a JSON Status, except on discovery paths.

    kubectl reads discovery answers without decoding a Status (client-go's discovery client
    takes the raw body): for a 503 it prints only "the server is currently unable to handle
    the request". For a 502 with a text body it prints the text, so discovery requests get
    that and the cause reaches the user either way.
    """
    if _is_discovery(path):
        return http.Response.make(
            502, message.encode("utf-8"), {"Content-Type": "text/plain; charset=utf-8"}
        )
    status_code = 503 if code == status_codes.BAD_GATEWAY else code
    return http.Response.make(
        status_code, to_bytes(failure(status_code, message)), {"Content-Type": "application/json"}
    )


class _StatusErrorsHttpLayer(LeanHttpLayer):
    """An HttpLayer answering mitmproxy's protocol errors with a Status (see the module); it
    also keeps per-connection memory small (``klockproxy.proxy.lean_http``)."""

    def event_to_child(
        self, child: layer.Layer | HttpStream, event: events.Event
    ) -> layer.CommandGenerator[None]:
        client = self.connections.get(self.context.client)
        if child is not client or client is None:
            yield from super().event_to_child(child, event)
            return
        # Streams whose response headers went to the client: theirs cannot be replaced.
        started: set[int] = self.__dict__.setdefault("_klock_started", set())
        if isinstance(event, ResponseHeaders):
            started.add(event.stream_id)
        elif isinstance(event, ResponseEndOfMessage):
            started.discard(event.stream_id)
        elif isinstance(event, ResponseProtocolError):
            # 499: the stream is being ended on purpose after an answer of ours (a judged
            # body over the limit gets its 413, then the rest of the body is cut off); it
            # is no upstream failure and must not get a second answer.
            not_upstream = (status_codes.NO_RESPONSE, status_codes.CLIENT_CLOSED_REQUEST)
            if event.stream_id in started or event.code in not_upstream:
                started.discard(event.stream_id)
            else:
                yield from self._answer(client, event)
                return
        yield from super().event_to_child(child, event)

    def register_connection(self, command: RegisterHttpConnection) -> layer.CommandGenerator[None]:
        # The requests waiting on a new upstream connection learn here that it failed (their
        # answers go out later, after the error hook): if a deadline closed it
        # (upstream_deadlines), their streams are noted for _answer to say which.
        cut = deadline_cut(command.connection.id) if command.err else None
        if cut is not None:
            noted: dict[int, str] = self.__dict__.setdefault("_klock_cut", {})
            for cmd in self.waiting_for_establishment.get(command.connection, []):
                stream = self.command_sources.get(cmd)
                if isinstance(stream, HttpStream):
                    noted[stream.stream_id] = cut
        yield from super().register_connection(command)

    def _answer(
        self, client: layer.Layer, event: ResponseProtocolError
    ) -> layer.CommandGenerator[None]:
        stream = self.streams.get(event.stream_id)
        request = stream.flow.request if stream is not None and stream.flow else None
        upstream = f"{request.scheme}://{request.host}:{request.port}" if request else "upstream"
        message = f"klockproxy: the API server {upstream} failed: {event.message}"
        cut = self.__dict__.get("_klock_cut", {}).pop(event.stream_id, None)
        if cut is not None:
            # mitmproxy's own words for it ("connection closed") would only mislead.
            message = f"klockproxy: the API server {upstream} {cut}"
        response = error_response(request.path if request else "", event.code, message)
        http1 = self.context.client.alpn != b"h2"
        if http1:
            # As mitmproxy does after its error page: the HTTP/1 connection is not reused.
            response.headers["Connection"] = "close"
        body = response.raw_content or b""
        for each in (
            ResponseHeaders(event.stream_id, response, False),
            ResponseData(event.stream_id, body),
            ResponseEndOfMessage(event.stream_id),
        ):
            yield from super().event_to_child(client, each)
        if http1:
            yield commands.CloseConnection(self.context.client)


def answer_with_status(nextlayer: layer.NextLayer) -> None:
    """Make the HttpLayer of a just-decided layer stack answer errors with a Status (and
    keep its per-connection memory small, see ``klockproxy.proxy.lean_http``).

    The layer changes class in place (``_StatusErrorsHttpLayer`` has no ``__init__`` of its own), so
    every reference to it — its parent's ``child_layer``, ``context.layers`` — stays valid.
    """
    current: Any = nextlayer.layer
    while current is not None:
        if type(current) is HttpLayer:
            current.__class__ = _StatusErrorsHttpLayer
            return
        current = getattr(current, "child_layer", None)
