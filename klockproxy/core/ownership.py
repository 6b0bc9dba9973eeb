"""The garbage collector's view of owner references, and what it deletes (pure).

The garbage collector follows ``metadata.ownerReferences`` by uid, for every kind,
namespaced and cluster-scoped. An owner reference *resolves* when an object with that uid
exists with the referenced group, kind and name, in the dependent's namespace or cluster-scoped
(a namespaced owner must live in its dependent's namespace; a cluster-scoped dependent cannot
have a namespaced owner). The collector deletes a dependent once NONE of its owner references
resolves any more: while one owner still exists the dependent stays (the reference to the
gone owner is removed). ``blockOwnerDeletion`` only orders a foreground deletion; it never
decides whether a dependent is deleted. A dangling owner reference (nobody with that uid)
therefore makes the collector delete the dependent unless another owner exists.

Deliberately conservative where the collector's behaviour depends on state the proxy cannot
see (an owner kind it does not serve, a cluster-scoped dependent naming a namespaced kind,
which the collector leaves alone): such a reference counts as absent, so the proxy refuses
rather than lets a deletion through.

:class:`Graph` holds the objects (:class:`Node`: identity, labels, owners); the functions
answer "which objects would the collector delete if these were deleted" and "... if this
object had these owner references".
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from klockproxy.core.metadata import object_meta
from klockproxy.core.types import ResourceRef


@dataclass(frozen=True, slots=True)
class OwnerRef:
    """One entry of ``metadata.ownerReferences`` as the collector resolves it."""

    group: str
    kind: str
    name: str
    uid: str
    controller: bool = False  # the managing controller (adoption looks for none)


@dataclass(frozen=True, slots=True)
class Node:
    """One object as the collector sees it (metadata only)."""

    uid: str
    resource: ResourceRef
    kind: str
    namespace: str  # "" for cluster-scoped objects
    name: str
    labels: Mapping[str, str]
    owners: tuple[OwnerRef, ...] = ()
    version: str = ""  # metadata.resourceVersion
    deleting: bool = False  # metadata.deletionTimestamp is set


def group_of(api_version: str) -> str:
    """The group of an ``apiVersion`` (``""`` for the core group's ``v1``)."""
    return api_version.split("/", 1)[0] if "/" in api_version else ""


def owner_refs_of(obj: Mapping[str, Any]) -> tuple[OwnerRef, ...]:
    """The owner references of ``obj`` (entries that are not objects are skipped)."""
    refs = object_meta(obj).get("ownerReferences")
    if not isinstance(refs, list):
        return ()
    out = []
    for ref in refs:
        if isinstance(ref, dict):
            out.append(
                OwnerRef(
                    group_of(str(ref.get("apiVersion") or "")),
                    str(ref.get("kind") or ""),
                    str(ref.get("name") or ""),
                    str(ref.get("uid") or ""),
                    ref.get("controller") is True,
                )
            )
    return tuple(out)


def node_of(obj: Mapping[str, Any], resource: ResourceRef, kind: str = "") -> Node | None:
    """The node of an object (full or PartialObjectMetadata); None without a uid."""
    meta = object_meta(obj)
    uid = meta.get("uid")
    if not isinstance(uid, str) or not uid:
        return None
    raw_labels = meta.get("labels")
    labels = {str(k): str(v) for k, v in raw_labels.items()} if isinstance(raw_labels, dict) else {}
    raw_kind = obj.get("kind")
    # A PartialObjectMetadata's kind is "PartialObjectMetadata": the caller says the real one.
    real_kind = kind or (raw_kind if isinstance(raw_kind, str) else "")
    return Node(
        uid=uid,
        resource=resource,
        kind=real_kind,
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        labels=labels,
        owners=owner_refs_of(obj),
        version=str(meta.get("resourceVersion") or ""),
        deleting=bool(meta.get("deletionTimestamp")),
    )


def metadata_object(node: Node) -> dict[str, Any]:
    """The object as far as a node holds it: its identity, version and labels (no owner
    references: only owner-less nodes are stood in for by this, see ``Graph.named``)."""
    ref = node.resource
    meta: dict[str, Any] = {
        "name": node.name,
        "uid": node.uid,
        "resourceVersion": node.version,
        "labels": dict(node.labels),
    }
    if node.namespace:
        meta["namespace"] = node.namespace
    return {
        "apiVersion": f"{ref.group}/{ref.version}" if ref.group else ref.version,
        "kind": node.kind,
        "metadata": meta,
    }


class Graph:
    """Objects by uid, with the reverse edges (owner uid -> dependent uids).

    ``known=False`` marks a stand-in for a graph nobody consulted (no ownership index, or a
    namespace it does not follow): it holds nothing, and an owner it does not hold may well
    exist, so nothing is concluded from an owner's absence from it.
    """

    def __init__(self, *, known: bool = True) -> None:
        self.known = known
        self._nodes: dict[str, Node] = {}
        self._dependents: dict[str, set[str]] = {}
        # (group, resource, namespace, name) -> uid: the object a request names.
        self._named: dict[tuple[str, str, str, str], str] = {}
        # (group, resource, namespace) -> how many objects: whether any is held, at once.
        self._counts: dict[tuple[str, str, str], int] = {}

    def __len__(self) -> int:
        return len(self._nodes)

    def __iter__(self) -> Iterator[Node]:
        return iter(list(self._nodes.values()))

    def get(self, uid: str) -> Node | None:
        """The object with this uid, if known."""
        return self._nodes.get(uid)

    def named(self, group: str, resource: str, namespace: str, name: str) -> Node | None:
        """The object of that resource (any version of the group), namespace and name, if
        known."""
        uid = self._named.get((group, resource, namespace, name))
        return None if uid is None else self._nodes.get(uid)

    def upsert(self, node: Node) -> None:
        """Add or replace an object."""
        self._unlink(node.uid)
        self._nodes[node.uid] = node
        key = (node.resource.group, node.resource.resource, node.namespace, node.name)
        self._named[key] = node.uid
        kind = key[:3]
        self._counts[kind] = self._counts.get(kind, 0) + 1
        for ref in node.owners:
            self._dependents.setdefault(ref.uid, set()).add(node.uid)

    def remove(self, uid: str) -> None:
        """Forget an object (deleted)."""
        self._unlink(uid)
        self._nodes.pop(uid, None)

    def _unlink(self, uid: str) -> None:
        old = self._nodes.get(uid)
        if old is None:
            return
        key = (old.resource.group, old.resource.resource, old.namespace, old.name)
        if self._named.get(key) == uid:
            del self._named[key]
        kind = key[:3]
        left = self._counts.get(kind, 0) - 1
        if left > 0:
            self._counts[kind] = left
        else:
            self._counts.pop(kind, None)
        for ref in old.owners:
            deps = self._dependents.get(ref.uid)
            if deps is not None:
                deps.discard(uid)
                if not deps:
                    del self._dependents[ref.uid]

    def dependents_of(self, uid: str) -> list[Node]:
        """The objects that name ``uid`` as an owner."""
        return [self._nodes[d] for d in sorted(self._dependents.get(uid, ())) if d in self._nodes]

    def resolves(self, dependent: Node, ref: OwnerRef) -> bool:
        """Whether the collector finds this owner of ``dependent`` (see the module docstring)."""
        owner = self._nodes.get(ref.uid)
        if owner is None:
            return False
        if (owner.resource.group, owner.kind, owner.name) != (ref.group, ref.kind, ref.name):
            return False
        return owner.namespace in ("", dependent.namespace)

    def descendants(self, uid: str) -> list[Node]:
        """Every object that names ``uid`` as an owner, transitively (what a controller that
        deletes its children directly may reach, whatever their other owners)."""
        seen: dict[str, Node] = {}
        todo = [uid]
        while todo:
            for dep in self.dependents_of(todo.pop()):
                if dep.uid not in seen and dep.uid != uid:
                    seen[dep.uid] = dep
                    todo.append(dep.uid)
        return list(seen.values())

    def holds_any(self, group: str, resource: str, namespace: str) -> bool:
        """Whether any object of that resource (any version of the group) is held in
        ``namespace`` (a look-up, not a scan)."""
        return (group, resource, namespace) in self._counts

    def in_namespace(self, namespace: str, resource: str) -> list[Node]:
        """The objects of one resource (plural, any group) in one namespace."""
        return [
            n
            for n in self._nodes.values()
            if n.namespace == namespace and n.resource.resource == resource
        ]

    def owners_up(self, uid: str) -> list[Node]:
        """Every object the given one depends on, transitively (its owners up the chain)."""
        seen: dict[str, Node] = {}
        todo = [uid]
        while todo:
            node = self._nodes.get(todo.pop())
            if node is None:
                continue
            for ref in node.owners:
                owner = self._nodes.get(ref.uid)
                if owner is not None and owner.uid not in seen and self.resolves(node, ref):
                    seen[owner.uid] = owner
                    todo.append(owner.uid)
        return list(seen.values())


def collected(
    graph: Graph,
    roots: Iterable[str],
    *,
    orphan: bool = False,
    extra: Iterable[Node] = (),
) -> list[Node]:
    """What the collector deletes once the objects ``roots`` (uids) are deleted.

    ``orphan``: the roots are deleted with ``propagationPolicy=Orphan``: the collector removes
    the references to them from their dependents instead of counting them absent (a dependent
    then goes only if all its other owners are absent). Dependents of collected objects are
    always followed (the collector deletes them in the background or foreground, never
    orphaning). ``extra`` are objects to consider beside the graph's (the object a write is
    about, as it would be stored). The roots themselves are not in the answer.
    """
    root_set = set(roots)
    gone: set[str] = set(root_set)
    extra_nodes = {n.uid: n for n in extra}
    out: list[Node] = []
    todo = sorted(root_set)
    while todo:
        uid = todo.pop()
        candidates = {d.uid: d for d in graph.dependents_of(uid)}
        for node in extra_nodes.values():
            if any(ref.uid == uid for ref in node.owners):
                candidates[node.uid] = node
        for dep in candidates.values():
            if dep.uid in gone:
                continue
            if _absent_owners(graph, dep, gone, root_set if orphan else set()):
                gone.add(dep.uid)
                out.append(dep)
                todo.append(dep.uid)
    return out


def _absent_owners(graph: Graph, dep: Node, gone: set[str], dropped: set[str]) -> bool:
    """Whether, with ``gone`` deleted and references to ``dropped`` removed, none of the
    dependent's remaining owner references resolves (and some remain)."""
    remaining = [ref for ref in dep.owners if ref.uid not in dropped]
    if not remaining:
        return False
    return all(ref.uid in gone or not graph.resolves(dep, ref) for ref in remaining)


def collected_now(graph: Graph, node: Node) -> bool:
    """Whether the collector deletes ``node`` as it stands (every owner reference absent)."""
    return _absent_owners(graph, node, set(), set())


def after_owner_write(graph: Graph, old: Node | None, new: Node) -> list[Node]:
    """What the collector deletes, now or later, because ``old`` is stored as ``new``.

    A new or retargeted owner reference hands the object to that owner's fate (or, when it
    dangles, to the collector at once); removing references can leave only dangling ones
    (assumed so when the graph is not known). Either way the object itself and everything
    its deletion collects are at stake; the object itself comes first in the answer. A write
    that leaves the references as they were puts nothing at stake: whatever the collector
    does with the object (its owner gone) it does with or without the write - refusing the
    write would protect nothing, and would stop the kubelet and controllers writing to
    objects whose owner is being deleted.
    """
    old_refs = set(old.owners) if old is not None else set()
    new_refs = set(new.owners)
    if not new_refs - old_refs:
        if new_refs == old_refs or not new_refs:
            return []
        if graph.known and not collected_now(graph, new):
            return []
    return [new, *collected(graph, [new.uid])]
