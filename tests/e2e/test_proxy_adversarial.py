"""Trying to get a forbidden mutation past the proxy with real requests: raw HTTPS (odd paths,
methods and bodies that kubectl never sends) and real kubectl, against the sandbox (or a real
cluster via KLOCKPROXY_E2E_KUBECONFIG), through the local-mode proxy of proxy_support.

Every refused case checks the object is unchanged in the API server afterwards (read directly,
not through the proxy).
"""

from __future__ import annotations

import base64
import gzip
import http.client
import json
import logging
import ssl
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from klockproxy.cluster.kubeconfig import write_kubeconfig
from klockproxy.core.ownership import Node, node_of
from klockproxy.core.types import ResourceRef
from tests.e2e import proxy_support as support
from tests.e2e.kube import Kubectl, KubeTarget, names, wait_can_i, without_root_ca
from tests.e2e.mitmdump_support import LOCK, _start_mitmdump, _stop
from tests.e2e.proxy_support import Locks, Proxy, assert_denied, assert_ok, labels

pytestmark = pytest.mark.e2e

proxy = support.proxy
locks = support.locks

MERGE = "application/merge-patch+json"


@dataclass
class Reply:
    code: int
    body: bytes

    def status(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        assert data.get("kind") == "Status", data
        return data


class Raw:
    """HTTP/1.1 requests through the proxy, with its token and CA (what kubectl never sends)."""

    def __init__(self, proxy: Proxy) -> None:
        config = yaml.safe_load(proxy.thread.kubeconfig_path.read_text())
        cluster = config["clusters"][0]["cluster"]
        self.url = urlsplit(cluster["server"])
        ca = base64.b64decode(cluster["certificate-authority-data"]).decode()
        self.context = ssl.create_default_context(cadata=ca)
        self.token = proxy.thread.client_token

    def __call__(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        chunked: bool = False,
    ) -> Reply:
        conn = http.client.HTTPSConnection(
            self.url.hostname or "127.0.0.1", self.url.port, context=self.context, timeout=60
        )
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            sent = {"Authorization": f"Bearer {self.token}", **(headers or {})}
            if chunked:
                sent["Transfer-Encoding"] = "chunked"
            elif body is not None:
                sent["Content-Length"] = str(len(body))
            for name, value in sent.items():
                conn.putheader(name, value)
            if chunked and body is not None:
                conn.endheaders()
                for part in (body[: len(body) // 2], body[len(body) // 2 :], b""):
                    conn.send(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            else:
                conn.endheaders(body)
            resp = conn.getresponse()
            return Reply(resp.status, resp.read())
        finally:
            conn.close()


@pytest.fixture
def raw(proxy: Proxy) -> Raw:
    return Raw(proxy)


@pytest.fixture
def red_pod(kubectl: Kubectl, namespace: str, locks: Locks) -> Iterator[str]:
    """Pod ``my-pod`` (aura=red) under Lock ``lockred`` {aura: red} for every operation."""
    kubectl(
        "run", "my-pod", "--image", "nginx", "--labels", "aura=red", namespace=namespace, check=True
    )
    locks.add("lockred", ["CREATE", "UPDATE", "DELETE", "CONNECT"], {"aura": "red"})
    yield f"/api/v1/namespaces/{namespace}/pods/my-pod"


def pod_state(kubectl: Kubectl, namespace: str) -> tuple[str, dict[str, str]]:
    obj = kubectl.json("get", "pod", "my-pod", namespace=namespace)
    return obj["metadata"]["resourceVersion"], dict(obj["metadata"].get("labels") or {})


@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        ("DELETE", "/"),  # trailing slash: the sandbox (like RequestInfo) would drop it
        ("DELETE", "%2F"),
        ("DELETE", "%2f"),
        ("PATCH", "/"),
        ("PATCH", "%2Fstatus"),
        ("DELETE", "/../my-pod"),
        ("DELETE", "/%2E%2E/my-pod"),
    ],
)
def test_odd_paths_to_a_locked_pod_are_refused_and_change_nothing(
    raw: Raw, kubectl: Kubectl, namespace: str, red_pod: str, method: str, suffix: str
) -> None:
    before = pod_state(kubectl, namespace)
    body = json.dumps({"metadata": {"labels": {"aura": None}}}).encode()
    reply = raw(
        method,
        red_pod + suffix,
        body if method == "PATCH" else None,
        {"Content-Type": MERGE} if method == "PATCH" else None,
    )
    assert reply.code == 400, reply.body
    assert reply.status()["message"].startswith(f"klockproxy: refusing {method} ")
    assert pod_state(kubectl, namespace) == before


def test_doubled_slashes_before_the_resource_are_refused(
    raw: Raw, kubectl: Kubectl, namespace: str, red_pod: str
) -> None:
    reply = raw("DELETE", red_pod.replace("/pods/", "//pods/"))
    assert reply.code == 400, reply.body
    assert kubectl.exists("pod", "my-pod", namespace=namespace)


@pytest.mark.parametrize("method", ["delete", "Delete"])
def test_lower_case_method_is_judged(
    raw: Raw, kubectl: Kubectl, namespace: str, red_pod: str, method: str
) -> None:
    reply = raw(method, red_pod)
    assert reply.code == 403, reply.body
    assert "denied, there is a lock: map[aura:red]" in reply.status()["message"]
    assert kubectl.exists("pod", "my-pod", namespace=namespace)


def test_escaped_namespace_and_name_are_judged(
    raw: Raw, kubectl: Kubectl, namespace: str, red_pod: str
) -> None:
    escaped = "".join(f"%{ord(c):02X}" for c in namespace)
    reply = raw("DELETE", f"/api/v1/namespaces/{escaped}/pods/my%2Dpod")
    assert reply.code == 403, reply.body
    assert reply.status()["details"]["name"] == "my-pod"
    assert kubectl.exists("pod", "my-pod", namespace=namespace)


def test_dry_run_delete_gets_the_denial_too(
    raw: Raw, kubectl: Kubectl, namespace: str, red_pod: str
) -> None:
    reply = raw("DELETE", red_pod + "?dryRun=All")
    assert reply.code == 403, reply.body
    assert kubectl.exists("pod", "my-pod", namespace=namespace)


def test_gzip_encoded_patch_is_judged(
    raw: Raw, kubectl: Kubectl, namespace: str, red_pod: str
) -> None:
    before = pod_state(kubectl, namespace)
    body = gzip.compress(json.dumps({"metadata": {"labels": {"aura": "blue"}}}).encode())
    reply = raw("PATCH", red_pod, body, {"Content-Type": MERGE, "Content-Encoding": "gzip"})
    assert reply.code == 403, reply.body
    assert pod_state(kubectl, namespace) == before


def test_content_type_with_odd_case_and_parameters_is_judged(
    raw: Raw, kubectl: Kubectl, namespace: str, red_pod: str
) -> None:
    before = pod_state(kubectl, namespace)
    body = json.dumps({"metadata": {"labels": {"aura": "blue"}}}).encode()
    reply = raw(
        "PATCH", red_pod, body, {"Content-Type": "Application/Merge-Patch+JSON; charset=UTF-8"}
    )
    assert reply.code == 403, reply.body
    assert pod_state(kubectl, namespace) == before


def test_json_patch_removing_labels_wholesale_is_denied(
    raw: Raw, kubectl: Kubectl, namespace: str, red_pod: str
) -> None:
    before = pod_state(kubectl, namespace)
    # The labels become the annotations (both are string maps: the API server accepts it).
    ops = [{"op": "move", "from": "/metadata/labels", "path": "/metadata/annotations"}]
    reply = raw(
        "PATCH", red_pod, json.dumps(ops).encode(), {"Content-Type": "application/json-patch+json"}
    )
    assert reply.code == 403, reply.body
    assert pod_state(kubectl, namespace) == before


def test_create_with_duplicate_json_keys_is_not_forwarded(
    raw: Raw, kubectl: Kubectl, namespace: str, red_pod: str
) -> None:
    body = (
        b'{"apiVersion":"v1","kind":"Pod","metadata":{"name":"sneaky","labels":{"aura":"blue"},'
        b'"labels":{"aura":"red"}},"spec":{"containers":[{"name":"c","image":"nginx"}]}}'
    )
    reply = raw(
        "POST", f"/api/v1/namespaces/{namespace}/pods", body, {"Content-Type": "application/json"}
    )
    # A real API server (the sandbox too, tests/sandbox/test_server.py) decodes the second
    # "labels" into the first and stores aura=red; without fieldValidation=Strict it accepts the
    # body. So the refusal must be the proxy's own, before anything reaches the API server.
    assert reply.code == 400, reply.body
    assert "duplicate key 'labels'" in reply.status()["message"]
    assert not kubectl.exists("pod", "sneaky", namespace=namespace)


def test_generate_name_create_is_judged(
    raw: Raw, kubectl: Kubectl, namespace: str, red_pod: str
) -> None:
    body = json.dumps(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"generateName": "red-", "labels": {"aura": "red"}},
        }
    ).encode()
    reply = raw(
        "POST",
        f"/api/v1/namespaces/{namespace}/configmaps",
        body,
        {"Content-Type": "application/json"},
    )
    assert reply.code == 403, reply.body
    assert "red-" in reply.status()["message"]
    assert without_root_ca(names(kubectl.json("get", "configmaps", namespace=namespace))) == []


def test_deletecollection_naming_a_locked_pod_is_refused(
    raw: Raw, kubectl: Kubectl, namespace: str, red_pod: str
) -> None:
    kubectl("run", "free", "--image", "nginx", namespace=namespace, check=True)
    reply = raw("DELETE", f"/api/v1/namespaces/{namespace}/pods")
    assert reply.code == 403, reply.body
    assert "my-pod" in reply.status()["message"]
    assert kubectl.exists("pod", "my-pod", namespace=namespace)
    assert kubectl.exists("pod", "free", namespace=namespace)


def test_eviction_without_content_length_is_judged(
    raw: Raw, kubectl: Kubectl, namespace: str, red_pod: str
) -> None:
    body = json.dumps(
        {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": "my-pod"}}
    ).encode()
    reply = raw(
        "POST", red_pod + "/eviction", body, {"Content-Type": "application/json"}, chunked=True
    )
    assert reply.code == 403, reply.body
    assert kubectl.exists("pod", "my-pod", namespace=namespace)


def test_kubectl_label_with_overwrite_and_selector_is_denied(
    proxy: Proxy, kubectl: Kubectl, namespace: str, red_pod: str
) -> None:
    result = proxy.kubectl(
        "label", "pods", "-l", "aura=red", "aura=blue", "--overwrite", namespace=namespace
    )
    assert_denied(result)
    assert labels(kubectl, namespace, "pod", "my-pod") == {"aura": "red"}


def test_no_tokens_in_the_proxy_logs(
    proxy: Proxy,
    raw: Raw,
    kubectl: Kubectl,
    namespace: str,
    red_pod: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    proxy.kubectl("get", "pods", namespace=namespace, check=True)
    assert_denied(proxy.kubectl("label", "pod", "my-pod", "x=y", namespace=namespace))
    raw("DELETE", red_pod + "%2F?token=in-the-query")
    bad = Raw.__new__(Raw)
    bad.__dict__.update(raw.__dict__, token="not-the-proxy-token")
    assert bad("GET", f"/api/v1/namespaces/{namespace}/pods").code == 401
    # Every record, hpack's included (it logs each HTTP/2 header it decodes at DEBUG).
    text = caplog.text
    assert "klockproxy: refused" in text
    assert raw.token not in text
    assert "not-the-proxy-token" not in text
    assert "in-the-query" not in text
    upstream_tokens = [
        u.get("user", {}).get("token")
        for u in yaml.safe_load(kubectl.kubeconfig.read_text()).get("users", [])
    ]
    for token in filter(None, upstream_tokens):
        assert token not in text


def test_absolute_form_request_target_is_judged_or_refused(
    raw: Raw, kubectl: Kubectl, namespace: str, red_pod: str
) -> None:
    # A proxy-style request line ("DELETE https://host/path HTTP/1.1") sent to the reverse
    # proxy: whatever mitmproxy makes of it, the locked pod must survive.
    reply = raw("DELETE", f"https://kubernetes.default.svc{red_pod}")
    assert reply.code in (400, 403), reply.body
    assert kubectl.exists("pod", "my-pod", namespace=namespace)


@pytest.fixture
def other_namespace(kubectl: Kubectl) -> Iterator[str]:
    name = f"e2e-other-{uuid.uuid4().hex[:8]}"
    kubectl("create", "namespace", name, check=True)
    try:
        yield name
    finally:
        kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")


def test_exemption_is_per_caller_and_not_for_a_same_named_account_elsewhere(
    proxy: Proxy, kubectl: Kubectl, namespace: str, other_namespace: str, locks: Locks
) -> None:
    def k(*args: str) -> None:
        kubectl(*args, namespace=namespace, check=True)

    k("run", "my-pod", "--image", "nginx", "--labels", "aura=red")
    k("create", "role", "pods", "--verb=get,list,patch,update", "--resource=pods")
    for ns in (namespace, other_namespace):
        kubectl("create", "serviceaccount", "jonny-op", namespace=ns, check=True)
        k("create", "rolebinding", f"jonny-{ns}", "--role=pods", f"--serviceaccount={ns}:jonny-op")
    for ns in (namespace, other_namespace):
        sa = f"system:serviceaccount:{ns}:jonny-op"
        wait_can_i(kubectl, "patch", "pods", as_user=sa, namespace=namespace)
    locks.add("lockred", ["UPDATE", "DELETE"], {"aura": "red"}, {"name": "jonny-op"})
    jonny = f"system:serviceaccount:{namespace}:jonny-op"
    impostor = f"system:serviceaccount:{other_namespace}:jonny-op"

    def label(value: str, as_user: str | None) -> Any:
        return proxy.kubectl(
            "label", "pod", "my-pod", f"who={value}", "--overwrite", namespace=namespace,
            as_user=as_user,
        )  # fmt: skip

    assert label("jonny", jonny).returncode == 0
    # Right after the exempt caller, the same proxy credential without --as is not exempt
    # (no identity cached across different Impersonate-* headers)...
    assert_denied(label("admin", None))
    # ...nor is a service account of the same name in another namespace (Klock's bug).
    assert_denied(label("impostor", impostor))
    assert labels(kubectl, namespace, "pod", "my-pod") == {"aura": "red", "who": "jonny"}


@pytest.fixture
def stale_view(proxy: Proxy) -> Iterator[dict[str, dict[str, Any]]]:
    """Make the proxy's lookups of some core-group paths, and its ownership index's view of
    them, answer an old copy of the object: the state of the check-then-write race right
    after a concurrent relabel (path -> object served)."""
    running = proxy.thread.service._master
    assert running is not None
    addon = running.master.addons.get("klockproxy")
    upstream = addon.upstream
    real = upstream.get_object
    index = addon.ownership
    real_stored = index.stored if index is not None else None
    stale: dict[str, dict[str, Any]] = {}

    async def get_object(path: str, headers: Any) -> dict[str, Any] | None:
        if path in stale:
            return stale[path]
        result: dict[str, Any] | None = await real(path, headers)
        return result

    def stored(group: str, resource: str, namespace: str, name: str) -> Node | None:
        old = stale.get(f"/api/v1/namespaces/{namespace}/{resource}/{name}") if not group else None
        if old is not None:
            return node_of(old, ResourceRef("", "v1", resource), str(old.get("kind") or ""))
        assert real_stored is not None
        return real_stored(group, resource, namespace, name)

    upstream.get_object = get_object
    if index is not None:
        index.stored = stored
    try:
        yield stale
    finally:
        upstream.get_object = real
        if index is not None:
            index.stored = real_stored


ADD_WHO = '[{"op":"add","path":"/metadata/labels/who","value":"me"}]'


@pytest.mark.parametrize(
    "args",
    [
        ("label", "pod", "race", "who=me"),
        ("annotate", "pod", "race", "who=me"),
        ("patch", "pod", "race", "--type=json", "-p", ADD_WHO),
        ("patch", "pod", "race", "--type=strategic", "-p", '{"metadata":{"labels":{"who":"me"}}}'),
        ("delete", "pod", "race", "--wait=false"),
    ],
)  # fmt: skip
def test_a_relabel_racing_the_check_makes_the_write_conflict(
    proxy: Proxy,
    kubectl: Kubectl,
    namespace: str,
    locks: Locks,
    stale_view: dict[str, dict[str, Any]],
    args: tuple[str, ...],
) -> None:
    kubectl(
        "run", "race", "--image", "nginx", "--labels", "aura=blue", namespace=namespace, check=True
    )
    locks.add("lockred", ["UPDATE", "DELETE"], {"aura": "red"})
    before = kubectl.json("get", "pod", "race", namespace=namespace)
    # Someone relabels the pod to aura=red (locked) after the proxy read it as aura=blue.
    kubectl("label", "pod", "race", "aura=red", "--overwrite", namespace=namespace, check=True)
    stale_view[f"/api/v1/namespaces/{namespace}/pods/race"] = before
    after = kubectl.json("get", "pod", "race", namespace=namespace)

    result = proxy.kubectl(*args, namespace=namespace)
    assert result.returncode != 0, result.stdout
    err = result.stderr.lower()
    assert "conflict" in err or "modified" in err or "precondition" in err or "test" in err, err
    now = kubectl.json("get", "pod", "race", namespace=namespace)
    assert now["metadata"]["resourceVersion"] == after["metadata"]["resourceVersion"]
    assert now["metadata"]["labels"] == {"aura": "red"}


# -- regressions for bypasses found in an adversarial review, fixed in the addon ------------


def test_deleting_the_namespace_does_not_delete_a_locked_pod(
    proxy: Proxy, kubectl: Kubectl, namespace: str, red_pod: str
) -> None:
    result = proxy.kubectl("delete", "namespace", namespace, "--wait=false")
    assert result.returncode != 0, result.stdout
    assert "forbidden" in result.stderr.lower(), result.stderr
    assert "denied, there is a lock: map[aura:red]" in result.stderr
    assert kubectl.exists("pod", "my-pod", namespace=namespace)


@pytest.mark.parametrize(
    "suffix", ["/proxy/", "/proxy/a//b", "/proxy/a%2Fb", "/exec/?command=sh&stdout=true"]
)
def test_connect_paths_with_odd_tails_are_judged(
    raw: Raw, namespace: str, red_pod: str, suffix: str
) -> None:
    reply = raw("GET", red_pod + suffix)
    # The proxy's own denial, not the API server (the sandbox would say "runs no containers").
    assert reply.code == 403, reply.body
    assert "denied, there is a lock: map[aura:red]" in reply.status()["message"]


def test_mitmdump_with_stream_large_bodies_still_judges_covered_writes(
    kube_target: KubeTarget, kubectl: Kubectl, namespace: str, tmp_path: Path
) -> None:
    """mitmproxy's StreamBodies sets request.stream before a ``-s`` addon's hook runs."""
    sandbox = kube_target.sandbox
    if sandbox is None:
        pytest.skip("needs the sandbox (mitmdump is started against its URL and CA)")
    (tmp_path / "upstream-ca.pem").write_bytes(sandbox.ca_pem)
    lock_file = tmp_path / "locks.yaml"
    lock_file.write_text(LOCK.format(namespace=namespace))
    kubectl(
        "run", "my-pod", "--image", "nginx", "--labels", "aura=red", namespace=namespace, check=True
    )
    try:
        md = _start_mitmdump(
            tmp_path,
            sandbox.url,
            tmp_path / "upstream-ca.pem",
            lock_file,
            "--set",
            "stream_large_bodies=10",
        )
    except AssertionError as e:
        # Refusing to start with that option is failing closed too.
        assert "stream_large_bodies" in str(e), e
        return
    try:
        kubeconfig = write_kubeconfig(
            tmp_path / "proxy-kubeconfig",
            server=md.url,
            ca_pem=(tmp_path / "proxy-ca.pem").read_bytes(),
            users={"admin": {"token": sandbox.admin_token}},
            current_user="admin",
        )
        proxied = Kubectl(kubeconfig, home=tmp_path / "home")
        result = proxied("label", "pod", "my-pod", "aura-", namespace=namespace)
        # Denied by the lock, or no proxy at all (it exits on that option): never applied.
        assert result.returncode != 0, result.stdout
        if md.process.poll() is not None:
            assert "stream_large_bodies" in md.log.read_text()
        else:
            assert_denied(result)
        assert labels(kubectl, namespace, "pod", "my-pod") == {"aura": "red"}
    finally:
        _stop(md)


@pytest.mark.parametrize(
    "suffix", ["%2Fexec?command=sh&stdout=true", "/exec%2F?command=sh&stdout=true"]
)
def test_encoded_slash_before_exec_does_not_reach_the_api_server(
    raw: Raw, namespace: str, red_pod: str, suffix: str
) -> None:
    # The API server decodes %2F before routing: this is pods/my-pod/exec.
    reply = raw("GET", red_pod + suffix)
    assert reply.code in (400, 403), reply.body
    assert reply.status()["message"].startswith(("klockproxy: ", 'pods "my-pod" is forbidden'))


WIDGET_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {{name: widgets.{group}}}
spec:
  group: {group}
  scope: Namespaced
  names: {{plural: widgets, singular: widget, kind: Widget, listKind: WidgetList}}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema: {{type: object, x-kubernetes-preserve-unknown-fields: true}}
"""
WIDGET = "apiVersion: {group}/v1\nkind: Widget\nmetadata: {{name: w, labels: {{aura: red}}}}\n"


@pytest.fixture
def widget(kubectl: Kubectl, namespace: str, locks: Locks) -> Iterator[str]:
    """A CRD of its own (group named after the test's namespace) and widget ``w`` (aura=red)
    under Lock lockred {aura: red} for DELETE; yields the CRD's name."""
    group = f"{namespace}.adv.example.com"
    crd = f"widgets.{group}"
    kubectl("apply", "-f", "-", input=WIDGET_CRD.format(group=group), check=True)
    try:
        for _ in range(100):  # bounded retries until the new kind is served
            created = kubectl(
                "apply", "-f", "-", input=WIDGET.format(group=group), namespace=namespace
            )
            if created.returncode == 0:
                break
            time.sleep(0.1)
        assert created.returncode == 0, created.stderr
        locks.add("lockred", ["DELETE"], {"aura": "red"})
        yield crd
    finally:
        kubectl("delete", "crd", crd, "--ignore-not-found", "--wait=false")


def test_deleting_a_crd_does_not_delete_a_locked_custom_resource(
    proxy: Proxy, kubectl: Kubectl, namespace: str, widget: str
) -> None:
    assert_denied(proxy.kubectl("delete", widget, "w", namespace=namespace))
    result = proxy.kubectl("delete", "crd", widget)
    assert result.returncode != 0, result.stdout
    assert "forbidden" in result.stderr.lower(), result.stderr
    assert kubectl.exists(widget, "w", namespace=namespace)


def test_unserving_then_deleting_a_crd_does_not_delete_a_locked_custom_resource(
    proxy: Proxy, kubectl: Kubectl, namespace: str, widget: str
) -> None:
    unserve = '[{"op":"replace","path":"/spec/versions/0/served","value":false}]'
    proxy.kubectl("patch", "crd", widget, "--type=json", "-p", unserve)
    result = proxy.kubectl("delete", "crd", widget)
    assert result.returncode != 0, result.stdout
    assert kubectl("get", "crd", widget).returncode == 0


def test_allowed_chunked_write_is_rewritten_and_framed(
    raw: Raw, kubectl: Kubectl, namespace: str, red_pod: str
) -> None:
    # An unlocked pod in a namespace with a lock: the proxy judges it, adds the
    # resourceVersion guard to the chunked body and must forward a well-framed request.
    kubectl("run", "free", "--image", "nginx", namespace=namespace, check=True)
    body = json.dumps({"metadata": {"labels": {"who": "chunked"}}}).encode()
    reply = raw(
        "PATCH",
        f"/api/v1/namespaces/{namespace}/pods/free",
        body,
        {"Content-Type": MERGE},
        chunked=True,
    )
    assert reply.code == 200, reply.body
    assert labels(kubectl, namespace, "pod", "free") == {"run": "free", "who": "chunked"}


def test_a_lock_with_a_misspelt_operation_fails_closed(
    proxy: Proxy, kubectl: Kubectl, namespace: str, locks: Locks
) -> None:
    # Klock would still enforce DELETE here (it ignores the unknown word); skipping the whole
    # Lock would protect nothing. An invalid Lock must keep its namespace refused until fixed.
    kubectl(
        "run", "my-pod", "--image", "nginx", "--labels", "aura=red", namespace=namespace, check=True
    )
    bad = (
        "apiVersion: klock.rnemet.dev/v1\nkind: Lock\nmetadata: {name: typo}\n"
        "spec: {operations: [UPDTAE, DELETE], matcher: {aura: red}}\n"
    )
    kubectl("apply", "-f", "-", input=bad, namespace=namespace, check=True)
    # The watch is ordered: once this later Lock is enforced, the invalid one was processed.
    locks.add("barrier", ["CREATE"], {"never": "matches"})
    result = proxy.kubectl("delete", "pod", "my-pod", "--wait=false", namespace=namespace)
    assert result.returncode != 0, result.stdout
    assert "typo" in result.stderr, result.stderr
    assert kubectl.exists("pod", "my-pod", namespace=namespace)
    # Fixing the Lock restores normal judgement (Lock objects stay writable).
    good = bad.replace("UPDTAE", "UPDATE")
    assert proxy.kubectl("apply", "-f", "-", input=good, namespace=namespace).returncode == 0
    key = f"{namespace}/typo"
    proxy.wait(lambda ls: bool(getattr(ls.get(key), "operations", None)), "the fixed lock")
    assert_denied(proxy.kubectl("delete", "pod", "my-pod", "--wait=false", namespace=namespace))
    assert kubectl.exists("pod", "my-pod", namespace=namespace)


def test_connect_method_does_not_open_a_tunnel(raw: Raw, kubectl: Kubectl) -> None:
    # A proxy-style CONNECT to the API server's address would be a raw tunnel past every
    # check; the reverse proxy must refuse it.
    server = kubectl(
        "config", "view", "--minify", "-o", "jsonpath={.clusters[0].cluster.server}", check=True
    ).stdout
    target = urlsplit(server).netloc
    assert target
    conn = http.client.HTTPSConnection(
        raw.url.hostname or "127.0.0.1", raw.url.port, context=raw.context, timeout=60
    )
    try:
        conn.putrequest("CONNECT", target, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", target)
        conn.putheader("Authorization", f"Bearer {raw.token}")
        conn.endheaders()
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 400
    finally:
        conn.close()


def test_creations_and_missing_objects_under_a_covering_lock(
    proxy: Proxy, kubectl: Kubectl, namespace: str, locks: Locks
) -> None:
    # The guards the proxy adds (absent-object preconditions) must not break what is allowed,
    # and a server-side apply that creates a locked object is judged as a CREATE.
    locks.add("lockred", ["CREATE", "UPDATE", "DELETE"], {"aura": "red"})
    cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: NAME, labels: {aura: COLOR}}\n"

    def apply(name: str, color: str, *extra: str) -> Any:
        text = cm.replace("NAME", name).replace("COLOR", color)
        return proxy.kubectl("apply", *extra, "-f", "-", input=text, namespace=namespace)

    assert_ok(apply("ssa", "blue", "--server-side"))
    assert_ok(apply("csa", "blue"))
    assert_denied(apply("ssa-red", "red", "--server-side"))
    assert not kubectl.exists("cm", "ssa-red", namespace=namespace)
    missing = proxy.kubectl("delete", "cm", "ghost", namespace=namespace)
    assert missing.returncode != 0
    assert "NotFound" in missing.stderr, missing.stderr
    assert labels(kubectl, namespace, "cm", "ssa") == {"aura": "blue"}
