"""Gathering for the proxy: which objects a request is about, then the decision and the guard.

``Judge(lookups, identity, engine).judge(info, headers, body, content_type) -> Verdict``:
the old object is read from the API server AS THE CALLER (``headers``: Authorization and
Impersonate-*; the parent for subresources; for a patch, often the version the ownership
index holds instead, see ``_gather_patch``), the new one from the body (or the API server's
dry run of the patch), the caller is resolved lazily through ``identity``, and ``decide``
(deciding.py) gives the verdict. An allowed write whose decision depended on the current
object gets its body rewritten to be conditional on the checked ``resourceVersion``
(core.guards). Knows nothing about mitmproxy: the addon hands it the request and acts on
the verdict.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from klockproxy.cluster.identity import IdentityResolver
from klockproxy.cluster.upstream import UpstreamStatusError
from klockproxy.core.apply import ssa_result_labels
from klockproxy.core.codec import load_json, media_type
from klockproxy.core.consequences import judged_on_metadata
from klockproxy.core.engine import Engine
from klockproxy.core.errors import DecodeError, KlockProxyError, Refusal, UpstreamError
from klockproxy.core.guards import (
    ABSENT_UID,
    add_precondition,
    body_refusal,
    load_document,
)
from klockproxy.core.metadata import decode_body, object_meta
from klockproxy.core.ownership import Node, metadata_object
from klockproxy.core.patches import (
    APPLY_PATCH,
    PATCH_CONTENT_TYPES,
    apply_patch,
    kind_key_of,
    labels_after_patch,
    leaves_metadata_but_annotations,
    patches_metadata_alone,
)
from klockproxy.core.paths import collection_path, object_path
from klockproxy.core.protobuf import (
    PROTOBUF_CONTENT_TYPE,
    decode_delete_options,
    fully_decoded,
)
from klockproxy.core.requests import RequestInfo
from klockproxy.core.types import UserInfo
from klockproxy.judge.deciding import (
    LABEL_SUBRESOURCES,
    Caller,
    Decider,
    Lookups,
    Ownership,
    Subject,
    Verdict,
    refused,
    upstream_labels,
)

# The request body, or how to read it (decoding its Content-Encoding; may raise Refusal):
# read only when the judgement needs it.
Body = bytes | Callable[[], bytes]


@dataclass(frozen=True)
class _Request:
    content_type: str
    read: Callable[[], bytes]
    fresh: bool = False  # Judge.judge's ``fresh``

    def body(self) -> bytes:
        return self.read()


@dataclass(frozen=True)
class _Guard:
    """The object version the write is made conditional on (core.guards)."""

    rv: str
    uid: str
    absent: bool = False  # the object did not exist when checked


_ABSENT = _Guard("", ABSENT_UID, absent=True)


@dataclass(frozen=True)
class _Gathered:
    """What the proxy found: the subject to decide on, the version the write is made
    conditional on, the conditional body when it was already built (for a dry run), and the
    request body as decoded for the judgement (the guard reuses it instead of parsing again).
    """

    subject: Subject
    guard: _Guard | None = None
    guarded: tuple[bytes, str | None] | None = None
    document: Any = None
    on_index: bool = False  # the guard's version is the index's alone (Verdict.on_index)


# What the API server answers when it cannot do a dry run: an admission webhook without
# dry-run support in the chain ("admission webhook \"x\" does not support dry run"), or an
# aggregated API server without it.
_DRY_RUN_UNSUPPORTED = re.compile(
    r"does not support dry ?run|dry ?run (alpha )?feature is disabled|dry ?run is not supported",
    re.IGNORECASE,
)


def dry_run_unsupported(e: UpstreamStatusError) -> bool:
    """Whether the API server refused a dry run because it cannot do one (not the write)."""
    return e.code == 400 and bool(_DRY_RUN_UNSUPPORTED.search(e.message))


def write_path(info: RequestInfo) -> str:
    """The URL path of the write itself (the subresource included)."""
    path = object_path(info)
    return f"{path}/{quote(info.subresource, safe='')}" if info.subresource else path


def query_pairs(info: RequestInfo) -> list[tuple[str, str]]:
    """The request's query parameters, in order."""
    return [(k, v) for k, values in info.query.items() for v in values]


class Judge(Decider):
    """The proxy's judge: gathers the objects of a covered mutation, decides, guards."""

    def __init__(
        self,
        lookups: Lookups,
        identity: IdentityResolver | None,
        engine: Engine,
        ownership: Ownership | None = None,
    ) -> None:
        super().__init__(lookups, engine, ownership)
        self.identity = identity

    async def judge(
        self,
        info: RequestInfo,
        headers: Mapping[str, Sequence[str]],
        body: Body,
        content_type: str,
        *,
        fresh: bool = False,
    ) -> Verdict:
        """The verdict on a covered mutation (``info.is_mutation``).

        ``headers`` are the caller's auth headers (lookups are made as the caller). Errors
        other than a refusal propagate: the caller must fail closed on them. ``fresh``: ask
        the API server even where the ownership index could answer alone (a write allowed
        ``on_index`` was answered 409).
        """
        read = body if callable(body) else (lambda: body)
        req = _Request(content_type, read, fresh)
        try:
            gathered = await self._gather(req, info, headers)
        except KlockProxyError as e:
            return refused(e)
        verdict = await self.decide(gathered.subject, self._caller(headers))
        if not verdict.allowed:
            return verdict
        rewrite = gathered.guarded
        guard = gathered.guard
        if rewrite is None and guard is not None:
            try:
                rewrite = add_precondition(
                    req.body(),
                    content_type,
                    info,
                    guard.rv,
                    guard.uid,
                    absent=guard.absent,
                    document=gathered.document,
                )
            except KlockProxyError as e:
                return refused(e)
        if rewrite is None:
            return verdict
        return Verdict(body=rewrite[0], content_type=rewrite[1], on_index=gathered.on_index)

    def _caller(self, headers: Mapping[str, Sequence[str]]) -> Caller:
        identity = self.identity

        async def resolve() -> UserInfo:
            if identity is None:
                raise UpstreamError("no identity resolver configured")
            return await identity.resolve(headers)

        return Caller.lazy(resolve, headers)

    async def _gather(
        self, req: _Request, info: RequestInfo, headers: Mapping[str, Sequence[str]]
    ) -> _Gathered:
        """The objects the request is about, and the version to make the write conditional on."""
        verb = info.verb
        if info.operation is None or verb == "deletecollection":
            return _Gathered(Subject(info, None, None))
        if verb == "create" and not info.subresource:
            return _Gathered(Subject(info, None, await self._new_object(req, info, headers)))
        if verb == "patch" and info.subresource in LABEL_SUBRESOURCES:
            return await self._gather_patch(req, info, headers)
        if verb == "update" and info.subresource in LABEL_SUBRESOURCES and not req.fresh:
            indexed = self._update_on_index(req, info)
            if indexed is not None:
                return indexed
        current = await self._get(info, headers)
        if current is None:
            # The API server answers 404 itself, unless an object of that name appears before
            # the write lands: guard deletes (and evictions) against that. A PUT of a missing
            # object may create it: judged as a creation.
            if verb == "delete" or info.subresource == "eviction":
                return _Gathered(Subject(info, None, None), _ABSENT)
            if verb == "update" and not info.subresource:
                return _Gathered(Subject(info, None, await self._new_object(req, info, headers)))
            return _Gathered(Subject(info, None, None))
        guard = _version(current)
        if verb == "update" and info.subresource in LABEL_SUBRESOURCES:
            new = _decode(req)
            return _Gathered(Subject(info, current, new), guard, document=new)
        if verb in ("update", "patch") and info.subresource == "scale":
            # The parent decides; the Scale asked for says what the controller does next.
            return _Gathered(Subject(info, current, _scale(req, info, current)), guard)
        if verb in ("update", "patch"):
            # ephemeralcontainers: the parent decides.
            return _Gathered(Subject(info, current, current), guard)
        if verb == "delete" or info.subresource == "eviction":
            if verb != "delete":
                return _Gathered(Subject(info, current, None), guard)
            options, document = _delete_options(req, info)
            return _Gathered(Subject(info, current, None, options), guard, document=document)
        # connect, and creates on other subresources (serviceaccounts/token, pods/binding).
        return _Gathered(Subject(info, current, None))

    async def _new_object(
        self, req: _Request, info: RequestInfo, headers: Mapping[str, Sequence[str]]
    ) -> dict[str, Any]:
        """The object a create (or a PUT that creates) would store. Read from the body, unless
        the body is protobuf of a kind the core decodes only the metadata of: then the spec
        (a pod's service account, a workload's template) is what the API server makes of it,
        asked for with the same request sent with ``dryRun=All`` as the caller."""
        if media_type(req.content_type) != PROTOBUF_CONTENT_TYPE or fully_decoded(req.body()):
            return _decode(req)
        method = "POST" if info.verb == "create" else "PUT"
        path = collection_path(info) if info.verb == "create" else write_path(info)
        try:
            new = await self.lookups.dry_run(
                method, path, query_pairs(info), headers, req.body(), req.content_type
            )
        except UpstreamStatusError as e:
            if dry_run_unsupported(e):
                raise body_refusal(
                    415,
                    f"klockproxy: a lock covers this {info.resource} and the proxy cannot read "
                    "all of its protobuf body; send JSON (kubectl does with -o json or apply)",
                ) from e
            raise Refusal(
                e.status,
                log_message=f"the API server refused the dry run of the write (HTTP {e.code})",
            ) from e
        upstream_labels(new)
        return new

    async def _gather_patch(
        self, req: _Request, info: RequestInfo, headers: Mapping[str, Sequence[str]]
    ) -> _Gathered:
        """A patch is judged on the object the API server itself computes from it: the same
        request, made conditional on the version just read, sent with ``dryRun=All`` as the
        caller; the real write then carries the same condition.

        To save a round trip the dry run is first sent unconditionally, at the same time as
        the read. A dry run is computed from the stored object and answers its
        ``resourceVersion`` unchanged, so when that equals the version read (and the uid the
        uid read) it was computed from exactly the object the guard pins, and is the answer
        the conditional dry run would give. Otherwise (a write in between, an error, an
        object without a version) the conditional dry run is sent after the read, as before.

        Where the ownership index holds the object and the judgement reads nothing of it but
        its metadata (``_stored``), the read is saved: a dry run answering the version the
        index holds was computed from that version, whose metadata the index has. A stale
        index only costs the read (the versions differ).
        """
        ctype = req.content_type
        mtype = media_type(ctype)
        if mtype not in PATCH_CONTENT_TYPES:
            # The API server answers 415 too; no need to ask it.
            raise body_refusal(
                415,
                f"klockproxy: the body of the request was in an unknown format - accepted media "
                f"types include: {', '.join(PATCH_CONTENT_TYPES)} (got {ctype!r})",
            )
        is_apply = mtype == APPLY_PATCH
        body = req.body()
        stored = self._stored(info, bare_pods=True)
        # Decoded once where the index may stand in: the guard below reuses it.
        document = (
            _patch_document(body) if stored is not None and not is_apply and not req.fresh else None
        )
        # A pod's spec is read by the rules (the service account it runs as): the index
        # stands in for a bare pod only where the patch cannot touch the spec.
        reads_spec = not judged_on_metadata(info.ref)
        if (
            stored is not None
            and document is not None
            and (not reads_spec or patches_metadata_alone(document, ctype))
        ):
            unchanged = self._unchanged(info, stored, body, ctype, document)
            if unchanged is not None:
                return unchanged
        if reads_spec:
            # Nor does the dry run's answer stand in for the read: the spec is compared.
            stored = None
        if stored is None:
            current, early = await self._get_and_dry_run(info, headers, body, ctype)
        else:
            early = await self._dry_run_patch(info, headers, body, ctype)
            # Computed from the very version the index holds: that version's metadata is all
            # the judgement reads of the object as it was, and the guard below pins it.
            # Otherwise the object is read, as without an index.
            known = _Guard(stored.version, stored.uid)
            if isinstance(early, dict) and _same_version(early, known):
                current = metadata_object(stored)
            else:
                current = await self._get(info, headers)
        if current is None:
            if info.subresource:
                return _Gathered(Subject(info, None, None))
            if not is_apply:
                # The API server answers 404, or 409 thanks to the guard if an object of that
                # name was created meanwhile.
                return _Gathered(Subject(info, None, None), _ABSENT)
            # Server-side apply creates the object; guarded like a missing object, so that an
            # object of that name created meanwhile makes it a 409 rather than an unjudged
            # update.
            guard: _Guard | None = _ABSENT
        else:
            guard = _version(current)
        guarded = (
            add_precondition(
                body, ctype, info, guard.rv, guard.uid, absent=guard.absent, document=document
            )
            if guard is not None
            else None
        )
        if current is not None and isinstance(early, dict) and _same_version(early, guard):
            new = early
        elif (
            current is not None
            and isinstance(early, UpstreamStatusError)
            and dry_run_unsupported(early)
        ):
            return self._local_patch(info, current, body, ctype, is_apply, guard, guarded)
        else:
            sent, sent_type = (guarded[0], guarded[1] or ctype) if guarded else (body, ctype)
            try:
                new = await self.lookups.dry_run(
                    "PATCH", write_path(info), query_pairs(info), headers, sent, sent_type
                )
            except UpstreamStatusError as e:
                if not dry_run_unsupported(e):
                    # What the real write would answer: the API server's own Status.
                    raise Refusal(
                        e.status,
                        log_message=(
                            f"the API server refused the dry run of the write (HTTP {e.code})"
                        ),
                    ) from e
                return self._local_patch(info, current, body, ctype, is_apply, guard, guarded)
        upstream_labels(new)
        return _Gathered(Subject(info, current, new), guard, guarded)

    def _unchanged(
        self, info: RequestInfo, stored: Node, body: bytes, ctype: str, document: Any
    ) -> _Gathered | None:
        """A patch of an object the index holds and that is judged on its metadata alone
        (annotations are not read), when the patch's format fixes what it does to that
        metadata whatever engine applies it: it leaves it as it is, annotations aside
        (``leaves_metadata_but_annotations``), or it sets and removes labels and nothing
        more (``labels_after_patch``: ``kubectl label``; on the object itself, not a
        subresource, whose strategy may keep the old labels). The object as it was is that
        version's identity, labels and owners, and as it will be the same with the patched
        labels, so nothing needs asking. The write is made conditional on that version: if
        the index lagged behind, the API server answers 409 and nothing was written on an
        unjudged version. None where that does not hold (``document``: the decoded
        ``body``)."""
        current = metadata_object(stored)
        if leaves_metadata_but_annotations(document, ctype):
            new = current
        else:
            labels = (
                None if info.subresource else labels_after_patch(document, ctype, stored.labels)
            )
            if labels is None:
                return None
            new = {**current, "metadata": {**current["metadata"], "labels": labels}}
        guard = _Guard(stored.version, stored.uid)
        guarded = add_precondition(body, ctype, info, guard.rv, guard.uid, document=document)
        return _Gathered(Subject(info, current, new), guard, guarded, document, True)

    def _update_on_index(self, req: _Request, info: RequestInfo) -> _Gathered | None:
        """An update of an object the index holds and that is judged on its metadata alone
        (``_stored``) is judged on the index's version, without a read, when the body names
        that very version (the API server stores the body over no other: a 409 otherwise,
        the caller's own conflict) or names none (the write is then made conditional on it:
        ``on_index``). None when the body names another version or uid: the object is read."""
        stored = self._stored(info)
        if stored is None:
            return None
        new = _decode(req)
        meta = object_meta(new)
        rv, uid = meta.get("resourceVersion"), meta.get("uid")
        if rv not in (None, "", stored.version) or uid not in (None, "", stored.uid):
            return None
        guard = _Guard(stored.version, stored.uid)
        subject = Subject(info, metadata_object(stored), new)
        return _Gathered(subject, guard, document=new, on_index=not rv)

    async def _get_and_dry_run(
        self,
        info: RequestInfo,
        headers: Mapping[str, Sequence[str]],
        body: bytes,
        ctype: str,
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | UpstreamStatusError]:
        """The object as the caller reads it, and the unconditional dry run of the patch sent
        at the same time (its result, or the API server's refusal of it). A failed read
        propagates, and the dry run is then abandoned."""
        dry = asyncio.ensure_future(self._dry_run_patch(info, headers, body, ctype))
        try:
            current = await self._get(info, headers)
        except BaseException:
            dry.cancel()
            # Its outcome no longer matters; retrieved so that it is not reported as lost.
            dry.add_done_callback(_forget)
            raise
        return current, await dry

    async def _dry_run_patch(
        self, info: RequestInfo, headers: Mapping[str, Sequence[str]], body: bytes, ctype: str
    ) -> dict[str, Any] | UpstreamStatusError:
        """The caller's patch sent as it is with ``dryRun=All``: its result, or the API
        server's refusal of it."""
        try:
            return await self.lookups.dry_run(
                "PATCH", write_path(info), query_pairs(info), headers, body, ctype
            )
        except UpstreamStatusError as e:
            return e

    def _stored(self, info: RequestInfo, *, bare_pods: bool = False) -> Node | None:
        """The object a patch or update names as the ownership index holds it (always with
        a version), when the judgement needs nothing more of the object as it was
        (``judged_on_metadata``: not a pod or a workload, not being deleted, no owner
        references); else None. ``bare_pods``: pods too (the caller makes sure that the
        write leaves the spec as it is)."""
        if self.ownership is None or info.subresource not in LABEL_SUBRESOURCES:
            return None
        pod = bare_pods and (info.group, info.resource) == ("", "pods")
        if not judged_on_metadata(info.ref) and not pod:
            return None
        node = self.ownership.stored(info.group, info.resource, info.namespace, info.name)
        if node is None or node.deleting or node.owners or not node.version:
            return None
        return node

    def _local_patch(
        self,
        info: RequestInfo,
        current: Mapping[str, Any] | None,
        body: bytes,
        ctype: str,
        is_apply: bool,
        guard: _Guard | None,
        guarded: tuple[bytes, str | None] | None,
    ) -> _Gathered:
        """The proxy's own patch engine, where the API server cannot do a dry run (an admission
        webhook without dry-run support in the way): exact for JSON and merge patches, for
        strategic merge patches of the kinds it has a schema for (others: 415, fail closed),
        and for server-side apply judged three ways (see below)."""
        if current is None:
            # The kind comes from the configuration.
            applied = _apply({}, body, ctype, (info.group, ""))
            return _Gathered(Subject(info, None, applied), guard, guarded)
        patched = _apply(current, body, ctype, kind_key_of(current))
        also: tuple[Mapping[str, Any], ...] = ()
        if is_apply:
            # The merge keeps labels the applier owned and dropped; the API server removes
            # them. Judge also the result with those removed (from managedFields), and, in
            # case managedFields is missing or incomplete, the configuration's labels alone:
            # a removal must not slip past a "^value" matcher.
            applied = _apply({}, body, ctype, kind_key_of(current))
            manager = (info.query.get("fieldManager") or ("",))[0]
            ssa = ssa_result_labels(current, applied, manager, info.subresource)
            also = ({"metadata": {"labels": dict(ssa)}}, applied)
        return _Gathered(Subject(info, current, patched, also_new=also), guard, guarded)

    async def _get(
        self, info: RequestInfo, headers: Mapping[str, Sequence[str]]
    ) -> dict[str, Any] | None:
        current = await self.lookups.get_object(object_path(info), headers)
        if current is not None:
            upstream_labels(current)
        return current


# ----------------------------------------------------------------------------------------
# Bodies


def _decode(req: _Request) -> dict[str, Any]:
    # DecodeError: 400 at the boundary (the API server would reject the body too).
    return decode_body(req.body(), req.content_type)


def _apply(
    obj: Mapping[str, Any], body: bytes, ctype: str, kind_key: tuple[str, str]
) -> dict[str, Any]:
    # PatchError: 400, UnsupportedPatchError: 415 at the boundary.
    return apply_patch(obj, body, ctype, kind_key=kind_key)


def _delete_options(req: _Request, info: RequestInfo) -> tuple[dict[str, Any], Any]:
    """The DeleteOptions fields deciding the cascade (``propagationPolicy``,
    ``orphanDependents``), and the JSON or YAML body as decoded (None when there is none).

    The body's DeleteOptions win over the query, as on the API server; anything unreadable
    counts as a cascade (``Background``: no options would mean the kind's default, which
    orphans for batch/v1 Jobs).
    """
    body = req.body()
    if not body.strip():
        policy = (info.query.get("propagationPolicy") or ("",))[0]
        orphan = (info.query.get("orphanDependents") or ("",))[0]
        out: dict[str, Any] = {}
        if policy:
            out["propagationPolicy"] = policy
        if orphan:
            out["orphanDependents"] = orphan == "true"
        return out, None
    ctype = req.content_type
    try:
        if media_type(ctype) == PROTOBUF_CONTENT_TYPE:
            return _cascade(decode_delete_options(body)), None
        doc = load_document(body, ctype, "DeleteOptions body")
    except (Refusal, DecodeError):
        return {"propagationPolicy": "Background"}, None
    return _cascade(doc), doc


def _cascade(doc: Any) -> dict[str, Any]:
    if not isinstance(doc, dict):
        return {"propagationPolicy": "Background"}
    return {k: doc[k] for k in ("propagationPolicy", "orphanDependents") if k in doc}


def _scale(req: _Request, info: RequestInfo, parent: Mapping[str, Any]) -> dict[str, Any]:
    """The Scale a write to the scale subresource asks for (the PUT body, or the patch
    applied to the Scale the API server shows for ``parent``)."""
    if info.verb == "update":
        return _decode(req)
    spec = parent.get("spec")
    view = {
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {"name": info.name, "namespace": info.namespace},
        "spec": {"replicas": spec.get("replicas", 1) if isinstance(spec, dict) else 1},
    }
    return _apply(view, req.body(), req.content_type, ("autoscaling", "Scale"))


def _forget(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _same_version(result: Mapping[str, Any], guard: _Guard | None) -> bool:
    """Whether a dry run's result was computed from the version the guard pins (an object
    without a version pins nothing: the read and the dry run are then simply both taken)."""
    if guard is None:
        return True
    meta = object_meta(result)
    return meta.get("resourceVersion") == guard.rv and meta.get("uid", "") == guard.uid


def _patch_document(body: bytes) -> Any:
    """A JSON patch body decoded, or None where it does not decode (the API server then says
    what is wrong with it)."""
    try:
        return load_json(body, "patch")
    except DecodeError:
        return None


def _version(obj: Mapping[str, Any]) -> _Guard | None:
    meta = object_meta(obj)
    rv = meta.get("resourceVersion")
    if not isinstance(rv, str) or not rv:
        return None
    uid = meta.get("uid")
    return _Guard(rv, uid if isinstance(uid, str) else "")
