"""Owner references and what controllers delete behind the proxy's back.

The garbage collector deletes an object once its owner is gone (and the dependents of a
deleted object unless it is deleted with ``propagationPolicy=Orphan``); the TTL controller
deletes a finished Job once ``spec.ttlSecondsAfterFinished`` passed. These helpers tell which
writes let that happen, and which kinds the proxy searches for dependents.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from klockproxy.core.metadata import kind_of, labels_of, object_meta
from klockproxy.core.types import AdmissionInput, Operation, ResourceRef

# (operation, name, old labels, new labels, kind) -> the AdmissionInput of this request.
InputMaker = Callable[
    [Operation, str, Mapping[str, str] | None, Mapping[str, str] | None, str], AdmissionInput
]

# What controllers and operators commonly create as dependents (custom resources aside).
DEPENDENT_KINDS = (
    ResourceRef("", "v1", "pods"),
    ResourceRef("apps", "v1", "replicasets"),
    ResourceRef("batch", "v1", "jobs"),
    ResourceRef("", "v1", "persistentvolumeclaims"),
    ResourceRef("", "v1", "configmaps"),
    ResourceRef("", "v1", "secrets"),
    ResourceRef("", "v1", "services"),
    ResourceRef("apps", "v1", "deployments"),
    ResourceRef("apps", "v1", "statefulsets"),
    ResourceRef("apps", "v1", "daemonsets"),
)
DEPENDENTS_NOTE = (
    "the garbage collector deletes the dependents of a deleted object; delete it with "
    "propagationPolicy=Orphan (kubectl delete --cascade=orphan) to keep them"
)
OWNER_NOTE = (
    "the write lets a controller delete the object later (a new or changed owner reference: "
    "the garbage collector deletes an object whose owner is gone; a Job's "
    "ttlSecondsAfterFinished: the TTL controller deletes the finished Job)"
)


def owner_refs(obj: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``metadata.ownerReferences`` (the entries that are objects)."""
    refs = object_meta(obj).get("ownerReferences")
    return [ref for ref in refs if isinstance(ref, dict)] if isinstance(refs, list) else []


def owner_uids(obj: Mapping[str, Any]) -> set[str]:
    """The uids of the object's owners."""
    return {str(ref.get("uid", "")) for ref in owner_refs(obj)}


def owner_keys(obj: Mapping[str, Any]) -> set[tuple[str, str, str, str]]:
    """(group, kind, name, uid) of each owner: the garbage collector resolves an owner by
    group/kind/name and compares the uid, so changing any of them can orphan the object."""
    keys = set()
    for ref in owner_refs(obj):
        api_version = str(ref.get("apiVersion", ""))
        group = api_version.split("/", 1)[0] if "/" in api_version else ""
        keys.add(
            (group, str(ref.get("kind", "")), str(ref.get("name", "")), str(ref.get("uid", "")))
        )
    return keys


def owner_inputs(
    current: Mapping[str, Any],
    new: Mapping[str, Any],
    inp: InputMaker,
    name: str,
    kind: str,
) -> list[AdmissionInput]:
    """DELETE judgements for a write that lets a controller delete the object later.

    The garbage collector deletes an object once its owner is gone, and the TTL controller a
    finished Job once ``spec.ttlSecondsAfterFinished`` passed, behind the proxy's back: giving
    a DELETE-locked object a new or changed owner reference, or a Job a new TTL, is judged
    like deleting it, on its old and on its new labels. Removing owners only keeps objects
    alive.
    """
    # The common case, cheaply: the owner references are unchanged.
    same = object_meta(new).get("ownerReferences") == object_meta(current).get("ownerReferences")
    new_owner = not same and bool(owner_keys(new) - owner_keys(current))
    if not new_owner and not ttl_changed(current, new):
        return []
    old_labels, new_labels = labels_of(dict(current)), labels_of(dict(new))
    out = [inp(Operation.DELETE, name, old_labels, None, kind)]
    if new_labels != old_labels:
        out.append(inp(Operation.DELETE, name, new_labels, None, kind))
    return out


def ttl_changed(current: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """A Job whose ``spec.ttlSecondsAfterFinished`` is set or changed by this write."""
    if kind_of(current) != "Job" or not str(current.get("apiVersion", "")).startswith("batch/"):
        return False

    def ttl(obj: Mapping[str, Any]) -> Any:
        spec = obj.get("spec")
        return spec.get("ttlSecondsAfterFinished") if isinstance(spec, dict) else None

    after = ttl(new)
    return after is not None and after != ttl(current)


# What the API server changes on every write; not a change the writer made.
_VOLATILE_METADATA = frozenset({"resourceVersion", "managedFields", "generation", "finalizers"})


def being_deleted(obj: Mapping[str, Any]) -> bool:
    """Whether ``obj`` is already being deleted (``metadata.deletionTimestamp`` is set: a
    DELETE was accepted, and only finalizers or a grace period keep it)."""
    return bool(object_meta(obj).get("deletionTimestamp"))


def finishes_deletion(current: Mapping[str, Any], new: Mapping[str, Any], subresource: str) -> bool:
    """Whether an UPDATE of an object being deleted only helps that deletion complete.

    Controllers remove their finalizers, and the kubelet reports the status of a terminating
    pod before it removes the pod; refusing them leaves the object Terminating forever, and it
    cannot be saved anyway. Allowed: a write that changes no labels and adds no owner, and
    that either goes to ``status`` or changes nothing but removes finalizers.
    """
    if not being_deleted(current):
        return False
    old_meta, new_meta = object_meta(current), object_meta(new)
    if labels_of(dict(current)) != labels_of(dict(new)) or owner_keys(new) - owner_keys(current):
        return False
    if subresource == "status":
        return True
    old_finalizers, new_finalizers = old_meta.get("finalizers"), new_meta.get("finalizers")
    if not isinstance(old_finalizers, list | None) or not isinstance(new_finalizers, list | None):
        return False
    if not set(map(str, new_finalizers or ())) <= set(map(str, old_finalizers or ())):
        return False

    # The status is left out too: a write to the object itself does not store it where the
    # kind has a status subresource, a protobuf body's status is not decoded (core.protobuf),
    # and the status of an object whose deletion was judged protects nothing.
    def rest(obj: Mapping[str, Any], meta: Mapping[str, Any]) -> dict[str, Any]:
        kept = {k: v for k, v in meta.items() if k not in _VOLATILE_METADATA}
        return {**{k: v for k, v in obj.items() if k != "status"}, "metadata": kept}

    return rest(current, old_meta) == rest(new, new_meta)
