"""The founding scenario (docs/semantics.md) as data and steps, shared by every mode's
end-to-end tests (local proxy, gateway, webhook)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tests.e2e.kube import Kubectl, wait_can_i
from tests.e2e.proxy_support import (
    Locks,
    Via,
    labels,
)


@dataclass(frozen=True)
class Row:
    who: str  # "admin" or "jonny"
    args: tuple[str, ...]
    allowed: bool
    check: Callable[[Kubectl, str], None]


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
