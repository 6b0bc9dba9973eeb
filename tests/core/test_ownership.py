"""The garbage collector's graph walk: what it deletes after a deletion or an owner write."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from klockproxy.core.ownership import (
    Graph,
    Node,
    OwnerRef,
    after_owner_write,
    collected,
    collected_now,
    metadata_object,
    node_of,
    owner_refs_of,
)
from klockproxy.core.types import ResourceRef

CM = ResourceRef("", "v1", "configmaps")
SA = ResourceRef("", "v1", "serviceaccounts")
POD = ResourceRef("", "v1", "pods")
CLUSTERROLE = ResourceRef("rbac.authorization.k8s.io", "v1", "clusterroles")
KINDS = {CM: "ConfigMap", SA: "ServiceAccount", POD: "Pod", CLUSTERROLE: "ClusterRole"}


def node(name: str, resource: ResourceRef = CM, *owners: Node, ns: str = "t") -> Node:
    refs = tuple(OwnerRef(o.resource.group, o.kind, o.name, o.uid) for o in owners)
    namespace = "" if resource is CLUSTERROLE else ns
    return Node(f"uid-{name}", resource, KINDS[resource], namespace, name, {}, refs)


def graph(*nodes: Node) -> Graph:
    g = Graph()
    for n in nodes:
        g.upsert(n)
    return g


def names(nodes: list[Node]) -> list[str]:
    return sorted(n.name for n in nodes)


def test_a_chain_through_any_kind_is_followed() -> None:
    # ConfigMap -> ServiceAccount -> Pod (item 7: no list of kinds to search).
    owner = node("owner")
    sa = node("sa", SA, owner)
    pod = node("pod", POD, sa)
    assert names(collected(graph(owner, sa, pod), [owner.uid])) == ["pod", "sa"]


def test_a_dependent_survives_while_another_owner_exists() -> None:
    # Item 11: deleting one of two owners deletes nothing; deleting both deletes it.
    a, b = node("a"), node("b")
    pod = node("pod", POD, a, b)
    g = graph(a, b, pod)
    assert collected(g, [a.uid]) == []
    assert names(collected(g, [a.uid, b.uid])) == ["pod"]


def test_a_dangling_other_owner_does_not_keep_a_dependent() -> None:
    a = node("a")
    ghost = Node("uid-ghost", CM, "ConfigMap", "t", "ghost", {})
    pod = node("pod", POD, a, ghost)
    assert names(collected(graph(a, pod), [a.uid])) == ["pod"]


def test_a_cluster_scoped_owner_of_namespaced_objects() -> None:
    # Item 6: a ClusterRole owning a pod in a namespace.
    role = node("role", CLUSTERROLE)
    pod = node("pod", POD, role)
    assert names(collected(graph(role, pod), [role.uid])) == ["pod"]


def test_a_namespaced_owner_in_another_namespace_does_not_resolve() -> None:
    other = node("other", ns="elsewhere")
    pod = node("pod", POD, other)
    g = graph(other, pod)
    assert not g.resolves(pod, pod.owners[0])
    assert collected_now(g, pod)


def test_a_reference_with_the_uid_but_another_name_does_not_resolve() -> None:
    a = node("a")
    wrong = Node("uid-pod", POD, "Pod", "t", "pod", {}, (OwnerRef("", "ConfigMap", "b", a.uid),))
    assert collected_now(graph(a, wrong), wrong)


def test_orphaning_keeps_direct_dependents_with_no_other_owner() -> None:
    a = node("a")
    pod = node("pod", POD, a)
    ghost = Node("uid-ghost", CM, "ConfigMap", "t", "ghost", {})
    half = node("half", POD, a, ghost)
    g = graph(a, pod, half)
    # The reference to the orphaning owner is removed; what is left dangles.
    assert names(collected(g, [a.uid], orphan=True)) == ["half"]


def test_a_dangling_owner_written_on_an_unlocked_owner_collects_its_dependents() -> None:
    # Item 2: ghost owner on ga-owner -> ga-owner and the locked pod go.
    owner = node("ga-owner")
    pod = node("pod", POD, owner)
    g = graph(owner, pod)
    ghost = OwnerRef("", "ConfigMap", "ghost", "uid-random")
    patched = Node(owner.uid, CM, "ConfigMap", "t", "ga-owner", {}, (ghost,))
    assert names(after_owner_write(g, owner, patched)) == ["ga-owner", "pod"]
    # A write that keeps the owners as they are puts nothing at stake.
    assert after_owner_write(g, owner, owner) == []


def test_removing_the_only_resolving_owner_leaves_a_dangling_one() -> None:
    a = node("a")
    ghost = Node("uid-ghost", CM, "ConfigMap", "t", "ghost", {})
    pod = node("pod", POD, a, ghost)
    g = graph(a, pod)
    only_ghost = Node(pod.uid, POD, "Pod", "t", "pod", {}, pod.owners[1:])
    assert names(after_owner_write(g, pod, only_ghost)) == ["pod"]


def test_a_write_that_keeps_dangling_owners_puts_nothing_at_stake() -> None:
    """The owner is gone (being deleted): the collector deletes the pod with or without this
    write (a kubelet's status update, an annotation), so refusing it protects nothing."""
    ghost = Node("uid-ghost", CM, "ConfigMap", "t", "ghost", {})
    pod = node("pod", POD, ghost)
    g = graph(pod)
    assert collected_now(g, pod)
    relabelled = Node(pod.uid, POD, "Pod", "t", "pod", {"a": "b"}, pod.owners)
    assert after_owner_write(g, pod, relabelled) == []


def test_an_unknown_graph_assumes_owners_exist_except_where_references_are_removed() -> None:
    """No index consulted: nothing follows from an owner's absence from the graph, but a
    write that removes owner references may leave only dangling ones: still at stake."""
    a, b = node("a"), node("b")
    pod = node("pod", POD, a, b)
    unknown = Graph(known=False)
    same = Node(pod.uid, POD, "Pod", "t", "pod", {"x": "y"}, pod.owners)
    assert after_owner_write(unknown, pod, same) == []
    only_b = Node(pod.uid, POD, "Pod", "t", "pod", {}, pod.owners[1:])
    assert names(after_owner_write(unknown, pod, only_b)) == ["pod"]
    # Known, and b resolves: nothing at stake.
    assert after_owner_write(graph(a, b, pod), pod, only_b) == []
    # A new reference hands the object over whatever the graph knows.
    c = node("c")
    more = Node(pod.uid, POD, "Pod", "t", "pod", {}, (*pod.owners, *node("d", CM, c).owners))
    assert names(after_owner_write(unknown, pod, more)) == ["pod"]


def test_graph_upsert_and_remove_keep_the_reverse_edges() -> None:
    a, b = node("a"), node("b")
    pod = node("pod", POD, a)
    g = graph(a, b, pod)
    assert names(g.dependents_of(a.uid)) == ["pod"]
    g.upsert(node("pod", POD, b))
    assert g.dependents_of(a.uid) == []
    assert names(g.dependents_of(b.uid)) == ["pod"]
    assert names(g.owners_up(pod.uid)) == ["b"]
    g.remove(pod.uid)
    assert g.dependents_of(b.uid) == [] and len(g) == 2


@given(
    ops=st.lists(
        st.tuples(st.booleans(), st.sampled_from(["a", "b", "c"]), st.sampled_from([CM, POD]),
                  st.sampled_from(["t", "u"])),
        max_size=12,
    )
)  # fmt: skip
def test_holds_any_says_what_a_scan_says(ops: list[tuple[bool, str, ResourceRef, str]]) -> None:
    """``holds_any`` (kept up to date on every upsert and remove, an object moving between
    kinds or namespaces under the same uid included) answers as a scan of the graph would."""
    g = Graph()
    for add, name, resource, ns in ops:
        if add:
            g.upsert(node(name, resource, ns=ns))
        else:
            g.remove(f"uid-{name}")
        for ref in (CM, POD):
            for where in ("t", "u"):
                scan = any(n.resource == ref and n.namespace == where for n in g)
                assert g.holds_any(ref.group, ref.resource, where) is scan


def test_node_of_reads_partial_object_metadata() -> None:
    obj = {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {
            "name": "p",
            "namespace": "t",
            "uid": "u",
            "labels": {"aura": "red"},
            "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "r"},
                7,
            ],
        },
    }
    n = node_of(obj, POD, "Pod")
    assert n is not None and n.kind == "Pod" and n.labels == {"aura": "red"}
    assert n.owners == (OwnerRef("apps", "ReplicaSet", "rs", "r"),)
    assert owner_refs_of({"metadata": {"ownerReferences": "x"}}) == ()
    assert node_of({"metadata": {"name": "no-uid"}}, POD) is None


# ---------------------------------------------------------------------------------------
# Properties: random forests of owner references (some dangling, some across namespaces).

UIDS = [f"u{i}" for i in range(8)]


@st.composite
def graphs(draw: st.DrawFn) -> Graph:
    g = Graph()
    for uid in UIDS[: draw(st.integers(1, len(UIDS)))]:
        ns = draw(st.sampled_from(["", "t", "x"]))
        owners = draw(st.lists(st.sampled_from([*UIDS, "ghost"]), max_size=3, unique=True))
        refs = tuple(OwnerRef("", "ConfigMap", f"n-{o}", o) for o in owners if o != uid)
        g.upsert(Node(uid, CM, "ConfigMap", ns, f"n-{uid}", {}, refs))
    return g


@settings(max_examples=200, deadline=None)
@given(graphs(), st.lists(st.sampled_from(UIDS), min_size=1, max_size=3), st.booleans())
def test_collected_is_exactly_the_collectors_fixpoint(
    g: Graph, roots: list[str], orphan: bool
) -> None:
    out = collected(g, roots, orphan=orphan)
    gone = set(roots) | {n.uid for n in out}
    dropped = set(roots) if orphan else set()
    for n in g:
        if n.uid in roots:
            continue
        remaining = [r for r in n.owners if r.uid not in dropped]
        all_absent = bool(remaining) and all(
            r.uid in gone or not g.resolves(n, r) for r in remaining
        )
        touched = any(r.uid in gone for r in n.owners)
        # Sound: everything collected has no resolving owner left. Complete: everything
        # that lost its last owner to this deletion is collected.
        if n.uid in {m.uid for m in out}:
            assert all_absent and touched
        elif touched:
            assert not all_absent


def test_an_object_is_found_by_name_and_stood_in_for_by_its_metadata() -> None:
    stored = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "cfg", "namespace": "t", "uid": "uid-1", "resourceVersion": "9",
                     "labels": {"aura": "red"}, "annotations": {"big": "x" * 100}},
        "data": {"n": "1"},
    }  # fmt: skip
    found = node_of(stored, CM, "ConfigMap")
    assert found is not None and found.version == "9" and not found.deleting
    g = graph(found)
    assert g.named("", "configmaps", "t", "cfg") is found
    assert g.named("", "configmaps", "other", "cfg") is None
    assert g.named("", "secrets", "t", "cfg") is None
    # What the judgement reads of it: identity, version, labels; nothing else is kept.
    assert metadata_object(found) == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "cfg", "namespace": "t", "uid": "uid-1", "resourceVersion": "9",
                     "labels": {"aura": "red"}},
    }  # fmt: skip
    # Deleted and created again under the same name: the DELETED event of the old uid may
    # come after the new object's ADDED; the name keeps pointing at the new one.
    again = node_of({**stored, "metadata": {**stored["metadata"], "uid": "uid-2"}}, CM)
    assert again is not None
    g.upsert(again)
    g.remove("uid-1")
    assert g.named("", "configmaps", "t", "cfg") is again
    g.remove("uid-2")
    assert g.named("", "configmaps", "t", "cfg") is None
    terminating = {**stored, "metadata": {**stored["metadata"], "deletionTimestamp": "now"}}
    assert (gone := node_of(terminating, CM)) is not None and gone.deleting
