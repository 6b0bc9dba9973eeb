"""Kubernetes ``Status`` payloads (meta/v1), built the way the API server builds them."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, NotRequired, TypedDict

if TYPE_CHECKING:
    from klockproxy.core.requests import RequestInfo


class StatusCause(TypedDict, total=False):
    reason: str
    message: str
    field: str


class StatusDetails(TypedDict, total=False):
    name: str
    group: str
    kind: str
    uid: str
    causes: list[StatusCause]
    retryAfterSeconds: int


class Status(TypedDict):
    kind: str
    apiVersion: str
    metadata: dict[str, str]
    status: str
    message: str
    reason: str
    code: int
    details: NotRequired[StatusDetails]


# HTTP code -> the StatusReason the API server uses for it by default.
REASON_FOR_CODE: dict[int, str] = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    410: "Expired",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    502: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


def failure(
    code: int,
    message: str,
    reason: str | None = None,
    details: StatusDetails | None = None,
) -> Status:
    """A ``status: Failure`` Status; ``reason`` defaults to the one the API server uses."""
    status: Status = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason if reason is not None else REASON_FOR_CODE.get(code, ""),
        "code": code,
    }
    if details:
        status["details"] = details
    return status


def _group_resource(info: RequestInfo) -> str:
    """``deployments.apps`` / ``pods`` (the parent's, for subresources)."""
    return f"{info.resource}.{info.group}" if info.group else info.resource


def forbidden(info: RequestInfo, name: str, message: str) -> Status:
    """403 Status shaped like the API server's admission denials.

    kubectl prints it as ``Error from server (Forbidden): pods "x" is forbidden: <message>``.
    """
    target = f'{_group_resource(info)} "{name}"' if name else _group_resource(info)
    details: StatusDetails = {"group": info.group, "kind": info.resource}
    if name:
        details["name"] = name
    return failure(403, f"{target} is forbidden: {message}", details=details)


def conflict(info: RequestInfo) -> Status:
    """409 as the API server words an optimistic-concurrency failure."""
    details: StatusDetails = {"group": info.group, "kind": info.resource}
    if info.name:
        details["name"] = info.name
    return failure(
        409,
        f'Operation cannot be fulfilled on {_group_resource(info)} "{info.name}": the object '
        "has been modified; please apply your changes to the latest version and try again",
        details=details,
    )


def success(details: StatusDetails | None = None) -> dict[str, object]:
    """A ``status: Success`` Status (what a DELETE of some resources returns)."""
    out: dict[str, object] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
    }
    if details:
        out["details"] = details
    return out


def to_bytes(status: Status | dict[str, object]) -> bytes:
    """Serialise a Status as the compact JSON body the API server sends."""
    return json.dumps(status, separators=(",", ":")).encode()
