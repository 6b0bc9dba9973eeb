"""Discovery of the kinds the route table does not know (klockproxy.cluster.discovery)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from klockproxy.cluster.discovery import MISS_RETRY_SECONDS, ResourceScopes
from klockproxy.core.errors import UpstreamError
from klockproxy.core.routes import Kind, kinds_from_discovery

WIDGETS = {
    "kind": "APIResourceList",
    "groupVersion": "example.com/v1",
    "resources": [
        {"name": "widgets", "namespaced": True, "kind": "Widget",
         "verbs": ["create", "delete", "get", "list"]},
        {"name": "widgets/status", "namespaced": True, "kind": "Widget", "verbs": ["get"]},
        {"name": "widgets/scale", "namespaced": True, "kind": "Scale", "verbs": ["get"]},
        {"name": "gadgets", "namespaced": False, "kind": "Gadget", "verbs": ["get"]},
    ],
}  # fmt: skip


class Discovery:
    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}
        self.paths: list[str] = []
        self.fail: Exception | None = None

    async def get_object(
        self, path: str, headers: Mapping[str, str | Sequence[str]]
    ) -> dict[str, Any] | None:
        self.paths.append(path)
        if self.fail is not None:
            raise self.fail
        return self.docs.get(path)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_kinds_from_discovery_reads_scope_verbs_and_subresources() -> None:
    kinds = kinds_from_discovery(WIDGETS)
    assert kinds["widgets"] == Kind(
        True, frozenset({"status", "scale"}), frozenset({"create", "delete", "get", "list"})
    )
    assert kinds["gadgets"] == Kind(False, frozenset(), frozenset({"get"}))
    assert kinds_from_discovery({"resources": "nonsense"}) == {}


async def test_a_group_version_is_read_once_then_again_after_the_ttl() -> None:
    client, clock = Discovery(), Clock()
    client.docs["/apis/example.com/v1"] = WIDGETS
    scopes = ResourceScopes(client, ttl=60, clock=clock)
    for _ in range(3):
        kind = await scopes.kind("example.com", "v1", "widgets", {})
        assert kind is not None and kind.namespaced
    assert client.paths == ["/apis/example.com/v1"]
    clock.now += 60
    await scopes.kind("example.com", "v1", "gadgets", {})
    assert client.paths == ["/apis/example.com/v1"] * 2


async def test_a_missing_resource_is_looked_up_again_soon() -> None:
    # A CustomResourceDefinition created a moment ago appears without waiting for the TTL.
    client, clock = Discovery(), Clock()
    client.docs["/apis/example.com/v1"] = {"resources": []}
    scopes = ResourceScopes(client, ttl=60, clock=clock)
    assert await scopes.kind("example.com", "v1", "widgets", {}) is None
    assert await scopes.kind("example.com", "v1", "widgets", {}) is None
    assert len(client.paths) == 1
    client.docs["/apis/example.com/v1"] = WIDGETS
    clock.now += MISS_RETRY_SECONDS
    assert await scopes.kind("example.com", "v1", "widgets", {}) is not None
    assert len(client.paths) == 2


async def test_an_unserved_group_version_has_no_kinds_and_errors_propagate() -> None:
    client = Discovery()
    scopes = ResourceScopes(client, clock=Clock())
    assert await scopes.kind("nowhere.example", "v9", "things", {}) is None
    assert await scopes.kind("", "v1", "things", {}) is None
    assert client.paths == ["/apis/nowhere.example/v9", "/api/v1"]
    client.fail = UpstreamError("down")
    with pytest.raises(UpstreamError):
        await scopes.kind("other.example", "v1", "things", {})
