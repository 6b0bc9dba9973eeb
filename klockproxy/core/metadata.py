"""Decode request bodies (JSON, YAML, Kubernetes protobuf) and read metadata from them.

JSON and YAML are read by ``core.codec`` (one strictness for the whole project, see there);
protobuf by ``core.protobuf``. The top level of a body must be an object.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from klockproxy.core.codec import (
    JSON,
    is_json_type,
    is_yaml_type,
    json_type_name,
    load_json_object,
    load_yaml_object,
    media_type,
)
from klockproxy.core.errors import DecodeError
from klockproxy.core.protobuf import PROTOBUF_CONTENT_TYPE, decode_k8s_protobuf


def decode_body(
    body: bytes, content_type: str, *, strict_protobuf: bool = False
) -> dict[str, JSON]:
    """Decode a request body into a dict by its content type.

    ``strict_protobuf``: refuse protobuf kinds or fields that cannot be fully decoded
    (``UnsupportedProtobufError``, a ``DecodeError``); the default decodes at least the
    metadata of any kind, which is what the proxy needs. Raises ``DecodeError``.
    """
    mtype = media_type(content_type) or "application/json"
    if not body:
        raise DecodeError(f"empty request body ({mtype})")
    if is_json_type(mtype):
        return load_json_object(body)
    if is_yaml_type(mtype):
        return load_yaml_object(body)
    if mtype == PROTOBUF_CONTENT_TYPE:
        return decode_k8s_protobuf(body, strict=strict_protobuf)
    raise DecodeError(f"unsupported content type {content_type!r}")


def metadata_of(obj: Mapping[str, JSON]) -> dict[str, JSON]:
    """The ``metadata`` object of ``obj`` (``{}`` when absent or null)."""
    metadata = obj.get("metadata")
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise DecodeError(f"metadata must be an object, not {json_type_name(metadata)}")
    return metadata


def object_meta(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The ``metadata`` object of ``obj``, ``{}`` when it is not an object (never raises)."""
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def kind_of(obj: Mapping[str, Any]) -> str:
    """``kind`` of ``obj``, ``""`` when it is not a string."""
    kind = obj.get("kind")
    return kind if isinstance(kind, str) else ""


def _string_map(obj: Mapping[str, JSON], field: str) -> dict[str, str]:
    value = metadata_of(obj).get(field)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DecodeError(f"metadata.{field} must be an object, not {json_type_name(value)}")
    out: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(item, str):
            raise DecodeError(
                f"metadata.{field}[{key!r}] must be a string, not {json_type_name(item)}"
            )
        out[key] = item
    return out


def labels_of(obj: Mapping[str, JSON]) -> dict[str, str]:
    """A copy of ``metadata.labels`` (``{}`` when absent); DecodeError for a non-string value."""
    return _string_map(obj, "labels")


def annotations_of(obj: Mapping[str, JSON]) -> dict[str, str]:
    """A copy of ``metadata.annotations`` (``{}`` when absent)."""
    return _string_map(obj, "annotations")
