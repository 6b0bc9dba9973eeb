"""``klockproxy gateway`` as a command: it starts, prints where it serves and the CA path of
the serving certificate it generated, enforces Locks for token callers, and stops on SIGTERM."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from klockproxy.cluster.kubeconfig import write_kubeconfig
from klockproxy.crd import crd_text
from tests.e2e.gateway_support import create_token
from tests.e2e.kube import Kubectl, KubeTarget, stop_process

pytestmark = pytest.mark.e2e

READY = re.compile(
    r"klockproxy gateway serving on (https://\S+) .*clients must trust the CA (\S+); "
    r"health on (http://\S+)"
)


def test_the_gateway_command(
    kube_target: KubeTarget, kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    kubectl("apply", "-f", "-", input=crd_text(), check=True)
    locks = tmp_path / "locks"
    locks.mkdir()
    (locks / "lock.yaml").write_text(
        f"apiVersion: klock.rnemet.dev/v1\nkind: Lock\nmetadata:\n  name: lockred\n"
        f"  namespace: {namespace}\nspec:\n  operations: [UPDATE]\n  matcher:\n    aura: red\n"
    )
    kubectl("create", "configmap", "my-cm", "--from-literal", "a=b", namespace=namespace,
            check=True)  # fmt: skip
    kubectl("label", "cm", "my-cm", "aura=red", namespace=namespace, check=True)
    kubectl("create", "serviceaccount", "ci", namespace=namespace, check=True)
    kubectl("create", "rolebinding", "ci", "--clusterrole", "edit",
            f"--serviceaccount={namespace}:ci", namespace=namespace, check=True)  # fmt: skip
    token = create_token(kubectl, namespace, "ci")
    cmd = [
        sys.executable, "-m", "klockproxy", "gateway",
        "--kubeconfig", str(kube_target.kubeconfig),
        *(["--context", kube_target.admin_context] if kube_target.admin_context else []),
        "--listen", "127.0.0.1:0", "--state-dir", str(tmp_path / "state"),
        "--locks", str(locks), "--health-listen", "127.0.0.1:0", "--audit-log", "-",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        # With --audit-log - the audit lines own standard output: the ready line is on stderr.
        line = ""
        for line in proc.stderr:
            if "serving on" in line or "klockproxy:" in line:
                break
        match = READY.search(line)
        assert match, line
        url, ca_path, health = match.groups()
        assert Path(ca_path).read_bytes().startswith(b"-----BEGIN CERTIFICATE")
        with urllib.request.urlopen(health + "/readyz", timeout=30) as resp:
            assert resp.status == 200
        config = write_kubeconfig(
            tmp_path / "ci.kubeconfig", server=url, ca_pem=Path(ca_path).read_bytes(),
            users={"ci": {"token": token}}, current_user="ci", cluster_name="gateway",
        )  # fmt: skip
        ci = Kubectl(config, home=tmp_path / "home")
        r = ci("label", "cm", "my-cm", "x=y", namespace=namespace)
        assert r.returncode != 0 and "denied, there is a lock" in r.stderr
        r = ci("get", "cm", "my-cm", namespace=namespace)
        assert r.returncode == 0, r.stderr
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
        stop_process(proc)
    assert proc.returncode == 0
    audit = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
    assert [a["verdict"] for a in audit] == ["denied"]
    assert audit[0]["user"] == f"system:serviceaccount:{namespace}:ci"
    assert token not in out
