"""JSON patch, merge patch, strategic merge patch and the content-type dispatch."""

from __future__ import annotations

import contextlib
import copy
import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from klockproxy.core.errors import PatchError
from klockproxy.core.patches import (
    PatchTestFailedError,
    UnsupportedPatchError,
    apply_patch,
    json_equal,
    json_patch,
    kind_key_of,
    labels_after_patch,
    leaves_metadata_but_annotations,
    merge_patch,
    parse_pointer,
    strategic_merge_patch,
)
from klockproxy.sandbox import bodies

POD = ("", "Pod")
DEPLOYMENT = ("apps", "Deployment")


def pod(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "default", "labels": {"app": "web", "tier": "1"}},
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": "nginx:1",
                    "ports": [{"containerPort": 80}, {"containerPort": 443}],
                    "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                },
                {"name": "sidecar", "image": "busybox"},
            ],
            "tolerations": [{"key": "a", "operator": "Exists"}],
            **spec,
        },
    }


# --------------------------------------------------------------------------------------------
# RFC 6902
# --------------------------------------------------------------------------------------------


def test_pointer_unescapes_tilde_and_slash_in_the_right_order() -> None:
    assert parse_pointer("") == []
    assert parse_pointer("/a~1b/c~0d/~01") == ["a/b", "c~d", "~1"]
    assert parse_pointer("/") == [""]


@pytest.mark.parametrize("pointer", ["a", "/a~2", "/a~", "/~x"])
def test_pointer_rejects_bad_syntax(pointer: str) -> None:
    with pytest.raises(PatchError):
        parse_pointer(pointer)


def test_rfc6902_examples() -> None:
    doc = {"foo": "bar"}
    assert json_patch(doc, [{"op": "add", "path": "/baz", "value": "qux"}]) == {
        "foo": "bar",
        "baz": "qux",
    }
    assert json_patch({"foo": ["bar", "baz"]}, [{"op": "add", "path": "/foo/1", "value": "q"}]) == {
        "foo": ["bar", "q", "baz"]
    }
    assert json_patch({"foo": [1, 2]}, [{"op": "add", "path": "/foo/-", "value": 3}]) == {
        "foo": [1, 2, 3]
    }
    assert json_patch({"a": 1, "b": 2}, [{"op": "remove", "path": "/b"}]) == {"a": 1}
    assert json_patch({"a": [1, 2, 3]}, [{"op": "remove", "path": "/a/1"}]) == {"a": [1, 3]}
    assert json_patch({"a": 1}, [{"op": "replace", "path": "/a", "value": 5}]) == {"a": 5}
    moved = json_patch(
        {"foo": {"bar": "baz", "waldo": "fred"}, "qux": {"corge": "grault"}},
        [{"op": "move", "from": "/foo/waldo", "path": "/qux/thud"}],
    )
    assert moved == {"foo": {"bar": "baz"}, "qux": {"corge": "grault", "thud": "fred"}}
    assert json_patch(
        {"foo": ["all", "grass", "cows", "eat"]},
        [{"op": "move", "from": "/foo/1", "path": "/foo/3"}],
    ) == {"foo": ["all", "cows", "eat", "grass"]}
    assert json_patch({"a": {"b": 1}}, [{"op": "copy", "from": "/a", "path": "/c"}]) == {
        "a": {"b": 1},
        "c": {"b": 1},
    }
    assert json_patch({"/": 9, "~": 8}, [{"op": "test", "path": "/~1", "value": 9}]) == {
        "/": 9,
        "~": 8,
    }
    # RFC 6902 lets "add" replace the root; the API server's library refuses it, so does the core.
    with pytest.raises(PatchError, match="root"):
        json_patch({"a": 1}, [{"op": "add", "path": "", "value": [1]}])
    assert json_patch({"a": 1}, [{"op": "replace", "path": "", "value": {"b": 2}}]) == {"b": 2}


def test_negative_array_indices_count_from_the_end_as_the_api_server_does() -> None:
    doc = {"l": ["a", "b", "c"]}
    assert json_patch(doc, [{"op": "remove", "path": "/l/-1"}]) == {"l": ["a", "b"]}
    assert json_patch(doc, [{"op": "replace", "path": "/l/-3", "value": "z"}]) == {
        "l": ["z", "b", "c"]
    }
    # For an insertion -1 is the place after the last element, -4 the first place.
    assert json_patch(doc, [{"op": "add", "path": "/l/-1", "value": "d"}])["l"][-1] == "d"
    assert json_patch(doc, [{"op": "add", "path": "/l/-4", "value": "d"}])["l"][0] == "d"
    for op in ("remove", "test"):
        with pytest.raises(PatchError, match="out of range"):
            json_patch(doc, [{"op": op, "path": "/l/-4", "value": "a"}])


def test_labels_via_json_patch_with_escaped_key() -> None:
    obj = pod()
    out = json_patch(
        obj,
        [
            {"op": "add", "path": "/metadata/labels/app.kubernetes.io~1name", "value": "x"},
            {"op": "remove", "path": "/metadata/labels/tier"},
        ],
    )
    assert out["metadata"]["labels"] == {"app": "web", "app.kubernetes.io/name": "x"}


@pytest.mark.parametrize(
    "ops",
    [
        [{"op": "test", "path": "/a", "value": 2}],
        [{"op": "test", "path": "/a", "value": True}],  # true is not 1
        [{"op": "remove", "path": "/missing"}],
        [{"op": "replace", "path": "/missing", "value": 1}],
        [{"op": "add", "path": "/missing/deeper", "value": 1}],
        [{"op": "add", "path": "/l/5", "value": 1}],
        [{"op": "add", "path": "/l/01", "value": 1}],
        [{"op": "add", "path": "/l/-3", "value": 1}],
        [{"op": "remove", "path": "/l/-0"}],
        [{"op": "remove", "path": "/l/-"}],
        [{"op": "add", "path": "/a/x", "value": 1}],
        [{"op": "move", "from": "/o", "path": "/o/inner"}],
        [{"op": "copy", "from": "/nope", "path": "/x"}],
        [{"op": "frobnicate", "path": "/a"}],
        [{"op": "add", "path": "/a"}],
        [{"path": "/a"}],
        [{"op": "remove", "path": ""}],
        ["not an object"],
        {"op": "add"},
    ],
)
def test_invalid_json_patches_raise(ops: Any) -> None:
    with pytest.raises(PatchError):
        json_patch({"a": 1, "l": [0], "o": {}}, ops)


def test_failed_test_operation_has_its_own_error() -> None:
    with pytest.raises(PatchTestFailedError, match="test"):
        apply_patch(
            {"a": 1}, b'[{"op":"test","path":"/a","value":2}]', "application/json-patch+json"
        )


def test_json_equal_semantics() -> None:
    assert json_equal(1, 1.0)
    assert not json_equal(1, True)
    assert not json_equal(0, False)
    assert json_equal({"a": [1, {"b": None}]}, {"a": [1.0, {"b": None}]})
    assert not json_equal([1, 2], [2, 1])
    assert not json_equal("1", 1)


def test_a_failed_test_leaves_the_input_untouched() -> None:
    doc = {"a": {"b": [1]}}
    before = copy.deepcopy(doc)
    with pytest.raises(PatchError):
        json_patch(doc, [{"op": "add", "path": "/a/b/-", "value": 2}, {"op": "test", "path": "/x"}])
    assert doc == before


# --------------------------------------------------------------------------------------------
# RFC 7386
# --------------------------------------------------------------------------------------------


def test_rfc7386_examples() -> None:
    cases = [
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        (["a", "b"], ["c", "d"], ["c", "d"]),
        ({"a": "b"}, ["c"], ["c"]),
        ({"a": "foo"}, None, None),
        ({"a": "foo"}, "bar", "bar"),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ]
    for doc, patch, expected in cases:
        assert merge_patch(doc, patch) == expected, (doc, patch)


def test_merge_patch_of_labels_as_kubectl_label_sends_it() -> None:
    out = apply_patch(
        pod(), b'{"metadata":{"labels":{"aura":"red","tier":null}}}', "application/merge-patch+json"
    )
    assert out["metadata"]["labels"] == {"app": "web", "aura": "red"}


# --------------------------------------------------------------------------------------------
# Strategic merge patch
# --------------------------------------------------------------------------------------------


def test_smp_merges_containers_by_name_and_ports_by_container_port() -> None:
    patch = {
        "spec": {
            "containers": [
                {"name": "app", "image": "nginx:2", "ports": [{"containerPort": 8080}]},
                {"name": "new", "image": "redis"},
            ]
        }
    }
    out = strategic_merge_patch(pod(), patch, POD)
    containers = out["spec"]["containers"]
    # The API server's order: the patch's items in its order; a server-only item goes before a
    # patch item only when both are in the live list and it came first there.
    assert [c["name"] for c in containers] == ["app", "new", "sidecar"]
    assert containers[0]["image"] == "nginx:2"
    assert [p["containerPort"] for p in containers[0]["ports"]] == [8080, 80, 443]
    assert containers[0]["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]


def test_smp_env_by_name_and_delete_directive_in_a_list() -> None:
    patch = {
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "env": [{"name": "A", "value": "9"}, {"name": "B", "$patch": "delete"}],
                }
            ]
        }
    }
    out = strategic_merge_patch(pod(), patch, POD)
    assert out["spec"]["containers"][0]["env"] == [{"name": "A", "value": "9"}]


def test_smp_tolerations_are_replaced_and_null_deletes() -> None:
    patch = {
        "metadata": {"labels": {"tier": None, "aura": "red"}},
        "spec": {"tolerations": [{"key": "b", "operator": "Exists"}]},
    }
    out = strategic_merge_patch(pod(), patch, POD)
    assert out["spec"]["tolerations"] == [{"key": "b", "operator": "Exists"}]
    assert out["metadata"]["labels"] == {"app": "web", "aura": "red"}


def test_smp_replace_directives() -> None:
    out = strategic_merge_patch(
        pod(), {"metadata": {"labels": {"$patch": "replace", "only": "this"}}}, POD
    )
    assert out["metadata"]["labels"] == {"only": "this"}
    out = strategic_merge_patch(
        pod(),
        {"spec": {"containers": [{"name": "solo", "image": "x"}, {"$patch": "replace"}]}},
        POD,
    )
    assert out["spec"]["containers"] == [{"name": "solo", "image": "x"}]
    out = strategic_merge_patch(pod(), {"metadata": {"labels": {"$patch": "delete"}}}, POD)
    assert out["metadata"]["labels"] == {}
    out = strategic_merge_patch(pod(), {"metadata": {"labels": {"$patch": "merge", "x": "1"}}}, POD)
    assert out["metadata"]["labels"] == {"app": "web", "tier": "1", "x": "1"}


def test_smp_retain_keys() -> None:
    doc = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}},
    }
    patch = {"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}
    out = strategic_merge_patch(doc, patch, DEPLOYMENT)
    assert out["spec"]["strategy"] == {"type": "Recreate"}


def test_smp_primitive_lists_finalizers_merge_and_delete() -> None:
    doc = {"kind": "ConfigMap", "metadata": {"name": "c", "finalizers": ["a", "b"]}}
    out = strategic_merge_patch(doc, {"metadata": {"finalizers": ["b", "c"]}}, ("", "ConfigMap"))
    assert out["metadata"]["finalizers"] == ["a", "b", "c"]
    out = strategic_merge_patch(
        doc, {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}, ("", "ConfigMap")
    )
    assert out["metadata"]["finalizers"] == ["b"]


def test_smp_set_element_order() -> None:
    patch = {
        "spec": {
            "$setElementOrder/containers": [{"name": "sidecar"}, {"name": "app"}],
            "containers": [{"name": "app", "image": "nginx:3"}],
        }
    }
    out = strategic_merge_patch(pod(), patch, POD)
    assert [c["name"] for c in out["spec"]["containers"]] == ["sidecar", "app"]
    assert out["spec"]["containers"][1]["image"] == "nginx:3"


def test_smp_deployment_template_is_a_pod_spec_and_conditions_merge_by_type() -> None:
    doc = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d", "labels": {"app": "d"}},
        "spec": {
            "replicas": 1,
            "template": {
                "metadata": {"labels": {"app": "d"}},
                "spec": {"containers": [{"name": "a", "image": "1"}, {"name": "b", "image": "1"}]},
            },
        },
        "status": {"conditions": [{"type": "Available", "status": "True"}]},
    }
    # What `kubectl set image deployment/d a=2` sends.
    patch = {"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "2"}]}}}}
    out = strategic_merge_patch(doc, patch, DEPLOYMENT)
    assert out["spec"]["template"]["spec"]["containers"] == [
        {"name": "a", "image": "2"},
        {"name": "b", "image": "1"},
    ]
    status_patch = {"status": {"conditions": [{"type": "Progressing", "status": "True"}]}}
    out = strategic_merge_patch(doc, status_patch, DEPLOYMENT)
    # A new item goes before the server-only ones (the API server's order).
    assert [c["type"] for c in out["status"]["conditions"]] == ["Progressing", "Available"]


def test_smp_service_ports_and_owner_references() -> None:
    svc = {
        "kind": "Service",
        "metadata": {"ownerReferences": [{"uid": "1", "name": "a"}]},
        "spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}]},
    }
    patch = {
        "metadata": {"ownerReferences": [{"uid": "2", "name": "b"}]},
        "spec": {"ports": [{"port": 80, "targetPort": 8080}]},
    }
    out = strategic_merge_patch(svc, patch, ("", "Service"))
    assert out["spec"]["ports"][0] == {"port": 80, "name": "http", "targetPort": 8080}
    assert len(out["spec"]["ports"]) == 2
    assert [r["uid"] for r in out["metadata"]["ownerReferences"]] == ["2", "1"]


def test_smp_a_new_map_carrying_a_patch_directive_is_dropped_as_the_api_server_drops_it() -> None:
    # strategicpatch's removeDirectives: a new value that is a map with $patch (whatever its
    # value) is not stored, nor is such a map nested in a new value or listed in a new list.
    patch = {
        "metadata": {"labels": {"$patch": "replace", "aura": "red"}},
        "spec": {"new": {"keep": 1, "inner": {"$patch": "merge", "x": 1}, "l": [{"$patch": "x"}]}},
    }
    out = strategic_merge_patch({"kind": "Pod", "metadata": {"name": "p"}}, patch, POD)
    assert out == {"kind": "Pod", "metadata": {"name": "p"}, "spec": {"new": {"keep": 1, "l": []}}}


def test_smp_new_values_are_stored_without_directives_or_nulls() -> None:
    out = strategic_merge_patch(
        {"kind": "Pod"},
        {"metadata": {"labels": {"a": "1", "b": None, "$retainKeys": ["a"]}}},
        POD,
    )
    assert out["metadata"] == {"labels": {"a": "1"}}


@pytest.mark.parametrize(
    "patch",
    [
        {"spec": {"containers": [{"image": "no-name"}]}},
        {"spec": {"containers": ["scalar"]}},
        {"metadata": {"$patch": "explode"}},
        {"spec": {"$retainKeys": "containers"}},
        {"metadata": {"$deleteFromPrimitiveList/finalizers": "a"}},
        ["not", "an", "object"],
    ],
)
def test_smp_errors(patch: Any) -> None:
    with pytest.raises(PatchError):
        strategic_merge_patch(pod(), patch, POD)


def test_smp_unknown_kind_is_unsupported() -> None:
    lock = {"apiVersion": "klock.rnemet.dev/v1", "kind": "Lock", "metadata": {"name": "l"}}
    with pytest.raises(UnsupportedPatchError, match=r"Lock\.klock\.rnemet\.dev"):
        strategic_merge_patch(lock, {"metadata": {"labels": {"a": "b"}}}, kind_key_of(lock))
    with pytest.raises(UnsupportedPatchError):
        apply_patch(lock, b'{"spec":{}}', "application/strategic-merge-patch+json")


# --------------------------------------------------------------------------------------------
# apply_patch dispatch
# --------------------------------------------------------------------------------------------


def test_kind_key_of() -> None:
    assert kind_key_of({"apiVersion": "v1", "kind": "Pod"}) == ("", "Pod")
    assert kind_key_of({"apiVersion": "apps/v1", "kind": "Deployment"}) == DEPLOYMENT
    assert kind_key_of({}) == ("", "")


def test_apply_patch_dispatches_each_type() -> None:
    obj = pod()
    out = apply_patch(
        obj,
        b'[{"op":"replace","path":"/metadata/labels/app","value":"db"}]',
        "application/json-patch+json; charset=utf-8",
    )
    assert out["metadata"]["labels"]["app"] == "db"
    out = apply_patch(
        obj,
        b'{"spec":{"containers":[{"name":"app","image":"x"}]}}',
        "application/strategic-merge-patch+json",
    )
    assert len(out["spec"]["containers"]) == 2
    out = apply_patch(
        obj, b'{"spec":{"containers":[{"name":"app","image":"x"}]}}', "application/merge-patch+json"
    )
    assert out["spec"]["containers"] == [{"name": "app", "image": "x"}]


def test_server_side_apply_yaml_and_json_bodies() -> None:
    body = b"""apiVersion: v1
kind: Pod
metadata:
  name: p
  labels:
    aura: red
    since: 2024-01-01
spec:
  containers:
  - name: app
    image: nginx:9
"""
    out = apply_patch(pod(), body, "application/apply-patch+yaml")
    assert out["metadata"]["labels"] == {
        "app": "web",
        "tier": "1",
        "aura": "red",
        "since": "2024-01-01",
    }
    assert [c["image"] for c in out["spec"]["containers"]] == ["nginx:9", "busybox"]
    as_json = json.dumps({"metadata": {"labels": {"x": "y"}}}).encode()
    out = apply_patch(pod(), as_json, "application/apply-patch+yaml")
    assert out["metadata"]["labels"]["x"] == "y"


def test_server_side_apply_of_a_custom_resource_is_a_merge() -> None:
    lock = {
        "apiVersion": "klock.rnemet.dev/v1",
        "kind": "Lock",
        "metadata": {"name": "l", "labels": {"a": "1"}},
        "spec": {"operations": ["UPDATE", "DELETE"]},
    }
    out = apply_patch(lock, b"spec:\n  operations: [CREATE]\n", "application/apply-patch+yaml")
    assert out["spec"]["operations"] == ["CREATE"]
    assert out["metadata"]["labels"] == {"a": "1"}


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"{not json", "application/merge-patch+json"),
        (b"\xff\xfe", "application/json-patch+json"),
        (b'{"op":"add"}', "application/json-patch+json"),
        (b"[1]", "application/strategic-merge-patch+json"),
        (b'{"a": NaN}', "application/merge-patch+json"),
        (b"a: 1\n---\nb: 2\n", "application/apply-patch+yaml"),
        (b"- 1\n- 2\n", "application/apply-patch+yaml"),
        (b"", "application/apply-patch+yaml"),
        (b"a: [unclosed", "application/apply-patch+yaml"),
        (b"? [1, 2]\n: x\n", "application/apply-patch+yaml"),
        (b"a: !!binary aGVsbG8=\n", "application/apply-patch+yaml"),
        (b"a: .nan\n", "application/apply-patch+yaml"),
        (b'"just a string"', "application/merge-patch+json"),
    ],
)
def test_apply_patch_garbage_is_a_patch_error(body: bytes, content_type: str) -> None:
    with pytest.raises(PatchError):
        apply_patch(pod(), body, content_type)


def test_apply_patch_unknown_content_type_is_unsupported() -> None:
    with pytest.raises(UnsupportedPatchError):
        apply_patch(pod(), b"{}", "application/json")


def test_inputs_are_never_mutated() -> None:
    obj = pod()
    before = copy.deepcopy(obj)
    smp = {
        "metadata": {"labels": {"app": None, "$patch": "merge"}},
        "spec": {
            "containers": [
                {"name": "app", "env": [{"name": "A", "$patch": "delete"}], "image": "z"}
            ],
            "$setElementOrder/containers": [{"name": "sidecar"}, {"name": "app"}],
        },
    }
    smp_before = copy.deepcopy(smp)
    out = strategic_merge_patch(obj, smp, POD)
    out["spec"]["containers"][1]["ports"].append({"containerPort": 1})
    merge_patch(obj, {"spec": {"containers": None}})["metadata"]["labels"]["z"] = "1"
    json_patch(obj, [{"op": "remove", "path": "/spec/containers/0/ports/0"}])
    for ctype in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
        apply_patch(obj, json.dumps(smp).encode(), ctype)
    assert obj == before
    assert smp == smp_before


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=20,
)


@given(json_values, json_values)
def test_merge_patch_never_mutates_and_is_idempotent(doc: Any, patch: Any) -> None:
    doc_before = copy.deepcopy(doc)
    patch_before = copy.deepcopy(patch)
    once = merge_patch(doc, patch)
    assert merge_patch(once, patch) == once
    assert doc == doc_before
    assert patch == patch_before


@given(
    st.binary(max_size=64),
    st.sampled_from(
        [
            "application/json-patch+json",
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
        ]
    ),
)
def test_garbage_patches_only_raise_patch_error(body: bytes, content_type: str) -> None:
    with contextlib.suppress(PatchError):
        apply_patch(pod(), body, content_type)


@given(st.binary(max_size=64))
def test_garbage_apply_bodies_only_raise_patch_error(body: bytes) -> None:
    with contextlib.suppress(PatchError):
        apply_patch(pod(), body, "application/apply-patch+yaml")


# --------------------------------------------------------------------------------------------
# What a patch cannot change
# --------------------------------------------------------------------------------------------

JSON_PATCH_TYPE = "application/json-patch+json"
MERGE_TYPE = "application/merge-patch+json"
SMP_TYPE = "application/strategic-merge-patch+json"


@pytest.mark.parametrize(
    ("patch", "ctype", "leaves"),
    [
        ({"data": {"a": "1"}, "spec": None}, MERGE_TYPE, True),
        # kubectl annotate; kubectl apply of data with its last-applied annotation.
        ({"metadata": {"annotations": {"a": "1", "b": None}}}, MERGE_TYPE, True),
        ({"data": {"a": "1"}, "metadata": {"annotations": {"a": "1"}}}, SMP_TYPE, True),
        ({"metadata": {"annotations": None}}, MERGE_TYPE, True),
        ({"metadata": {}}, MERGE_TYPE, True),
        ({"metadata": {"annotations": {"a": "1"}, "labels": {}}}, MERGE_TYPE, False),
        ({"metadata": {"annotations": {}, "resourceVersion": "1"}}, MERGE_TYPE, False),
        ({"metadata": {"Annotations": {"a": "1"}}}, MERGE_TYPE, False),  # spelt exactly only
        ({"Metadata": {"annotations": {"a": "1"}}}, MERGE_TYPE, False),
        ({"Metadata": {"labels": {"a": "1"}}}, MERGE_TYPE, False),  # case-insensitive decoders
        ({"metadata": None}, MERGE_TYPE, False),
        ({"metadata": {"annotations": "x"}}, MERGE_TYPE, False),
        ({"metadata": {"annotations": {"$patch": "delete"}}}, MERGE_TYPE, True),  # a key
        ({"metadata": {"annotations": {"$patch": "delete"}}}, SMP_TYPE, False),  # a directive
        ({"metadata": {"$patch": "replace", "annotations": {}}}, SMP_TYPE, False),
        (
            {"metadata": {"annotations": {"a": "1"}, "$retainKeys": ["annotations"]}},
            SMP_TYPE,
            False,
        ),
        ([], MERGE_TYPE, False),  # not an object: replaces the whole object
        ("x", MERGE_TYPE, False),
        ({"spec": {"$patch": "replace", "a": 1}}, SMP_TYPE, True),  # a directive in spec only
        ({"$patch": "replace", "data": {}}, SMP_TYPE, False),
        ({"$retainKeys": ["data"], "data": {}}, SMP_TYPE, False),
        ({"$setElementOrder/metadata": []}, SMP_TYPE, False),
        ([{"op": "add", "path": "/data/a", "value": "1"}], JSON_PATCH_TYPE, True),
        ([{"op": "test", "path": "/data", "value": {}}], JSON_PATCH_TYPE, True),
        ([{"op": "copy", "from": "/metadata/labels", "path": "/data"}], JSON_PATCH_TYPE, False),
        ([{"op": "move", "from": "/data", "path": "/metadata/labels"}], JSON_PATCH_TYPE, False),
        ([{"op": "replace", "path": "", "value": {}}], JSON_PATCH_TYPE, False),
        ([{"op": "remove", "path": "/metadata"}], JSON_PATCH_TYPE, False),
        ([{"op": "add", "path": "/metadata/annotations/a", "value": "1"}], JSON_PATCH_TYPE, True),
        ([{"op": "remove", "path": "/metadata/annotations"}], JSON_PATCH_TYPE, True),
        ([{"op": "add", "path": "/metadata/Annotations", "value": {}}], JSON_PATCH_TYPE, False),
        ([{"op": "add", "path": "/Metadata/annotations", "value": {}}], JSON_PATCH_TYPE, False),
        (
            [{"op": "move", "from": "/metadata/labels", "path": "/metadata/annotations"}],
            JSON_PATCH_TYPE,
            False,
        ),
        (
            [{"op": "copy", "from": "/metadata/annotations", "path": "/metadata/labels"}],
            JSON_PATCH_TYPE,
            False,
        ),
        (
            [{"op": "copy", "from": "/metadata/annotations/a", "path": "/data/a"}],
            JSON_PATCH_TYPE,
            True,
        ),
        ([{"op": "remove", "path": "/meta~1data"}], JSON_PATCH_TYPE, True),  # key "meta/data"
        ([{"op": "remove"}], JSON_PATCH_TYPE, False),
        ([{"op": "remove", "path": "data"}], JSON_PATCH_TYPE, False),  # not a pointer
        ([{"op": "remove", "path": "/~2"}], JSON_PATCH_TYPE, False),
        (["remove"], JSON_PATCH_TYPE, False),
        ({"data": {}}, JSON_PATCH_TYPE, False),
        ({"data": {}}, "application/apply-patch+yaml", False),  # field ownership may drop labels
        ({"data": {}}, "application/json", False),
    ],
)
def test_leaves_metadata_but_annotations(patch: Any, ctype: str, leaves: bool) -> None:
    assert leaves_metadata_but_annotations(patch, ctype) is leaves


_keys = st.sampled_from(
    ["metadata", "Metadata", "annotations", "data", "spec", "labels", "$patch", "a"]
)
_values = st.recursive(
    st.none() | st.text(max_size=3) | st.integers(-2, 2),
    lambda inner: st.dictionaries(_keys, inner, max_size=3) | st.lists(inner, max_size=2),
    max_leaves=6,
)
# Pointers into the object below: mostly into its metadata, where the patches that must
# not be vouched for act.
_pointers = st.tuples(
    st.sampled_from(["", "metadata", "metadata", "Metadata", "data", "meta~1data"]),
    st.lists(st.sampled_from(["annotations", "labels", "aura", "a", "0", "-"]), max_size=2),
).map(lambda p: "".join("/" + t for t in ([p[0], *p[1]] if p[0] else [])))
_ops = st.fixed_dictionaries(
    {"op": st.sampled_from(["add", "remove", "replace", "move", "copy", "test"]),
     "path": _pointers, "value": _values},
    optional={"from": _pointers},
)  # fmt: skip
# Merge patches of the metadata itself.
_metadata_patches = st.fixed_dictionaries(
    {"metadata": st.dictionaries(
        st.sampled_from(["annotations", "labels", "Labels", "finalizers", "$patch"]), _values,
        max_size=2)},
    optional={"data": _values},
)  # fmt: skip
_object = {
    "apiVersion": "v1",
    "kind": "ConfigMap",
    "metadata": {
        "name": "cfg",
        "namespace": "shop",
        "labels": {"aura": "red"},
        "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "o", "uid": "u"}],
        "finalizers": ["f"],
        "annotations": {"a": "1"},
    },
    "data": {"a": "1"},
}


def _without_annotations(obj: Any) -> Any:
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    return {k: v for k, v in meta.items() if k != "annotations"} if isinstance(meta, dict) else meta


@given(
    case=st.tuples(st.dictionaries(_keys, _values, max_size=4) | _values | _metadata_patches,
                   st.sampled_from([MERGE_TYPE, SMP_TYPE]))
    | st.tuples(st.lists(_ops, min_size=1, max_size=3), st.just(JSON_PATCH_TYPE)),
)  # fmt: skip
@settings(max_examples=200)
def test_a_patch_said_to_leave_the_metadata_leaves_it_in_every_engine(
    case: tuple[Any, str],
) -> None:
    """Whatever ``leaves_metadata_but_annotations`` vouches for keeps the metadata exactly,
    annotations aside, in the proxy's engine and in the sandbox's own (an independent
    implementation: ``jsonpatch`` and its merge patch), wherever they can apply the patch
    at all."""
    patch, ctype = case
    if not leaves_metadata_but_annotations(patch, ctype):
        return
    raw = json.dumps(patch).encode()
    results = []
    with contextlib.suppress(PatchError):
        results.append(apply_patch(copy.deepcopy(_object), raw, ctype))
    if ctype != SMP_TYPE:
        with contextlib.suppress(Exception):
            results.append(
                bodies.apply_json_or_merge_patch(
                    copy.deepcopy(_object), raw, json_patch_type=ctype == JSON_PATCH_TYPE
                )
            )
    for result in results:
        assert isinstance(result, dict)
        assert _without_annotations(result) == _without_annotations(_object)


@pytest.mark.parametrize(
    ("patch", "ctype", "after"),
    [
        ({"metadata": {"labels": {"team": "a"}}}, MERGE_TYPE, {"aura": "red", "team": "a"}),
        ({"metadata": {"labels": {"aura": None}}}, SMP_TYPE, {}),
        ({"metadata": {"labels": {"aura": "blue", "x": None}}}, MERGE_TYPE, {"aura": "blue"}),
        ({"metadata": {"labels": None}}, MERGE_TYPE, {}),
        ({"metadata": {"labels": {}}, "data": {"a": "2"}}, SMP_TYPE, {"aura": "red"}),
        ({"metadata": {"labels": {"a": "1"}, "annotations": {"n": None}}}, MERGE_TYPE,
         {"aura": "red", "a": "1"}),
        ({"metadata": {"labels": {"$patch": "x"}}}, MERGE_TYPE, {"aura": "red", "$patch": "x"}),
        ({"metadata": {"labels": {"$patch": "delete"}}}, SMP_TYPE, None),  # a directive
        ({"metadata": {"labels": {"a": "1"}, "$patch": "replace"}}, SMP_TYPE, None),
        ({"$patch": "replace", "metadata": {"labels": {"a": "1"}}}, SMP_TYPE, None),
        ({"metadata": {"labels": {"a": "1"}, "annotations": {"$patch": "delete"}}}, SMP_TYPE,
         None),
        ({"metadata": {"labels": {"a": 1}}}, MERGE_TYPE, None),  # the API server says 400
        ({"metadata": {"labels": {"a": {"b": "c"}}}}, MERGE_TYPE, None),
        ({"metadata": {"labels": ["a"]}}, MERGE_TYPE, None),
        ({"metadata": {"labels": {"a": "1"}, "resourceVersion": "5"}}, MERGE_TYPE, None),
        ({"metadata": {"labels": {"a": "1"}, "finalizers": []}}, MERGE_TYPE, None),
        ({"metadata": {"Labels": {"a": "1"}}}, MERGE_TYPE, None),
        ({"metadata": {"annotations": {"a": "1"}}}, MERGE_TYPE, None),  # no labels: the other
        ({"Metadata": {"labels": {"a": "1"}}}, MERGE_TYPE, None),
        ({"metadata": {"labels": {"a": "1"}}, "METADATA": {}}, MERGE_TYPE, None),
        ({"metadata": None}, MERGE_TYPE, None),
        ([{"op": "add", "path": "/metadata/labels/a", "value": "1"}], JSON_PATCH_TYPE, None),
        ({"metadata": {"labels": {"a": "1"}}}, JSON_PATCH_TYPE, None),
        ({"metadata": {"labels": {"a": "1"}}}, "application/apply-patch+yaml", None),
    ],
)  # fmt: skip
def test_labels_after_patch(patch: Any, ctype: str, after: dict[str, str] | None) -> None:
    assert labels_after_patch(patch, ctype, {"aura": "red"}) == after


_label_values = st.none() | st.sampled_from(["red", "blue", "", "delete"]) | st.integers(0, 1)
_label_patches = st.fixed_dictionaries(
    {"metadata": st.fixed_dictionaries(
        {"labels": st.none() | st.dictionaries(
            st.sampled_from(["aura", "team", "$patch", "a"]), _label_values, max_size=3)},
        optional={"annotations": st.none() | st.dictionaries(
            st.sampled_from(["a", "$patch"]), st.none() | st.just("1"), max_size=2),
            "resourceVersion": st.just("5")})},
    optional={"data": _values, "$patch": st.just("replace")},
)  # fmt: skip


@given(
    patch=_label_patches | st.dictionaries(_keys, _values, max_size=4) | _metadata_patches,
    ctype=st.sampled_from([MERGE_TYPE, SMP_TYPE]),
    labels=st.dictionaries(st.sampled_from(["aura", "team", "a"]), st.sampled_from(["red", "x"])),
)  # fmt: skip
@example(  # a directive elsewhere makes the strategic patch fail as a whole
    patch={"metadata": {"labels": None}, "data": {"$patch": None}}, ctype=SMP_TYPE, labels={}
)
@settings(max_examples=300)
def test_the_labels_said_to_follow_a_patch_follow_it_in_every_engine(
    patch: Any, ctype: str, labels: dict[str, str]
) -> None:
    """Whatever ``labels_after_patch`` vouches for is what the proxy's engine and the
    sandbox's own (``jsonpatch``'s merge patch, an independent implementation) leave of the
    labels, the rest of the metadata, annotations aside, exactly as it was - wherever they
    can apply the patch at all."""
    after = labels_after_patch(patch, ctype, labels)
    if after is None:
        return
    obj = copy.deepcopy(_object)
    obj["metadata"]["labels"] = dict(labels)
    raw = json.dumps(patch).encode()
    results = []
    # A directive elsewhere (``{"data": {"$patch": null}}``) can make a strategic patch
    # fail as a whole: the API server then stores nothing either.
    with contextlib.suppress(PatchError):
        results.append(apply_patch(copy.deepcopy(obj), raw, ctype))
    if ctype == MERGE_TYPE:
        # A merge patch always applies: the proxy's engine and the sandbox's both answer.
        assert len(results) == 1
        results.append(
            bodies.apply_json_or_merge_patch(copy.deepcopy(obj), raw, json_patch_type=False)
        )
    for result in results:
        assert result["metadata"].get("labels") in ((after,) if after else ({}, None))
        rest = {k: v for k, v in result["metadata"].items() if k != "labels"}
        assert _without_annotations({"metadata": rest}) == _without_annotations(
            {"metadata": {k: v for k, v in obj["metadata"].items() if k != "labels"}}
        )
