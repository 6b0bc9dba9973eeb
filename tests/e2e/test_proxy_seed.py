"""The founding scenario (docs/semantics.md, "The founding scenario"), row by row, with real kubectl
through the proxy: once with the Lock in a lock file, once created with kubectl."""

from __future__ import annotations

import pytest

from klockproxy.cluster.lock_sources import FileLockSource
from tests.e2e import proxy_support as support
from tests.e2e.kube import Kubectl
from tests.e2e.proxy_support import (
    VIAS,
    Locks,
    Proxy,
    Via,
    assert_denied,
    assert_ok,
    labels,
)
from tests.e2e.scenario import (
    JONNY,
    ROWS,
    add_lockred,
    jonny,
    setup_scenario,
)

# The shared fixtures (see proxy_support).
proxy = support.proxy
locks = support.locks

pytestmark = pytest.mark.e2e


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
    lock_set = proxy.thread.service.lock_set
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


def test_a_lock_file_emptied_by_shell_redirection_keeps_the_lock(
    proxy: Proxy, locks: Locks, kubectl: Kubectl, namespace: str
) -> None:
    """``gen > locks.yaml`` empties the file before gen writes it: that window must not
    unlock anything. Only a file that says ``# no locks`` means no locks."""
    setup_scenario(kubectl, namespace)
    add_lockred(locks, "file")
    path = proxy.lock_dir / f"{namespace}-lockred.yaml"
    lock_set = proxy.thread.service.lock_set
    assert lock_set is not None
    source = next(s for s in lock_set.sources if isinstance(s, FileLockSource))
    path.write_text("")  # what `>` leaves until the generator writes
    proxy.wait(lambda _: source.last_error is not None, "the emptied file refused")
    assert source.last_error is not None and "defines no Lock" in source.last_error
    assert_denied(proxy.kubectl("label", "pod", "my-pod", "x=y", namespace=namespace))
    assert "x" not in labels(kubectl, namespace, "pod", "my-pod")
    # Said on purpose: the lock goes.
    path.write_text("# no locks\n")
    key = f"{namespace}/lockred"
    proxy.wait(lambda held: key not in held, "the lock lifted")
    assert_ok(proxy.kubectl("label", "pod", "my-pod", "x=y", namespace=namespace))
