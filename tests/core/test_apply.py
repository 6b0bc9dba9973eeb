"""Server-side apply: the labels left after an apply, from managedFields."""

from __future__ import annotations

from typing import Any

from klockproxy.core.apply import ssa_result_labels
from tests.fakes import pod


def _field(manager: str, operation: str, *labels: str) -> dict[str, Any]:
    return {
        "manager": manager,
        "operation": operation,
        "apiVersion": "v1",
        "fieldsType": "FieldsV1",
        "fieldsV1": {"f:metadata": {"f:labels": {f"f:{key}": {} for key in labels}}},
    }


def test_ssa_result_labels_drop_what_the_manager_no_longer_applies() -> None:
    current = pod("web", {"aura": "red", "override": "yes", "shared": "x"})
    current["metadata"]["managedFields"] = [
        _field("kubectl-label", "Update", "aura", "shared"),
        _field("ops", "Apply", "override", "shared", "team"),
    ]
    applied = {"metadata": {"labels": {"team": "b"}}}
    # override: ops owned it alone and dropped it; shared: also owned by kubectl-label.
    assert ssa_result_labels(current, applied, "ops") == {
        "aura": "red",
        "shared": "x",
        "team": "b",
    }
    # Another manager removes nothing it never applied.
    assert ssa_result_labels(current, applied, "someone")["override"] == "yes"
