"""What the built-in controllers do after a write: the admission inputs a write implies (pure).

The proxy judges the request in front of it; the cluster's controllers then act on what was
stored, with their own identities, behind the proxy's back. For the built-in workload kinds
(Deployment, ReplicaSet, StatefulSet, DaemonSet, Job, CronJob, ReplicationController) these
rules turn a write into the operations it makes a controller perform:

- **Deletions** (:func:`workload_deletions`): scaling down, rolling out (a pod template or
  selector change: ``kubectl rollout restart``, ``set image``), suspending or cutting a Job
  short, lowering a CronJob's history limits or a Deployment's revision history: the objects
  the controller deletes (and what the garbage collector deletes after them) are judged as
  DELETEs. Precise where the controller's choice is known (a StatefulSet deletes its highest
  ordinals), else every object it may pick.
- **Adoption** (:func:`adoptions`): a new workload (or a new selector) whose selector matches
  objects with no controlling owner adopts them, and deletes the ones it does not want:
  judged as DELETEs of the matched orphans.
- **Creations** (:func:`template_creations`): a pod template is a promise of pods with its
  labels: judged as a CREATE of those pods (and of the ReplicaSets a Deployment creates, the
  Jobs a CronJob creates).
- **Identities** (:func:`exempt_service_accounts`): a token minted for a Lock's exempt
  service account, or a pod (or pod template) that runs as it, turns whoever holds it into the
  exempt identity.

Each implied input carries a ``note`` saying why, appended to a denial. The graph
(``core.ownership.Graph``) says who owns what; an operator's own controllers are outside
these rules (see the README).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from klockproxy.core.engine import Engine
from klockproxy.core.locks import Lock

# One wording for the proxy's and the webhook's denials, with or without an index.
from klockproxy.core.owners import DEPENDENTS_NOTE, OWNER_NOTE
from klockproxy.core.ownership import (
    Graph,
    Node,
    after_owner_write,
    collected,
    collected_now,
    node_of,
    owner_refs_of,
)
from klockproxy.core.requests import RequestInfo
from klockproxy.core.types import AdmissionInput, Operation, ResourceRef, UserInfo

_NOBODY = UserInfo(username="")
POD = ResourceRef("", "v1", "pods")
REPLICASET = ResourceRef("apps", "v1", "replicasets")
JOB = ResourceRef("batch", "v1", "jobs")
_SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"

# (group, resource) of the workload kinds these rules know.
WORKLOADS = frozenset(
    {
        ("apps", "deployments"),
        ("apps", "replicasets"),
        ("apps", "statefulsets"),
        ("apps", "daemonsets"),
        ("batch", "jobs"),
        ("batch", "cronjobs"),
        ("", "replicationcontrollers"),
    }
)


@dataclass(frozen=True, slots=True)
class Implied:
    """An operation a controller performs because of the write, and why."""

    input: AdmissionInput
    note: str


@dataclass(frozen=True, slots=True)
class WorkloadWrite:
    """One write of a workload as the controller rules read it: ``old`` stored as ``new``
    (``old`` None and ``uid`` empty for a create)."""

    resource: ResourceRef
    namespace: str
    name: str
    old: Mapping[str, Any] | None
    new: Mapping[str, Any]
    uid: str = ""
    dry_run: bool = False


def is_workload(resource: ResourceRef) -> bool:
    """Whether the rules know this kind."""
    return (resource.group, resource.resource) in WORKLOADS


def judged_on_metadata(resource: ResourceRef) -> bool:
    """Whether a write to an existing object of this kind is decided on nothing of the object
    as it was but its metadata, and never on annotations (before or after): every kind
    except pods and the workloads, whose spec the rules read (the service account a pod
    runs as; replicas, templates, selectors, suspend, a Job's TTL). Holds for an object
    that is not being deleted (finishing a deletion compares the whole object) and has no
    owner references (compared in full)."""
    return not (is_workload(resource) or (resource.group, resource.resource) == ("", "pods"))


# ----------------------------------------------------------------------------------------
# Field access


def _get(obj: Mapping[str, Any] | None, *path: str) -> Any:
    cur: Any = obj
    for key in path:
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(key)
    return cur


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _template(resource: ResourceRef, obj: Mapping[str, Any] | None) -> Any:
    """The pod template of a workload (a CronJob's is inside its job template)."""
    if resource.resource == "cronjobs":
        return _get(obj, "spec", "jobTemplate", "spec", "template")
    return _get(obj, "spec", "template")


def _labels(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, Mapping) else {}


# ----------------------------------------------------------------------------------------
# Label selectors (metav1.LabelSelector, and a ReplicationController's plain map)


def selector_matches(selector: Any, labels: Mapping[str, str], *, plain: bool = False) -> bool:
    """Whether a label selector selects ``labels``; an empty or unreadable selector selects
    nothing (the API server refuses those for the workload kinds)."""
    if not isinstance(selector, Mapping) or not selector:
        return False
    if plain:
        return all(labels.get(str(k)) == str(v) for k, v in selector.items())
    match_labels = selector.get("matchLabels") or {}
    exprs = selector.get("matchExpressions") or []
    if not isinstance(match_labels, Mapping) or not isinstance(exprs, list):
        return False
    if not match_labels and not exprs:
        return False
    if any(labels.get(str(k)) != str(v) for k, v in match_labels.items()):
        return False
    for expr in exprs:
        if not isinstance(expr, Mapping):
            return False
        key, op = str(expr.get("key") or ""), expr.get("operator")
        values = [str(v) for v in expr.get("values") or []]
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            return False
    return True


def _selector(resource: ResourceRef, obj: Mapping[str, Any] | None) -> Any:
    if resource.resource == "cronjobs":
        return None  # a CronJob's Jobs get generated selectors
    if resource.resource == "jobs" and _get(obj, "spec", "manualSelector") is not True:
        return None  # generated (controller-uid): matches only the Job's own pods
    return _get(obj, "spec", "selector")


# ----------------------------------------------------------------------------------------
# Deletions


def _delete(node: Node, dry_run: bool) -> AdmissionInput:
    return AdmissionInput(
        operation=Operation.DELETE,
        namespace=node.namespace,
        resource=node.resource,
        name=node.name,
        user=_NOBODY,
        old_labels=dict(node.labels),
        dry_run=dry_run,
        kind=node.kind,
    )


def _with_cascade(graph: Graph, victims: Iterable[Node]) -> list[Node]:
    """The victims and what the garbage collector deletes after them."""
    out: dict[str, Node] = {}
    for victim in victims:
        out.setdefault(victim.uid, victim)
    for dep in collected(graph, list(out)):
        out.setdefault(dep.uid, dep)
    return list(out.values())


def _of(nodes: Iterable[Node], resource: str) -> list[Node]:
    return [n for n in nodes if n.resource.resource == resource]


def _reasons(resource: ResourceRef, old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Why the controller of this workload deletes some of its objects after the write."""
    out: list[str] = []
    kind = resource.resource

    def spec(obj: Mapping[str, Any], *path: str) -> Any:
        return _get(obj, "spec", *path)

    scalable = ("deployments", "replicasets", "statefulsets", "replicationcontrollers")
    if kind in scalable and _int(spec(new, "replicas"), 1) < _int(spec(old, "replicas"), 1):
        out.append("scaling down deletes pods")
    if kind in ("deployments", "statefulsets", "daemonsets"):
        if _template(resource, new) != _template(resource, old):
            out.append("a rollout (pod template change) replaces the pods")
        if spec(new, "selector") != spec(old, "selector"):
            out.append("a selector change replaces the pods")
    if kind == "deployments" and _int(spec(new, "revisionHistoryLimit"), 10) < _int(
        spec(old, "revisionHistoryLimit"), 10
    ):
        out.append("a lower revisionHistoryLimit deletes old ReplicaSets")
    if kind == "jobs":
        if spec(new, "suspend") is True and spec(old, "suspend") is not True:
            out.append("suspending a Job deletes its running pods")
        if _int(spec(new, "parallelism"), 1) < _int(spec(old, "parallelism"), 1):
            out.append("lowering a Job's parallelism deletes pods")
        deadline = spec(new, "activeDeadlineSeconds")
        if deadline is not None and deadline != spec(old, "activeDeadlineSeconds"):
            out.append("an active deadline ends a Job's pods")
    if kind == "cronjobs":
        for limit, default in (("successfulJobsHistoryLimit", 3), ("failedJobsHistoryLimit", 1)):
            if _int(spec(new, limit), default) < _int(spec(old, limit), default):
                out.append(f"a lower {limit} deletes old Jobs")
        if spec(new, "concurrencyPolicy") == "Replace" and (
            spec(old, "concurrencyPolicy") != "Replace"
        ):
            out.append("concurrencyPolicy Replace deletes the running Job")
    return out


def workload_deletions(graph: Graph, write: WorkloadWrite) -> list[Implied]:
    """DELETEs a workload's controller performs because ``old`` is stored as ``new`` (none
    for a create: it has nothing yet).

    The objects at stake are the workload's descendants in ``graph`` (its ReplicaSets, Jobs,
    pods, and what they own) that the controller may delete, plus what the garbage collector
    deletes after them.
    """
    resource, old, new = write.resource, write.old, write.new
    if not is_workload(resource) or old is None or not write.uid:
        return []
    reasons = _reasons(resource, old, new)
    if not reasons:
        return []
    descendants = graph.descendants(write.uid)
    kind = resource.resource
    victims: list[Node]
    if kind == "statefulsets" and len(reasons) == 1 and reasons[0].startswith("scaling"):
        # Scaling down deletes the highest ordinals: <name>-<i> for i >= replicas.
        keep = _int(_get(new, "spec", "replicas"), 1)
        name = str(_get(new, "metadata", "name") or "")
        victims = [
            p
            for p in _of(descendants, "pods")
            if p.name.startswith(f"{name}-")
            and not (p.name[len(name) + 1 :].isdigit() and int(p.name[len(name) + 1 :]) < keep)
        ]
    elif kind == "deployments":
        victims = _of(descendants, "pods")
        if any("ReplicaSets" in r or "rollout" in r for r in reasons):
            victims += _of(descendants, "replicasets")
    elif kind == "cronjobs":
        victims = _of(descendants, "jobs") + _of(descendants, "pods")
    else:
        victims = _of(descendants, "pods")
    note = "; ".join(reasons) + " (the controller deletes them, the garbage collector after it)"
    return [Implied(_delete(n, write.dry_run), note) for n in _with_cascade(graph, victims)]


def adoptions(graph: Graph, write: WorkloadWrite) -> list[Implied]:
    """DELETEs of the orphans a new workload (or a new selector) adopts.

    A ReplicaSet, ReplicationController, StatefulSet, DaemonSet or Job with a manual selector
    adopts the pods its selector matches that have no controlling owner, and deletes those it
    does not want; a Deployment adopts ReplicaSets (and through them their pods).
    """
    resource = write.resource
    if not is_workload(resource):
        return []
    selector = _selector(resource, write.new)
    if selector is None:
        return []
    if write.old is not None and _selector(resource, write.old) == selector:
        return []
    plain = resource.resource == "replicationcontrollers"
    target = "replicasets" if resource.resource == "deployments" else "pods"
    orphans = [
        n
        for n in graph.in_namespace(write.namespace, target)
        if not any(ref.controller for ref in n.owners)
        and selector_matches(selector, n.labels, plain=plain)
    ]
    if not orphans:
        return []
    at_stake = list(orphans)
    if target == "replicasets":
        for rs in orphans:
            at_stake += [n for n in graph.descendants(rs.uid) if n.resource.resource == "pods"]
    note = (
        f"its selector adopts {len(orphans)} {target} that no controller owns, and the "
        "controller deletes the ones it does not want"
    )
    return [Implied(_delete(n, write.dry_run), note) for n in _with_cascade(graph, at_stake)]


# The workload kinds whose controllers adopt an object that a write relabels into their
# selector: pods (a ReplicaSet, ReplicationController, StatefulSet, DaemonSet or Job), and
# ReplicaSets (a Deployment).
ADOPTERS: Mapping[tuple[str, str], tuple[ResourceRef, ...]] = {
    ("", "pods"): (
        ResourceRef("apps", "v1", "replicasets"),
        ResourceRef("", "v1", "replicationcontrollers"),
        ResourceRef("apps", "v1", "statefulsets"),
        ResourceRef("apps", "v1", "daemonsets"),
        ResourceRef("batch", "v1", "jobs"),
    ),
    ("apps", "replicasets"): (ResourceRef("apps", "v1", "deployments"),),
}
_ORDINAL = re.compile(r"-([0-9]+)$")


def adopter_kinds(
    info: RequestInfo, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None
) -> tuple[ResourceRef, ...]:
    """The workload kinds whose selectors say whether this write hands its object to a
    controller (``orphan_adoptions``): the creation of a pod or a ReplicaSet (by POST, or by
    a server-side apply of a missing object), or an update or patch of one (itself or its
    status) that changes its labels, that leaves it with no controlling owner and not being
    deleted (a controller adopts no other). Empty when no workload can adopt it."""
    kinds = ADOPTERS.get((info.group, info.resource), ())
    if not kinds or new is None:
        return ()
    if old is None:
        written = not info.subresource
    else:
        written = (
            info.verb in ("update", "patch")
            and info.subresource in ("", "status")
            and _labels(_get(new, "metadata", "labels")) != _labels(_get(old, "metadata", "labels"))
        )
    if not written:
        return ()
    if _get(new, "metadata", "deletionTimestamp") or any(r.controller for r in owner_refs_of(new)):
        return ()
    return kinds


def orphan_adoptions(
    graph: Graph,
    info: RequestInfo,
    old: Mapping[str, Any] | None,
    new: Mapping[str, Any],
    workloads: Iterable[tuple[ResourceRef, Mapping[str, Any]]],
) -> list[Implied]:
    """DELETEs a controller may perform because the write creates an object no controller
    owns under a workload's selector, or relabels one into it (``adopter_kinds``; ``old``
    None for a create; ``workloads``: the objects of those kinds in its namespace). The
    controller adopts it, and then has one more than it wants: a ReplicaSet,
    ReplicationController, DaemonSet or Job deletes the surplus among all its pods (by
    readiness and age: any of them, the adopted one included); a StatefulSet adopts only a
    pod named after it (``NAME-ORDINAL``) and deletes it when its ordinal is not one it runs;
    a Deployment scales a ReplicaSet it adopts, or the ones it had, down. Judged: the object
    with the labels written and what the workload already owns, and what the garbage
    collector deletes after them. A workload that already selected the object by its old
    labels, or is being deleted, adopts nothing new."""
    target = _target(info, old, new)
    name = target.name
    old_labels = None if old is None else _labels(_get(old, "metadata", "labels"))
    owned: list[Node] = []  # what the adopting workloads already own, that may go instead
    adopters: list[str] = []
    for ref, workload in workloads:
        if _get(workload, "metadata", "deletionTimestamp"):
            continue
        # The selector as stored (a Job's generated one too: a label can forge it).
        selector = _get(workload, "spec", "selector")
        plain = ref.resource == "replicationcontrollers"
        if not selector_matches(selector, target.labels, plain=plain):
            continue
        if old_labels is not None and selector_matches(selector, old_labels, plain=plain):
            continue
        wname = str(_get(workload, "metadata", "name") or "")
        if ref.resource == "statefulsets":
            match = _ORDINAL.search(name)
            if match is None or name[: match.start()] != wname:
                continue
        else:
            uid = _get(workload, "metadata", "uid")
            kinds = ("pods", "replicasets") if ref.resource == "deployments" else ("pods",)
            if isinstance(uid, str) and uid:
                owned += [n for n in graph.descendants(uid) if n.resource.resource in kinds]
            if ref.resource == "deployments" and target.uid:
                owned += _of(graph.descendants(target.uid), "pods")
        adopters.append(f"{ref.resource} {wname}")
    if not adopters:
        return []
    labels = "its labels put it" if old is None else "its new labels put it"
    note = (
        f"{labels} under the selector of {', '.join(sorted(set(adopters)))}, whose "
        "controller adopts it and deletes what it does not want"
    )
    # The object first, with the labels written (the graph holds the old ones, or nothing
    # yet): _with_cascade keeps the first node of each uid.
    victims = _with_cascade(graph, [target, *owned])
    return [Implied(_delete(n, info.dry_run), note) for n in victims]


# ----------------------------------------------------------------------------------------
# Creations


def _template_changed_or_grows(
    resource: ResourceRef, old: Mapping[str, Any] | None, new: Mapping[str, Any]
) -> bool:
    if old is None:
        return True
    if _template(resource, new) != _template(resource, old):
        return True
    if _get(new, "spec", "selector") != _get(old, "spec", "selector"):
        return True
    if _int(_get(new, "spec", "replicas"), 1) > _int(_get(old, "spec", "replicas"), 1):
        return True
    if _int(_get(new, "spec", "parallelism"), 1) > _int(_get(old, "spec", "parallelism"), 1):
        return True
    return _get(old, "spec", "suspend") is True and _get(new, "spec", "suspend") is not True


def template_creations(write: WorkloadWrite) -> list[Implied]:
    """CREATEs the workload's controller performs: pods with its template's labels (and the
    ReplicaSets of a Deployment, the Jobs of a CronJob), when the write may create them (a new
    workload, a changed template or selector, more replicas, a resumed Job)."""
    resource, new = write.resource, write.new
    if not is_workload(resource) or not _template_changed_or_grows(resource, write.old, new):
        return []
    pod_labels = _labels(_get(_template(resource, new), "metadata", "labels"))
    made = [(POD, "Pod", pod_labels)]
    if resource.resource == "deployments":
        made.append((REPLICASET, "ReplicaSet", pod_labels))
    if resource.resource == "cronjobs":
        job_labels = _labels(_get(new, "spec", "jobTemplate", "metadata", "labels"))
        made.append((JOB, "Job", job_labels))
    note = "the controller creates objects from the workload's template with these labels"
    return [
        Implied(
            AdmissionInput(
                operation=Operation.CREATE,
                namespace=write.namespace,
                resource=ref,
                name=f"{write.name}-",  # generated names
                user=_NOBODY,
                new_labels=labels,
                dry_run=write.dry_run,
                kind=kind,
            ),
            note,
        )
        for ref, kind, labels in made
    ]


# ----------------------------------------------------------------------------------------
# Identities


def service_account_of(resource: ResourceRef, obj: Mapping[str, Any] | None) -> str:
    """The service account a pod, or a workload's pod template, runs as (``default`` when
    unset, as the API server's admission fills it in)."""
    spec = (
        _get(obj, "spec") if resource.resource == "pods" else _get(_template(resource, obj), "spec")
    )
    if not isinstance(spec, Mapping):
        return "default"
    for key in ("serviceAccountName", "serviceAccount"):
        value = spec.get(key)
        if isinstance(value, str) and value:
            return value
    return "default"


def exempts_service_account(lock: Lock, namespace: str, name: str, uid: str = "") -> bool:
    """Whether ``lock`` lets the service account ``namespace/name`` (uid if known) through."""
    want_name, want_uid = lock.exclusive_name, lock.exclusive_uid
    if want_name is None and want_uid is None:
        return False
    if want_uid is not None and want_uid != uid:
        return False
    if want_name is None:
        return True
    username = f"{_SERVICE_ACCOUNT_PREFIX}{namespace}:{name}"
    if ":" in want_name:
        return want_name == username
    return want_name == name and lock.namespace == namespace


def exempt_service_accounts(
    locks: Iterable[Lock], namespace: str, account: str, uid: str = ""
) -> list[Lock]:
    """The Locks whose exemption is the service account ``namespace/account`` (Locks of that
    namespace naming it, or any Lock naming its full username): a token for it, or a pod
    running as it, makes anyone that exempt identity."""
    return [lk for lk in locks if exempts_service_account(lk, namespace, account, uid)]


# ----------------------------------------------------------------------------------------
# One request: everything the cluster does next because of it

CONNECT_NOTE = "an ephemeral container runs code inside the pod (kubectl debug): a CONNECT too"
_CRD = ("apiextensions.k8s.io", "customresourcedefinitions")
_IDENTITY_CONNECTS = frozenset({"exec", "attach", "ephemeralcontainers"})


def parent_ref(info: RequestInfo) -> ResourceRef:
    """The resource of the object a request is about (the parent of a subresource)."""
    return ResourceRef(info.group, info.version, info.resource)


def orphans_by_default(resource: ResourceRef) -> bool:
    """Kinds the API server deletes with ``Orphan`` when no policy is given: ``batch/v1``
    Jobs keep their pods (and the API server warns so)."""
    return (resource.group, resource.version, resource.resource) == ("batch", "v1", "jobs")


def orphans(resource: ResourceRef, options: Mapping[str, Any] | None) -> bool:
    """Whether a DELETE with these DeleteOptions orphans the dependents (the policy wins over
    the deprecated ``orphanDependents``; neither: the kind's default)."""
    opts = options or {}
    policy = opts.get("propagationPolicy")
    if policy is not None:
        return policy == "Orphan"
    flag = opts.get("orphanDependents")
    if flag is not None:
        return flag is True
    return orphans_by_default(resource)


def options_of_query(info: RequestInfo) -> dict[str, Any] | None:
    """The propagation options a request's query carries (a deletecollection's), or None."""
    out: dict[str, Any] = {}
    policy = (info.query.get("propagationPolicy") or ("",))[0]
    orphan = (info.query.get("orphanDependents") or ("",))[0]
    if policy:
        out["propagationPolicy"] = policy
    if orphan:
        out["orphanDependents"] = orphan == "true"
    return out or None


def contained(graph: Graph, obj: Mapping[str, Any], resource: ResourceRef) -> list[Node]:
    """What goes with an object besides its dependents: a namespace's objects, a CRD's
    custom resources (as far as the graph holds them)."""
    if resource.group == "" and resource.resource == "namespaces":
        name = str(_get(obj, "metadata", "name") or "")
        return [n for n in graph if n.namespace == name and name]
    if (resource.group, resource.resource) == _CRD:
        group, kind = _get(obj, "spec", "group"), _get(obj, "spec", "names", "kind")
        return [n for n in graph if (n.resource.group, n.kind) == (group, kind)]
    return []


def removal(
    graph: Graph, obj: Mapping[str, Any], resource: ResourceRef, *, orphan: bool = False
) -> list[Node]:
    """What goes when ``obj`` is deleted, itself excluded: what it contains and what the
    garbage collector deletes after both."""
    uid = str(_get(obj, "metadata", "uid") or "")
    inside = contained(graph, obj, resource)
    roots = [uid] if uid else []
    roots += [n.uid for n in inside]
    return inside + collected(graph, roots, orphan=orphan)


def _target(info: RequestInfo, old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> Node:
    """The written object as it would be stored (identity from the stored one)."""
    meta = dict(_get(new, "metadata") or {})
    if old is not None:
        for key in ("uid", "name", "namespace"):
            if _get(old, "metadata", key):
                meta[key] = _get(old, "metadata", key)
    meta.setdefault("namespace", info.namespace)
    meta.setdefault("uid", "")
    kind = str((old or new).get("kind") or "")
    node = node_of({**new, "metadata": meta}, parent_ref(info), kind)
    if node is not None:
        return node
    # Not stored yet (a create): no uid, so nobody can own it yet.
    labels = meta.get("labels")
    return Node(
        "",
        parent_ref(info),
        kind,
        info.namespace,
        str(meta.get("name") or meta.get("generateName") or ""),
        {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {},
        owner_refs_of(new),
    )


def _ttl_set(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    if str(new.get("apiVersion") or "").split("/")[0] != "batch" or new.get("kind") != "Job":
        return False
    after = _get(new, "spec", "ttlSecondsAfterFinished")
    return after is not None and after != _get(old, "spec", "ttlSecondsAfterFinished")


def _deletes(nodes: Iterable[Node], note: str, dry_run: bool) -> list[Implied]:
    seen: set[str] = set()
    out = []
    for n in nodes:
        key = n.uid or f"{n.namespace}/{n.name}"
        if key not in seen:
            seen.add(key)
            out.append(Implied(_delete(n, dry_run), note))
    return out


def scaled(parent: Mapping[str, Any], replicas: Any) -> dict[str, Any]:
    """The parent as a write to its ``scale`` subresource leaves it."""
    spec = dict(_get(parent, "spec") or {})
    spec["replicas"] = replicas
    return {**parent, "spec": spec}


def deletion_consequences(
    graph: Graph,
    info: RequestInfo,
    targets: Iterable[Mapping[str, Any]],
    options: Mapping[str, Any] | None,
) -> list[Implied]:
    """What the garbage collector (and the namespace and CRD machinery) delete after a
    delete, eviction or deletecollection of ``targets`` (the stored objects)."""
    resource = parent_ref(info)
    objs = list(targets)
    orphan = orphans(resource, options) and info.subresource != "eviction"
    uids = {str(_get(o, "metadata", "uid") or "") for o in objs}
    nodes: list[Node] = []
    for obj in objs:
        nodes += removal(graph, obj, resource, orphan=orphan)
    # Objects the request deletes itself are judged as such, not as consequences.
    return _deletes((n for n in nodes if n.uid not in uids), DEPENDENTS_NOTE, info.dry_run)


def _nothing_follows(
    info: RequestInfo, resource: ResourceRef, old: Mapping[str, Any], new: Mapping[str, Any]
) -> bool:
    """The common write, answered without building the graph's view of it: a stored object
    of a kind no workload rule covers, its owner references as they were, no TTL set, no
    ephemeral container. (The full rules give the same empty answer; this is only faster.)"""
    if is_workload(resource) or info.subresource == "ephemeralcontainers":
        return False
    old_meta, new_meta = _get(old, "metadata"), _get(new, "metadata")
    if not isinstance(old_meta, dict) or not isinstance(new_meta, dict):
        return False
    uid = old_meta.get("uid")
    if not isinstance(uid, str) or not uid:
        return False
    return old_meta.get("ownerReferences") == new_meta.get("ownerReferences") and not _ttl_set(
        old, new
    )


def write_consequences(
    graph: Graph,
    info: RequestInfo,
    old: Mapping[str, Any] | None,
    new: Mapping[str, Any],
) -> list[Implied]:
    """What a create, update or patch (any subresource) makes the cluster do next.

    - owner references (written by any verb or subresource, status included) that hand the
      object to the garbage collector: the object (on its old and new labels) and what goes
      with it; a Job's TTL likewise;
    - the controller rules for workloads (scale, rollout, suspend, history, adoption, pod
      templates), the ``scale`` subresource included (``new`` is then the parent as scaled);
    - ``pods/ephemeralcontainers`` is also a CONNECT to the pod.
    """
    out: list[Implied] = []
    resource = parent_ref(info)
    if old is not None and _nothing_follows(info, resource, old, new):
        return out
    dry = info.dry_run
    target = _target(info, old, new)
    before = node_of(old, resource, str(old.get("kind") or "")) if old is not None else None
    handed = False
    if old is None:
        # Created with owners that do not resolve: collected at once.
        # Without a graph to look in, owners are taken to exist (a controller creating its
        # children); the collector would only delete what the caller has just created.
        handed = bool(target.owners) and graph.known and collected_now(graph, target)
    else:
        handed = bool(after_owner_write(graph, before, target)) or _ttl_set(old, new)
    if handed:
        if before is not None and dict(before.labels) != dict(target.labels):
            out.append(Implied(_delete(before, dry), OWNER_NOTE))
        stored = {**new, "metadata": {**(_get(new, "metadata") or {}), "uid": target.uid}}
        out += _deletes([target, *removal(graph, stored, resource)], OWNER_NOTE, dry)
    if is_workload(resource) and info.subresource in ("", "scale"):
        write = WorkloadWrite(
            resource, info.namespace, target.name, old, new, uid=target.uid, dry_run=dry
        )
        out += workload_deletions(graph, write) + adoptions(graph, write)
        out += template_creations(write)
    if info.subresource == "ephemeralcontainers" and old is not None:
        connect = AdmissionInput(
            operation=Operation.CONNECT,
            namespace=info.namespace,
            resource=ResourceRef(info.group, info.version, info.resource, info.subresource),
            name=info.name,
            user=_NOBODY,
            old_labels=dict(before.labels) if before else {},
            dry_run=dry,
            kind=str(old.get("kind") or ""),
        )
        out.append(Implied(connect, CONNECT_NOTE))
    return out


def identity_locks(
    locks: Iterable[Lock],
    info: RequestInfo,
    old: Mapping[str, Any] | None,
    new: Mapping[str, Any] | None,
) -> tuple[str, list[Lock]]:
    """The Locks whose exempt service account this request hands out, and how (for the
    message): a TokenRequest for it; a pod or workload (created, or its pod spec changed)
    that runs as it; exec, attach or an ephemeral container in a pod that runs as it."""
    resource = parent_ref(info)
    ns, verb, sub = info.namespace, info.verb, info.subresource
    if resource.resource == "serviceaccounts" and sub == "token" and verb == "create":
        uid = str(_get(old, "metadata", "uid") or "")
        found = exempt_service_accounts(locks, ns, info.name, uid)
        return f"minting a token for service account {info.name}", found
    if resource.group == "" and resource.resource == "pods" and sub in _IDENTITY_CONNECTS:
        account = service_account_of(resource, old)
        found = exempt_service_accounts(locks, ns, account)
        return f"running code in a pod that runs as service account {account}", found
    if sub or new is None or verb not in ("create", "update", "patch"):
        return "", []
    is_pod = resource.group == "" and resource.resource == "pods"
    if not (is_pod or is_workload(resource)):
        return "", []
    if old is not None:
        before = _get(old, "spec") if is_pod else _template(resource, old)
        after = _get(new, "spec") if is_pod else _template(resource, new)
        if before == after:
            return "", []
    account = service_account_of(resource, new)
    found = exempt_service_accounts(locks, ns, account)
    what = "a pod" if is_pod else "a pod template"
    return f"{what} that runs as service account {account}", found


def _may_exempt_accounts_of(locks: Iterable[Lock], namespace: str) -> bool:
    """Whether a Lock's exemption may be a service account of ``namespace``."""
    for lk in locks:
        name = lk.exclusive_name
        if name is None and lk.exclusive_uid is not None:
            return True  # a uid alone may be any service account's
        if name is None:
            continue
        if ":" not in name and lk.namespace == namespace:
            return True
        if name.startswith(f"{_SERVICE_ACCOUNT_PREFIX}{namespace}:"):
            return True
    return False


def needs_consequence_judgement(info: RequestInfo, engine: Engine) -> bool:
    """Whether what the cluster does next because of this mutation may be refused (the fast
    path's second question; a few look-ups, no body).

    A namespaced object can only own objects of its own namespace, so a namespaced write
    matters only where DELETE Locks are; a cluster-scoped one may own anything.
    """
    verb, sub, ns = info.verb, info.subresource, info.namespace
    resource = parent_ref(info)
    if info.operation is None:
        return False
    delete_locks = bool(engine.invalid) or any(
        Operation.DELETE in lk.operations for lk in engine.locks
    )
    ends_or_writes = verb in ("delete", "deletecollection", "update", "patch") or (
        sub == "eviction"
    )
    # A pod or ReplicaSet created under a workload's selector is adopted (orphan_adoptions).
    adoptable = verb == "create" and not sub and (resource.group, resource.resource) in ADOPTERS
    if (
        (ends_or_writes or adoptable)
        and delete_locks
        and (not ns or engine.covers(ns, Operation.DELETE))
    ):
        return True
    workload_write = is_workload(resource) and (
        (verb == "create" and not sub) or (verb in ("update", "patch") and sub in ("", "scale"))
    )
    if workload_write and (
        engine.covers(ns, Operation.CREATE) or engine.covers(ns, Operation.DELETE)
    ):
        return True
    if sub == "ephemeralcontainers" and engine.covers(ns, Operation.CONNECT):
        return True
    identity = (sub == "token" and resource.resource == "serviceaccounts") or (
        resource.group == "" and resource.resource == "pods" and sub in _IDENTITY_CONNECTS
    )
    identity = identity or (
        not sub
        and verb in ("create", "update", "patch")
        and (is_workload(resource) or (resource.group == "" and resource.resource == "pods"))
    )
    return identity and _may_exempt_accounts_of(engine.locks, ns)
