"""Request bodies as the API server reads them: the sandbox's own decoding and patching.

The sandbox is the test oracle for the proxy, so it must not share the code under test: it
does not use ``klockproxy.core.codec`` or the core's JSON/merge patch engines. Where the core
is strict on purpose (it refuses what it cannot judge without doubt), the sandbox does what a
real API server does with the same bytes, so a test can show what would have been stored.

JSON (the API server: ``sigs.k8s.io/json``, a case-sensitive fork of Go's ``encoding/json``):

* Keys are case-sensitive (Python's already are); ``NaN``/``Infinity`` are not JSON (400).
* Invalid UTF-8 and lone escaped surrogates become U+FFFD, as Go decodes them.
* Duplicate keys: with ``fieldValidation=Strict`` a 400 ("duplicate field"). Otherwise, for a
  built-in kind (decoded into Go structs) a repeated key decodes INTO the first value: objects
  merge key by key (struct fields and maps are reused), arrays merge element by element and
  take the later length, scalars and ``null`` take the later value. For a custom resource
  (decoded into plain maps) the later value replaces the earlier one.

YAML (``sigs.k8s.io/yaml``: go-yaml v2, then JSON): PyYAML's safe loader with go-yaml's
differences: an unquoted timestamp stays a string, ``y``/``n`` (any case) are booleans as in
YAML 1.1, ``<<`` merge keys apply in document order (a later key overwrites, whichever it is),
scalar keys become strings. Duplicate keys: refused with ``fieldValidation=Strict``, else the
later one wins (go-yaml v2 into ``interface{}``).

JSON patch: the ``jsonpatch`` library (RFC 6902), with the API server's library
(evanphx/json-patch v4) where it departs from the RFC and the difference is cheap to follow:
negative array indices count from the end, and ``add`` at the root is refused. JSON merge
patch: RFC 7386 below, refusing a patch that is not an object or array (the library's
``ErrBadJSONPatch``).
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Iterator, Mapping
from typing import Any

import jsonpatch
import jsonpointer
import yaml

from klockproxy.sandbox.errors import ApiError, BadRequestError

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
MAX_YAML_VALUES = 1_000_000


class DuplicateFieldError(ValueError):
    """A repeated key under ``fieldValidation=Strict``."""


class JsonPatchTestFailedError(ValueError):
    """A JSON patch ``test`` operation failed (the API server answers 422)."""


def _go_string(text: str) -> str:
    # Python's json joins escaped surrogate pairs but keeps a lone one; Go writes U+FFFD.
    return _LONE_SURROGATE.sub("\ufffd", text) if _LONE_SURROGATE.search(text) else text


def _into(earlier: Any, later: Any) -> Any:
    """``later`` decoded into ``earlier``, as Go's ``encoding/json`` decodes into a struct."""
    if isinstance(earlier, dict) and isinstance(later, dict):
        merged = dict(earlier)
        for key, value in later.items():
            merged[key] = _into(merged[key], value) if key in merged else value
        return merged
    if isinstance(earlier, list) and isinstance(later, list):
        return [_into(earlier[i], v) if i < len(earlier) else v for i, v in enumerate(later)]
    return later


def _object_hook(*, typed: bool, strict: bool) -> Any:
    def build(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for raw_key, value in pairs:
            key = _go_string(raw_key)
            if isinstance(value, str):
                value = _go_string(value)
            elif isinstance(value, list):
                value = [_go_string(v) if isinstance(v, str) else v for v in value]
            if key in out:
                if strict:
                    raise DuplicateFieldError(f'duplicate field "{key}"')
                out[key] = _into(out[key], value) if typed else value
            else:
                out[key] = value
        return out

    return build


def _not_json(name: str) -> Any:
    raise ValueError(f"invalid character '{name[0]}' looking for beginning of value")


def decode_json(raw: bytes, *, typed: bool = False, strict: bool = False) -> Any:
    """Any JSON value, read as the API server reads it (``ValueError`` when it is not JSON,
    ``DuplicateFieldError`` for a repeated key under ``strict``)."""
    text = raw.decode("utf-8", errors="replace")
    value = json.loads(
        text, parse_constant=_not_json, object_pairs_hook=_object_hook(typed=typed, strict=strict)
    )
    if isinstance(value, str):
        return _go_string(value)
    if isinstance(value, list):
        return [_go_string(v) if isinstance(v, str) else v for v in value]
    return value


class _GoYamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader, changed where go-yaml v2 (the API server's YAML) reads otherwise."""

    strict = False

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        # Merge keys are applied in document order by construct_mapping below.
        return None

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if not isinstance(node, yaml.MappingNode):
            raise yaml.constructor.ConstructorError(
                None, None, f"expected a mapping node, but found {node.id}", node.start_mark
            )
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else []
                # go-yaml merges the mappings of a sequence from the last to the first.
                for source in reversed(sources) if sources else [value_node]:
                    out.update(self.construct_mapping(source, deep=True))
                continue
            key = _yaml_key(self.construct_object(key_node, deep=True))
            if key in out and self.strict:
                raise DuplicateFieldError(f'mapping key "{key}" already defined')
            out[key] = self.construct_object(value_node, deep=deep)
        return out


class _StrictGoYamlLoader(_GoYamlLoader):
    strict = True


for _loader in (_GoYamlLoader, _StrictGoYamlLoader):
    _loader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    # YAML 1.1 as go-yaml v2 reads it: y/Y/n/N are booleans too.
    _loader.add_implicit_resolver(
        "tag:yaml.org,2002:bool", re.compile(r"^(?:y|Y|n|N)$"), list("yYnN")
    )


def _yaml_bool(loader: yaml.SafeLoader, node: yaml.Node) -> bool:
    if not isinstance(node, yaml.ScalarNode):
        raise yaml.constructor.ConstructorError(None, None, "a boolean must be a scalar")
    return str(loader.construct_scalar(node)).lower() in ("y", "yes", "true", "on")


_GoYamlLoader.add_constructor("tag:yaml.org,2002:bool", _yaml_bool)


def _yaml_key(key: Any) -> Any:
    """A scalar key as the YAML-to-JSON conversion writes it (``true``, ``1``, ``null``)."""
    if isinstance(key, bool):
        return "true" if key else "false"
    if key is None:
        return "null"
    if isinstance(key, int | float):
        return json.dumps(key)
    return key


def decode_yaml(raw: bytes, *, strict: bool = False) -> Any:
    """One YAML document as JSON data (``yaml.YAMLError``/``ValueError`` when it is not)."""
    loader = _StrictGoYamlLoader if strict else _GoYamlLoader
    value = yaml.load(raw, Loader=loader)  # a SafeLoader subclass
    # What JSON cannot carry fails the conversion, as in Go; aliases can make a short text
    # expand to billions of values, so only so many are looked at.
    for seen, item in enumerate(_every_value(value)):
        if seen == MAX_YAML_VALUES:
            raise ValueError(f"the document expands to more than {MAX_YAML_VALUES} values")
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"json: unsupported value: {item}")
        if not isinstance(item, _JSON_TYPES):
            raise ValueError(f"json: unsupported type: {type(item).__name__}")
    return value


_JSON_TYPES = (dict, list, str, int, float, type(None))


def _every_value(value: Any) -> Iterator[Any]:
    """``value`` and everything in it; a value shared by aliases comes once per use."""
    pending = [value]
    while pending:
        item = pending.pop()
        yield item
        if isinstance(item, dict | list):
            pending.extend(item.values() if isinstance(item, dict) else item)


# --------------------------------------------------------------------------------------------
# Patches
# --------------------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: a new value, keys in the target's order, then the patch's."""
    if not isinstance(patch, dict):
        return patch
    base = target if isinstance(target, dict) else {}
    order = [*base, *(k for k in patch if k not in base)]
    return {
        k: merge_patch(base.get(k), patch[k]) if k in patch else base[k]
        for k in order
        if not (k in patch and patch[k] is None)
    }


def _resolve_negative(doc: Any, path: str, *, insert: bool) -> str:
    """``path`` with negative array indices made positive, as evanphx/json-patch v4 reads them."""
    if not isinstance(path, str) or "/-" not in path:
        return path
    tokens = path.split("/")[1:]
    node = doc
    for i, token in enumerate(tokens):
        last = i == len(tokens) - 1
        if isinstance(node, list) and re.fullmatch(r"-[1-9][0-9]*", token):
            index = int(token) + len(node) + (1 if insert and last else 0)
            tokens[i] = str(index) if index >= 0 else token
        if last:
            break
        key = tokens[i].replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict):
            node = node.get(key)
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            break
    return "/" + "/".join(tokens)


def json_patch(doc: Any, ops: Any) -> Any:
    """Apply an RFC 6902 patch with the ``jsonpatch`` library, one operation at a time (so
    negative indices resolve against the document as each operation finds it)."""
    if not isinstance(ops, list):
        raise ValueError("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    result = doc
    for op in ops:
        if isinstance(op, Mapping):
            if op.get("op") in ("add", "move", "copy") and op.get("path") == "":
                raise ValueError(f'{op["op"]} operation does not apply: doc is missing path: ""')
            fixed = dict(op)
            for member in ("path", "from"):
                if member in fixed:
                    insert = member == "path" and op.get("op") in ("add", "move", "copy")
                    fixed[member] = _resolve_negative(result, fixed[member], insert=insert)
            op = fixed
        try:
            result = jsonpatch.apply_patch(result, [op])
        except jsonpatch.JsonPatchTestFailed as e:
            raise JsonPatchTestFailedError(str(e)) from e
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as e:
            raise ValueError(str(e)) from e
        except (TypeError, KeyError, IndexError, AttributeError) as e:
            raise ValueError(f"malformed operation: {e}") from e
    return result


def apply_json_or_merge_patch(obj: Mapping[str, Any], raw: bytes, json_patch_type: bool) -> Any:
    """A JSON patch or merge patch request body applied to ``obj``, with the API server's
    statuses (400 unreadable patch, 422 failed test or inapplicable operation)."""
    try:
        patch = decode_json(raw)
    except ValueError as e:
        raise BadRequestError(str(e)) from e
    if json_patch_type:
        if not isinstance(patch, list):
            raise BadRequestError(
                "json: cannot unmarshal object into Go value of type jsonpatch.Patch"
            )
        try:
            return json_patch(obj, patch)
        except JsonPatchTestFailedError as e:
            raise ApiError(f"testing value failed: {e}", code=422, reason="Invalid") from e
        except ValueError as e:
            raise ApiError(str(e), code=422, reason="Invalid") from e
    if not isinstance(patch, dict | list):
        raise BadRequestError("Invalid JSON Patch")
    # A deep copy: the result is stored, and must share nothing with the stored object.
    return merge_patch(copy.deepcopy(dict(obj)), patch)
