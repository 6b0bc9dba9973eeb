"""The judge on its own: RequestInfo, auth headers and body in, a Verdict out (no mitmproxy)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from klockproxy.cluster.identity import IdentityResolver
from klockproxy.cluster.upstream import UpstreamStatusError
from klockproxy.core import guards
from klockproxy.core.consequences import judged_on_metadata
from klockproxy.core.engine import Engine
from klockproxy.core.errors import Refusal, UpstreamError
from klockproxy.core.guards import ABSENT_UID
from klockproxy.core.locks import load_locks_from_text
from klockproxy.core.ownership import Graph, Node, metadata_object, node_of
from klockproxy.core.patches import labels_after_patch
from klockproxy.core.requests import classify
from klockproxy.core.status import failure
from klockproxy.core.types import ResourceRef, UserInfo
from klockproxy.judge import (
    Caller,
    Judge,
    Subject,
    has_delete_locks,
    is_crd_delete,
    needs_judgement,
)
from tests.fakes import FakeUpstream, pod

LOCK = """
apiVersion: klock.rnemet.dev/v1
kind: Lock
metadata: {name: lockred, namespace: default}
spec:
  operations: [UPDATE, DELETE]
  matcher: {aura: red}
"""
HEADERS = {"Authorization": ["Bearer caller-token"]}


def fake() -> FakeUpstream:
    lookups = FakeUpstream()
    lookups.objects = {
        "/api/v1/namespaces/default/pods/red": pod("red", {"aura": "red"}),
        "/api/v1/namespaces/default/pods/plain": pod("plain", {}),
    }
    return lookups


def judge() -> Judge:
    lookups = fake()
    engine = Engine(load_locks_from_text(LOCK, source="test"))
    return Judge(lookups, IdentityResolver(lookups), engine)


async def test_a_denied_write_is_a_403_status() -> None:
    info = classify("DELETE", "/api/v1/namespaces/default/pods/red")
    verdict = await judge().judge(info, HEADERS, b"", "")
    assert not verdict.allowed
    assert verdict.status is not None
    assert verdict.status["code"] == 403
    assert verdict.status["message"].startswith('pods "red" is forbidden: denied')


async def test_an_allowed_write_is_forwarded_with_the_precondition() -> None:
    info = classify("DELETE", "/api/v1/namespaces/default/pods/plain")
    verdict = await judge().judge(info, HEADERS, b"", "")
    assert verdict.allowed
    assert verdict.content_type == "application/json"
    assert json.loads(verdict.body or b"")["preconditions"] == {
        "resourceVersion": "42",
        "uid": "uid-plain",
    }


async def test_the_body_is_read_only_when_needed() -> None:
    def unreadable() -> bytes:
        raise AssertionError("the body was read")

    info = classify("DELETE", "/api/v1/namespaces/default/pods")
    verdict = await judge().judge(info, HEADERS, unreadable, "")
    assert verdict.allowed
    assert verdict.body is None


def test_triage_helpers() -> None:
    assert is_crd_delete(
        classify("DELETE", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/x.example.com")
    )
    assert not is_crd_delete(classify("DELETE", "/api/v1/namespaces/default/pods/p"))
    assert has_delete_locks(Engine(load_locks_from_text(LOCK, source="test")))
    assert not has_delete_locks(Engine([]))


def _locks(namespace: str, *operations: str) -> Engine:
    ops = ", ".join(operations)
    return Engine(
        load_locks_from_text(
            "apiVersion: klock.rnemet.dev/v1\nkind: Lock\n"
            f"metadata: {{name: l, namespace: {namespace}}}\n"
            f"spec: {{operations: [{ops}], matcher: {{aura: red}}}}\n",
            source="test",
        )
    )


POD_PATH = "/api/v1/namespaces/shop/pods/p"


def test_needs_judgement_only_where_a_lock_could_apply() -> None:
    update_lock = _locks("shop", "UPDATE")
    assert needs_judgement(classify("PATCH", POD_PATH), update_lock, "application/merge-patch+json")
    # Another namespace, or an operation no lock lists: forwarded untouched.
    assert not needs_judgement(
        classify("PATCH", "/api/v1/namespaces/other/pods/p"), update_lock, ""
    )
    assert not needs_judgement(classify("DELETE", POD_PATH), update_lock, "")
    assert not needs_judgement(classify("GET", POD_PATH), update_lock, "")


def test_needs_judgement_for_what_a_write_can_also_do() -> None:
    create_lock = _locks("shop", "CREATE")
    # Server-side apply and PUT can create the object: judged under a CREATE lock.
    assert needs_judgement(classify("PATCH", POD_PATH), create_lock, "application/apply-patch+yaml")
    assert needs_judgement(classify("PUT", POD_PATH), create_lock, "application/json")
    assert not needs_judgement(
        classify("PATCH", POD_PATH), create_lock, "application/merge-patch+json"
    )
    # Any update may add an owner reference (the garbage collector deletes later).
    delete_lock = _locks("shop", "DELETE")
    assert needs_judgement(classify("PATCH", POD_PATH), delete_lock, "application/json-patch+json")
    # So may a write through the status subresource (item 8 of issue 13: the status
    # strategies reset spec and labels, not metadata.ownerReferences).
    assert needs_judgement(classify("PATCH", POD_PATH + "/status"), delete_lock, "")
    # Deleting a CRD deletes custom resources in every namespace.
    crd = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/things.example.com"
    assert needs_judgement(classify("DELETE", crd), delete_lock, "")


async def test_decide_gives_the_proxy_s_verdict_on_the_objects_alone() -> None:
    """The webhook's entry: the same objects give the same message, without any lookup."""
    info = classify("PATCH", "/api/v1/namespaces/default/pods/red")
    old = pod("red", {"aura": "red"})
    new = pod("red", {"aura": "blue"})
    decided = await judge().decide(Subject(info, old, new), Caller.known(UserInfo("someone")))
    judged = await judge().judge(
        info, HEADERS, b'{"metadata":{"labels":{"aura":"blue"}}}', "application/merge-patch+json"
    )
    assert decided.status is not None
    assert judged.status is not None
    assert decided.status["message"] == judged.status["message"]
    assert "Lock default/lockred forbids UPDATE" in decided.status["message"]


async def test_decide_uses_a_known_caller_for_exemptions() -> None:
    exempting = LOCK.replace(
        "matcher: {aura: red}", "matcher: {aura: red}\n  exclusive: {name: alice}"
    )
    lookups = fake()

    async def no_review(headers: Mapping[str, str | Sequence[str]]) -> UserInfo:
        raise AssertionError("a known caller needs no SelfSubjectReview")

    lookups.self_subject_review = no_review  # type: ignore[method-assign]
    decider = Judge(lookups, None, Engine(load_locks_from_text(exempting, source="test")))
    info = classify("DELETE", "/api/v1/namespaces/default/pods/red")
    old = pod("red", {"aura": "red"})
    alice = await decider.decide(Subject(info, old, None), Caller.known(UserInfo("alice")))
    bob = await decider.decide(Subject(info, old, None), Caller.known(UserInfo("bob")))
    assert alice.allowed
    assert not bob.allowed


async def test_decide_judges_a_cascade_unless_the_options_orphan() -> None:
    lookups = fake()
    owner = pod("plain", {})
    dependent = pod("child", {"aura": "red"})
    dependent["metadata"]["ownerReferences"] = [{"uid": "uid-plain", "kind": "Pod", "name": "p"}]
    lookups.lists["/api/v1/namespaces/default/pods"] = [dependent]
    decider = Judge(
        lookups, IdentityResolver(lookups), Engine(load_locks_from_text(LOCK, source="t"))
    )
    info = classify("DELETE", "/api/v1/namespaces/default/pods/plain")
    caller = Caller.known(UserInfo("someone"), HEADERS)
    cascade = await decider.decide(Subject(info, owner, None), caller)
    assert cascade.status is not None
    assert "garbage collector" in cascade.status["message"]
    orphan = {"propagationPolicy": "Orphan"}
    assert (await decider.decide(Subject(info, owner, None, orphan), caller)).allowed


# ----------------------------------------------------------------------------------------
# Patches are judged on the object the API server computes (a dry run of the same request)

SMP = "application/strategic-merge-patch+json"
APPLY = "application/apply-patch+yaml"
PLAIN = "/api/v1/namespaces/default/pods/plain"


def judge_with(lookups: FakeUpstream, locks: str = LOCK) -> Judge:
    return Judge(
        lookups, IdentityResolver(lookups), Engine(load_locks_from_text(locks, source="t"))
    )


def hpa(labels: Mapping[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {
            "name": "web",
            "namespace": "default",
            "uid": "uid-web",
            "resourceVersion": "7",
            "labels": dict(labels),
        },
        "spec": {"minReplicas": 1, "maxReplicas": 3, "metrics": []},
    }


async def test_a_patch_is_judged_on_the_api_server_s_own_result() -> None:
    """A strategic-merge directive the proxy's engine reads differently from the API server
    (``$patch: delete`` in the labels) cannot move an object into a Lock: the server's dry
    run says what it would store, and that is judged."""
    lookups = fake()
    lookups.dry_run_answers[PLAIN] = pod("plain", {"aura": "red"})
    decider = Judge(
        lookups, IdentityResolver(lookups), Engine(load_locks_from_text(LOCK, source="t"))
    )
    body = b'{"metadata":{"labels":{"$patch":"delete","aura":"red"}}}'
    verdict = await decider.judge(classify("PATCH", PLAIN), HEADERS, body, SMP)
    assert verdict.status is not None
    assert verdict.status["code"] == 403
    assert "Lock default/lockred forbids UPDATE" in verdict.status["message"]


async def test_the_dry_run_is_the_write_itself_and_the_real_write_is_conditional() -> None:
    lookups = fake()
    decider = Judge(
        lookups, IdentityResolver(lookups), Engine(load_locks_from_text(LOCK, source="t"))
    )
    info = classify("PATCH", PLAIN + "?fieldManager=kubectl-patch&dryRun=All")
    patch = b'{"metadata":{"labels":{"a":"b"}}}'
    verdict = await decider.judge(info, HEADERS, patch, SMP)
    assert verdict.allowed
    # One dry run, of the caller's own patch, sent beside the read: its result carries the
    # version read, so it was computed from the object the guard pins.
    (call,) = [c for c in lookups.calls if c[0] == "dry_run"]
    _, path, sent = call
    assert path == PLAIN
    assert ("fieldManager", "kubectl-patch") in sent["query"]
    assert sent["body"] == patch
    # The real write is conditional on the version the proxy read.
    assert json.loads(verdict.body or b"")["metadata"]["resourceVersion"] == "42"


class _Sequenced(FakeUpstream):
    """Answers dry runs from a list, in order (a write landing between two of them)."""

    def __init__(self, answers: list[dict[str, Any] | Exception]) -> None:
        super().__init__()
        self.answers = answers

    async def dry_run(
        self, method: str, path: str, query: Any, headers: Any, body: bytes, content_type: str
    ) -> dict[str, Any]:
        self.calls.append(("dry_run", path, {"query": list(query), "body": body}))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def _at(obj: dict[str, Any], rv: str) -> dict[str, Any]:
    return {**obj, "metadata": {**obj["metadata"], "resourceVersion": rv}}


async def test_a_dry_run_of_another_version_is_not_judged_the_conditional_one_is() -> None:
    """Someone relabelled the object between the read and the early dry run: that result
    (version 43, unlocked) says nothing about the version read (42); the conditional dry run
    is sent, and its answer decides."""
    lookups = _Sequenced(
        [
            _at(pod("plain", {"team": "a"}), "43"),
            _at(pod("plain", {"aura": "red"}), "42"),
        ]
    )
    lookups.objects = {PLAIN: pod("plain", {})}
    decider = judge_with(lookups)
    verdict = await decider.judge(classify("PATCH", PLAIN), HEADERS, b'{"x":{"a":"b"}}', SMP)
    assert verdict.status is not None
    assert verdict.status["code"] == 403
    early, conditional = [c[2]["body"] for c in lookups.calls if c[0] == "dry_run"]
    assert early == b'{"x":{"a":"b"}}'
    assert json.loads(conditional)["metadata"]["resourceVersion"] == "42"


async def test_a_refused_early_dry_run_is_asked_again_conditionally() -> None:
    """An early refusal may be about another version: the conditional dry run answers."""
    lookups = _Sequenced(
        [
            UpstreamStatusError("PATCH", 409, "the object has been modified"),
            _at(pod("plain", {"team": "a"}), "42"),
        ]
    )
    lookups.objects = {PLAIN: pod("plain", {})}
    verdict = await judge_with(lookups).judge(
        classify("PATCH", PLAIN), HEADERS, b'{"x":{"a":"b"}}', SMP
    )
    assert verdict.allowed, verdict.status
    assert [c[0] for c in lookups.calls].count("dry_run") == 2


async def test_the_read_and_the_dry_run_are_in_flight_together() -> None:
    """The read only answers once the dry run has been sent: sequential would never end."""
    sent = asyncio.Event()

    class Together(FakeUpstream):
        async def get_object(self, path: str, headers: Any) -> dict[str, Any] | None:
            await asyncio.wait_for(sent.wait(), 5)
            return await super().get_object(path, headers)

        async def dry_run(self, *args: Any) -> dict[str, Any]:
            sent.set()
            return await super().dry_run(*args)

    lookups = Together()
    lookups.objects = {PLAIN: pod("plain", {})}
    verdict = await judge_with(lookups).judge(
        classify("PATCH", PLAIN), HEADERS, b'{"x":{"a":"b"}}', SMP
    )
    assert verdict.allowed, verdict.status


async def test_a_failed_read_abandons_the_dry_run_and_refuses() -> None:
    cancelled = asyncio.Event()

    class SlowDryRun(FakeUpstream):
        async def get_object(self, path: str, headers: Any) -> dict[str, Any] | None:
            await asyncio.sleep(0)
            raise UpstreamError("connection reset")

        async def dry_run(self, *args: Any) -> dict[str, Any]:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                cancelled.set()
                raise
            raise AssertionError("not cancelled")

    verdict = await judge_with(SlowDryRun()).judge(
        classify("PATCH", PLAIN), HEADERS, b'{"x":{"a":"b"}}', SMP
    )
    assert not verdict.allowed
    assert verdict.status is not None
    assert "connection reset" in verdict.status["message"]
    await asyncio.wait_for(cancelled.wait(), 5)


async def test_a_strategic_merge_patch_of_a_kind_without_a_local_schema_is_judged() -> None:
    """No more 415 for HorizontalPodAutoscaler, Ingress, NetworkPolicy... under a Lock."""
    lookups = fake()
    path = "/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers/web"
    lookups.objects[path] = hpa({})
    lookups.dry_run_answers[path] = {**hpa({}), "spec": {"minReplicas": 2, "maxReplicas": 3}}
    decider = Judge(
        lookups, IdentityResolver(lookups), Engine(load_locks_from_text(LOCK, source="t"))
    )
    body = b'{"spec":{"minReplicas":2}}'
    verdict = await decider.judge(classify("PATCH", path), HEADERS, body, SMP)
    assert verdict.allowed, verdict.status
    assert json.loads(verdict.body or b"")["metadata"]["resourceVersion"] == "7"
    # The server's result is judged: relabelling it into the Lock is refused.
    lookups.dry_run_answers[path] = hpa({"aura": "red"})
    relabel = b'{"metadata":{"labels":{"aura":"red"}}}'
    denied = await decider.judge(classify("PATCH", path), HEADERS, relabel, SMP)
    assert denied.status is not None
    assert denied.status["code"] == 403


async def test_server_side_apply_keeps_labels_another_manager_owns() -> None:
    """Leaving out a label another field manager owns keeps it (the server says so): no
    false denial from judging the configuration's labels alone."""
    lookups = fake()
    path = "/api/v1/namespaces/default/pods/web"
    lookups.objects[path] = pod("web", {"aura": "red", "override": "yes"})
    lookups.dry_run_answers[path] = pod("web", {"aura": "red", "override": "yes", "team": "a"})
    lock = LOCK.replace("operations: [UPDATE, DELETE]", "operations: [UPDATE]").replace(
        "matcher: {aura: red}", "matcher: {aura: red, override: ^yes}"
    )
    decider = Judge(
        lookups, IdentityResolver(lookups), Engine(load_locks_from_text(lock, source="t"))
    )
    config = b"apiVersion: v1\nkind: Pod\nmetadata: {name: web, labels: {aura: red, team: a}}\n"
    info = classify("PATCH", path + "?fieldManager=ops")
    verdict = await decider.judge(info, HEADERS, config, APPLY)
    assert verdict.allowed, verdict.status


async def test_a_refused_dry_run_answers_the_api_server_s_own_status() -> None:
    lookups = fake()
    status = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'Pod "plain" is invalid: spec.containers[0].image: Required value',
        "reason": "Invalid",
        "details": {"name": "plain", "kind": "Pod", "causes": [{"field": "spec"}]},
        "code": 422,
    }
    lookups.dry_run_answers[PLAIN] = UpstreamStatusError.from_answer(
        "PATCH", 422, json.dumps(status).encode()
    )
    decider = Judge(
        lookups, IdentityResolver(lookups), Engine(load_locks_from_text(LOCK, source="t"))
    )
    body = b'{"spec":{"containers":[{"name":"c","image":null}]}}'
    verdict = await decider.judge(classify("PATCH", PLAIN), HEADERS, body, SMP)
    assert verdict.status == status


async def test_without_a_dry_run_the_local_engine_judges_and_fails_closed() -> None:
    """An admission webhook that does not support dry run makes the server unable to answer:
    the proxy's own engine judges, and refuses (415) what it cannot compute."""
    lookups = fake()
    unsupported = UpstreamStatusError(
        "PATCH", 400, 'admission webhook "legacy.example.com" does not support dry run'
    )
    hpa_path = "/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers/web"
    lookups.objects[hpa_path] = hpa({})
    for path in (PLAIN, hpa_path):
        lookups.dry_run_answers[path] = unsupported
    decider = Judge(
        lookups, IdentityResolver(lookups), Engine(load_locks_from_text(LOCK, source="t"))
    )
    relabel = b'{"metadata":{"labels":{"aura":"red"}}}'
    denied = await decider.judge(classify("PATCH", PLAIN), HEADERS, relabel, SMP)
    assert denied.status is not None
    assert denied.status["code"] == 403
    allowed = await decider.judge(classify("PATCH", PLAIN), HEADERS, b'{"x":{"a":"b"}}', SMP)
    assert allowed.allowed
    unknown = await decider.judge(classify("PATCH", hpa_path), HEADERS, b"{}", SMP)
    assert unknown.status is not None
    assert unknown.status["code"] == 415


async def test_server_side_apply_creating_an_object_is_guarded_against_one_appearing() -> None:
    lookups = fake()
    decider = Judge(
        lookups, IdentityResolver(lookups), Engine(load_locks_from_text(LOCK, source="t"))
    )
    config = b"apiVersion: v1\nkind: Pod\nmetadata: {name: new, labels: {a: b}}\n"
    info = classify("PATCH", "/api/v1/namespaces/default/pods/new?fieldManager=ops")
    verdict = await decider.judge(info, HEADERS, config, APPLY)
    assert verdict.allowed
    assert json.loads(verdict.body or b"")["metadata"]["uid"] == ABSENT_UID


# ----------------------------------------------------------------------------------------
# One error boundary: every failure is a Status


YAML = "application/yaml"
CREATE_LOCK = LOCK.replace("operations: [UPDATE, DELETE]", "operations: [CREATE]")


async def test_a_label_that_is_not_a_string_is_a_400_naming_the_field() -> None:
    info = classify("POST", "/api/v1/namespaces/default/pods")
    decider = judge_with(fake(), CREATE_LOCK)
    for body, ctype, kind in (
        (b"apiVersion: v1\nkind: Pod\nmetadata: {name: x, labels: {aura: yes}}\n", YAML, "boolean"),
        (
            b'{"apiVersion":"v1","kind":"Pod","metadata":{"name":"x","labels":{"aura":1}}}',
            "",
            "number",
        ),
    ):
        verdict = await decider.judge(info, HEADERS, body, ctype)
        assert verdict.status is not None
        assert verdict.status["code"] == 400
        assert "metadata.labels['aura'] must be a string" in verdict.status["message"]
        assert kind in verdict.status["message"]
        # The log never quotes the body.
        assert verdict.log_message is not None
        assert "aura" not in verdict.log_message


async def test_upstream_trouble_is_a_503_and_a_refused_lookup_passes_on() -> None:
    lookups = fake()
    decider = judge_with(lookups)
    info = classify("DELETE", "/api/v1/namespaces/default/pods/red")
    lookups.fail = UpstreamError("GET x: the API server cannot be reached: refused")
    down = await decider.judge(info, HEADERS, b"", "")
    assert down.status is not None
    assert down.status["code"] == 503
    assert "cannot be reached" in down.status["message"]
    lookups.fail = UpstreamStatusError("GET /api/v1/namespaces/default/pods/red", 403, "no")
    refused = await decider.judge(info, HEADERS, b"", "")
    assert refused.status is not None
    assert refused.status["code"] == 403
    assert "refused GET /api/v1/namespaces/default/pods/red: no" in refused.status["message"]


async def test_an_unreadable_object_from_the_api_server_is_upstream_trouble() -> None:
    lookups = fake()
    lookups.objects["/api/v1/namespaces/default/pods/plain"]["metadata"]["labels"] = {"a": 1}
    info = classify("DELETE", "/api/v1/namespaces/default/pods/plain")
    verdict = await judge_with(lookups).judge(info, HEADERS, b"", "")
    assert verdict.status is not None
    assert verdict.status["code"] == 503


async def test_a_judged_body_is_decoded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The guard reuses the document the judgement decoded (update, DeleteOptions)."""

    def again(*args: object, **kwargs: object) -> object:
        raise AssertionError("the body was parsed a second time")

    monkeypatch.setattr(guards, "load_document", again)
    decider = judge_with(fake())
    update = json.dumps(pod("plain", {"a": "b"})).encode()
    put = await decider.judge(classify("PUT", PLAIN), HEADERS, update, "application/json")
    assert put.allowed, put.status
    assert json.loads(put.body or b"")["metadata"]["resourceVersion"] == "42"
    options = b'{"kind":"DeleteOptions","apiVersion":"v1","propagationPolicy":"Orphan"}'
    delete = await decider.judge(classify("DELETE", PLAIN), HEADERS, options, "application/json")
    assert delete.allowed, delete.status
    sent = json.loads(delete.body or b"")
    assert sent["preconditions"] == {"resourceVersion": "42", "uid": "uid-plain"}
    assert sent["propagationPolicy"] == "Orphan"


# ---------------------------------------------------------------------------------------
# What the cluster does next (issue 13), decided on the ownership index


class StaticOwnership:
    """An ownership index already synced on a fixed graph (or never synced)."""

    def __init__(self, *objects: dict[str, Any], synced: bool = True) -> None:
        self.graph = Graph()
        for obj in objects:
            group, _, version = obj["apiVersion"].rpartition("/")
            plural = obj["kind"].lower() + "s"
            found = node_of(obj, ResourceRef(group, version, plural), obj["kind"])
            assert found is not None
            self.graph.upsert(found)
        self.synced = synced
        self.followed: list[Engine] = []

    def follow(self, engine: Engine) -> None:
        self.followed.append(engine)

    async def graph_when_synced(self) -> Graph:
        if not self.synced:
            raise Refusal(failure(503, "klockproxy: the ownership index is not synced yet"))
        return self.graph

    def stored(self, group: str, resource: str, namespace: str, name: str) -> Node | None:
        return self.graph.named(group, resource, namespace, name)


DELETE_LOCK = _locks("shop", "DELETE")


def obj(
    kind: str, name: str, *owners: dict[str, Any], api: str = "v1", **labels: str
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "shop", "uid": f"uid-{name}",
                            "labels": labels, "resourceVersion": "1"}  # fmt: skip
    if owners:
        meta["ownerReferences"] = [
            {"apiVersion": o["apiVersion"], "kind": o["kind"], "name": o["metadata"]["name"],
             "uid": o["metadata"]["uid"]}
            for o in owners
        ]  # fmt: skip
    return {"apiVersion": api, "kind": kind, "metadata": meta}


async def decide(
    index: StaticOwnership, method: str, path: str, old: Any, new: Any = None, **kw: Any
) -> Any:
    engine = kw.pop("engine", DELETE_LOCK)
    decider = Judge(fake(), None, engine, index)
    info = classify(method, path)
    caller = kw.pop("caller", Caller.known(UserInfo("someone")))
    return await decider.decide(Subject(info, old, new, kw.pop("options", None)), caller)


async def test_deletion_follows_any_kind_and_keeps_dependents_with_another_owner() -> None:
    top = obj("ConfigMap", "top")
    other = obj("ConfigMap", "other")
    sa = obj("ServiceAccount", "middle", top)
    locked = obj("Pod", "locked", sa, aura="red")
    shared = obj("ConfigMap", "shared", other, top, aura="red")
    index = StaticOwnership(top, other, sa, locked, shared)
    # Item 7: ConfigMap -> ServiceAccount -> locked pod.
    verdict = await decide(index, "DELETE", "/api/v1/namespaces/shop/configmaps/top", top)
    assert verdict.status is not None
    assert 'forbids DELETE of pods "locked"' in verdict.status["message"]
    assert "the garbage collector deletes the dependents" in verdict.status["message"]
    assert index.followed == [DELETE_LOCK]
    # Item 11: "shared" keeps its other owner.
    index = StaticOwnership(top, other, shared)
    assert (await decide(index, "DELETE", "/api/v1/namespaces/shop/configmaps/top", top)).allowed
    # Orphaning keeps everything.
    index = StaticOwnership(top, sa, locked)
    orphan = {"propagationPolicy": "Orphan"}
    path = "/api/v1/namespaces/shop/configmaps/top"
    assert (await decide(index, "DELETE", path, top, options=orphan)).allowed


async def test_a_batch_v1_job_deleted_without_a_policy_orphans_its_pods() -> None:
    job = obj("Job", "j", api="batch/v1")
    pod_ = obj("Pod", "j-x", job, aura="red")
    index = StaticOwnership(job, pod_)
    path = "/apis/batch/v1/namespaces/shop/jobs/j"
    assert (await decide(index, "DELETE", path, job, options={})).allowed
    background = {"propagationPolicy": "Background"}
    assert not (await decide(index, "DELETE", path, job, options=background)).allowed


async def test_eviction_and_owner_writes_through_status_are_judged() -> None:
    driver = obj("Pod", "driver")
    executor = obj("Pod", "executor", driver, aura="red")
    index = StaticOwnership(driver, executor)
    eviction = "/api/v1/namespaces/shop/pods/driver/eviction"
    assert not (await decide(index, "POST", eviction, driver)).allowed
    # Item 8: a dangling owner written through pods/status.
    ghost = {"apiVersion": "v1", "kind": "ConfigMap", "name": "ghost", "uid": "nobody"}
    patched = json.loads(json.dumps(driver))
    patched["metadata"]["ownerReferences"] = [ghost]
    status = "/api/v1/namespaces/shop/pods/driver/status"
    verdict = await decide(index, "PATCH", status, driver, patched)
    assert verdict.status is not None
    assert 'forbids DELETE of pods "executor"' in verdict.status["message"]


CM_PATH = "/api/v1/namespaces/shop/configmaps/cfg"
MERGE = "application/merge-patch+json"


def configmap(rv: str = "5", **labels: str) -> dict[str, Any]:
    """A whole ConfigMap as the API server stores it (more than its metadata)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "cfg",
            "namespace": "shop",
            "uid": "uid-cfg",
            "resourceVersion": rv,
            "labels": dict(labels),
            "annotations": {"note": "x"},
            "finalizers": ["example.com/keep"],
        },
        "data": {"n": "0"},
    }


async def judge_patch(
    stored: dict[str, Any],
    index: StaticOwnership,
    body: bytes,
    path: str = CM_PATH,
    ctype: str = MERGE,
    *,
    fresh: bool = False,
) -> tuple[Any, FakeUpstream]:
    lookups = FakeUpstream()
    lookups.objects = {path: stored}
    decider = Judge(lookups, IdentityResolver(lookups), _locks("shop", "UPDATE", "DELETE"), index)
    verdict = await decider.judge(classify("PATCH", path), HEADERS, body, ctype, fresh=fresh)
    return verdict, lookups


JSON_PATCH = "application/json-patch+json"


async def test_a_patch_of_a_version_the_index_holds_is_judged_without_a_read() -> None:
    """A patch that may change the metadata in ways its format does not fix (a JSON patch
    here): the dry run answers the version the index holds, whose metadata is all the
    judgement reads of the object as it was, so the read is saved; the write is conditional
    on it."""
    stored = configmap(aura="blue")
    team = b'[{"op":"add","path":"/metadata/labels/team","value":"a"}]'
    verdict, lookups = await judge_patch(stored, StaticOwnership(stored), team, ctype=JSON_PATCH)
    assert verdict.allowed, verdict.status
    assert lookups.kinds() == ["dry_run"]
    assert not verdict.on_index  # the API server answered that version
    sent = json.loads(verdict.body or b"")
    assert sent[0] == {"op": "test", "path": "/metadata/resourceVersion", "value": "5"}
    # Locked as it was (labels from the index; the patch takes the label off): refused,
    # still without a read.
    red = configmap(aura="red")
    off = b'[{"op":"remove","path":"/metadata/labels/aura"}]'
    verdict, lookups = await judge_patch(red, StaticOwnership(red), off, ctype=JSON_PATCH)
    assert verdict.status is not None and verdict.status["code"] == 403
    assert "Lock shop/l forbids UPDATE" in verdict.status["message"]
    assert lookups.kinds() == ["dry_run"]
    # Moved into the Lock by the patch: the server's result decides.
    into = b'[{"op":"replace","path":"/metadata/labels/aura","value":"red"}]'
    verdict, lookups = await judge_patch(stored, StaticOwnership(stored), into, ctype=JSON_PATCH)
    assert verdict.status is not None and verdict.status["code"] == 403
    assert lookups.kinds() == ["dry_run"]


@pytest.mark.parametrize("ctype", [MERGE, "application/strategic-merge-patch+json"])
async def test_a_label_patch_of_an_object_the_index_holds_asks_nothing(ctype: str) -> None:
    """``kubectl label``'s patch (labels set and removed, nothing else of the metadata):
    its format fixes the labels it leaves, so the object as it was and as it will be are
    the index's version with the labels before and after; nothing is asked, and the write
    is conditional on that version (``on_index``)."""
    blue = configmap(aura="blue")
    team = b'{"metadata":{"labels":{"team":"a"}}}'
    verdict, lookups = await judge_patch(blue, StaticOwnership(blue), team, ctype=ctype)
    assert verdict.allowed, verdict.status
    assert lookups.kinds() == []
    assert verdict.on_index
    sent = json.loads(verdict.body or b"")
    assert sent == {"metadata": {"labels": {"team": "a"}, "resourceVersion": "5"}}
    # Moved into the Lock: refused.
    into = b'{"metadata":{"labels":{"aura":"red"},"annotations":{"why":"x"}}}'
    verdict, lookups = await judge_patch(blue, StaticOwnership(blue), into, ctype=ctype)
    assert verdict.status is not None and verdict.status["code"] == 403
    assert "Lock shop/l forbids UPDATE" in verdict.status["message"]
    assert lookups.kinds() == []
    # Out of it (the label removed, or every label): refused, the object being locked.
    red = configmap(aura="red")
    for off in (b'{"metadata":{"labels":{"aura":null}}}', b'{"metadata":{"labels":null}}'):
        verdict, lookups = await judge_patch(red, StaticOwnership(red), off, ctype=ctype)
        assert verdict.status is not None and verdict.status["code"] == 403, off
        assert lookups.kinds() == []
    # On a subresource (whose strategy may keep the old labels), with a version of the
    # client's, or a value that is no string: the API server's dry run decides.
    status = CM_PATH + "/status"
    for body, path in (
        (team, status),
        (b'{"metadata":{"labels":{"team":"a"},"resourceVersion":"5"}}', CM_PATH),
        (b'{"metadata":{"labels":{"team":1}}}', CM_PATH),
    ):
        _, lookups = await judge_patch(blue, StaticOwnership(blue), body, path, ctype)
        assert "dry_run" in lookups.kinds(), body


@pytest.mark.parametrize(
    ("body", "ctype"),
    [
        (b'{"data":{"n":"1"}}', MERGE),
        (b'{"data":{"n":"1"}}', "application/strategic-merge-patch+json"),
        (b'[{"op":"replace","path":"/data/n","value":"1"}]', "application/json-patch+json"),
        # kubectl annotate; kubectl apply of data (the last-applied annotation with it).
        (b'{"metadata":{"annotations":{"n":"1"}}}', MERGE),
        (b'{"data":{"n":"1"},"metadata":{"annotations":{"last":"{}"}}}',
         "application/strategic-merge-patch+json"),
        (b'[{"op":"add","path":"/metadata/annotations/n","value":"1"}]',
         "application/json-patch+json"),
    ],
)  # fmt: skip
async def test_a_patch_that_leaves_the_metadata_is_judged_on_the_index_alone(
    body: bytes, ctype: str
) -> None:
    """Nothing of the metadata but its annotations can change: the object as it was and as
    it will be is the version the index holds. No request at all; the write is conditional
    on that version (``on_index``: a 409 means the index lagged), and judging ``fresh``
    asks the API server."""

    async def judge(stored: dict[str, Any], fresh: bool = False) -> tuple[Any, FakeUpstream]:
        lookups = FakeUpstream()
        lookups.objects = {CM_PATH: stored}
        index = StaticOwnership(stored)
        decider = Judge(lookups, IdentityResolver(lookups), _locks("shop", "UPDATE"), index)
        info = classify("PATCH", CM_PATH)
        return await decider.judge(info, HEADERS, body, ctype, fresh=fresh), lookups

    verdict, lookups = await judge(configmap(aura="blue"))
    assert verdict.allowed and verdict.on_index
    assert lookups.kinds() == []
    guarded = json.loads(verdict.body or b"")
    if ctype.endswith("json-patch+json"):
        assert {"op": "test", "path": "/metadata/resourceVersion", "value": "5"} in guarded
        assert all(op in guarded for op in json.loads(body))
    else:
        assert guarded["metadata"]["resourceVersion"] == "5"
        sent = json.loads(body)
        assert guarded["metadata"].get("annotations") == sent.get("metadata", {}).get("annotations")
    # A locked object: refused on the index's labels, still without a request.
    verdict, lookups = await judge(configmap(aura="red"))
    assert verdict.status is not None and verdict.status["code"] == 403
    assert "Lock shop/l forbids UPDATE" in verdict.status["message"]
    assert lookups.kinds() == []
    # fresh: as if there were no shortcut.
    verdict, lookups = await judge(configmap(aura="blue"), fresh=True)
    assert verdict.allowed and not verdict.on_index
    assert lookups.kinds() == ["dry_run"]


@pytest.mark.parametrize(
    ("rv", "asks", "on_index"),
    [
        ("5", [], False),  # the caller's own precondition: the API server enforces it
        (None, [], True),  # none: conditional on the index's version
        ("4", ["get"], False),  # another version: read, as without an index
    ],
)
async def test_an_update_of_an_object_the_index_holds_is_judged_without_a_read(
    rv: str | None, asks: list[str], on_index: bool
) -> None:
    async def judge(stored: dict[str, Any], fresh: bool = False) -> tuple[Any, FakeUpstream]:
        lookups = FakeUpstream()
        lookups.objects = {CM_PATH: stored}
        decider = Judge(lookups, IdentityResolver(lookups), _locks("shop", "UPDATE"),
                        StaticOwnership(stored))  # fmt: skip
        body = configmap(aura="blue")
        body["metadata"].pop("resourceVersion")
        body["metadata"].pop("uid")
        if rv is not None:
            body["metadata"]["resourceVersion"] = rv
        body["data"] = {"n": "1"}
        info = classify("PUT", CM_PATH)
        verdict = await decider.judge(
            info, HEADERS, json.dumps(body).encode(), "application/json", fresh=fresh
        )
        return verdict, lookups

    verdict, lookups = await judge(configmap(aura="blue"))
    if rv == "4":
        # The object read holds version 5: the caller's 4 is a conflict, answered at once.
        assert verdict.status is not None and verdict.status["code"] == 409
    else:
        assert verdict.allowed and verdict.on_index is on_index
        sent = json.loads(verdict.body) if verdict.body is not None else {"metadata": {}}
        assert sent["metadata"].get("resourceVersion", rv) == "5"
    assert lookups.kinds() == asks
    # Locked as it was (the index's labels; the body takes the label off): refused.
    verdict, lookups = await judge(configmap(aura="red"))
    assert verdict.status is not None and verdict.status["code"] == 403
    assert "Lock shop/l forbids UPDATE" in verdict.status["message"]
    assert lookups.kinds() == asks
    # fresh: read, as without an index.
    _, lookups = await judge(configmap(aura="blue"), fresh=True)
    assert lookups.kinds() == ["get"]


async def test_a_stale_index_costs_a_read_never_a_wrong_judgement() -> None:
    """The index lags behind a relabelling (version 4, unlocked; the API server holds 5,
    locked): the dry run's version is not the index's, so the object is read as before. A
    patch that leaves the metadata, or sets labels, is allowed on version 4, conditional on
    it: the API server answers 409 and nothing is written; judged ``fresh`` it is refused."""
    stale = configmap("4")
    locked = configmap("5", aura="red")
    team = b'[{"op":"add","path":"/metadata/labels/team","value":"a"}]'
    verdict, lookups = await judge_patch(locked, StaticOwnership(stale), team, ctype=JSON_PATCH)
    assert verdict.status is not None and verdict.status["code"] == 403
    assert lookups.kinds() == ["dry_run", "get"]

    # Patches whose format fixes the metadata they leave (the data; the labels).
    for body in (b'{"data":{"n":"1"}}', b'{"metadata":{"labels":{"team":"a"}}}'):
        verdict, lookups = await judge_patch(locked, StaticOwnership(stale), body)
        assert verdict.allowed and verdict.on_index
        sent = verdict.body or b""
        assert json.loads(sent)["metadata"]["resourceVersion"] == "4"
        with pytest.raises(UpstreamStatusError) as conflict:
            await lookups.dry_run("PATCH", CM_PATH, [], HEADERS, sent, MERGE)
        assert conflict.value.code == 409
        again, _ = await judge_patch(locked, StaticOwnership(stale), body, fresh=True)
        assert again.status is not None and again.status["code"] == 403


@pytest.mark.parametrize(
    ("why", "path", "stored"),
    [
        ("a pod: the service account it runs as", "/api/v1/namespaces/shop/pods/p",
         pod("p", {}, ns="shop")),
        ("a workload: replicas, template", "/apis/apps/v1/namespaces/shop/deployments/cfg",
         {**configmap(), "apiVersion": "apps/v1", "kind": "Deployment"}),
        ("being deleted: finishing it compares the whole object", CM_PATH,
         {**configmap(), "metadata": {**configmap()["metadata"], "deletionTimestamp": "t"}}),
        ("owned: owner references are compared in full", CM_PATH,
         obj("ConfigMap", "cfg", obj("ConfigMap", "top"))),
    ],
)  # fmt: skip
async def test_what_the_index_cannot_stand_in_for_is_read(
    why: str, path: str, stored: dict[str, Any]
) -> None:
    index = StaticOwnership(stored)
    group, _, _ = stored["apiVersion"].rpartition("/")
    assert index.stored(group, path.split("/")[-2], "shop", path.split("/")[-1]) is not None
    _, lookups = await judge_patch(stored, index, b'{"data":{"n":"1"}}', path)
    assert "get" in lookups.kinds(), why


@given(
    labels=st.dictionaries(st.sampled_from(["aura", "team"]), st.sampled_from(["red", "blue"])),
    patch_labels=st.dictionaries(
        st.sampled_from(["aura", "team"]), st.none() | st.sampled_from(["red", "blue"])
    ),
    resource=st.sampled_from(
        [("", "v1", "configmaps", "ConfigMap"), ("", "v1", "services", "Service"),
         ("", "v1", "namespaces", "Namespace"), ("example.com", "v1", "widgets", "Widget"),
         ("rbac.authorization.k8s.io", "v1", "roles", "Role")]
    ),
    status=st.booleans(),
)  # fmt: skip
@settings(max_examples=60, deadline=None)
def test_a_metadata_stand_in_is_judged_as_the_whole_object(
    labels: dict[str, str],
    patch_labels: dict[str, str | None],
    resource: tuple[str, str, str, str],
    status: bool,
) -> None:
    """``judged_on_metadata``: for these kinds, the object as the index holds it (identity,
    version, labels) gets the verdict the whole object gets, whatever the write."""
    group, version, plural, kind = resource
    namespaced = plural != "namespaces"
    whole = configmap(**labels)
    whole.update(apiVersion=f"{group}/{version}" if group else version, kind=kind)
    whole["metadata"]["annotations"] = {"note": "before"}
    if not namespaced:
        whole["metadata"] = {k: v for k, v in whole["metadata"].items() if k != "namespace"}
        whole["metadata"]["name"] = "shop"
    new = json.loads(json.dumps(whole))
    for key, value in patch_labels.items():
        if value is None:
            new["metadata"]["labels"].pop(key, None)
        else:
            new["metadata"]["labels"][key] = value
    new["data"] = {"n": "1"}
    prefix = f"/apis/{group}/{version}" if group else f"/api/{version}"
    path = prefix + (f"/namespaces/shop/{plural}/cfg" if namespaced else f"/{plural}/shop")
    path += "/status" if status else ""
    node = node_of(whole, ResourceRef(group, version, plural), kind)
    assert node is not None
    stand_in = metadata_object(node)
    engine = _locks("shop", "UPDATE", "DELETE")
    for method in ("PATCH", "PUT"):
        info = classify(method, path)
        assert judged_on_metadata(info.ref)

        async def verdicts(old: dict[str, Any], after: Any = new, info: Any = info) -> Any:
            decider = Judge(FakeUpstream(), None, engine, StaticOwnership(whole))
            caller = Caller.known(UserInfo("someone"))
            return await decider.decide(Subject(info, old, after), caller)

        assert asyncio.run(verdicts(stand_in)) == asyncio.run(verdicts(whole))
        # A write that leaves the metadata but its annotations
        # (leaves_metadata_but_annotations): judged on the stand-in as both the object as it
        # was and as it will be, as on the whole objects.
        same_metadata = {
            **whole,
            "metadata": {**whole["metadata"], "annotations": {"note": "after", "new": "x"}},
            "data": {"n": "changed"},
        }
        assert asyncio.run(verdicts(stand_in, stand_in)) == asyncio.run(
            verdicts(whole, same_metadata)
        )
        # A label patch (labels_after_patch): the stand-in with the patched labels as the
        # object as it will be.
        labels_patch = {"metadata": {"labels": patch_labels}}
        after = labels_after_patch(labels_patch, MERGE, node.labels)
        assert after == new["metadata"]["labels"]
        relabelled = {**stand_in, "metadata": {**stand_in["metadata"], "labels": after}}
        assert asyncio.run(verdicts(stand_in, relabelled)) == asyncio.run(verdicts(whole, new))


async def test_the_index_not_synced_refuses_with_503() -> None:
    top = obj("ConfigMap", "top")
    index = StaticOwnership(top, synced=False)
    verdict = await decide(index, "DELETE", "/api/v1/namespaces/shop/configmaps/top", top)
    assert verdict.status is not None and verdict.status["code"] == 503
    # Where no DELETE lock can be reached, the index is not needed.
    free = "/api/v1/namespaces/elsewhere/configmaps/top"
    assert (await decide(index, "DELETE", free, top)).allowed


async def test_scale_down_through_the_scale_subresource_is_a_delete_of_locked_pods() -> None:
    dep = obj("Deployment", "web", api="apps/v1")
    dep["spec"] = {"replicas": 2}
    rs = obj("ReplicaSet", "web-1", dep, api="apps/v1")
    pod_ = obj("Pod", "web-1-a", rs, aura="red")
    index = StaticOwnership(dep, rs, pod_)
    scale = {"apiVersion": "autoscaling/v1", "kind": "Scale", "spec": {"replicas": 1}}
    path = "/apis/apps/v1/namespaces/shop/deployments/web/scale"
    verdict = await decide(index, "PATCH", path, dep, scale)
    assert verdict.status is not None
    assert "scaling down deletes pods" in verdict.status["message"]
    scale["spec"]["replicas"] = 3
    assert (await decide(index, "PATCH", path, dep, scale)).allowed


async def test_debug_is_a_connect_and_the_exempt_account_is_not_handed_out() -> None:
    locked = obj("Pod", "p", aura="red")
    connect_lock = _locks("shop", "CONNECT")
    path = "/api/v1/namespaces/shop/pods/p/ephemeralcontainers"
    verdict = await decide(StaticOwnership(), "PATCH", path, locked, locked, engine=connect_lock)
    assert verdict.status is not None and "forbids CONNECT" in verdict.status["message"]
    exempting = Engine(
        load_locks_from_text(
            "apiVersion: klock.rnemet.dev/v1\nkind: Lock\n"
            "metadata: {name: l, namespace: shop}\n"
            "spec: {operations: [DELETE], matcher: {aura: red}, exclusive: {name: jonny-op}}\n",
            source="test",
        )
    )
    sa = obj("ServiceAccount", "jonny-op")
    token = "/api/v1/namespaces/shop/serviceaccounts/jonny-op/token"
    verdict = await decide(StaticOwnership(), "POST", token, sa, engine=exempting)
    assert verdict.status is not None
    assert "minting a token for service account jonny-op" in verdict.status["message"]
    itself = Caller.known(UserInfo("system:serviceaccount:shop:jonny-op"))
    assert (
        await decide(StaticOwnership(), "POST", token, sa, engine=exempting, caller=itself)
    ).allowed


async def test_a_consequence_the_caller_may_not_read_is_not_named() -> None:
    db = obj("Database", "prod", api="db.example.com/v1")
    secret = obj("Secret", "top-secret-name", db, aura="red")
    index = StaticOwnership(db, secret)

    class NoSecrets(FakeUpstream):
        async def get_object(
            self, path: str, headers: Mapping[str, str | Sequence[str]]
        ) -> dict[str, Any] | None:
            if "/secrets/" in path:
                raise UpstreamStatusError(f"GET {path}", 403, "secrets is forbidden")
            return await super().get_object(path, headers)

    decider = Judge(NoSecrets(), None, DELETE_LOCK, index)
    info = classify("DELETE", "/apis/db.example.com/v1/namespaces/shop/databases/prod")
    verdict = await decider.decide(Subject(info, db, None), Caller.known(UserInfo("someone")))
    assert verdict.status is not None
    message = verdict.status["message"]
    assert "top-secret-name" not in message
    assert "one of the secrets that the garbage collector would delete" in message
    assert "Lock shop/l" in message


async def test_deletecollection_follows_owners_unless_it_orphans() -> None:
    owner = obj("ConfigMap", "owner", role="owner")
    locked = obj("ConfigMap", "locked", owner, aura="red")
    index = StaticOwnership(owner, locked)
    lookups = FakeUpstream()
    lookups.lists["/api/v1/namespaces/shop/configmaps"] = [owner]
    decider = Judge(lookups, None, DELETE_LOCK, index)
    caller = Caller.known(UserInfo("someone"))
    path = "/api/v1/namespaces/shop/configmaps?labelSelector=role%3Downer"
    verdict = await decider.decide(Subject(classify("DELETE", path), None, None), caller)
    assert verdict.status is not None
    assert "deletecollection would delete locked objects: locked" in verdict.status["message"]
    orphaning = classify("DELETE", path + "&propagationPolicy=Orphan")
    assert (await decider.decide(Subject(orphaning, None, None), caller)).allowed


# A body the core decodes only in part (protobuf of a kind without a schema: metadata only)
# is judged on the object the API server itself makes of it, like a patch.

EXEMPT_DELETE_LOCK = """
apiVersion: klock.rnemet.dev/v1
kind: Lock
metadata: {name: l, namespace: shop}
spec: {operations: [DELETE], matcher: {aura: red}, exclusive: {name: jonny-op}}
"""


def protobuf_pod(service_account: str) -> bytes:
    from klockproxy.core.protobuf import encode_len_field, encode_string_field, encode_unknown

    # ObjectMeta{name: runner} and a PodSpec{serviceAccountName} the core has no schema for.
    meta = encode_string_field(1, "runner")
    spec = encode_string_field(8, service_account)
    raw = encode_len_field(1, meta) + encode_len_field(2, spec)
    return encode_unknown("v1", "Pod", raw)


async def test_a_partly_decodable_protobuf_create_is_judged_on_the_server_s_result() -> None:
    lookups = FakeUpstream()
    collection = "/api/v1/namespaces/shop/pods"
    lookups.dry_run_answers[collection] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "runner", "namespace": "shop"},
        "spec": {"serviceAccountName": "jonny-op", "containers": [{"name": "c"}]},
    }
    engine = Engine(load_locks_from_text(EXEMPT_DELETE_LOCK, source="test"))
    decider = Judge(lookups, IdentityResolver(lookups), engine)
    info = classify("POST", collection)
    body = protobuf_pod("jonny-op")
    verdict = await decider.judge(info, HEADERS, body, "application/vnd.kubernetes.protobuf")
    # The pod would run as the exempt account: whoever creates it acts as jonny-op.
    assert verdict.status is not None
    assert "jonny-op" in verdict.status["message"]
    # Asked of the API server: the very body, to the collection, as a dry run.
    dry = [c for c in lookups.calls if c[0] == "dry_run"]
    assert dry and dry[0][1] == collection and dry[0][2]["body"] == body


async def test_a_relabelled_pod_is_checked_against_the_workloads_listed_by_the_proxy() -> None:
    """The workloads whose selectors may adopt a relabelled bare pod are listed with the
    proxy's own credentials where it has them, else as the caller; a kind the API server
    does not serve has none; a list that fails refuses the write (fail closed)."""
    rs = obj("ReplicaSet", "keeper", api="apps/v1")
    rs["spec"] = {"replicas": 0, "selector": {"matchLabels": {"app": "kept"}}}
    old, new = obj("Pod", "bare", app="other"), obj("Pod", "bare", app="kept", aura="red")
    path = "/api/v1/namespaces/shop/pods/bare"
    rs_list = "/apis/apps/v1/namespaces/shop/replicasets"

    async def judge(lookups: FakeUpstream, *indexed: dict[str, Any]) -> Any:
        decider = Judge(lookups, None, DELETE_LOCK, StaticOwnership(old, *(indexed or (rs,))))
        caller = Caller.known(UserInfo("someone"), HEADERS)
        return await decider.decide(Subject(classify("PATCH", path), old, new), caller)

    lookups = fake()
    lookups.lists[rs_list] = [rs]
    verdict = await judge(lookups)
    assert verdict.status is not None and verdict.status["code"] == 403
    assert "under the selector of replicasets keeper" in verdict.status["message"]
    # Only the kinds the index holds any of in the namespace are listed.
    assert [c[1] for c in lookups.calls if c[0] == "list"] == [rs_list]
    lookups.calls.clear()
    assert (await judge(lookups, obj("ConfigMap", "cm"))).allowed
    assert [c for c in lookups.calls if c[0] == "list"] == []
    # The caller may not list ReplicaSets: refused, unless the proxy lists them as itself.
    lookups.forbidden_lists = {rs_list}
    verdict = await judge(lookups)
    assert verdict.status is not None and "cannot tell whether" in verdict.status["message"]
    lookups.has_own_credentials = True
    verdict = await judge(lookups)
    assert verdict.status is not None
    assert "under the selector of replicasets keeper" in verdict.status["message"]
    # Refused by the API server, or a kind it does not serve.
    for code, expected in ((403, 403), (500, 503), (404, None)):
        failing = fake()
        failing.lists[rs_list] = [rs]
        failing.list_errors = {rs_list: UpstreamStatusError("LIST", code, "no")}
        verdict = await judge(failing)
        if expected is None:
            assert verdict.allowed
        else:
            assert verdict.status is not None and verdict.status["code"] == expected
            assert (
                "cannot tell whether one of its replicasets would adopt bare"
                in (verdict.status["message"])
            )


def bare_pod(account: str = "default", rv: str = "5", **labels: str) -> dict[str, Any]:
    """A whole pod with no owner, as the API server stores it."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "shop", "uid": "uid-p", "resourceVersion": rv,
                     "labels": dict(labels), "annotations": {"note": "x"}},
        "spec": {"serviceAccountName": account, "containers": [{"name": "c", "image": "i"}]},
    }  # fmt: skip


async def test_a_label_patch_of_a_bare_pod_the_index_holds_asks_nothing() -> None:
    """``kubectl label pod`` (and ``annotate``) of a pod with no owner: the patch names the
    metadata alone, so the pod's spec stays as it is and the index's version stands in;
    a patch that may touch the spec, and a pod with an owner, are read as before."""
    blue = bare_pod(aura="blue")
    team = b'{"metadata":{"labels":{"team":"a"}}}'
    verdict, lookups = await judge_patch(blue, StaticOwnership(blue), team, POD_PATH)
    assert verdict.allowed and verdict.on_index
    assert lookups.kinds() == []
    into = b'{"metadata":{"labels":{"aura":"red"}}}'
    verdict, lookups = await judge_patch(blue, StaticOwnership(blue), into, POD_PATH)
    assert verdict.status is not None and verdict.status["code"] == 403
    assert lookups.kinds() == []
    note = b'{"metadata":{"annotations":{"n":"1"}}}'
    verdict, lookups = await judge_patch(blue, StaticOwnership(blue), note, POD_PATH)
    assert verdict.allowed and lookups.kinds() == []
    for body in (
        b'{"metadata":{"labels":{"team":"a"}},"spec":{"activeDeadlineSeconds":5}}',
        b'{"spec":{"activeDeadlineSeconds":5}}',
    ):
        _, lookups = await judge_patch(blue, StaticOwnership(blue), body, POD_PATH)
        assert "get" in lookups.kinds(), body
    owned = obj("Pod", "p", obj("ReplicaSet", "rs", api="apps/v1"), aura="blue")
    owned["metadata"]["resourceVersion"] = "5"
    _, lookups = await judge_patch(owned, StaticOwnership(owned), team, POD_PATH)
    assert "get" in lookups.kinds()


EXEMPT_ACCOUNT_LOCKS = Engine(
    load_locks_from_text(
        "apiVersion: klock.rnemet.dev/v1\nkind: Lock\nmetadata: {name: l, namespace: shop}\n"
        "spec: {operations: [UPDATE, DELETE], matcher: {aura: red}, "
        "exclusive: {name: jonny-op}}\n",
        source="test",
    )
)


@given(
    labels=st.dictionaries(st.sampled_from(["aura", "app"]), st.sampled_from(["red", "web"])),
    patch_labels=st.dictionaries(
        st.sampled_from(["aura", "app"]), st.none() | st.sampled_from(["red", "web"])
    ),
    account=st.sampled_from(["default", "jonny-op"]),
    caller=st.sampled_from(["someone", "system:serviceaccount:shop:jonny-op"]),
)
@settings(max_examples=60, deadline=None)
def test_a_bare_pod_stand_in_is_judged_as_the_whole_pod_on_a_label_patch(
    labels: dict[str, str], patch_labels: dict[str, str | None], account: str, caller: str
) -> None:
    """For a pod with no owner and a patch of its labels alone, the index's stand-in (no
    spec) gets the verdict the whole pod gets, whatever service account it runs as (the
    exempt one included) and whoever asks."""
    whole = bare_pod(account, **labels)
    after = labels_after_patch({"metadata": {"labels": patch_labels}}, MERGE, labels)
    assert after is not None
    new = {**whole, "metadata": {**whole["metadata"], "labels": after}}
    node = node_of(whole, ResourceRef("", "v1", "pods"), "Pod")
    assert node is not None
    stand_in = metadata_object(node)
    relabelled = {**stand_in, "metadata": {**stand_in["metadata"], "labels": after}}
    info = classify("PATCH", POD_PATH)

    async def verdict(old: dict[str, Any], later: dict[str, Any]) -> Any:
        decider = Judge(FakeUpstream(), None, EXEMPT_ACCOUNT_LOCKS, StaticOwnership(whole))
        return await decider.decide(Subject(info, old, later), Caller.known(UserInfo(caller)))

    assert asyncio.run(verdict(stand_in, relabelled)) == asyncio.run(verdict(whole, new))
