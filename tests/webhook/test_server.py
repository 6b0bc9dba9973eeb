"""The webhook over HTTPS: well-formed reviews get verdicts, anything else 400/413, never a
crash; every operation judged as the proxy judges it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from klockproxy.cluster.upstream import UpstreamStatusError
from tests.fakes import FakeUpstream
from tests.webhook.support import (
    ADMIN,
    DENIAL,
    JONNY,
    LOCKRED,
    pod,
    review,
    served,
)

RED = {"aura": "red"}
POD_PATH = "/api/v1/namespaces/shop/pods/my-pod"


def reads(api: FakeUpstream) -> list[str]:
    return [path for _, path, _ in api.calls]


def assert_denied(response: dict[str, Any], op: str, target: str = 'pods "my-pod"') -> None:
    assert response["allowed"] is False
    assert response["status"] == {
        "code": 403,
        "reason": "Forbidden",
        "message": DENIAL.format(op=op, target=target),
    }


# ------------------------------------------------------------------ bad input: 400 / 413


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "not JSON"),
        (b"\x00\xff\xfe garbage", "not JSON"),
        (b"{", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'"AdmissionReview"', "not a JSON object"),
        (b"{}", "kind must be AdmissionReview"),
        (b'{"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1beta1"}', "apiVersion"),
        (b'{"kind": "Pod", "apiVersion": "v1"}', "kind must be AdmissionReview"),
        (b'{"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1"}', "request"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
        (b'{"a": NaN}', "kind must be AdmissionReview"),
    ],
)
async def test_garbage_gets_400_with_a_reason(tmp_path: Path, body: bytes, reason: str) -> None:
    async with served(tmp_path) as s:
        code, doc = await s.post(body)
    assert code == 400
    assert doc["kind"] == "Status"
    assert doc["reason"] == "BadRequest"
    assert "not an AdmissionReview v1" in doc["message"]
    assert reason in doc["message"]


def _without(path: str, value: Any = None) -> dict[str, Any]:
    body = review("DELETE", old=pod("my-pod", RED))
    *parents, last = path.split(".")
    target = body
    for part in parents:
        target = target[part]
    if value is None:
        del target[last]
    else:
        target[last] = value
    return body


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (_without("request.uid"), "request.uid is missing"),
        (_without("request.uid", ""), "request.uid is empty"),
        (_without("request.uid", 7), "request.uid must be a string"),
        (_without("request.operation"), "request.operation is missing"),
        (_without("request.operation", "PATCH"), "CREATE, UPDATE, DELETE or CONNECT"),
        (_without("request.operation", "delete"), "CREATE, UPDATE, DELETE or CONNECT"),
        (_without("request.resource"), "request.resource is missing"),
        (_without("request.userInfo"), "request.userInfo is missing"),
        (_without("request.userInfo", {"groups": "admins"}), "groups must be an array"),
        (_without("request.dryRun", "yes"), "request.dryRun must be a boolean"),
        (_without("request.object", [1]), "request.object must be an object"),
        (_without("request", "x"), "request must be an object"),
    ],
)
async def test_malformed_reviews_get_400(tmp_path: Path, body: Any, reason: str) -> None:
    async with served(tmp_path) as s:
        code, doc = await s.post(body)
    assert code == 400, doc
    assert reason in doc["message"]


async def test_an_update_without_its_objects_gets_400(tmp_path: Path) -> None:
    body = review("UPDATE", old=pod("my-pod", RED), obj=None)
    async with served(tmp_path) as s:
        code, doc = await s.post(body)
    assert code == 400
    assert "request.object is missing for a UPDATE" in doc["message"]


async def test_a_body_over_3_mib_gets_413(tmp_path: Path) -> None:
    big = pod("my-pod", RED)
    big["data"] = "x" * (3 * 1024 * 1024)
    async with served(tmp_path) as s:
        code, doc = await s.post(review("CREATE", obj=big))

        # Without a Content-Length (chunked), the limit holds all the same.
        async def chunks() -> Any:
            for _ in range(4):
                yield b"x" * (1024 * 1024)

        async with s.session.post(s.url, data=chunks(), ssl=s.ssl) as resp:
            chunked_code, chunked = resp.status, json.loads(await resp.read())
        # The server still answers afterwards.
        allowed = await s.answer(review("CREATE", obj=pod("small")))
    assert code == 413
    assert doc["kind"] == "Status"
    assert doc["reason"] == "RequestEntityTooLarge"
    assert chunked_code == 413
    assert chunked["code"] == 413
    assert allowed["allowed"] is True


async def test_a_big_object_under_the_limit_is_judged(tmp_path: Path) -> None:
    big = pod("my-pod", RED)
    big["data"] = "x" * (1024 * 1024)
    async with served(tmp_path) as s:
        response = await s.answer(review("DELETE", old=big))
    assert_denied(response, "DELETE")


async def test_other_paths_and_methods_get_a_status(tmp_path: Path) -> None:
    async with served(tmp_path) as s:
        async with s.session.get(s.url, ssl=s.ssl) as resp:
            get_code, get_doc = resp.status, json.loads(await resp.read())
        async with s.session.post(s.server.url + "/mutate", data=b"{}", ssl=s.ssl) as resp:
            other_code, other_doc = resp.status, json.loads(await resp.read())
    assert get_code == 405
    assert get_doc["kind"] == "Status"
    assert get_doc["message"] == "klockproxy webhook: Method Not Allowed"
    assert other_code == 404
    assert other_doc["kind"] == "Status"
    assert other_doc["message"] == "klockproxy webhook: Not Found"


# ------------------------------------------------------------------ every operation


async def test_create_is_judged_on_the_new_object(tmp_path: Path) -> None:
    create_lock = {
        **LOCKRED,
        "spec": {"operations": ["CREATE"], "matcher": RED},
        "metadata": {"name": "nonew", "namespace": "shop"},
    }
    async with served(tmp_path, [create_lock]) as s:
        denied = await s.answer(review("CREATE", obj=pod("my-pod", RED)))
        allowed = await s.answer(review("CREATE", obj=pod("my-pod", {"aura": "blue"})))
    assert denied["allowed"] is False
    assert denied["status"]["message"] == (
        'denied, there is a lock: map[aura:red] (Lock shop/nonew forbids CREATE of pods "my-pod"; '
        "nobody is exempt)"
    )
    assert allowed == {"uid": allowed["uid"], "allowed": True}


async def test_update_is_judged_on_the_old_or_the_new_labels(tmp_path: Path) -> None:
    async with served(tmp_path) as s:
        relabel_out = await s.answer(
            review("UPDATE", old=pod("my-pod", RED), obj=pod("my-pod", {"aura": "blue"}))
        )
        relabel_in = await s.answer(
            review("UPDATE", old=pod("my-pod", {"aura": "blue"}), obj=pod("my-pod", RED))
        )
        unrelated = await s.answer(
            review("UPDATE", old=pod("my-pod", {}), obj=pod("my-pod", {"x": "y"}))
        )
        by_jonny = await s.answer(
            review("UPDATE", old=pod("my-pod", RED), obj=pod("my-pod", RED), user=JONNY)
        )
    assert_denied(relabel_out, "UPDATE")
    assert_denied(relabel_in, "UPDATE")
    assert unrelated["allowed"] is True
    assert by_jonny["allowed"] is True


async def test_delete_is_judged_on_the_old_object(tmp_path: Path) -> None:
    async with served(tmp_path) as s:
        denied = await s.answer(review("DELETE", old=pod("my-pod", RED)))
        dry_run = await s.answer(review("DELETE", old=pod("my-pod", RED), dry_run=True))
        other = await s.answer(review("DELETE", name="other-pod", old=pod("other-pod")))
        jonny = await s.answer(review("DELETE", old=pod("my-pod", RED), user=JONNY))
    assert_denied(denied, "DELETE")
    assert_denied(dry_run, "DELETE")  # dry-run requests are judged the same
    assert other["allowed"] is True
    assert jonny["allowed"] is True


async def test_a_deletecollection_item_without_a_name_is_named_by_its_object(
    tmp_path: Path,
) -> None:
    async with served(tmp_path) as s:
        denied = await s.answer(review("DELETE", name="", old=pod("my-pod", RED)))
    assert_denied(denied, "DELETE")


async def test_connect_is_judged_on_the_pod(tmp_path: Path) -> None:
    api = FakeUpstream()
    api.objects[POD_PATH] = pod("my-pod", RED)
    exec_options = {"kind": "PodExecOptions", "apiVersion": "v1", "command": ["sh"]}
    async with served(tmp_path, api=api) as s:
        denied = await s.answer(
            review("CONNECT", sub="exec", kind="PodExecOptions", obj=exec_options)
        )
        jonny = await s.answer(
            review("CONNECT", sub="exec", kind="PodExecOptions", obj=exec_options, user=JONNY)
        )
    assert_denied(denied, "CONNECT", 'pods "my-pod" through exec')
    assert jonny["allowed"] is True
    assert reads(api) == [POD_PATH, POD_PATH]


async def test_eviction_is_the_delete_of_the_pod(tmp_path: Path) -> None:
    api = FakeUpstream()
    api.objects[POD_PATH] = pod("my-pod", RED)
    eviction = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "my-pod"}}
    async with served(tmp_path, api=api) as s:
        denied = await s.answer(review("CREATE", sub="eviction", kind="Eviction", obj=eviction))
    assert_denied(denied, "DELETE", 'pods "my-pod" through eviction')


async def test_scale_is_an_update_of_the_parent(tmp_path: Path) -> None:
    api = FakeUpstream()
    path = "/apis/apps/v1/namespaces/shop/deployments/web"
    api.objects[path] = {"kind": "Deployment", "metadata": {"name": "web", "labels": RED}}
    scale = {"kind": "Scale", "apiVersion": "autoscaling/v1", "metadata": {"name": "web"}}
    body = review(
        "UPDATE",
        resource=("apps", "v1", "deployments"),
        sub="scale",
        kind="Scale",
        name="web",
        obj={**scale, "spec": {"replicas": 3}},
        old={**scale, "spec": {"replicas": 1}},
    )
    async with served(tmp_path, api=api) as s:
        denied = await s.answer(body)
    assert_denied(denied, "UPDATE", 'deployments.apps "web" through scale')
    assert reads(api) == [path]


async def test_status_is_judged_on_the_objects_it_carries(tmp_path: Path) -> None:
    api = FakeUpstream()
    async with served(tmp_path, api=api) as s:
        denied = await s.answer(
            review("UPDATE", sub="status", old=pod("my-pod", RED), obj=pod("my-pod", RED))
        )
    assert_denied(denied, "UPDATE", 'pods "my-pod" through status')
    assert reads(api) == []


async def test_a_missing_parent_is_left_to_the_api_server(tmp_path: Path) -> None:
    async with served(tmp_path) as s:
        response = await s.answer(review("CONNECT", sub="exec", kind="PodExecOptions", obj={}))
    assert response["allowed"] is True


async def test_lock_objects_are_never_locked(tmp_path: Path) -> None:
    lock_all = {
        **LOCKRED,
        "spec": {"operations": ["UPDATE", "DELETE"]},
        "metadata": {"name": "freeze", "namespace": "shop"},
    }
    body = review(
        "DELETE",
        resource=("klock.rnemet.dev", "v1", "locks"),
        kind="Lock",
        name="freeze",
        old=lock_all,
    )
    async with served(tmp_path, [lock_all]) as s:
        response = await s.answer(body)
        pod_delete = await s.answer(review("DELETE", old=pod("my-pod")))
    assert response["allowed"] is True
    assert pod_delete["allowed"] is False


async def test_a_namespace_delete_is_refused_while_a_delete_lock_applies(tmp_path: Path) -> None:
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}
    body = review(
        "DELETE", kind="Namespace", resource=("", "v1", "namespaces"), name="shop", old=ns
    )
    body["request"]["namespace"] = ""
    async with served(tmp_path) as s:
        denied = await s.answer(body)
        jonny = await s.answer({**body, "request": {**body["request"], "userInfo": JONNY}})
    assert denied["allowed"] is False
    assert denied["status"]["message"] == (
        "denied, there is a lock: map[aura:red] (Lock shop/lockred forbids DELETE in namespace "
        "shop, and deleting the namespace deletes every object in it; only jonny-op may)"
    )
    assert jonny["allowed"] is True


async def test_a_cascading_delete_is_judged_on_its_dependents(tmp_path: Path) -> None:
    api = FakeUpstream()
    owner = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "rs", "uid": "u1"}}
    child = pod("my-pod", RED, ownerReferences=[{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                                  "name": "rs", "uid": "u1"}])  # fmt: skip
    api.lists["/api/v1/namespaces/shop/pods"] = [child]
    body = review("DELETE", resource=("apps", "v1", "replicasets"), kind="ReplicaSet", name="rs",
                  old=owner)  # fmt: skip
    async with served(tmp_path, api=api) as s:
        denied = await s.answer(body)
        orphan = await s.answer(
            review(
                "DELETE",
                resource=("apps", "v1", "replicasets"),
                kind="ReplicaSet",
                name="rs",
                old=owner,
                options={"propagationPolicy": "Orphan"},
            )
        )
    assert denied["allowed"] is False
    assert denied["status"]["message"].startswith(
        DENIAL.format(op="DELETE", target='pods "my-pod"')
    )
    assert "the garbage collector deletes the dependents" in denied["status"]["message"]
    assert orphan["allowed"] is True


async def test_a_new_owner_reference_is_judged_as_a_delete(tmp_path: Path) -> None:
    lock = {**LOCKRED, "spec": {"operations": ["DELETE"], "matcher": RED}}
    owned = pod("my-pod", RED, ownerReferences=[{"apiVersion": "v1", "kind": "ConfigMap",
                                                  "name": "c", "uid": "u2"}])  # fmt: skip
    async with served(tmp_path, [lock]) as s:
        response = await s.answer(review("UPDATE", old=pod("my-pod", RED), obj=owned))
    assert response["allowed"] is False
    assert "forbids DELETE of pods" in response["status"]["message"]


GC = {"username": "system:serviceaccount:kube-system:generic-garbage-collector"}
NS_CONTROLLER = {"username": "system:serviceaccount:kube-system:namespace-controller"}


def owned_by(api_version: str, kind: str) -> dict[str, Any]:
    ref = {"apiVersion": api_version, "kind": kind, "name": "owner", "uid": "u-owner"}
    return pod("my-pod", RED, ownerReferences=[ref])


async def test_the_namespace_controller_finishes_a_judged_namespace_deletion(
    tmp_path: Path,
) -> None:
    finalizing = pod("my-pod", RED, finalizers=["example.com/x"])
    async with served(tmp_path) as s:
        delete = await s.answer(review("DELETE", old=pod("my-pod", RED), user=NS_CONTROLLER))
        unfinalize = await s.answer(
            review("UPDATE", old=finalizing, obj=pod("my-pod", RED), user=NS_CONTROLLER)
        )
        relabel = await s.answer(
            review("UPDATE", old=pod("my-pod", RED), obj=pod("my-pod", {}), user=NS_CONTROLLER)
        )
    assert delete["allowed"] is True
    assert unfinalize["allowed"] is True
    # Anything beyond finishing a deletion is judged as for anybody.
    assert_denied(relabel, "UPDATE")


async def test_the_garbage_collector_finishes_deletions_judged_on_their_dependents(
    tmp_path: Path,
) -> None:
    async with served(tmp_path) as s:
        # The owner's DELETE searched pods: judged then, carried out now.
        by_replicaset = await s.answer(
            review("DELETE", old=owned_by("apps/v1", "ReplicaSet"), user=GC)
        )
        # Not searched, or the owner's DELETE may never have reached the webhook: judged.
        cluster_owner = await s.answer(
            review("DELETE", old=owned_by("rbac.authorization.k8s.io/v1", "ClusterRole"),
                   user=GC)
        )  # fmt: skip
        custom_owner = await s.answer(
            review("DELETE", old=owned_by("example.com/v1", "Widget"), user=GC)
        )
        ownerless = await s.answer(review("DELETE", old=pod("my-pod", RED), user=GC))
        finalizer = await s.answer(
            review("UPDATE", old=pod("my-pod", RED, finalizers=["foregroundDeletion"]),
                   obj=pod("my-pod", RED), user=GC)
        )  # fmt: skip
        unsearched_kind = await s.answer(
            review(
                "DELETE",
                resource=("apps", "v1", "controllerrevisions"),
                kind="ControllerRevision",
                name="my-pod",
                old={**owned_by("apps/v1", "StatefulSet"), "kind": "ControllerRevision"},
                user=GC,
            )
        )
    assert by_replicaset["allowed"] is True
    assert_denied(cluster_owner, "DELETE")
    assert_denied(custom_owner, "DELETE")
    assert_denied(ownerless, "DELETE")
    assert finalizer["allowed"] is True
    assert unsearched_kind["allowed"] is False


async def test_a_same_named_account_elsewhere_is_not_the_garbage_collector(
    tmp_path: Path,
) -> None:
    user = {"username": "system:serviceaccount:shop:generic-garbage-collector"}
    async with served(tmp_path) as s:
        response = await s.answer(review("DELETE", old=pod("my-pod", RED), user=user))
    assert_denied(response, "DELETE")


# ------------------------------------------------------------------ fail closed


async def test_not_ready_refuses_every_covered_review(tmp_path: Path) -> None:
    async with served(tmp_path, ready=False) as s:
        response = await s.answer(review("CREATE", obj=pod("new-pod")))
        assert s.server.reasons_not_ready() == ["the Locks have not synced"]
    assert response["allowed"] is False
    assert response["status"]["code"] == 503
    assert "Locks are not loaded yet" in response["status"]["message"]


async def test_a_failing_read_refuses(tmp_path: Path) -> None:
    api = FakeUpstream()
    api.fail = UpstreamStatusError("GET", 500, "boom")
    async with served(tmp_path, api=api) as s:
        response = await s.answer(review("CONNECT", sub="exec", kind="PodExecOptions", obj={}))
    assert response["allowed"] is False
    assert response["status"]["code"] == 503
    assert "boom" in response["status"]["message"]


async def test_an_unexpected_error_refuses_and_the_server_keeps_serving(tmp_path: Path) -> None:
    broken_api = FakeUpstream()
    broken_api.fail = RuntimeError("surprise")
    async with served(tmp_path, api=broken_api) as s:
        broken = await s.answer(review("CONNECT", sub="exec", kind="PodExecOptions", obj={}))
        broken_api.fail = None
        after = await s.answer(review("DELETE", old=pod("my-pod", RED)))
    assert broken["allowed"] is False
    assert broken["status"]["code"] == 500
    assert "surprise" in broken["status"]["message"]
    assert_denied(after, "DELETE")


async def test_labels_that_are_not_strings_are_refused(tmp_path: Path) -> None:
    bad = pod("my-pod")
    bad["metadata"]["labels"] = {"aura": 7}
    async with served(tmp_path) as s:
        response = await s.answer(review("DELETE", old=bad))
    assert response["allowed"] is False
    assert response["status"]["code"] == 400


async def test_metrics_and_audit_record_verdicts(tmp_path: Path) -> None:
    audit = tmp_path / "audit.log"
    async with served(tmp_path, audit_log=str(audit), health_listen="127.0.0.1:0") as s:
        await s.answer(review("DELETE", old=pod("my-pod", RED)))
        await s.answer(review("DELETE", old=pod("my-pod", RED), user=JONNY))
        async with s.session.get(s.server.health_url + "/metrics") as resp:
            metrics = await resp.text()
        async with s.session.get(s.server.health_url + "/readyz") as resp:
            ready = resp.status
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [(line["verdict"], line["user"]) for line in lines] == [
        ("denied", ADMIN["username"]),
        ("allowed", JONNY["username"]),
    ]
    assert lines[0]["locks"] == ["shop/lockred"]
    assert 'klockproxy_lock_denials_total{lock="shop/lockred"} 1.0' in metrics
    assert ready == 200


# ------------------------------------------------------------------ deletions being completed

TERMINATING = "2026-12-02T07:00:00Z"


async def test_a_pod_being_deleted_can_be_finished(tmp_path: Path) -> None:
    """jonny-op deleted a locked pod: the kubelet reports its containers stopping and then
    removes it (refusing either would leave it Terminating forever)."""
    node = {"username": "system:node:worker-1", "groups": ["system:nodes"]}
    terminating = pod("my-pod", RED, deletionTimestamp=TERMINATING)
    stopped = {**terminating, "status": {"phase": "Succeeded"}}
    async with served(tmp_path) as s:
        status = await s.answer(
            review("UPDATE", sub="status", old=terminating, obj=stopped, user=node)
        )
        final = await s.answer(review("DELETE", old=terminating, user=node))
        # Not being deleted: the same status write is an UPDATE of the locked pod.
        live = await s.answer(
            review("UPDATE", sub="status", old=pod("my-pod", RED),
                   obj={**pod("my-pod", RED), "status": {"phase": "Running"}}, user=node)
        )  # fmt: skip
    assert status["allowed"] is True
    assert final["allowed"] is True
    assert_denied(live, "UPDATE", 'pods "my-pod" through status')


async def test_finalizers_of_an_object_being_deleted_can_be_removed(tmp_path: Path) -> None:
    held = pod("my-pod", RED, deletionTimestamp=TERMINATING, finalizers=["example.com/x"])
    released = pod("my-pod", RED, deletionTimestamp=TERMINATING)
    changed = {**released, "spec": {"nodeName": "elsewhere"}}
    relabelled = pod("my-pod", {}, deletionTimestamp=TERMINATING)
    async with served(tmp_path) as s:
        release = await s.answer(review("UPDATE", old=held, obj=released))
        more = await s.answer(review("UPDATE", old=held, obj=changed))
        relabel = await s.answer(review("UPDATE", old=held, obj=relabelled))
        alive = await s.answer(
            review("UPDATE", old=pod("my-pod", RED, finalizers=["example.com/x"]),
                   obj=pod("my-pod", RED))
        )  # fmt: skip
    assert release["allowed"] is True
    assert_denied(more, "UPDATE")
    assert_denied(relabel, "UPDATE")
    assert_denied(alive, "UPDATE")


async def test_deleting_again_still_judges_the_dependents(tmp_path: Path) -> None:
    api = FakeUpstream()
    owner = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {"name": "rs", "uid": "u1", "deletionTimestamp": TERMINATING},
    }
    child = pod(
        "my-pod",
        RED,
        ownerReferences=[
            {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "u1"}
        ],
    )
    api.lists["/api/v1/namespaces/shop/pods"] = [child]
    body = review(
        "DELETE",
        resource=("apps", "v1", "replicasets"),
        kind="ReplicaSet",
        name="rs",
        old=owner,
        options={"propagationPolicy": "Background"},
    )
    async with served(tmp_path, api=api) as s:
        response = await s.answer(body)
    assert response["allowed"] is False
    assert "the garbage collector deletes the dependents" in response["status"]["message"]


# ------------------------------------------------------------------ no ownership index

DELETE_LOCK = {
    **LOCKRED,
    "spec": {"operations": ["DELETE"], "matcher": {"aura": "red"}},
}
OWNED = {
    "ownerReferences": [
        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "uid-rs",
         "controller": True, "blockOwnerDeletion": True}
    ]
}  # fmt: skip


async def test_without_an_ownership_index_controllers_keep_writing_owned_objects(
    tmp_path: Path,
) -> None:
    """As shipped (no index: the least-privilege RBAC), a DELETE Lock must not stop the
    ReplicaSet controller creating its pods nor the kubelet reporting their status: the
    owner is unknown to the webhook, not gone."""
    kubelet = {"username": "system:node:n1", "groups": ["system:nodes"]}
    rs_controller = {"username": "system:serviceaccount:kube-system:replicaset-controller"}
    stored = pod("my-pod", RED, **OWNED)
    async with served(tmp_path, (DELETE_LOCK,)) as s:
        created = await s.answer(review("CREATE", obj=stored, user=rs_controller))
        status = {**stored, "status": {"phase": "Running"}}
        reported = await s.answer(
            review("UPDATE", sub="status", obj=status, old=stored, user=kubelet)
        )
        # Handing the pod to another owner still puts it at stake.
        other = {"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "uid-x"}
        handed = pod("my-pod", RED, ownerReferences=[*OWNED["ownerReferences"], other])
        refused = await s.answer(review("UPDATE", obj=handed, old=stored, user=ADMIN))
    assert created["allowed"] is True, created
    assert reported["allowed"] is True, reported
    assert refused["allowed"] is False
    assert "garbage collector" in refused["status"]["message"]
