"""The sandbox honours dryRun=All for every patch type and server-side apply: it answers the
object it would store, stores nothing, and refuses what the real write would refuse. The
proxy judges writes on that answer, so the sandbox must be right about it."""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import yaml

from klockproxy.sandbox.server import Sandbox

PODS = "/api/v1/namespaces/default/pods"
HPAS = "/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers"
MERGE = "application/merge-patch+json"
SMP = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY = "application/apply-patch+yaml"


class Api:
    def __init__(self, sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
        self.sb = sandbox
        self.session = session

    async def call(
        self, method: str, path: str, body: bytes | None = None, ctype: str = "application/json"
    ) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.sb.admin_token}", "Content-Type": ctype}
        async with self.session.request(
            method, self.sb.url + path, data=body, headers=headers
        ) as r:
            return r.status, json.loads(await r.read())


@pytest.fixture
async def api(sandbox: Sandbox) -> AsyncIterator[Api]:
    ctx = ssl.create_default_context(cadata=sandbox.ca_pem.decode())
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        client = Api(sandbox, session)
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p", "labels": {"aura": "blue"}},
            "spec": {"containers": [{"name": "c", "image": "nginx"}]},
        }
        hpa = {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "labels": {"aura": "blue"}},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "minReplicas": 1,
                "maxReplicas": 3,
            },
        }
        assert (await client.call("POST", PODS, json.dumps(pod).encode()))[0] == 201
        assert (await client.call("POST", HPAS, json.dumps(hpa).encode()))[0] == 201
        yield client


RELABELS = [
    (PODS + "/p", MERGE, b'{"metadata":{"labels":{"aura":"red"}}}'),
    (PODS + "/p", SMP, b'{"metadata":{"labels":{"aura":"red"}}}'),
    (PODS + "/p", JSON_PATCH, b'[{"op":"replace","path":"/metadata/labels/aura","value":"red"}]'),
    (HPAS + "/web", SMP, b'{"metadata":{"labels":{"aura":"red"}}}'),
    (
        PODS + "/p?fieldManager=t",
        APPLY,
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "p", "labels": {"aura": "red"}},
            }
        ).encode(),
    ),
]


@pytest.mark.parametrize(("path", "ctype", "body"), RELABELS)
async def test_a_dry_run_answers_the_result_and_stores_nothing(
    api: Api, path: str, ctype: str, body: bytes
) -> None:
    base = path.split("?")[0].removesuffix("/status")
    _, before = await api.call("GET", base)
    sep = "&" if "?" in path else "?"
    code, result = await api.call("PATCH", f"{path}{sep}dryRun=All", body, ctype)
    assert code == 200, result
    assert result["metadata"]["labels"]["aura"] == "red"
    _, after = await api.call("GET", base)
    assert after == before
    # The real write stores what the dry run answered.
    code, stored = await api.call("PATCH", path, body, ctype)
    assert code == 200, stored
    assert stored["metadata"]["labels"] == result["metadata"]["labels"]
    assert stored["spec"] == result["spec"]


async def test_a_dry_run_of_a_status_patch_answers_what_the_write_stores(api: Api) -> None:
    body = b'{"metadata":{"labels":{"aura":"red"}},"status":{"phase":"Failed"}}'
    code, result = await api.call("PATCH", PODS + "/p/status?dryRun=All", body, MERGE)
    assert code == 200, result
    _, before = await api.call("GET", PODS + "/p")
    assert before["status"]["phase"] != "Failed"
    code, stored = await api.call("PATCH", PODS + "/p/status", body, MERGE)
    assert code == 200, stored
    assert stored["metadata"]["labels"] == result["metadata"]["labels"]
    assert stored["status"] == result["status"]


async def test_a_dry_run_of_an_apply_that_creates_stores_nothing(api: Api) -> None:
    config = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "new"}}
    path = "/api/v1/namespaces/default/configmaps/new?fieldManager=t&dryRun=All"
    code, result = await api.call("PATCH", path, yaml.safe_dump(config).encode(), APPLY)
    assert code in (200, 201), result
    assert result["metadata"]["name"] == "new"
    code, _ = await api.call("GET", "/api/v1/namespaces/default/configmaps/new")
    assert code == 404


@pytest.mark.parametrize(
    ("ctype", "body", "code"),
    [
        (MERGE, b'{"metadata":{"resourceVersion":"1","labels":{"x":"y"}}}', 409),
        (JSON_PATCH, b'[{"op":"test","path":"/metadata/resourceVersion","value":"1"}]', 422),
        (MERGE, b'{"metadata":{"labels":{"x":1}}}', 400),
    ],
)
async def test_a_dry_run_refuses_what_the_write_would_refuse(
    api: Api, ctype: str, body: bytes, code: int
) -> None:
    answer, status = await api.call("PATCH", PODS + "/p?dryRun=All", body, ctype)
    assert answer == code, status
    assert status["kind"] == "Status"
    assert status["code"] == code
