"""Owner references and Job TTLs: writes that let a controller delete the object later."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from klockproxy.core.owners import (
    being_deleted,
    finishes_deletion,
    owner_inputs,
    owner_keys,
    owner_uids,
    ttl_changed,
)
from klockproxy.core.types import AdmissionInput, Operation, ResourceRef, UserInfo


def inp(
    operation: Operation,
    name: str,
    old: Mapping[str, str] | None,
    new: Mapping[str, str] | None,
    kind: str = "",
) -> AdmissionInput:
    return AdmissionInput(
        operation=operation,
        namespace="default",
        resource=ResourceRef("", "v1", "configmaps"),
        name=name,
        user=UserInfo(""),
        old_labels=old,
        new_labels=new,
        kind=kind,
    )


def obj(labels: Mapping[str, str], *owners: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": "cm", "labels": dict(labels), "ownerReferences": list(owners)}}


OWNER = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "u1"}


def test_owner_keys_and_uids() -> None:
    assert owner_keys(obj({}, OWNER)) == {("apps", "Deployment", "web", "u1")}
    assert owner_uids(obj({}, OWNER, "not-an-object")) == {"u1"}  # type: ignore[arg-type]


def test_a_new_owner_is_judged_as_a_delete_on_old_and_new_labels() -> None:
    out = owner_inputs(obj({"a": "1"}), obj({"a": "2"}, OWNER), inp, "cm", "ConfigMap")
    assert [(i.operation, i.old_labels) for i in out] == [
        (Operation.DELETE, {"a": "1"}),
        (Operation.DELETE, {"a": "2"}),
    ]
    # Removing owners only keeps objects alive.
    assert owner_inputs(obj({}, OWNER), obj({}), inp, "cm", "ConfigMap") == []


def test_a_job_ttl_set_or_changed() -> None:
    job = {"apiVersion": "batch/v1", "kind": "Job", "spec": {}}
    with_ttl = {"apiVersion": "batch/v1", "kind": "Job", "spec": {"ttlSecondsAfterFinished": 5}}
    assert ttl_changed(job, with_ttl)
    assert not ttl_changed(with_ttl, with_ttl)
    assert not ttl_changed({"kind": "Job", "apiVersion": "example.com/v1"}, with_ttl)


def test_finishes_deletion_only_for_objects_being_deleted() -> None:
    def obj(**meta: object) -> dict[str, object]:
        return {"kind": "ConfigMap", "metadata": {"name": "c", "labels": {"a": "b"}, **meta},
                "data": {"k": "v"}}  # fmt: skip

    gone = {"deletionTimestamp": "2026-12-02T07:00:00Z"}
    held = obj(finalizers=["x", "y"], resourceVersion="1", **gone)
    assert being_deleted(held) and not being_deleted(obj())
    assert finishes_deletion(held, obj(finalizers=["y"], resourceVersion="2", **gone), "")
    assert not finishes_deletion(held, obj(finalizers=["x", "y", "z"], **gone), "")
    assert not finishes_deletion(held, {**obj(**gone), "data": {"k": "w"}}, "")
    assert not finishes_deletion(held, {**held, "metadata": {**held["metadata"], "labels": {}}}, "")
    assert finishes_deletion(held, {**held, "status": {"phase": "Done"}}, "status")
    assert not finishes_deletion(obj(finalizers=["x"]), obj(), "")
    # A controller's PUT of the object itself that drops its finalizer: the status it carries
    # (none when it came as protobuf, whose status is not decoded) is not stored by it.
    with_status = {**held, "status": {"replicas": 2}}
    assert finishes_deletion(with_status, obj(finalizers=["y"], **gone), "")
