"""Label and field selectors, parsed the way the API server parses them."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from klockproxy.sandbox.errors import BadRequestError

_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op in ("=", "in"):
            return present and value in self.values
        # "!=" and "notin" match objects without the label
        return not present or value not in self.values


def _split_top_level(text: str) -> list[str]:
    parts: list[str] = []
    depth = 0
    current = ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    return parts


def _bad(selector: str, why: str) -> BadRequestError:
    return BadRequestError(f"unable to parse requirement: {why}: {selector!r}")


def parse_label_selector(selector: str) -> list[Requirement]:
    """``a=b,c!=d,e in (f,g),!h,i`` -> requirements (all must match)."""
    reqs: list[Requirement] = []
    if not selector.strip():
        return reqs
    for raw in _split_top_level(selector):
        part = raw.strip()
        if not part:
            raise _bad(selector, "found '', expected: identifier")
        m = re.match(r"^(\S+)\s+(in|notin)\s*\((.*)\)$", part)
        if m:
            key, op, vals = m.group(1), m.group(2), m.group(3)
            values = tuple(v.strip() for v in vals.split(",") if v.strip())
            reqs.append(Requirement(key, op, values))
        elif part.startswith("!"):
            reqs.append(Requirement(part[1:].strip(), "!"))
        else:
            m = re.match(r"^([^=!<>\s]+)\s*(==|=|!=)\s*(.*)$", part)
            if m:
                key, op, value = m.group(1), m.group(2), m.group(3).strip()
                reqs.append(Requirement(key, "!=" if op == "!=" else "=", (value,)))
            elif re.match(r"^[^=!<>\s()]+$", part):
                reqs.append(Requirement(part, "exists"))
            else:
                raise _bad(selector, f"invalid requirement {part!r}")
    for r in reqs:
        if not _KEY.match(r.key):
            raise BadRequestError(
                f'unable to parse requirement: key: Invalid value: "{r.key}": name part must '
                "consist of alphanumeric characters, '-', '_' or '.'"
            )
        for v in r.values:
            if len(v) > 63 or not _VALUE.match(v):
                raise BadRequestError(
                    f'unable to parse requirement: values[0][{r.key}]: Invalid value: "{v}"'
                )
    return reqs


def label_matcher(selector: str) -> Callable[[dict[str, Any]], bool]:
    reqs = parse_label_selector(selector)

    def match(obj: dict[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(r.matches(labels) for r in reqs)

    return match


def _field_value(obj: dict[str, Any], path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, dict):
            return ""
        cur = cur.get(part)
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return str(cur)


# The fields each resource accepts in a field selector, besides metadata.name/namespace.
EXTRA_FIELDS: dict[tuple[str, str], tuple[str, ...]] = {
    ("", "pods"): (
        "status.phase",
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.serviceAccountName",
        "status.podIP",
    ),
    ("", "secrets"): ("type",),
    ("", "namespaces"): ("status.phase",),
    ("", "events"): (
        "involvedObject.name",
        "involvedObject.namespace",
        "involvedObject.kind",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    ),
}


def field_matcher(selector: str, group: str, resource: str) -> Callable[[dict[str, Any]], bool]:
    """``metadata.name=x,status.phase!=Running`` -> predicate; unknown fields are a 400."""
    allowed = {"metadata.name", "metadata.namespace", *EXTRA_FIELDS.get((group, resource), ())}
    terms: list[tuple[str, bool, str]] = []
    for raw in selector.split(","):
        part = raw.strip()
        if not part:
            continue
        m = re.match(r"^([^=!]+?)\s*(==|=|!=)\s*(.*)$", part)
        if not m:
            raise BadRequestError(f"invalid selector: '{selector}'; can't understand '{part}'")
        key, op, value = m.group(1).strip(), m.group(2), m.group(3).strip()
        if key not in allowed:
            raise BadRequestError(f"field label not supported: {key}", reason="BadRequest")
        terms.append((key, op == "!=", value))

    def match(obj: dict[str, Any]) -> bool:
        for key, negate, value in terms:
            equal = _field_value(obj, key) == value
            if equal == negate:
                return False
        return True

    return match
