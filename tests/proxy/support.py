"""Helpers shared by the addon's unit tests (flows, locks, requests)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from mitmproxy import http
from mitmproxy.connection import ConnectionState
from mitmproxy.test import tflow, tutils

from klockproxy.cluster.certs import CertificateAuthority
from klockproxy.proxy.addon import KlockProxy
from klockproxy.proxy.master import RunningMaster, start_master

MY_POD = "/api/v1/namespaces/default/pods/my-pod"
OTHER_POD = "/api/v1/namespaces/default/pods/other-pod"
MERGE = "application/merge-patch+json"
PROTOBUF = "application/vnd.kubernetes.protobuf"
APPLY = "application/apply-patch+yaml"


LOCKS = """
apiVersion: klock.rnemet.dev/v1
kind: Lock
metadata: {name: lockred, namespace: default}
spec:
  operations: [UPDATE, DELETE]
  matcher: {aura: red}
  exclusive: {name: jonny-op}
---
apiVersion: klock.rnemet.dev/v1
kind: Lock
metadata: {name: nocreate, namespace: default}
spec:
  operations: [CREATE]
  matcher: {aura: red}
---
apiVersion: klock.rnemet.dev/v1
kind: Lock
metadata: {name: notprod, namespace: prod}
spec:
  operations: [UPDATE]
  matcher: {env: ^prod}
---
apiVersion: klock.rnemet.dev/v1
kind: Lock
metadata: {name: noexec, namespace: default}
spec:
  operations: [CONNECT]
  matcher: {aura: red}
"""


def make_flow(
    method: str,
    path: str,
    body: bytes = b"",
    content_type: str | None = None,
    headers: Sequence[tuple[str, str]] = (("Authorization", "Bearer caller-token"),),
    http2: bool = False,
) -> http.HTTPFlow:
    hdrs = http.Headers([(k.encode(), v.encode()) for k, v in headers])
    if content_type:
        hdrs["Content-Type"] = content_type
    if body and not http2:
        hdrs["Content-Length"] = str(len(body))
    req = tutils.treq(
        method=method.encode(),
        path=path.encode(),
        headers=hdrs,
        content=body,
        http_version=b"HTTP/2.0" if http2 else b"HTTP/1.1",
        host="api.example",
        port=6443,
        scheme=b"https",
    )
    flow = tflow.tflow(req=req)
    # An established upstream connection: the reachability probe is not due.
    flow.server_conn.state = ConnectionState.OPEN
    return flow


async def run(addon: KlockProxy, flow: http.HTTPFlow) -> None:
    """The hooks mitmproxy calls before forwarding a request."""
    await addon.requestheaders(flow)
    await addon.request(flow)


def status_of(flow: http.HTTPFlow) -> dict[str, Any]:
    assert flow.response is not None, "expected the proxy to answer"
    assert flow.response.headers["Content-Type"] == "application/json"
    status = json.loads(flow.response.content or b"")
    assert status["kind"] == "Status"
    assert status["apiVersion"] == "v1"
    assert status["status"] == "Failure"
    assert status["code"] == flow.response.status_code
    return status


def merge_patch(labels: Mapping[str, str | None]) -> bytes:
    return json.dumps({"metadata": {"labels": dict(labels)}}).encode()


GC_LOCK = """
apiVersion: klock.rnemet.dev/v1
kind: Lock
metadata: {name: nodelete, namespace: gc}
spec:
  operations: [DELETE]
  matcher: {aura: red}
"""


def server_pem(tmp_path: Path, ca: CertificateAuthority, name: str) -> Path:
    """A certificate and key for 127.0.0.1 issued by ``ca``, in one PEM file (as mitmproxy
    and Python's ssl load them)."""
    cert, key = ca.issue_server(["127.0.0.1"])
    path = tmp_path / name
    path.write_bytes(cert + key)
    return path


async def master_in_front_of(
    tmp_path: Path,
    ca: CertificateAuthority,
    port: int,
    addons: Callable[[Path], Sequence[Any]],
) -> RunningMaster:
    """The embedded mitmproxy in front of ``https://127.0.0.1:PORT`` (whose certificate
    ``ca`` issued), serving a certificate of ``ca`` itself, with ``addons(its PEM file)``."""
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.cert_pem)
    proxy_pem = server_pem(tmp_path, ca, "proxy.pem")
    return await start_master(
        host="127.0.0.1",
        port=0,
        upstream_server=f"https://127.0.0.1:{port}",
        confdir=tmp_path / "mitmproxy",
        addons=list(addons(proxy_pem)),
        options={
            "certs": [f"*={proxy_pem}"],
            "upstream_cert": False,
            "connection_strategy": "lazy",
            "ssl_verify_upstream_trusted_ca": str(ca_file),
        },
    )
