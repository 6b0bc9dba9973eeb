"""Upstream: async lookups against a tiny aiohttp stand-in for the API server."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from klockproxy.cluster import upstream as upstream_module
from klockproxy.cluster.certs import CertificateAuthority
from klockproxy.cluster.upstream import (
    Upstream,
    UpstreamConfig,
    UpstreamStatusError,
    WatchEvent,
)
from klockproxy.core.errors import ConfigError, UpstreamError
from klockproxy.core.types import UserInfo

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class FakeApi:
    """Records what arrived; answers per path from ``routes``."""

    url: str = ""
    seen: list[web.Request] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    routes: dict[tuple[str, str], Handler] = field(default_factory=dict)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(request)
        self.bodies.append(await request.read())
        handler = self.routes.get((request.method, request.path))
        if handler is None:
            return web.json_response(
                {"kind": "Status", "status": "Failure", "message": "not found", "code": 404},
                status=404,
            )
        return await handler(request)


async def _serve(api: FakeApi, ssl_context: ssl.SSLContext | None = None) -> web.AppRunner:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", api.handle)
    # Held watch handlers are cancelled at cleanup rather than awaited for a minute.
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = runner.addresses[0][1]
    api.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
    return runner


@pytest.fixture
async def api() -> AsyncIterator[FakeApi]:
    fake = FakeApi()
    runner = await _serve(fake)
    yield fake
    await runner.cleanup()


def _json(data: Any, status: int = 200) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response(data, status=status)

    return handler


POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"aura": "red"}}}


async def test_get_object_sends_the_caller_headers_and_returns_the_object(api: FakeApi) -> None:
    api.routes["GET", "/api/v1/namespaces/default/pods/p"] = _json(POD)
    up = Upstream(UpstreamConfig(server=api.url))
    try:
        obj = await up.get_object(
            "/api/v1/namespaces/default/pods/p",
            {"Authorization": "Bearer caller", "Impersonate-Group": ["g1", "g2"]},
        )
    finally:
        await up.close()
    assert obj == POD
    req = api.seen[0]
    assert req.headers["Authorization"] == "Bearer caller"
    assert req.headers.getall("Impersonate-Group") == ["g1", "g2"]
    assert req.headers["Accept"] == "application/json"


async def test_get_object_returns_none_on_404(api: FakeApi) -> None:
    up = Upstream(UpstreamConfig(server=api.url))
    try:
        assert await up.get_object("/api/v1/namespaces/default/pods/gone", {}) is None
    finally:
        await up.close()


async def test_get_object_raises_status_error_with_the_api_server_message(api: FakeApi) -> None:
    api.routes["GET", "/api/v1/namespaces/default/pods/p"] = _json(
        {"kind": "Status", "message": 'pods "p" is forbidden: User "x" cannot get'}, 403
    )
    up = Upstream(UpstreamConfig(server=api.url))
    try:
        with pytest.raises(UpstreamStatusError) as info:
            await up.get_object("/api/v1/namespaces/default/pods/p", {})
    finally:
        await up.close()
    assert info.value.code == 403
    assert "cannot get" in info.value.message


async def test_redirects_are_not_followed(api: FakeApi) -> None:
    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/api/v1/namespaces/default/pods/other")

    api.routes["GET", "/api/v1/namespaces/default/pods/p"] = redirect
    api.routes["GET", "/api/v1/namespaces/default/pods/other"] = _json(POD)
    up = Upstream(UpstreamConfig(server=api.url))
    try:
        with pytest.raises(UpstreamStatusError) as info:
            await up.get_object("/api/v1/namespaces/default/pods/p", {})
    finally:
        await up.close()
    assert info.value.code == 302
    assert len(api.seen) == 1


async def test_non_json_answer_is_an_upstream_error(api: FakeApi) -> None:
    async def html(request: web.Request) -> web.StreamResponse:
        return web.Response(text="<html>oops</html>", content_type="text/html")

    api.routes["GET", "/x"] = html
    up = Upstream(UpstreamConfig(server=api.url))
    try:
        with pytest.raises(UpstreamError, match="not JSON"):
            await up.get_object("/x", {})
    finally:
        await up.close()


async def test_token_file_is_attached_only_when_the_caller_sends_no_authorization(
    api: FakeApi, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text("proxy-token\n")
    api.routes["GET", "/x"] = _json({})
    up = Upstream(UpstreamConfig(server=api.url, token_file=str(token)))
    try:
        await up.get_object("/x", {"Impersonate-User": "jonny"})
        await up.get_object("/x", {"Authorization": "Bearer caller"})
        token.write_text("rotated-token-longer")
        await up.get_object("/x", {})
    finally:
        await up.close()
    assert api.seen[0].headers["Authorization"] == "Bearer proxy-token"
    assert api.seen[0].headers["Impersonate-User"] == "jonny"
    assert api.seen[1].headers.getall("Authorization") == ["Bearer caller"]
    assert api.seen[2].headers["Authorization"] == "Bearer rotated-token-longer"


async def test_missing_token_file_is_upstream_trouble(api: FakeApi, tmp_path: Path) -> None:
    """A token file gone at request time cannot be asked with: an UpstreamError (503 at the
    boundary), never an exception the caller does not expect."""
    up = Upstream(UpstreamConfig(server=api.url, token_file=str(tmp_path / "absent")))
    try:
        with pytest.raises(UpstreamError, match="token file"):
            await up.get_object("/x", {})
    finally:
        await up.close()


async def test_dry_run_sends_the_write_dry_as_the_caller(api: FakeApi) -> None:
    async def patched(request: web.Request) -> web.StreamResponse:
        return web.json_response({**POD, "metadata": {"name": "p", "labels": {"a": "b"}}})

    api.routes["PATCH", "/api/v1/namespaces/default/pods/p"] = patched
    up = Upstream(UpstreamConfig(server=api.url))
    try:
        result = await up.dry_run(
            "PATCH",
            "/api/v1/namespaces/default/pods/p",
            [("fieldManager", "kubectl"), ("dryRun", "bogus")],
            {"Authorization": ["Bearer caller"]},
            b'{"metadata":{"labels":{"a":"b"}}}',
            "application/merge-patch+json",
        )
    finally:
        await up.close()
    assert result["metadata"]["labels"] == {"a": "b"}
    (request,) = api.seen
    assert request.query.getall("dryRun") == ["All"]
    assert request.query["fieldManager"] == "kubectl"
    assert request.headers["Authorization"] == "Bearer caller"
    assert request.headers["Content-Type"] == "application/merge-patch+json"
    assert api.bodies == [b'{"metadata":{"labels":{"a":"b"}}}']


async def test_a_refused_dry_run_carries_the_api_server_s_whole_status(api: FakeApi) -> None:
    status = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'Pod "p" is invalid: metadata.labels: Invalid value: "-x"',
        "reason": "Invalid",
        "details": {"name": "p", "kind": "Pod", "causes": [{"field": "metadata.labels"}]},
        "code": 422,
    }
    api.routes["PATCH", "/api/v1/namespaces/default/pods/p"] = _json(status, 422)
    up = Upstream(UpstreamConfig(server=api.url))
    try:
        with pytest.raises(UpstreamStatusError) as info:
            await up.dry_run(
                "PATCH", "/api/v1/namespaces/default/pods/p", [], {}, b"{}", "application/json"
            )
    finally:
        await up.close()
    assert info.value.code == 422
    assert info.value.status == status


async def test_list_objects_pages_and_passes_selectors(api: FakeApi) -> None:
    async def pages(request: web.Request) -> web.StreamResponse:
        if request.query.get("continue") == "next":
            return web.json_response({"metadata": {}, "items": [{"metadata": {"name": "b"}}]})
        return web.json_response(
            {"metadata": {"continue": "next"}, "items": [{"metadata": {"name": "a"}}]}
        )

    api.routes["GET", "/api/v1/namespaces/ns/configmaps"] = pages
    up = Upstream(UpstreamConfig(server=api.url))
    try:
        items = await up.list_objects(
            "/api/v1/namespaces/ns/configmaps",
            {"Authorization": "Bearer c"},
            label_selector="aura=red",
            field_selector="metadata.name!=x",
        )
    finally:
        await up.close()
    assert [i["metadata"]["name"] for i in items] == ["a", "b"]
    first = api.seen[0].query
    assert first["labelSelector"] == "aura=red"
    assert first["fieldSelector"] == "metadata.name!=x"
    assert first["limit"] == "500"
    assert api.seen[1].query["continue"] == "next"


async def test_list_objects_can_ask_for_metadata_only(api: FakeApi, tmp_path: Path) -> None:
    api.routes["GET", "/api/v1/namespaces/ns/secrets"] = _json({"metadata": {}, "items": []})
    up = Upstream(UpstreamConfig(server=api.url))
    try:
        assert not up.has_own_credentials
        await up.list_objects("/api/v1/namespaces/ns/secrets", {}, metadata_only=True)
    finally:
        await up.close()
    accept = api.seen[0].headers["Accept"]
    assert accept.startswith("application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io")
    token = tmp_path / "token"
    token.write_text("t")
    assert Upstream(UpstreamConfig(server=api.url, token_file=str(token))).has_own_credentials


async def test_list_objects_error_is_raised(api: FakeApi) -> None:
    up = Upstream(UpstreamConfig(server=api.url))
    try:
        with pytest.raises(UpstreamStatusError) as info:
            await up.list_objects("/api/v1/namespaces/ns/nothing", {})
    finally:
        await up.close()
    assert info.value.code == 404


async def test_self_subject_review_parses_user_info(api: FakeApi) -> None:
    api.routes["POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews"] = _json(
        {
            "kind": "SelfSubjectReview",
            "status": {
                "userInfo": {
                    "username": "system:serviceaccount:default:jonny-op",
                    "uid": "u-1",
                    "groups": ["system:serviceaccounts", "system:authenticated"],
                    "extra": {"scopes": ["a", "b"]},
                }
            },
        },
        201,
    )
    up = Upstream(UpstreamConfig(server=api.url))
    try:
        user = await up.self_subject_review(
            {"Authorization": "Bearer t", "Impersonate-User": "jonny"}
        )
    finally:
        await up.close()
    assert user == UserInfo(
        username="system:serviceaccount:default:jonny-op",
        uid="u-1",
        groups=("system:serviceaccounts", "system:authenticated"),
        extra={"scopes": ("a", "b")},
    )
    assert json.loads(api.bodies[0])["kind"] == "SelfSubjectReview"
    assert api.seen[0].headers["Impersonate-User"] == "jonny"


async def test_self_subject_review_falls_back_to_v1beta1(api: FakeApi) -> None:
    api.routes["POST", "/apis/authentication.k8s.io/v1beta1/selfsubjectreviews"] = _json(
        {"status": {"userInfo": {"username": "admin"}}}, 201
    )
    up = Upstream(UpstreamConfig(server=api.url))
    try:
        user = await up.self_subject_review({})
    finally:
        await up.close()
    assert user == UserInfo(username="admin")


async def test_self_subject_review_unauthorized_is_raised(api: FakeApi) -> None:
    api.routes["POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews"] = _json(
        {"kind": "Status", "message": "Unauthorized"}, 401
    )
    up = Upstream(UpstreamConfig(server=api.url))
    try:
        with pytest.raises(UpstreamStatusError) as info:
            await up.self_subject_review({"Authorization": "Bearer bad"})
    finally:
        await up.close()
    assert info.value.code == 401


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_unreachable_api_server_names_the_upstream() -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    up = Upstream(UpstreamConfig(server=url))
    try:
        with pytest.raises(UpstreamError, match=r"cannot be reached") as info:
            await up.get_object("/api/v1/namespaces/default/pods/p", {})
    finally:
        await up.close()
    assert url in str(info.value)


def test_server_must_be_an_http_url() -> None:
    with pytest.raises(ConfigError):
        Upstream(UpstreamConfig(server="ftp://example"))


async def test_tls_with_ca_and_client_certificate(tmp_path: Path) -> None:
    ca = CertificateAuthority.create("test-ca")
    cert, key = ca.issue_server(["127.0.0.1"])
    (tmp_path / "server.pem").write_bytes(cert)
    (tmp_path / "server.key").write_bytes(key)
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    client_cert, client_key = ca.issue_client("proxy", ["system:masters"])
    (tmp_path / "client.pem").write_bytes(client_cert)
    (tmp_path / "client.key").write_bytes(client_key)

    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tmp_path / "server.pem", tmp_path / "server.key")
    server_ctx.load_verify_locations(tmp_path / "ca.pem")
    server_ctx.verify_mode = ssl.CERT_REQUIRED

    fake = FakeApi()

    async def who(request: web.Request) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        subject = dict(x[0] for x in peer["subject"]) if peer else {}
        return web.json_response({"cn": subject.get("commonName", "")})

    fake.routes["GET", "/who"] = who
    runner = await _serve(fake, server_ctx)
    up = Upstream(
        UpstreamConfig(
            server=fake.url,
            ca_file=str(tmp_path / "ca.pem"),
            client_cert_file=str(tmp_path / "client.pem"),
            client_key_file=str(tmp_path / "client.key"),
        )
    )
    untrusted = Upstream(UpstreamConfig(server=fake.url))
    try:
        assert await up.get_object("/who", {}) == {"cn": "proxy"}
        with pytest.raises(UpstreamError, match="TLS with the API server failed"):
            await untrusted.get_object("/who", {})
    finally:
        await up.close()
        await untrusted.close()
        await runner.cleanup()


# ---------------------------------------------------------------------------------------------
# watch: list, then follow the collection (bookmarks, 410 Gone, outages, timeouts)

LOCKS_PATH = "/apis/klock.rnemet.dev/v1/locks"


def _obj(name: str, rv: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "default", "resourceVersion": rv}}


def _line(kind: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"type": kind, "object": obj}).encode() + b"\n"


@dataclass
class WatchScript:
    """Answers LIST and WATCH requests of one collection from scripted replies, in order.

    A watch reply is a list of byte strings written one write each (a line may be split
    across writes), then the stream ends, or, when the last item is None, stays open and
    silent; an int is an HTTP status answered with a Status body.
    """

    lists: list[dict[str, Any] | int] = field(default_factory=list)
    watches: list[list[bytes | None] | int] = field(default_factory=list)
    queries: list[dict[str, str]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.queries.append(dict(request.query))
        script = self.watches if request.query.get("watch") == "true" else self.lists
        reply = script.pop(0) if script else 503
        if isinstance(reply, int):
            body = {"kind": "Status", "code": reply, "message": f"scripted {reply}"}
            return web.json_response(body, status=reply)
        if isinstance(reply, dict):
            return web.json_response(reply)
        resp = web.StreamResponse()
        resp.content_type = "application/json"
        await resp.prepare(request)
        for chunk in reply:
            if chunk is None:
                await asyncio.sleep(30)  # silent; cancelled when the test's server stops
            else:
                await resp.write(chunk)
        return resp


def _list(rv: str, *names: str) -> dict[str, Any]:
    return {"metadata": {"resourceVersion": rv}, "items": [_obj(n, rv) for n in names]}


async def _take(events: AsyncIterator[WatchEvent], n: int) -> list[WatchEvent]:
    out: list[WatchEvent] = []
    async with asyncio.timeout(20):  # only so that a broken watch fails instead of hanging
        async for event in events:
            out.append(event)
            if len(out) == n:
                break
    return out


async def test_watch_lists_then_follows_changes_and_bookmarks(api: FakeApi) -> None:
    deleted = _obj("a", "12")
    script = WatchScript(
        lists=[_list("10", "a")],
        watches=[
            [
                _line("ADDED", _obj("b", "11")),
                # One event split across writes, and a bookmark that only moves the version.
                _line("MODIFIED", _obj("b", "12"))[:20],
                _line("MODIFIED", _obj("b", "12"))[20:] + _line("BOOKMARK", _obj("", "15")),
            ],
            [_line("DELETED", deleted)],
        ],
    )
    api.routes["GET", LOCKS_PATH] = script.handle
    up = Upstream(UpstreamConfig(server=api.url))
    try:
        events = await _take(up.watch(LOCKS_PATH, timeout_seconds=7), 4)
    finally:
        await up.close()
    assert [e.type for e in events] == ["LISTED", "ADDED", "MODIFIED", "DELETED"]
    assert events[0].items == (_obj("a", "10"),) and events[0].resource_version == "10"
    assert events[2].object == _obj("b", "12")
    assert events[3].object == deleted
    list_query, first, second = script.queries
    assert "watch" not in list_query
    assert first == {
        "watch": "true",
        "resourceVersion": "10",
        "allowWatchBookmarks": "true",
        "timeoutSeconds": "7",
    }
    # The server ended the first watch: the next one resumes after the bookmark.
    assert second["resourceVersion"] == "15"


async def test_watch_from_a_resource_version_skips_the_list(api: FakeApi) -> None:
    script = WatchScript(watches=[[_line("ADDED", _obj("b", "21"))]])
    api.routes["GET", LOCKS_PATH] = script.handle
    up = Upstream(UpstreamConfig(server=api.url))
    try:
        events = await _take(up.watch(LOCKS_PATH, "20", label_selector="a=b"), 1)
    finally:
        await up.close()
    assert [e.type for e in events] == ["ADDED"]
    assert script.queries[0]["resourceVersion"] == "20"
    assert script.queries[0]["labelSelector"] == "a=b"


async def test_watch_lists_again_after_410_gone(api: FakeApi) -> None:
    gone = {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"}
    script = WatchScript(
        lists=[_list("10", "a"), _list("30", "a", "c"), _list("40")],
        # As an ERROR event inside the stream, then as the HTTP answer itself.
        watches=[[_line("ERROR", gone)], 410],
    )
    api.routes["GET", LOCKS_PATH] = script.handle
    up = Upstream(UpstreamConfig(server=api.url))
    try:
        events = await _take(up.watch(LOCKS_PATH), 3)
    finally:
        await up.close()
    assert [(e.type, e.resource_version) for e in events] == [
        ("LISTED", "10"),
        ("LISTED", "30"),
        ("LISTED", "40"),
    ]
    assert [item["metadata"]["name"] for item in events[1].items] == ["a", "c"]


async def test_watch_of_a_collection_not_served_raises_404(api: FakeApi) -> None:
    up = Upstream(UpstreamConfig(server=api.url))
    try:
        with pytest.raises(UpstreamStatusError) as info:
            await _take(up.watch(LOCKS_PATH), 1)
    finally:
        await up.close()
    assert info.value.code == 404


async def test_watch_outage_is_one_down_event_and_one_line_per_state_change(
    api: FakeApi, caplog: pytest.LogCaptureFixture
) -> None:
    script = WatchScript(
        lists=[503, 503, 503, 503, _list("10", "a")],
        watches=[[_line("ADDED", _obj("b", "11"))]],
    )
    api.routes["GET", LOCKS_PATH] = script.handle
    up = Upstream(UpstreamConfig(server=api.url))
    try:
        with caplog.at_level(logging.DEBUG, logger="klockproxy.cluster.upstream"):
            events = await _take(up.watch(LOCKS_PATH, min_backoff=0.01, max_backoff=0.02), 3)
    finally:
        await up.close()
    assert [e.type for e in events] == ["DOWN", "LISTED", "ADDED"]
    assert "HTTP 503: scripted 503" in events[0].error
    loud = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert len(loud) == 2, loud
    assert "HTTP 503" in loud[0] and "answers again (after 4 retries)" in loud[1]


async def test_watch_of_an_unreachable_server_says_so_once() -> None:
    up = Upstream(UpstreamConfig(server=f"http://127.0.0.1:{_free_port()}"))
    try:
        events = up.watch(LOCKS_PATH, min_backoff=0.01, max_backoff=0.01)
        first = await _take(events, 1)
        # Further retries fail the same way: no second DOWN while it stays down.
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await events.__anext__()
        await events.aclose()
    finally:
        await up.close()
    assert first[0].type == "DOWN" and "cannot be reached" in first[0].error


async def test_a_silent_watch_connection_is_dropped_and_resumed(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing arrives for longer than timeoutSeconds plus the grace: the connection is dead.
    monkeypatch.setattr(upstream_module, "WATCH_READ_GRACE", 0.2)
    script = WatchScript(
        lists=[_list("10")],
        watches=[[_line("ADDED", _obj("b", "11")), None], [_line("ADDED", _obj("c", "12"))]],
    )
    api.routes["GET", LOCKS_PATH] = script.handle
    up = Upstream(UpstreamConfig(server=api.url))
    try:
        events = await _take(up.watch(LOCKS_PATH, timeout_seconds=1, min_backoff=0.01), 5)
    finally:
        await up.close()
    assert [e.type for e in events] == ["LISTED", "ADDED", "DOWN", "RESUMED", "ADDED"]
    assert "the watch connection failed: Timeout on reading" in events[2].error
    # Resumed from the last version seen: nothing missed, no list.
    assert events[3].resource_version == "11"
    assert script.queries[-1]["resourceVersion"] == "11"
    assert len(script.lists) == 0 and sum("watch" not in q for q in script.queries) == 1


async def test_watch_metadata_only_asks_for_partial_object_metadata(api: FakeApi) -> None:
    script = WatchScript(lists=[_list("10")], watches=[[_line("ADDED", _obj("b", "11"))]])
    api.routes["GET", LOCKS_PATH] = script.handle
    up = Upstream(UpstreamConfig(server=api.url))
    try:
        await _take(up.watch(LOCKS_PATH, metadata_only=True), 2)
    finally:
        await up.close()
    accepts = [r.headers["Accept"] for r in api.seen]
    assert accepts[0].startswith("application/json;as=PartialObjectMetadataList;")
    assert accepts[1].startswith("application/json;as=PartialObjectMetadata;")


async def test_create_object_posts_json_and_reports_conflicts(api: FakeApi) -> None:
    api.routes["POST", "/api/v1/namespaces/default/pods"] = _json(POD, 201)
    up = Upstream(UpstreamConfig(server=api.url))
    try:
        created = await up.create_object(
            "/api/v1/namespaces/default/pods", POD, {"Authorization": "Bearer caller"}
        )
        api.routes["POST", "/api/v1/namespaces/default/pods"] = _json(
            {"kind": "Status", "message": 'pods "p" already exists'}, 409
        )
        with pytest.raises(UpstreamStatusError) as info:
            await up.create_object("/api/v1/namespaces/default/pods", POD, {})
    finally:
        await up.close()
    assert created == POD
    assert json.loads(api.bodies[0]) == POD
    assert api.seen[0].headers["Content-Type"] == "application/json"
    assert info.value.code == 409 and "already exists" in info.value.message
