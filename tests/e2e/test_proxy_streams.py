"""Streams through the proxy (watch, logs -f: each event arrives while kubectl is still
running), and the proxy's own token (every client must present it)."""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.e2e import proxy_support as support
from tests.e2e.kube import Kubectl, stop_process
from tests.e2e.proxy_support import HANG_GUARD, Lines, Proxy, assert_ok

pytestmark = pytest.mark.e2e

proxy = support.proxy


@pytest.fixture
def running(request: pytest.FixtureRequest) -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        stop_process(p)


def test_watch_streams_each_event_while_running(
    proxy: Proxy, kubectl: Kubectl, namespace: str, running: list[subprocess.Popen[str]]
) -> None:
    kubectl("run", "first", "--image", "nginx", namespace=namespace, check=True)
    watch = proxy.kubectl.popen("get", "pods", "-w", "-o", "name", namespace=namespace)
    running.append(watch)
    lines = Lines(watch)
    assert lines.until("pod/first") == "pod/first"
    # The watch is open: a pod created now shows up on it, and kubectl is still running.
    kubectl("run", "second", "--image", "nginx", namespace=namespace, check=True)
    assert lines.until("pod/second") == "pod/second"
    kubectl("label", "pod", "first", "seen=yes", namespace=namespace, check=True)
    assert lines.until("pod/first") == "pod/first"
    assert watch.poll() is None


def test_logs_follow_streams_lines_while_running(
    proxy: Proxy,
    kubectl: Kubectl,
    namespace: str,
    running: list[subprocess.Popen[str]],
    kube_target: support.KubeTarget,
) -> None:
    kubectl(
        "run", "ticker", "--image", "busybox", "--restart=Never", "--",
        "sh", "-c", "i=0; while true; do i=$((i+1)); echo tick $i; sleep 1; done",
        namespace=namespace, check=True,
    )  # fmt: skip
    kubectl(
        "wait", "--for=condition=Ready", "pod/ticker", "--timeout=120s",
        namespace=namespace, check=True, timeout=150,
    )  # fmt: skip
    follow = proxy.kubectl.popen("logs", "-f", "ticker", namespace=namespace)
    running.append(follow)
    lines = Lines(follow)
    # The sandbox writes "... log line N" (3 at once, then one at a time); busybox "tick N".
    word = "log line" if kube_target.is_sandbox else "tick"
    lines.until(f"{word} 1")
    # A line produced AFTER kubectl started following, received while it still runs.
    lines.until(f"{word} 4")
    assert follow.poll() is None


def _https(url: str, ca_pem: bytes, token: str | None) -> tuple[int, dict[str, object]]:
    host, port = url.removeprefix("https://").rsplit(":", 1)
    conn = http.client.HTTPSConnection(
        host.strip("[]"),
        int(port),
        context=ssl.create_default_context(cadata=ca_pem.decode()),
        timeout=HANG_GUARD,
    )
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    conn.request("GET", "/api/v1/namespaces/default/configmaps", headers=headers)
    resp = conn.getresponse()
    body = json.loads(resp.read() or b"{}")
    conn.close()
    return resp.status, body


def test_the_proxy_token_is_required(proxy: Proxy, tmp_path: Path) -> None:
    config = yaml.safe_load(proxy.thread.kubeconfig_path.read_text())
    ca_pem = base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"])
    url = proxy.thread.url

    status, body = _https(url, ca_pem, None)
    assert status == 401
    assert body["kind"] == "Status" and body["code"] == 401
    status, _ = _https(url, ca_pem, "somebody-elses-token")
    assert status == 401
    status, body = _https(url, ca_pem, proxy.thread.client_token)
    assert status == 200 and body["kind"] == "ConfigMapList"

    # kubectl with a kubeconfig holding another token gets "Unauthorized", mutations too.
    config["users"][0]["user"]["token"] = "not-the-proxy-token"
    wrong = tmp_path / "wrong.kubeconfig"
    wrong.write_text(yaml.safe_dump(config))
    intruder = Kubectl(wrong, home=tmp_path / "home")
    for argv in (("get", "pods"), ("create", "configmap", "sneaky", "--from-literal=a=b")):
        result = intruder(*argv)
        assert result.returncode == 1
        # kubectl's words for a 401: "(Unauthorized)" or "...to provide credentials".
        assert "Unauthorized" in result.stderr or "provide credentials" in result.stderr
    assert_ok(proxy.kubectl("get", "configmaps"))
    assert "sneaky" not in proxy.kubectl("get", "configmaps", "-o", "name").stdout
