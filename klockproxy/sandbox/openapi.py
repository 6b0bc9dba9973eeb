"""OpenAPI v3: the index (``/openapi/v3``) and one document per group/version.

The schemas are permissive (unknown fields are preserved: the sandbox does not validate field
names) but carry what clients look for: ``x-kubernetes-group-version-kind`` on each kind, the
patch merge keys of the lists the sandbox merges, and PATCH operations that accept the
``fieldValidation`` query parameter (kubectl then leaves validation to the server).

Deliberately, the PATCH operations of built-in kinds do not list the strategic merge patch
content type: kubectl then computes client-side ``apply`` patches from its own compiled-in
types (which know every patch merge key) instead of from these partial schemas. The server
still accepts strategic merge patches for every built-in kind.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from typing import Any

from klockproxy.core.patches import DEFAULT_MERGE_KEYS, FieldSchema
from klockproxy.sandbox.resources import Registry, ResourceType

logger = logging.getLogger(__name__)

Obj = dict[str, Any]

_GROUP_PACKAGE = {
    "": "io.k8s.api.core",
    "apps": "io.k8s.api.apps",
    "batch": "io.k8s.api.batch",
    "rbac.authorization.k8s.io": "io.k8s.api.rbac",
    "authentication.k8s.io": "io.k8s.api.authentication",
    "authorization.k8s.io": "io.k8s.api.authorization",
    "policy": "io.k8s.api.policy",
    "apiextensions.k8s.io": "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions",
    "admissionregistration.k8s.io": "io.k8s.api.admissionregistration",
}

OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
STATUS = "io.k8s.apimachinery.pkg.apis.meta.v1.Status"
PATCH = "io.k8s.apimachinery.pkg.apis.meta.v1.Patch"

_PATCH_TYPES_BUILTIN = (
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/apply-patch+yaml",
)


def schema_name(rt: ResourceType) -> str:
    """``io.k8s.api.core.v1.Pod`` / ``dev.rnemet.klock.v1.Lock``."""
    if rt.group in _GROUP_PACKAGE:
        return f"{_GROUP_PACKAGE[rt.group]}.{rt.version}.{rt.kind}"
    reversed_group = ".".join(reversed(rt.group.split(".")))
    return f"{reversed_group}.{rt.version}.{rt.kind}"


def _gvk(group: str, version: str, kind: str) -> list[Obj]:
    return [{"group": group, "version": version, "kind": kind}]


def _object(properties: Mapping[str, Obj] | None = None) -> Obj:
    out: Obj = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    if properties:
        out["properties"] = dict(properties)
    return out


def _field_schema(fs: FieldSchema) -> Obj:
    props = {name: _field_schema(sub) for name, sub in fs.fields.items()}
    if fs.merge_key:
        return {
            "type": "array",
            "items": _object(props),
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": [fs.merge_key],
            "x-kubernetes-patch-merge-key": fs.merge_key,
            "x-kubernetes-patch-strategy": "merge",
        }
    if fs.merge_primitives:
        return {
            "type": "array",
            "items": {"type": "string"},
            "x-kubernetes-list-type": "set",
            "x-kubernetes-patch-strategy": "merge",
        }
    return _object(props)


def _object_meta_schema() -> Obj:
    string_map = {"type": "object", "additionalProperties": {"type": "string", "default": ""}}
    return {
        "description": "ObjectMeta is metadata that all persisted resources must have.",
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "generateName": {"type": "string"},
            "namespace": {"type": "string"},
            "uid": {"type": "string"},
            "resourceVersion": {"type": "string"},
            "generation": {"type": "integer", "format": "int64"},
            "creationTimestamp": {"type": "string", "format": "date-time"},
            "deletionTimestamp": {"type": "string", "format": "date-time"},
            "labels": string_map,
            "annotations": string_map,
            "finalizers": {
                "type": "array",
                "items": {"type": "string", "default": ""},
                "x-kubernetes-list-type": "set",
                "x-kubernetes-patch-strategy": "merge",
            },
            "ownerReferences": {
                "type": "array",
                "items": _object(),
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["uid"],
                "x-kubernetes-patch-merge-key": "uid",
                "x-kubernetes-patch-strategy": "merge",
            },
            "managedFields": {"type": "array", "items": _object()},
        },
    }


def kind_schema(rt: ResourceType) -> Obj:
    base: Obj
    if rt.schema is not None:
        base = json.loads(json.dumps(rt.schema))
        base.setdefault("type", "object")
        props = base.setdefault("properties", {})
    else:
        fields = DEFAULT_MERGE_KEYS.get((rt.group, rt.kind), {})
        props = {n: _field_schema(fs) for n, fs in fields.items() if n != "metadata"}
        base = _object(props)
        props = base.setdefault("properties", {})
    props["apiVersion"] = {"type": "string"}
    props["kind"] = {"type": "string"}
    props["metadata"] = {"allOf": [{"$ref": f"#/components/schemas/{OBJECT_META}"}]}
    base["x-kubernetes-group-version-kind"] = _gvk(rt.group, rt.version, rt.kind)
    return base


def _param(name: str, where: str = "query", required: bool = False) -> Obj:
    return {
        "name": name,
        "in": where,
        "required": required,
        "schema": {"type": "string", "uniqueItems": True},
    }


_QUERY_WRITE = [_param("dryRun"), _param("fieldManager"), _param("fieldValidation")]


def _json_body(ref: str) -> Obj:
    return {"content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


def _response(ref: str) -> Obj:
    return {"200": {"description": "OK", **_json_body(ref)}}


def _operation(rt: ResourceType, action: str, op_id: str, ref: str, **extra: Any) -> Obj:
    return {
        "tags": [rt.api_version.replace("/", "_")],
        "operationId": op_id,
        "responses": _response(ref),
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {
            "group": rt.group,
            "version": rt.version,
            "kind": rt.kind,
        },
        **extra,
    }


def _paths_for(rt: ResourceType) -> dict[str, Obj]:
    prefix = f"/apis/{rt.group}/{rt.version}" if rt.group else "/api/v1"
    scope = "/namespaces/{namespace}" if rt.namespaced else ""
    collection = f"{prefix}{scope}/{rt.resource}"
    item = f"{collection}/{{name}}"
    ref = schema_name(rt)
    name = rt.kind
    common = [_param("namespace", "path", True)] if rt.namespaced else []
    patch_types = _PATCH_TYPES_BUILTIN
    paths: dict[str, Obj] = {}
    coll: Obj = {"parameters": common}
    if "create" in rt.verbs:
        coll["post"] = _operation(
            rt,
            "post",
            f"create{name}",
            ref,
            parameters=list(_QUERY_WRITE),
            requestBody=_json_body(ref),
        )
    if "list" in rt.verbs:
        coll["get"] = _operation(
            rt,
            "list",
            f"list{name}",
            ref,
            parameters=[_param("labelSelector"), _param("fieldSelector"), _param("limit")],
        )
    paths[collection] = coll
    if "get" in rt.verbs:
        paths[item] = {
            "parameters": [*common, _param("name", "path", True)],
            "get": _operation(rt, "get", f"read{name}", ref),
            "put": _operation(
                rt,
                "put",
                f"replace{name}",
                ref,
                parameters=list(_QUERY_WRITE),
                requestBody=_json_body(ref),
            ),
            "patch": _operation(
                rt,
                "patch",
                f"patch{name}",
                ref,
                parameters=[*_QUERY_WRITE, _param("force")],
                requestBody={
                    "content": {
                        t: {"schema": {"$ref": f"#/components/schemas/{PATCH}"}}
                        for t in patch_types
                    },
                    "required": True,
                },
            ),
            "delete": _operation(rt, "delete", f"delete{name}", STATUS),
        }
    return paths


def group_version_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def document(registry: Registry, group: str, version: str) -> Obj | None:
    """The OpenAPI v3 document of one group/version, or None if it is not served."""
    types = registry.in_group_version(group, version)
    if not types:
        return None
    schemas: dict[str, Obj] = {
        OBJECT_META: _object_meta_schema(),
        STATUS: _object({"kind": {"type": "string"}, "code": {"type": "integer"}}),
        PATCH: {"type": "object", "description": "A patch body (any of the patch types)."},
    }
    paths: dict[str, Obj] = {}
    for rt in sorted(types, key=lambda r: r.resource):
        schemas[schema_name(rt)] = kind_schema(rt)
        paths.update(_paths_for(rt))
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.37.0-sandbox"},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def document_bytes(registry: Registry, group: str, version: str) -> bytes | None:
    doc = document(registry, group, version)
    if doc is None:
        return None
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def _hash(data: bytes) -> str:
    return hashlib.sha512(data).hexdigest()[:128].upper()


def index(registry: Registry) -> Obj:
    """``/openapi/v3``: each served group/version with a content-hash URL."""
    gvs: list[tuple[str, str]] = [("", "v1")]
    for g, versions in registry.group_versions():
        gvs.extend((g, v) for v in versions)
    paths: dict[str, Obj] = {}
    for g, v in gvs:
        data = document_bytes(registry, g, v)
        if data is None:
            continue
        key = group_version_path(g, v)
        paths[key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash={_hash(data)}"}
    return {"paths": paths}
