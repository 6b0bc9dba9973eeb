"""``klockproxy serve --audit-log``: one JSON line per judged mutation, no credentials."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from klockproxy.proxy.serve import ProxyThread, ServeSettings
from tests.e2e.kube import Kubectl, KubeTarget

pytestmark = pytest.mark.e2e


def test_serve_writes_an_audit_line_per_judged_mutation(
    kube_target: KubeTarget, kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    locks = tmp_path / "locks"
    locks.mkdir()
    (locks / "lock.yaml").write_text(
        f"apiVersion: klock.rnemet.dev/v1\nkind: Lock\nmetadata:\n  name: lockred\n"
        f"  namespace: {namespace}\nspec:\n  operations: [UPDATE]\n  matcher:\n    aura: red\n"
    )
    for name, label in (("red", "aura=red"), ("blue", "aura=blue")):
        kubectl("create", "configmap", name, "--from-literal", "a=b", namespace=namespace,
                check=True)  # fmt: skip
        kubectl("label", "cm", name, label, namespace=namespace, check=True)
    audit = tmp_path / "audit.jsonl"
    thread = ProxyThread(
        ServeSettings(
            write_kubeconfig=tmp_path / "proxy.kubeconfig",
            kubeconfig=str(kube_target.kubeconfig),
            context=kube_target.admin_context,
            listen="127.0.0.1:0",
            locks=(str(locks),),
            state_dir=tmp_path / "state",
            audit_log=str(audit),
        )
    ).start()
    try:
        k = Kubectl(thread.kubeconfig_path, home=tmp_path / "home")
        assert k("label", "cm", "red", "x=y", namespace=namespace).returncode != 0
        assert k("label", "cm", "blue", "x=y", namespace=namespace).returncode == 0
        assert k("get", "cm", namespace=namespace).returncode == 0
    finally:
        thread.stop()
    lines = [json.loads(x) for x in audit.read_text().splitlines()]
    assert [(x["name"], x["verdict"], x["locks"]) for x in lines] == [
        ("red", "denied", [f"{namespace}/lockred"]),
        ("blue", "allowed", []),
    ]
    assert all(x["user"] and x["verb"] == "patch" and x["resource"] == "configmaps"
               for x in lines)  # fmt: skip
    assert thread.client_token not in audit.read_text()
