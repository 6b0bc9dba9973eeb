"""Writes judged on the object the API server itself computes (a dry run of the same request,
conditional on the version read), with real kubectl through the proxy.

A kind the proxy's own patch engine has no schema for (HorizontalPodAutoscaler here; Ingress,
NetworkPolicy... on a real cluster) is patched and applied normally under a Lock, and a
server-side apply that leaves out a label another field manager owns is judged on what the
server keeps. Each was refused by the proxy's local engine before.
"""

from __future__ import annotations

import json

import pytest

from tests.e2e import proxy_support as support
from tests.e2e.kube import Kubectl
from tests.e2e.proxy_support import Locks, Proxy, assert_denied, assert_ok, labels

pytestmark = pytest.mark.e2e

proxy = support.proxy
locks = support.locks


def hpa(name: str, aura: str) -> str:
    return json.dumps(
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": name, "labels": {"aura": aura}},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                "minReplicas": 1,
                "maxReplicas": 3,
            },
        }
    )


def test_a_kind_without_a_local_schema_is_patched_and_applied_under_a_lock(
    proxy: Proxy, kubectl: Kubectl, namespace: str, locks: Locks
) -> None:
    k = support.in_ns(kubectl, namespace)
    p = support.in_ns(proxy.kubectl, namespace)
    if k("api-resources", "--api-group=autoscaling", "-o", "name").stdout.find("horizontal") < 0:
        pytest.skip("the API server serves no HorizontalPodAutoscaler")
    assert_ok(k("apply", "-f", "-", input=hpa("free", "blue")))
    assert_ok(k("apply", "-f", "-", input=hpa("held", "red")))
    locks.add("lockred", ["UPDATE", "DELETE"], {"aura": "red"})

    # Strategic merge (kubectl patch's default) of an unlocked one: no 415, and it lands.
    assert_ok(p("patch", "hpa", "free", "-p", '{"spec":{"minReplicas":2}}'))
    assert kubectl.json("get", "hpa", "free", namespace=namespace)["spec"]["minReplicas"] == 2
    # Client-side apply sends a strategic merge patch too.
    changed = json.loads(hpa("free", "blue"))
    changed["spec"]["maxReplicas"] = 5
    assert_ok(p("apply", "-f", "-", input=json.dumps(changed)))
    assert kubectl.json("get", "hpa", "free", namespace=namespace)["spec"]["maxReplicas"] == 5

    # The server's result is judged: the locked one stays, and nothing moves into the lock.
    assert_denied(p("patch", "hpa", "held", "-p", '{"spec":{"minReplicas":2}}'))
    assert_denied(p("patch", "hpa", "free", "-p", '{"metadata":{"labels":{"aura":"red"}}}'))
    assert kubectl.json("get", "hpa", "held", namespace=namespace)["spec"]["minReplicas"] == 1
    assert labels(kubectl, namespace, "hpa", "free") == {"aura": "blue"}


def test_server_side_apply_keeps_a_label_another_manager_owns(
    proxy: Proxy, kubectl: Kubectl, namespace: str, locks: Locks
) -> None:
    """The manifest leaves out ``override``, which ``kubectl label`` owns: the server keeps
    it, so the applied pod is still exempt from the lock (no false denial)."""
    k = support.in_ns(kubectl, namespace)
    p = support.in_ns(proxy.kubectl, namespace)
    assert_ok(k("create", "configmap", "web"))
    assert_ok(k("label", "configmap", "web", "aura=red", "override=yes"))
    locks.add("red-unless-override", ["UPDATE"], {"aura": "red", "override": "^yes"})
    manifest = json.dumps(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "web", "labels": {"aura": "red", "team": "a"}},
            "data": {"k": "v"},
        }
    )
    assert_ok(p("apply", "--server-side", "--field-manager=ops", "-f", "-", input=manifest))
    assert labels(kubectl, namespace, "configmap", "web") == {
        "aura": "red",
        "override": "yes",
        "team": "a",
    }
    # Removing the override (it makes the lock match) is still refused.
    assert_denied(
        p("label", "configmap", "web", "override-"), matcher="map[aura:red override:^yes]"
    )


def test_patches_that_leave_the_metadata_follow_writes_made_elsewhere(
    proxy: Proxy, kubectl: Kubectl, namespace: str, locks: Locks
) -> None:
    """A patch of data only, and a replace, is judged on the object's latest version, even
    right behind a relabelling made past the proxy (the proxy's index of the namespace may
    not have seen it yet: then the API server answers the proxy's conditional write 409 and
    the proxy judges the request again), and patches in a row never get a conflict."""
    k = support.in_ns(kubectl, namespace)
    p = support.in_ns(proxy.kubectl, namespace)
    assert_ok(k("create", "configmap", "web", "--from-literal=n=0"))
    locks.add("lockred", ["UPDATE", "DELETE"], {"aura": "red"})
    for n in range(3):
        assert_ok(k("label", "configmap", "web", "aura=red", "--overwrite"))
        assert_denied(p("patch", "configmap", "web", "--type=merge", "-p", '{"data":{"n":"x"}}'))
        assert_ok(k("label", "configmap", "web", "aura=blue", "--overwrite"))
        patch = json.dumps({"data": {"n": str(n)}})
        assert_ok(p("patch", "configmap", "web", "--type=merge", "-p", patch))
        assert kubectl.json("get", "configmap", "web", namespace=namespace)["data"] == {"n": str(n)}
    for n in range(5):
        step = json.dumps([{"op": "replace", "path": "/data/n", "value": f"in-a-row-{n}"}])
        assert_ok(p("patch", "configmap", "web", "--type=json", "-p", step))
    assert kubectl.json("get", "configmap", "web", namespace=namespace)["data"] == {
        "n": "in-a-row-4"
    }
    # kubectl replace sends the manifest as it is (no resourceVersion): judged alike.
    manifest = {"apiVersion": "v1", "kind": "ConfigMap", "data": {"n": "replaced"},
                "metadata": {"name": "web", "labels": {"aura": "blue"}}}  # fmt: skip
    assert_ok(p("replace", "-f", "-", input=json.dumps(manifest)))
    assert kubectl.json("get", "configmap", "web", namespace=namespace)["data"] == {"n": "replaced"}
    assert_ok(k("label", "configmap", "web", "aura=red", "--overwrite"))
    assert_denied(p("replace", "-f", "-", input=json.dumps(manifest)))
    assert labels(kubectl, namespace, "configmap", "web") == {"aura": "red"}


def test_annotate_and_apply_of_data_follow_writes_made_elsewhere(
    proxy: Proxy, kubectl: Kubectl, namespace: str, locks: Locks
) -> None:
    """``kubectl annotate`` and ``kubectl apply`` of data (which patches the last-applied
    annotation too) change no label: judged on the object's latest version, right behind
    relabellings made past the proxy as above."""
    k = support.in_ns(kubectl, namespace)
    p = support.in_ns(proxy.kubectl, namespace)

    def manifest(n: int) -> str:
        return json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "data": {"n": str(n)},
                           "metadata": {"name": "cfg", "labels": {"aura": "blue"}}})  # fmt: skip

    assert_ok(k("apply", "-f", "-", input=manifest(0)))
    locks.add("lockred", ["UPDATE", "DELETE"], {"aura": "red"})
    for n in range(1, 4):
        assert_ok(k("label", "configmap", "cfg", "aura=red", "--overwrite"))
        assert_denied(p("annotate", "configmap", "cfg", f"note={n}", "--overwrite"))
        assert_denied(p("apply", "-f", "-", input=manifest(n)))
        kept = kubectl.json("get", "configmap", "cfg", namespace=namespace)
        assert kept["data"] == {"n": str(n - 1)}
        assert kept["metadata"].get("annotations", {}).get("note") == (
            str(n - 1) if n > 1 else None
        )
        assert_ok(k("label", "configmap", "cfg", "aura=blue", "--overwrite"))
        assert_ok(p("annotate", "configmap", "cfg", f"note={n}", "--overwrite"))
        assert_ok(p("apply", "-f", "-", input=manifest(n)))
        stored = kubectl.json("get", "configmap", "cfg", namespace=namespace)
        assert stored["data"] == {"n": str(n)}
        assert stored["metadata"]["annotations"]["note"] == str(n)
        assert stored["metadata"]["labels"] == {"aura": "blue"}


def test_label_and_apply_of_labels_follow_writes_made_elsewhere(
    proxy: Proxy, kubectl: Kubectl, namespace: str, locks: Locks
) -> None:
    """``kubectl label`` (a merge patch of labels alone) and ``kubectl apply`` of a manifest
    whose labels changed (a strategic merge patch of labels and the last-applied annotation)
    are judged on the labels the object has and will have, right behind relabellings made
    past the proxy as above: nothing moves into the Lock, nothing locked changes."""
    k = support.in_ns(kubectl, namespace)
    p = support.in_ns(proxy.kubectl, namespace)

    def manifest(**extra: str) -> str:
        meta = {"name": "cfg", "labels": {"aura": "blue", **extra}}
        return json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta})

    assert_ok(k("apply", "-f", "-", input=manifest()))
    locks.add("lockred", ["UPDATE", "DELETE"], {"aura": "red"})
    for n in range(1, 4):
        assert_ok(k("label", "configmap", "cfg", "aura=red", "--overwrite"))
        assert_denied(p("label", "configmap", "cfg", f"team=t{n}", "--overwrite"))
        assert_denied(p("label", "configmap", "cfg", "aura-"))
        assert_denied(p("apply", "-f", "-", input=manifest(team=f"t{n}")))
        assert labels(kubectl, namespace, "configmap", "cfg") == (
            {"aura": "red", "team": f"t{n - 1}"} if n > 1 else {"aura": "red"}
        )
        assert_ok(k("label", "configmap", "cfg", "aura=blue", "--overwrite"))
        assert_ok(p("label", "configmap", "cfg", f"team=t{n}", "--overwrite"))
        assert_denied(p("label", "configmap", "cfg", "aura=red", "--overwrite"))
        assert_denied(p("apply", "-f", "-", input=manifest(aura="red", team=f"t{n}")))
        assert labels(kubectl, namespace, "configmap", "cfg") == {"aura": "blue", "team": f"t{n}"}
        assert_ok(p("apply", "-f", "-", input=manifest(team=f"t{n}", tier="web")))
        assert_ok(p("label", "configmap", "cfg", "tier-"))
        assert labels(kubectl, namespace, "configmap", "cfg") == {"aura": "blue", "team": f"t{n}"}
