"""The founding scenario through ``klockproxy gateway``: every caller with its own
credentials (jonny-op's own service-account token, an admin token, client certificates)."""

from __future__ import annotations

import concurrent.futures
import sys
from pathlib import Path

import pytest

from tests.e2e import gateway_support as support
from tests.e2e import scenario
from tests.e2e.gateway_support import Gateway, create_token
from tests.e2e.kube import Kubectl

gateway = support.gateway

pytestmark = pytest.mark.e2e

JONNY = "jonny-op"
LOCKRED = """apiVersion: klock.rnemet.dev/v1
kind: Lock
metadata:
  name: lockred
spec:
  operations: [UPDATE, DELETE]
  matcher:
    aura: red
  exclusive:
    name: jonny-op
"""


def setup_scenario(admin: Kubectl, gw: Gateway, namespace: str) -> None:
    """The founding scenario's objects (shared with every mode), then the Lock."""
    scenario.setup_scenario(admin, namespace)
    admin("apply", "-f", "-", input=LOCKRED, namespace=namespace, check=True)
    gw.wait_lock(f"{namespace}/lockred")


def labels(admin: Kubectl, namespace: str, *what: str) -> dict[str, str]:
    obj = admin.json("get", *what, namespace=namespace)
    return dict(obj["metadata"].get("labels") or {})


def assert_denied(result: object) -> None:
    rc, err = result.returncode, result.stderr  # type: ignore[attr-defined]
    assert rc != 0
    assert "denied, there is a lock: map[aura:red]" in err, err


def test_founding_scenario_with_jonnys_own_token_and_an_admin_certificate(
    gateway: Gateway, kubectl: Kubectl, namespace: str
) -> None:
    setup_scenario(kubectl, gateway, namespace)
    admin_cert = gateway.kubectl_for(
        "admin-cert", gateway.cert_user("gw-admin", ["system:masters"])
    )
    admin_token = gateway.kubectl_for("admin-token", gateway.admin_user())
    jonny = gateway.kubectl_for(
        "jonny-token", gateway.token_user(create_token(kubectl, namespace, JONNY))
    )
    for admin in (admin_cert, admin_token):
        assert_denied(admin("label", "pod", "my-pod", "here=was-admin", namespace=namespace))
        assert_denied(admin("label", "cm", "my-cm", "x=y", namespace=namespace))
        assert_denied(admin("delete", "cm", "my-cm", namespace=namespace))
    assert "here" not in labels(kubectl, namespace, "pod", "my-pod")
    assert "x" not in labels(kubectl, namespace, "cm", "my-cm")
    r = admin_cert("label", "pod", "other-pod", "aura=blue", "--overwrite", namespace=namespace)
    assert r.returncode == 0, r.stderr
    assert labels(kubectl, namespace, "pod", "other-pod")["aura"] == "blue"
    # jonny-op, with the service account's own token.
    r = jonny("label", "pod", "my-pod", "here=was-jonny", namespace=namespace)
    assert r.returncode == 0, r.stderr
    assert labels(kubectl, namespace, "pod", "my-pod")["here"] == "was-jonny"
    r = jonny("label", "cm", "my-cm", "x=jonny", namespace=namespace)
    assert r.returncode == 0, r.stderr
    r = jonny("delete", "cm", "my-cm", namespace=namespace)
    assert r.returncode == 0, r.stderr
    assert not kubectl.exists("cm", "my-cm", namespace=namespace)
    # After the Lock is deleted (through the gateway), the admin may label my-pod.
    r = admin_cert("delete", "lock", "lockred", namespace=namespace)
    assert r.returncode == 0, r.stderr
    gateway.wait_lock(f"{namespace}/lockred", present=False)
    r = admin_cert("label", "pod", "my-pod", "here=was-admin", "--overwrite", namespace=namespace)
    assert r.returncode == 0, r.stderr


def test_jonny_by_client_certificate(gateway: Gateway, kubectl: Kubectl, namespace: str) -> None:
    """A certificate naming the service account (CN) acts as it: exempt from lockred."""
    setup_scenario(kubectl, gateway, namespace)
    jonny = gateway.kubectl_for(
        "jonny-cert", gateway.cert_user(f"system:serviceaccount:{namespace}:{JONNY}", [])
    )
    r = jonny("label", "pod", "my-pod", "here=was-jonny-cert", namespace=namespace)
    assert r.returncode == 0, r.stderr
    assert labels(kubectl, namespace, "pod", "my-pod")["here"] == "was-jonny-cert"
    # RBAC still applies to the impersonated identity: jonny may not touch secrets.
    r = jonny("create", "secret", "generic", "s", "--from-literal", "a=b", namespace=namespace)
    assert r.returncode != 0 and "forbidden" in r.stderr.lower()


def test_several_users_at_once(gateway: Gateway, kubectl: Kubectl, namespace: str) -> None:
    """Admins (certificate and token) and jonny-op (token) in parallel: each judged as
    itself."""
    setup_scenario(kubectl, gateway, namespace)
    jonny_token = create_token(kubectl, namespace, JONNY)
    callers = {
        "admin-cert": (gateway.cert_user("gw-admin", ["system:masters"]), False),
        "admin-token": (gateway.admin_user(), False),
        "jonny-token": (gateway.token_user(jonny_token), True),
        "jonny-cert": (
            gateway.cert_user(f"system:serviceaccount:{namespace}:{JONNY}", []),
            True,
        ),
    }

    clients = {name: gateway.kubectl_for(name, user) for name, (user, _) in callers.items()}

    def act(name: str) -> tuple[str, int, str]:
        k = clients[name]
        r = k("label", "pod", "my-pod", f"by-{name}=yes", namespace=namespace)
        return name, r.returncode, r.stderr

    with concurrent.futures.ThreadPoolExecutor(len(callers)) as pool:
        results = list(pool.map(act, [n for n in callers for _ in range(2)]))
    # Concurrent writes judged on the same version may all meet the guard (409) for one
    # caller; such a caller writes once more alone, and must then get through.
    for name, (_, allowed) in callers.items():
        if allowed and not any(n == name and rc == 0 for n, rc, _ in results):
            results.append(act(name))
            assert results[-1][1] == 0, results[-1][2]
    final = labels(kubectl, namespace, "pod", "my-pod")
    for name, rc, err in results:
        allowed = callers[name][1]
        if allowed:
            # Two concurrent writes judged on the same version: one may get 409 (the guard).
            assert rc == 0 or "already has" in err or "modified" in err, err
            assert final.get(f"by-{name}") == "yes"
        else:
            assert rc != 0 and "denied, there is a lock" in err, err
            assert f"by-{name}" not in final


def test_jonny_through_an_exec_credential_plugin(
    gateway: Gateway, kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    """kubeconfig-examples/gateway-exec-plugin.yaml's shape: kubectl runs a plugin that prints
    an ExecCredential; its token makes jonny-op a token caller like any other."""
    setup_scenario(kubectl, gateway, namespace)
    token_file = tmp_path / "jonny.token"
    token_file.write_text(create_token(kubectl, namespace, JONNY))
    plugin = tmp_path / "plugin.py"
    plugin.write_text(
        "import json, pathlib, sys\n"
        "token = pathlib.Path(sys.argv[1]).read_text().strip()\n"
        "print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1',\n"
        "                  'kind': 'ExecCredential', 'status': {'token': token}}))\n"
    )
    user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": [str(plugin), str(token_file)],
            "interactiveMode": "Never",
        }
    }
    jonny = gateway.kubectl_for("jonny-exec", user)
    r = jonny("label", "pod", "my-pod", "here=was-jonny-exec", namespace=namespace)
    assert r.returncode == 0, r.stderr
    assert labels(kubectl, namespace, "pod", "my-pod")["here"] == "was-jonny-exec"
