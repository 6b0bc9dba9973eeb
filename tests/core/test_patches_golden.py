"""The core's patch engines against golden vectors from the implementations the API server uses.

The vectors are data, taken from the published test suites (each file under
``tests/data/patches/`` names its source repository, path, commit and license):

* ``strategic_merge_apimachinery.yaml``: Kubernetes' own strategic merge patch fixtures
  (k8s.io/apimachinery ``pkg/util/strategicpatch``), on the fixtures' test type ``MergeItem``.
* ``json_patch_evanphx.yaml``: the tests of the JSON patch library the API server runs
  (evanphx/json-patch, v4).
* ``json_patch_tests.yaml``: the JSON Patch (RFC 6902) test suite, the RFC's examples included.
* ``merge_patch_rfc7386.yaml``: RFC 7386 appendix A and the API server's merge patch library.

Where the core deliberately departs from the API server (it refuses a malformed operation
that the server's library accepts) the vector is listed in a ``REFUSED_*`` or
``SERVER_ACCEPTS`` table with a reason, and the test asserts the refusal. Where the API
server's library departs from the RFC, the library wins (the core models the API server):
``SERVER_REFUSES`` and ``SERVER_RESULT``. Every table is a finding; no vector is skipped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from klockproxy.core.errors import PatchError
from klockproxy.core.patches import FieldSchema, json_patch, merge_patch, strategic_merge_patch

DATA = Path(__file__).parent.parent / "data" / "patches"


def _load(name: str) -> list[dict[str, Any]]:
    with (DATA / name).open(encoding="utf-8") as f:
        cases: list[dict[str, Any]] = yaml.safe_load(f)["cases"]
    return cases


def _canonical(value: Any) -> Any:
    """A hashable form in which equal JSON values are equal: numbers by value (1 == 1.0),
    booleans apart from numbers, objects without key order."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return (type(value).__name__, value)
    if isinstance(value, int | float):
        return ("number", float(value))
    if isinstance(value, list):
        return ("array", tuple(_canonical(v) for v in value))
    return ("object", frozenset((k, _canonical(v)) for k, v in value.items()))


def same(a: Any, b: Any) -> bool:
    """JSON equality written for the oracle (not the core's ``json_equal``)."""
    return bool(_canonical(a) == _canonical(b))


def _ids(cases: list[dict[str, Any]], label: str) -> list[str]:
    return [
        f"{i:03d}-{c.get(label) or c.get('comment') or c['source']}"[:90]
        for i, c in enumerate(cases)
    ]


# --------------------------------------------------------------------------------------------
# Strategic merge patch: the upstream test type MergeItem as the core's FieldSchema
# --------------------------------------------------------------------------------------------

# The vectors' schema is the upstream test type MergeItem, read from the upstream OpenAPI
# testdata (strategic_merge_schema_apimachinery.yaml) into the core's FieldSchema form. The
# types are recursive (mergingList holds MergeItems), so each definition's field map is
# registered before its properties are built. ``retainKeys`` needs no schema when a patch is
# applied (the directive carries the keys). ``replace`` on a map (replacingItem) has no
# FieldSchema form (no built-in kind declares it) and no vector applies a patch to it.
_DEFINITIONS: dict[str, Any] = yaml.safe_load(
    (DATA / "strategic_merge_schema_apimachinery.yaml").read_text(encoding="utf-8")
)["definitions"]


def _schema_of(definition: str, built: dict[str, dict[str, FieldSchema]]) -> dict[str, FieldSchema]:
    if definition in built:
        return built[definition]
    fields: dict[str, FieldSchema] = {}
    built[definition] = fields
    for name, prop in (_DEFINITIONS[definition].get("properties") or {}).items():
        ref = str(prop.get("$ref") or (prop.get("items") or {}).get("$ref") or "")
        target = ref.rsplit("/", 1)[-1]
        nested = _schema_of(target, built) if target in _DEFINITIONS else {}
        merge = "merge" in str(prop.get("x-kubernetes-patch-strategy", "")).split(",")
        key = str(prop.get("x-kubernetes-patch-merge-key", "")) if merge else ""
        fields[name] = FieldSchema(merge_key=key, merge_primitives=merge and not key, fields=nested)
    return fields


_MERGE_ITEM = _schema_of("mergeItem", {})
MERGE_ITEM_KIND = ("golden.test", "MergeItem")
MERGE_KEYS = {MERGE_ITEM_KIND: _MERGE_ITEM}
_NONE = FieldSchema()


def test_the_schema_is_read_from_the_upstream_testdata() -> None:
    assert _MERGE_ITEM["mergingList"].merge_key == "name"
    assert _MERGE_ITEM["mergingList"].fields is _MERGE_ITEM
    assert _MERGE_ITEM["mergingIntList"].merge_primitives
    assert _MERGE_ITEM["mergeItemPtr"].merge_key == "name"
    assert _MERGE_ITEM["retainKeysMergingList"].merge_key == "name"
    assert _MERGE_ITEM["retainKeysMap"].fields["mergingList"].merge_key == "name"
    assert _MERGE_ITEM["nonMergingList"] == FieldSchema(fields=_MERGE_ITEM)
    assert not _MERGE_ITEM["nonMergingIntList"].merge_primitives


def _go_str(value: Any) -> str:
    """How Go's ``fmt.Sprintf("%v")`` prints a decoded JSON scalar (the upstream sort key)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "<nil>"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _sorted_scalars(items: list[Any], dedup: bool) -> list[Any]:
    if dedup:
        unique: list[Any] = []
        for item in items:
            if not any(same(item, u) for u in unique):
                unique.append(item)
        items = unique
    return sorted(items, key=_go_str)


def sort_merge_lists(value: Any, schema: Mapping[str, FieldSchema], *, dedup: bool) -> Any:
    """Upstream ``sortMergeListsByName``: merging lists sorted by merge key, merging scalar
    lists (and the ``$retainKeys``/``$deleteFromPrimitiveList`` directives) sorted (and, with
    ``dedup``, deduplicated as upstream does). Only the ``order: sorted`` vectors use it."""
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        field = schema.get(key, _NONE)
        if key == "$retainKeys" or key.startswith("$deleteFromPrimitiveList/"):
            item = _sorted_scalars(item, dedup=False) if isinstance(item, list) else item
        elif isinstance(item, dict) and not key.startswith("$"):
            item = sort_merge_lists(item, field.fields, dedup=dedup)
        elif isinstance(item, list) and item and (field.merge_key or field.merge_primitives):
            if all(isinstance(i, dict) for i in item):
                children = [sort_merge_lists(i, field.fields, dedup=dedup) for i in item]
                item = sorted(children, key=lambda i: _go_str(i.get(field.merge_key)))
            else:
                item = _sorted_scalars(item, dedup=dedup)
        out[key] = item
    return out


STRATEGIC = _load("strategic_merge_apimachinery.yaml")


@pytest.mark.parametrize("case", STRATEGIC, ids=_ids(STRATEGIC, "description"))
def test_strategic_merge_patch_vectors(case: dict[str, Any]) -> None:
    original, patch = case["original"], case["patch"]
    if case["order"] == "sorted":
        original = sort_merge_lists(original, _MERGE_ITEM, dedup=True)
        patch = sort_merge_lists(patch, _MERGE_ITEM, dedup=True)
    if "error" in case:
        # The upstream test asks for an error containing this text; the core says the same.
        with pytest.raises(PatchError, match=re.escape(case["error"])):
            strategic_merge_patch(original, patch, MERGE_ITEM_KIND, merge_keys=MERGE_KEYS)
        return
    result = strategic_merge_patch(original, patch, MERGE_ITEM_KIND, merge_keys=MERGE_KEYS)
    expected = case["expected"]
    if case["order"] == "sorted":
        expected = sort_merge_lists(expected, _MERGE_ITEM, dedup=True)
        result = sort_merge_lists(result, _MERGE_ITEM, dedup=False)
    assert same(result, expected), f"got {result!r}, expected {expected!r}"


# --------------------------------------------------------------------------------------------
# RFC 6902 JSON patch
# --------------------------------------------------------------------------------------------

JSON_PATCH_SUITE = _load("json_patch_tests.yaml")
JSON_PATCH_EVANPHX = _load("json_patch_evanphx.yaml")

# RFC suite vectors (by name) where the API server's library, evanphx/json-patch v4, departs
# from the RFC, read from the library's code. Every entry is a finding.
SERVER_REFUSES = {
    # The server refuses what the RFC allows; the core follows the server.
    "tests.json[11]": "add at the root: the library finds no parent for the empty path",
    "tests.json[12]": "add at the root",
    "tests.json[63]": "add at the root",
}
SERVER_RESULT = {
    # The server gives a result where the RFC refuses; the core follows the server.
    # Negative indices count from the end (SupportNegativeIndices, on by default).
    "tests.json[19]": {"bar": [1, 2, "5"]},
}
SERVER_ACCEPTS = {
    # The server accepts what the RFC refuses; the core refuses it on purpose (fail closed on
    # a malformed operation rather than guess). The vectors' refusals stand.
    "tests.json[77]": "add without a value: the library stores null",
    "tests.json[78]": "replace without a value: the library stores null",
    "tests.json[82]": "copy from a missing member: the library copies null",
    "tests.json[87]": "index with leading zeros: strconv.Atoi reads '00' as 0",
    "tests.json[88]": "index with leading zeros: strconv.Atoi reads '01' as 1",
}
# evanphx vectors (by name) the core refuses on purpose: a test of a path that does not exist
# is malformed for the core (RFC 6902 section 4.6), while the library passes it when the value
# is null or absent.
REFUSED_JSON_PATCH = {
    "TestCases[4]": "test of a missing member with value null",
    "TestCases[10]": "test of a missing member without a value",
}


def _check_json_patch(case: dict[str, Any], refused: bool) -> None:
    if case["name"] in SERVER_RESULT:
        case = {**case, "expected": SERVER_RESULT[case["name"]]}
        case.pop("error")
    if "error" in case or refused:
        with pytest.raises(PatchError):
            json_patch(case["doc"], case["patch"])
        return
    result = json_patch(case["doc"], case["patch"])
    if case.get("changed"):
        assert not same(result, case["doc"])
    else:
        assert same(result, case["expected"]), f"got {result!r}, expected {case['expected']!r}"


@pytest.mark.parametrize("case", JSON_PATCH_SUITE, ids=_ids(JSON_PATCH_SUITE, "name"))
def test_json_patch_suite_vectors(case: dict[str, Any]) -> None:
    _check_json_patch(case, refused=case["name"] in SERVER_REFUSES)


@pytest.mark.parametrize("case", JSON_PATCH_EVANPHX, ids=_ids(JSON_PATCH_EVANPHX, "name"))
def test_json_patch_api_server_library_vectors(case: dict[str, Any]) -> None:
    _check_json_patch(case, refused=case["name"] in REFUSED_JSON_PATCH)


def test_the_findings_name_real_vectors() -> None:
    """Every entry of the findings tables names a vector (a renamed one would hide nothing)."""
    suite = {c["name"]: c for c in JSON_PATCH_SUITE}
    names = {c["name"] for c in JSON_PATCH_EVANPHX}
    assert set(SERVER_REFUSES) | set(SERVER_ACCEPTS) | set(SERVER_RESULT) <= set(suite)
    assert all("error" in suite[name] for name in [*SERVER_ACCEPTS, *SERVER_RESULT])
    assert all("expected" in suite[name] for name in SERVER_REFUSES)
    assert set(REFUSED_JSON_PATCH) <= names


# --------------------------------------------------------------------------------------------
# RFC 7386 JSON merge patch
# --------------------------------------------------------------------------------------------

MERGE = _load("merge_patch_rfc7386.yaml")


@pytest.mark.parametrize("case", MERGE, ids=_ids(MERGE, "comment"))
def test_merge_patch_vectors(case: dict[str, Any]) -> None:
    result = merge_patch(case["doc"], case["patch"])
    if "error" in case:
        # The core's merge_patch is the RFC's algorithm; the refusal of a patch that is not an
        # object or array is apply_patch's (the patched object must be an object).
        assert same(result, case["rfc_result"])
        return
    assert same(result, case["expected"]), f"got {result!r}, expected {case['expected']!r}"
