"""The health port of a serving mode: ``/healthz``, ``/readyz`` and ``/metrics`` over plain HTTP.

Kept apart from the proxy (or webhook) port so that probes and scrapes need no credentials
and never compete with API traffic:

* ``/healthz``: 200 while the process serves at all (liveness);
* ``/readyz``: 200 when the readiness callable reports nothing missing, else 503 with one
  line per reason (readiness: a replica that has not synced its Locks takes no traffic);
* ``/metrics``: the Prometheus text format of the service's registry.

``HealthServer(host, port, readiness, registry)``; ``await start()`` returns the bound URL
(port 0 picks a free one), ``await stop()``.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from klockproxy.core.errors import ConfigError

logger = logging.getLogger(__name__)

# Returns the reasons the service is not ready; empty when it is.
Readiness = Callable[[], Sequence[str] | Awaitable[Sequence[str]]]


class HealthServer:
    """An aiohttp server for the health, readiness and metrics endpoints."""

    def __init__(
        self, host: str, port: int, readiness: Readiness, registry: CollectorRegistry
    ) -> None:
        self.host = host
        self.port = port
        self.url = ""
        self._readiness = readiness
        self._registry = registry
        self._runner: web.AppRunner | None = None

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def start(self) -> str:
        """Listen; returns ``http://HOST:PORT``. Raises ConfigError when it cannot bind."""
        runner = web.AppRunner(self._app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except OSError as e:
            await runner.cleanup()
            raise ConfigError(f"cannot listen on {self.host}:{self.port} for health: {e}") from e
        self._runner = runner
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        port = sockets[0].getsockname()[1] if sockets else self.port
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        if ":" in host:
            host = f"[{host}]"
        self.url = f"http://{host}:{port}"
        return self.url

    async def stop(self) -> None:
        """Stop listening (idempotent)."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def reasons_not_ready(self) -> list[str]:
        """What the readiness callable reports (a failing callable is itself a reason)."""
        try:
            result = self._readiness()
            if inspect.isawaitable(result):
                result = await result
        except Exception as e:
            # Fail closed: a readiness check that cannot run does not report ready.
            logger.warning("readiness check failed: %s", type(e).__name__)
            return [f"readiness check failed: {type(e).__name__}"]
        return [str(r) for r in result]

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        reasons = await self.reasons_not_ready()
        if reasons:
            text = "".join(f"not ready: {r}\n" for r in reasons)
            return web.Response(status=503, text=text)
        return web.Response(text="ok\n")

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
