"""Every kubectl command issue 3 lists, with real kubectl, asserting on what the user sees
(exit code, output) and on the objects afterwards (``kubectl get -o json``).

Only kubectl is used, so this module runs unchanged against a real cluster
(``KLOCKPROXY_E2E_KUBECONFIG``); the few sandbox-only facts are guarded by
``kube_target.is_sandbox``.
"""

from __future__ import annotations

import json
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from klockproxy.crd import crd_text
from tests.e2e.kube import Kubectl, KubeTarget, apply_yaml, names, wait_can_i

pytestmark = pytest.mark.e2e

POD_IMAGE = "registry.k8s.io/pause:3.10"
JONNY = "jonny-op"


def _sa_user(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


def _read_lines(proc: subprocess.Popen[str], count: int, out: list[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        out.append(line)
        if len(out) >= count:
            return


def _collect(proc: subprocess.Popen[str], count: int, timeout: float) -> list[str]:
    """Read ``count`` lines of a running kubectl, then stop it (never waits past timeout)."""
    lines: list[str] = []
    reader = threading.Thread(target=_read_lines, args=(proc, count, lines), daemon=True)
    reader.start()
    reader.join(timeout)
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return lines


@pytest.fixture
def ns(kubectl: Kubectl, namespace: str) -> Kubectl:
    """kubectl bound to the test's fresh namespace (via a context-free --namespace)."""
    return kubectl


def test_version_and_discovery(kubectl: Kubectl, kube_target: KubeTarget) -> None:
    result = kubectl("version", check=True)
    assert "Client Version:" in result.stdout
    assert "Server Version:" in result.stdout
    resources = kubectl("api-resources", check=True).stdout
    for expected in ("pods", "configmaps", "deployments", "customresourcedefinitions"):
        assert expected in resources
    assert "po " in resources and "deploy " in resources


def test_get_nodes(kubectl: Kubectl, kube_target: KubeTarget) -> None:
    nodes = kubectl("get", "nodes", check=True).stdout.splitlines()
    assert nodes[0].split()[:2] == ["NAME", "STATUS"]
    assert any(line.split()[1].startswith("Ready") for line in nodes[1:])
    if kube_target.is_sandbox:
        assert nodes[1].split()[0] == "sandbox-node"


def test_drain_evicts_the_pods_of_the_node(
    kubectl: Kubectl, namespace: str, kube_target: KubeTarget
) -> None:
    if not kube_target.is_sandbox:
        pytest.skip("never drain a node of a real cluster")
    kubectl("run", "drained", f"--image={POD_IMAGE}", namespace=namespace, check=True)
    try:
        drained = kubectl(
            "drain", "sandbox-node", "--force", "--pod-selector=run=drained", "--timeout=60s"
        )
        assert drained.returncode == 0, drained.stderr
        assert "pod/drained evicted" in drained.stdout
        assert "node/sandbox-node drained" in drained.stdout
        assert not kubectl.exists("pod", "drained", namespace=namespace)
        node = kubectl.json("get", "node", "sandbox-node")
        assert node["spec"]["unschedulable"] is True
    finally:
        kubectl("uncordon", "sandbox-node", check=True)


def test_run_get_and_output_formats(kubectl: Kubectl, namespace: str) -> None:
    run = kubectl("run", "my-pod", f"--image={POD_IMAGE}", "--labels=aura=red", namespace=namespace)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "pod/my-pod created"
    kubectl("run", "other-pod", f"--image={POD_IMAGE}", namespace=namespace, check=True)
    kubectl("wait", "--for=condition=Ready", "pod/my-pod", "--timeout=120s", namespace=namespace)

    table = kubectl("get", "pods", namespace=namespace, check=True).stdout.splitlines()
    assert table[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert sorted(line.split()[0] for line in table[1:]) == ["my-pod", "other-pod"]

    wide = kubectl("get", "pods", "-o", "wide", namespace=namespace, check=True).stdout
    assert "IP" in wide.splitlines()[0] and "NODE" in wide.splitlines()[0]

    labels = kubectl("get", "pods", "--show-labels", namespace=namespace, check=True).stdout
    my_pod_line = next(line for line in labels.splitlines() if line.startswith("my-pod"))
    assert "aura=red" in my_pod_line

    selected = kubectl("get", "pods", "-l", "aura=red", "-o", "name", namespace=namespace)
    assert selected.stdout.split() == ["pod/my-pod"]
    not_red = kubectl("get", "pods", "-l", "aura!=red", "-o", "name", namespace=namespace)
    assert not_red.stdout.split() == ["pod/other-pod"]

    by_field = kubectl(
        "get",
        "pods",
        "--field-selector",
        "metadata.name=other-pod",
        "-o",
        "name",
        namespace=namespace,
    )
    assert by_field.stdout.split() == ["pod/other-pod"]

    everywhere = kubectl("get", "pods", "-A", check=True).stdout.splitlines()
    assert everywhere[0].split()[0] == "NAMESPACE"
    assert any(line.split()[:2] == [namespace, "my-pod"] for line in everywhere[1:])

    as_yaml = kubectl("get", "pod", "my-pod", "-o", "yaml", namespace=namespace, check=True)
    assert "kind: Pod" in as_yaml.stdout and "aura: red" in as_yaml.stdout
    pod = kubectl.json("get", "pod", "my-pod", namespace=namespace)
    assert pod["metadata"]["labels"] == {"aura": "red"}
    assert pod["spec"]["containers"][0]["image"] == POD_IMAGE
    assert pod["metadata"]["uid"] and pod["metadata"]["resourceVersion"]

    missing = kubectl("get", "pod", "nope", namespace=namespace)
    assert missing.returncode == 1
    assert 'Error from server (NotFound): pods "nope" not found' in missing.stderr


def test_create_the_builtin_kinds(kubectl: Kubectl, namespace: str) -> None:
    n = namespace
    out = kubectl("create", "configmap", "my-cm", "--from-literal=nikola=tesla", namespace=n)
    assert out.stdout.strip() == "configmap/my-cm created", out.stderr
    kubectl(
        "create", "secret", "generic", "s1", "--from-literal=user=admin", namespace=n, check=True
    )
    kubectl(
        "create",
        "deployment",
        "web",
        f"--image={POD_IMAGE}",
        "--replicas=2",
        namespace=n,
        check=True,
    )
    kubectl("create", "serviceaccount", JONNY, namespace=n, check=True)
    kubectl(
        "create",
        "role",
        "app-op",
        "--verb=get",
        "--verb=list",
        "--verb=update",
        "--resource=pods,configmaps",
        namespace=n,
        check=True,
    )
    kubectl(
        "create",
        "rolebinding",
        "jonny-app",
        "--role=app-op",
        f"--serviceaccount={n}:{JONNY}",
        namespace=n,
        check=True,
    )
    wait_can_i(kubectl, "list", "pods", as_user=_sa_user(n, JONNY), namespace=n)

    cm = kubectl.json("get", "cm", "my-cm", namespace=n)
    assert cm["data"] == {"nikola": "tesla"}
    secret = kubectl.json("get", "secret", "s1", namespace=n)
    assert secret["data"] == {"user": "YWRtaW4="} and secret["type"] == "Opaque"
    deploy = kubectl.json("get", "deployment", "web", namespace=n)
    assert deploy["spec"]["replicas"] == 2
    assert deploy["spec"]["template"]["spec"]["containers"][0]["image"] == POD_IMAGE
    role = kubectl.json("get", "role", "app-op", namespace=n)
    assert sorted(role["rules"][0]["verbs"]) == ["get", "list", "update"]
    binding = kubectl.json("get", "rolebinding", "jonny-app", namespace=n)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": JONNY, "namespace": n}]
    assert binding["roleRef"]["name"] == "app-op"

    again = kubectl("create", "configmap", "my-cm", namespace=n)
    assert again.returncode == 1
    assert 'configmaps "my-cm" already exists' in again.stderr

    token = kubectl("create", "token", JONNY, namespace=n, check=True).stdout.strip()
    assert token.count(".") == 2
    listing = kubectl("--token", token, "get", "pods", namespace=n)
    assert listing.returncode == 0, listing.stderr

    manifest = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-file\ndata:\n  k: v\n"
    created = kubectl("create", "-f", "-", input=manifest, namespace=n, check=True)
    assert created.stdout.strip() == "configmap/from-file created"
    assert kubectl.json("get", "cm", "from-file", namespace=n)["data"] == {"k": "v"}

    exposed = kubectl("expose", "deployment", "web", "--port=80", namespace=n)
    assert exposed.stdout.strip() == "service/web exposed", exposed.stderr
    service = kubectl.json("get", "svc", "web", namespace=n)
    assert service["spec"]["ports"][0]["port"] == 80
    assert service["spec"]["clusterIP"]

    get_all = kubectl("get", "cm,secret,deploy,sa,role,rolebinding,svc", namespace=n, check=True)
    for expected in (
        "service/web",
        "configmap/my-cm",
        "secret/s1",
        "deployment.apps/web",
        f"serviceaccount/{JONNY}",
        "role.rbac.authorization.k8s.io/app-op",
        "rolebinding.rbac.authorization.k8s.io/jonny-app",
    ):
        assert expected in get_all.stdout
    cluster = kubectl("get", "namespaces,clusterroles,clusterrolebindings,crd", check=True)
    assert f"namespace/{n}" in cluster.stdout
    assert "clusterrole.rbac.authorization.k8s.io/cluster-admin" in cluster.stdout
    in_all = kubectl("get", "all", namespace=n, check=True).stdout
    assert "deployment.apps/web" in in_all and "service/web" in in_all


def test_create_and_delete_namespace_deletes_contents(kubectl: Kubectl) -> None:
    name = "e2e-ns-lifecycle"
    kubectl("delete", "namespace", name, "--ignore-not-found", "--timeout=120s")
    created = kubectl("create", "namespace", name, check=True)
    assert created.stdout.strip() == f"namespace/{name} created"
    kubectl("create", "configmap", "inside", namespace=name, check=True)
    deleted = kubectl("delete", "namespace", name, "--timeout=120s")
    assert deleted.returncode == 0, deleted.stderr
    assert not kubectl.exists("namespace", name)
    assert kubectl("get", "cm", "inside", namespace=name).returncode == 1


def test_label_annotate_and_rbac_forbidden_until_bound(kubectl: Kubectl, namespace: str) -> None:
    n = namespace
    jonny = _sa_user(n, JONNY)
    kubectl("run", "my-pod", f"--image={POD_IMAGE}", "--labels=aura=red", namespace=n, check=True)
    kubectl("create", "configmap", "my-cm", "--from-literal=nikola=tesla", namespace=n, check=True)
    labelled = kubectl("label", "cm", "my-cm", "aura=red", namespace=n)
    assert labelled.stdout.strip() == "configmap/my-cm labeled"
    annotated = kubectl("annotate", "pod", "my-pod", "note=hello", namespace=n)
    assert annotated.stdout.strip() == "pod/my-pod annotated"
    assert kubectl.json("get", "cm", "my-cm", namespace=n)["metadata"]["labels"] == {"aura": "red"}
    pod = kubectl.json("get", "pod", "my-pod", namespace=n)
    assert pod["metadata"]["annotations"]["note"] == "hello"

    kubectl("create", "serviceaccount", JONNY, namespace=n, check=True)
    kubectl(
        "create",
        "role",
        "app-op",
        "--verb=list",
        "--verb=get",
        "--verb=create",
        "--verb=update",
        "--verb=delete",
        "--verb=patch",
        "--resource=pods,configmaps",
        namespace=n,
        check=True,
    )
    denied = kubectl("get", "pods", as_user=jonny, namespace=n)
    assert denied.returncode == 1
    assert "Error from server (Forbidden)" in denied.stderr
    assert f'User "{jonny}" cannot list resource "pods" in API group ""' in denied.stderr
    can_i = kubectl("auth", "can-i", "list", "pods", as_user=jonny, namespace=n)
    assert (can_i.returncode, can_i.stdout.strip()) == (1, "no")

    kubectl(
        "create",
        "rolebinding",
        "jonny-app",
        "--role=app-op",
        f"--serviceaccount={n}:{JONNY}",
        namespace=n,
        check=True,
    )
    wait_can_i(kubectl, "patch", "pods", as_user=jonny, namespace=n)
    allowed = kubectl("get", "pods", "-o", "name", as_user=jonny, namespace=n)
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout.split() == ["pod/my-pod"]
    can_i = kubectl("auth", "can-i", "list", "pods", as_user=jonny, namespace=n)
    assert (can_i.returncode, can_i.stdout.strip()) == (0, "yes")
    relabel = kubectl("label", "pod", "my-pod", "here=was-jonny", as_user=jonny, namespace=n)
    assert relabel.returncode == 0, relabel.stderr
    assert kubectl.json("get", "pod", "my-pod", namespace=n)["metadata"]["labels"] == {
        "aura": "red",
        "here": "was-jonny",
    }
    still_denied = kubectl("get", "secrets", as_user=jonny, namespace=n)
    assert still_denied.returncode == 1 and "Forbidden" in still_denied.stderr


def test_auth_whoami(kubectl: Kubectl, kube_target: KubeTarget) -> None:
    result = kubectl("auth", "whoami", check=True)
    assert "Username" in result.stdout
    if kube_target.is_sandbox:
        assert "admin" in result.stdout and "system:masters" in result.stdout
    as_json = json.loads(kubectl("auth", "whoami", "-o", "json", check=True).stdout)
    assert as_json["kind"] == "SelfSubjectReview"
    impersonated = kubectl("auth", "whoami", as_user="someone-else", check=True)
    assert "someone-else" in impersonated.stdout


def _editor(tmp_path: Path, sed_expression: str) -> str:
    script = tmp_path / "editor.sh"
    script.write_text(f"#!/bin/sh\nsed -i '{sed_expression}' \"$1\"\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def test_edit_with_a_scripted_editor(kubectl: Kubectl, namespace: str, tmp_path: Path) -> None:
    kubectl(
        "create",
        "configmap",
        "my-cm",
        "--from-literal=nikola=tesla",
        namespace=namespace,
        check=True,
    )
    editor = _editor(tmp_path, "s/nikola: tesla/nikola: edison/")
    edited = kubectl(
        "edit", "cm", "my-cm", namespace=namespace, env={"EDITOR": editor, "KUBE_EDITOR": editor}
    )
    assert edited.returncode == 0, edited.stderr
    assert edited.stdout.strip() == "configmap/my-cm edited"
    assert kubectl.json("get", "cm", "my-cm", namespace=namespace)["data"] == {"nikola": "edison"}


def test_patch_json_merge_strategic(kubectl: Kubectl, namespace: str) -> None:
    n = namespace
    kubectl("create", "configmap", "my-cm", "--from-literal=a=1", namespace=n, check=True)
    json_patch = kubectl(
        "patch",
        "cm",
        "my-cm",
        "--type=json",
        "-p",
        '[{"op":"add","path":"/data/b","value":"2"}]',
        namespace=n,
    )
    assert json_patch.stdout.strip() == "configmap/my-cm patched", json_patch.stderr
    merge = kubectl(
        "patch", "cm", "my-cm", "--type=merge", "-p", '{"data":{"a":null,"c":"3"}}', namespace=n
    )
    assert merge.returncode == 0, merge.stderr
    assert kubectl.json("get", "cm", "my-cm", namespace=n)["data"] == {"b": "2", "c": "3"}

    kubectl("create", "deployment", "web", f"--image={POD_IMAGE}", namespace=n, check=True)
    strategic = kubectl(
        "patch",
        "deployment",
        "web",
        "--type=strategic",
        "-p",
        json.dumps(
            {
                "spec": {
                    "template": {
                        "spec": {
                            "containers": [
                                {"name": "pause", "env": [{"name": "MODE", "value": "test"}]}
                            ]
                        }
                    }
                }
            }
        ),
        namespace=n,
    )
    assert strategic.returncode == 0, strategic.stderr
    containers = kubectl.json("get", "deploy", "web", namespace=n)["spec"]["template"]["spec"][
        "containers"
    ]
    # merged by name: the image is kept, the env added
    assert len(containers) == 1
    assert containers[0]["image"] == POD_IMAGE
    assert containers[0]["env"] == [{"name": "MODE", "value": "test"}]

    bad = kubectl(
        "patch",
        "cm",
        "my-cm",
        "--type=json",
        "-p",
        '[{"op":"test","path":"/data/b","value":"nope"}]',
        namespace=n,
    )
    assert bad.returncode == 1
    assert "is invalid" in bad.stderr
    assert kubectl.json("get", "cm", "my-cm", namespace=n)["data"] == {"b": "2", "c": "3"}


CM_MANIFEST = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: applied
  labels:
    app: demo
data:
  value: "{value}"
"""


def test_apply_client_side_server_side_dry_run_and_diff(kubectl: Kubectl, namespace: str) -> None:
    n = namespace
    first = apply_yaml(kubectl, CM_MANIFEST.format(value="1"), namespace=n)
    assert first.strip() == "configmap/applied created"
    second = apply_yaml(kubectl, CM_MANIFEST.format(value="2"), namespace=n)
    assert second.strip() == "configmap/applied configured"
    cm = kubectl.json("get", "cm", "applied", namespace=n)
    assert cm["data"] == {"value": "2"}
    assert "kubectl.kubernetes.io/last-applied-configuration" in cm["metadata"]["annotations"]

    ssa = kubectl(
        "apply", "--server-side", "-f", "-", input=CM_MANIFEST.format(value="3"), namespace=n
    )
    assert ssa.returncode == 0, ssa.stderr
    assert ssa.stdout.strip() == "configmap/applied serverside-applied"
    assert kubectl.json("get", "cm", "applied", namespace=n)["data"] == {"value": "3"}

    ssa_new = kubectl(
        "apply",
        "--server-side",
        "-f",
        "-",
        input=CM_MANIFEST.format(value="x").replace("applied", "ssa-new"),
        namespace=n,
    )
    assert ssa_new.returncode == 0, ssa_new.stderr
    assert kubectl.json("get", "cm", "ssa-new", namespace=n)["data"] == {"value": "x"}

    dry = kubectl(
        "apply", "--dry-run=server", "-f", "-", input=CM_MANIFEST.format(value="4"), namespace=n
    )
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.strip() == "configmap/applied configured (server dry run)"
    assert kubectl.json("get", "cm", "applied", namespace=n)["data"] == {"value": "3"}

    same = kubectl("diff", "-f", "-", input=CM_MANIFEST.format(value="3"), namespace=n)
    assert same.returncode == 0, same.stdout + same.stderr
    different = kubectl("diff", "-f", "-", input=CM_MANIFEST.format(value="5"), namespace=n)
    assert different.returncode == 1, different.stderr
    assert '-  value: "3"' in different.stdout and '+  value: "5"' in different.stdout
    assert kubectl.json("get", "cm", "applied", namespace=n)["data"] == {"value": "3"}


def test_replace_and_replace_force(kubectl: Kubectl, namespace: str) -> None:
    n = namespace
    apply_yaml(kubectl, CM_MANIFEST.format(value="1"), namespace=n)
    before = kubectl.json("get", "cm", "applied", namespace=n)
    replaced = kubectl("replace", "-f", "-", input=CM_MANIFEST.format(value="2"), namespace=n)
    assert replaced.stdout.strip() == "configmap/applied replaced", replaced.stderr
    after = kubectl.json("get", "cm", "applied", namespace=n)
    assert after["data"] == {"value": "2"}
    assert after["metadata"]["uid"] == before["metadata"]["uid"]

    forced = kubectl(
        "replace", "--force", "-f", "-", input=CM_MANIFEST.format(value="3"), namespace=n
    )
    assert forced.returncode == 0, forced.stderr
    assert "deleted" in forced.stdout and "replaced" in forced.stdout
    recreated = kubectl.json("get", "cm", "applied", namespace=n)
    assert recreated["data"] == {"value": "3"}
    assert recreated["metadata"]["uid"] != before["metadata"]["uid"]

    stale = json.loads(json.dumps(before))
    stale["data"] = {"value": "stale"}
    conflict = kubectl("replace", "-f", "-", input=json.dumps(stale), namespace=n)
    assert conflict.returncode == 1
    assert "Conflict" in conflict.stderr or "modified" in conflict.stderr


def test_delete_by_name_label_and_all(kubectl: Kubectl, namespace: str) -> None:
    n = namespace
    for name, labels in (("a", "tier=x"), ("b", "tier=x"), ("c", "tier=y"), ("d", "tier=y")):
        kubectl("create", "configmap", name, namespace=n, check=True)
        kubectl("label", "cm", name, labels, namespace=n, check=True)
    by_name = kubectl("delete", "cm", "a", namespace=n)
    assert by_name.returncode == 0, by_name.stderr
    assert 'configmap "a" deleted' in by_name.stdout
    by_label = kubectl("delete", "cm", "-l", "tier=y", namespace=n)
    assert by_label.returncode == 0, by_label.stderr
    assert 'configmap "c" deleted' in by_label.stdout and 'configmap "d" deleted' in by_label.stdout
    left = [c for c in names(kubectl.json("get", "cm", namespace=n)) if c != "kube-root-ca.crt"]
    assert left == ["b"]
    everything = kubectl("delete", "cm", "--all", namespace=n)
    assert everything.returncode == 0, everything.stderr
    left = [c for c in names(kubectl.json("get", "cm", namespace=n)) if c != "kube-root-ca.crt"]
    assert left == []
    gone = kubectl("delete", "cm", "a", namespace=n)
    assert gone.returncode == 1 and "NotFound" in gone.stderr


def test_scale_set_image_rollout_restart(kubectl: Kubectl, namespace: str) -> None:
    n = namespace
    kubectl("create", "deployment", "web", f"--image={POD_IMAGE}", namespace=n, check=True)
    scaled = kubectl("scale", "deployment", "web", "--replicas=3", namespace=n)
    assert scaled.stdout.strip() == "deployment.apps/web scaled", scaled.stderr
    assert kubectl.json("get", "deploy", "web", namespace=n)["spec"]["replicas"] == 3

    new_image = "registry.k8s.io/pause:3.9"
    set_image = kubectl("set", "image", "deployment/web", f"pause={new_image}", namespace=n)
    assert set_image.stdout.strip() == "deployment.apps/web image updated", set_image.stderr
    deploy = kubectl.json("get", "deploy", "web", namespace=n)
    assert deploy["spec"]["template"]["spec"]["containers"][0]["image"] == new_image

    restarted = kubectl("rollout", "restart", "deployment/web", namespace=n)
    assert restarted.stdout.strip() == "deployment.apps/web restarted", restarted.stderr
    deploy = kubectl.json("get", "deploy", "web", namespace=n)
    annotations = deploy["spec"]["template"]["metadata"].get("annotations", {})
    assert "kubectl.kubernetes.io/restartedAt" in annotations
    status = kubectl("rollout", "status", "deployment/web", "--timeout=120s", namespace=n)
    assert status.returncode == 0, status.stderr
    assert "successfully rolled out" in status.stdout


def test_logs_and_logs_follow(kubectl: Kubectl, namespace: str) -> None:
    n = namespace
    kubectl(
        "run",
        "talker",
        "--image=busybox:1.36",
        "--command",
        "--",
        "sh",
        "-c",
        "i=0; while true; do i=$((i+1)); echo line $i; sleep 0.5; done",
        namespace=n,
        check=True,
    )
    kubectl(
        "wait", "--for=condition=Ready", "pod/talker", "--timeout=120s", namespace=n, check=True
    )
    # a real container may not have written its first line the instant it is Ready
    _wait_for(lambda: bool(kubectl("logs", "talker", namespace=n, check=True).stdout.strip()))
    logs = kubectl("logs", "talker", namespace=n, check=True)
    assert logs.stdout.strip(), "no log lines"
    follower = kubectl.popen("logs", "-f", "talker", namespace=n)
    initial = len(logs.stdout.splitlines())
    lines = _collect(follower, initial + 3, timeout=30)
    assert len(lines) >= initial + 3, f"logs -f did not stream: {lines}"


def test_get_watch_streams_changes(kubectl: Kubectl, namespace: str) -> None:
    n = namespace
    kubectl("create", "configmap", "first", namespace=n, check=True)
    watcher = kubectl.popen("get", "cm", "-w", "--output-watch-events", namespace=n)
    seen: list[str] = []
    reader = threading.Thread(target=_read_lines, args=(watcher, 10_000, seen), daemon=True)
    reader.start()
    try:
        _wait_for(lambda: any("first" in line for line in seen))
        kubectl("create", "configmap", "second", namespace=n, check=True)
        kubectl("label", "cm", "second", "x=y", namespace=n, check=True)
        kubectl("delete", "cm", "second", namespace=n, check=True)
        _wait_for(lambda: any(line.startswith("DELETED") and "second" in line for line in seen))
    finally:
        watcher.terminate()
        watcher.wait(10)
    events = [line.split()[:2] for line in seen if "second" in line]
    assert ["ADDED", "second"] in events
    assert ["MODIFIED", "second"] in events
    assert ["DELETED", "second"] in events


def _wait_for(predicate: object, attempts: int = 300) -> None:
    """Poll (up to ~30 s) until predicate() is true; no timing is asserted."""
    import time

    assert callable(predicate)
    for _ in range(attempts):
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached")


def test_exec_says_the_sandbox_runs_no_containers(
    kubectl: Kubectl, namespace: str, kube_target: KubeTarget
) -> None:
    if not kube_target.is_sandbox:
        pytest.skip("exec works on a real cluster")
    kubectl("run", "p", f"--image={POD_IMAGE}", namespace=namespace, check=True)
    result = kubectl("exec", "p", "--", "true", namespace=namespace)
    assert result.returncode == 1
    assert "the sandbox runs no containers" in result.stderr


LOCK = """\
apiVersion: klock.rnemet.dev/v1
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


@pytest.fixture
def lock_crd(kubectl: Kubectl) -> Iterator[None]:
    applied = kubectl("apply", "-f", "-", input=crd_text())
    assert applied.returncode == 0, applied.stderr
    kubectl(
        "wait",
        "--for=condition=Established",
        "crd/locks.klock.rnemet.dev",
        "--timeout=60s",
        check=True,
    )
    yield


def test_crd_flow_locks(kubectl: Kubectl, namespace: str, lock_crd: None) -> None:
    n = namespace
    created = kubectl("apply", "-f", "-", input=LOCK, namespace=n)
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip() == "lock.klock.rnemet.dev/lockred created"
    listing = kubectl("get", "locks", namespace=n, check=True).stdout.splitlines()
    assert listing[0].split()[0] == "NAME" and listing[1].split()[0] == "lockred"
    lock = kubectl.json("get", "lock", "lockred", namespace=n)
    assert lock["spec"]["matcher"] == {"aura": "red"}
    assert lock["spec"]["operations"] == ["UPDATE", "DELETE"]
    patched = kubectl(
        "patch",
        "lock",
        "lockred",
        "--type=merge",
        "-p",
        '{"spec":{"operations":["DELETE"]}}',
        namespace=n,
    )
    assert patched.returncode == 0, patched.stderr
    assert kubectl.json("get", "lock", "lockred", namespace=n)["spec"]["operations"] == ["DELETE"]
    typo = kubectl("apply", "-f", "-", input=LOCK.replace("matcher:", "matchr:"), namespace=n)
    assert typo.returncode == 1
    assert 'strict decoding error: unknown field "spec.matchr"' in typo.stderr
    wrong_type = kubectl(
        "patch",
        "lock",
        "lockred",
        "--type=merge",
        "-p",
        '{"spec":{"operations":"DELETE"}}',
        namespace=n,
    )
    assert wrong_type.returncode == 1
    assert "spec.operations in body must be of type array" in wrong_type.stderr
    deleted = kubectl("delete", "lock", "lockred", namespace=n)
    assert deleted.returncode == 0, deleted.stderr
    assert not kubectl.exists("lock", "lockred", namespace=n)


def test_deleting_the_crd_removes_the_resource(
    kubectl: Kubectl, kube_target: KubeTarget, tmp_path: Path
) -> None:
    if not kube_target.is_sandbox:
        pytest.skip("never delete the Lock CRD of a real cluster")
    kubectl("apply", "-f", "-", input=crd_text(), check=True)
    kubectl("apply", "-f", "-", input=LOCK, namespace="default", check=True)
    kubectl("delete", "crd", "locks.klock.rnemet.dev", check=True)
    gone = kubectl("get", "locks", namespace="default")
    assert gone.returncode == 1
    assert "the server doesn't have a resource type" in gone.stderr or "NotFound" in gone.stderr
    kubectl("apply", "-f", "-", input=crd_text(), check=True)
    assert "lockred" not in kubectl("get", "locks", "-A").stdout


def test_invalid_names_and_bad_input(kubectl: Kubectl, namespace: str) -> None:
    bad = kubectl("create", "configmap", "Bad_Name", namespace=namespace)
    assert bad.returncode == 1
    assert 'ConfigMap "Bad_Name" is invalid' in bad.stderr
    assert "metadata.name" in bad.stderr
    missing_ns = kubectl("create", "configmap", "x", namespace="no-such-namespace-e2e")
    assert missing_ns.returncode == 1
    assert 'namespaces "no-such-namespace-e2e" not found' in missing_ns.stderr
    unknown = kubectl("get", "frobnicators")
    assert unknown.returncode == 1
    assert "the server doesn't have a resource type" in unknown.stderr


def test_rbac_writes_cannot_escalate(kubectl: Kubectl, namespace: str) -> None:
    n = namespace
    dev = "e2e-dev"
    kubectl(
        "create",
        "role",
        "role-admin",
        "--verb=create,get,list,update,patch,delete",
        "--resource=roles,rolebindings,pods",
        namespace=n,
        check=True,
    )
    kubectl(
        "create",
        "rolebinding",
        "dev-role-admin",
        "--role=role-admin",
        f"--user={dev}",
        namespace=n,
        check=True,
    )
    wait_can_i(kubectl, "create", "roles", as_user=dev, namespace=n)
    # granting what the user holds is fine
    ok = kubectl(
        "create",
        "role",
        "pod-reader",
        "--verb=get,list",
        "--resource=pods",
        as_user=dev,
        namespace=n,
    )
    assert ok.returncode == 0, ok.stderr
    bound = kubectl(
        "create",
        "rolebinding",
        "x-pod-reader",
        "--role=pod-reader",
        "--user=someone",
        as_user=dev,
        namespace=n,
    )
    assert bound.returncode == 0, bound.stderr
    # granting more is refused, and nothing is stored
    more = kubectl(
        "create",
        "role",
        "secret-reader",
        "--verb=get",
        "--resource=secrets",
        as_user=dev,
        namespace=n,
    )
    assert more.returncode == 1
    assert "attempting to grant RBAC permissions not currently held" in more.stderr
    assert not kubectl.exists("role", "secret-reader", namespace=n)
    admin_binding = kubectl(
        "create",
        "rolebinding",
        "dev-is-admin",
        "--clusterrole=cluster-admin",
        f"--user={dev}",
        as_user=dev,
        namespace=n,
    )
    assert admin_binding.returncode == 1
    assert '"dev-is-admin" is forbidden' in admin_binding.stderr
    assert not kubectl.exists("rolebinding", "dev-is-admin", namespace=n)
