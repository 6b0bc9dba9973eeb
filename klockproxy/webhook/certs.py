"""``--cert-secret NAMESPACE/NAME``: the webhook's CA and serving certificate, without
cert-manager.

One Secret is the truth (``ca.crt``, ``ca.key``, ``tls.crt``, ``tls.key`` and
``ca-bundle.crt``, every CA clients must trust). Every replica:

1. reads the Secret; when there is none, creates one with a fresh CA and serving certificate.
   Several replicas starting at once race on the create: the API server accepts exactly one
   (the others get 409 AlreadyExists) and the losers read and use the winner's;
2. renews when due, well before expiry: the serving certificate 90 days before it expires (or
   at once when it does not cover the Service names of the webhook configuration, or was not
   issued by the current CA), the CA a year before it expires. A new CA is ADDED to
   ``ca-bundle.crt``; the old one stays there until it expires, so certificates of either CA
   are trusted during the overlap. The update is conditional on the resourceVersion read:
   when two replicas renew at once one wins and the other takes the winner's;
3. injects ``ca-bundle.crt`` into ``clientConfig.caBundle`` of every webhook of the
   ValidatingWebhookConfiguration ``--webhook-config`` (a merge patch conditional on its
   resourceVersion), and only then serves the certificate. It reports not ready until the
   configuration trusts the current CA;
4. repeats this every few minutes (a renewal by another replica, a configuration re-created
   without its caBundle).

The serving certificate names what the webhook configuration calls: ``NAME.NAMESPACE.svc``
(and ``.svc.cluster.local``) of each ``clientConfig.service``, the host of each
``clientConfig.url``, and the listen address unless it is a wildcard.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime
import logging
import os
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from klockproxy.cluster.certs import CertificateAuthority
from klockproxy.core.errors import ConfigError, KlockProxyError, UpstreamError

logger = logging.getLogger(__name__)

CA_NAME = "klockproxy webhook CA"
MANAGED_BY = {"app.kubernetes.io/managed-by": "klockproxy"}
VWC_PATH = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/"
_KEYS = ("ca.crt", "ca.key", "tls.crt", "tls.key", "ca-bundle.crt")
_WRITE_ATTEMPTS = 5


class SecretApi(Protocol):
    """The API calls certificate management needs (``cluster.upstream.Upstream``)."""

    async def get_object(self, path: str, headers: Mapping[str, str]) -> dict[str, Any] | None: ...

    async def create_if_absent(
        self, path: str, obj: Mapping[str, Any]
    ) -> dict[str, Any] | None: ...

    async def replace_object(self, path: str, obj: Mapping[str, Any]) -> dict[str, Any] | None: ...

    async def merge_patch_object(
        self, path: str, patch: Mapping[str, Any]
    ) -> dict[str, Any] | None: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class CertTiming:
    """Validity and renewal margins (defaults as cert-controller's: a 10-year CA, a 1-year
    serving certificate renewed 90 days ahead)."""

    ca_validity: datetime.timedelta = datetime.timedelta(days=3650)
    ca_renew_before: datetime.timedelta = datetime.timedelta(days=365)
    cert_validity: datetime.timedelta = datetime.timedelta(days=365)
    cert_renew_before: datetime.timedelta = datetime.timedelta(days=90)
    check_interval: float = 300.0


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def split_pems(bundle: bytes) -> list[bytes]:
    """The PEM certificates of a bundle, each ending in a newline."""
    out = []
    marker = b"-----END CERTIFICATE-----"
    for part in bundle.split(marker)[:-1]:
        start = part.find(b"-----BEGIN CERTIFICATE-----")
        if start >= 0:
            out.append(part[start:] + marker + b"\n")
    return out


def _cert(pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as e:
        raise ConfigError(f"the certificate Secret holds an unreadable certificate: {e}") from e


def _sans(cert: x509.Certificate) -> set[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    names = {str(n) for n in ext.get_values_for_type(x509.DNSName)}
    names |= {str(ip) for ip in ext.get_values_for_type(x509.IPAddress)}
    return names


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


@dataclass(frozen=True)
class Material:
    """What the Secret holds."""

    ca_cert: bytes
    ca_key: bytes
    tls_cert: bytes
    tls_key: bytes
    bundle: bytes
    resource_version: str = ""

    @classmethod
    def from_secret(cls, secret: Mapping[str, Any]) -> Material:
        """The material of a Secret; ConfigError when a key is missing or not base64."""
        data = secret.get("data")
        if not isinstance(data, dict):
            raise ConfigError("the certificate Secret has no data")
        values: dict[str, bytes] = {}
        for key in _KEYS:
            raw = data.get(key)
            if not isinstance(raw, str):
                raise ConfigError(f"the certificate Secret has no {key}")
            try:
                values[key] = base64.b64decode(raw, validate=True)
            except (binascii.Error, ValueError) as e:
                raise ConfigError(f"the certificate Secret's {key} is not base64") from e
        meta = secret.get("metadata")
        rv = meta.get("resourceVersion", "") if isinstance(meta, dict) else ""
        return cls(
            values["ca.crt"],
            values["ca.key"],
            values["tls.crt"],
            values["tls.key"],
            values["ca-bundle.crt"],
            str(rv or ""),
        )

    def data(self) -> dict[str, str]:
        """The Secret's ``data``."""
        raw = {
            "ca.crt": self.ca_cert,
            "ca.key": self.ca_key,
            "tls.crt": self.tls_cert,
            "tls.key": self.tls_key,
            "ca-bundle.crt": self.bundle,
        }
        return {k: base64.b64encode(v).decode() for k, v in raw.items()}

    def renewal_due(self, hosts: list[str], timing: CertTiming) -> str:
        """Why this material must be renewed now; empty when it need not."""
        now = _now()
        ca = _cert(self.ca_cert)
        if ca.not_valid_after_utc - timing.ca_renew_before <= now:
            return "the CA expires soon"
        cert = _cert(self.tls_cert)
        if cert.not_valid_after_utc - timing.cert_renew_before <= now:
            return "the serving certificate expires soon"
        if not _issued_by(cert, ca):
            return "the serving certificate is not issued by the current CA"
        missing = set(hosts) - _sans(cert)
        if missing:
            return f"the serving certificate does not name {', '.join(sorted(missing))}"
        if self.ca_cert not in split_pems(self.bundle):
            return "the CA bundle lacks the current CA"
        return ""


def issue(hosts: list[str], timing: CertTiming, previous: Material | None = None) -> Material:
    """New material for ``hosts``: the previous CA kept unless it is due (then a new CA, the
    old one left in the bundle until it expires), a new serving certificate."""
    now = _now()
    ca: CertificateAuthority | None = None
    trusted: list[bytes] = []
    if previous is not None:
        with contextlib.suppress(ConfigError):
            old = CertificateAuthority.from_pem(previous.ca_cert, previous.ca_key)
            if old.certificate.not_valid_after_utc - timing.ca_renew_before > now:
                ca = old
        for pem in [*split_pems(previous.bundle), previous.ca_cert]:
            with contextlib.suppress(ConfigError):
                if _cert(pem).not_valid_after_utc > now and pem not in trusted:
                    trusted.append(pem)
    if ca is None:
        ca = CertificateAuthority.create(CA_NAME, timing.ca_validity)
    cert, key = ca.issue_server(hosts, timing.cert_validity)
    bundle = [ca.cert_pem] + [pem for pem in trusted if pem != ca.cert_pem]
    return Material(ca.cert_pem, ca.key_pem, cert, key, b"".join(bundle))


def service_hosts(config: Mapping[str, Any] | None) -> list[str]:
    """The names the API server calls the webhooks of a ValidatingWebhookConfiguration by."""
    hosts: list[str] = []
    webhooks = (config or {}).get("webhooks")
    for hook in webhooks if isinstance(webhooks, list) else []:
        client = hook.get("clientConfig") if isinstance(hook, dict) else None
        if not isinstance(client, dict):
            continue
        service = client.get("service")
        if isinstance(service, dict) and service.get("name") and service.get("namespace"):
            base = f"{service['name']}.{service['namespace']}.svc"
            hosts += [base, f"{base}.cluster.local"]
        url = client.get("url")
        if isinstance(url, str):
            host = urlsplit(url).hostname
            if host:
                hosts.append(host)
    return list(dict.fromkeys(hosts))


def _bundle_of(hook: Mapping[str, Any]) -> bytes:
    client = hook.get("clientConfig")
    raw = client.get("caBundle") if isinstance(client, dict) else None
    if not isinstance(raw, str):
        return b""
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        return b""


class SecretCerts:
    """The serving certificate from the Secret ``namespace/name``; see the module docstring.

    ``api`` reads and writes with the webhook's own credentials. ``listen_host`` is named in
    the certificate unless it is a wildcard.
    """

    def __init__(
        self,
        api: SecretApi,
        secret: str,
        webhook_config: str | None,
        listen_host: str = "",
        timing: CertTiming | None = None,
    ) -> None:
        namespace, _, name = secret.partition("/")
        if not namespace or not name:
            raise ConfigError(f"--cert-secret {secret!r}: expected NAMESPACE/NAME")
        self.api = api
        self.namespace, self.name = namespace, name
        self.webhook_config = webhook_config
        self.listen_host = listen_host
        self.timing = timing or CertTiming()
        self.material: Material | None = None
        self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        self._injected = webhook_config is None
        self._problem = "the certificate Secret has not been read yet"
        self._task: asyncio.Task[None] | None = None

    @property
    def ssl_context(self) -> ssl.SSLContext:
        """The server context; its certificate is replaced in place on renewal."""
        return self._ctx

    @property
    def injected(self) -> bool:
        """Whether the webhook configuration trusts the current CA."""
        return self._injected

    def reasons_not_ready(self) -> list[str]:
        """Why the API server cannot trust this webhook yet."""
        if self.material is None:
            return [self._problem]
        if not self._injected:
            return [self._problem or "the CA is not injected into the webhook configuration"]
        return []

    async def start(self) -> None:
        """Read (or create) the Secret and serve its certificate; keep it current in the
        background. Raises UpstreamError / ConfigError when the first attempt fails."""
        await self.sync()
        self._task = asyncio.create_task(self._loop(), name="klockproxy-webhook-certs")

    async def stop(self) -> None:
        """Stop the background renewal and release the API client."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.api.close()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.timing.check_interval)
            try:
                await self.sync()
            except KlockProxyError as e:
                # Keep serving the current certificate; the next round retries.
                self._problem = f"certificate management failed: {e}"
                logger.warning("certificate management failed: %s", e)

    @property
    def _secret_path(self) -> str:
        return f"/api/v1/namespaces/{quote(self.namespace, safe='')}/secrets"

    async def sync(self) -> None:
        """One round: read or create the Secret, renew if due, inject the CA, serve."""
        config = await self._config()
        hosts = self._hosts(config)
        material = await self._current(hosts)
        for _ in range(_WRITE_ATTEMPTS):
            why = material.renewal_due(hosts, self.timing)
            if not why:
                break
            logger.info("renewing the webhook certificate: %s", why)
            renewed = issue(hosts, self.timing, material)
            secret = self._secret(renewed, material.resource_version)
            path = f"{self._secret_path}/{quote(self.name, safe='')}"
            stored = await self.api.replace_object(path, secret)
            if stored is not None:
                material = Material.from_secret(stored)
                break
            # 409: another replica renewed first; take what it wrote (checked again).
            material = await self._read_required()
        if config is not None:
            await self._inject(material, config)
        self._serve(material)

    def _hosts(self, config: Mapping[str, Any] | None) -> list[str]:
        hosts = service_hosts(config)
        host = self.listen_host
        if host and host not in ("0.0.0.0", "::"):
            hosts.append(host)
        if not hosts:
            hosts = ["localhost"]
        return list(dict.fromkeys(hosts))

    async def _config(self) -> dict[str, Any] | None:
        if self.webhook_config is None:
            return None
        config = await self.api.get_object(VWC_PATH + quote(self.webhook_config, safe=""), {})
        if config is None:
            self._injected = False
            self._problem = (
                f"ValidatingWebhookConfiguration {self.webhook_config} does not exist yet"
            )
        return config

    def _secret(self, material: Material, resource_version: str = "") -> dict[str, Any]:
        meta: dict[str, Any] = {
            "name": self.name,
            "namespace": self.namespace,
            "labels": MANAGED_BY,
        }
        if resource_version:
            meta["resourceVersion"] = resource_version
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": meta,
            "type": "Opaque",
            "data": material.data(),
        }

    async def _read(self) -> Material | None:
        secret = await self.api.get_object(f"{self._secret_path}/{quote(self.name, safe='')}", {})
        return Material.from_secret(secret) if secret is not None else None

    async def _read_required(self) -> Material:
        material = await self._read()
        if material is None:
            raise UpstreamError(f"the Secret {self.namespace}/{self.name} vanished")
        return material

    async def _current(self, hosts: list[str]) -> Material:
        material = await self._read()
        if material is not None:
            return material
        fresh = issue(hosts, self.timing)
        created = await self.api.create_if_absent(self._secret_path, self._secret(fresh))
        if created is None:
            # 409: another replica created it first; everyone uses the winner's.
            logger.info(
                "the Secret %s/%s was created by another replica", self.namespace, self.name
            )
            return await self._read_required()
        logger.info("created the Secret %s/%s with a new CA", self.namespace, self.name)
        return Material.from_secret(created)

    async def _inject(self, material: Material, config: dict[str, Any]) -> None:
        name = self.webhook_config or ""
        path = VWC_PATH + quote(name, safe="")
        encoded = base64.b64encode(material.bundle).decode()
        for _ in range(_WRITE_ATTEMPTS):
            hooks = config.get("webhooks")
            hooks = [h for h in hooks if isinstance(h, dict)] if isinstance(hooks, list) else []
            if all(_bundle_of(h) == material.bundle for h in hooks):
                self._injected = bool(hooks)
                self._problem = "" if hooks else f"{name} has no webhooks"
                return
            patched = []
            for hook in hooks:
                client = dict(hook.get("clientConfig") or {})
                client["caBundle"] = encoded
                patched.append({**hook, "clientConfig": client})
            meta = config.get("metadata")
            rv = meta.get("resourceVersion", "") if isinstance(meta, dict) else ""
            # The whole list (a merge patch replaces lists) as read, conditional on the
            # version read: a concurrent change makes it fail with 409 and go round again.
            result = await self.api.merge_patch_object(
                path, {"metadata": {"resourceVersion": rv}, "webhooks": patched}
            )
            if result is not None:
                logger.info("injected the webhook CA into %s", name)
                config = result
                continue
            fresh = await self.api.get_object(path, {})
            if fresh is None:
                self._injected = False
                self._problem = f"ValidatingWebhookConfiguration {name} does not exist yet"
                return
            config = fresh
        self._injected = False
        self._problem = f"the CA could not be injected into {name} (changed concurrently)"

    def _serve(self, material: Material) -> None:
        if material == self.material:
            return
        # ssl loads a certificate chain from files only: a private directory, removed at once.
        with tempfile.TemporaryDirectory(prefix="klockproxy-tls-") as tmp:
            cert, key = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
            for path, data in ((cert, material.tls_cert), (key, material.tls_key)):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    os.write(fd, data)
                finally:
                    os.close(fd)
            try:
                self._ctx.load_cert_chain(cert, key)
            except ssl.SSLError as e:
                raise ConfigError(
                    f"the certificate Secret's tls.crt/tls.key do not load: {e}"
                ) from e
        self.material = material
