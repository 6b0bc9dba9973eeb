"""Legacy (unaggregated) discovery documents: /api, /apis, /api/v1, /apis/<g>/<v>."""

from __future__ import annotations

import logging
from typing import Any

from klockproxy.sandbox.resources import Registry, ResourceType

logger = logging.getLogger(__name__)

Obj = dict[str, Any]

# Subresources whose kind lives in another group/version.
_SUBRESOURCE_GV: dict[str, tuple[str, str]] = {
    "scale": ("autoscaling", "v1"),
    "eviction": ("policy", "v1"),
    "token": ("authentication.k8s.io", "v1"),
}


def api_versions(server_address: str) -> Obj:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
        ],
    }


def _group(name: str, versions: list[str]) -> Obj:
    gvs = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
    return {"name": name, "versions": gvs, "preferredVersion": gvs[0]}


def api_group_list(registry: Registry) -> Obj:
    return {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [_group(g, vs) for g, vs in registry.group_versions() if vs],
    }


def api_group(registry: Registry, group: str) -> Obj | None:
    for g, vs in registry.group_versions():
        if g == group and vs:
            return {"kind": "APIGroup", "apiVersion": "v1", **_group(g, vs)}
    return None


def _resource_entry(rt: ResourceType) -> Obj:
    entry: Obj = {
        "name": rt.resource,
        "singularName": rt.singular_name,
        "namespaced": rt.namespaced,
        "kind": rt.kind,
        "verbs": sorted(rt.verbs),
    }
    if rt.short_names:
        entry["shortNames"] = list(rt.short_names)
    if rt.categories:
        entry["categories"] = list(rt.categories)
    if rt.storable:
        entry["storageVersionHash"] = f"sandbox-{rt.kind.lower()}"
    return entry


def api_resource_list(registry: Registry, group: str, version: str) -> Obj | None:
    types = registry.in_group_version(group, version)
    if not types:
        return None
    resources: list[Obj] = []
    for rt in sorted(types, key=lambda r: r.resource):
        resources.append(_resource_entry(rt))
        for sub, (kind, verbs) in sorted(rt.subresources.items()):
            entry: Obj = {
                "name": f"{rt.resource}/{sub}",
                "singularName": "",
                "namespaced": rt.namespaced,
                "kind": kind,
                "verbs": sorted(verbs),
            }
            if sub in _SUBRESOURCE_GV:
                entry["group"], entry["version"] = _SUBRESOURCE_GV[sub]
            resources.append(entry)
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": resources,
    }
