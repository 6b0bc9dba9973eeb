"""Per-connection TLS memory of the embedded proxy, kept small (a mitmproxy addon).

Every open watch holds two TLS connections in the proxy: one to the client, one to the API
server. Measured with memray, two things made each of them heavier than it needs to be:

- OpenSSL keeps a connection's read and write buffers (~17 kB each) allocated while it is
  idle, unless ``SSL_MODE_RELEASE_BUFFERS`` is set;
- mitmproxy's tlsconfig addon hands every client connection a fresh *copy* of the proxy's
  certificate and private key (converted from the cryptography objects each time), about
  5 kB per connection, although ``klockproxy serve`` serves one certificate to everyone.

This addon runs after tlsconfig (embedded addons are added after it) and fixes both: it sets
the release mode, and swaps the per-connection copies for one shared certificate and key
(OpenSSL reference-counts them). It only swaps when the connection carries our certificate,
so it never changes which certificate a client is shown. It also drops mitmproxy's parsed
copy of the API server's certificate chain once the upstream handshake is done.

Two more per-connection costs, measured the way kubectl works (issue 12):

- A LIST leaves its size behind. pyOpenSSL connects every mitmproxy TLS connection to the
  network through two OpenSSL memory BIOs, and a memory BIO never shrinks: after a ~108 kB LIST
  the client side's outgoing BIO and the upstream side's incoming one hold ~64 kB each for as
  long as the connection lives, i.e. for every watch that kubectl opens on the connection after
  its LIST. When a response with a large (or unknown) body is done and a BIO is empty, the
  addon gives the connection fresh, empty BIOs (OpenSSL frees the old ones).
- Every client connection makes mitmproxy open its own upstream connection, with a full TLS
  handshake (the API server signs, the proxy verifies the chain). The addon keeps the upstream
  TLS session of each (SSL context, server name, address) and offers it on the next upstream
  connection, so later handshakes are resumptions. The context carries the trust anchors and
  the proxy's client certificate, so a session is only reused where the same verification and
  the same TLS identity applied.
"""

from __future__ import annotations

import logging
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Below this a response cannot have grown a BIO beyond a few TLS records' worth (a fresh BIO
# grows to that on its first use anyway): not worth renewing.
LARGE_BODY = 16 * 1024
# Upstream TLS sessions kept (one per API server address, name and TLS configuration).
MAX_SESSIONS = 64


class LeanTls:
    """mitmproxy addon: release idle TLS buffers and what a large response grew; share the
    proxy's certificate and key; resume upstream TLS sessions."""

    def __init__(self, pem: Path | None = None) -> None:
        # ``pem``: the certificate and key the proxy serves (one PEM file, as in mitmproxy's
        # ``certs`` option). Without it, only the buffer release is done.
        self._cert: Any = None
        self._key: Any = None
        self._digest: bytes = b""
        if pem is not None:
            self._load(pem)
        # The pyOpenSSL connections of each client connection (its own and the upstream ones
        # it caused), by client id, then by connection id; dropped at disconnect.
        self._conns: dict[str, dict[str, Any]] = {}
        # Upstream connections whose session was not taken yet (connection id -> session key).
        self._unharvested: dict[str, tuple[Any, ...]] = {}
        # (SSL context, server name, address) -> the last upstream session (pyOpenSSL Session).
        self._sessions: OrderedDict[tuple[Any, ...], Any] = OrderedDict()

    def _load(self, pem: Path) -> None:
        from OpenSSL import crypto

        data = pem.read_bytes()
        cert = crypto.load_certificate(crypto.FILETYPE_PEM, data)
        self._cert = cert
        self._key = crypto.load_privatekey(crypto.FILETYPE_PEM, data)
        self._digest = cert.digest("sha256")

    @staticmethod
    def _release_buffers(conn: Any) -> None:
        from OpenSSL import SSL

        # On the context: mitmproxy caches its contexts, so every later connection made
        # from it starts with the mode (OpenSSL copies the context's mode at SSL_new).
        conn.get_context().set_mode(SSL.MODE_RELEASE_BUFFERS)

    def _starting(self, data: Any) -> Any:
        """What both TLS start hooks do first: the connection (None: not TLS) with its
        buffers released and tracked."""
        conn = getattr(data, "ssl_conn", None)
        if conn is not None:
            self._release_buffers(conn)
            self._track(data, conn)
        return conn

    def tls_start_client(self, data: Any) -> None:
        """mitmproxy hook: a client TLS connection is being set up."""
        conn = self._starting(data)
        if conn is None or self._cert is None:
            return
        current = conn.get_certificate()
        if current is None or current.digest("sha256") != self._digest:
            return
        # pyOpenSSL deprecates passing its own X509/PKey objects, but only they are shared
        # by reference; the cryptography objects it prefers are converted (copied) per call.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            conn.use_certificate(self._cert)
            conn.use_privatekey(self._key)

    def tls_established_server(self, data: Any) -> None:
        """mitmproxy hook: the upstream handshake is done (its certificate was verified).

        mitmproxy keeps a parsed copy of the API server's certificate chain on the
        connection, for display and for ``upstream_cert``; the embedded proxy serves its own
        certificate and never reads the chain, so let it go (~3 kB per open watch).
        """
        conn = getattr(data, "conn", None)
        if conn is not None:
            conn.certificate_list = []
            ssl_conn = getattr(data, "ssl_conn", None)
            if ssl_conn is not None and not _resumed(ssl_conn):
                # A full, verified handshake: its session is kept once the server's tickets
                # were read. Resumed connections are not harvested: a TLS 1.3 session copied
                # at resumption is not resumable until the server's new ticket is in, and
                # taking it too early would replace a good session with a useless one. When
                # the kept session stops working (expired), the next full handshake renews it.
                self._unharvested[conn.id] = _session_key(ssl_conn, conn)

    def tls_start_server(self, data: Any) -> None:
        """mitmproxy hook: an upstream TLS connection is being set up: offer the last session."""
        conn = self._starting(data)
        server = getattr(data, "conn", None)
        if conn is None or server is None:
            return
        # Keyed by the client certificate this connection presents too: the gateway sets its
        # own certificate per connection (certificate callers only), so one context serves
        # connections of different TLS identities, and a session carries the identity it was
        # made with. (The gateway's tls_start_server runs before this one.)
        session = self._sessions.get(_session_key(conn, server))
        if session is not None:
            conn.set_session(session)

    # ------------------------------------------------------------------------------------
    # After a response

    def response(self, flow: Any) -> None:
        """mitmproxy hook: a response is done (for a streamed one, its last byte was relayed)."""
        self._after_response(flow)

    def error(self, flow: Any) -> None:
        """mitmproxy hook: a flow failed (possibly after much of a body was relayed)."""
        self._after_response(flow)

    def _after_response(self, flow: Any) -> None:
        client = getattr(flow, "client_conn", None)
        conns = self._conns.get(client.id) if client is not None else None
        if not conns:
            return
        # The upstream connection that carried this response (mitmproxy points the flow at
        # it): the session tickets a TLS 1.3 server sends after the handshake were read
        # before the response.
        server = getattr(flow, "server_conn", None)
        if server is not None:
            key = self._unharvested.pop(server.id, None)
            upstream = conns.get(server.id)
            if key is not None and upstream is not None:
                self._harvest(key, upstream)
        if _large_body(flow):
            for conn in conns.values():
                renew_bios(conn)

    def _harvest(self, key: tuple[Any, ...], conn: Any) -> None:
        session = conn.get_session()
        if session is None:
            return
        self._sessions[key] = session
        self._sessions.move_to_end(key)
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)

    # ------------------------------------------------------------------------------------
    # Bookkeeping

    def _track(self, data: Any, conn: Any) -> None:
        context = getattr(data, "context", None)
        tls_conn = getattr(data, "conn", None)
        if context is None or tls_conn is None:
            return
        self._conns.setdefault(context.client.id, {})[tls_conn.id] = conn

    def server_disconnected(self, data: Any) -> None:
        """mitmproxy hook: an upstream connection closed (keep its session if not done yet:
        mitmproxy closes an HTTP/1.1 upstream connection of an HTTP/2 client as soon as its
        response is in, before the ``response`` hook)."""
        conns = self._conns.get(data.client.id)
        conn = conns.pop(data.server.id, None) if conns is not None else None
        key = self._unharvested.pop(data.server.id, None)
        if key is not None and conn is not None:
            self._harvest(key, conn)

    def client_disconnected(self, client: Any) -> None:
        """mitmproxy hook: a client connection closed."""
        for conn_id in self._conns.pop(client.id, {}):
            self._unharvested.pop(conn_id, None)


def _session_key(ssl_conn: Any, server: Any) -> tuple[Any, ...]:
    """What an upstream TLS session may be reused under: the SSL context (trust anchors, the
    context's client certificate), the certificate set on the connection itself, the server's
    name and address."""
    own = ssl_conn.get_certificate()
    presented = own.digest("sha256") if own is not None else None
    return (ssl_conn.get_context(), presented, server.sni, server.address)


def _resumed(conn: Any) -> bool:
    """Whether a pyOpenSSL connection's handshake resumed a session."""
    from OpenSSL import SSL

    lib = getattr(SSL, "_lib", None)
    ssl = getattr(conn, "_ssl", None)
    if lib is None or ssl is None or not hasattr(lib, "SSL_session_reused"):
        return False
    return bool(lib.SSL_session_reused(ssl))


def _large_body(flow: Any) -> bool:
    """Whether the flow's response body may have been large (unknown size counts as large)."""
    response = getattr(flow, "response", None)
    if response is None:
        # An error before or while relaying a response: what passed is unknown.
        return True
    length = response.headers.get("content-length", "")
    return not length.isdigit() or int(length) >= LARGE_BODY


def renew_bios(conn: Any) -> bool:
    """Give a pyOpenSSL memory-BIO connection two fresh, empty BIOs; True when done.

    Only when both are empty (nothing is lost) and the connection is of the memory-BIO kind
    mitmproxy uses. ``SSL_set_bio`` hands the new BIOs to the ``SSL`` object and frees the old
    ones; pyOpenSSL's own references are pointed at the new ones.
    """
    from OpenSSL import SSL

    lib = getattr(SSL, "_lib", None)
    ffi = getattr(SSL, "_ffi", None)
    into = getattr(conn, "_into_ssl", None)
    out = getattr(conn, "_from_ssl", None)
    ssl = getattr(conn, "_ssl", None)
    if lib is None or ffi is None or into is None or out is None or ssl is None:
        return False
    if lib.BIO_get_mem_data(into, ffi.NULL) or lib.BIO_get_mem_data(out, ffi.NULL):
        return False
    new_into = lib.BIO_new(lib.BIO_s_mem())
    new_out = lib.BIO_new(lib.BIO_s_mem())
    if new_into == ffi.NULL or new_out == ffi.NULL:
        for bio in (new_into, new_out):
            if bio != ffi.NULL:
                lib.BIO_free(bio)
        return False
    lib.SSL_set_bio(ssl, new_into, new_out)
    conn._into_ssl = new_into
    conn._from_ssl = new_out
    return True
