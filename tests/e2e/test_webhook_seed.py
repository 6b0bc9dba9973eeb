"""The founding scenario row by row with real kubectl straight to the API server, the Locks
enforced by ``klockproxy webhook`` registered there: admin denied (worded by the API server),
jonny-op allowed, other-pod free, deleting the Lock lifts it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e import webhook_support as support
from tests.e2e.kube import Kubectl
from tests.e2e.scenario import JONNY, ROWS, jonny, setup_scenario
from tests.e2e.webhook_support import Webhook, assert_denied_by_webhook, lock_yaml

webhook = support.webhook

pytestmark = pytest.mark.e2e


def add_lockred(kubectl: Kubectl, webhook: Webhook, namespace: str) -> None:
    kubectl(
        "apply", "-f", "-", check=True,
        input=lock_yaml("lockred", namespace, ["UPDATE", "DELETE"], {"aura": "red"},
                        {"name": JONNY}),
    )  # fmt: skip
    webhook.wait(lambda locks: f"{namespace}/lockred" in locks, "lockred")


def assert_ok(result: Any) -> None:
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("row", list(ROWS), ids=list(ROWS))
def test_founding_scenario_row(
    row: str, webhook: Webhook, kubectl: Kubectl, namespace: str
) -> None:
    webhook.enrol(namespace)
    setup_scenario(kubectl, namespace)
    add_lockred(kubectl, webhook, namespace)
    r = ROWS[row]
    as_user = jonny(namespace) if r.who == "jonny" else None
    result = kubectl(*r.args, namespace=namespace, as_user=as_user)
    if r.allowed:
        assert_ok(result)
    else:
        assert_denied_by_webhook(result, webhook, lock=f"{namespace}/lockred")
        # The API server's wording, as Klock's users know it.
        assert "Error from server" in result.stderr
    r.check(kubectl, namespace)


def test_deleting_the_lock_lifts_it(webhook: Webhook, kubectl: Kubectl, namespace: str) -> None:
    webhook.enrol(namespace)
    setup_scenario(kubectl, namespace)
    add_lockred(kubectl, webhook, namespace)
    assert_denied_by_webhook(
        kubectl("label", "pod", "my-pod", "here=was-admin", namespace=namespace), webhook
    )
    # The Lock itself is never locked: the admin deletes it through the webhook.
    assert_ok(kubectl("delete", "lock", "lockred", namespace=namespace))
    webhook.wait(lambda locks: f"{namespace}/lockred" not in locks, "lockred removed")
    assert_ok(kubectl("label", "pod", "my-pod", "here=was-admin", namespace=namespace))
    pod = kubectl.json("get", "pod", "my-pod", namespace=namespace)
    assert pod["metadata"]["labels"]["here"] == "was-admin"


def test_a_namespace_the_webhook_does_not_cover_is_untouched(
    webhook: Webhook, kubectl: Kubectl, namespace: str
) -> None:
    """Not enrolled (for a deployed webhook: kube-system, its own namespace): no call."""
    setup_scenario(kubectl, namespace)
    add_lockred(kubectl, webhook, namespace)
    assert_ok(kubectl("label", "pod", "my-pod", "here=was-admin", namespace=namespace))
