"""The audit log: one JSON object per line, identities but never credentials."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from klockproxy.audit import AuditLog
from klockproxy.core.errors import ConfigError
from klockproxy.core.types import UserInfo


def test_lines_are_json_with_the_documented_fields(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(str(path))
    jonny = UserInfo("system:serviceaccount:default:jonny-op", "u-1", ("system:authenticated",))
    admin = UserInfo("kubernetes-admin", "", ("system:masters",))
    log.record(
        user=jonny,
        impersonated_by=admin,
        verb="delete",
        api_group="",
        resource="pods",
        namespace="default",
        name='my-pod\n{"forged": true}',
        verdict="denied",
        locks=["default/lockred", "default/lockred"],
        code=403,
    )
    log.record(
        user=None,
        verb="patch",
        api_group="apps",
        resource="deployments",
        subresource="scale",
        namespace="shop",
        name="web",
        verdict="allowed",
    )
    log.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["user"] == jonny.username and first["uid"] == "u-1"
    assert first["groups"] == ["system:authenticated"]
    assert first["impersonatedBy"] == {
        "user": "kubernetes-admin",
        "uid": "",
        "groups": ["system:masters"],
    }
    assert first["name"] == 'my-pod\n{"forged": true}'
    assert first["locks"] == ["default/lockred"] and first["code"] == 403
    assert first["time"].endswith("Z")
    assert second["user"] == "" and second["impersonatedBy"] is None
    assert second["subresource"] == "scale" and second["verdict"] == "allowed"
    assert set(first) == set(second)


def test_appends_and_stream() -> None:
    out = io.StringIO()
    log = AuditLog("-", stream=out)
    log.record(user=UserInfo("a"), verb="create", api_group="", resource="pods", verdict="allowed")
    assert json.loads(out.getvalue())["user"] == "a"


def test_unwritable_path_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="audit log"):
        AuditLog(str(tmp_path / "missing" / "audit.jsonl"))
