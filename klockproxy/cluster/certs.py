"""A small certificate authority: server and client certificates for the sandbox and the proxy.

EC P-256 keys (fast to generate), SHA-256 signatures. Private keys are written with mode 0600.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from klockproxy.cluster.private_files import write_private
from klockproxy.core.errors import ConfigError, KlockProxyError

logger = logging.getLogger(__name__)

CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"

_CA_VALIDITY = datetime.timedelta(days=3650)
_LEAF_VALIDITY = datetime.timedelta(days=825)
_BACKDATE = datetime.timedelta(minutes=5)


class CertificateError(KlockProxyError):
    """A certificate is not acceptable (not signed by this CA, expired, malformed)."""


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    not_after: datetime.datetime,
    *,
    ca: bool,
) -> x509.CertificateBuilder:
    """What every certificate here has: a fresh serial, backdated validity, basic
    constraints and a critical key usage (a CA signs certificates, a leaf only signs)."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )


@dataclass
class CertificateAuthority:
    """A self-signed CA that issues server and client certificates."""

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey

    @classmethod
    def create(
        cls, common_name: str, validity: datetime.timedelta = _CA_VALIDITY
    ) -> CertificateAuthority:
        """A fresh CA named ``common_name``, valid for ``validity``."""
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        cert = (
            _builder(name, name, key, _now() + validity, ca=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def from_pem(cls, cert_pem: bytes, key_pem: bytes) -> CertificateAuthority:
        """A CA from its PEM certificate and EC key; ConfigError if unusable."""
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
            key = serialization.load_pem_private_key(key_pem, None)
        except ValueError as e:
            raise ConfigError(f"cannot load the CA: {e}") from e
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError("the CA key is not an EC key")
        return cls(cert, key)

    @classmethod
    def load(cls, directory: Path | str) -> CertificateAuthority:
        """Load ``ca.crt`` and ``ca.key`` from ``directory``; ConfigError if unusable."""
        d = Path(directory)
        try:
            cert = x509.load_pem_x509_certificate((d / CA_CERT_FILE).read_bytes())
            key = serialization.load_pem_private_key((d / CA_KEY_FILE).read_bytes(), None)
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot load the CA from {d}: {e}") from e
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"the CA key in {d} is not an EC key")
        return cls(cert, key)

    @classmethod
    def load_or_create(cls, directory: Path | str, common_name: str) -> CertificateAuthority:
        """Load the CA kept in ``directory``, or create and save one there."""
        d = Path(directory)
        if (d / CA_CERT_FILE).exists() and (d / CA_KEY_FILE).exists():
            return cls.load(d)
        ca = cls.create(common_name)
        ca.save(d)
        return ca

    def save(self, directory: Path | str) -> None:
        """Write ``ca.crt`` and ``ca.key`` (mode 0600) into ``directory`` (created 0700)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        (d / CA_CERT_FILE).write_bytes(self.cert_pem)
        write_private(d / CA_KEY_FILE, self.key_pem)

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return _key_pem(self.private_key)

    def _leaf(
        self,
        subject: x509.Name,
        usage: x509.ObjectIdentifier,
        san: list[x509.GeneralName] | None,
        validity: datetime.timedelta = _LEAF_VALIDITY,
    ) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        not_after = min(_now() + validity, self.certificate.not_valid_after_utc)
        builder = (
            _builder(subject, self.certificate.subject, key, not_after, ca=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.private_key.public_key()),
                critical=False,
            )
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = builder.sign(self.private_key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)

    def issue_server(
        self, hosts: list[str], validity: datetime.timedelta = _LEAF_VALIDITY
    ) -> tuple[bytes, bytes]:
        """A server certificate for ``hosts`` (DNS names or IP addresses): (cert PEM, key PEM).

        It expires after ``validity``, or with the CA if that comes first."""
        if not hosts:
            raise ConfigError("a server certificate needs at least one host")
        san: list[x509.GeneralName] = []
        for host in hosts:
            try:
                san.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                san.append(x509.DNSName(host))
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
        return self._leaf(subject, ExtendedKeyUsageOID.SERVER_AUTH, san, validity)

    def issue_client(self, common_name: str, organizations: list[str]) -> tuple[bytes, bytes]:
        """A client certificate: CN = user name, O = groups (the API server's convention)."""
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        return self._leaf(x509.Name(attrs), ExtendedKeyUsageOID.CLIENT_AUTH, None)

    def verify_client_cert(self, cert_data: bytes) -> tuple[str, list[str]]:
        """Check that ``cert_data`` (DER or PEM) was issued by this CA, is valid now and is a
        client certificate; return (common name, organizations). Raises CertificateError."""
        try:
            if cert_data.lstrip().startswith(b"-----BEGIN"):
                cert = x509.load_pem_x509_certificate(cert_data)
            else:
                cert = x509.load_der_x509_certificate(cert_data)
        except ValueError as e:
            raise CertificateError(f"malformed client certificate: {e}") from e
        if cert.issuer != self.certificate.subject:
            raise CertificateError("client certificate not issued by this CA")
        try:
            cert.verify_directly_issued_by(self.certificate)
        except (InvalidSignature, ValueError, TypeError) as e:
            raise CertificateError("client certificate signature does not verify") from e
        now = _now()
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise CertificateError("client certificate is expired or not yet valid")
        cn, orgs = client_identity(cert)
        return cn, list(orgs)


def client_identity(
    cert: x509.Certificate, error: type[KlockProxyError] = CertificateError
) -> tuple[str, tuple[str, ...]]:
    """(common name, organizations) of a certificate whose chain is already verified: the
    user and groups, as the API server reads them. ``error`` (a caller's own kind) when the
    certificate is not for client authentication or names no user (an empty common name
    is none: the API server refuses it too)."""
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        eku = None
    if eku is not None and ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        raise error("certificate is not valid for client authentication")
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not cns or not str(cns[0].value):
        raise error("certificate has no common name (the user name)")
    orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return str(cns[0].value), tuple(str(a.value) for a in orgs)
