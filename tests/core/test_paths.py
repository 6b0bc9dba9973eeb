"""Request paths: classify_request's extra readings and the lookup paths."""

from __future__ import annotations

import pytest

from klockproxy.core.errors import ClassificationError
from klockproxy.core.paths import (
    api_prefix,
    classify_request,
    collection_path,
    may_be_connect,
    object_path,
)
from klockproxy.core.requests import classify


def test_lookup_paths_follow_the_api_server_layout() -> None:
    def paths(method: str, raw: str) -> tuple[str, str]:
        info = classify(method, raw)
        return collection_path(info), object_path(info)

    assert paths("DELETE", "/api/v1/namespaces/default/pods/p") == (
        "/api/v1/namespaces/default/pods",
        "/api/v1/namespaces/default/pods/p",
    )
    # A namespace's own requests: namespace == name, but the path is not nested.
    assert paths("DELETE", "/api/v1/namespaces/team") == (
        "/api/v1/namespaces",
        "/api/v1/namespaces/team",
    )
    assert paths("PATCH", "/apis/apps/v1/namespaces/ns/deployments/web/scale") == (
        "/apis/apps/v1/namespaces/ns/deployments",
        "/apis/apps/v1/namespaces/ns/deployments/web",
    )
    assert paths("PUT", "/apis/rbac.authorization.k8s.io/v1/clusterroles/a%3Ab")[1] == (
        "/apis/rbac.authorization.k8s.io/v1/clusterroles/a%3Ab"
    )


def test_api_prefix_names_the_group_and_version() -> None:
    assert api_prefix(classify("GET", "/api/v1/namespaces/default/pods/p")) == "/api/v1"
    assert api_prefix(classify("GET", "/apis/apps/v1/namespaces/ns/deployments/web")) == (
        "/apis/apps/v1"
    )


def test_connect_subresources_keep_their_opaque_tail() -> None:
    info = classify_request("GET", "/api/v1/namespaces/default/pods/my-pod/proxy/a//b")
    assert (info.verb, info.name, info.subresource) == ("connect", "my-pod", "proxy")
    with pytest.raises(ClassificationError):
        classify_request("DELETE", "/api/v1/namespaces/default/pods//x")


def test_kubelet_pod_actions_through_node_proxy_act_on_the_pod() -> None:
    info = classify_request("POST", "/api/v1/nodes/n1/proxy/exec/default/my-pod/c?command=sh")
    assert (info.resource, info.namespace, info.name, info.subresource) == (
        "pods",
        "default",
        "my-pod",
        "exec",
    )
    with pytest.raises(ClassificationError):
        classify_request("POST", "/api/v1/nodes/n1/proxy/exec/default")


def test_may_be_connect_decodes_before_splitting() -> None:
    assert may_be_connect("/api/v1/namespaces/default/pods/my-pod%2Fexec?x=1")
    assert not may_be_connect("/api/v1/namespaces/default/pods/my-pod?exec=1")
