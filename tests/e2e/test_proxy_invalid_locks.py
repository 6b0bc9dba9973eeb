"""An invalid Lock in the cluster fails closed, with real kubectl through the proxy.

The Lock CRD (like Klock's) accepts any string as an operation or an expression, so the
cluster can hold a Lock klockproxy cannot read. While it exists every mutation in its
namespace is refused with a message naming the Lock and the fault; Lock objects stay
writable, so applying the fixed Lock through the proxy works, and then the ordinary rules
apply again.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import yaml

from klockproxy.core.engine import Engine
from tests.e2e import proxy_support as support
from tests.e2e.kube import Kubectl
from tests.e2e.proxy_support import (
    WAIT_SECONDS,
    Proxy,
    assert_denied,
    assert_ok,
    labels,
    lock_manifest,
)

# The shared fixtures (see proxy_support).
proxy = support.proxy

pytestmark = pytest.mark.e2e

GOOD_SPEC: dict[str, object] = {"operations": ["UPDATE", "DELETE"], "matcher": {"aura": "red"}}
# (the invalid spec, the fault the denial must quote); each passes the CRD's schema.
INVALID = {
    "misspelt operation": (
        {"operations": ["UPDTAE", "DELETE"], "matcher": {"aura": "red"}},
        "spec.operations[0]: unknown operation 'UPDTAE'",
    ),
    "dangling operator": (
        {"operations": ["UPDATE", "DELETE"], "matcher": {"aura": "red|"}},
        "spec.matcher.aura: ",
    ),
    "empty value": (
        {"operations": ["UPDATE", "DELETE"], "matcher": {"aura": ""}},
        "spec.matcher.aura: ",
    ),
}


def wait_engine(proxy: Proxy, predicate: Callable[[Engine], bool], what: str) -> None:
    """Wait until the proxy's engine satisfies ``predicate`` (fails after a long while)."""
    lock_set = proxy.thread.service.lock_set
    assert lock_set is not None
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        engine = lock_set.engine
        if engine is not None and predicate(engine):
            return
        time.sleep(0.02)
    raise AssertionError(f"the proxy never saw {what}")


def lock_text(namespace: str, spec: dict[str, object]) -> str:
    manifest = lock_manifest("typo", namespace, [], None)
    manifest["spec"] = spec
    return yaml.safe_dump(manifest)


@pytest.mark.parametrize("case", list(INVALID), ids=list(INVALID))
def test_an_invalid_lock_refuses_its_namespace_until_fixed(
    case: str, proxy: Proxy, kubectl: Kubectl, namespace: str
) -> None:
    spec, fault = INVALID[case]
    kubectl("run", "my-pod", "--image", "nginx", "--labels", "aura=red", namespace=namespace,
            check=True)  # fmt: skip
    kubectl("run", "other-pod", "--image", "nginx", namespace=namespace, check=True)
    kubectl("apply", "-f", "-", input=lock_text(namespace, spec), namespace=namespace, check=True)
    key = f"{namespace}/typo"
    wait_engine(proxy, lambda e: key in {bad.key for bad in e.invalid}, f"invalid lock {key}")

    # The Lock meant only aura=red, but nothing of it can be trusted: both are refused.
    expected = f"denied, Lock {key} is invalid ({fault}"
    refused = (
        ("delete", "pod", "my-pod", "--wait=false"),
        ("label", "pod", "other-pod", "x=y"),
        ("run", "new-pod", "--image", "nginx"),
        # Deleting the namespace would delete everything in it (the Lock included).
        ("delete", "namespace", namespace, "--wait=false"),
    )
    for args in refused:
        result = proxy.kubectl(*args, namespace=namespace)
        assert result.returncode != 0, f"{args} went through: {result.stdout}"
        assert "forbidden" in result.stderr.lower(), result.stderr
        assert expected in result.stderr, result.stderr
        assert "fix or delete it" in result.stderr, result.stderr
    assert kubectl.exists("pod", "my-pod", namespace=namespace)
    assert not kubectl.exists("pod", "new-pod", namespace=namespace)
    assert "x" not in labels(kubectl, namespace, "pod", "other-pod")
    assert "deletionTimestamp" not in kubectl.json("get", "namespace", namespace)["metadata"]

    # Lock objects stay writable: the fixed Lock is applied through the proxy itself.
    fixed = lock_text(namespace, GOOD_SPEC)
    assert_ok(proxy.kubectl("apply", "-f", "-", input=fixed, namespace=namespace))
    wait_engine(
        proxy,
        lambda e: (
            not any(bad.key == key for bad in e.invalid) and any(lk.key == key for lk in e.locks)
        ),
        f"the fixed lock {key}",
    )

    # The ordinary rules again: other-pod is free, my-pod (aura=red) is locked.
    assert_ok(proxy.kubectl("label", "pod", "other-pod", "x=y", namespace=namespace))
    assert labels(kubectl, namespace, "pod", "other-pod")["x"] == "y"
    result = proxy.kubectl("delete", "pod", "my-pod", "--wait=false", namespace=namespace)
    assert_denied(result, "map[aura:red]", lock=key)
    assert kubectl.exists("pod", "my-pod", namespace=namespace)
