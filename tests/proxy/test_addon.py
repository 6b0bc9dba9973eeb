"""The mitmproxy addon, driven with mitmproxy's test helpers and a fake API server (no network)."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mitmproxy.proxy.server
import pytest
import yaml
from mitmproxy import exceptions, http
from mitmproxy.connection import ConnectionState
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.proxy.server_hooks import ServerConnectionHookData
from mitmproxy.test import taddons, tflow, tutils

from klockproxy.cluster.upstream import UpstreamStatusError
from klockproxy.core.engine import Engine
from klockproxy.core.errors import UpstreamError
from klockproxy.core.guards import ABSENT_UID
from klockproxy.core.locks import load_locks_from_text
from klockproxy.core.protobuf import (
    decode_fields,
    decode_k8s_protobuf,
    encode_k8s_protobuf,
    encode_len_field,
    encode_string_field,
    encode_unknown,
    encode_varint_field,
    unwrap_unknown,
)
from klockproxy.core.types import UserInfo
from klockproxy.proxy import addon as addon_module
from klockproxy.proxy.addon import DEFAULT_IDLE_TIMEOUT, KlockProxy
from tests.fakes import JONNY, FakeUpstream, StaticLocks, pod
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


@pytest.fixture
def upstream() -> FakeUpstream:
    up = FakeUpstream()
    up.objects["/api/v1/namespaces/default/pods/my-pod"] = pod("my-pod", {"aura": "red"})
    up.objects["/api/v1/namespaces/default/pods/other-pod"] = pod("other-pod", {})
    up.objects["/api/v1/namespaces/prod/pods/db"] = pod("db", {"env": "prod"}, ns="prod")
    return up


@pytest.fixture
def engine() -> Engine:
    return Engine(load_locks_from_text(LOCKS, source="test"))


@pytest.fixture
def addon(upstream: FakeUpstream, engine: Engine) -> Iterator[KlockProxy]:
    proxy = KlockProxy(lock_set=StaticLocks(engine), upstream=upstream)  # type: ignore[arg-type]
    with taddons.context(proxy) as tctx:
        tctx.configure(proxy)
        yield proxy


AS_JONNY = (
    ("Authorization", "Bearer caller-token"),
    ("Impersonate-User", "system:serviceaccount:default:jonny-op"),
)
JSON_PATCH = "application/json-patch+json"


# ---------------------------------------------------------------------------------------------
# Reads, fast path, classification


async def test_reads_pass_untouched_and_stream(addon: KlockProxy, upstream: FakeUpstream) -> None:
    for path in (
        "/api/v1/namespaces/default/pods?limit=500",
        "/api/v1/namespaces/default/pods?watch=true&resourceVersion=1",
        MY_POD + "/log?follow=true",
        "/version?timeout=5s",
        "/openapi/v3",
        "/apis",
    ):
        flow = make_flow("GET", path)
        await run(addon, flow)
        assert flow.response is None
        assert flow.request.stream is True
        assert flow.request.headers["Authorization"] == "Bearer caller-token"
    assert upstream.calls == []


async def test_unclassifiable_read_passes_but_mutation_is_refused(addon: KlockProxy) -> None:
    read = make_flow("GET", "/api/v1/namespaces/default/pods/a%2Fb")
    await run(addon, read)
    assert read.response is None

    write = make_flow("PATCH", "/api/v1/namespaces/default/pods/a%2Fb", b"{}", MERGE)
    await run(addon, write)
    status = status_of(write)
    assert status["code"] == 400
    assert "%2F" in status["message"]
    assert status["message"].startswith("klockproxy: refusing PATCH")

    dots = make_flow("DELETE", "/api/v1/namespaces/default/pods/../secrets/x")
    await run(addon, dots)
    assert status_of(dots)["code"] == 400


async def test_uncovered_mutation_takes_the_fast_path(
    addon: KlockProxy, upstream: FakeUpstream
) -> None:
    body = merge_patch({"x": "y"})
    flow = make_flow("PATCH", "/api/v1/namespaces/free/pods/p", body, MERGE)
    await run(addon, flow)
    assert flow.response is None
    assert flow.request.stream is True
    assert upstream.calls == []
    # CREATE is not covered in "prod": no body decode either (garbage passes to the API server).
    create = make_flow("POST", "/api/v1/namespaces/prod/pods", b"not json", "application/json")
    await run(addon, create)
    assert create.response is None
    assert upstream.calls == []


async def test_lock_objects_themselves_pass(addon: KlockProxy, upstream: FakeUpstream) -> None:
    flow = make_flow(
        "DELETE", "/apis/klock.rnemet.dev/v1/namespaces/default/locks/lockred", b"", None
    )
    await run(addon, flow)
    assert flow.response is None
    assert upstream.calls == []


async def test_mutations_refused_until_locks_are_loaded(upstream: FakeUpstream) -> None:
    proxy = KlockProxy(lock_set=StaticLocks(None), upstream=upstream)  # type: ignore[arg-type]
    with taddons.context(proxy) as tctx:
        tctx.configure(proxy)
        read = make_flow("GET", MY_POD)
        await run(proxy, read)
        assert read.response is None

        write = make_flow("PATCH", "/api/v1/namespaces/free/pods/p", merge_patch({}), MERGE)
        await run(proxy, write)
        status = status_of(write)
        assert status["code"] == 503
        assert status["reason"] == "ServiceUnavailable"
        assert status["message"].startswith("klockproxy: locks are not loaded yet (")
        assert "not ready" in status["message"]


# ---------------------------------------------------------------------------------------------
# Decisions


async def test_locked_label_change_is_denied_with_a_kubernetes_status(
    addon: KlockProxy, upstream: FakeUpstream
) -> None:
    flow = make_flow(
        "PATCH", MY_POD + "?fieldManager=kubectl-label", merge_patch({"here": "x"}), MERGE
    )
    await run(addon, flow)
    status = status_of(flow)
    assert flow.response is not None and flow.response.status_code == 403
    assert status["reason"] == "Forbidden"
    assert status["details"] == {"name": "my-pod", "group": "", "kind": "pods"}
    assert status["message"].startswith(
        'pods "my-pod" is forbidden: denied, there is a lock: map[aura:red]'
    )
    assert "lockred" in status["message"]
    # The current object was read AS THE CALLER.
    get = next(c for c in upstream.calls if c[0] == "get")
    assert get[1] == MY_POD
    assert get[2] == {"Authorization": ["Bearer caller-token"]}


async def test_exclusive_user_is_allowed_and_the_write_is_guarded(
    addon: KlockProxy, upstream: FakeUpstream
) -> None:
    upstream.user = JONNY
    flow = make_flow(
        "PATCH",
        MY_POD,
        merge_patch({"here": "jonny"}),
        MERGE,
        headers=[
            ("Authorization", "Bearer caller-token"),
            ("Impersonate-User", "system:serviceaccount:default:jonny-op"),
        ],
    )
    await run(addon, flow)
    assert flow.response is None
    body = json.loads(flow.request.content or b"")
    assert body["metadata"]["labels"] == {"here": "jonny"}
    assert body["metadata"]["resourceVersion"] == "42"
    assert flow.request.headers["Content-Type"] == MERGE
    assert flow.request.headers["Content-Length"] == str(len(flow.request.raw_content or b""))
    ssr = next(c for c in upstream.calls if c[0] == "ssr")
    assert ssr[2]["Impersonate-User"] == ["system:serviceaccount:default:jonny-op"]


async def test_unmatched_object_is_allowed_without_an_identity_lookup(
    addon: KlockProxy, upstream: FakeUpstream
) -> None:
    flow = make_flow("PATCH", OTHER_POD, merge_patch({"aura": "blue"}), MERGE)
    await run(addon, flow)
    assert flow.response is None
    assert "ssr" not in upstream.kinds()
    # Still guarded: a concurrent relabel to aura=red must not slip past.
    assert json.loads(flow.request.content or b"")["metadata"]["resourceVersion"] == "42"


async def test_adding_the_locked_label_is_judged_on_the_new_labels(addon: KlockProxy) -> None:
    flow = make_flow("PATCH", OTHER_POD, merge_patch({"aura": "red"}), MERGE)
    await run(addon, flow)
    assert status_of(flow)["code"] == 403


async def test_client_resource_version_equal_to_the_checked_one_is_kept(
    addon: KlockProxy, upstream: FakeUpstream
) -> None:
    upstream.user = JONNY
    patch = {"metadata": {"resourceVersion": "42", "labels": {"a": "b"}}}
    flow = make_flow("PATCH", MY_POD, json.dumps(patch).encode(), MERGE)
    await run(addon, flow)
    assert flow.response is None
    assert json.loads(flow.request.content or b"")["metadata"]["resourceVersion"] == "42"


async def test_client_resource_version_other_than_the_checked_one_is_a_conflict(
    addon: KlockProxy, upstream: FakeUpstream
) -> None:
    # The proxy judged version 42; the object may have moved to exactly "43" (a relabel).
    patch = {"metadata": {"resourceVersion": "43", "labels": {"a": "b"}}}
    flow = make_flow("PATCH", OTHER_POD, json.dumps(patch).encode(), MERGE)
    await run(addon, flow)
    status = status_of(flow)
    assert status["code"] == 409
    assert status["reason"] == "Conflict"
    assert status["message"].startswith('Operation cannot be fulfilled on pods "other-pod"')
    assert status["details"] == {"name": "other-pod", "group": "", "kind": "pods"}


async def test_json_patch_gets_a_test_operation(addon: KlockProxy, upstream: FakeUpstream) -> None:
    upstream.user = JONNY
    ops = [{"op": "add", "path": "/metadata/labels/x", "value": "y"}]
    flow = make_flow("PATCH", MY_POD, json.dumps(ops).encode(), "application/json-patch+json")
    await run(addon, flow)
    assert flow.response is None
    sent = json.loads(flow.request.content or b"")
    assert sent[0] == {"op": "test", "path": "/metadata/resourceVersion", "value": "42"}
    assert sent[1:] == ops


async def test_json_patch_removing_the_label_is_denied(addon: KlockProxy) -> None:
    ops = [{"op": "remove", "path": "/metadata/labels/aura"}]
    flow = make_flow("PATCH", MY_POD, json.dumps(ops).encode(), "application/json-patch+json")
    await run(addon, flow)
    assert status_of(flow)["code"] == 403


async def test_strategic_merge_patch_is_judged_and_guarded(
    addon: KlockProxy, upstream: FakeUpstream
) -> None:
    patch = {"spec": {"containers": [{"name": "c", "image": "nginx:2"}]}}
    ctype = "application/strategic-merge-patch+json"
    denied = make_flow("PATCH", MY_POD, json.dumps(patch).encode(), ctype)
    await run(addon, denied)
    assert status_of(denied)["code"] == 403

    allowed = make_flow("PATCH", OTHER_POD, json.dumps(patch).encode(), ctype)
    await run(addon, allowed)
    assert allowed.response is None
    sent = json.loads(allowed.request.content or b"")
    assert sent["metadata"] == {"resourceVersion": "42"}
    assert sent["spec"] == patch["spec"]


async def test_server_side_apply_is_guarded_and_keeps_its_content_type(
    addon: KlockProxy, upstream: FakeUpstream
) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "other-pod", "labels": {"tier": "web"}},
    }
    flow = make_flow(
        "PATCH", OTHER_POD + "?fieldManager=kubectl", yaml.safe_dump(config).encode(), APPLY
    )
    await run(addon, flow)
    assert flow.response is None
    assert flow.request.headers["Content-Type"] == APPLY
    sent = yaml.safe_load(flow.request.content or b"")
    assert sent["metadata"]["resourceVersion"] == "42"
    assert sent["metadata"]["labels"] == {"tier": "web"}


async def test_server_side_apply_dropping_a_label_cannot_slip_past_a_negated_matcher(
    addon: KlockProxy, upstream: FakeUpstream
) -> None:
    # Lock "notprod" (prod namespace) matches objects whose env is NOT prod. Pod db has
    # env=prod; an apply configuration without env makes the API server drop the label when
    # this manager owned it (field ownership): its dry run says so, and that is judged.
    config = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "db", "labels": {}}}
    upstream.dry_run_answers["/api/v1/namespaces/prod/pods/db"] = pod("db", {}, ns="prod")
    flow = make_flow(
        "PATCH", "/api/v1/namespaces/prod/pods/db", yaml.safe_dump(config).encode(), APPLY
    )
    await run(addon, flow)
    status = status_of(flow)
    assert status["code"] == 403
    assert "map[env:^prod]" in status["message"]


async def test_server_side_apply_of_a_missing_object_is_judged_as_create(
    addon: KlockProxy,
) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "new", "labels": {"aura": "red"}},
    }
    flow = make_flow(
        "PATCH", "/api/v1/namespaces/default/pods/new", yaml.safe_dump(config).encode(), APPLY
    )
    await run(addon, flow)
    status = status_of(flow)
    assert status["code"] == 403
    assert "nocreate" in status["message"]


async def test_patch_of_a_missing_object_is_forwarded_for_the_api_server_to_404(
    addon: KlockProxy,
) -> None:
    body = merge_patch({"a": "b"})
    flow = make_flow("PATCH", "/api/v1/namespaces/default/pods/gone", body, MERGE)
    await run(addon, flow)
    assert flow.response is None
    # Guarded: an object of that name created meanwhile makes the patch a 409, not a write.
    sent = json.loads(flow.request.content or b"")
    assert sent["metadata"] == {"labels": {"a": "b"}, "uid": ABSENT_UID}

    ops = [{"op": "add", "path": "/metadata/labels/x", "value": "y"}]
    jflow = make_flow(
        "PATCH", "/api/v1/namespaces/default/pods/gone", json.dumps(ops).encode(), JSON_PATCH
    )
    await run(addon, jflow)
    assert json.loads(jflow.request.content or b"")[0] == {
        "op": "test",
        "path": "/metadata/uid",
        "value": ABSENT_UID,
    }


async def test_update_judges_old_and_new_labels_and_sets_resource_version(
    addon: KlockProxy, upstream: FakeUpstream
) -> None:
    unlabelled = pod("my-pod", {})
    del unlabelled["metadata"]["resourceVersion"]
    denied = make_flow("PUT", MY_POD, json.dumps(unlabelled).encode(), "application/json")
    await run(addon, denied)
    assert status_of(denied)["code"] == 403

    upstream.user = JONNY
    allowed = make_flow(
        "PUT", MY_POD, json.dumps(unlabelled).encode(), "application/json", headers=AS_JONNY
    )
    await run(addon, allowed)
    assert allowed.response is None
    assert json.loads(allowed.request.content or b"")["metadata"]["resourceVersion"] == "42"


async def test_update_with_yaml_body_is_rewritten_as_json(
    addon: KlockProxy, upstream: FakeUpstream
) -> None:
    obj = pod("other-pod", {"a": "b"})
    del obj["metadata"]["resourceVersion"]
    flow = make_flow("PUT", OTHER_POD, yaml.safe_dump(obj).encode(), "application/yaml")
    await run(addon, flow)
    assert flow.response is None
    assert flow.request.headers["Content-Type"] == "application/json"
    assert json.loads(flow.request.content or b"")["metadata"]["resourceVersion"] == "42"


async def test_undecodable_body_of_a_covered_mutation_is_refused(addon: KlockProxy) -> None:
    flow = make_flow("PUT", MY_POD, b"{not json", "application/json")
    await run(addon, flow)
    status = status_of(flow)
    assert status["code"] == 400
    assert "cannot be read" in status["message"]


async def test_create_is_judged_on_the_new_labels(addon: KlockProxy) -> None:
    red = pod("new", {"aura": "red"})
    flow = make_flow(
        "POST", "/api/v1/namespaces/default/pods", json.dumps(red).encode(), "application/json"
    )
    await run(addon, flow)
    status = status_of(flow)
    assert status["code"] == 403
    assert status["details"]["name"] == "new"

    blue = make_flow(
        "POST",
        "/api/v1/namespaces/default/pods",
        json.dumps(pod("new", {"aura": "blue"})).encode(),
        "application/json",
    )
    await run(addon, blue)
    assert blue.response is None


async def test_protobuf_create_is_decoded(addon: KlockProxy) -> None:
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "my-cm", "labels": {"aura": "red"}},
        "data": {"nikola": "tesla"},
    }
    flow = make_flow(
        "POST",
        "/api/v1/namespaces/default/configmaps?fieldManager=kubectl-create",
        encode_k8s_protobuf(cm),
        "application/vnd.kubernetes.protobuf",
    )
    await run(addon, flow)
    status = status_of(flow)
    assert status["code"] == 403
    assert status["message"].startswith('configmaps "my-cm" is forbidden: denied, there is a lock')


async def test_dry_run_gets_the_same_decision(addon: KlockProxy) -> None:
    flow = make_flow("PATCH", MY_POD + "?dryRun=All", merge_patch({"x": "y"}), MERGE)
    await run(addon, flow)
    assert status_of(flow)["code"] == 403


# ---------------------------------------------------------------------------------------------
# DELETE and its preconditions


async def test_delete_of_a_locked_object_is_denied(addon: KlockProxy) -> None:
    flow = make_flow(
        "DELETE", MY_POD, b'{"kind":"DeleteOptions","apiVersion":"v1"}', "application/json"
    )
    await run(addon, flow)
    assert status_of(flow)["code"] == 403


async def test_allowed_delete_gets_preconditions_even_without_a_body(
    addon: KlockProxy, upstream: FakeUpstream
) -> None:
    upstream.user = JONNY
    flow = make_flow("DELETE", MY_POD, b"", None)
    await run(addon, flow)
    assert flow.response is None
    assert flow.request.headers["Content-Type"] == "application/json"
    sent = json.loads(flow.request.content or b"")
    assert sent["preconditions"] == {"resourceVersion": "42", "uid": "uid-my-pod"}
    assert sent["kind"] == "DeleteOptions"


async def test_allowed_delete_keeps_the_client_options(
    addon: KlockProxy, upstream: FakeUpstream
) -> None:
    upstream.user = JONNY
    opts = {
        "kind": "DeleteOptions",
        "apiVersion": "v1",
        "propagationPolicy": "Background",
        "preconditions": {"uid": "uid-my-pod"},
    }
    flow = make_flow("DELETE", MY_POD, json.dumps(opts).encode(), "application/json")
    await run(addon, flow)
    sent = json.loads(flow.request.content or b"")
    assert sent["propagationPolicy"] == "Background"
    assert sent["preconditions"] == {"uid": "uid-my-pod", "resourceVersion": "42"}

    mismatch = dict(opts, preconditions={"uid": "other-uid"})
    other = make_flow("DELETE", MY_POD, json.dumps(mismatch).encode(), "application/json")
    await run(addon, other)
    assert status_of(other)["code"] == 409


def _raw(body: bytes | None) -> bytes:
    return unwrap_unknown(body or b"").raw


async def test_allowed_protobuf_delete_gets_preconditions_appended(
    addon: KlockProxy, upstream: FakeUpstream
) -> None:
    upstream.user = JONNY
    grace = encode_varint_field(1, 30)
    body = encode_unknown("v1", "DeleteOptions", grace)
    flow = make_flow("DELETE", MY_POD, body, PROTOBUF)
    await run(addon, flow)
    assert flow.response is None
    assert flow.request.headers["Content-Type"] == PROTOBUF
    raw = _raw(flow.request.content)
    fields = decode_fields(raw)
    assert fields[0] == (1, 0, 30)  # the client's fields, untouched
    pre = dict((n, v) for n, _, v in decode_fields(fields[1][2]))  # type: ignore[arg-type]
    assert pre == {2: b"42", 1: b"uid-my-pod"}


async def test_protobuf_eviction_keeps_the_client_precondition(
    addon: KlockProxy, upstream: FakeUpstream
) -> None:
    upstream.user = JONNY
    client_pre = encode_len_field(2, encode_string_field(1, "uid-my-pod"))
    eviction = encode_string_field(1, "") + encode_len_field(2, client_pre)
    body = encode_unknown("policy/v1", "Eviction", eviction)
    flow = make_flow("POST", MY_POD + "/eviction", body, PROTOBUF, headers=AS_JONNY)
    await run(addon, flow)
    assert flow.response is None
    raw = _raw(flow.request.content)
    assert raw.startswith(eviction)
    appended = raw[len(eviction) :]
    assert appended == encode_len_field(2, encode_len_field(2, encode_string_field(2, "42")))

    stale = encode_len_field(2, encode_len_field(2, encode_string_field(2, "41")))
    body = encode_unknown("policy/v1", "Eviction", encode_string_field(1, "") + stale)
    other = make_flow("POST", MY_POD + "/eviction", body, PROTOBUF, headers=AS_JONNY)
    await run(addon, other)
    assert status_of(other)["code"] == 409


async def test_protobuf_update_gets_the_resource_version(
    addon: KlockProxy, upstream: FakeUpstream
) -> None:
    upstream.user = JONNY
    upstream.objects["/api/v1/namespaces/default/configmaps/my-cm"] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "my-cm",
            "resourceVersion": "42",
            "uid": "u",
            "labels": {"aura": "red"},
        },
    }
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "my-cm", "labels": {"aura": "red", "x": "y"}},
        "data": {"nikola": "tesla"},
    }
    flow = make_flow(
        "PUT", "/api/v1/namespaces/default/configmaps/my-cm", encode_k8s_protobuf(cm), PROTOBUF
    )
    await run(addon, flow)
    assert flow.response is None
    sent = decode_k8s_protobuf(flow.request.content or b"")
    assert sent["metadata"]["resourceVersion"] == "42"
    assert sent["metadata"]["labels"] == {"aura": "red", "x": "y"}
    assert sent["data"] == {"nikola": "tesla"}

    # A resourceVersion the client set is kept: the body is not touched.
    cm["metadata"]["resourceVersion"] = "7"
    body = encode_k8s_protobuf(cm)
    again = make_flow("PUT", "/api/v1/namespaces/default/configmaps/my-cm", body, PROTOBUF)
    await run(addon, again)
    assert again.request.content == body


async def test_undecodable_protobuf_delete_is_refused(
    addon: KlockProxy, upstream: FakeUpstream
) -> None:
    upstream.user = JONNY
    flow = make_flow("DELETE", MY_POD, b"k8s\x00\x0a\xff", PROTOBUF)
    await run(addon, flow)
    assert status_of(flow)["code"] == 400


async def test_delete_of_a_missing_object_is_forwarded_with_an_absence_guard(
    addon: KlockProxy,
) -> None:
    flow = make_flow("DELETE", "/api/v1/namespaces/default/pods/gone")
    await run(addon, flow)
    assert flow.response is None
    sent = json.loads(flow.request.content or b"")
    assert sent["preconditions"] == {"uid": ABSENT_UID}

    # A uid the client set is kept (it guards the same way).
    opts = {"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": "u-1"}}
    own = make_flow(
        "DELETE",
        "/api/v1/namespaces/default/pods/gone",
        json.dumps(opts).encode(),
        "application/json",
    )
    await run(addon, own)
    assert json.loads(own.request.content or b"")["preconditions"] == {"uid": "u-1"}


async def test_deletecollection_lists_as_the_caller_and_names_locked_objects(
    addon: KlockProxy, upstream: FakeUpstream
) -> None:
    path = "/api/v1/namespaces/default/configmaps"
    upstream.lists[path] = [
        {"metadata": {"name": "my-cm", "labels": {"aura": "red", "app": "x"}}},
        {"metadata": {"name": "free-cm", "labels": {"app": "x"}}},
    ]
    flow = make_flow("DELETE", path + "?labelSelector=app%3Dx")
    await run(addon, flow)
    status = status_of(flow)
    assert status["code"] == 403
    assert status["message"].startswith(
        "configmaps is forbidden: denied, there is a lock: map[aura:red]"
    )
    assert status["message"].endswith("deletecollection would delete locked objects: my-cm")
    assert "free-cm" not in status["message"]
    assert status["details"] == {"group": "", "kind": "configmaps"}
    assert ("list", path, {"labelSelector": "app=x"}) in upstream.calls

    other = make_flow("DELETE", path + "?labelSelector=app%3Dy")
    await run(addon, other)
    assert other.response is None


# ---------------------------------------------------------------------------------------------
# Subresources


async def test_deletecollection_refusal_stays_short(
    addon: KlockProxy, upstream: FakeUpstream
) -> None:
    path = "/api/v1/namespaces/default/pods"
    upstream.lists[path] = [
        {"metadata": {"name": f"p{i}", "labels": {"aura": "red"}}} for i in range(25)
    ]
    flow = make_flow("DELETE", path)
    await run(addon, flow)
    message = status_of(flow)["message"]
    assert message.count("Lock default/lockred") == 10
    assert message.endswith("p0, p1, p2, p3, p4, p5, p6, p7, p8, p9 and 15 more")


async def test_subresources_use_the_parent_labels(
    addon: KlockProxy, upstream: FakeUpstream
) -> None:
    deploy = pod("web", {"aura": "red"})
    deploy.update(apiVersion="apps/v1", kind="Deployment")
    upstream.objects["/apis/apps/v1/namespaces/default/deployments/web"] = deploy
    scale = make_flow(
        "PATCH",
        "/apis/apps/v1/namespaces/default/deployments/web/scale",
        b'{"spec":{"replicas":3}}',
        MERGE,
    )
    await run(addon, scale)
    status = status_of(scale)
    assert status["code"] == 403
    assert status["details"] == {"name": "web", "group": "apps", "kind": "deployments"}
    assert "through scale" in status["message"]

    upstream.user = JONNY
    allowed = make_flow(
        "PATCH",
        "/apis/apps/v1/namespaces/default/deployments/web/scale",
        b'{"spec":{"replicas":3}}',
        MERGE,
        headers=AS_JONNY,
    )
    await run(addon, allowed)
    assert allowed.response is None
    assert json.loads(allowed.request.content or b"")["metadata"]["resourceVersion"] == "42"


async def test_eviction_is_a_delete_of_the_pod(addon: KlockProxy, upstream: FakeUpstream) -> None:
    eviction = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "my-pod"}}
    flow = make_flow(
        "POST", MY_POD + "/eviction", json.dumps(eviction).encode(), "application/json"
    )
    await run(addon, flow)
    status = status_of(flow)
    assert status["code"] == 403
    assert "DELETE" in status["message"]

    upstream.user = JONNY
    allowed = make_flow(
        "POST",
        MY_POD + "/eviction",
        json.dumps(eviction).encode(),
        "application/json",
        headers=AS_JONNY,
    )
    await run(addon, allowed)
    assert allowed.response is None
    sent = json.loads(allowed.request.content or b"")
    assert sent["deleteOptions"]["preconditions"] == {"resourceVersion": "42", "uid": "uid-my-pod"}
    assert sent["kind"] == "Eviction"


async def test_bodyless_eviction_gets_an_eviction_body(
    addon: KlockProxy, upstream: FakeUpstream
) -> None:
    upstream.user = JONNY
    flow = make_flow("POST", MY_POD + "/eviction", headers=AS_JONNY)
    await run(addon, flow)
    assert flow.response is None
    sent = json.loads(flow.request.content or b"")
    assert sent["kind"] == "Eviction"
    assert sent["metadata"] == {"name": "my-pod", "namespace": "default"}
    assert sent["deleteOptions"]["preconditions"]["resourceVersion"] == "42"


async def test_exec_is_a_connect_on_the_pod(addon: KlockProxy, upstream: FakeUpstream) -> None:
    flow = make_flow(
        "GET",
        MY_POD + "/exec?command=sh&stdin=true&tty=true",
        headers=[
            ("Authorization", "Bearer t"),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
        ],
    )
    await run(addon, flow)
    status = status_of(flow)
    assert status["code"] == 403
    assert "noexec" in status["message"]

    other = make_flow("POST", OTHER_POD + "/exec?command=ls", headers=[("Upgrade", "SPDY/3.1")])
    await run(addon, other)
    assert other.response is None
    assert other.request.stream is False  # judged with the whole (empty) body


# ---------------------------------------------------------------------------------------------
# Fail closed on lookups


async def test_lookup_failure_is_a_503_naming_it(addon: KlockProxy, upstream: FakeUpstream) -> None:
    upstream.fail = UpstreamError(
        "GET /x on https://api.example:6443: the API server cannot be reached: boom"
    )
    flow = make_flow("PATCH", MY_POD, merge_patch({"a": "b"}), MERGE)
    await run(addon, flow)
    status = status_of(flow)
    assert status["code"] == 503
    assert "cannot check locks" in status["message"]
    assert "api.example" in status["message"]
    # Reads keep flowing.
    read = make_flow("GET", MY_POD)
    await run(addon, read)
    assert read.response is None


async def test_caller_forbidden_to_read_the_object_gets_403(
    addon: KlockProxy, upstream: FakeUpstream
) -> None:
    upstream.fail = UpstreamStatusError(
        "GET", 403, 'pods "my-pod" is forbidden: User "x" cannot get'
    )
    flow = make_flow("DELETE", MY_POD)
    await run(addon, flow)
    status = status_of(flow)
    assert status["code"] == 403
    assert "cannot get" in status["message"]


async def test_unexpected_error_fails_closed(addon: KlockProxy, upstream: FakeUpstream) -> None:
    upstream.fail = RuntimeError("bug")
    flow = make_flow("DELETE", MY_POD)
    await run(addon, flow)
    status = status_of(flow)
    assert status["code"] == 500
    assert "bug" not in status["message"]


async def test_identity_lookup_failure_fails_closed(
    addon: KlockProxy, upstream: FakeUpstream
) -> None:
    async def unauthorized(headers: Any) -> UserInfo:
        raise UpstreamStatusError("SelfSubjectReview", 401, "Unauthorized")

    upstream.self_subject_review = unauthorized  # type: ignore[method-assign]
    flow = make_flow("PATCH", MY_POD, merge_patch({"a": "b"}), MERGE)
    await run(addon, flow)
    assert status_of(flow)["code"] == 401


# ---------------------------------------------------------------------------------------------
# Local mode: the proxy's token


@pytest.fixture
def local_addon(upstream: FakeUpstream, engine: Engine, tmp_path: Path) -> Iterator[KlockProxy]:
    (tmp_path / "client-token").write_text("proxy-secret\n")
    (tmp_path / "upstream-token").write_text("upstream-secret\n")
    proxy = KlockProxy(lock_set=StaticLocks(engine), upstream=upstream)  # type: ignore[arg-type]
    with taddons.context(proxy) as tctx:
        tctx.configure(
            proxy,
            klock_client_token_file=str(tmp_path / "client-token"),
            klock_upstream_token_file=str(tmp_path / "upstream-token"),
        )
        yield proxy


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [("Authorization", "Bearer wrong")],
        [("Authorization", "Basic proxy-secret")],
        [("Authorization", "Bearer proxy-secret"), ("Authorization", "Bearer proxy-secret")],
    ],
)
async def test_local_mode_requires_the_proxy_token(
    local_addon: KlockProxy, headers: list[tuple[str, str]]
) -> None:
    flow = make_flow("GET", "/api/v1/namespaces/default/pods", headers=headers)
    await run(local_addon, flow)
    status = status_of(flow)
    assert status["code"] == 401
    assert status["reason"] == "Unauthorized"


async def test_local_mode_swaps_in_the_upstream_credentials(
    local_addon: KlockProxy, upstream: FakeUpstream
) -> None:
    flow = make_flow(
        "GET",
        "/api/v1/namespaces/default/pods",
        headers=[("Authorization", "Bearer proxy-secret"), ("Impersonate-User", "jonny")],
    )
    await run(local_addon, flow)
    assert flow.response is None
    assert flow.request.headers.get_all("Authorization") == ["Bearer upstream-secret"]
    assert flow.request.headers["Impersonate-User"] == "jonny"

    # A WebSocket subprotocol token cannot smuggle another identity past the proxy.
    ws = make_flow(
        "GET",
        OTHER_POD + "/exec?command=sh",
        headers=[
            ("Authorization", "Bearer proxy-secret"),
            ("Sec-WebSocket-Protocol", "base64url.bearer.authorization.k8s.io.am9ubnk, v5"),
        ],
    )
    await local_addon.requestheaders(ws)
    assert ws.request.headers["Sec-WebSocket-Protocol"] == "v5"
    assert ws.request.headers.get_all("Authorization") == ["Bearer upstream-secret"]

    # Lookups go with exactly the forwarded credentials.
    patch = make_flow(
        "PATCH",
        MY_POD,
        merge_patch({"a": "b"}),
        MERGE,
        headers=[("Authorization", "Bearer proxy-secret")],
    )
    await run(local_addon, patch)
    assert upstream.calls[0][2] == {"Authorization": ["Bearer upstream-secret"]}


# ---------------------------------------------------------------------------------------------
# Streams, framing, long connections


async def test_every_upstream_response_streams_but_our_own_answers_do_not(
    addon: KlockProxy,
) -> None:
    flow = make_flow("GET", "/api/v1/namespaces/default/pods?watch=true")
    await run(addon, flow)
    flow.response = tutils.tresp()
    addon.responseheaders(flow)
    assert flow.response.stream is True

    denied = make_flow("DELETE", MY_POD)
    await run(addon, denied)
    assert denied.response is not None
    addon.responseheaders(denied)
    assert denied.response.stream is False

    upgrade = make_flow("GET", OTHER_POD + "/exec?command=sh", headers=[("Upgrade", "websocket")])
    await run(addon, upgrade)
    upgrade.response = tutils.tresp(status_code=101)
    addon.responseheaders(upgrade)
    assert upgrade.response.stream is False


async def test_http2_body_without_content_length_is_framed_not_streamed(
    addon: KlockProxy,
) -> None:
    body = b'{"apiVersion":"policy/v1","kind":"Eviction","metadata":{"name":"p"}}'
    flow = make_flow(
        "POST", "/api/v1/namespaces/free/pods/p/eviction", body, "application/json", http2=True
    )
    assert "content-length" not in flow.request.headers
    await addon.requestheaders(flow)
    assert flow.request.stream is False
    await addon.request(flow)
    assert flow.response is None
    assert flow.request.headers["content-length"] == str(len(body))


async def test_websocket_and_tcp_messages_are_not_kept(addon: KlockProxy) -> None:
    ws_flow = tflow.tflow(ws=True)
    assert ws_flow.websocket is not None and ws_flow.websocket.messages
    addon.websocket_message(ws_flow)
    assert ws_flow.websocket.messages == []

    tcp_flow = tflow.ttcpflow()
    assert tcp_flow.messages
    addon.tcp_message(tcp_flow)
    assert tcp_flow.messages == []


async def test_errors_are_logged_without_headers(
    addon: KlockProxy, caplog: pytest.LogCaptureFixture
) -> None:
    flow = make_flow("GET", "/api/v1/namespaces/default/pods?watch=true")
    flow.error = tflow.terr("Connection refused")
    with caplog.at_level("DEBUG", logger="klockproxy.proxy.addon"):
        addon.error(flow)
    assert "Connection refused" in caplog.text
    assert "caller-token" not in caplog.text
    assert "watch=true" not in caplog.text


def test_loading_the_addon_quiets_hpack_header_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import logging

    import hpack

    monkeypatch.setattr(logging.getLogger("hpack"), "level", logging.NOTSET)
    proxy = KlockProxy()
    with taddons.context(proxy):
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        root = logging.getLogger()
        root.addHandler(handler)
        monkeypatch.setattr(root, "level", logging.DEBUG)
        try:
            encoded = hpack.Encoder().encode([("authorization", "Bearer UPSTREAM-SECRET")])
            hpack.Decoder().decode(encoded)
        finally:
            root.removeHandler(handler)
        assert "UPSTREAM-SECRET" not in stream.getvalue()


async def test_no_per_flow_state_is_kept(addon: KlockProxy, upstream: FakeUpstream) -> None:
    before = dict(vars(addon))
    for flow in (make_flow("DELETE", MY_POD), make_flow("GET", MY_POD)):
        await run(addon, flow)
    assert vars(addon).keys() == before.keys()
    assert addon._tasks == set()


async def test_unconfigured_addon_lets_nothing_through() -> None:
    proxy = KlockProxy()
    with taddons.context(proxy) as tctx:
        # No reverse mode and no klock_upstream: the options do not parse.
        with pytest.raises(exceptions.OptionsError):
            tctx.configure(proxy)
        await proxy.running()
        assert proxy.settings is None
        flow = make_flow("GET", "/api/v1/namespaces/default/pods")
        await run(proxy, flow)
        status = status_of(flow)
        assert status["code"] == 503
        assert "not configured" in status["message"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_unreachable_api_server_gets_a_status_naming_it(addon: KlockProxy) -> None:
    port = _free_port()
    flow = make_flow("GET", "/api/v1/namespaces/default/pods")
    flow.server_conn.state = ConnectionState.CLOSED
    flow.server_conn.address = ("127.0.0.1", port)
    await run(addon, flow)
    status = status_of(flow)
    assert status["code"] == 503
    assert f"the API server https://127.0.0.1:{port} cannot be reached" in status["message"]
    assert flow.request.stream is False


async def test_probe_is_skipped_while_the_client_has_an_upstream_connection(
    addon: KlockProxy,
) -> None:
    dead = ("127.0.0.1", _free_port())  # a probe would fail

    def flow_to_dead(client: Any = None) -> http.HTTPFlow:
        flow = make_flow("GET", "/api/v1/namespaces/default/pods")
        if client is not None:
            flow.client_conn = client
        flow.server_conn.state = ConnectionState.CLOSED
        flow.server_conn.address = dead
        return flow

    first = flow_to_dead()
    data = ServerConnectionHookData(server=tflow.tserver_conn(), client=first.client_conn)
    addon.server_connected(data)
    await run(addon, first)
    assert first.response is None

    addon.server_disconnected(data)
    second = flow_to_dead(first.client_conn)
    await run(addon, second)
    assert status_of(second)["code"] == 503

    addon.server_connected(data)
    addon.client_disconnected(first.client_conn)
    assert addon._upstream_open == {}


async def test_probe_is_skipped_right_after_a_successful_connect_to_that_address(
    addon: KlockProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = ("127.0.0.1", _free_port())  # a probe would fail

    def flow_to_dead() -> http.HTTPFlow:
        # A new client connection each time, as every kubectl run makes.
        flow = make_flow("GET", "/api/v1/namespaces/default/pods")
        flow.server_conn.state = ConnectionState.CLOSED
        flow.server_conn.address = dead
        return flow

    other = make_flow("GET", "/")
    server = tflow.tserver_conn()
    server.address = dead
    data = ServerConnectionHookData(server=server, client=other.client_conn)
    addon.server_connected(data)
    addon.server_disconnected(data)
    addon.client_disconnected(other.client_conn)
    # Another client connected to this address a moment ago: no probe, the flow goes on.
    fresh = flow_to_dead()
    await run(addon, fresh)
    assert fresh.response is None

    # A failed connect to it makes the next new connection probe again.
    addon.server_connect_error(data)
    after_error = flow_to_dead()
    await run(addon, after_error)
    assert status_of(after_error)["code"] == 503

    # So does the passing of time.
    addon.server_connected(data)
    addon.client_disconnected(other.client_conn)
    monkeypatch.setattr("klockproxy.proxy.addon.PROBE_FRESH", 0.0)
    stale = flow_to_dead()
    await run(addon, stale)
    assert status_of(stale)["code"] == 503


async def test_reachable_api_server_passes_the_probe(addon: KlockProxy) -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        flow = make_flow("GET", "/api/v1/namespaces/default/pods")
        flow.server_conn.state = ConnectionState.CLOSED
        flow.server_conn.address = ("127.0.0.1", port)
        await run(addon, flow)
        assert flow.response is None
        assert flow.request.stream is True
    finally:
        server.close()
        await server.wait_closed()


async def test_namespace_deletion_is_judged_in_that_namespace(
    addon: KlockProxy, upstream: FakeUpstream
) -> None:
    upstream.objects["/api/v1/namespaces/default"] = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "default", "resourceVersion": "5", "labels": {"aura": "red"}},
    }
    flow = make_flow("DELETE", "/api/v1/namespaces/default")
    await run(addon, flow)
    status = status_of(flow)
    assert status["message"].startswith('namespaces "default" is forbidden: denied')


# ---------------------------------------------------------------------------------------------
# Adversarial review findings, kept as regressions


async def test_namespace_with_a_delete_lock_cannot_be_deleted(
    addon: KlockProxy, upstream: FakeUpstream
) -> None:
    upstream.objects["/api/v1/namespaces/default"] = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "default", "uid": "ns-uid", "resourceVersion": "5"},
    }
    flow = make_flow("DELETE", "/api/v1/namespaces/default")
    await run(addon, flow)
    status = status_of(flow)
    assert status["code"] == 403
    assert status["message"].startswith(
        'namespaces "default" is forbidden: denied, there is a lock'
    )
    assert "deleting the namespace deletes every object in it" in status["message"]

    # The exclusive user of every DELETE lock there may delete it.
    upstream.user = JONNY
    allowed = make_flow("DELETE", "/api/v1/namespaces/default", headers=AS_JONNY)
    await run(addon, allowed)
    assert allowed.response is None


async def test_internal_errors_do_not_log_exception_messages(
    addon: KlockProxy, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    upstream.fail = RuntimeError("secret-value-in-message")
    flow = make_flow("DELETE", MY_POD)
    with caplog.at_level("DEBUG"):
        await run(addon, flow)
    assert status_of(flow)["code"] == 500
    assert "RuntimeError" in caplog.text
    assert "secret-value-in-message" not in caplog.text


def test_stream_large_bodies_is_refused() -> None:
    proxy = KlockProxy()
    with taddons.context(proxy) as tctx:
        tctx.configure(proxy, klock_upstream="https://127.0.0.1:1", klock_locks=["cluster"])
        tctx.options.add_option("stream_large_bodies", str | None, None, "as StreamBodies")
        with pytest.raises(exceptions.OptionsError, match="stream_large_bodies"):
            tctx.configure(proxy, stream_large_bodies="1m")


async def test_websocket_subprotocol_token_is_the_callers_credential(
    addon: KlockProxy, upstream: FakeUpstream
) -> None:
    token = base64.urlsafe_b64encode(b"callers-token").decode().rstrip("=")
    flow = make_flow(
        "GET",
        OTHER_POD + "/exec?command=sh",
        headers=[
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Protocol", f"base64url.bearer.authorization.k8s.io.{token}, v5"),
        ],
    )
    await run(addon, flow)
    assert flow.response is None
    lookups = [c for c in upstream.calls if c[0] in ("get", "ssr")]
    assert lookups
    assert all(c[2].get("Authorization") == ["Bearer callers-token"] for c in lookups)


async def test_other_node_proxy_paths_are_a_connect_on_the_node(
    addon: KlockProxy, upstream: FakeUpstream
) -> None:
    flow = make_flow("GET", "/api/v1/nodes/node-1/proxy/metrics")
    await run(addon, flow)
    assert flow.response is None  # no lock covers cluster-scoped objects
    for tail in ("exec/default/../c", "exec/default", "run%2Fdefault"):
        odd = make_flow("GET", "/api/v1/nodes/node-1/proxy/" + tail)
        await run(addon, odd)
        assert status_of(odd)["code"] == 400, tail


async def test_two_content_types_are_refused(addon: KlockProxy) -> None:
    flow = make_flow(
        "PATCH",
        "/api/v1/namespaces/free/configmaps/new?fieldManager=x",
        b"apiVersion: v1\nkind: ConfigMap\n",
        headers=[("Content-Type", APPLY), ("Content-Type", MERGE)],
    )
    await run(addon, flow)
    status = status_of(flow)
    assert status["code"] == 400
    assert "Content-Type" in status["message"]


CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


def _widget_crd(upstream: FakeUpstream) -> None:
    upstream.objects[CRD_PATH + "/widgets.example.com"] = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com", "resourceVersion": "3", "uid": "crd"},
        "spec": {
            "group": "example.com",
            "names": {"plural": "widgets", "kind": "Widget"},
            "scope": "Namespaced",
            "versions": [{"name": "v1", "served": True, "storage": True}],
        },
    }


async def test_crd_deletion_is_refused_while_it_would_delete_locked_objects(
    addon: KlockProxy, upstream: FakeUpstream
) -> None:
    _widget_crd(upstream)
    upstream.lists["/apis/example.com/v1/widgets"] = [
        {"metadata": {"name": "w", "namespace": "default", "labels": {"aura": "red"}}},
        {"metadata": {"name": "x", "namespace": "other", "labels": {"aura": "red"}}},
    ]
    flow = make_flow("DELETE", CRD_PATH + "/widgets.example.com")
    await run(addon, flow)
    status = status_of(flow)
    assert status["code"] == 403
    assert status["message"].startswith(
        'customresourcedefinitions.apiextensions.k8s.io "widgets.example.com" is forbidden: '
        "denied, there is a lock: map[aura:red]"
    )
    assert status["message"].endswith("deletes locked objects: default/w")

    upstream.lists["/apis/example.com/v1/widgets"] = [
        {"metadata": {"name": "w", "namespace": "default", "labels": {"aura": "blue"}}}
    ]
    allowed = make_flow("DELETE", CRD_PATH + "/widgets.example.com")
    await run(addon, allowed)
    assert allowed.response is None

    collection = make_flow("DELETE", CRD_PATH)
    await run(addon, collection)
    assert status_of(collection)["code"] == 403


async def test_crd_deletion_takes_the_fast_path_without_delete_locks(
    upstream: FakeUpstream,
) -> None:
    lock = LOCKS.split("---")[1]  # nocreate: CREATE only
    engine = Engine(load_locks_from_text(lock, source="t"))
    proxy = KlockProxy(lock_set=StaticLocks(engine), upstream=upstream)  # type: ignore[arg-type]
    with taddons.context(proxy) as tctx:
        tctx.configure(proxy)
        flow = make_flow("DELETE", CRD_PATH + "/widgets.example.com")
        await run(proxy, flow)
        assert flow.response is None
        assert upstream.calls == []


@pytest.fixture
def gc_proxy(upstream: FakeUpstream) -> Iterator[KlockProxy]:
    engine = Engine(load_locks_from_text(GC_LOCK, source="t"))
    proxy = KlockProxy(lock_set=StaticLocks(engine), upstream=upstream)  # type: ignore[arg-type]
    with taddons.context(proxy) as tctx:
        tctx.configure(proxy)
        yield proxy


async def test_a_ttl_on_a_delete_locked_job_is_judged_as_a_delete(
    gc_proxy: KlockProxy, upstream: FakeUpstream
) -> None:
    job = pod("done", {"aura": "red"}, ns="gc")
    job.update(apiVersion="batch/v1", kind="Job", spec={"completions": 1})
    upstream.objects["/apis/batch/v1/namespaces/gc/jobs/done"] = job
    flow = make_flow(
        "PATCH",
        "/apis/batch/v1/namespaces/gc/jobs/done",
        b'{"spec":{"ttlSecondsAfterFinished":0}}',
        MERGE,
    )
    await run(gc_proxy, flow)
    status = status_of(flow)
    assert status["code"] == 403
    assert "TTL controller" in status["message"]

    other = make_flow(
        "PATCH", "/apis/batch/v1/namespaces/gc/jobs/done", merge_patch({"x": "y"}), MERGE
    )
    await run(gc_proxy, other)
    assert other.response is None


async def test_updates_that_add_no_owner_pass_a_delete_only_lock(
    gc_proxy: KlockProxy, upstream: FakeUpstream
) -> None:
    upstream.objects["/api/v1/namespaces/gc/pods/p"] = pod("p", {"aura": "red"}, ns="gc")
    flow = make_flow("PATCH", "/api/v1/namespaces/gc/pods/p", merge_patch({"x": "y"}), MERGE)
    await run(gc_proxy, flow)
    assert flow.response is None


def _workload(upstream: FakeUpstream) -> None:
    upstream.objects["/apis/apps/v1/namespaces/gc/deployments/web"] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "gc", "uid": "dep-uid", "resourceVersion": "7"},
    }
    upstream.lists["/apis/apps/v1/namespaces/gc/replicasets"] = [
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": "web-1",
                "uid": "rs-uid",
                "ownerReferences": [{"kind": "Deployment", "name": "web", "uid": "dep-uid"}],
            },
        }
    ]
    locked = pod("web-1-x", {"aura": "red"}, ns="gc")
    locked["metadata"]["ownerReferences"] = [
        {"kind": "ReplicaSet", "name": "web-1", "uid": "rs-uid"}
    ]
    upstream.lists["/api/v1/namespaces/gc/pods"] = [locked, pod("other", {}, ns="gc")]


@pytest.mark.parametrize(
    ("path", "body", "ctype"),
    [
        ("?propagationPolicy=Orphan", b"", None),
        ("", b'{"kind":"DeleteOptions","propagationPolicy":"Orphan"}', "application/json"),
        ("", b'{"kind":"DeleteOptions","orphanDependents":true}', "application/json"),
        ("", encode_unknown("v1", "DeleteOptions", encode_string_field(4, "Orphan")), PROTOBUF),
    ],
)
async def test_orphaning_delete_of_the_owner_is_allowed(
    gc_proxy: KlockProxy, upstream: FakeUpstream, path: str, body: bytes, ctype: str | None
) -> None:
    _workload(upstream)
    flow = make_flow("DELETE", "/apis/apps/v1/namespaces/gc/deployments/web" + path, body, ctype)
    await run(gc_proxy, flow)
    assert flow.response is None
    assert not [c for c in upstream.calls if c[0] == "list"]


async def test_owner_without_locked_dependents_is_deleted(
    gc_proxy: KlockProxy, upstream: FakeUpstream
) -> None:
    _workload(upstream)
    upstream.lists["/api/v1/namespaces/gc/pods"] = [pod("other", {}, ns="gc")]
    flow = make_flow("DELETE", "/apis/apps/v1/namespaces/gc/deployments/web")
    await run(gc_proxy, flow)
    assert flow.response is None


async def test_dependents_the_caller_may_not_list_are_listed_by_the_proxy_or_refused(
    gc_proxy: KlockProxy, upstream: FakeUpstream
) -> None:
    _workload(upstream)
    upstream.forbidden_lists = {"/apis/apps/v1/namespaces/gc/replicasets"}
    refused = make_flow("DELETE", "/apis/apps/v1/namespaces/gc/deployments/web")
    await run(gc_proxy, refused)
    status = status_of(refused)
    assert status["code"] == 403
    assert "cannot tell which replicasets" in status["message"]
    assert "--cascade=orphan" in status["message"]

    # With credentials of its own the proxy lists them itself and finds the locked pod.
    upstream.has_own_credentials = True
    judged = make_flow("DELETE", "/apis/apps/v1/namespaces/gc/deployments/web")
    await run(gc_proxy, judged)
    assert 'forbids DELETE of pods "web-1-x"' in status_of(judged)["message"]


# ---------------------------------------------------------------------------------------------
# Options


def test_configure_defaults_to_the_reverse_target_and_raises_the_idle_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mitmproxy.proxy.server, "TCP_TIMEOUT", 600)
    lock_file = tmp_path / "locks.yaml"
    lock_file.write_text(LOCKS)
    proxy = KlockProxy()
    with taddons.context(proxy) as tctx:
        tctx.options.update(mode=["reverse:https://127.0.0.1:6443"])
        tctx.configure(proxy, klock_locks=[str(lock_file)], klock_upstream_insecure=True)
        assert proxy.settings is not None
        assert proxy.settings.upstream is not None
        assert proxy.settings.upstream.server == "https://127.0.0.1:6443"
        assert proxy.settings.upstream.insecure is True
        assert mitmproxy.proxy.server.TCP_TIMEOUT == DEFAULT_IDLE_TIMEOUT
        assert proxy.lock_set is not None and proxy.lock_set.engine is None  # not started
        tctx.configure(proxy, klock_idle_timeout=3600)
        assert mitmproxy.proxy.server.TCP_TIMEOUT == 3600


async def test_done_restores_mitmproxys_idle_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    # The timeout is a process-wide module constant: another master started later in the
    # same process (tests, an embedding program) must find mitmproxy's own value again.
    monkeypatch.setattr(mitmproxy.proxy.server, "TCP_TIMEOUT", 600)
    proxy = KlockProxy()
    with taddons.context(proxy) as tctx:
        tctx.options.update(mode=["reverse:https://127.0.0.1:6443"])
        tctx.configure(proxy, klock_idle_timeout=3600)
        tctx.configure(proxy, klock_idle_timeout=7200)
        assert mitmproxy.proxy.server.TCP_TIMEOUT == 7200
        await proxy.done()
        assert mitmproxy.proxy.server.TCP_TIMEOUT == 600


class _FakeWriter:
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8443)}.get(
            name, default
        )


async def test_new_connections_get_the_raised_idle_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mitmproxy.proxy.server, "TCP_TIMEOUT", 600)
    proxy = KlockProxy()
    with taddons.context(proxy) as tctx:
        tctx.configure(
            proxy,
            klock_upstream="https://127.0.0.1:6443",
            klock_locks=["cluster"],
            klock_idle_timeout=7200,
        )
        handler = mitmproxy.proxy.server.SimpleConnectionHandler(
            None, _FakeWriter(), tctx.options, ProxyMode.parse("reverse:https://127.0.0.1:1"), {}
        )
        assert handler.timeout_watchdog.timeout == 7200


def test_configure_rejects_a_broken_lock_file_and_a_missing_upstream(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(LOCKS.replace("operations: [CREATE]", "operations: [CRATE]"))
    proxy = KlockProxy()
    with taddons.context(proxy) as tctx:
        tctx.options.update(mode=["reverse:https://127.0.0.1:6443"], klock_locks=["cluster"])
        with pytest.raises(exceptions.OptionsError, match=r"broken\.yaml.*CRATE"):
            tctx.configure(proxy, klock_locks=[str(broken)])
        with pytest.raises(exceptions.OptionsError, match="no such file"):
            tctx.configure(proxy, klock_locks=[str(tmp_path / "nope")])
        with pytest.raises(exceptions.OptionsError, match="needs the API server"):
            tctx.configure(proxy, mode=["regular"])


async def test_running_starts_file_locks_and_done_stops_them(tmp_path: Path) -> None:
    lock_file = tmp_path / "locks.yaml"
    lock_file.write_text(LOCKS)
    proxy = KlockProxy()
    with taddons.context(proxy) as tctx:
        tctx.configure(proxy, klock_upstream="https://127.0.0.1:1", klock_locks=[str(lock_file)])
        await proxy.running()
        assert proxy.lock_set is not None and proxy.lock_set.engine is not None
        assert proxy.lock_set.engine.lock_count == 4
        if "connection_strategy" in tctx.options:
            assert tctx.options.connection_strategy == "lazy"
        await proxy.done()


def test_an_injected_lock_set_is_not_parsed_again_at_configure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """serve.py loads the lock files; parsing 10,000 Locks again in configure() would stall
    the event loop (and double the start time)."""
    lock_file = tmp_path / "locks.yaml"
    lock_file.write_text(LOCKS)
    parsed: list[object] = []
    monkeypatch.setattr(addon_module, "load_locks_from_path", lambda *a: parsed.append(a))
    injected = KlockProxy(lock_set=StaticLocks(Engine(())), upstream=FakeUpstream())  # type: ignore[arg-type]
    with taddons.context(injected) as tctx:
        tctx.configure(injected, klock_locks=[str(lock_file)])
    assert parsed == []
    # Without an injected lock set, a broken file still stops the start at once.
    own = KlockProxy(upstream=FakeUpstream())  # type: ignore[arg-type]
    with taddons.context(own) as tctx:
        tctx.configure(own, klock_locks=[str(lock_file)])
    assert len(parsed) == 1


def test_other_options_do_not_parse_the_lock_files_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Parsing 10,000 Locks on the event loop stalls every request: done when the files are
    # named, not whenever any klock_ option changes.
    monkeypatch.setattr(mitmproxy.proxy.server, "TCP_TIMEOUT", 600)
    lock_file = tmp_path / "locks.yaml"
    lock_file.write_text(LOCKS)
    proxy = KlockProxy()
    parsed: list[str] = []
    real = addon_module.load_locks_from_path

    def counting(path: Any, default_namespace: str = "default") -> Any:
        parsed.append(str(path))
        return real(path, default_namespace)

    monkeypatch.setattr(addon_module, "load_locks_from_path", counting)
    with taddons.context(proxy) as tctx:
        tctx.options.update(mode=["reverse:https://127.0.0.1:6443"])
        tctx.configure(proxy, klock_locks=[str(lock_file)])
        assert parsed == [str(lock_file)]
        tctx.configure(proxy, klock_idle_timeout=1234)
        assert parsed == [str(lock_file)]
        assert mitmproxy.proxy.server.TCP_TIMEOUT == 1234
        other = tmp_path / "other.yaml"
        other.write_text(LOCKS)
        tctx.configure(proxy, klock_locks=[str(other)])
        assert parsed == [str(lock_file), str(other)]
