"""Who the gateway judges a request as, when callers impersonate (kubectl --as), and what
its health port reports (readiness, identity reviews per token, denials by Lock)."""

from __future__ import annotations

import concurrent.futures
import json
import re
import urllib.request

import pytest

from tests.e2e import gateway_support as support
from tests.e2e.gateway_support import Gateway, create_token
from tests.e2e.kube import Kubectl, wait_can_i

gateway = support.gateway

pytestmark = pytest.mark.e2e

JONNY = "jonny-op"


def lockred(namespace: str) -> str:
    return f"""apiVersion: klock.rnemet.dev/v1
kind: Lock
metadata:
  name: lockred
  namespace: {namespace}
spec:
  operations: [UPDATE, DELETE]
  matcher:
    aura: red
  exclusive:
    name: {JONNY}
"""


def setup(admin: Kubectl, gw: Gateway, namespace: str) -> None:
    admin("create", "configmap", "my-cm", "--from-literal", "a=b", namespace=namespace,
          check=True)  # fmt: skip
    admin("label", "cm", "my-cm", "aura=red", namespace=namespace, check=True)
    admin("create", "serviceaccount", JONNY, namespace=namespace, check=True)
    admin(
        "create", "rolebinding", "jonny-edit", "--clusterrole", "edit",
        f"--serviceaccount={namespace}:{JONNY}", namespace=namespace, check=True,
    )  # fmt: skip
    admin("apply", "-f", "-", input=lockred(namespace), check=True)
    gw.wait_lock(f"{namespace}/lockred")


def cm_labels(admin: Kubectl, namespace: str) -> dict[str, str]:
    return dict(admin.json("get", "cm", "my-cm", namespace=namespace)["metadata"]["labels"])


def audit_lines(gw: Gateway, namespace: str) -> list[dict[str, object]]:
    lines = [json.loads(x) for x in gw.audit_path.read_text().splitlines()]
    return [x for x in lines if x["namespace"] == namespace]


def test_a_token_caller_impersonating_jonny_is_judged_as_jonny(
    gateway: Gateway, kubectl: Kubectl, namespace: str
) -> None:
    setup(kubectl, gateway, namespace)
    jonny = f"system:serviceaccount:{namespace}:{JONNY}"
    wait_can_i(kubectl, "update", "configmaps", as_user=jonny, namespace=namespace)
    admin = gateway.kubectl_for("admin-token", gateway.admin_user())
    r = admin("label", "cm", "my-cm", "by=admin", namespace=namespace)
    assert r.returncode != 0 and "denied, there is a lock" in r.stderr
    r = admin("label", "cm", "my-cm", "by=jonny", namespace=namespace, as_user=jonny)
    assert r.returncode == 0, r.stderr
    assert cm_labels(kubectl, namespace)["by"] == "jonny"
    allowed = [x for x in audit_lines(gateway, namespace) if x["verdict"] == "allowed"]
    assert allowed and allowed[-1]["user"] == jonny
    by = allowed[-1]["impersonatedBy"]
    assert isinstance(by, dict) and by["user"] not in ("", jonny)


def test_a_certificate_caller_impersonates_only_what_rbac_allows(
    gateway: Gateway, kubectl: Kubectl, namespace: str
) -> None:
    setup(kubectl, gateway, namespace)
    jonny = f"system:serviceaccount:{namespace}:{JONNY}"
    # "lead" may impersonate jonny-op (and nothing else).
    kubectl(
        "create", "role", "impersonate-jonny", "--verb", "impersonate",
        "--resource", "serviceaccounts", "--resource-name", JONNY,
        namespace=namespace, check=True,
    )  # fmt: skip
    kubectl(
        "create", "rolebinding", "lead-impersonates", "--role", "impersonate-jonny",
        "--user", "lead", namespace=namespace, check=True,
    )  # fmt: skip
    wait_can_i(kubectl, "impersonate", f"serviceaccounts/{JONNY}", as_user="lead",
               namespace=namespace)  # fmt: skip
    lead = gateway.kubectl_for("lead", gateway.cert_user("lead", ["team"]))
    r = lead("label", "cm", "my-cm", "by=lead-as-jonny", namespace=namespace, as_user=jonny)
    assert r.returncode == 0, r.stderr
    assert cm_labels(kubectl, namespace)["by"] == "lead-as-jonny"
    line = [x for x in audit_lines(gateway, namespace) if x["verdict"] == "allowed"][-1]
    assert line["user"] == jonny
    assert line["impersonatedBy"] == {"user": "lead", "uid": "", "groups": ["team"]}
    # Anyone else, or a group on top: 403 from the gateway, nothing changes.
    r = lead("label", "cm", "my-cm", "by=lead-as-admin", "--overwrite", namespace=namespace,
             as_user="admin")  # fmt: skip
    assert r.returncode != 0 and "cannot impersonate" in r.stderr
    r = lead("label", "cm", "my-cm", "by=lead-as-masters", "--overwrite",
             "--as-group=system:masters", namespace=namespace, as_user=jonny)  # fmt: skip
    assert r.returncode != 0 and "cannot impersonate" in r.stderr
    assert cm_labels(kubectl, namespace)["by"] == "lead-as-jonny"


def _metrics(gw: Gateway) -> str:
    url = gw.thread.service.health_url
    with urllib.request.urlopen(url + "/metrics", timeout=30) as resp:
        return str(resp.read().decode())


def _value(text: str, series: str) -> float:
    match = re.search(r"^" + re.escape(series) + r" ([0-9.e+]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def test_health_port_and_one_review_per_token(
    gateway: Gateway, kubectl: Kubectl, namespace: str
) -> None:
    url = gateway.thread.service.health_url
    for path in ("/healthz", "/readyz"):
        with urllib.request.urlopen(url + path, timeout=30) as resp:
            assert resp.status == 200
    setup(kubectl, gateway, namespace)
    token = create_token(kubectl, namespace, JONNY)
    jonny = gateway.kubectl_for("jonny-metrics", gateway.token_user(token))
    reviews = 'klockproxy_identity_reviews_total{kind="selfsubjectreview",result="ok"}'
    before = _value(_metrics(gateway), reviews)

    def label(i: int) -> tuple[int, str]:
        r = jonny("label", "cm", "my-cm", f"n{i}=x", namespace=namespace)
        return r.returncode, r.stderr

    # Concurrent and repeated mutations with one new token: one review (single flight, TTL).
    # (Concurrent writes judged on the same version may conflict: the guard, not a denial.)
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(label, range(12)))
    assert any(rc == 0 for rc, _ in results)
    for rc, err in results:
        assert rc == 0 or "modified" in err or "onflict" in err, err
    text = _metrics(gateway)
    assert _value(text, reviews) - before == 1
    assert _value(text, 'klockproxy_identity_cache_lookups_total{result="hit"}') > 0
    admin = gateway.kubectl_for("admin-metrics", gateway.cert_user("gw-admin", ["system:masters"]))
    assert admin("label", "cm", "my-cm", "y=z", namespace=namespace).returncode != 0
    text = _metrics(gateway)
    assert _value(text, f'klockproxy_lock_denials_total{{lock="{namespace}/lockred"}}') >= 1
    assert _value(text, 'klockproxy_requests_total{verb="patch",verdict="denied"}') >= 1
    # Every write that went through was judged allowed (a conflicting one may be refused by
    # the API server's own dry run, before the real write).
    written = sum(1 for rc, _ in results if rc == 0)
    assert _value(text, 'klockproxy_requests_total{verb="patch",verdict="allowed"}') >= written
    assert _value(text, "klockproxy_upstream_latency_seconds_count") > 0
    assert _value(text, 'klockproxy_lock_source_synced{source="cluster"}') == 1
    assert _value(text, "klockproxy_locks_loaded") >= 1
    # Bounded cardinality: no series names a user, a token or an object.
    assert "jonny" not in text and token[:20] not in text and "my-cm" not in text


def test_exclusive_uid_uses_the_uid_of_the_callers_token(
    gateway: Gateway, kubectl: Kubectl, namespace: str
) -> None:
    """The identity keeps the uid the API server reports: a Lock exclusive to the service
    account's uid lets its token through, and not a re-created account of the same name."""
    setup(kubectl, gateway, namespace)
    uid = kubectl.json("get", "serviceaccount", JONNY, namespace=namespace)["metadata"]["uid"]
    kubectl("delete", "lock", "lockred", namespace=namespace, check=True)
    gateway.wait_lock(f"{namespace}/lockred", present=False)
    kubectl(
        "apply", "-f", "-", namespace=namespace, check=True,
        input=lockred(namespace).replace(f"name: {JONNY}\n", f"uid: {uid}\n").replace(
            "name: lockred", "name: lock-uid"),
    )  # fmt: skip
    gateway.wait_lock(f"{namespace}/lock-uid")
    jonny = gateway.kubectl_for(
        "jonny-uid", gateway.token_user(create_token(kubectl, namespace, JONNY))
    )
    r = jonny("label", "cm", "my-cm", "by=jonny-uid", namespace=namespace)
    assert r.returncode == 0, r.stderr
    # Same name, new account (new uid): not the one the Lock names.
    kubectl("delete", "serviceaccount", JONNY, namespace=namespace, check=True)
    kubectl("create", "serviceaccount", JONNY, namespace=namespace, check=True)
    again = gateway.kubectl_for(
        "jonny-uid-2", gateway.token_user(create_token(kubectl, namespace, JONNY))
    )
    r = again("label", "cm", "my-cm", "by=impostor", "--overwrite", namespace=namespace)
    assert r.returncode != 0 and "denied, there is a lock" in r.stderr
    assert cm_labels(kubectl, namespace)["by"] == "jonny-uid"
