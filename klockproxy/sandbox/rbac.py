"""RBAC for the sandbox, evaluated the way the API server's RBAC authorizer does.

* ClusterRoleBindings grant their ClusterRole everywhere; RoleBindings grant their Role (in the
  binding's namespace) or ClusterRole, scoped to the binding's namespace.
* Subjects: ``User`` (user name), ``Group`` (any of the user's groups), ``ServiceAccount``
  (user name ``system:serviceaccount:NS:NAME``; NS defaults to the binding's namespace).
* Rules: ``verbs`` (``*``), ``apiGroups`` (``*``), ``resources`` (``pods``, ``pods/log``, ``*``,
  ``*/scale``), ``resourceNames`` (empty = any) and ``nonResourceURLs`` (exact, ``*``, or a
  ``prefix*``).
* ClusterRoles with an ``aggregationRule`` get the rules of the ClusterRoles their label
  selectors match (what the aggregation controller writes into them), recursively.
* The group ``system:masters`` may do anything (the API server's privileged-group authorizer).
* Built-in defaults, as a fresh cluster has them (:func:`bootstrap_policy`): ClusterRoles
  ``cluster-admin``, ``admin``, ``edit``, ``view``, ``system:discovery``, ``system:basic-user``,
  ``system:public-info-viewer`` and their bindings. A built-in object applies whenever the store
  has no object of the same kind and name (the real API server re-creates them at start).

Performance: the store's RBAC objects are compiled into an index by subject. Nothing is
listed while the store's ``resource_version`` (bumped on every write) stays the same; after
a write the index is rebuilt only when the (namespace, name, resourceVersion) of some RBAC
object changed. Objects without a resourceVersion disable the cache.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from klockproxy.core.status import StatusDetails
from klockproxy.core.types import UserInfo
from klockproxy.sandbox.errors import ForbiddenError

logger = logging.getLogger(__name__)

RBAC_GROUP = "rbac.authorization.k8s.io"
MASTERS_GROUP = "system:masters"
AUTHENTICATED_GROUP = "system:authenticated"
UNAUTHENTICATED_GROUP = "system:unauthenticated"
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"

_Obj = dict[str, Any]
_Objs = list[dict[str, Any]]


class RbacStore(Protocol):
    """What the authorizer needs from the sandbox store (plain JSON dicts)."""

    def list(self, group: str, resource: str, namespace: str | None) -> _Objs:
        """All objects of ``group``/``resource`` in ``namespace`` (None: every namespace)."""
        ...


@dataclass(frozen=True, slots=True)
class Attributes:
    """One authorization question, as the API server's ``authorizer.Attributes``."""

    verb: str
    namespace: str = ""
    api_group: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""
    path: str = ""
    is_resource_request: bool = True


@dataclass(frozen=True, slots=True)
class AuthorizationDecision:
    """The answer: ``reason`` names the granting binding, or the RBAC errors on a denial."""

    allowed: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class PolicyRule:
    """One compiled RBAC rule (sets for fast membership tests)."""

    verbs: frozenset[str]
    api_groups: frozenset[str] = frozenset()
    resources: frozenset[str] = frozenset()
    resource_names: frozenset[str] = frozenset()
    non_resource_urls: tuple[str, ...] = ()

    def allows(self, attrs: Attributes) -> bool:
        """Whether this rule grants ``attrs`` (RBAC's ``RuleAllows``)."""
        if not ("*" in self.verbs or attrs.verb in self.verbs):
            return False
        if not attrs.is_resource_request:
            return _non_resource_url_matches(self.non_resource_urls, attrs.path)
        if not ("*" in self.api_groups or attrs.api_group in self.api_groups):
            return False
        if not _resource_matches(self.resources, attrs.resource, attrs.subresource):
            return False
        return not self.resource_names or attrs.name in self.resource_names

    def to_json(self) -> _Obj:
        """The rule as a PolicyRule JSON object (sorted lists, empty fields omitted)."""
        out: _Obj = {}
        if self.api_groups:
            out["apiGroups"] = sorted(self.api_groups)
        if self.resources:
            out["resources"] = sorted(self.resources)
        if self.resource_names:
            out["resourceNames"] = sorted(self.resource_names)
        if self.non_resource_urls:
            out["nonResourceURLs"] = list(self.non_resource_urls)
        out["verbs"] = sorted(self.verbs)
        return out


def _resource_matches(rule_resources: frozenset[str], resource: str, subresource: str) -> bool:
    if "*" in rule_resources:
        return True
    if not subresource:
        return resource in rule_resources
    return f"{resource}/{subresource}" in rule_resources or f"*/{subresource}" in rule_resources


def _non_resource_url_matches(urls: Iterable[str], path: str) -> bool:
    for url in urls:
        if url == "*" or url == path:
            return True
        if url.endswith("*") and path.startswith(url[:-1]):
            return True
    return False


@dataclass(frozen=True, slots=True)
class _Grant:
    """One subject of one binding: what a matching user is granted, and how to say so."""

    binding_kind: str  # ClusterRoleBinding | RoleBinding
    binding_name: str
    namespace: str  # "" for a ClusterRoleBinding
    role_kind: str
    role_name: str
    subject: str  # describeSubject(): `User "alice"`, `ServiceAccount "sa/ns"`

    def describe(self) -> str:
        name = self.binding_name if not self.namespace else f"{self.binding_name}/{self.namespace}"
        return (
            f"{self.binding_kind} {_q(name)} of {self.role_kind} {_q(self.role_name)} "
            f"to {self.subject}"
        )


@dataclass
class _Policy:
    cluster_roles: dict[str, tuple[PolicyRule, ...]] = field(default_factory=dict)
    roles: dict[tuple[str, str], tuple[PolicyRule, ...]] = field(default_factory=dict)
    by_user: dict[str, list[_Grant]] = field(default_factory=dict)
    by_group: dict[str, list[_Grant]] = field(default_factory=dict)


def _q(s: str) -> str:
    # Go's %q for the ASCII names Kubernetes allows.
    return json.dumps(s)


def _str_set(value: object) -> frozenset[str]:
    if not isinstance(value, list):
        return frozenset()
    return frozenset(v for v in value if isinstance(v, str))


def compile_rules(rules: object) -> tuple[PolicyRule, ...]:
    """Compile the ``rules`` list of a Role/ClusterRole; malformed entries are skipped."""
    if not isinstance(rules, list):
        return ()
    out = []
    for r in rules:
        if not isinstance(r, Mapping):
            continue
        urls = r.get("nonResourceURLs")
        out.append(
            PolicyRule(
                verbs=_str_set(r.get("verbs")),
                api_groups=_str_set(r.get("apiGroups")),
                resources=_str_set(r.get("resources")),
                resource_names=_str_set(r.get("resourceNames")),
                non_resource_urls=tuple(u for u in urls if isinstance(u, str))
                if isinstance(urls, list)
                else (),
            )
        )
    return tuple(out)


def _labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    meta = obj.get("metadata")
    labels = meta.get("labels") if isinstance(meta, Mapping) else None
    return labels if isinstance(labels, Mapping) else {}


def _name(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata")
    name = meta.get("name") if isinstance(meta, Mapping) else None
    return name if isinstance(name, str) else ""


def _namespace(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata")
    ns = meta.get("namespace") if isinstance(meta, Mapping) else None
    return ns if isinstance(ns, str) else ""


def selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A metav1.LabelSelector (matchLabels + matchExpressions) against ``labels``.

    An empty selector matches everything, as in the API server.
    """
    match_labels = selector.get("matchLabels") or {}
    if isinstance(match_labels, Mapping):
        for k, v in match_labels.items():
            if labels.get(k) != v:
                return False
    exprs = selector.get("matchExpressions") or []
    if not isinstance(exprs, list):
        return False
    for e in exprs:
        if not isinstance(e, Mapping):
            return False
        key, op = e.get("key"), e.get("operator")
        values = e.get("values") or []
        if not isinstance(key, str) or not isinstance(values, list):
            return False
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            return False
    return True


def _aggregate(cluster_roles: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[PolicyRule, ...]]:
    """Rules of every ClusterRole, with aggregationRule resolved (cycles are cut)."""
    resolved: dict[str, tuple[PolicyRule, ...]] = {}

    def rules_of(name: str, visiting: frozenset[str]) -> tuple[PolicyRule, ...]:
        if name in resolved:
            return resolved[name]
        obj = cluster_roles[name]
        agg = obj.get("aggregationRule")
        if not isinstance(agg, Mapping):
            rules = compile_rules(obj.get("rules"))
        else:
            selectors = agg.get("clusterRoleSelectors") or []
            collected: list[PolicyRule] = []
            for other, other_obj in sorted(cluster_roles.items()):
                if other == name or other in visiting:
                    continue
                if any(
                    isinstance(s, Mapping) and selector_matches(s, _labels(other_obj))
                    for s in (selectors if isinstance(selectors, list) else [])
                ):
                    for rule in rules_of(other, visiting | {name}):
                        if rule not in collected:
                            collected.append(rule)
            rules = tuple(collected)
        if not visiting:
            resolved[name] = rules
        return rules

    for name in cluster_roles:
        resolved[name] = rules_of(name, frozenset())
    return resolved


def _subject_grants(
    binding: Mapping[str, Any], binding_kind: str
) -> Iterable[tuple[str, str, _Grant]]:
    """(index kind "user"/"group", key, grant) for every valid subject of ``binding``."""
    role_ref = binding.get("roleRef")
    if not isinstance(role_ref, Mapping):
        return
    role_kind, role_name = role_ref.get("kind"), role_ref.get("name")
    if role_kind not in ("Role", "ClusterRole") or not isinstance(role_name, str):
        return
    namespace = _namespace(binding) if binding_kind == "RoleBinding" else ""
    if binding_kind == "ClusterRoleBinding" and role_kind != "ClusterRole":
        return
    subjects = binding.get("subjects") or []
    if not isinstance(subjects, list):
        return
    for s in subjects:
        if not isinstance(s, Mapping):
            continue
        kind, name = s.get("kind"), s.get("name")
        if not isinstance(name, str) or not name:
            continue
        if kind == "ServiceAccount":
            sa_ns = s.get("namespace") or namespace
            if not isinstance(sa_ns, str) or not sa_ns:
                continue
            key = f"{SERVICE_ACCOUNT_PREFIX}{sa_ns}:{name}"
            described = f"ServiceAccount {_q(name + '/' + sa_ns)}"
            index = "user"
        elif kind in ("User", "Group"):
            key = name
            described = f"{kind} {_q(name)}"
            index = "user" if kind == "User" else "group"
        else:
            continue
        grant = _Grant(binding_kind, _name(binding), namespace, role_kind, role_name, described)
        yield index, key, grant


def compile_policy(
    cluster_roles: Iterable[Mapping[str, Any]],
    cluster_role_bindings: Iterable[Mapping[str, Any]],
    roles: Iterable[Mapping[str, Any]],
    role_bindings: Iterable[Mapping[str, Any]],
) -> _Policy:
    """Index RBAC objects (plain JSON dicts) by subject; built-ins fill in absent names."""
    crs = {_name(o): o for o in cluster_roles if _name(o)}
    crbs = {_name(o): o for o in cluster_role_bindings if _name(o)}
    for builtin in _BUILTIN_OBJECTS:
        target = crs if builtin["kind"] == "ClusterRole" else crbs
        target.setdefault(_name(builtin), builtin)
    policy = _Policy(cluster_roles=_aggregate(crs))
    for o in roles:
        if _name(o) and _namespace(o):
            policy.roles[(_namespace(o), _name(o))] = compile_rules(o.get("rules"))
    grants = [g for b in crbs.values() for g in _subject_grants(b, "ClusterRoleBinding")]
    grants += [g for b in role_bindings if _namespace(b) for g in _subject_grants(b, "RoleBinding")]
    for index, key, grant in grants:
        target_index = policy.by_user if index == "user" else policy.by_group
        target_index.setdefault(key, []).append(grant)
    return policy


def _fingerprint(
    object_lists: Iterable[Iterable[Mapping[str, Any]]],
) -> tuple[tuple[str, str, str], ...] | None:
    """(namespace, name, resourceVersion) of every RBAC object: equal fingerprints mean
    the same objects. None when an object has no resourceVersion (never cache then)."""
    out: list[tuple[str, str, str]] = []
    for i, objs in enumerate(object_lists):
        out.append(("", "", str(i)))  # separates the four kinds
        for o in objs:
            meta = o.get("metadata")
            rv = meta.get("resourceVersion") if isinstance(meta, Mapping) else None
            if not isinstance(rv, str) or not rv:
                return None
            out.append((_namespace(o), _name(o), rv))
    return tuple(out)


class Authorizer:
    """RBAC authorizer over the sandbox store (``store.list(group, resource, namespace)``)."""

    def __init__(self, store: RbacStore) -> None:
        self._store = store
        self._policy: _Policy | None = None
        self._fingerprint: tuple[tuple[str, str, str], ...] | None = None
        self._version: int | None = None

    def _store_version(self) -> int | None:
        version = getattr(self._store, "resource_version", None)
        return version if isinstance(version, int) else None

    def _load(self) -> _Policy:
        # Fast path: the sandbox Store's resource_version moves on every write of any kind.
        version = self._store_version()
        if self._policy is not None and version is not None and version == self._version:
            return self._policy
        s = self._store
        objects = (
            s.list(RBAC_GROUP, "clusterroles", None),
            s.list(RBAC_GROUP, "clusterrolebindings", None),
            s.list(RBAC_GROUP, "roles", None),
            s.list(RBAC_GROUP, "rolebindings", None),
        )
        # Something was written: recompile only when it was an RBAC object.
        fingerprint = _fingerprint(objects)
        cached = self._policy
        if cached is not None and fingerprint is not None and fingerprint == self._fingerprint:
            self._version = version
            return cached
        policy = compile_policy(*objects)
        self._policy, self._fingerprint = policy, fingerprint
        self._version = version if fingerprint is not None else None
        return policy

    def _grants_for(self, policy: _Policy, user: UserInfo) -> list[_Grant]:
        grants = list(policy.by_user.get(user.username, ()))
        for g in user.groups:
            grants.extend(policy.by_group.get(g, ()))
        # The API server visits ClusterRoleBindings before the namespace's RoleBindings.
        grants.sort(key=lambda g: (g.binding_kind != "ClusterRoleBinding", g.binding_name))
        return grants

    def _rules_of(self, policy: _Policy, grant: _Grant) -> tuple[PolicyRule, ...] | None:
        if grant.role_kind == "ClusterRole":
            return policy.cluster_roles.get(grant.role_name)
        return policy.roles.get((grant.namespace, grant.role_name))

    def authorize(self, user: UserInfo, attrs: Attributes) -> AuthorizationDecision:
        """Allow or deny ``attrs`` for ``user``; RBAC never denies explicitly, it only fails
        to allow, so a denial's reason is empty unless bindings point at missing roles."""
        if MASTERS_GROUP in user.groups:
            return AuthorizationDecision(True, "")
        policy = self._load()
        errors: list[str] = []
        for grant in self._grants_for(policy, user):
            if grant.namespace and grant.namespace != attrs.namespace:
                continue
            rules = self._rules_of(policy, grant)
            if rules is None:
                kind = "clusterrole" if grant.role_kind == "ClusterRole" else "role"
                errors.append(f"{kind}.{RBAC_GROUP} {_q(grant.role_name)} not found")
                continue
            if any(rule.allows(attrs) for rule in rules):
                return AuthorizationDecision(True, f"RBAC: allowed by {grant.describe()}")
        if not errors:
            return AuthorizationDecision(False, "")
        joined = errors[0] if len(errors) == 1 else "[" + ", ".join(errors) + "]"
        return AuthorizationDecision(False, f"RBAC: {joined}")

    def rules_for(self, user: UserInfo, namespace: str) -> tuple[list[PolicyRule], bool]:
        """Every rule that applies to ``user`` in ``namespace`` (SelfSubjectRulesReview);
        the flag says the list is incomplete (a binding points at a missing role)."""
        if MASTERS_GROUP in user.groups:
            everything = [
                PolicyRule(frozenset({"*"}), frozenset({"*"}), frozenset({"*"})),
                PolicyRule(frozenset({"*"}), non_resource_urls=("*",)),
            ]
            return everything, False
        policy = self._load()
        out: list[PolicyRule] = []
        incomplete = False
        for grant in self._grants_for(policy, user):
            if grant.namespace and grant.namespace != namespace:
                continue
            rules = self._rules_of(policy, grant)
            if rules is None:
                incomplete = True
                continue
            out.extend(r for r in rules if r not in out)
        return out, incomplete


def forbidden_message(username: str, attrs: Attributes, reason: str = "") -> str:
    """The message of the API server's 403 for ``attrs`` (responsewriters.Forbidden +
    apierrors.NewForbidden): ``pods "x" is forbidden: User "u" cannot get resource "pods"
    in API group "" in the namespace "default"``."""
    if not attrs.is_resource_request:
        msg = f"User {_q(username)} cannot {attrs.verb} path {_q(attrs.path)}"
    else:
        resource = attrs.resource
        if attrs.subresource:
            resource = f"{resource}/{attrs.subresource}"
        msg = (
            f"User {_q(username)} cannot {attrs.verb} resource {_q(resource)} "
            f"in API group {_q(attrs.api_group)}"
        )
        if attrs.namespace:
            msg += f" in the namespace {_q(attrs.namespace)}"
        else:
            msg += " at the cluster scope"
    if reason:
        msg = f"{msg}: {reason}"
    if not attrs.resource:
        return f"forbidden: {msg}"
    qualified = f"{attrs.resource}.{attrs.api_group}" if attrs.api_group else attrs.resource
    if not attrs.name:
        return f"{qualified} is forbidden: {msg}"
    return f"{qualified} {_q(attrs.name)} is forbidden: {msg}"


def forbidden_error(username: str, attrs: Attributes, reason: str = "") -> ForbiddenError:
    """A ForbiddenError carrying the API server's message and Status details."""
    details: StatusDetails = {}
    if attrs.name:
        details["name"] = attrs.name
    if attrs.api_group:
        details["group"] = attrs.api_group
    if attrs.resource:
        details["kind"] = attrs.resource
    return ForbiddenError(forbidden_message(username, attrs, reason), details=details)


# ---- built-in policy (a trimmed k8s bootstrap policy) --------------------------------------

_READ = ["get", "list", "watch"]
_WRITE = ["create", "delete", "deletecollection", "patch", "update"]
_AGG = "rbac.authorization.k8s.io/aggregate-to-"


def _rule(groups: Sequence[str], resources: Sequence[str], verbs: Sequence[str]) -> _Obj:
    return {"apiGroups": list(groups), "resources": list(resources), "verbs": list(verbs)}


def _url_rule(urls: Sequence[str], verbs: Sequence[str]) -> _Obj:
    return {"nonResourceURLs": list(urls), "verbs": list(verbs)}


def _meta(name: str, labels: Mapping[str, str] | None = None) -> _Obj:
    return {
        "name": name,
        "labels": {"kubernetes.io/bootstrapping": "rbac-defaults", **(labels or {})},
        "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
    }


def _cluster_role(
    name: str,
    rules: list[_Obj],
    labels: Mapping[str, str] | None = None,
    aggregate_from: str | None = None,
) -> _Obj:
    obj: _Obj = {
        "apiVersion": f"{RBAC_GROUP}/v1",
        "kind": "ClusterRole",
        "metadata": _meta(name, labels),
        "rules": rules,
    }
    if aggregate_from:
        obj["aggregationRule"] = {
            "clusterRoleSelectors": [{"matchLabels": {f"{_AGG}{aggregate_from}": "true"}}]
        }
    return obj


def _cluster_binding(name: str, role: str, groups: Sequence[str]) -> _Obj:
    return {
        "apiVersion": f"{RBAC_GROUP}/v1",
        "kind": "ClusterRoleBinding",
        "metadata": _meta(name),
        "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": role},
        "subjects": [{"apiGroup": RBAC_GROUP, "kind": "Group", "name": g} for g in groups],
    }


def _builtin_objects() -> list[_Obj]:
    core_read = [
        "configmaps", "endpoints", "persistentvolumeclaims", "persistentvolumeclaims/status",
        "pods", "replicationcontrollers", "replicationcontrollers/scale", "serviceaccounts",
        "services", "services/status", "bindings", "events", "limitranges", "namespaces/status",
        "pods/log", "pods/status", "replicationcontrollers/status", "resourcequotas",
        "resourcequotas/status", "namespaces",
    ]  # fmt: skip
    apps = [
        "controllerrevisions", "daemonsets", "daemonsets/status", "deployments",
        "deployments/scale", "deployments/status", "replicasets", "replicasets/scale",
        "replicasets/status", "statefulsets", "statefulsets/scale", "statefulsets/status",
    ]  # fmt: skip
    view_rules = [
        _rule([""], core_read, _READ),
        _rule(["apps"], apps, _READ),
        _rule(["autoscaling"], ["horizontalpodautoscalers", "horizontalpodautoscalers/status"],
              _READ),
        _rule(["batch"], ["cronjobs", "cronjobs/status", "jobs", "jobs/status"], _READ),
        _rule(["policy"], ["poddisruptionbudgets", "poddisruptionbudgets/status"], _READ),
        _rule(["networking.k8s.io"], ["ingresses", "ingresses/status", "networkpolicies"], _READ),
        _rule(["discovery.k8s.io"], ["endpointslices"], _READ),
    ]  # fmt: skip
    pod_access = ["pods/attach", "pods/exec", "pods/portforward", "pods/proxy"]
    edit_rules = [
        _rule([""], [*pod_access, "secrets", "services/proxy"], _READ),
        _rule([""], ["serviceaccounts"], ["impersonate"]),
        _rule([""], ["pods", *pod_access], _WRITE),
        _rule([""], ["pods/eviction"], ["create"]),
        _rule([""], [
            "configmaps", "events", "persistentvolumeclaims", "replicationcontrollers",
            "replicationcontrollers/scale", "secrets", "serviceaccounts", "services",
            "services/proxy",
        ], _WRITE),
        _rule([""], ["serviceaccounts/token"], ["create"]),
        _rule(["apps"], [
            "daemonsets", "deployments", "deployments/rollback", "deployments/scale",
            "replicasets", "replicasets/scale", "statefulsets", "statefulsets/scale",
        ], _WRITE),
        _rule(["autoscaling"], ["horizontalpodautoscalers"], _WRITE),
        _rule(["batch"], ["cronjobs", "jobs"], _WRITE),
        _rule(["policy"], ["poddisruptionbudgets"], _WRITE),
        _rule(["networking.k8s.io"], ["ingresses", "networkpolicies"], _WRITE),
    ]  # fmt: skip
    admin_rules = [
        _rule(["authorization.k8s.io"], ["localsubjectaccessreviews"], ["create"]),
        _rule([RBAC_GROUP], ["rolebindings", "roles"], [*_READ, *_WRITE]),
    ]
    discovery_urls = [
        "/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/openapi", "/openapi/*",
        "/readyz", "/version", "/version/",
    ]  # fmt: skip
    objs = [
        _cluster_role(
            "cluster-admin",
            [_rule(["*"], ["*"], ["*"]), _url_rule(["*"], ["*"])],
        ),
        _cluster_role("admin", [], aggregate_from="admin"),
        _cluster_role("edit", [], {f"{_AGG}admin": "true"}, aggregate_from="edit"),
        _cluster_role("view", [], {f"{_AGG}edit": "true"}, aggregate_from="view"),
        _cluster_role("system:aggregate-to-admin", admin_rules, {f"{_AGG}admin": "true"}),
        _cluster_role("system:aggregate-to-edit", edit_rules, {f"{_AGG}edit": "true"}),
        _cluster_role("system:aggregate-to-view", view_rules, {f"{_AGG}view": "true"}),
        _cluster_role("system:discovery", [_url_rule(discovery_urls, ["get"])]),
        _cluster_role(
            "system:basic-user",
            [
                _rule(["authentication.k8s.io"], ["selfsubjectreviews"], ["create"]),
                _rule(
                    ["authorization.k8s.io"],
                    ["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                    ["create"],
                ),
            ],
        ),
        _cluster_role(
            "system:public-info-viewer",
            [_url_rule(["/healthz", "/livez", "/readyz", "/version", "/version/"], ["get"])],
        ),
        _cluster_binding("cluster-admin", "cluster-admin", [MASTERS_GROUP]),
        _cluster_binding("system:discovery", "system:discovery", [AUTHENTICATED_GROUP]),
        _cluster_binding("system:basic-user", "system:basic-user", [AUTHENTICATED_GROUP]),
        _cluster_binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            [AUTHENTICATED_GROUP, UNAUTHENTICATED_GROUP],
        ),
    ]
    return objs


_BUILTIN_OBJECTS: list[_Obj] = _builtin_objects()


def bootstrap_policy() -> list[_Obj]:
    """Fresh copies of the built-in ClusterRoles and ClusterRoleBindings, with the rules of
    aggregated roles filled in (as the aggregation controller would), for the store to seed
    so that ``kubectl get clusterroles`` lists them."""
    resolved = _aggregate({_name(o): o for o in _BUILTIN_OBJECTS if o["kind"] == "ClusterRole"})
    out = []
    for o in _BUILTIN_OBJECTS:
        copy: _Obj = json.loads(json.dumps(o))
        if "aggregationRule" in copy:
            copy["rules"] = [r.to_json() for r in resolved[_name(o)]]
        out.append(copy)
    return out
