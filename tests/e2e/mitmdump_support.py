"""Starting real ``mitmdump -s addons/klock.py`` processes for the end-to-end tests."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from klockproxy.cluster.certs import CertificateAuthority

ROOT = Path(__file__).resolve().parents[2]


SCRIPT = ROOT / "addons" / "klock.py"


START_TIMEOUT = 60.0


def _mitmdump() -> str:
    beside = Path(sys.executable).parent / "mitmdump"
    found = str(beside) if beside.exists() else shutil.which("mitmdump")
    if not found:
        pytest.skip("mitmdump is not installed")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_mitmdump(
    tmp: Path, upstream: str, upstream_ca: Path, locks: Path | str, *extra: str
) -> Mitmdump:
    ca = CertificateAuthority.create("mitmdump-test-ca")
    cert, key = ca.issue_server(["127.0.0.1"])
    proxy_pem = tmp / "proxy.pem"
    proxy_pem.write_bytes(cert + key)
    (tmp / "proxy-ca.pem").write_bytes(ca.cert_pem)
    port = _free_port()
    log = tmp / "mitmdump.log"
    cmd = [
        _mitmdump(),
        "-s",
        str(SCRIPT),
        "--mode",
        f"reverse:{upstream}",
        "--listen-host",
        "127.0.0.1",
        "--listen-port",
        str(port),
        "--set",
        f"confdir={tmp / 'confdir'}",
        "--set",
        f"certs=*={proxy_pem}",
        "--set",
        f"ssl_verify_upstream_trusted_ca={upstream_ca}",
        "--set",
        f"klock_locks={locks}",
        "--set",
        "termlog_verbosity=warn",
        "--set",
        "flow_detail=0",
        *extra,
    ]
    with log.open("w") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise AssertionError(f"mitmdump exited: {log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                raise AssertionError(f"mitmdump did not listen: {log.read_text()}") from None
            time.sleep(0.2)
    return Mitmdump(process, f"https://127.0.0.1:{port}", log)


def _stop(md: Mitmdump) -> None:
    md.process.terminate()
    try:
        md.process.wait(10)
    except subprocess.TimeoutExpired:
        md.process.kill()
        md.process.wait()


LOCK = """
apiVersion: klock.rnemet.dev/v1
kind: Lock
metadata:
  name: lockred
  namespace: {namespace}
spec:
  operations: [UPDATE, DELETE]
  matcher:
    aura: red
  exclusive:
    name: jonny-op
"""


@dataclass
class Mitmdump:
    process: subprocess.Popen[str]
    url: str
    log: Path
