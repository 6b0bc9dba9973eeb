"""A gateway whose OWN credentials are a client certificate (system:masters).

The API server tries x509 before bearer tokens: were the gateway's certificate presented on a
token caller's connection, that caller's request would run as the gateway. It is presented
only on certificate callers' connections (and the judge's lookups as a token caller go on a
session without it)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from klockproxy.cluster.certs import CertificateAuthority
from klockproxy.crd import crd_text
from klockproxy.proxy.gateway import GatewaySettings, GatewayThread
from tests.e2e.gateway_support import Gateway, create_token
from tests.e2e.kube import Kubectl, KubeTarget

pytestmark = pytest.mark.e2e

LOCK = """apiVersion: klock.rnemet.dev/v1
kind: Lock
metadata:
  name: lock-target
spec:
  operations: [UPDATE]
  matcher:
    aura: red
"""


@pytest.fixture(scope="module")
def cert_gateway(
    kube_target: KubeTarget,
    kubectl: Kubectl,
    kubectl_home: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    if kube_target.sandbox is None:
        pytest.skip("needs the in-process sandbox to issue the gateway a client certificate")
    kubectl("apply", "-f", "-", input=crd_text(), check=True)
    work = tmp_path_factory.mktemp("gateway-own-cert")
    own = kube_target.sandbox.sandbox.write_kubeconfig(
        work / "own.kubeconfig",
        {"gateway": kube_target.sandbox.sandbox.client_certificate_user(
            "klockproxy-gateway", ["system:masters"])},
    )  # fmt: skip
    client_ca = CertificateAuthority.create("gateway test clients (own cert)")
    (work / "client-ca.crt").write_bytes(client_ca.cert_pem)
    thread = GatewayThread(
        GatewaySettings(
            kubeconfig=str(own),
            listen="127.0.0.1:0",
            state_dir=work / "state",
            client_ca=(str(work / "client-ca.crt"),),
            locks=("cluster",),
            audit_log=str(work / "audit.jsonl"),
        )
    ).start()
    try:
        yield Gateway(thread, client_ca, work, kubectl_home / "own-cert", kube_target,
                      work / "audit.jsonl")  # fmt: skip
    finally:
        thread.stop()


def test_token_callers_never_ride_the_gateways_certificate(
    cert_gateway: Gateway, kubectl: Kubectl, namespace: str
) -> None:
    kubectl("create", "configmap", "target", "--from-literal", "a=b", namespace=namespace,
            check=True)  # fmt: skip
    kubectl("create", "configmap", "locked", "--from-literal", "a=b", namespace=namespace,
            check=True)  # fmt: skip
    kubectl("label", "cm", "locked", "aura=red", namespace=namespace, check=True)
    kubectl("apply", "-f", "-", input=LOCK, namespace=namespace, check=True)
    cert_gateway.wait_lock(f"{namespace}/lock-target")
    kubectl("create", "serviceaccount", "nobody", namespace=namespace, check=True)
    nobody = cert_gateway.kubectl_for(
        "nobody", cert_gateway.token_user(create_token(kubectl, namespace, "nobody"))
    )
    # Forwarded untouched (no Lock covers it) and judged (a Lock covers it): RBAC refuses
    # nobody both times; with the gateway's certificate both would have been allowed.
    for name in ("target", "locked"):
        r = nobody("label", "cm", name, "pwned=yes", namespace=namespace)
        assert r.returncode != 0 and "forbidden" in r.stderr.lower(), r.stderr
        labels = kubectl.json("get", "cm", name, namespace=namespace)["metadata"].get("labels")
        assert "pwned" not in (labels or {})
    r = nobody("auth", "whoami", "-o", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["status"]["userInfo"]["username"].endswith(":nobody")
    # A certificate caller is forwarded with the gateway's certificate and impersonated.
    admin = cert_gateway.kubectl_for(
        "gw-admin", cert_gateway.cert_user("gw-admin", ["system:masters"])
    )
    r = admin("label", "cm", "target", "by=gw-admin", namespace=namespace)
    assert r.returncode == 0, r.stderr
    r = admin("auth", "whoami", "-o", "json")
    assert json.loads(r.stdout)["status"]["userInfo"]["username"] == "gw-admin"
    r = admin("label", "cm", "locked", "by=gw-admin", namespace=namespace)
    assert r.returncode != 0 and "denied, there is a lock" in r.stderr
