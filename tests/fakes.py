"""Test doubles shared by the unit tests: one fake upstream (the Lookups the judge and the
addon use), a lock set with a fixed engine, and object builders."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from klockproxy.cluster.upstream import UpstreamStatusError
from klockproxy.core.engine import Engine
from klockproxy.core.types import UserInfo

ADMIN = UserInfo("admin", groups=("system:masters",))


JONNY = UserInfo("system:serviceaccount:default:jonny-op")


def pod(
    name: str, labels: Mapping[str, str], ns: str = "default", rv: str = "42"
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": ns,
            "uid": f"uid-{name}",
            "resourceVersion": rv,
            "labels": dict(labels),
        },
        "spec": {"containers": [{"name": "c", "image": "nginx"}]},
    }


class FakeUpstream:
    """Same async interface as klockproxy.cluster.upstream.Upstream, answering from dicts."""

    server = "https://api.example:6443"

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.lists: dict[str, list[dict[str, Any]]] = {}
        self.user = ADMIN
        self.fail: Exception | None = None
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        # Collections the caller (a request with Authorization) may not list.
        self.forbidden_lists: set[str] = set()
        self.has_own_credentials = False

    async def get_object(
        self, path: str, headers: Mapping[str, str | Sequence[str]]
    ) -> dict[str, Any] | None:
        self.calls.append(("get", path, dict(headers)))
        if self.fail is not None:
            raise self.fail
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
        self.calls.append(("list", path, {"labelSelector": label_selector}))
        if self.fail is not None:
            raise self.fail
        if path in self.forbidden_lists and "Authorization" in headers:
            raise UpstreamStatusError("LIST", 403, f"cannot list {path}")
        items = self.lists.get(path, [])
        if label_selector:
            key, _, value = label_selector.partition("=")
            items = [i for i in items if i["metadata"]["labels"].get(key) == value]
        return items

    async def self_subject_review(self, headers: Mapping[str, str | Sequence[str]]) -> UserInfo:
        self.calls.append(("ssr", "", dict(headers)))
        return self.user

    async def close(self) -> None:
        pass

    def kinds(self) -> list[str]:
        return [c[0] for c in self.calls]


class StaticLocks:
    """Stands in for a LockSet: a fixed engine (None = not ready)."""

    # No cluster source: Lock writes through the proxy have nothing to apply.
    watches_cluster = False

    def __init__(self, engine: Engine | None) -> None:
        self.engine = engine

    def describe(self) -> str:
        return "0 locks from cluster (not ready)" if self.engine is None else "test locks"
