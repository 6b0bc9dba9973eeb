"""The proxy in front of an API server that speaks HTTP/2, as a real kube-apiserver does.

kubectl negotiates h2 with the proxy and mitmproxy offers h2 upstream too, so against a real
cluster the proxy's upstream hop is HTTP/2. Here the target is a sandbox behind its HTTP/2
front (klockproxy/sandbox/h2front.py), and every test checks, from the front's own record,
that the requests kubectl made through the proxy reached it as HTTP/2 streams.

This module always uses its own sandbox (never KLOCKPROXY_E2E_KUBECONFIG's cluster): it
overrides ``kube_target`` and ``kubectl``; the proxy and lock fixtures are the shared ones.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from klockproxy.sandbox.h2front import H2Front
from klockproxy.sandbox.server import SandboxThread
from tests.e2e import proxy_support as support
from tests.e2e.kube import Kubectl, KubeTarget, stop_process
from tests.e2e.proxy_support import Lines, Locks, Proxy, assert_denied, assert_ok, labels
from tests.e2e.scenario import ROWS, add_lockred, jonny, setup_scenario
from tests.rawh2 import RawH2, h2_request

pytestmark = pytest.mark.e2e

# The shared fixtures (see proxy_support), on this module's HTTP/2 target.
proxy = support.proxy
locks = support.locks

Request = tuple[str, str]


@pytest.fixture(scope="module")
def kube_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeTarget]:
    """A sandbox behind its HTTP/2 front."""
    sandbox = SandboxThread(http2=True).start()
    try:
        kubeconfig = sandbox.write_kubeconfig(tmp_path_factory.mktemp("h2-sandbox") / "kubeconfig")
        yield KubeTarget(kubeconfig, "admin", sandbox)
    finally:
        sandbox.stop()


@pytest.fixture(scope="module")
def kubectl(kube_target: KubeTarget, kubectl_home: Path) -> Kubectl:
    """kubectl as the admin, straight to the HTTP/2 sandbox (not through the proxy)."""
    return Kubectl(
        kube_target.kubeconfig, home=kubectl_home / "h2-direct", context=kube_target.admin_context
    )


class H2Record:
    """What the HTTP/2 front served: ``mark()`` now, ``since(mark)`` the h2 requests after."""

    def __init__(self, sandbox: SandboxThread) -> None:
        self.sandbox = sandbox

    def _front(self) -> H2Front:
        front = self.sandbox.sandbox.h2front
        if front is None:
            raise AssertionError("the sandbox runs without its HTTP/2 front")
        return front

    def mark(self) -> int:
        return int(self.sandbox.call(lambda: self._front().streams))

    def since(self, mark: int) -> list[Request]:
        def read() -> tuple[int, list[Request]]:
            front = self._front()
            return front.streams, list(front.requests)

        streams, requests = self.sandbox.call(read)
        new = streams - mark
        return requests[len(requests) - new :] if new else []

    def protocols(self) -> list[str]:
        return list(self.sandbox.call(lambda: list(self._front().protocols)))


@pytest.fixture
def h2(kube_target: KubeTarget) -> H2Record:
    if kube_target.sandbox is None:
        raise AssertionError("this module's target is its own sandbox")
    return H2Record(kube_target.sandbox)


def _seen(requests: list[Request], method: str, path: str) -> bool:
    """Whether an h2 request with this method reached ``path`` (query ignored)."""
    return any(m == method and p.split("?", 1)[0] == path for m, p in requests)


def test_kubectl_through_the_proxy_reaches_the_api_server_over_http2(
    proxy: Proxy, kubectl: Kubectl, namespace: str, h2: H2Record
) -> None:
    kubectl("run", "my-pod", "--image", "nginx", "--labels", "aura=red", namespace=namespace,
            check=True)  # fmt: skip
    marker = uuid.uuid4().hex[:8]
    mark = h2.mark()
    # Only this command, through the proxy, asks for this label selector.
    result = proxy.kubectl("get", "pods", "-l", f"aura=red,m!={marker}", "-o", "name",
                           namespace=namespace)  # fmt: skip
    assert_ok(result)
    assert result.stdout.split() == ["pod/my-pod"]
    new = h2.since(mark)
    assert any(marker in path for _, path in new), new
    assert "h2" in h2.protocols()


@pytest.mark.parametrize("row", list(ROWS), ids=list(ROWS))
def test_founding_scenario_row_over_http2(
    row: str, proxy: Proxy, locks: Locks, kubectl: Kubectl, namespace: str, h2: H2Record
) -> None:
    setup_scenario(kubectl, namespace)
    add_lockred(locks, "cluster")
    r = ROWS[row]
    as_user = jonny(namespace) if r.who == "jonny" else None
    mark = h2.mark()
    result = proxy.kubectl(*r.args, namespace=namespace, as_user=as_user)
    new = h2.since(mark)
    kind, name = ("pods", r.args[2]) if r.args[1] == "pod" else ("configmaps", "my-cm")
    path = f"/api/v1/namespaces/{namespace}/{kind}/{name}"
    method = "DELETE" if r.args[0] == "delete" else "PATCH"
    if r.allowed:
        assert_ok(result)
        assert _seen(new, method, path), new
    else:
        assert_denied(result, "map[aura:red]", lock=f"{namespace}/lockred")
        assert not _seen(new, method, path), new
    r.check(kubectl, namespace)


def test_after_the_lock_is_deleted_admin_may_label_over_http2(
    proxy: Proxy, locks: Locks, kubectl: Kubectl, namespace: str, h2: H2Record
) -> None:
    setup_scenario(kubectl, namespace)
    add_lockred(locks, "cluster")
    assert_denied(proxy.kubectl("label", "pod", "my-pod", "here=was-admin", namespace=namespace))
    locks.remove("lockred", through_proxy=True)
    mark = h2.mark()
    assert_ok(proxy.kubectl("label", "pod", "my-pod", "here=was-admin", namespace=namespace))
    assert _seen(h2.since(mark), "PATCH", f"/api/v1/namespaces/{namespace}/pods/my-pod")
    assert labels(kubectl, namespace, "pod", "my-pod")["here"] == "was-admin"


@pytest.mark.parametrize(
    "patch_type,patch",
    [
        ("strategic", '{"metadata":{"labels":{"patched":"yes"}}}'),
        ("merge", '{"metadata":{"labels":{"patched":"yes"}}}'),
        ("json", '[{"op":"add","path":"/metadata/labels/patched","value":"yes"}]'),
    ],
)
def test_covered_but_allowed_patch_with_the_proxys_precondition(
    patch_type: str,
    patch: str,
    proxy: Proxy,
    locks: Locks,
    kubectl: Kubectl,
    namespace: str,
    h2: H2Record,
) -> None:
    """jonny-op's patch of a locked pod is allowed; the proxy rewrites the body (a
    resourceVersion precondition) before forwarding it over HTTP/2."""
    setup_scenario(kubectl, namespace)
    add_lockred(locks, "cluster")
    mark = h2.mark()
    result = proxy.kubectl(
        "patch", "pod", "my-pod", "--type", patch_type, "-p", patch,
        namespace=namespace, as_user=jonny(namespace),
    )  # fmt: skip
    assert_ok(result)
    assert _seen(h2.since(mark), "PATCH", f"/api/v1/namespaces/{namespace}/pods/my-pod")
    after = labels(kubectl, namespace, "pod", "my-pod")
    assert after["patched"] == "yes"
    assert after["aura"] == "red"
    # The same patch by the admin is still denied.
    denied = proxy.kubectl("patch", "pod", "my-pod", "--type", patch_type, "-p",
                           patch.replace("yes", "admin"), namespace=namespace)  # fmt: skip
    assert_denied(denied)
    assert labels(kubectl, namespace, "pod", "my-pod")["patched"] == "yes"


def test_delete_of_a_locked_pod_is_denied_over_http2(
    proxy: Proxy, locks: Locks, kubectl: Kubectl, namespace: str, h2: H2Record
) -> None:
    setup_scenario(kubectl, namespace)
    add_lockred(locks, "cluster")
    mark = h2.mark()
    assert_denied(proxy.kubectl("delete", "pod", "my-pod", "--wait=false", namespace=namespace))
    assert not _seen(h2.since(mark), "DELETE", f"/api/v1/namespaces/{namespace}/pods/my-pod")
    assert kubectl.exists("pod", "my-pod", namespace=namespace)
    # other-pod is not part of the application.
    mark = h2.mark()
    assert_ok(proxy.kubectl("delete", "pod", "other-pod", "--wait=false", namespace=namespace))
    assert _seen(h2.since(mark), "DELETE", f"/api/v1/namespaces/{namespace}/pods/other-pod")
    assert not kubectl.exists("pod", "other-pod", namespace=namespace)


def test_watch_streams_an_event_over_http2(
    proxy: Proxy, kubectl: Kubectl, namespace: str, h2: H2Record
) -> None:
    kubectl("run", "first", "--image", "nginx", namespace=namespace, check=True)
    mark = h2.mark()
    watch = proxy.kubectl.popen("get", "pods", "-w", "-o", "name", namespace=namespace)
    try:
        lines = Lines(watch)
        assert lines.until("pod/first") == "pod/first"
        # Created after the watch started: arrives while kubectl still runs.
        kubectl("run", "second", "--image", "nginx", namespace=namespace, check=True)
        assert lines.until("pod/second") == "pod/second"
        assert watch.poll() is None
        new = h2.since(mark)
        assert any(
            m == "GET" and p.startswith(f"/api/v1/namespaces/{namespace}/pods?")
            and "watch=true" in p
            for m, p in new
        ), new  # fmt: skip
    finally:
        stop_process(watch)


def test_a_watch_stream_reset_through_the_proxy_ends_the_upstream_watch(
    proxy: Proxy, kube_target: KubeTarget, namespace: str, h2: H2Record
) -> None:
    """Over HTTP/2 a client can abandon one watch and keep its connection (RST_STREAM): the
    proxy must reset the upstream stream too, or the API server keeps the watch open."""
    sandbox = kube_target.sandbox
    assert sandbox is not None

    def watchers() -> int:
        """The sandbox's watches in this test's namespace."""
        store = sandbox.sandbox.store
        return int(sandbox.call(lambda: sum(w.namespace == namespace for w in store._watchers)))

    ca = base64.b64decode(
        yaml.safe_load(proxy.thread.kubeconfig_path.read_text())["clusters"][0]["cluster"][
            "certificate-authority-data"
        ]
    )
    token = proxy.thread.client_token
    path = f"/api/v1/namespaces/{namespace}/configmaps"

    async def run() -> None:
        client = await RawH2.connect(proxy.thread.url, ca)
        try:
            assert watchers() == 0
            mark = h2.mark()
            watch = client.send(h2_request(proxy.thread.url, token, "GET", f"{path}?watch=true"))
            await client.until(lambda: watch in client.status)
            assert client.status[watch] == 200
            assert _seen(h2.since(mark), "GET", path)
            assert watchers() == 1
            client.reset(watch)
            for _ in range(3000):  # a hang guard, not a timing assertion
                if watchers() == 0:
                    break
                await asyncio.sleep(0.01)
            assert watchers() == 0
            # The client's connection still works.
            get = client.send(h2_request(proxy.thread.url, token, "GET", path))
            await client.until(lambda: get in client.ended)
            assert client.status[get] == 200
        finally:
            client.close()

    asyncio.run(run())


def test_logs_follow_streams_over_http2(
    proxy: Proxy, kubectl: Kubectl, namespace: str, h2: H2Record
) -> None:
    kubectl("run", "ticker", "--image", "busybox", namespace=namespace, check=True)
    mark = h2.mark()
    follow = proxy.kubectl.popen("logs", "-f", "ticker", namespace=namespace)
    try:
        lines = Lines(follow)
        lines.until("log line 1")
        # The sandbox writes a line every 0.5 s after the first three: one written after
        # kubectl started following arrives while it still runs.
        lines.until("log line 4")
        assert follow.poll() is None
        log_path = f"/api/v1/namespaces/{namespace}/pods/ticker/log"
        assert _seen(h2.since(mark), "GET", log_path)
    finally:
        stop_process(follow)


def test_server_side_apply_over_http2(
    proxy: Proxy, locks: Locks, kubectl: Kubectl, namespace: str, h2: H2Record
) -> None:
    setup_scenario(kubectl, namespace)
    add_lockred(locks, "cluster")

    def manifest(name: str, data: dict[str, str], labels_: dict[str, str]) -> str:
        return yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": namespace, "labels": labels_},
                "data": data,
            }
        )

    cm_path = f"/api/v1/namespaces/{namespace}/configmaps"
    # A new, unlocked object: created by server-side apply through the proxy.
    mark = h2.mark()
    assert_ok(proxy.kubectl("apply", "--server-side", "-f", "-",
                            input=manifest("fresh", {"a": "1"}, {"aura": "blue"})))  # fmt: skip
    assert _seen(h2.since(mark), "PATCH", f"{cm_path}/fresh")
    assert kubectl.json("get", "cm", "fresh", namespace=namespace)["data"] == {"a": "1"}
    # The locked my-cm: the admin's apply is denied, jonny-op's goes through.
    locked = manifest("my-cm", {"nikola": "tesla", "applied": "yes"}, {"aura": "red"})
    mark = h2.mark()
    denied = proxy.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                           input=locked)  # fmt: skip
    assert_denied(denied)
    assert not _seen(h2.since(mark), "PATCH", f"{cm_path}/my-cm")
    assert "applied" not in kubectl.json("get", "cm", "my-cm", namespace=namespace)["data"]
    mark = h2.mark()
    assert_ok(proxy.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                            input=locked, as_user=jonny(namespace)))  # fmt: skip
    assert _seen(h2.since(mark), "PATCH", f"{cm_path}/my-cm")
    assert kubectl.json("get", "cm", "my-cm", namespace=namespace)["data"]["applied"] == "yes"
