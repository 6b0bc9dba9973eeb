"""The patch formats of the Kubernetes API, applied to plain JSON-shaped Python values.

* ``json_patch``: RFC 6902 (add, remove, replace, move, copy, test; RFC 6901 pointers).
* ``merge_patch``: RFC 7386.
* ``strategic_merge_patch``: Kubernetes strategic merge patch for the built-in kinds listed
  in ``DEFAULT_MERGE_KEYS`` (maps merged, ``null`` deletes, lists replaced unless the field
  declares a patch merge key or a merge strategy, directives ``$patch``, ``$retainKeys``,
  ``$deleteFromPrimitiveList/<field>`` and ``$setElementOrder/<field>``). A kind that is not
  listed (a custom resource) raises ``UnsupportedPatchError``, as the API server answers 415.
* ``apply_patch``: decode the patch bytes and dispatch on the request's content type.

Simplifications (documented, deliberate):

* Server-side apply (``application/apply-patch+yaml``) is treated as a strategic merge of the
  applied configuration for built-in kinds and as a JSON merge patch for the others. Field
  ownership is not tracked, so a field the applier owned and dropped from its configuration
  is NOT removed. For labels this means apply can only add or change labels here.
* Merged lists get the API server's order: the patch's items in the patch's (or
  ``$setElementOrder``'s) order, interleaved with the server-only items by their live order.

No function here mutates its inputs: every result is a fresh copy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias, cast

from klockproxy.core.codec import load_json, load_yaml_object, media_type
from klockproxy.core.errors import DecodeError, PatchError

# A JSON value as ``json.loads`` returns it: dict, list, str, int, float, bool or None.
JSON: TypeAlias = Any
KindKey: TypeAlias = tuple[str, str]

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
# The CBOR variant of apply is accepted by recent API servers but never sent by kubectl.
PATCH_CONTENT_TYPES = (JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH, APPLY_PATCH)

_PATCH = "$patch"
_RETAIN_KEYS = "$retainKeys"
_DELETE_FROM_PRIMITIVE = "$deleteFromPrimitiveList/"
_SET_ORDER = "$setElementOrder/"


class UnsupportedPatchError(PatchError):
    """The patch type is not supported for this object (the API server answers 415).

    Raised for a strategic merge patch of a kind without a known schema (custom resources)
    and for a content type that is not a patch type.
    """


class PatchTestFailedError(PatchError):
    """A JSON patch ``test`` operation failed (the API server answers 422 Invalid)."""


# --------------------------------------------------------------------------------------------
# Schemas: which lists are merged, and by which key
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FieldSchema:
    """How strategic merge treats one field.

    ``merge_key`` set: a list of maps merged item by item on that key.
    ``merge_primitives``: a list of scalars merged as an ordered set (``patchStrategy:merge``
    without a key, e.g. ``metadata.finalizers``).
    Otherwise a list is replaced. ``fields`` describes the nested map (or each list item).
    """

    merge_key: str = ""
    merge_primitives: bool = False
    fields: Mapping[str, FieldSchema] = field(default_factory=dict)


Schema: TypeAlias = Mapping[str, FieldSchema]


def _map(**fields: FieldSchema) -> FieldSchema:
    return FieldSchema(fields=fields)


def _keyed(key: str, **fields: FieldSchema) -> FieldSchema:
    return FieldSchema(merge_key=key, fields=fields)


_SET = FieldSchema(merge_primitives=True)
_CONDITIONS = _keyed("type")
_OBJECT_META = _map(finalizers=_SET, ownerReferences=_keyed("uid"))
_CONTAINER: dict[str, FieldSchema] = {
    "ports": _keyed("containerPort"),
    "env": _keyed("name"),
    "volumeMounts": _keyed("mountPath"),
    "volumeDevices": _keyed("devicePath"),
}
_POD_SPEC = _map(
    containers=_keyed("name", **_CONTAINER),
    initContainers=_keyed("name", **_CONTAINER),
    ephemeralContainers=_keyed("name", **_CONTAINER),
    volumes=_keyed("name"),
    imagePullSecrets=_keyed("name"),
    hostAliases=_keyed("ip"),
    topologySpreadConstraints=_keyed("topologyKey"),
    resourceClaims=_keyed("name"),
    schedulingGates=_keyed("name"),
)
_POD_TEMPLATE = _map(metadata=_OBJECT_META, spec=_POD_SPEC)
_STATUS_WITH_CONDITIONS = _map(conditions=_CONDITIONS)


def _kind(**fields: FieldSchema) -> Schema:
    return {"metadata": _OBJECT_META, **fields}


_WORKLOAD = _kind(spec=_map(template=_POD_TEMPLATE), status=_STATUS_WITH_CONDITIONS)

DEFAULT_MERGE_KEYS: Mapping[KindKey, Schema] = {
    ("", "Pod"): _kind(
        spec=_POD_SPEC,
        status=_map(conditions=_CONDITIONS, podIPs=_keyed("ip"), hostIPs=_keyed("ip")),
    ),
    ("", "PodTemplate"): _kind(template=_POD_TEMPLATE),
    ("", "ReplicationController"): _WORKLOAD,
    ("", "Service"): _kind(spec=_map(ports=_keyed("port")), status=_STATUS_WITH_CONDITIONS),
    ("", "ConfigMap"): _kind(),
    ("", "Secret"): _kind(),
    ("", "Namespace"): _kind(status=_STATUS_WITH_CONDITIONS),
    ("", "ServiceAccount"): _kind(secrets=_keyed("name")),
    ("", "Endpoints"): _kind(),
    ("", "Event"): _kind(),
    ("", "PersistentVolumeClaim"): _kind(status=_STATUS_WITH_CONDITIONS),
    ("", "Node"): _kind(status=_map(conditions=_CONDITIONS, addresses=_keyed("type"))),
    ("apps", "Deployment"): _WORKLOAD,
    ("apps", "ReplicaSet"): _WORKLOAD,
    ("apps", "StatefulSet"): _WORKLOAD,
    ("apps", "DaemonSet"): _WORKLOAD,
    ("apps", "ControllerRevision"): _kind(),
    ("batch", "Job"): _WORKLOAD,
    ("batch", "CronJob"): _kind(
        spec=_map(jobTemplate=_map(metadata=_OBJECT_META, spec=_map(template=_POD_TEMPLATE)))
    ),
    ("autoscaling", "Scale"): _kind(),
    ("policy", "PodDisruptionBudget"): _kind(status=_STATUS_WITH_CONDITIONS),
    ("rbac.authorization.k8s.io", "Role"): _kind(),
    ("rbac.authorization.k8s.io", "RoleBinding"): _kind(),
    ("rbac.authorization.k8s.io", "ClusterRole"): _kind(),
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"): _kind(),
    ("apiextensions.k8s.io", "CustomResourceDefinition"): _kind(status=_STATUS_WITH_CONDITIONS),
    ("coordination.k8s.io", "Lease"): _kind(),
    # webhooks: patchStrategy merge, patchMergeKey name (as in k8s.io/api).
    ("admissionregistration.k8s.io", "ValidatingWebhookConfiguration"): _kind(
        webhooks=_keyed("name")
    ),
    ("admissionregistration.k8s.io", "MutatingWebhookConfiguration"): _kind(
        webhooks=_keyed("name")
    ),
}


def kind_key_of(obj: Mapping[str, JSON]) -> KindKey:
    """``(group, kind)`` of an object from its ``apiVersion`` and ``kind`` (``("", "")``)."""
    api_version = obj.get("apiVersion")
    kind = obj.get("kind")
    group = ""
    if isinstance(api_version, str) and "/" in api_version:
        group = api_version.split("/", 1)[0]
    return group, (kind if isinstance(kind, str) else "")


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _clone(value: JSON) -> JSON:
    """A deep copy of a JSON value (much cheaper than ``copy.deepcopy``)."""
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clone(v) for v in value]
    return value


def json_equal(a: JSON, b: JSON) -> bool:
    """JSON equality: ``1 == 1.0`` but ``true != 1``, objects unordered, arrays ordered."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is not type(b):
        return False
    return bool(a == b)


# --------------------------------------------------------------------------------------------
# RFC 6902 JSON patch
# --------------------------------------------------------------------------------------------


def parse_pointer(pointer: str) -> list[str]:
    """Split an RFC 6901 JSON pointer into unescaped reference tokens (``""`` -> ``[]``)."""
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise PatchError(f"invalid JSON pointer {pointer!r}: must be empty or start with '/'")
    tokens = pointer[1:].split("/")
    out = []
    for token in tokens:
        if "~" in token:
            # Only ~0 and ~1 are valid escapes; ~1 first would turn "~01" into "/" wrongly.
            rest = token.replace("~0", "").replace("~1", "")
            if "~" in rest:
                raise PatchError(f"invalid JSON pointer {pointer!r}: bad '~' escape")
            token = token.replace("~1", "/").replace("~0", "~")
        out.append(token)
    return out


def _array_index(token: str, length: int, pointer: str, *, allow_end: bool) -> int:
    """The index ``token`` names in an array of ``length`` (``allow_end``: where to insert).

    Negative indices count from the end, as in the API server's JSON patch library
    (evanphx/json-patch v4, ``SupportNegativeIndices``): ``-1`` is the last element, and for
    an insertion the place after it. Leading zeros and ``+`` are refused (RFC 6901).
    """
    if token == "-" and allow_end:
        return length
    digits = token[1:] if token.startswith("-") else token
    if not digits.isdigit() or not digits.isascii() or (len(digits) > 1 and digits[0] == "0"):
        raise PatchError(f"path {pointer!r}: {token!r} is not a valid array index")
    index = int(token)
    limit = length if allow_end else length - 1
    if index < 0:
        index += limit + 1
    if index > limit or index < 0 or token == "-0":
        raise PatchError(f"path {pointer!r}: index {token} out of range (length {length})")
    return index


def _parent(doc: JSON, tokens: list[str], pointer: str) -> JSON:
    """The container holding the target of ``tokens`` (every step must exist)."""
    node = doc
    for token in tokens[:-1]:
        if isinstance(node, dict):
            if token not in node:
                raise PatchError(f"path {pointer!r}: {token!r} does not exist")
            node = node[token]
        elif isinstance(node, list):
            node = node[_array_index(token, len(node), pointer, allow_end=False)]
        else:
            raise PatchError(f"path {pointer!r}: cannot traverse into a scalar at {token!r}")
    return node


def _existing(doc: JSON, tokens: list[str], pointer: str) -> tuple[Any, str | int]:
    """Where the existing target of a non-empty pointer is: (its parent, the key or index).

    The parent is typed loosely: a dict whose key is the str, or a list whose index is the
    int (this function decides which).
    """
    parent = _parent(doc, tokens, pointer)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"path {pointer!r} does not exist")
        return parent, last
    if isinstance(parent, list):
        return parent, _array_index(last, len(parent), pointer, allow_end=False)
    raise PatchError(f"path {pointer!r}: parent is not an object or array")


def _get(doc: JSON, pointer: str) -> JSON:
    tokens = parse_pointer(pointer)
    if not tokens:
        return doc
    parent, key = _existing(doc, tokens, pointer)
    return cast(JSON, parent[key])


def _add(doc: JSON, pointer: str, value: JSON) -> JSON:
    tokens = parse_pointer(pointer)
    if not tokens:
        # RFC 6902 lets "add" replace the whole document; the API server's library does not
        # (it finds no parent for the empty path), so neither does the core.
        raise PatchError("cannot add at the root of the document: use replace")
    parent = _parent(doc, tokens, pointer)
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_array_index(last, len(parent), pointer, allow_end=True), value)
    else:
        raise PatchError(f"path {pointer!r}: parent is not an object or array")
    return doc


def _remove(doc: JSON, pointer: str) -> tuple[JSON, JSON]:
    """Remove the target; returns ``(doc, removed value)``."""
    tokens = parse_pointer(pointer)
    if not tokens:
        raise PatchError("cannot remove the whole document")
    parent, key = _existing(doc, tokens, pointer)
    return doc, cast(JSON, parent.pop(key))


def _replace(doc: JSON, pointer: str, value: JSON) -> JSON:
    tokens = parse_pointer(pointer)
    if not tokens:
        return value
    parent, key = _existing(doc, tokens, pointer)
    parent[key] = value
    return doc


def _string_member(op: Mapping[str, JSON], name: str, index: int) -> str:
    value = op.get(name)
    if not isinstance(value, str):
        raise PatchError(f"operation {index}: {name!r} must be a string")
    return value


def json_patch(doc: JSON, ops: JSON) -> JSON:
    """Apply an RFC 6902 JSON patch (a list of operations) to a copy of ``doc``.

    Raises ``PatchError`` for a malformed patch, a missing path, or a failed ``test``.
    """
    if not isinstance(ops, list):
        raise PatchError("a JSON patch must be an array of operations")
    result = _clone(doc)
    for index, op in enumerate(ops):
        if not isinstance(op, dict):
            raise PatchError(f"operation {index} is not an object")
        name = _string_member(op, "op", index)
        path = _string_member(op, "path", index)
        if name in ("add", "replace", "test") and "value" not in op:
            raise PatchError(f"operation {index} ({name}): missing 'value'")
        if name == "add":
            result = _add(result, path, _clone(op["value"]))
        elif name == "remove":
            result, _ = _remove(result, path)
        elif name == "replace":
            result = _replace(result, path, _clone(op["value"]))
        elif name == "move":
            source = _string_member(op, "from", index)
            if source == path:
                continue
            if path.startswith(source + "/"):
                raise PatchError(f"operation {index} (move): cannot move {source!r} into itself")
            result, value = _remove(result, source)
            result = _add(result, path, value)
        elif name == "copy":
            source = _string_member(op, "from", index)
            result = _add(result, path, _clone(_get(result, source)))
        elif name == "test":
            if not json_equal(_get(result, path), op["value"]):
                raise PatchTestFailedError(f"operation {index} (test): value at {path!r} differs")
        else:
            raise PatchError(f"operation {index}: unknown op {name!r}")
    return result


# --------------------------------------------------------------------------------------------
# RFC 7386 JSON merge patch
# --------------------------------------------------------------------------------------------


def _merge(target: JSON, patch: JSON) -> JSON:
    if not isinstance(patch, dict):
        return _clone(patch)
    result = _clone(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge(result.get(key), value)
    return result


def merge_patch(doc: JSON, patch: JSON) -> JSON:
    """Apply an RFC 7386 JSON merge patch; returns a new value."""
    return _merge(doc, patch)


# --------------------------------------------------------------------------------------------
# Kubernetes strategic merge patch
# --------------------------------------------------------------------------------------------


def _has_patch_directive(value: JSON) -> bool:
    return isinstance(value, dict) and _PATCH in value


def _strip(value: JSON) -> JSON:
    """A copy of a patch value without directives or nulls: how a new field is stored.

    As the API server's ``removeDirectives``: a map inside it that carries ``$patch`` (any
    value) is dropped whole, as a field or as a list item.
    """
    if isinstance(value, dict):
        return {
            k: _strip(v)
            for k, v in value.items()
            if v is not None
            and not _has_patch_directive(v)
            and k not in (_PATCH, _RETAIN_KEYS)
            and not k.startswith((_DELETE_FROM_PRIMITIVE, _SET_ORDER))
        }
    if isinstance(value, list):
        return [_strip(v) for v in value if not _has_patch_directive(v)]
    return value


def _directive(patch: Mapping[str, JSON], where: str) -> str:
    value = patch.get(_PATCH, "merge")
    if value not in ("merge", "replace", "delete"):
        raise PatchError(f"{where}: unknown $patch directive {value!r}")
    return str(value)


def _merge_map(
    original: dict[str, JSON], patch: Mapping[str, JSON], schema: Schema, where: str
) -> dict[str, JSON]:
    """Strategic merge of ``patch`` into ``original`` (which this function owns)."""
    directive = _directive(patch, where)
    if directive == "replace":
        return _strip(patch)
    if directive == "delete":
        return {}

    retain = patch.get(_RETAIN_KEYS)
    if retain is not None:
        if not isinstance(retain, list) or not all(isinstance(k, str) for k in retain):
            raise PatchError(f"{where}: $retainKeys must be a list of strings")
        for key in list(original):
            if key not in retain:
                del original[key]

    # $setElementOrder lists first, as the API server does: each merges its list and fixes
    # the order, and the list is not merged a second time below.
    ordered: set[str] = set()
    for key, value in patch.items():
        if key.startswith(_SET_ORDER):
            name = key[len(_SET_ORDER) :]
            if not isinstance(value, list):
                raise PatchError(f"{where}: {key} must be a list")
            if _set_element_order(original, patch, name, value, schema, f"{where}.{name}"):
                ordered.add(name)

    for key, value in patch.items():
        if key in (_PATCH, _RETAIN_KEYS) or key.startswith(_SET_ORDER) or key in ordered:
            continue
        if key.startswith(_DELETE_FROM_PRIMITIVE):
            name = key[len(_DELETE_FROM_PRIMITIVE) :]
            if not isinstance(value, list):
                raise PatchError(f"{where}.{name}: $deleteFromPrimitiveList must be a list")
            current = original.get(name)
            if isinstance(current, list):
                original[name] = [v for v in current if not any(json_equal(v, d) for d in value)]
            continue
        path = f"{where}.{key}"
        if value is None:
            original.pop(key, None)
            continue
        sub = schema.get(key, _NO_SCHEMA)
        current = original.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            original[key] = _merge_map(current, value, sub.fields, path)
        elif _has_patch_directive(value):
            # A map with $patch where the live value is not a map: the API server drops it.
            original.pop(key, None)
        elif isinstance(value, list) and isinstance(current, list):
            original[key] = _merge_list(current, value, sub, path)
        else:
            original[key] = _strip(value)
    return original


_NO_SCHEMA = FieldSchema()


def _identity(item: JSON, merge_key: str) -> JSON:
    """What identifies a list item: its merge key's value in a keyed list, else itself."""
    if merge_key:
        return item.get(merge_key) if isinstance(item, dict) else None
    return item


def _position(items: list[JSON], item: JSON, merge_key: str) -> int | None:
    """Index of the first element of ``items`` with the identity of ``item``."""
    want = _identity(item, merge_key)
    for index, candidate in enumerate(items):
        if json_equal(_identity(candidate, merge_key), want):
            return index
    return None


def _in_order(items: list[JSON], order: list[JSON], merge_key: str) -> list[JSON]:
    """``items`` stably sorted by their position in ``order`` (all of them are in it)."""
    return sorted(items, key=lambda i: _position(order, i, merge_key) or 0)


def _server_order(
    patched: list[JSON],
    patch_order: list[JSON],
    live_order: list[JSON],
    merge_key: str,
) -> list[JSON]:
    """The order the API server gives a merged list.

    The items the patch names come in the patch's order; the others (server-only) keep their
    live order and are interleaved with them: a server-only item goes before the next patch
    item only if both are in the live list and it came first there. A new item therefore
    lands before the server-only items that follow it nowhere in the live list.
    """
    named = [i for i in patched if _position(patch_order, i, merge_key) is not None]
    server = [i for i in patched if _position(patch_order, i, merge_key) is None]
    named = _in_order(named, patch_order, merge_key)
    server = _in_order(server, live_order, merge_key)
    result: list[JSON] = []
    while named and server:
        left = _position(live_order, server[0], merge_key)
        right = _position(live_order, named[0], merge_key)
        if left is not None and right is not None and left < right:
            result.append(server.pop(0))
        else:
            result.append(named.pop(0))
    return result + named + server


def _check_order(patch_list: list[JSON], order: list[JSON], merge_key: str, where: str) -> None:
    """The items of the patch list must appear in $setElementOrder, in the same order."""
    items = [i for i in patch_list if not (isinstance(i, dict) and _PATCH in i)]
    at = 0
    for item in items:
        while at < len(order) and not json_equal(
            _identity(order[at], merge_key), _identity(item, merge_key)
        ):
            at += 1
        if at == len(order):
            raise PatchError(f"{where}: the order in the patch list doesn't match $setElementOrder")
        at += 1


def _set_element_order(
    original: dict[str, JSON],
    patch: Mapping[str, JSON],
    name: str,
    order: list[JSON],
    schema: Schema,
    where: str,
) -> bool:
    """Apply ``$setElementOrder/name``; True when it merged (consumed) the patch list."""
    sub = schema.get(name, _NO_SCHEMA)
    key = sub.merge_key
    current = original.get(name)
    listed = patch.get(name)
    if current is not None and not isinstance(current, list):
        raise PatchError(f"{where}: $setElementOrder for a field that is not a list")
    if listed is not None and not isinstance(listed, list):
        raise PatchError(f"{where}: $setElementOrder for a patch value that is not a list")
    if listed and order:
        _check_order(listed, order, key, where)
    if current is None and listed is None:
        return False
    if listed is None:
        merged = list(current or [])
    elif current is None:
        merged = _strip(listed)
    else:
        merged = _merge_list(current, listed, sub, where)
    if key and not all(isinstance(i, dict) and key in i for i in merged + order):
        raise PatchError(f"{where}: does not contain declared merge key {key!r}")
    live = current or []
    if key and current and listed:
        live = _reused_live_list(current, listed, key)
    original[name] = _server_order(merged, order, live, key)
    return True


def _reused_live_list(current: list[JSON], listed: list[JSON], key: str) -> list[JSON]:
    """The live list as the API server's $setElementOrder step sees it.

    The API server merges a keyed list inside the live list's own storage: deleting an item
    shifts the rest left (the freed places at the end keep the last item), and new items are
    appended into the freed places. The ordering step then reads that reused storage, not
    the list as it was received (the upstream vectors "add map and delete map from merging
    list" pin this down).
    """
    deleted = [
        i[key] for i in listed if isinstance(i, dict) and i.get(_PATCH) == "delete" and key in i
    ]
    remaining = [
        r
        for r in current
        if not (isinstance(r, dict) and any(json_equal(r.get(key), d) for d in deleted))
    ]
    appended: list[JSON] = []
    replaced = any(isinstance(i, dict) and i.get(_PATCH) == "replace" for i in listed)
    for item in [] if replaced else listed:
        new = isinstance(item, dict) and _PATCH not in item and key in item
        if new and _position(remaining + appended, item, key) is None:
            appended.append(item)
    return (remaining + appended + current[-1:] * len(current))[: len(current)]


def _merge_list(original: list[JSON], patch: list[JSON], schema: FieldSchema, where: str) -> JSON:
    if schema.merge_primitives:
        if any(isinstance(item, dict) and _PATCH in item for item in patch):
            raise PatchError(f"{where}: $patch in a list of scalars")
        merged: list[JSON] = []
        for item in original + patch:
            if not any(json_equal(item, m) for m in merged):
                merged.append(_clone(item))
        return _server_order(merged, patch, original, "")
    if not schema.merge_key:
        return _strip(patch)

    key = schema.merge_key
    for position, item in enumerate(patch):
        if not isinstance(item, dict):
            raise PatchError(f"{where}[{position}]: expected a map merged on {key!r}")
    # Directive items first, as the API server does: deletions, then a replace.
    result = list(original)
    replace = False
    for position, item in enumerate(patch):
        if _PATCH not in item:
            continue
        directive = _directive(item, f"{where}[{position}]")
        if directive == "merge":
            raise PatchError(f"{where}[{position}]: $patch: merge is not allowed in a list")
        if directive == "replace":
            replace = True
            continue
        if key not in item:
            raise PatchError(f"{where}[{position}]: does not contain declared merge key {key!r}")
        result = [
            r for r in result if not (isinstance(r, dict) and json_equal(r.get(key), item[key]))
        ]
    items = [i for i in patch if _PATCH not in i]
    if replace:
        # {"$patch": "replace"} in a list: the list becomes exactly the other items.
        return _strip(items)
    live = list(result)
    for position, item in enumerate(items):
        if key not in item:
            raise PatchError(f"{where}[{position}]: does not contain declared merge key {key!r}")
        match = _position(result, item, key)
        if match is None or not isinstance(result[match], dict):
            result.append(_strip(item))
        else:
            result[match] = _merge_map(
                result[match], item, schema.fields, f"{where}[{key}={item[key]}]"
            )
    return _server_order(result, items, live, key)


def strategic_merge_patch(
    doc: Mapping[str, JSON],
    patch: JSON,
    kind_key: KindKey,
    *,
    merge_keys: Mapping[KindKey, Schema] = DEFAULT_MERGE_KEYS,
) -> dict[str, JSON]:
    """Apply a Kubernetes strategic merge patch to a copy of ``doc``.

    ``kind_key`` is ``(group, kind)``; only kinds in ``merge_keys`` are supported, the others
    (custom resources) raise ``UnsupportedPatchError`` as the API server answers 415.
    """
    schema = merge_keys.get(kind_key)
    if schema is None:
        group, kind = kind_key
        name = f"{kind}.{group}" if group else kind
        raise UnsupportedPatchError(
            f"strategic merge patch is not supported for {name or 'objects without a kind'}; "
            "use a JSON merge patch or a JSON patch"
        )
    if not isinstance(patch, dict):
        raise PatchError("a strategic merge patch must be a JSON object")
    return _merge_map(_clone(dict(doc)), patch, schema, "")


# --------------------------------------------------------------------------------------------
# Dispatch on content type
# --------------------------------------------------------------------------------------------


def _load_json(patch: bytes, what: str) -> JSON:
    try:
        return load_json(patch, what)
    except DecodeError as e:
        raise PatchError(str(e)) from e


def _load_apply(patch: bytes) -> JSON:
    """An apply configuration: YAML (JSON is accepted too), exactly one object."""
    try:
        return load_yaml_object(patch, "apply patch")
    except DecodeError as e:
        raise PatchError(str(e)) from e


def apply_patch(
    obj: Mapping[str, JSON],
    patch: bytes,
    content_type: str,
    *,
    kind_key: KindKey | None = None,
    merge_keys: Mapping[KindKey, Schema] = DEFAULT_MERGE_KEYS,
) -> dict[str, JSON]:
    """Apply the PATCH request body ``patch`` of type ``content_type`` to a copy of ``obj``.

    ``kind_key`` defaults to the ``(group, kind)`` of ``obj``. Raises ``PatchError`` for an
    undecodable or inapplicable patch, ``UnsupportedPatchError`` (415) for a content type
    that is not a patch type or a strategic merge patch of a kind without a schema.
    """
    mtype = media_type(content_type)
    key = kind_key if kind_key is not None else kind_key_of(obj)
    if mtype == JSON_PATCH:
        result = json_patch(dict(obj), _load_json(patch, "JSON patch"))
    elif mtype == MERGE_PATCH:
        result = merge_patch(dict(obj), _load_json(patch, "merge patch"))
    elif mtype == STRATEGIC_MERGE_PATCH:
        result = strategic_merge_patch(
            obj, _load_json(patch, "strategic merge patch"), key, merge_keys=merge_keys
        )
    elif mtype == APPLY_PATCH:
        applied = _load_apply(patch)
        if key in merge_keys:
            result = strategic_merge_patch(obj, applied, key, merge_keys=merge_keys)
        else:
            result = merge_patch(dict(obj), applied)
    else:
        raise UnsupportedPatchError(
            f"the body of the request was in an unknown format - accepted media types include: "
            f"{', '.join(PATCH_CONTENT_TYPES)} (got {content_type!r})"
        )
    if not isinstance(result, dict):
        raise PatchError("the patched object is not a JSON object")
    return result


# --------------------------------------------------------------------------------------------
# What a patch cannot change
# --------------------------------------------------------------------------------------------


def _names_metadata(key: object) -> bool:
    # casefold: an API server that matches JSON keys to fields case-insensitively (as Go's
    # encoding/json does) would read "Metadata" as the metadata too.
    return isinstance(key, str) and key.casefold() == "metadata"


def _plain_annotations(annotations: object, strategic: bool) -> bool:
    # A patch's "annotations" member that sets and removes annotations and nothing else: null
    # or an object without "$" keys (no annotation key starts with "$"; in a strategic patch
    # they would be directives).
    return annotations is None or (
        isinstance(annotations, dict)
        and not (strategic and any(key.startswith("$") for key in annotations))
    )


def _only_annotations(member: object, strategic: bool) -> bool:
    # The value of a patch's "metadata" member that touches nothing but the annotations: an
    # object whose one key (exactly: no other spelling a case-insensitive decoder might read
    # as another field) is "annotations", holding plain annotations.
    return (
        isinstance(member, dict)
        and set(member) <= {"annotations"}
        and _plain_annotations(member.get("annotations"), strategic)
    )


# No "metadata" member in a merge patch (its metadata is left as it is).
_ABSENT = object()


def _merge_metadata(patch: JSON, strategic: bool) -> tuple[bool, JSON]:
    """Whether a (strategic) merge patch can be read member by member, and its ``metadata``
    member (``_ABSENT`` when it has none). Not where it is not an object, has a strategic
    top-level directive (``$patch``, ``$retainKeys``, ``$setElementOrder/...`` may act on
    every member), or a key other than ``metadata`` that reads as it case-insensitively."""
    if not isinstance(patch, dict):
        return False, _ABSENT
    meta: JSON = _ABSENT
    for key, member in patch.items():
        if strategic and key.startswith("$"):
            return False, _ABSENT
        if _names_metadata(key):
            if key != "metadata":
                return False, _ABSENT
            meta = member
    return True, meta


def leaves_metadata_but_annotations(patch: JSON, content_type: str) -> bool:
    """Whether the decoded patch ``patch`` leaves an object's metadata exactly as it is,
    annotations aside, in every implementation of its format and whatever the object: then
    no patch engine, the API server's or ours, can make the result's labels, owner
    references or finalizers differ from the object's own.

    - merge patch (RFC 7386): an object without a ``metadata`` member (an absent member is
      left untouched), or whose ``metadata`` is an object with ``annotations`` alone
      (``kubectl annotate``; ``kubectl apply`` of data or spec with its last-applied
      annotation): a merge patch acts on the members it names and on no other;
    - strategic merge patch: the same, with no top-level directive (``$patch``,
      ``$retainKeys``, ``$setElementOrder/...`` may act on every member), none in
      ``metadata`` and none in its ``annotations``;
    - JSON patch (RFC 6902): a list of operations none of whose ``path`` or ``from`` is the
      whole document or names ``metadata``, except below ``/metadata/annotations``;
    - server-side apply: never (it removes fields the applier owned and no longer sets).

    ``metadata`` and ``annotations`` must be spelt exactly so, and no other key may read as
    ``metadata`` case-insensitively (as Go's encoding/json matches fields). Anything
    malformed is False: that patch is not vouched for.
    """
    mtype = media_type(content_type)
    if mtype in (MERGE_PATCH, STRATEGIC_MERGE_PATCH):
        strategic = mtype == STRATEGIC_MERGE_PATCH
        readable, meta = _merge_metadata(patch, strategic)
        return readable and (meta is _ABSENT or _only_annotations(meta, strategic))
    if mtype != JSON_PATCH or not isinstance(patch, list):
        return False
    for op in patch:
        if not isinstance(op, dict):
            return False
        # "from" (move, copy) is read, and for a move removed: it counts like "path".
        for member in ("path", "from") if "from" in op else ("path",):
            pointer = op.get(member)
            if not isinstance(pointer, str):
                return False
            try:
                tokens = parse_pointer(pointer)
            except PatchError:
                return False
            if not tokens:
                return False
            if _names_metadata(tokens[0]) and tokens[:2] != ["metadata", "annotations"]:
                return False
    return True


def labels_after_patch(
    patch: JSON, content_type: str, labels: Mapping[str, str]
) -> dict[str, str] | None:
    """The labels an object labelled ``labels`` has after the decoded patch ``patch``, when
    every implementation of its format gives the same whatever the rest of the object, and
    leaves the rest of its metadata, annotations aside, exactly as it is; None otherwise.

    Vouched for: a merge patch (RFC 7386) or strategic merge patch whose ``metadata`` member
    (spelt exactly so, and no other key reading as it case-insensitively) is an object with
    ``labels`` and at most ``annotations`` (as ``leaves_metadata_but_annotations`` takes
    them), ``labels`` being null (every label removed) or an object whose values are strings
    (set) or null (removed) - ``kubectl label``'s patch. Both formats merge a map of strings
    that way and no other: RFC 7386 has no choices, and a strategic merge of a map without
    directives is the same merge (no top-level directive, no ``$`` key in ``metadata`` or in
    ``labels``; no label key starts with ``$``). Anything else is None (a value that is not a
    string, ``resourceVersion`` set by the client, JSON patches, server-side apply): the
    API server is asked instead.
    """
    mtype = media_type(content_type)
    if mtype not in (MERGE_PATCH, STRATEGIC_MERGE_PATCH):
        return None
    strategic = mtype == STRATEGIC_MERGE_PATCH
    readable, meta = _merge_metadata(patch, strategic)
    if (
        not readable
        or not isinstance(meta, dict)
        or "labels" not in meta
        or not set(meta) <= {"labels", "annotations"}
        or not _plain_annotations(meta.get("annotations"), strategic)
    ):
        return None
    changes = meta["labels"]
    if changes is None:
        return {}
    if not isinstance(changes, dict):
        return None
    result = dict(labels)
    for key, value in changes.items():
        if strategic and key.startswith("$"):
            return None
        if value is None:
            result.pop(key, None)
        elif isinstance(value, str):
            result[key] = value
        else:
            return None
    return result


def patches_metadata_alone(patch: JSON, content_type: str) -> bool:
    """Whether the decoded merge or strategic merge patch ``patch`` names nothing but
    ``metadata`` (spelt exactly so): ``kubectl label`` and ``kubectl annotate``. Whatever it
    does to the metadata, every other member of the object (a pod's spec) is left as it is."""
    return (
        media_type(content_type) in (MERGE_PATCH, STRATEGIC_MERGE_PATCH)
        and isinstance(patch, dict)
        and set(patch) == {"metadata"}
    )
