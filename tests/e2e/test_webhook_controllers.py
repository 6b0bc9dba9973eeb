"""The namespace controller, and the garbage collector where the deletion that caused its own
was judged, finish deletions through the webhook (so namespaces never stick in Terminating);
an account that only shares their names is judged like everybody.

The sandbox runs no controllers: their requests are sent by impersonating their accounts
(which the admin may), exactly as the API server would present them to the webhook.
"""

from __future__ import annotations

import json

import pytest

from tests.e2e import webhook_support as support
from tests.e2e.kube import Kubectl, wait_can_i
from tests.e2e.webhook_support import Webhook, assert_denied_by_webhook, lock_yaml

webhook = support.webhook

pytestmark = pytest.mark.e2e

GC = "system:serviceaccount:kube-system:generic-garbage-collector"
NAMESPACE_CONTROLLER = "system:serviceaccount:kube-system:namespace-controller"


def prepare(kubectl: Kubectl, webhook: Webhook, ns: str, *users: str) -> None:
    webhook.enrol(ns)

    def k(*args: str) -> None:
        kubectl(*args, namespace=ns, check=True)

    for name in ("red-1", "red-2", "red-3"):
        k("run", name, "--image", "nginx", "--labels", "aura=red")
    # red-1 belongs to a ConfigMap: deleting the ConfigMap is judged on red-1.
    k("create", "configmap", "owner-cm")
    uid = kubectl.json("get", "configmap", "owner-cm", namespace=ns)["metadata"]["uid"]
    owner = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner-cm", "uid": uid}
    k("patch", "pod", "red-1", "--type", "merge",
      "-p", json.dumps({"metadata": {"ownerReferences": [owner]}}))  # fmt: skip
    # The rights the controllers have in a real cluster (here: on pods of this namespace).
    k("create", "role", "deleter", "--verb", "delete", "--verb", "get", "--verb", "patch",
      "--resource", "pods")  # fmt: skip
    for i, user in enumerate(users):
        k("create", "rolebinding", f"deleter-{i}", "--role", "deleter", "--user", user)
        wait_can_i(kubectl, "delete", "pods", as_user=user, namespace=ns)
    kubectl("apply", "-f", "-", check=True,
            input=lock_yaml("lockred", ns, ["UPDATE", "DELETE"], {"aura": "red"}))  # fmt: skip
    webhook.wait(lambda locks: f"{ns}/lockred" in locks, "lockred")


def test_controllers_finish_deletions(webhook: Webhook, kubectl: Kubectl, namespace: str) -> None:
    prepare(kubectl, webhook, namespace, GC, NAMESPACE_CONTROLLER)
    admin = kubectl("delete", "pod", "red-1", "--wait=false", namespace=namespace)
    assert_denied_by_webhook(admin, webhook)
    # Deleting the owner is judged on what the garbage collector deletes after it.
    owner = kubectl("delete", "configmap", "owner-cm", "--wait=false", namespace=namespace)
    assert_denied_by_webhook(owner, webhook)
    # An object nobody owns is not the garbage collector's to delete: judged.
    stray = kubectl("delete", "pod", "red-3", "--wait=false", namespace=namespace, as_user=GC)
    assert_denied_by_webhook(stray, webhook)
    for user, pod in ((GC, "red-1"), (NAMESPACE_CONTROLLER, "red-2")):
        result = kubectl("delete", "pod", pod, "--wait=false", namespace=namespace, as_user=user)
        assert result.returncode == 0, result.stderr
        assert not kubectl.exists("pod", pod, namespace=namespace)
    # Beyond finishing a deletion they are judged: a relabel out of the Lock is refused.
    relabel = kubectl("label", "pod", "red-3", "aura=blue", "--overwrite", namespace=namespace,
                      as_user=GC)  # fmt: skip
    assert_denied_by_webhook(relabel, webhook)


def test_a_same_named_account_is_judged(webhook: Webhook, kubectl: Kubectl, namespace: str) -> None:
    impostor = f"system:serviceaccount:{namespace}:generic-garbage-collector"
    kubectl("create", "serviceaccount", "generic-garbage-collector", namespace=namespace,
            check=True)  # fmt: skip
    prepare(kubectl, webhook, namespace, impostor)
    result = kubectl("delete", "pod", "red-1", "--wait=false", namespace=namespace,
                     as_user=impostor)  # fmt: skip
    assert_denied_by_webhook(result, webhook)
    assert kubectl.exists("pod", "red-1", namespace=namespace)
