"""Shared fixtures: a running sandbox API server (in-process, free port)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from klockproxy.sandbox.server import Sandbox, SandboxThread


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[Sandbox]:
    """A Sandbox on the test's event loop, with its kubeconfig written (sb.kubeconfig_path)."""
    async with Sandbox() as sb:
        sb.write_kubeconfig(tmp_path / "kubeconfig")
        yield sb


@pytest.fixture
def sandbox_thread(tmp_path: Path) -> Iterator[SandboxThread]:
    """A Sandbox on its own loop in a thread (for sync tests that run kubectl)."""
    sb = SandboxThread().start()
    try:
        sb.write_kubeconfig(tmp_path / "kubeconfig")
        yield sb
    finally:
        sb.stop()
