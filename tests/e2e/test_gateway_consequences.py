"""The gateway judges what the garbage collector does next with its own ownership index
(issue 13): a chain through any kind is refused, one of two owners may go."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from tests.e2e import gateway_support as support
from tests.e2e.gateway_support import Gateway
from tests.e2e.kube import Kubectl
from tests.e2e.proxy_support import assert_denied, assert_ok, lock_manifest

pytestmark = pytest.mark.e2e

gateway = support.gateway


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


def test_the_gateway_follows_owners_through_any_kind(
    gateway: Gateway, kubectl: Kubectl, namespace: str
) -> None:
    lock = lock_manifest("nodelete", namespace, ["DELETE"], {"aura": "red"})
    kubectl("apply", "-f", "-", input=yaml.safe_dump(lock), check=True)
    gateway.wait_lock(f"{namespace}/nodelete")
    admin = gateway.kubectl_for("admin", gateway.admin_user())
    # ConfigMap -> ServiceAccount -> locked ConfigMap.
    top = cm(kubectl, namespace, "top")
    meta = {"name": "middle", "ownerReferences": [ref(top)]}
    sa = make(kubectl, namespace, {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta})
    cm(kubectl, namespace, "locked", sa, aura="red")
    result = admin("delete", "cm", "top", namespace=namespace)
    assert_denied(result)
    assert 'configmaps "locked"' in result.stderr
    assert kubectl.exists("cm", "top", namespace=namespace)
    # Two owners: either may go alone.
    a, b = cm(kubectl, namespace, "a"), cm(kubectl, namespace, "b")
    cm(kubectl, namespace, "shared", a, b, aura="red")
    assert_ok(admin("delete", "cm", "a", namespace=namespace))
    assert kubectl.exists("cm", "shared", namespace=namespace)
