"""policy/v1 PodDisruptionBudgets in the sandbox, driven with real kubectl: discovery, the
protobuf body ``kubectl create pdb`` sends, client-side apply, the table ``kubectl get``
prints and the status the API server resets on create."""

from __future__ import annotations

from pathlib import Path

import pytest

from klockproxy.sandbox.server import SandboxThread
from tests.e2e.kube import Kubectl, apply_yaml, find_kubectl

pytestmark = pytest.mark.skipif(find_kubectl() is None, reason="kubectl is not installed")

PDB = """\
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: web
  labels: {app: web}
spec:
  minAvailable: 1
  selector:
    matchLabels: {app: web}
"""


@pytest.fixture
def kubectl(sandbox_thread: SandboxThread, tmp_path: Path) -> Kubectl:
    kubeconfig = sandbox_thread.write_kubeconfig(tmp_path / "kubeconfig")
    return Kubectl(kubeconfig, home=tmp_path / "home")


def test_discovery_lists_pod_disruption_budgets(kubectl: Kubectl) -> None:
    result = kubectl("api-resources", "--api-group=policy", "-o", "wide", check=True)
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith("poddisruptionbudgets"))
    assert line.split()[:5] == [
        "poddisruptionbudgets",
        "pdb",
        "policy/v1",
        "true",
        "PodDisruptionBudget",
    ]
    assert "policy/v1" in kubectl("api-versions", check=True).stdout.split()


def test_kubectl_create_pdb_sends_protobuf_and_gets_a_reset_status(kubectl: Kubectl) -> None:
    kubectl("create", "pdb", "db", "--selector=app=db", "--max-unavailable=1", check=True)
    pdb = kubectl.json("get", "pdb", "db")
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "db"}}}
    assert pdb["status"] == {
        "disruptionsAllowed": 0,
        "currentHealthy": 0,
        "desiredHealthy": 0,
        "expectedPods": 0,
    }


def test_apply_then_get_prints_the_budget_columns(kubectl: Kubectl) -> None:
    assert "poddisruptionbudget.policy/web created" in apply_yaml(kubectl, PDB)
    # A second apply: kubectl re-sends spec.selector every time (its patch strategy is
    # "replace"), so it says "configured" against a real API server too.
    apply_yaml(kubectl, PDB)
    assert kubectl.json("get", "pdb", "web")["spec"] == {
        "minAvailable": 1,
        "selector": {"matchLabels": {"app": "web"}},
    }
    header, row = kubectl("get", "pdb", "web", check=True).stdout.splitlines()
    assert header.split() == [
        "NAME",
        "MIN",
        "AVAILABLE",
        "MAX",
        "UNAVAILABLE",
        "ALLOWED",
        "DISRUPTIONS",
        "AGE",
    ]
    assert row.split()[:4] == ["web", "1", "N/A", "0"]
    patched = apply_yaml(kubectl, PDB.replace("minAvailable: 1", "minAvailable: 50%"))
    assert "poddisruptionbudget.policy/web configured" in patched
    assert kubectl.json("get", "pdb", "web")["spec"]["minAvailable"] == "50%"
    kubectl("delete", "pdb", "web", check=True)
    assert not kubectl.exists("pdb", "web")
