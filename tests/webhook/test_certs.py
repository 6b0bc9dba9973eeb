"""--cert-secret against the sandbox API server: one Secret for every replica (created
race-free), the CA injected into the webhook configuration before the webhook is ready,
renewal (new CA added, old one kept during the overlap), and a real TLS handshake."""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import ssl
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509

from klockproxy.cluster.certs import CertificateAuthority
from klockproxy.cluster.lock_sources import create_lock_sources
from klockproxy.cluster.upstream import Upstream, UpstreamConfig
from klockproxy.sandbox.server import Sandbox
from klockproxy.webhook.certs import (
    VWC_PATH,
    CertTiming,
    Material,
    SecretCerts,
    issue,
    service_hosts,
    split_pems,
)
from klockproxy.webhook.server import WebhookServer, WebhookSettings
from tests.webhook.support import review

SECRET = "klockproxy/webhook-tls"
SECRET_PATH = "/api/v1/namespaces/klockproxy/secrets/webhook-tls"
CONFIG = "klockproxy-webhook"
DAY = datetime.timedelta(days=1)


def upstream(sb: Sandbox, tmp_path: Path) -> Upstream:
    (tmp_path / "ca.crt").write_bytes(sb.ca_pem)
    (tmp_path / "token").write_text(sb.admin_token)
    return Upstream(
        UpstreamConfig(
            server=sb.url, ca_file=str(tmp_path / "ca.crt"), token_file=str(tmp_path / "token")
        )
    )


async def setup(sb: Sandbox, tmp_path: Path, *, config: bool = True) -> Upstream:
    api = upstream(sb, tmp_path)
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "klockproxy"}}
    assert await api.create_if_absent("/api/v1/namespaces", ns) is not None
    if config:
        await create_config(api)
    return api


async def create_config(api: Upstream) -> None:
    vwc = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": CONFIG},
        "webhooks": [
            {
                "name": "klockproxy.klock.rnemet.dev",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "clientConfig": {
                    "service": {"namespace": "klockproxy", "name": "webhook", "path": "/validate"}
                },
                # Nothing the test sends: the webhook is never called here.
                "rules": [
                    {
                        "operations": ["CREATE"],
                        "apiGroups": ["example.com"],
                        "apiVersions": ["v1"],
                        "resources": ["widgets"],
                    }
                ],
            }
        ],
    }
    created = await api.create_if_absent(VWC_PATH.rstrip("/"), vwc)
    assert created is not None


async def ca_bundle(api: Upstream) -> bytes:
    config = await api.get_object(VWC_PATH + CONFIG, {})
    assert config is not None
    (hook,) = config["webhooks"]
    return base64.b64decode(hook["clientConfig"]["caBundle"])


def names(pem: bytes) -> set[str]:
    cert = x509.load_pem_x509_certificate(pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(v) for v in san.get_values_for_type(x509.DNSName)} | {
        str(v) for v in san.get_values_for_type(x509.IPAddress)
    }


async def test_replicas_starting_at_once_share_one_secret(sandbox: Sandbox, tmp_path: Path) -> None:
    await (await setup(sandbox, tmp_path)).close()
    for i in range(3):
        (tmp_path / f"r{i}").mkdir(exist_ok=True)
    replicas = [
        SecretCerts(upstream(sandbox, tmp_path / f"r{i}"), SECRET, CONFIG) for i in range(3)
    ]
    await asyncio.gather(*(r.start() for r in replicas))
    try:
        materials = {r.material for r in replicas}
        assert len({m.ca_cert for m in materials if m is not None}) == 1
        assert len({m.tls_cert for m in materials if m is not None}) == 1
        api = upstream(sandbox, tmp_path)
        stored = Material.from_secret(await api.get_object(SECRET_PATH, {}) or {})
        assert stored.ca_cert == replicas[0].material.ca_cert  # type: ignore[union-attr]
        assert await ca_bundle(api) == stored.bundle
        assert [r.reasons_not_ready() for r in replicas] == [[], [], []]
        # The serving certificate names the Service of the webhook configuration.
        assert {"webhook.klockproxy.svc", "webhook.klockproxy.svc.cluster.local"} <= names(
            stored.tls_cert
        )
        await api.close()
    finally:
        for r in replicas:
            await r.stop()


async def test_not_ready_until_the_ca_is_injected(sandbox: Sandbox, tmp_path: Path) -> None:
    api = await setup(sandbox, tmp_path, config=False)
    certs = SecretCerts(upstream(sandbox, tmp_path), SECRET, CONFIG)
    assert certs.reasons_not_ready() == ["the certificate Secret has not been read yet"]
    await certs.start()
    try:
        assert certs.reasons_not_ready() == [
            "ValidatingWebhookConfiguration klockproxy-webhook does not exist yet"
        ]
        await create_config(api)
        await certs.sync()
        assert certs.reasons_not_ready() == []
        assert certs.material is not None
        assert await ca_bundle(api) == certs.material.bundle
        # Created later, it named the Service: the certificate was reissued for it.
        assert "webhook.klockproxy.svc" in names(certs.material.tls_cert)
        # Someone re-creates the configuration without its caBundle: injected again.
        config = await api.get_object(VWC_PATH + CONFIG, {})
        assert config is not None
        config["webhooks"][0]["clientConfig"].pop("caBundle")
        assert await api.replace_object(VWC_PATH + CONFIG, config) is not None
        await certs.sync()
        assert await ca_bundle(api) == certs.material.bundle
    finally:
        await certs.stop()
        await api.close()


async def test_renewal_keeps_the_old_ca_trusted_during_the_overlap(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    api = await setup(sandbox, tmp_path)
    first = SecretCerts(upstream(sandbox, tmp_path), SECRET, CONFIG)
    await first.start()
    await first.stop()
    old = first.material
    assert old is not None
    # A replica whose margins say: the CA and the serving certificate are both due.
    due = CertTiming(ca_renew_before=DAY * 4000, cert_renew_before=DAY * 400)
    renewing = SecretCerts(upstream(sandbox, tmp_path), SECRET, CONFIG, timing=due)
    await renewing.start()
    await renewing.stop()
    new = renewing.material
    assert new is not None
    assert new.ca_cert != old.ca_cert
    assert new.tls_cert != old.tls_cert
    # Both CAs are trusted: replicas still serving the old certificate keep working.
    assert split_pems(new.bundle) == [new.ca_cert, old.ca_cert]
    assert await ca_bundle(api) == new.bundle
    stored = Material.from_secret(await api.get_object(SECRET_PATH, {}) or {})
    assert stored.ca_cert == new.ca_cert
    # A replica that reads the renewed Secret serves the new certificate, renewing nothing.
    reader = SecretCerts(upstream(sandbox, tmp_path), SECRET, CONFIG)
    await reader.start()
    await reader.stop()
    assert reader.material is not None
    assert reader.material.tls_cert == new.tls_cert
    await api.close()


async def test_concurrent_renewals_end_on_one_certificate(sandbox: Sandbox, tmp_path: Path) -> None:
    api = await setup(sandbox, tmp_path)
    # A Secret whose certificate does not name the Service: every replica finds it due.
    stale = issue(["elsewhere.example"], CertTiming())
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "webhook-tls", "namespace": "klockproxy"},
        "data": stale.data(),
    }
    assert await api.create_if_absent("/api/v1/namespaces/klockproxy/secrets", secret) is not None
    replicas = []
    for i in range(3):
        (tmp_path / f"r{i}").mkdir()
        replicas.append(SecretCerts(upstream(sandbox, tmp_path / f"r{i}"), SECRET, CONFIG))
    await asyncio.gather(*(r.start() for r in replicas))
    for r in replicas:
        await r.stop()
    tls = {r.material.tls_cert for r in replicas if r.material is not None}
    assert len(tls) == 1
    (cert,) = tls
    assert "webhook.klockproxy.svc" in names(cert)
    # The CA was not due: kept.
    assert all(r.material is not None and r.material.ca_cert == stale.ca_cert for r in replicas)
    await api.close()


def test_expired_cas_leave_the_bundle_valid_ones_stay() -> None:
    current = CertificateAuthority.create("current")
    older = CertificateAuthority.create("older", validity=DAY)
    expired = CertificateAuthority.create("expired", validity=datetime.timedelta(seconds=-60))
    cert, key = current.issue_server(["a"])
    bundle = current.cert_pem + older.cert_pem + expired.cert_pem
    previous = Material(current.cert_pem, current.key_pem, cert, key, bundle)
    later = issue(["a"], CertTiming(), previous)
    assert later.ca_cert == current.cert_pem
    assert split_pems(later.bundle) == [current.cert_pem, older.cert_pem]


def test_service_hosts() -> None:
    config: dict[str, Any] = {
        "webhooks": [
            {"clientConfig": {"service": {"namespace": "ns", "name": "svc"}}},
            {"clientConfig": {"url": "https://hook.example:8443/validate"}},
            {"clientConfig": {}},
            "nonsense",
        ]
    }
    assert service_hosts(config) == [
        "svc.ns.svc",
        "svc.ns.svc.cluster.local",
        "hook.example",
    ]


async def test_the_webhook_serves_the_secrets_certificate(sandbox: Sandbox, tmp_path: Path) -> None:
    api = await setup(sandbox, tmp_path)
    lock_dir = tmp_path / "locks"
    lock_dir.mkdir()
    certs = SecretCerts(upstream(sandbox, tmp_path), SECRET, CONFIG, listen_host="127.0.0.1")
    server = WebhookServer(
        WebhookSettings(listen="127.0.0.1:0", health_listen="127.0.0.1:0"),
        lock_set=create_lock_sources([str(lock_dir)], None),
        lookups=upstream(sandbox, tmp_path),
        certs=certs,
    )
    await server.start()
    try:
        # The client trusts exactly what the API server would: the injected caBundle.
        trust = ssl.create_default_context(cadata=(await ca_bundle(api)).decode())
        body = review("CREATE", obj={"kind": "Pod", "metadata": {"name": "p"}})
        async with (
            aiohttp.ClientSession() as session,
            session.post(server.url + "/validate", data=json.dumps(body), ssl=trust) as resp,
        ):
            answer = await resp.json()
        assert answer["response"]["allowed"] is True
        async with (
            aiohttp.ClientSession() as session,
            session.get(server.health_url + "/readyz") as resp,
        ):
            assert resp.status == 200
    finally:
        await server.stop()
        await api.close()
