"""Async lookups against the Kubernetes API server (aiohttp client).

The proxy reads the current object, lists what a deletecollection would delete and asks who a
request runs as. These lookups happen inside mitmproxy hooks, so they must never block the
event loop: the official kubernetes client is synchronous, hence aiohttp here.

Every lookup is sent AS THE CALLER: the caller's ``Authorization`` and ``Impersonate-*``
headers go along, so the API server applies the caller's RBAC. When the proxy itself holds the
credentials (local mode, ``token_file`` / client certificate) and the headers carry no
``Authorization``, the proxy's own bearer token is attached.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import ssl
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import aiohttp
from yarl import URL

from klockproxy.cluster.identity import ReviewRefused
from klockproxy.core.errors import ConfigError, UpstreamError
from klockproxy.core.status import REASON_FOR_CODE, Status, failure
from klockproxy.core.types import UserInfo

logger = logging.getLogger(__name__)

# Big enough for any object the API server returns in one page, small enough to bound the
# number of round trips a deletecollection check costs.
LIST_PAGE_SIZE = 500

METADATA_ONLY_ACCEPT = (
    "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io,application/json"
)
# Watch events of a metadata-only watch carry PartialObjectMetadata (not ...List).
METADATA_ONLY_WATCH_ACCEPT = (
    "application/json;as=PartialObjectMetadata;v=v1;g=meta.k8s.io,application/json"
)

# How long the API server keeps one watch request open before ending it (the watch then
# resumes from the last resourceVersion seen), and how much longer the client waits for a
# byte before it calls the connection dead.
WATCH_TIMEOUT_SECONDS = 300
WATCH_READ_GRACE = 30.0
# A watch event is one JSON line; a line longer than this is refused (the connection is
# dropped and the watch resumes) rather than buffered without bound.
MAX_WATCH_LINE = 16 * 1024 * 1024

SELF_SUBJECT_REVIEW_PATHS = (
    "/apis/authentication.k8s.io/v1/selfsubjectreviews",
    # Clusters older than 1.28 only serve the beta version.
    "/apis/authentication.k8s.io/v1beta1/selfsubjectreviews",
)


@dataclass(frozen=True)
class UpstreamConfig:
    """Where the API server is and how the proxy authenticates its own lookups."""

    server: str
    ca_file: str | None = None
    token_file: str | None = None
    client_cert_file: str | None = None
    client_key_file: str | None = None
    insecure: bool = False


class UpstreamStatusError(ReviewRefused):
    """The API server answered, but not with what was asked for (``code`` is its HTTP code).

    ``status`` is the whole Status the API server sent (one is made up from the code when the
    answer was not a Status), ``message`` its message: the API server's own words (e.g. an
    RBAC refusal), safe to show to the caller.
    """

    def __init__(self, what: str, code: int, message: str, status: Status | None = None) -> None:
        super().__init__(what, code, message)
        self.status: Status = status if status is not None else failure(code, message)

    @classmethod
    def from_answer(cls, what: str, code: int, body: bytes) -> UpstreamStatusError:
        """The error for an answer ``code`` with ``body`` (a Status, usually)."""
        status = _status_of(body, code)
        return cls(what, code, status["message"] if status else _status_message(body), status)


class WatchExpired(UpstreamStatusError):
    """The watch's resourceVersion is too old (410 Gone): the collection must be listed again."""


WatchEventType = Literal["LISTED", "ADDED", "MODIFIED", "DELETED", "DOWN", "RESUMED"]


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One event of ``Upstream.watch``.

    - ``LISTED``: a complete list of the collection (``items``) at ``resource_version``;
      whatever the consumer knew before is replaced by it. Sent first when the watch starts
      without a resourceVersion, and again after 410 Gone.
    - ``ADDED`` / ``MODIFIED`` / ``DELETED``: ``object`` as the API server sent it.
    - ``DOWN``: the watch lost the API server (``error`` says why, with no credentials); it is
      retried with backoff and, once it is back, resumes (``RESUMED``, then further events:
      nothing was missed) or lists again (``LISTED``). Sent once per outage, not per retry.
    - ``RESUMED``: after ``DOWN``, the API server accepted the watch from the last
      resourceVersion seen (``resource_version``).

    Bookmarks are consumed by the iterator (they only move ``resource_version``).
    """

    type: WatchEventType
    object: dict[str, Any] = field(default_factory=dict)
    items: tuple[dict[str, Any], ...] = ()
    resource_version: str = ""
    error: str = ""


class TokenFile:
    """A bearer token file, re-read when it changes (projected tokens rotate)."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._stamp: tuple[int, int] | None = None
        self._token = ""

    def token(self) -> str:
        """The current token; raises ConfigError when the file cannot be read or is empty."""
        try:
            st = os.stat(self._path)
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp != self._stamp:
                with open(self._path, encoding="utf-8") as fh:
                    self._token = fh.read().strip()
                self._stamp = stamp
        except OSError as e:
            raise ConfigError(f"cannot read the upstream token file {self._path}: {e}") from e
        if not self._token:
            raise ConfigError(f"the upstream token file {self._path} is empty")
        return self._token


def build_ssl_context(config: UpstreamConfig) -> ssl.SSLContext:
    """The TLS context for talking to the API server, from the config's CA and client cert."""
    try:
        ctx = ssl.create_default_context(cafile=config.ca_file)
        if config.client_cert_file:
            ctx.load_cert_chain(config.client_cert_file, config.client_key_file)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"cannot load the upstream TLS material: {e}") from e
    if config.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _status_of(body: bytes, code: int) -> Status | None:
    """The API server's Status in ``body`` (kind Status, a message), None for anything else."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not (
        isinstance(data, dict)
        and data.get("kind") == "Status"
        and isinstance(data.get("message"), str)
    ):
        return None
    reason = data.get("reason")
    status = failure(
        code,
        data["message"],
        reason if isinstance(reason, str) else REASON_FOR_CODE.get(code, ""),
    )
    details = data.get("details")
    if isinstance(details, dict):
        status["details"] = details  # type: ignore[typeddict-item]
    return status


def _status_message(body: bytes) -> str:
    """The ``message`` of a Kubernetes Status body, or a short neutral description."""
    try:
        data = json.loads(body)
    except ValueError:
        return f"non-JSON answer ({len(body)} bytes)"
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        return str(data["message"])
    return "no Status message"


def _selector_query(label_selector: str | None, field_selector: str | None) -> dict[str, str]:
    """The query parameters of a list's or a watch's selectors (none when empty)."""
    query = {}
    if label_selector:
        query["labelSelector"] = label_selector
    if field_selector:
        query["fieldSelector"] = field_selector
    return query


@contextlib.contextmanager
def _connection_errors(what: str, lost: str) -> Iterator[None]:
    """aiohttp's and the socket's errors as UpstreamError: TLS trouble, or ``lost``."""
    try:
        yield
    except (aiohttp.ClientSSLError, ssl.SSLError) as e:
        raise UpstreamError(f"{what}: TLS with the API server failed: {e}") from e
    except (aiohttp.ClientError, TimeoutError, OSError) as e:
        reason = str(e) or type(e).__name__
        raise UpstreamError(f"{what}: {lost}: {reason}") from e


def _has_authorization(caller: Mapping[str, str | Sequence[str]]) -> bool:
    return any(name.lower() == "authorization" for name in caller)


class Upstream:
    """One pooled aiohttp session to the API server, created lazily inside the running loop.

    With ``certificate_for_callers=False`` (the gateway) a request carrying the caller's own
    ``Authorization`` goes on a second pool that never presents this client's certificate:
    the API server tries x509 before bearer tokens, so presenting it would run the caller's
    request as this client. Requests without one (this client's own) present it.
    """

    def __init__(
        self,
        config: UpstreamConfig,
        *,
        timeout: float = 10.0,
        connection_limit: int = 100,
        certificate_for_callers: bool = True,
    ) -> None:
        self.config = config
        self._split = not certificate_for_callers and bool(config.client_cert_file)
        # 0 = no limit (a client that keeps one watch per collection open).
        self._connection_limit = connection_limit
        self._base = URL(config.server.rstrip("/"))
        if self._base.scheme not in ("http", "https") or not self._base.host:
            raise ConfigError(f"upstream server must be an http(s) URL, got {config.server!r}")
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._token = TokenFile(config.token_file) if config.token_file else None
        # Keyed by whether the pool presents the client certificate; each session is bound
        # to the loop it was created in.
        self._ssl: dict[bool, ssl.SSLContext] = {}
        self._sessions: dict[bool, tuple[aiohttp.ClientSession, asyncio.AbstractEventLoop]] = {}

    @property
    def server(self) -> str:
        """The API server URL, for messages."""
        return str(self._base)

    def _get_session(self, caller: Mapping[str, str | Sequence[str]]) -> aiohttp.ClientSession:
        with_cert = not (self._split and _has_authorization(caller))
        loop = asyncio.get_running_loop()
        session, session_loop = self._sessions.get(with_cert, (None, None))
        # A session is bound to the loop it was created in; tests and restarts may change it.
        if session is None or session.closed or session_loop is not loop:
            tls: ssl.SSLContext | bool = False
            if self._base.scheme == "https":
                if with_cert not in self._ssl:
                    config = self.config
                    if not with_cert:
                        config = replace(config, client_cert_file=None, client_key_file=None)
                    self._ssl[with_cert] = build_ssl_context(config)
                tls = self._ssl[with_cert]
            connector = aiohttp.TCPConnector(ssl=tls, limit=self._connection_limit)
            session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
            self._sessions[with_cert] = (session, loop)
        return session

    async def close(self) -> None:
        """Close the pooled sessions (call from the loop that used them)."""
        sessions, self._sessions = self._sessions, {}
        for session, _ in sessions.values():
            if not session.closed:
                await session.close()

    @property
    def has_own_credentials(self) -> bool:
        """Whether the proxy can ask with credentials of its own (token file or client cert)."""
        return self._token is not None or bool(self.config.client_cert_file)

    def _headers(
        self, caller: Mapping[str, str | Sequence[str]], accept: str = "application/json"
    ) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = [("Accept", accept)]
        for name, value in caller.items():
            values = [value] if isinstance(value, str) else list(value)
            out.extend((name, v) for v in values)
        if self._token is not None and not _has_authorization(caller):
            out.append(("Authorization", f"Bearer {self._token.token()}"))
        return out

    def _url(
        self, path: str, query: Mapping[str, str] | Sequence[tuple[str, str]] | None = None
    ) -> URL:
        url = self._base.with_path(self._base.path.rstrip("/") + path, encoded=True)
        return url.with_query(query) if query else url

    async def _request(
        self,
        method: str,
        path: str,
        caller: Mapping[str, str | Sequence[str]],
        *,
        query: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        body: bytes | None = None,
        accept: str = "application/json",
        content_type: str = "application/json",
    ) -> tuple[int, str, bytes]:
        """One request: the status code, Content-Type and body of the answer."""
        url = self._url(path, query)
        what = f"{method} {path} on {self.server}"
        try:
            headers = self._headers(caller, accept)
        except ConfigError as e:
            # The proxy's own token file is unreadable: upstream trouble, not a bug.
            raise UpstreamError(f"{what}: {e}") from e
        if body is not None:
            headers.append(("Content-Type", content_type))
        with _connection_errors(what, "the API server cannot be reached"):
            session = self._get_session(caller)
            # Never follow redirects: the answer must be about the object asked for.
            async with session.request(
                method, url, headers=headers, data=body, allow_redirects=False
            ) as resp:
                return resp.status, resp.headers.get("Content-Type", ""), await resp.read()

    async def get_object(
        self, path: str, headers: Mapping[str, str | Sequence[str]]
    ) -> dict[str, Any] | None:
        """GET ``path`` (already URL-encoded) as the caller; None on 404.

        Raises UpstreamStatusError for any other non-200 answer, UpstreamError when the API
        server cannot be reached or answers something that is not a JSON object.
        """
        status, _, body = await self._request("GET", path, headers)
        if status == 404:
            return None
        if status != 200:
            raise UpstreamStatusError.from_answer(f"GET {path}", status, body)
        return self._json_object(body, f"GET {path}")

    async def create_object(
        self,
        path: str,
        obj: Mapping[str, Any],
        headers: Mapping[str, str | Sequence[str]],
    ) -> dict[str, Any]:
        """POST ``obj`` to the collection at ``path`` as the caller; the created object.

        Raises UpstreamStatusError for any answer but 200/201/202 (409: it exists already).
        """
        status, _, body = await self._request("POST", path, headers, body=json.dumps(obj).encode())
        if status not in (200, 201, 202):
            raise UpstreamStatusError.from_answer(f"POST {path}", status, body)
        return self._json_object(body, f"POST {path}")

    async def list_objects(
        self,
        path: str,
        headers: Mapping[str, str | Sequence[str]],
        label_selector: str | None = None,
        field_selector: str | None = None,
        *,
        metadata_only: bool = False,
    ) -> list[dict[str, Any]]:
        """Every item of the collection at ``path`` (paged), as the caller, with the selectors.

        ``metadata_only`` asks for PartialObjectMetadata (no spec, no Secret data) where the
        API server supports it; a plain list is accepted too.
        """
        selectors = _selector_query(label_selector, field_selector)
        items, _ = await self._list(path, headers, selectors, metadata_only)
        return items

    async def _list(
        self,
        path: str,
        headers: Mapping[str, str | Sequence[str]],
        selectors: Mapping[str, str],
        metadata_only: bool,
    ) -> tuple[list[dict[str, Any]], str]:
        """``list_objects`` and the list's resourceVersion (where a watch of it starts)."""
        accept = METADATA_ONLY_ACCEPT if metadata_only else "application/json"
        items: list[dict[str, Any]] = []
        cont = ""
        resource_version = ""
        while True:
            query = {"limit": str(LIST_PAGE_SIZE), **selectors}
            if cont:
                query["continue"] = cont
            status, _, body = await self._request("GET", path, headers, query=query, accept=accept)
            if status != 200:
                raise UpstreamStatusError.from_answer(f"LIST {path}", status, body)
            page = self._json_object(body, f"LIST {path}")
            raw_items = page.get("items") or []
            if not isinstance(raw_items, list):
                raise UpstreamError(f"LIST {path} on {self.server}: items is not a list")
            items.extend(i for i in raw_items if isinstance(i, dict))
            meta = page.get("metadata")
            meta = meta if isinstance(meta, dict) else {}
            # Every page of a paged list is read from the first page's snapshot.
            resource_version = resource_version or str(meta.get("resourceVersion") or "")
            cont = str(meta.get("continue") or "")
            if not cont:
                return items, resource_version

    async def watch(
        self,
        path: str,
        resource_version: str | None = None,
        *,
        headers: Mapping[str, str | Sequence[str]] | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        metadata_only: bool = False,
        timeout_seconds: int = WATCH_TIMEOUT_SECONDS,
        min_backoff: float = 0.25,
        max_backoff: float = 5.0,
        quiet: bool = False,
    ) -> AsyncIterator[WatchEvent]:
        """Follow the collection at ``path`` for as long as the caller iterates.

        Starts with a list (a ``LISTED`` event) unless ``resource_version`` is given, then
        watches from the last resourceVersion seen: each watch request lasts
        ``timeout_seconds`` and is resumed; bookmarks are asked for and only move the
        resourceVersion; 410 Gone (too old a resourceVersion, as an HTTP answer or an ERROR
        event) lists again (``LISTED``). When the API server cannot be reached or answers an
        error, the watch retries with exponential backoff from ``min_backoff`` to
        ``max_backoff`` seconds, yields one ``DOWN`` event and logs one line per change of
        state (down, a different failure, back up), never one per retry.

        The one answer not retried: 404 to the list (the resource is not served, e.g. its
        CRD is not installed) raises ``UpstreamStatusError`` (code 404) and ends the
        iteration. ``headers`` are the caller's (default: the proxy's own credentials).
        ``quiet`` logs the changes of state at DEBUG: for a caller running many watches that
        logs one line for all of them itself (the ownership index).
        """
        # Levels of the lines about the API server's state (down, back up, expired).
        warn, info = (logging.DEBUG, logging.DEBUG) if quiet else (logging.WARNING, logging.INFO)
        caller: Mapping[str, str | Sequence[str]] = headers or {}
        rv = resource_version or None
        backoff = min_backoff
        down: str | None = None
        retries = 0
        what = f"watch of {path}"
        selectors = _selector_query(label_selector, field_selector)

        def back_up() -> bool:
            """After an outage: say so once and reset the backoff (False: there was none)."""
            nonlocal down, retries, backoff
            if down is None:
                return False
            logger.log(info, "%s: the API server answers again (after %d retries)", what, retries)
            down, retries, backoff = None, 0, min_backoff
            return True

        while True:
            failure: str
            try:
                if rv is None:
                    items, rv = await self._list(path, caller, selectors, metadata_only)
                    back_up()
                    yield WatchEvent("LISTED", items=tuple(items), resource_version=rv)
                    # Not kept alive for as long as the watch runs (a whole collection).
                    items = []
                query = {
                    "watch": "true",
                    "resourceVersion": rv,
                    "allowWatchBookmarks": "true",
                    "timeoutSeconds": str(timeout_seconds),
                    **selectors,
                }
                accept = METADATA_ONLY_WATCH_ACCEPT if metadata_only else "application/json"
                events = 0
                started = asyncio.get_running_loop().time()
                async for event in self._watch_once(
                    path, query, caller, accept, timeout_seconds + WATCH_READ_GRACE
                ):
                    if event is _OPENED:
                        if back_up():
                            yield WatchEvent("RESUMED", resource_version=rv)
                        continue
                    events += 1
                    if event.resource_version:
                        rv = event.resource_version
                    change = _CHANGES.get(event.type)
                    if change is not None:  # else a bookmark: it only moves ``rv``
                        yield WatchEvent(change, object=event.object, resource_version=rv)
                # The API server ended the watch (timeoutSeconds): resume from ``rv``; but a
                # server that ends every watch at once must not be asked in a tight loop.
                if not events and asyncio.get_running_loop().time() - started < 1.0:
                    await asyncio.sleep(min_backoff)
                continue
            except WatchExpired:
                logger.log(
                    info, "%s: resourceVersion %s expired (410 Gone): listing again", what, rv
                )
                rv = None
                continue
            except UpstreamStatusError as e:
                if e.code == 404:
                    if rv is None:
                        raise
                    # The watch itself is not found (its CRD was removed?): the list says.
                    rv = None
                    continue
                failure = f"HTTP {e.code}: {e.message}"
            except UpstreamError as e:
                failure = str(e)
            if down is None:
                logger.log(
                    warn,
                    "%s: %s; retrying every %.2g-%.2g s (logged again when the state changes)",
                    what,
                    failure,
                    backoff,
                    max_backoff,
                )
                yield WatchEvent("DOWN", resource_version=rv or "", error=failure)
            elif failure != down:
                logger.log(warn, "%s: still down, now: %s", what, failure)
            else:
                logger.debug("%s: retry %d failed: %s", what, retries + 1, failure)
            down = failure
            retries += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, max_backoff)

    async def _watch_once(
        self,
        path: str,
        query: Mapping[str, str],
        caller: Mapping[str, str | Sequence[str]],
        accept: str,
        read_timeout: float,
    ) -> AsyncIterator[_RawEvent]:
        """One watch request: its events (bookmarks included) until the API server ends it.

        Raises WatchExpired on 410 Gone, UpstreamStatusError on any other HTTP error or
        ERROR event, UpstreamError when the connection fails or a line is not an event.
        """
        url = self._url(path, query)
        where = f"WATCH {path} on {self.server}"
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10.0, sock_read=read_timeout)
        with _connection_errors(where, "the watch connection failed"):
            session = self._get_session(caller)
            async with session.request(
                "GET",
                url,
                headers=self._headers(caller, accept),
                allow_redirects=False,
                timeout=timeout,
            ) as resp:
                if resp.status != 200:
                    body = await resp.read()
                    error = WatchExpired if resp.status == 410 else UpstreamStatusError
                    raise error(f"WATCH {path}", resp.status, _status_message(body))
                yield _OPENED
                buffer = bytearray()
                async for chunk in resp.content.iter_any():
                    buffer.extend(chunk)
                    start = 0
                    while (nl := buffer.find(b"\n", start)) != -1:
                        line = bytes(buffer[start:nl])
                        start = nl + 1
                        if line.strip():
                            yield _parse_event(line, where)
                    del buffer[:start]
                    if len(buffer) > MAX_WATCH_LINE:
                        raise UpstreamError(
                            f"{where}: a watch event longer than {MAX_WATCH_LINE} bytes"
                        )
                if buffer.strip():
                    yield _parse_event(bytes(buffer), where)

    async def dry_run(
        self,
        method: str,
        path: str,
        query: Sequence[tuple[str, str]],
        headers: Mapping[str, str | Sequence[str]],
        body: bytes,
        content_type: str,
    ) -> dict[str, Any]:
        """Send a write with ``dryRun=All`` as the caller: the object the API server would store.

        ``path`` is already URL-encoded; ``query`` are the request's own parameters (any
        ``dryRun`` among them is replaced). Raises UpstreamStatusError carrying the API
        server's Status when it refuses (what the real write would answer).
        """
        params = [(k, v) for k, v in query if k != "dryRun"] + [("dryRun", "All")]
        status, _, answer = await self.send(method, path, params, headers, body, content_type)
        if status not in (200, 201):
            raise UpstreamStatusError.from_answer(f"{method} {path} (dry run)", status, answer)
        return self._json_object(answer, f"{method} {path} (dry run)")

    async def send(
        self,
        method: str,
        path: str,
        query: Sequence[tuple[str, str]],
        headers: Mapping[str, str | Sequence[str]],
        body: bytes,
        content_type: str,
        accept: str = "",
    ) -> tuple[int, str, bytes]:
        """Send a write as the caller and return the API server's answer as it is: status
        code, Content-Type and body (a dry run, or a write the proxy makes again on the
        caller's behalf). ``path`` is already URL-encoded; ``accept`` defaults to JSON."""
        return await self._request(
            method,
            path,
            headers,
            query=list(query),
            body=body,
            accept=accept or "application/json",
            content_type=content_type,
        )

    async def _write(
        self, method: str, path: str, body: Any, content_type: str = "application/json"
    ) -> dict[str, Any] | None:
        """Send a write with the proxy's own credentials; None on 409 (AlreadyExists, or a
        resourceVersion precondition that failed): someone else wrote first."""
        status, _, answer = await self._request(
            method, path, {}, body=json.dumps(body).encode(), content_type=content_type
        )
        if status == 409:
            return None
        if status not in (200, 201):
            raise UpstreamStatusError(f"{method} {path}", status, _status_message(answer))
        return self._json_object(answer, f"{method} {path}")

    async def create_if_absent(self, path: str, obj: Mapping[str, Any]) -> dict[str, Any] | None:
        """POST ``obj`` to the collection ``path`` with the client's own credentials; None
        when it already exists (409: someone created it first)."""
        return await self._write("POST", path, obj)

    async def replace_object(self, path: str, obj: Mapping[str, Any]) -> dict[str, Any] | None:
        """PUT ``obj`` (its resourceVersion is the precondition); None on 409."""
        return await self._write("PUT", path, obj)

    async def merge_patch_object(
        self, path: str, patch: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """A JSON merge patch (a ``metadata.resourceVersion`` in it is a precondition);
        None on 409."""
        return await self._write("PATCH", path, patch, "application/merge-patch+json")

    async def self_subject_review(self, headers: Mapping[str, str | Sequence[str]]) -> UserInfo:
        """Ask the API server who these credentials (and Impersonate-* headers) act as."""
        last: UpstreamStatusError | None = None
        for path in SELF_SUBJECT_REVIEW_PATHS:
            version = path.split("/")[3]
            review = {"apiVersion": f"authentication.k8s.io/{version}", "kind": "SelfSubjectReview"}
            status, _, body = await self._request(
                "POST", path, headers, body=json.dumps(review).encode()
            )
            if status == 404:
                last = UpstreamStatusError.from_answer("SelfSubjectReview", status, body)
                continue
            if status not in (200, 201):
                raise UpstreamStatusError.from_answer("SelfSubjectReview", status, body)
            return _user_info(self._json_object(body, "SelfSubjectReview"))
        raise last or UpstreamError("SelfSubjectReview: the API server offers no version of it")

    async def subject_access_review(
        self, user: UserInfo, attributes: Mapping[str, str]
    ) -> tuple[bool, str]:
        """May ``user`` do what ``attributes`` (SubjectAccessReview resourceAttributes) say?

        Asked with the proxy's own credentials (it needs ``create subjectaccessreviews``).
        Returns (allowed, reason). Raises UpstreamStatusError / UpstreamError.
        """
        spec: dict[str, Any] = {
            "user": user.username,
            "groups": list(user.groups),
            "resourceAttributes": dict(attributes),
        }
        if user.uid:
            spec["uid"] = user.uid
        if user.extra:
            spec["extra"] = {k: list(v) for k, v in user.extra.items()}
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": spec,
        }
        path = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
        status, _, body = await self._request("POST", path, {}, body=json.dumps(review).encode())
        if status not in (200, 201):
            raise UpstreamStatusError.from_answer("SubjectAccessReview", status, body)
        answer = self._json_object(body, "SubjectAccessReview").get("status")
        if not isinstance(answer, dict):
            raise UpstreamError("SubjectAccessReview: the answer has no status")
        reason = answer.get("reason")
        # Only an explicit true allows (denied, missing or malformed: not allowed).
        return answer.get("allowed") is True, reason if isinstance(reason, str) else ""

    async def self_access_review(self, attributes: Mapping[str, str]) -> bool:
        """May the proxy's own credentials do what ``attributes`` (resourceAttributes) say?
        (SelfSubjectAccessReview; only an explicit true allows.)"""
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": dict(attributes)},
        }
        path = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
        status, _, body = await self._request("POST", path, {}, body=json.dumps(review).encode())
        if status not in (200, 201):
            raise UpstreamStatusError("SelfSubjectAccessReview", status, _status_message(body))
        answer = self._json_object(body, "SelfSubjectAccessReview").get("status")
        return isinstance(answer, dict) and answer.get("allowed") is True

    def _json_object(self, body: bytes, what: str) -> dict[str, Any]:
        try:
            data = json.loads(body)
        except ValueError as e:
            raise UpstreamError(f"{what} on {self.server}: the answer is not JSON") from e
        if not isinstance(data, dict):
            raise UpstreamError(f"{what} on {self.server}: the answer is not a JSON object")
        return data


_CHANGES: dict[str, WatchEventType] = {
    "ADDED": "ADDED",
    "MODIFIED": "MODIFIED",
    "DELETED": "DELETED",
}


@dataclass(frozen=True, slots=True)
class _RawEvent:
    type: str
    object: dict[str, Any]
    resource_version: str


# Yielded by _watch_once once the API server accepted the watch (the watch is up).
_OPENED = _RawEvent("OPENED", {}, "")


def _parse_event(line: bytes, where: str) -> _RawEvent:
    """One watch line as an event; ERROR events raise (WatchExpired for 410 Gone)."""
    try:
        data = json.loads(line)
    except ValueError as e:
        raise UpstreamError(f"{where}: a watch line is not JSON") from e
    if not isinstance(data, dict) or not isinstance(data.get("object"), dict):
        raise UpstreamError(f"{where}: a watch line is not an event")
    kind = data.get("type")
    obj: dict[str, Any] = data["object"]
    if kind == "ERROR":
        code = obj.get("code")
        code = code if isinstance(code, int) else 500
        message = obj.get("message")
        message = message if isinstance(message, str) else "no Status message"
        error = WatchExpired if code == 410 else UpstreamStatusError
        raise error("WATCH event", code, message)
    if kind not in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK"):
        raise UpstreamError(f"{where}: unknown watch event type {kind!r}")
    meta = obj.get("metadata")
    rv = meta.get("resourceVersion") if isinstance(meta, dict) else None
    return _RawEvent(kind, obj, rv if isinstance(rv, str) else "")


def _user_info(review: Mapping[str, Any]) -> UserInfo:
    """``status.userInfo`` of a SelfSubjectReview as a UserInfo."""
    status = review.get("status")
    info = status.get("userInfo") if isinstance(status, dict) else None
    if not isinstance(info, dict) or not isinstance(info.get("username"), str):
        raise UpstreamError("SelfSubjectReview: the answer has no status.userInfo.username")
    groups = info.get("groups") or []
    extra_raw = info.get("extra") or {}
    extra: dict[str, tuple[str, ...]] = {}
    if isinstance(extra_raw, dict):
        for key, values in extra_raw.items():
            if isinstance(values, list):
                extra[str(key)] = tuple(str(v) for v in values)
    return UserInfo(
        username=info["username"],
        uid=str(info.get("uid") or ""),
        groups=tuple(str(g) for g in groups) if isinstance(groups, list) else (),
        extra=extra,
    )
