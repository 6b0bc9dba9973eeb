"""Fixtures and helpers for the webhook end-to-end tests (no tests of its own).

One ``klockproxy webhook`` per test module, serving HTTPS on 127.0.0.1 with its own
certificate, Locks from the cluster, registered in the target API server with the
ValidatingWebhookConfiguration that ``deploy/webhook`` ships - its rules, failurePolicy,
matchPolicy, timeout - reached by URL with the CA in its caBundle, and limited to the
namespaces a test enrols (a label) so that other test modules never meet it.

The API server must be able to reach 127.0.0.1 on this machine: the in-process sandbox, or a
``klockproxy sandbox`` started here (KLOCKPROXY_E2E_KUBECONFIG). Against a remote cluster the
webhook tests skip (deploy it with ``kubectl apply -k deploy/webhook`` there instead).
"""

from __future__ import annotations

import base64
import copy
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from klockproxy.cluster.certs import CertificateAuthority
from klockproxy.core.locks import Lock
from klockproxy.crd import crd_text
from klockproxy.webhook.server import WebhookServer, WebhookSettings, WebhookThread
from tests.e2e.kube import Kubectl, KubeTarget

REPO = Path(__file__).resolve().parents[2]
SHIPPED_CONFIG = REPO / "deploy" / "webhook" / "validatingwebhookconfiguration.yaml"
ENROL_LABEL = "klockproxy-e2e-webhook"
WAIT_SECONDS = 30.0
# What the API server (and the sandbox) says in front of the webhook's message.
DENIED_BY = 'admission webhook "{name}" denied the request: '


@dataclass
class Webhook:
    """The running webhook, its registration, and how to enrol a namespace."""

    thread: WebhookThread
    hook_name: str  # webhooks[].name, as kubectl's error names it
    config_name: str  # the ValidatingWebhookConfiguration
    enrol_value: str
    admin: Kubectl

    @property
    def denied_by(self) -> str:
        return DENIED_BY.format(name=self.hook_name)

    def locks(self) -> dict[str, Lock]:
        engine = self.thread.engine()
        return {lock.key: lock for lock in engine.locks} if engine is not None else {}

    def wait(self, predicate: Callable[[dict[str, Lock]], bool], what: str) -> None:
        """Wait until the webhook's lock set satisfies ``predicate``."""
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            if predicate(self.locks()):
                return
            time.sleep(0.02)
        raise AssertionError(f"the webhook never saw {what}; it has {sorted(self.locks())}")

    def enrol(self, namespace: str) -> None:
        """Have the webhook judge requests in ``namespace``."""
        self.admin(
            "label", "namespace", namespace, f"{ENROL_LABEL}={self.enrol_value}", "--overwrite",
            check=True,
        )  # fmt: skip


def registration(name: str, url: str, ca_pem: bytes, enrol_value: str) -> dict[str, Any]:
    """The shipped ValidatingWebhookConfiguration, reached by URL and limited to enrolled
    namespaces (everything else as shipped)."""
    shipped = yaml.safe_load(SHIPPED_CONFIG.read_text())
    config = copy.deepcopy(shipped)
    config["metadata"] = {"name": name}
    for hook in config["webhooks"]:
        hook["clientConfig"] = {
            "url": f"{url}/validate",
            "caBundle": base64.b64encode(ca_pem).decode(),
        }
        selector = hook.setdefault("namespaceSelector", {})
        selector.setdefault("matchLabels", {})[ENROL_LABEL] = enrol_value
        # CEL matchConditions are refused by the sandbox (docs/sandbox.md); the webhook
        # itself applies the same exemption.
        hook.pop("matchConditions", None)
    return config


@pytest.fixture(scope="module")
def webhook(
    kube_target: KubeTarget, kubectl: Kubectl, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Webhook]:
    """klockproxy webhook registered in the target, Locks from the cluster."""
    if not kube_target.is_sandbox:
        pytest.skip("the API server must reach a webhook on 127.0.0.1: sandbox targets only")
    kubectl("apply", "-f", "-", input=crd_text(), check=True)
    kubectl(
        "wait", "--for=condition=Established", "crd/locks.klock.rnemet.dev", "--timeout=60s",
        check=True, timeout=90,
    )  # fmt: skip
    work = tmp_path_factory.mktemp("webhook")
    ca = CertificateAuthority.create("klockproxy e2e webhook CA")
    cert, key = ca.issue_server(["127.0.0.1", "localhost"])
    (work / "tls.crt").write_bytes(cert)
    (work / "tls.key").write_bytes(key)
    settings = WebhookSettings(
        kubeconfig=str(kube_target.kubeconfig),
        context=kube_target.admin_context,
        listen="127.0.0.1:0",
        tls_cert=str(work / "tls.crt"),
        tls_key=str(work / "tls.key"),
        locks=("cluster",),
    )
    thread = WebhookThread(WebhookServer(settings)).start()
    enrol_value = uuid.uuid4().hex[:10]
    config_name = f"klockproxy-e2e-{enrol_value}"
    config = registration(config_name, thread.url, ca.cert_pem, enrol_value)
    try:
        kubectl("apply", "-f", "-", input=yaml.safe_dump(config), check=True)
        (hook,) = config["webhooks"]
        yield Webhook(thread, hook["name"], config_name, enrol_value, kubectl)
    finally:
        kubectl("delete", "validatingwebhookconfiguration", config_name, "--ignore-not-found")
        thread.stop()


def lock_yaml(
    name: str,
    namespace: str,
    operations: list[str],
    matcher: dict[str, str] | None,
    exclusive: dict[str, str] | None = None,
) -> str:
    spec: dict[str, Any] = {"operations": operations}
    if matcher is not None:
        spec["matcher"] = matcher
    if exclusive is not None:
        spec["exclusive"] = exclusive
    return yaml.safe_dump(
        {
            "apiVersion": "klock.rnemet.dev/v1",
            "kind": "Lock",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
    )


def assert_denied_by_webhook(
    result: Any, webhook: Webhook, matcher: str = "map[aura:red]", lock: str | None = None
) -> None:
    """kubectl failed with the API server's wording of the webhook's denial."""
    assert result.returncode != 0, f"expected a denial, kubectl said: {result.stdout}"
    assert webhook.denied_by + "denied, there is a lock: " + matcher in result.stderr, result.stderr
    if lock is not None:
        assert f"Lock {lock}" in result.stderr, result.stderr
