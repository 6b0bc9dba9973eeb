"""Test doubles shared by the unit tests: one fake upstream (the Lookups the judge and the
addon use), a lock set with a fixed engine, and object builders."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from klockproxy.cluster.upstream import UpstreamStatusError
from klockproxy.core.codec import media_type
from klockproxy.core.engine import Engine
from klockproxy.core.errors import DecodeError, PatchError
from klockproxy.core.metadata import decode_body
from klockproxy.core.patches import (
    APPLY_PATCH,
    PatchTestFailedError,
    UnsupportedPatchError,
    apply_patch,
)
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
        self.list_errors: dict[str, Exception] = {}
        self.has_own_credentials = False
        # What a dry run of a write to a path answers instead of the simulation below: an
        # object (the API server's own result) or an exception (its refusal).
        self.dry_run_answers: dict[str, dict[str, Any] | Exception] = {}

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
        if path in self.list_errors:
            raise self.list_errors[path]
        items = self.lists.get(path, [])
        if label_selector:
            key, _, value = label_selector.partition("=")
            items = [i for i in items if i["metadata"]["labels"].get(key) == value]
        return items

    async def dry_run(
        self,
        method: str,
        path: str,
        query: Sequence[tuple[str, str]],
        headers: Mapping[str, str | Sequence[str]],
        body: bytes,
        content_type: str,
    ) -> dict[str, Any]:
        """A write with dryRun=All. A PATCH: the patch applied to the stored object (the
        parent's, for a status patch), with the API server's optimistic-concurrency checks; a
        create: the body as the API server decodes it."""
        self.calls.append(("dry_run", path, {"query": list(query), "body": body}))
        if self.fail is not None:
            raise self.fail
        answer = self.dry_run_answers.get(path)
        if isinstance(answer, Exception):
            raise answer
        if answer is not None:
            return answer
        if method in ("POST", "PUT"):
            # A create: the API server decodes the body (protobuf included) and stores it.
            try:
                return decode_body(body, content_type)
            except DecodeError as e:
                raise UpstreamStatusError(method, 400, str(e)) from e
        parent = path.removesuffix("/status")
        current = self.objects.get(parent)
        is_apply = media_type(content_type) == APPLY_PATCH
        if current is None and not is_apply:
            raise UpstreamStatusError("PATCH", 404, f"{parent} not found")
        try:
            result = apply_patch(current or {}, body, content_type)
        except UnsupportedPatchError as e:
            raise UpstreamStatusError("PATCH", 415, str(e)) from e
        except PatchTestFailedError as e:
            raise UpstreamStatusError("PATCH", 422, str(e)) from e
        except PatchError as e:
            raise UpstreamStatusError("PATCH", 400, str(e)) from e
        meta = result.get("metadata") or {}
        if not isinstance(meta, dict):
            # The API server cannot decode the patched object into its kind either.
            raise UpstreamStatusError("PATCH", 400, "metadata: expected an object")
        if current is not None:
            stored = current["metadata"]
            if meta.get("resourceVersion") not in (None, "", stored.get("resourceVersion")):
                raise UpstreamStatusError("PATCH", 409, "the object has been modified")
            if meta.get("uid") not in (None, "", stored.get("uid")):
                raise UpstreamStatusError("PATCH", 409, "Precondition failed: UID")
        return result

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
