"""The sandbox API server's admin, for in-process tests that set the scene behind the back
of the component under test (the ``api`` fixture of ``tests/conftest.py``)."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from klockproxy.sandbox.server import Sandbox


class SandboxAdmin:
    """Writes and reads as the sandbox's admin; any answer but 2xx fails the test."""

    def __init__(self, sb: Sandbox, session: aiohttp.ClientSession) -> None:
        self.sb, self.session = sb, session
        self.auth = ("Authorization", f"Bearer {sb.admin_token}")

    async def call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        headers = {self.auth[0]: self.auth[1]}
        data = None
        if body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        url = self.sb.url + path
        async with self.session.request(method, url, data=data, headers=headers) as r:
            answer: dict[str, Any] = await r.json()
            assert r.status < 300, answer
            return answer

    async def ns(self, name: str) -> None:
        await self.call("POST", "/api/v1/namespaces", {"metadata": {"name": name}})

    async def cm(
        self, ns: str, name: str, *owners: dict[str, Any], **labels: str
    ) -> dict[str, Any]:
        meta = {"name": name, "labels": labels, "ownerReferences": list(owners)}
        return await self.call("POST", f"/api/v1/namespaces/{ns}/configmaps", {"metadata": meta})
