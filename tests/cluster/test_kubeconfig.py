"""Writing kubeconfigs: what kubectl reads from them."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest
import yaml

from klockproxy.cluster.kubeconfig import write_kubeconfig
from klockproxy.core.errors import ConfigError


def test_one_context_per_user_and_mode_0600(tmp_path: Path) -> None:
    path = write_kubeconfig(
        tmp_path / "kc",
        server="https://127.0.0.1:1234",
        ca_pem=b"CA PEM",
        users={
            "admin": {"token": "t1"},
            "alice": {"client-certificate-data": b"CERT", "client-key-data": b"KEY"},
        },
        current_user="admin",
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    cfg = yaml.safe_load(path.read_text())
    assert cfg["current-context"] == "admin"
    assert [c["name"] for c in cfg["contexts"]] == ["admin", "alice"]
    assert cfg["contexts"][1]["context"] == {
        "cluster": "sandbox",
        "user": "alice",
        "namespace": "default",
    }
    cluster = cfg["clusters"][0]["cluster"]
    assert cluster["server"] == "https://127.0.0.1:1234"
    assert base64.b64decode(cluster["certificate-authority-data"]) == b"CA PEM"
    alice = cfg["users"][1]["user"]
    assert base64.b64decode(alice["client-certificate-data"]) == b"CERT"
    assert cfg["users"][0]["user"] == {"token": "t1"}


def test_current_user_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        write_kubeconfig(
            tmp_path / "kc", server="https://x", ca_pem=b"", users={}, current_user="admin"
        )
