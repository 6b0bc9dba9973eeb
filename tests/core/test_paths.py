"""Request paths: classify_request's extra readings and the lookup paths."""

from __future__ import annotations

from urllib.parse import quote, urlencode

import pytest
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from klockproxy.core.errors import ClassificationError, UnservedRouteError
from klockproxy.core.paths import (
    api_prefix,
    classify_request,
    collection_path,
    may_be_connect,
    object_path,
    resource_path,
)
from klockproxy.core.requests import RequestInfo, check_target, classify
from klockproxy.core.types import Operation, ResourceRef


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


# ---------------------------------------------------------------------------------------------
# Routes the API server serves (issue 10 item 3): one classification, refused when the shape
# is not served, so the fast path, the namespace checks and the judgement cannot disagree.


@pytest.mark.parametrize(
    ("method", "path"),
    [
        # Cluster-wide deletecollection / create / object paths of namespaced kinds.
        ("DELETE", "/api/v1/pods?labelSelector=aura%3Dred"),
        ("POST", "/api/v1/pods"),
        ("DELETE", "/api/v1/pods/my-pod"),
        ("PATCH", "/api/v1/pods/my-pod/status"),
        ("POST", "/api/v1/pods/my-pod/eviction"),
        ("PATCH", "/apis/apps/v1/deployments/web"),
        ("DELETE", "/apis/apps/v1/deployments"),
        # A namespace nested in a namespace: the fast path read "free", the check "team".
        ("DELETE", "/api/v1/namespaces/free/namespaces/team"),
        ("PATCH", "/api/v1/namespaces/free/namespaces/team/status"),
        ("DELETE", "/apis/example.com/v1/namespaces/free/namespaces/team"),
        # Namespaces have no deletecollection.
        ("DELETE", "/api/v1/namespaces?fieldSelector=metadata.name%3Dteam"),
        # Cluster-scoped kinds under a namespace.
        ("DELETE", "/api/v1/namespaces/default/nodes/n1"),
        ("DELETE", "/apis/rbac.authorization.k8s.io/v1/namespaces/default/clusterroles/admin"),
        ("PUT", "/apis/apiextensions.k8s.io/v1/namespaces/default/customresourcedefinitions/x"),
        # Verbs the kind does not have.
        ("DELETE", "/apis/authentication.k8s.io/v1/tokenreviews/x"),
        ("PATCH", "/api/v1/componentstatuses/etcd-0"),
        ("DELETE", "/api/v1/namespaces/default/bindings/x"),
    ],
)
def test_mutations_on_routes_the_api_server_does_not_serve_are_refused(
    method: str, path: str
) -> None:
    with pytest.raises(UnservedRouteError, match="does not serve"):
        classify_request(method, path)


@pytest.mark.parametrize(
    ("method", "path", "verb", "namespace"),
    [
        ("GET", "/api/v1/pods", "list", ""),
        ("GET", "/api/v1/pods?watch=1", "watch", ""),
        ("GET", "/apis/apps/v1/deployments", "list", ""),
        ("DELETE", "/api/v1/namespaces/team", "delete", "team"),
        ("PUT", "/api/v1/namespaces/team/finalize", "update", "team"),
        ("DELETE", "/api/v1/nodes/n1", "delete", ""),
        ("DELETE", "/api/v1/namespaces/default/pods", "deletecollection", "default"),
        ("POST", "/apis/authentication.k8s.io/v1/tokenreviews", "create", ""),
        (
            "POST",
            "/apis/authorization.k8s.io/v1/namespaces/d/localsubjectaccessreviews",
            "create",
            "d",
        ),
        # Unknown groups (custom resources): the scope is not known; only what no kind can be
        # is refused.
        ("DELETE", "/apis/example.com/v1/widgets", "deletecollection", ""),
        ("DELETE", "/apis/example.com/v1/namespaces/d/widgets/w", "delete", "d"),
        ("PATCH", "/apis/example.com/v1/namespaces/d/widgets/w/frobnicate", "patch", "d"),
        # An unknown resource of a built-in group (a newer Kubernetes): judged as it reads.
        ("DELETE", "/apis/apps/v1/namespaces/d/newthings/x", "delete", "d"),
    ],
)
def test_served_routes_classify(method: str, path: str, verb: str, namespace: str) -> None:
    info = classify_request(method, path)
    assert (info.verb, info.namespace) == (verb, namespace)
    assert info.served


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PATCH", "/api/v1/namespaces/default/pods/my-pod/scale"),
        ("PUT", "/api/v1/namespaces/default/configmaps/c/status"),
        ("POST", "/api/v1/namespaces/default/services/s/eviction"),
        ("POST", "/apis/apps/v1/namespaces/default/deployments/web/exec"),
        ("PATCH", "/api/v1/nodes/n1/scale"),
    ],
)
def test_a_subresource_the_kind_does_not_have_is_not_judged(method: str, path: str) -> None:
    # The API server answers 404 itself: no admission operation, no lock can match.
    info = classify_request(method, path)
    assert not info.served
    assert info.is_mutation
    assert info.operation is None


@pytest.mark.parametrize(
    ("path", "subresource"),
    [
        ("/apis/apps/v1/namespaces/default/deployments/web/scale", "scale"),
        ("/api/v1/namespaces/default/replicationcontrollers/rc/scale", "scale"),
        ("/api/v1/namespaces/default/pods/my-pod/ephemeralcontainers", "ephemeralcontainers"),
        ("/api/v1/namespaces/default/pods/my-pod/status", "status"),
        ("/apis/example.com/v1/namespaces/default/widgets/w/scale", "scale"),
    ],
)
def test_subresources_the_kind_has_are_judged(path: str, subresource: str) -> None:
    info = classify_request("PATCH", path)
    assert (info.subresource, info.served, info.operation) == (subresource, True, Operation.UPDATE)


def test_unserved_reads_raise_too() -> None:
    # The addon lets unclassifiable reads through; the error says why it could not classify.
    with pytest.raises(UnservedRouteError):
        classify_request("GET", "/api/v1/pods/my-pod")


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/nodes/n1/proxy/./exec/default/my-pod/c?command=sh",
        "/api/v1/nodes/n1/proxy/x/../exec/default/my-pod/c?command=sh",
        "/api/v1/nodes/n1/proxy/%2E/exec/default/my-pod/c",
        "/api/v1/nodes/n1/proxy/x/%2e%2E/exec/default/my-pod/c",
        "/api/v1/nodes/n1/proxy/x%2F..%2Fexec/default/my-pod/c",
        "/api/v1/nodes/n1/proxy/exec/default/my-pod/..",
        "/api/v1/namespaces/default/pods/my-pod/proxy/a/../b",
        "/api/v1/namespaces/default/services/web:80/proxy/./",
    ],
)
def test_dot_segments_after_a_proxy_subresource_are_refused(path: str) -> None:
    # The kubelet cleans the path it is handed: .../proxy/x/../exec/... is exec there.
    with pytest.raises(ClassificationError, match="segment"):
        classify_request("POST", path)


def test_a_proxy_tail_without_dot_segments_classifies() -> None:
    info = classify_request("GET", "/api/v1/namespaces/default/pods/my-pod/proxy/a.b/..c/")
    assert (info.verb, info.name, info.subresource) == ("connect", "my-pod", "proxy")


# ---------------------------------------------------------------------------------------------
# Fuzzing: classification never crashes, raises only ClassificationError, and whatever it
# accepts names the same resource when re-encoded from what it understood.

_words = st.sampled_from(
    ["api", "apis", "v1", "apps", "example.com", "namespaces", "default", "team", "pods",
     "nodes", "n1", "deployments", "configmaps", "widgets", "my-pod", "my%2Dpod", "status",
     "scale", "eviction", "exec", "proxy", "attach", "portforward", "finalize", "watch",
     "https:my-pod:8443", "%2F", "%2E%2E", ".", "..", "", "a#b", "a b", "\u00e9", "%zz", "%C3",
     "x\r\ny", "\x00", "a\\b", "a:b", "@", "log"]
)  # fmt: skip
_query_pairs = st.lists(
    st.tuples(
        st.sampled_from(["dryRun", "labelSelector", "fieldSelector", "watch", "x", "a;b"]),
        st.sampled_from(["All", "aura=red", "metadata.name=my-pod", "1", "", "%", "#", "a b"])
        | st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=4),
    ),
    max_size=3,
)


def _reencode(info: RequestInfo) -> str:
    path = object_path(info) if info.name else collection_path(info)
    if info.subresource:
        path += "/" + quote(info.subresource, safe="")
    pairs = [(key, value) for key, values in info.query.items() for value in values]
    return path + ("?" + urlencode(pairs) if pairs else "")


def _shape(info: RequestInfo) -> tuple[object, ...]:
    return (info.verb, info.group, info.version, info.resource, info.subresource,
            info.namespace, info.name, info.dry_run, info.served, info.operation)  # fmt: skip


_good_words = st.sampled_from(
    ["pods", "my-pod", "deployments", "web", "configmaps", "c", "status", "scale", "eviction",
     "exec", "proxy", "nodes", "n1", "widgets", "w", "namespaces", "team", "default"]
)  # fmt: skip
# Mostly words that make routable paths, so that accepted mutations are common.
_word = st.one_of(
    _good_words,
    _good_words,
    _good_words,
    _good_words,
    _words,
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=5),
)
_segments = st.tuples(
    st.sampled_from([["api", "v1"], ["apis", "apps", "v1"], ["apis", "example.com", "v1"]])
    | st.lists(_word, max_size=3),
    st.sampled_from([[], ["namespaces", "default"]]) | st.lists(_word, max_size=2),
    st.lists(_word, min_size=1, max_size=5),
).map(lambda parts: [*parts[0], *parts[1], *parts[2]])


@settings(max_examples=200, deadline=None)
# A namespace's status under a group that has no namespaces: not scoped by the namespace.
@example("POST", ["apis", "apps", "v1", "namespaces", "default", "status"], [], False)
@given(
    st.sampled_from(["GET", "OPTIONS", "POST", "PUT", "PATCH", "DELETE", "DELETE"]),
    _segments,
    _query_pairs,
    st.booleans(),
)
def test_classify_request_fuzz_raises_only_classification_errors_and_round_trips(
    method: str, segments: list[str], pairs: list[tuple[str, str]], raw_query: bool
) -> None:
    query = "&".join(f"{k}={v}" for k, v in pairs) if raw_query else urlencode(pairs)
    target = "/" + "/".join(segments) + ("?" + query if query else "")
    try:
        info = classify_request(method, target)
    except ClassificationError:
        return
    # Accepted: the target keeps to the grammar, and what was understood, written back as a
    # path, is understood the same way (the object judged is the object addressed).
    check_target(target)
    if not info.is_mutation:
        return
    event(f"round-trip {info.verb}")
    again = classify_request(method, _reencode(info))
    assert _shape(again) == _shape(info), (target, _reencode(info))


def test_resource_path_of_collections_and_objects() -> None:
    rs = ResourceRef("apps", "v1", "replicasets")
    assert resource_path(rs) == "/apis/apps/v1/replicasets"
    assert resource_path(rs, "shop") == "/apis/apps/v1/namespaces/shop/replicasets"
    pods = ResourceRef("", "v1", "pods")
    assert resource_path(pods, "shop", "a b") == "/api/v1/namespaces/shop/pods/a%20b"
    assert resource_path(ResourceRef("", "v1", "nodes"), name="n1") == "/api/v1/nodes/n1"
