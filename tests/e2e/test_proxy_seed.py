"""The founding scenario (docs/semantics.md, "The founding scenario"), row by row, with real kubectl
through the proxy: once with the Lock in a lock file, once created with kubectl."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest

from klockproxy.cluster.lock_sources import FileLockSource
from tests.e2e import test_proxy_support as support
from tests.e2e.kube import Kubectl, wait_can_i
from tests.e2e.test_proxy_support import (
    VIAS,
    Locks,
    Proxy,
    Via,
    assert_denied,
    assert_ok,
    labels,
)

# The shared fixtures (see test_proxy_support).
proxy = support.proxy
locks = support.locks

pytestmark = pytest.mark.e2e

JONNY = "jonny-op"


def jonny(namespace: str) -> str:
    return f"system:serviceaccount:{namespace}:{JONNY}"


def setup_scenario(admin: Kubectl, namespace: str) -> None:
    """The scenario's objects, created as the admin exactly as the walk-through does."""

    def k(*args: str) -> None:
        admin(*args, namespace=namespace, check=True)

    k("run", "my-pod", "--image", "nginx", "--labels", "aura=red")
    k("create", "configmap", "my-cm", "--from-literal", "nikola=tesla")
    k("label", "cm", "my-cm", "aura=red")
    k("run", "other-pod", "--image", "nginx")
    k("create", "serviceaccount", JONNY)
    k(
        "create", "role", "app-op",
        "--verb", "list", "--verb", "get", "--verb", "create", "--verb", "update",
        "--verb", "delete", "--verb", "patch", "--resource", "pods,configmaps",
    )  # fmt: skip
    k("create", "rolebinding", "jonny-app", "--role", "app-op", "--serviceaccount",
      f"{namespace}:{JONNY}")  # fmt: skip
    wait_can_i(admin, "delete", "configmaps", as_user=jonny(namespace), namespace=namespace)


def add_lockred(locks: Locks, via: Via) -> None:
    locks.via = via
    locks.add("lockred", ["UPDATE", "DELETE"], {"aura": "red"}, {"name": JONNY})


@dataclass(frozen=True)
class Row:
    who: str  # "admin" or "jonny"
    args: tuple[str, ...]
    allowed: bool
    check: Callable[[Kubectl, str], None]


def pod_label(name: str, key: str, value: str | None) -> Callable[[Kubectl, str], None]:
    def check(admin: Kubectl, ns: str) -> None:
        assert labels(admin, ns, "pod", name).get(key) == value

    return check


def cm_label(key: str, value: str | None) -> Callable[[Kubectl, str], None]:
    def check(admin: Kubectl, ns: str) -> None:
        assert labels(admin, ns, "cm", "my-cm").get(key) == value

    return check


def cm_exists(expected: bool) -> Callable[[Kubectl, str], None]:
    def check(admin: Kubectl, ns: str) -> None:
        assert admin.exists("cm", "my-cm", namespace=ns) is expected

    return check


ROWS = {
    "admin label my-pod: denied": Row(
        "admin", ("label", "pod", "my-pod", "here=was-admin"), False,
        pod_label("my-pod", "here", None),
    ),
    "admin label my-cm: denied": Row(
        "admin", ("label", "cm", "my-cm", "x=y"), False, cm_label("x", None)
    ),
    "admin delete my-cm: denied": Row(
        "admin", ("delete", "cm", "my-cm"), False, cm_exists(True)
    ),
    "admin label other-pod: allowed": Row(
        "admin", ("label", "pod", "other-pod", "aura=blue", "--overwrite"), True,
        pod_label("other-pod", "aura", "blue"),
    ),
    "jonny label my-pod: allowed": Row(
        "jonny", ("label", "pod", "my-pod", "here=was-jonny"), True,
        pod_label("my-pod", "here", "was-jonny"),
    ),
    "jonny update my-cm: allowed": Row(
        "jonny", ("label", "cm", "my-cm", "x=jonny"), True, cm_label("x", "jonny")
    ),
    "jonny delete my-cm: allowed": Row(
        "jonny", ("delete", "cm", "my-cm"), True, cm_exists(False)
    ),
}  # fmt: skip


@pytest.mark.parametrize("via", VIAS)
@pytest.mark.parametrize("row", list(ROWS), ids=list(ROWS))
def test_founding_scenario_row(
    via: Via, row: str, proxy: Proxy, locks: Locks, kubectl: Kubectl, namespace: str
) -> None:
    setup_scenario(kubectl, namespace)
    add_lockred(locks, via)
    r = ROWS[row]
    as_user = jonny(namespace) if r.who == "jonny" else None
    result = proxy.kubectl(*r.args, namespace=namespace, as_user=as_user)
    if r.allowed:
        assert_ok(result)
    else:
        assert_denied(result, "map[aura:red]", lock=f"{namespace}/lockred")
    r.check(kubectl, namespace)


@pytest.mark.parametrize("via", VIAS)
def test_after_the_lock_is_deleted_admin_may_label_my_pod(
    via: Via, proxy: Proxy, locks: Locks, kubectl: Kubectl, namespace: str
) -> None:
    setup_scenario(kubectl, namespace)
    add_lockred(locks, via)
    assert_denied(proxy.kubectl("label", "pod", "my-pod", "here=was-admin", namespace=namespace))
    # With kubectl the lock is deleted THROUGH the proxy: Lock objects are never locked.
    locks.remove("lockred", through_proxy=True)
    assert_ok(proxy.kubectl("label", "pod", "my-pod", "here=was-admin", namespace=namespace))
    assert labels(kubectl, namespace, "pod", "my-pod")["here"] == "was-admin"


def test_jonny_needs_the_role_binding(proxy: Proxy, kubectl: Kubectl, namespace: str) -> None:
    """Before the binding, RBAC (the API server, not the proxy) refuses jonny-op."""
    kubectl("create", "serviceaccount", JONNY, namespace=namespace, check=True)
    result = proxy.kubectl("get", "pods", namespace=namespace, as_user=jonny(namespace))
    assert result.returncode != 0
    assert "forbidden" in result.stderr.lower()
    assert "cannot list resource" in result.stderr
    assert "there is a lock" not in result.stderr


def test_an_invalid_lock_file_edit_keeps_the_lock(
    proxy: Proxy, locks: Locks, kubectl: Kubectl, namespace: str
) -> None:
    """A mistyped save of the lock file must not unlock anything: the last good set stays."""
    setup_scenario(kubectl, namespace)
    add_lockred(locks, "file")
    path = proxy.lock_dir / f"{namespace}-lockred.yaml"
    lock_set = proxy.thread.proxy.lock_set
    assert lock_set is not None
    source = next(s for s in lock_set.sources if isinstance(s, FileLockSource))
    path.write_text(path.read_text().replace("UPDATE", "UPDAET"))
    proxy.wait(lambda _: source.last_error is not None, "the invalid edit")
    assert source.last_error is not None and "UPDAET" in source.last_error
    assert_denied(proxy.kubectl("label", "pod", "my-pod", "x=y", namespace=namespace))
    assert "x" not in labels(kubectl, namespace, "pod", "my-pod")
    # Fixed: reloaded, still enforced.
    path.write_text(path.read_text().replace("UPDAET", "UPDATE"))
    proxy.wait(lambda _: source.last_error is None, "the fixed file")
    assert_denied(proxy.kubectl("label", "pod", "my-pod", "x=y", namespace=namespace))
