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

    ``message`` is the Status message of the API server when it sent one: it is the API
    server's own words (e.g. an RBAC refusal) and safe to show to the caller.
    """

    def __init__(self, what: str, code: int, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{what}: HTTP {code}: {message}")


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
        query: Mapping[str, str] | None = None,
        body: bytes | None = None,
        accept: str = "application/json",
        content_type: str = "application/json",
    ) -> tuple[int, bytes]:
        url = self._base.with_path(self._base.path.rstrip("/") + path, encoded=True)
        if query:
            url = url.with_query(query)
        headers = self._headers(caller, accept)
        if body is not None:
            headers.append(("Content-Type", content_type))
        what = f"{method} {path} on {self.server}"
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
            raise UpstreamStatusError(f"GET {path}", status, _status_message(body))
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
                raise UpstreamStatusError(f"LIST {path}", status, _status_message(body))
            page = self._json_object(body, f"LIST {path}")
            raw_items = page.get("items") or []
            if not isinstance(raw_items, list):
                raise UpstreamError(f"LIST {path} on {self.server}: items is not a list")
            items.extend(i for i in raw_items if isinstance(i, dict))
            meta = page.get("metadata")
            cont = meta.get("continue", "") if isinstance(meta, dict) else ""
            if not cont:
                return items

    async def _write(
        self, method: str, path: str, body: Any, content_type: str = "application/json"
    ) -> dict[str, Any] | None:
        """Send a write with the proxy's own credentials; None on 409 (AlreadyExists, or a
        resourceVersion precondition that failed): someone else wrote first."""
        status, answer = await self._request(
            method, path, {}, body=json.dumps(body).encode(), content_type=content_type
        )
        if status == 409:
            return None
        if status not in (200, 201):
            raise UpstreamStatusError(f"{method} {path}", status, _status_message(answer))
        return self._json_object(answer, f"{method} {path}")

    async def create_object(self, path: str, obj: Mapping[str, Any]) -> dict[str, Any] | None:
        """POST ``obj`` to the collection ``path``; None when it already exists (409)."""
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
            status, body = await self._request(
                "POST", path, headers, body=json.dumps(review).encode()
            )
            if status == 404:
                last = UpstreamStatusError("SelfSubjectReview", status, _status_message(body))
                continue
            if status not in (200, 201):
                raise UpstreamStatusError("SelfSubjectReview", status, _status_message(body))
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
