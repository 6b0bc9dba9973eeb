"""Fixtures and helpers for the gateway end-to-end tests (no tests of its own).

One ``klockproxy gateway`` per test module in front of the ``kube_target`` (the sandbox, or a
real cluster via KLOCKPROXY_E2E_KUBECONFIG), with the target's admin credentials as its own,
Locks from the cluster and a CA of its own for client certificates (``--client-ca``). Callers
reach it with kubeconfigs holding THEIR credentials: a service-account token from
``kubectl create token``, the admin's token, or a client certificate of that CA.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from klockproxy.cluster.certs import CertificateAuthority
from klockproxy.cluster.kubeconfig import write_kubeconfig
from klockproxy.crd import crd_text
from klockproxy.proxy.gateway import GatewaySettings, GatewayThread
from tests.e2e.kube import Kubectl, KubeTarget

WAIT_SECONDS = 30.0


@dataclass
class Gateway:
    """The running gateway, its CAs and a place for caller kubeconfigs."""

    thread: GatewayThread
    client_ca: CertificateAuthority
    work: Path
    home: Path
    target: KubeTarget
    audit_path: Path

    @property
    def url(self) -> str:
        return self.thread.url

    @property
    def serving_ca_pem(self) -> bytes:
        ca_path = self.thread.service.ca_path
        assert ca_path is not None
        return ca_path.read_bytes()

    def kubectl_for(self, name: str, user: dict[str, Any]) -> Kubectl:
        """kubectl through the gateway with ``user`` (a kubeconfig user entry)."""
        path = write_kubeconfig(
            self.work / f"{name}.kubeconfig",
            server=self.url,
            ca_pem=self.serving_ca_pem,
            users={name: user},
            current_user=name,
            cluster_name="gateway",
        )
        return Kubectl(path, home=self.home / name)

    def token_user(self, token: str) -> dict[str, Any]:
        return {"token": token}

    def cert_user(self, cn: str, groups: list[str]) -> dict[str, Any]:
        cert, key = self.client_ca.issue_client(cn, groups)
        return {"client-certificate-data": cert, "client-key-data": key}

    def admin_user(self) -> dict[str, Any]:
        """The target admin's kubeconfig user entry (its own credentials)."""
        config = yaml.safe_load(self.target.kubeconfig.read_text())
        context_name = self.target.admin_context or config.get("current-context")
        context = next(c for c in config["contexts"] if c["name"] == context_name)["context"]
        user = next(u for u in config["users"] if u["name"] == context["user"])["user"]
        return dict(user)

    def wait_lock(self, key: str, present: bool = True) -> None:
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            lock_set = self.thread.service.lock_set
            engine = lock_set.engine if lock_set is not None else None
            keys = {lk.key for lk in engine.locks} if engine is not None else set()
            if (key in keys) == present:
                return
            time.sleep(0.02)
        raise AssertionError(f"the gateway never saw lock {key} {'added' if present else 'gone'}")


def create_token(admin: Kubectl, namespace: str, service_account: str) -> str:
    """``kubectl create token`` (TokenRequest) for a service account."""
    result = admin("create", "token", service_account, namespace=namespace, check=True)
    return result.stdout.strip()


# Module scope: mitmproxy keeps its master in process-wide state, so two embedded proxies must
# never run at the same time in one test process.
@pytest.fixture(scope="module")
def gateway(
    kube_target: KubeTarget,
    kubectl: Kubectl,
    kubectl_home: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    kubectl("apply", "-f", "-", input=crd_text(), check=True)
    kubectl(
        "wait", "--for=condition=Established", "crd/locks.klock.rnemet.dev", "--timeout=60s",
        check=True, timeout=90,
    )  # fmt: skip
    work = tmp_path_factory.mktemp("gateway")
    client_ca = CertificateAuthority.create("gateway test clients")
    (work / "client-ca.crt").write_bytes(client_ca.cert_pem)
    audit = work / "audit.jsonl"
    thread = GatewayThread(
        GatewaySettings(
            kubeconfig=str(kube_target.kubeconfig),
            context=kube_target.admin_context,
            listen="127.0.0.1:0",
            state_dir=work / "state",
            client_ca=(str(work / "client-ca.crt"),),
            locks=("cluster",),
            health_listen="127.0.0.1:0",
            audit_log=str(audit),
        )
    ).start()
    try:
        yield Gateway(thread, client_ca, work, kubectl_home / "gateway", kube_target, audit)
    finally:
        thread.stop()


def wait_until_refused(k: Kubectl, namespace: str) -> None:
    """Wait until the API server refuses ``k``'s credentials (a real API server may take a
    moment to notice a deleted service account; the sandbox refuses at once)."""
    from tests.e2e.kube import wait_until

    def refused() -> bool:
        r = k("get", "cm", namespace=namespace)
        return r.returncode != 0 and "Unauthorized" in r.stderr

    wait_until(refused, "the API server refusing the revoked token")
