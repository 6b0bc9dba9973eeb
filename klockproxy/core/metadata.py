"""Decode request bodies (JSON, YAML, Kubernetes protobuf) and read labels from them.

The proxy decides on what the API server will store, so decoding follows the API server:

* The media type is matched case-insensitively, parameters (``charset``) are ignored, and an
  empty ``Content-Type`` means JSON (the API server's first supported media type).
* JSON: ``application/json`` and any ``application/*+json``. ``NaN``/``Infinity``, invalid
  UTF-8 and duplicate object keys (Go merges them, Python keeps the last) are refused.
* YAML: ``application/yaml`` and any ``*+yaml`` (``application/apply-patch+yaml``); safe
  loading only, exactly one document, no implicit timestamps (an unquoted ``2024-01-01``
  stays a string, as the API server's YAML-to-JSON conversion keeps it), string keys only,
  no duplicate keys, no ``<<`` merge keys, and a bound on alias expansion ("billion laughs").
* Protobuf: ``application/vnd.kubernetes.protobuf`` via ``core.protobuf``.

Every failure is a ``DecodeError`` with a precise message; the top level must be an object.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any, TypeAlias

import yaml

from klockproxy.core.errors import DecodeError
from klockproxy.core.protobuf import PROTOBUF_CONTENT_TYPE, decode_k8s_protobuf

JSON: TypeAlias = Any

# How many values a decoded YAML document may expand to (aliases make small texts huge).
MAX_YAML_NODES = 1_000_000
_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPED_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")


class _YamlLoader(yaml.SafeLoader):
    """SafeLoader without the implicit timestamp type, refusing duplicate and merge keys.

    PyYAML lets the last duplicate win silently; a server that kept the first (or refused
    the document) would store other labels than the ones judged, so duplicates are refused.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                # go-yaml (the API server's YAML decoder) applies ``<<`` merges in document
                # order, so a merge after an explicit key overwrites it; PyYAML lets the
                # explicit key win. Parsers that disagree on the labels cannot be trusted.
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    "YAML merge keys (<<) are not accepted: parsers disagree on their order",
                    key_node.start_mark,
                )
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue  # unhashable: the base class reports it
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r}",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def media_type(content_type: str) -> str:
    """``"Application/JSON; charset=utf-8"`` -> ``"application/json"``."""
    return content_type.split(";", 1)[0].strip().lower()


def _fix_surrogates(text: str) -> str:
    """Join escaped surrogate pairs and replace lone surrogates with U+FFFD, as Go does.

    Python's json and PyYAML keep ``"\\ud83d\\ude00"`` as two code points (PyYAML) or a
    lone ``"\\ud83d"`` as is (both); Go's JSON decoding joins pairs and replaces the rest.
    """
    if not _SURROGATE.search(text):
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def check_json_values(value: JSON, what: str = "document") -> None:
    """Refuse what JSON cannot carry (non-string keys, dates, bytes, NaN) in a YAML result,
    and join escaped surrogate pairs in its strings (in place).

    Also bounds the number of values visited, since YAML aliases can make a small text
    expand to billions of values.
    """
    budget = MAX_YAML_NODES
    stack = [value]
    while stack:
        item = stack.pop()
        budget -= 1
        if budget < 0:
            raise DecodeError(f"{what} expands to more than {MAX_YAML_NODES} values")
        if isinstance(item, dict):
            for key, child in list(item.items()):
                if not isinstance(key, str):
                    raise DecodeError(f"{what}: non-string key {key!r}")
                if isinstance(child, str):
                    item[key] = _fix_surrogates(child)
                else:
                    stack.append(child)
                fixed = _fix_surrogates(key)
                if fixed != key:
                    item[fixed] = item.pop(key)
        elif isinstance(item, list):
            for index, child in enumerate(item):
                if isinstance(child, str):
                    item[index] = _fix_surrogates(child)
                else:
                    stack.append(child)
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise DecodeError(f"{what}: non-finite number {item!r}")
        elif item is not None and not isinstance(item, str | int | bool):
            raise DecodeError(f"{what}: unsupported value of type {type(item).__name__}")


def load_yaml_documents(data: bytes | str, what: str = "YAML") -> list[JSON]:
    """Every document of a YAML stream, loaded safely and checked to be JSON-compatible."""
    try:
        # _YamlLoader is a SafeLoader subclass: no arbitrary Python objects.
        docs = list(yaml.load_all(data, Loader=_YamlLoader))
    except yaml.YAMLError as e:
        raise DecodeError(f"invalid {what}: {_one_line(str(e))}") from e
    except (UnicodeDecodeError, RecursionError) as e:
        raise DecodeError(f"invalid {what}: {e}") from e
    for index, doc in enumerate(docs):
        if isinstance(doc, str):
            docs[index] = doc = _fix_surrogates(doc)
        check_json_values(doc, f"{what} document {index}")
    return docs


def load_yaml_object(data: bytes | str, what: str = "YAML body") -> dict[str, JSON]:
    """Exactly one YAML document, which must be an object (JSON is read as JSON first)."""
    if data.lstrip()[:1] in (b"{", "{"):
        # JSON is YAML, but PyYAML trips on some valid JSON (tabs as whitespace).
        try:
            return load_json_object(data.encode() if isinstance(data, str) else data, what)
        except DecodeError:
            pass
    docs = load_yaml_documents(data, what)
    if len(docs) != 1:
        raise DecodeError(f"{what} must hold exactly one document, found {len(docs)}")
    doc = docs[0]
    if doc is None:
        raise DecodeError(f"{what} is empty")
    if not isinstance(doc, dict):
        raise DecodeError(f"{what} must be an object, not {_json_type(doc)}")
    return doc


def _reject_constant(name: str) -> float:
    # Python's json accepts NaN/Infinity; the API server does not.
    raise ValueError(f"invalid JSON constant {name}")


def _refuse_duplicate_keys(pairs: list[tuple[str, JSON]]) -> dict[str, JSON]:
    # Python keeps the last of two equal keys; Go's encoding/json (the API server, for
    # built-in kinds) decodes both into the same struct or map, MERGING them: with
    # ``"labels":{"aura":"red"},"labels":{}`` it stores aura=red where Python sees no label.
    # Judging other labels than the ones stored would be a bypass, so duplicates are refused.
    doc = dict(pairs)
    if len(doc) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key!r} in a JSON object")
            seen.add(key)
    return doc


def load_json_object(data: bytes, what: str = "JSON body") -> dict[str, JSON]:
    """Parse a JSON object (DecodeError for anything else, duplicate keys included)."""
    try:
        doc = json.loads(
            data, parse_constant=_reject_constant, object_pairs_hook=_refuse_duplicate_keys
        )
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise DecodeError(f"invalid {what}: {e}") from e
    if not isinstance(doc, dict):
        raise DecodeError(f"{what} must be an object, not {_json_type(doc)}")
    if _ESCAPED_SURROGATE.search(data):
        check_json_values(doc, what)
    return doc


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
    if mtype == "application/json" or (
        mtype.startswith("application/") and mtype.endswith("+json")
    ):
        return load_json_object(body)
    if mtype in ("application/yaml", "text/yaml") or mtype.endswith("+yaml"):
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
        raise DecodeError(f"metadata must be an object, not {_json_type(metadata)}")
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
        raise DecodeError(f"metadata.{field} must be an object, not {_json_type(value)}")
    out: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(item, str):
            raise DecodeError(f"metadata.{field}[{key!r}] must be a string, not {_json_type(item)}")
        out[key] = item
    return out


def labels_of(obj: Mapping[str, JSON]) -> dict[str, str]:
    """A copy of ``metadata.labels`` (``{}`` when absent); DecodeError for a non-string value."""
    return _string_map(obj, "labels")


def annotations_of(obj: Mapping[str, JSON]) -> dict[str, str]:
    """A copy of ``metadata.annotations`` (``{}`` when absent)."""
    return _string_map(obj, "annotations")


def _json_type(value: JSON) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _one_line(text: str) -> str:
    return " ".join(text.split())
