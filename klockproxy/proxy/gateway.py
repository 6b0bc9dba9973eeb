"""``klockproxy gateway``: one shared, Lock-enforcing proxy for a whole team.

Engineers and pipelines point their kubeconfig at the gateway with THEIR OWN credentials;
every mutation is judged against the Locks as the caller who made it (the same ``KlockProxy``
addon and judge as local mode). The gateway holds no user's credentials:

* **bearer token** callers: the request is forwarded with the token unchanged, so the API
  server authenticates and authorises the caller itself. The identity for the lock decision
  comes from a SelfSubjectReview sent with that token and the caller's ``Impersonate-*``
  headers (see README, "Shared gateway", for why not a TokenReview), cached
  (``cluster.identity``); a token the API server rejects gets its 401.
* **client certificate** callers (only with ``--client-ca``): verified in the TLS handshake
  and again once it is done (``proxy.client_certs``), then forwarded with the gateway's OWN
  credentials and ``Impersonate-User`` / ``Impersonate-Group`` set (never appended) to the
  certificate's identity. Caller-sent impersonation is allowed only when a
  SubjectAccessReview (verb ``impersonate``) allows it to the certificate's identity.
* **no credentials**: 401, nothing forwarded.

Header hygiene happens before anything else: headers named in ``Connection`` are dropped
(except ``Upgrade``, which exec/attach/port-forward need), ``X-Remote-*`` are dropped,
requests naming another host (absolute-form targets, ``CONNECT``, a ``Host`` the serving
certificate does not cover) get 400.

The gateway's own credentials (``--kubeconfig``/``--context``, or the pod's service account)
serve the lock watch, reviews and certificate callers only. A client certificate of its own
is presented upstream only on connections of certificate callers: the API server tries x509
before bearer tokens, so presenting it on a token caller's connection would run the caller's
request as the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fnmatch
import ipaddress
import logging
import os
import socket
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from klockproxy.audit import AuditLog
from klockproxy.cluster.identity import IdentityResolver, ReviewCache, ReviewRefused, cache_key
from klockproxy.cluster.kubeconfig import KubeconfigTarget, OwnCredentials, own_upstream
from klockproxy.cluster.ownership import OwnershipIndex
from klockproxy.cluster.private_files import write_private
from klockproxy.cluster.upstream import TokenFile, Upstream, UpstreamConfig
from klockproxy.core.errors import ConfigError, KlockProxyError, UpstreamError
from klockproxy.core.status import Status, failure, to_bytes
from klockproxy.core.types import UserInfo
from klockproxy.loop_thread import LoopThread
from klockproxy.proxy.master import ProxyService, cert_hosts, run_proxy
from klockproxy.service import (
    OptionTexts,
    ServedSettings,
    add_service_options,
    add_state_dir_option,
    parse_listen,
)

if TYPE_CHECKING:
    # Imported where used: `klockproxy --help` and `klockproxy check` build every
    # subcommand's parser and must not pay for prometheus-client.
    from klockproxy.health import HealthServer
    from klockproxy.metrics import Metrics

logger = logging.getLogger(__name__)

DEFAULT_LISTEN = "0.0.0.0:8443"
DEFAULT_STATE_DIR = "~/.klockproxy-gateway"
GATEWAY_CA_NAME = "klockproxy gateway CA"
# The longest bearer token accepted (service-account JWTs and OIDC id tokens are a few kB).
MAX_TOKEN_BYTES = 16 * 1024
# Reviews of credentials the cache does not know yet, per second (burst: MISS_BURST): a flood
# of made-up tokens is refused with 429 past that, instead of reaching the API server.
MISS_RATE = 50.0
MISS_BURST = 200

AUTHENTICATED_GROUP = "system:authenticated"
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"
_WS_TOKEN_PROTOCOL = "base64url.bearer.authorization.k8s.io."
_CALLER = "klockproxy-gateway-caller"  # flow metadata: "token" or "cert"
# Connection options that are not header names, or that must survive (WebSocket upgrades).
_CONNECTION_KEEP = frozenset({"upgrade", "keep-alive", "close"})


# ---------------------------------------------------------------------------------------------
# Caller authentication (a mitmproxy addon in front of KlockProxy)


@dataclass(frozen=True)
class Impersonation:
    """What a caller asked to act as (``Impersonate-*`` headers)."""

    user: str = ""
    groups: tuple[str, ...] = ()
    uid: str = ""
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def requested(self) -> bool:
        """Whether any impersonation header was sent."""
        return bool(self.user or self.groups or self.uid or self.extra)


class BadImpersonation(KlockProxyError):
    """Impersonation headers the API server would refuse as malformed (400)."""


def parse_impersonation(headers: Any) -> Impersonation:
    """Every ``Impersonate-*`` header (any letter case), or BadImpersonation."""
    user: list[str] = []
    uid: list[str] = []
    groups: list[str] = []
    extra: dict[str, list[str]] = {}
    for name in list(headers.keys()):
        lower = name.lower()
        if not lower.startswith("impersonate-"):
            continue
        values = headers.get_all(name)
        if lower == "impersonate-user":
            user.extend(values)
        elif lower == "impersonate-group":
            groups.extend(values)
        elif lower == "impersonate-uid":
            uid.extend(values)
        elif lower.startswith("impersonate-extra-") and len(lower) > len("impersonate-extra-"):
            key = unquote(lower[len("impersonate-extra-") :])
            extra.setdefault(key, []).extend(values)
        else:
            raise BadImpersonation(f"unknown impersonation header {name!r}")
    if len(set(user)) > 1 or len(set(uid)) > 1:
        raise BadImpersonation("more than one Impersonate-User or Impersonate-Uid value")
    result = Impersonation(
        user=user[0] if user else "",
        groups=tuple(dict.fromkeys(groups)),
        uid=uid[0] if uid else "",
        extra=tuple(sorted((k, tuple(v)) for k, v in extra.items())),
    )
    if result.requested and not result.user:
        raise BadImpersonation("impersonating groups, a uid or extras needs Impersonate-User")
    return result


def impersonation_checks(imp: Impersonation) -> list[dict[str, str]]:
    """The SubjectAccessReview resourceAttributes the API server checks for ``imp``."""
    checks: list[dict[str, str]] = []
    if imp.user.startswith(SERVICE_ACCOUNT_PREFIX) and imp.user.count(":") == 3:
        _, _, namespace, name = imp.user.split(":")
        checks.append(
            {"verb": "impersonate", "resource": "serviceaccounts", "namespace": namespace,
             "name": name}
        )  # fmt: skip
    elif imp.user:
        checks.append({"verb": "impersonate", "resource": "users", "name": imp.user})
    for group in imp.groups:
        checks.append({"verb": "impersonate", "resource": "groups", "name": group})
    for key, values in imp.extra:
        for value in values:
            checks.append(
                {"verb": "impersonate", "group": "authentication.k8s.io",
                 "resource": "userextras", "subresource": key, "name": value}
            )  # fmt: skip
    if imp.uid:
        checks.append(
            {"verb": "impersonate", "group": "authentication.k8s.io", "resource": "uids",
             "name": imp.uid}
        )  # fmt: skip
    return checks


def _forbidden_impersonation(user: str, attrs: Mapping[str, str]) -> Status:
    resource = attrs["resource"]
    group = attrs.get("group", "")
    scope = (
        f'in the namespace "{attrs["namespace"]}"'
        if attrs.get("namespace")
        else ("at the cluster scope")
    )
    shown = f"{resource}.{group}" if group else resource
    if attrs.get("subresource"):
        shown += f"/{attrs['subresource']}"
    return failure(
        403,
        f'{shown} "{attrs.get("name", "")}" is forbidden: User "{user}" cannot impersonate '
        f'resource "{resource}" in API group "{group}" {scope}',
    )


def _host_of(authority: str) -> str:
    """The host of ``host[:port]`` / ``[v6][:port]``, lower-cased."""
    authority = authority.strip().lower()
    if authority.startswith("["):
        return authority[1:].split("]", 1)[0]
    if authority.count(":") > 1:
        return authority  # a bare IPv6 address
    return authority.rsplit(":", 1)[0] if ":" in authority else authority


def certificate_hosts(pem: bytes) -> list[str]:
    """The names a serving certificate covers (subjectAltName DNS and IP, else its CN)."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = x509.load_pem_x509_certificate(pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return [str(cns[0].value).lower()] if cns else []
    names = [str(n).lower() for n in san.get_values_for_type(x509.DNSName)]
    names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return names


def host_allowed(host: str, allowed: Sequence[str]) -> bool:
    """Whether ``host`` is one of ``allowed`` (``*.example.com`` covers one label)."""
    host = host.lower().rstrip(".")
    with contextlib.suppress(ValueError):
        host = str(ipaddress.ip_address(host))
    for name in allowed:
        if name.startswith("*."):
            if fnmatch.fnmatchcase(host, name) and host.count(".") == name.count("."):
                return True
        elif host == name:
            return True
    return False


class GatewayAuth:
    """mitmproxy addon in front of ``KlockProxy``: who is calling, header hygiene.

    The API server, and the gateway's own credentials for certificate callers, are those of
    ``lookups`` (its ``config``): the client that also makes the reviews.
    """

    def __init__(
        self,
        *,
        lookups: Upstream,
        identity: IdentityResolver,
        allowed_hosts: Sequence[str],
        verifier: Any | None = None,
        metrics: Metrics | None = None,
        miss_rate: float | None = MISS_RATE,
        miss_burst: int = MISS_BURST,
    ) -> None:
        from yarl import URL

        self.lookups = lookups
        self.identity = identity
        self.verifier = verifier
        self.metrics = metrics
        self.allowed_hosts = tuple(allowed_hosts)
        upstream = lookups.config
        url = URL(upstream.server)
        self.upstream_host = url.host or ""
        self.upstream_port = url.port or 443
        self.upstream_authority = (
            f"[{self.upstream_host}]" if ":" in self.upstream_host else self.upstream_host
        ) + ("" if self.upstream_port == 443 else f":{self.upstream_port}")
        self.own_token = TokenFile(upstream.token_file) if upstream.token_file else None
        self.own_cert: tuple[Any, Any] | None = None
        if upstream.client_cert_file:
            self.own_cert = _load_openssl_pair(
                upstream.client_cert_file, upstream.client_key_file or upstream.client_cert_file
            )
        self._sar_key = os.urandom(32)
        self._sar_cache: ReviewCache[tuple[bool, str]] = ReviewCache(
            miss_rate=miss_rate, miss_burst=miss_burst, on_event=self._cache_event
        )
        # client connection id -> verified identity, or None when a certificate was refused.
        self.cert_identities: dict[str, Any] = {}
        # client connection ids whose TLS handshake presented a certificate.
        self._presented: set[str] = set()

    def _cache_event(self, name: str) -> None:
        if self.metrics is not None:
            self.metrics.cache(name)

    # ---- TLS: verify client certificates --------------------------------------------------

    def tls_start_client(self, data: Any) -> None:
        """Verify the client certificate in the handshake (when a CA is configured).

        Embedded, this hook runs after mitmproxy's tlsconfig (``data.ssl_conn`` exists) and
        replaces its accept-everything verification on this connection. Loaded before
        tlsconfig (``mitmdump -s``) there is no connection yet: the certificate is then
        verified after the handshake (``tls_established_client``), which holds in both orders.
        """
        if self.verifier is None:
            return
        conn = getattr(data, "ssl_conn", None)
        if conn is None:
            return
        from OpenSSL import SSL

        seen: dict[int, Any] = {}
        verifier = self.verifier

        def verify(_conn: Any, cert: Any, errno: int, depth: int, ok: int) -> bool:
            # OpenSSL calls this for every certificate of the chain, the leaf (depth 0) last.
            seen[depth] = cert
            if depth > 0:
                return True
            chain = [seen[d] for d in sorted(seen) if d > 0]
            try:
                verifier.verify_openssl(cert, chain)
            except Exception as e:
                logger.warning("client certificate refused in the handshake: %s", e)
                return False
            return True

        conn.set_verify(SSL.VERIFY_PEER, verify)

    def tls_established_client(self, data: Any) -> None:
        """Record who the connection's certificate names (verified again, whatever the order)."""
        client = data.conn
        conn = getattr(data, "ssl_conn", None)
        if conn is None:
            return
        leaf = conn.get_peer_certificate()
        if leaf is None:
            return
        self._presented.add(client.id)
        if self.verifier is None:
            # Without --client-ca no certificate is an identity (the connection is a token
            # caller's or nobody's).
            return
        chain = [c for c in (conn.get_peer_cert_chain() or []) if c.digest("sha256") !=
                 leaf.digest("sha256")]  # fmt: skip
        try:
            self.cert_identities[client.id] = self.verifier.verify_openssl(leaf, chain)
        except Exception as e:
            logger.warning("client certificate refused: %s", e)
            self.cert_identities[client.id] = None

    def client_disconnected(self, client: Any) -> None:
        """Forget the connection's certificate identity."""
        self.cert_identities.pop(client.id, None)
        self._presented.discard(client.id)

    def server_connect(self, data: Any) -> None:
        """The API server's own name as SNI (``keep_host_header`` would send the client's)."""
        server = data.server
        try:
            ipaddress.ip_address(self.upstream_host)
        except ValueError:
            server.sni = self.upstream_host

    def tls_start_server(self, data: Any) -> None:
        """Present the gateway's client certificate upstream, on certificate callers'
        connections only (the API server tries x509 before bearer tokens)."""
        conn = getattr(data, "ssl_conn", None)
        if conn is None or self.own_cert is None:
            return
        client = data.context.client
        if self.cert_identities.get(client.id) is None:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            conn.use_certificate(self.own_cert[0])
            conn.use_privatekey(self.own_cert[1])

    # ---- requests ------------------------------------------------------------------------

    def http_connect(self, flow: Any) -> None:
        """CONNECT names another host: refused (and the target kept on the API server)."""
        flow.request.host = self.upstream_host
        flow.request.port = self.upstream_port
        self._refuse(flow, failure(400, "klockproxy gateway: CONNECT is not served"))

    async def requestheaders(self, flow: Any) -> None:
        """Hygiene, target checks, caller authentication and the forwarded identity."""
        if flow.response is not None:
            return
        req = flow.request
        if req.method.upper() == "CONNECT":
            self._refuse(flow, failure(400, "klockproxy gateway: CONNECT is not served"))
            return
        if req.http_version.startswith("HTTP/1") and req.authority:
            self._refuse(
                flow,
                failure(400, "klockproxy gateway: absolute-form request targets are refused"),
            )
            return
        host = _host_of(req.host_header or "")
        if (
            len(req.headers.get_all("host")) > 1
            or not host
            or not host_allowed(host, self.allowed_hosts)
        ):
            self._refuse(
                flow,
                failure(400, "klockproxy gateway: the request names a host this gateway is not"),
            )
            return
        # The API server sees its own name, as with any client.
        req.host_header = self.upstream_authority
        _drop_connection_headers(req.headers)
        for name in list(req.headers.keys()):
            if name.lower().startswith("x-remote-"):
                del req.headers[name]

        client_id = flow.client_conn.id
        if client_id in self.cert_identities:
            cert = self.cert_identities[client_id]
            if cert is None:
                self._refuse(flow, failure(401, "Unauthorized"))
                return
            await self._certificate_caller(flow, cert)
            return
        if client_id in self._presented and self.verifier is not None:
            # A certificate was presented but never verified: fail closed.
            self._refuse(flow, failure(401, "Unauthorized"))
            return
        await self._token_caller(flow)

    async def _token_caller(self, flow: Any) -> None:
        req = flow.request
        values = req.headers.get_all("authorization")
        if not values:
            token = _websocket_token(req.headers)
            if token is None:
                self._refuse(flow, failure(401, "Unauthorized"))
                return
            values = [f"Bearer {token}"]
        reason = _bad_authorization(values)
        if reason is not None:
            self._refuse(flow, failure(401, "Unauthorized"), f"refused Authorization: {reason}")
            return
        flow.metadata[_CALLER] = "token"
        from klockproxy.proxy.addon import classification

        try:
            info = classification(flow)
        except KlockProxyError:
            return  # KlockProxy answers (or passes a read) as in local mode.
        if not info.is_mutation:
            return
        # Mutations: who is calling, as the API server says (cached). A rejected token gets
        # the API server's 401 here, and the audit log knows the user.
        from klockproxy.proxy.addon import IMPERSONATED_BY_METADATA, USER_METADATA, auth_headers

        headers = auth_headers(req.headers)
        try:
            user = await self.identity.resolve(headers)
            if any(n.lower().startswith("impersonate-") for n in headers):
                plain = {k: v for k, v in headers.items() if k.lower() == "authorization"}
                flow.metadata[IMPERSONATED_BY_METADATA] = await self.identity.resolve(plain)
        except ReviewRefused as e:
            self._refuse(flow, _review_status(e))
            return
        except UpstreamError as e:
            self._refuse(flow, failure(503, f"klockproxy gateway: cannot tell who is calling: {e}"))
            return
        flow.metadata[USER_METADATA] = user

    async def _certificate_caller(self, flow: Any, cert: Any) -> None:
        from klockproxy.proxy.addon import IMPERSONATED_BY_METADATA, _drop_websocket_token

        req = flow.request
        try:
            imp = parse_impersonation(req.headers)
        except BadImpersonation as e:
            self._refuse(flow, failure(400, f"klockproxy gateway: {e}"))
            return
        caller = UserInfo(cert.user, groups=(*cert.groups, AUTHENTICATED_GROUP))
        if imp.requested:
            for attrs in impersonation_checks(imp):
                try:
                    allowed, _ = await self._may(caller, attrs)
                except ReviewRefused as e:
                    self._refuse(flow, _review_status(e))
                    return
                except UpstreamError as e:
                    self._refuse(
                        flow, failure(503, f"klockproxy gateway: cannot check impersonation: {e}")
                    )
                    return
                if not allowed:
                    self._refuse(flow, _forbidden_impersonation(cert.user, attrs))
                    return
            flow.metadata[IMPERSONATED_BY_METADATA] = UserInfo(cert.user, groups=cert.groups)
            target = imp
        else:
            target = Impersonation(user=cert.user, groups=cert.groups)
        # The caller's own credentials never travel on the certificate path.
        for name in list(req.headers.keys()):
            if name.lower() == "authorization" or name.lower().startswith("impersonate-"):
                del req.headers[name]
        _drop_websocket_token(req.headers)
        # SET, never appended: exactly the identity decided above.
        req.headers["Impersonate-User"] = target.user
        if target.groups:
            req.headers.set_all("Impersonate-Group", list(target.groups))
        if target.uid:
            req.headers["Impersonate-Uid"] = target.uid
        for key, values in target.extra:
            req.headers.set_all(f"Impersonate-Extra-{quote(key, safe='')}", list(values))
        flow.metadata[_CALLER] = "cert"
        # The gateway's own credentials: its bearer token here (a request forwarded without
        # judgement is streamed right after these hooks), or its client certificate, which
        # tls_start_server presents on this caller's upstream connections.
        if self.own_token is not None:
            try:
                req.headers["Authorization"] = f"Bearer {self.own_token.token()}"
            except ConfigError as e:
                self._refuse(flow, failure(503, f"klockproxy gateway: {e}"))

    async def _may(self, user: UserInfo, attrs: Mapping[str, str]) -> tuple[bool, str]:
        key_parts = {
            "authorization": f"x509 {user.username}",
            "impersonate-group": list(user.groups),
            **{f"impersonate-check-{k}": v for k, v in sorted(attrs.items())},
        }
        key = cache_key(key_parts, self._sar_key)

        async def review() -> tuple[bool, str]:
            try:
                answer = await self.lookups.subject_access_review(user, attrs)
            except Exception:
                if self.metrics is not None:
                    self.metrics.review("subjectaccessreview", "error")
                raise
            if self.metrics is not None:
                self.metrics.review("subjectaccessreview", "ok" if answer[0] else "rejected")
            return answer

        return await self._sar_cache.get(key, review)

    def _refuse(self, flow: Any, status: Status, log_message: str | None = None) -> None:
        from mitmproxy import http

        flow.metadata["klockproxy"] = "answered"
        flow.response = http.Response.make(
            status["code"], to_bytes(status), {"Content-Type": "application/json"}
        )
        if self.metrics is not None:
            self.metrics.request(flow.request.method, "refused")
        logger.info(
            "klockproxy gateway: refused %s %s with %d: %s",
            flow.request.method,
            flow.request.path.split("?")[0][:200],
            status["code"],
            log_message or status["message"],
        )


def _review_status(e: ReviewRefused) -> Status:
    if e.code == 401:
        return failure(401, "Unauthorized")
    if e.code in (400, 403, 429):
        return failure(e.code, e.message)
    return failure(503, f"klockproxy gateway: cannot tell who is calling: {e}")


def _drop_connection_headers(headers: Any) -> None:
    """Drop every header named in ``Connection`` (any case, any spacing) but Upgrade."""
    named: set[str] = set()
    kept: list[str] = []
    for value in headers.get_all("connection"):
        for token in value.split(","):
            token = token.strip().lower()
            if not token:
                continue
            if token in _CONNECTION_KEEP:
                kept.append(token)
            else:
                named.add(token)
    for name in list(headers.keys()):
        if name.strip().lower() in named:
            del headers[name]
    if "connection" in headers:
        del headers["connection"]
        if kept:
            headers["Connection"] = ", ".join(dict.fromkeys(kept))


def _websocket_token(headers: Any) -> str | None:
    from klockproxy.proxy.addon import _websocket_token as ws_token

    return ws_token(headers)


def _bad_authorization(values: Sequence[str]) -> str | None:
    """Why these Authorization values are no bearer token (None when they are one)."""
    if len(values) != 1:
        return "more than one Authorization header"
    value = values[0]
    if len(value) > MAX_TOKEN_BYTES:
        return "too long"
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return "not a bearer token"
    if any(not 0x21 <= ord(c) <= 0x7E for c in token):
        return "the token has characters no token has"
    return None


def _load_openssl_pair(cert_file: str, key_file: str) -> tuple[Any, Any]:
    from OpenSSL import crypto

    try:
        cert = crypto.load_certificate(crypto.FILETYPE_PEM, Path(cert_file).read_bytes())
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, Path(key_file).read_bytes())
    except (OSError, crypto.Error) as e:
        raise ConfigError(f"cannot load the gateway's client certificate: {e}") from e
    return cert, key


# ---------------------------------------------------------------------------------------------
# The service


@dataclass(kw_only=True)
class GatewaySettings(ServedSettings):
    """Everything ``klockproxy gateway`` is told (besides what every service is)."""

    listen: str = DEFAULT_LISTEN
    state_dir: Path = field(default_factory=lambda: Path(DEFAULT_STATE_DIR).expanduser())
    client_ca: Sequence[str] = ()
    miss_rate: float | None = MISS_RATE
    miss_burst: int = MISS_BURST
    identity_ttl: float = 60.0
    failure_ttl: float = 5.0


class Gateway(ProxyService[GatewaySettings]):
    """The shared gateway: ``await start()`` (ready when it returns), ``await stop()``."""

    # In a pod its own credentials are its service account's (what RBAC grants the gateway
    # is then in the manifests beside it), even where the image carries a kubeconfig.
    option_texts = OptionTexts(
        "the Kubernetes API",
        OwnCredentials.POD_THEN_KUBECONFIG,
        ready="once the Locks synced and the API server answers",
    )

    def __init__(self, settings: GatewaySettings) -> None:
        super().__init__(settings)
        self.health_url = ""
        self.ca_path: Path | None = None
        from klockproxy.metrics import Metrics

        self.metrics = Metrics()
        self.audit: AuditLog | None = None
        self.auth: GatewayAuth | None = None
        self.identity: IdentityResolver | None = None
        self.lookups: Upstream | None = None
        self.target: KubeconfigTarget | None = None
        self._upstream: UpstreamConfig | None = None
        self._health: HealthServer | None = None
        self._upstream_ok = False

    def ready_line(self) -> str:
        """The line ``gateway`` prints once it accepts connections."""
        locks = self.lock_set.describe() if self.lock_set is not None else "no locks"
        line = f"klockproxy gateway serving on {self.url} ({locks})"
        if self.ca_path is not None:
            line += f"; clients must trust the CA {self.ca_path}"
        if self.health_url:
            line += f"; health on {self.health_url}"
        return line

    async def _start(self) -> None:
        """Load credentials, locks and TLS material; start mitmproxy and the health port."""
        s = self.settings
        host, port = parse_listen(s.listen)
        state_dir = Path(s.state_dir).expanduser()
        run_dir = self.private_run_dir(state_dir)
        upstream, self.target = await asyncio.to_thread(
            own_upstream,
            self.option_texts.credentials,
            s.kubeconfig,
            s.context,
            run_dir / "upstream",
        )
        self._upstream = upstream
        if self.target is not None:
            self.keep_token_fresh(
                self.target.refresh, upstream.token_file, "the gateway's credentials"
            )

        serving_pem = run_dir / "serving.pem"
        if s.tls_cert or s.tls_key:
            if not (s.tls_cert and s.tls_key):
                raise ConfigError("--tls-cert and --tls-key go together")
            try:
                cert_pem = Path(s.tls_cert).read_bytes()
                key_pem = Path(s.tls_key).read_bytes()
            except OSError as e:
                raise ConfigError(f"cannot read the serving certificate: {e}") from e
        else:
            from klockproxy.cluster.certs import CertificateAuthority

            ca = await asyncio.to_thread(
                CertificateAuthority.load_or_create, state_dir, GATEWAY_CA_NAME
            )
            hosts = cert_hosts(host)
            for name in (socket.gethostname(), socket.getfqdn()):
                if name and name not in hosts:
                    hosts.append(name)
            cert_pem, key_pem = ca.issue_server(hosts)
            self.ca_path = state_dir / "ca.crt"
            if not self.ca_path.exists():
                write_private(self.ca_path, ca.cert_pem)
        write_private(serving_pem, cert_pem + b"\n" + key_pem)
        try:
            allowed_hosts = certificate_hosts(cert_pem)
        except ValueError as e:
            raise ConfigError(f"the serving certificate does not parse: {e}") from e

        verifier = None
        if s.client_ca:
            from klockproxy.proxy.client_certs import ClientCertVerifier

            verifier = ClientCertVerifier(list(s.client_ca))
        if s.audit_log:
            self.audit = AuditLog(s.audit_log)
            self.releases.callback(self.audit.close)

        # One client for the judge's lookups, the reviews and the lock watch. A token caller's
        # lookups never present the gateway's client certificate (certificate callers'
        # lookups carry no Authorization: they go as the gateway, impersonating).
        self.lookups = Upstream(upstream, certificate_for_callers=False)
        self.releases.push_async_callback(self.lookups.close)
        metrics = self.metrics
        self.identity = IdentityResolver(
            self.lookups,
            cache=ReviewCache(
                ttl=s.identity_ttl,
                failure_ttl=s.failure_ttl,
                miss_rate=s.miss_rate,
                miss_burst=s.miss_burst,
                on_event=metrics.cache,
            ),
            on_review=lambda result: metrics.review("selfsubjectreview", result),
        )
        self.auth = GatewayAuth(
            lookups=self.lookups,
            identity=self.identity,
            allowed_hosts=allowed_hosts,
            verifier=verifier,
            metrics=metrics,
            miss_rate=s.miss_rate,
            miss_burst=s.miss_burst,
        )
        # The lock watch shares the gateway's own client (its credentials, one pool).
        lock_set = await self._start_lock_set(self.lookups)
        from klockproxy.metrics import lock_state

        metrics.track_locks(lambda: lock_state(self.lock_set))

        from klockproxy.proxy.addon import KlockProxy

        options = {
            # Callers come from other machines.
            "block_global": False,
            "http2": True,
            # Checked against the serving certificate's names, then set to the API server's.
            "keep_host_header": True,
            "request_client_cert": verifier is not None,
        }
        klock = KlockProxy(
            lock_set=lock_set,
            upstream=self.lookups,
            identity=self.identity,
            audit=self.audit,
            metrics=metrics,
            # What the garbage collector would delete, watched with the gateway's own
            # credentials (cluster.ownership).
            ownership=OwnershipIndex.over(self.lookups.config),
        )
        addons = [self.auth, klock]
        await self._serve((host, port), lock_set, upstream, serving_pem, run_dir, addons, options)
        if s.health_listen:
            from klockproxy.health import HealthServer

            hhost, hport = parse_listen(s.health_listen, "--health-listen")
            self._health = HealthServer(hhost, hport, self.reasons_not_ready, metrics.registry)
            self.health_url = await self._health.start()
            self.releases.push_async_callback(self._health.stop)

    async def reasons_not_ready(self) -> list[str]:
        """Why the gateway should take no traffic yet (empty: ready)."""
        reasons: list[str] = []
        if self.lock_set is None or not self.lock_set.ready:
            detail = self.lock_set.describe() if self.lock_set is not None else "none"
            reasons.append(f"lock sources have not synced ({detail})")
        if not self._upstream_ok and self.lookups is not None:
            try:
                await self.lookups.get_object("/version", {})
                self._upstream_ok = True
            except KlockProxyError as e:
                reasons.append(f"the API server does not answer: {e}")
        return reasons


class GatewayThread(LoopThread[Gateway]):
    """A Gateway (``service``) on its own event loop in a daemon thread (tests, benchmarks)."""

    thread_name = "klockproxy-gateway"

    def __init__(self, settings: GatewaySettings) -> None:
        super().__init__(Gateway(settings))


# ---------------------------------------------------------------------------------------------
# The command


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``klockproxy gateway``."""
    add_service_options(parser, GatewaySettings, Gateway.option_texts)
    add_state_dir_option(
        parser,
        DEFAULT_STATE_DIR,
        "a generated CA and serving certificate are kept without --tls-cert",
    )
    parser.add_argument(
        "--client-ca",
        action="append",
        metavar="FILE",
        help="CA (PEM) whose client certificates are identities (CN = user, O = groups); "
        "repeatable. Without it no certificate is an identity",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``klockproxy gateway``; returns the exit code."""
    # With --audit-log - standard output carries audit lines: the ready line goes to
    # standard error then.
    return run_proxy(
        Gateway, GatewaySettings, args, out=sys.stderr if args.audit_log == "-" else None
    )
