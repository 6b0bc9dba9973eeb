"""Upstream: async lookups against a tiny aiohttp stand-in for the API server."""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from klockproxy.cluster.certs import CertificateAuthority
from klockproxy.cluster.upstream import Upstream, UpstreamConfig, UpstreamStatusError
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
    runner = web.AppRunner(app)
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
