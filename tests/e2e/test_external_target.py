"""The e2e suite's external-cluster mode (KLOCKPROXY_E2E_KUBECONFIG) kept alive: a
``klockproxy sandbox`` started as its own process stands in for a real cluster, and a child
pytest runs the founding scenario against it, knowing it only by its kubeconfig.

By hand, against a sandbox or a real cluster::

    klockproxy sandbox --listen 127.0.0.1:0 --write-kubeconfig /tmp/ext/kubeconfig &
    KLOCKPROXY_E2E_KUBECONFIG=/tmp/ext/kubeconfig python -m pytest tests/e2e -q
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import E2E_CONTEXT_ENV, E2E_KUBECONFIG_ENV
from tests.e2e.kube import stop_process

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
READY = "klockproxy sandbox ready on "
# Guards against a hang only; the child normally takes well under a minute.
START_GUARD = 60.0
CHILD_GUARD = 300.0


@pytest.fixture
def external_sandbox(tmp_path: Path) -> Iterator[Path]:
    """``klockproxy sandbox`` as a separate process; yields the kubeconfig it wrote."""
    if os.environ.get(E2E_KUBECONFIG_ENV):
        pytest.skip(f"already running against an external target ({E2E_KUBECONFIG_ENV} is set)")
    kubeconfig = tmp_path / "kubeconfig"
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "klockproxy", "sandbox",
            "--listen", "127.0.0.1:0",
            "--write-kubeconfig", str(kubeconfig),
            "--state-dir", str(tmp_path / "state"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )  # fmt: skip
    output: list[str] = []
    ready = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            if READY in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        if not ready.wait(START_GUARD):
            raise AssertionError("klockproxy sandbox never said it was ready:\n" + "".join(output))
        assert kubeconfig.exists()
        yield kubeconfig
    finally:
        stop_process(proc)


def test_the_founding_scenario_runs_against_an_external_cluster(
    external_sandbox: Path, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if k != E2E_CONTEXT_ENV}
    env[E2E_KUBECONFIG_ENV] = str(external_sandbox)
    child = subprocess.run(
        [
            sys.executable, "-m", "pytest", "tests/e2e/test_proxy_seed.py",
            "-q", "-p", "no:cacheprovider", "--basetemp", str(tmp_path / "child"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=CHILD_GUARD,
    )  # fmt: skip
    report = child.stdout[-6000:] + child.stderr[-2000:]
    assert child.returncode == 0, report
    # Every test ran (a skip would hide a broken external path) and none failed.
    summary = child.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "skipped" not in summary and "failed" not in summary, report
