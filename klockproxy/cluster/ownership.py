"""The ownership index: the garbage collector's graph, kept current by watches.

For every object a DELETE Lock may cover, the proxy must know what the garbage collector
would delete after a request: the owners up the chain and the other owners that keep a
dependent alive (``klockproxy.core.ownership`` walks the graph). The index holds the metadata
(uid, kind, name, labels, owner references) of

- every object of every listable kind in the namespaces that hold DELETE Locks (a namespaced
  owner must live in its dependent's namespace), and
- every cluster-scoped object (cluster-scoped objects may own namespaced ones and each other),

listed and then watched as metadata only (``PartialObjectMetadata``: no spec, no Secret data)
with the proxy's own credentials. Kinds come from discovery and are rediscovered whenever a
CustomResourceDefinition changes; namespaces follow the lock set (``follow(engine)``).

``synced`` is false until every watch has listed, and again while one is down or the kinds
are being rediscovered: requests that need the index are then refused (``require()`` raises a
503 Refusal) rather than judged on a partial graph.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from klockproxy.cluster.upstream import Upstream, UpstreamConfig, UpstreamStatusError, WatchEvent
from klockproxy.core.engine import Engine
from klockproxy.core.errors import Refusal, UpstreamError
from klockproxy.core.ownership import Graph, Node, node_of
from klockproxy.core.paths import resource_path
from klockproxy.core.status import failure
from klockproxy.core.types import Operation, ResourceRef

logger = logging.getLogger(__name__)

# Served twice (core v1 events and events.k8s.io): the same objects, watched once.
_DUPLICATE_GROUPS = frozenset({"events.k8s.io"})
# Seconds between two attempts when discovery or a watch fails.
RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 30.0
# How long a request that needs the index waits for it to sync before it is refused.
SYNC_WAIT_SECONDS = 10.0
# Writes through the proxy held until the watch delivers them (see ``OwnershipIndex.wrote``),
# at most this many, for at most this long: a watch delivers within milliseconds, and a
# write whose event was passed by another before its answer came is never delivered again.
MAX_WRITTEN = 10_000
WRITTEN_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Kind:
    """One listable, watchable resource of the API server."""

    resource: ResourceRef
    kind: str
    namespaced: bool

    def path(self, namespace: str = "") -> str:
        """The collection path (of one namespace for a namespaced kind)."""
        return resource_path(self.resource, namespace)


@dataclass
class _Stream:
    kind: Kind
    namespace: str
    task: asyncio.Task[None] | None = None
    synced: bool = False
    uids: set[str] = field(default_factory=set)
    error: str = ""  # why the last attempt failed (for messages; no credentials in it)


def delete_lock_namespaces(engine: Engine) -> frozenset[str]:
    """The namespaces where a Lock may refuse a DELETE (invalid Locks refuse everything)."""
    names = {lk.namespace for lk in engine.locks if Operation.DELETE in lk.operations}
    names.update(bad.namespace for bad in engine.invalid)
    return frozenset(names)


class OwnershipIndex:
    """Watches what the garbage collector follows (see the module docstring)."""

    def __init__(self, client: Upstream) -> None:
        self.client = client
        self._own_client: Upstream | None = None
        self.graph = Graph()
        self._kinds: tuple[Kind, ...] | None = None
        self._namespaces: frozenset[str] = frozenset()
        self._streams: dict[tuple[Kind, str], _Stream] = {}
        self._discovery: asyncio.Task[None] | None = None
        self._rediscover = False
        self._running = False
        self._engine: Engine | None = None
        self._changed = asyncio.Event()
        # Why the watches are cut, while they are (one log line per outage, not one per watch
        # and retry: the index runs dozens of watches, each retrying with backoff).
        self._outage: str | None = None
        # Objects as a write made through the proxy left them, by uid, until the watch
        # delivers that version (read your own writes: the caller's next patch of the object
        # must not be made conditional on the version before, which would answer 409).
        self._written: dict[str, tuple[Node, float]] = {}

    @classmethod
    def over(cls, config: UpstreamConfig) -> OwnershipIndex:
        """An index with a client of its own to the API server of ``config``: its watches
        (one per kind and namespace) must never take the connections the judge's lookups
        need, so they get their own pool, without a limit."""
        client = Upstream(config, connection_limit=0)
        index = cls(client)
        index._own_client = client
        return index

    async def permitted(self) -> str:
        """Why the index cannot run with these credentials (empty when it can): it lists and
        watches every kind, so it needs ``list`` and ``watch`` on every resource of every
        group (it asks for metadata only, but RBAC cannot grant only that)."""
        review = getattr(self.client, "self_access_review", None)
        if review is None:
            return ""
        try:
            for verb in ("list", "watch"):
                if not await review({"verb": verb, "group": "*", "resource": "*"}):
                    return f"the proxy's own credentials may not {verb} every resource"
        except UpstreamError as e:
            return f"cannot ask what the proxy's own credentials may do: {e}"
        return ""

    # ----------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Discover the kinds and start the watches (returns at once; see ``synced``)."""
        if self._running:
            return
        self._running = True
        self._discovery = asyncio.get_running_loop().create_task(self._discover_loop())

    async def stop(self) -> None:
        """Stop every watch (idempotent)."""
        self._running = False
        tasks = [s.task for s in self._streams.values() if s.task is not None]
        if self._discovery is not None:
            tasks.append(self._discovery)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._streams.clear()
        self._discovery = None
        if self._own_client is not None:
            await self._own_client.close()

    def follow(self, engine: Engine) -> None:
        """Watch the namespaces where ``engine``'s Locks may refuse a DELETE (cheap when the
        engine did not change)."""
        if engine is self._engine:
            return
        self._engine = engine
        namespaces = delete_lock_namespaces(engine)
        if namespaces != self._namespaces:
            self._namespaces = namespaces
            self._reconcile()

    # ----------------------------------------------------------------------- state

    @property
    def kinds(self) -> tuple[Kind, ...]:
        """The kinds discovered (empty before discovery)."""
        return self._kinds or ()

    @property
    def synced(self) -> bool:
        """Whether every watch has listed and none is down."""
        return (
            self._kinds is not None
            and not self._rediscover
            and all(s.synced for s in self._streams.values())
        )

    def progress(self) -> str:
        """``12 of 40 watches listed`` (for messages)."""
        if self._kinds is None:
            return "discovering the API server's kinds"
        done = sum(1 for s in self._streams.values() if s.synced)
        waiting = sorted(
            s.kind.path(s.namespace) + (f" ({s.error})" if s.error else "")
            for s in self._streams.values()
            if not s.synced
        )
        more = f"; waiting for {', '.join(waiting[:3])}" if waiting else ""
        if len(waiting) > 3:
            more += f" and {len(waiting) - 3} more"
        return f"{done} of {len(self._streams)} watches listed{more}"

    async def graph_when_synced(self, timeout: float = SYNC_WAIT_SECONDS) -> Graph:
        """The graph once synced; after ``timeout`` seconds a 503 Refusal (fail closed). A Lock
        just added (its namespace's watches still listing) costs a short wait, not a refusal."""
        failing = any(s.error for s in self._streams.values() if not s.synced)
        if not self.synced and not failing:
            await self.wait_synced(timeout)
        return self.require()

    def stored(self, group: str, resource: str, namespace: str, name: str) -> Node | None:
        """The object as the index last saw it, if it follows it (maybe stale: whoever uses
        it compares its ``version`` with the API server's, or makes the write conditional on
        it). A write through the proxy the watch has not delivered yet counts as seen."""
        node = self.graph.named(group, resource, namespace, name)
        if node is None:
            return None
        held = self._written.get(node.uid)
        if held is None:
            return node
        written, since = held
        if time.monotonic() - since > WRITTEN_SECONDS:
            # Its event never came (another write's passed it): the watch knows better.
            del self._written[node.uid]
            return node
        return written

    def wrote(self, obj: Mapping[str, Any]) -> None:
        """Take the API server's answer to a write made through the proxy (the object as
        stored) as the object's latest version, until the watch delivers that version. Only
        for objects the index follows; anything else is ignored."""
        meta = obj.get("metadata")
        uid = meta.get("uid") if isinstance(meta, dict) else None
        known = self.graph.get(uid) if isinstance(uid, str) else None
        if known is None:
            return
        node = node_of(obj, known.resource, known.kind)
        if node is None or not node.version or node.version == known.version:
            self._written.pop(known.uid, None)
            return
        if len(self._written) >= MAX_WRITTEN and known.uid not in self._written:
            # Bounded: a watch that delivers nothing for long is down (and then re-lists).
            self._written.clear()
        self._written[known.uid] = (node, time.monotonic())

    def require(self) -> Graph:
        """The graph, or a 503 Refusal while it is not synced (fail closed)."""
        if not self.synced:
            raise Refusal(
                failure(
                    503,
                    "klockproxy: the ownership index is not synced yet "
                    f"({self.progress()}): cannot tell what the garbage collector would "
                    "delete after this request; retry in a moment",
                )
            )
        return self.graph

    async def wait_synced(self, timeout: float) -> bool:
        """Wait until ``synced`` (False on timeout)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.synced:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.5))
        return True

    def _notify(self) -> None:
        self._changed.set()
        if self._outage is not None and self.synced:
            self._outage = None
            logger.info("ownership index: every watch has listed again (%s)", self.progress())

    def _cut(self, error: str) -> None:
        """A watch is down: logged once until every watch has listed again."""
        if self._outage is None:
            self._outage = error
            logger.warning(
                "ownership index: watches cut (%s); writes that need the index are refused "
                "until every watch has listed again (logged when they have)",
                error,
            )

    # ----------------------------------------------------------------------- discovery

    async def _discover_loop(self) -> None:
        while self._running:
            try:
                kinds = await self._discover()
            except UpstreamError as e:
                logger.debug("ownership index: discovery failed: %s; retrying", e)
                self._cut(f"discovery: {e}")
                await asyncio.sleep(RETRY_SECONDS)
                continue
            self._kinds = kinds
            self._rediscover = False
            self._reconcile()
            return

    def _schedule_discovery(self) -> None:
        """A CRD changed: the set of kinds may have (until rediscovered, not synced)."""
        self._rediscover = True
        self._notify()
        if self._running and (self._discovery is None or self._discovery.done()):
            self._discovery = asyncio.get_running_loop().create_task(self._discover_loop())

    async def _discover(self) -> tuple[Kind, ...]:
        paths = ["/api/v1"]
        groups = await self.client.get_object("/apis", {}) or {}
        for group in groups.get("groups") or []:
            if not isinstance(group, dict) or group.get("name") in _DUPLICATE_GROUPS:
                continue
            preferred = group.get("preferredVersion")
            gv = preferred.get("groupVersion") if isinstance(preferred, dict) else None
            if isinstance(gv, str):
                paths.append(f"/apis/{gv}")
        kinds: list[Kind] = []
        for path in paths:
            try:
                doc = await self.client.get_object(path, {})
            except UpstreamStatusError as e:
                # An aggregated API that is down (503) or hidden from the proxy: the garbage
                # collector cannot resolve its kinds either and deletes nothing because of
                # them while that lasts. Rediscovered with the next CRD change.
                logger.warning("ownership index: skipping %s: %s", path, e)
                continue
            if doc is None:
                continue  # a group removed meanwhile
            kinds.extend(_kinds_of(doc))
        return tuple(kinds)

    # ----------------------------------------------------------------------- watches

    def _reconcile(self) -> None:
        """Start the watches that should run and stop the others."""
        if self._kinds is None or not self._running:
            return
        wanted: set[tuple[Kind, str]] = set()
        for kind in self._kinds:
            if kind.namespaced:
                wanted.update((kind, ns) for ns in self._namespaces)
            else:
                wanted.add((kind, ""))
        for key in list(self._streams):
            if key not in wanted:
                self._drop(self._streams.pop(key))
        loop = asyncio.get_running_loop()
        for key in sorted(wanted - set(self._streams), key=_stream_order):
            stream = _Stream(*key)
            stream.task = loop.create_task(self._follow(stream))
            self._streams[key] = stream
        self._notify()

    def _drop(self, stream: _Stream) -> None:
        if stream.task is not None:
            stream.task.cancel()
        for uid in stream.uids:
            self.graph.remove(uid)
            self._written.pop(uid, None)
        stream.uids.clear()

    async def _follow(self, stream: _Stream) -> None:
        kind = stream.kind
        path = kind.path(stream.namespace)
        is_crd = kind.resource.group == "apiextensions.k8s.io" and kind.kind == (
            "CustomResourceDefinition"
        )
        listed = False
        backoff = RETRY_SECONDS
        while self._running:
            try:
                async for event in self.client.watch(path, metadata_only=True, quiet=True):
                    if event.type == "DOWN":
                        # Events may have been missed: list afresh once the API server is back
                        # (a lasting failure is retried less often).
                        stream.synced = False
                        stream.error = event.error
                        self._cut(event.error)
                        self._notify()
                        break
                    if event.type == "LISTED":
                        backoff = RETRY_SECONDS
                    stream.error = ""
                    self._apply(stream, event)
                    # A CRD added, changed or removed (or, after an outage, maybe) changes
                    # the kinds to watch.
                    if is_crd and (event.type != "LISTED" or listed):
                        self._schedule_discovery()
                    listed = listed or event.type == "LISTED"
                    # A LISTED event holds a whole collection: not kept until the next event.
                    del event
            except UpstreamStatusError as e:
                if e.code == 404:
                    # The kind is gone (its CRD deleted): nothing of it exists any more.
                    logger.info("ownership index: %s is not served any more", path)
                    self._drop(stream)
                    stream.synced = True
                    self._schedule_discovery()
                    return
                stream.error = f"HTTP {e.code}: {e.message}"
                self._cut(f"{path}: {stream.error}")
            except UpstreamError as e:
                stream.error = str(e)
                self._cut(f"{path}: {e}")
            stream.synced = False
            self._notify()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_RETRY_SECONDS)

    def _apply(self, stream: _Stream, event: WatchEvent) -> None:
        kind = stream.kind
        if event.type == "LISTED":
            fresh = {}
            for item in event.items:
                node = node_of(item, kind.resource, kind.kind)
                if node is not None:
                    fresh[node.uid] = node
            for uid in stream.uids - fresh.keys():
                self.graph.remove(uid)
            for node in fresh.values():
                self.graph.upsert(node)
            # A fresh list is as new as any write made before it.
            for uid in stream.uids | fresh.keys():
                self._written.pop(uid, None)
            stream.uids = set(fresh)
            stream.synced = True
            self._notify()
            return
        node = node_of(event.object, kind.resource, kind.kind)
        if node is None:
            return
        held = self._written.get(node.uid)
        if held is not None and (event.type == "DELETED" or held[0].version == node.version):
            # The watch has caught up with the write (events come in order: another version
            # before it is older, short of the race WRITTEN_SECONDS ends).
            del self._written[node.uid]
        if event.type == "DELETED":
            self.graph.remove(node.uid)
            stream.uids.discard(node.uid)
        else:
            self.graph.upsert(node)
            stream.uids.add(node.uid)


def _stream_order(key: tuple[Kind, str]) -> tuple[str, str, str]:
    kind, namespace = key
    return (namespace, kind.resource.group, kind.resource.resource)


def _kinds_of(doc: Mapping[str, Any]) -> Iterable[Kind]:
    """The listable, watchable resources of one APIResourceList (no subresources)."""
    gv = str(doc.get("groupVersion") or "")
    group, _, version = gv.rpartition("/")
    for res in doc.get("resources") or []:
        if not isinstance(res, dict):
            continue
        name = res.get("name")
        verbs = res.get("verbs") or []
        if not isinstance(name, str) or "/" in name or not isinstance(verbs, list):
            continue
        if "list" not in verbs or "watch" not in verbs:
            continue
        yield Kind(
            ResourceRef(group, version, name),
            str(res.get("kind") or ""),
            bool(res.get("namespaced")),
        )
