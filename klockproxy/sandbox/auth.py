"""Authentication and impersonation for the sandbox, as the API server does them.

Credentials, tried in the API server's order (the first that authenticates wins):

1. a client certificate signed by the sandbox CA: CN = user name, O = groups;
2. a bearer token from the static tokens file (``--token-auth-file`` CSV format);
3. a service-account token issued by TokenRequest: a JWT signed with ES256 by the sandbox's
   service-account key, claims ``iss``, ``sub`` (``system:serviceaccount:NS:NAME``), ``aud``,
   ``exp``, ``iat``, ``nbf``, ``jti`` and ``kubernetes.io`` {namespace, serviceaccount {name,
   uid}}. Expired, not-yet-valid, forged (bad signature, other key, ``alg`` other than ES256)
   and wrong-audience tokens are refused; with an ``sa_lookup`` callback, so are tokens whose
   ServiceAccount no longer exists or was re-created (uid mismatch).

Every authenticated user also gets the group ``system:authenticated``; service accounts get
``system:serviceaccounts`` and ``system:serviceaccounts:NS``.

Impersonation (:func:`resolve_impersonation`) follows the API server's impersonation filter:
each requested identity attribute needs the ``impersonate`` verb on the matching resource.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from klockproxy.cluster.certs import CertificateAuthority, CertificateError
from klockproxy.core.errors import ConfigError
from klockproxy.core.types import UserInfo
from klockproxy.sandbox.errors import BadRequestError
from klockproxy.sandbox.rbac import (
    AUTHENTICATED_GROUP,
    SERVICE_ACCOUNT_PREFIX,
    Attributes,
    AuthorizationDecision,
    forbidden_error,
)

logger = logging.getLogger(__name__)

DEFAULT_ISSUER = "https://kubernetes.default.svc.cluster.local"
SERVICE_ACCOUNTS_GROUP = "system:serviceaccounts"
CREDENTIAL_ID_EXTRA = "authentication.kubernetes.io/credential-id"
AUTHENTICATION_GROUP = "authentication.k8s.io"
ANONYMOUS_USER = "system:anonymous"
UNAUTHENTICATED_GROUP = "system:unauthenticated"

# A DNS-1123 label: what namespace and service-account names must be (SplitUsername checks).
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

ServiceAccountLookup = Callable[[str, str], Mapping[str, Any] | None]


# ---- service-account names -------------------------------------------------------------------


def service_account_username(namespace: str, name: str) -> str:
    """``system:serviceaccount:NS:NAME``."""
    return f"{SERVICE_ACCOUNT_PREFIX}{namespace}:{name}"


def service_account_groups(namespace: str) -> tuple[str, str]:
    """The groups every service account of ``namespace`` belongs to."""
    return SERVICE_ACCOUNTS_GROUP, f"{SERVICE_ACCOUNTS_GROUP}:{namespace}"


def split_service_account_username(username: str) -> tuple[str, str] | None:
    """(namespace, name) when ``username`` is a valid service-account user name, else None."""
    if not username.startswith(SERVICE_ACCOUNT_PREFIX):
        return None
    parts = username[len(SERVICE_ACCOUNT_PREFIX) :].split(":")
    if len(parts) != 2:
        return None
    namespace, name = parts
    if len(namespace) > 63 or not _DNS_LABEL.match(namespace):
        return None
    if len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        return None
    return namespace, name


def with_authenticated_group(groups: Iterable[str]) -> tuple[str, ...]:
    """``groups`` plus ``system:authenticated`` (once), as the API server adds it."""
    out = list(dict.fromkeys(groups))
    if AUTHENTICATED_GROUP not in out:
        out.append(AUTHENTICATED_GROUP)
    return tuple(out)


# ---- the tokens file ---------------------------------------------------------------------------


def parse_tokens_text(text: str, source: str = "<tokens>") -> dict[str, UserInfo]:
    """Parse a kube-apiserver ``--token-auth-file``: ``token,user,uid[,"group1,group2"]``.

    Blank lines and lines starting with ``#`` are skipped. Stricter than the API server (which
    only warns): an empty token or user name, a duplicate token, a token with whitespace and
    more than four columns (usually unquoted groups) are errors. Raises ConfigError naming
    ``source`` and the line.
    """
    tokens: dict[str, UserInfo] = {}
    first_line: dict[str, int] = {}
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1)]
    for line_no, line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{source}: line {line_no}"
        try:
            rows = list(csv.reader(io.StringIO(line), strict=True))
        except csv.Error as e:
            raise ConfigError(f"{where}: malformed CSV: {e}") from e
        if len(rows) != 1:
            raise ConfigError(f"{where}: malformed CSV")
        record = [f.strip() for f in rows[0]]
        if len(record) < 3:
            raise ConfigError(
                f"{where}: must have at least 3 columns (token, user name, user uid), "
                f"found {len(record)}"
            )
        if len(record) > 4:
            raise ConfigError(
                f"{where}: at most 4 columns (token, user name, user uid, groups), found "
                f'{len(record)}; quote several groups as one column: "group1,group2"'
            )
        token, username, uid = record[0], record[1], record[2]
        if not token:
            raise ConfigError(f"{where}: empty token")
        if any(c.isspace() for c in token):
            raise ConfigError(f"{where}: the token contains whitespace")
        if not username:
            raise ConfigError(f"{where}: empty user name")
        if token in tokens:
            raise ConfigError(f"{where}: duplicate token (first on line {first_line[token]})")
        groups: tuple[str, ...] = ()
        if len(record) == 4:
            groups = tuple(dict.fromkeys(g.strip() for g in record[3].split(",") if g.strip()))
        tokens[token] = UserInfo(username, uid=uid, groups=groups)
        first_line[token] = line_no
    return tokens


def parse_tokens_file(path: Path) -> dict[str, UserInfo]:
    """Read and parse a tokens file (see :func:`parse_tokens_text`); ConfigError if unusable."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the tokens file {path}: {e}") from e
    return parse_tokens_text(text, str(path))


# ---- JWT (ES256) -------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return _b64url(hashlib.sha256(der).digest())


class Authenticator:
    """Who is calling: client certificate, static token or service-account token.

    ``sa_lookup(namespace, name)`` returns the ServiceAccount object (a dict) or None; when
    given, a service-account token is only valid while its ServiceAccount exists with the uid
    the token was issued for. ``signing_key_pem`` (an EC P-256 private key, PEM) keeps tokens
    valid across restarts; without it a fresh key is generated (see ``signing_key_pem``).
    ``clock`` returns the current UTC time (tests inject one instead of sleeping).
    """

    def __init__(
        self,
        ca: CertificateAuthority,
        tokens_file: Path | None,
        *,
        sa_lookup: ServiceAccountLookup | None = None,
        signing_key_pem: bytes | None = None,
        issuer: str = DEFAULT_ISSUER,
        api_audiences: Sequence[str] | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._ca = ca
        self._static: dict[str, UserInfo] = (
            parse_tokens_file(tokens_file) if tokens_file is not None else {}
        )
        self.sa_lookup = sa_lookup
        self._issuer = issuer
        self._audiences = tuple(api_audiences) if api_audiences else (issuer,)
        self._clock = clock or (lambda: datetime.now(UTC))
        if signing_key_pem is None:
            self._key = ec.generate_private_key(ec.SECP256R1())
        else:
            try:
                key = serialization.load_pem_private_key(signing_key_pem, None)
            except (ValueError, TypeError) as e:
                raise ConfigError(f"unusable service-account signing key: {e}") from e
            if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(
                key.curve, ec.SECP256R1
            ):
                raise ConfigError("the service-account signing key must be an EC P-256 key")
            self._key = key
        self._public = self._key.public_key()
        self._kid = _key_id(self._public)

    @property
    def signing_key_pem(self) -> bytes:
        """The service-account signing key (PEM, PKCS#8): persist it to keep tokens valid."""
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def api_audiences(self) -> tuple[str, ...]:
        """The audiences the API server accepts (and TokenRequest defaults to)."""
        return self._audiences

    @property
    def issuer(self) -> str:
        """The ``iss`` of issued service-account tokens."""
        return self._issuer

    def now(self) -> datetime:
        """The authenticator's clock (UTC)."""
        return self._clock()

    def add_static_token(self, token: str, user: UserInfo | str) -> None:
        """Accept ``token`` as ``user`` (a UserInfo, or just a user name)."""
        if not token or any(c.isspace() for c in token):
            raise ConfigError("a static token must be non-empty and contain no whitespace")
        self._static[token] = user if isinstance(user, UserInfo) else UserInfo(user)

    # -- service-account tokens --

    def issue_service_account_token(
        self,
        namespace: str,
        name: str,
        uid: str,
        expiration_seconds: int,
        audiences: Sequence[str] | None = None,
    ) -> tuple[str, datetime]:
        """Sign a token for ServiceAccount ``namespace/name``: (token, expiration time)."""
        now = self._clock()
        # JWT times are whole seconds; the returned expiration is exactly the token's.
        exp_ts = int((now + timedelta(seconds=expiration_seconds)).timestamp())
        header = {"alg": "ES256", "kid": self._kid}
        claims = {
            "aud": list(audiences) if audiences else list(self._audiences),
            "exp": exp_ts,
            "iat": int(now.timestamp()),
            "iss": self._issuer,
            "jti": str(uuid.uuid4()),
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": {"name": name, "uid": uid},
            },
            "nbf": int(now.timestamp()),
            "sub": service_account_username(namespace, name),
        }
        signing_input = (
            _b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64url(json.dumps(claims, separators=(",", ":")).encode())
        )
        der = self._key.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return f"{signing_input}.{_b64url(signature)}", datetime.fromtimestamp(exp_ts, UTC)

    def _verified_claims(self, token: str) -> dict[str, Any] | None:
        parts = token.split(".")
        if len(parts) != 3:
            return None
        try:
            header = json.loads(_b64url_decode(parts[0]))
            claims = json.loads(_b64url_decode(parts[1]))
            signature = _b64url_decode(parts[2])
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(header, dict) or not isinstance(claims, dict):
            return None
        # Only our algorithm: no "none", no HMAC keyed with the public key.
        if header.get("alg") != "ES256" or len(signature) != 64:
            return None
        der = encode_dss_signature(
            int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
        )
        try:
            self._public.verify(
                der, f"{parts[0]}.{parts[1]}".encode("ascii"), ec.ECDSA(hashes.SHA256())
            )
        except InvalidSignature:
            logger.debug("service-account token rejected: bad signature")
            return None
        return claims

    def _service_account_user(
        self, token: str, audiences: Sequence[str]
    ) -> tuple[UserInfo, list[str]] | None:
        claims = self._verified_claims(token)
        if claims is None:
            return None
        now = self._clock().timestamp()
        if claims.get("iss") != self._issuer:
            logger.debug("service-account token rejected: wrong issuer")
            return None
        exp, nbf = claims.get("exp"), claims.get("nbf", 0)
        if not isinstance(exp, int | float) or not isinstance(nbf, int | float):
            return None
        if now >= exp:
            logger.debug("service-account token rejected: expired")
            return None
        if now < nbf:
            logger.debug("service-account token rejected: not yet valid")
            return None
        aud = claims.get("aud")
        token_audiences = [aud] if isinstance(aud, str) else aud
        if not isinstance(token_audiences, list):
            return None
        matched = [a for a in audiences if a in token_audiences]
        if not matched:
            logger.debug("service-account token rejected: audience not accepted")
            return None
        k8s = claims.get("kubernetes.io")
        if not isinstance(k8s, dict) or not isinstance(k8s.get("serviceaccount"), dict):
            return None
        namespace, sa = k8s.get("namespace"), k8s["serviceaccount"]
        name, uid = sa.get("name"), sa.get("uid")
        if not (isinstance(namespace, str) and isinstance(name, str) and isinstance(uid, str)):
            return None
        if claims.get("sub") != service_account_username(namespace, name):
            return None
        if self.sa_lookup is not None:
            obj = self.sa_lookup(namespace, name)
            meta = obj.get("metadata") if obj is not None else None
            if not isinstance(meta, Mapping):
                logger.debug("service-account token rejected: %s/%s is gone", namespace, name)
                return None
            if meta.get("uid") != uid:
                logger.debug(
                    "service-account token rejected: %s/%s was re-created", namespace, name
                )
                return None
        extra: dict[str, tuple[str, ...]] = {}
        if isinstance(claims.get("jti"), str):
            extra[CREDENTIAL_ID_EXTRA] = (f"JTI={claims['jti']}",)
        user = UserInfo(
            service_account_username(namespace, name),
            uid=uid,
            groups=with_authenticated_group(service_account_groups(namespace)),
            extra=extra,
        )
        return user, matched

    # -- the entry points --

    def authenticate_token(
        self, token: str, audiences: Sequence[str] | None = None
    ) -> tuple[UserInfo, list[str]] | None:
        """A bearer token's user and the audiences it was accepted for (TokenReview), or None.

        ``audiences`` defaults to the API server's; static tokens are valid for those only.
        """
        token = token.strip()
        if not token:
            return None
        wanted = list(audiences) if audiences else list(self._audiences)
        static = self._static.get(token)
        if static is not None:
            # Static tokens carry no audience: the API server treats them as its own.
            matched = [a for a in wanted if a in self._audiences]
            if not matched:
                return None
            user = UserInfo(
                static.username,
                uid=static.uid,
                groups=with_authenticated_group(static.groups),
                extra=static.extra,
            )
            return user, matched
        if token.count(".") == 2:
            return self._service_account_user(token, wanted)
        return None

    def authenticate_certificate(self, cert: bytes) -> UserInfo | None:
        """The user of a client certificate (DER or PEM) signed by the sandbox CA, or None."""
        try:
            cn, orgs = self._ca.verify_client_cert(cert)
        except CertificateError as e:
            logger.debug("client certificate rejected: %s", e)
            return None
        if not cn:
            return None
        fingerprint = hashlib.sha256(_der_of(cert)).hexdigest()
        return UserInfo(
            cn,
            groups=with_authenticated_group(orgs),
            extra={CREDENTIAL_ID_EXTRA: (f"X509SHA256={fingerprint}",)},
        )

    def authenticate(
        self, bearer_token: str | None, peer_cert_der: bytes | None
    ) -> UserInfo | None:
        """The caller, or None (401): client certificate first, then the bearer token."""
        if peer_cert_der:
            user = self.authenticate_certificate(peer_cert_der)
            if user is not None:
                return user
        if bearer_token:
            found = self.authenticate_token(bearer_token)
            if found is not None:
                return found[0]
        return None


def _der_of(cert: bytes) -> bytes:
    if cert.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(cert).public_bytes(serialization.Encoding.DER)
    return cert


# ---- impersonation ------------------------------------------------------------------------------


class SupportsAuthorize(Protocol):
    """The authorizer interface impersonation needs (rbac.Authorizer)."""

    def authorize(self, user: UserInfo, attrs: Attributes) -> AuthorizationDecision:
        """Allow or deny ``attrs`` for ``user``."""
        ...


IMPERSONATE_USER = "impersonate-user"
IMPERSONATE_GROUP = "impersonate-group"
IMPERSONATE_UID = "impersonate-uid"
IMPERSONATE_EXTRA_PREFIX = "impersonate-extra-"

Headers = Mapping[str, str] | Mapping[str, Sequence[str]]


def _header_values(headers: Headers) -> dict[str, list[str]]:
    """Lower-cased header name -> all its values, from a multidict (``items()`` repeats a
    name per value) or a plain mapping whose values are a string or a list of strings."""
    out: dict[str, list[str]] = {}
    for key, value in headers.items():
        values = [value] if isinstance(value, str) else list(value)
        out.setdefault(key.lower(), []).extend(values)
    return out


async def resolve_impersonation(
    user: UserInfo, headers: Headers, authorizer: SupportsAuthorize
) -> UserInfo:
    """The identity a request acts as: ``user`` itself, or whom it may impersonate.

    ``headers`` is case-insensitive in effect: an aiohttp ``CIMultiDictProxy`` (repeated
    ``Impersonate-Group`` headers are separate values) or any mapping of header name to a
    value or a list of values. Raises BadRequestError when groups, extras or a uid are
    requested without ``Impersonate-User``, ForbiddenError (the API server's message) when
    the caller may not impersonate one of the requested attributes.
    """
    values = _header_values(headers)
    requested_user = next(iter(values.get(IMPERSONATE_USER, [])), "")
    requested_uid = next(iter(values.get(IMPERSONATE_UID, [])), "")
    requested_groups = values.get(IMPERSONATE_GROUP, [])
    requested_extra: dict[str, list[str]] = {}
    for key, vals in values.items():
        if key.startswith(IMPERSONATE_EXTRA_PREFIX) and len(key) > len(IMPERSONATE_EXTRA_PREFIX):
            extra_key = unquote(key[len(IMPERSONATE_EXTRA_PREFIX) :]).lower()
            requested_extra.setdefault(extra_key, []).extend(vals)

    checks: list[tuple[Attributes, str]] = []
    sa = split_service_account_username(requested_user) if requested_user else None
    if requested_user:
        if sa is not None:
            attrs = Attributes("impersonate", sa[0], "", "serviceaccounts", name=sa[1])
        else:
            attrs = Attributes("impersonate", "", "", "users", name=requested_user)
        checks.append((attrs, "user"))
    for g in requested_groups:
        checks.append((Attributes("impersonate", "", "", "groups", name=g), "group"))
    for key, vals in requested_extra.items():
        for v in vals:
            attrs = Attributes("impersonate", "", AUTHENTICATION_GROUP, "userextras", key, v)
            checks.append((attrs, "extra"))
    if requested_uid:
        attrs = Attributes("impersonate", "", AUTHENTICATION_GROUP, "uids", name=requested_uid)
        checks.append((attrs, "uid"))
    if not checks:
        return user
    if not requested_user:
        asked = ", ".join(f'{what} "{a.name}"' for a, what in checks)
        raise BadRequestError(f"requested [{asked}] without impersonating a user")

    for attrs, _ in checks:
        decision = authorizer.authorize(user, attrs)
        if not decision.allowed:
            logger.info(
                "impersonation denied: %s may not impersonate %s", user.username, attrs.resource
            )
            raise forbidden_error(user.username, attrs, decision.reason)

    groups: list[str] = list(dict.fromkeys(requested_groups))
    if sa is not None and not requested_groups:
        groups = list(service_account_groups(sa[0]))
    if requested_user == ANONYMOUS_USER:
        if UNAUTHENTICATED_GROUP not in groups:
            groups.append(UNAUTHENTICATED_GROUP)
        final_groups = tuple(groups)
    else:
        final_groups = with_authenticated_group(groups)
    return UserInfo(
        requested_user,
        uid=requested_uid,
        groups=final_groups,
        extra={k: tuple(v) for k, v in requested_extra.items()},
    )
