"""What the API server (and its controllers) do to objects of each kind: validation,
defaults, and a status that makes the sandbox look like a running cluster (it runs nothing).
"""

from __future__ import annotations

import base64
import datetime
import itertools
import logging
import re
import uuid
from typing import Any

from klockproxy.core.status import StatusCause
from klockproxy.sandbox.errors import BadRequestError, InvalidError
from klockproxy.sandbox.resources import RBAC, ResourceType

logger = logging.getLogger(__name__)

Obj = dict[str, Any]

NODE_NAME = "sandbox-node"
HOST_IP = "10.0.0.10"

_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUALIFIED = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'example.com', regex "
    "used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and "
    "must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex "
    "used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)

_ip_counter = itertools.count(2)


def _next_ip(prefix: str) -> str:
    """A fresh address in ``prefix``.0.0/16 (pod IPs, cluster IPs)."""
    n = next(_ip_counter)
    return f"{prefix}.{n // 250}.{n % 250 + 1}"


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_uid() -> str:
    return str(uuid.uuid4())


def _invalid(field: str, value: Any, message: str) -> StatusCause:
    return {
        "reason": "FieldValueInvalid",
        "message": f'Invalid value: "{value}": {message}',
        "field": field,
    }


def _required(field: str, message: str = "") -> StatusCause:
    text = "Required value" + (f": {message}" if message else "")
    return {"reason": "FieldValueRequired", "message": text, "field": field}


def name_causes(rt: ResourceType, name: str) -> list[StatusCause]:
    """Why ``name`` is not a valid object name for ``rt`` (empty: valid)."""
    if rt.group == RBAC:
        # RBAC objects accept any path segment name.
        if name in (".", "..") or "/" in name or "%" in name:
            return [_invalid("metadata.name", name, "may not contain '/' or '%'")]
        return []
    if rt.name_is_label:
        if len(name) > 63:
            return [_invalid("metadata.name", name, "must be no more than 63 characters")]
        if not _LABEL.match(name):
            return [_invalid("metadata.name", name, LABEL_MSG)]
        return []
    if len(name) > 253:
        return [_invalid("metadata.name", name, "must be no more than 253 characters")]
    if not _SUBDOMAIN.match(name):
        return [_invalid("metadata.name", name, SUBDOMAIN_MSG)]
    return []


def _label_causes(field: str, labels: Any) -> list[StatusCause]:
    if labels is None:
        return []
    if not isinstance(labels, dict):
        return [_invalid(field, labels, "must be a map of strings")]
    causes: list[StatusCause] = []
    for key, value in labels.items():
        prefix, _, name = str(key).rpartition("/")
        if (prefix and not _SUBDOMAIN.match(prefix)) or not name or len(name) > 63:
            causes.append(_invalid(field, key, "name part must be 63 characters or less"))
        elif not _QUALIFIED.match(name):
            causes.append(
                _invalid(
                    field,
                    key,
                    "name part must consist of alphanumeric characters, '-', '_' or '.', and "
                    "must start and end with an alphanumeric character",
                )
            )
        if field.endswith("labels") and (
            not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value)
        ):
            causes.append(
                _invalid(
                    field,
                    value,
                    "a valid label must be an empty string or consist of alphanumeric "
                    "characters, '-', '_' or '.', and must start and end with an alphanumeric "
                    "character",
                )
            )
    return causes


def _container_causes(field: str, containers: Any) -> list[StatusCause]:
    if not isinstance(containers, list) or not containers:
        return [_required(field)]
    causes: list[StatusCause] = []
    seen: set[str] = set()
    for i, c in enumerate(containers):
        if not isinstance(c, dict):
            causes.append(_invalid(f"{field}[{i}]", c, "must be an object"))
            continue
        cname = c.get("name")
        if not cname:
            causes.append(_required(f"{field}[{i}].name"))
        elif not isinstance(cname, str) or not _LABEL.match(cname):
            causes.append(_invalid(f"{field}[{i}].name", cname, LABEL_MSG))
        elif cname in seen:
            causes.append(
                {
                    "reason": "FieldValueDuplicate",
                    "message": f'Duplicate value: "{cname}"',
                    "field": f"{field}[{i}].name",
                }
            )
        else:
            seen.add(cname)
        if not c.get("image"):
            causes.append(_required(f"{field}[{i}].image"))
    return causes


def _unmarshal_error(field: str, value: Any, go_type: str) -> BadRequestError:
    kind = {
        dict: "object",
        list: "array",
        str: "string",
        bool: "bool",
        int: "number",
        float: "number",
    }.get(type(value), "value")
    return BadRequestError(
        f"json: cannot unmarshal {kind} into Go struct field {field} of type {go_type}"
    )


_MAP_FIELDS = ("spec", "status", "data", "stringData", "binaryData")


def check_shape(rt: ResourceType, obj: Obj) -> None:
    """Refuse (400) what the API server's decoder would refuse: wrong JSON types in the
    metadata, and non-object spec/status/data of built-in kinds."""
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        raise _unmarshal_error("metadata", meta, "v1.ObjectMeta")
    for key in ("name", "generateName", "namespace", "uid", "resourceVersion"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise _unmarshal_error(f"ObjectMeta.metadata.{key}", meta[key], "string")
    for key in ("labels", "annotations"):
        value = meta.get(key)
        if value is None:
            continue
        if not isinstance(value, dict):
            raise _unmarshal_error(f"ObjectMeta.metadata.{key}", value, "map[string]string")
        for v in value.values():
            if not isinstance(v, str):
                raise _unmarshal_error(f"ObjectMeta.metadata.{key}", v, "string")
    if not rt.builtin:
        return
    for key in _MAP_FIELDS:
        value = obj.get(key)
        if value is not None and not isinstance(value, dict):
            raise _unmarshal_error(f"{rt.kind}.{key}", value, "map or struct")
    for key in ("data", "stringData", "binaryData"):
        for v in (obj.get(key) or {}).values():
            if not isinstance(v, str):
                raise _unmarshal_error(f"{rt.kind}.{key}", v, "string")


def validate(rt: ResourceType, obj: Obj) -> None:
    """Raise InvalidError (422) the way the API server's validation would, for the checks the
    sandbox implements: names, labels, pod containers, deployment selectors, CRD names."""
    meta = obj.get("metadata") or {}
    name = str(meta.get("name") or "")
    causes: list[StatusCause] = []
    if not name:
        causes.append(_required("metadata.name", "name or generateName is required"))
    else:
        causes.extend(name_causes(rt, name))
    causes.extend(_label_causes("metadata.labels", meta.get("labels")))
    causes.extend(_label_causes("metadata.annotations", meta.get("annotations")))
    raw_spec = obj.get("spec")
    spec: Obj = raw_spec if isinstance(raw_spec, dict) else {}
    if rt.builtin and rt.kind == "Pod":
        causes.extend(_container_causes("spec.containers", spec.get("containers")))
    elif rt.builtin and rt.kind == "Deployment":
        causes.extend(_deployment_causes(spec))
    elif rt.builtin and rt.kind == "CustomResourceDefinition":
        causes.extend(_crd_causes(name, spec))
    if causes:
        raise InvalidError(rt.kind, name, causes, group=rt.group)


def _deployment_causes(spec: Obj) -> list[StatusCause]:
    causes: list[StatusCause] = []
    selector = spec.get("selector")
    template = spec.get("template") or {}
    labels = (template.get("metadata") or {}).get("labels") or {}
    if not isinstance(selector, dict) or not (
        selector.get("matchLabels") or selector.get("matchExpressions")
    ):
        causes.append(_required("spec.selector"))
    else:
        wanted = selector.get("matchLabels") or {}
        if any(labels.get(k) != v for k, v in wanted.items()):
            causes.append(
                _invalid(
                    "spec.template.metadata.labels",
                    labels_string(labels),
                    "`selector` does not match template `labels`",
                )
            )
    causes.extend(
        _container_causes(
            "spec.template.spec.containers", (template.get("spec") or {}).get("containers")
        )
    )
    replicas = spec.get("replicas", 1)
    if not isinstance(replicas, int) or replicas < 0:
        causes.append(_invalid("spec.replicas", replicas, "must be greater than or equal to 0"))
    return causes


def _crd_causes(name: str, spec: Obj) -> list[StatusCause]:
    causes: list[StatusCause] = []
    names = spec.get("names") or {}
    group = spec.get("group")
    if not group:
        causes.append(_required("spec.group"))
    if not names.get("plural"):
        causes.append(_required("spec.names.plural"))
    if not names.get("kind"):
        causes.append(_required("spec.names.kind"))
    if group and names.get("plural") and name != f"{names['plural']}.{group}":
        causes.append(_invalid("metadata.name", name, 'must be spec.names.plural+"."+spec.group'))
    versions = spec.get("versions")
    if not isinstance(versions, list) or not versions:
        causes.append(
            _required("spec.versions", "must have exactly one version marked as storage version")
        )
    elif sum(1 for v in versions if isinstance(v, dict) and v.get("storage")) != 1:
        causes.append(
            _invalid("spec.versions", "", "must have exactly one version marked as storage version")
        )
    if spec.get("scope") not in ("Namespaced", "Cluster"):
        causes.append(_required("spec.scope"))
    return causes


def labels_string(labels: dict[str, str]) -> str:
    return "map[" + " ".join(f"{k}:{v}" for k, v in sorted(labels.items())) + "]"


# ---------------------------------------------------------------- defaults and status


def _pull_policy(image: str) -> str:
    tail = image.rsplit("/", 1)[-1]
    if "@" in tail:
        return "IfNotPresent"
    if ":" not in tail or tail.endswith(":latest"):
        return "Always"
    return "IfNotPresent"


def default_pod_spec(spec: Obj) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    spec.setdefault("enableServiceLinks", True)
    spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
    spec.setdefault("priority", 0)
    for c in spec.get("containers") or []:
        if isinstance(c, dict):
            c.setdefault("imagePullPolicy", _pull_policy(str(c.get("image", ""))))
            c.setdefault("terminationMessagePath", "/dev/termination-log")
            c.setdefault("terminationMessagePolicy", "File")
            c.setdefault("resources", {})


def _pod_status(obj: Obj, old: Obj | None) -> Obj:
    spec = obj.get("spec") or {}
    old_status = (old or {}).get("status") or {}
    started = old_status.get("startTime") or now_rfc3339()
    pod_ip = old_status.get("podIP") or _next_ip("10.244")
    old_restarts = {
        s.get("name"): s.get("restartCount", 0) for s in old_status.get("containerStatuses") or []
    }
    statuses = []
    for c in spec.get("containers") or []:
        image = str(c.get("image", ""))
        statuses.append(
            {
                "name": c.get("name"),
                "image": image,
                "imageID": f"sandbox://{image}",
                "containerID": f"sandbox://{c.get('name')}",
                "ready": True,
                "started": True,
                "restartCount": old_restarts.get(c.get("name"), 0),
                "state": {"running": {"startedAt": started}},
                "lastState": {},
            }
        )
    conditions = [
        {"type": t, "status": "True", "lastProbeTime": None, "lastTransitionTime": started}
        for t in (
            "PodReadyToStartContainers",
            "Initialized",
            "Ready",
            "ContainersReady",
            "PodScheduled",
        )
    ]
    return {
        "phase": "Running",
        "conditions": conditions,
        "hostIP": HOST_IP,
        "hostIPs": [{"ip": HOST_IP}],
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": started,
        "containerStatuses": statuses,
        "qosClass": "BestEffort",
    }


def _sync_container_images(pod: Obj) -> None:
    """After a spec update: container statuses show the new images (as if pulled)."""
    images = {
        c.get("name"): c.get("image") for c in (pod.get("spec") or {}).get("containers") or []
    }
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        image = images.get(status.get("name"))
        if image and status.get("image") != image:
            status["image"] = image
            status["imageID"] = f"sandbox://{image}"


def _deployment_status(obj: Obj) -> Obj:
    spec = obj.get("spec") or {}
    replicas = int(spec.get("replicas", 1))
    ts = now_rfc3339()
    status: Obj = {
        "observedGeneration": obj["metadata"].get("generation", 1),
        "replicas": replicas,
        "updatedReplicas": replicas,
        "conditions": [
            {
                "type": "Available",
                "status": "True",
                "reason": "MinimumReplicasAvailable",
                "message": "Deployment has minimum availability.",
                "lastUpdateTime": ts,
                "lastTransitionTime": ts,
            },
            {
                "type": "Progressing",
                "status": "True",
                "reason": "NewReplicaSetAvailable",
                "message": f'ReplicaSet "{obj["metadata"]["name"]}" has successfully progressed.',
                "lastUpdateTime": ts,
                "lastTransitionTime": ts,
            },
        ],
    }
    if replicas:
        status["readyReplicas"] = replicas
        status["availableReplicas"] = replicas
    return status


def _service_defaults(obj: Obj, old: Obj | None) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    old_ip = ((old or {}).get("spec") or {}).get("clusterIP")
    if spec.get("clusterIP") in (None, "") and spec["type"] != "ExternalName":
        spec["clusterIP"] = old_ip or _next_ip("10.96")
    if spec.get("clusterIP"):
        spec.setdefault("clusterIPs", [spec["clusterIP"]])
    spec.setdefault("ipFamilies", ["IPv4"])
    spec.setdefault("ipFamilyPolicy", "SingleStack")
    spec.setdefault("internalTrafficPolicy", "Cluster")
    for p in spec.get("ports") or []:
        if isinstance(p, dict):
            p.setdefault("protocol", "TCP")
            p.setdefault("targetPort", p.get("port"))
    obj.setdefault("status", {"loadBalancer": {}})


def prepare(rt: ResourceType, obj: Obj, old: Obj | None) -> None:
    """Apply defaults and the status a healthy cluster would show, in place."""
    if not rt.builtin:
        return
    if rt.kind == "Pod":
        spec = obj.setdefault("spec", {})
        default_pod_spec(spec)
        spec.setdefault("nodeName", NODE_NAME)
        spec.setdefault("serviceAccountName", "default")
        spec.setdefault("serviceAccount", spec["serviceAccountName"])
        spec.setdefault(
            "tolerations",
            [
                {
                    "key": f"node.kubernetes.io/{t}",
                    "operator": "Exists",
                    "effect": "NoExecute",
                    "tolerationSeconds": 300,
                }
                for t in ("not-ready", "unreachable")
            ],
        )
        if old is None:
            obj["status"] = _pod_status(obj, None)
        else:
            _sync_container_images(obj)
    elif rt.kind == "Deployment":
        spec = obj.setdefault("spec", {})
        spec.setdefault("replicas", 1)
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        spec.setdefault(
            "strategy",
            {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"},
            },
        )
        template_spec = spec.setdefault("template", {}).setdefault("spec", {})
        default_pod_spec(template_spec)
        old_template = ((old or {}).get("spec") or {}).get("template")
        annotations = obj["metadata"].setdefault("annotations", {})
        revision = int(
            ((old or {}).get("metadata", {}).get("annotations") or {}).get(
                "deployment.kubernetes.io/revision", "0"
            )
        )
        if old is None or old_template != spec["template"]:
            revision += 1
        annotations["deployment.kubernetes.io/revision"] = str(max(revision, 1))
    elif rt.kind == "Namespace":
        obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = obj["metadata"][
            "name"
        ]
        obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        obj["status"] = {"phase": "Active"}
    elif rt.kind == "Service":
        _service_defaults(obj, old)
    elif rt.kind == "Secret":
        obj.setdefault("type", "Opaque")
    elif rt.kind == "PodDisruptionBudget" and old is None:
        # The API server resets the status on create; no disruption controller runs here,
        # so it stays at "nothing may be disrupted" (these four are never omitted).
        obj["status"] = {
            "disruptionsAllowed": 0,
            "currentHealthy": 0,
            "desiredHealthy": 0,
            "expectedPods": 0,
        }
    elif rt.kind == "CustomResourceDefinition":
        spec = obj.setdefault("spec", {})
        ts = now_rfc3339()
        names = dict(spec.get("names") or {})
        names.setdefault("singular", str(names.get("kind", "")).lower())
        names.setdefault("listKind", f"{names.get('kind', '')}List")
        spec["names"] = names
        obj["status"] = {
            "acceptedNames": names,
            "conditions": [
                {
                    "type": "NamesAccepted",
                    "status": "True",
                    "reason": "NoConflicts",
                    "message": "no conflicts found",
                    "lastTransitionTime": ts,
                },
                {
                    "type": "Established",
                    "status": "True",
                    "reason": "InitialNamesAccepted",
                    "message": "the initial names have been accepted",
                    "lastTransitionTime": ts,
                },
            ],
            "storedVersions": [v["name"] for v in spec.get("versions") or [] if v.get("storage")],
        }


def sandbox_node() -> Obj:
    """The one node pods are "scheduled" on: Ready, with the sandbox's version."""
    ts = now_rfc3339()
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": NODE_NAME,
            "labels": {
                "kubernetes.io/hostname": NODE_NAME,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "node-role.kubernetes.io/control-plane": "",
            },
        },
        "spec": {"podCIDR": "10.244.0.0/16"},
        "status": {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "the sandbox node runs nothing but is always ready",
                    "lastHeartbeatTime": ts,
                    "lastTransitionTime": ts,
                }
            ],
            "addresses": [
                {"type": "InternalIP", "address": HOST_IP},
                {"type": "Hostname", "address": NODE_NAME},
            ],
            "nodeInfo": {
                "kubeletVersion": "v1.37.0-klockproxy-sandbox",
                "osImage": "klockproxy sandbox",
                "kernelVersion": "none",
                "containerRuntimeVersion": "none://0",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
            "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"},
            "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
        },
    }


def finish(rt: ResourceType, obj: Obj) -> None:
    """Status derived after metadata (generation) is final."""
    if rt.builtin and rt.kind == "Deployment":
        obj["status"] = _deployment_status(obj)


def stringdata_to_data(obj: Obj) -> None:
    """Secrets: ``stringData`` is write-only; it is merged into ``data`` (base64)."""
    string_data = obj.pop("stringData", None)
    if isinstance(string_data, dict):
        data = obj.setdefault("data", {}) or {}
        for k, v in string_data.items():
            data[k] = base64.b64encode(str(v).encode()).decode()
        obj["data"] = data
