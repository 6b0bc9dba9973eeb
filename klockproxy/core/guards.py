"""Make an allowed write conditional on the object version it was judged against.

``add_precondition(body, content_type, info, rv, uid)`` returns the request body (and, when
it changes, its Content-Type) with the checked ``resourceVersion`` (and uid) added:
DeleteOptions ``preconditions`` (also inside an Eviction), ``metadata.resourceVersion`` of an
update or a merge/apply patch, a leading ``test`` operation in a JSON patch; protobuf bodies
get the fields appended, which protobuf merges. A concurrent relabel then makes the write
fail with 409 instead of slipping past a lock. Works on (decoded) body bytes: the caller
sets them on whatever carries the request.

Everything the proxy cannot rewrite raises ``Refusal`` with the Status to answer.
"""

from __future__ import annotations

import json
from typing import Any

from klockproxy.core import codec
from klockproxy.core.codec import is_json_type, is_yaml_type, media_type
from klockproxy.core.errors import DecodeError, Refusal
from klockproxy.core.patches import JSON_PATCH
from klockproxy.core.protobuf import (
    LEN,
    PROTOBUF_CONTENT_TYPE,
    decode_fields,
    encode_len_field,
    encode_string_field,
    encode_unknown,
    unwrap_unknown,
)
from klockproxy.core.requests import RequestInfo
from klockproxy.core.status import conflict, failure

# A uid no object has: "the object was absent when checked" (see add_precondition).
ABSENT_UID = "klockproxy-checked-absent"

JSON_TYPES = frozenset({"", "application/json"})
YAML_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml"})


def body_refusal(code: int, message: str) -> Refusal:
    """A refusal whose detail (quoting the body) goes to the client, never to the log."""
    return Refusal(
        failure(code, message),
        log_message=f"the request body could not be used (HTTP {code}; detail sent to the client)",
    )


def load_document(body: bytes, ctype: str, what: str) -> Any:
    """A JSON or YAML request body as Python values; Refusal for anything else."""
    mtype = media_type(ctype)
    if is_json_type(mtype) or is_yaml_type(mtype):
        try:
            return codec.load_document(body, ctype, what)
        except DecodeError as e:
            raise body_refusal(400, f"klockproxy: cannot read the {what}: {e}") from e
    raise Refusal(
        failure(
            415,
            f"klockproxy: a lock covers this object, so the write must be made conditional on "
            f"the checked resourceVersion, which the proxy cannot add to a {mtype or 'bodyless'}"
            f" {what}; send JSON (kubectl does by default)",
        )
    )


def merged_message(buf: bytes, number: int) -> bytes:
    """Every occurrence of embedded message ``number``, concatenated: protobuf merges them."""
    out = bytearray()
    for field_no, wire, value in decode_fields(buf):
        if field_no == number and wire == LEN and isinstance(value, bytes):
            out += value
    return bytes(out)


def last_string(buf: bytes, number: int) -> str:
    """The value of string field ``number`` (the last occurrence wins), "" when absent."""
    found = b""
    for field_no, wire, value in decode_fields(buf):
        if field_no == number and wire == LEN and isinstance(value, bytes):
            found = value
    return found.decode("utf-8", "replace")


def protobuf_guard(
    body: bytes, info: RequestInfo, rv: str, uid: str, *, absent: bool = False
) -> bytes:
    """Add the precondition to a protobuf body by appending fields (protobuf merges them).

    Field numbers from k8s.io/api: every object's ObjectMeta is field 1, its resourceVersion
    field 6; DeleteOptions.preconditions is field 2 (uid 1, resourceVersion 2);
    Eviction.deleteOptions is field 2. Appending leaves every other field byte for byte as
    the client sent it; values the client set are kept.
    """
    try:
        envelope = unwrap_unknown(body)
    except DecodeError as e:
        raise body_refusal(400, f"klockproxy: cannot read the protobuf body: {e}") from e
    if envelope.content_encoding:
        raise Refusal(
            failure(
                415,
                f"klockproxy: cannot add the resourceVersion precondition to a protobuf body "
                f"with content encoding {envelope.content_encoding!r}",
            )
        )
    raw = envelope.raw
    verb = info.verb
    try:
        if verb == "update":
            client_rv = last_string(merged_message(raw, 1), 6)
            check_client_value(info, client_rv, rv)
            if client_rv:
                return body
            raw += encode_len_field(1, encode_string_field(6, rv))
        else:
            options = merged_message(raw, 2) if verb == "create" else raw
            pre = merged_message(options, 2)
            add = b""
            client_rv, client_uid = last_string(pre, 2), last_string(pre, 1)
            if rv:
                check_client_value(info, client_rv, rv)
                if not client_rv:
                    add += encode_string_field(2, rv)
            if uid and not client_uid:
                add += encode_string_field(1, uid)
            elif uid and not absent:
                check_client_value(info, client_uid, uid)
            if not add:
                return body
            added = encode_len_field(2, add)
            raw += encode_len_field(2, added) if verb == "create" else added
    except DecodeError as e:
        raise body_refusal(400, f"klockproxy: cannot read the protobuf body: {e}") from e
    return encode_unknown(
        envelope.api_version,
        envelope.kind,
        raw,
        content_type=envelope.content_type,
    )


def check_client_value(info: RequestInfo, client: Any, checked: str) -> None:
    """A precondition value the client set must be the one the proxy checked."""
    if client not in (None, "") and client != checked:
        raise Refusal(conflict(info))


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def add_precondition(
    body: bytes,
    ctype: str,
    info: RequestInfo,
    rv: str,
    uid: str,
    *,
    absent: bool = False,
    document: Any = None,
) -> tuple[bytes, str | None] | None:
    """Make the write conditional on the checked object version (409 if it changed).

    Returns the body to send and the Content-Type to send it with (None: keep the request's),
    or None when the request is sent as it is.

    A value the client already set is kept when it equals the checked one; when it differs
    the proxy answers 409 itself: the object may have moved to exactly the client's version
    since it was judged, which is the race this guard exists for.

    ``absent``: the object did not exist when checked (the API server will answer 404). A uid
    no object can have (``ABSENT_UID``) then makes the write fail with 409 instead if a
    (possibly locked) object of that name is created before the write lands; a uid the client
    set already does the same and is kept.

    ``document``: the JSON or YAML body already decoded (it is not parsed again; it is not
    modified either: the parts the guard changes are copied).
    """
    verb = info.verb
    mtype = media_type(ctype)

    def load(what: str) -> Any:
        if document is not None and (is_json_type(mtype) or is_yaml_type(mtype)):
            return document
        return load_document(body, ctype, what)

    if mtype == PROTOBUF_CONTENT_TYPE and verb in ("delete", "create", "update"):
        return protobuf_guard(body, info, rv, uid, absent=absent), None
    if verb == "delete" or (verb == "create" and info.subresource == "eviction"):
        what = "Eviction body" if verb == "create" else "DeleteOptions body"
        if body.strip():
            doc = load(what)
        elif verb == "create":
            doc = {
                "apiVersion": "policy/v1",
                "kind": "Eviction",
                "metadata": {"name": info.name, "namespace": info.namespace},
            }
        else:
            doc = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if not isinstance(doc, dict):
            raise Refusal(failure(400, f"klockproxy: the {what} is not an object"))
        doc = dict(doc)
        target = doc
        if verb == "create":
            opts = doc.get("deleteOptions")
            if opts is None:
                opts = {}
            if not isinstance(opts, dict):
                raise Refusal(failure(400, "klockproxy: Eviction.deleteOptions is not an object"))
            target = doc["deleteOptions"] = dict(opts)
        pre = target.get("preconditions")
        if pre is None:
            pre = {}
        if not isinstance(pre, dict):
            raise Refusal(failure(400, "klockproxy: DeleteOptions.preconditions is not an object"))
        pre = target["preconditions"] = dict(pre)
        if rv:
            check_client_value(info, pre.get("resourceVersion"), rv)
            pre["resourceVersion"] = rv
        if uid and not pre.get("uid"):
            pre["uid"] = uid
        elif uid and not absent:
            check_client_value(info, pre.get("uid"), uid)
        return _json(doc), "application/json"
    if verb == "patch" and mtype == JSON_PATCH:
        ops = load("JSON patch")
        if not isinstance(ops, list):
            raise Refusal(failure(400, "klockproxy: a JSON patch must be a list of operations"))
        if absent:
            test = {"op": "test", "path": "/metadata/uid", "value": uid}
        else:
            test = {"op": "test", "path": "/metadata/resourceVersion", "value": rv}
        return _json([test, *ops]), ctype
    if verb in ("update", "patch"):
        what = "request body" if verb == "update" else "patch"
        doc = load(what)
        if not isinstance(doc, dict):
            raise Refusal(failure(400, f"klockproxy: the {what} is not an object"))
        meta = doc.get("metadata")
        if meta is None:
            meta = {}
        if not isinstance(meta, dict):
            raise Refusal(failure(400, f"klockproxy: metadata in the {what} is not an object"))
        doc = {**doc, "metadata": dict(meta)}
        meta = doc["metadata"]
        if absent:
            if not meta.get("uid"):
                meta["uid"] = uid
        else:
            check_client_value(info, meta.get("resourceVersion"), rv)
            meta["resourceVersion"] = rv
        # JSON is valid YAML, so apply patches keep their content type.
        out_type = ctype if mtype not in YAML_TYPES else "application/json"
        return _json(doc), out_type or "application/json"
    return None
