"""Controller rules: the deletions, creations and identities a workload write implies."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from klockproxy.core.consequences import (
    WorkloadWrite,
    adopter_kinds,
    adoptions,
    exempt_service_accounts,
    orphan_adoptions,
    selector_matches,
    service_account_of,
    template_creations,
    workload_deletions,
)
from klockproxy.core.locks import load_locks_from_text
from klockproxy.core.ownership import Graph, Node, OwnerRef
from klockproxy.core.types import Operation, ResourceRef

DEPLOY = ResourceRef("apps", "v1", "deployments")
RS = ResourceRef("apps", "v1", "replicasets")
STS = ResourceRef("apps", "v1", "statefulsets")
JOB = ResourceRef("batch", "v1", "jobs")
CRONJOB = ResourceRef("batch", "v1", "cronjobs")
RC = ResourceRef("", "v1", "replicationcontrollers")
POD = ResourceRef("", "v1", "pods")
CM = ResourceRef("", "v1", "configmaps")
KIND = {DEPLOY: "Deployment", RS: "ReplicaSet", STS: "StatefulSet", JOB: "Job", POD: "Pod"}
KIND |= {CRONJOB: "CronJob", RC: "ReplicationController", CM: "ConfigMap"}
RED = {"aura": "red"}


def node(name: str, res: ResourceRef, owner: Node | None = None, **labels: str) -> Node:
    refs = (
        (OwnerRef(owner.resource.group, owner.kind, owner.name, owner.uid, True),) if owner else ()
    )
    return Node(f"uid-{name}", res, KIND[res], "t", name, labels, refs)


def graph(*nodes: Node) -> Graph:
    g = Graph()
    for n in nodes:
        g.upsert(n)
    return g


def workload(
    replicas: int = 2, image: str = "nginx", labels: dict[str, str] | None = None, **spec: Any
) -> dict[str, Any]:
    return {
        "metadata": {"name": "web"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": labels or {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": image}]},
            },
            **spec,
        },
    }


def write(
    res: ResourceRef,
    old: dict[str, Any] | None,
    new: dict[str, Any],
    *,
    uid: str = "",
    name: str = "web",
) -> WorkloadWrite:
    """A write of a workload in namespace t (``old`` None and no ``uid``: a create)."""
    return WorkloadWrite(res, "t", name, old, new, uid=uid)


def deleted(implied: list[Any]) -> list[str]:
    assert all(i.input.operation is Operation.DELETE for i in implied)
    return sorted(i.input.name for i in implied)


# A Deployment -> ReplicaSet -> pod chain whose pod is locked.
DEP = node("web", DEPLOY)
RSET = node("web-1", RS, DEP)
POD1 = node("web-1-a", POD, RSET, aura="red")
OWNED_CM = node("web-1-a-cm", CM, POD1)  # owned by the pod: the GC deletes it after the pod
CHAIN = graph(DEP, RSET, POD1, OWNED_CM)


def test_item14_scale_down_deletes_the_pods_and_what_they_own() -> None:
    out = workload_deletions(CHAIN, write(DEPLOY, workload(2), workload(1), uid=DEP.uid))
    assert deleted(out) == ["web-1-a", "web-1-a-cm"]
    assert "scaling down deletes pods" in out[0].note
    # Scaling up deletes nothing.
    assert workload_deletions(CHAIN, write(DEPLOY, workload(2), workload(3), uid=DEP.uid)) == []
    # A create has nothing stored yet for its controller to delete.
    assert workload_deletions(CHAIN, write(DEPLOY, None, workload(1))) == []


def test_item14_rollout_restart_and_set_image_replace_pods_and_may_drop_replicasets() -> None:
    restarted = workload()
    restarted["spec"]["template"]["metadata"]["annotations"] = {"kubectl.kubernetes.io/r": "1"}
    assert deleted(
        workload_deletions(CHAIN, write(DEPLOY, workload(), restarted, uid=DEP.uid))
    ) == [
        "web-1",
        "web-1-a",
        "web-1-a-cm",
    ]
    out = workload_deletions(
        CHAIN, write(DEPLOY, workload(), workload(image="nginx:2"), uid=DEP.uid)
    )
    assert "rollout" in out[0].note
    # Relabeling the Deployment itself changes nothing the controller does.
    relabeled = workload()
    relabeled["metadata"]["labels"] = {"x": "y"}
    assert workload_deletions(CHAIN, write(DEPLOY, workload(), relabeled, uid=DEP.uid)) == []


def test_item14_statefulset_scale_down_deletes_the_highest_ordinals_only() -> None:
    sts = node("db", STS)
    pods = [node(f"db-{i}", POD, sts, aura="red") for i in range(3)]
    g = graph(sts, *pods)
    old, new = workload(3), workload(1)
    old["metadata"]["name"] = new["metadata"]["name"] = "db"
    assert deleted(workload_deletions(g, write(STS, old, new, uid=sts.uid))) == [
        "db-1",
        "db-2",
    ]


def test_item14_suspending_a_job_and_cronjob_history_limits() -> None:
    job = node("j", JOB)
    pod = node("j-x", POD, job, aura="red")
    g = graph(job, pod)
    running: dict[str, Any] = {"spec": {"suspend": False}}
    assert deleted(
        workload_deletions(g, write(JOB, running, {"spec": {"suspend": True}}, uid=job.uid))
    ) == ["j-x"]
    cron = node("nightly", CRONJOB)
    old_job = node("nightly-1", JOB, cron, aura="red")
    old_pod = node("nightly-1-p", POD, old_job)
    g = graph(cron, old_job, old_pod)
    before = {"spec": {"successfulJobsHistoryLimit": 3}}
    after = {"spec": {"successfulJobsHistoryLimit": 0}}
    out = workload_deletions(g, write(CRONJOB, before, after, uid=cron.uid))
    assert deleted(out) == ["nightly-1", "nightly-1-p"]
    assert "successfulJobsHistoryLimit" in out[0].note


def test_item15_a_new_selector_adopts_orphans_only() -> None:
    bare = node("bare", POD, None, aura="red", app="web")
    owned = node("owned", POD, node("other", RS), aura="red", app="web")
    g = graph(bare, owned)
    rs = workload(0, labels={"app": "web"})
    out = adoptions(g, write(RS, None, rs))
    assert deleted(out) == ["bare"]
    assert "adopts 1 pods" in out[0].note
    # Unchanged selector: no new adoption. A Job's generated selector adopts nothing.
    assert adoptions(g, write(RS, rs, rs)) == []
    assert adoptions(g, write(JOB, None, rs)) == []
    # A ReplicationController's selector is a plain map.
    rc = {"spec": {"selector": {"app": "web"}}}
    assert deleted(adoptions(g, write(RC, None, rc))) == ["bare"]


def test_item15_a_deployment_adopts_orphan_replicasets_and_their_pods() -> None:
    orphan_rs = node("old", RS, None, app="web")
    pod = node("old-p", POD, orphan_rs, aura="red")
    out = adoptions(graph(orphan_rs, pod), write(DEPLOY, None, workload()))
    assert deleted(out) == ["old", "old-p"]


def _pod_object(name: str, owner: Node | None = None, **labels: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "t", "uid": f"uid-{name}",
                            "labels": labels}  # fmt: skip
    if owner is not None:
        ref = {"apiVersion": "apps/v1", "kind": owner.kind, "name": owner.name, "uid": owner.uid}
        meta["ownerReferences"] = [{**ref, "controller": True}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta}


def _stored(name: str, selector: Any, **meta: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "uid": f"uid-{name}", **meta},
        "spec": {"selector": selector},
    }


def test_relabelling_an_orphan_into_a_selector_puts_the_workloads_pods_at_stake() -> None:
    """A bare pod relabelled into a ReplicaSet's selector is adopted, and the ReplicaSet
    then deletes one pod too many: any of its own, or the relabelled one."""
    rs = node("web-1", RS)
    locked = node("web-1-a", POD, rs, aura="red", app="web")
    bare = node("bare", POD, None, app="other")
    g = graph(rs, locked, bare)
    old, new = _pod_object("bare", app="other"), _pod_object("bare", app="web")
    patch = info("PATCH", "/api/v1/namespaces/t/pods/bare")
    assert adopter_kinds(patch, old, new) == (RS, RC, STS, ResourceRef("apps", "v1", "daemonsets"),
                                              JOB)  # fmt: skip
    stored = [(RS, _stored("web-1", {"matchLabels": {"app": "web"}}))]
    out = orphan_adoptions(g, patch, old, new, stored)
    assert deleted(out) == ["bare", "web-1-a"]
    assert "selector of replicasets web-1" in out[0].note
    # The relabelled pod is judged with its new labels.
    red = _pod_object("bare", app="web", aura="red")
    judged = {
        i.input.name: i.input.old_labels for i in orphan_adoptions(g, patch, old, red, stored)
    }
    assert judged["bare"] == {"app": "web", "aura": "red"}
    # Out of every selector, or already under it by the old labels: nothing new.
    assert orphan_adoptions(g, patch, old, _pod_object("bare", app="x"), stored) == []
    assert orphan_adoptions(g, patch, new, _pod_object("bare", app="web", t="1"), stored) == []
    # A workload being deleted adopts nothing.
    going = [(RS, _stored("web-1", {"matchLabels": {"app": "web"}}, deletionTimestamp="t"))]
    assert orphan_adoptions(g, patch, old, new, going) == []
    # A ReplicationController's selector is a plain map; a Job's is what it stores (a
    # generated controller-uid selector can be matched by a forged label).
    rc = [(RC, _stored("web-1", {"app": "web"}))]
    assert deleted(orphan_adoptions(g, patch, old, new, rc)) == ["bare", "web-1-a"]
    job_sel = {"matchLabels": {"batch.kubernetes.io/controller-uid": "u"}}
    forged = _pod_object("bare", **{"batch.kubernetes.io/controller-uid": "u"})
    job = [(JOB, _stored("web-1", job_sel))]
    assert deleted(orphan_adoptions(g, patch, old, forged, job)) == ["bare", "web-1-a"]


def test_what_no_controller_adopts_is_not_asked_about() -> None:
    patch = info("PATCH", "/api/v1/namespaces/t/pods/bare")
    old, new = _pod_object("bare", app="other"), _pod_object("bare", app="web")
    # Owned by a controller already, being deleted, labels unchanged, another kind or
    # subresource, a create: no adoption to look for.
    owned = _pod_object("bare", node("web-1", RS), app="web")
    assert adopter_kinds(patch, old, owned) == ()
    going = {**new, "metadata": {**new["metadata"], "deletionTimestamp": "t"}}
    assert adopter_kinds(patch, old, going) == ()
    assert adopter_kinds(patch, old, old) == ()
    assert adopter_kinds(info("PATCH", "/api/v1/namespaces/t/configmaps/bare"), old, new) == ()
    assert adopter_kinds(info("PATCH", "/api/v1/namespaces/t/pods/bare/ephemeralcontainers"),
                         old, new) == ()  # fmt: skip
    assert adopter_kinds(info("POST", "/api/v1/namespaces/t/pods/bare/binding"), None, new) == ()
    assert adopter_kinds(info("POST", "/api/v1/namespaces/t/pods"), None, owned) == ()
    # The status subresource may change a pod's labels: asked about.
    assert adopter_kinds(info("PUT", "/api/v1/namespaces/t/pods/bare/status"), old, new)
    # A ReplicaSet: by Deployments.
    rs_patch = info("PATCH", "/apis/apps/v1/namespaces/t/replicasets/old")
    assert adopter_kinds(rs_patch, old, new) == (DEPLOY,)


def test_a_pod_created_under_a_selector_puts_the_workloads_pods_at_stake() -> None:
    """A bare pod created with labels a ReplicaSet selects is adopted like a relabelled
    one: the created pod (with its labels) and the ReplicaSet's pods are at stake."""
    rs = node("web-1", RS)
    g = graph(rs, node("web-1-a", POD, rs, aura="red", app="web"))
    create = info("POST", "/api/v1/namespaces/t/pods")
    new = _pod_object("new", app="web")
    new["metadata"].pop("uid")
    assert adopter_kinds(create, None, new)
    # Server-side apply of a missing pod creates it too.
    assert adopter_kinds(info("PATCH", "/api/v1/namespaces/t/pods/new"), None, new)
    stored = [(RS, _stored("web-1", {"matchLabels": {"app": "web"}}))]
    out = orphan_adoptions(g, create, None, new, stored)
    assert deleted(out) == ["new", "web-1-a"]
    assert out[0].note.startswith("its labels put it under the selector of replicasets web-1")
    # Even a selector that matches no label at all selects it: no old labels to compare.
    anything = [
        (RS, _stored("web-1", {"matchExpressions": [{"key": "x", "operator": "DoesNotExist"}]}))
    ]
    assert deleted(orphan_adoptions(g, create, None, new, anything)) == ["new", "web-1-a"]
    assert orphan_adoptions(g, create, None, _pod_object("new", app="x"), stored) == []


def test_a_statefulset_adopts_only_a_pod_named_after_it() -> None:
    sts = node("db", STS)
    locked = node("db-0", POD, sts, aura="red", app="db")
    g = graph(sts, locked)
    stored = [(STS, _stored("db", {"matchLabels": {"app": "db"}}))]
    for name, adopted in (("db-7", True), ("db-x", False), ("other-1", False), ("db-", False)):
        patch = info("PATCH", f"/api/v1/namespaces/t/pods/{name}")
        old, new = _pod_object(name, aura="red"), _pod_object(name, aura="red", app="db")
        # The StatefulSet deletes only the adopted pod (an ordinal it does not run).
        assert deleted(orphan_adoptions(g, patch, old, new, stored)) == ([name] if adopted else [])


def test_a_deployment_adopting_a_relabelled_replicaset_puts_both_at_stake() -> None:
    dep = node("web", DEPLOY)
    current = node("web-2", RS, dep, app="web")
    current_pod = node("web-2-a", POD, current, aura="red")
    orphan = node("old", RS, None, app="x")
    orphan_pod = node("old-a", POD, orphan, aura="red")
    g = graph(dep, current, current_pod, orphan, orphan_pod)
    patch = info("PATCH", "/apis/apps/v1/namespaces/t/replicasets/old")
    old = {
        "kind": "ReplicaSet",
        "metadata": {"name": "old", "uid": "uid-old", "labels": {"app": "x"}},
    }
    new = {**old, "metadata": {**old["metadata"], "labels": {"app": "web"}}}
    stored = [(DEPLOY, _stored("web", {"matchLabels": {"app": "web"}}))]
    assert deleted(orphan_adoptions(g, patch, old, new, stored)) == [
        "old", "old-a", "web-2", "web-2-a"]  # fmt: skip


def test_item16_a_pod_template_is_a_create_of_its_pods() -> None:
    out = template_creations(write(DEPLOY, None, workload(labels=RED)))
    assert [(i.input.operation, i.input.resource.resource, i.input.new_labels) for i in out] == [
        (Operation.CREATE, "pods", RED),
        (Operation.CREATE, "replicasets", RED),
    ]
    cron = {
        "spec": {
            "jobTemplate": {
                "metadata": {"labels": {"kind": "job"}},
                "spec": {"template": {"metadata": {"labels": RED}}},
            }
        }
    }
    out = template_creations(write(CRONJOB, None, cron, name="nightly"))
    assert [(i.input.resource.resource, i.input.new_labels) for i in out] == [
        ("pods", RED),
        ("jobs", {"kind": "job"}),
    ]
    # An update that creates no pod (a label on the workload itself) implies no creation.
    relabeled = workload(labels=RED)
    relabeled["metadata"]["labels"] = {"x": "y"}
    assert template_creations(write(DEPLOY, workload(labels=RED), relabeled)) == []
    assert template_creations(write(DEPLOY, workload(1, labels=RED), workload(2))) != []


LOCKS = load_locks_from_text(
    """
apiVersion: klock.rnemet.dev/v1
kind: Lock
metadata: {name: short, namespace: t}
spec: {operations: [DELETE], matcher: {aura: red}, exclusive: {name: jonny-op}}
---
apiVersion: klock.rnemet.dev/v1
kind: Lock
metadata: {name: full, namespace: other}
spec: {operations: [UPDATE], exclusive: {name: "system:serviceaccount:t:robot"}}
""",
    source="test",
)


def test_item18_the_exempt_service_account_by_name_or_full_username() -> None:
    assert [lk.key for lk in exempt_service_accounts(LOCKS, "t", "jonny-op")] == ["t/short"]
    assert exempt_service_accounts(LOCKS, "elsewhere", "jonny-op") == []
    assert [lk.key for lk in exempt_service_accounts(LOCKS, "t", "robot")] == ["other/full"]
    assert exempt_service_accounts(LOCKS, "t", "default") == []


def test_item18_the_service_account_a_pod_or_template_runs_as() -> None:
    assert service_account_of(POD, {"spec": {"serviceAccountName": "jonny-op"}}) == "jonny-op"
    assert service_account_of(POD, {"spec": {"serviceAccount": "legacy"}}) == "legacy"
    assert service_account_of(POD, {"spec": {}}) == "default"
    tmpl = workload()
    tmpl["spec"]["template"]["spec"]["serviceAccountName"] = "jonny-op"
    assert service_account_of(DEPLOY, tmpl) == "jonny-op"


LABELS = st.dictionaries(st.sampled_from("abc"), st.sampled_from("xy"), max_size=3)


@given(LABELS, LABELS)
def test_selector_matchlabels_and_the_equivalent_expressions_agree(
    selector: dict[str, str], labels: dict[str, str]
) -> None:
    exprs = [{"key": k, "operator": "In", "values": [v]} for k, v in selector.items()]
    expected = bool(selector) and all(labels.get(k) == v for k, v in selector.items())
    assert selector_matches({"matchLabels": selector}, labels) is expected
    assert selector_matches({"matchExpressions": exprs}, labels) is expected
    assert selector_matches(selector, labels, plain=True) is expected


def test_selector_operators() -> None:
    def sel(op: str, *values: str) -> dict[str, Any]:
        return {"matchExpressions": [{"key": "a", "operator": op, "values": list(values)}]}

    assert selector_matches(sel("NotIn", "x"), {"a": "y"})
    assert selector_matches(sel("NotIn", "x"), {})
    assert not selector_matches(sel("NotIn", "x"), {"a": "x"})
    assert selector_matches(sel("Exists"), {"a": ""}) and not selector_matches(sel("Exists"), {})
    assert selector_matches(sel("DoesNotExist"), {}) and not selector_matches(sel("Bogus"), {})
    assert not selector_matches({}, {"a": "x"})  # an empty selector selects nothing here


# ---------------------------------------------------------------------------------------
# One request


def info(method: str, path: str) -> Any:
    from klockproxy.core.requests import classify

    return classify(method, path)


def engine(text: str) -> Any:
    from klockproxy.core.engine import Engine

    return Engine(load_locks_from_text(text, source="test"))


DELETE_LOCK_T = engine(
    "apiVersion: klock.rnemet.dev/v1\nkind: Lock\nmetadata: {name: l, namespace: t}\n"
    "spec: {operations: [DELETE], matcher: {aura: red}}\n"
)


def test_the_fast_path_question() -> None:
    from klockproxy.core.consequences import needs_consequence_judgement as needs

    # Cluster-scoped objects may own anything: judged while DELETE locks exist.
    assert needs(info("DELETE", "/apis/rbac.authorization.k8s.io/v1/clusterroles/x"), DELETE_LOCK_T)
    assert needs(info("PATCH", "/api/v1/namespaces/t"), DELETE_LOCK_T)
    # Namespaced objects own only their namespace's: elsewhere, nothing to judge.
    assert not needs(info("DELETE", "/api/v1/namespaces/free/configmaps/x"), DELETE_LOCK_T)
    assert needs(info("POST", "/api/v1/namespaces/t/pods/p/eviction"), DELETE_LOCK_T)
    assert needs(info("PATCH", "/apis/apps/v1/namespaces/t/deployments/d/scale"), DELETE_LOCK_T)
    assert needs(info("POST", "/apis/apps/v1/namespaces/t/replicasets"), DELETE_LOCK_T)
    assert not needs(info("POST", "/api/v1/namespaces/t/configmaps"), DELETE_LOCK_T)
    # A pod created under a workload's selector is adopted (orphan_adoptions).
    assert needs(info("POST", "/api/v1/namespaces/t/pods"), DELETE_LOCK_T)
    assert not needs(info("POST", "/api/v1/namespaces/free/pods"), DELETE_LOCK_T)
    assert not needs(info("POST", "/api/v1/namespaces/t/pods/p/binding"), DELETE_LOCK_T)
    # The exempt identity: token requests and pods where a Lock exempts an account.
    exempting = engine(
        "apiVersion: klock.rnemet.dev/v1\nkind: Lock\nmetadata: {name: l, namespace: t}\n"
        "spec: {operations: [UPDATE], exclusive: {name: jonny-op}}\n"
    )
    assert needs(info("POST", "/api/v1/namespaces/t/serviceaccounts/x/token"), exempting)
    assert needs(info("POST", "/api/v1/namespaces/t/pods"), exempting)
    assert not needs(info("POST", "/api/v1/namespaces/other/pods"), exempting)
    assert not needs(info("GET", "/api/v1/namespaces/t/pods"), exempting)


def test_an_owner_on_a_namespace_puts_its_objects_at_stake() -> None:
    from klockproxy.core.consequences import write_consequences

    ns_node = Node("uid-t", ResourceRef("", "v1", "namespaces"), "Namespace", "", "t", {})
    inside = node("locked", CM, None, **RED)
    g = graph(ns_node, inside)
    old = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "t", "uid": "uid-t"}}
    new = {**old, "metadata": {**old["metadata"], "ownerReferences": [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "ghost", "uid": "nobody"}]}}  # fmt: skip
    out = write_consequences(g, info("PATCH", "/api/v1/namespaces/t"), old, new)
    assert deleted(out) == ["locked", "t"]
    # Created with an owner that resolves: nothing at stake; with a dangling one: itself.
    created = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "n", "labels": RED,
               "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap",
                                    "name": "locked", "uid": "uid-locked"}]}}  # fmt: skip
    assert (
        write_consequences(g, info("POST", "/api/v1/namespaces/t/configmaps"), None, created) == []
    )
    created["metadata"]["ownerReferences"][0]["uid"] = "nobody"
    out = write_consequences(g, info("POST", "/api/v1/namespaces/t/configmaps"), None, created)
    assert deleted(out) == ["n"]


def test_without_a_graph_a_child_created_by_its_controller_is_not_a_deletion() -> None:
    """No ownership index (the least-privilege RBAC): a ReplicaSet creating its pods or a
    kubelet updating one must not be judged as deleting it because its owner is unknown."""
    from klockproxy.core.consequences import write_consequences

    unknown = Graph(known=False)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-1", "labels": RED,
           "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web",
                                "uid": "uid-rs", "controller": True}]}}  # fmt: skip
    create = info("POST", "/api/v1/namespaces/t/pods")
    assert write_consequences(unknown, create, None, pod) == []
    stored = {**pod, "metadata": {**pod["metadata"], "uid": "uid-web-1", "namespace": "t"}}
    status = {**stored, "status": {"phase": "Running"}}
    update = info("PUT", "/api/v1/namespaces/t/pods/web-1/status")
    assert write_consequences(unknown, update, stored, status) == []
    # The same graph known and empty: the owner is really gone, the create is collected.
    assert deleted(write_consequences(Graph(), create, None, pod)) == ["web-1"]


def test_deleting_a_crd_puts_its_custom_resources_and_their_dependents_at_stake() -> None:
    from klockproxy.core.consequences import deletion_consequences

    widget_ref = ResourceRef("example.com", "v1", "widgets")
    widget = Node("uid-w", widget_ref, "Widget", "t", "w", {})
    secret = node("made", CM, widget, **RED)
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com", "uid": "uid-crd"},
        "spec": {"group": "example.com", "names": {"kind": "Widget", "plural": "widgets"}},
    }
    path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.example.com"
    out = deletion_consequences(graph(widget, secret), info("DELETE", path), [crd], None)
    assert deleted(out) == ["made", "w"]


def test_item18_a_workload_template_running_as_the_exempt_account() -> None:
    from klockproxy.core.consequences import identity_locks

    tmpl = workload()
    tmpl["spec"]["template"]["spec"]["serviceAccountName"] = "jonny-op"
    path = "/apis/apps/v1/namespaces/t/deployments"
    how, found = identity_locks(LOCKS, info("POST", path), None, tmpl)
    assert how == "a pod template that runs as service account jonny-op"
    assert [lk.key for lk in found] == ["t/short"]
    # An update that leaves the pod template alone hands out nothing new.
    relabeled = {**tmpl, "metadata": {"name": "web", "labels": {"x": "y"}}}
    assert identity_locks(LOCKS, info("PATCH", path + "/web"), tmpl, relabeled) == ("", [])
    # exec into a pod that runs as it.
    pod_ = {"spec": {"serviceAccountName": "jonny-op"}}
    how, found = identity_locks(LOCKS, info("POST", "/api/v1/namespaces/t/pods/p/exec"), pod_, None)
    assert found and "running code in a pod" in how


OWNERS = [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "uid-rs"}]


@pytest.mark.parametrize(
    ("path", "old_meta", "new_meta", "new_extra"),
    [
        # A plain update, owners kept: nothing follows (the shortcut).
        (
            "/api/v1/namespaces/t/pods/p",
            {"ownerReferences": OWNERS},
            {"ownerReferences": OWNERS},
            {},
        ),
        # The shortcut must not swallow what the full rules find:
        ("/api/v1/namespaces/t/pods/p", {}, {"ownerReferences": OWNERS}, {}),
        (
            "/api/v1/namespaces/t/pods/p",
            {"uid": 5, "ownerReferences": OWNERS},
            {"ownerReferences": OWNERS},
            {},
        ),
        ("/apis/batch/v1/namespaces/t/jobs/p", {}, {}, {"spec": {"ttlSecondsAfterFinished": 0}}),
        ("/apis/apps/v1/namespaces/t/deployments/p", {}, {}, {"spec": {"replicas": 0}}),
        ("/api/v1/namespaces/t/pods/p/ephemeralcontainers", {}, {}, {}),
    ],
)
def test_the_shortcut_answers_as_the_full_rules(
    path: str, old_meta: dict[str, Any], new_meta: dict[str, Any], new_extra: dict[str, Any]
) -> None:
    """The answer with the shortcut equals the answer of the rules it skips (computed on a
    copy whose metadata the shortcut does not accept)."""
    from klockproxy.core import consequences
    from klockproxy.core.consequences import write_consequences

    kind = "Job" if "jobs" in path else "Deployment" if "deployments" in path else "Pod"
    api = "batch/v1" if kind == "Job" else "apps/v1" if kind == "Deployment" else "v1"
    base = {"name": "p", "namespace": "t", "uid": "uid-p", "labels": RED}
    old = {"apiVersion": api, "kind": kind, "metadata": {**base, **old_meta}, "spec": {}}
    new = {"apiVersion": api, "kind": kind, "metadata": {**base, **new_meta}, **new_extra}
    new.setdefault("spec", {})
    request = info("PUT", path)
    fast = write_consequences(graph(), request, old, new)
    original = consequences._nothing_follows
    consequences._nothing_follows = lambda *a: False  # type: ignore[assignment]
    try:
        full = write_consequences(graph(), request, old, new)
    finally:
        consequences._nothing_follows = original  # type: ignore[assignment]
    assert fast == full
    # Only the plain update with its owners kept takes the shortcut.
    shortcut = path.endswith("/pods/p") and old_meta == new_meta
    assert original(request, consequences.parent_ref(request), old, new) is shortcut
    if not shortcut and "deployments" not in path:
        assert fast, "the full rules find something here"
