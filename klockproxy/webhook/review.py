"""AdmissionReview v1 on the wire: parse and validate a review, build the answer, and map a
review to the judge's ``Subject`` (the webhook's half of "gathering").

The API server sends ``admission.k8s.io/v1`` ``AdmissionReview`` JSON; anything else is refused
with ``ReviewError`` (the server answers 400 with its reason). What the webhook judges:

- ``operation`` and ``requestResource``/``requestSubResource`` (the resource the caller
  addressed; ``resource`` when the API server sends no request resource) give the
  ``RequestInfo`` the proxy would have classified: CREATE -> ``create``, UPDATE -> ``update``
  (the review carries the object as it will be stored, whatever patch produced it), DELETE ->
  ``delete``, CONNECT -> ``connect``. A ``pods/eviction`` review is a CREATE of an Eviction:
  ``RequestInfo.operation`` makes it the DELETE of the pod, as in the proxy.
- ``oldObject`` is the stored object and ``object`` the one to be stored, for the resource
  itself and for the subresources that carry the parent (``status``, ``ephemeralcontainers``,
  ``resize``, a namespace's ``finalize``). The other subresources (``scale``, ``eviction``,
  ``exec``, ``attach``, ``portforward``, ``proxy``, ``binding``, ``token``...) carry an object
  of another kind without the parent's labels: the parent is read from the API server with the
  webhook's own credentials (``gather``).
- ``userInfo`` is the caller (after impersonation, as the API server authenticated it).
- ``dryRun`` is judged the same; ``options`` (DeleteOptions...) go along.
- A namespace's own review names the namespace in ``name``; its ``namespace`` is the same
  name, as in the proxy's classification (a Lock in a namespace covers deleting it).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, NotRequired, TypedDict

from klockproxy.core.errors import DecodeError
from klockproxy.core.requests import RequestInfo
from klockproxy.core.types import Operation, ResourceRef, UserInfo
from klockproxy.judge import Subject

ADMISSION_API_VERSION = "admission.k8s.io/v1"
REVIEW_KIND = "AdmissionReview"
# The API server caps request bodies at 3 MiB (etcd's limit is 1.5 MiB per object; a review
# carries two objects): anything bigger did not come from it.
MAX_REVIEW_BYTES = 3 * 1024 * 1024

# Subresources whose reviews carry the parent object itself (labels included).
PARENT_CARRYING_SUBRESOURCES = frozenset(
    {"", "status", "ephemeralcontainers", "resize", "finalize"}
)

_VERBS: Mapping[Operation, str] = {
    Operation.CREATE: "create",
    Operation.UPDATE: "update",
    Operation.DELETE: "delete",
    Operation.CONNECT: "connect",
}


class ReviewError(DecodeError):
    """The body is not a well-formed AdmissionReview v1; the message says why."""


# ---------------------------------------------------------------------------------------------
# The answer's wire shape (TypedDict: what the API server expects back). The request is
# read field by field from untrusted JSON (``parse_review`` checks each it reads, the module
# docstring says which), so it gets no TypedDict that would only claim what was not checked.


class ResponseStatusWire(TypedDict):
    code: int
    reason: str
    message: str


class AdmissionResponseWire(TypedDict):
    uid: str
    allowed: bool
    status: NotRequired[ResponseStatusWire]


class AdmissionReviewWire(TypedDict):
    apiVersion: str
    kind: str
    response: AdmissionResponseWire


# ---------------------------------------------------------------------------------------------
# The parsed review


@dataclass(frozen=True, slots=True)
class Review:
    """One validated AdmissionReview request."""

    uid: str
    operation: Operation
    resource: ResourceRef  # as the caller addressed it (request resource and subresource)
    kind: str  # the kind of ``object`` / ``oldObject`` (``Scale``, ``Eviction``, ``Pod``...)
    name: str
    namespace: str
    user: UserInfo
    object: Mapping[str, Any] | None
    old_object: Mapping[str, Any] | None
    dry_run: bool
    options: Mapping[str, Any] | None
    info: RequestInfo  # the request as the proxy would have classified it

    @property
    def carries_parent(self) -> bool:
        """Whether ``object``/``oldObject`` are the object the request acts on (labels
        included), rather than a subresource's own kind."""
        return self.resource.subresource in PARENT_CARRYING_SUBRESOURCES


def _field(obj: Mapping[str, Any], key: str, where: str, kind: type, *, required: bool) -> Any:
    value = obj.get(key)
    if value is None:
        if required:
            raise ReviewError(f"{where}.{key} is missing")
        return None
    if not isinstance(value, kind):
        raise ReviewError(f"{where}.{key} must be {_article(kind)}")
    return value


def _article(kind: type) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        kind, kind.__name__
    )


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ReviewError(f"{where} must be an array of strings")
    return tuple(value)


def _gvr(obj: Mapping[str, Any], key: str, *, required: bool) -> tuple[str, str, str] | None:
    where = f"request.{key}"
    raw = _field(obj, key, "request", dict, required=required)
    if raw is None:
        return None
    group = _field(raw, "group", where, str, required=False) or ""
    version = _field(raw, "version", where, str, required=True)
    resource = _field(raw, "resource", where, str, required=True)
    if not resource or not version:
        raise ReviewError(f"{where} must name a version and a resource")
    return group, version, resource


def _user(raw: Mapping[str, Any]) -> UserInfo:
    username = _field(raw, "username", "request.userInfo", str, required=False) or ""
    uid = _field(raw, "uid", "request.userInfo", str, required=False) or ""
    groups = _strings(raw.get("groups"), "request.userInfo.groups")
    extra_raw = _field(raw, "extra", "request.userInfo", dict, required=False) or {}
    extra = {
        str(key): _strings(values, f"request.userInfo.extra[{key!r}]")
        for key, values in extra_raw.items()
    }
    return UserInfo(username=username, uid=uid, groups=groups, extra=extra)


def parse_review(body: bytes) -> Review:
    """Validate an AdmissionReview v1 request body; raises ``ReviewError`` saying what is
    wrong (never anything else)."""
    if len(body) > MAX_REVIEW_BYTES:
        raise ReviewError(f"the body is larger than {MAX_REVIEW_BYTES} bytes")
    try:
        # The API server's own encoding (Go's encoding/json): no duplicate keys, no NaN to
        # refuse; the plain decoder is the fast one.
        doc = json.loads(body)
    except (ValueError, RecursionError) as e:
        # ValueError covers bad JSON and bad UTF-8; RecursionError absurdly deep nesting.
        raise ReviewError(f"the body is not JSON: {type(e).__name__}") from e
    if not isinstance(doc, dict):
        raise ReviewError("the body is not a JSON object")
    api_version, kind = doc.get("apiVersion"), doc.get("kind")
    if kind != REVIEW_KIND:
        raise ReviewError(f"kind must be {REVIEW_KIND}, not {_shown(kind)}")
    if api_version != ADMISSION_API_VERSION:
        raise ReviewError(
            f"apiVersion must be {ADMISSION_API_VERSION}, not {_shown(api_version)} "
            "(list only admissionReviewVersions: [v1] in the webhook configuration)"
        )
    request = _field(doc, "request", "AdmissionReview", dict, required=True)
    uid = _field(request, "uid", "request", str, required=True)
    if not uid:
        raise ReviewError("request.uid is empty")
    raw_op = _field(request, "operation", "request", str, required=True)
    try:
        operation = Operation(raw_op)
    except ValueError as e:
        raise ReviewError(
            f"request.operation must be CREATE, UPDATE, DELETE or CONNECT, not {_shown(raw_op)}"
        ) from e
    resource = _gvr(request, "resource", required=True)
    requested = _gvr(request, "requestResource", required=False)
    subresource = _field(request, "subResource", "request", str, required=False) or ""
    if requested is not None:
        # The caller's own resource (before matchPolicy: Equivalent converted it): messages
        # name what the caller addressed, as the proxy's do.
        resource = requested
        subresource = (
            _field(request, "requestSubResource", "request", str, required=False) or subresource
        )
    if resource is None:  # unreachable: required above; keeps the type checker informed
        raise ReviewError("request.resource is missing")
    raw_kind = _field(request, "kind", "request", dict, required=True)
    kind = _field(raw_kind, "kind", "request.kind", str, required=True)
    name = _field(request, "name", "request", str, required=False) or ""
    namespace = _field(request, "namespace", "request", str, required=False) or ""
    group, version, plural = resource
    user = _user(_field(request, "userInfo", "request", dict, required=True))
    new = _field(request, "object", "request", dict, required=False)
    old = _field(request, "oldObject", "request", dict, required=False)
    if operation in (Operation.CREATE, Operation.UPDATE) and new is None:
        raise ReviewError(f"request.object is missing for a {operation.value}")
    if operation is Operation.UPDATE and old is None:
        raise ReviewError("request.oldObject is missing for an UPDATE")
    dry_run = _field(request, "dryRun", "request", bool, required=False) or False
    options = _field(request, "options", "request", dict, required=False)
    if not name:
        # The API server's DeleteCollection sends each object's review with the collection
        # request's (empty) name; a create with generateName has none yet either.
        for obj in (old, new):
            meta = obj.get("metadata") if obj is not None else None
            if isinstance(meta, dict) and isinstance(meta.get("name"), str):
                name = meta["name"]
                break
    if not name and operation is not Operation.CREATE:
        raise ReviewError(f"request.name is missing for a {operation.value}")
    if group == "" and plural == "namespaces":
        # A namespace's own requests are in that namespace (core.requests does the same).
        namespace = name
    info = RequestInfo(
        verb=_VERBS[operation],
        is_resource_request=True,
        group=group,
        version=version,
        resource=plural,
        subresource=subresource,
        namespace=namespace,
        name=name,
        dry_run=dry_run,
    )
    return Review(
        uid=uid,
        operation=operation,
        resource=ResourceRef(group, version, plural, subresource),
        kind=kind,
        name=name,
        namespace=namespace,
        user=user,
        object=new,
        old_object=old,
        dry_run=dry_run,
        options=options,
        info=info,
    )


def _shown(value: Any) -> str:
    """A value for an error message, short and without quoting whole documents."""
    if isinstance(value, str):
        return repr(value[:60])
    if value is None:
        return "none"
    return f"a JSON {type(value).__name__}"


# ---------------------------------------------------------------------------------------------
# Answers


def allow(uid: str) -> AdmissionReviewWire:
    """``allowed: true`` for review ``uid``."""
    return {
        "apiVersion": ADMISSION_API_VERSION,
        "kind": REVIEW_KIND,
        "response": {"uid": uid, "allowed": True},
    }


def deny(uid: str, code: int, reason: str, message: str) -> AdmissionReviewWire:
    """``allowed: false`` with the Status the API server shows the caller: it prints
    ``admission webhook "<name>" denied the request: <message>``."""
    return {
        "apiVersion": ADMISSION_API_VERSION,
        "kind": REVIEW_KIND,
        "response": {
            "uid": uid,
            "allowed": False,
            "status": {"code": code, "reason": reason, "message": message},
        },
    }


def to_bytes(answer: AdmissionReviewWire) -> bytes:
    """The compact JSON of an answer."""
    return json.dumps(answer, separators=(",", ":")).encode()


# ---------------------------------------------------------------------------------------------
# Gathering: the review's objects, and the parent where the review does not carry it


# Reads the object a RequestInfo acts on (the parent for subresources); None when absent.
ParentReader = Callable[[RequestInfo], Awaitable[Mapping[str, Any] | None]]


async def gather(review: Review, read_parent: ParentReader) -> Subject:
    """The judge's ``Subject`` of a review: its objects, and the parent read with
    ``read_parent`` when the review does not carry it (and for a DELETE whose review has no
    ``oldObject``)."""
    info = review.info
    op = info.operation
    if review.carries_parent:
        old = review.old_object
        if op is Operation.DELETE and old is None:
            old = await read_parent(info)
        new = review.object if op in (Operation.CREATE, Operation.UPDATE) else None
        return Subject(info, old, new, review.options)
    parent = await read_parent(info)
    if op in (Operation.DELETE, Operation.CONNECT):
        # pods/eviction (DELETE of the pod), exec/attach/portforward/proxy.
        return Subject(info, parent, None, review.options)
    # scale and other UPDATEs (labels unchanged), CREATE on a subresource (token, binding):
    # the parent as it is decides.
    return Subject(info, parent, parent, review.options)
