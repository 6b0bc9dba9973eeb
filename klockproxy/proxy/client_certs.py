"""Client certificates of gateway callers, verified against ``--client-ca``.

mitmproxy asks for a client certificate (``request_client_cert``) but accepts any: this module
does the verification the API server would do. A certificate is an identity only when

* it chains to one of the trusted CAs (intermediates the client sent are used, never trusted
  by themselves), every certificate of the chain inside its validity dates, signatures and CA
  constraints checked by OpenSSL (``X509StoreContext``);
* it is not itself a CA certificate;
* its extended key usage, when it has one, includes clientAuth (a certificate without the
  extension is valid for any use, as Go's verifier and the API server treat it);
* it has a common name (the user name); O attributes are the groups.

subjectAltName is not required: kubeadm and ``openssl req`` issue client certificates
without one (libraries that verify by the web PKI profile refuse those).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from OpenSSL import crypto

from klockproxy.cluster.certs import client_identity
from klockproxy.core.errors import ConfigError, KlockProxyError

logger = logging.getLogger(__name__)


class ClientCertificateError(KlockProxyError):
    """A client certificate is not an identity (the reason is safe to log)."""


@dataclass(frozen=True)
class CertIdentity:
    """Who a verified client certificate names: CN = user, O = groups."""

    user: str
    groups: tuple[str, ...]
    fingerprint: str


def _load_bundle(path: str) -> list[x509.Certificate]:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read --client-ca {path}: {e}") from e
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise ConfigError(f"--client-ca {path} holds no PEM certificate: {e}") from e
    return certs


class ClientCertVerifier:
    """Verifies client certificate chains against the CAs of ``--client-ca`` files."""

    def __init__(self, ca_files: Sequence[str]) -> None:
        if not ca_files:
            raise ConfigError("client certificate verification needs at least one --client-ca")
        self.cas: list[x509.Certificate] = []
        for path in ca_files:
            self.cas.extend(_load_bundle(path))
        self._store = crypto.X509Store()
        for ca in self.cas:
            self._store.add_cert(crypto.X509.from_cryptography(ca))

    def verify(
        self, leaf: x509.Certificate, intermediates: Sequence[x509.Certificate] = ()
    ) -> CertIdentity:
        """The identity ``leaf`` names, or ClientCertificateError saying why it is none."""
        try:
            basic = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            basic = None
        if basic is not None and basic.ca:
            raise ClientCertificateError("a CA certificate is not a client certificate")
        chain = [crypto.X509.from_cryptography(c) for c in intermediates if c != leaf]
        context = crypto.X509StoreContext(
            self._store, crypto.X509.from_cryptography(leaf), chain or None
        )
        try:
            context.verify_certificate()
        except crypto.X509StoreContextError as e:
            raise ClientCertificateError(f"certificate not accepted: {e}") from e
        user, groups = client_identity(leaf, ClientCertificateError)
        fingerprint = leaf.fingerprint(hashes.SHA256()).hex()
        return CertIdentity(user=user, groups=groups, fingerprint=fingerprint)

    def verify_openssl(self, leaf: crypto.X509, chain: Sequence[crypto.X509] = ()) -> CertIdentity:
        """``verify`` for pyOpenSSL objects (what a TLS connection hands over)."""
        return self.verify(leaf.to_cryptography(), [c.to_cryptography() for c in chain])
