"""Request body decoding (JSON, YAML, protobuf) and label extraction."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from klockproxy.core.codec import MAX_YAML_NODES, load_yaml_documents, media_type
from klockproxy.core.errors import DecodeError
from klockproxy.core.metadata import annotations_of, decode_body, labels_of
from klockproxy.core.protobuf import (
    UnsupportedProtobufError,
    encode_k8s_protobuf,
    encode_len_field,
    encode_map_entry,
    encode_string_field,
    encode_unknown,
)

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "protobuf"
POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "my-pod", "namespace": "default", "labels": {"aura": "red"}},
    "spec": {"containers": [{"name": "c", "image": "nginx"}]},
}
PROTOBUF = "application/vnd.kubernetes.protobuf"


def test_media_type() -> None:
    assert media_type("Application/JSON; charset=UTF-8") == "application/json"
    assert media_type("  application/yaml ") == "application/yaml"
    assert media_type("") == ""


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "APPLICATION/JSON",
        "application/merge-patch+json",
        "",  # the API server treats a missing Content-Type as JSON
    ],
)
def test_json_bodies(content_type: str) -> None:
    assert decode_body(json.dumps(POD).encode(), content_type) == POD


@pytest.mark.parametrize(
    "content_type", ["application/yaml", "application/apply-patch+yaml", "text/yaml"]
)
def test_yaml_bodies(content_type: str) -> None:
    body = b"""apiVersion: v1
kind: Pod
metadata:
  name: my-pod
  namespace: default
  labels:
    aura: red
spec:
  containers:
  - {name: c, image: nginx}
"""
    assert decode_body(body, content_type) == POD


def test_yaml_keeps_dates_as_strings_and_allows_a_leading_separator() -> None:
    body = b"---\nkind: ConfigMap\nmetadata:\n  labels:\n    since: 2024-01-01\n"
    assert labels_of(decode_body(body, "application/yaml")) == {"since": "2024-01-01"}


def test_protobuf_body_gives_api_version_kind_and_metadata() -> None:
    raw = encode_len_field(
        1,
        encode_string_field(1, "my-pod")
        + encode_string_field(3, "default")
        + encode_map_entry(11, "aura", "red")
        + encode_map_entry(12, "note", "x"),
    )
    obj = decode_body(encode_unknown("v1", "Pod", raw), PROTOBUF)
    assert obj == {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "my-pod",
            "namespace": "default",
            "labels": {"aura": "red"},
            "annotations": {"note": "x"},
        },
    }
    with pytest.raises(UnsupportedProtobufError):
        decode_body(encode_unknown("v1", "Pod", raw), PROTOBUF, strict_protobuf=True)


def test_golden_kubectl_protobuf_bodies() -> None:
    body = (GOLDEN / "deployment.pb").read_bytes()
    obj = decode_body(body, f"{PROTOBUF}; charset=utf-8", strict_protobuf=True)
    assert obj["kind"] == "Deployment"
    assert labels_of(obj) == {"app": "golden-dep2"}
    configmap = decode_body((GOLDEN / "configmap.pb").read_bytes(), PROTOBUF)
    assert configmap["metadata"]["namespace"] == "team-a"
    assert labels_of(configmap) == {}


def test_protobuf_labels_match_json_labels() -> None:
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "c", "labels": {"aura": "red", "x/y": ""}},
        "data": {"k": "v"},
    }
    from_pb = decode_body(encode_k8s_protobuf(cm), PROTOBUF)
    from_json = decode_body(json.dumps(cm).encode(), "application/json")
    assert labels_of(from_pb) == labels_of(from_json) == {"aura": "red", "x/y": ""}


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b"", "application/json", "empty request body"),
        (b"", PROTOBUF, "empty request body"),
        (b"{}", "application/xml", "unsupported content type"),
        (b"{}", "application/cbor", "unsupported content type"),
        (b"{", "application/json", "invalid JSON"),
        (b"[1, 2]", "application/json", "must be an object, not an array"),
        (b"null", "application/json", "not null"),
        (b'"s"', "application/json", "not a string"),
        (b'{"a": NaN}', "application/json", "NaN"),
        (b'{"a": Infinity}', "application/json", "Infinity"),
        (b'{"a": "\xff"}', "application/json", "invalid JSON"),
        (b"a: 1\n---\nb: 2\n", "application/yaml", "exactly one document, found 2"),
        (b"---\n", "application/yaml", "empty"),
        (b"# only a comment\n", "application/yaml", "exactly one document, found 0"),
        (b"- a\n", "application/yaml", "not an array"),
        (b"just text", "application/yaml", "not a string"),
        (b"a: [1\n", "application/yaml", "invalid YAML"),
        (b"? [1, 2]\n: x\n", "application/yaml", "unhashable key"),
        (b"1: x\n", "application/yaml", "non-string key"),
        (b"a: !!binary aGk=\n", "application/yaml", "unsupported value of type bytes"),
        (b"a: !!python/object:os.system ls\n", "application/yaml", "invalid YAML"),
        (b"a: .inf\n", "application/yaml", "non-finite"),
        (b"\xff\xfe\x00", "application/yaml", "invalid YAML"),
        (b"{}", PROTOBUF, "magic"),
    ],
)
def test_decode_errors_are_precise(body: bytes, content_type: str, message: str) -> None:
    with pytest.raises(DecodeError, match=message.replace("[", r"\[")):
        decode_body(body, content_type)


def test_yaml_alias_bombs_are_bounded() -> None:
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    for level in range(1, 8):
        refs = ", ".join([f"*a{level - 1}"] * 10)
        lines.append(f"a{level}: &a{level} [{refs}]")
    with pytest.raises(DecodeError, match=str(MAX_YAML_NODES)):
        load_yaml_documents("\n".join(lines).encode())


def test_labels_of() -> None:
    assert labels_of(POD) == {"aura": "red"}
    assert labels_of({}) == {}
    assert labels_of({"metadata": None}) == {}
    assert labels_of({"metadata": {}}) == {}
    assert labels_of({"metadata": {"labels": None}}) == {}
    labels = labels_of(POD)
    labels["new"] = "x"
    assert POD["metadata"]["labels"] == {"aura": "red"}  # type: ignore[index]
    assert annotations_of({"metadata": {"annotations": {"a": "b"}}}) == {"a": "b"}


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"metadata": []}, "metadata must be an object"),
        ({"metadata": {"labels": ["a"]}}, "metadata.labels must be an object"),
        ({"metadata": {"labels": {"a": 1}}}, r"metadata.labels\['a'\] must be a string"),
        ({"metadata": {"labels": {"a": None}}}, "not null"),
        ({"metadata": {"labels": {"a": True}}}, "not a boolean"),
    ],
)
def test_labels_of_rejects_non_strings(obj: dict[str, Any], message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        labels_of(obj)


def test_yaml_label_values_that_are_not_strings_are_refused() -> None:
    obj = decode_body(b"metadata:\n  labels:\n    version: 1\n", "application/yaml")
    with pytest.raises(DecodeError, match="must be a string"):
        labels_of(obj)


content_types = st.sampled_from(
    [
        "application/json",
        "application/yaml",
        "application/apply-patch+yaml",
        PROTOBUF,
        "",
        "text/plain",
    ]
)


@given(st.binary(max_size=200), content_types)
def test_garbage_bytes_only_raise_decode_error(body: bytes, content_type: str) -> None:
    try:
        obj = decode_body(body, content_type)
    except DecodeError:
        return
    assert isinstance(obj, dict)
    with contextlib.suppress(DecodeError):
        labels_of(obj)


@given(st.text(max_size=200), content_types)
def test_garbage_text_only_raises_decode_error(text: str, content_type: str) -> None:
    with contextlib.suppress(DecodeError):
        decode_body(text.encode(), content_type)


json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=15,
)


@given(st.dictionaries(st.text(max_size=5), json_like, max_size=4))
def test_json_objects_round_trip_through_json_and_yaml(obj: dict[str, Any]) -> None:
    assert decode_body(json.dumps(obj).encode(), "application/json") == obj
    # JSON is YAML: the apply path gets the same object from a JSON body.
    assert decode_body(json.dumps(obj).encode(), "application/apply-patch+yaml") == obj


def test_yaml_joins_escaped_surrogate_pairs_like_json() -> None:
    smiley = b'"\\ud83d\\ude00"'
    body = b'{"metadata": {"annotations": {%s: [%s], "k": %s}}}' % (smiley, smiley, smiley)
    as_json = decode_body(body, "application/json")
    assert decode_body(body, "application/apply-patch+yaml") == as_json
    assert as_json["metadata"]["annotations"]["k"] == "\U0001f600"
    # A lone surrogate becomes U+FFFD, as Go's JSON decoding makes it.
    for content_type in ("application/yaml", "application/json"):
        assert decode_body(b'{"a": "\\ud83dx"}', content_type) == {"a": "\ufffdx"}
    # In YAML proper, go-yaml (the API server's YAML parser) refuses a surrogate escape, and
    # so does libyaml, the parser the codec uses.
    with pytest.raises(DecodeError, match="invalid Unicode character escape"):
        decode_body(b'a: "\\udc00"', "application/yaml")


def test_yaml_duplicate_keys_are_refused() -> None:
    with pytest.raises(DecodeError, match="duplicate key 'aura'"):
        decode_body(b"metadata:\n  labels:\n    aura: red\n    aura: blue\n", "application/yaml")


def test_json_with_tabs_is_accepted_where_yaml_is_expected() -> None:
    body = b'{\n\t"metadata": {\n\t\t"labels": {"aura": "red"}\n\t}\n}'
    assert labels_of(decode_body(body, "application/apply-patch+yaml")) == {"aura": "red"}
    assert labels_of(decode_body(b"{metadata: {labels: {a: b}}}", "application/yaml")) == {"a": "b"}


# The API server (Go) and Python disagree on these; judging other labels than the ones the
# API server stores would let a locked object through, so both are refused.


@pytest.mark.parametrize(
    "body",
    [
        b'{"metadata":{"name":"s","labels":{"aura":"red"},"labels":{}}}',
        b'{"metadata":{"name":"s","labels":{"aura":"red"}},"metadata":{"name":"s"}}',
        b'{"metadata":{"labels":{"aura":"red","aura":"blue"}}}',
    ],
)
def test_json_duplicate_keys_are_refused(body: bytes) -> None:
    with pytest.raises(DecodeError, match="duplicate key"):
        decode_body(body, "application/json")


def test_yaml_merge_keys_are_refused() -> None:
    body = b"metadata:\n  name: sneaky\n  labels:\n    aura: blue\n    <<: {aura: red}\n"
    with pytest.raises(DecodeError, match="merge keys"):
        decode_body(body, "application/yaml")


def test_yaml_anchors_without_merge_keys_still_work() -> None:
    body = b"metadata:\n  name: x\n  labels: &l {aura: red}\n  annotations: *l\n"
    obj = decode_body(body, "application/yaml")
    assert labels_of(obj) == {"aura": "red"}
    assert obj["metadata"]["annotations"] == {"aura": "red"}
