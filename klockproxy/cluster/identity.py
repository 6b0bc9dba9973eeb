"""Who is calling: the API server's own answer, cached by a keyed hash of the credentials.

One mechanism for every mode: a SelfSubjectReview sent with exactly the credentials and
``Impersonate-*`` headers that the request will be forwarded with. In local mode that is the
proxy's own credential (optionally impersonating, ``kubectl --as``); in pass-through mode and
in the gateway it is the client's bearer token. The API server authenticates and authorises
impersonation, so the proxy never has to guess.

The cache (:class:`ReviewCache`, also used by the gateway for its impersonation checks):

* keys are a keyed hash (BLAKE2b) of the identity-relevant header values under a key drawn at
  start,
  so neither raw tokens nor hashes that could be checked offline against a guessed token are
  kept;
* successes are kept ``ttl`` seconds (60 by default: a revoked token or a deleted service
  account stops being recognised within that time); definitive refusals (401 unauthenticated,
  403 impersonation not allowed, 400 malformed impersonation) ``failure_ttl`` seconds (5);
  anything else (API server unreachable, 5xx, 429) is never cached;
* concurrent identical lookups share one review (single flight);
* successes and failures live in separate bounded tables, so a flood of distinct bad tokens
  only evicts other failures, never a known good caller;
* misses (reviews that have to be sent) pass a token bucket (``miss_rate`` per second,
  ``miss_burst``): past it the lookup is refused with 429 instead of reaching the API server,
  while every cached caller goes on being served.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from klockproxy.core.errors import UpstreamError
from klockproxy.core.types import UserInfo

logger = logging.getLogger(__name__)

DEFAULT_TTL = 60.0
DEFAULT_FAILURE_TTL = 5.0
DEFAULT_MAX_ENTRIES = 1024
DEFAULT_MAX_FAILURES = 1024
# No limit by default (local mode has one caller); the gateway sets one.
DEFAULT_MISS_RATE: float | None = None
DEFAULT_MISS_BURST = 50
# HTTP codes of a definitive answer about the credentials themselves (cached briefly).
DEFINITIVE_CODES = frozenset({400, 401, 403})

AuthHeaders = Mapping[str, str | Sequence[str]]
T = TypeVar("T")


class SelfSubjectReviewer(Protocol):
    """The part of :class:`klockproxy.cluster.upstream.Upstream` the resolver needs."""

    async def self_subject_review(self, headers: AuthHeaders) -> UserInfo:
        """Who these headers authenticate (and impersonate) as."""
        ...


class ReviewRefused(UpstreamError):
    """The API server (or the miss rate limit) refused: ``code`` and its Status message.

    Same fields as ``cluster.upstream.UpstreamStatusError`` (which is what the reviewers
    raise); defined here so the cache can raise it without importing aiohttp.
    """

    def __init__(self, what: str, code: int, message: str) -> None:
        self.what = what
        self.code = code
        self.message = message
        super().__init__(f"{what}: HTTP {code}: {message}")


def is_auth_header(name: str) -> bool:
    """True for the headers that decide who a request runs as."""
    lower = name.lower()
    return lower == "authorization" or lower.startswith("impersonate-")


def _encode(headers: AuthHeaders) -> bytes:
    """An unambiguous encoding of the identity-relevant headers (names case-folded).

    On every request's path (a cache hit costs this plus one keyed hash): kept lean.
    """
    parts: list[tuple[str, str | Sequence[str]]] = []
    for name, value in headers.items():
        lower = name.lower()
        if lower == "authorization" or lower.startswith("impersonate-"):
            parts.append((lower, value))
    if len(parts) > 1:
        parts.sort(key=lambda part: part[0])
    out = bytearray()
    for lower, value in parts:
        values = (value,) if isinstance(value, str) else value
        # Length prefixes make the encoding unambiguous whatever the values contain.
        for part in (lower, *values):
            raw = part.encode("utf-8", "surrogateescape")
            out += len(raw).to_bytes(4, "big")
            out += raw
        out += b"\xff"
    return bytes(out)


def cache_key(headers: AuthHeaders, key: bytes | None = None) -> str:
    """SHA-256 (keyed BLAKE2b under ``key``) over the identity-relevant headers."""
    data = _encode(headers)
    if key is None:
        return hashlib.sha256(data).hexdigest()
    return hashlib.blake2b(data, key=key, digest_size=32).hexdigest()


def _code(e: BaseException) -> int | None:
    code = getattr(e, "code", None)
    return code if isinstance(code, int) else None


@dataclass(kw_only=True, eq=False)
class ReviewCache(Generic[T]):
    """A bounded, single-flight TTL cache of review answers (see the module docstring).

    ``on_event(name)`` is told ``hit``, ``miss``, ``shared``, ``failure-hit`` or ``limited``
    for each lookup (metrics).
    """

    ttl: float = DEFAULT_TTL
    failure_ttl: float = DEFAULT_FAILURE_TTL
    max_entries: int = DEFAULT_MAX_ENTRIES
    max_failures: int = DEFAULT_MAX_FAILURES
    miss_rate: float | None = DEFAULT_MISS_RATE
    miss_burst: int = DEFAULT_MISS_BURST
    clock: Callable[[], float] = time.monotonic
    on_event: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        self._tokens = float(self.miss_burst)
        self._refilled = self.clock()
        self._cache: OrderedDict[str, tuple[float, T]] = OrderedDict()
        self._failures: OrderedDict[str, tuple[float, ReviewRefused]] = OrderedDict()
        self._pending: dict[str, asyncio.Future[T]] = {}

    def __len__(self) -> int:
        return len(self._cache)

    @property
    def failures(self) -> int:
        """How many refusals are remembered."""
        return len(self._failures)

    def clear(self) -> None:
        """Forget everything cached."""
        self._cache.clear()
        self._failures.clear()

    def _event(self, name: str) -> None:
        if self.on_event is not None:
            self.on_event(name)

    def _take_token(self) -> bool:
        if self.miss_rate is None:
            return True
        now = self.clock()
        elapsed = max(0.0, now - self._refilled)
        self._refilled = now
        self._tokens = min(float(self.miss_burst), self._tokens + elapsed * self.miss_rate)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    async def get(self, key: str, review: Callable[[], Awaitable[T]]) -> T:
        """The cached answer for ``key``, else ``await review()`` (shared by concurrent
        callers). Refusals are re-raised from the cache while they last; errors propagate."""
        now = self.clock()
        hit = self._cache.get(key)
        if hit is not None:
            expires, value = hit
            if expires > now:
                self._cache.move_to_end(key)
                self._event("hit")
                return value
            del self._cache[key]
        failed = self._failures.get(key)
        if failed is not None:
            expires, error = failed
            if expires > now:
                self._event("failure-hit")
                raise ReviewRefused("cached answer", error.code, error.message)
            del self._failures[key]
        pending = self._pending.get(key)
        if pending is not None:
            try:
                result = await asyncio.shield(pending)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not pending.cancelled() or (task is not None and task.cancelling()):
                    raise
                # The request that was asking got cancelled (its client went away): ask anew.
            else:
                self._event("shared")
                return result
        if not self._take_token():
            self._event("limited")
            raise ReviewRefused(
                "identity review",
                429,
                "klockproxy: too many new credentials to check right now; retry shortly",
            )
        self._event("miss")
        return await self._review(key, review)

    async def _review(self, key: str, review: Callable[[], Awaitable[T]]) -> T:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            value = await review()
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as e:
            future.set_exception(e)
            # Nobody else may be waiting: mark the exception as retrieved.
            future.exception()
            code = _code(e)
            if code in DEFINITIVE_CODES and self.failure_ttl > 0:
                message = str(getattr(e, "message", "")) or "refused"
                self._failures[key] = (
                    self.clock() + self.failure_ttl,
                    ReviewRefused("cached answer", code, message),
                )
                while len(self._failures) > self.max_failures:
                    self._failures.popitem(last=False)
            raise
        finally:
            if self._pending.get(key) is future:
                del self._pending[key]
        future.set_result(value)
        self._cache[key] = (self.clock() + self.ttl, value)
        self._failures.pop(key, None)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        return value


class IdentityResolver:
    """Resolve (and cache) the user a request will run as, by SelfSubjectReview."""

    def __init__(
        self,
        upstream: SelfSubjectReviewer,
        *,
        cache: ReviewCache[UserInfo] | None = None,
        on_review: Callable[[str], None] | None = None,
    ) -> None:
        """``cache`` holds the answers (its TTLs, bounds, miss rate and clock); a default
        ``ReviewCache`` when None. ``on_review(result)`` is told each review's outcome."""
        self._upstream = upstream
        # Drawn per process: the keys mean nothing outside it.
        self._key = secrets.token_bytes(32)
        self._on_review = on_review
        self._cache: ReviewCache[UserInfo] = ReviewCache() if cache is None else cache

    def __len__(self) -> int:
        return len(self._cache)

    @property
    def failures(self) -> int:
        """How many refused credentials are remembered."""
        return self._cache.failures

    def clear(self) -> None:
        """Forget every cached identity."""
        self._cache.clear()

    async def resolve(self, auth_headers: AuthHeaders) -> UserInfo:
        """The user the API server sees for these headers.

        Raises the reviewer's error (``UpstreamStatusError`` with the API server's code, or
        ``ReviewRefused``); errors other than definitive refusals are never cached.
        """
        headers = {k: v for k, v in auth_headers.items() if is_auth_header(k)}
        key = cache_key(headers, self._key)
        return await self._cache.get(key, lambda: self._review(headers))

    async def _review(self, headers: AuthHeaders) -> UserInfo:
        try:
            user = await self._upstream.self_subject_review(headers)
        except Exception as e:
            if self._on_review is not None:
                code = _code(e)
                self._on_review("rejected" if code in DEFINITIVE_CODES else "error")
            raise
        if not user.username:
            # Never take an unauthenticated answer for a user.
            if self._on_review is not None:
                self._on_review("rejected")
            raise ReviewRefused("SelfSubjectReview", 401, "Unauthorized")
        if self._on_review is not None:
            self._on_review("ok")
        logger.debug("resolved identity %s", user.username)
        return user
