"""Sandbox authentication (tokens file, service-account tokens, client certificates) and
impersonation: every allow and deny path."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from multidict import CIMultiDict, CIMultiDictProxy

from klockproxy.cluster.certs import CertificateAuthority
from klockproxy.core.errors import ConfigError
from klockproxy.core.types import UserInfo
from klockproxy.sandbox.auth import (
    CREDENTIAL_ID_EXTRA,
    Authenticator,
    parse_tokens_file,
    resolve_impersonation,
    split_service_account_username,
)
from klockproxy.sandbox.errors import BadRequestError, ForbiddenError
from klockproxy.sandbox.rbac import Attributes, AuthorizationDecision

SA_GROUPS = ("system:serviceaccounts", "system:serviceaccounts:default", "system:authenticated")


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("sandbox-ca")


class Clock:
    """A settable clock: tests move time instead of sleeping."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def authn(ca: CertificateAuthority, clock: Clock) -> Authenticator:
    return Authenticator(ca, None, clock=clock)


# --- tokens file ------------------------------------------------------------------------------


def test_tokens_file_format(tmp_path: Path) -> None:
    f = tmp_path / "tokens.csv"
    f.write_text(
        "# comment line\n"
        "admin-token,admin,uid-1,system:masters\n"
        "\n"
        'dev-token,alice,uid-2,"devs,ops"\n'
        "plain-token,bob,\n"
        'quoted-token,"carol smith",uid-4,""\n'
    )
    tokens = parse_tokens_file(f)
    assert tokens == {
        "admin-token": UserInfo("admin", "uid-1", ("system:masters",)),
        "dev-token": UserInfo("alice", "uid-2", ("devs", "ops")),
        "plain-token": UserInfo("bob", "", ()),
        "quoted-token": UserInfo("carol smith", "uid-4", ()),
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ok,u,1\nonly-two,user\n", "line 2: must have at least 3 columns"),
        (
            "t,u,1,g1,g2\n",
            "line 1: at most 4 columns (token, user name, user uid, groups), found 5",
        ),
        (",user,1\n", "line 1: empty token"),
        ("tok,,1\n", "line 1: empty user name"),
        ("a b,user,1\n", "line 1: the token contains whitespace"),
        ("t,u,1\n\nt,v,2\n", "line 3: duplicate token (first on line 1)"),
        ('t,"unterminated,1\n', "line 1: malformed CSV"),
    ],
)
def test_tokens_file_bad_lines(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "tokens.csv"
    f.write_text(text)
    with pytest.raises(ConfigError) as info:
        parse_tokens_file(f)
    assert str(f) in str(info.value)
    assert message in str(info.value)


def test_tokens_file_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the tokens file"):
        parse_tokens_file(tmp_path / "nope.csv")


def test_authenticator_reads_tokens_file(ca: CertificateAuthority, tmp_path: Path) -> None:
    f = tmp_path / "tokens.csv"
    f.write_text('dev-token,alice,uid-2,"devs,ops"\n')
    authn = Authenticator(ca, f)
    assert authn.authenticate("dev-token", None) == UserInfo(
        "alice", "uid-2", ("devs", "ops", "system:authenticated")
    )
    assert authn.authenticate("other-token", None) is None
    assert authn.authenticate(None, None) is None
    assert authn.authenticate("", None) is None


def test_bad_tokens_file_fails_authenticator_construction(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    f = tmp_path / "tokens.csv"
    f.write_text("just-a-token\n")
    with pytest.raises(ConfigError, match="line 1"):
        Authenticator(ca, f)


def test_add_static_token(authn: Authenticator) -> None:
    authn.add_static_token("adm", UserInfo("admin", groups=("system:masters",)))
    authn.add_static_token("plain", "bob")
    assert authn.authenticate("adm", None) == UserInfo(
        "admin", groups=("system:masters", "system:authenticated")
    )
    assert authn.authenticate("plain", None) == UserInfo("bob", groups=("system:authenticated",))
    with pytest.raises(ConfigError):
        authn.add_static_token("has space", "x")


def test_system_authenticated_is_not_duplicated(authn: Authenticator) -> None:
    authn.add_static_token("t", UserInfo("u", groups=("system:authenticated", "g")))
    user = authn.authenticate("t", None)
    assert user is not None and user.groups == ("system:authenticated", "g")


# --- service-account tokens -------------------------------------------------------------------


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return decoded


def test_service_account_token_valid(authn: Authenticator, clock: Clock) -> None:
    token, expires = authn.issue_service_account_token("default", "jonny-op", "sa-uid", 3600)
    assert expires == clock.now + timedelta(seconds=3600)
    claims = _claims(token)
    assert claims["sub"] == "system:serviceaccount:default:jonny-op"
    assert claims["iss"] == authn.issuer
    assert claims["aud"] == list(authn.api_audiences)
    assert claims["kubernetes.io"] == {
        "namespace": "default",
        "serviceaccount": {"name": "jonny-op", "uid": "sa-uid"},
    }
    user = authn.authenticate(token, None)
    assert user is not None
    assert user.username == "system:serviceaccount:default:jonny-op"
    assert user.uid == "sa-uid"
    assert user.groups == SA_GROUPS
    assert user.extra[CREDENTIAL_ID_EXTRA] == (f"JTI={claims['jti']}",)
    # Surrounding whitespace is not part of the token.
    assert authn.authenticate(f" {token} ", None) == user


def test_service_account_token_expired(authn: Authenticator, clock: Clock) -> None:
    token, _ = authn.issue_service_account_token("default", "sa", "u", 600)
    clock.now += timedelta(seconds=599)
    assert authn.authenticate(token, None) is not None
    clock.now += timedelta(seconds=1)
    assert authn.authenticate(token, None) is None


def test_service_account_token_not_yet_valid(authn: Authenticator, clock: Clock) -> None:
    token, _ = authn.issue_service_account_token("default", "sa", "u", 600)
    clock.now -= timedelta(seconds=10)
    assert authn.authenticate(token, None) is None


def test_service_account_token_from_another_key_is_refused(
    ca: CertificateAuthority, authn: Authenticator, clock: Clock
) -> None:
    other = Authenticator(ca, None, clock=clock)
    token, _ = other.issue_service_account_token("default", "sa", "u", 3600)
    assert authn.authenticate(token, None) is None
    assert other.authenticate(token, None) is not None


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_forged_service_account_tokens_are_refused(authn: Authenticator) -> None:
    token, _ = authn.issue_service_account_token("default", "sa", "u", 3600)
    header, payload, sig = token.split(".")
    claims = _claims(token)
    # Claims changed after signing (privilege escalation attempt).
    evil = dict(claims, sub="system:serviceaccount:kube-system:admin")
    assert authn.authenticate(f"{header}.{_b64(evil)}.{sig}", None) is None
    # alg "none" with no signature.
    none_header = _b64({"alg": "none"})
    assert authn.authenticate(f"{none_header}.{payload}.", None) is None
    # HS256 header with the original signature.
    hs_header = _b64({"alg": "HS256"})
    assert authn.authenticate(f"{hs_header}.{payload}.{sig}", None) is None
    # Truncated signature, garbage, wrong number of parts.
    assert authn.authenticate(f"{header}.{payload}.{sig[:-4]}", None) is None
    assert authn.authenticate("a.b.c", None) is None
    assert authn.authenticate(f"{header}.{payload}", None) is None
    assert authn.authenticate("!!!.@@@.###", None) is None


def test_service_account_token_audiences(authn: Authenticator) -> None:
    token, _ = authn.issue_service_account_token("ns", "sa", "u", 3600, audiences=["vault"])
    assert _claims(token)["aud"] == ["vault"]
    # Not for the API server.
    assert authn.authenticate(token, None) is None
    found = authn.authenticate_token(token, ["vault", "other"])
    assert found is not None and found[1] == ["vault"]
    assert authn.authenticate_token(token, ["other"]) is None


def test_static_tokens_only_for_api_audiences(authn: Authenticator) -> None:
    authn.add_static_token("t", "bob")
    assert authn.authenticate_token("t", ["vault"]) is None
    found = authn.authenticate_token("t", [authn.issuer])
    assert found is not None and found[1] == [authn.issuer]


def test_service_account_token_for_deleted_service_account(
    authn: Authenticator,
) -> None:
    accounts: dict[tuple[str, str], dict[str, Any]] = {
        ("default", "jonny-op"): {"metadata": {"name": "jonny-op", "uid": "uid-1"}}
    }
    authn.sa_lookup = lambda ns, name: accounts.get((ns, name))
    token, _ = authn.issue_service_account_token("default", "jonny-op", "uid-1", 3600)
    assert authn.authenticate(token, None) is not None
    del accounts[("default", "jonny-op")]
    assert authn.authenticate(token, None) is None
    # Re-created with the same name: a new uid, so the old token stays invalid.
    accounts[("default", "jonny-op")] = {"metadata": {"name": "jonny-op", "uid": "uid-2"}}
    assert authn.authenticate(token, None) is None


def test_signing_key_persists_tokens(ca: CertificateAuthority, clock: Clock) -> None:
    first = Authenticator(ca, None, clock=clock)
    token, _ = first.issue_service_account_token("default", "sa", "u", 3600)
    second = Authenticator(ca, None, clock=clock, signing_key_pem=first.signing_key_pem)
    assert second.authenticate(token, None) is not None


def test_bad_signing_key(ca: CertificateAuthority) -> None:
    with pytest.raises(ConfigError):
        Authenticator(ca, None, signing_key_pem=b"not a key")


def test_split_service_account_username() -> None:
    assert split_service_account_username("system:serviceaccount:default:jonny-op") == (
        "default",
        "jonny-op",
    )
    assert split_service_account_username("system:serviceaccount:default") is None
    assert split_service_account_username("system:serviceaccount:a:b:c") is None
    assert split_service_account_username("system:serviceaccount:Bad:x") is None
    assert split_service_account_username("alice") is None


# --- client certificates ----------------------------------------------------------------------


def _der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)


def test_client_certificate_signed_by_the_ca(
    ca: CertificateAuthority, authn: Authenticator
) -> None:
    cert, _ = ca.issue_client("carol", ["devs", "ops"])
    user = authn.authenticate(None, _der(cert))
    assert user is not None
    assert user.username == "carol"
    assert user.groups == ("devs", "ops", "system:authenticated")
    assert user.extra[CREDENTIAL_ID_EXTRA][0].startswith("X509SHA256=")


def test_client_certificate_from_another_ca(authn: Authenticator) -> None:
    other = CertificateAuthority.create("sandbox-ca")
    cert, _ = other.issue_client("mallory", ["system:masters"])
    assert authn.authenticate(None, _der(cert)) is None


def test_server_certificate_is_not_a_client_credential(
    ca: CertificateAuthority, authn: Authenticator
) -> None:
    cert, _ = ca.issue_server(["localhost"])
    assert authn.authenticate(None, _der(cert)) is None
    assert authn.authenticate(None, b"garbage") is None


def test_certificate_wins_over_token_and_token_is_the_fallback(
    ca: CertificateAuthority, authn: Authenticator
) -> None:
    authn.add_static_token("t", "bob")
    cert, _ = ca.issue_client("carol", [])
    user = authn.authenticate("t", _der(cert))
    assert user is not None and user.username == "carol"
    bad, _ = CertificateAuthority.create("x").issue_client("mallory", [])
    user = authn.authenticate("t", _der(bad))
    assert user is not None and user.username == "bob"
    assert authn.authenticate("unknown", _der(bad)) is None


# --- impersonation ----------------------------------------------------------------------------


class RecordingAuthorizer:
    """Allows exactly the (resource, subresource, namespace, name) tuples it is given."""

    def __init__(self, *allowed: tuple[str, str, str, str]) -> None:
        self.allowed = set(allowed)
        self.asked: list[Attributes] = []

    def authorize(self, user: UserInfo, attrs: Attributes) -> AuthorizationDecision:
        self.asked.append(attrs)
        assert attrs.verb == "impersonate"
        key = (attrs.resource, attrs.subresource, attrs.namespace, attrs.name)
        return AuthorizationDecision(key in self.allowed, "")


ADMIN = UserInfo("admin", groups=("system:masters", "system:authenticated"))


def headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


async def test_no_impersonation_headers_returns_the_caller() -> None:
    authz = RecordingAuthorizer()
    assert await resolve_impersonation(ADMIN, headers(("Accept", "x")), authz) is ADMIN
    assert authz.asked == []


async def test_impersonate_user_allowed() -> None:
    authz = RecordingAuthorizer(("users", "", "", "alice"))
    user = await resolve_impersonation(ADMIN, headers(("Impersonate-User", "alice")), authz)
    assert user == UserInfo("alice", groups=("system:authenticated",))
    assert authz.asked == [Attributes("impersonate", "", "", "users", name="alice")]


async def test_impersonate_user_denied() -> None:
    authz = RecordingAuthorizer()
    bob = UserInfo("bob", groups=("system:authenticated",))
    with pytest.raises(ForbiddenError) as info:
        await resolve_impersonation(bob, headers(("Impersonate-User", "x")), authz)
    assert info.value.message == (
        'users "x" is forbidden: User "bob" cannot impersonate resource "users" '
        'in API group "" at the cluster scope'
    )
    assert info.value.to_status()["details"] == {"name": "x", "kind": "users"}


async def test_impersonate_groups_allowed_and_denied() -> None:
    h = headers(
        ("Impersonate-User", "alice"), ("Impersonate-Group", "a"), ("impersonate-group", "b")
    )
    authz = RecordingAuthorizer(
        ("users", "", "", "alice"), ("groups", "", "", "a"), ("groups", "", "", "b")
    )
    user = await resolve_impersonation(ADMIN, h, authz)
    assert user.groups == ("a", "b", "system:authenticated")
    partial = RecordingAuthorizer(("users", "", "", "alice"), ("groups", "", "", "a"))
    with pytest.raises(
        ForbiddenError,
        match='groups "b" is forbidden: User "admin" cannot impersonate resource "groups"',
    ):
        await resolve_impersonation(ADMIN, h, partial)


async def test_group_without_user_is_a_bad_request() -> None:
    authz = RecordingAuthorizer(("groups", "", "", "a"))
    with pytest.raises(BadRequestError, match="without impersonating a user") as info:
        await resolve_impersonation(ADMIN, headers(("Impersonate-Group", "a")), authz)
    assert info.value.code == 400
    with pytest.raises(BadRequestError):
        await resolve_impersonation(ADMIN, headers(("Impersonate-Uid", "1")), authz)
    with pytest.raises(BadRequestError):
        await resolve_impersonation(ADMIN, headers(("Impersonate-Extra-Scopes", "1")), authz)


async def test_impersonate_uid() -> None:
    h = headers(("Impersonate-User", "alice"), ("Impersonate-Uid", "1234"))
    authz = RecordingAuthorizer(("users", "", "", "alice"), ("uids", "", "", "1234"))
    user = await resolve_impersonation(ADMIN, h, authz)
    assert user.uid == "1234"
    assert authz.asked[-1] == Attributes(
        "impersonate", "", "authentication.k8s.io", "uids", name="1234"
    )
    with pytest.raises(ForbiddenError) as info:
        await resolve_impersonation(ADMIN, h, RecordingAuthorizer(("users", "", "", "alice")))
    assert info.value.message == (
        'uids.authentication.k8s.io "1234" is forbidden: User "admin" cannot impersonate '
        'resource "uids" in API group "authentication.k8s.io" at the cluster scope'
    )


async def test_impersonate_extra() -> None:
    h = headers(
        ("Impersonate-User", "alice"),
        ("Impersonate-Extra-Scopes", "view"),
        ("Impersonate-Extra-Scopes", "edit"),
        ("Impersonate-Extra-Acme.com%2Fproject", "p1"),
    )
    authz = RecordingAuthorizer(
        ("users", "", "", "alice"),
        ("userextras", "scopes", "", "view"),
        ("userextras", "scopes", "", "edit"),
        ("userextras", "acme.com/project", "", "p1"),
    )
    user = await resolve_impersonation(ADMIN, h, authz)
    assert user.extra == {"scopes": ("view", "edit"), "acme.com/project": ("p1",)}
    denied = RecordingAuthorizer(("users", "", "", "alice"), ("userextras", "scopes", "", "view"))
    with pytest.raises(ForbiddenError) as info:
        await resolve_impersonation(ADMIN, h, denied)
    assert info.value.message == (
        'userextras.authentication.k8s.io "edit" is forbidden: User "admin" cannot impersonate '
        'resource "userextras/scopes" in API group "authentication.k8s.io" at the cluster scope'
    )


async def test_impersonate_service_account() -> None:
    h = headers(("Impersonate-User", "system:serviceaccount:default:jonny-op"))
    authz = RecordingAuthorizer(("serviceaccounts", "", "default", "jonny-op"))
    user = await resolve_impersonation(ADMIN, h, authz)
    assert user == UserInfo("system:serviceaccount:default:jonny-op", groups=SA_GROUPS)
    # Permission to impersonate "users" is not permission to impersonate a service account.
    with pytest.raises(ForbiddenError) as info:
        await resolve_impersonation(
            ADMIN,
            h,
            RecordingAuthorizer(("users", "", "", "system:serviceaccount:default:jonny-op")),
        )
    assert info.value.message == (
        'serviceaccounts "jonny-op" is forbidden: User "admin" cannot impersonate resource '
        '"serviceaccounts" in API group "" in the namespace "default"'
    )


async def test_impersonate_service_account_with_explicit_groups() -> None:
    h = headers(("Impersonate-User", "system:serviceaccount:ns:sa"), ("Impersonate-Group", "g"))
    authz = RecordingAuthorizer(("serviceaccounts", "", "ns", "sa"), ("groups", "", "", "g"))
    user = await resolve_impersonation(ADMIN, h, authz)
    assert user.groups == ("g", "system:authenticated")


async def test_impersonate_anonymous_gets_unauthenticated_group() -> None:
    h = headers(("Impersonate-User", "system:anonymous"))
    user = await resolve_impersonation(
        ADMIN, h, RecordingAuthorizer(("users", "", "", "system:anonymous"))
    )
    assert user.groups == ("system:unauthenticated",)


async def test_plain_mapping_headers_with_lists() -> None:
    h: dict[str, list[str]] = {"impersonate-user": ["alice"], "Impersonate-Group": ["a", "b"]}
    authz = RecordingAuthorizer(
        ("users", "", "", "alice"), ("groups", "", "", "a"), ("groups", "", "", "b")
    )
    user = await resolve_impersonation(ADMIN, h, authz)
    assert user.groups == ("a", "b", "system:authenticated")


async def test_impersonation_with_real_rbac() -> None:
    from klockproxy.sandbox.rbac import Authorizer

    class Store:
        def __init__(self, objs: dict[str, list[dict[str, Any]]]) -> None:
            self.objs = objs

        def list(self, group: str, resource: str, namespace: str | None) -> list[dict[str, Any]]:
            return self.objs.get(resource, [])

    store = Store(
        {
            "clusterroles": [
                {
                    "metadata": {"name": "imp"},
                    "rules": [
                        {"apiGroups": [""], "resources": ["users"], "verbs": ["impersonate"],
                         "resourceNames": ["alice"]},
                    ],
                }
            ],
            "clusterrolebindings": [
                {
                    "metadata": {"name": "imp"},
                    "roleRef": {"kind": "ClusterRole", "name": "imp"},
                    "subjects": [{"kind": "User", "name": "bob"}],
                }
            ],
        }
    )  # fmt: skip
    authz = Authorizer(store)
    bob = UserInfo("bob", groups=("system:authenticated",))
    user = await resolve_impersonation(bob, headers(("Impersonate-User", "alice")), authz)
    assert user.username == "alice"
    with pytest.raises(ForbiddenError):
        await resolve_impersonation(bob, headers(("Impersonate-User", "admin")), authz)
    # The admin (system:masters) may impersonate anyone.
    admin_as = await resolve_impersonation(
        ADMIN, headers(("Impersonate-User", "system:serviceaccount:default:jonny-op")), authz
    )
    assert admin_as.username == "system:serviceaccount:default:jonny-op"


def test_token_from_another_issuer_is_refused(authn: Authenticator, clock: Clock) -> None:
    # Same signing key, different issuer: the claims are genuine but not for this server.
    other = Authenticator(
        CertificateAuthority.create("x"),
        None,
        clock=clock,
        signing_key_pem=authn.signing_key_pem,
        issuer="https://elsewhere.example",
        api_audiences=[authn.issuer],
    )
    token, _ = other.issue_service_account_token("default", "sa", "u", 3600)
    assert other.authenticate(token, None) is not None
    assert authn.authenticate(token, None) is None


def test_custom_api_audiences(ca: CertificateAuthority, clock: Clock) -> None:
    authn = Authenticator(ca, None, clock=clock, api_audiences=["api", "legacy"])
    assert authn.api_audiences == ("api", "legacy")
    token, _ = authn.issue_service_account_token("ns", "sa", "u", 3600)
    assert _claims(token)["aud"] == ["api", "legacy"]
    found = authn.authenticate_token(token)
    assert found is not None and found[1] == ["api", "legacy"]
    only_legacy, _ = authn.issue_service_account_token("ns", "sa", "u", 3600, ["legacy"])
    assert authn.authenticate(only_legacy, None) is not None


def test_client_certificate_as_pem(ca: CertificateAuthority, authn: Authenticator) -> None:
    cert, _ = ca.issue_client("dave", [])
    by_pem = authn.authenticate_certificate(cert)
    by_der = authn.authenticate_certificate(_der(cert))
    assert by_pem is not None and by_pem == by_der
