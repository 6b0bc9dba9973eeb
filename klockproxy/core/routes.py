"""Which request shapes the API server serves, for the kinds built into Kubernetes.

The API server's RequestInfo (``klockproxy.core.requests.classify``) reads any path the same
way, whether or not a handler is registered for it; its router then answers 404 or 405 for a
shape no resource has. A more lenient server or front behind the proxy might act on such a
request anyway (``DELETE /api/v1/pods`` deleting pods of every namespace,
``/api/v1/namespaces/free/namespaces/team`` deleting namespace ``team`` while the proxy's
fast path looked at namespace ``free``). So mutations are judged only on shapes a real API
server serves, and refused otherwise (``UnservedRouteError``):

* a namespaced kind addressed without a namespace serves only list and watch;
* a cluster-scoped kind is never addressed under ``namespaces/NS/``;
* a kind's verbs: namespaces have no deletecollection, the review kinds only create,
  componentstatuses are read-only;
* ``namespaces/NS/namespaces/...`` is refused in any group (no kind is a namespace inside a
  namespace).

For kinds this table does not know (custom resources, aggregated APIs, kinds newer than the
table), a mutation that names no namespace needs the kind from the API server's discovery
(``needs_discovery``; ``kinds_from_discovery`` reads it, klockproxy.cluster.discovery caches
it) and is then checked the same way: a namespaced custom kind has no cluster-wide
deletecollection either. Under ``namespaces/NS/`` the scope is in the path; only the last
rule applies there (a cluster-scoped kind addressed that way is a 404 of a real API server,
and Locks only ever cover namespaced objects).

A subresource the (known) kind does not have is not a shape to judge either: the API server
answers 404 (``kubectl scale pod/x``). Such a request is classified with ``served=False``, so
it has no admission operation and no Lock can match it; it is forwarded for the API server
to refuse.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from klockproxy.core.errors import UnservedRouteError
from klockproxy.core.requests import RequestInfo

ALL_VERBS = frozenset(
    {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"}
)
CREATE_ONLY = frozenset({"create"})
READ_ONLY = frozenset({"get", "list"})


@dataclass(frozen=True, slots=True)
class Kind:
    """How the API server serves one built-in resource."""

    namespaced: bool
    subresources: frozenset[str] = frozenset()
    verbs: frozenset[str] = ALL_VERBS


def _kinds(
    namespaced: bool,
    *resources: str,
    subresources: tuple[str, ...] = (),
    verbs: frozenset[str] = ALL_VERBS,
) -> dict[str, Kind]:
    kind = Kind(namespaced, frozenset(subresources), verbs)
    return dict.fromkeys(resources, kind)


_STATUS = ("status",)
_SCALE = ("scale", "status")
_POD_SUBRESOURCES = (
    "attach",
    "binding",
    "ephemeralcontainers",
    "eviction",
    "exec",
    "log",
    "portforward",
    "proxy",
    "resize",
    "status",
)

# (group) -> resource -> Kind, as ``kubectl api-resources`` lists them (Kubernetes 1.33).
BUILTIN: Mapping[str, Mapping[str, Kind]] = {
    "": {
        **_kinds(True, "bindings", verbs=CREATE_ONLY),
        **_kinds(False, "componentstatuses", verbs=READ_ONLY),
        **_kinds(True, "configmaps", "endpoints", "events", "limitranges", "podtemplates"),
        **_kinds(True, "secrets"),
        **_kinds(
            False,
            "namespaces",
            subresources=("finalize", "status"),
            verbs=ALL_VERBS - {"deletecollection"},
        ),
        **_kinds(False, "nodes", subresources=("proxy", "status")),
        **_kinds(True, "persistentvolumeclaims", "resourcequotas", subresources=_STATUS),
        **_kinds(False, "persistentvolumes", subresources=_STATUS),
        **_kinds(True, "pods", subresources=_POD_SUBRESOURCES),
        **_kinds(True, "replicationcontrollers", subresources=_SCALE),
        **_kinds(True, "serviceaccounts", subresources=("token",)),
        **_kinds(True, "services", subresources=("proxy", "status")),
    },
    "admissionregistration.k8s.io": {
        **_kinds(False, "mutatingwebhookconfigurations", "validatingwebhookconfigurations"),
        **_kinds(False, "validatingadmissionpolicybindings", "mutatingadmissionpolicybindings"),
        **_kinds(
            False, "validatingadmissionpolicies", "mutatingadmissionpolicies", subresources=_STATUS
        ),
    },
    "apiextensions.k8s.io": _kinds(False, "customresourcedefinitions", subresources=_STATUS),
    "apiregistration.k8s.io": _kinds(False, "apiservices", subresources=_STATUS),
    "apps": {
        **_kinds(True, "controllerrevisions"),
        **_kinds(True, "daemonsets", subresources=_STATUS),
        **_kinds(True, "deployments", "replicasets", "statefulsets", subresources=_SCALE),
    },
    "authentication.k8s.io": _kinds(False, "selfsubjectreviews", "tokenreviews", verbs=CREATE_ONLY),
    "authorization.k8s.io": {
        **_kinds(True, "localsubjectaccessreviews", verbs=CREATE_ONLY),
        **_kinds(
            False,
            "selfsubjectaccessreviews",
            "selfsubjectrulesreviews",
            "subjectaccessreviews",
            verbs=CREATE_ONLY,
        ),
    },
    "autoscaling": _kinds(True, "horizontalpodautoscalers", subresources=_STATUS),
    "batch": _kinds(True, "cronjobs", "jobs", subresources=_STATUS),
    "certificates.k8s.io": {
        **_kinds(False, "certificatesigningrequests", subresources=("approval", "status")),
        **_kinds(False, "clustertrustbundles"),
    },
    "coordination.k8s.io": _kinds(True, "leases", "leasecandidates"),
    "discovery.k8s.io": _kinds(True, "endpointslices"),
    "events.k8s.io": _kinds(True, "events"),
    "flowcontrol.apiserver.k8s.io": _kinds(
        False, "flowschemas", "prioritylevelconfigurations", subresources=_STATUS
    ),
    "internal.apiserver.k8s.io": _kinds(False, "storageversions", subresources=_STATUS),
    "networking.k8s.io": {
        **_kinds(False, "ingressclasses", "ipaddresses"),
        **_kinds(False, "servicecidrs", subresources=_STATUS),
        **_kinds(True, "ingresses", "networkpolicies", subresources=_STATUS),
    },
    "node.k8s.io": _kinds(False, "runtimeclasses"),
    "policy": _kinds(True, "poddisruptionbudgets", subresources=_STATUS),
    "rbac.authorization.k8s.io": {
        **_kinds(False, "clusterrolebindings", "clusterroles"),
        **_kinds(True, "rolebindings", "roles"),
    },
    "resource.k8s.io": {
        **_kinds(False, "deviceclasses", "resourceslices"),
        **_kinds(True, "resourceclaimtemplates"),
        **_kinds(True, "resourceclaims", subresources=_STATUS),
    },
    "scheduling.k8s.io": _kinds(False, "priorityclasses"),
    "storage.k8s.io": {
        **_kinds(False, "csidrivers", "csinodes", "storageclasses", "volumeattributesclasses"),
        **_kinds(True, "csistoragecapacities"),
        **_kinds(False, "volumeattachments", subresources=_STATUS),
    },
    "storagemigration.k8s.io": _kinds(False, "storageversionmigrations", subresources=_STATUS),
}


def builtin_kind(group: str, resource: str) -> Kind | None:
    """The table's entry for a built-in resource, or None (custom or unknown)."""
    return BUILTIN.get(group, {}).get(resource)


def needs_discovery(info: RequestInfo) -> bool:
    """Whether the scope of the kind must come from the API server's discovery: a mutation
    of a kind the table does not know, addressed without a namespace. If that kind is
    namespaced, a lenient server could act in every namespace while the proxy judged none."""
    return (
        info.is_mutation and not info.namespace and builtin_kind(info.group, info.resource) is None
    )


def check_route(info: RequestInfo, kind: Kind | None = None) -> RequestInfo:
    """``info``, with ``served=False`` for a subresource the kind does not have; raises
    UnservedRouteError for a shape the API server does not serve (see the module doc).

    ``kind`` describes the resource when it is not in the table (from discovery); without
    it, a resource the table does not know is only checked for what no kind can be.
    """
    if not info.is_resource_request:
        return info
    where = f"{info.path!r}"
    if info.scoped and info.resource == "namespaces":
        raise UnservedRouteError(
            f"the API server does not serve a namespace inside a namespace ({where})"
        )
    kind = builtin_kind(info.group, info.resource) or kind
    if kind is None:
        return info
    resource = f"{info.resource}.{info.group}" if info.group else info.resource
    if kind.namespaced and not info.namespace and info.verb not in ("list", "watch"):
        raise UnservedRouteError(
            f"the API server does not serve {info.verb} of {resource} without a namespace "
            f"({resource} are namespaced; {where})"
        )
    if not kind.namespaced and info.scoped:
        raise UnservedRouteError(
            f"the API server does not serve {resource} under a namespace ({resource} are "
            f"cluster-scoped; {where})"
        )
    if info.subresource:
        if info.subresource not in kind.subresources:
            return replace(info, served=False)
        return info
    if info.verb not in kind.verbs:
        raise UnservedRouteError(
            f"the API server does not serve {info.verb} of {resource} ({where})"
        )
    return info


def kinds_from_discovery(doc: Mapping[str, Any]) -> dict[str, Kind]:
    """The resources of an ``APIResourceList`` (``GET /apis/GROUP/VERSION``) as Kinds:
    scope, verbs, and the subresources listed as ``resource/subresource``."""
    entries = [r for r in doc.get("resources") or () if isinstance(r, Mapping)]
    subresources: dict[str, set[str]] = {}
    for entry in entries:
        parent, slash, sub = str(entry.get("name") or "").partition("/")
        if slash and sub:
            subresources.setdefault(parent, set()).add(sub)
    kinds = {}
    for entry in entries:
        name = str(entry.get("name") or "")
        if not name or "/" in name:
            continue
        verbs = frozenset(str(v) for v in entry.get("verbs") or ())
        kinds[name] = Kind(
            namespaced=bool(entry.get("namespaced")),
            subresources=frozenset(subresources.get(name, ())),
            verbs=verbs,
        )
    return kinds
