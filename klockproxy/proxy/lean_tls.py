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
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any


class LeanTls:
    """mitmproxy addon: release idle TLS buffers; share the proxy's certificate and key."""

    def __init__(self, pem: Path | None = None) -> None:
        # ``pem``: the certificate and key the proxy serves (one PEM file, as in mitmproxy's
        # ``certs`` option). Without it, only the buffer release is done.
        self._cert: Any = None
        self._key: Any = None
        self._digest: bytes = b""
        if pem is not None:
            self._load(pem)

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

    def tls_start_client(self, data: Any) -> None:
        """mitmproxy hook: a client TLS connection is being set up."""
        conn = getattr(data, "ssl_conn", None)
        if conn is None:
            return
        self._release_buffers(conn)
        if self._cert is None:
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

    def tls_start_server(self, data: Any) -> None:
        """mitmproxy hook: an upstream TLS connection is being set up."""
        conn = getattr(data, "ssl_conn", None)
        if conn is not None:
            self._release_buffers(conn)
