"""The review and token resources: authentication.k8s.io and authorization.k8s.io.

SelfSubjectReview (``kubectl auth whoami``), TokenReview, SelfSubjectAccessReview
(``kubectl auth can-i``), SubjectAccessReview, LocalSubjectAccessReview,
SelfSubjectRulesReview (``kubectl auth can-i --list``) and TokenRequest (``kubectl create
token``). Each function takes the decoded request body (a dict) and returns the response
object the API server would; invalid bodies raise the sandbox ApiErrors (400/404/422).
Authorizing the ``create`` of the review itself is the server's job, as for any request.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from klockproxy.core.status import StatusCause
from klockproxy.core.types import UserInfo
from klockproxy.sandbox.auth import Authenticator, SupportsAuthorize
from klockproxy.sandbox.errors import BadRequestError, InvalidError, NotFoundError
from klockproxy.sandbox.rbac import Attributes, Authorizer

logger = logging.getLogger(__name__)

AUTHN_API = "authentication.k8s.io/v1"
AUTHZ_API = "authorization.k8s.io/v1"
AUTHN_GROUP = "authentication.k8s.io"
AUTHZ_GROUP = "authorization.k8s.io"

DEFAULT_TOKEN_SECONDS = 3600
MIN_TOKEN_SECONDS = 600
MAX_TOKEN_SECONDS = 1 << 32

_Obj = dict[str, Any]


def _rfc3339(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def user_info_json(user: UserInfo) -> _Obj:
    """authentication.k8s.io/v1 UserInfo (empty fields omitted, as the API server does)."""
    out: _Obj = {"username": user.username}
    if user.uid:
        out["uid"] = user.uid
    if user.groups:
        out["groups"] = list(user.groups)
    if user.extra:
        out["extra"] = {k: list(v) for k, v in user.extra.items()}
    return out


def _value(v: object) -> str:
    # field.Invalid renders the bad value like Go's %v/%q: strings quoted, null for nil.
    if v is None:
        return '"null"'
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _invalid(field: str, value: object, detail: str) -> StatusCause:
    return {
        "reason": "FieldValueInvalid",
        "message": f"Invalid value: {_value(value)}: {detail}",
        "field": field,
    }


def _body(body: object, kind: str) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise BadRequestError(f"the body of a {kind} must be a JSON object")
    got = body.get("kind")
    if got not in (None, "", kind):
        raise BadRequestError(f"expected a {kind}, got kind {got!r}")
    return body


def _spec(body: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    spec = body.get("spec")
    if spec is None:
        return {}
    if not isinstance(spec, Mapping):
        raise BadRequestError(f"{kind}.spec must be an object")
    return spec


def _str_field(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadRequestError(f"{where}.{key} must be a string")
    return value


def _str_list(obj: Mapping[str, Any], key: str, where: str) -> list[str]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadRequestError(f"{where}.{key} must be a list of strings")
    return list(value)


def _echo(body: Mapping[str, Any], kind: str, api_version: str) -> _Obj:
    """The created object: the request's metadata and spec, with status to fill."""
    meta = body.get("metadata")
    out: _Obj = {
        "kind": kind,
        "apiVersion": api_version,
        "metadata": dict(meta) if isinstance(meta, Mapping) else {},
        "spec": json.loads(json.dumps(body.get("spec") or {})),
    }
    out["metadata"].setdefault("creationTimestamp", None)
    return out


# ---- authentication.k8s.io ---------------------------------------------------------------------


def create_self_subject_review(user: UserInfo) -> _Obj:
    """The SelfSubjectReview ``kubectl auth whoami`` asks for: who the caller is."""
    return {
        "kind": "SelfSubjectReview",
        "apiVersion": AUTHN_API,
        "metadata": {"creationTimestamp": None},
        "status": {"userInfo": user_info_json(user)},
    }


def create_token_review(body: object, authenticator: Authenticator) -> _Obj:
    """TokenReview: is ``spec.token`` valid (for ``spec.audiences``, default the API
    server's), and whose is it. Never logs the token."""
    review = _body(body, "TokenReview")
    spec = _spec(review, "TokenReview")
    token = _str_field(spec, "token", "spec")
    audiences = _str_list(spec, "audiences", "spec")
    if not token:
        raise BadRequestError("token is required for TokenReview in authentication")
    out = _echo(review, "TokenReview", AUTHN_API)
    found = authenticator.authenticate_token(token, audiences or None)
    if found is None:
        out["status"] = {"user": {}}
        return out
    user, matched = found
    out["status"] = {"authenticated": True, "user": user_info_json(user), "audiences": matched}
    return out


def create_token_request(
    namespace: str,
    sa_name: str,
    sa_object: Mapping[str, Any] | None,
    body: object,
    authenticator: Authenticator,
) -> _Obj:
    """TokenRequest (``POST .../serviceaccounts/NAME/token``): a signed token for the
    ServiceAccount ``sa_object``; ``spec.expirationSeconds`` defaults to 3600, minimum 600.
    Bound tokens (``spec.boundObjectRef``) are refused: the sandbox does not bind tokens."""
    if sa_object is None:
        raise NotFoundError(
            f'serviceaccounts "{sa_name}" not found',
            details={"name": sa_name, "kind": "serviceaccounts"},
        )
    request = _body(body, "TokenRequest")
    spec = _spec(request, "TokenRequest")
    audiences = _str_list(spec, "audiences", "spec")
    seconds = spec.get("expirationSeconds")
    if seconds is None:
        seconds = DEFAULT_TOKEN_SECONDS
    if isinstance(seconds, bool) or not isinstance(seconds, int):
        raise BadRequestError("spec.expirationSeconds must be an integer")
    causes: list[StatusCause] = []
    if seconds < MIN_TOKEN_SECONDS:
        causes.append(
            _invalid(
                "spec.expirationSeconds", seconds, "may not specify a duration less than 10 minutes"
            )
        )
    if seconds > MAX_TOKEN_SECONDS:
        causes.append(
            _invalid(
                "spec.expirationSeconds",
                seconds,
                "may not specify a duration larger than 2^32 seconds",
            )
        )
    if spec.get("boundObjectRef") is not None:
        causes.append(
            {
                "reason": "FieldValueNotSupported",
                "message": "Unsupported value: the sandbox does not issue bound tokens",
                "field": "spec.boundObjectRef",
            }
        )
    if causes:
        raise InvalidError("TokenRequest", sa_name, causes, group=AUTHN_GROUP)
    meta = sa_object.get("metadata")
    uid = meta.get("uid") if isinstance(meta, Mapping) else None
    token, expires = authenticator.issue_service_account_token(
        namespace, sa_name, uid if isinstance(uid, str) else "", seconds, audiences or None
    )
    logger.info("issued a %ds token for service account %s/%s", seconds, namespace, sa_name)
    return {
        "kind": "TokenRequest",
        "apiVersion": AUTHN_API,
        "metadata": {
            "name": sa_name,
            "namespace": namespace,
            "creationTimestamp": _rfc3339(authenticator.now()),
        },
        "spec": {
            "audiences": audiences or list(authenticator.api_audiences),
            "expirationSeconds": seconds,
            "boundObjectRef": None,
        },
        "status": {"token": token, "expirationTimestamp": _rfc3339(expires)},
    }


# ---- authorization.k8s.io ----------------------------------------------------------------------


def _attributes(spec: Mapping[str, Any], kind: str) -> tuple[Attributes, list[StatusCause]]:
    """Authorization Attributes from resourceAttributes / nonResourceAttributes, and the
    validation causes (exactly one of the two must be given)."""
    res, non = spec.get("resourceAttributes"), spec.get("nonResourceAttributes")
    causes: list[StatusCause] = []
    if res is not None and non is not None:
        causes.append(
            _invalid(
                "spec.nonResourceAttributes",
                "",
                "cannot be specified in combination with resourceAttributes",
            )
        )
    if res is None and non is None:
        causes.append(
            _invalid(
                "spec.resourceAttributes",
                None,
                "exactly one of nonResourceAttributes or resourceAttributes must be specified",
            )
        )
    if causes:
        return Attributes(verb=""), causes
    if res is not None:
        if not isinstance(res, Mapping):
            raise BadRequestError(f"{kind}.spec.resourceAttributes must be an object")
        where = "spec.resourceAttributes"
        return (
            Attributes(
                verb=_str_field(res, "verb", where),
                namespace=_str_field(res, "namespace", where),
                api_group=_str_field(res, "group", where),
                resource=_str_field(res, "resource", where),
                subresource=_str_field(res, "subresource", where),
                name=_str_field(res, "name", where),
                is_resource_request=True,
            ),
            [],
        )
    if not isinstance(non, Mapping):
        raise BadRequestError(f"{kind}.spec.nonResourceAttributes must be an object")
    where = "spec.nonResourceAttributes"
    return (
        Attributes(
            verb=_str_field(non, "verb", where),
            path=_str_field(non, "path", where),
            is_resource_request=False,
        ),
        [],
    )


def _access_status(authorizer: SupportsAuthorize, user: UserInfo, attrs: Attributes) -> _Obj:
    decision = authorizer.authorize(user, attrs)
    # RBAC never denies explicitly, so `denied` (omitempty) stays absent, as from RBAC.
    status: _Obj = {"allowed": decision.allowed}
    if decision.reason:
        status["reason"] = decision.reason
    return status


def create_self_subject_access_review(
    body: object, user: UserInfo, authorizer: SupportsAuthorize
) -> _Obj:
    """SelfSubjectAccessReview (``kubectl auth can-i``): may the caller do this?"""
    kind = "SelfSubjectAccessReview"
    review = _body(body, kind)
    attrs, causes = _attributes(_spec(review, kind), kind)
    if causes:
        raise InvalidError(kind, "", causes, group=AUTHZ_GROUP)
    out = _echo(review, kind, AUTHZ_API)
    out["status"] = _access_status(authorizer, user, attrs)
    return out


def _subject(spec: Mapping[str, Any]) -> tuple[UserInfo, list[StatusCause]]:
    username = _str_field(spec, "user", "spec")
    groups = _str_list(spec, "groups", "spec")
    uid = _str_field(spec, "uid", "spec")
    extra_raw = spec.get("extra") or {}
    if not isinstance(extra_raw, Mapping):
        raise BadRequestError("spec.extra must be a map of string lists")
    extra = {}
    for k, v in extra_raw.items():
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise BadRequestError("spec.extra must be a map of string lists")
        extra[str(k)] = tuple(v)
    causes: list[StatusCause] = []
    if not username and not groups:
        causes.append(_invalid("spec.user", "", "at least one of user or group must be specified"))
    # The subject is judged with exactly the groups given (no system:authenticated added).
    return UserInfo(username, uid=uid, groups=tuple(groups), extra=extra), causes


def create_subject_access_review(body: object, authorizer: SupportsAuthorize) -> _Obj:
    """SubjectAccessReview: may ``spec.user``/``spec.groups`` do this?"""
    kind = "SubjectAccessReview"
    review = _body(body, kind)
    spec = _spec(review, kind)
    subject, causes = _subject(spec)
    attrs, more = _attributes(spec, kind)
    causes += more
    if causes:
        raise InvalidError(kind, "", causes, group=AUTHZ_GROUP)
    out = _echo(review, kind, AUTHZ_API)
    out["status"] = _access_status(authorizer, subject, attrs)
    return out


def create_local_subject_access_review(
    body: object, namespace: str, authorizer: SupportsAuthorize
) -> _Obj:
    """LocalSubjectAccessReview: a SubjectAccessReview confined to ``namespace``."""
    kind = "LocalSubjectAccessReview"
    review = _body(body, kind)
    spec = _spec(review, kind)
    subject, causes = _subject(spec)
    if spec.get("nonResourceAttributes") is not None:
        causes.append(
            _invalid("spec.nonResourceAttributes", "", "disallowed on this kind of request")
        )
        attrs = Attributes(verb="")
    else:
        attrs, more = _attributes(spec, kind)
        causes += more
    if causes:
        raise InvalidError(kind, "", causes, group=AUTHZ_GROUP)
    if attrs.namespace != namespace:
        raise BadRequestError(
            f"spec.resourceAttributes.namespace must match namespace: {namespace}"
        )
    out = _echo(review, kind, AUTHZ_API)
    out["metadata"]["namespace"] = namespace
    out["status"] = _access_status(authorizer, subject, attrs)
    return out


def create_self_subject_rules_review(body: object, user: UserInfo, authorizer: Authorizer) -> _Obj:
    """SelfSubjectRulesReview (``kubectl auth can-i --list``): the caller's rules in
    ``spec.namespace``."""
    kind = "SelfSubjectRulesReview"
    review = _body(body, kind)
    namespace = _str_field(_spec(review, kind), "namespace", "spec")
    rules, incomplete = authorizer.rules_for(user, namespace)
    resource_rules = []
    non_resource_rules = []
    for rule in rules:
        as_json = rule.to_json()
        if rule.non_resource_urls:
            non_resource_rules.append(
                {"verbs": as_json["verbs"], "nonResourceURLs": as_json["nonResourceURLs"]}
            )
        else:
            resource_rules.append(as_json)
    out = _echo(review, kind, AUTHZ_API)
    out["status"] = {
        "resourceRules": resource_rules,
        "nonResourceRules": non_resource_rules,
        "incomplete": incomplete,
    }
    if incomplete:
        out["status"]["evaluationError"] = "a binding refers to a role that does not exist"
    return out
