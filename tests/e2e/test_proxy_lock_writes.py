"""Read your own writes: a Lock written through the proxy is in force for the very next
request, however quickly it follows the Lock's 201 (issue 10, item 6)."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.e2e import proxy_support as support
from tests.e2e.kube import Kubectl, KubeTarget
from tests.e2e.proxy_support import Proxy, assert_denied, labels, lock_manifest

proxy = support.proxy

pytestmark = pytest.mark.e2e

# How long the sandbox holds back watch events here: a real API server's watch lags behind
# its answers too, by less; the lag makes "the watch was just quick enough" impossible.
WATCH_LAG = 2.0

# How many writes race the Lock: on the Lock's own connection (pipelined behind its POST) and
# on other connections (sent the moment the 201 arrives).
SAME_CONNECTION = 10
OTHER_CONNECTIONS = 20


class Conn:
    """A raw HTTP/1.1 connection to the proxy (requests can be pipelined)."""

    def __init__(self, proxy: Proxy, context: ssl.SSLContext) -> None:
        url = urlsplit(proxy.thread.url)
        assert url.hostname is not None and url.port is not None
        raw = socket.create_connection((url.hostname, url.port), timeout=30)
        self.sock = context.wrap_socket(raw, server_hostname=url.hostname)
        self.file = self.sock.makefile("rb")
        self.host = f"{url.hostname}:{url.port}"
        self.token = proxy.thread.client_token

    def request_bytes(self, method: str, path: str, body: Any, content_type: str) -> bytes:
        data = json.dumps(body).encode()
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
            f"Authorization: Bearer {self.token}\r\nContent-Type: {content_type}\r\n"
            f"Accept: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
        )
        return head.encode() + data

    def read_response(self) -> tuple[int, bytes]:
        status = int(self.file.readline().split()[1])
        headers: dict[str, str] = {}
        while (line := self.file.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while (size := int(self.file.readline().split(b";")[0], 16)) > 0:
                body += self.file.read(size)
                self.file.readline()
            self.file.readline()
            return status, body
        return status, self.file.read(int(headers.get("content-length", "0")))

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def _client_context(proxy: Proxy, tmp: Path) -> ssl.SSLContext:
    config = yaml.safe_load(proxy.thread.kubeconfig_path.read_text())
    ca = base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"])
    (tmp / "ca.pem").write_bytes(ca)
    return ssl.create_default_context(cafile=str(tmp / "ca.pem"))


@pytest.fixture
def lagging_watch(kube_target: KubeTarget) -> Iterator[None]:
    """In the sandbox, watch events arrive WATCH_LAG late; a real cluster lags on its own."""
    sandbox = kube_target.sandbox
    if sandbox is None:
        yield
        return
    sandbox.sandbox.server.watch_delay = WATCH_LAG
    try:
        yield
    finally:
        sandbox.sandbox.server.watch_delay = 0.0


def test_a_lock_created_through_the_proxy_holds_for_writes_right_behind_its_201(
    proxy: Proxy, kubectl: Kubectl, namespace: str, lagging_watch: None
) -> None:
    kubectl("run", "my-pod", "--image", "nginx", "--labels", "aura=red",
            namespace=namespace, check=True)  # fmt: skip
    lock = lock_manifest("lockred", namespace, ["UPDATE"], {"aura": "red"})
    locks_path = f"/apis/klock.rnemet.dev/v1/namespaces/{namespace}/locks"
    pod_path = f"/api/v1/namespaces/{namespace}/pods/my-pod"
    with tempfile.TemporaryDirectory() as tmp:
        context = _client_context(proxy, Path(tmp))
        first = Conn(proxy, context)
        others = [Conn(proxy, context) for _ in range(OTHER_CONNECTIONS)]
        try:
            # The Lock's POST and, in the same write, relabels of the pod it locks.
            relabels = [
                first.request_bytes(
                    "PATCH",
                    pod_path,
                    {"metadata": {"labels": {"raced": f"same-{i}"}}},
                    "application/merge-patch+json",
                )
                for i in range(SAME_CONNECTION)
            ]
            post = first.request_bytes("POST", locks_path, lock, "application/json")
            first.sock.sendall(post + b"".join(relabels))
            status, _ = first.read_response()
            assert status == 201
            # The 201 is here: every other connection tries at once.
            for i, conn in enumerate(others):
                conn.sock.sendall(
                    conn.request_bytes(
                        "PATCH",
                        pod_path,
                        {"metadata": {"labels": {"raced": f"other-{i}"}}},
                        "application/merge-patch+json",
                    )
                )
            answers = [first.read_response()[0] for _ in range(SAME_CONNECTION)]
            answers += [conn.read_response()[0] for conn in others]
        finally:
            for conn in [first, *others]:
                conn.close()
    landed = [code for code in answers if 200 <= code < 300]
    assert landed == [], f"{len(landed)} of {len(answers)} writes landed after the Lock's 201"
    assert set(answers) == {403}
    assert "raced" not in labels(kubectl, namespace, "pod", "my-pod")


def test_a_lock_applied_with_kubectl_through_the_proxy_holds_for_the_next_command(
    proxy: Proxy, kubectl: Kubectl, namespace: str, lagging_watch: None
) -> None:
    kubectl("run", "my-pod", "--image", "nginx", "--labels", "aura=red",
            namespace=namespace, check=True)  # fmt: skip
    manifest = lock_manifest("lockred", namespace, ["UPDATE", "DELETE"], {"aura": "red"})
    proxy.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest), check=True)
    # No waiting for the watch: the very next command is judged with the Lock.
    assert_denied(proxy.kubectl("label", "pod", "my-pod", "x=y", namespace=namespace))
    proxy.kubectl("delete", "lock", "lockred", namespace=namespace, check=True)  # fmt: skip
    result = proxy.kubectl("label", "pod", "my-pod", "x=y", namespace=namespace)
    assert result.returncode == 0, result.stderr
