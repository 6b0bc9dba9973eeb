"""Authentication, impersonation and RBAC end to end, with real kubectl only.

Runs against the sandbox, or unchanged against a real cluster (KLOCKPROXY_E2E_KUBECONFIG).
Credentials other than the admin's come from kubectl itself (``kubectl create token``) and are
used through a kubeconfig holding nothing but the cluster and that token, so the admin's
credentials (a client certificate on many clusters) cannot leak into the request. The
tokens-file and client-certificate users need a sandbox started with them (skipped on a real
cluster, where the test cannot provision such users).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from klockproxy.sandbox.server import SandboxThread
from tests.e2e.kube import Kubectl, KubeTarget, wait_can_i, wait_until

pytestmark = pytest.mark.e2e

SA_GROUPS = {"system:serviceaccounts", "system:authenticated"}


def token_kubectl(kubectl: Kubectl, token: str, directory: Path, name: str) -> Kubectl:
    """kubectl for the admin's cluster with ONLY ``token`` as credential."""
    view = kubectl.json("config", "view", "--raw", "--minify", "--flatten")
    cluster = view["clusters"][0]["cluster"]
    config: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "target", "cluster": cluster}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": name, "context": {"cluster": "target", "user": name}}],
        "current-context": name,
    }
    path = directory / f"{name}.kubeconfig"
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return Kubectl(path, home=kubectl.home, context=name, binary=kubectl.binary)


def whoami(
    k: Kubectl, *, as_user: str | None = None, extra: tuple[str, ...] = ()
) -> dict[str, Any]:
    """``kubectl auth whoami -o json`` -> status.userInfo."""
    out = k("auth", "whoami", "-o", "json", *extra, as_user=as_user, check=True)
    info: dict[str, Any] = json.loads(out.stdout)["status"]["userInfo"]
    return info


def create_token(kubectl: Kubectl, namespace: str, sa: str) -> str:
    return kubectl("create", "token", sa, namespace=namespace, check=True).stdout.strip()


def forbidden_list_pods(username: str, namespace: str) -> str:
    return (
        f'Error from server (Forbidden): pods is forbidden: User "{username}" cannot list '
        f'resource "pods" in API group "" in the namespace "{namespace}"'
    )


# --- 401 ---------------------------------------------------------------------------------


def test_unknown_token_is_unauthorized(kubectl: Kubectl, namespace: str, tmp_path: Path) -> None:
    stranger = token_kubectl(kubectl, "not-a-token-anyone-issued", tmp_path, "stranger")
    result = stranger("get", "pods", namespace=namespace)
    assert result.returncode != 0
    # Discovery fails first: "(the server has asked for the client to provide credentials)".
    assert "You must be logged in to the server" in result.stderr
    whoami_result = stranger("auth", "whoami")
    assert whoami_result.returncode != 0
    assert "Unauthorized" in whoami_result.stderr


def test_forged_service_account_token_is_unauthorized(
    kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    kubectl("create", "serviceaccount", "bot", namespace=namespace, check=True)
    token = create_token(kubectl, namespace, "bot")
    header, payload, signature = token.split(".")
    # Flip the signature: same claims, not signed by the cluster's key.
    forged = f"{header}.{payload}.{signature[::-1]}"
    result = token_kubectl(kubectl, forged, tmp_path, "forged")("auth", "whoami")
    assert result.returncode != 0
    assert "Unauthorized" in result.stderr


# --- whoami --------------------------------------------------------------------------------


def test_whoami_admin(kubectl: Kubectl, kube_target: KubeTarget) -> None:
    info = whoami(kubectl)
    assert "system:authenticated" in info["groups"]
    if kube_target.is_sandbox:
        assert info["username"] == "admin"
        assert "system:masters" in info["groups"]
    table = kubectl("auth", "whoami", check=True).stdout
    assert table.splitlines()[0].split() == ["ATTRIBUTE", "VALUE"]
    assert f"Username    {info['username']}" in table


def test_whoami_service_account_token(kubectl: Kubectl, namespace: str, tmp_path: Path) -> None:
    kubectl("create", "serviceaccount", "jonny-op", namespace=namespace, check=True)
    sa = kubectl.json("get", "serviceaccount", "jonny-op", namespace=namespace)
    token = create_token(kubectl, namespace, "jonny-op")
    info = whoami(token_kubectl(kubectl, token, tmp_path, "jonny"))
    assert info["username"] == f"system:serviceaccount:{namespace}:jonny-op"
    assert info["uid"] == sa["metadata"]["uid"]
    assert {*SA_GROUPS, f"system:serviceaccounts:{namespace}"} <= set(info["groups"])


def test_service_account_token_dies_with_its_service_account(
    kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    kubectl("create", "serviceaccount", "short-lived", namespace=namespace, check=True)
    k = token_kubectl(kubectl, create_token(kubectl, namespace, "short-lived"), tmp_path, "sl")
    assert whoami(k)["username"] == f"system:serviceaccount:{namespace}:short-lived"
    kubectl("delete", "serviceaccount", "short-lived", namespace=namespace, check=True)
    # A real API server looks the account up in an informer cache first: its tokens stop
    # working once the cache has seen the deletion, not necessarily at once.
    wait_until(lambda: k("auth", "whoami").returncode != 0, "the token to stop working")
    result = k("auth", "whoami")
    assert result.returncode != 0
    assert "Unauthorized" in result.stderr


def test_create_token_validates_the_duration(kubectl: Kubectl, namespace: str) -> None:
    kubectl("create", "serviceaccount", "bot", namespace=namespace, check=True)
    result = kubectl("create", "token", "bot", "--duration=1m", namespace=namespace)
    assert result.returncode != 0
    assert "may not specify a duration less than 10 minutes" in result.stderr
    ok = kubectl("create", "token", "bot", "--duration=20m", namespace=namespace)
    assert ok.returncode == 0 and ok.stdout.count(".") == 2
    missing = kubectl("create", "token", "nobody-here", namespace=namespace)
    assert missing.returncode != 0
    assert 'serviceaccounts "nobody-here" not found' in missing.stderr


# --- the seed scenario: jonny-op is Forbidden until the rolebinding exists ------------------


def test_jonny_op_forbidden_until_rolebinding(
    kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    n = namespace
    jonny = f"system:serviceaccount:{n}:jonny-op"
    kubectl("create", "serviceaccount", "jonny-op", namespace=n, check=True)
    kubectl(
        "create", "role", "app-op",
        "--verb", "list", "--verb", "get", "--verb", "create", "--verb", "update",
        "--verb", "delete", "--verb", "patch", "--resource", "pods,configmaps",
        namespace=n, check=True,
    )  # fmt: skip
    kubectl("run", "my-pod", "--image", "nginx", "--labels", "aura=red", namespace=n, check=True)
    with_token = token_kubectl(kubectl, create_token(kubectl, n, "jonny-op"), tmp_path, "jonny")

    # Before the binding: Forbidden by RBAC, with the token and impersonated alike.
    for result in (
        with_token("get", "pods", namespace=n),
        kubectl("get", "pods", as_user=jonny, namespace=n),
    ):
        assert result.returncode != 0
        assert forbidden_list_pods(jonny, n) in result.stderr
    assert with_token("auth", "can-i", "list", "pods", namespace=n).stdout.strip() == "no"

    kubectl(
        "create", "rolebinding", "jonny-app", "--role", "app-op",
        "--serviceaccount", f"{n}:jonny-op", namespace=n, check=True,
    )  # fmt: skip
    wait_can_i(kubectl, "list", "pods", as_user=jonny, namespace=n)

    # After it: allowed, both ways, and only what the role grants.
    for k, as_user in ((with_token, None), (kubectl, jonny)):
        listing = k("get", "pods", "-o", "name", as_user=as_user, namespace=n, check=True)
        assert listing.stdout.split() == ["pod/my-pod"]
        label = k("label", "pod", "my-pod", "here=was-jonny", "--overwrite", as_user=as_user,
                  namespace=n)  # fmt: skip
        assert label.returncode == 0, label.stderr
        secrets = k("get", "secrets", as_user=as_user, namespace=n)
        assert secrets.returncode != 0
        assert 'cannot list resource "secrets"' in secrets.stderr
        elsewhere = k("get", "pods", as_user=as_user, namespace="default")
        assert elsewhere.returncode != 0
        assert forbidden_list_pods(jonny, "default") in elsewhere.stderr
    assert with_token("auth", "can-i", "list", "pods", namespace=n).stdout.strip() == "yes"


# --- impersonation -------------------------------------------------------------------------


def test_admin_may_impersonate(kubectl: Kubectl) -> None:
    info = whoami(
        kubectl, as_user="someone-else", extra=("--as-group=devs", "--as-group=ops", "--as-uid=42")
    )
    assert info["username"] == "someone-else"
    assert info.get("uid") == "42"
    assert {"devs", "ops", "system:authenticated"} <= set(info["groups"])


def test_admin_impersonating_a_service_account_gets_its_groups(
    kubectl: Kubectl, namespace: str
) -> None:
    info = whoami(kubectl, as_user=f"system:serviceaccount:{namespace}:anyone")
    assert info["username"] == f"system:serviceaccount:{namespace}:anyone"
    assert {*SA_GROUPS, f"system:serviceaccounts:{namespace}"} <= set(info["groups"])


def test_unprivileged_user_may_not_impersonate(
    kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    kubectl("create", "serviceaccount", "nobody", namespace=namespace, check=True)
    nobody_name = f"system:serviceaccount:{namespace}:nobody"
    nobody = token_kubectl(kubectl, create_token(kubectl, namespace, "nobody"), tmp_path, "nb")
    result = nobody("get", "pods", as_user="admin", namespace=namespace)
    assert result.returncode != 0
    assert (
        f'users "admin" is forbidden: User "{nobody_name}" cannot impersonate resource "users" '
        'in API group "" at the cluster scope'
    ) in result.stderr
    # (`auth whoami` would hide the message: kubectl reports any 403 on it as "API not
    # enabled or no permission", so the denials are checked on `get pods`.)
    group = nobody("get", "pods", "--as=x", "--as-group=system:masters", namespace=namespace)
    assert group.returncode != 0
    assert "cannot impersonate" in group.stderr


def test_impersonation_granted_by_rbac(kubectl: Kubectl, namespace: str, tmp_path: Path) -> None:
    n = namespace
    for sa in ("helper", "jonny-op"):
        kubectl("create", "serviceaccount", sa, namespace=n, check=True)
    kubectl(
        "create", "role", "impersonate-jonny", "--verb=impersonate",
        "--resource=serviceaccounts", "--resource-name=jonny-op", namespace=n, check=True,
    )  # fmt: skip
    kubectl(
        "create", "rolebinding", "helper-impersonates", "--role=impersonate-jonny",
        f"--serviceaccount={n}:helper", namespace=n, check=True,
    )  # fmt: skip
    wait_can_i(
        kubectl, "impersonate", "serviceaccounts/jonny-op",
        as_user=f"system:serviceaccount:{n}:helper", namespace=n,
    )  # fmt: skip
    helper = token_kubectl(kubectl, create_token(kubectl, n, "helper"), tmp_path, "helper")
    info = whoami(helper, as_user=f"system:serviceaccount:{n}:jonny-op")
    assert info["username"] == f"system:serviceaccount:{n}:jonny-op"
    # resourceNames limits it to jonny-op; the namespace limits it to this namespace.
    other = helper("get", "pods", f"--as=system:serviceaccount:{n}:helper", namespace=n)
    assert other.returncode != 0
    assert (
        f'serviceaccounts "helper" is forbidden: User "system:serviceaccount:{n}:helper" '
        f'cannot impersonate resource "serviceaccounts" in API group "" in the namespace "{n}"'
    ) in other.stderr
    default_ns = helper("get", "pods", "--as=system:serviceaccount:default:jonny-op")
    assert default_ns.returncode != 0
    assert 'in the namespace "default"' in default_ns.stderr


# --- kubectl auth can-i ------------------------------------------------------------------


def test_auth_can_i(kubectl: Kubectl, namespace: str, tmp_path: Path) -> None:
    n = namespace
    yes = kubectl("auth", "can-i", "create", "deployments.apps", namespace=n)
    assert (yes.returncode, yes.stdout.strip()) == (0, "yes")
    kubectl("create", "serviceaccount", "viewer", namespace=n, check=True)
    kubectl(
        "create", "rolebinding", "viewer-view", "--clusterrole=view",
        f"--serviceaccount={n}:viewer", namespace=n, check=True,
    )  # fmt: skip
    wait_can_i(kubectl, "list", "pods", as_user=f"system:serviceaccount:{n}:viewer", namespace=n)
    viewer = token_kubectl(kubectl, create_token(kubectl, n, "viewer"), tmp_path, "viewer")

    def can(*args: str, ns: str = n) -> str:
        result = viewer("auth", "can-i", *args, namespace=ns)
        assert result.returncode in (0, 1), result.stderr
        return result.stdout.strip()

    assert can("list", "pods") == "yes"
    assert can("get", "pods", "--subresource=log") == "yes"
    assert can("watch", "deployments.apps") == "yes"
    assert can("create", "pods") == "no"
    assert can("get", "secrets") == "no"
    assert can("list", "pods", ns="default") == "no"
    assert can("get", "/apis") == "yes"
    # The same questions asked by the admin about the service account.
    as_viewer = kubectl(
        "auth", "can-i", "delete", "pods", as_user=f"system:serviceaccount:{n}:viewer",
        namespace=n,
    )  # fmt: skip
    assert (as_viewer.returncode, as_viewer.stdout.strip()) == (1, "no")
    listing = viewer("auth", "can-i", "--list", namespace=n, check=True).stdout
    assert "selfsubjectaccessreviews.authorization.k8s.io" in listing
    pods_line = next(line for line in listing.splitlines() if line.startswith("pods "))
    assert "[get list watch]" in pods_line


# --- users only the sandbox can provision: tokens file, client certificates -----------------


@pytest.fixture(scope="module")
def provisioned(
    kube_target: KubeTarget, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """A sandbox started with a tokens file, and a kubeconfig with a context per user
    (admin, alice from the tokens file, carol with a client certificate)."""
    if not kube_target.is_sandbox:
        pytest.skip("needs users provisioned on the API server (tokens file, client certs)")
    directory = tmp_path_factory.mktemp("auth-users")
    tokens = directory / "tokens.csv"
    tokens.write_text('alice-secret-token,alice,uid-alice,"devs,ops"\n')
    tokens.chmod(0o600)
    sandbox = SandboxThread(tokens_file=tokens).start()
    try:
        users = sandbox.sandbox.known_users()
        users["carol"] = sandbox.sandbox.client_certificate_user("carol", ["auditors"])
        yield sandbox.write_kubeconfig(directory / "kubeconfig", users)
    finally:
        sandbox.stop()


def test_tokens_file_user(provisioned: Path, kubectl: Kubectl) -> None:
    alice = Kubectl(provisioned, home=kubectl.home, context="alice", binary=kubectl.binary)
    info = whoami(alice)
    assert info == {
        "username": "alice",
        "uid": "uid-alice",
        "groups": ["devs", "ops", "system:authenticated"],
    }
    result = alice("get", "pods", namespace="default")
    assert result.returncode != 0
    assert forbidden_list_pods("alice", "default") in result.stderr
    admin = Kubectl(provisioned, home=kubectl.home, context="admin", binary=kubectl.binary)
    admin("create", "rolebinding", "devs-view", "--clusterrole=view", "--group=devs",
          namespace="default", check=True)  # fmt: skip
    assert alice("get", "pods", namespace="default").returncode == 0


def test_client_certificate_user(provisioned: Path, kubectl: Kubectl) -> None:
    carol = Kubectl(provisioned, home=kubectl.home, context="carol", binary=kubectl.binary)
    info = whoami(carol)
    assert info["username"] == "carol"
    assert info["groups"] == ["auditors", "system:authenticated"]
    assert carol("auth", "can-i", "list", "pods").stdout.strip() == "no"
    impersonating = carol("get", "pods", as_user="alice")
    assert impersonating.returncode != 0
    assert 'User "carol" cannot impersonate resource "users"' in impersonating.stderr
