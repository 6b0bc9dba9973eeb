"""LeanTls: idle TLS buffers released, one shared certificate and key for client connections,
what a large response grew given back, upstream TLS sessions resumed.

Real pyOpenSSL connections over memory BIOs: the server side is set up the way mitmproxy's
tlsconfig does it (a per-connection copy of the certificate and key), then the addon's hook
runs, then a client completes a handshake and checks what it was shown.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import socket
import ssl
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from OpenSSL import SSL, crypto

from klockproxy.cluster.certs import CertificateAuthority
from klockproxy.proxy.lean_tls import LeanTls, renew_bios
from tests.proxy.support import master_in_front_of, server_pem
from tests.rawh2 import RawH2, h2_request


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("lean-tls test CA")


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
    pem = server_pem(tmp_path, ca, "proxy.pem")
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
    addon = LeanTls(server_pem(tmp_path, ca, "proxy.pem"))
    other_pem = server_pem(tmp_path, ca, "other.pem")
    conn = _server_conn(other_pem)
    addon.tls_start_client(SimpleNamespace(ssl_conn=conn))
    other = crypto.load_certificate(crypto.FILETYPE_PEM, other_pem.read_bytes())
    assert _handshake(conn) == other.digest("sha256")


def test_hooks_without_a_connection_or_certificate_do_nothing_harmful(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    # Loaded by mitmdump -s, addons run before tlsconfig: ssl_conn is still None.
    LeanTls(server_pem(tmp_path, ca, "proxy.pem")).tls_start_client(SimpleNamespace(ssl_conn=None))
    LeanTls().tls_start_server(SimpleNamespace(ssl_conn=None))
    conn = _server_conn(server_pem(tmp_path, ca, "plain.pem"))
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


# ---------------------------------------------------------------------------------------------
# What a large response leaves behind


_MALLINFO_FIELDS = ("arena", "ordblks", "smblks", "hblks", "hblkhd")
_MALLINFO_FIELDS += ("usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")


class _MallInfo(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in _MALLINFO_FIELDS]


def _heap_in_use() -> int:
    """Bytes malloc has handed out (OpenSSL's buffers included; tracemalloc cannot see them)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo
    except (OSError, AttributeError):
        pytest.skip("needs glibc's mallinfo2")
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


def _pair(tmp_path: Path, ca: CertificateAuthority) -> tuple[SSL.Connection, SSL.Connection]:
    """(proxy side, client side) of a completed handshake over memory BIOs."""
    server = _server_conn(server_pem(tmp_path, ca, "pair.pem"))
    server.get_context().set_mode(SSL.MODE_RELEASE_BUFFERS)
    client = SSL.Connection(SSL.Context(SSL.TLS_METHOD))
    client.set_connect_state()
    for _ in range(10):
        for conn in (client, server):
            with contextlib.suppress(SSL.WantReadError):
                conn.do_handshake()
        for src, dst in ((client, server), (server, client)):
            with contextlib.suppress(SSL.WantReadError):
                dst.bio_write(src.bio_read(1 << 20))
    return server, client


def _relay(sender: SSL.Connection, receiver: SSL.Connection, data: bytes) -> bytes:
    """Send ``data`` the way mitmproxy relays a body: 64 kB chunks, BIOs drained each time."""
    received = bytearray()
    for i in range(0, len(data), 65535):
        sender.sendall(data[i : i + 65535])
        while True:
            try:
                receiver.bio_write(sender.bio_read(65535))
            except SSL.WantReadError:
                break
            while True:
                try:
                    received += receiver.recv(65535)
                except SSL.WantReadError:
                    break
    return bytes(received)


def test_fresh_bios_give_back_what_a_large_body_grew_and_the_connection_goes_on(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    pairs = [_pair(tmp_path, ca) for _ in range(20)]
    before = _heap_in_use()
    for server, client in pairs:
        assert _relay(server, client, b"x" * 108_000) == b"x" * 108_000
    grown = _heap_in_use() - before
    # Each pair's memory BIOs kept the size of the body's chunks (~64 kB on each side).
    assert grown > 20 * 64_000
    for server, client in pairs:
        assert renew_bios(server)
        assert renew_bios(client)
    assert _heap_in_use() - before < grown / 4
    # Both directions still work on the new BIOs.
    for server, client in pairs:
        assert _relay(server, client, b"after") == b"after"
        assert _relay(client, server, b"reply") == b"reply"


def test_bios_holding_data_are_kept(tmp_path: Path, ca: CertificateAuthority) -> None:
    server, client = _pair(tmp_path, ca)
    server.sendall(b"not read by the network yet")
    assert not renew_bios(server)
    assert _relay(server, client, b"!") == b"not read by the network yet!"
    assert renew_bios(server)


def test_a_socket_connection_is_left_alone() -> None:
    with socket.socket() as sock:
        conn = SSL.Connection(SSL.Context(SSL.TLS_METHOD), sock)
        assert not renew_bios(conn)


def _hook_data(conn: SSL.Connection, tls_conn: Any, client: Any) -> SimpleNamespace:
    return SimpleNamespace(ssl_conn=conn, conn=tls_conn, context=SimpleNamespace(client=client))


def _response_flow(client: Any, headers: dict[str, str]) -> SimpleNamespace:
    return SimpleNamespace(client_conn=client, response=SimpleNamespace(headers=headers))


def test_a_large_response_renews_the_bios_of_its_client_connection_and_upstream(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    addon = LeanTls()
    client = SimpleNamespace(id="client-1")
    upstream = SimpleNamespace(id="server-1", sni="api", address=("127.0.0.1", 6443))
    front, _ = _pair(tmp_path, ca)
    back, _ = _pair(tmp_path, ca)
    addon.tls_start_client(_hook_data(front, client, client))
    addon.tls_start_server(_hook_data(back, upstream, client))
    bios = {id(c): (c._into_ssl, c._from_ssl) for c in (front, back)}

    # A small response (by Content-Length) leaves them as they are.
    addon.response(_response_flow(client, {"content-length": "300"}))
    assert all(bios[id(c)] == (c._into_ssl, c._from_ssl) for c in (front, back))
    # A LIST-sized one, or one of unknown size (chunked), renews both connections' BIOs.
    addon.response(_response_flow(client, {"content-length": "108000"}))
    assert all(bios[id(c)][0] != c._into_ssl for c in (front, back))
    renewed = {id(c): (c._into_ssl, c._from_ssl) for c in (front, back)}
    addon.response(_response_flow(client, {}))
    assert all(renewed[id(c)][0] != c._into_ssl for c in (front, back))

    # Another client's response does not touch them; after disconnect nothing is kept.
    current = {id(c): c._into_ssl for c in (front, back)}
    addon.response(_response_flow(SimpleNamespace(id="client-2"), {}))
    assert all(current[id(c)] == c._into_ssl for c in (front, back))
    addon.server_disconnected(SimpleNamespace(client=client, server=upstream))
    addon.client_disconnected(client)
    assert addon._conns == {}
    assert addon._unharvested == {}


# ---------------------------------------------------------------------------------------------
# Upstream TLS session resumption, through a real embedded mitmproxy


async def test_later_upstream_connections_resume_the_first_ones_tls_session(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    upstream_pem = server_pem(tmp_path, ca, "upstream.pem")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(upstream_pem)
    # An HTTP/1.1 API server asking for client certificates, as the sandbox does.
    server_ctx.set_alpn_protocols(["http/1.1"])
    server_ctx.load_verify_locations(cadata=ca.cert_pem.decode())
    server_ctx.verify_mode = ssl.CERT_OPTIONAL
    reused: list[bool] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        reused.append(bool(writer.get_extra_info("ssl_object").session_reused))
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        writer.close()

    upstream = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
    port = upstream.sockets[0].getsockname()[1]
    running = await master_in_front_of(tmp_path, ca, port, lambda pem: [LeanTls(pem)])
    try:
        for _ in range(3):
            # A new HTTP/2 client connection each time, as every kubectl run makes; two
            # requests on it (mitmproxy opens an HTTP/1.1 upstream connection for each).
            client = await RawH2.connect(running.url, ca.cert_pem)
            for _ in range(2):
                sid = client.send(h2_request(running.url, "t", "GET", "/"))
                await client.until(lambda c=client, s=sid: s in c.ended)
                assert client.status[sid] == 200
                assert bytes(client.body[sid]) == b"ok"
            client.close()
    finally:
        await running.stop()
        upstream.close()
        await upstream.wait_closed()
    # One full handshake with the API server; later connections resume its session. (On a
    # loaded machine one of them now and then makes a full handshake of its own - timing
    # that costs a handshake, never a wrong answer - so most, not all, must resume; without
    # resumption none does.)
    assert len(reused) == 6
    assert reused[0] is False
    assert sum(reused[1:]) >= 3, reused
