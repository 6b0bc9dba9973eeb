"""Errors the sandbox API server answers with a Kubernetes ``Status``.

Every sandbox module raises an :class:`ApiError` subclass for a request the real API server
would refuse; the HTTP layer turns it into the Status body (``to_status()``) and code.
"""

from __future__ import annotations

from klockproxy.core.errors import KlockProxyError
from klockproxy.core.status import REASON_FOR_CODE, Status, StatusCause, StatusDetails, failure


class ApiError(KlockProxyError):
    """A request refused with HTTP ``code``, Status ``reason`` and a human ``message``."""

    code: int = 500

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        reason: str | None = None,
        details: StatusDetails | None = None,
    ) -> None:
        if code is not None:
            self.code = code
        self.message = message
        self.reason = reason if reason is not None else REASON_FOR_CODE.get(self.code, "")
        self.details = details
        super().__init__(message)

    def to_status(self) -> Status:
        """The ``Status`` payload the API server sends for this error."""
        return failure(self.code, self.message, self.reason, self.details)


class BadRequestError(ApiError):
    """400 BadRequest: the request cannot be understood (bad body, bad header)."""

    code = 400


class UnauthorizedError(ApiError):
    """401 Unauthorized: no (valid) credential."""

    code = 401

    def __init__(self, message: str = "Unauthorized") -> None:
        super().__init__(message)


class ForbiddenError(ApiError):
    """403 Forbidden: authenticated, but not allowed (RBAC, impersonation)."""

    code = 403


class NotFoundError(ApiError):
    """404 NotFound."""

    code = 404


class InvalidError(ApiError):
    """422 Invalid: the object fails validation; ``causes`` name the fields."""

    code = 422

    def __init__(
        self,
        kind: str,
        name: str,
        causes: list[StatusCause],
        *,
        group: str = "",
    ) -> None:
        # Same message shape as apierrors.NewInvalid: `Kind.group "name" is invalid: f: msg`.
        qualified = f"{kind}.{group}" if group else kind
        parts = [
            f"{c['field']}: {c.get('message', '')}" if c.get("field") else c.get("message", "")
            for c in causes
        ]
        summary = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
        details: StatusDetails = {"name": name, "kind": kind, "causes": causes}
        if group:
            details["group"] = group
        super().__init__(f'{qualified} "{name}" is invalid: {summary}', details=details)
