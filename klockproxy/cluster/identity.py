"""Who is calling: the API server's own answer, cached by a hash of the credentials.

One mechanism for every mode: a SelfSubjectReview sent with exactly the credentials and
``Impersonate-*`` headers that the request will be forwarded with. In local mode that is the
proxy's own credential (optionally impersonating, ``kubectl --as``); in pass-through mode it
is the client's bearer token. The API server authenticates and authorises impersonation, so
the proxy never has to guess.

Answers are cached for a short time under a SHA-256 of the header values: raw tokens are never
kept as keys, and a revoked token stops being recognised within the TTL.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from klockproxy.core.types import UserInfo

logger = logging.getLogger(__name__)

DEFAULT_TTL = 60.0
DEFAULT_MAX_ENTRIES = 1024

AuthHeaders = Mapping[str, str | Sequence[str]]


class SelfSubjectReviewer(Protocol):
    """The part of :class:`klockproxy.cluster.upstream.Upstream` the resolver needs."""

    async def self_subject_review(self, headers: AuthHeaders) -> UserInfo:
        """Who these headers authenticate (and impersonate) as."""
        ...


def is_auth_header(name: str) -> bool:
    """True for the headers that decide who a request runs as."""
    lower = name.lower()
    return lower == "authorization" or lower.startswith("impersonate-")


def cache_key(headers: AuthHeaders) -> str:
    """SHA-256 over the identity-relevant headers (names case-folded, value order kept)."""
    digest = hashlib.sha256()
    for name in sorted(h for h in headers if is_auth_header(h)):
        value = headers[name]
        values = [value] if isinstance(value, str) else list(value)
        # Length prefixes make the encoding unambiguous whatever the values contain.
        for part in (name.lower(), *values):
            raw = part.encode("utf-8", "surrogateescape")
            digest.update(len(raw).to_bytes(4, "big"))
            digest.update(raw)
        digest.update(b"\xff")
    return digest.hexdigest()


class IdentityResolver:
    """Resolve (and cache) the user a request will run as."""

    def __init__(
        self,
        upstream: SelfSubjectReviewer,
        *,
        ttl: float = DEFAULT_TTL,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._upstream = upstream
        self._ttl = ttl
        self._max_entries = max_entries
        self._clock = clock
        self._cache: OrderedDict[str, tuple[float, UserInfo]] = OrderedDict()
        # Concurrent requests with the same credentials share one review.
        self._pending: dict[str, asyncio.Future[UserInfo]] = {}

    def __len__(self) -> int:
        return len(self._cache)

    def clear(self) -> None:
        """Forget every cached identity."""
        self._cache.clear()

    async def resolve(self, auth_headers: AuthHeaders) -> UserInfo:
        """The user the API server sees for these headers. Errors are raised, never cached."""
        key = cache_key(auth_headers)
        now = self._clock()
        hit = self._cache.get(key)
        if hit is not None:
            expires, user = hit
            if expires > now:
                self._cache.move_to_end(key)
                return user
            del self._cache[key]
        pending = self._pending.get(key)
        if pending is not None:
            try:
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not pending.cancelled() or (task is not None and task.cancelling()):
                    raise
                # The request that was asking got cancelled (its client went away): ask anew.
        return await self._review(key, auth_headers)

    async def _review(self, key: str, auth_headers: AuthHeaders) -> UserInfo:
        future: asyncio.Future[UserInfo] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            user = await self._upstream.self_subject_review(
                {k: v for k, v in auth_headers.items() if is_auth_header(k)}
            )
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as e:
            future.set_exception(e)
            # Nobody else may be waiting: mark the exception as retrieved.
            future.exception()
            raise
        finally:
            if self._pending.get(key) is future:
                del self._pending[key]
        future.set_result(user)
        self._cache[key] = (self._clock() + self._ttl, user)
        while len(self._cache) > self._max_entries:
            self._cache.popitem(last=False)
        logger.debug("resolved identity %s", user.username)
        return user
