"""The webhook judges what the garbage collector does next with its own ownership index
(issue 13), kubectl straight to the API server: a chain through any kind is refused, one of
two owners may go."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e import webhook_support as support
from tests.e2e.kube import Kubectl
from tests.e2e.webhook_support import Webhook, assert_denied_by_webhook, lock_yaml

webhook = support.webhook

pytestmark = pytest.mark.e2e


def make(admin: Kubectl, namespace: str, manifest: dict[str, Any]) -> dict[str, Any]:
    out = admin("create", "-o", "json", "-f", "-", input=json.dumps(manifest),
                namespace=namespace, check=True)  # fmt: skip
    created: dict[str, Any] = json.loads(out.stdout)
    return created


def ref(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj["metadata"]
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": meta["name"],
            "uid": meta["uid"]}  # fmt: skip


def cm(admin: Kubectl, namespace: str, name: str, *owners: dict[str, Any], **labels: str) -> Any:
    meta: dict[str, Any] = {"name": name, "labels": labels}
    if owners:
        meta["ownerReferences"] = [ref(o) for o in owners]
    return make(admin, namespace, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta})


def test_the_webhook_follows_owners_through_any_kind(
    webhook: Webhook, kubectl: Kubectl, namespace: str
) -> None:
    webhook.enrol(namespace)
    kubectl("apply", "-f", "-", check=True,
            input=lock_yaml("nodelete", namespace, ["DELETE"], {"aura": "red"}))  # fmt: skip
    webhook.wait(lambda locks: f"{namespace}/nodelete" in locks, "nodelete")
    # ConfigMap -> ServiceAccount -> locked ConfigMap.
    top = cm(kubectl, namespace, "top")
    meta = {"name": "middle", "ownerReferences": [ref(top)]}
    sa = make(kubectl, namespace, {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta})
    cm(kubectl, namespace, "locked", sa, aura="red")
    result = kubectl("delete", "cm", "top", namespace=namespace)
    assert_denied_by_webhook(result, webhook, lock=f"{namespace}/nodelete")
    assert 'configmaps "locked"' in result.stderr
    assert kubectl.exists("cm", "top", namespace=namespace)
    # Two owners: either may go alone.
    a, b = cm(kubectl, namespace, "a"), cm(kubectl, namespace, "b")
    cm(kubectl, namespace, "shared", a, b, aura="red")
    assert kubectl("delete", "cm", "a", namespace=namespace).returncode == 0
    assert kubectl.exists("cm", "shared", namespace=namespace)


def test_the_webhook_refuses_relabelling_a_pod_into_a_selector_that_deletes_it(
    webhook: Webhook, kubectl: Kubectl, namespace: str
) -> None:
    """A ReplicaSet that wants no pods adopts a bare pod relabelled into its selector and
    deletes it: the webhook lists the namespace's workloads with its own credentials."""
    webhook.enrol(namespace)
    kubectl("apply", "-f", "-", check=True,
            input=lock_yaml("nodelete", namespace, ["DELETE"], {"aura": "red"}))  # fmt: skip
    webhook.wait(lambda locks: f"{namespace}/nodelete" in locks, "nodelete")
    template = {
        "metadata": {"labels": {"app": "kept"}},
        "spec": {"containers": [{"name": "c", "image": "registry.k8s.io/pause:3.9"}]},
    }
    make(kubectl, namespace, {"apiVersion": "apps/v1", "kind": "ReplicaSet",
                              "metadata": {"name": "keeper"},
                              "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "kept"}},
                                       "template": template}})  # fmt: skip
    make(kubectl, namespace, {"apiVersion": "v1", "kind": "Pod",
                              "metadata": {"name": "bare", "labels": {"app": "other"}},
                              "spec": template["spec"]})  # fmt: skip
    result = kubectl("label", "pod", "bare", "app=kept", "aura=red", "--overwrite",
                     namespace=namespace)  # fmt: skip
    assert_denied_by_webhook(result, webhook, lock=f"{namespace}/nodelete")
    assert "under the selector of replicasets keeper" in result.stderr
    pod = kubectl.json("get", "pod", "bare", namespace=namespace)
    assert pod["metadata"]["labels"] == {"app": "other"}
    kubectl("label", "pod", "bare", "aura=red", namespace=namespace, check=True)
    # Created under the selector, locked: refused alike.
    result = kubectl("run", "made", "--image=registry.k8s.io/pause:3.9",
                     "--labels=app=kept,aura=red", namespace=namespace)  # fmt: skip
    assert_denied_by_webhook(result, webhook, lock=f"{namespace}/nodelete")
    assert "its labels put it under the selector of replicasets keeper" in result.stderr
    assert not kubectl.exists("pod", "made", namespace=namespace)
