"""Scopes of the kinds the proxy's table does not know (custom resources, aggregated APIs),
from the API server's discovery (``GET /apis/GROUP/VERSION``), cached.

Only asked for mutations that name no namespace (``klockproxy.core.routes.needs_discovery``):
if such a kind is namespaced, the request is not one the API server serves, and a lenient
server or front behind the proxy could act in every namespace while the proxy judged none.
A group/version is read again after ``ttl`` seconds, and sooner when it does not list the
resource (a CustomResourceDefinition created a moment ago).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote

from klockproxy.core.routes import Kind, kinds_from_discovery

if TYPE_CHECKING:
    # Imported for its type only: the cache asks it ``get_object`` (tests give stand-ins).
    from klockproxy.cluster.upstream import Upstream

logger = logging.getLogger(__name__)

TTL_SECONDS = 60.0
# A resource missing from a cached list is looked up again after this long.
MISS_RETRY_SECONDS = 1.0


@dataclass(frozen=True)
class _Entry:
    fetched: float
    kinds: Mapping[str, Kind]  # empty when the group/version is not served (404)


class ResourceScopes:
    """``await kind(group, version, resource, headers)`` -> Kind, or None when the API
    server does not serve that resource (it answers the request with 404 itself)."""

    def __init__(
        self,
        client: Upstream,
        *,
        ttl: float = TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._ttl = ttl
        self._clock = clock
        self._entries: dict[tuple[str, str], _Entry] = {}

    async def kind(
        self,
        group: str,
        version: str,
        resource: str,
        headers: Mapping[str, str | Sequence[str]],
    ) -> Kind | None:
        """The Kind of ``resource``; UpstreamError (or UpstreamStatusError) when the API
        server cannot be asked."""
        key = (group, version)
        now = self._clock()
        entry = self._entries.get(key)
        stale = entry is None or now - entry.fetched >= self._ttl
        missing = entry is not None and resource not in entry.kinds
        if stale or (missing and entry is not None and now - entry.fetched >= MISS_RETRY_SECONDS):
            entry = await self._fetch(group, version, headers, now)
        return entry.kinds.get(resource) if entry is not None else None

    async def _fetch(
        self, group: str, version: str, headers: Mapping[str, str | Sequence[str]], now: float
    ) -> _Entry:
        if group:
            path = f"/apis/{quote(group, safe='')}/{quote(version, safe='')}"
        else:
            path = f"/api/{quote(version, safe='')}"
        doc = await self._client.get_object(path, headers)
        entry = _Entry(now, kinds_from_discovery(doc) if doc is not None else {})
        self._entries[(group, version)] = entry
        logger.debug("klockproxy: discovered %d resources at %s", len(entry.kinds), path)
        return entry
