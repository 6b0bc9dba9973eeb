"""Writes allowed on the ownership index's version alone (a patch that leaves the metadata
but its annotations):
the addon's part, against the sandbox API server. The test forwards each allowed request
itself, as mitmproxy would, and hands the API server's answer to the addon's response hooks.

- the index lags behind a write nobody made through the proxy: the API server answers the
  conditional write 409, and the addon judges the request again on what the API server holds
  (refused if it is locked now; otherwise sent again, and the caller gets its 200);
- a write made through the proxy is the index's version at once (read your own writes), so
  a second patch right behind it is not answered 409.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import http
from mitmproxy.test import taddons

from klockproxy.cluster.ownership import OwnershipIndex
from klockproxy.cluster.upstream import Upstream, UpstreamConfig
from klockproxy.core.engine import Engine
from klockproxy.core.locks import load_locks_from_text
from klockproxy.proxy.addon import KlockProxy
from klockproxy.sandbox.server import Sandbox
from tests.fakes import StaticLocks
from tests.proxy.support import MERGE, make_flow, run, status_of
from tests.sandbox_admin import SandboxAdmin as Api

CFG = "/api/v1/namespaces/shop/configmaps/cfg"
LOCK = """
apiVersion: klock.rnemet.dev/v1
kind: Lock
metadata: {name: lockred, namespace: shop}
spec: {operations: [UPDATE, DELETE], matcher: {aura: red}}
"""
DATA = json.dumps({"data": {"n": "1"}}).encode()
# As kubectl apply patches data (its last-applied annotation with it): also on the index.
ANNOTATED = json.dumps({"data": {"n": "1"}, "metadata": {"annotations": {"note": "1"}}}).encode()


async def forward(api: Api, flow: http.HTTPFlow) -> None:
    """What mitmproxy does with an allowed request: send it, keep the answer."""
    req = flow.request
    async with api.session.request(
        req.method, api.sb.url + req.path, data=req.content, headers=dict(req.headers)
    ) as r:
        flow.response = http.Response.make(
            r.status, await r.read(), {"Content-Type": r.headers["Content-Type"]}
        )


@pytest.fixture
async def parts(sandbox: Sandbox, api: Api, tmp_path: Path) -> AsyncIterator[Any]:
    """The addon with an upstream client and an ownership index on the sandbox, synced on a
    namespace ``shop`` with one unlocked ConfigMap ``cfg``."""
    await api.call("POST", "/api/v1/namespaces", {"metadata": {"name": "shop"}})
    await api.call(
        "POST",
        "/api/v1/namespaces/shop/configmaps",
        {"metadata": {"name": "cfg", "labels": {"aura": "blue"}}, "data": {"n": "0"}},
    )
    (tmp_path / "ca.pem").write_bytes(sandbox.ca_pem)
    (tmp_path / "token").write_text(sandbox.admin_token)
    config = UpstreamConfig(
        sandbox.url, ca_file=str(tmp_path / "ca.pem"), token_file=str(tmp_path / "token")
    )
    upstream = Upstream(config)
    index = OwnershipIndex(upstream)
    engine = Engine(load_locks_from_text(LOCK, source="test"))
    proxy = KlockProxy(lock_set=StaticLocks(engine), upstream=upstream, ownership=index)  # type: ignore[arg-type]
    with taddons.context(proxy) as tctx:
        tctx.configure(proxy)
        index.follow(engine)
        await index.start()
        assert await index.wait_synced(30)
        yield proxy, index
    await index.stop()
    await upstream.close()


async def patch_through(proxy: KlockProxy, api: Api, body: bytes = DATA) -> http.HTTPFlow:
    """One merge patch of ``cfg`` through the addon's hooks, forwarded if allowed (then
    ``flow.metadata["forwarded"]``)."""
    flow = make_flow("PATCH", CFG, body, MERGE, headers=(api.auth,))
    await run(proxy, flow)
    if flow.response is None:
        flow.metadata["forwarded"] = True
        await forward(api, flow)
        proxy.responseheaders(flow)
        await proxy.response(flow)
    return flow


async def lagging(index: OwnershipIndex, api: Api, labels: dict[str, str]) -> dict[str, Any]:
    """Relabel ``cfg`` behind the proxy's back and keep the index on the version before, as a
    watch that has not delivered the event yet."""
    before = index.stored("", "configmaps", "shop", "cfg")
    assert before is not None
    current = await api.call("GET", CFG)
    current["metadata"]["labels"] = labels
    moved = await api.call("PUT", CFG, current)
    version = moved["metadata"]["resourceVersion"]
    for _ in range(500):
        seen = index.stored("", "configmaps", "shop", "cfg")
        if seen is not None and seen.version == version:
            break
        await api.call("GET", CFG)  # let the watch run
    index.graph.upsert(before)
    return moved


@pytest.mark.parametrize("body", [DATA, ANNOTATED], ids=["data", "annotated"])
async def test_a_lagging_index_is_answered_409_and_the_write_judged_again(
    parts: Any, api: Api, body: bytes
) -> None:
    proxy, index = parts
    # Locked behind the proxy's back: the conditional write fails (nothing written), and the
    # second judgement, on the API server's answers, refuses it.
    await lagging(index, api, {"aura": "red"})
    flow = await patch_through(proxy, api, body)
    assert flow.metadata.get("forwarded")  # allowed on the index's version: unlocked there
    status = status_of(flow)
    assert status["code"] == 403
    assert "Lock shop/lockred forbids UPDATE" in status["message"]
    stored = await api.call("GET", CFG)
    assert stored["data"] == {"n": "0"} and "annotations" not in stored["metadata"]


@pytest.mark.parametrize("body", [DATA, ANNOTATED], ids=["data", "annotated"])
async def test_a_lagging_index_costs_a_second_attempt_not_a_conflict(
    parts: Any, api: Api, body: bytes
) -> None:
    proxy, index = parts
    moved = await lagging(index, api, {"aura": "green"})
    flow = await patch_through(proxy, api, body)
    assert flow.response is not None and flow.response.status_code == 200, flow.response
    answer = json.loads(flow.response.content or b"")
    assert answer["data"] == {"n": "1"} and answer["metadata"]["labels"] == {"aura": "green"}
    stored = await api.call("GET", CFG)
    assert stored["data"] == {"n": "1"}
    assert stored["metadata"].get("annotations") == json.loads(body).get("metadata", {}).get(
        "annotations"
    )
    assert stored["metadata"]["resourceVersion"] != moved["metadata"]["resourceVersion"]


async def test_a_write_through_the_proxy_is_the_index_version_at_once(parts: Any, api: Api) -> None:
    """Back-to-back patches: each is conditional on the version the one before stored, which
    the index has from the API server's answer before its watch delivers it."""
    proxy, index = parts
    for n in range(5):
        body = json.dumps({"data": {"n": str(n)}}).encode()
        flow = await patch_through(proxy, api, body)
        assert flow.response is not None and flow.response.status_code == 200
        stored = json.loads(flow.response.content or b"")
        # Straight from the answer: no event loop turn for the watch in between.
        node = index.stored("", "configmaps", "shop", "cfg")
        assert node is not None and node.version == stored["metadata"]["resourceVersion"]
    assert (await api.call("GET", CFG))["data"] == {"n": "4"}


async def test_the_answer_to_a_dry_run_is_not_taken_as_stored(parts: Any, api: Api) -> None:
    proxy, index = parts
    before = index.stored("", "configmaps", "shop", "cfg")
    flow = make_flow("PATCH", CFG + "?dryRun=All", DATA, MERGE, headers=(api.auth,))
    await run(proxy, flow)
    assert flow.response is None
    await forward(api, flow)
    # The dry run's answer, as if a mutating webhook had labelled it (never stored).
    answer = json.loads(flow.response.content or b"")  # type: ignore[union-attr]
    answer["metadata"].update(resourceVersion="999999", labels={"aura": "red"})
    flow.response = http.Response.make(
        200, json.dumps(answer), {"Content-Type": "application/json"}
    )
    proxy.responseheaders(flow)
    await proxy.response(flow)
    assert index.stored("", "configmaps", "shop", "cfg") == before


async def test_an_update_without_a_version_on_a_lagging_index_is_judged_again(
    parts: Any, api: Api
) -> None:
    """A PUT that names no resourceVersion is made conditional on the index's: behind a
    relabelling into the Lock it is answered 409 upstream, then judged again and refused."""
    proxy, index = parts
    await lagging(index, api, {"aura": "red"})
    # The caller's copy: still blue (a PUT that would take the label off a locked object).
    meta = {"name": "cfg", "namespace": "shop", "labels": {"aura": "blue"}}
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"n": "1"}}
    flow = make_flow("PUT", CFG, json.dumps(body).encode(), "application/json", headers=(api.auth,))
    await run(proxy, flow)
    assert flow.response is None  # allowed on the index's version (unlocked there)
    await forward(api, flow)
    assert flow.response is not None and flow.response.status_code == 409
    proxy.responseheaders(flow)
    await proxy.response(flow)
    status = status_of(flow)
    assert status["code"] == 403 and "Lock shop/lockred forbids UPDATE" in status["message"]
    assert (await api.call("GET", CFG))["data"] == {"n": "0"}
    # Unlocked meanwhile instead: judged again, sent again, stored.
    await lagging(index, api, {"aura": "green"})
    body["metadata"]["labels"] = {"aura": "green"}
    flow = make_flow("PUT", CFG, json.dumps(body).encode(), "application/json", headers=(api.auth,))
    await run(proxy, flow)
    await forward(api, flow)
    proxy.responseheaders(flow)
    await proxy.response(flow)
    assert flow.response is not None and flow.response.status_code == 200
    assert (await api.call("GET", CFG))["data"] == {"n": "1"}
