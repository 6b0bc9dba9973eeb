"""The judge on its own: RequestInfo, auth headers and body in, a Verdict out (no mitmproxy)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from klockproxy.core.engine import Engine
from klockproxy.core.locks import load_locks_from_text
from klockproxy.core.requests import classify
from klockproxy.core.types import UserInfo
from klockproxy.identity import IdentityResolver
from klockproxy.judge import Judge, has_delete_locks, is_crd_delete

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
