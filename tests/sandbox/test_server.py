"""The sandbox API server over HTTPS: status codes, reasons and bodies as a client sees them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from klockproxy.core import protobuf
from klockproxy.crd import crd_object
from klockproxy.sandbox.server import Sandbox, parse_path

JSON = "application/json"


class Client:
    def __init__(self, sandbox: Sandbox, session: aiohttp.ClientSession, token: str) -> None:
        self.sb = sandbox
        self.session = session
        self.token = token

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = JSON,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> tuple[int, Any]:
        hdrs = {"Authorization": f"Bearer {self.token}", **(headers or {})}
        data: bytes | None = raw
        if body is not None:
            data = json.dumps(body).encode()
        if data is not None:
            hdrs["Content-Type"] = content_type
        async with self.session.request(method, self.sb.url + path, data=data, headers=hdrs) as r:
            text = await r.text()
            try:
                return r.status, json.loads(text)
            except ValueError:
                return r.status, text


@pytest.fixture
async def client(sandbox: Sandbox) -> AsyncIterator[Client]:
    ctx = ssl.create_default_context(cadata=sandbox.ca_pem.decode())
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        yield Client(sandbox, session, sandbox.admin_token)


def _cm(name: str, labels: dict[str, str] | None = None, **data: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if labels:
        meta["labels"] = labels
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}


CMS = "/api/v1/namespaces/default/configmaps"


async def test_discovery_documents(client: Client) -> None:
    status, api = await client.request("GET", "/api")
    assert status == 200 and api["versions"] == ["v1"]
    status, groups = await client.request(
        "GET",
        "/apis",
        headers={"Accept": "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"},
    )
    assert status == 200 and groups["kind"] == "APIGroupList"
    assert "apps" in [g["name"] for g in groups["groups"]]
    status, core = await client.request("GET", "/api/v1")
    by_name = {r["name"]: r for r in core["resources"]}
    assert by_name["pods"]["shortNames"] == ["po"]
    assert by_name["pods"]["namespaced"] is True
    assert "pods/log" in by_name and "pods/eviction" in by_name
    assert by_name["namespaces"]["namespaced"] is False
    status, apps = await client.request("GET", "/apis/apps/v1")
    scale = next(r for r in apps["resources"] if r["name"] == "deployments/scale")
    assert (scale["group"], scale["kind"]) == ("autoscaling", "Scale")


async def test_openapi_v3_index_and_documents(client: Client) -> None:
    status, index = await client.request("GET", "/openapi/v3")
    assert status == 200
    url = index["paths"]["api/v1"]["serverRelativeURL"]
    assert url.startswith("/openapi/v3/api/v1?hash=")
    status, doc = await client.request("GET", url)
    pod = doc["components"]["schemas"]["io.k8s.api.core.v1.Pod"]
    assert pod["x-kubernetes-group-version-kind"] == [{"group": "", "version": "v1", "kind": "Pod"}]
    containers = pod["properties"]["spec"]["properties"]["containers"]
    assert containers["x-kubernetes-patch-merge-key"] == "name"
    patch = doc["paths"]["/api/v1/namespaces/{namespace}/pods/{name}"]["patch"]
    assert "fieldValidation" in [p["name"] for p in patch["parameters"]]
    status, _ = await client.request("GET", "/openapi/v2")
    assert status == 404


async def test_create_get_table_and_conflicts(client: Client) -> None:
    status, created = await client.request("POST", CMS, _cm("a", {"x": "1"}, k="v"))
    assert status == 201
    meta = created["metadata"]
    assert meta["uid"] and meta["resourceVersion"] and meta["creationTimestamp"]
    status, again = await client.request("POST", CMS, _cm("a"))
    assert (status, again["reason"]) == (409, "AlreadyExists")
    assert again["message"] == 'configmaps "a" already exists'

    status, table = await client.request(
        "GET", CMS, headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"}
    )
    assert table["kind"] == "Table"
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Data", "Age"]
    assert table["rows"][0]["cells"][:2] == ["a", 1]
    assert table["rows"][0]["object"]["kind"] == "PartialObjectMetadata"

    stale = dict(created, data={"k": "new"})
    stale["metadata"] = dict(meta, resourceVersion="1")
    status, body = await client.request("PUT", f"{CMS}/a", stale)
    assert (status, body["reason"]) == (409, "Conflict")
    assert "the object has been modified" in body["message"]
    status, body = await client.request(
        "PATCH",
        f"{CMS}/a",
        {"metadata": {"resourceVersion": "1"}, "data": {"k": "p"}},
        content_type="application/merge-patch+json",
    )
    assert status == 409
    fresh = dict(created, data={"k": "new"})
    status, updated = await client.request("PUT", f"{CMS}/a", fresh)
    assert status == 200 and updated["data"] == {"k": "new"}
    assert int(updated["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])


async def test_delete_preconditions_and_dry_run(client: Client) -> None:
    _, created = await client.request("POST", CMS, _cm("d"))
    status, body = await client.request(
        "DELETE", f"{CMS}/d", {"preconditions": {"uid": "not-the-uid"}}
    )
    assert (status, body["reason"]) == (409, "Conflict")
    assert "Precondition failed: UID in precondition" in body["message"]
    status, body = await client.request(
        "DELETE", f"{CMS}/d", {"preconditions": {"resourceVersion": "1"}}
    )
    assert status == 409
    status, _ = await client.request("DELETE", f"{CMS}/d?dryRun=All")
    assert status == 200
    status, _ = await client.request("GET", f"{CMS}/d")
    assert status == 200
    status, _ = await client.request(
        "DELETE", f"{CMS}/d", {"preconditions": {"uid": created["metadata"]["uid"]}}
    )
    assert status == 200
    status, body = await client.request("GET", f"{CMS}/d")
    assert (status, body["reason"]) == (404, "NotFound")


async def test_dry_run_create_stores_nothing(client: Client) -> None:
    status, _ = await client.request("POST", f"{CMS}?dryRun=All", _cm("dry"))
    assert status == 201
    status, _ = await client.request("GET", f"{CMS}/dry")
    assert status == 404


async def test_yaml_bodies_are_read_like_the_api_server(client: Client) -> None:
    """An unquoted date stays a string (go-yaml), not an internal error."""
    body = b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: dated}\ndata: {when: 2024-01-01}\n"
    status, created = await client.request("POST", CMS, raw=body, content_type="application/yaml")
    assert status == 201, created
    assert created["data"] == {"when": "2024-01-01"}
    # go-yaml applies a merge key in document order: after an explicit key, it overwrites it.
    merge = b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: m, labels: {a: b, <<: {a: c}}}\n"
    status, created = await client.request("POST", CMS, raw=merge, content_type="application/yaml")
    assert status == 201, created
    assert created["metadata"]["labels"] == {"a": "c"}
    # JSON is YAML, tabs between tokens included (PyYAML alone refuses them).
    tabbed = b'{"apiVersion":\t"v1", "kind": "ConfigMap",\t"metadata": {"name": "tabs"}}'
    status, created = await client.request("POST", CMS, raw=tabbed, content_type="application/yaml")
    assert status == 201, created


async def test_repeated_json_keys_are_stored_as_the_api_server_stores_them(client: Client) -> None:
    """What the proxy refuses as ambiguous, the sandbox stores as a real API server would:
    a repeated object decodes into the first one (Go structs), so aura=red stays."""
    body = (
        b'{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"d","labels":{"aura":"red"},'
        b'"labels":{"app":"x"}},"data":{},"data":{"a":"b"}}'
    )
    status, created = await client.request("POST", CMS, raw=body)
    assert status == 201, created
    assert created["metadata"]["labels"] == {"aura": "red", "app": "x"}
    assert created["data"] == {"a": "b"}
    # kubectl's default, fieldValidation=Strict, refuses them.
    strict = body.replace(b'"d"', b'"e"')
    status, refused = await client.request("POST", f"{CMS}?fieldValidation=Strict", raw=strict)
    assert (status, refused["reason"]) == (400, "BadRequest")
    assert 'duplicate field "labels"' in refused["message"]
    status, _ = await client.request("GET", f"{CMS}/e")
    assert status == 404


async def test_bad_input_statuses(client: Client) -> None:
    status, body = await client.request("POST", CMS, raw=b"{not json")
    assert (status, body["reason"]) == (400, "BadRequest")
    status, body = await client.request("POST", CMS, raw=b"x: [", content_type="application/yaml")
    assert status == 400
    status, body = await client.request("POST", CMS, raw=b"abc", content_type="text/plain")
    assert (status, body["reason"]) == (415, "UnsupportedMediaType")
    status, body = await client.request(
        "POST", CMS, raw=b"k8s\x00\x0a\x02\x08", content_type="application/vnd.kubernetes.protobuf"
    )
    assert status in (400, 415) and body["kind"] == "Status"
    big = _cm("big", huge="x" * (3 * 1024 * 1024 + 10))
    status, body = await client.request("POST", CMS, big)
    assert (status, body["reason"]) == (413, "RequestEntityTooLarge")
    status, body = await client.request("POST", CMS, _cm("Bad_Name"))
    assert (status, body["reason"]) == (422, "Invalid")
    assert body["details"]["causes"][0]["field"] == "metadata.name"
    status, body = await client.request("GET", "/api/v1/namespaces/default/frobs")
    assert (status, body["reason"]) == (404, "NotFound")
    status, body = await client.request("PUT", CMS, _cm("x"))
    assert (status, body["reason"]) == (405, "MethodNotAllowed")
    status, body = await client.request("POST", "/api/v1/namespaces/missing/configmaps", _cm("x"))
    assert (status, body["message"]) == (404, 'namespaces "missing" not found')
    # the server keeps serving
    status, _ = await client.request("GET", CMS)
    assert status == 200


async def test_protobuf_configmap_create(client: Client) -> None:
    body = protobuf.encode_k8s_protobuf(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "pb"}, "data": {"a": "b"}}
    )
    status, created = await client.request(
        "POST", CMS, raw=body, content_type="application/vnd.kubernetes.protobuf"
    )
    assert status == 201, created
    assert created["data"] == {"a": "b"}


async def test_authentication_and_client_certificates(sandbox: Sandbox, tmp_path: Path) -> None:
    ctx = ssl.create_default_context(cadata=sandbox.ca_pem.decode())
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s:
        async with s.get(sandbox.url + "/api/v1/namespaces") as r:
            assert r.status == 401
            assert (await r.json())["reason"] == "Unauthorized"
        async with s.get(
            sandbox.url + "/api/v1/namespaces", headers={"Authorization": "Bearer nope"}
        ) as r:
            assert r.status == 401
    cert, key = sandbox.ca.issue_client("carol", ["system:masters"])
    (tmp_path / "c.crt").write_bytes(cert)
    (tmp_path / "c.key").write_bytes(key)
    ctx.load_cert_chain(tmp_path / "c.crt", tmp_path / "c.key")
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s,
        s.get(sandbox.url + "/api/v1/namespaces") as r,
    ):
        assert r.status == 200
        assert "default" in [n["metadata"]["name"] for n in (await r.json())["items"]]


async def test_paging_with_limit_and_continue(client: Client) -> None:
    for i in range(5):
        await client.request("POST", CMS, _cm(f"page-{i}"))
    status, first = await client.request("GET", f"{CMS}?limit=2")
    assert [i["metadata"]["name"] for i in first["items"]] == ["page-0", "page-1"]
    token = first["metadata"]["continue"]
    assert first["metadata"]["remainingItemCount"] == 3
    status, second = await client.request("GET", f"{CMS}?limit=2&continue={token}")
    assert [i["metadata"]["name"] for i in second["items"]] == ["page-2", "page-3"]
    status, third = await client.request(
        "GET", f"{CMS}?limit=2&continue={second['metadata']['continue']}"
    )
    assert [i["metadata"]["name"] for i in third["items"]] == ["page-4"]
    assert "continue" not in third["metadata"]
    status, _body = await client.request("GET", f"{CMS}?continue=garbage!")
    assert status == 400


async def test_expired_continue_and_too_old_watch_are_gone(tmp_path: Path) -> None:
    async with Sandbox(history_size=5) as sb:
        ctx = ssl.create_default_context(cadata=sb.ca_pem.decode())
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
            c = Client(sb, session, sb.admin_token)
            for i in range(3):
                await c.request("POST", CMS, _cm(f"c{i}"))
            _, first = await c.request("GET", f"{CMS}?limit=1")
            token = first["metadata"]["continue"]
            old_rv = first["metadata"]["resourceVersion"]
            for i in range(10):
                await c.request("POST", CMS, _cm(f"more{i}"))
            status, body = await c.request("GET", f"{CMS}?limit=1&continue={token}")
            assert (status, body["reason"]) == (410, "Expired")
            status, text = await c.request("GET", f"{CMS}?watch=true&resourceVersion={old_rv}")
            event = json.loads(text.splitlines()[0]) if isinstance(text, str) else text
            assert event["type"] == "ERROR"
            assert event["object"]["code"] == 410
            assert event["object"]["reason"] == "Expired"


async def _read_events(resp: aiohttp.ClientResponse, count: int) -> list[dict[str, Any]]:
    events = []
    while len(events) < count:
        line = await resp.content.readline()
        if not line:
            break
        events.append(json.loads(line))
    return events


async def test_watch_from_resource_version_with_selector(client: Client) -> None:
    _, first = await client.request("POST", CMS, _cm("w0", {"app": "x"}))
    rv = first["metadata"]["resourceVersion"]
    headers = {"Authorization": f"Bearer {client.token}"}
    url = f"{client.sb.url}{CMS}?watch=true&resourceVersion={rv}&labelSelector=app%3Dx"
    async with client.session.get(url, headers=headers) as resp:
        assert resp.status == 200
        await client.request("POST", CMS, _cm("other"))
        await client.request("POST", CMS, _cm("w1", {"app": "x"}))
        await client.request(
            "PATCH",
            f"{CMS}/w1",
            {"data": {"a": "b"}},
            content_type="application/merge-patch+json",
        )
        await client.request("DELETE", f"{CMS}/w1")
        events = await asyncio.wait_for(_read_events(resp, 3), 30)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "w1"),
        ("MODIFIED", "w1"),
        ("DELETED", "w1"),
    ]


async def test_deletecollection_with_label_selector(client: Client) -> None:
    for name, tier in (("a", "x"), ("b", "x"), ("c", "y")):
        await client.request("POST", CMS, _cm(name, {"tier": tier}))
    status, body = await client.request("DELETE", f"{CMS}?labelSelector=tier%3Dx")
    assert status == 200
    assert sorted(i["metadata"]["name"] for i in body["items"]) == ["a", "b"]
    _, listing = await client.request("GET", CMS)
    assert [i["metadata"]["name"] for i in listing["items"]] == ["c"]


async def test_field_selectors(client: Client) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "nginx"}]},
    }
    status, created = await client.request("POST", "/api/v1/namespaces/default/pods", pod)
    assert status == 201 and created["status"]["phase"] == "Running"
    _, running = await client.request(
        "GET", "/api/v1/pods?fieldSelector=status.phase%3DRunning,spec.nodeName%3Dsandbox-node"
    )
    assert [i["metadata"]["name"] for i in running["items"]] == ["p"]
    _, none = await client.request("GET", "/api/v1/pods?fieldSelector=status.phase%21%3DRunning")
    assert none["items"] == []
    status, body = await client.request("GET", "/api/v1/pods?fieldSelector=spec.foo%3Dx")
    assert status == 400 and "field label not supported" in body["message"]


async def test_crd_registers_and_removes_resources(client: Client) -> None:
    status, _ = await client.request(
        "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd_object()
    )
    assert status == 201
    _, groups = await client.request("GET", "/apis")
    assert "klock.rnemet.dev" in [g["name"] for g in groups["groups"]]
    _, resources = await client.request("GET", "/apis/klock.rnemet.dev/v1")
    assert [r["name"] for r in resources["resources"]] == ["locks"]
    _, index = await client.request("GET", "/openapi/v3")
    url = index["paths"]["apis/klock.rnemet.dev/v1"]["serverRelativeURL"]
    _, doc = await client.request("GET", url)
    assert "dev.rnemet.klock.v1.Lock" in doc["components"]["schemas"]
    locks = "/apis/klock.rnemet.dev/v1/namespaces/default/locks"
    lock = {
        "apiVersion": "klock.rnemet.dev/v1",
        "kind": "Lock",
        "metadata": {"name": "l"},
        "spec": {"operations": ["DELETE"], "matcher": {"aura": "red"}},
    }
    status, _ = await client.request("POST", locks, lock)
    assert status == 201
    status, body = await client.request(
        "PATCH",
        f"{locks}/l",
        {"spec": {"operations": ["UPDATE"]}},
        content_type="application/strategic-merge-patch+json",
    )
    assert (status, body["reason"]) == (415, "UnsupportedMediaType")
    status, body = await client.request(
        "POST", locks, raw=b"k8s\x00", content_type="application/vnd.kubernetes.protobuf"
    )
    assert status == 415
    status, _ = await client.request(
        "DELETE", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/locks.klock.rnemet.dev"
    )
    assert status == 200
    status, _ = await client.request("GET", locks)
    assert status == 404
    _, groups = await client.request("GET", "/apis")
    assert "klock.rnemet.dev" not in [g["name"] for g in groups["groups"]]


async def test_deployment_scale_and_status(client: Client) -> None:
    deploys = "/apis/apps/v1/namespaces/default/deployments"
    deploy = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "nginx"}]},
            },
        },
    }
    status, created = await client.request("POST", deploys, deploy)
    assert status == 201
    assert created["status"]["readyReplicas"] == 2
    assert created["metadata"]["generation"] == 1
    status, scale = await client.request("GET", f"{deploys}/web/scale")
    assert (scale["kind"], scale["spec"]["replicas"]) == ("Scale", 2)
    assert scale["status"]["selector"] == "app=web"
    status, scale = await client.request(
        "PATCH",
        f"{deploys}/web/scale",
        {"spec": {"replicas": 5}},
        content_type="application/merge-patch+json",
    )
    assert status == 200 and scale["spec"]["replicas"] == 5
    _, after = await client.request("GET", f"{deploys}/web")
    assert after["spec"]["replicas"] == 5
    assert after["status"]["readyReplicas"] == 5
    assert after["metadata"]["generation"] == 2
    bad = dict(deploy, metadata={"name": "bad"})
    bad["spec"] = dict(deploy["spec"], selector={"matchLabels": {"app": "other"}})
    status, _body = await client.request("POST", deploys, bad)
    assert status == 422


async def test_eviction_and_connect_subresources(client: Client) -> None:
    pods = "/api/v1/namespaces/default/pods"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "victim"},
        "spec": {"containers": [{"name": "c", "image": "nginx"}]},
    }
    await client.request("POST", pods, pod)
    status, body = await client.request("POST", f"{pods}/victim/exec?command=ls")
    assert status == 400 and "the sandbox runs no containers" in body["message"]
    status, body = await client.request(
        "POST",
        f"{pods}/victim/eviction",
        {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "victim"}},
    )
    assert status == 201 and body["status"] == "Success"
    status, _ = await client.request("GET", f"{pods}/victim")
    assert status == 404


async def test_log_follow_streams_until_the_client_leaves(client: Client) -> None:
    pods = "/api/v1/namespaces/default/pods"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "talker"},
        "spec": {"containers": [{"name": "c", "image": "nginx"}]},
    }
    await client.request("POST", pods, pod)
    status, text = await client.request("GET", f"{pods}/talker/log")
    assert status == 200 and len(text.splitlines()) == 3
    headers = {"Authorization": f"Bearer {client.token}"}
    url = f"{client.sb.url}{pods}/talker/log?follow=true"
    async with client.session.get(url, headers=headers) as resp:
        lines = []
        while len(lines) < 6:
            lines.append(await asyncio.wait_for(resp.content.readline(), 30))
    assert lines[5].decode().endswith("log line 6\n")


async def test_namespace_deletion_removes_contents(client: Client) -> None:
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}}
    status, _ = await client.request("POST", "/api/v1/namespaces", ns)
    assert status == 201
    await client.request("POST", "/api/v1/namespaces/team/configmaps", _cm("inside"))
    _, sa = await client.request("GET", "/api/v1/namespaces/team/serviceaccounts/default")
    assert sa["metadata"]["name"] == "default"
    status, _ = await client.request("DELETE", "/api/v1/namespaces/team")
    assert status == 200
    status, _ = await client.request("GET", "/api/v1/namespaces/team/configmaps/inside")
    assert status == 404
    status, body = await client.request("DELETE", "/api/v1/namespaces/default")
    assert (status, body["reason"]) == (403, "Forbidden")


async def test_server_side_apply_creates_then_updates(client: Client) -> None:
    doc = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ssa\ndata:\n  a: '1'\n"
    status, created = await client.request(
        "PATCH",
        f"{CMS}/ssa?fieldManager=test",
        raw=doc,
        content_type="application/apply-patch+yaml",
    )
    assert status == 201 and created["data"] == {"a": "1"}
    status, updated = await client.request(
        "PATCH",
        f"{CMS}/ssa?fieldManager=test",
        raw=doc.replace(b"'1'", b"'2'"),
        content_type="application/apply-patch+yaml",
    )
    assert status == 200 and updated["data"] == {"a": "2"}
    assert updated["metadata"]["managedFields"][0]["manager"] == "test"


async def test_pod_status_subresource_and_image_update(client: Client) -> None:
    pods = "/api/v1/namespaces/default/pods"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "st"},
        "spec": {"containers": [{"name": "c", "image": "nginx:1"}]},
    }
    await client.request("POST", pods, pod)
    status, patched = await client.request(
        "PATCH",
        f"{pods}/st/status",
        {"status": {"phase": "Succeeded"}},
        content_type="application/merge-patch+json",
    )
    assert status == 200 and patched["status"]["phase"] == "Succeeded"
    # a status in a main-resource update is ignored
    status, _ = await client.request(
        "PATCH",
        f"{pods}/st",
        {"metadata": {"labels": {"a": "b"}}, "status": {"phase": "Failed"}},
        content_type="application/merge-patch+json",
    )
    _, current = await client.request("GET", f"{pods}/st")
    assert current["status"]["phase"] == "Succeeded"
    assert current["metadata"]["labels"] == {"a": "b"}
    status, _ = await client.request(
        "PATCH",
        f"{pods}/st",
        {"spec": {"containers": [{"name": "c", "image": "nginx:2"}]}},
        content_type="application/strategic-merge-patch+json",
    )
    _, current = await client.request("GET", f"{pods}/st")
    assert current["status"]["containerStatuses"][0]["image"] == "nginx:2"
    status, body = await client.request(
        "PATCH",
        f"{pods}/st",
        {"spec": {"restartPolicy": "Never"}},
        content_type="application/merge-patch+json",
    )
    assert (status, body["reason"]) == (422, "Invalid")
    status, eph = await client.request(
        "PATCH",
        f"{pods}/st/ephemeralcontainers",
        {"spec": {"ephemeralContainers": [{"name": "debug", "image": "busybox"}]}},
        content_type="application/strategic-merge-patch+json",
    )
    assert status == 200, eph
    assert eph["spec"]["ephemeralContainers"][0]["name"] == "debug"


async def test_delete_answers_like_the_api_server(client: Client) -> None:
    _, created = await client.request("POST", CMS, _cm("del"))
    status, body = await client.request("DELETE", f"{CMS}/del")
    assert status == 200
    assert (body["kind"], body["status"]) == ("Status", "Success")
    assert body["details"] == {
        "name": "del",
        "kind": "configmaps",
        "uid": created["metadata"]["uid"],
    }


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (CMS, {"metadata": {"name": 5}}),
        (CMS, {"metadata": {"name": "x", "labels": {"a": 1}}}),
        (CMS, {"metadata": {"name": "x"}, "data": {"a": ["not", "a", "string"]}}),
        ("/api/v1/namespaces/default/secrets", {"metadata": {"name": "x"}, "stringData": []}),
        ("/api/v1/namespaces/default/services", {"metadata": {"name": "x"}, "spec": "nope"}),
        (
            "/apis/apps/v1/namespaces/default/deployments",
            {"metadata": {"name": "x"}, "spec": {"template": [], "selector": "x"}},
        ),
    ],
)
async def test_wrongly_typed_objects_are_bad_requests(
    client: Client, path: str, body: dict[str, Any]
) -> None:
    status, answer = await client.request("POST", path, body)
    assert status in (400, 422), answer
    assert answer["kind"] == "Status"
    status, _ = await client.request("GET", CMS)
    assert status == 200


async def test_a_watch_whose_client_left_is_released(sandbox: Sandbox, client: Client) -> None:
    headers = {"Authorization": f"Bearer {client.token}"}
    url = f"{sandbox.url}{CMS}?watch=true"
    async with client.session.get(url, headers=headers) as resp:
        assert resp.status == 200
        assert sandbox.store.watcher_count == 1
    # the client is gone and nothing happens on configmaps: the server notices by itself
    for _ in range(200):
        if not sandbox.store.watcher_count:
            break
        await asyncio.sleep(0.05)
    assert sandbox.store.watcher_count == 0


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/namespaces/default/configmaps//odd",
        "/api/v1/namespaces//configmaps/odd",
    ],
)
async def test_paths_with_empty_or_dot_segments_route_nowhere(client: Client, path: str) -> None:
    await client.request("POST", CMS, _cm("odd"))
    status, body = await client.request("DELETE", path)
    assert (status, body["reason"]) == (404, "NotFound")
    status, _ = await client.request("GET", f"{CMS}/odd")
    assert status == 200


def test_parse_path_routes() -> None:
    route = parse_path("/apis/apps/v1/namespaces/ns/deployments/web/scale")
    assert (route.group, route.resource, route.namespace, route.name, route.subresource) == (
        "apps",
        "deployments",
        "ns",
        "web",
        "scale",
    )
    ns = parse_path("/api/v1/namespaces/ns")
    assert (ns.resource, ns.name, ns.namespace) == ("namespaces", "ns", "ns")
    assert parse_path("/api/v1/namespaces/ns/status").subresource == "status"
    assert parse_path("/apis/").kind == "discovery"


PARTIAL_LIST_ACCEPT = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
PARTIAL_ACCEPT = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"


async def test_metadata_only_get_list_and_watch(client: Client) -> None:
    owner = {"apiVersion": "v1", "kind": "ConfigMap", "name": "o", "uid": "u-o"}
    body = _cm("meta", {"aura": "red"}, secret="value")
    body["metadata"]["ownerReferences"] = [owner]
    _, created = await client.request("POST", CMS, body)
    rv = created["metadata"]["resourceVersion"]
    status, page = await client.request(
        "GET", f"{CMS}?labelSelector=aura%3Dred", headers={"Accept": PARTIAL_LIST_ACCEPT}
    )
    assert status == 200 and page["kind"] == "PartialObjectMetadataList"
    [item] = page["items"]
    assert item["kind"] == "PartialObjectMetadata" and "data" not in item
    assert item["metadata"]["ownerReferences"] == [owner]
    assert page["metadata"]["resourceVersion"]
    status, one = await client.request(
        "GET", f"{CMS}/meta", headers={"Accept": PARTIAL_ACCEPT + ",application/json"}
    )
    assert (status, one["kind"], "data" in one) == (200, "PartialObjectMetadata", False)
    # The list form on one object (and the reverse) is 406, as from the API server.
    status, refused = await client.request(
        "GET", f"{CMS}/meta", headers={"Accept": PARTIAL_LIST_ACCEPT}
    )
    assert (status, refused["reason"]) == (406, "NotAcceptable")
    status, refused = await client.request("GET", CMS, headers={"Accept": PARTIAL_ACCEPT})
    assert status == 406
    headers = {"Authorization": f"Bearer {client.token}", "Accept": PARTIAL_ACCEPT}
    url = f"{client.sb.url}{CMS}?watch=true&resourceVersion={rv}"
    async with client.session.get(url, headers=headers) as resp:
        assert resp.status == 200
        await client.request("DELETE", f"{CMS}/meta")
        [event] = await asyncio.wait_for(_read_events(resp, 1), 30)
    assert event["type"] == "DELETED"
    assert event["object"]["kind"] == "PartialObjectMetadata" and "data" not in event["object"]


async def test_workload_kinds_are_served_and_scaled(client: Client) -> None:
    rs = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {"name": "rs"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"a": "b"}}},
    }
    status, _ = await client.request("POST", "/apis/apps/v1/namespaces/default/replicasets", rs)
    assert status == 201
    status, scale = await client.request(
        "GET", "/apis/apps/v1/namespaces/default/replicasets/rs/scale"
    )
    assert (status, scale["spec"]["replicas"]) == (200, 2)
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"}, "spec": {}}
    status, _ = await client.request("POST", "/apis/batch/v1/namespaces/default/jobs", job)
    assert status == 201


async def test_a_status_write_stores_owner_references_where_the_api_server_does(
    client: Client,
) -> None:
    dep = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "labels": {"a": "b"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "nginx"}]},
            },
        },
    }
    path = "/apis/apps/v1/namespaces/default/deployments"
    assert (await client.request("POST", path, dep))[0] == 201
    owner = {"apiVersion": "v1", "kind": "ConfigMap", "name": "o", "uid": "u"}
    patch = {"metadata": {"ownerReferences": [owner], "labels": {"a": "changed"}}}
    status, stored = await client.request(
        "PATCH", path + "/web/status", patch, content_type="application/merge-patch+json"
    )
    # Spec and labels are reset, owner references stored (deployments' status strategy).
    assert status == 200
    assert stored["metadata"]["ownerReferences"] == [owner]
    assert stored["metadata"]["labels"] == {"a": "b"}
    # pods/status keeps the pod's owner references.
    pod = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}
    assert (await client.request("POST", "/api/v1/namespaces/default/pods", pod))[0] == 201
    status, stored = await client.request(
        "PATCH",
        "/api/v1/namespaces/default/pods/p/status",
        {"metadata": {"ownerReferences": [owner]}},
        content_type="application/merge-patch+json",
    )
    assert status == 200 and not stored["metadata"].get("ownerReferences")


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2-front"])
async def test_stop_closes_connections_accepted_while_it_stops(http2: bool) -> None:
    """A stopped sandbox holds no connection open, as a kube-apiserver that exits: one
    accepted in the very instant it stops, its TLS handshake not begun, is closed too (left
    open, it kept a proxy waiting for a ServerHello, and kubectl behind it, for ever)."""
    sb = Sandbox(http2=http2)
    await sb.start()
    # Connected at the TCP level; the sandbox accepts them on the loop's next turn, which
    # is inside stop().
    clients = [await asyncio.open_connection("127.0.0.1", sb.port) for _ in range(8)]
    await sb.stop()
    for reader, writer in clients:
        # EOF (or a reset) soon, not a wait for a handshake nobody will answer.
        with contextlib.suppress(ConnectionError):
            assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
