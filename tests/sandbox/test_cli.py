"""``klockproxy sandbox`` as a user runs it: ready line, kubeconfig per user, state dir."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.e2e.kube import Kubectl, find_kubectl
from tests.sandbox.cli_support import _start, _stop

pytestmark = pytest.mark.skipif(find_kubectl() is None, reason="kubectl is not installed")


def test_ready_line_kubeconfig_users_and_state_dir(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.csv"
    tokens.write_text('alice-token,alice,u-1,"dev,ops"\n')
    state = tmp_path / "state"
    proc, line = _start(tmp_path, "--tokens", str(tokens), "--state-dir", str(state))
    try:
        assert line.startswith("klockproxy sandbox ready on https://127.0.0.1:"), line
        config = yaml.safe_load((tmp_path / "kubeconfig").read_text())
        assert config["current-context"] == "admin"
        assert sorted(c["name"] for c in config["contexts"]) == ["admin", "alice"]
        kubectl = Kubectl(tmp_path / "kubeconfig", home=tmp_path / "home")
        kubectl("create", "configmap", "before-restart", check=True)
        alice = kubectl.with_context("alice")
        who = alice("auth", "whoami", check=True)
        assert "alice" in who.stdout and "dev" in who.stdout
        denied = alice("get", "pods")
        assert denied.returncode == 1 and "Forbidden" in denied.stderr
    finally:
        assert _stop(proc) == 0
    # Restarted with the same state dir: the old kubeconfig's CA and admin token still work.
    proc, line = _start(tmp_path, "--state-dir", str(state))
    try:
        assert line.startswith("klockproxy sandbox ready"), line
        new_config = yaml.safe_load((tmp_path / "kubeconfig").read_text())
        assert new_config["users"][0]["user"]["token"] == config["users"][0]["user"]["token"]
        assert (
            new_config["clusters"][0]["cluster"]["certificate-authority-data"]
            == config["clusters"][0]["cluster"]["certificate-authority-data"]
        )
        kubectl = Kubectl(tmp_path / "kubeconfig", home=tmp_path / "home2")
        assert kubectl("get", "namespaces", check=True).returncode == 0
    finally:
        assert _stop(proc) == 0
