"""While the API server is down, the proxy's own watches (the Lock watch and the ownership
index's dozens) log one line per change of state, not one per watch and retry (issue 10,
"Seen by a new user"). The retry intervals are shortened so that a few seconds hold as many
retries as a minute of outage does at the real ones.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from pathlib import Path

import aiohttp
import pytest
import yaml

from klockproxy.cluster import ownership
from klockproxy.cluster.lock_sources import create_lock_sources
from klockproxy.cluster.ownership import OwnershipIndex
from klockproxy.cluster.upstream import Upstream, UpstreamConfig
from klockproxy.core.engine import Engine
from klockproxy.core.locks import load_locks_from_text
from klockproxy.crd import crd_text
from klockproxy.sandbox.server import Sandbox

WAIT = 30.0
# Retries of one ownership watch at the real intervals (1, 2, 4, 8, 16, 30 s) in a minute.
RETRIES_IN_A_MINUTE = 6

LOCK = """
apiVersion: klock.rnemet.dev/v1
kind: Lock
metadata: {name: l, namespace: default}
spec: {operations: [DELETE], matcher: {aura: red}}
"""


async def install_crd(sb: Sandbox) -> None:
    ctx = ssl.create_default_context(cadata=sb.ca_pem.decode())
    crd = yaml.safe_load(crd_text())
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session,
        session.post(
            sb.url + "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            data=json.dumps(crd),
            headers={
                "Authorization": f"Bearer {sb.admin_token}",
                "Content-Type": "application/json",
            },
        ) as r,
    ):
        assert r.status == 201, await r.text()


def lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.levelno >= level
        and r.name.startswith("klockproxy")
        and not r.name.startswith("klockproxy.sandbox")  # the API server's own log
    ]


async def until(predicate: object, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT
    while not predicate():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"never: {what}")
        await asyncio.sleep(0.02)


async def test_an_outage_logs_one_line_per_change_of_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(ownership, "RETRY_SECONDS", 0.01)
    monkeypatch.setattr(ownership, "MAX_RETRY_SECONDS", 0.05)
    state = tmp_path / "state"
    sb = Sandbox(state_dir=state)
    await sb.start()
    port = sb.port
    (tmp_path / "ca.pem").write_bytes(sb.ca_pem)
    (tmp_path / "token").write_text(sb.admin_token)
    config = UpstreamConfig(
        sb.url, ca_file=str(tmp_path / "ca.pem"), token_file=str(tmp_path / "token")
    )
    await install_crd(sb)
    up = Upstream(config)
    index = OwnershipIndex(up)
    index.follow(Engine(load_locks_from_text(LOCK, source="test")))
    lock_set = create_lock_sources(["cluster"], config)
    caplog.set_level(logging.DEBUG, logger="klockproxy")
    try:
        await index.start()
        await lock_set.start()
        assert await index.wait_synced(WAIT)
        assert await lock_set.wait_ready(WAIT)
        watches = len(index.kinds)
        assert watches > 10

        caplog.clear()
        await sb.stop()

        def retried() -> bool:
            tries = [r for r in caplog.records if "retrying every" in r.getMessage()]
            return len(tries) >= RETRIES_IN_A_MINUTE * watches

        await until(retried, "a minute's worth of retries")
        outage = lines(caplog, logging.INFO)
        # One line from the index; from the Lock watch one, and one more if its failure
        # changes ("Server disconnected", then "Cannot connect"); its lock source saying the
        # watch is cut: not one per watch or retry.
        assert len(outage) <= 4, "\n".join(outage)
        assert sum("ownership index" in line for line in outage) == 1, outage

        caplog.clear()
        sb = Sandbox(port=port, state_dir=state)
        await sb.start()
        await install_crd(sb)
        await until(lambda: index.synced, "the index synced again")
        back = lines(caplog, logging.INFO)
        assert sum("every watch has listed again" in line for line in back) == 1, back
        # The index, the Lock watch, its source (resumed, ready): one line each at most; and
        # the in-memory sandbox comes back without the Lock CRD until it is installed again,
        # which the index may see (and say) once.
        assert len(back) <= 5, "\n".join(back)
    finally:
        await lock_set.stop()
        await index.stop()
        await up.close()
        await sb.stop()
