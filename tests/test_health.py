"""The health port: liveness, readiness with reasons, and the Prometheus text of a registry."""

from __future__ import annotations

import aiohttp
import pytest

from klockproxy.core.errors import ConfigError
from klockproxy.health import HealthServer
from klockproxy.metrics import LockState, Metrics


async def _get(url: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


async def test_healthz_readyz_metrics() -> None:
    reasons: list[str] = ["lock source cluster has not synced"]
    metrics = Metrics()
    metrics.track_locks(lambda: LockState(loaded=2, sources={"cluster": not reasons}))
    metrics.request("patch", "denied")
    server = HealthServer("127.0.0.1", 0, lambda: list(reasons), metrics.registry)
    url = await server.start()
    try:
        assert (await _get(url + "/healthz"))[0] == 200
        status, _, text = await _get(url + "/readyz")
        assert status == 503
        assert "lock source cluster has not synced" in text
        status, ctype, text = await _get(url + "/metrics")
        assert status == 200 and ctype.startswith("text/plain")
        assert 'klockproxy_requests_total{verb="patch",verdict="denied"} 1.0' in text
        assert 'klockproxy_lock_source_synced{source="cluster"} 0.0' in text
        assert "klockproxy_locks_loaded 2.0" in text
        reasons.clear()
        status, _, text = await _get(url + "/readyz")
        assert status == 200
        assert (
            'klockproxy_lock_source_synced{source="cluster"} 1.0'
            in (await _get(url + "/metrics"))[2]
        )
    finally:
        await server.stop()


async def test_async_readiness_and_a_failing_check_is_not_ready() -> None:
    async def ready() -> list[str]:
        return []

    def broken() -> list[str]:
        raise RuntimeError("boom")

    ok = HealthServer("127.0.0.1", 0, ready, Metrics().registry)
    bad = HealthServer("127.0.0.1", 0, broken, Metrics().registry)
    ok_url, bad_url = await ok.start(), await bad.start()
    try:
        assert (await _get(ok_url + "/readyz"))[0] == 200
        status, _, text = await _get(bad_url + "/readyz")
        assert status == 503 and "RuntimeError" in text
        assert (await _get(bad_url + "/healthz"))[0] == 200
    finally:
        await ok.stop()
        await bad.stop()


async def test_port_in_use_is_a_config_error() -> None:
    first = HealthServer("127.0.0.1", 0, list, Metrics().registry)
    url = await first.start()
    try:
        port = int(url.rsplit(":", 1)[1])
        with pytest.raises(ConfigError, match="cannot listen"):
            await HealthServer("127.0.0.1", port, list, Metrics().registry).start()
    finally:
        await first.stop()
