"""Preconditions added to allowed writes (JSON, YAML, JSON patch, protobuf)."""

from __future__ import annotations

import json

import pytest

from klockproxy.core.errors import Refusal
from klockproxy.core.guards import ABSENT_UID, add_precondition, last_string, merged_message
from klockproxy.core.protobuf import encode_len_field, encode_string_field, encode_unknown
from klockproxy.core.requests import classify

POD = "/api/v1/namespaces/default/pods/my-pod"


def test_a_bodyless_delete_gets_delete_options_with_preconditions() -> None:
    out = add_precondition(b"", "", classify("DELETE", POD), "42", "uid-1")
    assert out is not None
    body, ctype = out
    assert ctype == "application/json"
    assert json.loads(body) == {
        "kind": "DeleteOptions",
        "apiVersion": "v1",
        "preconditions": {"resourceVersion": "42", "uid": "uid-1"},
    }


def test_a_json_patch_gets_a_leading_test() -> None:
    patch = b'[{"op": "remove", "path": "/metadata/labels/aura"}]'
    info = classify("PATCH", POD)
    out = add_precondition(patch, "application/json-patch+json", info, "42", "uid-1")
    assert out is not None
    assert json.loads(out[0])[0] == {
        "op": "test",
        "path": "/metadata/resourceVersion",
        "value": "42",
    }
    assert out[1] == "application/json-patch+json"
    absent = add_precondition(
        patch, "application/json-patch+json", info, "", ABSENT_UID, absent=True
    )
    assert absent is not None
    assert json.loads(absent[0])[0]["value"] == ABSENT_UID


def test_yaml_bodies_are_sent_as_json() -> None:
    body = b"apiVersion: v1\nkind: Pod\nmetadata:\n  name: my-pod\n"
    out = add_precondition(body, "application/yaml", classify("PUT", POD), "42", "uid-1")
    assert out is not None
    assert out[1] == "application/json"
    assert json.loads(out[0])["metadata"]["resourceVersion"] == "42"


def test_a_client_value_other_than_the_checked_one_is_a_conflict() -> None:
    body = json.dumps({"metadata": {"name": "my-pod", "resourceVersion": "41"}}).encode()
    with pytest.raises(Refusal) as caught:
        add_precondition(body, "application/json", classify("PUT", POD), "42", "uid-1")
    assert caught.value.status["code"] == 409
    assert caught.value.status["message"].startswith(
        'Operation cannot be fulfilled on pods "my-pod"'
    )


def test_protobuf_bodies_get_the_fields_appended() -> None:
    meta = encode_len_field(1, encode_string_field(1, "my-pod"))
    body = encode_unknown("v1", "Pod", meta)
    out = add_precondition(
        body, "application/vnd.kubernetes.protobuf", classify("PUT", POD), "42", ""
    )
    assert out is not None
    assert out[1] is None
    assert out[0] == encode_unknown(
        "v1", "Pod", meta + encode_len_field(1, encode_string_field(6, "42"))
    )


def test_protobuf_helpers_merge_messages_and_take_the_last_string() -> None:
    buf = encode_len_field(1, encode_string_field(6, "a")) + encode_len_field(
        1, encode_string_field(6, "b")
    )
    assert last_string(merged_message(buf, 1), 6) == "b"
    assert last_string(buf, 9) == ""


def test_bodies_the_proxy_cannot_rewrite_are_refused() -> None:
    with pytest.raises(Refusal) as caught:
        add_precondition(b"x", "text/plain", classify("PUT", POD), "42", "uid-1")
    assert caught.value.status["code"] == 415
