"""``klockproxy webhook`` as a process: it reads the kubeconfig, watches the cluster's Locks,
serves the ready line, /validate and the health port, and exits cleanly on SIGTERM."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from klockproxy.sandbox.server import SandboxThread
from tests.webhook.support import LOCKRED, pod, review, write_certs

READY_PREFIX = "klockproxy webhook serving on "


def test_the_command_serves_and_stops(sandbox_thread: SandboxThread, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    cert, key, ca_pem = write_certs(tmp_path / "tls")
    lock_file = tmp_path / "lock.yaml"
    lock_file.write_text(json.dumps(LOCKRED))
    audit = tmp_path / "audit.log"
    command = [
        sys.executable, "-m", "klockproxy", "webhook",
        "--kubeconfig", str(kubeconfig), "--context", "admin",
        "--listen", "127.0.0.1:0", "--tls-cert", str(cert), "--tls-key", str(key),
        "--locks", "cluster", str(lock_file), "--health-listen", "127.0.0.1:0",
        "--audit-log", str(audit),
    ]  # fmt: skip
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith(READY_PREFIX), (line, proc.stderr.read() if proc.stderr else "")
        url = line[len(READY_PREFIX) :].split()[0]
        health = line.split("(health: ")[1].rstrip(")\n")
        with urllib.request.urlopen(health + "/readyz", timeout=10) as resp:
            assert resp.status == 200
        body = json.dumps(review("DELETE", old=pod("my-pod", {"aura": "red"}))).encode()
        request = urllib.request.Request(
            url, data=body, headers={"Content-Type": "application/json"}
        )
        ctx = ssl.create_default_context(cadata=ca_pem.decode())
        with urllib.request.urlopen(request, context=ctx, timeout=10) as resp:
            answer = json.loads(resp.read())
        assert answer["response"]["allowed"] is False
        assert "Lock shop/lockred forbids DELETE" in answer["response"]["status"]["message"]
        proc.terminate()
        assert proc.wait(timeout=15) == 0
        assert json.loads(audit.read_text().splitlines()[0])["verdict"] == "denied"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=15)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "give --tls-cert/--tls-key or --cert-secret"),
        (["--cert-secret", "nonamespace"], "expected NAMESPACE/NAME"),
    ],
)
def test_bad_arguments_exit_2(argv: list[str], message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "klockproxy", "webhook", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert message in result.stderr
