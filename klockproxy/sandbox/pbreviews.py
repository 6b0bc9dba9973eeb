"""Protobuf bodies of the review kinds (``kubectl auth can-i`` sends a SelfSubjectAccessReview
as protobuf), decoded with the wire-format helpers of ``klockproxy.core.protobuf``.

Only the request side (metadata name and spec) is decoded; an unknown field with a value
raises ``UnsupportedProtobufError`` so the server answers 415 rather than guess.
"""

from __future__ import annotations

import logging
from typing import Any, TypeAlias, Union

from klockproxy.core import protobuf
from klockproxy.core.errors import DecodeError

logger = logging.getLogger(__name__)

# field number -> (JSON name, "s" string | "ss" repeated string | nested schema)
Schema: TypeAlias = dict[int, tuple[str, Union[str, "Schema"]]]

_RESOURCE_ATTRIBUTES: Schema = {
    1: ("namespace", "s"),
    2: ("verb", "s"),
    3: ("group", "s"),
    4: ("version", "s"),
    5: ("resource", "s"),
    6: ("subresource", "s"),
    7: ("name", "s"),
}
_NON_RESOURCE_ATTRIBUTES: Schema = {1: ("path", "s"), 2: ("verb", "s")}
_ACCESS_SPEC: Schema = {
    1: ("resourceAttributes", _RESOURCE_ATTRIBUTES),
    2: ("nonResourceAttributes", _NON_RESOURCE_ATTRIBUTES),
    3: ("user", "s"),
    4: ("groups", "ss"),
    6: ("uid", "s"),
}
_SELF_ACCESS_SPEC: Schema = {
    1: ("resourceAttributes", _RESOURCE_ATTRIBUTES),
    2: ("nonResourceAttributes", _NON_RESOURCE_ATTRIBUTES),
}

SPECS: dict[tuple[str, str], Schema] = {
    ("authorization.k8s.io/v1", "SelfSubjectAccessReview"): _SELF_ACCESS_SPEC,
    ("authorization.k8s.io/v1", "SubjectAccessReview"): _ACCESS_SPEC,
    ("authorization.k8s.io/v1", "LocalSubjectAccessReview"): _ACCESS_SPEC,
    ("authorization.k8s.io/v1", "SelfSubjectRulesReview"): {1: ("namespace", "s")},
    ("authentication.k8s.io/v1", "TokenReview"): {1: ("token", "s"), 2: ("audiences", "ss")},
}


def _text(value: int | bytes, where: str) -> str:
    if not isinstance(value, bytes):
        raise DecodeError(f"{where}: expected a length-delimited field")
    try:
        return value.decode()
    except UnicodeDecodeError as e:
        raise DecodeError(f"{where}: invalid UTF-8") from e


def _decode(buf: bytes, schema: Schema, where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for number, _wire, value in protobuf.decode_fields(buf):
        spec = schema.get(number)
        if spec is None:
            raise protobuf.UnsupportedProtobufError(f"{where}: unknown field {number}")
        name, kind = spec
        path = f"{where}.{name}"
        if kind == "s":
            out[name] = _text(value, path)
        elif kind == "ss":
            out.setdefault(name, []).append(_text(value, path))
        else:
            if not isinstance(value, bytes):
                raise DecodeError(f"{path}: expected a message")
            assert not isinstance(kind, str)
            out[name] = _decode(value, kind, path)
    return out


def decode_review(body: bytes) -> dict[str, Any] | None:
    """The review object of a protobuf body, or None when it is not a review kind."""
    unknown = protobuf.unwrap_unknown(body)
    spec_schema = SPECS.get((unknown.api_version, unknown.kind))
    if spec_schema is None:
        return None
    obj: dict[str, Any] = {
        "apiVersion": unknown.api_version,
        "kind": unknown.kind,
        "metadata": {},
        "spec": {},
    }
    for number, _wire, value in protobuf.decode_fields(unknown.raw):
        if number == 1:
            if not isinstance(value, bytes):
                raise DecodeError("metadata: expected a message")
            obj["metadata"] = protobuf.decode_object_meta(value)
        elif number == 2:
            if not isinstance(value, bytes):
                raise DecodeError("spec: expected a message")
            obj["spec"] = _decode(value, spec_schema, "spec")
        elif number != 3:  # status is output only
            raise protobuf.UnsupportedProtobufError(f"{unknown.kind}: unknown field {number}")
    return obj
