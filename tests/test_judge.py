"""The judge on its own: RequestInfo, auth headers and body in, a Verdict out (no mitmproxy)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from klockproxy.cluster.identity import IdentityResolver
from klockproxy.core.engine import Engine
from klockproxy.core.locks import load_locks_from_text
from klockproxy.core.requests import classify
from klockproxy.core.types import UserInfo
from klockproxy.judge import (
    Caller,
    Judge,
    Subject,
    has_delete_locks,
    is_crd_delete,
    needs_judgement,
)

LOCK = """
apiVersion: klock.rnemet.dev/v1
kind: Lock
metadata: {name: lockred, namespace: default}
spec:
  operations: [UPDATE, DELETE]
  matcher: {aura: red}
"""
HEADERS = {"Authorization": ["Bearer caller-token"]}


def pod(name: str, labels: Mapping[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "default",
            "uid": f"uid-{name}",
            "resourceVersion": "42",
            "labels": dict(labels),
        },
    }


class Lookups:
    server = "https://api.example:6443"
    has_own_credentials = False

    def __init__(self) -> None:
        self.objects = {
            "/api/v1/namespaces/default/pods/red": pod("red", {"aura": "red"}),
            "/api/v1/namespaces/default/pods/plain": pod("plain", {}),
        }
        self.lists: dict[str, list[dict[str, Any]]] = {}

    async def get_object(
        self, path: str, headers: Mapping[str, str | Sequence[str]]
    ) -> dict[str, Any] | None:
        return self.objects.get(path)

    async def list_objects(
        self,
        path: str,
        headers: Mapping[str, str | Sequence[str]],
        label_selector: str | None = None,
        field_selector: str | None = None,
        *,
        metadata_only: bool = False,
    ) -> list[dict[str, Any]]:
        return self.lists.get(path, [])

    async def self_subject_review(self, headers: Mapping[str, str | Sequence[str]]) -> UserInfo:
        return UserInfo("admin")

    async def close(self) -> None:
        pass


def judge() -> Judge:
    lookups = Lookups()
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
    assert not needs_judgement(classify("PATCH", POD_PATH + "/status"), delete_lock, "")
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
    lookups = Lookups()

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
    lookups = Lookups()
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
