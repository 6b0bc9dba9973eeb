"""Gathering for the proxy: which objects a request is about, then the decision and the guard.

``Judge(lookups, identity, engine).judge(info, headers, body, content_type) -> Verdict``:
the old object is read from the API server AS THE CALLER (``headers``: Authorization and
Impersonate-*; the parent for subresources), the new one from the body (or by applying the
patch), the caller is resolved lazily through ``identity``, and ``decide`` (deciding.py)
gives the verdict. An allowed write whose decision depended on the current object gets its
body rewritten to be conditional on the checked ``resourceVersion`` (core.guards). Knows
nothing about mitmproxy: the addon hands it the request and acts on the verdict.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from klockproxy.cluster.identity import IdentityResolver
from klockproxy.cluster.upstream import UpstreamStatusError
from klockproxy.core.apply import ssa_result_labels
from klockproxy.core.codec import media_type
from klockproxy.core.engine import Engine
from klockproxy.core.errors import DecodeError, PatchError, Refusal, UpstreamError
from klockproxy.core.guards import (
    ABSENT_UID,
    add_precondition,
    body_refusal,
    last_string,
    load_document,
)
from klockproxy.core.metadata import decode_body, object_meta
from klockproxy.core.patches import APPLY_PATCH, UnsupportedPatchError, apply_patch, kind_key_of
from klockproxy.core.paths import object_path
from klockproxy.core.protobuf import PROTOBUF_CONTENT_TYPE, decode_fields, unwrap_unknown
from klockproxy.core.requests import RequestInfo
from klockproxy.core.status import failure
from klockproxy.core.types import UserInfo
from klockproxy.judge.deciding import (
    LABEL_SUBRESOURCES,
    Caller,
    Decider,
    Lookups,
    Subject,
    Verdict,
    lookup_failure,
)

# The request body, or how to read it (decoding its Content-Encoding; may raise Refusal):
# read only when the judgement needs it.
Body = bytes | Callable[[], bytes]


@dataclass(frozen=True)
class _Request:
    content_type: str
    read: Callable[[], bytes]

    def body(self) -> bytes:
        return self.read()


@dataclass(frozen=True)
class _Guard:
    """The object version the write is made conditional on (core.guards)."""

    rv: str
    uid: str
    absent: bool = False  # the object did not exist when checked


class Judge(Decider):
    """The proxy's judge: gathers the objects of a covered mutation, decides, guards."""

    def __init__(self, lookups: Lookups, identity: IdentityResolver | None, engine: Engine) -> None:
        super().__init__(lookups, engine)
        self.identity = identity

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
        req = _Request(content_type, read)
        try:
            subject, guard = await self._gather(req, info, headers)
        except Refusal as r:
            return Verdict(status=r.status, log_message=r.log_message)
        verdict = await self.decide(subject, self._caller(headers))
        if not verdict.allowed or guard is None:
            return verdict
        try:
            rewrite = add_precondition(
                req.body(), content_type, info, guard.rv, guard.uid, absent=guard.absent
            )
        except Refusal as r:
            return Verdict(status=r.status, log_message=r.log_message)
        if rewrite is None:
            return verdict
        return Verdict(body=rewrite[0], content_type=rewrite[1])

    def _caller(self, headers: Mapping[str, Sequence[str]]) -> Caller:
        identity = self.identity

        async def resolve() -> UserInfo:
            if identity is None:
                raise UpstreamError("no identity resolver configured")
            return await identity.resolve(headers)

        return Caller.lazy(resolve, headers)

    async def _gather(
        self, req: _Request, info: RequestInfo, headers: Mapping[str, Sequence[str]]
    ) -> tuple[Subject, _Guard | None]:
        """The objects the request is about, and the version to make the write conditional on."""
        verb = info.verb
        if info.operation is None or verb == "deletecollection":
            return Subject(info, None, None), None
        if verb == "create" and not info.subresource:
            return Subject(info, None, _decode(req)), None
        if verb == "patch" and info.subresource in LABEL_SUBRESOURCES:
            return await self._gather_patch(req, info, headers)
        current = await self._get(info, headers)
        if current is None:
            # The API server answers 404 itself, unless an object of that name appears before
            # the write lands: guard deletes (and evictions) against that. A PUT of a missing
            # object may create it: judged as a creation.
            if verb == "delete" or info.subresource == "eviction":
                return Subject(info, None, None), _Guard("", ABSENT_UID, absent=True)
            if verb == "update" and not info.subresource:
                return Subject(info, None, _decode(req)), None
            return Subject(info, None, None), None
        guard = _version(current)
        if verb == "update" and info.subresource in LABEL_SUBRESOURCES:
            return Subject(info, current, _decode(req)), guard
        if verb in ("update", "patch"):
            # scale, ephemeralcontainers: the parent decides.
            return Subject(info, current, current), guard
        if verb == "delete" or info.subresource == "eviction":
            options = _delete_options(req, info) if verb == "delete" else None
            return Subject(info, current, None, options), guard
        # connect, and creates on other subresources (serviceaccounts/token, pods/binding).
        return Subject(info, current, None), None

    async def _gather_patch(
        self, req: _Request, info: RequestInfo, headers: Mapping[str, Sequence[str]]
    ) -> tuple[Subject, _Guard | None]:
        ctype = req.content_type
        is_apply = media_type(ctype) == APPLY_PATCH
        body = req.body()
        current = await self._get(info, headers)
        if current is None:
            if info.subresource:
                return Subject(info, None, None), None
            if not is_apply:
                # The API server answers 404, or 409 thanks to the guard if an object of that
                # name was created meanwhile.
                return Subject(info, None, None), _Guard("", ABSENT_UID, absent=True)
            # The kind comes from the configuration.
            applied = _apply({}, body, ctype, (info.group, ""))
            return Subject(info, None, applied), None
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
        return Subject(info, current, patched, also_new=also), _version(current)

    async def _get(
        self, info: RequestInfo, headers: Mapping[str, Sequence[str]]
    ) -> dict[str, Any] | None:
        path = object_path(info)
        try:
            return await self.lookups.get_object(path, headers)
        except UpstreamStatusError as e:
            raise Refusal(lookup_failure(f"the current object {path}", e)) from e
        except UpstreamError as e:
            raise Refusal(failure(503, f"klockproxy: cannot check locks: {e}")) from e


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


def _delete_options(req: _Request, info: RequestInfo) -> dict[str, Any]:
    """The DeleteOptions fields deciding the cascade (``propagationPolicy``,
    ``orphanDependents``).

    The body's DeleteOptions win over the query, as on the API server; anything unreadable
    counts as a cascade (no options).
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
        return out
    ctype = req.content_type
    try:
        if media_type(ctype) == PROTOBUF_CONTENT_TYPE:
            raw = unwrap_unknown(body).raw
            orphan_flag = any(n == 3 and v == 1 for n, _, v in decode_fields(raw))
            return {"propagationPolicy": last_string(raw, 4), "orphanDependents": orphan_flag}
        doc = load_document(body, ctype, "DeleteOptions body")
    except (Refusal, DecodeError):
        return {}
    if not isinstance(doc, dict):
        return {}
    return {k: doc[k] for k in ("propagationPolicy", "orphanDependents") if k in doc}


def _version(obj: Mapping[str, Any]) -> _Guard | None:
    meta = object_meta(obj)
    rv = meta.get("resourceVersion")
    if not isinstance(rv, str) or not rv:
        return None
    uid = meta.get("uid")
    return _Guard(rv, uid if isinstance(uid, str) else "")
