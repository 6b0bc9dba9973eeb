"""Helpers for the webhook unit tests: AdmissionReview bodies and a webhook served over HTTPS
on a free port (its reads answered by the shared FakeUpstream)."""

from __future__ import annotations

import json
import ssl
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from klockproxy.cluster.certs import CertificateAuthority
from klockproxy.cluster.lock_sources import create_lock_sources
from klockproxy.webhook.server import FileCerts, WebhookServer, WebhookSettings
from tests.fakes import FakeUpstream

ADMIN = {"username": "kubernetes-admin", "groups": ["system:masters", "system:authenticated"]}
JONNY = {
    "username": "system:serviceaccount:shop:jonny-op",
    "uid": "5b2e",
    "groups": ["system:serviceaccounts", "system:serviceaccounts:shop"],
}
LOCKRED = {
    "apiVersion": "klock.rnemet.dev/v1",
    "kind": "Lock",
    "metadata": {"name": "lockred", "namespace": "shop"},
    "spec": {
        "operations": ["UPDATE", "DELETE", "CONNECT"],
        "matcher": {"aura": "red"},
        "exclusive": {"name": "jonny-op"},
    },
}
DENIAL = (
    "denied, there is a lock: map[aura:red] (Lock shop/lockred forbids {op} of {target}; "
    "only jonny-op may)"
)


def pod(name: str, labels: Mapping[str, str] | None = None, **meta: Any) -> dict[str, Any]:
    """A Pod as the API server stores it."""
    metadata: dict[str, Any] = {"name": name, "namespace": "shop", "uid": f"uid-{name}"}
    if labels is not None:
        metadata["labels"] = dict(labels)
    metadata.update(meta)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": {}}


def review(
    operation: str,
    *,
    resource: tuple[str, str, str] = ("", "v1", "pods"),
    sub: str = "",
    kind: str = "Pod",
    name: str = "my-pod",
    namespace: str = "shop",
    user: Mapping[str, Any] = ADMIN,
    obj: Mapping[str, Any] | None = None,
    old: Mapping[str, Any] | None = None,
    dry_run: bool = False,
    options: Mapping[str, Any] | None = None,
    uid: str | None = None,
) -> dict[str, Any]:
    """An AdmissionReview v1 request as the API server sends it."""
    group, version, plural = resource
    request: dict[str, Any] = {
        "uid": uid or str(uuid.uuid4()),
        "kind": {"group": group, "version": version, "kind": kind},
        "resource": {"group": group, "version": version, "resource": plural},
        "requestKind": {"group": group, "version": version, "kind": kind},
        "requestResource": {"group": group, "version": version, "resource": plural},
        "name": name,
        "namespace": namespace,
        "operation": operation,
        "userInfo": dict(user),
        "object": dict(obj) if obj is not None else None,
        "oldObject": dict(old) if old is not None else None,
        "dryRun": dry_run,
        "options": dict(options) if options is not None else None,
    }
    if sub:
        request["subResource"] = sub
        request["requestSubResource"] = sub
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


@dataclass
class Served:
    """A webhook listening on 127.0.0.1 and a client that trusts it."""

    server: WebhookServer
    api: FakeUpstream
    session: aiohttp.ClientSession
    ssl: ssl.SSLContext

    @property
    def url(self) -> str:
        return self.server.url + "/validate"

    async def post(
        self, body: bytes | Mapping[str, Any], **kwargs: Any
    ) -> tuple[int, dict[str, Any]]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        async with self.session.post(self.url, data=data, ssl=self.ssl, **kwargs) as resp:
            return resp.status, json.loads(await resp.read())

    async def answer(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The ``response`` of a well-formed review (asserting HTTP 200 and the uid)."""
        code, doc = await self.post(body)
        assert code == 200, doc
        assert doc["apiVersion"] == "admission.k8s.io/v1"
        assert doc["kind"] == "AdmissionReview"
        response: dict[str, Any] = doc["response"]
        assert response["uid"] == body["request"]["uid"]
        return response


def write_certs(directory: Path) -> tuple[Path, Path, bytes]:
    """A CA and a serving certificate for 127.0.0.1: (cert file, key file, CA PEM)."""
    ca = CertificateAuthority.create("webhook test CA")
    cert, key = ca.issue_server(["127.0.0.1", "localhost"])
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tls.crt").write_bytes(cert)
    (directory / "tls.key").write_bytes(key)
    return directory / "tls.crt", directory / "tls.key", ca.cert_pem


@asynccontextmanager
async def served(
    tmp_path: Path,
    locks: Sequence[Mapping[str, Any]] = (LOCKRED,),
    *,
    api: FakeUpstream | None = None,
    ready: bool = True,
    **settings: Any,
) -> AsyncIterator[Served]:
    """A webhook with ``locks`` (as a lock file) serving on a free port."""
    lock_dir = tmp_path / "locks"
    lock_dir.mkdir(exist_ok=True)
    (lock_dir / "locks.yaml").write_text(yaml.safe_dump_all([dict(lk) for lk in locks]))
    cert, key, ca_pem = write_certs(tmp_path / "tls")
    lock_set = create_lock_sources([str(lock_dir)], None)
    fake = api or FakeUpstream()
    server = WebhookServer(
        WebhookSettings(listen="127.0.0.1:0", **settings),
        lock_set=lock_set,
        lookups=fake,
        certs=FileCerts(str(cert), str(key)),
    )
    await server.start()
    if not ready:
        lock_set.engine = None
    ctx = ssl.create_default_context(cadata=ca_pem.decode())
    try:
        async with aiohttp.ClientSession() as session:
            yield Served(server, fake, session, ctx)
    finally:
        await server.stop()
