"""A per-flow cap on request bodies mitmproxy buffers: judged writes over the API server's own
limit get a 413 Status and their body is not read any further.

A judged write must be complete before it is judged, so mitmproxy buffers its body; nothing in
mitmproxy bounds that buffer per request (``body_size_limit`` is global, answers an HTML page
and would cut large responses too). ``limit_body(flow, n)``, called from ``requestheaders``,
marks the flow; mitmproxy's own size check, which runs on every chunk it buffers, is wrapped to
read the mark: once the buffered body passes ``n`` bytes (or at the first chunk when the
announced Content-Length already does), the buffer is dropped, the client gets the 413 Status
and the request stream ends: an HTTP/1.1 connection is closed, an HTTP/2 stream reset. Bodies
with or without Content-Length (chunked, HTTP/2 DATA frames) are bounded alike.
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from typing import Any

from mitmproxy import http
from mitmproxy.net.http import status_codes
from mitmproxy.proxy.layers.http import (
    HttpStream,
    ResponseData,
    ResponseEndOfMessage,
    ResponseHeaders,
    ResponseProtocolError,
    SendHttp,
)

from klockproxy.core.status import failure, to_bytes

logger = logging.getLogger(__name__)

# The API server refuses request bodies over 3 MiB (apiserver MaxRequestBodyBytes).
MAX_JUDGED_BODY = 3 * 1024 * 1024

_KEY = "klockproxy.body_limit"
_installed = False


def limit_body(flow: http.HTTPFlow, limit: int = MAX_JUDGED_BODY) -> None:
    """Cap the body mitmproxy buffers for ``flow`` at ``limit`` bytes (see the module doc)."""
    declared = flow.request.headers.get("content-length", "")
    # An announced length over the cap is refused at the first chunk: nothing is buffered.
    over = declared.isdigit() and int(declared) > limit
    flow.metadata[_KEY] = -1 if over else limit
    install()


def install() -> None:
    """Wrap mitmproxy's body size check (once per process)."""
    global _installed
    if _installed:
        return
    original = HttpStream.check_body_size

    def check_body_size(self: HttpStream, request: bool) -> Generator[Any, Any, bool]:
        flow = getattr(self, "flow", None)
        limit = flow.metadata.get(_KEY) if request and flow is not None else None
        if isinstance(limit, int) and len(self.request_body_buf) > max(limit, 0):
            yield from _refuse(self, limit)
            return True
        result: bool = yield from original(self, request)
        return result

    HttpStream.check_body_size = check_body_size  # type: ignore[method-assign]
    _installed = True


def _refuse(stream: HttpStream, limit: int) -> Generator[Any, Any, None]:
    flow = stream.flow
    stream.request_body_buf.clear()
    status = failure(
        413,
        f"klockproxy: a lock covers this request and its body is larger than the API server "
        f"accepts ({MAX_JUDGED_BODY} bytes)",
    )
    response = http.Response.make(
        413, to_bytes(status), {"Content-Type": "application/json", "Connection": "close"}
    )
    flow.response = response
    logger.warning(
        "klockproxy: answered %s %s with 413: the request body is over %d bytes",
        flow.request.method,
        flow.request.path.split("?")[0],
        MAX_JUDGED_BODY if limit < 0 else limit,
    )
    client = stream.context.client
    yield SendHttp(ResponseHeaders(stream.stream_id, response, end_stream=False), client)
    yield SendHttp(ResponseData(stream.stream_id, response.raw_content or b""), client)
    yield SendHttp(ResponseEndOfMessage(stream.stream_id), client)
    # Stop the rest of the body: HTTP/1.1 closes the connection (the response is already
    # written, so no error page follows), HTTP/2 resets the stream.
    yield SendHttp(
        ResponseProtocolError(
            stream.stream_id, "request body too large", status_codes.CLIENT_CLOSED_REQUEST
        ),
        client,
    )
    stream.client_state = stream.state_errored
    flow.live = False
