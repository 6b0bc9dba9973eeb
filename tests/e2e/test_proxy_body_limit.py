"""Judged bodies over the API server's own limit (3 MiB) are refused with a 413 Status before
they are buffered: the proxy stops reading, so a 50 MB PATCH is never read whole (with a
Content-Length, and chunked without one)."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import ssl
from collections.abc import Iterator
from urllib.parse import urlsplit

import h2.events
import pytest
import yaml

from tests.e2e import proxy_support as support
from tests.e2e.kube import Kubectl
from tests.e2e.proxy_support import Locks, Proxy, labels
from tests.rawh2 import RawH2, h2_request

pytestmark = pytest.mark.e2e

proxy = support.proxy
locks = support.locks

BIG = 50 * 1024 * 1024
CHUNK = 64 * 1024


@pytest.fixture
def red_pod(kubectl: Kubectl, namespace: str, locks: Locks) -> Iterator[str]:
    kubectl(
        "run", "my-pod", "--image", "nginx", "--labels", "aura=red", namespace=namespace, check=True
    )  # fmt: skip
    locks.add("lockred", ["UPDATE"], {"aura": "red"})
    yield f"/api/v1/namespaces/{namespace}/pods/my-pod"


def _send_big_patch(proxy: Proxy, path: str, *, chunked: bool) -> tuple[bytes, int]:
    """PATCH ``path`` with a 50 MB merge patch; what the proxy answered and how many body
    bytes it took before it stopped reading."""
    config = yaml.safe_load(proxy.thread.kubeconfig_path.read_text())
    cluster = config["clusters"][0]["cluster"]
    url = urlsplit(cluster["server"])
    context = ssl.create_default_context(
        cadata=base64.b64decode(cluster["certificate-authority-data"]).decode()
    )
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {BIG}"
    head = (
        f"PATCH {path} HTTP/1.1\r\nHost: {url.hostname}\r\n"
        f"Authorization: Bearer {proxy.thread.client_token}\r\n"
        f"Content-Type: application/merge-patch+json\r\n{framing}\r\n\r\n"
    ).encode()
    sent = 0
    address = (url.hostname or "127.0.0.1", url.port or 443)
    with (
        socket.create_connection(address, 60) as raw,
        context.wrap_socket(raw, server_hostname=url.hostname) as tls,
    ):
        tls.sendall(head)
        piece = b" " * CHUNK
        try:
            while sent < BIG:
                data = f"{CHUNK:x}\r\n".encode() + piece + b"\r\n" if chunked else piece
                tls.sendall(data)
                sent += CHUNK
            if chunked:
                tls.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the proxy stopped reading and closed the connection
        answer = b""
        try:
            while chunk := tls.recv(65536):
                answer += chunk
        except OSError:
            pass
    return answer, sent


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_judged_body_over_the_limit_is_refused_unread(
    proxy: Proxy, kubectl: Kubectl, namespace: str, red_pod: str, chunked: bool
) -> None:
    answer, sent = _send_big_patch(proxy, red_pod, chunked=chunked)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), answer[:300]
    status = json.loads(body)
    assert status["kind"] == "Status"
    assert status["code"] == 413
    assert "larger than the API server accepts" in status["message"]
    # The proxy stopped reading: the client could not hand over the whole body.
    assert sent < BIG
    assert labels(kubectl, namespace, "pod", "my-pod") == {"aura": "red"}


async def _send_big_patch_h2(proxy: Proxy, path: str) -> tuple[int | None, bytes, int]:
    """The same over HTTP/2 with no content-length, sent as a client does: DATA frames while
    reading what comes back, stopping when the stream ends or is reset. The status and body
    answered and how many body bytes were sent."""
    config = yaml.safe_load(proxy.thread.kubeconfig_path.read_text())
    cluster = config["clusters"][0]["cluster"]
    ca = base64.b64decode(cluster["certificate-authority-data"])
    client = await RawH2.connect(cluster["server"], ca)
    conn = client.conn
    sid = conn.get_next_available_stream_id()
    headers = h2_request(cluster["server"], proxy.thread.client_token, "PATCH", path)
    conn.send_headers(sid, [*headers, ("content-type", "application/merge-patch+json")])
    client.body[sid] = bytearray()
    stopped = asyncio.Event()

    async def read() -> None:
        while not stopped.is_set():
            data = await client.reader.read(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    client.status[sid] = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    client.body[sid].extend(event.data)
                elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                    stopped.set()
            client.writer.write(conn.data_to_send())
        stopped.set()

    reader = asyncio.create_task(read())
    sent = 0
    try:
        while not stopped.is_set() and sent < BIG:
            window = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
            if window > 0:
                conn.send_data(sid, b" " * window)
                sent += window
            client.writer.write(conn.data_to_send())
            await client.writer.drain()
            await asyncio.sleep(0)  # let the reader see what came back
        await asyncio.wait_for(stopped.wait(), 30)
        return client.status.get(sid), bytes(client.body[sid]), sent
    finally:
        reader.cancel()
        client.close()


async def test_a_judged_http2_body_over_the_limit_is_refused_unread(
    proxy: Proxy, kubectl: Kubectl, namespace: str, red_pod: str
) -> None:
    code, body, sent = await _send_big_patch_h2(proxy, red_pod)
    assert code == 413, body[:300]
    assert json.loads(body)["code"] == 413
    assert sent < BIG
    assert labels(kubectl, namespace, "pod", "my-pod") == {"aura": "red"}
