"""The resource types the sandbox serves: built-in kinds and those CRDs register.

A :class:`ResourceType` says everything discovery, OpenAPI, tables and the request
handlers need: group/version, plural, kind, scope, short names, verbs and subresources.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from klockproxy.core.patches import DEFAULT_MERGE_KEYS, FieldSchema, KindKey, Schema

logger = logging.getLogger(__name__)

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
CREATE_ONLY = ("create",)


@dataclass(frozen=True)
class ResourceType:
    """One served resource (the plural form, e.g. ``pods``) of one group/version."""

    group: str
    version: str
    resource: str
    kind: str
    namespaced: bool
    singular: str = ""
    short_names: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ALL_VERBS
    # subresource name -> (kind it accepts/returns, verbs)
    subresources: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)
    categories: tuple[str, ...] = ()
    # True for built-in kinds (strategic merge patch and protobuf bodies allowed).
    builtin: bool = True
    # Custom resources: additionalPrinterColumns and the openAPIV3Schema of the CRD version.
    printer_columns: tuple[dict[str, Any], ...] = ()
    schema: dict[str, Any] | None = None
    # The CRD that registered it (name), for removal.
    crd_name: str = ""
    # Is the name a DNS-1123 label (namespaces, services) rather than a subdomain?
    name_is_label: bool = False
    # Does the kind have a spec whose changes bump metadata.generation?
    has_spec: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        return self.kind + "List"

    @property
    def group_resource(self) -> str:
        return f"{self.resource}.{self.group}" if self.group else self.resource

    @property
    def storable(self) -> bool:
        """Virtual resources (reviews) are created and answered but never stored."""
        return "get" in self.verbs

    @property
    def singular_name(self) -> str:
        return self.singular or self.kind.lower()


_POD_SUBRESOURCES: dict[str, tuple[str, tuple[str, ...]]] = {
    "status": ("Pod", ("get", "patch", "update")),
    "log": ("Pod", ("get",)),
    "eviction": ("Eviction", ("create",)),
    "ephemeralcontainers": ("Pod", ("get", "patch", "update")),
    "exec": ("PodExecOptions", ("create", "get")),
    "attach": ("PodAttachOptions", ("create", "get")),
    "portforward": ("PodPortForwardOptions", ("create", "get")),
    "binding": ("Binding", ("create",)),
}

RBAC = "rbac.authorization.k8s.io"
AUTOSCALING = "autoscaling"
APIEXT = "apiextensions.k8s.io"
AUTHN = "authentication.k8s.io"
AUTHZ = "authorization.k8s.io"
ADMISSIONREG = "admissionregistration.k8s.io"
POLICY = "policy"

BUILTIN: tuple[ResourceType, ...] = (
    ResourceType(
        "",
        "v1",
        "namespaces",
        "Namespace",
        False,
        short_names=("ns",),
        verbs=("create", "delete", "get", "list", "patch", "update", "watch"),
        subresources={
            "status": ("Namespace", ("get", "patch", "update")),
            "finalize": ("Namespace", ("update",)),
        },
        name_is_label=True,
    ),
    ResourceType(
        "",
        "v1",
        "pods",
        "Pod",
        True,
        short_names=("po",),
        subresources=_POD_SUBRESOURCES,
        categories=("all",),
    ),
    ResourceType(
        "",
        "v1",
        "nodes",
        "Node",
        False,
        short_names=("no",),
        subresources={"status": ("Node", ("get", "patch", "update"))},
    ),
    ResourceType("", "v1", "configmaps", "ConfigMap", True, short_names=("cm",), has_spec=False),
    ResourceType("", "v1", "secrets", "Secret", True, has_spec=False),
    ResourceType("", "v1", "events", "Event", True, short_names=("ev",), has_spec=False),
    ResourceType(
        "",
        "v1",
        "services",
        "Service",
        True,
        short_names=("svc",),
        subresources={"status": ("Service", ("get", "patch", "update"))},
        categories=("all",),
        name_is_label=True,
    ),
    ResourceType(
        "",
        "v1",
        "serviceaccounts",
        "ServiceAccount",
        True,
        short_names=("sa",),
        subresources={"token": ("TokenRequest", ("create",))},
        has_spec=False,
    ),
    ResourceType(
        "apps",
        "v1",
        "deployments",
        "Deployment",
        True,
        short_names=("deploy",),
        subresources={
            "status": ("Deployment", ("get", "patch", "update")),
            "scale": ("Scale", ("get", "patch", "update")),
        },
        categories=("all",),
    ),
    # A built-in kind klockproxy's own patch engine has no schema for: strategic merge patches
    # of it are the API server's to compute (the proxy judges the server's dry run).
    ResourceType(
        AUTOSCALING,
        "v2",
        "horizontalpodautoscalers",
        "HorizontalPodAutoscaler",
        True,
        short_names=("hpa",),
        subresources={"status": ("HorizontalPodAutoscaler", ("get", "patch", "update"))},
        categories=("all",),
    ),
    # Workload kinds: stored and served only (the sandbox runs no controllers; see
    # docs/sandbox.md), so the proxy's controller rules can be exercised with real kubectl.
    ResourceType(
        "apps",
        "v1",
        "replicasets",
        "ReplicaSet",
        True,
        short_names=("rs",),
        subresources={
            "status": ("ReplicaSet", ("get", "patch", "update")),
            "scale": ("Scale", ("get", "patch", "update")),
        },
        categories=("all",),
    ),
    ResourceType(
        "apps",
        "v1",
        "statefulsets",
        "StatefulSet",
        True,
        short_names=("sts",),
        subresources={
            "status": ("StatefulSet", ("get", "patch", "update")),
            "scale": ("Scale", ("get", "patch", "update")),
        },
        categories=("all",),
    ),
    ResourceType(
        "apps",
        "v1",
        "daemonsets",
        "DaemonSet",
        True,
        short_names=("ds",),
        subresources={"status": ("DaemonSet", ("get", "patch", "update"))},
        categories=("all",),
    ),
    ResourceType(
        "",
        "v1",
        "replicationcontrollers",
        "ReplicationController",
        True,
        short_names=("rc",),
        subresources={
            "status": ("ReplicationController", ("get", "patch", "update")),
            "scale": ("Scale", ("get", "patch", "update")),
        },
        categories=("all",),
    ),
    ResourceType(
        "batch",
        "v1",
        "jobs",
        "Job",
        True,
        subresources={"status": ("Job", ("get", "patch", "update"))},
        categories=("all",),
    ),
    ResourceType(
        "batch",
        "v1",
        "cronjobs",
        "CronJob",
        True,
        short_names=("cj",),
        subresources={"status": ("CronJob", ("get", "patch", "update"))},
        categories=("all",),
    ),
    ResourceType(
        POLICY,
        "v1",
        "poddisruptionbudgets",
        "PodDisruptionBudget",
        True,
        short_names=("pdb",),
        subresources={"status": ("PodDisruptionBudget", ("get", "patch", "update"))},
    ),
    ResourceType(RBAC, "v1", "roles", "Role", True, has_spec=False),
    ResourceType(RBAC, "v1", "rolebindings", "RoleBinding", True, has_spec=False),
    ResourceType(RBAC, "v1", "clusterroles", "ClusterRole", False, has_spec=False),
    ResourceType(RBAC, "v1", "clusterrolebindings", "ClusterRoleBinding", False, has_spec=False),
    ResourceType(
        APIEXT,
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        False,
        short_names=("crd", "crds"),
        subresources={"status": ("CustomResourceDefinition", ("get", "patch", "update"))},
    ),
    ResourceType(
        ADMISSIONREG,
        "v1",
        "validatingwebhookconfigurations",
        "ValidatingWebhookConfiguration",
        False,
    ),
    ResourceType(AUTHN, "v1", "selfsubjectreviews", "SelfSubjectReview", False, verbs=CREATE_ONLY),
    ResourceType(AUTHN, "v1", "tokenreviews", "TokenReview", False, verbs=CREATE_ONLY),
    ResourceType(
        AUTHZ,
        "v1",
        "selfsubjectaccessreviews",
        "SelfSubjectAccessReview",
        False,
        verbs=CREATE_ONLY,
    ),
    ResourceType(
        AUTHZ,
        "v1",
        "selfsubjectrulesreviews",
        "SelfSubjectRulesReview",
        False,
        verbs=CREATE_ONLY,
    ),
    ResourceType(
        AUTHZ, "v1", "subjectaccessreviews", "SubjectAccessReview", False, verbs=CREATE_ONLY
    ),
    ResourceType(
        AUTHZ,
        "v1",
        "localsubjectaccessreviews",
        "LocalSubjectAccessReview",
        True,
        verbs=CREATE_ONLY,
    ),
)

# Strategic merge schemas of the served built-in kinds: the core's, and those of kinds the
# core has none for (Go: lists without a patchStrategy are replaced, maps merged).
MERGE_KEYS: dict[KindKey, Schema] = {
    **DEFAULT_MERGE_KEYS,
    (AUTOSCALING, "HorizontalPodAutoscaler"): {
        "metadata": DEFAULT_MERGE_KEYS[("", "ConfigMap")]["metadata"],
        "status": FieldSchema(fields={"conditions": FieldSchema(merge_key="type")}),
    },
}

# Group -> preferred version, in the order /apis lists them.
BUILTIN_GROUPS: tuple[tuple[str, str], ...] = (
    ("apps", "v1"),
    ("batch", "v1"),
    (ADMISSIONREG, "v1"),
    (AUTHN, "v1"),
    (AUTHZ, "v1"),
    (AUTOSCALING, "v2"),
    (POLICY, "v1"),
    (RBAC, "v1"),
    (APIEXT, "v1"),
)


class Registry:
    """The served resource types; CRDs add and remove theirs at run time."""

    def __init__(self) -> None:
        self._types: dict[tuple[str, str, str], ResourceType] = {}
        self._custom_groups: dict[str, list[str]] = {}
        self.generation = 0
        for rt in BUILTIN:
            self._types[(rt.group, rt.version, rt.resource)] = rt

    def lookup(self, group: str, version: str, resource: str) -> ResourceType | None:
        return self._types.get((group, version, resource))

    def by_group_resource(self, group: str, resource: str) -> ResourceType | None:
        for rt in self._types.values():
            if rt.group == group and rt.resource == resource:
                return rt
        return None

    def __iter__(self) -> Iterator[ResourceType]:
        return iter(list(self._types.values()))

    def group_versions(self) -> list[tuple[str, list[str]]]:
        """Non-core groups with their versions (preferred first), built-ins first."""
        out: list[tuple[str, list[str]]] = [(g, [v]) for g, v in BUILTIN_GROUPS]
        out.extend((g, list(vs)) for g, vs in sorted(self._custom_groups.items()))
        return out

    def has_group_version(self, group: str, version: str) -> bool:
        return any(rt.group == group and rt.version == version for rt in self._types.values())

    def in_group_version(self, group: str, version: str) -> list[ResourceType]:
        return [rt for rt in self._types.values() if rt.group == group and rt.version == version]

    def register_crd(self, crd: dict[str, Any]) -> list[ResourceType]:
        """Register the served versions of a CRD (replacing an earlier registration)."""
        name = crd["metadata"]["name"]
        self.unregister_crd(name)
        spec = crd.get("spec") or {}
        names = spec.get("names") or {}
        group = spec["group"]
        namespaced = spec.get("scope", "Namespaced") == "Namespaced"
        added: list[ResourceType] = []
        versions: list[str] = []
        for v in spec.get("versions") or []:
            if not v.get("served", True):
                continue
            subresources: dict[str, tuple[str, tuple[str, ...]]] = {}
            subs = v.get("subresources") or {}
            if "status" in subs:
                subresources["status"] = (names["kind"], ("get", "patch", "update"))
            if "scale" in subs:
                subresources["scale"] = ("Scale", ("get", "patch", "update"))
            schema = (v.get("schema") or {}).get("openAPIV3Schema")
            rt = ResourceType(
                group,
                v["name"],
                names["plural"],
                names["kind"],
                namespaced,
                singular=names.get("singular", ""),
                short_names=tuple(names.get("shortNames") or ()),
                subresources=subresources,
                categories=tuple(names.get("categories") or ()),
                builtin=False,
                printer_columns=tuple(v.get("additionalPrinterColumns") or ()),
                schema=schema if isinstance(schema, dict) else None,
                crd_name=name,
            )
            self._types[(group, rt.version, rt.resource)] = rt
            added.append(rt)
            versions.append(rt.version)
        if versions:
            # The storage version first (kubectl prefers the group's preferredVersion).
            storage = [v["name"] for v in spec.get("versions") or [] if v.get("storage")]
            versions.sort(key=lambda ver: 0 if ver in storage else 1)
            self._custom_groups.setdefault(group, [])
            for ver in versions:
                if ver not in self._custom_groups[group]:
                    self._custom_groups[group].append(ver)
        self.generation += 1
        logger.info("registered %s (%d versions)", name, len(added))
        return added

    def of_crd(self, crd: dict[str, Any]) -> list[ResourceType]:
        """The resource types registered now for this CRD (by its name)."""
        name = (crd.get("metadata") or {}).get("name")
        return [rt for rt in self._types.values() if rt.crd_name == name]

    def unregister_crd(self, crd_name: str) -> list[ResourceType]:
        removed = [rt for rt in self._types.values() if rt.crd_name == crd_name]
        for rt in removed:
            del self._types[(rt.group, rt.version, rt.resource)]
        for rt in removed:
            if not self.has_group_version(rt.group, rt.version):
                versions = self._custom_groups.get(rt.group, [])
                if rt.version in versions:
                    versions.remove(rt.version)
                if not versions:
                    self._custom_groups.pop(rt.group, None)
        if removed:
            self.generation += 1
            logger.info("unregistered %s", crd_name)
        return removed
