"""Attacks on the shared gateway (issue 8, item 10): none may get a mutation to the API server.

Each test tries to change the ConfigMap ``target`` and then asks the API server (as the
admin, directly) whether it changed. Certificate attacks use real kubectl; header attacks
need headers kubectl never sends, so they use a raw HTTPS client.
"""

from __future__ import annotations

import datetime
import http.client
import json
import ssl
import tempfile
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from klockproxy.cluster.certs import CertificateAuthority
from tests.e2e import gateway_support as support
from tests.e2e.gateway_support import Gateway, create_token
from tests.e2e.kube import Kubectl

gateway = support.gateway

pytestmark = pytest.mark.e2e

PATCH = json.dumps({"metadata": {"labels": {"pwned": "yes"}}}).encode()


def make_target(admin: Kubectl, namespace: str) -> None:
    admin("create", "configmap", "target", "--from-literal", "a=b", namespace=namespace, check=True)


def untouched(admin: Kubectl, namespace: str) -> bool:
    obj = admin.json("get", "cm", "target", namespace=namespace)
    return "pwned" not in (obj["metadata"].get("labels") or {})


def pem_pair(
    subject_cn: str,
    orgs: Sequence[str],
    issuer: CertificateAuthority | None,
    *,
    days_ago_start: int = 1,
    days_valid: int = 30,
) -> tuple[bytes, bytes]:
    """A client certificate (no subjectAltName, like kubeadm's); self-signed without issuer."""
    key = ec.generate_private_key(ec.SECP256R1())
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, subject_cn))
    subject = x509.Name(attrs)
    now = datetime.datetime.now(datetime.UTC)
    start = now - datetime.timedelta(days=days_ago_start)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.certificate.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days_valid))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    cert = builder.sign(issuer.private_key if issuer else key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def raw(
    gw: Gateway,
    method: str,
    target: str,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes | None = None,
    cert: tuple[bytes, bytes] | None = None,
) -> tuple[int, dict[str, object] | None]:
    """One HTTP/1.1 request with exactly ``headers`` (repeats allowed); (status, JSON body)."""
    parts = urlsplit(gw.url)
    ctx = ssl.create_default_context(cadata=gw.serving_ca_pem.decode())
    with tempfile.TemporaryDirectory() as tmp:
        if cert is not None:
            (Path(tmp) / "c.pem").write_bytes(cert[0] + cert[1])
            ctx.load_cert_chain(Path(tmp) / "c.pem")
        conn = http.client.HTTPSConnection(
            parts.hostname or "", parts.port, context=ctx, timeout=30
        )
        try:
            own_host = any(name.lower() == "host" for name, _ in headers)
            conn.putrequest(method, target, skip_host=own_host, skip_accept_encoding=True)
            for name, value in headers:
                conn.putheader(name, value)
            if body is not None:
                conn.putheader("Content-Type", "application/merge-patch+json")
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
    try:
        parsed = json.loads(data)
    except ValueError:
        parsed = None
    return resp.status, parsed if isinstance(parsed, dict) else None


def cm_path(namespace: str) -> str:
    return f"/api/v1/namespaces/{namespace}/configmaps/target"


def patch(gw: Gateway, namespace: str, headers: Sequence[tuple[str, str]] = (), **kw: object):
    return raw(gw, "PATCH", cm_path(namespace), headers, PATCH, **kw)  # type: ignore[arg-type]


def nobody_token(admin: Kubectl, namespace: str) -> str:
    """A service account with no RBAC at all."""
    admin("create", "serviceaccount", "nobody", namespace=namespace, check=True)
    return create_token(admin, namespace, "nobody")


# ---- client certificates ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["other-ca", "self-signed", "expired", "not-yet-valid"])
def test_bad_client_certificates_get_nothing_done(
    kind: str, gateway: Gateway, kubectl: Kubectl, namespace: str
) -> None:
    make_target(kubectl, namespace)
    if kind == "other-ca":
        cert = pem_pair("admin", ["system:masters"], CertificateAuthority.create("evil CA"))
    elif kind == "self-signed":
        cert = pem_pair("admin", ["system:masters"], None)
    elif kind == "expired":
        cert = pem_pair("admin", ["system:masters"], gateway.client_ca,
                        days_ago_start=60, days_valid=30)  # fmt: skip
    else:
        cert = pem_pair("admin", ["system:masters"], gateway.client_ca, days_ago_start=-10)
    k = gateway.kubectl_for(
        f"bad-{kind}", {"client-certificate-data": cert[0], "client-key-data": cert[1]}
    )
    result = k("label", "cm", "target", "pwned=yes", namespace=namespace)
    assert result.returncode != 0
    assert untouched(kubectl, namespace)


def test_a_good_certificate_without_rights_is_refused_by_rbac(
    gateway: Gateway, kubectl: Kubectl, namespace: str
) -> None:
    make_target(kubectl, namespace)
    cert = pem_pair("carol", ["dev"], gateway.client_ca)
    status, body = patch(gateway, namespace, cert=cert)
    assert status == 403, body
    assert untouched(kubectl, namespace)


# ---- headers -----------------------------------------------------------------------------


def test_x_remote_user_is_no_identity(gateway: Gateway, kubectl: Kubectl, namespace: str) -> None:
    make_target(kubectl, namespace)
    status, _ = patch(gateway, namespace, [("X-Remote-User", "admin"),
                                           ("X-Remote-Group", "system:masters")])  # fmt: skip
    assert status == 401
    token = nobody_token(kubectl, namespace)
    status, _ = patch(
        gateway,
        namespace,
        [("Authorization", f"Bearer {token}"), ("X-Remote-User", "admin"),
         ("X-Remote-Group", "system:masters"), ("X-Remote-Extra-Scopes", "all")],
    )  # fmt: skip
    assert status == 403
    assert untouched(kubectl, namespace)


@pytest.mark.parametrize(
    "header",
    ["Impersonate-User", "impersonate-group", "IMPERSONATE-UID", "Impersonate-Extra-Scopes"],
)
def test_token_caller_may_not_impersonate_without_permission(
    header: str, gateway: Gateway, kubectl: Kubectl, namespace: str
) -> None:
    make_target(kubectl, namespace)
    token = nobody_token(kubectl, namespace)
    headers = [("Authorization", f"Bearer {token}"), ("Impersonate-User", "admin")]
    if header.lower() != "impersonate-user":
        headers.append((header, "system:masters"))
    status, _ = patch(gateway, namespace, headers)
    assert status == 403
    assert untouched(kubectl, namespace)


@pytest.mark.parametrize(
    "headers",
    [
        [("Impersonate-User", "admin")],
        [("Impersonate-User", "carol"), ("impersonate-group", "system:masters")],
        [("Impersonate-User", "carol"), ("Impersonate-Uid", "1234")],
        [("Impersonate-User", "carol"), ("Impersonate-Extra-Scopes", "all")],
        [("Impersonate-User", "system:serviceaccount:kube-system:default")],
    ],
    ids=["user", "group", "uid", "extra", "serviceaccount"],
)
def test_certificate_caller_may_not_impersonate_without_permission(
    headers: list[tuple[str, str]], gateway: Gateway, kubectl: Kubectl, namespace: str
) -> None:
    make_target(kubectl, namespace)
    cert = pem_pair("carol", [], gateway.client_ca)
    status, body = patch(gateway, namespace, headers, cert=cert)
    assert status == 403, body
    assert body is not None and "cannot impersonate" in str(body.get("message"))
    assert untouched(kubectl, namespace)


def test_certificate_caller_impersonation_headers_without_a_user_are_refused(
    gateway: Gateway, kubectl: Kubectl, namespace: str
) -> None:
    make_target(kubectl, namespace)
    cert = pem_pair("carol", [], gateway.client_ca)
    for headers in ([("Impersonate-Group", "system:masters")], [("Impersonate-Foo", "x")]):
        status, _ = patch(gateway, namespace, headers, cert=cert)
        assert status == 400
    assert untouched(kubectl, namespace)


@pytest.mark.parametrize("spelling", ["Impersonate-User", " impersonate-user ", "IMPERSONATE-USER"])
def test_connection_header_cannot_drop_the_gateways_impersonation(
    spelling: str, gateway: Gateway, kubectl: Kubectl, namespace: str
) -> None:
    """capsule-proxy's hole: the hop-by-hop removal dropped the proxy's own Impersonate-User,
    so the request ran as the proxy. Here it still runs as carol, whom RBAC refuses."""
    make_target(kubectl, namespace)
    cert = pem_pair("carol", [], gateway.client_ca)
    status, _ = patch(
        gateway, namespace, [("Connection", f"keep-alive,{spelling}, Impersonate-Group")],
        cert=cert,
    )  # fmt: skip
    assert status == 403
    assert untouched(kubectl, namespace)


def test_connection_authorization_leaves_no_credentials(
    gateway: Gateway, kubectl: Kubectl, namespace: str
) -> None:
    make_target(kubectl, namespace)
    admin_token = gateway.admin_user().get("token")
    if not admin_token:
        pytest.skip("the target's admin authenticates without a token")
    status, _ = patch(
        gateway, namespace,
        [("Authorization", f"Bearer {admin_token}"), ("Connection", "Authorization")],
    )  # fmt: skip
    assert status == 401
    cert = pem_pair("carol", [], gateway.client_ca)
    status, _ = patch(gateway, namespace, [("Connection", "authorization")], cert=cert)
    assert status == 403  # still carol
    assert untouched(kubectl, namespace)


@pytest.mark.parametrize(
    "values",
    [
        ["garbage"],
        ["Bearer"],
        [""],
        ["Basic YWRtaW46YWRtaW4="],
        ["Bearer \x7fnope"],
        ["Bearer A", "Bearer B"],
        ["Bearer " + "A" * 65536],
    ],
    ids=["garbage", "bearer-empty", "empty", "basic", "control-char", "duplicated", "64kB"],
)
def test_bad_authorization_headers_are_401(
    values: list[str], gateway: Gateway, kubectl: Kubectl, namespace: str
) -> None:
    make_target(kubectl, namespace)
    status, body = patch(gateway, namespace, [("Authorization", v) for v in values])
    assert status == 401, body
    assert untouched(kubectl, namespace)


def test_duplicated_authorization_with_a_good_token_is_401(
    gateway: Gateway, kubectl: Kubectl, namespace: str
) -> None:
    make_target(kubectl, namespace)
    admin_token = gateway.admin_user().get("token")
    if not admin_token:
        pytest.skip("the target's admin authenticates without a token")
    status, _ = patch(
        gateway, namespace,
        [("Authorization", "Bearer nope"), ("Authorization", f"Bearer {admin_token}")],
    )  # fmt: skip
    assert status == 401
    assert untouched(kubectl, namespace)


def test_a_revoked_token_gets_nothing_done(
    gateway: Gateway, kubectl: Kubectl, namespace: str
) -> None:
    """A deleted service account's token is refused (forwarded unchanged: the API server
    refuses it; judged mutations get the review's 401)."""
    make_target(kubectl, namespace)
    kubectl("create", "serviceaccount", "temp", namespace=namespace, check=True)
    kubectl(
        "create", "rolebinding", "temp-edit", "--clusterrole", "edit",
        f"--serviceaccount={namespace}:temp", namespace=namespace, check=True,
    )  # fmt: skip
    token = create_token(kubectl, namespace, "temp")
    k = gateway.kubectl_for("temp", gateway.token_user(token))
    assert k("get", "cm", "target", namespace=namespace).returncode == 0
    kubectl("delete", "serviceaccount", "temp", namespace=namespace, check=True)
    support.wait_until_refused(k, namespace)
    result = k("label", "cm", "target", "pwned=yes", namespace=namespace)
    assert result.returncode != 0
    assert untouched(kubectl, namespace)


def test_other_hosts_are_never_targets(gateway: Gateway, kubectl: Kubectl, namespace: str) -> None:
    make_target(kubectl, namespace)
    cert = pem_pair("gw-admin", ["system:masters"], gateway.client_ca)
    path = cm_path(namespace)
    status, _ = raw(gateway, "PATCH", f"https://evil.example:443{path}", (), PATCH, cert=cert)
    assert status == 400
    status, _ = patch(gateway, namespace, [("Host", "evil.example")], cert=cert)
    assert status == 400
    host = urlsplit(gateway.url).netloc
    status, _ = patch(gateway, namespace, [("Host", host), ("Host", "evil.example")], cert=cert)
    assert status == 400
    status, _ = raw(gateway, "CONNECT", "evil.example:443", (), None, cert=cert)
    assert status == 400
    assert untouched(kubectl, namespace)
    # The same certificate with a proper request does get through (the refusals were the
    # target's, not the certificate's).
    status, body = patch(gateway, namespace, cert=cert)
    assert status == 200, body
    assert not untouched(kubectl, namespace)
