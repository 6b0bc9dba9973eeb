"""The one error boundary of the judge: every failure becomes the Status the client gets.

The judge's phases raise errors of the one hierarchy (``klockproxy.core.errors``) and never
catch them to build a Status themselves; ``Judge.judge`` and ``Judge.decide`` hand anything
they raise to :func:`refusal_of`. The mapping:

* ``Refusal`` — its own Status (a decision, not a failure);
* ``DecodeError`` — 400: the body is one the API server would reject too (a label that is not
  a string, malformed JSON or YAML...); the message names the field. ``UnsupportedPatchError``
  — 415; ``PatchError`` — 400. These quote the body: the log gets a neutral line instead;
* ``UpstreamStatusError`` (``ReviewRefused``) — the API server refused a lookup: 401/403 pass
  on with its words, 429 from the identity cache's rate limit too, anything else is 503 (the
  proxy cannot check locks);
* ``UpstreamError``, ``ConfigError`` (the proxy's own credentials unreadable) — 503;
* ``ClassificationError`` — 400; any other ``KlockProxyError`` — 500 naming its type.

Errors outside the hierarchy are bugs: the modes still fail closed on them (the proxy answers
500 and logs where it happened), but no input may lead there.
"""

from __future__ import annotations

from klockproxy.cluster.identity import ReviewRefused
from klockproxy.core.errors import (
    ClassificationError,
    ConfigError,
    DecodeError,
    KlockProxyError,
    PatchError,
    Refusal,
    UpstreamError,
)
from klockproxy.core.patches import UnsupportedPatchError
from klockproxy.core.status import failure

# The log line for refusals whose message quotes the request body (possibly a secret).
_BODY_LOG = "the request body could not be used (HTTP {code}; detail sent to the client)"


def refusal_of(error: KlockProxyError) -> Refusal:
    """The refusal ``error`` amounts to (see the module docstring)."""
    if isinstance(error, Refusal):
        return error
    if isinstance(error, DecodeError):
        return _body(
            400, f"klockproxy: a lock covers this request and its body cannot be read: {error}"
        )
    if isinstance(error, UnsupportedPatchError):
        return _body(415, f"klockproxy: {error}")
    if isinstance(error, PatchError):
        return _body(400, f"klockproxy: a lock covers this request and its patch fails: {error}")
    if isinstance(error, ReviewRefused):
        if error.code == 429:
            # The identity cache's rate limit for unknown credentials: retry later.
            return Refusal(failure(429, error.message))
        if error.code in (401, 403):
            return Refusal(
                failure(
                    error.code,
                    f"klockproxy: a lock covers this request and the API server refused "
                    f"{error.what}: {error.message}",
                )
            )
        return Refusal(failure(503, f"klockproxy: cannot check locks: {error}"))
    if isinstance(error, UpstreamError | ConfigError):
        return Refusal(failure(503, f"klockproxy: cannot check locks: {error}"))
    if isinstance(error, ClassificationError):
        return Refusal(failure(400, f"klockproxy: {error}"))
    return Refusal(
        failure(500, f"klockproxy: cannot check locks ({type(error).__name__})"),
        log_message=f"cannot check locks: {type(error).__name__}",
    )


def _body(code: int, message: str) -> Refusal:
    return Refusal(failure(code, message), log_message=_BODY_LOG.format(code=code))
