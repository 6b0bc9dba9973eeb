"""Where the proxy's Locks come from: lock files (reloaded on change) and the cluster itself.

A lock source keeps a tuple of validated ``Lock`` objects up to date and calls ``on_change``
(on the event loop) whenever that tuple changes or the source becomes ready. ``LockSet``
combines sources and exposes one ``Engine``, or ``None`` until every source is ready: the
proxy refuses mutations while the lock state is unknown (fail closed).

- ``FileLockSource`` polls the files' size/mtime/inode (cheap, works on every filesystem and
  with editors that replace files). An invalid edit keeps the last good set and logs why
  (the error names file, document, lock and field, never the file contents).
- ``ClusterLockSource`` lists and watches ``locks.klock.rnemet.dev`` in all namespaces over
  the async ``Upstream`` (``Upstream.watch``, on the event loop: one client for every request
  the proxy makes). The watch relists on 410 Gone and reconnects with backoff, logging once
  per state change; while it reconnects, the last listed set stays in force. A missing CRD
  means "ready, zero locks", and the source keeps looking so that locks appear as soon as the
  CRD is installed; a CRD that no longer serves v1 fails closed (see the class).

Loading never stalls requests: lock files and relists are parsed and validated on the event
loop in slices of ``SLICE_SECONDS``, and the engine is rebuilt the same way, only for the
namespaces whose Locks changed, then swapped in whole (``LockSet``). Bursts of changes are
coalesced into one build.

Invalid Locks in the cluster fail closed. The CRD, like Klock's, validates little, so the
cluster can hold a Lock that ``lock_from_object`` rejects (a misspelt operation, a malformed
expression, an empty value). Skipping it would unlock what it was written to protect (Klock
would still enforce the parts it understands); guessing which part to enforce would be
worse. So ``ClusterLockSource`` keeps it as an ``InvalidLock`` (``invalid``), logs it once
(its name and the validation fault, never the object), and the engine refuses EVERY mutation
in its namespace, for every caller, except of Lock objects: the Lock can still be fixed or
deleted, and within a second of that the namespace is back to its ordinary rules. A Lock
that an edit made invalid is treated the same way: its previous version is no longer what
the cluster holds, so it is not enforced in its place; the namespace is refused until the
Lock is fixed. File sources have no invalid locks: an invalid file refuses to start the
proxy, and an invalid edit keeps the last good set.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from klockproxy.cluster.upstream import Upstream, UpstreamConfig, UpstreamStatusError
from klockproxy.core.engine import Engine
from klockproxy.core.errors import ConfigError, LockValidationError, UpstreamError
from klockproxy.core.locks import (
    GROUP,
    LOCK_FILE_SUFFIXES,
    VERSION,
    InvalidLock,
    Lock,
    claim_key,
    lock_file_steps,
    lock_from_object,
)
from klockproxy.loop_thread import cancel

logger = logging.getLogger(__name__)

T = TypeVar("T")
PLURAL = "locks"
CLUSTER_SPEC = "cluster"


class LockSource(Protocol):
    """Something that keeps a set of Locks up to date (and the invalid Lock objects it holds).

    ``on_change`` is called (on the event loop) when the set changes or the source becomes
    ready or unready. A source may also offer ``take_changes() -> set[str] | None`` (the
    namespaces changed since the last call; None: all) and ``namespace_locks(namespace)``,
    so that only what changed is rebuilt.
    """

    ready: bool
    on_change: Callable[[], None] | None

    @property
    def locks(self) -> tuple[Lock, ...]: ...
    @property
    def invalid(self) -> tuple[InvalidLock, ...]: ...

    async def start(self) -> None:
        """Begin loading; may return before the source is ready."""

    async def stop(self) -> None:
        """Stop watching; idempotent."""


def _count(n: int) -> str:
    return f"{n} lock" if n == 1 else f"{n} locks"


# ---------------------------------------------------------------------------------------------
# Files


@dataclass(frozen=True, slots=True)
class _FileStamp:
    mtime_ns: int
    size: int
    inode: int


async def _by_namespace(locks: Sequence[Lock], slicer: Slicer) -> dict[str, tuple[Lock, ...]]:
    grouped: dict[str, list[Lock]] = {}
    for n, lock in enumerate(locks):
        grouped.setdefault(lock.namespace, []).append(lock)
        if n % 1024 == 1023:
            await slicer.tick()
    return {namespace: tuple(ns_locks) for namespace, ns_locks in grouped.items()}


def _scan(paths: Sequence[Path]) -> tuple[dict[str, _FileStamp], str | None]:
    """Every lock file the paths name, with a cheap fingerprint; and a problem, if any (a
    named file missing, a directory unreadable): then the set cannot be trusted whole."""
    files: dict[str, _FileStamp] = {}
    for root in paths:
        try:
            if root.is_dir():
                found = sorted(
                    p for p in root.iterdir() if p.name.endswith(LOCK_FILE_SUFFIXES) and p.is_file()
                )
            else:
                found = [root]
        except OSError as e:
            return files, f"{root}: cannot list: {e.strerror or e}"
        for f in found:
            try:
                st = f.stat()
            except OSError as e:
                return files, f"{f}: {e.strerror or e}"
            files[str(f)] = _FileStamp(st.st_mtime_ns, st.st_size, st.st_ino)
    return files, None


class FileLockSource:
    """Locks from YAML/JSON files or directories, reloaded when they change.

    ``start()`` loads them once and raises ``LockValidationError`` if that first load fails
    (a proxy must not start with a broken lock file). Afterwards a poll every
    ``poll_interval`` seconds reloads what changed: only the files whose size, mtime or inode
    moved are read again, and only once they have held still for one poll (a file being
    written by ``gen > locks.yaml`` is not read half-way; one changing while it is read is
    read again later). Parsing runs on the event loop in slices, never for long at a time.
    An invalid edit keeps the last good set and logs why (file, document, lock and field,
    never the contents); so does a file that defines no Lock without saying so (``# no
    locks``): an emptied file is a half-written one far more often than a wish to unlock.
    """

    def __init__(
        self,
        paths: Sequence[Path | str],
        default_namespace: str = "default",
        poll_interval: float = 0.5,
    ) -> None:
        if not paths:
            raise ConfigError("FileLockSource needs at least one path")
        self.paths = tuple(Path(p) for p in paths)
        self.default_namespace = default_namespace
        self.poll_interval = poll_interval
        self.ready = False
        self.on_change: Callable[[], None] | None = None
        self.last_error: str | None = None
        self.name = ", ".join(str(p) for p in self.paths)
        # file -> (its fingerprint when read, its Locks)
        self._files: dict[str, tuple[_FileStamp, tuple[Lock, ...]]] = {}
        # namespace -> file -> that file's Locks of the namespace
        self._by_ns: dict[str, dict[str, tuple[Lock, ...]]] = {}
        self._changed: set[str] | None = None
        self._locks: tuple[Lock, ...] | None = ()
        # Locks a reload replaced, released by the LockSet a few at a time (``take_retired``).
        self._retired: list[Lock] = []
        # The scan a failed load saw: the same failure is not retried (or logged) again.
        self._failed: object = None
        # What the previous poll saw (a file is read once it held still for one poll).
        self._last_scan: object = None
        self._task: asyncio.Task[None] | None = None

    @property
    def locks(self) -> tuple[Lock, ...]:
        """Every Lock, file by file in path order."""
        if self._locks is None:
            self._locks = tuple(lock for _, locks in self._files.values() for lock in locks)
        return self._locks

    @property
    def invalid(self) -> tuple[InvalidLock, ...]:
        """Always empty: an invalid file is refused as a whole (see the class docstring)."""
        return ()

    def namespaces(self) -> list[str]:
        """The namespaces that hold Locks."""
        return list(self._by_ns)

    def namespace_locks(self, namespace: str) -> tuple[Lock, ...]:
        """The Locks of one namespace."""
        per_file = self._by_ns.get(namespace, {})
        return tuple(lock for locks in per_file.values() for lock in locks)

    def take_changes(self) -> set[str] | None:
        """The namespaces whose Locks changed since the last call (None: all of them)."""
        changed, self._changed = self._changed, set()
        return changed

    def take_retired(self) -> list[Lock]:
        """The Locks reloads replaced since the last call (see ``LockSet``: released in
        slices, not all at once)."""
        retired, self._retired = self._retired, []
        return retired

    def describe(self) -> str:
        """``2 locks from locks.yaml`` (for the ready line)."""
        return f"{_count(sum(len(locks) for _, locks in self._files.values()))} from {self.name}"

    async def start(self) -> None:
        """Load the files (raising on an invalid first load) and start polling."""
        if self._task is not None:
            return
        files, problem = _scan(self.paths)
        if problem is not None:
            raise LockValidationError(problem, source=self.name)
        await self._load(files, raise_errors=True)
        self.ready = True
        self._changed = None
        logger.info("loaded %s", self.describe())
        self._notify()
        self._task = asyncio.create_task(self._poll(), name="klockproxy-file-locks")

    async def stop(self) -> None:
        """Stop polling."""
        task, self._task = self._task, None
        await cancel(task)

    async def reload_if_changed(self) -> bool:
        """Reload now what changed; True when the lock set changed (a file rewritten with
        the same Locks, or only touched, changes nothing)."""
        files, problem = _scan(self.paths)
        if problem is not None:
            self._refuse((files, problem), problem)
            return False
        return await self._load(files, raise_errors=False)

    async def _load(self, files: dict[str, _FileStamp], *, raise_errors: bool) -> bool:
        changed = [f for f, stamp in files.items() if self._files.get(f, (None,))[0] != stamp]
        removed = [f for f in self._files if f not in files]
        if not changed and not removed:
            return False
        scan = tuple(files.items())
        if scan == self._failed:
            return False  # the same broken state: reported already
        with quiet_gc(sum(files[f].size for f in changed) // (QUIET_GC_BYTES // QUIET_GC_LOCKS)):
            replaced = await self._load_changed(files, changed, removed, scan, raise_errors)
        if not replaced or self.on_change is None:
            # No engine build follows to release them (see LockSet): the Locks just read
            # when they equal those held, or every Lock dropped when nobody builds.
            await release_slowly(
                self.take_retired(), Slicer(pause=SLICE_PAUSE if self.ready else 0.0)
            )
        return replaced

    async def _load_changed(
        self,
        files: dict[str, _FileStamp],
        changed: list[str],
        removed: list[str],
        scan: object,
        raise_errors: bool,
    ) -> bool:
        slicer = Slicer(pause=SLICE_PAUSE if self.ready else 0.0)
        loaded: dict[str, tuple[_FileStamp, tuple[Lock, ...]]] = {}
        try:
            for f in changed:
                try:
                    with open(f, encoding="utf-8") as fh:
                        text = fh.read()
                    after = os.stat(f)
                except (OSError, UnicodeDecodeError) as e:
                    raise LockValidationError(f"cannot read: {e}", source=f) from e
                if _FileStamp(after.st_mtime_ns, after.st_size, after.st_ino) != files[f]:
                    # Written to while read: read it once it holds still.
                    logger.debug("lock file %s changed while being read; later", f)
                    return False
                locks = await slicer.drive(
                    lock_file_steps(
                        text,
                        source=f,
                        default_namespace=self.default_namespace,
                        json=f.endswith(".json"),
                    )
                )
                loaded[f] = (files[f], tuple(locks))
            await self._check_duplicates(files, loaded, slicer)
        except LockValidationError as e:
            if raise_errors:
                raise
            self._refuse(scan, str(e))
            return False
        self._failed = None
        self.last_error = None
        return await self._apply(loaded, removed, slicer)

    async def _check_duplicates(
        self,
        files: dict[str, _FileStamp],
        loaded: dict[str, tuple[_FileStamp, tuple[Lock, ...]]],
        slicer: Slicer,
    ) -> None:
        """Two files defining the same Lock: one would silently replace the other."""
        origin: dict[str, str] = {}
        for f in files:  # in path order: the later file is the one named at fault
            _, locks = loaded.get(f) or self._files[f]
            for n, lock in enumerate(locks):
                claim_key(origin, lock, f)
                if n % 512 == 511:
                    await slicer.tick()
            await slicer.tick()

    async def _apply(
        self,
        loaded: dict[str, tuple[_FileStamp, tuple[Lock, ...]]],
        removed: list[str],
        slicer: Slicer,
    ) -> bool:
        changed = False
        for f in [*loaded, *removed]:
            _, old = self._files.get(f, (None, ()))
            _, new = loaded.get(f, (None, ()))
            old_by_ns = await _by_namespace(old, slicer)
            new_by_ns = await _by_namespace(new, slicer)
            file_changed = False
            for namespace in old_by_ns.keys() | new_by_ns.keys():
                old_locks = old_by_ns.get(namespace)
                ns_locks = new_by_ns.get(namespace)
                # The Locks dropped are retired: released a few at a time (see LockSet).
                if old_locks == ns_locks:
                    # The engine holds the Locks read before: they stay, those just read go.
                    self._retired.extend(ns_locks or ())
                    ns_locks = old_locks
                else:
                    # Only namespaces whose Locks differ are rebuilt in the engine (a touched
                    # or identically rewritten file rebuilds nothing).
                    self._touch(namespace)
                    changed = file_changed = True
                    self._retired.extend(old_locks or ())
                if ns_locks is not None:
                    self._by_ns.setdefault(namespace, {})[f] = ns_locks
                else:
                    per_file = self._by_ns[namespace]
                    per_file.pop(f, None)
                    if not per_file:
                        del self._by_ns[namespace]
                await slicer.tick()
            if not file_changed and f in loaded:
                loaded[f] = (loaded[f][0], old)
        for f in removed:
            del self._files[f]
        for f, entry in loaded.items():
            self._files[f] = entry
        # Keep the files in path order (a directory's files are read in name order).
        self._files = dict(sorted(self._files.items()))
        if not changed:
            logger.info("lock files rewritten, their Locks unchanged: nothing to rebuild")
            return False
        self._locks = None
        if self.ready:
            logger.info("reloaded %s", self.describe())
            self._notify()
        return True

    def _touch(self, namespace: str) -> None:
        if self._changed is not None:
            self._changed.add(namespace)

    def _refuse(self, scan: object, error: str) -> None:
        if scan == self._failed:
            return
        self._failed = scan
        # Keep enforcing the last good set: a half-saved or mistyped file must not drop
        # the locks. The error text names file/document/lock/field, not the contents.
        self.last_error = error
        logger.error(
            "invalid lock file, keeping the previous %s: %s",
            _count(sum(len(locks) for _, locks in self._files.values())),
            error,
        )

    async def poll_once(self) -> bool:
        """One poll: reload what changed if it held still since the previous poll.

        True when the lock set was replaced. A file that moved since the previous poll is
        left for the next one: ``gen > locks.yaml`` truncates the file, then writes it.
        """
        files, problem = _scan(self.paths)
        key = (tuple(files.items()), problem)
        if key != self._last_scan:
            self._last_scan = key
            return False
        return await self.reload_if_changed()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                await self.poll_once()
            except Exception:
                # The poller must survive anything (e.g. a permission change mid-read).
                logger.exception("lock file poll failed")

    def _notify(self) -> None:
        if self.on_change is not None:
            self.on_change()


# ---------------------------------------------------------------------------------------------
# Work on the event loop in bounded slices

# How long one slice of lock loading or engine building may hold the event loop before it
# lets requests run, and how long it then leaves the loop to them. Python threads would not
# help: pure-Python parsing in a thread holds the GIL and every request waits for it (issue
# 12 measured GETs falling from ~530/s to ~10/s). A request takes several turns of the loop
# (read, hooks, upstream, answer): a pause, not a single turn (``sleep(0)``), lets it make
# them all between two slices.
SLICE_SECONDS = 0.002
SLICE_PAUSE = 0.002


# How many replaced Locks are dropped between two looks at the slice's clock (well under a
# millisecond's worth).
RELEASE_STEP = 128

# From how many Locks on, loading or building runs under ``quiet_gc``.
QUIET_GC_LOCKS = 1000
# About how many bytes of a lock file make that many Locks (a short Lock is ~150 bytes).
QUIET_GC_BYTES = 100 * QUIET_GC_LOCKS
_quiet_gc_depth = 0
_quiet_gc_threshold: tuple[int, int, int] = (700, 10, 10)


@contextlib.contextmanager
def quiet_gc(locks: int) -> Iterator[None]:
    """Keep CPython's full garbage collections out of a load or build of many Locks.

    10,000 Locks with their engine are some 130,000 objects the cyclic garbage collector
    tracks. Making them makes it run a full collection, which walks every tracked object of
    the process at once: measured at 0.4 to 1.4 s on a busy machine, the one stall the slices
    cannot break up. Meanwhile only the young generations are collected (cheap, and they
    free what requests leave behind); at the end every surviving object is moved to the
    permanent generation (``gc.freeze()``), which full collections no longer walk. Loading
    Locks leaves no reference cycles behind, so a lock set that is replaced later is still
    freed (by reference counting). Below ``QUIET_GC_LOCKS`` Locks nothing changes.
    """
    global _quiet_gc_depth, _quiet_gc_threshold
    if locks < QUIET_GC_LOCKS:
        yield
        return
    if _quiet_gc_depth == 0:
        _quiet_gc_threshold = gc.get_threshold()
        young, middle, _ = _quiet_gc_threshold
        gc.set_threshold(young, middle, 1 << 30)
    _quiet_gc_depth += 1
    try:
        yield
    finally:
        _quiet_gc_depth -= 1
        if _quiet_gc_depth == 0:
            gc.freeze()
            gc.set_threshold(*_quiet_gc_threshold)


async def release_slowly(objects: list[Any], slicer: Slicer) -> None:
    """Drop ``objects`` (the caller's references to them: the list is emptied) a few at a
    time between slices: freeing thousands of Locks at once is a stall of its own."""
    while objects:
        del objects[-RELEASE_STEP:]
        await slicer.tick()


class Slicer:
    """Cooperative time slicing: ``await tick()`` pauses once a slice is used up.

    ``pause=0`` (nothing to share the loop with yet, e.g. the first load before the proxy
    serves) only yields one turn of the loop.
    """

    def __init__(self, budget: float = SLICE_SECONDS, pause: float = SLICE_PAUSE) -> None:
        self._budget = budget
        self._pause = pause
        self._loop = asyncio.get_running_loop()
        self._deadline = self._loop.time() + budget

    async def tick(self) -> None:
        """Let other tasks run if this slice has used its budget."""
        if self._loop.time() >= self._deadline:
            await asyncio.sleep(self._pause)
            self._deadline = self._loop.time() + self._budget

    async def drive(self, steps: Generator[None, None, T]) -> T:
        """Run a generator of bounded steps to its end, yielding between slices."""
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value
            await self.tick()


# ---------------------------------------------------------------------------------------------
# The cluster

LOCKS_PATH = f"/apis/{GROUP}/{VERSION}/{PLURAL}"
CRD_PATH = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{PLURAL}.{GROUP}"


def _resource_version(obj: Mapping[str, Any]) -> int | None:
    """The object's resourceVersion as a number (etcd's), None when it is not one."""
    meta = obj.get("metadata")
    rv = meta.get("resourceVersion") if isinstance(meta, dict) else None
    return int(rv) if isinstance(rv, str) and rv.isdigit() else None


class ClusterLockSource:
    """Locks from the cluster: list + watch of ``locks.klock.rnemet.dev`` in all namespaces.

    Runs on the event loop over the async ``Upstream`` (``Upstream.watch``: relists on 410
    Gone, reconnects with backoff; while it reconnects, the last listed set stays in force).
    Each watch event changes one Lock, and only its namespace is rebuilt in the engine; a
    relist of thousands of Locks is validated in slices between requests.

    ``ready`` turns true after the first successful list. A 404 to that list is looked into:
    no Lock CRD at all means "ready, zero locks" (and the source keeps looking, so that locks
    take effect as soon as somebody installs it); a CRD that exists but no longer serves
    ``klock.rnemet.dev/v1`` (a version upgrade), or one the proxy may not read, means the Locks
    cannot be known: the source is not ready, and every mutation is refused (fail closed).
    ``invalid`` holds the Lock objects that fail validation (each refuses its namespace).
    ``apply_written`` applies a Lock object a write through the proxy just returned, before
    the watch delivers it (read your own writes).
    """

    def __init__(
        self,
        upstream: Upstream,
        *,
        owns_upstream: bool = False,
        min_backoff: float = 0.25,
        max_backoff: float = 5.0,
        crd_retry_interval: float = 1.0,
        watch_timeout_seconds: int = 300,
    ) -> None:
        self.upstream = upstream
        # Close the client at stop() when this source made it (not when it is shared).
        self._owns_upstream = owns_upstream
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.crd_retry_interval = crd_retry_interval
        self.watch_timeout_seconds = watch_timeout_seconds
        self.ready = False
        self.on_change: Callable[[], None] | None = None
        self.crd_missing = False
        # Why the Locks cannot be known although the API server answers (fail closed).
        self.unknown_reason: str | None = None
        # Why the watch is cut (not ready until it resumes), if it is.
        self.cut_reason: str | None = None
        self.name = CLUSTER_SPEC
        self._task: asyncio.Task[None] | None = None
        # namespace -> name -> the Lock, or the invalid Lock (a key is in one of the two).
        self._by_ns: dict[str, dict[str, Lock]] = {}
        self._invalid_by_key: dict[str, InvalidLock] = {}
        # key -> resourceVersion of a Lock a write through the proxy returned: older watch
        # events for it are stale and skipped (the watch may lag behind the write).
        self._written: dict[str, int] = {}
        self._changed: set[str] | None = set()
        self._locks: tuple[Lock, ...] | None = ()
        self._invalid: tuple[InvalidLock, ...] | None = ()

    # -- what the LockSet reads ------------------------------------------------------------

    @property
    def locks(self) -> tuple[Lock, ...]:
        """The valid Locks, sorted by namespace/name."""
        if self._locks is None:
            self._locks = tuple(
                lock for ns in sorted(self._by_ns) for _, lock in sorted(self._by_ns[ns].items())
            )
        return self._locks

    @property
    def invalid(self) -> tuple[InvalidLock, ...]:
        """The invalid Lock objects, sorted by key."""
        if self._invalid is None:
            self._invalid = tuple(v for _, v in sorted(self._invalid_by_key.items()))
        return self._invalid

    def namespaces(self) -> list[str]:
        """The namespaces that hold (valid) Locks."""
        return list(self._by_ns)

    def namespace_locks(self, namespace: str) -> tuple[Lock, ...]:
        """The valid Locks of one namespace."""
        return tuple(self._by_ns.get(namespace, {}).values())

    def take_changes(self) -> set[str] | None:
        """The namespaces whose Locks changed since the last call (None: all of them)."""
        changed, self._changed = self._changed, set()
        return changed

    def describe(self) -> str:
        """``3 locks from cluster`` (for the ready line), naming invalid Locks if any."""
        if self.unknown_reason is not None:
            return f"cluster Locks unknown: {self.unknown_reason}"
        if self.cut_reason is not None:
            return f"cluster Locks unknown while the Lock watch is cut: {self.cut_reason}"
        suffix = " (Lock CRD not installed)" if self.crd_missing else ""
        if self.invalid:
            keys = ", ".join(bad.key for bad in self.invalid)
            suffix += f" and {len(self.invalid)} invalid refusing their namespace: {keys}"
        count = sum(len(per_ns) for per_ns in self._by_ns.values())
        return f"{_count(count)} from cluster{suffix}"

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the list/watch task (returns at once; ``ready`` follows the first list)."""
        if self._task is not None:
            return
        self._task = asyncio.create_task(self._run(), name="klockproxy-cluster-locks")

    async def stop(self) -> None:
        """Stop watching (and close the client if this source made it)."""
        task, self._task = self._task, None
        await cancel(task)
        if self._owns_upstream:
            await self.upstream.close()

    async def _run(self) -> None:
        while True:
            try:
                await self._follow()
            except UpstreamStatusError as e:
                if e.code != 404:
                    raise
                # The list is not served: is the CRD missing, or does it serve another version?
                await self._crd_absent_or_changed()
            except Exception:
                # The watch retries on its own; anything else is a bug: log it, start over.
                logger.exception("cluster lock source failed; starting over")
            await asyncio.sleep(self.crd_retry_interval)

    async def _follow(self) -> None:
        async for event in self.upstream.watch(
            LOCKS_PATH,
            min_backoff=self.min_backoff,
            max_backoff=self.max_backoff,
            timeout_seconds=self.watch_timeout_seconds,
        ):
            if event.type == "LISTED":
                if self.crd_missing or self.unknown_reason is not None:
                    logger.info("the Lock CRD serves %s/%s now", GROUP, VERSION)
                self.crd_missing = False
                self.unknown_reason = None
                # Before the source is ready nothing is served with its Locks: no pauses.
                slicer = Slicer(pause=SLICE_PAUSE if self.ready else 0.0)
                await self._replace_all(event.items, event.resource_version, slicer)
            elif event.type in ("ADDED", "MODIFIED"):
                if self._fresh(event.object):
                    self._upsert(event.object)
            elif event.type == "DELETED" and self._fresh(event.object):
                self._remove(_object_key(event.object))
            elif event.type == "DOWN":
                self._cut(event.error)
            elif event.type == "RESUMED":
                self._resumed()
            self._publish()

    async def _crd_absent_or_changed(self) -> None:
        try:
            crd = await self.upstream.get_object(CRD_PATH, {})
        except UpstreamStatusError as e:
            self._unknown(
                f"the Lock list is not served and the CRD {PLURAL}.{GROUP} cannot be read "
                f"(HTTP {e.code}: {e.message})"
            )
            return
        except UpstreamError as e:
            self._unknown(f"the CRD {PLURAL}.{GROUP} cannot be read: {e}")
            return
        if crd is None:
            if not self.crd_missing:
                logger.warning(
                    "the Lock CRD (%s.%s) is not installed: no cluster locks", PLURAL, GROUP
                )
            self.crd_missing = True
            self.unknown_reason = None
            self._clear()
            self.ready_now()
            return
        served = _served_versions(crd)
        if VERSION in served:
            # Just created (not Established yet) or being replaced: served in a moment. The
            # state stays as it was (no Locks could be stored before it is served).
            logger.info("the Lock CRD serves %s but the API server does not yet; retrying", VERSION)
            return
        self._unknown(
            f"the Lock CRD {PLURAL}.{GROUP} does not serve {VERSION} (it serves "
            f"{', '.join(served) or 'no version'}): Locks in other versions cannot be read"
        )

    def _unknown(self, reason: str) -> None:
        """The Locks cannot be known: not ready (every mutation refused), logged once."""
        if self.unknown_reason != reason:
            logger.error("%s; every mutation is refused until this is fixed", reason)
        self.unknown_reason = reason
        self.crd_missing = False
        self._clear()
        was_ready, self.ready = self.ready, False
        if was_ready:
            self._changed = None
            self._notify()

    def ready_now(self) -> None:
        """Mark ready and notify (a complete list, or the CRD found absent)."""
        self.cut_reason = None
        if not self.ready:
            self.ready = True
            logger.info("cluster lock source ready: %s", self.describe())
        self._notify()

    def _cut(self, error: str) -> None:
        """The watch lost the API server: Locks made meanwhile would go unseen, so the
        source is not ready (mutations refused) until the watch resumes or relists."""
        if not self.ready:
            return
        self.cut_reason = error
        self.ready = False
        logger.warning("the Lock watch is cut: mutations are refused until it resumes")
        self._notify()

    def _resumed(self) -> None:
        if self.cut_reason is not None and self.unknown_reason is None:
            logger.info("the Lock watch resumed: nothing was missed")
            self.ready_now()

    # -- state changes ---------------------------------------------------------------------

    def _fresh(self, obj: Mapping[str, Any]) -> bool:
        """False for a watch event older than what a write through the proxy returned."""
        key = _object_key(obj)
        written = self._written.get(key)
        if written is None:
            return True
        rv = _resource_version(obj)
        if rv is not None and rv < written:
            return False
        del self._written[key]
        return True

    def _touch(self, namespace: str) -> None:
        if self._changed is not None:
            self._changed.add(namespace)
        self._locks = None
        self._invalid = None

    def _clear(self) -> None:
        for namespace in list(self._by_ns):
            self._touch(namespace)
        for bad in self._invalid_by_key.values():
            self._touch(bad.namespace)
        self._forget_invalid(set(self._invalid_by_key))
        self._by_ns = {}
        self._invalid_by_key = {}
        self._written = {}

    async def _replace_all(
        self, items: Sequence[dict[str, Any]], resource_version: str, slicer: Slicer
    ) -> None:
        """A complete list: validate it in slices, then swap it in (changed namespaces only)."""
        with quiet_gc(len(items)):
            await self._replace_all_quietly(items, resource_version, slicer)

    async def _replace_all_quietly(
        self, items: Sequence[dict[str, Any]], resource_version: str, slicer: Slicer
    ) -> None:
        by_ns: dict[str, dict[str, Lock]] = {}
        invalid_by_key: dict[str, InvalidLock] = {}
        list_rv = int(resource_version) if resource_version.isdigit() else None
        kept = {
            key: rv for key, rv in self._written.items() if list_rv is not None and rv > list_rv
        }
        for obj in items:
            key = _object_key(obj)
            if key in kept:
                continue  # a write through the proxy newer than this list
            lock = self._validate(obj)
            if isinstance(lock, InvalidLock):
                invalid_by_key[lock.key] = lock
            else:
                by_ns.setdefault(lock.namespace, {})[lock.name] = lock
            await slicer.tick()
        for key in kept:
            namespace, _, name = key.partition("/")
            if (written := self._by_ns.get(namespace, {}).get(name)) is not None:
                by_ns.setdefault(namespace, {})[name] = written
            elif (bad := self._invalid_by_key.get(key)) is not None:
                invalid_by_key[key] = bad
        self._forget_invalid(set(self._invalid_by_key) - set(invalid_by_key))
        for namespace in set(by_ns) | set(self._by_ns):
            if by_ns.get(namespace) != self._by_ns.get(namespace):
                self._touch(namespace)
        for key in set(invalid_by_key) ^ set(self._invalid_by_key):
            self._touch(key.partition("/")[0])
        for key in set(invalid_by_key) & set(self._invalid_by_key):
            if invalid_by_key[key] != self._invalid_by_key[key]:
                self._touch(key.partition("/")[0])
        self._by_ns = by_ns
        self._invalid_by_key = invalid_by_key
        self._written = kept
        self.ready_now()

    def _upsert(self, obj: dict[str, Any]) -> None:
        lock = self._validate(obj)
        namespace = lock.namespace
        if isinstance(lock, InvalidLock):
            # Its previous, valid version is not what the cluster holds any more.
            self._drop_valid(namespace, lock.name)
            if self._invalid_by_key.get(lock.key) != lock:
                self._invalid_by_key[lock.key] = lock
                self._touch(namespace)
            return
        if self._invalid_by_key.pop(lock.key, None) is not None:
            self._forget_invalid({lock.key}, "fixed")
            self._touch(namespace)
        per_ns = self._by_ns.setdefault(namespace, {})
        if per_ns.get(lock.name) != lock:
            per_ns[lock.name] = lock
            self._touch(namespace)

    def _drop_valid(self, namespace: str, name: str) -> None:
        per_ns = self._by_ns.get(namespace)
        if per_ns is not None and per_ns.pop(name, None) is not None:
            if not per_ns:
                del self._by_ns[namespace]
            self._touch(namespace)

    def _remove(self, key: str) -> None:
        namespace, _, name = key.partition("/")
        self._drop_valid(namespace, name)
        if self._invalid_by_key.pop(key, None) is not None:
            self._forget_invalid({key}, "deleted")
            self._touch(namespace)

    def _publish(self) -> None:
        if self._changed is None or self._changed:
            self._notify()

    def _notify(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def apply_written(self, obj: Mapping[str, Any], *, deleted: bool) -> bool:
        """Apply a Lock object the API server returned for a write through the proxy.

        ``deleted``: the write was a DELETE (a Lock still held by finalizers, i.e. with a
        ``deletionTimestamp``, stays in force until the watch says it is gone). Returns True
        when the lock state changed; the watch delivers the same object later, and older
        watch events for it are skipped meanwhile.
        """
        if not self.ready or not isinstance(obj.get("metadata"), dict):
            return False
        key = _object_key(obj)
        rv = _resource_version(obj)
        if rv is not None:
            self._written[key] = rv
        if deleted:
            if obj["metadata"].get("deletionTimestamp"):
                return False
            self._remove(key)
        else:
            self._upsert(dict(obj))
        changed = self._changed is None or bool(self._changed)
        self._publish()
        return changed

    def _validate(self, obj: Mapping[str, Any]) -> Lock | InvalidLock:
        """The Lock, or the InvalidLock that refuses its namespace (logged once per fault)."""
        try:
            return lock_from_object(obj, source="cluster")
        except LockValidationError as e:
            meta = obj.get("metadata")
            meta = meta if isinstance(meta, dict) else {}
            bad = InvalidLock.from_error(
                str(meta.get("namespace") or ""), str(meta.get("name") or ""), e
            )
            if self._invalid_by_key.get(bad.key) != bad:
                # The fault names the field (and the lock's own offending word); never the
                # object itself.
                logger.error(
                    "invalid Lock %s in the cluster (%s): every mutation in namespace %s is "
                    "refused until it is fixed or deleted",
                    bad.key,
                    bad.reason,
                    bad.namespace,
                )
            return bad

    def _forget_invalid(self, keys: set[str], how: str = "fixed or deleted") -> None:
        for key in sorted(keys):
            logger.info("invalid Lock %s is %s: its namespace follows its locks again", key, how)


def _served_versions(crd: Mapping[str, Any]) -> list[str]:
    spec = crd.get("spec")
    versions = spec.get("versions") if isinstance(spec, dict) else None
    if not isinstance(versions, list):
        return []
    return [
        str(v.get("name"))
        for v in versions
        if isinstance(v, dict) and v.get("served", True) is not False
    ]


def _object_key(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


# ---------------------------------------------------------------------------------------------
# Combining sources


class LockSet:
    """Several lock sources behind one ``Engine``.

    ``engine`` is None until EVERY source is ready (the proxy then refuses mutations). When a
    source's locks change, only the namespaces that changed are rebuilt, on the event loop in
    slices of ``SLICE_SECONDS`` between requests, and the new engine is swapped in whole;
    changes that arrive meanwhile are coalesced into the next build. ``on_change`` (optional)
    is called after each swap. ``settled()`` waits until the engine reflects every change
    made so far (a Lock written through the proxy is in force before its response returns).
    """

    def __init__(self, sources: Sequence[LockSource]) -> None:
        self.sources = tuple(sources)
        self.engine: Engine | None = None
        self.on_change: Callable[[], None] | None = None
        self.builds = 0
        self._ready_event: asyncio.Event | None = None
        self._started = False
        self._task: asyncio.Task[None] | None = None
        # Namespaces changed since the last build (None: all); the last engine built.
        self._dirty: set[str] | None = None
        self._built: Engine | None = None
        self._pending = False
        for source in self.sources:
            source.on_change = self._changed
        if not self.sources:
            # No source at all is a valid, deliberate configuration: nothing is locked.
            self.engine = Engine(())

    @property
    def ready(self) -> bool:
        """Whether every source is ready (an engine exists)."""
        return self.engine is not None

    @property
    def lock_count(self) -> int:
        """How many locks all sources hold together."""
        return sum(len(s.locks) for s in self.sources)

    def describe(self) -> str:
        """``3 locks from cluster`` / ``1 lock from a.yaml, 0 locks from cluster``."""
        if not self.sources:
            return "no lock source"
        parts = []
        for s in self.sources:
            describe = getattr(s, "describe", None)
            parts.append(describe() if callable(describe) else f"{_count(len(s.locks))}")
        return ", ".join(parts)

    async def start(self) -> None:
        """Start every source (a FileLockSource raises here if its files are invalid).

        Idempotent: whoever starts the set first (serve.py or the addon) wins. Returns once
        the engine is built if every source is ready by then.
        """
        if self._started:
            return
        self._started = True
        if self._ready_event is None:
            self._ready_event = asyncio.Event()
        started: list[LockSource] = []
        try:
            for source in self.sources:
                await source.start()
                started.append(source)
        except BaseException:
            self._started = False
            for source in started:
                await source.stop()
            raise
        self._changed()
        await self.settled()

    async def stop(self) -> None:
        """Stop every source (idempotent)."""
        self._started = False
        for source in self.sources:
            await source.stop()
        task, self._task = self._task, None
        await cancel(task)

    async def wait_ready(self, timeout: float) -> bool:
        """Wait until every source is ready; False on timeout."""
        if self.ready:
            return True
        if self._ready_event is None:
            self._ready_event = asyncio.Event()
        try:
            await asyncio.wait_for(self._ready_event.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def settled(self) -> None:
        """Wait until the engine reflects every change the sources have reported."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    def apply_written(self, obj: Mapping[str, Any], *, deleted: bool) -> bool:
        """Hand a Lock object a write through the proxy returned to the cluster source(s).

        True when a source's locks changed (then ``await settled()`` before answering).
        """
        changed = False
        for source in self.sources:
            if isinstance(source, ClusterLockSource):
                changed = source.apply_written(obj, deleted=deleted) or changed
        return changed

    @property
    def watches_cluster(self) -> bool:
        """Whether a source follows the cluster's Lock objects (writes through the proxy count)."""
        return any(isinstance(s, ClusterLockSource) for s in self.sources)

    async def apply_write_response(self, verb: str, namespace: str, name: str, body: bytes) -> None:
        """Read your own writes: apply what the API server answered to a Lock write (2xx).

        ``verb`` is the request's (create, update, patch, delete, deletecollection); ``body``
        the answer: the Lock, the deleted Lock, a LockList of deleted Locks, or a Status of
        a deletion (then ``namespace``/``name`` from the request name the Lock). Returns once
        the engine enforces it, so the write's response reaches the client after that.
        """
        deleted = verb in ("delete", "deletecollection")
        try:
            answer = json.loads(body) if body else None
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            logger.warning("a Lock %s answer is not a JSON object: the watch will apply it", verb)
            return
        kind = answer.get("kind")
        items: list[Any]
        if kind == "Status":
            if not (deleted and name and answer.get("status") == "Success"):
                return
            items = [{"metadata": {"namespace": namespace, "name": name}}]
        elif isinstance(kind, str) and kind.endswith("List"):
            raw = answer.get("items")
            items = raw if isinstance(raw, list) else []
        else:
            items = [answer]
        changed = False
        for item in items:
            if isinstance(item, dict) and isinstance(item.get("metadata"), dict):
                changed = self.apply_written(item, deleted=deleted) or changed
        if changed:
            await self.settled()

    def _changed(self) -> None:
        """A source reported a change: schedule a build (coalesced with any running one)."""
        self._pending = True
        if self._task is None or self._task.done():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._task = loop.create_task(self._build(), name="klockproxy-engine-build")

    def _collect(self) -> set[str] | None:
        """Merge every source's changed namespaces (None: rebuild everything)."""
        dirty: set[str] | None = set()
        for source in self.sources:
            take = getattr(source, "take_changes", None)
            changes = take() if callable(take) else None
            if changes is None or dirty is None:
                dirty = None
            else:
                dirty |= changes
        return dirty

    def _namespace_locks(self, namespace: str) -> list[Lock]:
        return [lock for s in self.sources for lock in _source_namespace_locks(s, namespace)]

    async def _build(self) -> None:
        # One turn of the loop first: a burst of watch events is handled as one change.
        await asyncio.sleep(0)
        # The first build has no engine to serve meanwhile: no pauses (start time).
        slicer = Slicer(pause=SLICE_PAUSE if self.engine is not None else 0.0)
        while self._pending:
            self._pending = False
            dirty = self._collect()
            # Changes add up while a source is not ready (say, its watch is cut): the build
            # that follows starts from the last engine built and rebuilds only those.
            self._dirty = None if dirty is None or self._dirty is None else self._dirty | dirty
            if not all(s.ready for s in self.sources):
                if self._ready_event is not None:
                    self._ready_event.clear()
                if self.engine is not None:
                    self.engine = None
                    self._notify()
                continue
            base = self._built
            pending, self._dirty = self._dirty, set()
            if base is None or pending is None:
                base = None
                namespaces = {ns for s in self.sources for ns in _source_namespaces(s)}
            else:
                namespaces = pending
            changed: dict[str, list[Lock]] = {}
            for ns in sorted(namespaces):
                changed[ns] = self._namespace_locks(ns)
                await slicer.tick()
            invalid = [bad for s in self.sources for bad in s.invalid]
            with quiet_gc(sum(len(locks) for locks in changed.values())):
                engine = await slicer.drive(Engine.build(base, changed, invalid))
            # The engine replaced must go with the swap below, not with this function's end:
            # until ``_release_retired`` has dropped its Locks a few at a time, they die with it.
            base = None
            self._built = engine
            # Changes made during the build are in the sources' change sets: the next turn
            # of this loop rebuilds their namespaces on top of this engine.
            if not all(s.ready for s in self.sources):
                continue
            self.engine = engine
            self.builds += 1
            if self._ready_event is not None:
                self._ready_event.set()
            self._notify()
            await self._release_retired(slicer)

    async def _release_retired(self, slicer: Slicer) -> None:
        """Drop the Locks reloads replaced, a slice at a time. Held by nothing else once the
        engine that used them is gone, 10,000 Locks freed at once (their expressions, sets,
        strings) hold the event loop for some 15 ms: the one long stall of a reload."""
        retired: list[Lock] = []
        for source in self.sources:
            take = getattr(source, "take_retired", None)
            if callable(take):
                retired.extend(take())
        await release_slowly(retired, slicer)

    def _notify(self) -> None:
        if self.on_change is not None:
            self.on_change()


def _source_namespaces(source: LockSource) -> Iterator[str]:
    names = getattr(source, "namespaces", None)
    if callable(names):
        yield from names()
    else:
        yield from {lock.namespace for lock in source.locks}


def _source_namespace_locks(source: LockSource, namespace: str) -> Sequence[Lock]:
    per_ns = getattr(source, "namespace_locks", None)
    if callable(per_ns):
        result: Sequence[Lock] = per_ns(namespace)
        return result
    return [lock for lock in source.locks if lock.namespace == namespace]


def create_lock_sources(
    specs: Sequence[str],
    config: UpstreamConfig | Upstream | None,
    default_namespace: str = "default",
    *,
    poll_interval: float = 0.5,
) -> LockSet:
    """A LockSet from specs: ``"cluster"`` (needs ``config``) and/or file or directory paths.

    ``config`` may be the ``Upstream`` the caller already uses, so that lookups and the lock
    watch share one client.

    Paths are checked to exist now (a typo must fail at start, not leave every mutation
    refused). Raises ConfigError.
    """
    sources: list[LockSource] = []
    paths: list[Path] = []
    seen_cluster = False
    for spec in specs:
        spec = spec.strip()
        if not spec:
            continue
        if spec == CLUSTER_SPEC:
            if seen_cluster:
                continue
            if config is None:
                raise ConfigError("lock source 'cluster' needs an API server to watch")
            seen_cluster = True
            if isinstance(config, Upstream):
                sources.append(ClusterLockSource(config))
            else:
                sources.append(ClusterLockSource(Upstream(config), owns_upstream=True))
        else:
            path = Path(os.path.expanduser(spec))
            if not path.exists():
                raise ConfigError(f"lock source {spec!r}: no such file or directory")
            paths.append(path)
    if paths:
        sources.insert(0, FileLockSource(paths, default_namespace, poll_interval))
    return LockSet(sources)
