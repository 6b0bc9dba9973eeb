"""The addon as users load it: ``mitmdump -s addons/klock.py --mode reverse:...``.

Pass-through mode: kubectl's own bearer token goes through the proxy; the addon learns who
is calling with a SelfSubjectReview sent with that token. Real kubectl, real mitmdump, the
sandbox API server.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from klockproxy.cluster.certs import CertificateAuthority
from klockproxy.cluster.kubeconfig import write_kubeconfig
from klockproxy.crd import crd_text
from tests.e2e.kube import Kubectl, KubeTarget
from tests.e2e.mitmdump_support import (
    LOCK,
    Mitmdump,
    _free_port,
    _start_mitmdump,
    _stop,
)

pytestmark = pytest.mark.e2e


@pytest.fixture
def proxied(
    kube_target: KubeTarget,
    kubectl: Kubectl,
    namespace: str,
    tmp_path: Path,
) -> Iterator[Kubectl]:
    """kubectl (the sandbox admin's own token) through mitmdump with the addon loaded."""
    sandbox = kube_target.sandbox
    if sandbox is None:
        pytest.skip("needs the sandbox (the proxy is started against its URL and CA)")
    upstream_ca = tmp_path / "upstream-ca.pem"
    upstream_ca.write_bytes(sandbox.ca_pem)
    locks = tmp_path / "locks.yaml"
    locks.write_text(LOCK.format(namespace=namespace))
    md = _start_mitmdump(tmp_path, sandbox.url, upstream_ca, locks)
    try:
        kubeconfig = write_kubeconfig(
            tmp_path / "proxy-kubeconfig",
            server=md.url,
            ca_pem=(tmp_path / "proxy-ca.pem").read_bytes(),
            users={"admin": {"token": sandbox.admin_token}},
            current_user="admin",
        )
        yield Kubectl(kubeconfig, home=tmp_path / "home")
    finally:
        _stop(md)


def test_locked_label_change_is_refused_and_unlocked_one_works(
    kubectl: Kubectl, proxied: Kubectl, namespace: str
) -> None:
    kubectl(
        "run", "my-pod", "--image", "nginx", "--labels", "aura=red", namespace=namespace, check=True
    )
    kubectl("run", "other-pod", "--image", "nginx", namespace=namespace, check=True)

    denied = proxied("label", "pod", "my-pod", "here=was-admin", namespace=namespace)
    assert denied.returncode != 0
    assert "Error from server (Forbidden)" in denied.stderr
    assert "denied, there is a lock: map[aura:red]" in denied.stderr
    labels = kubectl.json("get", "pod", "my-pod", namespace=namespace)["metadata"]["labels"]
    assert "here" not in labels

    allowed = proxied("label", "pod", "other-pod", "aura=blue", "--overwrite", namespace=namespace)
    assert allowed.returncode == 0, allowed.stderr
    labels = kubectl.json("get", "pod", "other-pod", namespace=namespace)["metadata"]["labels"]
    assert labels["aura"] == "blue"

    deleted = proxied("delete", "pod", "my-pod", "--wait=false", namespace=namespace)
    assert deleted.returncode != 0
    assert "denied, there is a lock" in deleted.stderr
    assert kubectl.exists("pod", "my-pod", namespace=namespace)

    # Reads pass untouched.
    listing = proxied.json("get", "pods", namespace=namespace)
    assert {i["metadata"]["name"] for i in listing["items"]} == {"my-pod", "other-pod"}


def test_missing_objects_in_a_locked_namespace_are_still_not_found(
    proxied: Kubectl, namespace: str
) -> None:
    # The proxy guards such writes with a uid no object has: still 404 while nothing exists.
    deleted = proxied("delete", "pod", "ghost", "--wait=false", namespace=namespace)
    assert deleted.returncode != 0
    assert "NotFound" in deleted.stderr or "not found" in deleted.stderr, deleted.stderr
    patched = proxied("label", "pod", "ghost", "a=b", namespace=namespace)
    assert "not found" in patched.stderr.lower(), patched.stderr


def test_exclusive_service_account_may_change_the_locked_pod(
    kubectl: Kubectl, proxied: Kubectl, namespace: str
) -> None:
    kubectl(
        "run", "my-pod", "--image", "nginx", "--labels", "aura=red", namespace=namespace, check=True
    )
    kubectl("create", "serviceaccount", "jonny-op", namespace=namespace, check=True)
    kubectl(
        "create",
        "role",
        "app-op",
        "--verb=get,list,patch,update,delete",
        "--resource=pods",
        namespace=namespace,
        check=True,
    )
    kubectl(
        "create",
        "rolebinding",
        "jonny-app",
        "--role=app-op",
        f"--serviceaccount={namespace}:jonny-op",
        namespace=namespace,
        check=True,
    )
    jonny = f"system:serviceaccount:{namespace}:jonny-op"
    result = proxied("label", "pod", "my-pod", "here=was-jonny", namespace=namespace, as_user=jonny)
    assert result.returncode == 0, result.stderr
    labels = kubectl.json("get", "pod", "my-pod", namespace=namespace)["metadata"]["labels"]
    assert labels["here"] == "was-jonny"


def test_watch_streams_through_the_proxy(
    kubectl: Kubectl, proxied: Kubectl, namespace: str
) -> None:
    watch = proxied.popen("get", "pods", "--watch", "-o", "name", namespace=namespace)
    # Not a timing assertion: a safety net so a broken stream fails instead of hanging.
    killer = threading.Timer(60, watch.kill)
    killer.start()
    try:
        assert watch.stdout is not None
        kubectl("run", "first", "--image", "nginx", namespace=namespace, check=True)
        assert watch.stdout.readline().strip() == "pod/first"
        # The watch is still open: a later event arrives on the same stream.
        kubectl("run", "second", "--image", "nginx", namespace=namespace, check=True)
        line = watch.stdout.readline().strip()
        while line == "pod/first":
            line = watch.stdout.readline().strip()
        assert line == "pod/second"
    finally:
        killer.cancel()
        watch.kill()
        watch.communicate()


def test_logs_follow_streams_through_the_proxy(
    kubectl: Kubectl, proxied: Kubectl, namespace: str
) -> None:
    kubectl("run", "talker", "--image", "nginx", namespace=namespace, check=True)
    follow = proxied.popen("logs", "-f", "talker", namespace=namespace)
    # A never-ending response: lines can only arrive if the proxy streams it.
    killer = threading.Timer(60, follow.kill)
    killer.start()
    try:
        assert follow.stdout is not None
        seen = [follow.stdout.readline().strip() for _ in range(5)]
    finally:
        killer.cancel()
        follow.kill()
        follow.communicate()
    assert seen[4].endswith("log line 5"), seen


def test_exclusive_service_account_deletes_in_pass_through_mode(
    kube_target: KubeTarget, kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    """A restricted caller's cascading DELETE: the proxy must see every dependent kind."""
    sandbox = kube_target.sandbox
    if sandbox is None:
        pytest.skip("needs the sandbox")
    kubectl("create", "configmap", "my-cm", "--from-literal=a=b", namespace=namespace, check=True)
    kubectl("label", "cm", "my-cm", "aura=red", namespace=namespace, check=True)
    kubectl("create", "serviceaccount", "jonny-op", namespace=namespace, check=True)
    kubectl(
        "create",
        "role",
        "app-op",
        "--verb=get,list,delete",
        "--resource=configmaps",
        namespace=namespace,
        check=True,
    )
    kubectl(
        "create",
        "rolebinding",
        "jonny-app",
        "--role=app-op",
        f"--serviceaccount={namespace}:jonny-op",
        namespace=namespace,
        check=True,
    )
    jonny = f"system:serviceaccount:{namespace}:jonny-op"
    (tmp_path / "upstream-ca.pem").write_bytes(sandbox.ca_pem)
    locks = tmp_path / "locks.yaml"
    locks.write_text(LOCK.format(namespace=namespace))

    def kubeconfig_for(md: Mitmdump, name: str) -> Kubectl:
        path = write_kubeconfig(
            tmp_path / name,
            server=md.url,
            ca_pem=(tmp_path / "proxy-ca.pem").read_bytes(),
            users={"admin": {"token": sandbox.admin_token}},
            current_user="admin",
        )
        return Kubectl(path, home=tmp_path / "home")

    # Without credentials of its own the proxy cannot see the kinds jonny may not list.
    md = _start_mitmdump(tmp_path, sandbox.url, tmp_path / "upstream-ca.pem", locks)
    try:
        proxied = kubeconfig_for(md, "kc-plain")
        refused = proxied("delete", "cm", "my-cm", namespace=namespace, as_user=jonny)
        assert refused.returncode != 0
        assert "--cascade=orphan" in refused.stderr, refused.stderr
    finally:
        _stop(md)
    assert kubectl.exists("cm", "my-cm", namespace=namespace)

    token = tmp_path / "lister-token"
    token.write_text(sandbox.admin_token)
    md = _start_mitmdump(
        tmp_path,
        sandbox.url,
        tmp_path / "upstream-ca.pem",
        locks,
        "--set",
        f"klock_upstream_token_file={token}",
    )
    try:
        proxied = kubeconfig_for(md, "kc-token")
        allowed = proxied("delete", "cm", "my-cm", namespace=namespace, as_user=jonny)
        assert allowed.returncode == 0, allowed.stderr
    finally:
        _stop(md)
    assert not kubectl.exists("cm", "my-cm", namespace=namespace)


def test_locks_from_the_cluster_take_effect(
    kube_target: KubeTarget, kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    """klock_locks=cluster: the addon watches Lock objects with its own token file."""
    sandbox = kube_target.sandbox
    if sandbox is None:
        pytest.skip("needs the sandbox")
    (tmp_path / "upstream-ca.pem").write_bytes(sandbox.ca_pem)
    token_file = tmp_path / "watch-token"
    token_file.write_text(sandbox.admin_token)
    kubectl("apply", "-f", "-", input=crd_text(), check=True)
    kubectl(
        "run", "my-pod", "--image", "nginx", "--labels", "aura=red", namespace=namespace, check=True
    )
    md = _start_mitmdump(
        tmp_path,
        sandbox.url,
        tmp_path / "upstream-ca.pem",
        "cluster",
        "--set",
        f"klock_upstream_token_file={token_file}",
    )
    try:
        kubeconfig = write_kubeconfig(
            tmp_path / "proxy-kubeconfig",
            server=md.url,
            ca_pem=(tmp_path / "proxy-ca.pem").read_bytes(),
            users={"admin": {"token": sandbox.admin_token}},
            current_user="admin",
        )
        proxied = Kubectl(kubeconfig, home=tmp_path / "home")
        # Until the first list of Lock objects arrived, mutations are refused (fail closed).
        deadline = time.monotonic() + 30
        while True:
            before = proxied("label", "pod", "my-pod", "a=b", namespace=namespace)
            if "locks are not loaded yet" not in before.stderr or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert before.returncode == 0, before.stderr

        kubectl("apply", "-f", "-", input=LOCK.format(namespace=namespace), check=True)
        # Wait (not a timing assertion) until the watch delivered the lock.
        deadline = time.monotonic() + 30
        while True:
            probe = proxied(
                "label", "pod", "my-pod", "c=d", "--dry-run=server", namespace=namespace
            )
            if probe.returncode != 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert "denied, there is a lock: map[aura:red]" in probe.stderr
        denied = proxied("label", "pod", "my-pod", "here=x", namespace=namespace)
        assert "denied, there is a lock: map[aura:red]" in denied.stderr
        labels = kubectl.json("get", "pod", "my-pod", namespace=namespace)["metadata"]["labels"]
        assert labels == {"aura": "red", "a": "b"}
    finally:
        _stop(md)


def test_unreachable_api_server_is_a_readable_status(tmp_path: Path) -> None:
    dead = f"https://127.0.0.1:{_free_port()}"
    ca = CertificateAuthority.create("nobody")
    (tmp_path / "upstream-ca.pem").write_bytes(ca.cert_pem)
    locks = tmp_path / "locks.yaml"
    locks.write_text(LOCK.format(namespace="default"))
    md = _start_mitmdump(tmp_path, dead, tmp_path / "upstream-ca.pem", str(locks))
    try:
        kubeconfig = write_kubeconfig(
            tmp_path / "proxy-kubeconfig",
            server=md.url,
            ca_pem=(tmp_path / "proxy-ca.pem").read_bytes(),
            users={"admin": {"token": "whatever"}},
            current_user="admin",
        )
        proxied = Kubectl(kubeconfig, home=tmp_path / "home")
        result = proxied("get", "--raw", "/api/v1/namespaces/default/pods")
    finally:
        _stop(md)
    assert result.returncode != 0
    assert f"the API server {dead} cannot be reached" in result.stderr
    assert "<html" not in result.stderr.lower()


async def _websocket_upstream() -> tuple[web.AppRunner, str]:
    """A stand-in API server: pods/exec is a WebSocket echo; GET of pod my-pod (aura=red)."""

    async def exec_echo(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(protocols=("v5.channel.k8s.io",))
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    async def get_pod(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        return web.json_response(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "resourceVersion": "1", "labels": {"aura": "red"}},
            }
        )

    app = web.Application()
    app.router.add_get("/api/v1/namespaces/{ns}/pods/{name}/exec", exec_echo)
    app.router.add_get("/api/v1/namespaces/{ns}/pods/{name}", get_pod)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def test_websocket_exec_passes_once_allowed_and_is_refused_when_locked(
    tmp_path: Path,
) -> None:
    runner, upstream = await _websocket_upstream()
    (tmp_path / "unused-ca.pem").write_bytes(CertificateAuthority.create("unused").cert_pem)
    locks = tmp_path / "locks.yaml"
    locks.write_text(
        "apiVersion: klock.rnemet.dev/v1\nkind: Lock\n"
        "metadata: {name: noexec, namespace: default}\n"
        "spec: {operations: [CONNECT], matcher: {aura: red}}\n"
    )
    md = _start_mitmdump(tmp_path, upstream, tmp_path / "unused-ca.pem", locks)
    tls = ssl.create_default_context(cafile=str(tmp_path / "proxy-ca.pem"))
    headers = {"Authorization": "Bearer caller"}
    try:
        async with aiohttp.ClientSession() as session:
            url = f"{md.url}/api/v1/namespaces/free/pods/p/exec?command=sh&stdin=true"
            async with session.ws_connect(
                url, ssl=tls, headers=headers, protocols=("v5.channel.k8s.io",)
            ) as ws:
                payload = bytes(range(256)) * 400  # 100 kB per message
                for i in range(50):
                    await ws.send_bytes(bytes([i]) + payload)
                    echoed = await ws.receive_bytes()
                    assert echoed == bytes([i]) + payload

            locked = f"{md.url}/api/v1/namespaces/default/pods/my-pod/exec?command=sh"
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(locked, ssl=tls, headers=headers)
            assert refused.value.status == 403
    finally:
        _stop(md)
        await runner.cleanup()


async def _spdy_upstream() -> tuple[asyncio.Server, str]:
    """Answers any request with 101 SPDY/3.1, then echoes raw bytes (kubectl's SPDY exec)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\n"
        )
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def test_spdy_exec_passes_as_a_raw_tunnel(tmp_path: Path) -> None:
    server, upstream = await _spdy_upstream()
    (tmp_path / "unused-ca.pem").write_bytes(CertificateAuthority.create("unused").cert_pem)
    locks = tmp_path / "locks.yaml"
    locks.write_text(LOCK.format(namespace="default"))
    md = _start_mitmdump(tmp_path, upstream, tmp_path / "unused-ca.pem", locks)
    tls = ssl.create_default_context(cafile=str(tmp_path / "proxy-ca.pem"))
    port = int(md.url.rsplit(":", 1)[1])
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
        writer.write(
            b"POST /api/v1/namespaces/free/pods/p/exec?command=sh HTTP/1.1\r\n"
            b"Host: 127.0.0.1\r\nAuthorization: Bearer caller\r\n"
            b"Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\nContent-Length: 0\r\n\r\n"
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        chunk = b"x" * 65536
        for _ in range(40):  # 2.5 MB through the tunnel
            writer.write(chunk)
            await writer.drain()
            assert await reader.readexactly(len(chunk)) == chunk
        writer.close()
    finally:
        _stop(md)
        server.close()
        await server.wait_closed()
