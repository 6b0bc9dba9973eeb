"""The labels server-side apply leaves on an object, from its managedFields.

``apply_patch`` (core.patches) merges the applied configuration into the object; server-side
apply also removes the labels the field manager applied before and no longer applies (when
nobody else owns them). ``ssa_result_labels`` computes that result (documented
simplification: labels only, not a full field-ownership implementation).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from klockproxy.core.metadata import labels_of, object_meta


def _owned_labels(entry: Mapping[str, Any]) -> set[str]:
    """Label keys a managedFields entry owns (``f:metadata`` / ``f:labels`` / ``f:<key>``)."""
    fields = entry.get("fieldsV1")
    meta = fields.get("f:metadata") if isinstance(fields, dict) else None
    labels = meta.get("f:labels") if isinstance(meta, dict) else None
    if not isinstance(labels, dict):
        return set()
    return {key[2:] for key in labels if isinstance(key, str) and key.startswith("f:")}


def ssa_result_labels(
    current: Mapping[str, Any], applied: Mapping[str, Any], manager: str, subresource: str = ""
) -> dict[str, str]:
    """The labels server-side apply leaves: current plus the configuration's, minus those
    this field manager applied before, dropped now, and nobody else owns."""
    config = labels_of(dict(applied))
    result = labels_of(dict(current))
    result.update(config)
    entries = object_meta(current).get("managedFields")
    if not isinstance(entries, list):
        return result
    mine: set[str] = set()
    others: set[str] = set()
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        owned = _owned_labels(entry)
        if (
            entry.get("manager") == manager
            and entry.get("operation") == "Apply"
            and (entry.get("subresource") or "") == subresource
        ):
            mine |= owned
        else:
            others |= owned
    for key in mine - others - config.keys():
        result.pop(key, None)
    return result
