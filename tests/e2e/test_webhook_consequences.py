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
