"""The sandbox's HTTP/2 front (klockproxy/sandbox/h2front.py), driven by an h2 client."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from klockproxy.sandbox.h2front import MAX_REQUEST_BODY
from klockproxy.sandbox.server import Sandbox
from tests.e2e.kube import Kubectl, find_kubectl
from tests.rawh2 import RawH2, h2_request
from tests.sandbox.cli_support import _start, _stop

CM_PATH = "/api/v1/namespaces/default/configmaps"


@pytest.fixture
async def h2_sandbox() -> AsyncIterator[Sandbox]:
    async with Sandbox(http2=True) as sb:
        yield sb


def _client(sb: Sandbox, *, http2: bool = True, token: str | None = "admin") -> httpx.AsyncClient:
    verify = ssl.create_default_context(cadata=sb.ca_pem.decode())
    headers = {"Authorization": f"Bearer {sb.admin_token}"} if token else {}
    return httpx.AsyncClient(
        base_url=sb.url, http2=http2, http1=not http2, verify=verify, headers=headers, timeout=60
    )


def _configmap(name: str, data: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


async def test_get_returns_the_sandboxs_object_over_http2(h2_sandbox: Sandbox) -> None:
    async with _client(h2_sandbox) as client:
        resp = await client.get("/api/v1/namespaces/default")
    assert resp.http_version == "HTTP/2"
    assert resp.status_code == 200
    assert resp.json()["metadata"]["name"] == "default"
    assert resp.json()["kind"] == "Namespace"
    front = h2_sandbox.h2front
    assert front is not None
    assert front.protocols == ["h2"]
    assert front.streams == 1
    assert list(front.requests) == [("GET", "/api/v1/namespaces/default")]


async def test_post_body_arrives_intact_and_large_answers_respect_flow_control(
    h2_sandbox: Sandbox,
) -> None:
    # Larger than HTTP/2's initial 64 KiB windows, both ways.
    data = {"big": "x" * 300_000, "text": "nikola=tesla ✓ ümlaut", "q": "a?b&c=d"}
    async with _client(h2_sandbox) as client:
        created = await client.post(CM_PATH, json=_configmap("big", data))
        assert created.status_code == 201, created.text
        got = await client.get(f"{CM_PATH}/big")
    assert got.http_version == "HTTP/2"
    assert got.json()["data"] == data
    stored = h2_sandbox.store.get("", "configmaps", "default", "big")
    assert stored is not None
    assert stored["data"] == data


async def test_a_body_past_the_fronts_limit_gets_413(h2_sandbox: Sandbox) -> None:
    data = {"big": "x" * (MAX_REQUEST_BODY + 1)}
    async with _client(h2_sandbox) as client:
        resp = await client.post(CM_PATH, json=_configmap("huge", data))
        assert resp.status_code == 413
        assert resp.json()["kind"] == "Status"
        assert (await client.get(f"{CM_PATH}/huge")).status_code == 404


async def test_query_and_headers_are_forwarded(h2_sandbox: Sandbox) -> None:
    async with _client(h2_sandbox) as client:
        for name, aura in (("red-cm", "red"), ("blue-cm", "blue")):
            body = _configmap(name, {})
            body["metadata"]["labels"] = {"aura": aura}
            assert (await client.post(CM_PATH, json=body)).status_code == 201
        listed = await client.get(CM_PATH, params={"labelSelector": "aura=red"})
        table = await client.get(
            CM_PATH, headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"}
        )
    assert [o["metadata"]["name"] for o in listed.json()["items"]] == ["red-cm"]
    assert table.json()["kind"] == "Table"


async def test_watch_streams_events_as_they_happen(h2_sandbox: Sandbox) -> None:
    async with (
        _client(h2_sandbox) as client,
        client.stream("GET", CM_PATH, params={"watch": "true"}) as watch,
    ):
        assert watch.http_version == "HTTP/2"
        assert watch.status_code == 200
        lines = watch.aiter_lines()
        # The watch is open before the object exists; creating it (on the same HTTP/2
        # connection) makes the event arrive on the still-open stream.
        created = await client.post(CM_PATH, json=_configmap("late", {"k": "v"}))
        assert created.status_code == 201
        event = json.loads(await anext(lines))
        assert event["type"] == "ADDED"
        assert event["object"]["metadata"]["name"] == "late"
        deleted = await client.delete(f"{CM_PATH}/late")
        assert deleted.status_code == 200
        event = json.loads(await anext(lines))
        assert event["type"] == "DELETED"
        assert event["object"]["metadata"]["name"] == "late"
        assert not watch.is_closed


async def test_an_unreachable_sandbox_gets_a_502_status(h2_sandbox: Sandbox) -> None:
    front = h2_sandbox.h2front
    assert front is not None
    runner = h2_sandbox._runner
    assert runner is not None
    await runner.cleanup()  # the sandbox behind the front is gone
    h2_sandbox._runner = None
    async with _client(h2_sandbox) as client:
        resp = await client.get(CM_PATH)
    assert resp.http_version == "HTTP/2"
    assert resp.status_code == 502
    assert resp.json()["kind"] == "Status"


async def _raw_h2(sb: Sandbox, headers: list[tuple[str, str]]) -> tuple[int, dict[str, Any]]:
    """Send one request with ``RawH2`` and read the whole answer."""
    client = await RawH2.open(sb)
    try:
        sid = client.send(headers)
        await client.until(lambda: sid in client.ended)
        return client.status[sid], json.loads(client.body[sid])
    finally:
        client.close()


async def test_a_client_leaving_a_watch_ends_the_sandbox_watch(h2_sandbox: Sandbox) -> None:
    store = h2_sandbox.store
    client = await RawH2.open(h2_sandbox)
    try:
        watch = client.send(_request(h2_sandbox, "GET", f"{CM_PATH}?watch=true"))
        await client.until(lambda: watch in client.status)
        assert client.status[watch] == 200
        assert store.watcher_count == 1
        client.reset(watch)
        # The front ends its sandbox request, and with it the sandbox's watch.
        for _ in range(3000):  # a hang guard, not a timing assertion
            if store.watcher_count == 0:
                break
            await asyncio.sleep(0.01)
        assert store.watcher_count == 0
        # The connection still serves requests.
        get = client.send(_request(h2_sandbox, "GET", CM_PATH))
        await client.until(lambda: get in client.ended)
        assert client.status[get] == 200
        assert json.loads(client.body[get])["kind"] == "ConfigMapList"
    finally:
        client.close()


def _request(sb: Sandbox, method: str, path: str) -> list[tuple[str, str]]:
    return h2_request(sb.url, sb.admin_token, method, path)


@pytest.mark.parametrize(
    "how",
    ["connection-upgrade", "upgrade-header", "extended-connect", "connect"],
)
async def test_upgrade_requests_get_a_status(h2_sandbox: Sandbox, how: str) -> None:
    path = "/api/v1/namespaces/default/pods/p/exec?command=sh&stdin=true"
    if how == "connection-upgrade":
        headers = [
            *_request(h2_sandbox, "POST", path),
            ("connection", "Upgrade"),
            ("upgrade", "SPDY/3.1"),
        ]
    elif how == "upgrade-header":
        headers = [*_request(h2_sandbox, "GET", path), ("upgrade", "websocket")]
    elif how == "extended-connect":
        headers = [*_request(h2_sandbox, "CONNECT", path), (":protocol", "websocket")]
    else:
        authority = h2_sandbox.url.removeprefix("https://")
        headers = [(":method", "CONNECT"), (":authority", authority)]
    status, body = await _raw_h2(h2_sandbox, headers)
    assert status == 501
    assert body["kind"] == "Status"
    assert body["code"] == 501
    assert "does not relay upgrades" in body["message"]
    front = h2_sandbox.h2front
    assert front is not None
    assert front.streams == 0  # nothing was forwarded


async def test_a_request_without_credentials_gets_the_sandboxs_answer(
    h2_sandbox: Sandbox,
) -> None:
    async with _client(h2_sandbox, token=None) as client:
        resp = await client.get(CM_PATH)
    assert resp.http_version == "HTTP/2"
    assert resp.status_code == 401
    assert resp.json()["kind"] == "Status"


async def test_http11_clients_are_relayed(h2_sandbox: Sandbox) -> None:
    async with _client(h2_sandbox, http2=False) as client:
        resp = await client.get("/api/v1/namespaces/default")
    assert resp.http_version == "HTTP/1.1"
    assert resp.json()["metadata"]["name"] == "default"
    front = h2_sandbox.h2front
    assert front is not None
    assert front.protocols == ["http/1.1"]
    assert front.streams == 0


async def test_stop_ends_open_watches_and_leaves_no_tasks() -> None:
    before = asyncio.all_tasks()
    sb = Sandbox(http2=True)
    await sb.start()
    client = _client(sb)
    try:
        async with client.stream("GET", CM_PATH, params={"watch": "true"}) as watch:
            assert watch.status_code == 200
            await sb.stop()
            with pytest.raises(httpx.HTTPError):
                async for _ in watch.aiter_lines():
                    pass
    finally:
        await client.aclose()
        await sb.stop()
    assert sb.h2front is None
    assert asyncio.all_tasks() - before == {asyncio.current_task()} - before


async def test_the_default_sandbox_is_unchanged(sandbox: Sandbox) -> None:
    assert sandbox.h2front is None
    verify = ssl.create_default_context(cadata=sandbox.ca_pem.decode())
    headers = {"Authorization": f"Bearer {sandbox.admin_token}"}
    async with httpx.AsyncClient(
        base_url=sandbox.url, http2=True, verify=verify, headers=headers
    ) as client:
        resp = await client.get("/api/v1/namespaces/default")
    assert resp.http_version == "HTTP/1.1"
    assert resp.status_code == 200


def test_the_cli_flag_serves_http2_and_kubectl_works(tmp_path: Path) -> None:
    if find_kubectl() is None:
        pytest.skip("kubectl is not installed")
    proc, line = _start(tmp_path, "--http2")
    try:
        assert line.startswith("klockproxy sandbox ready on https://127.0.0.1:"), line
        config = yaml.safe_load((tmp_path / "kubeconfig").read_text())
        cluster = config["clusters"][0]["cluster"]
        user = next(u["user"] for u in config["users"] if u["name"] == "admin")
        ca = base64.b64decode(cluster["certificate-authority-data"]).decode()
        with httpx.Client(
            http2=True,
            http1=False,
            verify=ssl.create_default_context(cadata=ca),
            headers={"Authorization": f"Bearer {user['token']}"},
        ) as client:
            resp = client.get(cluster["server"] + "/api/v1/namespaces/default")
        assert resp.http_version == "HTTP/2"
        assert resp.json()["metadata"]["name"] == "default"
        kubectl = Kubectl(tmp_path / "kubeconfig", home=tmp_path / "home")
        result = kubectl(
            "create", "configmap", "via-cli", "--from-literal", "a=b", namespace="default"
        )
        assert result.returncode == 0, result.stderr
        assert kubectl.json("get", "cm", "via-cli", namespace="default")["data"] == {"a": "b"}
    finally:
        assert _stop(proc) == 0
