"""Garbage through the judge: every body of every content type gets a Status or a verdict,
never an exception (the proxy would answer 500 "internal error" with a traceback)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from klockproxy.cluster.identity import IdentityResolver
from klockproxy.core.engine import Engine
from klockproxy.core.locks import load_locks_from_text
from klockproxy.core.requests import classify
from klockproxy.judge import Judge
from tests.fakes import FakeUpstream, pod

LOCKS = """
apiVersion: klock.rnemet.dev/v1
kind: Lock
metadata: {name: everything, namespace: default}
spec:
  operations: [CREATE, UPDATE, DELETE, CONNECT]
  matcher: {aura: red}
"""

CONTENT_TYPES = [
    "",
    "application/json",
    "application/yaml",
    "application/vnd.kubernetes.protobuf",
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/json-patch+json",
    "application/apply-patch+yaml",
    "application/cbor",
    "text/plain",
    "application/json; charset=utf-8",
]
REQUESTS = [
    ("POST", "/api/v1/namespaces/default/pods"),
    ("PUT", "/api/v1/namespaces/default/pods/red"),
    ("PUT", "/api/v1/namespaces/default/pods/gone"),
    ("PATCH", "/api/v1/namespaces/default/pods/red"),
    ("PATCH", "/api/v1/namespaces/default/pods/plain"),
    ("PATCH", "/api/v1/namespaces/default/pods/gone?fieldManager=f"),
    ("PATCH", "/api/v1/namespaces/default/pods/plain/status"),
    ("DELETE", "/api/v1/namespaces/default/pods/plain"),
    ("DELETE", "/api/v1/namespaces/default/pods/gone"),
    ("POST", "/api/v1/namespaces/default/pods/plain/eviction"),
    ("PUT", "/apis/apps/v1/namespaces/default/deployments/web/scale"),
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(
        st.sampled_from(
            ["metadata", "labels", "aura", "name", "op", "path", "value", "from", "$patch",
             "apiVersion", "kind", "spec", "ownerReferences", "uid", "resourceVersion",
             "preconditions", "propagationPolicy", "orphanDependents", "deleteOptions"]
        ) | st.text(max_size=6),
        inner,
        max_size=5,
    ),
    max_leaves=12,
)  # fmt: skip


def _serialise(value: Any, how: str) -> bytes:
    if how == "json":
        return json.dumps(value).encode()
    return yaml.safe_dump(value).encode()


bodies = (
    st.binary(max_size=64)
    | st.tuples(json_values, st.sampled_from(["json", "yaml"])).map(lambda v: _serialise(*v))
    | st.sampled_from(
        [
            b"apiVersion: v1\nkind: Pod\nmetadata: {name: x, labels: {aura: yes}}\n",
            b'{"apiVersion":"v1","kind":"Pod","metadata":{"name":"x","labels":{"aura":1}}}',
            b'{"metadata":{"labels":[]}}',
            b'[{"op":"move","from":"/metadata","path":"/metadata/labels"}]',
            b'{"$patch":"delete"}',
            b"k8s\x00\x0a\x02\x12\x00",
        ]
    )
)


def _judge() -> Judge:
    lookups = FakeUpstream()
    lookups.objects = {
        "/api/v1/namespaces/default/pods/red": pod("red", {"aura": "red"}),
        "/api/v1/namespaces/default/pods/plain": pod("plain", {}),
        "/apis/apps/v1/namespaces/default/deployments/web": {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "resourceVersion": "3"},
        },
    }
    return Judge(
        lookups, IdentityResolver(lookups), Engine(load_locks_from_text(LOCKS, source="fuzz"))
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    request=st.sampled_from(REQUESTS),
    content_type=st.sampled_from(CONTENT_TYPES),
    body=bodies,
)
def test_garbage_bodies_get_a_status_never_an_exception(
    request: tuple[str, str], content_type: str, body: bytes
) -> None:
    info = classify(*request)
    verdict = asyncio.run(_judge().judge(info, {}, body, content_type))
    if verdict.status is not None:
        assert verdict.status["kind"] == "Status"
        assert verdict.status["code"] in (400, 403, 404, 409, 413, 415, 422, 503)
        assert verdict.status["message"]
