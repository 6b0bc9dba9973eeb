"""One spec, two enforcement points: every case of one table runs through the proxy
(``klockproxy serve``) and through the webhook (``klockproxy webhook`` registered in the API
server), each in a fresh namespace with the same objects and Lock, and must give the same
verdict and the same lock message.

The proxy's message follows ``<resource> "<name>" is forbidden: ``, the webhook's follows the
API server's ``admission webhook "<name>" denied the request: ``; from ``denied, there is a
lock:`` on they must be identical (namespace names aside). The one deliberate difference:
a deletecollection refused by the proxy also lists the locked objects it would delete; the
API server sends the webhook one review per object, so the webhook names the first locked one.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from klockproxy.core.owners import DEPENDENTS_NOTE
from tests.e2e import proxy_support, webhook_support
from tests.e2e.kube import Kubectl, wait_can_i, wait_until
from tests.e2e.proxy_support import Proxy
from tests.e2e.scenario import JONNY, jonny, setup_scenario
from tests.e2e.webhook_support import Webhook, lock_yaml

proxy = proxy_support.proxy
webhook = webhook_support.webhook

pytestmark = pytest.mark.e2e

DENIED = "denied, there is a lock: "
INTRUDER = "intruder"
LOCK = "lockred"


@dataclass(frozen=True)
class Case:
    """One request: the kubectl arguments ({ns} is the namespace), who sends it, stdin, and
    the expected verdict and lock message ({ns} again; None when allowed)."""

    args: tuple[str, ...]
    allowed: bool
    message: str | None = None
    who: str = "admin"  # admin, jonny (the exempt one), intruder (another account)
    stdin: str = ""
    # The proxy adds to this message (deletecollection lists what it would delete).
    proxy_adds: bool = False
    # Allowed, but the sandbox cannot carry it out (no containers): a non-lock error.
    sandbox_fails: bool = False
    # Run as the admin afterwards (undo what the case did beyond its namespace).
    after: tuple[str, ...] = ()


def lock_text(op: str, target: str, ns: str = "{ns}") -> str:
    return f"{DENIED}map[aura:red] (Lock {ns}/{LOCK} forbids {op} of {target}; only {JONNY} may)"


POD = 'pods "my-pod"'
CM = 'configmaps "my-cm"'
APPLIED_CM = """
apiVersion: v1
kind: ConfigMap
metadata:
  name: my-cm
  labels:
    aura: red
data:
  nikola: edison
"""

CASES: dict[str, Case] = {
    # Patch types (kubectl label is a strategic merge patch).
    "label (strategic merge patch)": Case(
        ("label", "pod", "my-pod", "x=y"), False, lock_text("UPDATE", POD)
    ),
    "remove the locked label": Case(
        ("label", "pod", "my-pod", "aura-"), False, lock_text("UPDATE", POD)
    ),
    "merge patch": Case(
        ("patch", "pod", "my-pod", "--type", "merge", "-p", '{"metadata":{"labels":{"x":"y"}}}'),
        False, lock_text("UPDATE", POD),
    ),
    "json patch": Case(
        ("patch", "cm", "my-cm", "--type", "json",
         "-p", '[{"op":"add","path":"/data/x","value":"y"}]'),
        False, lock_text("UPDATE", CM),
    ),
    "server-side apply": Case(
        ("apply", "--server-side", "--force-conflicts", "-f", "-"), False,
        lock_text("UPDATE", CM), stdin=APPLIED_CM,
    ),
    "replace (PUT)": Case(("replace", "-f", "-"), False, lock_text("UPDATE", CM), stdin="cm"),
    "other-pod is free": Case(("label", "pod", "other-pod", "x=y"), True),
    "create a locked-looking pod": Case(
        ("run", "new-pod", "--image", "nginx", "--labels", "aura=red"), True
    ),
    # Subresources on their parent.
    "status": Case(
        ("patch", "pod", "my-pod", "--subresource", "status", "--type", "merge",
         "-p", '{"status":{"phase":"Running"}}'),
        False, lock_text("UPDATE", POD + " through status"),
    ),
    "scale": Case(
        ("scale", "deployment", "web", "--replicas", "3"), False,
        lock_text("UPDATE", 'deployments.apps "web" through scale'),
    ),
    # kubectl drain evicts (pods/eviction); the node is uncordoned afterwards.
    "eviction (kubectl drain)": Case(
        ("drain", "sandbox-node", "--pod-selector", "e2e-ns={ns}", "--force",
         "--ignore-daemonsets", "--timeout=3s"),
        False, lock_text("DELETE", POD + " through eviction"),
        after=("uncordon", "sandbox-node"),
    ),
    "exec (CONNECT)": Case(
        ("exec", "my-pod", "--", "true"), False, lock_text("CONNECT", POD + " through exec")
    ),
    "exec other-pod": Case(("exec", "other-pod", "--", "true"), True, sandbox_fails=True),
    # Deletions.
    "delete": Case(("delete", "pod", "my-pod", "--wait=false"), False, lock_text("DELETE", POD)),
    "delete, dry run": Case(
        ("delete", "pod", "my-pod", "--dry-run=server"), False, lock_text("DELETE", POD)
    ),
    "deletecollection": Case(
        ("delete", "--raw", "/api/v1/namespaces/{ns}/pods"), False, lock_text("DELETE", POD),
        proxy_adds=True,
    ),
    "cascading delete of the owner of a locked object": Case(
        ("delete", "pod", "owner-pod", "--wait=false"), False,
        lock_text("DELETE", 'configmaps "child-cm"') + "; " + DEPENDENTS_NOTE,
    ),
    "orphaning delete of that owner": Case(
        ("delete", "pod", "owner-pod", "--cascade=orphan", "--wait=false"), True
    ),
    "namespace delete": Case(
        ("delete", "namespace", "{ns}", "--wait=false"), False,
        f"{DENIED}map[aura:red] (Lock {{ns}}/{LOCK} forbids DELETE in namespace {{ns}}, and "
        f"deleting the namespace deletes every object in it; only {JONNY} may)",
    ),
    # Who: impersonation (kubectl --as) of the exempt account and of another one.
    "jonny-op labels my-pod": Case(("label", "pod", "my-pod", "x=jonny"), True, who="jonny"),
    "jonny-op deletes my-cm": Case(("delete", "cm", "my-cm"), True, who="jonny"),
    "another account labels my-pod": Case(
        ("label", "pod", "my-pod", "x=intruder"), False, lock_text("UPDATE", POD), who="intruder"
    ),
}  # fmt: skip


def setup(admin: Kubectl, ns: str) -> None:
    """The founding scenario's objects, plus a deployment, a second account with the same
    rights as jonny-op, and a locked ConfigMap owned by an unlocked pod."""
    setup_scenario(admin, ns)
    # What kubectl drain selects (pods of every namespace): this namespace's my-pod only.
    admin("label", "pod", "my-pod", f"e2e-ns={ns}", namespace=ns, check=True)

    def k(*args: str, stdin: str | None = None) -> None:
        admin(*args, namespace=ns, check=True, input=stdin)

    k("create", "deployment", "web", "--image", "nginx")
    k("label", "deployment", "web", "aura=red")
    k("create", "serviceaccount", INTRUDER)
    k("create", "rolebinding", "intruder-app", "--role", "app-op", "--serviceaccount",
      f"{ns}:{INTRUDER}")  # fmt: skip
    k("run", "owner-pod", "--image", "nginx")
    uid = admin.json("get", "pod", "owner-pod", namespace=ns)["metadata"]["uid"]
    child = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "child-cm",
            "labels": {"aura": "red"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "owner-pod",
                                 "uid": uid}],
        },
    }  # fmt: skip
    k("apply", "-f", "-", stdin=json.dumps(child))
    wait_can_i(admin, "patch", "pods", as_user=f"system:serviceaccount:{ns}:{INTRUDER}",
               namespace=ns)  # fmt: skip


@dataclass(frozen=True)
class Outcome:
    returncode: int
    denied: bool
    message: str  # from "denied, there is a lock:" to the end of that line, {ns} for the namespace
    stderr: str


def outcome(result: Any, ns: str) -> Outcome:
    stderr = result.stderr
    found = re.search(re.escape(DENIED) + r".*", stderr)
    message = found.group(0).strip() if found else ""
    return Outcome(result.returncode, bool(found), message.replace(ns, "{ns}"), stderr)


def run_case(case: Case, k: Kubectl, admin: Kubectl, ns: str) -> Outcome:
    stdin = case.stdin
    args = tuple(a.replace("{ns}", ns) for a in case.args)
    if stdin == "cm":
        current = admin.json("get", "cm", "my-cm", namespace=ns)
        current["data"]["x"] = "replaced"
        stdin = json.dumps(current)
    as_user = {
        "admin": None,
        "jonny": jonny(ns),
        "intruder": f"system:serviceaccount:{ns}:{INTRUDER}",
    }
    try:
        result = k(*args, namespace=ns, as_user=as_user[case.who], input=stdin or None)
    finally:
        if case.after:
            admin(*case.after, check=True)
    return outcome(result, ns)


def add_lock(admin: Kubectl, ns: str) -> None:
    text = lock_yaml(LOCK, ns, ["UPDATE", "DELETE", "CONNECT"], {"aura": "red"}, {"name": JONNY})
    admin("apply", "-f", "-", input=text, check=True)


@pytest.fixture
def second_namespace(kubectl: Kubectl) -> Iterator[str]:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name, check=True)
    try:
        wait_until(lambda: kubectl.exists("serviceaccount", "default", namespace=name),
                   f"the default service account of {name}")  # fmt: skip
        yield name
    finally:
        kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")


@pytest.mark.parametrize("name", list(CASES), ids=list(CASES))
def test_same_verdict_and_message_through_proxy_and_webhook(
    name: str,
    proxy: Proxy,
    webhook: Webhook,
    kubectl: Kubectl,
    namespace: str,
    second_namespace: str,
) -> None:
    case = CASES[name]
    via_proxy, via_webhook = namespace, second_namespace
    webhook.enrol(via_webhook)
    try:
        for ns in (via_proxy, via_webhook):
            setup(kubectl, ns)
            add_lock(kubectl, ns)
            key = f"{ns}/{LOCK}"
            proxy.wait(lambda locks, key=key: key in locks, key)  # type: ignore[misc]
            webhook.wait(lambda locks, key=key: key in locks, key)  # type: ignore[misc]
        by_proxy = run_case(case, proxy.kubectl, kubectl, via_proxy)
        by_webhook = run_case(case, kubectl, kubectl, via_webhook)
    finally:
        # Each DELETE Lock makes the proxy watch every kind of its namespace (the ownership
        # index): lift them now rather than when the namespaces are gone.
        for ns in (via_proxy, via_webhook):
            kubectl("delete", "lock", LOCK, "--ignore-not-found", namespace=ns)
            key = f"{ns}/{LOCK}"
            proxy.wait(lambda locks, key=key: key not in locks, f"{key} removed")  # type: ignore[misc]

    # The same verdict, and the one the table expects.
    assert by_proxy.denied is by_webhook.denied is (not case.allowed), (by_proxy, by_webhook)
    if case.allowed:
        for got in (by_proxy, by_webhook):
            assert (got.returncode != 0) is case.sandbox_fails, got.stderr
        return
    assert by_proxy.returncode != 0 and by_webhook.returncode != 0
    # The same lock message; each in its enforcement point's wording.
    assert case.message is not None
    assert by_webhook.message == case.message, by_webhook.stderr
    if case.proxy_adds:
        assert by_proxy.message.startswith(case.message), by_proxy.stderr
    else:
        assert by_proxy.message == by_webhook.message, by_proxy.stderr
    assert webhook.denied_by + DENIED in by_webhook.stderr
    assert "is forbidden: " + DENIED in by_proxy.stderr
