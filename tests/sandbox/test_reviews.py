"""The review and token resources: responses shaped like the API server's, bad bodies refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from klockproxy.cluster.certs import CertificateAuthority
from klockproxy.core.types import UserInfo
from klockproxy.sandbox.auth import Authenticator
from klockproxy.sandbox.errors import BadRequestError, InvalidError, NotFoundError
from klockproxy.sandbox.rbac import Authorizer
from klockproxy.sandbox.reviews import (
    create_local_subject_access_review,
    create_self_subject_access_review,
    create_self_subject_review,
    create_self_subject_rules_review,
    create_subject_access_review,
    create_token_request,
    create_token_review,
)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
RBAC = "rbac.authorization.k8s.io"
SA = {"metadata": {"name": "jonny-op", "namespace": "default", "uid": "sa-uid-1"}}


class Store:
    def __init__(self) -> None:
        self.objs: dict[str, list[dict[str, Any]]] = {}

    def list(self, group: str, resource: str, namespace: str | None) -> list[dict[str, Any]]:
        return [
            o
            for o in self.objs.get(resource, [])
            if namespace is None or o["metadata"].get("namespace", "") == namespace
        ]


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("ca")


@pytest.fixture
def authn(ca: CertificateAuthority) -> Authenticator:
    return Authenticator(ca, None, clock=lambda: NOW)


@pytest.fixture
def store() -> Store:
    s = Store()
    s.objs["roles"] = [
        {
            "metadata": {"name": "app-op", "namespace": "default"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "get"]}],
        }
    ]
    s.objs["rolebindings"] = [
        {
            "metadata": {"name": "jonny-app", "namespace": "default"},
            "roleRef": {"apiGroup": RBAC, "kind": "Role", "name": "app-op"},
            "subjects": [{"kind": "ServiceAccount", "name": "jonny-op"}],
        }
    ]
    return s


@pytest.fixture
def authz(store: Store) -> Authorizer:
    return Authorizer(store)


JONNY = UserInfo(
    "system:serviceaccount:default:jonny-op",
    uid="sa-uid-1",
    groups=("system:serviceaccounts", "system:serviceaccounts:default", "system:authenticated"),
)
ADMIN = UserInfo("admin", groups=("system:masters", "system:authenticated"))


# --- SelfSubjectReview ----------------------------------------------------------------------


def test_self_subject_review() -> None:
    user = UserInfo("alice", uid="u1", groups=("devs", "system:authenticated"), extra={"k": ("v",)})
    assert create_self_subject_review(user) == {
        "kind": "SelfSubjectReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": None},
        "status": {
            "userInfo": {
                "username": "alice",
                "uid": "u1",
                "groups": ["devs", "system:authenticated"],
                "extra": {"k": ["v"]},
            }
        },
    }


def test_self_subject_review_omits_empty_fields() -> None:
    review = create_self_subject_review(UserInfo("bob"))
    assert review["status"]["userInfo"] == {"username": "bob"}


# --- TokenRequest ---------------------------------------------------------------------------


def test_token_request_default_expiration_and_usable_token(authn: Authenticator) -> None:
    out = create_token_request("default", "jonny-op", SA, {"kind": "TokenRequest"}, authn)
    assert out["kind"] == "TokenRequest"
    assert out["apiVersion"] == "authentication.k8s.io/v1"
    assert out["metadata"] == {
        "name": "jonny-op",
        "namespace": "default",
        "creationTimestamp": "2026-01-01T12:00:00Z",
    }
    assert out["spec"]["expirationSeconds"] == 3600
    assert out["spec"]["audiences"] == list(authn.api_audiences)
    assert out["status"]["expirationTimestamp"] == "2026-01-01T13:00:00Z"
    user = authn.authenticate(out["status"]["token"], None)
    assert user is not None
    assert user.username == "system:serviceaccount:default:jonny-op"
    assert user.uid == "sa-uid-1"


def test_token_request_honours_expiration_and_audiences(authn: Authenticator) -> None:
    body = {"spec": {"expirationSeconds": 600, "audiences": ["vault"]}}
    out = create_token_request("default", "jonny-op", SA, body, authn)
    expected = NOW + timedelta(seconds=600)
    assert out["status"]["expirationTimestamp"] == expected.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert out["spec"]["audiences"] == ["vault"]
    # A token for another audience does not authenticate against the API server.
    assert authn.authenticate(out["status"]["token"], None) is None


@pytest.mark.parametrize(
    ("seconds", "message"),
    [
        (599, "spec.expirationSeconds: Invalid value: 599: may not specify a duration less than"),
        (1 << 33, "may not specify a duration larger than 2^32 seconds"),
    ],
)  # fmt: skip
def test_token_request_invalid_expiration(authn: Authenticator, seconds: int, message: str) -> None:
    with pytest.raises(InvalidError) as info:
        create_token_request(
            "default", "jonny-op", SA, {"spec": {"expirationSeconds": seconds}}, authn
        )
    assert info.value.code == 422
    assert info.value.message.startswith('TokenRequest.authentication.k8s.io "jonny-op" is invalid')
    assert message in info.value.message
    causes = info.value.to_status()["details"]["causes"]
    assert causes[0]["field"] == "spec.expirationSeconds"


def test_token_request_bad_bodies(authn: Authenticator) -> None:
    with pytest.raises(BadRequestError):
        create_token_request("default", "jonny-op", SA, [], authn)
    with pytest.raises(BadRequestError):
        create_token_request("default", "jonny-op", SA, {"spec": "x"}, authn)
    with pytest.raises(BadRequestError):
        create_token_request(
            "default", "jonny-op", SA, {"spec": {"expirationSeconds": "1h"}}, authn
        )
    with pytest.raises(BadRequestError):
        create_token_request("default", "jonny-op", SA, {"spec": {"audiences": "x"}}, authn)
    with pytest.raises(BadRequestError):
        create_token_request("default", "jonny-op", SA, {"kind": "Pod"}, authn)


def test_token_request_bound_tokens_are_refused(authn: Authenticator) -> None:
    body = {"spec": {"boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "p"}}}
    with pytest.raises(InvalidError, match=r"spec\.boundObjectRef"):
        create_token_request("default", "jonny-op", SA, body, authn)


def test_token_request_for_missing_service_account(authn: Authenticator) -> None:
    with pytest.raises(NotFoundError, match='serviceaccounts "nope" not found'):
        create_token_request("default", "nope", None, {}, authn)


# --- TokenReview ----------------------------------------------------------------------------


def test_token_review_authenticated(authn: Authenticator) -> None:
    token, _ = authn.issue_service_account_token("default", "jonny-op", "sa-uid-1", 3600)
    out = create_token_review({"kind": "TokenReview", "spec": {"token": token}}, authn)
    assert out["kind"] == "TokenReview"
    assert out["apiVersion"] == "authentication.k8s.io/v1"
    status = out["status"]
    assert status["authenticated"] is True
    assert status["user"]["username"] == "system:serviceaccount:default:jonny-op"
    assert status["user"]["uid"] == "sa-uid-1"
    assert "system:serviceaccounts:default" in status["user"]["groups"]
    assert status["audiences"] == list(authn.api_audiences)


def test_token_review_unknown_token(authn: Authenticator) -> None:
    out = create_token_review({"spec": {"token": "nope"}}, authn)
    assert out["status"] == {"user": {}}


def test_token_review_static_token_and_audiences(authn: Authenticator) -> None:
    authn.add_static_token("static", UserInfo("bob", groups=("devs",)))
    out = create_token_review({"spec": {"token": "static"}}, authn)
    assert out["status"]["user"] == {"username": "bob", "groups": ["devs", "system:authenticated"]}
    other = create_token_review({"spec": {"token": "static", "audiences": ["vault"]}}, authn)
    assert other["status"] == {"user": {}}


def test_token_review_requires_a_token(authn: Authenticator) -> None:
    with pytest.raises(BadRequestError, match="token is required"):
        create_token_review({"spec": {}}, authn)
    with pytest.raises(BadRequestError):
        create_token_review({"spec": {"token": 5}}, authn)
    with pytest.raises(BadRequestError):
        create_token_review("x", authn)


# --- SelfSubjectAccessReview ----------------------------------------------------------------


def ssar(**res: str) -> dict[str, Any]:
    return {
        "kind": "SelfSubjectAccessReview",
        "apiVersion": "authorization.k8s.io/v1",
        "metadata": {"creationTimestamp": None},
        "spec": {"resourceAttributes": res},
    }


def test_self_subject_access_review_seed_scenario(authz: Authorizer) -> None:
    out = create_self_subject_access_review(
        ssar(namespace="default", verb="list", resource="pods"), JONNY, authz
    )
    assert out["kind"] == "SelfSubjectAccessReview"
    assert out["spec"]["resourceAttributes"]["verb"] == "list"
    assert out["status"] == {
        "allowed": True,
        "reason": 'RBAC: allowed by RoleBinding "jonny-app/default" of Role "app-op" '
        'to ServiceAccount "jonny-op/default"',
    }
    denied = create_self_subject_access_review(
        ssar(namespace="default", verb="delete", resource="pods"), JONNY, authz
    )
    assert denied["status"] == {"allowed": False}
    other_ns = create_self_subject_access_review(
        ssar(namespace="kube-system", verb="list", resource="pods"), JONNY, authz
    )
    assert other_ns["status"]["allowed"] is False


def test_self_subject_access_review_subresource_and_group(authz: Authorizer) -> None:
    log = ssar(namespace="default", verb="get", resource="pods", subresource="log")
    assert create_self_subject_access_review(log, JONNY, authz)["status"]["allowed"] is False
    dep = ssar(namespace="default", verb="list", resource="deployments", group="apps")
    assert create_self_subject_access_review(dep, JONNY, authz)["status"]["allowed"] is False
    assert create_self_subject_access_review(dep, ADMIN, authz)["status"]["allowed"] is True


def test_self_subject_access_review_non_resource(authz: Authorizer) -> None:
    body = {"spec": {"nonResourceAttributes": {"path": "/apis", "verb": "get"}}}
    assert create_self_subject_access_review(body, JONNY, authz)["status"]["allowed"] is True
    body = {"spec": {"nonResourceAttributes": {"path": "/metrics", "verb": "get"}}}
    assert create_self_subject_access_review(body, JONNY, authz)["status"]["allowed"] is False


def test_self_subject_access_review_needs_exactly_one_kind_of_attributes(
    authz: Authorizer,
) -> None:
    with pytest.raises(InvalidError) as info:
        create_self_subject_access_review({"spec": {}}, JONNY, authz)
    assert info.value.message == (
        'SelfSubjectAccessReview.authorization.k8s.io "" is invalid: spec.resourceAttributes: '
        'Invalid value: "null": exactly one of nonResourceAttributes or resourceAttributes '
        "must be specified"
    )
    both: dict[str, Any] = {"spec": {"resourceAttributes": {}, "nonResourceAttributes": {}}}
    with pytest.raises(InvalidError, match="cannot be specified in combination"):
        create_self_subject_access_review(both, JONNY, authz)
    with pytest.raises(BadRequestError):
        create_self_subject_access_review({"spec": {"resourceAttributes": []}}, JONNY, authz)
    with pytest.raises(BadRequestError):
        create_self_subject_access_review(
            {"spec": {"resourceAttributes": {"verb": 1}}}, JONNY, authz
        )


# --- SubjectAccessReview / LocalSubjectAccessReview ------------------------------------------


def test_subject_access_review(authz: Authorizer) -> None:
    body: dict[str, Any] = {
        "kind": "SubjectAccessReview",
        "spec": {
            "user": "system:serviceaccount:default:jonny-op",
            "resourceAttributes": {"namespace": "default", "verb": "get", "resource": "pods"},
        },
    }
    assert create_subject_access_review(body, authz)["status"]["allowed"] is True
    body["spec"]["resourceAttributes"]["verb"] = "delete"
    assert create_subject_access_review(body, authz)["status"] == {"allowed": False}


def test_subject_access_review_groups_are_taken_as_given(authz: Authorizer) -> None:
    # Discovery is granted to system:authenticated; a SAR without that group is denied.
    nr = {"nonResourceAttributes": {"path": "/api", "verb": "get"}}
    alone = {"spec": {"user": "alice", **nr}}
    assert create_subject_access_review(alone, authz)["status"]["allowed"] is False
    member = {"spec": {"user": "alice", "groups": ["system:authenticated"], **nr}}
    assert create_subject_access_review(member, authz)["status"]["allowed"] is True
    masters = {"spec": {"groups": ["system:masters"], **nr}}
    assert create_subject_access_review(masters, authz)["status"]["allowed"] is True


def test_subject_access_review_needs_a_subject(authz: Authorizer) -> None:
    body = {"spec": {"resourceAttributes": {"verb": "get", "resource": "pods"}}}
    with pytest.raises(InvalidError, match="at least one of user or group must be specified"):
        create_subject_access_review(body, authz)
    with pytest.raises(BadRequestError):
        create_subject_access_review({"spec": {"user": "a", "extra": {"k": "v"}}}, authz)


def test_local_subject_access_review(authz: Authorizer) -> None:
    spec = {
        "user": "system:serviceaccount:default:jonny-op",
        "resourceAttributes": {"namespace": "default", "verb": "list", "resource": "pods"},
    }
    out = create_local_subject_access_review({"spec": spec}, "default", authz)
    assert out["metadata"]["namespace"] == "default"
    assert out["status"]["allowed"] is True
    with pytest.raises(BadRequestError, match="must match namespace: other"):
        create_local_subject_access_review({"spec": spec}, "other", authz)
    non = {"spec": {"user": "a", "nonResourceAttributes": {"path": "/", "verb": "get"}}}
    with pytest.raises(InvalidError, match="disallowed on this kind of request"):
        create_local_subject_access_review(non, "default", authz)


# --- SelfSubjectRulesReview -----------------------------------------------------------------


def test_self_subject_rules_review(authz: Authorizer, store: Store) -> None:
    out = create_self_subject_rules_review({"spec": {"namespace": "default"}}, JONNY, authz)
    status = out["status"]
    assert {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]} in status[
        "resourceRules"
    ]
    assert any("/api" in r["nonResourceURLs"] for r in status["nonResourceRules"])
    assert status["incomplete"] is False
    elsewhere = create_self_subject_rules_review({"spec": {"namespace": "x"}}, JONNY, authz)
    assert all("pods" not in r.get("resources", []) for r in elsewhere["status"]["resourceRules"])
    store.objs["rolebindings"][0]["roleRef"]["name"] = "gone"
    broken = create_self_subject_rules_review({"spec": {"namespace": "default"}}, JONNY, authz)
    assert broken["status"]["incomplete"] is True
    assert broken["status"]["evaluationError"]


# --- protobuf bodies (kubectl auth can-i sends them) ---------------------------------------


def test_protobuf_self_subject_access_review_round_trip(authz: Authorizer) -> None:
    from klockproxy.core.protobuf import decode_k8s_protobuf, encode_k8s_protobuf

    body = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "metadata": {"creationTimestamp": None},
        "spec": {
            "resourceAttributes": {"namespace": "default", "verb": "list", "resource": "pods"}
        },
        "status": {},
    }
    decoded = decode_k8s_protobuf(encode_k8s_protobuf(body), strict=True)
    assert decoded == body
    out = create_self_subject_access_review(decoded, JONNY, authz)
    assert out["status"]["allowed"] is True


def test_protobuf_review_kinds_decode_strictly() -> None:
    from klockproxy.core.protobuf import decode_k8s_protobuf, encode_k8s_protobuf

    for body in [
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "metadata": {"creationTimestamp": None},
            "spec": {
                "nonResourceAttributes": {"path": "/api", "verb": "get"},
                "user": "u",
                "groups": ["g"],
                "extra": {"k": ["v"]},
                "uid": "1",
            },
            "status": {"allowed": True, "reason": "r"},
        },
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectRulesReview",
            "metadata": {"creationTimestamp": None},
            "spec": {"namespace": "default"},
            "status": {
                "resourceRules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}],
                "nonResourceRules": [{"verbs": ["get"], "nonResourceURLs": ["/api"]}],
                "incomplete": True,
            },
        },
        {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "metadata": {"creationTimestamp": None},
            "spec": {"token": "t", "audiences": ["a"]},
            "status": {"authenticated": True, "user": {"username": "u"}, "audiences": ["a"]},
        },
    ]:
        assert decode_k8s_protobuf(encode_k8s_protobuf(body), strict=True) == body
