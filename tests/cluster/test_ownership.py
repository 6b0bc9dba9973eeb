"""The ownership index against the sandbox API server: listed, watched, scoped, fail closed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from klockproxy.cluster import ownership
from klockproxy.cluster.ownership import OwnershipIndex
from klockproxy.cluster.upstream import Upstream, UpstreamConfig, UpstreamStatusError, WatchEvent
from klockproxy.core.engine import Engine
from klockproxy.core.errors import Refusal
from klockproxy.core.locks import load_locks_from_text
from klockproxy.core.ownership import collected
from klockproxy.sandbox.server import Sandbox
from tests.sandbox_admin import SandboxAdmin as Api

WAIT = 30.0


def engine(*namespaces: str, operations: str = "[DELETE]") -> Engine:
    text = "\n---\n".join(
        f"""
apiVersion: klock.rnemet.dev/v1
kind: Lock
metadata: {{name: l, namespace: {ns}}}
spec: {{operations: {operations}, matcher: {{aura: red}}}}
"""
        for ns in namespaces
    )
    return Engine(load_locks_from_text(text, source="test") if namespaces else ())


def ref(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj["metadata"]
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
    }


@pytest.fixture
async def upstream(sandbox: Sandbox, tmp_path: Path) -> AsyncIterator[Upstream]:
    (tmp_path / "ca.pem").write_bytes(sandbox.ca_pem)
    (tmp_path / "token").write_text(sandbox.admin_token)
    up = Upstream(
        UpstreamConfig(
            sandbox.url, ca_file=str(tmp_path / "ca.pem"), token_file=str(tmp_path / "token")
        )
    )
    yield up
    await up.close()


@pytest.fixture
async def index(upstream: Upstream) -> AsyncIterator[OwnershipIndex]:
    idx = OwnershipIndex(upstream)
    yield idx
    await idx.stop()


async def until(predicate: Callable[[], bool], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"never: {what}")
        await asyncio.sleep(0.02)


def names(index: OwnershipIndex) -> set[str]:
    return {f"{n.namespace}/{n.name}" for n in index.graph}


async def test_not_synced_is_refused_with_503(index: OwnershipIndex) -> None:
    with pytest.raises(Refusal) as caught:
        index.require()
    assert caught.value.status["code"] == 503
    assert "ownership index is not synced" in caught.value.status["message"]


async def test_lists_lock_namespaces_and_cluster_scoped_kinds(
    index: OwnershipIndex, api: Api
) -> None:
    await api.ns("t")
    await api.ns("free")
    owner = await api.cm("t", "owner")
    role = await api.call(
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/clusterroles",
        {"metadata": {"name": "boss"}, "rules": []},
    )
    await api.cm("t", "red", ref(owner), ref(role), aura="red")
    await api.cm("free", "elsewhere")
    index.follow(engine("t"))
    # The sandbox's admin may list and watch everything: the index may run.
    assert await index.permitted() == ""
    await index.start()
    assert await index.wait_synced(WAIT)
    seen = names(index)
    assert {"t/owner", "t/red", "/boss", "/t"} <= seen  # namespaces are cluster-scoped objects
    assert "free/elsewhere" not in seen
    graph = index.require()
    # Both owners must go for the locked ConfigMap to go (one is cluster-scoped).
    assert collected(graph, [owner["metadata"]["uid"]]) == []
    both = collected(graph, [owner["metadata"]["uid"], role["metadata"]["uid"]])
    assert [n.name for n in both] == ["red"]


async def test_watches_keep_it_current_and_follow_the_lock_namespaces(
    index: OwnershipIndex, api: Api
) -> None:
    await api.ns("t")
    await api.ns("u")
    index.follow(engine("t"))
    await index.start()
    assert await index.wait_synced(WAIT)
    owner = await api.cm("t", "owner")
    await api.cm("t", "dep", ref(owner), aura="red")
    await until(lambda: "t/dep" in names(index), "the new dependent indexed")
    node = next(n for n in index.graph if n.name == "dep")
    assert node.labels == {"aura": "red"} and node.owners[0].uid == owner["metadata"]["uid"]
    await api.call("DELETE", "/api/v1/namespaces/t/configmaps/dep")
    await until(lambda: "t/dep" not in names(index), "the deleted dependent forgotten")
    await api.cm("u", "later")
    index.follow(engine("t", "u"))
    assert not index.synced  # until the new namespace's watches have listed
    assert await index.wait_synced(WAIT)
    assert "u/later" in names(index)
    index.follow(engine("t"))
    assert "u/later" not in names(index)
    # A Lock with no DELETE does not need the index.
    index.follow(engine("t", operations="[UPDATE]"))
    assert "t/owner" not in names(index)


async def test_a_write_through_the_proxy_is_the_stored_version_until_the_watch_delivers_it(
    index: OwnershipIndex, api: Api
) -> None:
    """Read your own writes: the API server's answer to a write made through the proxy is the
    object's version for ``stored`` at once; events of other versions (older ones, still on
    their way) do not take it back; the event of that very version, a deletion or a fresh
    list end it."""
    await api.ns("t")
    cm = await api.cm("t", "cfg", aura="blue")
    index.follow(engine("t"))
    await index.start()
    assert await index.wait_synced(WAIT)

    def stored() -> Any:
        return index.stored("", "configmaps", "t", "cfg")

    listed = stored().version
    assert listed == cm["metadata"]["resourceVersion"]
    # An answer from the future (the watch has not delivered it yet).
    ahead = json.loads(json.dumps(cm))
    ahead["metadata"].update(resourceVersion="999999", labels={"aura": "red"})
    index.wrote(ahead)
    assert stored().version == "999999" and stored().labels == {"aura": "red"}
    # Another version arrives by the watch (in real life: an older one still on its way).
    moved = await api.call(
        "PUT",
        "/api/v1/namespaces/t/configmaps/cfg",
        {**cm, "metadata": {**cm["metadata"], "labels": {"aura": "green"}}},
    )
    await until(
        lambda: (
            index.graph.named("", "configmaps", "t", "cfg").version  # type: ignore[union-attr]
            == moved["metadata"]["resourceVersion"]
        ),
        "the watch delivers the PUT",
    )
    assert stored().version == "999999"
    # The answer of a write whose event the watch has delivered: nothing held any more.
    index.wrote(moved)
    assert stored().version == moved["metadata"]["resourceVersion"]
    assert stored().labels == {"aura": "green"}
    # Held again, then ended by the event of that very version.
    again = await api.call(
        "PUT",
        "/api/v1/namespaces/t/configmaps/cfg",
        {**moved, "metadata": {**moved["metadata"], "labels": {"aura": "blue"}}},
    )
    index.wrote(again)
    assert stored().version == again["metadata"]["resourceVersion"]
    await until(lambda: not index._written, "the watch catches up with the write")
    # Ended by a deletion too; objects the index does not follow are ignored.
    index.wrote(ahead)
    await api.call("DELETE", "/api/v1/namespaces/t/configmaps/cfg")
    await until(lambda: stored() is None, "the deletion indexed")
    assert not index._written
    index.wrote({"metadata": {"uid": "not-followed", "resourceVersion": "1"}})
    index.wrote({"metadata": "garbage"})
    assert not index._written


async def test_a_write_whose_event_never_comes_is_held_for_seconds_only(
    index: OwnershipIndex, api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another write's event may pass a write's before its answer is read: that version is
    never delivered again, so it is not held for ever (the watch's version wins after
    ``WRITTEN_SECONDS``)."""
    await api.ns("t")
    cm = await api.cm("t", "cfg", aura="blue")
    index.follow(engine("t"))
    await index.start()
    assert await index.wait_synced(WAIT)
    ahead = json.loads(json.dumps(cm))
    ahead["metadata"]["resourceVersion"] = "999999"
    index.wrote(ahead)
    assert index.stored("", "configmaps", "t", "cfg").version == "999999"  # type: ignore[union-attr]
    monkeypatch.setattr(ownership, "WRITTEN_SECONDS", 0.0)
    await asyncio.sleep(0.01)
    node = index.stored("", "configmaps", "t", "cfg")
    assert node is not None and node.version == cm["metadata"]["resourceVersion"]
    assert not index._written


async def test_a_new_crd_is_discovered_and_its_objects_watched(
    index: OwnershipIndex, api: Api
) -> None:
    await api.ns("t")
    index.follow(engine("t"))
    await index.start()
    assert await index.wait_synced(WAIT)
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": {"type": "object"}},
                }
            ],
        },
    }
    await api.call("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
    await until(
        lambda: index.synced and any(k.resource.group == "example.com" for k in index.kinds),
        "the Widget kind watched",
    )
    await api.call("POST", "/apis/example.com/v1/namespaces/t/widgets", {"metadata": {"name": "w"}})
    await until(lambda: "t/w" in names(index), "the custom resource indexed")
    widget = next(n for n in index.graph if n.name == "w")
    assert widget.kind == "Widget" and widget.resource.group == "example.com"


class Hobbled:
    """The sandbox's upstream, except for one group the API server cannot serve (503) and
    one collection the proxy may not list (403)."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream

    async def get_object(self, path: str, headers: Any) -> dict[str, Any] | None:
        if path == "/apis/batch/v1":
            raise UpstreamStatusError(f"GET {path}", 503, "the aggregated API is down")
        return await self.upstream.get_object(path, headers)

    async def watch(self, path: str, *args: Any, **kwargs: Any) -> AsyncIterator[WatchEvent]:
        if path.endswith("/secrets"):
            yield WatchEvent("DOWN", error="HTTP 403: secrets is forbidden")
            return
        async for event in self.upstream.watch(path, *args, **kwargs):
            yield event


async def test_a_kind_it_may_not_list_refuses_at_once_and_says_which(
    upstream: Upstream, api: Api
) -> None:
    await api.ns("t")
    index = OwnershipIndex(Hobbled(upstream))
    try:
        index.follow(engine("t"))
        await index.start()
        await until(lambda: "forbidden" in index.progress(), "the failure recorded")
        # The group the API server cannot serve is left out (the garbage collector cannot
        # resolve its kinds either).
        assert index.kinds and not any(k.resource.group == "batch" for k in index.kinds)
        # A failing watch is not waited for (the timeout would be an hour): refused at once,
        # naming it.
        with pytest.raises(Refusal) as caught:
            await asyncio.wait_for(index.graph_when_synced(timeout=3600), WAIT)
        message = caught.value.status["message"]
        assert caught.value.status["code"] == 503
        assert "/api/v1/namespaces/t/secrets (HTTP 403: secrets is forbidden)" in message
    finally:
        await index.stop()


async def test_credentials_that_may_not_list_everything_cannot_run_it(
    sandbox: Sandbox, api: Api, tmp_path: Path
) -> None:
    await api.ns("t")
    await api.call("POST", "/api/v1/namespaces/t/serviceaccounts", {"metadata": {"name": "nobody"}})
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}
    answer = await api.call("POST", "/api/v1/namespaces/t/serviceaccounts/nobody/token", review)
    (tmp_path / "nobody").write_text(answer["status"]["token"])
    (tmp_path / "ca.pem").write_bytes(sandbox.ca_pem)
    config = UpstreamConfig(
        sandbox.url, ca_file=str(tmp_path / "ca.pem"), token_file=str(tmp_path / "nobody")
    )
    index = OwnershipIndex.over(config)
    try:
        assert await index.permitted() == "the proxy's own credentials may not list every resource"
    finally:
        await index.stop()
