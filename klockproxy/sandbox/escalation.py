"""RBAC privilege-escalation prevention, as the API server applies it to RBAC writes.

* Creating or updating a Role/ClusterRole needs every permission it grants, or the
  ``escalate`` verb on it.
* Creating or updating a RoleBinding/ClusterRoleBinding needs every permission of the role
  it references, or the ``bind`` verb on that role.

"Every permission" is checked by asking the authorizer about each (verb, group, resource,
name) of each rule; a ``*`` in a rule is asked literally, so only a caller who holds the same
wildcard covers it (what the API server's ``ConfirmNoEscalation`` amounts to).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any, Protocol

from klockproxy.core.types import UserInfo
from klockproxy.sandbox.errors import ForbiddenError
from klockproxy.sandbox.rbac import MASTERS_GROUP, RBAC_GROUP, Attributes, AuthorizationDecision

logger = logging.getLogger(__name__)

Obj = dict[str, Any]


class _Authorizer(Protocol):
    def authorize(self, user: UserInfo, attrs: Attributes) -> AuthorizationDecision: ...


class _Store(Protocol):
    def get(self, group: str, resource: str, namespace: str | None, name: str) -> Obj | None: ...


def _strings(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _questions(rule: Obj, namespace: str) -> Iterator[Attributes]:
    verbs = _strings(rule.get("verbs"))
    urls = _strings(rule.get("nonResourceURLs"))
    for url in urls:
        for verb in verbs:
            yield Attributes(verb, path=url, is_resource_request=False)
    if urls and not rule.get("resources"):
        return
    names = _strings(rule.get("resourceNames")) or [""]
    for group in _strings(rule.get("apiGroups")):
        for resource in _strings(rule.get("resources")):
            base, _, sub = resource.partition("/")
            for verb in verbs:
                for name in names:
                    yield Attributes(verb, namespace, group, base, sub, name)


def _not_held(authorizer: _Authorizer, user: UserInfo, rules: Any, namespace: str) -> list[Obj]:
    missing: list[Obj] = []
    for rule in rules if isinstance(rules, list) else []:
        if not isinstance(rule, dict):
            continue
        if any(not authorizer.authorize(user, q).allowed for q in _questions(rule, namespace)):
            missing.append(rule)
    return missing


def _forbidden(kind_resource: str, name: str, user: UserInfo, missing: list[Obj]) -> ForbiddenError:
    groups = json.dumps(list(user.groups))
    listed = "\n".join(json.dumps(r, sort_keys=True) for r in missing)
    return ForbiddenError(
        f'{kind_resource}.{RBAC_GROUP} "{name}" is forbidden: user "{user.username}" '
        f"(groups={groups}) is attempting to grant RBAC permissions not currently held:\n"
        f"{listed}",
        details={"name": name, "group": RBAC_GROUP, "kind": kind_resource},
    )


def check_write(
    authorizer: _Authorizer, store: _Store, user: UserInfo, resource: str, obj: Obj
) -> None:
    """Raise ForbiddenError when writing ``obj`` (an RBAC object) would escalate privileges."""
    if MASTERS_GROUP in user.groups:
        return
    meta = obj.get("metadata") or {}
    name = str(meta.get("name", ""))
    namespace = str(meta.get("namespace", "") or "")
    if resource in ("roles", "clusterroles"):
        escalate = Attributes("escalate", namespace, RBAC_GROUP, resource, "", name)
        if authorizer.authorize(user, escalate).allowed:
            return
        missing = _not_held(authorizer, user, obj.get("rules"), namespace)
        if missing:
            logger.info("refused an escalating %s write by %s", resource, user.username)
            raise _forbidden(resource, name, user, missing)
        return
    if resource not in ("rolebindings", "clusterrolebindings"):
        return
    ref = obj.get("roleRef") or {}
    role_kind = ref.get("kind") if isinstance(ref, dict) else None
    role_name = str(ref.get("name", "")) if isinstance(ref, dict) else ""
    role_resource = "clusterroles" if role_kind == "ClusterRole" else "roles"
    role_ns = "" if role_kind == "ClusterRole" else namespace
    bind = Attributes("bind", namespace, RBAC_GROUP, role_resource, "", role_name)
    if authorizer.authorize(user, bind).allowed:
        return
    role = store.get(RBAC_GROUP, role_resource, role_ns, role_name)
    rules = (role or {}).get("rules") or []
    missing = _not_held(authorizer, user, rules, namespace)
    if role is None or missing:
        logger.info("refused an escalating %s write by %s", resource, user.username)
        raise _forbidden(resource, name, user, missing or [{"roleRef": ref}])
