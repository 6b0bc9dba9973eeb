"""Judging a covered mutation: what to look up, which admission inputs, the verdict.

``Judge(lookups, identity, engine).judge(info, headers, body, content_type) -> Verdict``:
the old labels are read from the API server AS THE CALLER (``headers``: Authorization and
Impersonate-*), the new ones from the body (or by applying the patch), the engine decides and
a denial is a 403 Status the way the API server words admission denials. An allowed write
whose decision depended on the current object gets its body rewritten to be conditional on
the checked ``resourceVersion`` (core.guards). Knows nothing about mitmproxy: the addon (and
any other front, such as a webhook) hands it the request and acts on the verdict.

Deletions that delete other objects are judged on what they would delete: a namespace (any
DELETE lock in it that applies to the caller refuses it), a CustomResourceDefinition (its
objects are listed and judged), deletecollection (the listed objects are judged), a cascading
DELETE (the dependents the garbage collector would delete among ``DEPENDENT_KINDS`` of the
namespace, found by owner uid). A write that adds or changes an owner reference, or sets a
Job's ttlSecondsAfterFinished, is judged as a DELETE of that object too (core.owners).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol
from urllib.parse import quote

from klockproxy.cluster.identity import IdentityResolver
from klockproxy.cluster.upstream import UpstreamStatusError
from klockproxy.core.apply import ssa_result_labels
from klockproxy.core.consequences import (
    Implied,
    deletion_consequences,
    identity_locks,
    needs_consequence_judgement,
    scaled,
    write_consequences,
)
from klockproxy.core.engine import DENIAL_PREFIX, Decision, Engine, is_exempt, who_may
from klockproxy.core.errors import DecodeError, PatchError, Refusal, UpstreamError
from klockproxy.core.guards import (
    ABSENT_UID,
    add_precondition,
    body_refusal,
    last_string,
    load_document,
)
from klockproxy.core.locks import GROUP, Lock
from klockproxy.core.metadata import decode_body, kind_of, labels_of, media_type, object_meta
from klockproxy.core.owners import (
    DEPENDENT_KINDS,
    DEPENDENTS_NOTE,
    OWNER_NOTE,
    InputMaker,
    owner_inputs,
    owner_uids,
)
from klockproxy.core.ownership import Graph
from klockproxy.core.patches import APPLY_PATCH, UnsupportedPatchError, apply_patch, kind_key_of
from klockproxy.core.paths import collection_path, object_path
from klockproxy.core.protobuf import PROTOBUF_CONTENT_TYPE, decode_fields, unwrap_unknown
from klockproxy.core.requests import RequestInfo
from klockproxy.core.status import Status, failure, forbidden
from klockproxy.core.types import AdmissionInput, Operation, ResourceRef, UserInfo

# How many locked objects a deletecollection refusal names before summarising.
MAX_NAMED_OBJECTS = 10

# Writes through these may change the object's labels: judged on the new labels. (A pods/status
# update may change metadata.labels: the pod status strategy resets spec, not labels.)
_LABEL_SUBRESOURCES = frozenset({"", "status"})
# Placeholder caller for a first decision: when no lock exempts anybody the caller does not
# matter and the identity lookup is skipped.
_NOBODY = UserInfo(username="")


class Lookups(Protocol):
    """What the judge needs from the upstream client (``cluster.upstream.Upstream``)."""

    @property
    def server(self) -> str:
        """The API server URL, for messages."""
        ...

    async def get_object(
        self, path: str, headers: Mapping[str, str | Sequence[str]]
    ) -> dict[str, Any] | None:
        """GET as the caller; None on 404."""
        ...

    async def list_objects(
        self,
        path: str,
        headers: Mapping[str, str | Sequence[str]],
        label_selector: str | None = None,
        field_selector: str | None = None,
        *,
        metadata_only: bool = False,
    ) -> list[dict[str, Any]]:
        """LIST as the caller."""
        ...

    @property
    def has_own_credentials(self) -> bool:
        """Whether lookups can be made with the proxy's own credentials."""
        ...

    async def self_subject_review(self, headers: Mapping[str, str | Sequence[str]]) -> UserInfo:
        """Who these headers act as."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class Ownership(Protocol):
    """The ownership index (``cluster.ownership.OwnershipIndex``): who owns what."""

    def follow(self, engine: Engine) -> None:
        """Watch the namespaces of ``engine``'s DELETE Locks."""
        ...

    async def graph_when_synced(self) -> Graph:
        """The graph once synced (a short wait at most); else a 503 Refusal."""
        ...


@dataclass(frozen=True)
class Verdict:
    """What to do with a judged request.

    ``status`` set: answer with it instead of forwarding (``log_message``, when set, is what
    the log says instead of the Status message, which may quote the body). Otherwise forward,
    with ``body`` (decoded: the caller re-applies its Content-Encoding) and ``content_type``
    when they are set.
    """

    status: Status | None = None
    log_message: str | None = None
    body: bytes | None = None
    content_type: str | None = None

    @property
    def allowed(self) -> bool:
        """Whether the request is forwarded."""
        return self.status is None


# The request body, or how to read it (decoding its Content-Encoding; may raise Refusal):
# read only when the judgement needs it.
Body = bytes | Callable[[], bytes]


def is_crd_delete(info: RequestInfo) -> bool:
    """A DELETE (or deletecollection) of CustomResourceDefinitions."""
    return (
        info.group == "apiextensions.k8s.io"
        and info.resource == "customresourcedefinitions"
        and info.verb in ("delete", "deletecollection")
        and not info.subresource
    )


def has_delete_locks(engine: Engine) -> bool:
    """Whether any lock (an invalid one included) may refuse a DELETE."""
    # An invalid Lock refuses every operation in its namespace, DELETE included.
    return bool(engine.invalid) or any(Operation.DELETE in lk.operations for lk in engine.locks)


def needs_judgement(info: RequestInfo, engine: Engine, content_type: str) -> bool:
    """Whether a loaded Lock could affect this mutation (else it is forwarded untouched).

    This is the fast path's only question: it costs a few dictionary look-ups and never
    reads the body. Besides the request's own operation, some writes are judged for what
    they can also do (the judgement then says which applies).
    """
    op = info.operation
    if op is None:
        return False
    ns = info.namespace
    if engine.covers(ns, op) or (is_crd_delete(info) and has_delete_locks(engine)):
        return True
    # What the garbage collector and controllers do next (core.consequences).
    if needs_consequence_judgement(info, engine):
        return True
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


@dataclass(frozen=True)
class _Request:
    content_type: str
    read: Callable[[], bytes]

    def body(self) -> bytes:
        return self.read()


@dataclass
class _Plan:
    """What a covered mutation is judged on, and the object version it was judged against."""

    inputs: list[AdmissionInput]
    name: str
    guard: tuple[str, str] | None = None  # (resourceVersion, uid) of the checked object
    absent: bool = False  # the object did not exist when checked
    # Inputs from index ``own`` on are about consequences (an adopted owner, dependents the
    # garbage collector deletes); ``note`` explains them when one of those is denied.
    own: int | None = None
    note: str = ""
    # Inputs about objects the caller may not see: a denial names the lock, not the object.
    hidden: frozenset[int] = frozenset()
    # The objects around the request, for what the cluster does next (core.consequences):
    # the stored object (or the listed ones of a deletecollection), the object as written
    # (the parent as scaled for a scale subresource), the DeleteOptions.
    old: dict[str, Any] | None = None
    new: dict[str, Any] | None = None
    targets: list[dict[str, Any]] | None = None
    options: dict[str, Any] | None = None
    # Per-input notes (index -> why), for inputs the consequences added.
    notes: dict[int, str] | None = None


class Judge:
    """Judges covered mutations against ``engine``, looking objects up with ``lookups``."""

    def __init__(
        self,
        lookups: Lookups,
        identity: IdentityResolver,
        engine: Engine,
        ownership: Ownership | None = None,
    ) -> None:
        self.lookups = lookups
        self.identity = identity
        self.engine = engine
        # Without an index (lookups that cannot watch), cascades are searched among
        # DEPENDENT_KINDS as before; every front that talks to an API server passes one.
        self.ownership = ownership
        if ownership is not None:
            ownership.follow(engine)

    async def judge(
        self,
        info: RequestInfo,
        headers: Mapping[str, Sequence[str]],
        body: Body,
        content_type: str,
    ) -> Verdict:
        """The verdict on a covered mutation (``info.is_mutation``).

        ``headers`` are the caller's auth headers (lookups are made as the caller). Errors
        other than a refusal propagate: the caller must fail closed on them.
        """
        read = body if callable(body) else (lambda: body)
        try:
            rewrite = await self._check(_Request(content_type, read), info, headers)
        except Refusal as r:
            return Verdict(status=r.status, log_message=r.log_message)
        if rewrite is None:
            return Verdict()
        return Verdict(body=rewrite[0], content_type=rewrite[1])

    async def _check(
        self, req: _Request, info: RequestInfo, headers: Mapping[str, Sequence[str]]
    ) -> tuple[bytes, str | None] | None:
        if (
            info.group == ""
            and info.resource == "namespaces"
            and info.verb == "delete"
            and not info.subresource
        ):
            await self._check_namespace_delete(info, headers)
        if is_crd_delete(info):
            await self._check_crd_delete(info, headers)
        plan = await self._plan(req, info, headers)
        if plan is None:
            return None
        decisions = await self._decide(plan.inputs, headers)
        denied = [d for d in decisions if not d.allowed]
        if denied:
            raise Refusal(self._denial(info, plan, decisions))
        if await self._add_consequences(info, plan, headers):
            decisions = await self._decide(plan.inputs, headers)
            if any(not d.allowed for d in decisions):
                raise Refusal(self._denial(info, plan, decisions))
        if plan.guard is not None:
            return add_precondition(req.body(), req.content_type, info, *plan.guard)
        if plan.absent:
            return add_precondition(req.body(), req.content_type, info, "", ABSENT_UID, absent=True)
        return None

    def _denial(self, info: RequestInfo, plan: _Plan, decisions: list[Decision]) -> Status:
        if info.verb != "deletecollection":
            index, first = next((i, d) for i, d in enumerate(decisions) if not d.allowed)
            note = ""
            if plan.note and plan.own is not None and index >= plan.own:
                note = f"; {plan.note}"
            if plan.notes and index in plan.notes:
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
        for inp, decision in zip(plan.inputs, decisions, strict=True):
            if not decision.allowed:
                names.append(inp.name)
                texts.extend(d.text for d in decision.denials)
        message = DENIAL_PREFIX + ", and a lock: ".join(texts[:MAX_NAMED_OBJECTS])
        listed = ", ".join(names[:MAX_NAMED_OBJECTS])
        if len(names) > MAX_NAMED_OBJECTS:
            listed += f" and {len(names) - MAX_NAMED_OBJECTS} more"
        message += f"; deletecollection would delete locked objects: {listed}"
        return forbidden(info, "", message)

    async def _decide(
        self,
        inputs: list[AdmissionInput],
        headers: Mapping[str, Sequence[str]],
    ) -> list[Decision]:
        engine = self.engine
        decisions = [engine.decide(inp) for inp in inputs]
        caller_matters = any(
            d.exempted or any(den.lock.has_exclusive for den in d.denials) for d in decisions
        )
        if not caller_matters:
            return decisions
        user = await self._resolve(headers)
        return [engine.decide(replace(inp, user=user)) for inp in inputs]

    async def _resolve(self, headers: Mapping[str, Sequence[str]]) -> UserInfo:
        try:
            return await self.identity.resolve(headers)
        except UpstreamStatusError as e:
            raise Refusal(self._lookup_failure("who is calling (SelfSubjectReview)", e)) from e
        except UpstreamError as e:
            raise Refusal(failure(503, f"klockproxy: cannot check locks: {e}")) from e

    async def _check_crd_delete(
        self, info: RequestInfo, headers: Mapping[str, Sequence[str]]
    ) -> None:
        """Deleting a CustomResourceDefinition deletes every object of that kind, behind the
        proxy's back: refuse when a lock would refuse deleting one of them."""
        if info.verb == "deletecollection":
            raise Refusal(
                failure(
                    403,
                    "klockproxy: deleting CustomResourceDefinitions by collection is refused "
                    "while DELETE locks exist; delete them one by one",
                )
            )
        crd = await self._get(info, headers)
        if crd is None:
            return
        raw_spec = crd.get("spec")
        spec: dict[str, Any] = raw_spec if isinstance(raw_spec, dict) else {}
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
        try:
            items = await self.lookups.list_objects(path, headers)
        except UpstreamStatusError as e:
            raise Refusal(self._lookup_failure(f"what deleting {info.name} deletes", e)) from e
        except UpstreamError as e:
            raise Refusal(failure(503, f"klockproxy: cannot check locks: {e}")) from e
        ref = ResourceRef(group, version, plural)
        inputs = [
            AdmissionInput(
                operation=Operation.DELETE,
                namespace=str(object_meta(item).get("namespace") or ""),
                resource=ref,
                name=str(object_meta(item).get("name") or ""),
                user=_NOBODY,
                old_labels=labels_of(item),
            )
            for item in items
        ]
        decisions = await self._decide(inputs, headers)
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
        raise Refusal(forbidden(info, info.name, message))

    async def _check_namespace_delete(
        self, info: RequestInfo, headers: Mapping[str, Sequence[str]]
    ) -> None:
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
        user = await self._resolve(headers) if any(lk.has_exclusive for lk in locks) else _NOBODY
        applying = [lk for lk in locks if not is_exempt(lk, user)]
        if not applying:
            return
        texts = [
            f"{lk.matcher_text()} (Lock {lk.key} forbids DELETE in namespace {info.name}, and "
            f"deleting the namespace deletes every object in it; {who_may(lk)})"
            for lk in applying
        ]
        raise Refusal(forbidden(info, info.name, DENIAL_PREFIX + ", and a lock: ".join(texts)))

    def _lookup_failure(self, what: str, e: UpstreamStatusError) -> Status:
        if e.code in (401, 403):
            return failure(
                e.code,
                f"klockproxy: a lock covers this request and the API server refused to tell "
                f"{what}: {e.message}",
            )
        return failure(503, f"klockproxy: cannot check locks: reading {what} failed: {e}")

    async def _get(
        self, info: RequestInfo, headers: Mapping[str, Sequence[str]]
    ) -> dict[str, Any] | None:
        path = object_path(info)
        try:
            return await self.lookups.get_object(path, headers)
        except UpstreamStatusError as e:
            raise Refusal(self._lookup_failure(f"the current object {path}", e)) from e
        except UpstreamError as e:
            raise Refusal(failure(503, f"klockproxy: cannot check locks: {e}")) from e

    async def _plan(
        self,
        req: _Request,
        info: RequestInfo,
        headers: Mapping[str, Sequence[str]],
    ) -> _Plan | None:
        """The admission inputs of a covered mutation; None when the API server will 404."""
        op = info.operation
        if op is None:
            # needs_judgement() only lets mutations through; never forward one unjudged.
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
                user=_NOBODY,
                old_labels=old,
                new_labels=new,
                dry_run=info.dry_run,
                kind=kind,
            )

        verb = info.verb
        if verb == "deletecollection":
            return await self._plan_deletecollection(info, headers, inp)
        if verb == "create" and not info.subresource:
            obj = _decode(req)
            meta = object_meta(obj)
            name = str(meta.get("name") or meta.get("generateName") or "")
            return _Plan([inp(op, name, None, labels_of(obj), kind_of(obj))], name, new=obj)
        if verb == "patch" and info.subresource in _LABEL_SUBRESOURCES:
            return await self._plan_patch(req, info, headers, inp)

        current = await self._get(info, headers)
        if current is None:
            # The API server answers 404 itself, unless an object of that name appears before
            # the write lands: guard deletes (and evictions) against that. A PUT of a missing
            # object may create it: judged as a creation.
            if verb == "delete" or info.subresource == "eviction":
                return _Plan([], info.name, absent=True)
            if (
                verb == "update"
                and not info.subresource
                and self.engine.covers(info.namespace, Operation.CREATE)
            ):
                obj = _decode(req)
                return _Plan(
                    [inp(Operation.CREATE, info.name, None, labels_of(obj), kind_of(obj))],
                    info.name,
                    new=obj,
                )
            return None
        kind = kind_of(current)
        old = labels_of(current)
        guard = _version(current)
        if verb == "update" and info.subresource in _LABEL_SUBRESOURCES:
            obj = _decode(req)
            new = labels_of(obj)
            inputs = [inp(op, info.name, old, new, kind)]
            owners = owner_inputs(current, obj, inp, info.name, kind)
            return _Plan(
                inputs + owners,
                info.name,
                guard,
                own=len(inputs),
                note=OWNER_NOTE,
                old=current,
                new=obj,
            )
        if op is Operation.UPDATE:
            # scale, ephemeralcontainers (update or patch): the parent's labels decide; these
            # subresources cannot change labels (a Scale object has none).
            after = current
            if info.subresource == "scale":
                after = scaled(current, _scale_replicas(req, info, current))
            plan = _Plan([inp(op, info.name, old, old, kind)], info.name, guard)
            plan.old, plan.new = current, after
            return plan
        if op is Operation.CREATE:
            # A create on another subresource (serviceaccounts/token, pods/binding).
            return _Plan([inp(op, info.name, None, old, kind)], info.name, old=current)
        if op is Operation.CONNECT:
            return _Plan([inp(op, info.name, old, None, kind)], info.name, old=current)
        # DELETE, and pods/eviction (a DELETE of the pod).
        inputs = [inp(op, info.name, old, None, kind)]
        # A namespace is judged as a whole (_check_namespace_delete).
        whole = info.group == "" and info.resource == "namespaces"
        hidden: set[int] = set()
        legacy = self.ownership is None  # else the index judges the cascade (_add_consequences)
        if legacy and verb == "delete" and not whole and not _orphans(req, info):
            for dependent, unseen in await self._dependent_inputs(info, current, headers):
                if unseen:
                    hidden.add(len(inputs))
                inputs.append(dependent)
        plan = _Plan(
            inputs, info.name, guard, own=1, note=DEPENDENTS_NOTE, hidden=frozenset(hidden)
        )
        plan.old, plan.targets = current, [current]
        plan.options = _delete_options(req, info) if verb == "delete" else {}
        return plan

    async def _add_consequences(
        self, info: RequestInfo, plan: _Plan, headers: Mapping[str, Sequence[str]]
    ) -> bool:
        """Add to ``plan`` what the cluster does next because of the request (the garbage
        collector, the namespace and CRD machinery, controllers: core.consequences), and
        refuse handing out a Lock's exempt identity. True when inputs were added."""
        label, locks = identity_locks(self.engine.locks, info, plan.old, plan.new)
        if locks:
            await self._check_identity(info, plan, label, locks, headers)
        engine = self.engine
        graph = Graph()
        ns_scope = not info.namespace or engine.covers(info.namespace, Operation.DELETE)
        if self.ownership is not None and has_delete_locks(engine) and ns_scope:
            graph = await self.ownership.graph_when_synced()
        implied: list[Implied] = []
        deleting = info.verb in ("delete", "deletecollection") or info.subresource == "eviction"
        if deleting and plan.targets:
            if self.ownership is not None:
                implied += deletion_consequences(graph, info, plan.targets, plan.options)
        elif plan.new is not None:
            implied += write_consequences(graph, info, plan.old, plan.new)
        elif info.subresource == "ephemeralcontainers" and plan.old is not None:
            implied += write_consequences(graph, info, plan.old, plan.old)
        if not implied:
            return False
        notes = dict(plan.notes or {})
        for item in implied:
            notes[len(plan.inputs)] = item.note
            plan.inputs.append(item.input)
        plan.notes = notes
        return True

    async def _check_identity(
        self,
        info: RequestInfo,
        plan: _Plan,
        label: str,
        locks: list[Lock],
        headers: Mapping[str, Sequence[str]],
    ) -> None:
        """Refuse handing a Lock's exempt service account to a caller it does not exempt."""
        user = await self._resolve(headers)
        applying = [lk for lk in locks if not is_exempt(lk, user)]
        if not applying:
            return
        texts = [
            f"{lk.matcher_text()} (Lock {lk.key} exempts that service account, and {label} "
            f"lets the caller act as it; {who_may(lk)})"
            for lk in applying
        ]
        raise Refusal(forbidden(info, plan.name, DENIAL_PREFIX + ", and a lock: ".join(texts)))

    async def _dependent_inputs(
        self, info: RequestInfo, current: Mapping[str, Any], headers: Mapping[str, Sequence[str]]
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
            prefix = f"/apis/{ref.group}/{ref.version}" if ref.group else f"/api/{ref.version}"
            path = f"{prefix}/namespaces/{quote(info.namespace, safe='')}/{ref.resource}"
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
                    old_labels=labels_of(item),
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
        headers: Mapping[str, Sequence[str]],
    ) -> tuple[list[dict[str, Any]], bool]:
        """The items, and whether only the proxy's own credentials could list them (then the
        caller must not learn their names)."""
        attempts: list[Mapping[str, Sequence[str]]] = [headers]
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
            except UpstreamError as e:
                raise Refusal(failure(503, f"klockproxy: cannot check locks: {e}")) from e
        return [], False

    async def _plan_patch(
        self,
        req: _Request,
        info: RequestInfo,
        headers: Mapping[str, Sequence[str]],
        inp: InputMaker,
    ) -> _Plan | None:
        ctype = req.content_type
        is_apply = media_type(ctype) == APPLY_PATCH
        body = req.body()
        current = await self._get(info, headers)
        if current is None:
            if info.subresource:
                return None
            if not is_apply:
                # The API server answers 404, or 409 thanks to the guard if an object of that
                # name was created meanwhile.
                return _Plan([], info.name, absent=True)
            applied = _apply(
                {},
                body,
                ctype,
                (info.group, ""),  # the kind comes from the configuration
            )
            name = str(object_meta(applied).get("name") or info.name)
            return _Plan(
                [inp(Operation.CREATE, name, None, labels_of(applied), kind_of(applied))],
                name,
                new=applied,
            )
        kind = kind_of(current)
        old = labels_of(current)
        patched = _apply(current, body, ctype, kind_key_of(current))
        inputs = [inp(Operation.UPDATE, info.name, old, labels_of(patched), kind)]
        if is_apply:
            # The merge keeps labels the applier owned and dropped; the API server removes
            # them. Judge also the result with those removed (from managedFields), and, in
            # case managedFields is missing or incomplete, the configuration's labels alone:
            # a removal must not slip past a "^value" matcher.
            applied = _apply({}, body, ctype, kind_key_of(current))
            manager = (info.query.get("fieldManager") or ("",))[0]
            ssa = ssa_result_labels(current, applied, manager, info.subresource)
            inputs.append(inp(Operation.UPDATE, info.name, old, ssa, kind))
            inputs.append(inp(Operation.UPDATE, info.name, old, labels_of(applied), kind))
        owners = owner_inputs(current, patched, inp, info.name, kind)
        return _Plan(
            inputs + owners,
            info.name,
            _version(current),
            own=len(inputs),
            note=OWNER_NOTE,
            old=current,
            new=patched,
        )

    async def _plan_deletecollection(
        self,
        info: RequestInfo,
        headers: Mapping[str, Sequence[str]],
        inp: InputMaker,
    ) -> _Plan:
        engine = self.engine
        if any(bad.namespace == info.namespace for bad in engine.invalid):
            # An invalid Lock refuses every mutation of its namespace; an empty list would
            # leave nothing to judge while objects created meanwhile would still be deleted.
            decision = engine.decide(inp(Operation.DELETE, "", {}, None, ""))
            if not decision.allowed:
                raise Refusal(forbidden(info, "", decision.message))
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
        try:
            items = await self.lookups.list_objects(
                path, headers, label_selector or None, field_selector or None
            )
        except UpstreamStatusError as e:
            raise Refusal(self._lookup_failure(f"what {path} would delete", e)) from e
        except UpstreamError as e:
            raise Refusal(failure(503, f"klockproxy: cannot check locks: {e}")) from e
        inputs = []
        for item in items:
            name = str(object_meta(item).get("name", ""))
            inputs.append(inp(Operation.DELETE, name, labels_of(item), None, ""))
        return _Plan(inputs, "", targets=items, options=_delete_options_of_query(info))


# ----------------------------------------------------------------------------------------
# Bodies


def _decode(req: _Request) -> dict[str, Any]:
    try:
        return decode_body(req.body(), req.content_type)
    except DecodeError as e:
        raise body_refusal(
            400, f"klockproxy: a lock covers this request and its body cannot be read: {e}"
        ) from e


def _apply(
    obj: Mapping[str, Any], body: bytes, ctype: str, kind_key: tuple[str, str]
) -> dict[str, Any]:
    try:
        return apply_patch(obj, body, ctype, kind_key=kind_key)
    except UnsupportedPatchError as e:
        raise body_refusal(415, f"klockproxy: {e}") from e
    except PatchError as e:
        raise body_refusal(
            400, f"klockproxy: a lock covers this request and its patch fails: {e}"
        ) from e


def _orphans(req: _Request, info: RequestInfo) -> bool:
    """Whether this DELETE orphans the dependents (else the garbage collector deletes them).

    The body's DeleteOptions win over the query, as on the API server; anything unreadable
    counts as a cascade.
    """
    body = req.body()
    if not body.strip():
        policy = (info.query.get("propagationPolicy") or ("",))[0]
        orphan = (info.query.get("orphanDependents") or ("",))[0]
        return policy == "Orphan" or orphan == "true"
    ctype = req.content_type
    try:
        if media_type(ctype) == PROTOBUF_CONTENT_TYPE:
            raw = unwrap_unknown(body).raw
            orphan_flag = any(n == 3 and v == 1 for n, _, v in decode_fields(raw))
            return last_string(raw, 4) == "Orphan" or orphan_flag
        doc = load_document(body, ctype, "DeleteOptions body")
    except (Refusal, DecodeError):
        return False
    if not isinstance(doc, dict):
        return False
    return doc.get("propagationPolicy") == "Orphan" or doc.get("orphanDependents") is True


def _version(obj: Mapping[str, Any]) -> tuple[str, str] | None:
    meta = object_meta(obj)
    rv = meta.get("resourceVersion")
    if not isinstance(rv, str) or not rv:
        return None
    uid = meta.get("uid")
    return rv, uid if isinstance(uid, str) else ""


def _delete_options_of_query(info: RequestInfo) -> dict[str, Any]:
    """The propagation options a DELETE's query carries (the body, when any, wins)."""
    out: dict[str, Any] = {}
    policy = (info.query.get("propagationPolicy") or ("",))[0]
    orphan = (info.query.get("orphanDependents") or ("",))[0]
    if policy:
        out["propagationPolicy"] = policy
    if orphan:
        out["orphanDependents"] = orphan == "true"
    return out


def _delete_options(req: _Request, info: RequestInfo) -> dict[str, Any]:
    """The DeleteOptions' propagation fields, as the API server reads them: the body's win
    over the query. An unreadable body counts as a cascade (never an orphaning)."""
    body = req.body()
    if not body.strip():
        return _delete_options_of_query(info)
    if _orphans(req, info):
        return {"propagationPolicy": "Orphan"}
    ctype = req.content_type
    try:
        if media_type(ctype) == PROTOBUF_CONTENT_TYPE:
            policy = last_string(unwrap_unknown(body).raw, 4)
            return {"propagationPolicy": policy} if policy else {}
        doc = load_document(body, ctype, "DeleteOptions body")
    except (Refusal, DecodeError):
        return {"propagationPolicy": "Background"}
    if not isinstance(doc, dict):
        return {"propagationPolicy": "Background"}
    return {k: doc[k] for k in ("propagationPolicy", "orphanDependents") if k in doc}


def _scale_replicas(req: _Request, info: RequestInfo, parent: Mapping[str, Any]) -> Any:
    """``spec.replicas`` a write to the scale subresource asks for (PUT body or a patch of
    the Scale the API server would show)."""
    if info.verb == "update":
        body = _decode(req)
    else:
        spec = parent.get("spec")
        view = {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {"name": info.name, "namespace": info.namespace},
            "spec": {"replicas": spec.get("replicas", 1) if isinstance(spec, dict) else 1},
        }
        body = _apply(view, req.body(), req.content_type, ("autoscaling", "Scale"))
    spec = body.get("spec")
    return spec.get("replicas") if isinstance(spec, dict) else None
