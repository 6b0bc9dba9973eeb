"""Adversarial cases for the addon: requests crafted to get a forbidden mutation past it.

Each test is a way someone could try to slip a write past a Lock (odd paths, odd bodies,
patch tricks, subresources, identity headers) or make the proxy fail open (unreadable
bodies, upstream failures). The expected answer is what a user sees: the proxy's Status (code,
reason, message) or, for allowed requests, what is forwarded to the API server.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

import pytest
import yaml
from aiohttp import web
from mitmproxy import exceptions
from mitmproxy.test import taddons

from klockproxy.cluster.upstream import Upstream, UpstreamConfig, UpstreamStatusError
from klockproxy.core.engine import Engine
from klockproxy.core.locks import InvalidLock, load_locks_from_text
from klockproxy.core.protobuf import (
    K8S_MAGIC,
    encode_len_field,
    encode_map_entry,
    encode_string_field,
)
from klockproxy.core.types import UserInfo
from klockproxy.proxy.addon import KlockProxy
from tests.fakes import ADMIN, JONNY, FakeUpstream, StaticLocks, pod
from tests.proxy.support import (
    APPLY,
    GC_LOCK,
    LOCKS,
    MERGE,
    MY_POD,
    OTHER_POD,
    PROTOBUF,
    make_flow,
    merge_patch,
    run,
    status_of,
)

EXTRA_LOCKS = """
---
apiVersion: klock.rnemet.dev/v1
kind: Lock
metadata: {name: freeze, namespace: frozen}
spec:
  operations: [UPDATE, DELETE]
"""

JSON_PATCH = "application/json-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
DB = "/api/v1/namespaces/prod/pods/db"
SECRET = "/api/v1/namespaces/frozen/secrets/creds"


class WhoAmI(FakeUpstream):
    """A fake API server whose SelfSubjectReview answers from the Impersonate-User header."""

    async def self_subject_review(self, headers: Mapping[str, str | Sequence[str]]) -> UserInfo:
        self.calls.append(("ssr", "", dict(headers)))
        for name, value in headers.items():
            if name.lower() == "impersonate-user":
                values = [value] if isinstance(value, str) else list(value)
                return UserInfo(values[0])
        return ADMIN


@pytest.fixture
def upstream() -> WhoAmI:
    up = WhoAmI()
    up.objects[MY_POD] = pod("my-pod", {"aura": "red"})
    up.objects[OTHER_POD] = pod("other-pod", {})
    up.objects[DB] = pod("db", {"env": "prod"}, ns="prod")
    up.objects[SECRET] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "creds", "namespace": "frozen", "resourceVersion": "9"},
        "data": {"password": "aHVudGVyMg=="},
    }
    return up


def proxy_with_lock(
    upstream: WhoAmI, name: str, namespace: str, operations: list[str], matcher: str
) -> KlockProxy:
    """An addon enforcing exactly one Lock (``matcher`` as YAML flow text)."""
    lock = (
        "apiVersion: klock.rnemet.dev/v1\nkind: Lock\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\n"
        f"spec: {{operations: [{', '.join(operations)}], matcher: {matcher}}}\n"
    )
    engine = Engine(load_locks_from_text(lock, source="t"))
    return KlockProxy(lock_set=StaticLocks(engine), upstream=upstream)  # type: ignore[arg-type]


@pytest.fixture
def addon(upstream: WhoAmI) -> Iterator[KlockProxy]:
    engine = Engine(load_locks_from_text(LOCKS + EXTRA_LOCKS, source="test"))
    proxy = KlockProxy(lock_set=StaticLocks(engine), upstream=upstream)  # type: ignore[arg-type]
    with taddons.context(proxy) as tctx:
        tctx.configure(proxy)
        yield proxy


def forwarded(flow: Any) -> bool:
    return flow.response is None


def denied(flow: Any, matcher: str = "map[aura:red]") -> dict[str, Any]:
    status = status_of(flow)
    assert status["code"] == 403, status
    assert status["reason"] == "Forbidden"
    assert f"denied, there is a lock: {matcher}" in status["message"]
    return status


def refused(flow: Any, code: int) -> dict[str, Any]:
    status = status_of(flow)
    assert status["code"] == code, status
    assert status["message"].startswith("klockproxy: "), status
    return status


# ---------------------------------------------------------------------------------------------
# Path tricks: the proxy must see the object the API server acts on


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/namespaces/default/pods/my%2Dpod",  # escaped '-' decodes to my-pod
        "/api/v1/namespaces/%64efault/pods/my-pod",  # escaped 'd' in the namespace
        "/api/v1/namespaces/default/p%6Fds/my-pod",  # escaped resource
        "/api/%761/namespaces/default/pods/my-pod",  # escaped version
        "/api/v1/namespaces/default/pods/my-pod?dryRun=All",
        "/api/v1/namespaces/default/pods/my-pod?dryRun=all",
        "/api/v1/namespaces/default/pods/my-pod?dryRun=",
        "/api/v1/namespaces/default/pods/my-pod?gracePeriodSeconds=0&dryRun=All&dryRun=x",
    ],
)
async def test_escaped_or_dry_run_delete_of_a_locked_pod_is_denied(
    addon: KlockProxy, path: str
) -> None:
    flow = make_flow("DELETE", path)
    await run(addon, flow)
    status = denied(flow)
    assert status["details"]["name"] == "my-pod"


@pytest.mark.parametrize("method", ["delete", "Delete", "dElEtE"])
async def test_method_case_does_not_skip_the_check(addon: KlockProxy, method: str) -> None:
    flow = make_flow(method, MY_POD)
    await run(addon, flow)
    denied(flow)


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/namespaces/default/pods/my-pod/",  # trailing slash
        "/api/v1/namespaces/default//pods/my-pod",  # empty segment
        "//api/v1/namespaces/default/pods/my-pod",
        "/api/v1/namespaces/default/pods/x/../my-pod",
        "/api/v1/namespaces/default/pods/x/%2E%2E/my-pod",  # escaped '..'
        "/api/v1/namespaces/default/pods/./my-pod",
        "/api/v1/namespaces/default/pods/my-pod%2Fstatus",  # escaped '/'
        "/api/v1/namespaces/default/pods/my-pod%2fstatus",
        "/api/v1/namespaces/default/pods/my-pod%252Fstatus",  # double encoding is a name: 404
        "/api/v1/namespaces/default/pods/my-pod%00",
        "/api/v1/namespaces/default/pods/my-pod%zz",
        "/api/v1/namespaces/default/pods/my-pod%C3",  # not UTF-8
        "/api/v1/proxy/namespaces/default/pods/my-pod",  # legacy proxy prefix
        "/api/v1/watch/namespaces/default/pods/my-pod",  # legacy watch prefix
        "/api/v1/namespaces/default/pods/my-pod?labelSelector=a;b",  # Go drops ';' pairs
        "/api/v1/namespaces/default/pods/my-pod/status/extra",
    ],
)
async def test_unroutable_mutations_are_refused_not_forwarded(
    addon: KlockProxy, upstream: WhoAmI, path: str
) -> None:
    flow = make_flow("DELETE", path)
    await run(addon, flow)
    if "%252F" in path:
        # Decodes to the name "my-pod%2Fstatus": judged as that (missing) object, the API
        # server answers 404 itself.
        assert forwarded(flow)
        assert upstream.calls[0][1] == "/api/v1/namespaces/default/pods/my-pod%252Fstatus"
        return
    status = status_of(flow)
    assert status["code"] == 400
    assert status["message"].startswith(
        ("klockproxy: refusing DELETE ", "klockproxy: malformed request: ")
    )


@pytest.mark.parametrize("method", ["PUT", "PATCH", "POST"])
async def test_writes_to_the_legacy_watch_prefix_are_refused(
    addon: KlockProxy, method: str
) -> None:
    flow = make_flow(method, "/api/v1/watch/namespaces/default/pods/my-pod", merge_patch({}), MERGE)
    await run(addon, flow)
    assert status_of(flow)["code"] == 400


async def test_lock_group_lookalikes_are_not_exempt(addon: KlockProxy) -> None:
    # Only locks.klock.rnemet.dev is exempt; a pod path does not become one through the query
    # or through a look-alike group.
    for path in (
        MY_POD + "?x=/apis/klock.rnemet.dev/v1/namespaces/default/locks/l",
        "/apis/klock.rnemet.dev.evil/v1/namespaces/default/locks/x",
    ):
        flow = make_flow("DELETE", path)
        await run(addon, flow)
        if "evil" in path:
            # A different group: judged (the object does not exist, so the API server 404s).
            assert forwarded(flow)
        else:
            denied(flow)


# ---------------------------------------------------------------------------------------------
# Body tricks


@pytest.mark.parametrize(
    "ctype",
    [
        "Application/Merge-Patch+JSON",
        "application/merge-patch+json; charset=utf-8",
        "application/merge-patch+json ;charset=UTF-8",
    ],
)
async def test_content_type_parameters_and_case_are_still_judged(
    addon: KlockProxy, ctype: str
) -> None:
    flow = make_flow("PATCH", OTHER_POD, merge_patch({"aura": "red"}), ctype)
    await run(addon, flow)
    denied(flow)


@pytest.mark.parametrize(
    "ctype",
    [
        None,
        "text/plain",
        "application/json-seq",
        "application/merge-patch+json, application/json",
        "application/cbor",
    ],
)
async def test_patch_of_unknown_type_is_refused(addon: KlockProxy, ctype: str | None) -> None:
    flow = make_flow("PATCH", OTHER_POD, merge_patch({"aura": "red"}), ctype)
    await run(addon, flow)
    status = status_of(flow)
    assert status["code"] in (400, 415)
    assert status["message"].startswith("klockproxy: ")


@pytest.mark.parametrize(
    "ctype", ["application/cbor", "application/x-protobuf", "text/plain", "application/xml"]
)
async def test_create_with_an_unreadable_body_type_is_refused(
    addon: KlockProxy, ctype: str
) -> None:
    body = json.dumps(pod("new", {"aura": "red"})).encode()
    flow = make_flow("POST", "/api/v1/namespaces/default/pods", body, ctype)
    await run(addon, flow)
    status = status_of(flow)
    assert status["code"] == 400
    assert "body cannot be read" in status["message"]


async def test_json_duplicate_keys_are_never_judged_on_fewer_labels_than_go_stores(
    addon: KlockProxy,
) -> None:
    # Go's JSON decoding keeps the LAST value of a repeated scalar and decodes a repeated
    # object INTO the first (maps keep their entries): here the API server would store
    # aura=red. Refusing duplicates (400) or judging aura=red (403) are both safe.
    body = (
        b'{"apiVersion":"v1","kind":"Pod","metadata":{"name":"new",'
        b'"labels":{"aura":"blue"},"labels":{"aura":"blue","aura":"red"}}}'
    )
    flow = make_flow("POST", "/api/v1/namespaces/default/pods", body, "application/json")
    await run(addon, flow)
    assert status_of(flow)["code"] in (400, 403)


async def test_yaml_duplicate_keys_are_refused(addon: KlockProxy) -> None:
    body = b"apiVersion: v1\nkind: Pod\nmetadata:\n  name: new\n  labels:\n    aura: blue\n"
    body += b"  labels:\n    aura: red\n"
    flow = make_flow("POST", "/api/v1/namespaces/default/pods", body, "application/yaml")
    await run(addon, flow)
    status = status_of(flow)
    assert status["code"] == 400
    assert "duplicate key" in status["message"]


@pytest.mark.parametrize(
    "body",
    [
        b'{"apiVersion":"v1","kind":"Pod","metadata":{"name":"new","labels":{"aura":NaN}}}',
        b'{"apiVersion":"v1","kind":"Pod","metadata":{"name":"new","labels":{"aura":1}}}',
        b'{"apiVersion":"v1","kind":"Pod","metadata":{"name":"new","labels":["aura"]}}',
        b'{"apiVersion":"v1","kind":"Pod","metadata":"new"}',
        b'[{"apiVersion":"v1"}]',
        b"",
        b"{",
    ],
)
async def test_malformed_create_bodies_are_refused(addon: KlockProxy, body: bytes) -> None:
    flow = make_flow("POST", "/api/v1/namespaces/default/pods", body, "application/json")
    await run(addon, flow)
    status = status_of(flow)
    assert status["code"] in (400, 500)
    assert status["message"].startswith("klockproxy: ")


async def test_null_labels_create_is_allowed(addon: KlockProxy) -> None:
    body = b'{"apiVersion":"v1","kind":"Pod","metadata":{"name":"new","labels":null}}'
    flow = make_flow("POST", "/api/v1/namespaces/default/pods", body, "application/json")
    await run(addon, flow)
    assert forwarded(flow)


async def test_generate_name_create_is_judged(addon: KlockProxy) -> None:
    obj = pod("x", {"aura": "red"})
    del obj["metadata"]["name"]
    obj["metadata"]["generateName"] = "red-"
    flow = make_flow(
        "POST", "/api/v1/namespaces/default/pods", json.dumps(obj).encode(), "application/json"
    )
    await run(addon, flow)
    status = denied(flow)
    assert "red-" in status["message"]


def _protobuf_pod(*metadata_chunks: bytes) -> bytes:
    type_meta = encode_string_field(1, "v1") + encode_string_field(2, "Pod")
    raw = b"".join(encode_len_field(1, chunk) for chunk in metadata_chunks)
    return K8S_MAGIC + encode_len_field(1, type_meta) + encode_len_field(2, raw)


async def test_protobuf_metadata_split_over_two_fields_is_merged(addon: KlockProxy) -> None:
    # Protobuf merges repeated embedded messages: the labels in the second ObjectMeta chunk
    # are the pod's labels, as the API server decodes them.
    first = encode_string_field(1, "new") + encode_map_entry(11, "team", "a")
    second = encode_map_entry(11, "aura", "red")
    flow = make_flow(
        "POST", "/api/v1/namespaces/default/pods", _protobuf_pod(first, second), PROTOBUF
    )
    await run(addon, flow)
    denied(flow)


async def test_protobuf_repeated_label_entry_last_wins(addon: KlockProxy) -> None:
    meta = (
        encode_string_field(1, "new")
        + encode_map_entry(11, "aura", "blue")
        + encode_map_entry(11, "aura", "red")
    )
    flow = make_flow("POST", "/api/v1/namespaces/default/pods", _protobuf_pod(meta), PROTOBUF)
    await run(addon, flow)
    denied(flow)


async def test_protobuf_with_a_mistyped_labels_field_is_refused(addon: KlockProxy) -> None:
    meta = encode_string_field(1, "new") + b"\x58\x01"  # field 11 as a varint
    flow = make_flow("POST", "/api/v1/namespaces/default/pods", _protobuf_pod(meta), PROTOBUF)
    await run(addon, flow)
    assert status_of(flow)["code"] == 400


async def test_gzip_encoded_patch_is_decoded_and_judged(addon: KlockProxy) -> None:
    body = gzip.compress(merge_patch({"aura": "red"}))
    flow = make_flow(
        "PATCH",
        OTHER_POD,
        body,
        MERGE,
        headers=[("Authorization", "Bearer caller-token"), ("Content-Encoding", "gzip")],
    )
    await run(addon, flow)
    denied(flow)


async def test_undecodable_content_encoding_is_refused(addon: KlockProxy) -> None:
    flow = make_flow(
        "PATCH",
        OTHER_POD,
        b"\x00not gzip",
        MERGE,
        headers=[("Authorization", "Bearer caller-token"), ("Content-Encoding", "gzip")],
    )
    await run(addon, flow)
    status = status_of(flow)
    assert status["code"] == 400
    assert "Content-Encoding" in status["message"]


async def test_http2_covered_mutation_without_content_length_is_judged(
    addon: KlockProxy,
) -> None:
    flow = make_flow("PATCH", OTHER_POD, merge_patch({"aura": "red"}), MERGE, http2=True)
    await run(addon, flow)
    denied(flow)


# ---------------------------------------------------------------------------------------------
# Patch tricks: the labels after the patch are the ones the API server will store


@pytest.mark.parametrize(
    ("ctype", "patch"),
    [
        (STRATEGIC, {"metadata": {"labels": {"$retainKeys": []}}}),
        (STRATEGIC, {"metadata": {"labels": {"$patch": "delete"}}}),
        (STRATEGIC, {"metadata": {"labels": {"$patch": "replace", "tier": "db"}}}),
        (STRATEGIC, {"metadata": {"$retainKeys": ["name"]}}),
        (STRATEGIC, {"metadata": {"labels": {"env": None}}}),
        (MERGE, {"metadata": {"labels": None}}),
        (MERGE, {"metadata": {"labels": {"env": "prod2"}}}),
        (JSON_PATCH, [{"op": "remove", "path": "/metadata/labels"}]),
        (JSON_PATCH, [{"op": "replace", "path": "/metadata/labels", "value": {}}]),
        (
            JSON_PATCH,
            [{"op": "move", "from": "/metadata/labels/env", "path": "/metadata/annotations"}],
        ),
        (
            JSON_PATCH,
            [
                {"op": "copy", "from": "/metadata/name", "path": "/metadata/labels/env"},
            ],
        ),
    ],
)
async def test_patches_dropping_the_label_a_negated_matcher_needs_are_denied(
    addon: KlockProxy, ctype: str, patch: Any
) -> None:
    # Lock "notprod" (namespace prod, UPDATE) matches objects whose env is NOT "prod": pod db
    # (env=prod) is free, but no patch may take env=prod away from it.
    flow = make_flow("PATCH", DB, json.dumps(patch).encode(), ctype)
    await run(addon, flow)
    denied(flow, "map[env:^prod]")


@pytest.mark.parametrize(
    ("ctype", "patch"),
    [
        (JSON_PATCH, [{"op": "add", "path": "/metadata/labels", "value": {"aura": "red"}}]),
        (JSON_PATCH, [{"op": "add", "path": "/metadata/labels/aura", "value": "red"}]),
        (
            JSON_PATCH,
            [
                {"op": "add", "path": "/metadata/annotations", "value": {"a": "red"}},
                {"op": "copy", "from": "/metadata/annotations/a", "path": "/metadata/labels/aura"},
            ],
        ),
        (
            JSON_PATCH,
            [
                {"op": "add", "path": "/metadata/annotations", "value": {"aura": "red"}},
                {"op": "move", "from": "/metadata/annotations", "path": "/metadata/labels"},
            ],
        ),
        (JSON_PATCH, [{"op": "add", "path": "/metadata", "value": {"labels": {"aura": "red"}}}]),
        (STRATEGIC, {"metadata": {"labels": {"$patch": "replace", "aura": "red"}}}),
        (STRATEGIC, {"metadata": {"$patch": "replace", "labels": {"aura": "red"}}}),
        (APPLY, {"apiVersion": "v1", "kind": "Pod", "metadata": {"labels": {"aura": "red"}}}),
    ],
)
async def test_patches_adding_the_locked_label_are_denied(
    addon: KlockProxy, ctype: str, patch: Any
) -> None:
    flow = make_flow("PATCH", OTHER_POD, json.dumps(patch).encode(), ctype)
    await run(addon, flow)
    denied(flow)


async def test_json_patch_escaped_label_key_is_judged(addon: KlockProxy, upstream: WhoAmI) -> None:
    proxy = proxy_with_lock(upstream, "slash", "default", ["UPDATE"], '{"klock.io/aura": red}')
    with taddons.context(proxy) as tctx:
        tctx.configure(proxy)
        ops = [{"op": "add", "path": "/metadata/labels/klock.io~1aura", "value": "red"}]
        flow = make_flow("PATCH", OTHER_POD, json.dumps(ops).encode(), JSON_PATCH)
        await run(proxy, flow)
        denied(flow, "map[klock.io/aura:red]")


async def test_failing_patches_are_refused_not_forwarded(addon: KlockProxy) -> None:
    for ctype, patch in (
        (JSON_PATCH, [{"op": "remove", "path": "/metadata/labels/nope"}]),
        (JSON_PATCH, [{"op": "bogus", "path": "/metadata/labels/aura"}]),
        (JSON_PATCH, {"op": "add"}),
        (MERGE, "just a string"),
        (STRATEGIC, {"metadata": {"labels": {"$patch": "explode"}}}),
    ):
        flow = make_flow("PATCH", OTHER_POD, json.dumps(patch).encode(), ctype)
        await run(addon, flow)
        status = status_of(flow)
        assert status["code"] in (400, 415, 422), (ctype, patch, status)


async def test_apply_patch_with_several_documents_is_refused(addon: KlockProxy) -> None:
    body = b"metadata:\n  labels: {aura: blue}\n---\nmetadata:\n  labels: {aura: red}\n"
    flow = make_flow("PATCH", OTHER_POD, body, APPLY)
    await run(addon, flow)
    assert status_of(flow)["code"] == 400


# ---------------------------------------------------------------------------------------------
# Subresources and verbs acting on the parent


@pytest.mark.parametrize(
    ("method", "path", "ctype", "body"),
    [
        ("PATCH", MY_POD + "/status", MERGE, b'{"status":{"phase":"Failed"}}'),
        ("PUT", MY_POD + "/status", "application/json", json.dumps(pod("my-pod", {})).encode()),
        ("PATCH", MY_POD + "/ephemeralcontainers", STRATEGIC, b'{"spec":{}}'),
        ("POST", MY_POD + "/eviction", "application/json", b'{"kind":"Eviction"}'),
        ("POST", MY_POD + "/eviction", None, b""),
        ("GET", MY_POD + "/exec?command=sh&stdin=true", None, b""),
        ("POST", MY_POD + "/exec?command=sh", None, b""),
        ("GET", MY_POD + "/attach?stdin=true", None, b""),
        ("GET", MY_POD + "/portforward?ports=80", None, b""),
        ("GET", MY_POD + "/proxy", None, b""),
        ("GET", MY_POD + "/proxy/index.html", None, b""),
        ("POST", MY_POD + "/proxy/api/shutdown", None, b""),
        ("OPTIONS", MY_POD + "/proxy/x", None, b""),
        ("GET", "/api/v1/namespaces/default/pods/my-pod:8080/proxy/x", None, b""),
        ("GET", "/api/v1/namespaces/default/pods/https:my-pod:443/proxy/x", None, b""),
        ("GET", "/api/v1/namespaces/default/pods/my-pod%3A8080/proxy/x", None, b""),
    ],
)
async def test_subresources_of_a_locked_pod_are_denied(
    addon: KlockProxy, method: str, path: str, ctype: str | None, body: bytes
) -> None:
    flow = make_flow(method, path, body, ctype)
    await run(addon, flow)
    status = denied(flow)
    assert status["details"]["name"] == "my-pod"


async def test_deletecollection_with_a_field_selector_is_listed_with_it(
    addon: KlockProxy, upstream: WhoAmI
) -> None:
    path = "/api/v1/namespaces/default/pods"
    upstream.lists[path] = [pod("my-pod", {"aura": "red"})]
    flow = make_flow("DELETE", path + "?fieldSelector=metadata.name%3Dmy-pod")
    await run(addon, flow)
    denied(flow)
    assert any(c[0] == "list" and c[1] == path for c in upstream.calls)


async def test_namespace_freeze_covers_every_object(addon: KlockProxy) -> None:
    # A Lock without a matcher freezes every object of its namespace, secrets included.
    patch = json.dumps({"data": {"password": "b3duZWQ="}}).encode()
    flow = make_flow("PATCH", SECRET, patch, MERGE)
    await run(addon, flow)
    denied(flow, "map[]")


# ---------------------------------------------------------------------------------------------
# Who is calling: the identity behind the exemption


async def test_impersonation_header_case_and_cache(addon: KlockProxy, upstream: WhoAmI) -> None:
    # Admin is refused; the same token impersonating jonny-op (any header case) is exempt;
    # then admin again must not ride jonny-op's cached identity.
    as_admin = make_flow("PATCH", MY_POD, merge_patch({"x": "1"}), MERGE)
    await run(addon, as_admin)
    denied(as_admin)

    for header in ("Impersonate-User", "IMPERSONATE-USER", "impersonate-user"):
        as_jonny = make_flow(
            "PATCH",
            MY_POD,
            merge_patch({"x": "1"}),
            MERGE,
            headers=[("Authorization", "Bearer caller-token"), (header, JONNY.username)],
        )
        await run(addon, as_jonny)
        assert forwarded(as_jonny), header

    again = make_flow("PATCH", MY_POD, merge_patch({"x": "2"}), MERGE)
    await run(addon, again)
    denied(again)


async def test_extra_impersonation_headers_change_the_cache_key(
    addon: KlockProxy, upstream: WhoAmI
) -> None:
    base = [("Authorization", "Bearer caller-token"), ("Impersonate-User", JONNY.username)]
    first = make_flow("PATCH", MY_POD, merge_patch({"x": "1"}), MERGE, headers=base)
    await run(addon, first)
    assert forwarded(first)
    reviews = sum(1 for c in upstream.calls if c[0] == "ssr")
    for extra in (
        ("Impersonate-Group", "system:masters"),
        ("Impersonate-Uid", "1234"),
        ("Impersonate-Extra-Scopes", "view"),
    ):
        flow = make_flow("PATCH", MY_POD, merge_patch({"x": "1"}), MERGE, headers=[*base, extra])
        await run(addon, flow)
        now = sum(1 for c in upstream.calls if c[0] == "ssr")
        assert now == reviews + 1, f"{extra[0]} did not trigger a new SelfSubjectReview"
        reviews = now
        ssr = [c for c in upstream.calls if c[0] == "ssr"][-1]
        assert ssr[2][extra[0]] == [extra[1]]


async def test_a_second_bearer_token_is_a_different_identity(
    addon: KlockProxy, upstream: WhoAmI
) -> None:
    jonny = make_flow(
        "PATCH",
        MY_POD,
        merge_patch({"x": "1"}),
        MERGE,
        headers=[("Authorization", "Bearer t1"), ("Impersonate-User", JONNY.username)],
    )
    await run(addon, jonny)
    assert forwarded(jonny)
    # Same Impersonate-User value but as a second header value: not the cached entry.
    doubled = make_flow(
        "PATCH",
        MY_POD,
        merge_patch({"x": "1"}),
        MERGE,
        headers=[
            ("Authorization", "Bearer t1"),
            ("Impersonate-User", JONNY.username),
            ("Impersonate-User", "admin"),
        ],
    )
    await run(addon, doubled)
    ssr = [c for c in upstream.calls if c[0] == "ssr"]
    assert len(ssr) == 2
    assert ssr[-1][2]["Impersonate-User"] == [JONNY.username, "admin"]


# ---------------------------------------------------------------------------------------------
# Failing closed: lookups that do not give a usable answer


@pytest.mark.parametrize(
    "current",
    [
        {"metadata": {"name": "other-pod", "labels": {"aura": 1}}},
        {"metadata": {"name": "other-pod", "labels": ["aura"]}},
        {"metadata": "other-pod"},
    ],
)
async def test_garbage_current_object_fails_closed(
    addon: KlockProxy, upstream: WhoAmI, current: dict[str, Any]
) -> None:
    upstream.objects[OTHER_POD] = current
    flow = make_flow("PATCH", OTHER_POD, merge_patch({"x": "y"}), MERGE)
    await run(addon, flow)
    assert status_of(flow)["code"] in (500, 503)


async def test_garbage_deletecollection_item_fails_closed(
    addon: KlockProxy, upstream: WhoAmI
) -> None:
    path = "/api/v1/namespaces/default/pods"
    upstream.lists[path] = [{"metadata": {"name": "p", "labels": {"aura": ["red"]}}}]
    flow = make_flow("DELETE", path)
    await run(addon, flow)
    assert status_of(flow)["code"] in (500, 503)


# ---------------------------------------------------------------------------------------------
# Logging: refusals are logged without tokens or query strings


async def test_refusals_log_neither_tokens_nor_queries(
    addon: KlockProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    headers = [("Authorization", "Bearer s3cr3t-t0ken"), ("Impersonate-User", "admin")]
    for method, path, body, ctype in (
        ("DELETE", MY_POD + "?token=q-s3cr3t", b"", None),
        ("PATCH", OTHER_POD + "?x=q-s3cr3t", b"{not json", MERGE),
        ("DELETE", MY_POD + "%2F?x=q-s3cr3t", b"", None),
    ):
        flow = make_flow(method, path, body, ctype, headers=headers)
        await run(addon, flow)
        assert flow.response is not None
    assert "s3cr3t" not in caplog.text


# ---------------------------------------------------------------------------------------------
# Failing closed with the real Upstream client against a misbehaving API server


RED_POD_JSON = json.dumps(pod("my-pod", {"aura": "red"})).encode()
FREE_POD_JSON = json.dumps(pod("other-pod", {})).encode()


def _answer(
    kind: str, release: asyncio.Event
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        if kind == "html":
            return web.Response(text="<html>oops</html>", content_type="text/html")
        if kind == "list":
            return web.json_response([])
        if kind == "500":
            return web.Response(status=500, text="<html>Internal Server Error</html>")
        if kind == "401":
            return web.json_response({"kind": "Status", "message": "Unauthorized"}, status=401)
        if kind == "403":
            return web.json_response(
                {"kind": "Status", "message": 'pods "my-pod" is forbidden: User "x"'}, status=403
            )
        if kind == "slow":
            await release.wait()
        if kind == "truncated":
            resp = web.StreamResponse(headers={"Content-Length": "1000"})
            await resp.prepare(request)
            await resp.write(b'{"metadata":')
            assert request.transport is not None
            request.transport.close()
            return resp
        if kind == "redirect":
            # Elsewhere: an unlocked object. The lookup must not follow it.
            raise web.HTTPFound("/api/v1/namespaces/default/pods/other-pod")
        if request.path.endswith("/other-pod"):
            return web.Response(body=FREE_POD_JSON, content_type="application/json")
        return web.Response(body=RED_POD_JSON, content_type="application/json")

    return handle


@pytest.fixture
async def misbehaving() -> AsyncIterator[Callable[[str], Awaitable[Upstream]]]:
    runners: list[web.AppRunner] = []
    clients: list[Upstream] = []
    release = asyncio.Event()

    async def start(kind: str) -> Upstream:
        app = web.Application()
        app.router.add_route("*", "/api/v1/namespaces/default/pods/my-pod", _answer(kind, release))
        app.router.add_route(
            "*", "/api/v1/namespaces/default/pods/other-pod", _answer("ok", release)
        )
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        client = Upstream(UpstreamConfig(server=f"http://127.0.0.1:{port}"), timeout=0.5)
        clients.append(client)
        return client

    yield start
    release.set()
    for client in clients:
        await client.close()
    for runner in runners:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("kind", "code"),
    [
        ("html", 503),
        ("list", 503),
        ("500", 503),
        ("401", 401),
        ("403", 403),
        ("slow", 503),
        ("truncated", 503),
    ],
)
async def test_lookup_failures_of_the_real_client_fail_closed(
    misbehaving: Callable[[str], Awaitable[Upstream]], kind: str, code: int
) -> None:
    client = await misbehaving(kind)
    engine = Engine(load_locks_from_text(LOCKS, source="test"))
    proxy = KlockProxy(lock_set=StaticLocks(engine), upstream=client)  # type: ignore[arg-type]
    with taddons.context(proxy) as tctx:
        tctx.configure(proxy)
        flow = make_flow("PATCH", OTHER_POD.replace("other-pod", "my-pod"), b"{}", MERGE)
        await run(proxy, flow)
        status = status_of(flow)
        assert status["code"] == code, status
        assert status["message"].startswith("klockproxy: ")
        assert "caller-token" not in status["message"]


async def test_two_content_types_on_a_covered_write_are_refused(addon: KlockProxy) -> None:
    # Go reads the first Content-Type, mitmproxy joins them: never guess, refuse.
    flow = make_flow(
        "PATCH",
        OTHER_POD,
        merge_patch({"aura": "red"}),
        headers=[
            ("Authorization", "Bearer caller-token"),
            ("Content-Type", JSON_PATCH),
            ("Content-Type", MERGE),
        ],
    )
    await run(addon, flow)
    status = status_of(flow)
    assert status["code"] in (400, 415)


# ---------------------------------------------------------------------------------------------
# Regressions for bypasses found in an adversarial review, fixed in the addon


async def test_namespace_delete_with_a_locked_pod_inside_is_refused(
    addon: KlockProxy, upstream: WhoAmI
) -> None:
    # The namespace itself is unlabelled; deleting it would delete my-pod (aura=red, lockred).
    upstream.objects["/api/v1/namespaces/default"] = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "default", "uid": "ns-uid", "resourceVersion": "5"},
    }
    upstream.lists["/api/v1/namespaces/default/pods"] = [pod("my-pod", {"aura": "red"})]
    flow = make_flow("DELETE", "/api/v1/namespaces/default")
    await run(addon, flow)
    status = denied(flow)
    assert status["message"].startswith('namespaces "default" is forbidden: ')


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", MY_POD + "/proxy/"),
        ("GET", MY_POD + "/proxy/a//b"),
        ("GET", MY_POD + "/proxy/a%2Fb"),
        ("GET", MY_POD + "/proxy/../x"),
        ("POST", MY_POD + "/proxy/api/"),
        ("OPTIONS", MY_POD + "/proxy/x/"),
        ("HEAD", MY_POD + "/proxy/"),
        ("GET", "/api/v1/namespaces/default/pods/my-pod:8080/proxy/"),
        ("GET", MY_POD + "/exec/?command=sh"),
        ("GET", MY_POD + "/attach/?stdin=true"),
    ],
)
async def test_connect_with_an_odd_tail_is_judged_not_waved_through(
    addon: KlockProxy, method: str, path: str
) -> None:
    flow = make_flow(method, path)
    await run(addon, flow)
    if "/../" in path:
        # A dot segment in a proxied path is refused outright (issue 10 item 9).
        assert "'..' segment" in refused(flow, 400)["message"]
        return
    status = denied(flow)
    assert status["details"]["name"] == "my-pod"
    assert "noexec" in status["message"]


async def test_put_that_creates_is_judged_by_a_create_only_lock(upstream: WhoAmI) -> None:
    proxy = proxy_with_lock(upstream, "nocreate", "leases", ["CREATE"], "{aura: red}")
    with taddons.context(proxy) as tctx:
        tctx.configure(proxy)
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": "leader", "labels": {"aura": "red"}},
        }
        flow = make_flow(
            "PUT",
            "/apis/coordination.k8s.io/v1/namespaces/leases/leases/leader",
            json.dumps(lease).encode(),
            "application/json",
        )
        await run(proxy, flow)
        denied(flow)


async def test_deletecollection_at_an_old_resource_version_is_refused(
    addon: KlockProxy, upstream: WhoAmI
) -> None:
    # my-pod is aura=red today; at rv 10 it was aura=green. The API server would delete the
    # names of the snapshot the client asks for.
    path = "/api/v1/namespaces/default/pods"
    upstream.lists[path] = [pod("my-pod", {"aura": "red"})]
    flow = make_flow(
        "DELETE", path + "?labelSelector=aura%3Dgreen&resourceVersion=10&resourceVersionMatch=Exact"
    )
    await run(addon, flow)
    status = status_of(flow)
    assert status["code"] == 400
    assert "resourceVersion" in status["message"]


async def test_server_side_apply_removing_an_owned_label_is_judged_on_the_result(
    upstream: WhoAmI,
) -> None:
    proxy = proxy_with_lock(
        upstream, "red-unless-override", "ssa", ["UPDATE"], "{aura: red, override: ^yes}"
    )
    current = pod("web", {"aura": "red", "override": "yes"}, ns="ssa")
    current["metadata"]["managedFields"] = [
        {
            "manager": "kubectl-label",
            "operation": "Update",
            "apiVersion": "v1",
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:metadata": {"f:labels": {"f:aura": {}}}},
        },
        {
            "manager": "ops",
            "operation": "Apply",
            "apiVersion": "v1",
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:metadata": {"f:labels": {"f:override": {}}}},
        },
    ]
    upstream.objects["/api/v1/namespaces/ssa/pods/web"] = current
    with taddons.context(proxy) as tctx:
        tctx.configure(proxy)
        # "ops" applies without its override label: the API server removes it and the pod
        # ends up {aura: red, team: a} (its dry run says so), which the lock matches.
        upstream.dry_run_answers["/api/v1/namespaces/ssa/pods/web"] = pod(
            "web", {"aura": "red", "team": "a"}, ns="ssa"
        )
        config = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "web", "labels": {"team": "a"}},
        }
        flow = make_flow(
            "PATCH",
            "/api/v1/namespaces/ssa/pods/web?fieldManager=ops&force=true",
            yaml.safe_dump(config).encode(),
            APPLY,
        )
        await run(proxy, flow)
        denied(flow, "map[aura:red override:^yes]")

        # Another manager applying the same configuration removes nothing: allowed.
        upstream.dry_run_answers["/api/v1/namespaces/ssa/pods/web"] = pod(
            "web", {"aura": "red", "override": "yes", "team": "a"}, ns="ssa"
        )
        other = make_flow(
            "PATCH",
            "/api/v1/namespaces/ssa/pods/web?fieldManager=someone",
            yaml.safe_dump(config).encode(),
            APPLY,
        )
        await run(proxy, other)
        assert forwarded(other)


async def test_status_subresource_label_change_is_judged_on_the_new_labels(
    addon: KlockProxy,
) -> None:
    body = json.dumps(pod("other-pod", {"aura": "red"})).encode()
    flow = make_flow("PUT", OTHER_POD + "/status", body, "application/json")
    await run(addon, flow)
    denied(flow)

    patch = make_flow("PATCH", OTHER_POD + "/status", merge_patch({"aura": "red"}), MERGE)
    await run(addon, patch)
    denied(patch)

    harmless = make_flow("PATCH", OTHER_POD + "/status", b'{"status":{"phase":"Running"}}', MERGE)
    await run(addon, harmless)
    assert forwarded(harmless)
    assert json.loads(harmless.request.content or b"")["metadata"]["resourceVersion"] == "42"


async def test_client_precondition_other_than_the_checked_version_is_not_kept(
    addon: KlockProxy,
) -> None:
    # Judged at resourceVersion 42; the client's 43 would let the write land on a version
    # nobody checked (e.g. right after a concurrent relabel to aura=red).
    patch = {"metadata": {"resourceVersion": "43", "labels": {"a": "b"}}}
    flow = make_flow("PATCH", OTHER_POD, json.dumps(patch).encode(), MERGE)
    await run(addon, flow)
    if flow.response is None:
        assert json.loads(flow.request.content or b"")["metadata"]["resourceVersion"] == "42"
    else:
        assert status_of(flow)["code"] == 409


async def test_yaml_body_is_not_echoed_into_logs_on_a_syntax_error(
    addon: KlockProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    body = b"apiVersion: v1\nkind: Secret\nstringData:\n  password: hunter2: oops\n"
    flow = make_flow("PATCH", SECRET + "?fieldManager=kubectl", body, APPLY)
    await run(addon, flow)
    assert status_of(flow)["code"] == 400
    assert "hunter2" not in caplog.text

    body = b"apiVersion: v1\nkind: Pod\nmetadata:\n  labels:\n    password: hunter2: oops\n"
    put = make_flow("PUT", MY_POD, body, "application/yaml")
    await run(addon, put)
    status = status_of(put)
    assert status["code"] == 400
    # The sender is told where its body is malformed; no part of the body is echoed.
    assert "at line 5, column 22" in status["message"]
    assert "hunter2" not in status["message"] and "hunter2" not in caplog.text


async def test_a_body_streamed_by_another_addon_is_buffered_for_judging(addon: KlockProxy) -> None:
    # mitmproxy's StreamBodies (stream_large_bodies) sets request.stream in its
    # requestheaders hook, which runs before a `-s` script's.
    flow = make_flow("PATCH", MY_POD, merge_patch({"aura": None}), MERGE)
    flow.request.stream = True
    await addon.requestheaders(flow)
    assert flow.request.stream is False
    await addon.request(flow)
    denied(flow)


async def test_write_to_a_missing_object_carries_a_precondition(addon: KlockProxy) -> None:
    # 404 at check time; a locked pod of that name created before the write lands must make
    # the write fail (409), not be deleted.
    flow = make_flow("DELETE", "/api/v1/namespaces/default/pods/not-yet")
    await run(addon, flow)
    assert forwarded(flow)
    body = json.loads(flow.request.content or b"{}")
    assert body["preconditions"]["uid"]


async def test_lookups_do_not_follow_redirects(
    misbehaving: Callable[[str], Awaitable[Upstream]],
) -> None:
    client = await misbehaving("redirect")
    engine = Engine(load_locks_from_text(LOCKS, source="test"))
    proxy = KlockProxy(lock_set=StaticLocks(engine), upstream=client)  # type: ignore[arg-type]
    with taddons.context(proxy) as tctx:
        tctx.configure(proxy)
        flow = make_flow("DELETE", MY_POD)
        await run(proxy, flow)
        # Not judged on other-pod, where the redirect points.
        assert status_of(flow)["code"] in (403, 503)


async def test_yaml_merge_keys_are_refused(addon: KlockProxy) -> None:
    # go-yaml v2 (the API server) applies a later `<<` over an earlier explicit key (stores
    # aura=red); PyYAML lets the explicit key win (aura=blue). Never judge such a body.
    body = (
        b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: sneaky\n  labels:\n"
        b"    aura: blue\n    <<: {aura: red}\n"
    )
    flow = make_flow("POST", "/api/v1/namespaces/default/configmaps", body, "application/yaml")
    await run(addon, flow)
    assert status_of(flow)["code"] in (400, 403)


@pytest.mark.parametrize(
    "metadata",
    [
        b'{"name":"sneaky","labels":{"aura":"red"},"labels":{}}',
        b'{"name":"sneaky","labels":{"aura":"red"}},"metadata":{"name":"sneaky"}',
    ],
)
async def test_repeated_json_objects_are_not_judged_on_the_last_one(
    addon: KlockProxy, metadata: bytes
) -> None:
    # Go decodes a repeated object INTO the earlier one (maps keep their entries, structs
    # their fields): the API server would store aura=red.
    body = b'{"apiVersion":"v1","kind":"ConfigMap","metadata":' + metadata + b"}"
    flow = make_flow("POST", "/api/v1/namespaces/default/configmaps", body, "application/json")
    await run(addon, flow)
    assert status_of(flow)["code"] in (400, 403)


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/namespaces/default/configmaps/exec//x",
        MY_POD + "%2Fexec?command=sh",
        MY_POD + "%2Fexec?command=sh&stdout=true",
        MY_POD + "%2fproxy%2f",
        MY_POD + "%2fpr%6Fxy",
        MY_POD + "/exec%2F?command=sh",
        MY_POD + "/exec%2F?command=sh&stdout=true",
        MY_POD + "%2Fattach?stdin=true",
        "/api/v1/namespaces/default/pods%2Fmy-pod%2Fportforward?ports=80",
    ],
)
async def test_connect_word_behind_an_encoded_slash_is_not_a_read(
    addon: KlockProxy, path: str
) -> None:
    # The API server decodes %2F before routing: pods/my-pod%2Fexec IS pods/my-pod/exec.
    flow = make_flow("GET", path)
    await run(addon, flow)
    assert status_of(flow)["code"] == 400


@pytest.mark.parametrize("node", ["node-1", "node-1:10250"])
@pytest.mark.parametrize(
    ("method", "tail"),
    [
        ("GET", "exec/default/my-pod/c?command=sh&input=1&output=1"),
        ("POST", "run/default/my-pod/c?cmd=id"),
        ("GET", "attach/default/my-pod/c?input=1&output=1"),
        ("GET", "portForward/default/my-pod?port=80"),
        ("GET", "exec//default/my-pod/c?command=sh"),
        ("GET", "exec%2Fdefault%2Fmy-pod%2Fc?command=sh"),
        ("POST", "run%2Fdefault%2Fmy-pod%2Fc?cmd=id"),
        ("GET", "exec%2Fdefault/my-pod/c?command=sh"),
    ],
)
async def test_kubelet_pod_actions_through_the_node_proxy_are_judged(
    addon: KlockProxy, node: str, method: str, tail: str
) -> None:
    # nodes/NAME/proxy reaches the kubelet, whose exec/run/attach/portForward act on a pod:
    # a CONNECT on default/my-pod (Lock noexec).
    flow = make_flow(method, f"/api/v1/nodes/{node}/proxy/" + tail)
    await run(addon, flow)
    status = status_of(flow)
    assert status["code"] == 403
    assert "noexec" in status["message"]


async def test_server_side_apply_create_behind_a_second_content_type_is_judged(
    upstream: WhoAmI,
) -> None:
    # Go reads the FIRST Content-Type (apply: creates the object), mitmproxy joins them.
    proxy = proxy_with_lock(upstream, "nocreate", "fresh", ["CREATE"], "{aura: red}")
    with taddons.context(proxy) as tctx:
        tctx.configure(proxy)
        config = b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: new, labels: {aura: red}}\n"
        flow = make_flow(
            "PATCH",
            "/api/v1/namespaces/fresh/configmaps/new?fieldManager=x",
            config,
            headers=[
                ("Authorization", "Bearer t"),
                ("Content-Type", APPLY),
                ("Content-Type", MERGE),
            ],
        )
        await run(proxy, flow)
        assert status_of(flow)["code"] in (400, 403, 415)


@pytest.mark.parametrize("sources", [[], [" "]])
def test_an_empty_lock_source_list_is_a_configuration_error(sources: list[str]) -> None:
    # `--set klock_locks=` (an empty shell variable) must not leave a proxy enforcing nothing.
    # The mode is set first: configured together, the proxy would fail for another reason.
    proxy = KlockProxy()
    with taddons.context(proxy) as tctx:
        tctx.options.update(mode=["reverse:https://api.example:6443"])
        with pytest.raises(exceptions.OptionsError, match="klock_locks is empty"):
            tctx.configure(proxy, klock_locks=sources)


@pytest.mark.parametrize(
    ("ctype", "body"),
    [
        (MERGE, b'{"metadata":{"labels":{"aura":"red"}}}'),
        (STRATEGIC, b'{"metadata":{"labels":{"aura":"red"}}}'),
        (JSON_PATCH, b'[{"op":"add","path":"/metadata/labels/aura","value":"red"}]'),
        (APPLY, b"apiVersion: v1\nkind: Pod\nmetadata: {name: other-pod, labels: {aura: red}}\n"),
    ],
)
async def test_status_patch_label_change_is_judged_on_the_new_labels(
    addon: KlockProxy, ctype: str, body: bytes
) -> None:
    # pods/status writes may change metadata.labels on a real API server.
    flow = make_flow("PATCH", OTHER_POD + "/status?fieldManager=x", body, ctype)
    await run(addon, flow)
    denied(flow)


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/nodes/node-1/proxy/exec%2Fdefault%2Fmy-pod%2Fc?command=sh",
        "/api/v1/nodes/node-1/proxy/run%2Fdefault%2Fmy-pod%2Fc?cmd=id",
        "/api/v1/nodes/node-1/proxy/exec%2Fdefault/my-pod/c?command=sh",
        "/api/v1/nodes/node-1/proxy%2Fexec%2Fdefault%2Fmy-pod%2Fc?command=sh",
    ],
)
async def test_kubelet_action_behind_encoded_slashes_is_judged(
    addon: KlockProxy, path: str
) -> None:
    # The API server builds the kubelet path from the DECODED URL path.
    method = "POST" if "run" in path else "GET"
    flow = make_flow(method, path)
    await run(addon, flow)
    assert status_of(flow)["code"] in (400, 403)


def _gc_proxy(upstream: WhoAmI) -> KlockProxy:
    engine = Engine(load_locks_from_text(GC_LOCK, source="t"))
    return KlockProxy(lock_set=StaticLocks(engine), upstream=upstream)  # type: ignore[arg-type]


async def test_owner_reference_added_to_a_delete_locked_pod_is_refused(upstream: WhoAmI) -> None:
    # DELETE-only lock: UPDATE is free, but an owner reference to a disposable ConfigMap would
    # let the garbage collector delete the pod once the ConfigMap is deleted.
    upstream.objects["/api/v1/namespaces/gc/pods/p"] = pod("p", {"aura": "red"}, ns="gc")
    proxy = _gc_proxy(upstream)
    with taddons.context(proxy) as tctx:
        tctx.configure(proxy)
        owner = {"apiVersion": "v1", "kind": "ConfigMap", "name": "bait", "uid": "bait-uid"}
        patch = {"metadata": {"ownerReferences": [owner]}}
        flow = make_flow("PATCH", "/api/v1/namespaces/gc/pods/p", json.dumps(patch).encode(), MERGE)
        await run(proxy, flow)
        status = status_of(flow)
        assert status["code"] == 403
        assert "forbids DELETE" in status["message"]
        assert "the garbage collector deletes an object whose owner is gone" in status["message"]


async def test_cascading_delete_of_the_owner_of_a_locked_pod_is_refused(upstream: WhoAmI) -> None:
    # kubectl delete deployment web: the garbage collector would delete its ReplicaSet and
    # pod web-1-x (aura=red, locked against DELETE).
    def meta(name: str, uid: str, owner: tuple[str, str, str, str] | None) -> dict[str, Any]:
        out: dict[str, Any] = {"name": name, "namespace": "gc", "uid": uid, "resourceVersion": "7"}
        if owner is not None:
            api, kind, oname, ouid = owner
            out["ownerReferences"] = [
                {"apiVersion": api, "kind": kind, "name": oname, "uid": ouid, "controller": True}
            ]
        return out

    dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta("web", "dep", None)}
    rs = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": meta("web-1", "rs", ("apps/v1", "Deployment", "web", "dep")),
    }
    victim = pod("web-1-x", {"aura": "red"}, ns="gc")
    victim["metadata"]["ownerReferences"] = [
        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1", "uid": "rs"}
    ]
    upstream.objects["/apis/apps/v1/namespaces/gc/deployments/web"] = dep
    upstream.lists["/apis/apps/v1/namespaces/gc/replicasets"] = [rs]
    upstream.lists["/api/v1/namespaces/gc/pods"] = [victim]
    proxy = _gc_proxy(upstream)
    with taddons.context(proxy) as tctx:
        tctx.configure(proxy)
        flow = make_flow(
            "DELETE",
            "/apis/apps/v1/namespaces/gc/deployments/web",
            b'{"kind":"DeleteOptions","apiVersion":"v1","propagationPolicy":"Background"}',
            "application/json",
        )
        await run(proxy, flow)
        status = status_of(flow)
        assert status["code"] == 403
        assert status["message"].startswith('deployments.apps "web" is forbidden: denied')
        assert 'forbids DELETE of pods "web-1-x"' in status["message"]
        assert "propagationPolicy=Orphan" in status["message"]
        listed = [c[1] for c in upstream.calls if c[0] == "list"]
        assert "/api/v1/namespaces/gc/pods" in listed


@pytest.mark.parametrize("versions", [[{"name": "v1", "served": False, "storage": True}], [], None])
async def test_crd_deletion_that_cannot_be_listed_is_refused(
    addon: KlockProxy, upstream: WhoAmI, versions: Any
) -> None:
    # Unserving every version (a cluster-scoped update) must not open the way to deleting the
    # CRD, and with it every stored object, locked ones included.
    path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.adv.example.com"
    spec: dict[str, Any] = {
        "group": "adv.example.com",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "kind": "Widget"},
    }
    if versions is not None:
        spec["versions"] = versions
    upstream.objects[path] = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.adv.example.com", "uid": "crd", "resourceVersion": "3"},
        "spec": spec,
    }
    upstream.lists["/apis/adv.example.com/v1/widgets"] = [
        {
            "apiVersion": "adv.example.com/v1",
            "kind": "Widget",
            "metadata": {"name": "w", "namespace": "default", "labels": {"aura": "red"}},
        }
    ]
    flow = make_flow("DELETE", path)
    await run(addon, flow)
    status = status_of(flow)
    assert status["code"] == 403
    assert "cannot be listed" in status["message"]


async def test_deletecollection_from_an_old_continue_token_is_refused(
    addon: KlockProxy, upstream: WhoAmI
) -> None:
    # A continue token carries the resourceVersion of the list that issued it.
    path = "/api/v1/namespaces/default/pods"
    upstream.lists[path] = [pod("my-pod", {"aura": "red"})]
    token = "eyJ2IjoibWV0YS5rOHMuaW8vdjEiLCJydiI6MTAsInN0YXJ0IjoiYVx1MDAwMCJ9"
    for continue_ in (token, "eyJ9"):
        flow = make_flow(
            "DELETE", f"{path}?labelSelector=aura%3Dgreen&limit=1&continue={continue_}"
        )
        await run(addon, flow)
        assert status_of(flow)["code"] == 400, continue_


@pytest.mark.parametrize(
    ("method", "path", "body", "ctype"),
    [
        ("GET", MY_POD + "/exec?command=sh", b"", None),
        ("DELETE", "/api/v1/namespaces/default", b"", None),
        (
            "POST",
            "/api/v1/namespaces/default/configmaps",
            b'{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"}}',
            "application/json",
        ),
        ("PATCH", OTHER_POD, b'{"metadata":{"labels":{"a":"b"}}}', MERGE),
        ("DELETE", "/api/v1/namespaces/default/pods", b"", None),
        (
            "PUT",
            "/apis/coordination.k8s.io/v1/namespaces/default/leases/l",
            b'{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{"name":"l"}}',
            "application/json",
        ),
        (
            "POST",
            MY_POD + "/eviction",
            b'{"apiVersion":"policy/v1","kind":"Eviction","metadata":{"name":"my-pod"}}',
            "application/json",
        ),
    ],
)
async def test_an_invalid_lock_refuses_every_mutation_in_its_namespace(
    upstream: WhoAmI, method: str, path: str, body: bytes, ctype: str | None
) -> None:
    # A Lock the proxy cannot read (a typo in an operation) protects what its author meant
    # only if the namespace stays refused until it is fixed: never skipped.
    upstream.objects["/api/v1/namespaces/default"] = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "default", "uid": "u", "resourceVersion": "5"},
    }
    upstream.lists["/api/v1/namespaces/default/pods"] = [pod("other-pod", {})]
    invalid = InvalidLock(
        namespace="default", name="typo", reason="spec.operations[0]: unknown operation UPDTAE"
    )
    engine = Engine([], invalid=[invalid])
    proxy = KlockProxy(lock_set=StaticLocks(engine), upstream=upstream)  # type: ignore[arg-type]
    with taddons.context(proxy) as tctx:
        tctx.configure(proxy)
        flow = make_flow(method, path, body, ctype)
        await run(proxy, flow)
        assert "typo" in status_of(flow)["message"]


async def test_deletecollection_is_refused_with_an_invalid_lock_even_when_nothing_is_listed(
    upstream: WhoAmI,
) -> None:
    # Nothing listed now does not mean nothing deleted: objects created before the
    # deletecollection lands would go, under a Lock the proxy cannot read.
    invalid = InvalidLock(
        namespace="default", name="typo", reason="spec.operations[0]: unknown operation UPDTAE"
    )
    proxy = KlockProxy(
        lock_set=StaticLocks(Engine([], invalid=[invalid])),  # type: ignore[arg-type]
        upstream=upstream,
    )
    with taddons.context(proxy) as tctx:
        tctx.configure(proxy)
        flow = make_flow("DELETE", "/api/v1/namespaces/default/configmaps?labelSelector=a%3Db")
        await run(proxy, flow)
        status = status_of(flow)
        assert status["code"] == 403
        assert "Lock default/typo is invalid" in status["message"]
        assert not [c for c in upstream.calls if c[0] == "list"]

        unselected = make_flow("DELETE", "/api/v1/namespaces/default/configmaps")
        await run(proxy, unselected)
        assert "typo" in status_of(unselected)["message"]


@pytest.mark.parametrize(
    ("method", "ctype", "body"),
    [
        (
            "PATCH",
            JSON_PATCH,
            b'[{"op":"add","path":"/metadata/ownerReferences","value":[{"apiVersion":"v1",'
            b'"kind":"ConfigMap","name":"bait","uid":"bait-uid"}]}]',
        ),
        (
            "PATCH",
            STRATEGIC,
            b'{"metadata":{"ownerReferences":[{"apiVersion":"v1","kind":"ConfigMap",'
            b'"name":"bait","uid":"bait-uid"}]}}',
        ),
        (
            "PATCH",
            APPLY,
            b"apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  ownerReferences:\n"
            b"  - {apiVersion: v1, kind: ConfigMap, name: bait, uid: bait-uid}\n",
        ),
    ],
)
async def test_every_way_of_adding_an_owner_to_a_delete_locked_pod_is_refused(
    upstream: WhoAmI, method: str, ctype: str, body: bytes
) -> None:
    upstream.objects["/api/v1/namespaces/gc/pods/p"] = pod("p", {"aura": "red"}, ns="gc")
    proxy = _gc_proxy(upstream)
    with taddons.context(proxy) as tctx:
        tctx.configure(proxy)
        flow = make_flow(method, "/api/v1/namespaces/gc/pods/p?fieldManager=x", body, ctype)
        await run(proxy, flow)
        assert status_of(flow)["code"] == 403


async def test_a_put_adding_an_owner_to_a_delete_locked_pod_is_refused(upstream: WhoAmI) -> None:
    upstream.objects["/api/v1/namespaces/gc/pods/p"] = pod("p", {"aura": "red"}, ns="gc")
    proxy = _gc_proxy(upstream)
    with taddons.context(proxy) as tctx:
        tctx.configure(proxy)
        obj = pod("p", {"aura": "red"}, ns="gc")
        obj["metadata"]["ownerReferences"] = [
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "bait", "uid": "bait-uid"}
        ]
        flow = make_flow(
            "PUT", "/api/v1/namespaces/gc/pods/p", json.dumps(obj).encode(), "application/json"
        )
        await run(proxy, flow)
        assert status_of(flow)["code"] == 403

        # Relabelling into the lock and adopting in one PUT is judged on the new labels too.
        upstream.objects["/api/v1/namespaces/gc/pods/q"] = pod("q", {}, ns="gc")
        body = pod("q", {"aura": "red"}, ns="gc")
        body["metadata"]["ownerReferences"] = obj["metadata"]["ownerReferences"]
        put = make_flow(
            "PUT", "/api/v1/namespaces/gc/pods/q", json.dumps(body).encode(), "application/json"
        )
        await run(proxy, put)
        assert status_of(put)["code"] == 403


async def test_deleting_a_pod_that_owns_a_locked_pod_is_refused(upstream: WhoAmI) -> None:
    # Pods can be owners (Spark drivers own their executors): deleting an unlocked driver
    # makes the garbage collector delete a DELETE-locked executor.
    driver = pod("driver", {}, ns="gc")
    driver["metadata"]["uid"] = "driver-uid"
    executor = pod("executor-1", {"aura": "red"}, ns="gc")
    executor["metadata"]["ownerReferences"] = [
        {"apiVersion": "v1", "kind": "Pod", "name": "driver", "uid": "driver-uid"}
    ]
    upstream.objects["/api/v1/namespaces/gc/pods/driver"] = driver
    upstream.lists["/api/v1/namespaces/gc/pods"] = [driver, executor]
    proxy = _gc_proxy(upstream)
    with taddons.context(proxy) as tctx:
        tctx.configure(proxy)
        flow = make_flow("DELETE", "/api/v1/namespaces/gc/pods/driver")
        await run(proxy, flow)
        status = status_of(flow)
        assert status["code"] == 403
        assert 'forbids DELETE of pods "executor-1"' in status["message"]


def _database_owning_a_locked_secret(upstream: WhoAmI, secret_name: str) -> None:
    """The operator pattern: custom resource gc/prod (a Database) owns a Secret labelled
    aura=red, so deleting the Database makes the garbage collector delete the Secret."""
    upstream.objects["/apis/db.example.com/v1/namespaces/gc/databases/prod"] = {
        "apiVersion": "db.example.com/v1",
        "kind": "Database",
        "metadata": {"name": "prod", "namespace": "gc", "uid": "db-uid", "resourceVersion": "4"},
    }
    owner = {"apiVersion": "db.example.com/v1", "kind": "Database", "name": "prod", "uid": "db-uid"}
    upstream.lists["/api/v1/namespaces/gc/secrets"] = [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": secret_name,
                "namespace": "gc",
                "uid": "s-uid",
                "labels": {"aura": "red"},
                "ownerReferences": [owner],
            },
        }
    ]


async def test_deleting_a_custom_resource_that_owns_a_locked_secret_is_refused(
    upstream: WhoAmI,
) -> None:
    # The operator pattern: a custom resource owns the Secret it made.
    _database_owning_a_locked_secret(upstream, "prod-creds")
    proxy = _gc_proxy(upstream)
    with taddons.context(proxy) as tctx:
        tctx.configure(proxy)
        flow = make_flow("DELETE", "/apis/db.example.com/v1/namespaces/gc/databases/prod")
        await run(proxy, flow)
        status = status_of(flow)
        assert status["code"] == 403
        assert 'forbids DELETE of secrets "prod-creds"' in status["message"]


@pytest.mark.parametrize("changed", [{"name": "nope"}, {"kind": "ConfigMap", "apiVersion": "v1"}])
async def test_retargeting_an_existing_owner_reference_is_refused(
    upstream: WhoAmI, changed: dict[str, str]
) -> None:
    # Same uid, another name/kind: the garbage collector finds the reference dangling and
    # deletes the object.
    victim = pod("web-1-x", {"aura": "red"}, ns="gc")
    ref = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "name": "web-1",
        "uid": "rs-uid",
        "controller": True,
    }
    victim["metadata"]["ownerReferences"] = [ref]
    upstream.objects["/api/v1/namespaces/gc/pods/web-1-x"] = victim
    proxy = _gc_proxy(upstream)
    with taddons.context(proxy) as tctx:
        tctx.configure(proxy)
        patch = {"metadata": {"ownerReferences": [{**ref, **changed}]}}
        flow = make_flow(
            "PATCH", "/api/v1/namespaces/gc/pods/web-1-x", json.dumps(patch).encode(), MERGE
        )
        await run(proxy, flow)
        assert status_of(flow)["code"] == 403


async def test_dependents_listed_with_the_proxys_credentials_are_not_named_to_the_caller(
    upstream: WhoAmI,
) -> None:
    # The caller may not list secrets; the proxy lists them with its own credentials to judge
    # the cascade, and must not reveal names the caller could not have read.
    class Split(WhoAmI):
        async def list_objects(
            self,
            path: str,
            headers: Mapping[str, str | Sequence[str]],
            label_selector: str | None = None,
            field_selector: str | None = None,
            *,
            metadata_only: bool = False,
        ) -> list[dict[str, Any]]:
            if path.endswith("/secrets") and headers:
                raise UpstreamStatusError(f"LIST {path}", 403, "secrets is forbidden")
            return await super().list_objects(path, headers, label_selector, field_selector)

    up = Split()
    up.has_own_credentials = True
    _database_owning_a_locked_secret(up, "top-secret-name")
    proxy = _gc_proxy(up)
    with taddons.context(proxy) as tctx:
        tctx.configure(proxy)
        flow = make_flow("DELETE", "/apis/db.example.com/v1/namespaces/gc/databases/prod")
        await run(proxy, flow)
        status = status_of(flow)
        assert status["code"] == 403
        assert "top-secret-name" not in status["message"]
        assert "one of the secrets that the garbage collector would delete" in status["message"]
        assert "Lock gc/nodelete" in status["message"]


# ---------------------------------------------------------------------------------------------
# The message grammar (issue 10 items 1, 2): request smuggling, fragments, absolute-form.
# Refused for reads too, before the client token is looked at or anything is looked up.

SMUGGLED = (
    " HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\nPATCH /api/v1/namespaces/default/pods/my-pod"
)


@pytest.mark.parametrize("http2", [False, True])
@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("GET", "/api/v1/namespaces/default/pods" + SMUGGLED, ()),
        ("DELETE", MY_POD + SMUGGLED, ()),
        ("GET", "/api/v1/namespaces/default/pods", (("x-a", "b\r\n\r\nPATCH " + MY_POD),)),
        ("GET", "/api/v1/namespaces/default/pods", (("x-a", "b\nc"),)),
        ("GET", "/api/v1/namespaces/default/pods", (("x-a", "b\x00c"),)),
        ("GET", "/api/v1/namespaces/default/pods", (("x-a: b\r\n\r\nPATCH / HTTP/1.1\r\nx", "c"),)),
        ("GET /api/v1/namespaces/default/pods HTTP/1.1\r\n\r\nDELETE", MY_POD, ()),
        ("GET", "/api/v1/namespaces/default/pods/my-pod\x00", ()),
        ("GET", MY_POD + " HTTP/1.1", ()),
        ("GET", MY_POD + "\t", ()),
        # '#' is a fragment to the upstream: it would act on my-pod, or exec, or the list.
        ("PUT", MY_POD + "#x", ()),
        ("PATCH", MY_POD + "#/status", ()),
        ("POST", MY_POD + "/eviction#x", ()),
        ("DELETE", "/api/v1/namespaces/default#/pods/t-red", ()),
        ("DELETE", "/api/v1/namespaces/default/pods#/x", ()),
        ("DELETE", "/api/v1/namespaces/default/pods?labelSelector=aura%3Dred#/x", ()),
        ("GET", MY_POD + "/exec#x?command=sh", ()),
        ("DELETE", MY_POD.replace("/pods/", "\\pods\\"), ()),
        ("DELETE", MY_POD + "\u00e9", ()),
    ],
)
async def test_malformed_requests_are_refused_before_anything_is_looked_up(
    addon: KlockProxy,
    upstream: WhoAmI,
    method: str,
    path: str,
    headers: Sequence[tuple[str, str]],
    http2: bool,
) -> None:
    flow = make_flow(
        method,
        path,
        merge_patch({"aura": "blue"}) if method in ("PUT", "PATCH", "POST") else b"",
        MERGE if method in ("PUT", "PATCH", "POST") else None,
        headers=(("Authorization", "Bearer caller-token"), *headers),
        http2=http2,
    )
    await run(addon, flow)
    status = refused(flow, 400)
    assert status["reason"] == "BadRequest"
    assert "malformed request" in status["message"]
    # Nothing of the request is echoed (a smuggled request may carry credentials).
    assert "PATCH" not in status["message"] and "t-red" not in status["message"]
    assert upstream.calls == []


async def test_the_client_token_is_not_checked_before_the_grammar(upstream: WhoAmI) -> None:
    # A malformed request gets its 400 whoever sends it: no hop behind the proxy sees it.
    engine = Engine(load_locks_from_text(LOCKS, source="t"))
    proxy = KlockProxy(lock_set=StaticLocks(engine), upstream=upstream)  # type: ignore[arg-type]
    with taddons.context(proxy) as tctx:
        tctx.configure(proxy)
        flow = make_flow("GET", MY_POD + "#x", headers=())
        await run(proxy, flow)
    refused(flow, 400)


@pytest.mark.parametrize(
    ("authority", "host", "allowed"),
    [
        ("other.example:443", "api.example:6443", False),
        ("api.example:6443", "api.example:6443", True),
        ("api.example:6443", None, False),
    ],
)
async def test_absolute_form_must_name_the_host_it_is_sent_to(
    addon: KlockProxy, authority: str, host: str | None, allowed: bool
) -> None:
    headers = [("Authorization", "Bearer caller-token")]
    if host is not None:
        headers.append(("Host", host))
    flow = make_flow("GET", "/api/v1/namespaces/default/pods", headers=headers)
    flow.request.data.authority = authority.encode()
    await run(addon, flow)
    if allowed:
        assert forwarded(flow)
    else:
        assert "absolute-form" in refused(flow, 400)["message"]


# ---------------------------------------------------------------------------------------------
# Routes the API server does not serve (issue 10 item 3), one classification per request


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/pods?labelSelector=aura%3Dred",  # cluster-wide deletecollection of pods
        "/api/v1/namespaces/frozen/namespaces/default",  # a namespace inside a namespace
        "/api/v1/namespaces/default/namespaces/frozen",
        "/api/v1/namespaces?fieldSelector=metadata.name%3Dfrozen",  # no deletecollection
        "/api/v1/pods/my-pod",
        "/api/v1/namespaces/default/nodes/n1",
    ],
)
async def test_deletes_on_unserved_routes_are_refused_without_lookups(
    addon: KlockProxy, upstream: WhoAmI, path: str
) -> None:
    flow = make_flow("DELETE", path)
    await run(addon, flow)
    assert "does not serve" in refused(flow, 400)["message"]
    assert upstream.calls == []


async def test_scale_of_a_pod_is_forwarded_for_the_api_server_to_404(
    addon: KlockProxy, upstream: WhoAmI
) -> None:
    # Pods have no scale subresource: nothing a Lock could match happens (kubectl scale
    # pod/my-pod gets the API server's NotFound, not a denial "through scale").
    flow = make_flow("PATCH", MY_POD + "/scale", b'{"spec":{"replicas":2}}', MERGE)
    await run(addon, flow)
    assert forwarded(flow)
    assert upstream.calls == []


async def test_a_request_is_classified_once(
    addon: KlockProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    import klockproxy.proxy.addon as addon_module

    calls: list[str] = []
    original = addon_module.classify_request

    def counting(method: str, path: str) -> Any:
        calls.append(path)
        return original(method, path)

    monkeypatch.setattr(addon_module, "classify_request", counting)
    flow = make_flow("PATCH", MY_POD, merge_patch({"aura": "blue"}), MERGE)
    await run(addon, flow)
    denied(flow)
    assert calls == [MY_POD]


def _discovery(*resources: tuple[str, bool, list[str]]) -> dict[str, Any]:
    return {
        "kind": "APIResourceList",
        "groupVersion": "example.com/v1",
        "resources": [
            {"name": name, "namespaced": namespaced, "kind": "Widget", "verbs": verbs}
            for name, namespaced, verbs in resources
        ],
    }


ALL = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("DELETE", "/apis/example.com/v1/widgets?labelSelector=aura%3Dred"),
        ("DELETE", "/apis/example.com/v1/widgets/w"),
        ("POST", "/apis/example.com/v1/widgets"),
    ],
)
async def test_unscoped_mutations_of_a_namespaced_custom_kind_are_refused(
    addon: KlockProxy, upstream: WhoAmI, method: str, path: str
) -> None:
    upstream.objects["/apis/example.com/v1"] = _discovery(("widgets", True, ALL))
    flow = make_flow(method, path, b"{}" if method == "POST" else b"", "application/json")
    await run(addon, flow)
    assert "widgets.example.com are namespaced" in refused(flow, 400)["message"]
    assert [c[1] for c in upstream.calls] == ["/apis/example.com/v1"]


async def test_the_cluster_wide_deletecollection_of_locks_is_refused(
    addon: KlockProxy, upstream: WhoAmI
) -> None:
    upstream.objects["/apis/klock.rnemet.dev/v1"] = {
        "kind": "APIResourceList",
        "resources": [{"name": "locks", "namespaced": True, "kind": "Lock", "verbs": ALL}],
    }
    flow = make_flow("DELETE", "/apis/klock.rnemet.dev/v1/locks")
    await run(addon, flow)
    refused(flow, 400)


async def test_cluster_scoped_custom_kinds_and_unknown_ones_are_forwarded(
    addon: KlockProxy, upstream: WhoAmI
) -> None:
    upstream.objects["/apis/example.com/v1"] = _discovery(
        ("clusterwidgets", False, ALL), ("clusterwidgets/status", False, ["get", "patch"])
    )
    for path in (
        "/apis/example.com/v1/clusterwidgets/w",
        "/apis/example.com/v1/clusterwidgets/w/status",
        "/apis/example.com/v1/nothere/x",  # the API server answers 404 itself
        "/apis/other.example/v1/things/x",  # the group is not served (404)
    ):
        flow = make_flow("DELETE" if "status" not in path else "PATCH", path, b"{}", MERGE)
        await run(addon, flow)
        assert forwarded(flow), path
    # Namespaced paths need no discovery: the scope is in the path.
    upstream.calls.clear()
    flow = make_flow("DELETE", "/apis/example.com/v1/namespaces/default/widgets/w")
    await run(addon, flow)
    assert ("/apis/example.com/v1") not in [c[1] for c in upstream.calls]


async def test_a_subresource_a_custom_kind_lacks_is_forwarded_unjudged(
    addon: KlockProxy, upstream: WhoAmI
) -> None:
    upstream.objects["/apis/example.com/v1"] = _discovery(("clusterwidgets", False, ALL))
    flow = make_flow("PATCH", "/apis/example.com/v1/clusterwidgets/w/scale", b"{}", MERGE)
    await run(addon, flow)
    assert forwarded(flow)
    assert addon_info(flow).served is False


async def test_discovery_failure_refuses_the_unscoped_mutation(
    addon: KlockProxy, upstream: WhoAmI
) -> None:
    upstream.fail = UpstreamStatusError("GET /apis/example.com/v1", 500, "etcd is down")
    flow = make_flow("DELETE", "/apis/example.com/v1/widgets")
    await run(addon, flow)
    assert "discovery" in refused(flow, 503)["message"]


def addon_info(flow: Any) -> Any:
    from klockproxy.proxy.addon import classification

    return classification(flow)
