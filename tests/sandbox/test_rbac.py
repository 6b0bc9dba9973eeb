"""RBAC of the sandbox: every allow and deny path, as the API server's RBAC authorizer."""

from __future__ import annotations

from typing import Any

import pytest

from klockproxy.core.types import UserInfo
from klockproxy.sandbox import rbac as rbac_module
from klockproxy.sandbox.errors import ForbiddenError
from klockproxy.sandbox.rbac import (
    Attributes,
    Authorizer,
    bootstrap_policy,
    forbidden_error,
    forbidden_message,
    selector_matches,
)

RBAC = "rbac.authorization.k8s.io"
AUTH = ("system:authenticated",)


class FakeStore:
    """The store API the authorizer uses: list(group, resource, namespace|None)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], list[dict[str, Any]]] = {}

    def add(self, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
        self.objects.setdefault((RBAC, resource), []).append(obj)
        return obj

    def list(self, group: str, resource: str, namespace: str | None) -> list[dict[str, Any]]:
        items = self.objects.get((group, resource), [])
        return [
            o for o in items if namespace is None or o["metadata"].get("namespace", "") == namespace
        ]


def role(name: str, ns: str, *rules: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "Role", "metadata": {"name": name, "namespace": ns}, "rules": list(rules)}


def cluster_role(name: str, *rules: dict[str, Any], **extra: Any) -> dict[str, Any]:
    obj = {"kind": "ClusterRole", "metadata": {"name": name}, "rules": list(rules)}
    obj.update(extra)
    return obj


def binding(
    name: str,
    ns: str | None,
    role_kind: str,
    role_name: str,
    *subjects: dict[str, Any],
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if ns is not None:
        meta["namespace"] = ns
    return {
        "kind": "RoleBinding" if ns is not None else "ClusterRoleBinding",
        "metadata": meta,
        "roleRef": {"apiGroup": RBAC, "kind": role_kind, "name": role_name},
        "subjects": list(subjects),
    }


def rule(
    verbs: list[str], resources: list[str], groups: list[str] | None = None, **kw: Any
) -> dict[str, Any]:
    return {"apiGroups": groups if groups is not None else [""], "resources": resources,
            "verbs": verbs, **kw}  # fmt: skip


def user(name: str, *groups: str) -> UserInfo:
    return UserInfo(name, groups=(*groups, *AUTH))


def sa_user(ns: str, name: str) -> UserInfo:
    return UserInfo(
        f"system:serviceaccount:{ns}:{name}",
        groups=("system:serviceaccounts", f"system:serviceaccounts:{ns}", *AUTH),
    )


def pods(verb: str, ns: str = "default", name: str = "", sub: str = "") -> Attributes:
    return Attributes(verb=verb, namespace=ns, resource="pods", subresource=sub, name=name)


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
def authz(store: FakeStore) -> Authorizer:
    return Authorizer(store)


# --- the seed scenario ------------------------------------------------------------------------


def test_seed_scenario_jonny_op_forbidden_until_rolebinding(
    store: FakeStore, authz: Authorizer
) -> None:
    jonny = sa_user("default", "jonny-op")
    verbs = ["list", "get", "create", "update", "delete", "patch"]
    store.add("roles", role("app-op", "default", rule(verbs, ["pods", "configmaps"])))
    assert not authz.authorize(jonny, pods("list")).allowed
    store.add(
        "rolebindings",
        binding(
            "jonny-app", "default", "Role", "app-op",
            {"kind": "ServiceAccount", "name": "jonny-op", "namespace": "default"},
        ),
    )  # fmt: skip
    decision = authz.authorize(jonny, pods("list"))
    assert decision.allowed
    assert decision.reason == (
        'RBAC: allowed by RoleBinding "jonny-app/default" of Role "app-op" '
        'to ServiceAccount "jonny-op/default"'
    )
    cm = Attributes(verb="patch", namespace="default", resource="configmaps", name="my-cm")
    assert authz.authorize(jonny, cm).allowed
    # Not granted: another namespace, another verb, another resource.
    assert not authz.authorize(jonny, pods("list", ns="kube-system")).allowed
    assert not authz.authorize(jonny, pods("watch")).allowed
    secrets = Attributes(verb="get", namespace="default", resource="secrets")
    assert not authz.authorize(jonny, secrets).allowed
    # Another service account of the same namespace is not jonny-op.
    assert not authz.authorize(sa_user("default", "other"), pods("list")).allowed


# --- subjects --------------------------------------------------------------------------------


def test_user_subject(store: FakeStore, authz: Authorizer) -> None:
    store.add("roles", role("r", "ns1", rule(["get"], ["pods"])))
    store.add("rolebindings", binding("b", "ns1", "Role", "r", {"kind": "User", "name": "alice"}))
    assert authz.authorize(user("alice"), pods("get", "ns1")).allowed
    assert not authz.authorize(user("bob"), pods("get", "ns1")).allowed


def test_group_subject(store: FakeStore, authz: Authorizer) -> None:
    store.add("roles", role("r", "ns1", rule(["get"], ["pods"])))
    store.add("rolebindings", binding("b", "ns1", "Role", "r", {"kind": "Group", "name": "devs"}))
    assert authz.authorize(user("bob", "devs"), pods("get", "ns1")).allowed
    assert not authz.authorize(user("bob", "ops"), pods("get", "ns1")).allowed
    # A User subject named like a group does not match a group member, and vice versa.
    assert not authz.authorize(user("devs"), pods("get", "ns1")).allowed


def test_service_account_subject_namespace_defaults_to_binding(
    store: FakeStore, authz: Authorizer
) -> None:
    store.add("roles", role("r", "team", rule(["get"], ["pods"])))
    store.add(
        "rolebindings", binding("b", "team", "Role", "r", {"kind": "ServiceAccount", "name": "bot"})
    )
    assert authz.authorize(sa_user("team", "bot"), pods("get", "team")).allowed
    assert not authz.authorize(sa_user("default", "bot"), pods("get", "team")).allowed


def test_service_account_subject_in_other_namespace(store: FakeStore, authz: Authorizer) -> None:
    store.add("roles", role("r", "team", rule(["get"], ["pods"])))
    store.add(
        "rolebindings",
        binding(
            "b", "team", "Role", "r", {"kind": "ServiceAccount", "name": "bot", "namespace": "ci"}
        ),
    )
    assert authz.authorize(sa_user("ci", "bot"), pods("get", "team")).allowed
    assert not authz.authorize(sa_user("team", "bot"), pods("get", "team")).allowed


def test_user_subject_with_service_account_name_matches_the_sa(
    store: FakeStore, authz: Authorizer
) -> None:
    store.add("roles", role("r", "ns", rule(["get"], ["pods"])))
    store.add(
        "rolebindings",
        binding("b", "ns", "Role", "r", {"kind": "User", "name": "system:serviceaccount:ns:x"}),
    )
    assert authz.authorize(sa_user("ns", "x"), pods("get", "ns")).allowed


def test_cluster_role_binding_service_account_without_namespace_is_ignored(
    store: FakeStore, authz: Authorizer
) -> None:
    store.add("clusterroles", cluster_role("c", rule(["get"], ["pods"])))
    store.add(
        "clusterrolebindings",
        binding("b", None, "ClusterRole", "c", {"kind": "ServiceAccount", "name": "bot"}),
    )
    assert not authz.authorize(sa_user("default", "bot"), pods("get")).allowed


def test_unknown_subject_kind_is_ignored(store: FakeStore, authz: Authorizer) -> None:
    store.add("roles", role("r", "ns", rule(["get"], ["pods"])))
    store.add("rolebindings", binding("b", "ns", "Role", "r", {"kind": "Robot", "name": "alice"}))
    assert not authz.authorize(user("alice"), pods("get", "ns")).allowed


# --- role vs clusterrole ---------------------------------------------------------------------


def test_cluster_role_binding_grants_everywhere(store: FakeStore, authz: Authorizer) -> None:
    store.add("clusterroles", cluster_role("reader", rule(["list"], ["pods"])))
    store.add(
        "clusterrolebindings",
        binding("b", None, "ClusterRole", "reader", {"kind": "User", "name": "alice"}),
    )
    d = authz.authorize(user("alice"), pods("list", "anywhere"))
    assert d.allowed
    assert d.reason == (
        'RBAC: allowed by ClusterRoleBinding "b" of ClusterRole "reader" to User "alice"'
    )
    # Cluster-scoped request (list pods across all namespaces).
    assert authz.authorize(user("alice"), pods("list", "")).allowed


def test_role_binding_to_cluster_role_is_scoped_to_its_namespace(
    store: FakeStore, authz: Authorizer
) -> None:
    store.add("clusterroles", cluster_role("reader", rule(["list"], ["pods"])))
    store.add(
        "rolebindings",
        binding("b", "ns1", "ClusterRole", "reader", {"kind": "User", "name": "alice"}),
    )
    assert authz.authorize(user("alice"), pods("list", "ns1")).allowed
    assert not authz.authorize(user("alice"), pods("list", "ns2")).allowed
    assert not authz.authorize(user("alice"), pods("list", "")).allowed


def test_role_binding_refers_to_role_of_its_own_namespace(
    store: FakeStore, authz: Authorizer
) -> None:
    store.add("roles", role("r", "other", rule(["get"], ["pods"])))
    store.add("rolebindings", binding("b", "ns", "Role", "r", {"kind": "User", "name": "alice"}))
    d = authz.authorize(user("alice"), pods("get", "ns"))
    assert not d.allowed
    assert d.reason == 'RBAC: role.rbac.authorization.k8s.io "r" not found'


def test_cluster_role_binding_to_a_role_is_ignored(store: FakeStore, authz: Authorizer) -> None:
    store.add("roles", role("r", "ns", rule(["get"], ["pods"])))
    store.add(
        "clusterrolebindings", binding("b", None, "Role", "r", {"kind": "User", "name": "alice"})
    )
    assert not authz.authorize(user("alice"), pods("get", "ns")).allowed


def test_missing_cluster_role_is_reported(store: FakeStore, authz: Authorizer) -> None:
    store.add(
        "clusterrolebindings",
        binding("b", None, "ClusterRole", "gone", {"kind": "User", "name": "alice"}),
    )
    d = authz.authorize(user("alice"), pods("get"))
    assert d == d.__class__(False, 'RBAC: clusterrole.rbac.authorization.k8s.io "gone" not found')


# --- rules -----------------------------------------------------------------------------------


def grant_alice(store: FakeStore, *rules: dict[str, Any]) -> None:
    store.add("clusterroles", cluster_role("c", *rules))
    store.add(
        "clusterrolebindings",
        binding("b", None, "ClusterRole", "c", {"kind": "User", "name": "alice"}),
    )


def test_api_groups(store: FakeStore, authz: Authorizer) -> None:
    grant_alice(store, rule(["get"], ["deployments"], ["apps"]))
    alice = user("alice")
    assert authz.authorize(alice, Attributes("get", "ns", "apps", "deployments")).allowed
    assert not authz.authorize(alice, Attributes("get", "ns", "", "deployments")).allowed
    assert not authz.authorize(alice, Attributes("get", "ns", "extensions", "deployments")).allowed


def test_api_group_wildcard(store: FakeStore, authz: Authorizer) -> None:
    grant_alice(store, rule(["get"], ["things"], ["*"]))
    assert authz.authorize(user("alice"), Attributes("get", "ns", "example.com", "things")).allowed


def test_verb_wildcard(store: FakeStore, authz: Authorizer) -> None:
    grant_alice(store, rule(["*"], ["pods"]))
    for verb in ("get", "list", "watch", "create", "delete", "deletecollection", "impersonate"):
        assert authz.authorize(user("alice"), pods(verb)).allowed


def test_resource_wildcard_covers_subresources(store: FakeStore, authz: Authorizer) -> None:
    grant_alice(store, rule(["get"], ["*"]))
    assert authz.authorize(user("alice"), pods("get", sub="log")).allowed
    assert authz.authorize(user("alice"), Attributes("get", "ns", "", "secrets")).allowed


def test_subresources_are_distinct_from_the_resource(store: FakeStore, authz: Authorizer) -> None:
    grant_alice(store, rule(["get"], ["pods"]))
    alice = user("alice")
    assert authz.authorize(alice, pods("get")).allowed
    assert not authz.authorize(alice, pods("get", sub="log")).allowed
    assert not authz.authorize(alice, pods("create", name="p", sub="exec")).allowed


def test_explicit_subresource_rule(store: FakeStore, authz: Authorizer) -> None:
    grant_alice(store, rule(["get"], ["pods/log"]))
    alice = user("alice")
    assert authz.authorize(alice, pods("get", name="p", sub="log")).allowed
    assert not authz.authorize(alice, pods("get", name="p")).allowed
    assert not authz.authorize(alice, pods("get", name="p", sub="status")).allowed


def test_star_slash_subresource(store: FakeStore, authz: Authorizer) -> None:
    grant_alice(store, rule(["patch"], ["*/scale"], ["*"]))
    alice = user("alice")
    scale = Attributes("patch", "ns", "apps", "deployments", "scale", "web")
    assert authz.authorize(alice, scale).allowed
    assert not authz.authorize(alice, Attributes("patch", "ns", "apps", "deployments")).allowed
    status = Attributes("patch", "ns", "apps", "deployments", "status", "web")
    assert not authz.authorize(alice, status).allowed


def test_resource_names(store: FakeStore, authz: Authorizer) -> None:
    grant_alice(store, rule(["get", "update"], ["configmaps"], resourceNames=["my-cm"]))
    alice = user("alice")
    cm = Attributes("get", "ns", "", "configmaps", name="my-cm")
    assert authz.authorize(alice, cm).allowed
    assert not authz.authorize(alice, Attributes("get", "ns", "", "configmaps", name="x")).allowed
    # A list has no name, so resourceNames cannot grant it.
    assert not authz.authorize(alice, Attributes("list", "ns", "", "configmaps")).allowed


def test_non_resource_urls(store: FakeStore, authz: Authorizer) -> None:
    grant_alice(
        store,
        {"nonResourceURLs": ["/healthz", "/metrics/*"], "verbs": ["get"]},
    )
    alice = user("alice")

    def path(p: str, verb: str = "get") -> Attributes:
        return Attributes(verb=verb, path=p, is_resource_request=False)

    assert authz.authorize(alice, path("/healthz")).allowed
    assert authz.authorize(alice, path("/metrics/cadvisor")).allowed
    assert not authz.authorize(alice, path("/healthz/etcd")).allowed
    assert not authz.authorize(alice, path("/metrics")).allowed
    assert not authz.authorize(alice, path("/healthz", "post")).allowed
    # A nonResourceURLs rule grants no resource.
    assert not authz.authorize(alice, Attributes("get", "", "", "healthz")).allowed


def test_non_resource_star(store: FakeStore, authz: Authorizer) -> None:
    grant_alice(store, {"nonResourceURLs": ["*"], "verbs": ["*"]})
    nr = Attributes(verb="get", path="/anything/at/all", is_resource_request=False)
    assert authz.authorize(user("alice"), nr).allowed


def test_resource_rule_grants_no_path(store: FakeStore, authz: Authorizer) -> None:
    grant_alice(store, rule(["*"], ["*"], ["*"]))
    nr = Attributes(verb="get", path="/logs", is_resource_request=False)
    assert not authz.authorize(user("alice"), nr).allowed


def test_malformed_objects_do_not_break_authorization(store: FakeStore, authz: Authorizer) -> None:
    store.add("clusterroles", {"kind": "ClusterRole", "metadata": {"name": "bad"}, "rules": "x"})
    store.add("clusterroles", cluster_role("c", "not a rule", rule(["get"], ["pods"])))  # type: ignore[arg-type]
    store.add("clusterrolebindings", {"kind": "ClusterRoleBinding", "metadata": {"name": "x"}})
    store.add(
        "clusterrolebindings",
        binding(
            "b", None, "ClusterRole", "c",
            {"kind": "User"}, "junk", {"kind": "User", "name": "alice"},  # type: ignore[arg-type]
        ),
    )  # fmt: skip
    assert authz.authorize(user("alice"), pods("get")).allowed


# --- built-ins -------------------------------------------------------------------------------


def test_system_masters_may_do_anything(authz: Authorizer) -> None:
    admin = user("admin", "system:masters")
    assert authz.authorize(admin, pods("delete", "kube-system", "x")).allowed
    impersonate = Attributes("impersonate", "", "", "users", name="someone")
    assert authz.authorize(admin, impersonate).allowed
    nr = Attributes(verb="post", path="/whatever", is_resource_request=False)
    assert authz.authorize(admin, nr).allowed


@pytest.mark.parametrize(
    "attrs",
    [
        Attributes(verb="get", path="/api", is_resource_request=False),
        Attributes(verb="get", path="/apis", is_resource_request=False),
        Attributes(verb="get", path="/apis/apps/v1", is_resource_request=False),
        Attributes(verb="get", path="/version", is_resource_request=False),
        Attributes(verb="get", path="/openapi/v3", is_resource_request=False),
        Attributes(verb="get", path="/openapi/v3/api/v1", is_resource_request=False),
        Attributes("create", "", "authentication.k8s.io", "selfsubjectreviews"),
        Attributes("create", "", "authorization.k8s.io", "selfsubjectaccessreviews"),
        Attributes("create", "", "authorization.k8s.io", "selfsubjectrulesreviews"),
    ],
)
def test_every_authenticated_user_may_discover_and_ask_about_itself(
    authz: Authorizer, attrs: Attributes
) -> None:
    assert authz.authorize(user("nobody"), attrs).allowed
    # Without system:authenticated (an unauthenticated caller) only public info is readable.
    anon = UserInfo("system:anonymous", groups=("system:unauthenticated",))
    assert authz.authorize(anon, attrs).allowed == (attrs.path == "/version")


def test_authenticated_user_gets_nothing_else(authz: Authorizer) -> None:
    nobody = user("nobody")
    assert not authz.authorize(nobody, pods("list")).allowed
    assert not authz.authorize(nobody, Attributes("create", "", "", "namespaces")).allowed
    tr = Attributes("create", "", "authentication.k8s.io", "tokenreviews")
    assert not authz.authorize(nobody, tr).allowed
    sar = Attributes("create", "", "authorization.k8s.io", "subjectaccessreviews")
    assert not authz.authorize(nobody, sar).allowed


def test_builtin_view_edit_admin_cluster_admin(store: FakeStore, authz: Authorizer) -> None:
    for r in ("view", "edit", "admin", "cluster-admin"):
        store.add("rolebindings", binding(r, "ns", "ClusterRole", r, {"kind": "User", "name": r}))
    secrets = Attributes("get", "ns", "", "secrets", name="s")
    role_create = Attributes("create", "ns", RBAC, "roles")
    for who, can_list, can_create, can_secret, can_role in [
        ("view", True, False, False, False),
        ("edit", True, True, True, False),
        ("admin", True, True, True, True),
        ("cluster-admin", True, True, True, True),
    ]:
        u = user(who)
        assert authz.authorize(u, pods("list", "ns")).allowed is can_list, who
        assert authz.authorize(u, pods("create", "ns")).allowed is can_create, who
        assert authz.authorize(u, secrets).allowed is can_secret, who
        assert authz.authorize(u, role_create).allowed is can_role, who
        # All of it only in the binding's namespace.
        assert not authz.authorize(u, pods("list", "elsewhere")).allowed, who
    dep_scale = Attributes("patch", "ns", "apps", "deployments", "scale", "web")
    assert authz.authorize(user("edit"), dep_scale).allowed
    assert not authz.authorize(user("view"), dep_scale).allowed


def test_store_objects_override_builtins(store: FakeStore, authz: Authorizer) -> None:
    # An admin who rewrites the `view` ClusterRole changes what it grants.
    store.add("clusterroles", cluster_role("view", rule(["get"], ["secrets"])))
    store.add(
        "rolebindings", binding("v", "ns", "ClusterRole", "view", {"kind": "User", "name": "v"})
    )
    assert authz.authorize(user("v"), Attributes("get", "ns", "", "secrets")).allowed
    assert not authz.authorize(user("v"), pods("list", "ns")).allowed


def test_user_cluster_role_aggregates_into_view(store: FakeStore, authz: Authorizer) -> None:
    store.add(
        "clusterroles",
        cluster_role(
            "locks-view",
            rule(["get", "list"], ["locks"], ["klock.rnemet.dev"]),
            metadata={
                "name": "locks-view",
                "labels": {"rbac.authorization.k8s.io/aggregate-to-view": "true"},
            },
        ),
    )
    store.add(
        "rolebindings", binding("v", "ns", "ClusterRole", "view", {"kind": "User", "name": "v"})
    )
    store.add(
        "rolebindings", binding("a", "ns", "ClusterRole", "admin", {"kind": "User", "name": "a"})
    )
    locks = Attributes("list", "ns", "klock.rnemet.dev", "locks")
    # view aggregates it; edit aggregates view; admin aggregates edit.
    assert authz.authorize(user("v"), locks).allowed
    assert authz.authorize(user("a"), locks).allowed


def test_aggregation_with_match_expressions_and_cycles(store: FakeStore, authz: Authorizer) -> None:
    sel = {"matchExpressions": [{"key": "team", "operator": "In", "values": ["a"]}]}
    store.add(
        "clusterroles",
        cluster_role("agg", aggregationRule={"clusterRoleSelectors": [sel]},
                     metadata={"name": "agg", "labels": {"team": "a"}}),
    )  # fmt: skip
    store.add(
        "clusterroles",
        cluster_role(
            "part", rule(["get"], ["pods"]), metadata={"name": "part", "labels": {"team": "a"}}
        ),
    )
    store.add(
        "rolebindings", binding("b", "ns", "ClusterRole", "agg", {"kind": "User", "name": "u"})
    )
    assert authz.authorize(user("u"), pods("get", "ns")).allowed
    assert not authz.authorize(user("u"), pods("list", "ns")).allowed


def test_selector_matches() -> None:
    labels = {"a": "1", "b": "2"}
    assert selector_matches({}, labels)
    assert selector_matches({"matchLabels": {"a": "1"}}, labels)
    assert not selector_matches({"matchLabels": {"a": "2"}}, labels)
    exists = {"matchExpressions": [{"key": "a", "operator": "Exists"}]}
    assert selector_matches(exists, labels)
    absent = {"matchExpressions": [{"key": "c", "operator": "DoesNotExist"}]}
    assert selector_matches(absent, labels)
    notin = {"matchExpressions": [{"key": "b", "operator": "NotIn", "values": ["2"]}]}
    assert not selector_matches(notin, labels)
    bogus = {"matchExpressions": [{"key": "a", "operator": "Sometimes"}]}
    assert not selector_matches(bogus, labels)


def test_bootstrap_policy_objects() -> None:
    objs = bootstrap_policy()
    names = {(o["kind"], o["metadata"]["name"]) for o in objs}
    for cr in ("cluster-admin", "admin", "edit", "view", "system:discovery", "system:basic-user"):
        assert ("ClusterRole", cr) in names
    assert ("ClusterRoleBinding", "cluster-admin") in names
    view = next(o for o in objs if o["metadata"]["name"] == "view")
    assert any("pods" in r.get("resources", []) for r in view["rules"])
    # Copies: mutating them does not change the authorizer's built-ins.
    view["rules"].clear()
    assert any("pods" in r.get("resources", []) for r in bootstrap_policy()[3]["rules"])


def test_bootstrap_policy_seeded_into_the_store_behaves_the_same(store: FakeStore) -> None:
    for o in bootstrap_policy():
        store.add("clusterroles" if o["kind"] == "ClusterRole" else "clusterrolebindings", o)
    authz = Authorizer(store)
    assert authz.authorize(
        user("x"), Attributes("get", path="/api", is_resource_request=False)
    ).allowed
    store.add(
        "rolebindings", binding("e", "ns", "ClusterRole", "edit", {"kind": "User", "name": "e"})
    )
    assert authz.authorize(user("e"), pods("create", "ns")).allowed


# --- caching -------------------------------------------------------------------------------


def test_without_generation_every_decision_sees_the_store(store: FakeStore) -> None:
    authz = Authorizer(store)
    assert not authz.authorize(user("alice"), pods("get")).allowed
    grant_alice(store, rule(["get"], ["pods"]))
    assert authz.authorize(user("alice"), pods("get")).allowed


def test_rules_for(store: FakeStore, authz: Authorizer) -> None:
    store.add("roles", role("r", "ns", rule(["get"], ["pods"])))
    store.add("rolebindings", binding("b", "ns", "Role", "r", {"kind": "User", "name": "alice"}))
    store.add(
        "rolebindings", binding("m", "ns", "Role", "missing", {"kind": "User", "name": "alice"})
    )
    rules, incomplete = authz.rules_for(user("alice"), "ns")
    assert incomplete
    assert {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]} in [
        r.to_json() for r in rules
    ]
    assert any(r.non_resource_urls for r in rules)  # system:discovery
    rules_elsewhere, _ = authz.rules_for(user("alice"), "other")
    assert all(r.resources != frozenset({"pods"}) for r in rules_elsewhere)


# --- forbidden messages --------------------------------------------------------------------


def test_forbidden_message_shapes() -> None:
    assert forbidden_message("system:serviceaccount:default:jonny-op", pods("list")) == (
        'pods is forbidden: User "system:serviceaccount:default:jonny-op" cannot list '
        'resource "pods" in API group "" in the namespace "default"'
    )
    impersonate = Attributes("impersonate", "", "", "users", name="x")
    assert forbidden_message("admin", impersonate) == (
        'users "x" is forbidden: User "admin" cannot impersonate resource "users" '
        'in API group "" at the cluster scope'
    )
    log = pods("get", name="p", sub="log")
    assert forbidden_message("u", log) == (
        'pods "p" is forbidden: User "u" cannot get resource "pods/log" in API group "" '
        'in the namespace "default"'
    )
    dep = Attributes("get", "ns", "apps", "deployments", name="d")
    assert forbidden_message("u", dep, "RBAC: role.x not found").startswith(
        'deployments.apps "d" is forbidden: User "u" cannot get resource "deployments" '
        'in API group "apps" in the namespace "ns": RBAC: role.x'
    )
    path = Attributes(verb="get", path="/logs", is_resource_request=False)
    assert forbidden_message("u", path) == 'forbidden: User "u" cannot get path "/logs"'


def test_forbidden_error_status() -> None:
    err = forbidden_error("u", Attributes("get", "ns", "apps", "deployments", name="d"))
    assert isinstance(err, ForbiddenError)
    status = err.to_status()
    assert status["code"] == 403 and status["reason"] == "Forbidden"
    assert status["details"] == {"name": "d", "group": "apps", "kind": "deployments"}


class ResourceVersionStore(FakeStore):
    """Like the sandbox Store: every write gives the object a new resourceVersion."""

    def __init__(self) -> None:
        super().__init__()
        self._rv = 1

    def add(self, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        return super().add(resource, obj)

    def remove(self, resource: str, name: str) -> None:
        self._rv += 1
        items = self.objects[(RBAC, resource)]
        items[:] = [o for o in items if o["metadata"]["name"] != name]


@pytest.fixture
def compilations(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts policy compilations (the work the cache saves)."""
    calls: list[int] = []
    real = rbac_module.compile_policy

    def counting(*args: Any) -> Any:
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(rbac_module, "compile_policy", counting)
    return calls


def test_policy_is_compiled_once_per_rbac_change(compilations: list[int]) -> None:
    store = ResourceVersionStore()
    authz = Authorizer(store)
    alice = user("alice")
    assert not authz.authorize(alice, pods("get")).allowed
    assert not authz.authorize(alice, pods("get")).allowed
    assert len(compilations) == 1
    grant_alice(store, rule(["get"], ["pods"]))
    assert authz.authorize(alice, pods("get")).allowed
    assert authz.authorize(alice, pods("get")).allowed
    assert len(compilations) == 2
    store.remove("clusterrolebindings", "b")
    assert not authz.authorize(alice, pods("get")).allowed
    assert len(compilations) == 3


def test_objects_without_resource_version_are_never_cached(
    store: FakeStore, compilations: list[int]
) -> None:
    authz = Authorizer(store)
    grant_alice(store, rule(["get"], ["pods"]))
    assert authz.authorize(user("alice"), pods("get")).allowed
    # Changed in place (no resourceVersion to notice it by): still seen.
    store.objects[(RBAC, "clusterroles")][0]["rules"][0]["verbs"] = ["list"]
    assert not authz.authorize(user("alice"), pods("get")).allowed
    assert len(compilations) == 2


class CountingVersionStore(ResourceVersionStore):
    """Also exposes the store-wide resource_version, and counts list calls."""

    def __init__(self) -> None:
        super().__init__()
        self.lists = 0

    @property
    def resource_version(self) -> int:
        return self._rv

    def list(self, group: str, resource: str, namespace: str | None) -> list[dict[str, Any]]:
        self.lists += 1
        return super().list(group, resource, namespace)


def test_store_resource_version_skips_listing(compilations: list[int]) -> None:
    store = CountingVersionStore()
    authz = Authorizer(store)
    alice = user("alice")
    assert not authz.authorize(alice, pods("get")).allowed
    lists = store.lists
    assert not authz.authorize(alice, pods("get")).allowed
    assert store.lists == lists  # nothing written: not even listed
    store._rv += 1  # a write of something else (a pod, say)
    assert not authz.authorize(alice, pods("get")).allowed
    assert store.lists > lists
    assert len(compilations) == 1  # listed, but no RBAC change: not recompiled
    grant_alice(store, rule(["get"], ["pods"]))
    assert authz.authorize(alice, pods("get")).allowed
    assert len(compilations) == 2


def test_rules_for_system_masters(authz: Authorizer) -> None:
    rules, incomplete = authz.rules_for(user("root", "system:masters"), "any")
    assert not incomplete
    assert {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]} in [r.to_json() for r in rules]
    assert {"nonResourceURLs": ["*"], "verbs": ["*"]} in [r.to_json() for r in rules]
