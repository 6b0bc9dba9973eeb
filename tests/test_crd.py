"""The packaged Lock CRD: a real, Klock-compatible apiextensions.k8s.io/v1 definition."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from klockproxy.cli import main
from klockproxy.crd import CRD_NAME, crd_object, crd_text

DATA = Path(__file__).parent / "data" / "locks"


def schema() -> dict[str, Any]:
    (version,) = crd_object()["spec"]["versions"]
    result: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return result


def test_crd_identity_matches_klock() -> None:
    crd = crd_object()
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == CRD_NAME == "locks.klock.rnemet.dev"
    spec = crd["spec"]
    assert spec["group"] == "klock.rnemet.dev"
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": "Lock",
        "listKind": "LockList",
        "plural": "locks",
        "singular": "lock",
    }
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1", True, True)


def test_schema_of_the_spec() -> None:
    root = schema()
    assert root["type"] == "object"
    spec = root["properties"]["spec"]
    assert spec["type"] == "object"
    props = spec["properties"]
    assert props["operations"] == {
        "description": props["operations"]["description"],
        "type": "array",
        "items": {"type": "string"},
    }
    assert props["matcher"]["type"] == "object"
    assert props["matcher"]["additionalProperties"] == {"type": "string"}
    exclusive = props["exclusive"]
    assert exclusive["type"] == "object"
    assert {k: v["type"] for k, v in exclusive["properties"].items()} == {
        "name": "string",
        "uid": "string",
    }


def _conforms(value: object, node: dict[str, Any]) -> bool:
    """A small structural check: types, properties and additionalProperties only."""
    kind = node.get("type")
    if kind == "string":
        return isinstance(value, str)
    if kind == "array":
        return isinstance(value, list) and all(_conforms(v, node["items"]) for v in value)
    if kind == "object":
        if not isinstance(value, dict):
            return False
        props: dict[str, Any] = node.get("properties", {})
        extra = node.get("additionalProperties")
        for key, item in value.items():
            if key in props:
                if not _conforms(item, props[key]):
                    return False
            elif extra is not None:
                if not _conforms(item, extra):
                    return False
            elif props:
                return False  # a structural schema prunes/rejects unknown fields
        return True
    return True


@pytest.mark.parametrize("path", sorted((DATA / "seed").glob("*.yaml")), ids=lambda p: p.name)
def test_our_lock_fixtures_fit_the_schema(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        assert _conforms(doc["spec"], schema()["properties"]["spec"])


def test_schema_rejects_what_kubernetes_would() -> None:
    spec = schema()["properties"]["spec"]
    assert not _conforms({"operations": "UPDATE"}, spec)
    assert not _conforms({"matcher": {"aura": 1}}, spec)
    assert not _conforms({"exclusive": {"name": 5}}, spec)


def test_crd_command_prints_the_packaged_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["crd"]) == 0
    out = capsys.readouterr().out
    assert out == crd_text()
    assert yaml.safe_load(out)["metadata"]["name"] == "locks.klock.rnemet.dev"
