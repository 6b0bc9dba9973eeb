"""Where the proxy's Locks come from: lock files (reloaded on change) and the cluster itself.

A lock source keeps a tuple of validated ``Lock`` objects up to date and calls ``on_change``
(on the event loop) whenever that tuple changes or the source becomes ready. ``LockSet``
combines sources and exposes one ``Engine``, or ``None`` until every source is ready: the
proxy refuses mutations while the lock state is unknown (fail closed).

- ``FileLockSource`` polls the files' size/mtime/inode (cheap, works on every filesystem and
  with editors that replace files). An invalid edit keeps the last good set and logs why
  (the error names file, document, lock and field, never the file contents).
- ``ClusterLockSource`` lists and watches ``locks.klock.rnemet.dev`` in all namespaces with the
  official (synchronous) kubernetes client in a thread, and hands every new lock set to the
  loop with ``call_soon_threadsafe``. It reconnects with backoff and relists on 410 Gone or any
  error; while it reconnects, the last listed set stays in force. A missing CRD means "ready,
  zero locks", and the source keeps retrying so that locks appear as soon as the CRD is
  installed.

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
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from klockproxy.core.engine import Engine
from klockproxy.core.errors import ConfigError, LockValidationError, UpstreamError
from klockproxy.core.locks import (
    GROUP,
    LOCK_FILE_SUFFIXES,
    VERSION,
    InvalidLock,
    Lock,
    load_locks_from_path,
    lock_from_object,
)

logger = logging.getLogger(__name__)

PLURAL = "locks"
CLUSTER_SPEC = "cluster"


class LockSource(Protocol):
    """Something that keeps a set of Locks up to date (and the invalid Lock objects it holds)."""

    ready: bool
    locks: tuple[Lock, ...]
    invalid: tuple[InvalidLock, ...]
    on_change: Callable[[], None] | None

    async def start(self) -> None:
        """Begin loading; may return before the source is ready."""

    async def stop(self) -> None:
        """Stop watching; idempotent."""


class UpstreamSettings(Protocol):
    """What the cluster source needs to reach the API server (``upstream.UpstreamConfig``)."""

    @property
    def server(self) -> str: ...
    @property
    def ca_file(self) -> str | None: ...
    @property
    def token_file(self) -> str | None: ...
    @property
    def client_cert_file(self) -> str | None: ...
    @property
    def client_key_file(self) -> str | None: ...
    @property
    def insecure(self) -> bool: ...


def _count(n: int) -> str:
    return f"{n} lock" if n == 1 else f"{n} locks"


# ---------------------------------------------------------------------------------------------
# Files


@dataclass(frozen=True, slots=True)
class _FileStamp:
    path: str
    mtime_ns: int
    size: int
    inode: int


def _stamps(paths: Sequence[Path]) -> tuple[_FileStamp | str, ...]:
    """A cheap fingerprint of every file that would be loaded (a missing path is its name)."""
    out: list[_FileStamp | str] = []
    for root in paths:
        try:
            if root.is_dir():
                files = sorted(
                    p for p in root.iterdir() if p.name.endswith(LOCK_FILE_SUFFIXES) and p.is_file()
                )
            else:
                files = [root]
        except OSError:
            out.append(f"unreadable:{root}")
            continue
        for f in files:
            try:
                st = f.stat()
            except OSError:
                out.append(f"missing:{f}")
                continue
            out.append(_FileStamp(str(f), st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


def _load_paths(paths: Sequence[Path], default_namespace: str) -> tuple[Lock, ...]:
    locks: list[Lock] = []
    origin: dict[str, Path] = {}
    for path in paths:
        for lock in load_locks_from_path(path, default_namespace=default_namespace):
            if lock.key in origin:
                raise LockValidationError(
                    f"duplicate lock {lock.key} (also in {origin[lock.key]})",
                    source=str(path),
                    lock=lock.key,
                )
            origin[lock.key] = path
            locks.append(lock)
    return tuple(locks)


class FileLockSource:
    """Locks from YAML/JSON files or directories, reloaded when they change.

    ``start()`` loads them once and raises ``LockValidationError`` if that first load fails
    (a proxy must not start with a broken lock file). Afterwards a poll every
    ``poll_interval`` seconds reloads on any change; an invalid edit keeps the last good set.
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
        self.locks: tuple[Lock, ...] = ()
        # Always empty: an invalid file is refused as a whole (see the class docstring).
        self.invalid: tuple[InvalidLock, ...] = ()
        self.on_change: Callable[[], None] | None = None
        self.last_error: str | None = None
        self.name = ", ".join(str(p) for p in self.paths)
        self._stamps: tuple[_FileStamp | str, ...] = ()
        self._task: asyncio.Task[None] | None = None

    def describe(self) -> str:
        """``2 locks from locks.yaml`` (for the ready line)."""
        return f"{_count(len(self.locks))} from {self.name}"

    async def start(self) -> None:
        """Load the files (raising on an invalid first load) and start polling."""
        if self._task is not None:
            return
        self._stamps = _stamps(self.paths)
        self.locks = await asyncio.to_thread(_load_paths, self.paths, self.default_namespace)
        self.ready = True
        logger.info("loaded %s", self.describe())
        self._notify()
        self._task = asyncio.create_task(self._poll(), name="klockproxy-file-locks")

    async def stop(self) -> None:
        """Stop polling."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def reload_if_changed(self) -> bool:
        """Reload now if any file changed; True when the lock set was replaced."""
        stamps = _stamps(self.paths)
        if stamps == self._stamps:
            return False
        self._stamps = stamps
        try:
            locks = await asyncio.to_thread(_load_paths, self.paths, self.default_namespace)
        except LockValidationError as e:
            # Keep enforcing the last good set: a half-saved or mistyped file must not drop
            # the locks. The error text names file/document/lock/field, not the contents.
            self.last_error = str(e)
            logger.error(
                "invalid lock file, keeping the previous %s: %s", _count(len(self.locks)), e
            )
            return False
        self.last_error = None
        self.locks = locks
        logger.info("reloaded %s", self.describe())
        self._notify()
        return True

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                await self.reload_if_changed()
            except Exception:
                # The poller must survive anything (e.g. a permission change mid-read).
                logger.exception("lock file poll failed")

    def _notify(self) -> None:
        if self.on_change is not None:
            self.on_change()


# ---------------------------------------------------------------------------------------------
# The cluster


class _Stopped(Exception):
    """The watch thread was asked to stop."""


class ClusterLockSource:
    """Locks from the cluster: list + watch of ``locks.klock.rnemet.dev`` in all namespaces.

    The official kubernetes client is synchronous, so the list/watch loop runs in a daemon
    thread and hands each new lock set to the event loop. ``ready`` turns true after the first
    successful list (or a 404: the CRD is not installed, which means zero locks). ``invalid``
    holds the Lock objects that fail validation (see the module docstring: each refuses its
    namespace).
    """

    def __init__(
        self,
        config: UpstreamSettings,
        *,
        max_backoff: float = 5.0,
        crd_retry_interval: float = 1.0,
        watch_timeout_seconds: int = 300,
    ) -> None:
        self.config = config
        self.max_backoff = max_backoff
        self.crd_retry_interval = crd_retry_interval
        self.watch_timeout_seconds = watch_timeout_seconds
        self.ready = False
        self.locks: tuple[Lock, ...] = ()
        self.invalid: tuple[InvalidLock, ...] = ()
        self.on_change: Callable[[], None] | None = None
        self.crd_missing = False
        self.name = CLUSTER_SPEC
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._resp_lock = threading.Lock()
        self._resp: Any = None
        # Thread-owned state: namespace/name -> the Lock, or the invalid Lock (a key is in
        # at most one of the two).
        self._by_key: dict[str, Lock] = {}
        self._invalid_by_key: dict[str, InvalidLock] = {}

    def describe(self) -> str:
        """``3 locks from cluster`` (for the ready line), naming invalid Locks if any."""
        suffix = " (Lock CRD not installed)" if self.crd_missing else ""
        if self.invalid:
            keys = ", ".join(bad.key for bad in self.invalid)
            suffix += f" and {len(self.invalid)} invalid refusing their namespace: {keys}"
        return f"{_count(len(self.locks))} from cluster{suffix}"

    async def start(self) -> None:
        """Start the list/watch thread (returns at once; ``ready`` follows the first list)."""
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name="klockproxy-cluster-locks", daemon=True
        )
        self._thread.start()

    async def stop(self) -> None:
        """Stop the thread, interrupting a blocked watch read."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        self._interrupt()
        await asyncio.to_thread(thread.join, 2.0)
        if thread.is_alive():
            logger.warning("cluster lock watch did not stop within 2 s (daemon thread left)")

    # -- thread side ---------------------------------------------------------------------

    def _interrupt(self) -> None:
        with self._resp_lock:
            resp = self._resp
        if resp is None:
            return
        # shutdown(SHUT_RD) wakes a recv blocked in another thread; close() alone would not.
        with contextlib.suppress(Exception):
            resp.shutdown()

    def _api(self) -> Any:
        from kubernetes import client

        cfg = client.Configuration()
        cfg.host = self.config.server.rstrip("/")
        cfg.verify_ssl = not self.config.insecure
        if self.config.ca_file:
            cfg.ssl_ca_cert = self.config.ca_file
        if self.config.client_cert_file:
            cfg.cert_file = self.config.client_cert_file
        if self.config.client_key_file:
            cfg.key_file = self.config.client_key_file
        if self.config.token_file:
            # Re-read on every (re)connect: projected service account tokens rotate.
            try:
                token = Path(self.config.token_file).read_text().strip()
            except OSError as e:
                raise UpstreamError(f"cannot read token file {self.config.token_file}: {e}") from e
            cfg.api_key = {"authorization": token}
            cfg.api_key_prefix = {"authorization": "Bearer"}
        return client.CustomObjectsApi(client.ApiClient(cfg))

    def _run(self) -> None:
        from kubernetes.client.exceptions import ApiException

        backoff = 0.25
        while not self._stop.is_set():
            api: Any = None
            try:
                api = self._api()
                rv = self._list(api)
                backoff = 0.25
                if rv is None:
                    # No CRD: ready with zero locks, but look again soon so that locks
                    # take effect as soon as somebody installs it.
                    self._stop.wait(self.crd_retry_interval)
                    continue
                self._watch(api, rv)
            except _Stopped:
                break
            except ApiException as e:
                if e.status == 410:
                    logger.info("lock watch expired (410 Gone): relisting")
                    continue
                logger.warning(
                    "cluster lock source: API server answered %s %s; retrying in %.1f s",
                    e.status,
                    e.reason,
                    backoff,
                )
            except Exception as e:
                if self._stop.is_set():
                    break
                logger.warning(
                    "cluster lock source: %s: %s; retrying in %.1f s",
                    type(e).__name__,
                    e,
                    backoff,
                )
            finally:
                if api is not None:
                    # One client per (re)connect: release its connection pool each time.
                    with contextlib.suppress(Exception):
                        api.api_client.close()
            self._stop.wait(backoff)
            backoff = min(backoff * 2, self.max_backoff)

    def _list(self, api: Any) -> str | None:
        """List every Lock; returns the list's resourceVersion, or None when the CRD is absent."""
        from kubernetes.client.exceptions import ApiException

        try:
            result = api.list_cluster_custom_object(
                GROUP, VERSION, PLURAL, _request_timeout=(5, 30)
            )
        except ApiException as e:
            if e.status == 404:
                if not self.crd_missing:
                    logger.warning(
                        "the Lock CRD (locks.%s) is not installed: no cluster locks", GROUP
                    )
                self.crd_missing = True
                self._by_key = {}
                self._forget_invalid(set(self._invalid_by_key))
                self._invalid_by_key = {}
                self._publish()
                return None
            raise
        if self.crd_missing:
            logger.info("the Lock CRD is installed now")
        self.crd_missing = False
        by_key: dict[str, Lock] = {}
        invalid_by_key: dict[str, InvalidLock] = {}
        for obj in result.get("items") or []:
            lock = self._validate(obj)
            if isinstance(lock, InvalidLock):
                invalid_by_key[lock.key] = lock
            else:
                by_key[lock.key] = lock
        self._forget_invalid(set(self._invalid_by_key) - set(invalid_by_key))
        self._by_key = by_key
        self._invalid_by_key = invalid_by_key
        self._publish()
        rv = str((result.get("metadata") or {}).get("resourceVersion") or "")
        return rv

    def _watch(self, api: Any, rv: str) -> None:
        """Follow the watch from ``rv`` until it ends (returns) or fails (raises)."""
        from kubernetes.client.exceptions import ApiException

        while not self._stop.is_set():
            resp = api.list_cluster_custom_object(
                GROUP,
                VERSION,
                PLURAL,
                watch=True,
                resource_version=rv,
                allow_watch_bookmarks=True,
                timeout_seconds=self.watch_timeout_seconds,
                _preload_content=False,
                _request_timeout=(5, self.watch_timeout_seconds + 30),
            )
            with self._resp_lock:
                self._resp = resp
            try:
                if self._stop.is_set():
                    raise _Stopped
                for line in _lines(resp):
                    if self._stop.is_set():
                        raise _Stopped
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    kind = event.get("type")
                    obj = event.get("object") or {}
                    if kind == "ERROR":
                        code = int(obj.get("code") or 500)
                        raise ApiException(status=code, reason=str(obj.get("reason") or ""))
                    new_rv = (obj.get("metadata") or {}).get("resourceVersion")
                    if new_rv:
                        rv = str(new_rv)
                    if kind in ("ADDED", "MODIFIED"):
                        self._upsert(obj)
                    elif kind == "DELETED":
                        key = _object_key(obj)
                        self._by_key.pop(key, None)
                        if self._invalid_by_key.pop(key, None) is not None:
                            self._forget_invalid({key}, "deleted")
                        self._publish()
            finally:
                with self._resp_lock:
                    self._resp = None
                with contextlib.suppress(Exception):
                    resp.close()
                with contextlib.suppress(Exception):
                    resp.release_conn()
            if self._stop.is_set():
                raise _Stopped
            # The server ended the watch (timeout_seconds): resume from the last version.

    def _validate(self, obj: dict[str, Any]) -> Lock | InvalidLock:
        """The Lock, or the InvalidLock that refuses its namespace (logged once per fault)."""
        obj.setdefault("apiVersion", f"{GROUP}/{VERSION}")
        obj.setdefault("kind", "Lock")
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

    def _upsert(self, obj: dict[str, Any]) -> None:
        lock = self._validate(obj)
        if isinstance(lock, InvalidLock):
            # Its previous, valid version is not what the cluster holds any more.
            self._by_key.pop(lock.key, None)
            if self._invalid_by_key.get(lock.key) == lock:
                return
            self._invalid_by_key[lock.key] = lock
            self._publish()
            return
        if self._invalid_by_key.pop(lock.key, None) is not None:
            self._forget_invalid({lock.key}, "fixed")
        elif self._by_key.get(lock.key) == lock:
            return
        self._by_key[lock.key] = lock
        self._publish()

    def _publish(self) -> None:
        locks = tuple(sorted(self._by_key.values(), key=lambda lock: lock.key))
        invalid = tuple(sorted(self._invalid_by_key.values(), key=lambda bad: bad.key))
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._apply, locks, invalid)

    # -- loop side -------------------------------------------------------------------------

    def _apply(self, locks: tuple[Lock, ...], invalid: tuple[InvalidLock, ...] = ()) -> None:
        changed = not self.ready or locks != self.locks or invalid != self.invalid
        self.locks = locks
        self.invalid = invalid
        if not self.ready:
            self.ready = True
            logger.info("cluster lock source ready: %s", self.describe())
        if changed and self.on_change is not None:
            self.on_change()


def _object_key(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def _lines(resp: Any) -> Iterator[str]:
    buffer = bytearray()
    for chunk in resp.stream(amt=None, decode_content=True):
        buffer.extend(chunk)
        while (nl := buffer.find(b"\n")) != -1:
            line = bytes(buffer[:nl])
            del buffer[: nl + 1]
            yield line.decode("utf-8", errors="replace")
    if buffer:
        yield bytes(buffer).decode("utf-8", errors="replace")


# ---------------------------------------------------------------------------------------------
# Combining sources


class LockSet:
    """Several lock sources behind one ``Engine``.

    ``engine`` is None until EVERY source is ready (the proxy then refuses mutations), and is
    rebuilt whenever a source's locks (or invalid Locks) change. ``on_change`` (optional) is
    called afterwards.
    """

    def __init__(self, sources: Sequence[LockSource]) -> None:
        self.sources = tuple(sources)
        self.engine: Engine | None = None
        self.on_change: Callable[[], None] | None = None
        self._ready_event: asyncio.Event | None = None
        self._started = False
        for source in self.sources:
            source.on_change = self._rebuild
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

        Idempotent: whoever starts the set first (serve.py or the addon) wins.
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
        self._rebuild()

    async def stop(self) -> None:
        """Stop every source (idempotent)."""
        self._started = False
        for source in self.sources:
            await source.stop()

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

    def _rebuild(self) -> None:
        if all(s.ready for s in self.sources):
            self.engine = Engine(
                (lock for s in self.sources for lock in s.locks),
                invalid=(bad for s in self.sources for bad in s.invalid),
            )
            if self._ready_event is not None:
                self._ready_event.set()
        else:
            self.engine = None
        if self.on_change is not None:
            self.on_change()


def create_lock_sources(
    specs: Sequence[str],
    config: UpstreamSettings | None,
    default_namespace: str = "default",
    *,
    poll_interval: float = 0.5,
) -> LockSet:
    """A LockSet from specs: ``"cluster"`` (needs ``config``) and/or file or directory paths.

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
            sources.append(ClusterLockSource(config))
        else:
            path = Path(os.path.expanduser(spec))
            if not path.exists():
                raise ConfigError(f"lock source {spec!r}: no such file or directory")
            paths.append(path)
    if paths:
        sources.insert(0, FileLockSource(paths, default_namespace, poll_interval))
    return LockSet(sources)
