"""The audit log: one JSON line per judged mutation (``--audit-log PATH|-``).

A line says who asked, what, and what was decided::

    {"time": "2026-12-02T07:00:00.123Z", "user": "jonny", "uid": "...", "groups": [...],
     "impersonatedBy": null, "verb": "delete", "apiGroup": "", "resource": "pods",
     "subresource": "", "namespace": "default", "name": "my-pod", "dryRun": false,
     "verdict": "denied", "locks": ["default/lockred"], "code": 403}

It never holds a token, a certificate or a body: ``record`` takes only the fields above (the
caller passes identities, never credentials), and JSON encoding keeps a name with a newline
from forging a second line. ``-`` writes to standard output. Writes are line-buffered and
serialised by a lock (several threads may record).
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import IO, TypedDict

from klockproxy.core.errors import ConfigError
from klockproxy.core.types import UserInfo

# What a line's verdict says: forwarded after a lock decision, or refused by a Lock. (Refusals
# for other reasons - unauthenticated, malformed, lookup failures - carry "refused".)
AUDIT_VERDICTS = ("allowed", "denied", "refused")


class AuditIdentity(TypedDict):
    """A user as it appears in an audit line."""

    user: str
    uid: str
    groups: list[str]


class AuditRecord(TypedDict):
    """One audit line (the wire format; see the module docstring)."""

    time: str
    user: str
    uid: str
    groups: list[str]
    impersonatedBy: AuditIdentity | None
    verb: str
    apiGroup: str
    resource: str
    subresource: str
    namespace: str
    name: str
    dryRun: bool
    verdict: str
    locks: list[str]
    code: int


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AuditLog:
    """Appends audit lines to a file (``-``: standard output)."""

    def __init__(self, path: str, *, stream: IO[str] | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._owned = False
        if stream is not None:
            self._stream: IO[str] = stream
        elif path == "-":
            self._stream = sys.stdout
        else:
            try:
                # Line-buffered append: each record reaches the file as a whole line.
                self._stream = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
            except OSError as e:
                raise ConfigError(f"cannot open the audit log {path}: {e}") from e
            self._owned = True

    def record(
        self,
        *,
        user: UserInfo | None,
        verb: str,
        api_group: str,
        resource: str,
        subresource: str = "",
        namespace: str = "",
        name: str = "",
        verdict: str,
        locks: Sequence[str] = (),
        code: int = 200,
        dry_run: bool = False,
        impersonated_by: UserInfo | None = None,
    ) -> AuditRecord:
        """Write one line and return it. ``user`` None: the caller's identity was not needed
        (no Lock exempts anyone) and is not known; it is written as empty."""
        line: AuditRecord = {
            "time": _now(),
            "user": user.username if user else "",
            "uid": user.uid if user else "",
            "groups": list(user.groups) if user else [],
            "impersonatedBy": (
                {
                    "user": impersonated_by.username,
                    "uid": impersonated_by.uid,
                    "groups": list(impersonated_by.groups),
                }
                if impersonated_by is not None
                else None
            ),
            "verb": verb,
            "apiGroup": api_group,
            "resource": resource,
            "subresource": subresource,
            "namespace": namespace,
            "name": name,
            "dryRun": dry_run,
            "verdict": verdict,
            "locks": sorted(set(locks)),
            "code": code,
        }
        text = json.dumps(line, separators=(",", ":"), ensure_ascii=True) + "\n"
        with self._lock:
            self._stream.write(text)
            self._stream.flush()
        return line

    def close(self) -> None:
        """Close the file (standard output is left open)."""
        with self._lock:
            if self._owned and not self._stream.closed:
                self._stream.close()
