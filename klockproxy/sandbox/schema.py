"""Custom resources against their CRD's structural schema: pruning and validation.

What the API server does for a custom resource: fields the schema does not know are pruned
(or, with ``fieldValidation=Strict`` as kubectl sends by default, refused with 400), ``null``
in a non-nullable field is dropped, and values are checked for ``type``, ``required``,
``enum`` and ``items``/``properties``/``additionalProperties``. Formats, patterns, numeric
bounds and CEL rules are not checked (the Lock CRD uses none).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from klockproxy.core.status import StatusCause

logger = logging.getLogger(__name__)

_ROOT_SKIP = ("apiVersion", "kind", "metadata")


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _matches_type(expected: str, value: Any) -> bool:
    actual = _type_name(value)
    if expected == "number":
        return actual in ("integer", "number")
    return actual == expected


@dataclass
class Result:
    causes: list[StatusCause] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)


def _check(schema: dict[str, Any], value: Any, path: str, result: Result) -> Any:
    """``value`` pruned to ``schema``; problems are appended to ``result``."""
    if schema.get("x-kubernetes-int-or-string"):
        if not isinstance(value, (int, str)) or isinstance(value, bool):
            result.causes.append(_type_cause(path, value, "integer or string"))
        return value
    expected = schema.get("type")
    if expected and not _matches_type(str(expected), value):
        result.causes.append(_type_cause(path, value, str(expected)))
        return value
    enum = schema.get("enum")
    if isinstance(enum, list) and enum and value not in enum:
        supported = ", ".join(json.dumps(e) for e in enum)
        result.causes.append(
            {
                "reason": "FieldValueNotSupported",
                "message": f"Unsupported value: {json.dumps(value)}: supported values: {supported}",
                "field": path,
            }
        )
    if isinstance(value, dict):
        return _check_object(schema, value, path, result)
    if isinstance(value, list):
        items = schema.get("items")
        if isinstance(items, dict):
            return [_check(items, v, f"{path}[{i}]", result) for i, v in enumerate(value)]
    return value


def _check_object(schema: dict[str, Any], value: dict[str, Any], path: str, result: Result) -> Any:
    properties = schema.get("properties")
    additional = schema.get("additionalProperties")
    preserve = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
    root = path == ""
    out: dict[str, Any] = {}
    for key, item in value.items():
        child = f"{path}.{key}" if path else key
        if root and key in _ROOT_SKIP:
            out[key] = item
            continue
        sub: dict[str, Any] | None = None
        if isinstance(properties, dict) and key in properties:
            sub = properties[key]
        elif isinstance(additional, dict):
            sub = additional
        elif additional is True or preserve or (properties is None and additional is None):
            out[key] = item
            continue
        else:
            result.unknown.append(child)
            continue
        if item is None and not (sub or {}).get("nullable"):
            continue
        out[key] = _check(sub or {}, item, child, result)
    for req in schema.get("required") or []:
        if req not in out:
            child = f"{path}.{req}" if path else str(req)
            result.causes.append(
                {"reason": "FieldValueRequired", "message": "Required value", "field": child}
            )
    return out


def _type_cause(path: str, value: Any, expected: str) -> StatusCause:
    actual = _type_name(value)
    return {
        "reason": "FieldValueTypeInvalid",
        "message": f'Invalid value: "{actual}": {path} in body must be of type {expected}: '
        f'"{actual}"',
        "field": path,
    }


def prune_and_validate(
    schema: dict[str, Any], obj: dict[str, Any]
) -> tuple[dict[str, Any], Result]:
    """The object pruned to its schema, and what was wrong with it."""
    result = Result()
    pruned = _check(schema, obj, "", result)
    return (pruned if isinstance(pruned, dict) else obj), result
