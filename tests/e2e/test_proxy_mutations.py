"""Every way kubectl mutates an object, through the proxy: once where a Lock covers the
object (refused with the lock's message, the object unchanged in the API server afterwards)
and once where none does (the command works and its change is visible).

The namespace has one Lock, ``{aura: red}`` for CREATE, UPDATE, DELETE and CONNECT. The
"covered" objects are labelled ``aura=red``, the others ``aura=blue``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import proxy_support as support
from tests.e2e.kube import Kubectl
from tests.e2e.proxy_support import Locks, Proxy, assert_denied, assert_ok

pytestmark = pytest.mark.e2e

proxy = support.proxy
locks = support.locks

EDITOR = """\
import sys, yaml
path = sys.argv[1]
with open(path) as f:
    obj = yaml.safe_load(f)
obj.setdefault("data", {})["b"] = "2"
with open(path, "w") as f:
    yaml.safe_dump(obj, f)
"""


@dataclass
class Ctx:
    admin: Kubectl
    proxy: Proxy
    ns: str
    color: str
    tmp: Path

    def get(self, *what: str) -> dict[str, Any] | None:
        result = self.admin("get", *what, "-o", "json", namespace=self.ns)
        if result.returncode != 0:
            assert "NotFound" in result.stderr, result.stderr
            return None
        obj: dict[str, Any] = json.loads(result.stdout)
        return obj


# -- objects the cases start from -----------------------------------------------------------


def make_cm(c: Ctx) -> None:
    manifest = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "cm", "labels": {"aura": c.color}},
        "data": {"a": "1"},
    }
    # `apply` (not create) so that client-side apply has its last-applied annotation.
    c.admin("apply", "-f", "-", input=json.dumps(manifest), namespace=c.ns, check=True)


def make_pod(c: Ctx) -> None:
    c.admin(
        "run", "pod", "--image", "nginx", "--labels", f"aura={c.color}", namespace=c.ns, check=True
    )


def make_deploy(c: Ctx) -> None:
    c.admin("create", "deployment", "dep", "--image", "nginx", namespace=c.ns, check=True)
    c.admin("label", "deployment", "dep", f"aura={c.color}", namespace=c.ns, check=True)


def nothing(c: Ctx) -> None:
    return None


# -- what each case looks at ---------------------------------------------------------------


def cm_data(c: Ctx) -> Any:
    obj = c.get("cm", "cm")
    return None if obj is None else obj.get("data")


def cm_identity(c: Ctx) -> Any:
    obj = c.get("cm", "cm")
    return None if obj is None else (obj["metadata"]["uid"], obj.get("data"))


def pod_meta(key: str) -> Callable[[Ctx], Any]:
    def look(c: Ctx) -> Any:
        obj = c.get("pod", "pod")
        return None if obj is None else dict(obj["metadata"].get(key) or {})

    return look


def pod_spec(key: str) -> Callable[[Ctx], Any]:
    def look(c: Ctx) -> Any:
        obj = c.get("pod", "pod")
        return None if obj is None else obj["spec"].get(key)

    return look


def exists(*what: str) -> Callable[[Ctx], Any]:
    def look(c: Ctx) -> Any:
        obj = c.get(*what)
        # A real cluster keeps a deleted pod around (terminating) for its grace period.
        return obj is not None and "deletionTimestamp" not in obj["metadata"]

    return look


def deploy(path: Callable[[dict[str, Any]], Any]) -> Callable[[Ctx], Any]:
    def look(c: Ctx) -> Any:
        obj = c.get("deployment", "dep")
        return None if obj is None else path(obj)

    return look


def image(d: dict[str, Any]) -> Any:
    return d["spec"]["template"]["spec"]["containers"][0]["image"]


def template_annotations(d: dict[str, Any]) -> Any:
    return dict(d["spec"]["template"]["metadata"].get("annotations") or {})


# -- the commands -------------------------------------------------------------------------


def run_new_pod(c: Ctx) -> Any:
    return c.proxy.kubectl(
        "run", "new", "--image", "nginx", "--labels", f"aura={c.color}", namespace=c.ns
    )


def create_from_file(c: Ctx) -> Any:
    f = c.tmp / "new-cm.json"
    f.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "new-cm", "labels": {"aura": c.color}},
                "data": {"x": "y"},
            }
        )
    )
    return c.proxy.kubectl("create", "-f", str(f), namespace=c.ns)


def edit(c: Ctx) -> Any:
    script = c.tmp / "editor.py"
    script.write_text(EDITOR)
    return c.proxy.kubectl(
        "edit", "cm", "cm", namespace=c.ns, env={"KUBE_EDITOR": f"{sys.executable} {script}"}
    )


def apply_cm(*flags: str) -> Callable[[Ctx], Any]:
    def go(c: Ctx) -> Any:
        manifest = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "cm", "labels": {"aura": c.color}},
            "data": {"a": "1", "b": "2"},
        }
        return c.proxy.kubectl(
            "apply", *flags, "-f", "-", input=json.dumps(manifest), namespace=c.ns
        )

    return go


def replace(*flags: str) -> Callable[[Ctx], Any]:
    def go(c: Ctx) -> Any:
        obj = c.get("cm", "cm")
        assert obj is not None
        obj["data"]["b"] = "2"
        if flags:
            # A forced replace deletes and creates: the old identity must not be sent.
            for key in ("uid", "resourceVersion", "creationTimestamp", "managedFields"):
                obj["metadata"].pop(key, None)
        return c.proxy.kubectl("replace", *flags, "-f", "-", input=json.dumps(obj), namespace=c.ns)

    return go


def evict(c: Ctx) -> Any:
    body = c.tmp / "eviction.json"
    body.write_text(
        json.dumps(
            {
                "apiVersion": "policy/v1",
                "kind": "Eviction",
                "metadata": {"name": "pod", "namespace": c.ns},
            }
        )
    )
    return c.proxy.kubectl(
        "create", "--raw", f"/api/v1/namespaces/{c.ns}/pods/pod/eviction", "-f", str(body)
    )


def args(*argv: str) -> Callable[[Ctx], Any]:
    def go(c: Ctx) -> Any:
        real = [a.replace("COLOR", c.color).replace("/NS/", f"/{c.ns}/") for a in argv]
        return c.proxy.kubectl(*real, namespace=c.ns)

    return go


# -- the table ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Mutation:
    setup: Callable[[Ctx], None]
    command: Callable[[Ctx], Any]
    observe: Callable[[Ctx], Any]
    # For the uncovered case: (before, after) -> the change is there.
    changed: Callable[[Any, Any], bool]
    # Where the sandbox cannot do what a real cluster does (exec: no containers run).
    sandbox_refusal: str = ""
    # For the covered case: (before, after) -> nothing changed. Default: equal.
    unchanged: Callable[[Any, Any], bool] = field(default=lambda before, after: after == before)
    # On a real cluster: wait until the pod runs first (exec, attach), or skip with a reason.
    needs_running_pod: bool = False
    real_cluster_skip: str = ""


def became(value: Any) -> Callable[[Any, Any], bool]:
    return lambda before, after: after == value


def has(key: str, value: str) -> Callable[[Any, Any], bool]:
    return lambda before, after: after is not None and after.get(key) == value


B2 = has("b", "2")

MUTATIONS: dict[str, Mutation] = {
    "run": Mutation(nothing, run_new_pod, exists("pod", "new"), became(True)),
    "create -f": Mutation(nothing, create_from_file, exists("cm", "new-cm"), became(True)),
    "label": Mutation(
        make_pod, args("label", "pod", "pod", "x=y"), pod_meta("labels"), has("x", "y")
    ),
    "annotate": Mutation(
        make_pod,
        args("annotate", "pod", "pod", "note=x"),
        pod_meta("annotations"),
        has("note", "x"),
    ),
    "edit": Mutation(make_cm, edit, cm_data, B2),
    "patch json": Mutation(
        make_cm,
        args(
            "patch", "cm", "cm", "--type=json", "-p", '[{"op":"add","path":"/data/b","value":"2"}]'
        ),
        cm_data,
        B2,
    ),
    "patch merge": Mutation(
        make_cm, args("patch", "cm", "cm", "--type=merge", "-p", '{"data":{"b":"2"}}'), cm_data, B2
    ),
    "patch strategic": Mutation(
        make_deploy,
        args(
            "patch",
            "deployment",
            "dep",
            "--type=strategic",
            "-p",
            '{"spec":{"template":{"spec":{"containers":[{"name":"nginx","image":"nginx:2"}]}}}}',
        ),
        deploy(image),
        became("nginx:2"),
    ),
    "apply": Mutation(make_cm, apply_cm(), cm_data, B2),
    "apply --server-side": Mutation(
        make_cm, apply_cm("--server-side", "--force-conflicts"), cm_data, B2
    ),
    "apply --dry-run=server": Mutation(
        make_cm, apply_cm("--dry-run=server"), cm_data, lambda before, after: after == before
    ),
    "replace": Mutation(make_cm, replace(), cm_data, B2),
    "replace --force": Mutation(
        make_cm,
        replace("--force"),
        cm_identity,
        lambda before, after: after is not None and after[0] != before[0] and after[1]["b"] == "2",
    ),
    "delete": Mutation(make_cm, args("delete", "cm", "cm"), exists("cm", "cm"), became(False)),
    "delete -l": Mutation(
        make_cm, args("delete", "cm", "-l", "aura=COLOR"), exists("cm", "cm"), became(False)
    ),
    "deletecollection": Mutation(
        make_cm,
        args("delete", "--raw", "/api/v1/namespaces/NS/configmaps?labelSelector=aura%3DCOLOR"),
        exists("cm", "cm"),
        became(False),
    ),
    "patch --subresource=status": Mutation(
        make_deploy,
        args(
            "patch",
            "deployment",
            "dep",
            "--subresource=status",
            "--type=merge",
            "-p",
            '{"status":{"observedGeneration":42}}',
        ),
        # The sandbox computes a Deployment's status itself (the write shows as a new
        # version); a real cluster's controller may bump the version too, but never writes 42.
        deploy(
            lambda d: (
                d["metadata"]["resourceVersion"],
                (d.get("status") or {}).get("observedGeneration") == 42,
            )
        ),
        lambda before, after: after[0] != before[0] or after[1],
        unchanged=lambda before, after: not after[1],
    ),
    "debug (ephemeral container)": Mutation(
        make_pod,
        args("debug", "pod", "--image=busybox", "--container=dbg"),
        pod_spec("ephemeralContainers"),
        lambda before, after: [e["name"] for e in after or []] == ["dbg"],
    ),
    "scale": Mutation(
        make_deploy,
        args("scale", "deployment", "dep", "--replicas=3"),
        deploy(lambda d: d["spec"]["replicas"]),
        became(3),
    ),
    "set image": Mutation(
        make_deploy,
        args("set", "image", "deployment/dep", "nginx=nginx:2"),
        deploy(image),
        became("nginx:2"),
    ),
    "rollout restart": Mutation(
        make_deploy,
        args("rollout", "restart", "deployment/dep"),
        deploy(template_annotations),
        lambda before, after: "kubectl.kubernetes.io/restartedAt" in after,
    ),
    "eviction": Mutation(make_pod, evict, exists("pod", "pod"), became(False)),
    "exec": Mutation(
        make_pod,
        args("exec", "pod", "--", "echo", "hello"),
        pod_meta("labels"),
        lambda before, after: after == before,
        sandbox_refusal="the sandbox runs no containers",
        needs_running_pod=True,
    ),
    "attach": Mutation(
        make_pod,
        args("attach", "pod"),
        pod_meta("labels"),
        lambda before, after: after == before,
        sandbox_refusal="the sandbox runs no containers",
        real_cluster_skip="attaching to a running nginx streams its output until killed",
    ),
}


@pytest.fixture
def red_lock(locks: Locks) -> Locks:
    locks.add("freeze-red", ["CREATE", "UPDATE", "DELETE", "CONNECT"], {"aura": "red"})
    return locks


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_refused_when_a_lock_covers_it(
    name: str, proxy: Proxy, red_lock: Locks, kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    m = MUTATIONS[name]
    c = Ctx(kubectl, proxy, namespace, "red", tmp_path)
    m.setup(c)
    before = m.observe(c)
    result = m.command(c)
    assert_denied(result, "map[aura:red]", lock=f"{namespace}/freeze-red")
    after = m.observe(c)
    assert m.unchanged(before, after), (before, after)


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_works_when_no_lock_covers_it(
    name: str,
    proxy: Proxy,
    red_lock: Locks,
    kubectl: Kubectl,
    namespace: str,
    tmp_path: Path,
    kube_target: support.KubeTarget,
) -> None:
    m = MUTATIONS[name]
    if m.real_cluster_skip and not kube_target.is_sandbox:
        pytest.skip(m.real_cluster_skip)
    c = Ctx(kubectl, proxy, namespace, "blue", tmp_path)
    m.setup(c)
    if m.needs_running_pod:
        # A real cluster's pod runs only once scheduled and pulled.
        kubectl(
            "wait", "--for=condition=Ready", "pod/pod", "--timeout=120s",
            namespace=namespace, check=True, timeout=150,
        )  # fmt: skip
    before = m.observe(c)
    result = m.command(c)
    if m.sandbox_refusal and kube_target.is_sandbox:
        # Forwarded (not refused by the proxy): the sandbox itself says it cannot do it.
        assert result.returncode != 0
        assert m.sandbox_refusal in result.stderr, result.stderr
        assert "there is a lock" not in result.stderr
    else:
        assert_ok(result)
    after = m.observe(c)
    assert m.changed(before, after), (before, after)


@pytest.mark.parametrize(
    "argv",
    [
        ("create", "configmap", "frozen", "--from-literal=a=b"),  # a protobuf body
        ("create", "deployment", "frozen", "--image=nginx"),
        ("run", "frozen", "--image=nginx"),
    ],
    ids=["create configmap", "create deployment", "run"],
)
def test_a_lock_without_matcher_freezes_the_namespace(
    argv: tuple[str, ...], proxy: Proxy, locks: Locks, kubectl: Kubectl, namespace: str
) -> None:
    """Klock's change freeze: no matcher = every object of the namespace."""
    locks.add("freeze", ["CREATE", "UPDATE", "DELETE"], None)
    assert_denied(proxy.kubectl(*argv, namespace=namespace), "map[]")
    assert (
        kubectl("get", "all,configmaps", "-o", "name", namespace=namespace).stdout.count("frozen")
        == 0
    )
    locks.remove("freeze")
    assert_ok(proxy.kubectl(*argv, namespace=namespace))
    assert "frozen" in kubectl("get", "all,configmaps", "-o", "name", namespace=namespace).stdout


@pytest.mark.parametrize(
    ("start", "change"),
    [("red", "aura-"), ("red", "aura=blue"), ("blue", "aura=red")],
    ids=["remove the locked label", "relabel away", "relabel into the lock"],
)
def test_an_update_is_judged_on_old_and_new_labels(
    start: str, change: str, proxy: Proxy, red_lock: Locks, kubectl: Kubectl, namespace: str
) -> None:
    """Escaping a lock by relabelling, or pulling an object under one, are both refused."""
    kubectl(
        "run", "pod", "--image=nginx", f"--labels=aura={start}", namespace=namespace, check=True
    )
    result = proxy.kubectl("label", "pod", "pod", change, "--overwrite", namespace=namespace)
    assert_denied(result, "map[aura:red]")
    assert (
        kubectl.json("get", "pod", "pod", namespace=namespace)["metadata"]["labels"]["aura"]
        == start
    )
