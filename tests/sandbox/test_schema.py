"""Custom resources against their CRD schema: pruning, types, required, enum."""

from __future__ import annotations

from typing import Any

from klockproxy.crd import crd_object
from klockproxy.sandbox.schema import prune_and_validate

LOCK_SCHEMA: dict[str, Any] = crd_object()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _lock(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "klock.rnemet.dev/v1",
        "kind": "Lock",
        "metadata": {"name": "l"},
        "spec": spec,
    }


def test_a_valid_lock_is_unchanged() -> None:
    lock = _lock(operations=["DELETE"], matcher={"aura": "red"}, exclusive={"name": "j"})
    pruned, result = prune_and_validate(LOCK_SCHEMA, lock)
    assert pruned == lock
    assert not result.causes and not result.unknown


def test_unknown_fields_are_pruned_and_reported() -> None:
    pruned, result = prune_and_validate(LOCK_SCHEMA, {**_lock(operations=[], typo=1), "x": 2})
    assert result.unknown == ["spec.typo", "x"]
    assert pruned["spec"] == {"operations": []}
    assert "x" not in pruned


def test_wrong_types_are_causes_with_the_api_server_message() -> None:
    _, result = prune_and_validate(LOCK_SCHEMA, _lock(operations="DELETE", matcher={"a": 1}))
    assert [(c["field"], c["message"]) for c in result.causes] == [
        (
            "spec.operations",
            'Invalid value: "string": spec.operations in body must be of type array: "string"',
        ),
        (
            "spec.matcher.a",
            'Invalid value: "integer": spec.matcher.a in body must be of type string: "integer"',
        ),
    ]


def test_required_enum_nullable_and_preserve_unknown() -> None:
    schema = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "required": ["mode"],
                "properties": {
                    "mode": {"type": "string", "enum": ["a", "b"]},
                    "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                    "gone": {"type": "string"},
                    "port": {"x-kubernetes-int-or-string": True},
                },
            }
        },
    }
    obj = {"spec": {"mode": "c", "free": {"any": {"thing": 1}}, "gone": None, "port": "http"}}
    pruned, result = prune_and_validate(schema, obj)
    assert pruned["spec"] == {"mode": "c", "free": {"any": {"thing": 1}}, "port": "http"}
    assert [c["reason"] for c in result.causes] == ["FieldValueNotSupported"]
    _, result = prune_and_validate(schema, {"spec": {}})
    assert [(c["field"], c["message"]) for c in result.causes] == [("spec.mode", "Required value")]
