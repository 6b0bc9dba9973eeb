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
import json
import logging
import os
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

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


class UpstreamStatusError(UpstreamError):
    """The API server answered, but not with what was asked for (``code`` is its HTTP code).

    ``status`` is the whole Status the API server sent (one is made up from the code when the
    answer was not a Status), ``message`` its message: the API server's own words (e.g. an
    RBAC refusal), safe to show to the caller.
    """

    def __init__(self, what: str, code: int, message: str, status: Status | None = None) -> None:
        self.what = what
        self.code = code
        self.message = message
        self.status: Status = status if status is not None else failure(code, message)
        super().__init__(f"{what}: HTTP {code}: {message}")

    @classmethod
    def from_answer(cls, what: str, code: int, body: bytes) -> UpstreamStatusError:
        """The error for an answer ``code`` with ``body`` (a Status, usually)."""
        status = _status_of(body, code)
        return cls(what, code, status["message"] if status else _status_message(body), status)


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


class Upstream:
    """One pooled aiohttp session to the API server, created lazily inside the running loop."""

    def __init__(self, config: UpstreamConfig, *, timeout: float = 10.0) -> None:
        self.config = config
        self._base = URL(config.server.rstrip("/"))
        if self._base.scheme not in ("http", "https") or not self._base.host:
            raise ConfigError(f"upstream server must be an http(s) URL, got {config.server!r}")
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._token = TokenFile(config.token_file) if config.token_file else None
        self._ssl: ssl.SSLContext | None = None
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def server(self) -> str:
        """The API server URL, for messages."""
        return str(self._base)

    def _get_session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        # A session is bound to the loop it was created in; tests and restarts may change it.
        if self._session is None or self._session.closed or self._loop is not loop:
            tls: ssl.SSLContext | bool = False
            if self._base.scheme == "https":
                if self._ssl is None:
                    self._ssl = build_ssl_context(self.config)
                tls = self._ssl
            connector = aiohttp.TCPConnector(ssl=tls, limit=100)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
            self._loop = loop
        return self._session

    async def close(self) -> None:
        """Close the pooled session (call from the loop that used it)."""
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()

    @property
    def has_own_credentials(self) -> bool:
        """Whether the proxy can ask with credentials of its own (token file or client cert)."""
        return self._token is not None or bool(self.config.client_cert_file)

    def _headers(
        self, caller: Mapping[str, str | Sequence[str]], accept: str = "application/json"
    ) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = [("Accept", accept)]
        has_auth = False
        for name, value in caller.items():
            values = [value] if isinstance(value, str) else list(value)
            has_auth = has_auth or name.lower() == "authorization"
            out.extend((name, v) for v in values)
        if not has_auth and self._token is not None:
            out.append(("Authorization", f"Bearer {self._token.token()}"))
        return out

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
    ) -> tuple[int, bytes]:
        url = self._base.with_path(self._base.path.rstrip("/") + path, encoded=True)
        if query:
            url = url.with_query(query)
        what = f"{method} {path} on {self.server}"
        try:
            headers = self._headers(caller, accept)
        except ConfigError as e:
            # The proxy's own token file is unreadable: upstream trouble, not a bug.
            raise UpstreamError(f"{what}: {e}") from e
        if body is not None:
            headers.append(("Content-Type", content_type))
        try:
            session = self._get_session()
            # Never follow redirects: the answer must be about the object asked for.
            async with session.request(
                method, url, headers=headers, data=body, allow_redirects=False
            ) as resp:
                return resp.status, await resp.read()
        except (aiohttp.ClientSSLError, ssl.SSLError) as e:
            raise UpstreamError(f"{what}: TLS with the API server failed: {e}") from e
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            reason = str(e) or type(e).__name__
            raise UpstreamError(f"{what}: the API server cannot be reached: {reason}") from e

    async def get_object(
        self, path: str, headers: Mapping[str, str | Sequence[str]]
    ) -> dict[str, Any] | None:
        """GET ``path`` (already URL-encoded) as the caller; None on 404.

        Raises UpstreamStatusError for any other non-200 answer, UpstreamError when the API
        server cannot be reached or answers something that is not a JSON object.
        """
        status, body = await self._request("GET", path, headers)
        if status == 404:
            return None
        if status != 200:
            raise UpstreamStatusError.from_answer(f"GET {path}", status, body)
        return self._json_object(body, f"GET {path}")

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
        accept = METADATA_ONLY_ACCEPT if metadata_only else "application/json"
        items: list[dict[str, Any]] = []
        cont = ""
        while True:
            query = {"limit": str(LIST_PAGE_SIZE)}
            if label_selector:
                query["labelSelector"] = label_selector
            if field_selector:
                query["fieldSelector"] = field_selector
            if cont:
                query["continue"] = cont
            status, body = await self._request("GET", path, headers, query=query, accept=accept)
            if status != 200:
                raise UpstreamStatusError.from_answer(f"LIST {path}", status, body)
            page = self._json_object(body, f"LIST {path}")
            raw_items = page.get("items") or []
            if not isinstance(raw_items, list):
                raise UpstreamError(f"LIST {path} on {self.server}: items is not a list")
            items.extend(i for i in raw_items if isinstance(i, dict))
            meta = page.get("metadata")
            cont = meta.get("continue", "") if isinstance(meta, dict) else ""
            if not cont:
                return items

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
        status, answer = await self._request(
            method, path, headers, query=params, body=body, content_type=content_type
        )
        if status not in (200, 201):
            raise UpstreamStatusError.from_answer(f"{method} {path} (dry run)", status, answer)
        return self._json_object(answer, f"{method} {path} (dry run)")

    async def self_subject_review(self, headers: Mapping[str, str | Sequence[str]]) -> UserInfo:
        """Ask the API server who these credentials (and Impersonate-* headers) act as."""
        last: UpstreamStatusError | None = None
        for path in SELF_SUBJECT_REVIEW_PATHS:
            version = path.split("/")[3]
            review = {"apiVersion": f"authentication.k8s.io/{version}", "kind": "SelfSubjectReview"}
            status, body = await self._request(
                "POST", path, headers, body=json.dumps(review).encode()
            )
            if status == 404:
                last = UpstreamStatusError.from_answer("SelfSubjectReview", status, body)
                continue
            if status not in (200, 201):
                raise UpstreamStatusError.from_answer("SelfSubjectReview", status, body)
            return _user_info(self._json_object(body, "SelfSubjectReview"))
        raise last or UpstreamError("SelfSubjectReview: the API server offers no version of it")

    def _json_object(self, body: bytes, what: str) -> dict[str, Any]:
        try:
            data = json.loads(body)
        except ValueError as e:
            raise UpstreamError(f"{what} on {self.server}: the answer is not JSON") from e
        if not isinstance(data, dict):
            raise UpstreamError(f"{what} on {self.server}: the answer is not a JSON object")
        return data


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
