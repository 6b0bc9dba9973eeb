"""Many callers at once (issue 8, item 6): 20 identities interleaved on ONE HTTP/2
connection and on one kept-alive HTTP/1.1 connection; each request is judged as its own
caller, and the audit log names each one."""

from __future__ import annotations

import asyncio
import json
import random
import ssl

import httpx
import pytest

from tests.e2e import gateway_support as support
from tests.e2e.gateway_support import Gateway, create_token
from tests.e2e.kube import Kubectl, wait_can_i

gateway = support.gateway

pytestmark = pytest.mark.e2e

USERS = 20
CHOSEN = 7  # the one service account the Lock exempts


def lock(namespace: str) -> str:
    return f"""apiVersion: klock.rnemet.dev/v1
kind: Lock
metadata:
  name: only-user-{CHOSEN:02d}
  namespace: {namespace}
spec:
  operations: [UPDATE]
  matcher:
    aura: red
  exclusive:
    name: user-{CHOSEN:02d}
"""


def setup(kubectl: Kubectl, gw: Gateway, namespace: str) -> list[str]:
    kubectl("create", "configmap", "shared", "--from-literal", "a=b", namespace=namespace,
            check=True)  # fmt: skip
    kubectl("label", "cm", "shared", "aura=red", namespace=namespace, check=True)
    tokens = []
    for i in range(USERS):
        name = f"user-{i:02d}"
        kubectl("create", "serviceaccount", name, namespace=namespace, check=True)
        kubectl(
            "create", "rolebinding", name, "--clusterrole", "edit",
            f"--serviceaccount={namespace}:{name}", namespace=namespace, check=True,
        )  # fmt: skip
        tokens.append(create_token(kubectl, namespace, name))
    wait_can_i(kubectl, "patch", "configmaps", namespace=namespace,
               as_user=f"system:serviceaccount:{namespace}:user-{USERS - 1:02d}")  # fmt: skip
    kubectl("apply", "-f", "-", input=lock(namespace), check=True)
    gw.wait_lock(f"{namespace}/only-user-{CHOSEN:02d}")
    return tokens


class OneAlpn(ssl.SSLContext):
    """httpcore offers ALPN http/1.1 before h2 and the gateway follows the client's first
    choice: offer exactly one protocol so the test knows which one it exercises."""

    only = "h2"

    def set_alpn_protocols(self, protocols: object) -> None:
        super().set_alpn_protocols([self.only])


async def interleave(
    gw: Gateway, namespace: str, tokens: list[str], http2: bool
) -> list[tuple[int, int, str]]:
    ctx = OneAlpn(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=gw.serving_ca_pem.decode())
    ctx.only = "h2" if http2 else "http/1.1"
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    path = f"/api/v1/namespaces/{namespace}/configmaps/shared"
    order = [i for i in range(len(tokens)) for _ in range(3)]
    random.Random(8).shuffle(order)
    async with httpx.AsyncClient(
        base_url=gw.url, verify=ctx, http2=http2, http1=not http2, limits=limits, timeout=60
    ) as client:

        async def one(i: int) -> tuple[int, int, str]:
            body = json.dumps({"metadata": {"labels": {f"by-user-{i:02d}": "yes"}}})
            r = await client.patch(
                path,
                content=body,
                headers={
                    "Authorization": f"Bearer {tokens[i]}",
                    "Content-Type": "application/merge-patch+json",
                },
            )
            return i, r.status_code, r.http_version

        if http2:
            return list(await asyncio.gather(*(one(i) for i in order)))
        return [await one(i) for i in order]


@pytest.mark.parametrize("http2", [True, False], ids=["http2-streams", "http1-keepalive"])
def test_twenty_identities_on_one_connection(
    http2: bool, gateway: Gateway, kubectl: Kubectl, namespace: str
) -> None:
    tokens = setup(kubectl, gateway, namespace)
    results = asyncio.run(interleave(gateway, namespace, tokens, http2))
    for i, status, version in results:
        assert version == ("HTTP/2" if http2 else "HTTP/1.1")
        # The exempt caller's concurrent writes are guarded by the resourceVersion they were
        # judged on: one wins, a concurrent one may get 409 Conflict (never a denial).
        assert status in ((200, 409) if i == CHOSEN else (403,)), (i, status)
    assert any(i == CHOSEN and status == 200 for i, status, _ in results)
    labels = kubectl.json("get", "cm", "shared", namespace=namespace)["metadata"]["labels"]
    assert {k for k in labels if k.startswith("by-")} == {f"by-user-{CHOSEN:02d}"}
    # The audit log names each caller with its verdict.
    lines = [json.loads(x) for x in gateway.audit_path.read_text().splitlines()]
    mine = [x for x in lines if x["namespace"] == namespace and x["name"] == "shared"]
    assert len(mine) == len(results)
    for line in mine:
        chosen = line["user"] == f"system:serviceaccount:{namespace}:user-{CHOSEN:02d}"
        if chosen:
            # "allowed" is the lock decision; a concurrent write judged on an older version
            # meets the API server's 409 after it, or already in the dry run (then "refused"
            # with that code: the API server's own answer, not a Lock's).
            assert line["verdict"] == "allowed" or (
                line["verdict"] == "refused" and line.get("code") == 409
            ), line
            assert line["locks"] == []
        else:
            assert line["verdict"] == "denied", line
            assert line["locks"] == [f"{namespace}/only-user-{CHOSEN:02d}"]
    users = {x["user"] for x in mine}
    assert len(users) == USERS
    text = gateway.audit_path.read_text()
    assert not any(t in text for t in tokens)
