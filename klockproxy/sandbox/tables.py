"""``meta.k8s.io/v1`` Table responses: the columns kubectl prints for ``get``."""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from typing import Any

from klockproxy.sandbox.resources import ResourceType

logger = logging.getLogger(__name__)

Obj = dict[str, Any]
Column = tuple[str, str, int, Callable[[Obj], Any]]  # name, type, priority, cell

_DESCRIPTIONS = {
    "Name": "Name must be unique within a namespace.",
    "Age": "CreationTimestamp is a timestamp representing the server time when this object "
    "was created.",
}


def human_duration(seconds: float) -> str:
    """Go's ``duration.HumanDuration`` (what the Age column shows)."""
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        rest = s % 60
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h{rest}m" if rest else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        days, rest = divmod(hours, 24)
        return f"{days}d{rest}h" if rest else f"{days}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        years, rest = divmod(hours // 24, 365)
        return f"{years}y{rest}d" if rest else f"{years}y"
    return f"{hours // (24 * 365)}y"


def _parse_time(value: str) -> datetime.datetime | None:
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def age(obj: Obj) -> str:
    ts = (obj.get("metadata") or {}).get("creationTimestamp")
    created = _parse_time(ts) if isinstance(ts, str) else None
    if created is None:
        return "<unknown>"
    now = datetime.datetime.now(datetime.UTC)
    return human_duration((now - created).total_seconds())


def _name(obj: Obj) -> str:
    name: str = obj.get("metadata", {}).get("name", "")
    return name


def _pod_ready(obj: Obj) -> str:
    containers = (obj.get("spec") or {}).get("containers") or []
    statuses = (obj.get("status") or {}).get("containerStatuses") or []
    ready = sum(1 for s in statuses if s.get("ready"))
    return f"{ready}/{len(containers)}"


def _pod_status(obj: Obj) -> str:
    if (obj.get("metadata") or {}).get("deletionTimestamp"):
        return "Terminating"
    status = obj.get("status") or {}
    return str(status.get("reason") or status.get("phase") or "Pending")


def _pod_restarts(obj: Obj) -> int:
    statuses = (obj.get("status") or {}).get("containerStatuses") or []
    return sum(int(s.get("restartCount", 0)) for s in statuses)


def _or_none(value: Any) -> str:
    return str(value) if value not in (None, "") else "<none>"


def _join(values: list[str]) -> str:
    return ",".join(values) if values else "<none>"


def _containers(obj: Obj) -> list[Obj]:
    spec = ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}
    containers: list[Obj] = spec.get("containers") or []
    return containers


def _selector_string(selector: Any) -> str:
    if not isinstance(selector, dict):
        return "<none>"
    parts = [f"{k}={v}" for k, v in (selector.get("matchLabels") or {}).items()]
    for expr in selector.get("matchExpressions") or []:
        op = str(expr.get("operator", "")).lower()
        vals = ",".join(expr.get("values") or [])
        parts.append(f"{expr.get('key')} {op} ({vals})" if vals else f"{expr.get('key')}")
    return ",".join(parts) if parts else "<none>"


def _service_ports(obj: Obj) -> str:
    ports = (obj.get("spec") or {}).get("ports") or []
    out = []
    for p in ports:
        text = f"{p.get('port')}"
        if p.get("nodePort"):
            text += f":{p['nodePort']}"
        out.append(f"{text}/{p.get('protocol', 'TCP')}")
    return ",".join(out) if out else "<none>"


def _pdb_bound(obj: Obj, key: str) -> str:
    """A PodDisruptionBudget's minAvailable / maxUnavailable (an int or a percentage), or N/A
    when unset, as kubectl's printer shows it."""
    value = (obj.get("spec") or {}).get(key)
    return "N/A" if value is None else str(value)


def _subjects(obj: Obj, kind: str) -> str:
    names = []
    for s in obj.get("subjects") or []:
        if s.get("kind") != kind:
            continue
        if kind == "ServiceAccount":
            names.append(f"{s.get('namespace', '')}/{s.get('name', '')}")
        else:
            names.append(str(s.get("name", "")))
    return ", ".join(names)


def _node_status(obj: Obj) -> str:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            status = "Ready" if cond.get("status") == "True" else "NotReady"
            if (obj.get("spec") or {}).get("unschedulable"):
                status += ",SchedulingDisabled"
            return status
    return "Unknown"


def _node_roles(obj: Obj) -> str:
    prefix = "node-role.kubernetes.io/"
    labels = (obj.get("metadata") or {}).get("labels") or {}
    roles = sorted(k[len(prefix) :] for k in labels if k.startswith(prefix))
    return ",".join(roles) if roles else "<none>"


def _node_info(obj: Obj, key: str) -> str:
    return _or_none(((obj.get("status") or {}).get("nodeInfo") or {}).get(key))


def _node_address(obj: Obj, kind: str) -> str:
    for address in (obj.get("status") or {}).get("addresses") or []:
        if address.get("type") == kind:
            return str(address.get("address", ""))
    return "<none>"


def _created_at(obj: Obj) -> str:
    ts: str = (obj.get("metadata") or {}).get("creationTimestamp", "")
    return ts


_NAME: Column = ("Name", "string", 0, _name)
_AGE: Column = ("Age", "string", 0, age)

# RoleBindings and ClusterRoleBindings show the same columns, as kubectl's printers do.
_BINDING_COLUMNS: list[Column] = [
    _NAME,
    (
        "Role",
        "string",
        0,
        lambda o: f"{o.get('roleRef', {}).get('kind', '')}/{o.get('roleRef', {}).get('name', '')}",
    ),
    _AGE,
    ("Users", "string", 1, lambda o: _subjects(o, "User")),
    ("Groups", "string", 1, lambda o: _subjects(o, "Group")),
    ("ServiceAccounts", "string", 1, lambda o: _subjects(o, "ServiceAccount")),
]

COLUMNS: dict[tuple[str, str], list[Column]] = {
    ("", "pods"): [
        _NAME,
        ("Ready", "string", 0, _pod_ready),
        ("Status", "string", 0, _pod_status),
        ("Restarts", "string", 0, _pod_restarts),
        _AGE,
        ("IP", "string", 1, lambda o: _or_none((o.get("status") or {}).get("podIP"))),
        ("Node", "string", 1, lambda o: _or_none((o.get("spec") or {}).get("nodeName"))),
        ("Nominated Node", "string", 1, lambda o: _or_none(None)),
        ("Readiness Gates", "string", 1, lambda o: _or_none(None)),
    ],
    ("", "nodes"): [
        _NAME,
        ("Status", "string", 0, _node_status),
        ("Roles", "string", 0, _node_roles),
        _AGE,
        ("Version", "string", 0, lambda o: _node_info(o, "kubeletVersion")),
        ("Internal-IP", "string", 1, lambda o: _node_address(o, "InternalIP")),
        ("External-IP", "string", 1, lambda o: _node_address(o, "ExternalIP")),
        ("OS-Image", "string", 1, lambda o: _node_info(o, "osImage")),
        ("Kernel-Version", "string", 1, lambda o: _node_info(o, "kernelVersion")),
        ("Container-Runtime", "string", 1, lambda o: _node_info(o, "containerRuntimeVersion")),
    ],
    ("", "configmaps"): [
        _NAME,
        ("Data", "integer", 0, lambda o: len(o.get("data") or {}) + len(o.get("binaryData") or {})),
        _AGE,
    ],
    ("", "secrets"): [
        _NAME,
        ("Type", "string", 0, lambda o: o.get("type", "Opaque")),
        ("Data", "integer", 0, lambda o: len(o.get("data") or {})),
        _AGE,
    ],
    ("", "namespaces"): [
        _NAME,
        ("Status", "string", 0, lambda o: (o.get("status") or {}).get("phase", "Active")),
        _AGE,
    ],
    ("", "serviceaccounts"): [
        _NAME,
        ("Secrets", "string", 0, lambda o: len(o.get("secrets") or [])),
        _AGE,
    ],
    ("", "services"): [
        _NAME,
        ("Type", "string", 0, lambda o: (o.get("spec") or {}).get("type", "ClusterIP")),
        ("Cluster-IP", "string", 0, lambda o: _or_none((o.get("spec") or {}).get("clusterIP"))),
        ("External-IP", "string", 0, lambda o: _or_none(None)),
        ("Port(s)", "string", 0, _service_ports),
        _AGE,
        (
            "Selector",
            "string",
            1,
            lambda o: _join(
                [f"{k}={v}" for k, v in ((o.get("spec") or {}).get("selector") or {}).items()]
            ),
        ),
    ],
    ("apps", "deployments"): [
        _NAME,
        (
            "Ready",
            "string",
            0,
            lambda o: (
                f"{(o.get('status') or {}).get('readyReplicas', 0)}/"
                f"{(o.get('spec') or {}).get('replicas', 1)}"
            ),
        ),
        ("Up-to-date", "integer", 0, lambda o: (o.get("status") or {}).get("updatedReplicas", 0)),
        ("Available", "integer", 0, lambda o: (o.get("status") or {}).get("availableReplicas", 0)),
        _AGE,
        ("Containers", "string", 1, lambda o: _join([c.get("name", "") for c in _containers(o)])),
        ("Images", "string", 1, lambda o: _join([c.get("image", "") for c in _containers(o)])),
        (
            "Selector",
            "string",
            1,
            lambda o: _selector_string((o.get("spec") or {}).get("selector")),
        ),
    ],
    ("policy", "poddisruptionbudgets"): [
        _NAME,
        ("Min Available", "string", 0, lambda o: _pdb_bound(o, "minAvailable")),
        ("Max Unavailable", "string", 0, lambda o: _pdb_bound(o, "maxUnavailable")),
        (
            "Allowed Disruptions",
            "integer",
            0,
            lambda o: (o.get("status") or {}).get("disruptionsAllowed", 0),
        ),
        _AGE,
    ],
    ("rbac.authorization.k8s.io", "roles"): [_NAME, ("Created At", "date", 0, _created_at)],
    ("rbac.authorization.k8s.io", "clusterroles"): [
        _NAME,
        ("Created At", "date", 0, _created_at),
    ],
    ("rbac.authorization.k8s.io", "rolebindings"): _BINDING_COLUMNS,
    ("rbac.authorization.k8s.io", "clusterrolebindings"): _BINDING_COLUMNS,
    ("admissionregistration.k8s.io", "validatingwebhookconfigurations"): [
        _NAME,
        ("Webhooks", "integer", 0, lambda o: len(o.get("webhooks") or [])),
        _AGE,
    ],
    ("apiextensions.k8s.io", "customresourcedefinitions"): [
        _NAME,
        ("Created At", "date", 0, _created_at),
    ],
}


def _json_path(obj: Obj, path: str) -> Any:
    """The simple ``.a.b`` JSONPath subset used by most additionalPrinterColumns."""
    cur: Any = obj
    for part in path.strip().lstrip(".").split("."):
        if not part:
            continue
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def _custom_columns(rt: ResourceType) -> list[Column]:
    cols: list[Column] = [_NAME]
    has_age = False
    for pc in rt.printer_columns:
        path = str(pc.get("jsonPath", ""))
        if path == ".metadata.creationTimestamp":
            has_age = True
        col_type = str(pc.get("type", "string"))

        def cell(o: Obj, p: str = path, t: str = col_type) -> Any:
            value = _json_path(o, p)
            if t == "date" and isinstance(value, str):
                created = _parse_time(value)
                if created is not None:
                    now = datetime.datetime.now(datetime.UTC)
                    return human_duration((now - created).total_seconds())
            return "<none>" if value is None else value

        cols.append((str(pc.get("name", path)), col_type, int(pc.get("priority", 0)), cell))
    if not has_age:
        cols.append(_AGE)
    return cols


def columns_for(rt: ResourceType) -> list[Column]:
    if not rt.builtin:
        return _custom_columns(rt)
    return COLUMNS.get((rt.group, rt.resource), [_NAME, _AGE])


def partial_metadata(obj: Obj) -> Obj:
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata", {}),
    }


def column_definitions(rt: ResourceType) -> list[Obj]:
    out = []
    for name, col_type, priority, _ in columns_for(rt):
        out.append(
            {
                "name": name,
                "type": "string" if col_type == "date" and name == "Age" else col_type,
                "format": "name" if name == "Name" else "",
                "description": _DESCRIPTIONS.get(name, name),
                "priority": priority,
            }
        )
    return out


def row(rt: ResourceType, obj: Obj, include_object: str) -> Obj:
    cells = []
    for _, _, _, cell in columns_for(rt):
        try:
            cells.append(cell(obj))
        except (KeyError, TypeError, ValueError, AttributeError):
            cells.append("<unknown>")
    out: Obj = {"cells": cells}
    if include_object == "Object":
        out["object"] = obj
    elif include_object != "None":
        out["object"] = partial_metadata(obj)
    return out


def table(
    rt: ResourceType,
    objects: list[Obj],
    *,
    include_object: str = "Metadata",
    list_metadata: Obj | None = None,
    with_columns: bool = True,
) -> Obj:
    """A Table of ``objects`` (rows in order)."""
    out: Obj = {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_metadata or {},
        "columnDefinitions": column_definitions(rt) if with_columns else None,
        "rows": [row(rt, o, include_object) for o in objects],
    }
    return out
