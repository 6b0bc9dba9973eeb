"""The sandbox's in-memory object store: plain JSON dicts, a global resourceVersion counter,
a bounded history of change events, and watchers fed from it.

Objects handed out are the stored dicts themselves: callers must treat them as read-only
(every write stores a new dict). Everything runs on the server's event loop.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped objects

ADDED = "ADDED"
MODIFIED = "MODIFIED"
DELETED = "DELETED"

# A watcher whose client does not keep up is dropped after this many queued events.
MAX_QUEUED_EVENTS = 10_000


@dataclass(frozen=True)
class Event:
    rv: int
    type: str
    group: str
    resource: str
    obj: Obj
    # The object before a MODIFIED event (selector watchers turn a change that leaves or
    # enters their selection into DELETED or ADDED, as the API server does).
    prev: Obj | None = None

    def as_seen_by(self, predicate: Callable[[Obj], bool] | None) -> str | None:
        """The event type a watcher filtering with ``predicate`` receives (None: nothing)."""
        if predicate is None:
            return self.type
        now = predicate(self.obj)
        if self.type != MODIFIED or self.prev is None:
            return self.type if now else None
        before = predicate(self.prev)
        if now and before:
            return MODIFIED
        if now:
            return ADDED
        return DELETED if before else None

    @property
    def namespace(self) -> str:
        ns: str = self.obj.get("metadata", {}).get("namespace", "")
        return ns


class TooOldError(Exception):
    """The requested resourceVersion is older than the kept event history."""

    def __init__(self, requested: int, oldest: int) -> None:
        self.requested = requested
        self.oldest = oldest
        super().__init__(f"too old resource version: {requested} ({oldest})")


@dataclass(eq=False)
class Watcher:
    group: str
    resource: str
    namespace: str | None
    queue: asyncio.Queue[Event | None] = field(default_factory=asyncio.Queue)
    overflowed: bool = False

    def wants(self, ev: Event) -> bool:
        if ev.group != self.group or ev.resource != self.resource:
            return False
        return self.namespace is None or ev.namespace == self.namespace


class Store:
    """Objects by (group, resource) then (namespace, name)."""

    def __init__(self, history_size: int = 1000) -> None:
        self._objects: dict[tuple[str, str], dict[Key, Obj]] = {}
        self._rv = 1
        self._history: deque[Event] = deque(maxlen=max(1, history_size))
        self._watchers: set[Watcher] = set()

    # ---------------------------------------------------------------- reading

    @property
    def resource_version(self) -> int:
        """The newest resourceVersion handed out."""
        return self._rv

    @property
    def generation(self) -> int:
        """Changes on every write (the RBAC authorizer caches its policy by it)."""
        return self._rv

    @property
    def oldest_watchable(self) -> int:
        """A watch from resourceVersion N works when N >= this value."""
        if len(self._history) < (self._history.maxlen or 0):
            return 0
        return self._history[0].rv - 1

    def get(self, group: str, resource: str, namespace: str | None, name: str) -> Obj | None:
        return self._objects.get((group, resource), {}).get((namespace or "", name))

    def list(self, group: str, resource: str, namespace: str | None) -> list[Obj]:
        """Objects of a resource, sorted by (namespace, name); ``None`` = all namespaces."""
        bucket = self._objects.get((group, resource), {})
        keys = sorted(k for k in bucket if namespace is None or k[0] == namespace)
        return [bucket[k] for k in keys]

    def count(self, group: str, resource: str) -> int:
        return len(self._objects.get((group, resource), {}))

    # ---------------------------------------------------------------- writing

    def next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    @staticmethod
    def _key(obj: Obj) -> Key:
        meta = obj["metadata"]
        return meta.get("namespace", "") or "", meta["name"]

    def put(self, group: str, resource: str, obj: Obj) -> Obj:
        """Store ``obj`` (created or replaced) with a new resourceVersion; emits an event."""
        bucket = self._objects.setdefault((group, resource), {})
        key = self._key(obj)
        prev = bucket.get(key)
        rv = self.next_rv()
        obj["metadata"]["resourceVersion"] = rv
        bucket[key] = obj
        ev_type = MODIFIED if prev is not None else ADDED
        self._emit(Event(int(rv), ev_type, group, resource, obj, prev))
        return obj

    def remove(self, group: str, resource: str, namespace: str | None, name: str) -> Obj | None:
        """Delete an object; the DELETED event carries it with a fresh resourceVersion."""
        bucket = self._objects.get((group, resource), {})
        old = bucket.pop((namespace or "", name), None)
        if old is None:
            return None
        rv = self.next_rv()
        gone = {**old, "metadata": {**old["metadata"], "resourceVersion": rv}}
        self._emit(Event(int(rv), DELETED, group, resource, gone))
        return gone

    def drop_resource(self, group: str, resource: str) -> builtins.list[Obj]:
        """Delete every object of a resource (a CRD went away)."""
        removed = []
        for obj in self.list(group, resource, None):
            meta = obj["metadata"]
            gone = self.remove(group, resource, meta.get("namespace"), meta["name"])
            if gone is not None:
                removed.append(gone)
        self._objects.pop((group, resource), None)
        for w in [w for w in self._watchers if (w.group, w.resource) == (group, resource)]:
            self._watchers.discard(w)
            w.queue.put_nowait(None)
        return removed

    def namespaced_resources(self) -> builtins.list[tuple[str, str]]:
        return list(self._objects)

    # ---------------------------------------------------------------- watching

    def _emit(self, ev: Event) -> None:
        self._history.append(ev)
        for w in list(self._watchers):
            if not w.wants(ev):
                continue
            if w.queue.qsize() >= MAX_QUEUED_EVENTS:
                w.overflowed = True
                self._watchers.discard(w)
                w.queue.put_nowait(None)
                logger.warning("dropped a watcher of %s that did not keep up", w.resource)
                continue
            w.queue.put_nowait(ev)

    def watch(
        self,
        group: str,
        resource: str,
        namespace: str | None,
        since: int | None,
        predicate: Callable[[Obj], bool] | None = None,
    ) -> tuple[Watcher, builtins.list[Event]]:
        """Register a watcher. With ``since`` (a resourceVersion), also return the kept events
        after it (raises TooOldError when the history no longer reaches back that far); without,
        return synthetic ADDED events for the current objects."""
        w = Watcher(group, resource, namespace)
        backlog: builtins.list[Event]
        if since is None:
            backlog = [
                Event(int(o["metadata"]["resourceVersion"]), ADDED, group, resource, o)
                for o in self.list(group, resource, namespace)
            ]
        else:
            if since < self.oldest_watchable:
                raise TooOldError(since, self.oldest_watchable + 1)
            backlog = [ev for ev in self._history if ev.rv > since and w.wants(ev)]
        if predicate is not None:
            backlog = [
                Event(ev.rv, seen, ev.group, ev.resource, ev.obj)
                for ev in backlog
                if (seen := ev.as_seen_by(predicate)) is not None
            ]
        self._watchers.add(w)
        return w, backlog

    @property
    def watcher_count(self) -> int:
        return len(self._watchers)

    def unwatch(self, w: Watcher) -> None:
        self._watchers.discard(w)

    def close_watchers_of(self, group: str, resource: str) -> None:
        """End every watch of one resource (its watchers see the stream end)."""
        for w in list(self._watchers):
            if (w.group, w.resource) == (group, resource):
                self._watchers.discard(w)
                w.queue.put_nowait(None)

    def close_watchers(self) -> None:
        for w in list(self._watchers):
            w.queue.put_nowait(None)
        self._watchers.clear()
