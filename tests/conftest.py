"""Shared fixtures: a running sandbox API server (in-process, free port)."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from klockproxy.sandbox.server import Sandbox, SandboxThread
from tests.sandbox_admin import SandboxAdmin


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[Sandbox]:
    """A Sandbox on the test's event loop, with its kubeconfig written (sb.kubeconfig_path)."""
    async with Sandbox() as sb:
        sb.write_kubeconfig(tmp_path / "kubeconfig")
        yield sb


@pytest.fixture
async def api(sandbox: Sandbox) -> AsyncIterator[SandboxAdmin]:
    """The sandbox's admin (setting the scene behind the back of what is tested)."""
    ctx = ssl.create_default_context(cadata=sandbox.ca_pem.decode())
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        yield SandboxAdmin(sandbox, session)


@pytest.fixture
def sandbox_thread(tmp_path: Path) -> Iterator[SandboxThread]:
    """A Sandbox on its own loop in a thread (for sync tests that run kubectl)."""
    sb = SandboxThread().start()
    try:
        sb.write_kubeconfig(tmp_path / "kubeconfig")
        yield sb
    finally:
        sb.stop()
