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

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from klockproxy.core.locks import Lock
from klockproxy.core.ownership import Graph, Node, collected
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


def is_workload(resource: ResourceRef) -> bool:
    """Whether the rules know this kind."""
    return (resource.group, resource.resource) in WORKLOADS


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


def workload_deletions(
    graph: Graph,
    resource: ResourceRef,
    uid: str,
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    *,
    dry_run: bool = False,
) -> list[Implied]:
    """DELETEs a workload's controller performs because ``old`` is stored as ``new``.

    The objects at stake are the workload's descendants in ``graph`` (its ReplicaSets, Jobs,
    pods, and what they own) that the controller may delete, plus what the garbage collector
    deletes after them.
    """
    if not is_workload(resource):
        return []
    reasons = _reasons(resource, old, new)
    if not reasons:
        return []
    descendants = graph.descendants(uid)
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
    return [Implied(_delete(n, dry_run), note) for n in _with_cascade(graph, victims)]


def adoptions(
    graph: Graph,
    resource: ResourceRef,
    namespace: str,
    old: Mapping[str, Any] | None,
    new: Mapping[str, Any],
    *,
    dry_run: bool = False,
) -> list[Implied]:
    """DELETEs of the orphans a new workload (or a new selector) adopts.

    A ReplicaSet, ReplicationController, StatefulSet, DaemonSet or Job with a manual selector
    adopts the pods its selector matches that have no controlling owner, and deletes those it
    does not want; a Deployment adopts ReplicaSets (and through them their pods).
    """
    if not is_workload(resource):
        return []
    selector = _selector(resource, new)
    if selector is None:
        return []
    if old is not None and _selector(resource, old) == selector:
        return []
    plain = resource.resource == "replicationcontrollers"
    target = "replicasets" if resource.resource == "deployments" else "pods"
    orphans = [
        n
        for n in graph.in_namespace(namespace, target)
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
    return [Implied(_delete(n, dry_run), note) for n in _with_cascade(graph, at_stake)]


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


def template_creations(
    resource: ResourceRef,
    namespace: str,
    name: str,
    old: Mapping[str, Any] | None,
    new: Mapping[str, Any],
    *,
    dry_run: bool = False,
) -> list[Implied]:
    """CREATEs the workload's controller performs: pods with its template's labels (and the
    ReplicaSets of a Deployment, the Jobs of a CronJob), when the write may create them (a new
    workload, a changed template or selector, more replicas, a resumed Job)."""
    if not is_workload(resource) or not _template_changed_or_grows(resource, old, new):
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
                namespace=namespace,
                resource=ref,
                name=f"{name}-",  # generated names
                user=_NOBODY,
                new_labels=labels,
                dry_run=dry_run,
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
