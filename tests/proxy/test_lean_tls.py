"""LeanTls: idle TLS buffers released, one shared certificate and key for client connections.

Real pyOpenSSL connections over memory BIOs: the server side is set up the way mitmproxy's
tlsconfig does it (a per-connection copy of the certificate and key), then the addon's hook
runs, then a client completes a handshake and checks what it was shown.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
from OpenSSL import SSL, crypto

from klockproxy.cluster.certs import CertificateAuthority
from klockproxy.proxy.lean_tls import LeanTls


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("lean-tls test CA")


def _pem(tmp_path: Path, ca: CertificateAuthority, name: str) -> Path:
    cert, key = ca.issue_server(["127.0.0.1"])
    path = tmp_path / name
    path.write_bytes(cert + key)
    return path


def _server_conn(pem: Path) -> SSL.Connection:
    """A server-side connection carrying its own copy of the certificate, as tlsconfig makes."""
    data = pem.read_bytes()
    ctx = SSL.Context(SSL.TLS_METHOD)
    conn = SSL.Connection(ctx)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        conn.use_certificate(crypto.load_certificate(crypto.FILETYPE_PEM, data))
        conn.use_privatekey(crypto.load_privatekey(crypto.FILETYPE_PEM, data))
    conn.set_accept_state()
    return conn


def _handshake(server: SSL.Connection) -> bytes:
    """Complete a handshake with a fresh client; the SHA-256 digest of what it was shown."""
    client = SSL.Connection(SSL.Context(SSL.TLS_METHOD))
    client.set_connect_state()
    for _ in range(20):
        for conn in (client, server):
            with contextlib.suppress(SSL.WantReadError):
                conn.do_handshake()
        moved = False
        for src, dst in ((client, server), (server, client)):
            try:
                chunk = src.bio_read(65536)
            except SSL.WantReadError:
                continue
            dst.bio_write(chunk)
            moved = True
        if not moved:
            break
    client.sendall(b"ping")
    server.bio_write(client.bio_read(65536))
    assert server.recv(100) == b"ping"
    peer = client.get_peer_certificate()
    assert peer is not None
    return peer.digest("sha256")


def _mode(conn: SSL.Connection) -> int:
    # Context.set_mode returns the mode after the change: adding nothing reads it.
    return int(conn.get_context().set_mode(0))


def test_client_connection_gets_the_shared_certificate_and_still_handshakes(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    pem = _pem(tmp_path, ca, "proxy.pem")
    addon = LeanTls(pem)
    first, second = _server_conn(pem), _server_conn(pem)
    # Before the hook each connection holds its own X509 (what costs memory per watch).
    assert first.get_certificate()._x509 != second.get_certificate()._x509
    for conn in (first, second):
        addon.tls_start_client(SimpleNamespace(ssl_conn=conn))
    assert first.get_certificate()._x509 == second.get_certificate()._x509
    expected = crypto.load_certificate(crypto.FILETYPE_PEM, pem.read_bytes()).digest("sha256")
    # The key was swapped too: a mismatched key would fail the handshake.
    assert _handshake(first) == expected
    assert _handshake(second) == expected
    assert _mode(first) & SSL.MODE_RELEASE_BUFFERS


def test_a_connection_with_another_certificate_is_left_as_it_is(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    addon = LeanTls(_pem(tmp_path, ca, "proxy.pem"))
    other_pem = _pem(tmp_path, ca, "other.pem")
    conn = _server_conn(other_pem)
    addon.tls_start_client(SimpleNamespace(ssl_conn=conn))
    other = crypto.load_certificate(crypto.FILETYPE_PEM, other_pem.read_bytes())
    assert _handshake(conn) == other.digest("sha256")


def test_hooks_without_a_connection_or_certificate_do_nothing_harmful(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    # Loaded by mitmdump -s, addons run before tlsconfig: ssl_conn is still None.
    LeanTls(_pem(tmp_path, ca, "proxy.pem")).tls_start_client(SimpleNamespace(ssl_conn=None))
    LeanTls().tls_start_server(SimpleNamespace(ssl_conn=None))
    conn = _server_conn(_pem(tmp_path, ca, "plain.pem"))
    LeanTls().tls_start_client(SimpleNamespace(ssl_conn=conn))
    assert _mode(conn) & SSL.MODE_RELEASE_BUFFERS


def test_upstream_connections_release_their_buffers() -> None:
    conn = SSL.Connection(SSL.Context(SSL.TLS_METHOD))
    assert not _mode(conn) & SSL.MODE_RELEASE_BUFFERS
    LeanTls().tls_start_server(SimpleNamespace(ssl_conn=conn))
    assert _mode(conn) & SSL.MODE_RELEASE_BUFFERS


def test_the_upstream_certificate_chain_copy_is_dropped_after_the_handshake(
    ca: CertificateAuthority,
) -> None:
    from cryptography import x509
    from mitmproxy import certs, connection

    server = connection.Server(address=("api.example", 443))
    server.certificate_list = [certs.Cert(x509.load_pem_x509_certificate(ca.cert_pem))]
    LeanTls().tls_established_server(SimpleNamespace(conn=server))
    assert server.certificate_list == []
