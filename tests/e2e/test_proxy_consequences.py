"""What the cluster does next (issue 13): real kubectl through the local-mode proxy.

Each test is one numbered item of issue 13. The sandbox runs no garbage collector and no
controllers, so the tests assert what the proxy refused or let through, and that the state it
let through is the state a real garbage collector acts on (owner references, objects left);
against a real cluster (KLOCKPROXY_E2E_KUBECONFIG) the same tests run unchanged, except those
that build controller-owned objects by hand (they skip: a real controller would fight them).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from tests.e2e import proxy_support as support
from tests.e2e.kube import Kubectl, KubeTarget
from tests.e2e.proxy_support import Locks, Proxy, assert_denied, assert_ok

pytestmark = pytest.mark.e2e

proxy = support.proxy
locks = support.locks

RED = {"aura": "red"}
PAUSE = "registry.k8s.io/pause:3.9"
MERGE = "merge"


def ghost() -> dict[str, str]:
    """An owner reference to nobody: the garbage collector deletes what carries only it."""
    return {"apiVersion": "v1", "kind": "ConfigMap", "name": "ghost", "uid": str(uuid.uuid4())}


class World:
    """Objects made as the admin, straight to the API server (not through the proxy)."""

    def __init__(self, admin: Kubectl, ns: str) -> None:
        self.admin, self.ns = admin, ns

    def make(self, manifest: dict[str, Any], *, cluster: bool = False) -> dict[str, Any]:
        ns = None if cluster else self.ns
        out = self.admin("create", "-o", "json", "-f", "-", input=json.dumps(manifest),
                         namespace=ns, check=True)  # fmt: skip
        created: dict[str, Any] = json.loads(out.stdout)
        return created

    def cm(self, name: str, *owners: dict[str, Any], **labels: str) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": name, "labels": labels}
        if owners:
            meta["ownerReferences"] = list(owners)
        return self.make({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta})

    def pod(
        self, name: str, *owners: dict[str, Any], account: str = "", **labels: str
    ) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": name, "labels": labels}
        if owners:
            meta["ownerReferences"] = list(owners)
        spec: dict[str, Any] = {"containers": [{"name": "c", "image": PAUSE}]}
        if account:
            spec["serviceAccountName"] = account
        return self.make({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})

    def exists(self, *what: str) -> bool:
        return self.admin.exists(*what, namespace=self.ns)

    def get(self, *what: str, cluster: bool = False) -> dict[str, Any]:
        return self.admin.json("get", *what, namespace=None if cluster else self.ns)


def ref(obj: dict[str, Any], *, controller: bool = False) -> dict[str, Any]:
    meta = obj["metadata"]
    out = {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": meta["name"],
           "uid": meta["uid"]}  # fmt: skip
    if controller:
        out["controller"] = True
    return out


@pytest.fixture
def world(kubectl: Kubectl, namespace: str) -> World:
    return World(kubectl, namespace)


@pytest.fixture
def through(proxy: Proxy, namespace: str) -> Callable[..., Any]:
    """kubectl through the proxy, in the test's namespace."""

    def run(*args: str, **kwargs: Any) -> Any:
        kwargs.setdefault("namespace", namespace)
        return proxy.kubectl(*args, **kwargs)

    return run


@pytest.fixture
def delete_lock(locks: Locks) -> Locks:
    locks.add("nodelete", ["DELETE"], RED)
    return locks


@pytest.fixture
def cleanup(kubectl: Kubectl) -> Iterator[list[tuple[str, ...]]]:
    """Cluster-scoped objects to delete after the test (as the admin)."""
    todo: list[tuple[str, ...]] = []
    yield todo
    for what in todo:
        kubectl("delete", *what, "--ignore-not-found", "--wait=false")


def crd(kubectl: Kubectl, cleanup: list[tuple[str, ...]]) -> tuple[str, str]:
    """A fresh namespaced CRD (Established); returns (plural.group, apiVersion)."""
    group = f"e2e{uuid.uuid4().hex[:8]}.example.com"
    name = f"widgets.{group}"
    manifest = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": name},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{"name": "v1", "served": True, "storage": True,
                          "schema": {"openAPIV3Schema": {"type": "object"}}}],
        },
    }  # fmt: skip
    kubectl("create", "-f", "-", input=json.dumps(manifest), check=True)
    cleanup.append(("crd", name))
    kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s", check=True,
            timeout=90)  # fmt: skip
    return name, f"{group}/v1"


def patch_owners(owners: list[dict[str, Any]]) -> str:
    return json.dumps({"metadata": {"ownerReferences": owners}})


# ---------------------------------------------------------------------------------------
# Bypasses: the locked object would end up deleted


def test_item1_a_dangling_owner_on_the_namespace_is_refused(
    delete_lock: Locks, world: World, through: Callable[..., Any], namespace: str
) -> None:
    world.cm("locked", **RED)
    result = through("patch", "namespace", namespace, "--type=merge", "-p", patch_owners([ghost()]))
    assert_denied(result)
    assert 'configmaps "locked"' in result.stderr
    assert not world.get("namespace", namespace, cluster=True)["metadata"].get("ownerReferences")


def test_item1_a_dangling_owner_on_a_crd_is_refused(
    delete_lock: Locks,
    world: World,
    through: Callable[..., Any],
    kubectl: Kubectl,
    cleanup: list[tuple[str, ...]],
) -> None:
    name, api_version = crd(kubectl, cleanup)
    world.make(
        {"apiVersion": api_version, "kind": "Widget", "metadata": {"name": "w", "labels": RED}}
    )
    result = through("patch", "crd", name, "--type=merge", "-p", patch_owners([ghost()]))
    assert_denied(result)
    assert not world.get("crd", name, cluster=True)["metadata"].get("ownerReferences")


def test_item2_a_dangling_owner_on_an_unlocked_owner_is_refused(
    delete_lock: Locks, world: World, through: Callable[..., Any]
) -> None:
    owner = world.cm("ga-owner")
    world.cm("locked", ref(owner), **RED)
    result = through("patch", "cm", "ga-owner", "--type=merge", "-p", patch_owners([ghost()]))
    assert_denied(result)
    assert "the garbage collector deletes an object whose owner is gone" in result.stderr
    assert not world.get("cm", "ga-owner")["metadata"].get("ownerReferences")
    # The same write on an owner of nothing locked goes through.
    world.cm("free-owner")
    assert_ok(through("patch", "cm", "free-owner", "--type=merge", "-p", patch_owners([ghost()])))


def job_manifest(name: str, **spec: Any) -> dict[str, Any]:
    template = {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": PAUSE}]}}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"suspend": True, "template": template, **spec},
    }


def test_item2_a_ttl_on_an_unlocked_job_owning_locked_objects_is_refused(
    delete_lock: Locks, world: World, through: Callable[..., Any]
) -> None:
    job = world.make(job_manifest("batch"))
    world.cm("locked", ref(job), **RED)
    result = through("patch", "job", "batch", "--type=merge", "-p",
                     '{"spec":{"ttlSecondsAfterFinished":0}}')  # fmt: skip
    assert_denied(result)
    assert "ttlSecondsAfterFinished" not in world.get("job", "batch")["spec"]


def test_item3_deletecollection_of_an_owner_is_refused(
    delete_lock: Locks, world: World, through: Callable[..., Any], namespace: str
) -> None:
    owner = world.cm("owner", role="owner")
    world.cm("locked", ref(owner), **RED)
    path = f"/api/v1/namespaces/{namespace}/configmaps?labelSelector=role%3Downer"
    result = through("delete", "--raw", path)
    assert_denied(result)
    assert world.exists("cm", "owner")


def test_item4_evicting_an_owner_pod_is_refused(
    delete_lock: Locks, world: World, through: Callable[..., Any], namespace: str
) -> None:
    # The driver/executor pattern: an unlocked driver pod owns what is locked.
    driver = world.pod("driver")
    world.cm("executor-state", ref(driver), **RED)
    eviction = {"apiVersion": "policy/v1", "kind": "Eviction",
                "metadata": {"name": "driver", "namespace": namespace}}  # fmt: skip
    path = f"/api/v1/namespaces/{namespace}/pods/driver/eviction"
    result = through("create", "--raw", path, "-f", "-", input=json.dumps(eviction))
    assert_denied(result)
    assert world.exists("pod", "driver")


def test_item5_deleting_a_crd_follows_what_its_custom_resources_own(
    delete_lock: Locks,
    world: World,
    through: Callable[..., Any],
    kubectl: Kubectl,
    cleanup: list[tuple[str, ...]],
) -> None:
    name, api_version = crd(kubectl, cleanup)
    widget = world.make({"apiVersion": api_version, "kind": "Widget", "metadata": {"name": "w"}})
    world.cm("made-by-operator", ref(widget), **RED)
    result = through("delete", "crd", name)
    assert_denied(result)
    assert 'configmaps "made-by-operator"' in result.stderr
    assert kubectl.exists("crd", name)


def test_item6_a_cluster_scoped_owner_is_judged(
    delete_lock: Locks,
    world: World,
    through: Callable[..., Any],
    kubectl: Kubectl,
    cleanup: list[tuple[str, ...]],
) -> None:
    name = f"e2e-owner-{uuid.uuid4().hex[:8]}"
    role = world.make({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                       "metadata": {"name": name}, "rules": []}, cluster=True)  # fmt: skip
    cleanup.append(("clusterrole", name))
    world.cm("locked", ref(role), **RED)
    assert_denied(through("delete", "clusterrole", name))
    assert kubectl.exists("clusterrole", name)


def test_item7_a_chain_through_any_kind(
    delete_lock: Locks, world: World, through: Callable[..., Any]
) -> None:
    # ConfigMap -> ServiceAccount -> locked pod (ServiceAccounts were not among the kinds
    # searched before).
    top = world.cm("top")
    sa = world.make({"apiVersion": "v1", "kind": "ServiceAccount",
                     "metadata": {"name": "middle", "ownerReferences": [ref(top)]}})  # fmt: skip
    world.pod("locked", ref(sa), **RED)
    result = through("delete", "cm", "top")
    assert_denied(result)
    assert 'pods "locked"' in result.stderr
    assert world.exists("cm", "top")


def test_item8_owner_references_through_the_status_subresource_are_judged(
    delete_lock: Locks, world: World, through: Callable[..., Any]
) -> None:
    # The status strategies of the workload kinds reset spec and labels only: owner
    # references written through deployments/status are stored (pods/status keeps them).
    manifest = deployment_manifest("web")
    manifest["metadata"]["labels"] = RED
    world.make(manifest)
    result = through("patch", "deployment", "web", "--subresource=status", "--type=merge", "-p",
                     patch_owners([ghost()]))  # fmt: skip
    assert_denied(result)
    assert 'deployments.apps "web"' in result.stderr
    assert not world.get("deployment", "web")["metadata"].get("ownerReferences")


# ---------------------------------------------------------------------------------------
# No false denials


def test_item11_deleting_one_of_two_owners_is_allowed(
    delete_lock: Locks, world: World, through: Callable[..., Any]
) -> None:
    a, b = world.cm("owner-a"), world.cm("owner-b")
    world.cm("locked", ref(a), ref(b), **RED)
    assert_ok(through("delete", "cm", "owner-a"))
    # The dependent keeps its other owner: the garbage collector keeps it.
    assert world.exists("cm", "locked") and world.exists("cm", "owner-b")
    assert_denied(through("delete", "cm", "owner-b"))


def test_item12_a_batch_v1_job_deleted_with_no_policy_orphans(
    delete_lock: Locks, world: World, through: Callable[..., Any], namespace: str
) -> None:
    job = world.make(job_manifest("batch"))
    world.cm("locked", ref(job), **RED)
    # kubectl asks for Background propagation: the dependents would go.
    assert_denied(through("delete", "job", "batch"))
    # The API itself, with no policy, orphans a batch/v1 Job's dependents.
    assert_ok(through("delete", "--raw", f"/apis/batch/v1/namespaces/{namespace}/jobs/batch"))
    assert not world.exists("job", "batch")
    assert world.exists("cm", "locked")


# ---------------------------------------------------------------------------------------
# Controllers


@pytest.fixture
def no_controllers(kube_target: KubeTarget) -> None:
    if not kube_target.is_sandbox:
        pytest.skip("builds controller-owned objects by hand: a real controller would fight them")


def deployment_manifest(
    name: str, replicas: int = 1, labels: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name, **(labels or {})}},
                "spec": {"containers": [{"name": "c", "image": PAUSE}]},
            },
        },
    }


def deployment_with_a_locked_pod(world: World) -> None:
    """Deployment web -> ReplicaSet web-1 -> pod web-1-a (aura=red), as the controllers
    would have made them."""
    dep = world.make(deployment_manifest("web", 2))
    rs_manifest = deployment_manifest("web-1", 2)
    rs_manifest["kind"] = "ReplicaSet"
    rs_manifest["spec"]["selector"]["matchLabels"] = {"app": "web"}
    rs_manifest["spec"]["template"]["metadata"]["labels"] = {"app": "web"}
    rs_manifest["metadata"]["ownerReferences"] = [ref(dep, controller=True)]
    rs = world.make(rs_manifest)
    world.pod("web-1-a", ref(rs, controller=True), app="web", **RED)


@pytest.mark.parametrize(
    "action",
    [
        ("scale", "deployment", "web", "--replicas=1"),
        ("rollout", "restart", "deployment/web"),
        ("set", "image", "deployment/web", "c=registry.k8s.io/pause:3.10"),
    ],
    ids=["scale-down", "rollout-restart", "set-image"],
)
def test_item14_scale_down_and_rollouts_of_an_owner_of_locked_pods_are_refused(
    no_controllers: None,
    delete_lock: Locks,
    world: World,
    through: Callable[..., Any],
    action: tuple[str, ...],
) -> None:
    deployment_with_a_locked_pod(world)
    before = world.get("deployment", "web")["spec"]
    result = through(*action)
    assert_denied(result)
    assert 'pods "web-1-a"' in result.stderr
    assert world.get("deployment", "web")["spec"] == before
    # Scaling up deletes nothing.
    assert_ok(through("scale", "deployment", "web", "--replicas=3"))


def test_item14_suspending_a_job_and_cronjob_history_limits(
    no_controllers: None, delete_lock: Locks, world: World, through: Callable[..., Any]
) -> None:
    manifest = job_manifest("running")
    manifest["spec"]["suspend"] = False
    job = world.make(manifest)
    world.pod("running-x", ref(job, controller=True), **RED)
    assert_denied(through("patch", "job", "running", "--type=merge", "-p",
                          '{"spec":{"suspend":true}}'))  # fmt: skip
    cron = world.make({
        "apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "nightly"},
        "spec": {"schedule": "0 0 * * *", "successfulJobsHistoryLimit": 3,
                 "jobTemplate": {"spec": job_manifest("x")["spec"]}},
    })  # fmt: skip
    kept = job_manifest("nightly-1")
    kept["metadata"]["labels"] = RED
    kept["metadata"]["ownerReferences"] = [ref(cron, controller=True)]
    world.make(kept)
    result = through("patch", "cronjob", "nightly", "--type=merge", "-p",
                     '{"spec":{"successfulJobsHistoryLimit":0}}')  # fmt: skip
    assert_denied(result)
    assert 'jobs.batch "nightly-1"' in result.stderr


def test_item15_a_workload_adopting_locked_orphans_is_refused(
    delete_lock: Locks, world: World, through: Callable[..., Any]
) -> None:
    world.pod("bare", app="orphan", **RED)
    rs = deployment_manifest("adopter", 0)
    rs["kind"] = "ReplicaSet"
    rs["spec"]["selector"]["matchLabels"] = {"app": "orphan"}
    rs["spec"]["template"]["metadata"]["labels"] = {"app": "orphan"}
    result = through("create", "-f", "-", input=json.dumps(rs))
    assert_denied(result)
    assert "adopts" in result.stderr
    assert not world.exists("replicaset", "adopter")


def replicaset_manifest(name: str, replicas: int, app: str) -> dict[str, Any]:
    rs = deployment_manifest(name, replicas)
    rs["kind"] = "ReplicaSet"
    rs["spec"]["selector"]["matchLabels"] = {"app": app}
    rs["spec"]["template"]["metadata"]["labels"] = {"app": app}
    return rs


def test_relabelling_a_bare_pod_into_a_selector_that_deletes_it_is_refused(
    delete_lock: Locks, world: World, through: Callable[..., Any]
) -> None:
    """A ReplicaSet that wants no pods adopts a bare pod relabelled (or created) into its
    selector and deletes it: relabelling it so that it is both locked and adopted is refused
    (the UPDATE alone is allowed: the Lock forbids only DELETE), and so is creating one."""
    world.make(replicaset_manifest("keeper", 0, "kept"))
    world.pod("bare", app="other")
    result = through("label", "pod", "bare", "app=kept", "aura=red", "--overwrite")
    assert_denied(result)
    assert "its new labels put it under the selector of replicasets keeper" in result.stderr
    assert world.get("pod", "bare")["metadata"]["labels"] == {"app": "other"}
    # Locked but under no selector, or under the selector but not locked: allowed.
    assert_ok(through("label", "pod", "bare", "aura=red"))
    assert_ok(through("label", "pod", "bare", "aura-"))
    assert_ok(through("label", "pod", "bare", "app=kept", "--overwrite"))
    assert world.get("pod", "bare")["metadata"]["labels"] == {"app": "kept"}
    # Created under the selector, locked: refused alike; elsewhere, created.
    result = through("run", "made", f"--image={PAUSE}", "--labels=app=kept,aura=red")
    assert_denied(result)
    assert "its labels put it under the selector of replicasets keeper" in result.stderr
    assert not world.exists("pod", "made")
    manifest = {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "made", "labels": {"app": "kept", "aura": "red"}},
                "spec": {"containers": [{"name": "c", "image": PAUSE}]}}  # fmt: skip
    assert_denied(through("apply", "--server-side", "-f", "-", input=json.dumps(manifest)))
    assert not world.exists("pod", "made")
    assert_ok(through("run", "made", f"--image={PAUSE}", "--labels=app=free,aura=red"))


def test_relabelling_a_bare_pod_into_the_selector_of_an_owner_of_locked_pods_is_refused(
    no_controllers: None, delete_lock: Locks, world: World, through: Callable[..., Any]
) -> None:
    """One pod too many: the ReplicaSet deletes any of its pods, the locked one included."""
    rs = world.make(replicaset_manifest("web-1", 1, "web"))
    world.pod("web-1-a", ref(rs, controller=True), app="web", **RED)
    world.pod("bare", app="other")
    result = through("label", "pod", "bare", "app=web", "--overwrite")
    assert_denied(result)
    assert 'pods "bare"' in result.stderr and "web-1-a" in result.stderr
    assert world.get("pod", "bare")["metadata"]["labels"] == {"app": "other"}
    assert_ok(through("label", "pod", "bare", "tier=x"))


def test_item16_a_pod_template_a_create_lock_covers_is_refused(
    locks: Locks, world: World, through: Callable[..., Any]
) -> None:
    locks.add("nocreate", ["CREATE"], RED)
    result = through("apply", "-f", "-", input=yaml.safe_dump(deployment_manifest("web", 1, RED)))
    assert_denied(result)
    assert "forbids CREATE of pods" in result.stderr
    assert not world.exists("deployment", "web")
    assert_ok(through("apply", "-f", "-", input=yaml.safe_dump(deployment_manifest("plain"))))


def test_item17_kubectl_debug_is_a_connect(
    locks: Locks, world: World, through: Callable[..., Any]
) -> None:
    locks.add("noconnect", ["CONNECT"], RED)
    world.pod("locked", **RED)
    result = through("debug", "locked", "--image=busybox", "-c", "dbg")
    assert_denied(result)
    assert "forbids CONNECT" in result.stderr
    assert not world.get("pod", "locked")["spec"].get("ephemeralContainers")


def test_item18_the_exempt_service_account_is_not_handed_out(
    locks: Locks, world: World, through: Callable[..., Any], namespace: str
) -> None:
    locks.add("ops-only", ["DELETE"], RED, exclusive={"name": "jonny-op"})
    world.make({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "jonny-op"}})
    result = through("create", "token", "jonny-op")
    assert_denied(result)
    assert "minting a token for service account jonny-op" in result.stderr
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "as-op"},
           "spec": {"serviceAccountName": "jonny-op",
                    "containers": [{"name": "c", "image": PAUSE}]}}  # fmt: skip
    result = through("create", "-f", "-", input=json.dumps(pod))
    assert_denied(result)
    assert not world.exists("pod", "as-op")
    # Any other service account is fine.
    pod["metadata"]["name"] = "as-default"
    del pod["spec"]["serviceAccountName"]
    assert_ok(through("create", "-f", "-", input=json.dumps(pod)))
