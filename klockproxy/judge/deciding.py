"""Deciding: one mutation and the objects around it in, a Verdict out (every mode calls it).

``Judge.decide(subject, caller) -> Verdict`` runs the engine on the operation's inputs
(CREATE on the new object, UPDATE on the old OR the new one, DELETE on the old one, CONNECT on
the parent) and every consequence check, so the proxy and the webhook give the same verdict
and the same message for the same case. A denial is a 403 Status worded the way the API
server words admission denials.

Deletions that delete other objects are judged on what they would delete: a namespace (any
DELETE lock in it that applies to the caller refuses it), a CustomResourceDefinition (its
objects are listed and judged), deletecollection (the listed objects are judged). What the
cluster does next because of a request - the garbage collector's deletions after a delete,
eviction or deletecollection, after owner references written by any verb or subresource or a
Job's TTL; what the workload controllers delete, adopt and create; the exempt identity handed
out - comes from ``core.consequences`` on the ownership index (``cluster.ownership``).
Without an index (lookups that cannot watch, a pass-through proxy without credentials of its
own) cascading DELETEs are searched per request among ``DEPENDENT_KINDS`` as before.

What the objects are is the gathering's business (``klockproxy.judge.gathering`` for the
proxy; the webhook reads them from the AdmissionReview). Lookups the consequence checks make
(lists of what a deletion deletes) are sent with ``Caller.headers``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol
from urllib.parse import quote

from klockproxy.cluster.upstream import Upstream, UpstreamStatusError
from klockproxy.core.codec import media_type
from klockproxy.core.consequences import (
    Implied,
    adopter_kinds,
    deletion_consequences,
    identity_locks,
    needs_consequence_judgement,
    options_of_query,
    orphan_adoptions,
    scaled,
    write_consequences,
)
from klockproxy.core.engine import DENIAL_PREFIX, Decision, Engine, is_exempt, who_may
from klockproxy.core.errors import DecodeError, KlockProxyError, Refusal, UpstreamError
from klockproxy.core.locks import GROUP, Lock
from klockproxy.core.metadata import kind_of, labels_of, object_meta
from klockproxy.core.owners import (
    DEPENDENT_KINDS,
    DEPENDENTS_NOTE,
    OWNER_NOTE,
    being_deleted,
    finishes_deletion,
    owner_inputs,
    owner_uids,
)
from klockproxy.core.ownership import Graph, Node
from klockproxy.core.patches import APPLY_PATCH
from klockproxy.core.paths import collection_path, resource_path
from klockproxy.core.requests import RequestInfo
from klockproxy.core.status import Status, failure, forbidden
from klockproxy.core.types import AdmissionInput, Operation, ResourceRef, UserInfo
from klockproxy.judge.boundary import refusal_of

# How many locked objects a deletecollection refusal names before summarising.
MAX_NAMED_OBJECTS = 10

# Writes through these may change the object's labels: judged on the new labels. (A pods/status
# update may change metadata.labels: the pod status strategy resets spec, not labels.)
LABEL_SUBRESOURCES = frozenset({"", "status"})
# Placeholder caller for a first decision: when no lock exempts anybody the caller does not
# matter and the identity lookup is skipped.
_NOBODY = UserInfo(username="")

AuthHeaders = Mapping[str, Sequence[str]]


# What the judge's lookups go through: the one upstream client (it routes each request by
# who it is made as); tests inject stand-ins with the methods the judge calls.
Lookups = Upstream


class Ownership(Protocol):
    """The ownership index (``cluster.ownership.OwnershipIndex``): who owns what."""

    def follow(self, engine: Engine) -> None:
        """Watch the namespaces of ``engine``'s DELETE Locks."""
        ...

    async def graph_when_synced(self) -> Graph:
        """The graph once synced (a short wait at most); else a 503 Refusal."""
        ...

    def stored(self, group: str, resource: str, namespace: str, name: str) -> Node | None:
        """The object as the index last saw it, if it follows it (maybe stale: whoever uses
        it compares its ``version`` with the API server's)."""
        ...


@dataclass(frozen=True)
class Verdict:
    """What to do with a judged request.

    ``status`` set: answer with it instead of forwarding (``log_message``, when set, is what
    the log says instead of the Status message, which may quote the body). Otherwise forward,
    with ``body`` (decoded: the caller re-applies its Content-Encoding) and ``content_type``
    when they are set (the proxy's resourceVersion guard; ``decide`` never sets them).
    """

    status: Status | None = None
    log_message: str | None = None
    body: bytes | None = None
    content_type: str | None = None
    # The Locks that decided a denial (``namespace/name``); empty when allowed or refused for
    # another reason (audit log, metrics).
    locks: tuple[str, ...] = ()
    # Allowed on the ownership index's version of the object and conditional on it, with
    # nothing asked of the API server: a 409 may only mean that the index lagged behind, and
    # the request is then judged again with ``fresh`` (see ``Judge.judge``).
    on_index: bool = False

    @property
    def allowed(self) -> bool:
        """Whether the request is forwarded."""
        return self.status is None


@dataclass(frozen=True)
class Subject:
    """One mutation and the objects around it.

    ``old``: the stored object (the parent for subresources); None = absent. ``new``: the
    object as it would be stored; None for DELETE and CONNECT, and when the gathering found
    nothing to judge (the API server will answer 404). ``options``: the DeleteOptions of a
    DELETE (``propagationPolicy``, ``orphanDependents``), None when there are none.
    ``also_new``: other results the stored object may have when the gathering could not
    compute it exactly (judged as well, as UPDATEs of ``old``).
    """

    info: RequestInfo
    old: Mapping[str, Any] | None
    new: Mapping[str, Any] | None
    options: Mapping[str, Any] | None = None
    also_new: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class Caller:
    """Who is asking, and the headers the judge's own lookups are sent with.

    Either ``user`` is known (the webhook's ``request.userInfo``, a gateway certificate
    caller) or ``resolve`` finds it lazily (the proxy asks the API server only when a Lock's
    exemption makes the caller matter). ``headers`` are the caller's auth headers for
    lookups as the caller; empty = the lookup client's own credentials (the webhook).
    """

    user: UserInfo | None = None
    resolve: Callable[[], Awaitable[UserInfo]] | None = None
    headers: AuthHeaders = field(default_factory=dict)

    @classmethod
    def known(cls, user: UserInfo, headers: AuthHeaders | None = None) -> Caller:
        """A caller whose identity is already known."""
        return cls(user=user, headers=headers or {})

    @classmethod
    def lazy(cls, resolve: Callable[[], Awaitable[UserInfo]], headers: AuthHeaders) -> Caller:
        """A caller resolved on demand (by ``resolve``) and looked up with ``headers``."""
        return cls(resolve=resolve, headers=headers)

    async def user_info(self) -> UserInfo:
        """Who this is (may ask the API server; raises UpstreamError when it cannot)."""
        if self.user is not None:
            return self.user
        if self.resolve is None:
            raise UpstreamError("the caller's identity is neither known nor resolvable")
        return await self.resolve()


def is_crd_delete(info: RequestInfo) -> bool:
    """A DELETE (or deletecollection) of CustomResourceDefinitions."""
    return (
        info.group == "apiextensions.k8s.io"
        and info.resource == "customresourcedefinitions"
        and info.verb in ("delete", "deletecollection")
        and not info.subresource
    )


def is_namespace_delete(info: RequestInfo) -> bool:
    """A DELETE of one namespace (which deletes every object in it)."""
    return (
        info.group == ""
        and info.resource == "namespaces"
        and info.verb == "delete"
        and not info.subresource
    )


def has_delete_locks(engine: Engine) -> bool:
    """Whether any lock (an invalid one included) may refuse a DELETE."""
    # An invalid Lock refuses every operation in its namespace, DELETE included.
    return bool(engine.invalid) or any(Operation.DELETE in lk.operations for lk in engine.locks)


def covers_or_consequences(info: RequestInfo, engine: Engine, op: Operation) -> bool:
    """Whether a loaded Lock covers ``op`` in the request's namespace, the objects a CRD
    deletion deletes, or what the garbage collector and the controllers do next
    (core.consequences): what every mode asks first of a mutation."""
    if engine.covers(info.namespace, op) or (is_crd_delete(info) and has_delete_locks(engine)):
        return True
    return needs_consequence_judgement(info, engine)


def needs_judgement(info: RequestInfo, engine: Engine, content_type: str) -> bool:
    """Whether a loaded Lock could affect this mutation (else it is forwarded untouched).

    This is the fast path's only question: it costs a few dictionary look-ups and never
    reads the body. Besides the request's own operation, some writes are judged for what
    they can also do (the judgement then says which applies).
    """
    op = info.operation
    if op is None:
        return False
    if covers_or_consequences(info, engine, op):
        return True
    ns = info.namespace
    if info.subresource or info.verb not in ("update", "patch"):
        return False
    if engine.covers(ns, Operation.CREATE) and (
        # PUT creates the object for resources that allow create-on-update (leases...);
        # server-side apply creates it when it does not exist.
        info.verb == "update" or media_type(content_type) == APPLY_PATCH
    ):
        return True
    # A new owner reference lets the garbage collector delete the object later: judged as a
    # DELETE too (see klockproxy.core.owners).
    return engine.covers(ns, Operation.DELETE)


def orphans(options: Mapping[str, Any] | None) -> bool:
    """Whether a DELETE with these DeleteOptions orphans the dependents (else the garbage
    collector deletes them)."""
    if not options:
        return False
    return options.get("propagationPolicy") == "Orphan" or options.get("orphanDependents") is True


@dataclass
class _Plan:
    """The admission inputs a mutation is judged on."""

    inputs: list[AdmissionInput]
    name: str
    # Inputs from index ``own`` on are about consequences (an adopted owner, dependents the
    # garbage collector deletes); ``note`` explains them when one of those is denied.
    own: int | None = None
    note: str = ""
    # Inputs about objects the caller may not see: a denial names the lock, not the object.
    hidden: frozenset[int] = frozenset()
    # What a deletecollection deletes (the listed objects), for its consequences.
    targets: list[dict[str, Any]] | None = None
    # Per-input notes (index -> why) for the inputs the consequences added.
    notes: dict[int, str] = field(default_factory=dict)


class LockDenial(Refusal):
    """A refusal decided by Locks: ``locks`` names them (``namespace/name``)."""

    def __init__(self, status: Status, locks: Iterable[str]) -> None:
        super().__init__(status)
        self.locks = tuple(sorted(set(locks)))


def _lock_keys(decisions: Iterable[Decision]) -> list[str]:
    return [den.lock.key for d in decisions if not d.allowed for den in d.denials]


def _deny_unless_exempt(
    info: RequestInfo,
    name: str,
    locks: Sequence[Lock],
    user: UserInfo,
    why: Callable[[Lock], str],
) -> None:
    """LockDenial naming every Lock of ``locks`` that does not exempt ``user``, each with
    ``why`` it refuses and who may; nothing when every one exempts the user."""
    applying = [lk for lk in locks if not is_exempt(lk, user)]
    if not applying:
        return
    texts = [f"{lk.matcher_text()} ({why(lk)}; {who_may(lk)})" for lk in applying]
    raise LockDenial(
        forbidden(info, name, DENIAL_PREFIX + ", and a lock: ".join(texts)),
        [lk.key for lk in applying],
    )


class Decider:
    """Decides mutations against ``engine``; lists what deletions delete with ``lookups``;
    follows owner references in ``ownership`` (the index) when there is one."""

    def __init__(
        self, lookups: Lookups, engine: Engine, ownership: Ownership | None = None
    ) -> None:
        self.lookups = lookups
        self.engine = engine
        self.ownership = ownership
        if ownership is not None:
            ownership.follow(engine)

    async def decide(self, subject: Subject, caller: Caller) -> Verdict:
        """The verdict on one mutation: its own operation and every consequence check."""
        try:
            await self._check(subject, caller)
        except KlockProxyError as e:
            return refused(e)
        return Verdict()

    async def _check(self, subject: Subject, caller: Caller) -> None:
        info = subject.info
        if is_namespace_delete(info):
            await self._check_namespace_delete(info, caller)
        if is_crd_delete(info):
            await self._check_crd_delete(subject, caller)
        plan = await self._plan(subject, caller)
        decisions = await self._decide(plan.inputs, caller)
        if any(not d.allowed for d in decisions):
            raise LockDenial(self._denial(info, plan, decisions), _lock_keys(decisions))
        if await self._add_consequences(subject, plan, caller):
            decisions = await self._decide(plan.inputs, caller)
            if any(not d.allowed for d in decisions):
                await self._hide_unseen(plan, decisions, caller)
                raise LockDenial(self._denial(info, plan, decisions), _lock_keys(decisions))

    def _denial(self, info: RequestInfo, plan: _Plan, decisions: list[Decision]) -> Status:
        if info.verb != "deletecollection":
            index, first = next((i, d) for i, d in enumerate(decisions) if not d.allowed)
            note = ""
            if plan.note and plan.own is not None and index >= plan.own:
                note = f"; {plan.note}"
            if index in plan.notes:
                note = f"; {plan.notes[index]}"
            if index in plan.hidden:
                unseen = plan.inputs[index].resource.group_resource
                locks = ", ".join(sorted({d.lock.key for d in first.denials}))
                message = (
                    f"{DENIAL_PREFIX}one of the {unseen} that the garbage collector would "
                    f"delete after it is locked (Lock {locks})"
                )
                return forbidden(info, plan.name, message + note)
            return forbidden(info, plan.name, first.message + note)
        texts: list[str] = []
        names: list[str] = []
        for index, (inp, decision) in enumerate(zip(plan.inputs, decisions, strict=True)):
            if decision.allowed:
                continue
            if index in plan.hidden:
                # A consequence the caller may not read: the Lock, not the object.
                names.append(f"one of the {inp.resource.group_resource}")
                locks = ", ".join(sorted({d.lock.key for d in decision.denials}))
                texts.append(f"a locked object (Lock {locks})")
                continue
            names.append(inp.name)
            texts.extend(d.text for d in decision.denials)
        message = DENIAL_PREFIX + ", and a lock: ".join(texts[:MAX_NAMED_OBJECTS])
        listed = ", ".join(names[:MAX_NAMED_OBJECTS])
        if len(names) > MAX_NAMED_OBJECTS:
            listed += f" and {len(names) - MAX_NAMED_OBJECTS} more"
        message += f"; deletecollection would delete locked objects: {listed}"
        return forbidden(info, "", message)

    async def _decide(self, inputs: list[AdmissionInput], caller: Caller) -> list[Decision]:
        engine = self.engine
        known = caller.user
        if known is not None:
            # A known caller (the webhook's userInfo): one pass, as who it is.
            return [
                engine.decide(inp if inp.user is known else replace(inp, user=known))
                for inp in inputs
            ]
        decisions = [engine.decide(inp) for inp in inputs]
        caller_matters = any(
            d.exempted or any(den.lock.has_exclusive for den in d.denials) for d in decisions
        )
        if not caller_matters:
            return decisions
        user = await caller.user_info()
        return [engine.decide(replace(inp, user=user)) for inp in inputs]

    # ------------------------------------------------------------------------------------
    # The operation's own inputs

    async def _plan(self, subject: Subject, caller: Caller) -> _Plan:
        """The admission inputs of a mutation (none when there is nothing to judge)."""
        info = subject.info
        op = info.operation
        if op is None:
            # needs_judgement() only lets mutations through; never forward one unjudged.
            raise Refusal(failure(403, "klockproxy: cannot classify this request's operation"))
        user = caller.user or _NOBODY

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
                user=user,
                old_labels=old,
                new_labels=new,
                dry_run=info.dry_run,
                kind=kind,
            )

        verb = info.verb
        if verb == "deletecollection":
            return await self._plan_deletecollection(info, caller)
        old, new = subject.old, subject.new
        if old is None:
            if new is None:
                # The API server answers 404 (or 409 thanks to the proxy's guard).
                return _Plan([], info.name)
            # A create, or a PUT / server-side apply that creates the object.
            meta = object_meta(new)
            if verb == "create":
                name = str(meta.get("name") or meta.get("generateName") or "")
            elif verb == "patch":
                name = str(meta.get("name") or info.name)
            else:
                name = info.name
            return _Plan([inp(Operation.CREATE, name, None, labels_of(new), kind_of(new))], name)
        kind = kind_of(old)
        old_labels = labels_of(old)
        if op is Operation.UPDATE and info.subresource in LABEL_SUBRESOURCES:
            after = new if new is not None else old
            if finishes_deletion(old, after, info.subresource):
                # Finalizers removed, or the status of an object being deleted: the DELETE
                # was judged; the object cannot be saved, only left stuck.
                return _Plan([], info.name)
            inputs = [inp(op, info.name, old_labels, labels_of(after), kind)]
            inputs += [inp(op, info.name, old_labels, labels_of(o), kind) for o in subject.also_new]
            owners = owner_inputs(old, after, inp, info.name, kind)
            return _Plan(inputs + owners, info.name, own=len(inputs), note=OWNER_NOTE)
        if op is Operation.UPDATE:
            # scale, ephemeralcontainers (update or patch): the parent's labels decide; these
            # subresources cannot change labels (a Scale object has none).
            return _Plan([inp(op, info.name, old_labels, old_labels, kind)], info.name)
        if op is Operation.CREATE:
            # A create on another subresource (serviceaccounts/token, pods/binding).
            return _Plan([inp(op, info.name, None, old_labels, kind)], info.name)
        if op is Operation.CONNECT:
            return _Plan([inp(op, info.name, old_labels, None, kind)], info.name)
        # DELETE, and pods/eviction (a DELETE of the pod). An object already being deleted
        # (its DELETE was judged) is not deleted again by this one - the kubelet's final
        # DELETE of a terminating pod, a shorter grace period - but the dependents are judged
        # again: a repeated DELETE may change the propagation policy.
        inputs = [] if being_deleted(old) else [inp(op, info.name, old_labels, None, kind)]
        hidden: set[int] = set()
        # A namespace is judged as a whole (_check_namespace_delete).
        whole = info.group == "" and info.resource == "namespaces"
        # With an index, _add_consequences judges the cascade.
        legacy = self.ownership is None
        if legacy and verb == "delete" and not whole and not orphans(subject.options):
            for dependent, unseen in await self._dependent_inputs(info, old, caller.headers):
                if unseen:
                    hidden.add(len(inputs))
                inputs.append(dependent)
        own = 0 if being_deleted(old) else 1
        return _Plan(inputs, info.name, own=own, note=DEPENDENTS_NOTE, hidden=frozenset(hidden))

    async def _plan_deletecollection(self, info: RequestInfo, caller: Caller) -> _Plan:
        engine = self.engine
        if any(bad.namespace == info.namespace for bad in engine.invalid):
            # An invalid Lock refuses every mutation of its namespace; an empty list would
            # leave nothing to judge while objects created meanwhile would still be deleted.
            decision = engine.decide(
                AdmissionInput(
                    operation=Operation.DELETE,
                    namespace=info.namespace,
                    resource=info.ref,
                    name="",
                    user=_NOBODY,
                    old_labels={},
                    dry_run=info.dry_run,
                )
            )
            if not decision.allowed:
                raise LockDenial(forbidden(info, "", decision.message), _lock_keys([decision]))
        for param in ("resourceVersion", "resourceVersionMatch", "continue"):
            if info.query.get(param):
                # The API server would delete what it lists at that (possibly old) version -
                # a continue token carries one too - while the proxy judges what exists now.
                raise Refusal(
                    failure(
                        400,
                        f"klockproxy: a lock covers this namespace; deletecollection with "
                        f"{param} is not supported through klockproxy",
                    )
                )
        path = collection_path(info)
        label_selector = (info.query.get("labelSelector") or ("",))[0]
        field_selector = (info.query.get("fieldSelector") or ("",))[0]
        items = await self.lookups.list_objects(
            path, caller.headers, label_selector or None, field_selector or None
        )
        inputs = [
            AdmissionInput(
                operation=Operation.DELETE,
                namespace=info.namespace,
                resource=info.ref,
                name=str(object_meta(item).get("name", "")),
                user=_NOBODY,
                old_labels=upstream_labels(item),
                dry_run=info.dry_run,
            )
            for item in items
        ]
        return _Plan(inputs, "", targets=items)

    # ------------------------------------------------------------------------------------
    # Consequences: what the cluster does next (core.consequences, the ownership index)

    async def _add_consequences(self, subject: Subject, plan: _Plan, caller: Caller) -> bool:
        """Add to ``plan`` what the cluster does next because of the request, and refuse
        handing out a Lock's exempt identity. True when inputs were added."""
        info, old, new = subject.info, subject.old, subject.new
        label, locks = identity_locks(self.engine.locks, info, old, new)
        if locks:
            await self._check_identity(info, plan, label, locks, caller)
        engine = self.engine
        graph = Graph(known=False)
        in_scope = not info.namespace or engine.covers(info.namespace, Operation.DELETE)
        if self.ownership is not None and has_delete_locks(engine) and in_scope:
            graph = await self.ownership.graph_when_synced()
        if info.subresource == "scale" and old is not None and new is not None:
            # A Scale (the webhook's object, the proxy's computed one): the parent as scaled.
            spec = new.get("spec")
            replicas = spec.get("replicas") if isinstance(spec, dict) else None
            new = scaled(old, replicas)
        implied: list[Implied] = []
        if info.verb == "deletecollection":
            if self.ownership is not None and plan.targets:
                options = subject.options or options_of_query(info)
                implied = deletion_consequences(graph, info, plan.targets, options)
        elif info.verb == "delete" or info.subresource == "eviction":
            if self.ownership is not None and old is not None:
                implied = deletion_consequences(graph, info, [old], subject.options)
        elif new is not None:
            implied = write_consequences(graph, info, old, new)
            # Only the kinds of which the index holds any in the namespace are listed (an
            # application without workloads, like bare pods, costs no request).
            kinds = [
                ref
                for ref in (adopter_kinds(info, old, new) if graph.known else ())
                if graph.holds_any(ref.group, ref.resource, info.namespace)
            ]
            if kinds:
                workloads = await self._workloads(info, kinds, caller.headers)
                implied += orphan_adoptions(graph, info, old, new, workloads)
        if not implied:
            return False
        for item in implied:
            plan.notes[len(plan.inputs)] = item.note
            plan.inputs.append(item.input)
        return True

    async def _workloads(
        self, info: RequestInfo, kinds: Sequence[ResourceRef], headers: AuthHeaders
    ) -> list[tuple[ResourceRef, dict[str, Any]]]:
        """The workloads of ``kinds`` in the request's namespace (their selectors), listed
        with the proxy's own credentials where it has them (those of its index), else as the
        caller. A kind the API server does not serve has none; any other failure refuses
        the write (the proxy cannot tell what a controller would do)."""
        use = {} if self.lookups.has_own_credentials else headers

        async def one(ref: ResourceRef) -> list[tuple[ResourceRef, dict[str, Any]]]:
            try:
                items = await self.lookups.list_objects(resource_path(ref, info.namespace), use)
            except UpstreamStatusError as e:
                if e.code == 404:
                    return []
                raise Refusal(
                    failure(
                        403 if e.code in (401, 403) else 503,
                        f"klockproxy: DELETE locks exist in namespace {info.namespace} and the "
                        f"proxy cannot tell whether one of its {ref.resource} would adopt "
                        f"{info.name or 'the object'} with the labels written ({e.message})",
                    )
                ) from e
            return [(ref, item) for item in items]

        listed = await asyncio.gather(*(one(ref) for ref in kinds))
        return [pair for part in listed for pair in part]

    async def _hide_unseen(self, plan: _Plan, decisions: list[Decision], caller: Caller) -> None:
        """Mark the denied consequences the caller may not read (the index saw them with the
        proxy's credentials): the denial then names the Lock, not the object. One GET as the
        caller per object the message would name."""
        denied = [i for i, d in enumerate(decisions) if not d.allowed]
        if plan.targets is None:
            denied = denied[:1]  # only the first denial is named (deletecollection: ten)
        named = [i for i in denied if i in plan.notes]
        hidden = set(plan.hidden)
        for index in named[:MAX_NAMED_OBJECTS]:
            inp = plan.inputs[index]
            path = resource_path(inp.resource, inp.namespace, inp.name)
            try:
                await self.lookups.get_object(path, caller.headers)
            except UpstreamStatusError as e:
                if e.code in (401, 403):
                    hidden.add(index)
            except UpstreamError:
                hidden.add(index)  # cannot tell: do not name it
        plan.hidden = frozenset(hidden)

    async def _check_identity(
        self, info: RequestInfo, plan: _Plan, label: str, locks: list[Lock], caller: Caller
    ) -> None:
        """Refuse handing a Lock's exempt service account to a caller it does not exempt."""
        _deny_unless_exempt(
            info,
            plan.name or info.name,
            locks,
            await caller.user_info(),
            lambda lk: (
                f"Lock {lk.key} exempts that service account, and {label} lets the caller act as it"
            ),
        )

    # ------------------------------------------------------------------------------------
    # Consequences: what else a deletion deletes

    async def _check_namespace_delete(self, info: RequestInfo, caller: Caller) -> None:
        """Deleting a namespace deletes every object in it, behind the proxy's back.

        The namespace controller's deletions never pass the proxy, so any DELETE lock in the
        namespace that applies to the caller refuses the namespace's deletion (even when it
        matches no object right now: listing every resource type would be the alternative).
        """
        locks = [
            lk
            for lk in self.engine.locks
            if lk.namespace == info.name and Operation.DELETE in lk.operations
        ]
        if not locks:
            return
        user = await caller.user_info() if any(lk.has_exclusive for lk in locks) else _NOBODY
        _deny_unless_exempt(
            info,
            info.name,
            locks,
            user,
            lambda lk: (
                f"Lock {lk.key} forbids DELETE in namespace {info.name}, and deleting "
                "the namespace deletes every object in it"
            ),
        )

    async def _check_crd_delete(self, subject: Subject, caller: Caller) -> None:
        """Deleting a CustomResourceDefinition deletes every object of that kind, behind the
        proxy's back: refuse when a lock would refuse deleting one of them."""
        info = subject.info
        if info.verb == "deletecollection":
            raise Refusal(
                failure(
                    403,
                    "klockproxy: deleting CustomResourceDefinitions by collection is refused "
                    "while DELETE locks exist; delete them one by one",
                )
            )
        crd = subject.old
        if crd is None:
            return
        raw_spec = crd.get("spec")
        spec: Mapping[str, Any] = raw_spec if isinstance(raw_spec, dict) else {}
        raw_names = spec.get("names")
        group, plural = (
            spec.get("group"),
            raw_names.get("plural") if isinstance(raw_names, dict) else None,
        )
        versions = [
            str(v["name"])
            for v in spec.get("versions") or []
            if isinstance(v, dict) and v.get("served") and isinstance(v.get("name"), str)
        ]
        if group == GROUP and plural == "locks":
            return  # Lock objects are never locked: deleting them all unlocks, by design.
        if not (isinstance(group, str) and isinstance(plural, str) and versions):
            # Its objects cannot be listed (say, every version unserved first): fail closed.
            raise Refusal(
                failure(
                    403,
                    f"klockproxy: DELETE locks exist and the objects that deleting {info.name} "
                    "would delete cannot be listed (no served version); serve a version first",
                )
            )
        version = versions[0]
        path = "/apis/" + "/".join(quote(part, safe="") for part in (group, version, plural))
        items = await self.lookups.list_objects(path, caller.headers)
        ref = ResourceRef(group, version, plural)
        inputs = [
            AdmissionInput(
                operation=Operation.DELETE,
                namespace=str(object_meta(item).get("namespace") or ""),
                resource=ref,
                name=str(object_meta(item).get("name") or ""),
                user=_NOBODY,
                old_labels=upstream_labels(item),
            )
            for item in items
        ]
        decisions = await self._decide(inputs, caller)
        locked = [(inp, d) for inp, d in zip(inputs, decisions, strict=True) if not d.allowed]
        if not locked:
            return
        texts = [den.text for _, d in locked[:MAX_NAMED_OBJECTS] for den in d.denials]
        listed = ", ".join(f"{inp.namespace}/{inp.name}" for inp, _ in locked[:MAX_NAMED_OBJECTS])
        if len(locked) > MAX_NAMED_OBJECTS:
            listed += f" and {len(locked) - MAX_NAMED_OBJECTS} more"
        message = (
            DENIAL_PREFIX
            + ", and a lock: ".join(texts)
            + f"; deleting the CustomResourceDefinition deletes locked objects: {listed}"
        )
        raise LockDenial(forbidden(info, info.name, message), _lock_keys(d for _, d in locked))

    async def _dependent_inputs(
        self, info: RequestInfo, current: Mapping[str, Any], headers: AuthHeaders
    ) -> list[tuple[AdmissionInput, bool]]:
        """DELETE judgements for what the garbage collector deletes after this object, each
        with whether the caller may not see it (listed with the proxy's credentials only).

        Dependents are found (transitively, by owner uid) among the kinds controllers and
        operators commonly create (``DEPENDENT_KINDS``) in the same namespace, listed as
        metadata only. As the caller first; when RBAC does not let the caller list a kind, with
        the proxy's own credentials if it has some, else the DELETE is refused (fail closed).
        A kind the API server does not serve is skipped.
        """
        root = str(object_meta(current).get("uid") or "")
        if not root or not info.namespace:
            return []
        listed: list[tuple[ResourceRef, dict[str, Any], bool]] = []
        for ref in DEPENDENT_KINDS:
            path = resource_path(ref, info.namespace)
            items, hidden = await self._list_dependents(info, ref, path, headers)
            listed.extend((ref, item, hidden) for item in items)
        owners = {root}
        dependents: list[tuple[ResourceRef, dict[str, Any], bool]] = []
        grew = True
        while grew:
            grew = False
            for ref, item, hidden in listed:
                uid = str(object_meta(item).get("uid") or "")
                if uid and uid not in owners and owner_uids(item) & owners:
                    owners.add(uid)
                    dependents.append((ref, item, hidden))
                    grew = True
        return [
            (
                AdmissionInput(
                    operation=Operation.DELETE,
                    namespace=info.namespace,
                    resource=ref,
                    name=str(object_meta(item).get("name") or ""),
                    user=_NOBODY,
                    old_labels=upstream_labels(item),
                    dry_run=info.dry_run,
                    kind=kind_of(item),
                ),
                hidden,
            )
            for ref, item, hidden in dependents
        ]

    async def _list_dependents(
        self,
        info: RequestInfo,
        ref: ResourceRef,
        path: str,
        headers: AuthHeaders,
    ) -> tuple[list[dict[str, Any]], bool]:
        """The items, and whether only the proxy's own credentials could list them (then the
        caller must not learn their names)."""
        attempts: list[AuthHeaders] = [headers]
        if self.lookups.has_own_credentials:
            attempts.append({})
        for attempt in attempts:
            try:
                items = await self.lookups.list_objects(path, attempt, metadata_only=True)
                return items, attempt is not headers
            except UpstreamStatusError as e:
                if e.code == 404:
                    return [], False
                if e.code not in (401, 403) or attempt is attempts[-1]:
                    raise Refusal(
                        failure(
                            403 if e.code in (401, 403) else 503,
                            f"klockproxy: DELETE locks exist in namespace {info.namespace} and "
                            f"the proxy cannot tell which {ref.resource} the garbage collector "
                            f"would delete after {info.name} ({e.message}); delete it with "
                            "propagationPolicy=Orphan (kubectl delete --cascade=orphan)",
                        )
                    ) from e
        return [], False


def upstream_labels(obj: Mapping[str, Any]) -> dict[str, str]:
    """The labels of an object the API server answered; one that cannot be read is upstream
    trouble (503), not the caller's mistake."""
    try:
        return labels_of(obj)
    except DecodeError as e:
        raise UpstreamError(f"the API server answered an object that cannot be read: {e}") from e


def refused(error: KlockProxyError) -> Verdict:
    """The verdict for a failure of the judge: the Status of the one error boundary."""
    refusal = refusal_of(error)
    locks = refusal.locks if isinstance(refusal, LockDenial) else ()
    return Verdict(status=refusal.status, log_message=refusal.log_message, locks=locks)
