"""The gateway's caller handling, piece by piece: client certificate verification (in both
addon orders), impersonation headers, Connection-named headers, Authorization, hosts."""

from __future__ import annotations

import datetime
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from mitmproxy import http
from OpenSSL import SSL, crypto

from klockproxy.cluster.certs import CertificateAuthority
from klockproxy.cluster.identity import IdentityResolver
from klockproxy.cluster.upstream import Upstream, UpstreamConfig
from klockproxy.proxy.client_certs import ClientCertificateError, ClientCertVerifier
from klockproxy.proxy.gateway import (
    BadImpersonation,
    GatewayAuth,
    Impersonation,
    _bad_authorization,
    _drop_connection_headers,
    host_allowed,
    impersonation_checks,
    parse_impersonation,
)

NOW = datetime.datetime.now(datetime.UTC)


def _name(cn: str, orgs: Sequence[str] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    return x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: x509.Name,
    issuer_name: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey | None,
    *,
    ca: bool = False,
    eku: list[x509.ObjectIdentifier] | None = None,
    start: datetime.datetime | None = None,
    days: int = 30,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    start = start or NOW - datetime.timedelta(days=1)
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if eku is not None:
        b = b.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    return b.sign(issuer_key or key, hashes.SHA256()), key


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("gateway unit test clients")


@pytest.fixture
def verifier(ca: CertificateAuthority, tmp_path: Path) -> ClientCertVerifier:
    path = tmp_path / "ca.crt"
    path.write_bytes(ca.cert_pem)
    return ClientCertVerifier([str(path)])


def _issued(issuer: CertificateAuthority, cn: str, orgs: Sequence[str] = (), **kw: object):
    return _cert(_name(cn, orgs), issuer.certificate.subject, issuer.private_key, **kw)  # type: ignore[arg-type]


# ---- certificate verification ----------------------------------------------------------


def test_a_kubeadm_style_certificate_without_san_is_an_identity(
    ca: CertificateAuthority, verifier: ClientCertVerifier
) -> None:
    cert, _ = _issued(ca, "alice", ["dev", "ops"], eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    identity = verifier.verify(cert)
    assert (identity.user, identity.groups) == ("alice", ("dev", "ops"))
    # No extended key usage at all: valid for any use, as the API server treats it.
    cert, _ = _issued(ca, "bob")
    assert verifier.verify(cert).user == "bob"


@pytest.mark.parametrize("case", ["other-ca", "self-signed", "expired", "future", "server-eku",
                                  "ca-cert", "no-cn"])  # fmt: skip
def test_certificates_that_are_no_identity(
    case: str, ca: CertificateAuthority, verifier: ClientCertVerifier
) -> None:
    if case == "other-ca":
        evil = CertificateAuthority.create("evil")
        cert, _ = _issued(evil, "admin", ["system:masters"])
    elif case == "self-signed":
        name = _name("admin", ["system:masters"])
        cert, _ = _cert(name, name, None)
    elif case == "expired":
        cert, _ = _issued(ca, "admin", start=NOW - datetime.timedelta(days=60), days=30)
    elif case == "future":
        cert, _ = _issued(ca, "admin", start=NOW + datetime.timedelta(days=2))
    elif case == "server-eku":
        cert, _ = _issued(ca, "admin", eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    elif case == "ca-cert":
        cert, _ = _issued(ca, "admin", ca=True)
    else:
        cert, _ = _cert(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "o")]),
                        ca.certificate.subject, ca.private_key)  # fmt: skip
    with pytest.raises(ClientCertificateError):
        verifier.verify(cert)


def test_an_intermediate_the_client_sends_completes_the_chain(
    ca: CertificateAuthority, verifier: ClientCertVerifier, tmp_path: Path
) -> None:
    root_name = _name("org root")
    root, root_key = _cert(root_name, root_name, None, ca=True, days=365)
    path = tmp_path / "root.crt"
    path.write_bytes(root.public_bytes(serialization.Encoding.PEM))
    org = ClientCertVerifier([str(path)])
    inter, inter_key = _cert(_name("team CA"), root_name, root_key, ca=True)
    leaf, _ = _cert(_name("carol", ["team"]), inter.subject, inter_key)
    assert org.verify(leaf, [inter]).user == "carol"
    with pytest.raises(ClientCertificateError):
        org.verify(leaf)  # the intermediate is missing (and never trusted by itself)
    # The project's CA allows no intermediates (path length 0): a chain through one fails.
    inter2, inter2_key = _cert(_name("sub CA"), ca.certificate.subject, ca.private_key, ca=True)
    leaf2, _ = _cert(_name("dave"), inter2.subject, inter2_key)
    with pytest.raises(ClientCertificateError, match="path length"):
        verifier.verify(leaf2, [inter2])


# ---- the TLS hooks, in both addon orders ------------------------------------------------


def _gateway_auth(verifier: ClientCertVerifier | None) -> GatewayAuth:
    upstream = UpstreamConfig(server="https://127.0.0.1:1")
    lookups = Upstream(upstream, certificate_for_callers=False)
    return GatewayAuth(
        lookups=lookups,
        identity=IdentityResolver(lookups),
        allowed_hosts=["127.0.0.1"],
        verifier=verifier,
    )


def _mitmproxy_like_server(ca: CertificateAuthority) -> SSL.Connection:
    """A server connection as mitmproxy's tlsconfig makes it with request_client_cert:
    VERIFY_PEER with a callback that accepts everything."""
    cert_pem, key_pem = ca.issue_server(["127.0.0.1"])
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_verify(SSL.VERIFY_PEER, lambda *_: True)
    conn = SSL.Connection(ctx)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        conn.use_certificate(crypto.load_certificate(crypto.FILETYPE_PEM, cert_pem))
        conn.use_privatekey(crypto.load_privatekey(crypto.FILETYPE_PEM, key_pem))
    conn.set_accept_state()
    return conn


def _client(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> SSL.Connection:
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.use_certificate(cert)
    ctx.use_privatekey(key)
    conn = SSL.Connection(ctx)
    conn.set_connect_state()
    return conn


def _handshake(server: SSL.Connection, client: SSL.Connection) -> bool:
    """Run the handshake over memory BIOs; False when either side fails it."""
    for _ in range(20):
        done = 0
        for side in (client, server):
            try:
                side.do_handshake()
                done += 1
            except SSL.WantReadError:
                pass
            except SSL.Error:
                return False
        for a, b in ((client, server), (server, client)):
            try:
                data = a.bio_read(65536)
            except SSL.WantReadError:
                continue
            b.bio_write(data)
        if done == 2:
            return True
    return False


@pytest.mark.parametrize("order", ["after-tlsconfig", "before-tlsconfig"])
@pytest.mark.parametrize("good", [True, False], ids=["good-cert", "foreign-cert"])
def test_client_certificates_are_verified_in_either_addon_order(
    order: str, good: bool, ca: CertificateAuthority, verifier: ClientCertVerifier
) -> None:
    auth = _gateway_auth(verifier)
    issuer = ca if good else CertificateAuthority.create("evil")
    cert, key = _issued(issuer, "admin", ["system:masters"])
    client_conn = SimpleNamespace(id="client-1")
    server = _mitmproxy_like_server(ca)
    if order == "after-tlsconfig":
        # Embedded: tlsconfig already made the connection when the hook runs.
        auth.tls_start_client(SimpleNamespace(ssl_conn=server, conn=client_conn))
    else:
        # mitmdump -s: the hook runs first, with no connection yet.
        auth.tls_start_client(SimpleNamespace(ssl_conn=None, conn=client_conn))
    completed = _handshake(server, _client(cert, key))
    if completed:
        auth.tls_established_client(SimpleNamespace(ssl_conn=server, conn=client_conn))
    identity = auth.cert_identities.get("client-1")
    if good:
        assert completed and identity is not None and identity.user == "admin"
    else:
        # Refused in the handshake (after) or recorded as no identity (before): never one.
        assert identity is None
        if order == "after-tlsconfig":
            assert not completed
        else:
            assert completed and "client-1" in auth.cert_identities


def test_without_client_ca_no_certificate_is_an_identity(ca: CertificateAuthority) -> None:
    auth = _gateway_auth(None)
    cert, key = _issued(ca, "admin", ["system:masters"])
    server = _mitmproxy_like_server(ca)
    client_conn = SimpleNamespace(id="c")
    auth.tls_start_client(SimpleNamespace(ssl_conn=server, conn=client_conn))
    assert _handshake(server, _client(cert, key))
    auth.tls_established_client(SimpleNamespace(ssl_conn=server, conn=client_conn))
    assert "c" not in auth.cert_identities


# ---- headers ------------------------------------------------------------------------------


def _headers(*pairs: tuple[str, str]) -> http.Headers:
    return http.Headers([(k.encode(), v.encode()) for k, v in pairs])


def test_every_impersonation_header_is_accounted_for() -> None:
    imp = parse_impersonation(
        _headers(
            ("IMPERSONATE-USER", "jonny"),
            ("impersonate-group", "a"),
            ("Impersonate-Group", "b"),
            ("Impersonate-Uid", "u1"),
            ("Impersonate-Extra-Acme.com%2Fproject", "x"),
            ("impersonate-extra-scopes", "y"),
        )
    )
    assert imp == Impersonation(
        user="jonny", groups=("a", "b"), uid="u1",
        extra=(("acme.com/project", ("x",)), ("scopes", ("y",))),
    )  # fmt: skip
    checks = impersonation_checks(imp)
    assert {c["resource"] for c in checks} == {"users", "groups", "uids", "userextras"}
    assert {"verb": "impersonate", "group": "authentication.k8s.io", "resource": "userextras",
            "subresource": "acme.com/project", "name": "x"} in checks  # fmt: skip
    sa = impersonation_checks(Impersonation(user="system:serviceaccount:ns:jonny-op"))
    assert sa == [{"verb": "impersonate", "resource": "serviceaccounts", "namespace": "ns",
                   "name": "jonny-op"}]  # fmt: skip
    for bad in (
        _headers(("Impersonate-Group", "system:masters")),
        _headers(("Impersonate-Uid", "1")),
        _headers(("Impersonate-Whatever", "x")),
        _headers(("Impersonate-User", "a"), ("Impersonate-User", "b")),
    ):
        with pytest.raises(BadImpersonation):
            parse_impersonation(bad)
    assert not parse_impersonation(_headers(("Accept", "x"))).requested


def test_headers_named_in_connection_are_dropped_but_upgrade_is_kept() -> None:
    h = _headers(
        ("Connection", "keep-alive, IMPERSONATE-user ,x-thing"),
        ("Connection", "Upgrade"),
        ("Impersonate-User", "admin"),
        ("X-Thing", "1"),
        ("Upgrade", "websocket"),
        ("Accept", "*/*"),
    )
    _drop_connection_headers(h)
    assert "impersonate-user" not in h and "x-thing" not in h
    assert h["upgrade"] == "websocket" and h["accept"] == "*/*"
    assert h["connection"] == "keep-alive, upgrade"


@pytest.mark.parametrize(
    ("values", "ok"),
    [
        (["Bearer abc.def-ghi_123"], True),
        (["bearer abc"], True),
        (["Bearer"], False),
        ([""], False),
        (["Basic YWRtaW46YWRtaW4="], False),
        (["Bearer a b"], False),
        (["Bearer a\x00"], False),
        (["Bearer " + "a" * 20000], False),
        (["Bearer a", "Bearer a"], False),
    ],
)
def test_authorization_must_be_one_bearer_token(values: list[str], ok: bool) -> None:
    assert (_bad_authorization(values) is None) is ok


def test_hosts_are_those_of_the_serving_certificate() -> None:
    allowed = ["gateway.example.com", "*.gw.example.com", "127.0.0.1", "::1"]
    assert host_allowed("gateway.example.com", allowed)
    assert host_allowed("GATEWAY.example.com.", allowed)
    assert host_allowed("a.gw.example.com", allowed)
    assert not host_allowed("a.b.gw.example.com", allowed)
    assert host_allowed("0:0::1", allowed)
    assert not host_allowed("evil.example", allowed)


def test_in_a_pod_the_service_account_is_the_gateways_credential(tmp_path: Path) -> None:
    from klockproxy.cluster.kubeconfig import in_cluster_upstream

    (tmp_path / "token").write_text("t")
    (tmp_path / "ca.crt").write_text("ca")
    assert in_cluster_upstream({}, tmp_path, before_kubeconfig=True) is None
    # In a pod, the service account is the gateway's credential even where a kubeconfig is
    # around (the webhook would read the kubeconfig instead).
    env = {
        "KUBERNETES_SERVICE_HOST": "10.96.0.1",
        "KUBERNETES_SERVICE_PORT": "443",
        "KUBECONFIG": str(tmp_path / "kc"),
    }
    config = in_cluster_upstream(env, tmp_path, before_kubeconfig=True)
    assert config is not None
    assert config.server == "https://10.96.0.1:443"
    assert config.token_file == str(tmp_path / "token")
    assert config.ca_file == str(tmp_path / "ca.crt")
    assert in_cluster_upstream(env, tmp_path) is None
    assert in_cluster_upstream(env, tmp_path / "missing", before_kubeconfig=True) is None
