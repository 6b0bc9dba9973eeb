"""Klock's 13 end-to-end cases (docs/semantics.md, "Klock's own end-to-end cases"), with
Locks created with kubectl and every decision made by the proxy for real kubectl. Each case
runs in a fresh namespace; "denied" means kubectl fails with the lock's message and the object
stays."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.e2e import proxy_support as support
from tests.e2e.kube import Kubectl, apply_yaml, wait_can_i
from tests.e2e.proxy_support import Locks, Proxy, assert_denied, assert_ok

pytestmark = pytest.mark.e2e

proxy = support.proxy
locks = support.locks

UD = ["UPDATE", "DELETE"]
DEL = ["DELETE"]


class Case:
    """What one case needs: admin kubectl, kubectl through the proxy, locks, the namespace."""

    def __init__(self, admin: Kubectl, proxy: Proxy, locks: Locks, ns: str) -> None:
        self.admin = admin
        self.proxy = proxy
        self.locks = locks
        self.ns = ns

    def pod(self, name: str, labels: str = "") -> None:
        args = ["run", name, "--image", "nginx"]
        if labels:
            args += ["--labels", labels]
        self.admin(*args, namespace=self.ns, check=True)

    def delete(self, name: str, *, as_user: str | None = None) -> object:
        return self.proxy.kubectl(
            "delete", "pod", name, "--wait=false", namespace=self.ns, as_user=as_user
        )

    def deleted(self, name: str, *, as_user: str | None = None) -> None:
        assert_ok(self.delete(name, as_user=as_user))
        assert self.gone(name)

    def denied(self, name: str, matcher: str, *, as_user: str | None = None) -> None:
        assert_denied(self.delete(name, as_user=as_user), matcher)
        assert not self.gone(name)

    def gone(self, name: str) -> bool:
        result = self.admin("get", "pod", name, "-o", "json", namespace=self.ns)
        if result.returncode != 0:
            assert "NotFound" in result.stderr, result.stderr
            return True
        # A real cluster keeps a deleted pod around for its grace period.
        return '"deletionTimestamp"' in result.stdout

    def label(self, name: str, *labels: str) -> object:
        return self.proxy.kubectl("label", "pod", name, *labels, "--overwrite", namespace=self.ns)


def case_1(c: Case) -> None:
    c.pod("p")
    assert_ok(c.label("p", "x=y"))
    c.deleted("p")


def case_2(c: Case) -> None:
    c.locks.add("lock", UD, {"test": "test"})
    c.pod("p")
    assert_ok(c.label("p", "x=y"))
    c.deleted("p")


def case_3(c: Case) -> None:
    c.locks.add("lock", DEL, {"testtodelete": "test"})
    c.pod("p", "testtodelete=test")
    c.denied("p", "map[testtodelete:test]")
    c.locks.remove("lock")
    c.deleted("p")


def case_4(c: Case) -> None:
    c.locks.add("lock", DEL, {"testtodelete": "test"})
    c.pod("a", "testtodelete=other")
    c.pod("b")
    c.deleted("a")
    c.deleted("b")


def case_5(c: Case) -> None:
    c.locks.add("lock", DEL, {"testtodelete": "test"})
    c.pod("free", "testtodelete=other")
    c.pod("held", "testtodelete=test")
    c.deleted("free")
    c.denied("held", "map[testtodelete:test]")


def case_6(c: Case) -> None:
    c.locks.add("lock", DEL, {"aura": "^(red|blue)"})
    c.pod("red", "aura=red")
    c.pod("green", "aura=green")
    c.deleted("red")
    c.denied("green", "map[aura:^(red|blue)]")
    c.locks.remove("lock")
    c.deleted("green")


def case_7(c: Case) -> None:
    c.locks.add("lock", DEL, {"aura": "red", "element": "^wind"})
    c.pod("wind", "aura=red,element=wind")
    c.pod("fire", "aura=red,element=fire")
    c.deleted("wind")
    c.denied("fire", "map[aura:red element:^wind]")


def case_8(c: Case) -> None:
    c.locks.add("one", DEL, {"slayer": "dragon"})
    c.locks.add("two", DEL, {"aura": "black"})
    for name, labels in (("a", "slayer=knight"), ("b", "aura=white"), ("c", "")):
        c.pod(name, labels)
    for name in ("a", "b", "c"):
        c.deleted(name)


def case_9(c: Case) -> None:
    c.locks.add("one", DEL, {"slayer": "dragon"})
    c.locks.add("two", DEL, {"aura": "black"})
    c.pod("slayer", "slayer=dragon")
    c.pod("a", "slayer=knight")
    c.pod("b", "aura=white")
    c.denied("slayer", "map[slayer:dragon]")
    c.deleted("a")
    c.deleted("b")


def case_10(c: Case) -> None:
    c.locks.add("locksmith", DEL, {"dragon": "black"})
    c.locks.add("knight", ["UPDATE"], {"slayer": "dragon"})
    c.pod("p", "slayer=knight")
    # Neither the old nor the new labels match `knight`: the relabel is allowed.
    assert_ok(c.label("p", "dragon=black"))
    c.denied("p", "map[dragon:black]")


def _labelled_lock(name: str, ns: str, own: str, matcher: str) -> str:
    return (
        "apiVersion: klock.rnemet.dev/v1\nkind: Lock\n"
        f"metadata: {{name: {name}, namespace: {ns}, labels: {{{own}}}}}\n"
        f"spec: {{operations: [UPDATE, DELETE], matcher: {{{matcher}}}}}\n"
    )


def case_11(c: Case) -> None:
    # Each Lock's matcher matches the other's labels; Locks are never locked.
    text = _labelled_lock("fire", c.ns, "element: water", "element: fire")
    text += "---\n" + _labelled_lock("water", c.ns, "element: fire", "element: water")
    apply_yaml(c.proxy.kubectl, text, namespace=c.ns)
    c.proxy.wait(lambda ls: {f"{c.ns}/fire", f"{c.ns}/water"} <= set(ls), "both locks")
    for name in ("fire", "water"):
        assert_ok(c.proxy.kubectl("delete", "lock", name, namespace=c.ns))
    assert c.admin("get", "locks", "-o", "name", namespace=c.ns, check=True).stdout == ""


def case_12(c: Case) -> None:
    apply_yaml(c.proxy.kubectl, _labelled_lock("self", c.ns, "me: me", "me: me"), namespace=c.ns)
    c.proxy.wait(lambda ls: f"{c.ns}/self" in ls, "the lock")
    assert_ok(c.proxy.kubectl("delete", "lock", "self", namespace=c.ns))
    assert not c.admin.exists("lock", "self", namespace=c.ns)


def case_13(c: Case) -> None:
    for sa in ("jonny", "johny"):
        c.admin("create", "serviceaccount", sa, namespace=c.ns, check=True)
    c.admin(
        "create", "role", "pods", "--verb=get,list,delete", "--resource=pods",
        namespace=c.ns, check=True,
    )  # fmt: skip
    c.admin(
        "create", "rolebinding", "pods", "--role=pods",
        f"--serviceaccount={c.ns}:jonny", f"--serviceaccount={c.ns}:johny",
        namespace=c.ns, check=True,
    )  # fmt: skip
    for sa in ("jonny", "johny"):
        wait_can_i(
            c.admin, "delete", "pods", as_user=f"system:serviceaccount:{c.ns}:{sa}",
            namespace=c.ns,
        )  # fmt: skip
    c.locks.add("lock", DEL, {"aura": "red"})
    c.pod("p", "aura=red")
    c.denied("p", "map[aura:red]", as_user=f"system:serviceaccount:{c.ns}:jonny")
    c.locks.add("lock", DEL, {"aura": "red"}, {"name": "johny"})
    c.denied("p", "map[aura:red]", as_user=f"system:serviceaccount:{c.ns}:jonny")
    c.deleted("p", as_user=f"system:serviceaccount:{c.ns}:johny")


CASES: dict[int, Callable[[Case], None]] = {
    1: case_1, 2: case_2, 3: case_3, 4: case_4, 5: case_5, 6: case_6, 7: case_7,
    8: case_8, 9: case_9, 10: case_10, 11: case_11, 12: case_12, 13: case_13,
}  # fmt: skip


@pytest.mark.parametrize("number", list(CASES), ids=[f"klock-case-{n}" for n in CASES])
def test_klock_case(
    number: int, proxy: Proxy, locks: Locks, kubectl: Kubectl, namespace: str
) -> None:
    CASES[number](Case(kubectl, proxy, locks, namespace))
