"""Malformed requests through the local-mode proxy (issue 10 items 1, 2, 10): request
smuggling from HTTP/2 (and HTTP/1.1) into the HTTP/1.1 request mitmproxy writes upstream, a
``#`` the upstream drops as a fragment, and plain HTTP on the HTTPS port.

Raw clients (tests/e2e/raw_clients.py) send what kubectl never would. Every case checks the
API server's object afterwards (read directly with kubectl, not through the proxy): a
smuggled request would run with the proxy's own credentials.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.e2e import proxy_support as support
from tests.e2e.kube import Kubectl
from tests.e2e.proxy_support import Locks, Proxy
from tests.e2e.raw_clients import Endpoint, h2_headers

pytestmark = pytest.mark.e2e

proxy = support.proxy
locks = support.locks

MERGE = "application/merge-patch+json"
RELABEL = json.dumps({"metadata": {"labels": {"aura": "blue"}}}).encode()


@pytest.fixture
def endpoint(proxy: Proxy) -> Endpoint:
    return Endpoint.from_kubeconfig(proxy.thread.kubeconfig_path)


@pytest.fixture
def red_pod(kubectl: Kubectl, namespace: str, locks: Locks) -> Iterator[str]:
    """Pod ``my-pod`` (aura=red) under Lock ``lockred`` {aura: red} for every operation."""
    kubectl(
        "run", "my-pod", "--image", "nginx", "--labels", "aura=red", namespace=namespace, check=True
    )
    locks.add("lockred", ["CREATE", "UPDATE", "DELETE", "CONNECT"], {"aura": "red"})
    yield f"/api/v1/namespaces/{namespace}/pods/my-pod"


def pod_state(kubectl: Kubectl, namespace: str) -> tuple[str, dict[str, str]] | None:
    """(resourceVersion, labels) of my-pod, None once it is gone."""
    if not kubectl.exists("pod", "my-pod", namespace=namespace):
        return None
    obj = kubectl.json("get", "pod", "my-pod", namespace=namespace)
    return obj["metadata"]["resourceVersion"], dict(obj["metadata"].get("labels") or {})


def smuggled_tail(pod: str) -> str:
    """Ends the request mitmproxy writes upstream and starts a second one, which mitmproxy
    completes with the remaining header fields (the proxy's own credentials among them)."""
    return f" HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\nPATCH {pod}"


def status_message(body: bytes) -> str:
    status = json.loads(body)
    assert status["kind"] == "Status", status
    return str(status["message"])


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_http2_path_smuggling_a_patch_changes_nothing(
    endpoint: Endpoint, kubectl: Kubectl, namespace: str, red_pod: str, method: str
) -> None:
    before = pod_state(kubectl, namespace)
    path = f"/api/v1/namespaces/{namespace}/pods" + smuggled_tail(red_pod)
    answer = endpoint.h2(
        h2_headers(endpoint, method, path, ("content-type", MERGE)),
        RELABEL,
    )
    assert answer.status == 400, (answer, bytes(answer.body))
    assert "malformed request" in status_message(answer.body)
    assert pod_state(kubectl, namespace) == before


def test_http2_header_value_smuggling_a_patch_changes_nothing(
    endpoint: Endpoint, kubectl: Kubectl, namespace: str, red_pod: str
) -> None:
    before = pod_state(kubectl, namespace)
    value = f"b\r\n\r\nPATCH {red_pod} HTTP/1.1\r\nHost: x\r\nContent-Type: {MERGE}"
    answer = endpoint.h2(
        h2_headers(endpoint, "GET", f"/api/v1/namespaces/{namespace}/pods", ("x-a", value)),
        RELABEL,
    )
    assert answer.status == 400, (answer, bytes(answer.body))
    assert "malformed request" in status_message(answer.body)
    assert pod_state(kubectl, namespace) == before


def test_http2_header_value_smuggling_a_delete_changes_nothing(
    endpoint: Endpoint, kubectl: Kubectl, namespace: str, red_pod: str
) -> None:
    before = pod_state(kubectl, namespace)
    value = f"b\r\n\r\nDELETE {red_pod} HTTP/1.1\r\nHost: x\r\nx-b: c"
    answer = endpoint.h2(
        h2_headers(endpoint, "GET", f"/api/v1/namespaces/{namespace}/pods", ("x-a", value))
    )
    assert answer.status == 400, (answer, bytes(answer.body))
    assert "malformed request" in status_message(answer.body)
    assert pod_state(kubectl, namespace) == before


@pytest.mark.parametrize(
    ("field", "value"),
    [
        (":method", "GET /api/v1/namespaces/NS/pods HTTP/1.1\r\nHost: x\r\n\r\nDELETE"),
        ("x-a: b\r\n\r\nDELETE POD HTTP/1.1\r\nHost: x\r\nx-b", "c"),
        (":authority", "x\r\nContent-Length: 0\r\n\r\nDELETE POD HTTP/1.1\r\nHost: x\r\nx-b: c"),
        ("x-nul", "b\x00c"),
    ],
)
def test_http2_fields_with_control_bytes_never_reach_the_api_server(
    endpoint: Endpoint, kubectl: Kubectl, namespace: str, red_pod: str, field: str, value: str
) -> None:
    before = pod_state(kubectl, namespace)
    value = value.replace("NS", namespace).replace("POD", red_pod)
    headers = h2_headers(endpoint, "DELETE", red_pod + "x")
    if field.startswith(":"):
        headers = [(name, value if name == field else v) for name, v in headers]
    else:
        headers.append((field, value))
    answer = endpoint.h2(headers)
    # mitmproxy's HTTP/2 layer refuses some of these itself (the connection or stream ends);
    # what it lets through, the proxy answers with a 400 Status.
    if answer.status is not None:
        assert answer.status == 400, (answer, bytes(answer.body))
        assert "malformed request" in status_message(answer.body)
    else:
        assert answer.terminated or answer.reset, answer
    assert pod_state(kubectl, namespace) == before


def test_http2_space_in_the_path_changes_nothing(
    endpoint: Endpoint, kubectl: Kubectl, namespace: str, red_pod: str
) -> None:
    before = pod_state(kubectl, namespace)
    answer = endpoint.h2(h2_headers(endpoint, "DELETE", red_pod + " HTTP/1.1"))
    assert answer.status == 400, (answer, bytes(answer.body))
    assert "malformed request" in status_message(answer.body)
    assert pod_state(kubectl, namespace) == before


# ---------------------------------------------------------------------------------------------
# '#' in the target: the upstream drops '#...' as a fragment and acts on what precedes it.


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("PUT", "#x", "object"),
        ("PATCH", "#/status", "patch"),
        ("DELETE", "#x", None),
        ("POST", "/eviction#x", "eviction"),
        ("DELETE", "?labelSelector=aura%3Dred#/x", None),
    ],
)
def test_a_fragment_in_the_target_is_refused_and_changes_nothing(
    endpoint: Endpoint,
    kubectl: Kubectl,
    namespace: str,
    red_pod: str,
    method: str,
    suffix: str,
    body: str | None,
    http2: bool,
) -> None:
    before = pod_state(kubectl, namespace)
    path = red_pod + suffix
    if "labelSelector" in suffix:
        path = f"/api/v1/namespaces/{namespace}/pods" + suffix
    content_type = "application/json"
    data = b""
    if body == "object":
        obj = kubectl.json("get", "pod", "my-pod", namespace=namespace)
        obj["metadata"]["labels"] = {"aura": "blue"}
        data = json.dumps(obj).encode()
    elif body == "patch":
        data, content_type = RELABEL, MERGE
    elif body == "eviction":
        eviction = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "my-pod"}}
        data = json.dumps(eviction).encode()
    if http2:
        answer = endpoint.h2(
            h2_headers(endpoint, method, path, ("content-type", content_type)), data
        )
        assert answer.status == 400, (answer, bytes(answer.body))
        assert "'#'" in status_message(answer.body)
    else:
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {endpoint.authority}\r\n"
            f"Authorization: Bearer {endpoint.token}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
        )
        reply = endpoint.http11(head.encode() + data)
        assert reply.startswith(b"HTTP/1.1 400 "), reply[:300]
        assert b"'#'" in reply
    assert pod_state(kubectl, namespace) == before


def test_a_fragment_before_the_resource_does_not_delete_the_namespace(
    endpoint: Endpoint, kubectl: Kubectl, namespace: str, red_pod: str
) -> None:
    head = (
        f"DELETE /api/v1/namespaces/{namespace}#/pods/my-pod HTTP/1.1\r\n"
        f"Host: {endpoint.authority}\r\nAuthorization: Bearer {endpoint.token}\r\n"
        "Connection: close\r\n\r\n"
    )
    reply = endpoint.http11(head.encode())
    assert reply.startswith(b"HTTP/1.1 400 "), reply[:300]
    ns = kubectl.json("get", "namespace", namespace)
    assert "deletionTimestamp" not in ns["metadata"]
    assert pod_state(kubectl, namespace) is not None


@pytest.mark.parametrize(
    "line",
    [
        "DELETE POD\\x HTTP/1.1",
        "DELETE POD%zz HTTP/1.1",
        "DELETE https://elsewhere.example:443POD HTTP/1.1",
    ],
)
def test_http11_targets_outside_origin_form_change_nothing(
    endpoint: Endpoint, kubectl: Kubectl, namespace: str, red_pod: str, line: str
) -> None:
    before = pod_state(kubectl, namespace)
    head = (
        f"{line.replace('POD', red_pod)}\r\nHost: {endpoint.authority}\r\n"
        f"Authorization: Bearer {endpoint.token}\r\nConnection: close\r\n\r\n"
    )
    reply = endpoint.http11(head.encode())
    assert reply.startswith(b"HTTP/1.1 400 "), reply[:300]
    assert pod_state(kubectl, namespace) == before


# ---------------------------------------------------------------------------------------------
# Plain HTTP on the HTTPS port (issue 10 item 10): the connection gets nothing.


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_plain_http_on_the_https_port_gets_nothing_and_changes_nothing(
    endpoint: Endpoint, kubectl: Kubectl, namespace: str, method: str
) -> None:
    kubectl("run", "plain", "--image", "nginx", namespace=namespace, check=True)
    head = (
        f"{method} /api/v1/namespaces/{namespace}/pods/plain HTTP/1.1\r\n"
        f"Host: {endpoint.authority}\r\nAuthorization: Bearer {endpoint.token}\r\n"
        "Connection: close\r\n\r\n"
    )
    reply = endpoint.http11(head.encode(), tls=False)
    assert reply == b""
    assert kubectl.exists("pod", "plain", namespace=namespace)
