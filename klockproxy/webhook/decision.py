"""The webhook's decision: the shared judgement of the proxy, on what the review gathered.

TEMPORARY ADAPTER. ``klockproxy.judge`` is being split into gathering and a shared
``Judge.decide(subject, caller)`` (see the judge's interface); until that lands, this module
drives today's ``Judge`` through the same steps the proxy's judgement takes after it has read
the objects: the namespace and CustomResourceDefinition deletion checks, the admission inputs
of the operation (CREATE on the new object, UPDATE on the old OR the new one plus owner
references and Job TTLs, DELETE on the old one plus the dependents the garbage collector
would delete, CONNECT on the parent), the engine, and the proxy's denial wording. Lookups are
made with the webhook's own credentials (no caller headers). When ``Judge.decide`` lands,
``decide`` below becomes a call to it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, cast

from klockproxy.cluster.identity import IdentityResolver
from klockproxy.core.engine import Decision, Engine
from klockproxy.core.errors import DecodeError, Refusal
from klockproxy.core.metadata import kind_of, labels_of, object_meta
from klockproxy.core.owners import DEPENDENTS_NOTE, OWNER_NOTE, owner_inputs
from klockproxy.core.requests import RequestInfo
from klockproxy.core.status import failure
from klockproxy.core.types import AdmissionInput, Operation, UserInfo
from klockproxy.judge import Judge, Lookups, Verdict, _Plan, is_crd_delete
from klockproxy.webhook.review import PARENT_CARRYING_SUBRESOURCES, Subject

# The webhook reads with its own credentials: no caller headers.
NO_HEADERS: Mapping[str, Sequence[str]] = {}


class _KnownCaller:
    """The caller is known from the review: no SelfSubjectReview."""

    def __init__(self, user: UserInfo) -> None:
        self.user = user

    async def resolve(self, headers: Mapping[str, Sequence[str]]) -> UserInfo:
        return self.user


def _is_namespace_delete(info: RequestInfo) -> bool:
    return (
        info.group == ""
        and info.resource == "namespaces"
        and info.verb == "delete"
        and not info.subresource
    )


def _orphans(options: Mapping[str, Any] | None) -> bool:
    """Whether the DeleteOptions leave the dependents (else the garbage collector deletes
    them after the object)."""
    if not options:
        return False
    return options.get("propagationPolicy") == "Orphan" or options.get("orphanDependents") is True


async def decide(engine: Engine, lookups: Lookups, gathered: Subject, user: UserInfo) -> Verdict:
    """The proxy's verdict on the gathered review, for ``user``."""
    judge = Judge(lookups, cast(IdentityResolver, _KnownCaller(user)), engine)
    info = gathered.info
    try:
        if _is_namespace_delete(info):
            await judge._check_namespace_delete(info, NO_HEADERS)
        if is_crd_delete(info):
            await judge._check_crd_delete(info, NO_HEADERS)
        plan = await _plan(judge, gathered)
        if plan is None:
            return Verdict()
        decisions: list[Decision] = [engine.decide(replace(i, user=user)) for i in plan.inputs]
        if all(d.allowed for d in decisions):
            return Verdict()
        return Verdict(status=judge._denial(info, plan, decisions))
    except Refusal as r:
        return Verdict(status=r.status, log_message=r.log_message)
    except DecodeError as e:
        # Labels that are not strings: the API server would not have stored them.
        return Verdict(status=failure(400, f"klockproxy: cannot read the object's labels: {e}"))


async def _plan(judge: Judge, gathered: Subject) -> _Plan | None:
    info = gathered.info
    op = info.operation
    if op is None:  # every admission operation maps to one; never allow one unjudged
        raise Refusal(failure(403, "klockproxy: cannot classify this request's operation"))

    def inp(
        operation: Operation,
        name: str,
        old: Mapping[str, str] | None,
        new: Mapping[str, str] | None,
        kind: str = "",
    ) -> AdmissionInput:
        return AdmissionInput(
            operation=operation,
            namespace=info.namespace,
            resource=info.ref,
            name=name,
            user=UserInfo(username=""),
            old_labels=old,
            new_labels=new,
            dry_run=info.dry_run,
            kind=kind,
        )

    name = info.name
    if op is Operation.CREATE and not info.subresource:
        new_obj = gathered.new or {}
        meta = object_meta(new_obj)
        name = str(meta.get("name") or meta.get("generateName") or name)
        return _Plan([inp(op, name, None, labels_of(new_obj), kind_of(new_obj))], name)
    old_obj = gathered.old
    if old_obj is None:
        # The object (or the parent of the subresource) is gone: the API server answers 404.
        return None
    kind = kind_of(old_obj)
    old = labels_of(old_obj)
    if op is Operation.UPDATE and info.subresource in PARENT_CARRYING_SUBRESOURCES:
        new_obj = gathered.new if gathered.new is not None else old_obj
        inputs = [inp(op, name, old, labels_of(new_obj), kind)]
        owners = owner_inputs(old_obj, new_obj, inp, name, kind)
        return _Plan(inputs + owners, name, own=len(inputs), note=OWNER_NOTE)
    if op is Operation.UPDATE:
        # scale and the like: the parent's labels, which these subresources cannot change.
        return _Plan([inp(op, name, old, old, kind)], name)
    if op is Operation.CREATE:
        # A create on another subresource (serviceaccounts/token, pods/binding).
        return _Plan([inp(op, name, None, old, kind)], name)
    if op is Operation.CONNECT:
        return _Plan([inp(op, name, old, None, kind)], name)
    # DELETE, and pods/eviction (a DELETE of the pod).
    inputs = [inp(op, name, old, None, kind)]
    hidden: set[int] = set()
    if info.verb == "delete" and not _is_namespace_delete(info) and not _orphans(gathered.options):
        for dependent, unseen in await judge._dependent_inputs(info, old_obj, NO_HEADERS):
            if unseen:
                hidden.add(len(inputs))
            inputs.append(dependent)
    return _Plan(inputs, name, own=1, note=DEPENDENTS_NOTE, hidden=frozenset(hidden))
