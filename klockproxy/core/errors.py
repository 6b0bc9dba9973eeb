"""The one exception hierarchy of klockproxy.

Adapters convert foreign exceptions into these at their boundary (``raise ... from e``) and
convert these into a Kubernetes ``Status`` (or an exit code) at theirs.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from klockproxy.core.status import Status


class KlockProxyError(Exception):
    """Base of every error klockproxy raises on purpose."""


class ExpressionError(KlockProxyError):
    """A matcher expression does not parse. ``position`` is the 0-based offset of the fault."""

    def __init__(self, expression: str, position: int, reason: str) -> None:
        self.expression = expression
        self.position = position
        self.reason = reason
        super().__init__(f"invalid expression {expression!r} at position {position}: {reason}")


@dataclasses.dataclass(eq=False)
class LockValidationError(KlockProxyError):
    """A Lock object (or a lock file) is invalid.

    Every part of the location that is known is named: the file, the YAML document index
    (0-based), the lock (``namespace/name``) and the field (``spec.matcher.aura``).
    """

    reason: str
    _: dataclasses.KW_ONLY
    source: str | None = None
    document: int | None = None
    lock: str | None = None
    field: str | None = None

    def __post_init__(self) -> None:
        super().__init__(self._render())

    # An exception's own repr and str (its message), not the dataclass's field dump.
    __repr__ = Exception.__repr__

    def _render(self) -> str:
        where = []
        if self.source is not None:
            where.append(self.source)
        if self.document is not None:
            where.append(f"document {self.document}")
        if self.lock is not None:
            where.append(f"lock {self.lock}")
        if self.field is not None:
            where.append(f"field {self.field}")
        prefix = ", ".join(where)
        return f"{prefix}: {self.reason}" if prefix else self.reason


class ClassificationError(KlockProxyError):
    """An API request path/method cannot be classified the way the API server would."""


class MalformedRequestError(ClassificationError):
    """The method, request target or a header field breaks HTTP's grammar.

    Refused for every request, reads included: one hop may read such a message differently
    from the next (request smuggling, a ``#`` fragment dropped upstream).
    """


class UnservedRouteError(ClassificationError):
    """The request has a shape the API server does not serve (a namespaced kind addressed
    cluster-wide, a namespace nested in a namespace, a verb the kind does not have)."""


class DecodeError(KlockProxyError):
    """A request body (JSON, YAML, protobuf) cannot be decoded."""


class PatchError(KlockProxyError):
    """A patch cannot be applied (malformed patch, failed test op, missing path...)."""


class UpstreamError(KlockProxyError):
    """The API server could not be asked (unreachable, unexpected answer)."""


class ConfigError(KlockProxyError):
    """Invalid configuration: options, kubeconfig, command-line arguments."""


class ManifestError(KlockProxyError):
    """A manifest given to ``klockproxy check`` is not a Kubernetes object it can judge."""


class Refusal(KlockProxyError):
    """The request is answered by the proxy with ``status`` instead of being forwarded."""

    def __init__(self, status: Status, log_message: str | None = None) -> None:
        self.status = status
        # What the proxy log says instead of the Status message, when that message may quote
        # the request body (a YAML error shows the offending line: possibly a secret).
        self.log_message = log_message
        super().__init__(status["message"])
