"""Request shapes the API server does not serve, through the local-mode proxy (issue 10 items
3 and 9): refused before anything is forwarded, so a lenient server behind the proxy cannot
act on them unjudged. Subresources a kind does not have reach the API server, which answers
404 itself. Every case checks the objects afterwards with kubectl, not through the proxy.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.e2e import proxy_support as support
from tests.e2e.kube import Kubectl
from tests.e2e.proxy_support import Locks, Proxy, assert_denied
from tests.e2e.raw_clients import Endpoint

pytestmark = pytest.mark.e2e

proxy = support.proxy
locks = support.locks


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


def request(endpoint: Endpoint, method: str, path: str) -> tuple[int, dict[str, object]]:
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {endpoint.authority}\r\n"
        f"Authorization: Bearer {endpoint.token}\r\nConnection: close\r\n\r\n"
    )
    reply = endpoint.http11(head.encode())
    status_line, _, rest = reply.partition(b"\r\n")
    body = rest.partition(b"\r\n\r\n")[2]
    return int(status_line.split()[1]), json.loads(body)


def namespace_alive(kubectl: Kubectl, namespace: str) -> bool:
    if not kubectl.exists("namespace", namespace):
        return False
    return "deletionTimestamp" not in kubectl.json("get", "namespace", namespace)["metadata"]


def test_cluster_wide_deletecollection_of_pods_is_refused(
    endpoint: Endpoint, kubectl: Kubectl, namespace: str, red_pod: str
) -> None:
    code, status = request(endpoint, "DELETE", "/api/v1/pods?labelSelector=aura%3Dred")
    assert code == 400, status
    assert "does not serve" in str(status["message"])
    assert kubectl.exists("pod", "my-pod", namespace=namespace)


def test_a_namespace_nested_in_another_is_not_deleted(
    endpoint: Endpoint, kubectl: Kubectl, namespace: str, red_pod: str
) -> None:
    code, status = request(endpoint, "DELETE", f"/api/v1/namespaces/default/namespaces/{namespace}")
    assert code == 400, status
    assert namespace_alive(kubectl, namespace)
    assert kubectl.exists("pod", "my-pod", namespace=namespace)


def test_deletecollection_of_namespaces_is_refused(
    endpoint: Endpoint, kubectl: Kubectl, namespace: str, red_pod: str
) -> None:
    selector = f"metadata.name%3D{namespace}"
    code, status = request(endpoint, "DELETE", f"/api/v1/namespaces?fieldSelector={selector}")
    assert code == 400, status
    assert namespace_alive(kubectl, namespace)


def test_kubectl_scale_of_a_pod_gets_the_api_servers_answer_not_a_denial(
    proxy: Proxy, kubectl: Kubectl, namespace: str, red_pod: str
) -> None:
    through = proxy.kubectl("scale", "pod/my-pod", "--replicas=2", namespace=namespace)
    assert through.returncode != 0
    assert "denied" not in through.stderr, through.stderr
    # The same answer kubectl gets from the API server directly.
    direct = kubectl("scale", "pod/my-pod", "--replicas=2", namespace=namespace)
    assert direct.returncode != 0
    assert through.stderr.replace(proxy.thread.url, "") == direct.stderr.replace(
        str(kubectl.json("config", "view", "--minify")["clusters"][0]["cluster"]["server"]), ""
    )


def test_kubectl_scale_of_a_locked_deployment_is_still_denied(
    proxy: Proxy, kubectl: Kubectl, namespace: str, locks: Locks
) -> None:
    kubectl("create", "deployment", "web", "--image", "nginx", namespace=namespace, check=True)
    kubectl("label", "deployment", "web", "aura=red", namespace=namespace, check=True)
    locks.add("lockred", ["UPDATE"], {"aura": "red"})
    assert_denied(proxy.kubectl("scale", "deployment/web", "--replicas=3", namespace=namespace))


@pytest.mark.parametrize(
    "tail",
    [
        "proxy/./exec/NS/my-pod/c?command=sh",
        "proxy/x/../exec/NS/my-pod/c?command=sh",
        "proxy/%2E/exec/NS/my-pod/c?command=sh",
        "proxy/x/%2e%2e/exec/NS/my-pod/c?command=sh",
        "proxy/run/NS/../NS/my-pod/c?cmd=sh",
    ],
)
def test_dot_segments_under_a_node_proxy_are_refused(
    endpoint: Endpoint, kubectl: Kubectl, namespace: str, red_pod: str, tail: str
) -> None:
    nodes = kubectl.json("get", "nodes")["items"]
    if not nodes:
        pytest.skip("the cluster has no node")
    node = nodes[0]["metadata"]["name"]
    path = f"/api/v1/nodes/{node}/{tail.replace('NS', namespace)}"
    code, status = request(endpoint, "POST", path)
    assert code == 400, status
    assert "'.'" in str(status["message"]) or "'..'" in str(status["message"])


def test_cluster_wide_deletecollection_of_a_namespaced_custom_kind_is_refused(
    endpoint: Endpoint, kubectl: Kubectl, namespace: str, red_pod: str
) -> None:
    # Locks are a namespaced custom resource: their scope comes from discovery.
    code, status = request(endpoint, "DELETE", "/apis/klock.rnemet.dev/v1/locks")
    assert code == 400, status
    assert "namespaced" in str(status["message"])
    assert kubectl.exists("lock", "lockred", namespace=namespace)
