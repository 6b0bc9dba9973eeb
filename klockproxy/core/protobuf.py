"""Kubernetes protobuf bodies: wire format, the ``runtime.Unknown`` envelope, ObjectMeta.

kubectl sends ``application/vnd.kubernetes.protobuf`` bodies for the built-in kinds it
creates itself (``create configmap|secret|namespace|serviceaccount|deployment|role|
rolebinding|clusterrole|token``, ``auth whoami``). Such a body is the 4-byte magic
``k8s\\x00`` followed by a ``runtime.Unknown`` message (1 typeMeta {1 apiVersion, 2 kind},
2 raw, 3 contentEncoding, 4 contentType) whose ``raw`` is the object.

Decoding is table-driven (``MessageSchema``): the result is the JSON-shaped dict the API
server would show, with Go's ``omitempty`` conventions (empty strings, zero numbers, false,
empty maps and lists are left out unless the Go field is a pointer; nested structs are
always present; an empty ``creationTimestamp`` is ``None``, JSON ``null``).

* Every kind: ``metadata`` (ObjectMeta without managedFields) — what the proxy needs.
* Fully: ConfigMap, Secret, Namespace, ServiceAccount, Role, ClusterRole, RoleBinding,
  ClusterRoleBinding, TokenRequest, SelfSubjectReview, TokenReview and the
  authorization.k8s.io/v1 reviews (``kubectl auth can-i``).
* Deployment: the fields ``kubectl create deployment`` sets (replicas, selector, strategy,
  template metadata, containers' name/image/command/args/workingDir/ports/env (values)/
  resources/volumeMounts/imagePullPolicy, ...), not the whole PodSpec.
* PodDisruptionBudget (``kubectl create poddisruptionbudget``): spec and status, except
  ``status.disruptedPods``.

``decode_k8s_protobuf(body, strict=True)`` refuses (``UnsupportedProtobufError``) any field
it does not know that carries a value, and kinds without a schema, so a server can answer
415 rather than silently drop data; ``strict=False`` (the proxy) skips unknown fields and
decodes only the metadata of unknown kinds.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeAlias

from klockproxy.core.errors import DecodeError

K8S_MAGIC = b"k8s\x00"
PROTOBUF_CONTENT_TYPE = "application/vnd.kubernetes.protobuf"

VARINT = 0
I64 = 1
LEN = 2
I32 = 5
_MAX_FIELD = (1 << 29) - 1

FieldValue: TypeAlias = int | bytes
JSON: TypeAlias = Any


class UnsupportedProtobufError(DecodeError):
    """Valid protobuf that this module cannot fully decode (a server should answer 415)."""


# --------------------------------------------------------------------------------------------
# Wire format
# --------------------------------------------------------------------------------------------


def decode_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Read a base-128 varint at ``pos``; returns ``(value, next position)``."""
    result = 0
    shift = 0
    n = len(buf)
    while True:
        if pos >= n:
            raise DecodeError("truncated varint")
        byte = buf[pos]
        pos += 1
        if shift == 63 and byte > 1:
            raise DecodeError("varint overflows 64 bits")
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise DecodeError("varint longer than 10 bytes")


def decode_fields(buf: bytes) -> list[tuple[int, int, FieldValue]]:
    """Split a message into ``(field number, wire type, value)`` in wire order.

    Varint, 64-bit and 32-bit values are unsigned ints; length-delimited values are bytes.
    Groups (wire types 3, 4), unknown wire types, field number 0 and truncation raise
    ``DecodeError``.
    """
    out: list[tuple[int, int, FieldValue]] = []
    pos = 0
    n = len(buf)
    while pos < n:
        key, pos = decode_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0 or number > _MAX_FIELD:
            raise DecodeError(f"invalid field number {number}")
        value: FieldValue
        if wire == VARINT:
            value, pos = decode_varint(buf, pos)
        elif wire == LEN:
            length, pos = decode_varint(buf, pos)
            if length > n - pos:
                raise DecodeError(f"field {number}: length {length} runs past the end")
            value = bytes(buf[pos : pos + length])
            pos += length
        elif wire == I64:
            if pos + 8 > n:
                raise DecodeError(f"field {number}: truncated 64-bit value")
            value = int.from_bytes(buf[pos : pos + 8], "little")
            pos += 8
        elif wire == I32:
            if pos + 4 > n:
                raise DecodeError(f"field {number}: truncated 32-bit value")
            value = int.from_bytes(buf[pos : pos + 4], "little")
            pos += 4
        elif wire in (3, 4):
            raise DecodeError(f"field {number}: protobuf groups are not supported")
        else:
            raise DecodeError(f"field {number}: invalid wire type {wire}")
        out.append((number, wire, value))
    return out


def encode_varint(value: int) -> bytes:
    """Base-128 varint; negative numbers as 64-bit two's complement (10 bytes)."""
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_tag(number: int, wire: int) -> bytes:
    """The key of a field."""
    return encode_varint((number << 3) | wire)


def encode_len_field(number: int, data: bytes) -> bytes:
    """A length-delimited field (bytes, string, embedded message, map entry)."""
    return encode_tag(number, LEN) + encode_varint(len(data)) + data


def encode_string_field(number: int, text: str) -> bytes:
    """A string field (UTF-8)."""
    return encode_len_field(number, text.encode())


def encode_varint_field(number: int, value: int) -> bytes:
    """A varint field (int32, int64, bool, enum)."""
    return encode_tag(number, VARINT) + encode_varint(value)


def encode_map_entry(number: int, key: str, value: str | bytes) -> bytes:
    """One entry of a ``map<string, string|bytes>`` field."""
    raw = value.encode() if isinstance(value, str) else value
    return encode_len_field(number, encode_string_field(1, key) + encode_len_field(2, raw))


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _len_value(value: FieldValue, where: str) -> bytes:
    """The bytes of a length-delimited field (callers check the wire type first)."""
    if not isinstance(value, bytes):
        raise DecodeError(f"{where}: expected a length-delimited value")
    return value


def _text(raw: bytes, where: str) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError as e:
        raise DecodeError(f"{where}: string is not valid UTF-8") from e


# --------------------------------------------------------------------------------------------
# runtime.Unknown envelope
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Unknown:
    """The ``runtime.Unknown`` envelope of a Kubernetes protobuf body, as ``unwrap_unknown``
    reads it: every field is set, ``""`` where the body has none (kubectl's ``contentEncoding``
    and ``contentType`` are empty)."""

    api_version: str
    kind: str
    raw: bytes
    content_encoding: str
    content_type: str


def unwrap_unknown(body: bytes) -> Unknown:
    """Check the ``k8s\\x00`` magic and decode the envelope; ``DecodeError`` otherwise."""
    if not body.startswith(K8S_MAGIC):
        raise DecodeError("protobuf body does not start with the Kubernetes magic 'k8s\\x00'")
    api_version = kind = encoding = ctype = ""
    raw = b""
    for number, wire, value in decode_fields(body[len(K8S_MAGIC) :]):
        if number in (1, 2, 3, 4) and wire != LEN:
            raise DecodeError(f"runtime.Unknown field {number}: wrong wire type {wire}")
        if number == 1:
            for tnum, twire, tvalue in decode_fields(_len_value(value, "typeMeta")):
                if tnum in (1, 2) and twire != LEN:
                    raise DecodeError(f"typeMeta field {tnum}: wrong wire type {twire}")
                if tnum == 1:
                    api_version = _text(_len_value(tvalue, "apiVersion"), "typeMeta.apiVersion")
                elif tnum == 2:
                    kind = _text(_len_value(tvalue, "kind"), "typeMeta.kind")
        elif number == 2:
            raw = _len_value(value, "raw")
        elif number == 3:
            encoding = _text(_len_value(value, "contentEncoding"), "contentEncoding")
        elif number == 4:
            ctype = _text(_len_value(value, "contentType"), "contentType")
    if not kind or not api_version:
        raise DecodeError("protobuf envelope has no apiVersion/kind")
    return Unknown(api_version, kind, raw, encoding, ctype)


def encode_unknown(
    api_version: str, kind: str, raw: bytes, *, content_encoding: str = "", content_type: str = ""
) -> bytes:
    """A complete protobuf body: magic + ``runtime.Unknown`` (as kubectl writes it)."""
    type_meta = encode_string_field(1, api_version) + encode_string_field(2, kind)
    return (
        K8S_MAGIC
        + encode_len_field(1, type_meta)
        + encode_len_field(2, raw)
        + encode_string_field(3, content_encoding)
        + encode_string_field(4, content_type)
    )


# --------------------------------------------------------------------------------------------
# Table-driven messages
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class F:
    """One field of a message schema.

    ``type``: string, bytes (base64 in JSON), bool, int, strings (repeated string), map
    (string->string), bytesmap (string->bytes, base64), message, messages (repeated),
    stringsmap (string->ExtraValue, a list of strings), time (metav1.Time), intorstr,
    quantitymap (string->resource.Quantity, as its string), zero (a message read as absent:
    Go clients send it with every field zero; a strict decode refuses anything else).
    ``pointer``: the Go field is a pointer, so a zero value is kept when present.
    """

    name: str
    type: str
    message: MessageSchema | None = None
    pointer: bool = False


MessageSchema: TypeAlias = Mapping[int, F]


def _schema_of(spec: F, path: str) -> MessageSchema:
    """The schema of an embedded message field (a table error if it names none)."""
    if spec.message is None:
        raise DecodeError(f"{path}: field {spec.name!r} has no message schema")
    return spec.message


_LEN_TYPES = frozenset(
    {"string", "bytes", "strings", "map", "bytesmap", "message", "messages", "stringsmap"}
    | {"time", "intorstr", "quantitymap", "zero"}
)


def _time_to_json(raw: bytes, where: str, strict: bool) -> str | None:
    if not raw:
        return None
    seconds = 0
    for number, wire, value in decode_fields(raw):
        if number == 1 and wire == VARINT and isinstance(value, int):
            seconds = _signed(value)
        elif strict and number not in (1, 2):
            raise UnsupportedProtobufError(f"{where}: unknown Time field {number}")
    # Like metav1.Time: nanoseconds are dropped (JSON carries whole seconds).
    try:
        when = datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError) as e:
        raise DecodeError(f"{where}: time out of range") from e
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def _map_entry(raw: bytes, where: str) -> tuple[str, bytes]:
    key, value = "", b""
    for number, wire, item in decode_fields(raw):
        if number in (1, 2) and wire != LEN:
            raise DecodeError(f"{where}: map entry field {number} has wire type {wire}")
        if number == 1:
            key = _text(_len_value(item, where), f"{where} key")
        elif number == 2:
            value = _len_value(item, where)
    return key, value


def _decode_message(buf: bytes, schema: MessageSchema, where: str, strict: bool) -> dict[str, JSON]:
    out: dict[str, JSON] = {}
    merged: dict[int, bytearray] = {}
    for number, wire, value in decode_fields(buf):
        spec = schema.get(number)
        if spec is None:
            if strict and value not in (0, b""):
                raise UnsupportedProtobufError(f"{where}: unsupported field number {number}")
            continue
        path = f"{where}.{spec.name}"
        expected = LEN if spec.type in _LEN_TYPES else VARINT
        if wire != expected:
            raise DecodeError(f"{path}: wire type {wire}, expected {expected}")
        kind = spec.type
        if kind == "message":
            # Repeated occurrences of an embedded message merge (protobuf semantics), which
            # is decoding their concatenation.
            buffer = merged.setdefault(number, bytearray())
            buffer.extend(_len_value(value, path))
            out[spec.name] = _decode_message(bytes(buffer), _schema_of(spec, path), path, strict)
            continue
        if isinstance(value, bytes):
            _decode_len(out, spec, value, path, strict)
        else:
            scalar: JSON = bool(value) if kind == "bool" else _signed(value)
            if scalar or spec.pointer:
                out[spec.name] = scalar
            else:
                out.pop(spec.name, None)
    return out


def _decode_len(out: dict[str, JSON], spec: F, raw: bytes, path: str, strict: bool) -> None:
    kind = spec.type
    name = spec.name
    if kind == "string":
        text = _text(raw, path)
        if text or spec.pointer:
            out[name] = text
        else:
            out.pop(name, None)
    elif kind == "bytes":
        if raw or spec.pointer:
            out[name] = base64.b64encode(raw).decode()
        else:
            out.pop(name, None)
    elif kind == "strings":
        out.setdefault(name, []).append(_text(raw, path))
    elif kind in ("map", "bytesmap", "stringsmap", "quantitymap"):
        key, value = _map_entry(raw, path)
        target = out.setdefault(name, {})
        if kind == "map":
            target[key] = _text(value, f"{path}[{key}]")
        elif kind == "bytesmap":
            target[key] = base64.b64encode(value).decode()
        elif kind == "quantitymap":
            target[key] = _decode_message(value, _QUANTITY, f"{path}[{key}]", strict).get(
                "string", ""
            )
        else:
            items = _decode_message(value, _EXTRA_VALUE, f"{path}[{key}]", strict)
            target[key] = items.get("items", [])
    elif kind == "messages":
        schema = _schema_of(spec, path)
        index = len(out.get(name, ()))
        out.setdefault(name, []).append(_decode_message(raw, schema, f"{path}[{index}]", strict))
    elif kind == "time":
        out[name] = _time_to_json(raw, path, strict)
    elif kind == "intorstr":
        fields = _decode_message(raw, _INT_OR_STRING, path, strict)
        out[name] = fields.get("strVal", "") if fields.get("type") == 1 else fields.get("intVal", 0)
    elif kind == "zero":
        # Never stored from this body: a strict decode (which would store it) refuses a
        # value it would silently lose.
        if strict and any(value not in (0, b"") for _, _, value in decode_fields(raw)):
            raise UnsupportedProtobufError(f"{path}: a {name} that is not zero is not supported")
    else:  # pragma: no cover - the schemas below only use the types above
        raise DecodeError(f"{path}: schema type {kind!r} unknown")


def _encode_message(obj: Mapping[str, JSON], schema: MessageSchema, where: str) -> bytes:
    out = bytearray()
    for number, spec in schema.items():
        if spec.name not in obj:
            continue
        value = obj[spec.name]
        path = f"{where}.{spec.name}"
        try:
            out += _encode_field(number, spec, value, path)
        except (TypeError, ValueError, AttributeError) as e:
            raise DecodeError(f"{path}: cannot encode {type(value).__name__}: {e}") from e
    return bytes(out)


def _str(value: JSON) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _encode_field(number: int, spec: F, value: JSON, path: str) -> bytes:
    kind = spec.type
    if kind == "string":
        return encode_string_field(number, _str(value))
    if kind == "bytes":
        return encode_len_field(number, base64.b64decode(value, validate=True))
    if kind == "bool":
        return encode_varint_field(number, 1 if value else 0)
    if kind == "int":
        if not isinstance(value, int):
            raise TypeError("not an integer")
        return encode_varint_field(number, value)
    if kind == "strings":
        return b"".join(encode_string_field(number, _str(v)) for v in value)
    if kind == "map":
        return b"".join(encode_map_entry(number, k, _str(v)) for k, v in value.items())
    if kind == "bytesmap":
        return b"".join(
            encode_map_entry(number, k, base64.b64decode(v, validate=True))
            for k, v in value.items()
        )
    if kind == "quantitymap":
        return b"".join(
            encode_map_entry(number, k, encode_string_field(1, str(v))) for k, v in value.items()
        )
    if kind == "stringsmap":
        return b"".join(
            encode_map_entry(number, k, b"".join(encode_string_field(1, _str(i)) for i in v))
            for k, v in value.items()
        )
    if kind == "message":
        return encode_len_field(number, _encode_message(value, _schema_of(spec, path), path))
    if kind == "messages":
        schema = _schema_of(spec, path)
        return b"".join(
            encode_len_field(number, _encode_message(v, schema, f"{path}[{i}]"))
            for i, v in enumerate(value)
        )
    if kind == "time":
        if value is None:
            return encode_len_field(number, b"")
        when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        return encode_len_field(number, encode_varint_field(1, int(when.timestamp())))
    if kind == "zero":
        return b""
    if kind == "intorstr":
        if isinstance(value, str):
            inner = encode_varint_field(1, 1) + encode_string_field(3, value)
        else:
            inner = encode_varint_field(1, 0) + encode_varint_field(2, int(value))
        return encode_len_field(number, inner)
    raise DecodeError(f"{path}: schema type {kind!r} unknown")  # pragma: no cover


def _s(name: str) -> F:
    return F(name, "string")


def _msg(name: str, schema: MessageSchema) -> F:
    return F(name, "message", schema)


def _msgs(name: str, schema: MessageSchema) -> F:
    return F(name, "messages", schema)


_QUANTITY: MessageSchema = {1: _s("string")}
_EXTRA_VALUE: MessageSchema = {1: F("items", "strings")}
_INT_OR_STRING: MessageSchema = {1: F("type", "int"), 2: F("intVal", "int"), 3: _s("strVal")}

_OWNER_REFERENCE: MessageSchema = {
    5: _s("apiVersion"),
    1: _s("kind"),
    3: _s("name"),
    4: _s("uid"),
    6: F("controller", "bool", pointer=True),
    7: F("blockOwnerDeletion", "bool", pointer=True),
}
OBJECT_META: MessageSchema = {
    1: _s("name"),
    2: _s("generateName"),
    3: _s("namespace"),
    4: _s("selfLink"),
    5: _s("uid"),
    6: _s("resourceVersion"),
    7: F("generation", "int"),
    8: F("creationTimestamp", "time"),
    9: F("deletionTimestamp", "time"),
    10: F("deletionGracePeriodSeconds", "int", pointer=True),
    11: F("labels", "map"),
    12: F("annotations", "map"),
    13: _msgs("ownerReferences", _OWNER_REFERENCE),
    14: F("finalizers", "strings"),
}
_LABEL_SELECTOR: MessageSchema = {
    1: F("matchLabels", "map"),
    2: _msgs("matchExpressions", {1: _s("key"), 2: _s("operator"), 3: F("values", "strings")}),
}
_CONDITION: MessageSchema = {
    1: _s("type"),
    2: _s("status"),
    4: F("lastTransitionTime", "time"),
    5: _s("reason"),
    6: _s("message"),
}
_OBJECT_REFERENCE: MessageSchema = {
    1: _s("kind"),
    2: _s("namespace"),
    3: _s("name"),
    4: _s("uid"),
    5: _s("apiVersion"),
    6: _s("resourceVersion"),
    7: _s("fieldPath"),
}
_POLICY_RULE: MessageSchema = {
    1: F("verbs", "strings"),
    2: F("apiGroups", "strings"),
    3: F("resources", "strings"),
    4: F("resourceNames", "strings"),
    5: F("nonResourceURLs", "strings"),
}
_SUBJECT: MessageSchema = {1: _s("kind"), 2: _s("apiGroup"), 3: _s("name"), 4: _s("namespace")}
_ROLE_REF: MessageSchema = {1: _s("apiGroup"), 2: _s("kind"), 3: _s("name")}
_CONTAINER: MessageSchema = {
    1: _s("name"),
    2: _s("image"),
    3: F("command", "strings"),
    4: F("args", "strings"),
    5: _s("workingDir"),
    6: _msgs(
        "ports",
        {
            1: _s("name"),
            2: F("hostPort", "int"),
            3: F("containerPort", "int"),
            4: _s("protocol"),
            5: _s("hostIP"),
        },
    ),
    7: _msgs("env", {1: _s("name"), 2: _s("value")}),
    8: _msg("resources", {1: F("limits", "quantitymap"), 2: F("requests", "quantitymap")}),
    9: _msgs(
        "volumeMounts",
        {
            1: _s("name"),
            2: F("readOnly", "bool"),
            3: _s("mountPath"),
            4: _s("subPath"),
            5: _s("mountPropagation"),
            6: _s("subPathExpr"),
        },
    ),
    13: _s("terminationMessagePath"),
    14: _s("imagePullPolicy"),
    16: F("stdin", "bool"),
    17: F("stdinOnce", "bool"),
    18: F("tty", "bool"),
    20: _s("terminationMessagePolicy"),
}
_POD_SPEC: MessageSchema = {
    2: _msgs("containers", _CONTAINER),
    20: _msgs("initContainers", _CONTAINER),
    3: _s("restartPolicy"),
    4: F("terminationGracePeriodSeconds", "int", pointer=True),
    5: F("activeDeadlineSeconds", "int", pointer=True),
    6: _s("dnsPolicy"),
    7: F("nodeSelector", "map"),
    8: _s("serviceAccountName"),
    9: _s("serviceAccount"),
    10: _s("nodeName"),
    11: F("hostNetwork", "bool"),
    12: F("hostPID", "bool"),
    13: F("hostIPC", "bool"),
    15: _msgs("imagePullSecrets", {1: _s("name")}),
    16: _s("hostname"),
    17: _s("subdomain"),
    19: _s("schedulerName"),
    21: F("automountServiceAccountToken", "bool", pointer=True),
    22: _msgs(
        "tolerations",
        {
            1: _s("key"),
            2: _s("operator"),
            3: _s("value"),
            4: _s("effect"),
            5: F("tolerationSeconds", "int", pointer=True),
        },
    ),
    24: _s("priorityClassName"),
}
_DEPLOYMENT_SPEC: MessageSchema = {
    1: F("replicas", "int", pointer=True),
    2: _msg("selector", _LABEL_SELECTOR),
    3: _msg("template", {1: _msg("metadata", OBJECT_META), 2: _msg("spec", _POD_SPEC)}),
    4: _msg(
        "strategy",
        {
            1: _s("type"),
            2: _msg(
                "rollingUpdate",
                {1: F("maxUnavailable", "intorstr"), 2: F("maxSurge", "intorstr")},
            ),
        },
    ),
    5: F("minReadySeconds", "int"),
    6: F("revisionHistoryLimit", "int", pointer=True),
    7: F("paused", "bool"),
    9: F("progressDeadlineSeconds", "int", pointer=True),
}
# policy/v1: `kubectl create poddisruptionbudget` sends these as protobuf.
_PDB_SPEC: MessageSchema = {
    1: F("minAvailable", "intorstr"),
    2: _msg("selector", _LABEL_SELECTOR),
    3: F("maxUnavailable", "intorstr"),
    4: F("unhealthyPodEvictionPolicy", "string", pointer=True),
}
_USER_INFO: MessageSchema = {
    1: _s("username"),
    2: _s("uid"),
    3: F("groups", "strings"),
    4: F("extra", "stringsmap"),
}

# authorization.k8s.io/v1 and TokenReview: `kubectl auth can-i` sends these as protobuf.
_SELECTOR_REQUIREMENT: MessageSchema = {1: _s("key"), 2: _s("operator"), 3: F("values", "strings")}
_SELECTOR_ATTRIBUTES: MessageSchema = {
    1: _s("rawSelector"),
    2: _msgs("requirements", _SELECTOR_REQUIREMENT),
}
_RESOURCE_ATTRIBUTES: MessageSchema = {
    1: _s("namespace"),
    2: _s("verb"),
    3: _s("group"),
    4: _s("version"),
    5: _s("resource"),
    6: _s("subresource"),
    7: _s("name"),
    8: _msg("fieldSelector", _SELECTOR_ATTRIBUTES),
    9: _msg("labelSelector", _SELECTOR_ATTRIBUTES),
}
_NON_RESOURCE_ATTRIBUTES: MessageSchema = {1: _s("path"), 2: _s("verb")}
_ACCESS_REVIEW_STATUS: MessageSchema = {
    1: F("allowed", "bool"),
    4: F("denied", "bool"),
    2: _s("reason"),
    3: _s("evaluationError"),
}
_SUBJECT_ACCESS_REVIEW_SPEC: MessageSchema = {
    1: _msg("resourceAttributes", _RESOURCE_ATTRIBUTES),
    2: _msg("nonResourceAttributes", _NON_RESOURCE_ATTRIBUTES),
    3: _s("user"),
    4: F("groups", "strings"),
    5: F("extra", "stringsmap"),
    6: _s("uid"),
}
_RULES_REVIEW_STATUS: MessageSchema = {
    1: _msgs(
        "resourceRules",
        {
            1: F("verbs", "strings"),
            2: F("apiGroups", "strings"),
            3: F("resources", "strings"),
            4: F("resourceNames", "strings"),
        },
    ),
    2: _msgs("nonResourceRules", {1: F("verbs", "strings"), 2: F("nonResourceURLs", "strings")}),
    3: F("incomplete", "bool"),
    4: _s("evaluationError"),
}


_ZERO_STATUS = F("status", "zero")


def _kind(**fields: F) -> MessageSchema:
    return {1: _msg("metadata", OBJECT_META), **{int(k[1:]): v for k, v in fields.items()}}


# (apiVersion, kind) -> schema of the object (field 1 is always metadata).
KIND_SCHEMAS: Mapping[tuple[str, str], MessageSchema] = {
    ("v1", "ConfigMap"): _kind(
        f2=F("data", "map"), f3=F("binaryData", "bytesmap"), f4=F("immutable", "bool", pointer=True)
    ),
    ("v1", "Secret"): _kind(
        f2=F("data", "bytesmap"),
        f3=_s("type"),
        f4=F("stringData", "map"),
        f5=F("immutable", "bool", pointer=True),
    ),
    ("v1", "Namespace"): _kind(
        f2=_msg("spec", {1: F("finalizers", "strings")}),
        f3=_msg("status", {1: _s("phase"), 2: _msgs("conditions", _CONDITION)}),
    ),
    ("v1", "ServiceAccount"): _kind(
        f2=_msgs("secrets", _OBJECT_REFERENCE),
        f3=_msgs("imagePullSecrets", {1: _s("name")}),
        f4=F("automountServiceAccountToken", "bool", pointer=True),
    ),
    ("rbac.authorization.k8s.io/v1", "Role"): _kind(f2=_msgs("rules", _POLICY_RULE)),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): _kind(
        f2=_msgs("rules", _POLICY_RULE),
        f3=_msg("aggregationRule", {1: _msgs("clusterRoleSelectors", _LABEL_SELECTOR)}),
    ),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): _kind(
        f2=_msgs("subjects", _SUBJECT), f3=_msg("roleRef", _ROLE_REF)
    ),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): _kind(
        f2=_msgs("subjects", _SUBJECT), f3=_msg("roleRef", _ROLE_REF)
    ),
    ("authentication.k8s.io/v1", "TokenRequest"): _kind(
        f2=_msg(
            "spec",
            {
                1: F("audiences", "strings"),
                4: F("expirationSeconds", "int", pointer=True),
                3: _msg(
                    "boundObjectRef",
                    {1: _s("kind"), 2: _s("apiVersion"), 3: _s("name"), 4: _s("uid")},
                ),
            },
        ),
        f3=_msg("status", {1: _s("token"), 2: F("expirationTimestamp", "time")}),
    ),
    ("authentication.k8s.io/v1", "SelfSubjectReview"): _kind(
        f2=_msg("status", {1: _msg("userInfo", _USER_INFO)})
    ),
    ("authentication.k8s.io/v1", "TokenReview"): _kind(
        f2=_msg("spec", {1: _s("token"), 2: F("audiences", "strings")}),
        f3=_msg(
            "status",
            {
                1: F("authenticated", "bool"),
                2: _msg("user", _USER_INFO),
                3: _s("error"),
                4: F("audiences", "strings"),
            },
        ),
    ),
    ("authorization.k8s.io/v1", "SelfSubjectAccessReview"): _kind(
        f2=_msg(
            "spec",
            {
                1: _msg("resourceAttributes", _RESOURCE_ATTRIBUTES),
                2: _msg("nonResourceAttributes", _NON_RESOURCE_ATTRIBUTES),
            },
        ),
        f3=_msg("status", _ACCESS_REVIEW_STATUS),
    ),
    ("authorization.k8s.io/v1", "SubjectAccessReview"): _kind(
        f2=_msg("spec", _SUBJECT_ACCESS_REVIEW_SPEC), f3=_msg("status", _ACCESS_REVIEW_STATUS)
    ),
    ("authorization.k8s.io/v1", "LocalSubjectAccessReview"): _kind(
        f2=_msg("spec", _SUBJECT_ACCESS_REVIEW_SPEC), f3=_msg("status", _ACCESS_REVIEW_STATUS)
    ),
    ("authorization.k8s.io/v1", "SelfSubjectRulesReview"): _kind(
        f2=_msg("spec", {1: _s("namespace")}), f3=_msg("status", _RULES_REVIEW_STATUS)
    ),
    # Their status is "zero": the API server resets it on a create and on an update of the
    # object itself, and a write to /status is judged on its labels.
    ("apps/v1", "Deployment"): _kind(f2=_msg("spec", _DEPLOYMENT_SPEC), f3=_ZERO_STATUS),
    ("policy/v1", "PodDisruptionBudget"): _kind(f2=_msg("spec", _PDB_SPEC), f3=_ZERO_STATUS),
}
_METADATA_ONLY: MessageSchema = {1: _msg("metadata", OBJECT_META)}

# meta/v1 DeleteOptions (k8s.io/apimachinery generated.proto).
DELETE_OPTIONS: MessageSchema = {
    1: F("gracePeriodSeconds", "int", pointer=True),
    2: _msg("preconditions", {1: _s("uid"), 2: _s("resourceVersion")}),
    3: F("orphanDependents", "bool", pointer=True),
    4: _s("propagationPolicy"),
    5: F("dryRun", "strings"),
}


def decode_delete_options(body: bytes) -> dict[str, JSON]:
    """A protobuf DeleteOptions body (in its ``k8s\\0`` envelope) as its JSON form would read:
    ``propagationPolicy``, ``orphanDependents``, ``preconditions``, ``gracePeriodSeconds``,
    ``dryRun`` (the fields present; the last occurrence of a field wins, as protobuf merges)."""
    unknown = unwrap_unknown(body)
    if unknown.content_encoding:
        raise UnsupportedProtobufError(
            f"protobuf content encoding {unknown.content_encoding!r} is not supported"
        )
    return _decode_message(unknown.raw, DELETE_OPTIONS, "DeleteOptions", False)


def decode_object_meta(buf: bytes, *, strict: bool = False) -> dict[str, JSON]:
    """Decode a serialized ObjectMeta into its JSON shape (``labels``, ``annotations``...)."""
    return _decode_message(buf, OBJECT_META, "metadata", strict)


def encode_object_meta(meta: Mapping[str, JSON]) -> bytes:
    """Serialize a JSON-shaped ObjectMeta (the fields listed in ``OBJECT_META``)."""
    return _encode_message(meta, OBJECT_META, "metadata")


def decode_object(
    api_version: str, kind: str, raw: bytes, *, strict: bool = False
) -> dict[str, JSON]:
    """Decode the ``raw`` object of an envelope into the dict the JSON API would show."""
    schema = KIND_SCHEMAS.get((api_version, kind))
    if schema is None:
        if strict:
            raise UnsupportedProtobufError(
                f"protobuf decoding of {kind} ({api_version}) is not supported; send JSON"
            )
        schema = _METADATA_ONLY
    body = _decode_message(raw, schema, kind, strict)
    return {"apiVersion": api_version, "kind": kind, **body}


def fully_decoded(body: bytes) -> bool:
    """Whether ``decode_k8s_protobuf`` reads the whole object of this body, not only its
    metadata (its kind has a schema here). Raises ``DecodeError`` for a malformed envelope."""
    unknown = unwrap_unknown(body)
    return (unknown.api_version, unknown.kind) in KIND_SCHEMAS


def decode_k8s_protobuf(body: bytes, *, strict: bool = False) -> dict[str, JSON]:
    """A whole ``application/vnd.kubernetes.protobuf`` body -> the object as a dict.

    ``strict=False``: unknown kinds yield apiVersion/kind/metadata only and unknown fields
    are skipped. ``strict=True``: both raise ``UnsupportedProtobufError``.
    """
    unknown = unwrap_unknown(body)
    if unknown.content_encoding:
        raise UnsupportedProtobufError(
            f"protobuf content encoding {unknown.content_encoding!r} is not supported"
        )
    if unknown.content_type not in ("", PROTOBUF_CONTENT_TYPE):
        raise UnsupportedProtobufError(
            f"a protobuf envelope holding {unknown.content_type!r} is not supported"
        )
    return decode_object(unknown.api_version, unknown.kind, unknown.raw, strict=strict)


def encode_k8s_protobuf(obj: Mapping[str, JSON]) -> bytes:
    """Encode an object of a kind in ``KIND_SCHEMAS`` (or only its metadata otherwise).

    Raises ``DecodeError`` when a value does not fit its field (wrong type, bad base64).
    """
    api_version = obj.get("apiVersion")
    kind = obj.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        raise DecodeError("an object needs string apiVersion and kind to be encoded")
    schema = KIND_SCHEMAS.get((api_version, kind), _METADATA_ONLY)
    return encode_unknown(api_version, kind, _encode_message(obj, schema, kind))


SUPPORTED_KINDS: frozenset[tuple[str, str]] = frozenset(KIND_SCHEMAS)
