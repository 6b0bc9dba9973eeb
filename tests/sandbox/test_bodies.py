"""The sandbox's own body decoding and JSON/merge patching (klockproxy/sandbox/bodies.py).

The sandbox is the oracle for the proxy's tests, so these check it on its own: against the
API server's documented decoding rules, and against the same golden patch vectors as the core
(tests/data/patches/), where the sandbox must agree with the API server's library.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from klockproxy.sandbox import bodies

DATA = Path(__file__).parent.parent / "data" / "patches"


def _cases(name: str) -> list[dict[str, Any]]:
    with (DATA / name).open(encoding="utf-8") as f:
        cases: list[dict[str, Any]] = yaml.safe_load(f)["cases"]
    return cases


# --------------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------------


def test_a_repeated_key_of_a_built_in_kind_decodes_into_the_first_value() -> None:
    # Go's encoding/json decodes a repeated struct field INTO the field: maps keep their
    # entries. This is the body the proxy refuses: the API server would store aura=red.
    body = b'{"metadata":{"labels":{"aura":"red"},"labels":{"app":"x"}}}'
    assert bodies.decode_json(body, typed=True) == {
        "metadata": {"labels": {"aura": "red", "app": "x"}}
    }
    merged = bodies.decode_json(
        b'{"a":[{"x":1,"y":2},{"x":3}],"a":[{"x":9}],"s":1,"s":2}', typed=True
    )
    assert merged == {"a": [{"x": 9, "y": 2}], "s": 2}
    assert bodies.decode_json(b'{"m":{"k":"v"},"m":null}', typed=True) == {"m": None}


def test_a_repeated_key_of_a_custom_resource_replaces_the_first_value() -> None:
    body = b'{"metadata":{"labels":{"aura":"red"},"labels":{"app":"x"}}}'
    assert bodies.decode_json(body) == {"metadata": {"labels": {"app": "x"}}}


def test_strict_field_validation_refuses_repeated_keys() -> None:
    with pytest.raises(bodies.DuplicateFieldError, match='duplicate field "labels"'):
        bodies.decode_json(b'{"labels":{},"labels":{}}', typed=True, strict=True)


@pytest.mark.parametrize("text", [b'{"a":NaN}', b'{"a":Infinity}', b'{"a":-Infinity}', b"{"])
def test_what_is_not_json_is_refused(text: bytes) -> None:
    with pytest.raises(ValueError):
        bodies.decode_json(text)


def test_strings_are_decoded_as_go_decodes_them() -> None:
    assert bodies.decode_json(b'{"a":"\xff"}') == {"a": "\ufffd"}
    assert bodies.decode_json(b'{"a":"\\ud83d\\ude00","b":["\\ud800"]}') == {
        "a": "\U0001f600",
        "b": ["\ufffd"],
    }
    assert bodies.decode_json(b'{"\\udc00":1}') == {"\ufffd": 1}
    # Keys are case-sensitive, as in sigs.k8s.io/json.
    assert bodies.decode_json(b'{"Metadata":1,"metadata":2}') == {"Metadata": 1, "metadata": 2}


# --------------------------------------------------------------------------------------------
# YAML
# --------------------------------------------------------------------------------------------


def test_yaml_is_read_as_go_yaml_v2_reads_it() -> None:
    text = b"when: 2024-01-01\nshort: y\nno: n\n1: one\ntrue: t\nnull: x\n"
    assert bodies.decode_yaml(text) == {
        "when": "2024-01-01",
        "short": True,
        "false": False,
        "1": "one",
        "true": "t",
        "null": "x",
    }


def test_yaml_merge_keys_apply_in_document_order() -> None:
    # A merge after an explicit key overwrites it, a key after a merge overwrites the merge.
    assert bodies.decode_yaml(b"labels: {aura: blue, <<: {aura: red}}\n") == {
        "labels": {"aura": "red"}
    }
    assert bodies.decode_yaml(b"labels: {<<: {aura: red}, aura: blue}\n") == {
        "labels": {"aura": "blue"}
    }
    text = b"a: &a {k: 1}\nb: &b {k: 2}\nc: {<<: [*a, *b]}\n"
    assert bodies.decode_yaml(text)["c"] == {"k": 1}


def test_yaml_duplicates_last_wins_unless_strict() -> None:
    text = b"labels:\n  aura: red\nlabels:\n  app: x\n"
    assert bodies.decode_yaml(text) == {"labels": {"app": "x"}}
    with pytest.raises(bodies.DuplicateFieldError, match="already defined"):
        bodies.decode_yaml(text, strict=True)


@pytest.mark.parametrize(
    "text",
    [b"a: .nan\n", b"a: !!binary aGk=\n", b"a: !!timestamp 2024-01-01\n"],
)
def test_yaml_that_json_cannot_carry_is_refused(text: bytes) -> None:
    with pytest.raises(ValueError):
        bodies.decode_yaml(text)


def test_yaml_alias_expansion_is_bounded() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 8)]
    with pytest.raises(ValueError, match="expands to more than"):
        bodies.decode_yaml("\n".join(lines).encode())


# --------------------------------------------------------------------------------------------
# Patches against the golden vectors
# --------------------------------------------------------------------------------------------

# Where the sandbox's JSON patch (the jsonpatch library plus negative indices and the refusal
# of add at the root) and the API server's library still differ, by vector name. The sandbox
# refuses each of these; the API server would apply them (see the same names in
# tests/core/test_patches_golden.py).
SANDBOX_REFUSES = {
    "TestCases[4]": "test of a missing member with value null passes in the library",
    "TestCases[10]": "test of a missing member without a value passes in the library",
}
SERVER_RESULT = {"tests.json[19]": {"bar": [1, 2, "5"]}}
SERVER_REFUSES = {"tests.json[11]", "tests.json[12]", "tests.json[63]"}

JSON_PATCH = _cases("json_patch_tests.yaml") + _cases("json_patch_evanphx.yaml")


@pytest.mark.parametrize("case", JSON_PATCH, ids=[c["name"] for c in JSON_PATCH])
def test_json_patch_vectors(case: dict[str, Any]) -> None:
    expected = SERVER_RESULT.get(case["name"], case.get("expected"))
    refused = (
        ("error" in case and case["name"] not in SERVER_RESULT)
        or case["name"] in SERVER_REFUSES
        or case["name"] in SANDBOX_REFUSES
    )
    if refused:
        with pytest.raises(ValueError):
            bodies.json_patch(case["doc"], case["patch"])
        return
    result = bodies.json_patch(case["doc"], case["patch"])
    if case.get("changed"):
        assert json.dumps(result, sort_keys=True) != json.dumps(case["doc"], sort_keys=True)
    else:
        assert result == expected


MERGE = _cases("merge_patch_rfc7386.yaml")


@pytest.mark.parametrize("case", MERGE)
def test_merge_patch_vectors(case: dict[str, Any]) -> None:
    result = bodies.merge_patch(case["doc"], case["patch"])
    assert result == case.get("expected", case.get("rfc_result"))


@pytest.mark.parametrize("patch", [b"null", b'"bar"', b"1"])
def test_a_merge_patch_that_is_not_an_object_or_array_is_a_bad_request(patch: bytes) -> None:
    with pytest.raises(bodies.BadRequestError, match="Invalid JSON Patch"):
        bodies.apply_json_or_merge_patch({"a": "foo"}, patch, json_patch_type=False)


def test_json_patch_statuses_are_the_api_servers() -> None:
    with pytest.raises(bodies.BadRequestError):
        bodies.apply_json_or_merge_patch({}, b'{"op":"add"}', json_patch_type=True)
    for ops in ([{"op": "remove", "path": "/missing"}], [{"op": "test", "path": "", "value": 1}]):
        with pytest.raises(bodies.ApiError) as caught:
            bodies.apply_json_or_merge_patch({}, json.dumps(ops).encode(), json_patch_type=True)
        assert caught.value.code == 422
