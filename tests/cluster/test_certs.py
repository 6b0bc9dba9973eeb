"""The certificate authority: issued certificates work for real TLS and client auth."""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from klockproxy.cluster.certs import CertificateAuthority, CertificateError


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("test-ca")


def test_save_and_load_round_trip(ca: CertificateAuthority, tmp_path: Path) -> None:
    ca.save(tmp_path / "state")
    key_mode = stat.S_IMODE((tmp_path / "state" / "ca.key").stat().st_mode)
    assert key_mode == 0o600
    loaded = CertificateAuthority.load(tmp_path / "state")
    assert loaded.cert_pem == ca.cert_pem
    assert loaded.key_pem == ca.key_pem


def test_load_or_create_keeps_the_same_ca(tmp_path: Path) -> None:
    first = CertificateAuthority.load_or_create(tmp_path, "x")
    second = CertificateAuthority.load_or_create(tmp_path, "x")
    assert first.cert_pem == second.cert_pem


def test_server_certificate_has_sans_and_loads_into_ssl(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    cert_pem, key_pem = ca.issue_server(["127.0.0.1", "localhost"])
    cert = x509.load_pem_x509_certificate(cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    (tmp_path / "s.crt").write_bytes(cert_pem)
    (tmp_path / "s.key").write_bytes(key_pem)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tmp_path / "s.crt", tmp_path / "s.key")


def test_client_certificate_verifies_with_cn_and_orgs(ca: CertificateAuthority) -> None:
    cert_pem, _ = ca.issue_client("alice", ["dev", "ops"])
    assert ca.verify_client_cert(cert_pem) == ("alice", ["dev", "ops"])
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(Encoding.DER)
    assert ca.verify_client_cert(der)[0] == "alice"
    subject = x509.load_pem_x509_certificate(cert_pem).subject
    assert subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"


def test_certificate_from_another_ca_is_refused(ca: CertificateAuthority) -> None:
    other = CertificateAuthority.create("test-ca")  # same name, different key
    cert_pem, _ = other.issue_client("mallory", ["system:masters"])
    with pytest.raises(CertificateError):
        ca.verify_client_cert(cert_pem)


def test_server_certificate_is_not_a_client_certificate(ca: CertificateAuthority) -> None:
    cert_pem, _ = ca.issue_server(["localhost"])
    with pytest.raises(CertificateError):
        ca.verify_client_cert(cert_pem)


def test_garbage_is_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(CertificateError):
        ca.verify_client_cert(b"not a certificate")
