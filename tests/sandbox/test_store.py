"""The sandbox store, selectors and tables (pure units, no server)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from klockproxy.sandbox.errors import BadRequestError
from klockproxy.sandbox.resources import Registry
from klockproxy.sandbox.selectors import field_matcher, label_matcher
from klockproxy.sandbox.store import ADDED, DELETED, MODIFIED, Store, TooOldError
from klockproxy.sandbox.tables import human_duration, table


def _obj(name: str, ns: str = "default", **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
    }


def test_resource_versions_grow_and_list_is_sorted() -> None:
    store = Store()
    a = store.put("", "configmaps", _obj("b"))
    b = store.put("", "configmaps", _obj("a", "other"))
    assert int(b["metadata"]["resourceVersion"]) > int(a["metadata"]["resourceVersion"])
    assert [o["metadata"]["name"] for o in store.list("", "configmaps", None)] == ["b", "a"]
    assert [o["metadata"]["name"] for o in store.list("", "configmaps", "other")] == ["a"]
    assert store.get("", "configmaps", "default", "b") is a
    assert store.get("", "configmaps", "default", "zzz") is None


async def test_watch_replays_history_then_streams() -> None:
    store = Store()
    first = store.put("", "configmaps", _obj("a"))
    store.put("", "configmaps", _obj("b"))
    watcher, backlog = store.watch(
        "", "configmaps", "default", int(first["metadata"]["resourceVersion"])
    )
    assert [(e.type, e.obj["metadata"]["name"]) for e in backlog] == [(ADDED, "b")]
    store.put("", "configmaps", _obj("b", x="1"))
    store.put("", "configmaps", _obj("elsewhere", "other"))
    store.remove("", "configmaps", "default", "b")
    got = [await asyncio.wait_for(watcher.queue.get(), 5) for _ in range(2)]
    assert [(e.type, e.obj["metadata"]["name"]) for e in got if e] == [
        (MODIFIED, "b"),
        (DELETED, "b"),
    ]
    store.unwatch(watcher)


def test_watch_without_version_lists_current_objects() -> None:
    store = Store()
    store.put("", "configmaps", _obj("a", tier="x"))
    store.put("", "configmaps", _obj("b", tier="y"))
    _, backlog = store.watch("", "configmaps", None, None, label_matcher("tier=x"))
    assert [(e.type, e.obj["metadata"]["name"]) for e in backlog] == [(ADDED, "a")]


def test_history_is_bounded_and_old_versions_are_too_old() -> None:
    store = Store(history_size=3)
    start = store.resource_version
    for i in range(6):
        store.put("", "configmaps", _obj(f"o{i}"))
    with pytest.raises(TooOldError):
        store.watch("", "configmaps", None, start)
    store.watch("", "configmaps", None, store.resource_version - 1)


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("app=web", {"app": "web"}, True),
        ("app==web", {"app": "db"}, False),
        ("app!=web", {}, True),
        ("app in (web,db)", {"app": "db"}, True),
        ("app notin (web,db)", {"app": "db"}, False),
        ("app", {"app": ""}, True),
        ("!app", {"app": "x"}, False),
        ("app=web,tier=front", {"app": "web", "tier": "back"}, False),
        ("", {}, True),
    ],
)
def test_label_selectors(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert label_matcher(selector)({"metadata": {"labels": labels}}) is expected


def test_bad_label_selector_is_a_bad_request() -> None:
    with pytest.raises(BadRequestError):
        label_matcher("app=(")


def test_field_selectors() -> None:
    pod = {"metadata": {"name": "p", "namespace": "n"}, "status": {"phase": "Running"}}
    assert field_matcher("status.phase=Running,metadata.name=p", "", "pods")(pod)
    assert not field_matcher("status.phase!=Running", "", "pods")(pod)
    with pytest.raises(BadRequestError):
        field_matcher("status.phase=Running", "", "configmaps")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (5, "5s"),
        (119, "119s"),
        (150, "2m30s"),
        (600, "10m"),
        (3 * 3600 + 60, "3h1m"),
        (30 * 3600, "30h"),
        (3 * 86400, "3d"),
        (400 * 86400, "400d"),
    ],
)
def test_age_like_kubectl(seconds: int, text: str) -> None:
    assert human_duration(seconds) == text


def test_pod_table_columns_and_wide_priority() -> None:
    registry = Registry()
    pods = registry.lookup("", "v1", "pods")
    assert pods is not None
    pod = {
        "metadata": {"name": "p", "creationTimestamp": "2020-01-01T00:00:00Z"},
        "spec": {"containers": [{"name": "c"}], "nodeName": "n1"},
        "status": {
            "phase": "Running",
            "podIP": "10.0.0.1",
            "containerStatuses": [{"ready": True, "restartCount": 2}],
        },
    }
    t = table(pods, [pod])
    cols = [(c["name"], c["priority"]) for c in t["columnDefinitions"]]
    assert cols[:5] == [("Name", 0), ("Ready", 0), ("Status", 0), ("Restarts", 0), ("Age", 0)]
    assert ("IP", 1) in cols and ("Node", 1) in cols
    assert t["rows"][0]["cells"][:4] == ["p", "1/1", "Running", 2]
    assert t["rows"][0]["object"]["kind"] == "PartialObjectMetadata"
    full = table(pods, [pod], include_object="Object")
    assert full["rows"][0]["object"] is pod


def test_registry_registers_and_removes_crd_versions() -> None:
    registry = Registry()
    crd = {
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"]},
            "versions": [
                {"name": "v1", "served": True, "storage": True, "subresources": {"status": {}}}
            ],
        },
    }
    (rt,) = registry.register_crd(crd)
    assert (rt.group, rt.version, rt.kind, rt.builtin) == ("example.com", "v1", "Widget", False)
    assert "status" in rt.subresources
    assert ("example.com", ["v1"]) in registry.group_versions()
    registry.unregister_crd("widgets.example.com")
    assert registry.lookup("example.com", "v1", "widgets") is None
    assert all(g != "example.com" for g, _ in registry.group_versions())


async def test_selector_watch_sees_objects_enter_and_leave() -> None:
    store = Store()
    watcher, _ = store.watch("", "configmaps", None, None)
    match = label_matcher("tier=x")
    store.put("", "configmaps", _obj("a", tier="y"))
    store.put("", "configmaps", _obj("a", tier="x"))
    store.put("", "configmaps", _obj("a", tier="x", more="1"))
    store.put("", "configmaps", _obj("a", tier="y"))
    seen = []
    for _ in range(4):
        ev = await asyncio.wait_for(watcher.queue.get(), 5)
        assert ev is not None
        seen.append(ev.as_seen_by(match))
    assert seen == [None, ADDED, MODIFIED, DELETED]


async def test_dropping_a_resource_ends_its_watches() -> None:
    store = Store()
    store.put("example.com", "widgets", _obj("w"))
    watcher, _ = store.watch("example.com", "widgets", None, None)
    store.drop_resource("example.com", "widgets")
    deleted = await asyncio.wait_for(watcher.queue.get(), 5)
    assert deleted is not None and deleted.type == DELETED
    assert await asyncio.wait_for(watcher.queue.get(), 5) is None
    assert store.watcher_count == 0
